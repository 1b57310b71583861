//! Who may do what: the roles a client certificate names, the caller of a request as its
//! verified certificate describes it ([`Caller`]), the one table of what each RPC and HTTP
//! route needs ([`need_of`]), and the middleware that enforces it on the witness listener
//! before any handler runs ([`enforce`]).
//!
//! Roles live in the certificate, as URI SANs beside the witness identity
//! ([`crate::tls::WITNESS_URI_PREFIX`]):
//!
//! | URI SAN                                   | may                                               |
//! |-------------------------------------------|---------------------------------------------------|
//! | `arbiter://role/viewer`                   | read: status, watch, operations, policy, members, DNS check, metrics, fence checks |
//! | `arbiter://role/operator`                 | what a viewer may, and failover, failback, approve, retry, skip, abort, mode |
//! | `arbiter://role/admin`                    | everything: policy apply, init, members, and any lease |
//! | `arbiter://role/check`                    | fence checks (`Check`, `GET .../fence`) of any group, nothing else |
//! | `arbiter://role/break-glass`              | what an operator may, and approve alone where a group asks for two (`approve --break-glass REASON`) |
//! | `arbiter://role/agent/<group>/<region>`   | acquire, renew and check the lease of that one pair |
//!
//! A witness certificate may speak the witness-to-witness protocol and make the lease calls a
//! follower forwards to the leader; nothing else. A certificate with no role may reach only
//! `/healthz` and `/readyz`. Changing what a holder may do means issuing it a new leaf from
//! the same CA; the CA itself never changes. Admin certificates are the bootstrap: `init` and
//! the first `policy apply` need one, and no policy has to exist for it to be honoured.
//!
//! Must never: let a request reach a handler before its caller was checked, decide on anything
//! the caller sent rather than its verified certificate, or leave an RPC or route without an
//! entry in the table (a test reads the protocol file and demands one for each).

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::api::ApiError;
use crate::raft::Consensus;
use crate::state::LeaseKind;
use crate::telemetry::Metrics;

/// How a client certificate names a role: a URI SAN with this prefix.
pub const ROLE_URI_PREFIX: &str = "arbiter://role/";

/// What the holder of a certificate may do (besides being a witness).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads, and fence checks.
    Viewer,
    /// A viewer's reads, and the operator actions.
    Operator,
    /// Everything.
    Admin,
    /// Fence checks only: for hooks that ask "may region R with epoch E still act?".
    Check,
    /// An operator who may also approve alone, with a reason, where the group's policy asks
    /// for two approvals: the lone responder's certificate, kept for emergencies.
    BreakGlass,
    /// The lease of one (group, region): the agent beside that region's primary.
    Agent { group: String, region: String },
}

impl Role {
    /// The URI SAN that names this role.
    pub fn uri(&self) -> String {
        match self {
            Role::Agent { group, region } => format!("{ROLE_URI_PREFIX}agent/{group}/{region}"),
            other => format!("{ROLE_URI_PREFIX}{other}"),
        }
    }

    /// The role a URI SAN names: `None` when it is not a role URI at all, an error naming
    /// the problem when it has the role prefix but names no role this version knows.
    pub fn parse_uri(uri: &str) -> Option<Result<Role, String>> {
        let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
        Some(Role::parse(rest).ok_or_else(|| {
            format!(
                "{uri:?} names no role: use viewer, operator, admin, check, break-glass or agent/<group>/<region>"
            )
        }))
    }

    /// A role as written after the prefix (and on the `certs` command line):
    /// `viewer`, `operator`, `admin`, `check`, `break-glass`, `agent/<group>/<region>`.
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "check" => Role::Check,
            "break-glass" => Role::BreakGlass,
            _ => {
                let pair = text.strip_prefix("agent/")?;
                let (group, region) = pair.split_once('/')?;
                let valid = |name: &str| crate::config::check_name("role", name).is_ok();
                if !valid(group) || !valid(region) {
                    return None;
                }
                Role::Agent {
                    group: group.into(),
                    region: region.into(),
                }
            }
        })
    }

    /// Where the role sits on the viewer < operator < admin ladder (0 when off it).
    fn level(&self) -> u8 {
        match self {
            Role::Viewer => 1,
            Role::Operator | Role::BreakGlass => 2,
            Role::Admin => 3,
            Role::Check | Role::Agent { .. } => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Viewer => f.write_str("viewer"),
            Role::Operator => f.write_str("operator"),
            Role::Admin => f.write_str("admin"),
            Role::Check => f.write_str("check"),
            Role::BreakGlass => f.write_str("break-glass"),
            Role::Agent { group, region } => write!(f, "agent/{group}/{region}"),
        }
    }
}

/// What a request needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Anyone with a certificate of the cluster CA (`/healthz`, `/readyz`).
    Nothing,
    /// The viewer role or higher.
    View,
    /// The operator role or higher.
    Operate,
    /// The admin role.
    Admin,
    /// The break-glass role (or admin): one approval where the group asks for more.
    BreakGlass,
    /// A witness certificate (the witness-to-witness protocol).
    Witness,
    /// Some role that can make a lease call; the handler then checks the request's
    /// (group, region) with [`Need::Lease`] (the table cannot see the body).
    SomeLease,
    /// This lease call on this pair.
    Lease {
        kind: LeaseKind,
        group: String,
        region: String,
    },
}

impl Need {
    /// What the caller lacks, in words for the denial.
    fn describe(&self) -> String {
        match self {
            Need::Nothing => "nothing".into(),
            Need::View => "the viewer, operator or admin role".into(),
            Need::Operate => "the operator or admin role".into(),
            Need::Admin => "the admin role".into(),
            Need::BreakGlass => "the break-glass or admin role".into(),
            Need::Witness => "a witness certificate (URI SAN arbiter://witness/<id>)".into(),
            Need::SomeLease => "the agent, check, viewer, operator or admin role".into(),
            Need::Lease {
                kind: LeaseKind::Check,
                group,
                region,
            } => format!("the role agent/{group}/{region}, check, viewer, operator or admin"),
            Need::Lease { group, region, .. } => {
                format!("the role agent/{group}/{region} or admin")
            }
        }
    }
}

/// The caller of one request, from its verified certificate (never from anything it sent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The certificate's subject common name, or `unknown`: the actor in the audit log and
    /// the identity in denials and their metrics.
    pub identity: String,
    /// The witness id the certificate names, if it is a witness certificate.
    pub witness: Option<u64>,
    /// The site the certificate names ([`crate::tls::SITE_URI_PREFIX`]): a witness's failure
    /// domain, as the CA signed it. `None` with none or with two different ones.
    pub site: Option<String>,
    /// The roles the certificate names, sorted, without duplicates.
    pub roles: Vec<Role>,
    /// The certificate's serial number ([`crate::config::normalise_serial`]'s form), which
    /// the policy's `access.denied_serials` may revoke; empty without a certificate.
    pub serial: String,
}

/// A refused request: who asked, for what, and what it would have needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The RPC or route (`Failover`, `GET /metrics`).
    pub method: String,
    pub identity: String,
    /// What the caller would need, in words.
    pub needed: String,
    /// What the caller has, in words.
    pub has: String,
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        ApiError::PermissionDenied {
            method: d.method,
            identity: d.identity,
            needed: d.needed,
            has: d.has,
        }
    }
}

impl Caller {
    /// The caller presenting `certs` (leaf first), or a caller with no identity and no role
    /// when there are none.
    pub fn from_certs(certs: Option<&[CertificateDer<'_>]>) -> Caller {
        match certs.and_then(|c| c.first()) {
            Some(leaf) => {
                let names = crate::tls::names_of(leaf);
                Caller {
                    serial: names.serial.unwrap_or_default(),
                    ..Caller::from_uris(names.common_name, &names.uris)
                }
            }
            None => Caller::from_uris(None, &[]),
        }
    }

    /// The caller whose certificate has common name `cn` and URI SANs `uris`. URIs with the
    /// role prefix that name no role are ignored (they grant nothing); two different witness
    /// ids make no witness.
    pub fn from_uris(cn: Option<String>, uris: &[String]) -> Caller {
        let mut roles: Vec<Role> = uris
            .iter()
            .filter_map(|u| Role::parse_uri(u))
            .filter_map(Result::ok)
            .collect();
        roles.sort();
        roles.dedup();
        let mut witnesses = uris
            .iter()
            .filter_map(|u| u.strip_prefix(crate::tls::WITNESS_URI_PREFIX));
        let witness = match (witnesses.next(), witnesses.next()) {
            (Some(id), None) => id.parse().ok(),
            _ => None,
        };
        let mut sites: Vec<&str> = uris
            .iter()
            .filter_map(|u| u.strip_prefix(crate::tls::SITE_URI_PREFIX))
            .collect();
        sites.sort_unstable();
        sites.dedup();
        let site = match sites.as_slice() {
            [site] if crate::config::check_name("site", site).is_ok() => Some(site.to_string()),
            _ => None,
        };
        Caller {
            identity: cn.unwrap_or_else(|| crate::tls::UNNAMED_IDENTITY.into()),
            witness,
            site,
            roles,
            serial: String::new(),
        }
    }

    /// The caller of a gRPC request: the one [`enforce`] put in its extensions. A request
    /// that did not pass through [`enforce`] has a caller with no identity and no role, so a
    /// service mounted without the check refuses everything rather than trusting a
    /// certificate nobody checked against the denylist.
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::from_certs(None))
    }

    fn level(&self) -> u8 {
        self.roles.iter().map(Role::level).max().unwrap_or(0)
    }

    fn is_agent_of(&self, group: &str, region: &str) -> bool {
        self.roles.iter().any(
            |r| matches!(r, Role::Agent { group: g, region: rg } if g == group && rg == region),
        )
    }

    /// Whether this caller may do what `need` describes.
    pub fn allows(&self, need: &Need) -> bool {
        let level = self.level();
        match need {
            Need::Nothing => true,
            Need::View => level >= 1,
            Need::Operate => level >= 2,
            Need::Admin => level >= 3,
            Need::BreakGlass => level >= 3 || self.roles.contains(&Role::BreakGlass),
            Need::Witness => self.witness.is_some(),
            Need::SomeLease => {
                self.witness.is_some()
                    || level >= 1
                    || self
                        .roles
                        .iter()
                        .any(|r| matches!(r, Role::Check | Role::Agent { .. }))
            }
            Need::Lease {
                kind,
                group,
                region,
            } => {
                // A witness makes lease calls only to forward one its own table admitted.
                self.witness.is_some()
                    || level >= 3
                    || self.is_agent_of(group, region)
                    || (*kind == LeaseKind::Check
                        && (level >= 1 || self.roles.contains(&Role::Check)))
            }
        }
    }

    /// `Ok` when this caller may do `need`; otherwise the denial for `method`.
    pub fn require(&self, method: &str, need: &Need) -> Result<(), Denied> {
        if self.allows(need) {
            return Ok(());
        }
        Err(Denied {
            method: method.to_string(),
            identity: self.identity.clone(),
            needed: need.describe(),
            has: self.describe(),
        })
    }

    /// [`Self::require`] for a handler's own check (one the access table cannot make):
    /// a denial is counted in `metrics` as the access check counts its own, and answered as
    /// `PERMISSION_DENIED`.
    pub fn require_counted(
        &self,
        method: &str,
        need: &Need,
        metrics: &Metrics,
    ) -> Result<(), ApiError> {
        self.require(method, need).map_err(|denied| {
            metrics.denied(&denied);
            ApiError::from(denied)
        })
    }

    /// What this caller has, in words for a denial.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.roles.iter().map(|r| format!("role {r}")).collect();
        if let Some(id) = self.witness {
            parts.push(format!("witness {id}"));
        }
        if parts.is_empty() {
            "no role".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The gRPC services of the protocol file, by their full names.
const RAFT_SERVICE: &str = "arbiter.v1.Raft";
const ARBITER_SERVICE: &str = "arbiter.v1.Arbiter";
const FENCING_SERVICE: &str = "arbiter.v1.Fencing";

/// What a request for `path` (the URI path: `/arbiter.v1.Arbiter/Failover`, `/v1/status`)
/// needs, and the name the denial and its metric use. Paths not listed need the admin role.
pub fn need_of(http_method: &str, path: &str) -> (Need, String) {
    if let Some((service, rpc)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(s, _)| s.starts_with("arbiter.v1."))
    {
        let need = match (service, rpc) {
            (RAFT_SERVICE, _) => Need::Witness,
            (FENCING_SERVICE, "Acquire" | "Renew" | "Check") => Need::SomeLease,
            (
                ARBITER_SERVICE,
                "Status" | "Watch" | "Operations" | "DnsCheck" | "PolicyShow" | "MembersList",
            ) => Need::View,
            (
                ARBITER_SERVICE,
                "Failover" | "Failback" | "Approve" | "Retry" | "Skip" | "Abort" | "SetMode",
            ) => Need::Operate,
            _ => Need::Admin,
        };
        return (need, rpc.to_string());
    }
    let need = match (http_method, path) {
        ("GET", "/healthz" | "/readyz") => Need::Nothing,
        ("GET", "/metrics" | "/v1/status") => Need::View,
        (_, p) if p.starts_with("/v1/groups/") => {
            let rest = &p["/v1/groups/".len()..];
            match rest.split_once('/') {
                None => Need::View,
                Some((_, "fence" | "acquire" | "renew")) => Need::SomeLease,
                Some(_) => Need::Admin,
            }
        }
        _ => Need::Admin,
    };
    (need, format!("{http_method} {path}"))
}

/// What [`enforce`] reads: where denials are counted, and the applied state whose policy
/// may revoke certificates.
#[derive(Clone)]
pub struct Enforcer {
    pub metrics: Arc<Metrics>,
    pub consensus: Arc<Consensus>,
    /// Each identity's allowance of writes on this witness.
    pub writes: Arc<WriteLimiter>,
}

impl Enforcer {
    /// The revocation of `caller`'s certificate by the policy applied on this witness, if
    /// any: the policy version that lists its serial.
    /// Takes one of `caller`'s writes when `method` is one ([`rate::is_write`]); the refusal
    /// when its allowance is used.
    fn limit_writes(&self, caller: &Caller, method: &str) -> Result<(), ApiError> {
        if !rate::is_write(method) {
            return Ok(());
        }
        let per_minute = self.consensus.with_state(|s| {
            s.policy
                .as_ref()
                .map_or(crate::config::WRITES_PER_MINUTE_DEFAULT, |p| {
                    p.access.writes_per_minute
                })
        });
        self.writes
            .take(&caller.identity, per_minute, std::time::Instant::now())
            .map_err(|wait| {
                self.metrics
                    .rate_limited(method, &caller.identity, per_minute);
                ApiError::RateLimited {
                    method: method.to_string(),
                    identity: caller.identity.clone(),
                    per_minute,
                    retry_after_ms: wait.as_millis() as u64 + 1,
                }
            })
    }

    fn revoked(&self, caller: &Caller) -> Option<u64> {
        if caller.serial.is_empty() {
            return None;
        }
        self.consensus.with_state(|s| {
            s.policy
                .as_ref()
                .filter(|p| p.access.denies(&caller.serial))
                .map(|_| s.policy_version)
        })
    }
}

/// The middleware on every route of the witness listener: names the caller from its
/// connection's verified certificate, refuses a certificate the applied policy revokes
/// (checked on every request, so connections opened before the revocation are refused from
/// their next request on) and what [`need_of`] says it may not do (a `PERMISSION_DENIED`
/// status for gRPC, HTTP 403 for the rest, counted in the metrics), and hands the
/// [`Caller`] on to the handler in the request's extensions.
pub async fn enforce(State(enforcer): State<Enforcer>, mut req: Request, next: Next) -> Response {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    let caller = Caller::from_certs(certs.as_deref().map(Vec::as_slice));
    let (need, method) = need_of(req.method().as_str(), req.uri().path());
    let verdict = match enforcer.revoked(&caller) {
        Some(version) => Err(Denied {
            method: method.clone(),
            identity: caller.identity.clone(),
            needed: "a certificate that is not revoked".into(),
            has: format!(
                "serial {} revoked by access.denied_serials of policy version {version}",
                caller.serial
            ),
        }),
        None => caller.require(&method, &need),
    };
    let verdict = match verdict {
        Err(denied) => {
            enforcer.metrics.denied(&denied);
            Err(ApiError::from(denied))
        }
        Ok(()) => enforcer.limit_writes(&caller, &method),
    };
    if let Err(error) = verdict {
        let grpc = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        return if grpc {
            tonic::Status::from(error).into_http::<axum::body::Body>()
        } else {
            crate::fencing::error_response(&error)
        };
    }
    req.extensions_mut().insert(caller);
    next.run(req).await.into_response()
}

pub mod rate;
pub mod sizes;

pub use rate::WriteLimiter;

#[cfg(test)]
mod tests;
