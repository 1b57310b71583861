//! The wall clock, for what people read: audit timestamps, state files, reports. Never for
//! safety: leases, waits and cooldowns run on monotonic clocks (`tokio::time::Instant`, which
//! a paused or simulated runtime controls).
//!
//! [`WallClock`] is the seam: a witness reads the wall clock only through the one it was
//! started with, so a simulation can give every witness a clock of its own (skewed, jumping)
//! and replay a run with the same timestamps. [`SystemClock`] is the real one; [`now_ms`]
//! reads it directly for code that no simulation runs (the CLI, the demo's printout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that reads what it was last set to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
