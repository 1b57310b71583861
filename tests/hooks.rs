//! Hooks against the real world: `exec` hooks are small shell scripts written into a
//! temporary directory and run by `/bin/sh`; `http` hooks call a real loopback HTTP server
//! started by each test. Nothing is mocked.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::config::{Hook, SecretRef};
use arbiter::hooks::{
    self, parse_lag, HookContext, Lag, OUTPUT_BYTES_MAX, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    TRUNCATED_MARKER,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::time::Instant;

/// Deadline of the polls for what a hook writes (a pid file): generous for a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);
/// How long the hung hooks of the timeout tests would take on their own: a hook that
/// returns before this (and says it timed out) was cut off by its deadline.
const HANG: Duration = Duration::from_secs(30);

fn ctx() -> HookContext {
    HookContext {
        group: "checkout".into(),
        from: "region-a".into(),
        to: "region-b".into(),
        epoch: 7,
        operation: 42,
        step: "promote".into(),
        witness: 1,
        term: 1,
        rpo: None,
    }
}

/// Writes an executable `#!/bin/sh` script named `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec(program: PathBuf, args: &[&str], timeout_ms: u64) -> Hook {
    Hook::Exec {
        program,
        args: args.iter().map(|a| a.to_string()).collect(),
        timeout_ms,
    }
}

/// Whether `pid` is a running (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !(state.starts_with('Z') || state.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is gone; the kernel needs a moment after SIGKILL.
async fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads a pid a script wrote into `path`, waiting (bounded) for the script to write it.
async fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + PROMPT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Goal: an exec hook gets the context both as substituted placeholders and as environment
/// variables, its output is captured, and exit 0 is success.
/// Method: the script writes its arguments and `ARBITER_*` variables to a file.
#[tokio::test]
async fn exec_hook_receives_placeholders_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    let program = script(
        dir.path(),
        "promote.sh",
        r#"out="$1"; shift
printf '%s\n' "$@" > "$out"
printf '%s\n' "$ARBITER_GROUP" "$ARBITER_FROM" "$ARBITER_TO" "$ARBITER_EPOCH" "$ARBITER_OPERATION" "$ARBITER_STEP" >> "$out"
cat
echo "promoted {group}"
echo "to stderr" >&2"#,
    );
    let hook = exec(
        program,
        &[
            out.to_str().unwrap(),
            "--group={group}",
            "{from}->{to}",
            "epoch={epoch}",
            "{operation}",
            "{step}",
            "{unknown}",
        ],
        10_000,
    );
    let outcome = hooks::run("promote-db", &hook, &ctx()).await;
    assert!(outcome.success, "{outcome:?}");
    assert!(
        outcome.summary.starts_with("exit code 0 after"),
        "{outcome:?}"
    );
    // stdin is /dev/null: `cat` ends at once instead of waiting for input.
    assert_eq!(outcome.output, "promoted {group}\nto stderr\n");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [
            "--group=checkout",
            "region-a->region-b",
            "epoch=7",
            "42",
            "promote",
            "{unknown}",
            "checkout",
            "region-a",
            "region-b",
            "7",
            "42",
            "promote",
        ]
    );
}

/// Goal: a non-zero exit is a failure whose summary carries the exit code, and stderr is
/// part of the captured output.
#[tokio::test]
async fn exec_hook_nonzero_exit_fails_with_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "fence.sh", "echo 'fence refused' >&2\nexit 3");
    let outcome = hooks::run("fence", &exec(program, &[], 10_000), &ctx()).await;
    assert!(!outcome.success);
    assert!(
        outcome.summary.starts_with("exit code 3 after"),
        "{outcome:?}"
    );
    assert_eq!(outcome.output, "fence refused\n");
}

/// Goal: a hook killed by a signal is a failure that names the signal.
#[tokio::test]
async fn exec_hook_killed_by_signal_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "dies.sh", "kill -TERM $$\nsleep 5");
    let outcome = hooks::run("dies", &exec(program, &[], 10_000), &ctx()).await;
    assert!(!outcome.success);
    assert!(
        outcome.summary.contains("killed by signal 15 (SIGTERM)"),
        "{outcome:?}"
    );
}

/// Goal: at its deadline a hung hook is killed together with the processes it started.
/// Method: the script starts a background `sleep 30`, records its pid, then sleeps 30 s
/// itself and would then write a marker; the hook's timeout is 300 ms. The outcome must come
/// back after the timeout and before the script could have finished (no marker), say it
/// timed out, keep the output written before the deadline, and the background sleep must be
/// gone.
#[tokio::test]
async fn exec_hook_timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let finished = dir.path().join("finished");
    let program = script(
        dir.path(),
        "hang.sh",
        r#"sleep 30 &
echo $! > "$1"
echo "started"
sleep 30
touch "$2""#,
    );
    let started = Instant::now();
    let hook = exec(
        program,
        &[pid_file.to_str().unwrap(), finished.to_str().unwrap()],
        300,
    );
    let outcome = hooks::run("hang", &hook, &ctx()).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited its timeout: {took:?}"
    );
    assert!(
        took < HANG,
        "cut off by the deadline, not finished: {took:?}"
    );
    assert!(!finished.exists(), "the hung script never reached its end");
    assert!(!outcome.success);
    assert_eq!(
        outcome.summary, "timed out after 300 ms; process group killed",
        "{outcome:?}"
    );
    assert_eq!(outcome.output, "started\n");
    let grandchild = read_pid(&pid_file).await;
    assert!(
        wait_gone(grandchild).await,
        "background process {grandchild} of the hook survived the timeout"
    );
}

/// Goal: a caller that abandons a hook (drops the future, as a witness that stops being
/// leader does) leaves nothing running.
/// Method: run a hook that starts a background sleep, drop the future once the sleep's pid
/// is written, then check both processes are gone.
#[tokio::test]
async fn dropping_the_run_future_kills_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let program = script(
        dir.path(),
        "hang.sh",
        r#"sleep 30 &
echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"
sleep 30"#,
    );
    let hook = exec(program, &[pid_file.to_str().unwrap()], 60_000);
    let context = ctx();
    let run = hooks::run("hang", &hook, &context);
    let pids = tokio::select! {
        outcome = run => panic!("the hook must still be running: {outcome:?}"),
        pids = async {
            let deadline = Instant::now() + PROMPT;
            loop {
                if let Ok(text) = std::fs::read_to_string(&pid_file) {
                    break text
                        .split_whitespace()
                        .map(|p| p.parse::<u32>().unwrap())
                        .collect::<Vec<_>>();
                }
                assert!(Instant::now() < deadline, "the hook never wrote its pids");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => pids,
    };
    // The run future was dropped when select! returned.
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            wait_gone(pid).await,
            "process {pid} survived the dropped hook"
        );
    }
}

/// Goal: output beyond the limit is cut, marked, and does not make the hook fail.
#[tokio::test]
async fn exec_hook_output_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(
        dir.path(),
        "chatty.sh",
        "head -c 100000 /dev/zero | tr '\\0' x",
    );
    let outcome = hooks::run("chatty", &exec(program, &[], 10_000), &ctx()).await;
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(outcome.output.len(), OUTPUT_BYTES_MAX);
    assert!(outcome.output.ends_with(TRUNCATED_MARKER));
    assert!(outcome.output.starts_with("xxxx"));
}

/// Goal: a program that does not exist is a clear failure, not a panic or a hang.
#[tokio::test]
async fn exec_hook_missing_program_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-hook");
    let outcome = hooks::run("gone", &exec(missing.clone(), &[], 10_000), &ctx()).await;
    assert!(!outcome.success);
    assert_eq!(
        outcome.summary,
        format!("program {} not found", missing.display())
    );
    assert_eq!(outcome.output, "");
}

/// Goal: an rpo-check exec hook's report is read from its output, after log lines.
#[tokio::test]
async fn exec_hook_lag_report_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(
        dir.path(),
        "lag.sh",
        r#"echo "checking replica of $ARBITER_TO"
echo '{"lag_ms": 1200, "lag_bytes": 4096}'"#,
    );
    let outcome = hooks::run("lag", &exec(program, &[], 10_000), &ctx()).await;
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(
        parse_lag(&outcome.output),
        Some(Lag {
            ms: Some(1200),
            bytes: Some(4096),
            exceeds_rpo: false,
        })
    );
}

// ---------------------------------------------------------------------------------------
// HTTP hooks against a loopback axum server.

/// One request as the receiver saw it.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Starts a receiver on 127.0.0.1 port 0: `/ok` answers 200 with a lag report, `/fail`
/// answers 500, `/slow` answers after 30 s. Every request is recorded.
async fn receiver() -> (SocketAddr, Log) {
    async fn record(log: &Log, headers: HeaderMap, body: Bytes) {
        log.lock().unwrap().push(Received { headers, body });
    }
    async fn ok(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
        record(&log, headers, body).await;
        (StatusCode::OK, r#"{"lag_ms": 5, "lag_bytes": 0}"#.into())
    }
    async fn fail(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
        record(&log, headers, body).await;
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "replica not ready".into(),
        )
    }
    async fn fenced(
        State(log): State<Log>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        record(&log, headers, body).await;
        (StatusCode::OK, r#"{"fenced": true, "epoch": 7}"#.into())
    }
    async fn accepted(
        State(log): State<Log>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        record(&log, headers, body).await;
        (
            StatusCode::ACCEPTED,
            r#"{"fenced": true, "epoch": 7}"#.into(),
        )
    }
    async fn slow(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
        record(&log, headers, body).await;
        tokio::time::sleep(HANG).await;
        (StatusCode::OK, String::new())
    }
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/fail", post(fail))
        .route("/slow", post(slow))
        .route("/fenced", post(fenced))
        .route("/accepted", post(accepted))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, log)
}

/// A secret file holding `secret` followed by a newline, as `echo secret > file` writes it.
fn secret_file(dir: &Path, secret: &str) -> SecretRef {
    let path = dir.join("webhook.key");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    SecretRef {
        file: Some(path),
        env: None,
    }
}

fn http(url: String, secret: SecretRef, timeout_ms: u64) -> Hook {
    Hook::Http {
        url,
        secret,
        timeout_ms,
    }
}

/// The receiver's side of the documented scheme, written from the module docs:
/// `sha256=` + hex HMAC-SHA256(secret, "<timestamp>.<body>").
fn expected_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = Vec::new();
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Goal: an http hook POSTs the context as JSON with a signature the receiver can verify,
/// and a 2xx answer is success whose body is the output.
/// Method: a loopback receiver records the request; the test recomputes the HMAC from the
/// secret (without the file's trailing newline), the timestamp header and the raw body.
#[tokio::test]
async fn http_hook_posts_signed_context() {
    const SECRET: &str = "correct-horse-battery-staple";
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = receiver().await;
    let hook = http(
        format!("http://{addr}/ok"),
        secret_file(dir.path(), SECRET),
        10_000,
    );
    let outcome = hooks::run("rpo", &hook, &ctx()).await;
    assert!(outcome.success, "{outcome:?}");
    assert!(
        outcome.summary.starts_with("HTTP 200 OK after"),
        "{outcome:?}"
    );
    assert_eq!(
        parse_lag(&outcome.output),
        Some(Lag {
            ms: Some(5),
            bytes: Some(0),
            exceeds_rpo: false,
        })
    );

    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "exactly one request");
    let request = &received[0];
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "group": "checkout", "from": "region-a", "to": "region-b",
            "epoch": 7, "operation": 42, "step": "promote", "witness": 1, "term": 1,
        })
    );
    assert_eq!(request.headers["content-type"], "application/json");
    let timestamp = request.headers[TIMESTAMP_HEADER].to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: u64 = timestamp.parse().unwrap();
    assert!(
        sent.abs_diff(now) < 300,
        "timestamp {sent} far from now {now}"
    );
    let signature = request.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(
        signature,
        expected_signature(SECRET.as_bytes(), timestamp, &request.body)
    );
    assert_ne!(
        signature,
        expected_signature(b"another secret", timestamp, &request.body),
        "the signature depends on the secret"
    );
    assert!(!outcome.summary.contains(SECRET) && !outcome.output.contains(SECRET));
}

/// Goal: only an explicit hard-fence confirmation for the context's epoch counts: an http
/// hook's `200 OK` with `{"fenced": true, "epoch": 7}` does; the same body with `202
/// Accepted` (a fence merely queued), or a plain success, does not; an exec hook confirms
/// only with exit 0 and the report, for that epoch.
#[tokio::test]
async fn only_an_explicit_hard_fence_confirmation_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _log) = receiver().await;
    let secret = secret_file(dir.path(), "fence-secret");
    let call = |path: &str| http(format!("http://{addr}/{path}"), secret.clone(), 10_000);
    let fenced = hooks::run("fence", &call("fenced"), &ctx()).await;
    assert_eq!(fenced.fence_confirmed, Some(7), "{fenced:?}");
    let accepted = hooks::run("fence", &call("accepted"), &ctx()).await;
    assert!(accepted.success, "a 202 is a success...");
    assert_eq!(accepted.fence_confirmed, None, "...but no confirmed fence");
    let ok = hooks::run("fence", &call("ok"), &ctx()).await;
    assert_eq!(ok.fence_confirmed, None);

    let claim = |epoch: &str, code: u8| {
        let path = script(
            dir.path(),
            &format!("fence-{epoch}-{code}.sh"),
            &format!("echo stopping; echo '{{\"fenced\": true, \"epoch\": {epoch}}}'; exit {code}"),
        );
        exec(path, &[], 10_000)
    };
    assert_eq!(
        hooks::run("fence", &claim("7", 0), &ctx())
            .await
            .fence_confirmed,
        Some(7)
    );
    assert_eq!(
        hooks::run("fence", &claim("7", 1), &ctx())
            .await
            .fence_confirmed,
        None,
        "a failing hook confirms nothing"
    );
    let other = hooks::run("fence", &claim("6", 0), &ctx()).await;
    assert_eq!(
        other.fence_confirmed,
        Some(6),
        "the claim is read as written; the executor compares it with the operation's epoch"
    );
}

/// Goal: a non-2xx answer is a failure that names the status and keeps the body.
#[tokio::test]
async fn http_hook_server_error_fails() {
    const SECRET: &str = "s3cr3t-for-500";
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = receiver().await;
    let hook = http(
        format!("http://{addr}/fail"),
        secret_file(dir.path(), SECRET),
        10_000,
    );
    let outcome = hooks::run("promote", &hook, &ctx()).await;
    assert!(!outcome.success);
    assert!(
        outcome
            .summary
            .starts_with("HTTP 500 Internal Server Error after"),
        "{outcome:?}"
    );
    assert_eq!(outcome.output, "replica not ready");
    assert_eq!(log.lock().unwrap().len(), 1);
    assert!(!outcome.summary.contains(SECRET));
}

/// Goal: a receiver that does not answer within the hook's timeout is a failure, promptly.
#[tokio::test]
async fn http_hook_timeout_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = receiver().await;
    let hook = http(
        format!("http://{addr}/slow"),
        secret_file(dir.path(), "k"),
        300,
    );
    let started = Instant::now();
    let outcome = hooks::run("slow", &hook, &ctx()).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited its timeout: {took:?}"
    );
    assert!(
        took < HANG,
        "cut off by the deadline, not answered: {took:?}"
    );
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the receiver got the one request (it answers only after HANG)"
    );
    assert!(!outcome.success);
    assert!(
        outcome.summary.starts_with("timed out after 300 ms"),
        "{outcome:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 1, "the request did arrive");
}

/// Goal: nothing listening is a clear "connection refused" failure.
#[tokio::test]
async fn http_hook_connection_refused_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Bind and release a port so that, most likely, nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = http(
        format!("http://{addr}/ok?token=in-query"),
        secret_file(dir.path(), "k"),
        10_000,
    );
    let outcome = hooks::run("nobody", &hook, &ctx()).await;
    assert!(!outcome.success);
    assert_eq!(
        outcome.summary,
        format!("cannot connect to http://{addr}: connection refused")
    );
    assert!(!outcome.summary.contains("token"), "{outcome:?}");
}

/// Goal: the secret is read when the hook runs: a secret file removed after the policy was
/// validated fails the call with the file named, nothing is sent, and no outcome of either
/// call contains the secret.
#[tokio::test]
async fn http_hook_secret_file_missing_at_call_time_fails_without_sending() {
    const SECRET: &str = "rotated-away-secret";
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = receiver().await;
    let secret = secret_file(dir.path(), SECRET);
    let path = secret.file.clone().unwrap();
    let hook = http(format!("http://{addr}/ok"), secret, 10_000);

    let first = hooks::run("notify", &hook, &ctx()).await;
    assert!(first.success, "{first:?}");

    std::fs::remove_file(&path).unwrap();
    let second = hooks::run("notify", &hook, &ctx()).await;
    assert!(!second.success);
    assert!(
        second
            .summary
            .starts_with(&format!("cannot read secret file {}:", path.display())),
        "{second:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 1, "the second call sent nothing");
    for outcome in [&first, &second] {
        assert!(!outcome.summary.contains(SECRET) && !outcome.output.contains(SECRET));
    }
}
