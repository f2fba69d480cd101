//! savepointctl: the command-line client of savepointd.
//!
//! Every subcommand maps onto one `SavepointService` RPC (plus `simulate`, which runs a
//! job's tasks on simulated task managers). Output is text for people or JSON for
//! scripts (`--output json`). Exit codes: 0 success; 1 the server refused the request or
//! could not be reached (`error: <CODE>: <message>` on stderr), or `status` found the
//! savepoint operation FAILED (the operation is printed as usual), or stdout could not be
//! written (silently when the reader went away); 2 bad usage or an unusable input file.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use savepoint_coordinator::client::simulator::{
    SimulatedVertex, SimulationEnd, SimulationSummary, Simulator, SimulatorConfig, SimulatorError,
};
use savepoint_coordinator::client::{self, ClientError};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::service::error::code_name;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;
use tracing_subscriber::EnvFilter;

/// Bound on connecting to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of the calls that do not wait for a snapshot.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line client of savepointd: register jobs, take, follow, list, restore and
/// dispose of savepoints, read checkpoint statistics, simulate task managers.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Exit codes: 0 success; 1 the server refused the request or could not be \
                  reached, or `status` found the operation FAILED; 2 bad usage or an \
                  unusable input file."
)]
struct Cli {
    /// Address of savepointd.
    #[arg(
        long,
        global = true,
        env = "SAVEPOINTCTL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// Output format: table for people, json for scripts (one JSON document on stdout).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Lines and tables for people (with a progress indicator on a terminal).
    #[value(alias = "text")]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registers a job from a YAML (.yaml, .yml) or JSON (.json) file; prints its
    /// fencing token (RegisterJob).
    Register {
        /// The job file, e.g. examples/job.yaml.
        file: PathBuf,
    },
    /// Reports the job's status; RUNNING starts periodic checkpoints, any other status
    /// stops them (UpdateJobStatus).
    SetStatus {
        /// Job id.
        job: String,
        /// The new status.
        #[arg(value_enum, ignore_case = true)]
        status: JobStatusArg,
    },
    /// Triggers a savepoint and prints its path once it is durable, or with --detach its
    /// operation id at once (TriggerSavepoint).
    Savepoint(SavepointArgs),
    /// Takes a savepoint and then finishes the job; prints the path once the savepoint
    /// is durable, or with --detach the operation id at once (StopWithSavepoint). A failed
    /// savepoint leaves the job RUNNING.
    Stop {
        #[command(flatten)]
        savepoint: SavepointArgs,
        /// Drain first: the tasks emit the final watermark and flush all windows.
        #[arg(long)]
        drain: bool,
    },
    /// Shows a savepoint operation: PENDING, COMPLETED or FAILED with the reason
    /// (GetSavepointOperation). Exits 1 if the operation FAILED.
    Status {
        /// Job id.
        job: String,
        /// The operation id printed by `savepoint --detach` or `stop --detach` (the
        /// request id, when one was given).
        operation_id: String,
    },
    /// Lists the job's completed savepoints, newest first (ListSavepoints).
    List {
        /// Job id.
        job: String,
    },
    /// Deletes a savepoint: its metadata and its directory (DisposeSavepoint). The path
    /// must lie under one of the server's savepoint roots. Disposing twice is fine.
    Dispose {
        /// Savepoint path, as printed by `savepoint` or `list`.
        path: String,
    },
    /// Triggers a checkpoint now and waits for it (TriggerCheckpoint).
    Checkpoint {
        /// Job id.
        job: String,
        /// Seconds to wait; the checkpoint goes on in the background after that.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Maps a savepoint onto the job's subtasks and prints the assignment
    /// (RestoreSavepoint). The job's subtasks must all be CREATED.
    Restore {
        /// Job id.
        job: String,
        /// Savepoint path, as printed by `savepoint`.
        path: String,
        /// Skip state of vertices the job no longer has instead of refusing.
        #[arg(long)]
        allow_non_restored_state: bool,
        /// Who owns the savepoint afterwards: no-claim leaves it to you (the job's first
        /// checkpoint is then a full one); claim hands it to the job, which deletes it
        /// once newer checkpoints subsume it.
        #[arg(long, value_enum, default_value_t = ClaimModeArg::NoClaim)]
        claim_mode: ClaimModeArg,
    },
    /// Maps the latest retained checkpoint onto the job's subtasks
    /// (RestoreLatestCheckpoint).
    RestoreLatest {
        /// Job id.
        job: String,
        /// Skip state of vertices the job no longer has instead of refusing.
        #[arg(long)]
        allow_non_restored_state: bool,
    },
    /// Shows counts, the latest snapshots, recent history and per-subtask figures
    /// (GetCheckpointStats).
    Stats {
        /// Job id.
        job: String,
    },
    /// Removes the job; pending snapshots fail, savepoints stay (UnregisterJob).
    Unregister {
        /// Job id.
        job: String,
    },
    /// Prints a completion script for SHELL; e.g. `savepointctl completions bash >
    /// /etc/bash_completion.d/savepointctl`, or `source <(savepointctl completions zsh)`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Runs the job's subtasks on simulated task managers that acknowledge every
    /// checkpoint and savepoint, until Ctrl-C (SIGINT) or SIGTERM; then prints a summary.
    Simulate {
        /// Job id (must be registered).
        job: String,
        /// Job file to read the vertices and wait-for vertices from.
        #[arg(long)]
        file: PathBuf,
        /// Number of simulated task managers; subtasks are spread round-robin.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        task_managers: u32,
        /// Milliseconds each task manager waits before acknowledging.
        #[arg(long, default_value_t = 0)]
        ack_delay_ms: u64,
    },
}

/// The options of `savepoint`, shared by `stop`.
#[derive(Debug, clap::Args)]
struct SavepointArgs {
    /// Job id.
    job: String,
    /// Target directory on the server; default: the job's, else the server's.
    #[arg(long)]
    dir: Option<String>,
    /// Idempotency key and operation id ([A-Za-z0-9._-], at most 128 characters): a
    /// repeat with the same id finds the first operation instead of taking another
    /// savepoint.
    #[arg(long)]
    request_id: Option<String>,
    /// Return as soon as the savepoint is triggered and print its operation id; follow
    /// it with `status`.
    #[arg(long)]
    detach: bool,
    /// Seconds to wait; the savepoint goes on in the background after that.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// Claim modes as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClaimModeArg {
    /// The savepoint stays yours.
    NoClaim,
    /// The job takes the savepoint over.
    Claim,
}

impl From<ClaimModeArg> for proto::ClaimMode {
    fn from(mode: ClaimModeArg) -> Self {
        match mode {
            ClaimModeArg::NoClaim => proto::ClaimMode::NoClaim,
            ClaimModeArg::Claim => proto::ClaimMode::Claim,
        }
    }
}

/// Job statuses as typed on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum JobStatusArg {
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Suspended,
    Restarting,
}

impl From<JobStatusArg> for proto::JobStatus {
    fn from(status: JobStatusArg) -> Self {
        match status {
            JobStatusArg::Created => proto::JobStatus::Created,
            JobStatusArg::Running => proto::JobStatus::Running,
            JobStatusArg::Failing => proto::JobStatus::Failing,
            JobStatusArg::Failed => proto::JobStatus::Failed,
            JobStatusArg::Cancelling => proto::JobStatus::Cancelling,
            JobStatusArg::Canceled => proto::JobStatus::Canceled,
            JobStatusArg::Finished => proto::JobStatus::Finished,
            JobStatusArg::Suspended => proto::JobStatus::Suspended,
            JobStatusArg::Restarting => proto::JobStatus::Restarting,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Job file
// ---------------------------------------------------------------------------------------

/// A job file: RegisterJobRequest with friendlier names (the proto names are accepted as
/// aliases). Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    job_id: String,
    vertices: Vec<VertexFile>,
    /// Vertices that receive the trigger (the sources).
    #[serde(alias = "trigger_vertices")]
    trigger: Vec<String>,
    /// Vertices that must acknowledge; empty or missing means all.
    #[serde(default, alias = "wait_for_vertices")]
    wait_for: Vec<String>,
    /// Vertices told about completions; empty or missing means all.
    #[serde(default, alias = "commit_vertices")]
    commit: Vec<String>,
    #[serde(default, alias = "policy")]
    checkpointing: PolicyFile,
    /// Default savepoint target directory on the server.
    #[serde(default)]
    savepoint_dir: Option<String>,
    /// Periodic savepoints and savepoint retention; missing means neither.
    #[serde(default, alias = "savepoint_policy")]
    savepoints: Option<SavepointPolicyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VertexFile {
    id: String,
    parallelism: u32,
    /// 0 or missing: the server's default of 128.
    #[serde(default)]
    max_parallelism: u32,
}

/// The checkpoint policy; every duration in milliseconds, 0 or missing means the
/// server's default (no periodic checkpoints for `interval_ms`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    interval_ms: u64,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    min_pause_ms: u64,
    #[serde(default)]
    max_concurrent: u32,
    #[serde(default)]
    retained: u32,
    #[serde(default)]
    tolerable_failures: u32,
}

/// Periodic savepoints and retention; 0, empty or missing switches each part off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointPolicyFile {
    /// A savepoint every interval_ms while the job is RUNNING.
    #[serde(default)]
    interval_ms: u64,
    /// Or a cron schedule (UTC, seconds first), e.g. "0 0 * * * *" for every hour.
    #[serde(default)]
    cron: String,
    /// Keep at most this many completed savepoints.
    #[serde(default)]
    max_retained: u32,
    /// Dispose of savepoints older than this (the newest always stays).
    #[serde(default)]
    max_age_ms: u64,
}

impl JobFile {
    /// Reads a job file; the format follows the extension.
    fn read(path: &Path) -> anyhow::Result<JobFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read job file {}", path.display()))?;
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("yaml" | "yml") => serde_yaml::from_str(&text)
                .with_context(|| format!("job file {} is not a valid job", path.display())),
            Some("json") => serde_json::from_str(&text)
                .with_context(|| format!("job file {} is not a valid job", path.display())),
            _ => bail!(
                "job file {} must end in .yaml, .yml or .json (the extension picks the format)",
                path.display()
            ),
        }
    }

    fn into_request(self) -> proto::RegisterJobRequest {
        let policy = self.checkpointing;
        proto::RegisterJobRequest {
            job_id: self.job_id,
            vertices: self
                .vertices
                .into_iter()
                .map(|v| proto::Vertex {
                    id: v.id,
                    parallelism: v.parallelism,
                    max_parallelism: v.max_parallelism,
                })
                .collect(),
            trigger_vertices: self.trigger,
            wait_for_vertices: self.wait_for,
            commit_vertices: self.commit,
            policy: Some(proto::CheckpointPolicy {
                interval_ms: policy.interval_ms,
                timeout_ms: policy.timeout_ms,
                min_pause_ms: policy.min_pause_ms,
                max_concurrent: policy.max_concurrent,
                retained: policy.retained,
                tolerable_failures: policy.tolerable_failures,
            }),
            savepoint_policy: self.savepoints.map(|s| proto::SavepointPolicy {
                interval_ms: s.interval_ms,
                cron: s.cron,
                max_retained: s.max_retained,
                max_age_ms: s.max_age_ms,
            }),
            savepoint_dir: self.savepoint_dir.unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors and exit codes
// ---------------------------------------------------------------------------------------

/// Why a command failed; picks the exit code.
enum Failure {
    /// The server refused the request, or could not be reached (exit 1).
    Rpc { code: &'static str, message: String },
    /// The command line or an input file is unusable (exit 2).
    Input(anyhow::Error),
    /// The answer is printed and says the thing asked about failed, e.g. a FAILED
    /// savepoint operation (exit 1, nothing more to say).
    Reported,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Rpc {
            code: code_name(status.code()),
            message: status.message().to_string(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Status(status) => status.into(),
            ClientError::InvalidAddress { .. } => Failure::Input(error.into()),
            other => Failure::Rpc {
                code: "UNAVAILABLE",
                message: other.to_string(),
            },
        }
    }
}

impl From<SimulatorError> for Failure {
    fn from(error: SimulatorError) -> Self {
        match error {
            SimulatorError::InvalidConfig { .. } => Failure::Input(error.into()),
            SimulatorError::Connect { source, .. } => source.into(),
            SimulatorError::TaskRefused { code, message, .. } => Failure::Rpc {
                code: code_name_of(&code),
                message,
            },
            SimulatorError::ConnectTimeout { .. } => Failure::Rpc {
                code: "DEADLINE_EXCEEDED",
                message: error.to_string(),
            },
        }
    }
}

/// `status JOB RUNNING` used to set the job's status; point whoever still types that
/// at `set-status` when the "operation id" is a job status.
fn with_set_status_hint(status: tonic::Status, operation_id: &str) -> Failure {
    let looks_like_a_status = JobStatusArg::from_str(operation_id, true).is_ok();
    let mut failure = Failure::from(status);
    if let Failure::Rpc {
        code: "NOT_FOUND",
        message,
    } = &mut failure
        && looks_like_a_status
    {
        message.push_str(&format!(
            "; to set the job's status, use `set-status JOB {operation_id}`"
        ));
    }
    failure
}

/// The static code name matching a StreamError's code string.
fn code_name_of(code: &str) -> &'static str {
    (0..=16)
        .map(|n| code_name(tonic::Code::from_i32(n)))
        .find(|name| *name == code)
        .unwrap_or("UNKNOWN")
}

impl Failure {
    fn report(&self) -> ExitCode {
        match self {
            Failure::Rpc { code, message } => {
                eprintln!("error: {code}: {message}");
                ExitCode::from(1)
            }
            Failure::Input(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
            Failure::Reported => ExitCode::from(1),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn connect(server: &str) -> Result<Channel, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client::connect(server)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(Failure::Rpc {
            code: "UNAVAILABLE",
            message: format!(
                "cannot connect to {server} within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// A spinner on stderr while a trigger waits for its snapshot, showing the snapshot's
/// acknowledgement progress from GetCheckpointStats; only on a terminal, and gone once
/// dropped.
struct Progress {
    bar: indicatif::ProgressBar,
    poller: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(server: &str, job: &str, kind: proto::SnapshotKind) -> Option<Progress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(100));
        bar.set_message(format!("triggering a {} of job {job}", kind_word(kind)));
        let (server, job, shown) = (server.to_string(), job.to_string(), bar.clone());
        let poller = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let Ok(mut client) = service(&server).await else {
                return;
            };
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let stats = client
                    .get_checkpoint_stats(request(
                        proto::GetCheckpointStatsRequest {
                            job_id: job.clone(),
                        },
                        RPC_TIMEOUT,
                    ))
                    .await;
                if let Ok(stats) = stats {
                    shown.set_message(progress_message(
                        kind,
                        &stats.into_inner(),
                        started.elapsed(),
                    ));
                }
            }
        });
        Some(Progress { bar, poller })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.poller.abort();
        self.bar.finish_and_clear();
    }
}

fn kind_word(kind: proto::SnapshotKind) -> &'static str {
    match kind {
        proto::SnapshotKind::Checkpoint => "checkpoint",
        _ => "savepoint",
    }
}

/// What the spinner says: the acknowledgements of the newest snapshot of `kind` in
/// progress, or that none is in progress yet.
fn progress_message(
    kind: proto::SnapshotKind,
    stats: &proto::GetCheckpointStatsResponse,
    elapsed: Duration,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let pending = stats
        .history
        .iter()
        .filter(|s| s.kind() == kind && s.status() == proto::SnapshotStatus::InProgress)
        .max_by_key(|s| s.checkpoint_id);
    match pending {
        Some(s) => format!(
            "{} {}: {}/{} subtasks acknowledged ({seconds:.1} s)",
            kind_word(kind),
            s.checkpoint_id,
            s.acknowledged_subtasks,
            s.total_subtasks
        ),
        None => format!("waiting for the {} ({seconds:.1} s)", kind_word(kind)),
    }
}

/// `values` as a line of block characters, lowest to highest.
fn sparkline(values: &[u64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (Some(&low), Some(&high)) = (values.iter().min(), values.iter().max()) else {
        return String::new();
    };
    let span = (high - low).max(1);
    values
        .iter()
        .map(|&v| BLOCKS[((v - low) * 7 / span) as usize])
        .collect()
}

/// A request with a deadline; the server's waiting triggers answer just before it.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn service(server: &str) -> Result<SavepointServiceClient<Channel>, Failure> {
    Ok(SavepointServiceClient::new(connect(server).await?))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let output = cli.output;
    let server = cli.server;
    let progress = |job: &str, kind: proto::SnapshotKind, detach: bool| {
        (output == Output::Table && !detach).then(|| Progress::start(&server, job, kind))
    };
    // Commands that read a file do so before connecting, so a bad file is reported as
    // such even when the server is down.
    match cli.command {
        Command::Register { file } => {
            let job = JobFile::read(&file).map_err(Failure::Input)?;
            register(service(&server).await?, job, output).await?;
        }
        Command::Simulate {
            job,
            file,
            task_managers,
            ack_delay_ms,
        } => {
            let spec = JobFile::read(&file).map_err(Failure::Input)?;
            let config = SimulatorConfig {
                job_id: job,
                vertices: spec
                    .vertices
                    .iter()
                    .map(|v| SimulatedVertex {
                        id: v.id.clone(),
                        parallelism: v.parallelism,
                    })
                    .collect(),
                wait_for_vertices: spec.wait_for,
                task_managers,
                ack_delay: Duration::from_millis(ack_delay_ms),
            };
            let simulator = Simulator::new(config)?;
            simulate(simulator, connect(&server).await?, output).await?;
        }
        Command::SetStatus { job, status } => {
            let status = proto::JobStatus::from(status);
            service(&server)
                .await?
                .update_job_status(request(
                    proto::UpdateJobStatusRequest {
                        job_id: job.clone(),
                        status: status.into(),
                    },
                    RPC_TIMEOUT,
                ))
                .await?;
            let status = short_name(status.as_str_name(), "JOB_STATUS_");
            print(
                output,
                json!({"job_id": job, "status": status}),
                format!("job {job} is now {status}"),
            )?;
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "savepointctl", &mut std::io::stdout());
        }
        Command::Savepoint(args) => {
            let job = args.job.clone();
            let progress = progress(&job, proto::SnapshotKind::Savepoint, args.detach);
            let response = service(&server)
                .await?
                .trigger_savepoint(request(
                    proto::TriggerSavepointRequest {
                        job_id: args.job,
                        target_directory: args.dir.unwrap_or_default(),
                        request_id: args.request_id.unwrap_or_default(),
                        detach: args.detach,
                    },
                    Duration::from_secs(args.timeout),
                ))
                .await;
            drop(progress);
            print_savepoint(output, &job, &response?.into_inner(), args.detach)?;
        }
        Command::Stop { savepoint, drain } => {
            let args = savepoint;
            let job = args.job.clone();
            let progress = progress(&job, proto::SnapshotKind::Savepoint, args.detach);
            let response = service(&server)
                .await?
                .stop_with_savepoint(request(
                    proto::StopWithSavepointRequest {
                        job_id: args.job,
                        target_directory: args.dir.unwrap_or_default(),
                        drain,
                        request_id: args.request_id.unwrap_or_default(),
                        detach: args.detach,
                    },
                    Duration::from_secs(args.timeout),
                ))
                .await;
            drop(progress);
            print_savepoint(output, &job, &response?.into_inner(), args.detach)?;
        }
        Command::Status { job, operation_id } => {
            let operation = service(&server)
                .await?
                .get_savepoint_operation(request(
                    proto::GetSavepointOperationRequest {
                        job_id: job,
                        operation_id: operation_id.clone(),
                    },
                    RPC_TIMEOUT,
                ))
                .await
                .map_err(|status| with_set_status_hint(status, &operation_id))?
                .into_inner();
            match output {
                Output::Json => print_json(&operation_json(&operation))?,
                Output::Table => write_stdout(&operation_text(&operation, now_ms()))?,
            }
            match operation.status() {
                proto::OperationStatus::Pending | proto::OperationStatus::Completed => {}
                proto::OperationStatus::Failed | proto::OperationStatus::Unspecified => {
                    return Err(Failure::Reported);
                }
            }
        }
        Command::List { job } => {
            let response = service(&server)
                .await?
                .list_savepoints(request(
                    proto::ListSavepointsRequest {
                        job_id: job.clone(),
                    },
                    RPC_TIMEOUT,
                ))
                .await?
                .into_inner();
            let mut savepoints = response.savepoints;
            savepoints.sort_by_key(|info| std::cmp::Reverse(info.checkpoint_id));
            match output {
                Output::Json => print_json(&Value::Array(
                    savepoints.iter().map(savepoint_info_json).collect(),
                ))?,
                Output::Table => write_stdout(&savepoints_text(&job, &savepoints))?,
            }
        }
        Command::Dispose { path } => {
            let response = service(&server)
                .await?
                .dispose_savepoint(request(
                    proto::DisposeSavepointRequest { path: path.clone() },
                    RPC_TIMEOUT,
                ))
                .await?
                .into_inner();
            let text = if response.existed {
                format!("savepoint {path} disposed of")
            } else {
                format!(
                    "nothing to dispose of at {path} (no savepoint there, or already disposed of)"
                )
            };
            print(
                output,
                json!({"path": path, "deleted": response.existed}),
                text,
            )?;
        }
        Command::Checkpoint { job, timeout } => {
            let progress = progress(&job, proto::SnapshotKind::Checkpoint, false);
            let response = service(&server)
                .await?
                .trigger_checkpoint(request(
                    proto::TriggerCheckpointRequest {
                        job_id: job.clone(),
                    },
                    Duration::from_secs(timeout),
                ))
                .await;
            drop(progress);
            let response = response?.into_inner();
            print(
                output,
                json!({"job_id": job, "checkpoint_id": response.checkpoint_id}),
                format!(
                    "checkpoint {} of job {job} completed",
                    response.checkpoint_id
                ),
            )?;
        }
        Command::Restore {
            job,
            path,
            allow_non_restored_state,
            claim_mode,
        } => {
            let response = service(&server)
                .await?
                .restore_savepoint(request(
                    proto::RestoreSavepointRequest {
                        job_id: job.clone(),
                        path,
                        allow_non_restored_state,
                        claim_mode: proto::ClaimMode::from(claim_mode).into(),
                    },
                    RPC_TIMEOUT,
                ))
                .await?
                .into_inner();
            print_restore(output, &job, &response, Some(claim_mode))?;
        }
        Command::RestoreLatest {
            job,
            allow_non_restored_state,
        } => {
            let response = service(&server)
                .await?
                .restore_latest_checkpoint(request(
                    proto::RestoreLatestCheckpointRequest {
                        job_id: job.clone(),
                        allow_non_restored_state,
                    },
                    RPC_TIMEOUT,
                ))
                .await?
                .into_inner();
            print_restore(output, &job, &response, None)?;
        }
        Command::Stats { job } => {
            let stats = service(&server)
                .await?
                .get_checkpoint_stats(request(
                    proto::GetCheckpointStatsRequest {
                        job_id: job.clone(),
                    },
                    RPC_TIMEOUT,
                ))
                .await?
                .into_inner();
            match output {
                Output::Json => print_json(&stats_json(&job, &stats))?,
                Output::Table => write_stdout(&stats_text(&job, &stats, now_ms()))?,
            }
        }
        Command::Unregister { job } => {
            service(&server)
                .await?
                .unregister_job(request(
                    proto::UnregisterJobRequest {
                        job_id: job.clone(),
                    },
                    RPC_TIMEOUT,
                ))
                .await?;
            print(
                output,
                json!({"job_id": job, "unregistered": true}),
                format!("job {job} unregistered; its savepoints stay on disk"),
            )?;
        }
    }
    Ok(())
}

async fn register(
    mut service: SavepointServiceClient<Channel>,
    job: JobFile,
    output: Output,
) -> Result<(), Failure> {
    let request_message = job.into_request();
    let job_id = request_message.job_id.clone();
    let response = service
        .register_job(request(request_message, RPC_TIMEOUT))
        .await?
        .into_inner();
    print(
        output,
        json!({"job_id": job_id, "fencing_token": response.fencing_token}),
        format!(
            "job {job_id} registered; fencing token {}",
            response.fencing_token
        ),
    )?;
    Ok(())
}

async fn simulate(simulator: Simulator, channel: Channel, output: Output) -> Result<(), Failure> {
    // Installed before connecting so that an early Ctrl-C is not lost.
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            return Err(Failure::Input(
                anyhow::Error::new(error).context("installing the signal handlers"),
            ));
        }
    };
    let plans = simulator.plans().to_vec();
    let simulation = simulator.connect(channel).await?;
    if output == Output::Table {
        let tasks: usize = plans.iter().map(|p| p.tasks.len()).sum();
        let mut text = format!(
            "simulating {tasks} tasks on {} task managers; Ctrl-C to stop\n",
            plans.len()
        );
        for plan in &plans {
            let names: Vec<String> = plan
                .tasks
                .iter()
                .map(|t| format!("{}#{}", t.vertex_id, t.subtask_index))
                .collect();
            text.push_str(&format!(
                "  {}: {}\n",
                plan.task_manager_id,
                names.join(", ")
            ));
        }
        write_stdout(&text)?;
    }
    let summary = simulation
        .run(async {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
        .await;
    match output {
        Output::Json => print_json(&summary_json(&summary))?,
        Output::Table => write_stdout(&summary_text(&summary))?,
    }
    match summary.end {
        SimulationEnd::Shutdown => Ok(()),
        SimulationEnd::StreamClosed {
            task_manager_id,
            error,
        } => Err(Failure::Rpc {
            code: "UNAVAILABLE",
            message: format!(
                "the server closed the stream of {task_manager_id}{}",
                error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// Writes `text` to stdout. A reader that went away (`savepointctl stats | head`) or a
/// full disk ends the command with exit 1 instead of a panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Reported),
        Err(error) => Err(Failure::Rpc {
            code: "UNKNOWN",
            message: format!("cannot write the output: {error}"),
        }),
    }
}

/// Prints `json` or, for people, `text` and a line break.
fn print(output: Output, json: Value, text: String) -> Result<(), Failure> {
    match output {
        Output::Json => print_json(&json),
        Output::Table => write_stdout(&format!("{text}\n")),
    }
}

fn print_json(value: &Value) -> Result<(), Failure> {
    // Serialising a Value cannot fail.
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    write_stdout(&format!("{text}\n"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `JOB_STATUS_RUNNING` -> `RUNNING`.
fn short_name<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn kind_name(kind: proto::SnapshotKind) -> &'static str {
    short_name(kind.as_str_name(), "SNAPSHOT_KIND_")
}

fn status_name(status: proto::SnapshotStatus) -> &'static str {
    short_name(status.as_str_name(), "SNAPSHOT_STATUS_")
}

fn reason_name(reason: proto::FailureReason) -> &'static str {
    short_name(reason.as_str_name(), "FAILURE_REASON_")
}

/// `MANUAL`, `PERIODIC`, `STOP`; None for UNSPECIFIED (checkpoints).
fn trigger_name(trigger: proto::SavepointTrigger) -> Option<&'static str> {
    (trigger != proto::SavepointTrigger::Unspecified)
        .then(|| short_name(trigger.as_str_name(), "SAVEPOINT_TRIGGER_"))
}

/// The trigger for people: `manual`, `periodic`, `stop`, or `-`.
fn trigger_text(trigger: proto::SavepointTrigger) -> String {
    trigger_name(trigger).map_or_else(|| "-".to_string(), str::to_ascii_lowercase)
}

fn operation_status_name(status: proto::OperationStatus) -> &'static str {
    short_name(status.as_str_name(), "OPERATION_STATUS_")
}

/// A wall-clock time for people, in UTC: `2024-05-01 12:00:03Z`; empty for 0 (unknown).
fn timestamp(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let value = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if value < KIB * KIB {
        format!("{:.1} KiB", value / KIB)
    } else if value < KIB * KIB * KIB {
        format!("{:.1} MiB", value / (KIB * KIB))
    } else {
        format!("{:.1} GiB", value / (KIB * KIB * KIB))
    }
}

/// How long ago `then_ms` was, for people: `3 s ago`; empty for 0 (unknown).
fn ago(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return String::new();
    }
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

/// Left-aligned columns separated by two spaces, header first.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn subtask_name(subtask: Option<&proto::SubtaskRef>) -> String {
    subtask.map_or_else(
        || "?".to_string(),
        |s| format!("{}#{}", s.vertex_id, s.subtask_index),
    )
}

/// Inline state shown as text when it is short printable UTF-8 (as the simulator's is).
fn inline_text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data)
        .ok()
        .filter(|text| text.len() <= 40 && !text.chars().any(char::is_control))
}

fn handle_text(handle: &proto::StateHandle) -> String {
    let data = match &handle.data {
        Some(proto::state_handle::Data::Inline(data)) => match inline_text(data) {
            Some(text) => format!("inline {} {text:?}", bytes(data.len() as u64)),
            None => format!("inline {}", bytes(data.len() as u64)),
        },
        Some(proto::state_handle::Data::Reference(reference)) => {
            format!("{} ({})", reference.uri, bytes(reference.size_bytes))
        }
        None => "no data".to_string(),
    };
    let name = if handle.name.is_empty() {
        "(unnamed)"
    } else {
        &handle.name
    };
    match &handle.key_groups {
        Some(range) => format!("{name}: {data}, key groups {}-{}", range.start, range.end),
        None => format!("{name}: {data}"),
    }
}

fn handle_json(handle: &proto::StateHandle) -> Value {
    let mut value = match &handle.data {
        Some(proto::state_handle::Data::Inline(data)) => json!({
            "name": handle.name,
            "kind": "inline",
            "size_bytes": data.len(),
            "text": std::str::from_utf8(data).ok(),
        }),
        Some(proto::state_handle::Data::Reference(reference)) => json!({
            "name": handle.name,
            "kind": "reference",
            "uri": reference.uri,
            "size_bytes": reference.size_bytes,
        }),
        None => json!({"name": handle.name, "kind": null}),
    };
    value["key_groups"] = handle
        .key_groups
        .as_ref()
        .map_or(Value::Null, |r| json!({"start": r.start, "end": r.end}));
    value
}

/// Prints a restore's assignment; `claim_mode` for RestoreSavepoint, None for the
/// latest checkpoint (which the job owns anyway).
fn print_restore(
    output: Output,
    job: &str,
    response: &proto::RestoreResponse,
    claim_mode: Option<ClaimModeArg>,
) -> Result<(), Failure> {
    match output {
        Output::Json => {
            let mut value = restore_json(job, response);
            value["claim_mode"] = claim_mode.map_or(Value::Null, |mode| {
                short_name(proto::ClaimMode::from(mode).as_str_name(), "CLAIM_MODE_").into()
            });
            print_json(&value)
        }
        Output::Table => {
            let mut text = restore_text(job, response);
            let ownership = match claim_mode {
                Some(ClaimModeArg::NoClaim) => {
                    "the savepoint stays yours (no-claim); the job's first checkpoint is a full one\n"
                }
                Some(ClaimModeArg::Claim) => {
                    "the job now owns the savepoint (claim); it is deleted once newer checkpoints subsume it\n"
                }
                None => "",
            };
            if let Some(first_line_end) = text.find('\n') {
                text.insert_str(first_line_end + 1, ownership);
            }
            write_stdout(&text)
        }
    }
}

fn restore_json(job: &str, response: &proto::RestoreResponse) -> Value {
    let assignments: Vec<Value> = response
        .assignments
        .iter()
        .map(|a| {
            json!({
                "vertex_id": a.subtask.as_ref().map(|s| s.vertex_id.as_str()),
                "subtask_index": a.subtask.as_ref().map(|s| s.subtask_index),
                "handles": a.handles.iter().map(handle_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "job_id": job,
        "checkpoint_id": response.checkpoint_id,
        "next_checkpoint_id": response.next_checkpoint_id,
        "non_restored_vertices": response.non_restored_vertices,
        "assignments": assignments,
    })
}

fn restore_text(job: &str, response: &proto::RestoreResponse) -> String {
    let mut text = format!(
        "restored snapshot {} into job {job}; its next checkpoint id is {}\n",
        response.checkpoint_id, response.next_checkpoint_id
    );
    if !response.non_restored_vertices.is_empty() {
        text.push_str(&format!(
            "state of vertices the job does not have was skipped: {}\n",
            response.non_restored_vertices.join(", ")
        ));
    }
    let mut rows = Vec::new();
    for assignment in &response.assignments {
        let subtask = subtask_name(assignment.subtask.as_ref());
        if assignment.handles.is_empty() {
            rows.push(vec![subtask, "(no state)".to_string()]);
            continue;
        }
        for (i, handle) in assignment.handles.iter().enumerate() {
            let first = if i == 0 {
                subtask.clone()
            } else {
                String::new()
            };
            rows.push(vec![first, handle_text(handle)]);
        }
    }
    text.push('\n');
    text.push_str(&table(&["SUBTASK", "STATE"], &rows));
    text
}

/// The answer of `savepoint` and `stop`: the path once durable, or with --detach the
/// operation id to follow with `status`.
fn print_savepoint(
    output: Output,
    job: &str,
    response: &proto::TriggerSavepointResponse,
    detach: bool,
) -> Result<(), Failure> {
    let text = if detach {
        response.operation_id.clone()
    } else {
        response.path.clone()
    };
    print(
        output,
        json!({
            "job_id": job,
            "operation_id": response.operation_id,
            "checkpoint_id": response.checkpoint_id,
            "path": response.path,
            "status": operation_status_name(response.status()),
        }),
        text,
    )
}

fn operation_json(operation: &proto::SavepointOperation) -> Value {
    let failed = operation.failure_reason() != proto::FailureReason::Unspecified;
    json!({
        "operation_id": operation.operation_id,
        "job_id": operation.job_id,
        "status": operation_status_name(operation.status()),
        "checkpoint_id": operation.checkpoint_id,
        "trigger": trigger_name(operation.trigger()),
        "drain": operation.drain,
        "path": operation.path,
        "trigger_timestamp_ms": operation.trigger_timestamp_ms,
        "completion_timestamp_ms": operation.completion_timestamp_ms,
        "duration_ms": operation.duration_ms,
        "state_size_bytes": operation.state_size_bytes,
        "failure_reason": failed.then(|| reason_name(operation.failure_reason())),
        "failure_message": failed.then_some(operation.failure_message.as_str()),
    })
}

fn operation_text(operation: &proto::SavepointOperation, now_ms: u64) -> String {
    let status = operation.status();
    let mut trigger = trigger_text(operation.trigger());
    if operation.trigger() == proto::SavepointTrigger::Stop && operation.drain {
        trigger.push_str(" (drain)");
    }
    let mut lines = vec![
        format!(
            "savepoint operation {} of job {}: {}",
            operation.operation_id,
            operation.job_id,
            operation_status_name(status)
        ),
        format!("checkpoint  {}", operation.checkpoint_id),
        format!("trigger     {trigger}"),
    ];
    let triggered = timestamp(operation.trigger_timestamp_ms);
    if !triggered.is_empty() {
        lines.push(format!(
            "triggered   {triggered} ({})",
            ago(operation.trigger_timestamp_ms, now_ms)
        ));
    }
    let path_label = if status == proto::OperationStatus::Completed {
        "path      "
    } else {
        "target    "
    };
    lines.push(format!("{path_label}  {}", operation.path));
    if status != proto::OperationStatus::Pending {
        lines.push(format!("size        {}", bytes(operation.state_size_bytes)));
        lines.push(format!("duration    {} ms", operation.duration_ms));
    }
    if operation.failure_reason() != proto::FailureReason::Unspecified {
        lines.push(format!(
            "reason      {}: {}",
            reason_name(operation.failure_reason()),
            operation.failure_message
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn savepoint_info_json(info: &proto::SavepointInfo) -> Value {
    json!({
        "checkpoint_id": info.checkpoint_id,
        "trigger": trigger_name(info.trigger()),
        "state_size_bytes": info.state_size_bytes,
        "trigger_timestamp_ms": info.trigger_timestamp_ms,
        "completion_timestamp_ms": info.completion_timestamp_ms,
        "path": info.path,
    })
}

/// The savepoints (newest first) as a table.
fn savepoints_text(job: &str, savepoints: &[proto::SavepointInfo]) -> String {
    if savepoints.is_empty() {
        return format!("job {job} has no savepoints\n");
    }
    let rows: Vec<Vec<String>> = savepoints
        .iter()
        .map(|info| {
            vec![
                info.checkpoint_id.to_string(),
                trigger_text(info.trigger()),
                bytes(info.state_size_bytes),
                timestamp(info.completion_timestamp_ms),
                info.path.clone(),
            ]
        })
        .collect();
    table(&["ID", "TRIGGER", "SIZE", "COMPLETED (UTC)", "PATH"], &rows)
}

fn snapshot_json(s: &proto::SnapshotStats) -> Value {
    json!({
        "checkpoint_id": s.checkpoint_id,
        "kind": kind_name(s.kind()),
        "status": status_name(s.status()),
        "trigger_timestamp_ms": s.trigger_timestamp_ms,
        "latest_ack_timestamp_ms": s.latest_ack_timestamp_ms,
        "completion_timestamp_ms": s.completion_timestamp_ms,
        "acknowledged_subtasks": s.acknowledged_subtasks,
        "total_subtasks": s.total_subtasks,
        "state_size_bytes": s.state_size_bytes,
        "duration_ms": s.duration_ms,
        "failure_reason": (s.failure_reason() != proto::FailureReason::Unspecified)
            .then(|| reason_name(s.failure_reason())),
        "failure_message": (!s.failure_message.is_empty()).then_some(s.failure_message.as_str()),
        "path": (!s.path.is_empty()).then_some(s.path.as_str()),
        "trigger": trigger_name(s.trigger()),
        "full": s.full,
        "subtasks": s.subtasks.iter().map(|t| json!({
            "vertex_id": t.subtask.as_ref().map(|s| s.vertex_id.as_str()),
            "subtask_index": t.subtask.as_ref().map(|s| s.subtask_index),
            "acknowledged": t.acknowledged,
            "ack_latency_ms": t.ack_latency_ms,
            "state_size_bytes": t.state_size_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn summary_json_of(summary: Option<&proto::Summary>) -> Value {
    summary.map_or(Value::Null, |s| {
        json!({
            "min": s.min, "avg": s.avg, "max": s.max,
            "p50": s.p50, "p90": s.p90, "p99": s.p99,
            "count": s.count,
        })
    })
}

fn stats_json(job: &str, stats: &proto::GetCheckpointStatsResponse) -> Value {
    json!({
        "job_id": job,
        "job_status": short_name(stats.job_status().as_str_name(), "JOB_STATUS_"),
        "failing": stats.failing,
        "triggered": stats.triggered,
        "in_progress": stats.in_progress,
        "completed": stats.completed,
        "failed": stats.failed,
        "restored": stats.restored,
        "discarded_acks": stats.discarded_acks,
        "undelivered_messages": stats.undelivered_messages,
        "consecutive_failures": stats.consecutive_failures,
        "latest_completed": stats.latest_completed.as_ref().map(snapshot_json),
        "latest_failed": stats.latest_failed.as_ref().map(snapshot_json),
        "latest_savepoint": stats.latest_savepoint.as_ref().map(snapshot_json),
        "latest_restore": stats.latest_restore.as_ref().map(|r| json!({
            "checkpoint_id": r.checkpoint_id,
            "path": (!r.path.is_empty()).then_some(r.path.as_str()),
            "timestamp_ms": r.timestamp_ms,
            "claim_mode": short_name(r.claim_mode().as_str_name(), "CLAIM_MODE_"),
        })),
        "duration_ms": summary_json_of(stats.duration_ms.as_ref()),
        "state_size_bytes": summary_json_of(stats.state_size_bytes.as_ref()),
        "failed_by_reason": stats.failed_by_reason,
        "periodic_savepoints_skipped": stats.periodic_savepoints_skipped,
        "last_skip_reason": (!stats.last_skip_reason.is_empty())
            .then_some(stats.last_skip_reason.as_str()),
        "history": stats.history.iter().map(snapshot_json).collect::<Vec<_>>(),
    })
}

/// One line about a snapshot: `checkpoint 4, 5/5 subtasks, 6 ms, 120 B, 2 s ago`.
fn snapshot_line(s: &proto::SnapshotStats, now_ms: u64) -> String {
    let trigger = trigger_name(s.trigger())
        .map(|t| format!(" ({})", t.to_ascii_lowercase()))
        .unwrap_or_default();
    let mut line = format!(
        "{} {}{trigger}, {}/{} subtasks, {} ms, {}",
        kind_name(s.kind()).to_ascii_lowercase(),
        s.checkpoint_id,
        s.acknowledged_subtasks,
        s.total_subtasks,
        s.duration_ms,
        bytes(s.state_size_bytes),
    );
    let when = ago(s.trigger_timestamp_ms, now_ms);
    if !when.is_empty() {
        line.push_str(&format!(", {when}"));
    }
    if s.failure_reason() != proto::FailureReason::Unspecified {
        line.push_str(&format!(
            "\n                  {}: {}",
            reason_name(s.failure_reason()),
            s.failure_message
        ));
    }
    if !s.path.is_empty() {
        line.push_str(&format!("\n                  {}", s.path));
    }
    line
}

/// `min 1 ms, avg 2 ms, max 5 ms (4 snapshots); recent p50 2 ms, p90 4 ms, p99 5 ms`.
fn figures_text(summary: &proto::Summary, unit: impl Fn(u64) -> String) -> String {
    format!(
        "min {}, avg {}, max {} ({} snapshots); recent p50 {}, p90 {}, p99 {}",
        unit(summary.min),
        unit(summary.avg),
        unit(summary.max),
        summary.count,
        unit(summary.p50),
        unit(summary.p90),
        unit(summary.p99),
    )
}

fn stats_text(job: &str, stats: &proto::GetCheckpointStatsResponse, now_ms: u64) -> String {
    let mut text = format!(
        "job {job}: {}{}\n",
        short_name(stats.job_status().as_str_name(), "JOB_STATUS_"),
        if stats.failing {
            " (failing: too many consecutive checkpoint failures)"
        } else {
            ""
        }
    );
    text.push_str(&format!(
        "snapshots         triggered {}, in progress {}, completed {}, failed {}, restored {}\n",
        stats.triggered, stats.in_progress, stats.completed, stats.failed, stats.restored
    ));
    text.push_str(&format!(
        "failures          {} consecutive; {} acknowledgements discarded; {} messages to \
         task managers undelivered\n",
        stats.consecutive_failures, stats.discarded_acks, stats.undelivered_messages
    ));
    if !stats.failed_by_reason.is_empty() {
        let mut reasons: Vec<(&String, &u64)> = stats.failed_by_reason.iter().collect();
        reasons.sort();
        let reasons: Vec<String> = reasons
            .into_iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        text.push_str(&format!("failed by reason  {}\n", reasons.join(", ")));
    }
    if stats.periodic_savepoints_skipped > 0 || !stats.last_skip_reason.is_empty() {
        let mut line = format!(
            "periodic skipped  {} periodic savepoints",
            stats.periodic_savepoints_skipped
        );
        if !stats.last_skip_reason.is_empty() {
            line.push_str(&format!("; last because {}", stats.last_skip_reason));
        }
        text.push_str(&line);
        text.push('\n');
    }
    if let Some(d) = &stats.duration_ms {
        text.push_str(&format!(
            "duration          {}\n",
            figures_text(d, |ms| format!("{ms} ms"))
        ));
    }
    if let Some(s) = &stats.state_size_bytes {
        text.push_str(&format!("state size        {}\n", figures_text(s, bytes)));
    }
    let latest = [
        ("latest completed", &stats.latest_completed),
        ("latest savepoint", &stats.latest_savepoint),
        ("latest failed", &stats.latest_failed),
    ];
    for (label, snapshot) in latest {
        let line = snapshot
            .as_ref()
            .map_or_else(|| "none".to_string(), |s| snapshot_line(s, now_ms));
        text.push_str(&format!("{label:<18}{line}\n"));
    }
    if let Some(restore) = &stats.latest_restore {
        let from = if restore.path.is_empty() {
            "the latest checkpoint".to_string()
        } else {
            restore.path.clone()
        };
        text.push_str(&format!(
            "latest restore    snapshot {} from {from}, {}\n",
            restore.checkpoint_id,
            ago(restore.timestamp_ms, now_ms)
        ));
    }

    if !stats.history.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .history
            .iter()
            .map(|s| {
                let detail = if s.failure_reason() != proto::FailureReason::Unspecified {
                    format!("{}: {}", reason_name(s.failure_reason()), s.failure_message)
                } else {
                    s.path.clone()
                };
                vec![
                    s.checkpoint_id.to_string(),
                    kind_name(s.kind()).to_ascii_lowercase(),
                    trigger_text(s.trigger()),
                    status_name(s.status())
                        .to_ascii_lowercase()
                        .replace('_', " "),
                    format!("{}/{}", s.acknowledged_subtasks, s.total_subtasks),
                    format!("{} ms", s.duration_ms),
                    bytes(s.state_size_bytes),
                    detail,
                ]
            })
            .collect();
        // Oldest first, so that the line reads like a chart over time.
        let durations: Vec<u64> = stats
            .history
            .iter()
            .rev()
            .filter(|s| s.status() == proto::SnapshotStatus::Completed)
            .map(|s| s.duration_ms)
            .collect();
        if durations.len() > 1 {
            text.push_str(&format!(
                "duration trend    {} (oldest to newest, {}-{} ms)\n",
                sparkline(&durations),
                durations.iter().min().unwrap_or(&0),
                durations.iter().max().unwrap_or(&0)
            ));
        }
        text.push_str("\nrecent snapshots, newest first:\n");
        text.push_str(&table(
            &[
                "ID", "KIND", "TRIGGER", "STATUS", "ACKED", "DURATION", "SIZE", "DETAIL",
            ],
            &rows,
        ));
    }

    if let Some(latest) = &stats.latest_completed
        && !latest.subtasks.is_empty()
    {
        let rows: Vec<Vec<String>> = latest
            .subtasks
            .iter()
            .map(|t| {
                vec![
                    subtask_name(t.subtask.as_ref()),
                    if t.acknowledged { "yes" } else { "no" }.to_string(),
                    format!("{} ms", t.ack_latency_ms),
                    bytes(t.state_size_bytes),
                ]
            })
            .collect();
        text.push_str(&format!(
            "\nsubtasks of {} {}:\n",
            kind_name(latest.kind()).to_ascii_lowercase(),
            latest.checkpoint_id
        ));
        text.push_str(&table(&["SUBTASK", "ACKED", "LATENCY", "SIZE"], &rows));
    }
    text
}

fn end_text(end: &SimulationEnd) -> String {
    match end {
        SimulationEnd::Shutdown => "stopped".to_string(),
        SimulationEnd::StreamClosed {
            task_manager_id,
            error: None,
        } => format!("ended: the server closed the stream of {task_manager_id}"),
        SimulationEnd::StreamClosed {
            task_manager_id,
            error: Some(error),
        } => format!("ended: the stream of {task_manager_id} failed: {error}"),
    }
}

fn summary_json(summary: &SimulationSummary) -> Value {
    let counts = &summary.counts;
    json!({
        "task_managers": summary.task_managers,
        "tasks": summary.tasks,
        "triggers": counts.triggers,
        "acks": counts.acks,
        "notifications": counts.notifications,
        "aborts": counts.aborts,
        "stream_errors": counts.stream_errors,
        "missed_barriers": counts.missed_barriers,
        "end": end_text(&summary.end),
    })
}

fn summary_text(summary: &SimulationSummary) -> String {
    let counts = &summary.counts;
    format!(
        "simulation {}\n\
         {} task managers, {} tasks: triggers received {}, acknowledgements sent {}, \
         completions notified {}, aborts {}, refused messages {}, missed barriers {}\n",
        end_text(&summary.end),
        summary.task_managers,
        summary.tasks,
        counts.triggers,
        counts.acks,
        counts.notifications,
        counts.aborts,
        counts.stream_errors,
        counts.missed_barriers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_job_file_converts_to_the_request() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/job.yaml");
        let request = JobFile::read(&path).expect("example parses").into_request();
        assert_eq!(request.job_id, "wordcount");
        let vertices: Vec<_> = request
            .vertices
            .iter()
            .map(|v| (v.id.as_str(), v.parallelism))
            .collect();
        assert_eq!(vertices, [("source", 2), ("map", 2), ("sink", 1)]);
        assert_eq!(request.trigger_vertices, ["source"]);
        let policy = request.policy.expect("policy");
        assert_eq!((policy.interval_ms, policy.retained), (10_000, 2));
        let savepoints = request.savepoint_policy.expect("savepoint policy");
        assert_eq!(savepoints.max_retained, 5);
        assert_eq!((savepoints.interval_ms, savepoints.cron.as_str()), (0, ""));
    }

    #[test]
    fn json_job_files_accept_the_proto_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("job.json");
        std::fs::write(
            &path,
            r#"{"job_id": "j", "vertices": [{"id": "a", "parallelism": 1}],
                "trigger_vertices": ["a"], "policy": {"interval_ms": 5},
                "savepoint_policy": {"cron": "0 0 * * * *", "max_age_ms": 60000}}"#,
        )
        .expect("write");
        let request = JobFile::read(&path).expect("parses").into_request();
        assert_eq!(request.trigger_vertices, ["a"]);
        assert_eq!(request.policy.expect("policy").interval_ms, 5);
        let savepoints = request.savepoint_policy.expect("savepoint policy");
        assert_eq!(savepoints.cron, "0 0 * * * *");
        assert_eq!(savepoints.max_age_ms, 60_000);
    }

    #[test]
    fn unknown_keys_and_extensions_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("job.yaml");
        std::fs::write(
            &typo,
            "job_id: j\nvertices: []\ntrigger: []\ncheckpointing: {intervall_ms: 5}\n",
        )
        .expect("write");
        let error = format!("{:#}", JobFile::read(&typo).expect_err("typo"));
        assert!(error.contains("intervall_ms"), "{error}");
        let toml = dir.path().join("job.toml");
        std::fs::write(&toml, "").expect("write");
        let error = format!("{:#}", JobFile::read(&toml).expect_err("extension"));
        assert!(error.contains(".yaml"), "{error}");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "KIND"],
            &[
                vec!["10".into(), "savepoint".into()],
                vec!["9".into(), "checkpoint".into()],
            ],
        );
        assert_eq!(text, "ID  KIND\n10  savepoint\n9   checkpoint\n");
    }

    #[test]
    fn figures_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(ago(0, 5_000), "");
        assert_eq!(ago(1_000, 4_500), "3 s ago");
        assert_eq!(ago(1_000, 601_000), "10 min ago");
    }

    #[test]
    fn stream_error_codes_map_to_names() {
        assert_eq!(code_name_of("NOT_FOUND"), "NOT_FOUND");
        assert_eq!(code_name_of("bogus"), "UNKNOWN");
    }

    #[test]
    fn failed_operations_name_reason_and_message() {
        let operation = proto::SavepointOperation {
            operation_id: "nightly".to_string(),
            job_id: "j".to_string(),
            status: proto::OperationStatus::Failed.into(),
            checkpoint_id: 7,
            trigger: proto::SavepointTrigger::Stop.into(),
            drain: true,
            path: "/sp/savepoint-j-7".to_string(),
            duration_ms: 12,
            failure_reason: proto::FailureReason::Declined.into(),
            failure_message: "disk full".to_string(),
            ..Default::default()
        };
        let text = operation_text(&operation, 0);
        assert!(
            text.starts_with("savepoint operation nightly of job j: FAILED\n"),
            "{text}"
        );
        assert!(text.contains("trigger     stop (drain)\n"), "{text}");
        assert!(text.contains("reason      DECLINED: disk full\n"), "{text}");
        let json = operation_json(&operation);
        assert_eq!(json["status"], "FAILED");
        assert_eq!(json["trigger"], "STOP");
        assert_eq!(json["failure_reason"], "DECLINED");
        let pending = proto::SavepointOperation {
            status: proto::OperationStatus::Pending.into(),
            ..proto::SavepointOperation::default()
        };
        let json = operation_json(&pending);
        assert_eq!(json["failure_reason"], Value::Null);
        assert_eq!(json["trigger"], Value::Null);
    }

    #[test]
    fn savepoint_lists_render_as_a_table() {
        let info = proto::SavepointInfo {
            checkpoint_id: 9,
            path: "/sp/savepoint-j-9".to_string(),
            trigger: proto::SavepointTrigger::Periodic.into(),
            completion_timestamp_ms: 1_700_000_000_000,
            state_size_bytes: 2048,
            ..Default::default()
        };
        let text = savepoints_text("j", std::slice::from_ref(&info));
        assert_eq!(
            text,
            "ID  TRIGGER   SIZE     COMPLETED (UTC)       PATH\n\
             9   periodic  2.0 KiB  2023-11-14 22:13:20Z  /sp/savepoint-j-9\n"
        );
        assert_eq!(savepoints_text("j", &[]), "job j has no savepoints\n");
        assert_eq!(savepoint_info_json(&info)["trigger"], "PERIODIC");
    }

    #[test]
    fn a_sparkline_scales_from_the_lowest_to_the_highest_value() {
        assert_eq!(sparkline(&[10, 80, 45, 10]), "▁█▄▁");
        assert_eq!(sparkline(&[5, 5]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn progress_names_the_acknowledgements_of_the_pending_snapshot() {
        let snapshot =
            |id, kind: proto::SnapshotKind, status: proto::SnapshotStatus| proto::SnapshotStats {
                checkpoint_id: id,
                kind: kind.into(),
                status: status.into(),
                acknowledged_subtasks: 3,
                total_subtasks: 5,
                ..Default::default()
            };
        let stats = proto::GetCheckpointStatsResponse {
            history: vec![
                snapshot(
                    9,
                    proto::SnapshotKind::Checkpoint,
                    proto::SnapshotStatus::InProgress,
                ),
                snapshot(
                    8,
                    proto::SnapshotKind::Savepoint,
                    proto::SnapshotStatus::InProgress,
                ),
                snapshot(
                    7,
                    proto::SnapshotKind::Savepoint,
                    proto::SnapshotStatus::Completed,
                ),
            ],
            ..Default::default()
        };
        let second = Duration::from_millis(1200);
        assert_eq!(
            progress_message(proto::SnapshotKind::Savepoint, &stats, second),
            "savepoint 8: 3/5 subtasks acknowledged (1.2 s)"
        );
        let none = proto::GetCheckpointStatsResponse::default();
        assert_eq!(
            progress_message(proto::SnapshotKind::Savepoint, &none, second),
            "waiting for the savepoint (1.2 s)"
        );
    }

    #[test]
    fn stats_show_percentiles_failures_by_reason_and_skips() {
        let stats = proto::GetCheckpointStatsResponse {
            duration_ms: Some(proto::Summary {
                min: 1,
                avg: 2,
                max: 9,
                p50: 2,
                p90: 5,
                p99: 9,
                count: 4,
            }),
            failed_by_reason: [("EXPIRED".to_string(), 1), ("DECLINED".to_string(), 2)]
                .into_iter()
                .collect(),
            periodic_savepoints_skipped: 3,
            last_skip_reason: "job is Created, not RUNNING".to_string(),
            history: vec![
                proto::SnapshotStats {
                    checkpoint_id: 4,
                    kind: proto::SnapshotKind::Savepoint.into(),
                    status: proto::SnapshotStatus::Completed.into(),
                    trigger: proto::SavepointTrigger::Manual.into(),
                    duration_ms: 9,
                    ..Default::default()
                },
                proto::SnapshotStats {
                    checkpoint_id: 3,
                    kind: proto::SnapshotKind::Checkpoint.into(),
                    status: proto::SnapshotStatus::Completed.into(),
                    duration_ms: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = stats_text("j", &stats, 0);
        assert!(
            text.contains("duration trend    ▁█ (oldest to newest, 1-9 ms)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "duration          min 1 ms, avg 2 ms, max 9 ms (4 snapshots); \
                 recent p50 2 ms, p90 5 ms, p99 9 ms\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("failed by reason  DECLINED 2, EXPIRED 1\n"),
            "{text}"
        );
        assert!(
            text.contains("periodic skipped  3 periodic savepoints; last because job is"),
            "{text}"
        );
        assert!(
            text.contains("4   savepoint   manual   completed"),
            "{text}"
        );
        let json = stats_json("j", &stats);
        assert_eq!(json["duration_ms"]["p99"], 9);
        assert_eq!(json["failed_by_reason"]["DECLINED"], 2);
        assert_eq!(json["periodic_savepoints_skipped"], 3);
        assert_eq!(json["history"][0]["trigger"], "MANUAL");
    }

    #[test]
    fn status_with_a_job_status_hints_at_set_status() {
        let hinted = with_set_status_hint(tonic::Status::not_found("no operation"), "RUNNING");
        let Failure::Rpc { message, .. } = hinted else {
            panic!("an RPC failure");
        };
        assert!(message.contains("set-status JOB RUNNING"), "{message}");
        let plain = with_set_status_hint(tonic::Status::not_found("no operation"), "nope");
        let Failure::Rpc { message, .. } = plain else {
            panic!("an RPC failure");
        };
        assert_eq!(message, "no operation");
    }

    #[test]
    fn empty_stats_render() {
        let stats = proto::GetCheckpointStatsResponse::default();
        let text = stats_text("j", &stats, 0);
        assert!(text.contains("latest completed  none"), "{text}");
        let json = stats_json("j", &stats);
        assert_eq!(json["latest_completed"], Value::Null);
        assert_eq!(json["job_status"], "UNSPECIFIED");
    }
}
