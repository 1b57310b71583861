//! The node file: local settings of one witness (id, site, addresses, TLS files, initial
//! peers, timing, probe source address, DNS and metrics listeners). Parsed and validated
//! into [`NodeConfig`] before any port is bound.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::{check_name, ConfigError};
use crate::tls::TlsPaths;

/// Exit code for bad configuration or usage (`EX_USAGE` in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// At most this many initial peers: a witness cluster is 3, 5 or 7 voters.
const PEERS_MAX: usize = 9;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: u64,
    site: String,
    data_dir: PathBuf,
    listen: String,
    advertise: Option<String>,
    tls: TlsPaths,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    timing: RawTiming,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    probes: RawProbes,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    metrics: RawMetrics,
}

/// The plaintext port for `/metrics`, `/healthz` and `/readyz`. Off unless the node file
/// asks for it: every other listener speaks mutual TLS, and these three endpoints are
/// always served there too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    /// `ip:port`; absent: no plaintext port.
    listen: Option<String>,
}

/// The embedded authoritative DNS server of this witness. Local: which address a witness
/// answers DNS on is a fact of its host; what it answers is in the policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    /// `ip:port` for UDP and TCP; absent: no DNS server on this witness.
    listen: Option<String>,
}

/// How this witness runs its region probes. Local to the witness, not in the policy: the
/// interface a site must probe from is a fact of that site's network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProbes {
    /// IP address probes connect from; absent lets the OS choose by its routing table.
    source_addr: Option<String>,
}

/// Log compaction. Defaults keep restart replay short and let a briefly lagging peer catch
/// up from the log instead of a snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    snapshot_every_entries: u64,
    log_keep_after_snapshot: u64,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            snapshot_every_entries: 1_000,
            log_keep_after_snapshot: 1_000,
        }
    }
}

/// Validated log compaction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log after a snapshot.
    pub log_keep_after_snapshot: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: u64,
    addr: String,
    site: String,
}

/// Timing of the witness cluster. Defaults are sized for WAN links of 20-150 ms RTT:
/// heartbeats several times per election timeout, and an election timeout well above the
/// worst RTT so a slow link does not cause elections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTiming {
    heartbeat_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    rpc_timeout_ms: u64,
}

impl Default for RawTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_timeout_min_ms: 1_500,
            election_timeout_max_ms: 3_000,
            rpc_timeout_ms: 1_000,
        }
    }
}

/// A witness known at bootstrap: id, gRPC address (`host:port`) and site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
    pub site: String,
}

/// Validated timing; see the node file reference in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Deadline of every witness-to-witness RPC.
    pub rpc_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        let raw = RawTiming::default();
        Self {
            heartbeat: Duration::from_millis(raw.heartbeat_ms),
            election_timeout_min: Duration::from_millis(raw.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(raw.election_timeout_max_ms),
            rpc_timeout: Duration::from_millis(raw.rpc_timeout_ms),
        }
    }
}

/// A validated node file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub site: String,
    pub data_dir: PathBuf,
    /// Where the gRPC listener binds (`0` as port: any free port, for tests).
    pub listen: SocketAddr,
    /// The address other witnesses and clients use; defaults to `listen`.
    pub advertise: String,
    pub tls: TlsPaths,
    /// Initial voters including this witness; used by `arbiter init` and by the empty-data-dir
    /// check at start.
    pub peers: Vec<Peer>,
    pub timing: Timing,
    pub storage: Storage,
    /// Local IP address every region probe connects from (`probes.source_addr`), for sites
    /// where only one interface reaches the regions; `None` lets the OS choose. Never the
    /// unspecified or a multicast address.
    pub probe_source: Option<IpAddr>,
    /// Where the embedded DNS server binds UDP and TCP (`dns.listen`); `None`: not started.
    /// Port 0 picks one free port for both (tests).
    pub dns_listen: Option<SocketAddr>,
    /// Where the plaintext port serving only `/metrics`, `/healthz` and `/readyz` binds
    /// (`metrics.listen`); `None`: not served in plaintext. Port 0 picks a free port (tests).
    pub metrics_listen: Option<SocketAddr>,
}

impl NodeConfig {
    /// Reads and validates a node file. Relative paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&file, format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&file, &source, base)
    }

    /// Parses node TOML; `base` resolves relative paths.
    pub fn parse(file: &str, source: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawNode =
            toml::from_str(source).map_err(|e| ConfigError::parse(file, source, e))?;
        if raw.id == 0 {
            return Err(ConfigError::new("id", "node ids start at 1"));
        }
        check_name("site", &raw.site)?;
        let listen: SocketAddr = raw.listen.parse().map_err(|e| {
            ConfigError::new("listen", format!("{:?} is not ip:port: {e}", raw.listen))
        })?;
        let advertise = raw.advertise.unwrap_or_else(|| listen.to_string());
        check_addr("advertise", &advertise)?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let tls = TlsPaths {
            ca: resolve(raw.tls.ca),
            cert: resolve(raw.tls.cert),
            key: resolve(raw.tls.key),
        };
        for (key, p) in [
            ("tls.ca", &tls.ca),
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
        ] {
            if !p.is_file() {
                return Err(ConfigError::new(
                    key,
                    format!("{} does not exist or is not a file", p.display()),
                ));
            }
        }
        if raw.peers.len() > PEERS_MAX {
            return Err(ConfigError::new(
                "peers",
                format!("at most {PEERS_MAX} initial peers are allowed"),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut peers = Vec::with_capacity(raw.peers.len());
        for (i, p) in raw.peers.into_iter().enumerate() {
            let key = format!("peers[{i}]");
            if p.id == 0 {
                return Err(ConfigError::new(format!("{key}.id"), "node ids start at 1"));
            }
            if !ids.insert(p.id) {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("duplicate peer id {}", p.id),
                ));
            }
            check_addr(&format!("{key}.addr"), &p.addr)?;
            check_name(&format!("{key}.site"), &p.site)?;
            peers.push(Peer {
                id: p.id,
                addr: p.addr,
                site: p.site,
            });
        }
        if !peers.is_empty() && !ids.contains(&raw.id) {
            return Err(ConfigError::new(
                "peers",
                format!(
                    "the initial peers must include this witness (id {})",
                    raw.id
                ),
            ));
        }
        let t = raw.timing;
        if t.heartbeat_ms == 0 {
            return Err(ConfigError::new(
                "timing.heartbeat_ms",
                "must be at least 1",
            ));
        }
        if t.election_timeout_min_ms < 3 * t.heartbeat_ms {
            return Err(ConfigError::new(
                "timing.election_timeout_min_ms",
                "must be at least 3 x heartbeat_ms, or a single late heartbeat starts an election",
            ));
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return Err(ConfigError::new(
                "timing.election_timeout_max_ms",
                "must be greater than election_timeout_min_ms",
            ));
        }
        if t.rpc_timeout_ms == 0 || t.rpc_timeout_ms > t.election_timeout_min_ms {
            return Err(ConfigError::new(
                "timing.rpc_timeout_ms",
                "must be between 1 and election_timeout_min_ms",
            ));
        }
        /// Bounds: at least one entry between snapshots; at most a million, so restart replay
        /// and the log on disk stay bounded.
        const ENTRIES_MAX: u64 = 1_000_000;
        let st = raw.storage;
        if !(1..=ENTRIES_MAX).contains(&st.snapshot_every_entries) {
            return Err(ConfigError::new(
                "storage.snapshot_every_entries",
                format!("{} is outside 1..={ENTRIES_MAX}", st.snapshot_every_entries),
            ));
        }
        if st.log_keep_after_snapshot > ENTRIES_MAX {
            return Err(ConfigError::new(
                "storage.log_keep_after_snapshot",
                format!("{} is more than {ENTRIES_MAX}", st.log_keep_after_snapshot),
            ));
        }
        let probe_source = raw
            .probes
            .source_addr
            .as_deref()
            .map(|a| check_source_addr("probes.source_addr", a))
            .transpose()?;
        let dns_listen = raw
            .dns
            .listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    ConfigError::new("dns.listen", format!("{a:?} is not ip:port: {e}"))
                })
            })
            .transpose()?;
        let metrics_listen = raw
            .metrics
            .listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    ConfigError::new("metrics.listen", format!("{a:?} is not ip:port: {e}"))
                })
            })
            .transpose()?;
        Ok(NodeConfig {
            probe_source,
            dns_listen,
            metrics_listen,
            storage: Storage {
                snapshot_every_entries: st.snapshot_every_entries,
                log_keep_after_snapshot: st.log_keep_after_snapshot,
            },
            id: raw.id,
            site: raw.site,
            data_dir: resolve(raw.data_dir),
            listen,
            advertise,
            tls,
            peers,
            timing: Timing {
                heartbeat: Duration::from_millis(t.heartbeat_ms),
                election_timeout_min: Duration::from_millis(t.election_timeout_min_ms),
                election_timeout_max: Duration::from_millis(t.election_timeout_max_ms),
                rpc_timeout: Duration::from_millis(t.rpc_timeout_ms),
            },
        })
    }
}

/// An IP address a socket can bind to as its source: not the unspecified address (omit the
/// key to let the OS choose) and not multicast (never a source).
fn check_source_addr(key: &str, addr: &str) -> Result<IpAddr, ConfigError> {
    let ip: IpAddr = addr.parse().map_err(|e| {
        ConfigError::new(key, format!("{addr:?} is not an IP address (no port): {e}"))
    })?;
    if ip.is_unspecified() {
        return Err(ConfigError::new(
            key,
            format!("{ip} is the unspecified address; omit the key to let the OS choose"),
        ));
    }
    if ip.is_multicast() {
        return Err(ConfigError::new(
            key,
            format!("{ip} is a multicast address, which cannot be a source"),
        ));
    }
    Ok(ip)
}

/// `host:port` with a non-zero port.
pub(crate) fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    let port = addr
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
        .and_then(|p| p.parse::<u16>().ok());
    match port {
        Some(p) if p != 0 => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("{addr:?} is not host:port with a non-zero port"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_tls() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "node.pem", "node.key"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        d
    }

    const GOOD: &str = r#"
id = 1
site = "region-a"
data_dir = "data"
listen = "127.0.0.1:7101"
tls = { ca = "ca.pem", cert = "node.pem", key = "node.key" }
peers = [
  { id = 1, addr = "127.0.0.1:7101", site = "region-a" },
  { id = 2, addr = "127.0.0.1:7102", site = "region-b" },
]
"#;

    #[test]
    fn good_node_file_gets_wan_defaults() {
        let d = dir_with_tls();
        let c = NodeConfig::parse("node.toml", GOOD, d.path()).unwrap();
        assert_eq!(c.timing.heartbeat, Duration::from_millis(150));
        assert_eq!(c.timing.election_timeout_min, Duration::from_millis(1500));
        assert_eq!(c.data_dir, d.path().join("data"));
        assert_eq!(c.advertise, "127.0.0.1:7101");
    }

    #[test]
    fn unknown_key_and_bad_values_name_the_key() {
        let d = dir_with_tls();
        let e =
            NodeConfig::parse("node.toml", &format!("{GOOD}\nbogus = 1\n"), d.path()).unwrap_err();
        assert!(e.reason.contains("bogus"), "{e}");
        let e = NodeConfig::parse(
            "node.toml",
            &GOOD.replace("127.0.0.1:7101\"\ntls", "nope\"\ntls"),
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.key, "listen");
        let e = NodeConfig::parse(
            "node.toml",
            &GOOD.replace("node.key", "missing.key"),
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.key, "tls.key");
        let e = NodeConfig::parse(
            "node.toml",
            &format!("{GOOD}\n[timing]\nheartbeat_ms = 1000\n"),
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.key, "timing.election_timeout_min_ms");
    }

    #[test]
    fn dns_listen_is_optional_ip_and_port() {
        let d = dir_with_tls();
        let c = NodeConfig::parse("node.toml", GOOD, d.path()).unwrap();
        assert_eq!(c.dns_listen, None, "no DNS server by default");
        let with = |table: &str| format!("{GOOD}\n[dns]\n{table}\n");
        let c =
            NodeConfig::parse("node.toml", &with("listen = \"127.0.0.1:5353\""), d.path()).unwrap();
        assert_eq!(c.dns_listen, Some("127.0.0.1:5353".parse().unwrap()));
        for bad in ["127.0.0.1", "localhost:53", "nope"] {
            let e = NodeConfig::parse("node.toml", &with(&format!("listen = \"{bad}\"")), d.path())
                .unwrap_err();
            assert_eq!(e.key, "dns.listen", "{bad}: {e}");
        }
        let e = NodeConfig::parse("node.toml", &with("port = 53"), d.path()).unwrap_err();
        assert!(e.reason.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn metrics_listen_is_optional_ip_and_port() {
        let d = dir_with_tls();
        let c = NodeConfig::parse("node.toml", GOOD, d.path()).unwrap();
        assert_eq!(
            c.metrics_listen, None,
            "no plaintext metrics port by default"
        );
        let with = |table: &str| format!("{GOOD}\n[metrics]\n{table}\n");
        let c =
            NodeConfig::parse("node.toml", &with("listen = \"127.0.0.1:9464\""), d.path()).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        for bad in ["127.0.0.1", "localhost:9464", "9464", ""] {
            let e = NodeConfig::parse("node.toml", &with(&format!("listen = \"{bad}\"")), d.path())
                .unwrap_err();
            assert_eq!(e.key, "metrics.listen", "{bad}: {e}");
            assert!(e.reason.contains("ip:port"), "{bad}: {e}");
        }
        let e = NodeConfig::parse("node.toml", &with("port = 9464"), d.path()).unwrap_err();
        assert!(e.reason.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn probe_source_addr_is_an_ip_address() {
        let d = dir_with_tls();
        let c = NodeConfig::parse("node.toml", GOOD, d.path()).unwrap();
        assert_eq!(c.probe_source, None, "the OS chooses by default");
        let with = |table: &str| format!("{GOOD}\n[probes]\n{table}\n");
        let c = NodeConfig::parse("node.toml", &with("source_addr = \"127.0.0.11\""), d.path())
            .unwrap();
        assert_eq!(c.probe_source, Some("127.0.0.11".parse().unwrap()));
        let c =
            NodeConfig::parse("node.toml", &with("source_addr = \"fd00::7\""), d.path()).unwrap();
        assert_eq!(c.probe_source, Some("fd00::7".parse().unwrap()));

        for bad in ["127.0.0.11:0", "eth0", "0.0.0.0", "::", "224.0.0.1"] {
            let e = NodeConfig::parse(
                "node.toml",
                &with(&format!("source_addr = \"{bad}\"")),
                d.path(),
            )
            .unwrap_err();
            assert_eq!(e.key, "probes.source_addr", "{bad}: {e}");
        }

        let e =
            NodeConfig::parse("node.toml", &with("source = \"127.0.0.11\""), d.path()).unwrap_err();
        assert!(e.reason.contains("unknown field `source`"), "{e}");
    }
}
