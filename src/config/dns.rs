//! DNS in the policy: the zones arbiter publishes, each group's record and the record set of
//! each region, and the external authoritative servers updated by RFC 2136. Secrets (TSIG
//! keys) are referenced, never copied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::secret_ref::SecretRef;

/// TTL bounds: below 5 s resolvers hammer the servers; above a day a failover is invisible.
pub const TTL_MIN: u32 = 5;
pub const TTL_MAX: u32 = 86_400;
/// Values in one record set; a handful of addresses per region.
pub const RECORD_VALUES_MAX: usize = 16;
/// First label of the owner name of each group's publication marker on external servers,
/// `_arbiter.<name>` (see `dns::marker`). Underscore labels keep protocol metadata out of
/// the host namespace (RFC 8552). Defined here so validation can reserve the name.
pub const MARKER_LABEL: &str = "_arbiter";
/// External servers in one policy.
pub const DNS_SERVERS_MAX: usize = 16;
/// Zones in one policy.
pub const DNS_ZONES_MAX: usize = 16;

/// The policy's `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPolicy {
    /// Zones served by the embedded server and updated on external servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<DnsZone>,
    /// External authoritative servers updated with RFC 2136 (TSIG-signed UPDATE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<DnsServer>,
    /// What an embedded server does when its witness has lost contact with a leader for
    /// longer than `stale_after_ms`: keep answering from the last applied state (`serve`,
    /// "static stability", the default) or answer SERVFAIL (`refuse`) so resolvers move to
    /// other witnesses.
    #[serde(default)]
    pub when_isolated: WhenIsolated,
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// How often the leader compares each external server with the committed state.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
}

impl Default for DnsPolicy {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            servers: Vec::new(),
            when_isolated: WhenIsolated::default(),
            stale_after_ms: default_stale_after_ms(),
            reconcile_interval_ms: default_reconcile_interval_ms(),
        }
    }
}

fn default_stale_after_ms() -> u64 {
    10_000
}

fn default_reconcile_interval_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenIsolated {
    #[default]
    Serve,
    Refuse,
}

/// A zone: its apex, the name servers published in NS, and the SOA contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsZone {
    /// Fully qualified, ending in a dot: `shop.example.`
    pub name: String,
    /// NS records of the zone (the witnesses' names), fully qualified.
    pub nameservers: Vec<String>,
    /// SOA RNAME (the zone contact as a domain name), fully qualified.
    #[serde(default = "default_contact")]
    pub contact: String,
}

fn default_contact() -> String {
    "hostmaster.invalid.".to_string()
}

/// A group's DNS record: `name` in `zone` with `ttl`, and per region the records to
/// publish while that region is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDns {
    pub zone: String,
    /// Fully qualified owner name inside `zone`.
    pub name: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Region name -> record set. Every candidate region of the group needs one.
    pub records: BTreeMap<String, RecordSet>,
}

fn default_ttl() -> u32 {
    30
}

/// What a name resolves to while a region is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSet {
    /// `A`, `AAAA` or `CNAME`.
    #[serde(rename = "type")]
    pub kind: RecordKind,
    /// Addresses (A, AAAA) or one fully qualified target (CNAME).
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    A,
    AAAA,
    CNAME,
}

/// TSIG algorithms accepted for RFC 2136 updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// An external authoritative server for one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsServer {
    /// `ip:port` of the server (UPDATE over TCP, queries over UDP/TCP).
    pub address: String,
    pub zone: String,
    /// TSIG key name, fully qualified as configured on the server.
    pub tsig_key: String,
    pub algorithm: TsigAlgorithm,
    /// The base64 TSIG secret, by reference.
    pub secret: SecretRef,
    #[serde(default = "default_dns_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_dns_timeout_ms() -> u64 {
    3_000
}

/// A fully qualified domain name: labels of 1-63 bytes, total at most 253, ending in `.`.
pub fn check_fqdn(key: &str, name: &str) -> Result<(), ConfigError> {
    let bare = name.strip_suffix('.').ok_or_else(|| {
        ConfigError::new(
            key,
            format!("{name:?} must be fully qualified (end with a dot)"),
        )
    })?;
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{name:?} is not a valid domain name"),
        ))
    }
}

/// Whether `name` is `zone` or below it (both fully qualified, compared case-insensitively).
pub fn in_zone(name: &str, zone: &str) -> bool {
    let (name, zone) = (name.to_ascii_lowercase(), zone.to_ascii_lowercase());
    name == zone || name.ends_with(&format!(".{zone}"))
}

impl DnsPolicy {
    /// Checks the `[dns]` table on its own (zones, servers, secrets resolve here).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.zones.len() > DNS_ZONES_MAX {
            return Err(ConfigError::new(
                "dns.zones",
                format!("at most {DNS_ZONES_MAX} zones are allowed"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let key = format!("dns.zones[{i}]");
            check_fqdn(&format!("{key}.name"), &z.name)?;
            if !seen.insert(z.name.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("duplicate zone {:?}", z.name),
                ));
            }
            if z.nameservers.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.nameservers"),
                    "at least one name server is needed",
                ));
            }
            for ns in &z.nameservers {
                check_fqdn(&format!("{key}.nameservers"), ns)?;
            }
            check_fqdn(&format!("{key}.contact"), &z.contact)?;
        }
        if self.servers.len() > DNS_SERVERS_MAX {
            return Err(ConfigError::new(
                "dns.servers",
                format!("at most {DNS_SERVERS_MAX} servers are allowed"),
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            let key = format!("dns.servers[{i}]");
            if s.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::new(
                    format!("{key}.address"),
                    format!("{:?} is not ip:port", s.address),
                ));
            }
            if !seen.contains(&s.zone.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("{key}.zone"),
                    format!("{:?} is not one of dns.zones", s.zone),
                ));
            }
            check_fqdn(&format!("{key}.tsig_key"), &s.tsig_key)?;
            s.secret.check(&format!("{key}.secret"))?;
            if s.timeout_ms == 0 || s.timeout_ms > 60_000 {
                return Err(ConfigError::new(
                    format!("{key}.timeout_ms"),
                    format!("{} is outside 1..=60000", s.timeout_ms),
                ));
            }
        }
        if !(1_000..=3_600_000).contains(&self.stale_after_ms) {
            return Err(ConfigError::new(
                "dns.stale_after_ms",
                format!("{} is outside 1000..=3600000", self.stale_after_ms),
            ));
        }
        if !(1_000..=3_600_000).contains(&self.reconcile_interval_ms) {
            return Err(ConfigError::new(
                "dns.reconcile_interval_ms",
                format!("{} is outside 1000..=3600000", self.reconcile_interval_ms),
            ));
        }
        Ok(())
    }

    pub fn zone(&self, name: &str) -> Option<&DnsZone> {
        self.zones
            .iter()
            .find(|z| z.name.eq_ignore_ascii_case(name))
    }
}

impl GroupDns {
    /// Checks a group's record against the zones and its candidate regions.
    pub fn validate(
        &self,
        key: &str,
        dns: &DnsPolicy,
        candidates: &[String],
    ) -> Result<(), ConfigError> {
        if dns.zone(&self.zone).is_none() {
            return Err(ConfigError::new(
                format!("{key}.zone"),
                format!("{:?} is not one of dns.zones", self.zone),
            ));
        }
        check_fqdn(&format!("{key}.name"), &self.name)?;
        // External servers keep the publication marker at `_arbiter.<name>`
        // (`dns::marker`): that name must be valid too.
        let marker = format!("{MARKER_LABEL}.{}", self.name);
        check_fqdn(&format!("{key}.name"), &marker).map_err(|_| {
            ConfigError::new(
                format!("{key}.name"),
                format!(
                    "{:?} is too long: its marker name {marker:?} must fit in 253 bytes",
                    self.name
                ),
            )
        })?;
        if !in_zone(&self.name, &self.zone) || self.name.eq_ignore_ascii_case(&self.zone) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("{:?} is not a name inside zone {:?}", self.name, self.zone),
            ));
        }
        if !(TTL_MIN..=TTL_MAX).contains(&self.ttl) {
            return Err(ConfigError::new(
                format!("{key}.ttl"),
                format!("{} is outside {TTL_MIN}..={TTL_MAX}", self.ttl),
            ));
        }
        for c in candidates {
            if !self.records.contains_key(c) {
                return Err(ConfigError::new(
                    format!("{key}.records"),
                    format!("no record set for candidate region {c:?}"),
                ));
            }
        }
        for (region, set) in &self.records {
            let rkey = format!("{key}.records.{region}");
            if !candidates.contains(region) {
                return Err(ConfigError::new(
                    rkey,
                    format!("{region:?} is not a candidate of the group"),
                ));
            }
            if set.values.is_empty() || set.values.len() > RECORD_VALUES_MAX {
                return Err(ConfigError::new(
                    format!("{rkey}.values"),
                    format!("needs 1..={RECORD_VALUES_MAX} values"),
                ));
            }
            for v in &set.values {
                let ok = match set.kind {
                    RecordKind::A => v.parse::<Ipv4Addr>().is_ok(),
                    RecordKind::AAAA => v.parse::<Ipv6Addr>().is_ok(),
                    RecordKind::CNAME => check_fqdn(&rkey, v).is_ok(),
                };
                if !ok {
                    return Err(ConfigError::new(
                        format!("{rkey}.values"),
                        format!("{v:?} is not a valid {:?} value", set.kind),
                    ));
                }
            }
            if set.kind == RecordKind::CNAME && set.values.len() != 1 {
                return Err(ConfigError::new(
                    format!("{rkey}.values"),
                    "a CNAME has exactly one target",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Policy;

    const BASE: &str = r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[dns]
zones = [{ name = "shop.example.", nameservers = ["ns1.shop.example.", "ns2.shop.example."] }]

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
[groups.dns]
zone = "shop.example."
name = "checkout.shop.example."
ttl = 30
records = { region-a = { type = "A", values = ["192.0.2.10", "192.0.2.11"] }, region-b = { type = "A", values = ["198.51.100.10"] } }
"#;

    fn err(src: &str) -> crate::config::ConfigError {
        Policy::parse("p", src).expect_err("must be refused")
    }

    #[test]
    fn records_in_policy_parse() {
        let p = Policy::parse("p", BASE).unwrap();
        let dns = p.groups[0].dns.as_ref().unwrap();
        assert_eq!(dns.records["region-a"].values.len(), 2);
        assert_eq!(Policy::parse("p", &p.to_toml()).unwrap(), p, "round-trips");
    }

    #[test]
    fn bad_records_name_the_key() {
        let e = err(&BASE.replace("\"checkout.shop.example.\"", "\"checkout.other.example.\""));
        assert_eq!(e.key, "groups[0].dns.name");
        let e = err(&BASE.replace("192.0.2.11", "192.0.2.300"));
        assert_eq!(e.key, "groups[0].dns.records.region-a.values");
        let e = err(&BASE.replace("ttl = 30", "ttl = 1"));
        assert_eq!(e.key, "groups[0].dns.ttl");
        let e = err(&BASE.replace(
            ", region-b = { type = \"A\", values = [\"198.51.100.10\"] }",
            "",
        ));
        assert_eq!(e.key, "groups[0].dns.records");
        let e = err(&BASE.replace(
            "zone = \"shop.example.\"\nname",
            "zone = \"nope.example.\"\nname",
        ));
        assert_eq!(e.key, "groups[0].dns.zone");
        let e = err(&BASE.replace("\"ns1.shop.example.\"", "\"ns1.shop.example\""));
        assert_eq!(e.key, "dns.zones[0].nameservers");
    }

    #[test]
    fn a_name_is_published_by_one_group_and_leaves_room_for_its_marker() {
        // Names compare case-insensitively, as DNS does.
        let second = BASE.to_string()
            + r#"
[[groups]]
name = "checkout-2"
candidates = ["region-a", "region-b"]
[groups.dns]
zone = "shop.example."
name = "Checkout.shop.example."
records = { region-a = { type = "A", values = ["192.0.2.20"] }, region-b = { type = "A", values = ["198.51.100.20"] } }
"#;
        let e = err(&second);
        assert_eq!(e.key, "groups[1].dns.name");
        assert!(e.reason.contains("checkout"), "{e}");

        // 246 bytes without the trailing dot, a valid name; `_arbiter.` makes it 255 > 253.
        let long = format!(
            "{}.shop.example.",
            [
                "a".repeat(60),
                "b".repeat(60),
                "c".repeat(60),
                "d".repeat(50)
            ]
            .join(".")
        );
        let e = err(&BASE.replace("\"checkout.shop.example.\"", &format!("\"{long}\"")));
        assert_eq!(e.key, "groups[0].dns.name");
        assert!(e.reason.contains("marker"), "{e}");
    }

    #[test]
    fn server_with_missing_secret_is_refused() {
        let src = BASE.replace(
            "[dns]\n",
            "[dns]\nservers = [{ address = \"127.0.0.1:5300\", zone = \"shop.example.\", tsig_key = \"arbiter.\", algorithm = \"hmac-sha256\", secret = { file = \"/nonexistent/tsig\" } }]\n",
        );
        let e = err(&src);
        assert_eq!(e.key, "dns.servers[0].secret.file");
    }
}
