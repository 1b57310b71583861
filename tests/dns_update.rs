//! RFC 2136 updates against real authoritative servers: BIND9 and Knot run as child processes
//! on loopback (see `common/authoritative.rs`); every test runs against each of them. Nothing
//! is mocked: what a test asserts is what the server answers to a plain query afterwards.

mod common;

use std::future::Future;
use std::time::Duration;

use arbiter::config::{RecordKind, RecordSet};
use arbiter::dns::{self, DnsUpdateError};
use common::authoritative::{
    available, random_secret, Authoritative, Flavour, INITIAL_A, LOCKED_ZONE, NAME, ZONE,
};

/// Bound on one whole test: server start (well under a second) plus a few exchanges.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
const TTL: u32 = 30;

/// Runs `body` for `flavour` within [`TEST_DEADLINE`], or skips (see [`available`]).
async fn run<F, Fut>(flavours: &[Flavour], body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    common::init_tracing();
    if !available(flavours) {
        return;
    }
    tokio::time::timeout(TEST_DEADLINE, body())
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {TEST_DEADLINE:?}"));
}

/// One test function per server flavour: `<behaviour>::bind` and `<behaviour>::knot`.
macro_rules! on_both_servers {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            #[tokio::test]
            async fn bind() {
                super::run(&[super::Flavour::Bind], || super::$behaviour(super::Flavour::Bind))
                    .await
            }
            #[tokio::test]
            async fn knot() {
                super::run(&[super::Flavour::Knot], || super::$behaviour(super::Flavour::Knot))
                    .await
            }
        }
    )*};
}

on_both_servers!(
    publish_replaces_the_record_set_in_one_update,
    a_to_cname_and_back,
    wrong_secret_is_bad_signature_and_changes_nothing,
    unknown_key_is_bad_key,
    zone_the_key_may_not_update_is_refused,
);

fn a_set(values: &[&str]) -> RecordSet {
    RecordSet {
        kind: RecordKind::A,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Goal: `publish` replaces checkout's A records with the new region's, atomically.
/// Method: read the initial set and serial, publish a disjoint set, then query: exactly the
/// new values, none of the old, and the serial moved by exactly one (one zone version, so
/// no resolver could have seen a mix). The drift check sees the difference before and
/// nothing after.
async fn publish_replaces_the_record_set_in_one_update(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);

    tracing::info!("--- initial state");
    let before = dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap();
    assert_eq!(before, strings(&INITIAL_A));
    let serial_before = dns::soa_serial(&target, ZONE).await.unwrap();
    let new = a_set(&["198.51.100.11", "198.51.100.10"]);
    let drift = dns::drift(&target, NAME, &new, &[]).await.unwrap();
    assert_eq!(
        drift.len(),
        1,
        "old records differ from the new set: {drift:?}"
    );
    assert_eq!(drift[0].found, strings(&INITIAL_A));

    tracing::info!("--- publish region-b's records");
    let report = dns::publish(
        std::slice::from_ref(&target),
        ZONE,
        NAME,
        TTL,
        &new,
        &[RecordKind::A],
    )
    .await;
    assert!(report.all_ok(), "{report:?}");
    let serial_after = *report.outcomes[0].result.as_ref().unwrap();

    tracing::info!("--- the server publishes exactly the new set");
    let after = dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap();
    assert_eq!(after, strings(&["198.51.100.10", "198.51.100.11"]));
    assert!(after.iter().all(|v| !INITIAL_A.contains(&v.as_str())));
    assert_eq!(
        serial_after,
        serial_before + 1,
        "one UPDATE message is one zone version"
    );
    assert!(dns::drift(&target, NAME, &new, &[RecordKind::CNAME])
        .await
        .unwrap()
        .is_empty());

    tracing::info!("--- publishing the same set again is harmless (a retried step)");
    let again = dns::publish(
        std::slice::from_ref(&target),
        ZONE,
        NAME,
        TTL,
        &new,
        &[RecordKind::A],
    )
    .await;
    assert!(again.all_ok(), "{again:?}");
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        after
    );
}

/// Goal: a region published as a CNAME replaces another region's A records, and back.
/// Method: A -> CNAME with `old_kinds = [A]`: the CNAME (normalised lowercase) is there and
/// no A is left; then CNAME -> A with `old_kinds = [CNAME]`.
async fn a_to_cname_and_back(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let cname = RecordSet {
        kind: RecordKind::CNAME,
        values: vec!["Checkout.Region-B.Example.NET.".into()],
    };

    tracing::info!("--- A -> CNAME");
    let report = dns::replace_rrset(&target, NAME, TTL, &cname, &[RecordKind::A])
        .await
        .unwrap();
    assert_eq!(report.deleted, vec![RecordKind::A, RecordKind::CNAME]);
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::CNAME)
            .await
            .unwrap(),
        strings(&["checkout.region-b.example.net."])
    );
    assert!(dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap()
        .is_empty());
    assert!(dns::drift(&target, NAME, &cname, &[RecordKind::A])
        .await
        .unwrap()
        .is_empty());

    tracing::info!("--- CNAME -> A");
    let back = a_set(&["192.0.2.20"]);
    dns::replace_rrset(&target, NAME, TTL, &back, &[RecordKind::CNAME])
        .await
        .unwrap();
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&["192.0.2.20"])
    );
    assert!(dns::query_rrset(&target, NAME, RecordKind::CNAME)
        .await
        .unwrap()
        .is_empty());
}

/// Goal: a secret that does not match the server's key is reported as exactly that, and the
/// server changes nothing. Method: sign with a fresh random secret under the right key name;
/// expect `BadSignature` with the clear message (and no secret in it), then check records
/// and serial are untouched.
async fn wrong_secret_is_bad_signature_and_changes_nothing(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let good = server.server(ZONE);
    let wrong_secret = random_secret();
    let bad = server.server_with(ZONE, common::authoritative::KEY_NAME, &wrong_secret);
    let serial_before = dns::soa_serial(&good, ZONE).await.unwrap();

    let error = dns::replace_rrset(&bad, NAME, TTL, &a_set(&["203.0.113.1"]), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(error, DnsUpdateError::BadSignature { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(
            "the server rejected the TSIG signature: the secret does not match the server's key"
        ),
        "{text}"
    );
    assert!(!text.contains(&wrong_secret) && !text.contains(&server.secret));

    assert_eq!(
        dns::query_rrset(&good, NAME, RecordKind::A).await.unwrap(),
        strings(&INITIAL_A)
    );
    assert_eq!(dns::soa_serial(&good, ZONE).await.unwrap(), serial_before);
}

/// Goal: a key name the server does not know is `BadKey`, not a signature problem.
async fn unknown_key_is_bad_key(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let stranger = server.server_with(ZONE, "nobody-knows-this-key.", &random_secret());
    let error = dns::replace_rrset(&stranger, NAME, TTL, &a_set(&["203.0.113.1"]), &[])
        .await
        .unwrap_err();
    assert!(matches!(error, DnsUpdateError::BadKey { .. }), "{error:?}");
    assert_eq!(
        dns::query_rrset(&server.server(ZONE), NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&INITIAL_A)
    );
}

/// Goal: a valid key used on a zone it may not update gets a specific error, and the zone is
/// unchanged. BIND answers REFUSED (`Refused`). Knot answers NOTAUTH with TSIG error BADKEY,
/// exactly as for a key it does not know, so arbiter can only say `BadKey` naming both
/// causes; the test pins each server's answer so a change in either is noticed.
async fn zone_the_key_may_not_update_is_refused(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let locked = server.server(LOCKED_ZONE);
    let name = "checkout.locked.example.";
    let serial_before = dns::soa_serial(&locked, LOCKED_ZONE).await.unwrap();
    let error = dns::replace_rrset(&locked, name, TTL, &a_set(&["203.0.113.1"]), &[])
        .await
        .unwrap_err();
    tracing::info!(?flavour, %error, "update of the locked zone");
    match flavour {
        Flavour::Bind => assert!(matches!(error, DnsUpdateError::Refused { .. }), "{error:?}"),
        Flavour::Knot => {
            assert!(matches!(error, DnsUpdateError::BadKey { .. }), "{error:?}");
            assert!(error.to_string().contains("no ACL of the zone"), "{error}");
        }
    }
    assert_eq!(
        dns::query_rrset(&locked, name, RecordKind::A)
            .await
            .unwrap(),
        strings(&INITIAL_A)
    );
    assert_eq!(
        dns::soa_serial(&locked, LOCKED_ZONE).await.unwrap(),
        serial_before
    );
}

/// Goal: one server down does not keep the others from being updated, and the report says
/// which one failed. Method: BIND and Knot both serve the zone; stop Knot; publish to both:
/// BIND is updated and reports its serial, Knot's entry is an I/O error, and publish
/// returns within about one server timeout.
#[tokio::test]
async fn a_stopped_server_does_not_block_the_others() {
    run(&[Flavour::Bind, Flavour::Knot], || async {
        let bind = Authoritative::start(Flavour::Bind).await;
        let mut knot = Authoritative::start(Flavour::Knot).await;
        let servers = vec![bind.server(ZONE), knot.server(ZONE)];

        tracing::info!("--- stop knot, publish to both");
        knot.stop();
        let new = a_set(&["198.51.100.10"]);
        let start = tokio::time::Instant::now();
        let report = dns::publish(&servers, ZONE, NAME, TTL, &new, &[RecordKind::A]).await;
        let took = start.elapsed();
        tracing::info!(?report, ?took, "publish report");

        assert_eq!(report.outcomes.len(), 2);
        assert_eq!(report.outcomes[0].server, bind.addr.to_string());
        assert!(report.outcomes[0].result.is_ok(), "{report:?}");
        let failed: Vec<_> = report.failed().collect();
        assert_eq!(failed.len(), 1, "{report:?}");
        assert_eq!(failed[0].0, knot.addr.to_string());
        assert!(
            matches!(
                failed[0].1,
                DnsUpdateError::Io { .. } | DnsUpdateError::Timeout { .. }
            ),
            "{:?}",
            failed[0].1
        );
        assert!(
            took < Duration::from_millis(2 * servers[1].timeout_ms + 1_000),
            "{took:?}"
        );
        assert_eq!(
            dns::query_rrset(&servers[0], NAME, RecordKind::A)
                .await
                .unwrap(),
            strings(&["198.51.100.10"])
        );
    })
    .await;
}

/// Goal: a server that accepts the connection but never answers costs its timeout and no
/// more, while the other server is updated. Method: a loopback listener that accepts and
/// stays silent stands in for a hung server next to a real BIND.
#[tokio::test]
async fn a_hung_server_times_out_without_blocking_the_others() {
    run(&[Flavour::Bind], || async {
        let bind = Authoritative::start(Flavour::Bind).await;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let mut hung = bind.server(ZONE);
        hung.address = silent_addr.to_string();
        hung.timeout_ms = 500;
        let servers = vec![hung, bind.server(ZONE)];

        let start = tokio::time::Instant::now();
        let report = dns::publish(&servers, ZONE, NAME, TTL, &a_set(&["198.51.100.99"]), &[]).await;
        let took = start.elapsed();
        hold.abort();

        assert_eq!(
            report.outcomes[0].result,
            Err(DnsUpdateError::Timeout { timeout_ms: 500 })
        );
        assert!(report.outcomes[1].result.is_ok(), "{report:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    })
    .await;
}
