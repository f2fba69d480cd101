//! The coordinator core: decides what happens to every job's checkpoints and savepoints.
//!
//! Per job there are two coordinator instances (periodic checkpoints and savepoints) that
//! share one checkpoint ID counter and one stats tracker, so a savepoint never queues
//! behind or gets subsumed by a checkpoint, while task managers still see ascending IDs.
//!
//! Concurrency: each job's state sits behind one `std::sync::Mutex` that is only held to
//! decide ([`job::JobState`] methods); I/O (stores) and sending (gateway) happen after it
//! is released, from the returned [`job::Effects`]. Completion of a fully acknowledged
//! snapshot (the durable write) runs as its own task, so acknowledgements never wait on I/O.

pub mod clock;
pub mod error;
pub mod gateway;
pub mod id_counter;
pub mod job;
pub mod metrics;
pub mod model;
pub mod pending;
pub mod restore;
mod savepoints;
pub mod schedule;
pub mod stats;
pub mod tasks;

pub use error::CoreError;
pub use pending::{SnapshotResult, SnapshotSuccess};
pub use savepoints::{SavepointRequest, SavepointStarted};

use crate::store::{JobRecord, SavepointRecord, StoreError, Stores};
use clock::Clock;
use gateway::{TaskGateway, TaskMessage};
use id_counter::SharedIdCounter;
use job::{AckDecision, Completing, Effects, JobState, SchedulerStep};
use model::{
    AttemptId, CheckpointId, ClaimMode, CompletedSnapshot, FailureReason, JobId, JobSpec,
    JobStatus, OperationOutcome, PostSnapshotAction, SavepointOperation, SavepointTrigger,
    SnapshotFailure, SnapshotKind, StateData, StateHandle, TaskManagerId, TaskState,
};
use pending::SnapshotOptions;
use restore::StateMapping;
use stats::{JobStats, RestoreStats, SnapshotStats, SnapshotStatus};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

/// Settings of the core that are not per job.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Savepoint target when neither the request nor the job names one.
    pub default_savepoint_dir: String,
    /// How many checkpoint IDs are reserved from the store at a time.
    pub id_block_size: u64,
    /// How many finished snapshots each job's stats history keeps.
    pub stats_history: usize,
    /// Directories besides the default and the jobs' own savepoint directories under
    /// which DisposeSavepoint may delete.
    pub extra_savepoint_roots: Vec<String>,
    /// Where snapshot and acknowledgement counts go (nowhere by default).
    pub metrics: metrics::MetricsSink,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            default_savepoint_dir: "savepoints".to_string(),
            id_block_size: 64,
            stats_history: 20,
            extra_savepoint_roots: Vec::new(),
            metrics: metrics::MetricsSink::default(),
        }
    }
}

/// An acknowledgement from one task attempt.
#[derive(Clone, Debug)]
pub struct Acknowledgement {
    pub checkpoint_id: CheckpointId,
    pub attempt_id: AttemptId,
    pub handles: Vec<StateHandle>,
    /// 0 skips the fencing check.
    pub fencing_token: u64,
}

/// What the coordinator did with an acknowledgement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AckOutcome {
    Recorded,
    /// It was the last one: the snapshot is being stored.
    Completing,
    Duplicate,
    /// The snapshot is no longer pending; the state was discarded.
    Late,
    UnknownCheckpoint,
    NotAwaited,
}

/// A task attempt announced by a task manager.
#[derive(Clone, Debug)]
pub struct TaskRegistration {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask_index: u32,
    pub attempt_id: AttemptId,
    pub state: TaskState,
}

/// A triggered snapshot; [`wait`](Self::wait) resolves when it completes or fails.
pub struct SnapshotHandle {
    pub checkpoint_id: CheckpointId,
    /// The savepoint's path (known at trigger time); None for checkpoints.
    pub path: Option<String>,
    result: oneshot::Receiver<SnapshotResult>,
}

impl SnapshotHandle {
    /// Waits for the outcome. Every pending snapshot ends (completion, decline, timeout,
    /// shutdown), so this never waits forever.
    pub async fn wait(self) -> SnapshotResult {
        self.result.await.unwrap_or_else(|_| {
            Err(SnapshotFailure::new(
                FailureReason::CoordinatorShutDown,
                "the coordinator stopped before the snapshot finished",
            ))
        })
    }
}

/// The outcome of a restore: the assignment of state to every subtask.
#[derive(Clone, Debug)]
pub struct Restored {
    pub checkpoint_id: CheckpointId,
    pub mapping: StateMapping,
    /// Every checkpoint ID the job uses from now on is at least this.
    pub next_checkpoint_id: CheckpointId,
}

/// One registered job.
struct Job {
    id: JobId,
    spec: Arc<JobSpec>,
    fencing_token: u64,
    ids: SharedIdCounter,
    /// Orders ID allocation with sending, so every task sees ascending trigger IDs.
    trigger_order: tokio::sync::Mutex<()>,
    /// Serialises status changes and restores (which persist before they apply).
    admin: tokio::sync::Mutex<()>,
    state: Mutex<JobState>,
    /// Wakes the periodic scheduler when a slot frees or a checkpoint completes.
    wakeup: Notify,
    /// Serialises savepoint requests, so a repeated request id never starts a second one.
    savepoint_requests: tokio::sync::Mutex<()>,
    /// Orders writes of operation records (a Pending record never lands after its final
    /// one). Held from a savepoint's trigger until its Pending record is durable and its
    /// directory exists, so completing the savepoint and a detached caller's answer wait
    /// for it.
    operation_writes: Arc<tokio::sync::Mutex<()>>,
    /// Held by a completing savepoint from before its caller is answered until its index
    /// entry is written, so that listing (and disposal) after the answer finds it.
    savepoint_indexing: Arc<tokio::sync::Mutex<()>>,
    /// Bumped whenever an operation record changes; waiters watch it.
    operations_changed: watch::Sender<u64>,
    /// One retention pass at a time.
    retention: tokio::sync::Mutex<()>,
    /// Messages to the job's tasks that the gateway dropped (task manager not connected,
    /// or its stream buffer full). Counted outside the job lock, as sending is.
    undelivered: AtomicU64,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        // A panic while deciding would be a bug; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_fencing(&self, token: u64) -> Result<(), CoreError> {
        if token != 0 && token != self.fencing_token {
            return Err(CoreError::StaleFencingToken {
                job: self.id.clone(),
                got: token,
                expected: self.fencing_token,
            });
        }
        Ok(())
    }

    fn record(&self, status: JobStatus) -> JobRecord {
        JobRecord {
            spec: (*self.spec).clone(),
            status,
            fencing_token: self.fencing_token,
        }
    }
}

struct TaskManagerEntry {
    generation: u64,
    jobs: HashSet<JobId>,
}

struct Inner {
    jobs: RwLock<HashMap<JobId, Arc<Job>>>,
    /// Jobs whose persisted record could not be read at recovery, with why: every
    /// request for them answers with that error instead of "not registered", and the id
    /// cannot be registered over the damaged record.
    unreadable_jobs: RwLock<HashMap<String, String>>,
    task_managers: Mutex<HashMap<TaskManagerId, TaskManagerEntry>>,
    next_generation: AtomicU64,
    stores: Stores,
    gateway: Arc<dyn TaskGateway>,
    clock: Arc<dyn Clock>,
    config: CoordinatorConfig,
    shut_down: AtomicBool,
    /// Set by [`Coordinator::drain_savepoints`]: no new job is registered.
    draining: AtomicBool,
}

/// See [`Coordinator::pending_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCounts {
    pub jobs: usize,
    pub checkpoints: usize,
    pub savepoints: usize,
}

/// How often a draining coordinator looks whether its pending savepoints are done.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Handle to the coordinator core; cheap to clone, shared by every RPC handler.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    pub fn new(
        stores: Stores,
        gateway: Arc<dyn TaskGateway>,
        clock: Arc<dyn Clock>,
        config: CoordinatorConfig,
    ) -> Coordinator {
        Coordinator {
            inner: Arc::new(Inner {
                jobs: RwLock::new(HashMap::new()),
                unreadable_jobs: RwLock::new(HashMap::new()),
                task_managers: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(1),
                stores,
                gateway,
                clock,
                config,
                shut_down: AtomicBool::new(false),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    fn job(&self, job_id: &str) -> Result<Arc<Job>, CoreError> {
        let jobs = self.inner.jobs.read().unwrap_or_else(|e| e.into_inner());
        match jobs.get(job_id) {
            Some(job) => Ok(job.clone()),
            None => Err(self
                .unreadable(job_id)
                .unwrap_or_else(|| CoreError::JobNotFound(job_id.to_string()))),
        }
    }

    /// Whether `job` is still the registered job of its id and not shut down.
    fn is_registered(&self, job: &Arc<Job>) -> bool {
        let jobs = self.inner.jobs.read().unwrap_or_else(|e| e.into_inner());
        jobs.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) && !job.lock().shut_down
    }

    /// The error for a job whose record could not be read at recovery, if it is one.
    fn unreadable(&self, job_id: &str) -> Option<CoreError> {
        let unreadable = self
            .inner
            .unreadable_jobs
            .read()
            .unwrap_or_else(|e| e.into_inner());
        unreadable.get(job_id).map(|detail| {
            CoreError::Store(StoreError::Corrupted {
                path: format!("the record of job {job_id}"),
                detail: format!(
                    "{detail}; the job was not recovered: repair or remove the record in the data directory and restart"
                ),
            })
        })
    }

    fn new_job(&self, spec: JobSpec, status: JobStatus, fencing_token: u64) -> Arc<Job> {
        let spec = Arc::new(spec);
        let mut state = JobState::new(
            spec.clone(),
            fencing_token,
            status,
            self.inner.config.stats_history,
        );
        state.stats.report_to(self.inner.config.metrics.clone());
        Arc::new(Job {
            id: spec.job_id.clone(),
            fencing_token,
            ids: SharedIdCounter::new(
                spec.job_id.clone(),
                self.inner.stores.ids.clone(),
                self.inner.config.id_block_size,
            ),
            trigger_order: tokio::sync::Mutex::new(()),
            admin: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
            wakeup: Notify::new(),
            savepoint_requests: tokio::sync::Mutex::new(()),
            operation_writes: Arc::new(tokio::sync::Mutex::new(())),
            savepoint_indexing: Arc::new(tokio::sync::Mutex::new(())),
            operations_changed: watch::Sender::new(0),
            retention: tokio::sync::Mutex::new(()),
            undelivered: AtomicU64::new(0),
            spec,
        })
    }

    /// Loads the jobs persisted by an earlier run: registrations, status, retained
    /// checkpoints and the latest savepoint. Returns how many jobs came back.
    pub async fn recover(&self) -> Result<usize, CoreError> {
        let loaded = self.inner.stores.jobs.load_all().await?;
        for unreadable in loaded.unreadable {
            tracing::error!(
                job_id = unreadable.job_id,
                "job record unreadable, job not recovered: {}",
                unreadable.error
            );
            self.inner
                .unreadable_jobs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(unreadable.job_id, unreadable.error.to_string());
        }
        let records = loaded.records;
        let count = records.len();
        for record in records {
            let job = self.new_job(record.spec, record.status, record.fencing_token);
            let checkpoints = self.inner.stores.checkpoints.load_all(&job.id).await;
            match self.inner.stores.savepoints.resume_disposals(&job.id).await {
                Ok(0) => {}
                Ok(resumed) => {
                    tracing::info!(job_id = %job.id, resumed, "finished interrupted savepoint disposals")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job.id, "finishing interrupted savepoint disposals failed: {error}")
                }
            }
            let savepoints = self.inner.stores.savepoints.list(&job.id).await;
            // Knowing where this run's IDs begin tells late acks of the last run apart
            // from acks of IDs not issued yet (see `AckDecision::UnknownCheckpoint`).
            if let Err(error) = job.ids.prime().await {
                tracing::warn!(job_id = %job.id, "reserving checkpoint ids at recovery failed: {error}");
            }
            let mut effects = Effects::default();
            {
                let mut state = job.lock();
                match checkpoints {
                    Ok(checkpoints) => {
                        for snapshot in checkpoints {
                            state.max_issued_id = state.max_issued_id.max(snapshot.checkpoint_id);
                            state.stats.recover_latest(recovered_stats(&snapshot, None));
                            state.retain(Arc::new(snapshot), &mut effects);
                        }
                    }
                    Err(error) => {
                        tracing::error!(job_id = %job.id, "retained checkpoints unreadable: {error}");
                        state.checkpoint_store_error = Some(error.to_string());
                    }
                }
                match savepoints {
                    Ok(savepoints) => {
                        if let Some(latest) = savepoints.last() {
                            state.max_issued_id = state.max_issued_id.max(latest.checkpoint_id);
                            state.stats.recover_latest(SnapshotStats {
                                checkpoint_id: latest.checkpoint_id,
                                kind: SnapshotKind::Savepoint,
                                status: SnapshotStatus::Completed,
                                trigger_timestamp_ms: latest.trigger_timestamp_ms,
                                latest_ack_timestamp_ms: latest.completion_timestamp_ms,
                                completion_timestamp_ms: latest.completion_timestamp_ms,
                                acknowledged_subtasks: 0,
                                total_subtasks: 0,
                                state_size_bytes: latest.state_size_bytes,
                                duration_ms: latest
                                    .completion_timestamp_ms
                                    .saturating_sub(latest.trigger_timestamp_ms),
                                failure: None,
                                path: Some(latest.path.clone()),
                                subtasks: Vec::new(),
                                trigger: Some(latest.trigger),
                                full: true,
                            });
                        }
                    }
                    Err(error) => {
                        tracing::error!(job_id = %job.id, "savepoint index unreadable: {error}");
                    }
                }
                if state.status == JobStatus::Running {
                    self.start_scheduler(&job, &mut state);
                }
            }
            tracing::info!(job_id = %job.id, status = ?record.status, "job recovered");
            self.inner
                .jobs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.id.clone(), job.clone());
            self.carry_out(&job, effects);
            self.recover_operations(&job).await;
            self.start_savepoint_scheduler(&job);
            if job.spec.savepoint_policy.retires() {
                self.apply_retention(&job).await;
            }
        }
        Ok(count)
    }

    /// Registers a job; returns its fencing token.
    pub async fn register_job(&self, spec: JobSpec) -> Result<u64, CoreError> {
        if self.inner.shut_down.load(Ordering::Acquire)
            || self.inner.draining.load(Ordering::Acquire)
        {
            return Err(CoreError::ShutDown);
        }
        let spec = spec.validate().map_err(CoreError::InvalidArgument)?;
        if let Some(error) = self.unreadable(spec.job_id.as_str()) {
            return Err(error);
        }
        if let Some(dir) = &spec.savepoint_dir {
            self.check_within_roots("savepoint_dir", dir)?;
        }
        let savepoint_dir = spec
            .savepoint_dir
            .clone()
            .unwrap_or_else(|| self.inner.config.default_savepoint_dir.clone());
        self.inner
            .stores
            .savepoints
            .savepoint_path(&savepoint_dir, &spec.job_id, CheckpointId(1))
            .map_err(|e| CoreError::InvalidArgument(format!("savepoint_dir: {e}")))?;
        let fencing_token = random_token();
        let job = self.new_job(spec, JobStatus::Created, fencing_token);
        {
            let mut jobs = self.inner.jobs.write().unwrap_or_else(|e| e.into_inner());
            if jobs.contains_key(&job.id) {
                return Err(CoreError::JobAlreadyExists(job.id.clone()));
            }
            jobs.insert(job.id.clone(), job.clone());
        }
        if let Err(error) = self
            .inner
            .stores
            .jobs
            .save(&job.record(JobStatus::Created))
            .await
        {
            self.inner
                .jobs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&job.id);
            return Err(error.into());
        }
        self.start_savepoint_scheduler(&job);
        tracing::info!(job_id = %job.id, subtasks = job.spec.subtask_count(), "job registered");
        Ok(fencing_token)
    }

    /// Removes a job: pending snapshots fail with "coordinator shut down", its retained
    /// checkpoints are deleted; completed savepoints (user-owned) and its ID counter stay,
    /// so a job registered again under the same id never reuses a savepoint path.
    pub async fn unregister_job(&self, job_id: &str) -> Result<(), CoreError> {
        let job = {
            let mut jobs = self.inner.jobs.write().unwrap_or_else(|e| e.into_inner());
            jobs.remove(job_id)
                .ok_or_else(|| CoreError::JobNotFound(job_id.to_string()))?
        };
        let _admin = job.admin.lock().await;
        self.shut_down_job(&job, "job was unregistered");
        self.inner.stores.jobs.remove(&job.id).await?;
        self.inner.stores.checkpoints.remove_all(&job.id).await?;
        tracing::info!(job_id = %job.id, "job unregistered");
        Ok(())
    }

    fn shut_down_job(&self, job: &Arc<Job>, why: &str) {
        let mut effects = Effects::default();
        {
            let mut state = job.lock();
            state.shut_down = true;
            stop_scheduler(&mut state);
            if let Some(scheduler) = state.savepoint_scheduler.take() {
                scheduler.abort();
            }
            let failure = SnapshotFailure::new(
                FailureReason::CoordinatorShutDown,
                format!("coordinator shut down: {why}"),
            );
            state.abort_all(None, &failure, self.inner.clock.now_ms(), &mut effects);
        }
        self.carry_out(job, effects);
    }

    /// The first step of a graceful shutdown: takes no new snapshot (triggers are refused
    /// with COORDINATOR_SHUT_DOWN, periodic schedules stop, no job is registered) and waits
    /// up to `bound` for the savepoints already pending to complete, since a user waits for
    /// each of them; pending checkpoints are left to [`shutdown`](Self::shutdown). Returns
    /// how many savepoints were still pending at the bound.
    pub async fn drain_savepoints(&self, bound: std::time::Duration) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        let jobs = self.all_jobs();
        for job in &jobs {
            let mut state = job.lock();
            state.draining = true;
            stop_scheduler(&mut state);
            if let Some(scheduler) = state.savepoint_scheduler.take() {
                scheduler.abort();
            }
        }
        let pending = || -> usize { jobs.iter().map(|j| j.lock().savepoints.pending.len()).sum() };
        if pending() > 0 {
            tracing::info!(
                pending = pending(),
                ?bound,
                "waiting for pending savepoints before shutting down"
            );
        }
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let left = pending();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            let next_look = tokio::time::Instant::now() + DRAIN_POLL;
            tokio::time::sleep_until(deadline.min(next_look)).await;
        }
    }

    /// How many jobs there are and how many snapshots they have pending: a few counter
    /// reads under each job's lock, for metrics scrapes.
    pub fn pending_counts(&self) -> PendingCounts {
        let jobs = self.all_jobs();
        let mut counts = PendingCounts {
            jobs: jobs.len(),
            ..PendingCounts::default()
        };
        for job in &jobs {
            let state = job.lock();
            counts.checkpoints += state.checkpoints.pending.len();
            counts.savepoints += state.savepoints.pending.len();
        }
        counts
    }

    fn all_jobs(&self) -> Vec<Arc<Job>> {
        self.inner
            .jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stops every job's coordinator: all pending results fail, completed savepoints stay.
    pub fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        for job in self.all_jobs() {
            self.shut_down_job(&job, "the server is shutting down");
        }
    }

    /// Applies a job status change: RUNNING starts the periodic scheduler; leaving
    /// RUNNING stops it and fails every pending snapshot with JOB_NOT_RUNNING.
    pub async fn update_job_status(
        &self,
        job_id: &str,
        status: JobStatus,
    ) -> Result<(), CoreError> {
        let job = self.job(job_id)?;
        let _admin = job.admin.lock().await;
        self.inner.stores.jobs.save(&job.record(status)).await?;
        let mut effects = Effects::default();
        {
            let mut state = job.lock();
            let previous = state.status;
            state.status = status;
            if status == JobStatus::Running && previous != JobStatus::Running {
                state.consecutive_failures = 0;
                state.failing = false;
                self.start_scheduler(&job, &mut state);
            } else if status != JobStatus::Running && previous == JobStatus::Running {
                stop_scheduler(&mut state);
                let failure = SnapshotFailure::new(
                    FailureReason::JobNotRunning,
                    format!("job {} left RUNNING (now {status})", job.id),
                );
                state.abort_all(None, &failure, self.inner.clock.now_ms(), &mut effects);
            }
            tracing::info!(job_id = %job.id, from = ?previous, to = ?status, "job status changed");
        }
        self.carry_out(&job, effects);
        Ok(())
    }

    /// Triggers a savepoint into `target_dir` (else the job's or the server's default).
    /// Bypasses the periodic policy; refused at once if the job cannot take it.
    pub async fn trigger_savepoint(
        &self,
        job_id: &str,
        target_dir: Option<String>,
    ) -> Result<SnapshotHandle, CoreError> {
        let job = self.job(job_id)?;
        let target = target_dir
            .filter(|d| !d.trim().is_empty())
            .or_else(|| job.spec.savepoint_dir.clone())
            .unwrap_or_else(|| self.inner.config.default_savepoint_dir.clone());
        let handle = self
            .start_savepoint(&job, SavepointRequest::manual(Some(target)))
            .await?
            .handle;
        Ok(handle.expect("a request without a request id always starts a savepoint"))
    }

    /// Triggers a checkpoint now, outside the periodic schedule and its limits.
    pub async fn trigger_checkpoint(&self, job_id: &str) -> Result<SnapshotHandle, CoreError> {
        let job = self.job(job_id)?;
        self.trigger(
            &job,
            SnapshotKind::Checkpoint,
            false,
            None,
            SnapshotOptions::default(),
        )
        .await
    }

    /// Takes an ID, starts the pending snapshot and sends the triggers. A savepoint with
    /// an operation gets its Pending record written before anything can finish it.
    async fn trigger(
        &self,
        job: &Arc<Job>,
        kind: SnapshotKind,
        periodic: bool,
        target_dir: Option<String>,
        options: SnapshotOptions,
    ) -> Result<SnapshotHandle, CoreError> {
        let refused = |failure: SnapshotFailure| CoreError::TriggerRefused {
            job: job.id.clone(),
            kind,
            failure,
        };
        if let Some(target) = &target_dir {
            // Validate the target before an ID is spent on it.
            self.inner
                .stores
                .savepoints
                .savepoint_path(target, &job.id, CheckpointId(1))
                .map_err(|e| CoreError::InvalidArgument(format!("target_directory: {e}")))?;
        }
        let _order = job.trigger_order.lock().await;
        job.lock()
            .check_trigger(periodic, Instant::now())
            .map_err(refused)?;
        let id = job.ids.next().await.map_err(|e| {
            refused(SnapshotFailure::new(
                FailureReason::StoreIo,
                format!("could not reserve a checkpoint id: {e}"),
            ))
        })?;
        let location = match &target_dir {
            None => self
                .inner
                .stores
                .owned_state
                .checkpoint_location(&job.id, id),
            Some(target) => self
                .inner
                .stores
                .savepoints
                .savepoint_path(target, &job.id, id)
                .map_err(|e| CoreError::InvalidArgument(format!("target_directory: {e}")))?,
        };
        let path = target_dir.as_ref().map(|_| location.clone());
        let (sender, receiver) = oneshot::channel();
        // Held until the Pending record is durable: later records of the job queue
        // behind it, and so does storing the savepoint (see `complete`).
        let operation_order = match &options.operation_id {
            Some(_) => Some(job.operation_writes.clone().lock_owned().await),
            None => None,
        };
        let mut operation = None;
        let messages = {
            let mut state = job.lock();
            // The state may have changed while the ID was being reserved.
            state
                .check_trigger(periodic, Instant::now())
                .map_err(refused)?;
            if options.action != PostSnapshotAction::None
                && let Some(stop) = state.stopping
            {
                return Err(CoreError::FailedPrecondition(format!(
                    "stop-with-savepoint {stop} of job {} is already in progress",
                    job.id
                )));
            }
            let now_ms = self.inner.clock.now_ms();
            if let (Some(operation_id), Some(trigger)) = (&options.operation_id, options.trigger) {
                let record = SavepointOperation {
                    operation_id: operation_id.clone(),
                    job_id: job.id.clone(),
                    checkpoint_id: id,
                    trigger,
                    drain: options.action == PostSnapshotAction::Drain,
                    path: location.clone(),
                    trigger_timestamp_ms: now_ms,
                    outcome: OperationOutcome::Pending,
                };
                let mut ignored = Effects::default();
                state.record_operation(record.clone(), &mut ignored);
                operation = Some(record);
            }
            let timeout = state.spec.policy.timeout;
            let (pending, messages) = state.start_pending(
                id,
                kind,
                periodic,
                now_ms,
                location,
                target_dir,
                options,
                Some(sender),
            );
            let coordinator = self.clone();
            let expiring = job.clone();
            pending.timeout = Some(
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    coordinator.expire(&expiring, id);
                })
                .abort_handle(),
            );
            messages
        };
        if let (Some(operation), Some(order)) = (operation, operation_order) {
            job.operations_changed.send_modify(|n| *n += 1);
            self.prepare_savepoint(job, id, operation, order);
        }
        tracing::debug!(job_id = %job.id, checkpoint_id = %id, %kind, periodic, "snapshot triggered");
        self.send_all(job, messages);
        Ok(SnapshotHandle {
            checkpoint_id: id,
            path,
            result: receiver,
        })
    }

    /// Writes a savepoint's Pending record and prepares its directory while its tasks
    /// take the snapshot, holding `order` until both are done. The savepoint completes
    /// and is indexed only after that (`complete` waits for `order`): otherwise it could
    /// complete while its request id is not yet recorded, and after a crash a repeat of
    /// the request would take a second savepoint. If either fails, the savepoint fails.
    fn prepare_savepoint(
        &self,
        job: &Arc<Job>,
        id: CheckpointId,
        operation: SavepointOperation,
        order: tokio::sync::OwnedMutexGuard<()>,
    ) {
        let coordinator = self.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let stores = &coordinator.inner.stores;
            let prepared = match stores.operations.save(&operation).await {
                Err(error) => Err(format!(
                    "recording savepoint operation {} failed: {error}",
                    operation.operation_id
                )),
                Ok(()) => stores
                    .savepoints
                    .prepare(&operation.path)
                    .await
                    .map_err(|error| {
                        format!(
                            "creating savepoint directory {} failed: {error}",
                            operation.path
                        )
                    }),
            };
            if let Err(message) = prepared {
                let failure = SnapshotFailure::new(FailureReason::StoreIo, message);
                let mut effects = Effects::default();
                job.lock()
                    .abort(id, failure, coordinator.inner.clock.now_ms(), &mut effects);
                coordinator.carry_out(&job, effects);
            }
            drop(order);
        });
    }

    fn expire(&self, job: &Arc<Job>, id: CheckpointId) {
        let mut effects = Effects::default();
        {
            let mut state = job.lock();
            let progress = state
                .checkpoints
                .pending
                .get(&id)
                .or_else(|| state.savepoints.pending.get(&id))
                .map(|p| (p.kind, p.acknowledged_count(), p.awaited.len(), p.storing));
            let Some((kind, acknowledged, total, storing)) = progress else {
                return;
            };
            let timeout_ms = state.spec.policy.timeout.as_millis();
            let message = if storing {
                format!(
                    "{kind} {id} expired after {timeout_ms} ms while its metadata was being stored"
                )
            } else {
                format!(
                    "{kind} {id} expired after {timeout_ms} ms: {acknowledged} of {total} tasks acknowledged"
                )
            };
            let failure = SnapshotFailure::new(FailureReason::Expired, message);
            state.abort(id, failure, self.inner.clock.now_ms(), &mut effects);
        }
        self.carry_out(job, effects);
    }

    /// Takes an acknowledgement. Never waits on I/O: a completing snapshot is stored by
    /// its own task.
    pub fn acknowledge(&self, job_id: &str, ack: Acknowledgement) -> Result<AckOutcome, CoreError> {
        let job = self.job(job_id)?;
        job.check_fencing(ack.fencing_token)?;
        let now_ms = self.inner.clock.now_ms();
        let decision =
            job.lock()
                .acknowledge(ack.checkpoint_id, ack.attempt_id, ack.handles, now_ms);
        let owned_location = || {
            self.inner
                .stores
                .owned_state
                .checkpoint_location(&job.id, ack.checkpoint_id)
        };
        let outcome = match decision {
            AckDecision::Recorded => AckOutcome::Recorded,
            AckDecision::Duplicate => AckOutcome::Duplicate,
            AckDecision::UnknownCheckpoint { handles } => {
                // An id this run may still issue is left alone: its tasks will write
                // their state under that location once it is triggered.
                if job.ids.from_earlier_run(ack.checkpoint_id) {
                    self.discard_later(owned_location(), handles);
                }
                AckOutcome::UnknownCheckpoint
            }
            AckDecision::Discard {
                late,
                location,
                handles,
            } => {
                self.discard_later(location.unwrap_or_else(owned_location), handles);
                if late {
                    AckOutcome::Late
                } else {
                    AckOutcome::NotAwaited
                }
            }
            AckDecision::Complete(completing) => {
                let coordinator = self.clone();
                tokio::spawn(async move { coordinator.complete(job, *completing).await });
                AckOutcome::Completing
            }
        };
        self.inner.config.metrics.acknowledgement(outcome);
        Ok(outcome)
    }

    /// Stores a fully acknowledged snapshot (no lock held), then records the outcome.
    /// If the snapshot was aborted while being stored (timeout, subsumption, shutdown),
    /// whatever was written is removed again: the caller was told it failed.
    ///
    /// A savepoint is complete once its metadata and its Pending operation record are
    /// durable (the two are written at the same time): its caller hears of it then, and
    /// the savepoint is indexed after, before its Completed record is written (the
    /// operation stays Pending on record if indexing fails). A savepoint a crash leaves
    /// between its answer and its index entry is indexed by `recover_operations`, from
    /// its Pending record and its metadata. Listing waits for the index entry
    /// (`savepoint_indexing`). A crash before the Pending record is durable can leave a
    /// directory with metadata that no record names and nobody was told of.
    async fn complete(&self, job: Arc<Job>, completing: Completing) {
        let Completing {
            kind,
            location,
            target_dir,
            trigger,
            snapshot,
        } = completing;
        let id = snapshot.checkpoint_id;
        let stores = &self.inner.stores;
        // The trigger holds this lock until the savepoint's Pending record is durable and
        // its directory exists (`prepare_savepoint`). The metadata is written meanwhile:
        // nobody hears of the savepoint, nor is it indexed, before the record is durable.
        let recorded = async {
            if kind == SnapshotKind::Savepoint {
                drop(job.operation_writes.lock().await);
            }
        };
        // Aborted meanwhile (it expired, it was declined): nothing to store.
        let still_storing = job.lock().is_storing(id, kind);
        let store = async {
            match snapshot.check_consistent() {
                _ if !still_storing => Err(SnapshotFailure::new(
                    FailureReason::Finalize,
                    format!("{kind} {id} ended before it was stored"),
                )),
                Err(error) => Err(SnapshotFailure::new(
                    FailureReason::Finalize,
                    format!("finalizing {kind} {id} failed: {error}"),
                )),
                Ok(()) => match &target_dir {
                    None => stores.checkpoints.add(&snapshot).await.map(|()| None),
                    Some(target) => stores
                        .savepoints
                        .write_metadata(target, &snapshot)
                        .await
                        .map(Some),
                }
                .map_err(|error| store_failure(kind, id, error)),
            }
        };
        let ((), stored) = tokio::join!(recorded, store);
        // Taken before the savepoint shows as completed anywhere (also while a stop's
        // FINISHED status is written below), released once it is indexed.
        let indexing = match (kind, &stored) {
            (SnapshotKind::Savepoint, Ok(_)) => {
                Some(job.savepoint_indexing.clone().lock_owned().await)
            }
            _ => None,
        };
        let mut effects = Effects::default();
        let mut to_index = None;
        let aborted_meanwhile = {
            let mut state = job.lock();
            let now_ms = self.inner.clock.now_ms();
            match (state.take_stored(id, kind), stored) {
                (Some(pending), Ok(path)) => {
                    if let Some(path) = &path {
                        let trigger = trigger.unwrap_or(SavepointTrigger::Manual);
                        to_index = Some(SavepointRecord::of(&snapshot, path.clone(), trigger));
                    }
                    state.complete(
                        pending,
                        Arc::new(snapshot),
                        path,
                        now_ms,
                        Instant::now(),
                        &mut effects,
                    );
                    if effects.finished {
                        stop_scheduler(&mut state);
                    }
                    None
                }
                (Some(pending), Err(failure)) => {
                    let handles = snapshot_handles(snapshot);
                    state.fail(pending, Some(handles), failure, now_ms, &mut effects);
                    None
                }
                (None, stored) => Some((stored, snapshot)),
            }
        };
        if effects.finished {
            // FINISHED is durable before the caller hears that the stop succeeded.
            let _admin = job.admin.lock().await;
            if let Err(error) = stores.jobs.save(&job.record(JobStatus::Finished)).await {
                tracing::error!(job_id = %job.id, "persisting status FINISHED failed: {error}");
            }
        }
        let retire = kind == SnapshotKind::Savepoint
            && aborted_meanwhile.is_none()
            && job.spec.savepoint_policy.retires();
        match to_index {
            None => self.carry_out(&job, effects),
            Some(record) => {
                let (completed, operations): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut effects.operations)
                        .into_iter()
                        .partition(|o| o.checkpoint_id == id);
                let forgotten = std::mem::take(&mut effects.forgotten_operations);
                // The caller hears of it now (the operation is Completed in memory).
                job.operations_changed.send_modify(|n| *n += 1);
                self.carry_out(&job, effects);
                self.persist_operations(&job, operations, forgotten);
                if self.index_savepoint(&record).await {
                    self.persist_operations(&job, completed, Vec::new());
                } else {
                    // Its operation stays Pending on record until it is indexed.
                    for operation in completed {
                        self.resolve_later(&job, operation);
                    }
                }
            }
        }
        drop(indexing);
        if retire {
            self.apply_retention(&job).await;
        }
        if let Some((stored, snapshot)) = aborted_meanwhile {
            tracing::info!(job_id = %job.id, checkpoint_id = %id, %kind, "snapshot ended while its metadata was being stored; removing what was written");
            match stored {
                Ok(Some(path)) => {
                    if let Err(error) = stores.savepoints.dispose(&path).await.map(|_| ()) {
                        tracing::warn!(
                            path,
                            "removing the savepoint of a failed snapshot failed, so its state is kept: {error}"
                        );
                        return;
                    }
                }
                Ok(None) => {
                    if let Err(error) = stores.checkpoints.remove(&job.id, id).await {
                        tracing::warn!(job_id = %job.id, checkpoint_id = %id, "removing the metadata of a failed checkpoint failed, so its state is kept: {error}");
                        return;
                    }
                }
                Err(_) => {}
            }
            discard(stores, &location, &snapshot_handles(snapshot)).await;
        }
    }

    /// Adds a completed savepoint to its job's index, trying a few times: its caller
    /// already knows it as complete. If the store keeps refusing, the savepoint stays
    /// restorable from its path, its operation stays Pending on record, and it is tried
    /// again in the background (`resolve_later`) and by the next recovery. Whether it
    /// was indexed.
    async fn index_savepoint(&self, record: &SavepointRecord) -> bool {
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            match self.inner.stores.savepoints.index(record).await {
                Ok(()) => return true,
                Err(error) if attempt == ATTEMPTS => tracing::error!(
                    job_id = %record.job_id,
                    checkpoint_id = %record.checkpoint_id,
                    path = record.path,
                    "the savepoint is complete but indexing it failed; it is restorable from its path and indexing is tried again later: {error}"
                ),
                Err(error) => {
                    tracing::warn!(job_id = %record.job_id, checkpoint_id = %record.checkpoint_id, attempt, "indexing a savepoint failed, trying again: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                }
            }
        }
        false
    }

    /// Takes a decline: aborts the snapshot with the task's reason. Returns whether a
    /// pending snapshot was aborted (false for late or unknown declines).
    pub fn decline(
        &self,
        job_id: &str,
        checkpoint_id: CheckpointId,
        attempt_id: AttemptId,
        reason: &str,
        fencing_token: u64,
    ) -> Result<bool, CoreError> {
        let job = self.job(job_id)?;
        job.check_fencing(fencing_token)?;
        let mut effects = Effects::default();
        let aborted = {
            let mut state = job.lock();
            let awaited = state
                .checkpoints
                .pending
                .get(&checkpoint_id)
                .or_else(|| state.savepoints.pending.get(&checkpoint_id))
                .map(|p| {
                    !p.storing && (p.awaits(attempt_id) || p.trigger_attempts.contains(&attempt_id))
                });
            match awaited {
                Some(true) => {
                    let task = state
                        .tasks
                        .index_of_attempt(attempt_id)
                        .map(|i| state.tasks.subtask_ref(i).to_string())
                        .unwrap_or_else(|| format!("attempt {attempt_id}"));
                    let failure = SnapshotFailure::new(
                        FailureReason::Declined,
                        format!("task {task} declined snapshot {checkpoint_id}: {reason}"),
                    );
                    state.abort(
                        checkpoint_id,
                        failure,
                        self.inner.clock.now_ms(),
                        &mut effects,
                    )
                }
                _ => false,
            }
        };
        self.carry_out(&job, effects);
        Ok(aborted)
    }

    /// Starts a task manager session; a reconnect gets a new generation, so the end of
    /// the old stream does not disturb the new one.
    pub fn connect_task_manager(&self, tm: &TaskManagerId) -> u64 {
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut tms = self
            .inner
            .task_managers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = tms.entry(tm.clone()).or_insert_with(|| TaskManagerEntry {
            generation,
            jobs: HashSet::new(),
        });
        entry.generation = generation;
        generation
    }

    /// Registers (or re-registers after a reconnect) a task attempt hosted by `tm`.
    pub fn register_task(
        &self,
        tm: &TaskManagerId,
        task: &TaskRegistration,
    ) -> Result<(), CoreError> {
        let job = self.job(&task.job_id)?;
        if task.attempt_id.0 == 0 {
            return Err(CoreError::InvalidArgument(
                "attempt_id must not be 0".to_string(),
            ));
        }
        let mut effects = Effects::default();
        {
            let mut state = job.lock();
            let index = state
                .tasks
                .index_of(&task.vertex_id, task.subtask_index)
                .ok_or_else(|| {
                    CoreError::InvalidArgument(format!(
                        "job {} has no subtask {}#{}",
                        job.id, task.vertex_id, task.subtask_index
                    ))
                })?;
            let registered = state
                .tasks
                .register(index, task.attempt_id, task.state, tm.clone())
                .map_err(CoreError::InvalidArgument)?;
            let now_ms = self.inner.clock.now_ms();
            if let Some(old) = registered.replaced {
                let why = format!(
                    "subtask {}#{} was restarted (attempt {old} replaced by {})",
                    task.vertex_id, task.subtask_index, task.attempt_id
                );
                state.abort_waiting_for(old, &why, now_ms, &mut effects);
            }
            if task.state.is_terminal() {
                let why = format!(
                    "task {}#{} registered as {}",
                    task.vertex_id, task.subtask_index, task.state
                );
                state.abort_waiting_for(task.attempt_id, &why, now_ms, &mut effects);
            }
        }
        if let Some(entry) = self
            .inner
            .task_managers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(tm)
        {
            entry.jobs.insert(job.id.clone());
        }
        self.carry_out(&job, effects);
        Ok(())
    }

    /// The task manager hosting `attempt_id` as a current attempt of the job, if any;
    /// lets the service layer refuse a task manager acting for another one's tasks.
    pub fn task_manager_of(
        &self,
        job_id: &str,
        attempt_id: AttemptId,
    ) -> Result<Option<TaskManagerId>, CoreError> {
        let job = self.job(job_id)?;
        let host = job.lock().tasks.task_manager_of(attempt_id).cloned();
        Ok(host)
    }

    /// Applies a state change of a current attempt.
    pub fn update_task_state(
        &self,
        job_id: &str,
        attempt_id: AttemptId,
        state: TaskState,
    ) -> Result<(), CoreError> {
        let job = self.job(job_id)?;
        let mut effects = Effects::default();
        job.lock()
            .set_task_state(attempt_id, state, self.inner.clock.now_ms(), &mut effects)
            .map_err(CoreError::NotFound)?;
        self.carry_out(&job, effects);
        Ok(())
    }

    /// The stream of `tm` (session `generation`) ended: its attempts count as lost, and
    /// the snapshots waiting for them fail.
    pub fn disconnect_task_manager(&self, tm: &TaskManagerId, generation: u64) {
        let jobs = {
            let mut tms = self
                .inner
                .task_managers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match tms.get(tm) {
                Some(entry) if entry.generation == generation => {
                    tms.remove(tm).map(|e| e.jobs).unwrap_or_default()
                }
                _ => return,
            }
        };
        for job_id in jobs {
            let Ok(job) = self.job(job_id.as_str()) else {
                continue;
            };
            let mut effects = Effects::default();
            {
                let mut state = job.lock();
                let now_ms = self.inner.clock.now_ms();
                for attempt in state.tasks.lose_task_manager(tm) {
                    let why = format!("task manager {tm} hosting attempt {attempt} disconnected");
                    state.abort_waiting_for(attempt, &why, now_ms, &mut effects);
                }
            }
            self.carry_out(&job, effects);
        }
        tracing::info!(task_manager = %tm, "task manager disconnected");
    }

    /// Maps the savepoint at `path` onto the job (all subtasks must be CREATED) and moves
    /// the job's ID counter above the savepoint's id.
    pub async fn restore_savepoint(
        &self,
        job_id: &str,
        path: &str,
        allow_non_restored_state: bool,
    ) -> Result<Restored, CoreError> {
        self.restore_savepoint_with(job_id, path, allow_non_restored_state, ClaimMode::NoClaim)
            .await
    }

    /// Like [`Self::restore_savepoint`], with a claim mode: CLAIM makes the snapshot a
    /// retained checkpoint of the job (deleted once subsumed); NO_CLAIM leaves it alone
    /// and makes the job's next checkpoint a full one.
    pub async fn restore_savepoint_with(
        &self,
        job_id: &str,
        path: &str,
        allow_non_restored_state: bool,
        claim_mode: ClaimMode,
    ) -> Result<Restored, CoreError> {
        let job = self.job(job_id)?;
        if path.trim().is_empty() {
            return Err(CoreError::InvalidArgument("path must not be empty".into()));
        }
        self.check_within_roots("path", path)?;
        let _admin = job.admin.lock().await;
        let mut snapshot = self
            .inner
            .stores
            .savepoints
            .read(path)
            .await
            .map_err(|error| match error {
                StoreError::InvalidLocation { .. } => {
                    CoreError::InvalidArgument(format!("path: {error}"))
                }
                other => other.into(),
            })?;
        let restored = self
            .apply_restore(
                &job,
                &snapshot,
                Some(path.to_string()),
                allow_non_restored_state,
                Some(claim_mode),
            )
            .await?;
        let mut effects = Effects::default();
        match claim_mode {
            ClaimMode::NoClaim => job.lock().next_checkpoint_full = true,
            ClaimMode::Claim => {
                snapshot.job_id = job.id.clone();
                snapshot.claimed_path = Some(path.to_string());
                self.inner.stores.checkpoints.add(&snapshot).await?;
                job.lock().retain(Arc::new(snapshot), &mut effects);
            }
        }
        self.carry_out(&job, effects);
        Ok(restored)
    }

    /// Maps the latest retained checkpoint onto the job (failover).
    pub async fn restore_latest_checkpoint(
        &self,
        job_id: &str,
        allow_non_restored_state: bool,
    ) -> Result<Restored, CoreError> {
        let job = self.job(job_id)?;
        let _admin = job.admin.lock().await;
        let latest = {
            let state = job.lock();
            if let Some(error) = &state.checkpoint_store_error {
                return Err(CoreError::Store(StoreError::Corrupted {
                    path: format!("retained checkpoints of job {}", job.id),
                    detail: error.clone(),
                }));
            }
            state.retained.back().cloned()
        };
        let latest = latest.ok_or_else(|| {
            CoreError::NotFound(format!(
                "job {} has no completed checkpoint to restore",
                job.id
            ))
        })?;
        self.apply_restore(&job, &latest, None, allow_non_restored_state, None)
            .await
    }

    async fn apply_restore(
        &self,
        job: &Arc<Job>,
        snapshot: &CompletedSnapshot,
        path: Option<String>,
        allow_non_restored_state: bool,
        claim_mode: Option<ClaimMode>,
    ) -> Result<Restored, CoreError> {
        let mapping = {
            let state = job.lock();
            state
                .tasks
                .all_created()
                .map_err(CoreError::FailedPrecondition)?;
            restore::map_snapshot(&state.spec, snapshot, allow_non_restored_state)
                .map_err(CoreError::FailedPrecondition)?
        };
        let next_checkpoint_id = job.ids.advance_past(snapshot.checkpoint_id).await?;
        {
            let mut state = job.lock();
            state.max_issued_id = state.max_issued_id.max(snapshot.checkpoint_id);
            state.stats.record_restore(RestoreStats {
                checkpoint_id: snapshot.checkpoint_id,
                path,
                timestamp_ms: self.inner.clock.now_ms(),
                claim_mode,
            });
        }
        tracing::info!(job_id = %job.id, checkpoint_id = %snapshot.checkpoint_id, "state restored");
        Ok(Restored {
            checkpoint_id: snapshot.checkpoint_id,
            mapping,
            next_checkpoint_id,
        })
    }

    /// Statistics of the job's snapshots.
    pub fn job_stats(&self, job_id: &str) -> Result<JobStats, CoreError> {
        let job = self.job(job_id)?;
        let mut stats = job.lock().job_stats(self.inner.clock.now_ms());
        stats.undelivered_messages = job.undelivered.load(Ordering::Relaxed);
        Ok(stats)
    }

    /// Ids of the registered jobs, sorted.
    pub fn job_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self
            .inner
            .jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Fencing token of a job (echoed by task managers).
    pub fn fencing_token(&self, job_id: &str) -> Result<u64, CoreError> {
        Ok(self.job(job_id)?.fencing_token)
    }

    fn start_scheduler(&self, job: &Arc<Job>, state: &mut JobState) {
        stop_scheduler(state);
        if state.spec.policy.interval.is_none() {
            return;
        }
        let generation = state.periodic.generation;
        let coordinator = self.clone();
        let scheduled = job.clone();
        state.periodic.scheduler = Some(
            tokio::spawn(async move { coordinator.run_scheduler(scheduled, generation).await })
                .abort_handle(),
        );
    }

    /// The periodic checkpoint loop of one job; ends when the job leaves RUNNING.
    async fn run_scheduler(self, job: Arc<Job>, generation: u64) {
        loop {
            let step = {
                let mut state = job.lock();
                if state.periodic.generation != generation {
                    return;
                }
                state.next_periodic_step(Instant::now())
            };
            match step {
                SchedulerStep::Stop => return,
                SchedulerStep::TriggerNow => {
                    if let Err(error) = self
                        .trigger(
                            &job,
                            SnapshotKind::Checkpoint,
                            true,
                            None,
                            SnapshotOptions::default(),
                        )
                        .await
                    {
                        tracing::debug!(job_id = %job.id, "periodic checkpoint not triggered: {error}");
                    }
                }
                SchedulerStep::SleepUntil(when) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(when) => {}
                        _ = job.wakeup.notified() => {}
                    }
                }
                SchedulerStep::WaitForSlot => job.wakeup.notified().await,
            }
        }
    }

    /// Sends `messages` of `job` through the gateway, counting those it dropped.
    fn send_all(&self, job: &Job, messages: Vec<(TaskManagerId, TaskMessage)>) {
        for (tm, message) in messages {
            if !self.inner.gateway.send(&tm, message) {
                job.undelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Carries out decided effects: sends messages and results at once, and leaves
    /// store deletions to a background task.
    fn carry_out(&self, job: &Arc<Job>, effects: Effects) {
        let Effects {
            messages,
            results,
            discards,
            evicted,
            wake_scheduler,
            operations,
            forgotten_operations,
            finished: _,
        } = effects;
        self.send_all(job, messages);
        for (sender, result) in results {
            let _ = sender.send(result);
        }
        if wake_scheduler {
            job.wakeup.notify_one();
        }
        if !operations.is_empty() || !forgotten_operations.is_empty() {
            job.operations_changed.send_modify(|n| *n += 1);
            self.persist_operations(job, operations, forgotten_operations);
        }
        if evicted.is_empty() && discards.is_empty() {
            return;
        }
        let stores = self.inner.stores.clone();
        let job_id = job.id.clone();
        tokio::spawn(async move {
            for (id, handles, claimed_path) in evicted {
                if let Err(error) = stores.checkpoints.remove(&job_id, id).await {
                    // Still retained as far as the store knows (a deposed leader's removal
                    // is refused): its state must stay for whoever loads it.
                    tracing::warn!(%job_id, checkpoint_id = %id, "removing a retired checkpoint failed, so its state is kept: {error}");
                    continue;
                }
                if let Some(path) = claimed_path {
                    // A claimed savepoint: the job owns all of it now.
                    if let Err(error) = stores.savepoints.dispose(&path).await {
                        tracing::warn!(%job_id, path, "disposing a subsumed claimed snapshot failed: {error}");
                    }
                    continue;
                }
                let location = stores.owned_state.checkpoint_location(&job_id, id);
                discard(&stores, &location, &handles).await;
            }
            for (location, handles) in discards {
                discard(&stores, &location, &handles).await;
            }
        });
    }

    fn discard_later(&self, location: String, handles: Vec<StateHandle>) {
        let owns_references = handles
            .iter()
            .any(|h| matches!(h.data, StateData::Reference { .. }));
        if !owns_references {
            return;
        }
        let stores = self.inner.stores.clone();
        tokio::spawn(async move { discard(&stores, &location, &handles).await });
    }
}

async fn discard(stores: &Stores, location: &str, handles: &[StateHandle]) {
    if let Err(error) = stores.owned_state.discard(location, handles).await {
        tracing::warn!(location, "discarding state failed: {error}");
    }
}

/// The failure of a completion whose metadata the store did not take: FINALIZE when the
/// metadata could not be built (encoded), STORE_IO when writing it failed.
fn store_failure(kind: SnapshotKind, id: CheckpointId, error: StoreError) -> SnapshotFailure {
    match error {
        StoreError::Encode { .. } => SnapshotFailure::new(
            FailureReason::Finalize,
            format!("finalizing the metadata of {kind} {id} failed: {error}"),
        ),
        _ => SnapshotFailure::new(
            FailureReason::StoreIo,
            format!("storing the metadata of {kind} {id} failed: {error}"),
        ),
    }
}

fn stop_scheduler(state: &mut JobState) {
    if let Some(scheduler) = state.periodic.scheduler.take() {
        scheduler.abort();
    }
    state.periodic.generation += 1;
    state.periodic.next_due = None;
}

fn snapshot_handles(snapshot: CompletedSnapshot) -> Vec<StateHandle> {
    snapshot
        .vertices
        .into_iter()
        .flat_map(|v| v.subtasks)
        .flat_map(|s| s.handles)
        .collect()
}

fn recovered_stats(snapshot: &CompletedSnapshot, path: Option<String>) -> SnapshotStats {
    SnapshotStats {
        checkpoint_id: snapshot.checkpoint_id,
        kind: snapshot.kind,
        status: SnapshotStatus::Completed,
        trigger_timestamp_ms: snapshot.trigger_timestamp_ms,
        latest_ack_timestamp_ms: snapshot.completion_timestamp_ms,
        completion_timestamp_ms: snapshot.completion_timestamp_ms,
        acknowledged_subtasks: snapshot
            .vertices
            .iter()
            .map(|v| v.subtasks.len() as u32)
            .sum(),
        total_subtasks: snapshot
            .vertices
            .iter()
            .map(|v| v.subtasks.len() as u32)
            .sum(),
        state_size_bytes: snapshot.state_size_bytes(),
        duration_ms: snapshot
            .completion_timestamp_ms
            .saturating_sub(snapshot.trigger_timestamp_ms),
        failure: None,
        path,
        subtasks: Vec::new(),
        trigger: None,
        full: false,
    }
}

/// A non-zero token that differs between registrations and server runs.
fn random_token() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests;
