//! Single-writer safety (S1) and the witnesses' health under ordinary operator actions
//! instead of faults: a policy that lowers the lease, a group removed and added again with
//! another region first, a policy that drops a running operation's target. Each test holds
//! a lease the way a database does (the library's `LeaseClient`, whose deadline is on this
//! process's monotonic clock, the same clock the test reads) and checks that no other
//! region is granted a lease before that holder's deadline. Each failed on the code as it
//! was before the fix.

mod common;

use std::time::Duration;

use arbiter::client::Client;
use arbiter::fencing::{LeaseClient, LeaseState};
use arbiter::proto;
use common::policy::{checkout_only, AB};
use common::*;
use tokio::time::Instant;

/// A policy with `checkout` over `candidates` (TOML list) and the given lease.
fn policy(candidates: &str, lease_ms: u64) -> String {
    checkout_only(
        candidates,
        &format!("lease_ms = {lease_ms}\nlease_margin_ms = 200\n"),
    )
}

async fn apply(client: &Client, toml: &str) -> Result<u64, arbiter::client::ClientError> {
    let reply = client.policy_apply(apply_request(toml)).await?;
    Ok(reply.version)
}

/// The deadline of a lease `holder` is granted now (panics if it is refused).
async fn hold(holder: &LeaseClient) -> (u64, Instant) {
    match holder.acquire().await.expect("acquire answered") {
        LeaseState::Held {
            epoch, deadline, ..
        } => (epoch, deadline),
        other => panic!("{} is refused the lease: {other:?}", holder.region()),
    }
}

/// Acquires for `holder` until granted; returns when the grant arrived and its epoch.
async fn acquire_until_granted(holder: &LeaseClient) -> (Instant, u64) {
    eventually(
        &format!("{} is granted the lease", holder.region()),
        || async {
            match holder.acquire().await {
                Ok(LeaseState::Held { epoch, .. }) => Some((Instant::now(), epoch)),
                _ => None,
            }
        },
    )
    .await
}

/// Goal: lowering a group's lease never shortens the wait for a lease granted before the
/// change (S1). Method: region-a is granted a 6 s lease; the policy lowers the lease to 1 s
/// and an operator fails over at once; region-b asks for the lease until it is granted. The
/// grant must arrive after region-a's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_lease_never_shortens_the_wait_for_a_lease_already_granted() {
    let cluster = Cluster::start(3).await;
    cluster.init_with(&policy(AB, 6_000)).await;
    let client = cluster.client();
    let a = LeaseClient::new(client.clone(), "checkout", "region-a", "db-a");
    let b = LeaseClient::new(client.clone(), "checkout", "region-b", "db-b");

    tracing::info!("--- region-a holds a 6 s lease");
    let (epoch, a_deadline) = hold(&a).await;
    assert_eq!(epoch, 1);

    tracing::info!("--- the lease is lowered to 1 s, then region-b is failed over to");
    apply(&client, &policy(AB, 1_000)).await.expect("policy");
    let op = start_failover(&client, "checkout", "region-b")
        .await
        .expect("failover declared");
    let (granted, b_epoch) = acquire_until_granted(&b).await;
    assert!(b_epoch > epoch);
    assert!(
        granted >= a_deadline,
        "region-b was granted the lease {:?} before region-a's lease (granted under the 6 s policy) expired",
        a_deadline - granted
    );
    let done = wait_operation(&client, op.id, "done").await;
    let fence = done.steps.iter().find(|s| s.step == "fence").unwrap();
    assert!(fence.detail.contains("lease 6000 ms"), "{}", fence.detail);
    cluster.stop().await;
}

/// Goal: removing a group and adding it back with another region first never makes that
/// region a lease holder while the old region's lease may still be held (S1); the old
/// holder is told at once that its group is gone. Method: region-a holds a 5 s lease; the
/// group is removed (region-a's renewal is refused as `unknown-group`, an answer, not an
/// error to retry), then added back with region-b first; region-b asks until granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_removed_and_added_again_grants_no_lease_before_the_old_one_expired() {
    let cluster = Cluster::start(3).await;
    cluster.init_with(&policy(AB, 5_000)).await;
    let client = cluster.client();
    let a = LeaseClient::new(client.clone(), "checkout", "region-a", "db-a");
    let b = LeaseClient::new(client.clone(), "checkout", "region-b", "db-b");
    let (epoch, a_deadline) = hold(&a).await;

    tracing::info!("--- the group is removed: region-a's renewal is refused as a loss");
    let without = policy(AB, 5_000).replace(
        "[[groups]]\nname = \"checkout\"",
        "[[groups]]\nname = \"other\"",
    );
    apply(&client, &without)
        .await
        .expect("policy without checkout");
    match a.renew(epoch).await {
        Ok(LeaseState::Refused { refusal, .. }) => assert_eq!(refusal, "unknown-group"),
        other => panic!("renewal of a removed group must be refused, got {other:?}"),
    }

    tracing::info!("--- the group is added back with region-b first");
    apply(&client, &policy(r#"["region-b", "region-a"]"#, 5_000))
        .await
        .expect("policy with checkout again");
    let (granted, b_epoch) = acquire_until_granted(&b).await;
    assert!(b_epoch > epoch);
    assert!(
        granted >= a_deadline,
        "region-b was granted the lease {:?} before region-a's lease expired",
        a_deadline - granted
    );
    cluster.stop().await;
}

/// Goal: a policy that drops a running operation's target is refused through the API, and
/// even when such an entry is committed (proposed straight to consensus, as an older
/// version would have accepted it) no witness panics, the operation completes, and every
/// witness replays that log after a restart and serves. Method: three candidates; an
/// operation to region-b waits out the lease; a policy without region-b is applied both
/// ways; the whole cluster is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_dropping_the_target_of_a_running_operation_never_bricks_the_cluster() {
    let mut cluster = Cluster::start(3).await;
    let abc = r#"["region-a", "region-b", "region-c"]"#;
    cluster.init_with(&policy(abc, 3_000)).await;
    let client = cluster.client();

    let op = start_failover(&client, "checkout", "region-b")
        .await
        .expect("failover declared");
    eventually("the operation waits out the lease", || async {
        let op = operation(&client, op.id).await?;
        (op.step == "fence").then_some(())
    })
    .await;

    tracing::info!("--- a second failover while one runs is a precondition, not an internal error");
    let busy = start_failover(&client, "checkout", "region-c")
        .await
        .expect_err("one operation per group");
    assert_eq!(busy.kind, "operation-in-progress", "{busy}");
    assert_eq!(busy.code, tonic::Code::FailedPrecondition, "{busy}");

    tracing::info!("--- a policy without region-b is refused by the API");
    let dropped = policy(r#"["region-a", "region-c"]"#, 3_000);
    let refused = apply(&client, &dropped).await.expect_err("refused");
    assert!(refused.message.contains("region-b"), "{refused}");
    assert_eq!(refused.code, tonic::Code::FailedPrecondition, "{refused}");

    tracing::info!("--- the same policy committed without the API's checks");
    let leader = cluster.leader().await;
    let node = cluster.witnesses[leader as usize - 1].node();
    let parsed = arbiter::config::Policy::parse("p", &dropped).unwrap();
    let response = node
        .consensus
        .propose(arbiter::state::Proposal {
            actor: "test".into(),
            at_ms: 0,
            request_id: String::new(),
            command: arbiter::state::Command::ApplyPolicy {
                policy: parsed,
                if_version: 0,
            },
        })
        .await
        .expect("committed");
    assert!(response.outcome.is_err(), "{response:?}");

    let done = wait_operation(&client, op.id, "done").await;
    assert_eq!(done.to, "region-b");

    tracing::info!("--- every witness restarts and replays its log");
    for id in 1..=3 {
        cluster.witness(id).kill().await;
    }
    for id in 1..=3 {
        cluster.witness(id).restart().await;
    }
    let client = cluster.client();
    let s = eventually("the restarted cluster serves status", || async {
        let reply = tokio::time::timeout(Duration::from_secs(5), client.status(10))
            .await
            .ok()?
            .ok()?;
        Some(reply)
    })
    .await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
    cluster.stop().await;
}

async fn abort(client: &Client, operation: u64) -> proto::OperationStatus {
    let reply = client
        .abort(proto::OperationAction {
            operation,
            step: String::new(),
            reason: "operator".into(),
            request_id: arbiter::api::new_request_id(),
            break_glass: false,
        })
        .await
        .expect("abort");
    reply.operation.unwrap()
}

/// Goal: an abort during the lease wait, after the fence hooks ran, leaves the old region
/// active and has the leader run the group's unfence hooks (with step `unfence`) before the
/// operation ends; the old region's holder may renew again. Method: a fence hook that does
/// not confirm (so the lease wait runs), an unfence hook that records its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_the_fence_hooks_ran_unfences_the_old_primary() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let fenced = dir.join("fenced");
    let unfenced = dir.join("unfenced");
    let fence = script(
        &dir,
        "fence.sh",
        &format!(
            "echo \"$ARBITER_STEP $ARBITER_FROM\" >> {}; exit 1",
            fenced.display()
        ),
    );
    let unfence = script(
        &dir,
        "unfence.sh",
        &format!(
            "echo \"$ARBITER_STEP $ARBITER_FROM\" >> {}",
            unfenced.display()
        ),
    );
    let toml = format!(
        "{}[groups.hooks]\nfence = [\"fence-db\"]\nunfence = [\"unfence-db\"]\n\n\
         [hooks.fence-db]\nkind = \"exec\"\nprogram = \"{}\"\n\n\
         [hooks.unfence-db]\nkind = \"exec\"\nprogram = \"{}\"\n",
        policy(AB, 10_000),
        fence.display(),
        unfence.display()
    );
    cluster.init_with(&toml).await;
    let client = cluster.client();
    let a = LeaseClient::new(client.clone(), "checkout", "region-a", "db-a");
    let (epoch, _) = hold(&a).await;

    let op = start_failover(&client, "checkout", "region-b")
        .await
        .expect("failover declared");
    eventually("the fence hook ran", || async {
        std::fs::read_to_string(&fenced)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    tracing::info!("--- abort during the lease wait");
    let aborted = abort(&client, op.id).await;
    assert!(
        aborted.state == "aborting" || aborted.state == "aborted",
        "{aborted:?}"
    );
    let done = wait_operation(&client, op.id, "aborted").await;
    assert!(done.error.contains("unfenced region-a"), "{}", done.error);
    let calls = std::fs::read_to_string(&unfenced).unwrap();
    assert_eq!(calls.trim(), "unfence region-a", "{calls}");
    match a.renew(epoch).await.expect("renewal answered") {
        LeaseState::Held { epoch: e, .. } => assert_eq!(e, epoch),
        other => panic!("region-a may renew after the abort: {other:?}"),
    }
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-a", 1));
    cluster.stop().await;
}

/// The fence step of operation `id`: its detail, and how long after the revoke it was
/// recorded (proposers' wall clocks, one process here).
async fn fence_step(client: &Client, id: u64) -> (String, u64) {
    let op = wait_operation(client, id, "done").await;
    let at = |name: &str| op.steps.iter().find(|s| s.step == name).unwrap().clone();
    let (revoke, fence) = (at("revoke"), at("fence"));
    (
        fence.detail,
        fence.finished_at_ms.saturating_sub(revoke.finished_at_ms),
    )
}

/// Goal: a fence hook's confirmation ends the lease wait only in a group that opts in
/// (`fence_ends_lease_wait`), and then only a positive hard-fence claim for the operation's
/// epoch; by default the wait runs to its end whatever the hooks say (S1 without
/// exception). Method: an exec fence hook that exits 0 and prints the claim for the
/// operation's epoch; a 5 s lease; one failover with the default, one with the opt-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_confirmation_ends_the_lease_wait_only_when_the_group_opts_in() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let fence = script(
        &dir,
        "fence.sh",
        "echo stopped; echo \"{\\\"fenced\\\": true, \\\"epoch\\\": $ARBITER_EPOCH}\"",
    );
    let with = |opt_in: bool| {
        format!(
            "{}{}[groups.hooks]\nfence = [\"fence-db\"]\n\n[hooks.fence-db]\nkind = \"exec\"\nprogram = \"{}\"\n",
            policy(AB, 5_000),
            if opt_in { "fence_ends_lease_wait = true\n" } else { "" },
            fence.display()
        )
    };
    cluster.init_with(&with(false)).await;
    let client = cluster.client();

    tracing::info!("--- default: the confirmed fence does not shorten the wait");
    let op = start_failover(&client, "checkout", "region-b")
        .await
        .unwrap();
    let (detail, took_ms) = fence_step(&client, op.id).await;
    assert!(detail.contains("waits the lease out"), "{detail}");
    assert!(
        took_ms >= 5_000,
        "the fence step ended {took_ms} ms after the revoke, before the 5 s lease could expire: {detail}"
    );

    tracing::info!("--- opted in: the hard fence ends the wait");
    apply(&client, &with(true)).await.expect("policy");
    let op = start_failover(&client, "checkout", "region-a")
        .await
        .unwrap();
    let (detail, took_ms) = fence_step(&client, op.id).await;
    assert!(detail.contains("ends the lease wait"), "{detail}");
    assert!(took_ms < 5_000, "{took_ms} ms: {detail}");
    cluster.stop().await;
}
