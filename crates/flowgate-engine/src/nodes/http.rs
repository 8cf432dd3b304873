//! HTTP request node, with Dify's request building (templated URL/headers/params/body, the
//! `key:value` line syntax, auth types, body types) and response rules (text vs file, size
//! limits, non-2xx responses succeed unless an error strategy or retry is configured).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use flowgate_dsl::nodes::HttpRequestData;

use super::{Capability, Exec, NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector};
use crate::ports::{FilePort, HttpBody, HttpPort, HttpRequest, HttpResponse, HttpTimeouts, MultipartField, MultipartValue, PortError};
use crate::template::{Render, TextTemplate};
use crate::value::{File, Value, map_of, map_with_capacity};

/// Dify's `HTTP_REQUEST_MAX_*` and `HTTP_REQUEST_NODE_MAX_*` defaults.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const MAX_READ_TIMEOUT_SECS: u64 = 600;
pub const MAX_WRITE_TIMEOUT_SECS: u64 = 600;
pub const MAX_BINARY_BYTES: usize = 10 * 1024 * 1024;
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
struct BodyItem {
    key: TextTemplate,
    is_file: bool,
    value: TextTemplate,
    file: Selector,
}

#[derive(Debug)]
pub struct HttpRequestNode {
    method: String,
    url: TextTemplate,
    headers: TextTemplate,
    /// Each non-empty `key:value` line of the params text, split before rendering (Dify renders
    /// key and value separately).
    params: Vec<(TextTemplate, TextTemplate)>,
    auth: Option<(String, TextTemplate, String)>,
    auth_missing_config: bool,
    body_type: Option<String>,
    body: Vec<BodyItem>,
    timeouts: HttpTimeouts,
    verify_tls: bool,
    /// Non-2xx answers fail the node only when it has an error strategy or retries.
    fail_on_error_status: bool,
}

impl HttpRequestNode {
    pub fn compile(data: &HttpRequestData, resolver: &SelectorResolver<'_>, node: &flowgate_dsl::Node) -> Self {
        let params = data
            .params
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                if line.is_empty() {
                    return None;
                }
                let (key, value) = line.split_once(':').unwrap_or((line, ""));
                let key = key.trim();
                (!key.is_empty()).then(|| (TextTemplate::compile(key, resolver), TextTemplate::compile(value.trim(), resolver)))
            })
            .collect();
        let (auth, auth_missing_config) = match (data.authorization.kind.as_str(), &data.authorization.config) {
            ("api-key", Some(config)) => {
                (Some((config.kind.clone(), TextTemplate::compile(&config.api_key, resolver), config.header.clone())), false)
            }
            ("api-key", None) => (None, true),
            _ => (None, false),
        };
        let seconds = |value: Option<i64>, default: u64| {
            let seconds = value.filter(|seconds| *seconds > 0).map_or(default, |seconds| seconds as u64);
            Duration::from_secs(seconds.min(default))
        };
        let timeout = data.timeout.clone().unwrap_or_default();
        Self {
            method: data.method.clone(),
            url: TextTemplate::compile(&data.url, resolver),
            headers: TextTemplate::compile(&data.headers, resolver),
            params,
            auth,
            auth_missing_config,
            body_type: data.body.as_ref().map(|body| body.kind.clone()),
            body: data
                .body
                .iter()
                .flat_map(|body| body.data.iter())
                .map(|item| BodyItem {
                    key: TextTemplate::compile(&item.key, resolver),
                    is_file: item.kind == "file",
                    value: TextTemplate::compile(&item.value, resolver),
                    file: resolver.selector(&item.file),
                })
                .collect(),
            timeouts: HttpTimeouts {
                connect: seconds(timeout.connect, MAX_CONNECT_TIMEOUT_SECS),
                read: seconds(timeout.read, MAX_READ_TIMEOUT_SECS),
                write: seconds(timeout.write, MAX_WRITE_TIMEOUT_SECS),
            },
            verify_tls: data.ssl_verify.unwrap_or(true),
            fail_on_error_status: node.error_strategy.is_some() || node.retry.enabled,
        }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let Some(http) = ctx.ports.http.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Http));
        };
        let prepared = match self.prepare(ctx.pool) {
            Ok(prepared) => prepared,
            Err(error) => return Exec::Done(NodeResult::failed(error.0, error.1)),
        };
        let files = ctx.ports.files.clone();
        let fail_on_error_status = self.fail_on_error_status;
        Exec::Pending(Box::pin(async move { execute(http, files, prepared, fail_on_error_status).await }))
    }

    fn prepare(&self, pool: &Pool) -> Result<Prepared, (String, &'static str)> {
        let fail = |message: String, kind: &'static str| Err((message, kind));
        let api_key = match &self.auth {
            Some((_, api_key, _)) => {
                let key = api_key.render(pool, Render::Text);
                if key.trim().is_empty() {
                    return fail(
                        "API key is required for authorization but was empty. Please provide a valid API key.".into(),
                        "AuthorizationConfigError",
                    );
                }
                Some(key)
            }
            None if self.auth_missing_config => {
                return fail("authorization config is required".into(), "AuthorizationConfigError");
            }
            None => None,
        };
        let url = self.url.render(pool, Render::Text);
        if url.is_empty() {
            return fail("url is required".into(), "InvalidURLError");
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return fail("url should start with http:// or https://".into(), "InvalidURLError");
        }
        let query: Vec<(String, String)> =
            self.params.iter().map(|(key, value)| (key.render(pool, Render::Text), value.render(pool, Render::Text))).collect();
        let mut headers = parse_headers(&self.headers.render(pool, Render::Text));
        let mut credential_headers = Vec::new();
        if let (Some((kind, _, header)), Some(api_key)) = (&self.auth, &api_key) {
            let header = if header.is_empty() { "Authorization".to_owned() } else { header.clone() };
            credential_headers.push(header.clone());
            let value = match kind.as_str() {
                "bearer" => Some(format!("Bearer {api_key}")),
                "basic" => Some(format!("Basic {}", basic_credentials(api_key))),
                "custom" => Some(api_key.clone()),
                _ => None,
            };
            if let Some(value) = value {
                set_header(&mut headers, &header, value);
            }
        }
        let body = self.prepare_body(pool)?;
        let method = self.method.to_ascii_lowercase();
        if !matches!(method.as_str(), "get" | "head" | "post" | "put" | "delete" | "patch") {
            return fail(format!("Invalid http method {}", self.method), "InvalidHttpMethodError");
        }
        let content_type = match self.body_type.as_deref() {
            Some("json") => Some("application/json"),
            Some("x-www-form-urlencoded") => Some("application/x-www-form-urlencoded"),
            Some("raw-text") => Some("text/plain"),
            _ => None,
        };
        if let Some(content_type) = content_type
            && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), content_type.into()));
        }
        if matches!(body, PreparedBody::Multipart { .. }) {
            // The multipart boundary goes into the content type the client writes.
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        }
        Ok(Prepared {
            method: method.to_ascii_uppercase(),
            url,
            query,
            headers,
            credential_headers,
            body,
            timeouts: self.timeouts.clone(),
            verify_tls: self.verify_tls,
        })
    }

    fn prepare_body(&self, pool: &Pool) -> Result<PreparedBody, (String, &'static str)> {
        let single = |kind: &str| -> Result<&BodyItem, (String, &'static str)> {
            match self.body.as_slice() {
                [item] => Ok(item),
                _ => Err((format!("{kind} body type should have exactly one item"), "RequestBodyError")),
            }
        };
        Ok(match self.body_type.as_deref() {
            None => PreparedBody::Absent,
            Some("none") => PreparedBody::Text(String::new()),
            Some("raw-text") => PreparedBody::Text(single("raw-text")?.value.render(pool, Render::Text)),
            Some("json") => {
                let text = single("json")?.value.render(pool, Render::Text);
                match parse_json_leniently(&text) {
                    Some(value) => PreparedBody::Json(value),
                    None => {
                        return Err((format!("Failed to parse JSON: {text}"), "RequestBodyError"));
                    }
                }
            }
            Some("binary") => {
                let item = single("binary")?;
                match pool.get(&item.file) {
                    Some(Value::File(file)) => PreparedBody::Binary((*file).clone()),
                    _ => {
                        return Err((format!("cannot fetch file with selector {}", item.file.display()), "FileFetchError"));
                    }
                }
            }
            Some("x-www-form-urlencoded") => PreparedBody::Form(self.key_values(pool, false)),
            Some("form-data") => {
                let fields = self.key_values(pool, true);
                let mut files = Vec::new();
                for item in self.body.iter().filter(|item| item.is_file) {
                    let key = item.key.render(pool, Render::Text);
                    match pool.get(&item.file) {
                        Some(Value::File(file)) => files.push((key, (*file).clone())),
                        Some(Value::Array(items)) => {
                            files.extend(items.iter().filter_map(|item| match item {
                                Value::File(file) => Some((key.clone(), (**file).clone())),
                                _ => None,
                            }));
                        }
                        _ => {}
                    }
                }
                PreparedBody::Multipart { fields, files }
            }
            Some(other) => {
                return Err((format!("unsupported body type {other}"), "RequestBodyError"));
            }
        })
    }

    /// Dify keeps the last value for a repeated key.
    fn key_values(&self, pool: &Pool, text_only: bool) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in self.body.iter().filter(|item| !(text_only && item.is_file)) {
            let key = item.key.render(pool, Render::Text);
            let value = item.value.render(pool, Render::Text);
            match pairs.iter_mut().find(|(existing, _)| *existing == key) {
                Some(pair) => pair.1 = value,
                None => pairs.push((key, value)),
            }
        }
        pairs
    }
}

#[derive(Debug)]
enum PreparedBody {
    Absent,
    Text(String),
    Json(serde_json::Value),
    Binary(File),
    Form(Vec<(String, String)>),
    Multipart { fields: Vec<(String, String)>, files: Vec<(String, File)> },
}

#[derive(Debug)]
struct Prepared {
    method: String,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// The header the node's authorization sets.
    credential_headers: Vec<String>,
    body: PreparedBody,
    timeouts: HttpTimeouts,
    verify_tls: bool,
}

/// `key:value` lines; the first colon splits, a missing value is empty, later keys win.
fn parse_headers(text: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        set_header(&mut headers, key.trim(), value.trim().to_owned());
    }
    headers
}

fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    match headers.iter_mut().find(|(existing, _)| existing == name) {
        Some(header) => header.1 = value,
        None => headers.push((name.to_owned(), value)),
    }
}

fn basic_credentials(credentials: &str) -> String {
    if credentials.contains(':') {
        base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
    } else {
        credentials.to_owned()
    }
}

/// JSON as Dify reads a body: strict first, then with light repairs (trailing commas, single
/// quotes, control characters in strings) the way `json_repair` fixes common mistakes.
fn parse_json_leniently(text: &str) -> Option<serde_json::Value> {
    if let Ok(value) = serde_json::from_str(text) {
        return Some(value);
    }
    let repaired = repair_json(text);
    serde_json::from_str(&repaired).ok()
}

fn repair_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string: Option<char> = None;
    let mut escaped = false;
    let chars: Vec<char> = text.trim().chars().collect();
    for (index, &ch) in chars.iter().enumerate() {
        match in_string {
            Some(quote) => {
                if escaped {
                    escaped = false;
                    out.push(ch);
                } else if ch == '\\' {
                    escaped = true;
                    out.push(ch);
                } else if ch == quote {
                    in_string = None;
                    out.push('"');
                } else if ch == '"' {
                    out.push_str("\\\"");
                } else if ch == '\n' {
                    out.push_str("\\n");
                } else if ch == '\t' {
                    out.push_str("\\t");
                } else if (ch as u32) < 0x20 {
                    out.push_str(&format!("\\u{:04x}", ch as u32));
                } else {
                    out.push(ch);
                }
            }
            None => match ch {
                '"' | '\'' => {
                    in_string = Some(ch);
                    out.push('"');
                }
                ',' => {
                    let next = chars[index + 1..].iter().find(|next| !next.is_whitespace());
                    if !matches!(next, Some('}' | ']') | None) {
                        out.push(ch);
                    }
                }
                _ => out.push(ch),
            },
        }
    }
    if in_string.is_some() {
        out.push('"');
    }
    out
}

async fn execute(http: Arc<dyn HttpPort>, files: Option<Arc<dyn FilePort>>, prepared: Prepared, fail_on_error_status: bool) -> NodeResult {
    let request_log = request_log(&prepared);
    let process_data = map_of([("request", Value::from(request_log))]);
    let body = match build_body(&prepared.body, files.as_deref()).await {
        Ok(body) => body,
        Err(error) => {
            return NodeResult::failed(error.message, "FileFetchError").with_process_data(process_data);
        }
    };
    let request = HttpRequest {
        method: prepared.method.clone(),
        url: prepared.url.clone(),
        headers: prepared.headers.clone(),
        query: prepared.query.clone(),
        body,
        timeouts: prepared.timeouts.clone(),
        verify_tls: prepared.verify_tls,
        max_response_bytes: MAX_BINARY_BYTES,
        credential_headers: prepared.credential_headers.clone(),
    };
    let response = match http.send(request).await {
        Ok(response) => response,
        Err(error) => {
            return NodeResult::failed(error.message, "HttpRequestNodeError").with_process_data(process_data);
        }
    };
    let is_file = response_is_file(&response);
    let threshold = if is_file { MAX_BINARY_BYTES } else { MAX_TEXT_BYTES };
    if response.body.len() > threshold {
        return NodeResult::failed(
            format!(
                "{} size is too large, max size is {:.2} MB, but current size is {}.",
                if is_file { "File" } else { "Text" },
                threshold as f64 / 1024.0 / 1024.0,
                readable_size(response.body.len())
            ),
            "ResponseSizeError",
        )
        .with_process_data(process_data);
    }
    let files_value = if is_file {
        match store_response_file(files.as_deref(), &prepared.url, &response).await {
            Ok(file) => Value::array(vec![Value::File(Arc::new(file))]),
            Err(error) => {
                return NodeResult::failed(error.message, "FileFetchError").with_process_data(process_data);
            }
        }
    } else {
        Value::array(Vec::new())
    };
    let mut headers = map_with_capacity(response.headers.len());
    for (name, value) in &response.headers {
        let name = name.to_ascii_lowercase();
        let joined = match headers.get(name.as_str()) {
            Some(Value::Str(existing)) => format!("{existing}, {value}"),
            _ => value.clone(),
        };
        headers.insert(Arc::from(name.as_str()), Value::from(joined));
    }
    let body_text = if is_file { String::new() } else { decode_text(&response) };
    let outputs = map_of([
        ("status_code", Value::Int(i64::from(response.status))),
        ("body", Value::from(body_text)),
        ("headers", Value::object(headers)),
        ("files", files_value),
    ]);
    if !(200..300).contains(&response.status) && fail_on_error_status {
        return NodeResult {
            outputs: Arc::new(outputs),
            ..NodeResult::failed(format!("Request failed with status code {}", response.status), "HTTPResponseCodeError")
                .with_process_data(process_data)
        };
    }
    NodeResult::succeeded(outputs).with_process_data(process_data)
}

async fn read_file(files: Option<&dyn FilePort>, file: &File) -> Result<Bytes, PortError> {
    match files {
        Some(port) => port.read(file).await,
        None => Err(PortError::new(
            crate::ports::PortErrorKind::Other,
            format!("cannot read file {}: no file storage is configured", file.filename.clone().unwrap_or_default()),
        )),
    }
}

async fn build_body(body: &PreparedBody, files: Option<&dyn FilePort>) -> Result<HttpBody, PortError> {
    Ok(match body {
        PreparedBody::Absent => HttpBody::None,
        PreparedBody::Text(text) => HttpBody::Bytes { content: Bytes::from(text.clone()), content_type: None },
        PreparedBody::Json(value) => {
            HttpBody::Bytes { content: Bytes::from(serde_json::to_vec(value).unwrap_or_default()), content_type: None }
        }
        PreparedBody::Binary(file) => HttpBody::Bytes { content: read_file(files, file).await?, content_type: None },
        PreparedBody::Form(pairs) => HttpBody::Form(pairs.clone()),
        PreparedBody::Multipart { fields, files: attachments } => {
            let mut parts: Vec<MultipartField> = fields
                .iter()
                .map(|(name, value)| MultipartField { name: name.clone(), value: MultipartValue::Text(value.clone()) })
                .collect();
            for (name, file) in attachments {
                parts.push(MultipartField {
                    name: name.clone(),
                    value: MultipartValue::File {
                        filename: file.filename.clone().unwrap_or_default(),
                        content_type: file.mime_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
                        content: read_file(files, file).await?,
                    },
                });
            }
            if attachments.is_empty() {
                // Dify always sends a multipart body, with an empty placeholder part when no
                // file is attached.
                parts.push(MultipartField {
                    name: "__multipart_placeholder__".into(),
                    value: MultipartValue::File {
                        filename: String::new(),
                        content_type: "application/octet-stream".into(),
                        content: Bytes::new(),
                    },
                });
            }
            HttpBody::Multipart(parts)
        }
    })
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

fn content_disposition_filename(value: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        match key.as_str() {
            "filename*" => Some(value.rsplit("''").next().unwrap_or(value).to_owned()),
            "filename" => Some(value.to_owned()),
            _ => None,
        }
    })
}

/// Dify's `Response.is_file`.
fn response_is_file(response: &HttpResponse) -> bool {
    let content_type = header(response, "content-type").unwrap_or_default();
    let main = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if let Some(disposition) = header(response, "content-disposition") {
        let kind = disposition.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if kind == "attachment" || content_disposition_filename(disposition).is_some() {
            return true;
        }
    }
    if main.starts_with("text/") && !main.contains("csv") {
        return false;
    }
    if main.starts_with("application/") {
        if ["json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "graphql"].iter().any(|kind| main.contains(kind)) {
            return false;
        }
        let sample = &response.body[..response.body.len().min(1024)];
        if std::str::from_utf8(sample).is_ok() {
            let markers: [&[u8]; 7] = [b"{", b"[", b"<", b"function", b"var ", b"const ", b"let "];
            if markers.iter().any(|marker| sample.windows(marker.len()).any(|window| window == *marker)) {
                return false;
            }
        }
    }
    if mime_guess::get_mime_extensions_str(&main).is_some() {
        let top = main.split('/').next().unwrap_or_default();
        return matches!(top, "application" | "image" | "audio" | "video");
    }
    ["image/", "audio/", "video/"].iter().any(|media| main.contains(media))
}

fn decode_text(response: &HttpResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn readable_size(size: usize) -> String {
    if size < 1024 {
        format!("{size} bytes")
    } else if size < 1024 * 1024 {
        format!("{:.2} KB", size as f64 / 1024.0)
    } else {
        format!("{:.2} MB", size as f64 / 1024.0 / 1024.0)
    }
}

async fn store_response_file(files: Option<&dyn FilePort>, url: &str, response: &HttpResponse) -> Result<File, PortError> {
    let from_url = url.split('?').next().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
    let disposition_name = header(response, "content-disposition").and_then(content_disposition_filename);
    let mime_type = disposition_name
        .as_deref()
        .and_then(|name| mime_guess::from_path(name).first_raw())
        .map(str::to_owned)
        .or_else(|| header(response, "content-type").filter(|value| !value.is_empty()).map(str::to_owned))
        .or_else(|| mime_guess::from_path(&from_url).first_raw().map(str::to_owned))
        .unwrap_or_else(|| "application/octet-stream".into());
    let filename = disposition_name.unwrap_or(from_url);
    match files {
        Some(port) => port.store(response.body.clone(), &mime_type, &filename).await,
        None => {
            Err(PortError::new(crate::ports::PortErrorKind::Other, "the response is a file, and no file storage is configured to keep it"))
        }
    }
}

/// The request as Dify logs it in `process_data.request`.
fn request_log(prepared: &Prepared) -> String {
    let (host, path) = split_url(&prepared.url);
    let path = if prepared.query.is_empty() {
        path
    } else {
        let encoded: Vec<String> =
            prepared.query.iter().map(|(key, value)| format!("{}={}", form_encode(key), form_encode(value))).collect();
        format!("{}?{}", path.split('?').next().unwrap_or("/"), encoded.join("&"))
    };
    let mut log = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", prepared.method);
    let mut headers = prepared.headers.clone();
    if matches!(prepared.body, PreparedBody::Multipart { .. }) {
        headers.push(("Content-Type".into(), "multipart/form-data; boundary=----WebKitFormBoundaryflowgate".into()));
    }
    for (name, value) in &headers {
        log.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = match &prepared.body {
        PreparedBody::Absent => String::new(),
        PreparedBody::Text(text) => text.clone(),
        PreparedBody::Json(value) => value.to_string(),
        PreparedBody::Binary(file) => format!("<binary_content: size={} bytes>", file.size.max(0)),
        PreparedBody::Form(pairs) => {
            pairs.iter().map(|(key, value)| format!("{}={}", form_encode(key), form_encode(value))).collect::<Vec<_>>().join("&")
        }
        PreparedBody::Multipart { fields, .. } => {
            let mut body = String::new();
            for (key, value) in fields {
                body.push_str(&format!(
                    "------WebKitFormBoundaryflowgate\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n"
                ));
            }
            body.push_str("------WebKitFormBoundaryflowgate--\r\n");
            body
        }
    };
    if !body.is_empty() {
        log.push_str(&format!("Content-Length: {}\r\n", body.chars().count()));
    }
    log.push_str("\r\n");
    log.push_str(&body);
    log
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        Some(index) => (rest[..index].to_owned(), rest[index..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_parse_like_dify() {
        assert_eq!(parse_headers("aa:bb\n cc:dd"), vec![("aa".into(), "bb".into()), ("cc".into(), "dd".into())]);
        assert_eq!(parse_headers("aa:\n cc:dd\n"), vec![("aa".into(), "".into()), ("cc".into(), "dd".into())]);
        assert_eq!(parse_headers("aa\n cc : dd"), vec![("aa".into(), "".into()), ("cc".into(), "dd".into())]);
        assert_eq!(parse_headers("x: 1\nx: 2"), vec![("x".into(), "2".into())]);
        assert_eq!(parse_headers("url: http://a:b"), vec![("url".into(), "http://a:b".into())]);
    }

    #[test]
    fn basic_auth_encodes_only_user_password_pairs() {
        assert_eq!(basic_credentials("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(basic_credentials("already-encoded"), "already-encoded");
    }

    #[test]
    fn json_bodies_are_repaired_like_json_repair() {
        assert_eq!(parse_json_leniently(r#"{"a": 1,}"#), Some(serde_json::json!({"a": 1})));
        assert_eq!(parse_json_leniently("{'a': 'b'}"), Some(serde_json::json!({"a": "b"})));
        assert_eq!(parse_json_leniently("{\"a\": \"line\nbreak\"}"), Some(serde_json::json!({"a": "line\nbreak"})));
    }

    fn response(content_type: &str, body: &[u8]) -> HttpResponse {
        HttpResponse { status: 200, headers: vec![("content-type".into(), content_type.into())], body: Bytes::copy_from_slice(body) }
    }

    #[test]
    fn file_detection_follows_dify() {
        assert!(!response_is_file(&response("application/json", b"{}")));
        assert!(!response_is_file(&response("text/html", b"<p>")));
        // Python guesses `.csv` for text/csv, whose main type is not a binary one.
        assert!(!response_is_file(&response("text/csv", b"a,b")));
        assert!(response_is_file(&response("image/png", &[0x89, b'P', b'N', b'G'])));
        assert!(response_is_file(&response("application/pdf", &[0x25, 0x50, 0xff, 0xfe])));
        assert!(!response_is_file(&response("application/x-custom", b"{\"a\": 1}")));
        let mut attachment = response("text/plain", b"hello");
        attachment.headers.push(("content-disposition".into(), "attachment; filename=\"a.txt\"".into()));
        assert!(response_is_file(&attachment));
    }
}
