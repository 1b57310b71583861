//! One test run from start to verdict: build the arbiter binary, create the hosts, start
//! and initialise the cluster, run the workloads against the nemesis schedule for the time
//! limit, heal, let the system recover, record the `final` operation, tear everything down,
//! and judge the stored history.
//!
//! Teardown happens on every path out (success, error, Ctrl-C, panic): processes are
//! killed by pid and the namespaces and bridge removed by name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::cluster::{client_addr, Cluster, SystemOpts};
use crate::ctx::Ctx;
use crate::history::OpType;
use crate::hosts;
use crate::recorder::Recorder;
use crate::spec::{TestSpec, GROUP};

/// Bound on waiting for every witness to answer after start.
const STARTUP: Duration = Duration::from_secs(60);
/// Bound on waiting for the first lease after the policy is applied.
const FIRST_LEASE: Duration = Duration::from_secs(60);
/// Deadline of one setup or final CLI call.
const SETUP_CALL: Duration = Duration::from_secs(10);
/// Bound on waiting for BIND to answer after start.
const BIND_READY: Duration = Duration::from_secs(20);
/// Bound on waiting, after recovery, for every DNS source to answer the committed region
/// (the reconciler repairs BIND every 2 s); what they answer is recorded either way.
const DNS_CONVERGENCE: Duration = Duration::from_secs(20);
/// Bound on waiting, after recovery, for the operations still running to end (done,
/// aborted or halted for an operator): a failback that started just before the final heal
/// may still be in its hooks. What they are is recorded either way, and S6 judges it.
const OPERATIONS_SETTLE: Duration = Duration::from_secs(60);
/// How often the witnesses' hook call logs are copied into the history.
const HOOK_LOG_POLL: Duration = Duration::from_millis(100);
/// How often progress is printed while running.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The database's open and close latency when a run does not say: a fast promotion, and
/// a close well inside the agents' watchdog margin.
pub const DB_LATENCY_MS_DEFAULT: u64 = 100;

/// What a test run is asked to do (the options of `jepsen test`, and of `test.json`).
#[derive(Debug, Clone)]
pub struct TestOpts {
    pub name: String,
    pub workloads: Vec<String>,
    pub nemeses: Vec<String>,
    pub time_limit_s: u64,
    pub seed: u64,
    pub nodes: u64,
    pub recovery_s: u64,
    pub lease_ms: u64,
    pub down_after_ms: u64,
    pub unsafe_skip_lease_wait: bool,
    /// Closed safety holes to open again (a build with the `unsafe-holes` feature).
    pub unsafe_holes: Vec<String>,
    /// Every promote hook sleeps this long.
    pub hook_sleep_ms: u64,
    /// The fence hook fences and confirms a hard fence; the group ends the wait on it.
    pub hard_fence: bool,
    /// Every agent arms a watchdog (`--no-watchdog` turns it off).
    pub watchdog: bool,
    /// The database's open and close latency (the agent's on-gain and on-lose).
    pub db_latency_ms: u64,
    /// Use this arbiter binary instead of building one.
    pub arbiter_bin: Option<PathBuf>,
}

impl TestOpts {
    /// The `test.json` of this run: the fields the checkers read, plus the runner's own.
    pub fn spec(&self) -> TestSpec {
        let mut s = TestSpec::new(&self.name);
        s.workload = self.workloads.join(",");
        s.nemeses = self.nemeses.clone();
        s.time_limit_s = self.time_limit_s;
        s.seed = self.seed;
        s.nodes = self.nodes as u32;
        s.regions = vec!["region-a".into(), "region-b".into()];
        s.groups = vec![GROUP.into()];
        s.git_commit = crate::store::git_commit();
        s.recovery_s = self.recovery_s;
        s.extra.insert("lease_ms".into(), json!(self.lease_ms));
        s.extra
            .insert("down_after_ms".into(), json!(self.down_after_ms));
        s.extra.insert(
            "unsafe_skip_lease_wait".into(),
            json!(self.unsafe_skip_lease_wait),
        );
        s.extra
            .insert("unsafe_holes".into(), json!(self.unsafe_holes));
        s.extra
            .insert("hook_sleep_ms".into(), json!(self.hook_sleep_ms));
        s.extra.insert("hard_fence".into(), json!(self.hard_fence));
        s.extra.insert("watchdog".into(), json!(self.watchdog));
        s.extra
            .insert("db_latency_ms".into(), json!(self.db_latency_ms));
        s
    }

    /// Options back from a stored `test.json` (for `--reproduce`).
    pub fn from_spec(s: &TestSpec) -> anyhow::Result<TestOpts> {
        let extra_u64 =
            |k: &str, default: u64| s.extra.get(k).and_then(|v| v.as_u64()).unwrap_or(default);
        Ok(TestOpts {
            name: s.name.clone(),
            workloads: crate::workload::parse(
                &s.workload
                    .split(',')
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )?,
            nemeses: crate::nemesis::parse_kinds(&s.nemeses)?,
            time_limit_s: s.time_limit_s,
            seed: s.seed,
            nodes: u64::from(s.nodes),
            recovery_s: s.recovery_s,
            lease_ms: extra_u64("lease_ms", 2_000),
            down_after_ms: extra_u64("down_after_ms", 1_000),
            unsafe_skip_lease_wait: s
                .extra
                .get("unsafe_skip_lease_wait")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            unsafe_holes: s
                .extra
                .get("unsafe_holes")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            hook_sleep_ms: extra_u64("hook_sleep_ms", 0),
            hard_fence: s
                .extra
                .get("hard_fence")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            watchdog: s
                .extra
                .get("watchdog")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            db_latency_ms: extra_u64("db_latency_ms", DB_LATENCY_MS_DEFAULT),
            arbiter_bin: None,
        })
    }
}

/// Builds the arbiter binary (with the unsafe feature when asked) and copies it into the
/// run directory, so a rebuild during the run cannot change what runs.
fn arbiter_binary(opts: &TestOpts, dir: &Path) -> anyhow::Result<PathBuf> {
    let built = match &opts.arbiter_bin {
        Some(p) => p.clone(),
        None => {
            let mut cmd =
                std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
            cmd.current_dir(crate::store::workspace()).args([
                "build",
                "-p",
                "arbiter",
                "--bin",
                "arbiter",
                "--message-format=json-render-diagnostics",
            ]);
            // Variables `cargo run` set for this crate would make every build script that
            // watches them (ring's watches CARGO_MANIFEST_DIR) run again, and the next plain
            // `cargo build` too: the build must see the environment a shell would.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if [
                    "CARGO_MANIFEST_",
                    "CARGO_PKG_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_PRIMARY_",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .iter()
                .any(|p| k.starts_with(p))
                {
                    cmd.env_remove(k.as_ref());
                }
            }
            let unsafe_build = opts.unsafe_skip_lease_wait || !opts.unsafe_holes.is_empty();
            if unsafe_build {
                // A target dir of its own: the unsafe binary must never replace the normal
                // `target/debug/arbiter` that scripts and other runs use. One build serves
                // every demonstration (the feature only adds switches).
                let target = crate::store::workspace().join("target/unsafe-holes");
                cmd.args(["--features", "unsafe-holes", "--target-dir"])
                    .arg(target);
            }
            eprintln!(
                "jepsen: building arbiter{}",
                if unsafe_build {
                    " (UNSAFE: unsafe-holes)"
                } else {
                    ""
                }
            );
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("cannot run cargo build")?;
            if !out.status.success() {
                bail!("cargo build -p arbiter failed");
            }
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "arbiter")
                .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
                .next_back()
                .context("cargo build printed no arbiter executable")?
        }
    };
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let copy = bin_dir.join("arbiter");
    // A hard link costs nothing and keeps this inode when cargo later replaces the file; a
    // copy where linking is not possible (another file system).
    if std::fs::hard_link(&built, &copy).is_err() {
        std::fs::copy(&built, &copy).with_context(|| format!("copy {}", built.display()))?;
    }
    Ok(copy)
}

/// Removes the hosts on every way out, panics included.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        hosts::teardown();
    }
}

/// Runs a test and returns its run directory (judged or not).
pub async fn run(opts: TestOpts) -> anyhow::Result<PathBuf> {
    if opts.nodes != 3 && opts.nodes != 5 {
        bail!("--nodes: {} witnesses; use 3 or 5", opts.nodes);
    }
    let _lock = hosts::lock()?;
    let dir = crate::store::create_run(&opts.name)?;
    eprintln!("jepsen: run directory {}", dir.display());
    opts.spec().write(&dir.join("test.json"))?;
    let bin = arbiter_binary(&opts, &dir)?;
    let _teardown = Teardown;
    let result = tokio::select! {
        r = run_in(&opts, &dir, &bin) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    hosts::teardown();
    result.map(|()| dir)
}

async fn run_in(opts: &TestOpts, dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let plan = hosts::plan(opts.nodes);
    eprintln!(
        "jepsen: phase setup: {} hosts on bridge {}",
        plan.len(),
        hosts::BRIDGE
    );
    {
        let p = plan.clone();
        tokio::task::spawn_blocking(move || hosts::setup(&p)).await??;
    }
    // The clock nemesis needs libfaketime and its probe; a missing one is a clear error now,
    // not a run whose clock faults silently never happen.
    let libfaketime = if opts.nemeses.iter().any(|n| n.starts_with("clock")) {
        crate::nemesis::clock::check_probe()?;
        Some(crate::nemesis::clock::find_libfaketime()?)
    } else {
        None
    };
    let system = SystemOpts {
        lease_ms: opts.lease_ms,
        down_after_ms: opts.down_after_ms,
        unsafe_skip_lease_wait: opts.unsafe_skip_lease_wait,
        unsafe_holes: opts.unsafe_holes.clone(),
        hook_sleep_ms: opts.hook_sleep_ms,
        hard_fence: opts.hard_fence,
        watchdog: opts.watchdog,
        db_latency_ms: opts.db_latency_ms,
        libfaketime,
        monotonic_hosts: crate::nemesis::clock::monotonic_hosts(&opts.nemeses, &plan),
    };
    let mut cluster = Cluster::prepare(plan.clone(), dir, bin, system)?;
    cluster.start()?;
    let start = Instant::now();
    let rec = Arc::new(Recorder::create(&dir.join("history.jsonl"), start)?);
    let ctx = Ctx {
        cli: cluster.cli(),
        cluster: Arc::new(Mutex::new(cluster)),
        rec,
        hosts: plan,
    };
    // Each database host's watchdog, for as long as its agent may run (aborted at the end).
    let watchdogs: Vec<_> = if opts.watchdog {
        let fallback = Duration::from_millis(opts.lease_ms / 2);
        ctx.dbs()
            .into_iter()
            .map(|db| tokio::spawn(crate::watchdog::monitor(ctx.clone(), db, fallback)))
            .collect()
    } else {
        Vec::new()
    };
    let collector = Arc::new(Mutex::new(crate::hook_log::Collector::default()));
    let collecting = tokio::spawn({
        let (ctx, collector) = (ctx.clone(), collector.clone());
        async move {
            // Bounded by the run: aborted once the run ends.
            loop {
                tokio::time::sleep(HOOK_LOG_POLL).await;
                collector
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .poll(&ctx);
            }
        }
    });
    let result = drive(opts, &ctx).await;
    eprintln!("jepsen: phase teardown");
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || c.cluster().stop_all()).await?;
    collecting.abort();
    for w in watchdogs {
        w.abort();
    }
    // The calls of the last moments, now that no witness runs.
    collector
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .poll(&ctx);
    result
}

async fn drive(opts: &TestOpts, ctx: &Ctx) -> anyhow::Result<()> {
    bring_up(ctx).await?;
    let limit = Duration::from_secs(opts.time_limit_s);
    let recovery = Duration::from_secs(opts.recovery_s);
    let run_until = Instant::now() + limit;
    let reads_until = run_until + recovery;
    eprintln!(
        "jepsen: phase run: {} s, workloads {:?}, nemeses {:?}, seed {}",
        opts.time_limit_s, opts.workloads, opts.nemeses, opts.seed
    );
    let mut tasks = Vec::new();
    let has = |w: &str| opts.workloads.iter().any(|x| x == w);
    if has("writes") {
        for db in ctx.dbs() {
            tasks.push(tokio::spawn({
                let ctx = ctx.clone();
                async move {
                    crate::workload::writer::run(ctx, db, reads_until).await;
                }
            }));
        }
    }
    if has("reads") {
        for (i, h) in ctx.witnesses().into_iter().enumerate() {
            tasks.push(tokio::spawn(crate::workload::reader::run(
                ctx.clone(),
                h,
                opts.seed.wrapping_add(100 + i as u64),
                reads_until,
            )));
        }
    }
    if has("reads") {
        tasks.push(tokio::spawn(crate::workload::dns_reader::run(
            ctx.clone(),
            opts.seed.wrapping_add(200),
            reads_until,
        )));
    }
    if has("operator") {
        tasks.push(tokio::spawn(crate::workload::operator::run(
            ctx.clone(),
            opts.seed.wrapping_add(7),
            run_until,
        )));
        tasks.push(tokio::spawn(crate::workload::step_actions::run(
            ctx.clone(),
            opts.seed.wrapping_add(8),
            run_until,
        )));
    }
    let progress = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            // Bounded by the run: aborted once the run ends.
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                eprintln!(
                    "jepsen: [{:>6.1}s] running: {} history events",
                    ctx.rec.now_ns() as f64 / 1e9,
                    ctx.rec.count()
                );
            }
        }
    });
    let schedule = crate::nemesis::Schedule {
        kinds: opts.nemeses.clone(),
        seed: opts.seed,
        hold: hold_for(opts),
        quiet: (Duration::from_millis(500), Duration::from_secs(2)),
    };
    let installed = crate::nemesis::run(ctx.clone(), schedule, run_until).await;
    eprintln!(
        "jepsen: phase heal: {installed} faults were installed; healing everything, then {} s of recovery",
        opts.recovery_s
    );
    crate::nemesis::heal(ctx, json!({"kind": "all"})).await;
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    final_op(ctx).await;
    eprintln!("jepsen: {} history events recorded", ctx.rec.count());
    Ok(())
}

/// How long each fault stays installed: long enough for a failover to happen under it.
fn hold_for(opts: &TestOpts) -> (Duration, Duration) {
    let min = Duration::from_millis(opts.lease_ms + opts.down_after_ms + 500);
    (min, min * 5 / 4)
}

/// Waits for every witness, initialises the cluster, applies the policy, starts the agents
/// and waits for the first lease.
async fn bring_up(ctx: &Ctx) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    for h in ctx.witnesses() {
        let args: Vec<String> = vec!["status".into(), "--local".into(), "--json".into()];
        loop {
            let out = ctx
                .cli
                .run_servers(&h, &args, &[client_addr(&h)], SETUP_CALL)
                .await;
            if out.code == Some(0) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "witness {} did not answer within {STARTUP:?}: {}",
                    h.name,
                    out.error_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_bind(ctx).await?;
    let first = ctx.witnesses()[0].clone();
    let policy = ctx.cluster().dir.join("policy.toml").display().to_string();
    for (what, args) in [
        ("init", vec!["init".to_string()]),
        (
            "policy apply",
            vec!["policy".into(), "apply".into(), policy],
        ),
    ] {
        // Bounded retries: an election may be under way right after start.
        let mut done = false;
        let mut last = String::new();
        for _ in 0..60 {
            let servers = if what == "init" {
                vec![client_addr(&first)]
            } else {
                ctx.cli.servers.clone()
            };
            let out = ctx
                .cli
                .run_servers(&first, &args, &servers, SETUP_CALL)
                .await;
            if out.code == Some(0) || out.error_kind().as_deref() == Some("already-initialized") {
                done = true;
                break;
            }
            last = out.error_text();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !done {
            bail!("{what} did not succeed: {last}");
        }
        eprintln!("jepsen: {what}: ok");
    }
    {
        let c = ctx.clone();
        tokio::task::spawn_blocking(move || c.cluster().start_agents()).await??;
    }
    let deadline = Instant::now() + FIRST_LEASE;
    loop {
        let held = ctx.dbs().iter().any(|db| {
            let path = ctx.cluster().node_dir(&db.name).join("agent.json");
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["holding"] == true)
        });
        if held {
            eprintln!("jepsen: first lease held");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no agent held the lease within {FIRST_LEASE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until BIND answers for its zone (any answer, NXDOMAIN included: the group's record
/// is published only once the policy is applied).
async fn wait_bind(ctx: &Ctx) -> anyhow::Result<()> {
    let bind = ctx.dns_host().context("the plan has no DNS host")?;
    let deadline = Instant::now() + BIND_READY;
    loop {
        let a = crate::dns::query("bind", &bind.ns(), &bind.ip).await;
        if a.region.is_some()
            || a.error
                .as_deref()
                .is_some_and(|e| e.starts_with("no A records"))
        {
            eprintln!("jepsen: BIND answers on {}", bind.ip);
            return Ok(());
        }
        let running = ctx.cluster().bind.as_mut().is_some_and(|p| p.running());
        if !running || Instant::now() > deadline {
            bail!(
                "BIND did not answer within {BIND_READY:?} ({}); see {}",
                a.error.unwrap_or_default(),
                ctx.cluster()
                    .node_dir(&bind.name)
                    .join("named.log")
                    .display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After recovery, polls every DNS source until all answer the group's committed active
/// region or [`DNS_CONVERGENCE`] passes (the caller records what they answer either way).
async fn wait_dns(ctx: &Ctx) {
    let Some(bind) = ctx.dns_host() else {
        return;
    };
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < DNS_CONVERGENCE {
        let answers = crate::dns::query_all(&ctx.witnesses(), &bind).await;
        last = crate::dns::summary(&answers);
        if let Some((active, _)) = ctx.active_region().await {
            if crate::dns::converged(&answers, &active) {
                eprintln!(
                    "jepsen: DNS answers {active} everywhere after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("jepsen: DNS did not converge within {DNS_CONVERGENCE:?}: {last}");
}

/// After recovery, polls the operations until none is running (or aborting) or
/// [`OPERATIONS_SETTLE`] passes.
async fn wait_operations(ctx: &Ctx) {
    let start = Instant::now();
    let args: Vec<String> = ["operations", "--json", "--limit", "50"]
        .map(String::from)
        .to_vec();
    let mut last = String::from("no answer");
    while start.elapsed() < OPERATIONS_SETTLE {
        let h = ctx.witnesses()[0].clone();
        let out = ctx.cli.run(&h, &args, SETUP_CALL).await;
        match serde_json::from_str::<serde_json::Value>(out.stdout.trim()) {
            Ok(v) if out.code == Some(0) => {
                let busy: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|o| matches!(o["state"].as_str(), Some("running" | "aborting")))
                    .map(|o| format!("{} at {}", o["id"], o["step"].as_str().unwrap_or("?")))
                    .collect();
                if busy.is_empty() {
                    if start.elapsed() > Duration::from_secs(1) {
                        eprintln!(
                            "jepsen: the last running operation ended {:.1} s after recovery",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return;
                }
                last = busy.join(", ");
            }
            _ => last = out.error_text(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("jepsen: operations still running {OPERATIONS_SETTLE:?} after recovery: {last}");
}

/// The `final` operation: status and operations after recovery (once the running ones
/// ended), through the first witness that answers, and what every DNS source answers.
async fn final_op(ctx: &Ctx) {
    const PROCESS: &str = "checker";
    wait_operations(ctx).await;
    wait_dns(ctx).await;
    ctx.rec.invoke("final", json!({}), PROCESS, None);
    let mut last = String::new();
    for h in ctx.witnesses() {
        let status = ctx
            .cli
            .run(
                &h,
                &[
                    "status".into(),
                    "--json".into(),
                    "--audit".into(),
                    "10000".into(),
                ],
                SETUP_CALL,
            )
            .await;
        let operations = ctx
            .cli
            .run(
                &h,
                &[
                    "operations".into(),
                    "--json".into(),
                    "--limit".into(),
                    "1000".into(),
                ],
                SETUP_CALL,
            )
            .await;
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).ok();
        match (
            status.code == Some(0),
            parse(&status.stdout),
            operations.code == Some(0),
            parse(&operations.stdout),
        ) {
            (true, Some(s), true, Some(o)) => {
                let dns: Vec<serde_json::Value> = match ctx.dns_host() {
                    Some(bind) => crate::dns::query_all(&ctx.witnesses(), &bind)
                        .await
                        .iter()
                        .map(crate::dns::Answer::to_json)
                        .collect(),
                    None => Vec::new(),
                };
                ctx.rec.complete(
                    OpType::Ok,
                    "final",
                    json!({"status": s, "operations": o, "dns": dns}),
                    PROCESS,
                    Some(&h.name),
                    None,
                );
                return;
            }
            _ => {
                last = format!(
                    "status: {}; operations: {}",
                    status.error_text(),
                    operations.error_text()
                );
            }
        }
    }
    ctx.rec
        .complete(OpType::Info, "final", json!({}), PROCESS, None, Some(last));
}
