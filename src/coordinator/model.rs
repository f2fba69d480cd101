//! Domain types of the coordinator: identifiers, job topology, state handles and snapshots.
//!
//! These are plain data. The service layer converts wire messages into them, the stores
//! persist them (they derive serde for that), and the core reasons about them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Identifier of a job; cheap to clone because it travels with every message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(Arc<str>);

impl JobId {
    /// Wraps a job id that has already been validated (see [`validate_name`]).
    pub fn new(id: &str) -> Self {
        JobId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// Checks that a job or vertex id is usable as a file-name component and a log field:
/// 1..=128 characters of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.len() > 128 {
        return Err(format!(
            "is {} characters long, at most 128 allowed",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checkpoint (and savepoint) id: strictly ascending per job, shared by both kinds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct CheckpointId(pub u64);

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifier of one execution attempt of a subtask; a restarted subtask gets a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct AttemptId(pub u64);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Name of the task manager that hosts attempts; messages to tasks are routed by it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TaskManagerId(pub Arc<str>);

impl TaskManagerId {
    pub fn new(id: &str) -> Self {
        TaskManagerId(Arc::from(id))
    }
}

impl fmt::Display for TaskManagerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One parallel instance of a vertex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct SubtaskRef {
    pub vertex_id: String,
    pub subtask_index: u32,
}

impl fmt::Display for SubtaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.vertex_id, self.subtask_index)
    }
}

/// Default number of key groups when a vertex does not set one (as in Flink).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// An operator of the job with its parallelism and number of key groups.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VertexSpec {
    pub id: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
}

/// How periodic checkpoints are taken; savepoints ignore all of it but the timeout.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// None disables periodic checkpoints.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    /// Measured from the last completion. A non-zero pause implies one pending checkpoint
    /// at a time, as in Flink.
    pub min_pause: Duration,
    pub max_concurrent: u32,
    pub retained: u32,
    pub tolerable_failures: u32,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            interval: None,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            retained: 1,
            tolerable_failures: 0,
        }
    }
}

/// Periodic savepoints (by interval or cron, best effort) and savepoint retention.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SavepointPolicy {
    pub interval: Option<Duration>,
    /// Cron expression in UTC with a seconds field first, e.g. `0 0 * * * *`.
    pub cron: Option<String>,
    /// Keep at most this many completed savepoints; 0 keeps all.
    pub max_retained: u32,
    /// Dispose completed savepoints older than this; the newest is always kept.
    pub max_age: Option<Duration>,
}

impl SavepointPolicy {
    pub fn is_periodic(&self) -> bool {
        self.interval.is_some() || self.cron.is_some()
    }

    /// Whether completed savepoints are ever disposed by retention.
    pub fn retires(&self) -> bool {
        self.max_retained > 0 || self.max_age.is_some()
    }
}

/// Everything RegisterJob says about a job; persisted so a restart brings the job back.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: JobId,
    pub vertices: Vec<VertexSpec>,
    pub trigger_vertices: Vec<String>,
    pub wait_for_vertices: Vec<String>,
    pub commit_vertices: Vec<String>,
    pub policy: CheckpointPolicy,
    /// Default savepoint target for this job; None means the server's default.
    pub savepoint_dir: Option<String>,
    pub savepoint_policy: SavepointPolicy,
}

impl JobSpec {
    pub fn vertex(&self, id: &str) -> Option<&VertexSpec> {
        self.vertices.iter().find(|v| v.id == id)
    }

    /// Checks the spec and fills defaults: every named vertex exists, parallelism fits
    /// max parallelism, no duplicates, the policy is sane. Errors name the bad field.
    pub fn validate(mut self) -> Result<JobSpec, String> {
        validate_name(self.job_id.as_str()).map_err(|e| format!("job_id {e}"))?;
        if self.vertices.is_empty() {
            return Err("vertices must not be empty".to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, vertex) in self.vertices.iter_mut().enumerate() {
            validate_name(&vertex.id).map_err(|e| format!("vertices[{i}].id {e}"))?;
            if !seen.insert(vertex.id.clone()) {
                return Err(format!("vertices[{i}].id {:?} is listed twice", vertex.id));
            }
            if vertex.max_parallelism == 0 {
                vertex.max_parallelism = DEFAULT_MAX_PARALLELISM.max(vertex.parallelism);
            }
            if vertex.parallelism == 0 {
                return Err(format!("vertices[{i}].parallelism must be at least 1"));
            }
            if vertex.max_parallelism > 32_768 {
                return Err(format!(
                    "vertices[{i}].max_parallelism is {}, at most 32768 allowed",
                    vertex.max_parallelism
                ));
            }
            if vertex.parallelism > vertex.max_parallelism {
                return Err(format!(
                    "vertices[{i}].parallelism {} exceeds max_parallelism {}",
                    vertex.parallelism, vertex.max_parallelism
                ));
            }
        }
        if self.trigger_vertices.is_empty() {
            return Err("trigger_vertices must name at least one vertex (the sources)".into());
        }
        let all: Vec<String> = self.vertices.iter().map(|v| v.id.clone()).collect();
        if self.wait_for_vertices.is_empty() {
            self.wait_for_vertices = all.clone();
        }
        if self.commit_vertices.is_empty() {
            self.commit_vertices = all;
        }
        for (field, list) in [
            ("trigger_vertices", &self.trigger_vertices),
            ("wait_for_vertices", &self.wait_for_vertices),
            ("commit_vertices", &self.commit_vertices),
        ] {
            let mut listed = std::collections::HashSet::new();
            for name in list {
                if !seen.contains(name) {
                    return Err(format!("{field} names unknown vertex {name:?}"));
                }
                if !listed.insert(name) {
                    return Err(format!("{field} lists vertex {name:?} twice"));
                }
            }
        }
        let policy = &mut self.policy;
        if policy.interval == Some(Duration::ZERO) {
            policy.interval = None;
        }
        if policy.timeout.is_zero() {
            policy.timeout = CheckpointPolicy::default().timeout;
        }
        if policy.max_concurrent == 0 {
            policy.max_concurrent = 1;
        }
        if policy.retained == 0 {
            policy.retained = 1;
        }
        if let Some(interval) = policy.interval
            && interval < Duration::from_millis(10)
        {
            return Err(format!(
                "policy.interval_ms is {}, at least 10 ms required",
                interval.as_millis()
            ));
        }
        if policy.max_concurrent > 1000 {
            return Err("policy.max_concurrent is above 1000".to_string());
        }
        if policy.retained > 1000 {
            return Err("policy.retained is above 1000".to_string());
        }
        if let Some(dir) = &self.savepoint_dir
            && dir.trim().is_empty()
        {
            self.savepoint_dir = None;
        }
        let savepoints = &mut self.savepoint_policy;
        if savepoints.interval == Some(Duration::ZERO) {
            savepoints.interval = None;
        }
        if savepoints.max_age == Some(Duration::ZERO) {
            savepoints.max_age = None;
        }
        if let Some(cron) = &savepoints.cron
            && cron.trim().is_empty()
        {
            savepoints.cron = None;
        }
        if savepoints.interval.is_some() && savepoints.cron.is_some() {
            return Err("savepoint_policy sets both interval_ms and cron; choose one".to_string());
        }
        if let Some(interval) = savepoints.interval
            && interval < Duration::from_secs(1)
        {
            return Err(format!(
                "savepoint_policy.interval_ms is {}, at least 1000 ms required",
                interval.as_millis()
            ));
        }
        if let Some(cron) = &savepoints.cron {
            super::schedule::CronSchedule::parse(cron)
                .map_err(|e| format!("savepoint_policy.cron {e}"))?;
        }
        Ok(self)
    }

    /// Total number of subtasks over all vertices.
    pub fn subtask_count(&self) -> usize {
        self.vertices.iter().map(|v| v.parallelism as usize).sum()
    }
}

/// Job status as reported by whoever runs the job.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum JobStatus {
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Suspended,
    Restarting,
}

/// Execution state of one attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum TaskState {
    Created,
    Scheduled,
    Deploying,
    Running,
    Finished,
    Canceling,
    Canceled,
    Failed,
}

impl TaskState {
    /// A terminal attempt never acknowledges anything again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Canceled | TaskState::Failed
        )
    }
}

/// Checkpoint or savepoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Checkpoint => "checkpoint",
            SnapshotKind::Savepoint => "savepoint",
        })
    }
}

/// Inclusive range of key groups.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyGroupRange {
    pub start: u32,
    pub end: u32,
}

impl KeyGroupRange {
    /// Key groups owned by `subtask` of an operator with `parallelism` and
    /// `max_parallelism` key groups (Flink's KeyGroupRangeAssignment).
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, subtask: u32) -> KeyGroupRange {
        let max = u64::from(max_parallelism);
        let p = u64::from(parallelism);
        let i = u64::from(subtask);
        let start = (i * max).div_ceil(p);
        let end = ((i + 1) * max).div_ceil(p) - 1;
        KeyGroupRange {
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn intersect(self, other: KeyGroupRange) -> Option<KeyGroupRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start <= end).then_some(KeyGroupRange { start, end })
    }
}

/// Where a handle's bytes are.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum StateData {
    Inline(Bytes),
    Reference { uri: String, size_bytes: u64 },
}

/// What a task reports for (part of) its snapshot.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StateHandle {
    pub name: String,
    pub data: StateData,
    /// Present for keyed state; keyed state can be redistributed on rescaling.
    pub key_groups: Option<KeyGroupRange>,
}

impl StateHandle {
    pub fn size_bytes(&self) -> u64 {
        match &self.data {
            StateData::Inline(bytes) => bytes.len() as u64,
            StateData::Reference { size_bytes, .. } => *size_bytes,
        }
    }
}

/// The acknowledged state of one subtask within a completed snapshot.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SubtaskState {
    pub subtask_index: u32,
    pub handles: Vec<StateHandle>,
}

/// The state of one vertex within a completed snapshot.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VertexState {
    pub vertex_id: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// Subtasks in index order.
    pub subtasks: Vec<SubtaskState>,
}

/// A snapshot that every awaited task acknowledged: what the stores persist and what a
/// restore maps onto a job.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CompletedSnapshot {
    pub job_id: JobId,
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    pub trigger_timestamp_ms: u64,
    pub completion_timestamp_ms: u64,
    pub vertices: Vec<VertexState>,
    /// Set on a savepoint that a job restored in CLAIM mode and now retains as a
    /// checkpoint: the savepoint's path, disposed of once the checkpoint is subsumed.
    pub claimed_path: Option<String>,
}

impl CompletedSnapshot {
    pub fn state_size_bytes(&self) -> u64 {
        self.vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .flat_map(|s| &s.handles)
            .map(StateHandle::size_bytes)
            .sum()
    }

    /// Checks that the assembled state is consistent before it is written: keyed state
    /// must lie within the key groups of the subtask that reported it, else a restore
    /// would hand some key groups out twice (or not at all).
    pub fn check_consistent(&self) -> Result<(), FinalizeError> {
        for vertex in &self.vertices {
            for subtask in &vertex.subtasks {
                let own = KeyGroupRange::for_subtask(
                    vertex.max_parallelism,
                    vertex.parallelism,
                    subtask.subtask_index,
                );
                let outside = subtask.handles.iter().find_map(|h| {
                    let found = h.key_groups?;
                    (found.start < own.start || found.end > own.end).then_some((h, found))
                });
                if let Some((handle, found)) = outside {
                    return Err(FinalizeError::KeyGroupsOutsideSubtask {
                        subtask: SubtaskRef {
                            vertex_id: vertex.vertex_id.clone(),
                            subtask_index: subtask.subtask_index,
                        },
                        state: handle.name.clone(),
                        found,
                        own,
                        max_parallelism: vertex.max_parallelism,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a fully acknowledged snapshot cannot become consistent metadata (FINALIZE).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FinalizeError {
    #[error(
        "subtask {subtask} reported keyed state {state:?} for key groups {}..={}, outside its \
         own key groups {}..={} (max parallelism {max_parallelism})",
        found.start, found.end, own.start, own.end
    )]
    KeyGroupsOutsideSubtask {
        subtask: SubtaskRef,
        state: String,
        found: KeyGroupRange,
        own: KeyGroupRange,
        max_parallelism: u32,
    },
}

impl fmt::Display for JobStatus {
    /// The wire name (as in the proto), which is what users see in every other tool.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Created => "CREATED",
            JobStatus::Running => "RUNNING",
            JobStatus::Failing => "FAILING",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelling => "CANCELLING",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Finished => "FINISHED",
            JobStatus::Suspended => "SUSPENDED",
            JobStatus::Restarting => "RESTARTING",
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Created => "CREATED",
            TaskState::Scheduled => "SCHEDULED",
            TaskState::Deploying => "DEPLOYING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Canceling => "CANCELING",
            TaskState::Canceled => "CANCELED",
            TaskState::Failed => "FAILED",
        })
    }
}

impl fmt::Display for SavepointTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SavepointTrigger::Manual => "MANUAL",
            SavepointTrigger::Periodic => "PERIODIC",
            SavepointTrigger::Stop => "STOP",
        })
    }
}

/// Why a savepoint was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SavepointTrigger {
    Manual,
    Periodic,
    Stop,
}

/// A savepoint request as recorded durably, so clients can look it up (also after a
/// restart of the server) and repeat it idempotently.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SavepointOperation {
    /// The client's request id, or one the server picked.
    pub operation_id: String,
    pub job_id: JobId,
    pub checkpoint_id: CheckpointId,
    pub trigger: SavepointTrigger,
    /// For stop-with-savepoint: whether the job drains.
    pub drain: bool,
    /// Where the savepoint is (or will be).
    pub path: String,
    pub trigger_timestamp_ms: u64,
    pub outcome: OperationOutcome,
}

/// Where a savepoint operation stands.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum OperationOutcome {
    Pending,
    Completed {
        completion_timestamp_ms: u64,
        state_size_bytes: u64,
    },
    Failed {
        completion_timestamp_ms: u64,
        failure: SnapshotFailure,
    },
}

impl SavepointOperation {
    pub fn is_pending(&self) -> bool {
        self.outcome == OperationOutcome::Pending
    }
}

/// What tasks do after the snapshot they are triggered for completes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum PostSnapshotAction {
    #[default]
    None,
    /// Stop-with-savepoint without draining.
    Stop,
    /// Stop-with-savepoint, draining (final watermark, flush) first.
    Drain,
}

/// Who owns a restored snapshot afterwards (as in Flink's restore modes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum ClaimMode {
    /// The snapshot stays the user's; the first checkpoint after the restore is full.
    #[default]
    NoClaim,
    /// The job retains the snapshot as a checkpoint and deletes it once subsumed.
    Claim,
}

/// Why a snapshot failed or was refused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum FailureReason {
    TasksNotRunning,
    Declined,
    Expired,
    Subsumed,
    StoreIo,
    Finalize,
    CoordinatorShutDown,
    JobNotRunning,
    TooManyConcurrent,
    MinPause,
    TaskFailure,
}

impl FailureReason {
    /// Whether this failure counts toward the tolerable consecutive checkpoint failures.
    pub fn counts_toward_tolerance(self) -> bool {
        matches!(
            self,
            FailureReason::Expired
                | FailureReason::Declined
                | FailureReason::StoreIo
                | FailureReason::Finalize
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::TasksNotRunning => "TASKS_NOT_RUNNING",
            FailureReason::Declined => "DECLINED",
            FailureReason::Expired => "EXPIRED",
            FailureReason::Subsumed => "SUBSUMED",
            FailureReason::StoreIo => "STORE_IO",
            FailureReason::Finalize => "FINALIZE",
            FailureReason::CoordinatorShutDown => "COORDINATOR_SHUT_DOWN",
            FailureReason::JobNotRunning => "JOB_NOT_RUNNING",
            FailureReason::TooManyConcurrent => "TOO_MANY_CONCURRENT",
            FailureReason::MinPause => "MIN_PAUSE",
            FailureReason::TaskFailure => "TASK_FAILURE",
        }
    }
}

/// A failed or refused snapshot: one typed reason plus a message a person can act on.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SnapshotFailure {
    pub reason: FailureReason,
    pub message: String,
}

impl SnapshotFailure {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        SnapshotFailure {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for SnapshotFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_group_ranges_partition_all_groups() {
        for (max, p) in [(128, 1), (128, 3), (128, 128), (10, 4), (7, 7)] {
            let mut next = 0;
            for i in 0..p {
                let range = KeyGroupRange::for_subtask(max, p, i);
                assert_eq!(range.start, next, "max {max} p {p} subtask {i}");
                assert!(range.end >= range.start);
                next = range.end + 1;
            }
            assert_eq!(next, max);
        }
    }

    fn keyed_snapshot(ranges: &[(u32, u32)]) -> CompletedSnapshot {
        CompletedSnapshot {
            job_id: JobId::new("j"),
            checkpoint_id: CheckpointId(1),
            kind: SnapshotKind::Checkpoint,
            trigger_timestamp_ms: 0,
            completion_timestamp_ms: 0,
            vertices: vec![VertexState {
                vertex_id: "map".to_string(),
                parallelism: ranges.len() as u32,
                max_parallelism: 128,
                subtasks: ranges
                    .iter()
                    .enumerate()
                    .map(|(i, &(start, end))| SubtaskState {
                        subtask_index: i as u32,
                        handles: vec![StateHandle {
                            name: "window".to_string(),
                            data: StateData::Inline(Bytes::from_static(b"x")),
                            key_groups: Some(KeyGroupRange { start, end }),
                        }],
                    })
                    .collect(),
            }],
            claimed_path: None,
        }
    }

    #[test]
    fn keyed_state_must_stay_within_its_subtasks_key_groups() {
        assert_eq!(
            keyed_snapshot(&[(0, 63), (64, 127)]).check_consistent(),
            Ok(())
        );
        assert_eq!(
            keyed_snapshot(&[(10, 20), (64, 64)]).check_consistent(),
            Ok(())
        );
        let error = keyed_snapshot(&[(0, 63), (60, 127)])
            .check_consistent()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "subtask map#1 reported keyed state \"window\" for key groups 60..=127, outside \
             its own key groups 64..=127 (max parallelism 128)"
        );
        assert!(keyed_snapshot(&[(0, 128)]).check_consistent().is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("job-1.a_b").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
    }
}
