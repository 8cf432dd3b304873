//! A minimal Redis client: RESP2 commands over pooled TCP connections, enough for the limiter's
//! one script. (A full client crate would bring dozens of dependencies for three commands.)

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Server(String),
    #[error("redis: unreadable reply: {0}")]
    Protocol(String),
    #[error("redis URL {0}: expected redis://HOST[:PORT][/DB]")]
    Url(String),
}

type Connection = BufReader<TcpStream>;

pub struct Redis {
    address: String,
    database: Option<String>,
    idle: Mutex<Vec<Connection>>,
    timeout: Duration,
}

const MAX_IDLE: usize = 32;
/// Replies nest this deep at most (the limiter's script returns a flat array).
const MAX_DEPTH: usize = 4;
const MAX_BULK: usize = 16 * 1024 * 1024;

impl Redis {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| RedisError::Url(url.to_owned()))?;
        let (host, database) = match rest.split_once('/') {
            Some((host, database)) if !database.is_empty() => (host, Some(database.to_owned())),
            Some((host, _)) => (host, None),
            None => (rest, None),
        };
        if host.is_empty() || host.contains('@') {
            return Err(RedisError::Url(url.to_owned()));
        }
        let address = if host.contains(':') { host.to_owned() } else { format!("{host}:6379") };
        Ok(Self { address, database, idle: Mutex::new(Vec::new()), timeout })
    }

    async fn connect(&self) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let mut connection = BufReader::new(stream);
        if let Some(database) = &self.database {
            send(&mut connection, &[b"SELECT", database.as_bytes()]).await?;
            if let Reply::Error(message) = read_reply(&mut connection, 0).await? {
                return Err(RedisError::Server(message));
            }
        }
        Ok(connection)
    }

    /// Runs one command; a connection that failed is dropped, a healthy one reused.
    pub async fn command(&self, parts: &[&[u8]]) -> Result<Reply, RedisError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let timeout = self.timeout;
        let work = async {
            let mut connection = match pooled {
                Some(connection) => connection,
                None => self.connect().await?,
            };
            send(&mut connection, parts).await?;
            let reply = read_reply(&mut connection, 0).await?;
            Ok::<_, RedisError>((connection, reply))
        };
        let (connection, reply) = tokio::time::timeout(timeout, work).await.map_err(|_| RedisError::Timeout(timeout))??;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(connection);
        }
        match reply {
            Reply::Error(message) => Err(RedisError::Server(message)),
            reply => Ok(reply),
        }
    }
}

async fn send(connection: &mut Connection, parts: &[&[u8]]) -> Result<(), RedisError> {
    let mut buffer = Vec::with_capacity(64 + parts.iter().map(|part| part.len() + 16).sum::<usize>());
    buffer.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        buffer.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        buffer.extend_from_slice(part);
        buffer.extend_from_slice(b"\r\n");
    }
    connection.get_mut().write_all(&buffer).await?;
    Ok(())
}

async fn read_line(connection: &mut Connection) -> Result<String, RedisError> {
    let mut line = Vec::new();
    let read = connection.read_until(b'\n', &mut line).await?;
    if read == 0 {
        return Err(RedisError::Protocol("connection closed".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol("a line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RedisError::Protocol("a line that is not UTF-8".into()))
}

fn read_reply(connection: &mut Connection, depth: usize) -> futures::future::BoxFuture<'_, Result<Reply, RedisError>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(RedisError::Protocol("nested too deep".into()));
        }
        let line = read_line(connection).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let number = || rest.parse::<i64>().map_err(|_| RedisError::Protocol(format!("`{line}`")));
        match kind {
            "+" => Ok(Reply::Status(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let length = number()?;
                if length < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let length = usize::try_from(length).map_err(|_| RedisError::Protocol("bad length".into()))?;
                if length > MAX_BULK {
                    return Err(RedisError::Protocol("a reply larger than 16 MiB".into()));
                }
                let mut data = vec![0; length + 2];
                connection.read_exact(&mut data).await?;
                data.truncate(length);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let count = number()?;
                if count < 0 {
                    return Ok(Reply::Array(Vec::new()));
                }
                let mut items = Vec::with_capacity(usize::try_from(count.min(1024)).unwrap_or(0));
                for _ in 0..count {
                    items.push(read_reply(connection, depth + 1).await?);
                }
                Ok(Reply::Array(items))
            }
            _ => Err(RedisError::Protocol(format!("`{line}`"))),
        }
    })
}
