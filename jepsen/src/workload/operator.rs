//! The operator workload: failovers, failbacks, mode changes, approvals and the retry or
//! abort of halted operations through the `arbiter` CLI, one at a time, from a random
//! witness host (`operator-0`). Beside it, [`super::step_actions`] (`operator-1`) aborts,
//! retries, skips and approves whatever operation is running, at every step.
//!
//! Outcomes are classified like Jepsen's: `ok` when the CLI reports success, `fail` when
//! the cluster definitely refused (an `arbiter-error` kind from [`super::DEFINITE_KINDS`],
//! bad usage, or an operation that ended aborted, i.e. before any activation), `info` for
//! everything else (timeouts, no witness reachable, indeterminate proposals, halted
//! operations), which may take effect at any later time or never.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::CliOut;
use crate::ctx::Ctx;
use crate::history::OpType;
use crate::rng::Rng;
use crate::spec::GROUP;

/// How long the CLI waits for an operation (`--timeout`), and the kill deadline after it.
const WAIT_S: u64 = 20;
const KILL_AFTER: Duration = Duration::from_secs(WAIT_S + 10);
/// Pause between two operator actions, in milliseconds (uniform).
const PAUSE_MS: (u64, u64) = (2_000, 5_000);

const PROCESS: &str = "operator-0";

/// Outcome of a CLI call that may have had an effect.
pub(super) fn classify(out: &CliOut) -> (OpType, Option<String>) {
    match out.code {
        Some(0) => (OpType::Ok, None),
        Some(64) => (OpType::Fail, Some(out.error_text())),
        Some(1) => {
            let kind = out.error_kind();
            if kind
                .as_deref()
                .is_some_and(|k| super::DEFINITE_KINDS.contains(&k))
                || out.stderr.contains("aborted:")
            {
                (OpType::Fail, Some(out.error_text()))
            } else {
                (OpType::Info, Some(out.error_text()))
            }
        }
        _ => (OpType::Info, Some(out.error_text())),
    }
}

/// `operation N (kind) of G: A -> B, epoch E -> F [state]` from the CLI's first line.
fn parse_operation(stdout: &str) -> Option<(u64, String, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("operation "))?;
    let id = line.split_whitespace().nth(1)?.parse().ok()?;
    let arrow = line.split(": ").nth(1)?;
    let to = arrow
        .split(" -> ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .to_string();
    let epoch = line
        .rsplit(" -> ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((id, to, epoch))
}

/// Acts until `until`; then puts the group back in automatic mode.
pub async fn run(ctx: Ctx, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(PAUSE_MS.0, PAUSE_MS.1))).await;
        if Instant::now() >= until {
            break;
        }
        n += 1;
        let roll = rng.range(0, 99);
        if roll < 35 {
            let active = ctx.active_region().await.map(|(r, _)| r);
            let to = match active.as_deref() {
                Some("region-a") => "region-b",
                Some(_) => "region-a",
                None => *rng.pick(&["region-a", "region-b"]),
            };
            transfer(&ctx, &mut rng, "failover", Some(to), n).await;
        } else if roll < 55 {
            transfer(&ctx, &mut rng, "failback", None, n).await;
        } else if roll < 80 {
            let mode = *rng.pick(&["auto", "auto", "manual", "frozen"]);
            set_mode(&ctx, &mut rng, mode, n).await;
        } else {
            resolve(&ctx, &mut rng).await;
        }
    }
    set_mode(&ctx, &mut rng, "auto", n + 1).await;
}

async fn on_random_host(ctx: &Ctx, rng: &mut Rng, args: Vec<String>, timeout: Duration) -> CliOut {
    let w = ctx.witnesses();
    let host = rng.pick(&w).clone();
    ctx.cli.run(&host, &args, timeout).await
}

async fn transfer(ctx: &Ctx, rng: &mut Rng, f: &str, to: Option<&str>, n: u64) {
    let request_id = format!("jepsen-operator-{n}");
    let mut value = json!({"group": GROUP, "request_id": request_id});
    let mut args: Vec<String> = vec![f.into(), GROUP.into()];
    if let Some(to) = to {
        value["to"] = json!(to);
        args.extend(["--to".into(), to.into()]);
    }
    args.extend([
        "--reason".into(),
        request_id.clone(),
        "--timeout".into(),
        WAIT_S.to_string(),
    ]);
    ctx.rec.invoke(f, value.clone(), PROCESS, None);
    let out = on_random_host(ctx, rng, args, KILL_AFTER).await;
    let (mut kind, mut error) = classify(&out);
    let declared = parse_operation(&out.stdout);
    if let Some((id, to, epoch)) = &declared {
        value["operation"] = json!(id);
        value["to"] = json!(to);
        value["epoch"] = json!(epoch);
    }
    if kind == OpType::Ok && !out.stdout.contains("\ndone: ") && !out.stdout.starts_with("done: ") {
        // Declared but waiting for an approval: it may happen later, or never.
        kind = OpType::Info;
        error = Some("awaiting approval".into());
    }
    if kind == OpType::Ok && declared.is_none() {
        kind = OpType::Info;
        error = Some(format!("unparsable output: {}", out.stdout.trim()));
    }
    ctx.rec.complete(kind, f, value, PROCESS, None, error);
}

async fn set_mode(ctx: &Ctx, rng: &mut Rng, mode: &str, n: u64) {
    let request_id = format!("jepsen-operator-{n}");
    let value = json!({"group": GROUP, "mode": mode, "request_id": request_id});
    ctx.rec.invoke("mode", value.clone(), PROCESS, None);
    let args: Vec<String> = vec![
        "mode".into(),
        GROUP.into(),
        mode.into(),
        "--reason".into(),
        request_id,
    ];
    let out = on_random_host(ctx, rng, args, KILL_AFTER).await;
    let (kind, error) = classify(&out);
    let done = if kind == OpType::Ok {
        json!({"group": GROUP, "mode": mode})
    } else {
        value
    };
    ctx.rec.complete(kind, "mode", done, PROCESS, None, error);
}

/// Approves the oldest operation awaiting approval; otherwise retries (or, less often,
/// aborts) the oldest halted operation, which would block the group until someone does.
/// Records nothing when no operation waits for an operator.
async fn resolve(ctx: &Ctx, rng: &mut Rng) {
    let args: Vec<String> = ["operations", "--json", "--group", GROUP, "--limit", "20"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = on_random_host(ctx, rng, args, Duration::from_secs(5)).await;
    let listed = serde_json::from_str::<serde_json::Value>(out.stdout.trim()).ok();
    let oldest = |state: &str| {
        listed.as_ref().and_then(|v| {
            v.as_array()?
                .iter()
                .filter(|o| o["state"] == state)
                .filter_map(|o| o["id"].as_u64())
                .min()
        })
    };
    let step_of = |id: u64| {
        listed.as_ref().and_then(|v| {
            v.as_array()?
                .iter()
                .find(|o| o["id"].as_u64() == Some(id))?["step"]
                .as_str()
                .map(str::to_string)
        })
    };
    let (f, id) = match (oldest("awaiting-approval"), oldest("halted")) {
        (Some(id), _) => ("approve", id),
        (None, Some(id)) if rng.chance(0.75) => ("retry", id),
        (None, Some(id)) => ("abort", id),
        (None, None) => return,
    };
    let value = json!({"group": GROUP, "operation": id, "step": step_of(id)});
    ctx.rec.invoke(f, value.clone(), PROCESS, None);
    let mut args: Vec<String> = vec![f.into(), id.to_string()];
    if f == "abort" {
        args.extend(["--reason".into(), "jepsen operator".into()]);
    } else {
        args.extend(["--timeout".into(), WAIT_S.to_string()]);
    }
    let out = on_random_host(ctx, rng, args, KILL_AFTER).await;
    complete_with_kind(ctx, f, value, &out, PROCESS);
}

/// Completes the command `f` of `process` as `out` shows it, with the CLI's error kind in
/// the value when it printed one (what the checkers read of a refused step command).
pub(super) fn complete_with_kind(ctx: &Ctx, f: &str, value: Value, out: &CliOut, process: &str) {
    let (kind, error) = classify(out);
    let mut done = value;
    if let Some(k) = out.error_kind() {
        done["error_kind"] = json!(k);
    }
    ctx.rec.complete(kind, f, done, process, None, error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_operation_line() {
        let out = "operation 7 (failover) of checkout: region-a -> region-b, epoch 3 -> 4 [running]\n  0.1s declare ok\ndone: region-b active at epoch 4 after 1.2s\n";
        assert_eq!(parse_operation(out), Some((7, "region-b".into(), 4)));
    }

    #[test]
    fn refusals_fail_and_unknowns_are_info() {
        let refused = CliOut {
            code: Some(1),
            stdout: String::new(),
            stderr: "error: group is frozen (frozen)\n".into(),
        };
        assert_eq!(classify(&refused).0, OpType::Fail);
        let unknown = CliOut {
            code: Some(1),
            stdout: String::new(),
            stderr: "error: commit outcome unknown (indeterminate)\n".into(),
        };
        assert_eq!(classify(&unknown).0, OpType::Info);
        let killed = CliOut {
            code: None,
            stdout: String::new(),
            stderr: String::new(),
        };
        assert_eq!(classify(&killed).0, OpType::Info);
    }
}
