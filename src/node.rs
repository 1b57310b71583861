//! One witness: opens storage, starts Raft, serves the Raft and public gRPC services over
//! mutual TLS on an already-bound listener (with the HTTP routes beside them, and
//! `/metrics`, `/healthz`, `/readyz` also in plaintext when the node file asks), and runs
//! the leader's duties. The entry point takes the listener and a shutdown future so tests
//! bind port 0 and own the lifetime. [`World`] is everything outside the witness it meets
//! (hooks, external DNS servers, probes, the wall clock, storage), each swappable.
//!
//! It wires; it must never decide: no failover rule, lease rule or step lives here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::api::ApiService;
use crate::config::NodeConfig;
use crate::dns::{DnsListeners, EmbeddedServer as DnsServer};
use crate::leader::LeaderTables;
use crate::proto::arbiter_server::ArbiterServer;
use crate::proto::fencing_server::FencingServer;
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server::RaftServer;
use crate::proto::HelloRequest;
use crate::raft::{Consensus, ConsensusError, Network, RaftService};
use crate::state::{Command, Proposal};
use crate::telemetry::{Metrics, PlaintextServer};
use crate::tls::{LiveTls, TlsError, TlsIncoming, TlsMaterial};

/// How long a witness with an empty data dir asks its peers whether they count it as a
/// member before starting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest public API message; bounds memory per request (policy TOML is the biggest). A
/// request past it is `OUT_OF_RANGE` before anything is decoded.
pub const API_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Why a witness could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Consensus(#[from] ConsensusError),
    #[error(
        "data dir {data_dir} is empty, but witness {peer} counts node {id} as a member of cluster {cluster_id:?} \
         that had replicated up to log index {matched}: this node's data was lost. Starting it would let it vote \
         twice. Remove it (`arbiter members remove {id}`) and add it back under a new id."
    )]
    WipedDataDir {
        data_dir: String,
        id: u64,
        peer: u64,
        cluster_id: String,
        matched: u64,
    },
    #[error("server: {0}")]
    Server(String),
    #[error(
        "the consensus core stopped on its own (a panic or a storage error, logged before this): \
         the witness can no longer vote or apply, so it stops; restart it"
    )]
    ConsensusStopped,
    #[error("{0}")]
    Dns(#[from] crate::dns::server::DnsError),
    #[error("metrics.listen {addr}: cannot bind: {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "tls.cert {cert}: {found}, but this is node {id}: a witness certificate must name its \
         node id as the URI SAN {uri} (the witness-to-witness protocol accepts no other)"
    )]
    WitnessCertificate {
        cert: String,
        id: u64,
        found: String,
        uri: String,
    },
    #[error(
        "tls.cert {cert}: {found}, but the node file puts this witness at site {site}: a \
         witness certificate must name its site as the URI SAN {uri}, and the node file's site \
         must be that one"
    )]
    WitnessSite {
        cert: String,
        site: String,
        found: String,
        uri: String,
    },
    #[error("probes.source_addr {addr} cannot be a probe source on this host: {reason}")]
    ProbeSource {
        addr: std::net::IpAddr,
        reason: String,
    },
}

/// A running witness.
pub struct Node {
    pub consensus: Arc<Consensus>,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    duties: JoinHandle<()>,
    /// The embedded DNS server, when the node file has `dns.listen`.
    dns: Option<DnsServer>,
    /// Cuts and heals this witness's outgoing Raft links (partition tests and drills).
    pub link_faults: crate::raft::LinkFaults,
    /// This witness's registry (what `/metrics` shows).
    pub metrics: Arc<Metrics>,
    /// The plaintext `/metrics`, `/healthz`, `/readyz` port, when the node file has
    /// `metrics.listen`.
    plaintext: Option<PlaintextServer>,
    /// Reloads the TLS files when they change or on SIGHUP.
    tls_watch: JoinHandle<()>,
}

/// How a witness meets what lies outside it, each behind a trait so a simulation (or a test)
/// can swap it: the hooks its steps run, the external DNS servers it updates, the probes of
/// the regions, its wall clock, and its storage. [`World::real`] is production's.
///
/// Raft's network is the gRPC one over the listener a witness is given; [`Consensus::start_with`]
/// takes any openraft network for code that runs Raft without a `Node`.
pub struct World {
    pub hooks: Arc<dyn crate::hooks::HookRunner>,
    pub dns: Arc<dyn crate::dns::DnsClient>,
    /// `None`: probe the regions over the network.
    pub probes: Option<Arc<dyn crate::health::ProbeRunner>>,
    pub clock: Arc<dyn crate::wallclock::WallClock>,
    /// `None`: the redb file in the node's data dir. `Some`: these stores, opened by the
    /// caller (for example on an in-memory or fault-injecting backend, `store::open_on`).
    pub stores: Option<crate::raft::Stores>,
}

impl World {
    /// Real hooks, real DNS servers, real probes, the system clock, the data dir.
    pub fn real() -> Self {
        World {
            hooks: Arc::new(crate::hooks::LocalHooks),
            dns: Arc::new(crate::dns::Rfc2136),
            probes: None,
            clock: Arc::new(crate::wallclock::SystemClock),
            stores: None,
        }
    }
}

impl Node {
    /// Starts a witness on `listener`; it runs until `shutdown` completes or [`Node::stop`].
    pub async fn start(
        config: NodeConfig,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Node, NodeError> {
        Self::start_in(config, listener, shutdown, World::real()).await
    }

    /// [`Node::start`] in `world`.
    pub async fn start_in(
        config: NodeConfig,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        world: World,
    ) -> Result<Node, NodeError> {
        crate::tls::install_crypto_provider();
        #[cfg(feature = "unsafe-holes")]
        crate::holes::open_from_env().map_err(NodeError::Server)?;
        if let Some(addr) = config.probe_source {
            crate::health::check_source(addr).map_err(|e| NodeError::ProbeSource {
                addr,
                reason: e.to_string(),
            })?;
        }
        let probe_options = crate::health::ProbeOptions {
            source: config.probe_source,
        };
        let tls = witness_live_tls(&config)?;
        // Bind DNS before anything starts, so a port in use fails the start at once.
        let dns_listeners = match config.dns_listen {
            Some(addr) => Some(DnsListeners::bind(addr).await?),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::MetricsBind { addr, source })?,
            ),
            None => None,
        };
        let network = Network::live(tls.clone(), config.timing.rpc_timeout);
        let stores = match world.stores {
            Some(stores) => stores,
            None => Consensus::open_stores(&config).await?,
        };
        let consensus =
            Consensus::start_with(&config, network.clone(), stores, world.clock.clone()).await?;
        if let Some((stored_id, _)) = consensus.stored_identity()? {
            if stored_id != config.id {
                consensus.shutdown().await;
                return Err(ConsensusError::Storage(format!(
                    "data dir {} belongs to node {stored_id}, not node {}",
                    config.data_dir.display(),
                    config.id
                ))
                .into());
            }
        } else if consensus.is_pristine() {
            if let Err(e) = check_not_wiped(&config, &network).await {
                consensus.shutdown().await;
                return Err(e);
            }
        }
        let local_addr = listener
            .local_addr()
            .map_err(|e| NodeError::Server(e.to_string()))?;
        let tables = Arc::new(LeaderTables::default());
        let metrics = Metrics::new(consensus.clone(), tables.clone());
        let telemetry = crate::telemetry::router(crate::telemetry::Endpoints {
            metrics: metrics.clone(),
            consensus: consensus.clone(),
            contact_max: config.timing.election_timeout_max,
        });
        let raft_service = RaftServer::new(RaftService {
            consensus: consensus.clone(),
            reports: Arc::new(crate::leader::reporter::Reports {
                tables: tables.clone(),
                metrics: metrics.clone(),
            }),
            snapshots: Default::default(),
            denials: {
                let metrics = metrics.clone();
                Arc::new(move |denied| metrics.denied(denied))
            },
        })
        .max_decoding_message_size(crate::raft::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::raft::RAFT_MESSAGE_BYTES_MAX);
        let api = ArbiterServer::new(ApiService::new(
            consensus.clone(),
            config.peers.clone(),
            tables.clone(),
            tls.clone(),
            metrics.clone(),
        ))
        .max_decoding_message_size(API_MESSAGE_BYTES_MAX);
        let fencing = crate::fencing::Fencing::new(
            consensus.clone(),
            network.clone(),
            tables.clone(),
            metrics.clone(),
        );
        let http = crate::fencing::router(fencing.clone()).merge(telemetry.clone());
        let routes = tonic::service::Routes::from(http)
            .add_service(raft_service)
            .add_service(api)
            .add_service(FencingServer::new(crate::fencing::FencingService {
                fencing,
            }));
        // Every route, gRPC and HTTP, behind the one access check (`crate::access`); past
        // it, each RPC's request is bounded to the size that RPC takes.
        let routes = tonic::service::Routes::from(
            routes
                .into_axum_router()
                .layer(axum::middleware::from_fn(
                    crate::access::sizes::limit_messages,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    crate::access::Enforcer {
                        metrics: metrics.clone(),
                        consensus: consensus.clone(),
                        writes: Default::default(),
                    },
                    crate::access::enforce,
                )),
        );
        let router = Server::builder().accept_http1(true).add_routes(routes);
        // Our TLS rather than tonic's, which offers only `h2` in ALPN and so refuses clients
        // of the HTTP routes that offer only `http/1.1` (`curl --http1.1`); see TlsIncoming.
        let refusals = metrics.clone();
        let incoming =
            TlsIncoming::live(listener, tls.clone()).on_refused(Arc::new(move |identity| {
                refusals.connection_refused(identity)
            }));
        // Rotated certificates, keys and CAs are picked up without a restart.
        let tls_watch = tokio::spawn(tls.watch(crate::tls::RELOAD_POLL));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
        // Where other witnesses reach this one's DNS server: the bound address, or the
        // advertised host with the bound port when bound to every interface.
        let dns_addr = dns_listeners
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|bound| {
                if bound.ip().is_unspecified() {
                    let host = config
                        .advertise
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or("127.0.0.1");
                    format!("{host}:{}", bound.port())
                } else {
                    bound.to_string()
                }
            })
            .unwrap_or_default();
        let duties = tokio::spawn(run_duties(Duties {
            consensus: consensus.clone(),
            tables: tables.clone(),
            metrics: metrics.clone(),
            hooks: world.hooks.clone(),
            dns: world.dns.clone(),
            probes: world.probes.clone(),
            reports: Arc::new(network.clone()),
            probe_options,
            dns_addr,
        }));
        let dns = dns_listeners.map(|l| DnsServer::start(l, consensus.clone(), metrics.clone()));
        let plaintext = match metrics_listener {
            Some(l) => Some(
                PlaintextServer::start(l, telemetry)
                    .map_err(|e| NodeError::Server(e.to_string()))?,
            ),
            None => None,
        };
        tracing::info!(id = config.id, site = %config.site, addr = %local_addr, "witness listening");
        Ok(Node {
            consensus,
            local_addr,
            server,
            duties,
            dns,
            link_faults: network.faults(),
            metrics,
            plaintext,
            tls_watch,
        })
    }

    /// The address of the plaintext `/metrics`, `/healthz`, `/readyz` port, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.plaintext.as_ref().map(|p| p.local_addr)
    }

    /// The address the embedded DNS server is bound to (UDP and TCP), if it runs.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.local_addr)
    }

    /// Stops serving and shuts Raft down.
    pub async fn stop(self) {
        self.tls_watch.abort();
        drop(self.plaintext);
        if let Some(dns) = self.dns {
            dns.stop().await;
        }
        self.duties.abort();
        self.server.abort();
        let _ = self.server.await;
        self.consensus.shutdown().await;
    }

    /// Waits until the server ends (its shutdown future completed or it failed), or until
    /// Raft's core stopped on its own ([`NodeError::ConsensusStopped`]): a witness that can
    /// no longer take part in consensus stops serving too, rather than answer clients, its
    /// DNS server and its peers from a state that no longer moves, and its supervisor
    /// restarts it.
    pub async fn wait(mut self) -> Result<(), NodeError> {
        let result = tokio::select! {
            r = &mut self.server => match r {
                Ok(r) => r.map_err(|e| NodeError::Server(e.to_string())),
                Err(e) => Err(NodeError::Server(e.to_string())),
            },
            () = self.consensus.core_stopped() => {
                tracing::error!("the consensus core stopped (its error is logged above): the witness stops");
                self.server.abort();
                Err(NodeError::ConsensusStopped)
            }
        };
        self.tls_watch.abort();
        drop(self.plaintext);
        if let Some(dns) = self.dns {
            dns.stop().await;
        }
        self.duties.abort();
        self.consensus.shutdown().await;
        result
    }
}

/// Loads the witness's TLS material and checks that its certificate names this node's id
/// (`serve --check` runs it too): its peers refuse it on every Raft RPC otherwise.
pub fn witness_tls(config: &NodeConfig) -> Result<TlsMaterial, NodeError> {
    let tls = TlsMaterial::load(&config.tls)?;
    check_witness_certificate(config.id, &config.site, &config.tls.cert, &tls)?;
    Ok(tls)
}

/// [`witness_tls`], replaceable while the witness runs: a reloaded certificate must name
/// this node's id too, or the reload is refused and the current one stays.
pub fn witness_live_tls(config: &NodeConfig) -> Result<Arc<LiveTls>, NodeError> {
    let tls = witness_tls(config)?;
    let (id, site, cert) = (config.id, config.site.clone(), config.tls.cert.clone());
    let check: crate::tls::live::Check = Box::new(move |m: &TlsMaterial| {
        check_witness_certificate(id, &site, &cert, m).map_err(|e| e.to_string())
    });
    Ok(LiveTls::new(config.tls.clone(), tls, Some(check)))
}

/// A witness certificate must name this node's id and its site, as the CA signed them.
fn check_witness_certificate(
    id: u64,
    site: &str,
    cert: &std::path::Path,
    tls: &TlsMaterial,
) -> Result<(), NodeError> {
    match tls.witness_id() {
        Some(found) if found == id => {}
        other => {
            return Err(NodeError::WitnessCertificate {
                cert: cert.display().to_string(),
                id,
                found: match other {
                    Some(id) => format!("it names witness {id}"),
                    None => "it names no witness id".into(),
                },
                uri: crate::tls::witness_uri(id),
            })
        }
    }
    match tls.site() {
        Some(found) if found == site => Ok(()),
        other => Err(NodeError::WitnessSite {
            cert: cert.display().to_string(),
            site: site.to_string(),
            found: match other {
                Some(found) => format!("it names site {found}"),
                None => "it names no site (or two)".into(),
            },
            uri: crate::tls::site_uri(site),
        }),
    }
}

/// What [`run_duties`] runs on: one witness's consensus, tables and metrics, the world it
/// acts on, and how its probe reports reach the leader.
pub struct Duties {
    pub consensus: Arc<Consensus>,
    pub tables: Arc<LeaderTables>,
    pub metrics: Arc<Metrics>,
    pub hooks: Arc<dyn crate::hooks::HookRunner>,
    pub dns: Arc<dyn crate::dns::DnsClient>,
    /// `None`: probe the regions over the network.
    pub probes: Option<Arc<dyn crate::health::ProbeRunner>>,
    /// The gRPC network for a served witness; a simulation's own delivery otherwise.
    pub reports: Arc<dyn crate::leader::reporter::ReportSink>,
    pub probe_options: crate::health::ProbeOptions,
    /// Where other witnesses reach this one's DNS server (empty: it runs none).
    pub dns_addr: String,
}

/// Every duty of a witness beside its servers, wired once for a served witness and for a
/// simulated one: identity recording, leader-change counting, WAL positions, observations,
/// probing and reporting, and the leader's term supervisor. Runs until dropped.
pub async fn run_duties(d: Duties) {
    // Every witness keeps the primaries' WAL positions: the next leader needs them (S8).
    let wal = Arc::new(crate::hooks::WalHistories::default());
    let observations = Arc::new(crate::leader::Observations::default());
    let leader = crate::leader::Duty {
        consensus: d.consensus.clone(),
        tables: d.tables.clone(),
        metrics: d.metrics.clone(),
        wal: wal.clone(),
        observations: observations.clone(),
        hooks: d.hooks,
        dns: d.dns,
    };
    let c = d.consensus;
    tokio::join!(
        duties(c.clone()),
        crate::telemetry::count_leader_changes(c.clone(), d.metrics.clone()),
        crate::hooks::wal::run(
            {
                let c = c.clone();
                move |targets| c.with_state(|s| targets(s))
            },
            wal
        ),
        crate::leader::observations::run(c.clone(), observations),
        crate::leader::reporter::run(
            c,
            d.tables,
            d.reports,
            d.probe_options,
            d.dns_addr,
            d.metrics,
            d.probes
        ),
        crate::leader::supervisor::run(leader),
    );
}

/// A witness whose data dir is empty asks its peers whether they count it as a member that
/// had already replicated log entries. If one does, its vote and log were lost: refuse.
async fn check_not_wiped(config: &NodeConfig, network: &Network) -> Result<(), NodeError> {
    for peer in config.peers.iter().filter(|p| p.id != config.id) {
        let Ok(channel) = network.channel(&peer.addr) else {
            continue;
        };
        let mut req = tonic::Request::new(HelloRequest { node_id: config.id });
        req.set_timeout(HELLO_TIMEOUT);
        match tokio::time::timeout(HELLO_TIMEOUT, RaftClient::new(channel).hello(req)).await {
            Ok(Ok(reply)) => {
                let r = reply.into_inner();
                if r.initialized && r.is_member && r.matched_index > 0 {
                    return Err(NodeError::WipedDataDir {
                        data_dir: config.data_dir.display().to_string(),
                        id: config.id,
                        peer: peer.id,
                        cluster_id: r.cluster_id,
                        matched: r.matched_index,
                    });
                }
            }
            Ok(Err(e)) => tracing::debug!(peer = peer.id, error = %e, "peer did not answer hello"),
            Err(_) => tracing::debug!(peer = peer.id, "peer did not answer hello in time"),
        }
    }
    Ok(())
}

/// Background work of every witness: record the cluster identity once known, and, on the
/// leader, record the cluster id right after initialisation.
async fn duties(consensus: Arc<Consensus>) {
    let mut applied = consensus.subscribe_applied();
    let mut identity_recorded = false;
    loop {
        let cluster_id = consensus.with_state(|s| s.cluster_id.clone());
        match &cluster_id {
            Some(id) if !identity_recorded => match consensus.record_identity(id) {
                Ok(()) => identity_recorded = true,
                Err(e) => tracing::error!(error = %e, "cannot record node identity"),
            },
            None if consensus.view().leader == Some(consensus.id()) => {
                let proposal = Proposal {
                    actor: "arbiter".into(),
                    at_ms: consensus.now_ms(),
                    request_id: String::new(),
                    command: Command::Bootstrap {
                        cluster_id: crate::api::new_request_id(),
                    },
                };
                if let Err(e) = consensus.propose(proposal).await {
                    tracing::debug!(error = %e, "cluster id not recorded yet");
                }
            }
            _ => {}
        }
        // Wake on every apply, and at least every second (leadership changes are not applies).
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
