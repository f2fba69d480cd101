//! A backend wrapper that injects faults (failed or slow writes, full disk, unreadable
//! data), so tests can prove that the coordinator turns each into a typed failure and
//! keeps serving the jobs that are not affected. Not for production use.

use super::{
    CompletedCheckpointStore, IdCounterStore, JobRecord, JobStore, LoadedJobs, OperationStore,
    OwnedStateStore, SavepointRecord, SavepointStore, StoreError, StoreResult, Stores,
};
use crate::coordinator::model::{
    CheckpointId, CompletedSnapshot, JobId, SavepointOperation, StateHandle,
};
use async_trait::async_trait;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which faults are active. Changed at any time through [`FaultSwitch`].
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Only this job's data is affected; None affects every job.
    pub job: Option<JobId>,
    /// Writes (metadata, operation records, ID reservations) fail with this error kind,
    /// e.g. [`ErrorKind::StorageFull`] for a full disk.
    pub failing_writes: Option<ErrorKind>,
    /// Writes take this long before they happen (a slow fsync).
    pub write_delay: Option<Duration>,
    /// Reads of metadata fail with this error kind, e.g. [`ErrorKind::PermissionDenied`]
    /// for an unreadable directory.
    pub failing_reads: Option<ErrorKind>,
    /// Disposals mark the savepoint retired (it leaves the index) and then never go on to
    /// delete anything: what a server that dies in the middle of a disposal leaves behind.
    pub interrupted_disposals: bool,
    /// Indexing a savepoint never finishes, while its metadata is written: what a server
    /// that dies between a savepoint's metadata and its index entry leaves behind.
    pub interrupted_indexing: bool,
    /// Indexing a savepoint fails (its metadata is written).
    pub failing_indexing: bool,
}

/// Shared handle to change the active faults.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch(Arc<Mutex<FaultPlan>>);

impl FaultSwitch {
    pub fn set(&self, plan: FaultPlan) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    pub fn clear(&self) {
        self.set(FaultPlan::default());
    }

    fn plan(&self) -> FaultPlan {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Wraps `S`, injecting the faults of its [`FaultSwitch`].
pub struct FaultyStore<S> {
    inner: Arc<S>,
    switch: FaultSwitch,
}

impl<S> FaultyStore<S>
where
    S: IdCounterStore
        + JobStore
        + CompletedCheckpointStore
        + SavepointStore
        + OwnedStateStore
        + OperationStore
        + 'static,
{
    /// Every role of `inner` behind one fault switch.
    pub fn wrap(inner: Arc<S>) -> (Stores, FaultSwitch) {
        let switch = FaultSwitch::default();
        let store = Arc::new(FaultyStore {
            inner,
            switch: switch.clone(),
        });
        (Stores::all_in(store), switch)
    }
}

impl<S> FaultyStore<S> {
    /// Applies the write faults that concern `job` (None: a write not tied to one job).
    async fn before_write(&self, job: Option<&str>, what: &str) -> StoreResult<()> {
        let plan = self.switch.plan();
        if !concerns(&plan, job) {
            return Ok(());
        }
        if let Some(delay) = plan.write_delay {
            tokio::time::sleep(delay).await;
        }
        match plan.failing_writes {
            Some(kind) => Err(StoreError::io(
                "writing (injected fault)",
                what,
                std::io::Error::from(kind),
            )),
            None => Ok(()),
        }
    }

    fn before_read(&self, job: Option<&str>, what: &str) -> StoreResult<()> {
        let plan = self.switch.plan();
        match plan.failing_reads {
            Some(kind) if concerns(&plan, job) => Err(StoreError::io(
                "reading (injected fault)",
                what,
                std::io::Error::from(kind),
            )),
            _ => Ok(()),
        }
    }
}

fn concerns(plan: &FaultPlan, job: Option<&str>) -> bool {
    match (&plan.job, job) {
        (None, _) => true,
        (Some(target), Some(job)) => target.as_str() == job,
        (Some(_), None) => false,
    }
}

/// The job a savepoint path belongs to (`.../savepoint-<job>-<id>`), if it can tell.
fn job_of_path(path: &str) -> Option<&str> {
    let name = path
        .trim_end_matches('/')
        .trim_end_matches("/_metadata")
        .rsplit('/')
        .next()?;
    Some(name.strip_prefix("savepoint-")?.rsplit_once('-')?.0)
}

#[async_trait]
impl<S: IdCounterStore> IdCounterStore for FaultyStore<S> {
    async fn reserve(&self, job: &JobId, count: u64) -> StoreResult<CheckpointId> {
        self.before_write(Some(job.as_str()), "checkpoint id counter")
            .await?;
        self.inner.reserve(job, count).await
    }

    async fn advance_past(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.before_write(Some(job.as_str()), "checkpoint id counter")
            .await?;
        self.inner.advance_past(job, id).await
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.inner.remove(job).await
    }
}

#[async_trait]
impl<S: JobStore> JobStore for FaultyStore<S> {
    async fn save(&self, record: &JobRecord) -> StoreResult<()> {
        self.before_write(Some(record.spec.job_id.as_str()), "job record")
            .await?;
        self.inner.save(record).await
    }

    async fn remove(&self, job: &JobId) -> StoreResult<()> {
        self.inner.remove(job).await
    }

    async fn load_all(&self) -> StoreResult<LoadedJobs> {
        self.inner.load_all().await
    }
}

#[async_trait]
impl<S: CompletedCheckpointStore> CompletedCheckpointStore for FaultyStore<S> {
    async fn add(&self, snapshot: &CompletedSnapshot) -> StoreResult<()> {
        self.before_write(Some(snapshot.job_id.as_str()), "checkpoint metadata")
            .await?;
        self.inner.add(snapshot).await
    }

    async fn remove(&self, job: &JobId, id: CheckpointId) -> StoreResult<()> {
        self.inner.remove(job, id).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<CompletedSnapshot>> {
        self.before_read(Some(job.as_str()), "retained checkpoints")?;
        self.inner.load_all(job).await
    }

    async fn remove_all(&self, job: &JobId) -> StoreResult<()> {
        self.inner.remove_all(job).await
    }
}

#[async_trait]
impl<S: SavepointStore> SavepointStore for FaultyStore<S> {
    fn savepoint_path(
        &self,
        target_dir: &str,
        job: &JobId,
        id: CheckpointId,
    ) -> StoreResult<String> {
        self.inner.savepoint_path(target_dir, job, id)
    }

    async fn prepare(&self, path: &str) -> StoreResult<()> {
        self.before_write(job_of_path(path), "savepoint directory")
            .await?;
        self.inner.prepare(path).await
    }

    async fn write_metadata(
        &self,
        target_dir: &str,
        snapshot: &CompletedSnapshot,
    ) -> StoreResult<String> {
        self.before_write(Some(snapshot.job_id.as_str()), "savepoint metadata")
            .await?;
        self.inner.write_metadata(target_dir, snapshot).await
    }

    async fn index(&self, record: &SavepointRecord) -> StoreResult<()> {
        let plan = self.switch.plan();
        if plan.interrupted_indexing && concerns(&plan, Some(record.job_id.as_str())) {
            tracing::info!(
                path = record.path,
                "indexing a savepoint never finishes (injected fault)"
            );
            return std::future::pending().await;
        }
        if plan.failing_indexing && concerns(&plan, Some(record.job_id.as_str())) {
            return Err(StoreError::io(
                "writing (injected fault)",
                "savepoint index",
                std::io::Error::other("the index refuses writes"),
            ));
        }
        self.before_write(Some(record.job_id.as_str()), "savepoint index")
            .await?;
        self.inner.index(record).await
    }

    fn resolve(&self, path: &str) -> StoreResult<std::path::PathBuf> {
        self.inner.resolve(path)
    }

    async fn read(&self, path: &str) -> StoreResult<CompletedSnapshot> {
        self.before_read(job_of_path(path), path)?;
        self.inner.read(path).await
    }

    async fn list(&self, job: &JobId) -> StoreResult<Vec<SavepointRecord>> {
        self.before_read(Some(job.as_str()), "savepoint index")?;
        self.inner.list(job).await
    }

    async fn dispose(&self, path: &str) -> StoreResult<bool> {
        let plan = self.switch.plan();
        if plan.interrupted_disposals && concerns(&plan, job_of_path(path)) {
            self.inner.retire(path).await?;
            tracing::info!(
                path,
                "disposal interrupted after the retirement (injected fault)"
            );
            return std::future::pending().await;
        }
        self.before_write(job_of_path(path), path).await?;
        self.inner.dispose(path).await
    }

    async fn retire(&self, path: &str) -> StoreResult<bool> {
        self.before_write(job_of_path(path), path).await?;
        self.inner.retire(path).await
    }

    async fn resume_disposals(&self, job: &JobId) -> StoreResult<u64> {
        self.inner.resume_disposals(job).await
    }
}

#[async_trait]
impl<S: OwnedStateStore> OwnedStateStore for FaultyStore<S> {
    fn checkpoint_location(&self, job: &JobId, id: CheckpointId) -> String {
        self.inner.checkpoint_location(job, id)
    }

    async fn discard(&self, location: &str, handles: &[StateHandle]) -> StoreResult<u64> {
        self.inner.discard(location, handles).await
    }
}

#[async_trait]
impl<S: OperationStore> OperationStore for FaultyStore<S> {
    async fn save(&self, operation: &SavepointOperation) -> StoreResult<()> {
        self.before_write(Some(operation.job_id.as_str()), "savepoint operation")
            .await?;
        self.inner.save(operation).await
    }

    async fn load_all(&self, job: &JobId) -> StoreResult<Vec<SavepointOperation>> {
        self.before_read(Some(job.as_str()), "savepoint operations")?;
        self.inner.load_all(job).await
    }

    async fn remove(&self, job: &JobId, operation_id: &str) -> StoreResult<()> {
        self.inner.remove(job, operation_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_paths_name_their_job() {
        assert_eq!(job_of_path("/sp/savepoint-job-a-12"), Some("job-a"));
        assert_eq!(
            job_of_path("/sp/savepoint-job-a-12/_metadata"),
            Some("job-a")
        );
        assert_eq!(job_of_path("/sp/other"), None);
    }
}
