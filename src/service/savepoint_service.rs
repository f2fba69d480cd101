//! `SavepointService`: the API for operators, savepointctl and controllers.
//!
//! Each RPC decodes and validates its request, calls one core method and maps the result.
//! The two triggers also wait for their snapshot, bounded by the client's deadline: when
//! the deadline is about to pass they answer DEADLINE_EXCEEDED themselves, saying that the
//! snapshot goes on in the background, instead of letting the call be cut off blindly.

use super::convert;
use super::error::snapshot_failure_status;
use crate::coordinator::model::{
    CheckpointId, JobId, OperationOutcome, SavepointOperation, SnapshotFailure, SnapshotKind,
};
use crate::coordinator::{Coordinator, SavepointRequest, SnapshotHandle, SnapshotSuccess};
use crate::proto;
use crate::proto::savepoint_service_server::SavepointService;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Implements [`SavepointService`] over a [`Coordinator`].
#[derive(Clone)]
pub struct SavepointRpc {
    coordinator: Coordinator,
}

impl SavepointRpc {
    /// Serves the jobs of `coordinator`.
    pub fn new(coordinator: Coordinator) -> Self {
        SavepointRpc { coordinator }
    }
}

/// How long before the client's deadline a waiting trigger answers, so that its
/// explanatory DEADLINE_EXCEEDED reaches the client before the client's own timer fires
/// (tonic cancels the call on both sides exactly at the deadline).
fn answer_margin(deadline: Duration) -> Duration {
    (deadline / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// The instant until which a trigger may wait, from the request's `grpc-timeout`
/// (None: the client set no deadline, wait for the outcome).
fn wait_until(metadata: &MetadataMap, received: Instant) -> Option<Instant> {
    let header = metadata.get("grpc-timeout")?.to_str().ok()?;
    let Some(deadline) = convert::grpc_timeout(header) else {
        tracing::debug!(header, "ignoring malformed grpc-timeout header");
        return None;
    };
    Some(received + deadline.saturating_sub(answer_margin(deadline)))
}

/// The answer when the client's deadline comes before the snapshot's outcome.
fn still_running(kind: SnapshotKind, checkpoint_id: CheckpointId, job_id: &JobId) -> Status {
    tracing::info!("client deadline reached; {kind} continues in the background");
    Status::deadline_exceeded(format!(
        "{kind} {checkpoint_id} of job {job_id} did not finish within the call's deadline; it \
         continues in the background and its outcome appears in GetCheckpointStats (and, \
         for savepoints, GetSavepointOperation)"
    ))
}

fn failed(
    kind: SnapshotKind,
    job_id: &JobId,
    checkpoint_id: CheckpointId,
    failure: &SnapshotFailure,
) -> Status {
    tracing::info!(
        reason = failure.reason.as_str(),
        "{kind} failed: {}",
        failure.message
    );
    snapshot_failure_status(kind, job_id, checkpoint_id, failure)
}

/// Encodes a savepoint operation as the answer of TriggerSavepoint / StopWithSavepoint.
fn savepoint_response(operation: SavepointOperation) -> proto::TriggerSavepointResponse {
    let encoded = convert::operation_to_proto(operation);
    proto::TriggerSavepointResponse {
        checkpoint_id: encoded.checkpoint_id,
        path: encoded.path,
        operation_id: encoded.operation_id,
        status: encoded.status,
    }
}

/// Waits for a triggered snapshot until `until`; failure and expiry become statuses.
async fn wait_for(
    handle: SnapshotHandle,
    kind: SnapshotKind,
    job_id: &JobId,
    until: Option<Instant>,
) -> Result<SnapshotSuccess, Status> {
    let checkpoint_id = handle.checkpoint_id;
    let outcome = match until {
        None => handle.wait().await,
        Some(until) => match tokio::time::timeout_at(until, handle.wait()).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(still_running(kind, checkpoint_id, job_id)),
        },
    };
    outcome.map_err(|failure| failed(kind, job_id, checkpoint_id, &failure))
}

impl SavepointRpc {
    /// Starts (or finds, for a repeated request id) a savepoint operation and, unless
    /// detached, waits for its outcome until `until`.
    async fn savepoint(
        &self,
        job_id: JobId,
        request: SavepointRequest,
        detach: bool,
        until: Option<Instant>,
    ) -> Result<Response<proto::TriggerSavepointResponse>, Status> {
        let started = self.coordinator.savepoint(job_id.as_str(), request).await?;
        let operation = &started.operation;
        let span = tracing::info_span!(
            "savepoint",
            job_id = %job_id,
            checkpoint_id = %operation.checkpoint_id,
            operation_id = %operation.operation_id
        );
        if detach {
            return Ok(Response::new(savepoint_response(started.recorded().await?)));
        }
        let waiting = started.finished().instrument(span);
        let finished = match until {
            None => waiting.await?,
            Some(until) => match tokio::time::timeout_at(until, waiting).await {
                Ok(finished) => finished?,
                Err(_) => {
                    return Err(still_running(
                        SnapshotKind::Savepoint,
                        operation.checkpoint_id,
                        &job_id,
                    ));
                }
            },
        };
        if let OperationOutcome::Failed { failure, .. } = &finished.outcome {
            return Err(failed(
                SnapshotKind::Savepoint,
                &job_id,
                finished.checkpoint_id,
                failure,
            ));
        }
        Ok(Response::new(savepoint_response(finished)))
    }
}

#[tonic::async_trait]
impl SavepointService for SavepointRpc {
    async fn register_job(
        &self,
        request: Request<proto::RegisterJobRequest>,
    ) -> Result<Response<proto::RegisterJobResponse>, Status> {
        let spec = convert::job_spec(request.into_inner())?;
        let fencing_token = self.coordinator.register_job(spec).await?;
        Ok(Response::new(proto::RegisterJobResponse { fencing_token }))
    }

    async fn update_job_status(
        &self,
        request: Request<proto::UpdateJobStatusRequest>,
    ) -> Result<Response<proto::UpdateJobStatusResponse>, Status> {
        let request = request.into_inner();
        let job_id = convert::job_id("job_id", &request.job_id)?;
        let status = convert::job_status("status", request.status)?;
        self.coordinator
            .update_job_status(job_id.as_str(), status)
            .await?;
        Ok(Response::new(proto::UpdateJobStatusResponse {}))
    }

    async fn trigger_savepoint(
        &self,
        request: Request<proto::TriggerSavepointRequest>,
    ) -> Result<Response<proto::TriggerSavepointResponse>, Status> {
        let until = wait_until(request.metadata(), Instant::now());
        let call = convert::trigger_savepoint(request.into_inner())?;
        self.savepoint(call.job_id, call.request, call.detach, until)
            .await
    }

    async fn stop_with_savepoint(
        &self,
        request: Request<proto::StopWithSavepointRequest>,
    ) -> Result<Response<proto::TriggerSavepointResponse>, Status> {
        let until = wait_until(request.metadata(), Instant::now());
        let call = convert::stop_with_savepoint(request.into_inner())?;
        self.savepoint(call.job_id, call.request, call.detach, until)
            .await
    }

    async fn get_savepoint_operation(
        &self,
        request: Request<proto::GetSavepointOperationRequest>,
    ) -> Result<Response<proto::SavepointOperation>, Status> {
        let request = request.into_inner();
        let job_id = convert::job_id("job_id", &request.job_id)?;
        if request.operation_id.is_empty() {
            return Err(Status::invalid_argument("operation_id must not be empty"));
        }
        let operation = self
            .coordinator
            .operation(job_id.as_str(), &request.operation_id)?;
        Ok(Response::new(convert::operation_to_proto(operation)))
    }

    async fn dispose_savepoint(
        &self,
        request: Request<proto::DisposeSavepointRequest>,
    ) -> Result<Response<proto::DisposeSavepointResponse>, Status> {
        let path = request.into_inner().path;
        if path.trim().is_empty() {
            return Err(Status::invalid_argument("path must not be empty"));
        }
        let existed = self.coordinator.dispose_savepoint(&path).await?;
        Ok(Response::new(proto::DisposeSavepointResponse { existed }))
    }

    async fn list_savepoints(
        &self,
        request: Request<proto::ListSavepointsRequest>,
    ) -> Result<Response<proto::ListSavepointsResponse>, Status> {
        let job_id = convert::job_id("job_id", &request.into_inner().job_id)?;
        let savepoints = self.coordinator.list_savepoints(job_id.as_str()).await?;
        Ok(Response::new(proto::ListSavepointsResponse {
            savepoints: savepoints
                .into_iter()
                .map(convert::savepoint_info_to_proto)
                .collect(),
        }))
    }

    async fn restore_savepoint(
        &self,
        request: Request<proto::RestoreSavepointRequest>,
    ) -> Result<Response<proto::RestoreResponse>, Status> {
        let restore = convert::restore_savepoint(request.into_inner())?;
        let restored = self
            .coordinator
            .restore_savepoint_with(
                restore.job_id.as_str(),
                &restore.path,
                restore.allow_non_restored_state,
                restore.claim_mode,
            )
            .await?;
        Ok(Response::new(convert::restore_response(restored)))
    }

    async fn restore_latest_checkpoint(
        &self,
        request: Request<proto::RestoreLatestCheckpointRequest>,
    ) -> Result<Response<proto::RestoreResponse>, Status> {
        let request = request.into_inner();
        let job_id = convert::job_id("job_id", &request.job_id)?;
        let restored = self
            .coordinator
            .restore_latest_checkpoint(job_id.as_str(), request.allow_non_restored_state)
            .await?;
        Ok(Response::new(convert::restore_response(restored)))
    }

    async fn trigger_checkpoint(
        &self,
        request: Request<proto::TriggerCheckpointRequest>,
    ) -> Result<Response<proto::TriggerCheckpointResponse>, Status> {
        let until = wait_until(request.metadata(), Instant::now());
        let job_id = convert::job_id("job_id", &request.into_inner().job_id)?;
        let handle = self.coordinator.trigger_checkpoint(job_id.as_str()).await?;
        let checkpoint_id = handle.checkpoint_id;
        let span =
            tracing::info_span!("checkpoint", job_id = %job_id, checkpoint_id = %checkpoint_id);
        wait_for(handle, SnapshotKind::Checkpoint, &job_id, until)
            .instrument(span)
            .await?;
        Ok(Response::new(proto::TriggerCheckpointResponse {
            checkpoint_id: checkpoint_id.0,
        }))
    }

    async fn get_checkpoint_stats(
        &self,
        request: Request<proto::GetCheckpointStatsRequest>,
    ) -> Result<Response<proto::GetCheckpointStatsResponse>, Status> {
        let job_id = convert::job_id("job_id", &request.into_inner().job_id)?;
        let stats = self.coordinator.job_stats(job_id.as_str())?;
        Ok(Response::new(convert::job_stats_to_proto(stats)))
    }

    async fn unregister_job(
        &self,
        request: Request<proto::UnregisterJobRequest>,
    ) -> Result<Response<proto::UnregisterJobResponse>, Status> {
        let job_id = convert::job_id("job_id", &request.into_inner().job_id)?;
        self.coordinator.unregister_job(job_id.as_str()).await?;
        Ok(Response::new(proto::UnregisterJobResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_ends_before_the_client_deadline() {
        let received = Instant::now();
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "1000m".parse().expect("ascii"));
        let until = wait_until(&metadata, received).expect("deadline");
        assert_eq!(until - received, Duration::from_millis(900));
        metadata.insert("grpc-timeout", "10x".parse().expect("ascii"));
        assert_eq!(wait_until(&metadata, received), None);
        assert_eq!(wait_until(&MetadataMap::new(), received), None);
    }

    #[test]
    fn margin_is_bounded() {
        assert_eq!(
            answer_margin(Duration::from_millis(50)),
            Duration::from_millis(20)
        );
        assert_eq!(
            answer_margin(Duration::from_secs(60)),
            Duration::from_millis(500)
        );
    }
}
