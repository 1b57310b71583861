//! The checkers judged on small hand-made histories: a valid run passes every checker, and
//! each kind of violation is reported invalid with the offending operations named by their
//! history index.
//!
//! Method: one valid history of a two-region group (`a` active at epoch 1, an operator fails
//! over to `b` at epoch 2 while `a` writes, reads and leases observe the change, a partition
//! is installed and healed, the final state is read) is built by [`valid`]; each test adds or
//! changes a few events and asserts what the checker says about exactly those.

use jepsen::analyze::{self, exit_code};
use jepsen::checker::{self, linearizable, CheckResult, Context, Valid};
use jepsen::history::{History, Op, OpType};
use jepsen::spec::TestSpec;
use serde_json::{json, Value};

/// Events added in any order; `finish` sorts them by time and numbers them.
#[derive(Default)]
struct Builder {
    events: Vec<(u64, Op)>,
}

/// A handle on an event added to a builder, resolved to its history index by `finish`.
#[derive(Clone, Copy)]
struct Key(usize);

impl Builder {
    fn event(&mut self, kind: OpType, process: &str, f: &str, ms: u64, value: Value) -> Key {
        let seq = self.events.len();
        self.events.push((
            seq as u64,
            Op {
                index: 0,
                kind,
                f: f.to_string(),
                value,
                process: process.to_string(),
                node: None,
                time_ns: ms * 1_000_000,
                error: None,
            },
        ));
        Key(seq)
    }

    /// An operation from `start` to `end` ms, with the same value on both events unless
    /// `done` differs.
    fn op(
        &mut self,
        process: &str,
        f: &str,
        start: u64,
        end: u64,
        kind: OpType,
        value: Value,
    ) -> Key {
        let k = self.event(OpType::Invoke, process, f, start, value.clone());
        self.event(kind, process, f, end, value);
        k
    }

    fn write(&mut self, region: &str, epoch: u64, start: u64, end: u64) -> Key {
        let value = json!({"group": "g", "region": region, "epoch": epoch, "seq": start});
        self.op(
            &format!("writer-{region}"),
            "write",
            start,
            end,
            OpType::Ok,
            value,
        )
    }

    fn read(&mut self, reader: &str, active: &str, epoch: u64, start: u64, end: u64) -> Key {
        let k = self.event(
            OpType::Invoke,
            reader,
            "status",
            start,
            json!({"group": "g"}),
        );
        self.event(
            OpType::Ok,
            reader,
            "status",
            end,
            json!({"group": "g", "active": active, "epoch": epoch}),
        );
        k
    }

    fn finish(mut self) -> (History, impl Fn(Key) -> u64) {
        self.events.sort_by_key(|(seq, op)| (op.time_ns, *seq));
        let mut index_of = vec![0u64; self.events.len()];
        let mut ops = Vec::new();
        for (i, (seq, mut op)) in self.events.into_iter().enumerate() {
            op.index = i as u64;
            index_of[seq as usize] = i as u64;
            ops.push(op);
        }
        (History { ops }, move |k: Key| index_of[k.0])
    }
}

fn operation(id: u64, to: &str, from: &str, to_epoch: u64, state: &str, steps: &[&str]) -> Value {
    json!({
        "id": id, "group": "g", "kind": "failover", "from": from, "to": to,
        "from_epoch": to_epoch - 1, "to_epoch": to_epoch, "reason": "test", "actor": "operator",
        "state": state, "error": "", "step": if state == "done" { "done" } else { "fence" },
        "created_at_ms": 0,
        "steps": steps.iter().enumerate().map(|(i, s)| json!({
            "step": s, "outcome": "completed", "detail": "", "finished_at_ms": 0, "index": 10 + i,
        })).collect::<Vec<_>>(),
    })
}

const ALL_STEPS: [&str; 8] = [
    "declare",
    "revoke",
    "fence",
    "rpo-check",
    "promote",
    "activate",
    "dns",
    "validate",
];

/// The final state of the valid run, with `extra` operations appended.
fn final_value(extra_operations: Vec<Value>, mode: &str) -> Value {
    let mut operations = vec![operation(1, "b", "a", 2, "done", &ALL_STEPS)];
    operations.extend(extra_operations);
    json!({
        "status": {
            "groups": [{"name": "g", "active": "b", "epoch": 2, "mode": mode, "candidates": ["a", "b"]}],
            "audit": [
                {"seq": 1, "group": "g", "kind": "group-created", "detail": "group created, active a at epoch 1", "epoch": 1},
                {"seq": 2, "group": "g", "kind": "operation-declared", "detail": "operation 1 (failover) a -> b, epoch 2 reserved: test", "epoch": 1},
                {"seq": 3, "group": "g", "kind": "step", "detail": "operation 1: b active at epoch 2", "epoch": 2},
                {"seq": 4, "group": "g", "kind": "mode", "detail": "mode auto -> manual: test", "epoch": 2}
            ],
            "operations": []
        },
        "operations": operations,
    })
}

/// The valid run, minus its final state (each test adds one).
fn valid_without_final() -> Builder {
    let mut b = Builder::default();
    b.op(
        "nemesis",
        "partition",
        0,
        1,
        OpType::Ok,
        json!({"kind": "partition", "targets": ["n1"], "installed": true}),
    );
    b.read("reader-n1", "a", 1, 5, 8);
    b.write("a", 1, 10, 20);
    b.write("a", 1, 30, 40);
    b.write("a", 1, 50, 60);
    let fo = b.event(
        OpType::Invoke,
        "operator-1",
        "failover",
        100,
        json!({"group": "g", "to": "b", "request_id": "r1"}),
    );
    b.event(
        OpType::Ok,
        "operator-1",
        "failover",
        400,
        json!({"group": "g", "to": "b", "epoch": 2, "operation": 1}),
    );
    let _ = fo;
    b.read("reader-n2", "a", 1, 150, 160);
    b.op(
        "agent-b",
        "lease",
        390,
        395,
        OpType::Ok,
        json!({"group": "g", "region": "b", "epoch": 2, "held": true}),
    );
    b.write("b", 2, 410, 420);
    b.write("b", 2, 430, 440);
    b.read("reader-n1", "b", 2, 450, 460);
    b.op(
        "operator-1",
        "mode",
        500,
        510,
        OpType::Ok,
        json!({"group": "g", "mode": "manual", "request_id": "r2"}),
    );
    b.op(
        "nemesis",
        "heal",
        600,
        610,
        OpType::Ok,
        json!({"installed": true}),
    );
    b.read("reader-n3", "b", 2, 620, 630);
    b
}

fn add_final(b: &mut Builder, value: Value) -> Key {
    let k = b.event(OpType::Invoke, "checker", "final", 700, json!({}));
    b.event(OpType::Ok, "checker", "final", 710, value);
    k
}

fn spec() -> TestSpec {
    let mut spec = TestSpec::new("checkers");
    spec.nemeses = vec!["partition".into()];
    spec.groups = vec!["g".into()];
    spec
}

fn run(history: &History) -> Vec<CheckResult> {
    let spec = spec();
    let ctx = Context::new(history, &spec, None);
    checker::check_all(&ctx)
}

fn result<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .expect("checker ran")
}

fn assert_invalid_naming(results: &[CheckResult], name: &str, indexes: &[u64]) {
    let r = result(results, name);
    assert_eq!(r.valid, Valid::False, "{name} should be invalid: {r:#?}");
    let named = r.offending_indexes();
    for i in indexes {
        assert!(
            named.contains(i),
            "{name} should name op {i}; it names {named:?}: {r:#?}"
        );
    }
}

#[test]
fn a_valid_history_passes_every_checker() {
    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    for r in run(&history) {
        assert_eq!(r.valid, Valid::True, "{r:#?}");
    }
}

#[test]
fn overlapping_write_windows_are_invalid() {
    let mut b = valid_without_final();
    // b writes at epoch 2 while a's window at epoch 1 is still open.
    let early = b.write("b", 2, 45, 55);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "single-writer", &[index(early)]);
    let r = result(&results, "single-writer");
    assert!(
        r.errors.iter().any(|e| e.message.contains("overlap")),
        "{r:#?}"
    );
}

#[test]
fn a_stale_epoch_write_after_a_newer_epochs_write_is_invalid() {
    let mut b = valid_without_final();
    // a writes at epoch 1 after b's first write at epoch 2 was invoked.
    let stale = b.write("a", 1, 470, 480);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "single-writer", &[index(stale)]);
    let r = result(&results, "single-writer");
    assert!(
        r.errors
            .iter()
            .any(|e| e.message.contains("completed after a write at epoch 2")),
        "{r:#?}"
    );
}

#[test]
fn a_write_at_an_epoch_never_activated_for_its_region_is_invalid() {
    let mut b = valid_without_final();
    let bogus = b.write("b", 7, 650, 660);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    assert_invalid_naming(&run(&history), "single-writer", &[index(bogus)]);
}

#[test]
fn a_reused_epoch_is_invalid() {
    let mut b = valid_without_final();
    // Epoch 2 is b's; a lease event says a holds it too.
    let reuse = b.op(
        "agent-a",
        "lease",
        470,
        475,
        OpType::Ok,
        json!({"group": "g", "region": "a", "epoch": 2, "held": true}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "monotone-epochs", &[index(reuse)]);
    let r = result(&results, "monotone-epochs");
    assert!(
        r.errors
            .iter()
            .any(|e| e.message.contains("names two regions")),
        "{r:#?}"
    );
}

#[test]
fn a_lost_acknowledged_failover_is_invalid() {
    let mut b = valid_without_final();
    let lost = b.event(
        OpType::Invoke,
        "operator-2",
        "failback",
        640,
        json!({"group": "g", "to": "a", "request_id": "r3"}),
    );
    b.event(
        OpType::Ok,
        "operator-2",
        "failback",
        690,
        json!({"group": "g", "to": "a", "epoch": 3, "operation": 7}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "acknowledged-commands", &[index(lost)]);
}

#[test]
fn a_lost_acknowledged_mode_change_is_invalid() {
    let mut b = valid_without_final();
    // The final state still says auto, and the audit has no change to manual.
    add_final(&mut b, {
        let mut v = final_value(vec![], "auto");
        v["status"]["audit"].as_array_mut().unwrap().pop();
        v
    });
    let (history, _) = b.finish();
    let results = run(&history);
    let mode = history.ops.iter().find(|o| o.f == "mode").unwrap().index;
    assert_invalid_naming(&results, "acknowledged-commands", &[mode]);
}

#[test]
fn reading_an_older_state_after_a_newer_one_is_not_linearizable() {
    let mut b = valid_without_final();
    let old = b.read("reader-n2", "a", 1, 470, 480);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "linearizable", &[index(old)]);
    // The epoch going back is also an S2 finding.
    assert_invalid_naming(&results, "monotone-epochs", &[index(old)]);
}

#[test]
fn reading_a_state_no_write_produced_is_not_linearizable() {
    let mut b = valid_without_final();
    let phantom = b.read("reader-n2", "b", 5, 470, 480);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "linearizable", &[index(phantom)]);
    let r = result(&results, "linearizable");
    assert!(r.errors[0].message.contains("(b, 5)"), "{r:#?}");
}

#[test]
fn an_unfinished_operation_and_a_repeated_step_are_invalid() {
    let mut b = valid_without_final();
    let running = operation(2, "a", "b", 3, "running", &["declare", "revoke", "revoke"]);
    let fin = add_final(&mut b, final_value(vec![running], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "operations", &[index(fin)]);
    let r = result(&results, "operations");
    assert!(
        r.errors.iter().any(|e| e.message.contains("still running")),
        "{r:#?}"
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.message.contains("step revoke twice")),
        "{r:#?}"
    );
}

#[test]
fn a_dns_source_answering_another_region_is_invalid() {
    let mut b = valid_without_final();
    let mut v = final_value(vec![], "manual");
    v["dns"] = json!([
        {"source": "embedded (witness 1)", "group": "g", "answer": "b"},
        {"source": "server 10.0.0.9:53", "group": "g", "answer": "a"}
    ]);
    add_final(&mut b, v);
    let (history, _) = b.finish();
    let r = run(&history);
    let dns = result(&r, "dns");
    assert_eq!(dns.valid, Valid::False);
    assert_eq!(dns.errors.len(), 1);
    assert!(
        dns.errors[0].message.contains("server 10.0.0.9:53"),
        "{dns:#?}"
    );
}

#[test]
fn the_harness_dns_answers_are_judged_per_source() {
    // What the runner records: dig's output per source, through `Answer::to_json`.
    let answer = |source: &str, code: Option<i32>, dig: &str| {
        jepsen::dns::parse_dig(source, code, dig).to_json()
    };
    let a = "checkout.shop.test. 5 IN A 192.0.2.10\n";
    let b = "checkout.shop.test. 5 IN A 198.51.100.10\n";
    let judge = |answers: Vec<serde_json::Value>| {
        let mut h = valid_without_final();
        let mut v = final_value(vec![], "manual");
        v["status"]["groups"] = json!([{"name": "checkout", "active": "region-a", "epoch": 3}]);
        v["dns"] = json!(answers);
        add_final(&mut h, v);
        let (history, _) = h.finish();
        result(&run(&history), "dns").clone()
    };
    let ok = judge(vec![
        answer("witness-n1", Some(0), a),
        answer("bind", Some(0), a),
    ]);
    assert_eq!(ok.valid, Valid::True, "{ok:#?}");
    assert_eq!(ok.counts["answers from bind"], 1);
    assert_eq!(ok.counts["answers from witness-n1"], 1);

    let bad = judge(vec![
        answer("witness-n1", Some(0), a),
        answer("bind", Some(0), b),
        answer(
            "witness-n2",
            Some(9),
            ";; connection timed out; no servers could be reached\n",
        ),
    ]);
    assert_eq!(bad.valid, Valid::False);
    assert_eq!(bad.errors.len(), 2, "{bad:#?}");
    assert!(
        bad.errors[0].message.contains("bind answers region-b"),
        "{bad:#?}"
    );
    assert!(bad.errors[1].message.contains("timed out"), "{bad:#?}");
}

#[test]
fn a_requested_fault_that_never_happened_and_no_recovery_are_invalid() {
    let mut b = valid_without_final();
    let kill = b.op(
        "nemesis",
        "kill",
        200,
        210,
        OpType::Info,
        json!({"kind": "kill", "targets": ["n2"], "installed": false}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let mut spec = spec();
    spec.nemeses.push("kill".into());
    spec.recovery_s = 0;
    let ctx = Context::new(&history, &spec, None);
    let faults = checker::faults::check(&ctx);
    assert_eq!(faults.valid, Valid::False);
    assert_eq!(faults.offending_indexes(), vec![index(kill)]);
    // The first read after the heal takes 20 ms, above a bound of 0 s.
    let recovery = checker::recovery::check(&ctx);
    assert_eq!(recovery.valid, Valid::False, "{recovery:#?}");
}

#[test]
fn a_search_beyond_the_budget_is_unknown() {
    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let spec = spec();
    let ctx = Context::new(&history, &spec, None);
    let r = linearizable::check(&ctx, 3);
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(r.notes[0].contains("budget"), "{r:#?}");
    assert_eq!(linearizable::check(&ctx, 10_000).valid, Valid::True);
}

#[test]
fn analyze_writes_results_and_report_and_reads_node_logs() {
    let dir = std::env::temp_dir().join(format!("jepsen-analyze-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nodes/n1")).unwrap();
    let mut b = valid_without_final();
    // A value with markup must come out escaped.
    b.op(
        "operator-2",
        "abort",
        520,
        530,
        OpType::Fail,
        json!({"operation": 9, "reason": "<script>x</script>"}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    history.write(&dir.join("history.jsonl")).unwrap();
    spec().write(&dir.join("test.json")).unwrap();
    std::fs::write(dir.join("nodes/n1/arbiter.log"), "starting\nall good\n").unwrap();

    let results = analyze::analyze(&dir).unwrap();
    assert_eq!(results.valid, Valid::True, "{:#?}", results.checkers);
    assert_eq!(results.exit_code(), 0);
    for name in ["results.json", "timeline.html", "latency.svg", "rate.svg"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(!text.is_empty(), "{name} is empty");
        assert!(!text.contains("<script>"), "{name} has unescaped text");
    }
    let html = std::fs::read_to_string(dir.join("timeline.html")).unwrap();
    assert!(
        html.contains("&lt;script&gt;"),
        "the abort's value is shown, escaped"
    );
    assert!(html.contains("writes g/a") && html.contains("partition"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["checkers"]["single-writer"]["valid"], true);

    // A panic in a node log makes the run invalid, naming the file and line.
    std::fs::write(
        dir.join("nodes/n1/arbiter.log"),
        "starting\nthread 'tokio-runtime-worker' panicked at src/state/mod.rs:10:5:\nepoch monotonicity violated\n",
    )
    .unwrap();
    let results = analyze::analyze(&dir).unwrap();
    assert_eq!(results.valid, Valid::False);
    assert_eq!(results.exit_code(), 1);
    let logs = &results.checkers["node-logs"];
    assert_eq!(logs.errors[0].file.as_deref(), Some("nodes/n1/arbiter.log"));
    assert_eq!(logs.errors[0].line, Some(2));

    // A budget too small for the search: unknown, exit code 2.
    std::fs::write(dir.join("nodes/n1/arbiter.log"), "fine\n").unwrap();
    let mut small = spec();
    small.linearizable_steps = 2;
    small.write(&dir.join("test.json")).unwrap();
    let results = analyze::analyze(&dir).unwrap();
    assert_eq!(results.valid, Valid::Unknown);
    assert_eq!(exit_code(results.valid), 2);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["valid"], "unknown");
    if std::env::var_os("JEPSEN_KEEP_REPORT").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn dns_entries_as_the_cli_prints_them_are_judged_by_matches() {
    let entry = |source: &str, matches: bool| {
        json!({"group": "g", "name": "app.example.", "source": source,
               "expected": ["A 10.0.0.2"], "found": if matches { "A 10.0.0.2" } else { "A 10.0.0.1" },
               "matches": matches, "error": ""})
    };
    for (entries, valid) in [
        (
            vec![
                entry("embedded (witness 1)", true),
                entry("server 10.0.0.9:53", true),
            ],
            Valid::True,
        ),
        (
            vec![
                entry("embedded (witness 1)", true),
                entry("server 10.0.0.9:53", false),
            ],
            Valid::False,
        ),
    ] {
        let mut b = valid_without_final();
        let mut v = final_value(vec![], "manual");
        v["status"]["dns"] = json!(entries.clone());
        v["dns"] = json!(entries);
        add_final(&mut b, v);
        let (history, _) = b.finish();
        let r = run(&history);
        assert_eq!(result(&r, "dns").valid, valid, "{:#?}", result(&r, "dns"));
    }
}

#[test]
fn an_automatic_failover_known_only_from_the_final_state_explains_the_reads() {
    let mut b = valid_without_final();
    let mut v = final_value(vec![], "manual");
    v["operations"][0]["kind"] = json!("automatic");
    add_final(&mut b, v);
    let (mut history, _) = b.finish();
    history.ops.retain(|o| o.f != "failover");
    let results = run(&history);
    let r = result(&results, "linearizable");
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    // Without the final state the activation is unknown: the new epoch's reads cannot be
    // explained, which is `unknown`, not a violation.
    history.ops.retain(|o| o.f != "final");
    let results = run(&history);
    assert_eq!(result(&results, "linearizable").valid, Valid::Unknown);
}

/// Goal: S1 gives no verdict without evidence: a history without an accepted write, or with
/// a write the checker cannot read, is unknown, never valid.
#[test]
fn single_writer_without_evidence_is_unknown() {
    let mut b = Builder::default();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let results = run(&history);
    let r = result(&results, "single-writer");
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");

    let mut b = valid_without_final();
    b.op(
        "writer-a",
        "write",
        70,
        80,
        OpType::Ok,
        json!({"group": "g", "region": "a", "seq": 70}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let results = run(&history);
    let r = result(&results, "single-writer");
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert_eq!(r.counts["writes-unreadable"], 1, "{r:#?}");
}
