//! `test.json`: what a run was asked to do, written by the runner before the first operation
//! and read back by `analyze` (and by `--reproduce`). It owns the options the checkers need
//! (which faults were requested, how long recovery may take); it never runs anything.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The group every workload uses (the runs have one group; the checkers take theirs from
/// `groups`).
pub const GROUP: &str = "checkout";

/// How long, after the last `heal`, every group may take to answer a status read again when
/// the run does not say: long enough for an election and a lease expiry, short enough that a
/// cluster which never recovers fails the run.
pub const RECOVERY_S_DEFAULT: u64 = 30;

/// How many search steps the linearizability checker may take per group before it answers
/// `unknown`: a few seconds of work and at most ~100 MB of memoised configurations; a
/// simulated 20-minute history of 64,000 register operations needs about 84,000.
pub const LINEARIZABLE_STEPS_DEFAULT: u64 = 1_000_000;

/// The options and identity of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSpec {
    /// The test's name (the store directory `jepsen/store/<name>/<timestamp>/`).
    pub name: String,
    /// `all`, `writes`, `operator` or `reads`.
    pub workload: String,
    /// The nemesis kinds asked for (`partition`, `kill`, ...): each must have happened.
    #[serde(default)]
    pub nemeses: Vec<String>,
    /// How long the generator ran before the final heal.
    pub time_limit_s: u64,
    /// The generator's seed: the same seed and options give the same schedule.
    pub seed: u64,
    /// Number of witness hosts (3 or 5).
    pub nodes: u32,
    /// The regions (one database host each), in candidate order.
    #[serde(default)]
    pub regions: Vec<String>,
    /// The failover groups the workloads use.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The commit of the arbiter build under test, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Bound on recovery after the last heal (seconds).
    #[serde(default = "recovery_s_default")]
    pub recovery_s: u64,
    /// Search budget of the linearizability checker, per group.
    #[serde(default = "linearizable_steps_default")]
    pub linearizable_steps: u64,
    /// Anything else the runner records (kept so `--reproduce` round-trips it).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn recovery_s_default() -> u64 {
    RECOVERY_S_DEFAULT
}

fn linearizable_steps_default() -> u64 {
    LINEARIZABLE_STEPS_DEFAULT
}

impl TestSpec {
    /// A spec with the defaults, for tests and tools that build one by hand.
    pub fn new(name: &str) -> TestSpec {
        TestSpec {
            name: name.to_string(),
            workload: "all".to_string(),
            nemeses: Vec::new(),
            time_limit_s: 0,
            seed: 0,
            nodes: 3,
            regions: Vec::new(),
            groups: Vec::new(),
            git_commit: None,
            recovery_s: RECOVERY_S_DEFAULT,
            linearizable_steps: LINEARIZABLE_STEPS_DEFAULT,
            extra: BTreeMap::new(),
        }
    }

    /// Reads `test.json`; an error names the file and the field.
    pub fn read(path: &Path) -> anyhow::Result<TestSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Writes `test.json`, pretty-printed for people.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_unknown_fields_and_defaults() {
        let text = r#"{"name":"t","workload":"all","nemeses":["kill"],"time_limit_s":60,
            "seed":7,"nodes":5,"git_commit":"abc","proxy_port":9000}"#;
        let spec: TestSpec = serde_json::from_str(text).unwrap();
        assert_eq!(spec.recovery_s, RECOVERY_S_DEFAULT);
        assert_eq!(spec.extra["proxy_port"], 9000);
        let again: TestSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = serde_json::from_str::<TestSpec>(r#"{"name":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("workload"), "{err}");
    }
}
