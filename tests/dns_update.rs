//! RFC 2136 updates against real authoritative servers: BIND9 and Knot run as child processes
//! on loopback (see `common/authoritative.rs`); every test runs against each of them. Nothing
//! is mocked: what a test asserts is what the server answers to a plain query afterwards, and
//! a refused UPDATE is refused by the server itself (its RFC 2136 prerequisite on the
//! `_arbiter.` marker), not by a check of ours.

mod common;

use std::future::Future;
use std::time::Duration;

use arbiter::config::{RecordKind, RecordSet};
use arbiter::dns::{
    self, Decision, DnsUpdateError, Issued, MarkerRead, MarkerVerdict, Publication, Published,
};
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
    a_late_update_of_an_older_decision_never_overwrites_a_newer_one,
    first_publication_creates_the_marker_only_where_there_is_none,
    a_server_wiped_by_hand_is_republished_and_refuses_updates_prepared_before,
    a_marker_beyond_any_issued_epoch_is_reported_and_never_overwritten,
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

/// The publication of group `checkout` with `region`'s records `set`, decided at `epoch`
/// under policy version 1, by a publisher that knows of nothing issued beyond it.
fn publication(region: &str, set: &RecordSet, epoch: u64) -> Publication {
    Publication {
        zone: ZONE.to_string(),
        name: NAME.to_string(),
        ttl: TTL,
        set: set.clone(),
        old_kinds: vec![RecordKind::A, RecordKind::CNAME],
        decision: Decision {
            group: "checkout".to_string(),
            region: region.to_string(),
            epoch,
            policy_version: 1,
        },
        issued: Issued {
            epoch,
            policy_version: 1,
        },
    }
}

/// The marker texts the server holds now.
async fn marker(server: &arbiter::config::DnsServer) -> Vec<String> {
    dns::read_marker(server, NAME).await.unwrap().texts
}

/// Publishes `p` on `server` alone and returns what it came to.
async fn publish_one(
    server: &arbiter::config::DnsServer,
    p: &Publication,
) -> Result<Published, DnsUpdateError> {
    let report = dns::publish(std::slice::from_ref(server), p).await;
    assert_eq!(report.outcomes.len(), 1, "{report:?}");
    report.outcomes.into_iter().next().unwrap().result
}

/// Goal: `publish` replaces checkout's A records with the new region's and sets the marker,
/// atomically. Method: read the initial set and serial, publish a disjoint set, then query:
/// exactly the new values, none of the old, the marker naming the decision, and the serial
/// moved by exactly one (one zone version, so no resolver could have seen a mix). The drift
/// check sees the difference (records and a missing marker) before and nothing after.
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
    let p = publication("region-b", &new, 2);
    let drift = dns::drift(&target, &p).await.unwrap();
    assert_eq!(
        drift.records.len(),
        1,
        "old records differ from the new set: {drift:?}"
    );
    assert_eq!(drift.records[0].found, strings(&INITIAL_A));
    assert_eq!(drift.marker, MarkerVerdict::Absent);
    assert!(drift.needs_repair());

    tracing::info!("--- publish region-b's records");
    let serial_after = match publish_one(&target, &p).await {
        Ok(Published::Updated { serial, replaced }) => {
            assert_eq!(replaced, MarkerVerdict::Absent);
            serial
        }
        other => panic!("{other:?}"),
    };

    tracing::info!("--- the server publishes exactly the new set and the marker");
    let after = dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap();
    assert_eq!(after, strings(&["198.51.100.10", "198.51.100.11"]));
    assert!(after.iter().all(|v| !INITIAL_A.contains(&v.as_str())));
    assert_eq!(
        marker(&target).await,
        ["arbiter/1 group=checkout epoch=2 policy=1 region=region-b"]
    );
    assert_eq!(
        serial_after,
        serial_before + 1,
        "one UPDATE message is one zone version"
    );
    let drift = dns::drift(&target, &p).await.unwrap();
    assert!(
        drift.records.is_empty() && drift.marker == MarkerVerdict::Same,
        "{drift:?}"
    );
    assert!(!drift.needs_repair());

    tracing::info!("--- publishing the same decision again is harmless (a retried step)");
    match publish_one(&target, &p).await {
        Ok(Published::Updated { replaced, .. }) => assert_eq!(replaced, MarkerVerdict::Same),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        after
    );
}

/// Goal: a region published as a CNAME replaces another region's A records, and back, with
/// the marker beside the CNAME (a CNAME stands alone at its own name only). Method: A ->
/// CNAME as a first publication: the CNAME (normalised lowercase) is there, no A is left,
/// and the marker names epoch 2; then CNAME -> A at epoch 3, read afresh.
async fn a_to_cname_and_back(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let cname = RecordSet {
        kind: RecordKind::CNAME,
        values: vec!["Checkout.Region-B.Example.NET.".into()],
    };

    tracing::info!("--- A -> CNAME");
    let to_cname = publication("region-b", &cname, 2);
    let report = dns::conditional_replace(&target, &to_cname, &MarkerRead::absent(NAME))
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
    let drift = dns::drift(&target, &to_cname).await.unwrap();
    assert!(
        drift.records.is_empty() && drift.marker == MarkerVerdict::Same,
        "{drift:?}"
    );

    tracing::info!("--- CNAME -> A");
    let back = a_set(&["192.0.2.20"]);
    match publish_one(&target, &publication("region-a", &back, 3)).await {
        Ok(Published::Updated { replaced, .. }) => {
            assert_eq!(replaced, MarkerVerdict::Older(to_cname.decision.clone()))
        }
        other => panic!("{other:?}"),
    }
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
        let report = dns::publish(&servers, &publication("region-b", &new, 2)).await;
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

/// The hung server's timeout: long enough that BIND's update, on a loaded machine, lands
/// well inside it.
const HUNG_TIMEOUT_MS: u64 = 10_000;

/// Goal: a server that accepts the connection but never answers costs its timeout and no
/// more, while the other server is updated. Method: a loopback listener that accepts and
/// stays silent stands in for a hung server next to a real BIND. BIND must answer the new
/// record while the publication still waits for the hung server (so its update did not
/// wait for it), and the publication ends after the hung server's timeout and well before
/// a second one (it waited that timeout once).
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
        hung.timeout_ms = HUNG_TIMEOUT_MS;
        let servers = vec![hung, bind.server(ZONE)];
        let bind_server = bind.server(ZONE);

        let start = tokio::time::Instant::now();
        let publishing = tokio::spawn({
            let servers = servers.clone();
            async move {
                dns::publish(
                    &servers,
                    &publication("region-b", &a_set(&["198.51.100.99"]), 2),
                )
                .await
            }
        });
        common::eventually("BIND answers the new record", || async {
            let a = dns::query_rrset(&bind_server, NAME, RecordKind::A)
                .await
                .ok()?;
            (a == strings(&["198.51.100.99"])).then_some(())
        })
        .await;
        assert!(
            !publishing.is_finished(),
            "BIND was updated while the publication still waited for the hung server"
        );
        let report = publishing.await.unwrap();
        let took = start.elapsed();
        hold.abort();

        assert_eq!(
            report.outcomes[0].result,
            Err(DnsUpdateError::Timeout {
                timeout_ms: HUNG_TIMEOUT_MS
            })
        );
        assert!(report.outcomes[1].result.is_ok(), "{report:?}");
        let timeout = Duration::from_millis(HUNG_TIMEOUT_MS);
        assert!(
            took >= timeout && took < 2 * timeout,
            "one timeout of {timeout:?}, not more: {took:?}"
        );
    })
    .await;
}

/// Goal: the UPDATE of an older decision that reaches a server late (sent by a leader that
/// died at the dns step, delayed in the network) never replaces a newer decision's records:
/// the server itself refuses it. Method: epoch 1 (region-a) is published. The old leader
/// decides epoch 3 (region-b): it reads the marker (epoch 1) and its UPDATE, built on that
/// read, is held back. The new leader publishes epoch 5 (region-c). Then the held UPDATE is
/// sent (`conditional_replace` with the old read: exactly the bytes the dead leader would
/// have sent): the server answers that its prerequisite failed and changes nothing. The old
/// leader, if still alive, reads again and stops: the server names a newer decision. The
/// serial shows that nothing was applied after the newer decision.
async fn a_late_update_of_an_older_decision_never_overwrites_a_newer_one(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let region_a = a_set(&INITIAL_A);
    let region_b = a_set(&["198.51.100.10"]);
    let region_c = a_set(&["203.0.113.30"]);

    tracing::info!("--- epoch 1 (region-a) is published");
    let first = publish_one(&target, &publication("region-a", &region_a, 1)).await;
    assert!(matches!(first, Ok(Published::Updated { .. })), "{first:?}");

    tracing::info!(
        "--- the old leader reads the marker for epoch 3 (region-b); its UPDATE is held"
    );
    let old_leader = publication("region-b", &region_b, 3);
    let stale_read = dns::read_marker(&target, NAME).await.unwrap();
    assert_eq!(
        stale_read.verdict(&old_leader),
        MarkerVerdict::Older(publication("region-a", &region_a, 1).decision)
    );

    tracing::info!("--- the new leader publishes epoch 5 (region-c)");
    let new_leader = publication("region-c", &region_c, 5);
    let newer = publish_one(&target, &new_leader).await;
    assert!(matches!(newer, Ok(Published::Updated { .. })), "{newer:?}");
    let serial = dns::soa_serial(&target, ZONE).await.unwrap();

    tracing::info!("--- the old leader's delayed UPDATE for epoch 3 arrives");
    let late = dns::conditional_replace(&target, &old_leader, &stale_read).await;
    tracing::info!(?late, "late update");
    assert!(
        matches!(late, Err(DnsUpdateError::PrerequisiteFailed { .. })),
        "the server must refuse an UPDATE built on a marker that moved: {late:?}"
    );

    tracing::info!("--- the old leader, still alive, reads again and publishes nothing");
    // Its state knows of nothing beyond epoch 3, so epoch 5 looks like a hand edit to it: a
    // refusal that waits for an operator (on the real leader it would be accurate).
    let retried = publish_one(&target, &old_leader).await;
    assert!(
        matches!(&retried, Err(e) if e.is_marker_refusal()),
        "{retried:?}"
    );
    // A witness whose state has seen epoch 5 issued, but not yet activated, knows better.
    let mut knows_more = old_leader.clone();
    knows_more.issued.epoch = 5;
    assert_eq!(
        publish_one(&target, &knows_more).await,
        Ok(Published::Superseded {
            by: new_leader.decision.clone()
        })
    );

    tracing::info!("--- the server still publishes the newer decision");
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&["203.0.113.30"]),
        "the older decision (epoch 3) overwrote the newer one (epoch 5)"
    );
    assert_eq!(marker(&target).await, [new_leader.decision.text()]);
    assert_eq!(
        dns::soa_serial(&target, ZONE).await.unwrap(),
        serial,
        "nothing was applied after the newer decision"
    );
}

/// Goal: the first publication on a server (first deployment: no marker yet) creates the
/// marker, and only while there is none: an UPDATE built on "no marker" loses to whichever
/// was applied first, older or newer, and its sender decides again. Method: two publishers
/// read "no marker"; the one deciding epoch 2 publishes; the one deciding epoch 1, and then
/// one deciding epoch 4, send their UPDATEs built on that read: both are refused by the
/// server (YXRRSET). Publishing epoch 4 afresh reads epoch 2 and replaces it.
async fn first_publication_creates_the_marker_only_where_there_is_none(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let (region_a, region_b) = (a_set(&["192.0.2.20"]), a_set(&["198.51.100.20"]));
    let epoch_1 = publication("region-a", &region_a, 1);
    let epoch_2 = publication("region-b", &region_b, 2);
    let epoch_4 = publication("region-a", &region_a, 4);

    tracing::info!("--- no marker yet: both publishers read none");
    let none = dns::read_marker(&target, NAME).await.unwrap();
    assert!(none.texts.is_empty(), "{none:?}");
    assert_eq!(none.verdict(&epoch_2), MarkerVerdict::Absent);
    assert_eq!(
        dns::drift(&target, &epoch_2).await.unwrap().marker,
        MarkerVerdict::Absent
    );

    tracing::info!("--- epoch 2 is published first");
    dns::conditional_replace(&target, &epoch_2, &none)
        .await
        .unwrap();
    assert_eq!(marker(&target).await, [epoch_2.decision.text()]);

    tracing::info!("--- UPDATEs built on \"no marker\" are refused, older or newer");
    for late in [&epoch_1, &epoch_4] {
        let e = dns::conditional_replace(&target, late, &none)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DnsUpdateError::PrerequisiteFailed { .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("_arbiter.checkout.shop.example. TXT changed"),
            "{e}"
        );
    }
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&["198.51.100.20"])
    );

    tracing::info!("--- epoch 4, read afresh, replaces epoch 2");
    match publish_one(&target, &epoch_4).await {
        Ok(Published::Updated { replaced, .. }) => {
            assert_eq!(replaced, MarkerVerdict::Older(epoch_2.decision.clone()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(marker(&target).await, [epoch_4.decision.text()]);
}

/// Goal: a server wiped by hand (zone recreated without the group's records or marker) is
/// seen as drift and republished, and an UPDATE built on the marker it held before the wipe
/// is refused. Method: publish epoch 2; read the marker; wipe the server; the drift check
/// reports the missing records and marker; the UPDATE built on the old read is refused
/// (NXRRSET: the marker it names is gone); publishing again restores records and marker.
async fn a_server_wiped_by_hand_is_republished_and_refuses_updates_prepared_before(
    flavour: Flavour,
) {
    let mut server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let set = a_set(&["198.51.100.20"]);
    let epoch_2 = publication("region-b", &set, 2);
    publish_one(&target, &epoch_2).await.unwrap();
    let before_wipe = dns::read_marker(&target, NAME).await.unwrap();
    assert_eq!(before_wipe.texts, [epoch_2.decision.text()]);

    tracing::info!("--- the server is wiped by hand");
    server.wipe().await;
    assert!(dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap()
        .is_empty());
    let drift = dns::drift(&target, &epoch_2).await.unwrap();
    assert_eq!(drift.marker, MarkerVerdict::Absent, "{drift:?}");
    assert_eq!(drift.records.len(), 1, "{drift:?}");
    assert!(drift.needs_repair());

    tracing::info!("--- an UPDATE built before the wipe is refused");
    let in_flight = publication("region-a", &a_set(&["192.0.2.30"]), 3);
    let e = dns::conditional_replace(&target, &in_flight, &before_wipe)
        .await
        .unwrap_err();
    assert!(
        matches!(e, DnsUpdateError::PrerequisiteFailed { .. }),
        "{e:?}"
    );
    assert!(dns::query_rrset(&target, NAME, RecordKind::A)
        .await
        .unwrap()
        .is_empty());

    tracing::info!("--- the committed decision is republished");
    match publish_one(&target, &epoch_2).await {
        Ok(Published::Updated { replaced, .. }) => assert_eq!(replaced, MarkerVerdict::Absent),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&["198.51.100.20"])
    );
    assert_eq!(marker(&target).await, [epoch_2.decision.text()]);
    assert!(!dns::drift(&target, &epoch_2).await.unwrap().needs_repair());
}

/// Goal: a marker edited to an epoch beyond anything the cluster issued is reported with the
/// operator's fix and never overwritten (no loop, nothing sent); after the fix the committed
/// decision is published. Method: a marker at epoch 999 is written (standing for the hand
/// edit); publishing epoch 6 (nothing issued beyond 6) fails at once with `MarkerAhead`
/// naming the marker and the nsupdate command, and the serial does not move; the drift check
/// does not call it repairable. Then the operator runs exactly that command with nsupdate,
/// and epoch 6 is published.
async fn a_marker_beyond_any_issued_epoch_is_reported_and_never_overwritten(flavour: Flavour) {
    let server = Authoritative::start(flavour).await;
    let target = server.server(ZONE);
    let bogus = publication("region-c", &a_set(&["203.0.113.99"]), 999);
    publish_one(&target, &bogus).await.unwrap();
    let serial = dns::soa_serial(&target, ZONE).await.unwrap();

    tracing::info!("--- the leader publishes epoch 6: refused with the fix");
    let epoch_6 = publication("region-b", &a_set(&["198.51.100.20"]), 6);
    let started = tokio::time::Instant::now();
    let e = publish_one(&target, &epoch_6).await.unwrap_err();
    tracing::info!(error = %e, took = ?started.elapsed(), "refused");
    assert!(e.is_marker_refusal(), "{e:?}");
    let text = e.to_string();
    for part in [
        "_arbiter.checkout.shop.example. TXT says group checkout published region-c at epoch 999",
        "beyond anything this cluster issued (epoch 6, policy version 1,",
        "`update delete _arbiter.checkout.shop.example. TXT`",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert_eq!(dns::soa_serial(&target, ZONE).await.unwrap(), serial);
    let drift = dns::drift(&target, &epoch_6).await.unwrap();
    assert!(!drift.needs_repair(), "{drift:?}");
    assert_eq!(drift.marker_found, [bogus.decision.text()]);

    tracing::info!("--- the operator deletes the marker; the decision is published");
    server.nsupdate("update delete _arbiter.checkout.shop.example. TXT");
    match publish_one(&target, &epoch_6).await {
        Ok(Published::Updated { replaced, .. }) => assert_eq!(replaced, MarkerVerdict::Absent),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        dns::query_rrset(&target, NAME, RecordKind::A)
            .await
            .unwrap(),
        strings(&["198.51.100.20"])
    );
}
