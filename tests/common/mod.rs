//! Shared harness of the cluster tests and the fence bench (`benches/fence.rs` includes it
//! by path): dev certificates, in-process witnesses on loopback port 0, a client, the policy
//! fixtures ([`policy`]), and bounded waits on observable conditions (never bare sleeps).

#![allow(dead_code)]

pub mod authoritative;
pub mod policy;
pub mod postgres;
pub mod processes;
pub mod tls;

pub use policy::POLICY;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::certs::{init_dev_certs, DevCerts};
use arbiter::client::Client;
use arbiter::config::NodeConfig;
use arbiter::node::Node;
use arbiter::proto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Generous deadline for anything a cluster should do "soon": elections with WAN-sized
/// timeouts on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Writes an executable `#!/bin/sh` script named `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The error and its sources, one after another, so assertions can look at the cause.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Wall-clock nanoseconds, comparable with `date +%s%N` in a hook or agent command.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Polls `check` until it returns `Some`, or panics after `DEADLINE` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` for the whole of `window` and panics, naming `what`, the first time it
/// returns false: for what must *not* happen (no operation starts, nothing is published)
/// over a window long enough for it to have happened.
pub async fn always_for<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        assert!(check().await, "did not hold for {window:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` distinct free loopback ports: bound to port 0, read, then released for the servers.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Sites of the in-process witnesses by id: the topology of DESIGN.md for 3 or 5 voters.
const SITES: [&str; 5] = ["region-a", "region-b", "tiebreaker", "region-a", "region-b"];

/// How the witnesses of a test cluster are timed: the `[timing]` table of their node files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Short: elections of about a second keep tests quick.
    Test,
    /// No `[timing]` table: the production defaults, WAN-sized (what the bench measures).
    WanDefault,
}

impl Timing {
    fn table(self) -> &'static str {
        match self {
            Timing::Test => {
                "
[timing]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
rpc_timeout_ms = 500
"
            }
            Timing::WanDefault => "",
        }
    }
}

/// Node file text for witness `id` of a cluster whose witnesses listen on `addrs`, with
/// [`Timing::Test`].
pub fn node_toml(
    id: u64,
    addrs: &[SocketAddr],
    data_dir: &Path,
    tls: &arbiter::tls::TlsPaths,
) -> String {
    let peers: Vec<u64> = (1..=addrs.len() as u64).collect();
    node_toml_with(id, addrs, &peers, &SITES, data_dir, tls, Timing::Test)
}

/// Node file text for witness `id` listing only `peers` (ids) as initial peers; witness `n`
/// is at site `sites[(n - 1) % sites.len()]`. Shared by the in-process and the process-level
/// harness.
pub fn node_toml_with(
    id: u64,
    addrs: &[SocketAddr],
    peers: &[u64],
    sites: &[&str],
    data_dir: &Path,
    tls: &arbiter::tls::TlsPaths,
    timing: Timing,
) -> String {
    let site = |n: u64| sites[(n as usize - 1) % sites.len()];
    let peers: Vec<String> = peers
        .iter()
        .map(|&p| {
            format!(
                "{{ id = {p}, addr = \"{}\", site = \"{}\" }}",
                addrs[p as usize - 1],
                site(p)
            )
        })
        .collect();
    format!(
        r#"id = {id}
site = "{site}"
data_dir = "{data}"
listen = "{listen}"
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
peers = [{peers}]
{timing}"#,
        site = site(id),
        data = data_dir.display(),
        listen = addrs[id as usize - 1],
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        peers = peers.join(", "),
        timing = timing.table(),
    )
}

/// One in-process witness and what is needed to restart it from its data dir.
pub struct Witness {
    pub id: u64,
    pub addr: SocketAddr,
    pub config: NodeConfig,
    pub node: Option<Node>,
    stop: Option<oneshot::Sender<()>>,
}

impl Witness {
    pub async fn start(config: NodeConfig) -> Witness {
        let listener = bind_retry(config.listen).await;
        let (tx, rx) = oneshot::channel::<()>();
        let node = Node::start(config.clone(), listener, async {
            let _ = rx.await;
        })
        .await
        .expect("witness starts");
        Witness {
            id: config.id,
            addr: node.local_addr,
            config,
            node: Some(node),
            stop: Some(tx),
        }
    }

    /// Stops the witness (as a crash would: no goodbye to peers); its data dir stays.
    pub async fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
        self.stop.take();
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        *self = Witness::start(self.config.clone()).await;
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("witness is running")
    }
}

/// Binds `addr`, retrying briefly: a just-stopped witness may still hold the port.
async fn bind_retry(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {addr}");
}

/// A cluster of in-process witnesses on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
    pub witnesses: Vec<Witness>,
}

impl Cluster {
    /// Starts `n` witnesses (not yet initialised).
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, "").await
    }

    /// Starts `n` witnesses whose node files end with `extra` (TOML tables).
    pub async fn start_with(n: usize, extra: &str) -> Cluster {
        Self::start_timed(n, Timing::Test, extra).await
    }

    /// Starts `n` witnesses with `timing` whose node files end with `extra` (TOML tables).
    pub async fn start_timed(n: usize, timing: Timing, extra: &str) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let certs = init_dev_certs(
            &dir.path().join("certs"),
            &arbiter::certs::default_sites(n as u32),
            &[],
            false,
        )
        .unwrap();
        // Reserve ports first so every node file can list all peers.
        let addrs = free_addrs(n);
        let mut witnesses = Vec::new();
        for id in 1..=n as u64 {
            let config = Self::config(dir.path(), &certs, id, &addrs, timing, extra);
            witnesses.push(Witness::start(config).await);
        }
        Cluster {
            dir,
            certs,
            witnesses,
        }
    }

    pub fn config(
        dir: &Path,
        certs: &DevCerts,
        id: u64,
        addrs: &[SocketAddr],
        timing: Timing,
        extra: &str,
    ) -> NodeConfig {
        let data = dir.join(format!("node-{id}"));
        let peers: Vec<u64> = (1..=addrs.len() as u64).collect();
        let tls = &certs.nodes[id as usize - 1];
        let text = node_toml_with(id, addrs, &peers, &SITES, &data, tls, timing)
            + &extra.replace("{id}", &id.to_string());
        NodeConfig::parse("node.toml", &text, dir).expect("valid node file")
    }

    pub fn addrs(&self) -> Vec<String> {
        self.witnesses.iter().map(|w| w.addr.to_string()).collect()
    }

    /// A client that knows only witness `i` (0-based): it must follow redirects itself.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new(vec![self.witnesses[i].addr.to_string()], &self.certs.client).unwrap()
    }

    /// A client that knows every witness (dead ones are skipped).
    pub fn client_for(cluster: &Cluster) -> Client {
        cluster.client()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addrs(), &self.certs.client).unwrap()
    }

    /// Initialises the cluster through witness 1 and applies [`POLICY`].
    pub async fn init_with_policy(&self) -> String {
        self.init_with(POLICY).await
    }

    /// Initialises the cluster and applies `policy`.
    pub async fn init_with(&self, policy: &str) -> String {
        let client = self.client();
        let reply = client.init().await.expect("init");
        client
            .policy_apply(proto::PolicyApplyRequest {
                request_id: "policy-1".into(),
                ..apply_request(policy)
            })
            .await
            .expect("policy applies");
        reply.cluster_id
    }

    /// The id of the leader, once every running witness agrees on one.
    pub async fn leader(&self) -> u64 {
        eventually("all running witnesses agree on a leader", || async {
            let views: Vec<_> = self
                .witnesses
                .iter()
                .filter_map(|w| w.node.as_ref())
                .map(|n| n.consensus.view().leader)
                .collect();
            let first = views.first().copied().flatten()?;
            let running: Vec<u64> = self
                .witnesses
                .iter()
                .filter(|w| w.node.is_some())
                .map(|w| w.id)
                .collect();
            (running.contains(&first) && views.iter().all(|v| *v == Some(first))).then_some(first)
        })
        .await
    }

    /// An HTTPS client presenting the cluster's client certificate (mutual TLS).
    pub fn https_client(&self) -> reqwest::Client {
        https_client_with(&self.certs.client)
    }

    /// Cuts every Raft link between witness `id` and the others, both ways; they keep
    /// running. [`Self::heal`] restores them.
    pub fn isolate(&self, id: u64) {
        let target = self
            .witnesses
            .iter()
            .find(|w| w.id == id)
            .unwrap()
            .addr
            .to_string();
        for w in &self.witnesses {
            if w.id == id {
                for other in self.witnesses.iter().filter(|o| o.id != id) {
                    w.node().link_faults.cut(&other.addr.to_string());
                }
            } else {
                w.node().link_faults.cut(&target);
            }
        }
    }

    /// Restores every cut Raft link of the running witnesses.
    pub fn heal(&self) {
        for w in self.witnesses.iter().filter(|w| w.node.is_some()) {
            w.node().link_faults.heal_all();
        }
    }

    pub fn witness(&mut self, id: u64) -> &mut Witness {
        self.witnesses
            .iter_mut()
            .find(|w| w.id == id)
            .expect("known witness")
    }

    pub async fn stop(mut self) {
        for w in &mut self.witnesses {
            w.kill().await;
        }
    }
}

pub fn data_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}"))
}

pub async fn status(client: &Client) -> proto::StatusReply {
    client.status(100).await.expect("status")
}

/// A request to commit `policy` (no dry run, no version check) under a new request id.
pub fn apply_request(policy: &str) -> proto::PolicyApplyRequest {
    proto::PolicyApplyRequest {
        toml: policy.to_string(),
        dry_run: false,
        if_version: 0,
        request_id: arbiter::api::new_request_id(),
    }
}

/// Starts a failover of `group` to `to` and waits until the operation is done.
pub async fn failover(
    client: &Client,
    group: &str,
    to: &str,
) -> Result<proto::OperationStatus, arbiter::client::ClientError> {
    let op = start_failover(client, group, to).await?;
    Ok(wait_operation(client, op.id, "done").await)
}

/// Starts a failover and returns the declared operation.
pub async fn start_failover(
    client: &Client,
    group: &str,
    to: &str,
) -> Result<proto::OperationStatus, arbiter::client::ClientError> {
    let reply = client
        .failover(proto::FailoverRequest {
            group: group.into(),
            to: to.into(),
            reason: "test".into(),
            request_id: arbiter::api::new_request_id(),
        })
        .await?;
    Ok(reply.operation.expect("operation in reply"))
}

/// Polls an operation until its state is `state`.
pub async fn wait_operation(client: &Client, id: u64, state: &str) -> proto::OperationStatus {
    eventually(&format!("operation {id} is {state}"), || async {
        let op = operation(client, id).await?;
        (op.state == state).then_some(op)
    })
    .await
}

/// The operation `id`, if the cluster answers.
pub async fn operation(client: &Client, id: u64) -> Option<proto::OperationStatus> {
    client.operation("", id).await.ok().flatten()
}

/// An HTTPS client of the witness listener presenting the certificate of `c`.
pub fn https_client_with(c: &arbiter::tls::TlsPaths) -> reqwest::Client {
    arbiter::tls::install_crypto_provider();
    let mut pem = std::fs::read(&c.cert).unwrap();
    pem.extend(std::fs::read(&c.key).unwrap());
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&c.ca).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// Asserts the call was refused as `PERMISSION_DENIED`, saying `needle`.
pub fn denied<T>(what: &str, result: Result<T, tonic::Status>, needle: &str) {
    let Err(status) = result else {
        panic!("{what} was answered")
    };
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains(needle),
        "{what}: the denial should say {needle:?}: {status:?}"
    );
}
