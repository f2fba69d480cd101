//! Model-based property test of the core: random sequences of operations on the standard
//! job (triggers, acks and declines for known and unknown ids and attempts, time passing,
//! job status and task state changes, restarts and restores) run against the coordinator
//! under paused time on the memory store, and against a small model of what it must do.
//!
//! After every step the coordinator must agree with the model (which snapshots are
//! pending, how each one ended, what each ack and decline amounted to) and these
//! invariants must hold:
//! - checkpoint ids are handed out strictly ascending and never reused (also past restores);
//! - every triggered snapshot's result arrives, at the latest once its timeout has passed;
//! - every savepoint reported completed is readable from the store with exactly the
//!   acknowledged state, and none of its state (nor a retained checkpoint's) was discarded;
//! - pending periodic checkpoints never exceed max concurrent, and none starts within the
//!   min pause after a completion;
//! - the stats counters add up: triggered == in progress + completed + failed.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tokio::sync::oneshot::error::TryRecvError;

/// Timer deadlines and the millisecond clock may disagree by a tick; an expiry this
/// close to the deadline is taken from the coordinator instead of predicted.
const SLACK_MS: u64 = 2;

/// Which snapshot an ack or decline names.
#[derive(Clone, Debug)]
enum Target {
    /// One of the snapshots the model thinks pending (else the newest one).
    Pending(prop::sample::Index),
    /// Any snapshot triggered so far.
    Any(prop::sample::Index),
    /// An id above every id handed out.
    Unknown(u8),
    Zero,
}

/// Which attempt acks or declines.
#[derive(Clone, Debug)]
enum Who {
    /// The current attempt of subtask `0..5` (in TASKS order).
    Current(usize),
    /// An attempt that a restart replaced.
    Previous(prop::sample::Index),
    /// An attempt the job never had.
    Stranger,
}

#[derive(Clone, Debug)]
enum Op {
    TriggerCheckpoint,
    TriggerSavepoint,
    Ack(Target, Who),
    /// Every current attempt acks, in TASKS order.
    AckAll(Target),
    /// The current attempts of the first `n` subtasks ack (a snapshot left half done).
    AckSome(Target, usize),
    Decline(Target, Who),
    Advance(u64),
    SetStatus(JobStatus),
    SetTaskState(usize, TaskState),
    /// The subtask gets a new attempt in the given state.
    RestartTask(usize, TaskState),
    /// Every subtask gets a new CREATED attempt (a job restart before a restore).
    RestartAll,
    /// Every current attempt becomes RUNNING.
    RunAll,
    RestoreSavepoint(prop::sample::Index),
    RestoreLatestCheckpoint,
    /// A failover: every subtask restarts CREATED, the job restores a completed
    /// savepoint (or, with None, its latest checkpoint), and the tasks run again.
    Failover(Option<prop::sample::Index>),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<prop::sample::Index>().prop_map(Target::Pending),
        2 => any::<prop::sample::Index>().prop_map(Target::Any),
        1 => (0..3u8).prop_map(Target::Unknown),
        1 => Just(Target::Zero),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        6 => (0..5usize).prop_map(Who::Current),
        1 => any::<prop::sample::Index>().prop_map(Who::Previous),
        1 => Just(Who::Stranger),
    ]
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop_oneof![
        4 => Just(TaskState::Running),
        1 => prop::sample::select(vec![
            TaskState::Created,
            TaskState::Scheduled,
            TaskState::Deploying,
            TaskState::Finished,
            TaskState::Canceling,
            TaskState::Canceled,
            TaskState::Failed,
        ]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::TriggerCheckpoint),
        3 => Just(Op::TriggerSavepoint),
        3 => (target(), who()).prop_map(|(t, w)| Op::Ack(t, w)),
        6 => target().prop_map(Op::AckAll),
        2 => (target(), 1..5usize).prop_map(|(t, n)| Op::AckSome(t, n)),
        1 => (target(), who()).prop_map(|(t, w)| Op::Decline(t, w)),
        4 => prop_oneof![1..50u64, 50..500u64, 500..3_000u64].prop_map(Op::Advance),
        1 => prop_oneof![
            3 => Just(JobStatus::Running),
            1 => prop::sample::select(vec![
                JobStatus::Created,
                JobStatus::Failing,
                JobStatus::Canceled,
                JobStatus::Suspended,
                JobStatus::Restarting,
            ]),
        ]
        .prop_map(Op::SetStatus),
        1 => (0..5usize, task_state()).prop_map(|(i, s)| Op::SetTaskState(i, s)),
        1 => (0..5usize, task_state()).prop_map(|(i, s)| Op::RestartTask(i, s)),
        1 => Just(Op::RestartAll),
        2 => Just(Op::RunAll),
        1 => any::<prop::sample::Index>().prop_map(Op::RestoreSavepoint),
        1 => Just(Op::RestoreLatestCheckpoint),
        2 => prop::option::of(any::<prop::sample::Index>()).prop_map(Op::Failover),
    ]
}

fn checkpoint_policy() -> impl Strategy<Value = CheckpointPolicy> {
    (
        prop_oneof![Just(None), (50..300u64).prop_map(Some)],
        100..1_500u64,
        prop_oneof![2 => Just(0u64), 1 => 20..200u64],
        1..=3u32,
        1..=3u32,
        0..=2u32,
    )
        .prop_map(
            |(interval, timeout, min_pause, max_concurrent, retained, tolerable)| {
                CheckpointPolicy {
                    interval: interval.map(Duration::from_millis),
                    timeout: Duration::from_millis(timeout),
                    min_pause: Duration::from_millis(min_pause),
                    max_concurrent,
                    retained,
                    tolerable_failures: tolerable,
                }
            },
        )
}

/// How a snapshot ended, and when (wall-clock ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Completed(u64),
    Failed(FailureReason, u64),
}

impl End {
    fn at_ms(self) -> u64 {
        match self {
            End::Completed(at) | End::Failed(_, at) => at,
        }
    }
}

/// The model of one triggered snapshot.
struct Snapshot {
    id: u64,
    kind: SnapshotKind,
    periodic: bool,
    trigger_ms: u64,
    /// Where acks put their state: the checkpoint's location or the savepoint's path.
    location: String,
    triggers: Vec<AttemptId>,
    /// (task index, attempt) of every subtask at trigger time.
    awaited: Vec<(usize, AttemptId)>,
    acked: BTreeMap<AttemptId, Vec<StateHandle>>,
    end: Option<End>,
    /// The caller's handle (manual triggers); None once its result has been checked.
    handle: Option<SnapshotHandle>,
}

impl Snapshot {
    fn awaits(&self, attempt: AttemptId) -> bool {
        self.end.is_none()
            && self.awaited.iter().any(|(_, a)| *a == attempt)
            && !self.acked.contains_key(&attempt)
    }

    fn state_size(&self) -> u64 {
        self.acked
            .values()
            .flatten()
            .map(StateHandle::size_bytes)
            .sum()
    }

    /// The vertices a completed snapshot of the standard job must hold.
    fn vertices(&self) -> Vec<VertexState> {
        [("src", 2), ("map", 2), ("sink", 1)]
            .into_iter()
            .map(|(vertex, parallelism)| VertexState {
                vertex_id: vertex.to_string(),
                parallelism,
                max_parallelism: 128,
                subtasks: self
                    .awaited
                    .iter()
                    .filter(|(task, _)| TASKS[*task].0 == vertex)
                    .map(|(task, attempt)| SubtaskState {
                        subtask_index: TASKS[*task].1,
                        handles: self.acked.get(attempt).cloned().unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// The coordinator under test and the model it is compared with.
struct Run {
    h: Harness,
    policy: CheckpointPolicy,
    status: JobStatus,
    /// Current (attempt, state) of each subtask, in TASKS order.
    tasks: Vec<(AttemptId, TaskState)>,
    replaced: Vec<AttemptId>,
    next_attempt: u64,
    snapshots: BTreeMap<u64, Snapshot>,
    /// The highest id handed out so far.
    max_id: u64,
    /// Every id handed out from now on must be at least this (moved by restores).
    min_next_id: u64,
    step: usize,
}

impl Run {
    async fn start(policy: CheckpointPolicy) -> Run {
        let h = Harness::started(policy.clone()).await;
        Run {
            h,
            policy,
            status: JobStatus::Running,
            tasks: ALL.iter().map(|a| (*a, TaskState::Running)).collect(),
            replaced: Vec::new(),
            next_attempt: 100,
            snapshots: BTreeMap::new(),
            max_id: 0,
            min_next_id: 1,
            step: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.h.coordinator.inner.clock.now_ms()
    }

    fn timeout_ms(&self) -> u64 {
        self.policy.timeout.as_millis() as u64
    }

    fn max_concurrent(&self) -> usize {
        if self.policy.min_pause.is_zero() {
            self.policy.max_concurrent as usize
        } else {
            1
        }
    }

    /// Whether a manual trigger must be accepted now.
    fn triggerable(&self) -> bool {
        self.status == JobStatus::Running
            && self.tasks[..2]
                .iter()
                .all(|(_, s)| *s == TaskState::Running)
            && self.tasks.iter().all(|(_, s)| !s.is_terminal())
    }

    fn all_created(&self) -> bool {
        self.tasks.iter().all(|(_, s)| *s == TaskState::Created)
    }

    fn pending_ids(&self) -> Vec<u64> {
        self.snapshots
            .values()
            .filter(|s| s.end.is_none())
            .map(|s| s.id)
            .collect()
    }

    fn resolve(&self, target: &Target) -> u64 {
        let pending = self.pending_ids();
        let all: Vec<u64> = self.snapshots.keys().copied().collect();
        match target {
            Target::Pending(i) if !pending.is_empty() => pending[i.index(pending.len())],
            Target::Any(i) if !all.is_empty() => all[i.index(all.len())],
            Target::Pending(_) | Target::Any(_) => self.max_id.max(1),
            Target::Unknown(n) => self.max_id + 1 + u64::from(*n),
            Target::Zero => 0,
        }
    }

    fn attempt(&self, who: &Who) -> AttemptId {
        match who {
            Who::Current(task) => self.tasks[*task].0,
            Who::Previous(i) if !self.replaced.is_empty() => {
                self.replaced[i.index(self.replaced.len())]
            }
            Who::Previous(_) | Who::Stranger => AttemptId(999_999),
        }
    }

    fn location(&self, id: u64) -> String {
        match self.snapshots.get(&id) {
            Some(snapshot) => snapshot.location.clone(),
            None => self.h.location(id),
        }
    }

    fn context(&self) -> String {
        format!(
            "step {} at {} ms: status {}, tasks {:?}, pending {:?}, max id {}",
            self.step,
            self.now_ms() - START_MS,
            self.status,
            self.tasks,
            self.pending_ids(),
            self.max_id
        )
    }

    /// Records a newly handed-out id: strictly above every earlier one.
    fn record_trigger(
        &mut self,
        id: u64,
        kind: SnapshotKind,
        periodic: bool,
        trigger_ms: u64,
        location: String,
        handle: Option<SnapshotHandle>,
    ) {
        assert!(
            id > self.max_id,
            "id {id} handed out after id {} ({})",
            self.max_id,
            self.context()
        );
        assert!(
            id >= self.min_next_id,
            "id {id} handed out below {} promised by a restore ({})",
            self.min_next_id,
            self.context()
        );
        self.max_id = id;
        self.snapshots.insert(
            id,
            Snapshot {
                id,
                kind,
                periodic,
                trigger_ms,
                location,
                triggers: self.tasks[..2].iter().map(|(a, _)| *a).collect(),
                awaited: self.tasks.iter().map(|(a, _)| *a).enumerate().collect(),
                acked: BTreeMap::new(),
                end: None,
                handle,
            },
        );
    }

    fn end(&mut self, id: u64, end: End) {
        let snapshot = self.snapshots.get_mut(&id).expect("a known snapshot");
        assert!(snapshot.end.is_none(), "snapshot {id} ended twice");
        snapshot.end = Some(end);
    }

    /// Ends every pending snapshot that `select` picks with `reason`.
    fn fail_where(&mut self, reason: FailureReason, select: impl Fn(&Snapshot) -> bool) {
        let now = self.now_ms();
        let ids: Vec<u64> = self
            .snapshots
            .values()
            .filter(|s| s.end.is_none() && select(s))
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.end(id, End::Failed(reason, now));
        }
    }

    async fn trigger(&mut self, kind: SnapshotKind) {
        let now = self.now_ms();
        let expected = self.triggerable();
        let result = match kind {
            SnapshotKind::Checkpoint => self.h.coordinator.trigger_checkpoint(JOB).await,
            SnapshotKind::Savepoint => {
                self.h
                    .coordinator
                    .trigger_savepoint(JOB, Some(SAVEPOINT_DIR.to_string()))
                    .await
            }
        };
        match result {
            Ok(handle) => {
                assert!(expected, "{kind} triggered ({})", self.context());
                let id = handle.checkpoint_id.0;
                let location = match kind {
                    SnapshotKind::Checkpoint => {
                        assert_eq!(handle.path, None);
                        self.h.location(id)
                    }
                    SnapshotKind::Savepoint => {
                        let path = handle.path.clone().expect("a savepoint has a path");
                        assert_eq!(path, expected_savepoint_path(id));
                        path
                    }
                };
                self.record_trigger(id, kind, false, now, location, Some(handle));
            }
            Err(CoreError::TriggerRefused { failure, .. }) => {
                assert!(!expected, "{kind} refused: {failure} ({})", self.context());
                let reason = if self.status == JobStatus::Running {
                    FailureReason::TasksNotRunning
                } else {
                    FailureReason::JobNotRunning
                };
                assert_eq!(failure.reason, reason, "{failure}");
            }
            Err(other) => panic!("{kind} trigger failed: {other} ({})", self.context()),
        }
    }

    async fn ack(&mut self, target: &Target, who: &Who) {
        let id = self.resolve(target);
        let attempt = self.attempt(who);
        let handles = state(attempt, &self.location(id));
        let expected = match self.snapshots.get(&id) {
            _ if id == 0 || id > self.max_id => AckOutcome::UnknownCheckpoint,
            None => AckOutcome::Late,
            Some(s) if s.end.is_some() => AckOutcome::Late,
            Some(s) if !s.awaited.iter().any(|(_, a)| *a == attempt) => AckOutcome::NotAwaited,
            Some(s) if s.acked.contains_key(&attempt) => AckOutcome::Duplicate,
            Some(s) if s.acked.len() + 1 == s.awaited.len() => AckOutcome::Completing,
            Some(_) => AckOutcome::Recorded,
        };
        let outcome = self.h.ack(id, attempt, handles.clone());
        assert_eq!(
            outcome,
            expected,
            "ack of {id} by attempt {attempt} ({})",
            self.context()
        );
        if matches!(outcome, AckOutcome::Recorded | AckOutcome::Completing) {
            let snapshot = self.snapshots.get_mut(&id).expect("pending");
            snapshot.acked.insert(attempt, handles);
        }
        if outcome == AckOutcome::Completing {
            settle().await;
            let now = self.now_ms();
            self.end(id, End::Completed(now));
            if self.snapshots[&id].kind == SnapshotKind::Checkpoint {
                self.fail_where(FailureReason::Subsumed, |s| {
                    s.kind == SnapshotKind::Checkpoint && s.id < id
                });
            }
        }
    }

    fn decline(&mut self, target: &Target, who: &Who) {
        let id = self.resolve(target);
        let attempt = self.attempt(who);
        let expected = self.snapshots.get(&id).is_some_and(|s| {
            s.awaits(attempt) || (s.end.is_none() && s.triggers.contains(&attempt))
        });
        let aborted = self.h.decline(id, attempt, "the model says no");
        assert_eq!(
            aborted,
            expected,
            "decline of {id} by attempt {attempt} ({})",
            self.context()
        );
        if aborted {
            let now = self.now_ms();
            self.end(id, End::Failed(FailureReason::Declined, now));
        }
    }

    async fn set_status(&mut self, status: JobStatus) {
        self.h.set_status(status).await;
        if self.status == JobStatus::Running && status != JobStatus::Running {
            self.fail_where(FailureReason::JobNotRunning, |_| true);
        }
        self.status = status;
    }

    fn set_task_state(&mut self, task: usize, state: TaskState) {
        let attempt = self.tasks[task].0;
        self.h
            .coordinator
            .update_task_state(JOB, attempt, state)
            .expect("a current attempt");
        self.tasks[task].1 = state;
        if state.is_terminal() {
            self.fail_where(FailureReason::TaskFailure, |s| s.awaits(attempt));
        }
    }

    fn restart_task(&mut self, task: usize, state: TaskState) {
        let (old, _) = self.tasks[task];
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        let (vertex, index, _, _) = TASKS[task];
        self.h.register_task(vertex, index, attempt, state);
        self.fail_where(FailureReason::TaskFailure, |s| s.awaits(old));
        self.replaced.push(old);
        self.tasks[task] = (attempt, state);
    }

    async fn restore_savepoint(&mut self, which: &prop::sample::Index) {
        let completed: Vec<u64> = self
            .snapshots
            .values()
            .filter(|s| s.kind == SnapshotKind::Savepoint)
            .filter(|s| matches!(s.end, Some(End::Completed(_))))
            .map(|s| s.id)
            .collect();
        if completed.is_empty() {
            return;
        }
        let id = completed[which.index(completed.len())];
        let path = self.snapshots[&id].location.clone();
        let result = self
            .h
            .coordinator
            .restore_savepoint(JOB, &path, false)
            .await;
        self.check_restore(id, result);
    }

    async fn restore_latest_checkpoint(&mut self) {
        let latest = self
            .snapshots
            .values()
            .rev()
            .find(|s| {
                s.kind == SnapshotKind::Checkpoint && matches!(s.end, Some(End::Completed(_)))
            })
            .map(|s| s.id);
        let result = self
            .h
            .coordinator
            .restore_latest_checkpoint(JOB, false)
            .await;
        match latest {
            Some(id) => self.check_restore(id, result),
            None => assert!(
                matches!(result, Err(CoreError::NotFound(_))),
                "restore without a completed checkpoint: {:?}",
                result.map(|r| r.checkpoint_id)
            ),
        }
    }

    /// A restore of completed snapshot `id` succeeds exactly when every subtask is
    /// CREATED, hands every subtask exactly its acknowledged state, and moves the id
    /// counter past every id handed out.
    fn check_restore(&mut self, id: u64, result: Result<super::super::Restored, CoreError>) {
        if !self.all_created() {
            assert!(
                matches!(result, Err(CoreError::FailedPrecondition(_))),
                "restore with tasks not CREATED: {:?} ({})",
                result.map(|r| r.checkpoint_id),
                self.context()
            );
            return;
        }
        let restored = match result {
            Ok(restored) => restored,
            Err(error) => panic!("restore of {id} failed: {error} ({})", self.context()),
        };
        assert_eq!(restored.checkpoint_id.0, id);
        let snapshot = &self.snapshots[&id];
        let expected: Vec<SubtaskAssignment> = snapshot
            .vertices()
            .into_iter()
            .flat_map(|v| {
                let vertex = v.vertex_id;
                v.subtasks.into_iter().map(move |s| SubtaskAssignment {
                    subtask: SubtaskRef {
                        vertex_id: vertex.clone(),
                        subtask_index: s.subtask_index,
                    },
                    handles: s.handles,
                })
            })
            .collect();
        assert_eq!(restored.mapping.assignments, expected, "restore of {id}");
        assert!(
            restored.next_checkpoint_id.0 > self.max_id,
            "after restoring {id} the next id is {}, but {} was handed out",
            restored.next_checkpoint_id,
            self.max_id
        );
        self.min_next_id = restored.next_checkpoint_id.0;
    }

    /// Takes in the trigger messages sent since the last step: periodic checkpoints are
    /// recorded, and every trigger goes to the current trigger attempts.
    fn observe_triggers(&mut self) {
        let mut triggers: BTreeMap<u64, (SnapshotKind, u64, String, Vec<AttemptId>)> =
            BTreeMap::new();
        for (_, message) in self.h.gateway.take() {
            if let TaskMessage::TriggerCheckpoint {
                checkpoint_id,
                attempt_id,
                timestamp_ms,
                kind,
                location,
                ..
            } = message
            {
                let entry = triggers
                    .entry(checkpoint_id.0)
                    .or_insert_with(|| (kind, timestamp_ms, location, Vec::new()));
                entry.3.push(attempt_id);
            }
        }
        for (id, (kind, timestamp_ms, location, attempts)) in triggers {
            if !self.snapshots.contains_key(&id) {
                assert_eq!(
                    kind,
                    SnapshotKind::Checkpoint,
                    "only checkpoints are periodic"
                );
                assert!(
                    self.policy.interval.is_some(),
                    "checkpoint {id} triggered without a schedule"
                );
                assert!(
                    self.triggerable(),
                    "periodic checkpoint {id} triggered ({})",
                    self.context()
                );
                self.check_periodic_slot(id, timestamp_ms);
                self.record_trigger(id, kind, true, timestamp_ms, location.clone(), None);
            }
            let snapshot = &self.snapshots[&id];
            assert_eq!(snapshot.location, location, "trigger location of {id}");
            assert_eq!(snapshot.triggers, attempts, "trigger attempts of {id}");
        }
    }

    /// A periodic checkpoint starting at `at_ms` finds a free slot and respects the min
    /// pause. Snapshots that ended within the slack of `at_ms` count as ended.
    fn check_periodic_slot(&self, id: u64, at_ms: u64) {
        let pending = self
            .snapshots
            .values()
            .filter(|s| s.kind == SnapshotKind::Checkpoint && s.trigger_ms <= at_ms)
            .filter(|s| s.end.is_none_or(|e| e.at_ms() > at_ms + SLACK_MS))
            .filter(|s| s.end.is_some() || s.trigger_ms + self.timeout_ms() > at_ms + SLACK_MS)
            .count();
        assert!(
            pending < self.max_concurrent(),
            "periodic checkpoint {id} started at {} ms with {pending} checkpoints pending, max {} ({})",
            at_ms - START_MS,
            self.max_concurrent(),
            self.context()
        );
        let last_completion = self
            .snapshots
            .values()
            .filter(|s| s.kind == SnapshotKind::Checkpoint)
            .filter_map(|s| match s.end {
                Some(End::Completed(at)) if at <= at_ms => Some(at),
                _ => None,
            })
            .max();
        if let Some(last) = last_completion {
            let pause = self.policy.min_pause.as_millis() as u64;
            assert!(
                at_ms + SLACK_MS >= last + pause,
                "periodic checkpoint {id} started {} ms after a completion, min pause {pause} ms",
                at_ms - last
            );
        }
    }

    /// Ends the pending snapshots whose timeout has passed. Within the slack of the
    /// deadline the coordinator's own state decides.
    fn expire(&mut self) {
        let now = self.now_ms();
        let timeout = self.timeout_ms();
        let (checkpoints, savepoints) = self.real_pending();
        let ids: Vec<(u64, u64)> = self
            .snapshots
            .values()
            .filter(|s| s.end.is_none())
            .map(|s| (s.id, s.trigger_ms + timeout))
            .collect();
        for (id, deadline) in ids {
            let still_pending = checkpoints.contains(&id) || savepoints.contains(&id);
            let expired = if now >= deadline + SLACK_MS {
                true
            } else if now + SLACK_MS > deadline {
                !still_pending
            } else {
                false
            };
            if expired {
                self.end(id, End::Failed(FailureReason::Expired, deadline));
            }
        }
    }

    /// The ids the coordinator holds as pending: (checkpoints, savepoints), and how many
    /// of the checkpoints are periodic.
    fn real_pending(&self) -> (Vec<u64>, Vec<u64>) {
        let job = self.h.coordinator.job(JOB).expect("the job");
        let state = job.lock();
        (
            state.checkpoints.pending.keys().map(|id| id.0).collect(),
            state.savepoints.pending.keys().map(|id| id.0).collect(),
        )
    }

    fn real_periodic_pending(&self) -> usize {
        let job = self.h.coordinator.job(JOB).expect("the job");
        let state = job.lock();
        state
            .checkpoints
            .pending
            .values()
            .filter(|p| p.periodic)
            .count()
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::TriggerCheckpoint => self.trigger(SnapshotKind::Checkpoint).await,
            Op::TriggerSavepoint => self.trigger(SnapshotKind::Savepoint).await,
            Op::Ack(target, who) => self.ack(target, who).await,
            Op::AckAll(target) => {
                for task in 0..TASKS.len() {
                    self.ack(target, &Who::Current(task)).await;
                }
            }
            Op::AckSome(target, n) => {
                for task in 0..*n {
                    self.ack(target, &Who::Current(task)).await;
                }
            }
            Op::Decline(target, who) => self.decline(target, who),
            Op::Advance(ms) => sleep_ms(*ms).await,
            Op::SetStatus(status) => self.set_status(*status).await,
            Op::SetTaskState(task, state) => self.set_task_state(*task, *state),
            Op::RestartTask(task, state) => self.restart_task(*task, *state),
            Op::RestartAll => {
                for task in 0..TASKS.len() {
                    self.restart_task(task, TaskState::Created);
                }
            }
            Op::RunAll => {
                for task in 0..TASKS.len() {
                    self.set_task_state(task, TaskState::Running);
                }
            }
            Op::RestoreSavepoint(which) => self.restore_savepoint(which).await,
            Op::RestoreLatestCheckpoint => self.restore_latest_checkpoint().await,
            Op::Failover(which) => {
                for task in 0..TASKS.len() {
                    self.restart_task(task, TaskState::Created);
                }
                match which {
                    Some(which) => self.restore_savepoint(which).await,
                    None => self.restore_latest_checkpoint().await,
                }
                for task in 0..TASKS.len() {
                    self.set_task_state(task, TaskState::Running);
                }
            }
        }
        settle().await;
        self.observe_triggers();
        self.expire();
    }

    /// Every invariant, after every step.
    async fn check(&mut self) {
        let context = self.context();
        let now = self.now_ms();
        let timeout = self.timeout_ms();

        // No result left hanging, and each result is the one the model expects.
        for snapshot in self.snapshots.values_mut() {
            let Some(handle) = snapshot.handle.as_mut() else {
                continue;
            };
            let id = snapshot.id;
            match handle.result.try_recv() {
                Err(TryRecvError::Empty) => {
                    assert!(
                        now < snapshot.trigger_ms + timeout + SLACK_MS,
                        "{} {id} has no result {} ms after its trigger, timeout {timeout} ms ({context})",
                        snapshot.kind,
                        now - snapshot.trigger_ms
                    );
                    assert_eq!(snapshot.end, None, "{} {id} ({context})", snapshot.kind);
                }
                Err(TryRecvError::Closed) => {
                    panic!("{} {id} lost its result ({context})", snapshot.kind)
                }
                Ok(result) => {
                    match (snapshot.end, result) {
                        (Some(End::Completed(_)), Ok(success)) => {
                            assert_eq!(success.checkpoint_id.0, id);
                            assert_eq!(success.kind, snapshot.kind);
                            assert_eq!(success.state_size_bytes, snapshot.state_size());
                            let path = (snapshot.kind == SnapshotKind::Savepoint)
                                .then(|| snapshot.location.clone());
                            assert_eq!(success.path, path);
                        }
                        (Some(End::Failed(reason, _)), Err(failure)) => {
                            assert_eq!(failure.reason, reason, "{} {id}: {failure}", snapshot.kind)
                        }
                        (end, result) => panic!(
                            "{} {id}: result {result:?}, the model expects {end:?} ({context})",
                            snapshot.kind
                        ),
                    }
                    snapshot.handle = None;
                }
            }
        }

        // The coordinator holds exactly the snapshots the model thinks pending.
        let (checkpoints, savepoints) = self.real_pending();
        let model = |kind| -> Vec<u64> {
            self.snapshots
                .values()
                .filter(|s| s.kind == kind && s.end.is_none())
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(
            checkpoints,
            model(SnapshotKind::Checkpoint),
            "pending checkpoints ({context})"
        );
        assert_eq!(
            savepoints,
            model(SnapshotKind::Savepoint),
            "pending savepoints ({context})"
        );
        let periodic = self.real_periodic_pending();
        let model_periodic = self
            .snapshots
            .values()
            .filter(|s| s.periodic && s.end.is_none())
            .count();
        assert_eq!(
            periodic, model_periodic,
            "pending periodic checkpoints ({context})"
        );
        assert!(
            periodic <= self.max_concurrent(),
            "{periodic} periodic checkpoints pending, max {} ({context})",
            self.max_concurrent()
        );

        // The counters add up, and match the model.
        let stats = self.h.stats();
        assert_eq!(
            stats.triggered,
            stats.in_progress + stats.completed + stats.failed,
            "{stats:?}"
        );
        let count =
            |f: &dyn Fn(&Snapshot) -> bool| self.snapshots.values().filter(|s| f(s)).count() as u64;
        assert_eq!(
            stats.triggered,
            self.snapshots.len() as u64,
            "triggered ({context})"
        );
        assert_eq!(
            stats.completed,
            count(&|s| matches!(s.end, Some(End::Completed(_)))),
            "completed ({context})"
        );
        assert_eq!(
            stats.failed,
            count(&|s| matches!(s.end, Some(End::Failed(..)))),
            "failed ({context})"
        );

        // Completed savepoints are all still there, with exactly the acknowledged state,
        // and retained checkpoints are the newest completed ones.
        let discarded = self.h.discarded();
        let listed: Vec<u64> = self
            .h
            .stores
            .savepoints
            .list(&job_id(JOB))
            .await
            .expect("savepoint list")
            .iter()
            .map(|r| r.checkpoint_id.0)
            .collect();
        let completed = |kind| -> Vec<&Snapshot> {
            self.snapshots
                .values()
                .filter(|s| s.kind == kind && matches!(s.end, Some(End::Completed(_))))
                .collect()
        };
        let completed_savepoints = completed(SnapshotKind::Savepoint);
        assert_eq!(
            listed,
            completed_savepoints
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            "listed savepoints ({context})"
        );
        let retained_count = self.policy.retained as usize;
        let completed_checkpoints = completed(SnapshotKind::Checkpoint);
        let retained =
            &completed_checkpoints[completed_checkpoints.len().saturating_sub(retained_count)..];
        let stored = self
            .h
            .stores
            .checkpoints
            .load_all(&job_id(JOB))
            .await
            .expect("retained checkpoints");
        assert_eq!(
            stored_checkpoint_ids(&stored),
            retained.iter().map(|s| s.id).collect::<Vec<_>>(),
            "retained checkpoints ({context})"
        );
        for (snapshot, stored) in retained.iter().zip(&stored) {
            assert_eq!(
                stored.vertices,
                snapshot.vertices(),
                "checkpoint {}",
                snapshot.id
            );
        }
        for snapshot in completed_savepoints.iter().chain(retained) {
            if snapshot.kind == SnapshotKind::Savepoint {
                let read = self
                    .h
                    .stores
                    .savepoints
                    .read(&snapshot.location)
                    .await
                    .unwrap_or_else(|e| panic!("savepoint {} unreadable: {e}", snapshot.id));
                assert_eq!(read.checkpoint_id.0, snapshot.id);
                assert_eq!(read.kind, SnapshotKind::Savepoint);
                assert_eq!(
                    read.vertices,
                    snapshot.vertices(),
                    "savepoint {}",
                    snapshot.id
                );
            }
            for handle in snapshot.acked.values().flatten() {
                if let StateData::Reference { uri, .. } = &handle.data {
                    assert!(
                        !discarded.contains(uri),
                        "state {uri} of completed {} {} was discarded ({context})",
                        snapshot.kind,
                        snapshot.id
                    );
                }
            }
        }
    }
}

async fn run(policy: CheckpointPolicy, ops: Vec<Op>) {
    let mut run = Run::start(policy).await;
    run.check().await;
    for op in &ops {
        run.step += 1;
        run.apply(op).await;
        run.check().await;
    }
    // Past every timeout: nothing may still be waiting for a result.
    run.step += 1;
    run.apply(&Op::Advance(run.timeout_ms() + 2 * SLACK_MS))
        .await;
    run.check().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn operation_sequences_keep_the_coordinator_invariants(
        policy in checkpoint_policy(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(run(policy, ops));
    }
}
