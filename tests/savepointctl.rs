//! The savepointctl binary against the real server: the README walkthrough, JSON output
//! that scripts can parse, and exit codes (1 for a refused RPC, 2 for bad usage).

#[path = "common/in_process_server.rs"]
mod in_process_server;

use in_process_server::{TestServer, WAIT};
use savepoint_coordinator::client::simulator::{SimulatedVertex, Simulator, SimulatorConfig};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::oneshot;

const EXAMPLE_JOB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job.yaml");

/// Runs savepointctl against `server` with `args`; killed if it takes longer than WAIT.
async fn ctl(server: &TestServer, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_savepointctl"));
    command
        .arg("--server")
        .arg(server.url())
        .args(args)
        .env_remove("SAVEPOINTCTL_SERVER")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("savepointctl {args:?} finishes in time"))
        .expect("savepointctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts exit code 0 and returns stdout.
fn succeeded(args: &str, output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "savepointctl {args} failed: {}",
        stderr(output)
    );
    stdout(output)
}

fn json(args: &str, output: &Output) -> Value {
    let text = succeeded(args, output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args} prints JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_status_and_stats_and_an_unknown_job() {
    let server = TestServer::start().await;

    let registered = ctl(&server, &["register", EXAMPLE_JOB]).await;
    let text = succeeded("register", &registered);
    assert!(
        text.contains("job wordcount registered; fencing token "),
        "{text}"
    );

    let again = ctl(&server, &["register", EXAMPLE_JOB]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).starts_with("error: ALREADY_EXISTS: "),
        "{}",
        stderr(&again)
    );

    let status = ctl(&server, &["set-status", "wordcount", "RUNNING"]).await;
    assert_eq!(
        succeeded("set-status", &status),
        "job wordcount is now RUNNING\n"
    );

    let stats = json(
        "stats --output json",
        &ctl(&server, &["stats", "wordcount", "--output", "json"]).await,
    );
    assert_eq!(stats["job_id"], "wordcount");
    assert_eq!(stats["job_status"], "RUNNING");
    assert_eq!(stats["completed"], 0);
    assert_eq!(stats["latest_savepoint"], Value::Null);
    assert!(stats["history"].is_array(), "{stats}");

    let unknown = ctl(&server, &["stats", "no-such-job"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(unknown.stdout.is_empty());
    assert!(
        stderr(&unknown).starts_with("error: NOT_FOUND: "),
        "{}",
        stderr(&unknown)
    );

    let usage = ctl(&server, &["set-status", "wordcount", "SLEEPING"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_path_restores_into_a_second_job() {
    let server = TestServer::start().await;
    succeeded("register", &ctl(&server, &["register", EXAMPLE_JOB]).await);

    let config = SimulatorConfig {
        job_id: "wordcount".to_string(),
        vertices: [("source", 2), ("map", 2), ("sink", 1)]
            .into_iter()
            .map(|(id, parallelism)| SimulatedVertex {
                id: id.to_string(),
                parallelism,
            })
            .collect(),
        wait_for_vertices: Vec::new(),
        task_managers: 3,
        ack_delay: Duration::ZERO,
    };
    let simulation = tokio::time::timeout(
        WAIT,
        Simulator::new(config)
            .expect("valid config")
            .connect(server.channel().await),
    )
    .await
    .expect("simulator connects in time")
    .expect("simulator connects");
    let (stop_simulation, simulation_stopped) = oneshot::channel::<()>();
    let simulating = tokio::spawn(simulation.run(async {
        let _ = simulation_stopped.await;
    }));
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "running"]).await,
    );

    let saved = ctl(&server, &["savepoint", "wordcount", "--timeout", "15"]).await;
    let path = succeeded("savepoint", &saved).trim().to_string();
    assert!(
        Path::new(&path).join("_metadata").is_file(),
        "savepoint prints a path with _metadata: {path}"
    );
    let _ = stop_simulation.send(());
    tokio::time::timeout(WAIT, simulating)
        .await
        .expect("simulation stops in time")
        .expect("simulation task");

    // The same job under another id, as the README suggests.
    let copy = server.data_dir.path().join("wordcount-copy.yaml");
    let spec = std::fs::read_to_string(EXAMPLE_JOB).expect("example job");
    std::fs::write(
        &copy,
        spec.replace("job_id: wordcount", "job_id: wordcount-copy"),
    )
    .expect("write the copy");
    let copy = copy.to_str().expect("utf-8 path");
    succeeded("register copy", &ctl(&server, &["register", copy]).await);

    let restored = json(
        "restore --output json",
        &ctl(
            &server,
            &["restore", "wordcount-copy", &path, "--output", "json"],
        )
        .await,
    );
    let assignments = restored["assignments"].as_array().expect("assignments");
    assert_eq!(assignments.len(), 5);
    assert_eq!(assignments[4]["vertex_id"], "sink");
    let handle = &assignments[4]["handles"][0];
    let checkpoint_id = restored["checkpoint_id"].as_u64().expect("checkpoint id");
    assert_eq!(handle["text"], format!("sink/0@{checkpoint_id}"));

    let table = ctl(&server, &["restore", "wordcount-copy", &path]).await;
    // A second restore of the same job is allowed while its subtasks are CREATED.
    let table = succeeded("restore", &table);
    assert!(table.contains("SUBTASK"), "{table}");
    assert!(table.contains("map#1"), "{table}");

    succeeded(
        "unregister",
        &ctl(&server, &["unregister", "wordcount-copy"]).await,
    );
    assert!(
        Path::new(&path).join("_metadata").is_file(),
        "savepoints stay after unregister"
    );
    server.stop().await;
}
