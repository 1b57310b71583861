//! The `dns` step and the drift reconciler against real BIND9 and Knot: a failover publishes
//! the new region's records on both servers; a wrong TSIG secret halts the operation with a
//! clear error until the secret is fixed; a record changed by hand is repaired and audited.

mod common;

use std::path::Path;

use arbiter::config::{RecordKind, TsigAlgorithm};
use arbiter::proto;
use common::authoritative::{available, Authoritative, Flavour, KEY_NAME, NAME, ZONE};
use common::*;

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
        "[groups.dns]\nzone = \"{ZONE}\"\nname = \"{NAME}\"\nttl = 30\nrecords = {{ region-a = {{ type = \"A\", values = [\"192.0.2.10\", \"192.0.2.11\"] }}, region-b = {{ type = \"A\", values = [\"198.51.100.20\"] }} }}\n"
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

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "manual"
lease_ms = 1000
lease_margin_ms = 200
step_attempts = 2
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
    }

    tracing::info!("--- dns check: every source matches; then a hand edit on BIND shows up");
    let client = cluster.client();
    let check = || async {
        client
            .call(|mut c| async move { c.dns_check(proto::DnsCheckRequest {}).await })
            .await
            .unwrap()
            .sources
    };
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

    tracing::info!("--- fix the secret and retry");
    std::fs::write(&secret, &bind.secret).unwrap();
    let req = proto::OperationAction {
        operation: op.id,
        ..Default::default()
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.retry(req).await }
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
    eventually("the committed region-a records are published", || async {
        let a = arbiter::dns::query_rrset(&srv, NAME, RecordKind::A)
            .await
            .ok()?;
        (a == ["192.0.2.10", "192.0.2.11"]).then_some(())
    })
    .await;

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
        (a == ["192.0.2.10", "192.0.2.11"]).then_some(())
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
