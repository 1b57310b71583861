//! RFC 2136 provider: replaces a group's record set on external authoritative servers with
//! one TSIG-signed UPDATE per server, and reads back what each server publishes so the
//! leader can see drift.
//!
//! This module owns the wire exchange with one server (a TCP connection per call, bounded by
//! the server's `timeout_ms`) and the mapping of a server's answer to a [`DnsUpdateError`]
//! that says what the operator must fix. It must never choose the record set (the caller
//! passes the set of a committed activation), never retry on its own (the `dns` step and the
//! reconcile loop decide that), and never put the TSIG secret into an error or a log line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::DnsStreamHandle;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, SerialMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as WireTsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tracing::{info, warn};

use crate::config::{DnsServer, RecordKind, RecordSet, TsigAlgorithm};
use crate::hooks::secret::Secret;

/// Allowed difference between our clock and the server's when it checks the TSIG time. RFC
/// 8945 recommends 300 s; less makes a mildly skewed witness fail every update.
const TSIG_FUDGE_S: u16 = 300;

/// Answers with a foreign message id we skip on one connection before giving up. We send one
/// message per connection, so any foreign id means a confused server; do not wait forever.
const FOREIGN_ANSWERS_MAX: usize = 4;

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
         zone; grant it in the server's update policy"
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
    /// Any other RCODE (or TSIG error) the server answered.
    #[error("the server answered {} ({rcode})", <ResponseCode as From<u16>>::from(*rcode).to_str())]
    Other { rcode: u16 },
}

/// One successful [`replace_rrset`].
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

/// The outcome of one server in a [`publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOutcome {
    /// The server's `ip:port`, as in the policy.
    pub server: String,
    /// The zone's SOA serial read after the update, or why the update (or that read) failed.
    pub result: Result<u32, DnsUpdateError>,
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

/// Replaces what `name` publishes on `server` with `set`, in ONE TSIG-signed UPDATE over
/// TCP: first delete the rrsets of every type in `old_kinds` and of `set.kind` (so a switch
/// from A to CNAME leaves no A behind), then add each value of `set` with `ttl`. The server
/// applies the message atomically, so resolvers see the old set or the new one, never a mix.
///
/// No prerequisites: the update is idempotent, and a step retried after a leader change (S6)
/// sends the same message again. The whole exchange (connect, send, answer) is bounded by the
/// server's `timeout_ms`. Success is reported only for a NOERROR answer whose TSIG verifies.
pub async fn replace_rrset(
    server: &DnsServer,
    name: &str,
    ttl: u32,
    set: &RecordSet,
    old_kinds: &[RecordKind],
) -> Result<UpdateReport, DnsUpdateError> {
    let addr = server_addr(server)?;
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
    let signer = signer(server)?;

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
    check_update_answer(&answer, &mut verifier, server)?;

    Ok(UpdateReport {
        server: server.address.clone(),
        name: name.to_string(),
        kind: set.kind,
        values: normalise(set.kind, &set.values),
        deleted,
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

/// Compares what `server` publishes at `name` with `set`: `set.kind` must carry exactly the
/// set's values and every other type in `old_kinds` must be absent. Returns one [`Drift`] per
/// type that differs; empty means in sync.
pub async fn drift(
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

/// Replaces `name`'s record set on every server of `zone` concurrently and reports each
/// server: the SOA serial after the update, or why it failed. A slow or failing server costs
/// at most its own `timeout_ms` (twice: update, then serial read) and never blocks the others.
/// An error from the serial read means the update itself may have been applied; publishing
/// again is safe because the update is idempotent.
pub async fn publish(
    servers: &[DnsServer],
    zone: &str,
    name: &str,
    ttl: u32,
    set: &RecordSet,
    old_kinds: &[RecordKind],
) -> PublishReport {
    let updates = servers
        .iter()
        .filter(|s| s.zone.eq_ignore_ascii_case(zone))
        .map(|server| async move {
            let result = match replace_rrset(server, name, ttl, set, old_kinds).await {
                Ok(_) => soa_serial(server, zone).await,
                Err(e) => Err(e),
            };
            match &result {
                Ok(serial) => info!(
                    server = %server.address, zone, name, kind = ?set.kind, serial,
                    "dns records replaced"
                ),
                Err(error) => warn!(
                    server = %server.address, zone, name, kind = ?set.kind, %error,
                    "dns update failed"
                ),
            }
            ServerOutcome {
                server: server.address.clone(),
                result,
            }
        });
    PublishReport {
        zone: zone.to_string(),
        name: name.to_string(),
        outcomes: futures::future::join_all(updates).await,
    }
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
