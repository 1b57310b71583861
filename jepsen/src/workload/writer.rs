//! The lease/writes workload: in each region a writer that writes only while its agent
//! holds the lease, the way a database behind `arbiter agent` must.
//!
//! The writer runs in the harness process, so no faked clock reaches it. It reads the
//! agent's state file (`holding`, `epoch`, `deadline_in_ms`) and turns the deadline into
//! wall time with the file's modification time, which the kernel stamps (libfaketime in the
//! agent cannot touch it). A write is recorded only if, at the instant it is stamped, that
//! deadline has not passed: a paused agent that cannot run its on-lose command does not keep
//! its region writing. Each record is appended to `writes.log` on the host before the `ok`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::cluster::GROUP;
use crate::ctx::Ctx;
use crate::history::OpType;
use crate::hosts::{Host, Role};

/// Pause between writes (and between reads of the agent's state file).
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// What the agent's state file says, with its deadline in wall time.
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    holding: bool,
    epoch: u64,
    deadline: Option<SystemTime>,
}

fn read_lease(path: &PathBuf) -> Option<Lease> {
    let meta = std::fs::metadata(path).ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let holding = v["holding"].as_bool().unwrap_or(false);
    let deadline = v["deadline_in_ms"]
        .as_u64()
        .and_then(|ms| Some(meta.modified().ok()? + Duration::from_millis(ms)));
    Some(Lease {
        holding,
        epoch: v["epoch"].as_u64().unwrap_or(0),
        deadline,
    })
}

impl Lease {
    fn valid_at(&self, now: SystemTime) -> bool {
        self.holding && self.deadline.is_some_and(|d| now < d)
    }
}

/// Writes for `db`'s region until `until`. Returns the number of acknowledged writes.
pub async fn run(ctx: Ctx, db: Host, until: Instant) -> u64 {
    let Role::Database { region } = db.role.clone() else {
        return 0;
    };
    let dir = ctx.cluster().node_dir(&db.name);
    let state = dir.join("agent.json");
    let process = format!("writer-{region}");
    let agent_process = format!("agent-{region}");
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("writes.log"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("jepsen: cannot open the write log of {}: {e}", db.name);
            return 0;
        }
    };
    let mut seq = 0u64;
    let mut acknowledged = 0;
    let mut last: Option<(bool, u64)> = None;
    while Instant::now() < until {
        tokio::time::sleep(WRITE_INTERVAL).await;
        let Some(lease) = read_lease(&state) else {
            continue;
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
            || lease.valid_at(SystemTime::now()),
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
