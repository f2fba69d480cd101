//! Typed failures and tolerable checkpoint failures (issue 3 item 2), and complete
//! statistics (item 8).

mod common;

use common::{Acks, Cluster, TestServer, job, policy, register, set_status, stats, within};
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::{
    self, ClaimMode, FailureReason, SavepointTrigger, SnapshotKind, SnapshotStatus,
};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

type Client = SavepointServiceClient<Channel>;

const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

/// Starts a waiting TriggerCheckpoint call.
fn checkpoint_call(client: &Client, job_id: &str) -> JoinHandle<Result<u64, tonic::Status>> {
    let mut client = client.clone();
    let job_id = job_id.to_string();
    tokio::spawn(async move { common::try_trigger_checkpoint(&mut client, &job_id).await })
}

/// Starts a waiting TriggerSavepoint call.
fn savepoint_call(
    client: &Client,
    job_id: &str,
) -> JoinHandle<Result<proto::TriggerSavepointResponse, tonic::Status>> {
    let mut client = client.clone();
    let job_id = job_id.to_string();
    tokio::spawn(async move { common::trigger_savepoint(&mut client, &job_id).await })
}

async fn outcome<T>(call: JoinHandle<Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    within("the snapshot call", call)
        .await
        .expect("caller task")
}

/// Asserts that `status` carries `code` and the typed `reason`.
fn assert_failure(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(common::failure_reason(status), Some(reason), "{status:?}");
}

fn by_reason(counts: &[(&str, u64)]) -> HashMap<String, u64> {
    counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

// Item 2: failure taxonomy and tolerable failures.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_checkpoint_failures_beyond_the_tolerance_mark_the_job_failing_until_a_success()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let tolerant = proto::CheckpointPolicy {
        tolerable_failures: 1,
        ..policy(0, 400)
    };
    let job = job("flaky", VERTICES, tolerant);
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::None, &[]).await;
    set_status(&mut client, "flaky", proto::JobStatus::Running).await;

    // 1: a declined checkpoint counts, but one failure is tolerated.
    let call = checkpoint_call(&client, "flaky");
    cluster.wait_for_trigger(1).await;
    cluster.decline(1, "disk full");
    assert_failure(
        &outcome(call).await.expect_err("declined"),
        Code::Aborted,
        "DECLINED",
    );
    let after_one = stats(&mut client, "flaky").await;
    assert_eq!(
        (after_one.consecutive_failures, after_one.failing),
        (1, false)
    );

    // 2: savepoint failures never count.
    let call = savepoint_call(&client, "flaky");
    cluster.wait_for_trigger(2).await;
    cluster.decline(2, "disk full");
    assert_failure(
        &outcome(call).await.expect_err("declined"),
        Code::Aborted,
        "DECLINED",
    );
    let after_savepoint = stats(&mut client, "flaky").await;
    assert_eq!(
        (
            after_savepoint.consecutive_failures,
            after_savepoint.failing
        ),
        (1, false)
    );
    assert!(common::status_changes(&cluster.log()).is_empty());

    // 3: an expired checkpoint is the second consecutive failure: the job is failing.
    let status = common::try_trigger_checkpoint(&mut client, "flaky")
        .await
        .expect_err("expired");
    assert_failure(&status, Code::Aborted, "EXPIRED");
    let failing = stats(&mut client, "flaky").await;
    assert_eq!((failing.consecutive_failures, failing.failing), (2, true));
    assert_eq!(
        failing.job_status(),
        proto::JobStatus::Running,
        "failing is a flag for whoever runs the job, not a status change"
    );
    let changes = cluster
        .wait_for("both task managers to hear the job is failing", |log| {
            let changes = common::status_changes(log);
            (changes.len() >= 2).then_some(changes)
        })
        .await;
    for change in &changes {
        assert_eq!(
            (change.job_id.as_str(), change.status(), change.failing),
            ("flaky", proto::JobStatus::Running, true)
        );
        assert!(
            change
                .message
                .starts_with("2 consecutive checkpoint failures exceed the 1 tolerated"),
            "{change:?}"
        );
    }

    // 4: one more failure keeps it failing without another announcement.
    let call = checkpoint_call(&client, "flaky");
    cluster.wait_for_trigger(4).await;
    cluster.decline(4, "disk still full");
    assert_failure(
        &outcome(call).await.expect_err("declined"),
        Code::Aborted,
        "DECLINED",
    );
    assert_eq!(stats(&mut client, "flaky").await.consecutive_failures, 3);

    // 5: a success resets the count and clears the flag.
    let call = checkpoint_call(&client, "flaky");
    cluster.wait_for_trigger(5).await;
    cluster.acknowledge_all(5);
    assert_eq!(outcome(call).await.expect("completes"), 5);
    let recovered = stats(&mut client, "flaky").await;
    assert_eq!(
        (recovered.consecutive_failures, recovered.failing),
        (0, false)
    );
    for task_manager in ["flaky-tm-0", "flaky-tm-1"] {
        let heard = cluster
            .wait_for(
                &format!("{task_manager} to hear the job recovered"),
                |log| {
                    let failing: Vec<bool> = log
                        .iter()
                        .filter(|r| r.task_manager == task_manager)
                        .filter_map(|r| match &r.message {
                            proto::coordinator_message::Message::JobStatusChanged(c) => {
                                Some(c.failing)
                            }
                            _ => None,
                        })
                        .collect();
                    (failing.last() == Some(&false)).then_some(failing)
                },
            )
            .await;
        assert_eq!(heard, vec![true, false], "{task_manager}");
    }

    assert_eq!(
        recovered.failed_by_reason,
        by_reason(&[("DECLINED", 3), ("EXPIRED", 1)])
    );
    assert_eq!((recovered.failed, recovered.completed), (4, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_failed_snapshots_carry_one_typed_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;

    // Refused before anything starts.
    register(&mut client, &job("idle", VERTICES, policy(0, 0))).await;
    set_status(&mut client, "idle", proto::JobStatus::Running).await;
    let status = common::trigger_savepoint(&mut client, "idle")
        .await
        .expect_err("no tasks");
    assert_failure(&status, Code::FailedPrecondition, "TASKS_NOT_RUNNING");

    let job = job("typed", VERTICES, policy(0, 0));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::None, &[]).await;
    let status = common::trigger_savepoint(&mut client, "typed")
        .await
        .expect_err("job not running");
    assert_failure(&status, Code::FailedPrecondition, "JOB_NOT_RUNNING");
    assert!(
        status.message().contains("is CREATED, not RUNNING"),
        "{status:?}"
    );
    let status = common::try_trigger_checkpoint(&mut client, "typed")
        .await
        .expect_err("job not running");
    assert_failure(&status, Code::FailedPrecondition, "JOB_NOT_RUNNING");

    // Subsumed: a newer checkpoint completes first.
    set_status(&mut client, "typed", proto::JobStatus::Running).await;
    let older = checkpoint_call(&client, "typed");
    cluster.wait_for_trigger(1).await;
    let newer = checkpoint_call(&client, "typed");
    cluster.wait_for_trigger(2).await;
    cluster.acknowledge_all(2);
    assert_eq!(outcome(newer).await.expect("completes"), 2);
    assert_failure(
        &outcome(older).await.expect_err("subsumed"),
        Code::Aborted,
        "SUBSUMED",
    );

    // The job leaves RUNNING while a savepoint is pending.
    let savepoint = savepoint_call(&client, "typed");
    cluster.wait_for_trigger(3).await;
    set_status(&mut client, "typed", proto::JobStatus::Cancelling).await;
    let status = outcome(savepoint).await.expect_err("job left RUNNING");
    assert_failure(&status, Code::FailedPrecondition, "JOB_NOT_RUNNING");
    assert!(
        status.message().contains("left RUNNING (now CANCELLING)"),
        "{status:?}"
    );
    let aborts = cluster.wait_for_aborts(3).await;
    assert!(
        aborts
            .iter()
            .all(|a| a.reason() == FailureReason::JobNotRunning)
    );

    let stats = stats(&mut client, "typed").await;
    assert_eq!(
        stats.failed_by_reason,
        by_reason(&[("SUBSUMED", 1), ("JOB_NOT_RUNNING", 1)]),
        "refusals are not snapshots; every failed snapshot is counted once"
    );
    assert_eq!((stats.consecutive_failures, stats.failing), (0, false));

    // The coordinator shuts down under a pending savepoint.
    set_status(&mut client, "typed", proto::JobStatus::Running).await;
    let savepoint = savepoint_call(&client, "typed");
    cluster.wait_for_trigger(4).await;
    within(
        "UnregisterJob",
        client.unregister_job(proto::UnregisterJobRequest {
            job_id: "typed".into(),
        }),
    )
    .await
    .expect("unregistered");
    let status = outcome(savepoint).await.expect_err("coordinator shut down");
    assert_failure(&status, Code::Unavailable, "COORDINATOR_SHUT_DOWN");
    server.stop().await;
}

// Item 8: statistics.

/// Nearest-rank percentile of ascending `sorted`.
fn nearest_rank(sorted: &[u64], percent: usize) -> u64 {
    sorted[(percent * sorted.len()).div_ceil(100) - 1]
}

fn assert_ordered(name: &str, summary: &proto::Summary) {
    assert!(
        summary.min <= summary.p50
            && summary.p50 <= summary.p90
            && summary.p90 <= summary.p99
            && summary.p99 <= summary.max
            && summary.min <= summary.avg
            && summary.avg <= summary.max,
        "{name}: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_summarize_durations_sizes_subtasks_failures_and_restores() {
    const HELD: Duration = Duration::from_millis(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("measured", VERTICES, policy(0, 0));
    register(&mut client, &job).await;
    let cluster = Cluster::start(&server, &job, 2, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "measured", proto::JobStatus::Running).await;

    for id in 1..=8 {
        assert_eq!(
            common::trigger_checkpoint(&mut client, "measured").await,
            id
        );
    }
    // 9: a savepoint whose acknowledgements are held back for a while.
    let savepoint = savepoint_call(&client, "measured");
    cluster.wait_for_trigger(9).await;
    tokio::time::sleep(HELD).await;
    cluster.acknowledge_all(9);
    let savepoint = outcome(savepoint).await.expect("savepoint");
    // 10: a declined savepoint.
    let declined = savepoint_call(&client, "measured");
    cluster.wait_for_trigger(10).await;
    let decliner = cluster.decline(10, "no space left on /state");
    outcome(declined).await.expect_err("declined");
    // 11, 12: checkpoints with two-digit ids, so their state is a little larger.
    for id in 11..=12 {
        assert_eq!(
            common::trigger_checkpoint(&mut client, "measured").await,
            id
        );
    }

    let stats = stats(&mut client, "measured").await;
    assert_eq!(
        (
            stats.triggered,
            stats.completed,
            stats.failed,
            stats.in_progress
        ),
        (12, 11, 1, 0)
    );
    assert_eq!(stats.failed_by_reason, by_reason(&[("DECLINED", 1)]));

    let duration = stats.duration_ms.expect("duration summary");
    assert_eq!(duration.count, 11);
    assert_ordered("duration", &duration);
    assert!(duration.max >= HELD.as_millis() as u64, "{duration:?}");
    let size = stats.state_size_bytes.expect("size summary");
    let mut sizes: Vec<u64> = (1..=9)
        .chain(11..=12)
        .map(|id| cluster.state_size(id))
        .collect();
    sizes.sort_unstable();
    assert_ordered("size", &size);
    assert_eq!(
        size,
        proto::Summary {
            count: 11,
            min: sizes[0],
            avg: sizes.iter().sum::<u64>() / 11,
            max: sizes[10],
            p50: nearest_rank(&sizes, 50),
            p90: nearest_rank(&sizes, 90),
            p99: nearest_rank(&sizes, 99),
        }
    );
    assert!(size.min < size.p90, "two sizes: {sizes:?}");

    // Per subtask: every subtask acknowledged, with its own size and latency.
    let names: BTreeSet<String> = cluster.tasks.iter().map(|t| t.name()).collect();
    let latest = stats.latest_completed.expect("latest completed");
    assert_eq!(
        (latest.checkpoint_id, latest.kind()),
        (12, SnapshotKind::Checkpoint)
    );
    assert_eq!(
        (latest.acknowledged_subtasks, latest.total_subtasks),
        (3, 3)
    );
    assert_eq!(latest.state_size_bytes, cluster.state_size(12));
    let listed: BTreeSet<String> = latest
        .subtasks
        .iter()
        .map(|s| {
            let subtask = s.subtask.as_ref().expect("named subtask");
            format!("{}#{}", subtask.vertex_id, subtask.subtask_index)
        })
        .collect();
    assert_eq!(listed, names);
    for sample in &latest.subtasks {
        let subtask = sample.subtask.as_ref().expect("named");
        let task = cluster
            .tasks
            .iter()
            .find(|t| t.vertex == subtask.vertex_id && t.subtask == subtask.subtask_index)
            .expect("a task of the job");
        assert!(sample.acknowledged, "{sample:?}");
        assert_eq!(
            sample.state_size_bytes,
            format!("{}@12", task.name()).len() as u64
        );
        assert!(sample.ack_latency_ms <= latest.duration_ms, "{sample:?}");
    }

    let latest_savepoint = stats.latest_savepoint.expect("latest savepoint");
    assert_eq!(
        (
            latest_savepoint.checkpoint_id,
            latest_savepoint.status(),
            latest_savepoint.trigger(),
            latest_savepoint.path.as_str()
        ),
        (
            9,
            SnapshotStatus::Completed,
            SavepointTrigger::Manual,
            savepoint.path.as_str()
        )
    );
    assert!(latest_savepoint.duration_ms >= HELD.as_millis() as u64);
    assert_eq!(latest_savepoint.subtasks.len(), 3);
    for sample in &latest_savepoint.subtasks {
        assert!(
            sample.ack_latency_ms >= HELD.as_millis() as u64,
            "acknowledged after being held: {sample:?}"
        );
    }

    let failed = stats.latest_failed.expect("latest failed");
    assert_eq!(
        (failed.checkpoint_id, failed.kind(), failed.failure_reason()),
        (10, SnapshotKind::Savepoint, FailureReason::Declined)
    );
    assert_eq!(
        failed.failure_message,
        format!(
            "task {} declined snapshot 10: no space left on /state",
            decliner.name()
        )
    );
    assert_eq!(
        (failed.acknowledged_subtasks, failed.total_subtasks),
        (0, 3)
    );

    let history: Vec<u64> = stats.history.iter().map(|s| s.checkpoint_id).collect();
    assert_eq!(
        history,
        (1..=12).rev().collect::<Vec<u64>>(),
        "newest first"
    );

    // The latest restore, with its claim mode.
    for (job_id, claim_mode) in [
        ("copy", ClaimMode::Unspecified),
        ("owner", ClaimMode::Claim),
    ] {
        register(&mut client, &common::job(job_id, VERTICES, policy(0, 0))).await;
        let request = proto::RestoreSavepointRequest {
            job_id: job_id.to_string(),
            path: savepoint.path.clone(),
            allow_non_restored_state: false,
            claim_mode: claim_mode.into(),
        };
        within("RestoreSavepoint", client.restore_savepoint(request))
            .await
            .expect("restore");
    }
    for (job_id, claim_mode) in [("copy", ClaimMode::NoClaim), ("owner", ClaimMode::Claim)] {
        let stats = common::stats(&mut client, job_id).await;
        assert_eq!(stats.restored, 1);
        let restore = stats.latest_restore.expect("latest restore");
        assert_eq!(
            (
                restore.checkpoint_id,
                restore.path.as_str(),
                restore.claim_mode()
            ),
            (9, savepoint.path.as_str(), claim_mode),
            "{job_id}"
        );
        assert!(restore.timestamp_ms >= latest_savepoint.completion_timestamp_ms);
    }
    server.stop().await;
}
