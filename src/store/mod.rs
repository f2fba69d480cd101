//! Pluggable persistence behind traits: the checkpoint ID counter, job registrations,
//! completed checkpoints, savepoints, and the state data the coordinator owns.
//!
//! The core only sees these traits; `memory` backs unit tests, `fs` (local filesystem) is
//! the embedded default, `object` keeps snapshots in S3-compatible object storage. Every
//! backend must make a write durable before returning Ok, and must report unreadable or
//! corrupted metadata as [`StoreError::Corrupted`] (DATA_LOSS), never as a silently wrong
//! value.

pub mod codec;
pub mod etcd;
pub mod faults;
pub mod fs;
pub mod memory;
pub mod object;

use crate::coordinator::model::{
    CheckpointId, CompletedSnapshot, JobId, JobSpec, JobStatus, SavepointOperation,
    SavepointTrigger, SnapshotKind, StateHandle,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error while {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The data exists but is not what was written (bad magic, checksum, truncation...).
    #[error("corrupted metadata at {path}: {detail}")]
    Corrupted { path: String, detail: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// A location the caller passed is not usable (not a directory, outside the roots...).
    #[error("invalid location {location:?}: {detail}")]
    InvalidLocation { location: String, detail: String },
    /// The backend cannot be reached or refused the operation (used by injected faults too).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This server lost the leadership its writes are fenced on; nothing was written. The
    /// caller should go to the current leader.
    #[error("{0}")]
    Deposed(String),
    /// The backend answered, but refused the operation in a way that retrying will not
    /// change (a request etcd considers too large, a misconfigured cluster...).
    #[error("the store refused the operation: {0}")]
    Refused(String),
    /// The metadata could not be encoded into the record format; nothing was written.
    #[error("encoding {what} failed: {source}")]
    Encode {
        what: String,
        #[source]
        source: codec::EncodeError,
    },
}

impl StoreError {
    pub fn io(action: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_string(),
            source,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Encodes `value` as a record of `kind`; `what` names it in the error.
pub fn encode_record<T: Serialize>(
    kind: codec::RecordKind,
    value: &T,
    what: impl std::fmt::Display,
) -> StoreResult<Vec<u8>> {
    codec::encode(kind, value).map_err(|source| StoreError::Encode {
        what: what.to_string(),
        source,
    })
}

/// Durable per-job checkpoint ID counter. IDs are reserved in blocks so the hot path
/// rarely touches the backend; a block that is never fully used leaves a gap, never a reuse.
#[async_trait]
pub trait IdCounterStore: Send + Sync {
    /// Atomically reserves `count` consecutive IDs and returns the first. Every ID in the
    /// block is greater than every ID reserved before for this job, also across restarts.
    /// The first reservation of a job starts at 1.
    async fn reserve(&self, job: &JobId, count: u64) -> StoreResult<CheckpointId>;
    /// Makes sure the next reservation starts above `id` (used by restore).
    async fn advance_past(&self, job: &JobId, id: CheckpointId) -> StoreResult<()>;
    /// Forgets the job's counter (unregister).
    async fn remove(&self, job: &JobId) -> StoreResult<()>;
}

/// A registered job as persisted: its spec and last reported status.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub fencing_token: u64,
}

/// Registered jobs, so that a restarted server knows them again.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates or replaces the record of `record.spec.job_id`.
    async fn save(&self, record: &JobRecord) -> StoreResult<()>;
    /// Removes the record; Ok if it did not exist.
    async fn remove(&self, job: &JobId) -> StoreResult<()>;
    /// All records, in job id order. A record that cannot be read does not hide the
    /// others: it is returned as an [`UnreadableJob`].
    async fn load_all(&self) -> StoreResult<LoadedJobs>;
}

/// What [`JobStore::load_all`] found.
#[derive(Debug, Default)]
pub struct LoadedJobs {
    pub records: Vec<JobRecord>,
    pub unreadable: Vec<UnreadableJob>,
}

/// A job whose record exists but cannot be read (corrupted, truncated, I/O error).
#[derive(Debug)]
pub struct UnreadableJob {
    pub job_id: String,
    pub error: StoreError,
}

/// Retained completed checkpoints of each job (the failover set).
#[async_trait]
pub trait CompletedCheckpointStore: Send + Sync {
    /// Durably adds a completed checkpoint (metadata only; task state lives where tasks wrote it).
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()>;
    /// Removes one checkpoint's metadata; Ok if it did not exist.
    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()>;
    /// All retained checkpoints of the job, ascending by id. Corrupted entries are errors.
    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>>;
    /// Removes every checkpoint of the job (unregister).
    async fn remove_all(&self, job: &JobId) -> StoreResult<()>;
}

/// A savepoint as listed in a job's savepoint index.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SavepointRecord {
    pub job_id: JobId,
    pub checkpoint_id: CheckpointId,
    pub path: String,
    pub trigger_timestamp_ms: u64,
    pub completion_timestamp_ms: u64,
    pub state_size_bytes: u64,
    pub trigger: SavepointTrigger,
}

impl SavepointRecord {
    /// The index entry of `snapshot`, written at `path`.
    pub fn of(snapshot: &CompletedSnapshot, path: String, trigger: SavepointTrigger) -> Self {
        SavepointRecord {
            job_id: snapshot.job_id.clone(),
            checkpoint_id: snapshot.checkpoint_id,
            path,
            trigger_timestamp_ms: snapshot.trigger_timestamp_ms,
            completion_timestamp_ms: snapshot.completion_timestamp_ms,
            state_size_bytes: snapshot.state_size_bytes(),
            trigger,
        }
    }
}

/// Savepoints: self-contained directories `<target>/savepoint-<job>-<id>/_metadata`.
#[async_trait]
pub trait SavepointStore: Send + Sync {
    /// The directory a savepoint of `job`/`id` under `target_dir` will have; tasks write
    /// their own state files inside it. Fails for an unusable target directory.
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String>;
    /// Creates the savepoint directory `path` (from [`SavepointStore::savepoint_path`])
    /// durably before its tasks are triggered, as Flink's coordinator initializes a
    /// savepoint's location, so that storing the metadata later has one step less.
    /// Backends without directories do nothing.
    async fn prepare(&self, _path: &str) -> StoreResult<()> {
        Ok(())
    }
    /// Writes the metadata atomically and durably under the savepoint path and returns
    /// the path. Refuses to overwrite. From then on the savepoint is complete and
    /// restorable from its path; [`SavepointStore::index`] lists it. The two are apart
    /// so that a caller can be answered in between: the coordinator has the savepoint's
    /// operation on record before, and recovery indexes a savepoint whose operation and
    /// metadata a crash left unindexed.
    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String>;
    /// Adds a savepoint whose metadata is written to its job's index (listing,
    /// retention). Writing the same record again changes nothing.
    async fn index(&self, record: &SavepointRecord) -> StoreResult<()>;
    /// [`SavepointStore::write_metadata`], then [`SavepointStore::index`].
    async fn write(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
        trigger: SavepointTrigger,
    ) -> StoreResult<String> {
        let path = self.write_metadata(target_dir, snapshot).await?;
        self.index(&SavepointRecord::of(snapshot, path.clone(), trigger))
            .await?;
        Ok(path)
    }
    /// Reads a savepoint's metadata from its path (the directory or its `_metadata` file).
    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot>;
    /// The job's savepoint index, ascending by id.
    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>>;
    /// Deletes a savepoint: its directory with everything in it and its index entry.
    /// Returns false if there was nothing to delete. A crash halfway leaves the savepoint
    /// marked for disposal, finished by [`SavepointStore::resume_disposals`]; it never
    /// leaves files nobody knows about.
    async fn dispose(&self, path: &str) -> StoreResult<bool>;
    /// The first step of [`SavepointStore::dispose`] alone: marks the savepoint's index
    /// entry for disposal, so it is no longer listed, and leaves its files for `dispose`
    /// or [`SavepointStore::resume_disposals`] to delete. Returns false if the index has
    /// no entry for it.
    async fn retire(&self, path: &str) -> StoreResult<bool>;
    /// `path` as it really is on the backend, to compare against the savepoint roots:
    /// absolute, normalized, and (where the backend has them) with links followed.
    fn resolve(&self, path: &str) -> StoreResult<std::path::PathBuf> {
        normalize_absolute(path)
    }
    /// Finishes disposals a crash interrupted; returns how many.
    async fn resume_disposals(&self, _job: &JobId) -> StoreResult<u64> {
        Ok(0)
    }
}

/// Savepoint operations (idempotent triggers), so they outlive a restart.
#[async_trait]
pub trait OperationStore: Send + Sync {
    /// Creates or replaces the record of `operation.operation_id` of its job.
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()>;
    /// Every operation of the job, in no particular order.
    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>>;
    /// Forgets one operation; Ok if it did not exist.
    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()>;
}

/// State data written by tasks into locations the coordinator handed out (and so owns).
#[async_trait]
pub trait OwnedStateStore: Send + Sync {
    /// Where tasks should write the state of checkpoint `id` of `job`.
    fn checkpoint_location(&self, job: &JobId, id: CheckpointId) -> String;
    /// Deletes the referenced data of `handles` that lies under `location` (a location
    /// this store handed out), and the location itself once empty. Inline handles and
    /// references elsewhere are left alone. Returns how many references were deleted.
    async fn discard(&self, location: &str, handles: &[StateHandle]) -> StoreResult<u64>;
}

/// The set of backends one coordinator uses.
#[derive(Clone)]
pub struct Stores {
    pub ids: Arc<dyn IdCounterStore>,
    pub jobs: Arc<dyn JobStore>,
    pub checkpoints: Arc<dyn CompletedCheckpointStore>,
    pub savepoints: Arc<dyn SavepointStore>,
    pub owned_state: Arc<dyn OwnedStateStore>,
    pub operations: Arc<dyn OperationStore>,
}

impl Stores {
    /// Everything in memory: for unit tests only, nothing survives the process.
    pub fn memory() -> Stores {
        Stores::all_in(Arc::new(memory::MemoryStore::default()))
    }

    /// The embedded default: everything under `data_dir` on the local filesystem.
    pub fn filesystem(data_dir: impl Into<std::path::PathBuf>) -> StoreResult<Stores> {
        Ok(Stores::all_in(Arc::new(fs::FsStore::open(
            data_dir.into(),
        )?)))
    }

    /// Checkpoints, savepoints and owned state in `snapshots` (e.g. a bucket), the
    /// other roles in `metadata` (the filesystem store, or a coordination service).
    pub fn split<S>(metadata: MetadataStores, snapshots: Arc<S>) -> Stores
    where
        S: CompletedCheckpointStore + SavepointStore + OwnedStateStore + 'static,
    {
        Stores {
            ids: metadata.ids,
            jobs: metadata.jobs,
            operations: metadata.operations,
            checkpoints: snapshots.clone(),
            savepoints: snapshots.clone(),
            owned_state: snapshots,
        }
    }

    /// These stores with the metadata roles (ID counters, jobs, operations) served by
    /// `metadata` instead, e.g. etcd for replicas of a highly available coordinator.
    pub fn with_metadata(self, metadata: MetadataStores) -> Stores {
        Stores {
            ids: metadata.ids,
            jobs: metadata.jobs,
            operations: metadata.operations,
            ..self
        }
    }

    /// Every role served by one backend.
    pub fn all_in<S>(store: Arc<S>) -> Stores
    where
        S: IdCounterStore
            + JobStore
            + CompletedCheckpointStore
            + SavepointStore
            + OwnedStateStore
            + OperationStore
            + 'static,
    {
        Stores {
            ids: store.clone(),
            jobs: store.clone(),
            checkpoints: store.clone(),
            savepoints: store.clone(),
            owned_state: store.clone(),
            operations: store,
        }
    }
}

/// The small, frequently updated records of a coordinator: ID counters, job
/// registrations and savepoint operations; see [`Stores::split`].
#[derive(Clone)]
pub struct MetadataStores {
    pub ids: Arc<dyn IdCounterStore>,
    pub jobs: Arc<dyn JobStore>,
    pub operations: Arc<dyn OperationStore>,
}

impl MetadataStores {
    /// The metadata roles of the filesystem store under `data_dir`.
    pub fn filesystem(data_dir: impl Into<std::path::PathBuf>) -> StoreResult<MetadataStores> {
        Ok(MetadataStores::all_in(Arc::new(fs::FsStore::open(
            data_dir.into(),
        )?)))
    }

    /// Every metadata role served by one backend.
    pub fn all_in<S>(store: Arc<S>) -> MetadataStores
    where
        S: IdCounterStore + JobStore + OperationStore + 'static,
    {
        MetadataStores {
            ids: store.clone(),
            jobs: store.clone(),
            operations: store,
        }
    }
}

/// `location` (optionally a `file://` URI) as an absolute path without `.` parts;
/// relative paths and `..` are refused, so no argument can climb out of a directory.
pub fn normalize_absolute(location: &str) -> StoreResult<std::path::PathBuf> {
    use std::path::{Component, Path};
    let invalid = |detail: &str| StoreError::InvalidLocation {
        location: location.to_string(),
        detail: detail.to_string(),
    };
    let raw = location.strip_prefix("file://").unwrap_or(location);
    if raw.trim().is_empty() {
        return Err(invalid("the directory is empty"));
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(invalid("must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid("must not contain '..'"));
    }
    Ok(path.components().collect())
}

/// Name of a savepoint directory, shared by every backend: `savepoint-<job>-<id>`.
pub fn savepoint_dir_name(job: &JobId, id: CheckpointId) -> String {
    format!("savepoint-{job}-{id}")
}

/// Splits a [`savepoint_dir_name`] into job and id.
pub fn parse_savepoint_dir_name(name: &str) -> Option<(JobId, CheckpointId)> {
    let (job, id) = name.strip_prefix("savepoint-")?.rsplit_once('-')?;
    let id = id.parse().ok()?;
    crate::coordinator::model::validate_name(job).ok()?;
    Some((JobId::new(job), CheckpointId(id)))
}

/// The job and id of the savepoint a path or URL names (`.../savepoint-<job>-<id>`, or
/// its `_metadata`), if it names one.
pub fn savepoint_of_path(path: &str) -> Option<(JobId, CheckpointId)> {
    let dir = path.trim_end_matches('/');
    let dir = dir.strip_suffix("/_metadata").unwrap_or(dir);
    dir.rsplit('/').next().and_then(parse_savepoint_dir_name)
}

/// Refuses an index record whose path is not the directory of its own savepoint.
pub fn check_record_path(record: &SavepointRecord) -> StoreResult<()> {
    if savepoint_of_path(&record.path) == Some((record.job_id.clone(), record.checkpoint_id)) {
        return Ok(());
    }
    Err(StoreError::InvalidLocation {
        location: record.path.clone(),
        detail: format!(
            "is not the directory of savepoint {} of job {}",
            record.checkpoint_id, record.job_id
        ),
    })
}

/// The kind tag of a record, written into each encoded file so that a file of one kind
/// is never decoded as another.
pub fn snapshot_record_kind(kind: SnapshotKind) -> codec::RecordKind {
    match kind {
        SnapshotKind::Checkpoint => codec::RecordKind::Checkpoint,
        SnapshotKind::Savepoint => codec::RecordKind::Savepoint,
    }
}
