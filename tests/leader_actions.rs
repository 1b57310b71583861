//! The leader acts only on a leadership it has just confirmed (S3). openraft keeps a leader
//! that lost its quorum in the `Leader` state, so "am I leader?" is not enough: before every
//! hook call and every external DNS update the leader obtains a quorum acknowledgement newer
//! than the start of the call. These tests cut a leader off from the other witnesses while
//! it still reaches the hook targets, and check what it does after the others elect a new
//! leader.

mod common;

use std::time::Duration;

use common::*;

/// `(witness, term, wall-clock ns)` of every call a hook logged.
fn calls(log: &std::path::Path) -> Vec<(u64, u64, u128)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Goal: a leader cut off from the other witnesses, though it still reaches the hook
/// targets, calls no hook once the others have elected a new leader. Method: a promote hook
/// that keeps failing (so the step retries with backoff) logs who calls; once it has been
/// called, the leader's Raft links are cut; after another witness is leader, the old one
/// must not call again while the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_calls_no_hook_after_a_new_leader_is_elected() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let log = dir.join("promote.log");
    let promote = script(
        &dir,
        "promote.sh",
        &format!(
            "echo \"$ARBITER_WITNESS $ARBITER_TERM $(date +%s%N)\" >> {}; exit 1",
            log.display()
        ),
    );
    let policy = POLICY.replacen(
        "lease_margin_ms = 200\n",
        "lease_margin_ms = 200\nstep_attempts = 8\n\n[groups.hooks]\npromote = [\"promote-db\"]\n",
        1,
    ) + &format!(
        "\n[hooks.promote-db]\nkind = \"exec\"\nprogram = \"{}\"\n",
        promote.display()
    );
    cluster.init_with(&policy).await;
    let client = cluster.client();
    let leader = cluster.leader().await;

    tracing::info!("--- the leader calls the promote hook");
    start_failover(&client, "checkout", "region-b")
        .await
        .expect("failover declared");
    eventually("the leader calls the promote hook", || async {
        calls(&log).iter().any(|c| c.0 == leader).then_some(())
    })
    .await;

    tracing::info!("--- the leader is cut off from the other witnesses");
    cluster.isolate(leader);
    let others: Vec<&Witness> = cluster
        .witnesses
        .iter()
        .filter(|w| w.id != leader)
        .collect();
    let new_leader = eventually("the others elect a new leader", || async {
        let views: Vec<Option<u64>> = others
            .iter()
            .map(|w| w.node().consensus.view().leader)
            .collect();
        let first = views[0]?;
        (first != leader && views.iter().all(|v| *v == Some(first))).then_some(first)
    })
    .await;
    let elected = now_ns();
    tracing::info!(
        new_leader,
        "--- a new leader is elected; the old one must be silent"
    );
    eventually("the new leader calls the promote hook", || async {
        calls(&log)
            .iter()
            .any(|c| c.0 == new_leader && c.2 > elected)
            .then_some(())
    })
    .await;
    // Longer than the old leader's next backoffs (0.5, 1, 2 and 4 s after its first call).
    let late = || {
        calls(&log)
            .into_iter()
            .filter(|c| c.0 == leader && c.2 > elected)
            .collect::<Vec<_>>()
    };
    always_for(
        &format!(
            "the deposed leader {leader} calls no hook after witness {new_leader} was elected"
        ),
        Duration::from_secs(8),
        || async { late().is_empty() },
    )
    .await;
    cluster.heal();
    cluster.stop().await;
}

/// Goal: a leader cut off from the other witnesses grants no lease renewal asked after the
/// cut: every grant rests on a quorum acknowledgement newer than the request (ReadIndex),
/// not on the leader's own lease, whose length is its local election timeout. Method: a
/// holder that reaches only the leader renews every 50 ms; the leader's Raft links are cut;
/// no renewal sent after the cut may be granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_grants_no_renewal_asked_after_the_cut() {
    use arbiter::fencing::{LeaseClient, LeaseState};
    use tokio::time::Instant;

    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let leader = cluster.leader().await;
    let only_leader = cluster.client_of(leader as usize - 1);
    let holder = LeaseClient::new(only_leader, "checkout", "region-a", "db-a");
    let epoch = match holder.acquire().await.expect("acquire") {
        LeaseState::Held { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };

    tracing::info!("--- the leader is cut off; its holder keeps renewing through it");
    cluster.isolate(leader);
    let cut = Instant::now();
    // In-flight heartbeats sent before the cut may still be answered: a little slack.
    let slack = Duration::from_millis(100);
    let mut granted_after_cut = Vec::new();
    while cut.elapsed() < Duration::from_secs(4) {
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), holder.renew(epoch)).await;
        if let Ok(Ok(LeaseState::Held { .. })) = answer {
            if sent > cut + slack {
                granted_after_cut.push(sent - cut);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        granted_after_cut.is_empty(),
        "the isolated leader granted {} renewals asked after the cut, the last {:?} after it",
        granted_after_cut.len(),
        granted_after_cut.last()
    );
    cluster.heal();
    cluster.stop().await;
}
