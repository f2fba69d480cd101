//! One task manager's bidirectional stream to the coordinator.

use super::{AuthChannel, ClientError};
use crate::proto;
use crate::proto::coordinator_message::Message as FromCoordinator;
use crate::proto::task_gateway_client::TaskGatewayClient;
use crate::proto::task_manager_message::Message as ToCoordinator;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Upward messages queued before the stream applies backpressure to the sender.
const OUTBOUND_BUFFER: usize = 256;

/// Messages that arrive while the refusals of Hello tasks are collected, kept for
/// [`TaskManagerSession::next_message`]: an accepted task may already get a trigger. More
/// than this many is not a coordinator talking.
const MAX_EARLY_MESSAGES: usize = 1024;

/// A message from the coordinator to this task manager (everything but Welcome).
pub type Downward = FromCoordinator;

/// An open `Connect` stream. Dropping it closes the stream; the coordinator then treats
/// the task manager's tasks as lost.
pub struct TaskManagerSession {
    task_manager_id: String,
    outbound: mpsc::Sender<proto::TaskManagerMessage>,
    inbound: tonic::Streaming<proto::CoordinatorMessage>,
    accepted_tasks: u32,
    refusals: Vec<proto::StreamError>,
    early: VecDeque<Downward>,
    /// The leadership epoch the Welcome carried (constant for the stream's life).
    leader_epoch: u64,
}

impl TaskManagerSession {
    /// Opens the stream, says Hello with `tasks` and waits for the Welcome and the
    /// reasons for any refused task. `channel` is a [`Channel`](tonic::transport::Channel)
    /// or, for TLS and a bearer token, an [`AuthChannel`] from
    /// [`connect_with`](super::connect_with).
    pub async fn connect(
        channel: impl Into<AuthChannel>,
        task_manager_id: &str,
        tasks: Vec<proto::TaskInfo>,
    ) -> Result<TaskManagerSession, ClientError> {
        let (outbound, receiver) = mpsc::channel(OUTBOUND_BUFFER);
        let tasks_offered = tasks.len();
        let hello = proto::TaskManagerMessage {
            message: Some(ToCoordinator::Hello(proto::Hello {
                task_manager_id: task_manager_id.to_string(),
                tasks,
            })),
        };
        outbound
            .send(hello)
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut inbound = TaskGatewayClient::new(channel.into())
            .connect(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let offered = tasks_offered;
        let (accepted_tasks, leader_epoch) = match inbound.message().await? {
            Some(proto::CoordinatorMessage {
                message: Some(FromCoordinator::Welcome(welcome)),
                leader_epoch,
            }) => (welcome.accepted_tasks, leader_epoch),
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome as the first message, got {other:?}"
                )));
            }
            None => return Err(ClientError::Closed),
        };
        // Right after Welcome the server explains each refused Hello task with a
        // StreamError; triggers for accepted tasks may come in between.
        let mut refusals = Vec::new();
        let mut early = VecDeque::new();
        let refused = offered.saturating_sub(accepted_tasks as usize);
        while refusals.len() < refused {
            match inbound.message().await? {
                Some(proto::CoordinatorMessage {
                    message: Some(FromCoordinator::Error(error)),
                    ..
                }) => refusals.push(error),
                Some(proto::CoordinatorMessage { message: None, .. }) => {}
                Some(proto::CoordinatorMessage {
                    message: Some(other),
                    ..
                }) => {
                    if early.len() >= MAX_EARLY_MESSAGES {
                        return Err(ClientError::Protocol(format!(
                            "more than {MAX_EARLY_MESSAGES} messages before the refusals of \
                             {refused} Hello tasks"
                        )));
                    }
                    early.push_back(other);
                }
                None => return Err(ClientError::Closed),
            }
        }
        Ok(TaskManagerSession {
            task_manager_id: task_manager_id.to_string(),
            outbound,
            inbound,
            accepted_tasks,
            refusals,
            early,
            leader_epoch,
        })
    }

    /// The fencing token of the leader this stream is connected to (0 without high
    /// availability). A task manager that reconnects after a leader change can compare
    /// it with the previous session's to make sure it never goes back to a deposed one.
    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch
    }

    /// The upward half of the stream, for a caller that sends from elsewhere.
    pub(crate) fn sender(&self) -> mpsc::Sender<proto::TaskManagerMessage> {
        self.outbound.clone()
    }

    /// The id this session said Hello with.
    pub fn task_manager_id(&self) -> &str {
        &self.task_manager_id
    }

    /// How many of the Hello's tasks the coordinator accepted.
    pub fn accepted_tasks(&self) -> u32 {
        self.accepted_tasks
    }

    /// Why the Hello's other tasks were refused: one StreamError per refused task (e.g.
    /// NOT_FOUND for a job that is not registered).
    pub fn refusals(&self) -> &[proto::StreamError] {
        &self.refusals
    }

    /// The next message from the coordinator; None when the server ended the stream.
    pub async fn next_message(&mut self) -> Result<Option<Downward>, ClientError> {
        if let Some(message) = self.early.pop_front() {
            return Ok(Some(message));
        }
        loop {
            match self.inbound.message().await? {
                None => return Ok(None),
                Some(proto::CoordinatorMessage { message: None, .. }) => continue,
                Some(proto::CoordinatorMessage {
                    message: Some(message),
                    ..
                }) => return Ok(Some(message)),
            }
        }
    }

    /// Sends one upward message; waits while the stream is backed up.
    pub async fn send(&self, message: ToCoordinator) -> Result<(), ClientError> {
        self.outbound
            .send(proto::TaskManagerMessage {
                message: Some(message),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Registers tasks deployed after Hello.
    pub async fn register_tasks(&self, tasks: Vec<proto::TaskInfo>) -> Result<(), ClientError> {
        self.send(ToCoordinator::RegisterTasks(proto::RegisterTasks { tasks }))
            .await
    }

    /// Reports a task attempt's new state (RUNNING, FINISHED, FAILED...).
    pub async fn set_task_state(
        &self,
        job_id: &str,
        attempt_id: u64,
        state: proto::TaskState,
    ) -> Result<(), ClientError> {
        self.send(ToCoordinator::TaskState(proto::TaskStateUpdate {
            job_id: job_id.to_string(),
            attempt_id,
            state: state.into(),
        }))
        .await
    }

    /// Acknowledges a triggered snapshot with the task's state handles.
    pub async fn acknowledge(
        &self,
        trigger: &proto::TriggerCheckpoint,
        handles: Vec<proto::StateHandle>,
    ) -> Result<(), ClientError> {
        self.send(acknowledgement(trigger, handles)).await
    }

    /// Declines a snapshot for one attempt, with the cause passed on to the caller.
    pub async fn decline(
        &self,
        job_id: &str,
        checkpoint_id: u64,
        attempt_id: u64,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.send(ToCoordinator::Decline(proto::DeclineRequest {
            job_id: job_id.to_string(),
            checkpoint_id,
            attempt_id,
            reason: reason.to_string(),
            fencing_token: 0,
        }))
        .await
    }
}

/// The acknowledgement of `trigger` with the task's state `handles`.
pub(crate) fn acknowledgement(
    trigger: &proto::TriggerCheckpoint,
    handles: Vec<proto::StateHandle>,
) -> ToCoordinator {
    ToCoordinator::Acknowledge(proto::AcknowledgeRequest {
        job_id: trigger.job_id.clone(),
        checkpoint_id: trigger.checkpoint_id,
        attempt_id: trigger.attempt_id,
        handles,
        sync_duration_ms: 0,
        async_duration_ms: 0,
        fencing_token: trigger.fencing_token,
    })
}
