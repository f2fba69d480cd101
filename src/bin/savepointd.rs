//! savepointd: the savepoint coordinator server.
//!
//! Reads its settings from flags, the environment (`SAVEPOINTD_*`) and an optional TOML
//! file (`--config`, see [`savepoint_coordinator::config_file`]), in that order of
//! precedence; binds the listener, and runs [`savepoint_coordinator::server::run`] until
//! SIGINT or SIGTERM, then drains gracefully.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use savepoint_coordinator::config_file;
use savepoint_coordinator::http::HttpListener;
use savepoint_coordinator::server::{self, AuthConfig, HaConfig, ServerConfig, TlsConfig};
use savepoint_coordinator::store::object::S3Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Coordinates checkpoints and savepoints of stream-processing jobs over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file of settings: each key a flag's long name, each value what the flag
    /// takes (`listen = "0.0.0.0:50051"`, `etcd-endpoint = ["a:2379", "b:2379"]`). Flags
    /// and environment variables override it.
    #[arg(long, env = "SAVEPOINTD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to serve gRPC on (SavepointService, TaskGateway, health, reflection).
    /// Use port 0 to let the system pick a free port; the bound address is logged.
    #[arg(long, env = "SAVEPOINTD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Serve Prometheus metrics (/metrics) and a status page (/ lists the jobs,
    /// /jobs/<job_id> shows one) over plain HTTP on this address, e.g. 127.0.0.1:9090;
    /// port 0 picks a free port (the bound address is logged). Off by default, so that
    /// many servers can run side by side without competing for a port.
    #[arg(long, env = "SAVEPOINTD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,

    /// Directory of the filesystem store: checkpoint ID counters, job registrations and
    /// checkpoint metadata. Created if missing; keep it across restarts so that jobs,
    /// IDs and retained checkpoints survive.
    #[arg(long, env = "SAVEPOINTD_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Keep completed checkpoints, savepoints and the state locations handed to tasks in
    /// S3 (or an S3-compatible store) under this bucket prefix, e.g.
    /// s3://bucket/savepoint-coordinator; --data-dir then holds only ID counters, jobs
    /// and savepoint operations. Credentials come from the standard AWS_* environment
    /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the
    /// instance/container role.
    #[arg(long, env = "SAVEPOINTD_OBJECT_STORE_URL")]
    object_store_url: Option<String>,

    /// Endpoint of an S3-compatible server (MinIO, moto, Ceph...), e.g.
    /// http://127.0.0.1:9000; without it, AWS S3 (or AWS_ENDPOINT).
    #[arg(long, env = "SAVEPOINTD_S3_ENDPOINT", requires = "object_store_url")]
    s3_endpoint: Option<String>,

    /// S3 region; without it, AWS_REGION or AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, env = "SAVEPOINTD_S3_REGION", requires = "object_store_url")]
    s3_region: Option<String>,

    /// Allow a plain http:// --s3-endpoint (loopback test servers only).
    #[arg(long, env = "SAVEPOINTD_S3_ALLOW_HTTP", requires = "object_store_url")]
    s3_allow_http: bool,

    /// Directory where savepoints go when neither the request nor the job names a
    /// target directory. Defaults to <data-dir>/savepoints, or with --object-store-url
    /// to <object-store-url>/savepoints (a savepoint directory is then an s3:// URL).
    #[arg(long, env = "SAVEPOINTD_SAVEPOINT_DIR")]
    savepoint_dir: Option<PathBuf>,

    /// Further directories under which DisposeSavepoint may delete savepoints (the
    /// default savepoint directory and each job's own directory always count). Repeat
    /// the flag, or separate with commas in the environment variable.
    #[arg(
        long = "savepoint-root",
        env = "SAVEPOINTD_SAVEPOINT_ROOTS",
        value_delimiter = ','
    )]
    savepoint_roots: Vec<PathBuf>,

    /// Requests one client connection may have in flight (a task manager's stream counts
    /// as one); more are refused with RESOURCE_EXHAUSTED rather than queued.
    #[arg(
        long,
        env = "SAVEPOINTD_MAX_REQUESTS_PER_CONNECTION",
        default_value_t = 256
    )]
    max_requests_per_connection: usize,

    /// SavepointService calls that may run at once across all connections (triggers
    /// waiting for their snapshot included); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SAVEPOINTD_MAX_REQUESTS", default_value_t = 1024)]
    max_requests: usize,

    /// Unary TaskGateway calls (Acknowledge, Decline) that may run at once across all
    /// connections; more are refused with RESOURCE_EXHAUSTED. Connect streams do not
    /// count.
    #[arg(
        long,
        env = "SAVEPOINTD_MAX_TASK_GATEWAY_REQUESTS",
        default_value_t = 1024
    )]
    max_task_gateway_requests: usize,

    /// Milliseconds a unary call may keep its caller waiting; then it answers
    /// DEADLINE_EXCEEDED while the operation finishes in the background. Not applied to
    /// TriggerSavepoint, StopWithSavepoint and TriggerCheckpoint (they honour the
    /// client's deadline) nor to task manager streams.
    #[arg(long, env = "SAVEPOINTD_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,

    /// At shutdown (SIGTERM), seconds that savepoints already pending may take to
    /// complete; nothing new is triggered meanwhile and health reports NOT_SERVING. Those
    /// still pending then fail with COORDINATOR_SHUT_DOWN.
    #[arg(long, env = "SAVEPOINTD_SAVEPOINT_DRAIN_SECS", default_value_t = 10)]
    savepoint_drain_secs: u64,

    /// At shutdown, after the savepoint drain: seconds that open calls and connections
    /// may take to finish before they are cut.
    #[arg(long, env = "SAVEPOINTD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,

    /// Log format: text for people, json for log collectors. The level is set with
    /// RUST_LOG (default "info"), e.g. RUST_LOG=savepoint_coordinator=debug.
    #[arg(long, env = "SAVEPOINTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Largest total of inline state bytes one acknowledgement may carry; tasks must
    /// send larger state as a reference (URI and size). Messages are limited to 16 MiB
    /// in any case.
    #[arg(
        long,
        env = "SAVEPOINTD_MAX_INLINE_STATE_BYTES",
        default_value_t = 4 * 1024 * 1024
    )]
    max_inline_state_bytes: usize,

    /// Serve TLS with this certificate chain (PEM, leaf first). Needs --tls-key.
    #[arg(long, env = "SAVEPOINTD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the --tls-cert certificate.
    #[arg(long, env = "SAVEPOINTD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "SAVEPOINTD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Bearer tokens, one `<role> <token> [<name>]` per line, role client or
    /// task-manager; a task-manager token's name is the task_manager_id it may use.
    /// Turns on authentication: SavepointService needs role client, TaskGateway role
    /// task-manager.
    #[arg(long, env = "SAVEPOINTD_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,

    /// Roles of client certificates, one `<role> <name>` per line, matched against the
    /// certificate's subject CN and DNS SANs. Turns on authentication; needs
    /// --tls-client-ca. Without --auth-tokens and --cert-roles every caller may call
    /// every RPC: for loopback and development only.
    #[arg(long, env = "SAVEPOINTD_CERT_ROLES", requires = "tls_client_ca")]
    cert_roles: Option<PathBuf>,

    /// High availability: client endpoints of an etcd cluster (host:port, repeat the flag
    /// or separate with commas). Replicas with the same endpoints and --etcd-prefix elect
    /// one leader; the others report NOT_SERVING and answer UNAVAILABLE naming it. ID
    /// counters, jobs and savepoint operations then live in etcd; use --object-store-url
    /// for the snapshots so that every replica reads them.
    #[arg(
        long = "etcd-endpoint",
        env = "SAVEPOINTD_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    etcd_endpoints: Vec<String>,

    /// Key prefix in etcd for this coordinator's records and leader key.
    #[arg(
        long,
        env = "SAVEPOINTD_ETCD_PREFIX",
        default_value = "/savepoint-coordinator"
    )]
    etcd_prefix: String,

    /// Seconds a leader's lease lives without being refreshed: a crashed leader is
    /// replaced after about this long (at least 1).
    #[arg(long, env = "SAVEPOINTD_LEADER_LEASE_SECS", default_value_t = 5)]
    leader_lease_secs: u64,

    /// The address clients reach this replica at (host:port), which followers name as
    /// the leader's; defaults to the --listen address (set it behind NAT or in a pod).
    #[arg(long, env = "SAVEPOINTD_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (Kubernetes, systemd).
async fn shutdown_signal(
    mut interrupt: tokio::signal::unix::Signal,
    mut terminate: tokio::signal::unix::Signal,
) {
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutdown requested");
}

/// The settings file named by `--config FILE`, `--config=FILE` or SAVEPOINTD_CONFIG,
/// looked up before the flags are parsed, since its values become their defaults.
fn config_file_path() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("SAVEPOINTD_CONFIG").map(PathBuf::from)
}

/// Flags over environment over the settings file over the built-in defaults.
fn parse_args() -> anyhow::Result<Args> {
    let mut command = Args::command();
    if let Some(path) = config_file_path() {
        command = config_file::apply(command, &path)?;
    }
    let matches = command.get_matches();
    let args = Args::from_arg_matches(&matches)?;
    check_dependent_settings(&args)?;
    Ok(args)
}

/// The settings that only mean something with another one. clap enforces these ties for
/// flags and environment variables but not for the settings file's values (they are
/// defaults to clap), so they are checked again on the merged settings.
fn check_dependent_settings(args: &Args) -> anyhow::Result<()> {
    let ties = [
        (
            args.tls_cert.is_some(),
            "tls-cert",
            args.tls_key.is_some(),
            "tls-key",
        ),
        (
            args.tls_key.is_some(),
            "tls-key",
            args.tls_cert.is_some(),
            "tls-cert",
        ),
        (
            args.tls_client_ca.is_some(),
            "tls-client-ca",
            args.tls_cert.is_some(),
            "tls-cert",
        ),
        (
            args.cert_roles.is_some(),
            "cert-roles",
            args.tls_client_ca.is_some(),
            "tls-client-ca",
        ),
        (
            args.s3_endpoint.is_some(),
            "s3-endpoint",
            args.object_store_url.is_some(),
            "object-store-url",
        ),
        (
            args.s3_region.is_some(),
            "s3-region",
            args.object_store_url.is_some(),
            "object-store-url",
        ),
        (
            args.s3_allow_http,
            "s3-allow-http",
            args.object_store_url.is_some(),
            "object-store-url",
        ),
    ];
    for (set, setting, needed, needs) in ties {
        if set && !needed {
            anyhow::bail!("the setting {setting} needs {needs}, which is not set");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args().unwrap_or_else(|error| {
        // Usage errors exit 2, as clap's own do.
        eprintln!("error: {error:#}");
        std::process::exit(2)
    });
    init_logging(args.log_format);

    let mut config = ServerConfig {
        data_dir: args.data_dir,
        object_store: args.object_store_url.map(|url| S3Config {
            url,
            endpoint: args.s3_endpoint,
            region: args.s3_region,
            allow_http: args.s3_allow_http,
            credentials: None,
        }),
        default_savepoint_dir: args.savepoint_dir,
        max_inline_state_bytes: args.max_inline_state_bytes,
        extra_savepoint_roots: args.savepoint_roots,
        max_requests_per_connection: args.max_requests_per_connection,
        max_requests: args.max_requests,
        max_task_gateway_requests: args.max_task_gateway_requests,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| TlsConfig {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
        auth: AuthConfig {
            tokens: args.auth_tokens,
            cert_roles: args.cert_roles,
        },
        ha: (!args.etcd_endpoints.is_empty()).then(|| HaConfig {
            etcd_endpoints: args.etcd_endpoints,
            etcd_prefix: args.etcd_prefix,
            lease_ttl: Duration::from_secs(args.leader_lease_secs),
            advertise_address: args.advertise_address,
        }),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        savepoint_drain: Duration::from_secs(args.savepoint_drain_secs),
        ..ServerConfig::default()
    };
    config.validate().context("invalid configuration")?;
    // Read here too (run reads them again) so a bad file is reported before binding.
    if let Some(tls) = &config.tls {
        tls.load().context("invalid configuration")?;
    }
    config.auth.load().context("invalid configuration")?;
    // Installed before serving so that an early signal is not lost.
    let interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "savepointd listening");
    if let Some(http_listen) = args.http_listen {
        // The server logs the bound address once it serves HTTP.
        let http = HttpListener::bind(http_listen)
            .with_context(|| format!("binding --http-listen {http_listen}"))?;
        config.http_listener = Some(http);
    }

    server::run(config, listener, shutdown_signal(interrupt, terminate))
        .await
        .context("savepointd failed")?;
    tracing::info!("savepointd stopped");
    Ok(())
}
