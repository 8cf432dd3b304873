//! A small deterministic HTTP server for HTTP-node conformance cases. The graphon oracle and
//! flowgate's tests call the same server, so responses must not depend on the client (no
//! dates, no echoed user agents).
//!
//! Routes:
//! - `/echo`: JSON with the method, path, query pairs, content type, `x-*` and authorization
//!   headers, and the body as text;
//! - `/json`: a fixed JSON document;
//! - `/text`: `hello world` as text/plain;
//! - `/status/{code}`: that status with a short text body;
//! - `/redirect`: 302 to `/json`;
//! - `/file`: a small PNG-typed attachment.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listener: TcpListener) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = handle(socket).await;
        });
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(socket: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        if buffer.len() > 1 << 20 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or("/").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.iter().find(|(name, _)| name == "content-length").and_then(|(_, value)| value.parse().ok()).unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(Some(Request { method, target, headers, body }))
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if (ch as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", ch as u32)),
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 3 <= bytes.len()
            && let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[index + 1..index + 3]), 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn echo(request: &Request) -> String {
    let (path, query) = request.target.split_once('?').unwrap_or((&request.target, ""));
    let pairs: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            format!("[{}, {}]", json_string(&percent_decode(key)), json_string(&percent_decode(value)))
        })
        .collect();
    let mut headers: Vec<&(String, String)> =
        request.headers.iter().filter(|(name, _)| name.starts_with("x-") || name == "authorization").collect();
    headers.sort();
    let headers: Vec<String> = headers.iter().map(|(name, value)| format!("{}: {}", json_string(name), json_string(value))).collect();
    let content_type = request
        .headers
        .iter()
        .find(|(name, _)| name == "content-type")
        .map(|(_, value)| value.split(';').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = if content_type == "multipart/form-data" {
        multipart_summary(request)
    } else {
        String::from_utf8_lossy(&request.body).into_owned()
    };
    format!(
        "{{\"method\": {}, \"path\": {}, \"query\": [{}], \"content_type\": {}, \"headers\": {{{}}}, \"body\": {}}}",
        json_string(&request.method),
        json_string(path),
        pairs.join(", "),
        json_string(&content_type),
        headers.join(", "),
        json_string(&body)
    )
}

/// Multipart boundaries are random; report the parts' names, filenames and contents instead.
fn multipart_summary(request: &Request) -> String {
    let content_type = request.headers.iter().find(|(name, _)| name == "content-type").map(|(_, value)| value.as_str()).unwrap_or("");
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return String::new();
    };
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    let body = String::from_utf8_lossy(&request.body);
    let mut parts = Vec::new();
    for part in body.split(delimiter.as_str()).skip(1) {
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let disposition = head.lines().find(|line| line.to_ascii_lowercase().starts_with("content-disposition")).unwrap_or("");
        let field = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|item| item.strip_prefix(&format!("{key}=")).map(|value| value.trim_matches('"').to_owned()))
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        parts.push(format!("{}|{}|{}", field("name").unwrap_or_default(), field("filename").unwrap_or_else(|| "-".into()), content));
    }
    parts.join("\n")
}

async fn handle(mut socket: TcpStream) -> std::io::Result<()> {
    let Some(request) = read_request(&mut socket).await? else {
        return Ok(());
    };
    let path = request.target.split('?').next().unwrap_or("/").to_owned();
    let (status, content_type, extra, body): (u16, &str, &str, Vec<u8>) = match path.as_str() {
        "/echo" => (200, "application/json", "", echo(&request).into_bytes()),
        "/json" => (200, "application/json", "", br#"{"name": "flowgate", "items": [1, 2, 3], "nested": {"ok": true}}"#.to_vec()),
        "/text" => (200, "text/plain; charset=utf-8", "", b"hello world".to_vec()),
        "/redirect" => (302, "text/plain", "location: /json\r\n", b"moved".to_vec()),
        "/file" => {
            (200, "image/png", "content-disposition: attachment; filename=\"dot.png\"\r\n", vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3])
        }
        other => match other.strip_prefix("/status/").and_then(|code| code.parse::<u16>().ok()) {
            Some(code) => (code, "text/plain", "", format!("status {code}").into_bytes()),
            None => (404, "text/plain", "", b"not found".to_vec()),
        },
    };
    let reason = match status {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body).await?;
    socket.shutdown().await
}
