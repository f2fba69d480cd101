//! Maps a completed snapshot onto a job's subtasks: the pure part of a restore.
//!
//! Keyed state (handles with a key-group range) follows its key groups to whichever new
//! subtask owns them; subtask-bound state needs an unchanged parallelism. Either all of
//! the snapshot maps or the restore is refused: nothing is half applied.

use super::model::{CompletedSnapshot, JobSpec, KeyGroupRange, StateHandle, SubtaskRef};

/// The state one subtask starts from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SubtaskAssignment {
    pub subtask: SubtaskRef,
    pub handles: Vec<StateHandle>,
}

/// The outcome of mapping a snapshot onto a job.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateMapping {
    /// One entry per subtask of the job, in vertex order then subtask order.
    pub assignments: Vec<SubtaskAssignment>,
    /// Snapshot vertices with state that the job does not have.
    pub non_restored_vertices: Vec<String>,
}

/// Maps `snapshot` onto `spec`, or explains (naming the vertex) why it does not fit.
pub fn map_snapshot(
    spec: &JobSpec,
    snapshot: &CompletedSnapshot,
    allow_non_restored_state: bool,
) -> Result<StateMapping, String> {
    let mut non_restored_vertices = Vec::new();
    for state in &snapshot.vertices {
        let has_state = state.subtasks.iter().any(|s| !s.handles.is_empty());
        if has_state && spec.vertex(&state.vertex_id).is_none() {
            if !allow_non_restored_state {
                return Err(format!(
                    "snapshot {} has state for vertex {:?}, which job {} does not have; \
                     set allow_non_restored_state to skip it",
                    snapshot.checkpoint_id, state.vertex_id, spec.job_id
                ));
            }
            non_restored_vertices.push(state.vertex_id.clone());
        }
    }

    let mut assignments = Vec::with_capacity(spec.subtask_count());
    for vertex in &spec.vertices {
        let state = snapshot
            .vertices
            .iter()
            .find(|s| s.vertex_id == vertex.id && s.subtasks.iter().any(|t| !t.handles.is_empty()));
        let Some(state) = state else {
            assignments.extend((0..vertex.parallelism).map(|i| SubtaskAssignment {
                subtask: SubtaskRef {
                    vertex_id: vertex.id.clone(),
                    subtask_index: i,
                },
                handles: Vec::new(),
            }));
            continue;
        };
        if state.max_parallelism != vertex.max_parallelism {
            return Err(format!(
                "vertex {:?}: max parallelism changed from {} in the snapshot to {} in the job; \
                 keyed state cannot be redistributed across a different number of key groups",
                vertex.id, state.max_parallelism, vertex.max_parallelism
            ));
        }
        if state.parallelism == vertex.parallelism {
            for i in 0..vertex.parallelism {
                let handles = state
                    .subtasks
                    .iter()
                    .find(|s| s.subtask_index == i)
                    .map(|s| s.handles.clone())
                    .unwrap_or_default();
                assignments.push(SubtaskAssignment {
                    subtask: SubtaskRef {
                        vertex_id: vertex.id.clone(),
                        subtask_index: i,
                    },
                    handles,
                });
            }
            continue;
        }
        let bound = state
            .subtasks
            .iter()
            .flat_map(|s| &s.handles)
            .find(|h| h.key_groups.is_none());
        if let Some(handle) = bound {
            return Err(format!(
                "vertex {:?}: parallelism changed from {} to {}, but it has subtask-bound \
                 (non-keyed) state {:?} that can only be restored with parallelism {}",
                vertex.id, state.parallelism, vertex.parallelism, handle.name, state.parallelism
            ));
        }
        for i in 0..vertex.parallelism {
            let range = KeyGroupRange::for_subtask(vertex.max_parallelism, vertex.parallelism, i);
            let handles = state
                .subtasks
                .iter()
                .flat_map(|s| &s.handles)
                .filter_map(|h| {
                    let covered = h.key_groups?.intersect(range)?;
                    let mut handle = h.clone();
                    handle.key_groups = Some(covered);
                    Some(handle)
                })
                .collect();
            assignments.push(SubtaskAssignment {
                subtask: SubtaskRef {
                    vertex_id: vertex.id.clone(),
                    subtask_index: i,
                },
                handles,
            });
        }
    }
    Ok(StateMapping {
        assignments,
        non_restored_vertices,
    })
}
