//! Core benchmark: acknowledgement processing in the coordinator core, no network, no
//! disk (in-memory stores, a gateway that drops messages), on one current-thread tokio
//! runtime, so everything runs on one core.
//!
//! Measured with criterion: acks/s for jobs of 100, 10 000 and 100 000 subtasks, and the
//! trigger + complete cycle. Measured before that with a counting allocator, and asserted
//! because they are deterministic: allocations per acknowledgement (target: none beyond
//! the state handle, which the caller allocates) and bytes per subtask of a pending
//! checkpoint (target: at most 1 KiB).
//!
//! `cargo bench --bench core`; quick: `cargo bench --bench core -- --quick`.

#[path = "../tests/common/core_job.rs"]
mod core_job;

use core_job::{AllocCounts, CoreJob, CountingAllocator};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use savepoint_coordinator::coordinator::AckOutcome;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const SIZES: [usize; 3] = [100, 10_000, 100_000];
const MAX_PENDING_BYTES_PER_SUBTASK: f64 = 1024.0;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Acknowledges checkpoints of `job` `iterations` times; returns the time spent inside
/// `acknowledge` only (triggering, building the acks and waiting for completion are
/// outside the measurement).
fn time_acks(runtime: &Runtime, job: &CoreJob, iterations: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        runtime.block_on(async {
            let handle = job.trigger().await;
            let acks = job.acknowledgements(handle.checkpoint_id);
            let start = Instant::now();
            let mut completing = 0;
            for ack in acks {
                if black_box(job.acknowledge(ack)) == AckOutcome::Completing {
                    completing += 1;
                }
            }
            total += start.elapsed();
            assert_eq!(
                completing, 1,
                "exactly the last ack completes the checkpoint"
            );
            handle.wait().await.expect("checkpoint completes");
        });
    }
    total
}

/// Trigger, every ack and the completion (in-memory store), `iterations` times; the
/// acks are built outside the measurement.
fn time_cycles(runtime: &Runtime, job: &CoreJob, iterations: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        runtime.block_on(async {
            let start = Instant::now();
            let handle = job.trigger().await;
            let triggered = start.elapsed();
            let acks = job.acknowledgements(handle.checkpoint_id);
            let start = Instant::now();
            for ack in acks {
                black_box(job.acknowledge(ack));
            }
            handle.wait().await.expect("checkpoint completes");
            total += triggered + start.elapsed();
        });
    }
    total
}

/// Allocations per ack and bytes per pending subtask, printed and checked against the
/// targets (exact counts, not timings, so they are asserted).
fn measure_memory(runtime: &Runtime) {
    println!("core: allocations and memory (counting allocator, one thread)");
    for subtasks in SIZES {
        let (per_ack, completing_allocations, empty) = runtime.block_on(async {
            let job = CoreJob::new(&format!("memory-{subtasks}"), subtasks).await;
            let before = AllocCounts::now();
            let handle = job.trigger().await;
            let empty = AllocCounts::since(before).live_bytes() as f64 / subtasks as f64;
            let mut acks = job.acknowledgements(handle.checkpoint_id);
            let last = acks.pop().expect("acks");
            let recorded = acks.len();
            let before = AllocCounts::now();
            for ack in acks.drain(..) {
                assert_eq!(job.acknowledge(ack), AckOutcome::Recorded);
            }
            let counted = AllocCounts::since(before);
            let per_ack = counted.allocations as f64 / recorded as f64;
            let before = AllocCounts::now();
            assert_eq!(job.acknowledge(last), AckOutcome::Completing);
            let completing = AllocCounts::since(before).allocations;
            handle.wait().await.expect("checkpoint completes");
            (per_ack, completing, empty)
        });
        // The handles were allocated when the acks were built (as the service layer
        // does when it decodes them); acknowledging moves them into the pending checkpoint.
        let state_handle_bytes = {
            let before = AllocCounts::now();
            let handles = vec![core_job::state_handle()];
            let bytes = AllocCounts::since(before).live_bytes();
            drop(handles);
            bytes
        };
        println!(
            "  {subtasks:>7} subtasks: {per_ack:.3} allocations per recorded ack (target 0), \
             {completing_allocations} in the completing ack; pending checkpoint \
             {empty:.0} B per subtask (target <= 1024 B), {:.0} B once every subtask's \
             state ({state_handle_bytes} B: one handle) is held",
            empty + state_handle_bytes as f64
        );
        assert_eq!(
            per_ack, 0.0,
            "a recorded ack must not allocate beyond its state handle"
        );
        assert!(
            empty <= MAX_PENDING_BYTES_PER_SUBTASK,
            "{empty} bytes per pending subtask exceeds 1 KiB"
        );
    }
}

fn bench_acks(c: &mut Criterion, runtime: &Runtime) {
    let mut group = c.benchmark_group("core/acknowledge");
    group.sampling_mode(SamplingMode::Flat);
    for subtasks in SIZES {
        let job = runtime.block_on(CoreJob::new(&format!("acks-{subtasks}"), subtasks));
        group.throughput(Throughput::Elements(subtasks as u64));
        group.sample_size(if subtasks >= 100_000 { 10 } else { 20 });
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{subtasks} subtasks")),
            &job,
            |b, job| b.iter_custom(|iterations| time_acks(runtime, job, iterations)),
        );
    }
    group.finish();
}

fn bench_cycle(c: &mut Criterion, runtime: &Runtime) {
    let mut group = c.benchmark_group("core/trigger+complete");
    group.sampling_mode(SamplingMode::Flat);
    for subtasks in SIZES {
        let job = runtime.block_on(CoreJob::new(&format!("cycle-{subtasks}"), subtasks));
        group.sample_size(if subtasks >= 100_000 { 10 } else { 20 });
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{subtasks} subtasks")),
            &job,
            |b, job| b.iter_custom(|iterations| time_cycles(runtime, job, iterations)),
        );
    }
    group.finish();
}

fn main() {
    let runtime = runtime();
    measure_memory(&runtime);
    let mut criterion = Criterion::default().configure_from_args();
    bench_acks(&mut criterion, &runtime);
    bench_cycle(&mut criterion, &runtime);
    criterion.final_summary();
}
