//! Request and token limits per second, minute, hour and day, each counted per gateway key,
//! app, end user, model or for everyone. Tokens are reserved before a call (an estimate of the
//! prompt plus the output cap) and settled with the real usage after it, so a burst cannot
//! overshoot a budget by the calls already in flight.
//!
//! Counting is a sliding window approximated by two fixed windows (the previous window's count
//! weighted by how much of it still overlaps, rounded up so a boundary never lets one more call
//! through than the limit): no 2× burst at a window boundary, two counters per quota. Two backends with the same arithmetic: in this process, or in Redis with one
//! script that checks and reserves every quota of a call atomically, so all replicas share
//! one budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::resp::{Redis, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitBy {
    Key,
    App,
    User,
    Model,
    Global,
}

impl LimitBy {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "key" => Self::Key,
            "app" => Self::App,
            "user" => Self::User,
            "model" => Self::Model,
            "global" => Self::Global,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Requests,
    Tokens,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub resource: Resource,
    pub window: Duration,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub by: LimitBy,
    /// Which values of `by` the rule applies to (`*` for all); each value has its own budget.
    pub matching: Vec<String>,
    /// Which logical models (`*` for all).
    pub models: Vec<String>,
    pub quotas: Vec<Quota>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Memory,
    Redis { url: String, on_error: OnRedisError },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub backend: Backend,
    pub rules: Vec<Rule>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { backend: Backend::Memory, rules: Vec::new() }
    }
}

/// Who is calling, for the rules to key on.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The gateway key's name (calls through the OpenAI-compatible endpoint).
    pub key: Option<String>,
    pub app: Option<String>,
    pub user: Option<String>,
}

/// A refused call: which rule, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub rule: String,
    pub limit: u64,
    pub resource: Resource,
    pub window: Duration,
    /// `None` when waiting cannot help (the call alone needs more than the limit).
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.resource {
            Resource::Requests => "requests",
            Resource::Tokens => "tokens",
        };
        let window = match self.window.as_secs() {
            1 => "second".to_owned(),
            60 => "minute".to_owned(),
            3600 => "hour".to_owned(),
            86_400 => "day".to_owned(),
            seconds => format!("{seconds} s"),
        };
        match self.retry_after {
            Some(_) => write!(f, "rate limit `{}` reached: {} {what} per {window}", self.rule, self.limit),
            None => write!(f, "rate limit `{}`: this call alone needs more than {} {what} per {window}", self.rule, self.limit),
        }
    }
}

/// One counter a call touches: its key (without the window index), window, limit and amount.
#[derive(Debug, Clone)]
struct Charge {
    rule: String,
    key: String,
    resource: Resource,
    window: Duration,
    limit: u64,
    amount: u64,
}

/// What a call reserved, to be settled with its real usage.
#[must_use = "settle the reservation with the call's usage"]
pub struct Reservation {
    limiter: Option<Arc<LimiterInner>>,
    /// (counter, its window, the window's index, tokens reserved there).
    tokens: Vec<(String, Duration, u64, u64)>,
}

impl Reservation {
    pub(crate) fn none() -> Self {
        Self { limiter: None, tokens: Vec::new() }
    }

    /// Replaces the token estimate with what the call used. A call that ended without usage
    /// (a broken stream) keeps its estimate charged: a refund could be abused.
    pub async fn settle(self, used_tokens: Option<u64>) {
        let (Some(limiter), Some(used)) = (self.limiter, used_tokens) else { return };
        for (key, window, index, reserved) in self.tokens {
            let delta = used as i64 - reserved as i64;
            if delta != 0 {
                limiter.add(&key, window, index, delta).await;
            }
        }
    }
}

struct Window {
    index: u64,
    window_ms: u64,
    current: i64,
    previous: i64,
}

/// Counters kept in memory before the expired ones are dropped: a rule by end user meets a new
/// user with every signup, and the map must not grow with them forever.
const MEMORY_COUNTERS: usize = 100_000;

struct LimiterInner {
    rules: Vec<Rule>,
    memory: Mutex<HashMap<String, Window>>,
    redis: Option<(Redis, OnRedisError)>,
}

const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local n = #KEYS / 2
for i = 1, n do
  local window = tonumber(ARGV[(i - 1) * 3 + 2])
  local limit = tonumber(ARGV[(i - 1) * 3 + 3])
  local amount = tonumber(ARGV[(i - 1) * 3 + 4])
  local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local elapsed = now % window
  local used = math.ceil(previous * (window - elapsed) / window) + current
  if used + amount > limit then
    return {i, window - elapsed}
  end
end
for i = 1, n do
  local window = tonumber(ARGV[(i - 1) * 3 + 2])
  redis.call('INCRBY', KEYS[2 * i - 1], tonumber(ARGV[(i - 1) * 3 + 4]))
  redis.call('PEXPIRE', KEYS[2 * i - 1], window * 2)
end
return {0, 0}
";

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

fn window_key(key: &str, window: Duration, index: u64) -> String {
    format!("flowgate:rl:{key}:{}:{index}", window.as_millis())
}

#[derive(Clone)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

impl Limiter {
    pub fn new(config: &LimitsConfig) -> Result<Self, String> {
        let redis = match &config.backend {
            Backend::Memory => None,
            Backend::Redis { url, on_error } => {
                Some((Redis::new(url, Duration::from_millis(250)).map_err(|error| error.to_string())?, *on_error))
            }
        };
        Ok(Self { inner: Arc::new(LimiterInner { rules: config.rules.clone(), memory: Mutex::new(HashMap::new()), redis }) })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    fn charges(&self, model: &str, caller: &Caller, estimated_tokens: u64) -> Vec<Charge> {
        let mut charges = Vec::new();
        for rule in &self.inner.rules {
            if !rule.models.iter().any(|wanted| wanted == "*" || wanted == model) {
                continue;
            }
            let subject = match rule.by {
                LimitBy::Key => caller.key.as_deref(),
                LimitBy::App => caller.app.as_deref(),
                LimitBy::User => caller.user.as_deref(),
                LimitBy::Model => Some(model),
                LimitBy::Global => Some("all"),
            };
            let Some(subject) = subject else { continue };
            if !rule.matching.iter().any(|wanted| wanted == "*" || wanted == subject) {
                continue;
            }
            for quota in &rule.quotas {
                let amount = match quota.resource {
                    Resource::Requests => 1,
                    Resource::Tokens => estimated_tokens,
                };
                charges.push(Charge {
                    rule: rule.name.clone(),
                    key: format!("{}:{:?}:{subject}:{:?}", rule.name, rule.by, quota.resource),
                    resource: quota.resource,
                    window: quota.window,
                    limit: quota.limit,
                    amount,
                });
            }
        }
        charges
    }

    /// Checks every quota the call falls under and reserves its share in all of them, or none.
    pub async fn admit(&self, model: &str, caller: &Caller, estimated_tokens: u64) -> Result<Reservation, Refusal> {
        let charges = self.charges(model, caller, estimated_tokens);
        if charges.is_empty() {
            return Ok(Reservation::none());
        }
        if let Some(charge) = charges.iter().find(|charge| charge.amount > charge.limit) {
            return Err(Refusal {
                rule: charge.rule.clone(),
                limit: charge.limit,
                resource: charge.resource,
                window: charge.window,
                retry_after: None,
            });
        }
        let now = now_millis();
        let refused = match &self.inner.redis {
            None => self.inner.admit_in_memory(&charges, now),
            Some((redis, on_error)) => match admit_in_redis(redis, &charges, now).await {
                Ok(refused) => refused,
                Err(error) => {
                    tracing::warn!(%error, "rate limits unavailable");
                    match on_error {
                        OnRedisError::Allow => return Ok(Reservation::none()),
                        OnRedisError::Deny => Some((0, Duration::from_secs(1))),
                    }
                }
            },
        };
        if let Some((index, retry_after)) = refused {
            let charge = &charges[index.min(charges.len() - 1)];
            return Err(Refusal {
                rule: charge.rule.clone(),
                limit: charge.limit,
                resource: charge.resource,
                window: charge.window,
                retry_after: Some(retry_after.max(Duration::from_millis(1))),
            });
        }
        let tokens = charges
            .iter()
            .filter(|charge| charge.resource == Resource::Tokens)
            .map(|charge| {
                let window_ms = charge.window.as_millis().max(1) as u64;
                (charge.key.clone(), charge.window, now / window_ms, charge.amount)
            })
            .collect();
        Ok(Reservation { limiter: Some(self.inner.clone()), tokens })
    }
}

impl LimiterInner {
    /// `Some((index of the refusing charge, retry after))`, or reserves everything.
    fn admit_in_memory(&self, charges: &[Charge], now: u64) -> Option<(usize, Duration)> {
        let Ok(mut windows) = self.memory.lock() else { return Some((0, Duration::from_secs(1))) };
        if windows.len() >= MEMORY_COUNTERS {
            // A counter two windows old counts for nothing any more.
            windows.retain(|_, window| now / window.window_ms <= window.index + 1);
        }
        for (index, charge) in charges.iter().enumerate() {
            let window_ms = charge.window.as_millis().max(1) as u64;
            let window = windows.entry(charge.key.clone()).or_insert(Window { index: now / window_ms, window_ms, current: 0, previous: 0 });
            roll(window, now / window_ms);
            let elapsed = now % window_ms;
            let used = (window.previous as f64 * (window_ms - elapsed) as f64 / window_ms as f64).ceil() as i64 + window.current;
            if used + charge.amount as i64 > charge.limit as i64 {
                return Some((index, Duration::from_millis(window_ms - elapsed)));
            }
        }
        for charge in charges {
            if let Some(window) = windows.get_mut(&charge.key) {
                window.current += charge.amount as i64;
            }
        }
        None
    }

    async fn add(&self, key: &str, window: Duration, index: u64, delta: i64) {
        match &self.redis {
            Some((redis, _)) => {
                let windowed = window_key(key, window, index);
                let delta = delta.to_string();
                if let Err(error) = redis.command(&[b"INCRBY", windowed.as_bytes(), delta.as_bytes()]).await {
                    tracing::warn!(%error, "settling a token reservation failed");
                }
            }
            None => {
                let Ok(mut windows) = self.memory.lock() else { return };
                let Some(counter) = windows.get_mut(key) else { return };
                if counter.index == index {
                    counter.current += delta;
                } else if counter.index == index + 1 {
                    counter.previous += delta;
                }
            }
        }
    }
}

fn roll(window: &mut Window, index: u64) {
    if index == window.index {
        return;
    }
    window.previous = if index == window.index + 1 { window.current } else { 0 };
    window.current = 0;
    window.index = index;
}

async fn admit_in_redis(redis: &Redis, charges: &[Charge], now: u64) -> Result<Option<(usize, Duration)>, crate::resp::RedisError> {
    let mut keys = Vec::with_capacity(charges.len() * 2);
    let mut arguments = vec![now.to_string()];
    for charge in charges {
        let window_ms = charge.window.as_millis().max(1) as u64;
        let index = now / window_ms;
        keys.push(window_key(&charge.key, charge.window, index));
        keys.push(window_key(&charge.key, charge.window, index.saturating_sub(1)));
        arguments.extend([window_ms.to_string(), charge.limit.to_string(), charge.amount.to_string()]);
    }
    let count = keys.len().to_string();
    let mut parts: Vec<&[u8]> = vec![b"EVAL", SCRIPT.as_bytes(), count.as_bytes()];
    parts.extend(keys.iter().map(|key| key.as_bytes()));
    parts.extend(arguments.iter().map(|argument| argument.as_bytes()));
    match redis.command(&parts).await? {
        Reply::Array(items) => match items.as_slice() {
            [Reply::Integer(0), _] => Ok(None),
            [Reply::Integer(index), Reply::Integer(wait)] => {
                Ok(Some(((*index as usize).saturating_sub(1), Duration::from_millis((*wait).max(1) as u64))))
            }
            other => Err(crate::resp::RedisError::Protocol(format!("limiter script returned {other:?}"))),
        },
        other => Err(crate::resp::RedisError::Protocol(format!("limiter script returned {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(quotas: Vec<Quota>, by: LimitBy) -> Limiter {
        let rule = Rule { name: "r".into(), by, matching: vec!["*".into()], models: vec!["*".into()], quotas };
        Limiter::new(&LimitsConfig { backend: Backend::Memory, rules: vec![rule] }).unwrap()
    }

    fn caller(key: &str) -> Caller {
        Caller { key: Some(key.into()), ..Caller::default() }
    }

    #[tokio::test]
    async fn requests_are_counted_per_key_and_refused_with_a_retry_time() {
        let limiter = limiter(vec![Quota { resource: Resource::Requests, window: Duration::from_secs(60), limit: 3 }], LimitBy::Key);
        for _ in 0..3 {
            limiter.admit("m", &caller("a"), 0).await.unwrap().settle(None).await;
        }
        let refusal = limiter.admit("m", &caller("a"), 0).await.err().unwrap();
        assert!(refusal.retry_after.unwrap() <= Duration::from_secs(60));
        assert_eq!(refusal.to_string(), "rate limit `r` reached: 3 requests per minute");
        assert!(limiter.admit("m", &caller("b"), 0).await.is_ok(), "another key has its own budget");
        assert!(limiter.admit("m", &Caller::default(), 0).await.is_ok(), "a rule by key does not apply to calls without one");
    }

    #[tokio::test]
    async fn tokens_are_reserved_then_settled_with_real_usage() {
        let limiter = limiter(vec![Quota { resource: Resource::Tokens, window: Duration::from_secs(3600), limit: 1000 }], LimitBy::Key);
        // Two calls that may use 600 tokens each cannot both be in flight.
        let first = limiter.admit("m", &caller("a"), 600).await.unwrap();
        assert!(limiter.admit("m", &caller("a"), 600).await.is_err());
        // The first used only 100: the second now fits.
        first.settle(Some(100)).await;
        let second = limiter.admit("m", &caller("a"), 600).await.unwrap();
        second.settle(None).await; // a broken stream keeps its estimate: 100 + 600 used
        assert!(limiter.admit("m", &caller("a"), 301).await.is_err());
        assert!(limiter.admit("m", &caller("a"), 300).await.is_ok());
        let alone = limiter.admit("m", &caller("b"), 5000).await.err().unwrap();
        assert_eq!(alone.retry_after, None, "a call larger than the limit can never pass: no Retry-After");
    }

    #[tokio::test]
    async fn counters_of_users_gone_quiet_are_dropped_instead_of_kept_forever() {
        let limiter = limiter(vec![Quota { resource: Resource::Requests, window: Duration::from_millis(20), limit: 5 }], LimitBy::User);
        let user = |n: usize| Caller { user: Some(format!("user-{n}")), ..Caller::default() };
        for n in 0..MEMORY_COUNTERS {
            limiter.admit("m", &user(n), 0).await.unwrap().settle(None).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        limiter.admit("m", &user(MEMORY_COUNTERS), 0).await.unwrap().settle(None).await;
        assert_eq!(limiter.inner.memory.lock().unwrap().len(), 1, "only the live counter is left");
    }

    #[test]
    fn a_full_window_lets_no_extra_call_through_just_after_the_boundary() {
        let limiter = limiter(vec![Quota { resource: Resource::Requests, window: Duration::from_secs(60), limit: 12 }], LimitBy::Key);
        let charges = limiter.charges("m", &caller("a"), 0);
        let boundary = 1_000 * 60_000;
        for offset in 0..12 {
            assert!(limiter.inner.admit_in_memory(&charges, boundary - 12 + offset).is_none());
        }
        // 12 in the previous window weighted by 59.9/60 is 11.98 of them: rounding down would
        // admit a thirteenth call (CI saw exactly that across two servers sharing Redis).
        assert!(limiter.inner.admit_in_memory(&charges, boundary + 100).is_some(), "the 13th call is refused");
        // Once a twelfth of the window has passed, one call's worth has slid out.
        assert!(limiter.inner.admit_in_memory(&charges, boundary + 5_000).is_none());
    }

    #[test]
    fn the_previous_window_still_counts_as_it_slides_out() {
        let mut window = Window { index: 10, window_ms: 1000, current: 100, previous: 0 };
        roll(&mut window, 11);
        assert_eq!((window.previous, window.current), (100, 0));
        roll(&mut window, 13);
        assert_eq!((window.previous, window.current), (0, 0), "a gap of more than one window forgets everything");
    }
}
