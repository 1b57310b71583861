//! The process-level harness: the real `arbiter` binary driven the way an operator drives
//! it. A [`Cluster`] makes its own development CA with `arbiter certs init`, writes node files
//! for witnesses on free loopback ports, starts `arbiter serve` processes and talks to them
//! only through the CLI (exit codes, stdout, stderr). Every child is killed by PID when it is
//! dropped, even on panic, and a failing test prints the tail of each witness's log.
//!
//! Waits are bounded polls on an observable condition (a log line, a CLI answer).

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use super::free_addrs;

/// Generous deadline for anything the cluster should do "soon" (start, elect, catch up) on a
/// loaded 2-core machine running several clusters at once.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound on one CLI invocation: the client gives up by itself well before this
/// (bounded attempts with 10 s RPC deadlines); this only guards against a hang.
pub const CLI_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two polls of a condition.
pub const POLL: Duration = Duration::from_millis(150);
/// Lines of each witness log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;
/// Exit code for bad configuration or usage (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when the cluster refused the request.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code when no witness could be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Sites of witnesses 1, 2, 3, 4 (4 is the one added later in the membership test).
pub const SITES: [&str; 4] = ["region-a", "region-b", "tiebreaker", "tiebreaker"];
/// Witnesses that form the cluster at `arbiter init`.
pub const INITIAL_WITNESSES: u64 = 3;

/// Polls `check` every [`POLL`] until it returns `Some`, or panics after [`DEADLINE`]
/// naming `what`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A `Command` for the binary under test, isolated from the caller's `ARBITER_*` settings.
pub fn arbiter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbiter"));
    for var in [
        "ARBITER_SERVERS",
        "ARBITER_TLS_DIR",
        "ARBITER_CA",
        "ARBITER_CERT",
        "ARBITER_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info,openraft=warn");
    cmd
}

/// What one CLI invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns stdout.
    pub fn ok(self, what: &str) -> String {
        assert_eq!(self.code, 0, "{what} failed: {self:#?}");
        self.stdout
    }

    /// Asserts exit code `code` and that stderr mentions every one of `needles`.
    pub fn refused(&self, what: &str, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{what}: wrong exit code: {self:#?}");
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "{what}: stderr should mention {n:?}: {self:#?}"
            );
        }
    }
}

/// Runs the binary with `args`, bounded by [`CLI_DEADLINE`]. Output goes through files in
/// `dir`, so a chatty child can never block on a full pipe.
pub fn run(dir: &Path, args: &[&str]) -> Out {
    let out_path = dir.join("cli.stdout");
    let err_path = dir.join("cli.stderr");
    let mut child = arbiter()
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn arbiter");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > CLI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arbiter {args:?} still running after {CLI_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    };
    tracing::debug!(?args, code = out.code, "cli");
    out
}

/// Node file of witness `id`; `peers` are the ids it lists as initial peers.
pub fn node_toml(dir: &Path, certs: &Path, addrs: &[SocketAddr], id: u64, peers: &[u64]) -> String {
    let tls = arbiter::tls::TlsPaths {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("node-{id}.pem")),
        key: certs.join(format!("node-{id}.key")),
    };
    let data = dir.join(format!("node-{id}"));
    super::node_toml_with(id, addrs, peers, &SITES, &data, &tls, super::Timing::Test)
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `arbiter serve` child. Dropping it kills the process (SIGKILL by PID) and reaps it.
pub struct Witness {
    child: Child,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Witness processes sharing one tempdir, CA and set of reserved addresses.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub addrs: Vec<SocketAddr>,
    /// Running children by id - 1; `None` when not started or killed.
    witnesses: Vec<Option<Witness>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in 1..=self.addrs.len() as u64 {
                let log = self.log(id);
                if log.exists() {
                    eprintln!(
                        "===== tail of {} =====\n{}",
                        log.display(),
                        tail(&log, LOG_TAIL_LINES)
                    );
                }
            }
        }
        // The children are killed by their own Drop right after this.
    }
}

impl Cluster {
    /// Certificates and node files for `n` witnesses: 1..=3 list the initial three as peers,
    /// any further witness lists the initial three plus itself. Nothing is started.
    pub fn prepare(n: usize) -> Cluster {
        super::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        // Each witness's certificate names the site its node file gives it.
        let sites: Vec<&str> = (0..n).map(|i| SITES[i % SITES.len()]).collect();
        let sites = sites.join(",");
        run(
            dir.path(),
            &[
                "certs",
                "init",
                "--out",
                certs.to_str().unwrap(),
                "--sites",
                &sites,
            ],
        )
        .ok("certs init");
        let addrs = free_addrs(n);
        for id in 1..=n as u64 {
            let mut peers: Vec<u64> = (1..=INITIAL_WITNESSES).collect();
            if id > INITIAL_WITNESSES {
                peers.push(id);
            }
            let text = node_toml(dir.path(), &certs, &addrs, id, &peers);
            std::fs::write(dir.path().join(format!("node-{id}.toml")), text).unwrap();
        }
        Cluster {
            dir,
            certs,
            addrs,
            witnesses: (0..n).map(|_| None).collect(),
        }
    }

    /// [`Cluster::prepare`]s `n` witnesses, of which the initial three are started,
    /// initialised with `arbiter init`, have elected a leader and committed `policy` as
    /// version 1.
    pub fn three_with_policy(n: usize, policy: &str) -> Cluster {
        Cluster::three_with_node_extra(n, "", policy)
    }

    /// [`Cluster::three_with_policy`] whose node files end with `extra` (TOML tables, such
    /// as a `[dns]` listener).
    pub fn three_with_node_extra(n: usize, extra: &str, policy: &str) -> Cluster {
        let mut c = Cluster::prepare(n);
        for id in 1..=n as u64 {
            let file = c.node_file(id);
            let text = std::fs::read_to_string(&file).unwrap() + extra;
            std::fs::write(&file, text).unwrap();
        }
        for id in 1..=INITIAL_WITNESSES {
            c.start(id);
        }
        c.cli(&["init"]).ok("init");
        c.leader();
        let policy = c.write("policy.toml", policy);
        let out = c.cli(&["policy", "apply", &policy]).ok("policy apply");
        assert!(out.contains("policy version 1 committed"), "{out}");
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node_file(&self, id: u64) -> PathBuf {
        self.path().join(format!("node-{id}.toml"))
    }

    pub fn log(&self, id: u64) -> PathBuf {
        self.path().join(format!("node-{id}.log"))
    }

    pub fn addr(&self, id: u64) -> String {
        self.addrs[id as usize - 1].to_string()
    }

    /// Writes `text` to `name` in the test dir and returns the path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// Starts `arbiter serve` for witness `id` (stdout and stderr appended to its log) and
    /// waits until it says it is listening.
    pub fn start(&mut self, id: u64) {
        assert!(
            self.witnesses[id as usize - 1].is_none(),
            "witness {id} runs"
        );
        let log_path = self.log(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let offset = log.metadata().unwrap().len() as usize;
        let mut w = Witness {
            child: arbiter()
                .args(["serve", "--config", self.node_file(id).to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn arbiter serve"),
        };
        eventually(&format!("witness {id} listening"), || {
            if let Some(status) = w.child.try_wait().unwrap() {
                panic!(
                    "witness {id} exited with {status} before listening:\n{}",
                    tail(&log_path, LOG_TAIL_LINES)
                );
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.get(offset..)
                .is_some_and(|t| t.contains("witness listening"))
                .then_some(())
        });
        tracing::info!(id, pid = w.child.id(), "witness started");
        self.witnesses[id as usize - 1] = Some(w);
    }

    /// The PID of witness `id`'s running process.
    pub fn pid(&self, id: u64) -> u32 {
        self.witnesses[id as usize - 1]
            .as_ref()
            .expect("witness is running")
            .child
            .id()
    }

    /// SIGKILLs witness `id` by PID (a crash: no goodbye to peers); its data dir stays.
    pub fn kill(&mut self, id: u64) {
        let w = self.witnesses[id as usize - 1]
            .take()
            .expect("witness is running");
        tracing::info!(id, pid = w.child.id(), "SIGKILL");
        drop(w);
    }

    /// Runs a CLI command against `servers` (ids, in this order) with the cluster's client
    /// certificate. `args` start with the subcommand path; connection flags are appended.
    pub fn cli_at(&self, servers: &[u64], args: &[&str]) -> Out {
        let servers: Vec<String> = servers.iter().map(|&id| self.addr(id)).collect();
        let servers = servers.join(",");
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--server",
            &servers,
            "--tls-dir",
            self.certs.to_str().unwrap(),
        ]);
        run(self.path(), &all)
    }

    /// A CLI command against the initial three witnesses.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_at(&[1, 2, 3], args)
    }

    /// `status --json` through `servers`, once it answers with a leader.
    pub fn status_at(&self, servers: &[u64]) -> Value {
        eventually("status with a leader", || {
            let out = self.cli_at(servers, &["status", "--json"]);
            if out.code != 0 {
                return None;
            }
            let s: Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
            s["leader_id"].as_u64().is_some().then_some(s)
        })
    }

    pub fn status(&self) -> Value {
        self.status_at(&[1, 2, 3])
    }

    pub fn leader(&self) -> u64 {
        self.status()["leader_id"].as_u64().unwrap()
    }

    /// The committed policy version, as `policy show` prints it.
    pub fn policy_version(&self) -> u64 {
        let out = self.cli(&["policy", "show"]).ok("policy show");
        out.lines()
            .next()
            .and_then(|l| l.strip_prefix("# policy version "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("policy show header: {out}"))
    }
}

/// A long-running CLI command (`watch`) whose stdout goes to a file; killed by PID when
/// dropped.
pub struct Background {
    child: Child,
    stdout: PathBuf,
}

impl Background {
    /// Starts the binary with `args`, stdout to `dir/NAME.stdout`, stderr to `NAME.stderr`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Background {
        let stdout = dir.join(format!("{name}.stdout"));
        let child = arbiter()
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("spawn arbiter");
        Background { child, stdout }
    }

    /// The PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines written to stdout so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(active, epoch)` of `group` in a `status --json` answer.
pub fn group(status: &Value, name: &str) -> (String, u64) {
    let g = status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("group {name} in {status}"));
    (
        g["active"].as_str().unwrap().to_string(),
        g["epoch"].as_u64().unwrap(),
    )
}
