//! # Fence check throughput and latency, beside etcd
//!
//! Starts a 3-witness arbiter cluster in this process (loopback, mutual TLS, WAN-default
//! timing) and, when Debian's `etcd-server` is installed, a 3-member etcd cluster as child
//! processes. For each concurrency level it runs a closed loop of `clients` tasks for a
//! warm-up and then a measured interval: arbiter tasks ask `Fencing/Check` whether the
//! current (region, epoch) of group `checkout` is still current; etcd tasks do a linearizable
//! `KV/Range` (`serializable = false`) of one key. Both talk to their leader directly over
//! gRPC. Every latency is kept and sorted for exact percentiles.
//!
//! Run with `cargo bench --bench fence`. Under `cargo test` (no `--bench` argument) it only
//! prints how to run it. Knobs (environment): `FENCE_BENCH_SECS` (measured seconds per level,
//! default 5), `FENCE_BENCH_WARMUP_SECS` (default 1), `FENCE_BENCH_LEVELS` (default
//! `1,16,256`). See benches/README.md for what the numbers mean.
//!
//! The witnesses run on their own tokio runtime and the load on another, so the load
//! generator is a separate client as it is for etcd (whose servers are separate processes);
//! all of them share the machine's cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arbiter::proto;
use arbiter::proto::fencing_client::FencingClient;
use arbiter::tls::TlsMaterial;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The in-process cluster harness and policy fixtures of the integration tests.
#[path = "../tests/common/mod.rs"]
mod common;
use common::policy::{checkout_only, AB};
use common::{eventually, free_addrs, Cluster, Timing};

mod etcdpb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}
use etcdpb::kv_client::KvClient;
use etcdpb::maintenance_client::MaintenanceClient;

/// Concurrency levels measured when `FENCE_BENCH_LEVELS` is not set.
const LEVELS_DEFAULT: &[usize] = &[1, 16, 256];
/// Measured interval per level: long enough for a stable p99.9 at a few thousand ops/s.
const MEASURE_SECS_DEFAULT: u64 = 5;
/// Warm-up per level: connections open, TLS sessions and allocator caches settle.
const WARMUP_SECS_DEFAULT: u64 = 1;
/// Client tasks sharing one HTTP/2 connection: well under the server's default of 200
/// concurrent streams, so 256 clients use 8 connections and the stream limit never queues.
const CLIENTS_PER_CHANNEL: usize = 32;
/// Deadline of one measured call; a call that takes longer counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout of one try to reach an etcd member while waiting for a leader; the next
/// poll tries again.
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Group whose epoch the arbiter clients check.
const GROUP: &str = "checkout";
/// The key the etcd clients read.
const ETCD_KEY: &[u8] = b"/fence/checkout";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fence bench: not run under `cargo test`; run `cargo bench --bench fence`");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let settings = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug (numbers not meaningful)"
    } else {
        "release (optimised, as `cargo bench` builds)"
    };
    println!("fence bench: {cores} cores, build profile {profile}");
    println!(
        "method: closed loop, {} s warm-up then {} s measured per level; {CLIENTS_PER_CHANNEL} clients per HTTP/2 connection",
        settings.warmup.as_secs(),
        settings.measure.as_secs()
    );

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("witness")
        .build()
        .expect("witness runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("load")
        .build()
        .expect("load runtime");

    let arbiter = server_rt.block_on(start_arbiter());
    let target = load_rt.block_on(ArbiterTarget::find(&arbiter));
    println!(
        "arbiter: 3 witnesses, WAN-default timing, mutual TLS; leader {} at {}; Check {GROUP} region {} epoch {}",
        target.leader_id, target.leader_addr, target.region, target.epoch
    );

    let etcd = match etcd_binary() {
        Some(bin) => {
            let version = etcd_version(&bin);
            let cluster = EtcdCluster::start(&bin);
            let leader = load_rt.block_on(cluster.ready());
            println!(
                "etcd: {version} ({}), 3 members, plain HTTP/2 gRPC, default timing; leader at {leader}; \
                 client: tonic stubs generated from etcd's rpc.proto, KV/Range serializable=false",
                bin.display()
            );
            Some((cluster, leader))
        }
        None => {
            println!("etcd not installed: skipped (apt-get install -y etcd-server)");
            None
        }
    };

    let mut rows = Vec::new();
    for &clients in &settings.levels {
        let a = load_rt.block_on(measure(clients, &settings, || target.connect()));
        let e = etcd.as_ref().map(|(_, leader)| {
            load_rt.block_on(measure(clients, &settings, || etcd_connect(leader)))
        });
        for (name, r) in [("arbiter", Some(&a)), ("etcd", e.as_ref())] {
            if let Some(r) = r.filter(|r| r.errors > 0) {
                println!(
                    "{name} at {clients} clients: {} errors; first: {}",
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        rows.push((clients, a, e));
    }
    print_table(&rows);

    drop(etcd);
    server_rt.block_on(arbiter.stop());
    drop(load_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));
}

/// What the run measures, from the environment or the defaults.
struct Settings {
    levels: Vec<usize>,
    warmup: Duration,
    measure: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let secs = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse::<u64>()
                        .unwrap_or_else(|_| panic!("{name}={v:?}: not a number of seconds"))
                })
                .unwrap_or(default)
        };
        let levels = match std::env::var("FENCE_BENCH_LEVELS") {
            Ok(v) => v
                .split(',')
                .map(|l| match l.trim().parse::<usize>() {
                    Ok(n) if (1..=4096).contains(&n) => n,
                    _ => panic!("FENCE_BENCH_LEVELS={v:?}: want numbers from 1 to 4096"),
                })
                .collect(),
            Err(_) => LEVELS_DEFAULT.to_vec(),
        };
        Settings {
            levels,
            warmup: Duration::from_secs(secs("FENCE_BENCH_WARMUP_SECS", WARMUP_SECS_DEFAULT)),
            measure: Duration::from_secs(secs("FENCE_BENCH_SECS", MEASURE_SECS_DEFAULT).max(1)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement

/// One client's connection and the question it asks, over and over. Clones share the
/// connection.
#[derive(Clone)]
enum Probe {
    Arbiter(FencingClient<Channel>, proto::LeaseRequest),
    Etcd(KvClient<Channel>, etcdpb::RangeRequest),
}

impl Probe {
    /// Asks once; an error, a refusal or a missing key is an `Err`.
    async fn once(&mut self) -> Result<(), String> {
        match self {
            Probe::Arbiter(client, req) => {
                let reply = client
                    .check(req.clone())
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if reply.allowed {
                    Ok(())
                } else {
                    Err(format!("refused: {} ({})", reply.refusal, reply.message))
                }
            }
            Probe::Etcd(client, req) => {
                let reply = client
                    .range(req.clone())
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if reply.kvs.len() == 1 {
                    Ok(())
                } else {
                    Err(format!("{} keys instead of 1", reply.kvs.len()))
                }
            }
        }
    }
}

/// The outcome of one measured interval at one concurrency level.
struct LevelResult {
    /// Successful calls per second of the measured interval.
    ops_per_sec: f64,
    /// Latencies of successful calls, sorted.
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl LevelResult {
    /// Nearest-rank percentile in milliseconds.
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_ns.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.latencies_ns.len()) - 1;
        self.latencies_ns[i] as f64 / 1e6
    }
}

/// Opens connections for `clients` clients (one per [`CLIENTS_PER_CHANNEL`]), warms up, then
/// measures.
async fn measure<F, Fut>(clients: usize, settings: &Settings, mut connect: F) -> LevelResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Probe>,
{
    let channels = clients.div_ceil(CLIENTS_PER_CHANNEL);
    let mut pool = Vec::with_capacity(channels);
    for _ in 0..channels {
        pool.push(connect().await);
    }
    let probes: Vec<Probe> = (0..clients).map(|i| pool[i % channels].clone()).collect();
    let (probes, _) = run_phase(probes, settings.warmup).await;
    let (_, result) = run_phase(probes, settings.measure).await;
    result
}

/// Runs every probe in its own task, back to back, until `duration` has passed.
async fn run_phase(probes: Vec<Probe>, duration: Duration) -> (Vec<Probe>, LevelResult) {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|mut probe| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16 * 1024);
                let mut errors = 0u64;
                let mut first_error = None;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match tokio::time::timeout(CALL_TIMEOUT, probe.once()).await {
                        Ok(Ok(())) => latencies.push(t0.elapsed().as_nanos() as u64),
                        Ok(Err(e)) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        Err(_) => {
                            errors += 1;
                            first_error.get_or_insert(format!("no answer in {CALL_TIMEOUT:?}"));
                        }
                    }
                }
                (probe, latencies, errors, first_error)
            })
        })
        .collect();
    let mut probes = Vec::with_capacity(tasks.len());
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (probe, latencies, e, first) = task.await.expect("client task");
        probes.push(probe);
        all.extend(latencies);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    // The last calls end a little after the deadline: divide by the time really taken.
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let result = LevelResult {
        ops_per_sec: all.len() as f64 / elapsed,
        latencies_ns: all,
        errors,
        first_error,
    };
    (probes, result)
}

fn print_table(rows: &[(usize, LevelResult, Option<LevelResult>)]) {
    println!();
    println!(
        "| clients | arbiter checks/s | p50 ms | p99 ms | p99.9 ms | etcd reads/s | p50 ms | p99 ms | p99.9 ms | arbiter/etcd |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (clients, a, e) in rows {
        let arbiter = format!(
            "{:.0} | {:.3} | {:.3} | {:.3}",
            a.ops_per_sec,
            a.percentile_ms(50.0),
            a.percentile_ms(99.0),
            a.percentile_ms(99.9)
        );
        let (etcd, ratio) = match e {
            Some(e) => (
                format!(
                    "{:.0} | {:.3} | {:.3} | {:.3}",
                    e.ops_per_sec,
                    e.percentile_ms(50.0),
                    e.percentile_ms(99.0),
                    e.percentile_ms(99.9)
                ),
                format!("{:.2}", a.ops_per_sec / e.ops_per_sec),
            ),
            None => ("skipped | - | - | -".to_string(), "-".to_string()),
        };
        println!("| {clients} | {arbiter} | {etcd} | {ratio} |");
    }
}

// ---------------------------------------------------------------------------------------
// Arbiter

/// Starts three witnesses with WAN-default timing (no `[timing]` table), initialises the
/// cluster and applies a policy whose only group, `checkout`, is manual (nothing moves its
/// active region during the run) with the default lease. Runs on the witnesses' runtime.
async fn start_arbiter() -> Cluster {
    let cluster = Cluster::start_timed(3, Timing::WanDefault, "").await;
    cluster.init_with(&checkout_only(AB, "")).await;
    cluster
}

/// Where and what the arbiter clients ask.
struct ArbiterTarget {
    leader_id: u64,
    leader_addr: SocketAddr,
    tls: ClientTlsConfig,
    region: String,
    epoch: u64,
}

impl ArbiterTarget {
    /// Waits until every witness agrees on a leader, then learns the group's active region
    /// and epoch from a refused or allowed check.
    async fn find(cluster: &Cluster) -> ArbiterTarget {
        let leader_id = cluster.leader().await;
        let leader_addr = cluster
            .witnesses
            .iter()
            .find(|w| w.id == leader_id)
            .expect("the leader is a witness")
            .addr;
        let tls = TlsMaterial::load(&cluster.certs.client)
            .expect("client certificate")
            .client_config(None);
        let mut target = ArbiterTarget {
            leader_id,
            leader_addr,
            tls,
            region: "region-a".into(),
            epoch: 1,
        };
        let mut client = target.client().await;
        let (region, epoch) = eventually("a fence check answers", || {
            let mut client = client.clone();
            let req = target.request();
            async move {
                let reply = client.check(req).await.ok()?.into_inner();
                Some((reply.active, reply.epoch))
            }
        })
        .await;
        target.region = region;
        target.epoch = epoch;
        let reply = client
            .check(target.request())
            .await
            .expect("check of the current epoch")
            .into_inner();
        assert!(
            reply.allowed,
            "the current region and epoch must be allowed: {reply:?}"
        );
        target
    }

    fn request(&self) -> proto::LeaseRequest {
        proto::LeaseRequest {
            group: GROUP.into(),
            region: self.region.clone(),
            epoch: self.epoch,
            holder: String::new(),
        }
    }

    /// A probe on a new connection to the leader.
    async fn connect(&self) -> Probe {
        Probe::Arbiter(self.client().await, self.request())
    }

    /// A client on a new connection to the leader.
    async fn client(&self) -> FencingClient<Channel> {
        let channel = Endpoint::from_shared(format!("https://{}", self.leader_addr))
            .expect("leader address")
            .tls_config(self.tls.clone())
            .expect("client tls")
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .expect("connect to the leader");
        FencingClient::new(channel)
    }
}

// ---------------------------------------------------------------------------------------
// etcd

/// The etcd binary: `etcd` on PATH, else Debian's `/usr/bin/etcd`.
fn etcd_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/etcd");
        debian.is_file().then_some(debian)
    })
}

fn etcd_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

/// Three etcd members as child processes. Drop kills each by PID, waits for it, and
/// removes the data dirs, also when the bench panics.
struct EtcdCluster {
    children: Vec<Child>,
    clients: Vec<SocketAddr>,
    /// Data dirs and logs; removed after the children are gone.
    dir: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    fn start(bin: &Path) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_addrs(6);
        let (clients, peers) = ports.split_at(3);
        let initial_cluster: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{}=http://{p}", i + 1))
            .collect();
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            clients: clients.to_vec(),
            dir: None,
        };
        for i in 0..3 {
            let name = format!("e{}", i + 1);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new(bin)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .arg("--listen-client-urls")
                .arg(format!("http://{}", clients[i]))
                .arg("--advertise-client-urls")
                .arg(format!("http://{}", clients[i]))
                .arg("--listen-peer-urls")
                .arg(format!("http://{}", peers[i]))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://{}", peers[i]))
                .arg("--initial-cluster")
                .arg(initial_cluster.join(","))
                .arg("--initial-cluster-token")
                .arg("fence-bench")
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--log-level")
                .arg("warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start etcd");
            cluster.children.push(child);
        }
        cluster.dir = Some(dir);
        cluster
    }

    /// Waits until a member reports a leader, writes [`ETCD_KEY`] and returns the leader's
    /// client address.
    async fn ready(&self) -> SocketAddr {
        let leader = eventually("etcd elects a leader", || async {
            for addr in &self.clients {
                let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
                    .expect("etcd address")
                    .connect_timeout(ETCD_CONNECT_TIMEOUT)
                    .connect()
                    .await
                else {
                    continue;
                };
                let Ok(status) = MaintenanceClient::new(channel)
                    .status(etcdpb::StatusRequest {})
                    .await
                else {
                    continue;
                };
                let status = status.into_inner();
                let member = status.header.as_ref().map_or(0, |h| h.member_id);
                if status.leader != 0 && status.leader == member {
                    return Some(*addr);
                }
            }
            None
        })
        .await;
        eventually("etcd accepts the key", || async {
            let channel = Endpoint::from_shared(format!("http://{leader}"))
                .expect("etcd address")
                .connect()
                .await
                .ok()?;
            KvClient::new(channel)
                .put(etcdpb::PutRequest {
                    key: ETCD_KEY.to_vec(),
                    value: b"region-a:1".to_vec(),
                })
                .await
                .ok()
        })
        .await;
        leader
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Child::kill signals this child's PID only; wait reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.dir.take());
    }
}

/// A probe on a new connection to the etcd leader.
async fn etcd_connect(leader: &SocketAddr) -> Probe {
    let channel = Endpoint::from_shared(format!("http://{leader}"))
        .expect("etcd address")
        .connect_timeout(CALL_TIMEOUT)
        .connect()
        .await
        .expect("connect to the etcd leader");
    let req = etcdpb::RangeRequest {
        key: ETCD_KEY.to_vec(),
        range_end: Vec::new(),
        limit: 0,
        revision: 0,
        serializable: false,
    };
    Probe::Etcd(KvClient::new(channel), req)
}
