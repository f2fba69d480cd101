//! Restoring a savepoint onto a new job: exact assignments, rescaling rules, missing
//! vertices, and the ID counter moving above the savepoint.

mod common;

use common::{
    Acks, Cluster, TestServer, assignment, job, policy, register, set_status, state_of, stats,
};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Vertices of the job the savepoint is taken from; `agg` holds keyed state.
const ORIGIN: &[(&str, u32)] = &[("src", 2), ("agg", 2), ("sink", 1)];
const KEYED: &[&str] = &["agg"];

/// Takes savepoint 3 of job "origin" (after checkpoints 1 and 2); returns its path and the
/// still running cluster.
async fn take_savepoint(
    server: &TestServer,
    client: &mut SavepointServiceClient<Channel>,
) -> (String, Cluster) {
    let origin = job("origin", ORIGIN, policy(0, 0));
    register(client, &origin).await;
    let cluster = Cluster::start(server, &origin, 2, Acks::All, KEYED).await;
    set_status(client, "origin", proto::JobStatus::Running).await;
    assert_eq!(common::trigger_checkpoint(client, "origin").await, 1);
    assert_eq!(common::trigger_checkpoint(client, "origin").await, 2);
    let savepoint = common::trigger_savepoint(client, "origin")
        .await
        .expect("savepoint");
    assert_eq!(savepoint.checkpoint_id, 3);
    (savepoint.path, cluster)
}

async fn restore(
    client: &mut SavepointServiceClient<Channel>,
    job_id: &str,
    path: &str,
    allow_non_restored_state: bool,
) -> Result<proto::RestoreResponse, tonic::Status> {
    let request = proto::RestoreSavepointRequest {
        job_id: job_id.to_string(),
        path: path.to_string(),
        allow_non_restored_state,
        ..Default::default()
    };
    common::within("RestoreSavepoint", client.restore_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

/// What each subtask gets when its vertex keeps its parallelism.
fn unchanged(vertices: &[(&str, u32)], id: u64) -> Vec<proto::SubtaskAssignment> {
    common::unchanged_assignments(vertices, KEYED, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_a_new_job_with_the_same_parallelism_assigns_each_subtask_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let (path, _origin) = take_savepoint(&server, &mut client).await;

    let copy = job("copy", ORIGIN, policy(0, 0));
    register(&mut client, &copy).await;
    let restored = restore(&mut client, "copy", &path, false)
        .await
        .expect("restore");
    assert_eq!(restored.checkpoint_id, 3);
    assert_eq!(restored.assignments, unchanged(ORIGIN, 3));
    assert!(restored.non_restored_vertices.is_empty());
    assert_eq!(restored.next_checkpoint_id, 4);

    let stats = stats(&mut client, "copy").await;
    assert_eq!(stats.restored, 1);
    let latest = stats.latest_restore.expect("latest restore");
    assert_eq!(
        (latest.checkpoint_id, latest.path.as_str()),
        (3, path.as_str())
    );

    // The new job's own counter started at 1; after the restore it continues above 3.
    let _cluster = Cluster::start(&server, &copy, 2, Acks::All, KEYED).await;
    set_status(&mut client, "copy", proto::JobStatus::Running).await;
    let next = common::trigger_checkpoint(&mut client, "copy").await;
    assert_eq!(next, restored.next_checkpoint_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_a_smaller_parallelism_refuses_subtask_bound_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let (path, _origin) = take_savepoint(&server, &mut client).await;

    register(
        &mut client,
        &job(
            "shrunk",
            &[("src", 1), ("agg", 2), ("sink", 1)],
            policy(0, 0),
        ),
    )
    .await;
    let status = restore(&mut client, "shrunk", &path, false)
        .await
        .expect_err("src has subtask-bound state");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(
            "vertex \"src\": parallelism changed from 2 to 1, but it has subtask-bound \
             (non-keyed) state \"src-state\""
        ),
        "{status:?}"
    );
    let stats = stats(&mut client, "shrunk").await;
    assert_eq!(stats.restored, 0, "nothing is applied");
    assert_eq!(stats.latest_restore, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_a_smaller_parallelism_redistributes_keyed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let (path, _origin) = take_savepoint(&server, &mut client).await;

    register(
        &mut client,
        &job(
            "merged",
            &[("src", 2), ("agg", 1), ("sink", 1)],
            policy(0, 0),
        ),
    )
    .await;
    let restored = restore(&mut client, "merged", &path, false)
        .await
        .expect("keyed state follows its key groups");
    let mut expected = unchanged(&[("src", 2)], 3);
    // agg#0 now owns all 128 key groups: both old subtasks' handles, ranges intact.
    expected.push(assignment(
        "agg",
        0,
        vec![
            state_of("agg", 0, 2, true, 3),
            state_of("agg", 1, 2, true, 3),
        ],
    ));
    expected.extend(unchanged(&[("sink", 1)], 3));
    assert_eq!(restored.assignments, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_names_a_missing_vertex_unless_non_restored_state_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let (path, _origin) = take_savepoint(&server, &mut client).await;

    let without_sink = &[("src", 2), ("agg", 2)];
    register(&mut client, &job("no-sink", without_sink, policy(0, 0))).await;
    let status = restore(&mut client, "no-sink", &path, false)
        .await
        .expect_err("the savepoint has state for sink");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.message(),
        "snapshot 3 has state for vertex \"sink\", which job no-sink does not have; \
         set allow_non_restored_state to skip it"
    );

    let restored = restore(&mut client, "no-sink", &path, true)
        .await
        .expect("allowed to skip sink");
    assert_eq!(restored.non_restored_vertices, vec!["sink".to_string()]);
    assert_eq!(restored.assignments, unchanged(without_sink, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_refused_while_tasks_are_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let (path, _origin) = take_savepoint(&server, &mut client).await;

    let status = restore(&mut client, "origin", &path, false)
        .await
        .expect_err("origin's tasks are RUNNING");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("subtask src#0 is RUNNING, all subtasks must be CREATED"),
        "{status:?}"
    );
}
