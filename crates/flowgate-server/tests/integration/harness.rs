//! Deployments of `flowgate serve` for end-to-end tests: a data directory, and on PostgreSQL a
//! database of its own (`FLOWGATE_TEST_POSTGRES`, default the machine's `test` database's
//! server), created for the test and dropped after it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sqlx::Connection;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn postgres_admin_url() -> String {
    std::env::var("FLOWGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn admin_sql(sql: String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut admin =
            sqlx::PgConnection::connect(&postgres_admin_url()).await.expect("PostgreSQL must be running for the cluster-mode tests");
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    });
}

fn temp_data_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flowgate-{tag}-{}", uuid::Uuid::new_v4().simple()))
}

pub struct Deployment {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    database_name: Option<String>,
}

impl Deployment {
    pub fn sqlite(tag: &str) -> Self {
        Self { data_dir: temp_data_dir(tag), database_url: None, database_name: None }
    }

    pub fn postgres(tag: &str) -> Self {
        let name = format!("flowgate_test_{}", uuid::Uuid::new_v4().simple());
        admin_sql(format!("CREATE DATABASE {name}"));
        let admin = postgres_admin_url();
        let base = admin.rsplit_once('/').map(|(base, _)| base.to_owned()).expect("FLOWGATE_TEST_POSTGRES needs a database path");
        Self { data_dir: temp_data_dir(tag), database_url: Some(format!("{base}/{name}")), database_name: Some(name) }
    }

    /// An embedded deployment whose data lives in `data_dir`.
    pub fn sqlite_in(data_dir: PathBuf) -> Self {
        Self { data_dir, database_url: None, database_name: None }
    }

    /// A deployment on a database the test runs itself (no database is created or dropped).
    pub fn on_database(tag: &str, url: &str) -> Self {
        Self { data_dir: temp_data_dir(tag), database_url: Some(url.to_owned()), database_name: None }
    }

    pub fn flowgate(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        command.current_dir(repo_root()).env("FLOWGATE_DATA_DIR", &self.data_dir).env_remove("DATABASE_URL");
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        command
    }

    /// `flowgate apps import FILE`: `{"app_id", "api_key", ...}`.
    pub fn import(&self, dsl: &str) -> Json {
        let output = self.flowgate().args(["apps", "import", dsl]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_with_env(extra, &[])
    }

    pub fn serve_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let address = format!("127.0.0.1:{}", free_port());
        // The log goes to a file (a pipe nobody reads would fill and stall the server).
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log_path = self.data_dir.join(format!("serve-{}.log", address.replace(':', "-")));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = self
            .flowgate()
            .args(["serve", "--listen", &address])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&address).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited with {status}: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, address }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(name) = &self.database_name {
            admin_sql(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request with a JSON body; returns the status and the body.
pub fn http(address: &str, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = request(address, method, path, key, "application/json", body.unwrap_or(""));
    (status, body)
}

/// One HTTP/1.1 request; returns the status, the response head (lower-cased) and the body.
pub fn request(address: &str, method: &str, path: &str, key: Option<&str>, content_type: &str, body: &str) -> (u16, String, String) {
    let auth = key.map(|key| format!("Bearer {key}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    request_with_headers(address, method, path, &headers, body)
}

/// One HTTP/1.1 request with the given headers (a JSON content type unless they set one).
pub fn request_with_headers(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut head: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_owned() };
    (status, head, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A conformance case's inputs and the outputs graphon produced for them.
pub fn conformance_case(id: &str) -> (Json, Json) {
    let cases = std::fs::read_to_string(repo_root().join("tests/conformance/cases.jsonl")).unwrap();
    let case: Json = cases.lines().map(|line| serde_json::from_str::<Json>(line).unwrap()).find(|case| case["id"] == id).unwrap();
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(format!("tests/conformance/expected/{id}.json"))).unwrap()).unwrap();
    (case["inputs"].clone(), expected["outputs"].clone())
}
