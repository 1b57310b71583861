//! The recorder: appends operations to `history.jsonl` as they happen, with one index
//! sequence and one clock for every process of the run.
//!
//! Times come from the harness's monotonic clock (`CLOCK_MONOTONIC`, shared by every network
//! namespace since they share one kernel), measured from the start of the run. No faked clock
//! ever reaches this module: processes under libfaketime are observed from the outside.
//! It never decides anything about an operation's outcome; callers classify.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::history::{Op, OpType};

/// Where events go, in recording order.
pub struct Recorder {
    start: Instant,
    /// `CLOCK_MONOTONIC` at `start`, in nanoseconds: turns a timestamp another process read
    /// from that clock (a hook's call) into the run's time.
    start_mono_ns: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    out: BufWriter<File>,
    /// Index of the next event.
    next: u64,
}

impl Recorder {
    /// Creates `path` (truncating it); times are measured from `start`.
    pub fn create(path: &Path, start: Instant) -> anyhow::Result<Recorder> {
        let out = BufWriter::new(File::create(path)?);
        let start_mono_ns =
            crate::hook_log::monotonic_ns().saturating_sub(start.elapsed().as_nanos() as u64);
        Ok(Recorder {
            start,
            start_mono_ns,
            inner: Mutex::new(Inner { out, next: 0 }),
        })
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A `CLOCK_MONOTONIC` reading (nanoseconds) as nanoseconds since the start of the run;
    /// `None` for an instant before the start.
    pub fn run_ns_of_monotonic(&self, mono_ns: u64) -> Option<u64> {
        mono_ns.checked_sub(self.start_mono_ns)
    }

    /// How many events have been recorded.
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// Records one event now and returns it.
    pub fn record(
        &self,
        kind: OpType,
        f: &str,
        value: serde_json::Value,
        process: &str,
        node: Option<&str>,
        error: Option<String>,
    ) -> Op {
        self.record_with(kind, f, process, node, error, || Some(value))
            .expect("an unconditional record always happens")
    }

    /// Records one event only if `value()` gives one; `value` is evaluated under the lock,
    /// at the instant the event is stamped, so a decision such as "the database accepts
    /// writes of epoch 3" is true at the recorded time and not some scheduling delay
    /// earlier.
    pub fn record_with(
        &self,
        kind: OpType,
        f: &str,
        process: &str,
        node: Option<&str>,
        error: Option<String>,
        value: impl FnOnce() -> Option<serde_json::Value>,
    ) -> Option<Op> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let time_ns = self.now_ns();
        let value = value()?;
        let op = Op {
            index: inner.next,
            kind,
            f: f.to_string(),
            value,
            process: process.to_string(),
            node: node.map(str::to_string),
            time_ns,
            error,
        };
        inner.next += 1;
        // A line per event, flushed at once: an interrupted run keeps its history so far.
        let written = serde_json::to_writer(&mut inner.out, &op)
            .map_err(std::io::Error::other)
            .and_then(|()| inner.out.write_all(b"\n"))
            .and_then(|()| inner.out.flush());
        if let Err(e) = written {
            eprintln!("jepsen: cannot write the history: {e}");
        }
        Some(op)
    }

    pub fn invoke(&self, f: &str, value: serde_json::Value, process: &str, node: Option<&str>) {
        self.record(OpType::Invoke, f, value, process, node, None);
    }

    /// Records the completion of `process`'s outstanding operation.
    pub fn complete(
        &self,
        kind: OpType,
        f: &str,
        value: serde_json::Value,
        process: &str,
        node: Option<&str>,
        error: Option<String>,
    ) {
        self.record(kind, f, value, process, node, error);
    }
}
