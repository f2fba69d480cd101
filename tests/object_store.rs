//! Savepoints and checkpoints in S3-compatible object storage, against a real moto
//! server on loopback (see `common::moto`): the server configured with `object_store`
//! keeps checkpoints, savepoints and their index in the bucket, and the data directory
//! only for IDs, jobs and operations.

mod common;

use common::moto::Moto;
use common::{Acks, Cluster, TestServer, job, policy, register, set_status};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::store::{SavepointStore, StoreError};
use std::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const PREFIX: &str = "coordinator";
const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];

async fn start_server(moto: &Moto, data_dir: &std::path::Path) -> TestServer {
    let config = moto.config(PREFIX);
    TestServer::start_with(data_dir, move |c| c.object_store = Some(config)).await
}

/// Registers `job_id` and starts its task managers, which acknowledge everything.
async fn running_job(
    server: &TestServer,
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    savepoint_policy: Option<proto::SavepointPolicy>,
) -> Cluster {
    let spec = proto::RegisterJobRequest {
        savepoint_policy,
        ..job(job_id, VERTICES, policy(0, 0))
    };
    register(client, &spec).await;
    let cluster = Cluster::start(server, &spec, 2, Acks::All, &[]).await;
    set_status(client, job_id, proto::JobStatus::Running).await;
    cluster
}

async fn savepoint(client: &mut SavepointServiceClient<Channel>, job_id: &str) -> String {
    common::trigger_savepoint(client, job_id)
        .await
        .expect("savepoint")
        .path
}

async fn dispose(
    client: &mut SavepointServiceClient<Channel>,
    path: &str,
) -> Result<bool, tonic::Status> {
    let request = proto::DisposeSavepointRequest {
        path: path.to_string(),
    };
    common::within("DisposeSavepoint", client.dispose_savepoint(request))
        .await
        .map(|response| response.into_inner().existed)
}

async fn restore(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    path: &str,
) -> Result<proto::RestoreResponse, tonic::Status> {
    let request = proto::RestoreSavepointRequest {
        job_id: job_id.to_string(),
        path: path.to_string(),
        ..Default::default()
    };
    common::within("RestoreSavepoint", client.restore_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

/// Whether the object at `url` exists in the bucket.
async fn exists(moto: &Moto, url: &str) -> bool {
    let store = moto.store(PREFIX);
    let key = store.key_of(url).expect("a URL of the bucket");
    match store.object_store().head(&key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("HEAD {url}: {e}"),
    }
}

fn savepoint_url(moto: &Moto, job_id: &str, id: u64) -> String {
    format!(
        "s3://{}/{PREFIX}/savepoints/savepoint-{job_id}-{id}",
        moto.bucket
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_round_trip_through_s3() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let _cluster = running_job(&server, &mut client, "trip", None).await;

    let path = savepoint(&mut client, "trip").await;
    assert_eq!(path, savepoint_url(&moto, "trip", 1));
    assert!(
        exists(&moto, &format!("{path}/_metadata")).await,
        "the metadata object is in the bucket before the call returns"
    );
    assert!(
        !dir.path().join("savepoints").exists(),
        "nothing of the savepoint is on the local disk"
    );

    let checkpoint = common::trigger_checkpoint(&mut client, "trip").await;
    let record = format!(
        "s3://{}/{PREFIX}/jobs/trip/checkpoints/chk-{checkpoint:020}.rec",
        moto.bucket
    );
    assert!(exists(&moto, &record).await, "{record} is written");

    // The savepoint restores onto a new job, read back from the bucket.
    register(&mut client, &job("copy", VERTICES, policy(0, 0))).await;
    let restored = restore(&mut client, "copy", &path).await.expect("restore");
    assert_eq!(restored.checkpoint_id, 1);
    assert_eq!(
        restored.assignments,
        common::unchanged_assignments(VERTICES, &[], 1)
    );

    // Trigger -> durable (metadata and index in the bucket) latency, for the report.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        savepoint(&mut client, "trip").await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "savepoint trigger -> durable against moto: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[5], latencies[9]
    );
    assert_eq!(common::list_savepoints(&mut client, "trip").await.len(), 11);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_are_listed_newest_first_and_disposed_only_within_the_roots() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let _cluster = running_job(&server, &mut client, "hist", None).await;
    let first = savepoint(&mut client, "hist").await;
    let second = savepoint(&mut client, "hist").await;

    let listed = common::list_savepoints(&mut client, "hist").await;
    let listed: Vec<(u64, &str)> = listed
        .iter()
        .map(|s| (s.checkpoint_id, s.path.as_str()))
        .collect();
    assert_eq!(listed, vec![(2, second.as_str()), (1, first.as_str())]);

    assert!(dispose(&mut client, &first).await.expect("dispose"));
    assert!(!exists(&moto, &format!("{first}/_metadata")).await);
    assert!(
        !dispose(&mut client, &first).await.expect("dispose again"),
        "disposing again is fine and says there was nothing left"
    );
    let outside_bucket = format!("s3://other-bucket/{PREFIX}/savepoints/savepoint-hist-2");
    let outside_prefix = format!("s3://{}/elsewhere/savepoint-hist-2", moto.bucket);
    let climbing = format!("{second}/../../../elsewhere/savepoint-hist-2");
    for path in [
        outside_bucket.as_str(),
        outside_prefix.as_str(),
        climbing.as_str(),
        "/tmp/savepoint-hist-2",
    ] {
        let refused = dispose(&mut client, path).await.expect_err(path);
        assert_eq!(refused.code(), Code::InvalidArgument, "{path}: {refused:?}");
    }
    assert!(exists(&moto, &format!("{second}/_metadata")).await);
    let listed = common::list_savepoints(&mut client, "hist").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_metadata_object_is_reported_as_data_loss() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let _cluster = running_job(&server, &mut client, "bad", None).await;
    let truncated = savepoint(&mut client, "bad").await;
    let flipped = savepoint(&mut client, "bad").await;

    let store = moto.store(PREFIX);
    for (path, damage) in [
        (
            &truncated,
            (|b: &mut Vec<u8>| b.truncate(b.len() / 2)) as fn(&mut Vec<u8>),
        ),
        (&flipped, |b: &mut Vec<u8>| {
            let last = b.len() - 1;
            b[last] ^= 0x01;
        }),
    ] {
        let key = store.key_of(&format!("{path}/_metadata")).unwrap();
        let mut bytes = store
            .object_store()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        damage(&mut bytes);
        store.object_store().put(&key, bytes.into()).await.unwrap();
    }

    register(&mut client, &job("copy", VERTICES, policy(0, 0))).await;
    for path in [&truncated, &flipped] {
        let status = restore(&mut client, "copy", path).await.expect_err(path);
        assert_eq!(status.code(), Code::DataLoss, "{path}: {status:?}");
        assert!(status.message().contains(path.as_str()), "{status:?}");
    }
    let missing = savepoint_url(&moto, "bad", 99);
    let status = restore(&mut client, "copy", &missing)
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conditional_create_refuses_to_overwrite_a_savepoint() {
    use savepoint_coordinator::coordinator::model::{
        CheckpointId, CompletedSnapshot, JobId, SavepointTrigger, SnapshotKind,
    };
    let moto = Moto::start().await;
    let store = moto.store(PREFIX);
    let snapshot = |completion_timestamp_ms| CompletedSnapshot {
        job_id: JobId::new("once"),
        checkpoint_id: CheckpointId(5),
        kind: SnapshotKind::Savepoint,
        trigger_timestamp_ms: 1,
        completion_timestamp_ms,
        claimed_path: None,
        vertices: Vec::new(),
    };
    let target = store.default_savepoint_dir();
    let path = store
        .write(&target, &snapshot(2), SavepointTrigger::Manual)
        .await
        .expect("first write");
    let second = store
        .write(&target, &snapshot(3), SavepointTrigger::Manual)
        .await
        .expect_err("a second savepoint at the same path");
    assert!(
        matches!(second, StoreError::InvalidLocation { .. }),
        "{second}"
    );
    assert_eq!(
        store.read(&path).await.unwrap(),
        snapshot(2),
        "the first one is intact"
    );

    // moto enforces If-None-Match itself (not just our code): a raw conditional PUT fails.
    let key = Path::from(format!("{PREFIX}/savepoints/savepoint-once-5/_metadata"));
    let raw = store
        .object_store()
        .put_opts(
            &key,
            PutPayload::from_static(b"overwrite"),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .expect_err("If-None-Match: * on an existing object");
    assert!(
        matches!(raw, object_store::Error::AlreadyExists { .. }),
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_finds_its_savepoints_in_the_bucket() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let cluster = running_job(&server, &mut client, "keep", None).await;
    let path = savepoint(&mut client, "keep").await;
    let checkpoint = common::trigger_checkpoint(&mut client, "keep").await;
    drop(cluster);
    server.stop().await;

    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let listed = common::list_savepoints(&mut client, "keep").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].checkpoint_id, listed[0].path.as_str()),
        (1, path.as_str())
    );
    let stats = common::stats(&mut client, "keep").await;
    assert_eq!(
        stats.latest_completed.map(|c| c.checkpoint_id),
        Some(checkpoint),
        "the retained checkpoint was loaded from the bucket"
    );
    register(&mut client, &job("copy", VERTICES, policy(0, 0))).await;
    let restored = restore(&mut client, "copy", &path).await.expect("restore");
    assert_eq!(restored.checkpoint_id, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_disposes_of_old_savepoints_in_the_bucket() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&moto, dir.path()).await;
    let mut client = server.savepoints().await;
    let retain_two = proto::SavepointPolicy {
        max_retained: 2,
        ..Default::default()
    };
    let _cluster = running_job(&server, &mut client, "ret", Some(retain_two)).await;
    let mut paths = Vec::new();
    for _ in 0..4 {
        paths.push(savepoint(&mut client, "ret").await);
    }
    let listed = common::eventually("retention to leave two savepoints", || {
        let mut client = client.clone();
        async move {
            let listed = common::list_savepoints(&mut client, "ret").await;
            (listed.len() == 2).then_some(listed)
        }
    })
    .await;
    let kept: Vec<&str> = listed.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(kept, vec![paths[3].as_str(), paths[2].as_str()]);
    for retired in &paths[..2] {
        assert!(
            !exists(&moto, &format!("{retired}/_metadata")).await,
            "{retired} is gone from the bucket"
        );
    }
    for path in &paths[2..] {
        assert!(exists(&moto, &format!("{path}/_metadata")).await);
    }
    server.stop().await;
    // Nothing retired is left half-disposed for a restart to finish.
    let store = moto.store(PREFIX);
    let job = savepoint_coordinator::coordinator::model::JobId::new("ret");
    assert_eq!(store.resume_disposals(&job).await.unwrap(), 0);
}

/// The binary reads the object store flags and takes its credentials from `AWS_*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepointd_uses_the_bucket_named_by_its_flags_with_credentials_from_the_environment() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("s3://{}/{PREFIX}", moto.bucket);
    let mut child = Command::new(env!("CARGO_BIN_EXE_savepointd"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--object-store-url", &url, "--s3-endpoint", &moto.endpoint])
        .arg("--s3-allow-http")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn savepointd");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if json["fields"]["message"] == "savepointd listening" {
                let _ = sender.send(json["fields"]["address"].as_str().map(str::to_string));
            }
        }
    });
    let address = receiver
        .recv_timeout(common::WAIT)
        .expect("savepointd logs its address")
        .expect("address field");
    let channel = common::within(
        "a connection",
        savepoint_coordinator::client::connect(&address),
    )
    .await
    .expect("connect");
    let mut client = SavepointServiceClient::new(channel);

    let inside = proto::RegisterJobRequest {
        savepoint_dir: format!("{url}/savepoints/team-a"),
        ..job("inside", VERTICES, policy(0, 0))
    };
    register(&mut client, &inside).await;
    assert!(
        common::list_savepoints(&mut client, "inside")
            .await
            .is_empty()
    );
    let outside = proto::RegisterJobRequest {
        savepoint_dir: dir.path().join("savepoints").display().to_string(),
        ..job("outside", VERTICES, policy(0, 0))
    };
    let refused = client
        .register_job(outside)
        .await
        .expect_err("a local savepoint directory when savepoints live in S3");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        dir.path().join("jobs/inside/job.rec").is_file(),
        "job registrations stay in the data directory"
    );
    let _ = child.kill();
    let _ = child.wait();
}
