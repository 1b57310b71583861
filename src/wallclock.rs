//! The wall clock, for what people read: audit timestamps, state files, reports. Never for
//! safety: leases, waits and cooldowns run on monotonic clocks (`tokio::time::Instant`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
