//! What a run's checkers concluded, as `results.json` holds it: the shared value between
//! `analyze` (which produces it) and `report` (which shows it). It runs nothing and judges
//! nothing.

use crate::checker::{CheckResult, Valid};
use serde::Serialize;
use std::collections::BTreeMap;

/// What `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// All checkers together: any invalid makes it `false`, else any unknown `"unknown"`.
    pub valid: Valid,
    pub checkers: BTreeMap<String, CheckResult>,
}

impl Results {
    /// The process exit code for these results (valid 0, invalid 1, unknown 2).
    pub fn exit_code(&self) -> i32 {
        exit_code(self.valid)
    }
}

/// The exit code of `jepsen test` / `jepsen analyze`: valid 0, invalid 1, unknown 2.
pub fn exit_code(valid: Valid) -> i32 {
    valid.exit_code()
}
