//! `TaskGateway`: the API for task managers.
//!
//! Acknowledge and Decline are also offered as unary calls for simple callers. `Connect`
//! is the main path: one bidirectional stream per task manager. The handler reads Hello,
//! opens a session in the core (a generation), attaches a bounded channel to the
//! [`StreamRegistry`] *before* registering the Hello tasks (so nothing sent because of a
//! registration is lost), answers Welcome, and spawns one task that reads the rest of the
//! stream. Welcome is put in front of the channel's messages rather than sent through it,
//! so it is always the first message even when a refused Hello task or a trigger racing
//! the registration was queued before it. A bad upward message never ends the stream: it
//! is answered with a StreamError.
//! When the stream ends, fails, or the server shuts down, the session is closed in the core
//! (its attempts count as lost) and detached from the registry.
//!
//! With authentication on, the [`auth::Guard`] in front of this service has put the
//! caller's identity on the request: a task manager must say Hello with its identity's
//! name as `task_manager_id`, and every acknowledgement, decline and task state change,
//! on the stream or unary, must concern an attempt that this task manager registered
//! (PERMISSION_DENIED otherwise).

use super::auth;
use super::convert;
use super::error::code_name;
use super::stream_gateway::StreamRegistry;
use crate::coordinator::Coordinator;
use crate::coordinator::model::{AttemptId, TaskManagerId};
use crate::proto;
use crate::proto::task_gateway_server::TaskGateway;
use crate::proto::task_manager_message::Message as Upward;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// How long a new stream may take to send Hello before the call is refused.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of the task gateway.
#[derive(Clone, Copy, Debug)]
pub struct TaskGatewayLimits {
    /// Bound on the summed inline state bytes of one acknowledgement.
    pub max_inline_state_bytes: usize,
    /// Capacity of each task manager's outbound channel.
    pub stream_buffer: usize,
}

impl Default for TaskGatewayLimits {
    fn default() -> Self {
        TaskGatewayLimits {
            max_inline_state_bytes: convert::DEFAULT_MAX_INLINE_STATE_BYTES,
            stream_buffer: 1024,
        }
    }
}

/// Implements [`TaskGateway`] over a [`Coordinator`] and the [`StreamRegistry`] it sends through.
#[derive(Clone)]
pub struct TaskGatewayRpc {
    coordinator: Coordinator,
    registry: Arc<StreamRegistry>,
    limits: TaskGatewayLimits,
    /// Becomes true when the server shuts down; stream readers stop on it.
    shutdown: watch::Receiver<bool>,
}

impl TaskGatewayRpc {
    /// `registry` must be the gateway the coordinator was built with; `shutdown` turning
    /// true ends every stream reader.
    pub fn new(
        coordinator: Coordinator,
        registry: Arc<StreamRegistry>,
        limits: TaskGatewayLimits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        TaskGatewayRpc {
            coordinator,
            registry,
            limits,
            shutdown,
        }
    }

    /// Waits for the stream's first message, which must be a Hello.
    async fn read_hello(
        &self,
        inbound: &mut Streaming<proto::TaskManagerMessage>,
    ) -> Result<proto::Hello, Status> {
        let mut shutdown = self.shutdown.clone();
        let first = tokio::select! {
            first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => first,
            _ = shutdown.wait_for(|stop| *stop) => {
                return Err(Status::unavailable("the server is shutting down"));
            }
        };
        match first {
            Err(_) => Err(Status::invalid_argument(format!(
                "no Hello within {} s; the first message on the stream must be Hello \
                 (send it before waiting for the response)",
                HELLO_TIMEOUT.as_secs()
            ))),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Err(Status::invalid_argument(
                "the stream ended before Hello; the first message must be Hello",
            )),
            Ok(Ok(Some(proto::TaskManagerMessage {
                message: Some(Upward::Hello(hello)),
            }))) => Ok(hello),
            Ok(Ok(Some(_))) => Err(Status::invalid_argument(
                "the first message on the stream must be Hello",
            )),
        }
    }
}

/// The task manager the caller of `request` acts as, when authentication is on.
fn authenticated_task_manager<T>(request: &Request<T>) -> Option<TaskManagerId> {
    auth::caller(request).map(|identity| TaskManagerId::new(&identity.name))
}

/// Refuses acting for an attempt of the job that `tm` does not host.
fn ensure_hosted_by(
    coordinator: &Coordinator,
    tm: &TaskManagerId,
    job_id: &str,
    attempt_id: AttemptId,
) -> Result<(), Status> {
    match coordinator.task_manager_of(job_id, attempt_id)? {
        Some(host) if host == *tm => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "task manager {tm} does not host attempt {attempt_id} of job {job_id}; a task \
             manager may only act for the tasks it registered"
        ))),
    }
}

/// One connected task manager: what a stream needs to handle its messages.
struct StreamSession {
    coordinator: Coordinator,
    registry: Arc<StreamRegistry>,
    tm: TaskManagerId,
    generation: u64,
    max_inline_state_bytes: usize,
    /// Authentication is on: messages may only concern this task manager's attempts.
    check_hosts: bool,
}

impl StreamSession {
    fn ensure_hosted(&self, job_id: &str, attempt_id: AttemptId) -> Result<(), Status> {
        if self.check_hosts {
            ensure_hosted_by(&self.coordinator, &self.tm, job_id, attempt_id)?;
        }
        Ok(())
    }

    /// Sends a problem with one upward message down the stream.
    fn report(&self, status: &Status, job_id: &str, checkpoint_id: u64) {
        tracing::debug!(task_manager = %self.tm, job_id, checkpoint_id, code = code_name(status.code()), "stream message refused: {}", status.message());
        let error = proto::StreamError {
            code: code_name(status.code()).to_string(),
            message: status.message().to_string(),
            job_id: job_id.to_string(),
            checkpoint_id,
        };
        self.registry.send_to_session(
            &self.tm,
            self.generation,
            proto::CoordinatorMessage {
                message: Some(proto::coordinator_message::Message::Error(error)),
                leader_epoch: 0,
            },
        );
    }

    /// Registers tasks one by one; a bad task is reported and skipped. Returns how many
    /// were accepted.
    fn register_tasks(&self, tasks: Vec<proto::TaskInfo>) -> u32 {
        let mut accepted = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let job_id = task.job_id.clone();
            let registered = convert::task_registration(&format!("tasks[{i}]"), task)
                .and_then(|task| Ok(self.coordinator.register_task(&self.tm, &task)?));
            match registered {
                Ok(()) => accepted += 1,
                Err(status) => self.report(&status, &job_id, 0),
            }
        }
        accepted
    }

    fn handle(&self, message: proto::TaskManagerMessage) {
        match message.message {
            None => self.report(&Status::invalid_argument("message must be set"), "", 0),
            Some(Upward::Hello(_)) => self.report(
                &Status::invalid_argument(
                    "Hello is only allowed as the first message; use RegisterTasks for new tasks",
                ),
                "",
                0,
            ),
            Some(Upward::RegisterTasks(register)) => {
                self.register_tasks(register.tasks);
            }
            Some(Upward::TaskState(update)) => {
                let job_id = update.job_id.clone();
                let updated = convert::task_state_change(update).and_then(|change| {
                    self.ensure_hosted(change.job_id.as_str(), change.attempt_id)?;
                    Ok(self.coordinator.update_task_state(
                        change.job_id.as_str(),
                        change.attempt_id,
                        change.state,
                    )?)
                });
                if let Err(status) = updated {
                    self.report(&status, &job_id, 0);
                }
            }
            Some(Upward::Acknowledge(mut ack)) => {
                // The hot path: the job id is only borrowed, never copied or allocated.
                let (job_id, checkpoint_id) = (std::mem::take(&mut ack.job_id), ack.checkpoint_id);
                let acknowledged = convert::check_job_id("job_id", &job_id)
                    .and_then(|()| convert::acknowledgement_of(ack, self.max_inline_state_bytes))
                    .and_then(|ack| {
                        self.ensure_hosted(&job_id, ack.attempt_id)?;
                        Ok(self.coordinator.acknowledge(&job_id, ack)?)
                    });
                match acknowledged {
                    Ok(outcome) => {
                        tracing::trace!(task_manager = %self.tm, job_id, checkpoint_id, ?outcome, "acknowledgement taken");
                    }
                    Err(status) => self.report(&status, &job_id, checkpoint_id),
                }
            }
            Some(Upward::Decline(decline)) => {
                let (job_id, checkpoint_id) = (decline.job_id.clone(), decline.checkpoint_id);
                let declined = convert::decline(decline).and_then(|d| {
                    self.ensure_hosted(d.job_id.as_str(), d.attempt_id)?;
                    Ok(self.coordinator.decline(
                        d.job_id.as_str(),
                        d.checkpoint_id,
                        d.attempt_id,
                        &d.reason,
                        d.fencing_token,
                    )?)
                });
                if let Err(status) = declined {
                    self.report(&status, &job_id, checkpoint_id);
                }
            }
        }
    }

    /// Reads the stream until it ends, fails, or the server shuts down; then closes the
    /// session.
    async fn run(
        self,
        mut inbound: Streaming<proto::TaskManagerMessage>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Made once, not per message: every message of the stream passes this select.
        let stopping = shutdown.wait_for(|stop| *stop);
        tokio::pin!(stopping);
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                _ = &mut stopping => {
                    tracing::debug!(task_manager = %self.tm, "closing stream: server shutting down");
                    break;
                }
            };
            match next {
                Ok(Some(message)) => self.handle(message),
                Ok(None) => {
                    tracing::debug!(task_manager = %self.tm, "stream ended by the task manager");
                    break;
                }
                Err(status) => {
                    tracing::info!(task_manager = %self.tm, code = code_name(status.code()), "stream failed: {}", status.message());
                    break;
                }
            }
        }
        self.coordinator
            .disconnect_task_manager(&self.tm, self.generation);
        self.registry.detach(&self.tm, self.generation);
    }
}

#[tonic::async_trait]
impl TaskGateway for TaskGatewayRpc {
    async fn acknowledge(
        &self,
        request: Request<proto::AcknowledgeRequest>,
    ) -> Result<Response<proto::AcknowledgeResponse>, Status> {
        let acting = authenticated_task_manager(&request);
        let (job_id, ack) =
            convert::acknowledgement(request.into_inner(), self.limits.max_inline_state_bytes)?;
        if let Some(tm) = acting {
            ensure_hosted_by(&self.coordinator, &tm, job_id.as_str(), ack.attempt_id)?;
        }
        let outcome = self.coordinator.acknowledge(job_id.as_str(), ack)?;
        Ok(Response::new(proto::AcknowledgeResponse {
            outcome: convert::ack_outcome_to_proto(outcome).into(),
        }))
    }

    async fn decline(
        &self,
        request: Request<proto::DeclineRequest>,
    ) -> Result<Response<proto::DeclineResponse>, Status> {
        let acting = authenticated_task_manager(&request);
        let decline = convert::decline(request.into_inner())?;
        if let Some(tm) = acting {
            ensure_hosted_by(
                &self.coordinator,
                &tm,
                decline.job_id.as_str(),
                decline.attempt_id,
            )?;
        }
        let aborted = self.coordinator.decline(
            decline.job_id.as_str(),
            decline.checkpoint_id,
            decline.attempt_id,
            &decline.reason,
            decline.fencing_token,
        )?;
        Ok(Response::new(proto::DeclineResponse { aborted }))
    }

    type ConnectStream =
        Pin<Box<dyn Stream<Item = Result<proto::CoordinatorMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::TaskManagerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let authenticated = authenticated_task_manager(&request);
        let mut inbound = request.into_inner();
        let hello = self.read_hello(&mut inbound).await?;
        let tm = convert::task_manager_id(&hello.task_manager_id)?;
        if let Some(identity) = &authenticated
            && *identity != tm
        {
            return Err(Status::permission_denied(format!(
                "task manager {identity} may only connect as task_manager_id {identity}, \
                 not {tm}"
            )));
        }
        let generation = self.coordinator.connect_task_manager(&tm);
        let (sender, receiver) = mpsc::channel(self.limits.stream_buffer.max(1));
        if !self.registry.attach(tm.clone(), generation, sender) {
            self.coordinator.disconnect_task_manager(&tm, generation);
            return Err(Status::unavailable("the server is shutting down"));
        }
        let session = StreamSession {
            coordinator: self.coordinator.clone(),
            registry: self.registry.clone(),
            tm: tm.clone(),
            generation,
            max_inline_state_bytes: self.limits.max_inline_state_bytes,
            check_hosts: authenticated.is_some(),
        };
        let offered = hello.tasks.len();
        let accepted_tasks = session.register_tasks(hello.tasks);
        let welcome = proto::CoordinatorMessage {
            message: Some(proto::coordinator_message::Message::Welcome(
                proto::Welcome { accepted_tasks },
            )),
            leader_epoch: self.registry.leader_epoch(),
        };
        tracing::info!(task_manager = %tm, generation, accepted_tasks, offered, "task manager connected");
        tokio::spawn(session.run(inbound, self.shutdown.clone()));
        let messages = tokio_stream::once(Ok(welcome)).chain(ReceiverStream::new(receiver));
        Ok(Response::new(Box::pin(messages)))
    }
}
