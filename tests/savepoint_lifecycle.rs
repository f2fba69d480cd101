//! The savepoint life-cycle over the real API (issue 3): idempotent and durable
//! operations (item 1), stop-with-savepoint (item 3), disposal (item 4), history and
//! retention (item 6) and periodic savepoints (item 7).

mod common;

use common::{
    Acks, Cluster, TestServer, eventually, job, list_savepoints, operation, policy, register,
    set_status, stats, within,
};
use savepoint_coordinator::client::Downward;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::{
    self, FailureReason, OperationStatus, PostSnapshotAction, SavepointTrigger, SnapshotKind,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

type Client = SavepointServiceClient<Channel>;

fn savepoint_request(
    job_id: &str,
    request_id: &str,
    detach: bool,
) -> proto::TriggerSavepointRequest {
    proto::TriggerSavepointRequest {
        job_id: job_id.to_string(),
        request_id: request_id.to_string(),
        detach,
        ..Default::default()
    }
}

async fn trigger(
    client: &mut Client,
    request: proto::TriggerSavepointRequest,
) -> Result<proto::TriggerSavepointResponse, tonic::Status> {
    within("TriggerSavepoint", client.trigger_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

/// A TriggerSavepoint that must be refused; returns why.
async fn trigger_plain(client: &mut Client, job_id: &str) -> tonic::Status {
    trigger(client, savepoint_request(job_id, "", false))
        .await
        .expect_err("savepoint refused")
}

fn stop_request(job_id: &str, drain: bool, request_id: &str) -> proto::StopWithSavepointRequest {
    proto::StopWithSavepointRequest {
        job_id: job_id.to_string(),
        drain,
        request_id: request_id.to_string(),
        ..Default::default()
    }
}

async fn stop(
    client: &mut Client,
    request: proto::StopWithSavepointRequest,
) -> Result<proto::TriggerSavepointResponse, tonic::Status> {
    within("StopWithSavepoint", client.stop_with_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

async fn dispose(client: &mut Client, path: &str) -> Result<bool, tonic::Status> {
    let request = proto::DisposeSavepointRequest {
        path: path.to_string(),
    };
    within("DisposeSavepoint", client.dispose_savepoint(request))
        .await
        .map(|response| response.into_inner().existed)
}

/// Registers `job`, runs its tasks on two task managers and sets it RUNNING.
async fn running(
    server: &TestServer,
    client: &mut Client,
    job: &proto::RegisterJobRequest,
    acks: Acks,
) -> Cluster {
    register(client, job).await;
    let cluster = Cluster::start(server, job, 2, acks, &[]).await;
    set_status(client, &job.job_id, proto::JobStatus::Running).await;
    cluster
}

/// A job of [`VERTICES`] with periodic savepoints and retention as `savepoints` says.
fn job_with_savepoints(
    job_id: &str,
    savepoints: proto::SavepointPolicy,
) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        savepoint_policy: Some(savepoints),
        ..job(job_id, VERTICES, policy(0, 0))
    }
}

/// Whether a savepoint's metadata is on disk at `path`.
fn has_metadata(path: &str) -> bool {
    Path::new(path).join("_metadata").is_file()
}

fn savepoint_triggers(log: &[common::Received]) -> Vec<proto::TriggerCheckpoint> {
    common::triggers(log)
        .filter(|t| t.kind() == SnapshotKind::Savepoint)
        .cloned()
        .collect()
}

fn ids(savepoints: &[proto::SavepointInfo]) -> Vec<u64> {
    savepoints.iter().map(|s| s.checkpoint_id).collect()
}

// Item 1: durable, idempotent operations.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_returns_the_same_operation_and_takes_one_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let cluster = running(
        &server,
        &mut client,
        &job("idem", VERTICES, policy(0, 0)),
        Acks::All,
    )
    .await;

    let first = trigger(&mut client, savepoint_request("idem", "nightly-1", false))
        .await
        .expect("savepoint");
    assert_eq!(first.operation_id, "nightly-1");
    assert_eq!(first.status(), OperationStatus::Completed);
    assert_eq!(first.checkpoint_id, 1);
    let path = server.savepoint_dir().join("savepoint-idem-1");
    assert_eq!(first.path, path.to_str().expect("utf-8"));
    assert!(has_metadata(&first.path));

    let again = trigger(&mut client, savepoint_request("idem", "nightly-1", false))
        .await
        .expect("repeat");
    assert_eq!(again, first, "a repeat answers with the same operation");
    let detached = trigger(&mut client, savepoint_request("idem", "nightly-1", true))
        .await
        .expect("detached repeat");
    assert_eq!(detached, first, "a detached repeat finds it finished");

    // The same id for another kind of savepoint is a conflict, not a new savepoint.
    let conflict = stop(&mut client, stop_request("idem", false, "nightly-1"))
        .await
        .expect_err("request id already used for a manual savepoint");
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");

    // The repeats spent no id: the next snapshot is 2. Its trigger comes after any
    // trigger a repeat could have sent, so the log below is complete.
    assert_eq!(common::trigger_checkpoint(&mut client, "idem").await, 2);
    cluster.wait_for_notifications(2).await;
    // Sorted: the two task managers log what they receive in whatever order they run.
    let mut triggered: Vec<(u64, u64)> = savepoint_triggers(&cluster.log())
        .iter()
        .map(|t| (t.checkpoint_id, t.attempt_id))
        .collect();
    triggered.sort_unstable();
    assert_eq!(triggered, vec![(1, 1), (1, 2)], "one trigger per source");
    assert_eq!(ids(&list_savepoints(&mut client, "idem").await), vec![1]);
    assert_eq!(stats(&mut client, "idem").await.triggered, 2);

    // Without a request id every call is a new operation with its own id.
    let a = trigger(&mut client, savepoint_request("idem", "", false))
        .await
        .expect("savepoint");
    let b = trigger(&mut client, savepoint_request("idem", "", false))
        .await
        .expect("savepoint");
    assert_ne!(a.operation_id, b.operation_id);
    assert_eq!((a.checkpoint_id, b.checkpoint_id), (3, 4));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_savepoint_is_pending_until_the_tasks_acknowledge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("detached", VERTICES, policy(0, 0));
    let cluster = running(&server, &mut client, &job, Acks::HoldSavepoints).await;

    let started = trigger(&mut client, savepoint_request("detached", "", true))
        .await
        .expect("detached savepoint");
    let held_since = Instant::now();
    assert_eq!(started.status(), OperationStatus::Pending);
    assert!(!started.operation_id.is_empty(), "the server picks an id");
    assert_eq!(started.checkpoint_id, 1);
    assert!(!has_metadata(&started.path));

    let pending = operation(&mut client, "detached", &started.operation_id)
        .await
        .expect("operation");
    assert_eq!(pending.status(), OperationStatus::Pending);
    assert_eq!(pending.trigger(), SavepointTrigger::Manual);
    assert_eq!(
        (
            pending.checkpoint_id,
            pending.path.as_str(),
            pending.job_id.as_str()
        ),
        (1, started.path.as_str(), "detached")
    );
    assert_eq!(
        (pending.completion_timestamp_ms, pending.duration_ms),
        (0, 0)
    );
    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    assert_eq!(trigger.location, started.path);
    assert!(
        trigger.full,
        "a savepoint shares no files with earlier snapshots"
    );
    assert_eq!(trigger.action(), PostSnapshotAction::None);

    // Held long enough for the duration to be measurable.
    tokio::time::sleep(Duration::from_millis(30).saturating_sub(held_since.elapsed())).await;
    cluster.acknowledge_all(1);
    let completed = eventually("the operation to complete", || {
        let mut client = client.clone();
        let id = started.operation_id.clone();
        async move {
            let operation = operation(&mut client, "detached", &id)
                .await
                .expect("operation");
            (operation.status() != OperationStatus::Pending).then_some(operation)
        }
    })
    .await;
    assert_eq!(completed.status(), OperationStatus::Completed);
    assert_eq!(completed.path, started.path);
    assert!(has_metadata(&completed.path));
    assert_eq!(completed.state_size_bytes, cluster.state_size(1));
    assert_eq!(
        completed.duration_ms,
        completed.completion_timestamp_ms - completed.trigger_timestamp_ms
    );
    assert!(completed.duration_ms >= 30, "{completed:?}");
    assert_eq!(completed.failure_reason(), FailureReason::Unspecified);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_a_restart_and_a_pending_one_fails_with_coordinator_shut_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("durable-ops", VERTICES, policy(0, 0));
    let cluster = running(&server, &mut client, &job, Acks::HoldSavepoints).await;

    let done = trigger(&mut client, savepoint_request("durable-ops", "done", true))
        .await
        .expect("savepoint");
    cluster.wait_for_trigger(done.checkpoint_id).await;
    cluster.acknowledge_all(done.checkpoint_id);
    let completed = eventually("the first operation to complete", || {
        let mut client = client.clone();
        async move {
            let operation = operation(&mut client, "durable-ops", "done")
                .await
                .expect("operation");
            (operation.status() == OperationStatus::Completed).then_some(operation)
        }
    })
    .await;

    let interrupted = trigger(
        &mut client,
        savepoint_request("durable-ops", "interrupted", true),
    )
    .await
    .expect("savepoint");
    assert_eq!(interrupted.status(), OperationStatus::Pending);
    cluster.wait_for_trigger(interrupted.checkpoint_id).await;

    let server = server.restart().await;
    cluster.wait_until_closed().await;
    let mut client = server.savepoints().await;

    let failed = operation(&mut client, "durable-ops", "interrupted")
        .await
        .expect("the pending operation is still known");
    assert_eq!(failed.status(), OperationStatus::Failed);
    assert_eq!(failed.failure_reason(), FailureReason::CoordinatorShutDown);
    assert!(!failed.failure_message.is_empty());
    assert_eq!(
        (failed.checkpoint_id, failed.path.as_str()),
        (interrupted.checkpoint_id, interrupted.path.as_str())
    );
    assert!(failed.completion_timestamp_ms >= failed.trigger_timestamp_ms);
    assert!(!has_metadata(&failed.path));

    let recovered = operation(&mut client, "durable-ops", "done")
        .await
        .expect("the completed operation is still known");
    assert_eq!(recovered.status(), OperationStatus::Completed);
    assert_eq!(
        (
            recovered.checkpoint_id,
            recovered.path.as_str(),
            recovered.state_size_bytes,
            recovered.trigger_timestamp_ms
        ),
        (
            completed.checkpoint_id,
            completed.path.as_str(),
            completed.state_size_bytes,
            completed.trigger_timestamp_ms
        )
    );

    // Repeats after the restart answer from the records; no task is connected, so a new
    // savepoint could not even be triggered.
    let repeated = trigger(&mut client, savepoint_request("durable-ops", "done", false))
        .await
        .expect("the completed operation");
    assert_eq!(
        (repeated.status(), repeated.checkpoint_id),
        (OperationStatus::Completed, completed.checkpoint_id)
    );
    let repeated = trigger(
        &mut client,
        savepoint_request("durable-ops", "interrupted", true),
    )
    .await
    .expect("the failed operation");
    assert_eq!(repeated.status(), OperationStatus::Failed);
    let status = trigger(
        &mut client,
        savepoint_request("durable-ops", "interrupted", false),
    )
    .await
    .expect_err("waiting on a failed operation reports its failure");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        common::failure_reason(&status),
        Some("COORDINATOR_SHUT_DOWN")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_operation_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    register(&mut client, &job("known", VERTICES, policy(0, 0))).await;

    let status = operation(&mut client, "known", "never-triggered")
        .await
        .expect_err("no such operation");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("never-triggered"), "{status:?}");
    let status = operation(&mut client, "unknown", "never-triggered")
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = operation(&mut client, "known", "")
        .await
        .expect_err("empty operation id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.stop().await;
}

// Item 3: stop-with-savepoint.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_savepoint_finishes_the_job_only_once_the_savepoint_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("stopping", VERTICES, policy(0, 0));
    let cluster = running(&server, &mut client, &job, Acks::HoldSavepoints).await;

    let mut caller = client.clone();
    let stopping =
        tokio::spawn(
            async move { stop(&mut caller, stop_request("stopping", false, "stop-1")).await },
        );
    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    assert_eq!(trigger.action(), PostSnapshotAction::Stop);
    assert!(trigger.full);
    let id = trigger.checkpoint_id;

    // Not durable yet: the job is still RUNNING and a second stop is refused.
    assert!(!has_metadata(&trigger.location));
    assert_eq!(
        stats(&mut client, "stopping").await.job_status(),
        proto::JobStatus::Running
    );
    let pending = operation(&mut client, "stopping", "stop-1")
        .await
        .expect("operation");
    assert_eq!(
        (pending.status(), pending.trigger(), pending.drain),
        (OperationStatus::Pending, SavepointTrigger::Stop, false)
    );
    let second = stop(&mut client, stop_request("stopping", false, ""))
        .await
        .expect_err("one stop at a time");
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");
    assert!(
        second.message().contains("already in progress"),
        "{second:?}"
    );
    assert!(common::status_changes(&cluster.log()).is_empty());

    cluster.acknowledge_all(id);
    let stopped = within("the stop call", stopping)
        .await
        .expect("caller task")
        .expect("stop-with-savepoint");
    assert_eq!(stopped.status(), OperationStatus::Completed);
    assert_eq!(
        (stopped.checkpoint_id, stopped.path.as_str()),
        (id, trigger.location.as_str())
    );
    assert!(has_metadata(&stopped.path), "durable before the answer");
    assert_eq!(
        stats(&mut client, "stopping").await.job_status(),
        proto::JobStatus::Finished
    );
    let listed = list_savepoints(&mut client, "stopping").await;
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.checkpoint_id, s.trigger()))
            .collect::<Vec<_>>(),
        vec![(id, SavepointTrigger::Stop)]
    );

    // Both task managers hear that the job is FINISHED, after the completion notice.
    let changes = cluster
        .wait_for("FINISHED on both task managers", |log| {
            let changes = common::status_changes(log);
            (changes.len() >= 2).then_some(changes)
        })
        .await;
    for change in &changes {
        assert_eq!(
            (change.job_id.as_str(), change.status(), change.failing),
            ("stopping", proto::JobStatus::Finished, false)
        );
    }
    for task_manager in ["stopping-tm-0", "stopping-tm-1"] {
        let heard: Vec<&str> = cluster
            .log()
            .iter()
            .filter(|r| r.task_manager == task_manager)
            .filter_map(|r| match &r.message {
                Downward::NotifyCheckpointComplete(n) if n.checkpoint_id == id => Some("complete"),
                Downward::JobStatusChanged(_) => Some("finished"),
                _ => None,
            })
            .collect();
        assert_eq!(heard.last(), Some(&"finished"), "{task_manager}: {heard:?}");
        assert!(heard.contains(&"complete"), "{task_manager}: {heard:?}");
    }

    // A finished job takes no more snapshots, also after a restart.
    let refused = trigger_plain(&mut client, "stopping").await;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(common::failure_reason(&refused), Some("JOB_NOT_RUNNING"));
    drop(cluster);
    let server = server.restart().await;
    let mut client = server.savepoints().await;
    assert_eq!(
        stats(&mut client, "stopping").await.job_status(),
        proto::JobStatus::Finished
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_savepoint_and_drain_tells_the_tasks_to_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let cluster = running(
        &server,
        &mut client,
        &job("draining", VERTICES, policy(0, 0)),
        Acks::All,
    )
    .await;

    let stopped = stop(&mut client, stop_request("draining", true, "drain-1"))
        .await
        .expect("stop-with-savepoint");
    assert_eq!(stopped.status(), OperationStatus::Completed);
    assert!(has_metadata(&stopped.path));
    let triggers = savepoint_triggers(&cluster.log());
    assert_eq!(triggers.len(), 2, "{triggers:?}");
    assert!(
        triggers
            .iter()
            .all(|t| t.action() == PostSnapshotAction::Drain),
        "{triggers:?}"
    );
    let recorded = operation(&mut client, "draining", "drain-1")
        .await
        .expect("operation");
    assert_eq!(
        (recorded.status(), recorded.trigger(), recorded.drain),
        (OperationStatus::Completed, SavepointTrigger::Stop, true)
    );
    assert_eq!(
        stats(&mut client, "draining").await.job_status(),
        proto::JobStatus::Finished
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_stop_with_savepoint_leaves_the_job_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("kept", VERTICES, policy(0, 0));
    let cluster = running(&server, &mut client, &job, Acks::None).await;

    let mut caller = client.clone();
    let stopping =
        tokio::spawn(async move { stop(&mut caller, stop_request("kept", true, "stop-1")).await });
    let trigger = cluster.first_trigger(SnapshotKind::Savepoint).await;
    let task = cluster.decline(trigger.checkpoint_id, "sink cannot flush");
    let status = within("the stop call", stopping)
        .await
        .expect("caller task")
        .expect_err("a declined stop fails");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(common::failure_reason(&status), Some("DECLINED"));
    assert!(
        status.message().contains(&format!(
            "task {} declined snapshot {}: sink cannot flush",
            task.name(),
            trigger.checkpoint_id
        )),
        "{status:?}"
    );

    let stats = stats(&mut client, "kept").await;
    assert_eq!(stats.job_status(), proto::JobStatus::Running);
    assert!(!stats.failing);
    let failed = operation(&mut client, "kept", "stop-1")
        .await
        .expect("operation");
    assert_eq!(
        (failed.status(), failed.failure_reason()),
        (OperationStatus::Failed, FailureReason::Declined)
    );
    assert!(common::status_changes(&cluster.log()).is_empty());

    // Not in limbo: the next stop is accepted and finishes the job.
    let mut caller = client.clone();
    let retry =
        tokio::spawn(async move { stop(&mut caller, stop_request("kept", true, "")).await });
    let next = cluster.wait_for_trigger(trigger.checkpoint_id + 1).await;
    assert_eq!(next.action(), PostSnapshotAction::Drain);
    cluster.acknowledge_all(next.checkpoint_id);
    within("the second stop call", retry)
        .await
        .expect("caller task")
        .expect("the retried stop succeeds");
    assert_eq!(
        common::stats(&mut client, "kept").await.job_status(),
        proto::JobStatus::Finished
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_savepoint_that_times_out_leaves_the_job_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("slow-stop", VERTICES, policy(0, 300));
    let cluster = running(&server, &mut client, &job, Acks::None).await;

    let status = stop(&mut client, stop_request("slow-stop", false, "stop-1"))
        .await
        .expect_err("unacknowledged stop expires");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(common::failure_reason(&status), Some("EXPIRED"));
    assert!(
        status.message().contains("expired after 300 ms"),
        "{status:?}"
    );
    let stats = stats(&mut client, "slow-stop").await;
    assert_eq!(stats.job_status(), proto::JobStatus::Running);
    let failed = operation(&mut client, "slow-stop", "stop-1")
        .await
        .expect("operation");
    assert_eq!(
        (failed.status(), failed.failure_reason()),
        (OperationStatus::Failed, FailureReason::Expired)
    );
    let aborts = cluster.wait_for_aborts(1).await;
    assert!(aborts.iter().all(|a| a.reason() == FailureReason::Expired));

    // The next stop is accepted.
    let retry = stop_request("slow-stop", false, "stop-2");
    let started = within(
        "StopWithSavepoint",
        client.stop_with_savepoint(proto::StopWithSavepointRequest {
            detach: true,
            ..retry
        }),
    )
    .await
    .expect("a new stop is accepted")
    .into_inner();
    assert_eq!(started.status(), OperationStatus::Pending);
    assert_eq!(
        cluster
            .wait_for_trigger(started.checkpoint_id)
            .await
            .action(),
        PostSnapshotAction::Stop
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_pending_when_a_stop_finishes_the_job_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job("overtaken", VERTICES, policy(0, 0));
    let cluster = running(&server, &mut client, &job, Acks::HoldSavepoints).await;

    let manual = trigger(&mut client, savepoint_request("overtaken", "manual", true))
        .await
        .expect("savepoint");
    cluster.wait_for_trigger(manual.checkpoint_id).await;
    let stop_started = within(
        "StopWithSavepoint",
        client.stop_with_savepoint(proto::StopWithSavepointRequest {
            detach: true,
            ..stop_request("overtaken", false, "stop")
        }),
    )
    .await
    .expect("stop accepted")
    .into_inner();
    cluster.wait_for_trigger(stop_started.checkpoint_id).await;
    cluster.acknowledge_all(stop_started.checkpoint_id);

    // The tasks finish after the stop and will never acknowledge the older savepoint.
    let manual = eventually("the overtaken savepoint to end", || {
        let mut client = client.clone();
        async move {
            let operation = operation(&mut client, "overtaken", "manual")
                .await
                .expect("operation");
            (operation.status() != OperationStatus::Pending).then_some(operation)
        }
    })
    .await;
    assert_eq!(
        (manual.status(), manual.failure_reason()),
        (OperationStatus::Failed, FailureReason::JobNotRunning),
        "{manual:?}"
    );
    let stats = stats(&mut client, "overtaken").await;
    assert_eq!(stats.job_status(), proto::JobStatus::Finished);
    assert_eq!(stats.in_progress, 0);
    server.stop().await;
}

// Item 4: disposal.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispose_deletes_a_savepoint_idempotently_and_only_under_the_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let _cluster = running(
        &server,
        &mut client,
        &job("disposable", VERTICES, policy(0, 0)),
        Acks::All,
    )
    .await;
    let mut paths = Vec::new();
    for _ in 0..3 {
        let savepoint = common::trigger_savepoint(&mut client, "disposable")
            .await
            .expect("savepoint");
        assert!(has_metadata(&savepoint.path));
        paths.push(savepoint.path);
    }

    assert!(
        dispose(&mut client, &paths[0])
            .await
            .expect("dispose by directory")
    );
    assert!(
        !Path::new(&paths[0]).exists(),
        "metadata and directory are gone"
    );
    let metadata = format!("{}/_metadata", paths[1]);
    assert!(
        dispose(&mut client, &metadata)
            .await
            .expect("dispose by metadata file")
    );
    assert!(!Path::new(&paths[1]).exists());
    assert!(
        !dispose(&mut client, &paths[0]).await.expect("repeat"),
        "nothing left"
    );
    assert!(!dispose(&mut client, &metadata).await.expect("repeat"));
    assert_eq!(
        ids(&list_savepoints(&mut client, "disposable").await),
        vec![3]
    );

    let root = server.savepoint_dir();
    let root = root.to_str().expect("utf-8");
    let escaping = format!("{root}/../savepoints/savepoint-disposable-3");
    let not_a_savepoint = format!("{root}/notes");
    for outside in [
        "/etc",
        "/etc/passwd",
        "savepoints/savepoint-disposable-3",
        escaping.as_str(),
        root,
        not_a_savepoint.as_str(),
        " ",
    ] {
        let status = dispose(&mut client, outside).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{outside:?}: {status:?}"
        );
    }
    assert!(Path::new("/etc/passwd").exists());
    assert!(
        has_metadata(&paths[2]),
        "the savepoint behind '..' is untouched"
    );
    assert_eq!(
        ids(&list_savepoints(&mut client, "disposable").await),
        vec![3]
    );
    server.stop().await;
}

// Item 6: history and retention.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_savepoints_is_newest_first_with_trigger_kind_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job_with_savepoints(
        "history",
        proto::SavepointPolicy {
            interval_ms: 1000,
            ..Default::default()
        },
    );
    let cluster = running(&server, &mut client, &job, Acks::All).await;
    common::trigger_savepoint(&mut client, "history")
        .await
        .expect("manual savepoint");
    eventually("a periodic savepoint", || {
        let mut client = client.clone();
        async move {
            let listed = list_savepoints(&mut client, "history").await;
            listed
                .iter()
                .any(|s| s.trigger() == SavepointTrigger::Periodic)
                .then_some(())
        }
    })
    .await;
    let stopped = stop(&mut client, stop_request("history", false, ""))
        .await
        .expect("stop-with-savepoint");

    let listed = list_savepoints(&mut client, "history").await;
    let listed_ids = ids(&listed);
    assert!(listed_ids.windows(2).all(|w| w[0] > w[1]), "{listed_ids:?}");
    let triggers: Vec<SavepointTrigger> = listed.iter().map(|s| s.trigger()).collect();
    assert_eq!(
        triggers.first(),
        Some(&SavepointTrigger::Stop),
        "{triggers:?}"
    );
    assert_eq!(
        triggers.last(),
        Some(&SavepointTrigger::Manual),
        "{triggers:?}"
    );
    assert!(
        triggers[1..triggers.len() - 1]
            .iter()
            .all(|t| *t == SavepointTrigger::Periodic)
            && triggers.len() >= 3,
        "{triggers:?}"
    );
    assert_eq!(listed[0].path, stopped.path);
    for savepoint in &listed {
        assert_eq!(
            savepoint.state_size_bytes,
            cluster.state_size(savepoint.checkpoint_id),
            "{savepoint:?}"
        );
        let expected = server
            .savepoint_dir()
            .join(format!("savepoint-history-{}", savepoint.checkpoint_id));
        assert_eq!(savepoint.path, expected.to_str().expect("utf-8"));
        assert!(has_metadata(&savepoint.path));
        assert!(savepoint.completion_timestamp_ms >= savepoint.trigger_timestamp_ms);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_savepoints_by_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job_with_savepoints(
        "counted",
        proto::SavepointPolicy {
            max_retained: 2,
            ..Default::default()
        },
    );
    let _cluster = running(&server, &mut client, &job, Acks::All).await;
    let mut paths = Vec::new();
    for _ in 0..3 {
        let savepoint = common::trigger_savepoint(&mut client, "counted")
            .await
            .expect("savepoint");
        paths.push(savepoint.path);
    }
    // Retention runs right after the third savepoint completes.
    eventually("the oldest savepoint to be retired", || {
        let mut client = client.clone();
        async move { (ids(&list_savepoints(&mut client, "counted").await) == vec![3, 2]).then_some(()) }
    })
    .await;
    eventually("the oldest savepoint's directory to be deleted", || {
        let gone = !Path::new(&paths[0]).exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(has_metadata(&paths[1]) && has_metadata(&paths[2]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_always_keeps_the_newest_savepoint() {
    const MAX_AGE: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job_with_savepoints(
        "aged",
        proto::SavepointPolicy {
            max_age_ms: MAX_AGE.as_millis() as u64,
            ..Default::default()
        },
    );
    let cluster = running(&server, &mut client, &job, Acks::All).await;
    let oldest = common::trigger_savepoint(&mut client, "aged")
        .await
        .expect("savepoint");
    tokio::time::sleep(MAX_AGE + Duration::from_millis(200)).await;
    let mut paths = Vec::new();
    for _ in 0..2 {
        let savepoint = common::trigger_savepoint(&mut client, "aged")
            .await
            .expect("savepoint");
        paths.push(savepoint.path);
    }
    eventually("the aged savepoint to be retired", || {
        let mut client = client.clone();
        async move { (ids(&list_savepoints(&mut client, "aged").await) == vec![3, 2]).then_some(()) }
    })
    .await;
    eventually("its directory to be deleted", || {
        let gone = !Path::new(&oldest.path).exists();
        async move { gone.then_some(()) }
    })
    .await;

    // Once both are too old, a restart (which applies retention) keeps the newest.
    tokio::time::sleep(MAX_AGE + Duration::from_millis(200)).await;
    drop(cluster);
    let server = server.restart().await;
    let mut client = server.savepoints().await;
    assert_eq!(ids(&list_savepoints(&mut client, "aged").await), vec![3]);
    assert!(!Path::new(&paths[0]).exists());
    assert!(
        has_metadata(&paths[1]),
        "the newest savepoint is always kept"
    );
    server.stop().await;
}

// Item 7: periodic savepoints.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_savepoints_are_skipped_until_the_job_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let job = job_with_savepoints(
        "periodic",
        proto::SavepointPolicy {
            interval_ms: 1000,
            ..Default::default()
        },
    );
    register(&mut client, &job).await;
    let _cluster = Cluster::start(&server, &job, 2, Acks::All, &[]).await;

    let skipped = eventually("a skipped periodic savepoint", || {
        let mut client = client.clone();
        async move {
            let stats = stats(&mut client, "periodic").await;
            (stats.periodic_savepoints_skipped > 0).then_some(stats)
        }
    })
    .await;
    assert_eq!(skipped.last_skip_reason, "job is CREATED, not RUNNING");
    assert!(list_savepoints(&mut client, "periodic").await.is_empty());
    assert_eq!(skipped.triggered, 0);

    set_status(&mut client, "periodic", proto::JobStatus::Running).await;
    let taken = eventually("a periodic savepoint", || {
        let mut client = client.clone();
        async move {
            list_savepoints(&mut client, "periodic")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(taken.trigger(), SavepointTrigger::Periodic);
    assert!(has_metadata(&taken.path));
    // The index entry is written before the completion is recorded in the statistics.
    let latest = eventually("the periodic savepoint in the statistics", || {
        let mut client = client.clone();
        async move { stats(&mut client, "periodic").await.latest_savepoint }
    })
    .await;
    assert_eq!(latest.trigger(), SavepointTrigger::Periodic);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_takes_periodic_savepoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let bad = job_with_savepoints(
        "bad-cron",
        proto::SavepointPolicy {
            cron: "every second".into(),
            ..Default::default()
        },
    );
    let status = within("RegisterJob", client.register_job(bad))
        .await
        .expect_err("not a cron expression");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("savepoint_policy.cron"),
        "{status:?}"
    );

    let job = job_with_savepoints(
        "cron",
        proto::SavepointPolicy {
            cron: "* * * * * *".into(),
            ..Default::default()
        },
    );
    let _cluster = running(&server, &mut client, &job, Acks::All).await;
    let taken = eventually("a savepoint on the cron schedule", || {
        let mut client = client.clone();
        async move {
            list_savepoints(&mut client, "cron")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(taken.trigger(), SavepointTrigger::Periodic);
    assert!(has_metadata(&taken.path));
    server.stop().await;
}
