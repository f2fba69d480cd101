//! Wires the layers together and runs the gRPC server: the one entry point used by the
//! `savepointd` binary and by every integration test (`run(config, listener, shutdown)`).
//!
//! Shutdown order matters. A TriggerSavepoint call waits for its snapshot and a task
//! manager's stream never ends by itself, so a plain graceful shutdown would wait forever.
//! When `shutdown` resolves we therefore: report NOT_SERVING through health checking,
//! shut the coordinator down (every pending snapshot fails, so waiting calls return
//! UNAVAILABLE), stop the stream readers and close every task manager stream, and only
//! then let tonic drain the connections, bounded by `shutdown_grace`.

use crate::coordinator::clock::TokioClock;
use crate::coordinator::{Coordinator, CoordinatorConfig, CoreError};
use crate::proto;
use crate::proto::savepoint_service_server::SavepointServiceServer;
use crate::proto::task_gateway_server::TaskGatewayServer;
use crate::service::convert::DEFAULT_MAX_INLINE_STATE_BYTES;
use crate::service::message_limit::MessageLimitStatusLayer;
use crate::service::{SavepointRpc, StreamRegistry, TaskGatewayLimits, TaskGatewayRpc};
use crate::store::{StoreError, Stores};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// HTTP/2 pings on idle connections, so a vanished task manager is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the server needs to start; validated by [`run`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Root of the filesystem store (ID counters, job records, checkpoint metadata).
    pub data_dir: PathBuf,
    /// Savepoint target when neither the request nor the job names one; None means
    /// `<data_dir>/savepoints`.
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
    /// Directories besides the default savepoint directory (and each job's own) under
    /// which DisposeSavepoint may delete savepoints.
    pub extra_savepoint_roots: Vec<PathBuf>,
    /// Requests one connection may have in flight (a task manager's stream counts as
    /// one); beyond it requests are shed with RESOURCE_EXHAUSTED instead of queued.
    pub max_requests_per_connection: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./data"),
            default_savepoint_dir: None,
            max_inline_state_bytes: DEFAULT_MAX_INLINE_STATE_BYTES,
            max_message_bytes: 16 * 1024 * 1024,
            id_block_size: 64,
            stream_buffer: 1024,
            shutdown_grace: Duration::from_secs(10),
            extra_savepoint_roots: Vec::new(),
            max_requests_per_connection: 256,
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
        Ok(())
    }

    /// The extra savepoint roots as absolute path strings.
    fn extra_savepoint_roots(&self) -> Result<Vec<String>, ServerError> {
        self.extra_savepoint_roots
            .iter()
            .map(|root| absolute_utf8("extra_savepoint_roots", root))
            .collect()
    }

    /// The effective default savepoint directory as an absolute path string.
    fn savepoint_dir(&self) -> Result<String, ServerError> {
        let dir = self
            .default_savepoint_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("savepoints"));
        absolute_utf8("default_savepoint_dir", &dir)
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
}

/// Runs the server on `listener` until `shutdown` resolves, then drains (see the module
/// documentation). Returns Ok after a shutdown, also if the drain had to be cut short.
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
    let stores = Stores::filesystem(&config.data_dir).map_err(|source| ServerError::Store {
        data_dir: config.data_dir.clone(),
        source,
    })?;
    run_with_stores(config, stores, listener, shutdown).await
}

/// Like [`run`], on the given stores instead of the filesystem store under
/// `config.data_dir` (tests wrap that store to inject faults).
pub async fn run_with_stores(
    config: ServerConfig,
    stores: Stores,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let default_savepoint_dir = config.savepoint_dir()?;
    let registry = Arc::new(StreamRegistry::new());
    let coordinator = Coordinator::new(
        stores,
        registry.clone(),
        Arc::new(TokioClock::new()),
        CoordinatorConfig {
            default_savepoint_dir,
            id_block_size: config.id_block_size,
            extra_savepoint_roots: config.extra_savepoint_roots()?,
            ..CoordinatorConfig::default()
        },
    );
    let jobs = coordinator.recover().await.map_err(ServerError::Recovery)?;
    tracing::info!(jobs, data_dir = %config.data_dir.display(), "recovered jobs of earlier runs");

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

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
    let (stop_serving, serving_stopped) = oneshot::channel::<()>();
    let serving = Server::builder()
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
            let _ = serving_stopped.await;
        });
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    tracing::info!(%address, "serving");

    tokio::select! {
        served = &mut serving => {
            // Only a transport failure ends serving before the shutdown signal.
            coordinator.shutdown();
            registry.close_all();
            return served.map_err(ServerError::from);
        }
        () = &mut shutdown => {}
    }

    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    set_health(&health, ServingStatus::NotServing).await;
    end_health_watches(health).await;
    coordinator.shutdown();
    let _ = stop_streams.send(true);
    registry.close_all();
    let _ = stop_serving.send(());
    match tokio::time::timeout(config.shutdown_grace, &mut serving).await {
        Ok(Ok(())) => tracing::info!("stopped"),
        Ok(Err(error)) => tracing::warn!("transport error while draining: {error}"),
        Err(_) => tracing::warn!(
            grace = ?config.shutdown_grace,
            "connections still open after the shutdown grace period; stopped without them"
        ),
    }
    let dropped = registry.dropped_messages();
    if dropped > 0 {
        tracing::info!(
            dropped,
            "messages to task managers were dropped during this run"
        );
    }
    Ok(())
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
        ] {
            let error = config.validate().expect_err(setting);
            assert!(error.to_string().contains(setting), "{error}");
        }
    }
}
