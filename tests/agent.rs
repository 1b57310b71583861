//! The real `arbiter agent` binary against an in-process witness cluster: lease safety
//! (S1) as seen from the databases' side. The old region's agent must run its on-lose
//! command before the new region's agent runs on-gain, and an agent frozen with SIGSTOP
//! past its deadline must not believe it still holds the lease when it resumes. on-lose runs
//! only for a lease that was held (a standby's agent never stops the standby); on-gain never
//! delays the self-fence; the watchdog fences a frozen agent's database by the deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// An agent process, killed when the test ends.
struct Agent {
    child: Child,
    dir: PathBuf,
    region: String,
}

impl Agent {
    fn start(cluster: &Cluster, dir: &Path, region: &str) -> Agent {
        Agent::start_with(cluster, dir, region, &[])
    }

    /// An agent of `checkout` in `region` whose on-lose and on-gain append a timestamp to
    /// `REGION.lose` and `REGION.gain` (on-lose also keeps a copy of the state file as it was
    /// when on-lose ran, see [`Agent::state_at_lose`]); `extra` are further arguments (a later
    /// `--on-gain` replaces the default one).
    fn start_with(cluster: &Cluster, dir: &Path, region: &str, extra: &[String]) -> Agent {
        let certs = cluster.certs.client.ca.parent().unwrap();
        let log = std::fs::File::create(dir.join(format!("{region}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_arbiter"));
        command
            .args(["agent", "--server", &cluster.addrs().join(","), "--tls-dir"])
            .arg(certs)
            .args([
                "--group",
                "checkout",
                "--region",
                region,
                "--holder",
                &format!("db-{region}"),
            ])
            .arg("--on-lose")
            // The copy first: once the timestamp is there, so is the copy.
            .arg(format!(
                "{{ cp {d}/{region}.json {d}/{region}.at-lose.json 2>/dev/null || true; }}; {}",
                stamp(dir, region, "lose"),
                d = dir.display()
            ));
        if !extra.iter().any(|a| a == "--on-gain") {
            command.arg("--on-gain").arg(stamp(dir, region, "gain"));
        }
        let child = command
            .arg("--state-file")
            .arg(dir.join(format!("{region}.json")))
            .args(["--retry-ms", "100"])
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        Agent {
            child,
            dir: dir.to_path_buf(),
            region: region.to_string(),
        }
    }

    /// Timestamps (ns, wall clock) written by the on-lose or on-gain command.
    fn events(&self, kind: &str) -> Vec<u128> {
        std::fs::read_to_string(self.dir.join(format!("{}.{kind}", self.region)))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.json", self.region))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The state file as the last on-lose found it: what the agent had just recorded about
    /// the loss (its `event`) before running the command.
    fn state_at_lose(&self) -> Option<serde_json::Value> {
        let path = self.dir.join(format!("{}.at-lose.json", self.region));
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    fn holding(&self) -> bool {
        self.state()
            .and_then(|s| s["holding"].as_bool())
            .unwrap_or(false)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by its pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} to agent {}", self.region);
    }
}

impl Agent {
    /// SIGKILL, as a crash or the OOM killer would: the agent runs nothing on the way out.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (`systemctl stop`) and wait for the exit.
    fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    /// `arbiter agent --after-exit` (the unit's ExecStopPost) with this agent's settings.
    fn after_exit(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["agent", "--after-exit", "--group", "checkout", "--region"])
            .arg(&self.region)
            .arg("--on-lose")
            .arg(stamp(&self.dir, &self.region, "lose"))
            .arg("--state-file")
            .arg(self.dir.join(format!("{}.json", self.region)))
            .output()
            .expect("arbiter agent --after-exit runs")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child by its pid; it may have exited already.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell command appending a wall-clock timestamp (ns) to `DIR/REGION.KIND`.
fn stamp(dir: &Path, region: &str, kind: &str) -> String {
    format!("date +%s%N >> {}/{region}.{kind}", dir.display())
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `checkout`'s lease in [`POLICY`].
const LEASE_MS: u64 = 1000;

/// Goal: the old region's agent self-fences (on-lose) before the new region's agent is
/// told it may write (on-gain), and a frozen agent does not keep a lease past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_holder_self_fences_before_the_new_one_gains_even_when_frozen() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let client = cluster.client();
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Agent::start(&cluster, &dir, "region-a");
    let b = Agent::start(&cluster, &dir, "region-b");

    tracing::info!("--- region-a's agent holds the lease; region-b's does not");
    eventually("region-a's agent gains the lease", || async {
        (!a.events("gain").is_empty() && a.holding()).then_some(())
    })
    .await;
    assert!(!b.holding());
    assert!(b.events("gain").is_empty());
    tracing::info!(
        "--- region-b's agent, started without the lease, is refused and fences nothing"
    );
    eventually("region-b's agent is refused", || async {
        let s = b.state()?;
        (s["holding"] == false && s["active"] == "region-a").then_some(())
    })
    .await;
    assert!(b.events("lose").is_empty(), "never held: no on-lose");
    assert!(
        a.events("lose").is_empty(),
        "region-a's agent holds: no on-lose"
    );

    tracing::info!("--- fail over to region-b");
    failover(&client, "checkout", "region-b")
        .await
        .expect("failover");
    eventually("region-b's agent gains the lease", || async {
        (!b.events("gain").is_empty()).then_some(())
    })
    .await;
    let lost = a.events("lose");
    let gained = b.events("gain");
    assert!(!lost.is_empty(), "region-a's agent self-fenced");
    assert!(
        lost[0] < gained[0],
        "on-lose of region-a ({}) runs before on-gain of region-b ({})",
        lost[0],
        gained[0]
    );
    assert!(!a.holding());
    let at_lose = a
        .state_at_lose()
        .expect("region-a's state when on-lose ran");
    let event = at_lose["event"].as_str().unwrap();
    assert!(
        event.starts_with("renewal refused:") || event == "lease deadline passed without a renewal",
        "region-a lost the lease to the revoke: {at_lose}"
    );
    assert_eq!(at_lose["holding"], false, "{at_lose}");
    assert_eq!(
        at_lose["fence_pending"], true,
        "on-lose runs for a held lease: {at_lose}"
    );

    tracing::info!("--- freeze region-b's agent, fail back to region-a, then resume it");
    eventually("region-b's agent holds", || async {
        b.holding().then_some(())
    })
    .await;
    let b_lost_before = b.events("lose").len();
    b.signal(libc::SIGSTOP);
    let stopped = now_ns();
    // What the frozen agent last recorded: nothing it does after the stop can change it. Its
    // real deadline is at most a lease after the stop (every renewal it sent, it sent before).
    let frozen = b.state().expect("region-b's state file");
    assert_eq!(frozen["holding"], true, "{frozen}");
    let recorded_deadline = u128::from(
        frozen["updated_at_ms"].as_u64().unwrap() + frozen["deadline_in_ms"].as_u64().unwrap(),
    ) * 1_000_000;
    let latest_deadline = stopped + u128::from(LEASE_MS) * 1_000_000;
    failover(&client, "checkout", "region-a")
        .await
        .expect("failback while region-b's agent is frozen");
    eventually("region-a's agent gains the lease again", || async {
        (a.events("gain").len() >= 2).then_some(())
    })
    .await;
    let a_regained = a.events("gain")[1];
    let resumed = now_ns();
    b.signal(libc::SIGCONT);
    eventually("the resumed agent self-fences", || async {
        (b.events("lose").len() > b_lost_before && !b.holding()).then_some(())
    })
    .await;
    let b_lost = b.events("lose")[b_lost_before];
    assert!(b_lost >= resumed, "on-lose ran after the resume");
    assert!(
        a_regained < b_lost,
        "region-a gained while region-b was frozen; region-b never resumed writing"
    );
    assert!(
        recorded_deadline < a_regained,
        "region-b's last recorded deadline ({recorded_deadline}) passed before region-a's on-gain ({a_regained})"
    );
    assert!(
        latest_deadline < a_regained,
        "every lease region-b could hold (sent before the freeze at {stopped}, {LEASE_MS} ms) expired before region-a's on-gain ({a_regained})"
    );
    let at_lose = b
        .state_at_lose()
        .expect("region-b's state when on-lose ran");
    assert_eq!(
        at_lose["event"], "lease deadline passed without a renewal",
        "the resumed agent fenced because its deadline had passed, not on an answer: {at_lose}"
    );
    assert_eq!(at_lose["holding"], false, "{at_lose}");
    assert_eq!(at_lose["fence_pending"], true, "{at_lose}");
    tracing::info!("--- it never regains: region-b is not active");
    let state = eventually("region-b's agent is refused after its fence", || async {
        let s = b.state()?;
        (s["fence_pending"] == false
            && s["event"]
                .as_str()
                .is_some_and(|e| e != "fenced: on-lose succeeded"))
        .then_some(s)
    })
    .await;
    assert_eq!(state["holding"], false, "{state}");
    assert_eq!(state["active"], "region-a", "{state}");
    assert!(!b.holding());
    assert_eq!(b.events("gain").len(), 1);
    assert_eq!(
        b.events("lose").len(),
        b_lost_before + 1,
        "on-lose runs once per loss, not at every refused acquire"
    );
    drop((a, b));
    cluster.stop().await;
}

/// Goal: an agent that can reach no witness at all keeps its lease only until its deadline,
/// then self-fences on its own (S1 from the holder's side: no answer is never a renewal), and
/// does not run on-lose again while it keeps failing to reach the cluster.
/// Method: region-a's agent holds the lease; every witness is stopped. on-lose must run no
/// earlier than the last deadline the agent recorded, with the deadline as the recorded
/// reason; its renewals were all sent before the stop, so the deadline is at most a lease
/// after it (the bound below allows several leases for a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_self_fences_at_its_deadline_when_no_witness_answers() {
    let mut cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Agent::start(&cluster, &dir, "region-a");
    eventually("region-a's agent holds the lease", || async {
        (a.holding() && !a.events("gain").is_empty()).then_some(())
    })
    .await;
    assert!(a.events("lose").is_empty());

    tracing::info!("--- every witness stops");
    let cut = now_ns();
    for id in 1..=3 {
        cluster.witness(id).kill().await;
    }
    // No renewal can succeed from here on: what the agent recorded last is its last deadline.
    let last = a.state().expect("state file");
    let lost = eventually("region-a's agent self-fences", || async {
        a.events("lose").first().copied()
    })
    .await;
    let at_lose = a.state_at_lose().expect("the state when on-lose ran");
    assert_eq!(
        at_lose["event"], "lease deadline passed without a renewal",
        "{at_lose}"
    );
    assert_eq!(at_lose["fence_pending"], true, "{at_lose}");
    assert_eq!(at_lose["holding"], false, "{at_lose}");
    if last["holding"] == true {
        let recorded_deadline_ms =
            last["updated_at_ms"].as_u64().unwrap() + last["deadline_in_ms"].as_u64().unwrap();
        // Milliseconds on both sides: allow the rounding of one.
        assert!(
            lost / 1_000_000 + 1 >= u128::from(recorded_deadline_ms),
            "on-lose ran at {lost} ns, before the recorded deadline {recorded_deadline_ms} ms: {last}"
        );
    }
    let bound = u128::from(5 * LEASE_MS) * 1_000_000;
    assert!(
        lost < cut + bound,
        "on-lose ran {} ms after the witnesses stopped: it must run at the deadline, at most one lease ({LEASE_MS} ms) after the last renewal",
        (lost - cut) / 1_000_000
    );

    tracing::info!("--- unreachable cluster: no second on-lose, no gain");
    let state = eventually("the agent retries and finds no witness", || async {
        let s = a.state()?;
        (s["event"] == "no witness reachable").then_some(s)
    })
    .await;
    assert_eq!(state["holding"], false, "{state}");
    assert_eq!(state["fence_pending"], false, "on-lose succeeded: {state}");
    assert_eq!(a.events("lose").len(), 1, "one loss, one on-lose");
    assert_eq!(a.events("gain").len(), 1);
    drop(a);
    cluster.stop().await;
}

/// Goal: an agent whose group is removed from the policy self-fences at its next renewal
/// (the cluster's `unknown-group` is a loss), not at the end of its lease. Method: a 30 s
/// lease, renewed every 10 s; the group is removed; on-lose must run well before the
/// lease could have expired (it used to run only at the deadline, at least 20 s later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_of_a_removed_group_self_fences_at_its_next_renewal() {
    let cluster = Cluster::start(3).await;
    let long = POLICY.replacen("lease_ms = 1000", "lease_ms = 30000", 1);
    cluster.init_with(&long).await;
    let client = cluster.client();
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Agent::start(&cluster, &dir, "region-a");
    eventually("region-a's agent gains the lease", || async {
        (!a.events("gain").is_empty() && a.holding()).then_some(())
    })
    .await;

    tracing::info!("--- checkout is removed from the policy");
    let without = long.replace("name = \"checkout\"", "name = \"other\"");
    client
        .policy_apply(apply_request(&without))
        .await
        .expect("policy without checkout");
    let removed = now_ns();
    let lost = eventually("region-a's agent self-fences", || async {
        a.events("lose").first().copied()
    })
    .await;
    let after_s = (lost.saturating_sub(removed)) as f64 / 1e9;
    assert!(
        after_s < 15.0,
        "on-lose ran {after_s:.1} s after the removal: the agent waited for its deadline"
    );
    let state = a.state().unwrap();
    assert_eq!(state["holding"], false, "{state}");
    drop(a);
    cluster.stop().await;
}

/// Whether process `pid` is gone (or a zombie: dead, only not reaped yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// The pids written one per line to `path`.
fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Goal: the lease deadline fires while `--on-gain` is still running: on-lose runs by the
/// deadline, and the whole process group of on-gain (the shell and what it started) is
/// killed first. Method: region-a's on-gain starts a 60 s `sleep` in the background of its
/// shell (both pids recorded) and waits for it; while it runs, checkout fails over to
/// region-b. The old region's on-lose must run before the failover activates region-b (the
/// leader activates only after the old lease's deadline), and both recorded processes must
/// be gone. An agent that awaited on-gain inline would self-fence a minute late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fires_while_on_gain_runs_and_kills_its_process_group() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let client = cluster.client();
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("on-gain.pids");
    let on_gain = format!(
        "{}; echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; wait",
        stamp(&dir, "region-a", "gain"),
        pids = pid_file.display()
    );
    let a = Agent::start_with(&cluster, &dir, "region-a", &["--on-gain".into(), on_gain]);

    tracing::info!("--- region-a's agent gains the lease; its on-gain keeps running");
    let gain_pids = eventually("on-gain started its sleep", || async {
        let p = pids(&pid_file);
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(gain_pids.iter().all(|&p| !process_gone(p)), "on-gain runs");
    assert!(a.events("lose").is_empty(), "holding: no on-lose yet");

    tracing::info!("--- checkout fails over to region-b while on-gain still runs");
    failover(&client, "checkout", "region-b")
        .await
        .expect("failover");
    let activated = now_ns();
    let lost = eventually("region-a's agent self-fences", || async {
        a.events("lose").first().copied()
    })
    .await;
    assert!(
        lost < activated,
        "on-lose ran {:.1} s after region-b was activated: the deadline waited for on-gain",
        (lost - activated) as f64 / 1e9
    );
    tracing::info!("--- on-gain's process group is gone");
    eventually("on-gain's shell and sleep are killed", || async {
        gain_pids.iter().all(|&p| process_gone(p)).then_some(())
    })
    .await;
    assert!(!a.holding());
    drop(a);
    cluster.stop().await;
}

/// Goal: a standby's agent, which never held the lease, never runs `--on-lose` (it would
/// stop the DR database and grow the RPO); it runs `--on-start-without-lease` once instead,
/// when one is given. Method: region-b's agent starts while region-a is active and is
/// watched through several refused acquires; a second one is started with the start action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_agent_never_runs_on_lose_without_having_held_the_lease() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();

    tracing::info!("--- region-b's agent starts without the lease");
    let b = Agent::start(&cluster, &dir, "region-b");
    eventually("region-b's agent is refused and says so", || async {
        let s = b.state()?;
        (s["holding"] == false && s["active"] == "region-a").then_some(())
    })
    .await;
    // Several refused acquires (every 100 ms): never an on-lose.
    always_for(
        "the standby's agent runs no on-lose without ever holding the lease",
        std::time::Duration::from_secs(2),
        || async { b.events("lose").is_empty() },
    )
    .await;
    drop(b);
    let _ = std::fs::remove_file(dir.join("region-b.json"));

    tracing::info!("--- with --on-start-without-lease, that runs once instead");
    let b = Agent::start_with(
        &cluster,
        &dir,
        "region-b",
        &[
            "--on-start-without-lease".into(),
            stamp(&dir, "region-b", "start"),
        ],
    );
    eventually("the start action runs", || async {
        (b.events("start").len() == 1).then_some(())
    })
    .await;
    always_for(
        "the start action ran once, not at every refusal, and no on-lose",
        std::time::Duration::from_secs(1),
        || async { b.events("start").len() == 1 && b.events("lose").is_empty() },
    )
    .await;
    drop(b);
    cluster.stop().await;
}

/// Goal: the fence of last resort after the agent's process is gone (`--after-exit`, the
/// unit's ExecStopPost) runs on-lose exactly when the agent died holding the lease, and
/// never for a standby's agent or one that already fenced. Method: SIGKILL a holding agent
/// and a standby's agent, SIGTERM another holder, then run `--after-exit` for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_exit_fences_only_an_agent_that_died_holding_the_lease() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let mut a = Agent::start(&cluster, &dir, "region-a");
    let mut b = Agent::start(&cluster, &dir, "region-b");
    eventually("region-a's agent holds", || async {
        (a.holding() && !a.events("gain").is_empty()).then_some(())
    })
    .await;
    eventually("region-b's agent is refused", || async {
        b.state()
            .map(|s| s["active"] == "region-a")
            .unwrap_or(false)
            .then_some(())
    })
    .await;

    tracing::info!("--- both agents are killed; only the holder's database is fenced");
    a.kill();
    b.kill();
    assert!(a.events("lose").is_empty() && b.events("lose").is_empty());
    let out = b.after_exit();
    assert!(out.status.success(), "{out:?}");
    assert!(b.events("lose").is_empty(), "a standby is never fenced");
    let out = a.after_exit();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        a.events("lose").len(),
        1,
        "the dead holder's database is fenced"
    );

    tracing::info!("--- a holder stopped cleanly fenced itself: nothing more after exit");
    let _ = std::fs::remove_file(dir.join("region-a.lose"));
    let _ = std::fs::remove_file(dir.join("region-a.json"));
    let mut a = Agent::start(&cluster, &dir, "region-a");
    eventually("region-a's new agent holds", || async {
        a.holding().then_some(())
    })
    .await;
    a.terminate();
    assert_eq!(a.events("lose").len(), 1, "SIGTERM runs on-lose");
    let out = a.after_exit();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        a.events("lose").len(),
        1,
        "no second fence after a clean stop"
    );
    drop((a, b));
    cluster.stop().await;
}

/// Goal: the agent refuses bad hook timeouts and an `--after-exit` without a state file
/// with exit 64 and a message naming the flag; no cluster is needed to say so.
#[test]
fn agent_refuses_bad_hook_timeouts_naming_the_flag() {
    for (args, flag) in [
        (vec!["--on-gain-timeout-ms", "0"], "--on-gain-timeout-ms"),
        (vec!["--on-lose-timeout-ms", "0"], "--on-lose-timeout-ms"),
        (
            vec!["--on-lose-timeout-ms", "600001"],
            "--on-lose-timeout-ms",
        ),
        (vec!["--watchdog-margin-ms", "0"], "--watchdog-margin-ms"),
        (vec!["--after-exit"], "--state-file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["agent", "--group", "checkout", "--region", "region-a"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// A stand-in watchdog for tests: a monitor thread that watches the stand-in file the agent
/// kicks (appends bytes to) and kills the "database" process when no kick arrived for
/// `timeout` after the first one, unless the last byte written was the magic close `V`.
struct Monitor {
    /// When the monitor killed the database (wall clock, ns), if it did.
    fired: std::sync::Arc<std::sync::Mutex<Option<u128>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(device: &Path, timeout: std::time::Duration, database: u32) -> Monitor {
        use std::sync::atomic::Ordering;
        let fired = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, s, device) = (fired.clone(), stop.clone(), device.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut len = 0;
            let mut last_kick: Option<std::time::Instant> = None;
            while !s.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&device).unwrap_or_default();
                if bytes.len() != len {
                    len = bytes.len();
                    // The magic close disarms; any other byte is a kick.
                    last_kick = (bytes.last() != Some(&b'V')).then(std::time::Instant::now);
                }
                if last_kick.is_some_and(|k| k.elapsed() >= timeout) {
                    // SAFETY: SIGKILL to the test's own child process by pid.
                    unsafe { libc::kill(database as i32, libc::SIGKILL) };
                    *f.lock().unwrap() = Some(now_ns());
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        Monitor {
            fired,
            stop,
            thread: Some(thread),
        }
    }

    fn fired(&self) -> Option<u128> {
        *self.fired.lock().unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lease of the watchdog tests: long enough that the watchdog's timeout (half of it)
/// is well above scheduling noise on a loaded machine.
const WATCHDOG_LEASE_MS: u64 = 4000;

/// Freezes region-a's agent (SIGSTOP) while it holds a `WATCHDOG_LEASE_MS` lease and
/// returns (agent, database, monitor, frozen at ns). `watchdog`: whether the agent kicks a
/// stand-in device that the monitor watches.
async fn freeze_holder(
    cluster: &Cluster,
    dir: &Path,
    watchdog: bool,
) -> (Agent, Child, Monitor, u128) {
    let device = dir.join("watchdog");
    std::fs::write(&device, b"").unwrap();
    // A previous agent's state file must not pass for this one's.
    let _ = std::fs::remove_file(dir.join("region-a.json"));
    let database = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("the stand-in database starts");
    let monitor = Monitor::start(
        &device,
        std::time::Duration::from_millis(WATCHDOG_LEASE_MS / 2),
        database.id(),
    );
    let mut extra: Vec<String> = Vec::new();
    if watchdog {
        extra.extend(["--watchdog", "required", "--watchdog-device"].map(String::from));
        extra.push(device.display().to_string());
    }
    let a = Agent::start_with(cluster, dir, "region-a", &extra);
    eventually("region-a's agent holds the lease", || async {
        let s = a.state()?;
        (s["holding"] == true && s["event"] == "lease renewed").then_some(())
    })
    .await;
    if watchdog {
        let s = a.state().unwrap();
        assert_eq!(s["watchdog_timeout_ms"], WATCHDOG_LEASE_MS / 2, "{s}");
        assert!(!std::fs::read(&device).unwrap().is_empty(), "kicked");
    }
    a.signal(libc::SIGSTOP);
    (a, database, monitor, now_ns())
}

/// A cluster whose `checkout` lease is [`WATCHDOG_LEASE_MS`], and the agents' directory.
async fn watchdog_cluster() -> (Cluster, PathBuf) {
    let cluster = Cluster::start(3).await;
    let policy = POLICY.replacen(
        "lease_ms = 1000",
        &format!("lease_ms = {WATCHDOG_LEASE_MS}"),
        1,
    );
    cluster.init_with(&policy).await;
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    (cluster, dir)
}

/// Generous for a loaded machine, and still well below the leader's lease wait.
const WATCHDOG_MARGIN_NS: u128 = 1_500_000_000;
const WATCHDOG_LEASE_NS: u128 = WATCHDOG_LEASE_MS as u128 * 1_000_000;

/// Goal: the control of the watchdog test: without a watchdog, a frozen agent's database
/// keeps running past the lease deadline (it would accept writes), so the watchdog test
/// below can fail. Method: as below, without `--watchdog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_agent_without_watchdog_leaves_its_database_running() {
    let (cluster, dir) = watchdog_cluster().await;
    tracing::info!("--- the agent freezes while holding; nothing kills its database");
    let (a, mut database, monitor, _frozen) = freeze_holder(&cluster, &dir, false).await;
    // Past the deadline by which the watchdog test's database is killed.
    always_for(
        "nothing kills the database of a frozen agent without a watchdog",
        std::time::Duration::from_nanos((WATCHDOG_LEASE_NS + 2 * WATCHDOG_MARGIN_NS) as u64),
        || {
            let quiet = database.try_wait().unwrap().is_none() && monitor.fired().is_none();
            async move { quiet }
        },
    )
    .await;
    drop((a, monitor));
    let _ = database.kill();
    let _ = database.wait();
    cluster.stop().await;
}

/// Goal: a frozen agent's database is killed by the watchdog before the lease deadline
/// plus margin. Method: a [`WATCHDOG_LEASE_MS`] lease; a `sleep` stands for the database; a
/// monitor thread plays the kernel's watchdog on a stand-in file with half the lease as
/// timeout. The agent is SIGSTOPped while it holds the lease, and the monitor must kill
/// the database within lease + margin of the freeze (the deadline is at most a lease after
/// the freeze). The control is `frozen_agent_without_watchdog_leaves_its_database_running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_kills_a_frozen_agents_database_before_the_deadline() {
    let (cluster, dir) = watchdog_cluster().await;
    tracing::info!("--- the agent freezes while holding; the watchdog kills the database");
    let (a, mut database, monitor, frozen) = freeze_holder(&cluster, &dir, true).await;
    let fired = eventually("the watchdog fires", || async { monitor.fired() }).await;
    let after = fired.saturating_sub(frozen);
    assert!(
        after < WATCHDOG_LEASE_NS + WATCHDOG_MARGIN_NS,
        "the database was killed {:.2} s after the freeze: later than the lease ({} ms) plus margin",
        after as f64 / 1e9,
        WATCHDOG_LEASE_MS
    );
    assert!(
        database.wait().unwrap().code().is_none(),
        "killed by a signal"
    );

    drop((a, monitor));
    cluster.stop().await;
}

/// Goal: `--watchdog required` refuses to start without the device (exit 64, naming the
/// flag), while `automatic` runs without it.
#[test]
fn watchdog_required_refuses_to_start_without_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-watchdog");
    let out = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["agent", "--group", "checkout", "--region", "region-a"])
        .args(["--watchdog", "required", "--watchdog-device"])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--watchdog required"), "{stderr}");
    assert!(stderr.contains("no-such-watchdog"), "{stderr}");
}

/// Goal: an agent frozen past its deadline (its watchdog armed, the database already killed
/// by it) runs on-lose as soon as it resumes, before anything else: it never carries on as
/// if it still held the lease. Its region is still active, so it then gains it afresh.
/// Method: freeze as in the watchdog test, wait past the deadline, SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_fences_as_soon_as_it_resumes() {
    let (cluster, dir) = watchdog_cluster().await;
    let (a, mut database, monitor, _frozen) = freeze_holder(&cluster, &dir, true).await;
    let gains_before = a.events("gain").len();
    tokio::time::sleep(std::time::Duration::from_nanos(
        (WATCHDOG_LEASE_NS + 2 * WATCHDOG_MARGIN_NS) as u64,
    ))
    .await;
    tracing::info!("--- the agent resumes after its deadline");
    a.signal(libc::SIGCONT);
    let resumed = now_ns();
    let lost = eventually("the resumed agent fences", || async {
        a.events("lose").into_iter().find(|t| *t > resumed)
    })
    .await;
    let regained = eventually("the agent gains the lease again", || async {
        a.events("gain").get(gains_before).copied()
    })
    .await;
    assert!(
        lost < regained,
        "on-lose ({lost}) ran before the lease was gained again ({regained})"
    );
    drop((a, monitor));
    let _ = database.kill();
    let _ = database.wait();
    cluster.stop().await;
}

/// Renewals answered `allowed` by every witness, from their metrics.
fn renewals(cluster: &Cluster) -> u64 {
    cluster
        .witnesses
        .iter()
        .filter_map(|w| w.node.as_ref())
        .map(|n| {
            n.metrics
                .encode()
                .lines()
                .filter(|l| {
                    l.starts_with("arbiter_fence_requests_total")
                        && l.contains("kind=\"renew\"")
                        && l.contains("result=\"allowed\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

/// Goal: after a policy lowers the lease, the agent renews at its usual pace for the new
/// lease (a third of it before each deadline), not back to back. Method: a 6 s lease
/// lowered to 1 s while the agent holds; the renewals the witnesses answer over 3 s are
/// counted (about 5 at that pace; the old agent, keeping the 6 s lease for its schedule,
/// renewed as fast as the cluster answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_at_the_pace_of_the_lease_it_was_last_granted() {
    let cluster = Cluster::start(3).await;
    let long = POLICY.replacen("lease_ms = 1000", "lease_ms = 6000", 1);
    cluster.init_with(&long).await;
    let client = cluster.client();
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Agent::start(&cluster, &dir, "region-a");
    eventually("region-a's agent holds the lease", || async {
        a.holding().then_some(())
    })
    .await;
    let req = arbiter::proto::PolicyApplyRequest {
        toml: POLICY.to_string(),
        dry_run: false,
        if_version: 0,
        request_id: arbiter::api::new_request_id(),
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.policy_apply(req).await }
        })
        .await
        .expect("the lease lowered to 1 s");
    // The agent's next renewal (within 2 s) brings the 1 s lease: its deadline is then at
    // most a second away.
    eventually("the agent holds the lowered lease", || async {
        let s = a.state()?;
        (s["holding"] == true && s["deadline_in_ms"].as_u64()? <= 1_000).then_some(())
    })
    .await;
    let before = renewals(&cluster);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let renewed = renewals(&cluster) - before;
    assert!(
        (1..30).contains(&renewed),
        "{renewed} renewals in 3 s of a 1 s lease"
    );
    assert!(a.holding());
    drop(a);
    cluster.stop().await;
}
