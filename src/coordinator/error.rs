//! The core's error type. The service layer maps each variant onto one gRPC status code.

use super::model::{JobId, SnapshotFailure, SnapshotKind};
use crate::store::StoreError;

/// Errors returned by the coordinator core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("job {0:?} is not registered")]
    JobNotFound(String),
    #[error("job {0} is already registered")]
    JobAlreadyExists(JobId),
    /// The request itself is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A trigger was refused before anything was started.
    #[error("{kind} for job {job} refused: {failure}")]
    TriggerRefused {
        job: JobId,
        kind: SnapshotKind,
        failure: SnapshotFailure,
    },
    /// The request is well-formed but the job is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A message carried a fencing token of another leader session.
    #[error("stale fencing token {got} for job {job} (current session is {expected})")]
    StaleFencingToken { job: JobId, got: u64, expected: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("the coordinator is shut down")]
    ShutDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}
