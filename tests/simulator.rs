//! The simulator against the real server: three simulated task managers run a two-vertex
//! job and acknowledge on behalf of every task, so a savepoint completes and is on disk.

#[path = "common/in_process_server.rs"]
mod in_process_server;

use in_process_server::{TestServer, WAIT, set_status};
use savepoint_coordinator::client::simulator::{
    SimulatedVertex, SimulationEnd, Simulator, SimulatorConfig,
};
use savepoint_coordinator::proto;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

fn two_vertex_job(job_id: &str) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        job_id: job_id.to_string(),
        vertices: vec![
            proto::Vertex {
                id: "source".to_string(),
                parallelism: 2,
                max_parallelism: 0,
            },
            proto::Vertex {
                id: "sink".to_string(),
                parallelism: 3,
                max_parallelism: 0,
            },
        ],
        trigger_vertices: vec!["source".to_string()],
        wait_for_vertices: Vec::new(),
        commit_vertices: Vec::new(),
        // No periodic checkpoints, so the counts below are exact.
        policy: Some(proto::CheckpointPolicy::default()),
        savepoint_dir: String::new(),
        savepoint_policy: None,
    }
}

fn simulator_config(job_id: &str) -> SimulatorConfig {
    SimulatorConfig {
        job_id: job_id.to_string(),
        vertices: vec![
            SimulatedVertex {
                id: "source".to_string(),
                parallelism: 2,
            },
            SimulatedVertex {
                id: "sink".to_string(),
                parallelism: 3,
            },
        ],
        wait_for_vertices: Vec::new(),
        task_managers: 3,
        ack_delay: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_completes_when_simulated_task_managers_ack_downstream_tasks() {
    let server = TestServer::start().await;
    let mut client = server.savepoints().await;
    tokio::time::timeout(WAIT, client.register_job(two_vertex_job("job-sim")))
        .await
        .expect("RegisterJob in time")
        .expect("RegisterJob");
    set_status(&mut client, "job-sim", proto::JobStatus::Running).await;

    let simulation = tokio::time::timeout(
        WAIT,
        Simulator::new(simulator_config("job-sim"))
            .expect("valid config")
            .connect(server.channel().await),
    )
    .await
    .expect("simulator connects in time")
    .expect("simulator connects");
    let progress = simulation.progress();
    let (stop_simulation, simulation_stopped) = oneshot::channel::<()>();
    let simulating = tokio::spawn(simulation.run(async {
        let _ = simulation_stopped.await;
    }));

    assert_eq!(progress.last_ack_sent(), None, "nothing acknowledged yet");
    let triggered = std::time::Instant::now();
    let response = tokio::time::timeout(
        WAIT,
        client.trigger_savepoint(proto::TriggerSavepointRequest {
            job_id: "job-sim".to_string(),
            target_directory: String::new(),
            ..Default::default()
        }),
    )
    .await
    .expect("TriggerSavepoint in time")
    .expect("savepoint completes")
    .into_inner();
    let returned = std::time::Instant::now();
    let last_ack = progress.last_ack_sent().expect("the acks were sent");
    assert!(
        (triggered..=returned).contains(&last_ack),
        "the last ack was sent while the savepoint was taken"
    );
    let path = Path::new(&response.path);
    assert!(path.is_dir(), "{} is a directory", path.display());
    assert!(
        path.join("_metadata").is_file(),
        "{} has _metadata",
        path.display()
    );
    assert!(
        path.starts_with(server.data_dir.path().canonicalize().expect("data dir"))
            || path.starts_with(server.data_dir.path()),
        "default savepoint directory is under the data dir: {}",
        path.display()
    );

    let stats = tokio::time::timeout(
        WAIT,
        client.get_checkpoint_stats(proto::GetCheckpointStatsRequest {
            job_id: "job-sim".to_string(),
        }),
    )
    .await
    .expect("GetCheckpointStats in time")
    .expect("GetCheckpointStats")
    .into_inner();
    assert_eq!((stats.completed, stats.failed), (1, 0));
    assert_eq!(
        stats.discarded_acks, 0,
        "no ack was duplicate or not awaited"
    );
    let latest = stats.latest_savepoint.expect("latest savepoint");
    assert_eq!(latest.checkpoint_id, response.checkpoint_id);
    assert_eq!(latest.acknowledged_subtasks, 5);

    // Completion notices are sent after the savepoint is durable, so they may still be
    // on their way when the call returns.
    tokio::time::timeout(WAIT, async {
        while progress.counts().notifications < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every subtask is told about the completion in time");

    let _ = stop_simulation.send(());
    let summary = tokio::time::timeout(WAIT, simulating)
        .await
        .expect("simulation stops in time")
        .expect("simulation task");
    assert_eq!(summary.end, SimulationEnd::Shutdown);
    assert_eq!(summary.task_managers, 3);
    assert_eq!(summary.tasks, 5);
    let counts = summary.counts;
    assert_eq!(counts.triggers, 2, "one trigger per source subtask");
    assert_eq!(counts.acks, 5, "every subtask acked exactly once");
    assert_eq!(counts.notifications, 5, "every subtask was told");
    assert_eq!(counts.aborts, 0);
    assert_eq!(counts.stream_errors, 0);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulating_an_unregistered_job_names_the_refusal() {
    let server = TestServer::start().await;
    let connecting = Simulator::new(simulator_config("no-such-job"))
        .expect("valid config")
        .connect(server.channel().await);
    let error = match tokio::time::timeout(WAIT, connecting)
        .await
        .expect("in time")
    {
        Ok(_) => panic!("tasks of an unregistered job must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("NOT_FOUND"), "{error}");
    server.stop().await;
}
