//! `jepsen results DIR...`: the published results, `jepsen/RESULTS.md`, written from stored
//! runs. Each run directory (or a test's `latest` link) is judged again with the checkers
//! of this build ([`crate::analyze::analyze`], which also rewrites its `results.json` and
//! report), and its row lists what a reader needs to trust the verdict: the options, seed
//! and commit, how long it ran, the faults installed per kind, each checker's verdict, the
//! writes per region and the availability figures.
//!
//! It only reads runs and writes the one Markdown file; it never runs a test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checker::{availability, faults, single_writer, Valid};
use crate::history::History;
use crate::spec::TestSpec;

/// One judged run, as the table shows it.
struct Row {
    dir: PathBuf,
    spec: TestSpec,
    results: crate::results::Results,
    /// Seconds from the first to the last event of the history.
    duration_s: f64,
}

fn verdict(v: Valid) -> &'static str {
    match v {
        Valid::True => "valid",
        Valid::False => "**invalid**",
        Valid::Unknown => "unknown",
    }
}

/// Judges the run in `dir` (a `latest` link is followed).
fn row(dir: &Path) -> anyhow::Result<Row> {
    let dir = std::fs::canonicalize(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let spec = TestSpec::read(&dir.join("test.json"))?;
    let history = History::read(&dir.join("history.jsonl"))?;
    let duration_s = history.ops.iter().map(|o| o.time_ns).max().unwrap_or(0) as f64 / 1e9;
    let results = crate::analyze::analyze(&dir)?;
    Ok(Row {
        dir,
        spec,
        results,
        duration_s,
    })
}

/// The run's options as a `jepsen test` command line would give them.
fn options(spec: &TestSpec) -> String {
    let mut out = format!(
        "--workload {} --nemesis {} --time-limit {} --nodes {} --recovery {}",
        spec.workload,
        if spec.nemeses.is_empty() {
            "none".to_string()
        } else {
            spec.nemeses.join(",")
        },
        spec.time_limit_s,
        spec.nodes,
        spec.recovery_s
    );
    for (key, flag) in [
        ("lease_ms", "--lease-ms"),
        ("down_after_ms", "--down-after-ms"),
        ("hook_sleep_ms", "--hook-sleep-ms"),
        ("db_latency_ms", "--db-latency-ms"),
    ] {
        if let Some(v) = spec.extra.get(key).and_then(|v| v.as_u64()) {
            let _ = write!(out, " {flag} {v}");
        }
    }
    for (key, flag, when) in [
        ("hard_fence", "--hard-fence", true),
        ("unsafe_skip_lease_wait", "--unsafe-skip-lease-wait", true),
        ("watchdog", "--no-watchdog", false),
    ] {
        if spec.extra.get(key).and_then(|v| v.as_bool()) == Some(when) {
            let _ = write!(out, " {flag}");
        }
    }
    if let Some(holes) = spec.extra.get("unsafe_holes").and_then(|v| v.as_array()) {
        let holes: Vec<&str> = holes.iter().filter_map(|h| h.as_str()).collect();
        if !holes.is_empty() {
            let _ = write!(out, " --unsafe-hole {}", holes.join(","));
        }
    }
    out
}

/// The Markdown of `RESULTS.md` for `rows`.
fn render(rows: &[Row]) -> String {
    let mut md = String::from(
        "# Published jepsen results\n\n\
         Long runs of the harness against the real system. Each run's commit is the one it \
         tested; every run was judged again by the checkers of the build that wrote this \
         file, with `cargo run -p jepsen -- results DIR...` (see `jepsen/README.md`, \
         \"Published results\"); do not edit by hand.\n",
    );
    for r in rows {
        let name = r
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = r
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = write!(
            md,
            "\n## {name} ({stamp}): {}\n\n\
             - command: `cargo run -p jepsen -- test {} --seed {}`\n\
             - seed {}, commit `{}`, {:.0} s of history\n",
            verdict(r.results.valid),
            options(&r.spec),
            r.spec.seed,
            r.spec.seed,
            r.spec.git_commit.as_deref().unwrap_or("unknown"),
            r.duration_s,
        );
        let count = |checker: &str, key: &str| {
            r.results
                .checkers
                .get(checker)
                .and_then(|c| c.counts.get(key))
                .copied()
        };
        let faults: Vec<String> = r
            .spec
            .nemeses
            .iter()
            .map(|k| {
                format!(
                    "{k} {}",
                    count(faults::NAME, &format!("{k}-installed")).unwrap_or(0)
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "- faults installed: {}",
            if faults.is_empty() {
                "none asked for".to_string()
            } else {
                faults.join(", ")
            }
        );
        let writes: Vec<String> = r
            .results
            .checkers
            .get(single_writer::NAME)
            .map(|c| {
                c.counts
                    .iter()
                    .filter_map(|(k, v)| Some(format!("{} {v}", k.strip_prefix("writes-ok ")?)))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "- accepted writes per region: {}",
            if writes.is_empty() {
                "none".to_string()
            } else {
                writes.join(", ")
            }
        );
        let ms = |key: &str| {
            count(availability::NAME, key)
                .map(|v| format!("{v} ms"))
                .unwrap_or_else(|| "not measured".into())
        };
        let _ = writeln!(
            md,
            "- availability: longest outage with no failover due {} (bound {}), outages in \
             all {}, longest gap across a failover {}",
            ms("longest-outage-ms"),
            ms("bound-ms"),
            ms("outage-total-ms"),
            ms("longest-failover-gap-ms"),
        );
        md.push_str("\n| checker | verdict | first finding or note |\n| --- | --- | --- |\n");
        for (name, c) in &r.results.checkers {
            let first = c
                .errors
                .first()
                .map(|e| e.message.clone())
                .or_else(|| c.notes.first().cloned())
                .unwrap_or_default();
            let first = source_relative(&first)
                .replace('|', "\\|")
                .replace('\n', " ");
            let _ = writeln!(md, "| {name} | {} | {first} |", verdict(c.valid));
        }
    }
    md
}

/// `text` with every dependency source path cut to the crate's own (`openraft-0.10/src/x.rs`
/// for a panic location under cargo's registry), so the published page names no local path.
fn source_relative(text: &str) -> String {
    const MARK: &str = "/.cargo/registry/src/";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        let start = rest[..i].rfind(char::is_whitespace).map_or(0, |j| j + 1);
        out.push_str(&rest[..start]);
        let after = &rest[i + MARK.len()..];
        // Skip the registry's directory (`<index>-<hash>/`).
        rest = after.find('/').map_or(after, |j| &after[j + 1..]);
    }
    out.push_str(rest);
    out
}

/// Judges every run in `dirs` and writes `out`; the runs' verdicts, in order.
pub fn publish(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Vec<Valid>> {
    if dirs.is_empty() {
        anyhow::bail!("name at least one run directory (jepsen/store/<name>/latest)");
    }
    let rows = dirs
        .iter()
        .map(|d| row(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(out, render(&rows)).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(rows.iter().map(|r| r.results.valid).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, OpType};

    /// Goal: a stored run becomes a section with its command, seed, commit, faults,
    /// writes, availability figures and every checker's verdict.
    #[test]
    fn dependency_paths_are_cut_to_the_crate() {
        assert_eq!(
            source_relative("panicked at /home/u/.cargo/registry/src/index-abc/openraft-0.10/src/utime.rs:157:9: x"),
            "panicked at openraft-0.10/src/utime.rs:157:9: x"
        );
        assert_eq!(source_relative("no path here"), "no path here");
    }

    #[test]
    fn a_stored_run_is_listed_with_its_options_verdicts_and_figures() {
        let base = std::env::temp_dir().join(format!("jepsen-published-{}", std::process::id()));
        let dir = base.join("long-run").join("20261201T120000");
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = TestSpec::new("long-run");
        spec.seed = 7;
        spec.nemeses = vec!["kill".into()];
        spec.git_commit = Some("abc123".into());
        spec.extra
            .insert("lease_ms".into(), serde_json::json!(2000));
        spec.extra
            .insert("watchdog".into(), serde_json::json!(false));
        spec.write(&dir.join("test.json")).unwrap();
        let mut lines = String::new();
        for k in 0..30u64 {
            for (kind, at) in [(OpType::Invoke, 50 * k), (OpType::Ok, 50 * k + 5)] {
                let op = Op {
                    index: 2 * k + u64::from(kind == OpType::Ok),
                    kind,
                    f: "write".into(),
                    value: serde_json::json!({"group": "checkout", "region": "region-a", "epoch": 1, "seq": k}),
                    process: "writer-region-a".into(),
                    node: None,
                    time_ns: at * 1_000_000,
                    error: None,
                };
                lines.push_str(&serde_json::to_string(&op).unwrap());
                lines.push('\n');
            }
        }
        std::fs::write(dir.join("history.jsonl"), lines).unwrap();
        let out = base.join("RESULTS.md");
        let verdicts = publish(std::slice::from_ref(&dir), &out).unwrap();
        // No final state and a kill never installed: the run is not valid.
        assert_ne!(verdicts, vec![Valid::True]);
        let md = std::fs::read_to_string(&out).unwrap();
        for want in [
            "## long-run (20261201T120000): **invalid**",
            "--nemesis kill",
            "--lease-ms 2000",
            "--no-watchdog",
            "--seed 7",
            "commit `abc123`",
            "faults installed: kill 0",
            "accepted writes per region: region-a 30",
            "longest outage with no failover due 45 ms (bound 10000 ms)",
            "| faults-happened | **invalid** | nemesis kill was asked for but never installed",
            "| single-writer | unknown |",
        ] {
            assert!(md.contains(want), "{want:?} missing from:\n{md}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
