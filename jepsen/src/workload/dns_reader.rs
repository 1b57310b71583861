//! DNS reads during the run: one process asks a random DNS source (a witness's embedded
//! server, or BIND) for the group's name at a bounded rate and records what it answered as
//! `dns-read`. While faults are installed DNS may lag the committed state by design, so S5
//! does not ask these answers to be current; it asks that none names a region before an
//! activation of that region could have been committed (DNS never runs ahead of
//! consensus), and convergence is judged after healing, on the `final` operation. The
//! reads also show in the timeline how DNS followed the failovers. A read that got no
//! answer is `fail` (it changes nothing).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ctx::Ctx;
use crate::history::OpType;
use crate::rng::Rng;
use crate::spec::GROUP;

/// The process that records every DNS read.
pub const PROCESS: &str = "reader-dns";
/// Pause between two reads, in milliseconds (uniform).
const PAUSE_MS: (u64, u64) = (500, 1_500);

/// Reads until `until`.
pub async fn run(ctx: Ctx, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    let mut sources = ctx.witnesses();
    sources.extend(ctx.dns_host());
    if sources.is_empty() {
        return;
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(PAUSE_MS.0, PAUSE_MS.1))).await;
        if Instant::now() >= until {
            break;
        }
        let h = rng.pick(&sources).clone();
        let source = if h.witness_id().is_some() {
            format!("witness-{}", h.name)
        } else {
            "bind".to_string()
        };
        let node = Some(h.name.as_str());
        ctx.rec.invoke(
            "dns-read",
            json!({"group": GROUP, "source": source}),
            PROCESS,
            node,
        );
        let a = crate::dns::query(&source, &h.ns(), &h.ip).await;
        let value = a.to_json();
        match (&a.region, a.addrs.is_empty(), &a.error) {
            (None, true, Some(e)) if !e.starts_with("no A records") => ctx.rec.complete(
                OpType::Fail,
                "dns-read",
                value,
                PROCESS,
                node,
                Some(e.clone()),
            ),
            _ => ctx
                .rec
                .complete(OpType::Ok, "dns-read", value, PROCESS, node, None),
        }
    }
}
