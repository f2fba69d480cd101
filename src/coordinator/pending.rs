//! A snapshot that was triggered and waits for acknowledgements.

use super::model::{
    AttemptId, CheckpointId, CompletedSnapshot, JobSpec, PostSnapshotAction, SavepointTrigger,
    SnapshotFailure, SnapshotKind, StateHandle, SubtaskState, VertexState,
};
use super::stats::{SnapshotStats, SnapshotStatus, SubtaskSample};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// What a successful snapshot gives its caller.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotSuccess {
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    /// The savepoint's path; None for checkpoints.
    pub path: Option<String>,
    pub state_size_bytes: u64,
}

pub type SnapshotResult = Result<SnapshotSuccess, SnapshotFailure>;

/// What distinguishes one snapshot request from another beyond its kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Savepoints: why it is taken.
    pub trigger: Option<SavepointTrigger>,
    /// Stop-with-savepoint: what tasks do once it is complete.
    pub action: PostSnapshotAction,
    /// Savepoints: the operation that tracks it.
    pub operation_id: Option<String>,
    /// A full snapshot was requested (set by the job for checkpoints, always for savepoints).
    pub full: bool,
}

/// One awaited attempt and what it acknowledged.
#[derive(Debug)]
pub struct AwaitedTask {
    pub task_index: u32,
    pub attempt: AttemptId,
    pub acknowledged: bool,
    pub ack_latency_ms: u64,
    pub state_size_bytes: u64,
    pub handles: Vec<StateHandle>,
}

/// Outcome of offering an acknowledgement to a pending snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum AckStep {
    Recorded,
    /// Recorded, and it was the last awaited acknowledgement.
    Complete,
    Duplicate,
    NotAwaited,
}

/// A triggered snapshot and its acknowledgements so far.
#[derive(Debug)]
pub struct PendingSnapshot {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    /// Triggered by the periodic scheduler (counts toward max concurrent).
    pub periodic: bool,
    pub trigger_timestamp_ms: u64,
    pub latest_ack_timestamp_ms: u64,
    /// Where tasks write their state for this snapshot (owned by the coordinator).
    pub location: String,
    /// Savepoint target directory.
    pub target_dir: Option<String>,
    pub trigger_attempts: Vec<AttemptId>,
    awaited_index: FxHashMap<AttemptId, u32>,
    pub awaited: Vec<AwaitedTask>,
    remaining: usize,
    pub result: Option<oneshot::Sender<SnapshotResult>>,
    pub timeout: Option<AbortHandle>,
    /// Every task acknowledged and the metadata is being written. The snapshot stays
    /// pending (it counts toward max concurrent, shows in progress, can still expire or
    /// be aborted by shutdown) until the store answers.
    pub storing: bool,
    pub options: SnapshotOptions,
}

impl PendingSnapshot {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: CheckpointId,
        kind: SnapshotKind,
        periodic: bool,
        trigger_timestamp_ms: u64,
        location: String,
        target_dir: Option<String>,
        trigger_attempts: Vec<AttemptId>,
        awaited: Vec<(u32, AttemptId)>,
        result: Option<oneshot::Sender<SnapshotResult>>,
    ) -> Self {
        let mut awaited_index = FxHashMap::default();
        awaited_index.reserve(awaited.len());
        let awaited: Vec<AwaitedTask> = awaited
            .into_iter()
            .enumerate()
            .map(|(position, (task_index, attempt))| {
                awaited_index.insert(attempt, position as u32);
                AwaitedTask {
                    task_index,
                    attempt,
                    acknowledged: false,
                    ack_latency_ms: 0,
                    state_size_bytes: 0,
                    handles: Vec::new(),
                }
            })
            .collect();
        PendingSnapshot {
            id,
            kind,
            periodic,
            trigger_timestamp_ms,
            latest_ack_timestamp_ms: 0,
            location,
            target_dir,
            trigger_attempts,
            remaining: awaited.len(),
            awaited_index,
            awaited,
            result,
            timeout: None,
            storing: false,
            options: SnapshotOptions::default(),
        }
    }

    /// Records the first acknowledgement of an awaited attempt; anything else changes nothing
    /// (the handles are given back in `rejected` so the caller can discard them).
    pub fn acknowledge(
        &mut self,
        attempt: AttemptId,
        handles: Vec<StateHandle>,
        now_ms: u64,
        rejected: &mut Vec<StateHandle>,
    ) -> AckStep {
        let Some(&position) = self.awaited_index.get(&attempt) else {
            *rejected = handles;
            return AckStep::NotAwaited;
        };
        let task = &mut self.awaited[position as usize];
        if task.acknowledged {
            *rejected = handles;
            return AckStep::Duplicate;
        }
        task.acknowledged = true;
        task.ack_latency_ms = now_ms.saturating_sub(self.trigger_timestamp_ms);
        task.state_size_bytes = handles.iter().map(StateHandle::size_bytes).sum();
        task.handles = handles;
        self.latest_ack_timestamp_ms = now_ms;
        self.remaining -= 1;
        if self.remaining == 0 {
            AckStep::Complete
        } else {
            AckStep::Recorded
        }
    }

    /// Whether the snapshot waits for `attempt` and has not heard from it yet.
    pub fn awaits(&self, attempt: AttemptId) -> bool {
        self.awaited_index
            .get(&attempt)
            .is_some_and(|&p| !self.awaited[p as usize].acknowledged)
    }

    pub fn acknowledged_count(&self) -> usize {
        self.awaited.len() - self.remaining
    }

    /// Every attempt that must hear about this snapshot's end: triggers and awaited.
    pub fn involved_attempts(&self) -> Vec<AttemptId> {
        let mut attempts = self.trigger_attempts.clone();
        attempts.extend(
            self.awaited
                .iter()
                .map(|t| t.attempt)
                .filter(|a| !self.trigger_attempts.contains(a)),
        );
        attempts
    }

    /// Takes the state acknowledged so far (to discard it after an abort).
    pub fn take_handles(&mut self) -> Vec<StateHandle> {
        self.awaited
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.handles))
            .collect()
    }

    pub fn state_size_bytes(&self) -> u64 {
        self.awaited.iter().map(|t| t.state_size_bytes).sum()
    }

    /// Stats of this snapshot as it stands.
    pub fn stats(&self, status: SnapshotStatus, now_ms: u64) -> SnapshotStats {
        SnapshotStats {
            checkpoint_id: self.id,
            kind: self.kind,
            status,
            trigger_timestamp_ms: self.trigger_timestamp_ms,
            latest_ack_timestamp_ms: self.latest_ack_timestamp_ms,
            completion_timestamp_ms: if status == SnapshotStatus::InProgress {
                0
            } else {
                now_ms
            },
            acknowledged_subtasks: self.acknowledged_count() as u32,
            total_subtasks: self.awaited.len() as u32,
            state_size_bytes: self.state_size_bytes(),
            duration_ms: now_ms.saturating_sub(self.trigger_timestamp_ms),
            failure: None,
            path: None,
            subtasks: self
                .awaited
                .iter()
                .map(|t| SubtaskSample {
                    task_index: t.task_index,
                    acknowledged: t.acknowledged,
                    ack_latency_ms: t.ack_latency_ms,
                    state_size_bytes: t.state_size_bytes,
                })
                .collect(),
            trigger: self.options.trigger,
            full: self.options.full,
        }
    }

    /// Moves the acknowledged state into a completed snapshot, grouped by vertex.
    pub fn to_completed(
        &mut self,
        spec: &JobSpec,
        name_of: impl Fn(u32) -> (usize, u32),
        completion_timestamp_ms: u64,
    ) -> CompletedSnapshot {
        let mut vertices: Vec<VertexState> = spec
            .vertices
            .iter()
            .map(|v| VertexState {
                vertex_id: v.id.clone(),
                parallelism: v.parallelism,
                max_parallelism: v.max_parallelism,
                subtasks: Vec::new(),
            })
            .collect();
        for task in &mut self.awaited {
            let (vertex, subtask_index) = name_of(task.task_index);
            vertices[vertex].subtasks.push(SubtaskState {
                subtask_index,
                handles: std::mem::take(&mut task.handles),
            });
        }
        for vertex in &mut vertices {
            vertex.subtasks.sort_by_key(|s| s.subtask_index);
        }
        CompletedSnapshot {
            job_id: spec.job_id.clone(),
            checkpoint_id: self.id,
            kind: self.kind,
            trigger_timestamp_ms: self.trigger_timestamp_ms,
            completion_timestamp_ms,
            vertices,
            claimed_path: None,
        }
    }
}
