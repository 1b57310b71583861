//! Property tests of the parsers that read what other people wrote: the policy and node
//! files, the roles and serials of certificates and the access table's paths, and the JSON
//! reports of hooks. Each gets arbitrary text and mutations of a valid input (characters
//! deleted, TOML-significant characters inserted, lines repeated or dropped). The property:
//! no panic, and every refusal names the key and the reason; an accepted policy passes its own
//! validation again.
//!
//! `ARBITER_PROPTEST_CASES` sets the cases per property (256 by default, moderate for
//! `cargo test`); `ARBITER_PROPTEST_CASES=100000 cargo test --lib input_props` runs long.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::access::{need_of, Caller, Role};
use crate::config::{normalise_serial, NodeConfig, Policy};

/// The cases of each property unless `ARBITER_PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 256;

fn runner() -> TestRunner {
    let cases = std::env::var("ARBITER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A policy using most of what a policy can say.
const POLICY: &str = concat!(
    include_str!("../deploy/local/policy.toml"),
    r#"
[hooks.notify]
kind = "exec"
program = "/bin/true"
timeout_ms = 5000

[access]
denied_serials = ["serial=0A1B", "c0:de"]
"#
);

const NODE: &str = include_str!("../deploy/local/node-1.toml");

/// One edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    RepeatLine(usize),
    DropLine(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let significant = prop::sample::select(vec![
        '[', ']', '{', '}', '=', '"', '\'', ',', '.', '\n', '#', '0', '9', '-', 'a', 'z', ' ',
        '\\', '\u{e9}', '\u{0}',
    ]);
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), significant).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<usize>().prop_map(Edit::RepeatLine),
        any::<usize>().prop_map(Edit::DropLine),
    ]
}

/// `text` after `edits`, positions taken modulo its length.
fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        match *e {
            Edit::Delete(at) if !chars.is_empty() => {
                chars.remove(at % chars.len());
            }
            Edit::Insert(at, c) => chars.insert(at % (chars.len() + 1), c),
            Edit::RepeatLine(at) | Edit::DropLine(at) => {
                let s: String = chars.iter().collect();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = at % lines.len();
                    if matches!(e, Edit::RepeatLine(_)) {
                        lines.insert(i, lines[i]);
                    } else {
                        lines.remove(i);
                    }
                }
                chars = lines.join("\n").chars().collect();
            }
            Edit::Delete(_) => {}
        }
    }
    chars.into_iter().collect()
}

/// Arbitrary text: mostly mutations of `valid`, sometimes any string at all.
fn text_near(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(edit(), 1..8).prop_map(move |edits| mutate(valid, &edits)),
        1 => any::<String>(),
    ]
}

/// A directory holding the files the node fixture names (`certs/` of a development CA).
fn node_base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::init_dev_certs(
        &dir.path().join("certs"),
        &crate::certs::default_sites(3),
        &[],
        false,
    )
    .unwrap();
    dir
}

/// Goal: the fixtures are valid, so the mutations start from something the parser accepts.
#[test]
fn the_fixtures_parse() {
    Policy::parse("policy.toml", POLICY).expect("the policy fixture");
    NodeConfig::parse("node-1.toml", NODE, node_base().path()).expect("the node fixture");
}

/// Goal: any policy text is accepted as a valid policy or refused naming a key and a reason;
/// never a panic.
#[test]
fn any_policy_text_is_a_valid_policy_or_a_named_refusal() {
    runner()
        .run(&text_near(POLICY), |text| {
            match Policy::parse("policy.toml", &text) {
                Ok(p) => prop_assert!(p.validate().is_ok(), "accepted but invalid: {p:?}"),
                Err(e) => {
                    prop_assert!(!e.key.is_empty(), "no key: {e:?}");
                    prop_assert!(!e.reason.is_empty(), "no reason: {e:?}");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Goal: any node file text is accepted or refused naming a key and a reason.
#[test]
fn any_node_file_text_is_accepted_or_a_named_refusal() {
    let base = node_base();
    runner()
        .run(&text_near(NODE), |text| {
            if let Err(e) = NodeConfig::parse("node-1.toml", &text, base.path()) {
                prop_assert!(!e.key.is_empty(), "no key: {e:?}");
                prop_assert!(!e.reason.is_empty(), "no reason: {e:?}");
            }
            Ok(())
        })
        .unwrap();
}

/// Goal: any URI SANs and common name make a caller without a panic; a role comes only from
/// a URI that names it exactly, and a role's URI always parses back to it.
#[test]
fn any_certificate_names_make_a_caller_with_only_the_roles_named() {
    let uri = prop_oneof![
        any::<String>(),
        "arbiter://(role|witness)/[a-z0-9/-]{0,40}",
        "arbiter://role/agent/[a-z0-9-]{0,8}/[a-z0-9-]{0,8}",
    ];
    runner()
        .run(
            &(
                prop::option::of(any::<String>()),
                prop::collection::vec(uri, 0..6),
            ),
            |(cn, uris)| {
                let caller = Caller::from_uris(cn, &uris);
                for role in &caller.roles {
                    prop_assert!(uris.contains(&role.uri()), "{role} from {uris:?}");
                    prop_assert_eq!(Role::parse_uri(&role.uri()), Some(Ok(role.clone())));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Goal: any request path and method finds its row in the access table, and a path outside
/// the known services and routes needs the admin role.
#[test]
fn any_path_has_a_row_and_unknown_ones_need_admin() {
    runner()
        .run(
            &(
                "[A-Z]{1,7}",
                prop_oneof![any::<String>(), "/[a-zA-Z0-9./{}-]{0,40}"],
            ),
            |(method, path)| {
                let (need, name) = need_of(&method, &path);
                prop_assert!(!name.is_empty());
                let known = path.starts_with("/arbiter.v1.")
                    || path.starts_with("/v1/")
                    || ["/healthz", "/readyz", "/metrics"].contains(&path.as_str());
                if !known {
                    prop_assert_eq!(need, crate::access::Need::Admin, "{} {}", method, path);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Goal: serial normalisation never panics, is idempotent, and accepts exactly hex (with
/// colons and openssl's prefix) of at most 40 significant digits.
#[test]
fn serials_normalise_idempotently() {
    runner()
        .run(
            &prop_oneof![any::<String>(), "(serial=)?[0-9a-fA-F:]{0,50}"],
            |text| {
                if let Ok(normal) = normalise_serial(&text) {
                    prop_assert_eq!(normalise_serial(&normal), Ok(normal.clone()));
                    prop_assert!(normal.len() <= 40);
                    prop_assert!(normal.chars().all(|c| c.is_ascii_hexdigit()));
                    prop_assert!(!normal.chars().any(|c| c.is_ascii_uppercase()));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Goal: any hook output is a report or none, never a panic; a report always says something
/// (a lag or `exceeds_rpo`), so the RPO gate never passes on an empty one.
#[test]
fn any_hook_output_is_a_report_or_none() {
    let output = prop_oneof![
        any::<String>(),
        r#"[a-z ]{0,10}\n?\{"(lag_ms|lag_bytes|exceeds_rpo|fenced|epoch)": ?(-?[0-9]{1,22}|true|false|null|"x")(, ?"(lag_ms|epoch|fenced)": ?[0-9a-z]{1,5})?\}"#,
    ];
    runner()
        .run(&output, |text| {
            if let Some(lag) = crate::hooks::parse_lag(&text) {
                prop_assert!(lag.ms.is_some() || lag.bytes.is_some() || lag.exceeds_rpo);
            }
            let _ = crate::hooks::parse_fence_claim(&text);
            Ok(())
        })
        .unwrap();
}
