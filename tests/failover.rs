//! Failover with real processes (issue 5, item 4): a 3-member etcd cluster, moto as the
//! S3 store, and 3 `savepointd` replicas on loopback ports. Simulated task managers
//! reconnect with backoff (`simulate_reconnecting`) while savepoints are taken. The leader
//! is killed with SIGKILL again and again (every other round a minority etcd member too),
//! and once frozen with SIGSTOP and thawed after a successor took over.
//!
//! Checked: a new leader serves within a bound (the measured failover times are printed)
//! and never two replicas at once; no checkpoint id is handed out twice (savepoint ids
//! as reported, and every id the task managers were triggered with, periodic
//! checkpoints included, rises from one leader to the next); a savepoint in flight at a
//! kill ends COMPLETED or FAILED with COORDINATOR_SHUT_DOWN on the new leader, never lost
//! or pending; every savepoint reported complete is listed and restores with exactly the
//! state the tasks acknowledged, from S3; and the frozen leader, once thawed, is fenced:
//! it reports NOT_SERVING and names its successor (its refused etcd writes are shown
//! in-process by tests/etcd_store.rs and tests/ha.rs).
//!
//! `FAILOVER_ROUNDS` (default 4) sets how many leaders are killed.

mod common;

use common::etcd::EtcdCluster;
use common::free_port;
use common::moto::Moto;
use savepoint_coordinator::client::{
    self,
    simulator::{SimulatedVertex, SimulatorConfig, simulate_reconnecting},
};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::service::gate::LEADER_ADDRESS_METADATA;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const JOB: &str = "failover-job";
/// A new leader must serve within this after the old one died (lease 1 s).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);
/// How long one RPC may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a health check may take: short, so that a frozen replica delays a sweep
/// (and the failover figure) only a little.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

struct Replica {
    address: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Replicas {
    replicas: Vec<Replica>,
    etcd_endpoints: String,
    moto_endpoint: String,
    bucket: String,
    _dir: tempfile::TempDir,
}

impl Replicas {
    fn start(count: usize, etcd: &EtcdCluster, moto: &Moto) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let replicas = (0..count)
            .map(|i| Replica {
                address: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("replica-{i}")),
                log: dir.path().join(format!("replica-{i}.log")),
                child: None,
            })
            .collect();
        let mut replicas = Replicas {
            replicas,
            etcd_endpoints: etcd.endpoints().join(","),
            moto_endpoint: moto.endpoint.clone(),
            bucket: moto.bucket.clone(),
            _dir: dir,
        };
        for i in 0..count {
            replicas.spawn(i);
        }
        replicas
    }

    fn spawn(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_savepointd"))
            .args(["--listen", &replica.address])
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args([
                "--object-store-url",
                &format!("s3://{}/failover", self.bucket),
            ])
            .args(["--s3-endpoint", &self.moto_endpoint, "--s3-allow-http"])
            .args(["--etcd-endpoint", &self.etcd_endpoints])
            .args(["--etcd-prefix", "/failover", "--leader-lease-secs", "1"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("RUST_LOG", "warn,savepoint_coordinator::server=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start savepointd");
        replica.child = Some(child);
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.replicas[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, index: usize, signal: &str) {
        let pid = self.replicas[index].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn addresses(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.address.clone()).collect()
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| {
                format!(
                    "--- {}:\n{}",
                    r.address,
                    std::fs::read_to_string(&r.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            if let Some(child) = &self.replicas[i].child {
                // A stopped process must be continued to die promptly.
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
            self.kill(i);
        }
    }
}

async fn channel(address: &str) -> Option<Channel> {
    tokio::time::timeout(CALL_TIMEOUT, client::connect(address))
        .await
        .ok()?
        .ok()
}

async fn health(address: &str) -> Option<ServingStatus> {
    common::health_check(
        channel(address).await?,
        "savepoint.v1.SavepointService",
        HEALTH_TIMEOUT,
    )
    .await
}

/// The index of the replica that reports SERVING, waiting up to `bound`. Every running
/// replica is asked at once (a frozen one only costs one short timeout per sweep), and
/// no sweep may find two of them serving.
async fn leader(replicas: &Replicas, bound: Duration) -> usize {
    let started = Instant::now();
    loop {
        let sweep = replicas.replicas.iter().map(|replica| async move {
            match replica.child {
                Some(_) => health(&replica.address).await,
                None => None,
            }
        });
        let statuses = futures::future::join_all(sweep).await;
        let serving: Vec<usize> = (0..statuses.len())
            .filter(|&i| statuses[i] == Some(ServingStatus::Serving))
            .collect();
        assert!(
            serving.len() <= 1,
            "replicas {serving:?} all report SERVING at once:\n{}",
            replicas.logs()
        );
        if let Some(&leader) = serving.first() {
            return leader;
        }
        assert!(
            started.elapsed() < bound,
            "no replica served within {bound:?}:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Triggers a detached savepoint on the leader and returns its operation id, for an
/// operation that is in flight when the leader dies.
async fn trigger_detached(address: &str, request_id: &str) -> Option<String> {
    let mut client = savepoints_client(address).await;
    let request = proto::TriggerSavepointRequest {
        job_id: JOB.to_string(),
        request_id: request_id.to_string(),
        detach: true,
        ..Default::default()
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.trigger_savepoint(request)).await {
        Ok(Ok(response)) => Some(response.into_inner().operation_id),
        Ok(Err(status)) => {
            tracing_note(&status);
            None
        }
        Err(_) => None,
    }
}

/// The outcome of operation `operation_id` as the current leader reports it, once it is
/// no longer PENDING: an operation accepted by a leader that then died must end up
/// COMPLETED or FAILED, never lost and never pending for ever.
async fn settled_operation(replicas: &Replicas, operation_id: &str) -> proto::SavepointOperation {
    let started = Instant::now();
    loop {
        let leader = leader(replicas, FAILOVER_BOUND).await;
        let mut client = savepoints_client(&replicas.replicas[leader].address).await;
        let request = proto::GetSavepointOperationRequest {
            job_id: JOB.to_string(),
            operation_id: operation_id.to_string(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.get_savepoint_operation(request)).await {
            Ok(Ok(response)) => {
                let operation = response.into_inner();
                if operation.status() != proto::OperationStatus::Pending {
                    return operation;
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                panic!("operation {operation_id}, accepted before the failover, is lost: {status}")
            }
            Ok(Err(status)) => tracing_note(&status),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "operation {operation_id} still pending 30 s after the failover:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn savepoints_client(address: &str) -> SavepointServiceClient<Channel> {
    SavepointServiceClient::new(channel(address).await.expect("connect to the leader"))
}

fn job_spec(job_id: &str) -> proto::RegisterJobRequest {
    proto::RegisterJobRequest {
        job_id: job_id.to_string(),
        vertices: vec![
            proto::Vertex {
                id: "src".to_string(),
                parallelism: 2,
                max_parallelism: 0,
            },
            proto::Vertex {
                id: "sink".to_string(),
                parallelism: 2,
                max_parallelism: 0,
            },
        ],
        trigger_vertices: vec!["src".to_string()],
        // Periodic checkpoints too, so that ids are drawn from the counter all the time.
        policy: Some(proto::CheckpointPolicy {
            interval_ms: 200,
            timeout_ms: 5_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn simulator_config() -> SimulatorConfig {
    SimulatorConfig {
        job_id: JOB.to_string(),
        vertices: vec![
            SimulatedVertex {
                id: "src".to_string(),
                parallelism: 2,
            },
            SimulatedVertex {
                id: "sink".to_string(),
                parallelism: 2,
            },
        ],
        wait_for_vertices: Vec::new(),
        task_managers: 2,
        ack_delay: Duration::ZERO,
    }
}

/// Takes a savepoint on the current leader, retrying (bounded) through leader changes,
/// each attempt with its own request id derived from `name`; returns its id and path
/// once a replica reports it complete.
async fn take_savepoint(replicas: &Replicas, name: &str, attempt_bound: Duration) -> (u64, String) {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let leader = leader(replicas, FAILOVER_BOUND).await;
        let mut client = savepoints_client(&replicas.replicas[leader].address).await;
        let request = proto::TriggerSavepointRequest {
            job_id: JOB.to_string(),
            request_id: format!("{name}-attempt-{attempt}"),
            ..Default::default()
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.trigger_savepoint(request)).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                return (response.checkpoint_id, response.path);
            }
            // Tasks not yet reconnected to a new leader, or the leader changed meanwhile.
            Ok(Err(status)) => tracing_note(&status),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < attempt_bound,
            "no savepoint {name} completed within {attempt_bound:?}:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tracing_note(status: &tonic::Status) {
    if std::env::var_os("FAILOVER_VERBOSE").is_some() {
        eprintln!(
            "savepoint attempt failed: {:?}: {}",
            status.code(),
            status.message()
        );
    }
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_killed_again_and_again_and_nothing_is_lost() {
    let rounds: usize = std::env::var("FAILOVER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let mut etcd = EtcdCluster::start(3).await;
    let moto = Moto::start().await;
    let mut replicas = Replicas::start(3, &etcd, &moto);
    let first = leader(&replicas, Duration::from_secs(30)).await;

    let mut client = savepoints_client(&replicas.replicas[first].address).await;
    client
        .register_job(job_spec(JOB))
        .await
        .expect("RegisterJob");
    client
        .update_job_status(proto::UpdateJobStatusRequest {
            job_id: JOB.to_string(),
            status: proto::JobStatus::Running.into(),
        })
        .await
        .expect("UpdateJobStatus");

    let (stop_task_managers, task_managers_stopped) = oneshot::channel::<()>();
    let addresses = replicas.addresses();
    let task_managers = tokio::spawn(async move {
        simulate_reconnecting(&addresses, simulator_config(), async {
            let _ = task_managers_stopped.await;
        })
        .await
    });

    // savepoint id -> path, in the order the coordinator reported them complete.
    let mut completed: BTreeMap<u64, String> = BTreeMap::new();
    let mut completion_order = Vec::new();
    let mut failovers = Vec::new();
    let mut first_savepoints = Vec::new();
    let mut leader_kills = 0;
    // Savepoints in flight at a kill that the new leader reports (completed, failed).
    let mut in_flight_outcomes = (0, 0);
    let mut etcd_kills = 0;
    for round in 0..rounds {
        for _ in 0..2 {
            let (id, path) = take_savepoint(
                &replicas,
                &format!("round-{round}-{}", completion_order.len()),
                Duration::from_secs(30),
            )
            .await;
            assert!(
                completed.insert(id, path).is_none(),
                "savepoint id {id} reported twice"
            );
            completion_order.push(id);
        }
        let old = leader(&replicas, FAILOVER_BOUND).await;
        let in_flight = trigger_detached(
            &replicas.replicas[old].address,
            &format!("in-flight-{round}"),
        )
        .await;
        let killed_etcd = (round % 2 == 1).then_some(round % 3);
        if let Some(member) = killed_etcd {
            etcd.kill(member);
            etcd_kills += 1;
        }
        replicas.kill(old);
        leader_kills += 1;
        let killed = Instant::now();
        let new = leader(&replicas, FAILOVER_BOUND).await;
        failovers.push(killed.elapsed());
        assert_ne!(new, old);
        if let Some(operation_id) = in_flight {
            let operation = settled_operation(&replicas, &operation_id).await;
            match operation.status() {
                proto::OperationStatus::Completed => {
                    in_flight_outcomes.0 += 1;
                    assert!(
                        completed
                            .insert(operation.checkpoint_id, operation.path)
                            .is_none(),
                        "savepoint id {} reported twice",
                        operation.checkpoint_id
                    );
                    completion_order.push(operation.checkpoint_id);
                }
                _ => {
                    in_flight_outcomes.1 += 1;
                    assert_eq!(
                        operation.failure_reason(),
                        proto::FailureReason::CoordinatorShutDown,
                        "an operation cut off by the failover: {operation:?}"
                    );
                }
            }
        }
        let (id, path) = take_savepoint(
            &replicas,
            &format!("after-kill-{round}"),
            Duration::from_secs(30),
        )
        .await;
        first_savepoints.push(killed.elapsed());
        assert!(
            completed.insert(id, path).is_none(),
            "savepoint id {id} reported twice"
        );
        completion_order.push(id);
        replicas.spawn(old);
        if let Some(member) = killed_etcd {
            etcd.restart(member);
            etcd.wait_until_serving().await;
        }
    }

    // Freeze the leader; a successor takes over; the thawed one is fenced.
    let frozen = leader(&replicas, FAILOVER_BOUND).await;
    replicas.signal(frozen, "-STOP");
    let stopped = Instant::now();
    let successor = loop {
        let candidate = leader(&replicas, FAILOVER_BOUND).await;
        if candidate != frozen {
            break candidate;
        }
    };
    failovers.push(stopped.elapsed());
    let (id, path) = take_savepoint(&replicas, "after-freeze", Duration::from_secs(30)).await;
    assert!(completed.insert(id, path).is_none());
    completion_order.push(id);
    replicas.signal(frozen, "-CONT");
    let thawed = &replicas.replicas[frozen].address;
    let started = Instant::now();
    let refusal = loop {
        if health(thawed).await == Some(ServingStatus::NotServing) {
            let mut client = savepoints_client(thawed).await;
            let request = proto::ListSavepointsRequest {
                job_id: JOB.to_string(),
            };
            if let Err(status) = client.list_savepoints(request).await
                && status.metadata().get(LEADER_ADDRESS_METADATA).is_some()
            {
                break status;
            }
        }
        assert!(
            started.elapsed() < FAILOVER_BOUND,
            "the thawed leader still serves:\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable);
    assert_eq!(
        refusal.metadata().get(LEADER_ADDRESS_METADATA).unwrap(),
        replicas.replicas[successor].address.as_str(),
        "the thawed replica names its successor"
    );

    // Ids only went up, across every leader.
    assert!(
        completion_order.windows(2).all(|w| w[0] < w[1]),
        "savepoint ids out of order across failovers: {completion_order:?}"
    );

    // Every reported savepoint is listed and restores with the acknowledged state.
    let leader_now = leader(&replicas, FAILOVER_BOUND).await;
    let mut client = savepoints_client(&replicas.replicas[leader_now].address).await;
    let listed = client
        .list_savepoints(proto::ListSavepointsRequest {
            job_id: JOB.to_string(),
        })
        .await
        .expect("ListSavepoints")
        .into_inner()
        .savepoints;
    for (id, path) in &completed {
        assert!(
            listed
                .iter()
                .any(|s| s.checkpoint_id == *id && &s.path == path),
            "savepoint {id} at {path} is not listed: {listed:?}"
        );
        assert!(path.starts_with("s3://"), "{path}");
        let copy = format!("restore-{id}");
        client
            .register_job(job_spec(&copy))
            .await
            .expect("register a copy");
        let restored = client
            .restore_savepoint(proto::RestoreSavepointRequest {
                job_id: copy.clone(),
                path: path.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("restore savepoint {id}: {e}"))
            .into_inner();
        assert_eq!(restored.checkpoint_id, *id);
        assert_eq!(restored.assignments.len(), 4);
        for assignment in &restored.assignments {
            let subtask = assignment.subtask.as_ref().unwrap();
            let expected = format!("{}/{}@{id}", subtask.vertex_id, subtask.subtask_index);
            let inline: Vec<_> = assignment
                .handles
                .iter()
                .filter_map(|h| match &h.data {
                    Some(proto::state_handle::Data::Inline(bytes)) => Some(bytes.to_vec()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                inline,
                vec![expected.into_bytes()],
                "state of savepoint {id}"
            );
        }
    }

    let _ = stop_task_managers.send(());
    let summary = task_managers
        .await
        .unwrap()
        .expect("simulated task managers");
    assert_eq!(
        in_flight_outcomes.0 + in_flight_outcomes.1,
        rounds,
        "every round killed a leader with a savepoint in flight"
    );

    // Periodic checkpoints and savepoints alike: every id a later leader triggered is
    // above every id an earlier leader did.
    let mut highest_earlier: Option<(u64, u64)> = None; // (epoch, highest id)
    let mut epochs = 0;
    for term in &summary.terms {
        let Some((lowest, highest)) = term.checkpoint_ids else {
            continue;
        };
        match highest_earlier {
            Some((epoch, earlier)) if epoch < term.leader_epoch => {
                assert!(
                    lowest > earlier,
                    "leader epoch {} triggered checkpoint {lowest}, not above {earlier} of \
                     epoch {epoch}: {:?}",
                    term.leader_epoch,
                    summary.terms
                );
                epochs += 1;
            }
            Some((epoch, _)) => assert_eq!(epoch, term.leader_epoch, "{:?}", summary.terms),
            None => epochs += 1,
        }
        let highest = highest_earlier.map_or(highest, |(_, h)| h.max(highest));
        highest_earlier = Some((term.leader_epoch, highest));
    }
    assert!(
        epochs > rounds,
        "checkpoints were triggered under every leader: {:?}",
        summary.terms
    );
    let mut failover_times = failovers.clone();
    let mut first_savepoint_times = first_savepoints.clone();
    let failover_median = median(&mut failover_times);
    let first_savepoint_median = median(&mut first_savepoint_times);
    common::report(&format!(
        "failover: {leader_kills} leaders killed (SIGKILL), 1 frozen (SIGSTOP), {etcd_kills} \
         etcd members killed; new leader serving after min {:?} / median \
         {failover_median:?} / max {:?}; first savepoint on the new leader after median \
         {first_savepoint_median:?} / max {:?}; {} savepoints verified (listed and \
         restored from S3); in flight at a kill: {} completed, {} failed \
         COORDINATOR_SHUT_DOWN; checkpoint ids rose across {epochs} leader epochs ({} \
         triggers); task managers connected {} times, {} acks",
        failover_times.first().unwrap(),
        failover_times.last().unwrap(),
        first_savepoint_times.last().unwrap(),
        completed.len(),
        in_flight_outcomes.0,
        in_flight_outcomes.1,
        summary.counts.triggers,
        summary.connections,
        summary.counts.acks,
    ));
    assert!(
        summary.connections as usize > rounds,
        "task managers reconnected after each failover"
    );
    for failover in &failovers {
        assert!(*failover < FAILOVER_BOUND, "{failover:?}");
    }
}
