//! Cluster mode's blob store: two servers on one PostgreSQL database and one S3-compatible bucket
//! (moto's server, `scripts/s3-server`). A file uploaded to one server is read by a run on the
//! other, and a run-log payload too large for the database lands in the bucket and is served back
//! whole.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::{Deployment, http, repo_root, request};

struct S3Server {
    child: Child,
    address: String,
}

impl S3Server {
    fn start() -> Self {
        let output = Command::new(repo_root().join("scripts/s3-server")).output().unwrap();
        assert!(output.status.success(), "scripts/s3-server: {}", String::from_utf8_lossy(&output.stderr));
        let program = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, address }
    }

    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, _, listing) = request(&self.address, "GET", &format!("/{bucket}?list-type=2&prefix={prefix}"), None, "text/plain", "");
        assert_eq!(status, 200, "{listing}");
        listing.split("<Key>").skip(1).filter_map(|rest| rest.split_once("</Key>")).map(|(key, _)| key.to_owned()).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upload(address: &str, key: &str, name: &str, content: &str) -> Json {
    let boundary = "flowgate-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nalice\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n{content}\r\n\
         --{boundary}--\r\n"
    );
    let (status, _, response) =
        request(address, "POST", "/v1/files/upload", Some(key), &format!("multipart/form-data; boundary={boundary}"), &body);
    assert_eq!(status, 201, "{response}");
    serde_json::from_str(&response).unwrap()
}

#[test]
fn two_servers_share_uploads_and_large_payloads_through_s3() {
    let s3 = S3Server::start();
    let bucket = "flowgate-test";
    let (status, _, created) = request(&s3.address, "PUT", &format!("/{bucket}"), None, "text/plain", "");
    assert_eq!(status, 200, "{created}");

    let deployment = Deployment::postgres("s3");
    let imported = deployment.import("tests/service/echo-upload-workflow.yml");
    let key = imported["api_key"].as_str().unwrap().to_owned();
    let endpoint = format!("http://{}", s3.address);
    let env = [
        ("BLOB_URL", "s3://flowgate-test/cluster-a"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let first = deployment.serve_with_env(&[], &env);
    let second = deployment.serve_with_env(&[], &env);

    let document = "Quarterly figures: revenue up 12%.";
    let uploaded = upload(&first.address, &key, "figures.txt", document);
    let uploads = s3.keys(bucket, "cluster-a/");
    assert_eq!(uploads.len(), 1, "one object for the upload: {uploads:?}");

    // Random hex does not compress below the size that sends a payload to the blob store.
    let long: String = (0..25_000).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let body = serde_json::json!({
        "inputs": {"long": long, "doc": {"type": "document", "transfer_method": "local_file", "upload_file_id": uploaded["id"]}},
        "user": "alice",
    })
    .to_string();
    let (status, response) = http(&second.address, "POST", "/v1/workflows/run", Some(&key), Some(&body));
    assert_eq!(status, 200, "{response}");
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "succeeded", "{response}");
    assert_eq!(response["data"]["outputs"]["text"], document);
    assert_eq!(response["data"]["outputs"]["long"].as_str().map(str::len), Some(long.len()));

    // The first server serves the run's log, its large inputs and outputs read back from the bucket.
    let run_id = response["workflow_run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let (status, logged) = http(&first.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&key), None);
        if status == 200 {
            break logged;
        }
        assert!(Instant::now() < deadline, "the run was not logged: {status} {logged}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let logged: Json = serde_json::from_str(&logged).unwrap();
    assert_eq!(logged["outputs"]["long"].as_str(), Some(long.as_str()));
    let inputs: Json = serde_json::from_str(logged["inputs"].as_str().unwrap()).unwrap();
    assert_eq!(inputs["long"].as_str(), Some(long.as_str()));
    let payloads = s3.keys(bucket, "cluster-a/payloads/");
    assert!(!payloads.is_empty(), "the large payload is in the bucket: {:?}", s3.keys(bucket, "cluster-a/"));

    // Nothing went to the local folder the embedded mode would use.
    let local_blobs = deployment.data_dir.join("blobs");
    let local_files = std::fs::read_dir(&local_blobs).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(local_files, 0, "{} holds files", local_blobs.display());
}
