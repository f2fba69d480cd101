//! Statistics of a job's snapshots, shared by its checkpoint and savepoint coordinators.
//!
//! Kept in compact form (subtasks by index) and resolved to names only when queried, so
//! recording a completion costs no per-subtask string allocation.

use super::metrics::MetricsSink;
use super::model::{
    CheckpointId, ClaimMode, FailureReason, JobStatus, SavepointTrigger, SnapshotFailure,
    SnapshotKind, SubtaskRef,
};
use std::collections::{BTreeMap, VecDeque};

/// How many of the most recent completed snapshots the percentiles are taken over.
const PERCENTILE_WINDOW: usize = 1000;

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
    /// Savepoints: why it was taken.
    pub trigger: Option<SavepointTrigger>,
    /// Checkpoints: a full snapshot was requested.
    pub full: bool,
}

/// min / average / max over every completed snapshot; percentiles over the most recent
/// [`PERCENTILE_WINDOW`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub avg: u64,
    pub max: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

#[derive(Clone, Default, Debug)]
struct SummaryAccumulator {
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
    recent: VecDeque<u64>,
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
        if self.recent.len() == PERCENTILE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
    }

    /// Sorting a copy of at most [`PERCENTILE_WINDOW`] values happens only when the
    /// stats are queried, never on the completion path.
    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        Summary {
            count: self.count,
            min: self.min,
            avg: (self.sum / u128::from(self.count)) as u64,
            max: self.max,
            p50: percentile(&sorted, 50),
            p90: percentile(&sorted, 90),
            p99: percentile(&sorted, 99),
        }
    }
}

/// Nearest-rank percentile of ascending `sorted` (not empty).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The latest restore of a job.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RestoreStats {
    pub checkpoint_id: CheckpointId,
    /// Savepoint path; None for a restore of the latest checkpoint.
    pub path: Option<String>,
    pub timestamp_ms: u64,
    /// None for a restore of the latest checkpoint.
    pub claim_mode: Option<ClaimMode>,
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
    /// Messages to the job's tasks dropped because a task manager was not connected or
    /// did not keep up with its stream.
    pub undelivered_messages: u64,
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
    pub failed_by_reason: BTreeMap<FailureReason, u64>,
    pub periodic_savepoints_skipped: u64,
    pub last_skip_reason: Option<String>,
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
    failed_by_reason: BTreeMap<FailureReason, u64>,
    periodic_savepoints_skipped: u64,
    last_skip_reason: Option<String>,
    /// Also told of every triggered and finished snapshot.
    metrics: MetricsSink,
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
            failed_by_reason: BTreeMap::new(),
            periodic_savepoints_skipped: 0,
            last_skip_reason: None,
            metrics: MetricsSink::default(),
        }
    }

    /// Reports every triggered and finished snapshot to `metrics` from now on.
    pub fn report_to(&mut self, metrics: MetricsSink) {
        self.metrics = metrics;
    }

    /// Counts a started snapshot.
    pub fn record_triggered(&mut self, kind: SnapshotKind) {
        self.triggered += 1;
        self.metrics.snapshot_triggered(kind);
    }

    /// Records a finished (completed or failed) snapshot.
    pub fn record_finished(&mut self, stats: SnapshotStats) {
        self.metrics.snapshot_finished(&stats);
        match stats.status {
            SnapshotStatus::Completed => {
                self.completed += 1;
                self.duration.add(stats.duration_ms);
                self.size.add(stats.state_size_bytes);
                self.recover_latest(stats.clone());
            }
            SnapshotStatus::Failed => {
                self.failed += 1;
                if let Some(failure) = &stats.failure {
                    *self.failed_by_reason.entry(failure.reason).or_default() += 1;
                }
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

    /// A periodic savepoint that was due but not taken, and why.
    pub fn record_skip(&mut self, reason: String) {
        self.periodic_savepoints_skipped += 1;
        self.last_skip_reason = Some(reason);
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
            undelivered_messages: 0,
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
            failed_by_reason: self.failed_by_reason.clone(),
            periodic_savepoints_skipped: self.periodic_savepoints_skipped,
            last_skip_reason: self.last_skip_reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_nearest_rank_percentiles() {
        let mut acc = SummaryAccumulator::default();
        for value in (1..=100).rev() {
            acc.add(value);
        }
        let summary = acc.summary();
        assert_eq!(
            (summary.count, summary.min, summary.avg, summary.max),
            (100, 1, 50, 100)
        );
        assert_eq!((summary.p50, summary.p90, summary.p99), (50, 90, 99));
    }

    #[test]
    fn percentiles_cover_the_recent_window_only() {
        let mut acc = SummaryAccumulator::default();
        acc.add(1_000_000);
        for _ in 0..PERCENTILE_WINDOW {
            acc.add(7);
        }
        let summary = acc.summary();
        assert_eq!(summary.max, 1_000_000, "max is over every snapshot");
        assert_eq!(summary.p99, 7, "the old outlier left the window");
    }
}
