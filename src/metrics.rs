//! What one server instance tells about itself: its [`ServerStatus`] (leading with a
//! term's coordinator, or not serving and why) and its Prometheus metrics
//! ([`ServerMetrics`]), both served on the HTTP port ([`crate::http`]).
//!
//! The registry belongs to the server instance, not to the process, so tests that run
//! several servers in one process never share counts. Counters live as long as the
//! server: in high availability they add up over every leadership term, as Prometheus
//! expects of a counter. Gauges (snapshots in flight, connected task managers, jobs,
//! leader) are read at scrape time from the current term, so they always describe it.
//!
//! The ack path only increments a pre-created counter (an atomic): every label
//! combination (kind, failure reason, ack outcome) is a small fixed set, created with the
//! registry, so nothing is looked up, locked, allocated or formatted per event.

use crate::coordinator::AckOutcome;
use crate::coordinator::Coordinator;
use crate::coordinator::metrics::{CoreMetrics, MetricsSink};
use crate::coordinator::model::{FailureReason, SnapshotKind};
use crate::coordinator::stats::{SnapshotStats, SnapshotStatus};
use crate::service::StreamRegistry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, RwLock};

/// Prefix of every metric name.
pub const METRIC_PREFIX: &str = "savepoint_coordinator";

/// The `Content-Type` of [`ServerMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Both kinds, in the order of [`kind_index`].
const KINDS: [SnapshotKind; 2] = [SnapshotKind::Checkpoint, SnapshotKind::Savepoint];

/// Every failure reason, in the order of [`reason_index`].
const REASONS: [FailureReason; 11] = [
    FailureReason::TasksNotRunning,
    FailureReason::Declined,
    FailureReason::Expired,
    FailureReason::Subsumed,
    FailureReason::StoreIo,
    FailureReason::Finalize,
    FailureReason::CoordinatorShutDown,
    FailureReason::JobNotRunning,
    FailureReason::TooManyConcurrent,
    FailureReason::MinPause,
    FailureReason::TaskFailure,
];

/// Every acknowledgement outcome, in the order of [`outcome_index`].
const OUTCOMES: [AckOutcome; 6] = [
    AckOutcome::Recorded,
    AckOutcome::Completing,
    AckOutcome::Duplicate,
    AckOutcome::Late,
    AckOutcome::UnknownCheckpoint,
    AckOutcome::NotAwaited,
];

fn kind_index(kind: SnapshotKind) -> usize {
    match kind {
        SnapshotKind::Checkpoint => 0,
        SnapshotKind::Savepoint => 1,
    }
}

/// Exhaustive, so a new reason does not compile until it is listed in [`REASONS`].
fn reason_index(reason: FailureReason) -> usize {
    match reason {
        FailureReason::TasksNotRunning => 0,
        FailureReason::Declined => 1,
        FailureReason::Expired => 2,
        FailureReason::Subsumed => 3,
        FailureReason::StoreIo => 4,
        FailureReason::Finalize => 5,
        FailureReason::CoordinatorShutDown => 6,
        FailureReason::JobNotRunning => 7,
        FailureReason::TooManyConcurrent => 8,
        FailureReason::MinPause => 9,
        FailureReason::TaskFailure => 10,
    }
}

fn outcome_index(outcome: AckOutcome) -> usize {
    match outcome {
        AckOutcome::Recorded => 0,
        AckOutcome::Completing => 1,
        AckOutcome::Duplicate => 2,
        AckOutcome::Late => 3,
        AckOutcome::UnknownCheckpoint => 4,
        AckOutcome::NotAwaited => 5,
    }
}

/// The `kind` label value.
pub fn kind_label(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

/// The `outcome` label value of an acknowledgement.
pub fn outcome_label(outcome: AckOutcome) -> &'static str {
    match outcome {
        AckOutcome::Recorded => "recorded",
        AckOutcome::Completing => "completing",
        AckOutcome::Duplicate => "duplicate",
        AckOutcome::Late => "late",
        AckOutcome::UnknownCheckpoint => "unknown_checkpoint",
        AckOutcome::NotAwaited => "not_awaited",
    }
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn duration_histogram() -> Histogram {
    // 5 ms to about 11 minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

fn size_histogram() -> Histogram {
    // 1 KiB to 64 GiB.
    Histogram::new(exponential_buckets(1024.0, 4.0, 14))
}

/// Pre-created handles the core updates: one per label combination.
struct SnapshotCounters {
    triggered: [Counter; 2],
    completed: [Counter; 2],
    failed: [[Counter; REASONS.len()]; 2],
    duration_seconds: [Histogram; 2],
    size_bytes: [Histogram; 2],
    acks: [Counter; OUTCOMES.len()],
}

impl CoreMetrics for SnapshotCounters {
    fn snapshot_triggered(&self, kind: SnapshotKind) {
        self.triggered[kind_index(kind)].inc();
    }

    fn snapshot_finished(&self, stats: &SnapshotStats) {
        let kind = kind_index(stats.kind);
        match stats.status {
            SnapshotStatus::Completed => {
                self.completed[kind].inc();
                self.duration_seconds[kind].observe(stats.duration_ms as f64 / 1000.0);
                self.size_bytes[kind].observe(stats.state_size_bytes as f64);
            }
            SnapshotStatus::Failed => {
                // A failure always has a reason; none would be a bug, counted as a task failure.
                let reason = stats
                    .failure
                    .as_ref()
                    .map_or(FailureReason::TaskFailure, |f| f.reason);
                self.failed[kind][reason_index(reason)].inc();
            }
            SnapshotStatus::InProgress => {}
        }
    }

    fn acknowledgement(&self, outcome: AckOutcome) {
        self.acks[outcome_index(outcome)].inc();
    }
}

/// What this server does right now, for the metrics and the status page.
#[derive(Clone)]
pub enum Serving {
    /// The coordinator services are open: a single server, or the leader's current term.
    Leading(CurrentTerm),
    /// The coordinator services are closed: starting, a follower, or shutting down.
    NotServing {
        /// Why, e.g. "this replica is not the leader".
        reason: String,
        /// Where the leader serves, if known (high availability).
        leader: Option<String>,
    },
}

/// The coordinator of the open term and its task manager streams.
#[derive(Clone)]
pub struct CurrentTerm {
    pub coordinator: Coordinator,
    pub streams: Arc<StreamRegistry>,
}

/// Which term this server serves, updated when its gate opens or closes.
pub struct ServerStatus {
    current: RwLock<Serving>,
    /// Whether this server is one replica of several (leader election).
    high_availability: bool,
}

impl ServerStatus {
    fn new(high_availability: bool) -> Self {
        ServerStatus {
            current: RwLock::new(Serving::NotServing {
                reason: "the server is starting".to_string(),
                leader: None,
            }),
            high_availability,
        }
    }

    /// What the server does now.
    pub fn current(&self) -> Serving {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this server is one replica of several.
    pub fn high_availability(&self) -> bool {
        self.high_availability
    }

    /// The gate opened to `term`.
    pub fn lead(&self, term: CurrentTerm) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Serving::Leading(term);
    }

    /// The gate closed, for `reason`; `leader` names the leader if known.
    pub fn stand_by(&self, reason: &str, leader: Option<String>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Serving::NotServing {
            reason: reason.to_string(),
            leader,
        };
    }

    /// Names the leader (and why this server does not serve) while not serving; no
    /// change while leading.
    pub fn name_leader(&self, reason: &str, leader: Option<String>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Serving::NotServing { .. } = &*current {
            *current = Serving::NotServing {
                reason: reason.to_string(),
                leader,
            };
        }
    }
}

/// Scrape-time gauges of the current term.
struct TermGauges {
    status: Arc<ServerStatus>,
}

impl std::fmt::Debug for TermGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TermGauges")
    }
}

impl Collector for TermGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (leader, in_flight, task_managers, jobs) = match self.status.current() {
            Serving::Leading(term) => {
                // Counts only: a scrape must not build every job's statistics under the
                // job locks that acknowledgements take.
                let pending = term.coordinator.pending_counts();
                let in_flight = [pending.checkpoints, pending.savepoints]
                    .map(|count| i64::try_from(count).unwrap_or(i64::MAX));
                let task_managers = i64::try_from(term.streams.connected()).unwrap_or(i64::MAX);
                let jobs = i64::try_from(pending.jobs).unwrap_or(i64::MAX);
                (1, in_flight, task_managers, jobs)
            }
            Serving::NotServing { .. } => (0, [0; 2], 0, 0),
        };
        let mut family = encoder.encode_descriptor(
            "snapshots_in_flight",
            "Snapshots triggered and not yet completed or failed, by kind.",
            None,
            MetricType::Gauge,
        )?;
        for kind in KINDS {
            let labels: Labels1 = [("kind", kind_label(kind))];
            ConstGauge::new(in_flight[kind_index(kind)]).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "connected_task_managers",
                "Task managers with an open Connect stream to the current term.",
                task_managers,
            ),
            (
                "jobs",
                "Jobs registered with the current term's coordinator.",
                jobs,
            ),
            (
                "leader",
                "1 while this server's coordinator services are open (the leader, or a \
                 single server while serving), else 0.",
                leader,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// The Prometheus registry of one server instance and the status its gauges read.
pub struct ServerMetrics {
    registry: Registry,
    counters: Arc<SnapshotCounters>,
    status: Arc<ServerStatus>,
}

impl ServerMetrics {
    /// A registry with every metric and label combination created (all at 0).
    /// `high_availability` says whether this server is one replica of several.
    pub fn new(high_availability: bool) -> Arc<ServerMetrics> {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let triggered = Family::<Labels1, Counter>::default();
        let completed = Family::<Labels1, Counter>::default();
        let failed = Family::<Labels2, Counter>::default();
        let duration =
            Family::<Labels1, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        let size = Family::<Labels1, Histogram>::new_with_constructor(size_histogram as fn() -> _);
        let acks = Family::<Labels1, Counter>::default();
        let by_kind = |family: &Family<Labels1, Counter>| {
            KINDS.map(|kind| family.get_or_create_owned(&[("kind", kind_label(kind))]))
        };
        let histograms = |family: &Family<Labels1, Histogram, fn() -> Histogram>| {
            KINDS.map(|kind| family.get_or_create_owned(&[("kind", kind_label(kind))]))
        };
        let counters = Arc::new(SnapshotCounters {
            triggered: by_kind(&triggered),
            completed: by_kind(&completed),
            failed: KINDS.map(|kind| {
                REASONS.map(|reason| {
                    failed.get_or_create_owned(&[
                        ("kind", kind_label(kind)),
                        ("reason", reason.as_str()),
                    ])
                })
            }),
            duration_seconds: histograms(&duration),
            size_bytes: histograms(&size),
            acks: OUTCOMES
                .map(|outcome| acks.get_or_create_owned(&[("outcome", outcome_label(outcome))])),
        });
        registry.register(
            "snapshots_triggered",
            "Snapshots started (triggers sent), by kind",
            triggered,
        );
        registry.register(
            "snapshots_completed",
            "Snapshots completed (metadata durable), by kind",
            completed,
        );
        registry.register(
            "snapshots_failed",
            "Snapshots that failed, by kind and typed failure reason",
            failed,
        );
        registry.register_with_unit(
            "snapshot_duration",
            "Time from trigger to completion of completed snapshots, by kind",
            Unit::Seconds,
            duration,
        );
        registry.register_with_unit(
            "snapshot_size",
            "State size of completed snapshots, by kind",
            Unit::Bytes,
            size,
        );
        registry.register(
            "acks",
            "Acknowledgements taken from tasks, by outcome (late: the snapshot had ended; \
             unknown_checkpoint: an id never issued); rate() gives acks per second",
            acks,
        );
        let status = Arc::new(ServerStatus::new(high_availability));
        registry.register_collector(Box::new(TermGauges {
            status: status.clone(),
        }));
        Arc::new(ServerMetrics {
            registry,
            counters,
            status,
        })
    }

    /// The handle the core reports to.
    pub fn sink(&self) -> MetricsSink {
        MetricsSink::new(self.counters.clone())
    }

    /// What the server serves now.
    pub fn status(&self) -> &ServerStatus {
        &self.status
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would leave it partial.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!("encoding the metrics failed: {error}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::{CheckpointId, SnapshotFailure};

    fn finished(kind: SnapshotKind, failure: Option<FailureReason>) -> SnapshotStats {
        SnapshotStats {
            checkpoint_id: CheckpointId(1),
            kind,
            status: match failure {
                None => SnapshotStatus::Completed,
                Some(_) => SnapshotStatus::Failed,
            },
            trigger_timestamp_ms: 0,
            latest_ack_timestamp_ms: 0,
            completion_timestamp_ms: 1500,
            acknowledged_subtasks: 1,
            total_subtasks: 1,
            state_size_bytes: 4096,
            duration_ms: 1500,
            failure: failure.map(|reason| SnapshotFailure::new(reason, "x")),
            path: None,
            subtasks: Vec::new(),
            trigger: None,
            full: false,
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().expect("a number"))
    }

    #[test]
    fn every_label_combination_is_exported_and_counted_by_its_handle() {
        let metrics = ServerMetrics::new(false);
        let sink = metrics.sink();
        sink.snapshot_triggered(SnapshotKind::Savepoint);
        sink.snapshot_triggered(SnapshotKind::Checkpoint);
        sink.snapshot_finished(&finished(SnapshotKind::Savepoint, None));
        sink.snapshot_finished(&finished(
            SnapshotKind::Checkpoint,
            Some(FailureReason::Declined),
        ));
        sink.acknowledgement(AckOutcome::Late);
        let text = metrics.encode();
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert_eq!(
            value("savepoint_coordinator_snapshots_triggered_total{kind=\"savepoint\"}"),
            1.0
        );
        assert_eq!(
            value("savepoint_coordinator_snapshots_completed_total{kind=\"checkpoint\"}"),
            0.0
        );
        assert_eq!(
            value(
                "savepoint_coordinator_snapshots_failed_total{kind=\"checkpoint\",reason=\"DECLINED\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                "savepoint_coordinator_snapshots_failed_total{kind=\"savepoint\",reason=\"TASK_FAILURE\"}"
            ),
            0.0
        );
        assert_eq!(
            value("savepoint_coordinator_acks_total{outcome=\"late\"}"),
            1.0
        );
        assert_eq!(
            value("savepoint_coordinator_acks_total{outcome=\"recorded\"}"),
            0.0
        );
        assert_eq!(
            value("savepoint_coordinator_snapshot_duration_seconds_count{kind=\"savepoint\"}"),
            1.0
        );
        assert_eq!(
            value("savepoint_coordinator_snapshot_duration_seconds_sum{kind=\"savepoint\"}"),
            1.5
        );
        assert_eq!(
            value("savepoint_coordinator_snapshot_size_bytes_sum{kind=\"savepoint\"}"),
            4096.0
        );
        assert_eq!(
            value("savepoint_coordinator_leader"),
            0.0,
            "not serving yet"
        );
        assert_eq!(
            value("savepoint_coordinator_snapshots_in_flight{kind=\"checkpoint\"}"),
            0.0
        );
    }
}
