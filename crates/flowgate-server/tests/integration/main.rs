//! flowgate's integration tests, in one binary (one link instead of one per file).

// A failed set-up step should stop the test with its message, like a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod basic_apps;
mod blobs_s3;
mod cli;
mod conformance;
mod corpus;
mod durability;
mod gateway_nodes;
mod harness;
mod http_fixture;
mod openai_sdk;
mod operations;
mod sandbox_api;
mod sdk;
mod serve;
mod suggested;

use std::sync::OnceLock;

/// The HTTP fixture server, started once on its own thread for every test that needs it.
pub async fn fixture_address() -> String {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS
        .get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("fixture runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fixture");
                    sender.send(listener.local_addr().expect("fixture address").to_string()).expect("send address");
                    http_fixture::serve(listener).await;
                });
            });
            receiver.recv().expect("fixture address")
        })
        .clone()
}
