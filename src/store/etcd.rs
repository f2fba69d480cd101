//! etcd backend for the small, shared records of a highly available coordinator: the
//! checkpoint ID counters, job registrations and savepoint operations. Several replicas of
//! the server see the same records; snapshots themselves live in the object store.
//!
//! Layout under `<prefix>/`:
//! ```text
//! ids/<job>              next checkpoint ID to reserve (decimal)
//! jobs/<job>             job record (checksummed envelope, as on the filesystem)
//! operations/<job>/<op>  savepoint operation record (envelope)
//! ```
//!
//! Every write is one etcd transaction guarded by the writer's [`Fence`]: it only applies
//! while the leader key still holds the writer's leadership, so a deposed leader's late
//! writes fail instead of overwriting its successor's. ID reservations are
//! compare-and-swap on the counter's revision, so two writers never get the same block.

use super::codec::{self, RecordKind};
use super::{
    CompletedCheckpointStore, IdCounterStore, JobRecord, JobStore, LoadedJobs, OperationStore,
    SavepointRecord, SavepointStore, StoreError, StoreResult, UnreadableJob, encode_record,
};
use crate::coordinator::model::{
    CheckpointId, CompletedSnapshot, JobId, SavepointOperation, validate_name,
};
use crate::ha::etcd::{self, EtcdClient, EtcdError};
use async_trait::async_trait;
use std::sync::Arc;

/// The leadership a writer holds: the leader key and the revision at which this writer
/// created it. Writes apply only while the key still has that creation revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub leader_key: String,
    pub revision: i64,
}

/// How many times a compare-and-swap is retried when another writer got there first.
const CAS_ATTEMPTS: u32 = 64;

/// Up to 2^min(attempt, 5) ms, picked at random.
fn race_backoff(attempt: u32) -> std::time::Duration {
    let ceiling = std::time::Duration::from_millis(1 << attempt.min(5));
    ceiling.mul_f64(crate::jitter::random_fraction())
}

/// What became of a write that was answered with an error.
enum Settled {
    Applied,
    NotApplied(StoreError),
    Unknown(StoreError),
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct EtcdStore {
    client: EtcdClient,
    prefix: String,
    fence: Option<Fence>,
}

impl From<EtcdError> for StoreError {
    /// Only an unreachable cluster is worth retrying (UNAVAILABLE); an answer that refuses
    /// the call will refuse it again.
    fn from(error: EtcdError) -> Self {
        match error {
            EtcdError::Unreachable { .. } => StoreError::Unavailable(error.to_string()),
            EtcdError::InvalidEndpoint { .. }
            | EtcdError::NoEndpoints
            | EtcdError::Refused(_)
            | EtcdError::LeaseExpired(_) => StoreError::Refused(error.to_string()),
        }
    }
}

impl EtcdStore {
    /// The records under `prefix` (no trailing slash needed), written under `fence`
    /// (None: unguarded, for a single writer such as a test or a tool).
    pub fn new(client: EtcdClient, prefix: &str, fence: Option<Fence>) -> EtcdStore {
        EtcdStore {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            fence,
        }
    }

    fn id_key(&self, job: &JobId) -> String {
        format!("{}/ids/{job}", self.prefix)
    }

    fn jobs_prefix(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }

    fn operations_prefix(&self, job: &JobId) -> String {
        format!("{}/operations/{job}/", self.prefix)
    }

    fn operation_key(&self, job: &JobId, operation_id: &str) -> StoreResult<String> {
        validate_name(operation_id).map_err(|detail| StoreError::InvalidLocation {
            location: operation_id.to_string(),
            detail: format!("operation id {detail}"),
        })?;
        Ok(format!("{}{operation_id}", self.operations_prefix(job)))
    }

    /// Runs `ops` if the fence holds and every compare in `compares` holds. Returns
    /// whether `compares` held; a broken fence is an error.
    async fn guarded(
        &self,
        compares: Vec<etcd::pb::etcdserverpb::Compare>,
        ops: Vec<etcd::pb::etcdserverpb::RequestOp>,
    ) -> StoreResult<bool> {
        let mut compare = compares;
        let mut failure = Vec::new();
        if let Some(fence) = &self.fence {
            compare.push(etcd::created_at(&fence.leader_key, fence.revision));
            // Read the leader key on failure to tell a lost leadership from a lost race.
            failure.push(etcd::get(&fence.leader_key));
        }
        let response = self
            .client
            .txn(etcd::pb::etcdserverpb::TxnRequest {
                compare,
                success: ops,
                failure,
            })
            .await?;
        if response.succeeded {
            return Ok(true);
        }
        if let Some(fence) = &self.fence {
            let holder = response
                .responses
                .first()
                .and_then(|op| match &op.response {
                    Some(etcd::pb::etcdserverpb::response_op::Response::ResponseRange(range)) => {
                        range.kvs.first().map(|kv| kv.create_revision)
                    }
                    _ => None,
                });
            if holder != Some(fence.revision) {
                return Err(StoreError::Deposed(format!(
                    "this server is no longer the leader (leadership {} lost), so it may \
                     not write; the write was refused",
                    fence.revision
                )));
            }
        }
        Ok(false)
    }

    /// After a write of `value` at `key` failed with `error`: whether it was applied after
    /// all. A refusal (a deposed leader, a request etcd rejects) is definite. A call that
    /// got no answer may have been committed, or may still be: the key is read back, and
    /// unless it holds the value the outcome stays unknown, so that nothing the record
    /// may yet name is cleaned up.
    async fn settle(&self, key: &str, value: &[u8], error: StoreError) -> Settled {
        if !matches!(error, StoreError::Unavailable(_)) {
            return Settled::NotApplied(error);
        }
        match self.client.get(key).await {
            Ok(Some(kv)) if kv.value == value => {
                tracing::info!(key, "a write answered with an error was applied: {error}");
                Settled::Applied
            }
            Ok(_) => {
                tracing::warn!(
                    key,
                    "a write got no answer and is not visible (yet): {error}"
                );
                Settled::Unknown(error)
            }
            Err(read) => {
                tracing::warn!(key, "whether a failed write was applied is unknown: {read}");
                Settled::Unknown(error)
            }
        }
    }

    /// Fails unless the fence still holds (nothing is written).
    async fn check_fence(&self) -> StoreResult<()> {
        self.guarded(Vec::new(), Vec::new()).await.map(|_| ())
    }

    /// Writes `value` at `key` under the fence.
    async fn put(&self, key: &str, value: Vec<u8>) -> StoreResult<()> {
        self.guarded(Vec::new(), vec![etcd::put(key, value, 0)])
            .await
            .map(|_| ())
    }

    /// Deletes `key` under the fence.
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.guarded(Vec::new(), vec![etcd::delete(key)])
            .await
            .map(|_| ())
    }

    /// Moves the counter of `job` with `next` (current next id) -> new next id, by
    /// compare-and-swap; returns the old next id.
    async fn update_counter(
        &self,
        job: &JobId,
        next: impl Fn(u64) -> Option<u64>,
    ) -> StoreResult<u64> {
        let key = self.id_key(job);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                // Lost a race to another writer: wait a little, randomly, so that two
                // writers stop colliding.
                tokio::time::sleep(race_backoff(attempt)).await;
            }
            let current = self.client.get(&key).await?;
            let (value, revision) = match &current {
                Some(kv) => (parse_counter(&key, &kv.value)?, kv.mod_revision),
                None => (1, 0),
            };
            let Some(new_value) = next(value) else {
                return Ok(value);
            };
            let swapped = self
                .guarded(
                    vec![etcd::modified_at(&key, revision)],
                    vec![etcd::put(&key, new_value.to_string().into_bytes(), 0)],
                )
                .await?;
            if swapped {
                return Ok(value);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the ID counter {key} kept changing under {CAS_ATTEMPTS} attempts to update it"
        )))
    }
}

fn parse_counter(key: &str, value: &[u8]) -> StoreResult<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|&next| next >= 1)
        .ok_or_else(|| StoreError::Corrupted {
            path: key.to_string(),
            detail: format!("the ID counter holds {value:?}, not a positive number"),
        })
}

#[async_trait]
impl IdCounterStore for EtcdStore {
    async fn reserve(&self, job: &JobId, count: u64) -> StoreResult<CheckpointId> {
        let first = self
            .update_counter(job, |next| Some(next + count.max(1)))
            .await?;
        Ok(CheckpointId(first))
    }

    async fn advance_past(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.update_counter(job, |next| (next <= id.0).then_some(id.0 + 1))
            .await
            .map(|_| ())
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.delete(&self.id_key(job)).await
    }
}

#[async_trait]
impl JobStore for EtcdStore {
    async fn save(&self, record: &JobRecord) -> StoreResult<()> {
        let key = format!("{}{}", self.jobs_prefix(), record.spec.job_id);
        self.put(&key, encode_record(RecordKind::Job, record, &key)?)
            .await
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.delete(&format!("{}{job}", self.jobs_prefix())).await
    }

    async fn load_all(&self) -> StoreResult<LoadedJobs> {
        let prefix = self.jobs_prefix();
        let mut loaded = LoadedJobs::default();
        for kv in self.client.get_prefix(&prefix).await? {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let job_id = key[prefix.len()..].to_string();
            match decode_value::<JobRecord>(RecordKind::Job, &kv) {
                Ok(record) if record.spec.job_id.as_str() == job_id => loaded.records.push(record),
                Ok(record) => loaded.unreadable.push(UnreadableJob {
                    job_id,
                    error: StoreError::Corrupted {
                        path: key,
                        detail: format!("holds job {} under another job's key", record.spec.job_id),
                    },
                }),
                Err(error) => loaded.unreadable.push(UnreadableJob { job_id, error }),
            }
        }
        loaded
            .records
            .sort_by(|a, b| a.spec.job_id.cmp(&b.spec.job_id));
        Ok(loaded)
    }
}

#[async_trait]
impl OperationStore for EtcdStore {
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()> {
        let key = self.operation_key(&operation.job_id, &operation.operation_id)?;
        self.put(&key, encode_record(RecordKind::Operation, operation, &key)?)
            .await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>> {
        self.client
            .get_prefix(&self.operations_prefix(job))
            .await?
            .into_iter()
            .map(|kv| decode_value(RecordKind::Operation, &kv))
            .collect()
    }

    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()> {
        self.delete(&self.operation_key(job, operation_id)?).await
    }
}

/// Completed checkpoints whose metadata lives in another store (the bucket) but which
/// count only once etcd holds a fenced pointer to them: a deposed leader can still
/// write an object, but never make it part of the retained set its successor loads.
pub struct EtcdCheckpointPointers {
    etcd: EtcdStore,
    inner: Arc<dyn CompletedCheckpointStore>,
}

/// The savepoint history (index) of each job in etcd, fenced like every other record;
/// the savepoints themselves (metadata and data) stay in the inner store.
pub struct EtcdSavepointHistory {
    etcd: EtcdStore,
    inner: Arc<dyn SavepointStore>,
}

impl EtcdStore {
    fn checkpoints_prefix(&self, job: &JobId) -> String {
        format!("{}/checkpoints/{job}/", self.prefix)
    }

    /// Zero-padded, so that etcd's key order is id order.
    fn checkpoint_pointer(&self, job: &JobId, id: CheckpointId) -> String {
        format!("{}{:020}", self.checkpoints_prefix(job), id.0)
    }

    fn history_prefix(&self, job: &JobId) -> String {
        format!("{}/savepoints/{job}/", self.prefix)
    }

    fn history_key(&self, job: &JobId, id: CheckpointId) -> String {
        format!("{}{:020}", self.history_prefix(job), id.0)
    }

    /// Deletes every key under `prefix` under the fence.
    async fn delete_prefix(&self, prefix: &str) -> StoreResult<()> {
        self.guarded(Vec::new(), vec![etcd::delete_prefix(prefix)])
            .await
            .map(|_| ())
    }

    /// These stores with checkpoint pointers and savepoint history in etcd as well.
    pub fn snapshot_records(
        &self,
        checkpoints: Arc<dyn CompletedCheckpointStore>,
        savepoints: Arc<dyn SavepointStore>,
    ) -> (EtcdCheckpointPointers, EtcdSavepointHistory) {
        (
            EtcdCheckpointPointers {
                etcd: self.clone(),
                inner: checkpoints,
            },
            EtcdSavepointHistory {
                etcd: self.clone(),
                inner: savepoints,
            },
        )
    }
}

#[async_trait]
impl CompletedCheckpointStore for EtcdCheckpointPointers {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        self.inner.add(snapshot).await?;
        let key = self
            .etcd
            .checkpoint_pointer(&snapshot.job_id, snapshot.checkpoint_id);
        let Err(error) = self.etcd.put(&key, Vec::new()).await else {
            return Ok(());
        };
        match self.etcd.settle(&key, &[], error).await {
            Settled::Applied => Ok(()),
            Settled::NotApplied(error) => {
                // Not retained after all: leave no object that no pointer names.
                let _ = self
                    .inner
                    .remove(&snapshot.job_id, snapshot.checkpoint_id)
                    .await;
                Err(error)
            }
            // The pointer may exist: the object must stay for it.
            Settled::Unknown(error) => Err(error),
        }
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.etcd
            .delete(&self.etcd.checkpoint_pointer(job, id))
            .await?;
        self.inner.remove(job, id).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        let prefix = self.etcd.checkpoints_prefix(job);
        let pointers = self.etcd.client.get_prefix(&prefix).await?;
        let mut wanted = Vec::with_capacity(pointers.len());
        for kv in &pointers {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let id = key[prefix.len()..]
                .parse::<u64>()
                .map_err(|_| StoreError::Corrupted {
                    path: key.clone(),
                    detail: "a checkpoint pointer whose key does not end in an id".into(),
                })?;
            wanted.push((CheckpointId(id), key));
        }
        let stored = self.inner.load_all(job).await?;
        let mut retained = Vec::with_capacity(wanted.len());
        for (id, key) in wanted {
            match stored.iter().find(|s| s.checkpoint_id == id) {
                Some(snapshot) => retained.push(snapshot.clone()),
                // Metadata lost from the bucket (deleted by hand, a lost object): the
                // pointer names nothing, so the older retained checkpoints are what
                // remains (the job is not failed over it).
                None => tracing::warn!(
                    job = %job,
                    checkpoint_id = id.0,
                    pointer = key,
                    "a retained checkpoint's pointer names no metadata; it is skipped"
                ),
            }
        }
        Ok(retained)
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        self.etcd
            .delete_prefix(&self.etcd.checkpoints_prefix(job))
            .await?;
        self.inner.remove_all(job).await
    }
}

impl EtcdSavepointHistory {
    /// The history key of the savepoint at `path`, if it is listed. The key follows from
    /// the directory's name (`savepoint-<job>-<id>`); the entry must also name this path.
    async fn key_of(&self, path: &str) -> StoreResult<Option<String>> {
        let wanted = path.trim_end_matches('/');
        let wanted = wanted.strip_suffix("/_metadata").unwrap_or(wanted);
        let Some((job, id)) = super::savepoint_of_path(wanted) else {
            return Ok(None);
        };
        let key = self.etcd.history_key(&job, id);
        let Some(kv) = self.etcd.client.get(&key).await? else {
            return Ok(None);
        };
        let record = decode_history(&kv)?;
        Ok((record.path.trim_end_matches('/') == wanted).then_some(key))
    }
}

fn decode_history(kv: &etcd::KeyValue) -> StoreResult<SavepointRecord> {
    decode_value(RecordKind::SavepointIndex, kv)
}

/// The record of `kind` in `kv`; one that does not decode is corrupted, named by its key.
fn decode_value<T: serde::de::DeserializeOwned>(
    kind: RecordKind,
    kv: &etcd::KeyValue,
) -> StoreResult<T> {
    codec::decode(kind, &kv.value).map_err(|e| StoreError::Corrupted {
        path: String::from_utf8_lossy(&kv.key).into_owned(),
        detail: e.to_string(),
    })
}

#[async_trait]
impl SavepointStore for EtcdSavepointHistory {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        self.inner.savepoint_path(target_dir, job, id)
    }

    async fn prepare(&self, path: &str) -> StoreResult<()> {
        self.inner.prepare(path).await
    }

    /// The metadata, then a check that this server still leads: a successor's recovery
    /// indexes (or, finding no metadata, fails and removes) the savepoints of pending
    /// operations, and a savepoint written after that must not be reported complete.
    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        let path = self.inner.write_metadata(target_dir, snapshot).await?;
        // Refused: the metadata stays, a successor may have indexed it already.
        self.etcd.check_fence().await?;
        Ok(path)
    }

    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        self.inner.index(record).await?;
        let key = self.etcd.history_key(&record.job_id, record.checkpoint_id);
        let bytes = encode_record(RecordKind::SavepointIndex, record, &key)?;
        let Err(error) = self.etcd.put(&key, bytes.clone()).await else {
            return Ok(());
        };
        // Either way the savepoint stays: its operation is on record, and whoever leads
        // after a restart or a failover indexes it (`Coordinator::recover_operations`).
        match self.etcd.settle(&key, &bytes, error).await {
            Settled::Applied => Ok(()),
            Settled::NotApplied(error) | Settled::Unknown(error) => Err(error),
        }
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        self.inner.read(path).await
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        self.etcd
            .client
            .get_prefix(&self.etcd.history_prefix(job))
            .await?
            .iter()
            .map(decode_history)
            .collect()
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        let listed = self.retire(path).await?;
        let deleted = self.inner.dispose(path).await?;
        Ok(listed || deleted)
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        let Some(key) = self.key_of(path).await? else {
            // Not in the history; retiring it in the inner store still needs leadership.
            self.etcd.check_fence().await?;
            return self.inner.retire(path).await;
        };
        self.etcd.delete(&key).await?;
        self.inner.retire(path).await?;
        Ok(true)
    }

    fn resolve(&self, path: &str) -> StoreResult<std::path::PathBuf> {
        self.inner.resolve(path)
    }

    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        self.inner.resume_disposals(job).await
    }
}
