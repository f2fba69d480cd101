//! Wall-clock time for timestamps, injectable so tests are deterministic.

use std::time::{SystemTime, UNIX_EPOCH};

/// Source of wall-clock timestamps (milliseconds since the Unix epoch).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Wall clock anchored once and then advanced by tokio's monotonic clock: timestamps never
/// go backwards, and under `tokio::time::pause()` they advance exactly with the test's time.
pub struct TokioClock {
    anchor_ms: u64,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        TokioClock {
            anchor_ms,
            anchor: tokio::time::Instant::now(),
        }
    }

    /// A clock that starts at `anchor_ms` (tests that compare exact timestamps).
    pub fn starting_at(anchor_ms: u64) -> Self {
        TokioClock {
            anchor_ms,
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}
