//! `cargo run -p jepsen -- test|analyze ...`: run a test against real arbiter processes in
//! network namespaces, or re-check a stored run. Exit codes: 0 valid, 1 invalid, 2 unknown
//! (or the harness itself failed); with `--expect-invalid CHECKER`, 0 when the run is invalid
//! and that checker says so, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use jepsen::checker::Valid;
use jepsen::runner::TestOpts;

#[derive(Parser, Debug)]
#[command(
    name = "jepsen",
    about = "Fault-injection tests of arbiter: real witnesses in network namespaces, nemeses, a history and checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a test (needs root: it creates network namespaces and firewall rules).
    Test(TestArgs),
    /// Check a stored run again (DIR holds history.jsonl and test.json).
    Analyze {
        dir: PathBuf,
        /// Exit 0 only if the run is invalid and this checker (e.g. S1) says so.
        #[arg(long)]
        expect_invalid: Option<String>,
    },
    /// Judge stored runs again and write the published results (jepsen/RESULTS.md).
    Results {
        /// Run directories, or a test's `latest` link (jepsen/store/<name>/latest).
        dirs: Vec<PathBuf>,
        /// Where to write them.
        #[arg(long, default_value_os_t = jepsen::store::workspace().join("jepsen/RESULTS.md"))]
        out: PathBuf,
    },
    /// The health endpoint of a region (run by the harness inside a database host).
    #[command(hide = true)]
    HealthServer {
        #[arg(long)]
        listen: String,
    },
    /// A hook of the run's policy (run by a witness's leader duties): logs the call, then
    /// sleeps and fences as asked.
    #[command(hide = true)]
    Hook {
        #[arg(long)]
        name: String,
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// REGION=PATH: fence that region's writer through PATH and confirm a hard fence.
        #[arg(long)]
        fence: Vec<String>,
        /// Fail (after logging) while PATH names this call's step: the step actions' halts.
        #[arg(long)]
        fail_file: Option<PathBuf>,
    },
    /// The webhook endpoint of a witness host: logs every hook call it receives.
    #[command(hide = true)]
    HookServer {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// A region's database: open it for the agent's epoch (its on-gain) or close it (its
    /// on-lose), each after the latency.
    #[command(hide = true)]
    Database {
        /// `open` or `close`.
        action: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// The delay proxy in front of a witness (run by the harness inside a witness host).
    #[command(hide = true)]
    Proxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        delay_file: String,
    },
}

#[derive(clap::Args, Debug)]
struct TestArgs {
    /// Workloads: all, or a comma-separated list of writes, operator, reads.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    workload: Vec<String>,
    /// Nemeses: all, none, or a comma-separated list of partition, kill, pause, clock,
    /// clock-rate, loss, delay, health, policy, split-brain, lease-lowered, readd, leader-hook,
    /// paused-agent, clock-rate-beyond.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seconds of workload and faults before the final heal.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of every random choice of the schedule and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Witnesses: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Seconds the system gets after the final heal.
    #[arg(long, default_value_t = 20)]
    recovery: u64,
    /// The group's lease (policy `lease_ms`).
    #[arg(long, default_value_t = 2_000)]
    lease_ms: u64,
    /// The group's `down_after_ms`.
    #[arg(long, default_value_t = 1_000)]
    down_after_ms: u64,
    /// Test name: the store directory jepsen/store/<name>/.
    #[arg(long, default_value = "arbiter")]
    name: String,
    /// UNSAFE: build arbiter with the `unsafe-skip-lease-wait` feature and start every
    /// witness with the flag that skips the fence step's lease wait (a split brain on purpose).
    #[arg(long)]
    unsafe_skip_lease_wait: bool,
    /// UNSAFE: build arbiter with the `unsafe-holes` feature and open these closed safety
    /// holes again in every witness: `wait-current-policy`, `readd-without-wait`,
    /// `no-leader-confirm` (comma-separated), so a checker can be shown to catch each.
    #[arg(long, value_delimiter = ',')]
    unsafe_hole: Vec<String>,
    /// Every promote hook sleeps this long (a slow step a partition can fall into).
    #[arg(long, default_value_t = 0)]
    hook_sleep_ms: u64,
    /// The fence hook fences the old region's writer and confirms a hard fence, and the
    /// group ends the lease wait on it (`fence_ends_lease_wait`).
    #[arg(long)]
    hard_fence: bool,
    /// The agents arm no watchdog: a paused agent's database stays open until its on-lose
    /// runs (the control run of S1 against the `paused-agent` nemesis).
    #[arg(long)]
    no_watchdog: bool,
    /// How long the database takes to open (the agent's on-gain) and to close (on-lose).
    #[arg(long, default_value_t = jepsen::runner::DB_LATENCY_MS_DEFAULT)]
    db_latency_ms: u64,
    /// Exit 0 only if the run is invalid and this checker (e.g. S1) says so.
    #[arg(long)]
    expect_invalid: Option<String>,
    /// Use this arbiter binary instead of building one.
    #[arg(long)]
    arbiter_bin: Option<PathBuf>,
    /// Run again with the options of a stored test.json (other options are ignored).
    #[arg(long)]
    reproduce: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jepsen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<u8> {
    match cmd {
        Cmd::HealthServer { listen } => {
            jepsen::helpers::health_server(&listen)?;
            Ok(0)
        }
        Cmd::Hook {
            name,
            log,
            sleep_ms,
            fence,
            fail_file,
        } => {
            jepsen::hook_log::run_hook(&jepsen::hook_log::HookArgs {
                name,
                log,
                sleep_ms,
                fence,
                fail_file,
            })?;
            Ok(0)
        }
        Cmd::Database {
            action,
            file,
            latency_ms,
        } => {
            jepsen::database::command(&file, &action, latency_ms)?;
            Ok(0)
        }
        Cmd::HookServer { listen, log, name } => {
            jepsen::hook_log::hook_server(&listen, &log, &name)?;
            Ok(0)
        }
        Cmd::Proxy {
            listen,
            to,
            delay_file,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(jepsen::helpers::proxy(&listen, &to, &delay_file))?;
            Ok(0)
        }
        Cmd::Analyze {
            dir,
            expect_invalid,
        } => verdict(&dir, expect_invalid.as_deref()),
        Cmd::Results { dirs, out } => {
            let verdicts = jepsen::published::publish(&dirs, &out)?;
            eprintln!(
                "jepsen: {} run(s) written to {}",
                verdicts.len(),
                out.display()
            );
            Ok(0)
        }
        Cmd::Test(args) => {
            let opts = match &args.reproduce {
                Some(path) => {
                    let mut o = TestOpts::from_spec(&jepsen::spec::TestSpec::read(path)?)?;
                    o.arbiter_bin = args.arbiter_bin.clone();
                    o
                }
                None => TestOpts {
                    name: args.name.clone(),
                    workloads: jepsen::workload::parse(&args.workload)?,
                    nemeses: jepsen::nemesis::parse_kinds(&args.nemesis)?,
                    time_limit_s: args.time_limit,
                    seed: args.seed,
                    nodes: args.nodes,
                    recovery_s: args.recovery,
                    lease_ms: args.lease_ms,
                    down_after_ms: args.down_after_ms,
                    unsafe_skip_lease_wait: args.unsafe_skip_lease_wait,
                    unsafe_holes: args.unsafe_hole.clone(),
                    hook_sleep_ms: args.hook_sleep_ms,
                    hard_fence: args.hard_fence,
                    watchdog: !args.no_watchdog,
                    db_latency_ms: args.db_latency_ms,
                    arbiter_bin: args.arbiter_bin.clone(),
                },
            };
            if unsafe { libc::geteuid() } != 0 {
                anyhow::bail!("jepsen test needs root (network namespaces and iptables)");
            }
            let rt = tokio::runtime::Runtime::new()?;
            let dir = rt.block_on(jepsen::runner::run(opts))?;
            // Child tasks may still hold the runtime; do not wait for them.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            verdict(&dir, args.expect_invalid.as_deref())
        }
    }
}

/// Short names of the safety invariants and the checkers that judge them.
const INVARIANT_CHECKERS: &[(&str, &str)] = &[
    ("S1", jepsen::checker::single_writer::NAME),
    ("S2", jepsen::checker::epochs::NAME),
    ("S3", jepsen::checker::consensus_before_action::NAME),
    ("S4", jepsen::checker::acknowledged::NAME),
    ("S5", jepsen::checker::dns::NAME),
    ("S6", jepsen::checker::operations::NAME),
    ("S7", jepsen::checker::quorum_verdict::NAME),
];

/// Judges `dir` and maps the result to an exit code.
fn verdict(dir: &Path, expect_invalid: Option<&str>) -> anyhow::Result<u8> {
    let results = jepsen::analyze::analyze(dir)?;
    eprintln!("jepsen: results in {}", dir.join("results.json").display());
    for (name, r) in &results.checkers {
        eprintln!("jepsen:   {name}: {}", serde_json::json!(r.valid));
        for e in r.errors.iter().take(3) {
            eprintln!("jepsen:     {}", e.message);
        }
    }
    eprintln!("jepsen: valid: {}", serde_json::json!(results.valid));
    if let Some(expected) = expect_invalid {
        let checker = INVARIANT_CHECKERS
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(expected))
            .map(|(_, c)| *c)
            .unwrap_or(expected);
        let hit = results
            .checkers
            .get(checker)
            .is_some_and(|r| r.valid == Valid::False);
        if results.valid == Valid::False && hit {
            eprintln!("jepsen: invalid as expected: {checker} names the violation");
            return Ok(0);
        }
        eprintln!("jepsen: expected {checker} to find the run invalid; it did not");
        return Ok(1);
    }
    Ok(results.exit_code() as u8)
}
