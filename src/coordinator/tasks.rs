//! The job's subtasks and their current execution attempts.

use super::model::{AttemptId, JobSpec, SubtaskRef, TaskManagerId, TaskState};
use rustc_hash::FxHashMap;

/// The current attempt of one subtask, if any.
#[derive(Clone, Debug)]
pub struct TaskSlot {
    pub attempt: Option<AttemptId>,
    pub state: TaskState,
    pub task_manager: Option<TaskManagerId>,
}

/// Every subtask of a job, indexed in vertex order (the "task index"), with a reverse
/// index from attempt id so an acknowledgement costs one hash lookup.
#[derive(Debug)]
pub struct TaskTable {
    /// (vertex id, first task index, parallelism) in spec order.
    vertices: Vec<(String, u32, u32)>,
    slots: Vec<TaskSlot>,
    by_attempt: FxHashMap<AttemptId, u32>,
}

/// What registering an attempt changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    pub task_index: u32,
    /// The attempt this one replaced (a restarted subtask).
    pub replaced: Option<AttemptId>,
}

impl TaskTable {
    pub fn new(spec: &JobSpec) -> Self {
        let mut vertices = Vec::with_capacity(spec.vertices.len());
        let mut offset = 0u32;
        for vertex in &spec.vertices {
            vertices.push((vertex.id.clone(), offset, vertex.parallelism));
            offset += vertex.parallelism;
        }
        let empty = TaskSlot {
            attempt: None,
            state: TaskState::Created,
            task_manager: None,
        };
        TaskTable {
            vertices,
            slots: vec![empty; offset as usize],
            by_attempt: FxHashMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Task index of a subtask, or None if the vertex or index does not exist.
    pub fn index_of(&self, vertex_id: &str, subtask_index: u32) -> Option<u32> {
        let (_, offset, parallelism) = self.vertices.iter().find(|(id, _, _)| id == vertex_id)?;
        (subtask_index < *parallelism).then_some(offset + subtask_index)
    }

    /// Task indices of all subtasks of a vertex.
    pub fn indices_of_vertex(&self, vertex_id: &str) -> std::ops::Range<u32> {
        self.vertices
            .iter()
            .find(|(id, _, _)| id == vertex_id)
            .map(|(_, offset, p)| *offset..offset + p)
            .unwrap_or(0..0)
    }

    pub fn subtask_ref(&self, task_index: u32) -> SubtaskRef {
        let (vertex_id, offset, _) = self
            .vertices
            .iter()
            .rev()
            .find(|(_, offset, _)| *offset <= task_index)
            .expect("task index within the table");
        SubtaskRef {
            vertex_id: vertex_id.clone(),
            subtask_index: task_index - offset,
        }
    }

    /// (position of the vertex in the spec, subtask index) of a task index.
    pub fn locate(&self, task_index: u32) -> (usize, u32) {
        let position = self
            .vertices
            .iter()
            .rposition(|(_, offset, _)| *offset <= task_index)
            .expect("task index within the table");
        (position, task_index - self.vertices[position].1)
    }

    pub fn all_subtask_refs(&self) -> Vec<SubtaskRef> {
        (0..self.slots.len() as u32)
            .map(|i| self.subtask_ref(i))
            .collect()
    }

    pub fn slot(&self, task_index: u32) -> &TaskSlot {
        &self.slots[task_index as usize]
    }

    pub fn index_of_attempt(&self, attempt: AttemptId) -> Option<u32> {
        self.by_attempt.get(&attempt).copied()
    }

    /// Every task manager hosting a current attempt of the job, each once, in name order.
    pub fn task_managers(&self) -> Vec<TaskManagerId> {
        let mut tms: Vec<TaskManagerId> = self
            .slots
            .iter()
            .filter_map(|slot| slot.task_manager.clone())
            .collect();
        tms.sort();
        tms.dedup();
        tms
    }

    pub fn task_manager_of(&self, attempt: AttemptId) -> Option<&TaskManagerId> {
        let index = self.index_of_attempt(attempt)?;
        self.slots[index as usize].task_manager.as_ref()
    }

    /// Makes `attempt` the current attempt of the subtask at `task_index`, hosted by `tm`.
    pub fn register(
        &mut self,
        task_index: u32,
        attempt: AttemptId,
        state: TaskState,
        tm: TaskManagerId,
    ) -> Result<Registered, String> {
        if let Some(&other) = self.by_attempt.get(&attempt)
            && other != task_index
        {
            return Err(format!(
                "attempt_id {attempt} is already used by subtask {}",
                self.subtask_ref(other)
            ));
        }
        // An attempt runs on one task manager; another may take it over only once the
        // first has disconnected (which clears `task_manager`).
        let current = &self.slots[task_index as usize];
        if current.attempt == Some(attempt)
            && let Some(host) = current.task_manager.as_ref().filter(|host| **host != tm)
        {
            return Err(format!(
                "attempt_id {attempt} of subtask {} is hosted by another task manager \
                 ({host}) that is still connected",
                self.subtask_ref(task_index)
            ));
        }
        let slot = &mut self.slots[task_index as usize];
        let replaced = slot.attempt.filter(|old| *old != attempt);
        if let Some(old) = replaced {
            self.by_attempt.remove(&old);
        }
        slot.attempt = Some(attempt);
        slot.state = state;
        slot.task_manager = Some(tm);
        self.by_attempt.insert(attempt, task_index);
        Ok(Registered {
            task_index,
            replaced,
        })
    }

    /// Sets the state of a current attempt; returns its task index and previous state.
    pub fn set_state(&mut self, attempt: AttemptId, state: TaskState) -> Option<(u32, TaskState)> {
        let index = self.index_of_attempt(attempt)?;
        let slot = &mut self.slots[index as usize];
        let previous = slot.state;
        slot.state = state;
        Some((index, previous))
    }

    /// Marks the attempts hosted by `tm` as failed (their task manager went away) and
    /// returns them.
    pub fn lose_task_manager(&mut self, tm: &TaskManagerId) -> Vec<AttemptId> {
        let mut lost = Vec::new();
        for slot in &mut self.slots {
            if slot.task_manager.as_ref() == Some(tm) {
                slot.task_manager = None;
                if !slot.state.is_terminal() {
                    slot.state = TaskState::Failed;
                }
                if let Some(attempt) = slot.attempt {
                    lost.push(attempt);
                }
            }
        }
        lost
    }

    /// Whether no subtask has an attempt beyond CREATED (restore is allowed then).
    pub fn all_created(&self) -> Result<(), String> {
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.attempt.is_some() && slot.state != TaskState::Created {
                return Err(format!(
                    "subtask {} is {}, all subtasks must be CREATED (or not yet deployed) \
                     to restore state",
                    self.subtask_ref(index as u32),
                    slot.state
                ));
            }
        }
        Ok(())
    }
}
