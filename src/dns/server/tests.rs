//! Unit tests of the pure answer function and the isolation decision: a policy is applied to
//! a state machine, the view is built from it, and each question is checked against the
//! answer a correct authoritative server gives.

use super::*;
use crate::config::Policy;
use crate::state::{Command, Proposal};

const POLICY: &str = r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[dns]
zones = [
  { name = "shop.example.", nameservers = ["ns1.shop.example.", "ns2.shop.example."], contact = "ops.shop.example." },
  { name = "eu.shop.example.", nameservers = ["ns1.shop.example."] },
]

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
[groups.dns]
zone = "shop.example."
name = "checkout.shop.example."
ttl = 30
records = { region-a = { type = "A", values = ["192.0.2.10", "192.0.2.11"] }, region-b = { type = "A", values = ["198.51.100.10"] } }

[[groups]]
name = "catalog"
candidates = ["region-a", "region-b"]
[groups.dns]
zone = "shop.example."
name = "catalog.shop.example."
ttl = 60
records = { region-a = { type = "CNAME", values = ["checkout.shop.example."] }, region-b = { type = "CNAME", values = ["catalog.cdn.example."] } }

[[groups]]
name = "api"
candidates = ["region-a", "region-b"]
[groups.dns]
zone = "shop.example."
name = "api.v2.shop.example."
records = { region-a = { type = "AAAA", values = ["2001:db8::a"] }, region-b = { type = "AAAA", values = ["2001:db8::b"] } }
"#;

/// The state after applying [`POLICY`] at log index 1 (every group active in region-a).
fn state() -> ClusterState {
    let mut s = ClusterState::default();
    let r = s.apply(
        1,
        &Proposal {
            actor: "operator".into(),
            at_ms: 1,
            request_id: String::new(),
            command: Command::ApplyPolicy {
                policy: Policy::parse("p", POLICY).unwrap(),
                if_version: 0,
            },
        },
    );
    assert!(r.outcome.is_ok(), "{r:?}");
    s
}

fn n(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn ask(view: &ZoneView, name: &str, kind: RecordType) -> Answer {
    answer(view, &Query::new(n(name), kind))
}

/// The answer section as `type value` strings, in order.
fn rendered(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", r.name.to_ascii(), r.record_type(), r.data))
        .collect()
}

fn soa_serial_of(a: &Answer) -> Option<u32> {
    a.authorities
        .iter()
        .chain(&a.answers)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

/// Goal: every kind of question gets the response a correct authoritative server gives.
/// Method: a table of (name, type) -> (rcode, AA, answer records, SOA in authority).
#[test]
fn answers_follow_dns_rules() {
    let view = ZoneView::from_state(&state(), 7);
    use RecordType::*;
    struct Case {
        name: &'static str,
        kind: RecordType,
        rcode: ResponseCode,
        aa: bool,
        answers: &'static [&'static str],
        soa_in_authority: bool,
    }
    let nx = ResponseCode::NXDomain;
    let ok = ResponseCode::NoError;
    let cases = [
        // A record set of the active region (region-a), case-insensitively.
        Case {
            name: "checkout.shop.example.",
            kind: A,
            rcode: ok,
            aa: true,
            answers: &[
                "checkout.shop.example. A 192.0.2.10",
                "checkout.shop.example. A 192.0.2.11",
            ],
            soa_in_authority: false,
        },
        Case {
            name: "CheckOut.SHOP.example.",
            kind: A,
            rcode: ok,
            aa: true,
            answers: &[
                "checkout.shop.example. A 192.0.2.10",
                "checkout.shop.example. A 192.0.2.11",
            ],
            soa_in_authority: false,
        },
        // An existing name, another type: NODATA.
        Case {
            name: "checkout.shop.example.",
            kind: AAAA,
            rcode: ok,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        Case {
            name: "checkout.shop.example.",
            kind: MX,
            rcode: ok,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        // AAAA.
        Case {
            name: "api.v2.shop.example.",
            kind: AAAA,
            rcode: ok,
            aa: true,
            answers: &["api.v2.shop.example. AAAA 2001:db8::a"],
            soa_in_authority: false,
        },
        // An empty non-terminal exists: NODATA, not NXDOMAIN.
        Case {
            name: "v2.shop.example.",
            kind: A,
            rcode: ok,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        // CNAME answers every type and is followed inside our zones.
        Case {
            name: "catalog.shop.example.",
            kind: A,
            rcode: ok,
            aa: true,
            answers: &[
                "catalog.shop.example. CNAME checkout.shop.example.",
                "checkout.shop.example. A 192.0.2.10",
                "checkout.shop.example. A 192.0.2.11",
            ],
            soa_in_authority: false,
        },
        Case {
            name: "catalog.shop.example.",
            kind: AAAA,
            rcode: ok,
            aa: true,
            answers: &["catalog.shop.example. CNAME checkout.shop.example."],
            soa_in_authority: true,
        },
        Case {
            name: "catalog.shop.example.",
            kind: CNAME,
            rcode: ok,
            aa: true,
            answers: &["catalog.shop.example. CNAME checkout.shop.example."],
            soa_in_authority: false,
        },
        // Names that do not exist: NXDOMAIN with the SOA.
        Case {
            name: "nope.shop.example.",
            kind: A,
            rcode: nx,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        Case {
            name: "x.checkout.shop.example.",
            kind: A,
            rcode: nx,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        // The apex: SOA and NS; other types NODATA.
        Case {
            name: "shop.example.",
            kind: NS,
            rcode: ok,
            aa: true,
            answers: &[
                "shop.example. NS ns1.shop.example.",
                "shop.example. NS ns2.shop.example.",
            ],
            soa_in_authority: false,
        },
        Case {
            name: "shop.example.",
            kind: SOA,
            rcode: ok,
            aa: true,
            answers: &["shop.example. SOA ns1.shop.example. ops.shop.example. 7 3600 600 86400 30"],
            soa_in_authority: false,
        },
        Case {
            name: "shop.example.",
            kind: A,
            rcode: ok,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        // A nested zone is its own apex; names in it are answered from it.
        Case {
            name: "eu.shop.example.",
            kind: NS,
            rcode: ok,
            aa: true,
            answers: &["eu.shop.example. NS ns1.shop.example."],
            soa_in_authority: false,
        },
        Case {
            name: "www.eu.shop.example.",
            kind: A,
            rcode: nx,
            aa: true,
            answers: &[],
            soa_in_authority: true,
        },
        // Zones we do not serve: REFUSED, not authoritative.
        Case {
            name: "example.",
            kind: A,
            rcode: ResponseCode::Refused,
            aa: false,
            answers: &[],
            soa_in_authority: false,
        },
        Case {
            name: "checkout.shop.example.org.",
            kind: A,
            rcode: ResponseCode::Refused,
            aa: false,
            answers: &[],
            soa_in_authority: false,
        },
    ];
    for c in cases {
        let a = ask(&view, c.name, c.kind);
        let what = format!("{} {}", c.name, c.kind);
        assert_eq!(a.rcode, c.rcode, "{what}: rcode");
        assert_eq!(a.authoritative, c.aa, "{what}: AA");
        assert_eq!(rendered(&a.answers), c.answers, "{what}: answers");
        let soa: Vec<_> = a
            .authorities
            .iter()
            .filter(|r| r.record_type() == SOA)
            .collect();
        assert_eq!(
            soa.len(),
            usize::from(c.soa_in_authority),
            "{what}: SOA in authority"
        );
        if let Some(soa) = soa.first() {
            let zone = if c.name.ends_with("eu.shop.example.") {
                "eu.shop.example."
            } else {
                "shop.example."
            };
            assert_eq!(soa.name.to_ascii(), zone, "{what}: SOA of the closest zone");
            assert_eq!(soa.ttl, NEGATIVE_TTL_S, "{what}: negative TTL");
        }
    }
}

/// Goal: answers follow the applied active region and nothing else. Method: change the
/// applied active region of two groups and rebuild the view.
#[test]
fn answers_follow_the_applied_active_region() {
    let mut s = state();
    s.groups.get_mut("checkout").unwrap().active = "region-b".into();
    s.groups.get_mut("catalog").unwrap().active = "region-b".into();
    let view = ZoneView::from_state(&s, 9);
    assert_eq!(
        rendered(&ask(&view, "checkout.shop.example.", RecordType::A).answers),
        ["checkout.shop.example. A 198.51.100.10"]
    );
    let a = ask(&view, "catalog.shop.example.", RecordType::A);
    assert_eq!(
        rendered(&a.answers),
        ["catalog.shop.example. CNAME catalog.cdn.example."],
        "a target outside our zones is left to the resolver"
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authorities.is_empty());
    assert_eq!(
        rendered(&ask(&view, "api.v2.shop.example.", RecordType::AAAA).answers),
        ["api.v2.shop.example. AAAA 2001:db8::a"],
        "a group that did not fail over keeps its region"
    );
}

/// Goal: the SOA serial only grows with the applied index and is clamped, never wrapped.
#[test]
fn soa_serial_grows_with_the_applied_index() {
    let s = state();
    let mut last = 0;
    for index in [1, 2, 10, 1_000, u64::from(u32::MAX) - 1] {
        let view = ZoneView::from_state(&s, index);
        let serial = soa_serial_of(&ask(&view, "shop.example.", RecordType::SOA)).unwrap();
        let negative = soa_serial_of(&ask(&view, "nope.shop.example.", RecordType::A)).unwrap();
        assert_eq!(serial, negative, "one serial per view");
        assert!(
            serial > last,
            "serial {serial} at index {index} after {last}"
        );
        last = serial;
    }
    assert_eq!(soa_serial(u64::from(u32::MAX) + 5), u32::MAX, "clamped");
    assert_eq!(soa_serial(u64::MAX), u32::MAX, "clamped");
}

/// Goal: before any policy nothing is served; a class other than IN is refused.
#[test]
fn no_policy_or_other_class_is_refused() {
    let view = ZoneView::from_state(&ClusterState::default(), 3);
    assert_eq!(
        ask(&view, "checkout.shop.example.", RecordType::A).rcode,
        ResponseCode::Refused
    );
    let view = ZoneView::from_state(&state(), 3);
    let mut q = Query::new(n("checkout.shop.example."), RecordType::A);
    q.class = DNSClass::CH;
    assert_eq!(answer(&view, &q).rcode, ResponseCode::Refused);
}

/// Goal: `refuse` answers SERVFAIL exactly while contact with a leader is older than
/// `stale_after_ms` (or absent); `serve` never does. Table-driven.
#[test]
fn isolation_decision() {
    let serve = ZoneView::from_state(&state(), 2);
    let mut s = state();
    s.policy.as_mut().unwrap().dns.when_isolated = WhenIsolated::Refuse;
    s.policy.as_mut().unwrap().dns.stale_after_ms = 5_000;
    let refuse = ZoneView::from_state(&s, 2);
    let ms = Duration::from_millis;
    let cases = [
        (&serve, None, false),
        (&serve, Some(ms(3_600_000)), false),
        (&refuse, Some(ms(0)), false),
        (&refuse, Some(ms(5_000)), false),
        (&refuse, Some(ms(5_001)), true),
        (&refuse, None, true),
    ];
    for (view, age, refused) in cases {
        assert_eq!(
            refuses_when_isolated(view, age),
            refused,
            "{:?} with contact age {age:?}",
            view.when_isolated
        );
    }
}
