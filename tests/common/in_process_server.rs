//! The real server, in-process on 127.0.0.1:0, for integration tests: started with
//! `server::run` like the binary, stopped through a oneshot so every test ends cleanly.

// Each test binary includes this file and uses only some of it.
#![allow(dead_code)]

use savepoint_coordinator::client;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::server::{self, ServerConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Bound on every wait of a test: start-up, calls, shutdown.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server with its own data directory; stop it with [`TestServer::stop`].
pub struct TestServer {
    pub address: SocketAddr,
    pub data_dir: tempfile::TempDir,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), server::ServerError>>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves with a fresh temporary data directory.
    pub async fn start() -> TestServer {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let config = ServerConfig {
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace: Duration::from_secs(2),
            savepoint_drain: Duration::from_millis(300),
            ..ServerConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(config, listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            address,
            data_dir,
            stop,
            serving,
        }
    }

    /// `http://127.0.0.1:<port>`, as savepointctl's `--server` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A new channel to the server.
    pub async fn channel(&self) -> Channel {
        tokio::time::timeout(WAIT, client::connect(&self.url()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// A SavepointService client on a new channel.
    pub async fn savepoints(&self) -> SavepointServiceClient<Channel> {
        SavepointServiceClient::new(self.channel().await)
    }

    /// Shuts the server down and waits (bounded) until it has stopped.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.serving)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ran without error");
    }
}

/// Sets the job's status, bounded.
pub async fn set_status(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    status: proto::JobStatus,
) {
    tokio::time::timeout(
        WAIT,
        client.update_job_status(proto::UpdateJobStatusRequest {
            job_id: job_id.to_string(),
            status: status.into(),
        }),
    )
    .await
    .expect("UpdateJobStatus in time")
    .expect("UpdateJobStatus");
}
