//! Leases across a cut between the two regions' witnesses while the third site sees both:
//! no verdict changes and no failover starts, so the active regions' agents must keep their
//! leases. 3 witnesses (region-a, region-b, tiebreaker); the leader is in one region, so of
//! the two groups (checkout active in region-a, catalog active in region-b) one has its
//! active region on the leader's side of the cut and one across it. Each agent talks only
//! to its own region's witness and the tiebreaker, and cannot reach the other region's
//! witness either (a client-side cut that black-holes calls, as a real cut would).

mod common;

use std::path::Path;
use std::time::Duration;

use arbiter::agent::AgentConfig;
use arbiter::client::Client;
use common::*;
use tokio::sync::oneshot;

/// The lease of both groups here: a few renewals fit in the cut, and a loaded machine
/// cannot starve a renewal past it.
const LEASE_MS: u64 = 3000;
/// How long the cut lasts: several leases, so a lost lease cannot hide.
const CUT: Duration = Duration::from_secs(12);

/// One in-process agent and how to stop it.
struct Agent {
    /// Cuts this agent's link to the other region's witness.
    faults: arbiter::raft::LinkFaults,
    /// That witness's address.
    unreachable: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    name: String,
}

impl Agent {
    /// An agent of `group` in `region` knowing only `servers` (witness indexes), whose link
    /// to `unreachable` [`Agent::cut`] cuts; on-lose and on-gain append to
    /// `DIR/NAME.lose|gain`.
    fn start(
        cluster: &Cluster,
        dir: &Path,
        group: &str,
        region: &str,
        servers: &[usize],
        unreachable: usize,
    ) -> Agent {
        let addrs = servers
            .iter()
            .map(|&i| cluster.witnesses[i].addr.to_string())
            .collect();
        let client = Client::new(addrs, &cluster.certs.client).unwrap();
        let faults = client.faults();
        let name = format!("{group}-{region}");
        let mut config = AgentConfig::new(group, region, &name);
        config.on_lose = Some(format!("echo x >> {}/{name}.lose", dir.display()));
        config.on_gain = Some(format!("echo x >> {}/{name}.gain", dir.display()));
        config.state_file = Some(dir.join(format!("{name}.json")));
        config.retry = Duration::from_millis(200);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(arbiter::agent::run(config, client, async {
            let _ = stopped.await;
        }));
        Agent {
            faults,
            unreachable: cluster.witnesses[unreachable].addr.to_string(),
            stop: Some(stop),
            task: Some(task),
            name,
        }
    }

    /// From now on this agent cannot reach the other region's witness.
    fn cut(&self) {
        self.faults.cut(&self.unreachable);
    }

    fn count(dir: &Path, name: &str, kind: &str) -> usize {
        std::fs::read_to_string(dir.join(format!("{name}.{kind}")))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn holding(dir: &Path, name: &str) -> bool {
        std::fs::read_to_string(dir.join(format!("{name}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|s| s["holding"].as_bool())
            .unwrap_or(false)
    }

    async fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

/// Cuts (or restores) the Raft links between witnesses `x` and `y` (ids), both ways.
fn cut_between(cluster: &Cluster, x: u64, y: u64) {
    let addr = |id: u64| cluster.witnesses[id as usize - 1].addr.to_string();
    cluster.witnesses[x as usize - 1]
        .node()
        .link_faults
        .cut(&addr(y));
    cluster.witnesses[y as usize - 1]
        .node()
        .link_faults
        .cut(&addr(x));
}

/// Goal: a cut between the region-a and region-b witnesses (the tiebreaker sees both)
/// fences no healthy primary, with the leader on either side: the agent whose region's
/// witness is cut from the leader renews through the tiebreaker (which forwards to the
/// leader) instead of following a redirect to the unreachable leader, and the agent on the
/// leader's side keeps renewing too. S1 holds: the standby agents never gain, no epoch
/// changes. Method: 3 witnesses, the leader moved off the tiebreaker; one active and one
/// standby agent per group; the cut lasts several leases; each agent's client reaches only
/// its region's witness and the tiebreaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_cut_from_each_other_keep_their_leases_with_the_leader_on_either_side() {
    let cluster = Cluster::start(3).await;
    let policy = POLICY.replace("lease_ms = 1000", &format!("lease_ms = {LEASE_MS}"));
    cluster.init_with(&policy).await;
    let dir = cluster.dir.path().join("agents");
    std::fs::create_dir_all(&dir).unwrap();

    tracing::info!("--- the leader is in a region (not the tiebreaker)");
    let leader = loop {
        let leader = cluster.leader().await;
        if leader != 3 {
            break leader;
        }
        cluster.isolate(3);
        eventually("a region's witness leads", || async {
            let l = cluster.witnesses[0].node().consensus.view().leader;
            (l.is_some() && l != Some(3)).then_some(())
        })
        .await;
        cluster.heal();
    };
    tracing::info!(leader, "leader chosen");

    // Witness indexes: 0 = region-a, 1 = region-b, 2 = tiebreaker.
    let agents = vec![
        Agent::start(&cluster, &dir, "checkout", "region-a", &[0, 2], 1),
        Agent::start(&cluster, &dir, "catalog", "region-b", &[1, 2], 0),
        Agent::start(&cluster, &dir, "checkout", "region-b", &[1, 2], 0),
        Agent::start(&cluster, &dir, "catalog", "region-a", &[0, 2], 1),
    ];
    let active = ["checkout-region-a", "catalog-region-b"];
    let standby = ["checkout-region-b", "catalog-region-a"];
    eventually("both active regions' agents hold", || async {
        active.iter().all(|n| Agent::holding(&dir, n)).then_some(())
    })
    .await;

    tracing::info!(leader, "--- cut region-a's witness from region-b's");
    cut_between(&cluster, 1, 2);
    for a in &agents {
        a.cut();
    }
    let started = tokio::time::Instant::now();
    while started.elapsed() < CUT {
        for name in active {
            assert_eq!(
                Agent::count(&dir, name, "lose"),
                0,
                "{name} self-fenced during the cut (leader: witness {leader}) although its region is healthy"
            );
        }
        for name in standby {
            assert_eq!(Agent::count(&dir, name, "gain"), 0, "{name} gained: S1");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in active {
        assert!(
            Agent::holding(&dir, name),
            "{name} still holds after the cut"
        );
    }

    tracing::info!("--- heal: nothing changed hands");
    cluster.heal();
    let status = status(&cluster.client()).await;
    for (group, region) in [("checkout", "region-a"), ("catalog", "region-b")] {
        let g = status.groups.iter().find(|g| g.name == group).unwrap();
        assert_eq!((g.active.as_str(), g.epoch), (region, 1), "{group}");
    }
    for a in agents {
        let name = a.name.clone();
        a.stop().await;
        if active.contains(&name.as_str()) {
            assert_eq!(
                Agent::count(&dir, &name, "lose"),
                1,
                "{name}: once, at stop"
            );
        } else {
            assert_eq!(Agent::count(&dir, &name, "lose"), 0, "{name}: never held");
        }
    }
    cluster.stop().await;
}
