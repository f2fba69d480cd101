//! Task-manager faults (issue 4, item 3): a stream that drops mid-snapshot, a task
//! manager that never reads its stream, and a flood of acknowledgements for checkpoints
//! that never existed.

mod common;

use common::{
    Acks, Cluster, TestServer, eventually, failure_reason, job, policy, register, set_status,
    stats, trigger_savepoint, within,
};
use savepoint_coordinator::client::{Downward, TaskManagerSession};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use tonic::transport::Endpoint;

fn task(job_id: &str, vertex: &str, attempt_id: u64) -> proto::TaskInfo {
    proto::TaskInfo {
        job_id: job_id.to_string(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: vertex.to_string(),
            subtask_index: 0,
        }),
        attempt_id,
        state: proto::TaskState::Running.into(),
    }
}

fn inline_state(text: &str) -> proto::StateHandle {
    proto::StateHandle {
        name: "state".into(),
        data: Some(proto::state_handle::Data::Inline(
            text.as_bytes().to_vec().into(),
        )),
        key_groups: None,
    }
}

/// Waits on `session` for the next TriggerCheckpoint.
async fn next_trigger(session: &mut TaskManagerSession) -> proto::TriggerCheckpoint {
    within("a trigger", async {
        loop {
            match session.next_message().await {
                Ok(Some(Downward::TriggerCheckpoint(trigger))) => return trigger,
                Ok(Some(_)) => continue,
                other => panic!("stream ended while waiting for a trigger: {other:?}"),
            }
        }
    })
    .await
}

/// Acks checkpoint `checkpoint_id` for `attempt_id` of `job_id` on `session`.
async fn ack(session: &TaskManagerSession, job_id: &str, checkpoint_id: u64, attempt_id: u64) {
    session
        .send(Upward::Acknowledge(proto::AcknowledgeRequest {
            job_id: job_id.to_string(),
            checkpoint_id,
            attempt_id,
            handles: vec![inline_state(&format!("{attempt_id}@{checkpoint_id}"))],
            ..Default::default()
        }))
        .await
        .expect("ack sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_savepoint_fails_it_and_the_next_succeeds_after_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    register(
        &mut client,
        &job("j", &[("src", 1), ("sink", 1)], policy(0, 0)),
    )
    .await;
    let mut source = within(
        "tm-src",
        TaskManagerSession::connect(server.channel().await, "tm-src", vec![task("j", "src", 1)]),
    )
    .await
    .expect("connect");
    let sink = within(
        "tm-sink",
        TaskManagerSession::connect(
            server.channel().await,
            "tm-sink",
            vec![task("j", "sink", 2)],
        ),
    )
    .await
    .expect("connect");
    set_status(&mut client, "j", proto::JobStatus::Running).await;

    let mut waiting = client.clone();
    let pending = tokio::spawn(async move { trigger_savepoint(&mut waiting, "j").await });
    let trigger = next_trigger(&mut source).await;
    ack(&source, "j", trigger.checkpoint_id, 1).await;
    drop(sink); // the sink's task manager dies before it acknowledges

    let failed = within("the savepoint's end", pending)
        .await
        .expect("task")
        .expect_err("the sink can no longer acknowledge");
    assert_eq!(failure_reason(&failed), Some("TASK_FAILURE"), "{failed:?}");
    assert!(failed.message().contains("sink"), "{}", failed.message());

    // The task manager comes back with a new attempt of the sink; savepoints work again.
    let sink = within(
        "tm-sink again",
        TaskManagerSession::connect(
            server.channel().await,
            "tm-sink",
            vec![task("j", "sink", 3)],
        ),
    )
    .await
    .expect("reconnect");
    let mut waiting = client.clone();
    let pending = tokio::spawn(async move { trigger_savepoint(&mut waiting, "j").await });
    let trigger = next_trigger(&mut source).await;
    ack(&source, "j", trigger.checkpoint_id, 1).await;
    ack(&sink, "j", trigger.checkpoint_id, 3).await;
    let done = within("the second savepoint", pending)
        .await
        .expect("task")
        .expect("completes after the reconnect");
    assert!(done.checkpoint_id > failed_id(&failed));
    server.stop().await;
}

/// The checkpoint id named in a failure message ("savepoint N of job ...").
fn failed_id(status: &tonic::Status) -> u64 {
    status
        .message()
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_manager_that_never_reads_its_stream_blocks_nobody_else() {
    // A small buffer, and a stuck task manager whose HTTP/2 receive window takes only a
    // few messages, so its server-side buffer really fills and messages are dropped.
    const STREAM_BUFFER: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |config| {
        config.stream_buffer = STREAM_BUFFER;
    })
    .await;
    let mut client = server.savepoints().await;
    // The stuck job triggers every 10 ms, up to 20 at once, and expires them after 200 ms.
    let busy = proto::CheckpointPolicy {
        max_concurrent: 20,
        ..policy(10, 200)
    };
    register(&mut client, &job("stuck", &[("src", 1)], busy)).await;
    let endpoint = Endpoint::from_shared(format!("http://{}", server.address))
        .expect("endpoint")
        .initial_stream_window_size(Some(1024));
    let narrow = within("a connection", endpoint.connect())
        .await
        .expect("connect");
    let stuck = within(
        "tm-stuck",
        TaskManagerSession::connect(narrow, "tm-stuck", vec![task("stuck", "src", 1)]),
    )
    .await
    .expect("connect");
    set_status(&mut client, "stuck", proto::JobStatus::Running).await;

    let healthy = job("healthy", &[("src", 2), ("sink", 2)], policy(0, 0));
    register(&mut client, &healthy).await;
    let _cluster = Cluster::start(&server, &healthy, 2, Acks::All, &[]).await;
    set_status(&mut client, "healthy", proto::JobStatus::Running).await;

    // Triggers and aborts pile up toward tm-stuck, which reads none of them, until its
    // buffer is full and the server drops what does not fit.
    let dropped = eventually("messages to tm-stuck to be dropped", || {
        let mut client = client.clone();
        async move {
            let figures = stats(&mut client, "stuck").await;
            (figures.undelivered_messages > 0).then_some(figures.undelivered_messages)
        }
    })
    .await;
    for _ in 0..5 {
        within(
            "a healthy savepoint",
            trigger_savepoint(&mut client, "healthy"),
        )
        .await
        .expect("not held up by the stuck task manager");
    }
    let figures = stats(&mut client, "stuck").await;
    assert!(
        figures.undelivered_messages >= dropped,
        "drops keep being counted: {figures:?}"
    );
    assert!(
        figures.triggered > STREAM_BUFFER as u64,
        "more triggers than the buffer holds: {figures:?}"
    );
    assert_eq!(figures.completed, 0);
    assert!(
        figures
            .failed_by_reason
            .get("EXPIRED")
            .copied()
            .unwrap_or(0)
            >= 1,
        "its checkpoints expire: {:?}",
        figures.failed_by_reason
    );
    let healthy = stats(&mut client, "healthy").await;
    assert_eq!(
        (
            healthy.completed,
            healthy.failed,
            healthy.undelivered_messages
        ),
        (5, 0, 0),
        "the healthy task managers got every message: {healthy:?}"
    );
    drop(stuck);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_acks_for_unknown_checkpoints_is_counted_and_dropped() {
    const FLOOD: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let spec = job("flooded", &[("src", 1)], policy(0, 0));
    register(&mut client, &spec).await;
    let mut session = within(
        "tm-flood",
        TaskManagerSession::connect(
            server.channel().await,
            "tm-flood",
            vec![task("flooded", "src", 1)],
        ),
    )
    .await
    .expect("connect");
    set_status(&mut client, "flooded", proto::JobStatus::Running).await;

    for i in 0..FLOOD {
        ack(&session, "flooded", 1_000_000 + i, 1).await;
    }
    // The stream is processed in order: once a real savepoint completes after the
    // flood, every flooded ack has been seen.
    let mut waiting = client.clone();
    let pending = tokio::spawn(async move { trigger_savepoint(&mut waiting, "flooded").await });
    let trigger = next_trigger(&mut session).await;
    ack(&session, "flooded", trigger.checkpoint_id, 1).await;
    within("the savepoint after the flood", pending)
        .await
        .expect("task")
        .expect("the job still works");
    let figures = stats(&mut client, "flooded").await;
    assert_eq!(
        figures.discarded_acks, FLOOD,
        "every unknown ack is counted"
    );
    assert_eq!((figures.completed, figures.failed), (1, 0));
    server.stop().await;
}
