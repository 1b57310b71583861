//! Property tests of the public services' inputs, through a real witness and real mutual
//! TLS: arbitrary bytes and arbitrary protobuf messages sent to every unary RPC of the
//! `Arbiter` and `Fencing` services (decoded by the witness's own codec), and arbitrary
//! paths, query strings and bodies sent to the HTTP fencing routes. The caller holds the
//! admin certificate, so every input reaches its handler rather than the access check.
//!
//! The property: the witness never fails inside (no `INTERNAL` or `UNKNOWN` answer, no HTTP
//! 500, no dropped connection, still answering afterwards), every answer is bounded, and an
//! input it refuses changes nothing (the policy, the groups, the members and the operations
//! are as before).
//!
//! `ARBITER_PROPTEST_CASES` sets the cases per property (256 by default, moderate for
//! `cargo test`); `ARBITER_PROPTEST_CASES=20000 cargo test --test request_props` runs long.

mod common;

use std::time::Duration;

use arbiter::client::Client;
use arbiter::proto;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::bytes::{Buf, BufMut};
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The cases of each property unless `ARBITER_PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 256;

/// Largest answer any of these inputs may get: the state of this small cluster is a few KiB.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// How long one call may take before it counts as a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

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

/// Every unary RPC of the public gRPC services (all but the witnesses' `Raft`), by path,
/// read from the protocol file so that a new RPC is sent too.
fn unary() -> Vec<String> {
    let paths: Vec<String> = proto::rpcs()
        .into_iter()
        .filter(|r| r.service != "Raft" && !r.client_streaming && !r.server_streaming)
        .map(|r| r.path())
        .collect();
    assert_eq!(paths.len(), 19, "{paths:?}");
    paths
}

/// A codec that sends and receives bytes as they are: the request is whatever the test
/// made, decoded only by the witness.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Strings the witness knows (so fields often name a real group, region, mode or hook) and
/// strings no one should send, up to 70 KB (past the API's message limit).
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => short_text(),
        1 => (1usize..70_000).prop_map(|n| vec![b'a'; n]),
    ]
}

/// [`text`] up to 40 bytes: what fits a URL (the HTTP listener refuses request heads past
/// its limit before any route sees them).
fn short_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "checkout",
            "catalog",
            "region-a",
            "region-b",
            "region-c",
            "auto",
            "manual",
            "frozen",
            "",
            " ",
            "checkout ",
            "CHECKOUT",
            "../",
            "\u{0}",
            "region-a\n",
            "\u{1F600}",
            "%00",
            "policy-1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        ".{0,40}".prop_map(|s: String| s.into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// Numbers around the edges.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            7,
            1000,
            u32::MAX as u64,
            i64::MAX as u64,
            u64::MAX
        ]),
        any::<u64>(),
    ]
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One protobuf field of any number the request messages use (and a few beyond), of the
/// wire type that field has or of another.
fn field() -> impl Strategy<Value = Vec<u8>> {
    // Most request messages have their fields at 1-6, strings first, numbers after.
    let field_number = prop_oneof![9 => 1u64..=6, 1 => 7u64..=16];
    let value = prop_oneof![
        6 => text().prop_map(|t| (2u8, t)),
        4 => number().prop_map(|n| (0u8, n.to_le_bytes().to_vec())),
        1 => any::<u64>().prop_map(|n| (1u8, n.to_le_bytes().to_vec())),
    ];
    (field_number, value).prop_map(|(number, (wire, payload))| {
        let mut out = Vec::new();
        varint(number << 3 | u64::from(wire), &mut out);
        match wire {
            0 => varint(u64::from_le_bytes(payload.try_into().unwrap()), &mut out),
            1 => out.extend_from_slice(&payload),
            _ => {
                varint(payload.len() as u64, &mut out);
                out.extend_from_slice(&payload);
            }
        }
        out
    })
}

/// A request body: well-formed fields, or bytes of any kind.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(field(), 0..8).prop_map(|f| f.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// What a refused input must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    policy_version: u64,
    groups: Vec<proto::GroupStatus>,
    witnesses: Vec<u64>,
    operations: Vec<(u64, String)>,
}

async fn snapshot(client: &Client) -> (Snapshot, bool) {
    let s = status(client).await;
    let idle = s.operations.is_empty();
    (
        Snapshot {
            policy_version: s.policy_version,
            groups: s.groups,
            witnesses: s.witnesses.iter().map(|w| w.id).collect(),
            operations: s
                .operations
                .iter()
                .map(|o| (o.id, o.state.clone()))
                .collect(),
        },
        idle,
    )
}

/// A snapshot taken once no operation is running (an accepted input may have started one).
async fn settled(client: &Client) -> Snapshot {
    eventually("no operation running", || async {
        let (snap, idle) = snapshot(client).await;
        idle.then_some(snap)
    })
    .await
}

/// Fails the case with `why`, cut to a readable length (inputs can be 70 KB).
fn check(ok: bool, why: String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(cut(&why)))
    }
}

fn cut(text: &str) -> String {
    const SHOWN: usize = 600;
    match text.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}... ({} bytes in all)", &text[..i], text.len()),
        None => text.to_string(),
    }
}

/// Goal: any bytes sent to any unary RPC of the public services get a bounded answer, never
/// an internal failure, and a refusal changes nothing.
/// Method: one witness initialised with the usual policy; each case sends one raw message
/// to one RPC over one gRPC channel with the admin certificate, then compares the state.
#[test]
fn any_request_to_a_public_rpc_is_answered_and_a_refusal_changes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(async {
        let c = Cluster::start(1).await;
        c.init_with_policy().await;
        c
    });
    let client = cluster.client();
    let channel = rt.block_on(async {
        let tls = arbiter::tls::TlsMaterial::load(&cluster.certs.client).unwrap();
        tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.addrs()[0]))
            .unwrap()
            .tls_config(tls.client_config(Some("localhost")))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner()
        .run(
            &(prop::sample::select(unary()), message()),
            |(path, body)| {
                rt.block_on(async {
                    let before = settled(&client).await;
                    let mut grpc = tonic::client::Grpc::new(channel.clone());
                    grpc.ready().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let mut req = tonic::Request::new(body.clone());
                    req.set_timeout(CALL_DEADLINE);
                    let call = grpc.unary(
                        req,
                        path.parse::<tonic::codegen::http::uri::PathAndQuery>()
                            .expect("a gRPC path"),
                        Raw,
                    );
                    let answer = tokio::time::timeout(CALL_DEADLINE, call)
                        .await
                        .map_err(|_| TestCaseError::fail(format!("{path}: no answer")))?;
                    match answer {
                        Ok(reply) => {
                            accepted.set(accepted.get() + 1);
                            let len = reply.into_inner().len();
                            check(len <= ANSWER_BYTES_MAX, format!("{path}: {len} bytes"))?;
                        }
                        Err(status) => {
                            refused.set(refused.get() + 1);
                            use tonic::Code::*;
                            check(
                                !matches!(
                                    status.code(),
                                    Internal | Unknown | DataLoss | Unimplemented | Unavailable
                                ),
                                format!("{path}: {status:?} for {}", cut(&format!("{body:?}"))),
                            )?;
                            check(
                                status.message().len() <= ANSWER_BYTES_MAX,
                                format!("{path}: a message of {} bytes", status.message().len()),
                            )?;
                            let (after, _) = snapshot(&client).await;
                            check(
                                after == before,
                                format!("{path} refused with {status:?} changed\n{before:?}\nto\n{after:?}\nfor {}", cut(&format!("{body:?}"))),
                            )?;
                        }
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    println!(
        "public RPCs: {} inputs accepted, {} refused",
        accepted.get(),
        refused.get()
    );
    rt.block_on(async {
        status(&client).await;
        cluster.stop().await
    });
}

/// A path segment: a real group, or anything, percent-encoded.
fn segment() -> impl Strategy<Value = String> {
    short_text().prop_map(|t| {
        t.iter()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (*b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    })
}

/// A query string of `region` and `epoch` (or other keys), of any values.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec!["region", "epoch", "holder", "epoch", ""]).prop_map(String::from),
        segment(),
    ];
    let value = prop_oneof![number().prop_map(|n| n.to_string()), segment()];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// A request body: JSON of the lease body's keys with values of any type, or any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        text().prop_map(|t| serde_json::Value::String(String::from_utf8_lossy(&t).into())),
        number().prop_map(|n| serde_json::json!(n)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!([1, 2])),
        Just(serde_json::json!(1.5)),
    ];
    let key = prop::sample::select(vec!["region", "epoch", "holder", "group", ""]);
    prop_oneof![
        3 => prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
            let map: serde_json::Map<String, serde_json::Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            serde_json::to_vec(&map).unwrap()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// Goal: any path, query string and body sent to the HTTP fencing routes gets a bounded
/// answer, never a 500, and a refusal changes nothing.
/// Method: one witness initialised with the usual policy; each case is one HTTPS request
/// with the admin certificate (GET for the group, fence and status routes, POST for acquire
/// and renew), then the state is compared.
#[test]
fn any_http_fencing_request_is_answered_and_a_refusal_changes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(async {
        let c = Cluster::start(1).await;
        c.init_with_policy().await;
        c
    });
    let client = cluster.client();
    let https = cluster.https_client();
    let base = format!("https://localhost:{}", cluster.witnesses[0].addr.port());
    let route = prop::sample::select(vec!["fence", "acquire", "renew", "", "status"]);
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner()
        .run(
            &(route, segment(), query(), body()),
            |(route, group, query, body)| {
                rt.block_on(async {
                    let before = settled(&client).await;
                    let request = match route {
                        "status" => https.get(format!("{base}/v1/status?{query}")),
                        "" => https.get(format!("{base}/v1/groups/{group}?{query}")),
                        "fence" => https.get(format!("{base}/v1/groups/{group}/fence?{query}")),
                        kind => https
                            .post(format!("{base}/v1/groups/{group}/{kind}?{query}"))
                            .header("content-type", "application/json")
                            .body(body.clone()),
                    };
                    let answer = tokio::time::timeout(CALL_DEADLINE, request.send())
                        .await
                        .map_err(|_| {
                            TestCaseError::fail(cut(&format!("{route} {group}: no answer")))
                        })?
                        .map_err(|e| TestCaseError::fail(cut(&format!("{route} {group}: {e}"))))?;
                    let code = answer.status();
                    let text = answer
                        .bytes()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let what = format!(
                        "{route} /{group}?{query} {:?}",
                        String::from_utf8_lossy(&body)
                    );
                    check(!code.is_server_error(), format!("{what}: {code} {text:?}"))?;
                    check(
                        text.len() <= ANSWER_BYTES_MAX,
                        format!("{what}: {} bytes", text.len()),
                    )?;
                    if code.is_success() {
                        accepted.set(accepted.get() + 1);
                    } else {
                        refused.set(refused.get() + 1);
                        let (after, _) = snapshot(&client).await;
                        check(
                            after == before,
                            format!(
                                "{what} refused with {code} changed\n{before:?}\nto\n{after:?}"
                            ),
                        )?;
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    println!(
        "HTTP fencing routes: {} inputs accepted, {} refused",
        accepted.get(),
        refused.get()
    );
    rt.block_on(async {
        status(&client).await;
        cluster.stop().await
    });
}
