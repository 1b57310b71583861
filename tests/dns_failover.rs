//! The `dns` step and the drift reconciler against real BIND9 and Knot: a failover publishes
//! the new region's records and the `_arbiter.` marker on both servers; a wrong TSIG secret
//! halts the operation with a clear error until the secret is fixed; a record changed by
//! hand is repaired and audited; a leader cut off from the others never repairs a server
//! from its stale state.

mod common;

use std::path::Path;
use std::time::Duration;

use arbiter::config::{RecordKind, TsigAlgorithm};
use arbiter::proto;
use common::authoritative::INITIAL_A;
use common::authoritative::{available, Authoritative, Flavour, KEY_NAME, NAME, ZONE};
use common::policy::CHECKOUT;
use common::*;

/// The records the policy gives region-a: not those of the zone file the servers start with
/// ([`INITIAL_A`]), so a server answering them has been updated by the cluster.
const REGION_A_RECORDS: [&str; 2] = ["192.0.2.20", "192.0.2.21"];

/// The marker the cluster writes next to the record for the decision `epoch` in `region`.
fn marker_text(epoch: u64, region: &str) -> String {
    format!("arbiter/1 group=checkout epoch={epoch} policy=1 region={region}")
}

/// A policy whose group `checkout` publishes `checkout.shop.example.` on the given servers,
/// each with its secret in a file.
fn dns_policy(servers: &[(&Authoritative, &Path)]) -> String {
    dns_policy_reconciling_every(servers, 1000)
}

fn dns_policy_reconciling_every(servers: &[(&Authoritative, &Path)], reconcile_ms: u64) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(s, secret)| {
            format!(
                "{{ address = \"{}\", zone = \"{ZONE}\", tsig_key = \"{KEY_NAME}\", algorithm = \"hmac-sha256\", secret = {{ file = \"{}\" }}, timeout_ms = 2000 }}",
                s.addr,
                secret.display()
            )
        })
        .collect();
    let group_dns = format!(
        "[groups.dns]\nzone = \"{ZONE}\"\nname = \"{NAME}\"\nttl = 30\nrecords = {{ region-a = {{ type = \"A\", values = [\"{}\", \"{}\"] }}, region-b = {{ type = \"A\", values = [\"198.51.100.20\"] }} }}\n",
        REGION_A_RECORDS[0], REGION_A_RECORDS[1]
    );
    format!(
        r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[dns]
zones = [{{ name = "{ZONE}", nameservers = ["ns1.{ZONE}"] }}]
servers = [{servers}]
reconcile_interval_ms = {reconcile_ms}
{CHECKOUT}step_attempts = 2
{group_dns}"#,
        servers = servers.join(", ")
    )
}

fn server(s: &Authoritative, secret: &Path) -> arbiter::config::DnsServer {
    arbiter::config::DnsServer {
        address: s.addr.to_string(),
        zone: ZONE.to_string(),
        tsig_key: KEY_NAME.to_string(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: arbiter::config::SecretRef {
            file: Some(secret.to_path_buf()),
            env: None,
        },
        timeout_ms: 2000,
    }
}

/// Goal: after a failover, a DNS query to BIND and to Knot returns the new region's records
/// and the zone's SOA serial increased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_publishes_the_new_region_on_bind_and_knot() {
    init_tracing();
    if !available(&[Flavour::Bind, Flavour::Knot]) {
        return;
    }
    let (bind, knot) = (
        Authoritative::start(Flavour::Bind).await,
        Authoritative::start(Flavour::Knot).await,
    );
    let cluster = Cluster::start(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let (bs, ks) = (dir.join("bind.key"), dir.join("knot.key"));
    std::fs::write(&bs, &bind.secret).unwrap();
    std::fs::write(&ks, &knot.secret).unwrap();
    cluster
        .init_with(&dns_policy_reconciling_every(
            &[(&bind, &bs), (&knot, &ks)],
            3_600_000,
        ))
        .await;
    let before = [
        arbiter::dns::soa_serial(&server(&bind, &bs), ZONE)
            .await
            .unwrap(),
        arbiter::dns::soa_serial(&server(&knot, &ks), ZONE)
            .await
            .unwrap(),
    ];
    let op = failover(&cluster.client(), "checkout", "region-b")
        .await
        .expect("failover");
    let dns_step = op.steps.iter().find(|s| s.step == "dns").unwrap();
    assert!(dns_step.detail.contains("updated"), "{}", dns_step.detail);
    for (i, (s, secret)) in [(&bind, &bs), (&knot, &ks)].into_iter().enumerate() {
        let srv = server(s, secret);
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .unwrap();
        assert_eq!(
            a,
            ["198.51.100.20"],
            "{:?} answers the new region",
            s.flavour
        );
        let serial = arbiter::dns::soa_serial(&srv, ZONE).await.unwrap();
        assert!(
            serial > before[i],
            "{:?} serial {} -> {serial}",
            s.flavour,
            before[i]
        );
        let marker = arbiter::dns::read_marker(&srv, NAME).await.unwrap();
        assert_eq!(
            marker.texts,
            [format!(
                "arbiter/1 group=checkout epoch={} policy=1 region=region-b",
                op.to_epoch
            )],
            "{:?} names the decision in its marker",
            s.flavour
        );
    }

    tracing::info!("--- dns check: every source matches; then a hand edit on BIND shows up");
    let client = cluster.client();
    let check = || async { client.dns_check().await.unwrap().sources };
    let sources = check().await;
    assert_eq!(sources.len(), 3, "embedded + BIND + Knot: {sources:?}");
    assert!(
        sources
            .iter()
            .all(|s| s.matches && s.expected == ["A 198.51.100.20"]),
        "{sources:?}"
    );
    let rogue = arbiter::config::RecordSet {
        kind: RecordKind::A,
        values: vec!["203.0.113.66".into()],
    };
    arbiter::dns::replace_rrset(&server(&bind, &bs), NAME, 30, &rogue, &[RecordKind::A])
        .await
        .unwrap();
    let sources = check().await;
    let b = sources
        .iter()
        .find(|s| s.source == format!("server {}", bind.addr))
        .unwrap();
    assert!(!b.matches && b.found == ["A 203.0.113.66"], "{b:?}");
    assert!(sources
        .iter()
        .filter(|s| s.source != b.source)
        .all(|s| s.matches));

    tracing::info!("--- dns check: a marker deleted by hand on Knot is drift of its own");
    knot.nsupdate(&format!(
        "update delete {} TXT",
        arbiter::dns::marker_name(NAME)
    ));
    let sources = check().await;
    let k = sources
        .iter()
        .find(|s| s.source == format!("server {}", knot.addr))
        .unwrap();
    assert!(
        !k.matches && k.found == ["A 198.51.100.20"] && k.marker_found.is_empty(),
        "{k:?}"
    );
    assert!(
        k.marker_problem.starts_with("no marker at _arbiter."),
        "{k:?}"
    );
    assert!(
        k.marker_expected
            .contains(&format!("epoch={}", op.to_epoch)),
        "{k:?}"
    );
    cluster.stop().await;
}

/// Goal: a wrong TSIG secret makes the dns step fail with an error saying the signature was
/// rejected; the operation halts visibly; once the secret is fixed, `retry` completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tsig_secret_halts_the_operation_until_fixed() {
    init_tracing();
    if !available(&[Flavour::Bind]) {
        return;
    }
    let bind = Authoritative::start(Flavour::Bind).await;
    let cluster = Cluster::start(3).await;
    let secret = cluster.dir.path().join("bind.key");
    std::fs::write(&secret, common::authoritative::random_secret()).unwrap();
    cluster.init_with(&dns_policy(&[(&bind, &secret)])).await;
    let client = cluster.client();
    let op = start_failover(&client, "checkout", "region-b")
        .await
        .unwrap();
    let halted = wait_operation(&client, op.id, "halted").await;
    assert_eq!(halted.step, "dns");
    assert!(
        halted.error.contains("rejected the TSIG signature"),
        "{}",
        halted.error
    );
    assert!(!halted.error.contains(&bind.secret), "no secret in errors");
    let a = arbiter::dns::query_rrset(&server(&bind, &secret), NAME, RecordKind::A)
        .await
        .unwrap();
    assert_eq!(a, INITIAL_A, "a refused update changed nothing on BIND");

    tracing::info!("--- fix the secret and retry");
    std::fs::write(&secret, &bind.secret).unwrap();
    client
        .retry(proto::OperationAction {
            operation: op.id,
            ..Default::default()
        })
        .await
        .expect("retry");
    wait_operation(&client, op.id, "done").await;
    let a = arbiter::dns::query_rrset(&server(&bind, &secret), NAME, RecordKind::A)
        .await
        .unwrap();
    assert_eq!(a, ["198.51.100.20"]);
    cluster.stop().await;
}

/// Goal: a record changed by hand on BIND is restored to the committed state by the
/// reconciler within its interval, and the repair is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_repairs_drift_and_audits_it() {
    init_tracing();
    if !available(&[Flavour::Bind]) {
        return;
    }
    let bind = Authoritative::start(Flavour::Bind).await;
    let cluster = Cluster::start(3).await;
    let secret = cluster.dir.path().join("bind.key");
    std::fs::write(&secret, &bind.secret).unwrap();
    cluster.init_with(&dns_policy(&[(&bind, &secret)])).await;
    let srv = server(&bind, &secret);
    let client = cluster.client();
    // The zone file holds other records and no marker: only the cluster can produce these.
    eventually(
        "the committed region-a records are published with their marker",
        || async {
            let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
                .await
                .ok()?;
            let marker = arbiter::dns::read_marker(&srv, NAME).await.ok()?;
            (a == REGION_A_RECORDS && marker.texts == [marker_text(1, "region-a")]).then_some(())
        },
    )
    .await;
    // The repair is recorded once the server took it, so it may trail the answer.
    let repair = eventually(
        "the first publication (no marker yet) is a repair on record",
        || async {
            status(&client)
                .await
                .audit
                .into_iter()
                .find(|e| e.kind == "dns-repair")
        },
    )
    .await;
    assert!(
        repair.detail.contains("no marker")
            && INITIAL_A.iter().all(|a| repair.detail.contains(a))
            && repair.detail.contains("repaired to region-a at epoch 1"),
        "the repair names what the server held: {repair:?}"
    );

    tracing::info!("--- someone changes the record by hand");
    let rogue = arbiter::config::RecordSet {
        kind: RecordKind::A,
        values: vec!["203.0.113.66".into()],
    };
    arbiter::dns::replace_rrset(&srv, NAME, 30, &rogue, &[RecordKind::A])
        .await
        .unwrap();
    eventually("the reconciler restores the committed records", || async {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .ok()?;
        (a == REGION_A_RECORDS).then_some(())
    })
    .await;
    let s = eventually("the repair is audited", || async {
        let s = status(&client).await;
        s.audit
            .iter()
            .any(|e| e.kind == "dns-repair" && e.detail.contains("203.0.113.66"))
            .then_some(s)
    })
    .await;
    assert!(s
        .audit
        .iter()
        .any(|e| e.kind == "dns-repair" && e.group == "checkout"));
    cluster.stop().await;
}

/// Reconcile interval of [`a_cut_off_leader_never_repairs_from_its_stale_state`]: short, so
/// the witness that must not repair gets several chances to.
const FAST_RECONCILE_MS: u64 = 1_000;
/// How long that test watches the server for a repair that must not come: several intervals.
const NO_REPAIR_WATCH: Duration = Duration::from_millis(4 * FAST_RECONCILE_MS);

/// Goal: a leader cut off from the others (still `Leader` in its own eyes: openraft keeps a
/// leader without quorum there) never repairs an external server from its stale state, and
/// once the cluster heals the committed state is republished (S3, S5).
/// Method: 3 witnesses and BIND, reconciling every second. Cut the leader's links; the other
/// two elect a leader and fail the group over to region-b. Stop those two, so the cut-off
/// witness is the only one that could touch BIND, and wipe BIND by hand: no records and no
/// marker, so no prerequisite stands in the way and only the leadership confirmation can
/// stop a repair. For several intervals BIND must stay empty (without the linearizable
/// read the cut-off witness republishes its region-a there). Then restart the two and heal
/// the links: the cluster's leader republishes region-b with its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_never_repairs_from_its_stale_state() {
    init_tracing();
    if !available(&[Flavour::Bind]) {
        return;
    }
    let mut bind = Authoritative::start(Flavour::Bind).await;
    let mut cluster = Cluster::start(3).await;
    let secret = cluster.dir.path().join("bind.key");
    std::fs::write(&secret, &bind.secret).unwrap();
    cluster
        .init_with(&dns_policy_reconciling_every(
            &[(&bind, &secret)],
            FAST_RECONCILE_MS,
        ))
        .await;
    let srv = server(&bind, &secret);
    eventually("region-a is published with its marker", || async {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .ok()?;
        let marker = arbiter::dns::read_marker(&srv, NAME).await.ok()?;
        (a == REGION_A_RECORDS && marker.texts == [marker_text(1, "region-a")]).then_some(())
    })
    .await;

    let cut = cluster.leader().await;
    tracing::info!(
        cut,
        "--- cut the leader off; the other two fail over to region-b"
    );
    cluster.isolate(cut);
    let others: Vec<u64> = cluster
        .witnesses
        .iter()
        .map(|w| w.id)
        .filter(|id| *id != cut)
        .collect();
    let majority = arbiter::client::Client::new(
        cluster
            .witnesses
            .iter()
            .filter(|w| w.id != cut)
            .map(|w| w.addr.to_string())
            .collect(),
        &cluster.certs.client,
    )
    .unwrap();
    let op = failover(&majority, "checkout", "region-b")
        .await
        .expect("the majority fails over");
    eventually("BIND publishes region-b", || async {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .ok()?;
        let marker = arbiter::dns::read_marker(&srv, NAME).await.ok()?;
        (a == ["198.51.100.20"] && marker.texts == [marker_text(op.to_epoch, "region-b")])
            .then_some(())
    })
    .await;
    let stale = cluster.witnesses[cut as usize - 1].node().consensus.clone();
    assert!(
        stale.is_leader(),
        "the cut-off witness still takes itself for the leader (else this test shows nothing)"
    );
    assert_eq!(
        stale.with_state(|s| s.groups["checkout"].active.clone()),
        "region-a",
        "its applied state is stale"
    );

    tracing::info!("--- stop the two, wipe BIND by hand");
    for id in &others {
        cluster.witness(*id).kill().await;
    }
    bind.wipe().await;

    tracing::info!(
        ?NO_REPAIR_WATCH,
        "--- the cut-off witness must repair nothing"
    );
    let watch_until = tokio::time::Instant::now() + NO_REPAIR_WATCH;
    while tokio::time::Instant::now() < watch_until {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .unwrap();
        let marker = arbiter::dns::read_marker(&srv, NAME).await.unwrap();
        assert!(
            a.is_empty() && marker.texts.is_empty(),
            "the cut-off witness published its stale state: A {a:?}, marker {:?} (region-a is {REGION_A_RECORDS:?})",
            marker.texts
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stale.is_leader(), "it had every chance to repair");

    tracing::info!("--- restart the two and heal: the committed state is republished");
    for id in &others {
        cluster.witness(*id).restart().await;
    }
    cluster.heal();
    eventually("BIND publishes region-b with its marker again", || async {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .ok()?;
        let marker = arbiter::dns::read_marker(&srv, NAME).await.ok()?;
        (a == ["198.51.100.20"] && marker.texts == [marker_text(op.to_epoch, "region-b")])
            .then_some(())
    })
    .await;
    cluster.stop().await;
}
