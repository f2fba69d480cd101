//! Core errors and snapshot failures as gRPC statuses: the one place that picks codes.
//!
//! Codes follow the gRPC guide: NOT_FOUND / ALREADY_EXISTS / INVALID_ARGUMENT for what the
//! caller got wrong, FAILED_PRECONDITION for "not now, fix the job's state first",
//! RESOURCE_EXHAUSTED and UNAVAILABLE for "retry later", ABORTED for a snapshot that ran
//! and failed, DATA_LOSS for corrupted metadata. Every snapshot failure also carries its
//! typed reason as `x-failure-reason` metadata, so clients need not parse messages.

use crate::coordinator::CoreError;
use crate::coordinator::model::{
    CheckpointId, FailureReason, JobId, SnapshotFailure, SnapshotKind,
};
use crate::store::StoreError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key carrying a snapshot failure's reason (e.g. `DECLINED`).
pub const FAILURE_REASON_KEY: &str = "x-failure-reason";

impl From<CoreError> for Status {
    fn from(error: CoreError) -> Status {
        match &error {
            CoreError::TriggerRefused { failure, .. } => with_failure_reason(
                refusal_code(failure.reason),
                error.to_string(),
                failure.reason,
            ),
            _ => Status::new(core_error_code(&error), error.to_string()),
        }
    }
}

/// The status code for a core error.
pub fn core_error_code(error: &CoreError) -> Code {
    match error {
        CoreError::JobNotFound(_) | CoreError::NotFound(_) => Code::NotFound,
        CoreError::JobAlreadyExists(_) | CoreError::AlreadyExists(_) => Code::AlreadyExists,
        CoreError::InvalidArgument(_) => Code::InvalidArgument,
        CoreError::TriggerRefused { failure, .. } => refusal_code(failure.reason),
        CoreError::FailedPrecondition(_) | CoreError::StaleFencingToken { .. } => {
            Code::FailedPrecondition
        }
        CoreError::ShutDown => Code::Unavailable,
        CoreError::Store(store) => store_error_code(store),
    }
}

fn store_error_code(error: &StoreError) -> Code {
    match error {
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::InvalidLocation { .. } => Code::InvalidArgument,
        // A full disk will not pass by retrying soon; other I/O errors might.
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            Code::ResourceExhausted
        }
        StoreError::Io { .. } | StoreError::Unavailable(_) | StoreError::Deposed(_) => {
            Code::Unavailable
        }
        StoreError::Corrupted { .. } => Code::DataLoss,
        StoreError::Encode { .. } | StoreError::Refused(_) => Code::Internal,
    }
}

/// Code of a trigger refused before anything started.
fn refusal_code(reason: FailureReason) -> Code {
    match reason {
        FailureReason::TooManyConcurrent => Code::ResourceExhausted,
        FailureReason::CoordinatorShutDown | FailureReason::StoreIo => Code::Unavailable,
        FailureReason::TasksNotRunning
        | FailureReason::JobNotRunning
        | FailureReason::MinPause
        | FailureReason::Declined
        | FailureReason::Expired
        | FailureReason::Subsumed
        | FailureReason::Finalize
        | FailureReason::TaskFailure => Code::FailedPrecondition,
    }
}

/// Code of a snapshot that was triggered and later failed.
pub fn snapshot_failure_code(reason: FailureReason) -> Code {
    match reason {
        FailureReason::Declined
        | FailureReason::Expired
        | FailureReason::Subsumed
        | FailureReason::TaskFailure => Code::Aborted,
        FailureReason::StoreIo | FailureReason::CoordinatorShutDown => Code::Unavailable,
        FailureReason::JobNotRunning => Code::FailedPrecondition,
        FailureReason::Finalize => Code::Internal,
        // Refusals normally fail the trigger itself; if one reaches a waiting caller,
        // treat it like the refusal it is.
        FailureReason::TooManyConcurrent
        | FailureReason::TasksNotRunning
        | FailureReason::MinPause => refusal_code(reason),
    }
}

/// The status for a triggered snapshot that failed, e.g.
/// `savepoint 7 of job j failed (DECLINED): task src#0 declined ...`.
pub fn snapshot_failure_status(
    kind: SnapshotKind,
    job_id: &JobId,
    checkpoint_id: CheckpointId,
    failure: &SnapshotFailure,
) -> Status {
    with_failure_reason(
        snapshot_failure_code(failure.reason),
        format!(
            "{kind} {checkpoint_id} of job {job_id} failed ({}): {}",
            failure.reason.as_str(),
            failure.message
        ),
        failure.reason,
    )
}

fn with_failure_reason(code: Code, message: String, reason: FailureReason) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        FAILURE_REASON_KEY,
        MetadataValue::from_static(reason.as_str()),
    );
    Status::with_metadata(code, message, metadata)
}

/// The canonical upper-case name of a status code (`NOT_FOUND`), as carried in a
/// stream's `StreamError.code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: CoreError) -> Code {
        Status::from(error).code()
    }

    fn refused(reason: FailureReason) -> CoreError {
        CoreError::TriggerRefused {
            job: JobId::new("j"),
            kind: SnapshotKind::Savepoint,
            failure: SnapshotFailure::new(reason, "why"),
        }
    }

    #[test]
    fn core_errors_map_to_codes() {
        assert_eq!(code_of(CoreError::JobNotFound("j".into())), Code::NotFound);
        assert_eq!(code_of(CoreError::NotFound("x".into())), Code::NotFound);
        assert_eq!(
            code_of(CoreError::JobAlreadyExists(JobId::new("j"))),
            Code::AlreadyExists
        );
        assert_eq!(
            code_of(CoreError::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(CoreError::FailedPrecondition("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_of(CoreError::StaleFencingToken {
                job: JobId::new("j"),
                got: 1,
                expected: 2
            }),
            Code::FailedPrecondition
        );
        assert_eq!(code_of(CoreError::ShutDown), Code::Unavailable);
    }

    #[test]
    fn store_errors_map_to_codes() {
        let store = |e: StoreError| code_of(CoreError::Store(e));
        assert_eq!(
            store(StoreError::NotFound { what: "x".into() }),
            Code::NotFound
        );
        assert_eq!(
            store(StoreError::InvalidLocation {
                location: "x".into(),
                detail: "y".into()
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            store(StoreError::io(
                "writing",
                "/x",
                std::io::Error::other("disk")
            )),
            Code::Unavailable
        );
        assert_eq!(
            store(StoreError::Unavailable("x".into())),
            Code::Unavailable
        );
        assert_eq!(store(StoreError::Refused("x".into())), Code::Internal);
        assert_eq!(
            store(StoreError::Corrupted {
                path: "x".into(),
                detail: "crc".into()
            }),
            Code::DataLoss
        );
    }

    #[test]
    fn refusals_map_by_reason() {
        assert_eq!(
            code_of(refused(FailureReason::TooManyConcurrent)),
            Code::ResourceExhausted
        );
        assert_eq!(
            code_of(refused(FailureReason::CoordinatorShutDown)),
            Code::Unavailable
        );
        assert_eq!(code_of(refused(FailureReason::StoreIo)), Code::Unavailable);
        assert_eq!(
            code_of(refused(FailureReason::TasksNotRunning)),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_of(refused(FailureReason::JobNotRunning)),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_of(refused(FailureReason::MinPause)),
            Code::FailedPrecondition
        );
        let status = Status::from(refused(FailureReason::TasksNotRunning));
        assert_eq!(
            status
                .metadata()
                .get(FAILURE_REASON_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("TASKS_NOT_RUNNING")
        );
    }

    #[test]
    fn failed_snapshots_map_by_reason() {
        for (reason, code) in [
            (FailureReason::Declined, Code::Aborted),
            (FailureReason::Expired, Code::Aborted),
            (FailureReason::Subsumed, Code::Aborted),
            (FailureReason::TaskFailure, Code::Aborted),
            (FailureReason::StoreIo, Code::Unavailable),
            (FailureReason::CoordinatorShutDown, Code::Unavailable),
            (FailureReason::JobNotRunning, Code::FailedPrecondition),
            (FailureReason::Finalize, Code::Internal),
        ] {
            assert_eq!(snapshot_failure_code(reason), code, "{reason:?}");
        }
    }

    #[test]
    fn failure_status_names_snapshot_reason_and_cause() {
        let status = snapshot_failure_status(
            SnapshotKind::Savepoint,
            &JobId::new("j"),
            CheckpointId(7),
            &SnapshotFailure::new(FailureReason::Declined, "task src#0 is out of disk"),
        );
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(
            status.message(),
            "savepoint 7 of job j failed (DECLINED): task src#0 is out of disk"
        );
        assert_eq!(
            status
                .metadata()
                .get(FAILURE_REASON_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("DECLINED")
        );
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
