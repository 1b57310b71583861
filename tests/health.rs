//! Region probes against real loopback endpoints started by the tests: an HTTP server that
//! can answer 200 or 503 and be stopped, a TCP listener that can be closed, a gRPC health
//! server whose status can be set, and a listener that accepts but never answers. Then the
//! probe loop: its state follows the endpoint down and back up. Last, the probe source
//! address: each protocol's connection must start from it, as the endpoint sees it.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::config::{ProbeSpec, ProbeTarget};
use arbiter::health::{check_source, probe_once, ProbeOptions, Prober, RegionObservation};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::get;
use common::{always_for, eventually, init_tracing, DEADLINE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The peer IP address of each request an endpoint served, in order.
type Peers = Arc<Mutex<Vec<IpAddr>>>;

/// An HTTP endpoint on loopback whose `/health` answers the current status with body
/// `ok` (200) or `degraded` (anything else), counts requests and records who sent them.
struct HttpEndpoint {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    peers: Peers,
    server: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct HttpShared {
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    peers: Peers,
}

impl HttpEndpoint {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut endpoint = Self {
            addr,
            status: Arc::new(AtomicU16::new(200)),
            hits: Arc::default(),
            peers: Arc::default(),
            server: None,
        };
        endpoint.serve(listener);
        endpoint
    }

    fn serve(&mut self, listener: TcpListener) {
        async fn health(
            State(shared): State<HttpShared>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
        ) -> (StatusCode, &'static str) {
            shared.hits.fetch_add(1, Ordering::SeqCst);
            shared.peers.lock().unwrap().push(peer.ip());
            let code = StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap();
            (
                code,
                if code == StatusCode::OK {
                    "ok"
                } else {
                    "degraded"
                },
            )
        }
        let app = axum::Router::new()
            .route("/health", get(health))
            .with_state(HttpShared {
                status: self.status.clone(),
                hits: self.hits.clone(),
                peers: self.peers.clone(),
            });
        self.server = Some(tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    /// The peer address of the latest request served.
    fn last_peer(&self) -> Option<IpAddr> {
        self.peers.lock().unwrap().last().copied()
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Stops serving and closes the listening socket (the serve task owns it).
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Serves again on the same address.
    async fn restart(&mut self) {
        let listener = bind_retry(self.addr).await;
        self.serve(listener);
    }
}

/// Binding a just-closed port can fail briefly; retry within the deadline.
async fn bind_retry(addr: SocketAddr) -> TcpListener {
    eventually("re-bind the endpoint's port", || async move {
        TcpListener::bind(addr).await.ok()
    })
    .await
}

/// A gRPC server with only `grpc.health.v1.Health`, plaintext or TLS, that records the peer
/// address of each request.
struct GrpcEndpoint {
    addr: SocketAddr,
    reporter: HealthReporter,
    peers: Peers,
    server: JoinHandle<()>,
}

impl GrpcEndpoint {
    async fn start(tls: Option<ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let peers: Peers = Arc::default();
        let record = peers.clone();
        let service = InterceptedService::new(service, move |req: tonic::Request<()>| {
            if let Some(peer) = req.remote_addr() {
                record.lock().unwrap().push(peer.ip());
            }
            Ok(req)
        });
        let router = builder.add_service(service);
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            addr,
            reporter,
            peers,
            server,
        }
    }
}

/// A listener that accepts connections and never writes a byte.
async fn silent_listener() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test opens a handful of connections.
        while held.len() < 64 {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            held.push(socket);
        }
    });
    (addr, task)
}

fn http(url: &str) -> ProbeSpec {
    ProbeSpec::new(ProbeTarget::Http {
        url: url.into(),
        expect_status: 200,
        body_contains: None,
        ca: None,
    })
}

fn tcp(addr: SocketAddr) -> ProbeSpec {
    ProbeSpec::new(ProbeTarget::Tcp {
        addr: addr.to_string(),
    })
}

fn grpc(addr: &str, service: &str, tls: bool, ca: Option<PathBuf>) -> ProbeSpec {
    ProbeSpec::new(ProbeTarget::Grpc {
        addr: addr.into(),
        service: service.into(),
        tls,
        ca,
    })
}

/// Runs one probe with default options, bounded by the test deadline so a hung probe fails
/// the test.
async fn probe(spec: &ProbeSpec) -> arbiter::health::ProbeResult {
    probe_with(spec, ProbeOptions::default()).await
}

async fn probe_with(spec: &ProbeSpec, options: ProbeOptions) -> arbiter::health::ProbeResult {
    spec.validate("test").expect("test specs are valid");
    tokio::time::timeout(DEADLINE, probe_once(spec, options))
        .await
        .expect("a probe ends within its timeout")
}

/// A loopback address other than 127.0.0.1: Linux routes all of 127.0.0.0/8 to the loopback
/// interface, so it can be bound without setup, and a peer seen from it can only have come
/// from a socket bound to it.
const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

fn from_source() -> ProbeOptions {
    ProbeOptions {
        source: Some(SOURCE),
    }
}

/// Goal: an HTTP probe passes only on the expected status and body, and fails when the
/// server is gone. Method: one endpoint, switched between 200 and 503, then stopped.
#[tokio::test]
async fn http_probe_checks_status_and_body() {
    init_tracing();
    let mut endpoint = HttpEndpoint::start().await;

    tracing::info!("--- 200 with the expected body");
    let r = probe(&http(&endpoint.url())).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "200");
    let with_body = |text: &str| {
        let mut spec = http(&endpoint.url());
        if let ProbeTarget::Http { body_contains, .. } = &mut spec.target {
            *body_contains = Some(text.into());
        }
        spec
    };
    assert!(probe(&with_body("ok")).await.ok);

    tracing::info!("--- 200 but the body lacks the text");
    let r = probe(&with_body("all systems go")).await;
    assert!(!r.ok);
    assert!(r.detail.contains("body lacks"), "{r:?}");

    tracing::info!("--- wrong status");
    endpoint.set_status(503);
    let r = probe(&http(&endpoint.url())).await;
    assert!(!r.ok);
    assert_eq!(r.detail, "status 503, expected 200");
    let mut expect_503 = http(&endpoint.url());
    if let ProbeTarget::Http { expect_status, .. } = &mut expect_503.target {
        *expect_status = 503;
    }
    assert!(
        probe(&expect_503).await.ok,
        "the expected status is what counts"
    );

    tracing::info!("--- server stopped");
    endpoint.stop().await;
    let r = probe(&http(&endpoint.url())).await;
    assert!(!r.ok);
    assert!(r.detail.starts_with("connect:"), "{r:?}");
}

/// Goal: a TCP probe passes while the listener accepts and fails once it is closed.
#[tokio::test]
async fn tcp_probe_follows_the_listener() {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = probe(&tcp(addr)).await;
    assert!(r.ok, "{r:?}");

    drop(listener);
    let r = probe(&tcp(addr)).await;
    assert!(!r.ok);
    assert!(r.detail.starts_with("connect:"), "{r:?}");
}

/// Goal: a gRPC probe passes only on SERVING. Method: a tonic-health server set to
/// NOT_SERVING and back, asked about the whole server, a named service and an unknown one;
/// then the server stops.
#[tokio::test]
async fn grpc_probe_reads_the_serving_status() {
    init_tracing();
    let endpoint = GrpcEndpoint::start(None).await;
    let addr = endpoint.addr.to_string();
    endpoint
        .reporter
        .set_service_status("checkout", ServingStatus::Serving)
        .await;

    tracing::info!("--- serving");
    let r = probe(&grpc(&addr, "", false, None)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "SERVING");
    assert!(probe(&grpc(&addr, "checkout", false, None)).await.ok);

    tracing::info!("--- not serving");
    endpoint
        .reporter
        .set_service_status("checkout", ServingStatus::NotServing)
        .await;
    let r = probe(&grpc(&addr, "checkout", false, None)).await;
    assert!(!r.ok);
    assert_eq!(r.detail, "NOT_SERVING");
    assert!(
        probe(&grpc(&addr, "", false, None)).await.ok,
        "only checkout changed"
    );

    tracing::info!("--- unknown service");
    let r = probe(&grpc(&addr, "catalog", false, None)).await;
    assert!(!r.ok);
    assert!(r.detail.contains("NotFound"), "{r:?}");

    tracing::info!("--- server stopped");
    endpoint.server.abort();
    let _ = endpoint.server.await;
    let r = probe(&grpc(&addr, "", false, None)).await;
    assert!(!r.ok, "{r:?}");
}

/// Goal: TLS probes trust exactly the configured CA. Method: a gRPC health server with a
/// development certificate; probed over TLS with its CA (pass), without it (the system roots
/// do not know the dev CA: fail), and in plaintext (fail). An https probe against the same
/// listener checks reqwest's CA handling the same way.
#[tokio::test]
async fn tls_probes_trust_the_configured_ca() {
    init_tracing();
    arbiter::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs =
        arbiter::certs::init_dev_certs(dir.path(), &arbiter::certs::default_sites(1), &[], false)
            .unwrap();
    let node = &certs.nodes[0];
    let identity = Identity::from_pem(
        std::fs::read(&node.cert).unwrap(),
        std::fs::read(&node.key).unwrap(),
    );
    let endpoint = GrpcEndpoint::start(Some(ServerTlsConfig::new().identity(identity))).await;
    let addr = format!("localhost:{}", endpoint.addr.port());
    let ca = Some(certs.ca_cert.clone());

    tracing::info!("--- grpc over TLS");
    let r = probe(&grpc(&addr, "", true, ca.clone())).await;
    assert!(r.ok, "{r:?}");
    let r = probe(&grpc(&addr, "", true, None)).await;
    assert!(!r.ok, "a certificate from an unknown CA must fail: {r:?}");
    assert!(r.detail.contains("UnknownIssuer"), "{r:?}");
    let r = probe(&grpc(&addr, "", false, None)).await;
    assert!(!r.ok, "plaintext against a TLS server must fail: {r:?}");

    tracing::info!("--- https");
    // tonic answers any HTTP/2 request with status 200 (the gRPC error is in the trailers),
    // which is enough to show the TLS handshake succeeded.
    let url = format!("https://{addr}/health");
    let mut with_ca = http(&url);
    if let ProbeTarget::Http { ca: c, .. } = &mut with_ca.target {
        *c = ca.clone();
    }
    let r = probe(&with_ca).await;
    assert!(r.ok, "{r:?}");
    let r = probe(&http(&url)).await;
    assert!(!r.ok, "a certificate from an unknown CA must fail: {r:?}");
    assert!(r.detail.contains("UnknownIssuer"), "{r:?}");
}

/// Goal: an endpoint that accepts connections but never answers fails by the probe's
/// timeout rather than hanging. Method: a silent listener probed over HTTP and gRPC.
#[tokio::test]
async fn silent_endpoint_fails_by_the_timeout() {
    init_tracing();
    let (addr, _task) = silent_listener().await;
    for mut spec in [
        http(&format!("http://{addr}/health")),
        grpc(&addr.to_string(), "", false, None),
    ] {
        spec.timeout_ms = 300;
        let r = probe(&spec).await;
        assert!(!r.ok, "{r:?}");
        assert!(r.detail.contains("timeout"), "{r:?}");
        assert!(r.latency >= Duration::from_millis(300), "{r:?}");
    }
}

/// Fast schedule for the probe loop tests.
fn fast(mut spec: ProbeSpec) -> ProbeSpec {
    spec.interval_ms = 100;
    spec.timeout_ms = 80;
    spec.jitter_ms = 20;
    spec.validate("test").unwrap();
    spec
}

fn region(prober: &Prober, name: &str) -> Option<RegionObservation> {
    prober.snapshot().into_iter().find(|o| o.region == name)
}

/// Goal: the probe loop's state follows the endpoint: failing after it stops, passing after
/// it returns, with `since` moved to each change. Method: one region probed over HTTP and
/// TCP; the HTTP server stops and restarts on the same port. `since` must fall after the
/// moment the change was caused (orderings only, no absolute timings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prober_state_follows_the_endpoint_down_and_back() {
    init_tracing();
    let mut endpoint = HttpEndpoint::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let specs = BTreeMap::from([(
        "region-a".to_string(),
        vec![fast(http(&endpoint.url())), fast(tcp(tcp_addr))],
    )]);
    let prober = Prober::start(specs, ProbeOptions::default());

    tracing::info!("--- passing");
    let first = eventually("region-a passes", || async {
        region(&prober, "region-a").filter(|o| o.ok)
    })
    .await;
    assert!(
        first.detail.contains("200") && first.detail.contains("connected"),
        "{first:?}"
    );

    tracing::info!("--- the HTTP endpoint stops");
    let stopped_at = Instant::now();
    endpoint.stop().await;
    let down = eventually("region-a fails", || async {
        region(&prober, "region-a").filter(|o| !o.ok)
    })
    .await;
    // The snapshot was taken before this instant, so `since` was set before it too.
    let down_seen_at = Instant::now();
    let since_down = down_seen_at - down.since_age;
    assert!(
        since_down >= stopped_at,
        "since moved to the failure: {down:?}"
    );
    assert!(
        down.detail.contains("connect:"),
        "only the failing probe is named: {down:?}"
    );
    assert!(!down.detail.contains("connected"), "{down:?}");

    tracing::info!("--- it fails continuously: since does not move");
    eventually("a few more probe rounds", || async {
        let o = region(&prober, "region-a")?;
        // Rounds are 100-120 ms apart; wait for several so `since` would have moved if it
        // were reset on every failing round.
        (o.since_age >= Duration::from_millis(500)).then_some(())
    })
    .await;
    let asked_at = Instant::now();
    let still = region(&prober, "region-a").unwrap();
    assert!(!still.ok);
    // The snapshot was taken after `asked_at`, so `asked_at - since_age` is at or before the
    // `since` it reports. Had `since` moved to a later failing round, it would be after the
    // failure was first seen.
    let since_still_earliest = asked_at - still.since_age;
    assert!(
        since_still_earliest <= down_seen_at,
        "since moved after the failure was first seen: {since_still_earliest:?} vs {down_seen_at:?}"
    );

    tracing::info!("--- the endpoint returns");
    let restarted_at = Instant::now();
    endpoint.restart().await;
    let up = eventually("region-a passes again", || async {
        region(&prober, "region-a").filter(|o| o.ok)
    })
    .await;
    assert!(Instant::now() - up.since_age >= restarted_at, "{up:?}");

    prober.stop().await;
    drop(listener);
}

/// Goal: `update` replaces the schedule and dropping the prober stops probing. Method: an
/// HTTP endpoint counts requests; a region is added, changed, removed; after the prober is
/// dropped the count stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prober_update_and_drop_stop_probing() {
    init_tracing();
    let endpoint = HttpEndpoint::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let mut prober = Prober::start(
        BTreeMap::from([("region-a".to_string(), vec![fast(tcp(tcp_addr))])]),
        ProbeOptions::default(),
    );
    eventually("region-a observed", || async {
        region(&prober, "region-a")
    })
    .await;
    assert_eq!(endpoint.hits.load(Ordering::SeqCst), 0);

    tracing::info!("--- add region-b probing the HTTP endpoint");
    prober.update(BTreeMap::from([
        ("region-a".to_string(), vec![fast(tcp(tcp_addr))]),
        ("region-b".to_string(), vec![fast(http(&endpoint.url()))]),
    ]));
    eventually("region-b observed", || async {
        region(&prober, "region-b").filter(|o| o.ok)
    })
    .await;
    assert!(
        region(&prober, "region-a").is_some(),
        "unchanged region keeps its state"
    );

    tracing::info!("--- remove region-a");
    prober.update(BTreeMap::from([(
        "region-b".to_string(),
        vec![fast(http(&endpoint.url()))],
    )]));
    let regions: Vec<String> = prober.snapshot().into_iter().map(|o| o.region).collect();
    assert_eq!(regions, ["region-b"]);

    tracing::info!("--- drop the prober: no more requests");
    drop(prober);
    // A probe in flight when the task was aborted may still land: wait until the count is
    // still between two polls, then it must hold still across many intervals (100-120 ms).
    let mut last = endpoint.hits.load(Ordering::SeqCst);
    let after_drop = eventually("no probe in flight", || {
        let now = endpoint.hits.load(Ordering::SeqCst);
        let still = now == last;
        last = now;
        async move { still.then_some(now) }
    })
    .await;
    always_for(
        "no probe after the prober was dropped",
        Duration::from_millis(1_000),
        || async { endpoint.hits.load(Ordering::SeqCst) == after_drop },
    )
    .await;
    drop(listener);
}

/// Goal: with a source address, an HTTP probe connects from it, and without one from the
/// address the OS picks; the probe loop passes its options to every region task, including
/// one added later by `update`. Method: an HTTP endpoint on 127.0.0.1 records the peer of
/// each request; probes run with source 127.0.0.11 and with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_connects_from_the_source_address() {
    init_tracing();
    let endpoint = HttpEndpoint::start().await;

    tracing::info!("--- with a source address");
    let r = probe_with(&http(&endpoint.url()), from_source()).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(endpoint.last_peer(), Some(SOURCE));

    tracing::info!("--- without: the OS picks the loopback's own address");
    let r = probe(&http(&endpoint.url())).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(endpoint.last_peer(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));

    tracing::info!("--- the probe loop, for a region added by update");
    let mut prober = Prober::start(BTreeMap::new(), from_source());
    prober.update(BTreeMap::from([(
        "region-a".to_string(),
        vec![fast(http(&endpoint.url()))],
    )]));
    let before = endpoint.peers.lock().unwrap().len();
    eventually("region-a passes", || async {
        region(&prober, "region-a").filter(|o| o.ok)
    })
    .await;
    prober.stop().await;
    let looped: Vec<IpAddr> = endpoint.peers.lock().unwrap()[before..].to_vec();
    assert!(!looped.is_empty());
    assert!(looped.iter().all(|&p| p == SOURCE), "{looped:?}");
}

/// Goal: a TCP probe with a source address connects from it, and refuses a target with no
/// address of the source's family instead of silently connecting from elsewhere. Method: a
/// listener on 127.0.0.1 accepts the probe's connection and reads its peer address.
#[tokio::test]
async fn tcp_probe_connects_from_the_source_address() {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    tracing::info!("--- with a source address");
    let r = probe_with(&tcp(addr), from_source()).await;
    assert!(r.ok, "{r:?}");
    // The connection completed before the probe returned; it waits in the backlog.
    let (_, peer) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the probe's connection is pending")
        .unwrap();
    assert_eq!(peer.ip(), SOURCE);

    tracing::info!("--- without");
    let r = probe(&tcp(addr)).await;
    assert!(r.ok, "{r:?}");
    let (_, peer) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the probe's connection is pending")
        .unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    tracing::info!("--- an IPv6 source cannot reach an IPv4 target");
    let v6 = ProbeOptions {
        source: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    };
    let r = probe_with(&tcp(addr), v6).await;
    assert!(!r.ok, "{r:?}");
    assert!(r.detail.contains("no address of the family"), "{r:?}");
}

/// Goal: a gRPC probe with a source address connects from it, in plaintext and over TLS.
/// Method: tonic-health servers record the peer of each request.
#[tokio::test]
async fn grpc_probe_connects_from_the_source_address() {
    init_tracing();
    arbiter::tls::install_crypto_provider();

    tracing::info!("--- plaintext");
    let endpoint = GrpcEndpoint::start(None).await;
    let r = probe_with(
        &grpc(&endpoint.addr.to_string(), "", false, None),
        from_source(),
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(*endpoint.peers.lock().unwrap(), [SOURCE]);
    let r = probe(&grpc(&endpoint.addr.to_string(), "", false, None)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        *endpoint.peers.lock().unwrap(),
        [SOURCE, IpAddr::V4(Ipv4Addr::LOCALHOST)]
    );

    tracing::info!("--- TLS");
    let dir = tempfile::tempdir().unwrap();
    let certs =
        arbiter::certs::init_dev_certs(dir.path(), &arbiter::certs::default_sites(1), &[], false)
            .unwrap();
    let node = &certs.nodes[0];
    let identity = Identity::from_pem(
        std::fs::read(&node.cert).unwrap(),
        std::fs::read(&node.key).unwrap(),
    );
    let endpoint = GrpcEndpoint::start(Some(ServerTlsConfig::new().identity(identity))).await;
    // `localhost` may resolve to ::1 first; the source's family picks 127.0.0.1.
    let addr = format!("localhost:{}", endpoint.addr.port());
    let r = probe_with(
        &grpc(&addr, "", true, Some(certs.ca_cert.clone())),
        from_source(),
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(*endpoint.peers.lock().unwrap(), [SOURCE]);
}

/// Goal: a source address that is not on this host is caught by `check_source` (which the
/// witness runs at start), rather than failing every probe later.
#[test]
fn source_address_must_belong_to_this_host() {
    check_source(SOURCE).expect("a loopback address is local");
    // 192.0.2.0/24 is reserved for documentation (RFC 5737): never assigned to a host.
    let e = check_source(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrNotAvailable, "{e}");
}
