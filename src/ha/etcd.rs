//! A small client for etcd's v3 gRPC API (KV and Lease), generated from the subset of
//! etcd's protos under `proto/etcd` by build.rs. It talks to every member of a cluster:
//! a call that fails because a member is down or cut off is tried on the next member, so
//! losing a minority of the cluster costs one retry, not an outage.
//!
//! Only etcd 3.4 features are used (transactions with compares, leases, keep-alive).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Code generated from `proto/etcd`.
pub mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::request_op::Request;
use pb::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
pub use pb::mvccpb::KeyValue;

/// How long one call to one member may take before the next member is tried, unless
/// the client is made with [`EtcdClient::with_call_timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a call waits, at most, for the members to elect a new etcd leader when every
/// member answered that there is none (a few election timeouts of etcd's default 1 s).
const LEADER_ELECTION_WAIT: Duration = Duration::from_secs(3);
/// Keys read per range request when reading a prefix: a prefix of any size is read in
/// pages, so no answer comes near the message size limit below.
const RANGE_PAGE: i64 = 256;
/// Largest answer decoded from a member (etcd's own request limit is 1.5 MiB per value).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the etcd client.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("invalid etcd endpoint {endpoint:?}: {detail}")]
    InvalidEndpoint { endpoint: String, detail: String },
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    /// Every member was tried and none answered the call; `answers` says what each did.
    #[error("etcd is unreachable ({endpoints}): {answers}")]
    Unreachable { endpoints: String, answers: String },
    /// A member answered with an error that retrying elsewhere would not fix.
    #[error("etcd refused the call: {0}")]
    Refused(String),
    /// The lease given up front does not exist any more (expired or revoked).
    #[error("etcd lease {0:#x} has expired")]
    LeaseExpired(i64),
}

/// A connection to every member of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    members: Arc<[Member]>,
    /// The member that answered last; calls start there.
    current: Arc<AtomicUsize>,
    /// How long one member may take to answer before the next one is tried.
    call_timeout: Duration,
    /// How long a call goes on trying while the members have no etcd leader.
    leader_election_wait: Duration,
}

#[derive(Clone)]
struct Member {
    endpoint: String,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl EtcdClient {
    /// A client for the members at `endpoints` (`http://host:port` or `host:port`).
    /// Connections are made lazily, so a member that is down at start does not matter.
    pub fn new(endpoints: &[String]) -> Result<EtcdClient, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let members = endpoints
            .iter()
            .map(|endpoint| {
                let url = if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                };
                let channel = Endpoint::from_shared(url)
                    .map_err(|e| EtcdError::InvalidEndpoint {
                        endpoint: endpoint.clone(),
                        detail: e.to_string(),
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(Member {
                    endpoint: endpoint.clone(),
                    kv: KvClient::new(channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES),
                    lease: LeaseClient::new(channel),
                })
            })
            .collect::<Result<Vec<_>, EtcdError>>()?;
        Ok(EtcdClient {
            members: members.into(),
            current: Arc::new(AtomicUsize::new(0)),
            call_timeout: CALL_TIMEOUT,
            leader_election_wait: LEADER_ELECTION_WAIT,
        })
    }

    /// The same connections, but a member that has not answered within `timeout` is
    /// given up for the next one: the leader election uses a fraction of its lease, so
    /// that one hanging member cannot use up the whole lease.
    pub fn with_call_timeout(&self, timeout: Duration) -> EtcdClient {
        EtcdClient {
            call_timeout: timeout,
            leader_election_wait: timeout,
            ..self.clone()
        }
    }

    /// The endpoints, comma-separated, for messages.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `call` on one member after the other, starting with the one that answered
    /// last, until one answers; errors that another member would answer the same way
    /// (a failed compare is not an error at all) end the attempt at once. While the
    /// members answer that they have no leader (one was lost), it tries again for up
    /// to `leader_election_wait`.
    async fn on_any_member<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Member) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.leader_election_wait;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.on_each_member_once(&call).await {
                Err(EtcdError::Unreachable { answers, .. })
                    if (answers.contains("leader changed") || answers.contains("no leader"))
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!("etcd has no leader ({answers}); trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                answer => return answer,
            }
        }
    }

    /// One round of [`EtcdClient::on_any_member`]: each member once.
    async fn on_each_member_once<T, F, Fut>(&self, call: &F) -> Result<T, EtcdError>
    where
        F: Fn(Member) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        // What each member answered, for the error and for `on_any_member`.
        let mut faults = Vec::new();
        for offset in 0..self.members.len() {
            let index = (start + offset) % self.members.len();
            let member = self.members[index].clone();
            let endpoint = member.endpoint.clone();
            match tokio::time::timeout(self.call_timeout, call(member)).await {
                Ok(Ok(answer)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(status)) if is_member_fault(&status) => {
                    faults.push(format!("{endpoint}: {}", status.message()));
                }
                Ok(Err(status)) => {
                    if status.message().contains("requested lease not found") {
                        return Err(EtcdError::Refused(status.message().to_string()));
                    }
                    return Err(EtcdError::Refused(format!(
                        "{endpoint}: {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                Err(_) => faults.push(format!(
                    "{endpoint}: no answer within {:?}",
                    self.call_timeout
                )),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints(),
            answers: faults.join("; "),
        })
    }

    /// The value of `key` with its revisions, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        };
        let response = self
            .on_any_member(|mut m| {
                let request = request.clone();
                async move { m.kv.range(request).await }
            })
            .await?;
        Ok(response.into_inner().kvs.into_iter().next())
    }

    /// Every key under `prefix`, in key order, read in pages of [`RANGE_PAGE`] keys at
    /// the revision of the first page (so the result is one consistent view).
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let range_end = prefix_end(prefix.as_bytes());
        let mut request = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end,
            limit: RANGE_PAGE,
            ..RangeRequest::default()
        };
        let mut kvs = Vec::new();
        let mut restarts = 0;
        loop {
            let answer = self
                .on_any_member(|mut m| {
                    let request = request.clone();
                    async move { m.kv.range(request).await }
                })
                .await;
            let page = match answer {
                Ok(page) => page.into_inner(),
                // The pinned revision was compacted away between pages: read again from
                // the start, at a new revision.
                Err(EtcdError::Refused(message))
                    if message.contains("compacted") && restarts < 3 =>
                {
                    restarts += 1;
                    kvs.clear();
                    request.key = prefix.as_bytes().to_vec();
                    request.revision = 0;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if request.revision == 0 {
                request.revision = page.header.map(|h| h.revision).unwrap_or_default();
            }
            let next_key = page.kvs.last().map(|kv| {
                // The smallest key after the last one read.
                let mut key = kv.key.clone();
                key.push(0);
                key
            });
            kvs.extend(page.kvs);
            match next_key {
                Some(key) if page.more => request.key = key,
                _ => return Ok(kvs),
            }
        }
    }

    /// Runs a transaction: `success` if every compare holds, else `failure`.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let response = self
            .on_any_member(|mut m| {
                let request = request.clone();
                async move { m.kv.txn(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Grants a lease of `ttl` (whole seconds) and returns its id and the time to live
    /// etcd granted.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let request = LeaseGrantRequest {
            ttl: ttl.as_secs().max(1) as i64,
            id: 0,
        };
        let response = self
            .on_any_member(|mut m| async move { m.lease.lease_grant(request).await })
            .await?
            .into_inner();
        if !response.error.is_empty() {
            return Err(EtcdError::Refused(response.error));
        }
        Ok((response.id, Duration::from_secs(response.ttl.max(0) as u64)))
    }

    /// Refreshes the lease once; its remaining time to live, or `LeaseExpired`.
    pub async fn keep_alive_once(&self, lease: i64) -> Result<Duration, EtcdError> {
        let response = self
            .on_any_member(|mut m| async move {
                let requests = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
                let mut responses = m.lease.lease_keep_alive(requests).await?.into_inner();
                responses
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("keep-alive stream closed"))
            })
            .await?;
        if response.ttl <= 0 {
            return Err(EtcdError::LeaseExpired(lease));
        }
        Ok(Duration::from_secs(response.ttl as u64))
    }

    /// Revokes the lease, deleting every key attached to it.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), EtcdError> {
        self.on_any_member(|mut m| async move {
            m.lease.lease_revoke(LeaseRevokeRequest { id: lease }).await
        })
        .await
        .map(|_| ())
    }
}

/// Whether another member might answer where this one did not.
fn is_member_fault(status: &tonic::Status) -> bool {
    use tonic::Code;
    // RESOURCE_EXHAUSTED: etcd's "too many requests", which passes.
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::ResourceExhausted
    ) && !status.message().contains("requested lease not found")
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// Compare: `key` was created at revision `revision` (0: `key` does not exist).
pub fn created_at(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Compare: `key` was last modified at revision `revision` (0: `key` does not exist).
pub fn modified_at(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Operation: put `value` at `key`, attached to `lease` (0: none).
pub fn put(key: &str, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            prev_kv: false,
        })),
    }
}

/// Operation: delete `key`.
pub fn delete(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..DeleteRangeRequest::default()
        })),
    }
}

/// Operation: delete every key under `prefix`.
pub fn delete_prefix(prefix: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            prev_kv: false,
        })),
    }
}

/// Operation: read `key`.
pub fn get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[tokio::test]
    async fn endpoints_without_a_scheme_get_http_and_bad_ones_are_named() {
        let client = EtcdClient::new(&["127.0.0.1:2379".to_string()]).unwrap();
        assert_eq!(client.endpoints(), "127.0.0.1:2379");
        let error = EtcdClient::new(&["http://bad host:1".to_string()]).unwrap_err();
        assert!(error.to_string().contains("bad host"), "{error}");
        assert!(matches!(EtcdClient::new(&[]), Err(EtcdError::NoEndpoints)));
    }
}
