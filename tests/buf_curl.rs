//! gRPC conventions seen from a stock client: `buf curl` (npm @bufbuild/buf, installed by
//! .ci/install-buf) knows nothing of our protos and finds every method through server
//! reflection. It checks health, registers a job, and takes a savepoint on a real server
//! whose task managers are simulated.

#[path = "common/in_process_server.rs"]
mod in_process_server;

use in_process_server::{TestServer, WAIT};
use savepoint_coordinator::client::simulator::{SimulatedVertex, Simulator, SimulatorConfig};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

/// Where .ci/install-buf puts buf (override with SAVEPOINT_BUF_DIR, as the script does).
fn buf() -> PathBuf {
    let dir = std::env::var_os("SAVEPOINT_BUF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/buf"));
    let buf = dir.join("node_modules/.bin/buf");
    assert!(
        buf.exists(),
        "buf is not installed at {}: run `bash .ci/install-buf` (the test command does)",
        buf.display()
    );
    buf
}

/// `buf curl` of `method` with `body` (JSON) against `server`: exit code and the JSON it
/// printed.
async fn buf_curl(server: &TestServer, method: &str, body: Value) -> (i32, Value) {
    let mut command = Command::new(buf());
    command
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!("{}/{method}", server.url()))
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("buf curl {method} finishes in time"))
        .expect("buf runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // An answer goes to stdout, an error status to stderr.
    let text = if output.status.success() {
        &stdout
    } else {
        &stderr
    };
    let answer = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("buf curl {method}: not JSON ({e}): {stdout}{stderr}"));
    (output.status.code().expect("exit code"), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_checks_health_and_takes_a_savepoint_through_reflection() {
    let server = TestServer::start().await;

    let (code, health) = buf_curl(&server, "grpc.health.v1.Health/Check", json!({})).await;
    assert_eq!(
        (code, &health["status"]),
        (0, &json!("SERVING")),
        "{health}"
    );
    let (code, health) = buf_curl(
        &server,
        "grpc.health.v1.Health/Check",
        json!({"service": "savepoint.v1.SavepointService"}),
    )
    .await;
    assert_eq!(
        (code, &health["status"]),
        (0, &json!("SERVING")),
        "{health}"
    );

    let job = json!({
        "jobId": "curl-job",
        "vertices": [{"id": "src", "parallelism": 2}, {"id": "sink", "parallelism": 1}],
        "triggerVertices": ["src"],
    });
    let (code, registered) =
        buf_curl(&server, "savepoint.v1.SavepointService/RegisterJob", job).await;
    assert_eq!(code, 0, "{registered}");
    assert!(registered["fencingToken"].is_string(), "{registered}");

    let simulator = Simulator::new(SimulatorConfig {
        job_id: "curl-job".to_string(),
        vertices: vec![
            SimulatedVertex {
                id: "src".to_string(),
                parallelism: 2,
            },
            SimulatedVertex {
                id: "sink".to_string(),
                parallelism: 1,
            },
        ],
        wait_for_vertices: Vec::new(),
        task_managers: 2,
        ack_delay: Duration::ZERO,
    })
    .expect("valid simulator");
    let simulation = tokio::time::timeout(WAIT, simulator.connect(server.channel().await))
        .await
        .expect("task managers connect in time")
        .expect("task managers connect");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(simulation.run(async {
        let _ = stopped.await;
    }));

    let (code, answer) = buf_curl(
        &server,
        "savepoint.v1.SavepointService/UpdateJobStatus",
        json!({"jobId": "curl-job", "status": "JOB_STATUS_RUNNING"}),
    )
    .await;
    assert_eq!(code, 0, "{answer}");
    let (code, savepoint) = buf_curl(
        &server,
        "savepoint.v1.SavepointService/TriggerSavepoint",
        json!({"jobId": "curl-job"}),
    )
    .await;
    assert_eq!(code, 0, "{savepoint}");
    assert_eq!(
        savepoint["status"], "OPERATION_STATUS_COMPLETED",
        "{savepoint}"
    );
    let path = savepoint["path"].as_str().expect("a path");
    assert!(
        std::path::Path::new(path).join("_metadata").is_file(),
        "the savepoint is durable: {savepoint}"
    );

    // A refusal arrives as a gRPC status buf curl names, with the server's message.
    let (code, refusal) = buf_curl(
        &server,
        "savepoint.v1.SavepointService/TriggerSavepoint",
        json!({"jobId": "no-such-job"}),
    )
    .await;
    assert_ne!(code, 0);
    assert_eq!(refusal["code"], "not_found", "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("no-such-job"),
        "{refusal}"
    );

    let _ = stop.send(());
    tokio::time::timeout(WAIT, running)
        .await
        .expect("simulation stops in time")
        .expect("simulation task");
    server.stop().await;
}
