//! The etcd store and the leader election against a real etcd (issue 5, items 1 and 2):
//! ID counters under racing writers, job and operation records, fenced writes of a
//! deposed leader, and leadership moving when the leader goes.

mod common;

use common::etcd::EtcdCluster;
use savepoint_coordinator::coordinator::model::{
    CheckpointId, CheckpointPolicy, CompletedSnapshot, JobId, JobSpec, JobStatus, OperationOutcome,
    SavepointOperation, SavepointTrigger, SnapshotKind, StateData, StateHandle, SubtaskState,
    VertexSpec, VertexState,
};
use savepoint_coordinator::ha::election::{self, ElectionConfig, LeaseDeadline, Role};
use savepoint_coordinator::ha::etcd::{self, EtcdClient};
use savepoint_coordinator::store::etcd::EtcdStore;
use savepoint_coordinator::store::object::BucketStore;
use savepoint_coordinator::store::{CompletedCheckpointStore, SavepointStore};
use savepoint_coordinator::store::{
    IdCounterStore, JobRecord, JobStore, OperationStore, StoreError,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn job(id: &str) -> JobId {
    JobId::new(id)
}

fn record(id: &str, status: JobStatus) -> JobRecord {
    JobRecord {
        spec: JobSpec {
            job_id: job(id),
            vertices: vec![VertexSpec {
                id: "src".to_string(),
                parallelism: 2,
                max_parallelism: 128,
            }],
            trigger_vertices: vec!["src".to_string()],
            wait_for_vertices: vec!["src".to_string()],
            commit_vertices: vec!["src".to_string()],
            policy: CheckpointPolicy::default(),
            savepoint_dir: None,
            savepoint_policy: Default::default(),
        },
        status,
        fencing_token: 42,
    }
}

fn election_config(key: &str, address: &str) -> ElectionConfig {
    ElectionConfig {
        key: key.to_string(),
        lease_ttl: Duration::from_secs(1),
        advertise_address: address.to_string(),
    }
}

/// Waits (bounded) until `role` satisfies `done`, returning it.
async fn wait_for_role(role: &mut watch::Receiver<Role>, done: impl Fn(&Role) -> bool) -> Role {
    tokio::time::timeout(Duration::from_secs(15), role.wait_for(|r| done(r)))
        .await
        .expect("role reached within 15 s")
        .expect("election still running")
        .clone()
}

#[tokio::test]
async fn racing_writers_never_get_the_same_checkpoint_id() {
    let cluster = EtcdCluster::start(1).await;
    let stores: Vec<EtcdStore> = (0..4)
        .map(|_| EtcdStore::new(cluster.client(), "/race", None))
        .collect();
    let job = job("raced");
    let mut tasks = Vec::new();
    for store in stores {
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                let first = store.reserve(&job, 3).await.expect("reserve");
                ids.extend((first.0..first.0 + 3).map(CheckpointId));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one writer's ids ascend: {ids:?}"
        );
        all.extend(ids);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an id was handed out twice");
    assert_eq!(all.len(), 4 * 25 * 3);
    assert_eq!(
        *all.iter().min().unwrap(),
        CheckpointId(1),
        "counters start at 1"
    );

    // advance_past moves the counter only forward.
    let store = EtcdStore::new(cluster.client(), "/race", None);
    store.advance_past(&job, CheckpointId(1000)).await.unwrap();
    assert_eq!(store.reserve(&job, 1).await.unwrap(), CheckpointId(1001));
    store.advance_past(&job, CheckpointId(5)).await.unwrap();
    assert_eq!(store.reserve(&job, 1).await.unwrap(), CheckpointId(1002));
    IdCounterStore::remove(&store, &job).await.unwrap();
    assert_eq!(store.reserve(&job, 1).await.unwrap(), CheckpointId(1));
}

#[tokio::test]
async fn job_and_operation_records_round_trip_and_corruption_is_data_loss() {
    let cluster = EtcdCluster::start(1).await;
    let store = EtcdStore::new(cluster.client(), "/records", None);
    JobStore::save(&store, &record("b-job", JobStatus::Running))
        .await
        .unwrap();
    JobStore::save(&store, &record("a-job", JobStatus::Created))
        .await
        .unwrap();
    let loaded = JobStore::load_all(&store).await.unwrap();
    let ids: Vec<_> = loaded
        .records
        .iter()
        .map(|r| r.spec.job_id.to_string())
        .collect();
    assert_eq!(ids, ["a-job", "b-job"]);
    assert_eq!(loaded.records[1], record("b-job", JobStatus::Running));

    let operation = SavepointOperation {
        operation_id: "nightly-1".to_string(),
        job_id: job("a-job"),
        checkpoint_id: CheckpointId(7),
        trigger: SavepointTrigger::Manual,
        drain: false,
        path: "s3://bucket/savepoints/savepoint-a-job-7".to_string(),
        trigger_timestamp_ms: 1_000,
        outcome: OperationOutcome::Completed {
            completion_timestamp_ms: 1_050,
            state_size_bytes: 99,
        },
    };
    OperationStore::save(&store, &operation).await.unwrap();
    assert_eq!(
        OperationStore::load_all(&store, &job("a-job"))
            .await
            .unwrap(),
        vec![operation.clone()]
    );
    assert!(
        OperationStore::load_all(&store, &job("b-job"))
            .await
            .unwrap()
            .is_empty()
    );
    OperationStore::remove(&store, &job("a-job"), "nightly-1")
        .await
        .unwrap();
    assert!(
        OperationStore::load_all(&store, &job("a-job"))
            .await
            .unwrap()
            .is_empty()
    );

    // A damaged record is reported for its job and hides no other.
    let client = cluster.client();
    let damaged = etcd::pb::etcdserverpb::TxnRequest {
        compare: Vec::new(),
        success: vec![etcd::put(
            "/records/jobs/b-job",
            b"SPCM garbage".to_vec(),
            0,
        )],
        failure: Vec::new(),
    };
    client.txn(damaged).await.unwrap();
    let loaded = JobStore::load_all(&store).await.unwrap();
    assert_eq!(loaded.records.len(), 1);
    assert_eq!(loaded.unreadable.len(), 1);
    assert_eq!(loaded.unreadable[0].job_id, "b-job");
    assert!(matches!(
        loaded.unreadable[0].error,
        StoreError::Corrupted { .. }
    ));

    JobStore::remove(&store, &job("a-job")).await.unwrap();
    assert!(JobStore::load_all(&store).await.unwrap().records.is_empty());
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_deposed_leaders_writes_are_refused() {
    let cluster = EtcdCluster::start(1).await;
    let key = "/fenced/leader";
    let (stop_a, stop_a_rx) = watch::channel(false);
    let (mut role_a, task_a) = election::campaign(
        cluster.client(),
        election_config(key, "10.0.0.1:1"),
        LeaseDeadline::default(),
        stop_a_rx,
    );
    let first = wait_for_role(&mut role_a, |r| matches!(r, Role::Leader { .. })).await;
    let fence_a = first.fence(key).expect("a leads");

    let (stop_b, stop_b_rx) = watch::channel(false);
    let (mut role_b, task_b) = election::campaign(
        cluster.client(),
        election_config(key, "10.0.0.2:1"),
        LeaseDeadline::default(),
        stop_b_rx,
    );
    let seen = wait_for_role(&mut role_b, |r| {
        matches!(r, Role::Follower { leader: Some(_) })
    })
    .await;
    assert_eq!(
        seen,
        Role::Follower {
            leader: Some("10.0.0.1:1".to_string())
        },
        "b follows a and knows its address"
    );

    let store_a = EtcdStore::new(cluster.client(), "/fenced", Some(fence_a.clone()));
    JobStore::save(&store_a, &record("j", JobStatus::Running))
        .await
        .expect("the leader writes");
    let first_id = store_a.reserve(&job("j"), 10).await.unwrap();

    // a gives up (as at shutdown); b takes over with a larger fencing token.
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    let second = wait_for_role(&mut role_b, |r| matches!(r, Role::Leader { .. })).await;
    let fence_b = second.fence(key).unwrap();
    assert!(
        fence_b.revision > fence_a.revision,
        "{fence_b:?} after {fence_a:?}"
    );

    // a's late writes fail and change nothing; b's go through.
    let late = JobStore::save(&store_a, &record("j", JobStatus::Canceled)).await;
    assert!(
        matches!(&late, Err(StoreError::Deposed(m)) if m.contains("no longer the leader")),
        "{late:?}"
    );
    let late = store_a.reserve(&job("j"), 10).await;
    assert!(
        refused_as_deposed(&late),
        "a deposed leader reserved ids: {late:?}"
    );
    let store_b = EtcdStore::new(cluster.client(), "/fenced", Some(fence_b));
    let loaded = JobStore::load_all(&store_b).await.unwrap();
    assert_eq!(loaded.records[0].status, JobStatus::Running);
    let next_id = store_b.reserve(&job("j"), 1).await.unwrap();
    assert_eq!(
        next_id,
        CheckpointId(first_id.0 + 10),
        "no id reused, none skipped"
    );

    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

#[tokio::test]
async fn a_crashed_leaders_lease_expires_and_another_replica_takes_over() {
    let cluster = EtcdCluster::start(1).await;
    let key = "/crash/leader";
    let (_stop_a, stop_a_rx) = watch::channel(false);
    let (mut role_a, task_a) = election::campaign(
        cluster.client(),
        election_config(key, "a:1"),
        LeaseDeadline::default(),
        stop_a_rx,
    );
    wait_for_role(&mut role_a, |r| matches!(r, Role::Leader { .. })).await;
    let (_stop_b, stop_b_rx) = watch::channel(false);
    let (mut role_b, _task_b) = election::campaign(
        cluster.client(),
        election_config(key, "b:1"),
        LeaseDeadline::default(),
        stop_b_rx,
    );
    wait_for_role(&mut role_b, |r| {
        matches!(r, Role::Follower { leader: Some(_) })
    })
    .await;

    // Aborting the task is the in-process kill -9: no revoke, the lease has to run out.
    task_a.abort();
    let crashed = tokio::time::Instant::now();
    wait_for_role(&mut role_b, |r| matches!(r, Role::Leader { .. })).await;
    let failover = crashed.elapsed();
    println!("failover after a crashed leader: {failover:?} (lease TTL 1 s)");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
}

#[tokio::test]
async fn a_prefix_larger_than_one_page_is_read_whole_and_in_order() {
    let cluster = EtcdCluster::start(1).await;
    let store = EtcdStore::new(cluster.client(), "/paged", None);
    // More than two pages of the client's range reads (256 keys each).
    let count = 600;
    let saves = (0..count).map(|i| {
        let operation = SavepointOperation {
            operation_id: format!("op-{i:04}"),
            job_id: job("paged"),
            checkpoint_id: CheckpointId(i + 1),
            trigger: SavepointTrigger::Manual,
            drain: false,
            path: format!("s3://bucket/savepoints/savepoint-paged-{}", i + 1),
            trigger_timestamp_ms: i,
            outcome: OperationOutcome::Pending,
        };
        let store = store.clone();
        async move { OperationStore::save(&store, &operation).await }
    });
    for saved in futures::future::join_all(saves).await {
        saved.unwrap();
    }
    let loaded = OperationStore::load_all(&store, &job("paged"))
        .await
        .unwrap();
    let ids: Vec<u64> = loaded.iter().map(|o| o.checkpoint_id.0).collect();
    assert_eq!(ids, (1..=count).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_record_write_without_an_answer_keeps_what_it_may_name() {
    let mut cluster = EtcdCluster::start(1).await;
    let bucket = Arc::new(
        BucketStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "mem://bucket/p",
        )
        .unwrap(),
    );
    let store = EtcdStore::new(cluster.client(), "/unanswered", None);
    let (checkpoints, savepoints) = store.snapshot_records(bucket.clone(), bucket.clone());

    // etcd does not answer: the outcome of the pointer and history writes is unknown, so
    // the checkpoint and the savepoint must stay where a late commit would point.
    cluster.kill(0);
    let failed = checkpoints
        .add(&completed("j", 1, SnapshotKind::Checkpoint))
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let failed = savepoints
        .write(
            "mem://bucket/p/savepoints",
            &completed("j", 2, SnapshotKind::Savepoint),
            SavepointTrigger::Manual,
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let in_bucket = CompletedCheckpointStore::load_all(bucket.as_ref(), &job("j"))
        .await
        .unwrap();
    assert_eq!(in_bucket.len(), 1, "the checkpoint is kept");
    let path = "mem://bucket/p/savepoints/savepoint-j-2";
    assert_eq!(
        SavepointStore::read(bucket.as_ref(), path)
            .await
            .unwrap()
            .checkpoint_id,
        CheckpointId(2),
        "the savepoint is kept"
    );

    // Back up: neither write was committed, so neither counts (the objects are orphans,
    // which costs storage, never a listed savepoint without its data).
    cluster.restart(0);
    cluster.wait_until_serving().await;
    assert!(
        CompletedCheckpointStore::load_all(&checkpoints, &job("j"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        SavepointStore::list(&savepoints, &job("j"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_client_keeps_working_while_a_minority_of_members_is_down() {
    let mut cluster = EtcdCluster::start(3).await;
    let client: EtcdClient = cluster.client();
    let store = EtcdStore::new(client.clone(), "/minority", None);
    let mut ids = Vec::new();
    ids.push(store.reserve(&job("m"), 1).await.unwrap());
    for member in 0..3 {
        cluster.kill(member);
        for _ in 0..5 {
            ids.push(
                store
                    .reserve(&job("m"), 1)
                    .await
                    .expect("reserve with a member down"),
            );
        }
        cluster.restart(member);
        // Before the next member goes down, this one must be back in the cluster, or
        // two members would be missing at once.
        cluster.wait_until_member_serves(member).await;
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// Whether `result` is the refusal of a write by a leader that was deposed.
fn refused_as_deposed<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Deposed(m)) if m.contains("no longer the leader"))
}

fn completed(job_id: &str, id: u64, kind: SnapshotKind) -> CompletedSnapshot {
    CompletedSnapshot {
        job_id: job(job_id),
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
                    data: StateData::Inline(bytes::Bytes::from(format!("offset@{id}"))),
                    key_groups: None,
                }],
            }],
        }],
    }
}

#[tokio::test]
async fn checkpoints_and_savepoints_a_deposed_leader_writes_never_count() {
    let cluster = EtcdCluster::start(1).await;
    let key = "/pointers/leader";
    let bucket = Arc::new(
        BucketStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "mem://bucket/p",
        )
        .unwrap(),
    );
    let (stop_a, stop_a_rx) = watch::channel(false);
    let (mut role_a, task_a) = election::campaign(
        cluster.client(),
        election_config(key, "a:1"),
        LeaseDeadline::default(),
        stop_a_rx,
    );
    let fence_a = wait_for_role(&mut role_a, |r| matches!(r, Role::Leader { .. }))
        .await
        .fence(key);
    let store_a = EtcdStore::new(cluster.client(), "/pointers", fence_a);
    let (checkpoints_a, savepoints_a) = store_a.snapshot_records(bucket.clone(), bucket.clone());

    checkpoints_a
        .add(&completed("j", 1, SnapshotKind::Checkpoint))
        .await
        .unwrap();
    let kept = savepoints_a
        .write(
            "mem://bucket/p/savepoints",
            &completed("j", 2, SnapshotKind::Savepoint),
            SavepointTrigger::Manual,
        )
        .await
        .unwrap();

    // a is deposed; b leads.
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    let (_stop_b, stop_b_rx) = watch::channel(false);
    let (mut role_b, _task_b) = election::campaign(
        cluster.client(),
        election_config(key, "b:1"),
        LeaseDeadline::default(),
        stop_b_rx,
    );
    let fence_b = wait_for_role(&mut role_b, |r| matches!(r, Role::Leader { .. }))
        .await
        .fence(key);

    // a's late checkpoint and savepoint fail and are not listed. The checkpoint's object
    // is taken back; the savepoint's metadata stays, since b may already have indexed it
    // from its operation record (recovery decides: `Coordinator::recover_operations`).
    let late = checkpoints_a
        .add(&completed("j", 3, SnapshotKind::Checkpoint))
        .await;
    assert!(refused_as_deposed(&late), "{late:?}");
    let late = savepoints_a
        .write(
            "mem://bucket/p/savepoints",
            &completed("j", 4, SnapshotKind::Savepoint),
            SavepointTrigger::Manual,
        )
        .await;
    assert!(refused_as_deposed(&late), "{late:?}");
    let in_bucket: Vec<_> = CompletedCheckpointStore::load_all(bucket.as_ref(), &job("j"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.checkpoint_id.0)
        .collect();
    assert_eq!(
        in_bucket,
        [1],
        "the refused checkpoint's object was taken back"
    );
    let bucket_index: Vec<_> = SavepointStore::list(bucket.as_ref(), &job("j"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.checkpoint_id.0)
        .collect();
    assert_eq!(bucket_index, [2], "the refused savepoint is not indexed");
    assert_eq!(
        SavepointStore::read(bucket.as_ref(), "mem://bucket/p/savepoints/savepoint-j-4")
            .await
            .unwrap()
            .checkpoint_id,
        CheckpointId(4),
        "its metadata stays for the successor's recovery"
    );

    // b sees exactly what a wrote while it led.
    let store_b = EtcdStore::new(cluster.client(), "/pointers", fence_b);
    let (checkpoints_b, savepoints_b) = store_b.snapshot_records(bucket.clone(), bucket.clone());
    let retained = checkpoints_b.load_all(&job("j")).await.unwrap();
    assert_eq!(retained, vec![completed("j", 1, SnapshotKind::Checkpoint)]);
    let history = savepoints_b.list(&job("j")).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].path, kept);
    assert_eq!(
        savepoints_b.read(&kept).await.unwrap().checkpoint_id,
        CheckpointId(2)
    );

    // Disposal through b removes the history entry and the files; it is idempotent.
    assert!(savepoints_b.dispose(&kept).await.unwrap());
    assert!(savepoints_b.list(&job("j")).await.unwrap().is_empty());
    assert!(
        SavepointStore::list(bucket.as_ref(), &job("j"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!savepoints_b.dispose(&kept).await.unwrap());
    checkpoints_b
        .remove(&job("j"), CheckpointId(1))
        .await
        .unwrap();
    assert!(checkpoints_b.load_all(&job("j")).await.unwrap().is_empty());
}
