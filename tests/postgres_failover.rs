//! Region failover of a real PostgreSQL primary/standby pair, end to end: a primary in
//! region-a and a streaming standby in region-b (started by the test on loopback ports),
//! real BIND publishing the group's record, and three real `arbiter serve` processes whose
//! policy wires the built-in `postgres` hooks into every step. Each region's health is an HTTP
//! endpoint served by the test, which can turn it off while the database keeps running.
//!
//! Everything is stopped by PID when the test ends (drop guards), even on panic. Waits are
//! bounded polls on observable state (CLI answers, SQL results), never bare sleeps.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbiter::config::{
    Hook, PostgresAction, PostgresHook, PostgresRegion, RecordKind, SecretRef, StopCommand,
};
use arbiter::hooks::{self, parse_lag, HookContext};
use common::authoritative::{self, Authoritative, Flavour, KEY_NAME, NAME, ZONE};
use common::postgres::{self as pg, PgEnv, Postgres};
use common::processes::{eventually, group, Cluster};
use serde_json::Value;

/// Witnesses of every test's cluster.
const WITNESSES: usize = 3;
/// The group's record in each region.
const REGION_A_RECORDS: [&str; 2] = ["192.0.2.10", "192.0.2.11"];
const REGION_B_RECORDS: [&str; 1] = ["198.51.100.20"];
/// The built-in hooks the policy defines, by step key and action.
const HOOKS: [(&str, &str); 4] = [
    ("pg-fence", "fence"),
    ("pg-rpo", "rpo-check"),
    ("pg-promote", "promote"),
    ("pg-validate", "validate"),
];

/// The group's RPO in the policy: how much replication lag a promotion may lose, and how
/// long the rpo-check step waits for the lag to come within it before halting.
#[derive(Debug, Clone, Copy)]
struct Rpo {
    lag_ms: u64,
    wait_ms: u64,
}

/// Generous enough that a healthy standby is always within it.
const RPO_RELAXED: Rpo = Rpo {
    lag_ms: 60_000,
    wait_ms: 30_000,
};

/// An HTTP health endpoint answering `200 ok` to every request until it is stopped; then
/// its port refuses connections (the region "goes dark" for the witnesses' probes).
struct HealthEndpoint {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthEndpoint {
    fn start() -> HealthEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = answer_ok(&mut conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener is dropped here: connections are refused from now on.
        });
        HealthEndpoint {
            url,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head (bounded) and answers `200 ok`.
fn answer_ok(conn: &mut TcpStream) -> std::io::Result<()> {
    /// A probe's request head is a few hundred bytes.
    const HEAD_BYTES_MAX: usize = 16 * 1024;
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_BYTES_MAX {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
}

/// Everything one test runs. Fields drop in this order: witnesses first (no hook runs after
/// them), then BIND, the health endpoints, the servers, and last the directory they live in.
struct Setup {
    cluster: Cluster,
    bind: Authoritative,
    health_a: HealthEndpoint,
    health_b: HealthEndpoint,
    a: Postgres,
    b: Postgres,
    env: PgEnv,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    /// PostgreSQL primary (region-a) with table `orders` and its standby (region-b), BIND,
    /// health endpoints, three witnesses initialised with the policy for `mode`.
    fn start(mode: &str) -> Setup {
        Setup::start_with(mode, RPO_RELAXED)
    }

    /// [`Setup::start`] with the group's RPO set to `rpo`. Returns once every witness has
    /// sighted region-a's primary: the rpo-check measures against those sightings, and a
    /// primary that goes dark before any witness has seen it leaves the gate nothing to prove
    /// the lag with (it then rightly halts).
    fn start_with(mode: &str, rpo: Rpo) -> Setup {
        common::init_tracing();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::info!("--- PostgreSQL primary in region-a, streaming standby in region-b");
        let env = PgEnv::new();
        let a = env.primary("region-a");
        a.sql("CREATE TABLE orders (id int PRIMARY KEY, phase text NOT NULL)");
        let b = env.standby_of(&a, "region-b");
        assert!(b.in_recovery(), "region-b starts as a standby");

        tracing::info!("--- BIND, health endpoints, three witnesses");
        let bind = rt.block_on(Authoritative::start(Flavour::Bind));
        let (health_a, health_b) = (HealthEndpoint::start(), HealthEndpoint::start());
        let mut cluster = Cluster::prepare(WITNESSES);
        for id in 1..=WITNESSES as u64 {
            cluster.start(id);
        }
        cluster.cli(&["init"]).ok("init");
        cluster.leader();
        let tsig = cluster.write("bind.key", &bind.secret);
        let s = Setup {
            cluster,
            bind,
            health_a,
            health_b,
            a,
            b,
            env,
            rt,
        };
        let policy = s.cluster.write("policy.toml", &s.policy(mode, rpo, &tsig));
        let out = s
            .cluster
            .cli(&["policy", "apply", &policy])
            .ok("policy apply");
        assert!(out.contains("policy version 1 committed"), "{out}");
        assert_eq!(
            group(&s.cluster.status(), "checkout"),
            ("region-a".into(), 1)
        );
        // Each witness keeps one session on the active primary for its sightings; the
        // session's last query shows that it has asked for the position at least once.
        eventually("every witness has sighted region-a's WAL position", || {
            let polled: usize =
                s.a.sql(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'arbiter' AND query LIKE '%pg_current_wal_lsn%'",
                )
                .parse()
                .unwrap();
            (polled >= WITNESSES).then_some(())
        });
        s
    }

    /// The policy: both regions probed over HTTP, the group's record on BIND, and the four
    /// built-in PostgreSQL hooks with the same connection (and password file) per region.
    fn policy(&self, mode: &str, rpo: Rpo, tsig: &str) -> String {
        let password = self.env.password_file.display();
        let mut hooks = String::new();
        for (name, action) in HOOKS {
            hooks += &format!(
                "[hooks.{name}]\nkind = \"postgres\"\naction = \"{action}\"\ntimeout_ms = 30000\n\
                 regions.region-a = {{ dsn = \"{}\", password = {{ file = \"{password}\" }} }}\n\
                 regions.region-b = {{ dsn = \"{}\", password = {{ file = \"{password}\" }} }}\n\n",
                self.a.dsn(),
                self.b.dsn(),
            );
        }
        let probe = |url: &str| {
            format!(
                "probes = [{{ kind = \"http\", url = \"{url}\", expect_status = 200, interval_ms = 200, timeout_ms = 150, jitter_ms = 50 }}]"
            )
        };
        let quoted = |values: &[&str]| {
            values
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            r#"
[[regions]]
name = "region-a"
{probe_a}
[[regions]]
name = "region-b"
{probe_b}

[dns]
zones = [{{ name = "{ZONE}", nameservers = ["ns1.{ZONE}"] }}]
servers = [{{ address = "{bind}", zone = "{ZONE}", tsig_key = "{KEY_NAME}", algorithm = "hmac-sha256", secret = {{ file = "{tsig}" }}, timeout_ms = 2000 }}]

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "{mode}"
lease_ms = 2000
lease_margin_ms = 200
down_after_ms = 1000
rpo_lag_bytes = 16777216
rpo_lag_ms = {rpo_lag_ms}
rpo_wait_ms = {rpo_wait_ms}
step_attempts = 3

[groups.hooks]
fence = ["pg-fence"]
rpo_check = "pg-rpo"
promote = ["pg-promote"]
validate = ["pg-validate"]

[groups.dns]
zone = "{ZONE}"
name = "{NAME}"
ttl = 30
records = {{ region-a = {{ type = "A", values = [{a}] }}, region-b = {{ type = "A", values = [{b}] }} }}

{hooks}"#,
            probe_a = probe(&self.health_a.url),
            probe_b = probe(&self.health_b.url),
            bind = self.bind.addr,
            a = quoted(&REGION_A_RECORDS),
            b = quoted(&REGION_B_RECORDS),
            rpo_lag_ms = rpo.lag_ms,
            rpo_wait_ms = rpo.wait_ms,
        )
    }

    /// The A records BIND answers for the group's name.
    fn bind_answer(&self) -> Vec<String> {
        let server = self.bind.server(ZONE);
        let mut a = self
            .rt
            .block_on(arbiter::dns::query_rrset(&server, NAME, RecordKind::A))
            .expect("BIND answers");
        a.sort();
        a
    }

    /// The group's operations, newest first, from `arbiter operations --json`.
    fn operations(&self) -> Vec<Value> {
        let out = self
            .cluster
            .cli(&["operations", "--group", "checkout", "--json"])
            .ok("operations");
        let mut ops: Vec<Value> = serde_json::from_str::<Value>(&out)
            .expect("operations --json is JSON")
            .as_array()
            .expect("an array")
            .clone();
        ops.sort_by_key(|o| std::cmp::Reverse(o["id"].as_u64()));
        ops
    }

    /// The detail of `step` in operation `op`.
    fn step_detail(op: &Value, step: &str) -> String {
        op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap_or_else(|| panic!("step {step} in {op}"))["detail"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Inserts rows `ids` of `phase` on `server`.
fn insert(server: &Postgres, phase: &str, ids: std::ops::RangeInclusive<u32>) {
    server.sql(&format!(
        "INSERT INTO orders SELECT g, '{phase}' FROM generate_series({}, {}) g",
        ids.start(),
        ids.end()
    ));
}

fn count(server: &Postgres, phase: &str) -> u64 {
    server
        .sql(&format!(
            "SELECT count(*) FROM orders WHERE phase = '{phase}'"
        ))
        .parse()
        .unwrap()
}

/// Waits until `standby` has replayed `n` rows of `phase`.
fn wait_replicated(standby: &Postgres, phase: &str, n: u64) {
    eventually(
        &format!("{} has replayed {n} rows of {phase}", standby.name),
        || (count(standby, phase) == n).then_some(()),
    );
}

/// Asserts that `server` refuses a write as a read-only transaction (the SQL fence).
fn assert_refuses_writes(server: &Postgres) {
    let refused = server
        .psql("INSERT INTO orders VALUES (1000000, 'after-fence')")
        .expect_err("the fenced old primary must refuse writes");
    assert!(
        refused.contains("read-only transaction"),
        "{} refused the write for another reason: {refused}",
        server.name
    );
}

/// `lag_ms` and `lag_bytes` as the rpo-check step recorded them ("lag N ms, M bytes ...").
fn recorded_lag(detail: &str) -> (u64, u64) {
    let rest = detail
        .strip_prefix("lag ")
        .unwrap_or_else(|| panic!("rpo-check detail: {detail}"));
    let mut words = rest.split([' ', ',']).filter(|w| !w.is_empty());
    let ms = words.next().and_then(|w| w.parse().ok());
    assert_eq!(words.next(), Some("ms"), "{detail}");
    let bytes = words.next().and_then(|w| w.parse().ok());
    assert_eq!(words.next(), Some("bytes"), "{detail}");
    (
        ms.unwrap_or_else(|| panic!("measured ms in {detail}")),
        bytes.unwrap_or_else(|| panic!("measured bytes in {detail}")),
    )
}

/// The bytes the rpo-check reported still to replay ("(N bytes to replay at promotion)").
fn replay_backlog(detail: &str) -> u64 {
    let (before, _) = detail
        .split_once(" bytes to replay at promotion")
        .unwrap_or_else(|| panic!("replay backlog in {detail}"));
    before
        .rsplit('(')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("replay backlog in {detail}"))
}

/// Goal: when region-a's health endpoint goes dark while its PostgreSQL keeps running, the
/// witnesses fail the group over by themselves, and the database side is really moved: the
/// standby is primary and writable, the old primary refuses writes, BIND answers region-b,
/// the measured replication lag is in the operation and the audit log (none is lost: the
/// standby received every row; the rows it has not replayed are measured as replay backlog,
/// which promotion replays), and the rows written before the failure are on the new primary.
/// Method: `mode = "auto"`; 100 rows written on region-a and seen replayed on region-b, then
/// replay is paused on region-b and 20 more rows are written and received but not replayed,
/// so the lag at failover is real; the health endpoint is stopped; the operation's outcome is read through the CLI and the
/// databases through `psql`.
#[test]
fn health_loss_fails_over_to_the_standby_with_fencing_and_measured_lag() {
    if !(pg::available() && authoritative::available(&[Flavour::Bind])) {
        return;
    }
    let mut s = Setup::start("auto");
    insert(&s.a, "before", 1..=100);
    wait_replicated(&s.b, "before", 100);
    assert_eq!(s.bind_answer(), REGION_A_RECORDS, "BIND starts on region-a");

    tracing::info!("--- the standby receives but does not replay 20 more rows: a real lag");
    s.b.sql("SELECT pg_wal_replay_pause()");
    insert(&s.a, "pending", 101..=120);
    let written = s.a.sql("SELECT pg_current_wal_lsn()");
    eventually("region-b has received the pending rows", || {
        let behind = s.b.sql(&format!(
            "SELECT pg_wal_lsn_diff('{written}', pg_last_wal_receive_lsn()) > 0"
        ));
        (behind == "f").then_some(())
    });
    assert_eq!(count(&s.b, "pending"), 0, "received, not replayed");

    tracing::info!("--- region-a's health endpoint goes dark; its PostgreSQL keeps running");
    s.health_a.stop();
    let op = eventually("an automatic failover of checkout is done", || {
        let ops = s.operations();
        let op = ops.first()?.clone();
        (op["state"] == "done").then_some(op)
    });
    assert_eq!(op["from"], "region-a", "{op}");
    assert_eq!(op["to"], "region-b", "{op}");
    assert_eq!(op["to_epoch"], 2, "{op}");
    assert_eq!(
        group(&s.cluster.status(), "checkout"),
        ("region-b".into(), 2)
    );

    tracing::info!("--- the standby is primary and writable, with the replicated rows");
    assert!(!s.b.in_recovery(), "region-b was promoted");
    assert_eq!(
        count(&s.b, "before"),
        100,
        "rows replicated before the failure"
    );
    assert_eq!(
        count(&s.b, "pending"),
        20,
        "rows received before the failure are replayed by the promotion"
    );
    insert(&s.b, "after", 201..=210);
    assert_eq!(count(&s.b, "after"), 10);
    let validated = s
        .b
        .sql("SELECT region || ' ' || epoch FROM arbiter_validate WHERE group_name = 'checkout'");
    assert_eq!(validated, "region-b 2", "the validate hook's write");

    tracing::info!("--- the old primary still runs and refuses writes");
    assert!(!s.a.in_recovery(), "region-a was fenced, not demoted");
    assert_refuses_writes(&s.a);

    tracing::info!("--- BIND answers region-b; the steps recorded what the hooks saw");
    assert_eq!(s.bind_answer(), REGION_B_RECORDS);
    let fence = Setup::step_detail(&op, "fence");
    assert!(
        fence.contains("lease of region-a")
            && fence.contains("did not confirm a hard fence")
            && fence.contains("region-a is read-only"),
        "{fence}"
    );
    let rpo = Setup::step_detail(&op, "rpo-check");
    let (lag_ms, lag_bytes) = recorded_lag(&rpo);
    assert!(rpo.contains("within RPO 60000 ms, 16777216 bytes"), "{rpo}");
    let pending = replay_backlog(&rpo);
    tracing::info!(
        lag_ms,
        lag_bytes,
        pending,
        "measured replication lag at failover"
    );
    // A fenced primary still writes a little WAL on its own (the background writer's
    // running-transactions record), which may be read on it just before it reaches the
    // standby: at most a few hundred bytes, never the rows.
    const BACKGROUND_WAL_BYTES_MAX: u64 = 1024;
    assert!(
        lag_bytes <= BACKGROUND_WAL_BYTES_MAX,
        "the standby received everything the old primary wrote: {rpo}"
    );
    assert!(
        rpo.contains("against the old primary's own answer"),
        "{rpo}"
    );
    assert!(
        pending > 0,
        "the paused standby's replay backlog was measured, not assumed: {rpo}"
    );
    let promote = Setup::step_detail(&op, "promote");
    assert!(promote.contains("region-b promoted"), "{promote}");
    let validate = Setup::step_detail(&op, "validate");
    assert!(
        validate.contains("accepted a write (epoch 2)"),
        "{validate}"
    );
    let status = s.cluster.status();
    let audit = status["audit"].as_array().unwrap();
    assert!(
        audit.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("rpo-check completed: {rpo}")))),
        "the audit log records the measured lag: {audit:#?}"
    );
}

/// Goal: when region-a goes dark with its database, the fence hook cannot confirm anything
/// and the failover waits out region-a's lease before activating region-b: a failing fence
/// never shortens the wait (S1). The streaming standby passes the RPO gate on region-a's last
/// known position (S8) and is promoted with the rows it had.
/// Method: `mode = "auto"`; region-a's PostgreSQL is stopped and its health endpoint turned
/// off; the fence step's detail and the commit times of the revoke and fence steps are read
/// from the operation.
#[test]
fn unreachable_old_primary_is_fenced_by_lease_expiry() {
    if !(pg::available() && authoritative::available(&[Flavour::Bind])) {
        return;
    }
    let mut s = Setup::start("auto");
    insert(&s.a, "before", 1..=100);
    wait_replicated(&s.b, "before", 100);

    tracing::info!("--- region-a goes dark, database included");
    s.a.stop();
    s.health_a.stop();
    let op = eventually("an automatic failover of checkout is done", || {
        let ops = s.operations();
        let op = ops.first()?.clone();
        (op["state"] == "done").then_some(op)
    });
    assert_eq!(op["to"], "region-b", "{op}");
    let fence = Setup::step_detail(&op, "fence");
    assert!(
        fence.contains("lease of region-a (epoch 1) expired")
            && fence.contains("fence hooks did not confirm")
            && fence.contains("cannot connect to region-a"),
        "{fence}"
    );
    let finished = |step: &str| {
        op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["step"] == step)
            .and_then(|st| st["finished_at_ms"].as_u64())
            .unwrap()
    };
    // lease_ms x (1 + 5 % drift) + lease_margin_ms of the policy: a lower bound on the
    // wait, which starts after the revoke was applied.
    let lease_wait_ms = 2000 * 105 / 100 + 200;
    assert!(
        finished("fence") - finished("revoke") >= lease_wait_ms,
        "the fence step waited out the lease: {op}"
    );
    let rpo = Setup::step_detail(&op, "rpo-check");
    let (lag_ms, lag_bytes) = recorded_lag(&rpo);
    assert_eq!(
        (lag_ms, lag_bytes),
        (0, 0),
        "a streaming standby holds the primary's last known position: {rpo}"
    );
    assert!(rpo.contains("against its last known position"), "{rpo}");
    assert!(!s.b.in_recovery(), "region-b was promoted");
    assert_eq!(count(&s.b, "before"), 100);
    insert(&s.b, "after", 101..=110);
    assert_eq!(s.bind_answer(), REGION_B_RECORDS);
}

/// Goal: S8. When the standby's WAL receiver died well before region-a went dark, the
/// standby's own view says it lags nothing (it has replayed everything it received), yet
/// promoting it loses every write since. The automatic failover must not pass the RPO gate
/// on that view: it halts at rpo-check, the halt names the numbers (the primary's last
/// known position, the standby's received and replayed positions, its WAL receiver), and
/// only an operator's `arbiter approve` lets it go on, with the accepted loss on record.
/// Method: `mode = "auto"`, `rpo_lag_ms = 2000`; 100 rows replicated; the standby's WAL
/// receiver is stopped (`primary_conninfo = ''` and a reload) until `pg_stat_wal_receiver`
/// is empty; region-a keeps writing for twice the RPO; then region-a goes dark: its health
/// endpoint stops and its PostgreSQL is stopped by PID with an immediate shutdown. The
/// operation is read and approved through the CLI, the servers through `psql`.
#[test]
fn dead_wal_receiver_halts_the_automatic_failover_at_the_rpo_gate() {
    if !(pg::available() && authoritative::available(&[Flavour::Bind])) {
        return;
    }
    let rpo = Rpo {
        lag_ms: 2_000,
        wait_ms: 3_000,
    };
    let mut s = Setup::start_with("auto", rpo);
    insert(&s.a, "before", 1..=100);
    wait_replicated(&s.b, "before", 100);

    tracing::info!("--- the standby's WAL receiver stops; the standby stays in recovery");
    s.b.sql("ALTER SYSTEM SET primary_conninfo = ''");
    s.b.sql("SELECT pg_reload_conf()");
    eventually("region-b has no WAL receiver", || {
        (s.b.sql("SELECT count(*) FROM pg_stat_wal_receiver") == "0").then_some(())
    });
    let received = s.b.sql("SELECT pg_last_wal_receive_lsn()");
    assert!(s.b.in_recovery());

    tracing::info!("--- region-a keeps writing for twice the RPO; none of it reaches region-b");
    let writing = std::time::Instant::now();
    let mut next = 101;
    while writing.elapsed() < Duration::from_millis(2 * rpo.lag_ms) {
        insert(&s.a, "lost", next..=next + 9);
        next += 10;
    }
    let written = s.a.sql("SELECT pg_current_wal_lsn()");
    let lost = count(&s.a, "lost");
    assert_eq!(count(&s.b, "lost"), 0, "region-b received none of it");
    assert_eq!(
        s.b.sql("SELECT pg_last_wal_receive_lsn()"),
        received,
        "region-b received nothing more"
    );
    tracing::info!(lost, %received, %written, "rows written that region-b never received");

    tracing::info!("--- region-a goes dark: health endpoint and PostgreSQL (immediate shutdown)");
    s.health_a.stop();
    s.a.stop_immediately();
    let op = eventually(
        "the automatic failover has passed or halted at the rpo gate",
        || {
            let op = s.operations().first()?.clone();
            let past_gate = op["steps"]
                .as_array()?
                .iter()
                .any(|st| st["step"] == "rpo-check");
            (op["state"] == "halted" || past_gate).then_some(op)
        },
    );
    assert_eq!(
        (op["state"].as_str(), op["step"].as_str()),
        (Some("halted"), Some("rpo-check")),
        "a standby that received nothing for {} ms must not pass the gate: {op:#}",
        2 * rpo.lag_ms
    );
    assert_eq!(op["from"], "region-a", "{op}");
    assert_eq!(op["to"], "region-b", "{op}");
    let id = op["id"].as_u64().unwrap();
    let error = op["error"].as_str().unwrap().to_string();
    tracing::info!(%error, "halted at rpo-check");
    let (lag_ms, lag_bytes) = recorded_lag(&error);
    assert!(
        lag_ms > rpo.lag_ms,
        "the lag is measured against the primary's last known position: {error}"
    );
    let unreceived = s.b.sql(&format!(
        "SELECT pg_wal_lsn_diff('{written}', '{received}')"
    ));
    assert!(
        lag_bytes > 0 && lag_bytes <= unreceived.parse().unwrap(),
        "at most what region-a wrote after region-b's last receipt ({unreceived} bytes): {error}"
    );
    for needle in [
        "exceeds RPO 2000 ms".to_string(),
        format!("received {received}"),
        "last known position".to_string(),
        "no WAL receiver".to_string(),
        format!("`arbiter approve {id}` accepts the data loss"),
    ] {
        assert!(error.contains(&needle), "{needle:?} in the halt: {error}");
    }
    assert!(
        s.b.in_recovery(),
        "nothing is promoted while the gate holds"
    );
    assert_eq!(
        group(&s.cluster.status(), "checkout"),
        ("region-a".into(), 1)
    );

    tracing::info!("--- the operator accepts the loss: arbiter approve");
    let out = s.cluster.cli(&["approve", &id.to_string()]).ok("approve");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let op = s.operations().into_iter().find(|o| o["id"] == id).unwrap();
    assert_eq!(op["state"], "done", "{op}");
    let step = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "rpo-check")
        .unwrap()
        .clone();
    assert_eq!(step["outcome"], "skipped", "{step}");
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains("replication lag above the RPO accepted by admin")
            && detail.contains(&error),
        "the step records who accepted which loss: {detail}"
    );
    let status = s.cluster.status();
    let audit = status["audit"].as_array().unwrap();
    assert!(
        audit.iter().any(|e| e["detail"].as_str().is_some_and(|d| d
            .contains(&format!("operation {id}: rpo-check skipped: replication lag above the RPO accepted by admin"))
            && d.contains(&format!("received {received}")))),
        "the audit log records the accepted loss with its numbers: {audit:#?}"
    );

    tracing::info!("--- region-b is primary with what it had; the unreceived rows are lost");
    assert!(!s.b.in_recovery(), "region-b was promoted");
    assert_eq!(count(&s.b, "before"), 100);
    assert_eq!(count(&s.b, "lost"), 0, "the accepted loss is real");
    insert(&s.b, "after", 100_001..=100_010);
    assert_eq!(s.bind_answer(), REGION_B_RECORDS);
}

/// Goal: an operator moves the group to region-b and, once the old primary is rebuilt as a
/// standby of the new one, back to region-a; both directions complete, each raises the
/// epoch, and the rows written in every phase survive.
/// Method: `mode = "manual"`; `arbiter failover` then `arbiter failback` through the CLI;
/// region-a is rebuilt with a fresh `pg_basebackup -R` from region-b in between.
#[test]
fn operator_failover_and_failback_after_rebuilding_the_old_primary() {
    if !(pg::available() && authoritative::available(&[Flavour::Bind])) {
        return;
    }
    let mut s = Setup::start("manual");
    insert(&s.a, "one", 1..=50);
    wait_replicated(&s.b, "one", 50);

    tracing::info!("--- arbiter failover to region-b");
    let out = s
        .cluster
        .cli(&[
            "failover",
            "checkout",
            "--to",
            "region-b",
            "--reason",
            "planned move",
        ])
        .ok("failover");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    assert!(!s.b.in_recovery(), "region-b was promoted");
    assert_refuses_writes(&s.a);
    assert_eq!(s.bind_answer(), REGION_B_RECORDS);
    insert(&s.b, "two", 51..=100);

    tracing::info!("--- rebuild region-a as a standby of region-b");
    s.env.rebuild_as_standby(&mut s.a, &s.b);
    assert!(s.a.in_recovery(), "region-a is a standby again");
    wait_replicated(&s.a, "two", 50);

    tracing::info!("--- arbiter failback to region-a");
    let out = s
        .cluster
        .cli(&["failback", "checkout", "--reason", "back home"])
        .ok("failback");
    assert!(out.contains("done: region-a active at epoch 3"), "{out}");
    assert_eq!(
        group(&s.cluster.status(), "checkout"),
        ("region-a".into(), 3)
    );
    assert!(!s.a.in_recovery(), "region-a was promoted");
    assert_refuses_writes(&s.b);
    assert_eq!(s.bind_answer(), REGION_A_RECORDS);
    insert(&s.a, "three", 101..=150);
    for phase in ["one", "two", "three"] {
        assert_eq!(count(&s.a, phase), 50, "rows of phase {phase} on region-a");
    }
    let epochs: Vec<u64> = s
        .operations()
        .iter()
        .rev()
        .map(|o| o["to_epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [2, 3], "each direction raised the epoch");
    let validated = s
        .a
        .sql("SELECT string_agg(region || '@' || epoch, ' ' ORDER BY epoch) FROM arbiter_validate");
    assert_eq!(validated, "region-b@2 region-a@3");
}

/// A `postgres` hook with `action`, whose regions connect to `a` and `b` with the env's
/// password file (or `password_file` instead, when given).
fn pg_hook(
    action: PostgresAction,
    env: &PgEnv,
    a: &str,
    b: &str,
    password_file: Option<&std::path::Path>,
) -> PostgresHook {
    let password = SecretRef {
        file: Some(password_file.unwrap_or(&env.password_file).to_path_buf()),
        env: None,
    };
    let region = |dsn: &str| PostgresRegion {
        dsn: dsn.to_string(),
        password: Some(password.clone()),
        stop: None,
    };
    PostgresHook {
        action,
        regions: [
            ("region-a".to_string(), region(a)),
            ("region-b".to_string(), region(b)),
        ]
        .into_iter()
        .collect(),
        timeout_ms: 20_000,
    }
}

/// Goal: the postgres hooks speak TLS with `sslmode=verify-full`: a server that accepts TLS
/// sessions only is reached when its certificate chains to `sslrootcert` and names the
/// host, and refused (no session, the reason named) with another CA or without TLS.
/// Method: a primary with a certificate from a development CA and a pg_hba that rejects
/// plain TCP; the validate action (a write) run directly three ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hooks_verify_the_server_with_sslmode_verify_full() {
    if !pg::available() {
        return;
    }
    common::init_tracing();
    let env = PgEnv::new();
    let pg = env.primary("tls-primary");
    let certs_dir = env.dir.path().join("certs");
    let certs =
        arbiter::certs::init_dev_certs(&certs_dir, &arbiter::certs::default_sites(1), &[], false)
            .unwrap();
    env.require_tls(&pg, &certs.nodes[0].cert, &certs.nodes[0].key);
    let other_dir = env.dir.path().join("other-ca");
    let other =
        arbiter::certs::init_dev_certs(&other_dir, &arbiter::certs::default_sites(1), &[], false)
            .unwrap();

    let run = |dsn: String| {
        let hook = pg_hook(PostgresAction::Validate, &env, &dsn, &dsn, None);
        async move {
            hooks::run(
                "pg-validate",
                &Hook::Postgres(hook),
                &hook_ctx("validate", 2),
            )
            .await
        }
    };
    tracing::info!("--- verify-full with the right CA: the write is done over TLS");
    let good = run(format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.dsn(),
        certs.ca_cert.display()
    ))
    .await;
    assert!(good.success, "{good:?}");
    assert_eq!(
        pg.sql(&format!("SELECT count(*) FROM {}", hooks::VALIDATE_TABLE)),
        "1"
    );

    tracing::info!("--- another CA: refused before any session");
    let wrong = run(format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.dsn(),
        other.ca_cert.display()
    ))
    .await;
    assert!(!wrong.success, "{wrong:?}");
    assert!(
        wrong.summary.to_lowercase().contains("certificate"),
        "{}",
        wrong.summary
    );

    tracing::info!("--- plain TCP: the server refuses it");
    let plain = run(pg.dsn()).await;
    assert!(!plain.success, "{plain:?}");
    assert!(plain.summary.contains("pg_hba.conf"), "{}", plain.summary);
    assert_eq!(
        pg.sql(&format!("SELECT count(*) FROM {}", hooks::VALIDATE_TABLE)),
        "1",
        "no write without verified TLS"
    );
}

/// Goal: the self-fence the docs recommend (`pg_ctl stop -m immediate`, or a bounded fast
/// stop that falls back to it) returns at once when the region is cut off from its
/// standby, whereas `pg_ctl stop -m fast` hangs: a fast shutdown waits until the standby
/// has flushed the shutdown checkpoint, so an unreachable standby keeps the on-lose command
/// from returning for pg_ctl's whole timeout (new sessions are refused at once all the
/// same). Method: the standby's WAL receiver is frozen with SIGSTOP (the TCP link stays up
/// and nothing is acknowledged, as across a cut); the primary writes, then a fast stop with
/// a short timeout is timed, then an immediate stop of the same server.
#[test]
fn immediate_self_fence_returns_while_the_standby_is_unreachable() {
    if !pg::available() {
        return;
    }
    common::init_tracing();
    let env = PgEnv::new();
    let primary = env.primary("cut-primary");
    let standby = env.standby_of(&primary, "cut-standby");
    let receiver: i32 = standby
        .sql("SELECT pid FROM pg_stat_wal_receiver")
        .parse()
        .expect("a streaming standby has a WAL receiver");
    // SAFETY: the receiver is a process of the test's own standby server.
    assert_eq!(unsafe { libc::kill(receiver, libc::SIGSTOP) }, 0);
    primary.sql("CREATE TABLE cut (x int); INSERT INTO cut SELECT generate_series(1, 1000)");

    tracing::info!("--- a fast stop waits for the unreachable standby");
    const FAST_TIMEOUT_S: u64 = 6;
    let (fast_ok, fast_took, fast_said) =
        env.pg_ctl_stop(&primary, &["-m", "fast", "-t", &FAST_TIMEOUT_S.to_string()]);
    assert!(
        !fast_ok && fast_took >= Duration::from_secs(FAST_TIMEOUT_S),
        "the fast stop returned after {fast_took:?} ({fast_ok}): {fast_said}"
    );
    assert!(
        primary.psql("SELECT 1").is_err(),
        "new sessions are refused while it waits"
    );

    tracing::info!("--- the immediate stop (the fallback) ends it at once");
    let (ok, took, said) = env.pg_ctl_stop(&primary, &["-m", "immediate", "-t", "60"]);
    assert!(ok, "{said}");
    assert!(
        took < fast_took,
        "the immediate stop took {took:?}, the fast one {fast_took:?}"
    );
    assert!(
        !primary.data.join("postmaster.pid").exists(),
        "the postmaster is gone"
    );
    // SAFETY: as above.
    unsafe { libc::kill(receiver, libc::SIGCONT) };
    tracing::info!(
        ?fast_took,
        ?took,
        "fast stop with an unreachable standby vs immediate stop"
    );
}

fn hook_ctx(step: &str, epoch: u64) -> HookContext {
    HookContext {
        group: "checkout".into(),
        from: "region-a".into(),
        to: "region-b".into(),
        epoch,
        operation: 9,
        step: step.into(),
        witness: 1,
        term: 1,
        rpo: None,
    }
}

/// Goal: each built-in PostgreSQL action reports success only for what it verified, fails
/// clearly when it cannot act, is idempotent where a retried step needs it, and the SQL fence
/// has exactly the limits docs/postgres.md states.
/// Method: a primary/standby pair and no witnesses; the hooks are run directly with
/// `hooks::run`, and the servers are checked through `psql` and a client session held open
/// by the test.
#[test]
fn postgres_hooks_report_only_what_they_verified() {
    if !pg::available() {
        return;
    }
    common::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let env = PgEnv::new();
    let mut a = env.primary("region-a");
    a.sql("CREATE TABLE orders (id int PRIMARY KEY, phase text NOT NULL)");
    let b = env.standby_of(&a, "region-b");
    let (dsn_a, dsn_b) = (a.dsn(), b.dsn());
    let run = |action: PostgresAction, step: &str, epoch: u64| {
        let hook = Hook::Postgres(pg_hook(action, &env, &dsn_a, &dsn_b, None));
        rt.block_on(hooks::run("pg", &hook, &hook_ctx(step, epoch)))
    };

    tracing::info!("--- a wrong password fails the hook and is never shown");
    let wrong = env.dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password-4711\n").unwrap();
    let hook = Hook::Postgres(pg_hook(
        PostgresAction::RpoCheck,
        &env,
        &dsn_a,
        &dsn_b,
        Some(&wrong),
    ));
    let out = rt.block_on(hooks::run("pg", &hook, &hook_ctx("rpo-check", 2)));
    assert!(!out.success, "{out:?}");
    assert!(
        out.summary.contains("cannot connect to region-b"),
        "{out:?}"
    );
    assert!(
        !format!("{out:?}").contains("4711") && !format!("{out:?}").contains(&env.password),
        "no password in the outcome: {out:?}"
    );

    tracing::info!("--- rpo-check on the standby reports the lag; validate refuses a standby");
    let out = run(PostgresAction::RpoCheck, "rpo-check", 2);
    assert!(out.success, "{out:?}");
    let lag = parse_lag(&out.output).expect("a lag report");
    assert_eq!(
        lag.bytes,
        Some(0),
        "an idle pair has no pending WAL: {out:?}"
    );
    assert!(out.output.contains(r#""basis":"old primary""#), "{out:?}");
    let out = run(PostgresAction::Validate, "validate", 2);
    assert!(
        !out.success && out.summary.contains("still a standby"),
        "{out:?}"
    );

    tracing::info!("--- the SQL fence ends open sessions and verifies that writes are refused");
    let (victim, connection) = rt
        .block_on(
            tokio_postgres::Config::from_str(&dsn_a)
                .unwrap()
                .password(&env.password)
                .connect(tokio_postgres::NoTls),
        )
        .expect("a client session on region-a");
    rt.spawn(connection);
    rt.block_on(victim.simple_query("SELECT 1")).unwrap();
    let out = run(PostgresAction::Fence, "fence", 2);
    assert!(out.success, "{out:?}");
    assert!(out.summary.contains("region-a is read-only"), "{out:?}");
    assert!(
        rt.block_on(victim.simple_query("SELECT 1")).is_err(),
        "the open session was terminated"
    );
    assert_refuses_writes(&a);
    let again = run(PostgresAction::Fence, "fence", 2);
    assert!(again.success, "fencing again is harmless: {again:?}");
    tracing::info!("--- ... but it is not a hard fence: a session can override the default");
    a.sql("BEGIN READ WRITE; INSERT INTO orders VALUES (1, 'override'); COMMIT");

    tracing::info!("--- promote, twice; then rpo-check refuses a primary and validate writes");
    let out = run(PostgresAction::Promote, "promote", 2);
    assert!(
        out.success && out.summary.contains("region-b promoted"),
        "{out:?}"
    );
    assert!(!b.in_recovery());
    let out = run(PostgresAction::Promote, "promote", 2);
    assert!(
        out.success && out.summary.contains("already primary"),
        "{out:?}"
    );
    let out = run(PostgresAction::RpoCheck, "rpo-check", 2);
    assert!(
        !out.success && out.summary.contains("not a standby"),
        "{out:?}"
    );
    for _ in 0..2 {
        let out = run(PostgresAction::Validate, "validate", 2);
        assert!(out.success, "validate is idempotent per epoch: {out:?}");
    }
    assert_eq!(
        b.sql("SELECT count(*) FROM arbiter_validate WHERE epoch = 2"),
        "1"
    );

    tracing::info!("--- a fence with a stop command: verified by the server refusing sessions");
    let script = env.dir.path().join("stop-region-a.sh");
    let pg_ctl = env.bin.join("pg_ctl");
    let as_server_user = if unsafe { libc::geteuid() } == 0 {
        "runuser -u postgres -- "
    } else {
        ""
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {as_server_user}{} stop -D {} -m fast -w\n",
            pg_ctl.display(),
            a.data.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut hook = pg_hook(PostgresAction::Fence, &env, &dsn_a, &dsn_b, None);
    hook.regions.get_mut("region-a").unwrap().stop = Some(StopCommand {
        program: script,
        args: vec![],
    });
    let out = rt.block_on(hooks::run(
        "pg",
        &Hook::Postgres(hook.clone()),
        &hook_ctx("fence", 2),
    ));
    assert!(out.success, "{out:?}");
    assert!(
        out.summary.contains("stopped by its stop command"),
        "{out:?}"
    );
    assert!(a.psql("SELECT 1").is_err(), "region-a is down");

    tracing::info!("--- an unreachable old primary fails the fence (the lease wait then runs)");
    let out = run(PostgresAction::Fence, "fence", 2);
    assert!(!out.success, "{out:?}");
    assert!(
        out.summary.contains("cannot connect to region-a") && out.summary.contains("refused"),
        "the cause is told: {out:?}"
    );
    a.stop();
}
