//! The lease/writes workload: in each region a writer that writes while its region's
//! database accepts writes ([`crate::database`]): between the real runs of the agent's
//! `--on-gain` (which opens it for the agent's epoch, after its latency) and `--on-lose`
//! (which closes it), unless the watchdog or a hard fence closed it first. The agent's
//! state file decides nothing: a paused agent's database keeps writing until the watchdog
//! fires, as a real one would, and S1 judges what it wrote.
//!
//! The writer runs in the harness process, so no faked clock reaches it. Whether the
//! database accepts a write, and at which epoch, is read at the instant the write is
//! stamped; each record is appended to `writes.log` on the host before the `ok`. Changes
//! of the database's state are recorded as `database` events (`open`, `epoch`, `by`), and
//! the agent's own view (its state file: `holding`, `epoch`, a deadline from the file's
//! kernel modification time plus `deadline_in_ms`) as `lease` events, for the epochs
//! checker and the timeline.
//!
//! A writer that cannot do its job says so in the history (`workload-error`, which makes S1
//! `unknown`) instead of going quiet: when it cannot open its log, when the database's
//! state file cannot be read, and when the agent's state file cannot be read for
//! [`AGENT_STATE_WAIT`] in a row (it never appeared, or it went away); then it stops.

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
    let database = crate::database::Database::in_dir(&dir);
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
    let mut last_db: Option<crate::database::DbState> = None;
    let mut last_read = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(WRITE_INTERVAL).await;
        match read_lease(&state) {
            Ok(lease) => {
                last_read = Instant::now();
                let held = lease.valid_at(SystemTime::now());
                if last != Some((held, lease.epoch)) {
                    last = Some((held, lease.epoch));
                    let value = json!({"group": GROUP, "region": region, "epoch": lease.epoch, "held": held});
                    event(&ctx, "lease", value, &agent_process, &db.name);
                }
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
            Err(_) => {}
        }
        let db_state = match database.state() {
            Ok(s) => s,
            Err(e) => {
                let what = "the database's state file is unreadable";
                workload_error(&ctx, &process, &db.name, &region, what, e);
                return acknowledged;
            }
        };
        if last_db.as_ref() != Some(&db_state) {
            let by = match &db_state {
                crate::database::DbState::Open { .. } => "on-gain",
                crate::database::DbState::Closed { by, .. } => by.as_str(),
            };
            let value = json!({"group": GROUP, "region": region, "epoch": db_state.epoch(),
                               "open": db_state.is_open(), "by": by});
            event(&ctx, DATABASE, value, &process, &db.name);
            last_db = Some(db_state.clone());
        }
        if database.accepts().is_none() {
            continue;
        }
        // The epoch is the one the database accepts at the instant the write is stamped.
        let mut epoch = 0;
        let invoked = ctx.rec.record_with(
            OpType::Invoke,
            "write",
            &process,
            Some(&db.name),
            None,
            || {
                let e = database.accepts()?;
                epoch = e;
                Some(json!({"group": GROUP, "region": region, "epoch": e, "seq": seq + 1}))
            },
        );
        let Some(value) = invoked.map(|op| op.value) else {
            continue;
        };
        seq += 1;
        // Page cache is durable enough here: the hosts share the harness's file system and
        // the harness never crashes a host's kernel.
        let line = format!("{region} {epoch} {seq}\n");
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

/// The `f` of a change of a region's database state, as its writer saw it.
pub const DATABASE: &str = "database";

/// Records an observation (an invocation and its `ok` at once).
fn event(ctx: &Ctx, f: &str, value: serde_json::Value, process: &str, node: &str) {
    let key = json!({"group": GROUP, "region": value["region"]});
    ctx.rec.invoke(f, key, process, Some(node));
    ctx.rec
        .complete(OpType::Ok, f, value, process, Some(node), None);
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
