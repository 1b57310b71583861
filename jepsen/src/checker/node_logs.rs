//! Node logs: a panic in any arbiter process (a line with `panicked at` or
//! `thread '...' panicked`) fails the run, even when the history looks fine — an invariant
//! `assert!` firing is exactly what we are looking for.
//!
//! No verdict without evidence: `unknown` without a run directory, without any log, when a
//! witness's `serve.log` (`nodes/n1/serve.log` .. one per witness of the run) is missing or
//! empty (a witness logs as it starts, so an empty log is a witness whose output was lost
//! and which cannot be said not to have panicked), and when a log cannot be read. Another
//! empty log is only noted: a standby region's agent that never held the lease may have
//! had nothing to say.

use super::{CheckResult, Context, Offence};
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub const NAME: &str = "node-logs";

/// How deep under `nodes/<node>/` log files are looked for (data dirs sit beside them).
const DEPTH_MAX: usize = 3;

/// Lines longer than this are cut in findings.
const LINE_CHARS_MAX: usize = 300;

/// What each witness logs to, under `nodes/<witness>/`.
pub const WITNESS_LOG: &str = "serve.log";

/// The writer's data (`region epoch seq` lines), not a process's log: it is empty in a
/// region that never held the lease.
const WRITES_LOG: &str = "writes.log";

/// Whether a file is a log by its name: `*.log`, `stdout`, `stderr`, `*.out`, `*.err`.
fn is_log(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".log") && name != WRITES_LOG)
        || name.ends_with(".out")
        || name.ends_with(".err")
        || name == "stdout"
        || name == "stderr"
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && depth < DEPTH_MAX {
            collect(&path, depth + 1, out);
        } else if path.is_file() && is_log(&path) {
            out.push(path);
        }
    }
}

/// Whether a log line reports a panic.
pub fn is_panic(line: &str) -> bool {
    line.contains("panicked at") || (line.contains("thread '") && line.contains("' panicked"))
}

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(dir) = ctx.dir else {
        r.unknown("no run directory: no node log was read".into());
        return r;
    };
    let nodes = dir.join("nodes");
    let mut files = Vec::new();
    collect(&nodes, 1, &mut files);
    if files.is_empty() {
        r.unknown("no node logs found under nodes/".into());
    }
    for n in 1..=ctx.spec.nodes {
        let path = nodes.join(format!("n{n}")).join(WITNESS_LOG);
        if !files.contains(&path) {
            r.unknown(format!(
                "witness n{n} has no log: nodes/n{n}/{WITNESS_LOG} is missing"
            ));
        }
    }
    for path in files {
        r.count("files", 1);
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.len() > 0) => f,
            Ok(_) if path.file_name().and_then(|n| n.to_str()) == Some(WITNESS_LOG) => {
                r.unknown(format!("{rel} is empty: the witness's output was lost"));
                continue;
            }
            Ok(_) => {
                r.note(format!("{rel} is empty"));
                continue;
            }
            Err(e) => {
                r.unknown(format!("{rel} cannot be read: {e}"));
                continue;
            }
        };
        for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            r.count("lines", 1);
            if is_panic(&line) {
                let text: String = line.chars().take(LINE_CHARS_MAX).collect();
                r.push(Offence {
                    message: format!("{rel}:{}: {}", n + 1, text.trim()),
                    ops: Vec::new(),
                    file: Some(rel.clone()),
                    line: Some(n as u64 + 1),
                });
            }
        }
    }
    r
}
