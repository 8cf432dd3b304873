//! `flowgate-mock-upstream --listen ADDR [--latency-ms N] [--first-token-ms N] [--between-tokens-ms N] [--reply TEXT]`:
//! the mock upstream as a process, for benchmarks that put a gateway in front of it.

use std::time::Duration;

use clap::Parser;
use flowgate_mock_upstream::Behaviour;

#[derive(Parser)]
struct Options {
    #[arg(long, default_value = "127.0.0.1:3030")]
    listen: String,
    /// Before the response head.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streams: after the head, before the first token.
    #[arg(long, default_value_t = 0)]
    first_token_ms: u64,
    #[arg(long, default_value_t = 0)]
    between_tokens_ms: u64,
    #[arg(long, default_value = "Hello from the mock upstream.")]
    reply: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let behaviour = Behaviour::reply(&options.reply)
        .latency(Duration::from_millis(options.latency_ms))
        .first_token(Duration::from_millis(options.first_token_ms))
        .between_tokens(Duration::from_millis(options.between_tokens_ms));
    let listener = tokio::net::TcpListener::bind(&options.listen).await?;
    flowgate_mock_upstream::serve(listener, behaviour).await
}
