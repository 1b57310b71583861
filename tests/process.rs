//! Process-level tests: the real `arbiter` binary, driven the way an operator drives it.
//! Each test makes its own development CA with `arbiter certs init`, writes node files for
//! witnesses on free loopback ports, starts `arbiter serve` processes and talks to them only
//! through the CLI (exit codes, stdout, stderr). Every child is killed by PID when the test
//! ends, even on panic, and a failing test prints the tail of each witness's log.
//!
//! Waits are bounded polls on an observable condition (a log line, a CLI answer); no test
//! sleeps for correctness or asserts an absolute time.

mod common;

use common::processes::*;
use common::POLICY;
use serde_json::Value;

/// Roles of the rows of a witness table (`members list`/`add`/`remove`), by id.
fn member_roles(table: &str) -> Vec<(u64, String)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse().ok()?, cols.next()?.to_string()))
        })
        .collect()
}

fn voters(table: &str) -> Vec<u64> {
    member_roles(table)
        .into_iter()
        .filter(|(_, role)| role == "leader" || role == "voter")
        .map(|(id, _)| id)
        .collect()
}

/// Goal: an operator runs a three-witness cluster with nothing but the binary: init once,
/// preview and commit a policy, fail a group over, lose the leader process and keep working,
/// then bring the lost witness back and see it catch up.
/// Method: three `serve` processes; every step is a CLI call whose exit code and output are
/// checked; the leader is SIGKILLed and the CLI is given its address first, so it must move
/// on to the new leader by itself.
#[test]
fn three_processes_driven_by_the_cli() {
    let mut c = Cluster::prepare(3);
    tracing::info!("--- start three witnesses and initialise once");
    for id in 1..=3 {
        c.start(id);
    }
    let out = c.cli(&["init"]).ok("init");
    assert!(out.contains("initialised with 3 witnesses"), "{out}");
    let again = c.cli(&["init"]);
    again.refused("second init", EXIT_REFUSED, &["already initialised"]);

    tracing::info!("--- dry run shows the diff and commits nothing");
    let policy = c.write("policy.toml", POLICY);
    let out = c
        .cli(&["policy", "apply", "--dry-run", &policy])
        .ok("dry run");
    assert!(out.contains("+ region region-a"), "{out}");
    assert!(
        out.contains("+ group checkout: candidates [region-a, region-b], mode manual"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing committed"), "{out}");
    assert_eq!(c.policy_version(), 0, "a dry run commits nothing");
    let show = c.cli(&["policy", "show"]).ok("policy show");
    assert!(!show.contains("checkout"), "no policy yet: {show}");

    tracing::info!("--- apply the policy");
    let out = c.cli(&["policy", "apply", &policy]).ok("policy apply");
    assert!(out.contains("policy version 1 committed"), "{out}");
    assert_eq!(c.policy_version(), 1);

    tracing::info!("--- status --json");
    let s = c.status();
    assert_eq!(s["policy_version"], 1);
    assert_eq!(group(&s, "checkout"), ("region-a".to_string(), 1));
    assert_eq!(group(&s, "catalog"), ("region-b".to_string(), 1));
    let witnesses = s["witnesses"].as_array().unwrap();
    assert_eq!(witnesses.len(), 3, "{s}");
    let leader = s["leader_id"].as_u64().unwrap();
    assert!((1..=3).contains(&leader));
    assert_eq!(
        witnesses
            .iter()
            .filter(|w| w["role"] == "leader")
            .map(|w| w["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [leader],
        "exactly the leader is listed as leader: {s}"
    );

    tracing::info!("--- failover checkout to region-b");
    let out = c
        .cli(&[
            "failover", "checkout", "--to", "region-b", "--reason", "drill",
        ])
        .ok("failover");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let table = c.cli(&["status"]).ok("status");
    let row = table
        .lines()
        .find(|l| l.starts_with("checkout "))
        .unwrap_or_else(|| panic!("checkout row in {table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..3], ["region-b", "2"], "{table}");

    let leader = c.leader();
    tracing::info!(leader, "--- SIGKILL the leader process");
    c.kill(leader);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let mut dead_first = vec![leader];
    dead_first.extend(&survivors);
    let s = eventually("status through the CLI names a new leader", || {
        let s = c.status_at(&dead_first);
        (s["leader_id"].as_u64() != Some(leader)).then_some(s)
    });
    assert!(survivors.contains(&s["leader_id"].as_u64().unwrap()), "{s}");
    assert_eq!(
        group(&s, "checkout"),
        ("region-b".to_string(), 2),
        "the committed failover survives the leader's death"
    );
    let out = c
        .cli_at(
            &dead_first,
            &[
                "failover", "checkout", "--to", "region-a", "--reason", "failback",
            ],
        )
        .ok("failover under the new leader");
    assert!(out.contains("done: region-a active at epoch 3"), "{out}");

    tracing::info!("--- restart the killed witness from its data dir; it catches up");
    c.start(leader);
    eventually("restarted witness applied epoch 3", || {
        let out = c.cli_at(&[leader], &["status", "--local", "--json"]);
        if out.code != 0 {
            return None;
        }
        let s: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(s["local"], true);
        assert_eq!(s["served_by"].as_u64(), Some(leader));
        (group(&s, "checkout") == ("region-a".to_string(), 3)).then_some(())
    });
}

/// Goal: a fourth witness can join as a voter and leave again through the CLI, and the
/// cluster keeps committing with the quorum of its new size.
/// Method: three witnesses initialised, a fourth process started with its own node file;
/// `members add` then `members remove`, checking the voter set each time. Finally the
/// fourth witness and one original follower are stopped: two of three voters remain, which
/// commits a failover only if the removal really shrank the voter set (two of four would not).
#[test]
fn members_add_and_remove() {
    let mut c = Cluster::three_with_policy(4, POLICY);
    tracing::info!("--- start witness 4 and add it");
    c.start(4);
    let addr4 = c.addr(4);
    let add = |site: &str, accept: Option<&str>| {
        let mut args = vec![
            "members", "add", "--id", "4", "--addr", &addr4, "--site", site,
        ];
        if let Some(reason) = accept {
            args.extend(["--accept-site-risk", reason]);
        }
        c.cli(&args)
    };
    tracing::info!("--- a fourth voter at the tiebreaker weakens the failure domains: refused");
    add("tiebreaker", None).refused(
        "fourth voter at the tiebreaker",
        1,
        &[
            "membership",
            "losing site tiebreaker (2 voters) leaves 2 voters of 4",
            "--accept-site-risk",
        ],
    );
    tracing::info!("--- a site the witness's certificate does not name: refused");
    add("region-a", Some("growing to five")).refused(
        "site the certificate does not name",
        1,
        &[
            "membership",
            "names witness 4 at site tiebreaker, not witness 4 at site region-a",
        ],
    );
    let list = c.cli(&["members", "list"]).ok("members list");
    assert_eq!(voters(&list).len(), 3, "refusals add nobody: {list}");
    let out = add("tiebreaker", Some("growing to five")).ok("members add");
    assert!(out.contains(&addr4), "{out}");
    let audit = c.status()["audit"].to_string();
    assert!(
        audit.contains("site-risk-accepted") && audit.contains("growing to five"),
        "the accepted risk and its reason are audited: {audit}"
    );
    let list = c.cli(&["members", "list"]).ok("members list");
    let mut v = voters(&list);
    v.sort();
    assert_eq!(v, [1, 2, 3, 4], "four voters: {list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("4 ") && l.contains("tiebreaker")),
        "{list}"
    );

    tracing::info!("--- witness 4 replicates the committed state");
    eventually("witness 4 applied the policy", || {
        let out = c.cli_at(&[4], &["status", "--local", "--json"]);
        let s: Value = serde_json::from_str(&out.stdout).ok()?;
        (s["policy_version"] == 1).then_some(())
    });

    tracing::info!("--- remove witness 4");
    let out = c
        .cli(&["members", "remove", "--id", "4"])
        .ok("members remove");
    let mut v = voters(&out);
    v.sort();
    assert_eq!(v, [1, 2, 3], "three voters after removal: {out}");
    let list = c.cli(&["members", "list"]).ok("members list");
    let mut v = voters(&list);
    v.sort();
    assert_eq!(v, [1, 2, 3], "three voters after removal: {list}");
    assert_eq!(
        member_roles(&list).len(),
        3,
        "witness 4 is gone, not kept as a learner: {list}"
    );
    let audit = c.status()["audit"].to_string();
    assert!(
        audit.contains("\"membership\"") && audit.contains("witness 4 at site tiebreaker removed"),
        "the removal is audited: {audit}"
    );
    tracing::info!("--- a third voter removed would leave two sites, each stopping the cluster");
    c.cli(&["members", "remove", "--id", "3"]).refused(
        "removal to two voters",
        1,
        &["membership", "short of the quorum", "--accept-site-risk"],
    );

    tracing::info!("--- stop witness 4 and one follower: two of three voters still commit");
    c.kill(4);
    let leader = c.leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.kill(follower);
    let out = c
        .cli(&[
            "failover",
            "checkout",
            "--to",
            "region-b",
            "--reason",
            "after removal",
        ])
        .ok("failover with two of three voters");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
}

/// Goal: every kind of bad input is refused with the documented exit code and a message
/// that names what is wrong, and a refused input changes nothing.
/// Method: bad node files to `serve` (no cluster needed); then, against a running cluster,
/// bad policies (the committed version must not move) and refused failovers (the epoch must
/// not move).
#[test]
fn bad_inputs_give_clear_errors_and_change_nothing() {
    let c = Cluster::three_with_policy(3, POLICY);

    tracing::info!("--- bad node files");
    let good = std::fs::read_to_string(c.node_file(1)).unwrap();
    let malformed = c.write("malformed-node.toml", "id = 1\nsite = [\n");
    let out = run(c.path(), &["serve", "--config", &malformed]);
    out.refused(
        "serve with malformed TOML",
        EXIT_CONFIG,
        &["error: ", "malformed-node.toml", "line 2"],
    );
    let unknown = c.write("unknown-key.toml", &format!("{good}\nbogus_key = 1\n"));
    let out = run(c.path(), &["serve", "--config", &unknown]);
    out.refused(
        "serve with an unknown key",
        EXIT_CONFIG,
        &["error: ", "unknown-key.toml", "unknown field `bogus_key`"],
    );
    let node1 = c.node_file(1);
    let out = run(
        c.path(),
        &["serve", "--check", "--config", node1.to_str().unwrap()],
    );
    assert!(out.ok("serve --check").contains("ok (node 1"));
    // A witness certificate must name its own node id: node 2's certificate in node 1's
    // file is refused by the check (and by `serve`), naming the id it found and the one due.
    let swapped = c.write(
        "swapped-cert.toml",
        &good
            .replace("node-1.pem", "node-2.pem")
            .replace("node-1.key", "node-2.key"),
    );
    assert_ne!(swapped, node1.to_str().unwrap());
    for args in [
        &["serve", "--check", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let args = [args, &[swapped.as_str()]].concat();
        run(c.path(), &args).refused(
            "serve with another witness's certificate",
            EXIT_CONFIG,
            &[
                "it names witness 2",
                "this is node 1",
                "arbiter://witness/1",
            ],
        );
    }
    // The certificate names the witness's site too: a node file moving witness 1 to another
    // site than the CA signed is refused the same way, naming both sites.
    assert!(good.contains("site = \"region-a\""), "{good}");
    let moved = c.write(
        "moved-site.toml",
        &good.replace("site = \"region-a\"", "site = \"region-b\""),
    );
    for args in [
        &["serve", "--check", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let args = [args, &[moved.as_str()]].concat();
        run(c.path(), &args).refused(
            "serve with a certificate of another site",
            EXIT_CONFIG,
            &[
                "it names site region-a",
                "at site region-b",
                "arbiter://site/region-b",
            ],
        );
    }
    // The switch that skips the lease wait (jepsen's split-brain demonstration) exists only
    // in builds with the `unsafe-skip-lease-wait` feature: a normal build refuses it.
    #[cfg(not(feature = "unsafe-skip-lease-wait"))]
    run(
        c.path(),
        &[
            "serve",
            "--unsafe-skip-lease-wait",
            "--check",
            "--config",
            node1.to_str().unwrap(),
        ],
    )
    .refused(
        "serve --unsafe-skip-lease-wait in a normal build",
        EXIT_CONFIG,
        &["--unsafe-skip-lease-wait"],
    );
    // Every usage error exits 64 like any other bad input; asking for help is no error.
    run(c.path(), &["status", "--no-such-flag"]).refused(
        "an unknown flag",
        EXIT_CONFIG,
        &["--no-such-flag"],
    );
    run(c.path(), &["failover"]).refused("a missing argument", EXIT_CONFIG, &["<GROUP>"]);
    assert!(run(c.path(), &["--help"]).ok("--help").contains("Usage"));

    tracing::info!("--- bad policies are refused before anything is proposed");
    let bad_policies = [
        (
            "malformed",
            "[[regions]\nname = 1\n".to_string(),
            ["line 1", "unclosed array table"],
        ),
        (
            "unknown-key",
            format!("{POLICY}\ncolour = \"red\"\n"),
            ["colour", "unknown field `colour`"],
        ),
        (
            "duplicate-region",
            format!("{POLICY}\n[[regions]]\nname = \"region-a\"\n"),
            ["regions[3].name", "duplicate region \"region-a\""],
        ),
        (
            "one-candidate",
            POLICY.replacen(
                r#"["region-a", "region-b"]"#,
                r#"["region-a"]"#,
                1,
            ),
            [
                "groups[0].candidates",
                "needs at least two candidate regions",
            ],
        ),
        (
            "missing-secret",
            format!(
                "{POLICY}\n[hooks.notify]\nkind = \"http\"\nurl = \"https://hooks.invalid/x\"\nsecret = {{ file = \"/nonexistent/arbiter-secret\" }}\n"
            ),
            ["hooks.notify.secret.file", "/nonexistent/arbiter-secret"],
        ),
    ];
    for (name, text, [key, reason]) in &bad_policies {
        let file = c.write(&format!("{name}.toml"), text);
        let out = c.cli(&["policy", "apply", &file]);
        out.refused(
            &format!("policy {name}"),
            EXIT_CONFIG,
            &["error: ", "invalid policy", key, reason],
        );
        assert!(
            out.stdout.is_empty(),
            "policy {name}: nothing applied: {out:#?}"
        );
    }
    assert_eq!(c.policy_version(), 1, "refused policies change nothing");

    tracing::info!("--- refused failovers");
    let before = c.status();
    let out = c.cli(&["failover", "checkout", "--to", "region-c", "--reason", "x"]);
    out.refused(
        "failover to a non-candidate",
        EXIT_REFUSED,
        &[
            "error: ",
            "region \"region-c\" is not a candidate of group \"checkout\"",
            "(not-candidate)",
        ],
    );
    let out = c.cli(&["failover", "nope", "--to", "region-a", "--reason", "x"]);
    out.refused(
        "failover of an unknown group",
        EXIT_REFUSED,
        &["error: ", "unknown group \"nope\"", "(unknown-group)"],
    );
    let out = c
        .cli(&["mode", "checkout", "frozen", "--reason", "change freeze"])
        .ok("mode frozen");
    assert!(out.contains("checkout: mode frozen"), "{out}");
    let out = c.cli(&["failover", "checkout", "--to", "region-b", "--reason", "x"]);
    out.refused(
        "failover of a frozen group",
        EXIT_REFUSED,
        &["error: ", "group \"checkout\" is frozen", "(frozen)"],
    );
    let after = c.status();
    for g in ["checkout", "catalog"] {
        assert_eq!(
            group(&after, g),
            group(&before, g),
            "refusals change nothing"
        );
    }
    assert_eq!(group(&after, "checkout"), ("region-a".to_string(), 1));
}

/// Goal: mutual TLS keeps out a client whose certificate was issued by another CA, and such
/// an attempt does not disturb the cluster.
/// Method: a second CA from `arbiter certs init`; `status` with (a) all of its files and
/// (b) the cluster's CA but the foreign client certificate, so only the witness can refuse
/// it. Both must fail while the same command with the cluster's certificate succeeds and the
/// cluster state is unchanged.
#[test]
fn client_with_certificate_from_another_ca_is_refused() {
    let c = Cluster::three_with_policy(3, POLICY);
    let before = c.status();
    let servers = [1, 2, 3].map(|id| c.addr(id)).join(",");

    tracing::info!("--- a second, unrelated development CA");
    let other = c.path().join("other-ca");
    run(
        c.path(),
        &[
            "certs",
            "init",
            "--out",
            other.to_str().unwrap(),
            "--nodes",
            "1",
        ],
    )
    .ok("certs init of the other CA");

    tracing::info!("--- client from the other CA");
    let out = run(
        c.path(),
        &[
            "status",
            "--json",
            "--server",
            &servers,
            "--tls-dir",
            other.to_str().unwrap(),
        ],
    );
    // The CLI trusts only the other CA, so it refuses the witness's certificate itself.
    out.refused(
        "status with a foreign CA",
        EXIT_UNAVAILABLE,
        &[
            "error: ",
            "invalid peer certificate: UnknownIssuer",
            "(unavailable)",
        ],
    );
    assert!(out.stdout.is_empty(), "no status printed: {out:#?}");

    tracing::info!("--- foreign client certificate, cluster CA trusted: the witness refuses");
    let ca = c.certs.join("ca.pem");
    let out = run(
        c.path(),
        &[
            "status",
            "--json",
            "--server",
            &servers,
            "--tls-dir",
            other.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    // The witness ends the handshake with an alert; the HTTP/2 client reports only that the
    // connection closed (the alert itself is asserted at the TLS level in tests/cluster.rs),
    // so the error is a connection-level kind, never an answer of the service.
    assert!(
        [EXIT_REFUSED, EXIT_UNAVAILABLE].contains(&out.code),
        "a witness must refuse a client certificate from another CA: {out:#?}"
    );
    assert!(
        ["(transport)", "(indeterminate)", "(unavailable)"]
            .iter()
            .any(|k| out.stderr.trim_end().ends_with(k)),
        "refused by the connection, not by the service: {out:#?}"
    );
    assert!(
        !out.stderr.contains("invalid peer certificate"),
        "the CLI accepted the witness (it trusts the cluster CA): {out:#?}"
    );
    assert!(out.stdout.is_empty(), "no status printed: {out:#?}");

    tracing::info!("--- the cluster is unaffected");
    let after = c.status();
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    assert_eq!(after["policy_version"], 1);
    assert_eq!(after["groups"], before["groups"]);
    assert_eq!(after["witnesses"].as_array().unwrap().len(), 3);
}

/// Node file addition of [`operator_commands_report_their_outcome_in_exit_codes`]: every
/// witness serves the group records itself, so `dns check` has sources to compare.
const DNS_LISTENER: &str = "\n[dns]\nlisten = \"127.0.0.1:0\"\n";

/// The policy of that test: `checkout` publishes one A record per region; `extra_dns` is
/// added to the `[dns]` table (external servers) and `checkout_keys` to the group's table.
fn cli_policy(extra_dns: &str, checkout_keys: &str) -> String {
    format!(
        r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[dns]
zones = [{{ name = "shop.example.", nameservers = ["ns1.shop.example."] }}]
{extra_dns}
{checkout}{checkout_keys}
[groups.dns]
zone = "shop.example."
name = "checkout.shop.example."
ttl = 30
records = {{ region-a = {{ type = "A", values = ["192.0.2.10"] }}, region-b = {{ type = "A", values = ["198.51.100.10"] }} }}
"#,
        checkout = common::policy::CHECKOUT,
    )
}

/// `dns check --json`: (exit code, sources).
fn dns_check(c: &Cluster) -> (i32, Vec<Value>, String) {
    let out = c.cli(&["dns", "check", "--json"]);
    let sources: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("dns check --json prints JSON ({e}): {out:#?}"));
    (out.code, sources.as_array().unwrap().clone(), out.stderr)
}

/// Goal: the commands scripts and hooks depend on report their outcome in the exit code and
/// say why, end to end through the real binary: `policy apply --if-version` (a stale version
/// is refused and commits nothing), `watch` (one JSON line per applied change), `skip` (a
/// halted step is skipped, a step the operation is not at is refused), `fence-check` (0 for
/// the current epoch of the active region, 1 for the old one) and `dns check` (0 when every
/// source publishes the committed state, 1 when one does not).
/// Method: three witnesses with embedded DNS; a policy whose promote hook always fails, so a
/// failover halts at promote; an external DNS server nobody listens on is the mismatch.
#[test]
fn operator_commands_report_their_outcome_in_exit_codes() {
    let c = Cluster::three_with_node_extra(3, DNS_LISTENER, &cli_policy("", ""));

    tracing::info!("--- watch: the current state first");
    let watch = Background::start(
        c.path(),
        "watch",
        &[
            "watch",
            "--server",
            &[1, 2, 3].map(|id| c.addr(id)).join(","),
            "--tls-dir",
            c.certs.to_str().unwrap(),
        ],
    );
    let events = |w: &Background| -> Vec<Value> {
        w.lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("watch prints one JSON object per line"))
            .collect()
    };
    eventually("watch prints the current state", || {
        let e = events(&watch);
        e.first()
            .filter(|e| {
                e["groups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g["name"] == "checkout"))
            })
            .map(|_| ())
    });

    tracing::info!("--- dns check: every embedded server publishes region-a");
    // The leader learns each witness's DNS address from its reports.
    let (code, sources, stderr) = eventually("dns check lists every witness's server", || {
        let (code, sources, stderr) = dns_check(&c);
        (sources.len() == 3).then_some((code, sources, stderr))
    });
    assert_eq!(code, 0, "{stderr} {sources:?}");
    assert!(
        sources
            .iter()
            .all(|s| s["matches"] == true && s["found"] == serde_json::json!(["A 192.0.2.10"])),
        "{sources:?}"
    );

    tracing::info!("--- policy apply --if-version: a stale version is refused");
    let promote = c.write(
        "promote.sh",
        "#!/bin/sh\necho 'standby unreachable' >&2\nexit 3\n",
    );
    std::fs::set_permissions(
        &promote,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let failing_promote = format!(
        "{}\n[hooks.promote-db]\nkind = \"exec\"\nprogram = \"{promote}\"\ntimeout_ms = 5000\n",
        cli_policy(
            "",
            "step_attempts = 1\nhooks = { promote = [\"promote-db\"] }\n"
        )
    );
    let v2 = c.write("v2.toml", &failing_promote);
    let out = c.cli(&["policy", "apply", &v2, "--if-version", "7"]);
    out.refused(
        "policy apply with a stale --if-version",
        EXIT_REFUSED,
        &["error: ", "policy version is 1, not 7", "(stale-policy)"],
    );
    assert_eq!(c.policy_version(), 1, "a refused apply commits nothing");
    let out = c
        .cli(&["policy", "apply", &v2, "--if-version", "1"])
        .ok("policy apply --if-version 1");
    assert!(out.contains("policy version 2 committed"), "{out}");

    tracing::info!("--- a failover halts at promote; skip refuses another step, then skips it");
    let out = c.cli(&[
        "failover", "checkout", "--to", "region-b", "--reason", "drill",
    ]);
    out.refused(
        "failover whose promote hook fails",
        EXIT_REFUSED,
        &[
            "operation 1 halted at promote",
            "standby unreachable",
            "arbiter skip 1 --step promote",
        ],
    );
    let out = c.cli(&["skip", "1", "--step", "validate"]);
    out.refused(
        "skip of a step the operation is not at",
        EXIT_REFUSED,
        &[
            "operation 1 is at step promote, not validate",
            "(wrong-step)",
        ],
    );
    let out = c
        .cli(&["skip", "1", "--step", "promote"])
        .ok("skip promote");
    assert!(out.contains("done: region-b active at epoch 2"), "{out}");
    let ops: Value =
        serde_json::from_str(&c.cli(&["operations", "--json"]).ok("operations --json")).unwrap();
    let op = &ops[0];
    let promote_step = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "promote")
        .unwrap();
    assert_eq!(promote_step["outcome"], "skipped", "{op}");
    assert_eq!(group(&c.status(), "checkout"), ("region-b".to_string(), 2));

    tracing::info!("--- watch saw the failover");
    eventually("watch prints region-b at epoch 2", || {
        events(&watch)
            .iter()
            .any(|e| {
                e["groups"].as_array().is_some_and(|g| {
                    g.iter().any(|g| {
                        g["name"] == "checkout" && g["active"] == "region-b" && g["epoch"] == 2
                    })
                })
            })
            .then_some(())
    });
    let kinds: Vec<String> = events(&watch)
        .iter()
        .flat_map(|e| e["audit"].as_array().cloned().unwrap_or_default())
        .map(|a| a["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in ["operation-declared", "operation-halted", "operation-done"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "watch streamed {kind}: {kinds:?}"
        );
    }

    tracing::info!("--- fence-check: 0 for the current epoch, 1 for the old one");
    let out = c
        .cli(&[
            "fence-check",
            "checkout",
            "--region",
            "region-b",
            "--epoch",
            "2",
        ])
        .ok("fence-check of the current epoch");
    assert!(
        out.contains("allowed: region-b is active for checkout at epoch 2"),
        "{out}"
    );
    let out = c.cli(&[
        "fence-check",
        "checkout",
        "--region",
        "region-a",
        "--epoch",
        "1",
    ]);
    out.refused(
        "fence-check of the old epoch",
        EXIT_REFUSED,
        &["error: refused ("],
    );
    assert!(out.stdout.is_empty(), "{out:#?}");
    let out = c.cli(&[
        "fence-check",
        "checkout",
        "--region",
        "region-b",
        "--epoch",
        "1",
    ]);
    out.refused(
        "fence-check of a stale epoch",
        EXIT_REFUSED,
        &["error: refused ("],
    );

    tracing::info!("--- dns check: an external server that publishes nothing is a mismatch");
    let secret = c.write("tsig.key", &common::authoritative::random_secret());
    let nobody = free_addrs(1)[0];
    let v3 = c.write(
        "v3.toml",
        &cli_policy(
            &format!(
                "servers = [{{ address = \"{nobody}\", zone = \"shop.example.\", tsig_key = \"k.\", algorithm = \"hmac-sha256\", secret = {{ file = \"{secret}\" }}, timeout_ms = 1000 }}]"
            ),
            "",
        ),
    );
    c.cli(&["policy", "apply", &v3])
        .ok("policy with the external server");
    let (code, sources, stderr) = dns_check(&c);
    assert_eq!(code, EXIT_REFUSED, "{stderr} {sources:?}");
    assert!(
        stderr.contains("1 DNS source(s) do not publish the committed state"),
        "{stderr}"
    );
    let bad: Vec<_> = sources.iter().filter(|s| s["matches"] != true).collect();
    assert_eq!(bad.len(), 1, "{sources:?}");
    assert_eq!(bad[0]["source"], format!("server {nobody}"), "{sources:?}");
    assert!(
        sources
            .iter()
            .filter(|s| s["matches"] == true)
            .all(|s| s["found"] == serde_json::json!(["A 198.51.100.10"])),
        "the embedded servers publish region-b: {sources:?}"
    );
    drop(watch);
}
