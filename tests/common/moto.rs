//! A real S3-compatible server for the object-store tests: moto's server mode, started
//! from the venv that `.ci/install-moto` creates (`target/moto-venv`, or
//! `$SAVEPOINT_MOTO_VENV`), on a free loopback port, with one bucket; killed at drop.
//!
//! A missing venv fails the test with a message saying how to install it: these tests
//! never skip silently.

use super::free_port;
use savepoint_coordinator::store::object::{BucketStore, S3Config, S3Credentials};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long moto may take to start answering (it imports Flask and all of moto).
const STARTUP: Duration = Duration::from_secs(60);

/// A running moto server; stopped when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// moto's output, for the failure message when it does not come up.
    log: tempfile::NamedTempFile,
}

/// Where `.ci/install-moto` puts the venv.
fn venv() -> PathBuf {
    std::env::var_os("SAVEPOINT_MOTO_VENV")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv"))
}

impl Moto {
    /// Starts moto on a free loopback port and creates the bucket `test-bucket`.
    pub async fn start() -> Moto {
        let server = venv().join("bin/moto_server");
        assert!(
            server.is_file(),
            "moto is not installed: {} does not exist. The object-store tests need moto's \
             S3 server; install it with `bash .ci/install-moto` (which `.ci/run` calls).",
            server.display()
        );
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("moto log file");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("moto log"))
            .stderr(log.reopen().expect("moto log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto ({}) failed: {e}", server.display()));
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "test-bucket".to_string(),
            log,
        };
        moto.create_bucket(port).await;
        moto
    }

    /// Sends `PUT /<bucket>` until moto answers it (it accepts unsigned bucket creation).
    async fn create_bucket(&mut self, port: u16) {
        let started = Instant::now();
        loop {
            if let Some(status) = http_put(port, &format!("/{}", self.bucket)).await {
                assert_eq!(status, 200, "creating the bucket in moto answered {status}");
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "moto exited with {exit} before answering:\n{}",
                    self.output()
                );
            }
            assert!(
                started.elapsed() < STARTUP,
                "moto did not answer on port {port} within {STARTUP:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Settings for a store under `s3://<bucket>/<prefix>` on this server, with fake
    /// credentials (moto accepts any, but requests are signed as for real S3).
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            url: format!("s3://{}/{prefix}", self.bucket),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".to_string()),
            allow_http: true,
            credentials: Some(S3Credentials {
                access_key_id: "testing".to_string(),
                secret_access_key: "testing".to_string(),
            }),
        }
    }

    /// A store client of its own on `prefix`, to look at (and damage) what a server wrote.
    pub fn store(&self, prefix: &str) -> BucketStore {
        BucketStore::connect_s3(&self.config(prefix)).expect("connect to moto")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `PUT <path>` over HTTP/1.1; the status code, or None if nothing answered.
async fn http_put(port: u16, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let status_line = String::from_utf8_lossy(&response);
        status_line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}
