use super::*;

fn caller(uris: &[&str]) -> Caller {
    let uris: Vec<String> = uris.iter().map(|u| u.to_string()).collect();
    Caller::from_uris(Some("someone".into()), &uris)
}

fn lease(kind: LeaseKind, group: &str, region: &str) -> Need {
    Need::Lease {
        kind,
        group: group.into(),
        region: region.into(),
    }
}

/// Goal: the access table, one row per kind of caller: what each role may and may not do.
#[test]
fn each_role_may_do_exactly_its_share() {
    use LeaseKind::{Acquire, Check, Renew};
    let none = caller(&[]);
    let viewer = caller(&["arbiter://role/viewer"]);
    let operator = caller(&["arbiter://role/operator"]);
    let admin = caller(&["arbiter://role/admin"]);
    let check = caller(&["arbiter://role/check"]);
    let agent = caller(&["arbiter://role/agent/checkout/region-a"]);
    let witness = caller(&["arbiter://witness/2"]);
    let needs = [
        Need::Nothing,
        Need::View,
        Need::Operate,
        Need::Admin,
        Need::Witness,
        Need::SomeLease,
        lease(Acquire, "checkout", "region-a"),
        lease(Renew, "checkout", "region-a"),
        lease(Check, "checkout", "region-a"),
        lease(Acquire, "checkout", "region-b"),
        lease(Check, "orders", "region-a"),
    ];
    // Columns in the order of `needs`.
    let (t, f) = (true, false);
    let table: [(&str, &Caller, [bool; 11]); 7] = [
        ("no role", &none, [t, f, f, f, f, f, f, f, f, f, f]),
        ("viewer", &viewer, [t, t, f, f, f, t, f, f, t, f, t]),
        ("operator", &operator, [t, t, t, f, f, t, f, f, t, f, t]),
        ("admin", &admin, [t, t, t, t, f, t, t, t, t, t, t]),
        ("check", &check, [t, f, f, f, f, t, f, f, t, f, t]),
        ("agent", &agent, [t, f, f, f, f, t, t, t, t, f, f]),
        ("witness", &witness, [t, f, f, f, t, t, t, t, t, t, t]),
    ];
    for (who, c, row) in table {
        for (need, expected) in needs.iter().zip(row) {
            assert_eq!(c.allows(need), expected, "{who} for {need:?}");
        }
    }
}

/// Goal: a denial names the method, the identity, what was needed and what the caller has.
#[test]
fn a_denial_says_what_was_needed_and_what_the_caller_has() {
    let agent = caller(&["arbiter://role/agent/checkout/region-a"]);
    let e = ApiError::from(
        agent
            .require(
                "Acquire",
                &lease(LeaseKind::Acquire, "checkout", "region-b"),
            )
            .unwrap_err(),
    );
    assert_eq!(e.kind(), crate::api::ErrorKind::PermissionDenied);
    let text = e.to_string();
    for part in [
        "Acquire",
        "agent/checkout/region-b or admin",
        "\"someone\"",
        "role agent/checkout/region-a",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    let none = caller(&[]).require("Failover", &Need::Operate).unwrap_err();
    assert_eq!(none.has, "no role");
}

/// Goal: roles parse from their URIs and back; malformed role URIs grant nothing, and two
/// witness ids make no witness.
#[test]
fn role_uris_round_trip_and_malformed_ones_grant_nothing() {
    for role in [
        Role::Viewer,
        Role::Operator,
        Role::Admin,
        Role::Check,
        Role::BreakGlass,
        Role::Agent {
            group: "checkout".into(),
            region: "region-a".into(),
        },
    ] {
        assert_eq!(Role::parse_uri(&role.uri()), Some(Ok(role.clone())));
        assert_eq!(Role::parse(&role.to_string()), Some(role));
    }
    assert_eq!(Role::parse_uri("https://example.invalid/"), None);
    for bad in [
        "arbiter://role/root",
        "arbiter://role/agent/checkout",
        "arbiter://role/agent/checkout/region-a/extra",
        "arbiter://role/agent/Checkout/region-a",
        "arbiter://role/agent//region-a",
        "arbiter://role/Admin",
    ] {
        assert!(matches!(Role::parse_uri(bad), Some(Err(_))), "{bad}");
        assert!(caller(&[bad]).roles.is_empty(), "{bad}");
    }
    let two = caller(&["arbiter://witness/1", "arbiter://witness/2"]);
    assert_eq!(two.witness, None);
    assert_eq!(caller(&["arbiter://witness/x"]).witness, None);
    let both = caller(&[
        "arbiter://role/viewer",
        "arbiter://role/viewer",
        "arbiter://role/check",
    ]);
    assert_eq!(both.roles, vec![Role::Viewer, Role::Check]);
}

/// Goal: every RPC of the protocol file has a deliberate message size limit: the
/// client-streamed one is bounded by its stream's own limits, the bulk ones by theirs, every
/// other by the small limit, which holds each of its bounded fields with room.
#[test]
fn every_rpc_in_the_protocol_has_a_deliberate_message_limit() {
    use super::sizes::{message_bytes_max, SMALL_MESSAGE_BYTES_MAX};
    let mut seen = 0;
    for crate::proto::Rpc {
        service,
        rpc,
        client_streaming,
        ..
    } in crate::proto::rpcs()
    {
        let limit = message_bytes_max(&format!("/arbiter.v1.{service}/{rpc}"));
        let expected = match (service, rpc) {
            ("Raft", "InstallSnapshot") => None,
            ("Raft", "AppendEntries") => Some(crate::raft::RAFT_MESSAGE_BYTES_MAX),
            ("Raft", "ReportProbes") | ("Arbiter", "PolicyApply") => {
                Some(crate::node::API_MESSAGE_BYTES_MAX)
            }
            _ => Some(SMALL_MESSAGE_BYTES_MAX),
        };
        assert_eq!(limit, expected, "{service}/{rpc}");
        assert_eq!(limit.is_none(), client_streaming, "{service}/{rpc}");
        seen += 1;
    }
    assert_eq!(seen, 26, "RPCs read from the protocol file");
    let fields = crate::state::limits::REASON_BYTES_MAX
        + crate::state::limits::REQUEST_ID_BYTES_MAX
        + 4 * crate::state::limits::NAME_BYTES_MAX
        + crate::state::limits::SERVER_BYTES_MAX;
    assert!(8 * fields <= SMALL_MESSAGE_BYTES_MAX, "{fields}");
    assert_eq!(message_bytes_max("/metrics"), None);
    assert_eq!(message_bytes_max("/v1/groups/checkout/acquire"), None);
}

/// Goal: every RPC of the protocol file has its row in the access table, so a new RPC is a
/// decision about who may call it, never an accident.
#[test]
fn every_rpc_in_the_protocol_has_a_deliberate_row() {
    let mut seen = 0;
    for crate::proto::Rpc { service, rpc, .. } in crate::proto::rpcs() {
        let (need, method) = need_of("POST", &format!("/arbiter.v1.{service}/{rpc}"));
        assert_eq!(method, rpc);
        let expected = match (service, rpc) {
            ("Raft", _) => Need::Witness,
            ("Fencing", _) => Need::SomeLease,
            ("Arbiter", "PolicyApply" | "Init" | "MembersAdd" | "MembersRemove") => Need::Admin,
            ("Arbiter", "Status" | "Watch" | "Operations" | "DnsCheck" | "PolicyShow")
            | ("Arbiter", "MembersList") => Need::View,
            ("Arbiter", _) => Need::Operate,
            other => panic!("a service this test does not know: {other:?}"),
        };
        assert_eq!(need, expected, "{service}/{rpc}");
        seen += 1;
    }
    assert_eq!(seen, 26, "RPCs read from the protocol file");
    assert_eq!(
        need_of("POST", "/arbiter.v1.Arbiter/NoSuchRpc").0,
        Need::Admin
    );
}

/// Goal: the HTTP routes' rows: health for anyone, reads for viewers, lease routes for the
/// lease roles (the handler checks the pair), anything else for admins only.
#[test]
fn http_routes_have_their_rows() {
    for (method, path, need) in [
        ("GET", "/healthz", Need::Nothing),
        ("GET", "/readyz", Need::Nothing),
        ("GET", "/metrics", Need::View),
        ("GET", "/v1/status", Need::View),
        ("GET", "/v1/groups/checkout", Need::View),
        ("GET", "/v1/groups/checkout/fence", Need::SomeLease),
        ("POST", "/v1/groups/checkout/acquire", Need::SomeLease),
        ("POST", "/v1/groups/checkout/renew", Need::SomeLease),
        ("POST", "/healthz", Need::Admin),
        ("GET", "/v1/groups/checkout/other", Need::Admin),
        ("GET", "/nothing-here", Need::Admin),
    ] {
        assert_eq!(need_of(method, path).0, need, "{method} {path}");
    }
}
