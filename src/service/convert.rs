//! Every conversion between wire messages ([`crate::proto`]) and core types, in one place.
//!
//! Decoding validates each client input and fails with `INVALID_ARGUMENT` and a message
//! that names the offending field (`handles[2].data must be set ...`), so a caller can fix
//! the request without reading server logs. Encoding (core -> wire) cannot fail.

use crate::coordinator::gateway::TaskMessage;
use crate::coordinator::model::{
    self, AttemptId, CheckpointId, FailureReason, JobId, JobSpec, JobStatus, KeyGroupRange,
    SnapshotKind, StateData, StateHandle, TaskManagerId, TaskState, VertexSpec,
};
use crate::coordinator::restore::SubtaskAssignment;
use crate::coordinator::stats::{
    JobStats, RestoreStats, SnapshotStats, SnapshotStatus, SubtaskSample, Summary,
};
use crate::coordinator::{
    AckOutcome, Acknowledgement, Restored, SavepointRequest, TaskRegistration,
};
use crate::proto;
use bytes::Bytes;
use std::time::Duration;
use tonic::Status;

/// Default bound on the inline state bytes of one acknowledgement (4 MiB).
pub const DEFAULT_MAX_INLINE_STATE_BYTES: usize = 4 * 1024 * 1024;

/// Longest task manager id accepted; it is a log field and a map key, not a file name.
const MAX_TASK_MANAGER_ID_LEN: usize = 256;

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Validates a job id (`field` names it in the error) and wraps it.
pub fn job_id(field: &str, value: &str) -> Result<JobId, Status> {
    check_job_id(field, value)?;
    Ok(JobId::new(value))
}

/// Validates a checkpoint id: ids start at 1, so 0 is always a client mistake.
pub fn checkpoint_id(field: &str, value: u64) -> Result<CheckpointId, Status> {
    if value == 0 {
        return Err(invalid(format!(
            "{field} must not be 0 (checkpoint ids start at 1)"
        )));
    }
    Ok(CheckpointId(value))
}

/// Validates an attempt id: 0 is reserved for "no attempt".
pub fn attempt_id(field: &str, value: u64) -> Result<AttemptId, Status> {
    if value == 0 {
        return Err(invalid(format!("{field} must not be 0")));
    }
    Ok(AttemptId(value))
}

/// Validates a task manager id: non-empty, at most 256 characters, no control characters.
/// Unlike job ids it may contain ':' or '/' (host:port style names are common).
pub fn task_manager_id(value: &str) -> Result<TaskManagerId, Status> {
    if value.trim().is_empty() {
        return Err(invalid("task_manager_id must not be empty"));
    }
    if value.len() > MAX_TASK_MANAGER_ID_LEN {
        return Err(invalid(format!(
            "task_manager_id is {} bytes long, at most {MAX_TASK_MANAGER_ID_LEN} allowed",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            "task_manager_id must not contain control characters",
        ));
    }
    Ok(TaskManagerId::new(value))
}

/// Decodes a job status; UNSPECIFIED and unknown numbers are rejected.
pub fn job_status(field: &str, value: i32) -> Result<JobStatus, Status> {
    use proto::JobStatus as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => return Err(invalid(format!("{field} must be set"))),
        Ok(P::Created) => JobStatus::Created,
        Ok(P::Running) => JobStatus::Running,
        Ok(P::Failing) => JobStatus::Failing,
        Ok(P::Failed) => JobStatus::Failed,
        Ok(P::Cancelling) => JobStatus::Cancelling,
        Ok(P::Canceled) => JobStatus::Canceled,
        Ok(P::Finished) => JobStatus::Finished,
        Ok(P::Suspended) => JobStatus::Suspended,
        Ok(P::Restarting) => JobStatus::Restarting,
        Err(_) => return Err(invalid(format!("{field} has unknown value {value}"))),
    })
}

/// Decodes a task state; UNSPECIFIED and unknown numbers are rejected.
pub fn task_state(field: &str, value: i32) -> Result<TaskState, Status> {
    use proto::TaskState as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => return Err(invalid(format!("{field} must be set"))),
        Ok(P::Created) => TaskState::Created,
        Ok(P::Scheduled) => TaskState::Scheduled,
        Ok(P::Deploying) => TaskState::Deploying,
        Ok(P::Running) => TaskState::Running,
        Ok(P::Finished) => TaskState::Finished,
        Ok(P::Canceling) => TaskState::Canceling,
        Ok(P::Canceled) => TaskState::Canceled,
        Ok(P::Failed) => TaskState::Failed,
        Err(_) => return Err(invalid(format!("{field} has unknown value {value}"))),
    })
}

/// Decodes the state handles of one acknowledgement. `field` is the list's name
/// (`handles`); the sum of inline bytes must not exceed `max_inline_state_bytes`.
pub fn state_handles(
    field: &str,
    handles: Vec<proto::StateHandle>,
    max_inline_state_bytes: usize,
) -> Result<Vec<StateHandle>, Status> {
    let inline_bytes: usize = handles
        .iter()
        .map(|h| match &h.data {
            Some(proto::state_handle::Data::Inline(bytes)) => bytes.len(),
            _ => 0,
        })
        .sum();
    if inline_bytes > max_inline_state_bytes {
        // A size limit, like gRPC's own message limit: RESOURCE_EXHAUSTED.
        return Err(Status::resource_exhausted(format!(
            "{field} carry {inline_bytes} bytes of inline state, more than the limit of \
             {max_inline_state_bytes} bytes per acknowledgement; write large state yourself \
             and send a reference (uri and size) instead"
        )));
    }
    // A list of its own, exactly as long: the decoded one has room to spare, and the
    // handles stay in memory until their checkpoint is subsumed.
    let mut decoded = Vec::with_capacity(handles.len());
    for (i, handle) in handles.into_iter().enumerate() {
        decoded.push(state_handle(field, i, handle)?);
    }
    Ok(decoded)
}

/// Decodes handle `index` of the list `list`; its field name is only formatted for an
/// error, since every acknowledgement passes through here.
fn state_handle(
    list: &str,
    index: usize,
    handle: proto::StateHandle,
) -> Result<StateHandle, Status> {
    let field = || format!("{list}[{index}]");
    let data = match handle.data {
        None => {
            return Err(invalid(format!(
                "{}.data must be set (inline or reference)",
                field()
            )));
        }
        // Copied out of the stream's receive buffer: a slice of it would keep the whole
        // buffer alive for as long as the checkpoint is pending or retained.
        Some(proto::state_handle::Data::Inline(bytes)) => {
            StateData::Inline(Bytes::copy_from_slice(&bytes))
        }
        Some(proto::state_handle::Data::Reference(reference)) => {
            if reference.uri.trim().is_empty() {
                return Err(invalid(format!(
                    "{}.reference.uri must not be empty",
                    field()
                )));
            }
            StateData::Reference {
                uri: reference.uri,
                size_bytes: reference.size_bytes,
            }
        }
    };
    let key_groups = match handle.key_groups {
        None => None,
        Some(range) if range.start > range.end => {
            return Err(invalid(format!(
                "{}.key_groups.start ({}) must not be greater than key_groups.end ({}); \
                 the range is inclusive",
                field(),
                range.start,
                range.end
            )));
        }
        Some(range) => Some(KeyGroupRange {
            start: range.start,
            end: range.end,
        }),
    };
    Ok(StateHandle {
        name: handle.name,
        data,
        key_groups,
    })
}

/// Decodes an acknowledgement into the job it is for and the core's [`Acknowledgement`].
pub fn acknowledgement(
    request: proto::AcknowledgeRequest,
    max_inline_state_bytes: usize,
) -> Result<(JobId, Acknowledgement), Status> {
    let job = job_id("job_id", &request.job_id)?;
    Ok((job, acknowledgement_of(request, max_inline_state_bytes)?))
}

/// Decodes an acknowledgement whose `job_id` the caller checks itself (the stream path,
/// which only needs it as a `&str`); the request's `job_id` is ignored.
pub fn acknowledgement_of(
    request: proto::AcknowledgeRequest,
    max_inline_state_bytes: usize,
) -> Result<Acknowledgement, Status> {
    let checkpoint_id = checkpoint_id("checkpoint_id", request.checkpoint_id)?;
    let attempt_id = attempt_id("attempt_id", request.attempt_id)?;
    let handles = state_handles("handles", request.handles, max_inline_state_bytes)?;
    Ok(Acknowledgement {
        checkpoint_id,
        attempt_id,
        handles,
        fencing_token: request.fencing_token,
    })
}

/// Checks a job id without allocating one (see [`job_id`]).
pub fn check_job_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    model::validate_name(value).map_err(|e| invalid(format!("{field} {e}")))
}

/// A validated decline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    /// The job the declined snapshot belongs to.
    pub job_id: JobId,
    /// The declined snapshot.
    pub checkpoint_id: CheckpointId,
    /// The attempt that declines.
    pub attempt_id: AttemptId,
    /// The task's cause; a placeholder when the task gave none.
    pub reason: String,
    /// 0 skips the fencing check.
    pub fencing_token: u64,
}

/// Decodes a decline; an empty reason is allowed but replaced by a placeholder so the
/// failure message a savepoint caller sees never ends in a bare colon.
pub fn decline(request: proto::DeclineRequest) -> Result<Decline, Status> {
    let reason = if request.reason.trim().is_empty() {
        "no reason given".to_string()
    } else {
        request.reason
    };
    Ok(Decline {
        job_id: job_id("job_id", &request.job_id)?,
        checkpoint_id: checkpoint_id("checkpoint_id", request.checkpoint_id)?,
        attempt_id: attempt_id("attempt_id", request.attempt_id)?,
        reason,
        fencing_token: request.fencing_token,
    })
}

/// Decodes one task of Hello or RegisterTasks; `field` names it (`tasks[3]`).
pub fn task_registration(field: &str, task: proto::TaskInfo) -> Result<TaskRegistration, Status> {
    let job = job_id(&format!("{field}.job_id"), &task.job_id)?;
    let subtask = task
        .subtask
        .ok_or_else(|| invalid(format!("{field}.subtask must be set")))?;
    if subtask.vertex_id.is_empty() {
        return Err(invalid(format!(
            "{field}.subtask.vertex_id must not be empty"
        )));
    }
    model::validate_name(&subtask.vertex_id)
        .map_err(|e| invalid(format!("{field}.subtask.vertex_id {e}")))?;
    Ok(TaskRegistration {
        job_id: job.as_str().to_string(),
        vertex_id: subtask.vertex_id,
        subtask_index: subtask.subtask_index,
        attempt_id: attempt_id(&format!("{field}.attempt_id"), task.attempt_id)?,
        state: task_state(&format!("{field}.state"), task.state)?,
    })
}

/// A validated task state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStateChange {
    /// The job of the attempt.
    pub job_id: JobId,
    /// The attempt whose state changed.
    pub attempt_id: AttemptId,
    /// Its new state.
    pub state: TaskState,
}

/// Decodes a task state update from a task manager stream.
pub fn task_state_change(update: proto::TaskStateUpdate) -> Result<TaskStateChange, Status> {
    Ok(TaskStateChange {
        job_id: job_id("job_id", &update.job_id)?,
        attempt_id: attempt_id("attempt_id", update.attempt_id)?,
        state: task_state("state", update.state)?,
    })
}

/// Decodes RegisterJob into a [`JobSpec`]. Only shape is checked here (names, enum
/// values); the core's `JobSpec::validate` checks the topology and fills defaults.
pub fn job_spec(request: proto::RegisterJobRequest) -> Result<JobSpec, Status> {
    let job = job_id("job_id", &request.job_id)?;
    let vertices = request
        .vertices
        .into_iter()
        .enumerate()
        .map(|(i, vertex)| {
            if vertex.id.is_empty() {
                return Err(invalid(format!("vertices[{i}].id must not be empty")));
            }
            model::validate_name(&vertex.id)
                .map_err(|e| invalid(format!("vertices[{i}].id {e}")))?;
            Ok(VertexSpec {
                id: vertex.id,
                parallelism: vertex.parallelism,
                max_parallelism: vertex.max_parallelism,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let policy = request.policy.unwrap_or_default();
    let savepoints = request.savepoint_policy.unwrap_or_default();
    let savepoint_dir = Some(request.savepoint_dir).filter(|dir| !dir.trim().is_empty());
    Ok(JobSpec {
        job_id: job,
        vertices,
        trigger_vertices: request.trigger_vertices,
        wait_for_vertices: request.wait_for_vertices,
        commit_vertices: request.commit_vertices,
        policy: model::CheckpointPolicy {
            interval: (policy.interval_ms > 0).then(|| Duration::from_millis(policy.interval_ms)),
            timeout: Duration::from_millis(policy.timeout_ms),
            min_pause: Duration::from_millis(policy.min_pause_ms),
            max_concurrent: policy.max_concurrent,
            retained: policy.retained,
            tolerable_failures: policy.tolerable_failures,
        },
        savepoint_dir,
        savepoint_policy: model::SavepointPolicy {
            interval: (savepoints.interval_ms > 0)
                .then(|| Duration::from_millis(savepoints.interval_ms)),
            cron: Some(savepoints.cron).filter(|cron| !cron.trim().is_empty()),
            max_retained: savepoints.max_retained,
            max_age: (savepoints.max_age_ms > 0)
                .then(|| Duration::from_millis(savepoints.max_age_ms)),
        },
    })
}

/// Decodes a claim mode; unspecified means NO_CLAIM.
pub fn claim_mode(field: &str, value: i32) -> Result<model::ClaimMode, Status> {
    match proto::ClaimMode::try_from(value) {
        Ok(proto::ClaimMode::Unspecified | proto::ClaimMode::NoClaim) => {
            Ok(model::ClaimMode::NoClaim)
        }
        Ok(proto::ClaimMode::Claim) => Ok(model::ClaimMode::Claim),
        Err(_) => Err(invalid(format!("{field} {value} is not a ClaimMode value"))),
    }
}

fn claim_mode_to_proto(mode: model::ClaimMode) -> proto::ClaimMode {
    match mode {
        model::ClaimMode::NoClaim => proto::ClaimMode::NoClaim,
        model::ClaimMode::Claim => proto::ClaimMode::Claim,
    }
}

/// An optional idempotency key: empty means "not given"; the core checks its shape.
pub fn optional_request_id(value: String) -> Option<String> {
    Some(value).filter(|id| !id.is_empty())
}

pub fn savepoint_trigger_to_proto(trigger: model::SavepointTrigger) -> proto::SavepointTrigger {
    match trigger {
        model::SavepointTrigger::Manual => proto::SavepointTrigger::Manual,
        model::SavepointTrigger::Periodic => proto::SavepointTrigger::Periodic,
        model::SavepointTrigger::Stop => proto::SavepointTrigger::Stop,
    }
}

fn post_snapshot_action_to_proto(action: model::PostSnapshotAction) -> proto::PostSnapshotAction {
    match action {
        model::PostSnapshotAction::None => proto::PostSnapshotAction::None,
        model::PostSnapshotAction::Stop => proto::PostSnapshotAction::Stop,
        model::PostSnapshotAction::Drain => proto::PostSnapshotAction::Drain,
    }
}

/// Encodes a savepoint operation.
pub fn operation_to_proto(operation: model::SavepointOperation) -> proto::SavepointOperation {
    let mut encoded = proto::SavepointOperation {
        operation_id: operation.operation_id,
        job_id: operation.job_id.as_str().to_string(),
        status: proto::OperationStatus::Pending.into(),
        checkpoint_id: operation.checkpoint_id.0,
        trigger: savepoint_trigger_to_proto(operation.trigger).into(),
        path: operation.path,
        trigger_timestamp_ms: operation.trigger_timestamp_ms,
        drain: operation.drain,
        ..Default::default()
    };
    match operation.outcome {
        model::OperationOutcome::Pending => {}
        model::OperationOutcome::Completed {
            completion_timestamp_ms,
            state_size_bytes,
        } => {
            encoded.status = proto::OperationStatus::Completed.into();
            encoded.completion_timestamp_ms = completion_timestamp_ms;
            encoded.state_size_bytes = state_size_bytes;
        }
        model::OperationOutcome::Failed {
            completion_timestamp_ms,
            failure,
        } => {
            encoded.status = proto::OperationStatus::Failed.into();
            encoded.completion_timestamp_ms = completion_timestamp_ms;
            encoded.failure_reason = failure_reason_to_proto(failure.reason).into();
            encoded.failure_message = failure.message;
        }
    }
    encoded.duration_ms = encoded
        .completion_timestamp_ms
        .saturating_sub(encoded.trigger_timestamp_ms);
    encoded
}

/// Encodes an entry of a job's savepoint history.
pub fn savepoint_info_to_proto(record: crate::store::SavepointRecord) -> proto::SavepointInfo {
    proto::SavepointInfo {
        checkpoint_id: record.checkpoint_id.0,
        path: record.path,
        trigger: savepoint_trigger_to_proto(record.trigger).into(),
        trigger_timestamp_ms: record.trigger_timestamp_ms,
        completion_timestamp_ms: record.completion_timestamp_ms,
        state_size_bytes: record.state_size_bytes,
    }
}

/// An optional directory field: empty or blank means "not given".
pub fn optional_directory(value: String) -> Option<String> {
    Some(value).filter(|dir| !dir.trim().is_empty())
}

/// A validated TriggerSavepoint or StopWithSavepoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointCall {
    /// The job to take the savepoint of.
    pub job_id: JobId,
    /// What the core is asked for.
    pub request: SavepointRequest,
    /// Answer at once with the operation instead of waiting for the outcome.
    pub detach: bool,
}

/// Decodes TriggerSavepoint.
pub fn trigger_savepoint(request: proto::TriggerSavepointRequest) -> Result<SavepointCall, Status> {
    Ok(SavepointCall {
        job_id: job_id("job_id", &request.job_id)?,
        request: SavepointRequest {
            request_id: optional_request_id(request.request_id),
            ..SavepointRequest::manual(optional_directory(request.target_directory))
        },
        detach: request.detach,
    })
}

/// Decodes StopWithSavepoint.
pub fn stop_with_savepoint(
    request: proto::StopWithSavepointRequest,
) -> Result<SavepointCall, Status> {
    Ok(SavepointCall {
        job_id: job_id("job_id", &request.job_id)?,
        request: SavepointRequest {
            request_id: optional_request_id(request.request_id),
            ..SavepointRequest::stop(optional_directory(request.target_directory), request.drain)
        },
        detach: request.detach,
    })
}

/// A validated RestoreSavepoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSavepoint {
    /// The job whose subtasks start from the savepoint.
    pub job_id: JobId,
    /// The savepoint (its directory or its metadata file); the store checks where it is.
    pub path: String,
    /// Skip state of vertices the job does not have instead of refusing.
    pub allow_non_restored_state: bool,
    /// Who owns the savepoint afterwards.
    pub claim_mode: model::ClaimMode,
}

/// Decodes RestoreSavepoint.
pub fn restore_savepoint(
    request: proto::RestoreSavepointRequest,
) -> Result<RestoreSavepoint, Status> {
    let job_id = job_id("job_id", &request.job_id)?;
    if request.path.trim().is_empty() {
        return Err(invalid("path must not be empty"));
    }
    Ok(RestoreSavepoint {
        job_id,
        claim_mode: claim_mode("claim_mode", request.claim_mode)?,
        path: request.path,
        allow_non_restored_state: request.allow_non_restored_state,
    })
}

/// Parses a `grpc-timeout` header value (at most 8 digits and a unit: `H` hours, `M`
/// minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds), as
/// specified in gRPC over HTTP/2. None for anything malformed.
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    if !value.is_char_boundary(unit_at) {
        return None;
    }
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes a snapshot kind.
pub fn snapshot_kind_to_proto(kind: SnapshotKind) -> proto::SnapshotKind {
    match kind {
        SnapshotKind::Checkpoint => proto::SnapshotKind::Checkpoint,
        SnapshotKind::Savepoint => proto::SnapshotKind::Savepoint,
    }
}

/// Encodes a job status.
pub fn job_status_to_proto(status: JobStatus) -> proto::JobStatus {
    match status {
        JobStatus::Created => proto::JobStatus::Created,
        JobStatus::Running => proto::JobStatus::Running,
        JobStatus::Failing => proto::JobStatus::Failing,
        JobStatus::Failed => proto::JobStatus::Failed,
        JobStatus::Cancelling => proto::JobStatus::Cancelling,
        JobStatus::Canceled => proto::JobStatus::Canceled,
        JobStatus::Finished => proto::JobStatus::Finished,
        JobStatus::Suspended => proto::JobStatus::Suspended,
        JobStatus::Restarting => proto::JobStatus::Restarting,
    }
}

/// Encodes a failure reason.
pub fn failure_reason_to_proto(reason: FailureReason) -> proto::FailureReason {
    match reason {
        FailureReason::TasksNotRunning => proto::FailureReason::TasksNotRunning,
        FailureReason::Declined => proto::FailureReason::Declined,
        FailureReason::Expired => proto::FailureReason::Expired,
        FailureReason::Subsumed => proto::FailureReason::Subsumed,
        FailureReason::StoreIo => proto::FailureReason::StoreIo,
        FailureReason::Finalize => proto::FailureReason::Finalize,
        FailureReason::CoordinatorShutDown => proto::FailureReason::CoordinatorShutDown,
        FailureReason::JobNotRunning => proto::FailureReason::JobNotRunning,
        FailureReason::TooManyConcurrent => proto::FailureReason::TooManyConcurrent,
        FailureReason::MinPause => proto::FailureReason::MinPause,
        FailureReason::TaskFailure => proto::FailureReason::TaskFailure,
    }
}

/// Encodes what the coordinator did with an acknowledgement.
pub fn ack_outcome_to_proto(outcome: AckOutcome) -> proto::AckOutcome {
    match outcome {
        AckOutcome::Recorded => proto::AckOutcome::Recorded,
        AckOutcome::Completing => proto::AckOutcome::Completing,
        AckOutcome::Duplicate => proto::AckOutcome::Duplicate,
        AckOutcome::Late => proto::AckOutcome::Late,
        AckOutcome::UnknownCheckpoint => proto::AckOutcome::UnknownCheckpoint,
        AckOutcome::NotAwaited => proto::AckOutcome::NotAwaited,
    }
}

fn snapshot_status_to_proto(status: SnapshotStatus) -> proto::SnapshotStatus {
    match status {
        SnapshotStatus::InProgress => proto::SnapshotStatus::InProgress,
        SnapshotStatus::Completed => proto::SnapshotStatus::Completed,
        SnapshotStatus::Failed => proto::SnapshotStatus::Failed,
    }
}

/// Encodes a subtask reference.
pub fn subtask_to_proto(subtask: &model::SubtaskRef) -> proto::SubtaskRef {
    proto::SubtaskRef {
        vertex_id: subtask.vertex_id.clone(),
        subtask_index: subtask.subtask_index,
    }
}

/// Encodes a state handle (for restore assignments).
pub fn state_handle_to_proto(handle: StateHandle) -> proto::StateHandle {
    let data = match handle.data {
        StateData::Inline(bytes) => proto::state_handle::Data::Inline(bytes),
        StateData::Reference { uri, size_bytes } => {
            proto::state_handle::Data::Reference(proto::StateReference { uri, size_bytes })
        }
    };
    proto::StateHandle {
        name: handle.name,
        data: Some(data),
        key_groups: handle.key_groups.map(|range| proto::KeyGroupRange {
            start: range.start,
            end: range.end,
        }),
    }
}

/// Encodes a message for one task attempt as the stream message a task manager receives.
pub fn task_message_to_proto(message: TaskMessage) -> proto::CoordinatorMessage {
    use proto::coordinator_message::Message;
    let message = match message {
        TaskMessage::TriggerCheckpoint {
            job_id,
            checkpoint_id,
            attempt_id,
            timestamp_ms,
            kind,
            location,
            action,
            full,
            fencing_token,
        } => Message::TriggerCheckpoint(proto::TriggerCheckpoint {
            job_id: job_id.as_str().to_string(),
            checkpoint_id: checkpoint_id.0,
            attempt_id: attempt_id.0,
            timestamp_ms,
            kind: snapshot_kind_to_proto(kind).into(),
            fencing_token,
            location,
            action: post_snapshot_action_to_proto(action).into(),
            full,
        }),
        TaskMessage::NotifyCheckpointComplete {
            job_id,
            checkpoint_id,
            attempt_id,
            fencing_token,
        } => Message::NotifyCheckpointComplete(proto::NotifyCheckpointComplete {
            job_id: job_id.as_str().to_string(),
            checkpoint_id: checkpoint_id.0,
            attempt_id: attempt_id.0,
            fencing_token,
        }),
        TaskMessage::AbortCheckpoint {
            job_id,
            checkpoint_id,
            attempt_id,
            failure,
            fencing_token,
        } => Message::AbortCheckpoint(proto::AbortCheckpoint {
            job_id: job_id.as_str().to_string(),
            checkpoint_id: checkpoint_id.0,
            attempt_id: attempt_id.0,
            reason: failure_reason_to_proto(failure.reason).into(),
            message: failure.message,
            fencing_token,
        }),
        TaskMessage::JobStatusChanged {
            job_id,
            status,
            failing,
            message,
            fencing_token,
        } => Message::JobStatusChanged(proto::JobStatusChanged {
            job_id: job_id.as_str().to_string(),
            status: job_status_to_proto(status).into(),
            failing,
            message,
            fencing_token,
        }),
    };
    proto::CoordinatorMessage {
        message: Some(message),
        // Stamped by the stream registry of the term that sends it.
        leader_epoch: 0,
    }
}

/// Encodes the outcome of a restore.
pub fn restore_response(restored: Restored) -> proto::RestoreResponse {
    proto::RestoreResponse {
        checkpoint_id: restored.checkpoint_id.0,
        assignments: restored
            .mapping
            .assignments
            .into_iter()
            .map(
                |SubtaskAssignment { subtask, handles }| proto::SubtaskAssignment {
                    subtask: Some(subtask_to_proto(&subtask)),
                    handles: handles.into_iter().map(state_handle_to_proto).collect(),
                },
            )
            .collect(),
        non_restored_vertices: restored.mapping.non_restored_vertices,
        next_checkpoint_id: restored.next_checkpoint_id.0,
    }
}

/// Encodes a job's statistics; subtask samples are named through `subtask_names`.
pub fn job_stats_to_proto(stats: JobStats) -> proto::GetCheckpointStatsResponse {
    let names = &stats.subtask_names;
    let snapshot = |s: SnapshotStats| snapshot_stats_to_proto(s, names);
    proto::GetCheckpointStatsResponse {
        triggered: stats.triggered,
        in_progress: stats.in_progress,
        completed: stats.completed,
        failed: stats.failed,
        restored: stats.restored,
        discarded_acks: stats.discarded_acks,
        undelivered_messages: stats.undelivered_messages,
        consecutive_failures: stats.consecutive_failures,
        latest_completed: stats.latest_completed.map(snapshot),
        latest_failed: stats.latest_failed.map(snapshot),
        latest_savepoint: stats.latest_savepoint.map(snapshot),
        latest_restore: stats.latest_restore.map(restore_stats_to_proto),
        duration_ms: Some(summary_to_proto(stats.duration_ms)),
        state_size_bytes: Some(summary_to_proto(stats.state_size_bytes)),
        history: stats.history.into_iter().map(snapshot).collect(),
        job_status: job_status_to_proto(stats.job_status).into(),
        failing: stats.failing,
        periodic_savepoints_skipped: stats.periodic_savepoints_skipped,
        last_skip_reason: stats.last_skip_reason.unwrap_or_default(),
        failed_by_reason: stats
            .failed_by_reason
            .into_iter()
            .map(|(reason, count)| (reason.as_str().to_string(), count))
            .collect(),
    }
}

fn snapshot_stats_to_proto(
    stats: SnapshotStats,
    subtask_names: &[model::SubtaskRef],
) -> proto::SnapshotStats {
    let (failure_reason, failure_message) = match stats.failure {
        Some(failure) => (failure_reason_to_proto(failure.reason), failure.message),
        None => (proto::FailureReason::Unspecified, String::new()),
    };
    proto::SnapshotStats {
        checkpoint_id: stats.checkpoint_id.0,
        kind: snapshot_kind_to_proto(stats.kind).into(),
        status: snapshot_status_to_proto(stats.status).into(),
        trigger_timestamp_ms: stats.trigger_timestamp_ms,
        latest_ack_timestamp_ms: stats.latest_ack_timestamp_ms,
        completion_timestamp_ms: stats.completion_timestamp_ms,
        acknowledged_subtasks: stats.acknowledged_subtasks,
        total_subtasks: stats.total_subtasks,
        state_size_bytes: stats.state_size_bytes,
        duration_ms: stats.duration_ms,
        failure_reason: failure_reason.into(),
        failure_message,
        path: stats.path.unwrap_or_default(),
        subtasks: stats
            .subtasks
            .iter()
            .map(|sample| subtask_stats_to_proto(sample, subtask_names))
            .collect(),
        trigger: stats
            .trigger
            .map_or(
                proto::SavepointTrigger::Unspecified,
                savepoint_trigger_to_proto,
            )
            .into(),
        full: stats.full,
    }
}

fn subtask_stats_to_proto(
    sample: &SubtaskSample,
    subtask_names: &[model::SubtaskRef],
) -> proto::SubtaskStats {
    proto::SubtaskStats {
        // An index outside the names would be a core bug; the sample is still worth showing.
        subtask: subtask_names
            .get(sample.task_index as usize)
            .map(subtask_to_proto),
        acknowledged: sample.acknowledged,
        ack_latency_ms: sample.ack_latency_ms,
        state_size_bytes: sample.state_size_bytes,
    }
}

fn restore_stats_to_proto(restore: RestoreStats) -> proto::RestoreStats {
    proto::RestoreStats {
        checkpoint_id: restore.checkpoint_id.0,
        path: restore.path.unwrap_or_default(),
        timestamp_ms: restore.timestamp_ms,
        claim_mode: restore
            .claim_mode
            .map_or(proto::ClaimMode::Unspecified, claim_mode_to_proto)
            .into(),
    }
}

fn summary_to_proto(summary: Summary) -> proto::Summary {
    proto::Summary {
        min: summary.min,
        avg: summary.avg,
        max: summary.max,
        p50: summary.p50,
        p90: summary.p90,
        p99: summary.p99,
        count: summary.count,
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tonic::Code;

    fn inline(bytes: usize) -> proto::StateHandle {
        proto::StateHandle {
            name: "s".into(),
            data: Some(proto::state_handle::Data::Inline(Bytes::from(vec![
                0u8;
                bytes
            ]))),
            key_groups: None,
        }
    }

    fn ack(handles: Vec<proto::StateHandle>) -> proto::AcknowledgeRequest {
        proto::AcknowledgeRequest {
            job_id: "job-1".into(),
            checkpoint_id: 7,
            attempt_id: 3,
            handles,
            ..Default::default()
        }
    }

    fn invalid_message<T: std::fmt::Debug>(result: Result<T, Status>) -> String {
        let status = result.expect_err("expected INVALID_ARGUMENT");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    }

    #[test]
    fn empty_job_id_is_named() {
        assert_eq!(
            invalid_message(job_id("job_id", "")),
            "job_id must not be empty"
        );
    }

    #[test]
    fn bad_job_id_names_the_field_and_the_problem() {
        let message = invalid_message(job_id("job_id", "../etc"));
        assert!(message.starts_with("job_id "), "{message}");
        let message = invalid_message(job_id("tasks[1].job_id", "a b"));
        assert!(
            message.starts_with("tasks[1].job_id contains ' '"),
            "{message}"
        );
    }

    #[test]
    fn unspecified_enums_are_rejected() {
        assert_eq!(
            invalid_message(job_status("status", 0)),
            "status must be set"
        );
        assert_eq!(invalid_message(task_state("state", 0)), "state must be set");
        assert!(invalid_message(job_status("status", 99)).contains("unknown value 99"));
        assert_eq!(job_status("status", 2).ok(), Some(JobStatus::Running));
    }

    #[test]
    fn zero_ids_are_rejected() {
        let mut request = ack(vec![]);
        request.checkpoint_id = 0;
        assert!(invalid_message(acknowledgement(request, 100)).starts_with("checkpoint_id"));
        let mut request = ack(vec![]);
        request.attempt_id = 0;
        assert!(invalid_message(acknowledgement(request, 100)).starts_with("attempt_id"));
    }

    #[test]
    fn handle_without_data_names_its_index() {
        let mut missing = inline(1);
        missing.data = None;
        let message = invalid_message(acknowledgement(
            ack(vec![inline(1), inline(1), missing]),
            100,
        ));
        assert_eq!(message, "handles[2].data must be set (inline or reference)");
    }

    #[test]
    fn reference_needs_a_uri() {
        let reference = proto::StateHandle {
            name: "r".into(),
            data: Some(proto::state_handle::Data::Reference(
                proto::StateReference {
                    uri: " ".into(),
                    size_bytes: 10,
                },
            )),
            key_groups: None,
        };
        let message = invalid_message(acknowledgement(ack(vec![reference]), 100));
        assert_eq!(message, "handles[0].reference.uri must not be empty");
    }

    #[test]
    fn inverted_key_group_range_is_rejected() {
        let mut handle = inline(1);
        handle.key_groups = Some(proto::KeyGroupRange { start: 9, end: 3 });
        let message = invalid_message(acknowledgement(ack(vec![inline(1), handle]), 100));
        assert!(
            message.starts_with("handles[1].key_groups.start (9)"),
            "{message}"
        );
    }

    #[test]
    fn inline_limit_applies_to_the_sum_of_one_ack() {
        let ok = acknowledgement(ack(vec![inline(60), inline(40)]), 100);
        assert!(ok.is_ok());
        let refused = acknowledgement(ack(vec![inline(60), inline(41)]), 100).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let message = refused.message();
        assert!(message.contains("101 bytes"), "{message}");
        assert!(message.contains("limit of 100 bytes"), "{message}");
    }

    #[test]
    fn ack_is_decoded() {
        let mut handle = inline(3);
        handle.key_groups = Some(proto::KeyGroupRange { start: 0, end: 63 });
        let (job, decoded) = acknowledgement(ack(vec![handle]), 100).expect("valid");
        assert_eq!(job.as_str(), "job-1");
        assert_eq!(decoded.checkpoint_id, CheckpointId(7));
        assert_eq!(decoded.attempt_id, AttemptId(3));
        assert_eq!(
            decoded.handles[0].key_groups,
            Some(KeyGroupRange { start: 0, end: 63 })
        );
    }

    #[test]
    fn task_registration_names_nested_fields() {
        let task = proto::TaskInfo {
            job_id: "j".into(),
            subtask: None,
            attempt_id: 1,
            state: proto::TaskState::Running.into(),
        };
        assert_eq!(
            invalid_message(task_registration("tasks[4]", task.clone())),
            "tasks[4].subtask must be set"
        );
        let unspecified = proto::TaskInfo {
            subtask: Some(proto::SubtaskRef {
                vertex_id: "src".into(),
                subtask_index: 0,
            }),
            state: 0,
            ..task
        };
        assert_eq!(
            invalid_message(task_registration("tasks[0]", unspecified)),
            "tasks[0].state must be set"
        );
    }

    #[test]
    fn task_manager_id_must_be_usable() {
        assert!(invalid_message(task_manager_id("")).starts_with("task_manager_id"));
        assert!(invalid_message(task_manager_id("a\nb")).contains("control"));
        assert!(task_manager_id("10.0.0.1:6122-abc").is_ok());
    }

    #[test]
    fn register_job_maps_milliseconds_and_defaults() {
        let request = proto::RegisterJobRequest {
            job_id: "j".into(),
            vertices: vec![proto::Vertex {
                id: "src".into(),
                parallelism: 2,
                max_parallelism: 0,
            }],
            trigger_vertices: vec!["src".into()],
            policy: Some(proto::CheckpointPolicy {
                interval_ms: 0,
                timeout_ms: 1500,
                min_pause_ms: 20,
                ..Default::default()
            }),
            savepoint_dir: "  ".into(),
            ..Default::default()
        };
        let spec = job_spec(request).expect("valid");
        assert_eq!(spec.policy.interval, None);
        assert_eq!(spec.policy.timeout, Duration::from_millis(1500));
        assert_eq!(spec.policy.min_pause, Duration::from_millis(20));
        assert_eq!(spec.savepoint_dir, None);
        let bad = proto::RegisterJobRequest {
            job_id: "j".into(),
            vertices: vec![proto::Vertex::default()],
            ..Default::default()
        };
        assert_eq!(
            invalid_message(job_spec(bad)),
            "vertices[0].id must not be empty"
        );
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn grpc_timeout_rejects_malformed_values() {
        for value in [
            "",
            "S",
            "10",
            "10x",
            "123456789S",
            "-1S",
            "+1S",
            "1.5S",
            "1 S",
            "1é",
        ] {
            assert_eq!(grpc_timeout(value), None, "{value:?}");
        }
    }

    #[test]
    fn stats_resolve_subtask_names() {
        let stats = JobStats {
            job_status: JobStatus::Running,
            triggered: 1,
            in_progress: 0,
            completed: 1,
            failed: 0,
            restored: 0,
            discarded_acks: 0,
            undelivered_messages: 0,
            consecutive_failures: 0,
            failing: false,
            latest_completed: None,
            latest_failed: None,
            latest_savepoint: None,
            latest_restore: None,
            duration_ms: Summary::default(),
            state_size_bytes: Summary::default(),
            history: vec![SnapshotStats {
                checkpoint_id: CheckpointId(4),
                kind: SnapshotKind::Savepoint,
                status: SnapshotStatus::Failed,
                trigger_timestamp_ms: 1,
                latest_ack_timestamp_ms: 2,
                completion_timestamp_ms: 3,
                acknowledged_subtasks: 1,
                total_subtasks: 2,
                state_size_bytes: 5,
                duration_ms: 2,
                failure: Some(model::SnapshotFailure::new(FailureReason::Declined, "no")),
                path: None,
                subtasks: vec![SubtaskSample {
                    task_index: 1,
                    acknowledged: true,
                    ack_latency_ms: 9,
                    state_size_bytes: 5,
                }],
                trigger: Some(model::SavepointTrigger::Manual),
                full: true,
            }],
            failed_by_reason: [(FailureReason::Declined, 1)].into(),
            periodic_savepoints_skipped: 0,
            last_skip_reason: None,
            subtask_names: vec![
                model::SubtaskRef {
                    vertex_id: "src".into(),
                    subtask_index: 0,
                },
                model::SubtaskRef {
                    vertex_id: "sink".into(),
                    subtask_index: 0,
                },
            ],
        };
        let response = job_stats_to_proto(stats);
        let snapshot = &response.history[0];
        assert_eq!(
            snapshot.failure_reason,
            proto::FailureReason::Declined as i32
        );
        assert_eq!(snapshot.kind, proto::SnapshotKind::Savepoint as i32);
        let subtask = snapshot.subtasks[0].subtask.as_ref().expect("named");
        assert_eq!(subtask.vertex_id, "sink");
        assert_eq!(response.job_status, proto::JobStatus::Running as i32);
    }
}
