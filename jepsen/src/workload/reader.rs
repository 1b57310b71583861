//! The reads workload: from every witness host, `arbiter status --json` (a linearizable read
//! through that witness) and `arbiter fence-check`, at a bounded rate. A read changes
//! nothing, so a read that did not answer is recorded as `fail`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::client_addr;
use crate::ctx::Ctx;
use crate::history::OpType;
use crate::hosts::Host;
use crate::rng::Rng;
use crate::spec::GROUP;

/// Deadline of one read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two reads of one reader, in milliseconds (uniform).
const PAUSE_MS: (u64, u64) = (300, 900);

/// Reads through `host` until `until`.
pub async fn run(ctx: Ctx, host: Host, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    let process = format!("reader-{}", host.name);
    let node = Some(host.name.as_str());
    let servers = [client_addr(&host)];
    let mut epoch = 1u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(PAUSE_MS.0, PAUSE_MS.1))).await;
        if Instant::now() >= until {
            break;
        }
        if rng.chance(0.5) {
            ctx.rec
                .invoke("status", json!({"group": GROUP}), &process, node);
            let args: Vec<String> = ["status", "--json", "--audit", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = ctx
                .cli
                .run_servers(&host, &args, &servers, READ_TIMEOUT)
                .await;
            let group = (out.code == Some(0))
                .then(|| serde_json::from_str::<serde_json::Value>(out.stdout.trim()).ok())
                .flatten()
                .and_then(|v| {
                    v["groups"]
                        .as_array()?
                        .iter()
                        .find(|g| g["name"] == GROUP)
                        .cloned()
                });
            match group {
                Some(g) => {
                    epoch = g["epoch"].as_u64().unwrap_or(epoch);
                    ctx.rec.complete(
                        OpType::Ok,
                        "status",
                        json!({"group": GROUP, "active": g["active"], "epoch": g["epoch"]}),
                        &process,
                        node,
                        None,
                    );
                }
                None => ctx.rec.complete(
                    OpType::Fail,
                    "status",
                    json!({"group": GROUP}),
                    &process,
                    node,
                    Some(out.error_text()),
                ),
            }
        } else {
            let region = if rng.chance(0.5) {
                "region-a"
            } else {
                "region-b"
            };
            let e = (epoch + rng.range(0, 1))
                .saturating_sub(rng.range(0, 1))
                .max(1);
            let value = json!({"group": GROUP, "region": region, "epoch": e});
            ctx.rec.invoke("fence-check", value.clone(), &process, node);
            let args: Vec<String> = vec![
                "fence-check".into(),
                GROUP.into(),
                "--region".into(),
                region.into(),
                "--epoch".into(),
                e.to_string(),
            ];
            let out = ctx
                .cli
                .run_servers(&host, &args, &servers, READ_TIMEOUT)
                .await;
            let allowed = match out.code {
                Some(0) => Some(true),
                Some(1) if out.stderr.contains("error: refused (") => Some(false),
                _ => None,
            };
            match allowed {
                Some(allowed) => {
                    let mut v = value;
                    v["allowed"] = json!(allowed);
                    ctx.rec
                        .complete(OpType::Ok, "fence-check", v, &process, node, None);
                }
                None => ctx.rec.complete(
                    OpType::Fail,
                    "fence-check",
                    value,
                    &process,
                    node,
                    Some(out.error_text()),
                ),
            }
        }
    }
}
