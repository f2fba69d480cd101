//! A task manager that stays connected: it says Hello with its tasks, hands the
//! coordinator's messages to the caller as a [`Stream`](futures::Stream), sends
//! acknowledgements, declines and task state changes, and after a lost stream (the server
//! restarted, the leader changed) reconnects to the servers in turn with exponential
//! backoff and jitter, saying Hello again with its tasks' current states. It never goes
//! back to a leader older than one it has seen.
//!
//! ```no_run
//! use futures::StreamExt;
//! use savepoint_coordinator::client::{Downward, TaskManager, TaskManagerConfig, TaskManagerEvent};
//! use savepoint_coordinator::proto;
//!
//! # async fn run() -> Result<(), savepoint_coordinator::client::ClientError> {
//! let task = proto::TaskInfo {
//!     job_id: "wordcount".into(),
//!     subtask: Some(proto::SubtaskRef { vertex_id: "source".into(), subtask_index: 0 }),
//!     attempt_id: 1,
//!     state: proto::TaskState::Running.into(),
//! };
//! let config = TaskManagerConfig::new(vec!["http://127.0.0.1:50051".into()], "tm-1", vec![task]);
//! let (task_manager, mut events) = TaskManager::start(config)?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         TaskManagerEvent::Message(Downward::TriggerCheckpoint(trigger)) => {
//!             // Snapshot the task's state, then:
//!             let state = proto::StateHandle::default();
//!             task_manager.acknowledge(&trigger, vec![state]).await?;
//!         }
//!         TaskManagerEvent::Connected { leader_epoch, .. } => println!("connected, epoch {leader_epoch}"),
//!         TaskManagerEvent::Disconnected { reason } => println!("reconnecting: {reason}"),
//!         TaskManagerEvent::Message(other) => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use super::task_manager::{TaskManagerSession, acknowledgement};
use super::{AuthChannel, ClientError, ClientTls, Downward, connect_with};
use crate::proto;
use crate::proto::task_manager_message::Message as ToCoordinator;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// How long one attempt to connect and say Hello may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events buffered for a caller that does not keep up; the stream reader waits beyond it.
const EVENT_BUFFER: usize = 1024;

/// Where and as whom a [`TaskManager`] connects.
#[derive(Clone, Debug)]
pub struct TaskManagerConfig {
    /// Addresses of the server (or of every replica); tried in turn.
    pub servers: Vec<String>,
    pub task_manager_id: String,
    /// The tasks it runs, said in every Hello with their latest state.
    pub tasks: Vec<proto::TaskInfo>,
    pub tls: Option<ClientTls>,
    /// Bearer token sent with every call (a task-manager token whose name is
    /// `task_manager_id`).
    pub token: Option<String>,
}

impl TaskManagerConfig {
    /// Plaintext, without a token.
    pub fn new(servers: Vec<String>, task_manager_id: &str, tasks: Vec<proto::TaskInfo>) -> Self {
        TaskManagerConfig {
            servers,
            task_manager_id: task_manager_id.to_string(),
            tasks,
            tls: None,
            token: None,
        }
    }
}

/// What the connection does, in order, as a stream of events.
#[derive(Debug)]
pub enum TaskManagerEvent {
    /// A stream is open: to `server`, whose leader epoch is `leader_epoch` (0 without
    /// high availability); `refusals` explains each task the coordinator did not take.
    Connected {
        server: String,
        leader_epoch: u64,
        accepted_tasks: u32,
        refusals: Vec<proto::StreamError>,
    },
    /// A message from the coordinator: triggers, completions, aborts, refusals.
    Message(Downward),
    /// The stream ended; pending snapshots of this task manager fail on the server, and
    /// a reconnect follows.
    Disconnected { reason: String },
}

/// The caller's side of a reconnecting task manager; cheap to clone. Dropping every
/// clone and the event stream ends the connection.
#[derive(Clone)]
pub struct TaskManager {
    /// The upward sender of the stream open now, None between streams.
    current: watch::Receiver<Option<mpsc::Sender<proto::TaskManagerMessage>>>,
    /// The tasks with their latest states, for the next Hello.
    tasks: Arc<Mutex<Vec<proto::TaskInfo>>>,
    _connection: Arc<AbortOnDrop>,
}

/// The events of a [`TaskManager`]: `futures::Stream<Item = TaskManagerEvent>`.
pub type TaskManagerEvents = ReceiverStream<TaskManagerEvent>;

impl TaskManager {
    /// Starts connecting in the background; the first event is `Connected` once a
    /// server took the Hello.
    pub fn start(
        config: TaskManagerConfig,
    ) -> Result<(TaskManager, TaskManagerEvents), ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Protocol(
                "a task manager needs at least one server address".into(),
            ));
        }
        let tasks = Arc::new(Mutex::new(config.tasks.clone()));
        let (current_tx, current) = watch::channel(None);
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let connection = Connection {
            config,
            tasks: tasks.clone(),
            current: current_tx,
            events: events_tx,
        };
        let task = tokio::spawn(connection.run());
        let task_manager = TaskManager {
            current,
            tasks,
            _connection: Arc::new(AbortOnDrop(task.abort_handle())),
        };
        Ok((task_manager, ReceiverStream::new(events)))
    }

    /// Sends one message on the stream open now; `Closed` between streams (what it
    /// was about is void then: the server failed the snapshots of the lost stream).
    pub async fn send(&self, message: ToCoordinator) -> Result<(), ClientError> {
        let sender = self.current.borrow().clone().ok_or(ClientError::Closed)?;
        sender
            .send(proto::TaskManagerMessage {
                message: Some(message),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Acknowledges `trigger` with the task's state handles.
    pub async fn acknowledge(
        &self,
        trigger: &proto::TriggerCheckpoint,
        handles: Vec<proto::StateHandle>,
    ) -> Result<(), ClientError> {
        self.send(acknowledgement(trigger, handles)).await
    }

    /// Declines `trigger` for its attempt, with `reason` passed on to the caller.
    pub async fn decline(
        &self,
        trigger: &proto::TriggerCheckpoint,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.send(ToCoordinator::Decline(proto::DeclineRequest {
            job_id: trigger.job_id.clone(),
            checkpoint_id: trigger.checkpoint_id,
            attempt_id: trigger.attempt_id,
            reason: reason.to_string(),
            fencing_token: trigger.fencing_token,
        }))
        .await
    }

    /// Reports a task attempt's new state, now and in every later Hello.
    pub async fn set_task_state(
        &self,
        job_id: &str,
        attempt_id: u64,
        state: proto::TaskState,
    ) -> Result<(), ClientError> {
        for task in self.lock_tasks().iter_mut() {
            if task.job_id == job_id && task.attempt_id == attempt_id {
                task.state = state.into();
            }
        }
        self.send(ToCoordinator::TaskState(proto::TaskStateUpdate {
            job_id: job_id.to_string(),
            attempt_id,
            state: state.into(),
        }))
        .await
    }

    /// Registers tasks deployed after Hello, now and in every later Hello.
    pub async fn register_tasks(&self, tasks: Vec<proto::TaskInfo>) -> Result<(), ClientError> {
        self.lock_tasks().extend(tasks.iter().cloned());
        self.send(ToCoordinator::RegisterTasks(proto::RegisterTasks { tasks }))
            .await
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<proto::TaskInfo>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reconnect delays: exponential from [`Backoff::FIRST`] up to [`Backoff::MAX`], each
/// with up to half of it added at random, so task managers that lost the same leader do
/// not all come back in the same instant.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base + base.mul_f64(crate::jitter::random_fraction() / 2.0)
    }

    /// Back to the first delay, after a successful connection.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Aborts the connection task once the last [`TaskManager`] clone is gone.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background side: connects, forwards messages, reconnects.
struct Connection {
    config: TaskManagerConfig,
    tasks: Arc<Mutex<Vec<proto::TaskInfo>>>,
    current: watch::Sender<Option<mpsc::Sender<proto::TaskManagerMessage>>>,
    events: mpsc::Sender<TaskManagerEvent>,
}

impl Connection {
    async fn run(self) {
        let mut backoff = Backoff::new();
        let mut highest_epoch = 0;
        let mut next_server = 0;
        loop {
            let server = self.config.servers[next_server % self.config.servers.len()].clone();
            next_server += 1;
            let (session, hello) = match self.connect(&server).await {
                Ok((session, hello)) if session.leader_epoch() >= highest_epoch => (session, hello),
                Ok((stale, _)) => {
                    tracing::warn!(
                        server,
                        epoch = stale.leader_epoch(),
                        seen = highest_epoch,
                        "passing over a deposed leader"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(server, "connecting failed: {error}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            // The same server first next time: it may just restart.
            next_server -= 1;
            highest_epoch = session.leader_epoch();
            let reason = match self.serve(&server, session, hello).await {
                Some(reason) => reason,
                // The caller dropped the event stream: nobody listens any more.
                None => return,
            };
            self.current.send_replace(None);
            let disconnected = TaskManagerEvent::Disconnected { reason };
            if self.events.send(disconnected).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// A session that said Hello, and the tasks it said Hello with.
    async fn connect(
        &self,
        server: &str,
    ) -> Result<(TaskManagerSession, Vec<proto::TaskInfo>), ClientError> {
        let connecting = async {
            let channel: AuthChannel = connect_with(
                server,
                self.config.tls.as_ref(),
                self.config.token.as_deref(),
            )
            .await?;
            let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let session =
                TaskManagerSession::connect(channel, &self.config.task_manager_id, tasks.clone())
                    .await?;
            Ok((session, tasks))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .unwrap_or(Err(ClientError::Closed))
    }

    /// What changed in the task list between the Hello (`hello`) and now, when sends
    /// still failed for want of a stream: sent now, so no state change is lost.
    async fn catch_up(&self, session: &TaskManagerSession, hello: &[proto::TaskInfo]) {
        let now = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut added = Vec::new();
        for task in now {
            match hello
                .iter()
                .find(|t| t.job_id == task.job_id && t.attempt_id == task.attempt_id)
            {
                Some(said) if said.state == task.state => {}
                Some(_) => {
                    let state = task.state();
                    let _ = session
                        .set_task_state(&task.job_id, task.attempt_id, state)
                        .await;
                }
                None => added.push(task),
            }
        }
        if !added.is_empty() {
            let _ = session.register_tasks(added).await;
        }
    }

    /// Forwards the session's messages until it ends (Some(why)) or the caller is gone.
    async fn serve(
        &self,
        server: &str,
        mut session: TaskManagerSession,
        hello: Vec<proto::TaskInfo>,
    ) -> Option<String> {
        self.current.send_replace(Some(session.sender()));
        self.catch_up(&session, &hello).await;
        let connected = TaskManagerEvent::Connected {
            server: server.to_string(),
            leader_epoch: session.leader_epoch(),
            accepted_tasks: session.accepted_tasks(),
            refusals: session.refusals().to_vec(),
        };
        self.events.send(connected).await.ok()?;
        loop {
            let reason = match session.next_message().await {
                Ok(Some(message)) => {
                    self.events
                        .send(TaskManagerEvent::Message(message))
                        .await
                        .ok()?;
                    continue;
                }
                Ok(None) => "the server ended the stream".to_string(),
                Err(error) => error.to_string(),
            };
            return Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_bound_and_resets() {
        let mut backoff = Backoff::new();
        let mut base = Backoff::FIRST;
        for _ in 0..8 {
            let delay = backoff.next_delay();
            assert!(
                delay >= base && delay <= base + base / 2,
                "{delay:?} for {base:?}"
            );
            base = (base * 2).min(Backoff::MAX);
        }
        assert!(backoff.next_delay() >= Backoff::MAX);
        backoff.reset();
        assert!(backoff.next_delay() < Backoff::FIRST * 2);
    }
}
