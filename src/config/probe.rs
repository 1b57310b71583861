//! Probe specifications: what a witness checks to decide whether a region is reachable, as
//! written in the policy (`[[regions]]` … `probes = [ … ]`), and their validation.
//!
//! This module owns the TOML shape of a probe and the checks that turn it into a trusted
//! value. It must never open a socket or resolve a name: validation runs before anything is
//! proposed or bound, and the only file it reads is a probe's `ca`, to prove it is usable here.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// Probe interval bounds: faster than 100 ms is load, not health checking; slower than a
/// minute makes failover detection slower than most RTO targets.
pub const INTERVAL_MS_MIN: u64 = 100;
pub const INTERVAL_MS_MAX: u64 = 60_000;
/// Default interval: one probe a second keeps detection within a few seconds.
pub const INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Default timeout: below the default interval, so one probe ends before the next starts.
pub const TIMEOUT_MS_DEFAULT: u64 = 800;
/// Default jitter: spreads the probes of many witnesses so they do not arrive in lockstep.
pub const JITTER_MS_DEFAULT: u64 = 100;
/// A timeout shorter than this cannot complete a TLS handshake across regions.
pub const TIMEOUT_MS_MIN: u64 = 10;
/// At most this many probes per region: a region is judged on a few signals, and every probe
/// runs on every witness.
pub const PROBES_PER_REGION_MAX: usize = 8;
/// Bound on `body_contains`: the probe reads at most [`crate::health::probe::BODY_BYTES_MAX`] bytes
/// of body anyway, and a short marker is what the option is for.
pub const BODY_CONTAINS_BYTES_MAX: usize = 1_024;
/// Bound on URLs and addresses, so a policy cannot carry arbitrarily large strings into every
/// witness's probe loop and log lines.
pub const TARGET_BYTES_MAX: usize = 2_048;

/// One probe of a region: a target and its schedule.
///
/// In TOML every field sits in one flat table tagged by `kind`:
///
/// ```toml
/// probes = [
///   { kind = "http", url = "https://db.region-a.example/health", expect_status = 200,
///     body_contains = "ok", ca = "/etc/arbiter/probe-ca.pem", interval_ms = 1000 },
///   { kind = "tcp", addr = "db.region-a.example:5432", timeout_ms = 500 },
///   { kind = "grpc", addr = "api.region-a.example:443", service = "checkout", tls = true },
/// ]
/// ```
///
/// Unknown keys, and keys that belong to another kind (an `url` on a `tcp` probe), are
/// refused when the policy is parsed. Call [`ProbeSpec::validate`] before using a value that
/// did not come from a validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProbeSpec", into = "RawProbeSpec")]
pub struct ProbeSpec {
    /// What is checked, and what counts as passing.
    pub target: ProbeTarget,
    /// Time between the starts of two probes, before jitter.
    pub interval_ms: u64,
    /// Deadline of one probe, connection and answer included. Less than `interval_ms`, so
    /// probes of one spec never overlap.
    pub timeout_ms: u64,
    /// Up to this much random delay is added to each interval. Less than `interval_ms`.
    pub jitter_ms: u64,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// An HTTP(S) GET that must answer `expect_status` (and contain `body_contains`).
    Http {
        /// `http://` or `https://` URL.
        url: String,
        /// The status that counts as passing; any other status fails. Redirects are not
        /// followed, so a 301 is compared like any other status.
        expect_status: u16,
        /// If set, the first [`crate::health::probe::BODY_BYTES_MAX`] bytes of the body must contain
        /// this text.
        body_contains: Option<String>,
        /// PEM file of the only CA trusted for this https endpoint. Without it, the system's
        /// roots are used.
        ca: Option<PathBuf>,
    },
    /// A TCP connection that must be accepted.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// A `grpc.health.v1.Health/Check` call that must answer `SERVING`.
    Grpc {
        /// `host:port`.
        addr: String,
        /// The service asked about; empty (the default) means the whole server.
        service: String,
        /// Whether to speak TLS; plaintext otherwise.
        tls: bool,
        /// PEM file of the only CA trusted when `tls = true`. Without it, the system's roots
        /// are used.
        ca: Option<PathBuf>,
    },
}

impl ProbeTarget {
    /// The kind as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeTarget::Http { .. } => "http",
            ProbeTarget::Tcp { .. } => "tcp",
            ProbeTarget::Grpc { .. } => "grpc",
        }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeTarget::Http { url, .. } => write!(f, "http {url}"),
            ProbeTarget::Tcp { addr } => write!(f, "tcp {addr}"),
            ProbeTarget::Grpc { addr, tls, .. } => {
                write!(f, "grpc{} {addr}", if *tls { "+tls" } else { "" })
            }
        }
    }
}

impl ProbeSpec {
    /// A spec with the default schedule.
    pub fn new(target: ProbeTarget) -> Self {
        Self {
            target,
            interval_ms: INTERVAL_MS_DEFAULT,
            timeout_ms: TIMEOUT_MS_DEFAULT,
            jitter_ms: JITTER_MS_DEFAULT,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_millis(self.jitter_ms)
    }

    /// Checks the spec; `key_prefix` is where it sits in the policy (`regions[0].probes[1]`),
    /// and errors name the offending key below it (`regions[0].probes[1].url`).
    ///
    /// A `ca` file is read and must hold at least one certificate, so a policy that names a
    /// CA missing on this witness is refused here rather than failing every probe later.
    pub fn validate(&self, key_prefix: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{key_prefix}.{field}");
        if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&self.interval_ms) {
            return Err(ConfigError::new(
                key("interval_ms"),
                format!(
                    "{} is out of range: use {INTERVAL_MS_MIN}..={INTERVAL_MS_MAX}",
                    self.interval_ms
                ),
            ));
        }
        if self.timeout_ms < TIMEOUT_MS_MIN || self.timeout_ms >= self.interval_ms {
            return Err(ConfigError::new(
                key("timeout_ms"),
                format!(
                    "{} is out of range: use at least {TIMEOUT_MS_MIN} and less than interval_ms ({})",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        if self.jitter_ms >= self.interval_ms {
            return Err(ConfigError::new(
                key("jitter_ms"),
                format!(
                    "{} must be less than interval_ms ({})",
                    self.jitter_ms, self.interval_ms
                ),
            ));
        }
        match &self.target {
            ProbeTarget::Http {
                url,
                expect_status,
                body_contains,
                ca,
            } => {
                check_url(&key("url"), url)?;
                if !(100..=599).contains(expect_status) {
                    return Err(ConfigError::new(
                        key("expect_status"),
                        format!("{expect_status} is not an HTTP status: use 100..=599"),
                    ));
                }
                if let Some(text) = body_contains {
                    if text.is_empty() || text.len() > BODY_CONTAINS_BYTES_MAX {
                        return Err(ConfigError::new(
                            key("body_contains"),
                            format!("use 1..={BODY_CONTAINS_BYTES_MAX} bytes of text"),
                        ));
                    }
                }
                if let Some(path) = ca {
                    if url.starts_with("http://") {
                        return Err(ConfigError::new(
                            key("ca"),
                            "a CA only applies to an https:// url",
                        ));
                    }
                    check_ca(&key("ca"), path)?;
                }
            }
            ProbeTarget::Tcp { addr } => check_target_addr(&key("addr"), addr)?,
            ProbeTarget::Grpc {
                addr,
                service,
                tls,
                ca,
            } => {
                check_target_addr(&key("addr"), addr)?;
                if service.len() > TARGET_BYTES_MAX {
                    return Err(ConfigError::new(
                        key("service"),
                        format!("longer than {TARGET_BYTES_MAX} bytes"),
                    ));
                }
                if let Some(path) = ca {
                    if !tls {
                        return Err(ConfigError::new(
                            key("ca"),
                            "a CA only applies with tls = true",
                        ));
                    }
                    check_ca(&key("ca"), path)?;
                }
            }
        }
        Ok(())
    }
}

/// Validates the probes of one region; `key_prefix` is the region's key (`regions[0]`).
pub fn validate_region_probes(key_prefix: &str, probes: &[ProbeSpec]) -> Result<(), ConfigError> {
    if probes.len() > PROBES_PER_REGION_MAX {
        return Err(ConfigError::new(
            format!("{key_prefix}.probes"),
            format!(
                "{} probes, more than the limit of {PROBES_PER_REGION_MAX}",
                probes.len()
            ),
        ));
    }
    for (i, probe) in probes.iter().enumerate() {
        probe.validate(&format!("{key_prefix}.probes[{i}]"))?;
    }
    Ok(())
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.len() > TARGET_BYTES_MAX {
        return Err(ConfigError::new(
            key,
            format!("longer than {TARGET_BYTES_MAX} bytes"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::new(key, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            key,
            format!("{url:?}: use an http:// or https:// URL"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(key, format!("{url:?} has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Policy is replicated and shown in status; credentials must not live in it.
        return Err(ConfigError::new(
            key,
            "credentials in a probe URL would be replicated and displayed: remove them",
        ));
    }
    Ok(())
}

/// `host:port`, with IPv6 literals in brackets (`[::1]:50051`). The host is not resolved.
fn check_target_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::new(key, format!("{addr:?} is not host:port: {why}"));
    if addr.len() > TARGET_BYTES_MAX {
        return Err(bad("too long"));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(bad("port must be 1..=65535")),
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if host_ok {
        Ok(())
    } else {
        Err(bad("invalid host (IPv6 literals go in brackets)"))
    }
}

fn check_ca(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    match reqwest::Certificate::from_pem_bundle(&bytes) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            key,
            format!("{} holds no PEM certificate", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            key,
            format!("{} is not a PEM certificate file: {e}", path.display()),
        )),
    }
}

/// The flat TOML table. Every key of every kind is here, so `deny_unknown_fields` refuses
/// typos; [`ProbeSpec::try_from`] then refuses keys that belong to another kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbeSpec {
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_jitter_ms")]
    jitter_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Http,
    Tcp,
    Grpc,
}

fn default_interval_ms() -> u64 {
    INTERVAL_MS_DEFAULT
}

fn default_timeout_ms() -> u64 {
    TIMEOUT_MS_DEFAULT
}

fn default_jitter_ms() -> u64 {
    JITTER_MS_DEFAULT
}

impl TryFrom<RawProbeSpec> for ProbeSpec {
    type Error = String;

    fn try_from(raw: RawProbeSpec) -> Result<Self, String> {
        let kind = match raw.kind {
            RawKind::Http => "http",
            RawKind::Tcp => "tcp",
            RawKind::Grpc => "grpc",
        };
        let not_for = |field: &str| format!("`{field}` does not apply to kind = \"{kind}\"");
        let needs = |field: &str| format!("kind = \"{kind}\" needs `{field}`");
        // The first of `fields` that is set but does not apply to this kind.
        let refuse_set = |fields: &[(&str, bool)]| match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(not_for(field)),
            None => Ok(()),
        };
        let target = match raw.kind {
            RawKind::Http => {
                refuse_set(&[
                    ("addr", raw.addr.is_some()),
                    ("service", raw.service.is_some()),
                    ("tls", raw.tls.is_some()),
                ])?;
                ProbeTarget::Http {
                    url: raw.url.ok_or_else(|| needs("url"))?,
                    expect_status: raw.expect_status.unwrap_or(200),
                    body_contains: raw.body_contains,
                    ca: raw.ca,
                }
            }
            RawKind::Tcp => {
                refuse_set(&[
                    ("url", raw.url.is_some()),
                    ("expect_status", raw.expect_status.is_some()),
                    ("body_contains", raw.body_contains.is_some()),
                    ("service", raw.service.is_some()),
                    ("tls", raw.tls.is_some()),
                    ("ca", raw.ca.is_some()),
                ])?;
                ProbeTarget::Tcp {
                    addr: raw.addr.ok_or_else(|| needs("addr"))?,
                }
            }
            RawKind::Grpc => {
                refuse_set(&[
                    ("url", raw.url.is_some()),
                    ("expect_status", raw.expect_status.is_some()),
                    ("body_contains", raw.body_contains.is_some()),
                ])?;
                ProbeTarget::Grpc {
                    addr: raw.addr.ok_or_else(|| needs("addr"))?,
                    service: raw.service.unwrap_or_default(),
                    tls: raw.tls.unwrap_or(false),
                    ca: raw.ca,
                }
            }
        };
        Ok(ProbeSpec {
            target,
            interval_ms: raw.interval_ms,
            timeout_ms: raw.timeout_ms,
            jitter_ms: raw.jitter_ms,
        })
    }
}

impl From<ProbeSpec> for RawProbeSpec {
    fn from(spec: ProbeSpec) -> Self {
        let mut raw = RawProbeSpec {
            kind: RawKind::Tcp,
            url: None,
            expect_status: None,
            body_contains: None,
            addr: None,
            service: None,
            tls: None,
            ca: None,
            interval_ms: spec.interval_ms,
            timeout_ms: spec.timeout_ms,
            jitter_ms: spec.jitter_ms,
        };
        match spec.target {
            ProbeTarget::Http {
                url,
                expect_status,
                body_contains,
                ca,
            } => {
                raw.kind = RawKind::Http;
                raw.url = Some(url);
                raw.expect_status = Some(expect_status);
                raw.body_contains = body_contains;
                raw.ca = ca;
            }
            ProbeTarget::Tcp { addr } => raw.addr = Some(addr),
            ProbeTarget::Grpc {
                addr,
                service,
                tls,
                ca,
            } => {
                raw.kind = RawKind::Grpc;
                raw.addr = Some(addr);
                raw.service = (!service.is_empty()).then_some(service);
                raw.tls = Some(tls);
                raw.ca = ca;
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Region {
        probes: Vec<ProbeSpec>,
    }

    fn parse(toml_src: &str) -> Result<Vec<ProbeSpec>, String> {
        toml::from_str::<Region>(toml_src)
            .map(|r| r.probes)
            .map_err(|e| e.message().to_string())
    }

    /// Goal: the documented TOML form parses into typed targets with defaults filled in,
    /// and serializes back to the same value.
    #[test]
    fn documented_form_parses_with_defaults_and_round_trips() {
        let probes = parse(
            r#"probes = [
                { kind = "http", url = "https://db.region-a.example/health", body_contains = "ok" },
                { kind = "tcp", addr = "db.region-a.example:5432", timeout_ms = 500 },
                { kind = "grpc", addr = "[::1]:50051", service = "checkout", tls = true },
            ]"#,
        )
        .unwrap();
        assert_eq!(
            probes[0].target,
            ProbeTarget::Http {
                url: "https://db.region-a.example/health".into(),
                expect_status: 200,
                body_contains: Some("ok".into()),
                ca: None,
            }
        );
        assert_eq!(
            (
                probes[0].interval_ms,
                probes[0].timeout_ms,
                probes[0].jitter_ms
            ),
            (1000, 800, 100)
        );
        assert_eq!(probes[1].timeout_ms, 500);
        assert!(
            matches!(&probes[2].target, ProbeTarget::Grpc { tls: true, service, .. } if service == "checkout")
        );
        for (i, p) in probes.iter().enumerate() {
            p.validate(&format!("regions[0].probes[{i}]")).unwrap();
        }
        let back = toml::to_string(&Region2 {
            probes: probes.clone(),
        })
        .unwrap();
        assert_eq!(parse(&back).unwrap(), probes);
    }

    #[derive(Serialize)]
    struct Region2 {
        probes: Vec<ProbeSpec>,
    }

    /// Goal: typos and keys of another kind are refused at parse time, naming the key.
    #[test]
    fn unknown_and_foreign_keys_are_refused() {
        for (src, expect) in [
            (
                r#"probes = [{ kind = "tcp", addr = "a:1", intervall_ms = 5 }]"#,
                "intervall_ms",
            ),
            (
                r#"probes = [{ kind = "tcp", addr = "a:1", url = "http://a/" }]"#,
                "`url` does not apply",
            ),
            (r#"probes = [{ kind = "http" }]"#, "needs `url`"),
            (r#"probes = [{ kind = "icmp", addr = "a:1" }]"#, "icmp"),
        ] {
            let err = parse(src).unwrap_err();
            assert!(err.contains(expect), "{src}: {err}");
        }
    }

    /// Goal: every validation error names the key below the prefix and why.
    #[test]
    fn validation_names_key_and_reason() {
        let http = |url: &str| {
            ProbeSpec::new(ProbeTarget::Http {
                url: url.into(),
                expect_status: 200,
                body_contains: None,
                ca: None,
            })
        };
        let tcp = |addr: &str| ProbeSpec::new(ProbeTarget::Tcp { addr: addr.into() });
        let cases: Vec<(ProbeSpec, &str, &str)> = vec![
            (http("ftp://a/"), "url", "http:// or https://"),
            (http("not a url"), "url", "not a URL"),
            (http("http://u:p@a/"), "url", "credentials"),
            (tcp("a"), "addr", "missing :port"),
            (tcp("a:0"), "addr", "port"),
            (tcp(":80"), "addr", "invalid host"),
            (tcp("::1:80"), "addr", "invalid host"),
            (
                ProbeSpec {
                    interval_ms: 50,
                    ..tcp("a:1")
                },
                "interval_ms",
                "out of range",
            ),
            (
                ProbeSpec {
                    timeout_ms: 1000,
                    ..tcp("a:1")
                },
                "timeout_ms",
                "less than interval_ms",
            ),
            (
                ProbeSpec {
                    jitter_ms: 1000,
                    ..tcp("a:1")
                },
                "jitter_ms",
                "less than interval_ms",
            ),
            (
                ProbeSpec::new(ProbeTarget::Http {
                    url: "https://a/".into(),
                    expect_status: 200,
                    body_contains: None,
                    ca: Some("/nonexistent/ca.pem".into()),
                }),
                "ca",
                "cannot read",
            ),
            (
                ProbeSpec::new(ProbeTarget::Grpc {
                    addr: "a:1".into(),
                    service: String::new(),
                    tls: false,
                    ca: Some("/nonexistent/ca.pem".into()),
                }),
                "ca",
                "tls = true",
            ),
        ];
        for (spec, field, reason) in cases {
            let err = spec.validate("regions[0].probes[1]").unwrap_err();
            assert_eq!(err.key, format!("regions[0].probes[1].{field}"), "{err}");
            assert!(err.reason.contains(reason), "{err}");
        }
        tcp("[::1]:80").validate("p").unwrap();
        let too_many = vec![tcp("a:1"); PROBES_PER_REGION_MAX + 1];
        let err = validate_region_probes("regions[2]", &too_many).unwrap_err();
        assert_eq!(err.key, "regions[2].probes");
    }
}
