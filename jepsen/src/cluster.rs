//! The system under test: certificates, node files and policy for every witness, and the
//! processes on every host (witnesses under `arbiter serve` with their embedded DNS servers,
//! per region an `arbiter agent`, a health endpoint and a delay proxy in front of each
//! witness, and BIND's `named` on the DNS host).
//!
//! Layout of a run directory: `certs/`, `policy.toml`, and `nodes/<host>/` with the node
//! file, data dir, logs, the agent's state file, the writer's log and the libfaketime control
//! file; `nodes/dns/` holds BIND's `named.conf`, zone, journal, TSIG secret and `named.log`. This module starts and stops things; when to do so is the nemesis's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::dns::DNS_PORT;
use crate::hosts::{Host, Role};
use crate::nemesis::clock::{control_line, MonotonicSetting};
use crate::procs::Proc;
use crate::spec::GROUP;

/// Port of each witness's gRPC/HTTP listener (inside its namespace).
pub const WITNESS_PORT: u16 = 7101;
/// Port of the delay proxy in front of each witness: the address every peer and client uses.
pub const PROXY_PORT: u16 = 7201;
/// Port of each region's health endpoint on its database host.
pub const HEALTH_PORT: u16 = 8080;

/// The agents' `--watchdog-margin-ms`: they self-fence this long before the deadline while
/// the watchdog is armed. Below a third of the shortest lease a run grants (the policy
/// nemesis halves 2 s, `lease-lowered` sets 1 s), which the agent requires, and longer than
/// the database's close latency (100 ms by default), so a normal loss closes the database
/// and the device before it fires.
pub const WATCHDOG_MARGIN_MS: u64 = 300;

/// Timing and build choices of the system under test.
#[derive(Debug, Clone)]
pub struct SystemOpts {
    pub lease_ms: u64,
    pub down_after_ms: u64,
    /// Start every witness with the hidden `--unsafe-skip-lease-wait` flag.
    pub unsafe_skip_lease_wait: bool,
    /// Closed safety holes opened again in every witness (`ARBITER_UNSAFE_HOLES`; a build
    /// with the `unsafe-holes` feature).
    pub unsafe_holes: Vec<String>,
    /// Every promote hook sleeps this long (the window of the `leader-hook` nemesis).
    pub hook_sleep_ms: u64,
    /// The fence hook fences the old region's writer and confirms a hard fence, and the
    /// group ends the lease wait on that confirmation (`fence_ends_lease_wait`).
    pub hard_fence: bool,
    /// Every agent arms a watchdog device (a file its host's monitor reads): a paused
    /// agent's database is closed when its kicks stop. Without it, only the agent's own
    /// on-lose closes the database.
    pub watchdog: bool,
    /// How long the agent's on-gain takes to open its region's database, and its on-lose
    /// to close it (a promotion, a stop).
    pub db_latency_ms: u64,
    /// Run witnesses and agents under this libfaketime (needed by the clock nemesis; found
    /// at startup by `nemesis::clock::find_libfaketime`).
    pub libfaketime: Option<PathBuf>,
    /// Hosts whose processes libfaketime fakes the monotonic clock of too (the `clock-rate`
    /// nemeses change only its rate there, never jump it); every other host's processes
    /// have only their wall clock faked (the `clock` nemesis's jumps and rates).
    pub monotonic_hosts: std::collections::BTreeSet<String>,
}

/// The group's settings the policy nemesis changes; the rest of the policy is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The group is in the policy (removed when false).
    pub present: bool,
    pub candidates: [&'static str; 2],
    pub mode: &'static str,
    pub lease_ms: u64,
    pub clock_drift_percent: u64,
    pub lease_margin_ms: u64,
    pub down_after_ms: u64,
}

impl PolicySpec {
    /// The policy a run starts with and every policy fault heals back to.
    pub fn base(opts: &SystemOpts) -> PolicySpec {
        PolicySpec {
            present: true,
            candidates: ["region-a", "region-b"],
            mode: "auto",
            lease_ms: opts.lease_ms,
            clock_drift_percent: 5,
            lease_margin_ms: 500,
            down_after_ms: opts.down_after_ms,
        }
    }
}

/// The parts of the run's policy that no fault changes: DNS, probes.
#[derive(Debug, Clone)]
pub struct PolicyParts {
    pub dns: String,
    pub group_dns: String,
    /// The group's `hooks = {..}` and `fence_ends_lease_wait` lines.
    pub group_hooks: String,
    /// The `[hooks.*]` tables.
    pub hooks: String,
    pub probes_a: String,
    pub probes_b: String,
}

impl PolicyParts {
    /// The policy TOML for `spec`.
    pub fn render(&self, spec: &PolicySpec) -> String {
        let group = if spec.present {
            format!(
                r#"[[groups]]
name = "{GROUP}"
candidates = ["{c0}", "{c1}"]
mode = "{mode}"
lease_ms = {lease}
clock_drift_percent = {drift}
lease_margin_ms = {margin}
down_after_ms = {down}
cooldown_ms = 2000
failback_after_ms = {failback}
step_attempts = 3
{group_hooks}
{group_dns}"#,
                c0 = spec.candidates[0],
                c1 = spec.candidates[1],
                mode = spec.mode,
                lease = spec.lease_ms,
                drift = spec.clock_drift_percent,
                margin = spec.lease_margin_ms,
                down = spec.down_after_ms,
                failback = (spec.down_after_ms * 4).max(4_000),
                group_hooks = self.group_hooks,
                group_dns = self.group_dns,
            )
        } else {
            "# The group is removed by the policy nemesis.\n".to_string()
        };
        format!(
            r#"# Policy of the jepsen run (generated): one automatic group with short timings, its
# record in a zone served by every witness and by BIND (updated with RFC 2136).
{dns}
[[regions]]
name = "region-a"
{pa}

[[regions]]
name = "region-b"
{pb}

{group}
{hooks}

# The operator workload writes far faster than a person: its identity is not rate limited.
[access]
writes_per_minute = 6000
"#,
            hooks = self.hooks,
            dns = self.dns,
            pa = self.probes_a,
            pb = self.probes_b,
        )
    }
}

/// The hooks of the group: fence, promote (two, so a deposed leader has a second call to
/// make after a slow first one) and validate (an exec hook of `jepsen hook`, then a webhook
/// to the calling witness's `jepsen hook-server`).
fn group_hooks(opts: &SystemOpts) -> String {
    format!(
        "fence_ends_lease_wait = {}\nhooks = {{ fence = [\"jp-fence\"], promote = [\"jp-promote-db\", \"jp-promote-app\"], validate = [\"jp-validate\", \"jp-validate-http\"] }}",
        opts.hard_fence
    )
}

/// The `[hooks.*]` tables: each runs this harness's binary (linked into the run directory
/// by [`Cluster::start`]) inside the calling witness's namespace, logging to that witness's
/// `nodes/<host>/hooks.jsonl` (the log path is the witness's own: `ARBITER_WITNESS` picks it).
fn hook_tables(hosts: &[Host], dir: &Path, opts: &SystemOpts) -> anyhow::Result<String> {
    let me = dir.join("bin").join("jepsen").display().to_string();
    let script = dir.join("bin").join("hook");
    // One line of shell: the log of the calling witness, from the id arbiter passes.
    let nodes = dir.join("nodes").display().to_string();
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# A hook of the jepsen run (generated): logs the call in the calling witness's node directory.\nexec {me} hook --log {nodes}/n\"$ARBITER_WITNESS\"/{log} --fail-file {nodes}/{fail} \"$@\"\n",
            log = crate::hook_log::LOG_FILE,
            fail = crate::hook_log::FAIL_FILE,
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let fence: Vec<String> = hosts
        .iter()
        .filter_map(|h| match &h.role {
            Role::Database { region } => Some(format!(
                "\"--fence\", \"{region}={}\"",
                dir.join("nodes")
                    .join(&h.name)
                    .join(crate::hook_log::FENCE_FILE)
                    .display()
            )),
            _ => None,
        })
        .collect();
    let table = |name: &str, extra: &str| {
        format!(
            "[hooks.{name}]\nkind = \"exec\"\nprogram = \"{}\"\nargs = [\"--name\", \"{name}\"{extra}]\ntimeout_ms = 20000\n",
            script.display()
        )
    };
    let fence_args = if opts.hard_fence {
        format!(", {}", fence.join(", "))
    } else {
        String::new()
    };
    let sleep = format!(", \"--sleep-ms\", \"{}\"", opts.hook_sleep_ms);
    let secret = dir.join("certs").join("hook.secret");
    std::fs::create_dir_all(dir.join("certs"))?;
    // A fresh random secret per run, referenced by file (secrets never enter the policy).
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    std::fs::write(&secret, data_encoding::HEXLOWER.encode(&key) + "\n")?;
    let webhook = format!(
        "[hooks.jp-validate-http]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/hook\"\nsecret = {{ file = \"{}\" }}\ntimeout_ms = 5000\n",
        crate::hook_log::HOOK_PORT,
        secret.display()
    );
    Ok([
        table("jp-fence", &fence_args),
        table("jp-promote-db", &sleep),
        table("jp-promote-app", &sleep),
        table("jp-validate", ""),
        webhook,
    ]
    .join("\n"))
}

/// The processes and files of one run.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// The fixed parts of the policy; the policy nemesis renders variations of it.
    pub policy: PolicyParts,
    pub opts: SystemOpts,
    /// By host name.
    pub witnesses: BTreeMap<String, Proc>,
    pub agents: BTreeMap<String, Proc>,
    pub health: BTreeMap<String, Proc>,
    pub proxies: BTreeMap<String, Proc>,
    /// The webhook endpoint on each witness host (`jepsen hook-server`).
    pub hook_servers: BTreeMap<String, Proc>,
    /// BIND on the DNS host.
    pub bind: Option<Proc>,
    /// The libfaketime setting each monotonic host's control file holds: a change of rate
    /// moves the offset so that the faked clock stays continuous.
    pub clock_specs: BTreeMap<String, MonotonicSetting>,
}

/// The arbiter CLI as run from inside a host's namespace.
#[derive(Debug, Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub tls_dir: PathBuf,
    /// Every witness's client address (its proxy).
    pub servers: Vec<String>,
}

/// How one CLI call ended.
#[derive(Debug, Clone)]
pub struct CliOut {
    /// Exit code; `None` when it was killed at its deadline.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    /// The `arbiter-error` kind of a failure, as printed at the end of `error: ... (kind)`.
    pub fn error_kind(&self) -> Option<String> {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error:"))?;
        let open = line.rfind('(')?;
        let close = line.rfind(')')?;
        (close > open).then(|| line[open + 1..close].to_string())
    }

    /// One line describing the failure.
    pub fn error_text(&self) -> String {
        match self.code {
            None => "timed out (killed)".to_string(),
            Some(c) => {
                let last = self
                    .stderr
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("");
                format!("exit {c}: {}", last.trim())
            }
        }
    }
}

impl Cli {
    /// Runs `arbiter ARGS --server S...` inside `host`'s namespace, killed at `timeout`.
    pub async fn run(&self, host: &Host, args: &[String], timeout: Duration) -> CliOut {
        self.run_servers(host, args, &self.servers, timeout).await
    }

    pub async fn run_servers(
        &self,
        host: &Host,
        args: &[String],
        servers: &[String],
        timeout: Duration,
    ) -> CliOut {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &host.ns()])
            .arg(&self.bin)
            .args(args)
            .arg("--server")
            .arg(servers.join(","))
            .env("ARBITER_TLS_DIR", &self.tls_dir)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return CliOut {
                    code: Some(127),
                    stdout: String::new(),
                    stderr: format!("error: cannot start the CLI: {e} (spawn)"),
                }
            }
        };
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => CliOut {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Ok(Err(e)) => CliOut {
                code: Some(127),
                stdout: String::new(),
                stderr: format!("error: {e} (wait)"),
            },
            Err(_) => CliOut {
                code: None,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }
}

/// The witness's client address: its delay proxy.
pub fn client_addr(h: &Host) -> String {
    format!("{}:{PROXY_PORT}", h.ip)
}

impl Cluster {
    /// Writes certificates, node files and the policy under `dir`; starts nothing.
    pub fn prepare(
        hosts: Vec<Host>,
        dir: &Path,
        bin: &Path,
        opts: SystemOpts,
    ) -> anyhow::Result<Cluster> {
        let witnesses: Vec<&Host> = hosts.iter().filter(|h| h.witness_id().is_some()).collect();
        let certs = dir.join("certs");
        let mut args: Vec<String> = vec![
            "certs".into(),
            "init".into(),
            "--out".into(),
            certs.display().to_string(),
            "--sites".into(),
            witnesses
                .iter()
                .map(|h| h.site.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ];
        for h in &hosts {
            args.push("--host".into());
            args.push(h.ip.clone());
        }
        let out = std::process::Command::new(bin)
            .args(&args)
            .output()
            .context("arbiter certs init")?;
        if !out.status.success() {
            bail!(
                "arbiter certs init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let peers: Vec<String> = witnesses
            .iter()
            .map(|h| {
                format!(
                    "  {{ id = {}, addr = \"{}\", site = \"{}\" }},",
                    h.witness_id().unwrap_or_default(),
                    client_addr(h),
                    h.site
                )
            })
            .collect();
        for h in &hosts {
            let nd = dir.join("nodes").join(&h.name);
            std::fs::create_dir_all(&nd)?;
            std::fs::write(nd.join("faketime"), format!("{}\n", control_line(0.0, 1.0)))?;
            if let Some(id) = h.witness_id() {
                let node = format!(
                    r#"# Witness {id} of the jepsen run (generated).
id = {id}
site = "{site}"
data_dir = "data"
listen = "0.0.0.0:{WITNESS_PORT}"
advertise = "{adv}"
tls = {{ ca = "{certs}/ca.pem", cert = "{certs}/node-{id}.pem", key = "{certs}/node-{id}.key" }}
peers = [
{peers}
]

# The embedded authoritative DNS server, on the witness's bridge address.
[dns]
listen = "{ip}:{DNS_PORT}"

# Short timings so that many elections and failovers happen in a short run.
[timing]
heartbeat_ms = 100
election_timeout_min_ms = 500
election_timeout_max_ms = 1000
rpc_timeout_ms = 500
"#,
                    site = h.site,
                    adv = client_addr(h),
                    ip = h.ip,
                    certs = certs.display(),
                    peers = peers.join("\n"),
                );
                std::fs::write(nd.join("node.toml"), node)?;
            }
        }
        let probes = |octet_host: &str| {
            format!(
                "probes = [ {{ kind = \"http\", url = \"http://{octet_host}:{HEALTH_PORT}/health\", expect_status = 200, interval_ms = 200, timeout_ms = 150, jitter_ms = 50 }} ]"
            )
        };
        let db_ip = |region: &str| {
            hosts
                .iter()
                .find(|h| {
                    h.role
                        == Role::Database {
                            region: region.into(),
                        }
                })
                .map(|h| h.ip.clone())
                .unwrap_or_default()
        };
        let dns_host = hosts
            .iter()
            .find(|h| h.role == Role::Dns)
            .context("the plan has no DNS host")?;
        let bind_files =
            crate::dns::write_bind_files(&dir.join("nodes").join(&dns_host.name), &dns_host.ip)?;
        let parts = PolicyParts {
            dns: crate::dns::policy_table(
                &witnesses.iter().map(|h| (*h).clone()).collect::<Vec<_>>(),
                dns_host,
                &bind_files.secret,
            ),
            group_dns: crate::dns::group_table(),
            group_hooks: group_hooks(&opts),
            hooks: hook_tables(&hosts, dir, &opts)?,
            probes_a: probes(&db_ip("region-a")),
            probes_b: probes(&db_ip("region-b")),
        };
        let policy = parts.render(&PolicySpec::base(&opts));
        std::fs::write(dir.join("policy.toml"), policy)?;
        Ok(Cluster {
            hosts,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            policy: parts,
            opts,
            witnesses: BTreeMap::new(),
            agents: BTreeMap::new(),
            health: BTreeMap::new(),
            proxies: BTreeMap::new(),
            hook_servers: BTreeMap::new(),
            bind: None,
            clock_specs: BTreeMap::new(),
        })
    }

    pub fn node_dir(&self, host: &str) -> PathBuf {
        self.dir.join("nodes").join(host)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("host names come from the plan")
    }

    pub fn witness_hosts(&self) -> Vec<Host> {
        self.hosts
            .iter()
            .filter(|h| h.witness_id().is_some())
            .cloned()
            .collect()
    }

    pub fn db_hosts(&self) -> Vec<Host> {
        self.hosts
            .iter()
            .filter(|h| h.is_database())
            .cloned()
            .collect()
    }

    pub fn cli(&self) -> Cli {
        Cli {
            bin: self.bin.clone(),
            tls_dir: self.dir.join("certs"),
            servers: self.witness_hosts().iter().map(client_addr).collect(),
        }
    }

    /// Environment of a process that the clock nemesis may fault: libfaketime reads the
    /// host's control file (re-read every second). On most hosts it leaves the monotonic
    /// clock alone, which arbiter uses for every safety decision (DESIGN: wall-clock time is
    /// never used for safety), so wall-clock jumps and rates must not matter; on the
    /// `monotonic_hosts` it fakes that clock too, whose rate the `clock-rate` nemeses change
    /// (a monotonic clock that jumps is outside the model: it is never jumped).
    pub fn clock_env(&self, host: &str) -> Vec<(String, String)> {
        let Some(lib) = &self.opts.libfaketime else {
            return Vec::new();
        };
        let dont_fake_monotonic = if self.opts.monotonic_hosts.contains(host) {
            "0"
        } else {
            "1"
        };
        vec![
            ("LD_PRELOAD".into(), lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.node_dir(host).join("faketime").display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            (
                "FAKETIME_DONT_FAKE_MONOTONIC".into(),
                dont_fake_monotonic.into(),
            ),
        ]
    }

    /// The process of `host` whose clock its control file fakes: its witness or its agent.
    pub fn faked_proc(&self, host: &str) -> Option<&Proc> {
        self.witnesses.get(host).or_else(|| self.agents.get(host))
    }

    /// Sets a monotonic host's clock to run at `rate` from now on, never backwards (see
    /// [`MonotonicSetting::with_rate`]). Returns the control line written.
    pub fn set_monotonic_rate(&mut self, host: &str, rate: f64) -> anyhow::Result<String> {
        if !self.opts.monotonic_hosts.contains(host) {
            bail!("{host}'s monotonic clock is not faked");
        }
        let age = self
            .faked_proc(host)
            .and_then(|p| p.started_at)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let setting = self
            .clock_specs
            .get(host)
            .copied()
            .unwrap_or_default()
            .with_rate(age, rate);
        let line = setting.line();
        std::fs::write(self.node_dir(host).join("faketime"), format!("{line}\n"))?;
        self.clock_specs.insert(host.to_string(), setting);
        Ok(line)
    }

    /// Creates the process objects of every host and starts them all.
    pub fn start(&mut self) -> anyhow::Result<()> {
        // The helpers run from a link to this very binary in the run directory, so a
        // rebuild during the run cannot remove or change what a restart executes.
        let me = {
            let exe = std::env::current_exe()?;
            let link = self.dir.join("bin").join("jepsen");
            std::fs::create_dir_all(self.dir.join("bin"))?;
            if !link.exists() && std::fs::hard_link(&exe, &link).is_err() {
                std::fs::copy(&exe, &link)?;
            }
            link.display().to_string()
        };
        let servers = self.cli().servers.join(",");
        for h in self.hosts.clone() {
            let nd = self.node_dir(&h.name);
            match &h.role {
                Role::Witness { .. } => {
                    let mut argv = vec![
                        self.bin.display().to_string(),
                        "serve".into(),
                        "--config".into(),
                        nd.join("node.toml").display().to_string(),
                    ];
                    if self.opts.unsafe_skip_lease_wait {
                        argv.push("--unsafe-skip-lease-wait".into());
                    }
                    let mut env = self.clock_env(&h.name);
                    if !self.opts.unsafe_holes.is_empty() {
                        env.push((
                            "ARBITER_UNSAFE_HOLES".into(),
                            self.opts.unsafe_holes.join(","),
                        ));
                    }
                    env.push(("RUST_LOG".into(), "info,openraft=warn".into()));
                    let p = Proc::new(&h.name, &h.ns(), argv, env, nd.join("serve.log"));
                    self.witnesses.insert(h.name.clone(), p);
                    let proxy = Proc::new(
                        &h.name,
                        &h.ns(),
                        vec![
                            me.clone(),
                            "proxy".into(),
                            "--listen".into(),
                            format!("0.0.0.0:{PROXY_PORT}"),
                            "--to".into(),
                            format!("127.0.0.1:{WITNESS_PORT}"),
                            "--delay-file".into(),
                            nd.join("delay_ms").display().to_string(),
                        ],
                        Vec::new(),
                        nd.join("proxy.log"),
                    );
                    self.proxies.insert(h.name.clone(), proxy);
                    let hooks = Proc::new(
                        &h.name,
                        &h.ns(),
                        vec![
                            me.clone(),
                            "hook-server".into(),
                            "--listen".into(),
                            format!("127.0.0.1:{}", crate::hook_log::HOOK_PORT),
                            "--log".into(),
                            nd.join(crate::hook_log::LOG_FILE).display().to_string(),
                            "--name".into(),
                            "jp-validate-http".into(),
                        ],
                        Vec::new(),
                        nd.join("hook-server.log"),
                    );
                    self.hook_servers.insert(h.name.clone(), hooks);
                }
                Role::Database { region } => {
                    let database = |action: &str| {
                        format!(
                            "'{me}' database {action} --file '{}' --latency-ms {}",
                            nd.join(crate::database::STATE_FILE).display(),
                            self.opts.db_latency_ms
                        )
                    };
                    let mut argv = vec![
                        self.bin.display().to_string(),
                        "agent".into(),
                        "--server".into(),
                        servers.clone(),
                        "--group".into(),
                        GROUP.into(),
                        "--region".into(),
                        region.clone(),
                        "--holder".into(),
                        h.name.clone(),
                        "--state-file".into(),
                        nd.join("agent.json").display().to_string(),
                        "--retry-ms".into(),
                        "200".into(),
                        "--on-gain".into(),
                        database("open"),
                        "--on-lose".into(),
                        database("close"),
                    ];
                    if self.opts.watchdog {
                        let device = crate::watchdog::create_device(&nd)?;
                        argv.extend([
                            "--watchdog".into(),
                            "required".into(),
                            "--watchdog-device".into(),
                            device.display().to_string(),
                            "--watchdog-margin-ms".into(),
                            WATCHDOG_MARGIN_MS.to_string(),
                        ]);
                    }
                    let mut env = self.clock_env(&h.name);
                    env.push((
                        "ARBITER_TLS_DIR".into(),
                        self.dir.join("certs").display().to_string(),
                    ));
                    let p = Proc::new(&h.name, &h.ns(), argv, env, nd.join("agent.log"));
                    self.agents.insert(h.name.clone(), p);
                    let health = Proc::new(
                        &h.name,
                        &h.ns(),
                        vec![
                            me.clone(),
                            "health-server".into(),
                            "--listen".into(),
                            format!("0.0.0.0:{HEALTH_PORT}"),
                        ],
                        Vec::new(),
                        nd.join("health.log"),
                    );
                    self.health.insert(h.name.clone(), health);
                }
                Role::Dns => {
                    let named = crate::dns::find_program("named").context(
                        "named (BIND 9) not found: install Debian's bind9 package (.ci/run does)",
                    )?;
                    self.bind = Some(Proc::new(
                        &h.name,
                        &h.ns(),
                        crate::dns::named_argv(&named, &nd.join("named.conf")),
                        Vec::new(),
                        nd.join("named.log"),
                    ));
                }
            }
        }
        if let Some(p) = self.bind.as_mut() {
            p.start()?;
        }
        for p in self.proxies.values_mut() {
            p.start()?;
        }
        for p in self.hook_servers.values_mut() {
            p.start()?;
        }
        for p in self.health.values_mut() {
            p.start()?;
        }
        for p in self.witnesses.values_mut() {
            p.start()?;
        }
        Ok(())
    }

    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        for p in self.agents.values_mut() {
            p.start()?;
        }
        Ok(())
    }

    /// Stops every process (agents first, so they give up their leases).
    pub fn stop_all(&mut self) {
        for set in [
            &mut self.agents,
            &mut self.witnesses,
            &mut self.health,
            &mut self.proxies,
            &mut self.hook_servers,
        ] {
            for p in set.values_mut() {
                p.stop();
            }
        }
        if let Some(p) = self.bind.as_mut() {
            p.stop();
        }
    }
}
