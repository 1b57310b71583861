//! `arbiter demo`: the whole mission in one command, on nothing but this binary. It starts
//! three witnesses (region-a, region-b, tiebreaker) in this process on loopback, with
//! development certificates, their embedded DNS servers, two simulated regions probed over
//! HTTP and a lease-holding agent per region; then it plays "region-a goes dark" and prints
//! the failover as it happens, with times taken from the system itself
//! ([`timeline`]).
//!
//! Everything lives in one temporary directory that is removed at exit, on Ctrl-C too.
//! The demo never reads standard input, and every wait is bounded: a phase that does not
//! happen is reported by name and the demo exits non-zero.
//!
//! - [`files`]: the temporary directory, and the node files and policy written into it.
//! - [`region`]: the simulated regions and the receiver of their promote hook.
//! - [`postgres`]: with `--postgres`, a real PostgreSQL primary and standby instead of
//!   simulated databases.
//! - [`timeline`]: follows the scenario through the watch stream, the operation's steps,
//!   the agents' state files and DNS queries.

pub mod files;
pub mod postgres;
pub mod region;
pub mod timeline;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::certs::{init_dev_certs, CertsError};
use crate::client::{Client, ClientError};
use crate::config::{ConfigError, NodeConfig};
use crate::node::{Node, NodeError};
use crate::proto;
use files::{Databases, Layout, WorkDir, GROUP, NAME, REGIONS, SITES};
use region::SimulatedRegions;
use timeline::{Phase, Scenario};

/// How long the cluster may take to be ready (elected, policy applied, regions up, lease
/// held, DNS answering) before the demo gives up; generous for a loaded machine.
const SETUP_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between two looks at the cluster while waiting for it to be ready.
const SETUP_POLL: Duration = Duration::from_millis(100);
/// Pause between acquire attempts of an agent whose region is not active: the new
/// region's agent takes the lease within this much of the activation.
const AGENT_RETRY: Duration = Duration::from_millis(200);
/// Bound on stopping one agent or one witness at exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the demo's log shown when it fails.
const LOG_TAIL_LINES: usize = 40;
/// Ports used from `--base-port` on: 3 witnesses, 3 DNS servers, 2 regions, 1 hook
/// receiver, 3 metrics listeners.
const PORTS_USED: u16 = 12;
/// What the group's record publishes per region (in [`REGIONS`] order) when the regions
/// cannot listen on their own loopback addresses (127.0.0.11 and .12, outside Linux):
/// documentation addresses.
const FALLBACK_ADDRESSES: [&str; 2] = ["192.0.2.10", "198.51.100.20"];
/// Exit code of a demo stopped by Ctrl-C before its scenario finished (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// What `arbiter demo` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Leave everything running after the scenario, until Ctrl-C.
    pub keep_running: bool,
    /// Listen on fixed ports from this one instead of free ports.
    pub base_port: Option<u16>,
    /// Real PostgreSQL servers instead of simulated databases.
    pub postgres: bool,
}

/// Why the demo did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("invalid --base-port: {0}")]
    BasePort(String),
    #[error("development certificates: {0}")]
    Certs(#[from] CertsError),
    #[error("demo configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("witness {id} did not start: {source}")]
    Node { id: usize, source: NodeError },
    #[error("cluster: {0} ({kind})", kind = .0.kind)]
    Cluster(#[from] ClientError),
    #[error("stuck: waited {} s for {waiting_for}, and it did not happen", after.as_secs())]
    Stuck {
        waiting_for: String,
        after: Duration,
    },
    #[error("operation {operation} stopped at step {step}: {error}")]
    Halted {
        operation: u64,
        step: String,
        error: String,
    },
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("interrupted")]
    Interrupted,
}

impl DemoError {
    /// The process exit code: 64 bad usage, 130 interrupted, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DemoError::BasePort(_) => crate::config::EXIT_CONFIG as u8,
            DemoError::Interrupted => EXIT_INTERRUPTED,
            _ => 1,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Runs the demo. Returns once the scenario is over (or, with `keep_running`, at Ctrl-C),
/// after stopping everything and removing the temporary directory.
pub async fn run(options: Options) -> Result<(), DemoError> {
    check_base_port(options.base_port)?;
    let dir = WorkDir::create().map_err(io_error("cannot create a temporary directory"))?;
    init_logging(dir.path())?;
    let mut running = Running::default();
    let mut finished = false;
    let result = tokio::select! {
        r = play(&options, dir.path(), &mut running, &mut finished) => r,
        () = interrupted() => Err(DemoError::Interrupted),
    };
    let result = match result {
        Err(DemoError::Interrupted) if finished => Ok(()),
        other => other,
    };
    if let Err(e) = &result {
        if !matches!(e, DemoError::Interrupted | DemoError::BasePort(_)) {
            print_log_tail(&dir.path().join("demo.log"));
        }
    }
    println!("\nstopping the agents, the witnesses and the regions");
    running.stop().await;
    let shown = dir.path().display().to_string();
    drop(dir);
    println!("removed {shown}");
    result
}

/// Completes at Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// The witnesses' and agents' logs go to a file in the work directory: the terminal shows
/// only the timeline. `RUST_LOG` sets the filter as for `serve`.
fn init_logging(dir: &Path) -> Result<(), DemoError> {
    let path = dir.join("demo.log");
    let file = std::fs::File::create(&path)
        .map_err(io_error(format!("cannot create {}", path.display())))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

fn print_log_tail(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    eprintln!("last lines of the witnesses' log ({}):", path.display());
    for line in &lines[from..] {
        eprintln!("  {line}");
    }
}

/// What the demo started, stopped at exit whatever happened.
#[derive(Default)]
struct Running {
    agents: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
    nodes: Vec<Node>,
    regions: Option<SimulatedRegions>,
    postgres: Option<postgres::Pair>,
}

impl Running {
    async fn stop(&mut self) {
        for (stop, task) in self.agents.drain(..) {
            let _ = stop.send(());
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!("an agent did not stop in time");
            }
        }
        for node in self.nodes.drain(..) {
            if tokio::time::timeout(STOP_TIMEOUT, node.stop())
                .await
                .is_err()
            {
                tracing::warn!("a witness did not stop in time");
            }
        }
        self.regions = None;
        if let Some(mut pair) = self.postgres.take() {
            pair.stop().await;
        }
    }
}

/// Sets everything up, plays the scenario and prints how to look at the result.
async fn play(
    options: &Options,
    dir: &Path,
    running: &mut Running,
    finished: &mut bool,
) -> Result<(), DemoError> {
    let started = Instant::now();
    println!(
        "arbiter demo: 3 witnesses, 2 regions ({}) and an agent per region, on loopback",
        if options.postgres {
            "simulated health endpoints, real PostgreSQL primary and standby"
        } else {
            "simulated health endpoints and databases"
        }
    );
    println!("files: {} (removed at exit)\n", dir.display());

    let certs = init_dev_certs(&dir.join("certs"), &SITES.map(String::from), &[], false)?;
    let (mut layout, region_listeners, hooks_listener) = bind(options.base_port).await?;
    println!("setup");
    let (databases, hook_receiver) = if options.postgres {
        let pair = postgres::Pair::start(dir, REGIONS).await?;
        for (i, server) in pair.servers.iter().enumerate() {
            println!(
                "  {:<10}  PostgreSQL {} on 127.0.0.1:{}",
                server.name,
                if i == 0 {
                    "primary"
                } else {
                    "streaming standby"
                },
                server.port
            );
        }
        let databases = Databases::Postgres {
            dsn: [pair.servers[0].dsn(), pair.servers[1].dsn()],
            password: pair.password_file.clone(),
        };
        running.postgres = Some(pair);
        (databases, None)
    } else {
        let secret = format!("{:032x}", rand::random::<u128>());
        let secret_path = dir.join("hook.secret");
        write_private(&secret_path, secret.as_bytes())?;
        let databases = Databases::Simulated {
            hooks: hooks_listener
                .local_addr()
                .map_err(io_error("cannot read a bound address"))?,
            secret: secret_path,
        };
        (databases, Some((hooks_listener, secret.into_bytes())))
    };
    for id in 1..=SITES.len() {
        let path = dir.join(format!("node-{id}.toml"));
        std::fs::write(&path, files::node_toml(id, &layout))
            .map_err(io_error(format!("cannot write {}", path.display())))?;
    }
    let policy = files::policy_toml(&layout, &databases);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &policy)
        .map_err(io_error(format!("cannot write {}", policy_path.display())))?;

    running.regions = Some(SimulatedRegions::start(
        REGIONS
            .iter()
            .map(|r| r.to_string())
            .zip(region_listeners)
            .collect(),
        hook_receiver,
    ));
    for id in 1..=SITES.len() {
        let config = NodeConfig::load(&dir.join(format!("node-{id}.toml")))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io_error(format!("cannot listen on {}", config.listen)))?;
        let node = Node::start(config, listener, std::future::pending())
            .await
            .map_err(|source| DemoError::Node { id, source })?;
        if let Some(dns) = node.dns_addr() {
            layout.dns[id - 1] = dns;
        }
        if let Some(metrics) = node.metrics_addr() {
            layout.metrics[id - 1] = metrics;
        }
        println!(
            "  witness {id}  {:<10}  grpc {}  dns {}",
            SITES[id - 1],
            node.local_addr,
            layout.dns[id - 1]
        );
        running.nodes.push(node);
    }
    for (i, region) in REGIONS.iter().enumerate() {
        println!(
            "  {region}    health http://{}/health  {NAME} A {}",
            layout.regions[i], layout.region_addresses[i]
        );
    }

    let servers: Vec<String> = layout.witnesses.iter().map(|a| a.to_string()).collect();
    let client = Client::new(servers.clone(), &certs.client)?;
    let init = client.init().await?;
    let applied = client
        .policy_apply(proto::PolicyApplyRequest {
            toml: policy,
            dry_run: false,
            if_version: 0,
            request_id: crate::api::new_request_id(),
        })
        .await?;
    println!(
        "  cluster {} initialised; policy version {} applied: group {GROUP} (auto) active in {} at epoch 1",
        init.cluster_id, applied.version, REGIONS[0]
    );

    for region in REGIONS {
        // Least privilege: each agent holds a certificate for its own lease and nothing else.
        let role = crate::access::Role::Agent {
            group: GROUP.into(),
            region: region.into(),
        };
        let name = format!("agent-{GROUP}-{region}");
        let agent_tls = crate::certs::issue_role_cert(&dir.join("certs"), &name, &[role], false)?;
        let agent_client = Client::new(servers.clone(), &agent_tls)?;
        let mut config =
            crate::agent::AgentConfig::new(GROUP, region, &format!("demo-agent-{region}"));
        config.state_file = Some(agent_file(dir, region));
        config.retry = AGENT_RETRY;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::agent::run(config, agent_client, async {
            let _ = stopped.await;
        }));
        running.agents.push((stop, task));
    }
    wait_ready(&client, &layout, dir).await?;
    if let Some(pair) = &running.postgres {
        pair.wait_replicated().await?;
    }
    println!(
        "  ready after {:.1} s: both regions up by quorum verdict, agent {} holds the lease at epoch 1, DNS answers {}",
        started.elapsed().as_secs_f64(),
        REGIONS[0],
        layout.region_addresses[0]
    );

    println!("\nscenario: {} goes dark", REGIONS[0]);
    let (stream, baseline) = timeline::open_watch(&client).await?;
    let regions = running.regions.as_ref().expect("regions started above");
    regions.set_healthy(REGIONS[0], false);
    let t0_ms = crate::wallclock::now_ms();
    let scenario = Scenario {
        client: client.clone(),
        from: REGIONS[0].to_string(),
        to: REGIONS[1].to_string(),
        to_address: layout.region_addresses[1].clone(),
        dns: layout.dns.to_vec(),
        agent_from: agent_file(dir, REGIONS[0]),
        agent_to: agent_file(dir, REGIONS[1]),
    };
    let t = timeline::follow(&scenario, stream, baseline, t0_ms).await?;
    print_summary(&t);
    if let Some(pair) = &running.postgres {
        println!("\nchecked with real sessions:");
        for line in pair.check_after().await? {
            println!("  {line}");
        }
    }
    *finished = true;
    print_commands(options, dir, &servers, &layout, running.postgres.as_ref());
    if options.keep_running {
        std::future::pending::<()>().await;
    }
    Ok(())
}

fn agent_file(dir: &Path, region: &str) -> std::path::PathBuf {
    dir.join(format!("agent-{region}.json"))
}

/// Binds the simulated regions and the hook receiver, and chooses every other address.
async fn bind(
    base_port: Option<u16>,
) -> Result<(Layout, Vec<TcpListener>, TcpListener), DemoError> {
    check_base_port(base_port)?;
    let port = |offset: u16| base_port.map_or(0, |b| b + offset);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let witnesses: [SocketAddr; 3] = match base_port {
        Some(_) => [0, 1, 2].map(|i| SocketAddr::new(loopback, port(i))),
        // Free ports, released again right away: each witness binds its own just before it
        // starts, so no witness waits on a peer's bound but not yet serving socket.
        None => {
            let mut addrs = [SocketAddr::new(loopback, 0); 3];
            let mut held = Vec::new();
            for addr in &mut addrs {
                let l = std::net::TcpListener::bind(*addr)
                    .map_err(io_error("cannot find a free loopback port"))?;
                *addr = l
                    .local_addr()
                    .map_err(io_error("cannot find a free loopback port"))?;
                held.push(l);
            }
            addrs
        }
    };
    let dns = [3, 4, 5].map(|i| SocketAddr::new(loopback, port(i)));
    let metrics = [9, 10, 11].map(|i| SocketAddr::new(loopback, port(i)));
    let mut regions = Vec::new();
    let mut region_addrs = Vec::new();
    let mut region_addresses = Vec::new();
    for (i, fallback) in FALLBACK_ADDRESSES.iter().enumerate() {
        // Each region on its own loopback address, so the DNS answer names the address
        // its health endpoint is served on.
        let own = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8)),
            port(6 + i as u16),
        );
        let (listener, address) = match TcpListener::bind(own).await {
            Ok(l) => (l, own.ip().to_string()),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                let shared = SocketAddr::new(loopback, port(6 + i as u16));
                let l = TcpListener::bind(shared)
                    .await
                    .map_err(io_error(format!("cannot listen on {shared}")))?;
                (l, fallback.to_string())
            }
            Err(e) => return Err(io_error(format!("cannot listen on {own}"))(e)),
        };
        region_addrs.push(
            listener
                .local_addr()
                .map_err(io_error("cannot read a bound address"))?,
        );
        region_addresses.push(address);
        regions.push(listener);
    }
    let hooks_addr = SocketAddr::new(loopback, port(8));
    let hooks = TcpListener::bind(hooks_addr)
        .await
        .map_err(io_error(format!("cannot listen on {hooks_addr}")))?;
    let layout = Layout {
        witnesses,
        dns,
        metrics,
        regions: [region_addrs[0], region_addrs[1]],
        region_addresses: [region_addresses[0].clone(), region_addresses[1].clone()],
    };
    Ok((layout, regions, hooks))
}

/// The demo uses [`PORTS_USED`] consecutive ports from `--base-port`.
fn check_base_port(base_port: Option<u16>) -> Result<(), DemoError> {
    match base_port {
        Some(base) if base == 0 || base.checked_add(PORTS_USED - 1).is_none() => {
            Err(DemoError::BasePort(format!(
                "{base}: the demo uses {PORTS_USED} ports from it, which must lie in 1..=65535"
            )))
        }
        _ => Ok(()),
    }
}

/// Writes a secret file readable by this user only, from its creation on.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DemoError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(io_error(format!("cannot write {}", path.display())))
}

/// Waits until the cluster has a leader and the policy, both regions are up by quorum
/// verdict, the first region's agent holds the lease and every DNS server answers it.
async fn wait_ready(client: &Client, layout: &Layout, dir: &Path) -> Result<(), DemoError> {
    let deadline = Instant::now() + SETUP_DEADLINE;
    loop {
        let status = client.status(1).await.ok();
        let regions_up = status.as_ref().is_some_and(|s| {
            REGIONS
                .iter()
                .all(|r| s.regions.iter().any(|v| v.name == *r && v.verdict == "up"))
        });
        let holding = timeline::read_agent(&agent_file(dir, REGIONS[0]))
            .is_some_and(|a| a.holding && a.epoch == 1);
        let mut dns = true;
        for addr in &layout.dns {
            dns &= timeline::answers(addr).await == [layout.region_addresses[0].as_str()];
        }
        if regions_up && holding && dns {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut missing = Vec::new();
            if !regions_up {
                missing.push("both regions up by quorum verdict");
            }
            if !holding {
                missing.push("agent region-a holding the lease");
            }
            if !dns {
                missing.push("every witness's DNS answering region-a");
            }
            return Err(DemoError::Stuck {
                waiting_for: format!("the cluster to be ready ({})", missing.join(", ")),
                after: SETUP_DEADLINE,
            });
        }
        tokio::time::sleep(SETUP_POLL).await;
    }
}

fn print_summary(t: &timeline::Timings) {
    let at = |p: Phase| t.at_ms[&p] as f64 / 1000.0;
    let t0 = t.t0_ms as f64 / 1000.0;
    println!(
        "\nfailover done in {:.1} s after detection ({:.1} s after {} went dark)",
        at(Phase::Validated) - at(Phase::Detected),
        at(Phase::Validated) - t0,
        REGIONS[0]
    );
    let (released, gained) = (at(Phase::Released) - t0, at(Phase::Gained) - t0);
    let (from, to) = (REGIONS[0], REGIONS[1]);
    if gained > released {
        println!(
            "no region held the lease for {:.1} s: agent {from} let go at {released:+.2}s, agent {to} took over at {gained:+.2}s",
            gained - released
        );
    } else {
        // Only a confirmed hard fence, in a group that opts in, lets the activation come
        // before the old lease ran out (DESIGN.md, leases and fencing, point 4): say so
        // rather than hide it.
        println!(
            "agent {to} took over at {gained:+.2}s, before agent {from} let go at {released:+.2}s: \
             the fence hooks confirmed a hard fence of {from} and the group opts in \
             (fence_ends_lease_wait), which ends the lease wait early"
        );
    }
}

/// How to look at the cluster from another terminal.
fn print_commands(
    options: &Options,
    dir: &Path,
    servers: &[String],
    layout: &Layout,
    postgres: Option<&postgres::Pair>,
) {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "arbiter".into());
    let how = if options.keep_running {
        "look at it from another terminal"
    } else {
        "with `arbiter demo --keep-running` the cluster stays up; then look at it with"
    };
    println!("\n{how}:");
    println!(
        "  export ARBITER_TLS_DIR={} ARBITER_SERVERS={}",
        dir.join("certs").display(),
        servers.join(",")
    );
    println!("  {exe} status");
    println!("  {exe} operations");
    println!("  {exe} watch");
    println!(
        "  {exe} status --server {} --tls-dir {}",
        servers[0],
        dir.join("certs").display()
    );
    println!(
        "  dig @{} -p {} {NAME} A +short",
        layout.dns[0].ip(),
        layout.dns[0].port()
    );
    println!(
        "  curl -s http://{}/metrics | grep -E '^arbiter_(group|region_verdict)'",
        layout.metrics[0]
    );
    if let Some(pair) = postgres {
        for (i, region) in REGIONS.iter().enumerate() {
            println!("  {}    # {region}", pair.psql(i));
        }
    }
    if options.keep_running {
        println!(
            "  curl -s -X POST http://{}/health/on    # {} comes back",
            layout.regions[0], REGIONS[0]
        );
        println!(
            "  {exe} failback {GROUP} --reason \"{} is back\"",
            REGIONS[0]
        );
        println!(
            "node files, policy and logs: {}\nPress Ctrl-C to stop everything and remove it.",
            dir.display()
        );
    }
}
