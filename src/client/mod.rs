//! Client side of the API, for task managers and tools written in Rust.
//!
//! [`TaskManagerSession`] is one task manager's `Connect` stream: it says Hello with the
//! tasks it runs, then receives triggers, completion notices and aborts, and sends
//! acknowledgements, declines and task state changes. `savepointctl simulate` and the
//! integration tests are built on it. [`simulator`] runs a whole job's subtasks on a few
//! such sessions and acknowledges every snapshot.

pub mod simulator;
mod task_manager;

pub use task_manager::{Downward, TaskManagerSession};

use tonic::transport::{Channel, Endpoint};

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {address:?}: {source}")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
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

/// Connects a channel to `address` (`http://host:port`, or `host:port`).
pub async fn connect(address: &str) -> Result<Channel, ClientError> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint =
        Endpoint::from_shared(uri.clone()).map_err(|source| ClientError::InvalidAddress {
            address: address.to_string(),
            source,
        })?;
    endpoint
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            address: uri,
            source,
        })
}
