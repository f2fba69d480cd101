//! The state of one job and every decision about it. Nothing here does I/O, sleeps or
//! sends: decisions are recorded as [`Effects`] that the caller carries out after it has
//! released the job's lock.

use super::gateway::TaskMessage;
use super::model::{
    AttemptId, CheckpointId, CompletedSnapshot, FailureReason, JobSpec, JobStatus,
    OperationOutcome, PostSnapshotAction, SavepointOperation, SnapshotFailure, SnapshotKind,
    StateData, StateHandle, TaskManagerId, TaskState,
};
use super::pending::{AckStep, PendingSnapshot, SnapshotOptions, SnapshotResult, SnapshotSuccess};
use super::stats::{JobStats, SnapshotStatus, StatsTracker};
use super::tasks::TaskTable;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How many failed snapshots' locations are remembered to discard late acks' state.
const RECENT_LOCATIONS: usize = 256;
/// How many finished savepoint operations a job keeps (pending ones are always kept).
pub const FINISHED_OPERATIONS_KEPT: usize = 100;

/// Work decided under the job lock, to be carried out after releasing it.
#[derive(Default)]
pub struct Effects {
    pub messages: Vec<(TaskManagerId, TaskMessage)>,
    pub results: Vec<(oneshot::Sender<SnapshotResult>, SnapshotResult)>,
    /// State to delete: (owned location, handles).
    pub discards: Vec<(String, Vec<StateHandle>)>,
    /// Retained checkpoints pushed out of the retained set, with the state only they use.
    pub evicted: Vec<(CheckpointId, Vec<StateHandle>, Option<String>)>,
    pub wake_scheduler: bool,
    /// Savepoint operations whose record changed and must be persisted.
    pub operations: Vec<SavepointOperation>,
    /// Operations dropped from the bounded history, to delete from the store.
    pub forgotten_operations: Vec<String>,
    /// A stop-with-savepoint completed: the job is now FINISHED (to be persisted).
    pub finished: bool,
}

/// One of the job's two coordinator instances: its pending snapshots by id.
#[derive(Debug)]
pub struct SnapshotCoordinator {
    pub pending: BTreeMap<CheckpointId, PendingSnapshot>,
}

impl SnapshotCoordinator {
    fn new() -> Self {
        SnapshotCoordinator {
            pending: BTreeMap::new(),
        }
    }
}

/// What the periodic scheduler should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum SchedulerStep {
    TriggerNow,
    SleepUntil(Instant),
    /// Too many checkpoints pending: the request is queued until a slot frees.
    WaitForSlot,
    Stop,
}

/// Periodic trigger bookkeeping.
#[derive(Debug, Default)]
pub struct PeriodicState {
    pub next_due: Option<Instant>,
    pub last_completion: Option<Instant>,
    pub scheduler: Option<AbortHandle>,
    /// Bumped on every start and stop so a stale scheduler task ends itself.
    pub generation: u64,
}

/// What an acknowledgement amounted to.
#[derive(Debug)]
pub enum AckDecision {
    Recorded,
    /// The last awaited ack arrived: the snapshot must now be stored.
    Complete(Box<Completing>),
    Duplicate,
    /// Late (snapshot no longer pending) or not awaited: discard `handles` under
    /// `location`; None means the owned checkpoint location of the id (a snapshot whose
    /// location is no longer remembered, e.g. more than 256 ago or before a restart).
    Discard {
        late: bool,
        location: Option<String>,
        handles: Vec<StateHandle>,
    },
    /// An id above every id this job issued (or 0). Its `handles` may be discarded under
    /// the id's owned checkpoint location only if the id can never be issued again.
    UnknownCheckpoint {
        handles: Vec<StateHandle>,
    },
}

/// A fully acknowledged snapshot on its way to the store. Its [`PendingSnapshot`] stays
/// in the job (marked `storing`) until the write is done.
#[derive(Debug)]
pub struct Completing {
    pub kind: SnapshotKind,
    /// Where the tasks wrote the state (to discard it if the snapshot fails after all).
    pub location: String,
    /// Savepoint target directory; None for checkpoints.
    pub target_dir: Option<String>,
    pub trigger: Option<super::model::SavepointTrigger>,
    pub snapshot: CompletedSnapshot,
}

/// How a snapshot whose location is remembered ended; decides what a late ack may delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Failed,
    Checkpoint,
    Savepoint,
}

/// Everything the coordinator knows about one job.
pub struct JobState {
    pub spec: Arc<JobSpec>,
    pub fencing_token: u64,
    pub status: JobStatus,
    pub shut_down: bool,
    /// The server is shutting down: pending savepoints may still complete, but nothing
    /// new is triggered.
    pub draining: bool,
    pub tasks: TaskTable,
    pub checkpoints: SnapshotCoordinator,
    pub savepoints: SnapshotCoordinator,
    /// Retained completed checkpoints, ascending by id.
    pub retained: VecDeque<Arc<CompletedSnapshot>>,
    pub stats: StatsTracker,
    pub periodic: PeriodicState,
    pub max_issued_id: CheckpointId,
    pub consecutive_failures: u32,
    pub failing: bool,
    /// Set when the retained checkpoints could not be read back after a restart.
    pub checkpoint_store_error: Option<String>,
    /// Savepoint operations by id: every pending one and the latest finished ones.
    pub operations: std::collections::HashMap<String, SavepointOperation>,
    /// The pending stop-with-savepoint; periodic checkpoints pause while it runs.
    pub stopping: Option<CheckpointId>,
    /// Set by a NO_CLAIM restore: the next checkpoint must share no files with it.
    pub next_checkpoint_full: bool,
    /// The periodic savepoint task, if the job has a savepoint schedule.
    pub savepoint_scheduler: Option<AbortHandle>,
    /// Locations of recently ended snapshots, to discard the state of late acks.
    recent_locations: VecDeque<(CheckpointId, String, Ended)>,
}

impl JobState {
    pub fn new(spec: Arc<JobSpec>, fencing_token: u64, status: JobStatus, history: usize) -> Self {
        JobState {
            tasks: TaskTable::new(&spec),
            spec,
            fencing_token,
            status,
            shut_down: false,
            draining: false,
            checkpoints: SnapshotCoordinator::new(),
            savepoints: SnapshotCoordinator::new(),
            retained: VecDeque::new(),
            stats: StatsTracker::new(history),
            periodic: PeriodicState::default(),
            max_issued_id: CheckpointId(0),
            consecutive_failures: 0,
            failing: false,
            checkpoint_store_error: None,
            operations: std::collections::HashMap::new(),
            stopping: None,
            next_checkpoint_full: false,
            savepoint_scheduler: None,
            recent_locations: VecDeque::new(),
        }
    }

    fn coordinator(&self, kind: SnapshotKind) -> &SnapshotCoordinator {
        match kind {
            SnapshotKind::Checkpoint => &self.checkpoints,
            SnapshotKind::Savepoint => &self.savepoints,
        }
    }

    fn coordinator_mut(&mut self, kind: SnapshotKind) -> &mut SnapshotCoordinator {
        match kind {
            SnapshotKind::Checkpoint => &mut self.checkpoints,
            SnapshotKind::Savepoint => &mut self.savepoints,
        }
    }

    /// Effective maximum of pending periodic checkpoints: a min pause implies one.
    fn max_concurrent(&self) -> usize {
        if self.spec.policy.min_pause.is_zero() {
            self.spec.policy.max_concurrent as usize
        } else {
            1
        }
    }

    /// The pre-checks of a trigger. Periodic triggers also obey the policy.
    pub fn check_trigger(&self, periodic: bool, now: Instant) -> Result<(), SnapshotFailure> {
        if self.shut_down {
            return Err(SnapshotFailure::new(
                FailureReason::CoordinatorShutDown,
                "the job's coordinator is shut down",
            ));
        }
        if self.draining {
            return Err(SnapshotFailure::new(
                FailureReason::CoordinatorShutDown,
                "the server is shutting down: it lets pending savepoints finish but takes \
                 no new snapshot; retry once a server serves again",
            ));
        }
        if self.status != JobStatus::Running {
            return Err(SnapshotFailure::new(
                FailureReason::JobNotRunning,
                format!("job {} is {}, not RUNNING", self.spec.job_id, self.status),
            ));
        }
        if periodic {
            if let Some(stop) = self.stopping {
                return Err(SnapshotFailure::new(
                    FailureReason::JobNotRunning,
                    format!("stop-with-savepoint {stop} is in progress"),
                ));
            }
            if self.checkpoints.pending.len() >= self.max_concurrent() {
                return Err(SnapshotFailure::new(
                    FailureReason::TooManyConcurrent,
                    format!(
                        "{} checkpoints are pending, the maximum is {}",
                        self.checkpoints.pending.len(),
                        self.max_concurrent()
                    ),
                ));
            }
            if let Some(last) = self.periodic.last_completion {
                let earliest = last + self.spec.policy.min_pause;
                if now < earliest {
                    return Err(SnapshotFailure::new(
                        FailureReason::MinPause,
                        format!(
                            "min pause of {} ms since the last completion has not elapsed",
                            self.spec.policy.min_pause.as_millis()
                        ),
                    ));
                }
            }
        }
        for vertex in &self.spec.trigger_vertices {
            for index in self.tasks.indices_of_vertex(vertex) {
                let slot = self.tasks.slot(index);
                if slot.attempt.is_none() {
                    return Err(SnapshotFailure::new(
                        FailureReason::TasksNotRunning,
                        format!(
                            "trigger task {} has no execution attempt",
                            self.tasks.subtask_ref(index)
                        ),
                    ));
                }
                if slot.state != TaskState::Running || slot.task_manager.is_none() {
                    return Err(SnapshotFailure::new(
                        FailureReason::TasksNotRunning,
                        format!(
                            "trigger task {} is {}, not RUNNING",
                            self.tasks.subtask_ref(index),
                            slot.state
                        ),
                    ));
                }
            }
        }
        for vertex in &self.spec.wait_for_vertices {
            for index in self.tasks.indices_of_vertex(vertex) {
                let slot = self.tasks.slot(index);
                if slot.attempt.is_none() || slot.state.is_terminal() {
                    return Err(SnapshotFailure::new(
                        FailureReason::TasksNotRunning,
                        format!(
                            "task {} has no live execution attempt ({}) to acknowledge",
                            self.tasks.subtask_ref(index),
                            slot.state
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Creates the pending snapshot for an id already taken from the counter and returns
    /// the trigger messages for the trigger tasks.
    #[allow(clippy::too_many_arguments)]
    pub fn start_pending(
        &mut self,
        id: CheckpointId,
        kind: SnapshotKind,
        periodic: bool,
        now_ms: u64,
        location: String,
        target_dir: Option<String>,
        mut options: SnapshotOptions,
        result: Option<oneshot::Sender<SnapshotResult>>,
    ) -> (&mut PendingSnapshot, Vec<(TaskManagerId, TaskMessage)>) {
        options.full = match kind {
            SnapshotKind::Savepoint => true,
            SnapshotKind::Checkpoint => self.next_checkpoint_full,
        };
        if options.action != PostSnapshotAction::None {
            self.stopping = Some(id);
        }
        let mut trigger_attempts = Vec::new();
        let mut messages = Vec::new();
        for vertex in &self.spec.trigger_vertices {
            for index in self.tasks.indices_of_vertex(vertex) {
                let slot = self.tasks.slot(index);
                if let (Some(attempt), Some(tm)) = (slot.attempt, &slot.task_manager) {
                    trigger_attempts.push(attempt);
                    messages.push((
                        tm.clone(),
                        TaskMessage::TriggerCheckpoint {
                            job_id: self.spec.job_id.clone(),
                            checkpoint_id: id,
                            attempt_id: attempt,
                            timestamp_ms: now_ms,
                            kind,
                            location: location.clone(),
                            action: options.action,
                            full: options.full,
                            fencing_token: self.fencing_token,
                        },
                    ));
                }
            }
        }
        let mut awaited = Vec::new();
        for vertex in &self.spec.wait_for_vertices {
            for index in self.tasks.indices_of_vertex(vertex) {
                if let Some(attempt) = self.tasks.slot(index).attempt {
                    awaited.push((index, attempt));
                }
            }
        }
        let mut pending = PendingSnapshot::new(
            id,
            kind,
            periodic,
            now_ms,
            location,
            target_dir,
            trigger_attempts,
            awaited,
            result,
        );
        pending.options = options;
        self.max_issued_id = self.max_issued_id.max(id);
        self.stats.record_triggered(kind);
        let pending = self
            .coordinator_mut(kind)
            .pending
            .entry(id)
            .or_insert(pending);
        (pending, messages)
    }

    /// Offers an acknowledgement; routes it to whichever coordinator owns the id.
    pub fn acknowledge(
        &mut self,
        id: CheckpointId,
        attempt: AttemptId,
        handles: Vec<StateHandle>,
        now_ms: u64,
    ) -> AckDecision {
        let kind = if self.checkpoints.pending.contains_key(&id) {
            SnapshotKind::Checkpoint
        } else if self.savepoints.pending.contains_key(&id) {
            SnapshotKind::Savepoint
        } else {
            self.stats.discarded_acks += 1;
            if id > self.max_issued_id || id.0 == 0 {
                return AckDecision::UnknownCheckpoint {
                    handles: self.unused(handles),
                };
            }
            let Some((_, location, ended)) = self
                .recent_locations
                .iter()
                .find(|(recent, _, _)| *recent == id)
                .cloned()
            else {
                return AckDecision::Discard {
                    late: true,
                    location: None,
                    handles: self.unused(handles),
                };
            };
            let handles = match ended {
                // The savepoint directory and everything in it now belongs to the savepoint.
                Ended::Savepoint => Vec::new(),
                Ended::Failed | Ended::Checkpoint => self.unused(handles),
            };
            return AckDecision::Discard {
                late: true,
                location: Some(location),
                handles,
            };
        };
        // Field by field, so the pending snapshot and the task table can be borrowed together.
        let coordinator = match kind {
            SnapshotKind::Checkpoint => &mut self.checkpoints,
            SnapshotKind::Savepoint => &mut self.savepoints,
        };
        let pending = coordinator
            .pending
            .get_mut(&id)
            .expect("checked to be pending");
        let mut rejected = Vec::new();
        match pending.acknowledge(attempt, handles, now_ms, &mut rejected) {
            AckStep::Recorded => AckDecision::Recorded,
            AckStep::Duplicate => AckDecision::Duplicate,
            AckStep::NotAwaited => {
                let location = Some(pending.location.clone());
                self.stats.discarded_acks += 1;
                AckDecision::Discard {
                    late: false,
                    location,
                    handles: self.unused(rejected),
                }
            }
            AckStep::Complete => {
                // The timeout stays armed: a store write that hangs must not leave the
                // caller waiting forever.
                pending.storing = true;
                let tasks = &self.tasks;
                let snapshot = pending.to_completed(&self.spec, |i| tasks.locate(i), now_ms);
                AckDecision::Complete(Box::new(Completing {
                    kind,
                    location: pending.location.clone(),
                    target_dir: pending.target_dir.clone(),
                    trigger: pending.options.trigger,
                    snapshot,
                }))
            }
        }
    }

    /// `handles` without the references a retained checkpoint or a pending snapshot
    /// holds: a retried or stray ack may name state that is still in use, which stays.
    fn unused(&self, handles: Vec<StateHandle>) -> Vec<StateHandle> {
        let uri_of = |h: &StateHandle| match &h.data {
            StateData::Reference { uri, .. } => Some(uri.clone()),
            StateData::Inline(_) => None,
        };
        if handles.iter().all(|h| uri_of(h).is_none()) {
            return Vec::new();
        }
        let retained = self
            .retained
            .iter()
            .flat_map(|r| r.vertices.iter())
            .flat_map(|v| v.subtasks.iter())
            .flat_map(|s| s.handles.iter());
        let pending = self
            .checkpoints
            .pending
            .values()
            .chain(self.savepoints.pending.values())
            .flat_map(|p| p.awaited.iter())
            .flat_map(|t| t.handles.iter());
        let in_use: HashSet<String> = retained.chain(pending).filter_map(uri_of).collect();
        handles
            .into_iter()
            .filter(|h| uri_of(h).is_some_and(|uri| !in_use.contains(&uri)))
            .collect()
    }

    /// Aborts pending snapshot `id` (of either kind). Returns false if it was not pending.
    pub fn abort(
        &mut self,
        id: CheckpointId,
        failure: SnapshotFailure,
        now_ms: u64,
        effects: &mut Effects,
    ) -> bool {
        let pending = match self.checkpoints.pending.remove(&id) {
            Some(pending) => pending,
            None => match self.savepoints.pending.remove(&id) {
                Some(pending) => pending,
                None => return false,
            },
        };
        self.fail(pending, None, failure, now_ms, effects);
        true
    }

    /// Aborts every pending snapshot of `kind` (both kinds when None).
    pub fn abort_all(
        &mut self,
        kind: Option<SnapshotKind>,
        failure: &SnapshotFailure,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        let mut ids: Vec<CheckpointId> = Vec::new();
        if kind != Some(SnapshotKind::Savepoint) {
            ids.extend(self.checkpoints.pending.keys());
        }
        if kind != Some(SnapshotKind::Checkpoint) {
            ids.extend(self.savepoints.pending.keys());
        }
        for id in ids {
            self.abort(id, failure.clone(), now_ms, effects);
        }
    }

    /// Records a failed snapshot: tells the tasks, fails the caller, discards its state,
    /// counts it. `handles` overrides the state to discard (completions that failed to store).
    pub fn fail(
        &mut self,
        mut pending: PendingSnapshot,
        handles: Option<Vec<StateHandle>>,
        failure: SnapshotFailure,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        if let Some(timeout) = pending.timeout.take() {
            timeout.abort();
        }
        tracing::info!(
            job_id = %self.spec.job_id,
            checkpoint_id = %pending.id,
            kind = %pending.kind,
            reason = failure.reason.as_str(),
            "snapshot failed: {}",
            failure.message
        );
        for attempt in pending.involved_attempts() {
            if let Some(tm) = self.tasks.task_manager_of(attempt) {
                effects.messages.push((
                    tm.clone(),
                    TaskMessage::AbortCheckpoint {
                        job_id: self.spec.job_id.clone(),
                        checkpoint_id: pending.id,
                        attempt_id: attempt,
                        failure: failure.clone(),
                        fencing_token: self.fencing_token,
                    },
                ));
            }
        }
        let mut stats = pending.stats(SnapshotStatus::Failed, now_ms);
        stats.failure = Some(failure.clone());
        self.stats.record_finished(stats);
        if pending.kind == SnapshotKind::Checkpoint && failure.reason.counts_toward_tolerance() {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.spec.policy.tolerable_failures && !self.failing {
                self.failing = true;
                tracing::warn!(
                    job_id = %self.spec.job_id,
                    consecutive_failures = self.consecutive_failures,
                    tolerable = self.spec.policy.tolerable_failures,
                    "checkpoint failures exceed the tolerable number: job is failing"
                );
                let message = format!(
                    "{} consecutive checkpoint failures exceed the {} tolerated; latest: {failure}",
                    self.consecutive_failures, self.spec.policy.tolerable_failures
                );
                self.announce_status(message, effects);
            }
        }
        if self.stopping == Some(pending.id) {
            self.stopping = None;
        }
        if let Some(operation_id) = &pending.options.operation_id {
            self.finish_operation(
                operation_id,
                OperationOutcome::Failed {
                    completion_timestamp_ms: now_ms,
                    failure: failure.clone(),
                },
                effects,
            );
        }
        let handles = handles.unwrap_or_else(|| pending.take_handles());
        if !handles.is_empty() {
            effects.discards.push((pending.location.clone(), handles));
        }
        self.remember_location(pending.id, pending.location.clone(), Ended::Failed);
        if let Some(result) = pending.result.take() {
            effects.results.push((result, Err(failure)));
        }
        effects.wake_scheduler = true;
    }

    /// Whether snapshot `id` is still on its way to the store (not aborted meanwhile).
    pub fn is_storing(&self, id: CheckpointId, kind: SnapshotKind) -> bool {
        self.coordinator(kind)
            .pending
            .get(&id)
            .is_some_and(|p| p.storing)
    }

    /// Takes back snapshot `id` after its metadata write; None if it was aborted meanwhile
    /// (expired, subsumed, shut down).
    pub fn take_stored(&mut self, id: CheckpointId, kind: SnapshotKind) -> Option<PendingSnapshot> {
        let coordinator = self.coordinator_mut(kind);
        match coordinator.pending.get(&id) {
            Some(pending) if pending.storing => coordinator.pending.remove(&id),
            _ => None,
        }
    }

    /// Records a snapshot whose metadata is now durable: retention, subsumption,
    /// notifications, the caller's result.
    pub fn complete(
        &mut self,
        mut pending: PendingSnapshot,
        snapshot: Arc<CompletedSnapshot>,
        path: Option<String>,
        now_ms: u64,
        now: Instant,
        effects: &mut Effects,
    ) {
        let id = pending.id;
        if let Some(timeout) = pending.timeout.take() {
            timeout.abort();
        }
        let mut stats = pending.stats(SnapshotStatus::Completed, now_ms);
        stats.path = path.clone();
        stats.state_size_bytes = snapshot.state_size_bytes();
        let state_size_bytes = stats.state_size_bytes;
        self.stats.record_finished(stats);
        let ended = match pending.kind {
            SnapshotKind::Checkpoint => Ended::Checkpoint,
            SnapshotKind::Savepoint => Ended::Savepoint,
        };
        self.remember_location(id, pending.location.clone(), ended);
        tracing::info!(
            job_id = %self.spec.job_id,
            checkpoint_id = %id,
            kind = %pending.kind,
            state_size_bytes,
            "snapshot completed"
        );
        if pending.kind == SnapshotKind::Checkpoint {
            self.retain(snapshot, effects);
            self.periodic.last_completion = Some(now);
            self.consecutive_failures = 0;
            if pending.options.full {
                self.next_checkpoint_full = false;
            }
            if self.failing {
                self.failing = false;
                self.announce_status(format!("checkpoint {id} completed"), effects);
            }
            let older: Vec<CheckpointId> = self
                .checkpoints
                .pending
                .range(..id)
                .map(|(k, _)| *k)
                .collect();
            for older_id in older {
                let failure = SnapshotFailure::new(
                    FailureReason::Subsumed,
                    format!("checkpoint {older_id} was subsumed by completed checkpoint {id}"),
                );
                self.abort(older_id, failure, now_ms, effects);
            }
        }
        for vertex in &self.spec.commit_vertices {
            for index in self.tasks.indices_of_vertex(vertex) {
                let slot = self.tasks.slot(index);
                if let (Some(attempt), Some(tm)) = (slot.attempt, &slot.task_manager)
                    && !slot.state.is_terminal()
                {
                    effects.messages.push((
                        tm.clone(),
                        TaskMessage::NotifyCheckpointComplete {
                            job_id: self.spec.job_id.clone(),
                            checkpoint_id: id,
                            attempt_id: attempt,
                            fencing_token: self.fencing_token,
                        },
                    ));
                }
            }
        }
        if let Some(operation_id) = &pending.options.operation_id {
            self.finish_operation(
                operation_id,
                OperationOutcome::Completed {
                    completion_timestamp_ms: now_ms,
                    state_size_bytes,
                },
                effects,
            );
        }
        if pending.options.action != PostSnapshotAction::None {
            self.stopping = None;
            self.status = JobStatus::Finished;
            effects.finished = true;
            // The tasks finish now and never acknowledge anything else.
            let failure = SnapshotFailure::new(
                FailureReason::JobNotRunning,
                format!(
                    "job {} finished with stop-with-savepoint {id}",
                    self.spec.job_id
                ),
            );
            self.abort_all(None, &failure, now_ms, effects);
            let message = format!("stop-with-savepoint {id} completed; the job is FINISHED");
            self.announce_status(message, effects);
        }
        if let Some(result) = pending.result.take() {
            effects.results.push((
                result,
                Ok(SnapshotSuccess {
                    checkpoint_id: id,
                    kind: pending.kind,
                    path,
                    state_size_bytes,
                }),
            ));
        }
        effects.wake_scheduler = true;
    }

    /// Adds a completed checkpoint to the retained set, evicting the oldest beyond N.
    pub fn retain(&mut self, snapshot: Arc<CompletedSnapshot>, effects: &mut Effects) {
        let position = self
            .retained
            .iter()
            .position(|r| r.checkpoint_id > snapshot.checkpoint_id)
            .unwrap_or(self.retained.len());
        self.retained.insert(position, snapshot);
        while self.retained.len() > self.spec.policy.retained as usize {
            let Some(evicted) = self.retained.pop_front() else {
                break;
            };
            let still_used: HashSet<&str> = self
                .retained
                .iter()
                .flat_map(|r| r.vertices.iter())
                .flat_map(|v| v.subtasks.iter())
                .flat_map(|s| s.handles.iter())
                .filter_map(|h| match &h.data {
                    StateData::Reference { uri, .. } => Some(uri.as_str()),
                    StateData::Inline(_) => None,
                })
                .collect();
            let only_evicted: Vec<StateHandle> = evicted
                .vertices
                .iter()
                .flat_map(|v| v.subtasks.iter())
                .flat_map(|s| s.handles.iter())
                .filter(|h| match &h.data {
                    StateData::Reference { uri, .. } => !still_used.contains(uri.as_str()),
                    StateData::Inline(_) => false,
                })
                .cloned()
                .collect();
            effects.evicted.push((
                evicted.checkpoint_id,
                only_evicted,
                evicted.claimed_path.clone(),
            ));
        }
    }

    /// Tells every task manager with tasks of this job about its status and failing flag.
    pub fn announce_status(&self, message: String, effects: &mut Effects) {
        for tm in self.tasks.task_managers() {
            effects.messages.push((
                tm,
                TaskMessage::JobStatusChanged {
                    job_id: self.spec.job_id.clone(),
                    status: self.status,
                    failing: self.failing,
                    message: message.clone(),
                    fencing_token: self.fencing_token,
                },
            ));
        }
    }

    /// Records a new or changed operation, keeping the history bounded.
    pub fn record_operation(&mut self, operation: SavepointOperation, effects: &mut Effects) {
        self.operations
            .insert(operation.operation_id.clone(), operation.clone());
        effects.operations.push(operation);
        let finished = self.operations.values().filter(|o| !o.is_pending()).count();
        if finished > FINISHED_OPERATIONS_KEPT {
            let mut old: Vec<(u64, String)> = self
                .operations
                .values()
                .filter(|o| !o.is_pending())
                .map(|o| (o.trigger_timestamp_ms, o.operation_id.clone()))
                .collect();
            old.sort();
            for (_, id) in old.into_iter().take(finished - FINISHED_OPERATIONS_KEPT) {
                self.operations.remove(&id);
                effects.forgotten_operations.push(id);
            }
        }
    }

    fn finish_operation(
        &mut self,
        operation_id: &str,
        outcome: OperationOutcome,
        effects: &mut Effects,
    ) {
        if let Some(operation) = self.operations.get(operation_id) {
            let mut operation = operation.clone();
            operation.outcome = outcome;
            self.record_operation(operation, effects);
        }
    }

    fn remember_location(&mut self, id: CheckpointId, location: String, ended: Ended) {
        if self.recent_locations.len() == RECENT_LOCATIONS {
            self.recent_locations.pop_front();
        }
        self.recent_locations.push_back((id, location, ended));
    }

    /// Aborts the pending snapshots that wait for `attempt`, which can no longer acknowledge.
    pub fn abort_waiting_for(
        &mut self,
        attempt: AttemptId,
        why: &str,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        let ids: Vec<CheckpointId> = self
            .checkpoints
            .pending
            .values()
            .chain(self.savepoints.pending.values())
            .filter(|p| p.awaits(attempt))
            .map(|p| p.id)
            .collect();
        for id in ids {
            let failure = SnapshotFailure::new(
                FailureReason::TaskFailure,
                format!("{why} before acknowledging snapshot {id}"),
            );
            self.abort(id, failure, now_ms, effects);
        }
    }

    /// Applies a task state change reported for a current attempt.
    pub fn set_task_state(
        &mut self,
        attempt: AttemptId,
        state: TaskState,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), String> {
        let Some((index, _)) = self.tasks.set_state(attempt, state) else {
            return Err(format!(
                "attempt {attempt} is not a current attempt of job {}",
                self.spec.job_id
            ));
        };
        if state.is_terminal() {
            let why = format!(
                "task {} (attempt {attempt}) became {state}",
                self.tasks.subtask_ref(index)
            );
            self.abort_waiting_for(attempt, &why, now_ms, effects);
        }
        Ok(())
    }

    /// The next move of the periodic scheduler at time `now`.
    pub fn next_periodic_step(&mut self, now: Instant) -> SchedulerStep {
        let Some(interval) = self.spec.policy.interval else {
            return SchedulerStep::Stop;
        };
        if self.shut_down || self.draining || self.status != JobStatus::Running {
            return SchedulerStep::Stop;
        }
        let due = *self.periodic.next_due.get_or_insert(now + interval);
        if now < due {
            return SchedulerStep::SleepUntil(due);
        }
        if self.checkpoints.pending.len() >= self.max_concurrent() {
            return SchedulerStep::WaitForSlot;
        }
        if let Some(last) = self.periodic.last_completion {
            let earliest = last + self.spec.policy.min_pause;
            if now < earliest {
                return SchedulerStep::SleepUntil(earliest);
            }
        }
        self.periodic.next_due = Some(now + interval);
        SchedulerStep::TriggerNow
    }

    /// Statistics with the in-progress snapshots included.
    pub fn job_stats(&self, now_ms: u64) -> JobStats {
        let in_progress = self
            .checkpoints
            .pending
            .values()
            .chain(self.savepoints.pending.values())
            .map(|p| p.stats(SnapshotStatus::InProgress, now_ms))
            .collect();
        self.stats.view(
            self.status,
            self.consecutive_failures,
            self.failing,
            in_progress,
            self.tasks.all_subtask_refs(),
        )
    }
}
