//! Fuzzes request handling through the core: the input is a sequence of requests, each
//! decoded from protobuf as the server does and applied to an in-memory coordinator
//! through the service handlers (SavepointRpc, the unary TaskGatewayRpc calls) and the
//! core calls a task manager's stream makes. A registered, running job with connected
//! tasks is there from the start, and a few helper operations (acknowledge what was
//! triggered, let time pass, restore or dispose a completed savepoint) let the fuzzer
//! reach completion, expiry and restore without guessing ids and paths.
//!
//! Nothing may panic (also not in the coordinator's own tasks: libFuzzer's panic hook
//! aborts), every call that waits for a snapshot must end once the coordinator shuts
//! down, and every task must see strictly ascending checkpoint ids.
//!
//! Input: repeated `tag, length, payload[length]`. The tag's low 5 bits pick the
//! operation; with bit 7 set, the request's job id is replaced by the running job's.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use savepoint_coordinator::coordinator::clock::TokioClock;
use savepoint_coordinator::coordinator::gateway::{RecordingGateway, TaskMessage};
use savepoint_coordinator::coordinator::model::{AttemptId, CheckpointId, TaskManagerId};
use savepoint_coordinator::coordinator::{Coordinator, CoordinatorConfig};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_server::SavepointService;
use savepoint_coordinator::proto::task_gateway_server::TaskGateway;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::service::{
    SavepointRpc, StreamRegistry, TaskGatewayLimits, TaskGatewayRpc, convert,
};
use savepoint_coordinator::store::Stores;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::Request;

/// The job that is registered and running before the first fuzzed request.
const JOB: &str = "job";
/// Its task manager and tasks: (vertex, subtask, attempt).
const TM: &str = "tm-0";
const TASKS: [(&str, u32, u64); 3] = [("src", 0, 1), ("src", 1, 2), ("sink", 0, 3)];
/// Requests per input; more only slow the fuzzer down.
const MAX_OPS: usize = 64;

/// Replaces the request's job id with the running job's when asked to.
macro_rules! aim {
    ($request:expr, $aim:expr) => {
        if $aim {
            $request.job_id = JOB.to_string();
        }
    };
}

/// Decodes `bytes` as `T`, or returns from the operation.
macro_rules! decode {
    ($type:ty, $bytes:expr) => {
        match <$type>::decode($bytes) {
            Ok(request) => request,
            Err(_) => return,
        }
    };
}

/// One input's world: the coordinator, its handlers, and what the harness has seen.
struct Harness {
    coordinator: Coordinator,
    savepoints: SavepointRpc,
    gateway_rpc: TaskGatewayRpc,
    gateway: Arc<RecordingGateway>,
    /// Every message the coordinator sent, in send order.
    sent: Vec<(TaskManagerId, TaskMessage)>,
    /// Triggers not yet answered by [`Harness::answer_triggers`].
    unanswered: Vec<(String, CheckpointId, u64)>,
    /// Attempts registered per job, as the stream would have registered them.
    attempts: BTreeMap<String, BTreeSet<u64>>,
    /// Current session generation of each connected task manager.
    sessions: BTreeMap<String, u64>,
    /// Paths of completed savepoints, for restore and dispose.
    paths: Arc<Mutex<Vec<String>>>,
    /// Calls that wait for a snapshot.
    waiting: Vec<JoinHandle<()>>,
}

impl Harness {
    async fn new() -> Harness {
        let gateway = Arc::new(RecordingGateway::default());
        let coordinator = Coordinator::new(
            Stores::memory(),
            gateway.clone(),
            Arc::new(TokioClock::starting_at(1_700_000_000_000)),
            CoordinatorConfig {
                default_savepoint_dir: "/savepoints".to_string(),
                id_block_size: 4,
                ..CoordinatorConfig::default()
            },
        );
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let gateway_rpc = TaskGatewayRpc::new(
            coordinator.clone(),
            Arc::new(StreamRegistry::new()),
            TaskGatewayLimits::default(),
            stopped,
        );
        let mut harness = Harness {
            savepoints: SavepointRpc::new(coordinator.clone()),
            coordinator,
            gateway_rpc,
            gateway,
            sent: Vec::new(),
            unanswered: Vec::new(),
            attempts: BTreeMap::new(),
            sessions: BTreeMap::new(),
            paths: Arc::default(),
            waiting: Vec::new(),
        };
        harness.start_job().await;
        harness
    }

    /// Registers [`JOB`], connects its tasks and sets it RUNNING.
    async fn start_job(&mut self) {
        let vertex = |id: &str, parallelism| proto::Vertex {
            id: id.to_string(),
            parallelism,
            max_parallelism: 0,
        };
        let job = proto::RegisterJobRequest {
            job_id: JOB.to_string(),
            vertices: vec![vertex("src", 2), vertex("sink", 1)],
            trigger_vertices: vec!["src".to_string()],
            policy: Some(proto::CheckpointPolicy {
                timeout_ms: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.savepoints
            .register_job(Request::new(job))
            .await
            .expect("the running job registers");
        let tasks = TASKS
            .iter()
            .map(|&(vertex, subtask_index, attempt_id)| proto::TaskInfo {
                job_id: JOB.to_string(),
                subtask: Some(proto::SubtaskRef {
                    vertex_id: vertex.to_string(),
                    subtask_index,
                }),
                attempt_id,
                state: proto::TaskState::Running.into(),
            })
            .collect();
        self.hello(proto::Hello {
            task_manager_id: TM.to_string(),
            tasks,
        });
        let running = proto::UpdateJobStatusRequest {
            job_id: JOB.to_string(),
            status: proto::JobStatus::Running.into(),
        };
        self.savepoints
            .update_job_status(Request::new(running))
            .await
            .expect("the job runs");
    }

    /// What Connect does with a Hello: a new session, then its tasks one by one.
    fn hello(&mut self, hello: proto::Hello) {
        let Ok(tm) = convert::task_manager_id(&hello.task_manager_id) else {
            return;
        };
        let generation = self.coordinator.connect_task_manager(&tm);
        self.sessions.insert(tm.to_string(), generation);
        self.register_tasks(&tm, hello.tasks);
    }

    fn register_tasks(&mut self, tm: &TaskManagerId, tasks: Vec<proto::TaskInfo>) {
        for (i, task) in tasks.into_iter().enumerate() {
            let Ok(task) = convert::task_registration(&format!("tasks[{i}]"), task) else {
                continue;
            };
            if self.coordinator.register_task(tm, &task).is_ok() {
                self.attempts
                    .entry(task.job_id.clone())
                    .or_default()
                    .insert(task.attempt_id.0);
            }
        }
    }

    /// A message on a task manager's stream, handled as the stream reader does.
    fn stream_message(&mut self, tm: &str, message: proto::TaskManagerMessage) {
        let Ok(tm) = convert::task_manager_id(tm) else {
            return;
        };
        match message.message {
            None => {}
            Some(Upward::Hello(hello)) => self.hello(hello),
            Some(Upward::RegisterTasks(register)) => self.register_tasks(&tm, register.tasks),
            Some(Upward::TaskState(update)) => {
                if let Ok(change) = convert::task_state_change(update) {
                    let _ = self.coordinator.update_task_state(
                        change.job_id.as_str(),
                        change.attempt_id,
                        change.state,
                    );
                }
            }
            Some(Upward::Acknowledge(ack)) => {
                if let Ok((job, ack)) =
                    convert::acknowledgement(ack, convert::DEFAULT_MAX_INLINE_STATE_BYTES)
                {
                    let _ = self.coordinator.acknowledge(job.as_str(), ack);
                }
            }
            Some(Upward::Decline(decline)) => {
                if let Ok(d) = convert::decline(decline) {
                    let _ = self.coordinator.decline(
                        d.job_id.as_str(),
                        d.checkpoint_id,
                        d.attempt_id,
                        &d.reason,
                        d.fencing_token,
                    );
                }
            }
        }
    }

    /// Moves what the gateway recorded into the harness's log.
    fn collect_sent(&mut self) {
        for (tm, message) in self.gateway.take() {
            if let TaskMessage::TriggerCheckpoint {
                job_id,
                checkpoint_id,
                fencing_token,
                ..
            } = &message
            {
                let trigger = (job_id.to_string(), *checkpoint_id, *fencing_token);
                if !self.unanswered.contains(&trigger) {
                    self.unanswered.push(trigger);
                }
            }
            self.sent.push((tm, message));
        }
    }

    /// Answers the triggers sent so far through the unary Acknowledge and Decline, from
    /// every attempt registered for the job: `mode` 0 acknowledges all, 1 declines from
    /// the first attempt, 2 leaves the last attempt silent (a snapshot left half done).
    async fn answer_triggers(&mut self, mode: u8, state: &[u8]) {
        self.collect_sent();
        for (job_id, checkpoint_id, fencing_token) in std::mem::take(&mut self.unanswered) {
            let attempts: Vec<u64> = self
                .attempts
                .get(&job_id)
                .map(|a| a.iter().copied().collect())
                .unwrap_or_default();
            if mode % 3 == 1 {
                let decline = proto::DeclineRequest {
                    job_id: job_id.clone(),
                    checkpoint_id: checkpoint_id.0,
                    attempt_id: attempts.first().copied().unwrap_or(1),
                    reason: "fuzzed decline".to_string(),
                    fencing_token,
                };
                let _ = self.gateway_rpc.decline(Request::new(decline)).await;
                continue;
            }
            let answering = match mode % 3 {
                2 => attempts.len().saturating_sub(1),
                _ => attempts.len(),
            };
            for &attempt_id in &attempts[..answering] {
                let ack = proto::AcknowledgeRequest {
                    job_id: job_id.clone(),
                    checkpoint_id: checkpoint_id.0,
                    attempt_id,
                    handles: vec![proto::StateHandle {
                        name: "state".to_string(),
                        data: Some(proto::state_handle::Data::Inline(state.to_vec().into())),
                        key_groups: None,
                    }],
                    fencing_token,
                    ..Default::default()
                };
                let _ = self.gateway_rpc.acknowledge(Request::new(ack)).await;
            }
        }
    }

    /// Starts a call that waits for a snapshot; a savepoint's path is kept for later.
    fn wait_for<F>(&mut self, call: F)
    where
        F: std::future::Future<Output = Result<Option<String>, tonic::Status>> + Send + 'static,
    {
        let paths = self.paths.clone();
        self.waiting.push(tokio::spawn(async move {
            if let Ok(Some(path)) = call.await
                && !path.is_empty()
            {
                paths.lock().unwrap().push(path);
            }
        }));
    }

    /// A known savepoint path, picked by `index`; or the raw bytes as a path.
    fn path(&self, index: u8, fallback: &[u8]) -> String {
        let paths = self.paths.lock().unwrap();
        match paths.len() {
            0 => String::from_utf8_lossy(fallback).into_owned(),
            n => paths[usize::from(index) % n].clone(),
        }
    }

    async fn apply(&mut self, tag: u8, payload: &[u8]) {
        let aim = tag & 0x80 != 0;
        let first = payload.first().copied().unwrap_or(0);
        let rpc = self.savepoints.clone();
        match tag & 0x1f {
            0 => {
                let mut request = decode!(proto::RegisterJobRequest, payload);
                aim!(request, aim);
                let _ = rpc.register_job(Request::new(request)).await;
            }
            1 => {
                let mut request = decode!(proto::UpdateJobStatusRequest, payload);
                aim!(request, aim);
                let _ = rpc.update_job_status(Request::new(request)).await;
            }
            2 => {
                let mut request = decode!(proto::TriggerSavepointRequest, payload);
                aim!(request, aim);
                request.target_directory.clear();
                self.wait_for(async move {
                    let response = rpc.trigger_savepoint(Request::new(request)).await?;
                    Ok(Some(response.into_inner().path))
                });
            }
            3 => {
                let mut request = decode!(proto::StopWithSavepointRequest, payload);
                aim!(request, aim);
                self.wait_for(async move {
                    let response = rpc.stop_with_savepoint(Request::new(request)).await?;
                    Ok(Some(response.into_inner().path))
                });
            }
            4 => {
                let mut request = decode!(proto::TriggerCheckpointRequest, payload);
                aim!(request, aim);
                self.wait_for(async move {
                    rpc.trigger_checkpoint(Request::new(request)).await?;
                    Ok(None)
                });
            }
            5 => {
                let mut request = decode!(proto::GetSavepointOperationRequest, payload);
                aim!(request, aim);
                let _ = rpc.get_savepoint_operation(Request::new(request)).await;
            }
            6 => {
                let request = decode!(proto::DisposeSavepointRequest, payload);
                let _ = rpc.dispose_savepoint(Request::new(request)).await;
            }
            7 => {
                let mut request = decode!(proto::ListSavepointsRequest, payload);
                aim!(request, aim);
                let _ = rpc.list_savepoints(Request::new(request)).await;
            }
            8 => {
                let mut request = decode!(proto::RestoreSavepointRequest, payload);
                aim!(request, aim);
                let _ = rpc.restore_savepoint(Request::new(request)).await;
            }
            9 => {
                let mut request = decode!(proto::RestoreLatestCheckpointRequest, payload);
                aim!(request, aim);
                let _ = rpc.restore_latest_checkpoint(Request::new(request)).await;
            }
            10 => {
                let mut request = decode!(proto::GetCheckpointStatsRequest, payload);
                aim!(request, aim);
                let _ = rpc.get_checkpoint_stats(Request::new(request)).await;
            }
            11 => {
                let mut request = decode!(proto::UnregisterJobRequest, payload);
                aim!(request, aim);
                let _ = rpc.unregister_job(Request::new(request)).await;
            }
            12 => {
                let mut request = decode!(proto::AcknowledgeRequest, payload);
                aim!(request, aim);
                let _ = self.gateway_rpc.acknowledge(Request::new(request)).await;
            }
            13 => {
                let mut request = decode!(proto::DeclineRequest, payload);
                aim!(request, aim);
                let _ = self.gateway_rpc.decline(Request::new(request)).await;
            }
            14 => {
                let message = decode!(proto::TaskManagerMessage, payload);
                let tm = if aim {
                    TM.to_string()
                } else {
                    format!("tm-{}", first % 4)
                };
                self.stream_message(&tm, message);
            }
            15 => {
                let tm = format!("tm-{}", first % 4);
                if let Some(&generation) = self.sessions.get(&tm) {
                    let tm = TaskManagerId::new(&tm);
                    self.coordinator.disconnect_task_manager(&tm, generation);
                }
            }
            16 => {
                self.answer_triggers(first, payload.get(1..).unwrap_or(&[]))
                    .await
            }
            17 => tokio::time::sleep(Duration::from_millis(u64::from(first) * 10)).await,
            18 => {
                let request = proto::RestoreSavepointRequest {
                    job_id: JOB.to_string(),
                    path: self.path(first, payload),
                    allow_non_restored_state: first & 1 == 1,
                    claim_mode: i32::from(first >> 1 & 3),
                };
                let _ = rpc.restore_savepoint(Request::new(request)).await;
            }
            19 => {
                let path = self.path(first, payload);
                let request = proto::DisposeSavepointRequest { path };
                let _ = rpc.dispose_savepoint(Request::new(request)).await;
            }
            _ => {
                // A task of the running job changes state (restart, failure, finish).
                let (vertex, subtask_index, _) = TASKS[usize::from(first) % TASKS.len()];
                let attempt_id = u64::from(payload.get(1).copied().unwrap_or(1));
                let state = i32::from(payload.get(2).copied().unwrap_or(0) % 8);
                let task = proto::TaskInfo {
                    job_id: JOB.to_string(),
                    subtask: Some(proto::SubtaskRef {
                        vertex_id: vertex.to_string(),
                        subtask_index,
                    }),
                    attempt_id,
                    state,
                };
                let register = proto::TaskManagerMessage {
                    message: Some(Upward::RegisterTasks(proto::RegisterTasks {
                        tasks: vec![task],
                    })),
                };
                self.stream_message(TM, register);
            }
        }
        // Let what the request set off (completions, persistence) run.
        tokio::task::yield_now().await;
    }

    /// Shuts the coordinator down and checks what must hold at the end.
    async fn finish(mut self) {
        self.coordinator.shutdown();
        for call in std::mem::take(&mut self.waiting) {
            let ended = tokio::time::timeout(Duration::from_secs(3600), call).await;
            assert!(
                ended.is_ok(),
                "a call waiting for a snapshot was left hanging after shutdown"
            );
        }
        self.collect_sent();
        let mut latest: BTreeMap<(String, AttemptId), CheckpointId> = BTreeMap::new();
        for (_, message) in &self.sent {
            if let TaskMessage::TriggerCheckpoint {
                job_id,
                checkpoint_id,
                attempt_id,
                ..
            } = message
            {
                let key = (job_id.to_string(), *attempt_id);
                if let Some(previous) = latest.insert(key, *checkpoint_id) {
                    assert!(
                        previous < *checkpoint_id,
                        "job {job_id} attempt {attempt_id} got checkpoint {checkpoint_id} \
                         after {previous}"
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut harness = Harness::new().await;
        let mut rest = data;
        let mut ops = 0;
        while let [tag, length, tail @ ..] = rest {
            let length = usize::from(*length).min(tail.len());
            let (payload, next) = tail.split_at(length);
            harness.apply(*tag, payload).await;
            rest = next;
            ops += 1;
            if ops == MAX_OPS {
                break;
            }
        }
        harness.finish().await;
    });
});
