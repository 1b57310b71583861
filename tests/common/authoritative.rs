//! Real authoritative DNS servers for tests: BIND9 (`named`) and Knot (`knotd`), each a child
//! process on a free loopback port with its own config, zone files and data in a temporary
//! directory. Each serves `shop.example.` (updatable with the test's TSIG key) and
//! `locked.example.` (that key may not update it), and is killed by PID on drop. A server
//! can be wiped by hand ([`Authoritative::wipe`]): its zones recreated without the group's
//! records and without any journal, as an operator restoring a bare zone file would.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arbiter::config::{DnsServer, SecretRef, TsigAlgorithm};
use rand::RngCore;

/// The zone the test key may update.
pub const ZONE: &str = "shop.example.";
/// A zone on the same server that the test key may NOT update.
pub const LOCKED_ZONE: &str = "locked.example.";
/// The TSIG key name configured on every server.
pub const KEY_NAME: &str = "arbiter-key.";
/// The name the tests move between regions, and its records in the zone file.
pub const NAME: &str = "checkout.shop.example.";
pub const INITIAL_A: [&str; 2] = ["192.0.2.10", "192.0.2.11"];
/// First SOA serial of both zones.
pub const INITIAL_SERIAL: u32 = 1;

/// How long a server may take to load its zones and answer SOA. Both start in well under a
/// second; the margin is for a loaded CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts with a fresh port when a server cannot start (a port taken between our probe
/// and the server's bind).
const START_ATTEMPTS: usize = 3;
/// Per-query deadline while waiting for readiness.
const READY_QUERY_TIMEOUT_MS: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Bind,
    Knot,
}

impl Flavour {
    fn binary(self) -> &'static str {
        match self {
            Flavour::Bind => "named",
            Flavour::Knot => "knotd",
        }
    }
}

/// Finds a server binary on PATH or in the sbin directories Debian installs daemons into
/// (not on a non-root PATH).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the tests can run here. Missing binaries skip a test with a clear message on a
/// developer machine; under CI (`CI` set) they fail it, so a broken `.ci/run` cannot pass
/// by skipping everything.
pub fn available(flavours: &[Flavour]) -> bool {
    let missing: Vec<&str> = flavours
        .iter()
        .filter(|f| find_binary(f.binary()).is_none())
        .map(|f| f.binary())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let hint = "install them with `apt-get install -y bind9 bind9-utils knot knot-dnsutils`";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {missing:?} not found; {hint}");
    }
    eprintln!("SKIPPED: {missing:?} not found on this machine; {hint}");
    false
}

/// A random base64 TSIG secret (32 bytes, the size of an hmac-sha256 block output).
pub fn random_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    data_encoding::BASE64.encode(&key)
}

/// A running server. Killed (by its PID) and reaped on drop.
pub struct Authoritative {
    pub flavour: Flavour,
    pub addr: SocketAddr,
    /// The secret of [`KEY_NAME`] as the server knows it.
    pub secret: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Authoritative {
    /// Starts a server and waits until it answers SOA for both zones.
    pub async fn start(flavour: Flavour) -> Authoritative {
        let secret = random_secret();
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut server = Authoritative {
                flavour,
                addr,
                secret: secret.clone(),
                dir,
                child: None,
            };
            server.write_files(true);
            server.spawn();
            match server.wait_ready().await {
                Ok(()) => {
                    tracing::info!(?flavour, %addr, "authoritative server ready");
                    return server;
                }
                Err(log) => {
                    tracing::warn!(?flavour, attempt, "server did not start; retrying");
                    last_log = log;
                }
            }
        }
        panic!("{flavour:?} did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// The policy entry arbiter would use for this server and `zone`, with the secret in a
    /// file (as production would).
    pub fn server(&self, zone: &str) -> DnsServer {
        self.server_with(zone, KEY_NAME, &self.secret.clone())
    }

    /// Like [`Self::server`] with another key name or secret (to provoke TSIG errors).
    pub fn server_with(&self, zone: &str, key: &str, secret: &str) -> DnsServer {
        let path = self
            .dir
            .path()
            .join(format!("client-secret-{}", rand::random::<u32>()));
        std::fs::write(&path, format!("{secret}\n")).expect("write secret file");
        DnsServer {
            address: self.addr.to_string(),
            zone: zone.to_string(),
            tsig_key: key.to_string(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: SecretRef {
                file: Some(path),
                env: None,
            },
            timeout_ms: 3_000,
        }
    }

    /// Wipes the server by hand: stops it, recreates both zones with only their SOA, NS and
    /// glue (no group record, no `_arbiter.` marker, no journal of earlier updates) and
    /// starts it again on the same address, so the policy's entry still points at it.
    pub async fn wipe(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            // BIND's journals of applied updates; a restart would replay them.
            if path.extension().is_some_and(|e| e == "jnl") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        // Knot's journal and timers.
        std::fs::remove_dir_all(self.path("db")).unwrap();
        self.write_files(false);
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => {
                    tracing::info!(flavour = ?self.flavour, addr = %self.addr, "server wiped and restarted");
                    return;
                }
                Err(log) => {
                    // The old process's port may not be free yet.
                    tracing::warn!(flavour = ?self.flavour, attempt, "wiped server did not start; retrying");
                    last_log = log;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        panic!(
            "{:?} did not restart after the wipe; last log:\n{last_log}",
            self.flavour
        );
    }

    /// Runs `nsupdate` (BIND's command-line client, which works with Knot as well) against
    /// this server with `commands` for [`ZONE`], signed with the test key: what an operator
    /// fixing the server by hand would type. Panics with nsupdate's output if it fails.
    pub fn nsupdate(&self, commands: &str) {
        let binary = find_binary("nsupdate")
            .expect("nsupdate not found; install it with `apt-get install -y bind9-dnsutils`");
        let key = self.path("nsupdate.key");
        std::fs::write(
            &key,
            format!(
                "key \"{KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{}\"; }};\n",
                self.secret
            ),
        )
        .unwrap();
        let script = format!(
            "server {} {}\nzone {ZONE}\n{commands}\nsend\n",
            self.addr.ip(),
            self.addr.port()
        );
        let mut child = Command::new(binary)
            .arg("-v") // TCP, as arbiter's updates
            .arg("-k")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsupdate");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nsupdate failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server now (the test's "server down").
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The config and zone files; `with_records`: the zones carry [`NAME`]'s initial records.
    fn write_files(&self, with_records: bool) {
        // Knot keeps its journal here and fails every update ("not exists") without it.
        std::fs::create_dir(self.path("db")).unwrap();
        for zone in [ZONE, LOCKED_ZONE] {
            std::fs::write(
                self.path(&format!("{zone}zone")),
                zone_file(zone, with_records),
            )
            .unwrap();
        }
        let conf = match self.flavour {
            Flavour::Bind => bind_conf(self.dir.path(), self.addr.port(), &self.secret),
            Flavour::Knot => knot_conf(self.dir.path(), self.addr.port(), &self.secret),
        };
        std::fs::write(self.path("server.conf"), conf).unwrap();
    }

    fn spawn(&mut self) {
        let binary = find_binary(self.flavour.binary()).expect("checked by available()");
        let conf = self.path("server.conf");
        let mut command = Command::new(binary);
        match self.flavour {
            // -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread is
            // plenty for a test and keeps CI machines calm. No -u: it stays the user that
            // started it (root in CI), which named allows.
            Flavour::Bind => command.args(["-g", "-4", "-n", "1", "-c"]).arg(&conf),
            // knotd stays in the foreground unless -d is given.
            Flavour::Knot => command.arg("-c").arg(&conf),
        };
        let log = std::fs::File::create(self.path("server.log")).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().expect("spawn server"));
    }

    /// Waits until both zones answer SOA, or returns the server's log if it exits or the
    /// deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let start = tokio::time::Instant::now();
        let mut probes: Vec<DnsServer> =
            [ZONE, LOCKED_ZONE].iter().map(|z| self.server(z)).collect();
        for p in &mut probes {
            p.timeout_ms = READY_QUERY_TIMEOUT_MS;
        }
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let mut ready = true;
            for p in &probes {
                ready &= arbiter::dns::soa_serial(p, &p.zone).await.is_ok();
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() > READY_DEADLINE {
                self.stop();
                return Err(format!(
                    "no SOA answer within {READY_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Authoritative {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what the server said; a passing one stays quiet.
        if std::thread::panicking() {
            eprintln!("--- {:?} log:\n{}", self.flavour, self.log());
        }
    }
}

/// A loopback port free for both TCP and UDP right now (a server listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn zone_file(zone: &str, with_records: bool) -> String {
    let mut z = format!(
        "$ORIGIN {zone}\n$TTL 300\n\
         @ IN SOA ns1.{zone} hostmaster.{zone} {INITIAL_SERIAL} 3600 600 86400 60\n\
         @ IN NS ns1.{zone}\n\
         ns1 IN A 127.0.0.1\n"
    );
    if with_records {
        for a in INITIAL_A {
            writeln!(z, "checkout IN A {a}").unwrap();
        }
    }
    z
}

/// BIND: one key; `shop.example.` updatable with it, `locked.example.` updatable by nobody.
/// `controls {}` turns off the rndc channel (it would bind port 953 and need rndc.key).
fn bind_conf(dir: &Path, port: u16, secret: &str) -> String {
    let d = dir.display();
    format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{
    algorithm hmac-sha256;
    secret "{secret}";
}};
zone "{ZONE}" {{
    type primary;
    file "{d}/{ZONE}zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
zone "{LOCKED_ZONE}" {{
    type primary;
    file "{d}/{LOCKED_ZONE}zone";
    allow-update {{ none; }};
}};
"#
    )
}

/// Knot: the same key; an `update` ACL for it on `shop.example.` only.
fn knot_conf(dir: &Path, port: u16, secret: &str) -> String {
    let d = dir.display();
    format!(
        r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}

log:
  - target: stderr
    any: info

database:
    storage: "{d}/db"

key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}

acl:
  - id: arbiter_update
    key: {KEY_NAME}
    action: update

template:
  - id: default
    storage: "{d}"
    file: "%s.zone"

zone:
  - domain: {ZONE}
    acl: arbiter_update
  - domain: {LOCKED_ZONE}
"#
    )
}
