//! Outbound HTTP that user-controlled workflows cannot turn against the host (SSRF).
//!
//! Every address a host name resolves to is checked by the resolver reqwest connects with, so
//! the check and the connection use the same addresses (no DNS-rebinding gap). IP-literal URLs,
//! which never reach a resolver, are checked before sending. Redirects are followed by hand and
//! each hop is checked again. Proxies from the environment are ignored.

mod policy;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use flowgate_engine::ports::{HttpBody, HttpPort, HttpRequest, HttpResponse, MultipartValue, PortError, PortErrorKind};

pub use policy::IpPolicy;

const MAX_REDIRECTS: usize = 10;

/// Why a destination was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// How host names become addresses: the system's resolver, or a fixed table in tests.
type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) }))
}

#[derive(Clone)]
struct GuardedResolver {
    policy: Arc<IpPolicy>,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (policy, lookup) = (self.policy.clone(), self.lookup.clone());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = lookup(host.clone()).await?;
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                resolved.into_iter().partition(|address| policy.allows(address.ip()));
            if allowed.is_empty() {
                let shown = refused.first().map(|address| address.ip().to_string()).unwrap_or_else(|| "no address".into());
                let error: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(Refused(format!("refused: {host} resolves to {shown}, which is not a public address")));
                return Err(error);
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// An SSRF-checked HTTP client; cheap to clone.
#[derive(Clone)]
pub struct EgressClient {
    verifying: reqwest::Client,
    insecure: reqwest::Client,
    policy: Arc<IpPolicy>,
}

fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Another component may have installed the same provider first; either way ring is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl EgressClient {
    pub fn new(policy: IpPolicy) -> Result<Self, String> {
        Self::with_lookup(policy, system_lookup())
    }

    fn with_lookup(policy: IpPolicy, lookup: Lookup) -> Result<Self, String> {
        install_crypto_provider();
        let policy = Arc::new(policy);
        let build = |verify: bool| {
            reqwest::Client::builder()
                .dns_resolver(GuardedResolver { policy: policy.clone(), lookup: lookup.clone() })
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .tls_danger_accept_invalid_certs(!verify)
                .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|error| format!("cannot build the HTTP client: {error}"))
        };
        Ok(Self { verifying: build(true)?, insecure: build(false)?, policy })
    }

    pub fn policy(&self) -> &IpPolicy {
        &self.policy
    }

    fn check_url(&self, url: &Url) -> Result<(), PortError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PortError::new(PortErrorKind::Refused, format!("refused: scheme '{}' is not http or https", url.scheme())));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
            None => {
                return Err(PortError::new(PortErrorKind::InvalidRequest, format!("the URL {} has no host", shown(url.as_str()))));
            }
        };
        if let Some(address) = literal
            && !self.policy.allows(address)
        {
            return Err(PortError::new(PortErrorKind::Refused, format!("refused: {address} is not a public address")));
        }
        Ok(())
    }

    /// Sends a request, following up to ten redirects, each checked like the first hop.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, PortError> {
        let mut url = Url::parse(&request.url)
            .map_err(|error| PortError::new(PortErrorKind::InvalidRequest, format!("invalid URL {}: {error}", shown(&request.url))))?;
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &request.query {
                pairs.append_pair(key, value);
            }
        }
        check_headers(&request.headers)?;
        let client = if request.verify_tls { &self.verifying } else { &self.insecure };
        let mut method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| PortError::new(PortErrorKind::InvalidRequest, format!("Invalid http method {}", request.method)))?;
        let mut body = Some(request.body.clone());
        let mut headers = request.headers.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.check_url(&url)?;
            let mut builder = client.request(method.clone(), url.clone()).timeout(request.timeouts.read + request.timeouts.connect);
            for (name, value) in &headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            builder = attach_body(builder, body.clone().unwrap_or(HttpBody::None), &headers);
            let response = builder.send().await.map_err(classify)?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(reqwest::header::LOCATION).and_then(|value| value.to_str().ok())
            {
                let next = url.join(location).map_err(|error| {
                    PortError::new(PortErrorKind::Upstream, format!("invalid redirect location {}: {error}", shown(location)))
                })?;
                if leaves_origin(&url, &next) {
                    headers.retain(|(name, _)| !carries_credentials(name, &request.credential_headers));
                }
                url = next;
                // 303, and 301/302 after a POST, continue as GET without a body.
                if status == reqwest::StatusCode::SEE_OTHER || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST) {
                    method = reqwest::Method::GET;
                    body = None;
                }
                continue;
            }
            return read_response(response, request.max_response_bytes).await;
        }
        Err(PortError::new(PortErrorKind::Upstream, format!("too many redirects (more than {MAX_REDIRECTS})")))
    }

    /// Downloads a URL (remote files), with the same checks as any request.
    pub async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Bytes, PortError> {
        let request = HttpRequest {
            method: "GET".into(),
            url: url.to_owned(),
            headers: Vec::new(),
            query: Vec::new(),
            body: HttpBody::None,
            timeouts: flowgate_engine::ports::HttpTimeouts {
                connect: Duration::from_secs(10),
                read: Duration::from_secs(60),
                write: Duration::from_secs(60),
            },
            verify_tls: true,
            max_response_bytes: max_bytes,
            credential_headers: Vec::new(),
        };
        let response = self.send(request).await?;
        if !(200..300).contains(&response.status) {
            return Err(PortError::new(
                PortErrorKind::Upstream,
                format!("fetching {} failed with status code {}", shown(url), response.status),
            ));
        }
        Ok(response.body)
    }
}

/// The longest stretch of a URL an error message repeats.
const SHOWN_URL_CHARS: usize = 200;

/// `url` for an error message: a URL of megabytes is cut, saying how long it was.
fn shown(url: &str) -> String {
    match url.char_indices().nth(SHOWN_URL_CHARS) {
        Some((cut, _)) => format!("{}… ({} characters)", &url[..cut], url.chars().count()),
        None => url.to_owned(),
    }
}

/// Each header as HTTP can carry it, or an error naming the one that cannot.
fn check_headers(headers: &[(String, String)]) -> Result<(), PortError> {
    for (name, value) in headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(PortError::new(
                PortErrorKind::InvalidRequest,
                format!("invalid header name '{}': a header name is letters, digits and !#$%&'*+-.^_`|~ only", shown(name)),
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(PortError::new(
                PortErrorKind::InvalidRequest,
                format!("invalid value for header '{}': it holds a line break or another control character", shown(name)),
            ));
        }
    }
    Ok(())
}

/// Whether a redirect from `from` to `to` goes to another origin, as httpx decides: another
/// scheme, host or port, except a same-host upgrade from http to https on the default ports.
fn leaves_origin(from: &Url, to: &Url) -> bool {
    if from.origin() == to.origin() {
        return false;
    }
    let upgrade = from.scheme() == "http"
        && to.scheme() == "https"
        && from.host_str() == to.host_str()
        && matches!(from.port(), None | Some(80))
        && matches!(to.port(), None | Some(443));
    !upgrade
}

/// Headers that must not follow a request to another origin: `Authorization`, cookies, the
/// header the node's authorization set, and headers whose name says they hold a key or token.
fn carries_credentials(name: &str, credential_headers: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie" | "cookie2")
        || credential_headers.iter().any(|header| header.eq_ignore_ascii_case(&name))
        || ["auth", "api-key", "apikey", "api_key", "token", "secret", "password", "session"].iter().any(|word| name.contains(word))
}

fn attach_body(builder: reqwest::RequestBuilder, body: HttpBody, headers: &[(String, String)]) -> reqwest::RequestBuilder {
    let has_content_type = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    match body {
        HttpBody::None => builder,
        HttpBody::Bytes { content, content_type } => {
            let builder = match content_type {
                Some(content_type) if !has_content_type => builder.header(reqwest::header::CONTENT_TYPE, content_type),
                _ => builder,
            };
            builder.body(content)
        }
        HttpBody::Form(pairs) => {
            let encoded: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
            let builder =
                if has_content_type { builder } else { builder.header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded") };
            builder.body(encoded)
        }
        HttpBody::Multipart(fields) => {
            let mut form = reqwest::multipart::Form::new();
            for field in fields {
                form = match field.value {
                    MultipartValue::Text(text) => form.text(field.name, text),
                    MultipartValue::File { filename, content_type, content } => {
                        form.part(field.name, file_part(filename, &content_type, content))
                    }
                };
            }
            builder.multipart(form)
        }
    }
}

/// A file part as httpx builds it: an empty filename is left out of the disposition. A content
/// type that is not a valid MIME type is dropped rather than failing the request.
fn file_part(filename: String, content_type: &str, content: Bytes) -> reqwest::multipart::Part {
    let with_name = |part: reqwest::multipart::Part| {
        if filename.is_empty() { part } else { part.file_name(filename.clone()) }
    };
    with_name(reqwest::multipart::Part::stream(content.clone()))
        .mime_str(content_type)
        .unwrap_or_else(|_| with_name(reqwest::multipart::Part::stream(content)))
}

async fn read_response(response: reqwest::Response, max_bytes: usize) -> Result<HttpResponse, PortError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(classify)?;
        if body.len() + chunk.len() > max_bytes {
            return Err(PortError::new(
                PortErrorKind::TooLarge,
                format!("the response is larger than {:.2} MB", max_bytes as f64 / 1024.0 / 1024.0),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse { status, headers, body: body.freeze() })
}

/// A reqwest error as a port error; refusals by the resolver keep their own message.
fn classify(error: reqwest::Error) -> PortError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return PortError::new(PortErrorKind::Refused, refused.0.clone());
        }
        source = current.source();
    }
    let kind = if error.is_timeout() {
        PortErrorKind::Timeout
    } else if error.is_connect() {
        PortErrorKind::Connection
    } else {
        PortErrorKind::Upstream
    };
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    PortError::new(kind, message)
}

impl HttpPort for EgressClient {
    fn send(&self, request: HttpRequest) -> BoxFuture<'static, Result<HttpResponse, PortError>> {
        let client = self.clone();
        Box::pin(async move { client.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn request(url: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            query: Vec::new(),
            body: HttpBody::None,
            timeouts: flowgate_engine::ports::HttpTimeouts {
                connect: Duration::from_secs(2),
                read: Duration::from_secs(5),
                write: Duration::from_secs(5),
            },
            verify_tls: true,
            max_response_bytes: 1024 * 1024,
            credential_headers: Vec::new(),
        }
    }

    /// A one-shot server answering every connection with `response`.
    async fn serve(response: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn loopback_is_refused_by_default_for_literals_and_names() {
        let address = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let client = EgressClient::new(IpPolicy::default()).unwrap();
        let error = client.send(request(&format!("http://{address}/"))).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::Refused, "{error}");
        let error = client.send(request(&format!("http://localhost:{}/", address.port()))).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::Refused, "{error}");
        assert!(error.message.contains("not a public address"), "{error}");
        let error = client.send(request("file:///etc/passwd")).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::Refused);
    }

    #[tokio::test]
    async fn the_allow_list_permits_a_local_service() {
        let address = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let client = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").unwrap()).unwrap();
        let response = client.send(request(&format!("http://{address}/"))).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"ok");
    }

    #[tokio::test]
    async fn redirects_to_blocked_addresses_are_refused() {
        // An allowed host redirecting to the metadata address.
        let address = serve("HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\ncontent-length: 0\r\n\r\n").await;
        let client = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").unwrap()).unwrap();
        let error = client.send(request(&format!("http://{address}/"))).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::Refused, "{error}");
        assert!(error.message.contains("169.254.169.254"), "{error}");
    }

    #[tokio::test]
    async fn oversized_responses_stop_at_the_limit() {
        let response: &'static str =
            Box::leak(format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}", "a".repeat(100)).into_boxed_str());
        let address = serve(response).await;
        let client = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").unwrap()).unwrap();
        let mut small = request(&format!("http://{address}/"));
        small.max_response_bytes = 10;
        let error = client.send(small).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::TooLarge, "{error}");
    }

    /// A server that answers every request with the request it received (head and body).
    async fn echo() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 16384];
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                let seen = String::from_utf8_lossy(&buffer[..read]).into_owned();
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{seen}", seen.len());
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        address
    }

    fn redirect_to(location: String) -> &'static str {
        Box::leak(format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n").into_boxed_str())
    }

    fn with_credentials(url: &str) -> HttpRequest {
        let mut request = request(url);
        request.headers = [
            ("Authorization", "Bearer sk-secret"),
            ("X-Api-Key", "key-secret"),
            ("Cookie", "session=cookie-secret"),
            ("X-Vendor-Sign", "node-auth-secret"),
            ("X-Trace", "kept"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        // The node's authorization put its key in a header of the user's choosing.
        request.credential_headers = vec!["X-Vendor-Sign".into()];
        request
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_drops_the_credentials() {
        let other = echo().await;
        let first = serve(redirect_to(format!("http://{other}/landing"))).await;
        let client = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").unwrap()).unwrap();
        let response = client.send(with_credentials(&format!("http://{first}/start"))).await.unwrap();
        let seen = String::from_utf8_lossy(&response.body).to_ascii_lowercase();
        assert!(seen.starts_with("get /landing"), "{seen}");
        for secret in ["sk-secret", "key-secret", "cookie-secret", "node-auth-secret"] {
            assert!(!seen.contains(secret), "{secret} reached the other origin: {seen}");
        }
        assert!(seen.contains("x-trace: kept"), "{seen}");

        // The same origin keeps them (a login flow redirecting within its own site).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // The first request is redirected to /next on this origin; the next is echoed.
            let mut first = true;
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 16384];
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                let answer = if first {
                    first = false;
                    "HTTP/1.1 302 Found\r\nlocation: /next\r\ncontent-length: 0\r\n\r\n".to_owned()
                } else {
                    let seen = String::from_utf8_lossy(&buffer[..read]).into_owned();
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{seen}", seen.len())
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let response = client.send(with_credentials(&format!("http://{address}/start"))).await.unwrap();
        let seen = String::from_utf8_lossy(&response.body).to_ascii_lowercase();
        assert!(seen.starts_with("get /next"), "{seen}");
        for secret in ["sk-secret", "key-secret", "cookie-secret", "node-auth-secret"] {
            assert!(seen.contains(secret), "{secret} was dropped on a same-origin redirect: {seen}");
        }
    }

    #[test]
    fn which_redirects_leave_the_origin() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(!leaves_origin(&url("http://a.test/x"), &url("http://a.test/y")));
        assert!(!leaves_origin(&url("http://a.test/x"), &url("http://a.test:80/y")));
        assert!(!leaves_origin(&url("http://a.test/x"), &url("https://a.test/y")), "an upgrade to https keeps them, as in httpx");
        assert!(leaves_origin(&url("https://a.test/x"), &url("http://a.test/y")), "a downgrade does not");
        assert!(leaves_origin(&url("http://a.test/x"), &url("http://b.test/y")));
        assert!(leaves_origin(&url("http://a.test/x"), &url("http://a.test:8080/y")));
        assert!(leaves_origin(&url("http://a.test/x"), &url("http://sub.a.test/y")));
    }

    /// `::ffff:0:7f00:1` is 127.0.0.1 (IPv4-translated), `64:ff9b::7f00:1` is 127.0.0.1 behind
    /// NAT64: refused as literals, through DNS, through redirects and as remote files, and the
    /// local server never hears of it.
    #[tokio::test]
    async fn ipv6_addresses_that_carry_a_local_ipv4_address_are_refused_every_way() {
        let (listener, hits) = {
            let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
            let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            (listener, hits)
        };
        let port = listener.local_addr().unwrap().port();
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
        });
        let embedded = ["::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "::7f00:1", "2002:7f00:1::1", "::ffff:0:a9fe:a9fe"];
        let table: Vec<(String, IpAddr)> =
            embedded.iter().enumerate().map(|(n, address)| (format!("host{n}.test"), address.parse().unwrap())).collect();
        let lookup: Lookup = {
            let table = table.clone();
            Arc::new(move |host: String| {
                let found: Vec<SocketAddr> =
                    table.iter().filter(|(name, _)| *name == host).map(|(_, ip)| SocketAddr::new(*ip, 0)).collect();
                Box::pin(async move { Ok(found) })
            })
        };
        let client = EgressClient::with_lookup(IpPolicy::from_allow_list("127.0.0.1").unwrap(), lookup).unwrap();
        for (address, (host, _)) in embedded.iter().zip(&table) {
            let literal = format!("http://[{address}]:{port}/");
            let error = client.send(request(&literal)).await.unwrap_err();
            assert_eq!(error.kind, PortErrorKind::Refused, "{literal}: {error}");
            let named = format!("http://{host}:{port}/");
            let error = client.send(request(&named)).await.unwrap_err();
            assert_eq!(error.kind, PortErrorKind::Refused, "{named} ({address}): {error}");
            let error = client.fetch(&literal, 1024).await.unwrap_err();
            assert_eq!(error.kind, PortErrorKind::Refused, "remote file {literal}: {error}");
            let hop = serve(redirect_to(literal.clone())).await;
            let error = client.send(request(&format!("http://{hop}/"))).await.unwrap_err();
            assert_eq!(error.kind, PortErrorKind::Refused, "redirect to {literal}: {error}");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "a refused address was connected to");
    }

    #[tokio::test]
    async fn bad_headers_and_long_urls_get_short_errors_that_name_them() {
        let client = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").unwrap()).unwrap();
        let mut bad = request("http://127.0.0.1:9/");
        bad.headers = vec![("X-Ok".into(), "fine".into()), ("X-Broken".into(), "line\nbreak".into())];
        let error = client.send(bad).await.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::InvalidRequest);
        assert_eq!(error.message, "invalid value for header 'X-Broken': it holds a line break or another control character");
        let mut bad = request("http://127.0.0.1:9/");
        bad.headers = vec![("X Spaced".into(), "v".into())];
        assert!(client.send(bad).await.unwrap_err().message.starts_with("invalid header name 'X Spaced'"));
        let long = format!("http://[{}/", "a".repeat(100_000));
        let error = client.send(request(&long)).await.unwrap_err();
        assert!(error.message.len() < 400, "{} characters: {}", error.message.len(), &error.message[..200]);
        assert!(error.message.contains("(100009 characters)"), "{}", error.message);
    }
}
