//! How the core talks to task managers: a non-blocking, fire-and-forget gateway.
//!
//! The gRPC layer implements it over each task manager's stream; unit tests use
//! [`RecordingGateway`]. Sending never blocks and never happens under the job lock.

use super::model::{
    AttemptId, CheckpointId, JobId, JobStatus, PostSnapshotAction, SnapshotFailure, SnapshotKind,
    TaskManagerId,
};
use std::sync::Mutex;

/// A message from the coordinator to one task attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TaskMessage {
    TriggerCheckpoint {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        attempt_id: AttemptId,
        timestamp_ms: u64,
        kind: SnapshotKind,
        /// Where the task should write the state it does not send inline.
        location: String,
        /// Stop-with-savepoint: what the task does once the savepoint is complete.
        action: PostSnapshotAction,
        /// A full snapshot (sharing no files with earlier ones) is required.
        full: bool,
        fencing_token: u64,
    },
    NotifyCheckpointComplete {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        attempt_id: AttemptId,
        fencing_token: u64,
    },
    AbortCheckpoint {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        attempt_id: AttemptId,
        failure: SnapshotFailure,
        fencing_token: u64,
    },
    /// To every task manager running tasks of the job: its status or failing flag changed.
    JobStatusChanged {
        job_id: JobId,
        status: JobStatus,
        failing: bool,
        message: String,
        fencing_token: u64,
    },
}

impl TaskMessage {
    /// The snapshot the message is about; None for job-level messages.
    pub fn checkpoint_id(&self) -> Option<CheckpointId> {
        match self {
            TaskMessage::TriggerCheckpoint { checkpoint_id, .. }
            | TaskMessage::NotifyCheckpointComplete { checkpoint_id, .. }
            | TaskMessage::AbortCheckpoint { checkpoint_id, .. } => Some(*checkpoint_id),
            TaskMessage::JobStatusChanged { .. } => None,
        }
    }

    /// The task attempt the message is for; None for job-level messages.
    pub fn attempt_id(&self) -> Option<AttemptId> {
        match self {
            TaskMessage::TriggerCheckpoint { attempt_id, .. }
            | TaskMessage::NotifyCheckpointComplete { attempt_id, .. }
            | TaskMessage::AbortCheckpoint { attempt_id, .. } => Some(*attempt_id),
            TaskMessage::JobStatusChanged { .. } => None,
        }
    }
}

/// Delivers messages to task managers. Implementations must not block: a task manager
/// that does not keep up loses messages (its snapshots then time out), it never stalls
/// the coordinator.
pub trait TaskGateway: Send + Sync + 'static {
    /// Hands `message` on; false when it was dropped (not connected, buffer full), which
    /// the core counts per job.
    fn send(&self, task_manager: &TaskManagerId, message: TaskMessage) -> bool;
}

/// Gateway that records every message, for tests.
#[derive(Default)]
pub struct RecordingGateway {
    sent: Mutex<Vec<(TaskManagerId, TaskMessage)>>,
}

impl RecordingGateway {
    /// Takes the messages recorded so far, in send order.
    pub fn take(&self) -> Vec<(TaskManagerId, TaskMessage)> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl TaskGateway for RecordingGateway {
    fn send(&self, task_manager: &TaskManagerId, message: TaskMessage) -> bool {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((task_manager.clone(), message));
        true
    }
}
