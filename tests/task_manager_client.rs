//! The task-manager client library (`client::TaskManager`) against the real server: its
//! events arrive as a stream, acknowledgements complete a savepoint, a state change is
//! reported, and after the server restarts it reconnects by itself (backoff and jitter)
//! and says Hello again with its tasks' latest states.

mod common;

use common::{TestServer, job, policy, register, set_status, within};
use futures::StreamExt;
use savepoint_coordinator::client::{
    Downward, TaskManager, TaskManagerConfig, TaskManagerEvent, TaskManagerEvents,
};
use savepoint_coordinator::proto;

fn task(vertex: &str, attempt_id: u64) -> proto::TaskInfo {
    proto::TaskInfo {
        job_id: "library".to_string(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: vertex.to_string(),
            subtask_index: 0,
        }),
        attempt_id,
        state: proto::TaskState::Running.into(),
    }
}

/// The next event, bounded.
async fn next_event(events: &mut TaskManagerEvents) -> TaskManagerEvent {
    within("a task manager event", events.next())
        .await
        .expect("the event stream goes on")
}

/// Events until a trigger, which is returned; anything but messages fails the test.
async fn next_trigger(events: &mut TaskManagerEvents) -> proto::TriggerCheckpoint {
    loop {
        match next_event(events).await {
            TaskManagerEvent::Message(Downward::TriggerCheckpoint(trigger)) => return trigger,
            TaskManagerEvent::Message(_) => continue,
            other => panic!("expected a trigger, got {other:?}"),
        }
    }
}

/// Acknowledges every trigger until the next NotifyCheckpointComplete of `id`.
async fn acknowledge_until_complete(
    task_manager: &TaskManager,
    events: &mut TaskManagerEvents,
    first: proto::TriggerCheckpoint,
) {
    let id = first.checkpoint_id;
    task_manager
        .acknowledge(&first, vec![state(&first)])
        .await
        .expect("ack sent");
    loop {
        match next_event(events).await {
            TaskManagerEvent::Message(Downward::TriggerCheckpoint(trigger)) => task_manager
                .acknowledge(&trigger, vec![state(&trigger)])
                .await
                .expect("ack sent"),
            TaskManagerEvent::Message(Downward::NotifyCheckpointComplete(done))
                if done.checkpoint_id == id =>
            {
                return;
            }
            TaskManagerEvent::Message(_) => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
}

fn state(trigger: &proto::TriggerCheckpoint) -> proto::StateHandle {
    proto::StateHandle {
        data: Some(proto::state_handle::Data::Inline(
            format!("attempt {} @{}", trigger.attempt_id, trigger.checkpoint_id)
                .into_bytes()
                .into(),
        )),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_streams_events_acknowledges_and_reconnects_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let port = server.address.port();
    let mut client = server.savepoints().await;
    register(&mut client, &job("library", &[("src", 1)], policy(0, 0))).await;

    let config = TaskManagerConfig::new(
        vec![server.address.to_string()],
        "tm-lib",
        vec![task("src", 1)],
    );
    let (task_manager, mut events) = TaskManager::start(config).expect("started");
    match next_event(&mut events).await {
        TaskManagerEvent::Connected {
            accepted_tasks,
            refusals,
            leader_epoch,
            ..
        } => {
            assert_eq!((accepted_tasks, refusals.len(), leader_epoch), (1, 0, 0));
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    set_status(&mut client, "library", proto::JobStatus::Running).await;

    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "library").await });
    let trigger = next_trigger(&mut events).await;
    assert_eq!(trigger.kind(), proto::SnapshotKind::Savepoint);
    acknowledge_until_complete(&task_manager, &mut events, trigger.clone()).await;
    let completed = within("the savepoint", savepoint)
        .await
        .expect("caller")
        .expect("the savepoint completes with the client's ack");
    assert_eq!(completed.checkpoint_id, trigger.checkpoint_id);

    // The server goes away: the stream says so, and sends fail until it is back.
    server.stop().await;
    match next_event(&mut events).await {
        TaskManagerEvent::Disconnected { reason } => assert!(!reason.is_empty()),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(
        task_manager
            .acknowledge(&trigger, Vec::new())
            .await
            .is_err()
    );

    // Back on the same port: the client reconnects by itself and says Hello again.
    let server = TestServer::start_on_port(dir.path(), port).await;
    match next_event(&mut events).await {
        TaskManagerEvent::Connected { accepted_tasks, .. } => assert_eq!(accepted_tasks, 1),
        other => panic!("expected Connected again, got {other:?}"),
    }
    let client = server.savepoints().await;
    let mut caller = client.clone();
    let savepoint =
        tokio::spawn(async move { common::trigger_savepoint(&mut caller, "library").await });
    let trigger = next_trigger(&mut events).await;
    assert!(
        trigger.checkpoint_id > completed.checkpoint_id,
        "ids go up across the restart"
    );
    acknowledge_until_complete(&task_manager, &mut events, trigger).await;
    within("the savepoint after the reconnect", savepoint)
        .await
        .expect("caller")
        .expect("completes");

    // A state change while the server is away is remembered for the next Hello.
    server.stop().await;
    match next_event(&mut events).await {
        TaskManagerEvent::Disconnected { .. } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let unsent = task_manager
        .set_task_state("library", 1, proto::TaskState::Finished)
        .await;
    assert!(unsent.is_err(), "no stream to send it on");
    let server = TestServer::start_on_port(dir.path(), port).await;
    match next_event(&mut events).await {
        TaskManagerEvent::Connected { accepted_tasks, .. } => assert_eq!(accepted_tasks, 1),
        other => panic!("expected Connected again, got {other:?}"),
    }
    let mut client = server.savepoints().await;
    let refused = common::trigger_savepoint(&mut client, "library")
        .await
        .expect_err("the task said Hello as FINISHED");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    drop(events);
    drop(task_manager);
    server.stop().await;
}
