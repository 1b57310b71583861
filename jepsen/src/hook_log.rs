//! The hooks of the run's policy and their call log. Every hook of the policy is this very
//! binary (`jepsen hook`), run by the leader inside its witness's namespace: it appends one
//! JSON line per call to `nodes/<witness>/hooks.jsonl` (the context arbiter gives every exec
//! hook in `ARBITER_*`, the hook's name and the call's start on `CLOCK_MONOTONIC`), then
//! does what its options say (sleep; fence the old region's writer and confirm the hard
//! fence). The runner's [`Collector`] copies every line into the history as a `hook`
//! operation, the call's start turned into the run's clock, so S3 can judge the calls.
//!
//! `CLOCK_MONOTONIC` is the clock the recorder measures the run on (every network namespace
//! shares the kernel's), and the clock nemesis never fakes it, so the calls of different
//! witnesses are ordered exactly against each other and against the history.
//!
//! One hook is a webhook (`kind = "http"`): arbiter POSTs its signed JSON body to
//! `http://127.0.0.1:HOOK_PORT/hook` inside the calling witness's namespace, where
//! [`hook_server`] (`jepsen hook-server`, one per witness host) logs the call the same way
//! when the request arrives and answers `200 OK`. It does not verify the signature (the
//! harness has no HMAC of its own; arbiter's tests cover signing): it is there for the
//! call's evidence.
//!
//! This module never decides whether a call was right: that is the checker's business.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::ctx::Ctx;
use crate::history::OpType;

/// The call log in each witness's node directory.
pub const LOG_FILE: &str = "hooks.jsonl";
/// The file in a database host's node directory that fences its writer: it holds the epoch
/// the fence was for, and the writer accepts no write of an older epoch once it exists.
pub const FENCE_FILE: &str = "fenced";
/// The history's `f` of a hook call.
pub const HOOK: &str = "hook";
/// Port of each witness host's webhook endpoint, on its loopback address.
pub const HOOK_PORT: u16 = 7301;
/// Largest webhook request read (headers and body); arbiter's bodies are ~200 bytes.
const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Longest sleep a hook honours, whatever its options say (hook timeouts are longer).
const SLEEP_MS_MAX: u64 = 10_000;

/// The kernel's `CLOCK_MONOTONIC` in nanoseconds: the clock `std::time::Instant` reads on
/// Linux in the harness. Asked by system call, not through libc, so that a hook running
/// under a witness's libfaketime (which may fake the monotonic clock, `clock-rate`) still
/// reads the real one.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC,
            &mut ts as *mut libc::timespec,
        );
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What `jepsen hook` is told by its arguments.
#[derive(Debug, Clone)]
pub struct HookArgs {
    /// The hook's name in the policy.
    pub name: String,
    /// The call log to append to.
    pub log: PathBuf,
    /// Sleep this long after logging (a slow hook: the window a partition can fall into).
    pub sleep_ms: u64,
    /// `REGION=PATH`: the fence file of each region's writer. When given, the hook writes
    /// the epoch into the fence file of the region being left and prints the hard-fence
    /// confirmation `{"fenced": true, "epoch": N}`.
    pub fence: Vec<String>,
    /// While this file names the call's step, the hook fails after logging (the step
    /// actions arm it so that an operation halts there).
    pub fail_file: Option<PathBuf>,
}

/// The file, in the run's `nodes/`, that makes hooks of the step it names fail.
pub const FAIL_FILE: &str = "hook-fail";

/// The hook program: logs the call, then sleeps, fences and confirms as asked. An error
/// (no log, no context) is a failed hook: exit code non-zero.
pub fn run_hook(args: &HookArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(format!("ARBITER_{k}")).unwrap_or_default();
    let num = |k: &str| env(k).parse::<u64>().ok();
    let epoch = num("EPOCH").ok_or_else(|| anyhow::anyhow!("no ARBITER_EPOCH"))?;
    let line = json!({
        "hook": args.name,
        "group": env("GROUP"),
        "from": env("FROM"),
        "to": env("TO"),
        "epoch": epoch,
        "operation": num("OPERATION"),
        "step": env("STEP"),
        "witness": num("WITNESS"),
        "term": num("TERM"),
        "mono_ns": monotonic_ns(),
        "pid": std::process::id(),
    });
    append(&args.log, &line)?;
    std::thread::sleep(Duration::from_millis(args.sleep_ms.min(SLEEP_MS_MAX)));
    if let Some(path) = &args.fail_file {
        let armed = std::fs::read_to_string(path).unwrap_or_default();
        if !armed.trim().is_empty() && armed.trim() == env("STEP") {
            anyhow::bail!("failing as {} asks (step {})", path.display(), armed.trim());
        }
    }
    if !args.fence.is_empty() {
        let from = env("FROM");
        let path = args
            .fence
            .iter()
            .filter_map(|f| f.split_once('='))
            .find(|(region, _)| *region == from)
            .map(|(_, path)| path)
            .ok_or_else(|| anyhow::anyhow!("no fence file for region {from:?}"))?;
        // Written whole by rename: the writer never reads half an epoch.
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{epoch}\n"))?;
        std::fs::rename(&tmp, path)?;
        println!("{}", json!({"fenced": true, "epoch": epoch}));
    }
    Ok(())
}

/// Appends `line` to the call log in one write with `O_APPEND`, so lines of concurrent
/// calls never interleave.
fn append(log: &Path, line: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// The webhook endpoint of a witness host: every POST whose body is arbiter's hook context
/// is logged to `log` as a call of hook `name` (its start being the request's arrival) and
/// answered `200 OK`; anything else is answered `400`. One connection at a time, forever.
pub fn hook_server(listen: &str, log: &Path, name: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    eprintln!(
        "hook endpoint {name} listening on {listen}, logging to {}",
        log.display()
    );
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let arrived = monotonic_ns();
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let answer = match read_request(&mut conn) {
            Ok(body) => {
                let logged = serde_json::from_slice::<serde_json::Value>(&body)
                    .map_err(anyhow::Error::from)
                    .and_then(|ctx| {
                        let line = json!({
                            "hook": name,
                            "kind": "http",
                            "group": ctx["group"],
                            "from": ctx["from"],
                            "to": ctx["to"],
                            "epoch": ctx["epoch"],
                            "operation": ctx["operation"],
                            "step": ctx["step"],
                            "witness": ctx["witness"],
                            "term": ctx["term"],
                            "mono_ns": arrived,
                            "pid": std::process::id(),
                        });
                        append(log, &line)
                    });
                match logged {
                    Ok(()) => "200 OK",
                    Err(e) => {
                        eprintln!("hook endpoint: {e:#}");
                        "400 Bad Request"
                    }
                }
            }
            Err(e) => {
                eprintln!("hook endpoint: {e:#}");
                "400 Bad Request"
            }
        };
        let _ = conn.write_all(
            format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
    }
    Ok(())
}

/// Reads one HTTP request and returns its body (`Content-Length` bytes after the headers).
fn read_request(conn: &mut std::net::TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("a request without Content-Length"))?;
            let body_at = end + 4;
            while buf.len() < body_at + length {
                if buf.len() > REQUEST_BYTES_MAX {
                    anyhow::bail!("a request over {REQUEST_BYTES_MAX} bytes");
                }
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    anyhow::bail!("the request ended early");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(buf[body_at..body_at + length].to_vec());
        }
        if buf.len() > REQUEST_BYTES_MAX {
            anyhow::bail!("a request over {REQUEST_BYTES_MAX} bytes");
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("the request ended early");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The epoch a writer's fence file names, when it exists: writes of older epochs are
/// refused (the old primary is fenced).
pub fn fenced_epoch(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Copies new lines of every witness's call log into the history.
#[derive(Debug, Default)]
pub struct Collector {
    /// Bytes of each log already copied (only whole lines are taken).
    offsets: BTreeMap<PathBuf, u64>,
}

impl Collector {
    /// Records every whole line written since the last call as a `hook` operation of
    /// process `hook-<witness host>` (invoke and ok at once; `call_ns` is when it started).
    /// A line that does not parse is recorded with the error, so it cannot go unnoticed.
    pub fn poll(&mut self, ctx: &Ctx) {
        let logs: Vec<(String, PathBuf)> = {
            let c = ctx.cluster();
            c.witness_hosts()
                .iter()
                .map(|h| (h.name.clone(), c.node_dir(&h.name).join(LOG_FILE)))
                .collect()
        };
        for (host, path) in logs {
            let offset = self.offsets.entry(path.clone()).or_default();
            let Ok(mut file) = std::fs::File::open(&path) else {
                continue;
            };
            if file.seek(std::io::SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut text = String::new();
            if file.read_to_string(&mut text).is_err() {
                continue;
            }
            let Some(end) = text.rfind('\n') else {
                continue;
            };
            *offset += end as u64 + 1;
            let process = format!("hook-{host}");
            for line in text[..end].lines().filter(|l| !l.trim().is_empty()) {
                let (value, error) = match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(mut v) => {
                        let call_ns = v["mono_ns"]
                            .as_u64()
                            .and_then(|m| ctx.rec.run_ns_of_monotonic(m));
                        v["call_ns"] = json!(call_ns);
                        (v, None)
                    }
                    Err(e) => (json!({"line": line}), Some(format!("unparsable: {e}"))),
                };
                ctx.rec.invoke(HOOK, value.clone(), &process, Some(&host));
                let kind = if error.is_none() {
                    OpType::Ok
                } else {
                    OpType::Info
                };
                ctx.rec
                    .complete(kind, HOOK, value, &process, Some(&host), error);
            }
        }
    }
}
