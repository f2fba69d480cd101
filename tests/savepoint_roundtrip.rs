//! A savepoint taken over the real task manager streams, end to end.

mod common;

use common::{Acks, Cluster, TestServer, job, policy, register, set_status, stats};
use savepoint_coordinator::proto::{self, SnapshotKind, SnapshotStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_round_trip_over_task_manager_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job(
        "roundtrip",
        &[("src", 2), ("map", 3), ("sink", 1)],
        policy(0, 0),
    );
    register(&mut client, &job).await;
    // Three task managers; tm-2 runs map#0 and sink#0 but no source, so it never gets a
    // trigger and must still acknowledge.
    let cluster = Cluster::start(&server, &job, 3, Acks::All, &[]).await;
    set_status(&mut client, "roundtrip", proto::JobStatus::Running).await;

    let savepoint = common::trigger_savepoint(&mut client, "roundtrip")
        .await
        .expect("savepoint succeeds");

    assert_eq!(savepoint.checkpoint_id, 1, "the ID counter starts at 1");
    let expected_path = server.savepoint_dir().join("savepoint-roundtrip-1");
    assert_eq!(savepoint.path, expected_path.to_str().expect("utf-8"));
    assert!(
        expected_path.join("_metadata").is_file(),
        "{}/_metadata is written before the call returns",
        savepoint.path
    );

    // Only the two sources were triggered, with the savepoint's directory as location.
    let log = cluster.log();
    let triggered: Vec<(u64, u64, SnapshotKind, &str)> = common::triggers(&log)
        .map(|t| (t.attempt_id, t.checkpoint_id, t.kind(), t.location.as_str()))
        .collect();
    let src_attempts: Vec<u64> = cluster
        .tasks
        .iter()
        .filter(|t| t.vertex == "src")
        .map(|t| t.attempt)
        .collect();
    assert_eq!(triggered.len(), 2, "{triggered:?}");
    for (attempt, checkpoint_id, kind, location) in triggered {
        assert!(
            src_attempts.contains(&attempt),
            "trigger to non-source {attempt}"
        );
        assert_eq!(
            (checkpoint_id, kind, location),
            (1, SnapshotKind::Savepoint, savepoint.path.as_str())
        );
    }

    // Every commit task (all six) hears of the completion exactly once.
    let notified = cluster.wait_for_notifications(1).await;
    let all_attempts: Vec<u64> = cluster.tasks.iter().map(|t| t.attempt).collect();
    assert_eq!(notified, all_attempts);

    let stats = stats(&mut client, "roundtrip").await;
    assert_eq!(
        (
            stats.triggered,
            stats.completed,
            stats.failed,
            stats.in_progress
        ),
        (1, 1, 0, 0)
    );
    let latest = stats.latest_savepoint.expect("latest savepoint");
    assert_eq!(latest.checkpoint_id, 1);
    assert_eq!(latest.kind(), SnapshotKind::Savepoint);
    assert_eq!(latest.status(), SnapshotStatus::Completed);
    assert_eq!(latest.path, savepoint.path);
    assert_eq!(
        (latest.acknowledged_subtasks, latest.total_subtasks),
        (6, 6)
    );
    let expected_size: u64 = cluster
        .tasks
        .iter()
        .map(|t| format!("{}@1", t.name()).len() as u64)
        .sum();
    assert_eq!(latest.state_size_bytes, expected_size);
    assert_eq!(stats.latest_completed.map(|c| c.checkpoint_id), Some(1));

    drop(cluster);
    server.stop().await;
}
