//! Scenarios of the savepoint life-cycle: idempotent operations, stop-with-savepoint,
//! claim modes, retention, periodic savepoints and disposal.

use super::*;
use crate::coordinator::model::{ClaimMode, OperationOutcome, SavepointOperation, SavepointPolicy};
use crate::coordinator::{SavepointRequest, SavepointStarted};
use crate::store::OperationStore;

fn with_request_id(id: &str) -> SavepointRequest {
    SavepointRequest {
        request_id: Some(id.to_string()),
        ..SavepointRequest::manual(Some(SAVEPOINT_DIR.to_string()))
    }
}

async fn request(h: &Harness, request: SavepointRequest) -> SavepointStarted {
    h.coordinator
        .savepoint(JOB, request)
        .await
        .expect("savepoint accepted")
}

/// Acks savepoint `id` from every attempt with state inside its directory.
fn ack_savepoint(h: &Harness, id: u64) {
    let path = expected_savepoint_path(id);
    h.ack_all_at(id, &path);
}

fn spec_with_savepoints(savepoint_policy: SavepointPolicy, policy: CheckpointPolicy) -> JobSpec {
    JobSpec {
        savepoint_policy,
        ..standard_spec(JOB, policy)
    }
}

async fn started_with(spec: JobSpec) -> Harness {
    let mut h = Harness::new();
    h.register(spec).await;
    h.connect();
    h.register_all(TaskState::Running);
    h.set_status(JobStatus::Running).await;
    h
}

#[tokio::test(start_paused = true)]
async fn a_repeated_request_id_returns_the_same_operation_and_takes_one_savepoint() {
    let h = Harness::started(policy()).await;
    let first = request(&h, with_request_id("deploy-42")).await;
    assert!(first.handle.is_some());
    assert_eq!(first.operation.operation_id, "deploy-42");
    assert_eq!(first.operation.outcome, OperationOutcome::Pending);
    assert_eq!(h.sent(), triggered(1));

    let again = request(&h, with_request_id("deploy-42")).await;
    assert!(again.handle.is_none(), "no second savepoint");
    assert_eq!(again.operation, first.operation);
    assert_eq!(h.sent(), vec![], "no second trigger");

    ack_savepoint(&h, 1);
    let done = h
        .coordinator
        .wait_operation(JOB, "deploy-42")
        .await
        .expect("operation known");
    assert_eq!(
        done.outcome,
        OperationOutcome::Completed {
            completion_timestamp_ms: START_MS,
            state_size_bytes: STATE_SIZE,
        }
    );
    let after = request(&h, with_request_id("deploy-42")).await;
    assert!(after.handle.is_none());
    assert_eq!(after.operation, done, "also after completion");
    assert_eq!(h.stats().triggered, 1);

    let stored = h.stores.operations.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(stored, vec![done], "the final record is what is stored");
}

#[tokio::test(start_paused = true)]
async fn a_bad_request_id_is_refused_naming_the_field() {
    let h = Harness::started(policy()).await;
    let result = h.coordinator.savepoint(JOB, with_request_id("a/b")).await;
    match result {
        Err(CoreError::InvalidArgument(message)) => assert!(message.contains("request_id")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("accepted"),
    }
    assert_eq!(h.sent(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_operation_records_the_typed_reason() {
    let h = Harness::started(with_timeout(1_000)).await;
    request(&h, with_request_id("nightly")).await;
    sleep_ms(1_000).await;
    let failed = h.coordinator.wait_operation(JOB, "nightly").await.unwrap();
    match failed.outcome {
        OperationOutcome::Failed { failure, .. } => {
            assert_eq!(failure.reason, FailureReason::Expired)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(matches!(
        h.coordinator.operation(JOB, "never-used"),
        Err(CoreError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn operations_survive_a_restart_and_a_pending_one_fails_with_a_reason() {
    let h = Harness::started(policy()).await;
    request(&h, with_request_id("done")).await;
    ack_savepoint(&h, 1);
    h.coordinator.wait_operation(JOB, "done").await.unwrap();
    request(&h, with_request_id("in-flight")).await;
    settle().await;
    // The server dies: a new coordinator on the same stores, the old one forgotten.
    let restarted = Harness::on(h.stores.clone(), h.memory.clone());
    assert_eq!(restarted.coordinator.recover().await.unwrap(), 1);
    settle().await;

    let done = restarted.coordinator.operation(JOB, "done").unwrap();
    assert!(matches!(done.outcome, OperationOutcome::Completed { .. }));
    let lost = restarted.coordinator.operation(JOB, "in-flight").unwrap();
    match lost.outcome {
        OperationOutcome::Failed { failure, .. } => {
            assert_eq!(failure.reason, FailureReason::CoordinatorShutDown);
            assert!(failure.message.contains("stopped"), "{}", failure.message);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let stored = restarted
        .stores
        .operations
        .load_all(&job_id(JOB))
        .await
        .unwrap();
    assert!(
        stored.iter().all(|o| !o.is_pending()),
        "the resolution is persisted: {stored:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_with_savepoint_finishes_the_job_only_once_the_savepoint_is_durable() {
    let h = Harness::started(periodic(100)).await;
    let stop = h
        .coordinator
        .stop_with_savepoint(JOB, None, true, Some("stop-1".to_string()))
        .await
        .unwrap();
    let id = stop.operation.checkpoint_id.0;
    assert!(stop.operation.drain);
    let triggers: Vec<TaskMessage> = h
        .gateway
        .take()
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    assert!(triggers.iter().all(|m| matches!(
        m,
        TaskMessage::TriggerCheckpoint {
            action: PostSnapshotAction::Drain,
            kind: SnapshotKind::Savepoint,
            ..
        }
    )));
    assert_eq!(h.stats().job_status, JobStatus::Running);

    sleep_ms(1_000).await;
    assert_eq!(h.sent(), vec![], "no periodic checkpoint while stopping");
    assert!(matches!(
        h.coordinator
            .stop_with_savepoint(JOB, None, false, None)
            .await,
        Err(CoreError::FailedPrecondition(_))
    ));

    ack_savepoint(&h, id);
    let done = h.coordinator.wait_operation(JOB, "stop-1").await.unwrap();
    assert!(matches!(done.outcome, OperationOutcome::Completed { .. }));
    settle().await;
    assert_eq!(h.stats().job_status, JobStatus::Finished);
    let records = crate::store::JobStore::load_all(h.memory()).await.unwrap();
    assert_eq!(
        records.records[0].status,
        JobStatus::Finished,
        "FINISHED is persisted"
    );
    let sent = h.sent();
    assert!(sent.contains(&Sent::Status("tm-a", JobStatus::Finished, false)));
    sleep_ms(1_000).await;
    assert_eq!(h.sent(), vec![], "a finished job takes no checkpoints");
}

#[tokio::test(start_paused = true)]
async fn a_declined_stop_with_savepoint_leaves_the_job_running() {
    let h = Harness::started(periodic(100)).await;
    let stop = h
        .coordinator
        .stop_with_savepoint(JOB, None, false, None)
        .await
        .unwrap();
    let id = stop.operation.checkpoint_id;
    h.sent();
    assert!(h.decline(id.0, MAP1, "cannot stop now"));
    let handle = stop.handle.unwrap();
    let message = expect_failure(handle.wait().await, FailureReason::Declined);
    assert!(message.contains("cannot stop now"));
    assert_eq!(h.stats().job_status, JobStatus::Running);
    h.sent();

    sleep_ms(150).await;
    assert!(
        h.sent()
            .iter()
            .any(|s| matches!(s, Sent::Trigger(_, next, _) if *next > id.0)),
        "periodic checkpoints resume"
    );
}

#[tokio::test(start_paused = true)]
async fn no_claim_restore_makes_the_next_checkpoint_full_and_keeps_the_savepoint() {
    let mut h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    h.coordinator.unregister_job(JOB).await.unwrap();
    h.token = 0;
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    h.register_all(TaskState::Created);
    h.coordinator
        .restore_savepoint_with(JOB, &path, false, ClaimMode::NoClaim)
        .await
        .unwrap();
    h.register_all(TaskState::Running);
    h.set_status(JobStatus::Running).await;
    h.gateway.take();

    let full_flags = |h: &Harness| -> Vec<bool> {
        h.gateway
            .take()
            .into_iter()
            .filter_map(|(_, m)| match m {
                TaskMessage::TriggerCheckpoint { full, .. } => Some(full),
                _ => None,
            })
            .collect()
    };
    let first = h.checkpoint().await;
    assert_eq!(full_flags(&h), vec![true, true]);
    h.ack_all(first.checkpoint_id.0);
    first.wait().await.unwrap();
    let second = h.checkpoint().await;
    assert_eq!(full_flags(&h), vec![false, false]);
    h.ack_all(second.checkpoint_id.0);
    second.wait().await.unwrap();
    settle().await;
    assert!(
        h.stores.savepoints.read(&path).await.is_ok(),
        "never deleted"
    );
    assert_eq!(
        h.stats().latest_restore.unwrap().claim_mode,
        Some(ClaimMode::NoClaim)
    );
}

#[tokio::test(start_paused = true)]
async fn a_claimed_savepoint_is_retained_and_disposed_once_subsumed() {
    let mut h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    h.register(spec(
        "job-2",
        &[("src", 2), ("map", 2), ("sink", 1)],
        policy(),
    ))
    .await;
    for (vertex, index, attempt, host) in TASKS {
        h.coordinator
            .register_task(
                &tm(host),
                &TaskRegistration {
                    job_id: "job-2".to_string(),
                    vertex_id: vertex.to_string(),
                    subtask_index: index,
                    attempt_id: AttemptId(attempt.0 + 1000),
                    state: TaskState::Created,
                },
            )
            .unwrap();
    }
    let restored = h
        .coordinator
        .restore_savepoint_with("job-2", &path, false, ClaimMode::Claim)
        .await
        .unwrap();
    let retained = h
        .stores
        .checkpoints
        .load_all(&job_id("job-2"))
        .await
        .unwrap();
    assert_eq!(
        stored_checkpoint_ids(&retained),
        vec![restored.checkpoint_id.0]
    );
    assert_eq!(retained[0].claimed_path.as_deref(), Some(path.as_str()));

    // The claimed snapshot is the job's latest checkpoint now: failover restores it.
    let failover = h
        .coordinator
        .restore_latest_checkpoint("job-2", false)
        .await
        .unwrap();
    assert_eq!(failover.checkpoint_id, restored.checkpoint_id);

    h.run_other_job("job-2", 1000).await;
    let next = h.coordinator.trigger_checkpoint("job-2").await.unwrap();
    let id = next.checkpoint_id;
    for (_, _, attempt, _) in TASKS {
        h.coordinator
            .acknowledge(
                "job-2",
                Acknowledgement {
                    checkpoint_id: id,
                    attempt_id: AttemptId(attempt.0 + 1000),
                    handles: Vec::new(),
                    fencing_token: 0,
                },
            )
            .unwrap();
    }
    next.wait().await.unwrap();
    settle().await;
    assert!(
        matches!(
            h.stores.savepoints.read(&path).await,
            Err(StoreError::NotFound { .. })
        ),
        "the claimed savepoint went with its subsumed checkpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_the_newest_savepoints_by_count() {
    let h = started_with(spec_with_savepoints(
        SavepointPolicy {
            max_retained: 2,
            ..SavepointPolicy::default()
        },
        policy(),
    ))
    .await;
    let mut paths = Vec::new();
    for _ in 0..4 {
        let handle = h.savepoint().await;
        paths.push(h.complete_savepoint(handle).await);
        settle().await;
    }
    let listed = h.coordinator.list_savepoints(JOB).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        listed,
        vec![paths[3].as_str(), paths[2].as_str()],
        "newest first"
    );
    for old in &paths[..2] {
        assert!(
            h.stores.savepoints.read(old).await.is_err(),
            "{old} retired"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retention_by_age_keeps_at_least_the_newest_savepoint() {
    let h = started_with(spec_with_savepoints(
        SavepointPolicy {
            max_age: Some(Duration::from_secs(60)),
            ..SavepointPolicy::default()
        },
        policy(),
    ))
    .await;
    let first = h.savepoint().await;
    let first = h.complete_savepoint(first).await;
    sleep_ms(120_000).await;
    let second = h.savepoint().await;
    let second = h.complete_savepoint(second).await;
    settle().await;
    let listed = h.coordinator.list_savepoints(JOB).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, second);
    assert!(h.stores.savepoints.read(&first).await.is_err());

    sleep_ms(3_600_000).await;
    let third = h.savepoint().await;
    h.decline(third.checkpoint_id.0, SRC0, "no");
    expect_failure(third.wait().await, FailureReason::Declined);
    settle().await;
    assert_eq!(
        h.coordinator.list_savepoints(JOB).await.unwrap().len(),
        1,
        "the newest completed one stays however old"
    );
}

#[tokio::test(start_paused = true)]
async fn periodic_savepoints_are_taken_while_running_and_skipped_otherwise() {
    let mut h = Harness::new();
    h.register(spec_with_savepoints(
        SavepointPolicy {
            interval: Some(Duration::from_secs(10)),
            ..SavepointPolicy::default()
        },
        policy(),
    ))
    .await;
    h.connect();
    h.register_all(TaskState::Running);
    sleep_ms(10_000).await;
    settle().await;
    let stats = h.stats();
    assert_eq!(stats.periodic_savepoints_skipped, 1);
    assert!(
        stats
            .last_skip_reason
            .as_deref()
            .unwrap()
            .contains("not RUNNING"),
        "{:?}",
        stats.last_skip_reason
    );
    assert_eq!(h.sent(), vec![]);

    h.set_status(JobStatus::Running).await;
    sleep_ms(10_000).await;
    settle().await;
    let sent = h.sent();
    let id = match sent.first() {
        Some(Sent::Trigger(_, id, _)) => *id,
        other => panic!("expected a periodic savepoint trigger, got {other:?}"),
    };
    ack_savepoint(&h, id);
    settle().await;
    let listed = h.coordinator.list_savepoints(JOB).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].trigger, SavepointTrigger::Periodic);
}

#[tokio::test(start_paused = true)]
async fn a_periodic_savepoint_is_skipped_while_the_previous_one_is_pending() {
    let h = started_with(spec_with_savepoints(
        SavepointPolicy {
            interval: Some(Duration::from_secs(10)),
            ..SavepointPolicy::default()
        },
        policy(),
    ))
    .await;
    sleep_ms(20_000).await;
    settle().await;
    let triggers = h
        .sent()
        .into_iter()
        .filter(|s| matches!(s, Sent::Trigger(..)))
        .count();
    assert_eq!(triggers, 2, "one savepoint (two source tasks)");
    let stats = h.stats();
    assert_eq!(stats.periodic_savepoints_skipped, 1);
    assert!(stats.last_skip_reason.unwrap().contains("still pending"));
}

#[tokio::test(start_paused = true)]
async fn disposal_is_limited_to_the_savepoint_roots_and_idempotent() {
    let h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    for outside in [
        "/etc/savepoint-job-1-1",
        "/savepoints/../etc",
        "relative/x",
        "/savepointsX/savepoint-job-1-1",
    ] {
        assert!(
            matches!(
                h.coordinator.dispose_savepoint(outside).await,
                Err(CoreError::InvalidArgument(_))
            ),
            "{outside} accepted"
        );
    }
    assert!(h.coordinator.dispose_savepoint(&path).await.unwrap());
    assert!(h.stores.savepoints.read(&path).await.is_err());
    assert!(!h.coordinator.dispose_savepoint(&path).await.unwrap());
    assert!(h.coordinator.list_savepoints(JOB).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn savepoint_targets_and_restore_paths_must_lie_under_a_root() {
    let h = Harness::started(policy()).await;
    for (target, field) in [
        ("/etc", "target_directory"),
        ("/savepoints/../etc", "target_directory"),
    ] {
        match h
            .coordinator
            .trigger_savepoint(JOB, Some(target.to_string()))
            .await
        {
            Err(CoreError::InvalidArgument(message)) => {
                assert!(message.starts_with(field), "{message}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("{target} accepted"),
        }
    }
    assert_eq!(h.sent(), vec![], "nothing was triggered");
    assert!(matches!(
        h.coordinator
            .restore_savepoint(JOB, "/etc/savepoint-job-1-1", false)
            .await,
        Err(CoreError::InvalidArgument(_))
    ));
    let mut h = h;
    let outside = JobSpec {
        savepoint_dir: Some("/var/elsewhere".to_string()),
        ..standard_spec("job-2", policy())
    };
    assert!(matches!(
        h.coordinator.register_job(outside).await,
        Err(CoreError::InvalidArgument(message)) if message.starts_with("savepoint_dir")
    ));
    h.register(JobSpec {
        savepoint_dir: Some("/savepoints/team-a".to_string()),
        ..standard_spec("job-3", policy())
    })
    .await;
}

/// Operation records whose writes wait for a permit (a slow fsync), or fail.
struct GatedOperations {
    memory: Arc<MemoryStore>,
    permits: tokio::sync::Semaphore,
    fail: bool,
}

#[async_trait::async_trait]
impl OperationStore for GatedOperations {
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()> {
        let _permit = self.permits.acquire().await.expect("gate open");
        if self.fail {
            return Err(StoreError::Unavailable(
                "injected write failure".to_string(),
            ));
        }
        OperationStore::save(&*self.memory, operation).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>> {
        OperationStore::load_all(&*self.memory, job).await
    }

    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()> {
        OperationStore::remove(&*self.memory, job, operation_id).await
    }
}

/// The standard job, running, on a memory store whose operation records go through `gated`.
async fn started_with_operations(gated: Arc<GatedOperations>) -> Harness {
    let memory = gated.memory.clone();
    let stores = Stores {
        operations: gated,
        ..Stores::all_in(memory.clone())
    };
    Harness::started_on(stores, Some(memory), policy()).await
}

/// Found by the crash test: a savepoint that completed and was indexed while its Pending
/// record was not yet durable made a repeated request after a kill take a second
/// savepoint. The tasks snapshot and the metadata is written while the record is;
/// completing and indexing wait for it.
#[tokio::test(start_paused = true)]
async fn a_savepoint_completes_and_is_indexed_only_once_its_pending_operation_is_durable() {
    let gated = Arc::new(GatedOperations {
        memory: Arc::new(MemoryStore::default()),
        permits: tokio::sync::Semaphore::new(0),
        fail: false,
    });
    let h = started_with_operations(gated.clone()).await;
    let started = request(&h, with_request_id("deploy-7")).await;
    assert_eq!(started.operation.outcome, OperationOutcome::Pending);
    assert_eq!(
        h.sent(),
        triggered(1),
        "the tasks snapshot while the record is written"
    );
    let path = started.operation.path.clone();
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    let detached = tokio::time::timeout(Duration::from_secs(60), started.recorded()).await;
    assert!(
        detached.is_err(),
        "a detached caller hears of it once it is recorded"
    );
    let mut result = Box::pin(started.handle.expect("a new savepoint").wait());
    let early = tokio::time::timeout(Duration::from_secs(60), &mut result).await;
    assert!(
        early.is_err(),
        "completed before its Pending record was durable"
    );
    assert!(
        h.stores
            .savepoints
            .list(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "nothing indexed yet"
    );
    assert!(h.sent().is_empty(), "no task is told of a completion");

    gated.permits.add_permits(1_000);
    let success = result.await.expect("complete once the record is durable");
    assert_eq!(success.path.as_deref(), Some(path.as_str()));
    assert_eq!(
        h.stores
            .savepoints
            .read(&path)
            .await
            .unwrap()
            .checkpoint_id
            .0,
        1
    );
    assert_eq!(h.sent(), notified(1));
    settle().await;
    let stored = OperationStore::load_all(&*gated.memory, &job_id(JOB))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        matches!(stored[0].outcome, OperationOutcome::Completed { .. }),
        "{stored:?}"
    );
    let listed = h.coordinator.list_savepoints(JOB).await.unwrap();
    assert_eq!(listed.len(), 1, "indexed after the record: {listed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_savepoint_whose_operation_cannot_be_recorded_fails_and_stores_nothing() {
    let gated = Arc::new(GatedOperations {
        memory: Arc::new(MemoryStore::default()),
        permits: tokio::sync::Semaphore::new(0),
        fail: true,
    });
    let h = started_with_operations(gated.clone()).await;
    let started = request(&h, with_request_id("deploy-8")).await;
    let path = started.operation.path.clone();
    assert_eq!(h.sent(), triggered(1));
    // Every task acks while the record is being written; the last one starts storing.
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    gated.permits.add_permits(1_000);
    let message = expect_failure(
        started.handle.expect("a new savepoint").wait().await,
        FailureReason::StoreIo,
    );
    assert!(
        message.contains("recording savepoint operation deploy-8 failed")
            && message.contains("injected write failure"),
        "{message}"
    );
    assert_eq!(h.sent(), aborted(1, FailureReason::StoreIo, &ALL));
    h.assert_failed_savepoint_left_nothing(&path).await;
}

/// The standard job, running, on the filesystem store under `dir`, with a savepoint
/// `request_id` triggered and its operation recorded (its tasks have not acked): the
/// stores, and the operation as a detached caller was told of it.
async fn recorded_on_filesystem(
    dir: &std::path::Path,
    request_id: &str,
) -> (Stores, SavepointOperation) {
    let target = dir.join("savepoints");
    std::fs::create_dir_all(&target).unwrap();
    let stores = Stores::filesystem(dir.join("data")).unwrap();
    let h = Harness::started_on(stores.clone(), None, policy()).await;
    let started = h
        .coordinator
        .savepoint(
            JOB,
            SavepointRequest {
                request_id: Some(request_id.to_string()),
                ..SavepointRequest::manual(Some(target.to_str().unwrap().to_string()))
            },
        )
        .await
        .unwrap();
    (stores, started.recorded().await.unwrap())
}

#[tokio::test]
async fn a_savepoint_cut_short_by_a_restart_leaves_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    // The server dies once the operation is recorded (what a detached caller was told).
    let (stores, operation) = recorded_on_filesystem(dir.path(), "cut-short").await;
    // A task already wrote its state into the savepoint directory when the server died.
    let path = std::path::PathBuf::from(&operation.path);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("state-11"), b"partial").unwrap();

    let restarted = Harness::on(stores, None);
    restarted.coordinator.recover().await.unwrap();
    let operation = restarted.coordinator.operation(JOB, "cut-short").unwrap();
    assert!(matches!(operation.outcome, OperationOutcome::Failed { .. }));
    assert!(
        !path.exists(),
        "the abandoned directory is removed at recovery"
    );
}

/// The standard job, running, on a memory store behind a fault switch.
async fn started_with_faults() -> (Harness, crate::store::faults::FaultSwitch, Arc<MemoryStore>) {
    let memory = Arc::new(MemoryStore::default());
    let (stores, faults) = crate::store::faults::FaultyStore::wrap(memory.clone());
    let h = Harness::started_on(stores, Some(memory.clone()), policy()).await;
    (h, faults, memory)
}

/// A savepoint is complete once its metadata is durable: its caller hears of it before
/// the index entry is written, and listing the job's savepoints waits for that entry, so
/// a caller that lists right after its savepoint finds it.
#[tokio::test(start_paused = true)]
async fn the_caller_hears_before_the_index_entry_and_listing_waits_for_it() {
    let (h, faults, _) = started_with_faults().await;
    faults.set(crate::store::faults::FaultPlan {
        interrupted_indexing: true,
        ..Default::default()
    });
    let started = request(&h, with_request_id("heard-first")).await;
    ack_savepoint(&h, 1);
    let finished = tokio::time::timeout(Duration::from_secs(60), started.finished())
        .await
        .expect("the caller is answered while the index entry is written")
        .unwrap();
    assert!(matches!(
        finished.outcome,
        OperationOutcome::Completed { .. }
    ));
    assert_eq!(
        h.stores
            .savepoints
            .read(&finished.path)
            .await
            .unwrap()
            .checkpoint_id,
        CheckpointId(1)
    );
    let listing =
        tokio::time::timeout(Duration::from_secs(60), h.coordinator.list_savepoints(JOB)).await;
    assert!(
        listing.is_err(),
        "listed before its index entry: {listing:?}"
    );
}

/// A pending operation whose savepoint's metadata is damaged at recovery may be one whose
/// caller heard of it: it fails with the reason, and its files stay.
#[tokio::test]
async fn a_pending_savepoint_with_damaged_metadata_fails_and_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (stores, operation) = recorded_on_filesystem(dir.path(), "garbled").await;
    let metadata = std::path::Path::new(&operation.path).join("_metadata");
    std::fs::create_dir_all(metadata.parent().unwrap()).unwrap();
    std::fs::write(&metadata, b"SPCM but not a record").unwrap();

    let restarted = Harness::on(stores, None);
    restarted.coordinator.recover().await.unwrap();
    let operation = restarted.coordinator.operation(JOB, "garbled").unwrap();
    match operation.outcome {
        OperationOutcome::Failed { failure, .. } => {
            assert!(failure.message.contains("damaged"), "{}", failure.message)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(metadata.is_file(), "nothing is deleted");
    assert!(
        restarted
            .coordinator
            .list_savepoints(JOB)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The index refuses a completed savepoint's entry: its caller still hears of it, its
/// operation stays Pending on record, and once the index takes writes again the
/// savepoint is indexed and its operation recorded as completed, without a restart.
#[tokio::test(start_paused = true)]
async fn a_savepoint_the_index_refused_is_indexed_once_it_takes_writes_again() {
    let (h, faults, memory) = started_with_faults().await;
    faults.set(crate::store::faults::FaultPlan {
        failing_indexing: true,
        ..Default::default()
    });
    let started = request(&h, with_request_id("refused")).await;
    ack_savepoint(&h, 1);
    let finished = started.finished().await.unwrap();
    assert!(matches!(
        finished.outcome,
        OperationOutcome::Completed { .. }
    ));
    assert!(h.coordinator.list_savepoints(JOB).await.unwrap().is_empty());
    let on_record = || async {
        OperationStore::load_all(&*memory, &job_id(JOB))
            .await
            .unwrap()
            .remove(0)
            .outcome
    };
    assert_eq!(on_record().await, OperationOutcome::Pending);

    faults.clear();
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    let listed = h.coordinator.list_savepoints(JOB).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].path, finished.path);
    assert!(matches!(
        on_record().await,
        OperationOutcome::Completed { .. }
    ));
}
