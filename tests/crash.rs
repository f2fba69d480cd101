//! Crash test (issue 4, item 1): `savepointd` runs as a real child process on the
//! filesystem store and is killed with SIGKILL at random moments while savepoints and
//! periodic checkpoints are in flight, then restarted on the same data directory. After
//! every restart and at the end it checks what the server promised:
//!
//! - every savepoint a client was told is COMPLETED is still listed, its metadata file
//!   is byte for byte what it was right after completion, and RestoreSavepoint maps it
//!   onto a fresh job with exactly the state the task managers acknowledged;
//! - no checkpoint id was handed out twice, across all restarts, and the ids of a run are
//!   above every id of the runs before it;
//! - no partial or corrupt metadata is readable: no RPC answers DATA_LOSS, savepoint
//!   directories the index does not know either hold complete metadata or none at all,
//!   and leftover temp files (`.<name>.tmp-*`) are ignored;
//! - the server serves again within [`RESTART_BOUND`] after each kill.
//!
//! The retained checkpoints are checked the way a failover would use them: right after a
//! restart, before the task managers come back, RestoreLatestCheckpoint must return a
//! checkpoint at least as new as the newest one the task managers were told is complete.
//! A savepoint call the kill cut off is repeated after the restart with the same
//! request id, which must find the original operation or its failure, not start a second
//! savepoint of a completed one.
//!
//! The task managers are the test's own, built on [`TaskManagerSession`] and the
//! simulator's plan and state helpers, because the checks need every trigger they receive.
//!
//! `CRASH_TEST_KILLS=N` sets the number of kills (default [`DEFAULT_KILLS`]);
//! `CRASH_TEST_SEED=S` replays the random kill moments of an earlier run (the seed is
//! printed at the start and in every failure message); `TEST_REPORT=FILE` also
//! appends the printed figures to FILE (`.ci/test` shows them).

mod common;

use common::{report, within};
use futures::StreamExt;
use savepoint_coordinator::client::simulator::{
    SimulatedTask, SimulatedVertex, spread_subtasks, state_handle,
};
use savepoint_coordinator::client::{self, Downward, TaskManagerSession};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::store::fs::METADATA_FILE;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tonic::Code;
use tonic::transport::Channel;

/// Kills per run unless `CRASH_TEST_KILLS` says otherwise.
const DEFAULT_KILLS: u32 = 50;
/// Upper bound of the random time the server works before it is killed.
const MAX_WORK: Duration = Duration::from_millis(300);
/// After one kill in this many, the next server is also killed while it starts up (an
/// extra kill, not counted in `CRASH_TEST_KILLS`).
const STARTUP_KILL_ONE_IN: u64 = 8;
/// Upper bound of the random delay of such a kill after the server logged its address.
const MAX_STARTUP_KILL_DELAY: Duration = Duration::from_millis(15);
/// How long a restarted server may take to answer its first RPC.
const RESTART_BOUND: Duration = Duration::from_secs(10);
/// Savepoints reported in earlier runs that a check after a restart restores again (all
/// of them are checked for their listing and metadata bytes; the final check restores
/// all). The default mode stays about at this many savepoints in total.
const RESTORE_SAMPLE: usize = 256;
/// RestoreSavepoint calls in flight at once during a check.
const RESTORES_AT_ONCE: usize = 4;
/// Bound of one TriggerSavepoint call (the savepoint itself needs milliseconds).
const SAVEPOINT_CALL_BOUND: Duration = Duration::from_secs(10);

/// The job under test: every vertex is waited for and told about completions.
const JOB: &str = "crash";
/// A job of the same topology that never runs, onto which savepoints are restored.
const VERIFY_JOB: &str = "crash-verify";
const VERTICES: &[(&str, u32)] = &[("source", 2), ("sink", 2)];
const TASK_MANAGERS: u32 = 2;
const CHECKPOINT_INTERVAL_MS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_survive_kill_9_and_ids_are_never_reused() {
    let kills = match std::env::var("CRASH_TEST_KILLS") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("CRASH_TEST_KILLS={value:?} is not a number: {e}")),
        Err(_) => DEFAULT_KILLS,
    };
    let seed = match std::env::var("CRASH_TEST_SEED") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("CRASH_TEST_SEED={value:?} is not a number: {e}")),
        Err(_) => seed_from_time(),
    };
    report(&format!(
        "crash test: {kills} kills, seed {seed} (replay with CRASH_TEST_SEED={seed})"
    ));

    let dir = KeptOnFailure::new();
    let mut run = CrashRun::new(dir.path(), seed);
    run.start_first_server().await;
    while run.figures.kills < kills {
        run.work_then_kill().await;
        if run.prng.below(STARTUP_KILL_ONE_IN) == 0 {
            run.kill_during_startup().await;
        }
        run.restart_and_verify().await;
        run.start_work().await;
    }
    run.finish().await;
    report(&format!("crash test passed: {}", run.figures));
}

/// Everything one run of the test keeps track of.
struct CrashRun {
    data_dir: PathBuf,
    savepoint_dir: PathBuf,
    /// Picks the kill moments.
    prng: Prng,
    /// Picks the older savepoints a check restores again; separate, so that a replayed
    /// seed kills at the same moments however many savepoints the runs take.
    sample_prng: Prng,
    /// Counts the servers started; the first is 0.
    incarnation: u32,
    server: Option<Daemon>,
    client: Option<SavepointServiceClient<Channel>>,
    work: Option<Work>,
    ledger: Arc<Mutex<Ledger>>,
    savepoints: Arc<Mutex<SavepointLog>>,
    /// Request ids whose TriggerSavepoint call a kill cut off; repeated after the restart.
    unsettled: Vec<String>,
    /// How many of the completed savepoints were restored at least once.
    restored_through: usize,
    /// Savepoint directories outside the index that were already checked.
    checked_strays: HashSet<PathBuf>,
    figures: Figures,
    started: Instant,
}

impl CrashRun {
    fn new(root: &Path, seed: u64) -> CrashRun {
        CrashRun {
            data_dir: root.join("data"),
            savepoint_dir: root.join("savepoints"),
            prng: Prng(seed),
            sample_prng: Prng(!seed),
            incarnation: 0,
            server: None,
            client: None,
            work: None,
            ledger: Arc::default(),
            savepoints: Arc::default(),
            unsettled: Vec::new(),
            restored_through: 0,
            checked_strays: HashSet::new(),
            figures: Figures {
                seed,
                ..Figures::default()
            },
            started: Instant::now(),
        }
    }

    /// Starts the first server, registers both jobs and starts the work.
    async fn start_first_server(&mut self) {
        let mut server = Daemon::spawn(&self.data_dir, &self.savepoint_dir);
        let (client, _) = server.wait_until_serving(None).await;
        self.server = Some(server);
        let client = self.client.insert(client);
        for (job_id, interval_ms) in [(JOB, CHECKPOINT_INTERVAL_MS), (VERIFY_JOB, 0)] {
            within(
                "RegisterJob",
                client.register_job(job_spec(job_id, interval_ms)),
            )
            .await
            .unwrap_or_else(|status| panic!("RegisterJob {job_id}: {status:?}"));
        }
        self.start_work().await;
    }

    /// Lets the server work for a random time, then kills it with SIGKILL.
    async fn work_then_kill(&mut self) {
        let work = Duration::from_millis(self.prng.below(MAX_WORK.as_millis() as u64 + 1));
        tokio::time::sleep(work).await;
        let work = self.work.take().expect("work is running");
        if work.driver_stopped() {
            let stopped_by = self.savepoints.lock().unwrap().stopped_by.take();
            self.problem(format!(
                "the savepoint stream broke off while the server was up: {stopped_by:?}"
            ));
            self.fail_if_problems("before a kill");
        }
        self.server.as_mut().expect("a server").kill();
        self.figures.kills += 1;
        work.stop().await;
        let mut savepoints = self.savepoints.lock().unwrap();
        savepoints.stopped_by = None;
        self.unsettled.extend(savepoints.in_flight.take());
    }

    /// Starts a server and kills it right after it logged its address, while it loads
    /// what the killed one left behind.
    async fn kill_during_startup(&mut self) {
        let mut server = Daemon::spawn(&self.data_dir, &self.savepoint_dir);
        self.incarnation += 1;
        within("the listening log line", server.address())
            .await
            .unwrap_or_else(|| panic!("{}", self.failure("no address logged", &server)));
        let delay = self
            .prng
            .below(MAX_STARTUP_KILL_DELAY.as_millis() as u64 + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        self.figures.startup_kills += 1;
    }

    /// Starts the next server on the same directories, measures how long until it
    /// serves, and checks everything that must have survived.
    async fn restart_and_verify(&mut self) {
        let mut server = Daemon::spawn(&self.data_dir, &self.savepoint_dir);
        self.incarnation += 1;
        let (client, took) = server.wait_until_serving(Some(JOB)).await;
        self.figures.restart_times.push(took);
        self.server = Some(server);
        self.client = Some(client);

        self.check_jobs_recovered().await;
        self.check_latest_checkpoint().await;
        self.check_savepoints(Restores::Sample).await;
        self.check_ids();
        self.fail_if_problems("after a restart");
    }

    /// Reconnects the task managers, makes sure the job runs, repeats the calls a kill
    /// cut off, and starts the savepoint stream.
    async fn start_work(&mut self) {
        let channel = within("a connection", client::connect(&self.address()))
            .await
            .expect("connect");
        let task_managers =
            connect_task_managers(&channel, self.incarnation, self.ledger.clone()).await;
        let mut client = self.client();
        let stats = rpc(
            "GetCheckpointStats",
            client.get_checkpoint_stats(stats_request(JOB)),
        )
        .await;
        match stats {
            Ok(stats) if stats.job_status() == proto::JobStatus::Running => {}
            Ok(_) => {
                let running = proto::UpdateJobStatusRequest {
                    job_id: JOB.to_string(),
                    status: proto::JobStatus::Running.into(),
                };
                if self.incarnation > 0 {
                    self.figures.status_resets += 1;
                }
                rpc("UpdateJobStatus", client.update_job_status(running))
                    .await
                    .unwrap_or_else(|status| panic!("UpdateJobStatus RUNNING: {status:?}"));
            }
            Err(status) => self.problem(format!("GetCheckpointStats {JOB}: {status:?}")),
        }
        self.repeat_unsettled_calls().await;
        self.fail_if_problems("while reconnecting");

        let driver = tokio::spawn(drive_savepoints(
            client.clone(),
            self.incarnation,
            self.savepoints.clone(),
        ));
        self.work = Some(Work {
            task_managers,
            driver: Some(driver),
        });
    }

    /// Stops the work, verifies everything once more (every savepoint restored) and
    /// stops the server.
    async fn finish(&mut self) {
        let mut work = self.work.take().expect("work is running");
        work.stop_driver().await;
        let cut_off = self.savepoints.lock().unwrap().in_flight.take();
        self.unsettled.extend(cut_off);
        self.repeat_unsettled_calls().await;
        work.stop().await;
        self.check_savepoints(Restores::All).await;
        self.check_ids();
        self.fail_if_problems("at the end");
        self.figures.elapsed = self.started.elapsed();
        let savepoints = self.savepoints.lock().unwrap().completed.len();
        assert!(
            savepoints > 0 && self.ledger.lock().unwrap().max_notified_checkpoint > 0,
            "the run completed no savepoint or no checkpoint, so it proved nothing: {}",
            self.figures
        );
        if let Some(mut server) = self.server.take() {
            server.kill();
        }
    }

    /// RegisterJob must find both jobs still registered.
    async fn check_jobs_recovered(&mut self) {
        let mut client = self.client();
        for (job_id, interval_ms) in [(JOB, CHECKPOINT_INTERVAL_MS), (VERIFY_JOB, 0)] {
            let again = rpc(
                "RegisterJob",
                client.register_job(job_spec(job_id, interval_ms)),
            )
            .await;
            match again {
                Err(status) if status.code() == Code::AlreadyExists => {}
                other => self.problem(format!(
                    "RegisterJob {job_id} after restart {} answered {other:?} instead of \
                     ALREADY_EXISTS: the job was not recovered",
                    self.incarnation
                )),
            }
        }
    }

    /// Failover: the latest retained checkpoint is readable, not older than the newest
    /// checkpoint the task managers were told is complete, holds what they acknowledged,
    /// and the job's next id lies above every id handed out so far.
    async fn check_latest_checkpoint(&mut self) {
        let (notified, max_id) = {
            let ledger = self.ledger.lock().unwrap();
            (ledger.max_notified_checkpoint, ledger.max_id())
        };
        let request = proto::RestoreLatestCheckpointRequest {
            job_id: JOB.to_string(),
            allow_non_restored_state: false,
        };
        let mut client = self.client();
        match rpc(
            "RestoreLatestCheckpoint",
            client.restore_latest_checkpoint(request),
        )
        .await
        {
            Ok(restored) => {
                self.figures.checkpoint_restores += 1;
                let id = restored.checkpoint_id;
                if id < notified {
                    self.problem(format!(
                        "lost checkpoint: task managers were told checkpoint {notified} is \
                         complete, but the latest retained checkpoint is {id}"
                    ));
                }
                if restored.assignments != expected_assignments(id) {
                    self.problem(format!(
                        "checkpoint {id} restores other state than was acknowledged: {:?}",
                        restored.assignments
                    ));
                }
                if restored.next_checkpoint_id <= max_id {
                    self.problem(format!(
                        "after restart {} the next checkpoint id would be {}, but id {max_id} \
                         was already handed out",
                        self.incarnation, restored.next_checkpoint_id
                    ));
                }
            }
            Err(status) if status.code() == Code::NotFound && notified == 0 => {}
            Err(status) => self.problem(format!(
                "RestoreLatestCheckpoint after restart {}: {status:?} (task managers were told \
                 checkpoint {notified} is complete)",
                self.incarnation
            )),
        }
    }

    /// Every savepoint reported complete is listed with its path, its metadata file is
    /// unchanged and it restores onto the verify job with the acknowledged state (each
    /// new one at once, older ones all or a sample, see [`Restores`]). Every listed
    /// savepoint was triggered as one; savepoint directories the index does not know hold
    /// complete metadata or none; no RPC answers DATA_LOSS.
    async fn check_savepoints(&mut self, which: Restores) {
        let client = self.client();
        let listed = match rpc(
            "ListSavepoints",
            client
                .clone()
                .list_savepoints(proto::ListSavepointsRequest {
                    job_id: JOB.to_string(),
                }),
        )
        .await
        {
            Ok(listed) => listed.savepoints,
            Err(status) => {
                self.problem(format!("ListSavepoints: {status:?}"));
                return;
            }
        };
        let listed: BTreeMap<u64, String> = listed
            .into_iter()
            .map(|info| (info.checkpoint_id, info.path))
            .collect();
        let completed = self.savepoints.lock().unwrap().completed.clone();
        for savepoint in &completed {
            let id = savepoint.checkpoint_id;
            match listed.get(&id) {
                Some(path) if *path == savepoint.path => {}
                Some(path) => self.problem(format!(
                    "savepoint {id} was reported at {} but is listed at {path}",
                    savepoint.path
                )),
                None => self.problem(format!(
                    "lost savepoint: {id} at {} (request {}) was reported COMPLETED but is \
                     not listed",
                    savepoint.path, savepoint.request_id
                )),
            }
            match std::fs::read(Path::new(&savepoint.path).join(METADATA_FILE)) {
                Ok(bytes) if bytes == savepoint.metadata => {}
                Ok(_) => self.problem(format!(
                    "the metadata of savepoint {id} at {} changed after it was reported \
                     COMPLETED",
                    savepoint.path
                )),
                Err(error) => self.problem(format!(
                    "the metadata of savepoint {id} is gone from {}: {error}",
                    savepoint.path
                )),
            }
        }
        // Listed but never reported to the client (the kill came first): still complete.
        let reported: HashSet<u64> = completed.iter().map(|s| s.checkpoint_id).collect();
        for (&id, path) in &listed {
            let kind = self.ledger.lock().unwrap().kind_of(id);
            if kind != Some(proto::SnapshotKind::Savepoint) {
                self.problem(format!(
                    "ListSavepoints names {id} ({path}), which was triggered as {kind:?}"
                ));
            }
        }
        let mut restores: Vec<(u64, String)> = listed
            .iter()
            .filter(|(id, _)| !reported.contains(id))
            .map(|(id, path)| (*id, path.clone()))
            .collect();
        let (older, new) = completed.split_at(self.restored_through.min(completed.len()));
        restores.extend(new.iter().map(|s| (s.checkpoint_id, s.path.clone())));
        let mut older: Vec<&CompletedSavepoint> = older.iter().collect();
        if which == Restores::Sample {
            for i in 0..older.len().min(RESTORE_SAMPLE) {
                let pick = i + self.sample_prng.below((older.len() - i) as u64) as usize;
                older.swap(i, pick);
            }
            older.truncate(RESTORE_SAMPLE);
        }
        restores.extend(older.iter().map(|s| (s.checkpoint_id, s.path.clone())));
        self.restored_through = completed.len();
        self.figures.savepoint_restores += restores.len() as u64;
        let mut restoring = futures::stream::iter(restores)
            .map(|(id, path)| {
                let client = client.clone();
                async move { restore_savepoint(&client, id, &path).await }
            })
            .buffer_unordered(RESTORES_AT_ONCE);
        while let Some(restored) = restoring.next().await {
            if let Err(problem) = restored {
                self.problem(problem);
            }
        }
        self.check_stray_savepoint_dirs(&client, &listed).await;
        self.figures.temp_files = temp_files(&self.data_dir) + temp_files(&self.savepoint_dir);
        for job_id in [JOB, VERIFY_JOB] {
            let stats = rpc(
                "GetCheckpointStats",
                client.clone().get_checkpoint_stats(stats_request(job_id)),
            )
            .await;
            if let Err(status) = stats {
                self.problem(format!("GetCheckpointStats {job_id}: {status:?}"));
            }
        }
        self.figures.savepoints_verified = completed.len();
        self.figures.savepoints_failed = self.savepoints.lock().unwrap().failed.clone();
        self.figures.savepoints_unreported = listed.len().saturating_sub(reported.len());
    }

    /// Savepoint directories that are not in the index (the kill came between creating
    /// the directory, writing `_metadata` and writing the index entry) must either hold
    /// complete metadata with the acknowledged state or none at all.
    async fn check_stray_savepoint_dirs(
        &mut self,
        client: &SavepointServiceClient<Channel>,
        listed: &BTreeMap<u64, String>,
    ) {
        let listed_paths: HashSet<PathBuf> = listed.values().map(PathBuf::from).collect();
        let Ok(entries) = std::fs::read_dir(&self.savepoint_dir) else {
            return;
        };
        let prefix = format!("savepoint-{JOB}-");
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            if listed_paths.contains(&path) || !self.checked_strays.insert(path.clone()) {
                continue;
            }
            let has_metadata = path.join(METADATA_FILE).exists();
            let result = restore_savepoint(client, id, &path.to_string_lossy()).await;
            match (has_metadata, result) {
                (true, Ok(())) => self.figures.unindexed_savepoints += 1,
                (false, Err(problem)) if problem.contains("NotFound") => {
                    self.figures.empty_savepoint_dirs += 1
                }
                (_, Err(problem)) => {
                    self.problem(format!("unlisted savepoint directory: {problem}"))
                }
                (false, Ok(())) => self.problem(format!(
                    "{} has no {METADATA_FILE} but restores",
                    path.display()
                )),
            }
        }
    }

    /// Ids are unique across restarts and rise with every restart.
    fn check_ids(&mut self) {
        let mut ledger = self.ledger.lock().unwrap();
        let mut problems = std::mem::take(&mut ledger.problems);
        problems.extend(ledger.order_problem());
        for savepoint in &self.savepoints.lock().unwrap().completed {
            let id = savepoint.checkpoint_id;
            match ledger.triggers.get(&id) {
                Some(seen) if seen.kind == proto::SnapshotKind::Savepoint => {}
                seen => problems.push(format!(
                    "savepoint {id} (request {}) was reported COMPLETED but its trigger was \
                     {seen:?}",
                    savepoint.request_id
                )),
            }
        }
        self.figures.checkpoint_ids = ledger.count(proto::SnapshotKind::Checkpoint);
        self.figures.savepoint_ids = ledger.count(proto::SnapshotKind::Savepoint);
        self.figures.checkpoints_notified = ledger.notified_checkpoints.len();
        drop(ledger);
        for problem in problems {
            self.problem(problem);
        }
    }

    /// Repeats each TriggerSavepoint call a kill cut off, with its request id: it must
    /// answer the original operation (completed or failed), or start the savepoint anew
    /// if the request never got that far. Afterwards every listed savepoint has been
    /// reported to a call: one that was not would be a second savepoint of a repeated
    /// request id (all savepoints of the job come from these calls).
    async fn repeat_unsettled_calls(&mut self) {
        let mut client = self.client();
        for request_id in std::mem::take(&mut self.unsettled) {
            match trigger_savepoint(&mut client, &request_id, self.incarnation).await {
                Ok(savepoint) => {
                    let earlier = self
                        .ledger
                        .lock()
                        .unwrap()
                        .triggers
                        .get(&savepoint.checkpoint_id)
                        .is_some_and(|seen| seen.incarnation < self.incarnation);
                    if earlier {
                        self.figures.repeats_found_completed += 1;
                    } else {
                        self.figures.repeats_started_anew += 1;
                    }
                    self.savepoints.lock().unwrap().record(savepoint);
                }
                Err(Settled::Failed { .. }) => self.figures.repeats_found_failed += 1,
                Err(Settled::Problem(problem)) => self.problem(format!(
                    "repeating TriggerSavepoint {request_id} after restart {}: {problem}",
                    self.incarnation
                )),
                Err(Settled::Unsettled(error)) => self.problem(format!(
                    "repeating TriggerSavepoint {request_id} after restart {} failed while the \
                     server was up: {error}",
                    self.incarnation
                )),
            }
        }
        let listed = rpc(
            "ListSavepoints",
            client.list_savepoints(proto::ListSavepointsRequest {
                job_id: JOB.to_string(),
            }),
        )
        .await;
        let listed = match listed {
            Ok(listed) => listed.savepoints,
            Err(status) => {
                self.problem(format!("ListSavepoints: {status:?}"));
                return;
            }
        };
        let reported: HashSet<u64> = self
            .savepoints
            .lock()
            .unwrap()
            .completed
            .iter()
            .map(|s| s.checkpoint_id)
            .collect();
        for info in listed {
            if !reported.contains(&info.checkpoint_id) {
                self.problem(format!(
                    "savepoint {} ({}) is listed, but neither its call nor the repeat of its \
                     request id reported it: the repeat started a second savepoint",
                    info.checkpoint_id, info.path
                ));
            }
        }
    }

    /// A client of the serving server (clones share its connection).
    fn client(&self) -> SavepointServiceClient<Channel> {
        self.client.clone().expect("a serving server")
    }

    fn address(&self) -> String {
        self.server
            .as_ref()
            .and_then(|s| s.bound_address.clone())
            .expect("a serving server")
    }

    fn problem(&mut self, problem: String) {
        self.figures.problems.push(problem);
    }

    /// Fails the test with every problem found so far, the figures and the seed.
    fn fail_if_problems(&mut self, when: &str) {
        let mut problems = std::mem::take(&mut self.figures.problems);
        problems.append(&mut self.savepoints.lock().unwrap().problems);
        if problems.is_empty() {
            return;
        }
        let tail = self.server.as_ref().map(|s| s.tail()).unwrap_or_default();
        self.figures.elapsed = self.started.elapsed();
        panic!(
            "crash test failed {when} (run {}): \n  - {}\nfigures: {}\nlast server output:\n{tail}",
            self.incarnation,
            problems.join("\n  - "),
            self.figures
        );
    }

    fn failure(&mut self, what: &str, server: &Daemon) -> String {
        self.figures.elapsed = self.started.elapsed();
        format!(
            "{what} (run {}); figures: {}\nlast server output:\n{}",
            self.incarnation,
            self.figures,
            server.tail()
        )
    }
}

/// Which savepoints reported earlier a check restores again (new ones always are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restores {
    /// A random sample of [`RESTORE_SAMPLE`], so that a long run stays linear in time.
    Sample,
    /// Every one (at the end).
    All,
}

/// The job's spec; `interval_ms` 0 means no periodic checkpoints.
fn job_spec(job_id: &str, interval_ms: u64) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        job_id: job_id.to_string(),
        vertices: VERTICES
            .iter()
            .map(|(id, parallelism)| proto::Vertex {
                id: id.to_string(),
                parallelism: *parallelism,
                max_parallelism: 0,
            })
            .collect(),
        trigger_vertices: vec![VERTICES[0].0.to_string()],
        policy: Some(proto::CheckpointPolicy {
            interval_ms,
            timeout_ms: 5_000,
            min_pause_ms: 0,
            max_concurrent: 1,
            retained: 2,
            // Triggers refused while the task managers reconnect are no reason to fail.
            tolerable_failures: 1_000_000,
        }),
        ..Default::default()
    }
}

fn stats_request(job_id: &str) -> proto::GetCheckpointStatsRequest {
    proto::GetCheckpointStatsRequest {
        job_id: job_id.to_string(),
    }
}

fn simulated_vertices() -> Vec<SimulatedVertex> {
    VERTICES
        .iter()
        .map(|(id, parallelism)| SimulatedVertex {
            id: id.to_string(),
            parallelism: *parallelism,
        })
        .collect()
}

/// What a restore of snapshot `id` assigns: each subtask the state it acknowledged.
fn expected_assignments(id: u64) -> Vec<proto::SubtaskAssignment> {
    let mut tasks: Vec<SimulatedTask> = spread_subtasks(&simulated_vertices(), &[], 1)
        .remove(0)
        .tasks;
    tasks.sort_by_key(|t| t.attempt_id);
    tasks
        .iter()
        .map(|task| proto::SubtaskAssignment {
            subtask: Some(proto::SubtaskRef {
                vertex_id: task.vertex_id.clone(),
                subtask_index: task.subtask_index,
            }),
            handles: vec![state_handle(task, id)],
        })
        .collect()
}

/// Awaits a unary RPC, bounded by [`common::WAIT`].
async fn rpc<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    within(what, call).await.map(tonic::Response::into_inner)
}

/// Restores savepoint `id` at `path` onto the verify job and compares the assignment.
async fn restore_savepoint(
    client: &SavepointServiceClient<Channel>,
    id: u64,
    path: &str,
) -> Result<(), String> {
    let request = proto::RestoreSavepointRequest {
        job_id: VERIFY_JOB.to_string(),
        path: path.to_string(),
        allow_non_restored_state: false,
        claim_mode: proto::ClaimMode::NoClaim.into(),
    };
    let restored = rpc(
        "RestoreSavepoint",
        client.clone().restore_savepoint(request),
    )
    .await
    .map_err(|status| {
        format!(
            "RestoreSavepoint {path}: {:?}: {}",
            status.code(),
            status.message()
        )
    })?;
    if restored.checkpoint_id != id {
        return Err(format!(
            "{path} restores as checkpoint {} instead of {id}",
            restored.checkpoint_id
        ));
    }
    if restored.assignments != expected_assignments(id) {
        return Err(format!(
            "savepoint {id} at {path} restores other state than was acknowledged: {:?}",
            restored.assignments
        ));
    }
    Ok(())
}

/// Counts leftover temp files (`.<name>.tmp-<pid>-<n>`) under `dir`.
fn temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                temp_files(&entry.path())
            } else {
                usize::from(name.starts_with('.') && name.contains(".tmp-"))
            }
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// What the task managers and the client saw.

/// Every trigger the task managers received, and which checkpoints they were told are
/// complete; shared by the task manager tasks of all runs.
#[derive(Default)]
struct Ledger {
    triggers: BTreeMap<u64, Triggered>,
    notified_checkpoints: BTreeSet<u64>,
    max_notified_checkpoint: u64,
    problems: Vec<String>,
}

/// One checkpoint id as the task managers saw it triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Triggered {
    incarnation: u32,
    kind: proto::SnapshotKind,
    timestamp_ms: u64,
}

impl Ledger {
    /// Records a trigger. Each source subtask gets one per snapshot, so an id may repeat
    /// but only for the same snapshot: same run, kind and trigger time.
    fn record_trigger(&mut self, incarnation: u32, trigger: &proto::TriggerCheckpoint) {
        let seen = Triggered {
            incarnation,
            kind: trigger.kind(),
            timestamp_ms: trigger.timestamp_ms,
        };
        match self.triggers.entry(trigger.checkpoint_id) {
            Entry::Vacant(vacant) => {
                vacant.insert(seen);
            }
            Entry::Occupied(earlier) if *earlier.get() == seen => {}
            Entry::Occupied(earlier) => self.problems.push(format!(
                "checkpoint id {} handed out twice: {:?}, then {seen:?}",
                trigger.checkpoint_id,
                earlier.get()
            )),
        }
    }

    fn record_completion(&mut self, checkpoint_id: u64) {
        if self.kind_of(checkpoint_id) == Some(proto::SnapshotKind::Checkpoint) {
            self.notified_checkpoints.insert(checkpoint_id);
            self.max_notified_checkpoint = self.max_notified_checkpoint.max(checkpoint_id);
        }
    }

    fn kind_of(&self, id: u64) -> Option<proto::SnapshotKind> {
        self.triggers.get(&id).map(|t| t.kind)
    }

    fn max_id(&self) -> u64 {
        self.triggers.keys().next_back().copied().unwrap_or(0)
    }

    fn count(&self, kind: proto::SnapshotKind) -> usize {
        self.triggers.values().filter(|t| t.kind == kind).count()
    }

    /// In id order the runs never go down: every id of a run lies above every id of the
    /// runs before it.
    fn order_problem(&self) -> Option<String> {
        let mut previous: Option<(u64, u32)> = None;
        for (&id, seen) in &self.triggers {
            if let Some((previous_id, previous_run)) = previous
                && seen.incarnation < previous_run
            {
                return Some(format!(
                    "checkpoint id {id} was handed out in run {} after id {previous_id} in \
                     run {previous_run}: ids did not rise across the restart",
                    seen.incarnation
                ));
            }
            previous = Some((id, seen.incarnation));
        }
        None
    }
}

/// A savepoint the client was told is COMPLETED.
#[derive(Clone, Debug)]
struct CompletedSavepoint {
    checkpoint_id: u64,
    path: String,
    request_id: String,
    /// The `_metadata` file as read right after the completion was reported.
    metadata: Vec<u8>,
}

/// What the savepoint stream saw; shared with the driver task of the current run.
#[derive(Default)]
struct SavepointLog {
    completed: Vec<CompletedSavepoint>,
    /// The request id of the call in progress, if any.
    in_flight: Option<String>,
    /// Calls the server answered with a failed snapshot, by failure reason (not lost:
    /// never reported complete).
    failed: BTreeMap<String, u64>,
    /// Why the driver stopped by itself: a call whose outcome is unknown.
    stopped_by: Option<String>,
    problems: Vec<String>,
}

impl SavepointLog {
    fn record(&mut self, savepoint: CompletedSavepoint) {
        if let Some(earlier) = self
            .completed
            .iter()
            .find(|s| s.checkpoint_id == savepoint.checkpoint_id)
        {
            if earlier.request_id != savepoint.request_id || earlier.path != savepoint.path {
                self.problems.push(format!(
                    "savepoint id {} reported twice: {earlier:?}, then {savepoint:?}",
                    savepoint.checkpoint_id
                ));
            }
            return;
        }
        self.completed.push(savepoint);
    }
}

/// How a TriggerSavepoint call that did not complete ended.
enum Settled {
    /// The server answered that the snapshot failed, with this typed reason.
    Failed { reason: String },
    /// The outcome is unknown: the connection broke (the kill) or the call timed out.
    Unsettled(String),
    /// An answer that breaks a promise (DATA_LOSS, a COMPLETED without a path...).
    Problem(String),
}

/// One TriggerSavepoint call with `request_id`, waiting for the savepoint; on success
/// reads back its metadata file at once.
async fn trigger_savepoint(
    client: &mut SavepointServiceClient<Channel>,
    request_id: &str,
    incarnation: u32,
) -> Result<CompletedSavepoint, Settled> {
    let mut request = tonic::Request::new(proto::TriggerSavepointRequest {
        job_id: JOB.to_string(),
        target_directory: String::new(),
        request_id: request_id.to_string(),
        detach: false,
    });
    request.set_timeout(SAVEPOINT_CALL_BOUND);
    let answer = tokio::time::timeout(
        SAVEPOINT_CALL_BOUND + Duration::from_secs(1),
        client.trigger_savepoint(request),
    )
    .await
    .map_err(|_| Settled::Unsettled("no answer within the call bound".to_string()))?;
    let response = match answer {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::DataLoss => {
            return Err(Settled::Problem(format!("DATA_LOSS: {}", status.message())));
        }
        Err(status) => {
            return Err(match common::failure_reason(&status) {
                Some(reason) => Settled::Failed {
                    reason: reason.to_string(),
                },
                None => Settled::Unsettled(format!("{:?}: {}", status.code(), status.message())),
            });
        }
    };
    if response.status() != proto::OperationStatus::Completed || response.path.is_empty() {
        return Err(Settled::Problem(format!(
            "a waiting TriggerSavepoint (run {incarnation}) answered {response:?}"
        )));
    }
    let metadata_path = Path::new(&response.path).join(METADATA_FILE);
    let metadata = tokio::fs::read(&metadata_path).await.map_err(|error| {
        Settled::Problem(format!(
            "savepoint {} was reported COMPLETED but {} is unreadable: {error}",
            response.checkpoint_id,
            metadata_path.display()
        ))
    })?;
    Ok(CompletedSavepoint {
        checkpoint_id: response.checkpoint_id,
        path: response.path,
        request_id: request_id.to_string(),
        metadata,
    })
}

/// Triggers savepoints one after another, each with a new request id, until the call
/// breaks (the kill) or the task is aborted.
async fn drive_savepoints(
    mut client: SavepointServiceClient<Channel>,
    incarnation: u32,
    log: Arc<Mutex<SavepointLog>>,
) {
    for n in 1.. {
        let request_id = format!("crash-{incarnation}-{n}");
        log.lock().unwrap().in_flight = Some(request_id.clone());
        let outcome = trigger_savepoint(&mut client, &request_id, incarnation).await;
        let mut log = log.lock().unwrap();
        match outcome {
            Ok(savepoint) => log.record(savepoint),
            Err(Settled::Failed { reason }) => *log.failed.entry(reason).or_default() += 1,
            Err(Settled::Problem(problem)) => log.problems.push(problem),
            Err(Settled::Unsettled(error)) => {
                // Left in flight; whether the kill explains it is for the caller to say.
                log.stopped_by = Some(format!("TriggerSavepoint {request_id}: {error}"));
                return;
            }
        }
        log.in_flight = None;
    }
}

/// The work of one run: its task managers and its savepoint stream.
struct Work {
    task_managers: JoinSet<()>,
    /// The savepoint stream; None once stopped.
    driver: Option<JoinHandle<()>>,
}

impl Work {
    /// Stops the savepoint stream; a call it cuts off stays in flight in the log.
    async fn stop_driver(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
            let _ = driver.await;
        }
    }

    /// Whether the savepoint stream stopped by itself.
    fn driver_stopped(&self) -> bool {
        self.driver.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Stops the savepoint stream and the task managers.
    async fn stop(mut self) {
        self.stop_driver().await;
        self.task_managers.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Simulated task managers that acknowledge every trigger and record what they saw.

/// A barrier passed from the task manager that got a trigger to all of them.
#[derive(Clone, Copy, Debug)]
struct Barrier {
    checkpoint_id: u64,
    fencing_token: u64,
}

/// Connects the job's task managers (its subtasks spread round-robin, all RUNNING).
async fn connect_task_managers(
    channel: &Channel,
    incarnation: u32,
    ledger: Arc<Mutex<Ledger>>,
) -> JoinSet<()> {
    let (barriers, _) = broadcast::channel(1024);
    let mut running = JoinSet::new();
    for plan in spread_subtasks(&simulated_vertices(), &[], TASK_MANAGERS) {
        let infos = plan
            .tasks
            .iter()
            .map(|task| proto::TaskInfo {
                job_id: JOB.to_string(),
                subtask: Some(proto::SubtaskRef {
                    vertex_id: task.vertex_id.clone(),
                    subtask_index: task.subtask_index,
                }),
                attempt_id: task.attempt_id,
                state: proto::TaskState::Running.into(),
            })
            .collect();
        let session = within(
            "a task manager to be welcomed",
            TaskManagerSession::connect(channel.clone(), &plan.task_manager_id, infos),
        )
        .await
        .unwrap_or_else(|e| panic!("{} connects: {e}", plan.task_manager_id));
        assert_eq!(
            session.accepted_tasks() as usize,
            plan.tasks.len(),
            "{}'s tasks accepted: {:?}",
            plan.task_manager_id,
            session.refusals()
        );
        running.spawn(run_task_manager(
            session,
            plan.tasks,
            incarnation,
            ledger.clone(),
            barriers.clone(),
        ));
    }
    running
}

/// One task manager: records triggers and completions, passes each trigger on as a
/// barrier, and acknowledges every barrier once for each of its tasks.
async fn run_task_manager(
    mut session: TaskManagerSession,
    tasks: Vec<SimulatedTask>,
    incarnation: u32,
    ledger: Arc<Mutex<Ledger>>,
    barriers: broadcast::Sender<Barrier>,
) {
    let mut barrier_receiver = barriers.subscribe();
    let mut acknowledged = HashSet::new();
    loop {
        tokio::select! {
            message = session.next_message() => match message {
                Ok(Some(Downward::TriggerCheckpoint(trigger))) => {
                    ledger.lock().unwrap().record_trigger(incarnation, &trigger);
                    let _ = barriers.send(Barrier {
                        checkpoint_id: trigger.checkpoint_id,
                        fencing_token: trigger.fencing_token,
                    });
                }
                Ok(Some(Downward::NotifyCheckpointComplete(notify))) => {
                    ledger.lock().unwrap().record_completion(notify.checkpoint_id);
                }
                Ok(Some(_)) => {}
                // The server is gone (killed): this run's task manager ends with it.
                Ok(None) | Err(_) => return,
            },
            barrier = barrier_receiver.recv() => match barrier {
                Ok(barrier) if acknowledged.insert(barrier.checkpoint_id) => {
                    for task in &tasks {
                        let ack = proto::AcknowledgeRequest {
                            job_id: JOB.to_string(),
                            checkpoint_id: barrier.checkpoint_id,
                            attempt_id: task.attempt_id,
                            handles: vec![state_handle(task, barrier.checkpoint_id)],
                            sync_duration_ms: 0,
                            async_duration_ms: 0,
                            fencing_token: barrier.fencing_token,
                        };
                        if session.send(Upward::Acknowledge(ack)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// The savepointd child process.

/// A running `savepointd`, killed when dropped (also when a test fails).
struct Daemon {
    child: Child,
    /// The address of its "savepointd listening" log line, sent by the stdout reader.
    listening: mpsc::UnboundedReceiver<String>,
    bound_address: Option<String>,
    /// Its last output lines (stdout and stderr), for failure messages.
    output: Arc<Mutex<VecDeque<String>>>,
    spawned: Instant,
}

/// Output lines kept per server for failure messages.
const OUTPUT_LINES_KEPT: usize = 40;

impl Daemon {
    fn spawn(data_dir: &Path, savepoint_dir: &Path) -> Daemon {
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_savepointd"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--savepoint-dir")
            .arg(savepoint_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn savepointd");
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (sender, listening) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stdout_lines = output.clone();
        std::thread::spawn(move || {
            read_lines(stdout, &stdout_lines, |line| {
                if let Some(address) = listening_address(line) {
                    let _ = sender.send(address);
                }
            });
        });
        let stderr = child.stderr.take().expect("stderr");
        let stderr_lines = output.clone();
        std::thread::spawn(move || read_lines(stderr, &stderr_lines, |_| {}));
        Daemon {
            child,
            listening,
            bound_address: None,
            output,
            spawned,
        }
    }

    /// The address it logged; None if it exited first.
    async fn address(&mut self) -> Option<String> {
        if self.bound_address.is_none() {
            self.bound_address = self.listening.recv().await;
        }
        self.bound_address.clone()
    }

    /// Waits until the server answers an RPC (GetCheckpointStats of `job`, which must be
    /// known, or of any job on a fresh data directory); returns a client and how long
    /// that took since the process was spawned. Fails after [`RESTART_BOUND`].
    async fn wait_until_serving(
        &mut self,
        job: Option<&str>,
    ) -> (SavepointServiceClient<Channel>, Duration) {
        let deadline = self.spawned + RESTART_BOUND;
        let address = tokio::time::timeout_at(deadline.into(), self.address())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "savepointd logged no address within {RESTART_BOUND:?} ({:?}); output:\n{}",
                    self.child.try_wait(),
                    self.tail()
                )
            });
        loop {
            let probe = async {
                let channel = client::connect(&address).await.ok()?;
                let mut client = SavepointServiceClient::new(channel);
                let stats = client
                    .get_checkpoint_stats(stats_request(job.unwrap_or(JOB)))
                    .await;
                match stats {
                    Ok(_) => Some(client),
                    Err(status) if job.is_none() && status.code() == Code::NotFound => Some(client),
                    Err(status) if status.code() == Code::NotFound => panic!(
                        "the restarted server does not know job {JOB}: {status:?}; output:\n{}",
                        self.tail()
                    ),
                    Err(_) => None,
                }
            };
            if let Ok(Some(client)) = tokio::time::timeout_at(deadline.into(), probe).await {
                return (client, self.spawned.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "savepointd exited with {status} instead of serving; output:\n{}",
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "savepointd did not serve within {RESTART_BOUND:?} of its start; output:\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILL (what `Child::kill` sends), then reaps the process.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL savepointd");
        self.child.wait().expect("reap savepointd");
    }

    fn tail(&self) -> String {
        let lines = self.output.lock().unwrap();
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `source` line by line until it ends, keeping the last lines in `kept` and
/// showing each to `inspect`.
fn read_lines(source: impl Read, kept: &Mutex<VecDeque<String>>, mut inspect: impl FnMut(&str)) {
    for line in BufReader::new(source).lines().map_while(Result::ok) {
        inspect(&line);
        let mut kept = kept.lock().unwrap();
        if kept.len() == OUTPUT_LINES_KEPT {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// The address of a JSON "savepointd listening" log line.
fn listening_address(line: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json["fields"]["message"] != "savepointd listening" {
        return None;
    }
    json["fields"]["address"].as_str().map(str::to_string)
}

// ---------------------------------------------------------------------------------------
// Figures, randomness, and the temporary directory.

/// What the run did, printed at the end and included in every failure message.
#[derive(Default)]
struct Figures {
    seed: u64,
    /// Kills while the server worked.
    kills: u32,
    /// Extra kills while a server started up.
    startup_kills: u32,
    restart_times: Vec<Duration>,
    savepoints_verified: usize,
    savepoints_unreported: usize,
    savepoints_failed: BTreeMap<String, u64>,
    savepoint_restores: u64,
    checkpoint_restores: u64,
    checkpoint_ids: usize,
    savepoint_ids: usize,
    checkpoints_notified: usize,
    repeats_found_completed: u64,
    repeats_found_failed: u64,
    repeats_started_anew: u64,
    status_resets: u64,
    unindexed_savepoints: u64,
    empty_savepoint_dirs: u64,
    temp_files: usize,
    elapsed: Duration,
    problems: Vec<String>,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restarts = self.restart_times.len();
        let max = self.restart_times.iter().max().copied().unwrap_or_default();
        let avg = self
            .restart_times
            .iter()
            .sum::<Duration>()
            .checked_div(restarts as u32)
            .unwrap_or_default();
        write!(
            f,
            "seed {seed}; {kills} kills during work + {startup} during start-up, {restarts} restarts \
             (time to serve: max {max} ms, avg {avg} ms); savepoints verified: \
             {verified} reported COMPLETED + {unreported} listed but never reported \
             (calls answered failed: {failed_savepoints:?}), {restores} restores; ids checked: {ids} ({checkpoints} checkpoints, {savepoints} \
             savepoints), {notified} checkpoints notified complete, {checkpoint_restores} \
             latest-checkpoint restores; repeated calls: {found} found completed, {failed} \
             found failed, {anew} started anew; status resets: {resets}; left by kills: \
             {unindexed} unindexed savepoint dirs with metadata, {empty} without, {temp} temp \
             files; {elapsed:.1} s",
            seed = self.seed,
            kills = self.kills,
            startup = self.startup_kills,
            max = max.as_millis(),
            avg = avg.as_millis(),
            verified = self.savepoints_verified,
            unreported = self.savepoints_unreported,
            failed_savepoints = &self.savepoints_failed,
            restores = self.savepoint_restores,
            ids = self.checkpoint_ids + self.savepoint_ids,
            checkpoints = self.checkpoint_ids,
            savepoints = self.savepoint_ids,
            notified = self.checkpoints_notified,
            checkpoint_restores = self.checkpoint_restores,
            found = self.repeats_found_completed,
            failed = self.repeats_found_failed,
            anew = self.repeats_started_anew,
            resets = self.status_resets,
            unindexed = self.unindexed_savepoints,
            empty = self.empty_savepoint_dirs,
            temp = self.temp_files,
            elapsed = self.elapsed.as_secs_f64(),
        )
    }
}

/// SplitMix64: small, seedable, good enough to pick kill moments.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn seed_from_time() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id())
}

/// A temporary directory that is deleted after a passing test and kept (its path
/// printed) after a failing one, for a look at what the kills left behind.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    fn new() -> KeptOnFailure {
        KeptOnFailure(Some(tempfile::tempdir().expect("tempdir")))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("directory").path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("crash test directory kept: {}", dir.keep().display());
        }
    }
}
