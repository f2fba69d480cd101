//! Statistics of a job's snapshots, shared by its checkpoint and savepoint coordinators.
//!
//! Kept in compact form (subtasks by index) and resolved to names only when queried, so
//! recording a completion costs no per-subtask string allocation.

use super::model::{CheckpointId, JobStatus, SnapshotFailure, SnapshotKind, SubtaskRef};
use std::collections::VecDeque;

/// Where a snapshot is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SnapshotStatus {
    InProgress,
    Completed,
    Failed,
}

/// Compact per-subtask sample: `task_index` indexes the job's subtasks in vertex order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SubtaskSample {
    pub task_index: u32,
    pub acknowledged: bool,
    pub ack_latency_ms: u64,
    pub state_size_bytes: u64,
}

/// Figures of one snapshot (in progress, completed or failed).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotStats {
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    pub status: SnapshotStatus,
    pub trigger_timestamp_ms: u64,
    pub latest_ack_timestamp_ms: u64,
    pub completion_timestamp_ms: u64,
    pub acknowledged_subtasks: u32,
    pub total_subtasks: u32,
    pub state_size_bytes: u64,
    pub duration_ms: u64,
    pub failure: Option<SnapshotFailure>,
    pub path: Option<String>,
    pub subtasks: Vec<SubtaskSample>,
}

/// min / average / max over completed snapshots.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    pub min: u64,
    pub avg: u64,
    pub max: u64,
}

#[derive(Clone, Copy, Default, Debug)]
struct SummaryAccumulator {
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl SummaryAccumulator {
    fn add(&mut self, value: u64) {
        self.min = if self.count == 0 {
            value
        } else {
            self.min.min(value)
        };
        self.max = self.max.max(value);
        self.sum += u128::from(value);
        self.count += 1;
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            min: self.min,
            avg: (self.sum / u128::from(self.count)) as u64,
            max: self.max,
        }
    }
}

/// The latest restore of a job.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RestoreStats {
    pub checkpoint_id: CheckpointId,
    /// Savepoint path; None for a restore of the latest checkpoint.
    pub path: Option<String>,
    pub timestamp_ms: u64,
}

/// A point-in-time view of a job's statistics, with subtask names resolved.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JobStats {
    pub job_status: JobStatus,
    pub triggered: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
    pub restored: u64,
    pub discarded_acks: u64,
    pub consecutive_failures: u32,
    pub failing: bool,
    pub latest_completed: Option<SnapshotStats>,
    pub latest_failed: Option<SnapshotStats>,
    pub latest_savepoint: Option<SnapshotStats>,
    pub latest_restore: Option<RestoreStats>,
    pub duration_ms: Summary,
    pub state_size_bytes: Summary,
    /// Newest first; in-progress snapshots first of all.
    pub history: Vec<SnapshotStats>,
    /// Name of each task index used in [`SubtaskSample`].
    pub subtask_names: Vec<SubtaskRef>,
}

/// Counters and bounded history of a job's finished snapshots.
#[derive(Debug)]
pub struct StatsTracker {
    history_size: usize,
    pub triggered: u64,
    pub completed: u64,
    pub failed: u64,
    pub restored: u64,
    pub discarded_acks: u64,
    history: VecDeque<SnapshotStats>,
    latest_completed: Option<SnapshotStats>,
    latest_failed: Option<SnapshotStats>,
    latest_savepoint: Option<SnapshotStats>,
    latest_restore: Option<RestoreStats>,
    duration: SummaryAccumulator,
    size: SummaryAccumulator,
}

impl StatsTracker {
    pub fn new(history_size: usize) -> Self {
        StatsTracker {
            history_size: history_size.max(1),
            triggered: 0,
            completed: 0,
            failed: 0,
            restored: 0,
            discarded_acks: 0,
            history: VecDeque::new(),
            latest_completed: None,
            latest_failed: None,
            latest_savepoint: None,
            latest_restore: None,
            duration: SummaryAccumulator::default(),
            size: SummaryAccumulator::default(),
        }
    }

    /// Records a finished (completed or failed) snapshot.
    pub fn record_finished(&mut self, stats: SnapshotStats) {
        match stats.status {
            SnapshotStatus::Completed => {
                self.completed += 1;
                self.duration.add(stats.duration_ms);
                self.size.add(stats.state_size_bytes);
                self.recover_latest(stats.clone());
            }
            SnapshotStatus::Failed => {
                self.failed += 1;
                self.latest_failed = Some(stats.clone());
            }
            SnapshotStatus::InProgress => {}
        }
        if self.history.len() == self.history_size {
            self.history.pop_back();
        }
        self.history.push_front(stats);
    }

    /// Makes `stats` the latest completed (and latest savepoint) if it is newer; also
    /// seeds them after a restart (no counters change).
    pub fn recover_latest(&mut self, stats: SnapshotStats) {
        if stats.kind == SnapshotKind::Savepoint {
            self.latest_savepoint = Some(stats.clone());
        }
        let newer = self
            .latest_completed
            .as_ref()
            .is_none_or(|l| l.checkpoint_id < stats.checkpoint_id);
        if newer {
            self.latest_completed = Some(stats);
        }
    }

    pub fn record_restore(&mut self, restore: RestoreStats) {
        self.restored += 1;
        self.latest_restore = Some(restore);
    }

    /// Builds the queryable view; `in_progress` are the pending snapshots and
    /// `subtask_names` names every task index of the job.
    pub fn view(
        &self,
        job_status: JobStatus,
        consecutive_failures: u32,
        failing: bool,
        mut in_progress: Vec<SnapshotStats>,
        subtask_names: Vec<SubtaskRef>,
    ) -> JobStats {
        in_progress.sort_by_key(|s| std::cmp::Reverse(s.checkpoint_id));
        let in_progress_count = in_progress.len() as u64;
        in_progress.extend(self.history.iter().cloned());
        JobStats {
            job_status,
            triggered: self.triggered,
            in_progress: in_progress_count,
            completed: self.completed,
            failed: self.failed,
            restored: self.restored,
            discarded_acks: self.discarded_acks,
            consecutive_failures,
            failing,
            latest_completed: self.latest_completed.clone(),
            latest_failed: self.latest_failed.clone(),
            latest_savepoint: self.latest_savepoint.clone(),
            latest_restore: self.latest_restore.clone(),
            duration_ms: self.duration.summary(),
            state_size_bytes: self.size.summary(),
            history: in_progress,
            subtask_names,
        }
    }
}
