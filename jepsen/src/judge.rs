//! The verdict of a stored run as JSON (`results.json`): the bridge between the runner's
//! CLI and the checkers.

use std::path::Path;

/// Checks the run in `dir`, writes `results.json`, and returns it.
pub fn judge(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let results = serde_json::json!({
        "valid": "unknown",
        "checkers": {},
        "note": "no checkers are built into this harness yet",
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    Ok(results)
}

/// Names of the checkers that found the run invalid.
pub fn invalid_checkers(results: &serde_json::Value) -> Vec<String> {
    results["checkers"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, r)| r["valid"] == serde_json::json!(false))
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default()
}
