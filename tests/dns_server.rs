//! The embedded authoritative DNS server of every witness, queried over real UDP and TCP
//! sockets with hickory-proto messages: answers follow the committed active region through a
//! failover (S5), negative answers carry the SOA, other zones are refused, large UDP answers
//! are truncated and complete over TCP, and `when_isolated = "refuse"` answers SERVFAIL on a
//! witness cut off from its leader.

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use arbiter::dns::server::soa_serial;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use common::policy::CHECKOUT;
use common::*;

/// Every witness runs its DNS server on a free port (UDP and TCP share it).
const DNS_NODE: &str = "\n[dns]\nlisten = \"127.0.0.1:0\"\n";

/// Deadline of one query; loopback answers in microseconds.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// 16 AAAA values under a long name: about 530 bytes, over the 512 of plain UDP.
const BIG_NAME: &str = "a-rather-long-label-that-makes-the-answer-exceed-512-bytes.shop.example.";

fn policy(when_isolated: &str) -> String {
    let big: Vec<String> = (1..=16).map(|i| format!("\"2001:db8::{i:x}\"")).collect();
    format!(
        r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[dns]
zones = [{{ name = "shop.example.", nameservers = ["ns1.shop.example.", "ns2.shop.example."] }}]
when_isolated = "{when_isolated}"
stale_after_ms = 1000
{CHECKOUT}[groups.dns]
zone = "shop.example."
name = "checkout.shop.example."
ttl = 30
records = {{ region-a = {{ type = "A", values = ["192.0.2.10", "192.0.2.11"] }}, region-b = {{ type = "A", values = ["198.51.100.10"] }} }}

[[groups]]
name = "big"
candidates = ["region-a", "region-b"]
mode = "manual"
[groups.dns]
zone = "shop.example."
name = "{BIG_NAME}"
records = {{ region-a = {{ type = "AAAA", values = [{big}] }}, region-b = {{ type = "AAAA", values = ["2001:db8::b"] }} }}
"#,
        big = big.join(", ")
    )
}

fn request(name: &str, kind: RecordType, edns_size: Option<u16>) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    if let Some(size) = edns_size {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

/// One query over UDP (`edns_size`: advertise that buffer size, or no EDNS at all).
async fn udp(addr: SocketAddr, name: &str, kind: RecordType, edns_size: Option<u16>) -> Message {
    let req = request(name, kind, edns_size);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&req.to_vec().unwrap(), addr).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(QUERY_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("udp answer in time")
        .unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, req.metadata.id);
    if edns_size.is_none() {
        assert!(len <= 512, "plain UDP answers fit 512 bytes, got {len}");
    }
    reply
}

/// One query over TCP (two-byte length prefix, RFC 1035 4.2.2).
async fn tcp(addr: SocketAddr, name: &str, kind: RecordType) -> Message {
    let req = request(name, kind, None);
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let bytes = req.to_vec().unwrap();
        s.write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let len = s.read_u16().await.unwrap() as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    };
    let reply = tokio::time::timeout(QUERY_TIMEOUT, exchange)
        .await
        .expect("tcp answer in time");
    assert_eq!(reply.metadata.id, req.metadata.id);
    reply
}

fn addresses(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn soa_in_authority(m: &Message) -> Option<u32> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

fn dns_addrs(cluster: &Cluster) -> Vec<(u64, SocketAddr)> {
    cluster
        .witnesses
        .iter()
        .filter_map(|w| Some((w.id, w.node.as_ref()?.dns_addr()?)))
        .collect()
}

/// Waits until every running witness answers `checkout` A with `want` over UDP and TCP.
async fn all_answer(cluster: &Cluster, want: &[&str]) {
    for (id, addr) in dns_addrs(cluster) {
        eventually(&format!("witness {id} answers {want:?}"), || async move {
            let u = udp(addr, "checkout.shop.example.", RecordType::A, None).await;
            let t = tcp(addr, "checkout.shop.example.", RecordType::A).await;
            (addresses(&u) == want && addresses(&t) == want).then_some(())
        })
        .await;
        let u = udp(addr, "checkout.shop.example.", RecordType::A, None).await;
        assert_eq!(u.metadata.response_code, ResponseCode::NoError);
        assert!(u.metadata.authoritative, "witness {id}: AA set");
    }
}

/// Goal: every witness answers the committed active region over UDP and TCP before and
/// after a failover, never the new region before its activation is applied there (S5);
/// negative answers and other zones follow the DNS rules; a large answer is truncated over
/// UDP and complete over TCP.
/// Method: 3 witnesses with `dns.listen`; query each; fail over while a sampler reads the
/// answering witness's applied state before and after each query: a `region-b` answer must
/// be bracketed by a state that has applied the activation, no witness goes back to
/// region-a, and every witness is sampled before its activation too; query again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_witness_answers_the_committed_region_through_a_failover() {
    let cluster = Cluster::start_with(3, DNS_NODE).await;
    cluster.init_with(&policy("serve")).await;
    let client = cluster.client();
    let addrs = dns_addrs(&cluster);
    assert_eq!(addrs.len(), 3, "every witness runs a DNS server");

    tracing::info!("--- before the failover: region-a everywhere");
    all_answer(&cluster, &["192.0.2.10", "192.0.2.11"]).await;

    tracing::info!("--- negative answers and other zones");
    for (id, addr) in &addrs {
        let nx = udp(*addr, "nope.shop.example.", RecordType::A, None).await;
        assert_eq!(
            nx.metadata.response_code,
            ResponseCode::NXDomain,
            "witness {id}"
        );
        assert!(nx.metadata.authoritative);
        assert!(nx.answers.is_empty());
        assert!(
            soa_in_authority(&nx).is_some(),
            "witness {id}: NXDOMAIN has the SOA"
        );
        let nodata = tcp(*addr, "checkout.shop.example.", RecordType::AAAA).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert!(
            soa_in_authority(&nodata).is_some(),
            "witness {id}: NODATA has the SOA"
        );
        let other = udp(*addr, "www.example.org.", RecordType::A, None).await;
        assert_eq!(
            other.metadata.response_code,
            ResponseCode::Refused,
            "witness {id}"
        );
        assert!(!other.metadata.authoritative);
    }

    tracing::info!("--- a large answer: TC over plain UDP, complete over TCP and EDNS");
    let (_, addr) = addrs[0];
    let small = udp(addr, BIG_NAME, RecordType::AAAA, None).await;
    assert!(small.metadata.truncation, "TC set over 512 bytes");
    assert!(small.answers.len() < 16);
    let full = tcp(addr, BIG_NAME, RecordType::AAAA).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 16, "TCP carries the whole set");
    let edns = udp(addr, BIG_NAME, RecordType::AAAA, Some(4096)).await;
    assert!(
        !edns.metadata.truncation,
        "the client's EDNS size is honoured"
    );
    assert_eq!(edns.answers.len(), 16);

    let serial_before = udp(addr, "shop.example.", RecordType::SOA, None)
        .await
        .answers[0]
        .data
        .clone();

    tracing::info!("--- fail over while sampling every witness");
    let sampler = {
        let witnesses: Vec<_> = cluster
            .witnesses
            .iter()
            .map(|w| {
                (
                    w.id,
                    w.node().dns_addr().unwrap(),
                    w.node().consensus.clone(),
                )
            })
            .collect();
        tokio::spawn(async move {
            // Per witness: answers sampled while its applied state still said region-a
            // (before the query), and region-b answers.
            let mut before_activation = [0u32; 3];
            let mut region_b_answers = [0u32; 3];
            loop {
                for (i, (id, addr, consensus)) in witnesses.iter().enumerate() {
                    let applied = || consensus.with_state(|s| s.groups["checkout"].active.clone());
                    // The applied state before and after the query bracket the view that
                    // answered: it was built from a state applied by the time of `after`.
                    let before = applied();
                    let m = udp(*addr, "checkout.shop.example.", RecordType::A, None).await;
                    let after = applied();
                    if addresses(&m) == ["198.51.100.10"] {
                        assert_eq!(after, "region-b", "witness {id} published before applying");
                        region_b_answers[i] += 1;
                    } else {
                        assert_eq!(addresses(&m), ["192.0.2.10", "192.0.2.11"], "witness {id}");
                        assert_eq!(
                            region_b_answers[i], 0,
                            "witness {id} went back to region-a after answering region-b"
                        );
                        if before == "region-a" {
                            before_activation[i] += 1;
                        }
                    }
                }
                if region_b_answers.iter().all(|n| *n >= 3) {
                    return (before_activation, region_b_answers);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    failover(&client, "checkout", "region-b").await.unwrap();
    let (before_activation, region_b_answers) = tokio::time::timeout(DEADLINE, sampler)
        .await
        .expect("every witness answers region-b in time")
        .expect("sampler saw no premature answer");
    tracing::info!(?before_activation, ?region_b_answers, "sampler done");
    assert!(
        before_activation.iter().all(|n| *n > 0),
        "the sampler saw every witness before its activation (else it shows nothing): {before_activation:?}"
    );

    tracing::info!("--- after the failover: region-b everywhere, serial grew");
    all_answer(&cluster, &["198.51.100.10"]).await;
    let after = udp(addr, "shop.example.", RecordType::SOA, None).await;
    let (RData::SOA(before), RData::SOA(after)) = (&serial_before, &after.answers[0].data) else {
        panic!("SOA answers");
    };
    assert!(
        after.serial > before.serial,
        "{} > {}",
        after.serial,
        before.serial
    );
    let applied = cluster.witnesses[0].node().consensus.view().applied_index;
    assert!(after.serial <= soa_serial(applied));
    let big = tcp(addr, BIG_NAME, RecordType::AAAA).await;
    assert_eq!(
        addresses(&big),
        [
            "2001:db8::1",
            "2001:db8::10",
            "2001:db8::2",
            "2001:db8::3",
            "2001:db8::4",
            "2001:db8::5",
            "2001:db8::6",
            "2001:db8::7",
            "2001:db8::8",
            "2001:db8::9",
            "2001:db8::a",
            "2001:db8::b",
            "2001:db8::c",
            "2001:db8::d",
            "2001:db8::e",
            "2001:db8::f"
        ],
        "a group that did not fail over keeps its region"
    );

    cluster.stop().await;
}

/// Goal: with `when_isolated = "refuse"`, a witness cut off from any leader for longer than
/// `stale_after_ms` answers SERVFAIL, and answers again once contact returns.
/// Method: cut every Raft link of one witness (the others keep running); it must turn to
/// SERVFAIL over UDP and TCP; heal the links; it must answer the committed region again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_witness_refuses_when_the_policy_says_so() {
    let cluster = Cluster::start_with(3, DNS_NODE).await;
    cluster.init_with(&policy("refuse")).await;
    all_answer(&cluster, &["192.0.2.10", "192.0.2.11"]).await;
    let survivor = 3;
    let addr = cluster.witnesses[survivor as usize - 1]
        .node()
        .dns_addr()
        .unwrap();

    tracing::info!("--- cut witness {survivor} off from the others (they keep running)");
    cluster.isolate(survivor);
    eventually("the isolated witness answers SERVFAIL", || async {
        let m = udp(addr, "checkout.shop.example.", RecordType::A, None).await;
        (m.metadata.response_code == ResponseCode::ServFail).then_some(())
    })
    .await;
    let m = tcp(addr, "checkout.shop.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "TCP too");
    assert!(m.answers.is_empty());

    tracing::info!("--- its links heal");
    for w in &cluster.witnesses {
        w.node().link_faults.heal_all();
    }
    eventually("the witness answers again", || async {
        let m = udp(addr, "checkout.shop.example.", RecordType::A, None).await;
        (addresses(&m) == ["192.0.2.10", "192.0.2.11"]).then_some(())
    })
    .await;
    cluster.stop().await;
}

/// Goal: S5 with a witness held back. A witness cut off from the others (its Raft links
/// cut both ways) while the majority commits a failover keeps answering the old region: it
/// never publishes an activation it has not applied. Once its links heal it catches up and
/// answers the new region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_held_back_never_answers_an_activation_it_has_not_applied() {
    let cluster = Cluster::start_with(3, DNS_NODE).await;
    cluster.init_with(&policy("serve")).await;
    all_answer(&cluster, &["192.0.2.10", "192.0.2.11"]).await;
    let leader = cluster.leader().await;
    let held = cluster.witnesses.iter().find(|w| w.id != leader).unwrap();
    let held_id = held.id;
    let held_dns = held.node().dns_addr().unwrap();

    tracing::info!(
        held_id,
        "--- cut the witness off from the others, both ways"
    );
    cluster.isolate(held_id);
    let survivors = arbiter::client::Client::new(
        cluster
            .witnesses
            .iter()
            .filter(|w| w.id != held_id)
            .map(|w| w.addr.to_string())
            .collect(),
        &cluster.certs.client,
    )
    .unwrap();
    failover(&survivors, "checkout", "region-b")
        .await
        .expect("the majority fails over");
    for w in cluster.witnesses.iter().filter(|w| w.id != held_id) {
        let addr = w.node().dns_addr().unwrap();
        let id = w.id;
        eventually(&format!("witness {id} answers region-b"), || async move {
            (addresses(&udp(addr, "checkout.shop.example.", RecordType::A, None).await)
                == ["198.51.100.10"])
            .then_some(())
        })
        .await;
    }
    let applied_epoch = held
        .node()
        .consensus
        .with_state(|s| s.groups["checkout"].epoch);
    assert_eq!(
        applied_epoch, 1,
        "the held-back witness has not applied the activation"
    );
    for _ in 0..10 {
        assert_eq!(
            addresses(&udp(held_dns, "checkout.shop.example.", RecordType::A, None).await),
            ["192.0.2.10", "192.0.2.11"],
            "the held-back witness answers only what it has applied"
        );
        assert_eq!(
            addresses(&tcp(held_dns, "checkout.shop.example.", RecordType::A).await),
            ["192.0.2.10", "192.0.2.11"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("--- dns check sees the held-back witness publishing the old region");
    let held_source = format!("embedded witness {held_id} ({held_dns})");
    let sources = eventually(
        "dns check lists every witness's embedded server",
        || async {
            let reply = survivors.dns_check().await.ok()?;
            let checkout: Vec<_> = reply
                .sources
                .into_iter()
                .filter(|s| s.group == "checkout")
                .collect();
            (checkout.len() == 3).then_some(checkout)
        },
    )
    .await;
    for s in &sources {
        if s.source == held_source {
            assert!(!s.matches, "{s:?}");
            assert_eq!(s.found, ["A 192.0.2.10", "A 192.0.2.11"]);
        } else {
            assert!(s.matches && s.found == ["A 198.51.100.10"], "{s:?}");
        }
    }

    tracing::info!("--- heal: the witness catches up and answers region-b");
    for w in &cluster.witnesses {
        w.node().link_faults.heal_all();
    }
    eventually("the healed witness answers region-b", || async move {
        (addresses(&udp(held_dns, "checkout.shop.example.", RecordType::A, None).await)
            == ["198.51.100.10"])
        .then_some(())
    })
    .await;
    cluster.stop().await;
}

/// `valid` with bytes overwritten at `flips` (positions modulo its length), cut to `keep`
/// bytes when `keep` is shorter, and `extra` appended.
fn mangled(valid: &[u8], flips: &[(usize, u8)], keep: usize, extra: &[u8]) -> Vec<u8> {
    let mut d = valid.to_vec();
    for &(at, b) in flips {
        let i = at % d.len();
        d[i] = b;
    }
    d.truncate(keep.max(1));
    d.extend_from_slice(extra);
    d
}

/// Goal: arbitrary datagrams (random bytes, and valid queries with bytes overwritten, cut or
/// extended) never stop the embedded server, and whatever it answers is a response (never a
/// query: no reflection) that parses, carries the request's id, and fits 512 bytes when the
/// request asked for no larger buffer; afterwards it still answers the committed region.
/// Method: one witness with `dns.listen`; `ARBITER_PROPTEST_CASES` datagrams (128 by
/// default) drawn by proptest, each from a fresh socket, each waiting at most 100 ms for an
/// answer (silence is allowed: hickory drops what has no parseable header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_datagrams_get_bounded_answers_and_the_server_keeps_answering() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    let cases: usize = std::env::var("ARBITER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let cluster = Cluster::start_with(1, DNS_NODE).await;
    cluster.init_with(&policy("serve")).await;
    let (_, addr) = dns_addrs(&cluster)[0];
    all_answer(&cluster, &["192.0.2.10", "192.0.2.11"]).await;

    let valid = request("checkout.shop.example.", RecordType::A, Some(1232))
        .to_vec()
        .unwrap();
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            0usize..80,
            prop::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(move |(flips, keep, extra)| mangled(&valid, &flips, keep, &extra)),
    ];
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    tracing::info!(cases, "--- arbitrary datagrams");
    let mut answered = 0;
    for _ in 0..cases {
        let d = strategy.new_tree(&mut runner).unwrap().current();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&d, addr).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let Ok(received) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        let (len, _) = received.unwrap();
        answered += 1;
        let reply = Message::from_vec(&buf[..len])
            .unwrap_or_else(|e| panic!("the answer to {d:02x?} does not parse: {e}"));
        assert_eq!(
            reply.metadata.message_type,
            MessageType::Response,
            "{d:02x?}"
        );
        assert_eq!(reply.metadata.id.to_be_bytes(), d[..2], "{d:02x?}");
        let asked_more = Message::from_vec(&d)
            .ok()
            .and_then(|m| m.edns.map(|e| e.max_payload()))
            .is_some_and(|size| size > 512);
        if !asked_more {
            assert!(len <= 512, "{len} bytes answered to {d:02x?}");
        }
    }
    tracing::info!(cases, answered, "--- the server still answers");
    assert!(answered > 0, "some datagram was answered");
    all_answer(&cluster, &["192.0.2.10", "192.0.2.11"]).await;
    cluster.stop().await;
}
