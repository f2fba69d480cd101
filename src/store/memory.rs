//! In-memory backend for unit tests: every trait of the store layer on maps behind one
//! mutex, plus switches to make writes fail and a log of discarded state, so tests can
//! check what the coordinator persisted and deleted. Nothing survives the process.

use super::{
    CompletedCheckpointStore, IdCounterStore, JobRecord, JobStore, LoadedJobs, OperationStore,
    OwnedStateStore, SavepointRecord, SavepointStore, StoreError, StoreResult, savepoint_dir_name,
};
use crate::coordinator::model::{
    CheckpointId, CompletedSnapshot, JobId, SavepointOperation, SavepointTrigger, StateData,
    StateHandle,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
struct Maps {
    /// Next free ID per job.
    next_ids: BTreeMap<JobId, u64>,
    jobs: BTreeMap<JobId, JobRecord>,
    checkpoints: BTreeMap<JobId, BTreeMap<CheckpointId, CompletedSnapshot>>,
    /// Savepoint metadata by path, and how it was triggered once it is indexed.
    savepoints: BTreeMap<String, (CompletedSnapshot, Option<SavepointTrigger>)>,
    /// Savepoints being disposed of: no longer listed, their metadata still readable.
    retired: BTreeSet<String>,
    operations: BTreeMap<(JobId, String), SavepointOperation>,
    discarded: Vec<String>,
}

/// See the module documentation.
#[derive(Default)]
pub struct MemoryStore {
    maps: Mutex<Maps>,
    fail_writes: AtomicBool,
}

impl MemoryStore {
    /// While `fail` is true, every write (checkpoint, savepoint, job, counter) fails with
    /// [`StoreError::Unavailable`].
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// URIs of every state reference deleted so far, in deletion order.
    pub fn discarded_uris(&self) -> Vec<String> {
        self.maps().discarded.clone()
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_writable(&self) -> StoreResult<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "injected write failure (memory store)".to_string(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl IdCounterStore for MemoryStore {
    async fn reserve(&self, job: &JobId, count: u64) -> StoreResult<CheckpointId> {
        self.check_writable()?;
        let mut maps = self.maps();
        let next = maps.next_ids.entry(job.clone()).or_insert(1);
        let first = *next;
        *next += count;
        Ok(CheckpointId(first))
    }

    async fn advance_past(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.check_writable()?;
        let mut maps = self.maps();
        let next = maps.next_ids.entry(job.clone()).or_insert(1);
        *next = (*next).max(id.0 + 1);
        Ok(())
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.maps().next_ids.remove(job);
        Ok(())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn save(&self, record: &JobRecord) -> StoreResult<()> {
        self.check_writable()?;
        self.maps()
            .jobs
            .insert(record.spec.job_id.clone(), record.clone());
        Ok(())
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.maps().jobs.remove(job);
        Ok(())
    }

    async fn load_all(&self) -> StoreResult<LoadedJobs> {
        Ok(LoadedJobs {
            records: self.maps().jobs.values().cloned().collect(),
            unreadable: Vec::new(),
        })
    }
}

#[async_trait]
impl CompletedCheckpointStore for MemoryStore {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        self.check_writable()?;
        self.maps()
            .checkpoints
            .entry(snapshot.job_id.clone())
            .or_default()
            .insert(snapshot.checkpoint_id, snapshot.clone());
        Ok(())
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        if let Some(retained) = self.maps().checkpoints.get_mut(job) {
            retained.remove(&id);
        }
        Ok(())
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        Ok(self
            .maps()
            .checkpoints
            .get(job)
            .map(|retained| retained.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        self.maps().checkpoints.remove(job);
        Ok(())
    }
}

#[async_trait]
impl SavepointStore for MemoryStore {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        let target = target_dir.trim_end_matches('/');
        if target.is_empty() {
            return Err(StoreError::InvalidLocation {
                location: target_dir.to_string(),
                detail: "the savepoint directory is empty".to_string(),
            });
        }
        Ok(format!("{target}/{}", savepoint_dir_name(job, id)))
    }

    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        self.check_writable()?;
        let path = self.savepoint_path(target_dir, &snapshot.job_id, snapshot.checkpoint_id)?;
        let mut maps = self.maps();
        if maps.savepoints.contains_key(&path) {
            return Err(StoreError::InvalidLocation {
                location: path,
                detail: "a savepoint already exists there".to_string(),
            });
        }
        maps.savepoints
            .insert(path.clone(), (snapshot.clone(), None));
        Ok(path)
    }

    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        self.check_writable()?;
        let path = savepoint_key(&record.path);
        match self.maps().savepoints.get_mut(path) {
            Some((_, trigger)) => {
                *trigger = Some(record.trigger);
                Ok(())
            }
            None => Err(StoreError::NotFound {
                what: format!("savepoint {path}"),
            }),
        }
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        let path = savepoint_key(path);
        self.maps()
            .savepoints
            .get(path)
            .map(|(snapshot, _)| snapshot.clone())
            .ok_or_else(|| StoreError::NotFound {
                what: format!("savepoint {path}"),
            })
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        let maps = self.maps();
        let mut records: Vec<SavepointRecord> = maps
            .savepoints
            .iter()
            .filter(|(path, (s, _))| &s.job_id == job && !maps.retired.contains(*path))
            .filter_map(|(path, (s, trigger))| {
                trigger.map(|trigger| SavepointRecord::of(s, path.clone(), trigger))
            })
            .collect();
        records.sort_by_key(|r| r.checkpoint_id);
        Ok(records)
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        let path = savepoint_key(path);
        let mut maps = self.maps();
        maps.retired.remove(path);
        Ok(maps.savepoints.remove(path).is_some())
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        let path = savepoint_key(path);
        let mut maps = self.maps();
        if !maps.savepoints.contains_key(path) {
            return Ok(false);
        }
        maps.retired.insert(path.to_string());
        Ok(true)
    }

    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        let mut maps = self.maps();
        let Maps {
            savepoints,
            retired,
            ..
        } = &mut *maps;
        let mut resumed = 0;
        retired.retain(|path| {
            let ours = savepoints.get(path).is_some_and(|(s, _)| &s.job_id == job);
            if ours {
                savepoints.remove(path);
                resumed += 1;
            }
            !ours
        });
        Ok(resumed)
    }
}

/// The key of the savepoint `path` names (its directory or its `_metadata` file).
fn savepoint_key(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.strip_suffix("/_metadata").unwrap_or(path)
}

#[async_trait]
impl OperationStore for MemoryStore {
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()> {
        self.check_writable()?;
        self.maps().operations.insert(
            (operation.job_id.clone(), operation.operation_id.clone()),
            operation.clone(),
        );
        Ok(())
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>> {
        Ok(self
            .maps()
            .operations
            .values()
            .filter(|o| &o.job_id == job)
            .cloned()
            .collect())
    }

    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()> {
        self.maps()
            .operations
            .remove(&(job.clone(), operation_id.to_string()));
        Ok(())
    }
}

#[async_trait]
impl OwnedStateStore for MemoryStore {
    fn checkpoint_location(&self, job: &JobId, id: CheckpointId) -> String {
        format!("memory://checkpoints/{job}/chk-{id}")
    }

    async fn discard(&self, location: &str, handles: &[StateHandle]) -> StoreResult<u64> {
        let prefix = format!("{}/", location.trim_end_matches('/'));
        let mut maps = self.maps();
        let mut deleted = 0;
        for handle in handles {
            if let StateData::Reference { uri, .. } = &handle.data
                && uri.starts_with(&prefix)
            {
                maps.discarded.push(uri.clone());
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
