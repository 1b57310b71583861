//! Nemeses: faults injected into the running system, one at a time, on a seeded schedule.
//! Every fault is recorded as a nemesis operation (`invoke`, then `ok` with
//! `installed: true` or `info` with `installed: false` and the error), and its end as a
//! `heal` operation naming it. A final `heal` of everything ends the schedule.
//!
//! Kinds (`--nemesis`): `partition` (isolate one witness, isolate the leader, minority /
//! majority halves, majorities ring, region-a cut from region-b while the tiebreaker sees
//! both, one-way drops, the active region's database host cut off), `kill` (`kill -9` of a
//! minority, of the leader, or of the whole cluster, then restart), `pause` (`SIGSTOP` of the
//! leader, of a witness, or of the active region's agent, then `SIGCONT`), `clock`
//! (libfaketime jumps and rate changes of the wall clock on witnesses and agents), `loss`
//! (random packet drops), `delay` (the witnesses' proxies delay every chunk), `health` (the
//! active region's health endpoint stops, which makes the cluster fail over by itself), and
//! `split-brain` (not in `all`: the active region's database host is cut from every witness
//! again and again, the fault that breaks S1 when the lease wait is skipped), and
//! `leader-hook` (not in `all`: that cut, then the leader cut off from every host as soon as
//! it starts a promote hook, so a deposed leader has a step in hand), and `paused-agent`
//! (not in `all`: the active region's agent paused and its database host cut from every
//! witness, held until the other region's database opens, so the cluster fails over while
//! the paused agent cannot run its on-lose: only the watchdog closes its database).
//!
//! A clock fault is `installed: true` only once a process under the faulted host's
//! libfaketime environment shows the faked clock (`clock`).

pub mod clock;
pub mod partition;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::cluster::PolicySpec;
use crate::ctx::Ctx;
use crate::history::OpType;
use crate::hosts::{Host, Role};
use crate::rng::Rng;

/// Every nemesis kind `all` stands for.
pub const ALL: &[&str] = &[
    "partition",
    "kill",
    "pause",
    "clock",
    "clock-rate",
    "loss",
    "delay",
    "health",
    "policy",
];
/// Kinds that exist but are not part of `all`: the demonstrations that a checker catches
/// a hole when it is put back (`split-brain`: the lease wait skipped; `lease-lowered`: the
/// wait taken from a lowered lease; `readd`: a group re-added without a wait).
/// `leader-hook`: the leader cut off while it runs a (slow) promote hook, the schedule in
/// which a deposed leader that does not confirm its leadership calls hooks (S3).
/// `paused-agent`: the active region's agent paused while the cluster fails over, the fault
/// only the watchdog answers.
pub const EXTRA: &[&str] = &[
    "split-brain",
    "lease-lowered",
    "readd",
    "leader-hook",
    "paused-agent",
    "clock-rate-beyond",
];

/// How long `clock-rate-beyond` lets the slowed agent run before cutting its host off:
/// one renewal under the slow rate (a third of the 2 s lease at x0.2 is 3.3 s of real
/// time), so that the lease it holds at the cut lasts five times its length.
const CLOCK_RATE_SETTLE: Duration = Duration::from_secs(4);

/// How long the `paused-agent` fault waits for the other region's database to open after
/// pausing the active region's agent and cutting its host: detection, the lease wait and
/// the steps up to activate, with room.
const PAUSED_AGENT_WAIT: Duration = Duration::from_secs(30);

/// How long the `leader-hook` fault waits for a promote hook call after cutting the active
/// region's database host: detection, the lease wait and the steps before promote, with room.
const LEADER_HOOK_WAIT: Duration = Duration::from_secs(30);
/// How often it looks at the witnesses' hook logs meanwhile.
const LEADER_HOOK_POLL: Duration = Duration::from_millis(50);

const PROCESS: &str = "nemesis";

/// Expands `all` and checks every name.
pub fn parse_kinds(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for k in list {
        let k = k.trim();
        if k == "all" {
            out.extend(ALL.iter().map(|s| s.to_string()));
        } else if k == "none" || k.is_empty() {
        } else if ALL.contains(&k) || EXTRA.contains(&k) {
            out.push(k.to_string());
        } else {
            anyhow::bail!(
                "--nemesis: unknown kind {k:?} (known: all, none, {}, {})",
                ALL.join(", "),
                EXTRA.join(", ")
            );
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One fault, planned with its targets.
#[derive(Debug, Clone)]
enum Fault {
    Partition {
        variant: &'static str,
        drops: Vec<partition::Drop>,
        targets: Vec<String>,
    },
    Loss {
        hosts: Vec<Host>,
        probability: f64,
    },
    Kill {
        variant: &'static str,
        hosts: Vec<String>,
    },
    Pause {
        variant: &'static str,
        /// (host, is the agent rather than the witness)
        procs: Vec<(String, bool)>,
    },
    Clock {
        variant: &'static str,
        hosts: Vec<String>,
        spec: String,
    },
    Delay {
        hosts: Vec<String>,
        ms: u64,
    },
    Health {
        host: String,
    },
    /// Policies applied in order, each after its pause, optionally with a cut of the active
    /// region's database host from every witness first (`cut`). Healed by the run's own
    /// policy.
    Policy {
        variant: &'static str,
        steps: Vec<(Duration, crate::cluster::PolicySpec)>,
        cut: Option<Vec<partition::Drop>>,
    },
    /// The active region's database host cut from every witness (`cut`, so the cluster
    /// fails over); then, once a witness calls a promote hook, that witness (the leader)
    /// cut from every other host, in the middle of its step.
    LeaderHook {
        cut: Vec<partition::Drop>,
        targets: Vec<String>,
    },
    /// The monotonic clock of `hosts` set to run at `rate` (continuously, never back);
    /// with `cut`, the active region's database host (`cut_host`) cut from every witness
    /// too, held until the other region's database opens.
    ClockRate {
        variant: &'static str,
        hosts: Vec<String>,
        rate: f64,
        cut: Option<(String, Vec<partition::Drop>)>,
    },
    /// The active region's agent paused (`host`) and its database host cut from every
    /// witness (`cut`); held until the other region's database opens.
    PausedAgent {
        host: String,
        cut: Vec<partition::Drop>,
    },
}

impl Fault {
    fn f(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::Loss { .. } => "loss",
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Clock { .. } => "clock",
            Fault::Delay { .. } => "delay",
            Fault::Health { .. } => "health",
            Fault::Policy { .. } => "policy",
            Fault::LeaderHook { .. } => "partition",
            Fault::PausedAgent { .. } => "pause",
            Fault::ClockRate { .. } => "clock-rate",
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Fault::Partition {
                variant, targets, ..
            } => {
                // The split-brain schedule is its own kind, so a run asking for it can see
                // that it happened.
                let kind = if *variant == "split-brain" {
                    "split-brain"
                } else {
                    "partition"
                };
                json!({"kind": kind, "variant": variant, "targets": targets})
            }
            Fault::Loss { hosts, probability } => {
                json!({"kind": "loss", "targets": names(hosts), "probability": probability})
            }
            Fault::Kill { variant, hosts } => {
                json!({"kind": "kill", "variant": variant, "targets": hosts})
            }
            Fault::Pause { variant, procs } => json!({"kind": "pause", "variant": variant,
                "targets": procs.iter().map(|(h, agent)| if *agent { format!("{h}/agent") } else { h.clone() }).collect::<Vec<_>>()}),
            Fault::Clock {
                variant,
                hosts,
                spec,
            } => json!({"kind": "clock", "variant": variant, "targets": hosts, "faketime": spec}),
            Fault::Delay { hosts, ms } => {
                json!({"kind": "delay", "targets": hosts, "delay_ms": ms})
            }
            Fault::Health { host } => {
                json!({"kind": "health", "variant": "endpoint-stopped", "targets": [host]})
            }
            Fault::LeaderHook { targets, .. } => {
                json!({"kind": "leader-hook", "variant": "leader-hook", "targets": targets})
            }
            Fault::ClockRate {
                variant,
                hosts,
                rate,
                cut,
            } => {
                let kind = if *variant == "beyond" {
                    "clock-rate-beyond"
                } else {
                    "clock-rate"
                };
                json!({"kind": kind, "variant": variant, "targets": hosts, "rate": rate,
                       "cut": cut.as_ref().map(|(h, _)| h)})
            }
            Fault::PausedAgent { host, .. } => {
                json!({"kind": "paused-agent", "variant": "paused-agent", "targets": [format!("{host}/agent")]})
            }
            Fault::Policy {
                variant,
                steps,
                cut,
            } => {
                let kind = match *variant {
                    "lease-lowered" | "readd" => *variant,
                    _ => "policy",
                };
                let steps: Vec<serde_json::Value> = steps
                    .iter()
                    .map(|(after, p)| {
                        json!({"after_ms": after.as_millis() as u64, "present": p.present,
                               "candidates": p.candidates, "mode": p.mode, "lease_ms": p.lease_ms,
                               "clock_drift_percent": p.clock_drift_percent,
                               "lease_margin_ms": p.lease_margin_ms})
                    })
                    .collect();
                json!({"kind": kind, "variant": variant, "steps": steps, "cut": cut.is_some()})
            }
        }
    }
}

fn names(hosts: &[Host]) -> Vec<String> {
    hosts.iter().map(|h| h.name.clone()).collect()
}

/// Plans one fault of `kind` against the current system.
async fn plan(kind: &str, rng: &mut Rng, ctx: &Ctx) -> Fault {
    let w = ctx.witnesses();
    let n = w.len();
    let minority = (n - 1) / 2;
    match kind {
        "partition" => {
            let variant = *rng.pick(&[
                "isolate-one",
                "isolate-leader",
                "halves",
                "ring",
                "region-cut",
                "one-way",
                "db-cut",
            ]);
            match variant {
                "isolate-one" | "isolate-leader" => {
                    let leader = if variant == "isolate-leader" {
                        ctx.leader().await
                    } else {
                        None
                    };
                    let x = leader
                        .and_then(|l| ctx.host(&l))
                        .unwrap_or_else(|| rng.pick(&w).clone());
                    let rest = all_but(ctx, &x);
                    Fault::Partition {
                        variant,
                        drops: partition::cut(std::slice::from_ref(&x), &rest),
                        targets: vec![x.name.clone()],
                    }
                }
                "halves" => {
                    let shuffled = rng.sample(&w, n);
                    let (small, big) = shuffled.split_at(minority.max(1));
                    Fault::Partition {
                        variant,
                        drops: partition::cut(small, big),
                        targets: names(small),
                    }
                }
                "ring" => Fault::Partition {
                    variant,
                    drops: partition::ring(&w),
                    targets: names(&w),
                },
                "region-cut" => {
                    let side = |site: &str| -> Vec<Host> {
                        ctx.hosts
                            .iter()
                            .filter(|h| h.site == site)
                            .cloned()
                            .collect()
                    };
                    let (a, b) = (side("region-a"), side("region-b"));
                    Fault::Partition {
                        variant,
                        drops: partition::cut(&a, &b),
                        targets: names(&a),
                    }
                }
                "one-way" => {
                    let x = rng.pick(&w).clone();
                    Fault::Partition {
                        variant,
                        drops: partition::one_way(&x, &ctx.hosts),
                        targets: vec![x.name.clone()],
                    }
                }
                _ => db_cut(ctx, "db-cut").await,
            }
        }
        "split-brain" => db_cut(ctx, "split-brain").await,
        "leader-hook" => {
            let db = active_db(ctx).await;
            Fault::LeaderHook {
                cut: partition::cut(std::slice::from_ref(&db), &ctx.witnesses()),
                targets: vec![db.name.clone()],
            }
        }
        "clock-rate" | "clock-rate-beyond" => {
            let monotonic: Vec<String> =
                ctx.cluster().opts.monotonic_hosts.iter().cloned().collect();
            if kind == "clock-rate" {
                let k = rng.range(1, monotonic.len().max(1) as u64) as usize;
                Fault::ClockRate {
                    variant: "within",
                    hosts: rng.sample(&monotonic, k),
                    rate: rng.pick(clock::RATES_WITHIN).parse().unwrap_or(1.0),
                    cut: None,
                }
            } else {
                // The active region's agent, whose lease then lasts five times longer in
                // real time than the leader's wait allows for.
                let db = active_db(ctx).await;
                Fault::ClockRate {
                    variant: "beyond",
                    hosts: vec![db.name.clone()],
                    rate: clock::RATE_BEYOND.parse().unwrap_or(1.0),
                    cut: Some((
                        db.name.clone(),
                        partition::cut(std::slice::from_ref(&db), &ctx.witnesses()),
                    )),
                }
            }
        }
        "paused-agent" => {
            let db = active_db(ctx).await;
            Fault::PausedAgent {
                host: db.name.clone(),
                cut: partition::cut(std::slice::from_ref(&db), &ctx.witnesses()),
            }
        }
        "loss" => {
            let k = rng.range(1, n as u64) as usize;
            Fault::Loss {
                hosts: rng.sample(&w, k),
                probability: rng.range(10, 40) as f64 / 100.0,
            }
        }
        "kill" => {
            let variant = *rng.pick(&["minority", "leader", "all"]);
            let hosts = match variant {
                "leader" => match ctx.leader().await {
                    Some(l) => vec![l],
                    None => names(&rng.sample(&w, 1)),
                },
                "all" => names(&w),
                _ => {
                    let k = rng.range(1, minority as u64) as usize;
                    names(&rng.sample(&w, k))
                }
            };
            Fault::Kill { variant, hosts }
        }
        "pause" => {
            let variant = *rng.pick(&["leader", "witness", "agent"]);
            let procs = match variant {
                "leader" => vec![(
                    ctx.leader()
                        .await
                        .unwrap_or_else(|| rng.pick(&w).name.clone()),
                    false,
                )],
                "witness" => vec![(rng.pick(&w).name.clone(), false)],
                _ => vec![(active_db(ctx).await.name, true)],
            };
            Fault::Pause { variant, procs }
        }
        "clock" => {
            let mut candidates = names(&w);
            candidates.extend(names(&ctx.dbs()));
            // The wall clock's jumps would jump a faked monotonic clock too.
            let monotonic = ctx.cluster().opts.monotonic_hosts.clone();
            candidates.retain(|h| !monotonic.contains(h));
            let k = rng.range(1, candidates.len() as u64) as usize;
            let hosts = rng.sample(&candidates, k);
            let (variant, spec) = if rng.chance(0.5) {
                let s = rng.range(5, 600) as i64 * if rng.chance(0.5) { 1 } else { -1 };
                ("jump", clock::control_line(s as f64, 1.0))
            } else {
                let rate = *rng.pick(&[0.5, 0.9, 1.1, 2.0, 5.0]);
                ("rate", clock::control_line(0.0, rate))
            };
            Fault::Clock {
                variant,
                hosts,
                spec,
            }
        }
        "delay" => {
            let k = rng.range(1, n as u64) as usize;
            Fault::Delay {
                hosts: names(&rng.sample(&w, k)),
                ms: rng.range(20, 400),
            }
        }
        "policy" => plan_policy(rng, ctx),
        "lease-lowered" => {
            // Renewals under a long lease first; then the group frozen (no failover may
            // start, renewals still answered) and the active region's database host cut off,
            // so its agent keeps the long lease it was last granted; then the lease lowered
            // with drift and margin 0 and the mode back to auto: the cluster fails over under
            // the short lease while that agent still holds the long one. Freezing before the
            // cut takes the race out: no renewal can fall between the lowering and the cut,
            // and no failover can start before the lowering.
            let base = PolicySpec::base(&ctx.cluster().opts);
            let high = PolicySpec {
                lease_ms: base.lease_ms * 3,
                ..base.clone()
            };
            let frozen = PolicySpec {
                mode: "frozen",
                ..high.clone()
            };
            let low = PolicySpec {
                lease_ms: 1_000,
                clock_drift_percent: 0,
                lease_margin_ms: 0,
                ..base
            };
            let renewed = Duration::from_millis(high.lease_ms);
            let cut = db_cut_drops(ctx).await;
            Fault::Policy {
                variant: "lease-lowered",
                steps: vec![
                    (Duration::ZERO, high),
                    (renewed, frozen),
                    (Duration::ZERO, low),
                ],
                cut: Some(cut),
            }
        }
        "readd" => {
            // The active region's database host cut off (its agent keeps its lease), the
            // group removed, and added back at once with the other region first.
            let base = PolicySpec::base(&ctx.cluster().opts);
            let flipped = flip(&base);
            let removed = PolicySpec {
                present: false,
                ..base
            };
            let cut = db_cut_drops(ctx).await;
            Fault::Policy {
                variant: "readd",
                steps: vec![
                    (Duration::ZERO, removed),
                    (Duration::from_millis(100), flipped),
                ],
                cut: Some(cut),
            }
        }
        _ => Fault::Health {
            host: active_db(ctx).await.name,
        },
    }
}

/// The group's candidates in the other order.
fn flip(p: &PolicySpec) -> PolicySpec {
    PolicySpec {
        candidates: [p.candidates[1], p.candidates[0]],
        ..p.clone()
    }
}

/// One policy change an operator might make, applied during whatever else happens: the
/// lease lowered or raised, drift and margin lowered, the candidates reordered, the mode
/// changed, the group removed and added back (with the other region first).
fn plan_policy(rng: &mut Rng, ctx: &Ctx) -> Fault {
    let base = PolicySpec::base(&ctx.cluster().opts);
    let variant = *rng.pick(&[
        "lease-down",
        "lease-up",
        "margins-down",
        "reorder",
        "manual",
        "frozen",
        "remove-readd",
    ]);
    let one = |p: PolicySpec| vec![(Duration::ZERO, p)];
    let steps = match variant {
        "lease-down" => one(PolicySpec {
            lease_ms: (base.lease_ms / 2).max(1_000),
            ..base.clone()
        }),
        "lease-up" => one(PolicySpec {
            lease_ms: base.lease_ms * 3,
            ..base.clone()
        }),
        "margins-down" => one(PolicySpec {
            clock_drift_percent: 0,
            lease_margin_ms: 0,
            ..base.clone()
        }),
        "reorder" => one(flip(&base)),
        "manual" => one(PolicySpec {
            mode: "manual",
            ..base.clone()
        }),
        "frozen" => one(PolicySpec {
            mode: "frozen",
            ..base.clone()
        }),
        _ => vec![
            (
                Duration::ZERO,
                PolicySpec {
                    present: false,
                    ..base.clone()
                },
            ),
            (Duration::from_millis(rng.range(100, 2_000)), flip(&base)),
        ],
    };
    Fault::Policy {
        variant,
        steps,
        cut: None,
    }
}

/// The database host of the active region (region-a when nobody answers).
async fn active_db(ctx: &Ctx) -> Host {
    let region = ctx
        .active_region()
        .await
        .map(|(r, _)| r)
        .unwrap_or_else(|| "region-a".into());
    ctx.dbs()
        .into_iter()
        .find(|h| {
            h.role
                == Role::Database {
                    region: region.clone(),
                }
        })
        .unwrap_or_else(|| ctx.dbs()[0].clone())
}

/// Every host of the run but `host`.
fn all_but(ctx: &Ctx, host: &Host) -> Vec<Host> {
    ctx.hosts
        .iter()
        .filter(|h| h.name != host.name)
        .cloned()
        .collect()
}

/// The active region's database host cut from every witness: its agent cannot renew and
/// every probe of the region fails, so the cluster fails over while the agent may still
/// hold its lease.
async fn db_cut(ctx: &Ctx, variant: &'static str) -> Fault {
    let db = active_db(ctx).await;
    Fault::Partition {
        variant,
        drops: partition::cut(std::slice::from_ref(&db), &ctx.witnesses()),
        targets: vec![db.name.clone()],
    }
}

/// The drops of [`db_cut`], for faults that cut the active database host as one part.
async fn db_cut_drops(ctx: &Ctx) -> Vec<partition::Drop> {
    let db = active_db(ctx).await;
    partition::cut(std::slice::from_ref(&db), &ctx.witnesses())
}

fn install(fault: &Fault, ctx: &Ctx) -> anyhow::Result<()> {
    let dir = ctx.cluster().dir.clone();
    match fault {
        Fault::Partition { drops, .. } => partition::install(drops),
        Fault::LeaderHook { cut, .. } => partition::install(cut),
        Fault::ClockRate {
            hosts, rate, cut, ..
        } => {
            // The rates only: a cut comes later (`run`), once the agent holds a lease
            // granted under its new rate.
            let _ = cut;
            let mut c = ctx.cluster();
            for h in hosts {
                c.set_monotonic_rate(h, *rate)?;
            }
            Ok(())
        }
        Fault::PausedAgent { host, cut } => {
            {
                let mut c = ctx.cluster();
                match c.agents.get_mut(host) {
                    Some(p) => {
                        if !p.running() {
                            anyhow::bail!("{host}'s agent is not running");
                        }
                        p.pause()
                    }
                    None => anyhow::bail!("{host}'s agent is not running"),
                }
            }
            partition::install(cut)
        }
        Fault::Loss { hosts, probability } => {
            for h in hosts {
                partition::loss(h, *probability)?;
            }
            Ok(())
        }
        Fault::Kill { hosts, .. } => {
            let mut c = ctx.cluster();
            for h in hosts {
                if let Some(p) = c.witnesses.get_mut(h) {
                    p.kill9();
                }
            }
            Ok(())
        }
        Fault::Pause { procs, .. } => {
            let mut c = ctx.cluster();
            for (h, agent) in procs {
                let set = if *agent {
                    &mut c.agents
                } else {
                    &mut c.witnesses
                };
                match set.get_mut(h) {
                    Some(p) => {
                        if !p.running() {
                            anyhow::bail!("{h} is not running");
                        }
                        p.pause()
                    }
                    None => anyhow::bail!("{h} is not running"),
                }
            }
            Ok(())
        }
        Fault::Clock { hosts, spec, .. } => {
            for h in hosts {
                std::fs::write(
                    dir.join("nodes").join(h).join("faketime"),
                    format!("{spec}\n"),
                )?;
            }
            Ok(())
        }
        Fault::Delay { hosts, ms } => {
            for h in hosts {
                std::fs::write(
                    dir.join("nodes").join(h).join("delay_ms"),
                    format!("{ms}\n"),
                )?;
            }
            Ok(())
        }
        Fault::Health { host } => {
            let mut c = ctx.cluster();
            match c.health.get_mut(host) {
                Some(p) => {
                    p.kill9();
                    Ok(())
                }
                None => anyhow::bail!("no health endpoint on {host}"),
            }
        }
        // The cut only: the policies are applied by `apply_policies`, which talks to the
        // cluster.
        Fault::Policy { cut, .. } => match cut {
            Some(drops) => partition::install(drops),
            None => Ok(()),
        },
    }
}

/// Attempts to put the run's own policy back at a heal.
const POLICY_HEAL_ATTEMPTS: usize = 5;
/// How long a policy apply may take (an election may be under way).
const POLICY_APPLY: Duration = Duration::from_secs(15);

/// Applies `spec` through the CLI from a witness host; the CLI's error when it fails.
pub async fn apply_policy(ctx: &Ctx, spec: &PolicySpec, file: &str) -> anyhow::Result<()> {
    let (path, host) = {
        let c = ctx.cluster();
        let path = c.dir.join(file);
        std::fs::write(&path, c.policy.render(spec))?;
        (path, c.witness_hosts()[0].clone())
    };
    let args = vec![
        "policy".to_string(),
        "apply".into(),
        path.display().to_string(),
    ];
    let out = ctx.cli.run(&host, &args, POLICY_APPLY).await;
    if out.code == Some(0) {
        Ok(())
    } else {
        anyhow::bail!("policy apply: {}", out.error_text())
    }
}

/// Policy steps of a policy fault, in order, each after its pause; `first` numbers the
/// first one's file.
async fn apply_policies(
    ctx: &Ctx,
    steps: &[(Duration, PolicySpec)],
    first: usize,
) -> anyhow::Result<()> {
    for (i, (after, spec)) in steps.iter().enumerate() {
        tokio::time::sleep(*after).await;
        apply_policy(ctx, spec, &format!("policy-nemesis-{}.toml", first + i)).await?;
    }
    Ok(())
}

/// Heals everything any fault could have done: rules flushed, clocks and delays reset,
/// paused processes continued, killed witnesses and stopped endpoints started again.
pub fn heal_all(ctx: &Ctx) -> anyhow::Result<()> {
    let mut first_error = partition::heal(&ctx.hosts).err();
    let mut guard = ctx.cluster();
    let c = &mut *guard;
    let dir = c.dir.clone();
    for h in &ctx.hosts {
        let nd = dir.join("nodes").join(&h.name);
        // A monotonic clock is set back to x1 without a jump: it keeps what it drifted.
        if c.opts.monotonic_hosts.contains(&h.name) {
            let drifting = c.clock_specs.get(&h.name).is_some_and(|s| s.rate != 1.0);
            if drifting {
                if let Err(e) = c.set_monotonic_rate(&h.name, 1.0) {
                    first_error.get_or_insert(e);
                }
            }
        } else {
            let _ = std::fs::write(
                nd.join("faketime"),
                format!("{}\n", clock::control_line(0.0, 1.0)),
            );
        }
        let _ = std::fs::write(nd.join("delay_ms"), "0\n");
    }
    for set in [&mut c.witnesses, &mut c.agents] {
        for p in set.values_mut() {
            if p.paused {
                p.resume();
            }
        }
    }
    for set in [
        &mut c.proxies,
        &mut c.hook_servers,
        &mut c.health,
        &mut c.witnesses,
    ] {
        for p in set.values_mut() {
            if let Err(e) = p.start() {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Settings of the schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kinds: Vec<String>,
    pub seed: u64,
    /// How long each fault stays installed.
    pub hold: (Duration, Duration),
    /// Quiet time between faults.
    pub quiet: (Duration, Duration),
}

/// Runs faults until `until`, then heals everything (the `heal` of `all`). Returns how many
/// faults were installed.
pub async fn run(ctx: Ctx, schedule: Schedule, until: Instant) -> u64 {
    let mut rng = Rng::new(schedule.seed ^ 0x006E_656D_6573_6973);
    let mut installed = 0;
    let ms = |r: &mut Rng, (lo, hi): (Duration, Duration)| {
        Duration::from_millis(r.range(lo.as_millis() as u64, hi.as_millis() as u64))
    };
    // Let the system settle before the first fault. Bounded by the time limit.
    let first = ms(&mut rng, schedule.quiet);
    sleep_until_or(first, until).await;
    // Kinds come round-robin in a seeded order, so a short run still has every kind.
    let order = rng.sample(&schedule.kinds, schedule.kinds.len());
    let mut turn = 0;
    // A fault starts only if it can be held for its minimum before the time limit.
    while !order.is_empty() && Instant::now() + schedule.hold.0 <= until {
        let kind = order[turn % order.len()].clone();
        turn += 1;
        let fault = plan(&kind, &mut rng, &ctx).await;
        // Planning asks the cluster (leader, active region) and may take seconds.
        if Instant::now() + schedule.hold.0 > until {
            break;
        }
        let value = fault.describe();
        ctx.rec.invoke(fault.f(), value.clone(), PROCESS, None);
        // What a verified fault showed (the clock probes), recorded with it.
        let mut verified = None;
        let result = match &fault {
            // A lowered lease: every step but the last (the lowering) before the cut, the
            // last after it. A re-added group needs its agent cut off first.
            // The cut is of the region active now: during the renewals under the long lease
            // the group may have failed back from the one active when the fault was planned.
            Fault::Policy {
                variant: "lease-lowered",
                steps,
                ..
            } => {
                let (before, after) = steps.split_at(steps.len().saturating_sub(1));
                match apply_policies(&ctx, before, 0).await {
                    Ok(()) => {
                        let now = Fault::Policy {
                            variant: "lease-lowered",
                            steps: steps.clone(),
                            cut: Some(db_cut_drops(&ctx).await),
                        };
                        match install_blocking(&ctx, &now).await {
                            Ok(()) => apply_policies(&ctx, after, before.len()).await,
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Fault::Policy { steps, .. } => match install_blocking(&ctx, &fault).await {
                Ok(()) => apply_policies(&ctx, steps, 0).await,
                Err(e) => Err(e),
            },
            // A clock fault counts once a faked process shows it, not once its file is written.
            Fault::Clock { hosts, spec, .. } => match install_blocking(&ctx, &fault).await {
                Ok(()) => verify_clock(&ctx, hosts, spec)
                    .await
                    .map(|v| verified = Some(v)),
                Err(e) => Err(e),
            },
            // The leader is cut off once it is seen calling a promote hook.
            Fault::LeaderHook { .. } => match install_blocking(&ctx, &fault).await {
                Ok(()) => isolate_hook_caller(&ctx, "promote", until)
                    .await
                    .map(|v| verified = Some(v)),
                Err(e) => Err(e),
            },
            // Counts once every faked process shows the rate; beyond the bound, held until
            // the other region's database opens.
            Fault::ClockRate {
                hosts, rate, cut, ..
            } => match install_blocking(&ctx, &fault).await {
                Ok(()) => match verify_monotonic(&ctx, hosts, *rate).await {
                    Ok(v) => {
                        verified = Some(v);
                        match cut {
                            Some((db, drops)) => {
                                sleep_until_or(CLOCK_RATE_SETTLE, until).await;
                                let drops = drops.clone();
                                let cut =
                                    tokio::task::spawn_blocking(move || partition::install(&drops))
                                        .await
                                        .unwrap_or_else(|e| {
                                            Err(anyhow::anyhow!("install panicked: {e}"))
                                        });
                                match cut {
                                    Ok(()) => other_database_opens(&ctx, db, until).await.map(
                                        |opened| {
                                            if let Some(v) = verified.as_mut() {
                                                *v = json!({"clocks": v.clone(), "failover": opened});
                                            }
                                        },
                                    ),
                                    Err(e) => Err(e),
                                }
                            }
                            None => Ok(()),
                        }
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            // Held until the other region's database opens: the failover happened.
            Fault::PausedAgent { host, .. } => match install_blocking(&ctx, &fault).await {
                Ok(()) => other_database_opens(&ctx, host, until)
                    .await
                    .map(|v| verified = Some(v)),
                Err(e) => Err(e),
            },
            _ => install_blocking(&ctx, &fault).await,
        };
        let mut done = value.clone();
        match result {
            Ok(()) => {
                installed += 1;
                done["installed"] = json!(true);
                if let Some(v) = verified {
                    done["verified"] = v;
                }
                ctx.rec
                    .complete(OpType::Ok, fault.f(), done, PROCESS, None, None);
            }
            Err(e) => {
                done["installed"] = json!(false);
                ctx.rec.complete(
                    OpType::Info,
                    fault.f(),
                    done,
                    PROCESS,
                    None,
                    Some(format!("{e:#}")),
                );
            }
        }
        eprintln!(
            "jepsen: [{:>6.1}s] nemesis {} {} (ops so far: {})",
            ctx.rec.now_ns() as f64 / 1e9,
            fault.f(),
            value,
            ctx.rec.count()
        );
        let hold = ms(&mut rng, schedule.hold);
        sleep_until_or(hold, until).await;
        heal(&ctx, value).await;
        let quiet = ms(&mut rng, schedule.quiet);
        sleep_until_or(quiet, until).await;
    }
    installed
}

/// Waits (at most [`LEADER_HOOK_WAIT`], never past `until`) for a witness to start a hook
/// call for `step`, as its hook log shows, then cuts that witness from every other host and
/// keeps it cut for at least the hooks' sleep (so the call it is in ends while it is cut
/// off, whatever the hold). What it did (`{isolated, term, operation, hook}`) is recorded
/// as the fault's `verified`.
async fn isolate_hook_caller(
    ctx: &Ctx,
    step: &str,
    until: Instant,
) -> anyhow::Result<serde_json::Value> {
    let since = crate::hook_log::monotonic_ns();
    let sleep = Duration::from_millis(ctx.cluster().opts.hook_sleep_ms);
    let logs: Vec<(Host, std::path::PathBuf)> = {
        let c = ctx.cluster();
        c.witness_hosts()
            .into_iter()
            .map(|h| {
                let log = c.node_dir(&h.name).join(crate::hook_log::LOG_FILE);
                (h, log)
            })
            .collect()
    };
    let deadline = (Instant::now() + LEADER_HOOK_WAIT).min(until);
    while Instant::now() < deadline {
        for (host, log) in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let call = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["step"] == step && v["mono_ns"].as_u64().is_some_and(|t| t >= since));
            if let Some(call) = call {
                let rest = all_but(ctx, host);
                let drops = partition::cut(std::slice::from_ref(host), &rest);
                tokio::task::spawn_blocking(move || partition::install(&drops))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("install panicked: {e}")))?;
                sleep_until_or(sleep, until).await;
                return Ok(json!({"isolated": host.name, "term": call["term"],
                    "operation": call["operation"], "hook": call["hook"]}));
            }
        }
        tokio::time::sleep(LEADER_HOOK_POLL).await;
    }
    anyhow::bail!(
        "no {step} hook was called within {} s or before the time limit",
        LEADER_HOOK_WAIT.as_secs()
    )
}

/// Waits (at most [`PAUSED_AGENT_WAIT`], never past `until`) for a database other than
/// `paused`'s to open at a newer epoch than `paused`'s, and records what each was then
/// (`{opened, epoch, paused, paused_state}`): `paused_state` `open` means the paused
/// agent's database still accepts writes while the other one does.
async fn other_database_opens(
    ctx: &Ctx,
    paused: &str,
    until: Instant,
) -> anyhow::Result<serde_json::Value> {
    let dbs: Vec<(String, crate::database::Database)> = {
        let c = ctx.cluster();
        c.db_hosts()
            .into_iter()
            .map(|h| {
                let db = crate::database::Database::in_dir(&c.node_dir(&h.name));
                (h.name, db)
            })
            .collect()
    };
    let epoch_of = |name: &str| {
        dbs.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, db)| db.state().ok())
    };
    let before = epoch_of(paused).map(|s| s.epoch()).unwrap_or(0);
    let deadline = (Instant::now() + PAUSED_AGENT_WAIT).min(until);
    while Instant::now() < deadline {
        for (name, db) in dbs.iter().filter(|(n, _)| n != paused) {
            if let Some(epoch) = db.accepts().filter(|e| *e > before) {
                let state = epoch_of(paused);
                return Ok(json!({"opened": name, "epoch": epoch, "paused": paused,
                    "paused_state": match state { Some(s) if s.is_open() => "open", Some(_) => "closed", None => "unreadable" }}));
            }
        }
        tokio::time::sleep(LEADER_HOOK_POLL).await;
    }
    anyhow::bail!(
        "no other database opened within {} s or before the time limit",
        PAUSED_AGENT_WAIT.as_secs()
    )
}

/// Probes every host's monotonic clock at once (`clock-rate`): the rate each showed
/// (`[{host, rate, spec}]`), or the first host whose faked process does not show `rate`.
async fn verify_monotonic(
    ctx: &Ctx,
    hosts: &[String],
    rate: f64,
) -> anyhow::Result<serde_json::Value> {
    let probes: Vec<_> = {
        let c = ctx.cluster();
        hosts
            .iter()
            .map(|h| {
                let spec = c.clock_specs.get(h).copied();
                (h.clone(), c.host(h).ns(), c.clock_env(h), spec)
            })
            .collect()
    };
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|(h, ns, env, spec)| {
            tokio::spawn(async move {
                let seen = clock::probe_monotonic(&ns, &env, rate)
                    .await
                    .with_context(|| format!("monotonic clock of {h}"))?;
                anyhow::Ok(json!({
                    "host": h,
                    "rate": (seen * 1000.0).round() / 1000.0,
                    "offset_s": spec.map(|s| (s.offset_s * 1000.0).round() / 1000.0),
                }))
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(
            t.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("clock probe panicked: {e}")))?,
        );
    }
    if seen.is_empty() {
        anyhow::bail!("no host's monotonic clock is faked in this run");
    }
    Ok(json!(seen))
}

/// Probes every faulted host's clock at once (`clock`): what each showed (`[{host,
/// offset_s, rate}]`, recorded as the fault's `verified`), or the first host whose faked
/// process does not show the fault as the error.
async fn verify_clock(
    ctx: &Ctx,
    hosts: &[String],
    spec: &str,
) -> anyhow::Result<serde_json::Value> {
    let want = clock::expected(spec)?;
    let probes: Vec<_> = {
        let c = ctx.cluster();
        hosts
            .iter()
            .map(|h| (h.clone(), c.host(h).ns(), c.clock_env(h)))
            .collect()
    };
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|(h, ns, env)| {
            tokio::spawn(async move {
                let p = clock::probe(&ns, &env)
                    .await
                    .with_context(|| format!("clock of {h}"))?;
                let seen =
                    clock::judge(want, p).map_err(|e| anyhow::anyhow!("clock of {h}: {e}"))?;
                anyhow::Ok(json!({
                    "host": h,
                    "offset_s": (seen.offset_s * 1000.0).round() / 1000.0,
                    "rate": (seen.rate * 1000.0).round() / 1000.0,
                }))
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(
            t.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("clock probe panicked: {e}")))?,
        );
    }
    Ok(json!(seen))
}

async fn install_blocking(ctx: &Ctx, fault: &Fault) -> anyhow::Result<()> {
    let ctx = ctx.clone();
    let fault = fault.clone();
    tokio::task::spawn_blocking(move || install(&fault, &ctx))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("install panicked: {e}")))
}

/// Heals everything and records it as a `heal` of `fault`.
pub async fn heal(ctx: &Ctx, fault: serde_json::Value) {
    ctx.rec.invoke(
        "heal",
        json!({"kind": "heal", "heals": fault}),
        PROCESS,
        None,
    );
    let c = ctx.clone();
    let mut result = tokio::task::spawn_blocking(move || heal_all(&c))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("heal panicked: {e}")));
    // Every policy the run may have changed returns to the run's own (a group removed is
    // added back, a lowered lease raised again).
    let policy_faults = ["policy", "lease-lowered", "readd", "all"];
    if policy_faults.contains(&fault["kind"].as_str().unwrap_or("")) {
        let base = PolicySpec::base(&ctx.cluster().opts);
        let mut last = Ok(());
        // Bounded: an election may be under way right after the other heals.
        for _ in 0..POLICY_HEAL_ATTEMPTS {
            last = apply_policy(ctx, &base, "policy-healed.toml").await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Err(e) = last {
            result = result.and(Err(e));
        }
    }
    let (kind, error) = match result {
        Ok(()) => (OpType::Ok, None),
        Err(e) => (OpType::Info, Some(format!("{e:#}"))),
    };
    ctx.rec.complete(
        kind,
        "heal",
        json!({"kind": "heal", "heals": fault, "installed": error.is_none()}),
        PROCESS,
        None,
        error,
    );
}

async fn sleep_until_or(d: Duration, until: Instant) {
    let end = (Instant::now() + d).min(until);
    tokio::time::sleep_until(end.into()).await;
}
