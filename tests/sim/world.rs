//! The simulated world of one seed: witnesses assembled below `Node` (consensus on a
//! crashable in-memory disk, the leader duties and the fencing decisions, wired by
//! `node::run_duties` as a served witness wires them), one `MemoryRouter` carrying every
//! message (Raft, probe reports, probes, hook calls, DNS UPDATEs, lease requests), regions
//! whose health the plan switches, hook targets and a DNS server that record what reaches
//! them, and one agent per (group, region) on a lease service that asks the witnesses over
//! the simulated network. Everything runs on one current-thread tokio runtime with paused
//! time, so a seed replays exactly.
//!
//! The checks that must see an action as it happens (S1 grants, S3 hook calls, S5 DNS
//! publications) run at the recorder; the rest run after every step ([`Sim::check`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::agent::AgentConfig;
use arbiter::api::ApiError;
use arbiter::client::ClientError;
use arbiter::config::{DnsServer, Hook, NodeConfig, Policy, ProbeSpec};
use arbiter::dns::{DnsClient, DnsUpdateError, DriftReport, Publication, Published};
use arbiter::fencing::{Fencing, LeaseKind, LeaseService, LeaseState};
use arbiter::health::{ProbeResult, ProbeRunner};
use arbiter::hooks::{HookContext, HookOutcome, HookRunner};
use arbiter::leader::reporter::ReportSink;
use arbiter::leader::LeaderTables;
use arbiter::node::{run_duties, Duties};
use arbiter::proto::{LeaseRequest, ProbeReport};
use arbiter::raft::memory::MemoryRouter;
use arbiter::raft::{Consensus, ConsensusError, Network, Stores};
use arbiter::state::{Command, OperationKind, OperationState, Proposal};
use arbiter::telemetry::Metrics;
use arbiter::wallclock::ManualClock;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::Checker;
use super::disk::Disk;
use super::plan::{
    self, Event, OperatorAction, Plan, PolicyChange, SetMode, Terms, GROUPS, REGIONS,
};

/// How often the world is checked and the plan's clock advanced.
pub const STEP: Duration = Duration::from_millis(20);
/// The longest the liveness phase may take after healing before it counts as a violation.
const LIVENESS_MAX: Duration = Duration::from_secs(120);
/// Endpoint ids beside the witnesses' (1..=5) on the router.
const REGION_EP: u64 = 101;
const DNS_EP: u64 = 200;
const AGENT_EP: u64 = 300;
/// Wall-clock origin of every witness (far from any real clock).
const WALL_ORIGIN_MS: u64 = 4_102_444_800_000;
/// How long an operator's command may wait for the leader.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Steps an operator keeps retrying a policy change that did not commit.
const POLICY_ATTEMPTS: usize = 150;
/// Steps the liveness phase waits for each thing it makes up for: another leader after
/// crashing one, a failover it asked for (10 s).
const MAKE_UP_STEPS: usize = 500;
/// The address the policy names for the DNS server (never dialled: the world answers).
const DNS_SERVER: &str = "192.0.2.53:53";

/// A witness of the world: its disk and clock outlive its processes.
struct Witness {
    config: NodeConfig,
    disk: Disk,
    clock: Arc<ManualClock>,
    /// Wall-clock offset of this host (jumps move it).
    offset_ms: i64,
    process: Option<Process>,
}

/// One running process of a witness.
struct Process {
    consensus: Arc<Consensus>,
    duties: JoinHandle<()>,
}

/// A running witness as the recorders reach it.
#[derive(Clone)]
pub struct Live {
    pub consensus: Arc<Consensus>,
    pub tables: Arc<LeaderTables>,
    pub metrics: Arc<Metrics>,
    pub fencing: Fencing,
}

/// What the recorders and the checker share: the world's facts and the trace.
pub struct Shared {
    pub start: Instant,
    pub trace: Vec<String>,
    pub checker: Checker,
    pub region_up: [bool; 3],
    hook_fail_permille: u32,
    rng: StdRng,
    pub live: BTreeMap<u64, Live>,
    /// The DNS server: per group, the decision its marker names.
    pub dns: BTreeMap<String, arbiter::dns::Decision>,
    /// Per region: how much slower the holder's clock runs (fraction).
    holder_drift: [f64; 3],
}

impl Shared {
    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn event(&mut self, what: String) {
        let line = format!("{:>6} {what}", self.ms());
        self.trace.push(line);
    }
}

pub type World = Arc<Mutex<Shared>>;

/// The whole simulation of one seed.
pub struct Sim {
    pub plan: Plan,
    pub world: World,
    router: MemoryRouter,
    witnesses: BTreeMap<u64, Witness>,
    /// The terms of the operator's policy file: the committed ones and the change at hand.
    terms: Terms,
    /// The terms of the last policy the cluster applied: a refused change is taken back.
    applied_terms: Terms,
    request_seq: u64,
    pub policy_changes: u64,
    agents: Vec<JoinHandle<()>>,
    /// The witness an `IsolateLeader` cut off, until `Rejoin`.
    isolated: Option<u64>,
}

/// A node file for witness `id` of `n` (TLS files exist but are never read).
fn node_config(dir: &std::path::Path, id: u64, n: u64) -> NodeConfig {
    let sites = if n == 3 {
        vec!["region-a", "region-b", "tiebreaker"]
    } else {
        vec!["region-a", "region-a", "region-b", "region-b", "tiebreaker"]
    };
    let peers: Vec<String> = (1..=n)
        .map(|p| {
            format!(
                r#"{{ id = {p}, addr = "10.0.0.{p}:7000", site = "{}" }}"#,
                sites[p as usize - 1]
            )
        })
        .collect();
    let text = format!(
        r#"id = {id}
site = "{site}"
data_dir = "node-{id}"
listen = "10.0.0.{id}:7000"
tls = {{ ca = "ca.pem", cert = "cert.pem", key = "key.pem" }}
peers = [{peers}]
[timing]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
rpc_timeout_ms = 500
"#,
        site = sites[id as usize - 1],
        peers = peers.join(", ")
    );
    NodeConfig::parse("node.toml", &text, dir).expect("node file")
}

/// The directory of the files a node file and the policy name (TLS files, the TSIG secret),
/// made once per process. Its path is fixed: the policy names the secret's path, and the
/// policy is replicated state, which must be the same on every run of a seed.
fn files() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("arbiter-sim");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        std::fs::write(dir.join("tsig.key"), "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").unwrap();
        dir
    })
}

/// The policy with `terms`.
pub fn policy_toml(terms: &Terms) -> String {
    let mut s = String::new();
    for (i, r) in REGIONS.iter().enumerate() {
        s += &format!(
            "[[regions]]\nname = \"{r}\"\nprobes = [{{ kind = \"tcp\", addr = \"192.0.2.{}:5432\", interval_ms = 200, timeout_ms = 150, jitter_ms = 0 }}]\n",
            i + 1
        );
    }
    s += &format!(
        "[dns]\nzones = [{{ name = \"shop.test.\", nameservers = [\"ns1.shop.test.\"] }}]\nservers = [{{ address = \"{DNS_SERVER}\", zone = \"shop.test.\", tsig_key = \"arbiter.\", algorithm = \"hmac-sha256\", secret = {{ file = \"{}\" }} }}]\n",
        files().join("tsig.key").display()
    );
    let mut group = |name: &str, candidates: &[&str]| {
        let list: Vec<String> = candidates.iter().map(|c| format!("\"{c}\"")).collect();
        s += &format!(
            "[[groups]]\nname = \"{name}\"\ncandidates = [{}]\nmode = \"auto\"\nlease_ms = {}\nlease_margin_ms = {}\nclock_drift_percent = {}\ndown_after_ms = 600\ncooldown_ms = 0\nhooks = {{ fence = [\"fence-db\"], promote = [\"promote-db\"], unfence = [\"unfence-db\"] }}\n",
            list.join(", "),
            terms.lease_ms,
            terms.margin_ms,
            terms.drift_percent
        );
        let ips = ["192.0.2.10", "198.51.100.20", "203.0.113.30"];
        let records: Vec<String> = candidates
            .iter()
            .map(|c| {
                let i = REGIONS.iter().position(|r| r == c).unwrap();
                format!("{c} = {{ type = \"A\", values = [\"{}\"] }}", ips[i])
            })
            .collect();
        s += &format!(
            "[groups.dns]\nzone = \"shop.test.\"\nname = \"{name}.shop.test.\"\nttl = 30\nrecords = {{ {} }}\n",
            records.join(", ")
        );
    };
    group("checkout", &["region-a", "region-b"]);
    if terms.catalog {
        let mut candidates = if terms.catalog_a_first {
            vec!["region-a", "region-b"]
        } else {
            vec!["region-b", "region-a"]
        };
        if terms.catalog_c {
            candidates.push("region-c");
        }
        group("catalog", &candidates);
    }
    for h in ["fence-db", "promote-db", "unfence-db"] {
        s += &format!("[hooks.{h}]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
    }
    s
}

impl Sim {
    /// Builds the world of `plan` and starts its witnesses (not yet initialised).
    pub async fn new(plan: Plan) -> Sim {
        arbiter::raft::seed_thread_rng(Some(plan.seed));
        let router = MemoryRouter::seeded(plan.seed);
        let min_drift = plan.min_drift_percent() as f64 / 100.0;
        let holder_drift = plan
            .holder_drift_permille
            .map(|p| min_drift * p as f64 / 1_000.0);
        let world = Arc::new(Mutex::new(Shared {
            start: Instant::now(),
            trace: Vec::new(),
            checker: Checker::new(plan.witnesses),
            region_up: [true; 3],
            hook_fail_permille: 0,
            rng: StdRng::seed_from_u64(plan.seed.wrapping_mul(31) ^ 0xa9e2),
            live: BTreeMap::new(),
            dns: BTreeMap::new(),
            holder_drift,
        }));
        let mut witnesses = BTreeMap::new();
        for id in 1..=plan.witnesses {
            witnesses.insert(
                id,
                Witness {
                    config: node_config(files(), id, plan.witnesses),
                    disk: Disk::default(),
                    clock: Arc::new(ManualClock::new(WALL_ORIGIN_MS)),
                    offset_ms: 0,
                    process: None,
                },
            );
        }
        let terms = plan.initial.clone();
        let mut sim = Sim {
            plan,
            world,
            router,
            witnesses,
            applied_terms: terms.clone(),
            terms,
            request_seq: 0,
            policy_changes: 0,
            agents: Vec::new(),
            isolated: None,
        };
        for id in 1..=sim.plan.witnesses {
            sim.start_witness(id).await;
        }
        sim
    }

    async fn start_witness(&mut self, id: u64) {
        let w = self.witnesses.get_mut(&id).unwrap();
        if w.process.is_some() {
            return;
        }
        let stores = Stores::on(w.disk.handle(), format!("witness-{id}")).expect("stores open");
        let consensus =
            Consensus::start_with(&w.config, self.router.network(id), stores, w.clock.clone())
                .await
                .expect("consensus starts");
        self.router.register(&consensus);
        let tables = Arc::new(LeaderTables::default());
        let metrics = Metrics::new(consensus.clone(), tables.clone());
        let fencing = Fencing::new(
            consensus.clone(),
            Network::new(
                tonic::transport::ClientTlsConfig::new(),
                Duration::from_millis(500),
            ),
            tables.clone(),
            metrics.clone(),
        );
        let duties = tokio::spawn(run_duties(Duties {
            consensus: consensus.clone(),
            tables: tables.clone(),
            metrics: metrics.clone(),
            hooks: Arc::new(SimHooks {
                witness: id,
                world: self.world.clone(),
                router: self.router.clone(),
            }),
            dns: Arc::new(SimDns {
                witness: id,
                world: self.world.clone(),
                router: self.router.clone(),
            }),
            probes: Some(Arc::new(SimProbes {
                witness: id,
                world: self.world.clone(),
                router: self.router.clone(),
            })),
            reports: Arc::new(SimReports {
                witness: id,
                world: self.world.clone(),
                router: self.router.clone(),
            }),
            probe_options: Default::default(),
            dns_addr: String::new(),
        }));
        w.process = Some(Process {
            consensus: consensus.clone(),
            duties,
        });
        let mut world = self.world.lock().unwrap();
        world.live.insert(
            id,
            Live {
                consensus,
                tables,
                metrics,
                fencing,
            },
        );
        world.event(format!("witness {id} started"));
    }

    async fn crash_witness(&mut self, id: u64) {
        let w = self.witnesses.get_mut(&id).unwrap();
        let Some(p) = w.process.take() else { return };
        {
            let mut world = self.world.lock().unwrap();
            world.live.remove(&id);
            world.event(format!("witness {id} crashed"));
        }
        p.duties.abort();
        let _ = p.duties.await;
        p.consensus.shutdown().await;
        w.disk.crash();
    }

    /// The leader of the highest term among running witnesses.
    pub fn leader(&self) -> Option<Arc<Consensus>> {
        self.witnesses
            .values()
            .filter_map(|w| w.process.as_ref())
            .filter(|p| p.consensus.is_leader())
            .max_by_key(|p| p.consensus.view().term)
            .map(|p| p.consensus.clone())
    }

    /// The leader's id, waiting for one up to [`POLICY_ATTEMPTS`] steps.
    async fn await_leader(&mut self) -> Option<u64> {
        for _ in 0..POLICY_ATTEMPTS {
            if let Some(l) = self.leader() {
                return Some(l.id());
            }
            self.step().await;
        }
        None
    }

    fn running(&self) -> Vec<Arc<Consensus>> {
        self.witnesses
            .values()
            .filter_map(|w| w.process.as_ref().map(|p| p.consensus.clone()))
            .collect()
    }

    /// Proposes `command` as an operator through the leader; the response when it committed.
    async fn operate(&mut self, command: Command) -> Option<arbiter::state::Response> {
        let leader = self.leader()?;
        self.request_seq += 1;
        let proposal = Proposal {
            actor: "operator".into(),
            at_ms: leader.now_ms(),
            request_id: format!("sim-{}", self.request_seq),
            command: command.clone(),
        };
        let what = format!("{command:?}");
        let result = tokio::time::timeout(OPERATOR_TIMEOUT, leader.propose(proposal)).await;
        let mut world = self.world.lock().unwrap();
        match result {
            Ok(Ok(resp)) => {
                let outcome = match &resp.outcome {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("refused: {e}"),
                };
                world.event(format!(
                    "operator {} at index {}: {outcome}",
                    short(&what),
                    resp.index,
                ));
                world.checker.acknowledged(resp.index);
                Some(resp)
            }
            Ok(Err(e)) => {
                world.event(format!("operator {}: {e}", short(&what)));
                None
            }
            Err(_) => {
                world.event(format!("operator {}: timed out", short(&what)));
                None
            }
        }
    }

    /// Applies the policy with the current terms; counts it when committed and applied.
    /// `None`: not committed (no leader, timed out); `Some(applied)` otherwise.
    async fn apply_policy(&mut self) -> Option<bool> {
        let policy = Policy::parse("policy.toml", &policy_toml(&self.terms)).expect("policy valid");
        let resp = self
            .operate(Command::ApplyPolicy {
                policy,
                if_version: 0,
            })
            .await?;
        let applied = resp.outcome.is_ok();
        if applied {
            self.policy_changes += 1;
            self.applied_terms = self.terms.clone();
        } else {
            // The operator reads the refusal and takes the change back out of the file, so
            // that it does not ride along with (and sink) every later change.
            self.terms = self.applied_terms.clone();
        }
        Some(applied)
    }

    /// Phase 1: a leader, the first policy, the agents.
    pub async fn bootstrap(&mut self) {
        let first = self.witnesses[&1]
            .process
            .as_ref()
            .unwrap()
            .consensus
            .clone();
        let peers = self.witnesses[&1].config.peers.clone();
        first.initialize(&peers).await.expect("initialize");
        for _ in 0..200 {
            if self.leader().is_some() && self.apply_policy().await == Some(true) {
                break;
            }
            self.step().await;
        }
        // The first policy is no change.
        self.policy_changes = 0;
        for (g, group) in GROUPS.iter().enumerate() {
            for (r, region) in REGIONS.iter().enumerate() {
                let mut config = AgentConfig::new(group, region, &format!("db-{group}-{region}"));
                config.retry = Duration::from_millis(200);
                let lease = SimLease {
                    group: group.to_string(),
                    region: r,
                    endpoint: AGENT_EP + (g * 3 + r) as u64,
                    witnesses: self.plan.witnesses,
                    world: self.world.clone(),
                    router: self.router.clone(),
                    attempt: Duration::from_millis(500),
                };
                let clock = Arc::new(ManualClock::new(WALL_ORIGIN_MS));
                self.agents.push(tokio::spawn(arbiter::agent::run_with(
                    config,
                    Box::new(lease),
                    clock,
                    std::future::pending::<()>(),
                )));
            }
        }
    }

    /// One step: time advances, wall clocks follow, and the world is checked.
    pub async fn step(&mut self) {
        tokio::time::sleep(STEP).await;
        let ms = self.world.lock().unwrap().ms();
        for w in self.witnesses.values() {
            w.clock
                .set((WALL_ORIGIN_MS as i64 + ms as i64 + w.offset_ms) as u64);
        }
        self.check();
    }

    pub fn check(&mut self) {
        let running = self.running();
        let mut world = self.world.lock().unwrap();
        let now = Instant::now();
        let ms = world.ms();
        let Shared { checker, trace, .. } = &mut *world;
        checker.step(now, ms, &running, &self.router, trace);
    }

    /// Phase 2: the plan's faults and actions for [`plan::CHAOS_MS`].
    pub async fn chaos(&mut self) {
        self.dns_path();
        let events = self.plan.events.clone();
        let mut next = 0;
        loop {
            let ms = self.world.lock().unwrap().ms();
            while next < events.len() && events[next].0 <= ms {
                self.apply(&events[next].1).await;
                next += 1;
            }
            if ms >= plan::CHAOS_MS {
                break;
            }
            self.step().await;
        }
    }

    /// The plan's jitter on every link between a witness and the DNS server, for the chaos
    /// phase (a heal of the network clears it; the chaos phase puts it back).
    fn dns_path(&self) {
        let jitter = Duration::from_millis(self.plan.dns_jitter_ms);
        for w in 1..=self.plan.witnesses {
            self.router.set_jitter(w, DNS_EP, jitter);
            self.router.set_jitter(DNS_EP, w, jitter);
        }
    }

    /// Tells the checker that the router's links changed (S7's facts).
    fn net_changed(&self) {
        self.world
            .lock()
            .unwrap()
            .checker
            .net_changed(now(), &self.router);
    }

    async fn apply(&mut self, event: &Event) {
        self.world.lock().unwrap().event(format!("fault {event:?}"));
        match event {
            Event::Partition { side, one_way } => {
                for a in side {
                    for b in (1..=self.plan.witnesses).filter(|b| !side.contains(b)) {
                        self.router.cut(*a, b);
                        if !one_way {
                            self.router.cut(b, *a);
                        }
                    }
                }
                self.net_changed();
            }
            Event::HealNetwork => {
                self.router.heal();
                self.dns_path();
                if let Some(l) = self.isolated {
                    self.router.isolate(l);
                }
                self.net_changed();
            }
            Event::Delay { a, b, ms } => {
                self.router.set_delay(*a, *b, Duration::from_millis(*ms));
                self.router.set_delay(*b, *a, Duration::from_millis(*ms));
            }
            Event::Loss { from, to, permille } => self.router.set_loss(*from, *to, *permille),
            Event::Crash(id) => self.crash_witness(*id).await,
            Event::Restart(0) => {
                for id in 1..=self.plan.witnesses {
                    self.start_witness(id).await;
                }
            }
            Event::Restart(id) => self.start_witness(*id).await,
            // Aimed at the leader: waits for one if there is none at the moment.
            Event::CrashLeader => {
                if let Some(l) = self.await_leader().await {
                    self.crash_witness(l).await;
                }
            }
            Event::IsolateLeader => {
                if let Some(l) = self.await_leader().await {
                    self.router.isolate(l);
                    self.isolated = Some(l);
                }
            }
            Event::Rejoin => {
                self.isolated = None;
                self.router.heal();
                self.dns_path();
                self.net_changed();
            }
            Event::Pause(id) => self.router.pause(*id, true),
            Event::Resume(id) => self.router.pause(*id, false),
            Event::RegionDown(r) | Event::RegionUp(r) => {
                let up = matches!(event, Event::RegionUp(_));
                let mut world = self.world.lock().unwrap();
                world.region_up[*r] = up;
                let regions = world.region_up;
                world.checker.regions_changed(now(), regions, &self.router);
            }
            Event::BlindWitness { witness, region } => {
                let ep = REGION_EP + *region as u64;
                self.router.cut(*witness, ep);
                self.router.cut(ep, *witness);
                self.net_changed();
            }
            Event::ClockJump { witness, ms } => {
                if let Some(w) = self.witnesses.get_mut(witness) {
                    w.offset_ms += ms;
                }
            }
            Event::Policy(change) => {
                match change {
                    PolicyChange::LeaseMs(v) => self.terms.lease_ms = *v,
                    PolicyChange::MarginMs(v) => self.terms.margin_ms = *v,
                    PolicyChange::DriftPercent(v) => self.terms.drift_percent = *v,
                    PolicyChange::RemoveCatalog => self.terms.catalog = false,
                    PolicyChange::ReaddCatalog(a_first) => {
                        if !self.terms.catalog {
                            self.terms.catalog_a_first = *a_first;
                        }
                        self.terms.catalog = true;
                    }
                    PolicyChange::CatalogC(c) => self.terms.catalog_c = *c,
                }
                // An operator retries a change that found no leader or timed out, for a
                // while; a refusal is final.
                for _ in 0..POLICY_ATTEMPTS {
                    match self.apply_policy().await {
                        Some(_) => break,
                        None => self.step().await,
                    }
                }
            }
            Event::Mode { group, mode } => {
                let mode = match mode {
                    SetMode::Auto => arbiter::config::Mode::Auto,
                    SetMode::Manual => arbiter::config::Mode::Manual,
                    SetMode::Frozen => arbiter::config::Mode::Frozen,
                };
                self.operate(Command::SetMode {
                    group: GROUPS[*group].into(),
                    mode,
                    reason: "simulated operator".into(),
                })
                .await;
            }
            Event::Operator { group, action } => self.operator(GROUPS[*group], *action).await,
            Event::HookFailures(p) => self.world.lock().unwrap().hook_fail_permille = *p,
        }
    }

    /// What an operator does about `group`'s current operation.
    async fn operator(&mut self, group: &str, action: OperatorAction) {
        let Some(leader) = self.leader() else { return };
        let (op, next) = leader.with_state(|s| {
            let g = s.groups.get(group);
            let op = g
                .and_then(|g| g.operation)
                .and_then(|id| s.operations.get(&id).cloned());
            let next = g.and_then(|g| g.candidates.iter().find(|c| **c != g.active).cloned());
            (op, next)
        });
        let command = match (action, op) {
            (OperatorAction::Failover, None) => match next {
                Some(to) => Command::StartOperation {
                    group: group.into(),
                    to,
                    kind: OperationKind::Failover,
                    reason: "simulated operator".into(),
                    approval_required: false,
                    requested: true,
                },
                None => return,
            },
            (OperatorAction::Abort, Some(op)) => Command::AbortOperation {
                operation: op.id,
                reason: "simulated operator".into(),
            },
            (OperatorAction::Retry, Some(op)) => Command::RetryOperation { operation: op.id },
            (OperatorAction::Skip, Some(op)) => Command::SkipStep {
                operation: op.id,
                step: op.step,
            },
            (OperatorAction::Approve, Some(op)) => Command::ApproveOperation {
                operation: op.id,
                break_glass: None,
            },
            _ => return,
        };
        self.operate(command).await;
    }

    /// Phase 3: every fault healed, every witness up; every operation must finish and DNS
    /// converge to the committed state within [`LIVENESS_MAX`].
    pub async fn liveness(&mut self) {
        self.world.lock().unwrap().event("heal everything".into());
        self.isolated = None;
        self.router.heal();
        for id in 1..=self.plan.witnesses {
            self.start_witness(id).await;
        }
        {
            let mut world = self.world.lock().unwrap();
            world.region_up = [true; 3];
            world.hook_fail_permille = 0;
            world
                .checker
                .regions_changed(now(), [true; 3], &self.router);
            world.checker.net_changed(now(), &self.router);
        }
        self.make_it_mean_something().await;
        let started = Instant::now();
        let mut last_operator = Instant::now();
        loop {
            self.step().await;
            if started.elapsed() > LIVENESS_MAX {
                let why = self.unsettled().unwrap_or_default();
                let mut world = self.world.lock().unwrap();
                world.checker.violation(format!(
                    "liveness: not settled {LIVENESS_MAX:?} after healing: {why}"
                ));
                return;
            }
            match self.unsettled() {
                None => break,
                Some(_) if last_operator.elapsed() >= Duration::from_secs(1) => {
                    last_operator = Instant::now();
                    self.settle().await;
                }
                Some(_) => {}
            }
        }
        let running = self.running();
        let mut world = self.world.lock().unwrap();
        world.checker.finish(&running);
        world.event("settled".into());
    }

    /// What the plan promised but its faults thwarted (they met other faults that left no
    /// quorum, or a mode that held the failover back), done once the cluster is whole, so
    /// that every seed has a leader change, two policy changes and a failover: the leader of
    /// the moment crashes and comes back once another leads; the lease is changed until two
    /// changes committed; an operator fails checkout over.
    async fn make_it_mean_something(&mut self) {
        if self.world.lock().unwrap().checker.leader_changes == 0 {
            self.apply(&Event::CrashLeader).await;
            for _ in 0..MAKE_UP_STEPS {
                if self.world.lock().unwrap().checker.leader_changes > 0 {
                    break;
                }
                self.step().await;
            }
            self.apply(&Event::Restart(0)).await;
        }
        for _ in 0..4 {
            if self.policy_changes >= 2 {
                break;
            }
            let lease = if self.terms.lease_ms == 2_000 {
                1_500
            } else {
                2_000
            };
            self.apply(&Event::Policy(PolicyChange::LeaseMs(lease)))
                .await;
        }
        for i in 0..MAKE_UP_STEPS {
            if self.world.lock().unwrap().checker.failovers() > 0 {
                break;
            }
            // Once a second: what the liveness phase's operator does (modes back to auto,
            // halted operations retried, waiting ones approved), and a failover of checkout
            // when none runs.
            if i % 50 == 0 {
                self.settle().await;
                self.apply(&Event::Operator {
                    group: 0,
                    action: OperatorAction::Failover,
                })
                .await;
            }
            self.step().await;
        }
    }

    /// What an operator does after the heal: modes back to auto, halted operations retried,
    /// waiting ones approved.
    async fn settle(&mut self) {
        let Some(leader) = self.leader() else { return };
        let state = leader.state();
        for g in state.groups.values() {
            if g.mode != arbiter::config::Mode::Auto {
                self.operate(Command::SetMode {
                    group: g.name.clone(),
                    mode: arbiter::config::Mode::Auto,
                    reason: "heal".into(),
                })
                .await;
            }
            let Some(op) = g.operation.and_then(|id| state.operations.get(&id)) else {
                continue;
            };
            match op.state {
                OperationState::Halted { .. } => {
                    self.operate(Command::RetryOperation { operation: op.id })
                        .await;
                }
                OperationState::AwaitingApproval => {
                    self.operate(Command::ApproveOperation {
                        operation: op.id,
                        break_glass: None,
                    })
                    .await;
                }
                _ => {}
            }
        }
    }

    /// Why the world has not settled yet (`None`: it has).
    fn unsettled(&self) -> Option<String> {
        let leader = self.leader()?;
        let running = self.running();
        if running.len() as u64 != self.plan.witnesses {
            return Some("a witness is down".into());
        }
        let index = leader.view().applied_index;
        if running.iter().any(|c| c.view().applied_index != index) {
            return Some("witnesses have not applied the same index".into());
        }
        let state = leader.state();
        let world = self.world.lock().unwrap();
        for g in state.groups.values() {
            if let Some(op) = g.operation {
                return Some(format!("group {} has operation {op} in progress", g.name));
            }
            let published = world.dns.get(&g.name);
            if published.is_none_or(|d| d.region != g.active || d.epoch != g.epoch) {
                return Some(format!(
                    "DNS of {} publishes {published:?}, committed {} at epoch {}",
                    g.name, g.active, g.epoch
                ));
            }
        }
        None
    }

    /// Stops every task of the world.
    pub async fn stop(mut self) {
        for a in self.agents.drain(..) {
            a.abort();
        }
        for id in 1..=self.plan.witnesses {
            self.crash_witness(id).await;
        }
        arbiter::raft::seed_thread_rng(None);
    }
}

fn now() -> Instant {
    Instant::now()
}

fn short(s: &str) -> String {
    // Policies are long: their debug form is cut to its head.
    s.chars().take(60).collect()
}

/// Probes of one witness: region `r` answers while it is up and both links carry.
struct SimProbes {
    witness: u64,
    world: World,
    router: MemoryRouter,
}

impl ProbeRunner for SimProbes {
    fn probe(&self, region: &str, _spec: &ProbeSpec) -> BoxFuture<'static, ProbeResult> {
        let idx = REGIONS.iter().position(|r| *r == region);
        let (w, world, router) = (self.witness, self.world.clone(), self.router.clone());
        Box::pin(async move {
            let ok = match idx {
                Some(i) => {
                    let ep = REGION_EP + i as u64;
                    router.carry(w, ep).await
                        && world.lock().unwrap().region_up[i]
                        && router.carry(ep, w).await
                }
                None => false,
            };
            ProbeResult {
                ok,
                detail: if ok { "up" } else { "down" }.into(),
                latency: Duration::ZERO,
            }
        })
    }
}

/// A follower's probe reports travel to the leader over the router.
struct SimReports {
    witness: u64,
    world: World,
    router: MemoryRouter,
}

impl ReportSink for SimReports {
    fn send<'a>(&'a self, consensus: &'a Consensus, report: ProbeReport) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(leader) = consensus.view().leader else {
                return;
            };
            if leader == self.witness || !self.router.carry(self.witness, leader).await {
                return;
            }
            let live = self.world.lock().unwrap().live.get(&leader).cloned();
            if let Some(l) = live {
                let _ = arbiter::leader::reporter::accept(&l.tables, &l.metrics, &report);
            }
        })
    }
}

/// Hook calls travel to the region they act on; the target records them (S3) and answers.
struct SimHooks {
    witness: u64,
    world: World,
    router: MemoryRouter,
}

impl HookRunner for SimHooks {
    fn run<'a>(
        &'a self,
        name: &'a str,
        _hook: &'a Hook,
        ctx: &'a HookContext,
    ) -> BoxFuture<'a, HookOutcome> {
        Box::pin(async move {
            let region = if ctx.step == "promote" || ctx.step == "validate" {
                &ctx.to
            } else {
                &ctx.from
            };
            let ep = REGION_EP + REGIONS.iter().position(|r| r == region).unwrap_or(0) as u64;
            let outcome = |success: bool, summary: &str| HookOutcome {
                success,
                summary: summary.into(),
                output: String::new(),
                duration: Duration::ZERO,
                fence_confirmed: None,
                http_status: None,
            };
            if !self.router.carry(self.witness, ep).await {
                return outcome(false, "unreachable");
            }
            let success = {
                let mut world = self.world.lock().unwrap();
                let caller = world.live.get(&self.witness).map(|l| l.consensus.clone());
                world.event(format!(
                    "hook {name} {} op {} {} epoch {} by {} term {}",
                    ctx.step, ctx.operation, ctx.group, ctx.epoch, ctx.witness, ctx.term
                ));
                let now = Instant::now();
                let Shared { checker, .. } = &mut *world;
                checker.hook_call(now, caller.as_deref(), ctx);
                let p = world.hook_fail_permille;
                p == 0 || world.rng.random_range(0..1_000) >= p
            };
            if !self.router.carry(ep, self.witness).await {
                return outcome(false, "reply lost");
            }
            outcome(success, if success { "ok" } else { "exit 1" })
        })
    }
}

/// DNS UPDATEs travel to the DNS server, which keeps the marker rule of a real one (an
/// UPDATE applies only over an absent, older or equal marker) and whose content S5 judges.
struct SimDns {
    witness: u64,
    world: World,
    router: MemoryRouter,
}

fn unreachable_dns() -> DnsUpdateError {
    DnsUpdateError::Io {
        reason: "the DNS server is unreachable".into(),
    }
}

impl SimDns {
    /// One exchange with the DNS server as the network carries it: the request travels, the
    /// server acts on it when it arrives (`serve`, under the world's lock), the answer travels
    /// back. The exchange is a task of its own and the client waits for it at most the
    /// server's `timeout_ms`: a request the client gave up on is still in flight and may be
    /// acted on later, after requests sent since, as a real server may.
    async fn exchange<T: Send + 'static>(
        &self,
        server: &DnsServer,
        serve: impl FnOnce(&mut Shared) -> Result<T, DnsUpdateError> + Send + 'static,
    ) -> Result<T, DnsUpdateError> {
        let (router, world, witness) = (self.router.clone(), self.world.clone(), self.witness);
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let reply = if !router.carry(witness, DNS_EP).await {
                Err(unreachable_dns())
            } else {
                let reply = serve(&mut world.lock().unwrap());
                if router.carry(DNS_EP, witness).await {
                    reply
                } else {
                    Err(unreachable_dns())
                }
            };
            if answer.send(reply).is_err() {
                world
                    .lock()
                    .unwrap()
                    .event(format!("dns answer to {witness} after it gave up"));
            }
        });
        let timeout_ms = server.timeout_ms;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), answered).await {
            Ok(reply) => reply.unwrap_or_else(|_| Err(unreachable_dns())),
            Err(_) => Err(DnsUpdateError::Timeout { timeout_ms }),
        }
    }
}

/// The marker texts the DNS server holds for `group`.
fn marker_texts(world: &Shared, group: &str) -> Vec<String> {
    world.dns.get(group).map(|m| m.text()).into_iter().collect()
}

impl DnsClient for SimDns {
    fn publish_to<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<Published, DnsUpdateError>> {
        let publication = publication.clone();
        let witness = self.witness;
        Box::pin(self.exchange(server, move |world| {
            let d = &publication.decision;
            let texts = marker_texts(world, &d.group);
            let verdict = arbiter::dns::marker::verdict(&texts, d, &publication.issued);
            if verdict.may_publish() {
                world.event(format!(
                    "dns {} -> {} epoch {} by {witness}",
                    d.group, d.region, d.epoch
                ));
                let caller = world.live.get(&witness).map(|l| l.consensus.clone());
                let Shared { checker, dns, .. } = &mut *world;
                checker.dns_published(caller.as_deref(), d, dns.get(&d.group));
                world.dns.insert(d.group.clone(), d.clone());
                Ok(Published::Updated {
                    serial: 1,
                    replaced: verdict,
                })
            } else if let arbiter::dns::MarkerVerdict::Newer(by) = verdict {
                Ok(Published::Superseded { by })
            } else {
                Err(DnsUpdateError::Invalid {
                    reason: format!("marker refused: {verdict:?}"),
                })
            }
        }))
    }

    fn drift<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<DriftReport, DnsUpdateError>> {
        let publication = publication.clone();
        Box::pin(self.exchange(server, move |world| {
            let d = &publication.decision;
            let texts = marker_texts(world, &d.group);
            Ok(DriftReport {
                records: Vec::new(),
                marker: arbiter::dns::marker::verdict(&texts, d, &publication.issued),
                marker_found: texts,
            })
        }))
    }
}

/// The lease service of one agent: asks the witnesses in turn over the router; a follower
/// forwards to the leader it knows, one hop, as the gRPC service does. Every grant the agent
/// receives is recorded with the real-time instant its holder stops (S1).
struct SimLease {
    group: String,
    region: usize,
    endpoint: u64,
    witnesses: u64,
    world: World,
    router: MemoryRouter,
    attempt: Duration,
}

fn unavailable(message: &str) -> ClientError {
    ClientError {
        kind: arbiter::api::ErrorKind::Unavailable,
        code: tonic::Code::Unavailable,
        message: message.into(),
    }
}

impl SimLease {
    async fn decide_at(
        &self,
        w: u64,
        kind: LeaseKind,
        req: &LeaseRequest,
    ) -> Result<arbiter::proto::LeaseReply, ApiError> {
        let live = self.world.lock().unwrap().live.get(&w).cloned();
        let Some(live) = live else {
            return Err(ApiError::Consensus(ConsensusError::Unavailable(
                "down".into(),
            )));
        };
        live.fencing.decide(kind, req).await
    }

    async fn attempt(
        &self,
        w: u64,
        kind: LeaseKind,
        req: &LeaseRequest,
    ) -> Result<arbiter::proto::LeaseReply, ClientError> {
        if !self.router.carry(self.endpoint, w).await {
            return Err(unavailable("request lost"));
        }
        let answer = match self.decide_at(w, kind, req).await {
            Err(ApiError::Consensus(ConsensusError::NotLeader {
                leader_id: Some(l), ..
            })) if l != w => {
                if !self.router.carry(w, l).await {
                    Err(unavailable("forward lost"))
                } else {
                    let a = self.decide_at(l, kind, req).await;
                    if self.router.carry(l, w).await {
                        a.map_err(|e| unavailable(&e.to_string()))
                    } else {
                        Err(unavailable("forwarded reply lost"))
                    }
                }
            }
            other => other.map_err(|e| unavailable(&e.to_string())),
        };
        if !self.router.carry(w, self.endpoint).await {
            return Err(unavailable("reply lost"));
        }
        answer
    }

    async fn ask(&self, kind: LeaseKind, epoch: u64) -> Result<LeaseState, ClientError> {
        let req = LeaseRequest {
            group: self.group.clone(),
            region: REGIONS[self.region].into(),
            epoch,
            holder: String::new(),
        };
        let sent = Instant::now();
        let mut last = unavailable("no witness answered");
        for w in 1..=self.witnesses {
            match tokio::time::timeout(self.attempt, self.attempt(w, kind, &req)).await {
                Ok(Ok(reply)) => {
                    let state = LeaseState::from_reply(sent, reply);
                    if let LeaseState::Held { epoch, lease, .. } = &state {
                        let mut world = self.world.lock().unwrap();
                        let drift = world.holder_drift[self.region];
                        let stops = sent + lease.mul_f64(1.0 + drift);
                        world.event(format!(
                            "lease {} {} epoch {epoch} {} ms",
                            self.group,
                            REGIONS[self.region],
                            lease.as_millis()
                        ));
                        let now = Instant::now();
                        let Shared { checker, .. } = &mut *world;
                        checker.granted(now, &self.group, REGIONS[self.region], *epoch, stops);
                    }
                    return Ok(state);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = unavailable("attempt timed out"),
            }
        }
        Err(last)
    }
}

impl LeaseService for SimLease {
    fn acquire(&self) -> BoxFuture<'_, Result<LeaseState, ClientError>> {
        Box::pin(self.ask(LeaseKind::Acquire, 0))
    }

    fn renew(&self, epoch: u64) -> BoxFuture<'_, Result<LeaseState, ClientError>> {
        Box::pin(self.ask(LeaseKind::Renew, epoch))
    }

    fn bound_by_lease(&mut self, lease: Duration) {
        self.attempt = (lease / 5).max(Duration::from_millis(200));
    }
}
