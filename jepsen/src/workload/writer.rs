//! The lease/writes workload: in each region a writer that writes only while its agent
//! holds the lease, the way a database behind `arbiter agent` must.
//!
//! The writer runs in the harness process, so no faked clock reaches it. It reads the
//! agent's state file (`holding`, `epoch`, `deadline_in_ms`) and turns the deadline into
//! wall time with the file's modification time, which the kernel stamps (libfaketime in the
//! agent cannot touch it). A write is recorded only if, at the instant it is stamped, that
//! deadline has not passed: a paused agent that cannot run its on-lose command does not keep
//! its region writing. Each record is appended to `writes.log` on the host before the `ok`.
//!
//! A hard fence stops the writer too: once the fence hook wrote an epoch into the host's
//! `fenced` file, no write of an older epoch is accepted (the old primary is fenced, so the
//! cluster may end the lease wait early on the hook's confirmation).
//!
//! A writer that cannot do its job says so in the history (`workload-error`, which makes S1
//! `unknown`) instead of going quiet: when it cannot open its log, and when the agent's
//! state file cannot be read for [`AGENT_STATE_WAIT`] in a row (it never appeared, or it
//! went away); then it stops.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::ctx::Ctx;
use crate::history::{OpType, WORKLOAD_ERROR};
use crate::hosts::{Host, Role};
use crate::spec::GROUP;

/// Pause between writes (and between reads of the agent's state file).
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// How long the agent's state file may stay unreadable before the writer gives up with an
/// error: the agent writes it (by rename, so never half-written) at every attempt to
/// acquire, about once a second even when it holds nothing, and a paused agent leaves the
/// last one in place; so this long without it means the agent is not running.
const AGENT_STATE_WAIT: Duration = Duration::from_secs(15);

/// What the agent's state file says, with its deadline in wall time.
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    holding: bool,
    epoch: u64,
    deadline: Option<SystemTime>,
}

/// The agent's state file, or why it cannot be read.
fn read_lease(path: &PathBuf) -> Result<Lease, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let holding = v["holding"]
        .as_bool()
        .ok_or("no `holding` in the state file")?;
    let epoch = v["epoch"].as_u64().ok_or("no `epoch` in the state file")?;
    let deadline = v["deadline_in_ms"]
        .as_u64()
        .and_then(|ms| Some(meta.modified().ok()? + Duration::from_millis(ms)));
    Ok(Lease {
        holding,
        epoch,
        deadline,
    })
}

/// Records that the writer cannot do its job (an invocation and a `fail` with the error).
fn workload_error(ctx: &Ctx, process: &str, node: &str, region: &str, what: &str, error: String) {
    eprintln!("jepsen: {process}: {what}: {error}");
    let value = json!({"group": GROUP, "region": region, "what": what});
    ctx.rec
        .invoke(WORKLOAD_ERROR, value.clone(), process, Some(node));
    ctx.rec.complete(
        OpType::Fail,
        WORKLOAD_ERROR,
        value,
        process,
        Some(node),
        Some(error),
    );
}

/// Whether a hard fence (the policy's fence hook under `--hard-fence`) stopped this region's
/// primary for writes of `epoch`: the fence names a newer epoch. Checked at the instant a
/// write is stamped, like the lease, so no write of a fenced epoch is ever accepted.
fn fenced(fence: &std::path::Path, epoch: u64) -> bool {
    crate::hook_log::fenced_epoch(fence).is_some_and(|fenced| epoch < fenced)
}

impl Lease {
    fn valid_at(&self, now: SystemTime) -> bool {
        self.holding && self.deadline.is_some_and(|d| now < d)
    }
}

/// Writes for `db`'s region until `until`. Returns the number of acknowledged writes.
pub async fn run(ctx: Ctx, db: Host, until: Instant) -> u64 {
    let Role::Database { region } = db.role.clone() else {
        let what = "not a database host";
        workload_error(
            &ctx,
            &format!("writer-{}", db.name),
            &db.name,
            "",
            what,
            db.name.clone(),
        );
        return 0;
    };
    let dir = ctx.cluster().node_dir(&db.name);
    let state = dir.join("agent.json");
    let fence = dir.join(crate::hook_log::FENCE_FILE);
    let process = format!("writer-{region}");
    let agent_process = format!("agent-{region}");
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("writes.log"))
    {
        Ok(f) => f,
        Err(e) => {
            let what = "cannot open the write log";
            workload_error(&ctx, &process, &db.name, &region, what, e.to_string());
            return 0;
        }
    };
    let mut seq = 0u64;
    let mut acknowledged = 0;
    let mut last: Option<(bool, u64)> = None;
    let mut last_read = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(WRITE_INTERVAL).await;
        let lease = match read_lease(&state) {
            Ok(lease) => {
                last_read = Instant::now();
                lease
            }
            Err(e) if last_read.elapsed() >= AGENT_STATE_WAIT => {
                let what = format!(
                    "the agent's state file {} was unreadable for {} s",
                    state.display(),
                    AGENT_STATE_WAIT.as_secs()
                );
                workload_error(&ctx, &process, &db.name, &region, &what, e);
                return acknowledged;
            }
            Err(_) => continue,
        };
        let held = lease.valid_at(SystemTime::now());
        if last != Some((held, lease.epoch)) {
            last = Some((held, lease.epoch));
            let value =
                json!({"group": GROUP, "region": region, "epoch": lease.epoch, "held": held});
            ctx.rec.invoke(
                "lease",
                json!({"group": GROUP, "region": region}),
                &agent_process,
                Some(&db.name),
            );
            ctx.rec.complete(
                OpType::Ok,
                "lease",
                value,
                &agent_process,
                Some(&db.name),
                None,
            );
        }
        if !held {
            continue;
        }
        let value = json!({"group": GROUP, "region": region, "epoch": lease.epoch, "seq": seq + 1});
        let invoked = ctx.rec.record_if(
            OpType::Invoke,
            "write",
            value.clone(),
            &process,
            Some(&db.name),
            None,
            || lease.valid_at(SystemTime::now()) && !fenced(&fence, lease.epoch),
        );
        if invoked.is_none() {
            continue;
        }
        seq += 1;
        // Page cache is durable enough here: the hosts share the harness's file system and
        // the harness never crashes a host's kernel.
        let line = format!("{region} {} {seq}\n", lease.epoch);
        match log.write_all(line.as_bytes()) {
            Ok(()) => {
                acknowledged += 1;
                ctx.rec
                    .complete(OpType::Ok, "write", value, &process, Some(&db.name), None);
            }
            Err(e) => ctx.rec.complete(
                OpType::Info,
                "write",
                value,
                &process,
                Some(&db.name),
                Some(e.to_string()),
            ),
        }
    }
    acknowledged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_missing_or_of_another_shape_is_an_error_not_a_lease() {
        let dir = std::env::temp_dir().join(format!("jepsen-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.json");
        let _ = std::fs::remove_file(&path);
        assert!(read_lease(&path).is_err());
        std::fs::write(&path, r#"{"epoch": 3}"#).unwrap();
        assert!(read_lease(&path).unwrap_err().contains("holding"));
        std::fs::write(
            &path,
            r#"{"holding": true, "epoch": 3, "deadline_in_ms": 60000}"#,
        )
        .unwrap();
        let lease = read_lease(&path).unwrap();
        assert!(lease.holding && lease.epoch == 3);
        assert!(lease.valid_at(SystemTime::now()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
