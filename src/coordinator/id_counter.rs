//! The checkpoint ID counter shared by a job's checkpoint and savepoint coordinators.
//!
//! IDs come from blocks reserved durably in the store, so handing one out is usually a
//! memory operation; a crash loses the rest of a block (a gap), never reuses an ID.

use super::model::{CheckpointId, JobId};
use crate::store::{IdCounterStore, StoreResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Per-job ID source over a durable [`IdCounterStore`].
pub struct SharedIdCounter {
    job: JobId,
    store: Arc<dyn IdCounterStore>,
    block_size: u64,
    /// Reserved but unused IDs: `next..end`.
    block: Mutex<(u64, u64)>,
    /// First ID of the first block this instance reserved (0 until then). Every lower ID
    /// was handed out by an earlier run or skipped, and is never handed out again.
    first_of_run: AtomicU64,
}

impl SharedIdCounter {
    pub fn new(job: JobId, store: Arc<dyn IdCounterStore>, block_size: u64) -> Self {
        SharedIdCounter {
            job,
            store,
            block_size: block_size.max(1),
            block: Mutex::new((0, 0)),
            first_of_run: AtomicU64::new(0),
        }
    }

    /// Reserves a fresh block, remembering where this run's IDs begin.
    async fn reserve_block(&self, block: &mut (u64, u64)) -> StoreResult<()> {
        let first = self.store.reserve(&self.job, self.block_size).await?.0;
        *block = (first, first + self.block_size);
        let _ = self
            .first_of_run
            .compare_exchange(0, first, Ordering::AcqRel, Ordering::Acquire);
        Ok(())
    }

    /// Reserves a block now if none is held, so that [`Self::from_earlier_run`] can
    /// answer before the first trigger (used at recovery).
    pub async fn prime(&self) -> StoreResult<()> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            self.reserve_block(&mut block).await?;
        }
        Ok(())
    }

    /// Whether `id` lies below every ID this run can hand out: it was issued (or
    /// skipped) by an earlier run and will never be issued again. False while unknown.
    pub fn from_earlier_run(&self, id: CheckpointId) -> bool {
        id.0 != 0 && id.0 < self.first_of_run.load(Ordering::Acquire)
    }

    /// The next ID: strictly greater than every ID handed out before for this job.
    pub async fn next(&self) -> StoreResult<CheckpointId> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            self.reserve_block(&mut block).await?;
        }
        let id = block.0;
        block.0 += 1;
        Ok(CheckpointId(id))
    }

    /// Makes every later ID greater than `id` (restore of snapshot `id`) and returns the
    /// ID that [`next`](Self::next) hands out next.
    pub async fn advance_past(&self, id: CheckpointId) -> StoreResult<CheckpointId> {
        let mut block = self.block.lock().await;
        self.store.advance_past(&self.job, id).await?;
        if block.0 <= id.0 || block.0 >= block.1 {
            // The rest of the block is at or below the restored id, or used up. The store
            // may be further ahead than `id` (IDs of an earlier run), so reserve now to
            // learn the real next ID; the unused rest of the old block is a gap.
            self.reserve_block(&mut block).await?;
        }
        Ok(CheckpointId(block.0))
    }

    /// The ID the next call to [`next`](Self::next) returns, if it is known without I/O.
    pub async fn peek(&self) -> Option<CheckpointId> {
        let block = self.block.lock().await;
        (block.0 < block.1).then_some(CheckpointId(block.0))
    }
}
