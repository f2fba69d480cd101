//! What the server answers to requests it cannot take: unknown jobs, malformed fields,
//! bad tasks in a Hello, corrupted savepoint metadata, and more calls or slower ones
//! than its limits allow.

mod common;

use common::{Acks, Cluster, TestServer, job, policy, register, set_status, stats, within};
use savepoint_coordinator::client::{Downward, TaskManagerSession};
use savepoint_coordinator::coordinator::model::JobId;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::store::faults::FaultPlan;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic::Code;

/// The message of an INVALID_ARGUMENT status; fails the test for anything else.
fn invalid<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status.message().to_string()
}

fn ack(job_id: &str, checkpoint_id: u64, attempt_id: u64) -> proto::AcknowledgeRequest {
    proto::AcknowledgeRequest {
        job_id: job_id.to_string(),
        checkpoint_id,
        attempt_id,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_for_an_unknown_job_is_not_found_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let mut gateway = server.gateway().await;
    register(&mut client, &job("real", &[("src", 1)], policy(0, 0))).await;

    let status = within("Acknowledge", gateway.acknowledge(ack("ghost", 1, 1)))
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "job \"ghost\" is not registered");
    let decline = proto::DeclineRequest {
        job_id: "ghost".into(),
        checkpoint_id: 1,
        attempt_id: 1,
        reason: "why".into(),
        fencing_token: 0,
    };
    let status = within("Decline", gateway.decline(decline))
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The same over a task manager's stream: answered with a StreamError, stream kept.
    let mut session = within(
        "a task manager",
        TaskManagerSession::connect(server.channel().await, "tm-0", vec![]),
    )
    .await
    .expect("connect");
    session
        .send(Upward::Acknowledge(ack("ghost", 7, 1)))
        .await
        .expect("send");
    let reply = within("a stream error", session.next_message()).await;
    match reply.expect("stream open") {
        Some(Downward::Error(error)) => {
            assert_eq!(
                (
                    error.code.as_str(),
                    error.job_id.as_str(),
                    error.checkpoint_id
                ),
                ("NOT_FOUND", "ghost", 7)
            );
        }
        other => panic!("expected a StreamError, got {other:?}"),
    }

    let stats = stats(&mut client, "real").await;
    assert_eq!((stats.discarded_acks, stats.triggered), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_arguments_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let mut gateway = server.gateway().await;
    let good = job("good", &[("src", 1), ("sink", 1)], policy(0, 0));
    register(&mut client, &good).await;

    let with = |change: fn(&mut proto::RegisterJobRequest)| {
        let mut request = good.clone();
        request.job_id = "other".into();
        change(&mut request);
        request
    };
    let bad_jobs = [
        (with(|r| r.job_id.clear()), "job_id must not be empty"),
        (
            with(|r| r.job_id = "../x".into()),
            "job_id must not start with '.'",
        ),
        (
            with(|r| r.job_id = "a/b".into()),
            "job_id contains '/'; only letters, digits, '.', '_' and '-' are allowed",
        ),
        (with(|r| r.vertices.clear()), "vertices must not be empty"),
        (
            with(|r| r.vertices[1].parallelism = 0),
            "vertices[1].parallelism must be at least 1",
        ),
        (
            with(|r| r.trigger_vertices = vec!["nope".into()]),
            "trigger_vertices names unknown vertex \"nope\"",
        ),
        (
            with(|r| r.trigger_vertices.clear()),
            "trigger_vertices must name at least one vertex (the sources)",
        ),
        (
            with(|r| r.policy = Some(policy(5, 0))),
            "policy.interval_ms is 5, at least 10 ms required",
        ),
    ];
    for (request, expected) in bad_jobs {
        let message = invalid(within("RegisterJob", client.register_job(request)).await);
        assert_eq!(message, expected);
    }
    let message = invalid(
        within(
            "RegisterJob",
            client.register_job(with(|r| r.savepoint_dir = "relative/dir".into())),
        )
        .await,
    );
    assert!(message.starts_with("savepoint_dir: "), "{message}");

    let status = proto::UpdateJobStatusRequest {
        job_id: "good".into(),
        status: proto::JobStatus::Unspecified.into(),
    };
    let message = invalid(within("UpdateJobStatus", client.update_job_status(status)).await);
    assert_eq!(message, "status must be set");

    let savepoint = proto::TriggerSavepointRequest {
        job_id: "good".into(),
        target_directory: "relative/dir".into(),
        ..Default::default()
    };
    let message = invalid(within("TriggerSavepoint", client.trigger_savepoint(savepoint)).await);
    assert!(message.starts_with("target_directory: "), "{message}");

    let restore = |path: &str| proto::RestoreSavepointRequest {
        job_id: "good".into(),
        path: path.into(),
        allow_non_restored_state: false,
        ..Default::default()
    };
    let message = invalid(within("RestoreSavepoint", client.restore_savepoint(restore(""))).await);
    assert_eq!(message, "path must not be empty");
    let message = invalid(
        within(
            "RestoreSavepoint",
            client.restore_savepoint(restore("relative/sp")),
        )
        .await,
    );
    assert!(message.starts_with("path: "), "{message}");

    let mut no_data = ack("good", 1, 1);
    no_data.handles = vec![proto::StateHandle::default()];
    let bad_acks = [
        (ack("good", 1, 0), "attempt_id must not be 0"),
        (
            ack("good", 0, 1),
            "checkpoint_id must not be 0 (checkpoint ids start at 1)",
        ),
        (ack("", 1, 1), "job_id must not be empty"),
        (no_data, "handles[0].data must be set (inline or reference)"),
    ];
    for (request, expected) in bad_acks {
        let message = invalid(within("Acknowledge", gateway.acknowledge(request)).await);
        assert_eq!(message, expected);
    }
    let decline = proto::DeclineRequest {
        job_id: "good".into(),
        checkpoint_id: 1,
        attempt_id: 0,
        reason: String::new(),
        fencing_token: 0,
    };
    let message = invalid(within("Decline", gateway.decline(decline)).await);
    assert_eq!(message, "attempt_id must not be 0");

    // None of it registered anything.
    let status = within(
        "GetCheckpointStats",
        client.get_checkpoint_stats(proto::GetCheckpointStatsRequest {
            job_id: "other".into(),
        }),
    )
    .await
    .expect_err("no job was registered");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_bad_tasks_is_welcomed_and_told_what_was_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    register(&mut client, &job("hello", &[("src", 2)], policy(0, 0))).await;

    let task = |job_id: &str, subtask_index: u32, attempt_id: u64| proto::TaskInfo {
        job_id: job_id.to_string(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: "src".into(),
            subtask_index,
        }),
        attempt_id,
        state: proto::TaskState::Running.into(),
    };
    let tasks = vec![
        task("hello", 0, 1),
        task("hello", 1, 0),
        task("ghost", 0, 2),
        task("hello", 7, 3),
    ];
    let session = within(
        "the Welcome",
        TaskManagerSession::connect(server.channel().await, "tm-0", tasks),
    )
    .await
    .expect("a Hello with some bad tasks is still welcomed");
    assert_eq!(session.accepted_tasks(), 1);

    let refused: Vec<(String, String)> = session
        .refusals()
        .iter()
        .map(|error| (error.code.clone(), error.message.clone()))
        .collect();
    assert_eq!(
        refused,
        vec![
            (
                "INVALID_ARGUMENT".to_string(),
                "tasks[1].attempt_id must not be 0".to_string()
            ),
            (
                "NOT_FOUND".to_string(),
                "job \"ghost\" is not registered".to_string()
            ),
            (
                "INVALID_ARGUMENT".to_string(),
                "job hello has no subtask src#7".to_string()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_savepoint_metadata_is_data_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let vertices = &[("src", 1), ("sink", 1)];
    let origin = job("origin", vertices, policy(0, 0));
    register(&mut client, &origin).await;
    let _cluster = Cluster::start(&server, &origin, 1, Acks::All, &[]).await;
    set_status(&mut client, "origin", proto::JobStatus::Running).await;
    let savepoint = common::trigger_savepoint(&mut client, "origin")
        .await
        .expect("savepoint");
    register(&mut client, &job("target", vertices, policy(0, 0))).await;

    let metadata = std::path::Path::new(&savepoint.path).join("_metadata");
    let intact = std::fs::read(&metadata).expect("metadata");
    let restore = proto::RestoreSavepointRequest {
        job_id: "target".into(),
        path: savepoint.path.clone(),
        allow_non_restored_state: false,
        ..Default::default()
    };
    let mut flipped = intact.clone();
    *flipped.last_mut().expect("payload") ^= 0xff;
    let truncated = intact[..intact.len() - 3].to_vec();
    let mut bad_magic = intact.clone();
    bad_magic[0] ^= 0xff;
    for (what, bytes) in [
        ("a flipped payload byte", flipped),
        ("a truncated file", truncated),
        ("a damaged header", bad_magic),
    ] {
        std::fs::write(&metadata, &bytes).expect("write");
        let status = within(
            "RestoreSavepoint",
            client.restore_savepoint(restore.clone()),
        )
        .await
        .expect_err(what);
        assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}");
        assert!(
            status.message().contains(metadata.to_str().expect("utf-8")),
            "{what}: {status:?}"
        );
    }

    std::fs::write(&metadata, &intact).expect("write");
    let restored = within("RestoreSavepoint", client.restore_savepoint(restore))
        .await
        .expect("the intact metadata restores")
        .into_inner();
    assert_eq!(
        restored.assignments,
        common::unchanged_assignments(vertices, &[], savepoint.checkpoint_id)
    );
    assert_eq!(stats(&mut client, "target").await.restored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_outside_the_savepoint_roots_are_refused_also_through_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    register(&mut client, &job("rooted", &[("src", 1)], policy(0, 0))).await;
    std::fs::create_dir_all(server.savepoint_dir()).expect("savepoint dir");
    let link = server.savepoint_dir().join("escape");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");

    for target in [
        outside.path().display().to_string(),
        link.display().to_string(),
        format!("{}/../..", server.savepoint_dir().display()),
    ] {
        let request = proto::TriggerSavepointRequest {
            job_id: "rooted".into(),
            target_directory: target.clone(),
            ..Default::default()
        };
        let status = within("TriggerSavepoint", client.trigger_savepoint(request))
            .await
            .expect_err("outside the roots");
        assert_eq!(status.code(), Code::InvalidArgument, "{target}: {status:?}");
        assert!(
            status.message().starts_with("target_directory: "),
            "{}",
            status.message()
        );
    }
    let dispose = within(
        "DisposeSavepoint",
        client.dispose_savepoint(proto::DisposeSavepointRequest {
            path: format!("{}/savepoint-rooted-1", link.display()),
        }),
    )
    .await
    .expect_err("a link out of the roots");
    assert_eq!(dispose.code(), Code::InvalidArgument, "{dispose:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_per_connection_limit_are_shed_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |config| {
        config.max_requests_per_connection = 2;
    })
    .await;
    let mut client = server.savepoints().await;
    let spec = job("busy", &[("src", 1)], policy(0, 0));
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&server, &spec, 1, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "busy", proto::JobStatus::Running).await;

    // Savepoints whose acks are held keep their calls open on the one connection.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut caller = client.clone();
        calls.push(tokio::spawn(async move {
            common::trigger_savepoint(&mut caller, "busy").await
        }));
    }
    let mut shed = 0;
    let mut pending = Vec::new();
    for call in calls {
        match tokio::time::timeout(std::time::Duration::from_millis(500), call).await {
            Ok(result) => match result.expect("task") {
                Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
                other => panic!("unexpected outcome {other:?}"),
            },
            Err(_) => pending.push(()),
        }
    }
    assert!(shed >= 4, "at most 2 calls in flight, {shed} shed");
    assert!(pending.len() <= 2);
    drop(cluster);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_acknowledgements_are_refused_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |config| {
        config.max_inline_state_bytes = 64 * 1024;
        config.max_message_bytes = 256 * 1024;
    })
    .await;
    let mut client = server.savepoints().await;
    register(&mut client, &job("big", &[("src", 1)], policy(0, 0))).await;
    let mut gateway = server.gateway().await;
    let ack = |bytes: usize| proto::AcknowledgeRequest {
        job_id: "big".into(),
        checkpoint_id: 1,
        attempt_id: 1,
        handles: vec![proto::StateHandle {
            name: "s".into(),
            data: Some(proto::state_handle::Data::Inline(vec![7u8; bytes].into())),
            key_groups: None,
        }],
        ..Default::default()
    };
    let over_inline = within("Acknowledge", gateway.acknowledge(ack(100 * 1024)))
        .await
        .expect_err("above the inline state limit");
    assert_eq!(
        over_inline.code(),
        Code::ResourceExhausted,
        "{over_inline:?}"
    );
    assert!(over_inline.message().contains("limit of 65536 bytes"));

    let over_message = within("Acknowledge", gateway.acknowledge(ack(1024 * 1024)))
        .await
        .expect_err("above the message size limit");
    assert_eq!(
        over_message.code(),
        Code::ResourceExhausted,
        "{over_message:?}"
    );
    server.stop().await;
}

/// The ids of the savepoint triggers in a cluster's log, without repeats.
fn savepoint_ids(log: &[common::Received]) -> BTreeSet<u64> {
    common::triggers(log)
        .filter(|t| t.kind() == proto::SnapshotKind::Savepoint)
        .map(|t| t.checkpoint_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_server_wide_limit_are_refused_on_every_connection_then_served_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |config| {
        config.max_requests = 2;
        config.max_requests_per_connection = 64;
    })
    .await;
    let mut client = server.savepoints().await;
    let spec = job("busy", &[("src", 1), ("sink", 1)], policy(0, 0));
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&server, &spec, 2, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "busy", proto::JobStatus::Running).await;

    // Two savepoints whose acks are held take both slots, each over its own connection.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut caller = server.savepoints().await;
        waiting.push(tokio::spawn(async move {
            common::trigger_savepoint(&mut caller, "busy").await
        }));
    }
    let held = cluster
        .wait_for("both savepoints to be triggered", |log| {
            let ids = savepoint_ids(log);
            (ids.len() == 2).then_some(ids)
        })
        .await;

    // Every further call is refused at once, whichever connection it comes over.
    for attempt in 0..3 {
        let mut other = server.savepoints().await;
        let refused = match attempt {
            0 => within(
                "GetCheckpointStats",
                other.get_checkpoint_stats(proto::GetCheckpointStatsRequest {
                    job_id: "busy".into(),
                }),
            )
            .await
            .map(|_| ()),
            1 => within(
                "ListSavepoints",
                other.list_savepoints(proto::ListSavepointsRequest {
                    job_id: "busy".into(),
                }),
            )
            .await
            .map(|_| ()),
            _ => common::trigger_savepoint(&mut other, "busy")
                .await
                .map(|_| ()),
        }
        .expect_err("beyond the limit of 2");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("max_requests = 2"),
            "{}",
            refused.message()
        );
    }
    // Task managers are not held up: their unary calls have their own bound.
    let late = within(
        "Acknowledge",
        server.gateway().await.acknowledge(ack("busy", 999, 1)),
    )
    .await
    .expect("the task gateway is not bound by max_requests")
    .into_inner();
    assert_eq!(late.outcome(), proto::AckOutcome::UnknownCheckpoint);
    assert_eq!(
        savepoint_ids(&cluster.log()),
        held,
        "a refused call started nothing"
    );

    // The streams carry the held acks; both calls complete and free their slots.
    for &id in &held {
        cluster.acknowledge_all(id);
    }
    for call in waiting {
        within("a held savepoint", call)
            .await
            .expect("task")
            .expect("completes once acknowledged");
    }
    let figures = stats(&mut server.savepoints().await, "busy").await;
    assert_eq!((figures.completed, figures.failed), (2, 0), "{figures:?}");
    assert_eq!(
        common::list_savepoints(&mut server.savepoints().await, "busy")
            .await
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_unary_call_times_out_while_waiting_triggers_and_streams_go_on() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    const SLOW_WRITE: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = TestServer::start_with_faults_and(dir.path(), |config| {
        config.request_timeout = TIMEOUT;
    })
    .await;
    let mut client = server.savepoints().await;
    let spec = job("steady", &[("src", 1)], policy(0, 0));
    register(&mut client, &spec).await;
    let cluster = Cluster::start(&server, &spec, 1, Acks::HoldSavepoints, &[]).await;
    set_status(&mut client, "steady", proto::JobStatus::Running).await;

    faults.set(FaultPlan {
        job: Some(JobId::new("slow")),
        write_delay: Some(SLOW_WRITE),
        ..FaultPlan::default()
    });
    let started = Instant::now();
    let timed_out = within(
        "RegisterJob",
        client.register_job(job("slow", &[("src", 1)], policy(0, 0))),
    )
    .await
    .expect_err("the job record takes longer than the request timeout");
    let waited = started.elapsed();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    assert!(
        timed_out.message().contains("request timeout of 300 ms"),
        "{}",
        timed_out.message()
    );
    assert!(
        waited >= TIMEOUT && waited < SLOW_WRITE,
        "answered after {waited:?}"
    );

    // A savepoint may wait far longer than the request timeout, over a stream that has
    // been open longer still.
    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "steady").await });
    let trigger = cluster.first_trigger(proto::SnapshotKind::Savepoint).await;
    tokio::time::sleep(TIMEOUT * 3).await;
    assert!(!savepoint.is_finished(), "the trigger waits for its acks");
    cluster.acknowledge_all(trigger.checkpoint_id);
    let done = within("the savepoint", savepoint)
        .await
        .expect("task")
        .expect("not cut by the request timeout");
    assert_eq!(done.checkpoint_id, trigger.checkpoint_id);

    // The timed-out registration was not abandoned halfway: it finishes by itself.
    let registered = common::eventually("the slow registration to finish", || {
        let mut client = client.clone();
        async move {
            let request = proto::GetCheckpointStatsRequest {
                job_id: "slow".into(),
            };
            client.get_checkpoint_stats(request).await.ok()
        }
    })
    .await
    .into_inner();
    assert_eq!(registered.job_status(), proto::JobStatus::Created);
    faults.clear();
    server.stop().await;
}

/// Copies the savepoint directory `from` (its metadata file) to `to`.
fn copy_savepoint(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    std::fs::copy(from.join("_metadata"), to.join("_metadata")).expect("copy the metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_and_job_directories_outside_the_savepoint_roots_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let vertices = &[("src", 1), ("sink", 1)];
    let origin = job("origin", vertices, policy(0, 0));
    register(&mut client, &origin).await;
    let cluster = Cluster::start(&server, &origin, 1, Acks::All, &[]).await;
    set_status(&mut client, "origin", proto::JobStatus::Running).await;
    let savepoint = common::trigger_savepoint(&mut client, "origin")
        .await
        .expect("savepoint");
    drop(cluster);
    register(&mut client, &job("target", vertices, policy(0, 0))).await;

    // Intact copies of the savepoint where the roots do not reach: in another directory,
    // in the data directory next to the default root, and behind a link in the root.
    let original = std::path::Path::new(&savepoint.path);
    let name = original.file_name().expect("savepoint directory name");
    let elsewhere = outside.path().join(name);
    copy_savepoint(original, &elsewhere);
    let beside = dir.path().join("beside").join(name);
    copy_savepoint(original, &beside);
    let link = server.savepoint_dir().join("escape");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    let restore = |path: String| proto::RestoreSavepointRequest {
        job_id: "target".into(),
        path,
        ..Default::default()
    };
    let savepoint_dir = server.savepoint_dir().display().to_string();
    for (path, why) in [
        (
            elsewhere.display().to_string(),
            "outside the savepoint roots",
        ),
        (
            format!("{}/_metadata", elsewhere.display()),
            "outside the savepoint roots",
        ),
        (
            format!("file://{}", elsewhere.display()),
            "outside the savepoint roots",
        ),
        (
            format!("{savepoint_dir}/../beside/{}", name.to_string_lossy()),
            "must not contain '..'",
        ),
        (
            format!("{}/{}", link.display(), name.to_string_lossy()),
            "outside the savepoint roots",
        ),
    ] {
        let message = invalid(
            within(
                "RestoreSavepoint",
                client.restore_savepoint(restore(path.clone())),
            )
            .await,
        );
        assert!(message.starts_with("path: "), "{path}: {message}");
        assert!(message.contains(why), "{path}: {message}");
    }
    assert_eq!(stats(&mut client, "target").await.restored, 0);
    // The original, inside the root, restores: the copies were refused for where they are.
    within(
        "RestoreSavepoint",
        client.restore_savepoint(restore(savepoint.path.clone())),
    )
    .await
    .expect("the savepoint inside the root restores");
    assert_eq!(stats(&mut client, "target").await.restored, 1);

    for dir in [
        outside.path().display().to_string(),
        format!("{savepoint_dir}/../beside"),
        link.display().to_string(),
    ] {
        let mut request = job("elsewhere", vertices, policy(0, 0));
        request.savepoint_dir = dir.clone();
        let message = invalid(within("RegisterJob", client.register_job(request)).await);
        assert!(message.starts_with("savepoint_dir: "), "{dir}: {message}");
    }
    let status = within(
        "GetCheckpointStats",
        client.get_checkpoint_stats(proto::GetCheckpointStatsRequest {
            job_id: "elsewhere".into(),
        }),
    )
    .await
    .expect_err("no refused job was registered");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    server.stop().await;

    // Made a root, the directory elsewhere is fine for both.
    let other = tempfile::tempdir().expect("tempdir");
    let rooted = TestServer::start_with(other.path(), |config| {
        config.extra_savepoint_roots = vec![outside.path().to_path_buf()];
    })
    .await;
    let mut client = rooted.savepoints().await;
    let mut request = job("target", vertices, policy(0, 0));
    request.savepoint_dir = outside.path().display().to_string();
    register(&mut client, &request).await;
    within(
        "RestoreSavepoint",
        client.restore_savepoint(restore(elsewhere.display().to_string())),
    )
    .await
    .expect("a savepoint under an extra root restores");
    rooted.stop().await;
}
