//! Judges a stored run: reads `history.jsonl` and `test.json` from the run directory, runs
//! every checker, and writes `results.json`, `timeline.html`, `latency.svg` and `rate.svg`
//! beside them. `jepsen analyze DIR` and the end of `jepsen test` both call [`analyze`].

use crate::checker::{self, Context, Valid};
use crate::history::History;
pub use crate::results::{exit_code, operator_actions, ActionCounts, Results};
use crate::spec::TestSpec;
use std::path::Path;

/// Runs every checker on an in-memory history (no files read or written).
pub fn check(history: &History, spec: &TestSpec, dir: Option<&Path>) -> Results {
    let ctx = Context::new(history, spec, dir);
    let results = checker::check_all(&ctx);
    let valid = results.iter().fold(Valid::True, |v, r| v.and(r.valid));
    Results {
        valid,
        checkers: results.into_iter().map(|r| (r.name.clone(), r)).collect(),
        operator_actions: crate::results::operator_actions(history),
    }
}

/// Checks the run stored in `dir` and writes `results.json` and the report into it.
pub fn analyze(dir: &Path) -> anyhow::Result<Results> {
    let history = History::read(&dir.join("history.jsonl"))?;
    let spec = TestSpec::read(&dir.join("test.json"))?;
    let results = check(&history, &spec, Some(dir));
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    crate::report::write_all(dir, &history, &spec, &results)?;
    Ok(results)
}
