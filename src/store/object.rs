//! Object storage backend (S3 and S3-compatible stores through the `object_store` crate):
//! completed checkpoints, savepoints and the state locations the coordinator hands out,
//! all under one bucket prefix, so that any replica of the server reads the same data.
//!
//! Layout under `<scheme>://<bucket>/<prefix>/`:
//! ```text
//! jobs/<job>/checkpoints/chk-<id>.rec          retained completed checkpoints
//! jobs/<job>/savepoints/sp-<id>.rec            savepoint index (path, times, size, trigger)
//! checkpoints/<job>/chk-<id>/                  where tasks write checkpoint state (owned)
//! savepoints/savepoint-<job>-<id>/_metadata    savepoints in the default target
//! ```
//! Savepoint paths are object URLs (`s3://bucket/prefix/savepoints/savepoint-job-7`); a
//! target directory may be any prefix of the same bucket.
//!
//! Publication is ordered so that a reader never sees a partial savepoint: tasks write
//! their state objects first (before they acknowledge), the `_metadata` object goes last
//! with a conditional create (`If-None-Match: *`), which also refuses to overwrite a
//! savepoint, and the index entry that lists it is written only after that. One PUT is
//! atomic on S3, so every object is either whole or absent; the checksummed
//! [`codec`](super::codec) envelope still catches whatever else went wrong with it.
//!
//! Disposal is crash-safe like the filesystem store's: the index entry is marked retired
//! first, then the metadata and the other objects are deleted, then the entry; an
//! interrupted disposal is finished by [`SavepointStore::resume_disposals`].

use super::codec::{self, RecordKind};
use super::{
    CompletedCheckpointStore, OwnedStateStore, SavepointRecord, SavepointStore, StoreError,
    StoreResult, check_record_path, encode_record, parse_savepoint_dir_name, savepoint_dir_name,
};
use crate::coordinator::model::{CheckpointId, CompletedSnapshot, JobId, StateData, StateHandle};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// The name of a savepoint's metadata object inside its directory (as in Flink).
pub const METADATA_OBJECT: &str = "_metadata";

/// How many objects are read at once when a listing is loaded.
const READ_CONCURRENCY: usize = 8;

/// Where the S3 store is and how to reach it. Credentials come from the standard `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`) or the instance or container role, unless given here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// `s3://<bucket>/<prefix>`: everything the server writes lies under it.
    pub url: String,
    /// Endpoint of an S3-compatible server (MinIO, moto...); None means AWS itself (or
    /// `AWS_ENDPOINT` from the environment).
    pub endpoint: Option<String>,
    /// Region; None means `AWS_REGION`/`AWS_DEFAULT_REGION` or else us-east-1.
    pub region: Option<String>,
    /// Allows a plain `http://` endpoint (for loopback test servers only).
    pub allow_http: bool,
    /// Static credentials for embedding the server (and for tests); None reads them from
    /// the environment as said above.
    pub credentials: Option<S3Credentials>,
}

/// An access key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct BucketStore {
    store: Arc<dyn ObjectStore>,
    /// `<scheme>://<bucket>`: what every URL of this store starts with.
    origin: String,
    /// The key prefix under which the store writes its own records and locations.
    prefix: Path,
}

impl std::fmt::Debug for BucketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketStore")
            .field("url", &self.url())
            .finish()
    }
}

/// An object URL split into its origin (`s3://bucket`) and key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ObjectUrl {
    origin: String,
    key: Path,
}

/// Splits `<scheme>://<bucket>/<key>`; refuses anything else, `.`/`..` and empty segments,
/// so that no location can name an object other than the one it reads as.
fn parse_url(url: &str) -> StoreResult<ObjectUrl> {
    let invalid = |detail: String| StoreError::InvalidLocation {
        location: url.to_string(),
        detail,
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(
            "not an object URL; expected <scheme>://<bucket>/<key>, e.g. s3://bucket/savepoints"
                .into(),
        )
    })?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(format!("{scheme:?} is not a URL scheme")));
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("the bucket name is empty".into()));
    }
    let key = key.strip_suffix('/').unwrap_or(key);
    let key = if key.is_empty() {
        Path::ROOT
    } else {
        let parsed = Path::parse(key).map_err(|e| invalid(format!("bad object key: {e}")))?;
        if parsed.as_ref() != key {
            return Err(invalid("the object key must not start with '/'".into()));
        }
        parsed
    };
    Ok(ObjectUrl {
        origin: format!("{}://{bucket}", scheme.to_ascii_lowercase()),
        key,
    })
}

/// `key` joined onto `origin`.
fn join_url(origin: &str, key: &Path) -> String {
    if key.as_ref().is_empty() {
        origin.to_string()
    } else {
        format!("{origin}/{key}")
    }
}

fn child(parent: &Path, parts: &[&str]) -> Path {
    parts
        .iter()
        .fold(parent.clone(), |p, part| p.clone().join(*part))
}

/// Maps an `object_store` error; `action` and `url` say what was being done.
fn remote(action: &str, url: &str, error: object_store::Error) -> StoreError {
    match error {
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            what: url.to_string(),
        },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StoreError::InvalidLocation {
                location: url.to_string(),
                detail: "already exists; refusing to overwrite it".to_string(),
            }
        }
        other => StoreError::Unavailable(format!("{action} {url}: {other}")),
    }
}

impl BucketStore {
    /// Connects to S3 (or an S3-compatible server) as `config` says. Nothing is sent yet;
    /// the first request tells whether the bucket is reachable.
    pub fn connect_s3(config: &S3Config) -> StoreResult<BucketStore> {
        let url = parse_url(&config.url)?;
        let bucket = match url.origin.split_once("://") {
            Some(("s3" | "s3a", bucket)) => bucket.to_string(),
            _ => {
                return Err(StoreError::InvalidLocation {
                    location: config.url.clone(),
                    detail: "expected an s3://<bucket>/<prefix> URL".to_string(),
                });
            }
        };
        // HTTPS goes through rustls with the ring provider the rest of the server uses;
        // an already installed default is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Retries end well within a snapshot's usual timeout instead of object_store's
        // three minutes, so an unreachable store is reported rather than waited out.
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(30),
            ..object_store::RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_retry(retry);
        let region = config.region.clone().or_else(|| {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        });
        if let Some(region) = region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(credentials) = &config.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
        }
        let store = builder.build().map_err(|e| StoreError::InvalidLocation {
            location: config.url.clone(),
            detail: format!("cannot configure the S3 client: {e}"),
        })?;
        BucketStore::new(Arc::new(store), &config.url)
    }

    /// A store on any `object_store` backend; `url` (`<scheme>://<bucket>/<prefix>`)
    /// names the bucket and prefix the backend's keys are reported under.
    pub fn new(store: Arc<dyn ObjectStore>, url: &str) -> StoreResult<BucketStore> {
        let url = parse_url(url)?;
        Ok(BucketStore {
            store,
            origin: url.origin,
            prefix: url.key,
        })
    }

    /// `<scheme>://<bucket>/<prefix>`.
    pub fn url(&self) -> String {
        join_url(&self.origin, &self.prefix)
    }

    /// Where savepoints go when nothing else is named: `<url>/savepoints`.
    pub fn default_savepoint_dir(&self) -> String {
        format!("{}/savepoints", self.url())
    }

    /// The `object_store` this store writes to (for tools and tests).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of `url`, which must lie in this store's bucket.
    pub fn key_of(&self, url: &str) -> StoreResult<Path> {
        let parsed = parse_url(url)?;
        if parsed.origin != self.origin {
            return Err(StoreError::InvalidLocation {
                location: url.to_string(),
                detail: format!(
                    "this server keeps its snapshots in {}; locations must lie under it",
                    self.origin
                ),
            });
        }
        Ok(parsed.key)
    }

    fn url_of(&self, key: &Path) -> String {
        join_url(&self.origin, key)
    }

    fn job_key(&self, job: &JobId, parts: &[&str]) -> Path {
        child(&self.prefix, &[&["jobs", job.as_str()], parts].concat())
    }

    fn checkpoint_key(&self, job: &JobId, id: CheckpointId) -> Path {
        self.job_key(job, &["checkpoints", &format!("chk-{:020}.rec", id.0)])
    }

    fn index_key(&self, job: &JobId, id: CheckpointId) -> Path {
        self.job_key(job, &["savepoints", &format!("sp-{:020}.rec", id.0)])
    }

    /// Reads and decodes the object at `key`; None if it does not exist.
    async fn read_record<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &Path,
    ) -> StoreResult<Option<T>> {
        let url = self.url_of(key);
        let bytes = match self.store.get(key).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(|e| remote("reading", &url, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote("reading", &url, e)),
        };
        codec::decode(kind, &bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupted {
                path: url,
                detail: e.to_string(),
            })
    }

    /// Writes a record, replacing an older version (one PUT: whole or not at all).
    async fn write_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &Path,
        value: &T,
    ) -> StoreResult<()> {
        let bytes = encode_record(kind, value, key)?;
        self.put(key, bytes, PutMode::Overwrite).await
    }

    async fn put(&self, key: &Path, bytes: Vec<u8>, mode: PutMode) -> StoreResult<()> {
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.store
            .put_opts(key, PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(|e| remote("writing", &self.url_of(key), e))
    }

    async fn delete(&self, key: &Path) -> StoreResult<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote("deleting", &self.url_of(key), e)),
        }
    }

    /// Every object below `prefix` (recursively).
    async fn list_keys(&self, prefix: &Path) -> StoreResult<Vec<Path>> {
        self.store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| remote("listing", &self.url_of(prefix), e))
    }

    /// Deletes `keys` (in batches where the backend can).
    async fn delete_all(&self, keys: Vec<Path>) -> StoreResult<()> {
        let locations = futures::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote("deleting", &self.url(), e)),
            }
        }
        Ok(())
    }

    /// Record objects directly in `dir` named `<prefix><digits>.rec`, ascending (the ids
    /// are zero padded); anything else is skipped.
    async fn record_keys(&self, dir: &Path, prefix: &str) -> StoreResult<Vec<Path>> {
        let mut keys: Vec<Path> = self
            .list_keys(dir)
            .await?
            .into_iter()
            .filter(|key| {
                key.prefix_match(dir).is_some_and(|rest| {
                    let rest: Vec<_> = rest.collect();
                    rest.len() == 1
                        && rest[0]
                            .as_ref()
                            .strip_prefix(prefix)
                            .and_then(|r| r.strip_suffix(".rec"))
                            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .collect();
        keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        Ok(keys)
    }

    /// Reads the records at `keys`, a few at a time, in order.
    async fn read_records<T: DeserializeOwned + Send>(
        &self,
        kind: RecordKind,
        keys: Vec<Path>,
    ) -> StoreResult<Vec<T>> {
        let results: Vec<StoreResult<Option<T>>> = futures::stream::iter(keys)
            .map(|key| async move { self.read_record(kind, &key).await })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut records = Vec::new();
        for result in results {
            // A record deleted between the listing and the read is simply gone.
            if let Some(record) = result? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The job's savepoint index entries, ascending by id.
    async fn index_entries(&self, job: &JobId) -> StoreResult<Vec<IndexEntry>> {
        let dir = self.job_key(job, &["savepoints"]);
        let keys = self.record_keys(&dir, "sp-").await?;
        self.read_records(RecordKind::SavepointIndex, keys).await
    }

    /// The directory key of a savepoint path (its directory or its `_metadata`), and the
    /// job and id its name carries.
    fn savepoint_dir(&self, path: &str) -> StoreResult<(Path, JobId, CheckpointId)> {
        let mut key = self.key_of(path)?;
        if key.filename() == Some(METADATA_OBJECT) {
            let parts: Vec<_> = key.parts().collect();
            key = Path::from_iter(parts[..parts.len() - 1].iter().cloned());
        }
        let (job, id) = key
            .filename()
            .and_then(parse_savepoint_dir_name)
            .ok_or_else(|| StoreError::InvalidLocation {
                location: path.to_string(),
                detail: "not a savepoint directory (savepoint-<job>-<id>)".to_string(),
            })?;
        Ok((key, job, id))
    }

    /// Marks the index entry of savepoint `id` retired; whether there was an entry. An
    /// unreadable entry counts as one (disposal replaces it).
    async fn retire_entry(&self, job: &JobId, id: CheckpointId) -> StoreResult<bool> {
        let index = self.index_key(job, id);
        match self
            .read_record::<IndexEntry>(RecordKind::SavepointIndex, &index)
            .await
        {
            Ok(Some(mut entry)) => {
                if !entry.retired {
                    entry.retired = true;
                    self.write_record(RecordKind::SavepointIndex, &index, &entry)
                        .await?;
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(StoreError::Corrupted { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    /// Disposal in crash-safe order: mark the index entry retired, delete the metadata (it
    /// is no longer a savepoint), delete the rest of the directory, drop the index entry.
    async fn dispose_savepoint(
        &self,
        dir: &Path,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<bool> {
        let index = self.index_key(job, id);
        let mut existed = self.retire_entry(job, id).await?;
        let objects = self.list_keys(dir).await?;
        existed |= !objects.is_empty();
        let metadata = dir.clone().join(METADATA_OBJECT);
        if objects.contains(&metadata) {
            self.delete(&metadata).await?;
        }
        let rest: Vec<Path> = objects.into_iter().filter(|k| k != &metadata).collect();
        self.delete_all(rest).await?;
        self.delete(&index).await?;
        Ok(existed)
    }
}

/// A savepoint index object: the record, and whether the savepoint is being disposed of
/// (set before any object is deleted, so an interrupted disposal is finished later).
#[derive(Serialize, Deserialize)]
struct IndexEntry {
    record: SavepointRecord,
    retired: bool,
}

#[async_trait]
impl CompletedCheckpointStore for BucketStore {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        let key = self.checkpoint_key(&snapshot.job_id, snapshot.checkpoint_id);
        self.write_record(RecordKind::Checkpoint, &key, snapshot)
            .await
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.delete(&self.checkpoint_key(job, id)).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        let dir = self.job_key(job, &["checkpoints"]);
        let keys = self.record_keys(&dir, "chk-").await?;
        let urls: Vec<String> = keys.iter().map(|k| self.url_of(k)).collect();
        let snapshots: Vec<CompletedSnapshot> =
            self.read_records(RecordKind::Checkpoint, keys).await?;
        for (snapshot, url) in snapshots.iter().zip(urls) {
            if &snapshot.job_id != job {
                return Err(StoreError::Corrupted {
                    path: url,
                    detail: format!("holds a checkpoint of job {}", snapshot.job_id),
                });
            }
        }
        Ok(snapshots)
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        let keys = self.list_keys(&self.job_key(job, &["checkpoints"])).await?;
        self.delete_all(keys).await
    }
}

#[async_trait]
impl SavepointStore for BucketStore {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        let target = self.key_of(target_dir)?;
        Ok(self.url_of(&target.join(savepoint_dir_name(job, id).as_str())))
    }

    /// The URL with its key normalized, as a path whose first components are the scheme
    /// and the bucket, so that roots compare by whole segments.
    fn resolve(&self, path: &str) -> StoreResult<std::path::PathBuf> {
        let url = parse_url(path)?;
        Ok(std::path::PathBuf::from(join_url(&url.origin, &url.key)))
    }

    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        let path = self.savepoint_path(target_dir, &snapshot.job_id, snapshot.checkpoint_id)?;
        let metadata = self.key_of(&path)?.join(METADATA_OBJECT);
        let bytes = encode_record(RecordKind::Savepoint, snapshot, &path)?;
        self.put(&metadata, bytes, PutMode::Create).await?;
        Ok(path)
    }

    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        check_record_path(record)?;
        let entry = IndexEntry {
            record: record.clone(),
            retired: false,
        };
        let index = self.index_key(&record.job_id, record.checkpoint_id);
        self.write_record(RecordKind::SavepointIndex, &index, &entry)
            .await
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        let mut key = self.key_of(path)?;
        if key.filename() != Some(METADATA_OBJECT) {
            key = key.join(METADATA_OBJECT);
        }
        self.read_record(RecordKind::Savepoint, &key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("savepoint metadata {}", self.url_of(&key)),
            })
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        // The index entry is written after the metadata, so it only names savepoints
        // that were complete.
        Ok(self
            .index_entries(job)
            .await?
            .into_iter()
            .filter(|entry| !entry.retired)
            .map(|entry| entry.record)
            .collect())
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        let (dir, job, id) = self.savepoint_dir(path)?;
        self.dispose_savepoint(&dir, &job, id).await
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        let (_, job, id) = self.savepoint_dir(path)?;
        self.retire_entry(&job, id).await
    }

    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        let mut resumed = 0;
        for entry in self.index_entries(job).await? {
            if entry.retired {
                let dir = self.key_of(&entry.record.path)?;
                self.dispose_savepoint(&dir, job, entry.record.checkpoint_id)
                    .await?;
                resumed += 1;
            }
        }
        Ok(resumed)
    }
}

#[async_trait]
impl OwnedStateStore for BucketStore {
    fn checkpoint_location(&self, job: &JobId, id: CheckpointId) -> String {
        let key = child(
            &self.prefix,
            &["checkpoints", job.as_str(), &format!("chk-{}", id.0)],
        );
        self.url_of(&key)
    }

    async fn discard(&self, location: &str, handles: &[StateHandle]) -> StoreResult<u64> {
        let location = self.key_of(location)?;
        let referenced: HashSet<Path> = handles
            .iter()
            .filter_map(|h| match &h.data {
                StateData::Reference { uri, .. } => self.key_of(uri).ok(),
                StateData::Inline(_) => None,
            })
            .filter(|key| key != &location && key.prefix_matches(&location))
            .collect();
        if referenced.is_empty() {
            return Ok(0);
        }
        let present = self.list_keys(&location).await?;
        if present.contains(&location.clone().join(METADATA_OBJECT)) {
            // A completed savepoint: its data is never the coordinator's to delete here.
            return Ok(0);
        }
        let doomed: Vec<Path> = present
            .into_iter()
            .filter(|key| referenced.contains(key))
            .collect();
        let deleted = doomed.len() as u64;
        self.delete_all(doomed).await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::SavepointTrigger;
    use crate::coordinator::model::{SnapshotKind, SubtaskState, VertexState};
    use bytes::Bytes;
    use object_store::memory::InMemory;

    const URL: &str = "mem://bucket/team/prod";

    fn job() -> JobId {
        JobId::new("job-a")
    }

    fn store() -> BucketStore {
        BucketStore::new(Arc::new(InMemory::new()), URL).unwrap()
    }

    fn snapshot(id: u64, kind: SnapshotKind) -> CompletedSnapshot {
        CompletedSnapshot {
            job_id: job(),
            checkpoint_id: CheckpointId(id),
            kind,
            trigger_timestamp_ms: 10,
            completion_timestamp_ms: 25,
            claimed_path: None,
            vertices: vec![VertexState {
                vertex_id: "src".to_string(),
                parallelism: 1,
                max_parallelism: 128,
                subtasks: vec![SubtaskState {
                    subtask_index: 0,
                    handles: vec![StateHandle {
                        name: "offsets".to_string(),
                        data: StateData::Inline(Bytes::from_static(b"offset=42")),
                        key_groups: None,
                    }],
                }],
            }],
        }
    }

    fn reference(uri: &str) -> StateHandle {
        StateHandle {
            name: "s".to_string(),
            data: StateData::Reference {
                uri: uri.to_string(),
                size_bytes: 1,
            },
            key_groups: None,
        }
    }

    async fn put_object(store: &BucketStore, url: &str, bytes: &'static [u8]) {
        let key = store.key_of(url).unwrap();
        store
            .object_store()
            .put(&key, PutPayload::from_static(bytes))
            .await
            .unwrap();
    }

    async fn exists(store: &BucketStore, url: &str) -> bool {
        let key = store.key_of(url).unwrap();
        store.object_store().head(&key).await.is_ok()
    }

    #[test]
    fn urls_are_split_and_bad_ones_refused() {
        let parsed = parse_url("s3://bucket/a/b/").unwrap();
        assert_eq!(parsed.origin, "s3://bucket");
        assert_eq!(parsed.key.as_ref(), "a/b");
        assert_eq!(parse_url("s3://bucket").unwrap().key, Path::ROOT);
        for bad in [
            "",
            "/local/dir",
            "bucket/key",
            "s3:///key",
            "s3://bucket/a/../b",
            "s3://bucket/a/./b",
            "s3://bucket/a//b",
            "s3://bucket//a",
            "s 3://bucket/a",
        ] {
            assert!(
                matches!(parse_url(bad), Err(StoreError::InvalidLocation { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn savepoint_paths_stay_in_the_bucket() {
        let store = store();
        assert_eq!(store.url(), URL);
        assert_eq!(
            store
                .savepoint_path(&store.default_savepoint_dir(), &job(), CheckpointId(7))
                .unwrap(),
            format!("{URL}/savepoints/savepoint-job-a-7")
        );
        for bad in ["/tmp/savepoints", "mem://other/savepoints", "s3://bucket/x"] {
            assert!(
                matches!(
                    store.savepoint_path(bad, &job(), CheckpointId(1)),
                    Err(StoreError::InvalidLocation { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let resolved = store.resolve(&format!("{URL}/savepoints/x/")).unwrap();
        assert!(resolved.starts_with(store.resolve(URL).unwrap()));
        assert!(!resolved.starts_with(store.resolve("mem://bucket/team/pro").unwrap()));
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_a_corrupted_one_is_reported() {
        let store = store();
        for id in [3, 1, 2, 10] {
            store
                .add(&snapshot(id, SnapshotKind::Checkpoint))
                .await
                .unwrap();
        }
        CompletedCheckpointStore::remove(&store, &job(), CheckpointId(2))
            .await
            .unwrap();
        let ids: Vec<u64> = CompletedCheckpointStore::load_all(&store, &job())
            .await
            .unwrap()
            .iter()
            .map(|s| s.checkpoint_id.0)
            .collect();
        assert_eq!(ids, vec![1, 3, 10]);

        let key = store.checkpoint_key(&job(), CheckpointId(3));
        let mut bytes = store
            .object_store()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        store.object_store().put(&key, bytes.into()).await.unwrap();
        let error = CompletedCheckpointStore::load_all(&store, &job())
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Corrupted { .. }), "{error}");

        CompletedCheckpointStore::remove_all(&store, &job())
            .await
            .unwrap();
        assert!(
            CompletedCheckpointStore::load_all(&store, &job())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_savepoint_is_published_once_listed_read_and_disposed() {
        let store = store();
        let sp = snapshot(7, SnapshotKind::Savepoint);
        let target = store.default_savepoint_dir();
        let path = store
            .write(&target, &sp, SavepointTrigger::Manual)
            .await
            .unwrap();
        assert_eq!(path, format!("{target}/savepoint-job-a-7"));
        assert_eq!(store.read(&path).await.unwrap(), sp);
        assert_eq!(store.read(&format!("{path}/_metadata")).await.unwrap(), sp);
        let listed = store.list(&job()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].path.as_str(), listed[0].checkpoint_id),
            (path.as_str(), CheckpointId(7))
        );

        let again = store
            .write(&target, &sp, SavepointTrigger::Manual)
            .await
            .unwrap_err();
        assert!(
            matches!(again, StoreError::InvalidLocation { .. }),
            "{again}"
        );

        put_object(&store, &format!("{path}/state-0"), b"task state").await;
        assert!(store.dispose(&path).await.unwrap());
        assert!(!exists(&store, &format!("{path}/state-0")).await);
        assert!(!exists(&store, &format!("{path}/_metadata")).await);
        assert!(store.list(&job()).await.unwrap().is_empty());
        assert!(
            !store.dispose(&path).await.unwrap(),
            "nothing left the second time"
        );
        assert!(matches!(
            store.read(&path).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store
                .dispose(&format!("{URL}/savepoints/not-a-savepoint"))
                .await,
            Err(StoreError::InvalidLocation { .. })
        ));
    }

    #[tokio::test]
    async fn a_disposal_interrupted_by_a_crash_is_finished_on_resume() {
        let store = store();
        let path = store
            .write(
                &store.default_savepoint_dir(),
                &snapshot(3, SnapshotKind::Savepoint),
                SavepointTrigger::Periodic,
            )
            .await
            .unwrap();
        put_object(&store, &format!("{path}/state-0"), b"x").await;
        // The crash came right after the index entry was marked retired.
        let index = store.index_key(&job(), CheckpointId(3));
        let mut entry: IndexEntry = store
            .read_record(RecordKind::SavepointIndex, &index)
            .await
            .unwrap()
            .unwrap();
        entry.retired = true;
        store
            .write_record(RecordKind::SavepointIndex, &index, &entry)
            .await
            .unwrap();

        assert!(
            store.list(&job()).await.unwrap().is_empty(),
            "not listed any more"
        );
        assert!(exists(&store, &format!("{path}/state-0")).await);
        assert_eq!(store.resume_disposals(&job()).await.unwrap(), 1);
        assert!(
            !exists(&store, &format!("{path}/state-0")).await,
            "no orphaned objects"
        );
        assert!(!exists(&store, &format!("{path}/_metadata")).await);
        assert!(store.object_store().head(&index).await.is_err());
        assert_eq!(store.resume_disposals(&job()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn truncated_savepoint_metadata_is_corrupted_not_missing() {
        let store = store();
        let path = store
            .write(
                &store.default_savepoint_dir(),
                &snapshot(1, SnapshotKind::Savepoint),
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        let key = store.key_of(&path).unwrap().join(METADATA_OBJECT);
        let bytes = store
            .object_store()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        store
            .object_store()
            .put(&key, bytes.slice(..bytes.len() / 2).into())
            .await
            .unwrap();
        assert!(matches!(
            store.read(&path).await,
            Err(StoreError::Corrupted { .. })
        ));
    }

    #[tokio::test]
    async fn discard_deletes_only_owned_references() {
        let store = store();
        let location = store.checkpoint_location(&job(), CheckpointId(4));
        assert_eq!(location, format!("{URL}/checkpoints/job-a/chk-4"));
        let owned = format!("{location}/state-1");
        let unreferenced = format!("{location}/state-2");
        let outside = format!("{URL}/elsewhere");
        let sibling = format!("{URL}/checkpoints/job-a/chk-40/state-1");
        for url in [&owned, &unreferenced, &outside, &sibling] {
            put_object(&store, url, b"x").await;
        }
        let handles = vec![
            reference(&owned),
            reference(&outside),
            reference(&sibling),
            reference("/tmp/x"),
        ];
        assert_eq!(store.discard(&location, &handles).await.unwrap(), 1);
        assert!(!exists(&store, &owned).await);
        for kept in [&unreferenced, &outside, &sibling] {
            assert!(
                exists(&store, kept).await,
                "{kept} is not this checkpoint's"
            );
        }
    }

    #[tokio::test]
    async fn discard_leaves_a_completed_savepoint_alone() {
        let store = store();
        let path = store
            .write(
                &store.default_savepoint_dir(),
                &snapshot(2, SnapshotKind::Savepoint),
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        let state = format!("{path}/state-0");
        put_object(&store, &state, b"x").await;
        assert_eq!(store.discard(&path, &[reference(&state)]).await.unwrap(), 0);
        assert!(exists(&store, &state).await);
    }
}
