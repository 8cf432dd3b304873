//! The model gateway core: provider adapters behind one request/response/stream type
//! ([`types`]), with every failure classified ([`error`]) so that routing and retries decide
//! from the class.

pub mod anthropic;
pub mod cache;
pub mod config;
pub mod error;
pub mod gateway;
pub mod gemini;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod port;
mod resp;
mod stream;
mod transport;
pub mod types;

pub use anthropic::AnthropicTarget;
pub use error::{ErrorClass, ProviderError};
pub use gateway::{Gateway, GatewayError, Served};
pub use gemini::GeminiTarget;
pub use openai::{OpenAiTarget, Timeouts};
pub use port::GatewayPort;
pub use stream::ChatStream;
#[cfg(feature = "fuzzing")]
pub use stream::parse_chunks;
pub use types::{ChatRequest, ChatResponse, Content, Message, StreamEvent, TokenUsage};

/// The HTTP client model calls share: rustls on ring (the one TLS stack), pooled connections,
/// no redirects (an API that redirects is misconfigured), no proxy from the environment.
pub fn http_client() -> Result<reqwest::Client, String> {
    // Another component may have installed the same provider first; either way ring is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        // A streamed request body and small follow-up writes must not wait for delayed ACKs.
        .tcp_nodelay(true)
        .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| format!("cannot build the model HTTP client: {error}"))
}
