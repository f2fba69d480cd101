//! The savepointctl binary against the real server: the README walkthrough, JSON output
//! that scripts can parse, and exit codes (1 for a refused RPC, 2 for bad usage).

#[path = "common/in_process_server.rs"]
mod in_process_server;

use in_process_server::{TestServer, WAIT};
use savepoint_coordinator::client::simulator::{
    SimulatedVertex, SimulationSummary, Simulator, SimulatorConfig,
};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// The example job's tasks on three simulated task managers that acknowledge every
/// snapshot after `ack_delay`.
struct Simulation {
    stop: oneshot::Sender<()>,
    running: JoinHandle<SimulationSummary>,
}

impl Simulation {
    /// Connects (bounded) the tasks of the example job registered as `job_id`.
    async fn start(server: &TestServer, job_id: &str, ack_delay: Duration) -> Simulation {
        let config = SimulatorConfig {
            job_id: job_id.to_string(),
            vertices: [("source", 2), ("map", 2), ("sink", 1)]
                .into_iter()
                .map(|(id, parallelism)| SimulatedVertex {
                    id: id.to_string(),
                    parallelism,
                })
                .collect(),
            wait_for_vertices: Vec::new(),
            task_managers: 3,
            ack_delay,
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
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(simulation.run(async {
            let _ = stopped.await;
        }));
        Simulation { stop, running }
    }

    /// Stops the simulated task managers, bounded.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.running)
            .await
            .expect("simulation stops in time")
            .expect("simulation task");
    }
}

/// Polls `status JOB OPERATION --output json` (at most 100 times, 50 ms apart) until the
/// operation is no longer PENDING; returns the last output and its JSON.
async fn poll_operation(server: &TestServer, job: &str, operation: &str) -> (Output, Value) {
    for _ in 0..100 {
        let output = ctl(server, &["status", job, operation, "--output", "json"]).await;
        let text = stdout(&output);
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status prints JSON ({e}): {text} {}", stderr(&output)));
        if value["status"] != "PENDING" {
            return (output, value);
        }
        assert_eq!(output.status.code(), Some(0), "PENDING exits 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {operation} of job {job} is still PENDING after 100 polls");
}

/// Writes the example job under the id `job_id` into the server's data directory;
/// returns the file's path.
fn example_copy(server: &TestServer, job_id: &str) -> String {
    let copy = server.data_dir.path().join(format!("{job_id}.yaml"));
    let spec = std::fs::read_to_string(EXAMPLE_JOB).expect("example job");
    std::fs::write(
        &copy,
        spec.replace("job_id: wordcount", &format!("job_id: {job_id}")),
    )
    .expect("write the copy");
    copy.to_str().expect("utf-8 path").to_string()
}

/// Registers the example job, runs it on simulated task managers and takes a savepoint;
/// returns its path.
async fn example_savepoint(server: &TestServer) -> String {
    succeeded("register", &ctl(server, &["register", EXAMPLE_JOB]).await);
    let simulation = Simulation::start(server, "wordcount", Duration::ZERO).await;
    succeeded(
        "set-status",
        &ctl(server, &["set-status", "wordcount", "RUNNING"]).await,
    );
    let saved = ctl(server, &["savepoint", "wordcount", "--timeout", "15"]).await;
    let path = succeeded("savepoint", &saved).trim().to_string();
    assert!(Path::new(&path).join("_metadata").is_file(), "{path}");
    simulation.stop().await;
    path
}

/// `stats JOB --output json`.
async fn stats_json(server: &TestServer, job: &str) -> Value {
    json(
        "stats --output json",
        &ctl(server, &["stats", job, "--output", "json"]).await,
    )
}

/// The (single) element of a `list --output json` array with checkpoint id `id`.
fn listed(list: &Value, id: u64) -> Option<&Value> {
    list.as_array()
        .expect("list prints an array")
        .iter()
        .find(|entry| entry["checkpoint_id"] == id)
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

    let simulation = Simulation::start(&server, "wordcount", Duration::ZERO).await;
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
    simulation.stop().await;

    // The same job under another id, as the README suggests.
    let copy = example_copy(&server, "wordcount-copy");
    succeeded("register copy", &ctl(&server, &["register", &copy]).await);

    let restored = json(
        "restore --output json",
        &ctl(
            &server,
            &[
                "restore",
                "wordcount-copy",
                &path,
                "--claim-mode",
                "claim",
                "--output",
                "json",
            ],
        )
        .await,
    );
    let assignments = restored["assignments"].as_array().expect("assignments");
    assert_eq!(assignments.len(), 5);
    assert_eq!(assignments[4]["vertex_id"], "sink");
    let handle = &assignments[4]["handles"][0];
    let checkpoint_id = restored["checkpoint_id"].as_u64().expect("checkpoint id");
    assert_eq!(handle["text"], format!("sink/0@{checkpoint_id}"));
    assert_eq!(restored["claim_mode"], "CLAIM");
    let restore = &stats_json(&server, "wordcount-copy").await["latest_restore"];
    assert_eq!(
        restore["claim_mode"], "CLAIM",
        "the server took the claim: {restore}"
    );
    assert_eq!(restore["path"], path.as_str());
    assert_eq!(restore["checkpoint_id"], checkpoint_id);

    let table = ctl(&server, &["restore", "wordcount-copy", &path]).await;
    // A second restore of the same job is allowed while its subtasks are CREATED.
    let table = succeeded("restore", &table);
    assert!(table.contains("SUBTASK"), "{table}");
    assert!(table.contains("map#1"), "{table}");
    assert!(
        table.contains("the savepoint stays yours (no-claim)"),
        "no-claim is the default: {table}"
    );
    let stats = stats_json(&server, "wordcount-copy").await;
    assert_eq!(stats["latest_restore"]["claim_mode"], "NO_CLAIM", "{stats}");
    assert_eq!(stats["restored"], 2, "{stats}");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_savepoint_is_followed_listed_and_disposed_and_stop_finishes_the_job() {
    let server = TestServer::start().await;
    succeeded("register", &ctl(&server, &["register", EXAMPLE_JOB]).await);
    let simulation = Simulation::start(&server, "wordcount", Duration::ZERO).await;
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "RUNNING"]).await,
    );

    let args = [
        "savepoint",
        "wordcount",
        "--detach",
        "--request-id",
        "nightly-1",
        "--output",
        "json",
    ];
    let detached = json("savepoint --detach", &ctl(&server, &args).await);
    assert_eq!(detached["operation_id"], "nightly-1");
    assert!(
        detached["status"] == "PENDING" || detached["status"] == "COMPLETED",
        "{detached}"
    );
    let checkpoint_id = detached["checkpoint_id"].as_u64().expect("checkpoint id");
    let text = ctl(&server, &args[..5]).await;
    assert_eq!(
        succeeded("savepoint --detach (text)", &text),
        "nightly-1\n",
        "a repeated request id prints the same operation id"
    );

    let (finished, operation) = poll_operation(&server, "wordcount", "nightly-1").await;
    assert_eq!(operation["status"], "COMPLETED", "{operation}");
    assert_eq!(finished.status.code(), Some(0));
    assert_eq!(operation["checkpoint_id"], checkpoint_id);
    assert_eq!(operation["trigger"], "MANUAL");
    assert_eq!(operation["path"], detached["path"]);
    let path = operation["path"].as_str().expect("path").to_string();
    assert!(Path::new(&path).join("_metadata").is_file(), "{path}");
    let status_text = succeeded(
        "status",
        &ctl(&server, &["status", "wordcount", "nightly-1"]).await,
    );
    assert!(
        status_text.starts_with("savepoint operation nightly-1 of job wordcount: COMPLETED\n"),
        "{status_text}"
    );
    assert!(status_text.contains(&path), "{status_text}");

    let list = json(
        "list --output json",
        &ctl(&server, &["list", "wordcount", "--output", "json"]).await,
    );
    let entry = listed(&list, checkpoint_id).unwrap_or_else(|| panic!("listed: {list}"));
    assert_eq!(entry["path"], path.as_str());
    assert_eq!(entry["trigger"], "MANUAL");
    let list_text = succeeded("list", &ctl(&server, &["list", "wordcount"]).await);
    assert!(list_text.starts_with("ID  TRIGGER"), "{list_text}");
    assert!(list_text.contains(&path), "{list_text}");

    let disposed = json(
        "dispose --output json",
        &ctl(&server, &["dispose", &path, "--output", "json"]).await,
    );
    assert_eq!(disposed["deleted"], true, "{disposed}");
    assert!(!Path::new(&path).exists(), "{path} is deleted");
    let again = succeeded("dispose again", &ctl(&server, &["dispose", &path]).await);
    assert!(again.starts_with("nothing to dispose of at "), "{again}");
    let list = json(
        "list --output json",
        &ctl(&server, &["list", "wordcount", "--output", "json"]).await,
    );
    assert!(listed(&list, checkpoint_id).is_none(), "{list}");

    let outside = ctl(&server, &["dispose", "/etc"]).await;
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).starts_with("error: INVALID_ARGUMENT: "),
        "{}",
        stderr(&outside)
    );
    assert!(Path::new("/etc").is_dir());

    let unknown = ctl(&server, &["status", "wordcount", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(unknown.stdout.is_empty());
    assert!(
        stderr(&unknown).starts_with("error: NOT_FOUND: "),
        "{}",
        stderr(&unknown)
    );

    let stopped = ctl(
        &server,
        &["stop", "wordcount", "--drain", "--timeout", "15"],
    )
    .await;
    let stop_path = succeeded("stop --drain", &stopped).trim().to_string();
    assert!(
        Path::new(&stop_path).join("_metadata").is_file(),
        "stop prints the savepoint's path: {stop_path}"
    );
    let stats = json(
        "stats --output json",
        &ctl(&server, &["stats", "wordcount", "--output", "json"]).await,
    );
    assert_eq!(stats["job_status"], "FINISHED", "{stats}");
    assert_eq!(stats["latest_savepoint"]["trigger"], "STOP", "{stats}");
    assert_eq!(stats["latest_savepoint"]["path"], stop_path.as_str());
    let stats_text = succeeded("stats", &ctl(&server, &["stats", "wordcount"]).await);
    assert!(
        stats_text.starts_with("job wordcount: FINISHED\n"),
        "{stats_text}"
    );
    assert!(
        stats_text.contains(" stop "),
        "history names the trigger: {stats_text}"
    );

    simulation.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_failed_operation_names_the_reason_and_exits_1() {
    let server = TestServer::start().await;
    succeeded("register", &ctl(&server, &["register", EXAMPLE_JOB]).await);
    // Acknowledgements far later than the test, so the savepoint stays pending until the
    // job leaves RUNNING.
    let simulation = Simulation::start(&server, "wordcount", Duration::from_secs(600)).await;
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "RUNNING"]).await,
    );
    let detached = json(
        "savepoint --detach",
        &ctl(
            &server,
            &["savepoint", "wordcount", "--detach", "--output", "json"],
        )
        .await,
    );
    assert_eq!(detached["status"], "PENDING", "{detached}");
    let operation_id = detached["operation_id"].as_str().expect("operation id");
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "CANCELED"]).await,
    );

    let (failed, operation) = poll_operation(&server, "wordcount", operation_id).await;
    assert_eq!(operation["status"], "FAILED", "{operation}");
    assert_eq!(failed.status.code(), Some(1), "FAILED exits 1");
    assert_eq!(
        operation["failure_reason"], "JOB_NOT_RUNNING",
        "{operation}"
    );
    let text = ctl(&server, &["status", "wordcount", operation_id]).await;
    assert_eq!(text.status.code(), Some(1));
    assert!(
        stdout(&text).contains("reason      JOB_NOT_RUNNING: "),
        "{}",
        stdout(&text)
    );

    let old_habit = ctl(&server, &["status", "wordcount", "RUNNING"]).await;
    assert_eq!(old_habit.status.code(), Some(1));
    assert!(
        stderr(&old_habit).contains("set-status"),
        "{}",
        stderr(&old_habit)
    );

    simulation.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_a_missing_vertex_is_refused_naming_it_unless_allowed() {
    let server = TestServer::start().await;
    let path = example_savepoint(&server).await;
    // The job without its map vertex, which has state in the savepoint.
    let lean = server.data_dir.path().join("lean.yaml");
    std::fs::write(
        &lean,
        "job_id: lean\n\
         vertices:\n  - id: source\n    parallelism: 2\n  - id: sink\n    parallelism: 1\n\
         trigger: [source]\n",
    )
    .expect("write the job file");
    let lean = lean.to_str().expect("utf-8 path");
    succeeded("register lean", &ctl(&server, &["register", lean]).await);

    let refused = ctl(&server, &["restore", "lean", &path]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(refused.stdout.is_empty(), "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(
        message.starts_with("error: FAILED_PRECONDITION: ")
            && message.contains("vertex \"map\"")
            && message.contains("allow_non_restored_state"),
        "{message}"
    );
    let stats = stats_json(&server, "lean").await;
    assert_eq!(stats["restored"], 0, "nothing was applied: {stats}");

    let args = [
        "restore",
        "lean",
        &path,
        "--allow-non-restored-state",
        "--output",
        "json",
    ];
    let restored = json(
        "restore --allow-non-restored-state",
        &ctl(&server, &args).await,
    );
    assert_eq!(
        restored["non_restored_vertices"],
        serde_json::json!(["map"])
    );
    let subtasks: Vec<String> = restored["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| format!("{}#{}", a["vertex_id"], a["subtask_index"]))
        .collect();
    assert_eq!(
        subtasks,
        vec!["\"source\"#0", "\"source\"#1", "\"sink\"#0"],
        "{restored}"
    );
    let checkpoint_id = restored["checkpoint_id"].as_u64().expect("checkpoint id");
    assert_eq!(
        restored["assignments"][2]["handles"][0]["text"],
        format!("sink/0@{checkpoint_id}")
    );
    let text = succeeded(
        "restore --allow-non-restored-state (text)",
        &ctl(&server, &args[..4]).await,
    );
    assert!(
        text.contains("state of vertices the job does not have was skipped: map\n"),
        "{text}"
    );
    assert_eq!(stats_json(&server, "lean").await["restored"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_detach_prints_the_operation_id_at_once_and_the_job_finishes() {
    // Every acknowledgement comes this long after its trigger, so the stop cannot be
    // complete before then.
    const ACK_DELAY: Duration = Duration::from_secs(3);
    let server = TestServer::start().await;
    succeeded("register", &ctl(&server, &["register", EXAMPLE_JOB]).await);
    let simulation = Simulation::start(&server, "wordcount", ACK_DELAY).await;
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "RUNNING"]).await,
    );

    let started = std::time::Instant::now();
    let detached = ctl(&server, &["stop", "wordcount", "--detach"]).await;
    let elapsed = started.elapsed();
    let printed = succeeded("stop --detach", &detached);
    assert!(
        elapsed < ACK_DELAY,
        "stop --detach returned after {elapsed:?}, not before the savepoint could complete"
    );
    let operation_id = printed.trim();
    assert_eq!(
        printed,
        format!("{operation_id}\n"),
        "one line: {printed:?}"
    );
    assert!(!operation_id.is_empty());

    let (finished, operation) = poll_operation(&server, "wordcount", operation_id).await;
    assert_eq!(operation["status"], "COMPLETED", "{operation}");
    assert_eq!(finished.status.code(), Some(0));
    assert_eq!(operation["trigger"], "STOP", "{operation}");
    assert_eq!(operation["drain"], false, "{operation}");
    let path = operation["path"].as_str().expect("path");
    assert!(Path::new(path).join("_metadata").is_file(), "{path}");
    let stats = stats_json(&server, "wordcount").await;
    assert_eq!(stats["job_status"], "FINISHED", "{stats}");
    assert_eq!(stats["latest_savepoint"]["path"], path, "{stats}");

    simulation.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_savepoint_is_deleted_once_subsumed_and_an_unclaimed_one_stays() {
    let server = TestServer::start().await;
    let path = example_savepoint(&server).await;
    for (job, mode) in [("kept", "no-claim"), ("claimed", "claim")] {
        let file = example_copy(&server, job);
        succeeded("register copy", &ctl(&server, &["register", &file]).await);
        let args = ["restore", job, &path, "--claim-mode", mode];
        succeeded("restore", &ctl(&server, &args).await);
    }

    // Two newer checkpoints of each job (it retains 2): the restored snapshot is subsumed.
    for job in ["kept", "claimed"] {
        let simulation = Simulation::start(&server, job, Duration::ZERO).await;
        succeeded(
            "set-status",
            &ctl(&server, &["set-status", job, "RUNNING"]).await,
        );
        for _ in 0..2 {
            let args = ["checkpoint", job, "--timeout", "15"];
            succeeded("checkpoint", &ctl(&server, &args).await);
        }
        simulation.stop().await;
        if job == "kept" {
            assert!(
                Path::new(&path).join("_metadata").is_file(),
                "no-claim never deletes the savepoint"
            );
            let stats = stats_json(&server, job).await;
            let history = stats["history"].as_array().expect("history");
            let first = history.last().expect("a checkpoint");
            assert_eq!(
                first["full"], true,
                "the first checkpoint after a no-claim restore is full: {stats}"
            );
        }
    }
    let mut deleted = false;
    for _ in 0..100 {
        if !Path::new(&path).exists() {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        deleted,
        "the claimed savepoint {path} is deleted once subsumed"
    );
    let list = json(
        "list --output json",
        &ctl(&server, &["list", "wordcount", "--output", "json"]).await,
    );
    assert_eq!(list, serde_json::json!([]), "it leaves the history too");
    server.stop().await;
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef savepointctl"),
        ("fish", "complete -c savepointctl"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_savepointctl"))
            .args(["completions", shell])
            .output()
            .expect("savepointctl runs");
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("restore-latest"),
            "{shell} names the subcommands"
        );
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_savepointctl"))
        .args(["completions", "tcsh"])
        .output()
        .expect("savepointctl runs");
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is bad usage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_waiting_savepoint_shows_its_acknowledgement_progress() {
    let server = TestServer::start().await;
    succeeded("register", &ctl(&server, &["register", EXAMPLE_JOB]).await);
    // Slow acknowledgements, so that the spinner polls the pending savepoint a few times.
    let simulation = Simulation::start(&server, "wordcount", Duration::from_millis(1500)).await;
    succeeded(
        "set-status",
        &ctl(&server, &["set-status", "wordcount", "RUNNING"]).await,
    );
    // script(1) gives savepointctl a pseudo-terminal; what it drew lands on stdout.
    let command_line = format!(
        "{} --server {} savepoint wordcount --timeout 15",
        env!("CARGO_BIN_EXE_savepointctl"),
        server.url()
    );
    let mut command = Command::new("script");
    command
        .args(["-qefc", &command_line, "/dev/null"])
        .env_remove("SAVEPOINTCTL_SERVER")
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("savepointctl under script finishes in time")
        .expect("script runs (util-linux)");
    let drawn = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{drawn}");
    assert!(
        drawn.contains("subtasks acknowledged"),
        "the spinner shows ack progress: {drawn}"
    );
    assert!(drawn.contains("/5 subtasks acknowledged"), "{drawn}");
    assert!(
        drawn.contains("savepoint-wordcount-"),
        "then the path: {drawn}"
    );
    simulation.stop().await;
    server.stop().await;
}
