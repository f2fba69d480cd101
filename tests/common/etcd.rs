//! Real etcd servers for the HA tests: one member or a cluster of several, each on free
//! loopback ports with a temporary data directory, killed at drop. etcd comes from
//! Debian's `etcd-server` package, which `.ci/install-etcd` installs (`.ci/test` runs it).
//!
//! A missing etcd binary fails the test with a message saying how to install it: these
//! tests never skip silently.

use super::free_port;
use savepoint_coordinator::ha::etcd::EtcdClient;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect its raft leader and answer.
const STARTUP: Duration = Duration::from_secs(30);

/// The etcd binary: `$SAVEPOINT_ETCD_BIN`, else `etcd` on the PATH.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SAVEPOINT_ETCD_BIN") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed: no `etcd` binary on the PATH. The HA tests need a \
                 real etcd 3.4; install it with `bash .ci/install-etcd` (Debian's \
                 etcd-server package; `.ci/test` runs it) or point SAVEPOINT_ETCD_BIN at one."
            )
        })
}

struct MemberProcess {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// A running etcd cluster on loopback; stopped when dropped.
pub struct EtcdCluster {
    members: Vec<MemberProcess>,
    initial_cluster: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// A cluster of `size` members with short raft timeouts (heartbeat 50 ms, election
    /// 500 ms), so that leases as short as one second are allowed; waits until it answers.
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let members: Vec<MemberProcess> = (0..size)
            .map(|i| MemberProcess {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_until_serving().await;
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let data_dir = self.dir.path().join(format!("m{index}.etcd"));
        let member = &mut self.members[index];
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("etcd log file");
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "savepoint-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd failed: {e}"));
        member.child = Some(child);
    }

    /// Client endpoints of every member, `127.0.0.1:<port>`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A client of its own for every member.
    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(&self.endpoints()).expect("etcd client")
    }

    /// Kills member `index` with SIGKILL (its data stays for a restart).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data directory and ports.
    pub fn restart(&mut self, index: usize) {
        assert!(
            self.members[index].child.is_none(),
            "member {index} still runs"
        );
        self.spawn(index);
    }

    /// Waits until member `index` itself answers a linearizable read, which it can only
    /// once it has rejoined the cluster (after a restart).
    pub async fn wait_until_member_serves(&self, index: usize) {
        let endpoint = format!("127.0.0.1:{}", self.members[index].client_port);
        let client = EtcdClient::new(&[endpoint]).expect("etcd client of one member");
        let started = Instant::now();
        while client.get("/savepoint-test/ping").await.is_err() {
            assert!(
                started.elapsed() < STARTUP,
                "etcd member {index} did not rejoin within {STARTUP:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the cluster answers a read (it has a raft leader).
    pub async fn wait_until_serving(&mut self) {
        let client = self.client();
        let started = Instant::now();
        loop {
            if client.get("/savepoint-test/ping").await.is_ok() {
                return;
            }
            for (i, member) in self.members.iter_mut().enumerate() {
                if let Some(child) = member.child.as_mut()
                    && let Ok(Some(exit)) = child.try_wait()
                {
                    panic!(
                        "etcd member {i} exited with {exit}:\n{}",
                        std::fs::read_to_string(&member.log).unwrap_or_default()
                    );
                }
            }
            assert!(
                started.elapsed() < STARTUP,
                "etcd did not answer within {STARTUP:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {}:\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
