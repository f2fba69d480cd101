//! High availability with in-process replicas (issue 5, item 2): a real etcd
//! (`common::etcd`) elects the leader, a real S3-compatible server (`common::moto`) holds
//! the snapshots. Only the leader serves; followers report NOT_SERVING and name the
//! leader; a new leader takes over jobs, savepoints, operations and the ID counter; a
//! replica that loses its leadership stops coordinating at once.

mod common;

use common::etcd::EtcdCluster;
use common::moto::Moto;
use common::{Acks, Cluster, TestServer, eventually, job, policy, register, set_status, within};
use savepoint_coordinator::client::TaskManagerSession;
use savepoint_coordinator::ha::etcd;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::server::HaConfig;
use savepoint_coordinator::service::gate::LEADER_ADDRESS_METADATA;
use std::path::Path;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

/// A replica of the coordinator named `name` (its etcd prefix and bucket prefix).
async fn replica(etcd: &EtcdCluster, moto: &Moto, data_dir: &Path, name: &str) -> TestServer {
    let object_store = moto.config(name);
    let endpoints = etcd.endpoints();
    let prefix = format!("/{name}");
    TestServer::start_with(data_dir, move |config| {
        config.object_store = Some(object_store);
        config.ha = Some(HaConfig {
            etcd_endpoints: endpoints,
            etcd_prefix: prefix,
            lease_ttl: Duration::from_secs(1),
            advertise_address: None,
        });
    })
    .await
}

/// The health of `service` ("" for the whole server) on `server`.
async fn health(server: &TestServer, service: &str) -> ServingStatus {
    common::health_check(server.channel().await, service, common::WAIT)
        .await
        .expect("an answer to a health check")
}

async fn wait_until_serving(server: &TestServer) {
    eventually("the replica to lead", || async {
        (health(server, "savepoint.v1.SavepointService").await == ServingStatus::Serving)
            .then_some(())
    })
    .await;
}

async fn savepoint_with_id(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    request_id: &str,
) -> proto::TriggerSavepointResponse {
    let request = proto::TriggerSavepointRequest {
        job_id: job_id.to_string(),
        request_id: request_id.to_string(),
        ..Default::default()
    };
    within("TriggerSavepoint", client.trigger_savepoint(request))
        .await
        .expect("savepoint")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_serves_and_followers_name_it() {
    let etcd = EtcdCluster::start(1).await;
    let moto = Moto::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&etcd, &moto, dir_a.path(), "names").await;
    wait_until_serving(&a).await;
    let b = replica(&etcd, &moto, dir_b.path(), "names").await;

    // b serves health and answers, but as a follower.
    let status = eventually("b to name the leader", || async {
        let mut client = b.savepoints().await;
        let refused = client
            .register_job(job("j", VERTICES, policy(0, 0)))
            .await
            .expect_err("a follower refuses");
        refused
            .metadata()
            .get(LEADER_ADDRESS_METADATA)
            .is_some()
            .then_some(refused)
    })
    .await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("not the leader"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.metadata().get(LEADER_ADDRESS_METADATA).unwrap(),
        a.address.to_string().as_str()
    );
    for service in [
        "",
        "savepoint.v1.SavepointService",
        "savepoint.v1.TaskGateway",
    ] {
        assert_eq!(
            health(&b, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
        assert_eq!(
            health(&a, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let stream = TaskManagerSession::connect(b.channel().await, "tm-0", Vec::new()).await;
    assert!(stream.is_err(), "a follower accepts no task manager stream");

    // The leader serves.
    let mut client = a.savepoints().await;
    register(&mut client, &job("j", VERTICES, policy(0, 0))).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_jobs_savepoints_operations_and_ids() {
    let etcd = EtcdCluster::start(1).await;
    let moto = Moto::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&etcd, &moto, dir_a.path(), "takeover").await;
    wait_until_serving(&a).await;
    let b = replica(&etcd, &moto, dir_b.path(), "takeover").await;

    let spec = job("orders", VERTICES, policy(0, 0));
    let mut client = a.savepoints().await;
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&a, &spec, 2, Acks::All, &[]).await;
    set_status(&mut client, "orders", proto::JobStatus::Running).await;
    let first = savepoint_with_id(&mut client, "orders", "before-failover").await;
    assert!(first.path.starts_with("s3://"), "{}", first.path);
    let first_epoch = {
        let session = TaskManagerSession::connect(a.channel().await, "probe-a", Vec::new())
            .await
            .expect("probe stream");
        session.leader_epoch()
    };
    assert!(first_epoch > 0, "the leader's messages carry its epoch");

    // a shuts down (and gives up its lease); b leads.
    a.stop().await;
    cluster.wait_until_closed().await;
    wait_until_serving(&b).await;
    let mut client = b.savepoints().await;
    let done = common::operation(&mut client, "orders", "before-failover")
        .await
        .expect("the operation is known to the new leader");
    assert_eq!(done.status(), proto::OperationStatus::Completed);
    assert_eq!(done.path, first.path);
    let listed = common::list_savepoints(&mut client, "orders").await;
    assert!(listed.iter().any(|s| s.path == first.path), "{listed:?}");

    // Task managers reconnect to b, which numbers on above every id a handed out.
    let cluster = Cluster::start(&b, &spec, 2, Acks::All, &[]).await;
    let session = TaskManagerSession::connect(b.channel().await, "probe-b", Vec::new())
        .await
        .expect("probe stream");
    assert!(
        session.leader_epoch() > first_epoch,
        "the new leader's epoch is larger"
    );
    let second = savepoint_with_id(&mut client, "orders", "after-failover").await;
    assert!(
        second.checkpoint_id > first.checkpoint_id,
        "{second:?} after {first:?}"
    );

    // The savepoint a took restores through b from the bucket.
    let fresh = job("orders-copy", VERTICES, policy(0, 0));
    register(&mut client, &fresh).await;
    let restored = within(
        "RestoreSavepoint",
        client.restore_savepoint(proto::RestoreSavepointRequest {
            job_id: "orders-copy".to_string(),
            path: first.path.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("restore from the savepoint a took")
    .into_inner();
    assert_eq!(restored.checkpoint_id, first.checkpoint_id);
    drop(session);
    drop(cluster);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_leadership_stops_coordinating_at_once() {
    let etcd = EtcdCluster::start(1).await;
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&etcd, &moto, dir.path(), "deposed").await;
    wait_until_serving(&a).await;
    let spec = job("j", VERTICES, policy(0, 0));
    let mut client = a.savepoints().await;
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&a, &spec, 1, Acks::None, &[]).await;
    set_status(&mut client, "j", proto::JobStatus::Running).await;
    let pending = {
        let mut client = client.clone();
        tokio::spawn(async move { common::trigger_savepoint(&mut client, "j").await })
    };
    cluster.first_trigger(proto::SnapshotKind::Savepoint).await;

    // Someone else takes the leader key (as a new leader would once a's lease is gone):
    // etcd takes no delete and put of one key in one transaction, so two follow at once.
    let key = "/deposed/leader";
    let client_of_etcd = etcd.client();
    let delete = etcd::pb::etcdserverpb::TxnRequest {
        compare: Vec::new(),
        success: vec![etcd::delete(key)],
        failure: Vec::new(),
    };
    client_of_etcd
        .txn(delete)
        .await
        .expect("delete the leader key");
    let usurp = etcd::pb::etcdserverpb::TxnRequest {
        compare: vec![etcd::created_at(key, 0)],
        success: vec![etcd::put(key, b"10.9.9.9:1".to_vec(), 0)],
        failure: Vec::new(),
    };
    let taken = client_of_etcd
        .txn(usurp)
        .await
        .expect("take the leader key");
    assert!(
        taken.succeeded,
        "a re-took the key within a millisecond of its deletion"
    );

    // a stops: the waiting savepoint fails, the streams end, calls are refused.
    let failed = within("the pending savepoint to fail", pending)
        .await
        .unwrap()
        .expect_err("a deposed leader completes nothing");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    cluster.wait_until_closed().await;
    let refused = eventually("a to refuse calls, naming the new leader", || async {
        let mut client = a.savepoints().await;
        let request = proto::GetCheckpointStatsRequest {
            job_id: "j".to_string(),
        };
        client
            .get_checkpoint_stats(request)
            .await
            .err()
            .filter(|status| status.metadata().get(LEADER_ADDRESS_METADATA).is_some())
    })
    .await;
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.metadata().get(LEADER_ADDRESS_METADATA).unwrap(),
        "10.9.9.9:1",
        "a names the replica that holds the key now"
    );
    assert_eq!(health(&a, "").await, ServingStatus::NotServing);
    a.stop().await;
}
