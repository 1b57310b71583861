//! Roles per certificate, through the real binary and real mutual TLS: three `serve`
//! processes, role certificates issued with `arbiter certs issue`, and every call made the
//! way its holder would make it (the CLI, a gRPC client, an HTTPS client).

mod common;

use std::path::Path;

use arbiter::proto;
use arbiter::tls::TlsPaths;
use common::policy::{checkout_only, AB};
use common::processes::*;
use common::{denied, POLICY};

/// Exit code of a command the certificate's role does not allow.
const EXIT_NOPERM: i32 = 77;

fn paths(certs: &Path, name: &str) -> TlsPaths {
    TlsPaths {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    }
}

/// Runs a CLI command against the initial three witnesses as the holder of `name`'s
/// certificate.
fn cli_as(c: &Cluster, name: &str, args: &[&str]) -> Out {
    let p = paths(&c.certs, name);
    let mut all = args.to_vec();
    all.extend(["--cert", p.cert.to_str().unwrap()]);
    all.extend(["--key", p.key.to_str().unwrap()]);
    c.cli(&all)
}

/// A gRPC channel to witness `id` presenting `name`'s certificate.
async fn channel_as(c: &Cluster, id: u64, name: &str) -> tonic::transport::Channel {
    common::tls::channel(c.addr(id), &paths(&c.certs, name)).await
}

fn lease(group: &str, region: &str) -> proto::LeaseRequest {
    proto::LeaseRequest {
        group: group.into(),
        region: region.into(),
        epoch: 0,
        holder: "test".into(),
    }
}

/// Sum over the running witnesses of one metric line's value.
async fn metric_sum(c: &Cluster, viewer: &reqwest::Client, line: &str) -> f64 {
    let mut sum = 0.0;
    for id in 1..=3 {
        let text = viewer
            .get(format!(
                "https://localhost:{}/metrics",
                c.addrs[id - 1].port()
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or(0.0);
    }
    sum
}

/// Goal: each certificate can do its role's share and nothing more: a viewer reads and is
/// refused a failover, an operator fails over and is refused the policy, an agent holds
/// only its own (group, region) lease and may not speak Raft, apply a policy or fail over, a
/// check certificate only checks, and a witness certificate reaches no public call. Every
/// refusal is `PERMISSION_DENIED` / exit 77 naming the role needed, counted in `/metrics`.
/// Method: three witness processes initialised and given the policy with the admin
/// certificate `certs init` writes; role certificates from `certs issue`; the CLI for the
/// commands, gRPC clients for the lease and Raft calls, HTTPS for the routes.
#[test]
fn each_certificate_may_do_its_role_and_nothing_more() {
    let c = Cluster::three_with_policy(3, POLICY);
    tracing::info!("--- issue role certificates with the cluster's development CA");
    let dir = c.certs.to_str().unwrap().to_string();
    let out = run(
        c.path(),
        &[
            "certs",
            "issue",
            "--dir",
            &dir,
            "--viewer",
            "vic",
            "--operator",
            "olga",
            "--check",
            "hook",
            "--agent",
            "checkout/region-b",
        ],
    )
    .ok("certs issue");
    assert!(
        out.contains("agent-checkout-region-b.pem (role agent/checkout/region-b)"),
        "{out}"
    );
    let agent = "agent-checkout-region-b";
    let bad_usage = run(
        c.path(),
        &["certs", "issue", "--dir", &dir, "--agent", "checkout"],
    );
    bad_usage.refused("a malformed --agent", EXIT_CONFIG, &["GROUP/REGION"]);

    tracing::info!("--- a viewer reads, and is refused a failover");
    cli_as(&c, "vic", &["status"]).ok("viewer status");
    cli_as(
        &c,
        "vic",
        &["failover", "checkout", "--to", "region-b", "--reason", "x"],
    )
    .refused(
        "viewer failover",
        EXIT_NOPERM,
        &[
            "permission denied",
            "Failover needs the operator or admin role",
            "vic",
        ],
    );

    tracing::info!("--- an operator fails over, and is refused the policy and members");
    let policy = c.write("policy-again.toml", POLICY);
    cli_as(&c, "olga", &["policy", "apply", &policy]).refused(
        "operator policy apply",
        EXIT_NOPERM,
        &["PolicyApply needs the admin role", "olga"],
    );
    cli_as(&c, "olga", &["members", "remove", "--id", "3"]).refused(
        "operator members remove",
        EXIT_NOPERM,
        &["the admin role"],
    );
    let out = cli_as(
        &c,
        "olga",
        &[
            "failover", "checkout", "--to", "region-b", "--reason", "drill",
        ],
    )
    .ok("operator failover");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let s = c.status();
    let audit = s["audit"].to_string();
    assert!(
        audit.contains("\"olga\""),
        "the audit names the operator's verified identity: {audit}"
    );

    tracing::info!("--- an agent: its own lease only, no Raft, no policy, no failover");
    cli_as(&c, agent, &["policy", "apply", &policy]).refused(
        "agent policy apply",
        EXIT_NOPERM,
        &["the admin role", "role agent/checkout/region-b"],
    );
    cli_as(
        &c,
        agent,
        &["failover", "checkout", "--to", "region-a", "--reason", "x"],
    )
    .refused(
        "agent failover",
        EXIT_NOPERM,
        &["the operator or admin role"],
    );
    cli_as(&c, agent, &["status"]).refused("agent status", EXIT_NOPERM, &["viewer"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let leader = c.leader();
        let mut fencing =
            proto::fencing_client::FencingClient::new(channel_as(&c, leader, agent).await);
        let reply = fencing
            .acquire(lease("checkout", "region-b"))
            .await
            .expect("the agent's own lease")
            .into_inner();
        assert!(reply.allowed, "region-b is active: {reply:?}");
        assert_eq!(reply.epoch, 2);
        denied(
            "another region's lease",
            fencing.acquire(lease("checkout", "region-a")).await,
            "needs the role agent/checkout/region-a or admin",
        );
        denied(
            "another group's lease",
            fencing.renew(lease("catalog", "region-b")).await,
            "needs the role agent/catalog/region-b or admin",
        );
        denied(
            "another group's check",
            fencing.check(lease("catalog", "region-b")).await,
            "agent/catalog/region-b, check, viewer, operator or admin",
        );

        let mut raft = proto::raft_client::RaftClient::new(channel_as(&c, leader, agent).await);
        let witness = "needs a witness certificate";
        let msg = || proto::RaftMessage::default();
        denied("AppendEntries", raft.append_entries(msg()).await, witness);
        denied("Vote", raft.vote(msg()).await, witness);
        denied("PreVote", raft.pre_vote(msg()).await, witness);
        denied(
            "InstallSnapshot",
            raft.install_snapshot(tokio_stream::iter(Vec::<proto::SnapshotChunk>::new()))
                .await,
            witness,
        );
        denied(
            "Hello",
            raft.hello(proto::HelloRequest { node_id: 1 }).await,
            witness,
        );
        denied(
            "ReportProbes",
            raft.report_probes(proto::ProbeReport {
                witness: 1,
                ..Default::default()
            })
            .await,
            witness,
        );

        tracing::info!("--- a check certificate checks any group, and does nothing else");
        let mut check =
            proto::fencing_client::FencingClient::new(channel_as(&c, leader, "hook").await);
        let answer = check
            .check(proto::LeaseRequest {
                epoch: 2,
                ..lease("checkout", "region-b")
            })
            .await
            .expect("a check")
            .into_inner();
        assert!(answer.allowed, "{answer:?}");
        denied(
            "check acquires",
            check.acquire(lease("checkout", "region-b")).await,
            "agent/checkout/region-b or admin",
        );

        tracing::info!("--- HTTP: health for anyone, metrics for viewers, 403 with the role");
        let node = common::https_client_with(&paths(&c.certs, "node-1"));
        let viewer = common::https_client_with(&paths(&c.certs, "vic"));
        let port = c.addrs[0].port();
        let url = |p: &str| format!("https://localhost:{port}{p}");
        let health = node.get(url("/healthz")).send().await.unwrap();
        assert_eq!(
            health.status(),
            200,
            "a witness certificate may ask for health"
        );
        let refused = node.get(url("/metrics")).send().await.unwrap();
        assert_eq!(refused.status(), 403);
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "permission-denied", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("GET /metrics needs the viewer"),
            "{body}"
        );
        let status = viewer.get(url("/v1/status")).send().await.unwrap();
        assert_eq!(status.status(), 200);
        let fence = common::https_client_with(&paths(&c.certs, agent))
            .get(url("/v1/groups/catalog/fence?region=region-b&epoch=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(fence.status(), 403, "an agent checks only its own pair");

        tracing::info!("--- denials are counted by method and identity");
        let failover = r#"arbiter_access_denied_total{method="Failover",identity="vic"} "#;
        assert!(metric_sum(&c, &viewer, failover).await >= 1.0);
        let acquire = concat!(
            r#"arbiter_access_denied_total{method="Acquire","#,
            r#"identity="agent-checkout-region-b"} "#
        );
        assert!(metric_sum(&c, &viewer, acquire).await >= 1.0);
    });

    tracing::info!("--- a witness certificate reaches no public call");
    cli_as(&c, "node-2", &["status"]).refused(
        "witness status",
        EXIT_NOPERM,
        &["the viewer, operator or admin role", "has witness 2"],
    );
}

/// The serial of `name`'s certificate as `openssl x509 -noout -serial` prints it.
fn openssl_serial(certs: &Path, name: &str) -> String {
    format!("serial={}", cert_serial(certs, name).to_ascii_uppercase())
}

/// The serial of the certificate file `name` as the certificate holds it (lowercase hex).
fn cert_serial(certs: &Path, name: &str) -> String {
    let pem = std::fs::read(certs.join(format!("{name}.pem"))).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    arbiter::tls::serial_of(&der).unwrap()
}

/// Goal: a certificate whose serial the policy denies is refused on every call, on a
/// connection it opened before the policy changed too, whatever its role; taking the serial
/// out of the list lets it back in.
/// Method: a viewer keeps one gRPC connection to the leader open across two policy changes
/// (deny, then allow again) made with the admin certificate; each witness applies a policy
/// at its own pace, so the refusal is awaited with a deadline.
#[test]
fn a_denied_serial_is_refused_on_a_connection_opened_before() {
    let c = Cluster::three_with_policy(3, POLICY);
    let dir = c.certs.to_str().unwrap().to_string();
    run(
        c.path(),
        &["certs", "issue", "--dir", &dir, "--viewer", "vic"],
    )
    .ok("certs issue");
    let serial = openssl_serial(&c.certs, "vic");
    let denying = format!("{POLICY}\n[access]\ndenied_serials = [\"{serial}\"]\n");
    let denying = c.write("policy-deny.toml", &denying);
    let allowing = c.write("policy-allow.toml", POLICY);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leader = c.leader();
    let mut viewer = rt.block_on(async {
        proto::arbiter_client::ArbiterClient::new(channel_as(&c, leader, "vic").await)
    });
    let status = |viewer: &mut proto::arbiter_client::ArbiterClient<_>| {
        rt.block_on(viewer.status(proto::StatusRequest {
            local: true,
            audit_limit: 1,
        }))
    };
    status(&mut viewer).expect("the viewer reads before the change");

    tracing::info!("--- the dry run shows the revocation; the apply commits it");
    let out = c
        .cli(&["policy", "apply", "--dry-run", &denying])
        .ok("dry run");
    let normal = serial.trim_start_matches("serial=").to_ascii_lowercase();
    let normal = normal.trim_start_matches('0');
    assert!(
        out.contains(&format!("+ denied certificate serial {normal}")),
        "{out}"
    );
    c.cli(&["policy", "apply", &denying]).ok("policy apply");

    tracing::info!("--- the open connection is refused from its next request on");
    let refusal = eventually("the leader refuses the revoked viewer", || {
        status(&mut viewer).err()
    });
    assert_eq!(refusal.code(), tonic::Code::PermissionDenied, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains("revoked by access.denied_serials of policy version 2"),
        "{refusal:?}"
    );
    cli_as(&c, "vic", &["status", "--local"]).refused(
        "a new connection",
        EXIT_NOPERM,
        &["not revoked", &format!("serial {normal}")],
    );
    cli_as(&c, "client", &["status"]).ok("the admin is not revoked");

    tracing::info!("--- out of the list, back in");
    c.cli(&["policy", "apply", &allowing]).ok("policy apply");
    eventually("the leader answers the viewer again", || {
        status(&mut viewer).ok()
    });
}

/// Goal: where a group asks for two approvers, a failover one operator asks for waits for a
/// second identity; the same operator approving again is refused (`already-approved`, exit
/// code one) and changes nothing; a second operator lets it run. Going back, a break-glass
/// certificate approves alone, only with a reason, and that approval is audited as
/// `break-glass` and counted on every witness; an operator without the role may not break
/// the glass.
/// Method: three witness processes; role certificates from `certs issue`; the CLI as each
/// holder; `/metrics` of each witness read with a viewer certificate.
#[test]
fn two_person_approval_needs_two_identities_and_break_glass_is_audited() {
    let policy = checkout_only(
        AB,
        "lease_ms = 1000\nlease_margin_ms = 200\napprovals_required = 2\n",
    );
    let c = Cluster::three_with_policy(3, &policy);
    let dir = c.certs.to_str().unwrap().to_string();
    run(
        c.path(),
        &[
            "certs",
            "issue",
            "--dir",
            &dir,
            "--operator",
            "olga",
            "--operator",
            "otto",
            "--break-glass",
            "bree",
            "--viewer",
            "vic",
        ],
    )
    .ok("certs issue");
    let failover = |who: &str, to: &str| {
        cli_as(
            &c,
            who,
            &[
                "failover",
                "checkout",
                "--to",
                to,
                "--reason",
                "maintenance",
            ],
        )
    };
    let out = failover("olga", "region-b").ok("olga asks for a failover");
    assert!(
        out.contains("approved by olga; waiting for another operator's approval"),
        "{out}"
    );
    // The newest operation, as `status --json` shows it.
    let op = |c: &Cluster| {
        let s = c.status();
        s["operations"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|o| o["id"].as_u64())
            .unwrap()
            .clone()
    };
    let before = op(&c);
    assert_eq!(before["state"], "awaiting-approval", "{before}");
    assert_eq!(before["approvals"], serde_json::json!(["olga"]), "{before}");
    let id = before["id"].as_u64().unwrap().to_string();

    cli_as(&c, "olga", &["approve", &id]).refused(
        "the requester approving her own failover",
        1,
        &[
            "already-approved",
            "already approved by olga",
            "another operator",
        ],
    );
    assert_eq!(op(&c)["state"], "awaiting-approval");
    let out = cli_as(&c, "otto", &["approve", &id]).ok("a second operator approves");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let audit = c.status()["audit"].to_string();
    assert!(
        audit.contains("approved by olga and otto"),
        "the audit names both approvers: {audit}"
    );

    tracing::info!("--- break glass: alone, with a reason, audited and counted");
    failover("otto", "region-a").ok("otto asks to go back");
    let id = op(&c)["id"].as_u64().unwrap().to_string();
    cli_as(&c, "olga", &["approve", &id, "--break-glass", "alone"]).refused(
        "an operator breaking the glass",
        EXIT_NOPERM,
        &["the break-glass or admin role", "olga"],
    );
    cli_as(&c, "bree", &["approve", &id, "--break-glass", " "]).refused(
        "break glass without a reason",
        64,
        &["needs a reason"],
    );
    assert_eq!(op(&c)["state"], "awaiting-approval");
    let out = cli_as(
        &c,
        "bree",
        &["approve", &id, "--break-glass", "region-b db host on fire"],
    )
    .ok("break-glass approval");
    assert!(out.contains("done: region-a active at epoch 3"), "{out}");
    let audit = c.status()["audit"].to_string();
    assert!(
        audit.contains("\"break-glass\"") && audit.contains("region-b db host on fire"),
        "{audit}"
    );
    let viewer = common::https_client_with(&paths(&c.certs, "vic"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let counted = rt.block_on(metric_sum(
        &c,
        &viewer,
        r#"arbiter_break_glass_approvals_total{group="checkout"} "#,
    ));
    assert_eq!(
        counted, 3.0,
        "one break-glass approval, on each of three witnesses"
    );
    let refused = rt.block_on(metric_sum(
        &c,
        &viewer,
        r#"arbiter_access_denied_total{method="Approve --break-glass",identity="olga"} "#,
    ));
    assert_eq!(
        refused, 1.0,
        "the operator's break-glass attempt is counted once"
    );
}

/// The serial, lowercase hex without leading zeros (the denylist's normal form), of the
/// leaf of `chain`.
fn serial_of_chain(chain: &[rustls::pki_types::CertificateDer<'static>]) -> String {
    arbiter::tls::serial_of(chain.first().expect("a certificate"))
        .expect("a serial")
        .trim_start_matches('0')
        .to_string()
}

/// The serial of the certificate file `name` (as [`serial_of_chain`]).
fn file_serial(certs: &Path, name: &str) -> String {
    cert_serial(certs, name).trim_start_matches('0').to_string()
}

/// Goal: certificates are rotated without a restart. A witness sent SIGHUP presents its new
/// certificate on the next connection and dials its peers with it; an agent picks up its
/// new files by itself (polled) and renews with them. Proof that the old ones are out of
/// use: once both old serials are revoked, the agent keeps its lease and witness 1 still
/// takes part (it commits as leader, or forwards a fence check as a follower).
/// Method: three witness processes and one agent process; new certificates written over
/// the old files with `certs issue --force` (key, then certificate, each by a rename); the
/// certificate witness 1 serves read from a bare TLS handshake; the revocation applied as a
/// policy with the admin certificate.
#[test]
fn a_rotated_certificate_is_used_after_reload_without_a_restart() {
    let c = Cluster::three_with_policy(3, POLICY);
    let dir = c.certs.to_str().unwrap().to_string();
    run(
        c.path(),
        &[
            "certs",
            "issue",
            "--dir",
            &dir,
            "--agent",
            "checkout/region-a",
        ],
    )
    .ok("certs issue");
    let agent_name = "agent-checkout-region-a";
    let agent_paths = paths(&c.certs, agent_name);
    let state_file = c.path().join("agent.json");
    let servers = (1..=3).map(|id| c.addr(id)).collect::<Vec<_>>().join(",");
    let agent = Background::start(
        c.path(),
        "agent",
        &[
            "agent",
            "--server",
            &servers,
            "--ca",
            agent_paths.ca.to_str().unwrap(),
            "--cert",
            agent_paths.cert.to_str().unwrap(),
            "--key",
            agent_paths.key.to_str().unwrap(),
            "--group",
            "checkout",
            "--region",
            "region-a",
            "--holder",
            "db-a",
            "--on-gain",
            "true",
            "--on-lose",
            "true",
            "--state-file",
            state_file.to_str().unwrap(),
        ],
    );
    let agent_state = || -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(&state_file).ok()?).ok()
    };
    let held = eventually("the agent holds the lease", || {
        agent_state().filter(|s| s["holding"] == true)
    });
    let epoch = held["epoch"].as_u64().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = paths(&c.certs, "client");
    let served = |id: u64| {
        rt.block_on(common::tls::served_chain(
            c.addrs[id as usize - 1],
            admin.clone(),
        ))
        .map(|chain| serial_of_chain(&chain))
    };
    let old_witness = file_serial(&c.certs, "node-1");
    let old_agent = file_serial(&c.certs, agent_name);
    assert_eq!(served(1).unwrap(), old_witness);

    tracing::info!("--- new certificates over the old files; SIGHUP to witness 1 only");
    let out = run(
        c.path(),
        &[
            "certs",
            "issue",
            "--dir",
            &dir,
            "--force",
            "--witness",
            "1",
            "--agent",
            "checkout/region-a",
        ],
    )
    .ok("certs issue --force");
    assert!(out.contains("node-1.pem (witness 1)"), "{out}");
    let new_witness = file_serial(&c.certs, "node-1");
    let new_agent = file_serial(&c.certs, agent_name);
    assert_ne!(new_witness, old_witness);
    assert_ne!(new_agent, old_agent);
    // SAFETY: a signal to our own child by its PID.
    assert_eq!(
        unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGHUP) },
        0
    );
    eventually("witness 1 serves its new certificate", || {
        (served(1).ok()? == new_witness).then_some(())
    });
    let log = std::fs::read_to_string(c.log(1)).unwrap();
    assert!(
        log.contains("TLS certificate, key and CA reloaded") && log.contains("SIGHUP"),
        "{}",
        tail(&c.log(1), 20)
    );
    assert_eq!(served(2).unwrap(), file_serial(&c.certs, "node-2"));
    let agent_log = c.path().join("agent.stderr");
    eventually("the agent reloads its files by itself", || {
        std::fs::read_to_string(&agent_log)
            .ok()?
            .contains("TLS certificate, key and CA reloaded")
            .then_some(())
    });

    tracing::info!("--- the old serials revoked: nobody may use them any more");
    let revoking =
        format!("{POLICY}\n[access]\ndenied_serials = [\"{old_witness}\", \"{old_agent}\"]\n");
    let revoking = c.write("policy-revoke.toml", &revoking);
    c.cli(&["policy", "apply", &revoking]).ok("policy apply");
    for id in 1..=3 {
        eventually(&format!("witness {id} applies the revocation"), || {
            let out = c.cli_at(&[id], &["status", "--local", "--json"]);
            let s: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            (s["policy_version"].as_u64()? >= 2).then_some(())
        });
    }
    let leader = c.leader();
    if leader == 1 {
        let touched = format!(
            "{POLICY}\n[access]\ndenied_serials = [\"{old_agent}\", \"{old_witness}\", \"ff\"]\n"
        );
        let touched = c.write("policy-touched.toml", &touched);
        c.cli(&["policy", "apply", &touched])
            .ok("witness 1 leads with its new certificate: its entries are accepted");
    } else {
        let epoch = epoch.to_string();
        let out = c
            .cli_at(
                &[1],
                &[
                    "fence-check",
                    "checkout",
                    "--region",
                    "region-a",
                    "--epoch",
                    &epoch,
                ],
            )
            .ok("witness 1 forwards the check to the leader with its new certificate");
        assert!(out.contains("allowed"), "{out}");
    }
    // Past several lease periods (1 s each): renewals made with the old certificate would
    // have been refused and the lease lost by now.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let state = agent_state().unwrap();
    assert_eq!(state["holding"], true, "{state}");
    assert_eq!(state["epoch"].as_u64(), Some(epoch), "{state}");
    let agent_text = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        !agent_text.contains("revoked"),
        "the agent was refused: {agent_text}"
    );
    drop(agent);
}

/// Goal: one identity makes `access.writes_per_minute` writes and the next is refused
/// (`rate-limited`, exit 75, naming the setting), counted in `/metrics`; its reads, and
/// another identity's writes, go on.
/// Method: three witness processes with a policy allowing 3 writes per minute; an operator
/// sets the group's mode four times in a row with the CLI (well inside the 20 s one write
/// takes to come back).
#[test]
fn writes_past_an_identitys_allowance_are_refused_until_it_refills() {
    let policy = format!("{POLICY}\n[access]\nwrites_per_minute = 3\n");
    let c = Cluster::three_with_policy(3, &policy);
    let dir = c.certs.to_str().unwrap().to_string();
    run(
        c.path(),
        &[
            "certs",
            "issue",
            "--dir",
            &dir,
            "--operator",
            "olga",
            "--viewer",
            "vic",
        ],
    )
    .ok("certs issue");
    let out = c.cli(&["policy", "show"]).ok("policy show");
    assert!(out.contains("writes_per_minute = 3"), "{out}");
    for (i, mode) in ["frozen", "manual", "frozen"].iter().enumerate() {
        cli_as(&c, "olga", &["mode", "checkout", mode, "--reason", "drill"])
            .ok(&format!("write {} of 3", i + 1));
    }
    cli_as(
        &c,
        "olga",
        &["mode", "checkout", "manual", "--reason", "drill"],
    )
    .refused(
        "the fourth write within a minute",
        75,
        &["rate-limited", "access.writes_per_minute", "olga"],
    );
    cli_as(&c, "olga", &["status"]).ok("reads are not limited");
    c.cli(&["mode", "checkout", "manual", "--reason", "drill"])
        .ok("another identity has its own allowance");
    let viewer = common::https_client_with(&paths(&c.certs, "vic"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let limited = rt.block_on(metric_sum(
        &c,
        &viewer,
        r#"arbiter_access_rate_limited_total{method="SetMode",identity="olga"} "#,
    ));
    assert!(limited >= 1.0, "{limited}");
}
