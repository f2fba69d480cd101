//! Savepoints that fail (a decline, a timeout) or outlive the caller's deadline, and
//! periodic checkpoints running next to a pending savepoint.

mod common;

use common::{Acks, Cluster, TestServer, job, policy, register, set_status, stats, within};
use savepoint_coordinator::proto::{self, FailureReason, SnapshotKind, SnapshotStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_fails_when_a_task_declines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("declined", &[("src", 2), ("sink", 2)], policy(0, 0));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::None, &[]).await;
    set_status(&mut client, "declined", proto::JobStatus::Running).await;

    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "declined").await });
    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    let id = trigger.checkpoint_id;
    let task = cluster.decline(id, "out of disk space on /state");

    let status = within("the savepoint call", savepoint)
        .await
        .expect("caller task")
        .expect_err("a declined savepoint fails");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        status.message(),
        format!(
            "savepoint {id} of job declined failed (DECLINED): task {} declined snapshot {id}: \
             out of disk space on /state",
            task.name()
        )
    );
    assert_eq!(common::failure_reason(&status), Some("DECLINED"));

    // Every task is told, with the reason.
    let aborts = cluster.wait_for_aborts(id).await;
    let attempts: Vec<u64> = aborts.iter().map(|a| a.attempt_id).collect();
    assert_eq!(
        attempts,
        cluster.tasks.iter().map(|t| t.attempt).collect::<Vec<_>>()
    );
    for abort in &aborts {
        assert_eq!(abort.reason(), FailureReason::Declined);
        assert!(
            abort.message.contains("out of disk space on /state"),
            "{abort:?}"
        );
    }
    assert!(
        !std::path::Path::new(&trigger.location)
            .join("_metadata")
            .exists(),
        "a declined savepoint leaves no metadata"
    );

    let stats = stats(&mut client, "declined").await;
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (0, 1, 0)
    );
    let failed = stats.latest_failed.expect("latest failed");
    assert_eq!(failed.checkpoint_id, id);
    assert_eq!(failed.status(), SnapshotStatus::Failed);
    assert_eq!(failed.failure_reason(), FailureReason::Declined);
    assert!(
        failed
            .failure_message
            .contains("out of disk space on /state")
    );
    assert_eq!(
        stats.consecutive_failures, 0,
        "savepoint failures never count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_expires_when_tasks_never_acknowledge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("expiring", &[("src", 1), ("sink", 2)], policy(0, 300));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::None, &[]).await;
    set_status(&mut client, "expiring", proto::JobStatus::Running).await;

    let started = Instant::now();
    let status = common::trigger_savepoint(&mut client, "expiring")
        .await
        .expect_err("an unacknowledged savepoint expires");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(common::failure_reason(&status), Some("EXPIRED"));
    assert!(
        status
            .message()
            .contains("(EXPIRED): savepoint 1 expired after 300 ms: 0 of 3 tasks acknowledged"),
        "{status:?}"
    );

    let aborts = cluster.wait_for_aborts(1).await;
    assert_eq!(aborts.len(), 3);
    assert!(
        aborts.iter().all(|a| a.reason() == FailureReason::Expired),
        "{aborts:?}"
    );

    let failed = stats(&mut client, "expiring")
        .await
        .latest_failed
        .expect("latest failed");
    assert_eq!(
        (failed.checkpoint_id, failed.failure_reason()),
        (1, FailureReason::Expired)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_outliving_the_call_deadline_completes_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("slow", &[("src", 1), ("sink", 1)], policy(0, 0));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 1, Acks::None, &[]).await;
    set_status(&mut client, "slow", proto::JobStatus::Running).await;

    let mut request = tonic::Request::new(proto::TriggerSavepointRequest {
        job_id: "slow".into(),
        target_directory: String::new(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(1));
    let status = within("TriggerSavepoint", client.trigger_savepoint(request))
        .await
        .expect_err("the tasks hold their acks past the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The server answers itself, just before the deadline, and says what happens next.
    assert!(
        status.message().contains("continues in the background"),
        "{status:?}"
    );

    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    let pending = stats(&mut client, "slow").await;
    assert_eq!(pending.in_progress, 1);
    assert_eq!(pending.history[0].checkpoint_id, trigger.checkpoint_id);
    assert_eq!(pending.history[0].status(), SnapshotStatus::InProgress);

    cluster.acknowledge_all(trigger.checkpoint_id);
    cluster.wait_for_notifications(trigger.checkpoint_id).await;
    let latest = stats(&mut client, "slow")
        .await
        .latest_savepoint
        .expect("completed savepoint");
    assert_eq!(latest.checkpoint_id, trigger.checkpoint_id);
    assert_eq!(latest.status(), SnapshotStatus::Completed);
    assert_eq!(latest.path, trigger.location);
    assert!(
        std::path::Path::new(&latest.path)
            .join("_metadata")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoints_complete_while_a_savepoint_is_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("mixed", &[("src", 2), ("sink", 2)], policy(50, 0));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "mixed", proto::JobStatus::Running).await;

    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "mixed").await });
    let savepoint_id = cluster
        .first_trigger(SnapshotKind::Savepoint)
        .await
        .checkpoint_id;

    // Three checkpoints triggered after the savepoint complete while it waits.
    let completed_after = cluster
        .wait_for("three checkpoints completing after the savepoint", |log| {
            let ids: BTreeSet<u64> = log
                .iter()
                .filter_map(|r| match &r.message {
                    proto::coordinator_message::Message::NotifyCheckpointComplete(n)
                        if n.checkpoint_id > savepoint_id =>
                    {
                        Some(n.checkpoint_id)
                    }
                    _ => None,
                })
                .collect();
            (ids.len() >= 3).then_some(ids)
        })
        .await;
    assert!(!completed_after.contains(&savepoint_id));
    let during = stats(&mut client, "mixed").await;
    let pending: Vec<(u64, SnapshotKind)> = during
        .history
        .iter()
        .filter(|s| s.status() == SnapshotStatus::InProgress)
        .map(|s| (s.checkpoint_id, s.kind()))
        .collect();
    assert!(
        pending.contains(&(savepoint_id, SnapshotKind::Savepoint)),
        "{pending:?}"
    );
    assert!(!savepoint.is_finished(), "the savepoint call still waits");

    cluster.acknowledge_all(savepoint_id);
    let done = within("the savepoint call", savepoint)
        .await
        .expect("caller task")
        .expect("the savepoint completes after the checkpoints");
    assert_eq!(done.checkpoint_id, savepoint_id);

    // Nothing aborted the savepoint, and every source saw strictly ascending ids
    // across both kinds, each id used by one kind only.
    let log = cluster.log();
    assert!(!log.iter().any(|r| matches!(&r.message,
        proto::coordinator_message::Message::AbortCheckpoint(a) if a.checkpoint_id == savepoint_id)));
    let mut per_attempt: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut kinds: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
    for trigger in common::triggers(&log) {
        per_attempt
            .entry(trigger.attempt_id)
            .or_default()
            .push(trigger.checkpoint_id);
        kinds
            .entry(trigger.checkpoint_id)
            .or_default()
            .insert(trigger.kind);
    }
    assert_eq!(per_attempt.len(), 2, "both sources were triggered");
    for (attempt, ids) in &per_attempt {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "attempt {attempt} saw {ids:?}"
        );
        assert!(
            ids.contains(&savepoint_id) && ids.len() >= 4,
            "attempt {attempt} saw {ids:?}"
        );
    }
    assert!(kinds.values().all(|k| k.len() == 1), "{kinds:?}");
    assert_eq!(
        kinds[&savepoint_id],
        BTreeSet::from([SnapshotKind::Savepoint as i32])
    );
}
