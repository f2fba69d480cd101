//! Restore, complete (issue 3 item 5): keyed state follows its key groups when the
//! parallelism changes, a changed max parallelism is refused, and the claim modes decide
//! who owns the restored savepoint afterwards.

mod common;

use common::{
    Acks, Cluster, TestServer, eventually, list_savepoints, policy, register, set_status, stats,
    within,
};
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::{self, ClaimMode, SnapshotKind};
use std::collections::BTreeSet;
use std::path::Path;
use tonic::Code;
use tonic::transport::Channel;

type Client = SavepointServiceClient<Channel>;

/// Key groups of the keyed source.
const MAX_PARALLELISM: u32 = 8;
/// Parallelism of the source when the savepoint is taken: key groups 0-3 and 4-7.
const ORIGIN_PARALLELISM: u32 = 2;
/// The savepoint is the origin job's first snapshot.
const SAVEPOINT_ID: u64 = 1;

/// A job with a keyed source `src` of `max_parallelism` key groups and a sink with
/// subtask-bound state; it retains one checkpoint.
fn keyed_job(
    job_id: &str,
    src_parallelism: u32,
    max_parallelism: u32,
) -> proto::RegisterJobRequest {
    let retain_one = proto::CheckpointPolicy {
        retained: 1,
        ..policy(0, 0)
    };
    let mut job = common::job(job_id, &[("src", src_parallelism), ("sink", 1)], retain_one);
    job.vertices[0].max_parallelism = max_parallelism;
    job
}

/// Takes savepoint 1 of job "origin"; returns its path.
async fn take_savepoint(server: &TestServer, client: &mut Client) -> String {
    let origin = keyed_job("origin", ORIGIN_PARALLELISM, MAX_PARALLELISM);
    register(client, &origin).await;
    let _cluster = Cluster::start(server, &origin, 2, Acks::All, &["src"]).await;
    set_status(client, "origin", proto::JobStatus::Running).await;
    let savepoint = common::trigger_savepoint(client, "origin")
        .await
        .expect("savepoint");
    assert_eq!(savepoint.checkpoint_id, SAVEPOINT_ID);
    savepoint.path
}

async fn restore(
    client: &mut Client,
    job_id: &str,
    path: &str,
    claim_mode: ClaimMode,
) -> Result<proto::RestoreResponse, tonic::Status> {
    let request = proto::RestoreSavepointRequest {
        job_id: job_id.to_string(),
        path: path.to_string(),
        allow_non_restored_state: false,
        claim_mode: claim_mode.into(),
    };
    within("RestoreSavepoint", client.restore_savepoint(request))
        .await
        .map(tonic::Response::into_inner)
}

/// Flink's key-group range of subtask `i` of `p` over `m` key groups:
/// [ceil(i*m/p), ceil((i+1)*m/p) - 1].
fn flink_range(m: u32, p: u32, i: u32) -> (u32, u32) {
    ((i * m).div_ceil(p), ((i + 1) * m).div_ceil(p) - 1)
}

/// What old source subtask `old` acknowledged, narrowed to key groups `start..=end`.
fn src_handle(old: u32, start: u32, end: u32) -> proto::StateHandle {
    let mut handle = common::state_in_key_groups(
        "src",
        old,
        ORIGIN_PARALLELISM,
        Some(MAX_PARALLELISM),
        SAVEPOINT_ID,
    );
    handle.key_groups = Some(proto::KeyGroupRange { start, end });
    handle
}

/// The expected assignment: `src` subtask by subtask (each a list of (old subtask, key
/// group range)), then the unchanged sink.
fn expected(src: &[&[(u32, u32, u32)]]) -> Vec<proto::SubtaskAssignment> {
    let mut assignments: Vec<proto::SubtaskAssignment> = src
        .iter()
        .enumerate()
        .map(|(i, handles)| {
            let handles = handles
                .iter()
                .map(|&(old, start, end)| src_handle(old, start, end))
                .collect();
            common::assignment("src", i as u32, handles)
        })
        .collect();
    assignments.extend(common::unchanged_assignments(
        &[("sink", 1)],
        &[],
        SAVEPOINT_ID,
    ));
    assignments
}

/// Checks the source's assignment key group by key group: every new subtask gets exactly
/// the key groups of its Flink range, each from one handle, and that handle's bytes are
/// those of the old subtask that owned the key group.
fn check_key_groups(assignments: &[proto::SubtaskAssignment], parallelism: u32) {
    let src: Vec<&proto::SubtaskAssignment> = assignments
        .iter()
        .filter(|a| a.subtask.as_ref().is_some_and(|s| s.vertex_id == "src"))
        .collect();
    assert_eq!(src.len(), parallelism as usize);
    for (i, assignment) in src.iter().enumerate() {
        let i = i as u32;
        assert_eq!(
            assignment.subtask.as_ref().map(|s| s.subtask_index),
            Some(i)
        );
        let (start, end) = flink_range(MAX_PARALLELISM, parallelism, i);
        let mut covered = BTreeSet::new();
        for handle in &assignment.handles {
            let range = handle.key_groups.as_ref().expect("keyed handle");
            for key_group in range.start..=range.end {
                assert!(
                    (start..=end).contains(&key_group),
                    "src#{i} of {parallelism} got key group {key_group} outside {start}-{end}"
                );
                assert!(
                    covered.insert(key_group),
                    "src#{i}: key group {key_group} twice"
                );
                let owner = (0..ORIGIN_PARALLELISM)
                    .find(|&old| {
                        let (s, e) = flink_range(MAX_PARALLELISM, ORIGIN_PARALLELISM, old);
                        (s..=e).contains(&key_group)
                    })
                    .expect("every key group had an owner");
                let bytes = format!("src#{owner}@{SAVEPOINT_ID}").into_bytes();
                assert_eq!(
                    handle.data,
                    Some(proto::state_handle::Data::Inline(bytes.into())),
                    "src#{i}: key group {key_group} comes from src#{owner}"
                );
            }
        }
        assert_eq!(covered, (start..=end).collect(), "src#{i} of {parallelism}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_gives_the_single_subtask_every_key_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let path = take_savepoint(&server, &mut client).await;

    register(&mut client, &keyed_job("scaled-in", 1, MAX_PARALLELISM)).await;
    let restored = restore(&mut client, "scaled-in", &path, ClaimMode::Unspecified)
        .await
        .expect("keyed state can be merged");
    assert_eq!(restored.checkpoint_id, SAVEPOINT_ID);
    assert_eq!(restored.assignments, expected(&[&[(0, 0, 3), (1, 4, 7)]]));
    check_key_groups(&restored.assignments, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_splits_each_handle_along_the_new_key_group_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let path = take_savepoint(&server, &mut client).await;

    register(&mut client, &keyed_job("scaled-out", 4, MAX_PARALLELISM)).await;
    let restored = restore(&mut client, "scaled-out", &path, ClaimMode::Unspecified)
        .await
        .expect("keyed state can be split");
    assert_eq!(
        restored.assignments,
        expected(&[&[(0, 0, 1)], &[(0, 2, 3)], &[(1, 4, 5)], &[(1, 6, 7)]])
    );
    check_key_groups(&restored.assignments, 4);

    // Three does not divide eight: the middle subtask straddles the old boundary.
    register(&mut client, &keyed_job("uneven", 3, MAX_PARALLELISM)).await;
    let restored = restore(&mut client, "uneven", &path, ClaimMode::Unspecified)
        .await
        .expect("keyed state can be split unevenly");
    assert_eq!(
        restored.assignments,
        expected(&[&[(0, 0, 2)], &[(0, 3, 3), (1, 4, 5)], &[(1, 6, 7)]])
    );
    check_key_groups(&restored.assignments, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_max_parallelism_is_refused_naming_the_vertex() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let path = take_savepoint(&server, &mut client).await;

    register(&mut client, &keyed_job("regrouped", 2, 16)).await;
    let status = restore(&mut client, "regrouped", &path, ClaimMode::Unspecified)
        .await
        .expect_err("the key groups changed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("vertex \"src\": max parallelism changed from 8 in the snapshot to 16"),
        "{status:?}"
    );
    let stats = stats(&mut client, "regrouped").await;
    assert_eq!((stats.restored, stats.latest_restore), (0, None));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_mode_hands_the_savepoint_over_and_deletes_it_once_subsumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let path = take_savepoint(&server, &mut client).await;

    let claimer = keyed_job("claimer", 2, MAX_PARALLELISM);
    register(&mut client, &claimer).await;
    restore(&mut client, "claimer", &path, ClaimMode::Claim)
        .await
        .expect("claimed");
    assert!(
        Path::new(&path).join("_metadata").is_file(),
        "kept until subsumed"
    );
    let latest = stats(&mut client, "claimer")
        .await
        .latest_restore
        .expect("restore");
    assert_eq!(latest.claim_mode(), ClaimMode::Claim);

    let cluster = Cluster::start(&server, &claimer, 2, Acks::All, &["src"]).await;
    set_status(&mut client, "claimer", proto::JobStatus::Running).await;
    let next = common::trigger_checkpoint(&mut client, "claimer").await;
    assert_eq!(next, SAVEPOINT_ID + 1);
    assert!(
        !cluster.first_trigger(SnapshotKind::Checkpoint).await.full,
        "a claimed snapshot may be built upon"
    );
    eventually("the subsumed savepoint to be deleted", || {
        let gone = !Path::new(&path).exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(
        list_savepoints(&mut client, "origin").await.is_empty(),
        "the deleted savepoint leaves the origin's history"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_claim_keeps_the_savepoint_and_makes_the_first_checkpoint_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.savepoints().await;
    let path = take_savepoint(&server, &mut client).await;

    let borrower = keyed_job("borrower", 2, MAX_PARALLELISM);
    register(&mut client, &borrower).await;
    restore(&mut client, "borrower", &path, ClaimMode::Unspecified)
        .await
        .expect("restored without claiming");
    let latest = stats(&mut client, "borrower")
        .await
        .latest_restore
        .expect("restore");
    assert_eq!(latest.claim_mode(), ClaimMode::NoClaim, "the default");

    let cluster = Cluster::start(&server, &borrower, 2, Acks::All, &["src"]).await;
    set_status(&mut client, "borrower", proto::JobStatus::Running).await;
    let first = common::trigger_checkpoint(&mut client, "borrower").await;
    let second = common::trigger_checkpoint(&mut client, "borrower").await;
    let third = common::trigger_checkpoint(&mut client, "borrower").await;
    cluster.wait_for_notifications(third).await;
    let full: Vec<(u64, bool)> = common::triggers(&cluster.log())
        .map(|t| (t.checkpoint_id, t.full))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(full, vec![(first, true), (second, false), (third, false)]);
    let history: Vec<(u64, bool)> = stats(&mut client, "borrower")
        .await
        .history
        .iter()
        .map(|s| (s.checkpoint_id, s.full))
        .collect();
    assert_eq!(
        history,
        vec![(third, false), (second, false), (first, true)]
    );

    // Two checkpoints were retired meanwhile (retained 1); the savepoint stays the user's.
    assert!(Path::new(&path).join("_metadata").is_file());
    let listed = list_savepoints(&mut client, "origin").await;
    assert_eq!(
        listed.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        vec![path.as_str()]
    );
    server.stop().await;
}
