//! `/metrics`, `/healthz` and `/readyz` on in-process clusters: scraped over HTTPS with the
//! client certificate on the witnesses' TLS listener, and in plaintext on the optional
//! metrics port.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::policy::CHECKOUT;
use common::*;

/// Metric families every witness shows at every scrape (by the name in `# TYPE`).
const FAMILIES: [&str; 21] = [
    "arbiter_raft_role",
    "arbiter_raft_term",
    "arbiter_raft_leader_id",
    "arbiter_raft_last_log_index",
    "arbiter_raft_commit_index",
    "arbiter_raft_applied_index",
    "arbiter_raft_leader_contact_age_seconds",
    "arbiter_raft_leader_changes_total",
    "arbiter_policy_version",
    "arbiter_region_verdict",
    "arbiter_region_voters",
    "arbiter_group_active",
    "arbiter_group_epoch",
    "arbiter_group_revoked",
    "arbiter_group_mode",
    "arbiter_group_operation",
    "arbiter_group_operation_step",
    "arbiter_fence_requests_total",
    "arbiter_fence_request_duration_seconds",
    "arbiter_dns_queries_total",
    "arbiter_dns_repairs_total",
];

/// Families that appear on a witness once it recorded an event of theirs as leader.
const LEADER_FAMILIES: [&str; 3] = [
    "arbiter_probe_reports_total",
    "arbiter_operation_step_duration_seconds",
    "arbiter_hook_calls_total",
];

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a scrape (label values in these tests contain no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label is k=v");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The sum of every series of `name` whose labels include `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The one series of `name` with exactly `labels`; panics if there is none.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{text}"))
        .value
}

async fn get(http: &reqwest::Client, url: String) -> (u16, String) {
    let r = http.get(url).send().await.expect("request answered");
    let code = r.status().as_u16();
    (code, r.text().await.expect("body"))
}

async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> String {
    let (code, text) = get(http, format!("https://{addr}/metrics")).await;
    assert_eq!(code, 200, "{text}");
    text
}

/// Probes that always pass: a TCP connect to a witness's own listener.
fn policy(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
[[regions]]
name = "region-a"
probes = [{{ kind = "tcp", addr = "{a}", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]
[[regions]]
name = "region-b"
probes = [{{ kind = "tcp", addr = "{b}", interval_ms = 200, timeout_ms = 150, jitter_ms = 20 }}]
{CHECKOUT}cooldown_ms = 0
hooks = {{ promote = ["promote-db"] }}

[hooks.promote-db]
kind = "exec"
program = "/bin/sh"
args = ["-c", "exit 0"]
timeout_ms = 5000
"#
    )
}

/// One DNS query for `x.example.` A over UDP; returns the response code.
async fn dns_rcode(addr: SocketAddr) -> u8 {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Header: id 0x4d31, RD, one question; then x.example. A IN.
    let mut query = vec![0x4d, 0x31, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend([1, b'x', 7]);
    query.extend(b"example");
    query.extend([0, 0, 1, 0, 1]);
    socket.send_to(&query, addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buf),
    )
    .await
    .expect("DNS answer in time")
    .unwrap();
    assert!(
        n >= 12 && buf[..2] == [0x4d, 0x31],
        "an answer to our query"
    );
    buf[3] & 0x0f
}

/// Goal: after a failover, every witness's `/metrics` has each family with values that agree
/// with `status`: the epoch and active region of the group, one leader, applied indexes,
/// step durations of the completed steps, the hook call, probe reports from every witness on
/// the leader, leader changes; a fence check and a DNS query each count once.
/// Method: 3 witnesses (one with an embedded DNS server), a policy whose probes always pass
/// and whose promote hook succeeds; operator failover of `checkout` to region-b; scrape all
/// three over HTTPS with the client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_status_after_a_failover() {
    let cluster = Cluster::start(3).await;
    let addrs: Vec<SocketAddr> = cluster.witnesses.iter().map(|w| w.addr).collect();
    cluster.init_with(&policy(addrs[0], addrs[1])).await;
    let client = cluster.client();
    let http = cluster.https_client();
    assert!(
        cluster
            .witnesses
            .iter()
            .all(|w| w.node().metrics_addr().is_none()),
        "no plaintext port unless the node file asks for one"
    );

    tracing::info!("--- both regions up by verdict, then failover to region-b");
    eventually("both regions are up by verdict", || async {
        let s = status(&client).await;
        let up = |r: &str| s.regions.iter().any(|x| x.name == r && x.verdict == "up");
        (up("region-a") && up("region-b")).then_some(())
    })
    .await;
    let op = failover(&client, "checkout", "region-b").await.unwrap();
    assert_eq!(op.state, "done");
    let s = status(&client).await;
    let g = s.groups.iter().find(|g| g.name == "checkout").unwrap();
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));

    tracing::info!("--- every witness shows the status epoch and active region");
    for w in &cluster.witnesses {
        let text = eventually(
            &format!("witness {} applied the activation", w.id),
            || async {
                let text = scrape(&http, w.addr).await;
                let applied = value(&text, "arbiter_group_epoch", &[("group", "checkout")]);
                (applied == g.epoch as f64).then_some(text)
            },
        )
        .await;
        for family in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "witness {}: family {family} missing:\n{text}",
                w.id
            );
        }
        let active = |region| {
            value(
                &text,
                "arbiter_group_active",
                &[("group", "checkout"), ("region", region)],
            )
        };
        assert_eq!(
            (active("region-b"), active("region-a")),
            (1.0, 0.0),
            "witness {}",
            w.id
        );
        assert_eq!(
            value(
                &text,
                "arbiter_group_mode",
                &[("group", "checkout"), ("mode", "manual")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "arbiter_group_operation",
                &[("group", "checkout"), ("state", "none")]
            ),
            1.0,
            "the operation is done"
        );
        assert_eq!(
            value(&text, "arbiter_group_revoked", &[("group", "checkout")]),
            0.0
        );
        let applied = value(&text, "arbiter_raft_applied_index", &[]);
        let committed = value(&text, "arbiter_raft_commit_index", &[]);
        let last = value(&text, "arbiter_raft_last_log_index", &[]);
        assert!(
            applied > 0.0 && applied <= committed && committed <= last,
            "witness {}: applied {applied}, committed {committed}, last {last}",
            w.id
        );
        assert!(value(&text, "arbiter_raft_term", &[]) >= 1.0);
        assert!(value(&text, "arbiter_raft_leader_changes_total", &[]) >= 1.0);
        assert!(value(&text, "arbiter_policy_version", &[]) >= 1.0);
        assert_eq!(
            sum(&text, "arbiter_raft_role", &[]),
            1.0,
            "exactly one role per witness"
        );
    }

    tracing::info!("--- exactly one leader, and it sees every witness's probe reports");
    let leader = cluster.leader().await;
    let mut texts = BTreeMap::new();
    for w in &cluster.witnesses {
        texts.insert(w.id, scrape(&http, w.addr).await);
    }
    let leaders: Vec<u64> = texts
        .iter()
        .filter(|(_, t)| value(t, "arbiter_raft_role", &[("role", "leader")]) == 1.0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(leaders, vec![leader], "role=leader on exactly one witness");
    for t in texts.values() {
        assert_eq!(value(t, "arbiter_raft_leader_id", &[]), leader as f64);
    }
    let leader_addr = cluster.witnesses[leader as usize - 1].addr;
    eventually(
        "the leader counts probe reports from every witness",
        || async {
            let t = scrape(&http, leader_addr).await;
            cluster
                .witnesses
                .iter()
                .all(|w| {
                    let id = w.id.to_string();
                    ["region-a", "region-b"].iter().all(|r| {
                        sum(
                            &t,
                            "arbiter_probe_reports_total",
                            &[("region", r), ("witness", &id), ("result", "ok")],
                        ) > 0.0
                    })
                })
                .then_some(())
        },
    )
    .await;
    let t = scrape(&http, leader_addr).await;
    assert_eq!(
        value(
            &t,
            "arbiter_region_verdict",
            &[
                ("region", "region-b"),
                ("verdict", "up"),
                ("source", "leader")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "arbiter_region_voters",
            &[("region", "region-b"), ("seen", "up")]
        ),
        3.0
    );

    tracing::info!("--- step durations and the hook call, summed over witnesses (a leader change may split them)");
    let all: Vec<String> = texts.values().cloned().collect();
    for family in LEADER_FAMILIES {
        assert!(
            all.iter().any(|t| t.contains(&format!("# TYPE {family} "))),
            "family {family} missing on every witness"
        );
    }
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        all.iter().map(|t| sum(t, name, labels)).sum()
    };
    for step in ["revoke", "fence", "promote", "activate", "validate"] {
        assert!(
            total(
                "arbiter_operation_step_duration_seconds_count",
                &[("step", step), ("outcome", "completed")]
            ) >= 1.0,
            "step {step} was timed"
        );
    }
    for step in ["rpo-check", "dns"] {
        assert!(
            total(
                "arbiter_operation_step_duration_seconds_count",
                &[("step", step), ("outcome", "no-op")]
            ) >= 1.0,
            "step {step} was timed as a no-op"
        );
    }
    assert!(
        total(
            "arbiter_hook_calls_total",
            &[("step", "promote"), ("kind", "exec"), ("result", "success")]
        ) >= 1.0
    );

    tracing::info!("--- a fence check counts once on the leader");
    let check = [("kind", "check"), ("result", "allowed")];
    let before = scrape(&http, leader_addr).await;
    let (code, body) = get(
        &http,
        format!("https://{leader_addr}/v1/groups/checkout/fence?region=region-b&epoch=2"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let after = scrape(&http, leader_addr).await;
    assert_eq!(
        value(&after, "arbiter_fence_requests_total", &check),
        value(&before, "arbiter_fence_requests_total", &check) + 1.0
    );
    let checks = [("kind", "check")];
    assert_eq!(
        value(
            &after,
            "arbiter_fence_request_duration_seconds_count",
            &checks
        ),
        value(
            &before,
            "arbiter_fence_request_duration_seconds_count",
            &checks
        ) + 1.0
    );
    let (code, _) = get(
        &http,
        format!("https://{leader_addr}/v1/groups/checkout/fence?region=region-a&epoch=1"),
    )
    .await;
    assert_eq!(code, 409);
    let refused = scrape(&http, leader_addr).await;
    assert_eq!(
        value(
            &refused,
            "arbiter_fence_requests_total",
            &[("kind", "check"), ("result", "refused")]
        ),
        value(
            &after,
            "arbiter_fence_requests_total",
            &[("kind", "check"), ("result", "refused")]
        ) + 1.0
    );
    cluster.stop().await;
}

/// Goal: the embedded DNS server counts each query by its response code.
/// Method: one witness of three runs a DNS server; the policy has no zones, so a query is
/// refused; its `refused` counter goes up by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_are_counted_by_response_code() {
    let cluster = Cluster::start_with(3, "\n[dns]\nlisten = \"127.0.0.1:0\"\n").await;
    cluster.init_with_policy().await;
    let http = cluster.https_client();
    let w = &cluster.witnesses[2];
    let dns = w.node().dns_addr().expect("DNS server runs");
    let refused = [("result", "refused")];
    let before = value(
        &scrape(&http, w.addr).await,
        "arbiter_dns_queries_total",
        &refused,
    );
    assert_eq!(dns_rcode(dns).await, 5, "REFUSED outside our zones");
    let after = value(
        &scrape(&http, w.addr).await,
        "arbiter_dns_queries_total",
        &refused,
    );
    assert_eq!(after, before + 1.0);
    cluster.stop().await;
}

/// Goal: `/readyz` says 200 on a witness with a live leader and a caught-up state machine,
/// 503 with a reason before there is a leader and on a witness cut off from the others, and
/// 200 again once its links heal; `/healthz` is 200 throughout.
/// Method: 3 witnesses; ask before `init`; isolate a follower with `LinkFaults` (both
/// directions); ask it and a healthy witness; heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_leader_contact() {
    let cluster = Cluster::start(3).await;
    let http = cluster.https_client();
    let ready = |addr: SocketAddr| {
        let http = http.clone();
        async move { get(&http, format!("https://{addr}/readyz")).await }
    };

    tracing::info!("--- no cluster yet: not ready");
    let (code, body) = ready(cluster.witnesses[0].addr).await;
    assert_eq!(code, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"].as_str().unwrap().contains("no leader"),
        "{body}"
    );

    tracing::info!("--- initialised: every witness becomes ready");
    cluster.init_with_policy().await;
    let leader = cluster.leader().await;
    for w in &cluster.witnesses {
        eventually(&format!("witness {} is ready", w.id), || async {
            (ready(w.addr).await.0 == 200).then_some(())
        })
        .await;
    }

    tracing::info!("--- a follower cut off from the others is not ready");
    let cut = cluster.witnesses.iter().find(|w| w.id != leader).unwrap();
    let healthy = cluster.witnesses.iter().find(|w| w.id == leader).unwrap();
    cluster.isolate(cut.id);
    let body = eventually("the cut-off witness is not ready", || async {
        let (code, body) = ready(cut.addr).await;
        (code == 503).then_some(body)
    })
    .await;
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = reason["reason"].as_str().unwrap();
    assert!(
        reason.contains("no contact") || reason.contains("no leader"),
        "{reason}"
    );
    let (code, body) = get(&http, format!("https://{}/healthz", cut.addr)).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"), "still alive");
    eventually("the majority's leader stays ready", || async {
        (ready(healthy.addr).await.0 == 200).then_some(())
    })
    .await;

    tracing::info!("--- links heal: ready again");
    cluster.heal();
    eventually("the witness is ready again", || async {
        (ready(cut.addr).await.0 == 200).then_some(())
    })
    .await;
    cluster.stop().await;
}

/// Goal: the only voter of a one-witness cluster (a development setup) is its own quorum
/// and is ready, although no other witness ever acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_witness_is_ready() {
    let cluster = Cluster::start(1).await;
    cluster.init_with_policy().await;
    let http = cluster.https_client();
    let addr = cluster.witnesses[0].addr;
    let body = eventually("the single witness is ready", || async {
        let (code, body) = get(&http, format!("https://{addr}/readyz")).await;
        (code == 200).then_some(body)
    })
    .await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["ready"].as_bool(), body["leader"].as_u64()),
        (Some(true), Some(1))
    );
    cluster.stop().await;
}

/// Goal: with `[metrics] listen`, a witness serves `/metrics`, `/healthz` and `/readyz` in
/// plaintext on that port, and nothing else there; its TLS listener does not answer
/// plaintext HTTP.
/// Method: 3 witnesses with `listen = "127.0.0.1:0"`; plain HTTP requests to the bound port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_metrics_port_when_configured() {
    let cluster = Cluster::start_with(3, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    cluster.init_with_policy().await;
    arbiter::tls::install_crypto_provider();
    let plain = reqwest::Client::builder().build().unwrap();
    let w = &cluster.witnesses[0];
    let port = w.node().metrics_addr().expect("plaintext port bound");
    assert_ne!(port, w.addr);

    let (code, text) = get(&plain, format!("http://{port}/metrics")).await;
    assert_eq!(code, 200);
    assert!(text.contains("# TYPE arbiter_group_epoch gauge"), "{text}");
    assert_eq!(
        value(&text, "arbiter_group_epoch", &[("group", "checkout")]),
        1.0
    );
    let (code, body) = get(&plain, format!("http://{port}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    eventually("ready over plaintext", || async {
        (get(&plain, format!("http://{port}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    let (code, _) = get(&plain, format!("http://{port}/v1/status")).await;
    assert_eq!(
        code, 404,
        "only the three endpoints are served in plaintext"
    );

    assert!(
        plain
            .get(format!("http://{}/metrics", w.addr))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true),
        "the TLS listener does not serve plaintext"
    );
    cluster.stop().await;
}

/// Goal: a bad `[metrics] listen` is refused with the key named, by the parser and by
/// `arbiter serve --check` (exit 64).
#[test]
fn bad_metrics_listen_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let certs = arbiter::certs::init_dev_certs(
        &dir.path().join("certs"),
        &arbiter::certs::default_sites(1),
        &[],
        false,
    )
    .unwrap();
    let addrs: Vec<SocketAddr> = vec!["127.0.0.1:7101".parse().unwrap()];
    let text = node_toml(1, &addrs, &dir.path().join("data"), &certs.nodes[0])
        + "\n[metrics]\nlisten = \"localhost:metrics\"\n";
    let e = arbiter::config::NodeConfig::parse("node.toml", &text, dir.path()).unwrap_err();
    assert_eq!(e.key, "metrics.listen", "{e}");
    assert!(e.reason.contains("is not ip:port"), "{e}");

    let file = dir.path().join("node.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["serve", "--check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.listen"), "{stderr}");
}
