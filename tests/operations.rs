//! Failover operations, leases and fencing on in-process clusters over real gRPC and HTTP
//! with mutual TLS: quorum verdicts from real HTTP probes, automatic and manual failover,
//! hooks that fail or block, a leader lost in the middle of a step, and stale epochs.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arbiter::proto;
use common::*;

/// A region's health endpoint on loopback that the test turns off and on.
struct Endpoint {
    url: String,
    healthy: Arc<AtomicBool>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let flag = flag.clone();
                async move {
                    if flag.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint { url, healthy }
    }

    fn set(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }
}

/// A policy whose two regions are probed at the given endpoints, with short timings.
fn probed_policy(a: &Endpoint, b: &Endpoint, checkout_mode: &str, extra_group: &str) -> String {
    format!(
        r#"
[[regions]]
name = "region-a"
probes = [{{ kind = "http", url = "{a}", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]
[[regions]]
name = "region-b"
probes = [{{ kind = "http", url = "{b}", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "{checkout_mode}"
lease_ms = 1000
lease_margin_ms = 200
down_after_ms = 600
cooldown_ms = 0
{extra_group}
"#,
        a = a.url,
        b = b.url
    )
}

/// Waits until the leader judges both regions up.
async fn both_regions_up(client: &arbiter::client::Client) {
    eventually("both regions are up by verdict", || async {
        (verdict(client, "region-a").await.as_deref() == Some("up")
            && verdict(client, "region-b").await.as_deref() == Some("up"))
        .then_some(())
    })
    .await;
}

async fn verdict(client: &arbiter::client::Client, region: &str) -> Option<String> {
    let s = status(client).await;
    s.regions
        .iter()
        .find(|r| r.name == region)
        .map(|r| r.verdict.clone())
}

/// Goal: a region whose endpoint stops answering is declared down by a majority and the
/// group (auto mode) fails over by itself: epoch + 1 once, steps in order, and the audit
/// log shows the verdict with its evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_down_by_quorum_fails_over_automatically() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let cluster = Cluster::start(3).await;
    cluster.init_with(&probed_policy(&a, &b, "auto", "")).await;
    let client = cluster.client();
    both_regions_up(&client).await;

    tracing::info!("--- region-a goes dark");
    a.set(false);
    let op = eventually("an automatic operation is done", || async {
        let s = status(&client).await;
        let g = s.groups.iter().find(|g| g.name == "checkout")?;
        (g.active == "region-b" && s.operations.is_empty()).then_some(())?;
        operation(&client, 1).await.filter(|o| o.state == "done")
    })
    .await;
    assert_eq!(op.kind, "automatic");
    let steps: Vec<_> = op.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "declare",
            "revoke",
            "fence",
            "rpo-check",
            "promote",
            "activate",
            "dns",
            "validate"
        ]
    );
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!(
        (g.active.as_str(), g.epoch),
        ("region-b", 2),
        "epoch incremented once"
    );
    let verdict_entry = s
        .audit
        .iter()
        .find(|e| e.kind == "verdict" && e.detail.starts_with("region region-a: up -> down"))
        .expect("the down verdict is in the audit log");
    // Every witness's evidence is listed, and a majority saw the region down (the third may
    // still be short of `down_after_ms` when the verdict is taken).
    let detail = &verdict_entry.detail;
    for w in 1..=3 {
        assert!(
            detail.contains(&format!("witness {w}: ")),
            "evidence of witness {w}: {detail}"
        );
    }
    assert!(
        detail.matches(": down for ").count() >= 2,
        "a majority's evidence says down: {detail}"
    );
    cluster.stop().await;
}

/// Goal: manual mode proposes and waits for `approve`; `abort` leaves the old region active
/// and records why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_waits_for_approval_and_abort_keeps_the_old_region() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let cluster = Cluster::start(3).await;
    cluster
        .init_with(&probed_policy(&a, &b, "manual", ""))
        .await;
    let client = cluster.client();
    eventually("region-a is up by verdict", || async {
        (verdict(&client, "region-a").await.as_deref() == Some("up")).then_some(())
    })
    .await;

    tracing::info!("--- region-a goes dark: an operation waits for approval");
    a.set(false);
    let op = wait_operation(&client, 1, "awaiting-approval").await;
    always_for(
        "the operation awaits approval, only declared",
        std::time::Duration::from_secs(2),
        || async {
            operation(&client, op.id)
                .await
                .is_some_and(|o| o.state == "awaiting-approval" && o.steps.len() == 1)
        },
    )
    .await;
    let still = operation(&client, op.id).await.unwrap();
    assert_eq!(
        still.state, "awaiting-approval",
        "nothing runs without approval"
    );
    assert_eq!(still.steps.len(), 1, "only declared");
    let act = |op: u64, reason: &str| proto::OperationAction {
        operation: op,
        step: String::new(),
        reason: reason.into(),
        request_id: String::new(),
        break_glass: false,
    };
    client.approve(act(op.id, "")).await.expect("approve");
    wait_operation(&client, op.id, "done").await;

    tracing::info!("--- region-a back, region-b dark: the next proposal is aborted");
    a.set(true);
    b.set(false);
    let next = eventually("a second operation awaits approval", || async {
        let s = status(&client).await;
        s.operations
            .into_iter()
            .find(|o| o.state == "awaiting-approval" && o.id > op.id)
    })
    .await;
    let aborted = client
        .abort(act(next.id, "region-b is being patched; not moving"))
        .await
        .expect("abort");
    assert_eq!(aborted.operation.unwrap().state, "aborted");
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!(
        (g.active.as_str(), g.epoch),
        ("region-b", 2),
        "the old region stays active"
    );
    assert!(
        s.audit
            .iter()
            .any(|e| e.kind == "operation-aborted" && e.detail.contains("being patched")),
        "the reason is recorded"
    );
    let e = client
        .approve(proto::OperationAction {
            operation: 999,
            ..Default::default()
        })
        .await
        .expect_err("approving an unknown operation is refused");
    assert_eq!(e.kind, "unknown-operation", "{e}");
    cluster.stop().await;
}

/// Goal: a step whose hook keeps failing halts the operation visibly; after the cause is
/// fixed, `retry` completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hook_halts_visibly_and_retry_completes() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let fixed = dir.join("fixed");
    let promote = script(&dir, "promote.sh", &format!("echo \"promoting $ARBITER_TO at epoch $ARBITER_EPOCH\"; test -e {} || {{ echo 'standby unreachable' >&2; exit 3; }}", fixed.display()));
    let policy = format!(
        "{POLICY}\n[hooks.promote-db]\nkind = \"exec\"\nprogram = \"{}\"\ntimeout_ms = 5000\n",
        promote.display()
    )
    .replace(
        "lease_margin_ms = 200\n",
        "lease_margin_ms = 200\nstep_attempts = 2\nhooks = { promote = [\"promote-db\"] }\n",
    );
    cluster.init_with(&policy).await;
    let client = cluster.client();
    let op = start_failover(&client, "checkout", "region-b")
        .await
        .unwrap();
    let halted = wait_operation(&client, op.id, "halted").await;
    assert_eq!(halted.step, "promote");
    assert!(
        halted.error.contains("promote-db") && halted.error.contains("exit code 3"),
        "{}",
        halted.error
    );
    assert!(
        halted.error.contains("standby unreachable"),
        "hook output is kept: {}",
        halted.error
    );
    let s = status(&client).await;
    assert!(
        s.operations
            .iter()
            .any(|o| o.id == op.id && o.state == "halted"),
        "status shows the halted operation"
    );
    assert!(s.audit.iter().any(|e| e.kind == "operation-halted"));

    tracing::info!("--- fix the cause and retry");
    std::fs::write(&fixed, "").unwrap();
    client
        .retry(proto::OperationAction {
            operation: op.id,
            ..Default::default()
        })
        .await
        .expect("retry");
    let done = wait_operation(&client, op.id, "done").await;
    let promote = done.steps.iter().find(|s| s.step == "promote").unwrap();
    assert!(
        promote.detail.contains("promoting region-b at epoch 2"),
        "{}",
        promote.detail
    );
    cluster.stop().await;
}

/// One run of a gate hook as it recorded itself: `OPERATION EPOCH WITNESS TERM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HookRun {
    epoch: u64,
    witness: u64,
    term: u64,
}

/// The runs of operation `op` recorded in `runs`, oldest first.
fn hook_runs(runs: &std::path::Path, op: u64) -> Vec<HookRun> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split(' ')
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            match f[..] {
                [o, epoch, witness, term] if o == op => Some(HookRun {
                    epoch,
                    witness,
                    term,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Goal: when the leader dies while an operation sits in `fence`, `promote` or `validate`,
/// the new leader runs the step again and completes the operation; the step is recorded once,
/// with the outcome of the new leader's run, and the operation is recorded done exactly once
/// (S6).
/// Method: each step's hook records the operation, epoch, calling witness and its term, then
/// blocks until the test opens its gate and prints who passed it. The killed leader's run is
/// the first record; after the kill there must be a run by the new leader in a later term,
/// and the recorded step must carry that run's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_resumes_operations_stuck_in_fence_promote_and_validate() {
    let mut cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let gate = |step: &str| {
        script(
            &dir,
            &format!("{step}.sh"),
            &format!(
                "echo \"$ARBITER_OPERATION $ARBITER_EPOCH $ARBITER_WITNESS $ARBITER_TERM\" >> {d}/{step}.runs\ni=0\nwhile [ ! -e {d}/{step}.open ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\ntest -e {d}/{step}.open && echo \"gate passed by witness $ARBITER_WITNESS in term $ARBITER_TERM\"",
                d = dir.display()
            ),
        )
    };
    let mut hooks = String::new();
    for step in ["fence", "promote", "validate"] {
        hooks += &format!(
            "\n[hooks.{step}-gate]\nkind = \"exec\"\nprogram = \"{}\"\ntimeout_ms = 120000\n",
            gate(step).display()
        );
    }
    let policy = format!("{POLICY}{hooks}").replace(
        "lease_margin_ms = 200\n",
        "lease_margin_ms = 200\nhooks = { fence = [\"fence-gate\"], promote = [\"promote-gate\"], validate = [\"validate-gate\"] }\n",
    );
    cluster.init_with(&policy).await;
    let client = cluster.client();

    let mut to = "region-b";
    let steps = ["fence", "promote", "validate"];
    for (round, step) in steps.into_iter().enumerate() {
        tracing::info!(step, "--- an operation sits in {step}");
        // Every gate but this round's is open, so the operation blocks only at `step`.
        for other in steps {
            let gate = dir.join(format!("{other}.open"));
            if other == step {
                let _ = std::fs::remove_file(&gate);
            } else {
                std::fs::write(&gate, "").unwrap();
            }
        }
        let op = start_failover(&client, "checkout", to).await.unwrap();
        let runs = dir.join(format!("{step}.runs"));
        let first = eventually(
            &format!("the {step} hook runs for operation {}", op.id),
            || async { hook_runs(&runs, op.id).first().copied() },
        )
        .await;
        let leader = cluster.leader().await;
        assert_eq!(
            first.witness, leader,
            "the {step} hook first ran on the leader: {first:?}"
        );
        tracing::info!(leader, "--- kill the leader mid-step");
        cluster.witness(leader).kill().await;
        let survivors = Cluster::client_for(&cluster);
        let new_leader = eventually("a new leader", || async {
            let s = status(&survivors).await;
            s.leader_id.filter(|l| *l != leader)
        })
        .await;
        tracing::info!(new_leader, "--- the new leader runs the {step} step again");
        let rerun = eventually(
            &format!(
                "witness {new_leader} runs the {step} hook of operation {}",
                op.id
            ),
            || async {
                hook_runs(&runs, op.id)
                    .into_iter()
                    .find(|r| r.witness == new_leader)
            },
        )
        .await;
        assert!(
            rerun.term > first.term,
            "the re-run is in the new leader's term: first {first:?}, re-run {rerun:?}"
        );
        assert_eq!(rerun.epoch, first.epoch, "the same operation's epoch");
        std::fs::write(dir.join(format!("{step}.open")), "").unwrap();
        let done = wait_operation(&survivors, op.id, "done").await;
        assert_eq!(done.to_epoch, round as u64 + 2);
        assert!(
            hook_runs(&runs, op.id)
                .iter()
                .all(|r| r.witness == leader || r.witness == new_leader),
            "only the old and the new leader ran the {step} hook: {:?}",
            hook_runs(&runs, op.id)
        );
        let recorded = done.steps.iter().find(|s| s.step == step).unwrap();
        assert_eq!(recorded.outcome, "completed", "{recorded:?}");
        assert!(
            recorded.detail.contains(&format!(
                "gate passed by witness {new_leader} in term {}",
                rerun.term
            )),
            "the {step} step records the new leader's run: {}",
            recorded.detail
        );
        let s = status(&survivors).await;
        let done_entries = s
            .audit
            .iter()
            .filter(|e| {
                e.kind == "operation-done" && e.detail.starts_with(&format!("operation {}:", op.id))
            })
            .count();
        assert_eq!(
            done_entries, 1,
            "operation {} recorded done exactly once",
            op.id
        );
        let recorded: Vec<_> = done.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            recorded,
            [
                "declare",
                "revoke",
                "fence",
                "rpo-check",
                "promote",
                "activate",
                "dns",
                "validate"
            ],
            "each step recorded once"
        );
        cluster.witness(leader).restart().await;
        to = if to == "region-b" {
            "region-a"
        } else {
            "region-b"
        };
    }
    cluster.stop().await;
}

/// Goal: a renewal or check with a stale epoch is refused with the current epoch; a check
/// with the current epoch is allowed; over gRPC and over HTTP (from any witness). Bad input
/// gets a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_refused_over_grpc_and_http() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let client = cluster.client();
    let lease = arbiter::fencing::LeaseClient::new(client.clone(), "checkout", "region-a", "db-a");
    let held = lease.acquire().await.unwrap();
    assert!(
        matches!(held, arbiter::fencing::LeaseState::Held { epoch: 1, .. }),
        "{held:?}"
    );
    assert!(lease.check(1).await.unwrap().allowed);
    failover(&client, "checkout", "region-b").await.unwrap();

    tracing::info!("--- gRPC");
    match lease.renew(1).await.unwrap() {
        arbiter::fencing::LeaseState::Refused {
            active,
            epoch,
            refusal,
            ..
        } => {
            assert_eq!(
                (active.as_str(), epoch, refusal.as_str()),
                ("region-b", 2, "not-active")
            );
        }
        other => panic!("stale renewal must be refused: {other:?}"),
    }
    let b = arbiter::fencing::LeaseClient::new(client.clone(), "checkout", "region-b", "db-b");
    let stale = b.check(1).await.unwrap();
    assert!(!stale.allowed);
    assert_eq!((stale.refusal.as_str(), stale.epoch), ("stale-epoch", 2));
    assert!(b.check(2).await.unwrap().allowed);
    let unknown = arbiter::fencing::LeaseClient::new(client.clone(), "nope", "region-b", "");
    assert_eq!(unknown.check(1).await.unwrap_err().kind, "unknown-group");

    tracing::info!("--- HTTP, asking a follower (it forwards to the leader)");
    let leader = cluster.leader().await;
    let follower = cluster
        .witnesses
        .iter()
        .find(|w| w.id != leader)
        .unwrap()
        .addr;
    let http = cluster.https_client();
    let get = |q: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("https://{follower}{q}"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                code,
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            )
        }
    };
    let (code, body) = get("/v1/groups/checkout/fence?region=region-b&epoch=2".into()).await;
    assert_eq!(
        (code, body["allowed"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (code, body) = get("/v1/groups/checkout/fence?region=region-b&epoch=1".into()).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        (body["epoch"].as_u64(), body["active"].as_str()),
        (Some(2), Some("region-b"))
    );
    let (code, body) = get("/v1/groups/checkout/fence?region=region-a&epoch=1".into()).await;
    assert_eq!(
        (code, body["refusal"].as_str()),
        (409, Some("not-active")),
        "{body}"
    );
    let (code, body) = get("/v1/groups/checkout/fence?region=region-b&epoch=two".into()).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("epoch"),
        "{body}"
    );
    let (code, body) = get("/v1/groups/nope/fence?region=region-b&epoch=2".into()).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = get("/v1/groups/checkout/fence?region=region-z&epoch=2".into()).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("unknown-region")),
        "{body}"
    );
    let renew = http
        .post(format!("https://{follower}/v1/groups/checkout/renew"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"region": "region-a", "epoch": 1, "holder": "db-a"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        renew.status().as_u16(),
        409,
        "stale renewal over HTTP is refused"
    );
    cluster.stop().await;
}

/// Goal: hooks with a missing program are refused when the policy is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_with_missing_hook_program_is_refused() {
    let cluster = Cluster::start(3).await;
    cluster.init_with_policy().await;
    let policy = format!(
        "{POLICY}\n[hooks.promote-db]\nkind = \"exec\"\nprogram = \"/nonexistent/promote\"\n"
    );
    let req = proto::PolicyApplyRequest {
        toml: policy,
        dry_run: false,
        if_version: 0,
        request_id: String::new(),
    };
    let e = cluster.client().policy_apply(req).await.unwrap_err();
    assert_eq!(e.kind, "invalid-policy");
    assert!(e.message.contains("hooks.promote-db.program"), "{e}");
    assert_eq!(status(&cluster.client()).await.policy_version, 1);
    cluster.stop().await;
}

/// A health endpoint that refuses requests coming from one source address: the link
/// between that witness and the region is cut, everyone else still sees the region up.
async fn endpoint_cut_from(blocked: std::net::IpAddr) -> Endpoint {
    use axum::extract::ConnectInfo;
    let healthy = Arc::new(AtomicBool::new(true));
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move {
                if peer.ip() == blocked {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "link cut")
                } else {
                    (axum::http::StatusCode::OK, "ok")
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    Endpoint { url, healthy }
}

/// Goal: one witness's view never produces `down` (S7). Method: witnesses probe from
/// their own loopback addresses; region-b's endpoint refuses only the region-a witness
/// (127.0.0.11). The other two still see region-b up: no `down` verdict, no failover of
/// the auto-mode group active in region-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_seen_by_one_witness_never_fails_over() {
    let a = Endpoint::start().await;
    let b = endpoint_cut_from("127.0.0.11".parse().unwrap()).await;
    let cluster = Cluster::start_with(3, "\n[probes]\nsource_addr = \"127.0.0.1{id}\"\n").await;
    let catalog = "\n[[groups]]\nname = \"catalog\"\ncandidates = [\"region-b\", \"region-a\"]\nmode = \"auto\"\nlease_ms = 1000\ndown_after_ms = 600\ncooldown_ms = 0\n";
    cluster
        .init_with(&probed_policy(&a, &b, "auto", catalog))
        .await;
    let client = cluster.client();
    let s = eventually(
        "region-b is up by verdict, with one witness seeing it down",
        || async {
            let s = status(&client).await;
            let r = s.regions.iter().find(|r| r.name == "region-b")?;
            (r.verdict == "up" && r.voters_seeing_down == 1 && r.voters_seeing_up == 2).then_some(s)
        },
    )
    .await;
    assert_eq!(
        s.regions
            .iter()
            .find(|r| r.name == "region-b")
            .unwrap()
            .voters,
        3
    );

    tracing::info!("--- several down_after windows later: still up, no operation");
    always_for(
        "region-b stays up by verdict and nothing fails over",
        std::time::Duration::from_secs(3),
        || async {
            let s = status(&client).await;
            let verdict = s.regions.iter().find(|r| r.name == "region-b").unwrap();
            verdict.verdict == "up" && s.operations.is_empty()
        },
    )
    .await;
    let s = status(&client).await;
    assert_eq!(
        s.regions
            .iter()
            .find(|r| r.name == "region-b")
            .unwrap()
            .verdict,
        "up"
    );
    assert!(s.operations.is_empty(), "no failover: {:?}", s.operations);
    let catalog = s.groups.iter().find(|g| g.name == "catalog").unwrap();
    assert_eq!((catalog.active.as_str(), catalog.epoch), ("region-b", 1));
    assert!(!s
        .audit
        .iter()
        .any(|e| e.kind == "verdict" && e.detail.contains("region-b: up -> down")));
    let _ = &b.healthy;
    cluster.stop().await;
}

/// Goal: anti-flap. After an automatic failover, the group is not failed over again
/// automatically within its cooldown, even when the new region goes down too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_holds_back_a_second_automatic_failover() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let cluster = Cluster::start(3).await;
    cluster
        .init_with(
            &probed_policy(&a, &b, "auto", "").replace("cooldown_ms = 0", "cooldown_ms = 600000"),
        )
        .await;
    let client = cluster.client();
    both_regions_up(&client).await;
    tracing::info!("--- region-a goes dark: automatic failover");
    a.set(false);
    wait_operation(&client, 1, "done").await;
    tracing::info!("--- region-b goes dark while region-a is back up: the cooldown holds");
    a.set(true);
    eventually("region-a up again", || async {
        (verdict(&client, "region-a").await.as_deref() == Some("up")).then_some(())
    })
    .await;
    b.set(false);
    eventually("region-b is down by verdict", || async {
        (verdict(&client, "region-b").await.as_deref() == Some("down")).then_some(())
    })
    .await;
    // Several down windows (600 ms) and probe rounds: a failover would have started.
    always_for(
        "no automatic operation during the cooldown",
        std::time::Duration::from_secs(2),
        || async { status(&client).await.operations.is_empty() },
    )
    .await;
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
    cluster.stop().await;
}

/// Goal: S7 needs a target: an active region down by quorum verdict while no other
/// candidate is up starts nothing (a failover to a dead region would only add an outage);
/// once a candidate is up again the failover starts, so the cluster was able to act.
/// Method: region-b goes dark, then region-a; both are down by verdict for several down
/// windows with no operation; region-b returns and the automatic failover to it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_region_down_with_no_candidate_up_starts_nothing() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let cluster = Cluster::start(3).await;
    cluster.init_with(&probed_policy(&a, &b, "auto", "")).await;
    let client = cluster.client();
    both_regions_up(&client).await;

    tracing::info!("--- region-b goes dark, then region-a");
    b.set(false);
    eventually("region-b is down by verdict", || async {
        (verdict(&client, "region-b").await.as_deref() == Some("down")).then_some(())
    })
    .await;
    a.set(false);
    eventually("region-a is down by verdict", || async {
        (verdict(&client, "region-a").await.as_deref() == Some("down")).then_some(())
    })
    .await;
    // Several down windows (600 ms) and probe rounds (200 ms) with the active region down.
    always_for(
        "no operation while no candidate is up",
        std::time::Duration::from_secs(3),
        || async {
            let s = status(&client).await;
            let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
            s.operations.is_empty() && (g.active.as_str(), g.epoch) == ("region-a", 1)
        },
    )
    .await;
    let s = status(&client).await;
    assert!(
        !s.audit.iter().any(|e| e.kind == "operation-declared"),
        "nothing declared: {:?}",
        s.audit
    );

    tracing::info!("--- region-b returns: now there is a target");
    b.set(true);
    let op = wait_operation(&client, 1, "done").await;
    assert_eq!(
        (op.kind.as_str(), op.to.as_str(), op.to_epoch),
        ("automatic", "region-b", 2)
    );
    cluster.stop().await;
}

/// The stable period of [`automatic_failback_after_the_stable_period`].
const FAILBACK_AFTER_MS: u64 = 1500;

/// Goal: with `failback_after_ms`, the group returns to its first candidate by itself once
/// that region has been up for the stable period, and not before.
/// Method: the operation's own declaration time (the leader's wall clock: every witness runs
/// in this process) is compared with the moment the test let region-a's probes pass again;
/// no failback can be declared sooner than `failback_after_ms` after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_failback_after_the_stable_period() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let cluster = Cluster::start(3).await;
    cluster
        .init_with(&probed_policy(&a, &b, "auto", "").replace(
            "cooldown_ms = 0",
            &format!("cooldown_ms = 0\nfailback_after_ms = {FAILBACK_AFTER_MS}"),
        ))
        .await;
    let client = cluster.client();
    eventually("region-a up", || async {
        (verdict(&client, "region-a").await.as_deref() == Some("up")).then_some(())
    })
    .await;
    a.set(false);
    wait_operation(&client, 1, "done").await;
    tracing::info!("--- region-a recovers: failback after the stable period");
    let recovered_ms = (now_ns() / 1_000_000) as u64;
    a.set(true);
    let back = wait_operation(&client, 2, "done").await;
    assert_eq!(
        (back.kind.as_str(), back.to.as_str(), back.to_epoch),
        ("failback", "region-a", 3)
    );
    assert!(
        back.created_at_ms >= recovered_ms + FAILBACK_AFTER_MS,
        "the failback was declared {} ms after region-a recovered, before its stable period of {FAILBACK_AFTER_MS} ms",
        back.created_at_ms.saturating_sub(recovered_ms)
    );
    assert!(
        back.reason
            .contains(&format!("up for {FAILBACK_AFTER_MS} ms")),
        "{}",
        back.reason
    );
    cluster.stop().await;
}

/// Goal: the rpo-check step measures the target's lag with its hook: within the RPO it
/// proceeds; above it, after `rpo_wait_ms`, it halts for approval, and `approve` accepts the
/// data loss and lets the operation finish. A hook that says `"exceeds_rpo": true` halts it
/// too, whatever its numbers say (they may be lower bounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpo_check_proceeds_within_the_rpo_and_halts_for_approval_above_it() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let report = dir.join("report.json");
    std::fs::write(&report, r#"{"lag_ms": 200, "lag_bytes": 10}"#).unwrap();
    let hook = script(&dir, "lag.sh", &format!("cat {}", report.display()));
    let policy = format!("{POLICY}\n[hooks.lag]\nkind = \"exec\"\nprogram = \"{}\"\n", hook.display()).replace(
        "lease_margin_ms = 200\n",
        "lease_margin_ms = 200\nrpo_lag_ms = 1000\nrpo_wait_ms = 1000\nhooks = { rpo_check = \"lag\" }\n",
    );
    cluster.init_with(&policy).await;
    let client = cluster.client();
    let done = failover(&client, "checkout", "region-b").await.unwrap();
    let rpo = done.steps.iter().find(|s| s.step == "rpo-check").unwrap();
    assert_eq!(rpo.outcome, "completed");
    assert!(
        rpo.detail.contains("lag 200 ms") && rpo.detail.contains("within"),
        "{}",
        rpo.detail
    );

    tracing::info!("--- lag above the RPO: halt, then approve");
    std::fs::write(&report, r#"{"lag_ms": 5000, "lag_bytes": 10}"#).unwrap();
    let op = start_failover(&client, "checkout", "region-a")
        .await
        .unwrap();
    let halted = wait_operation(&client, op.id, "halted").await;
    assert_eq!(halted.step, "rpo-check");
    assert!(
        halted.error.contains("lag 5000 ms") && halted.error.contains("arbiter approve"),
        "{}",
        halted.error
    );
    client
        .approve(proto::OperationAction {
            operation: op.id,
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = wait_operation(&client, op.id, "done").await;
    let rpo = done.steps.iter().find(|s| s.step == "rpo-check").unwrap();
    assert_eq!(rpo.outcome, "skipped");
    assert!(rpo.detail.contains("accepted by admin"), "{}", rpo.detail);

    tracing::info!("--- numbers within the RPO, but the hook cannot prove them: halt");
    std::fs::write(
        &report,
        r#"{"lag_ms": 10, "lag_bytes": 0, "exceeds_rpo": true, "why": "lower bound"}"#,
    )
    .unwrap();
    let op = start_failover(&client, "checkout", "region-b")
        .await
        .unwrap();
    let halted = wait_operation(&client, op.id, "halted").await;
    assert_eq!(halted.step, "rpo-check");
    assert!(
        halted
            .error
            .contains("lag 10 ms, 0 bytes cannot be proven within RPO 1000 ms")
            && halted.error.contains("arbiter approve"),
        "{}",
        halted.error
    );
    cluster.stop().await;
}

/// Goal: an operation halted after its activation (here a validate hook that keeps failing)
/// does not keep its group from failing over again: the next failover supersedes it, the
/// halted one ends done with its remaining step recorded as skipped, and epochs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_supersedes_an_operation_halted_after_activation() {
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let validate = script(
        &dir,
        "validate.sh",
        "test \"$ARBITER_TO\" = region-a || { echo \"$ARBITER_TO serves errors\" >&2; exit 4; }",
    );
    let policy = format!(
        "{POLICY}\n[hooks.smoke]\nkind = \"exec\"\nprogram = \"{}\"\ntimeout_ms = 5000\n",
        validate.display()
    )
    .replace(
        "lease_margin_ms = 200\n",
        "lease_margin_ms = 200\nstep_attempts = 2\nhooks = { validate = [\"smoke\"] }\n",
    );
    cluster.init_with(&policy).await;
    let client = cluster.client();

    tracing::info!("--- region-b is activated, then validate halts the operation");
    let first = start_failover(&client, "checkout", "region-b")
        .await
        .unwrap();
    let halted = wait_operation(&client, first.id, "halted").await;
    assert_eq!(halted.step, "validate");
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));

    tracing::info!("--- a failover back to region-a is accepted and completes");
    let second = failover(&client, "checkout", "region-a")
        .await
        .expect("the halted operation does not block the group");
    assert_eq!(second.state, "done");
    let old = operation(&client, first.id).await.expect("still listed");
    assert_eq!(old.state, "done", "{old:?}");
    let last = old.steps.last().unwrap();
    assert_eq!(last.step, "validate");
    assert!(
        last.detail
            .contains(&format!("superseded by operation {}", second.id)),
        "{}",
        last.detail
    );
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-a", 3));
    cluster.stop().await;
}
