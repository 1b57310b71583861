//! In-process witness clusters (3 and 5 witnesses) over real gRPC with mutual TLS on
//! loopback: election, linearizable status from any witness, exactly-once failover, typed
//! refusals, leader loss, and a full-cluster restart from disk.

mod common;

use arbiter::proto;
use common::*;

/// Goal: 3 and 5 witnesses elect a leader and every witness answers `Status`.
/// Method: start, init, apply the policy, then ask each witness through a client that
/// knows only that witness; each answer must show the same groups and leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_of_three_and_five_elect_and_serve_status_from_any_witness() {
    for n in [3usize, 5] {
        tracing::info!(n, "--- start and initialise");
        let cluster = Cluster::start(n).await;
        let cluster_id = cluster.init_with_policy().await;
        let leader = cluster.leader().await;
        tracing::info!(n, "--- status from each witness");
        for i in 0..n {
            let s = status(&cluster.client_of(i)).await;
            assert_eq!(s.cluster_id, cluster_id);
            assert_eq!(
                s.leader_id,
                Some(leader),
                "witness {i} follows the same leader"
            );
            assert_eq!(s.witnesses.len(), n);
            let names: Vec<_> = s.groups.iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, ["catalog", "checkout"]);
        }
        cluster.stop().await;
    }
}

/// Goal: a failover commits exactly once: epoch + 1 on every witness, one audit entry.
/// Refusals (non-candidate region, unknown group, frozen group) are typed and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_commits_once_and_refusals_are_typed() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let client = cluster.client_of(2);

    tracing::info!("--- failover checkout to region-b");
    let reply = failover(&client, "checkout", "region-b")
        .await
        .expect("failover");
    let g = reply.group.unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
    for w in &cluster.witnesses {
        let c = &w.node().consensus;
        eventually("witness applied the failover", || async {
            c.with_state(|s| (s.groups["checkout"].epoch == 2).then_some(()))
        })
        .await;
        c.with_state(|s| {
            assert_eq!(s.groups["checkout"].active, "region-b");
            let failovers = s
                .audit
                .iter()
                .filter(|a| a.kind == "failover" && a.group == "checkout")
                .count();
            assert_eq!(failovers, 1, "exactly one audit entry for the failover");
            let entry = s.audit.iter().find(|a| a.kind == "failover").unwrap();
            assert_eq!(
                entry.actor, "operator",
                "the client certificate identity is recorded"
            );
        });
    }

    tracing::info!("--- typed refusals change nothing");
    let before = status(&client).await;
    let e = failover(&client, "checkout", "region-c").await.unwrap_err();
    assert_eq!(e.kind, "not-candidate", "{e}");
    let e = failover(&client, "nope", "region-a").await.unwrap_err();
    assert_eq!(e.kind, "unknown-group", "{e}");
    let mode = proto::SetModeRequest {
        group: "checkout".into(),
        mode: "frozen".into(),
        reason: "change freeze".into(),
        request_id: String::new(),
    };
    client
        .call(|mut c| {
            let mode = mode.clone();
            async move { c.set_mode(mode).await }
        })
        .await
        .expect("set mode");
    let e = failover(&client, "checkout", "region-a").await.unwrap_err();
    assert_eq!(e.kind, "frozen", "{e}");
    let after = status(&client).await;
    let epochs = |s: &proto::StatusReply| {
        s.groups
            .iter()
            .map(|g| (g.name.clone(), g.active.clone(), g.epoch))
            .collect::<Vec<_>>()
    };
    assert_eq!(epochs(&before), epochs(&after));
    cluster.stop().await;
}

/// Goal: losing the leader loses no acknowledged decision, and a full-cluster restart from
/// disk keeps the state (S4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_and_full_restart_keep_every_acknowledged_decision() {
    let mut cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let client = cluster.client();
    failover(&client, "checkout", "region-b")
        .await
        .expect("failover 1");

    tracing::info!("--- kill the leader");
    let old = cluster.leader().await;
    cluster.witness(old).kill().await;
    let new = eventually("a new leader among the survivors", || async {
        let views: Vec<_> = cluster
            .witnesses
            .iter()
            .filter_map(|w| w.node.as_ref())
            .map(|n| n.consensus.view().leader)
            .collect();
        views
            .iter()
            .all(|v| v.is_some() && *v == views[0] && *v != Some(old))
            .then(|| views[0].unwrap())
    })
    .await;
    assert_ne!(new, old);
    let s = status(&client).await;
    let checkout = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!(
        (checkout.active.as_str(), checkout.epoch),
        ("region-b", 2),
        "decision survives leader loss"
    );
    failover(&client, "checkout", "region-a")
        .await
        .expect("failover under the new leader");

    tracing::info!("--- restart the old leader, then the whole cluster");
    cluster.witness(old).restart().await;
    for w in &mut cluster.witnesses {
        w.kill().await;
    }
    for w in &mut cluster.witnesses {
        w.restart().await;
    }
    cluster.leader().await;
    let s = status(&cluster.client()).await;
    let checkout = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!(
        (checkout.active.as_str(), checkout.epoch),
        ("region-a", 3),
        "state intact after full restart"
    );
    assert_eq!(s.policy_version, 1);
    assert!(s.audit.iter().filter(|a| a.kind == "failover").count() == 2);
    cluster.stop().await;
}
