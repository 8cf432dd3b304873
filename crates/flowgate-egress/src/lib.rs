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

#[derive(Clone)]
struct GuardedResolver {
    policy: Arc<IpPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
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
        install_crypto_provider();
        let policy = Arc::new(policy);
        let build = |verify: bool| {
            reqwest::Client::builder()
                .dns_resolver(GuardedResolver { policy: policy.clone() })
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
                return Err(PortError::new(PortErrorKind::InvalidRequest, format!("the URL {url} has no host")));
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
            .map_err(|error| PortError::new(PortErrorKind::InvalidRequest, format!("invalid URL {}: {error}", request.url)))?;
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &request.query {
                pairs.append_pair(key, value);
            }
        }
        let client = if request.verify_tls { &self.verifying } else { &self.insecure };
        let mut method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| PortError::new(PortErrorKind::InvalidRequest, format!("Invalid http method {}", request.method)))?;
        let mut body = Some(request.body.clone());
        for _ in 0..=MAX_REDIRECTS {
            self.check_url(&url)?;
            let mut builder = client.request(method.clone(), url.clone()).timeout(request.timeouts.read + request.timeouts.connect);
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            builder = attach_body(builder, body.clone().unwrap_or(HttpBody::None), &request.headers);
            let response = builder.send().await.map_err(classify)?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(reqwest::header::LOCATION).and_then(|value| value.to_str().ok())
            {
                url = url
                    .join(location)
                    .map_err(|error| PortError::new(PortErrorKind::Upstream, format!("invalid redirect location {location}: {error}")))?;
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
        };
        let response = self.send(request).await?;
        if !(200..300).contains(&response.status) {
            return Err(PortError::new(PortErrorKind::Upstream, format!("fetching {url} failed with status code {}", response.status)));
        }
        Ok(response.body)
    }
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
}
