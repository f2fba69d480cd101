//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 over a temporary
//! data directory, job registration, and a [`Cluster`] of simulated task managers that
//! talk to the server over the real `Connect` stream.
//!
//! Every wait is bounded by [`WAIT`], so a broken server fails a test instead of hanging it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod etcd;
pub mod moto;

use savepoint_coordinator::client::{self, Downward, TaskManagerSession};
use savepoint_coordinator::coordinator::model::{DEFAULT_MAX_PARALLELISM, KeyGroupRange};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::task_gateway_client::TaskGatewayClient;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::server::{self, ServerConfig, ServerError};
use savepoint_coordinator::store::Stores;
use savepoint_coordinator::store::faults::{FaultSwitch, FaultyStore};
use savepoint_coordinator::store::fs::FsStore;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Upper bound of every wait; a healthy run needs milliseconds, a loaded CI machine more.
pub const WAIT: Duration = Duration::from_secs(10);

/// Pause between two looks at state the server changes in the background.
const POLL: Duration = Duration::from_millis(20);

/// How long a server may take to stop; below its shutdown grace period, so a drain that
/// hangs until the grace period cuts it short fails the test.
const STOP_WITHIN: Duration = Duration::from_secs(3);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);
/// Short, so that tests stopping a server under a savepoint that can never finish do not
/// wait long; tests of the drain itself set their own.
pub const SAVEPOINT_DRAIN: Duration = Duration::from_millis(300);

/// A loopback port that was free a moment ago, for a server started as a process.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

/// Prints `line`, and appends it to the file `TEST_REPORT` names: cargo test hides what
/// a passing test prints, and `.ci/test` shows that file after the run (the figures of
/// the crash and failover tests).
pub fn report(line: &str) {
    println!("{line}");
    let Ok(path) = std::env::var("TEST_REPORT") else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()));
    if let Err(error) = appended {
        panic!("cannot write test figures to TEST_REPORT={path}: {error}");
    }
}

/// The gRPC health status of `service` ("" for the whole server) over `channel`, or
/// None if the server does not answer within `timeout` (frozen, down).
pub async fn health_check(
    channel: Channel,
    service: &str,
    timeout: Duration,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_string(),
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = tokio::time::timeout(timeout, client.check(request))
        .await
        .ok()?
        .ok()?;
    Some(response.into_inner().status())
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `probe` until it returns Some, failing the test after [`WAIT`]; for what the
/// server does in the background (retention, periodic savepoints, disposal of claimed
/// snapshots).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// A server started in-process by [`server::run`], as the binary does.
pub struct TestServer {
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Starts a server on a free loopback port with its store in `data_dir`.
    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_on(data_dir, None, |_| {}).await
    }

    /// Starts a server on loopback port `port` (0: any free one), e.g. the port of a
    /// server that was stopped, so that clients find it again where it was.
    pub async fn start_on_port(data_dir: &Path, port: u16) -> TestServer {
        TestServer::start_at(data_dir, port, None, |_| {}).await
    }

    /// Starts a server whose settings `configure` changes.
    pub async fn start_with(
        data_dir: &Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        TestServer::start_on(data_dir, None, configure).await
    }

    /// Starts a server whose filesystem store in `data_dir` injects the faults that the
    /// returned switch turns on.
    pub async fn start_with_faults(data_dir: &Path) -> (TestServer, FaultSwitch) {
        TestServer::start_with_faults_and(data_dir, |_| {}).await
    }

    /// Like [`start_with_faults`](Self::start_with_faults), with settings that
    /// `configure` changes.
    pub async fn start_with_faults_and(
        data_dir: &Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> (TestServer, FaultSwitch) {
        let store = FsStore::open(data_dir.to_path_buf()).expect("open the data directory");
        let (stores, faults) = FaultyStore::wrap(std::sync::Arc::new(store));
        (
            TestServer::start_on(data_dir, Some(stores), configure).await,
            faults,
        )
    }

    async fn start_on(
        data_dir: &Path,
        stores: Option<Stores>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        TestServer::start_at(data_dir, 0, stores, configure).await
    }

    async fn start_at(
        data_dir: &Path,
        port: u16,
        stores: Option<Stores>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let address = listener.local_addr().expect("bound address");
        let mut config = ServerConfig {
            data_dir: data_dir.to_path_buf(),
            shutdown_grace: SHUTDOWN_GRACE,
            savepoint_drain: SAVEPOINT_DRAIN,
            ..ServerConfig::default()
        };
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let running = match stores {
            None => tokio::spawn(server::run(config, listener, stopped)),
            Some(stores) => {
                tokio::spawn(server::run_with_stores(config, stores, listener, stopped))
            }
        };
        TestServer {
            address,
            data_dir: data_dir.to_path_buf(),
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// Tells the server to shut down, as SIGTERM does, without waiting for it; finish
    /// with [`stop`](Self::stop).
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and checks that it drained in time and ended without error.
    pub async fn stop(mut self) {
        self.begin_stop();
        let running = self.running.take().expect("running");
        tokio::time::timeout(STOP_WITHIN, running)
            .await
            .unwrap_or_else(|_| panic!("the server did not stop within {STOP_WITHIN:?}"))
            .expect("server task panicked")
            .expect("server::run failed");
    }

    /// Stops the server, lets `while_down` change its data directory (a crash, a
    /// damaged disk), and starts a new one on it.
    pub async fn restart_after(self, while_down: impl FnOnce(&Path)) -> TestServer {
        let data_dir = self.data_dir.clone();
        self.stop().await;
        while_down(&data_dir);
        TestServer::start(&data_dir).await
    }

    /// Stops the server and starts a new one on the same data directory (new port).
    pub async fn restart(self) -> TestServer {
        let data_dir = self.data_dir.clone();
        self.stop().await;
        TestServer::start(&data_dir).await
    }

    pub async fn channel(&self) -> Channel {
        within("a connection", client::connect(&self.address.to_string()))
            .await
            .expect("connect to the test server")
    }

    pub async fn savepoints(&self) -> SavepointServiceClient<Channel> {
        SavepointServiceClient::new(self.channel().await)
    }

    pub async fn gateway(&self) -> TaskGatewayClient<Channel> {
        TaskGatewayClient::new(self.channel().await)
    }

    /// The server's default savepoint directory.
    pub fn savepoint_dir(&self) -> PathBuf {
        self.data_dir.join("savepoints")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A checkpoint policy with the given interval (0: no periodic checkpoints) and timeout.
pub fn policy(interval_ms: u64, timeout_ms: u64) -> proto::CheckpointPolicy {
    proto::CheckpointPolicy {
        interval_ms,
        timeout_ms,
        ..Default::default()
    }
}

/// A job of `vertices` (id, parallelism). The first vertex is the source (trigger
/// vertex); every vertex is waited for and told about completions.
pub fn job(
    job_id: &str,
    vertices: &[(&str, u32)],
    policy: proto::CheckpointPolicy,
) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        job_id: job_id.to_string(),
        vertices: vertices
            .iter()
            .map(|(id, parallelism)| proto::Vertex {
                id: id.to_string(),
                parallelism: *parallelism,
                max_parallelism: 0,
            })
            .collect(),
        trigger_vertices: vec![vertices[0].0.to_string()],
        policy: Some(policy),
        ..Default::default()
    }
}

/// Registers `job`; returns its fencing token.
pub async fn register(
    client: &mut SavepointServiceClient<Channel>,
    job: &proto::RegisterJobRequest,
) -> u64 {
    within("RegisterJob", client.register_job(job.clone()))
        .await
        .expect("RegisterJob")
        .into_inner()
        .fencing_token
}

pub async fn set_status(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    status: proto::JobStatus,
) {
    let request = proto::UpdateJobStatusRequest {
        job_id: job_id.to_string(),
        status: status.into(),
    };
    within("UpdateJobStatus", client.update_job_status(request))
        .await
        .expect("UpdateJobStatus");
}

pub async fn stats(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> proto::GetCheckpointStatsResponse {
    let request = proto::GetCheckpointStatsRequest {
        job_id: job_id.to_string(),
    };
    within("GetCheckpointStats", client.get_checkpoint_stats(request))
        .await
        .expect("GetCheckpointStats")
        .into_inner()
}

pub async fn trigger_savepoint(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> Result<proto::TriggerSavepointResponse, tonic::Status> {
    let request = proto::TriggerSavepointRequest {
        job_id: job_id.to_string(),
        target_directory: String::new(),
        ..Default::default()
    };
    within("TriggerSavepoint", client.trigger_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

/// Triggers a checkpoint and waits for it; returns its id.
pub async fn trigger_checkpoint(client: &mut SavepointServiceClient<Channel>, job_id: &str) -> u64 {
    try_trigger_checkpoint(client, job_id)
        .await
        .expect("TriggerCheckpoint")
}

/// Triggers a checkpoint and waits for its outcome: its id, or why it failed.
pub async fn try_trigger_checkpoint(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> Result<u64, tonic::Status> {
    let request = proto::TriggerCheckpointRequest {
        job_id: job_id.to_string(),
    };
    within("TriggerCheckpoint", client.trigger_checkpoint(request))
        .await
        .map(|response| response.into_inner().checkpoint_id)
}

/// GetSavepointOperation.
pub async fn operation(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    operation_id: &str,
) -> Result<proto::SavepointOperation, tonic::Status> {
    let request = proto::GetSavepointOperationRequest {
        job_id: job_id.to_string(),
        operation_id: operation_id.to_string(),
    };
    within(
        "GetSavepointOperation",
        client.get_savepoint_operation(request),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The job's savepoints as ListSavepoints returns them (newest first).
pub async fn list_savepoints(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> Vec<proto::SavepointInfo> {
    let request = proto::ListSavepointsRequest {
        job_id: job_id.to_string(),
    };
    within("ListSavepoints", client.list_savepoints(request))
        .await
        .expect("ListSavepoints")
        .into_inner()
        .savepoints
}

/// The `x-failure-reason` metadata of a failed snapshot's status.
pub fn failure_reason(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("x-failure-reason")
        .and_then(|value| value.to_str().ok())
}

/// The state a simulated subtask reports for `checkpoint_id`: one inline handle whose
/// bytes name the subtask and the checkpoint, keyed (with the subtask's key groups) for
/// keyed vertices and subtask-bound otherwise.
pub fn state_of(
    vertex: &str,
    subtask: u32,
    parallelism: u32,
    keyed: bool,
    checkpoint_id: u64,
) -> proto::StateHandle {
    let max_parallelism = keyed.then_some(DEFAULT_MAX_PARALLELISM);
    state_in_key_groups(vertex, subtask, parallelism, max_parallelism, checkpoint_id)
}

/// Like [`state_of`], for a vertex with `max_parallelism` key groups (None: not keyed).
pub fn state_in_key_groups(
    vertex: &str,
    subtask: u32,
    parallelism: u32,
    max_parallelism: Option<u32>,
    checkpoint_id: u64,
) -> proto::StateHandle {
    let key_groups = max_parallelism.map(|max| {
        let range = KeyGroupRange::for_subtask(max, parallelism, subtask);
        proto::KeyGroupRange {
            start: range.start,
            end: range.end,
        }
    });
    proto::StateHandle {
        name: format!("{vertex}-state"),
        data: Some(proto::state_handle::Data::Inline(
            format!("{vertex}#{subtask}@{checkpoint_id}")
                .into_bytes()
                .into(),
        )),
        key_groups,
    }
}

/// One entry of a restore's assignment.
pub fn assignment(
    vertex: &str,
    subtask: u32,
    handles: Vec<proto::StateHandle>,
) -> proto::SubtaskAssignment {
    proto::SubtaskAssignment {
        subtask: Some(proto::SubtaskRef {
            vertex_id: vertex.to_string(),
            subtask_index: subtask,
        }),
        handles,
    }
}

/// The assignment a restore of checkpoint `id` gives `vertices` when their parallelism
/// is unchanged: every subtask gets exactly what its namesake acknowledged.
pub fn unchanged_assignments(
    vertices: &[(&str, u32)],
    keyed: &[&str],
    id: u64,
) -> Vec<proto::SubtaskAssignment> {
    vertices
        .iter()
        .flat_map(|&(vertex, parallelism)| {
            (0..parallelism).map(move |i| {
                let handle = state_of(vertex, i, parallelism, keyed.contains(&vertex), id);
                assignment(vertex, i, vec![handle])
            })
        })
        .collect()
}

/// One subtask attempt run by a simulated task manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTask {
    pub vertex: String,
    pub subtask: u32,
    pub parallelism: u32,
    /// Number of key groups of the vertex.
    pub max_parallelism: u32,
    pub attempt: u64,
    pub keyed: bool,
    pub task_manager: String,
}

impl SimTask {
    /// `vertex#subtask`, as the server names subtasks in messages.
    pub fn name(&self) -> String {
        format!("{}#{}", self.vertex, self.subtask)
    }

    pub fn state(&self, checkpoint_id: u64) -> proto::StateHandle {
        state_in_key_groups(
            &self.vertex,
            self.subtask,
            self.parallelism,
            self.keyed.then_some(self.max_parallelism),
            checkpoint_id,
        )
    }
}

/// Which triggers the cluster acknowledges by itself (on every task of every task
/// manager, since only sources receive the trigger).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    All,
    /// Checkpoints are acknowledged, savepoints held until [`Cluster::acknowledge_all`].
    HoldSavepoints,
    /// Nothing is acknowledged by itself.
    None,
}

impl Acks {
    fn covers(self, kind: proto::SnapshotKind) -> bool {
        match self {
            Acks::All => true,
            Acks::HoldSavepoints => kind == proto::SnapshotKind::Checkpoint,
            Acks::None => false,
        }
    }
}

/// A message one task manager received from the server.
#[derive(Clone, Debug)]
pub struct Received {
    pub task_manager: String,
    pub message: Downward,
}

enum Command {
    Acknowledge {
        checkpoint_id: u64,
        fencing_token: u64,
    },
    Decline {
        checkpoint_id: u64,
        attempt_id: u64,
        reason: String,
    },
}

/// Simulated task managers running every subtask of one job (RUNNING), spread round-robin.
pub struct Cluster {
    pub job_id: String,
    /// Every task, in vertex order then subtask order.
    pub tasks: Vec<SimTask>,
    commands: Vec<(String, mpsc::UnboundedSender<Command>)>,
    log: watch::Receiver<Vec<Received>>,
    workers: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Connects `task_managers` task managers to `server` and registers every subtask of
    /// `job` as RUNNING; vertices named in `keyed` report keyed state.
    pub async fn start(
        server: &TestServer,
        job: &proto::RegisterJobRequest,
        task_managers: usize,
        acks: Acks,
        keyed: &[&str],
    ) -> Cluster {
        // Named after the job, so clusters of different jobs can share one server.
        let names: Vec<String> = (0..task_managers)
            .map(|i| format!("{}-tm-{i}", job.job_id))
            .collect();
        let mut tasks = Vec::new();
        for vertex in &job.vertices {
            for subtask in 0..vertex.parallelism {
                tasks.push(SimTask {
                    vertex: vertex.id.clone(),
                    subtask,
                    parallelism: vertex.parallelism,
                    max_parallelism: match vertex.max_parallelism {
                        0 => DEFAULT_MAX_PARALLELISM.max(vertex.parallelism),
                        max => max,
                    },
                    attempt: tasks.len() as u64 + 1,
                    keyed: keyed.contains(&vertex.id.as_str()),
                    task_manager: names[tasks.len() % task_managers].clone(),
                });
            }
        }
        let (received_tx, received_rx) = mpsc::unbounded_channel();
        let mut commands = Vec::new();
        let mut workers = Vec::new();
        for name in &names {
            let own: Vec<SimTask> = tasks
                .iter()
                .filter(|t| &t.task_manager == name)
                .cloned()
                .collect();
            let infos = own.iter().map(|t| task_info(&job.job_id, t)).collect();
            let session = within(
                "a task manager to be welcomed",
                TaskManagerSession::connect(server.channel().await, name, infos),
            )
            .await
            .expect("task manager connects");
            assert_eq!(
                session.accepted_tasks() as usize,
                own.len(),
                "{name}'s tasks accepted"
            );
            let (command_tx, command_rx) = mpsc::unbounded_channel();
            commands.push((name.clone(), command_tx));
            workers.push(tokio::spawn(run_task_manager(
                session,
                job.job_id.clone(),
                own,
                command_rx,
                received_tx.clone(),
            )));
        }
        let (log_tx, log) = watch::channel(Vec::new());
        let all: Vec<_> = commands.iter().map(|(_, c)| c.clone()).collect();
        workers.push(tokio::spawn(drive(received_rx, log_tx, all, acks)));
        Cluster {
            job_id: job.job_id.clone(),
            tasks,
            commands,
            log,
            workers,
        }
    }

    /// Every message received so far, in arrival order.
    pub fn log(&self) -> Vec<Received> {
        self.log.borrow().clone()
    }

    /// Waits until `find` returns Some on the message log.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        mut find: impl FnMut(&[Received]) -> Option<T>,
    ) -> T {
        let mut log = self.log.clone();
        let mut found = None;
        within(
            what,
            log.wait_for(|log| {
                found = find(log);
                found.is_some()
            }),
        )
        .await
        .expect("the cluster's driver stopped");
        found.expect("found")
    }

    /// The first trigger of `kind` (to any task).
    pub async fn first_trigger(&self, kind: proto::SnapshotKind) -> proto::TriggerCheckpoint {
        self.wait_for(&format!("a {kind:?} trigger"), |log| {
            triggers(log).find(|t| t.kind() == kind).cloned()
        })
        .await
    }

    /// The first trigger of `checkpoint_id` (to any task).
    pub async fn wait_for_trigger(&self, checkpoint_id: u64) -> proto::TriggerCheckpoint {
        self.wait_for(
            &format!("the trigger of checkpoint {checkpoint_id}"),
            |log| {
                triggers(log)
                    .find(|t| t.checkpoint_id == checkpoint_id)
                    .cloned()
            },
        )
        .await
    }

    /// Waits until every task got NotifyCheckpointComplete for `checkpoint_id`; returns
    /// the notified attempt ids, sorted.
    pub async fn wait_for_notifications(&self, checkpoint_id: u64) -> Vec<u64> {
        let total = self.tasks.len();
        self.wait_for(
            &format!("completion notices of checkpoint {checkpoint_id}"),
            |log| {
                let attempts = notified_attempts(log, checkpoint_id);
                (attempts.len() >= total).then_some(attempts)
            },
        )
        .await
    }

    /// Waits until every task got AbortCheckpoint for `checkpoint_id`; returns them
    /// sorted by attempt id.
    pub async fn wait_for_aborts(&self, checkpoint_id: u64) -> Vec<proto::AbortCheckpoint> {
        let total = self.tasks.len();
        self.wait_for(&format!("aborts of checkpoint {checkpoint_id}"), |log| {
            let mut aborts: Vec<proto::AbortCheckpoint> = log
                .iter()
                .filter_map(|r| match &r.message {
                    Downward::AbortCheckpoint(abort) if abort.checkpoint_id == checkpoint_id => {
                        Some(abort.clone())
                    }
                    _ => None,
                })
                .collect();
            aborts.sort_by_key(|a| a.attempt_id);
            (aborts.len() >= total).then_some(aborts)
        })
        .await
    }

    /// Makes every task acknowledge `checkpoint_id`, which must have been triggered.
    pub fn acknowledge_all(&self, checkpoint_id: u64) {
        let trigger = self.trigger_of(checkpoint_id);
        for (_, commands) in &self.commands {
            let _ = commands.send(Command::Acknowledge {
                checkpoint_id,
                fencing_token: trigger.fencing_token,
            });
        }
    }

    /// Makes the tasks of one task manager (named `<job>-tm-<i>`) acknowledge
    /// `checkpoint_id`, which must have been triggered.
    pub fn acknowledge_from(&self, task_manager: &str, checkpoint_id: u64) {
        let trigger = self.trigger_of(checkpoint_id);
        let (_, commands) = self
            .commands
            .iter()
            .find(|(name, _)| name == task_manager)
            .unwrap_or_else(|| panic!("no task manager {task_manager} in this cluster"));
        let _ = commands.send(Command::Acknowledge {
            checkpoint_id,
            fencing_token: trigger.fencing_token,
        });
    }

    /// Makes the task that received the first trigger of `checkpoint_id` decline it
    /// with `reason`; returns that task.
    pub fn decline(&self, checkpoint_id: u64, reason: &str) -> SimTask {
        let trigger = self.trigger_of(checkpoint_id);
        let task = self
            .tasks
            .iter()
            .find(|t| t.attempt == trigger.attempt_id)
            .expect("the trigger went to a task of this cluster")
            .clone();
        let (_, commands) = self
            .commands
            .iter()
            .find(|(name, _)| *name == task.task_manager)
            .expect("task manager of the task");
        let _ = commands.send(Command::Decline {
            checkpoint_id,
            attempt_id: task.attempt,
            reason: reason.to_string(),
        });
        task
    }

    /// Bytes of state all tasks together acknowledge for `checkpoint_id`.
    pub fn state_size(&self, checkpoint_id: u64) -> u64 {
        self.tasks
            .iter()
            .map(|t| match t.state(checkpoint_id).data {
                Some(proto::state_handle::Data::Inline(bytes)) => bytes.len() as u64,
                other => panic!("simulated state is inline, got {other:?}"),
            })
            .sum()
    }

    /// Waits until the server has closed every task manager's stream.
    pub async fn wait_until_closed(mut self) {
        for worker in self.workers.drain(..) {
            within("the server to close the streams", worker)
                .await
                .expect("task manager worker");
        }
    }

    fn trigger_of(&self, checkpoint_id: u64) -> proto::TriggerCheckpoint {
        triggers(&self.log.borrow())
            .find(|t| t.checkpoint_id == checkpoint_id)
            .cloned()
            .unwrap_or_else(|| panic!("checkpoint {checkpoint_id} was not triggered"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

/// The triggers in a message log, in arrival order.
pub fn triggers(log: &[Received]) -> impl Iterator<Item = &proto::TriggerCheckpoint> {
    log.iter().filter_map(|r| match &r.message {
        Downward::TriggerCheckpoint(trigger) => Some(trigger),
        _ => None,
    })
}

/// The JobStatusChanged messages in a message log, in arrival order.
pub fn status_changes(log: &[Received]) -> Vec<proto::JobStatusChanged> {
    log.iter()
        .filter_map(|r| match &r.message {
            Downward::JobStatusChanged(change) => Some(change.clone()),
            _ => None,
        })
        .collect()
}

/// The attempts notified of the completion of `checkpoint_id`, sorted.
pub fn notified_attempts(log: &[Received], checkpoint_id: u64) -> Vec<u64> {
    let mut attempts: Vec<u64> = log
        .iter()
        .filter_map(|r| match &r.message {
            Downward::NotifyCheckpointComplete(n) if n.checkpoint_id == checkpoint_id => {
                Some(n.attempt_id)
            }
            _ => None,
        })
        .collect();
    attempts.sort_unstable();
    attempts
}

fn task_info(job_id: &str, task: &SimTask) -> proto::TaskInfo {
    proto::TaskInfo {
        job_id: job_id.to_string(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: task.vertex.clone(),
            subtask_index: task.subtask,
        }),
        attempt_id: task.attempt,
        state: proto::TaskState::Running.into(),
    }
}

/// One task manager: forwards what it receives to the driver and carries out commands
/// for all of its tasks.
async fn run_task_manager(
    mut session: TaskManagerSession,
    job_id: String,
    tasks: Vec<SimTask>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    received: mpsc::UnboundedSender<Received>,
) {
    let task_manager = session.task_manager_id().to_string();
    loop {
        tokio::select! {
            message = session.next_message() => {
                let Ok(Some(message)) = message else { return };
                let _ = received.send(Received { task_manager: task_manager.clone(), message });
            }
            Some(command) = commands.recv() => match command {
                Command::Acknowledge { checkpoint_id, fencing_token } => {
                    for task in &tasks {
                        let ack = proto::AcknowledgeRequest {
                            job_id: job_id.clone(),
                            checkpoint_id,
                            attempt_id: task.attempt,
                            handles: vec![task.state(checkpoint_id)],
                            fencing_token,
                            ..Default::default()
                        };
                        if session.send(Upward::Acknowledge(ack)).await.is_err() {
                            return;
                        }
                    }
                }
                Command::Decline { checkpoint_id, attempt_id, reason } => {
                    if session.decline(&job_id, checkpoint_id, attempt_id, &reason).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

/// Logs every received message and acknowledges the triggers `acks` covers, once per
/// checkpoint, on every task manager.
async fn drive(
    mut received: mpsc::UnboundedReceiver<Received>,
    log: watch::Sender<Vec<Received>>,
    commands: Vec<mpsc::UnboundedSender<Command>>,
    acks: Acks,
) {
    let mut acknowledged = HashSet::new();
    while let Some(message) = received.recv().await {
        if let Downward::TriggerCheckpoint(trigger) = &message.message
            && acks.covers(trigger.kind())
            && acknowledged.insert(trigger.checkpoint_id)
        {
            for commands in &commands {
                let _ = commands.send(Command::Acknowledge {
                    checkpoint_id: trigger.checkpoint_id,
                    fencing_token: trigger.fencing_token,
                });
            }
        }
        log.send_modify(|log| log.push(message));
    }
}
