//! The embedded authoritative DNS server of every witness (provider `embedded`).
//!
//! It answers each group's record with the record set of the group's **applied** active
//! region, so it never publishes a region whose activation is not committed (S5): the only
//! input is the state machine's applied state. Three layers:
//!
//! - [`ZoneView`]: an immutable snapshot of the served zones, built from the applied state
//!   ([`ZoneView::from_state`]) and rebuilt whenever the applied index moves.
//! - [`answer`]: the pure answer function (no socket, no clock): authoritative answers,
//!   NXDOMAIN / NODATA with the SOA, CNAME, REFUSED outside our zones.
//! - [`DnsServer`]: UDP and TCP on one address with `hickory-server`; UDP answers larger than
//!   512 bytes (or the client's EDNS size) go out truncated (TC) so the client retries over
//!   TCP. With `dns.when_isolated = "refuse"` it answers SERVFAIL while this witness has had
//!   no contact with a leader for `dns.stale_after_ms` ([`refuses_when_isolated`]).
//!
//! It must never read anything but the applied state: not a proposal, not an operation in
//! progress, not another witness's opinion.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::publication::Publication;
use crate::config::{DnsPolicy, RecordKind, WhenIsolated};
use crate::raft::Consensus;
use crate::state::ClusterState;
use crate::telemetry::{DnsResult, Metrics};

/// TTL of the SOA record and of negative answers (its `minimum` field): short, so a name
/// that appears with a new policy is not hidden by a cached NXDOMAIN for long.
pub const NEGATIVE_TTL_S: u32 = 30;
/// TTL of the apex NS records: they change only with the policy.
pub const NS_TTL_S: u32 = 3_600;
/// SOA timers. Nothing transfers these zones (every witness serves them itself), so they
/// only need to be plausible for tools that read them.
const SOA_REFRESH_S: i32 = 3_600;
const SOA_RETRY_S: i32 = 600;
const SOA_EXPIRE_S: i32 = 86_400;
/// CNAMEs followed inside our own zones for one answer; bounds a CNAME loop in the policy.
const CNAME_CHAIN_MAX: usize = 8;
/// A TCP connection that sends no request for this long is closed (slow-client bound).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection before the connection applies back pressure.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts to find a port free for both UDP and TCP when the node file asks for port 0.
const BIND_ATTEMPTS_MAX: usize = 16;

/// One served zone: apex records and the group records below the apex.
#[derive(Debug, Clone, PartialEq)]
struct Zone {
    /// Lower-case, fully qualified.
    apex: Name,
    soa: Record,
    ns: Vec<Record>,
    /// Lower-case owner name (`name.to_ascii()`) -> the record set published there.
    names: BTreeMap<String, Vec<Record>>,
}

/// What the embedded server publishes, derived only from the applied state.
///
/// Contract: built by [`ZoneView::from_state`] from a state and the index of the last entry
/// applied to it; never modified afterwards (a new index gives a new view).
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneView {
    /// The applied index the view was built at.
    pub applied_index: u64,
    /// SOA serial of every zone: see [`soa_serial`].
    pub serial: u32,
    /// From the policy; `Serve` before any policy is applied.
    pub when_isolated: WhenIsolated,
    pub stale_after: Duration,
    zones: Vec<Zone>,
}

/// The SOA serial at `applied_index`: the index itself, clamped to `u32::MAX`.
///
/// Why the index: it only grows (on every witness, across restarts and snapshot installs), so
/// the serial never goes backwards, and two witnesses at the same index publish the same
/// serial for the same content. Clamping (rather than wrapping, which RFC 1982 arithmetic
/// would read as a decrease after 2^31 steps) freezes the serial after ~4.3 billion log
/// entries, far beyond any witness cluster's life; answers stay correct, only the serial
/// stops moving.
pub fn soa_serial(applied_index: u64) -> u32 {
    u32::try_from(applied_index).unwrap_or(u32::MAX)
}

fn name(s: &str) -> Option<Name> {
    Name::from_str(s).ok().map(|n| n.to_lowercase())
}

fn key(name: &Name) -> String {
    name.to_lowercase().to_ascii()
}

impl ZoneView {
    /// A view serving nothing (every query is refused).
    pub fn empty() -> ZoneView {
        ZoneView {
            applied_index: 0,
            serial: 0,
            when_isolated: WhenIsolated::Serve,
            stale_after: Duration::from_millis(DnsPolicy::default().stale_after_ms),
            zones: Vec::new(),
        }
    }

    /// The zones of the applied policy with each group's record set of its applied active
    /// region. Values were validated with the policy; one that does not parse anyway is
    /// skipped (logged), never guessed.
    pub fn from_state(state: &ClusterState, applied_index: u64) -> ZoneView {
        let mut view = ZoneView::empty();
        view.applied_index = applied_index;
        view.serial = soa_serial(applied_index);
        let Some(policy) = &state.policy else {
            return view;
        };
        view.when_isolated = policy.dns.when_isolated;
        view.stale_after = Duration::from_millis(policy.dns.stale_after_ms);
        for z in &policy.dns.zones {
            let (Some(apex), Some(contact)) = (name(&z.name), name(&z.contact)) else {
                tracing::warn!(zone = %z.name, "zone name or contact does not parse; not served");
                continue;
            };
            let nameservers: Vec<Name> = z.nameservers.iter().filter_map(|n| name(n)).collect();
            let Some(primary) = nameservers.first().cloned() else {
                tracing::warn!(zone = %z.name, "zone has no usable name server; not served");
                continue;
            };
            let soa = Record::from_rdata(
                apex.clone(),
                NEGATIVE_TTL_S,
                RData::SOA(SOA::new(
                    primary,
                    contact,
                    view.serial,
                    SOA_REFRESH_S,
                    SOA_RETRY_S,
                    SOA_EXPIRE_S,
                    NEGATIVE_TTL_S,
                )),
            );
            let ns = nameservers
                .into_iter()
                .map(|n| Record::from_rdata(apex.clone(), NS_TTL_S, RData::NS(NS(n))))
                .collect();
            view.zones.push(Zone {
                apex,
                soa,
                ns,
                names: BTreeMap::new(),
            });
        }
        for g in &policy.groups {
            // The same publication the `dns` step, the reconciler and `dns check` use.
            let Some((publication, _)) = Publication::from_state(state, &g.name) else {
                if g.dns.is_some() && state.groups.contains_key(&g.name) {
                    tracing::warn!(group = %g.name, "no record set for the active region");
                }
                continue;
            };
            let set = &publication.set;
            let (Some(zone_name), Some(owner)) = (name(&publication.zone), name(&publication.name))
            else {
                continue;
            };
            let Some(zone) = view.zones.iter_mut().find(|z| z.apex == zone_name) else {
                continue;
            };
            let records: Option<Vec<Record>> = set
                .values
                .iter()
                .map(|v| {
                    let rdata = match set.kind {
                        RecordKind::A => RData::A(A(v.parse::<Ipv4Addr>().ok()?)),
                        RecordKind::AAAA => RData::AAAA(AAAA(v.parse::<Ipv6Addr>().ok()?)),
                        RecordKind::CNAME => RData::CNAME(CNAME(name(v)?)),
                    };
                    Some(Record::from_rdata(owner.clone(), publication.ttl, rdata))
                })
                .collect();
            match records {
                Some(r) => {
                    zone.names.insert(key(&owner), r);
                }
                None => {
                    tracing::warn!(group = %g.name, "a record value does not parse; name not served")
                }
            }
        }
        view
    }

    /// The served zone that holds `name` (the closest enclosing apex), if any.
    fn zone_of(&self, name: &Name) -> Option<&Zone> {
        self.zones
            .iter()
            .filter(|z| z.apex.zone_of(name))
            .max_by_key(|z| z.apex.num_labels())
    }
}

/// One question: owner name, type and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: Name,
    pub kind: RecordType,
    pub class: DNSClass,
}

impl Query {
    /// A question of class IN.
    pub fn new(name: Name, kind: RecordType) -> Query {
        Query {
            name,
            kind,
            class: DNSClass::IN,
        }
    }
}

/// What the server answers: response code, AA flag and the answer and authority sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Set for every answer from one of our zones (positive or negative).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

/// The outcome of looking one name up in one zone.
enum Lookup<'v> {
    /// Not in any served zone.
    NotOurs,
    /// Records of the requested type, or a CNAME to follow.
    Found {
        records: Vec<Record>,
        cname: Option<Name>,
    },
    /// The name exists (or is an empty non-terminal) without records of this type.
    NoData(&'v Zone),
    NxDomain(&'v Zone),
}

fn lookup<'v>(view: &'v ZoneView, qname: &Name, kind: RecordType) -> Lookup<'v> {
    let Some(zone) = view.zone_of(qname) else {
        return Lookup::NotOurs;
    };
    if zone.apex == qname.to_lowercase() {
        let records = match kind {
            RecordType::SOA => vec![zone.soa.clone()],
            RecordType::NS => zone.ns.clone(),
            RecordType::ANY => std::iter::once(zone.soa.clone())
                .chain(zone.ns.iter().cloned())
                .collect(),
            _ => return Lookup::NoData(zone),
        };
        return Lookup::Found {
            records,
            cname: None,
        };
    }
    let k = key(qname);
    if let Some(set) = zone.names.get(&k) {
        let set_kind = set.first().map(|r| r.record_type());
        if set_kind == Some(RecordType::CNAME) && kind != RecordType::CNAME {
            let cname = match set.first().map(|r| &r.data) {
                Some(RData::CNAME(CNAME(target))) => Some(target.clone()),
                _ => None,
            };
            return Lookup::Found {
                records: set.clone(),
                cname,
            };
        }
        if set_kind == Some(kind) || kind == RecordType::ANY {
            return Lookup::Found {
                records: set.clone(),
                cname: None,
            };
        }
        return Lookup::NoData(zone);
    }
    // An empty non-terminal (a name above a group record) exists: NODATA, not NXDOMAIN
    // (RFC 8020), or resolvers would prune the names below it.
    let suffix = format!(".{k}");
    if zone.names.keys().any(|n| n.ends_with(&suffix)) {
        return Lookup::NoData(zone);
    }
    Lookup::NxDomain(zone)
}

/// The answer of `view` to `query`. Pure: no I/O, no clock.
///
/// - outside every served zone, or a class other than IN: REFUSED, AA clear;
/// - the apex: SOA and NS (other types: NODATA);
/// - a group name: its record set; a CNAME answers every type, followed inside our zones
///   (at most [`CNAME_CHAIN_MAX`] links) with the response code of the last name;
/// - an existing name without the type: NOERROR, empty answer, SOA in authority (NODATA);
/// - a name that does not exist: NXDOMAIN with the SOA in authority.
pub fn answer(view: &ZoneView, query: &Query) -> Answer {
    if query.class != DNSClass::IN && query.class != DNSClass::ANY {
        return Answer::refused();
    }
    let mut out = Answer {
        rcode: ResponseCode::NoError,
        authoritative: true,
        answers: Vec::new(),
        authorities: Vec::new(),
    };
    let mut current = query.name.clone();
    for link in 0..=CNAME_CHAIN_MAX {
        match lookup(view, &current, query.kind) {
            // The first name decides whether we are authoritative at all; a CNAME target
            // outside our zones is the resolver's to follow.
            Lookup::NotOurs if link == 0 => return Answer::refused(),
            Lookup::NotOurs => return out,
            Lookup::Found { records, cname } => {
                out.answers.extend(records);
                match cname {
                    Some(target) => current = target,
                    None => return out,
                }
            }
            Lookup::NoData(zone) => {
                out.authorities.push(zone.soa.clone());
                return out;
            }
            Lookup::NxDomain(zone) => {
                out.rcode = ResponseCode::NXDomain;
                out.authorities.push(zone.soa.clone());
                return out;
            }
        }
    }
    out
}

/// Whether the server must answer SERVFAIL instead of the view: the policy says `refuse`
/// and this witness's last contact with a leader (`contact_age`, `None`: none known) is
/// older than `stale_after_ms`. Pure.
pub fn refuses_when_isolated(view: &ZoneView, contact_age: Option<Duration>) -> bool {
    match view.when_isolated {
        WhenIsolated::Serve => false,
        WhenIsolated::Refuse => contact_age.is_none_or(|age| age > view.stale_after),
    }
}

/// How the server learns whether its witness is in contact with a leader.
pub trait LeaderContact: Send + Sync + 'static {
    /// Time since the last contact with a leader; `None` if there was none (or no leader).
    fn leader_contact_age(&self) -> Option<Duration>;
}

impl LeaderContact for Consensus {
    fn leader_contact_age(&self) -> Option<Duration> {
        Consensus::leader_contact_age(self)
    }
}

/// Answers requests from the current view.
struct Handler {
    view: watch::Receiver<Arc<ZoneView>>,
    contact: Arc<dyn LeaderContact>,
    /// Counts every query answered, by response code.
    metrics: Arc<Metrics>,
}

/// The metric label of a response code.
fn dns_result(code: ResponseCode) -> DnsResult {
    match code {
        ResponseCode::NoError => DnsResult::NoError,
        ResponseCode::NXDomain => DnsResult::NxDomain,
        ResponseCode::Refused => DnsResult::Refused,
        ResponseCode::ServFail => DnsResult::ServFail,
        ResponseCode::NotImp => DnsResult::NotImp,
        ResponseCode::FormErr => DnsResult::FormErr,
        ResponseCode::BADVERS => DnsResult::BadVers,
        _ => DnsResult::Other,
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let builder = || MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let error = |code: ResponseCode| builder().error_msg(&request.metadata, code);
        let sent = if request.metadata.message_type != MessageType::Query {
            // A response sent to us: never answer an answer (reflection loops).
            return ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: Default::default(),
            });
        } else if request.metadata.op_code != OpCode::Query {
            response_handle
                .send_response(error(ResponseCode::NotImp))
                .await
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            response_handle
                .send_response(error(ResponseCode::BADVERS))
                .await
        } else {
            match request.request_info() {
                Err(_) => {
                    response_handle
                        .send_response(error(ResponseCode::FormErr))
                        .await
                }
                Ok(info) => {
                    let view = self.view.borrow().clone();
                    if refuses_when_isolated(&view, self.contact.leader_contact_age()) {
                        response_handle
                            .send_response(error(ResponseCode::ServFail))
                            .await
                    } else {
                        let q = info.query.original();
                        let a = answer(
                            &view,
                            &Query {
                                name: q.name().clone(),
                                kind: q.query_type(),
                                class: q.query_class(),
                            },
                        );
                        let mut metadata = Metadata::response_from_request(&request.metadata);
                        metadata.authoritative = a.authoritative;
                        metadata.response_code = a.rcode;
                        let response =
                            builder().build(metadata, &a.answers, &a.authorities, None, None);
                        response_handle.send_response(response).await
                    }
                }
            }
        };
        let info = match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, src = %request.src(), "dns response not sent");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        };
        self.metrics.dns_query(dns_result(info.response_code));
        info
    }
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns.listen {addr}: cannot bind {proto}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
}

/// The UDP socket and TCP listener of the server, bound to the same address.
pub struct DnsListeners {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsListeners {
    /// Binds UDP and TCP on `addr`. With port 0, the same free port for both (UDP first,
    /// then TCP on its port, a few attempts).
    pub async fn bind(addr: SocketAddr) -> Result<DnsListeners, DnsError> {
        let bind_err = |proto, source| DnsError::Bind {
            addr,
            proto,
            source,
        };
        let attempts = if addr.port() == 0 {
            BIND_ATTEMPTS_MAX
        } else {
            1
        };
        let mut last = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|e| bind_err("udp", e))?;
            let port = udp.local_addr().map_err(|e| bind_err("udp", e))?.port();
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => return Ok(DnsListeners { udp, tcp }),
                Err(e) => last = Some(e),
            }
        }
        Err(bind_err(
            "tcp",
            last.unwrap_or_else(|| std::io::Error::other("no attempt made")),
        ))
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// A running embedded DNS server. Dropping it stops it.
pub struct DnsServer {
    /// The address UDP and TCP are bound to.
    pub local_addr: SocketAddr,
    view: watch::Receiver<Arc<ZoneView>>,
    /// Hickory's server: owns the UDP and TCP tasks; dropping it aborts them.
    server: Server<Handler>,
    /// Rebuilds the view on every apply.
    refresher: JoinHandle<()>,
}

impl DnsServer {
    /// Serves `listeners` from the applied state of `consensus`, rebuilding the view every
    /// time the applied index moves, so an activation is published the moment it is applied
    /// here (and not before).
    pub fn start(
        listeners: DnsListeners,
        consensus: Arc<Consensus>,
        metrics: Arc<Metrics>,
    ) -> DnsServer {
        let contact: Arc<dyn LeaderContact> = consensus.clone();
        Self::start_with(listeners, consensus, contact, metrics)
    }

    /// [`Self::start`] with another source of leader contact (tests).
    pub fn start_with(
        listeners: DnsListeners,
        consensus: Arc<Consensus>,
        contact: Arc<dyn LeaderContact>,
        metrics: Arc<Metrics>,
    ) -> DnsServer {
        let local_addr = listeners
            .local_addr()
            .expect("a bound socket has an address");
        let initial = consensus.with_state_at(ZoneView::from_state);
        let (tx, view) = watch::channel(Arc::new(initial));
        let refresher = tokio::spawn(refresh(consensus, tx));
        let mut server = Server::new(Handler {
            view: view.clone(),
            contact,
            metrics,
        });
        server.register_socket(listeners.udp);
        server.register_listener(listeners.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!(addr = %local_addr, "dns server listening (udp, tcp)");
        DnsServer {
            local_addr,
            view,
            server,
            refresher,
        }
    }

    /// The view answers come from right now.
    pub fn view(&self) -> Arc<ZoneView> {
        self.view.borrow().clone()
    }

    /// Stops accepting queries and waits for the server tasks to end.
    pub async fn stop(mut self) {
        self.refresher.abort();
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns server stopped with an error");
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Publishes a new view after every apply batch.
async fn refresh(consensus: Arc<Consensus>, tx: watch::Sender<Arc<ZoneView>>) {
    let mut applied = consensus.subscribe_applied();
    loop {
        applied.borrow_and_update();
        let view = consensus.with_state_at(ZoneView::from_state);
        let previous = tx.borrow().applied_index;
        // Never publish an older view than the one served (the serial must only grow).
        if view.applied_index >= previous {
            if view.zones != tx.borrow().zones {
                tracing::debug!(index = view.applied_index, "dns view changed");
            }
            tx.send_replace(Arc::new(view));
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;

/// What `view` publishes at exactly `name` (no CNAME chasing), as `"TYPE value"` strings
/// sorted, in the same normal form as the drift check (lowercase, fully qualified targets).
pub fn published(view: &ZoneView, name: &str) -> Vec<String> {
    let Ok(owner) = Name::from_str(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for kind in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let a = answer(view, &Query::new(owner.clone(), kind));
        for r in a
            .answers
            .iter()
            .filter(|r| r.name == owner && r.record_type() == kind)
        {
            let value = match &r.data {
                RData::A(a) => a.to_string(),
                RData::AAAA(a) => a.to_string(),
                RData::CNAME(c) => c.0.to_ascii().to_ascii_lowercase(),
                other => other.to_string(),
            };
            out.push(format!("{kind} {value}"));
        }
    }
    out.sort();
    out.dedup();
    out
}
