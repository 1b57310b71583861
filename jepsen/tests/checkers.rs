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

    /// What the DNS reader records: `source` answered `region`'s records.
    fn dns_read(&mut self, source: &str, region: &str, start: u64, end: u64) -> Key {
        self.op(
            "reader-dns",
            "dns-read",
            start,
            end,
            OpType::Ok,
            json!({"group": "g", "source": source, "answer": region, "records": ["10.0.0.1"]}),
        )
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
        "dns": [
            {"source": "witness-n1", "group": "g", "answer": "b"},
            {"source": "bind", "group": "g", "answer": "b"}
        ],
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
    // The DNS reader: a's records before the failover, b's after it.
    for k in 0..6 {
        b.dns_read("witness-n1", "a", 11 + 10 * k, 13 + 10 * k);
        b.dns_read("bind", "b", 470 + 20 * k, 472 + 20 * k);
    }
    b.write("a", 1, 10, 20);
    b.write("a", 1, 30, 40);
    b.write("a", 1, 50, 60);
    // Enough writes for the availability checker's minimum.
    for k in 0..18 {
        b.write("a", 1, 61 + 2 * k, 62 + 2 * k);
    }
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

/// A run directory with a log per witness of [`spec`], for the node-logs checker.
fn logs_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("jepsen-logs-{}", std::process::id()));
        for n in 1..=spec().nodes {
            let node = dir.join(format!("nodes/n{n}"));
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("serve.log"), "starting\nall good\n").unwrap();
        }
        dir
    })
}

fn run(history: &History) -> Vec<CheckResult> {
    let spec = spec();
    let ctx = Context::new(history, &spec, Some(logs_dir()));
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

/// A hook call as the collector records it: witness `witness` at `term` started hook `hook`
/// for `step` of operation `operation` (group `g`, epoch `epoch`) at `ms`.
#[allow(clippy::too_many_arguments)]
fn hook_call(
    b: &mut Builder,
    witness: u64,
    term: u64,
    operation: u64,
    epoch: u64,
    step: &str,
    hook: &str,
    ms: u64,
) -> Key {
    b.op(
        &format!("hook-n{witness}"),
        "hook",
        ms + 1,
        ms + 1,
        OpType::Ok,
        json!({"hook": hook, "group": "g", "from": "a", "to": "b", "epoch": epoch,
               "operation": operation, "step": step, "witness": witness, "term": term,
               "mono_ns": 5_000_000_000u64 + ms * 1_000_000, "call_ns": ms * 1_000_000}),
    )
}

/// The hooks of the valid run's failover (operation 1, epoch 2): witness 1 leads at term 2.
fn valid_hook_calls(b: &mut Builder) {
    hook_call(b, 1, 2, 1, 2, "fence", "fence-db", 150);
    hook_call(b, 1, 2, 1, 2, "promote", "promote-db", 250);
    hook_call(b, 1, 2, 1, 2, "validate", "check-b", 420);
}

/// The quorum verdict an automatic failover's reason carries: `down` of `down` witnesses
/// out of three, majority two.
fn verdict(down: usize) -> String {
    let mut reason = "b is down by quorum verdict; a is up\n3 voters, majority 2:".to_string();
    for w in 1..=3 {
        let seen = if w <= down {
            "down for 900 ms (report 5 ms old): timeout"
        } else {
            "up for 100 ms (report 1 ms old)"
        };
        reason += &format!("\n  witness {w}: {seen}");
    }
    reason
}

/// An automatic failover back to `a` (operation 2, epoch 3) that an operator aborted at its
/// fence step, so it activated nothing: S7 judges it all the same.
fn automatic_operation(reason: &str) -> Value {
    json!({
        "id": 2, "group": "g", "kind": "automatic", "from": "b", "to": "a",
        "from_epoch": 2, "to_epoch": 3, "reason": reason, "actor": "arbiter",
        "state": "aborted", "error": "", "step": "fence", "created_at_ms": 0,
        "steps": [{"step": "declare", "outcome": "completed", "detail": "", "finished_at_ms": 0, "index": 20}],
    })
}

#[test]
fn a_valid_history_passes_every_checker() {
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    add_final(
        &mut b,
        final_value(vec![automatic_operation(&verdict(2))], "manual"),
    );
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
    for n in 1..=3 {
        std::fs::create_dir_all(dir.join(format!("nodes/n{n}"))).unwrap();
    }
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
    valid_hook_calls(&mut b);
    add_final(
        &mut b,
        final_value(vec![automatic_operation(&verdict(2))], "manual"),
    );
    let (history, _) = b.finish();
    history.write(&dir.join("history.jsonl")).unwrap();
    spec().write(&dir.join("test.json")).unwrap();
    for n in 1..=3 {
        std::fs::write(
            dir.join(format!("nodes/n{n}/serve.log")),
            "starting\nall good\n",
        )
        .unwrap();
    }

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
        dir.join("nodes/n1/serve.log"),
        "starting\nthread 'tokio-runtime-worker' panicked at src/state/mod.rs:10:5:\nepoch monotonicity violated\n",
    )
    .unwrap();
    let results = analyze::analyze(&dir).unwrap();
    assert_eq!(results.valid, Valid::False);
    assert_eq!(results.exit_code(), 1);
    let logs = &results.checkers["node-logs"];
    assert_eq!(logs.errors[0].file.as_deref(), Some("nodes/n1/serve.log"));
    assert_eq!(logs.errors[0].line, Some(2));

    // A budget too small for the search: unknown, exit code 2.
    std::fs::write(dir.join("nodes/n1/serve.log"), "fine\n").unwrap();
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
    v["operations"][0]["actor"] = json!("arbiter");
    v["operations"][0]["reason"] = json!(AUTOMATIC_REASON);
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

/// The reason of an automatic failover as the cluster records it: the quorum verdict.
const AUTOMATIC_REASON: &str = "a is down by quorum verdict; b is up\n3 voters, majority 2:\n  \
    witness 1: down for 1200 ms (report 20 ms old): timeout\n  \
    witness 2: down for 1100 ms (report 40 ms old): timeout\n  \
    witness 3: no report for 0 ms (report 0 ms old)";

/// The lease of `region` at `epoch` held from `start` until `end` ms, as the writer
/// records its agent's hold changing.
fn hold(b: &mut Builder, region: &str, epoch: u64, start: u64, end: u64) {
    for (at, held) in [(start, true), (end, false)] {
        b.op(
            &format!("agent-{region}"),
            "lease",
            at,
            at + 1,
            OpType::Ok,
            json!({"group": "g", "region": region, "epoch": epoch, "held": held}),
        );
    }
}

/// Goal: S1 states its minimums: an epoch whose lease an agent held for seconds with only a
/// few writes, or a region that held the lease long with few writes, is unknown, while a
/// hold too short for the minimum is only noted.
///
/// Method: a lease of a at epoch 1 held 3 s with 2 writes (below the per-epoch minimum);
/// then one held 6 s with 10 writes (enough for the epoch, not for the region); then the
/// same 6 s hold with 25 writes (valid); and a 0.5 s hold with 2 writes (noted, valid).
#[test]
fn single_writer_below_its_stated_minimums_is_unknown() {
    use jepsen::checker::single_writer::{WRITES_PER_HELD_EPOCH_MIN, WRITES_PER_REGION_MIN};
    let judge = |held_ms: u64, writes: u64| {
        let mut b = Builder::default();
        hold(&mut b, "a", 1, 0, held_ms);
        for k in 0..writes {
            b.write("a", 1, 10 + 10 * k, 15 + 10 * k);
        }
        let mut v = final_value(vec![], "manual");
        v["status"]["groups"][0]["active"] = json!("a");
        v["status"]["groups"][0]["epoch"] = json!(1);
        add_final(&mut b, v);
        let (history, _) = b.finish();
        result(&run(&history), "single-writer").clone()
    };
    const { assert!(2 < WRITES_PER_HELD_EPOCH_MIN && 10 < WRITES_PER_REGION_MIN) };
    let r = judge(3_000, 2);
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("at epoch 1 for 3.000s")),
        "{r:#?}"
    );
    let r = judge(6_000, 10);
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("made only 10 accepted write(s), fewer than the 20")),
        "{r:#?}"
    );
    let r = judge(6_000, 25);
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    let r = judge(500, 2);
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("not enough to apply the minimum")),
        "{r:#?}"
    );
}

/// Goal: a writer that could not do its job (it recorded a `workload-error`) makes S1
/// unknown, even when every write it did make is fine.
#[test]
fn a_writer_that_could_not_write_makes_single_writer_unknown() {
    let mut b = valid_without_final();
    b.op(
        "writer-b",
        "workload-error",
        300,
        301,
        OpType::Fail,
        json!({"group": "g", "region": "b", "what": "cannot open the write log"}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let r = result(&run(&history), "single-writer").clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert_eq!(r.counts["writer-errors"], 1, "{r:#?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("writer-b could not write")),
        "{r:#?}"
    );
}

/// Goal: a final state that does not parse into the CLI's shape is no evidence: every
/// checker that reads it says unknown and names the parse error, none reads it as empty.
#[test]
fn a_final_state_of_the_wrong_shape_is_unknown_not_empty() {
    for bad in [
        json!({"status": {"groups": "none", "audit": [], "operations": []}}),
        json!({"status": {"groups": [{"name": "g"}], "audit": [], "operations": []}}),
        json!({"operations": []}),
    ] {
        let mut b = valid_without_final();
        add_final(&mut b, bad.clone());
        let (history, _) = b.finish();
        let results = run(&history);
        for name in [
            "single-writer",
            "monotone-epochs",
            "acknowledged-commands",
            "dns",
            "operations",
            "linearizable",
        ] {
            let r = result(&results, name);
            assert_eq!(r.valid, Valid::Unknown, "{name} on {bad}: {r:#?}");
            assert!(
                r.notes.iter().any(|n| n.contains("does not parse")),
                "{name} on {bad}: {r:#?}"
            );
        }
    }
}

/// Goal: S2 and S6 give no verdict without evidence: no final state, no observation of an
/// epoch during the run, or a final state without operations is unknown.
#[test]
fn epochs_and_operations_without_evidence_are_unknown() {
    // Truncated: the run ended before its final state.
    let (history, _) = valid_without_final().finish();
    let results = run(&history);
    assert_eq!(result(&results, "monotone-epochs").valid, Valid::Unknown);
    assert_eq!(result(&results, "operations").valid, Valid::Unknown);
    assert_eq!(
        result(&results, "acknowledged-commands").valid,
        Valid::Unknown
    );

    // Empty but for a final state with no operation: nothing observed, nothing resumed.
    let mut b = Builder::default();
    let mut v = final_value(vec![], "manual");
    v["operations"] = json!([]);
    add_final(&mut b, v);
    let (history, _) = b.finish();
    let results = run(&history);
    let epochs = result(&results, "monotone-epochs");
    assert_eq!(epochs.valid, Valid::Unknown, "{epochs:#?}");
    assert!(
        epochs.notes[0].contains("no epoch was observed"),
        "{epochs:#?}"
    );
    let ops = result(&results, "operations");
    assert_eq!(ops.valid, Valid::Unknown, "{ops:#?}");
    assert!(ops.notes[0].contains("lists no operation"), "{ops:#?}");
    // The operator workload was asked for (`all`) and nothing was acknowledged.
    let acked = result(&results, "acknowledged-commands");
    assert_eq!(acked.valid, Valid::Unknown, "{acked:#?}");
}

/// Goal: S5 gives no verdict without evidence: no final state, no final DNS answers, or too
/// few DNS answers during the run is unknown.
#[test]
fn dns_without_evidence_is_unknown() {
    let (history, _) = valid_without_final().finish();
    assert_eq!(result(&run(&history), "dns").valid, Valid::Unknown);

    let mut b = valid_without_final();
    let mut v = final_value(vec![], "manual");
    v.as_object_mut().unwrap().remove("dns");
    add_final(&mut b, v);
    let (history, _) = b.finish();
    let r = result(&run(&history), "dns").clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("no DNS answers")),
        "{r:#?}"
    );

    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (mut history, _) = b.finish();
    history.ops.retain(|o| o.f != "dns-read");
    let r = result(&run(&history), "dns").clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("only 0 DNS answer(s)")),
        "{r:#?}"
    );
}

/// Goal: S5 judges the DNS reader's answers during the run: an answer naming a region before
/// any activation of it could have been committed is invalid, naming that read; an answer
/// lagging behind a failover (the old region, committed earlier) is not.
///
/// Method: bind answers b at 120 ms, while a status read invoked at 150 ms still sees epoch
/// 1, so b's activation (epoch 2) was not committed yet; witness-n1 answers a at 500 ms,
/// after the failover to b, which is a lagging but committed answer.
#[test]
fn a_dns_answer_ahead_of_consensus_is_invalid() {
    let mut b = valid_without_final();
    let early = b.dns_read("bind", "b", 115, 120);
    b.dns_read("witness-n1", "a", 500, 505);
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    let r = result(&results, "dns");
    assert_eq!(r.offending_indexes(), vec![index(early)], "{r:#?}");
    assert!(
        r.errors[0].message.contains("before any activation of b"),
        "{r:#?}"
    );
}

/// Goal: linearizability explains an activation without a recorded command only by an
/// operation the cluster started itself with its evidence; one started by an operator that
/// the history never recorded, or an automatic one without its quorum verdict, is invalid.
#[test]
fn an_activation_neither_commanded_nor_automatic_is_invalid() {
    for (kind, actor, reason) in [
        ("failover", "operator", "test"),
        ("automatic", "arbiter", "a is down"),
        ("automatic", "operator", AUTOMATIC_REASON),
    ] {
        let mut b = valid_without_final();
        let mut v = final_value(vec![], "manual");
        v["operations"][0]["kind"] = json!(kind);
        v["operations"][0]["actor"] = json!(actor);
        v["operations"][0]["reason"] = json!(reason);
        add_final(&mut b, v);
        let (mut history, _) = b.finish();
        history.ops.retain(|o| o.f != "failover");
        let results = run(&history);
        let r = result(&results, "linearizable");
        assert_eq!(r.valid, Valid::False, "{kind} by {actor}: {r:#?}");
        assert!(
            r.errors[0]
                .message
                .contains("matches no recorded operator command"),
            "{r:#?}"
        );
    }
}

/// Goal: node logs give no verdict without evidence: no run directory, no logs, a witness
/// without its log, or an empty log is unknown.
#[test]
fn node_logs_without_evidence_are_unknown() {
    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let spec = spec();
    let judge = |dir: Option<&std::path::Path>| {
        checker::node_logs::check(&Context::new(&history, &spec, dir))
    };
    let r = judge(None);
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");

    let dir = std::env::temp_dir().join(format!("jepsen-no-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nodes/n1")).unwrap();
    let r = judge(Some(&dir));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(r.notes.iter().any(|n| n.contains("no node logs")), "{r:#?}");

    for n in 1..=2 {
        std::fs::create_dir_all(dir.join(format!("nodes/n{n}"))).unwrap();
        std::fs::write(dir.join(format!("nodes/n{n}/serve.log")), "fine\n").unwrap();
    }
    let r = judge(Some(&dir));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("nodes/n3/serve.log is missing")),
        "{r:#?}"
    );

    std::fs::create_dir_all(dir.join("nodes/n3")).unwrap();
    std::fs::write(dir.join("nodes/n3/serve.log"), "").unwrap();
    let r = judge(Some(&dir));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("n3/serve.log is empty")),
        "{r:#?}"
    );

    std::fs::write(dir.join("nodes/n3/serve.log"), "fine\n").unwrap();
    // A standby agent with nothing to say is noted, not a lost witness.
    std::fs::create_dir_all(dir.join("nodes/db-b")).unwrap();
    std::fs::write(dir.join("nodes/db-b/agent.log"), "").unwrap();
    let r = judge(Some(&dir));
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("agent.log is empty")),
        "{r:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Goal: a clock fault counts as installed only with the probes that read the faked clock
/// back (`verified`); one that only claims `installed: true` does not.
#[test]
fn a_clock_fault_without_its_read_back_did_not_happen() {
    let judge = |value: Value| {
        let mut b = valid_without_final();
        b.op("nemesis", "clock", 200, 210, OpType::Ok, value);
        add_final(&mut b, final_value(vec![], "manual"));
        let (history, _) = b.finish();
        let mut spec = spec();
        spec.nemeses.push("clock".into());
        checker::faults::check(&Context::new(&history, &spec, None))
    };
    let r =
        judge(json!({"kind": "clock", "targets": ["n1"], "faketime": "+300s", "installed": true}));
    assert_eq!(r.valid, Valid::False, "{r:#?}");
    assert!(
        r.errors[0].message.contains("faked clock read back"),
        "{r:#?}"
    );
    let r = judge(
        json!({"kind": "clock", "targets": ["n1"], "faketime": "+300s", "installed": true,
        "verified": [{"host": "n1", "offset_s": 300.01, "rate": 1.0}]}),
    );
    assert_eq!(r.valid, Valid::True, "{r:#?}");
}

/// Goal: S3 is judged on the hook calls: a call for an operation, epoch or step the final
/// state never committed is invalid, and so is a call of an older term that started after a
/// call of a newer term (a deposed leader acting); calls of the old term that started
/// before the new term's first call are fine.
#[test]
fn hook_calls_without_a_committed_decision_or_from_a_deposed_leader_are_invalid() {
    let checker = "consensus-before-action";
    let final_ok = || final_value(vec![automatic_operation(&verdict(2))], "manual");

    // Valid: a leader change in the middle of promote; the old leader's last call started
    // before the new leader's first.
    let mut b = valid_without_final();
    hook_call(&mut b, 1, 2, 1, 2, "fence", "fence-db", 150);
    hook_call(&mut b, 1, 2, 1, 2, "promote", "promote-db", 250);
    hook_call(&mut b, 2, 3, 1, 2, "promote", "promote-db", 300);
    hook_call(&mut b, 2, 3, 1, 2, "validate", "check-b", 420);
    add_final(&mut b, final_ok());
    let (history, _) = b.finish();
    let r = result(&run(&history), checker).clone();
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert_eq!(r.counts["terms"], 2, "{r:#?}");

    // A call for an operation the final state does not have, one at an epoch its operation
    // never had, and one for a step its operation never reached.
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    let unknown_op = hook_call(&mut b, 1, 2, 9, 5, "fence", "fence-db", 500);
    let wrong_epoch = hook_call(&mut b, 1, 2, 1, 7, "promote", "promote-db", 510);
    let unreached = hook_call(&mut b, 1, 2, 2, 3, "promote", "promote-db", 520);
    add_final(&mut b, final_ok());
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(
        &results,
        checker,
        &[index(unknown_op), index(wrong_epoch), index(unreached)],
    );
    let r = result(&results, checker);
    assert_eq!(r.counts["errors"], 3, "{r:#?}");
    assert!(
        r.errors
            .iter()
            .any(|e| e.message.contains("never reached step promote")),
        "{r:#?}"
    );

    // The old leader (witness 1, term 2) calls validate after witness 2 at term 3 called
    // promote: deposed, it acted.
    let mut b = valid_without_final();
    hook_call(&mut b, 1, 2, 1, 2, "fence", "fence-db", 150);
    hook_call(&mut b, 1, 2, 1, 2, "promote", "promote-db", 250);
    let newer = hook_call(&mut b, 2, 3, 1, 2, "promote", "promote-db", 300);
    let deposed = hook_call(&mut b, 1, 2, 1, 2, "validate", "check-b", 600);
    add_final(&mut b, final_ok());
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, checker, &[index(deposed), index(newer)]);
    let r = result(&results, checker);
    assert!(
        r.errors[0].message.contains("a deposed leader acted"),
        "{r:#?}"
    );
    assert_eq!(r.counts["errors"], 1, "{r:#?}");

    // A step that ran no hook (`no-op`) needs no call.
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    let mut v = final_ok();
    v["operations"][0]["steps"][3]["outcome"] = json!("no-op");
    v["operations"][0]["steps"][3]["detail"] = json!("no rpo-check hook configured");
    add_final(&mut b, v);
    let (history, _) = b.finish();
    assert_eq!(result(&run(&history), checker).valid, Valid::True);

    // Within the ordering margin the two calls are not ordered.
    let mut b = valid_without_final();
    hook_call(&mut b, 1, 2, 1, 2, "fence", "fence-db", 150);
    hook_call(&mut b, 2, 3, 1, 2, "promote", "promote-db", 200);
    hook_call(&mut b, 1, 2, 1, 2, "promote", "promote-db", 250);
    hook_call(&mut b, 2, 3, 1, 2, "validate", "check-b", 420);
    add_final(&mut b, final_ok());
    let (history, _) = b.finish();
    assert_eq!(result(&run(&history), checker).valid, Valid::True);
}

/// Goal: S3 gives no verdict without evidence: no final state, no hook call at all, a call
/// without its term, or a step that ran hooks with no call recorded is unknown.
#[test]
fn consensus_before_action_without_evidence_is_unknown() {
    let checker = "consensus-before-action";
    // No final state.
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    let (history, _) = b.finish();
    assert_eq!(result(&run(&history), checker).valid, Valid::Unknown);

    // No hook call.
    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let r = result(&run(&history), checker).clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(r.notes[0].contains("nothing to judge"), "{r:#?}");

    // A call without its term.
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    b.op(
        "hook-n1",
        "hook",
        300,
        300,
        OpType::Ok,
        json!({"hook": "h", "group": "g", "epoch": 2, "operation": 1, "step": "promote",
               "witness": 1, "call_ns": 300_000_000u64}),
    );
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let r = result(&run(&history), checker).clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(r.notes.iter().any(|n| n.contains("no `term`")), "{r:#?}");

    // The final state says validate ran a hook; no call of it was recorded.
    let mut b = valid_without_final();
    hook_call(&mut b, 1, 2, 1, 2, "fence", "fence-db", 150);
    let mut v = final_value(vec![], "manual");
    v["operations"][0]["steps"][7]["detail"] = json!("hook check-b: exit code 0 after 3 ms");
    add_final(&mut b, v);
    let (history, _) = b.finish();
    let r = result(&run(&history), checker).clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("step validate of operation 1")),
        "{r:#?}"
    );
}

/// Goal: S7 reads the committed evidence of every operation the cluster started itself: an
/// automatic failover with a majority of `down` is valid, fewer is invalid (and so is an
/// `automatic` operation not started by the cluster); a failback of its own must say it is
/// the automatic failback; a final state without operations of its own is unknown.
#[test]
fn an_automatic_failover_without_a_majority_down_is_invalid() {
    let checker = "quorum-verdict";
    let judge = |reason: &str, actor: &str| {
        let mut b = valid_without_final();
        let mut op = automatic_operation(reason);
        op["actor"] = json!(actor);
        add_final(&mut b, final_value(vec![op], "manual"));
        let (history, _) = b.finish();
        result(&run(&history), checker).clone()
    };
    let r = judge(&verdict(3), "arbiter");
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert_eq!(r.counts["automatic-failovers"], 1, "{r:#?}");

    let r = judge(&verdict(1), "arbiter");
    assert_eq!(r.valid, Valid::False, "{r:#?}");
    assert!(
        r.errors[0].message.contains("no majority of witnesses"),
        "{r:#?}"
    );
    assert_eq!(judge("b is down", "arbiter").valid, Valid::False);
    assert_eq!(judge(&verdict(2), "operator").valid, Valid::False);

    // The cluster's own failback: its reason must say it is the automatic failback.
    let failback = |reason: &str| {
        let mut b = valid_without_final();
        let mut op = automatic_operation(reason);
        op["kind"] = json!("failback");
        add_final(&mut b, final_value(vec![op], "manual"));
        let (history, _) = b.finish();
        result(&run(&history), checker).clone()
    };
    let r = failback("a has been up for 4000 ms: automatic failback");
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert!(
        r.notes.iter().any(|n| n.contains("only the failback rule")),
        "{r:#?}"
    );
    assert_eq!(failback("because").valid, Valid::False);

    // No automatic failover, and no final state: unknown.
    let mut b = valid_without_final();
    add_final(&mut b, final_value(vec![], "manual"));
    let (history, _) = b.finish();
    let r = result(&run(&history), checker).clone();
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    let (history, _) = valid_without_final().finish();
    assert_eq!(result(&run(&history), checker).valid, Valid::Unknown);
}

/// An operation (group `g`, `a` -> `b`, epoch 3) in `state` at `step`, with `steps` as
/// `(step, outcome, detail)`.
fn operation_with(id: u64, state: &str, step: &str, steps: &[(&str, &str, &str)]) -> Value {
    json!({
        "id": id, "group": "g", "kind": "failover", "from": "b", "to": "a",
        "from_epoch": 2, "to_epoch": 3, "reason": "test", "actor": "operator",
        "state": state, "error": "", "step": step, "created_at_ms": 0,
        "steps": steps.iter().enumerate().map(|(i, (s, outcome, detail))| json!({
            "step": s, "outcome": outcome, "detail": detail, "finished_at_ms": 0, "index": 30 + i,
        })).collect::<Vec<_>>(),
    })
}

/// A step action of `operator-1`: `f` of `operation` targeting `step`, ending `kind` (with
/// the CLI's `error_kind` when refused) between `start` and `start + 5` ms.
fn step_action(
    b: &mut Builder,
    f: &str,
    operation: u64,
    step: &str,
    start: u64,
    kind: OpType,
    error_kind: Option<&str>,
) -> Key {
    let value = json!({"group": "g", "operation": operation, "step": step,
                       "seen_state": "running", "seen_step": step});
    let k = b.event(OpType::Invoke, "operator-1", f, start, value.clone());
    let mut done = value;
    if let Some(e) = error_kind {
        done["error_kind"] = json!(e);
    }
    b.event(kind, "operator-1", f, start + 5, done);
    k
}

/// Goal: refused step actions change nothing, and accepted ones that the final state shows
/// leave every checker valid; `results.json`'s summary counts them per kind and step.
/// Method: the valid run plus an accepted skip of operation 3's rpo-check (recorded skipped,
/// the operation halted at promote), an accepted abort of operation 4 at its fence (aborted),
/// and refusals: an abort at the promote (`promote-started`), a skip of the fence
/// (`not-skippable`), a retry of a running operation (`operation-state`).
#[test]
fn step_actions_the_final_state_shows_are_valid_and_counted() {
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    step_action(&mut b, "skip", 3, "rpo-check", 520, OpType::Ok, None);
    step_action(&mut b, "abort", 4, "fence", 530, OpType::Ok, None);
    step_action(
        &mut b,
        "abort",
        3,
        "promote",
        540,
        OpType::Fail,
        Some("promote-started"),
    );
    step_action(
        &mut b,
        "skip",
        3,
        "fence",
        550,
        OpType::Fail,
        Some("not-skippable"),
    );
    step_action(
        &mut b,
        "retry",
        3,
        "promote",
        560,
        OpType::Fail,
        Some("operation-state"),
    );
    let skipped = operation_with(
        3,
        "halted",
        "promote",
        &[
            ("declare", "completed", ""),
            ("revoke", "completed", ""),
            ("fence", "completed", ""),
            ("rpo-check", "skipped", "skipped by operator"),
        ],
    );
    let aborted = operation_with(4, "aborted", "done", &[("declare", "completed", "")]);
    let automatic = automatic_operation(&verdict(2));
    add_final(
        &mut b,
        final_value(vec![automatic, skipped, aborted], "manual"),
    );
    let (history, _) = b.finish();
    for r in run(&history) {
        assert_eq!(r.valid, Valid::True, "{r:#?}");
    }
    let spec = spec();
    let summary = analyze::check(&history, &spec, Some(logs_dir())).operator_actions;
    let skip = &summary["skip"];
    assert_eq!((skip["rpo-check"].accepted, skip["fence"].refused), (1, 1));
    assert_eq!(skip["fence"].kinds["not-skippable"], 1);
    assert_eq!(summary["abort"]["fence"].accepted, 1);
    assert_eq!(summary["abort"]["promote"].kinds["promote-started"], 1);
    assert_eq!(summary["retry"]["promote"].refused, 1);
}

/// Goal: S4 reports an acknowledged abort whose operation did not end aborted and an
/// acknowledged skip whose step the final state does not show skipped.
#[test]
fn acknowledged_aborts_and_skips_the_final_state_lacks_are_invalid() {
    let mut b = valid_without_final();
    let skip = step_action(&mut b, "skip", 3, "validate", 520, OpType::Ok, None);
    let abort = step_action(&mut b, "abort", 4, "revoke", 530, OpType::Ok, None);
    let refused = step_action(
        &mut b,
        "abort",
        3,
        "dns",
        540,
        OpType::Fail,
        Some("already-activated"),
    );
    let halted = operation_with(
        3,
        "halted",
        "validate",
        &[("declare", "completed", ""), ("revoke", "completed", "")],
    );
    let not_aborted = operation_with(4, "halted", "fence", &[("declare", "completed", "")]);
    add_final(&mut b, final_value(vec![halted, not_aborted], "manual"));
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(
        &results,
        "acknowledged-commands",
        &[index(skip), index(abort)],
    );
    let r = result(&results, "acknowledged-commands");
    assert!(!r.offending_indexes().contains(&index(refused)), "{r:#?}");
    assert!(
        r.errors
            .iter()
            .any(|e| e.message.contains("no skipped step \"validate\"")),
        "{r:#?}"
    );
}

/// Goal: S6 accounts for aborted and skipped steps: a skipped fence (it guards S1), a step
/// skipped by an operator with no skip command that may have taken effect (only a refused
/// one), an aborted operation that recorded its activation and a done operation that lacks
/// a step are each invalid; a step superseded by a newer operation needs no command.
#[test]
fn unaccounted_aborted_and_skipped_steps_are_invalid() {
    let mut b = valid_without_final();
    step_action(
        &mut b,
        "skip",
        4,
        "promote",
        520,
        OpType::Fail,
        Some("wrong-step"),
    );
    let head = [
        ("declare", "completed", ""),
        ("revoke", "completed", ""),
        ("fence", "skipped", "skipped by operator"),
    ];
    let fence_skipped = operation_with(3, "halted", "rpo-check", &head);
    let uncommanded = operation_with(
        4,
        "halted",
        "activate",
        &[
            ("declare", "completed", ""),
            ("revoke", "completed", ""),
            ("fence", "completed", ""),
            ("rpo-check", "no-op", ""),
            ("promote", "skipped", "skipped by operator"),
        ],
    );
    let aborted_active = operation_with(
        5,
        "aborted",
        "done",
        &[("declare", "completed", ""), ("activate", "completed", "")],
    );
    let done_short = operation_with(
        6,
        "done",
        "done",
        &[
            ("declare", "completed", ""),
            ("revoke", "completed", ""),
            ("fence", "completed", ""),
            ("rpo-check", "no-op", ""),
            ("promote", "no-op", ""),
            ("activate", "completed", ""),
            (
                "validate",
                "skipped",
                "superseded by operation 7 (halted: dns)",
            ),
        ],
    );
    let fin = add_final(
        &mut b,
        final_value(
            vec![fence_skipped, uncommanded, aborted_active, done_short],
            "manual",
        ),
    );
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "operations", &[index(fin)]);
    let r = result(&results, "operations");
    for needle in [
        "operation 3 skipped step fence, which guards single-writer safety",
        "operation 4 recorded step promote skipped by operator, but no skip command",
        "operation 5 is aborted but recorded its activate step",
        "operation 6 is done but recorded the steps",
    ] {
        assert!(
            r.errors.iter().any(|e| e.message.contains(needle)),
            "{needle}: {r:#?}"
        );
    }
    assert!(
        !r.errors
            .iter()
            .any(|e| e.message.contains("operation 6 recorded step validate")),
        "a superseded step needs no command: {r:#?}"
    );
    assert_eq!(r.counts["errors"], 4, "{r:#?}");
}

/// Goal: a fence hook called for an operation that an abort then ended during its fence is
/// a committed decision's call (arbiter moves an aborted operation to step `done`, so S3
/// takes the step after its last recorded one), while a promote hook for that operation
/// acted on nothing committed.
/// Method: operation 3 aborted after its revoke, with hook calls of its fence and promote.
#[test]
fn a_fence_hook_of_an_operation_aborted_in_its_fence_is_committed() {
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    hook_call(&mut b, 1, 2, 3, 3, "fence", "fence-db", 520);
    step_action(&mut b, "abort", 3, "fence", 530, OpType::Ok, None);
    let aborted = operation_with(
        3,
        "aborted",
        "done",
        &[("declare", "completed", ""), ("revoke", "completed", "")],
    );
    let automatic = automatic_operation(&verdict(2));
    add_final(
        &mut b,
        final_value(vec![automatic, aborted.clone()], "manual"),
    );
    let (history, _) = b.finish();
    for r in run(&history) {
        assert_eq!(r.valid, Valid::True, "{r:#?}");
    }

    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    let promote = hook_call(&mut b, 1, 2, 3, 3, "promote", "promote-db", 540);
    add_final(
        &mut b,
        final_value(vec![automatic_operation(&verdict(2)), aborted], "manual"),
    );
    let (history, index) = b.finish();
    let results = run(&history);
    assert_invalid_naming(&results, "consensus-before-action", &[index(promote)]);
}

/// Goal: a failback command that ended `info` (its operation halted at validate, after the
/// activation) explains its own operation, not an earlier automatic failback of the
/// cluster's own that looks the same; before, it was taken by the first such operation and
/// its own activation was reported unexplained.
/// Method: the valid run, then the cluster's automatic failback to `a` (operation 2, epoch 3)
/// and an operator's failback to `b` (operation 3, epoch 4) whose command ended `info`.
#[test]
fn a_halted_failback_explains_its_own_operation_not_the_clusters() {
    let mut b = valid_without_final();
    valid_hook_calls(&mut b);
    b.event(
        OpType::Invoke,
        "operator-0",
        "failback",
        640,
        json!({"group": "g", "request_id": "r9"}),
    );
    b.event(
        OpType::Info,
        "operator-0",
        "failback",
        690,
        json!({"group": "g", "request_id": "r9", "operation": 3, "to": "b", "epoch": 4}),
    );
    let mut automatic = operation(2, "a", "b", 3, "done", &ALL_STEPS);
    automatic["kind"] = json!("failback");
    automatic["actor"] = json!("arbiter");
    automatic["reason"] = json!("region-a has been up for 4000 ms: automatic failback");
    let mut halted = operation(3, "b", "a", 4, "halted", &ALL_STEPS[..7]);
    halted["kind"] = json!("failback");
    halted["step"] = json!("validate");
    let mut v = final_value(vec![automatic, halted], "manual");
    v["status"]["groups"][0]["epoch"] = json!(4);
    add_final(&mut b, v);
    let (history, _) = b.finish();
    let results = run(&history);
    let r = result(&results, "linearizable");
    assert_eq!(r.valid, Valid::True, "{r:#?}");
}

/// Writes of region `region` at `epoch` every 50 ms from `from` to `to` ms (each 5 ms long).
fn writes_every_50ms(b: &mut Builder, region: &str, epoch: u64, from: u64, to: u64) {
    let mut t = from;
    while t < to {
        b.write(region, epoch, t, t + 5);
        t += 50;
    }
}

/// A nemesis fault of `value` installed at `start` ms and healed at `end` ms.
fn fault(b: &mut Builder, f: &str, value: Value, start: u64, end: u64) {
    let mut done = value.clone();
    done["installed"] = json!(true);
    b.event(OpType::Invoke, "nemesis", f, start, value.clone());
    b.event(OpType::Ok, "nemesis", f, start + 1, done);
    b.op(
        "nemesis",
        "heal",
        end,
        end + 1,
        OpType::Ok,
        json!({"kind": "heal", "heals": value, "installed": true}),
    );
}

/// The availability checker on writes of `a` at epoch 1 for 2 s, a gap from 2 s to
/// `2_000 + gap_ms`, and 2 s more writes (at `epoch_after`), with `extra` added.
fn availability(gap_ms: u64, epoch_after: u64, extra: impl FnOnce(&mut Builder)) -> CheckResult {
    let mut b = Builder::default();
    writes_every_50ms(&mut b, "a", 1, 0, 2_000);
    let after = 2_000 + gap_ms;
    let region = if epoch_after == 1 { "a" } else { "b" };
    writes_every_50ms(&mut b, region, epoch_after, after, after + 2_000);
    extra(&mut b);
    let (history, _) = b.finish();
    let spec = spec();
    let ctx = Context::new(&history, &spec, None);
    checker::availability::check(&ctx)
}

/// Goal: the availability checker measures the longest time the active region could not
/// write with no failover due, and holds it to its bound (5 leases of the default 2 s).
///
/// Method: writes every 50 ms; a 3 s gap of one region at one epoch is valid and measured; a 12 s gap is
/// invalid and names the writes around it; the same 12 s gap under a delay fault is still
/// invalid (the region stayed reachable), under a health fault healed 2 s before its end
/// valid (a failover was due, and the grace of two leases covers the rest), and across an
/// activation of the other region valid (a failover, measured apart).
#[test]
fn availability_holds_outages_with_no_failover_due_to_its_bound() {
    use jepsen::checker::availability::OUTAGE_LEASES_MAX;
    const { assert!(OUTAGE_LEASES_MAX * 2_000 < 12_000) };
    let r = availability(3_000, 1, |_| {});
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    // From the end of the write at 1.950 s to the next at 5.000 s.
    assert_eq!(r.counts["longest-outage-ms"], 3_045, "{r:#?}");
    assert_eq!(r.counts["outages-over-1s"], 1, "{r:#?}");
    // The writers' 45 ms pacing is no outage: only the 3 s gap is summed.
    assert_eq!(r.counts["outage-total-ms"], 3_045, "{r:#?}");

    let r = availability(12_000, 1, |_| {});
    assert_eq!(r.valid, Valid::False, "{r:#?}");
    assert!(
        r.errors[0].message.contains("could not write for 12.045s"),
        "{r:#?}"
    );
    assert_eq!(r.errors[0].ops.len(), 2, "{r:#?}");

    let r = availability(12_000, 1, |b| {
        fault(
            b,
            "delay",
            json!({"kind": "delay", "targets": ["n1"], "delay_ms": 400}),
            2_100,
            13_000,
        );
    });
    assert_eq!(r.valid, Valid::False, "a delay excuses nothing: {r:#?}");

    let r = availability(12_000, 1, |b| {
        fault(
            b,
            "health",
            json!({"kind": "health", "variant": "endpoint-stopped", "targets": ["db-a"]}),
            2_100,
            10_000,
        );
    });
    assert_eq!(
        r.valid,
        Valid::True,
        "a health fault excuses its span: {r:#?}"
    );
    assert!(r.counts["longest-outage-ms"] < 1_000, "{r:#?}");

    let r = availability(12_000, 2, |_| {});
    assert_eq!(r.valid, Valid::True, "{r:#?}");
    assert_eq!(r.counts["longest-outage-ms"], 45, "{r:#?}");
    assert!(r.counts["longest-failover-gap-ms"] >= 11_990, "{r:#?}");
}

/// Goal: availability without evidence is unknown: too few writes, a writer that could not
/// write, or a run without the writes workload.
#[test]
fn availability_without_evidence_is_unknown() {
    use jepsen::checker::availability::WRITES_MIN;
    let mut b = Builder::default();
    for k in 0..(WRITES_MIN as u64 - 1) {
        b.write("a", 1, 50 * k, 50 * k + 5);
    }
    let (history, _) = b.finish();
    let spec = spec();
    let r = checker::availability::check(&Context::new(&history, &spec, None));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
    assert!(r.notes[0].contains("fewer than the 20"), "{r:#?}");

    let mut b = Builder::default();
    writes_every_50ms(&mut b, "a", 1, 0, 2_000);
    b.op(
        "writer-b",
        "workload-error",
        100,
        101,
        OpType::Fail,
        json!({"group": "g", "region": "b", "what": "the database's state file is unreadable"}),
    );
    let (history, _) = b.finish();
    let r = checker::availability::check(&Context::new(&history, &spec, None));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");

    let mut reads_only = spec.clone();
    reads_only.workload = "reads".into();
    let r = checker::availability::check(&Context::new(&history, &reads_only, None));
    assert_eq!(r.valid, Valid::Unknown, "{r:#?}");
}
