//! The conformance suite's HTTP fixture server, standalone, for regenerating expectations:
//! `cargo run -p flowgate-server --example http_fixture -- 127.0.0.1:18731`.

#[path = "../tests/integration/http_fixture.rs"]
mod http_fixture;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18731".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("http fixture listening on {}", listener.local_addr()?);
    http_fixture::serve(listener).await;
    Ok(())
}
