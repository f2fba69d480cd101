//! Client side of the API, for task managers and tools written in Rust.
//!
//! [`connect`] opens a plaintext channel; [`connect_with`] adds TLS ([`ClientTls`]: the CA
//! to trust and, for mutual TLS, a client certificate) and a bearer token sent with every
//! call, and returns an [`AuthChannel`].
//!
//! [`TaskManagerSession`] is one task manager's `Connect` stream: it says Hello with the
//! tasks it runs, then receives triggers, completion notices and aborts, and sends
//! acknowledgements, declines and task state changes. `savepointctl simulate` and the
//! integration tests are built on it. [`simulator`] runs a whole job's subtasks on a few
//! such sessions and acknowledges every snapshot.
//!
//! [`TaskManager`] is what a real task manager embeds: one session that stays up. It
//! hands the coordinator's messages over as a stream of [`TaskManagerEvent`]s and
//! reconnects with [`Backoff`] (exponential, with jitter) after a lost stream or a leader
//! change, saying Hello again with its tasks' latest states; see its module for an
//! example.

mod reconnecting;
pub mod simulator;
mod task_manager;

pub use reconnecting::{
    Backoff, TaskManager, TaskManagerConfig, TaskManagerEvent, TaskManagerEvents,
};
pub use task_manager::{Downward, TaskManagerSession};

use std::fmt;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, header::AUTHORIZATION};
use tonic::transport::channel::ResponseFuture;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {address:?}: {source}")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("server address {address:?} does not fit the TLS settings: {problem}")]
    SchemeMismatch {
        address: String,
        problem: &'static str,
    },
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unusable TLS settings: {source}")]
    Tls {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the bearer token must be printable ASCII without spaces")]
    InvalidToken,
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the server answered {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the stream to the server is closed")]
    Closed,
}

/// TLS settings of a client: whom to trust and, for mutual TLS, whom to present.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificate(s) the server's certificate must chain to.
    pub ca: Vec<u8>,
    /// PEM certificate chain and private key presented to the server (mutual TLS).
    pub identity: Option<ClientIdentity>,
    /// The name the server's certificate must carry, when not the address's host.
    pub domain_name: Option<String>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_bytes", &self.ca.len())
            .field("client_certificate", &self.identity.is_some())
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

impl ClientTls {
    /// Reads the CA and, for mutual TLS, the client certificate and key from PEM files.
    pub fn read(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, ClientError> {
        let identity = match identity {
            Some((cert, key)) => Some(ClientIdentity {
                cert: read_file(cert)?,
                key: read_file(key)?,
            }),
            None => None,
        };
        Ok(ClientTls {
            ca: read_file(ca)?,
            identity,
            domain_name: None,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some(identity) = &self.identity {
            config = config.identity(Identity::from_pem(&identity.cert, &identity.key));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

/// `address` as a URI: `host:port` gets `scheme`, a full URI is kept.
fn uri_of(address: &str, scheme: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("{scheme}://{address}")
    }
}

/// How long opening the TCP connection to the server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often an open connection is pinged.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn endpoint(address: &str, uri: &str) -> Result<Endpoint, ClientError> {
    Endpoint::from_shared(uri.to_string())
        .map(|endpoint| {
            endpoint
                .tcp_nodelay(true)
                .connect_timeout(CONNECT_TIMEOUT)
                // HTTP/2 pings notice a server that hangs (frozen, cut off) with the
                // connection still open, so a task manager's stream ends and it can
                // reconnect to the new leader instead of waiting forever.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        })
        .map_err(|source| ClientError::InvalidAddress {
            address: address.to_string(),
            source,
        })
}

async fn open(endpoint: Endpoint, uri: String) -> Result<Channel, ClientError> {
    endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            address: uri,
            source,
        })
}

/// Connects a plaintext channel to `address` (`http://host:port`, or `host:port`).
pub async fn connect(address: &str) -> Result<Channel, ClientError> {
    let uri = uri_of(address, "http");
    open(endpoint(address, &uri)?, uri).await
}

/// Connects to `address` (`host:port`, or a URI whose scheme matches `tls`: https with
/// TLS, http without) and sends `token` as `authorization: Bearer <token>` on every call.
pub async fn connect_with(
    address: &str,
    tls: Option<&ClientTls>,
    token: Option<&str>,
) -> Result<AuthChannel, ClientError> {
    let authorization = token.map(bearer).transpose()?;
    let uri = uri_of(address, if tls.is_some() { "https" } else { "http" });
    let https = uri.starts_with("https://");
    let mut endpoint = endpoint(address, &uri)?;
    match tls {
        Some(tls) if https => {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|source| ClientError::Tls { source })?;
        }
        Some(_) => {
            return Err(ClientError::SchemeMismatch {
                address: address.to_string(),
                problem: "TLS needs an https:// address (or host:port)",
            });
        }
        None if https => {
            return Err(ClientError::SchemeMismatch {
                address: address.to_string(),
                problem: "an https:// address needs TLS settings (at least the CA to trust)",
            });
        }
        None => {}
    }
    Ok(AuthChannel {
        channel: open(endpoint, uri).await?,
        authorization,
    })
}

fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::InvalidToken);
    }
    let mut value =
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ClientError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A channel that sends the caller's bearer token, if any, with every call. Cheap to
/// clone; every generated client takes it like a [`Channel`].
#[derive(Clone, Debug)]
pub struct AuthChannel {
    channel: Channel,
    authorization: Option<HeaderValue>,
}

impl From<Channel> for AuthChannel {
    fn from(channel: Channel) -> Self {
        AuthChannel {
            channel,
            authorization: None,
        }
    }
}

impl tower::Service<http::Request<Body>> for AuthChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        self.channel.call(request)
    }
}
