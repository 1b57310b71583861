//! The demo's files: a private temporary directory that removes itself, and the node files
//! and policy it writes there (the same formats an operator writes, so `--keep-running`
//! leaves something real to read and reuse).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The failover group the demo plays with.
pub const GROUP: &str = "checkout";
/// The zone the witnesses' embedded DNS servers answer for.
pub const ZONE: &str = "demo.example.";
/// The group's DNS name (inside [`ZONE`]).
pub const NAME: &str = "checkout.demo.example.";
/// Sites of witnesses 1, 2 and 3.
pub const SITES: [&str; 3] = ["region-a", "region-b", "tiebreaker"];
/// The two regions that can run the workload; the first is active at the start.
pub const REGIONS: [&str; 2] = ["region-a", "region-b"];

/// Lease of the active region's primary: short, so the fence wait is seconds, not minutes.
pub const LEASE_MS: u64 = 2_000;
/// Safety margin added to the lease wait after the revoke.
pub const LEASE_MARGIN_MS: u64 = 200;
/// A quorum must see a region failing this long before it is `down`.
pub const DOWN_AFTER_MS: u64 = 1_500;
/// Time between two probes of a region by one witness.
pub const PROBE_INTERVAL_MS: u64 = 250;

/// The built-in PostgreSQL hooks of `--postgres`: name and action.
const POSTGRES_HOOKS: [(&str, &str); 4] = [
    ("pg-fence", "fence"),
    ("pg-rpo", "rpo-check"),
    ("pg-promote", "promote"),
    ("pg-validate", "validate"),
];

/// A directory under the system's temporary directory, readable by this user only, that is
/// removed with everything in it when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates a fresh directory `arbiter-demo-XXXXXXXX` (never reuses an existing one).
    pub fn create() -> io::Result<WorkDir> {
        /// Names tried before giving up; a collision of random names is already unlikely.
        const ATTEMPTS_MAX: usize = 16;
        let mut last = None;
        for _ in 0..ATTEMPTS_MAX {
            let path =
                std::env::temp_dir().join(format!("arbiter-demo-{:08x}", rand::random::<u32>()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            match builder.create(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no name tried")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Where the demo's witnesses and regions listen.
#[derive(Debug, Clone)]
pub struct Layout {
    /// gRPC (Raft and the public API) of witnesses 1, 2 and 3.
    pub witnesses: [SocketAddr; 3],
    /// DNS of witnesses 1, 2 and 3 (port 0: any free port, read back after the start).
    pub dns: [SocketAddr; 3],
    /// Plaintext `/metrics`, `/healthz` and `/readyz` of witnesses 1, 2 and 3 (port 0 as
    /// for DNS).
    pub metrics: [SocketAddr; 3],
    /// The health endpoint of each simulated region, in [`REGIONS`] order.
    pub regions: [SocketAddr; 2],
    /// What the group's record publishes while each region is active.
    pub region_addresses: [String; 2],
}

/// The regions' databases, as the failover's hooks reach them.
#[derive(Debug, Clone)]
pub enum Databases {
    /// Simulated databases: one receiver of the signed promote webhook for both regions.
    Simulated {
        /// Where the promote hook is sent.
        hooks: SocketAddr,
        /// The webhook's secret file.
        secret: PathBuf,
    },
    /// Real PostgreSQL servers (primary in the first region, streaming standby in the
    /// second), driven by the built-in `postgres` hooks.
    Postgres {
        /// Connection strings without the password, in [`REGIONS`] order.
        dsn: [String; 2],
        /// The superuser's password file.
        password: PathBuf,
    },
}

/// The node file of witness `id` (1-based). Paths are relative to the work directory, where
/// the file is written.
pub fn node_toml(id: usize, layout: &Layout) -> String {
    let peers: Vec<String> = layout
        .witnesses
        .iter()
        .zip(SITES)
        .enumerate()
        .map(|(i, (addr, site))| {
            format!(
                "  {{ id = {}, addr = \"{addr}\", site = \"{site}\" }},",
                i + 1
            )
        })
        .collect();
    format!(
        r#"# Witness {id} of the demo cluster (loopback). Paths are relative to this file.
id = {id}
site = "{site}"
data_dir = "data/node-{id}"
listen = "{listen}"
tls = {{ ca = "certs/ca.pem", cert = "certs/node-{id}.pem", key = "certs/node-{id}.key" }}
peers = [
{peers}
]

# Loopback timing: quicker elections than the WAN-sized defaults.
[timing]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
rpc_timeout_ms = 500

# The embedded authoritative DNS server (UDP and TCP).
[dns]
listen = "{dns}"

# /metrics, /healthz and /readyz in plaintext, for curl.
[metrics]
listen = "{metrics}"
"#,
        site = SITES[id - 1],
        listen = layout.witnesses[id - 1],
        dns = layout.dns[id - 1],
        metrics = layout.metrics[id - 1],
        peers = peers.join("\n"),
    )
}

/// The demo policy: two probed regions, the group in automatic mode with demo timings, its
/// DNS record served by the embedded servers, and the hooks that act on the databases.
pub fn policy_toml(layout: &Layout, databases: &Databases) -> String {
    let region = |i: usize| {
        format!(
            r#"[[regions]]
name = "{name}"
probes = [{{ kind = "http", url = "http://{addr}/health", expect_status = 200, interval_ms = {PROBE_INTERVAL_MS}, timeout_ms = 200, jitter_ms = 50 }}]
"#,
            name = REGIONS[i],
            addr = layout.regions[i],
        )
    };
    let records: Vec<String> = REGIONS
        .iter()
        .zip(&layout.region_addresses)
        .map(|(r, a)| format!("{r} = {{ type = \"A\", values = [\"{a}\"] }}"))
        .collect();
    let (hooks, group_hooks) = match databases {
        Databases::Simulated { hooks, secret } => (
            format!(
                r#"# Promotes the target region's simulated database (a signed webhook).
[hooks.promote]
kind = "http"
url = "http://{hooks}/promote"
secret = {{ file = "{}" }}
timeout_ms = 2000
"#,
                secret.display()
            ),
            "hooks = { promote = [\"promote\"] }\n".to_string(),
        ),
        Databases::Postgres { dsn, password } => {
            let mut hooks = String::from(
                "# The built-in PostgreSQL hooks: fence the old primary, measure the standby's lag,\n\
                 # promote it, and write a row on the new primary.\n",
            );
            for (name, action) in POSTGRES_HOOKS {
                hooks += &format!(
                    "[hooks.{name}]\nkind = \"postgres\"\naction = \"{action}\"\ntimeout_ms = 20000\n"
                );
                for (region, dsn) in REGIONS.iter().zip(dsn) {
                    hooks += &format!(
                        "regions.{region} = {{ dsn = \"{dsn}\", password = {{ file = \"{}\" }} }}\n",
                        password.display()
                    );
                }
                hooks += "\n";
            }
            (
                hooks,
                "rpo_lag_bytes = 16777216\nrpo_lag_ms = 60000\nrpo_wait_ms = 30000\n\
                 hooks = { fence = [\"pg-fence\"], rpo_check = \"pg-rpo\", promote = [\"pg-promote\"], validate = [\"pg-validate\"] }\n"
                    .to_string(),
            )
        }
    };
    format!(
        r#"# The demo policy: two regions probed over HTTP by every witness.
{a}
{b}
[dns]
zones = [{{ name = "{ZONE}", nameservers = ["ns1.{ZONE}"] }}]

{hooks}
# Fails over by itself when a quorum of witnesses sees region-a down for down_after_ms.
# Demo timings: production leases and windows are longer.
[[groups]]
name = "{GROUP}"
candidates = ["{ra}", "{rb}"]
mode = "auto"
lease_ms = {LEASE_MS}
lease_margin_ms = {LEASE_MARGIN_MS}
down_after_ms = {DOWN_AFTER_MS}
step_attempts = 3
{group_hooks}
[groups.dns]
zone = "{ZONE}"
name = "{NAME}"
ttl = 5
records = {{ {records} }}
"#,
        a = region(0),
        b = region(1),
        ra = REGIONS[0],
        rb = REGIONS[1],
        records = records.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, NodeConfig, Policy};

    fn layout() -> Layout {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Layout {
            witnesses: [a(7101), a(7102), a(7103)],
            dns: [a(0), a(0), a(0)],
            metrics: [a(0), a(0), a(9464)],
            regions: [
                SocketAddr::from(([127, 0, 0, 11], 7107)),
                SocketAddr::from(([127, 0, 0, 12], 7108)),
            ],
            region_addresses: ["127.0.0.11".into(), "127.0.0.12".into()],
        }
    }

    #[test]
    fn node_files_parse_into_a_three_site_cluster() {
        let work = WorkDir::create().unwrap();
        let dir = work.path();
        crate::certs::init_dev_certs(
            &dir.join("certs"),
            &crate::certs::default_sites(3),
            &[],
            false,
        )
        .unwrap();
        for id in 1..=3 {
            let text = node_toml(id, &layout());
            let config = NodeConfig::parse("node.toml", &text, dir).expect("valid node file");
            assert_eq!(config.id, id as u64);
            assert_eq!(config.site, SITES[id - 1]);
            assert_eq!(config.peers.len(), 3);
            assert_eq!(config.dns_listen, Some(layout().dns[id - 1]));
            assert_eq!(config.metrics_listen, Some(layout().metrics[id - 1]));
            assert_eq!(config.tls.ca, dir.join("certs/ca.pem"));
        }
    }

    #[test]
    fn policy_is_valid_with_demo_timings() {
        let secret = std::env::temp_dir().join(format!(
            "arbiter-demo-test-secret-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::write(&secret, "s3cret").unwrap();
        let simulated = Databases::Simulated {
            hooks: SocketAddr::from(([127, 0, 0, 1], 7109)),
            secret: secret.clone(),
        };
        let postgres = Databases::Postgres {
            dsn: [7201, 7202]
                .map(|p| format!("host=127.0.0.1 port={p} user=postgres dbname=postgres")),
            password: secret.clone(),
        };
        let parsed = [simulated, postgres]
            .map(|d| Policy::parse("policy.toml", &policy_toml(&layout(), &d)));
        std::fs::remove_file(&secret).unwrap();
        let [simulated, postgres] = parsed.map(|p| p.expect("valid policy"));
        let hooks = |p: &Policy| {
            let g = p.group(GROUP).unwrap();
            (
                g.hooks.fence.len(),
                g.hooks.rpo_check.is_some(),
                g.hooks.promote.len(),
                g.hooks.validate.len(),
            )
        };
        assert_eq!(hooks(&simulated), (0, false, 1, 0));
        assert_eq!(hooks(&postgres), (1, true, 1, 1));
        let policy = simulated;
        let g = policy.group(GROUP).expect("the demo group");
        assert_eq!(g.mode, Mode::Auto);
        assert_eq!(g.candidates, REGIONS);
        assert_eq!((g.lease_ms, g.down_after_ms), (LEASE_MS, DOWN_AFTER_MS));
        let dns = g.dns.as_ref().expect("a DNS record");
        assert_eq!(dns.name, NAME);
        assert_eq!(dns.records["region-b"].values, ["127.0.0.12"]);
        for r in &policy.regions {
            assert_eq!(r.probes.len(), 1, "{} is probed", r.name);
            assert_eq!(r.probes[0].interval_ms, PROBE_INTERVAL_MS);
        }
    }

    #[test]
    fn work_dir_is_private_and_removed_on_drop() {
        let dir = WorkDir::create().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/file"), "x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        drop(dir);
        assert!(!path.exists(), "{} is removed", path.display());
    }
}
