//! One job in the coordinator core, without network or disk, and a counting allocator:
//! shared by the core benchmark (`benches/core.rs`) and the allocation test
//! (`tests/ack_allocations.rs`), so both measure the same thing.
//!
//! The allocator counts per thread, so a measurement taken around a call on a
//! current-thread runtime sees exactly the allocations of that call and nothing another
//! thread did meanwhile. Include this file with `#[path]` and install the allocator:
//! `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`

// Each including binary uses only some of it.
#![allow(dead_code)]

use bytes::Bytes;
use savepoint_coordinator::coordinator::clock::TokioClock;
use savepoint_coordinator::coordinator::gateway::{TaskGateway, TaskMessage};
use savepoint_coordinator::coordinator::model::{
    AttemptId, CheckpointId, CheckpointPolicy, JobId, JobSpec, JobStatus, SavepointPolicy,
    StateData, StateHandle, TaskManagerId, TaskState, VertexSpec,
};
use savepoint_coordinator::coordinator::{
    AckOutcome, Acknowledgement, Coordinator, CoordinatorConfig, SnapshotHandle, TaskRegistration,
};
use savepoint_coordinator::store::Stores;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest parallelism a vertex may have (its max parallelism is capped at 32 768).
const VERTEX_CHUNK: usize = 25_000;
/// Task managers the subtasks are spread over, round-robin.
const TASK_MANAGERS: usize = 16;

/// The system allocator, counting what each thread allocates and frees.
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static ALLOCATED_BYTES: Cell<u64> = const { Cell::new(0) };
    static FREED_BYTES: Cell<u64> = const { Cell::new(0) };
}

fn add(counter: &'static std::thread::LocalKey<Cell<u64>>, amount: u64) {
    // Unavailable only while the thread is being torn down; nothing is measured then.
    let _ = counter.try_with(|c| c.set(c.get() + amount));
}

// SAFETY: every call is forwarded unchanged to `System`; counting only touches
// thread-local cells, which neither allocate nor have destructors.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(&ALLOCATIONS, 1);
        add(&ALLOCATED_BYTES, layout.size() as u64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(&ALLOCATIONS, 1);
        add(&ALLOCATED_BYTES, layout.size() as u64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(&FREED_BYTES, layout.size() as u64);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(&ALLOCATIONS, 1);
        add(&ALLOCATED_BYTES, new_size as u64);
        add(&FREED_BYTES, layout.size() as u64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What the current thread allocated so far; subtract two of them for a span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounts {
    /// Calls to alloc, alloc_zeroed and realloc.
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
}

impl AllocCounts {
    /// The counts of the current thread.
    pub fn now() -> AllocCounts {
        AllocCounts {
            allocations: ALLOCATIONS.with(Cell::get),
            allocated_bytes: ALLOCATED_BYTES.with(Cell::get),
            freed_bytes: FREED_BYTES.with(Cell::get),
        }
    }

    /// What happened on this thread since `earlier`.
    pub fn since(earlier: AllocCounts) -> AllocCounts {
        let now = AllocCounts::now();
        AllocCounts {
            allocations: now.allocations - earlier.allocations,
            allocated_bytes: now.allocated_bytes - earlier.allocated_bytes,
            freed_bytes: now.freed_bytes - earlier.freed_bytes,
        }
    }

    /// Bytes still allocated of those allocated in the span (may be negative).
    pub fn live_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }
}

/// A gateway that drops every message after counting it: the core benchmark measures
/// deciding, not delivering.
#[derive(Default)]
pub struct CountingGateway {
    pub sent: AtomicU64,
}

impl TaskGateway for CountingGateway {
    fn send(&self, _task_manager: &TaskManagerId, _message: TaskMessage) -> bool {
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A RUNNING job of `subtasks` subtasks in a coordinator on in-memory stores: a source
/// vertex with a tenth of them (the trigger tasks), the rest in vertices of at most
/// 25 000, every subtask RUNNING on one of 16 task managers. Every subtask acknowledges.
pub struct CoreJob {
    pub coordinator: Coordinator,
    pub job_id: String,
    pub attempts: Vec<AttemptId>,
    pub gateway: Arc<CountingGateway>,
}

/// The vertices of a job of `subtasks` subtasks (see [`CoreJob`]).
pub fn vertices(subtasks: usize) -> Vec<VertexSpec> {
    let sources = (subtasks / 10).max(1);
    let mut vertices = vec![VertexSpec {
        id: "source".to_string(),
        parallelism: sources as u32,
        max_parallelism: 0,
    }];
    let mut rest = subtasks - sources;
    while rest > 0 {
        let parallelism = rest.min(VERTEX_CHUNK);
        vertices.push(VertexSpec {
            id: format!("map-{}", vertices.len()),
            parallelism: parallelism as u32,
            max_parallelism: 0,
        });
        rest -= parallelism;
    }
    vertices
}

impl CoreJob {
    /// Registers the job and its tasks and sets it RUNNING. Needs a tokio runtime.
    pub async fn new(job_id: &str, subtasks: usize) -> CoreJob {
        assert!(subtasks >= 2, "a source and at least one other subtask");
        let gateway = Arc::new(CountingGateway::default());
        let coordinator = Coordinator::new(
            Stores::memory(),
            gateway.clone(),
            Arc::new(TokioClock::new()),
            CoordinatorConfig::default(),
        );
        let vertices = vertices(subtasks);
        let spec = JobSpec {
            job_id: JobId::new(job_id),
            vertices: vertices.clone(),
            trigger_vertices: vec!["source".to_string()],
            wait_for_vertices: Vec::new(),
            commit_vertices: Vec::new(),
            policy: CheckpointPolicy {
                interval: None,
                ..CheckpointPolicy::default()
            },
            savepoint_dir: None,
            savepoint_policy: SavepointPolicy::default(),
        };
        coordinator.register_job(spec).await.expect("register job");
        let task_managers: Vec<TaskManagerId> = (0..TASK_MANAGERS)
            .map(|n| TaskManagerId::new(&format!("tm-{n}")))
            .collect();
        for tm in &task_managers {
            coordinator.connect_task_manager(tm);
        }
        let mut attempts = Vec::with_capacity(subtasks);
        for (vertex_index, vertex) in vertices.iter().enumerate() {
            for subtask_index in 0..vertex.parallelism {
                let attempt_id =
                    AttemptId(vertex_index as u64 * 1_000_000 + u64::from(subtask_index) + 1);
                let tm = &task_managers[attempts.len() % TASK_MANAGERS];
                coordinator
                    .register_task(
                        tm,
                        &TaskRegistration {
                            job_id: job_id.to_string(),
                            vertex_id: vertex.id.clone(),
                            subtask_index,
                            attempt_id,
                            state: TaskState::Running,
                        },
                    )
                    .expect("register task");
                attempts.push(attempt_id);
            }
        }
        coordinator
            .update_job_status(job_id, JobStatus::Running)
            .await
            .expect("set RUNNING");
        CoreJob {
            coordinator,
            job_id: job_id.to_string(),
            attempts,
            gateway,
        }
    }

    pub fn subtasks(&self) -> usize {
        self.attempts.len()
    }

    /// Triggers a checkpoint (outside the periodic schedule).
    pub async fn trigger(&self) -> SnapshotHandle {
        self.coordinator
            .trigger_checkpoint(&self.job_id)
            .await
            .expect("trigger checkpoint")
    }

    /// One acknowledgement per subtask for checkpoint `id`, each with one small inline
    /// state handle, in task order.
    pub fn acknowledgements(&self, id: CheckpointId) -> Vec<Acknowledgement> {
        self.attempts
            .iter()
            .map(|&attempt_id| Acknowledgement {
                checkpoint_id: id,
                attempt_id,
                handles: vec![state_handle()],
                fencing_token: 0,
            })
            .collect()
    }

    pub fn acknowledge(&self, ack: Acknowledgement) -> AckOutcome {
        self.coordinator
            .acknowledge(&self.job_id, ack)
            .expect("acknowledge")
    }
}

/// The state one subtask reports: 16 inline bytes under a short name.
pub fn state_handle() -> StateHandle {
    StateHandle {
        name: "state".to_string(),
        data: StateData::Inline(Bytes::from_static(b"0123456789abcdef")),
        key_groups: None,
    }
}
