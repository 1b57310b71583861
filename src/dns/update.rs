//! RFC 2136 provider: publishes a group's committed decision on external authoritative
//! servers with one TSIG-signed, conditional UPDATE per server, and reads back what each
//! server publishes so the leader can see drift.
//!
//! Every UPDATE arbiter sends for a decision carries a prerequisite (RFC 2136 section 2.4) on
//! the server's publication marker (`_arbiter.<name>` TXT, see [`super::marker`]): the marker
//! must still hold exactly what this witness read (or be absent, if it read none), and the
//! same UPDATE replaces it with the new decision. A witness publishes only a decision newer
//! than (or equal to) the one it read, so an UPDATE of an older decision that reaches the
//! server late (sent by a leader that died, delayed in the network) finds the marker moved
//! and the server refuses it (YXRRSET/NXRRSET) without changing anything.
//!
//! This module owns the wire exchange with one server (a TCP connection per call, bounded by
//! the server's `timeout_ms`) and the mapping of a server's answer to a [`DnsUpdateError`]
//! that says what the operator must fix. It must never choose the record set (the caller
//! passes the publication of a committed state), never retry beyond
//! [`PREREQUISITE_ROUNDS_MAX`] re-reads of a moved marker (the `dns` step and the reconcile
//! loop decide any other retry), never publish over a marker that names a newer decision,
//! and never put the TSIG secret into an error or a log line.

use futures::future::BoxFuture;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::DnsStreamHandle;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, SerialMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as WireTsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tracing::{info, warn};

use super::marker::{self, Decision, MarkerProblem, MarkerVerdict};
use super::publication::Publication;
use crate::config::{DnsServer, RecordKind, RecordSet, TsigAlgorithm};
use crate::secret::Secret;

/// Allowed difference between our clock and the server's when it checks the TSIG time. RFC
/// 8945 recommends 300 s; less makes a mildly skewed witness fail every update.
const TSIG_FUDGE_S: u16 = 300;

/// Answers with a foreign message id we skip on one connection before giving up. We send one
/// message per connection, so any foreign id means a confused server; do not wait forever.
const FOREIGN_ANSWERS_MAX: usize = 4;

/// Conditional UPDATEs of one server in one [`publish_to`] whose prerequisite failed, each
/// followed by a fresh read of the marker. A failure means another writer moved the marker
/// between our read and our UPDATE: the leader's `dns` step and its reconciler, or a deposed
/// leader's late UPDATE, so a second round settles it; more means something else keeps
/// writing, and the error says so instead of looping.
pub const PREREQUISITE_ROUNDS_MAX: usize = 3;

/// Why an update or a query of one server failed, worded as what the operator must fix.
/// Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsUpdateError {
    /// TSIG error BADSIG: the server knows the key name but our MAC did not verify.
    #[error(
        "the server rejected the TSIG signature: the secret does not match the server's key \
         {key:?}; put the server's secret for this key into the secret reference"
    )]
    BadSignature { key: String },
    /// TSIG error BADKEY: the server does not know a key of this name and algorithm. Knot
    /// also answers BADKEY (not REFUSED) when it knows the key but no ACL of the zone lets
    /// the key update it, and nothing in the answer tells the two apart, so the message
    /// names both causes.
    #[error(
        "the server does not accept TSIG key {key:?} for zone {zone}: it does not know a key \
         of this name and algorithm, or (Knot) no ACL of the zone lets this key update it; \
         check the key in dns.servers against the server's key and update policy"
    )]
    BadKey { key: String, zone: String },
    /// TSIG error BADTIME: the clocks of this witness and the server differ too much.
    #[error(
        "the server rejected the TSIG time: this witness's clock and the server's differ by more \
         than {TSIG_FUDGE_S} s{}; synchronise the clocks (NTP)",
        skew_s.map(|s| format!(" (server is {s:+} s from us)")).unwrap_or_default()
    )]
    BadTime { skew_s: Option<i64> },
    /// RCODE REFUSED: the server authenticated the request but its policy does not let this
    /// key update this zone (BIND `allow-update`/`update-policy`, Knot `acl`).
    #[error(
        "the server refused the update of zone {zone}: the key is not allowed to update this \
         zone; grant it in the server's update policy (for the group's name and for its \
         `_arbiter.` TXT marker)"
    )]
    Refused { zone: String },
    /// RCODE NOTAUTH without a TSIG error: the server is not authoritative for the zone, or
    /// does not accept this key for it.
    #[error(
        "the server is not authoritative for zone {zone} or does not accept the key for it; \
         check dns.servers[].zone and the server's zone configuration"
    )]
    NotAuth { zone: String },
    /// RCODE SERVFAIL: the server could not apply or answer (for example a zone it failed to
    /// load, or a journal it cannot write).
    #[error("the server failed (SERVFAIL); see the server's log")]
    ServFail,
    /// No complete answer within the server's `timeout_ms`.
    #[error("the server did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The connection could not be made or broke.
    #[error("cannot talk to the server: {reason}")]
    Io { reason: String },
    /// The TSIG secret could not be read or is not base64. Names the file or variable only.
    #[error("cannot use the TSIG secret: {reason}")]
    Secret { reason: String },
    /// An answer we cannot trust or decode (for example a NOERROR whose TSIG does not verify).
    #[error("unusable answer from the server: {reason}")]
    BadResponse { reason: String },
    /// A name, value or address given to this module is not valid. Validated policy never
    /// produces this.
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    /// RCODE YXRRSET or NXRRSET to a conditional UPDATE: the marker no longer holds what
    /// this witness read, so the server applied nothing. [`publish_to`] reads it again.
    #[error(
        "the server's {marker} TXT changed between this witness's read and its update \
         (another witness published at the same time); the update was not applied"
    )]
    PrerequisiteFailed { marker: String },
    /// [`PREREQUISITE_ROUNDS_MAX`] rounds in a row found the marker moved.
    #[error(
        "the server's {marker} TXT changed {rounds} times in a row between this witness's read \
         and its update: something besides the arbiter leader keeps updating it; make sure only \
         arbiter updates {marker} and the group's name"
    )]
    Contended { marker: String, rounds: usize },
    /// The marker names a newer decision than the one given: this witness's view is stale.
    /// [`publish_to`] reports this as [`Published::Superseded`], not as a failure.
    #[error(
        "the server's {marker} TXT already names a newer decision ({by}); an older one is \
         never published over it"
    )]
    Superseded { marker: String, by: String },
    /// The marker claims an epoch or policy version this cluster never issued. Judged from the
    /// publisher's committed state: accurate on a leader that just confirmed it (the
    /// reconciler, the `dns` step); a witness whose state is behind may see a newer leader's
    /// marker this way, and then too it publishes nothing.
    #[error(
        "the server's {marker} TXT says group {group} published {found}, beyond anything this \
         cluster issued (epoch {issued_epoch}, policy version {issued_policy_version}, as this \
         witness's committed state says): it was edited by hand or written by another cluster, \
         and arbiter never overwrites a decision that claims to be newer; check the server, \
         then delete that TXT record (nsupdate: `update delete {marker} TXT`) and the leader \
         republishes the committed records within one reconcile interval"
    )]
    MarkerAhead {
        marker: String,
        group: String,
        found: String,
        issued_epoch: u64,
        issued_policy_version: u64,
    },
    /// The marker names another group.
    #[error(
        "the server's {marker} TXT says group {theirs} publishes this name, not group {ours}: \
         two groups (or two clusters) publish the same name; give each its own name, or, if \
         {theirs} no longer publishes it, delete that TXT record (nsupdate: `update delete \
         {marker} TXT`) and the leader republishes"
    )]
    MarkerOtherGroup {
        marker: String,
        ours: String,
        theirs: String,
    },
    /// A TXT record at the marker's name that is not a marker.
    #[error(
        "the server has a TXT record at {marker} that is not an arbiter marker ({reason}: \
         {text:?}); that name belongs to arbiter: delete the record (nsupdate: `update delete \
         {marker} TXT`) and the leader republishes"
    )]
    MarkerUnreadable {
        marker: String,
        text: String,
        reason: String,
    },
    /// Any other RCODE (or TSIG error) the server answered.
    #[error("the server answered {} ({rcode})", <ResponseCode as From<u16>>::from(*rcode).to_str())]
    Other { rcode: u16 },
}

impl DnsUpdateError {
    /// A marker arbiter will not overwrite: retrying cannot help until an operator fixes it.
    pub fn is_marker_refusal(&self) -> bool {
        matches!(
            self,
            DnsUpdateError::MarkerAhead { .. }
                | DnsUpdateError::MarkerOtherGroup { .. }
                | DnsUpdateError::MarkerUnreadable { .. }
        )
    }

    /// The error for a marker that `ours` may not be published over.
    pub fn of_marker(name: &str, ours: &Decision, verdict: &MarkerVerdict) -> Option<Self> {
        let marker = marker::marker_name(name);
        Some(match verdict {
            MarkerVerdict::Absent | MarkerVerdict::Older(_) | MarkerVerdict::Same => return None,
            MarkerVerdict::Newer(by) => DnsUpdateError::Superseded {
                marker,
                by: by.to_string(),
            },
            MarkerVerdict::Refused(MarkerProblem::Ahead { found, issued }) => {
                DnsUpdateError::MarkerAhead {
                    marker,
                    group: found.group.clone(),
                    found: found.to_string(),
                    issued_epoch: issued.epoch,
                    issued_policy_version: issued.policy_version,
                }
            }
            MarkerVerdict::Refused(MarkerProblem::OtherGroup { group }) => {
                DnsUpdateError::MarkerOtherGroup {
                    marker,
                    ours: ours.group.clone(),
                    theirs: group.clone(),
                }
            }
            MarkerVerdict::Refused(MarkerProblem::Unreadable { text, reason }) => {
                DnsUpdateError::MarkerUnreadable {
                    marker,
                    text: text.clone(),
                    reason: reason.clone(),
                }
            }
        })
    }
}

/// One successful [`replace_rrset`] or [`conditional_replace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    /// The server's `ip:port`.
    pub server: String,
    /// Owner name that was replaced.
    pub name: String,
    /// The type now published at `name`.
    pub kind: RecordKind,
    /// The values sent, normalised as [`query_rrset`] returns them, so a caller can compare.
    pub values: Vec<String>,
    /// The record types whose rrsets the update deleted first.
    pub deleted: Vec<RecordKind>,
}

/// What a server holds after a successful [`publish_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The server took the conditional UPDATE.
    Updated {
        /// The zone's SOA serial read right after the update.
        serial: u32,
        /// The marker it replaced: [`MarkerVerdict::Absent`] (first publication, or a server
        /// wiped by hand), [`MarkerVerdict::Older`] or [`MarkerVerdict::Same`] (a repeat, or
        /// a repair of records changed by hand).
        replaced: MarkerVerdict,
    },
    /// The server already publishes a newer decision of the group (a later leader got there
    /// first): nothing was sent, and nothing must be.
    Superseded { by: Decision },
}

/// A server's marker as read, kept exactly as the server holds it: the prerequisite of the
/// next UPDATE must name this very RRset, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerRead {
    /// The marker's owner name.
    pub name: String,
    /// One text per TXT record (its character-strings joined); empty: no marker.
    pub texts: Vec<String>,
    records: Vec<TXT>,
}

impl MarkerRead {
    /// A marker read that found nothing, as on a server that never had one.
    pub fn absent(name: &str) -> MarkerRead {
        MarkerRead {
            name: marker::marker_name(name),
            texts: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Compares this marker with the decision `publication` carries.
    pub fn verdict(&self, publication: &Publication) -> MarkerVerdict {
        marker::verdict(&self.texts, &publication.decision, &publication.issued)
    }
}

/// The outcome of one server in a [`publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOutcome {
    /// The server's `ip:port`, as in the policy.
    pub server: String,
    /// What the server publishes now, or why the update (or the serial read after it) failed.
    pub result: Result<Published, DnsUpdateError>,
}

/// What [`publish`] did on each server of a zone. Servers appear in policy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub zone: String,
    pub name: String,
    pub outcomes: Vec<ServerOutcome>,
}

impl PublishReport {
    /// Whether every server of the zone took the update. An empty report (no server for the
    /// zone) counts as done: there was nothing to update.
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }

    /// The servers that did not take the update, with the reason.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &DnsUpdateError)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o.server.as_str(), e)))
    }
}

/// A record type whose published values differ from what the committed state wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub kind: RecordKind,
    /// Normalised values that should be published (empty: the type should be absent).
    pub expected: Vec<String>,
    /// Normalised values the server publishes now.
    pub found: Vec<String>,
}

/// What [`drift`] found on one server: the group's records, and its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftReport {
    /// One entry per record type whose published values differ; empty: records in sync.
    pub records: Vec<Drift>,
    /// The server's marker compared with the publication's decision.
    pub marker: MarkerVerdict,
    /// The marker's texts as found (empty: none).
    pub marker_found: Vec<String>,
}

impl DriftReport {
    /// Whether the leader should publish: the marker is missing or older (the records may
    /// well be right: the marker itself is the drift), or it is current and the records were
    /// changed by hand. A newer marker means the publisher's view is stale, and a refused
    /// one waits for an operator: neither is repaired.
    pub fn needs_repair(&self) -> bool {
        match &self.marker {
            MarkerVerdict::Absent | MarkerVerdict::Older(_) => true,
            MarkerVerdict::Same => !self.records.is_empty(),
            MarkerVerdict::Newer(_) | MarkerVerdict::Refused(_) => false,
        }
    }
}

/// Replaces what `name` publishes on `server` with `set`, in ONE TSIG-signed UPDATE over
/// TCP: first delete the rrsets of every type in `old_kinds` and of `set.kind` (so a switch
/// from A to CNAME leaves no A behind), then add each value of `set` with `ttl`. The server
/// applies the message atomically, so resolvers see the old set or the new one, never a mix.
///
/// UNCONDITIONAL: no prerequisite, the marker untouched. This is what a hand edit does, and
/// tools and tests use it as one; arbiter's own publications go through [`publish`], whose
/// UPDATEs an older decision can never win. The whole exchange (connect, send, answer) is
/// bounded by the server's `timeout_ms`. Success is reported only for a NOERROR answer whose
/// TSIG verifies.
pub async fn replace_rrset(
    server: &DnsServer,
    name: &str,
    ttl: u32,
    set: &RecordSet,
    old_kinds: &[RecordKind],
) -> Result<UpdateReport, DnsUpdateError> {
    let (mut message, deleted) = update_message(server, name, ttl, set, old_kinds)?;
    send_update(server, &mut message, None).await?;
    Ok(UpdateReport {
        server: server.address.clone(),
        name: name.to_string(),
        kind: set.kind,
        values: normalise(set.kind, &set.values),
        deleted,
    })
}

/// Reads the marker of the group published at `name` from `server`, exactly as it holds it.
pub async fn read_marker(server: &DnsServer, name: &str) -> Result<MarkerRead, DnsUpdateError> {
    let marker_name = marker::marker_name(name);
    let owner = fqdn(&marker_name)?;
    let answer = query(server, owner.clone(), RecordType::TXT).await?;
    let records: Vec<TXT> = answer
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.clone()),
            _ => None,
        })
        .collect();
    let texts = records
        .iter()
        .map(|t| {
            t.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<String>()
        })
        .collect();
    Ok(MarkerRead {
        name: marker_name,
        texts,
        records,
    })
}

/// Publishes `publication` on `server` in ONE TSIG-signed UPDATE, on condition that the
/// server's marker still holds exactly `read` (or, if `read` found none, that it still has
/// none): the prerequisite section names that RRset, the update section replaces the
/// group's records as [`replace_rrset`] does and the marker with the publication's decision.
/// A marker that moved since `read` makes the server refuse the whole message
/// ([`DnsUpdateError::PrerequisiteFailed`]) and change nothing.
///
/// Refuses, without sending, to publish over a marker that `read` shows newer or not
/// arbiter's (see [`MarkerRead::verdict`]). [`publish_to`] reads the marker right before;
/// calling this with an older read is what a delayed UPDATE amounts to, and the server's
/// prerequisite is what stops it.
pub async fn conditional_replace(
    server: &DnsServer,
    publication: &Publication,
    read: &MarkerRead,
) -> Result<UpdateReport, DnsUpdateError> {
    let p = publication;
    if let Some(e) = DnsUpdateError::of_marker(&p.name, &p.decision, &read.verdict(p)) {
        return Err(e);
    }
    let (mut message, deleted) = update_message(server, &p.name, p.ttl, &p.set, &p.old_kinds)?;
    let marker_owner = fqdn(&marker::marker_name(&p.name))?;
    let text = p.decision.text();
    if text.len() > usize::from(u8::MAX) {
        // One character-string holds 255 bytes; validated names keep the text far below.
        return Err(DnsUpdateError::Invalid {
            reason: format!("the marker text of group {} is too long", p.decision.group),
        });
    }
    // Prerequisites go in the answer section of an UPDATE (RFC 2136 section 2.4).
    if read.records.is_empty() {
        // "RRset does not exist": class NONE, TTL 0, empty RDATA (section 2.4.3).
        let mut none = Record::update0(marker_owner.clone(), 0, RecordType::TXT);
        none.dns_class = DNSClass::NONE;
        message.add_answer(none);
    } else {
        // "RRset exists (value dependent)": the zone's class, TTL 0, and every RR of the
        // set exactly as read (section 2.4.2): the server compares the whole RRset.
        for txt in &read.records {
            message.add_answer(Record::from_rdata(
                marker_owner.clone(),
                0,
                RData::TXT(txt.clone()),
            ));
        }
    }
    let mut delete = Record::update0(marker_owner.clone(), 0, RecordType::TXT);
    delete.dns_class = DNSClass::ANY;
    message.add_authority(delete);
    message.add_authority(Record::from_rdata(
        marker_owner,
        p.ttl,
        RData::TXT(TXT::new(vec![text])),
    ));
    send_update(server, &mut message, Some(&read.name)).await?;
    Ok(UpdateReport {
        server: server.address.clone(),
        name: p.name.clone(),
        kind: p.set.kind,
        values: normalise(p.set.kind, &p.set.values),
        deleted,
    })
}

/// Publishes `publication` on `server`: reads the marker, stops if it names a newer decision
/// ([`Published::Superseded`]) or one arbiter will not overwrite (the error says what the
/// operator must do), else sends the [`conditional_replace`] built on that read. When the
/// prerequisite fails (someone moved the marker in between) it reads and decides again, at
/// most [`PREREQUISITE_ROUNDS_MAX`] times. Then reads the zone's SOA serial: an error there
/// means the update may have been applied, and publishing again is safe (the marker then
/// reads [`MarkerVerdict::Same`]).
pub async fn publish_to(
    server: &DnsServer,
    publication: &Publication,
) -> Result<Published, DnsUpdateError> {
    let p = publication;
    for round in 1..=PREREQUISITE_ROUNDS_MAX {
        let read = read_marker(server, &p.name).await?;
        let verdict = read.verdict(p);
        if let MarkerVerdict::Newer(by) = verdict {
            return Ok(Published::Superseded { by });
        }
        match conditional_replace(server, p, &read).await {
            Ok(_) => {
                let serial = soa_serial(server, &p.zone).await?;
                return Ok(Published::Updated {
                    serial,
                    replaced: verdict,
                });
            }
            Err(DnsUpdateError::PrerequisiteFailed { .. }) => {
                info!(
                    server = %server.address, name = %p.name, round,
                    "dns marker moved between read and update; reading it again"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Err(DnsUpdateError::Contended {
        marker: marker::marker_name(&p.name),
        rounds: PREREQUISITE_ROUNDS_MAX,
    })
}

/// What `server` publishes for `name` and `kind` now, normalised: sorted, deduplicated,
/// addresses in canonical text, CNAME targets lowercase and fully qualified. An absent name
/// or type is an empty list. Only authoritative answers count: a server that is not
/// authoritative for the name says nothing about drift.
pub async fn query_rrset(
    server: &DnsServer,
    name: &str,
    kind: RecordKind,
) -> Result<Vec<String>, DnsUpdateError> {
    let owner = fqdn(name)?;
    let answer = query(server, owner.clone(), record_type(kind)).await?;
    let mut values: Vec<String> = answer
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match (&r.data, kind) {
            (RData::A(a), RecordKind::A) => Some(a.0.to_string()),
            (RData::AAAA(a), RecordKind::AAAA) => Some(a.0.to_string()),
            (RData::CNAME(c), RecordKind::CNAME) => Some(name_text(&c.0)),
            _ => None,
        })
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

/// The SOA serial `server` publishes for `zone`.
pub async fn soa_serial(server: &DnsServer, zone: &str) -> Result<u32, DnsUpdateError> {
    let apex = fqdn(zone)?;
    let answer = query(server, apex.clone(), RecordType::SOA).await?;
    answer
        .answers
        .iter()
        .filter(|r| r.name == apex)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .ok_or_else(|| DnsUpdateError::NotAuth {
            zone: zone.to_string(),
        })
}

/// Compares what `server` publishes with `publication`: its records (`set.kind` must carry
/// exactly the set's values and every other type in `old_kinds` must be absent; one
/// [`Drift`] per type that differs) and its marker (see [`DriftReport::needs_repair`]).
pub async fn drift(
    server: &DnsServer,
    publication: &Publication,
) -> Result<DriftReport, DnsUpdateError> {
    let p = publication;
    let records = record_drift(server, &p.name, &p.set, &p.old_kinds).await?;
    let read = read_marker(server, &p.name).await?;
    Ok(DriftReport {
        records,
        marker: read.verdict(p),
        marker_found: read.texts,
    })
}

/// The record part of [`drift`]: one [`Drift`] per type whose values differ from `set`.
pub async fn record_drift(
    server: &DnsServer,
    name: &str,
    set: &RecordSet,
    old_kinds: &[RecordKind],
) -> Result<Vec<Drift>, DnsUpdateError> {
    let mut kinds = vec![set.kind];
    for k in old_kinds {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let mut drifts = Vec::new();
    for kind in kinds {
        let expected = if kind == set.kind {
            normalise(kind, &set.values)
        } else {
            Vec::new()
        };
        let found = query_rrset(server, name, kind).await?;
        if found != expected {
            drifts.push(Drift {
                kind,
                expected,
                found,
            });
        }
    }
    Ok(drifts)
}

/// The one way the leader reaches an external DNS server: the `dns` step and the reconciler
/// hold one of these and never send an UPDATE or a query themselves, so a simulation can
/// record every UPDATE and play any server. [`Rfc2136`] is the real one.
pub trait DnsClient: Send + Sync + 'static {
    /// [`publish_to`]: one conditional UPDATE of `server`.
    fn publish_to<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<Published, DnsUpdateError>>;
    /// [`drift`]: what `server` publishes, compared with `publication`.
    fn drift<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<DriftReport, DnsUpdateError>>;
}

/// Real servers over the network: TSIG-signed RFC 2136 UPDATEs and queries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rfc2136;

impl DnsClient for Rfc2136 {
    fn publish_to<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<Published, DnsUpdateError>> {
        Box::pin(publish_to(server, publication))
    }

    fn drift<'a>(
        &'a self,
        server: &'a DnsServer,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<DriftReport, DnsUpdateError>> {
        Box::pin(drift(server, publication))
    }
}

/// Publishes `publication` on every one of `servers` in its zone concurrently
/// ([`publish_to`] each) and reports each server. A slow or failing server costs at most its
/// own `timeout_ms` per exchange and never blocks the others.
pub async fn publish(servers: &[DnsServer], publication: &Publication) -> PublishReport {
    publish_with(&Rfc2136, servers, publication).await
}

/// [`publish`] through `client`.
pub async fn publish_with(
    client: &dyn DnsClient,
    servers: &[DnsServer],
    publication: &Publication,
) -> PublishReport {
    let p = publication;
    let updates = servers
        .iter()
        .filter(|s| s.zone.eq_ignore_ascii_case(&p.zone))
        .map(|server| async move {
            let result = client.publish_to(server, p).await;
            match &result {
                Ok(Published::Updated { serial, replaced }) => info!(
                    server = %server.address, zone = %p.zone, name = %p.name, kind = ?p.set.kind,
                    serial, epoch = p.decision.epoch, policy_version = p.decision.policy_version,
                    ?replaced, "dns records replaced"
                ),
                Ok(Published::Superseded { by }) => info!(
                    server = %server.address, name = %p.name, epoch = p.decision.epoch,
                    newer = %by, "dns server already publishes a newer decision; nothing sent"
                ),
                Err(error) => warn!(
                    server = %server.address, zone = %p.zone, name = %p.name, kind = ?p.set.kind,
                    %error, "dns update failed"
                ),
            }
            ServerOutcome {
                server: server.address.clone(),
                result,
            }
        });
    PublishReport {
        zone: p.zone.clone(),
        name: p.name.clone(),
        outcomes: futures::future::join_all(updates).await,
    }
}

/// The UPDATE message replacing `name`'s records with `set` (not signed yet), and the types
/// whose rrsets it deletes first.
fn update_message(
    server: &DnsServer,
    name: &str,
    ttl: u32,
    set: &RecordSet,
    old_kinds: &[RecordKind],
) -> Result<(Message, Vec<RecordKind>), DnsUpdateError> {
    let zone = fqdn(&server.zone)?;
    let owner = fqdn(name)?;
    if !zone.zone_of(&owner) {
        return Err(DnsUpdateError::Invalid {
            reason: format!("{name} is not inside zone {}", server.zone),
        });
    }
    let rdatas = set
        .values
        .iter()
        .map(|v| rdata(set.kind, v))
        .collect::<Result<Vec<_>, _>>()?;

    let mut deleted = old_kinds.to_vec();
    deleted.push(set.kind);
    deleted.sort_by_key(|k| u16::from(record_type(*k)));
    deleted.dedup();

    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Update);
    message.metadata.recursion_desired = false;
    // In an UPDATE the question section is the zone section and the authority section is
    // the update section (RFC 2136 section 2).
    message.add_query(Query::query(zone, RecordType::SOA));
    for kind in &deleted {
        // Delete an RRset: class ANY, TTL 0, empty RDATA (RFC 2136 section 2.5.2).
        let mut delete = Record::update0(owner.clone(), 0, record_type(*kind));
        delete.dns_class = DNSClass::ANY;
        message.add_authority(delete);
    }
    for data in rdatas {
        message.add_authority(Record::from_rdata(owner.clone(), ttl, data));
    }
    Ok((message, deleted))
}

/// Signs `message`, sends it and maps the answer. `marker`: the marker a prerequisite is on,
/// for the error when it fails.
async fn send_update(
    server: &DnsServer,
    message: &mut Message,
    marker: Option<&str>,
) -> Result<(), DnsUpdateError> {
    let addr = server_addr(server)?;
    let signer = signer(server)?;
    let mut verifier = message
        .finalize(&signer, unix_now_s())
        .map_err(|e| DnsUpdateError::Invalid {
            reason: format!("cannot sign the update: {e}"),
        })?
        .ok_or_else(|| DnsUpdateError::Invalid {
            reason: "signing the update gave no verifier for the answer".into(),
        })?;
    let request = message.to_vec().map_err(|e| DnsUpdateError::Invalid {
        reason: format!("cannot encode the update: {e}"),
    })?;
    let answer = exchange(addr, message.metadata.id, request, server.timeout_ms).await?;
    check_update_answer(&answer, &mut verifier, server, marker)
}

/// Values as [`query_rrset`] reports them, so a committed set and a published one compare
/// equal when they mean the same records.
pub fn normalise(kind: RecordKind, values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = values
        .iter()
        .map(|v| match kind {
            RecordKind::A => v
                .parse::<Ipv4Addr>()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|_| v.clone()),
            RecordKind::AAAA => v
                .parse::<Ipv6Addr>()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|_| v.clone()),
            RecordKind::CNAME => {
                let lower = v.to_ascii_lowercase();
                if lower.ends_with('.') {
                    lower
                } else {
                    format!("{lower}.")
                }
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Maps the answer to a signed UPDATE.
///
/// We read the TSIG error field and the RCODE ourselves instead of letting hickory verify the
/// answer: a server that rejects our signature answers RCODE NOTAUTH with TSIG error BADSIG
/// (or BADKEY) and, as RFC 8945 section 5.3.2 requires, an empty MAC. hickory's verifier
/// checks the MAC length first and reports that answer as a truncated HMAC it does not
/// support, and the RCODE alone reads "Not authorized"; both send the operator away from
/// the one thing to fix, the secret.
fn check_update_answer(
    answer: &[u8],
    verifier: &mut TSigVerifier,
    server: &DnsServer,
    marker: Option<&str>,
) -> Result<(), DnsUpdateError> {
    let message = Message::from_vec(answer).map_err(|e| DnsUpdateError::BadResponse {
        reason: format!("cannot decode the answer: {e}"),
    })?;
    if let Some(error) = message.signature().and_then(|tsig| tsig.data.error) {
        let key = server.tsig_key.clone();
        return Err(match error {
            TsigError::BadSig => DnsUpdateError::BadSignature { key },
            TsigError::BadKey => DnsUpdateError::BadKey {
                key,
                zone: server.zone.clone(),
            },
            TsigError::BadTime => DnsUpdateError::BadTime {
                skew_s: server_time_s(&message.signature().expect("checked above").data.other)
                    .map(|t| t as i64 - unix_now_s() as i64),
            },
            other => DnsUpdateError::Other {
                rcode: u16::from(other),
            },
        });
    }
    let rcode = message.metadata.response_code;
    if let (Some(marker), ResponseCode::YXRRSet | ResponseCode::NXRRSet) = (marker, rcode) {
        // YXRRSET: we required no marker and there is one; NXRRSET: the marker is not the
        // RRset we read. Either way someone moved it, and the server applied nothing.
        return Err(DnsUpdateError::PrerequisiteFailed {
            marker: marker.to_string(),
        });
    }
    if rcode != ResponseCode::NoError {
        // An unsigned error answer is believed: at worst a forger makes us retry, which a
        // forged success could not be undone by.
        return Err(rcode_error(rcode, &server.zone));
    }
    // Success is believed only when the server signed it with our key: an unsigned NOERROR
    // could come from anything on the path and would hide an update that never happened.
    verifier
        .verify(answer)
        .map_err(|e| DnsUpdateError::BadResponse {
            reason: format!("the NOERROR answer's TSIG does not verify: {e}"),
        })?;
    Ok(())
}

/// Sends an unsigned query over TCP and returns the decoded, authoritative answer.
async fn query(
    server: &DnsServer,
    name: Name,
    rtype: RecordType,
) -> Result<Message, DnsUpdateError> {
    let addr = server_addr(server)?;
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name, rtype));
    let request = message.to_vec().map_err(|e| DnsUpdateError::Invalid {
        reason: format!("cannot encode the query: {e}"),
    })?;
    let answer = exchange(addr, message.metadata.id, request, server.timeout_ms).await?;
    let answer = Message::from_vec(&answer).map_err(|e| DnsUpdateError::BadResponse {
        reason: format!("cannot decode the answer: {e}"),
    })?;
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rcode => return Err(rcode_error(rcode, &server.zone)),
    }
    if !answer.metadata.authoritative {
        return Err(DnsUpdateError::NotAuth {
            zone: server.zone.clone(),
        });
    }
    Ok(answer)
}

/// One request, one answer on a fresh TCP connection, all within `timeout_ms`. A connection
/// per call keeps a broken server from holding state between calls; updates are rare.
async fn exchange(
    addr: SocketAddr,
    id: u16,
    request: Vec<u8>,
    timeout_ms: u64,
) -> Result<Vec<u8>, DnsUpdateError> {
    let io = |e: hickory_net::NetError| DnsUpdateError::Io {
        reason: e.to_string(),
    };
    let exchange = async {
        let (connect, mut handle) =
            TcpClientStream::new(addr, None, None, TokioRuntimeProvider::new());
        let mut stream = connect.await.map_err(io)?;
        handle.send(SerialMessage::new(request, addr)).map_err(io)?;
        for _ in 0..=FOREIGN_ANSWERS_MAX {
            match stream.next().await {
                Some(Ok(answer)) => {
                    let bytes = answer.into_parts().0;
                    if bytes.len() >= 2 && u16::from_be_bytes([bytes[0], bytes[1]]) == id {
                        return Ok(bytes);
                    }
                }
                Some(Err(e)) => return Err(io(e)),
                None => {
                    return Err(DnsUpdateError::Io {
                        reason: "the server closed the connection without answering".into(),
                    })
                }
            }
        }
        Err(DnsUpdateError::BadResponse {
            reason: format!("{FOREIGN_ANSWERS_MAX} answers with a foreign message id"),
        })
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), exchange)
        .await
        .unwrap_or(Err(DnsUpdateError::Timeout { timeout_ms }))
}

fn rcode_error(rcode: ResponseCode, zone: &str) -> DnsUpdateError {
    match rcode {
        ResponseCode::Refused => DnsUpdateError::Refused {
            zone: zone.to_string(),
        },
        ResponseCode::NotAuth => DnsUpdateError::NotAuth {
            zone: zone.to_string(),
        },
        ResponseCode::ServFail => DnsUpdateError::ServFail,
        other => DnsUpdateError::Other {
            rcode: u16::from(other),
        },
    }
}

/// Reads the secret at the moment of use (a rotated file takes effect without a restart) and
/// builds the signer. The error names where the secret was looked for, never its bytes.
fn signer(server: &DnsServer) -> Result<TSigner, DnsUpdateError> {
    let secret =
        Secret::read(&server.secret).map_err(|reason| DnsUpdateError::Secret { reason })?;
    let text: Vec<u8> = secret
        .as_bytes()
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let key = data_encoding::BASE64
        .decode(&text)
        .map_err(|_| DnsUpdateError::Secret {
            reason: format!(
                "the secret for key {:?} is not valid base64 text",
                server.tsig_key
            ),
        })?;
    let algorithm = match server.algorithm {
        TsigAlgorithm::HmacSha256 => WireTsigAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384 => WireTsigAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512 => WireTsigAlgorithm::HmacSha512,
    };
    TSigner::new(key, algorithm, fqdn(&server.tsig_key)?, TSIG_FUDGE_S).map_err(|e| {
        DnsUpdateError::Invalid {
            reason: format!("cannot build the TSIG signer: {e}"),
        }
    })
}

fn server_addr(server: &DnsServer) -> Result<SocketAddr, DnsUpdateError> {
    server.address.parse().map_err(|_| DnsUpdateError::Invalid {
        reason: format!("{:?} is not ip:port", server.address),
    })
}

fn fqdn(name: &str) -> Result<Name, DnsUpdateError> {
    let parsed = Name::from_ascii(name).map_err(|e| DnsUpdateError::Invalid {
        reason: format!("{name:?} is not a domain name: {e}"),
    })?;
    if !parsed.is_fqdn() {
        return Err(DnsUpdateError::Invalid {
            reason: format!("{name:?} must be fully qualified (end with a dot)"),
        });
    }
    Ok(parsed)
}

fn rdata(kind: RecordKind, value: &str) -> Result<RData, DnsUpdateError> {
    let invalid = || DnsUpdateError::Invalid {
        reason: format!("{value:?} is not a valid {kind:?} value"),
    };
    Ok(match kind {
        RecordKind::A => match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => RData::A(A(ip)),
            _ => return Err(invalid()),
        },
        RecordKind::AAAA => match value.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
            _ => return Err(invalid()),
        },
        RecordKind::CNAME => RData::CNAME(CNAME(fqdn(value).map_err(|_| invalid())?)),
    })
}

fn record_type(kind: RecordKind) -> RecordType {
    match kind {
        RecordKind::A => RecordType::A,
        RecordKind::AAAA => RecordType::AAAA,
        RecordKind::CNAME => RecordType::CNAME,
    }
}

/// Lowercase, fully qualified text of a name: `shop-b.example.`.
fn name_text(name: &Name) -> String {
    let text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text
    } else {
        format!("{text}.")
    }
}

/// TSIG signs with wall-clock seconds because the protocol says so (RFC 8945 section 5.2.3);
/// nothing in arbiter's safety depends on this value, only whether the server accepts it.
fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The server's clock from a BADTIME answer's "other data": 48-bit seconds since the epoch.
fn server_time_s(other: &[u8]) -> Option<u64> {
    (other.len() == 6).then(|| other.iter().fold(0u64, |t, b| (t << 8) | u64::from(*b)))
}

/// What the server at `address` (an embedded witness server, or any authoritative server
/// without TSIG) publishes for `name` and `kind`: an unsigned query, like [`query_rrset`].
pub async fn query_rrset_at(
    address: &str,
    zone: &str,
    name: &str,
    kind: RecordKind,
    timeout_ms: u64,
) -> Result<Vec<String>, DnsUpdateError> {
    let server = DnsServer {
        address: address.to_string(),
        zone: zone.to_string(),
        // Queries are not signed: no key is used.
        tsig_key: String::new(),
        algorithm: crate::config::TsigAlgorithm::HmacSha256,
        secret: crate::config::SecretRef {
            file: None,
            env: None,
        },
        timeout_ms,
    };
    query_rrset(&server, name, kind).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_sorts_and_canonicalises() {
        assert_eq!(
            normalise(
                RecordKind::A,
                &[
                    "192.0.2.11".into(),
                    "192.0.2.10".into(),
                    "192.0.2.11".into()
                ]
            ),
            vec!["192.0.2.10", "192.0.2.11"]
        );
        assert_eq!(
            normalise(RecordKind::AAAA, &["2001:DB8:0::0001".into()]),
            vec!["2001:db8::1"]
        );
        assert_eq!(
            normalise(RecordKind::CNAME, &["Shop-B.Example".into()]),
            vec!["shop-b.example."]
        );
    }

    #[test]
    fn bad_signature_message_points_at_the_secret() {
        let text = DnsUpdateError::BadSignature {
            key: "arbiter.".into(),
        }
        .to_string();
        assert!(
            text.starts_with(
                "the server rejected the TSIG signature: the secret does not match the server's key"
            ),
            "{text}"
        );
    }

    fn server_with_secret(secret: crate::config::SecretRef) -> DnsServer {
        DnsServer {
            // Nothing listens here; these tests fail before any packet is sent.
            address: "127.0.0.1:9".into(),
            zone: "shop.example.".into(),
            tsig_key: "arbiter-key.".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret,
            timeout_ms: 100,
        }
    }

    #[tokio::test]
    async fn unreadable_or_malformed_secret_is_a_secret_error_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let set = RecordSet {
            kind: RecordKind::A,
            values: vec!["192.0.2.1".into()],
        };
        let missing = server_with_secret(crate::config::SecretRef {
            file: Some(dir.path().join("absent")),
            env: None,
        });
        let e = replace_rrset(&missing, "a.shop.example.", 30, &set, &[])
            .await
            .unwrap_err();
        assert!(matches!(e, DnsUpdateError::Secret { .. }), "{e:?}");
        assert!(e.to_string().contains("absent"), "{e}");

        let path = dir.path().join("tsig");
        std::fs::write(&path, "not*base64*at-all\n").unwrap();
        let malformed = server_with_secret(crate::config::SecretRef {
            file: Some(path),
            env: None,
        });
        let e = replace_rrset(&malformed, "a.shop.example.", 30, &set, &[])
            .await
            .unwrap_err();
        assert!(matches!(e, DnsUpdateError::Secret { .. }), "{e:?}");
        assert!(!e.to_string().contains("not*base64"), "{e}");
    }

    #[test]
    fn badtime_other_data_is_the_server_clock() {
        assert_eq!(server_time_s(&[0, 0, 0x65, 0, 0, 1]), Some(0x6500_0001));
        assert_eq!(server_time_s(&[]), None);
    }
}
