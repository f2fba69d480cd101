//! Store faults (issue 4, item 2): failed and slow writes, a full disk, unreadable and
//! corrupted metadata. Each yields a typed failure for the job it hits, and the server
//! keeps serving the other jobs meanwhile.

mod common;

use common::{
    Acks, Cluster, TestServer, eventually, failure_reason, job, policy, register, set_status,
    stats, status_changes, trigger_savepoint, within,
};
use savepoint_coordinator::coordinator::model::JobId;
use savepoint_coordinator::proto;
use savepoint_coordinator::store::SavepointStore;
use savepoint_coordinator::store::faults::FaultPlan;
use savepoint_coordinator::store::fs::FsStore;
use std::io::ErrorKind;
use std::time::Duration;
use tonic::Code;

const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

/// Registers `name` with a running cluster that acks everything.
async fn running_job(
    server: &TestServer,
    client: &mut proto::savepoint_service_client::SavepointServiceClient<tonic::transport::Channel>,
    name: &str,
    timeout_ms: u64,
) -> Cluster {
    let spec = job(name, VERTICES, policy(0, timeout_ms));
    register(client, &spec).await;
    let cluster = Cluster::start(server, &spec, 2, Acks::All, &[]).await;
    set_status(client, name, proto::JobStatus::Running).await;
    cluster
}

fn only(job: &str, plan: FaultPlan) -> FaultPlan {
    FaultPlan {
        job: Some(JobId::new(job)),
        ..plan
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_savepoint_of_that_job_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let _a = running_job(&server, &mut client, "full", 0).await;
    let _b = running_job(&server, &mut client, "healthy", 0).await;
    // The first savepoint reserves a block of ids, so the fault below hits the metadata.
    trigger_savepoint(&mut client, "full")
        .await
        .expect("savepoint");

    faults.set(only(
        "full",
        FaultPlan {
            failing_writes: Some(ErrorKind::StorageFull),
            ..FaultPlan::default()
        },
    ));
    let failed = trigger_savepoint(&mut client, "full")
        .await
        .expect_err("no space for the metadata");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert_eq!(failure_reason(&failed), Some("STORE_IO"));
    assert!(
        failed.message().contains("no storage space"),
        "the cause is named: {}",
        failed.message()
    );
    let healthy = trigger_savepoint(&mut client, "healthy")
        .await
        .expect("the other job is not affected");
    assert!(
        std::path::Path::new(&healthy.path)
            .join("_metadata")
            .is_file()
    );

    let full = stats(&mut client, "full").await;
    assert_eq!((full.completed, full.failed), (1, 1));
    assert_eq!(full.failed_by_reason.get("STORE_IO"), Some(&1));

    faults.clear();
    let recovered = trigger_savepoint(&mut client, "full")
        .await
        .expect("works again once there is space");
    assert!(recovered.checkpoint_id > failed_checkpoint_id(&full));
    server.stop().await;
}

fn failed_checkpoint_id(stats: &proto::GetCheckpointStatsResponse) -> u64 {
    stats
        .latest_failed
        .as_ref()
        .map(|s| s.checkpoint_id)
        .expect("a failed snapshot")
}

/// Polls the job's stats until `done` holds; returns them.
async fn stats_when(
    client: &proto::savepoint_service_client::SavepointServiceClient<tonic::transport::Channel>,
    job_id: &str,
    what: &str,
    done: impl Fn(&proto::GetCheckpointStatsResponse) -> bool,
) -> proto::GetCheckpointStatsResponse {
    eventually(what, || {
        let mut client = client.clone();
        let job_id = job_id.to_string();
        let stats = async move { stats(&mut client, &job_id).await };
        let done = &done;
        async move {
            let stats = stats.await;
            done(&stats).then_some(stats)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_metadata_writes_of_periodic_checkpoints_count_toward_the_tolerable_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let tolerant = proto::CheckpointPolicy {
        tolerable_failures: 1,
        ..policy(100, 5_000)
    };
    let spec = job("flaky-disk", VERTICES, tolerant);
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&server, &spec, 2, Acks::All, &[]).await;
    set_status(&mut client, "flaky-disk", proto::JobStatus::Running).await;
    // The first checkpoint reserves a block of ids, so the fault below hits the metadata.
    stats_when(&client, "flaky-disk", "a periodic checkpoint", |s| {
        s.completed >= 1
    })
    .await;

    faults.set(only(
        "flaky-disk",
        FaultPlan {
            failing_writes: Some(ErrorKind::StorageFull),
            ..FaultPlan::default()
        },
    ));
    let failing = stats_when(&client, "flaky-disk", "the job to be failing", |s| {
        s.failing
    })
    .await;
    assert!(failing.consecutive_failures >= 2, "{failing:?}");
    assert_eq!(
        failing.failed_by_reason.get("STORE_IO"),
        Some(&failing.failed),
        "every failure is a store failure: {:?}",
        failing.failed_by_reason
    );
    let latest = failing.latest_failed.clone().expect("a failed checkpoint");
    assert_eq!(latest.kind(), proto::SnapshotKind::Checkpoint);
    assert_eq!(latest.failure_reason(), proto::FailureReason::StoreIo);
    assert!(
        latest.failure_message.contains("no storage space"),
        "{}",
        latest.failure_message
    );
    cluster
        .wait_for("the task managers to hear the job is failing", |log| {
            status_changes(log).iter().any(|c| c.failing).then_some(())
        })
        .await;

    faults.clear();
    let recovered = stats_when(&client, "flaky-disk", "a checkpoint after the fault", |s| {
        !s.failing && s.completed > failing.completed
    })
    .await;
    assert_eq!(recovered.consecutive_failures, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_id_reservation_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let spec = job("fresh", VERTICES, policy(0, 0));
    faults.set(only(
        "fresh",
        FaultPlan {
            failing_writes: Some(ErrorKind::StorageFull),
            ..FaultPlan::default()
        },
    ));
    let refused = within("RegisterJob", client.register_job(spec.clone()))
        .await
        .expect_err("the job record cannot be written");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    faults.clear();
    register(&mut client, &spec).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fsync_expires_the_savepoint_and_blocks_no_other_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let _slow = running_job(&server, &mut client, "slow", 400).await;
    let _fast = running_job(&server, &mut client, "fast", 0).await;
    faults.set(only(
        "slow",
        FaultPlan {
            write_delay: Some(Duration::from_millis(1_500)),
            ..FaultPlan::default()
        },
    ));
    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move { trigger_savepoint(&mut slow_client, "slow").await });
    // While the slow job's write hangs, the other job completes savepoints.
    for _ in 0..3 {
        trigger_savepoint(&mut client, "fast")
            .await
            .expect("the fast job is served meanwhile");
    }
    let expired = within("the slow savepoint", slow)
        .await
        .expect("task")
        .expect_err("expires while its metadata is written");
    assert_eq!(failure_reason(&expired), Some("EXPIRED"), "{expired:?}");
    // Every write of the job is slow: the operation record's already, so the savepoint
    // expires before its tasks are even triggered.
    assert!(
        expired.message().contains("expired after 400 ms"),
        "{}",
        expired.message()
    );

    // Once the slow write lands, what it wrote is removed again: the caller was told
    // the savepoint failed, so no savepoint may stay.
    faults.clear();
    let mut listed = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        listed = within(
            "ListSavepoints",
            client.list_savepoints(proto::ListSavepointsRequest {
                job_id: "slow".into(),
            }),
        )
        .await
        .expect("ListSavepoints")
        .into_inner()
        .savepoints;
        // The index entry is retired before the files go, so wait for both.
        if listed.is_empty() && !server.savepoint_dir().join("savepoint-slow-1").exists() {
            break;
        }
    }
    assert!(listed.is_empty(), "{listed:?}");
    assert!(
        !server.savepoint_dir().join("savepoint-slow-1").exists(),
        "its directory is gone too"
    );
    server.stop().await;
}

/// Names of the entries in `dir`, sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dying_in_the_middle_of_a_retention_disposal_orphans_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let spec = proto::RegisterJobRequest {
        savepoint_policy: Some(proto::SavepointPolicy {
            max_retained: 2,
            ..Default::default()
        }),
        ..job("retiring", VERTICES, policy(0, 0))
    };
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&server, &spec, 2, Acks::All, &[]).await;
    set_status(&mut client, "retiring", proto::JobStatus::Running).await;
    let mut paths = Vec::new();
    for _ in 0..2 {
        let savepoint = trigger_savepoint(&mut client, "retiring").await;
        paths.push(savepoint.expect("savepoint").path);
    }

    // The third savepoint retires the first; its disposal stops right after the index
    // entry is marked retired, and the server dies before anything is deleted.
    faults.set(only(
        "retiring",
        FaultPlan {
            interrupted_disposals: true,
            ..FaultPlan::default()
        },
    ));
    let third = trigger_savepoint(&mut client, "retiring").await;
    paths.push(third.expect("savepoint").path);
    listed_when(
        &client,
        "retiring",
        "the oldest to leave the history",
        &[3, 2],
    )
    .await;
    assert!(
        std::path::Path::new(&paths[0]).join("_metadata").is_file(),
        "the interrupted disposal deleted nothing yet"
    );
    drop(cluster);
    let server = server.restart().await;

    // Recovery (done before the server answers) finished the disposal: no files of the
    // retired savepoint, no index entry; the kept ones are listed and restorable.
    let mut client = server.savepoints().await;
    let listed = common::list_savepoints(&mut client, "retiring").await;
    assert!(!std::path::Path::new(&paths[0]).exists(), "{}", paths[0]);
    assert_eq!(
        entries(&server.savepoint_dir()),
        vec!["savepoint-retiring-2", "savepoint-retiring-3"]
    );
    let kept: Vec<(u64, &str)> = listed
        .iter()
        .map(|s| (s.checkpoint_id, s.path.as_str()))
        .collect();
    assert_eq!(kept, vec![(3, paths[2].as_str()), (2, paths[1].as_str())]);
    register(&mut client, &job("restored", VERTICES, policy(0, 0))).await;
    for (id, path) in [(2, &paths[1]), (3, &paths[2])] {
        let restored = within(
            "RestoreSavepoint",
            client.restore_savepoint(proto::RestoreSavepointRequest {
                job_id: "restored".into(),
                path: path.clone(),
                ..Default::default()
            }),
        )
        .await
        .expect("a kept savepoint is restorable")
        .into_inner();
        assert_eq!(restored.checkpoint_id, id);
        assert_eq!(
            restored.assignments,
            common::unchanged_assignments(VERTICES, &[], id)
        );
    }
    server.stop().await;
    // Nothing is left marked for disposal (read once the server is gone).
    let store = FsStore::open(dir.path().to_path_buf()).expect("open the data directory");
    assert_eq!(
        store
            .resume_disposals(&JobId::new("retiring"))
            .await
            .expect("read the index"),
        0,
        "no index entry is left marked for disposal"
    );
}

/// Polls the job's savepoint list until it holds exactly `ids` (newest first).
async fn listed_when(
    client: &proto::savepoint_service_client::SavepointServiceClient<tonic::transport::Channel>,
    job_id: &str,
    what: &str,
    ids: &[u64],
) {
    eventually(what, || {
        let mut client = client.clone();
        let job_id = job_id.to_string();
        async move {
            let listed = common::list_savepoints(&mut client, &job_id).await;
            let listed: Vec<u64> = listed.iter().map(|s| s.checkpoint_id).collect();
            (listed == ids).then_some(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_metadata_is_reported_and_other_jobs_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let _a = running_job(&server, &mut client, "locked", 0).await;
    let _b = running_job(&server, &mut client, "open", 0).await;
    let locked = trigger_savepoint(&mut client, "locked")
        .await
        .expect("savepoint");
    faults.set(only(
        "locked",
        FaultPlan {
            failing_reads: Some(ErrorKind::PermissionDenied),
            ..FaultPlan::default()
        },
    ));
    let listing = within(
        "ListSavepoints",
        client.list_savepoints(proto::ListSavepointsRequest {
            job_id: "locked".into(),
        }),
    )
    .await
    .expect_err("the index cannot be read");
    assert_eq!(listing.code(), Code::Unavailable, "{listing:?}");
    assert!(
        listing.message().contains("ermission denied"),
        "{}",
        listing.message()
    );

    register(&mut client, &job("target", VERTICES, policy(0, 0))).await;
    let restore = within(
        "RestoreSavepoint",
        client.restore_savepoint(proto::RestoreSavepointRequest {
            job_id: "target".into(),
            path: locked.path.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("the metadata cannot be read");
    assert_eq!(restore.code(), Code::Unavailable, "{restore:?}");

    trigger_savepoint(&mut client, "open")
        .await
        .expect("the other job is not affected");
    faults.clear();
    within(
        "RestoreSavepoint",
        client.restore_savepoint(proto::RestoreSavepointRequest {
            job_id: "target".into(),
            path: locked.path,
            ..Default::default()
        }),
    )
    .await
    .expect("readable again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_job_record_loses_that_job_only_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    for name in ["damaged", "intact"] {
        register(&mut client, &job(name, VERTICES, policy(0, 0))).await;
    }
    let server = server.restart_after(|data_dir| {
        let record = data_dir.join("jobs").join("damaged").join("job.rec");
        let mut bytes = std::fs::read(&record).expect("job record");
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&record, bytes).expect("truncate");
    });
    let server = server.await;
    let mut client = server.savepoints().await;
    let intact = stats(&mut client, "intact").await;
    assert_eq!(intact.job_status, proto::JobStatus::Created as i32);

    let lost = within(
        "GetCheckpointStats",
        client.get_checkpoint_stats(proto::GetCheckpointStatsRequest {
            job_id: "damaged".into(),
        }),
    )
    .await
    .expect_err("the damaged job is not silently gone");
    assert_eq!(lost.code(), Code::DataLoss, "{lost:?}");
    assert!(lost.message().contains("damaged"), "{}", lost.message());
    let again = within(
        "RegisterJob",
        client.register_job(job("damaged", VERTICES, policy(0, 0))),
    )
    .await
    .expect_err("the id is not registered over the damaged record");
    assert_eq!(again.code(), Code::DataLoss);
    server.stop().await;
}

/// The server dies after a savepoint's metadata is durable and before its index entry
/// is: the caller was already told the path, so the restarted server must list the
/// savepoint, report its operation COMPLETED, answer a repeat of the request with it and
/// restore it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_whose_index_entry_a_crash_cut_off_is_listed_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults(dir.path()).await;
    let mut client = server.savepoints().await;
    let cluster = running_job(&server, &mut client, "unindexed", 0).await;
    let first = trigger_savepoint(&mut client, "unindexed")
        .await
        .expect("savepoint");

    faults.set(only(
        "unindexed",
        FaultPlan {
            interrupted_indexing: true,
            ..FaultPlan::default()
        },
    ));
    let request = proto::TriggerSavepointRequest {
        job_id: "unindexed".into(),
        request_id: "deploy-42".into(),
        ..Default::default()
    };
    let reply = within(
        "TriggerSavepoint",
        client.trigger_savepoint(request.clone()),
    )
    .await
    .expect("complete once its metadata is durable")
    .into_inner();
    assert_eq!(reply.status(), proto::OperationStatus::Completed);
    assert!(
        std::path::Path::new(&reply.path)
            .join("_metadata")
            .is_file()
    );
    drop(cluster);
    let server = server.restart().await;

    let mut client = server.savepoints().await;
    let listed: Vec<(u64, String)> = common::list_savepoints(&mut client, "unindexed")
        .await
        .into_iter()
        .map(|s| (s.checkpoint_id, s.path))
        .collect();
    assert_eq!(
        listed,
        vec![
            (reply.checkpoint_id, reply.path.clone()),
            (first.checkpoint_id, first.path.clone())
        ]
    );
    let recorded = common::operation(&mut client, "unindexed", "deploy-42")
        .await
        .expect("the operation survived");
    assert_eq!(recorded.status(), proto::OperationStatus::Completed);
    assert_eq!(recorded.path, reply.path);
    let repeated = within("TriggerSavepoint", client.trigger_savepoint(request))
        .await
        .expect("a repeat finds the operation")
        .into_inner();
    assert_eq!(
        (repeated.checkpoint_id, repeated.path.as_str()),
        (reply.checkpoint_id, reply.path.as_str()),
        "no second savepoint"
    );
    register(&mut client, &job("restored", VERTICES, policy(0, 0))).await;
    let restored = within(
        "RestoreSavepoint",
        client.restore_savepoint(proto::RestoreSavepointRequest {
            job_id: "restored".into(),
            path: reply.path.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("restorable")
    .into_inner();
    assert_eq!(restored.checkpoint_id, reply.checkpoint_id);
    assert_eq!(
        restored.assignments,
        common::unchanged_assignments(VERTICES, &[], reply.checkpoint_id)
    );
    server.stop().await;
}
