//! Limits on the machine's Redis (127.0.0.1:6379): two limiters stand for two replicas and
//! share one budget; Redis down follows the configured policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowgate_models::limits::{Backend, Caller, LimitBy, Limiter, LimitsConfig, OnRedisError, Quota, Resource, Rule};

fn config(url: &str, on_error: OnRedisError, rule: &str, quotas: Vec<Quota>) -> LimitsConfig {
    LimitsConfig {
        backend: Backend::Redis { url: url.into(), on_error },
        rules: vec![Rule { name: rule.into(), by: LimitBy::Key, matching: vec!["*".into()], models: vec!["*".into()], quotas }],
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn caller() -> Caller {
    Caller { key: Some("team-a".into()), ..Caller::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_request_budget() {
    let rule = unique("rpm");
    let quotas = vec![Quota { resource: Resource::Requests, window: Duration::from_secs(60), limit: 25 }];
    let replicas: Vec<Limiter> =
        (0..2).map(|_| Limiter::new(&config("redis://127.0.0.1:6379", OnRedisError::Deny, &rule, quotas.clone())).unwrap()).collect();
    let mut calls = Vec::new();
    for attempt in 0..80 {
        let limiter = replicas[attempt % 2].clone();
        calls.push(tokio::spawn(async move { limiter.admit("m", &caller(), 0).await.is_ok() }));
    }
    let mut admitted = 0;
    for call in calls {
        if call.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 25, "exactly the limit passes across both replicas");
}

#[tokio::test]
async fn token_reservations_are_shared_and_settled() {
    let rule = unique("tpm");
    let quotas = vec![Quota { resource: Resource::Tokens, window: Duration::from_secs(3600), limit: 1000 }];
    let (one, two) = (
        Limiter::new(&config("redis://127.0.0.1:6379", OnRedisError::Deny, &rule, quotas.clone())).unwrap(),
        Limiter::new(&config("redis://127.0.0.1:6379", OnRedisError::Deny, &rule, quotas)).unwrap(),
    );
    let first = one.admit("m", &caller(), 700).await.unwrap();
    let refusal = two.admit("m", &caller(), 700).await.err().expect("the other replica sees the reservation");
    assert!(refusal.retry_after.is_some());
    first.settle(Some(50)).await;
    two.admit("m", &caller(), 700).await.expect("after settling, the unused part is free again").settle(Some(700)).await;
    assert!(one.admit("m", &caller(), 300).await.is_err(), "50 + 700 used, 300 more would pass 1000");
    assert!(one.admit("m", &caller(), 250).await.is_ok());
}

#[tokio::test]
async fn redis_down_follows_the_policy() {
    let quotas = vec![Quota { resource: Resource::Requests, window: Duration::from_secs(60), limit: 5 }];
    // Nothing listens on port 1.
    let open = Limiter::new(&config("redis://127.0.0.1:1", OnRedisError::Allow, "down", quotas.clone())).unwrap();
    let closed = Limiter::new(&config("redis://127.0.0.1:1", OnRedisError::Deny, "down", quotas)).unwrap();
    assert!(open.admit("m", &caller(), 0).await.is_ok(), "fail open: the call passes unchecked");
    let refusal = closed.admit("m", &caller(), 0).await.err().expect("fail closed: the call is refused");
    assert!(refusal.retry_after.is_some());
}
