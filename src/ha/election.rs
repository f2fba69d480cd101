//! Leader election through an etcd lease: the replica that creates the leader key
//! (attached to its lease) leads until its lease ends; the others watch the key and
//! campaign once it is gone.
//!
//! The creation revision of the leader key is the leadership's **fencing token**: it grows
//! with every new leader, the etcd store guards every write on it ([`Fence`]), and task
//! managers get it in every message. A leader that cannot refresh its lease steps down
//! locally before etcd can have let the lease expire, so two replicas never both believe
//! they lead; and should one still try to write, etcd refuses it.

use super::etcd::{self, EtcdClient};
use crate::store::etcd::Fence;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What this replica is at the moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not the leader; `leader` is the address the current leader advertises, if known.
    Follower { leader: Option<String> },
    /// The leader for the term whose fencing token is `revision`.
    Leader { lease: i64, revision: i64 },
}

impl Role {
    /// The fence of a leader's writes, None for a follower.
    pub fn fence(&self, leader_key: &str) -> Option<Fence> {
        match self {
            Role::Leader { revision, .. } => Some(Fence {
                leader_key: leader_key.to_string(),
                revision: *revision,
            }),
            Role::Follower { .. } => None,
        }
    }
}

/// How a replica campaigns.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The leader key, e.g. `<prefix>/leader`.
    pub key: String,
    /// Time to live of the leader's lease: how long a crashed leader blocks failover.
    pub lease_ttl: Duration,
    /// The address this replica serves clients on, told to clients of the followers.
    pub advertise_address: String,
}

impl ElectionConfig {
    /// How often a follower looks at the leader key and a leader refreshes its lease.
    fn poll_interval(&self) -> Duration {
        (self.lease_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// How long one etcd member may take to answer an election call before the next is
    /// tried: a quarter of the lease, so that a member that hangs costs a retry on
    /// another member, not the lease.
    fn call_timeout(&self) -> Duration {
        (self.lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(3))
    }
}

/// Until when this replica's leadership is surely valid: etcd cannot have let its lease
/// expire before then. Shared with the serving side, which checks it before admitting a
/// call or sending a message, so that a leader whose process was paused past its lease
/// does nothing in the moment before its election task notices.
#[derive(Clone, Debug)]
pub struct LeaseDeadline {
    base: Instant,
    /// Microseconds after `base`; 0 while not leading.
    until_micros: Arc<AtomicU64>,
    /// The leadership (fencing revision) the deadline belongs to.
    revision: Arc<AtomicU64>,
}

impl Default for LeaseDeadline {
    fn default() -> Self {
        LeaseDeadline {
            base: Instant::now(),
            until_micros: Arc::new(AtomicU64::new(0)),
            revision: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl LeaseDeadline {
    /// Whether some leadership's lease surely still lives now.
    pub fn is_valid(&self) -> bool {
        let until = self.until_micros.load(Ordering::Acquire);
        until != 0 && (self.base.elapsed().as_micros() as u64) < until
    }

    /// Whether the lease of leadership `revision` surely still lives now: after a quick
    /// step-down and re-election, a term of the old leadership does not count as valid
    /// again.
    pub fn is_valid_for(&self, revision: u64) -> bool {
        self.is_valid() && self.revision.load(Ordering::Acquire) == revision
    }

    /// Valid until `until`, for leadership `revision`.
    pub(crate) fn extend_to(&self, until: Instant, revision: u64) {
        // Expired (0) or the same leadership while the revision changes, never the old
        // leadership with a new deadline.
        self.revision.store(revision, Ordering::Release);
        let micros = until.saturating_duration_since(self.base).as_micros() as u64;
        self.until_micros.store(micros.max(1), Ordering::Release);
    }

    pub(crate) fn expire(&self) {
        self.until_micros.store(0, Ordering::Release);
    }
}

/// Campaigns until `shutdown` turns true, publishing this replica's role on the returned
/// channel and the validity of its lease in `deadline`; on shutdown a leader gives up
/// its lease so that another takes over at once.
pub fn campaign(
    client: EtcdClient,
    config: ElectionConfig,
    deadline: LeaseDeadline,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<Role>, tokio::task::JoinHandle<()>) {
    let (role_tx, role_rx) = watch::channel(Role::Follower { leader: None });
    let task = tokio::spawn(async move {
        let candidate = Candidate {
            client: client.with_call_timeout(config.call_timeout()),
            config,
            role: role_tx,
            deadline,
        };
        tokio::select! {
            () = candidate.run() => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
        // Nothing goes out any more, before the lease is given up.
        candidate.deadline.expire();
        let role = candidate.role.borrow().clone();
        if let Role::Leader { lease, .. } = role
            && let Err(error) = candidate.client.revoke_lease(lease).await
        {
            tracing::warn!("could not give up the leader lease at shutdown: {error}");
        }
        candidate.deadline.expire();
        candidate.role.send_replace(Role::Follower { leader: None });
    });
    (role_rx, task)
}

/// A leadership's revision as the leader epoch task managers see.
pub fn revision_epoch(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or_default()
}

struct Candidate {
    client: EtcdClient,
    config: ElectionConfig,
    role: watch::Sender<Role>,
    deadline: LeaseDeadline,
}

impl Candidate {
    async fn run(&self) {
        loop {
            match self.try_to_lead().await {
                Ok(Some((lease, revision, valid_until))) => {
                    tracing::info!(revision, lease, "elected leader");
                    self.deadline
                        .extend_to(valid_until, revision_epoch(revision));
                    self.role.send_replace(Role::Leader { lease, revision });
                    self.lead(lease, revision, valid_until).await;
                    self.deadline.expire();
                    self.role.send_replace(Role::Follower { leader: None });
                    // Best effort: a lease nobody refreshes expires anyway.
                    let _ = self.client.revoke_lease(lease).await;
                }
                Ok(None) => tokio::time::sleep(self.config.poll_interval()).await,
                Err(error) => {
                    tracing::warn!("leader election: {error}");
                    tokio::time::sleep(self.config.poll_interval()).await;
                }
            }
        }
    }

    /// Creates the leader key if nobody holds it; returns the lease, the fencing revision
    /// and until when the lease surely lives, or None (and notes the leader) if another
    /// replica leads.
    async fn try_to_lead(&self) -> Result<Option<(i64, i64, Instant)>, etcd::EtcdError> {
        if let Some(holder) = self.client.get(&self.config.key).await? {
            self.note_leader(&holder.value);
            return Ok(None);
        }
        let requested = Instant::now();
        let (lease, granted) = self.client.grant_lease(self.config.lease_ttl).await?;
        let response = self
            .client
            .txn(etcd::pb::etcdserverpb::TxnRequest {
                compare: vec![etcd::created_at(&self.config.key, 0)],
                success: vec![etcd::put(
                    &self.config.key,
                    self.config.advertise_address.clone().into_bytes(),
                    lease,
                )],
                failure: Vec::new(),
            })
            .await;
        match response {
            Ok(response) if response.succeeded => {
                let revision = response.header.map(|h| h.revision).unwrap_or_default();
                // Counted from before the request, and never longer than etcd granted.
                let ttl = self.config.lease_ttl.min(granted);
                Ok(Some((lease, revision, requested + ttl)))
            }
            other => {
                let _ = self.client.revoke_lease(lease).await;
                other.map(|_| None)
            }
        }
    }

    fn note_leader(&self, address: &[u8]) {
        // The key may still be this replica's own, from a term it just gave up (its lease
        // has not run out yet): then no leader is known, this replica is not one.
        let leader = Some(String::from_utf8_lossy(address).into_owned())
            .filter(|leader| *leader != self.config.advertise_address);
        self.role.send_if_modified(|role| {
            let follower = Role::Follower {
                leader: leader.clone(),
            };
            let changed = *role != follower;
            *role = follower;
            changed
        });
    }

    /// Keeps the lease alive while the leader key is still this term's; returns when
    /// leadership is lost or can no longer be proven in time.
    async fn lead(&self, lease: i64, revision: i64, mut valid_until: Instant) {
        let interval = self.config.poll_interval();
        loop {
            tokio::time::sleep(interval).await;
            let sent = Instant::now();
            if sent >= valid_until {
                tracing::warn!(
                    revision,
                    "stepping down: the leader lease could not be refreshed in time"
                );
                return;
            }
            let refreshed = tokio::time::timeout_at(valid_until, async {
                let ttl = self.client.keep_alive_once(lease).await?;
                let holder = self.client.get(&self.config.key).await?;
                Ok::<_, etcd::EtcdError>((ttl, holder))
            })
            .await;
            match refreshed {
                Ok(Ok((ttl, Some(holder)))) if holder.create_revision == revision => {
                    valid_until = sent + ttl.min(self.config.lease_ttl);
                    self.deadline
                        .extend_to(valid_until, revision_epoch(revision));
                }
                Ok(Ok(_)) => {
                    tracing::warn!(
                        revision,
                        "stepping down: the leader key is no longer this replica's"
                    );
                    return;
                }
                Ok(Err(etcd::EtcdError::LeaseExpired(_))) => {
                    tracing::warn!(revision, "stepping down: the leader lease expired");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(revision, "could not refresh the leader lease: {error}");
                }
                Err(_) => {
                    tracing::warn!(
                        revision,
                        "stepping down: the leader lease could not be refreshed in time"
                    );
                    return;
                }
            }
        }
    }
}
