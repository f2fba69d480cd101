//! The acknowledgement path of the core allocates nothing: the state handles an ack
//! carries are allocated by whoever decoded it and moved into the pending checkpoint.
//! Counted with a per-thread counting allocator, so the bounds are exact and do not
//! depend on timing. Also bounds the memory a pending checkpoint takes per subtask.

#[path = "common/core_job.rs"]
mod core_job;

use core_job::{AllocCounts, CoreJob, CountingAllocator};
use savepoint_coordinator::coordinator::AckOutcome;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Target of issue 7: at most this many bytes per subtask of a pending checkpoint.
const MAX_PENDING_BYTES_PER_SUBTASK: i64 = 1024;

#[tokio::test(flavor = "current_thread")]
async fn recorded_and_duplicate_acknowledgements_allocate_nothing() {
    let job = CoreJob::new("alloc-per-ack", 1000).await;
    let handle = job.trigger().await;
    let mut acks = job.acknowledgements(handle.checkpoint_id);
    let last = acks.pop().expect("acks");
    let duplicate = acks[0].clone();
    let count = acks.len() as u64;

    let before = AllocCounts::now();
    for ack in acks {
        assert_eq!(job.acknowledge(ack), AckOutcome::Recorded);
    }
    let recorded = AllocCounts::since(before);
    assert_eq!(
        recorded.allocations, 0,
        "{count} recorded acknowledgements allocated {recorded:?}"
    );

    let before = AllocCounts::now();
    assert_eq!(job.acknowledge(duplicate), AckOutcome::Duplicate);
    let duplicated = AllocCounts::since(before);
    assert_eq!(
        duplicated.allocations, 0,
        "a duplicate allocated {duplicated:?}"
    );

    assert_eq!(job.acknowledge(last), AckOutcome::Completing);
    handle.wait().await.expect("the checkpoint completes");
}

#[tokio::test(flavor = "current_thread")]
async fn a_pending_checkpoint_takes_at_most_1_kib_per_subtask() {
    let subtasks = 10_000;
    let job = CoreJob::new("pending-bytes", subtasks).await;
    let before = AllocCounts::now();
    let handle = job.trigger().await;
    let pending = AllocCounts::since(before);
    let per_subtask = pending.live_bytes() / subtasks as i64;
    assert!(
        per_subtask <= MAX_PENDING_BYTES_PER_SUBTASK,
        "a pending checkpoint of {subtasks} subtasks holds {} bytes, {per_subtask} per subtask",
        pending.live_bytes()
    );
    assert!(per_subtask > 0, "the pending checkpoint was measured");
    for ack in job.acknowledgements(handle.checkpoint_id) {
        job.acknowledge(ack);
    }
    handle.wait().await.expect("the checkpoint completes");
}
