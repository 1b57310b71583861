//! Process-level tests: the real `arbiter` binary, driven the way an operator drives it.
//! Each test makes its own development CA with `arbiter certs init`, writes node files for
//! witnesses on free loopback ports, starts `arbiter serve` processes and talks to them only
//! through the CLI (exit codes, stdout, stderr). Every child is killed by PID when the test
//! ends, even on panic, and a failing test prints the tail of each witness's log.
//!
//! Waits are bounded polls on an observable condition (a log line, a CLI answer); no test
//! sleeps for correctness or asserts an absolute time.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous deadline for anything the cluster should do "soon" (start, elect, catch up) on a
/// loaded 2-core machine running several clusters at once.
const DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound on one CLI invocation: the client gives up by itself well before this
/// (bounded attempts with 10 s RPC deadlines); this only guards against a hang.
const CLI_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(150);
/// Lines of each witness log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// Exit code for bad configuration or usage (`EX_USAGE`).
const EXIT_CONFIG: i32 = 64;
/// Exit code when the cluster refused the request.
const EXIT_REFUSED: i32 = 1;

/// Sites of witnesses 1, 2, 3, 4 (4 is the one added later in the membership test).
const SITES: [&str; 4] = ["region-a", "region-b", "tiebreaker", "tiebreaker"];
/// Witnesses that form the cluster at `arbiter init`.
const INITIAL_WITNESSES: u64 = 3;

const POLICY: &str = r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"
[[regions]]
name = "region-c"

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "manual"
lease_ms = 1000
lease_margin_ms = 200

[[groups]]
name = "catalog"
candidates = ["region-b", "region-a"]
mode = "auto"
lease_ms = 1000
lease_margin_ms = 200
"#;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` every [`POLL`] until it returns `Some`, or panics after [`DEADLINE`]
/// naming `what`.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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
fn arbiter() -> Command {
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
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts success and returns stdout.
    fn ok(self, what: &str) -> String {
        assert_eq!(self.code, 0, "{what} failed: {self:#?}");
        self.stdout
    }

    /// Asserts exit code `code` and that stderr mentions every one of `needles`.
    fn refused(&self, what: &str, code: i32, needles: &[&str]) {
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
fn run(dir: &Path, args: &[&str]) -> Out {
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

/// `n` distinct free loopback ports: bound to port 0, read, then released for the witnesses.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Node file of witness `id`; `peers` are the ids it lists as initial peers.
fn node_toml(dir: &Path, certs: &Path, addrs: &[SocketAddr], id: u64, peers: &[u64]) -> String {
    let peers: Vec<String> = peers
        .iter()
        .map(|&p| {
            format!(
                "{{ id = {p}, addr = \"{}\", site = \"{}\" }}",
                addrs[p as usize - 1],
                SITES[p as usize - 1]
            )
        })
        .collect();
    format!(
        r#"id = {id}
site = "{site}"
data_dir = "{data}"
listen = "{listen}"
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
peers = [{peers}]

[timing]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
rpc_timeout_ms = 500
"#,
        site = SITES[id as usize - 1],
        data = dir.join(format!("node-{id}")).display(),
        listen = addrs[id as usize - 1],
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("node-{id}.pem")).display(),
        key = certs.join(format!("node-{id}.key")).display(),
        peers = peers.join(", "),
    )
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `arbiter serve` child. Dropping it kills the process (SIGKILL by PID) and reaps it.
struct Witness {
    child: Child,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Witness processes sharing one tempdir, CA and set of reserved addresses.
struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    addrs: Vec<SocketAddr>,
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
    fn prepare(n: usize) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let nodes = n.to_string();
        run(
            dir.path(),
            &[
                "certs",
                "init",
                "--out",
                certs.to_str().unwrap(),
                "--nodes",
                &nodes,
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
    /// initialised with `arbiter init`, have elected a leader and committed [`POLICY`] as
    /// version 1.
    fn three_with_policy(n: usize) -> Cluster {
        let mut c = Cluster::prepare(n);
        for id in 1..=INITIAL_WITNESSES {
            c.start(id);
        }
        c.cli(&["init"]).ok("init");
        c.leader();
        let policy = c.write("policy.toml", POLICY);
        let out = c.cli(&["policy", "apply", &policy]).ok("policy apply");
        assert!(out.contains("policy version 1 committed"), "{out}");
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn node_file(&self, id: u64) -> PathBuf {
        self.path().join(format!("node-{id}.toml"))
    }

    fn log(&self, id: u64) -> PathBuf {
        self.path().join(format!("node-{id}.log"))
    }

    fn addr(&self, id: u64) -> String {
        self.addrs[id as usize - 1].to_string()
    }

    /// Writes `text` to `name` in the test dir and returns the path.
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// Starts `arbiter serve` for witness `id` (stdout and stderr appended to its log) and
    /// waits until it says it is listening.
    fn start(&mut self, id: u64) {
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

    /// SIGKILLs witness `id` by PID (a crash: no goodbye to peers); its data dir stays.
    fn kill(&mut self, id: u64) {
        let w = self.witnesses[id as usize - 1]
            .take()
            .expect("witness is running");
        tracing::info!(id, pid = w.child.id(), "SIGKILL");
        drop(w);
    }

    /// Runs a CLI command against `servers` (ids, in this order) with the cluster's client
    /// certificate. `args` start with the subcommand path; connection flags are appended.
    fn cli_at(&self, servers: &[u64], args: &[&str]) -> Out {
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
    fn cli(&self, args: &[&str]) -> Out {
        self.cli_at(&[1, 2, 3], args)
    }

    /// `status --json` through `servers`, once it answers with a leader.
    fn status_at(&self, servers: &[u64]) -> Value {
        eventually("status with a leader", || {
            let out = self.cli_at(servers, &["status", "--json"]);
            if out.code != 0 {
                return None;
            }
            let s: Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
            s["leader_id"].as_u64().is_some().then_some(s)
        })
    }

    fn status(&self) -> Value {
        self.status_at(&[1, 2, 3])
    }

    fn leader(&self) -> u64 {
        self.status()["leader_id"].as_u64().unwrap()
    }

    /// The committed policy version, as `policy show` prints it.
    fn policy_version(&self) -> u64 {
        let out = self.cli(&["policy", "show"]).ok("policy show");
        out.lines()
            .next()
            .and_then(|l| l.strip_prefix("# policy version "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("policy show header: {out}"))
    }
}

/// `(active, epoch)` of `group` in a `status --json` answer.
fn group(status: &Value, name: &str) -> (String, u64) {
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

/// Roles of the rows of a witness table (`members list`/`add`/`remove`), by id.
fn member_roles(table: &str) -> Vec<(u64, String)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse().ok()?, cols.next()?.to_string()))
        })
        .collect()
}

fn voters(table: &str) -> Vec<u64> {
    member_roles(table)
        .into_iter()
        .filter(|(_, role)| role == "leader" || role == "voter")
        .map(|(id, _)| id)
        .collect()
}

/// Goal: an operator runs a three-witness cluster with nothing but the binary: init once,
/// preview and commit a policy, fail a group over, lose the leader process and keep working,
/// then bring the lost witness back and see it catch up.
/// Method: three `serve` processes; every step is a CLI call whose exit code and output are
/// checked; the leader is SIGKILLed and the CLI is given its address first, so it must move
/// on to the new leader by itself.
#[test]
fn three_processes_driven_by_the_cli() {
    let mut c = Cluster::prepare(3);
    tracing::info!("--- start three witnesses and initialise once");
    for id in 1..=3 {
        c.start(id);
    }
    let out = c.cli(&["init"]).ok("init");
    assert!(out.contains("initialised with 3 witnesses"), "{out}");
    let again = c.cli(&["init"]);
    again.refused("second init", EXIT_REFUSED, &["already initialised"]);

    tracing::info!("--- dry run shows the diff and commits nothing");
    let policy = c.write("policy.toml", POLICY);
    let out = c
        .cli(&["policy", "apply", "--dry-run", &policy])
        .ok("dry run");
    assert!(out.contains("+ region region-a"), "{out}");
    assert!(
        out.contains("+ group checkout: candidates [region-a, region-b], mode manual"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing committed"), "{out}");
    assert_eq!(c.policy_version(), 0, "a dry run commits nothing");
    let show = c.cli(&["policy", "show"]).ok("policy show");
    assert!(!show.contains("checkout"), "no policy yet: {show}");

    tracing::info!("--- apply the policy");
    let out = c.cli(&["policy", "apply", &policy]).ok("policy apply");
    assert!(out.contains("policy version 1 committed"), "{out}");
    assert_eq!(c.policy_version(), 1);

    tracing::info!("--- status --json");
    let s = c.status();
    assert_eq!(s["policy_version"], 1);
    assert_eq!(group(&s, "checkout"), ("region-a".to_string(), 1));
    assert_eq!(group(&s, "catalog"), ("region-b".to_string(), 1));
    let witnesses = s["witnesses"].as_array().unwrap();
    assert_eq!(witnesses.len(), 3, "{s}");
    let leader = s["leader_id"].as_u64().unwrap();
    assert!((1..=3).contains(&leader));
    assert_eq!(
        witnesses
            .iter()
            .filter(|w| w["role"] == "leader")
            .map(|w| w["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [leader],
        "exactly the leader is listed as leader: {s}"
    );

    tracing::info!("--- failover checkout to region-b");
    let out = c
        .cli(&[
            "failover", "checkout", "--to", "region-b", "--reason", "drill",
        ])
        .ok("failover");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let table = c.cli(&["status"]).ok("status");
    let row = table
        .lines()
        .find(|l| l.starts_with("checkout "))
        .unwrap_or_else(|| panic!("checkout row in {table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..3], ["region-b", "2"], "{table}");

    let leader = c.leader();
    tracing::info!(leader, "--- SIGKILL the leader process");
    c.kill(leader);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let mut dead_first = vec![leader];
    dead_first.extend(&survivors);
    let s = eventually("status through the CLI names a new leader", || {
        let s = c.status_at(&dead_first);
        (s["leader_id"].as_u64() != Some(leader)).then_some(s)
    });
    assert!(survivors.contains(&s["leader_id"].as_u64().unwrap()), "{s}");
    assert_eq!(
        group(&s, "checkout"),
        ("region-b".to_string(), 2),
        "the committed failover survives the leader's death"
    );
    let out = c
        .cli_at(
            &dead_first,
            &[
                "failover", "checkout", "--to", "region-a", "--reason", "failback",
            ],
        )
        .ok("failover under the new leader");
    assert!(out.contains("done: region-a active at epoch 3"), "{out}");

    tracing::info!("--- restart the killed witness from its data dir; it catches up");
    c.start(leader);
    eventually("restarted witness applied epoch 3", || {
        let out = c.cli_at(&[leader], &["status", "--local", "--json"]);
        if out.code != 0 {
            return None;
        }
        let s: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(s["local"], true);
        assert_eq!(s["served_by"].as_u64(), Some(leader));
        (group(&s, "checkout") == ("region-a".to_string(), 3)).then_some(())
    });
}

/// Goal: a fourth witness can join as a voter and leave again through the CLI, and the
/// cluster keeps committing with the quorum of its new size.
/// Method: three witnesses initialised, a fourth process started with its own node file;
/// `members add` then `members remove`, checking the voter set each time. Finally the
/// fourth witness and one original follower are stopped: two of three voters remain, which
/// commits a failover only if the removal really shrank the voter set (two of four would not).
#[test]
fn members_add_and_remove() {
    let mut c = Cluster::three_with_policy(4);
    tracing::info!("--- start witness 4 and add it");
    c.start(4);
    let addr4 = c.addr(4);
    let out = c
        .cli(&[
            "members",
            "add",
            "--id",
            "4",
            "--addr",
            &addr4,
            "--site",
            "tiebreaker",
        ])
        .ok("members add");
    assert!(out.contains(&addr4), "{out}");
    let list = c.cli(&["members", "list"]).ok("members list");
    let mut v = voters(&list);
    v.sort();
    assert_eq!(v, [1, 2, 3, 4], "four voters: {list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("4 ") && l.contains("tiebreaker")),
        "{list}"
    );

    tracing::info!("--- witness 4 replicates the committed state");
    eventually("witness 4 applied the policy", || {
        let out = c.cli_at(&[4], &["status", "--local", "--json"]);
        let s: Value = serde_json::from_str(&out.stdout).ok()?;
        (s["policy_version"] == 1).then_some(())
    });

    tracing::info!("--- remove witness 4");
    let out = c
        .cli(&["members", "remove", "--id", "4"])
        .ok("members remove");
    let mut v = voters(&out);
    v.sort();
    assert_eq!(v, [1, 2, 3], "three voters after removal: {out}");
    let list = c.cli(&["members", "list"]).ok("members list");
    let mut v = voters(&list);
    v.sort();
    assert_eq!(v, [1, 2, 3], "three voters after removal: {list}");
    assert_eq!(
        member_roles(&list).len(),
        3,
        "witness 4 is gone, not kept as a learner: {list}"
    );

    tracing::info!("--- stop witness 4 and one follower: two of three voters still commit");
    c.kill(4);
    let leader = c.leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.kill(follower);
    let out = c
        .cli(&[
            "failover",
            "checkout",
            "--to",
            "region-b",
            "--reason",
            "after removal",
        ])
        .ok("failover with two of three voters");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
}

/// Goal: every kind of bad input is refused with the documented exit code and a message
/// that names what is wrong, and a refused input changes nothing.
/// Method: bad node files to `serve` (no cluster needed); then, against a running cluster,
/// bad policies (the committed version must not move) and refused failovers (the epoch must
/// not move).
#[test]
fn bad_inputs_give_clear_errors_and_change_nothing() {
    let c = Cluster::three_with_policy(3);

    tracing::info!("--- bad node files");
    let good = std::fs::read_to_string(c.node_file(1)).unwrap();
    let malformed = c.write("malformed-node.toml", "id = 1\nsite = [\n");
    let out = run(c.path(), &["serve", "--config", &malformed]);
    out.refused(
        "serve with malformed TOML",
        EXIT_CONFIG,
        &["malformed-node.toml", "line"],
    );
    let unknown = c.write("unknown-key.toml", &format!("{good}\nbogus_key = 1\n"));
    let out = run(c.path(), &["serve", "--config", &unknown]);
    out.refused(
        "serve with an unknown key",
        EXIT_CONFIG,
        &["unknown-key.toml", "bogus_key"],
    );
    let node1 = c.node_file(1);
    let out = run(
        c.path(),
        &["serve", "--check", "--config", node1.to_str().unwrap()],
    );
    assert!(out.ok("serve --check").contains("ok (node 1"));
    // The switch that skips the lease wait (jepsen's split-brain demonstration) exists only
    // in builds with the `unsafe-skip-lease-wait` feature: a normal build refuses it.
    #[cfg(not(feature = "unsafe-skip-lease-wait"))]
    run(
        c.path(),
        &[
            "serve",
            "--unsafe-skip-lease-wait",
            "--check",
            "--config",
            node1.to_str().unwrap(),
        ],
    )
    .refused(
        "serve --unsafe-skip-lease-wait in a normal build",
        2,
        &["--unsafe-skip-lease-wait"],
    );

    tracing::info!("--- bad policies are refused before anything is proposed");
    let bad_policies = [
        ("malformed", "[[regions]\nname = 1\n".to_string(), "line 1"),
        (
            "unknown-key",
            format!("{POLICY}\ncolour = \"red\"\n"),
            "colour",
        ),
        (
            "duplicate-region",
            format!("{POLICY}\n[[regions]]\nname = \"region-a\"\n"),
            "regions[3].name",
        ),
        (
            "one-candidate",
            POLICY.replacen(
                r#"["region-a", "region-b"]"#,
                r#"["region-a"]"#,
                1,
            ),
            "groups[0].candidates",
        ),
        (
            "missing-secret",
            format!(
                "{POLICY}\n[hooks.notify]\nkind = \"http\"\nurl = \"https://hooks.invalid/x\"\nsecret = {{ file = \"/nonexistent/arbiter-secret\" }}\n"
            ),
            "hooks.notify.secret.file",
        ),
    ];
    for (name, text, key) in &bad_policies {
        let file = c.write(&format!("{name}.toml"), text);
        let out = c.cli(&["policy", "apply", &file]);
        out.refused(
            &format!("policy {name}"),
            EXIT_CONFIG,
            &["invalid policy", key],
        );
    }
    assert_eq!(c.policy_version(), 1, "refused policies change nothing");

    tracing::info!("--- refused failovers");
    let before = c.status();
    let out = c.cli(&["failover", "checkout", "--to", "region-c", "--reason", "x"]);
    out.refused(
        "failover to a non-candidate",
        EXIT_REFUSED,
        &["not-candidate"],
    );
    let out = c.cli(&["failover", "nope", "--to", "region-a", "--reason", "x"]);
    out.refused(
        "failover of an unknown group",
        EXIT_REFUSED,
        &["unknown-group"],
    );
    let out = c
        .cli(&["mode", "checkout", "frozen", "--reason", "change freeze"])
        .ok("mode frozen");
    assert!(out.contains("checkout: mode frozen"), "{out}");
    let out = c.cli(&["failover", "checkout", "--to", "region-b", "--reason", "x"]);
    out.refused("failover of a frozen group", EXIT_REFUSED, &["frozen"]);
    let after = c.status();
    for g in ["checkout", "catalog"] {
        assert_eq!(
            group(&after, g),
            group(&before, g),
            "refusals change nothing"
        );
    }
    assert_eq!(group(&after, "checkout"), ("region-a".to_string(), 1));
}

/// Goal: mutual TLS keeps out a client whose certificate was issued by another CA, and such
/// an attempt does not disturb the cluster.
/// Method: a second CA from `arbiter certs init`; `status` with (a) all of its files and
/// (b) the cluster's CA but the foreign client certificate, so only the witness can refuse
/// it. Both must fail while the same command with the cluster's certificate succeeds and the
/// cluster state is unchanged.
#[test]
fn client_with_certificate_from_another_ca_is_refused() {
    let c = Cluster::three_with_policy(3);
    let before = c.status();
    let servers = [1, 2, 3].map(|id| c.addr(id)).join(",");

    tracing::info!("--- a second, unrelated development CA");
    let other = c.path().join("other-ca");
    run(
        c.path(),
        &[
            "certs",
            "init",
            "--out",
            other.to_str().unwrap(),
            "--nodes",
            "1",
        ],
    )
    .ok("certs init of the other CA");

    tracing::info!("--- client from the other CA");
    let out = run(
        c.path(),
        &[
            "status",
            "--json",
            "--server",
            &servers,
            "--tls-dir",
            other.to_str().unwrap(),
        ],
    );
    assert_ne!(out.code, 0, "status with a foreign CA must fail: {out:#?}");
    assert!(out.stdout.is_empty(), "no status printed: {out:#?}");

    tracing::info!("--- foreign client certificate, cluster CA trusted: the witness refuses");
    let ca = c.certs.join("ca.pem");
    let out = run(
        c.path(),
        &[
            "status",
            "--json",
            "--server",
            &servers,
            "--tls-dir",
            other.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert_ne!(
        out.code, 0,
        "a witness must refuse a client certificate from another CA: {out:#?}"
    );
    assert!(out.stdout.is_empty(), "no status printed: {out:#?}");

    tracing::info!("--- the cluster is unaffected");
    let after = c.status();
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    assert_eq!(after["policy_version"], 1);
    assert_eq!(after["groups"], before["groups"]);
    assert_eq!(after["witnesses"].as_array().unwrap().len(), 3);
}
