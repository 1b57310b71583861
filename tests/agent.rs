//! The real `arbiter agent` binary against an in-process witness cluster: lease safety
//! (S1) as seen from the databases' side. The old region's agent must run its on-lose
//! command before the new region's agent runs on-gain, and an agent frozen with SIGSTOP
//! past its deadline must not believe it still holds the lease when it resumes. An agent
//! that starts without the lease fences its database once (fail closed).

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
        let certs = cluster.certs.client.ca.parent().unwrap();
        let log = std::fs::File::create(dir.join(format!("{region}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
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
            .arg(format!("date +%s%N >> {}/{region}.lose", dir.display()))
            .arg("--on-gain")
            .arg(format!("date +%s%N >> {}/{region}.gain", dir.display()))
            .arg("--state-file")
            .arg(dir.join(format!("{region}.json")))
            .args(["--retry-ms", "100"])
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

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

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
    tracing::info!("--- region-b's agent, started without the lease, fenced its database once");
    eventually("region-b's agent self-fences at start", || async {
        (b.events("lose").len() == 1).then_some(())
    })
    .await;
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

    tracing::info!("--- freeze region-b's agent, fail back to region-a, then resume it");
    eventually("region-b's agent holds", || async {
        b.holding().then_some(())
    })
    .await;
    let b_lost_before = b.events("lose").len();
    b.signal(libc::SIGSTOP);
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
    let state = b.state().unwrap();
    assert_eq!(state["holding"], false, "{state}");
    assert_eq!(state["active"], "region-a", "{state}");
    // It never regains: region-b is not active.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
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
    let req = arbiter::proto::PolicyApplyRequest {
        toml: without,
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
