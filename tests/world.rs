//! The seams a simulation swaps (`node::World`): a witness whose hooks, external DNS
//! servers, region probes, wall clock and storage are all the test's own runs an automatic
//! failover end to end, and every one of them is what it used: the hook calls and the DNS
//! UPDATE are recorded by the test, the probes are scripted, the timestamps are the test's
//! clock, and nothing is written to the data directory.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::certs::init_dev_certs;
use arbiter::client::Client;
use arbiter::config::{DnsServer, Hook, ProbeSpec};
use arbiter::dns::{DnsClient, DnsUpdateError, DriftReport, MarkerVerdict, Publication, Published};
use arbiter::fencing::{LeaseService, LeaseState};
use arbiter::health::{ProbeResult, ProbeRunner};
use arbiter::hooks::{HookContext, HookOutcome, HookRunner};
use arbiter::node::{Node, World};
use arbiter::raft::Stores;
use arbiter::wallclock::ManualClock;
use common::*;
use futures::future::BoxFuture;
use tokio::net::TcpListener;

/// One hook call: (step, hook name, group, from, to, epoch).
type HookCall = (String, String, String, String, String, u64);

/// The hook calls the leader made.
#[derive(Default)]
struct RecordedHooks(Mutex<Vec<HookCall>>);

impl HookRunner for RecordedHooks {
    fn run<'a>(
        &'a self,
        name: &'a str,
        _hook: &'a Hook,
        ctx: &'a HookContext,
    ) -> BoxFuture<'a, HookOutcome> {
        self.0.lock().unwrap().push((
            ctx.step.clone(),
            name.to_string(),
            ctx.group.clone(),
            ctx.from.clone(),
            ctx.to.clone(),
            ctx.epoch,
        ));
        Box::pin(async {
            HookOutcome {
                success: true,
                summary: "recorded".into(),
                output: String::new(),
                duration: Duration::ZERO,
                fence_confirmed: None,
                http_status: None,
            }
        })
    }
}

/// The UPDATEs the leader sent: (server, region, epoch). Every server reads as in sync.
#[derive(Default)]
struct RecordedDns(Mutex<Vec<(String, String, u64)>>);

impl DnsClient for RecordedDns {
    fn publish_to<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<Published, DnsUpdateError>> {
        self.0.lock().unwrap().push((
            server.address.clone(),
            publication.decision.region.clone(),
            publication.decision.epoch,
        ));
        Box::pin(async {
            Ok(Published::Updated {
                serial: 1,
                replaced: MarkerVerdict::Absent,
            })
        })
    }

    fn drift<'a>(
        &'a self,
        _server: &'a DnsServer,
        _publication: &'a Publication,
    ) -> BoxFuture<'a, Result<DriftReport, DnsUpdateError>> {
        Box::pin(async {
            Ok(DriftReport {
                records: Vec::new(),
                marker: MarkerVerdict::Same,
                marker_found: Vec::new(),
            })
        })
    }
}

/// Region-a answers its probes while `a_up` holds; region-b always does.
struct ScriptedProbes {
    a_up: AtomicBool,
    asked: Mutex<Vec<String>>,
}

impl ProbeRunner for ScriptedProbes {
    fn probe(&self, region: &str, _spec: &ProbeSpec) -> BoxFuture<'static, ProbeResult> {
        self.asked.lock().unwrap().push(region.to_string());
        let ok = region != "region-a" || self.a_up.load(Ordering::SeqCst);
        Box::pin(async move {
            ProbeResult {
                ok,
                detail: if ok { "scripted up" } else { "scripted down" }.into(),
                latency: Duration::ZERO,
            }
        })
    }
}

/// Far from any real clock, so a timestamp from the system clock cannot pass for it.
const CLOCK_MS: u64 = 4_102_444_800_000;

fn policy(secret: &std::path::Path) -> String {
    format!(
        r#"
[[regions]]
name = "region-a"
probes = [{{ kind = "tcp", addr = "127.0.0.1:9", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]
[[regions]]
name = "region-b"
probes = [{{ kind = "tcp", addr = "127.0.0.1:9", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]

[dns]
zones = [{{ name = "shop.test.", nameservers = ["ns1.shop.test."] }}]
servers = [{{ address = "127.0.0.1:9", zone = "shop.test.", tsig_key = "arbiter.", algorithm = "hmac-sha256", secret = {{ file = "{secret}" }} }}]

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "auto"
lease_ms = 1000
lease_margin_ms = 200
down_after_ms = 600
cooldown_ms = 0
hooks = {{ fence = ["fence-db"], promote = ["promote-db"] }}

[groups.dns]
zone = "shop.test."
name = "www.shop.test."
ttl = 30
records = {{ region-a = {{ type = "A", values = ["192.0.2.10"] }}, region-b = {{ type = "A", values = ["198.51.100.20"] }} }}

[hooks.fence-db]
kind = "exec"
program = "/bin/true"

[hooks.promote-db]
kind = "exec"
program = "/bin/true"
"#,
        secret = secret.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_in_a_world_of_the_tests_own_fails_over_through_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = init_dev_certs(
        &dir.path().join("certs"),
        &arbiter::certs::default_sites(1),
        &[],
        false,
    )
    .unwrap();
    let addrs = free_addrs(1);
    let config = Cluster::config(dir.path(), &certs, 1, &addrs, Timing::Test, "");
    let data_dir = config.data_dir.clone();
    let secret = dir.path().join("tsig.key");
    std::fs::write(&secret, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").unwrap();

    let hooks = Arc::new(RecordedHooks::default());
    let dns = Arc::new(RecordedDns::default());
    let probes = Arc::new(ScriptedProbes {
        a_up: AtomicBool::new(true),
        asked: Mutex::default(),
    });
    let world = World {
        hooks: hooks.clone(),
        dns: dns.clone(),
        probes: Some(probes.clone()),
        clock: Arc::new(ManualClock::new(CLOCK_MS)),
        stores: Some(Stores::on(redb::backends::InMemoryBackend::new(), "in memory").unwrap()),
    };
    let listener = TcpListener::bind(addrs[0]).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = Node::start_in(
        config,
        listener,
        async {
            let _ = stopped.await;
        },
        world,
    )
    .await
    .expect("witness starts");
    let client = Client::new(vec![node.local_addr.to_string()], &certs.client).unwrap();
    client.init().await.expect("init");
    client
        .policy_apply(apply_request(&policy(&secret)))
        .await
        .expect("policy applies");
    eventually("region-b probed as up", || async {
        probes
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "region-b")
            .then_some(())
    })
    .await;

    probes.a_up.store(false, Ordering::SeqCst);
    let op = wait_operation(&client, 1, "done").await;
    assert_eq!(
        (op.group.as_str(), op.to.as_str()),
        ("checkout", "region-b")
    );
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    let (active, epoch) = (g.active.clone(), g.epoch);
    assert_eq!((active.as_str(), epoch), ("region-b", 2));

    // Every hook ran through the test's runner, for the committed decision.
    let calls = hooks.0.lock().unwrap().clone();
    for step in ["fence", "promote"] {
        let name = format!("{step}-db");
        assert!(
            calls.iter().any(|(s, n, g, from, to, e)| s == step
                && *n == name
                && g == "checkout"
                && from == "region-a"
                && to == "region-b"
                && *e == 2),
            "{step} hook not called through the runner: {calls:?}"
        );
    }
    // The dns step's UPDATE went through the test's client, for epoch 2 in region-b.
    let updates = dns.0.lock().unwrap().clone();
    assert!(
        updates
            .iter()
            .any(|(server, region, e)| server == "127.0.0.1:9" && region == "region-b" && *e == 2),
        "no UPDATE through the client: {updates:?}"
    );
    // Every timestamp is the test's clock.
    let s = status(&client).await;
    assert!(!s.audit.is_empty());
    for a in &s.audit {
        assert_eq!(
            a.at_ms, CLOCK_MS,
            "audit entry {} stamped by another clock",
            a.seq
        );
    }
    // The stores were the test's: nothing in the data dir.
    assert!(
        !data_dir.join(arbiter::raft::store::DB_FILE_NAME).exists(),
        "the witness wrote its data dir"
    );

    let _ = stop.send(());
    node.stop().await;
}

/// The lease as the test answers it: granted at epoch 1 for `LEASE` until `revoked`, then
/// refused as a revoked holder would be.
struct ScriptedLease {
    revoked: AtomicBool,
    renewals: std::sync::atomic::AtomicU64,
}

const LEASE: Duration = Duration::from_millis(400);

impl ScriptedLease {
    fn answer(&self) -> Result<LeaseState, arbiter::client::ClientError> {
        Ok(if self.revoked.load(Ordering::SeqCst) {
            LeaseState::Refused {
                active: "region-b".into(),
                epoch: 2,
                refusal: "revoked".into(),
                message: "region-a's lease was revoked".into(),
            }
        } else {
            LeaseState::Held {
                epoch: 1,
                lease: LEASE,
                deadline: tokio::time::Instant::now() + LEASE,
            }
        })
    }
}

impl LeaseService for ScriptedLease {
    fn acquire(&self) -> BoxFuture<'_, Result<LeaseState, arbiter::client::ClientError>> {
        Box::pin(async { self.answer() })
    }

    fn renew(
        &self,
        _epoch: u64,
    ) -> BoxFuture<'_, Result<LeaseState, arbiter::client::ClientError>> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { self.answer() })
    }

    fn bound_by_lease(&mut self, _lease: Duration) {}
}

/// An agent asking the test's lease service and stamping with the test's clock: it gains,
/// renews, and fences when the test revokes, with every state-file time the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_the_tests_lease_service_and_clock_gains_and_fences_through_them() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (gained, lost, state_file) = (
        dir.path().join("gained"),
        dir.path().join("lost"),
        dir.path().join("state.json"),
    );
    let mut config = arbiter::agent::AgentConfig::new("checkout", "region-a", "db-a");
    config.on_gain = Some(format!("touch {}", gained.display()));
    config.on_lose = Some(format!("touch {}", lost.display()));
    config.state_file = Some(state_file.clone());
    config.retry = Duration::from_millis(100);
    let lease = Arc::new(ScriptedLease {
        revoked: AtomicBool::new(false),
        renewals: Default::default(),
    });
    struct Shared(Arc<ScriptedLease>);
    impl LeaseService for Shared {
        fn acquire(&self) -> BoxFuture<'_, Result<LeaseState, arbiter::client::ClientError>> {
            self.0.acquire()
        }
        fn renew(
            &self,
            epoch: u64,
        ) -> BoxFuture<'_, Result<LeaseState, arbiter::client::ClientError>> {
            self.0.renew(epoch)
        }
        fn bound_by_lease(&mut self, _lease: Duration) {}
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(arbiter::agent::run_with(
        config,
        Box::new(Shared(lease.clone())),
        Arc::new(ManualClock::new(CLOCK_MS)),
        async {
            let _ = stopped.await;
        },
    ));
    eventually("on-gain ran", || async { gained.exists().then_some(()) }).await;
    eventually("the lease is renewed", || async {
        (lease.renewals.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    assert!(!lost.exists(), "fenced while the lease was granted");
    lease.revoked.store(true, Ordering::SeqCst);
    eventually("on-lose ran after the revoke", || async {
        lost.exists().then_some(())
    })
    .await;
    let state: arbiter::agent::AgentState =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert!(!state.holding);
    assert_eq!((state.since_ms, state.updated_at_ms), (CLOCK_MS, CLOCK_MS));
    let _ = stop.send(());
    agent.await.unwrap();
}

/// An in-memory disk that fails every write and sync once `failing` is set, as a disk that
/// died under a running witness would.
#[derive(Debug)]
struct DyingDisk {
    inner: redb::backends::InMemoryBackend,
    failing: Arc<AtomicBool>,
}

impl DyingDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the disk died"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for DyingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

/// A witness whose consensus core stops on its own (here its disk dies, which openraft
/// treats as fatal) stops serving and says why, instead of answering from a state that no
/// longer moves; `arbiter serve` then exits non-zero for its supervisor to restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_whose_consensus_core_stopped_stops_serving() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = init_dev_certs(
        &dir.path().join("certs"),
        &arbiter::certs::default_sites(1),
        &[],
        false,
    )
    .unwrap();
    let addrs = free_addrs(1);
    let config = Cluster::config(dir.path(), &certs, 1, &addrs, Timing::Test, "");
    let secret = dir.path().join("tsig.key");
    std::fs::write(&secret, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let disk = DyingDisk {
        inner: redb::backends::InMemoryBackend::new(),
        failing: failing.clone(),
    };
    let world = World {
        hooks: Arc::new(RecordedHooks::default()),
        dns: Arc::new(RecordedDns::default()),
        probes: Some(Arc::new(ScriptedProbes {
            a_up: AtomicBool::new(true),
            asked: Mutex::default(),
        })),
        clock: Arc::new(ManualClock::new(CLOCK_MS)),
        stores: Some(Stores::on(disk, "dying disk").unwrap()),
    };
    let listener = TcpListener::bind(addrs[0]).await.unwrap();
    let node = Node::start_in(config, listener, std::future::pending(), world)
        .await
        .expect("witness starts");
    let client = Client::new(vec![node.local_addr.to_string()], &certs.client).unwrap();
    client.init().await.expect("init");
    let mut waiting = tokio::spawn(node.wait());
    // Serving while the disk works: the wait has not ended.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "the witness stopped with a working disk"
    );

    failing.store(true, Ordering::SeqCst);
    // A write the core must persist: the policy.
    let _ = client.policy_apply(apply_request(&policy(&secret))).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the witness went on serving after its consensus core stopped")
        .unwrap();
    let err = ended.expect_err("a stopped core ends the witness with an error");
    assert!(
        matches!(err, arbiter::node::NodeError::ConsensusStopped),
        "{err}"
    );
    assert!(err.to_string().contains("consensus core stopped"), "{err}");
}
