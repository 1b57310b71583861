//! `arbiter demo`, the README's first command, run as a user runs it: the real binary with
//! standard input closed. One test plays the scenario to the end and checks every phase of
//! the timeline; the other keeps the cluster running, asks its DNS (with `dig` and with a
//! DNS client) and its status from outside the process, then stops it with SIGINT and checks
//! that the temporary directory is gone.
//!
//! Waits are bounded by a deadline on the demo's own output; no test asserts a duration.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous bound on the whole demo (setup and scenario take seconds) on a loaded machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(240);
/// Bound on the demo's exit after SIGINT.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// Lines of the timeline that must appear, one per phase.
const PHASES: [&str; 13] = [
    "region-a health endpoint stopped",
    "detected down by ",
    "decision committed: operation ",
    "revoked: ",
    "agent region-a released its lease",
    "fenced: ",
    "rpo-check: ",
    "promoted: ",
    "activated: epoch 2, region-b is active",
    "DNS answers region-b: ",
    "validated: ",
    "agent region-b holds the lease at epoch 2",
    "failover done in ",
];

/// Phases that are committed one after the other, so the timeline (in time order) shows
/// them in this order.
const IN_ORDER: [&str; 10] = [
    "region-a health endpoint stopped",
    "detected down by ",
    "decision committed: operation ",
    "revoked: ",
    "fenced: ",
    "rpo-check: ",
    "promoted: ",
    "activated: epoch 2",
    "validated: ",
    "failover done in ",
];

/// A running `arbiter demo` whose stdout lines arrive on a channel. Dropping it interrupts
/// the demo (so it cleans up), then kills it if it does not exit.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    stderr: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let stderr_dir = tempfile::tempdir().unwrap();
        let stderr = stderr_dir.path().join("stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("arbiter demo starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child,
            lines,
            output: Vec::new(),
            stderr,
            _stderr_dir: stderr_dir,
        }
    }

    /// Reads lines until one contains `needle` (returned), or panics at the deadline or when
    /// the output ends.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEMO_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("demo: {line}");
                    self.output.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} ({e:?}); stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for the exit (reading the rest of the output); panics after `deadline`.
    fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                println!("demo: {line}");
                self.output.push(line);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe; collect what is left.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    println!("demo: {line}");
                    self.output.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < until,
                "arbiter demo did not exit within {deadline:?}; stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) with the PID of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0, "SIGINT delivered");
    }

    /// The temporary directory the demo announced.
    fn files_dir(&self) -> PathBuf {
        let line = self
            .output
            .iter()
            .find_map(|l| l.strip_prefix("files: "))
            .expect("the demo names its directory");
        PathBuf::from(line.split(" (removed").next().unwrap())
    }

    fn text(&self) -> String {
        self.output.join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Goal: `arbiter demo` with standard input closed plays "region-a goes dark" to the end,
/// prints every phase of the failover in order, exits 0 and removes its files. Method: run
/// the binary, read its output until it exits.
#[test]
fn demo_runs_the_failover_to_the_end_and_cleans_up() {
    let mut demo = Demo::start(&[]);
    let status = demo.wait_exit(DEMO_DEADLINE);
    let text = demo.text();
    assert!(status.success(), "exit {status:?}; output:\n{text}");
    for phase in PHASES {
        assert!(text.contains(phase), "phase {phase:?} missing in:\n{text}");
    }
    let mut from = 0;
    for phase in IN_ORDER {
        let at = text[from..]
            .find(phase)
            .unwrap_or_else(|| panic!("phase {phase:?} out of order in:\n{text}"));
        from += at;
    }
    let detected = demo
        .output
        .iter()
        .find_map(|l| l.split("detected down by ").nth(1))
        .unwrap();
    let witnesses: u32 = detected.split(' ').next().unwrap().parse().unwrap();
    assert!(
        (2..=3).contains(&witnesses),
        "a majority of the 3 witnesses saw region-a down: {detected}"
    );
    assert!(text.contains("dig @127.0.0.1 -p "), "{text}");
    let dir = demo.files_dir();
    assert!(!dir.exists(), "{} is removed at exit", dir.display());
}

/// Goal: with `--keep-running` the cluster stays up after the scenario: a real DNS query
/// (dig, and a DNS client) to the demo's DNS answers region-b, `arbiter status` from
/// another process with the printed settings shows region-b active at epoch 2, and SIGINT
/// stops the demo with exit 0 and its temporary directory removed.
#[test]
fn keep_running_answers_region_b_until_interrupted() {
    let mut demo = Demo::start(&["--keep-running"]);
    let answer_line = demo.wait_for("DNS answers region-b: ");
    let expected = answer_line
        .split(" A ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the address region-b is published with")
        .to_string();
    let dig_line = demo.wait_for("dig @");
    let export_line = demo
        .output
        .iter()
        .find(|l| l.contains("export ARBITER_TLS_DIR="))
        .cloned()
        .expect("the settings to reach the cluster");
    demo.wait_for("Press Ctrl-C");

    // dig @127.0.0.1 -p PORT checkout.demo.example. A +short
    let words: Vec<&str> = dig_line.split_whitespace().collect();
    let server = words[1].trim_start_matches('@');
    let port = words[3];
    let name = words[4];

    let dig = Command::new("dig")
        .args([&format!("@{server}"), "-p", port, name, "A", "+short"])
        .args(["+time=2", "+tries=3"])
        .stdin(Stdio::null())
        .output();
    match dig {
        Ok(out) => {
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(answer, expected, "dig answers region-b's address");
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("dig is required under CI (Debian package dnsutils): {e}")
        }
        Err(e) => println!("SKIPPED the dig query: {e}"),
    }
    let addr = format!("{server}:{port}");
    let answer = tokio::runtime::Runtime::new().unwrap().block_on(async {
        arbiter::dns::query_rrset_at(
            &addr,
            "demo.example.",
            name,
            arbiter::config::RecordKind::A,
            2000,
        )
        .await
        .expect("the demo's DNS answers")
    });
    assert_eq!(answer, [expected.as_str()]);

    // export ARBITER_TLS_DIR=DIR ARBITER_SERVERS=A,B,C
    let mut env = Vec::new();
    for word in export_line.split_whitespace().skip(1) {
        let (k, v) = word.split_once('=').unwrap();
        env.push((k.to_string(), v.to_string()));
    }
    let status = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["status", "--json"])
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let group = &json["groups"][0];
    assert_eq!(group["name"], "checkout");
    assert_eq!(group["active"], "region-b");
    assert_eq!(group["epoch"], 2);

    // curl -s http://127.0.0.1:PORT/metrics | grep ...
    let metrics_addr = demo
        .output
        .iter()
        .find_map(|l| l.split("curl -s http://").nth(1)?.split("/metrics").next())
        .expect("the metrics line")
        .to_string();
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("arbiter_group_epoch{group=\"checkout\"} 2"),
        "{metrics}"
    );

    let dir = demo.files_dir();
    assert!(dir.exists(), "the files stay while the demo runs");
    demo.interrupt();
    let exit = demo.wait_exit(STOP_DEADLINE);
    assert!(
        exit.success(),
        "Ctrl-C after the scenario is a normal end: {exit:?}"
    );
    assert!(!dir.exists(), "{} is removed after Ctrl-C", dir.display());
}

/// The body of a plain HTTP/1.0 GET of `path` on `addr`, read to the end.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

/// Goal: Ctrl-C in the middle of the scenario stops everything at once: the demo exits
/// with 130 (interrupted) and its temporary directory is gone. Method: SIGINT as soon as
/// the scenario starts.
#[test]
fn interrupt_during_the_scenario_stops_everything() {
    let mut demo = Demo::start(&[]);
    demo.wait_for("scenario: region-a goes dark");
    let dir = demo.files_dir();
    demo.interrupt();
    let exit = demo.wait_exit(STOP_DEADLINE);
    assert_eq!(exit.code(), Some(130), "{exit:?}");
    assert!(
        !demo.text().contains("failover done in"),
        "interrupted before the end"
    );
    assert!(!dir.exists(), "{} is removed after Ctrl-C", dir.display());
}

/// Goal: a `--base-port` that leaves no room for the demo's ports is refused as bad usage
/// (exit 64) naming the flag, before anything starts.
#[test]
fn base_port_without_room_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["demo", "--base-port", "65530"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--base-port"), "{stderr}");
}

/// Goal: `arbiter demo --postgres` fails a real PostgreSQL primary over to its streaming
/// standby: the built-in hooks fence, measure, promote and validate, and the demo's own
/// checks by real sessions find the standby primary with every row written before the
/// failure and the old primary refusing writes. Method: run the binary to its exit. Without
/// PostgreSQL's server binaries the test is skipped, and fails under CI.
#[test]
fn postgres_demo_fails_a_real_primary_over() {
    if arbiter::demo::postgres::bin_dir().is_none() {
        let hint = "install them with `apt-get install -y postgresql`";
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but no PostgreSQL server binaries were found; {hint}");
        }
        eprintln!("SKIPPED: no PostgreSQL server binaries; {hint}");
        return;
    }
    let mut demo = Demo::start(&["--postgres"]);
    let status = demo.wait_exit(DEMO_DEADLINE);
    let text = demo.text();
    assert!(status.success(), "exit {status:?}; output:\n{text}");
    for phase in PHASES {
        assert!(text.contains(phase), "phase {phase:?} missing in:\n{text}");
    }
    for hook in ["hook pg-promote", "hook pg-validate", "rpo-check: lag "] {
        assert!(text.contains(hook), "{hook:?} missing in:\n{text}");
    }
    assert!(
        text.contains("region-b's PostgreSQL")
            && text.contains("is primary and has 100 of the 100 rows"),
        "{text}"
    );
    assert!(
        text.contains("region-a's PostgreSQL") && text.contains("refuses writes"),
        "{text}"
    );
    let dir = demo.files_dir();
    assert!(!dir.exists(), "{} is removed at exit", dir.display());
}
