//! One replica of a highly available coordinator: several `savepointd` share an etcd
//! cluster (ID counters, jobs, savepoint operations, the leader key) and an object store
//! (snapshots), and only the elected leader coordinates.
//!
//! A replica serves from the start, with its coordinator services behind a closed gate:
//! health reports NOT_SERVING (so a Kubernetes Service sends traffic to the leader only)
//! and calls answer UNAVAILABLE naming the leader. On election it opens a term: a
//! coordinator whose etcd writes are fenced on this leadership, recovered from what the
//! previous leader left (jobs, retained checkpoints, periodic schedules, operations in
//! flight), and opens the gate. Retained checkpoints and the savepoint history count only
//! with a fenced record in etcd (`store::etcd`), so nothing a deposed leader still writes
//! to the bucket becomes part of what its successor loads. When leadership is lost the
//! replica closes the gate first, then the term, at once: pending snapshots fail, task
//! manager streams end, and the task managers reconnect to the new leader.

use super::{ServerConfig, ServerError, Serving, Term};
use crate::ha::election::{self, ElectionConfig, LeaseDeadline, Role};
use crate::ha::etcd::EtcdClient;
use crate::service::gate::GateState;
use crate::store::etcd::EtcdStore;
use crate::store::{MetadataStores, Stores};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why a follower refuses calls.
const NOT_LEADER: &str = "this replica is not the leader";
/// How long a new leader waits before trying a failed recovery again.
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// How a replica finds etcd and campaigns.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// Client endpoints of the etcd cluster, `host:port` or `http://host:port`.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd for this coordinator's records and its leader key; replicas of
    /// one coordinator share it, different coordinators must not.
    pub etcd_prefix: String,
    /// Time to live of the leader lease: a crashed leader is replaced after about this.
    pub lease_ttl: Duration,
    /// Where clients reach this replica (followers name the leader by it); None uses
    /// the listening address.
    pub advertise_address: Option<String>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/savepoint-coordinator".to_string(),
            lease_ttl: Duration::from_secs(5),
            advertise_address: None,
        }
    }
}

impl HaConfig {
    pub(super) fn validate(&self) -> Result<(), ServerError> {
        let invalid = |setting: &'static str, detail: &str| {
            Err(ServerError::InvalidConfig {
                setting,
                detail: detail.to_string(),
            })
        };
        if self.etcd_endpoints.is_empty() {
            return invalid("ha.etcd_endpoints", "name at least one etcd endpoint");
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.len() < 2 {
            return invalid(
                "ha.etcd_prefix",
                "must start with '/' and name a key prefix, e.g. /savepoint-coordinator",
            );
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            return invalid(
                "ha.lease_ttl",
                "must be a whole number of seconds, at least 1 (etcd counts lease time in \
                 whole seconds)",
            );
        }
        if self
            .advertise_address
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return invalid("ha.advertise_address", "must not be empty");
        }
        Ok(())
    }
}

/// Runs one replica until `shutdown` resolves (see the module documentation). At
/// shutdown a leader gives up its lease, so that another replica takes over at once.
pub(super) async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Some(ha) = config.ha.clone() else {
        return Err(ServerError::Ha("no high-availability settings".into()));
    };
    let client = EtcdClient::new(&ha.etcd_endpoints).map_err(|e| ServerError::InvalidConfig {
        setting: "ha.etcd_endpoints",
        detail: e.to_string(),
    })?;
    if config.object_store.is_none() {
        tracing::warn!(
            "high availability without an object store: snapshots stay in the local data \
             directory, which only replicas sharing that directory can read"
        );
    }
    let snapshot_stores = config.open_stores()?;
    let advertise_address = match &ha.advertise_address {
        Some(address) => address.clone(),
        None => listener
            .local_addr()
            .map(|a| a.to_string())
            .map_err(|e| ServerError::Ha(format!("the listening address is unknown: {e}")))?,
    };
    let prefix = ha.etcd_prefix.trim_end_matches('/').to_string();
    let election_config = ElectionConfig {
        key: format!("{prefix}/leader"),
        lease_ttl: ha.lease_ttl,
        advertise_address: advertise_address.clone(),
    };
    let authenticator = config.auth.load()?.map(Arc::new);
    let no_leader = GateState::Closed {
        reason: "no leader is elected yet".to_string(),
        leader: None,
    };
    let lease = LeaseDeadline::default();
    let mut server = Serving::start(
        &config,
        listener,
        authenticator.clone(),
        no_leader,
        Some(lease.clone()),
    )
    .await?;
    let (stop_election, election_stopped) = watch::channel(false);
    let (mut role, election) = election::campaign(
        client.clone(),
        election_config.clone(),
        lease.clone(),
        election_stopped,
    );
    tracing::info!(
        etcd = %client.endpoints(),
        %advertise_address,
        lease_ttl = ?ha.lease_ttl,
        "campaigning for leadership"
    );

    tokio::pin!(shutdown);
    // The open term and the fencing revision of the leadership it belongs to.
    let mut term: Option<(i64, Term)> = None;
    let ended = loop {
        let current = role.borrow_and_update().clone();
        // A step-down and a new election can reach us as one change: a term of another
        // leadership than the current one is closed like any lost term.
        let stale = match (&current, &term) {
            (Role::Leader { revision, .. }, Some((opened, _))) => opened != revision,
            (Role::Follower { .. }, Some(_)) => true,
            (_, None) => false,
        };
        if stale && let Some((_, deposed)) = term.take() {
            let leader = match &current {
                Role::Follower { leader } => leader.clone(),
                Role::Leader { .. } => None,
            };
            server.close(NOT_LEADER, leader).await;
            deposed.close();
            tracing::warn!("leadership lost: coordinator closed");
        }
        match &current {
            Role::Leader { revision, .. } if term.is_none() => {
                let etcd =
                    EtcdStore::new(client.clone(), &prefix, current.fence(&election_config.key));
                let (checkpoints, savepoints) = etcd.snapshot_records(
                    snapshot_stores.checkpoints.clone(),
                    snapshot_stores.savepoints.clone(),
                );
                let stores = Stores {
                    checkpoints: Arc::new(checkpoints),
                    savepoints: Arc::new(savepoints),
                    ..snapshot_stores
                        .clone()
                        .with_metadata(MetadataStores::all_in(Arc::new(etcd)))
                };
                let leader_epoch = election::revision_epoch(*revision);
                let opening = Term::open(
                    &config,
                    stores,
                    leader_epoch,
                    Some(lease.clone()),
                    authenticator.clone(),
                    &server.metrics,
                );
                match opening.await {
                    // Leadership may have moved on while recovering.
                    Ok(opened) if *role.borrow() != current => opened.close(),
                    Ok(opened) => {
                        server.open(&opened).await;
                        tracing::info!(leader_epoch, "leading: coordinator open");
                        term = Some((*revision, opened));
                    }
                    Err(error) => {
                        // etcd or the bucket may only be unreachable for a moment; the
                        // gate stays closed and recovery is tried again.
                        tracing::error!(
                            leader_epoch,
                            "recovering as the new leader failed, retrying: {error}"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(RECOVERY_RETRY) => continue,
                            () = &mut shutdown => break Ok(()),
                        }
                    }
                }
                if term.is_none() {
                    continue;
                }
            }
            Role::Leader { .. } => {}
            Role::Follower { leader } => server.name_leader(NOT_LEADER, leader.clone()),
        }
        tokio::select! {
            changed = role.changed() => {
                if changed.is_err() {
                    break Err(ServerError::Ha("the leader election ended".into()));
                }
            }
            served = server.stopped() => break served,
            () = &mut shutdown => break Ok(()),
        }
    };

    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    server.report_not_serving().await;
    if let Some((_, term)) = &term {
        // Still leading meanwhile (the election task keeps the lease alive), unless
        // leadership is lost during the drain.
        tokio::select! {
            () = term.drain_savepoints(config.savepoint_drain) => {}
            _ = role.wait_for(|r| !matches!(r, Role::Leader { .. })) => {}
        }
    }
    server.close("the server is shutting down", None).await;
    if let Some((_, term)) = term.take() {
        term.close();
    }
    let _ = stop_election.send(true);
    let _ = election.await;
    server.drain(config.shutdown_grace).await?;
    ended
}
