//! The `savepointd` binary: starts on a free port, logs the address, serves, and drains
//! on SIGTERM with a task manager stream still open; takes its settings from a TOML file,
//! the environment and flags, in rising precedence, and refuses a bad file by name; with
//! `--http-listen` it also serves metrics over HTTP until it stops.

mod common;

use common::within;
use savepoint_coordinator::client::TaskManagerSession;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running savepointd, killed if the test ends without stopping it.
struct Daemon {
    child: Child,
    /// Its log lines (JSON), read from stdout by a thread.
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Daemon {
    fn spawn(data_dir: &std::path::Path) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_savepointd"));
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir);
        Daemon::spawn_command(command)
    }

    /// Spawns `command` (a savepointd whose logs must be JSON).
    fn spawn_command(mut command: Command) -> Daemon {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn savepointd");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let json = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                if sender.send(json).is_err() {
                    return;
                }
            }
        });
        Daemon { child, lines }
    }

    /// The next log line whose message is `message`, within [`common::WAIT`].
    fn wait_for_log(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + common::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no log line {message:?} ({e})"));
            if line["fields"]["message"] == message {
                return line;
            }
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded) for the process to exit.
    async fn exit_status(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "savepointd still running after {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepointd_serves_on_the_logged_address_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::spawn(dir.path());
    let listening = daemon.wait_for_log("savepointd listening");
    let address = listening["fields"]["address"]
        .as_str()
        .expect("address field")
        .to_string();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "{address}"
    );

    let channel = within(
        "a connection",
        savepoint_coordinator::client::connect(&address),
    )
    .await
    .expect("connect");
    let mut client = SavepointServiceClient::new(channel.clone());
    let job = common::job("daemon", &[("src", 1)], common::policy(0, 0));
    let fencing_token = common::register(&mut client, &job).await;
    assert_ne!(fencing_token, 0);
    let stats = common::stats(&mut client, "daemon").await;
    assert_eq!(stats.job_status(), proto::JobStatus::Created);

    // An open task manager stream must not hold up the drain.
    let task = proto::TaskInfo {
        job_id: "daemon".into(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: "src".into(),
            subtask_index: 0,
        }),
        attempt_id: 1,
        state: proto::TaskState::Running.into(),
    };
    let mut session = within(
        "the Welcome",
        TaskManagerSession::connect(channel, "tm-0", vec![task]),
    )
    .await
    .expect("task manager connects");
    assert_eq!(session.accepted_tasks(), 1);

    daemon.terminate();
    let status = daemon.exit_status(Duration::from_secs(5)).await;
    assert!(status.success(), "savepointd exited with {status}");
    let ended = within("the stream to end", session.next_message()).await;
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    let requested = daemon.wait_for_log("shutdown requested");
    assert_eq!(requested["fields"]["signal"], "SIGTERM");
    daemon.wait_for_log("savepointd stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_file_the_environment_and_flags_in_rising_precedence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_file = dir.path().join("from-file");
    let from_flag = dir.path().join("from-flag");
    let settings = dir.path().join("savepointd.toml");
    std::fs::write(
        &settings,
        format!(
            "listen = \"127.0.0.1:0\"\nlog-format = \"text\"\ndata_dir = {:?}\n\
             savepoint-drain-secs = 1\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_savepointd"));
    command
        .arg("--config")
        .arg(&settings)
        .arg("--data-dir")
        .arg(&from_flag)
        // The environment overrides the file's text logs (the daemon reads JSON).
        .env("SAVEPOINTD_LOG_FORMAT", "json");
    let mut daemon = Daemon::spawn_command(command);
    let listening = daemon.wait_for_log("savepointd listening");
    assert_eq!(
        listening["fields"]["data_dir"],
        from_flag.display().to_string(),
        "the flag overrides the file"
    );
    let address = listening["fields"]["address"].as_str().unwrap();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":50051"),
        "port 0 from the file, not the built-in 50051: {address}"
    );
    assert!(!from_file.exists());
    daemon.terminate();
    let status = daemon.exit_status(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_settings_file_stops_savepointd_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, expected) in [
        ("listen = \"nowhere\"", "listen: invalid value 'nowhere'"),
        ("data-dri = \"/tmp/x\"", "data-dri: no such setting"),
        ("max-requests = -1", "max-requests: invalid value '-1'"),
        // Ties between settings hold for the file too: no plaintext by accident.
        (
            "tls-cert = \"/etc/server.pem\"",
            "the setting tls-cert needs tls-key, which is not set",
        ),
        (
            "s3-endpoint = \"http://127.0.0.1:9000\"",
            "the setting s3-endpoint needs object-store-url",
        ),
    ] {
        let settings = dir.path().join("bad.toml");
        std::fs::write(&settings, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_savepointd"))
            .arg("--config")
            .arg(&settings)
            .output()
            .expect("run savepointd");
        assert_eq!(output.status.code(), Some(2), "{text}: exit code");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{text}: {stderr}");
        if !expected.starts_with("the setting") {
            assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
        }
    }
}

/// GET `path` over a new connection (HTTP/1.1, closed after the response).
async fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepointd_serves_metrics_on_the_logged_http_address_until_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_savepointd"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--http-listen", "127.0.0.1:0"]);
    let mut daemon = Daemon::spawn_command(command);
    let serving = daemon.wait_for_log("serving metrics and the status page over HTTP");
    let address = serving["fields"]["address"]
        .as_str()
        .expect("address field")
        .to_string();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "{address}"
    );
    let metrics = within("GET /metrics", http_get(&address, "/metrics"))
        .await
        .expect("GET /metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|line| line == "savepoint_coordinator_leader 1"),
        "{metrics}"
    );

    daemon.terminate();
    let status = daemon.exit_status(Duration::from_secs(5)).await;
    assert!(status.success(), "savepointd exited with {status}");
    let after = within("GET after the exit", http_get(&address, "/metrics")).await;
    assert!(
        after.is_err(),
        "the HTTP port answered after the exit: {after:?}"
    );
}
