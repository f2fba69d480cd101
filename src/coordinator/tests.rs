//! Scenario tests of the coordinator core (our version of Flink's CheckpointCoordinatorTest
//! and SavepointCoordinatorTest).
//!
//! Every test drives the public [`Coordinator`] API under paused tokio time, watches what
//! the [`RecordingGateway`] was asked to send, and reads back what reached the store.
//! The standard job is `src` (parallelism 2) -> `map` (2) -> `sink` (1), triggered at
//! `src`; every vertex is awaited and committed.

use super::clock::TokioClock;
use super::gateway::{RecordingGateway, TaskMessage};
use super::id_counter::SharedIdCounter;
use super::model::{
    AttemptId, CheckpointId, CheckpointPolicy, CompletedSnapshot, FailureReason, JobId, JobSpec,
    JobStatus, KeyGroupRange, PostSnapshotAction, SavepointTrigger, SnapshotKind, StateData,
    StateHandle, SubtaskRef, SubtaskState, TaskManagerId, TaskState, VertexSpec, VertexState,
};
use super::restore::SubtaskAssignment;
use super::stats::{JobStats, SnapshotStatus};
use super::{
    AckOutcome, Acknowledgement, Coordinator, CoordinatorConfig, CoreError, SnapshotHandle,
    SnapshotSuccess, TaskRegistration,
};
use crate::store::memory::MemoryStore;
use crate::store::{
    CompletedCheckpointStore, SavepointRecord, SavepointStore, StoreError, StoreResult, Stores,
    savepoint_dir_name,
};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const JOB: &str = "job-1";
/// Wall-clock time of the test's start (the clock follows paused tokio time from here).
const START_MS: u64 = 1_000_000;
const SAVEPOINT_DIR: &str = "/savepoints";

const SRC0: AttemptId = AttemptId(11);
const SRC1: AttemptId = AttemptId(12);
const MAP0: AttemptId = AttemptId(21);
const MAP1: AttemptId = AttemptId(22);
const SINK0: AttemptId = AttemptId(31);

/// The subtasks of the standard job: (vertex, subtask index, attempt, task manager).
const TASKS: [(&str, u32, AttemptId, &str); 5] = [
    ("src", 0, SRC0, "tm-a"),
    ("src", 1, SRC1, "tm-b"),
    ("map", 0, MAP0, "tm-a"),
    ("map", 1, MAP1, "tm-b"),
    ("sink", 0, SINK0, "tm-a"),
];
const ALL: [AttemptId; 5] = [SRC0, SRC1, MAP0, MAP1, SINK0];

fn job_id(job: &str) -> JobId {
    JobId::new(job)
}

fn tm(name: &str) -> TaskManagerId {
    TaskManagerId::new(name)
}

fn tm_of(attempt: AttemptId) -> &'static str {
    TASKS
        .iter()
        .find(|t| t.2 == attempt)
        .map(|t| t.3)
        .expect("a standard attempt")
}

fn spec(job: &str, vertices: &[(&str, u32)], policy: CheckpointPolicy) -> JobSpec {
    JobSpec {
        job_id: job_id(job),
        vertices: vertices
            .iter()
            .map(|(id, parallelism)| VertexSpec {
                id: id.to_string(),
                parallelism: *parallelism,
                max_parallelism: 0,
            })
            .collect(),
        trigger_vertices: vec!["src".to_string()],
        wait_for_vertices: Vec::new(),
        commit_vertices: Vec::new(),
        policy,
        savepoint_dir: None,
        savepoint_policy: Default::default(),
    }
}

fn standard_spec(job: &str, policy: CheckpointPolicy) -> JobSpec {
    spec(job, &[("src", 2), ("map", 2), ("sink", 1)], policy)
}

fn policy() -> CheckpointPolicy {
    CheckpointPolicy::default()
}

fn periodic(interval_ms: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        interval: Some(Duration::from_millis(interval_ms)),
        ..CheckpointPolicy::default()
    }
}

fn with_timeout(timeout_ms: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        timeout: Duration::from_millis(timeout_ms),
        ..CheckpointPolicy::default()
    }
}

/// State that `attempt` reports for the snapshot whose location is `location`: one
/// reference under the location (so the coordinator owns it) with a size unique per attempt.
fn state(attempt: AttemptId, location: &str) -> Vec<StateHandle> {
    reference(
        &format!("op-{attempt}"),
        &format!("{location}/state-{attempt}"),
        100 + attempt.0,
    )
}

/// Total size of `state` over all five standard attempts.
const STATE_SIZE: u64 = 5 * 100 + 11 + 12 + 21 + 22 + 31;

/// One reference handle (state written by the task outside the ack).
fn reference(name: &str, uri: &str, size_bytes: u64) -> Vec<StateHandle> {
    vec![StateHandle {
        name: name.to_string(),
        data: StateData::Reference {
            uri: uri.to_string(),
            size_bytes,
        },
        key_groups: None,
    }]
}

fn inline(name: &str, bytes: &str) -> StateHandle {
    StateHandle {
        name: name.to_string(),
        data: StateData::Inline(Bytes::from(bytes.to_string())),
        key_groups: None,
    }
}

fn keyed(name: &str, bytes: &str, start: u32, end: u32) -> StateHandle {
    StateHandle {
        key_groups: Some(KeyGroupRange { start, end }),
        ..inline(name, bytes)
    }
}

/// The vertices of a completed standard-job snapshot in which each attempt acked `state_of`.
fn standard_vertices(state_of: impl Fn(AttemptId) -> Vec<StateHandle>) -> Vec<VertexState> {
    [("src", 2), ("map", 2), ("sink", 1)]
        .into_iter()
        .map(|(vertex, parallelism)| VertexState {
            vertex_id: vertex.to_string(),
            parallelism,
            max_parallelism: 128,
            subtasks: TASKS
                .iter()
                .filter(|t| t.0 == vertex)
                .map(|t| SubtaskState {
                    subtask_index: t.1,
                    handles: state_of(t.2),
                })
                .collect(),
        })
        .collect()
}

/// A message reduced to what the scenarios compare: (task manager, kind, id, attempt).
#[derive(Clone, PartialEq, Eq, Debug)]
enum Sent {
    Trigger(&'static str, u64, u64),
    Notify(&'static str, u64, u64),
    Abort(&'static str, u64, u64, FailureReason),
    /// JobStatusChanged: (task manager, status, failing).
    Status(&'static str, JobStatus, bool),
}

fn digest(messages: Vec<(TaskManagerId, TaskMessage)>) -> Vec<Sent> {
    messages
        .into_iter()
        .map(|(to, message)| {
            let to: &'static str = match &*to.0 {
                "tm-a" => "tm-a",
                "tm-b" => "tm-b",
                other => panic!("message to unexpected task manager {other}"),
            };
            match message {
                TaskMessage::TriggerCheckpoint {
                    checkpoint_id,
                    attempt_id,
                    ..
                } => Sent::Trigger(to, checkpoint_id.0, attempt_id.0),
                TaskMessage::NotifyCheckpointComplete {
                    checkpoint_id,
                    attempt_id,
                    ..
                } => Sent::Notify(to, checkpoint_id.0, attempt_id.0),
                TaskMessage::AbortCheckpoint {
                    checkpoint_id,
                    attempt_id,
                    failure,
                    ..
                } => Sent::Abort(to, checkpoint_id.0, attempt_id.0, failure.reason),
                TaskMessage::JobStatusChanged {
                    status, failing, ..
                } => Sent::Status(to, status, failing),
            }
        })
        .collect()
}

/// TriggerCheckpoint for both `src` subtasks.
fn triggered(id: u64) -> Vec<Sent> {
    vec![
        Sent::Trigger("tm-a", id, SRC0.0),
        Sent::Trigger("tm-b", id, SRC1.0),
    ]
}

/// NotifyCheckpointComplete for every subtask (all vertices commit).
fn notified(id: u64) -> Vec<Sent> {
    ALL.iter()
        .map(|a| Sent::Notify(tm_of(*a), id, a.0))
        .collect()
}

/// JobStatusChanged to both task managers of the (running) standard job.
fn marked_failing(failing: bool) -> Vec<Sent> {
    vec![
        Sent::Status("tm-a", JobStatus::Running, failing),
        Sent::Status("tm-b", JobStatus::Running, failing),
    ]
}

/// AbortCheckpoint for `attempts`, in that order.
fn aborted(id: u64, reason: FailureReason, attempts: &[AttemptId]) -> Vec<Sent> {
    attempts
        .iter()
        .map(|a| Sent::Abort(tm_of(*a), id, a.0, reason))
        .collect()
}

/// Lets spawned tasks (completions, discards, the scheduler) run without moving time.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Sleeps in paused time (auto-advancing through every timer due before the end).
async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn expect_failure(result: super::SnapshotResult, reason: FailureReason) -> String {
    match result {
        Err(failure) => {
            assert_eq!(failure.reason, reason, "unexpected failure: {failure}");
            failure.message
        }
        Ok(success) => panic!("expected {reason:?}, the snapshot succeeded: {success:?}"),
    }
}

fn expect_refused(result: Result<SnapshotHandle, CoreError>, reason: FailureReason) -> String {
    match result {
        Err(CoreError::TriggerRefused { failure, .. }) => {
            assert_eq!(failure.reason, reason, "unexpected refusal: {failure}");
            failure.message
        }
        Err(other) => panic!("expected a refusal with {reason:?}, got {other}"),
        Ok(handle) => panic!(
            "expected a refusal with {reason:?}, snapshot {} was triggered",
            handle.checkpoint_id
        ),
    }
}

/// A coordinator on an in-memory store, the recording gateway, and the standard job.
struct Harness {
    coordinator: Coordinator,
    gateway: Arc<RecordingGateway>,
    memory: Option<Arc<MemoryStore>>,
    stores: Stores,
    token: u64,
    generations: Vec<(TaskManagerId, u64)>,
}

impl Harness {
    /// A coordinator on a fresh memory store, with no job yet.
    fn new() -> Harness {
        let memory = Arc::new(MemoryStore::default());
        Harness::on(Stores::all_in(memory.clone()), Some(memory))
    }

    fn on(stores: Stores, memory: Option<Arc<MemoryStore>>) -> Harness {
        let gateway = Arc::new(RecordingGateway::default());
        let config = CoordinatorConfig {
            default_savepoint_dir: SAVEPOINT_DIR.to_string(),
            // The filesystem scenarios write savepoints into temporary directories.
            extra_savepoint_roots: vec![std::env::temp_dir().to_string_lossy().into_owned()],
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::new(
            stores.clone(),
            gateway.clone(),
            Arc::new(TokioClock::starting_at(START_MS)),
            config,
        );
        Harness {
            coordinator,
            gateway,
            memory,
            stores,
            token: 0,
            generations: Vec::new(),
        }
    }

    /// The standard job with every task RUNNING and the job RUNNING.
    async fn started(policy: CheckpointPolicy) -> Harness {
        let memory = Arc::new(MemoryStore::default());
        Harness::started_on(Stores::all_in(memory.clone()), Some(memory), policy).await
    }

    /// [`Harness::started`] on `stores` (`memory` if they are backed by one).
    async fn started_on(
        stores: Stores,
        memory: Option<Arc<MemoryStore>>,
        policy: CheckpointPolicy,
    ) -> Harness {
        let mut h = Harness::on(stores, memory);
        h.register(standard_spec(JOB, policy)).await;
        h.connect();
        h.register_all(TaskState::Running);
        h.set_status(JobStatus::Running).await;
        h
    }

    fn memory(&self) -> &MemoryStore {
        self.memory.as_deref().expect("a memory store")
    }

    async fn register(&mut self, spec: JobSpec) {
        let token = self
            .coordinator
            .register_job(spec)
            .await
            .expect("job registered");
        if self.token == 0 {
            self.token = token;
        }
    }

    fn connect(&mut self) {
        for name in ["tm-a", "tm-b"] {
            let generation = self.coordinator.connect_task_manager(&tm(name));
            self.generations.push((tm(name), generation));
        }
    }

    fn generation(&self, name: &str) -> u64 {
        self.generations
            .iter()
            .rev()
            .find(|(t, _)| *t == tm(name))
            .map(|(_, g)| *g)
            .expect("connected")
    }

    fn register_task(&self, vertex: &str, index: u32, attempt: AttemptId, state: TaskState) {
        let host = TASKS
            .iter()
            .find(|t| t.0 == vertex && t.1 == index)
            .map(|t| t.3)
            .unwrap_or("tm-a");
        self.coordinator
            .register_task(
                &tm(host),
                &TaskRegistration {
                    job_id: JOB.to_string(),
                    vertex_id: vertex.to_string(),
                    subtask_index: index,
                    attempt_id: attempt,
                    state,
                },
            )
            .expect("task registered");
    }

    fn register_all(&self, state: TaskState) {
        for (vertex, index, attempt, _) in TASKS {
            self.register_task(vertex, index, attempt, state);
        }
    }

    /// Registers every standard subtask of `job` as RUNNING (attempt ids shifted by
    /// `offset`) and sets the job RUNNING.
    async fn run_other_job(&self, job: &str, offset: u64) {
        for (vertex, index, attempt, host) in TASKS {
            self.coordinator
                .register_task(
                    &tm(host),
                    &TaskRegistration {
                        job_id: job.to_string(),
                        vertex_id: vertex.to_string(),
                        subtask_index: index,
                        attempt_id: AttemptId(attempt.0 + offset),
                        state: TaskState::Running,
                    },
                )
                .expect("task registered");
        }
        self.coordinator
            .update_job_status(job, JobStatus::Running)
            .await
            .expect("status updated");
    }

    async fn set_status(&self, status: JobStatus) {
        self.coordinator
            .update_job_status(JOB, status)
            .await
            .expect("status updated");
    }

    /// Messages sent since the last call, reduced for comparison.
    fn sent(&self) -> Vec<Sent> {
        digest(self.gateway.take())
    }

    fn stats(&self) -> JobStats {
        self.coordinator.job_stats(JOB).expect("job stats")
    }

    fn location(&self, id: u64) -> String {
        self.stores
            .owned_state
            .checkpoint_location(&job_id(JOB), CheckpointId(id))
    }

    fn ack(&self, id: u64, attempt: AttemptId, handles: Vec<StateHandle>) -> AckOutcome {
        self.coordinator
            .acknowledge(
                JOB,
                Acknowledgement {
                    checkpoint_id: CheckpointId(id),
                    attempt_id: attempt,
                    handles,
                    fencing_token: self.token,
                },
            )
            .expect("ack accepted")
    }

    /// Acks snapshot `id` from every standard attempt (in TASKS order) with `state`
    /// under `location`.
    fn ack_all_at(&self, id: u64, location: &str) -> Vec<AckOutcome> {
        ALL.iter()
            .map(|a| self.ack(id, *a, state(*a, location)))
            .collect()
    }

    /// Acks checkpoint `id` from every attempt, with state under its own location.
    fn ack_all(&self, id: u64) -> Vec<AckOutcome> {
        self.ack_all_at(id, &self.location(id))
    }

    async fn checkpoint(&self) -> SnapshotHandle {
        self.coordinator
            .trigger_checkpoint(JOB)
            .await
            .expect("checkpoint triggered")
    }

    async fn savepoint(&self) -> SnapshotHandle {
        self.coordinator
            .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.to_string()))
            .await
            .expect("savepoint triggered")
    }

    fn decline(&self, id: u64, attempt: AttemptId, reason: &str) -> bool {
        self.coordinator
            .decline(JOB, CheckpointId(id), attempt, reason, self.token)
            .expect("decline accepted")
    }

    /// Completes savepoint `handle` with `state` from every attempt; returns its path.
    async fn complete_savepoint(&self, handle: SnapshotHandle) -> String {
        let id = handle.checkpoint_id.0;
        let path = handle.path.clone().expect("a savepoint path");
        let outcomes = self.ack_all_at(id, &path);
        assert_eq!(outcomes.last(), Some(&AckOutcome::Completing));
        let success = handle.wait().await.expect("savepoint completes");
        assert_eq!(success.path.as_deref(), Some(path.as_str()));
        path
    }

    fn discarded(&self) -> Vec<String> {
        self.memory().discarded_uris()
    }

    /// A failed savepoint at `path` left nothing: no metadata, no index entry, and the
    /// state every task acked (by [`state`]) is deleted.
    async fn assert_failed_savepoint_left_nothing(&self, path: &str) {
        assert!(self.stores.savepoints.read(path).await.is_err());
        assert!(
            self.stores
                .savepoints
                .list(&job_id(JOB))
                .await
                .unwrap()
                .is_empty()
        );
        settle().await;
        let mut discarded = self.discarded();
        discarded.sort();
        let mut expected: Vec<String> = ALL.iter().map(|a| format!("{path}/state-{a}")).collect();
        expected.sort();
        assert_eq!(discarded, expected, "the acked state is cleaned up");
    }
}

fn stored_checkpoint_ids(snapshots: &[CompletedSnapshot]) -> Vec<u64> {
    snapshots.iter().map(|s| s.checkpoint_id.0).collect()
}

fn expected_savepoint_path(id: u64) -> String {
    format!(
        "{SAVEPOINT_DIR}/{}",
        savepoint_dir_name(&job_id(JOB), CheckpointId(id))
    )
}

// ---------------------------------------------------------------------------------------
// Trigger pre-checks
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn checkpoint_is_refused_while_a_trigger_task_is_not_running_and_consumes_no_id() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    for (vertex, index, attempt, _) in TASKS {
        let state = if attempt == SRC1 {
            TaskState::Deploying
        } else {
            TaskState::Running
        };
        h.register_task(vertex, index, attempt, state);
    }
    h.set_status(JobStatus::Running).await;

    let message = expect_refused(
        h.coordinator.trigger_checkpoint(JOB).await,
        FailureReason::TasksNotRunning,
    );
    assert!(message.contains("src#1"), "{message}");
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.stats().triggered, 0);

    h.coordinator
        .update_task_state(JOB, SRC1, TaskState::Running)
        .unwrap();
    let handle = h.checkpoint().await;
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
    assert_eq!(h.sent(), triggered(1));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_is_refused_while_a_trigger_task_is_finished_and_consumes_no_id() {
    let h = Harness::started(policy()).await;
    h.coordinator
        .update_task_state(JOB, SRC0, TaskState::Finished)
        .unwrap();

    let message = expect_refused(
        h.coordinator.trigger_checkpoint(JOB).await,
        FailureReason::TasksNotRunning,
    );
    assert!(message.contains("src#0"), "{message}");
    let message = expect_refused(
        h.coordinator
            .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.into()))
            .await,
        FailureReason::TasksNotRunning,
    );
    assert!(message.contains("src#0"), "{message}");
    assert_eq!(h.sent(), vec![]);

    // A new attempt of the finished subtask makes triggering possible again.
    h.register_task("src", 0, AttemptId(111), TaskState::Running);
    let handle = h.checkpoint().await;
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
    assert_eq!(
        h.sent(),
        vec![
            Sent::Trigger("tm-a", 1, 111),
            Sent::Trigger("tm-b", 1, SRC1.0)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn checkpoint_is_refused_while_a_wait_for_task_has_no_attempt_and_consumes_no_id() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    for (vertex, index, attempt, _) in TASKS {
        if attempt != SINK0 {
            h.register_task(vertex, index, attempt, TaskState::Running);
        }
    }
    h.set_status(JobStatus::Running).await;

    let message = expect_refused(
        h.coordinator.trigger_checkpoint(JOB).await,
        FailureReason::TasksNotRunning,
    );
    assert!(message.contains("sink#0"), "{message}");
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.stats().triggered, 0);

    h.register_task("sink", 0, SINK0, TaskState::Deploying);
    let handle = h.checkpoint().await;
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_is_refused_while_the_job_is_not_running() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    h.register_all(TaskState::Running);

    expect_refused(
        h.coordinator.trigger_checkpoint(JOB).await,
        FailureReason::JobNotRunning,
    );
    h.set_status(JobStatus::Running).await;
    assert_eq!(h.checkpoint().await.checkpoint_id, CheckpointId(1));
}

// ---------------------------------------------------------------------------------------
// Trigger, acknowledge, confirm
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn checkpoint_triggers_sources_and_confirms_to_every_task_after_the_last_ack() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
    assert_eq!(handle.path, None);

    let location = h.location(1);
    let trigger = |attempt: AttemptId| TaskMessage::TriggerCheckpoint {
        job_id: job_id(JOB),
        checkpoint_id: CheckpointId(1),
        attempt_id: attempt,
        timestamp_ms: START_MS,
        kind: SnapshotKind::Checkpoint,
        location: location.clone(),
        action: PostSnapshotAction::None,
        full: false,
        fencing_token: h.token,
    };
    assert_eq!(
        h.gateway.take(),
        vec![(tm("tm-a"), trigger(SRC0)), (tm("tm-b"), trigger(SRC1))]
    );

    sleep_ms(7).await;
    for attempt in [SRC0, SRC1, MAP0, MAP1] {
        assert_eq!(
            h.ack(1, attempt, state(attempt, &location)),
            AckOutcome::Recorded
        );
    }
    assert_eq!(h.sent(), vec![], "nothing is confirmed before the last ack");
    let in_progress = h.stats();
    assert_eq!(in_progress.in_progress, 1);
    assert_eq!(in_progress.history[0].status, SnapshotStatus::InProgress);
    assert_eq!(in_progress.history[0].acknowledged_subtasks, 4);
    assert_eq!(in_progress.history[0].total_subtasks, 5);

    sleep_ms(3).await;
    assert_eq!(
        h.ack(1, SINK0, state(SINK0, &location)),
        AckOutcome::Completing
    );
    let success = handle.wait().await.expect("checkpoint completes");
    assert_eq!(
        success,
        SnapshotSuccess {
            checkpoint_id: CheckpointId(1),
            kind: SnapshotKind::Checkpoint,
            path: None,
            state_size_bytes: STATE_SIZE,
        }
    );

    let notify = |attempt: AttemptId| {
        (
            tm(tm_of(attempt)),
            TaskMessage::NotifyCheckpointComplete {
                job_id: job_id(JOB),
                checkpoint_id: CheckpointId(1),
                attempt_id: attempt,
                fencing_token: h.token,
            },
        )
    };
    assert_eq!(
        h.gateway.take(),
        ALL.iter().map(|a| notify(*a)).collect::<Vec<_>>()
    );

    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(
        stored,
        vec![CompletedSnapshot {
            job_id: job_id(JOB),
            checkpoint_id: CheckpointId(1),
            kind: SnapshotKind::Checkpoint,
            trigger_timestamp_ms: START_MS,
            completion_timestamp_ms: START_MS + 10,
            vertices: standard_vertices(|a| state(a, &location)),
            claimed_path: None,
        }]
    );

    let stats = h.stats();
    assert_eq!(
        (
            stats.triggered,
            stats.in_progress,
            stats.completed,
            stats.failed
        ),
        (1, 0, 1, 0)
    );
    let latest = stats.latest_completed.expect("latest completed");
    assert_eq!(latest.checkpoint_id, CheckpointId(1));
    assert_eq!(latest.status, SnapshotStatus::Completed);
    assert_eq!(latest.trigger_timestamp_ms, START_MS);
    assert_eq!(latest.latest_ack_timestamp_ms, START_MS + 10);
    assert_eq!(latest.completion_timestamp_ms, START_MS + 10);
    assert_eq!(latest.duration_ms, 10);
    assert_eq!(latest.acknowledged_subtasks, 5);
    assert_eq!(latest.state_size_bytes, STATE_SIZE);
    let latencies: Vec<(u32, u64, u64)> = latest
        .subtasks
        .iter()
        .map(|s| (s.task_index, s.ack_latency_ms, s.state_size_bytes))
        .collect();
    assert_eq!(
        latencies,
        vec![
            (0, 7, 111),
            (1, 7, 112),
            (2, 7, 121),
            (3, 7, 122),
            (4, 10, 131)
        ]
    );
    assert_eq!(stats.duration_ms.max, 10);
    assert_eq!(stats.state_size_bytes.max, STATE_SIZE);
    assert_eq!(
        stats.subtask_names[4],
        SubtaskRef {
            vertex_id: "sink".into(),
            subtask_index: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_checkpoints_complete_in_order() {
    let h = Harness::started(policy()).await;
    let first = h.checkpoint().await;
    let second = h.checkpoint().await;
    assert_eq!(
        (first.checkpoint_id, second.checkpoint_id),
        (CheckpointId(1), CheckpointId(2))
    );
    assert_eq!(h.sent(), [triggered(1), triggered(2)].concat());

    h.ack(2, SRC0, state(SRC0, &h.location(2)));
    assert_eq!(
        h.ack_all(1),
        vec![
            AckOutcome::Recorded,
            AckOutcome::Recorded,
            AckOutcome::Recorded,
            AckOutcome::Recorded,
            AckOutcome::Completing
        ]
    );
    assert_eq!(first.wait().await.unwrap().checkpoint_id, CheckpointId(1));
    assert_eq!(h.sent(), notified(1));
    assert_eq!(h.stats().in_progress, 1, "checkpoint 2 is still pending");

    let outcomes = h.ack_all(2);
    assert_eq!(outcomes[0], AckOutcome::Duplicate);
    assert_eq!(outcomes[4], AckOutcome::Completing);
    assert_eq!(second.wait().await.unwrap().checkpoint_id, CheckpointId(2));
    assert_eq!(h.sent(), notified(2));

    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(stored_checkpoint_ids(&stored), vec![2], "retained = 1");
    let stats = h.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (2, 0, 0)
    );
    assert_eq!(
        stats.latest_completed.unwrap().checkpoint_id,
        CheckpointId(2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_checkpoint_completing_first_subsumes_the_earlier_one() {
    let h = Harness::started(policy()).await;
    let first = h.checkpoint().await;
    let second = h.checkpoint().await;
    h.sent();

    let early_state = state(SRC0, &h.location(1));
    assert_eq!(h.ack(1, SRC0, early_state.clone()), AckOutcome::Recorded);
    assert_eq!(h.ack_all(2)[4], AckOutcome::Completing);
    assert_eq!(second.wait().await.unwrap().checkpoint_id, CheckpointId(2));

    let message = expect_failure(first.wait().await, FailureReason::Subsumed);
    assert!(message.contains('2'), "{message}");
    assert_eq!(
        h.sent(),
        [aborted(1, FailureReason::Subsumed, &ALL), notified(2)].concat()
    );
    settle().await;
    assert!(
        h.discarded()
            .contains(&format!("{}/state-{SRC0}", h.location(1))),
        "the subsumed checkpoint's acked state is discarded: {:?}",
        h.discarded()
    );
    assert!(
        !h.discarded()
            .iter()
            .any(|uri| uri.starts_with(&h.location(2))),
        "the completed checkpoint's state stays"
    );

    // The subsumed checkpoint's remaining acks are late and change nothing.
    assert_eq!(
        h.ack(1, SRC1, state(SRC1, &h.location(1))),
        AckOutcome::Late
    );
    let stats = h.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (1, 1, 0)
    );
    assert_eq!(
        stats.consecutive_failures, 0,
        "subsumption is not a failure"
    );
    assert_eq!(
        stats.latest_failed.unwrap().failure.unwrap().reason,
        FailureReason::Subsumed
    );
    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(stored_checkpoint_ids(&stored), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_completing_checkpoint_never_subsumes_a_pending_savepoint() {
    let h = Harness::started(policy()).await;
    let savepoint = h.savepoint().await;
    let checkpoint = h.checkpoint().await;
    assert_eq!(
        (savepoint.checkpoint_id, checkpoint.checkpoint_id),
        (CheckpointId(1), CheckpointId(2))
    );
    h.ack_all(2);
    checkpoint.wait().await.unwrap();
    assert_eq!(h.stats().in_progress, 1, "the savepoint is still pending");
    let path = h.complete_savepoint(savepoint).await;
    assert_eq!(path, expected_savepoint_path(1));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_expires_after_its_timeout_and_discards_the_partial_state() {
    let h = Harness::started(with_timeout(1_000)).await;
    let handle = h.checkpoint().await;
    h.sent();
    let location = h.location(1);
    h.ack(1, SRC0, state(SRC0, &location));
    h.ack(1, MAP0, state(MAP0, &location));

    sleep_ms(999).await;
    assert_eq!(h.stats().in_progress, 1, "not expired before the timeout");
    assert_eq!(h.sent(), vec![]);

    sleep_ms(2).await;
    let message = expect_failure(handle.wait().await, FailureReason::Expired);
    assert!(message.contains("2 of 5"), "{message}");
    let mut expected = aborted(1, FailureReason::Expired, &ALL);
    expected.extend(marked_failing(true));
    assert_eq!(h.sent(), expected, "no failure is tolerated by default");
    settle().await;
    let mut discarded = h.discarded();
    discarded.sort();
    assert_eq!(
        discarded,
        vec![
            format!("{location}/state-{SRC0}"),
            format!("{location}/state-{MAP0}")
        ]
    );

    // A task that acks after the expiry is late: counted, and its state discarded.
    assert_eq!(h.ack(1, MAP1, state(MAP1, &location)), AckOutcome::Late);
    settle().await;
    assert!(h.discarded().contains(&format!("{location}/state-{MAP1}")));

    let stats = h.stats();
    assert_eq!(
        (stats.failed, stats.completed, stats.in_progress),
        (1, 0, 0)
    );
    assert_eq!(stats.discarded_acks, 1);
    let failed = stats.latest_failed.unwrap();
    assert_eq!(failed.checkpoint_id, CheckpointId(1));
    assert_eq!(failed.status, SnapshotStatus::Failed);
    assert_eq!(failed.acknowledged_subtasks, 2);
    assert_eq!(failed.failure.unwrap().reason, FailureReason::Expired);
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------
// Harmless messages
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn ack_for_an_unknown_job_is_rejected_and_touches_nothing() {
    let h = Harness::started(policy()).await;
    let _pending = h.checkpoint().await;
    let before = h.stats();
    let result = h.coordinator.acknowledge(
        "no-such-job",
        Acknowledgement {
            checkpoint_id: CheckpointId(1),
            attempt_id: SRC0,
            handles: state(SRC0, &h.location(1)),
            fencing_token: 0,
        },
    );
    assert!(
        matches!(&result, Err(CoreError::JobNotFound(job)) if job == "no-such-job"),
        "{result:?}"
    );
    let result = h
        .coordinator
        .decline("no-such-job", CheckpointId(1), SRC0, "no", 0);
    assert!(
        matches!(result, Err(CoreError::JobNotFound(_))),
        "{result:?}"
    );
    assert_eq!(h.stats(), before);
    settle().await;
    assert_eq!(h.discarded(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn ack_for_an_unknown_checkpoint_is_counted_and_changes_nothing() {
    let h = Harness::started(policy()).await;
    let _pending = h.checkpoint().await;
    assert_eq!(
        h.ack(99, SRC0, state(SRC0, &h.location(99))),
        AckOutcome::UnknownCheckpoint
    );
    assert_eq!(h.ack(0, SRC0, Vec::new()), AckOutcome::UnknownCheckpoint);
    let stats = h.stats();
    assert_eq!(stats.discarded_acks, 2);
    assert_eq!(stats.in_progress, 1);
    assert_eq!(stats.history[0].acknowledged_subtasks, 0);
    assert!(!h.decline(99, SRC0, "unknown"));
    assert_eq!(h.stats().in_progress, 1);
}

#[tokio::test(start_paused = true)]
async fn ack_from_an_attempt_that_is_not_awaited_is_discarded_and_counted() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    let location = h.location(1);
    let stranger = AttemptId(999);
    assert_eq!(
        h.ack(1, stranger, state(stranger, &location)),
        AckOutcome::NotAwaited
    );
    settle().await;
    assert_eq!(h.discarded(), vec![format!("{location}/state-{stranger}")]);
    let stats = h.stats();
    assert_eq!(stats.discarded_acks, 1);
    assert_eq!(stats.history[0].acknowledged_subtasks, 0);
    assert!(
        !h.decline(1, stranger, "not mine"),
        "a stranger cannot decline"
    );

    // Still waits for exactly the five real attempts.
    assert_eq!(h.ack_all(1)[4], AckOutcome::Completing);
    assert_eq!(handle.wait().await.unwrap().state_size_bytes, STATE_SIZE);
}

#[tokio::test(start_paused = true)]
async fn ack_from_a_replaced_attempt_is_not_awaited_by_later_snapshots() {
    let h = Harness::started(policy()).await;
    let first = h.checkpoint().await;
    h.sent();
    // map#1 restarts: the pending checkpoint waiting for it fails, later ones await the new attempt.
    h.register_task("map", 1, AttemptId(222), TaskState::Running);
    expect_failure(first.wait().await, FailureReason::TaskFailure);
    let second = h.checkpoint().await;
    let location = h.location(2);
    assert_eq!(
        h.ack(2, MAP1, state(MAP1, &location)),
        AckOutcome::NotAwaited
    );
    for attempt in [SRC0, SRC1, MAP0, SINK0] {
        h.ack(2, attempt, state(attempt, &location));
    }
    assert_eq!(h.ack(2, AttemptId(222), Vec::new()), AckOutcome::Completing);
    second.wait().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn late_ack_after_completion_is_counted_and_keeps_the_completed_state() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    h.ack_all(1);
    handle.wait().await.unwrap();
    let stored_before = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    h.sent();

    // A task re-sends its ack (e.g. a retried RPC) after the checkpoint completed: the
    // handles are the ones retained checkpoint 1 references, so nothing may be deleted.
    let location = h.location(1);
    assert_eq!(h.ack(1, SRC0, state(SRC0, &location)), AckOutcome::Late);
    settle().await;
    assert_eq!(h.discarded(), Vec::<String>::new());
    assert_eq!(h.sent(), vec![]);
    let stats = h.stats();
    assert_eq!(stats.discarded_acks, 1);
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (1, 0, 0)
    );
    assert_eq!(
        h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap(),
        stored_before
    );
}

#[tokio::test(start_paused = true)]
async fn late_ack_after_completion_discards_state_the_snapshot_does_not_reference() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    h.ack_all(1);
    handle.wait().await.unwrap();

    let location = h.location(1);
    let late = reference("late", &format!("{location}/late-state"), 5);
    assert_eq!(h.ack(1, SRC0, late), AckOutcome::Late);
    settle().await;
    assert_eq!(h.discarded(), vec![format!("{location}/late-state")]);
}

#[tokio::test(start_paused = true)]
async fn late_ack_for_a_forgotten_checkpoint_discards_only_unreferenced_owned_state() {
    let h = Harness::started(policy()).await;
    let first = h.checkpoint().await;
    h.ack_all(1);
    first.wait().await.unwrap();
    // 257 failed checkpoints push 1 and 2 out of the remembered locations.
    for id in 2..=258 {
        let handle = h.checkpoint().await;
        assert_eq!(handle.checkpoint_id, CheckpointId(id));
        assert!(h.decline(id, SRC0, "busy"));
        expect_failure(handle.wait().await, FailureReason::Declined);
    }
    settle().await;
    assert_eq!(h.discarded(), Vec::<String>::new());

    let failed = h.location(2);
    let mut handles = state(SRC1, &failed);
    handles.extend(reference("elsewhere", "/elsewhere/state", 3));
    handles.push(inline("small", "bytes"));
    assert_eq!(h.ack(2, SRC1, handles), AckOutcome::Late);
    // Checkpoint 1 is retained: the state it references stays, a stray file goes.
    let retained = h.location(1);
    let mut handles = state(SRC0, &retained);
    handles.extend(reference("stray", &format!("{retained}/stray"), 1));
    assert_eq!(h.ack(1, SRC0, handles), AckOutcome::Late);
    settle().await;
    assert_eq!(
        h.discarded(),
        vec![
            format!("{failed}/state-{SRC1}"),
            format!("{retained}/stray")
        ]
    );
    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(stored_checkpoint_ids(&stored), vec![1]);
    assert_eq!(
        stored[0].vertices,
        standard_vertices(|a| state(a, &retained))
    );
    assert_eq!(h.stats().discarded_acks, 2);
}

#[tokio::test(start_paused = true)]
async fn ack_for_a_checkpoint_of_the_previous_run_discards_its_owned_state_after_a_restart() {
    let memory = Arc::new(MemoryStore::default());
    let mut first = Harness::on(Stores::all_in(memory.clone()), Some(memory.clone()));
    first.register(standard_spec(JOB, policy())).await;
    first.connect();
    first.register_all(TaskState::Running);
    first.set_status(JobStatus::Running).await;
    let retained = first.checkpoint().await;
    first.ack_all(1);
    retained.wait().await.unwrap();
    let _in_flight = first.checkpoint().await;
    assert_eq!(
        first.ack(2, SRC0, state(SRC0, &first.location(2))),
        AckOutcome::Recorded
    );
    // The server dies with checkpoint 2 pending: nothing of it is persisted.
    drop(first);

    let second = Harness::on(Stores::all_in(memory.clone()), Some(memory));
    assert_eq!(second.coordinator.recover().await.unwrap(), 1);
    // 2 is above every id the new run knows of, but was issued by the previous run.
    let location = second.location(2);
    let mut handles = state(SRC1, &location);
    handles.extend(reference("elsewhere", "/elsewhere/state", 3));
    assert_eq!(second.ack(2, SRC1, handles), AckOutcome::UnknownCheckpoint);
    // The retained checkpoint's own state is not touched by a repeated ack.
    assert_eq!(
        second.ack(1, SRC0, state(SRC0, &second.location(1))),
        AckOutcome::Late
    );
    settle().await;
    assert_eq!(second.discarded(), vec![format!("{location}/state-{SRC1}")]);
    assert_eq!(second.stats().discarded_acks, 2);
    let restored = second
        .coordinator
        .restore_latest_checkpoint(JOB, false)
        .await
        .expect("the retained checkpoint is restorable");
    assert_eq!(restored.checkpoint_id, CheckpointId(1));
    assert_eq!(
        restored.mapping.assignments[0].handles,
        state(SRC0, &second.location(1))
    );
}

#[tokio::test(start_paused = true)]
async fn ack_for_an_id_not_issued_yet_leaves_that_location_alone() {
    let h = Harness::started(policy()).await;
    // A confused task acks checkpoint 1 before it exists; the real one writes the same file.
    let location = h.location(1);
    assert_eq!(
        h.ack(1, SRC0, state(SRC0, &location)),
        AckOutcome::UnknownCheckpoint
    );
    settle().await;
    let handle = h.checkpoint().await;
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
    assert_eq!(h.ack_all(1)[4], AckOutcome::Completing);
    handle.wait().await.unwrap();
    settle().await;
    assert_eq!(h.discarded(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn duplicate_ack_changes_nothing() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    let location = h.location(1);
    assert_eq!(h.ack(1, SRC0, state(SRC0, &location)), AckOutcome::Recorded);
    let before = h.stats();
    let other = reference("other", &format!("{location}/other"), 999);
    assert_eq!(h.ack(1, SRC0, other), AckOutcome::Duplicate);
    assert_eq!(h.stats(), before);
    assert_eq!(before.history[0].acknowledged_subtasks, 1);
    settle().await;
    assert_eq!(h.discarded(), Vec::<String>::new());

    for attempt in [SRC1, MAP0, MAP1, SINK0] {
        h.ack(1, attempt, state(attempt, &location));
    }
    assert_eq!(handle.wait().await.unwrap().state_size_bytes, STATE_SIZE);
    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(
        stored[0].vertices,
        standard_vertices(|a| state(a, &location)),
        "the first ack's state is the one kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_fencing_token_is_rejected() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    let stale = h.token.wrapping_add(1).max(1);
    let result = h.coordinator.acknowledge(
        JOB,
        Acknowledgement {
            checkpoint_id: CheckpointId(1),
            attempt_id: SRC0,
            handles: Vec::new(),
            fencing_token: stale,
        },
    );
    match result {
        Err(CoreError::StaleFencingToken { got, expected, .. }) => {
            assert_eq!((got, expected), (stale, h.token));
        }
        other => panic!("expected a stale token error, got {other:?}"),
    }
    let result = h
        .coordinator
        .decline(JOB, CheckpointId(1), SRC0, "stale", stale);
    assert!(
        matches!(result, Err(CoreError::StaleFencingToken { .. })),
        "{result:?}"
    );
    assert_eq!(h.coordinator.fencing_token(JOB).unwrap(), h.token);
    let stats = h.stats();
    assert_eq!(stats.in_progress, 1);
    assert_eq!(stats.history[0].acknowledged_subtasks, 0);
    assert_eq!(stats.discarded_acks, 0);

    // Token 0 skips the check; the current token is accepted.
    assert_eq!(
        h.coordinator
            .acknowledge(
                JOB,
                Acknowledgement {
                    checkpoint_id: CheckpointId(1),
                    attempt_id: SRC0,
                    handles: Vec::new(),
                    fencing_token: 0,
                },
            )
            .unwrap(),
        AckOutcome::Recorded
    );
    for attempt in [SRC1, MAP0, MAP1, SINK0] {
        h.ack(1, attempt, Vec::new());
    }
    handle.wait().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Periodic scheduling
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn periodic_checkpoints_ascend_and_follow_the_job_status() {
    let h = Harness::started(CheckpointPolicy {
        max_concurrent: 100,
        ..periodic(100)
    })
    .await;
    sleep_ms(350).await;
    assert_eq!(
        h.sent(),
        [triggered(1), triggered(2), triggered(3)].concat()
    );
    let timestamps: Vec<u64> = h
        .stats()
        .history
        .iter()
        .map(|s| s.trigger_timestamp_ms - START_MS)
        .collect();
    assert_eq!(timestamps, vec![300, 200, 100], "newest first");

    h.set_status(JobStatus::Restarting).await;
    assert_eq!(
        h.sent(),
        [
            aborted(1, FailureReason::JobNotRunning, &ALL),
            aborted(2, FailureReason::JobNotRunning, &ALL),
            aborted(3, FailureReason::JobNotRunning, &ALL)
        ]
        .concat()
    );
    sleep_ms(1_000).await;
    assert_eq!(h.sent(), vec![], "no checkpoint while not RUNNING");
    assert_eq!(h.stats().triggered, 3);

    h.set_status(JobStatus::Running).await;
    sleep_ms(99).await;
    assert_eq!(
        h.sent(),
        vec![],
        "the first checkpoint comes one interval after RUNNING"
    );
    sleep_ms(1).await;
    settle().await;
    assert_eq!(h.sent(), triggered(4));
    sleep_ms(100).await;
    settle().await;
    assert_eq!(h.sent(), triggered(5));
}

async fn pending_periodic_checkpoints_stay_at(max_concurrent: u32) {
    let h = Harness::started(CheckpointPolicy {
        max_concurrent,
        ..periodic(10)
    })
    .await;
    sleep_ms(1_000).await;
    let n = u64::from(max_concurrent);
    let expected: Vec<Sent> = (1..=n).flat_map(triggered).collect();
    assert_eq!(h.sent(), expected, "max_concurrent {max_concurrent}");
    let stats = h.stats();
    assert_eq!((stats.in_progress, stats.triggered), (n, n));

    // One completes: exactly one more is triggered at once, without waiting an interval.
    let before = tokio::time::Instant::now();
    h.ack_all(1);
    settle().await;
    assert_eq!(tokio::time::Instant::now(), before);
    assert_eq!(h.sent(), [notified(1), triggered(n + 1)].concat());
    assert_eq!(h.stats().in_progress, n);

    sleep_ms(1_000).await;
    assert_eq!(h.sent(), vec![], "still at the limit");
}

#[tokio::test(start_paused = true)]
async fn max_one_concurrent_checkpoint_is_pending_when_nobody_acks() {
    pending_periodic_checkpoints_stay_at(1).await;
}

#[tokio::test(start_paused = true)]
async fn max_two_concurrent_checkpoints_are_pending_when_nobody_acks() {
    pending_periodic_checkpoints_stay_at(2).await;
}

#[tokio::test(start_paused = true)]
async fn max_five_concurrent_checkpoints_are_pending_when_nobody_acks() {
    pending_periodic_checkpoints_stay_at(5).await;
}

#[tokio::test(start_paused = true)]
async fn min_pause_bounds_the_checkpoint_rate() {
    let h = Harness::started(CheckpointPolicy {
        min_pause: Duration::from_millis(100),
        max_concurrent: 10,
        ..periodic(10)
    })
    .await;
    // Tasks ack every checkpoint 1 ms after it is triggered, for one second.
    let mut acked = HashSet::new();
    for _ in 0..1_000 {
        sleep_ms(1).await;
        for message in h.sent() {
            if let Sent::Trigger(_, id, _) = message
                && acked.insert(id)
            {
                h.ack_all(id);
            }
        }
        settle().await;
    }
    let stats = h.stats();
    assert!(
        (9..=10).contains(&stats.completed),
        "{} checkpoints completed in 1 s with a 100 ms min pause",
        stats.completed
    );
    assert_eq!(stats.failed, 0);
    let mut finished: Vec<_> = stats
        .history
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed)
        .collect();
    finished.sort_by_key(|s| s.checkpoint_id);
    for pair in finished.windows(2) {
        assert!(
            pair[1].trigger_timestamp_ms >= pair[0].completion_timestamp_ms + 100,
            "checkpoint {} triggered {} ms after {} completed",
            pair[1].checkpoint_id,
            pair[1].trigger_timestamp_ms - pair[0].completion_timestamp_ms,
            pair[0].checkpoint_id
        );
    }
}

#[tokio::test(start_paused = true)]
async fn scheduler_started_while_tasks_are_created_triggers_nothing_until_they_run() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, periodic(50))).await;
    h.connect();
    h.register_all(TaskState::Created);
    h.set_status(JobStatus::Running).await;
    sleep_ms(500).await;
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.stats().triggered, 0);

    for attempt in ALL {
        h.coordinator
            .update_task_state(JOB, attempt, TaskState::Running)
            .unwrap();
    }
    sleep_ms(50).await;
    settle().await;
    assert_eq!(
        h.sent(),
        triggered(1),
        "the first id is 1: refusals used none"
    );
}

// ---------------------------------------------------------------------------------------
// Savepoints
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn savepoint_is_stored_under_the_target_directory_with_exactly_the_acked_state() {
    let h = Harness::started(CheckpointPolicy {
        retained: 0,
        ..policy()
    })
    .await;
    let handle = h.savepoint().await;
    let path = expected_savepoint_path(1);
    assert_eq!(handle.checkpoint_id, CheckpointId(1));
    assert_eq!(handle.path.as_deref(), Some(path.as_str()));
    let trigger = |attempt: AttemptId| TaskMessage::TriggerCheckpoint {
        job_id: job_id(JOB),
        checkpoint_id: CheckpointId(1),
        attempt_id: attempt,
        timestamp_ms: START_MS,
        kind: SnapshotKind::Savepoint,
        location: path.clone(),
        action: PostSnapshotAction::None,
        full: true,
        fencing_token: h.token,
    };
    assert_eq!(
        h.gateway.take(),
        vec![(tm("tm-a"), trigger(SRC0)), (tm("tm-b"), trigger(SRC1))]
    );

    sleep_ms(20).await;
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    assert_eq!(
        handle.wait().await,
        Ok(SnapshotSuccess {
            checkpoint_id: CheckpointId(1),
            kind: SnapshotKind::Savepoint,
            path: Some(path.clone()),
            state_size_bytes: STATE_SIZE,
        })
    );
    assert_eq!(h.sent(), notified(1));

    let stored = h
        .stores
        .savepoints
        .read(&path)
        .await
        .expect("savepoint readable");
    assert_eq!(
        stored,
        CompletedSnapshot {
            job_id: job_id(JOB),
            checkpoint_id: CheckpointId(1),
            kind: SnapshotKind::Savepoint,
            trigger_timestamp_ms: START_MS,
            completion_timestamp_ms: START_MS + 20,
            vertices: standard_vertices(|a| state(a, &path)),
            claimed_path: None,
        }
    );
    let listed = h.stores.savepoints.list(&job_id(JOB)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, path);
    assert_eq!(listed[0].checkpoint_id, CheckpointId(1));
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "a savepoint is not a retained checkpoint"
    );
    let stats = h.stats();
    assert_eq!((stats.completed, stats.failed), (1, 0));
    let latest = stats.latest_savepoint.expect("latest savepoint");
    assert_eq!(latest.path.as_deref(), Some(path.as_str()));
    assert_eq!(latest.kind, SnapshotKind::Savepoint);
}

#[tokio::test(start_paused = true)]
async fn savepoint_without_a_target_uses_the_default_directory() {
    let h = Harness::started(policy()).await;
    let handle = h
        .coordinator
        .trigger_savepoint(JOB, None)
        .await
        .expect("savepoint triggered");
    assert_eq!(handle.path, Some(expected_savepoint_path(1)));
    h.complete_savepoint(handle).await;
}

#[tokio::test(start_paused = true)]
async fn savepoint_is_refused_at_once_when_trigger_tasks_are_not_running() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    h.register_all(TaskState::Deploying);
    h.set_status(JobStatus::Running).await;
    let message = expect_refused(
        h.coordinator
            .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.into()))
            .await,
        FailureReason::TasksNotRunning,
    );
    assert!(message.contains("src#0"), "{message}");
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.stats().triggered, 0);
}

#[tokio::test(start_paused = true)]
async fn savepoint_expires_after_its_timeout() {
    let h = Harness::started(with_timeout(2_000)).await;
    let handle = h.savepoint().await;
    h.sent();
    let path = handle.path.clone().unwrap();
    h.ack(1, SRC0, state(SRC0, &path));
    sleep_ms(2_001).await;
    let message = expect_failure(handle.wait().await, FailureReason::Expired);
    assert!(message.contains("expired"), "{message}");
    assert_eq!(h.sent(), aborted(1, FailureReason::Expired, &ALL));
    let result = h.stores.savepoints.read(&path).await;
    assert!(result.is_err(), "nothing stored for an expired savepoint");
    let stats = h.stats();
    assert_eq!((stats.failed, stats.consecutive_failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_every_pending_savepoint() {
    let h = Harness::started(policy()).await;
    let first = h.savepoint().await;
    let second = h.savepoint().await;
    let checkpoint = h.checkpoint().await;
    h.sent();
    h.coordinator.shutdown();
    for handle in [first, second, checkpoint] {
        expect_failure(handle.wait().await, FailureReason::CoordinatorShutDown);
    }
    let mut sent = h.sent();
    sent.sort_by_key(|s| match s {
        Sent::Abort(_, id, attempt, _) => (*id, *attempt),
        _ => (0, 0),
    });
    let mut expected = [
        aborted(1, FailureReason::CoordinatorShutDown, &ALL),
        aborted(2, FailureReason::CoordinatorShutDown, &ALL),
        aborted(3, FailureReason::CoordinatorShutDown, &ALL),
    ]
    .concat();
    expected.sort_by_key(|s| match s {
        Sent::Abort(_, id, attempt, _) => (*id, *attempt),
        _ => (0, 0),
    });
    assert_eq!(sent, expected);
    expect_refused(
        h.coordinator
            .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.into()))
            .await,
        FailureReason::CoordinatorShutDown,
    );
    assert!(matches!(
        h.coordinator
            .register_job(standard_spec("job-2", policy()))
            .await,
        Err(CoreError::ShutDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn savepoint_store_write_failure_fails_the_result_and_aborts_the_tasks() {
    let h = Harness::started(policy()).await;
    let handle = h.savepoint().await;
    settle().await; // its Pending record is written
    h.sent();
    let path = handle.path.clone().unwrap();
    h.memory().fail_writes(true);
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    let message = expect_failure(handle.wait().await, FailureReason::StoreIo);
    assert!(message.contains("savepoint 1"), "{message}");
    assert_eq!(h.sent(), aborted(1, FailureReason::StoreIo, &ALL));
    h.memory().fail_writes(false);

    h.assert_failed_savepoint_left_nothing(&path).await;
    let stats = h.stats();
    assert_eq!((stats.failed, stats.completed), (1, 0));
    assert_eq!(
        stats.consecutive_failures, 0,
        "savepoint failures never count"
    );
    assert!(!stats.failing);
}

#[tokio::test(start_paused = true)]
async fn checkpoint_store_write_failure_fails_the_checkpoint_and_counts() {
    let h = Harness::started(CheckpointPolicy {
        tolerable_failures: 5,
        ..policy()
    })
    .await;
    let handle = h.checkpoint().await;
    h.sent();
    h.memory().fail_writes(true);
    h.ack_all(1);
    expect_failure(handle.wait().await, FailureReason::StoreIo);
    h.memory().fail_writes(false);
    assert_eq!(h.sent(), aborted(1, FailureReason::StoreIo, &ALL));
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.stats().consecutive_failures, 1);
}

/// What every attempt acks for a snapshot at `location`, except that map#1 claims all
/// key groups although it owns only 64..=127.
fn state_with_foreign_key_groups(attempt: AttemptId, location: &str) -> Vec<StateHandle> {
    let mut handles = state(attempt, location);
    if attempt == MAP1 {
        handles.push(keyed("window", "map1", 0, 127));
    }
    handles
}

#[tokio::test(start_paused = true)]
async fn checkpoint_whose_keyed_state_cannot_be_assembled_fails_with_finalize_and_counts() {
    let h = Harness::started(CheckpointPolicy {
        tolerable_failures: 1,
        ..policy()
    })
    .await;
    let figures = |h: &Harness| {
        let stats = h.stats();
        (stats.consecutive_failures, stats.failing)
    };
    for id in [1, 2] {
        let handle = h.checkpoint().await;
        h.sent();
        let location = h.location(id);
        for attempt in ALL {
            h.ack(
                id,
                attempt,
                state_with_foreign_key_groups(attempt, &location),
            );
        }
        let message = expect_failure(handle.wait().await, FailureReason::Finalize);
        assert!(
            message.contains("map#1") && message.contains("key groups 0..=127"),
            "{message}"
        );
        let mut expected = aborted(id, FailureReason::Finalize, &ALL);
        if id == 2 {
            expected.extend(marked_failing(true));
        }
        assert_eq!(h.sent(), expected);
    }
    assert_eq!(
        figures(&h),
        (2, true),
        "FINALIZE counts toward the tolerance"
    );
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "nothing is written"
    );
    settle().await;
    let mut discarded = h.discarded();
    discarded.sort();
    let mut expected: Vec<String> = [1, 2]
        .iter()
        .flat_map(|id| ALL.iter().map(move |a| (*id, *a)))
        .map(|(id, a)| format!("{}/state-{a}", h.location(id)))
        .collect();
    expected.sort();
    assert_eq!(discarded, expected, "the acked state is cleaned up");

    let savepoint = h.savepoint().await;
    let path = savepoint.path.clone().unwrap();
    for attempt in ALL {
        h.ack(3, attempt, state_with_foreign_key_groups(attempt, &path));
    }
    expect_failure(savepoint.wait().await, FailureReason::Finalize);
    assert_eq!(figures(&h), (2, true), "savepoint failures never count");
    assert!(h.stores.savepoints.read(&path).await.is_err());
    let stats = h.stats();
    assert_eq!(
        stats.failed_by_reason.get(&FailureReason::Finalize),
        Some(&3)
    );
    assert_eq!(stats.failed_by_reason.get(&FailureReason::StoreIo), None);
}

#[test]
fn metadata_that_does_not_encode_is_a_finalize_failure_and_a_failed_write_is_store_io() {
    struct Unencodable;
    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no representation"))
        }
    }
    let encoding = crate::store::encode_record(
        crate::store::codec::RecordKind::Checkpoint,
        &Unencodable,
        "chk-7",
    )
    .unwrap_err();
    let failure = super::store_failure(SnapshotKind::Checkpoint, CheckpointId(7), encoding);
    assert_eq!(failure.reason, FailureReason::Finalize);
    assert!(failure.message.contains("chk-7"), "{failure}");
    let io = StoreError::io(
        "writing",
        "chk-7",
        std::io::Error::from(std::io::ErrorKind::StorageFull),
    );
    let failure = super::store_failure(SnapshotKind::Checkpoint, CheckpointId(7), io);
    assert_eq!(failure.reason, FailureReason::StoreIo);
}

#[tokio::test(start_paused = true)]
async fn a_later_savepoint_does_not_lose_the_earlier_ones_result() {
    let h = Harness::started(policy()).await;
    let first = h.savepoint().await;
    let second = h.savepoint().await;
    assert_eq!(
        (first.checkpoint_id, second.checkpoint_id),
        (CheckpointId(1), CheckpointId(2))
    );
    let first_path = first.path.clone().unwrap();
    let second_path = second.path.clone().unwrap();
    assert_ne!(first_path, second_path);

    assert_eq!(
        h.complete_savepoint(second).await,
        expected_savepoint_path(2)
    );
    assert_eq!(
        h.complete_savepoint(first).await,
        expected_savepoint_path(1)
    );
    assert_eq!(
        h.stores
            .savepoints
            .read(&first_path)
            .await
            .unwrap()
            .vertices,
        standard_vertices(|a| state(a, &first_path))
    );
    assert_eq!(
        h.stores
            .savepoints
            .read(&second_path)
            .await
            .unwrap()
            .vertices,
        standard_vertices(|a| state(a, &second_path))
    );
    let stats = h.stats();
    assert_eq!((stats.completed, stats.failed), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn completed_savepoints_survive_shutdown() {
    let h = Harness::started(policy()).await;
    let handle = h.savepoint().await;
    let path = h.complete_savepoint(handle).await;
    let pending = h.savepoint().await;
    h.coordinator.shutdown();
    expect_failure(pending.wait().await, FailureReason::CoordinatorShutDown);
    settle().await;

    let stored = h
        .stores
        .savepoints
        .read(&path)
        .await
        .expect("still readable");
    assert_eq!(stored.checkpoint_id, CheckpointId(1));
    assert_eq!(stored.vertices, standard_vertices(|a| state(a, &path)));
    assert!(
        !h.discarded().iter().any(|uri| uri.starts_with(&path)),
        "the completed savepoint's state is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn savepoint_fails_when_a_task_declines_with_the_tasks_reason() {
    let h = Harness::started(policy()).await;
    let handle = h.savepoint().await;
    h.sent();
    let path = handle.path.clone().unwrap();
    h.ack(1, SRC0, state(SRC0, &path));
    assert!(h.decline(1, MAP1, "disk full on /data"));
    let message = expect_failure(handle.wait().await, FailureReason::Declined);
    assert!(message.contains("disk full on /data"), "{message}");
    assert!(message.contains("map#1"), "{message}");
    assert_eq!(h.sent(), aborted(1, FailureReason::Declined, &ALL));
    settle().await;
    assert_eq!(h.discarded(), vec![format!("{path}/state-{SRC0}")]);
    assert!(
        !h.decline(1, MAP0, "again"),
        "a second decline finds nothing"
    );
    assert_eq!(h.ack(1, MAP0, Vec::new()), AckOutcome::Late);
    let stats = h.stats();
    assert_eq!((stats.failed, stats.consecutive_failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_declined_checkpoint_starts_no_other_snapshot() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    h.sent();
    assert!(h.decline(1, SRC1, "barrier alignment failed"));
    let message = expect_failure(handle.wait().await, FailureReason::Declined);
    assert!(message.contains("barrier alignment failed"), "{message}");
    let mut expected = aborted(1, FailureReason::Declined, &ALL);
    expected.extend(marked_failing(true));
    assert_eq!(h.sent(), expected);

    sleep_ms(3_600_000).await;
    assert_eq!(h.sent(), vec![], "nothing was triggered after the decline");
    let stats = h.stats();
    assert_eq!(
        (stats.triggered, stats.failed, stats.in_progress),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn checkpoints_and_savepoints_share_one_ascending_id_sequence() {
    let h = Harness::started(policy()).await;
    let mut ids = Vec::new();
    for round in 0..6 {
        let handle = if round % 2 == 0 {
            h.checkpoint().await
        } else {
            h.savepoint().await
        };
        ids.push(handle.checkpoint_id.0);
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    let sent_ids: Vec<u64> = h
        .sent()
        .into_iter()
        .map(|s| match s {
            Sent::Trigger(_, id, _) => id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sent_ids, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
}

#[tokio::test(start_paused = true)]
async fn retaining_two_checkpoints_discards_the_oldest() {
    let h = Harness::started(CheckpointPolicy {
        retained: 2,
        ..policy()
    })
    .await;
    for id in 1..=3 {
        let handle = h.checkpoint().await;
        h.ack_all(id);
        handle.wait().await.unwrap();
    }
    settle().await;
    let stored = h.stores.checkpoints.load_all(&job_id(JOB)).await.unwrap();
    assert_eq!(stored_checkpoint_ids(&stored), vec![2, 3]);
    let mut discarded = h.discarded();
    discarded.sort();
    let mut expected: Vec<String> = ALL
        .iter()
        .map(|a| format!("{}/state-{a}", h.location(1)))
        .collect();
    expected.sort();
    assert_eq!(
        discarded, expected,
        "only checkpoint 1's state is discarded"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_savepoints_fail_when_the_job_leaves_running() {
    let h = Harness::started(policy()).await;
    let handle = h.savepoint().await;
    h.sent();
    h.set_status(JobStatus::Cancelling).await;
    let message = expect_failure(handle.wait().await, FailureReason::JobNotRunning);
    assert!(message.contains("CANCELLING"), "{message}");
    assert_eq!(h.sent(), aborted(1, FailureReason::JobNotRunning, &ALL));
    expect_refused(
        h.coordinator
            .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.into()))
            .await,
        FailureReason::JobNotRunning,
    );
    assert_eq!(h.stats().job_status, JobStatus::Cancelling);
}

#[tokio::test(start_paused = true)]
async fn consecutive_checkpoint_failures_beyond_the_tolerable_number_mark_the_job_failing() {
    let h = Harness::started(CheckpointPolicy {
        tolerable_failures: 1,
        timeout: Duration::from_secs(1),
        ..policy()
    })
    .await;
    let figures = |h: &Harness| {
        let stats = h.stats();
        (stats.consecutive_failures, stats.failing)
    };

    let expiring = h.checkpoint().await;
    sleep_ms(1_001).await;
    expect_failure(expiring.wait().await, FailureReason::Expired);
    assert_eq!(figures(&h), (1, false), "one failure is tolerated");

    let declined = h.checkpoint().await;
    h.sent();
    h.decline(declined.checkpoint_id.0, MAP0, "no");
    expect_failure(declined.wait().await, FailureReason::Declined);
    assert_eq!(figures(&h), (2, true), "the second in a row is not");
    assert_eq!(
        status_events(&h),
        marked_failing(true),
        "task managers hear that the job is failing"
    );

    let savepoint = h.savepoint().await;
    h.decline(savepoint.checkpoint_id.0, MAP0, "no");
    expect_failure(savepoint.wait().await, FailureReason::Declined);
    let savepoint = h.savepoint().await;
    sleep_ms(1_001).await;
    expect_failure(savepoint.wait().await, FailureReason::Expired);
    assert_eq!(figures(&h), (2, true), "savepoint failures never count");

    let task_failure = h.checkpoint().await;
    h.register_task("sink", 0, AttemptId(311), TaskState::Running);
    expect_failure(task_failure.wait().await, FailureReason::TaskFailure);
    assert_eq!(figures(&h), (2, true), "task failures do not count");

    let success = h.checkpoint().await;
    let id = success.checkpoint_id.0;
    for attempt in [SRC0, SRC1, MAP0, MAP1, AttemptId(311)] {
        h.ack(id, attempt, Vec::new());
    }
    success.wait().await.unwrap();
    assert_eq!(figures(&h), (0, false), "a success resets the count");
    assert_eq!(status_events(&h), marked_failing(false));
}

/// The JobStatusChanged messages sent since the last look.
fn status_events(h: &Harness) -> Vec<Sent> {
    h.sent()
        .into_iter()
        .filter(|sent| matches!(sent, Sent::Status(..)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Task and task manager failures
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_failed_task_aborts_the_snapshots_waiting_for_it() {
    let h = Harness::started(policy()).await;
    let checkpoint = h.checkpoint().await;
    let savepoint = h.savepoint().await;
    let acked = h.checkpoint().await;
    h.sent();
    // Checkpoint 3 already has map#1's ack, so it does not wait for it any more.
    h.ack(3, MAP1, state(MAP1, &h.location(3)));

    h.coordinator
        .update_task_state(JOB, MAP1, TaskState::Failed)
        .unwrap();
    let message = expect_failure(checkpoint.wait().await, FailureReason::TaskFailure);
    assert!(message.contains("map#1"), "{message}");
    expect_failure(savepoint.wait().await, FailureReason::TaskFailure);
    assert_eq!(
        h.sent(),
        [
            aborted(1, FailureReason::TaskFailure, &ALL),
            aborted(2, FailureReason::TaskFailure, &ALL)
        ]
        .concat()
    );
    let stats = h.stats();
    assert_eq!((stats.in_progress, stats.failed), (1, 2));
    assert_eq!(stats.history[0].checkpoint_id, acked.checkpoint_id);
    assert_eq!(stats.consecutive_failures, 0);

    let result = h
        .coordinator
        .update_task_state(JOB, AttemptId(4242), TaskState::Failed);
    assert!(matches!(result, Err(CoreError::NotFound(_))), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_stays_with_its_task_manager_while_that_one_is_connected() {
    let h = Harness::started(policy()).await;
    let of = |attempt| h.coordinator.task_manager_of(JOB, attempt).expect("job");
    assert_eq!(of(SRC1), Some(tm("tm-b")));
    assert_eq!(of(AttemptId(4242)), None);
    assert!(matches!(
        h.coordinator.task_manager_of("no-such-job", SRC1),
        Err(CoreError::JobNotFound(_))
    ));

    // tm-a cannot take over tm-b's attempt ...
    let src1 = TaskRegistration {
        job_id: JOB.to_string(),
        vertex_id: "src".to_string(),
        subtask_index: 1,
        attempt_id: SRC1,
        state: TaskState::Running,
    };
    let refused = h.coordinator.register_task(&tm("tm-a"), &src1);
    assert!(
        matches!(&refused, Err(CoreError::InvalidArgument(m)) if m.contains("tm-b")),
        "{refused:?}"
    );
    assert_eq!(of(SRC1), Some(tm("tm-b")));

    // ... until tm-b is gone.
    h.coordinator
        .disconnect_task_manager(&tm("tm-b"), h.generation("tm-b"));
    assert_eq!(of(SRC1), None);
    h.coordinator
        .register_task(&tm("tm-a"), &src1)
        .expect("taken over after the disconnect");
    assert_eq!(of(SRC1), Some(tm("tm-a")));
}

#[tokio::test(start_paused = true)]
async fn disconnecting_a_task_manager_aborts_the_snapshots_waiting_for_its_tasks() {
    let h = Harness::started(policy()).await;
    let checkpoint = h.checkpoint().await;
    let savepoint = h.savepoint().await;
    h.sent();

    // The end of an older session of tm-b is ignored.
    let current = h.generation("tm-b");
    h.coordinator.connect_task_manager(&tm("tm-c"));
    h.coordinator
        .disconnect_task_manager(&tm("tm-b"), current.wrapping_sub(1));
    assert_eq!(h.stats().in_progress, 2);
    assert_eq!(h.sent(), vec![]);

    h.coordinator.disconnect_task_manager(&tm("tm-b"), current);
    let message = expect_failure(checkpoint.wait().await, FailureReason::TaskFailure);
    assert!(message.contains("tm-b"), "{message}");
    expect_failure(savepoint.wait().await, FailureReason::TaskFailure);
    // The tasks of tm-b are gone: only tm-a's tasks hear about the aborts.
    let on_a = [SRC0, MAP0, SINK0];
    assert_eq!(
        h.sent(),
        [
            aborted(1, FailureReason::TaskFailure, &on_a),
            aborted(2, FailureReason::TaskFailure, &on_a)
        ]
        .concat()
    );
    expect_refused(
        h.coordinator.trigger_checkpoint(JOB).await,
        FailureReason::TasksNotRunning,
    );
}

#[tokio::test(start_paused = true)]
async fn confirmation_skips_commit_tasks_that_already_finished() {
    let h = Harness::started(policy()).await;
    let handle = h.checkpoint().await;
    h.sent();
    let location = h.location(1);
    h.ack(1, SINK0, state(SINK0, &location));
    // The sink acked and then finished: it can no longer be told anything.
    h.coordinator
        .update_task_state(JOB, SINK0, TaskState::Finished)
        .unwrap();
    assert_eq!(
        h.stats().in_progress,
        1,
        "an acked task finishing aborts nothing"
    );
    for attempt in [SRC0, SRC1, MAP0, MAP1] {
        h.ack(1, attempt, state(attempt, &location));
    }
    handle.wait().await.unwrap();
    assert_eq!(
        h.sent(),
        [SRC0, SRC1, MAP0, MAP1]
            .iter()
            .map(|a| Sent::Notify(tm_of(*a), 1, a.0))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_periodic_checkpoints() {
    let h = Harness::started(CheckpointPolicy {
        max_concurrent: 10,
        ..periodic(100)
    })
    .await;
    sleep_ms(150).await;
    assert_eq!(h.sent(), triggered(1));
    h.coordinator.shutdown();
    assert_eq!(
        h.sent(),
        aborted(1, FailureReason::CoordinatorShutDown, &ALL)
    );
    sleep_ms(10_000).await;
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.stats().triggered, 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_registered_again_never_reuses_an_id_and_keeps_its_savepoints() {
    let mut h = Harness::started(policy()).await;
    let checkpoint = h.checkpoint().await;
    h.ack_all(1);
    checkpoint.wait().await.unwrap();
    let (path, _) = savepoint_with(&h, subtask_state).await;
    let pending = h.savepoint().await;
    assert!(matches!(
        h.coordinator
            .register_job(standard_spec(JOB, policy()))
            .await,
        Err(CoreError::JobAlreadyExists(_))
    ));

    h.coordinator.unregister_job(JOB).await.unwrap();
    expect_failure(pending.wait().await, FailureReason::CoordinatorShutDown);
    assert!(matches!(
        h.coordinator.job_stats(JOB),
        Err(CoreError::JobNotFound(_))
    ));
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "retained checkpoints go with the job"
    );
    assert!(
        h.stores.savepoints.read(&path).await.is_ok(),
        "savepoints stay"
    );

    h.token = 0;
    h.register(standard_spec(JOB, policy())).await;
    h.connect();
    h.register_all(TaskState::Running);
    h.set_status(JobStatus::Running).await;
    let again = h.savepoint().await;
    assert!(
        again.checkpoint_id > CheckpointId(3),
        "id {} was used by the earlier registration",
        again.checkpoint_id
    );
    assert_ne!(again.path.as_deref(), Some(path.as_str()));
}

/// Checkpoint and savepoint stores whose metadata writes never finish (a hung disk or
/// NFS mount); everything else goes to the memory store.
/// With a delay, the writes finish after it (a slow disk); without, they never finish.
struct HangingWrites(Arc<MemoryStore>, Option<Duration>);

impl HangingWrites {
    async fn stall(&self) {
        match self.1 {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
    }
}

#[async_trait::async_trait]
impl SavepointStore for HangingWrites {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        self.0.savepoint_path(target_dir, job, id)
    }

    async fn prepare(&self, path: &str) -> StoreResult<()> {
        self.0.prepare(path).await
    }

    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        self.stall().await;
        self.0.write_metadata(target_dir, snapshot).await
    }

    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        self.0.index(record).await
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        self.0.read(path).await
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        self.0.list(job).await
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        self.0.dispose(path).await
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        self.0.retire(path).await
    }
}

#[async_trait::async_trait]
impl CompletedCheckpointStore for HangingWrites {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        self.stall().await;
        self.0.add(snapshot).await
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        CompletedCheckpointStore::remove(&*self.0, job, id).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        CompletedCheckpointStore::load_all(&*self.0, job).await
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        self.0.remove_all(job).await
    }
}

/// The standard job on a memory store whose snapshot metadata writes hang.
async fn started_with_hanging_writes(policy: CheckpointPolicy) -> Harness {
    started_with_slow_writes(policy, None).await
}

/// The standard job on a memory store whose snapshot metadata writes take `delay`
/// (forever when None).
async fn started_with_slow_writes(policy: CheckpointPolicy, delay: Option<Duration>) -> Harness {
    let memory = Arc::new(MemoryStore::default());
    let hanging = Arc::new(HangingWrites(memory.clone(), delay));
    let stores = Stores {
        ids: memory.clone(),
        jobs: memory.clone(),
        checkpoints: hanging.clone(),
        savepoints: hanging,
        owned_state: memory.clone(),
        operations: memory.clone(),
    };
    Harness::started_on(stores, Some(memory), policy).await
}

#[tokio::test(start_paused = true)]
async fn a_savepoint_whose_store_write_hangs_expires_at_its_timeout() {
    let h = started_with_hanging_writes(with_timeout(10_000)).await;
    let handle = h.savepoint().await;
    let path = handle.path.clone().unwrap();
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    let outcome = tokio::time::timeout(Duration::from_secs(3_600), handle.wait()).await;
    let result = outcome.expect("the caller is never left waiting forever");
    expect_failure(result, FailureReason::Expired);
}

#[tokio::test(start_paused = true)]
async fn a_savepoint_that_expired_while_being_written_is_removed_when_the_write_ends() {
    let h = started_with_slow_writes(with_timeout(10_000), Some(Duration::from_secs(30))).await;
    let handle = h.savepoint().await;
    let path = handle.path.clone().unwrap();
    assert_eq!(h.sent(), triggered(1));
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    expect_failure(handle.wait().await, FailureReason::Expired);
    assert_eq!(h.sent(), aborted(1, FailureReason::Expired, &ALL));

    sleep_ms(30_000).await;
    settle().await;
    assert!(
        h.stores
            .savepoints
            .list(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "a savepoint its caller was told failed is not left behind"
    );
    let mut discarded = h.discarded();
    discarded.sort();
    let mut expected: Vec<String> = ALL.iter().map(|a| format!("{path}/state-{a}")).collect();
    expected.sort();
    assert_eq!(discarded, expected);
    let stats = h.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_that_expired_while_being_written_is_removed_when_the_write_ends() {
    let h = started_with_slow_writes(with_timeout(1_000), Some(Duration::from_secs(5))).await;
    let handle = h.checkpoint().await;
    h.ack_all(1);
    expect_failure(handle.wait().await, FailureReason::Expired);
    sleep_ms(5_000).await;
    settle().await;
    assert!(
        h.stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .unwrap()
            .is_empty(),
        "the metadata written after the checkpoint failed is removed again"
    );
    assert_eq!(h.discarded().len(), ALL.len(), "its state is discarded");
    let stats = h.stats();
    assert!(stats.latest_completed.is_none());
    assert_eq!((stats.completed, stats.failed), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_a_savepoint_whose_store_write_hangs() {
    let h = started_with_hanging_writes(policy()).await;
    let handle = h.savepoint().await;
    let path = handle.path.clone().unwrap();
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    settle().await;
    h.coordinator.shutdown();
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait()).await;
    let result = outcome.expect("shutdown fails every pending result");
    expect_failure(result, FailureReason::CoordinatorShutDown);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_being_stored_still_counts_as_in_progress() {
    let h = started_with_hanging_writes(policy()).await;
    let handle = h.savepoint().await;
    let path = handle.path.clone().unwrap();
    assert_eq!(h.ack_all_at(1, &path)[4], AckOutcome::Completing);
    settle().await;
    let stats = h.stats();
    assert_eq!(stats.triggered, 1);
    assert_eq!(
        (stats.in_progress, stats.completed, stats.failed),
        (1, 0, 0),
        "triggered = in progress + completed + failed"
    );
    assert_eq!(stats.history.len(), 1);
    assert_eq!(stats.history[0].acknowledged_subtasks, 5);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_counts_checkpoints_whose_store_write_is_in_flight() {
    let h = started_with_hanging_writes(periodic(10)).await;
    let mut acked = HashSet::new();
    for _ in 0..100 {
        sleep_ms(10).await;
        for message in h.sent() {
            if let Sent::Trigger(_, id, _) = message
                && acked.insert(id)
            {
                h.ack_all(id);
            }
        }
    }
    assert_eq!(
        acked.len(),
        1,
        "with max_concurrent 1, nothing is triggered while checkpoint 1 is being stored"
    );
}

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

/// Completes a savepoint of the standard job in which each attempt acks `state_of`.
async fn savepoint_with(
    h: &Harness,
    state_of: impl Fn(AttemptId) -> Vec<StateHandle>,
) -> (String, CheckpointId) {
    let handle = h.savepoint().await;
    let id = handle.checkpoint_id;
    let path = handle.path.clone().unwrap();
    for attempt in ALL {
        h.ack(id.0, attempt, state_of(attempt));
    }
    handle.wait().await.expect("savepoint completes");
    (path, id)
}

fn assignment(vertex: &str, index: u32, handles: Vec<StateHandle>) -> SubtaskAssignment {
    SubtaskAssignment {
        subtask: SubtaskRef {
            vertex_id: vertex.to_string(),
            subtask_index: index,
        },
        handles,
    }
}

fn subtask_state(attempt: AttemptId) -> Vec<StateHandle> {
    vec![inline(
        &format!("op-{attempt}"),
        &format!("bytes of {attempt}"),
    )]
}

#[tokio::test(start_paused = true)]
async fn savepoint_restore_applies_exactly_one_state_per_subtask() {
    let mut h = Harness::started(policy()).await;
    let (path, id) = savepoint_with(&h, subtask_state).await;
    h.register(standard_spec("job-2", policy())).await;

    let restored = h
        .coordinator
        .restore_savepoint("job-2", &path, false)
        .await
        .expect("restored");
    assert_eq!(restored.checkpoint_id, id);
    assert_eq!(
        restored.mapping.assignments,
        TASKS
            .iter()
            .map(|(vertex, index, attempt, _)| assignment(vertex, *index, subtask_state(*attempt)))
            .collect::<Vec<_>>()
    );
    assert!(restored.mapping.non_restored_vertices.is_empty());
    let stats = h.coordinator.job_stats("job-2").unwrap();
    assert_eq!(stats.restored, 1);
    let latest = stats.latest_restore.unwrap();
    assert_eq!(latest.checkpoint_id, id);
    assert_eq!(latest.path.as_deref(), Some(path.as_str()));
}

#[tokio::test(start_paused = true)]
async fn restore_moves_the_id_counter_past_the_restored_id() {
    let mut h = Harness::started(policy()).await;
    for _ in 0..4 {
        h.checkpoint().await;
    }
    let (path, id) = savepoint_with(&h, subtask_state).await;
    assert_eq!(id, CheckpointId(5));

    // job-2 has never taken an id: restoring savepoint 5 moves its counter past 5.
    let mut spec = standard_spec("job-2", policy());
    spec.trigger_vertices = vec!["src".into()];
    h.register(spec).await;
    let restored = h
        .coordinator
        .restore_savepoint("job-2", &path, false)
        .await
        .unwrap();
    assert_eq!(restored.next_checkpoint_id, CheckpointId(6));
    h.run_other_job("job-2", 1000).await;
    let next = h.coordinator.trigger_checkpoint("job-2").await.unwrap();
    assert!(
        next.checkpoint_id > id,
        "next id {} <= 5",
        next.checkpoint_id
    );

    // The same job restoring its own (older) savepoint never reuses an id either.
    h.coordinator
        .update_job_status("job-2", JobStatus::Restarting)
        .await
        .unwrap();
    for (_, _, attempt, _) in TASKS {
        h.coordinator
            .update_task_state("job-2", AttemptId(attempt.0 + 1000), TaskState::Created)
            .unwrap();
    }
    h.coordinator
        .restore_savepoint("job-2", &path, false)
        .await
        .unwrap();
    for (_, _, attempt, _) in TASKS {
        h.coordinator
            .update_task_state("job-2", AttemptId(attempt.0 + 1000), TaskState::Running)
            .unwrap();
    }
    h.coordinator
        .update_job_status("job-2", JobStatus::Running)
        .await
        .unwrap();
    let after = h.coordinator.trigger_checkpoint("job-2").await.unwrap();
    assert!(after.checkpoint_id > next.checkpoint_id);
}

#[tokio::test(start_paused = true)]
async fn restore_of_a_missing_path_reports_the_store_failure() {
    let mut h = Harness::new();
    h.register(standard_spec(JOB, policy())).await;
    let missing = expected_savepoint_path(77);
    let result = h.coordinator.restore_savepoint(JOB, &missing, false).await;
    assert!(
        matches!(result, Err(CoreError::Store(StoreError::NotFound { .. }))),
        "{result:?}"
    );
    let result = h.coordinator.restore_savepoint(JOB, "  ", false).await;
    assert!(
        matches!(result, Err(CoreError::InvalidArgument(_))),
        "{result:?}"
    );
    let result = h.coordinator.restore_latest_checkpoint(JOB, false).await;
    assert!(matches!(result, Err(CoreError::NotFound(_))), "{result:?}");
    assert_eq!(h.stats().restored, 0);
}

#[tokio::test(start_paused = true)]
async fn restore_with_state_for_a_missing_vertex_fails_naming_it_unless_allowed() {
    let mut h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    h.register(spec("job-2", &[("src", 2), ("sink", 1)], policy()))
        .await;

    let result = h.coordinator.restore_savepoint("job-2", &path, false).await;
    match result {
        Err(CoreError::FailedPrecondition(message)) => {
            assert!(message.contains("\"map\""), "{message}");
        }
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    assert_eq!(h.coordinator.job_stats("job-2").unwrap().restored, 0);

    let restored = h
        .coordinator
        .restore_savepoint("job-2", &path, true)
        .await
        .expect("restored with allow_non_restored_state");
    assert_eq!(
        restored.mapping.non_restored_vertices,
        vec!["map".to_string()]
    );
    assert_eq!(
        restored.mapping.assignments,
        vec![
            assignment("src", 0, subtask_state(SRC0)),
            assignment("src", 1, subtask_state(SRC1)),
            assignment("sink", 0, subtask_state(SINK0)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn restore_with_a_parallelism_change_of_subtask_bound_state_fails() {
    let mut h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    h.register(spec(
        "job-2",
        &[("src", 3), ("map", 2), ("sink", 1)],
        policy(),
    ))
    .await;
    let result = h.coordinator.restore_savepoint("job-2", &path, false).await;
    match result {
        Err(CoreError::FailedPrecondition(message)) => {
            assert!(message.contains("\"src\""), "{message}");
        }
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    assert_eq!(h.coordinator.job_stats("job-2").unwrap().restored, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_restore_applies_nothing_not_even_the_id_counter() {
    let mut h = Harness::started(policy()).await;
    for _ in 0..3 {
        h.checkpoint().await;
    }
    let (path, id) = savepoint_with(&h, subtask_state).await;
    assert_eq!(id, CheckpointId(4));
    // job-2 has the same topology but a different number of key groups for map.
    let mut other = standard_spec("job-2", policy());
    other.vertices[1].max_parallelism = 256;
    h.register(other).await;
    let result = h.coordinator.restore_savepoint("job-2", &path, false).await;
    match result {
        Err(CoreError::FailedPrecondition(message)) => {
            assert!(message.contains("\"map\""), "{message}");
            assert!(message.contains("max parallelism"), "{message}");
        }
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    let stats = h.coordinator.job_stats("job-2").unwrap();
    assert_eq!((stats.restored, stats.latest_restore), (0, None));

    h.run_other_job("job-2", 1000).await;
    let first = h.coordinator.trigger_checkpoint("job-2").await.unwrap();
    assert_eq!(
        first.checkpoint_id,
        CheckpointId(1),
        "the counter did not move"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_state_is_redistributed_by_key_group_range_on_rescaling() {
    let mut h = Harness::started(policy()).await;
    let keyed_state = |attempt: AttemptId| match attempt {
        MAP0 => vec![keyed("window", "map0", 0, 63)],
        MAP1 => vec![keyed("window", "map1", 64, 127)],
        other => subtask_state(other),
    };
    let (path, _) = savepoint_with(&h, keyed_state).await;

    // Scale out 2 -> 3: ranges 0-42, 43-85, 86-127.
    h.register(spec(
        "job-3",
        &[("src", 2), ("map", 3), ("sink", 1)],
        policy(),
    ))
    .await;
    let restored = h
        .coordinator
        .restore_savepoint("job-3", &path, false)
        .await
        .expect("scale-out restore");
    assert_eq!(
        restored.mapping.assignments,
        vec![
            assignment("src", 0, subtask_state(SRC0)),
            assignment("src", 1, subtask_state(SRC1)),
            assignment("map", 0, vec![keyed("window", "map0", 0, 42)]),
            assignment(
                "map",
                1,
                vec![
                    keyed("window", "map0", 43, 63),
                    keyed("window", "map1", 64, 85)
                ]
            ),
            assignment("map", 2, vec![keyed("window", "map1", 86, 127)]),
            assignment("sink", 0, subtask_state(SINK0)),
        ]
    );

    // Scale in 2 -> 1: one subtask takes every key group.
    h.register(spec(
        "job-4",
        &[("src", 2), ("map", 1), ("sink", 1)],
        policy(),
    ))
    .await;
    let restored = h
        .coordinator
        .restore_savepoint("job-4", &path, false)
        .await
        .expect("scale-in restore");
    assert_eq!(
        restored.mapping.assignments[2],
        assignment(
            "map",
            0,
            vec![
                keyed("window", "map0", 0, 63),
                keyed("window", "map1", 64, 127)
            ]
        )
    );
    assert_eq!(restored.mapping.assignments.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn restore_is_refused_while_a_task_is_running() {
    let h = Harness::started(policy()).await;
    let (path, _) = savepoint_with(&h, subtask_state).await;
    let checkpoint = h.checkpoint().await;
    h.ack_all(checkpoint.checkpoint_id.0);
    checkpoint.wait().await.unwrap();
    for attempt in [SRC0, SRC1, MAP0, SINK0] {
        h.coordinator
            .update_task_state(JOB, attempt, TaskState::Created)
            .unwrap();
    }

    let result = h.coordinator.restore_savepoint(JOB, &path, false).await;
    match result {
        Err(CoreError::FailedPrecondition(message)) => {
            assert!(message.contains("map#1"), "{message}");
        }
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    let result = h.coordinator.restore_latest_checkpoint(JOB, false).await;
    assert!(
        matches!(result, Err(CoreError::FailedPrecondition(_))),
        "{result:?}"
    );
    assert_eq!(h.stats().restored, 0);

    h.coordinator
        .update_task_state(JOB, MAP1, TaskState::Created)
        .unwrap();
    let restored = h
        .coordinator
        .restore_latest_checkpoint(JOB, false)
        .await
        .unwrap();
    assert_eq!(restored.checkpoint_id, CheckpointId(2));
    assert_eq!(restored.next_checkpoint_id, CheckpointId(3));
    assert_eq!(h.stats().restored, 1);
}

// ---------------------------------------------------------------------------------------
// IDs and recovery
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_fresh_coordinator_on_an_empty_store_recovers_no_jobs() {
    let h = Harness::on(Stores::memory(), None);
    assert_eq!(h.coordinator.recover().await.unwrap(), 0);
    assert!(h.coordinator.job_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_triggers_get_distinct_ascending_ids() {
    let h = Arc::new(Harness::started(policy()).await);
    let mut tasks = Vec::new();
    for caller in 0..64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            if caller % 2 == 0 {
                h.checkpoint().await.checkpoint_id.0
            } else {
                h.savepoint().await.checkpoint_id.0
            }
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=64).collect::<Vec<_>>());

    let mut per_task_manager: Vec<u64> = h
        .sent()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Trigger("tm-a", id, _) => Some(id),
            _ => None,
        })
        .collect();
    let sorted = {
        let mut sorted = per_task_manager.clone();
        sorted.sort_unstable();
        sorted
    };
    assert_eq!(per_task_manager, sorted, "tasks see ascending trigger ids");
    per_task_manager.dedup();
    assert_eq!(per_task_manager.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_id_counter_hands_out_unique_ids_to_concurrent_callers() {
    let memory = Arc::new(MemoryStore::default());
    let counter = Arc::new(SharedIdCounter::new(job_id(JOB), memory, 3));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..100 {
                ids.push(counter.next().await.unwrap().0);
                tokio::task::yield_now().await;
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending per caller");
        all.extend(ids);
    }
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 800);
    assert_eq!(all.iter().min(), Some(&1));
}

#[tokio::test]
async fn a_restarted_coordinator_recovers_jobs_retained_checkpoints_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("savepoints");
    std::fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap().to_string();
    let data = dir.path().join("data");

    let first = Harness::on(Stores::filesystem(&data).unwrap(), None);
    let mut first = first;
    first.register(standard_spec(JOB, policy())).await;
    first.connect();
    first.register_all(TaskState::Running);
    first.set_status(JobStatus::Running).await;

    let checkpoint = first.checkpoint().await;
    first.ack_all_at(1, &first.location(1));
    checkpoint.wait().await.expect("checkpoint completes");
    let savepoint = first
        .coordinator
        .trigger_savepoint(JOB, Some(target.clone()))
        .await
        .unwrap();
    let savepoint_path = savepoint.path.clone().unwrap();
    for attempt in ALL {
        first.ack(2, attempt, subtask_state(attempt));
    }
    savepoint.wait().await.expect("savepoint completes");
    let abandoned = first.checkpoint().await;
    assert_eq!(abandoned.checkpoint_id, CheckpointId(3));
    first.coordinator.shutdown();
    expect_failure(abandoned.wait().await, FailureReason::CoordinatorShutDown);
    let token = first.token;
    drop(first);

    let second = Harness::on(Stores::filesystem(&data).unwrap(), None);
    assert_eq!(second.coordinator.recover().await.unwrap(), 1);
    assert_eq!(second.coordinator.job_ids(), vec![job_id(JOB)]);
    assert_eq!(second.coordinator.fencing_token(JOB).unwrap(), token);
    let stats = second.stats();
    assert_eq!(stats.job_status, JobStatus::Running);
    assert_eq!(
        stats.latest_savepoint.and_then(|s| s.path),
        Some(savepoint_path.clone())
    );

    let restored = second
        .coordinator
        .restore_latest_checkpoint(JOB, false)
        .await
        .expect("the retained checkpoint is restorable");
    assert_eq!(restored.checkpoint_id, CheckpointId(1));
    let location = second.location(1);
    assert_eq!(
        restored.mapping.assignments,
        TASKS
            .iter()
            .map(|(vertex, index, attempt, _)| assignment(
                vertex,
                *index,
                state(*attempt, &location)
            ))
            .collect::<Vec<_>>()
    );
    let stored = second
        .stores
        .savepoints
        .read(&savepoint_path)
        .await
        .unwrap();
    assert_eq!(stored.vertices, standard_vertices(subtask_state));

    let mut second = second;
    second.token = token;
    second.connect();
    second.register_all(TaskState::Running);
    let next = second.checkpoint().await;
    assert!(
        next.checkpoint_id > CheckpointId(3),
        "id {} was used before the restart",
        next.checkpoint_id
    );
}

mod lifecycle;
mod sequences;
