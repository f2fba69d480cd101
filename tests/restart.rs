//! A server restarted on the same data directory, and a server stopped with work in flight:
//! pending savepoints may complete during the shutdown drain, the rest fail.

mod common;

use common::{Acks, Cluster, TestServer, job, policy, register, set_status, stats, within};
use savepoint_coordinator::proto::{self, SnapshotKind};
use tonic::Code;

const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_jobs_ids_checkpoints_and_savepoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let durable = job("durable", VERTICES, policy(0, 0));
    register(&mut client, &durable).await;
    let cluster = Cluster::start(&server, &durable, 2, Acks::All, &[]).await;
    set_status(&mut client, "durable", proto::JobStatus::Running).await;
    assert_eq!(common::trigger_checkpoint(&mut client, "durable").await, 1);
    let savepoint = common::trigger_savepoint(&mut client, "durable")
        .await
        .expect("savepoint");
    assert_eq!(savepoint.checkpoint_id, 2);
    assert_eq!(common::trigger_checkpoint(&mut client, "durable").await, 3);

    // Stopped with the task managers still connected: their streams are closed for them.
    let server = server.restart().await;
    cluster.wait_until_closed().await;
    let mut client = server.savepoints().await;

    let again = within("RegisterJob", client.register_job(durable.clone()))
        .await
        .expect_err("the job is still registered");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let stats = stats(&mut client, "durable").await;
    assert_eq!(stats.job_status(), proto::JobStatus::Running);
    assert_eq!(
        stats.latest_completed.map(|c| (c.checkpoint_id, c.kind())),
        Some((3, SnapshotKind::Checkpoint))
    );
    let latest_savepoint = stats.latest_savepoint.expect("savepoint survives");
    assert_eq!(
        (
            latest_savepoint.checkpoint_id,
            latest_savepoint.path.as_str()
        ),
        (2, savepoint.path.as_str())
    );

    let request = proto::RestoreLatestCheckpointRequest {
        job_id: "durable".into(),
        allow_non_restored_state: false,
    };
    let latest = within(
        "RestoreLatestCheckpoint",
        client.restore_latest_checkpoint(request),
    )
    .await
    .expect("retained checkpoint restorable")
    .into_inner();
    assert_eq!(latest.checkpoint_id, 3);
    assert_eq!(
        latest.assignments,
        common::unchanged_assignments(VERTICES, &[], 3)
    );

    let request = proto::RestoreSavepointRequest {
        job_id: "durable".into(),
        path: savepoint.path.clone(),
        allow_non_restored_state: false,
        ..Default::default()
    };
    let restored = within("RestoreSavepoint", client.restore_savepoint(request))
        .await
        .expect("savepoint restorable by path")
        .into_inner();
    assert_eq!(restored.checkpoint_id, 2);
    assert_eq!(
        restored.assignments,
        common::unchanged_assignments(VERTICES, &[], 2)
    );
    assert!(
        restored.next_checkpoint_id > 3,
        "next id {} after the restore would reuse an id of the first run",
        restored.next_checkpoint_id
    );

    // New ids continue above every id of the first run.
    let _cluster = Cluster::start(&server, &durable, 2, Acks::All, &[]).await;
    let next = common::trigger_checkpoint(&mut client, "durable").await;
    assert_eq!(
        next, restored.next_checkpoint_id,
        "the restore named the next id"
    );
    let next_savepoint = common::trigger_savepoint(&mut client, "durable")
        .await
        .expect("savepoint after restart");
    assert!(next_savepoint.checkpoint_id > next);
    assert_ne!(next_savepoint.path, savepoint.path);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_fails_a_pending_savepoint_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let held = job("held", VERTICES, policy(0, 0));
    register(&mut client, &held).await;
    let cluster = Cluster::start(&server, &held, 1, Acks::None, &[]).await;
    set_status(&mut client, "held", proto::JobStatus::Running).await;

    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "held").await });
    cluster.first_trigger(SnapshotKind::Savepoint).await;
    server.stop().await;

    let status = within("the savepoint call", savepoint)
        .await
        .expect("caller task")
        .expect_err("the pending savepoint fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        common::failure_reason(&status),
        Some("COORDINATOR_SHUT_DOWN")
    );
    assert!(
        status.message().contains("the server is shutting down"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_savepoint_completes_during_the_shutdown_drain_and_nothing_new_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start_with(dir.path(), |config| {
        config.savepoint_drain = std::time::Duration::from_secs(15);
    })
    .await;
    let mut client = server.savepoints().await;
    let held = job("draining", VERTICES, policy(0, 0));
    register(&mut client, &held).await;
    let cluster = Cluster::start(&server, &held, 1, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "draining", proto::JobStatus::Running).await;

    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "draining").await });
    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    server.begin_stop();

    // Draining: NOT_SERVING, and no new snapshot of any kind.
    common::eventually("NOT_SERVING during the drain", || async {
        let status = common::health_check(server.channel().await, "", common::WAIT).await;
        (status == Some(tonic_health::pb::health_check_response::ServingStatus::NotServing))
            .then_some(())
    })
    .await;
    let refused = common::trigger_savepoint(&mut client, "draining")
        .await
        .expect_err("no new savepoint while draining");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        common::failure_reason(&refused),
        Some("COORDINATOR_SHUT_DOWN")
    );
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    let refused = common::try_trigger_checkpoint(&mut client, "draining")
        .await
        .expect_err("no new checkpoint while draining");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // The tasks acknowledge the pending savepoint: it completes, then the server stops.
    cluster.acknowledge_all(trigger.checkpoint_id);
    let completed = within("the savepoint call", savepoint)
        .await
        .expect("caller task")
        .expect("the pending savepoint completes during the drain");
    assert_eq!(completed.checkpoint_id, trigger.checkpoint_id);
    assert!(
        std::path::Path::new(&completed.path)
            .join("_metadata")
            .is_file(),
        "{completed:?}"
    );
    server.stop().await;
}
