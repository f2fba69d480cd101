//! The core's [`TaskGateway`] over the task managers' `Connect` streams.
//!
//! Each connected task manager has one bounded channel whose receiver is its response
//! stream. Sending uses `try_send`, so the core never waits for a slow or vanished task
//! manager: a message that does not fit is dropped, logged and counted (the snapshot it
//! belonged to then times out, which the core already handles).
//!
//! A reconnect replaces the older stream; every session carries the generation the core
//! handed out, so the end of an old stream never detaches the new one.

use super::convert;
use crate::coordinator::gateway::{TaskGateway, TaskMessage};
use crate::coordinator::model::TaskManagerId;
use crate::ha::election::LeaseDeadline;
use crate::proto;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// The sending half of one task manager's response stream.
pub type StreamSender = mpsc::Sender<Result<proto::CoordinatorMessage, Status>>;

struct Session {
    generation: u64,
    sender: StreamSender,
}

/// Routes messages to connected task managers by id; shared by the core (as its gateway)
/// and the `Connect` handlers (which attach and detach sessions).
#[derive(Default)]
pub struct StreamRegistry {
    sessions: Mutex<HashMap<TaskManagerId, Session>>,
    closed: AtomicBool,
    dropped: AtomicU64,
    /// Stamped on every message (see `CoordinatorMessage.leader_epoch`).
    leader_epoch: u64,
    /// With high availability: messages go out only while the leader's lease surely
    /// lives (a leader paused past its lease must not trigger anything on waking).
    lease: Option<LeaseDeadline>,
}

impl StreamRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry for the leadership term with fencing token `leader_epoch`,
    /// whose messages go out only while `lease` is valid (None: always).
    pub fn for_leadership(leader_epoch: u64, lease: Option<LeaseDeadline>) -> Self {
        StreamRegistry {
            leader_epoch,
            lease,
            ..Self::default()
        }
    }

    /// Whether a message may go out now (see `lease`); counts and logs one that may not.
    fn may_send(&self, tm: &TaskManagerId) -> bool {
        if self
            .lease
            .as_ref()
            .is_none_or(|lease| lease.is_valid_for(self.leader_epoch))
        {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(task_manager = %tm, "message to task manager dropped: the leadership lease may have expired");
        false
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TaskManagerId, Session>> {
        // The map stays consistent even if a holder panicked: every update is one insert/remove.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `sender` the stream of `tm` for session `generation`, replacing (and so
    /// ending) an older stream of the same task manager. Returns false, and keeps
    /// nothing, once [`close_all`](Self::close_all) has run.
    pub fn attach(&self, tm: TaskManagerId, generation: u64, sender: StreamSender) -> bool {
        let mut sessions = self.lock();
        // Checked under the lock so an attach cannot slip in after close_all emptied the map.
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let replaced = sessions.insert(tm.clone(), Session { generation, sender });
        drop(sessions);
        if let Some(old) = replaced {
            tracing::info!(task_manager = %tm, old_generation = old.generation, generation, "task manager stream replaced by a reconnect");
        }
        true
    }

    /// Removes the stream of `tm` if it still belongs to session `generation`; returns
    /// whether it did.
    pub fn detach(&self, tm: &TaskManagerId, generation: u64) -> bool {
        let mut sessions = self.lock();
        match sessions.get(tm) {
            Some(session) if session.generation == generation => {
                sessions.remove(tm);
                true
            }
            _ => false,
        }
    }

    /// Drops every stream (their response streams end) and refuses new ones: for shutdown.
    pub fn close_all(&self) {
        let mut sessions = self.lock();
        self.closed.store(true, Ordering::Release);
        let closed = std::mem::take(&mut *sessions);
        drop(sessions);
        if !closed.is_empty() {
            tracing::info!(streams = closed.len(), "closing task manager streams");
        }
    }

    /// Sends to `tm` only if its current stream belongs to session `generation` (replies
    /// on a stream, such as Welcome and StreamError, must not reach a newer session).
    pub fn send_to_session(
        &self,
        tm: &TaskManagerId,
        generation: u64,
        message: proto::CoordinatorMessage,
    ) -> bool {
        let sender = match self.lock().get(tm) {
            Some(session) if session.generation == generation => session.sender.clone(),
            _ => return false,
        };
        self.deliver(tm, &sender, message)
    }

    /// The leadership epoch stamped on every message.
    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch
    }

    /// Messages dropped so far because a stream was full or already closed.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Number of task managers with an open stream.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    fn deliver(
        &self,
        tm: &TaskManagerId,
        sender: &StreamSender,
        mut message: proto::CoordinatorMessage,
    ) -> bool {
        if !self.may_send(tm) {
            return false;
        }
        message.leader_epoch = self.leader_epoch;
        let why = match sender.try_send(Ok(message)) {
            Ok(()) => return true,
            Err(TrySendError::Full(_)) => "its stream buffer is full (it does not keep up)",
            Err(TrySendError::Closed(_)) => "its stream is closed",
        };
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(task_manager = %tm, "message to task manager dropped: {why}");
        false
    }
}

impl TaskGateway for StreamRegistry {
    fn send(&self, task_manager: &TaskManagerId, message: TaskMessage) -> bool {
        let sender = self.lock().get(task_manager).map(|s| s.sender.clone());
        let Some(sender) = sender else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                task_manager = %task_manager,
                checkpoint_id = ?message.checkpoint_id(),
                attempt_id = ?message.attempt_id(),
                "message to task manager dropped: it is not connected"
            );
            return false;
        };
        let checkpoint_id = message.checkpoint_id();
        let delivered = self.deliver(
            task_manager,
            &sender,
            convert::task_message_to_proto(message),
        );
        if !delivered {
            tracing::debug!(task_manager = %task_manager, ?checkpoint_id, "undelivered message belonged to this checkpoint");
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::{AttemptId, CheckpointId, JobId};

    fn notify() -> TaskMessage {
        TaskMessage::NotifyCheckpointComplete {
            job_id: JobId::new("j"),
            checkpoint_id: CheckpointId(1),
            attempt_id: AttemptId(1),
            fencing_token: 0,
        }
    }

    #[test]
    fn nothing_goes_out_once_the_leadership_lease_may_have_expired() {
        let lease = LeaseDeadline::default();
        lease.extend_to(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            7,
        );
        let registry = StreamRegistry::for_leadership(7, Some(lease.clone()));
        let tm = TaskManagerId::new("tm-1");
        let (sender, mut receiver) = mpsc::channel(8);
        assert!(registry.attach(tm.clone(), 1, sender));
        assert!(registry.send(&tm, notify()));
        assert_eq!(receiver.try_recv().unwrap().unwrap().leader_epoch, 7);
        lease.expire();
        assert!(!registry.send(&tm, notify()));
        assert!(
            receiver.try_recv().is_err(),
            "no message after the lease lapsed"
        );
        // Leading again, in a new leadership: the old term's registry stays silent.
        lease.extend_to(
            tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            9,
        );
        assert!(!registry.send(&tm, notify()));
        assert!(
            receiver.try_recv().is_err(),
            "no message of an older leadership"
        );
        assert_eq!(registry.dropped_messages(), 2);
    }

    #[test]
    fn full_and_missing_streams_count_drops() {
        let registry = StreamRegistry::new();
        let tm = TaskManagerId::new("tm-1");
        let (sender, mut receiver) = mpsc::channel(1);
        assert!(registry.attach(tm.clone(), 1, sender));
        assert!(registry.send(&tm, notify()));
        assert!(!registry.send(&tm, notify()), "the buffer of 1 is full");
        assert_eq!(registry.dropped_messages(), 1);
        assert!(receiver.try_recv().is_ok());
        assert!(!registry.send(&TaskManagerId::new("other"), notify()));
        assert_eq!(registry.dropped_messages(), 2);
    }

    #[test]
    fn detach_only_matches_its_generation() {
        let registry = StreamRegistry::new();
        let tm = TaskManagerId::new("tm-1");
        let (old, _old_rx) = mpsc::channel(1);
        let (new, _new_rx) = mpsc::channel(1);
        registry.attach(tm.clone(), 1, old);
        registry.attach(tm.clone(), 2, new);
        assert!(!registry.detach(&tm, 1));
        assert_eq!(registry.connected(), 1);
        assert!(registry.detach(&tm, 2));
        assert_eq!(registry.connected(), 0);
    }

    #[test]
    fn close_all_ends_streams_and_refuses_new_ones() {
        let registry = StreamRegistry::new();
        let tm = TaskManagerId::new("tm-1");
        let (sender, mut receiver) = mpsc::channel(1);
        registry.attach(tm.clone(), 1, sender);
        registry.close_all();
        assert!(matches!(
            receiver.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        let (late, _late_rx) = mpsc::channel(1);
        assert!(!registry.attach(tm, 2, late));
    }
}
