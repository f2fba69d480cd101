//! Local filesystem backend, the embedded default.
//!
//! Layout under the data directory:
//! ```text
//! jobs/<job>/job.rec                       registration (spec, status, fencing token)
//! jobs/<job>/ids.rec                       next free checkpoint id
//! jobs/<job>/checkpoints/chk-<id>.rec      retained completed checkpoints
//! jobs/<job>/savepoints.log                savepoint index (path, times, size, trigger)
//! jobs/<job>/operations.log                savepoint operations
//! checkpoints/<job>/chk-<id>/              where tasks write checkpoint state (owned)
//! ```
//! Savepoints live outside the data directory, in `<target>/savepoint-<job>-<id>/_metadata`.
//!
//! Every record file is written atomically: a temp file in the same directory, fsync,
//! rename (or hard link when overwriting must be refused), fsync of the directory. The
//! savepoint index and the operations, which a savepoint writes on its way, are appended
//! to a log per job instead ([`record_log`]): one write and one `fdatasync` each. Records
//! carry the versioned, checksummed envelope of [`codec`](super::codec). Blocking file I/O
//! runs on tokio's blocking pool so it never stalls the coordinator's tasks.
//!
//! Data directories of earlier versions kept a file per index entry
//! (`jobs/<job>/savepoints/sp-<id>.rec`) and per operation
//! (`jobs/<job>/operations/<operation>.rec`); opening the store moves them into the logs.

mod record_log;

use super::codec::{self, RecordKind};
use super::{
    CompletedCheckpointStore, IdCounterStore, JobRecord, JobStore, LoadedJobs, OperationStore,
    OwnedStateStore, SavepointRecord, SavepointStore, StoreError, StoreResult, UnreadableJob,
    check_record_path, encode_record, parse_savepoint_dir_name, savepoint_dir_name,
};
use crate::coordinator::model::{
    CheckpointId, CompletedSnapshot, JobId, SavepointOperation, StateData, StateHandle,
    validate_name,
};
use async_trait::async_trait;
use record_log::{Keyed, LogEntry, RecordLogs};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The name of a savepoint's metadata file inside its directory (as in Flink).
pub const METADATA_FILE: &str = "_metadata";

/// See the module documentation.
#[derive(Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Serializes read-modify-write of ID counters within this process.
    ids_lock: Mutex<()>,
    temp_counter: AtomicU64,
    /// The savepoint index and operation logs of every job.
    logs: RecordLogs,
}

impl FsStore {
    /// Opens (creating it if needed) the data directory `root`.
    pub fn open(root: PathBuf) -> StoreResult<FsStore> {
        fs::create_dir_all(&root).map_err(|e| StoreError::io("creating", root.display(), e))?;
        let root =
            fs::canonicalize(&root).map_err(|e| StoreError::io("resolving", root.display(), e))?;
        for dir in ["jobs", "checkpoints"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| StoreError::io("creating", path.display(), e))?;
        }
        let removed = remove_temp_files(&root.join("jobs"));
        if removed > 0 {
            tracing::info!(
                removed,
                "removed temporary files of writes a crash cut short"
            );
        }
        let inner = Inner {
            root,
            ids_lock: Mutex::new(()),
            temp_counter: AtomicU64::new(0),
            logs: RecordLogs::default(),
        };
        inner.move_record_files_into_logs()?;
        Ok(FsStore {
            inner: Arc::new(inner),
        })
    }

    /// The data directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs blocking file I/O on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store worker failed: {e}")))?
    }
}

impl Inner {
    fn job_dir(&self, job: &JobId) -> PathBuf {
        self.root.join("jobs").join(job.as_str())
    }

    fn checkpoint_record(&self, job: &JobId, id: CheckpointId) -> PathBuf {
        self.job_dir(job)
            .join("checkpoints")
            .join(format!("chk-{:020}.rec", id.0))
    }

    fn savepoint_index(&self, job: &JobId) -> PathBuf {
        self.job_dir(job).join("savepoints.log")
    }

    fn operations_log(&self, job: &JobId) -> PathBuf {
        self.job_dir(job).join("operations.log")
    }

    /// Appends an index entry to the job's savepoint index.
    fn put_index_entry(&self, entry: IndexEntry) -> StoreResult<()> {
        let log = self.savepoint_index(&entry.record.job_id);
        self.logs
            .append(&log, RecordKind::SavepointIndexLog, &LogEntry::Put(entry))
    }

    /// Appends an operation to its job's operation log.
    fn put_operation(&self, operation: SavepointOperation) -> StoreResult<()> {
        let log = self.operations_log(&operation.job_id);
        self.logs
            .append(&log, RecordKind::OperationLog, &LogEntry::Put(operation))
    }

    /// Moves the index entries and operations that earlier versions kept in a file each
    /// into the logs.
    fn move_record_files_into_logs(&self) -> StoreResult<()> {
        let jobs_dir = self.root.join("jobs");
        let jobs = fs::read_dir(&jobs_dir)
            .map_err(|e| StoreError::io("listing", jobs_dir.display(), e))?;
        let job_dirs = jobs
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.path());
        for job_dir in job_dirs {
            self.move_into_log(
                &job_dir.join("savepoints"),
                "sp-",
                RecordKind::SavepointIndex,
                |entry| self.put_index_entry(entry),
            )?;
            self.move_into_log(
                &job_dir.join("operations"),
                "",
                RecordKind::Operation,
                |operation| self.put_operation(operation),
            )?;
        }
        Ok(())
    }

    /// Moves the records of `kind` in the files `dir/<prefix>*.rec` with `put`: each is
    /// appended first and its file deleted after, so a crash in between only repeats
    /// the move. A file that does not decode stays where it is; so does `dir` then.
    fn move_into_log<T: DeserializeOwned>(
        &self,
        dir: &Path,
        prefix: &str,
        kind: RecordKind,
        put: impl Fn(T) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let files = match fs::read_dir(dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("listing", dir.display(), e)),
        };
        let mut moved = Vec::new();
        for file in files {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            if !name.starts_with(prefix) || !name.ends_with(".rec") {
                continue;
            }
            match read_record::<T>(kind, &file) {
                Ok(Some(record)) => {
                    put(record)?;
                    moved.push(file);
                }
                Ok(None) => {}
                Err(error) => tracing::error!(
                    file = %file.display(),
                    "a record of an earlier version does not decode and stays where it is: {error}"
                ),
            }
        }
        for file in &moved {
            remove_file_if_exists(file)?;
        }
        if !moved.is_empty() {
            tracing::info!(count = moved.len(), dir = %dir.display(), "moved records of an earlier version into the job's log");
        }
        if fs::remove_dir(dir).is_ok() {
            sync_parent(dir)?;
        }
        Ok(())
    }

    fn checkpoint_dir(&self, job: &JobId, id: CheckpointId) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(job.as_str())
            .join(format!("chk-{}", id.0))
    }

    fn temp_path(&self, target: &Path) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
    }

    /// Writes `bytes` to `target` atomically and durably, replacing an older version.
    fn write_atomic(&self, target: &Path, bytes: &[u8]) -> StoreResult<()> {
        let temp = self.write_temp(target, bytes)?;
        fs::rename(&temp, target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            StoreError::io("renaming into", target.display(), e)
        })?;
        sync_parent(target)
    }

    /// Writes `bytes` to a new, synced temp file beside `target`.
    fn write_temp(&self, target: &Path, bytes: &[u8]) -> StoreResult<PathBuf> {
        let dir = target.parent().expect("records live in a directory");
        fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir.display(), e))?;
        let temp = self.temp_path(target);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            });
        match written {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(StoreError::io("writing", temp.display(), e))
            }
        }
    }

    /// Links the synced temp file `temp` as `target`, refusing to replace an existing
    /// file, and removes the temp name; durable once the directory is synced.
    fn link_new(&self, temp: &Path, target: &Path) -> StoreResult<()> {
        let linked = fs::hard_link(temp, target);
        let _ = fs::remove_file(temp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(StoreError::InvalidLocation {
                location: target.display().to_string(),
                detail: "already exists; refusing to overwrite it".to_string(),
            }),
            Err(e) => Err(StoreError::io("publishing", target.display(), e)),
        }
    }
}

/// A savepoint index file: the record, and whether the savepoint is being disposed of
/// (set before any file is deleted, so an interrupted disposal is finished later).
#[derive(Serialize, Deserialize)]
struct IndexEntry {
    record: SavepointRecord,
    retired: bool,
}

/// Deletes the temp files (`.<name>.tmp-<pid>-<n>`) that writes interrupted by a crash
/// left in the record directories below `dir`; nothing reads them, they only take space.
/// Returns how many were removed; errors are skipped (the files are harmless).
fn remove_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => removed += remove_temp_files(&path),
            Ok(_)
                if name.starts_with('.')
                    && name.contains(".tmp-")
                    && fs::remove_file(&path).is_ok() =>
            {
                removed += 1;
            }
            _ => {}
        }
    }
    removed
}

/// Makes the new directory `dir` itself survive a crash, not just its content.
fn sync_new_dir(dir: &Path) -> StoreResult<()> {
    match dir.parent() {
        Some(parent) => sync_parent(dir).or_else(|_| sync_parent(parent)),
        None => Ok(()),
    }
}

/// Fsyncs the directory holding `path`, so a rename or link in it is durable.
fn sync_parent(path: &Path) -> StoreResult<()> {
    let dir = path.parent().expect("records live in a directory");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing directory", dir.display(), e))
}

/// Reads and decodes a record; None if the file does not exist.
fn read_record<T: DeserializeOwned>(kind: RecordKind, path: &Path) -> StoreResult<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading", path.display(), e)),
    };
    codec::decode(kind, &bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupted {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

fn write_record<T: Serialize>(
    inner: &Inner,
    kind: RecordKind,
    path: &Path,
    value: &T,
) -> StoreResult<()> {
    inner.write_atomic(path, &encode_record(kind, value, path.display())?)
}

fn remove_file_if_exists(path: &Path) -> StoreResult<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("removing", path.display(), e)),
    }
}

/// Record files in `dir` named `<prefix><digits>.rec`, ascending (the ids are zero padded).
/// Temp files and anything else are skipped.
fn record_files(dir: &Path, prefix: &str) -> StoreResult<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("listing", dir.display(), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", dir.display(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_record = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".rec"))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        if is_record {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// A directory argument as an absolute, normalized path without `..`.
fn absolute_dir(location: &str) -> StoreResult<PathBuf> {
    super::normalize_absolute(location)
}

#[async_trait]
impl IdCounterStore for FsStore {
    async fn reserve(&self, job: &JobId, count: u64) -> StoreResult<CheckpointId> {
        let job = job.clone();
        self.blocking(move |inner| {
            let _guard = inner.ids_lock.lock().unwrap_or_else(|e| e.into_inner());
            let path = inner.job_dir(&job).join("ids.rec");
            let next: u64 = read_record(RecordKind::IdCounter, &path)?.unwrap_or(1);
            write_record(inner, RecordKind::IdCounter, &path, &(next + count))?;
            Ok(CheckpointId(next))
        })
        .await
    }

    async fn advance_past(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        let job = job.clone();
        self.blocking(move |inner| {
            let _guard = inner.ids_lock.lock().unwrap_or_else(|e| e.into_inner());
            let path = inner.job_dir(&job).join("ids.rec");
            let next: u64 = read_record(RecordKind::IdCounter, &path)?.unwrap_or(1);
            if next <= id.0 {
                write_record(inner, RecordKind::IdCounter, &path, &(id.0 + 1))?;
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        let job = job.clone();
        self.blocking(move |inner| {
            let _guard = inner.ids_lock.lock().unwrap_or_else(|e| e.into_inner());
            remove_file_if_exists(&inner.job_dir(&job).join("ids.rec"))
        })
        .await
    }
}

#[async_trait]
impl JobStore for FsStore {
    async fn save(&self, record: &JobRecord) -> StoreResult<()> {
        let record = record.clone();
        self.blocking(move |inner| {
            let path = inner.job_dir(&record.spec.job_id).join("job.rec");
            write_record(inner, RecordKind::Job, &path, &record)
        })
        .await
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        let job = job.clone();
        self.blocking(move |inner| remove_file_if_exists(&inner.job_dir(&job).join("job.rec")))
            .await
    }

    async fn load_all(&self) -> StoreResult<LoadedJobs> {
        self.blocking(|inner| {
            let jobs_dir = inner.root.join("jobs");
            let entries = fs::read_dir(&jobs_dir)
                .map_err(|e| StoreError::io("listing", jobs_dir.display(), e))?;
            let mut loaded = LoadedJobs::default();
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("listing", jobs_dir.display(), e))?;
                let job_id = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path().join("job.rec");
                match read_record::<JobRecord>(RecordKind::Job, &path) {
                    Ok(None) => {}
                    Ok(Some(record)) if record.spec.job_id.as_str() == job_id => {
                        loaded.records.push(record)
                    }
                    Ok(Some(record)) => loaded.unreadable.push(UnreadableJob {
                        job_id,
                        error: StoreError::Corrupted {
                            path: path.display().to_string(),
                            detail: format!(
                                "holds job {} but lies in the directory of another job",
                                record.spec.job_id
                            ),
                        },
                    }),
                    Err(error) => loaded.unreadable.push(UnreadableJob { job_id, error }),
                }
            }
            loaded
                .records
                .sort_by(|a, b| a.spec.job_id.cmp(&b.spec.job_id));
            Ok(loaded)
        })
        .await
    }
}

#[async_trait]
impl CompletedCheckpointStore for FsStore {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        let path = self
            .inner
            .checkpoint_record(&snapshot.job_id, snapshot.checkpoint_id);
        // Encoded here rather than copying the snapshot for the blocking pool.
        let bytes = encode_record(RecordKind::Checkpoint, snapshot, path.display())?;
        self.blocking(move |inner| inner.write_atomic(&path, &bytes))
            .await
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        let job = job.clone();
        self.blocking(move |inner| remove_file_if_exists(&inner.checkpoint_record(&job, id)))
            .await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        let job = job.clone();
        self.blocking(move |inner| {
            let dir = inner.job_dir(&job).join("checkpoints");
            let mut snapshots = Vec::new();
            for path in record_files(&dir, "chk-")? {
                let snapshot: CompletedSnapshot = read_record(RecordKind::Checkpoint, &path)?
                    .ok_or_else(|| StoreError::NotFound {
                        what: format!("checkpoint record {}", path.display()),
                    })?;
                if snapshot.job_id != job {
                    return Err(StoreError::Corrupted {
                        path: path.display().to_string(),
                        detail: format!("holds a checkpoint of job {}", snapshot.job_id),
                    });
                }
                snapshots.push(snapshot);
            }
            Ok(snapshots)
        })
        .await
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        let job = job.clone();
        self.blocking(move |inner| {
            let dir = inner.job_dir(&job).join("checkpoints");
            match fs::remove_dir_all(&dir) {
                Ok(()) => sync_parent(&dir),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io("removing", dir.display(), e)),
            }
        })
        .await
    }
}

#[async_trait]
impl SavepointStore for FsStore {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        let target = absolute_dir(target_dir)?;
        Ok(target
            .join(savepoint_dir_name(job, id))
            .to_string_lossy()
            .into_owned())
    }

    /// Follows symbolic links in the part of `path` that exists, so a link cannot carry
    /// a path out of the savepoint roots.
    fn resolve(&self, path: &str) -> StoreResult<PathBuf> {
        let normalized = absolute_dir(path)?;
        let mut existing = normalized.as_path();
        let mut rest = Vec::new();
        loop {
            match fs::canonicalize(existing) {
                Ok(resolved) => {
                    return Ok(rest.iter().rev().fold(resolved, |p, c| p.join(c)));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let (Some(parent), Some(name)) = (existing.parent(), existing.file_name())
                    else {
                        return Ok(normalized);
                    };
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                Err(e) => return Err(StoreError::io("resolving", existing.display(), e)),
            }
        }
    }

    /// Creates the directory for the tasks to write into. Not synced: the metadata
    /// write syncs the new directory's entry after the metadata's, by which time the
    /// filesystem has often written it already (an fsync of a new file writes the new
    /// directories above it on ext4), so that sync costs little where this one would
    /// cost a flush of its own while the tasks snapshot.
    async fn prepare(&self, path: &str) -> StoreResult<()> {
        let dir = absolute_dir(path)?;
        self.blocking(move |_| {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", dir.display(), e))
        })
        .await
    }

    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        let path = self.savepoint_path(target_dir, &snapshot.job_id, snapshot.checkpoint_id)?;
        // Encoded first, so a snapshot that does not encode leaves no directory behind
        // (and the snapshot need not be copied for the blocking pool).
        let bytes = encode_record(
            RecordKind::Savepoint,
            snapshot,
            format!("{path}/{METADATA_FILE}"),
        )?;
        self.blocking(move |inner| {
            let dir = PathBuf::from(&path);
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", dir.display(), e))?;
            let metadata = dir.join(METADATA_FILE);
            let temp = inner.write_temp(&metadata, &bytes)?;
            let published = inner
                .link_new(&temp, &metadata)
                .and_then(|()| sync_parent(&metadata))
                .and_then(|()| sync_new_dir(&dir));
            // The metadata is linked, not renamed: its temp name goes in every case.
            let _ = fs::remove_file(&temp);
            published.map(|()| path)
        })
        .await
    }

    /// Appends the entry to the job's index. `list` skips an entry whose metadata is
    /// missing, in case a filesystem lost the metadata's link but kept the entry.
    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        check_record_path(record)?;
        let entry = IndexEntry {
            record: record.clone(),
            retired: false,
        };
        self.blocking(move |inner| inner.put_index_entry(entry))
            .await
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        let mut location = absolute_dir(path)?;
        if location.file_name().is_some_and(|n| n == METADATA_FILE) {
            location.pop();
        }
        self.blocking(move |_| {
            let metadata = location.join(METADATA_FILE);
            read_record(RecordKind::Savepoint, &metadata)?.ok_or_else(|| StoreError::NotFound {
                what: format!("savepoint metadata {}", metadata.display()),
            })
        })
        .await
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        let job = job.clone();
        self.blocking(move |inner| {
            // The index entry is published after the metadata, so it only names
            // savepoints that were complete, unless a crash lost the metadata's link
            // before its directory was synced (see `write_metadata`).
            Ok(index_entries(inner, &job)?
                .into_iter()
                .filter(|entry| !entry.retired)
                .filter(|entry| Path::new(&entry.record.path).join(METADATA_FILE).exists())
                .map(|entry| entry.record)
                .collect())
        })
        .await
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        let (dir, job, id) = savepoint_dir_of(path)?;
        self.blocking(move |inner| dispose_savepoint(inner, &job, id, &dir))
            .await
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        let (_, job, id) = savepoint_dir_of(path)?;
        self.blocking(move |inner| retire_savepoint(inner, &job, id))
            .await
    }

    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        let job = job.clone();
        self.blocking(move |inner| {
            let mut resumed = 0;
            for entry in index_entries(inner, &job)? {
                if entry.retired {
                    let dir = PathBuf::from(&entry.record.path);
                    dispose_savepoint(inner, &job, entry.record.checkpoint_id, &dir)?;
                    resumed += 1;
                }
            }
            Ok(resumed)
        })
        .await
    }
}

/// The job's savepoint index entries, ascending by id.
fn index_entries(inner: &Inner, job: &JobId) -> StoreResult<Vec<IndexEntry>> {
    let mut entries: Vec<IndexEntry> = inner
        .logs
        .load(&inner.savepoint_index(job), RecordKind::SavepointIndexLog)?
        .into_values()
        .collect();
    entries.sort_by_key(|entry| entry.record.checkpoint_id);
    Ok(entries)
}

/// The savepoint directory `path` names (it or its `_metadata` file), with its job and id.
fn savepoint_dir_of(path: &str) -> StoreResult<(PathBuf, JobId, CheckpointId)> {
    let mut dir = absolute_dir(path)?;
    if dir.file_name().is_some_and(|n| n == METADATA_FILE) {
        dir.pop();
    }
    let (job, id) = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_savepoint_dir_name)
        .ok_or_else(|| StoreError::InvalidLocation {
            location: path.to_string(),
            detail: "not a savepoint directory (savepoint-<job>-<id>)".to_string(),
        })?;
    Ok((dir, job, id))
}

/// Marks the index entry of savepoint `id` retired; whether there was an entry.
fn retire_savepoint(inner: &Inner, job: &JobId, id: CheckpointId) -> StoreResult<bool> {
    let entry = inner
        .logs
        .load::<IndexEntry>(&inner.savepoint_index(job), RecordKind::SavepointIndexLog)?
        .remove(&index_key(id));
    match entry {
        Some(mut entry) => {
            if !entry.retired {
                entry.retired = true;
                inner.put_index_entry(entry)?;
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The key of savepoint `id` in its job's index.
fn index_key(id: CheckpointId) -> String {
    id.0.to_string()
}

impl Keyed for IndexEntry {
    fn key(&self) -> String {
        index_key(self.record.checkpoint_id)
    }
}

impl Keyed for SavepointOperation {
    fn key(&self) -> String {
        self.operation_id.clone()
    }
}

/// Disposal in crash-safe order: mark the index entry retired, delete the metadata (it
/// is no longer a savepoint), delete the directory, drop the index entry.
fn dispose_savepoint(
    inner: &Inner,
    job: &JobId,
    id: CheckpointId,
    dir: &Path,
) -> StoreResult<bool> {
    let indexed = retire_savepoint(inner, job, id)?;
    let mut existed = indexed;
    let metadata = dir.join(METADATA_FILE);
    existed |= metadata.exists();
    remove_file_if_exists(&metadata)?;
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            existed = true;
            sync_parent(dir)?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("removing", dir.display(), e)),
    }
    if indexed {
        inner.logs.append::<IndexEntry>(
            &inner.savepoint_index(job),
            RecordKind::SavepointIndexLog,
            &LogEntry::Remove(index_key(id)),
        )?;
    }
    Ok(existed)
}

#[async_trait]
impl OperationStore for FsStore {
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()> {
        check_operation_id(&operation.operation_id)?;
        let operation = operation.clone();
        self.blocking(move |inner| inner.put_operation(operation))
            .await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>> {
        let job = job.clone();
        self.blocking(move |inner| {
            let log = inner.operations_log(&job);
            Ok(inner
                .logs
                .load(&log, RecordKind::OperationLog)?
                .into_values()
                .collect())
        })
        .await
    }

    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()> {
        check_operation_id(operation_id)?;
        let job = job.clone();
        let entry = LogEntry::<SavepointOperation>::Remove(operation_id.to_string());
        self.blocking(move |inner| {
            let log = inner.operations_log(&job);
            inner.logs.append(&log, RecordKind::OperationLog, &entry)
        })
        .await
    }
}

/// Refuses an operation id that is not a plain name.
fn check_operation_id(operation_id: &str) -> StoreResult<()> {
    validate_name(operation_id).map_err(|e| StoreError::InvalidLocation {
        location: operation_id.to_string(),
        detail: format!("operation id {e}"),
    })
}

#[async_trait]
impl OwnedStateStore for FsStore {
    fn checkpoint_location(&self, job: &JobId, id: CheckpointId) -> String {
        self.inner
            .checkpoint_dir(job, id)
            .to_string_lossy()
            .into_owned()
    }

    async fn discard(&self, location: &str, handles: &[StateHandle]) -> StoreResult<u64> {
        let location = absolute_dir(location)?;
        let files: Vec<PathBuf> = handles
            .iter()
            .filter_map(|h| match &h.data {
                StateData::Reference { uri, .. } => absolute_dir(uri).ok(),
                StateData::Inline(_) => None,
            })
            .filter(|file| file.starts_with(&location) && file != &location)
            .collect();
        self.blocking(move |_| {
            if location.join(METADATA_FILE).exists() {
                // A completed savepoint: its data is never the coordinator's to delete here.
                return Ok(0);
            }
            let mut deleted = 0;
            for file in files {
                match fs::remove_file(&file) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("deleting", file.display(), e)),
                }
            }
            // Removes the location if nothing else is left in it.
            let _ = fs::remove_dir(&location);
            Ok(deleted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::SavepointTrigger;
    use crate::coordinator::model::{SnapshotKind, SubtaskState, VertexState};
    use bytes::Bytes;

    fn job() -> JobId {
        JobId::new("job-a")
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

    #[tokio::test]
    async fn ids_are_reserved_in_ascending_blocks_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(store.reserve(&job(), 10).await.unwrap(), CheckpointId(1));
        assert_eq!(store.reserve(&job(), 10).await.unwrap(), CheckpointId(11));
        drop(store);
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(store.reserve(&job(), 1).await.unwrap(), CheckpointId(21));
        store.advance_past(&job(), CheckpointId(100)).await.unwrap();
        assert_eq!(store.reserve(&job(), 1).await.unwrap(), CheckpointId(101));
        store.advance_past(&job(), CheckpointId(5)).await.unwrap();
        assert_eq!(store.reserve(&job(), 1).await.unwrap(), CheckpointId(102));
    }

    #[tokio::test]
    async fn opening_removes_the_temp_files_of_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        store.reserve(&job(), 1).await.unwrap();
        let leftover = store.inner.job_dir(&job()).join(".ids.rec.tmp-1-0");
        fs::write(&leftover, b"half").unwrap();
        drop(store);
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(store.reserve(&job(), 1).await.unwrap(), CheckpointId(2));
    }

    #[tokio::test]
    async fn concurrent_reservations_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.reserve(&job(), 3).await.unwrap().0
            }));
        }
        let mut firsts = Vec::new();
        for task in tasks {
            firsts.push(task.await.unwrap());
        }
        firsts.sort();
        let expected: Vec<u64> = (0..16).map(|i| 1 + 3 * i).collect();
        assert_eq!(firsts, expected);
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_a_corrupted_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).unwrap();
        for id in [3, 1, 2] {
            store
                .add(&snapshot(id, SnapshotKind::Checkpoint))
                .await
                .unwrap();
        }
        CompletedCheckpointStore::remove(&store, &job(), CheckpointId(2))
            .await
            .unwrap();
        let loaded = CompletedCheckpointStore::load_all(&store, &job())
            .await
            .unwrap();
        assert_eq!(
            loaded,
            vec![
                snapshot(1, SnapshotKind::Checkpoint),
                snapshot(3, SnapshotKind::Checkpoint)
            ]
        );

        let file = store.inner.checkpoint_record(&job(), CheckpointId(3));
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&file, bytes).unwrap();
        let error = CompletedCheckpointStore::load_all(&store, &job())
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Corrupted { .. }), "{error}");
    }

    #[tokio::test]
    async fn savepoint_is_written_once_under_its_directory_and_listed() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let target_dir = target.path().to_str().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let sp = snapshot(7, SnapshotKind::Savepoint);

        let path = store
            .write(target_dir, &sp, SavepointTrigger::Manual)
            .await
            .unwrap();
        assert_eq!(
            PathBuf::from(&path),
            target.path().join("savepoint-job-a-7")
        );
        assert!(PathBuf::from(&path).join("_metadata").is_file());
        assert_eq!(store.read(&path).await.unwrap(), sp);
        assert_eq!(store.read(&format!("{path}/_metadata")).await.unwrap(), sp);
        let listed = store.list(&job()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].path.as_str(), listed[0].checkpoint_id),
            (path.as_str(), CheckpointId(7))
        );

        let again = store
            .write(target_dir, &sp, SavepointTrigger::Manual)
            .await
            .unwrap_err();
        assert!(
            matches!(again, StoreError::InvalidLocation { .. }),
            "{again}"
        );
        let leftovers: Vec<_> = fs::read_dir(&path).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");

        assert!(store.dispose(&path).await.unwrap());
        assert!(!Path::new(&path).exists());
        assert!(store.list(&job()).await.unwrap().is_empty());
        assert!(
            !store.dispose(&path).await.unwrap(),
            "nothing left the second time"
        );
        assert!(matches!(
            store.dispose("/tmp/not-a-savepoint").await,
            Err(StoreError::InvalidLocation { .. })
        ));
    }

    #[tokio::test]
    async fn a_prepared_savepoint_directory_takes_task_files_before_the_metadata() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let target_dir = target.path().to_str().unwrap();
        let path = store
            .savepoint_path(target_dir, &job(), CheckpointId(3))
            .unwrap();
        store.prepare(&path).await.unwrap();
        assert!(
            Path::new(&path).is_dir(),
            "created before the tasks write into it"
        );
        fs::write(Path::new(&path).join("task-0.state"), b"state").unwrap();
        let sp = snapshot(3, SnapshotKind::Savepoint);
        let written = store
            .write(target_dir, &sp, SavepointTrigger::Manual)
            .await
            .unwrap();
        assert_eq!(written, path);
        assert_eq!(store.read(&path).await.unwrap(), sp);
        assert_eq!(store.list(&job()).await.unwrap().len(), 1);
        assert_eq!(
            fs::read(Path::new(&path).join("task-0.state")).unwrap(),
            b"state"
        );

        // A savepoint that fails after its directory was prepared: discarding its state
        // removes the empty directory.
        let failed = store
            .savepoint_path(target_dir, &job(), CheckpointId(4))
            .unwrap();
        store.prepare(&failed).await.unwrap();
        store.discard(&failed, &[]).await.unwrap();
        assert!(!Path::new(&failed).exists());
    }

    #[tokio::test]
    async fn an_index_entry_whose_metadata_a_crash_lost_is_not_listed() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let target_dir = target.path().to_str().unwrap();
        let kept = store
            .write(
                target_dir,
                &snapshot(7, SnapshotKind::Savepoint),
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        let lost = store
            .write(
                target_dir,
                &snapshot(8, SnapshotKind::Savepoint),
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        // What a filesystem that made the index entry durable before the metadata's link
        // leaves after a crash.
        fs::remove_file(Path::new(&lost).join(METADATA_FILE)).unwrap();

        let listed: Vec<_> = store.list(&job()).await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            [kept.as_str()]
        );
    }

    #[tokio::test]
    async fn records_of_an_earlier_version_move_into_the_logs_on_opening() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let job_dir = data.path().join("jobs").join(job().as_str());
        let sp = snapshot(5, SnapshotKind::Savepoint);
        let path = FsStore::open(data.path().to_path_buf())
            .unwrap()
            .write(
                target.path().to_str().unwrap(),
                &sp,
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        let listed = FsStore::open(data.path().to_path_buf())
            .unwrap()
            .list(&job())
            .await
            .unwrap();
        // The same data as a version with a file per record left it.
        fs::remove_file(job_dir.join("savepoints.log")).unwrap();
        let old = FsStore::open(data.path().to_path_buf()).unwrap();
        let index_file = job_dir.join("savepoints").join(format!("sp-{:020}.rec", 5));
        let entry = IndexEntry {
            record: listed[0].clone(),
            retired: false,
        };
        write_record(&old.inner, RecordKind::SavepointIndex, &index_file, &entry).unwrap();
        let operation = SavepointOperation {
            operation_id: "op-1".to_string(),
            job_id: job(),
            checkpoint_id: CheckpointId(5),
            trigger: SavepointTrigger::Manual,
            drain: false,
            path: path.clone(),
            trigger_timestamp_ms: 10,
            outcome: crate::coordinator::model::OperationOutcome::Pending,
        };
        let operation_file = job_dir.join("operations").join("op-1.rec");
        write_record(
            &old.inner,
            RecordKind::Operation,
            &operation_file,
            &operation,
        )
        .unwrap();
        let damaged = job_dir.join("operations").join("op-2.rec");
        fs::write(&damaged, b"not a record").unwrap();

        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        assert_eq!(store.list(&job()).await.unwrap(), listed);
        assert_eq!(
            OperationStore::load_all(&store, &job()).await.unwrap(),
            vec![operation]
        );
        assert!(!index_file.exists() && !job_dir.join("savepoints").exists());
        assert!(!operation_file.exists());
        assert!(
            damaged.exists(),
            "a record that does not decode is left alone"
        );
        let again = FsStore::open(data.path().to_path_buf()).unwrap();
        assert_eq!(again.list(&job()).await.unwrap(), listed);
    }

    #[tokio::test]
    async fn a_disposal_interrupted_by_a_crash_is_finished_on_resume() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let sp = snapshot(3, SnapshotKind::Savepoint);
        let path = store
            .write(
                target.path().to_str().unwrap(),
                &sp,
                SavepointTrigger::Periodic,
            )
            .await
            .unwrap();
        // The crash came right after the index entry was marked retired.
        assert!(retire_savepoint(&store.inner, &job(), CheckpointId(3)).unwrap());

        assert!(
            store.list(&job()).await.unwrap().is_empty(),
            "not listed any more"
        );
        assert!(Path::new(&path).exists(), "its files are still there");
        let reopened = FsStore::open(data.path().to_path_buf()).unwrap();
        assert_eq!(reopened.resume_disposals(&job()).await.unwrap(), 1);
        assert!(!Path::new(&path).exists(), "no orphaned files");
        assert!(index_entries(&reopened.inner, &job()).unwrap().is_empty());
        assert_eq!(reopened.resume_disposals(&job()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_retired_savepoint_is_no_longer_listed_and_its_files_stay_until_disposal() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let target = target.path().to_str().unwrap();
        let sp = snapshot(4, SnapshotKind::Savepoint);
        let path = store
            .write(target, &sp, SavepointTrigger::Manual)
            .await
            .unwrap();
        assert!(store.retire(&path).await.unwrap());
        assert!(store.list(&job()).await.unwrap().is_empty());
        assert!(Path::new(&path).join(METADATA_FILE).is_file());
        assert!(
            store.retire(&path).await.unwrap(),
            "retiring twice is harmless"
        );
        assert!(store.dispose(&path).await.unwrap());
        assert!(!Path::new(&path).exists());
        assert!(
            !store.retire(&path).await.unwrap(),
            "nothing left to retire"
        );
    }

    #[tokio::test]
    async fn operations_round_trip_and_bad_ids_are_refused() {
        use crate::coordinator::model::{OperationOutcome, SavepointOperation};
        let data = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let operation = SavepointOperation {
            operation_id: "deploy-7".to_string(),
            job_id: job(),
            checkpoint_id: CheckpointId(9),
            trigger: SavepointTrigger::Stop,
            drain: true,
            path: "/sp/savepoint-job-a-9".to_string(),
            trigger_timestamp_ms: 5,
            outcome: OperationOutcome::Pending,
        };
        OperationStore::save(&store, &operation).await.unwrap();
        let done = SavepointOperation {
            outcome: OperationOutcome::Completed {
                completion_timestamp_ms: 8,
                state_size_bytes: 3,
            },
            ..operation.clone()
        };
        OperationStore::save(&store, &done).await.unwrap();
        let reopened = FsStore::open(data.path().to_path_buf()).unwrap();
        assert_eq!(
            OperationStore::load_all(&reopened, &job()).await.unwrap(),
            vec![done]
        );
        let bad = SavepointOperation {
            operation_id: "../escape".to_string(),
            ..operation
        };
        assert!(matches!(
            OperationStore::save(&store, &bad).await,
            Err(StoreError::InvalidLocation { .. })
        ));
        OperationStore::remove(&store, &job(), "deploy-7")
            .await
            .unwrap();
        assert!(
            OperationStore::load_all(&store, &job())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn truncated_savepoint_metadata_is_corrupted_not_missing() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let path = store
            .write(
                target.path().to_str().unwrap(),
                &snapshot(1, SnapshotKind::Savepoint),
                SavepointTrigger::Manual,
            )
            .await
            .unwrap();
        let metadata = PathBuf::from(&path).join("_metadata");
        let bytes = fs::read(&metadata).unwrap();
        fs::write(&metadata, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            store.read(&path).await,
            Err(StoreError::Corrupted { .. })
        ));
        assert!(matches!(
            store.read(&format!("{path}-nope")).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn resolve_follows_links_in_the_existing_part_of_a_path() {
        let data = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let link = data.path().join("link");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let resolved = store
            .resolve(&format!("{}/not-yet/there", link.display()))
            .unwrap();
        let outside = fs::canonicalize(outside.path()).unwrap();
        assert_eq!(resolved, outside.join("not-yet").join("there"));
        assert!(store.resolve("relative").is_err());
    }

    #[tokio::test]
    async fn relative_or_escaping_savepoint_directories_are_refused() {
        let data = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        for bad in ["", "relative/dir", "/tmp/../etc"] {
            assert!(
                matches!(
                    store.savepoint_path(bad, &job(), CheckpointId(1)),
                    Err(StoreError::InvalidLocation { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[tokio::test]
    async fn discard_deletes_only_owned_references_and_the_emptied_location() {
        let data = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let location = store.checkpoint_location(&job(), CheckpointId(4));
        fs::create_dir_all(&location).unwrap();
        let owned = format!("{location}/state-1");
        fs::write(&owned, b"x").unwrap();
        let outside = data.path().join("elsewhere");
        fs::write(&outside, b"y").unwrap();
        let handle = |uri: &str| StateHandle {
            name: "s".to_string(),
            data: StateData::Reference {
                uri: uri.to_string(),
                size_bytes: 1,
            },
            key_groups: None,
        };
        let handles = vec![
            handle(&owned),
            handle(outside.to_str().unwrap()),
            handle(&format!("{location}/../../../elsewhere")),
        ];
        assert_eq!(store.discard(&location, &handles).await.unwrap(), 1);
        assert!(!Path::new(&owned).exists());
        assert!(!Path::new(&location).exists());
        assert!(outside.exists(), "state outside the location is not ours");
    }

    #[tokio::test]
    async fn jobs_are_saved_listed_and_removed() {
        use crate::coordinator::model::{JobSpec, JobStatus};
        let data = tempfile::tempdir().unwrap();
        let store = FsStore::open(data.path().to_path_buf()).unwrap();
        let spec = JobSpec {
            job_id: job(),
            vertices: vec![crate::coordinator::model::VertexSpec {
                id: "src".to_string(),
                parallelism: 2,
                max_parallelism: 128,
            }],
            trigger_vertices: vec!["src".to_string()],
            wait_for_vertices: vec!["src".to_string()],
            commit_vertices: vec!["src".to_string()],
            policy: Default::default(),
            savepoint_dir: Some("/savepoints".to_string()),
            savepoint_policy: Default::default(),
        };
        let record = JobRecord {
            spec,
            status: JobStatus::Running,
            fencing_token: 3,
        };
        JobStore::save(&store, &record).await.unwrap();
        assert_eq!(
            JobStore::load_all(&store).await.unwrap().records,
            vec![record]
        );

        let other = data.path().join("jobs").join("other");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("job.rec"), b"SPCM garbage").unwrap();
        let loaded = JobStore::load_all(&store).await.unwrap();
        assert_eq!(loaded.records.len(), 1, "a corrupted record hides no other");
        assert_eq!(loaded.unreadable.len(), 1);
        assert_eq!(loaded.unreadable[0].job_id, "other");
        assert!(matches!(
            loaded.unreadable[0].error,
            StoreError::Corrupted { .. }
        ));

        JobStore::remove(&store, &job()).await.unwrap();
        assert!(JobStore::load_all(&store).await.unwrap().records.is_empty());
    }
}
