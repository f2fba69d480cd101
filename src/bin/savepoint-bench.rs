//! savepoint-bench: the server benchmark over loopback (issue 7).
//!
//! Starts the real server in-process on 127.0.0.1:0 (`server::run_with_stores`, the
//! filesystem store in a temporary directory, fsync included) and drives it with
//! simulated task managers on the real `TaskGateway.Connect` stream. The only thing added
//! to the server is a thin timing layer around the checkpoint and savepoint stores: it
//! notes when a fully acknowledged snapshot's metadata write starts (every task has
//! acknowledged; a savepoint's Pending record may still be in flight) and when it is
//! durable. The simulated task managers note when they sent the last ack.
//!
//! In the same run it measures the references the targets are relative to: a bare tonic
//! server carrying the same acknowledgement messages over the same kind of stream, and a
//! raw write + fsync + rename (+ fsync of the directory) of the same metadata bytes.
//!
//! `cargo run --release --bin savepoint-bench` prints a table of every figure, its target
//! and pass/fail, and our figures next to Apache Flink's. `--quick` runs a few seconds
//! with small sizes so CI keeps it working: it fails only when the benchmark itself
//! breaks (an error, a snapshot that does not complete, a count that is wrong), never on
//! a missed timing target. `--strict` also fails on missed targets.

use anyhow::{Context, anyhow, ensure};
use async_trait::async_trait;
use clap::Parser;
use savepoint_coordinator::client::simulator::{
    SimulatedTask, SimulatedVertex, Simulation, Simulator, SimulatorConfig, spread_subtasks,
    state_handle,
};
use savepoint_coordinator::client::{self, Downward, TaskManagerSession};
use savepoint_coordinator::coordinator::model::{CheckpointId, CompletedSnapshot, JobId};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::task_gateway_server::{TaskGateway, TaskGatewayServer};
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::server::{self, ServerConfig};
use savepoint_coordinator::store::{
    CompletedCheckpointStore, SavepointRecord, SavepointStore, StoreResult, Stores,
};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Task counts of the Flink comparison (its measurements covered 2 to 16 tasks).
const FLINK_TASK_COUNTS: [u32; 4] = [2, 4, 8, 16];
/// Apache Flink 2.3.0 on this machine class: trigger -> last acknowledgement, median.
const FLINK_TRIGGER_TO_LAST_ACK: &str = "9-20 ms";
/// Apache Flink 2.3.0: trigger -> COMPLETED through its REST API, median.
const FLINK_REST_TRIGGER_TO_COMPLETED: &str = "22.8 ms";
/// Apache Flink 2.3.0: the smallest interval between periodic checkpoints.
const FLINK_PERIODIC_FLOOR: &str = "10 ms";
/// Idle time before each measured savepoint (see `measure_savepoints`).
const SAVEPOINT_GAP: Duration = Duration::from_millis(10);
/// Largest parallelism of one vertex (max parallelism is capped at 32 768).
const VERTEX_CHUNK: u32 = 25_000;

/// Server benchmark over loopback: savepoint latency, streamed acknowledgement
/// throughput against bare tonic, large jobs, many jobs; with targets and Flink figures.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// A few seconds with small sizes (for CI): timing targets are reported, not enforced.
    #[arg(long)]
    quick: bool,
    /// Exit with status 1 when a timing target is missed (never in --quick mode).
    #[arg(long)]
    strict: bool,
    /// Savepoints per task count (default 100, quick 10).
    #[arg(long)]
    savepoints: Option<usize>,
    /// Registered jobs with periodic checkpoints (default 1000, quick 100).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run only these parts (repeatable; default all), e.g. to profile one of them.
    #[arg(long, value_enum)]
    only: Vec<Part>,
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Savepoints of 2, 4, 8, 16 and 1 000 tasks, and the raw fsync reference.
    Savepoints,
    /// Streamed acknowledgements against a bare tonic stream (jobs of 10 000 and 100 000
    /// subtasks).
    Throughput,
    /// Checkpoints of one job of 100 000 subtasks.
    Large,
    /// Many jobs with periodic checkpoints, and the smallest interval.
    Periodic,
}

/// Sizes of one run.
struct Plan {
    savepoints: usize,
    large_savepoints: usize,
    large_tasks: u32,
    /// (subtasks of the job, rounds) of the throughput comparisons.
    throughput: Vec<(u32, usize)>,
    huge_subtasks: u32,
    huge_rounds: usize,
    jobs: usize,
    jobs_run: Duration,
    fast_run: Duration,
}

impl Plan {
    fn of(args: &Args) -> Plan {
        if args.quick {
            Plan {
                savepoints: args.savepoints.unwrap_or(10),
                large_savepoints: 3,
                large_tasks: 1000,
                throughput: vec![(10_000, 3)],
                huge_subtasks: 100_000,
                huge_rounds: 1,
                jobs: args.jobs.unwrap_or(100),
                jobs_run: Duration::from_millis(2500),
                fast_run: Duration::from_millis(500),
            }
        } else {
            Plan {
                savepoints: args.savepoints.unwrap_or(100),
                large_savepoints: 30,
                large_tasks: 1000,
                throughput: vec![(10_000, 20), (100_000, 5)],
                huge_subtasks: 100_000,
                huge_rounds: 3,
                jobs: args.jobs.unwrap_or(1000),
                jobs_run: Duration::from_secs(10),
                fast_run: Duration::from_secs(3),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Timing layer around the snapshot stores.

/// When each snapshot's metadata write started and ended, by (job, checkpoint id).
#[derive(Default)]
struct StoreTimings {
    writes: Mutex<HashMap<(String, u64), (Instant, Instant)>>,
}

impl StoreTimings {
    fn record(&self, job: &JobId, id: CheckpointId, started: Instant) {
        let ended = Instant::now();
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((job.to_string(), id.0), (started, ended));
    }

    /// (write started, durable) of snapshot `id` of `job`.
    fn of(&self, job: &str, id: u64) -> anyhow::Result<(Instant, Instant)> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(job.to_string(), id))
            .copied()
            .ok_or_else(|| anyhow!("no metadata write was seen for snapshot {id} of job {job}"))
    }
}

/// A snapshot store that notes when writes start and end, and otherwise forwards.
struct Timed<S: ?Sized> {
    inner: Arc<S>,
    timings: Arc<StoreTimings>,
}

#[async_trait]
impl CompletedCheckpointStore for Timed<dyn CompletedCheckpointStore> {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        let started = Instant::now();
        let added = self.inner.add(snapshot).await;
        if added.is_ok() {
            self.timings
                .record(&snapshot.job_id, snapshot.checkpoint_id, started);
        }
        added
    }
    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.inner.remove(job, id).await
    }
    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        self.inner.load_all(job).await
    }
    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        self.inner.remove_all(job).await
    }
}

#[async_trait]
impl SavepointStore for Timed<dyn SavepointStore> {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        self.inner.savepoint_path(target_dir, job, id)
    }
    async fn prepare(&self, path: &str) -> StoreResult<()> {
        self.inner.prepare(path).await
    }
    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        let started = Instant::now();
        let written = self.inner.write_metadata(target_dir, snapshot).await;
        if written.is_ok() {
            self.timings
                .record(&snapshot.job_id, snapshot.checkpoint_id, started);
        }
        written
    }
    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        self.inner.index(record).await
    }
    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        self.inner.read(path).await
    }
    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        self.inner.list(job).await
    }
    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        self.inner.dispose(path).await
    }
    async fn retire(&self, path: &str) -> StoreResult<bool> {
        self.inner.retire(path).await
    }
    fn resolve(&self, path: &str) -> StoreResult<PathBuf> {
        self.inner.resolve(path)
    }
    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        self.inner.resume_disposals(job).await
    }
}

// ---------------------------------------------------------------------------------------
// The server under test.

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("savepoint-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct BenchServer {
    url: String,
    data_dir: TempDir,
    timings: Arc<StoreTimings>,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

impl BenchServer {
    async fn start() -> anyhow::Result<BenchServer> {
        let data_dir = TempDir::new()?;
        let config = ServerConfig {
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        let timings = Arc::new(StoreTimings::default());
        let stores = Stores::filesystem(data_dir.path()).context("filesystem store")?;
        let stores = Stores {
            checkpoints: Arc::new(Timed {
                inner: stores.checkpoints.clone(),
                timings: timings.clone(),
            }),
            savepoints: Arc::new(Timed {
                inner: stores.savepoints.clone(),
                timings: timings.clone(),
            }),
            ..stores
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server::run_with_stores(config, stores, listener, async {
            let _ = stopped.await;
        }));
        Ok(BenchServer {
            url,
            data_dir,
            timings,
            stop,
            serving,
        })
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(client::connect(&self.url).await?)
    }

    async fn client(&self) -> anyhow::Result<SavepointServiceClient<Channel>> {
        Ok(SavepointServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.serving)
            .await
            .context("server stops in time")??
            .context("server ran without error")?;
        Ok(())
    }
}

/// Vertices of a job of `tasks` tasks: a source with `sources` subtasks (the trigger
/// tasks), the rest in vertices of at most 25 000.
fn vertices(tasks: u32, sources: u32) -> Vec<SimulatedVertex> {
    let mut vertices = vec![SimulatedVertex {
        id: "source".to_string(),
        parallelism: sources,
    }];
    let mut rest = tasks - sources;
    while rest > 0 {
        let parallelism = rest.min(VERTEX_CHUNK);
        vertices.push(SimulatedVertex {
            id: format!("map-{}", vertices.len()),
            parallelism,
        });
        rest -= parallelism;
    }
    vertices
}

fn register_request(job_id: &str, vertices: &[SimulatedVertex]) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        job_id: job_id.to_string(),
        vertices: vertices
            .iter()
            .map(|v| proto::Vertex {
                id: v.id.clone(),
                parallelism: v.parallelism,
                max_parallelism: 0,
            })
            .collect(),
        trigger_vertices: vec!["source".to_string()],
        wait_for_vertices: Vec::new(),
        commit_vertices: Vec::new(),
        policy: Some(proto::CheckpointPolicy {
            timeout_ms: 120_000,
            ..Default::default()
        }),
        savepoint_dir: String::new(),
        savepoint_policy: None,
    }
}

async fn set_running(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> anyhow::Result<()> {
    client
        .update_job_status(proto::UpdateJobStatusRequest {
            job_id: job_id.to_string(),
            status: proto::JobStatus::Running.into(),
        })
        .await
        .with_context(|| format!("UpdateJobStatus of {job_id}"))?;
    Ok(())
}

/// A registered, RUNNING job whose tasks run on connected simulated task managers.
struct SimulatedJob {
    job_id: String,
    tasks: u32,
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<savepoint_coordinator::client::simulator::SimulationSummary>,
    progress: savepoint_coordinator::client::simulator::SimulationProgress,
}

impl SimulatedJob {
    async fn start(
        server: &BenchServer,
        job_id: &str,
        vertices: Vec<SimulatedVertex>,
        task_managers: u32,
    ) -> anyhow::Result<SimulatedJob> {
        let mut client = server.client().await?;
        client
            .register_job(register_request(job_id, &vertices))
            .await
            .with_context(|| format!("RegisterJob {job_id}"))?;
        set_running(&mut client, job_id).await?;
        let tasks = vertices.iter().map(|v| v.parallelism).sum();
        let simulation: Simulation = Simulator::new(SimulatorConfig {
            job_id: job_id.to_string(),
            vertices,
            wait_for_vertices: Vec::new(),
            task_managers,
            ack_delay: Duration::ZERO,
        })?
        .connect(server.channel().await?)
        .await?;
        let progress = simulation.progress();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(simulation.run(async {
            let _ = stopped.await;
        }));
        Ok(SimulatedJob {
            job_id: job_id.to_string(),
            tasks,
            stop,
            running,
            progress,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let summary = self.running.await?;
        ensure!(
            summary.counts.stream_errors == 0,
            "job {}: the server refused {} messages of the simulated task managers",
            self.job_id,
            summary.counts.stream_errors
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Figures.

/// Sorted samples of one figure, in milliseconds.
#[derive(Clone, Debug, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, duration: Duration) {
        self.0.push(duration.as_secs_f64() * 1e3);
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn p50(&self) -> f64 {
        self.percentile(50.0)
    }

    fn p99(&self) -> f64 {
        self.percentile(99.0)
    }
}

/// One row of the result table.
struct Row {
    figure: String,
    value: String,
    target: String,
    /// None: reported only, no target.
    pass: Option<bool>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.into(),
            target: String::new(),
            pass: None,
        });
    }

    fn check(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        pass: bool,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            pass: Some(pass),
        });
    }

    fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    fn print(&self) {
        let width = |f: fn(&Row) -> usize, title: &str| {
            self.rows.iter().map(f).max().unwrap_or(0).max(title.len())
        };
        let (w1, w2, w3) = (
            width(|r| r.figure.len(), "figure"),
            width(|r| r.value.len(), "measured"),
            width(|r| r.target.len(), "target"),
        );
        println!(
            "| {:<w1$} | {:>w2$} | {:<w3$} | pass |",
            "figure", "measured", "target"
        );
        println!(
            "|{}|{}|{}|------|",
            "-".repeat(w1 + 2),
            "-".repeat(w2 + 2),
            "-".repeat(w3 + 2)
        );
        for row in &self.rows {
            let pass = match row.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "",
            };
            println!(
                "| {:<w1$} | {:>w2$} | {:<w3$} | {pass:<4} |",
                row.figure, row.value, row.target
            );
        }
    }
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.1} ms")
    }
}

// ---------------------------------------------------------------------------------------
// Savepoints: trigger -> last ack, trigger -> durable, and the raw fsync reference.

/// Figures of the savepoints of one job.
struct SavepointFigures {
    tasks: u32,
    /// Trigger -> the last acknowledgement handed to a stream by a task manager.
    to_last_ack: Samples,
    /// Trigger -> the metadata write starts: all acknowledged (written while the Pending
    /// record is; the reply waits for both).
    to_write: Samples,
    to_durable: Samples,
    completion: Samples,
    raw_publish: Samples,
    metadata_bytes: usize,
}

/// Writes `bytes` as a new file in `dir` the way a durable atomic publish must: a temp
/// file, fsync, rename, fsync of the directory. Returns how long that took.
fn raw_publish(dir: &Path, bytes: &[u8], n: usize) -> anyhow::Result<Duration> {
    let temp = dir.join(format!(".raw-{n}.tmp"));
    let target = dir.join(format!("raw-{n}"));
    let started = Instant::now();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, &target)?;
    std::fs::File::open(dir)?.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(&target)?;
    Ok(took)
}

async fn measure_savepoints(
    server: &BenchServer,
    tasks: u32,
    iterations: usize,
) -> anyhow::Result<SavepointFigures> {
    let job_id = format!("savepoint-{tasks}");
    let task_managers = (tasks / 8).clamp(1, 16);
    let job = SimulatedJob::start(
        server,
        &job_id,
        vertices(tasks, tasks.div_ceil(2)),
        task_managers,
    )
    .await?;
    let mut client = server.client().await?;
    let raw_dir = server.data_dir.path().join("raw-publish");
    std::fs::create_dir_all(&raw_dir)?;
    let mut figures = SavepointFigures {
        tasks,
        to_last_ack: Samples::default(),
        to_write: Samples::default(),
        to_durable: Samples::default(),
        completion: Samples::default(),
        raw_publish: Samples::default(),
        metadata_bytes: 0,
    };
    // One savepoint first that is not counted: it reserves the first id block and
    // creates the directories every later savepoint finds.
    let mut previous_bytes: Option<Vec<u8>> = None;
    for n in 0..=iterations {
        // One savepoint at a time on an idle server, as a user takes them: the previous
        // one's background bookkeeping (its final operation record) is written by now.
        tokio::time::sleep(SAVEPOINT_GAP).await;
        // The raw reference alternates between just before and just after the savepoint,
        // so neither one always finds the journal freshly committed.
        let raw_before = match &previous_bytes {
            Some(bytes) if n % 2 == 1 => Some(raw_publish(&raw_dir, bytes, n)?),
            _ => None,
        };
        let acks_before = job.progress.counts().acks;
        let triggered = Instant::now();
        let response = client
            .trigger_savepoint(proto::TriggerSavepointRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("savepoint {n} of {job_id}"))?
            .into_inner();
        let durable = triggered.elapsed();
        let metadata = Path::new(&response.path).join("_metadata");
        let bytes = std::fs::read(&metadata)
            .with_context(|| format!("reading {} of a completed savepoint", metadata.display()))?;
        ensure!(!bytes.is_empty(), "{} is empty", metadata.display());
        let acks = job.progress.counts().acks - acks_before;
        ensure!(
            acks == u64::from(tasks),
            "savepoint {} of {job_id} completed after {acks} acknowledgements, expected {tasks}",
            response.checkpoint_id
        );
        let (write_started, write_ended) = server.timings.of(&job_id, response.checkpoint_id)?;
        let raw = match raw_before {
            Some(raw) => raw,
            None => raw_publish(&raw_dir, &bytes, n)?,
        };
        let metadata_bytes = bytes.len();
        previous_bytes = Some(bytes);
        if n == 0 {
            continue;
        }
        figures.to_durable.push(durable);
        let last_ack = job
            .progress
            .last_ack_sent()
            .context("no acknowledgement was sent")?;
        ensure!(
            last_ack >= triggered,
            "the last acknowledgement of savepoint {} predates its trigger",
            response.checkpoint_id
        );
        figures.to_last_ack.push(last_ack - triggered);
        figures.to_write.push(write_started - triggered);
        figures.completion.push(write_ended - write_started);
        figures.raw_publish.push(raw);
        figures.metadata_bytes = metadata_bytes;
    }
    job.stop().await?;
    Ok(figures)
}

// ---------------------------------------------------------------------------------------
// Streamed acknowledgements against a bare tonic stream.

/// A TaskGateway that only counts the acknowledgements it receives: tonic, HTTP/2 and
/// protobuf decoding, nothing of the coordinator.
#[derive(Clone, Default)]
struct BareGateway {
    received: Arc<AtomicU64>,
    changed: Arc<Notify>,
}

#[tonic::async_trait]
impl TaskGateway for BareGateway {
    async fn acknowledge(
        &self,
        _request: Request<proto::AcknowledgeRequest>,
    ) -> Result<Response<proto::AcknowledgeResponse>, Status> {
        Err(Status::unimplemented("the bare stream only serves Connect"))
    }

    async fn decline(
        &self,
        _request: Request<proto::DeclineRequest>,
    ) -> Result<Response<proto::DeclineResponse>, Status> {
        Err(Status::unimplemented("the bare stream only serves Connect"))
    }

    type ConnectStream =
        Pin<Box<dyn Stream<Item = Result<proto::CoordinatorMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::TaskManagerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let accepted_tasks = match inbound.message().await? {
            Some(proto::TaskManagerMessage {
                message: Some(Upward::Hello(hello)),
            }) => hello.tasks.len() as u32,
            _ => return Err(Status::invalid_argument("Hello first")),
        };
        let received = self.received.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(Upward::Acknowledge(_)) = message.message {
                    received.fetch_add(1, Ordering::Relaxed);
                    changed.notify_one();
                }
            }
        });
        let welcome = proto::CoordinatorMessage {
            message: Some(proto::coordinator_message::Message::Welcome(
                proto::Welcome { accepted_tasks },
            )),
            leader_epoch: 0,
        };
        let messages = tokio_stream::once(Ok(welcome)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(messages)))
    }
}

/// A bare tonic server and `task_managers` streams to it that send the acks the
/// simulator sends for a job of `tasks` tasks, one round at a time.
struct BareStream {
    gateway: BareGateway,
    tasks: u32,
    start: watch::Sender<u64>,
    rounds: u64,
    senders: JoinSet<anyhow::Result<()>>,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl BareStream {
    async fn start(tasks: u32, task_managers: u32) -> anyhow::Result<BareStream> {
        let gateway = BareGateway::default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
            accepted.and_then(|stream| {
                stream.set_nodelay(true)?;
                Ok(stream)
            })
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(TaskGatewayServer::new(gateway.clone()))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        let job_id = "throughput".to_string();
        let plans = spread_subtasks(&vertices(tasks, task_managers), &[], task_managers);
        let channel = client::connect(&url).await?;
        let (start, started) = watch::channel(0u64);
        let mut senders = JoinSet::new();
        for plan in plans {
            let task_infos = plan.task_infos(&job_id);
            let session =
                TaskManagerSession::connect(channel.clone(), &plan.task_manager_id, task_infos)
                    .await?;
            senders.spawn(send_acks_on_start(
                session,
                job_id.clone(),
                plan.tasks,
                started.clone(),
            ));
        }
        Ok(BareStream {
            gateway,
            tasks,
            start,
            rounds: 0,
            senders,
            stop,
            serving,
        })
    }

    /// Sends one ack per task; returns the acks per second the server received.
    async fn round(&mut self) -> anyhow::Result<f64> {
        self.rounds += 1;
        let expected = self.rounds * u64::from(self.tasks);
        let began = Instant::now();
        self.start.send_replace(self.rounds);
        while self.gateway.received.load(Ordering::Relaxed) < expected {
            tokio::time::timeout(Duration::from_secs(60), self.gateway.changed.notified())
                .await
                .context("the bare server stopped receiving acknowledgements")?;
        }
        Ok(f64::from(self.tasks) / began.elapsed().as_secs_f64())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let BareStream {
            start,
            mut senders,
            stop,
            serving,
            ..
        } = self;
        drop(start);
        while let Some(sent) = senders.join_next().await {
            sent??;
        }
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        Ok(())
    }
}

/// Sends one acknowledgement per task, exactly as the simulator builds and sends them,
/// each time `start` announces a new round (its value is the checkpoint id).
async fn send_acks_on_start(
    session: TaskManagerSession,
    job_id: String,
    tasks: Vec<SimulatedTask>,
    mut start: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    while start.changed().await.is_ok() {
        let checkpoint_id = *start.borrow_and_update();
        for task in &tasks {
            let ack = Upward::Acknowledge(proto::AcknowledgeRequest {
                job_id: job_id.clone(),
                checkpoint_id,
                attempt_id: task.attempt_id,
                handles: vec![state_handle(task, checkpoint_id)],
                sync_duration_ms: 0,
                async_duration_ms: 0,
                fencing_token: 0,
            });
            session.send(ack).await?;
        }
    }
    Ok(())
}

/// Figures of checkpoints of a large job through the real server.
#[derive(Default)]
struct LargeJobFigures {
    /// Acknowledgements per second from the trigger to the last ack processed.
    acks_per_second: Vec<f64>,
    to_durable: Samples,
    completed: usize,
}

impl SimulatedJob {
    /// Triggers one checkpoint (TriggerCheckpoint, which returns once it is durable)
    /// and checks that every task acknowledged it.
    async fn checkpoint(
        &self,
        server: &BenchServer,
        client: &mut SavepointServiceClient<Channel>,
        figures: &mut LargeJobFigures,
    ) -> anyhow::Result<()> {
        let job_id = &self.job_id;
        let acks_before = self.progress.counts().acks;
        let triggered = Instant::now();
        let response = client
            .trigger_checkpoint(proto::TriggerCheckpointRequest {
                job_id: job_id.clone(),
            })
            .await
            .with_context(|| format!("checkpoint of {job_id} ({} tasks)", self.tasks))?
            .into_inner();
        figures.to_durable.push(triggered.elapsed());
        let acks = self.progress.counts().acks - acks_before;
        ensure!(
            acks == u64::from(self.tasks),
            "checkpoint {} of {job_id} completed after {acks} acknowledgements, expected {}",
            response.checkpoint_id,
            self.tasks
        );
        let (last_ack, _) = server.timings.of(job_id, response.checkpoint_id)?;
        figures
            .acks_per_second
            .push(f64::from(self.tasks) / (last_ack - triggered).as_secs_f64());
        figures.completed += 1;
        Ok(())
    }
}

/// Triggers `rounds` checkpoints of a job of `tasks` tasks on `task_managers` simulated
/// task managers.
async fn measure_large_job(
    server: &BenchServer,
    job_id: &str,
    tasks: u32,
    task_managers: u32,
    rounds: usize,
) -> anyhow::Result<LargeJobFigures> {
    let job = SimulatedJob::start(
        server,
        job_id,
        vertices(tasks, task_managers),
        task_managers,
    )
    .await?;
    let mut client = server.client().await?;
    let mut figures = LargeJobFigures::default();
    for _ in 0..rounds {
        job.checkpoint(server, &mut client, &mut figures).await?;
    }
    job.stop().await?;
    Ok(figures)
}

/// Streamed acks through the server against the bare stream, rounds alternating so
/// that both see the same load; returns (bare acks/s, the server's figures).
async fn measure_throughput(
    server: &BenchServer,
    tasks: u32,
    task_managers: u32,
    rounds: usize,
) -> anyhow::Result<(Vec<f64>, LargeJobFigures)> {
    let mut bare = BareStream::start(tasks, task_managers).await?;
    let job = SimulatedJob::start(
        server,
        &format!("throughput-{tasks}"),
        vertices(tasks, task_managers),
        task_managers,
    )
    .await?;
    let mut client = server.client().await?;
    let mut bare_figures = Vec::with_capacity(rounds);
    let mut figures = LargeJobFigures::default();
    for _ in 0..rounds {
        bare_figures.push(bare.round().await?);
        job.checkpoint(server, &mut client, &mut figures).await?;
    }
    bare.stop().await?;
    job.stop().await?;
    Ok((bare_figures, figures))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// Many jobs with periodic checkpoints.

/// A task manager hosting tasks of many jobs that acknowledges every trigger at once.
async fn acknowledge_triggers(mut session: TaskManagerSession) -> anyhow::Result<()> {
    while let Some(message) = session.next_message().await? {
        if let Downward::TriggerCheckpoint(trigger) = message {
            let handle = proto::StateHandle {
                name: "state".to_string(),
                data: Some(proto::state_handle::Data::Inline(
                    format!("{}@{}", trigger.attempt_id, trigger.checkpoint_id).into(),
                )),
                key_groups: None,
            };
            session.acknowledge(&trigger, vec![handle]).await?;
        }
    }
    Ok(())
}

struct PeriodicFigures {
    jobs: usize,
    run: Duration,
    completed_min: u64,
    completed_total: u64,
    failed_total: u64,
    duration_p50_ms: u64,
}

async fn checkpoint_stats(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
) -> anyhow::Result<proto::GetCheckpointStatsResponse> {
    Ok(client
        .get_checkpoint_stats(proto::GetCheckpointStatsRequest {
            job_id: job_id.to_string(),
        })
        .await
        .with_context(|| format!("GetCheckpointStats {job_id}"))?
        .into_inner())
}

/// Registers `jobs` jobs of two subtasks each (both sources) with checkpoints every
/// `interval` on up to 4 task managers, and counts the checkpoints each job completes
/// within a window of about `run` (failures count over the whole run).
async fn measure_periodic(
    server: &BenchServer,
    prefix: &str,
    jobs: usize,
    interval: Duration,
    run: Duration,
) -> anyhow::Result<PeriodicFigures> {
    let task_managers = jobs.clamp(1, 4);
    let mut client = server.client().await?;
    let job_ids: Vec<String> = (0..jobs).map(|n| format!("{prefix}-{n}")).collect();
    let mut hosted: Vec<Vec<proto::TaskInfo>> = vec![Vec::new(); task_managers];
    for (n, job_id) in job_ids.iter().enumerate() {
        let mut request = register_request(
            job_id,
            &[SimulatedVertex {
                id: "source".to_string(),
                parallelism: 2,
            }],
        );
        request.policy = Some(proto::CheckpointPolicy {
            interval_ms: interval.as_millis() as u64,
            timeout_ms: 60_000,
            ..Default::default()
        });
        client
            .register_job(request)
            .await
            .with_context(|| format!("RegisterJob {job_id}"))?;
        for subtask_index in 0..2 {
            hosted[n % task_managers].push(proto::TaskInfo {
                job_id: job_id.clone(),
                subtask: Some(proto::SubtaskRef {
                    vertex_id: "source".to_string(),
                    subtask_index,
                }),
                attempt_id: u64::from(subtask_index) + 1,
                state: proto::TaskState::Running.into(),
            });
        }
    }
    let channel = server.channel().await?;
    let mut running = JoinSet::new();
    for (n, tasks) in hosted.into_iter().enumerate() {
        let session =
            TaskManagerSession::connect(channel.clone(), &format!("{prefix}-tm-{n}"), tasks)
                .await?;
        ensure!(
            session.refusals().is_empty(),
            "tasks refused: {:?}",
            session.refusals()
        );
        running.spawn(acknowledge_triggers(session));
    }
    for job_id in &job_ids {
        set_running(&mut client, job_id).await?;
    }
    // Every job's schedule is running once its first interval has passed; then every
    // job is counted over the same window.
    tokio::time::sleep(interval + interval / 2).await;
    let mut at_start = Vec::with_capacity(jobs);
    for job_id in &job_ids {
        at_start.push(checkpoint_stats(&mut client, job_id).await?);
    }
    let window = Instant::now();
    tokio::time::sleep(run).await;
    let mut completed = Vec::with_capacity(jobs);
    let mut failed_total = 0;
    let mut durations = Vec::new();
    for (job_id, start) in job_ids.iter().zip(&at_start) {
        let stats = checkpoint_stats(&mut client, job_id).await?;
        completed.push(stats.completed - start.completed);
        failed_total += stats.failed;
        durations.extend(
            stats
                .history
                .iter()
                .filter(|s| s.status == proto::SnapshotStatus::Completed as i32)
                .map(|s| s.duration_ms),
        );
    }
    let run = window.elapsed();
    for job_id in &job_ids {
        client
            .unregister_job(proto::UnregisterJobRequest {
                job_id: job_id.clone(),
            })
            .await
            .with_context(|| format!("UnregisterJob {job_id}"))?;
    }
    running.abort_all();
    durations.sort_unstable();
    Ok(PeriodicFigures {
        jobs,
        run,
        completed_min: completed.iter().copied().min().unwrap_or(0),
        completed_total: completed.iter().sum(),
        failed_total,
        duration_p50_ms: durations.get(durations.len() / 2).copied().unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".to_string());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {kernel}, load average {load}")
}

async fn run(args: &Args) -> anyhow::Result<Table> {
    let plan = Plan::of(args);
    println!(
        "savepoint-bench{}: {}",
        if args.quick { " --quick" } else { "" },
        machine()
    );
    let runs = |part: Part| args.only.is_empty() || args.only.contains(&part);
    let server = BenchServer::start().await?;
    let mut table = Table::default();

    // Savepoints at the task counts of the Flink comparison, then 1 000 tasks.
    let mut flink_rows = Vec::new();
    let mut counts: Vec<(u32, usize)> = FLINK_TASK_COUNTS
        .iter()
        .map(|&n| (n, plan.savepoints))
        .collect();
    counts.push((plan.large_tasks, plan.large_savepoints));
    if !runs(Part::Savepoints) {
        counts.clear();
    }
    for (tasks, iterations) in counts {
        let figures = measure_savepoints(&server, tasks, iterations).await?;
        eprintln!(
            "savepoints of {tasks} tasks: trigger->durable p50 {} p99 {}",
            ms(figures.to_durable.p50()),
            ms(figures.to_durable.p99())
        );
        report_savepoints(&mut table, &figures);
        if FLINK_TASK_COUNTS.contains(&tasks) {
            flink_rows.push((tasks, figures.to_last_ack.p50(), figures.to_durable.p50()));
        }
    }

    // Streamed acks against bare tonic, same messages, same number of streams.
    let mut streamed = Vec::new();
    if runs(Part::Throughput) {
        for &(subtasks, rounds) in &plan.throughput {
            let task_managers = 4;
            let (bare, figures) =
                measure_throughput(&server, subtasks, task_managers, rounds).await?;
            let ratios: Vec<f64> = bare
                .iter()
                .zip(&figures.acks_per_second)
                .map(|(bare, ours)| ours / bare)
                .collect();
            let ratio = median(&ratios);
            let (bare, ours) = (median(&bare), median(&figures.acks_per_second));
            eprintln!(
                "acks/s, job of {subtasks} subtasks: bare tonic {bare:.0}, ours {ours:.0}, ratio {ratio:.2}"
            );
            table.add(
                format!(
                    "bare tonic stream: acks/s ({subtasks} acks a round, {task_managers} streams, median of {rounds})"
                ),
                format!("{bare:.0}"),
            );
            table.add(
                format!(
                    "streamed acks, job of {subtasks} subtasks: acks/s (trigger -> last ack processed)"
                ),
                format!("{ours:.0}"),
            );
            table.check(
                format!(
                    "streamed acks / bare tonic, job of {subtasks} subtasks (median of the rounds' ratios)"
                ),
                format!("{:.0} %", ratio * 100.0),
                ">= 75 %",
                ratio >= 0.75,
            );
            streamed.push((subtasks, figures));
        }
    }

    // One job of 100 000 subtasks.
    if runs(Part::Large) {
        let measured = streamed
            .into_iter()
            .find(|(subtasks, _)| *subtasks == plan.huge_subtasks);
        let large = match measured {
            Some((_, figures)) => figures,
            None => {
                measure_large_job(&server, "huge", plan.huge_subtasks, 16, plan.huge_rounds).await?
            }
        };
        table.check(
            format!(
                "job of {} subtasks: checkpoints completed (trigger -> durable p50 {})",
                plan.huge_subtasks,
                ms(large.to_durable.p50())
            ),
            format!("{}/{}", large.completed, large.to_durable.0.len()),
            "all complete",
            large.completed > 0,
        );
    }

    // Many jobs with periodic checkpoints every second, then the smallest interval.
    let mut fastest = None;
    if runs(Part::Periodic) {
        let periodic = measure_periodic(
            &server,
            "periodic",
            plan.jobs,
            Duration::from_secs(1),
            plan.jobs_run,
        )
        .await?;
        ensure!(
            periodic.completed_min > 0,
            "a job of the {} with periodic checkpoints completed none in {:?}",
            periodic.jobs,
            periodic.run
        );
        // One interval's worth of slack: the window starts anywhere in a job's period.
        let expected_each = (periodic.run.as_secs_f64().floor() - 1.0).max(1.0) as u64;
        table.check(
            format!(
                "{} jobs, checkpoints every 1 s, {:.1} s window: fewest completed by a job \
                 (total {}, failed {}, duration p50 {} ms)",
                periodic.jobs,
                periodic.run.as_secs_f64(),
                periodic.completed_total,
                periodic.failed_total,
                periodic.duration_p50_ms
            ),
            periodic.completed_min.to_string(),
            format!(">= {expected_each} each, none failed"),
            periodic.completed_min >= expected_each && periodic.failed_total == 0,
        );

        let fast =
            measure_periodic(&server, "fast", 1, Duration::from_millis(10), plan.fast_run).await?;
        ensure!(
            fast.completed_total > 0,
            "no checkpoint at a 10 ms interval"
        );
        let per_second = fast.completed_total as f64 / fast.run.as_secs_f64();
        table.add(
            "one job, checkpoints every 10 ms (the smallest interval, as Flink's): completed/s",
            format!("{per_second:.0}"),
        );
        fastest = Some(per_second);
    }

    server.stop().await?;

    println!();
    table.print();
    println!();
    println!("Comparison with Apache Flink 2.3.0 (same machine class, medians):");
    println!(
        "| tasks | ours: trigger -> last ack sent | Flink: trigger -> last ack | ours: TriggerSavepoint -> durable path (gRPC) | Flink: REST trigger -> COMPLETED |"
    );
    println!("|---|---|---|---|---|");
    for (tasks, to_last_ack, to_durable) in flink_rows {
        println!(
            "| {tasks} | {} | {FLINK_TRIGGER_TO_LAST_ACK} | {} | {FLINK_REST_TRIGGER_TO_COMPLETED} |",
            ms(to_last_ack),
            ms(to_durable)
        );
    }
    if let Some(per_second) = fastest {
        println!(
            "| smallest periodic interval | 10 ms: {per_second:.0} checkpoints/s completed | {FLINK_PERIODIC_FLOOR} | | |"
        );
    }
    Ok(table)
}

fn report_savepoints(table: &mut Table, figures: &SavepointFigures) {
    let tasks = figures.tasks;
    let n = figures.to_durable.0.len();
    let (p50, p99) = (figures.to_durable.p50(), figures.to_durable.p99());
    let target = match tasks {
        16 => Some(2.5),
        1000 => Some(20.0),
        _ => None,
    };
    let figure = format!("savepoint of {tasks} tasks: trigger -> durable path p50 (n={n})");
    match target {
        Some(limit) => table.check(figure, ms(p50), format!("<= {limit} ms"), p50 <= limit),
        None => table.add(figure, ms(p50)),
    }
    table.add(
        format!("savepoint of {tasks} tasks: trigger -> durable path p99"),
        ms(p99),
    );
    table.add(
        format!("savepoint of {tasks} tasks: trigger -> last ack sent p50"),
        ms(figures.to_last_ack.p50()),
    );
    table.add(
        format!("savepoint of {tasks} tasks: trigger -> all acked, metadata write starts p50"),
        ms(figures.to_write.p50()),
    );
    if tasks == 16 {
        let completion = figures.completion.p50();
        let raw = figures.raw_publish.p50();
        table.add(
            format!(
                "raw write+fsync+rename+fsync dir of the same {} metadata bytes p50",
                figures.metadata_bytes
            ),
            ms(raw),
        );
        table.check(
            format!(
                "savepoint of {tasks} tasks: durable completion (metadata write) p50 {}",
                ms(completion)
            ),
            format!("{:.2}x raw", completion / raw),
            "<= 2x raw",
            completion <= 2.0 * raw,
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(&args).await {
        Ok(table) => {
            let missed = table.missed();
            if missed > 0 {
                println!(
                    "\n{missed} timing target(s) missed{}",
                    if args.quick {
                        " (quick mode: reported, not enforced)"
                    } else {
                        ""
                    }
                );
                if args.strict && !args.quick {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("savepoint-bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples = Samples::default();
        for n in 1..=100 {
            samples.push(Duration::from_millis(n));
        }
        assert!((samples.p50() - 50.0).abs() < 1e-9);
        assert!((samples.p99() - 99.0).abs() < 1e-9);
    }

    #[test]
    fn vertices_stay_within_the_max_parallelism() {
        let vertices = vertices(100_000, 4);
        assert_eq!(vertices[0].parallelism, 4);
        assert!(vertices.iter().all(|v| v.parallelism <= VERTEX_CHUNK));
        assert_eq!(vertices.iter().map(|v| v.parallelism).sum::<u32>(), 100_000);
    }
}
