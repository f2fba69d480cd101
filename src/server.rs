//! Wires the layers together and runs the gRPC server: the one entry point used by the
//! `savepointd` binary and by every integration test (`run(config, listener, shutdown)`).
//!
//! Shutdown order matters. A TriggerSavepoint call waits for its snapshot and a task
//! manager's stream never ends by itself, so a plain graceful shutdown would wait forever.
//! When `shutdown` resolves we therefore: report NOT_SERVING through health checking (a
//! Kubernetes Service stops routing here), take no new snapshot but let the savepoints
//! already pending complete, for at most `savepoint_drain` (task managers keep their
//! streams meanwhile); then shut the coordinator down (what is still pending fails, so
//! waiting calls return UNAVAILABLE), stop the stream readers and close every task
//! manager stream, and only then let tonic drain the connections, bounded by
//! `shutdown_grace`.
//!
//! Security is configured here too: TLS (rustls) from PEM files, mutual TLS when a client
//! CA is given, and an [`auth::Guard`] in front of SavepointService (role client) and
//! TaskGateway (role task-manager) when tokens or certificate roles are configured.
//! Health checking and reflection stay open for probes.
//!
//! Limits: message size, requests per connection (shed, not queued), and per service a
//! server-wide bound on calls in flight plus a timeout for unary calls
//! ([`request_limits`]); the Connect streams and the calls that wait for a snapshot are
//! exempt from the timeout.

use crate::coordinator::clock::TokioClock;
use crate::coordinator::{Coordinator, CoordinatorConfig, CoreError};
use crate::ha::election::LeaseDeadline;
use crate::http::{HttpListener, HttpServer};
use crate::metrics::{CurrentTerm, ServerMetrics};
use crate::proto;
use crate::proto::savepoint_service_server::SavepointServiceServer;
use crate::proto::task_gateway_server::TaskGatewayServer;
use crate::service::auth::{self, Authenticator, Role};
use crate::service::convert::DEFAULT_MAX_INLINE_STATE_BYTES;
use crate::service::gate::{Gate, GateState};
use crate::service::message_limit::MessageLimitStatusLayer;
use crate::service::request_limits::{self, Bounded, RequestLimits};
use crate::service::{SavepointRpc, StreamRegistry, TaskGatewayLimits, TaskGatewayRpc};
use crate::store::object::{BucketStore, S3Config};
use crate::store::{MetadataStores, StoreError, Stores};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

mod replica;
pub use replica::HaConfig;

/// HTTP/2 pings on idle connections, so a vanished task manager is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for both services, from PEM files.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificate(s) that client certificates must chain to. When set, every client
    /// must present a certificate and it is verified (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Who may call which service (see [`auth`]). Nothing set means no authentication: any
/// caller may call everything, which is for loopback and development only.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// File of bearer tokens, lines `<role> <token> [<name>]`.
    pub tokens: Option<PathBuf>,
    /// File mapping client certificate names (subject CN or DNS SAN) to roles, lines
    /// `<role> <name>`; needs `tls.client_ca`.
    pub cert_roles: Option<PathBuf>,
}

impl AuthConfig {
    /// Reads the configured files; None when authentication is off.
    pub fn load(&self) -> Result<Option<Authenticator>, ServerError> {
        let invalid = |setting| {
            move |error: auth::AuthFileError| ServerError::InvalidConfig {
                setting,
                detail: error.to_string(),
            }
        };
        if self.tokens.is_none() && self.cert_roles.is_none() {
            return Ok(None);
        }
        let mut authenticator = Authenticator::default();
        if let Some(path) = &self.tokens {
            authenticator = authenticator
                .read_tokens(path)
                .map_err(invalid("auth.tokens"))?;
        }
        if let Some(path) = &self.cert_roles {
            authenticator = authenticator
                .read_cert_roles(path)
                .map_err(invalid("auth.cert_roles"))?;
        }
        Ok(Some(authenticator))
    }
}

impl TlsConfig {
    /// Reads and checks the PEM files; errors name the setting.
    pub fn load(&self) -> Result<ServerTlsConfig, ServerError> {
        let cert = read_pem("tls.cert", &self.cert)?;
        if CertificateDer::pem_slice_iter(&cert).next().is_none() {
            return Err(pem_error("tls.cert", &self.cert, "no CERTIFICATE block"));
        }
        let key = read_pem("tls.key", &self.key)?;
        PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| pem_error("tls.key", &self.key, &format!("no private key ({e})")))?;
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(path) = &self.client_ca {
            let ca = read_pem("tls.client_ca", path)?;
            if CertificateDer::pem_slice_iter(&ca).next().is_none() {
                return Err(pem_error("tls.client_ca", path, "no CERTIFICATE block"));
            }
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(tls)
    }
}

fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::InvalidConfig {
        setting,
        detail: format!("cannot read {}: {e}", path.display()),
    })
}

fn pem_error(setting: &'static str, path: &Path, problem: &str) -> ServerError {
    ServerError::InvalidConfig {
        setting,
        detail: format!("{} holds {problem}", path.display()),
    }
}

/// Everything the server needs to start; validated by [`run`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Root of the filesystem store (ID counters, job records, checkpoint metadata).
    pub data_dir: PathBuf,
    /// Keep checkpoints, savepoints and owned state in this S3 bucket prefix instead of
    /// `data_dir` (which then holds only ID counters, jobs and operations).
    pub object_store: Option<S3Config>,
    /// Savepoint target when neither the request nor the job names one; None means
    /// `<data_dir>/savepoints`, or `<object store url>/savepoints`. An object URL
    /// (`s3://bucket/prefix`) is kept as it is; a local path is made absolute.
    pub default_savepoint_dir: Option<PathBuf>,
    /// Bound on the summed inline state bytes of one acknowledgement (larger state must
    /// be sent as a reference).
    pub max_inline_state_bytes: usize,
    /// Largest gRPC message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// How many checkpoint IDs are reserved from the store at a time.
    pub id_block_size: u64,
    /// Messages buffered per task manager stream before further ones are dropped.
    pub stream_buffer: usize,
    /// How long shutdown waits for open calls and connections before giving up on them.
    pub shutdown_grace: Duration,
    /// At shutdown, how long savepoints already pending may take to complete before they
    /// are failed (nothing new is triggered meanwhile).
    pub savepoint_drain: Duration,
    /// Directories besides the default savepoint directory (and each job's own) under
    /// which DisposeSavepoint may delete savepoints.
    pub extra_savepoint_roots: Vec<PathBuf>,
    /// Requests one connection may have in flight (a task manager's stream counts as
    /// one); beyond it requests are shed with RESOURCE_EXHAUSTED instead of queued.
    pub max_requests_per_connection: usize,
    /// SavepointService calls that may run at once across all connections (waiting
    /// triggers included); beyond it calls are refused with RESOURCE_EXHAUSTED.
    pub max_requests: usize,
    /// Unary TaskGateway calls (Acknowledge, Decline) that may run at once across all
    /// connections; their own bound, so waiting triggers can never starve the acks they
    /// wait for. Connect streams are not counted.
    pub max_task_gateway_requests: usize,
    /// How long a unary call may keep its caller waiting before DEADLINE_EXCEEDED. Not
    /// applied to TriggerSavepoint, StopWithSavepoint and TriggerCheckpoint (they honour
    /// the client's deadline) nor to Connect streams.
    pub request_timeout: Duration,
    /// TLS for both services; None serves plaintext.
    pub tls: Option<TlsConfig>,
    /// Caller authentication and roles.
    pub auth: AuthConfig,
    /// High availability: run as one of several replicas with a leader elected through
    /// etcd, which then also holds ID counters, jobs and savepoint operations.
    pub ha: Option<HaConfig>,
    /// Serve Prometheus metrics and the status page over HTTP on this listener; None
    /// (the default) serves no HTTP.
    pub http_listener: Option<HttpListener>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./data"),
            object_store: None,
            default_savepoint_dir: None,
            max_inline_state_bytes: DEFAULT_MAX_INLINE_STATE_BYTES,
            max_message_bytes: 16 * 1024 * 1024,
            id_block_size: 64,
            stream_buffer: 1024,
            shutdown_grace: Duration::from_secs(10),
            savepoint_drain: Duration::from_secs(10),
            extra_savepoint_roots: Vec::new(),
            max_requests_per_connection: 256,
            max_requests: 1024,
            max_task_gateway_requests: 1024,
            request_timeout: Duration::from_secs(30),
            tls: None,
            auth: AuthConfig::default(),
            ha: None,
            http_listener: None,
        }
    }
}

impl ServerConfig {
    /// Checks the settings against each other; errors name the bad setting.
    pub fn validate(&self) -> Result<(), ServerError> {
        let invalid = |setting: &'static str, detail: String| {
            Err(ServerError::InvalidConfig { setting, detail })
        };
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".into());
        }
        if self.max_message_bytes == 0 {
            return invalid("max_message_bytes", "must be at least 1".into());
        }
        if self.id_block_size == 0 {
            return invalid("id_block_size", "must be at least 1".into());
        }
        if self.stream_buffer == 0 {
            return invalid("stream_buffer", "must be at least 1".into());
        }
        if self.max_requests_per_connection == 0 {
            return invalid("max_requests_per_connection", "must be at least 1".into());
        }
        for (setting, value) in [
            ("max_requests", self.max_requests),
            ("max_task_gateway_requests", self.max_task_gateway_requests),
        ] {
            if value == 0 || value > Semaphore::MAX_PERMITS {
                return invalid(
                    setting,
                    format!(
                        "is {value}, must be between 1 and {}",
                        Semaphore::MAX_PERMITS
                    ),
                );
            }
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be above 0".into());
        }
        if let Some(object_store) = &self.object_store
            && object_store.url.trim().is_empty()
        {
            return invalid("object_store.url", "must not be empty".into());
        }
        if let Some(tls) = &self.tls {
            for (setting, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return invalid(setting, "must not be empty".into());
                }
            }
        }
        if let Some(ha) = &self.ha {
            ha.validate()?;
        }
        let client_ca = self.tls.as_ref().and_then(|tls| tls.client_ca.as_ref());
        if self.auth.cert_roles.is_some() && client_ca.is_none() {
            return invalid(
                "auth.cert_roles",
                "needs tls.client_ca: roles come from client certificates, which are only \
                 requested and verified with mutual TLS"
                    .into(),
            );
        }
        Ok(())
    }

    /// The extra savepoint roots as absolute path strings.
    fn extra_savepoint_roots(&self) -> Result<Vec<String>, ServerError> {
        self.extra_savepoint_roots
            .iter()
            .map(|root| location_string("extra_savepoint_roots", root))
            .collect()
    }

    /// The effective default savepoint directory: an object URL, or an absolute path.
    fn savepoint_dir(&self) -> Result<String, ServerError> {
        match (&self.default_savepoint_dir, &self.object_store) {
            (Some(dir), _) => location_string("default_savepoint_dir", dir),
            (None, Some(object_store)) => Ok(format!(
                "{}/savepoints",
                object_store.url.trim_end_matches('/')
            )),
            (None, None) => {
                absolute_utf8("default_savepoint_dir", &self.data_dir.join("savepoints"))
            }
        }
    }

    /// The stores this configuration names: the filesystem store under `data_dir`,
    /// with the snapshot roles in the object store when one is configured.
    pub fn open_stores(&self) -> Result<Stores, ServerError> {
        let store_error = |source| ServerError::Store {
            data_dir: self.data_dir.clone(),
            source,
        };
        let Some(object_store) = &self.object_store else {
            return Stores::filesystem(&self.data_dir).map_err(store_error);
        };
        let bucket =
            BucketStore::connect_s3(object_store).map_err(|e| ServerError::InvalidConfig {
                setting: "object_store.url",
                detail: e.to_string(),
            })?;
        let metadata = MetadataStores::filesystem(&self.data_dir).map_err(store_error)?;
        Ok(Stores::split(metadata, Arc::new(bucket)))
    }
}

/// An object URL (`s3://bucket/prefix`) as it is, anything else as an absolute path.
fn location_string(setting: &'static str, location: &Path) -> Result<String, ServerError> {
    match location.to_str() {
        Some(url) if url.contains("://") && !url.starts_with("file://") => Ok(url.to_string()),
        _ => absolute_utf8(setting, location),
    }
}

/// `dir` made absolute, as a UTF-8 string; errors name `setting`.
fn absolute_utf8(setting: &'static str, dir: &std::path::Path) -> Result<String, ServerError> {
    let dir = std::path::absolute(dir).map_err(|e| ServerError::InvalidConfig {
        setting,
        detail: format!("{} cannot be made absolute: {e}", dir.display()),
    })?;
    dir.to_str()
        .map(str::to_string)
        .ok_or_else(|| ServerError::InvalidConfig {
            setting,
            detail: format!("{} is not valid UTF-8", dir.display()),
        })
}

/// Why the server could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is unusable.
    #[error("invalid setting {setting}: {detail}")]
    InvalidConfig {
        /// The setting's name, as in [`ServerConfig`].
        setting: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The filesystem store could not be opened.
    #[error("cannot open the store in {}: {source}", data_dir.display())]
    Store {
        /// The configured data directory.
        data_dir: PathBuf,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// Loading the jobs of an earlier run failed.
    #[error("recovering the jobs of an earlier run failed: {0}")]
    Recovery(#[source] CoreError),
    /// The reflection service could not be built from the descriptor set.
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC transport failed while serving.
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The task serving gRPC panicked or was cancelled.
    #[error("the gRPC server task ended: {0}")]
    ServerTask(String),
    /// Leader election could not be set up (high availability).
    #[error("high availability: {0}")]
    Ha(String),
    /// The HTTP listener (metrics, status page) could not be served.
    #[error("serving HTTP (metrics, status page) failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Runs the server on `listener` until `shutdown` resolves, then drains (see the module
/// documentation). Returns Ok after a shutdown, also if the drain had to be cut short.
/// With [`ServerConfig::ha`] set it runs as one replica of several (see [`replica`]).
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    if config.max_inline_state_bytes >= config.max_message_bytes {
        tracing::warn!(
            max_inline_state_bytes = config.max_inline_state_bytes,
            max_message_bytes = config.max_message_bytes,
            "the inline state limit is not below the message size limit, so oversized \
             acknowledgements are refused by the message size limit instead"
        );
    }
    if config.ha.is_some() {
        return replica::run(config, listener, shutdown).await;
    }
    let stores = config.open_stores()?;
    run_with_stores(config, stores, listener, shutdown).await
}

/// Like [`run`] without high availability, on the given stores instead of the ones
/// `config` names (tests wrap them to inject faults).
pub async fn run_with_stores(
    config: ServerConfig,
    stores: Stores,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let authenticator = config.auth.load()?.map(Arc::new);
    let metrics = ServerMetrics::new(false);
    // Recovered before serving, so that the first call already finds every job.
    let term = Term::open(&config, stores, 0, None, authenticator.clone(), &metrics).await?;
    let initial = GateState::Open(term.services.clone());
    // Before the HTTP port opens, so that nothing reads "starting" once serving.
    metrics.status().lead(term.current());
    let mut server =
        Serving::start_with(&config, listener, authenticator, initial, None, metrics).await?;
    tokio::pin!(shutdown);
    let ended = tokio::select! {
        served = server.stopped() => Some(served),
        () = &mut shutdown => None,
    };
    if let Some(served) = ended {
        // Only a transport failure ends serving before the shutdown signal.
        term.close();
        return served;
    }
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    server.report_not_serving().await;
    term.drain_savepoints(config.savepoint_drain).await;
    server.close("the server is shutting down", None).await;
    term.close();
    server.drain(config.shutdown_grace).await
}

/// The services of one term's coordinator, as the gate hands them out.
#[derive(Clone)]
struct TermServices {
    savepoints: SavepointService,
    task_gateway: TaskGatewayService,
}

type SavepointService =
    InterceptedService<Bounded<SavepointServiceServer<SavepointRpc>>, auth::Guard>;
type TaskGatewayService =
    InterceptedService<Bounded<TaskGatewayServer<TaskGatewayRpc>>, auth::Guard>;

/// One coordinator's life: the whole run of a single server, or one leadership term of
/// a replica. Closing it fails what is pending and ends every task manager stream (task
/// managers reconnect, through the Service, to whoever leads next).
struct Term {
    coordinator: Coordinator,
    registry: Arc<StreamRegistry>,
    stop_streams: watch::Sender<bool>,
    services: TermServices,
}

impl Term {
    /// A coordinator on `stores` with the jobs of earlier runs (or terms) recovered.
    /// `leader_epoch` (the fencing token of the leadership, 0 without HA) goes into
    /// every message to task managers.
    async fn open(
        config: &ServerConfig,
        stores: Stores,
        leader_epoch: u64,
        lease: Option<LeaseDeadline>,
        authenticator: Option<Arc<Authenticator>>,
        metrics: &ServerMetrics,
    ) -> Result<Term, ServerError> {
        let default_savepoint_dir = config.savepoint_dir()?;
        // A default the savepoint store cannot write to would fail every savepoint later.
        stores
            .savepoints
            .savepoint_path(
                &default_savepoint_dir,
                &crate::coordinator::model::JobId::new("check"),
                crate::coordinator::model::CheckpointId(1),
            )
            .map_err(|e| ServerError::InvalidConfig {
                setting: "default_savepoint_dir",
                detail: e.to_string(),
            })?;
        let registry = Arc::new(StreamRegistry::for_leadership(leader_epoch, lease));
        let coordinator = Coordinator::new(
            stores,
            registry.clone(),
            Arc::new(TokioClock::new()),
            CoordinatorConfig {
                default_savepoint_dir,
                id_block_size: config.id_block_size,
                extra_savepoint_roots: config.extra_savepoint_roots()?,
                metrics: metrics.sink(),
                ..CoordinatorConfig::default()
            },
        );
        let jobs = coordinator.recover().await.map_err(ServerError::Recovery)?;
        tracing::info!(
            jobs,
            leader_epoch,
            data_dir = %config.data_dir.display(),
            object_store = config.object_store.as_ref().map(|o| o.url.as_str()),
            "recovered jobs of earlier runs"
        );
        let (stop_streams, streams_stopped) = watch::channel(false);
        let limits = TaskGatewayLimits {
            max_inline_state_bytes: config.max_inline_state_bytes,
            stream_buffer: config.stream_buffer,
        };
        let savepoints = SavepointServiceServer::new(SavepointRpc::new(coordinator.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let task_gateway = TaskGatewayServer::new(TaskGatewayRpc::new(
            coordinator.clone(),
            registry.clone(),
            limits,
            streams_stopped,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        // Inside the guard, so calls without the role never take a slot.
        let savepoints = Bounded::new(
            savepoints,
            RequestLimits {
                setting: "max_requests",
                max_in_flight: config.max_requests,
                timeout: config.request_timeout,
                policy: request_limits::savepoint_service_policy,
            },
        );
        let task_gateway = Bounded::new(
            task_gateway,
            RequestLimits {
                setting: "max_task_gateway_requests",
                max_in_flight: config.max_task_gateway_requests,
                timeout: config.request_timeout,
                policy: request_limits::task_gateway_policy,
            },
        );
        let services = TermServices {
            savepoints: InterceptedService::new(
                savepoints,
                auth::Guard::new(authenticator.clone(), Role::Client),
            ),
            task_gateway: InterceptedService::new(
                task_gateway,
                auth::Guard::new(authenticator, Role::TaskManager),
            ),
        };
        Ok(Term {
            coordinator,
            registry,
            stop_streams,
            services,
        })
    }

    /// What the metrics and the status page read while this term serves.
    fn current(&self) -> CurrentTerm {
        CurrentTerm {
            coordinator: self.coordinator.clone(),
            streams: self.registry.clone(),
        }
    }

    /// Lets pending savepoints complete within `bound`, triggering nothing new.
    async fn drain_savepoints(&self, bound: Duration) {
        let left = self.coordinator.drain_savepoints(bound).await;
        if left > 0 {
            tracing::warn!(
                pending = left,
                ?bound,
                "savepoints still pending at the end of the shutdown drain fail"
            );
        }
    }

    /// Fails everything pending and ends every stream; completed snapshots stay.
    fn close(self) {
        self.coordinator.shutdown();
        let _ = self.stop_streams.send(true);
        self.registry.close_all();
        let dropped = self.registry.dropped_messages();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "messages to task managers were dropped during this term"
            );
        }
    }
}

/// The gRPC server itself: health, reflection and the gated coordinator services on one
/// listener, independent of the terms that come and go behind the gate.
struct Serving {
    health: HealthReporter,
    gate: watch::Sender<GateState<TermServices>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    /// This server's metrics and status, which the HTTP port serves.
    metrics: Arc<ServerMetrics>,
    http: Option<HttpServer>,
}

impl Serving {
    /// Starts serving with the gate in its `initial` state, health SERVING if open, with
    /// metrics of its own (for a replica, whose terms open later).
    async fn start(
        config: &ServerConfig,
        listener: TcpListener,
        authenticator: Option<Arc<Authenticator>>,
        initial: GateState<TermServices>,
        lease: Option<LeaseDeadline>,
    ) -> Result<Serving, ServerError> {
        let metrics = ServerMetrics::new(config.ha.is_some());
        Serving::start_with(config, listener, authenticator, initial, lease, metrics).await
    }

    /// Like [`Serving::start`], reporting `metrics` (which a term may already count into).
    async fn start_with(
        config: &ServerConfig,
        listener: TcpListener,
        authenticator: Option<Arc<Authenticator>>,
        initial: GateState<TermServices>,
        lease: Option<LeaseDeadline>,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Serving, ServerError> {
        let tls = config.tls.as_ref().map(TlsConfig::load).transpose()?;
        warn_about_security(config, &listener, authenticator.as_deref());
        let (health, health_service) = tonic_health::server::health_reporter();
        let status = match initial {
            GateState::Open(_) => ServingStatus::Serving,
            GateState::Closed { .. } => ServingStatus::NotServing,
        };
        set_health(&health, status).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        if let GateState::Closed { reason, leader } = &initial {
            metrics.status().stand_by(reason, leader.clone());
        }
        let (gate, gate_state) = watch::channel(initial);
        let savepoints = Gate::new(
            gate_state.clone(),
            |t: &TermServices| t.savepoints.clone(),
            lease.clone(),
        );
        let task_gateway = Gate::new(gate_state, |t: &TermServices| t.task_gateway.clone(), lease);

        let address = listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        // The builder's TCP options only apply to listeners tonic binds itself.
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            accepted.and_then(|stream| {
                stream.set_nodelay(true)?;
                Ok(stream)
            })
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ServerError::InvalidConfig {
                    setting: "tls",
                    detail: format!("the certificate, key or client CA is unusable: {e:?}"),
                })?;
        }
        let serving = builder
            .concurrency_limit_per_connection(config.max_requests_per_connection)
            .load_shed(true)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tcp_nodelay(true)
            .layer(MessageLimitStatusLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(savepoints)
            .add_service(task_gateway)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let http = match &config.http_listener {
            Some(listener) => {
                Some(HttpServer::start(listener, metrics.clone()).map_err(ServerError::Http)?)
            }
            None => None,
        };
        tracing::info!(%address, "serving");
        let task = tokio::spawn(async move { serving.await.map_err(ServerError::from) });
        Ok(Serving {
            health,
            gate,
            stop,
            task,
            metrics,
            http,
        })
    }

    /// Lets requests through to `term` and reports SERVING.
    async fn open(&self, term: &Term) {
        self.gate
            .send_replace(GateState::Open(term.services.clone()));
        self.metrics.status().lead(term.current());
        set_health(&self.health, ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING while still letting requests through: for the drain at
    /// shutdown, when task managers must still reach pending savepoints.
    async fn report_not_serving(&self) {
        set_health(&self.health, ServingStatus::NotServing).await;
    }

    /// Refuses requests (naming `leader` if known) and reports NOT_SERVING.
    async fn close(&self, reason: &str, leader: Option<String>) {
        self.metrics.status().stand_by(reason, leader.clone());
        self.gate.send_replace(GateState::Closed {
            reason: reason.to_string(),
            leader,
        });
        set_health(&self.health, ServingStatus::NotServing).await;
    }

    /// Updates the leader a closed gate names.
    fn name_leader(&self, reason: &str, leader: Option<String>) {
        self.metrics.status().name_leader(reason, leader.clone());
        self.gate.send_if_modified(|state| match state {
            GateState::Closed {
                leader: current, ..
            } if *current == leader => false,
            GateState::Closed { .. } => {
                *state = GateState::Closed {
                    reason: reason.to_string(),
                    leader: leader.clone(),
                };
                true
            }
            GateState::Open(_) => false,
        });
    }

    /// Resolves only if serving ends by itself (a transport failure).
    async fn stopped(&mut self) -> Result<(), ServerError> {
        if self.task.is_finished() {
            // Already reported once; a finished task must not be awaited again.
            return std::future::pending().await;
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(error) => Err(ServerError::ServerTask(error.to_string())),
        }
    }

    /// Ends health watches, stops accepting and lets open calls finish within `grace`.
    async fn drain(self, grace: Duration) -> Result<(), ServerError> {
        end_health_watches(self.health).await;
        let _ = self.stop.send(());
        let http = async {
            if let Some(http) = self.http {
                http.stop(grace).await;
            }
        };
        let mut task = self.task;
        let grpc = async {
            if task.is_finished() {
                // Serving already ended by itself, and `stopped` has reported how.
                return;
            }
            match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(Ok(()))) => tracing::info!("stopped"),
                Ok(Ok(Err(error))) => tracing::warn!("transport error while draining: {error}"),
                Ok(Err(error)) => tracing::warn!("the server task failed: {error}"),
                Err(_) => {
                    task.abort();
                    tracing::warn!(
                        ?grace,
                        "connections still open after the shutdown grace period; stopped without them"
                    )
                }
            }
        };
        tokio::join!(http, grpc);
        Ok(())
    }
}

/// Says, once at start, what an insecure configuration exposes.
fn warn_about_security(
    config: &ServerConfig,
    listener: &TcpListener,
    authenticator: Option<&Authenticator>,
) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    match authenticator {
        None if loopback => tracing::info!(
            "no authentication configured: every local caller may call every RPC \
             (fine for development on loopback)"
        ),
        None => tracing::warn!(
            "no authentication configured: anyone who reaches this address may call every \
             RPC; configure auth tokens or certificate roles unless the network is trusted"
        ),
        Some(authenticator) if authenticator.has_tokens() && config.tls.is_none() => {
            tracing::warn!(
                "bearer tokens are accepted without TLS: they cross the network in plaintext"
            )
        }
        Some(_) => {}
    }
    if let Some(tls) = &config.tls {
        tracing::info!(
            mutual = tls.client_ca.is_some(),
            cert = %tls.cert.display(),
            "serving TLS"
        );
    }
}

/// The names health checking reports on: the whole server ("") and both services.
const HEALTH_SERVICES: [&str; 3] = [
    "",
    <SavepointServiceServer<SavepointRpc> as tonic::server::NamedService>::NAME,
    <TaskGatewayServer<TaskGatewayRpc> as tonic::server::NamedService>::NAME,
];

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Ends open health Watch streams (which would otherwise hold the drain until the grace
/// period ends) after they have seen NOT_SERVING: clearing a status drops its channel,
/// and the status is then set again so that Check still answers NOT_SERVING.
async fn end_health_watches(mut health: HealthReporter) {
    for service in HEALTH_SERVICES {
        health.clear_service_status(service).await;
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let config = ServerConfig::default();
        assert!(config.validate().is_ok());
        assert!(
            config
                .savepoint_dir()
                .expect("utf-8")
                .ends_with("savepoints")
        );
    }

    #[test]
    fn with_an_object_store_savepoints_default_to_its_url_and_urls_stay_urls() {
        let object_store = S3Config {
            url: "s3://bucket/prefix/".to_string(),
            endpoint: None,
            region: None,
            allow_http: false,
            credentials: None,
        };
        let config = ServerConfig {
            object_store: Some(object_store.clone()),
            extra_savepoint_roots: vec![PathBuf::from("s3://bucket/other"), PathBuf::from("rel")],
            ..ServerConfig::default()
        };
        assert_eq!(
            config.savepoint_dir().unwrap(),
            "s3://bucket/prefix/savepoints"
        );
        let roots = config.extra_savepoint_roots().unwrap();
        assert_eq!(roots[0], "s3://bucket/other");
        assert!(Path::new(&roots[1]).is_absolute(), "{}", roots[1]);
        let config = ServerConfig {
            default_savepoint_dir: Some(PathBuf::from("s3://bucket/prefix/sp")),
            object_store: Some(object_store),
            ..ServerConfig::default()
        };
        assert_eq!(config.savepoint_dir().unwrap(), "s3://bucket/prefix/sp");
    }

    #[tokio::test]
    async fn a_default_savepoint_dir_outside_the_bucket_is_refused_at_start() {
        let data = tempfile::tempdir().unwrap();
        let bucket = BucketStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "mem://bucket/prefix",
        )
        .unwrap();
        let stores = Stores::split(
            MetadataStores::filesystem(data.path()).unwrap(),
            Arc::new(bucket),
        );
        let config = ServerConfig {
            data_dir: data.path().to_path_buf(),
            ..ServerConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = run_with_stores(config, stores, listener, std::future::pending())
            .await
            .expect_err("a local default savepoint directory with savepoints in a bucket");
        assert!(
            error.to_string().contains("default_savepoint_dir"),
            "{error}"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        for (config, setting) in [
            (
                ServerConfig {
                    stream_buffer: 0,
                    ..ServerConfig::default()
                },
                "stream_buffer",
            ),
            (
                ServerConfig {
                    id_block_size: 0,
                    ..ServerConfig::default()
                },
                "id_block_size",
            ),
            (
                ServerConfig {
                    max_message_bytes: 0,
                    ..ServerConfig::default()
                },
                "max_message_bytes",
            ),
            (
                ServerConfig {
                    max_requests: 0,
                    ..ServerConfig::default()
                },
                "max_requests",
            ),
            (
                ServerConfig {
                    max_task_gateway_requests: usize::MAX,
                    ..ServerConfig::default()
                },
                "max_task_gateway_requests",
            ),
            (
                ServerConfig {
                    request_timeout: Duration::ZERO,
                    ..ServerConfig::default()
                },
                "request_timeout",
            ),
        ] {
            let error = config.validate().expect_err(setting);
            assert!(error.to_string().contains(setting), "{error}");
        }
    }
}
