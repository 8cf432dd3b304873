//! A lean HTTP/1.1 load generator: a fixed number of keep-alive connections, each sending the
//! same request back to back, so the generator spends as little CPU as possible and the server
//! gets the rest of the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request, pre-rendered, and what a correct answer contains.
pub struct Request {
    bytes: Vec<u8>,
    /// Every one of these must appear in a 200 response body for it to count as a success.
    expect: Vec<&'static str>,
}

impl Request {
    pub fn post_json(address: &str, path: &str, key: &str, body: &str, expect: Vec<&'static str>) -> Self {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        Self { bytes, expect }
    }
}

/// A request factory: most scenarios send one request; some vary it per request.
pub type MakeRequest = Arc<dyn Fn(u64) -> Arc<Request> + Send + Sync>;

#[derive(Default, Clone)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    /// Latencies of successful requests, in microseconds, sorted.
    pub latencies: Vec<u32>,
    pub elapsed: Duration,
    /// The first failure seen, to print.
    pub first_failure: Option<String>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in milliseconds.
    pub fn percentile_ms(&self, percentile: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * percentile / 100.0).round() as usize;
        f64::from(self.latencies[index]) / 1000.0
    }
}

/// When a load ends: after a time, or after a number of requests in all.
#[derive(Clone, Copy)]
pub enum Until {
    Elapsed(Duration),
    Requests(u64),
}

/// How requests are sent: each connection sends its next request as soon as the last one is
/// answered (closed loop: the server's ceiling), or at a fixed rate across all connections
/// (open loop). Open-loop latencies count from when a request was due, not from when a busy
/// connection got round to sending it, so a stalled server cannot hide its stall.
#[derive(Clone, Copy)]
pub enum Pace {
    AsFastAsPossible,
    PerSecond(f64),
}

/// Sends requests on `connections` keep-alive connections until `until`; latencies are kept only
/// when `keep_latencies` (a soak of a million requests does not need them).
pub async fn load(address: &str, connections: usize, make: MakeRequest, until: Until, keep_latencies: bool) -> Outcome {
    load_paced(address, connections, make, until, Pace::AsFastAsPossible, keep_latencies).await
}

pub async fn load_paced(address: &str, connections: usize, make: MakeRequest, until: Until, pace: Pace, keep_latencies: bool) -> Outcome {
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = match until {
        Until::Elapsed(duration) => Some(started + duration),
        Until::Requests(_) => None,
    };
    let limit = match until {
        Until::Requests(count) => count,
        Until::Elapsed(_) => u64::MAX,
    };
    let mut workers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let address = address.to_owned();
        let make = make.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut connection: Option<Connection> = None;
            // Open loop: this connection's n-th request is due at start + (n × connections +
            // worker) / rate.
            let mut own_sent = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let due = match pace {
                    Pace::AsFastAsPossible => None,
                    Pace::PerSecond(rate) => {
                        let slot = own_sent * connections as u64 + worker as u64;
                        Some(started + Duration::from_secs_f64(slot as f64 / rate))
                    }
                };
                if let Some(due) = due {
                    if deadline.is_some_and(|deadline| due >= deadline) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                own_sent += 1;
                let sequence = issued.fetch_add(1, Ordering::Relaxed);
                if sequence >= limit {
                    break;
                }
                let request = make(sequence);
                let begun = due.unwrap_or_else(Instant::now);
                let result = match connection.as_mut() {
                    Some(open) => open.exchange(&request).await,
                    None => match Connection::open(&address).await {
                        Ok(open) => connection.insert(open).exchange(&request).await,
                        Err(error) => Err(error),
                    },
                };
                match result {
                    Ok((200, body)) if request.expect.iter().all(|needle| verdict_contains(&body, needle.as_bytes())) => {
                        outcome.ok += 1;
                        if keep_latencies {
                            outcome.latencies.push(u32::try_from(begun.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                    }
                    Ok((status, body)) => {
                        outcome.failed += 1;
                        outcome
                            .first_failure
                            .get_or_insert_with(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
                    }
                    Err(error) => {
                        outcome.failed += 1;
                        outcome.first_failure.get_or_insert(error);
                        connection = None;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for worker in workers {
        if let Ok(outcome) = worker.await {
            total.ok += outcome.ok;
            total.failed += outcome.failed;
            total.latencies.extend(outcome.latencies);
            if total.first_failure.is_none() {
                total.first_failure = outcome.first_failure;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    total.elapsed = started.elapsed();
    total.latencies.sort_unstable();
    total
}

/// Whether the verdict parts of a response hold `needle`: a blocking answer's status comes
/// first, an event stream's last event at the end; the middle may be megabytes of outputs.
fn verdict_contains(body: &[u8], needle: &[u8]) -> bool {
    const SPAN: usize = 4096;
    contains(&body[..body.len().min(SPAN)], needle) || contains(&body[body.len().saturating_sub(SPAN)..], needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(address).await.map_err(|error| format!("connect {address}: {error}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self { stream, buffer: Vec::with_capacity(64 * 1024) })
    }

    /// Sends a request and reads its whole response (Content-Length or chunked).
    async fn exchange(&mut self, request: &Request) -> Result<(u16, Vec<u8>), String> {
        self.stream.write_all(&request.bytes).await.map_err(|error| format!("write: {error}"))?;
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        self.buffer.drain(..head_end + 4);
        let body = if let Some(length) = header(&head, "content-length").and_then(|value| value.parse::<usize>().ok()) {
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.drain(..length).collect()
        } else if header(&head, "transfer-encoding").is_some_and(|value| value.contains("chunked")) {
            self.read_chunked().await?
        } else {
            return Err(format!("response without a length: {head}"));
        };
        Ok((status, body))
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.buffer, b"\r\n") {
                    break end;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            self.buffer.drain(..line_end + 2);
            while self.buffer.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buffer.drain(..size));
            self.buffer.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk).await.map_err(|error| format!("read: {error}"))?;
        if read == 0 {
            return Err("connection closed".into());
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| line.split_once(':').filter(|(key, _)| key.trim() == name).map(|(_, value)| value.trim()))
}
