//! The savepoint life-cycle around the snapshot mechanics of the core: idempotent,
//! durably recorded operations, stop-with-savepoint, history and retention, disposal,
//! and periodic savepoints.

use super::job::{Effects, FINISHED_OPERATIONS_KEPT};
use super::model::{
    FailureReason, JobStatus, OperationOutcome, PostSnapshotAction, SavepointOperation,
    SavepointTrigger, SnapshotFailure, SnapshotKind, validate_name,
};
use super::pending::SnapshotOptions;
use super::schedule::{CronSchedule, SavepointSchedule};
use super::{Coordinator, CoreError, Job, SnapshotHandle};
use crate::store::{SavepointRecord, StoreError, savepoint_of_path};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A request for a savepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointRequest {
    /// None: the job's or the server's default directory.
    pub target_dir: Option<String>,
    /// The client's idempotency key; None lets the server pick an operation id.
    pub request_id: Option<String>,
    pub trigger: SavepointTrigger,
    /// Stop-with-savepoint only: drain before finishing.
    pub drain: bool,
}

impl SavepointRequest {
    pub fn manual(target_dir: Option<String>) -> Self {
        SavepointRequest {
            target_dir,
            request_id: None,
            trigger: SavepointTrigger::Manual,
            drain: false,
        }
    }

    pub fn stop(target_dir: Option<String>, drain: bool) -> Self {
        SavepointRequest {
            trigger: SavepointTrigger::Stop,
            drain,
            ..SavepointRequest::manual(target_dir)
        }
    }
}

/// What a savepoint request led to.
pub struct SavepointStarted {
    /// The operation as it stands now.
    pub operation: SavepointOperation,
    /// The new savepoint's handle; None when the request id repeated an earlier request.
    pub handle: Option<SnapshotHandle>,
    /// Held so that waiting outlives an unregistration of the job.
    job: Arc<Job>,
}

impl SavepointStarted {
    /// Waits until the operation's Pending record is durable (or failed to be), so that an
    /// operation id handed out survives a crash; returns the operation as it is then.
    pub async fn recorded(&self) -> Result<SavepointOperation, CoreError> {
        // The trigger holds this lock until the Pending record is written.
        drop(self.job.operation_writes.lock().await);
        operation_of(&self.job, &self.operation.operation_id)
    }

    /// Waits until the operation is no longer pending. Also when the job is unregistered
    /// meanwhile: the operation then fails with COORDINATOR_SHUT_DOWN.
    pub async fn finished(&self) -> Result<SavepointOperation, CoreError> {
        wait_for_operation(&self.job, &self.operation.operation_id).await
    }
}

/// How often the savepoint of an operation that could not be resolved is looked at again.
const RESOLVE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What became of a pending operation's savepoint that the index did not list.
enum SavepointFound {
    /// Its metadata is durable and it is indexed now (or it was listed all along).
    Indexed(SavepointRecord),
    /// No metadata: it never completed.
    Missing,
    /// Metadata that does not decode or is another savepoint's: kept, the operation fails.
    Damaged(StoreError),
    /// The store did not answer (reading or indexing failed): tried again later.
    Unresolved,
}

/// Distinguishes operation ids the server picks within one millisecond.
static OPERATION_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Coordinator {
    /// Starts a savepoint (or finds the operation an earlier request with the same
    /// request id started). Refused at once if the job cannot take it.
    pub async fn savepoint(
        &self,
        job_id: &str,
        request: SavepointRequest,
    ) -> Result<SavepointStarted, CoreError> {
        let job = self.job(job_id)?;
        self.start_savepoint(&job, request).await
    }

    pub(super) async fn start_savepoint(
        &self,
        job: &Arc<Job>,
        request: SavepointRequest,
    ) -> Result<SavepointStarted, CoreError> {
        if let Some(id) = &request.request_id {
            validate_name(id).map_err(|e| CoreError::InvalidArgument(format!("request_id {e}")))?;
        }
        let _serial = job.savepoint_requests.lock().await;
        if let Some(id) = &request.request_id
            && let Some(existing) = job.lock().operations.get(id)
        {
            if existing.trigger != request.trigger {
                return Err(CoreError::AlreadyExists(format!(
                    "request id {id} was already used for a {} savepoint of job {}",
                    existing.trigger, job.id
                )));
            }
            return Ok(SavepointStarted {
                operation: existing.clone(),
                handle: None,
                job: job.clone(),
            });
        }
        let operation_id = request.request_id.clone().unwrap_or_else(|| {
            let sequence = OPERATION_SEQUENCE.fetch_add(1, Ordering::Relaxed);
            format!("sp-{:x}-{sequence:x}", self.inner.clock.now_ms())
        });
        let target = request
            .target_dir
            .filter(|d| !d.trim().is_empty())
            .or_else(|| job.spec.savepoint_dir.clone())
            .unwrap_or_else(|| self.inner.config.default_savepoint_dir.clone());
        self.check_within_roots("target_directory", &target)?;
        let action = match (request.trigger, request.drain) {
            (SavepointTrigger::Stop, true) => PostSnapshotAction::Drain,
            (SavepointTrigger::Stop, false) => PostSnapshotAction::Stop,
            _ => PostSnapshotAction::None,
        };
        let options = SnapshotOptions {
            trigger: Some(request.trigger),
            action,
            operation_id: Some(operation_id.clone()),
            full: true,
        };
        let handle = self
            .trigger(job, SnapshotKind::Savepoint, false, Some(target), options)
            .await?;
        let operation = job
            .lock()
            .operations
            .get(&operation_id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("operation {operation_id}")))?;
        Ok(SavepointStarted {
            operation,
            handle: Some(handle),
            job: job.clone(),
        })
    }

    /// Takes a savepoint and moves the job to FINISHED once it is durable.
    pub async fn stop_with_savepoint(
        &self,
        job_id: &str,
        target_dir: Option<String>,
        drain: bool,
        request_id: Option<String>,
    ) -> Result<SavepointStarted, CoreError> {
        let request = SavepointRequest {
            request_id,
            ..SavepointRequest::stop(target_dir, drain)
        };
        self.savepoint(job_id, request).await
    }

    /// The operation `operation_id` of the job.
    pub fn operation(
        &self,
        job_id: &str,
        operation_id: &str,
    ) -> Result<SavepointOperation, CoreError> {
        let job = self.job(job_id)?;
        operation_of(&job, operation_id)
    }

    /// Waits until the operation is no longer pending. Every pending operation ends
    /// (completion, failure, timeout, shutdown), so this never waits forever.
    pub async fn wait_operation(
        &self,
        job_id: &str,
        operation_id: &str,
    ) -> Result<SavepointOperation, CoreError> {
        let job = self.job(job_id)?;
        wait_for_operation(&job, operation_id).await
    }

    /// The job's completed savepoints, newest first; also those whose index entry is
    /// still being written (their callers may have heard of them).
    pub async fn list_savepoints(&self, job_id: &str) -> Result<Vec<SavepointRecord>, CoreError> {
        let job = self.job(job_id)?;
        drop(job.savepoint_indexing.lock().await);
        let mut records = self.inner.stores.savepoints.list(&job.id).await?;
        records.reverse();
        Ok(records)
    }

    /// Deletes the savepoint at `path` if it lies under a savepoint root. Returns
    /// whether there was anything to delete.
    pub async fn dispose_savepoint(&self, path: &str) -> Result<bool, CoreError> {
        self.check_within_roots("path", path)?;
        // A savepoint just completed is indexed first, so its entry does not outlive it.
        let owner = savepoint_of_path(path).and_then(|(job, _)| self.job(job.as_str()).ok());
        if let Some(job) = owner {
            drop(job.savepoint_indexing.lock().await);
        }
        let existed = self.inner.stores.savepoints.dispose(path).await?;
        tracing::info!(path, existed, "savepoint disposed");
        Ok(existed)
    }

    /// Refuses `path` (given as `field`) unless it lies under a savepoint root (the
    /// default savepoint directory or a configured extra root) once links are followed,
    /// so neither `..` nor a symbolic link nor an absolute path elsewhere gets out.
    pub(super) fn check_within_roots(&self, field: &str, path: &str) -> Result<(), CoreError> {
        let store = &self.inner.stores.savepoints;
        let resolved = store
            .resolve(path)
            .map_err(|e| CoreError::InvalidArgument(format!("{field}: {e}")))?;
        let roots = self.savepoint_roots();
        if roots
            .iter()
            .filter_map(|root| store.resolve(root).ok())
            .any(|root| resolved.starts_with(&root))
        {
            return Ok(());
        }
        Err(CoreError::InvalidArgument(format!(
            "{field}: {path} is outside the savepoint roots ({}); the server accepts more \
             with --savepoint-root",
            roots.join(", ")
        )))
    }

    fn savepoint_roots(&self) -> Vec<String> {
        let config = &self.inner.config;
        let mut roots = vec![config.default_savepoint_dir.clone()];
        roots.extend(config.extra_savepoint_roots.iter().cloned());
        roots
    }

    /// Disposes of the job's savepoints that its retention policy retires: beyond the
    /// maximum count (oldest first) or older than the maximum age, always keeping the
    /// newest.
    pub(super) async fn apply_retention(&self, job: &Arc<Job>) {
        let policy = &job.spec.savepoint_policy;
        if !policy.retires() {
            return;
        }
        let _one_at_a_time = job.retention.lock().await;
        let records = match self.inner.stores.savepoints.list(&job.id).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(job_id = %job.id, "savepoint retention skipped: {error}");
                return;
            }
        };
        let now_ms = self.inner.clock.now_ms();
        for record in retired(&records, policy.max_retained, policy.max_age, now_ms) {
            match self.inner.stores.savepoints.dispose(&record.path).await {
                Ok(_) => tracing::info!(
                    job_id = %job.id,
                    checkpoint_id = %record.checkpoint_id,
                    path = record.path,
                    "savepoint retired by the retention policy"
                ),
                Err(error) => tracing::warn!(
                    job_id = %job.id,
                    path = record.path,
                    "disposing a retired savepoint failed: {error}"
                ),
            }
        }
    }

    /// Loads the job's operation records after a restart. An operation that was pending
    /// completed if its savepoint is indexed or its metadata is durable (a crash came
    /// between its answer and its index entry, see `Coordinator::complete`; it is indexed
    /// now), and failed otherwise (its snapshot died with the server); whatever that
    /// failed savepoint left in its directory is deleted, since nobody was told of it
    /// and nothing lists it, unless it holds metadata that cannot be decoded. One the
    /// store cannot answer for now stays pending and is tried again in the background.
    pub(super) async fn recover_operations(&self, job: &Arc<Job>) {
        let stores = &self.inner.stores;
        let operations = match stores.operations.load_all(&job.id).await {
            Ok(operations) => operations,
            Err(error) => {
                tracing::error!(job_id = %job.id, "savepoint operations unreadable: {error}");
                return;
            }
        };
        let savepoints = match stores.savepoints.list(&job.id).await {
            Ok(savepoints) => Some(savepoints),
            Err(error) => {
                tracing::error!(job_id = %job.id, "savepoint index unreadable, pending operations are resolved later: {error}");
                None
            }
        };
        let mut found = std::collections::HashMap::new();
        for operation in operations.iter().filter(|o| o.is_pending()) {
            let indexed = savepoints.as_ref().map(|savepoints| {
                savepoints
                    .iter()
                    .find(|s| s.checkpoint_id == operation.checkpoint_id)
            });
            let outcome = match indexed {
                None => SavepointFound::Unresolved,
                Some(Some(record)) => SavepointFound::Indexed(record.clone()),
                Some(None) => self.find_savepoint(job, operation).await,
            };
            found.insert(operation.operation_id.clone(), outcome);
        }
        let mut effects = Effects::default();
        let mut abandoned = Vec::new();
        let mut unresolved = Vec::new();
        {
            let mut state = job.lock();
            let mut operations = operations;
            operations.sort_by_key(|o| o.trigger_timestamp_ms);
            for operation in operations {
                match found.remove(&operation.operation_id) {
                    Some(SavepointFound::Unresolved) | None => {
                        if operation.is_pending() {
                            unresolved.push(operation.clone());
                        }
                        state.record_operation(operation, &mut effects);
                        effects.operations.pop();
                    }
                    Some(outcome) => {
                        self.settle(&mut state, operation, outcome, &mut effects, &mut abandoned)
                    }
                }
            }
        }
        self.carry_out_settled(job, effects, abandoned).await;
        for operation in unresolved {
            self.resolve_later(job, operation);
        }
    }

    /// What became of `operation`'s savepoint, which the index does not list: indexed
    /// now if its metadata is durable and its own.
    async fn find_savepoint(&self, job: &Job, operation: &SavepointOperation) -> SavepointFound {
        let path = &operation.path;
        let snapshot = match self.inner.stores.savepoints.read(path).await {
            Ok(snapshot) => snapshot,
            Err(StoreError::NotFound { .. }) => return SavepointFound::Missing,
            Err(error @ StoreError::Corrupted { .. }) => return SavepointFound::Damaged(error),
            Err(error) => {
                tracing::warn!(job_id = %job.id, path, "reading the metadata of a pending savepoint failed; trying again later: {error}");
                return SavepointFound::Unresolved;
            }
        };
        if snapshot.job_id != job.id || snapshot.checkpoint_id != operation.checkpoint_id {
            return SavepointFound::Damaged(StoreError::Corrupted {
                path: path.clone(),
                detail: format!(
                    "holds savepoint {} of job {}, not {} of job {}",
                    snapshot.checkpoint_id, snapshot.job_id, operation.checkpoint_id, job.id
                ),
            });
        }
        let record = SavepointRecord::of(&snapshot, path.clone(), operation.trigger);
        match self.inner.stores.savepoints.index(&record).await {
            Ok(()) => {
                tracing::info!(job_id = %job.id, checkpoint_id = %record.checkpoint_id, path, "indexed a complete savepoint that was left unindexed");
                SavepointFound::Indexed(record)
            }
            Err(error) => {
                tracing::warn!(job_id = %job.id, path, "indexing a complete savepoint failed; trying again later: {error}");
                SavepointFound::Unresolved
            }
        }
    }

    /// Records what became of `operation` (as loaded, or as it stands in memory); the
    /// directory of a savepoint that never completed goes to `abandoned`.
    fn settle(
        &self,
        state: &mut super::job::JobState,
        mut operation: SavepointOperation,
        found: SavepointFound,
        effects: &mut Effects,
        abandoned: &mut Vec<String>,
    ) {
        let now_ms = self.inner.clock.now_ms();
        let failed = |message: String| OperationOutcome::Failed {
            completion_timestamp_ms: now_ms,
            failure: SnapshotFailure::new(FailureReason::CoordinatorShutDown, message),
        };
        match found {
            // Completed in memory already (its answer went out): only its record is due.
            _ if !operation.is_pending() => {}
            SavepointFound::Indexed(record) => {
                state.max_issued_id = state.max_issued_id.max(record.checkpoint_id);
                operation.outcome = OperationOutcome::Completed {
                    completion_timestamp_ms: record.completion_timestamp_ms,
                    state_size_bytes: record.state_size_bytes,
                };
            }
            SavepointFound::Missing => {
                abandoned.push(operation.path.clone());
                operation.outcome =
                    failed("the server stopped before the savepoint completed".to_string());
            }
            SavepointFound::Damaged(error) => {
                tracing::error!(job_id = %operation.job_id, path = operation.path, "a pending savepoint's metadata is damaged; its files are kept: {error}");
                operation.outcome = failed(format!(
                    "the server stopped while the savepoint was stored, and its metadata is damaged (its files are kept): {error}"
                ));
            }
            SavepointFound::Unresolved => return,
        }
        state.record_operation(operation, effects);
    }

    /// Carries out `effects` and deletes what the `abandoned` savepoints left behind.
    async fn carry_out_settled(&self, job: &Arc<Job>, effects: Effects, abandoned: Vec<String>) {
        self.carry_out(job, effects);
        for path in abandoned {
            match self.inner.stores.savepoints.dispose(&path).await {
                Ok(true) => {
                    tracing::info!(job_id = %job.id, path, "removed what a savepoint cut short by a restart left behind")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(job_id = %job.id, path, "removing an abandoned savepoint directory failed: {error}")
                }
            }
        }
    }

    /// Tries again, every [`RESOLVE_RETRY`] while the job is registered, to find out
    /// what became of the savepoint of `operation` (pending on record, and either pending
    /// in memory after a recovery or completed in memory with its indexing failed), and
    /// records it. So a savepoint the store could not index at the time is listed, and
    /// its operation recorded, once the store answers again.
    pub(super) fn resolve_later(&self, job: &Arc<Job>, operation: SavepointOperation) {
        let coordinator = self.clone();
        let job = job.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESOLVE_RETRY).await;
                if !coordinator.is_registered(&job) {
                    return;
                }
                let found = coordinator.find_savepoint(&job, &operation).await;
                if matches!(found, SavepointFound::Unresolved) {
                    continue;
                }
                let mut effects = Effects::default();
                let mut abandoned = Vec::new();
                {
                    let mut state = job.lock();
                    let Some(current) = state.operations.get(&operation.operation_id).cloned()
                    else {
                        return;
                    };
                    coordinator.settle(&mut state, current, found, &mut effects, &mut abandoned);
                }
                coordinator
                    .carry_out_settled(&job, effects, abandoned)
                    .await;
                return;
            }
        });
    }

    /// Writes changed operation records and deletes forgotten ones, after any Pending
    /// record written by the trigger.
    pub(super) fn persist_operations(
        &self,
        job: &Arc<Job>,
        operations: Vec<SavepointOperation>,
        forgotten: Vec<String>,
    ) {
        let stores = self.inner.stores.clone();
        let order = job.operation_writes.clone();
        let job_id = job.id.clone();
        tokio::spawn(async move {
            let _order = order.lock().await;
            for operation in operations {
                if let Err(error) = stores.operations.save(&operation).await {
                    tracing::error!(%job_id, operation_id = operation.operation_id, "recording a savepoint operation failed: {error}");
                }
            }
            for operation_id in forgotten {
                if let Err(error) = stores.operations.remove(&job_id, &operation_id).await {
                    tracing::warn!(%job_id, operation_id, "forgetting a savepoint operation failed: {error}");
                }
            }
        });
    }

    /// Starts the job's periodic savepoints, if its policy has a schedule.
    pub(super) fn start_savepoint_scheduler(&self, job: &Arc<Job>) {
        let policy = &job.spec.savepoint_policy;
        let schedule = match (&policy.interval, &policy.cron) {
            (Some(interval), _) => SavepointSchedule::Interval(*interval),
            (None, Some(cron)) => match CronSchedule::parse(cron) {
                Ok(cron) => SavepointSchedule::Cron(Box::new(cron)),
                Err(error) => {
                    tracing::error!(job_id = %job.id, "periodic savepoints disabled: {error}");
                    return;
                }
            },
            (None, None) => return,
        };
        let coordinator = self.clone();
        let scheduled = job.clone();
        let task = tokio::spawn(async move {
            coordinator
                .run_savepoint_scheduler(scheduled, schedule)
                .await
        });
        let mut state = job.lock();
        if let Some(old) = state.savepoint_scheduler.replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// Takes a savepoint whenever one is due; best effort: a savepoint that cannot be
    /// taken (job not RUNNING, the previous one still pending) is skipped and recorded.
    async fn run_savepoint_scheduler(self, job: Arc<Job>, schedule: SavepointSchedule) {
        loop {
            let Some(delay) = schedule.delay_from(self.inner.clock.now_ms()) else {
                tracing::info!(job_id = %job.id, "the savepoint schedule has no further dates");
                return;
            };
            tokio::time::sleep(delay).await;
            let skip = {
                let state = job.lock();
                if state.shut_down || state.draining {
                    return;
                }
                let previous = state
                    .savepoints
                    .pending
                    .values()
                    .find(|p| p.options.trigger == Some(SavepointTrigger::Periodic))
                    .map(|p| p.id);
                if state.status != JobStatus::Running {
                    Some(format!("job is {}, not RUNNING", state.status))
                } else {
                    previous
                        .map(|id| format!("the previous periodic savepoint {id} is still pending"))
                }
            };
            let skip = match skip {
                Some(reason) => Some(reason),
                None => {
                    let request = SavepointRequest {
                        trigger: SavepointTrigger::Periodic,
                        ..SavepointRequest::manual(None)
                    };
                    match self.start_savepoint(&job, request).await {
                        Ok(started) => {
                            tracing::info!(job_id = %job.id, checkpoint_id = %started.operation.checkpoint_id, "periodic savepoint triggered");
                            None
                        }
                        Err(error) => Some(error.to_string()),
                    }
                }
            };
            if let Some(reason) = skip {
                tracing::info!(job_id = %job.id, reason, "periodic savepoint skipped");
                job.lock().stats.record_skip(reason);
            }
        }
    }
}

/// Waits until operation `operation_id` of `job` is no longer pending.
async fn wait_for_operation(
    job: &Job,
    operation_id: &str,
) -> Result<SavepointOperation, CoreError> {
    let mut changed = job.operations_changed.subscribe();
    loop {
        let operation = operation_of(job, operation_id)?;
        if !operation.is_pending() {
            return Ok(operation);
        }
        if changed.changed().await.is_err() {
            return operation_of(job, operation_id);
        }
    }
}

/// The operation `operation_id` of `job`.
fn operation_of(job: &Job, operation_id: &str) -> Result<SavepointOperation, CoreError> {
    job.lock().operations.get(operation_id).cloned().ok_or_else(|| {
        CoreError::NotFound(format!(
            "job {} has no savepoint operation {operation_id} (the latest {FINISHED_OPERATIONS_KEPT} finished ones are kept)",
            job.id
        ))
    })
}

/// The savepoints of `records` (ascending by id) that retention disposes of.
fn retired(
    records: &[SavepointRecord],
    max_retained: u32,
    max_age: Option<std::time::Duration>,
    now_ms: u64,
) -> Vec<SavepointRecord> {
    let Some((_newest, older)) = records.split_last() else {
        return Vec::new();
    };
    let over_count = match max_retained {
        0 => 0,
        max => records.len().saturating_sub(max as usize),
    };
    let oldest_allowed = max_age.map(|age| now_ms.saturating_sub(age.as_millis() as u64));
    older
        .iter()
        .enumerate()
        .filter(|(i, record)| {
            *i < over_count
                || oldest_allowed.is_some_and(|limit| record.completion_timestamp_ms < limit)
        })
        .map(|(_, record)| record.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::{CheckpointId, JobId};
    use std::time::Duration;

    fn record(id: u64, completed_ms: u64) -> SavepointRecord {
        SavepointRecord {
            job_id: JobId::new("j"),
            checkpoint_id: CheckpointId(id),
            path: format!("/sp/savepoint-j-{id}"),
            trigger_timestamp_ms: completed_ms,
            completion_timestamp_ms: completed_ms,
            state_size_bytes: 1,
            trigger: SavepointTrigger::Manual,
        }
    }

    fn ids(records: Vec<SavepointRecord>) -> Vec<u64> {
        records.into_iter().map(|r| r.checkpoint_id.0).collect()
    }

    #[test]
    fn retention_by_count_retires_the_oldest() {
        let records: Vec<_> = (1..=5).map(|i| record(i, i * 1000)).collect();
        assert_eq!(ids(retired(&records, 2, None, 10_000)), vec![1, 2, 3]);
        assert_eq!(ids(retired(&records, 0, None, 10_000)), Vec::<u64>::new());
        assert_eq!(ids(retired(&records, 9, None, 10_000)), Vec::<u64>::new());
    }

    #[test]
    fn retention_by_age_always_keeps_the_newest() {
        let records: Vec<_> = (1..=3).map(|i| record(i, i * 1000)).collect();
        let age = Some(Duration::from_millis(1500));
        assert_eq!(ids(retired(&records, 0, age, 4_000)), vec![1, 2]);
        assert_eq!(
            ids(retired(&records, 0, age, 1_000_000)),
            vec![1, 2],
            "the newest stays however old it is"
        );
    }
}
