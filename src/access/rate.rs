//! How often one identity may write: a token bucket per certificate identity on each
//! witness, holding `access.writes_per_minute` tokens and refilled evenly over a minute.
//! [`super::enforce`] takes one token for each call [`is_write`] names, before the handler
//! runs, and refuses the call with `rate-limited` when the bucket is empty.
//!
//! Why: every write is a Raft entry replicated to every witness, and a DNS check queries
//! every external server; a script stuck in a loop, or a stolen operator certificate, must
//! not be able to flood the log or the DNS servers. Lease calls are never limited (an
//! agent's renewals are what keeps its region writable), nor are reads or the Raft protocol.
//!
//! Must never grow without bound: at most [`IDENTITIES_MAX`] buckets are kept; a full
//! bucket holds nothing worth keeping and is dropped first, and identities past the bound
//! share one bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most identities with a bucket of their own on one witness.
pub const IDENTITIES_MAX: usize = 1024;

/// The bucket identities past [`IDENTITIES_MAX`] share.
const OVERFLOW: &str = "";

/// Whether `method` (an RPC name of the `Arbiter` service, as [`super::need_of`] names it)
/// is a write the limit applies to.
pub fn is_write(method: &str) -> bool {
    matches!(
        method,
        "Failover"
            | "Failback"
            | "Approve"
            | "Retry"
            | "Skip"
            | "Abort"
            | "SetMode"
            | "PolicyApply"
            | "Init"
            | "MembersAdd"
            | "MembersRemove"
            | "DnsCheck"
    )
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one witness.
#[derive(Debug, Default)]
pub struct WriteLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl WriteLimiter {
    /// Takes one token from `identity`'s bucket of `per_minute` at `now`; `Err` with how
    /// long until one is back when there is none.
    pub fn take(&self, identity: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().expect("write limiter lock");
        if !buckets.contains_key(identity) && buckets.len() >= IDENTITIES_MAX {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < capacity
            });
        }
        let key = if buckets.contains_key(identity) || buckets.len() < IDENTITIES_MAX {
            identity
        } else {
            OVERFLOW
        };
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refilled =
            bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = refilled.min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    /// How many identities have a bucket.
    pub fn identities(&self) -> usize {
        self.buckets.lock().expect("write limiter lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an identity makes `per_minute` writes at once and not one more, gets one back
    /// after a minute's share of time, and does not spend another identity's allowance.
    /// Method: a bucket of 3 per minute, time moved by hand.
    #[test]
    fn an_identity_writes_up_to_its_allowance_and_one_more_after_the_refill() {
        let limiter = WriteLimiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take("olga", 3, t0), Ok(()));
        }
        let wait = limiter.take("olga", 3, t0).unwrap_err();
        assert_eq!(wait.as_secs(), 20, "{wait:?}");
        assert_eq!(
            limiter.take("otto", 3, t0),
            Ok(()),
            "another identity's own bucket"
        );
        assert!(limiter
            .take("olga", 3, t0 + Duration::from_secs(19))
            .is_err());
        assert_eq!(
            limiter.take("olga", 3, t0 + Duration::from_secs(20)),
            Ok(())
        );
        assert!(limiter
            .take("olga", 3, t0 + Duration::from_secs(20))
            .is_err());
    }

    /// Goal: the buckets stay bounded: past the bound, idle (full) buckets are dropped, and
    /// when none is idle new identities share one bucket.
    /// Method: IDENTITIES_MAX identities each take a token; more arrive at once, then after
    /// everyone's bucket refilled.
    #[test]
    fn the_buckets_are_bounded() {
        let limiter = WriteLimiter::default();
        let t0 = Instant::now();
        for i in 0..IDENTITIES_MAX {
            limiter.take(&format!("id-{i}"), 2, t0).unwrap();
        }
        assert_eq!(limiter.identities(), IDENTITIES_MAX);
        limiter.take("late-1", 2, t0).unwrap();
        limiter.take("late-2", 2, t0).unwrap();
        assert!(
            limiter.take("late-3", 2, t0).is_err(),
            "the shared bucket is spent"
        );
        assert_eq!(limiter.identities(), IDENTITIES_MAX + 1);
        let later = t0 + Duration::from_secs(60);
        limiter.take("late-4", 2, later).unwrap();
        assert!(
            limiter.identities() <= 2,
            "idle buckets dropped: {}",
            limiter.identities()
        );
    }

    #[test]
    fn writes_are_the_state_changing_and_external_calls() {
        for m in [
            "Failover",
            "PolicyApply",
            "MembersAdd",
            "DnsCheck",
            "Approve",
        ] {
            assert!(is_write(m), "{m}");
        }
        for m in [
            "Status",
            "Watch",
            "Acquire",
            "Renew",
            "Check",
            "AppendEntries",
            "GET /metrics",
        ] {
            assert!(!is_write(m), "{m}");
        }
    }
}
