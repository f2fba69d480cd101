//! A simulated cluster of task managers that runs one job's subtasks and acknowledges
//! every checkpoint and savepoint: enough to drive the coordinator end to end without a
//! stream processor (`savepointctl simulate`, integration tests, demos).
//!
//! The coordinator sends TriggerCheckpoint only to the trigger (source) tasks; in a real
//! job the barrier then flows downstream and every other task snapshots when it arrives.
//! The simulator stands in for that data flow with one broadcast channel shared by all
//! simulated task managers: whichever task manager receives a trigger publishes a barrier,
//! and every task manager then acknowledges that checkpoint once for each of its tasks
//! the snapshot waits for.

use super::{AuthChannel, ClientError, Downward, TaskManagerSession};
use crate::proto;
use crate::proto::task_manager_message::Message as ToCoordinator;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

/// Attempt ids are `vertex_index * ATTEMPT_ID_STRIDE + subtask_index + 1`, so an id can be
/// read back as (vertex, subtask) in logs and never is 0 (the wire's "no attempt").
pub const ATTEMPT_ID_STRIDE: u64 = 1_000_000;
/// How long connecting one task manager (Hello until Welcome) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping may take before the task manager tasks are cancelled.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Barriers buffered per task manager; one that falls further behind skips barriers
/// (those checkpoints then expire, like with a stuck task).
const BARRIER_BUFFER: usize = 1024;
/// Checkpoint ids each task manager remembers as acknowledged; triggers arrive once per
/// source subtask, so a checkpoint's barrier is seen several times but only acked once.
const REMEMBERED_CHECKPOINTS: usize = 4096;

/// One vertex of the simulated job, as registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedVertex {
    /// The vertex id of the job spec.
    pub id: String,
    /// Number of subtasks.
    pub parallelism: u32,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The registered job whose subtasks are run.
    pub job_id: String,
    /// The job's vertices, in the order they were registered.
    pub vertices: Vec<SimulatedVertex>,
    /// Vertices whose subtasks acknowledge; empty means all (as in RegisterJob).
    pub wait_for_vertices: Vec<String>,
    /// Number of simulated task managers (`tm-0`, `tm-1`, ...).
    pub task_managers: u32,
    /// Time each task manager waits before acknowledging a barrier, to make snapshots
    /// observable while in progress; zero acknowledges at once.
    pub ack_delay: Duration,
}

/// One simulated subtask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedTask {
    /// Vertex id.
    pub vertex_id: String,
    /// Subtask index within the vertex.
    pub subtask_index: u32,
    /// Attempt id, unique within the job (see [`attempt_id`]).
    pub attempt_id: u64,
    /// Whether snapshots wait for this task's acknowledgement.
    pub acknowledges: bool,
}

/// The tasks of one simulated task manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskManagerPlan {
    /// Task manager id (`tm-<n>`).
    pub task_manager_id: String,
    /// Its tasks.
    pub tasks: Vec<SimulatedTask>,
}

impl TaskManagerPlan {
    /// Its tasks as a Hello of job `job_id` names them, all RUNNING.
    pub fn task_infos(&self, job_id: &str) -> Vec<proto::TaskInfo> {
        self.tasks
            .iter()
            .map(|task| proto::TaskInfo {
                job_id: job_id.to_string(),
                subtask: Some(proto::SubtaskRef {
                    vertex_id: task.vertex_id.clone(),
                    subtask_index: task.subtask_index,
                }),
                attempt_id: task.attempt_id,
                state: proto::TaskState::Running.into(),
            })
            .collect()
    }
}

/// Why the simulation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimulationEnd {
    /// The shutdown future resolved.
    Shutdown,
    /// A task manager's stream was ended or failed by the server.
    StreamClosed {
        /// The task manager whose stream ended first.
        task_manager_id: String,
        /// The error, if the stream failed rather than ended.
        error: Option<String>,
    },
}

/// What the simulated task managers saw and did, summed over all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimulationCounts {
    /// TriggerCheckpoint messages received (one per trigger task and snapshot).
    pub triggers: u64,
    /// Acknowledgements sent (one per awaited task and snapshot).
    pub acks: u64,
    /// NotifyCheckpointComplete messages received.
    pub notifications: u64,
    /// AbortCheckpoint messages received.
    pub aborts: u64,
    /// StreamError messages received (acknowledgements the server refused).
    pub stream_errors: u64,
    /// Barriers a task manager missed because it fell behind.
    pub missed_barriers: u64,
    /// The lowest and the highest checkpoint id triggered (periodic checkpoints and
    /// savepoints alike), if any was.
    pub checkpoint_ids: Option<(u64, u64)>,
}

/// Live counts of a running simulation, shared with its task managers; cheap to clone.
/// Lets a caller wait for an observable effect instead of sleeping.
#[derive(Clone, Debug, Default)]
pub struct SimulationProgress {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    triggers: AtomicU64,
    acks: AtomicU64,
    notifications: AtomicU64,
    aborts: AtomicU64,
    stream_errors: AtomicU64,
    missed_barriers: AtomicU64,
    /// When the latest acknowledgement was sent, in nanoseconds after [`time_base`].
    last_ack_sent: AtomicU64,
    /// See [`SimulationCounts::checkpoint_ids`]; updated once per trigger, not per ack.
    checkpoint_ids: std::sync::Mutex<Option<(u64, u64)>>,
}

impl SimulationProgress {
    /// The counts so far.
    pub fn counts(&self) -> SimulationCounts {
        let c = &self.counters;
        SimulationCounts {
            triggers: c.triggers.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            notifications: c.notifications.load(Ordering::Relaxed),
            aborts: c.aborts.load(Ordering::Relaxed),
            stream_errors: c.stream_errors.load(Ordering::Relaxed),
            missed_barriers: c.missed_barriers.load(Ordering::Relaxed),
            checkpoint_ids: *c.checkpoint_ids.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// When the latest acknowledgement was handed to a stream; None before the first.
    /// Benchmarks read it as the moment the last task of a snapshot acknowledged.
    pub fn last_ack_sent(&self) -> Option<Instant> {
        match self.counters.last_ack_sent.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(time_base() + Duration::from_nanos(nanos)),
        }
    }

    fn note_ack_sent(&self) {
        let nanos = time_base().elapsed().as_nanos().max(1) as u64;
        self.counters
            .last_ack_sent
            .fetch_max(nanos, Ordering::Relaxed);
    }

    fn note_trigger(&self, checkpoint_id: u64) {
        let mut ids = self
            .counters
            .checkpoint_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *ids = widen(*ids, Some((checkpoint_id, checkpoint_id)));
    }
}

/// The smallest range holding both ranges.
fn widen(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some((low_a, high_a)), Some((low_b, high_b))) => {
            Some((low_a.min(low_b), high_a.max(high_b)))
        }
        (range, None) | (None, range) => range,
    }
}

/// The instant [`SimulationProgress::last_ack_sent`] counts from (a plain atomic is
/// cheaper per ack than a lock around an `Instant`).
fn time_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Adds `amount` to one of the live counters.
fn count(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// What happened during a simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulationSummary {
    /// Number of simulated task managers.
    pub task_managers: u32,
    /// Number of simulated tasks (all subtasks of the job).
    pub tasks: u32,
    /// What the task managers saw and did.
    pub counts: SimulationCounts,
    /// Why the simulation ended.
    pub end: SimulationEnd,
}

/// Why a simulation could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The configuration cannot be simulated.
    #[error("invalid simulator setting {setting}: {detail}")]
    InvalidConfig {
        /// The setting's name, as in [`SimulatorConfig`].
        setting: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A task manager could not connect.
    #[error("task manager {task_manager_id} could not connect: {source}")]
    Connect {
        /// The task manager.
        task_manager_id: String,
        /// What the client reported.
        #[source]
        source: ClientError,
    },
    /// Connecting a task manager took longer than the bound.
    #[error("task manager {task_manager_id} got no Welcome within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout {
        /// The task manager.
        task_manager_id: String,
    },
    /// The server refused a simulated task (e.g. NOT_FOUND for an unregistered job).
    #[error("task manager {task_manager_id}: the server refused a task: {code}: {message}")]
    TaskRefused {
        /// The task manager.
        task_manager_id: String,
        /// gRPC status code name from the server's StreamError.
        code: String,
        /// The server's explanation.
        message: String,
    },
}

/// The attempt id of subtask `subtask_index` of the vertex at `vertex_index`.
pub fn attempt_id(vertex_index: usize, subtask_index: u32) -> u64 {
    vertex_index as u64 * ATTEMPT_ID_STRIDE + u64::from(subtask_index) + 1
}

/// Spreads every subtask, in vertex order then subtask order, round-robin over
/// `task_managers` task managers, so each holds a mix of vertices like a real cluster.
pub fn spread_subtasks(
    vertices: &[SimulatedVertex],
    wait_for_vertices: &[String],
    task_managers: u32,
) -> Vec<TaskManagerPlan> {
    let mut plans: Vec<TaskManagerPlan> = (0..task_managers)
        .map(|n| TaskManagerPlan {
            task_manager_id: format!("tm-{n}"),
            tasks: Vec::new(),
        })
        .collect();
    if plans.is_empty() {
        return plans;
    }
    let mut next = 0;
    for (vertex_index, vertex) in vertices.iter().enumerate() {
        let acknowledges = wait_for_vertices.is_empty() || wait_for_vertices.contains(&vertex.id);
        for subtask_index in 0..vertex.parallelism {
            plans[next].tasks.push(SimulatedTask {
                vertex_id: vertex.id.clone(),
                subtask_index,
                attempt_id: attempt_id(vertex_index, subtask_index),
                acknowledges,
            });
            next = (next + 1) % plans.len();
        }
    }
    plans
}

/// The state one task reports for a checkpoint: small and recognisable in a restore.
pub fn state_handle(task: &SimulatedTask, checkpoint_id: u64) -> proto::StateHandle {
    proto::StateHandle {
        name: "state".to_string(),
        data: Some(proto::state_handle::Data::Inline(Bytes::from(format!(
            "{}/{}@{checkpoint_id}",
            task.vertex_id, task.subtask_index
        )))),
        key_groups: None,
    }
}

/// A configured simulation: validated, with its tasks spread over the task managers.
#[derive(Clone, Debug)]
pub struct Simulator {
    config: SimulatorConfig,
    plans: Vec<TaskManagerPlan>,
}

impl Simulator {
    /// Validates `config` and plans which task manager runs which subtask.
    pub fn new(config: SimulatorConfig) -> Result<Simulator, SimulatorError> {
        let invalid =
            |setting, detail: String| Err(SimulatorError::InvalidConfig { setting, detail });
        if config.job_id.trim().is_empty() {
            return invalid("job_id", "must not be empty".into());
        }
        if config.task_managers == 0 {
            return invalid("task_managers", "must be at least 1".into());
        }
        if config.vertices.is_empty() {
            return invalid("vertices", "the job needs at least one vertex".into());
        }
        for (i, vertex) in config.vertices.iter().enumerate() {
            if vertex.parallelism == 0 {
                return invalid(
                    "vertices",
                    format!("vertices[{i}].parallelism must be at least 1"),
                );
            }
            if u64::from(vertex.parallelism) >= ATTEMPT_ID_STRIDE {
                return invalid(
                    "vertices",
                    format!(
                        "vertices[{i}].parallelism must be below {ATTEMPT_ID_STRIDE} (attempt ids encode the subtask)"
                    ),
                );
            }
        }
        for id in &config.wait_for_vertices {
            if !config.vertices.iter().any(|vertex| vertex.id == *id) {
                return invalid(
                    "wait_for_vertices",
                    format!("{id:?} is not a vertex of the job"),
                );
            }
        }
        let plans = spread_subtasks(
            &config.vertices,
            &config.wait_for_vertices,
            config.task_managers,
        );
        Ok(Simulator { config, plans })
    }

    /// Which task manager runs which subtask.
    pub fn plans(&self) -> &[TaskManagerPlan] {
        &self.plans
    }

    /// Connects every task manager with its tasks RUNNING. Once this returns the
    /// coordinator knows every task, so snapshots can be triggered.
    pub async fn connect(
        self,
        channel: impl Into<AuthChannel>,
    ) -> Result<Simulation, SimulatorError> {
        let channel = channel.into();
        let mut sessions = Vec::with_capacity(self.plans.len());
        for plan in &self.plans {
            sessions.push(connect_task_manager(&channel, &self.config.job_id, plan).await?);
        }
        tracing::info!(
            job_id = %self.config.job_id,
            task_managers = self.plans.len(),
            "simulated task managers connected"
        );
        Ok(Simulation {
            simulator: self,
            sessions,
            progress: SimulationProgress::default(),
        })
    }
}

/// A simulation whose task managers are connected; [`run`](Self::run) acknowledges.
pub struct Simulation {
    simulator: Simulator,
    sessions: Vec<TaskManagerSession>,
    progress: SimulationProgress,
}

impl Simulation {
    /// Live counts, also readable while [`run`](Self::run) is running.
    pub fn progress(&self) -> SimulationProgress {
        self.progress.clone()
    }

    /// The leader epoch the server welcomed the task managers with (the largest one).
    pub fn leader_epoch(&self) -> u64 {
        self.sessions
            .iter()
            .map(TaskManagerSession::leader_epoch)
            .max()
            .unwrap_or_default()
    }

    /// Acknowledges every barrier until `shutdown` resolves or a stream ends, then closes
    /// every stream (the coordinator then treats the tasks as lost).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> SimulationSummary {
        let Simulation {
            simulator,
            sessions,
            progress,
        } = self;
        let (barriers, _) = broadcast::channel(BARRIER_BUFFER);
        let (stop, stopped) = watch::channel(false);
        let mut running = JoinSet::new();
        for (session, plan) in sessions.into_iter().zip(simulator.plans.iter().cloned()) {
            let task_manager = SimulatedTaskManager {
                session,
                job_id: simulator.config.job_id.clone(),
                tasks: plan.tasks.into_iter().filter(|t| t.acknowledges).collect(),
                ack_delay: simulator.config.ack_delay,
                barriers: barriers.clone(),
                acknowledged: BTreeSet::new(),
                progress: progress.clone(),
            };
            let barrier_receiver = barriers.subscribe();
            running.spawn(task_manager.run(barrier_receiver, stopped.clone()));
        }

        let end = tokio::select! {
            () = shutdown => SimulationEnd::Shutdown,
            first = running.join_next() => match first {
                Some(Ok(end)) => end,
                Some(Err(join_error)) => SimulationEnd::StreamClosed {
                    task_manager_id: "unknown".to_string(),
                    error: Some(format!("task manager task failed: {join_error}")),
                },
                // Only when there are no task managers, which `new` rules out.
                None => SimulationEnd::Shutdown,
            },
        };
        let _ = stop.send(true);
        let draining = async {
            while let Some(joined) = running.join_next().await {
                if let Err(join_error) = joined {
                    tracing::warn!("simulated task manager failed: {join_error}");
                }
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, draining).await.is_err() {
            tracing::warn!("simulated task managers did not stop in time; cancelling them");
            running.abort_all();
        }
        SimulationSummary {
            task_managers: simulator.config.task_managers,
            tasks: simulator.plans.iter().map(|p| p.tasks.len() as u32).sum(),
            counts: progress.counts(),
            end,
        }
    }
}

/// Validates `config`, connects the task managers and runs until `shutdown` resolves or
/// a stream ends (see [`Simulator::connect`] and [`Simulation::run`]).
pub async fn simulate(
    channel: impl Into<AuthChannel>,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<SimulationSummary, SimulatorError> {
    let simulation = Simulator::new(config)?.connect(channel).await?;
    Ok(simulation.run(shutdown).await)
}

async fn connect_task_manager(
    channel: &AuthChannel,
    job_id: &str,
    plan: &TaskManagerPlan,
) -> Result<TaskManagerSession, SimulatorError> {
    let tasks = plan.task_infos(job_id);
    let task_manager_id = plan.task_manager_id.clone();
    let connecting = TaskManagerSession::connect(channel.clone(), &task_manager_id, tasks);
    let session = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(SimulatorError::ConnectTimeout { task_manager_id }),
        Ok(Err(source)) => {
            return Err(SimulatorError::Connect {
                task_manager_id,
                source,
            });
        }
        Ok(Ok(session)) => session,
    };
    if let Some(refusal) = session.refusals().first() {
        return Err(SimulatorError::TaskRefused {
            task_manager_id,
            code: refusal.code.clone(),
            message: refusal.message.clone(),
        });
    }
    Ok(session)
}

/// A barrier for one checkpoint, passed from the task manager that got the trigger to all.
#[derive(Clone, Debug)]
struct Barrier {
    checkpoint_id: u64,
    fencing_token: u64,
}

/// Resolves once the simulation is told to stop (or its stop sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What one loop step asks the task manager to do next.
enum Step {
    Continue,
    End(SimulationEnd),
}

struct SimulatedTaskManager {
    session: TaskManagerSession,
    job_id: String,
    /// The tasks that acknowledge (the snapshot waits for them).
    tasks: Vec<SimulatedTask>,
    ack_delay: Duration,
    barriers: broadcast::Sender<Barrier>,
    /// Checkpoints already acknowledged, newest last, bounded.
    acknowledged: BTreeSet<u64>,
    progress: SimulationProgress,
}

impl SimulatedTaskManager {
    async fn run(
        mut self,
        mut barrier_receiver: broadcast::Receiver<Barrier>,
        mut stop: watch::Receiver<bool>,
    ) -> SimulationEnd {
        loop {
            let step = tokio::select! {
                () = stopped(&mut stop) => Step::End(SimulationEnd::Shutdown),
                message = self.session.next_message() => self.on_message(message),
                barrier = barrier_receiver.recv() => match barrier {
                    Ok(barrier) => self.on_barrier(barrier, &mut stop).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(task_manager = self.session.task_manager_id(), missed, "simulated task manager fell behind; barriers skipped");
                        count(&self.progress.counters.missed_barriers, missed);
                        Step::Continue
                    }
                    // The run loop holds a sender until every task manager has stopped.
                    Err(broadcast::error::RecvError::Closed) => Step::End(SimulationEnd::Shutdown),
                },
            };
            if let Step::End(end) = step {
                break end;
            }
        }
    }

    fn on_message(&mut self, message: Result<Option<Downward>, ClientError>) -> Step {
        let task_manager_id = self.session.task_manager_id().to_string();
        match message {
            Ok(Some(Downward::TriggerCheckpoint(trigger))) => {
                count(&self.progress.counters.triggers, 1);
                self.progress.note_trigger(trigger.checkpoint_id);
                tracing::debug!(task_manager = %task_manager_id, checkpoint_id = trigger.checkpoint_id, attempt_id = trigger.attempt_id, "trigger received");
                if trigger.job_id == self.job_id {
                    // No receivers only happens while stopping; nothing is lost then.
                    let _ = self.barriers.send(Barrier {
                        checkpoint_id: trigger.checkpoint_id,
                        fencing_token: trigger.fencing_token,
                    });
                }
            }
            Ok(Some(Downward::NotifyCheckpointComplete(notify))) => {
                count(&self.progress.counters.notifications, 1);
                tracing::debug!(task_manager = %task_manager_id, checkpoint_id = notify.checkpoint_id, "checkpoint complete");
            }
            Ok(Some(Downward::AbortCheckpoint(abort))) => {
                count(&self.progress.counters.aborts, 1);
                tracing::debug!(task_manager = %task_manager_id, checkpoint_id = abort.checkpoint_id, reason = abort.reason, "checkpoint aborted: {}", abort.message);
            }
            Ok(Some(Downward::Error(error))) => {
                count(&self.progress.counters.stream_errors, 1);
                tracing::warn!(task_manager = %task_manager_id, checkpoint_id = error.checkpoint_id, code = %error.code, "server refused a message: {}", error.message);
            }
            Ok(Some(Downward::JobStatusChanged(change))) => {
                tracing::info!(task_manager = %task_manager_id, job_id = change.job_id, status = change.status, failing = change.failing, "job status changed: {}", change.message);
            }
            Ok(Some(Downward::Welcome(_))) => {}
            Ok(None) => {
                return Step::End(SimulationEnd::StreamClosed {
                    task_manager_id,
                    error: None,
                });
            }
            Err(error) => {
                return Step::End(SimulationEnd::StreamClosed {
                    task_manager_id,
                    error: Some(error.to_string()),
                });
            }
        }
        Step::Continue
    }

    /// Acknowledges `barrier`'s checkpoint for every awaited task, once per checkpoint.
    async fn on_barrier(&mut self, barrier: Barrier, stop: &mut watch::Receiver<bool>) -> Step {
        if !self.acknowledged.insert(barrier.checkpoint_id) {
            return Step::Continue;
        }
        if self.acknowledged.len() > REMEMBERED_CHECKPOINTS {
            self.acknowledged.pop_first();
        }
        let acknowledging = async {
            if !self.ack_delay.is_zero() {
                tokio::time::sleep(self.ack_delay).await;
            }
            for task in &self.tasks {
                let ack = ToCoordinator::Acknowledge(proto::AcknowledgeRequest {
                    job_id: self.job_id.clone(),
                    checkpoint_id: barrier.checkpoint_id,
                    attempt_id: task.attempt_id,
                    handles: vec![state_handle(task, barrier.checkpoint_id)],
                    sync_duration_ms: 0,
                    async_duration_ms: 0,
                    fencing_token: barrier.fencing_token,
                });
                self.session.send(ack).await?;
                count(&self.progress.counters.acks, 1);
            }
            self.progress.note_ack_sent();
            Ok::<(), ClientError>(())
        };
        tokio::select! {
            () = stopped(stop) => Step::End(SimulationEnd::Shutdown),
            sent = acknowledging => match sent {
                Ok(()) => Step::Continue,
                Err(error) => Step::End(SimulationEnd::StreamClosed {
                    task_manager_id: self.session.task_manager_id().to_string(),
                    error: Some(error.to_string()),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertices() -> Vec<SimulatedVertex> {
        [("source", 2), ("map", 2), ("sink", 1)]
            .into_iter()
            .map(|(id, parallelism)| SimulatedVertex {
                id: id.to_string(),
                parallelism,
            })
            .collect()
    }

    fn config(task_managers: u32) -> SimulatorConfig {
        SimulatorConfig {
            job_id: "wordcount".to_string(),
            vertices: vertices(),
            wait_for_vertices: Vec::new(),
            task_managers,
            ack_delay: Duration::ZERO,
        }
    }

    fn names(plan: &TaskManagerPlan) -> Vec<String> {
        plan.tasks
            .iter()
            .map(|t| format!("{}#{}", t.vertex_id, t.subtask_index))
            .collect()
    }

    #[test]
    fn attempt_ids_encode_vertex_and_subtask_and_are_never_zero() {
        assert_eq!(attempt_id(0, 0), 1);
        assert_eq!(attempt_id(0, 1), 2);
        assert_eq!(attempt_id(2, 0), 2_000_001);
    }

    #[test]
    fn subtasks_are_spread_round_robin_in_vertex_order() {
        let plans = spread_subtasks(&vertices(), &[], 3);
        let ids: Vec<_> = plans.iter().map(|p| p.task_manager_id.as_str()).collect();
        assert_eq!(ids, ["tm-0", "tm-1", "tm-2"]);
        assert_eq!(names(&plans[0]), ["source#0", "map#1"]);
        assert_eq!(names(&plans[1]), ["source#1", "sink#0"]);
        assert_eq!(names(&plans[2]), ["map#0"]);
        let mut attempts: Vec<u64> = plans
            .iter()
            .flat_map(|p| p.tasks.iter().map(|t| t.attempt_id))
            .collect();
        attempts.sort_unstable();
        attempts.dedup();
        assert_eq!(attempts.len(), 5, "attempt ids are unique");
    }

    #[test]
    fn more_task_managers_than_subtasks_leaves_some_idle() {
        let plans = spread_subtasks(&vertices(), &[], 7);
        assert_eq!(plans.len(), 7);
        assert!(plans[5].tasks.is_empty() && plans[6].tasks.is_empty());
        assert_eq!(plans.iter().map(|p| p.tasks.len()).sum::<usize>(), 5);
    }

    #[test]
    fn only_wait_for_vertices_acknowledge() {
        let plans = spread_subtasks(&vertices(), &["sink".to_string()], 1);
        let acknowledging: Vec<_> = plans[0]
            .tasks
            .iter()
            .filter(|t| t.acknowledges)
            .map(|t| t.vertex_id.as_str())
            .collect();
        assert_eq!(acknowledging, ["sink"]);
    }

    #[test]
    fn state_names_the_subtask_and_checkpoint() {
        let plans = spread_subtasks(&vertices(), &[], 1);
        let handle = state_handle(&plans[0].tasks[3], 7);
        assert_eq!(handle.name, "state");
        assert_eq!(
            handle.data,
            Some(proto::state_handle::Data::Inline(Bytes::from_static(
                b"map/1@7"
            )))
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let mut no_managers = config(0);
        no_managers.task_managers = 0;
        let mut empty_vertex = config(1);
        empty_vertex.vertices[1].parallelism = 0;
        let mut unknown_wait_for = config(1);
        unknown_wait_for.wait_for_vertices = vec!["nope".to_string()];
        for (config, setting) in [
            (no_managers, "task_managers"),
            (empty_vertex, "vertices[1].parallelism"),
            (unknown_wait_for, "wait_for_vertices"),
        ] {
            let error = Simulator::new(config).expect_err(setting);
            assert!(error.to_string().contains(setting), "{error}");
        }
        assert!(Simulator::new(config(3)).is_ok());
    }
}

/// What [`simulate_reconnecting`] did over all its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconnectingSummary {
    /// Connections of the whole simulated cluster that were made (1 + reconnects).
    pub connections: u64,
    /// Attempts to connect that failed (no leader, a server down, ...).
    pub failed_attempts: u64,
    /// Counts summed over every connection.
    pub counts: SimulationCounts,
    /// The largest leader epoch seen; a reconnect never goes back below it.
    pub leader_epoch: u64,
    /// Each connection in the order they were made: the leader epoch it served and the
    /// checkpoint ids it triggered, to check that ids only go up across leaders.
    pub terms: Vec<ObservedTerm>,
}

/// One connection of [`simulate_reconnecting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedTerm {
    pub leader_epoch: u64,
    /// The lowest and highest checkpoint id triggered on it.
    pub checkpoint_ids: Option<(u64, u64)>,
}

/// Runs the simulated task managers against whichever of `servers` (addresses of the
/// replicas, or one Service address) accepts them, until `shutdown` resolves. When a
/// stream ends (the leader changed or went away) every task manager disconnects and the
/// cluster reconnects, trying each server in turn and waiting a [`Backoff`](super::Backoff) after a
/// round in which none accepted; a server whose leader epoch is lower than one
/// already seen (a deposed leader) is passed over.
pub async fn simulate_reconnecting(
    servers: &[String],
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ReconnectingSummary, SimulatorError> {
    Simulator::new(config.clone())?;
    if servers.is_empty() {
        return Err(SimulatorError::InvalidConfig {
            setting: "servers",
            detail: "name at least one server address".into(),
        });
    }
    tokio::pin!(shutdown);
    let mut summary = ReconnectingSummary::default();
    let mut backoff = super::Backoff::new();
    let mut next_server = 0;
    loop {
        let server = &servers[next_server % servers.len()];
        next_server += 1;
        let connecting = async {
            let channel =
                super::connect(server)
                    .await
                    .map_err(|source| SimulatorError::Connect {
                        task_manager_id: format!("(all, to {server})"),
                        source,
                    })?;
            Simulator::new(config.clone())?.connect(channel).await
        };
        let connected = tokio::select! {
            // Bounded: a server that hangs (frozen, cut off) must not hold the cluster.
            connected = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => {
                connected.unwrap_or_else(|_| Err(SimulatorError::ConnectTimeout {
                    task_manager_id: format!("(all, to {server})"),
                }))
            }
            () = &mut shutdown => return Ok(summary),
        };
        let simulation = match connected {
            Ok(simulation) if simulation.leader_epoch() >= summary.leader_epoch => simulation,
            Ok(stale) => {
                tracing::warn!(
                    server,
                    epoch = stale.leader_epoch(),
                    seen = summary.leader_epoch,
                    "passing over a deposed leader"
                );
                summary.failed_attempts += 1;
                // Every server once, then wait: one of them is likely the new leader.
                if next_server % servers.len() == 0 {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
            Err(error) => {
                tracing::debug!(server, "simulated task managers could not connect: {error}");
                summary.failed_attempts += 1;
                // Every server once, then wait: one of them is likely the new leader.
                if next_server % servers.len() == 0 {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
        };
        backoff.reset();
        summary.connections += 1;
        summary.leader_epoch = simulation.leader_epoch();
        // The same server first when reconnecting: it may just have restarted.
        next_server -= 1;
        let ended = simulation.run(&mut shutdown).await;
        summary.counts.add(&ended.counts);
        summary.terms.push(ObservedTerm {
            leader_epoch: summary.leader_epoch,
            checkpoint_ids: ended.counts.checkpoint_ids,
        });
        if ended.end == SimulationEnd::Shutdown {
            return Ok(summary);
        }
        tracing::info!(server, end = ?ended.end, "simulated task managers lost their streams; reconnecting");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

impl SimulationCounts {
    fn add(&mut self, other: &SimulationCounts) {
        self.triggers += other.triggers;
        self.acks += other.acks;
        self.notifications += other.notifications;
        self.aborts += other.aborts;
        self.stream_errors += other.stream_errors;
        self.missed_barriers += other.missed_barriers;
        self.checkpoint_ids = widen(self.checkpoint_ids, other.checkpoint_ids);
    }
}
