//! What the core reports for metrics, through a trait it is given (like the task
//! gateway), so the core depends on no metrics library and its tests can leave it out.
//!
//! The calls sit on hot paths, some under a job's lock: an implementation only updates
//! handles it created up front (atomics), with no I/O, no allocation and no blocking.

use super::AckOutcome;
use super::model::SnapshotKind;
use super::stats::SnapshotStats;
use std::fmt;
use std::sync::Arc;

/// Receives the core's events that metrics count.
pub trait CoreMetrics: Send + Sync {
    /// A pending snapshot was started; its triggers go out next.
    fn snapshot_triggered(&self, kind: SnapshotKind);
    /// A snapshot completed or failed: `stats` has its kind, status, duration, size and
    /// failure.
    fn snapshot_finished(&self, stats: &SnapshotStats);
    /// An acknowledgement of a registered job was taken, with what it amounted to.
    fn acknowledgement(&self, outcome: AckOutcome);
}

/// Counts nothing: the default when no metrics are exported.
struct NoMetrics;

impl CoreMetrics for NoMetrics {
    fn snapshot_triggered(&self, _kind: SnapshotKind) {}
    fn snapshot_finished(&self, _stats: &SnapshotStats) {}
    fn acknowledgement(&self, _outcome: AckOutcome) {}
}

/// Where the core reports its events; cheap to clone, shared by every job.
#[derive(Clone)]
pub struct MetricsSink(Arc<dyn CoreMetrics>);

impl MetricsSink {
    /// Reports to `metrics`.
    pub fn new(metrics: Arc<dyn CoreMetrics>) -> Self {
        MetricsSink(metrics)
    }

    pub fn snapshot_triggered(&self, kind: SnapshotKind) {
        self.0.snapshot_triggered(kind);
    }

    pub fn snapshot_finished(&self, stats: &SnapshotStats) {
        self.0.snapshot_finished(stats);
    }

    pub fn acknowledgement(&self, outcome: AckOutcome) {
        self.0.acknowledgement(outcome);
    }
}

impl Default for MetricsSink {
    fn default() -> Self {
        MetricsSink(Arc::new(NoMetrics))
    }
}

impl fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsSink")
    }
}
