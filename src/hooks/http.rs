//! `http` hooks: POSTs the step's context as JSON, signed with the hook's secret (the scheme
//! is documented in the parent module), and reads a bounded part of the response.
//!
//! This module owns the request from signing to the last byte read. It must never send an
//! unsigned request, never follow a redirect (the signed request would be replayed to a
//! place the policy does not name), and never let the secret or the URL's path and query
//! (which may carry a token) into a summary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use tokio::time::{timeout_at, Instant};

use super::{millis, Capture, HookContext, HookOutcome};
use crate::config::SecretRef;
use crate::secret::Secret;

/// Header carrying `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Arbiter-Signature";
/// Header carrying the signed timestamp, unix seconds in decimal.
pub const TIMESTAMP_HEADER: &str = "X-Arbiter-Timestamp";

/// Sent so receivers can tell arbiter's calls apart in their logs.
const USER_AGENT: &str = concat!("arbiter/", env!("CARGO_PKG_VERSION"));

/// POSTs the signed context to `url`; a 2xx status is success.
pub(super) async fn run(
    url: &str,
    secret: &SecretRef,
    timeout_ms: u64,
    ctx: &HookContext,
) -> HookOutcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(timeout_ms);
    let deadline = started + timeout;
    let target = describe_target(url);

    let secret = match Secret::read(secret) {
        Ok(secret) => secret,
        Err(reason) => return HookOutcome::failed(reason, started),
    };
    let body = match serde_json::to_vec(ctx) {
        Ok(body) => body,
        Err(e) => return HookOutcome::failed(format!("cannot encode the request: {e}"), started),
    };
    let timestamp = unix_seconds();
    let signature = sign(&secret, timestamp, &body);
    drop(secret);

    let client = match client() {
        Ok(client) => client,
        Err(e) => {
            return HookOutcome::failed(
                format!("cannot set up an HTTP client: {}", error_chain(&e)),
                started,
            )
        }
    };
    let request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body);

    let mut response = match timeout_at(deadline, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) if e.is_timeout() => {
            return HookOutcome::failed(
                format!("timed out after {timeout_ms} ms waiting for {target}"),
                started,
            )
        }
        Ok(Err(e)) => return HookOutcome::failed(request_failure(&target, &e), started),
        Err(_) => {
            return HookOutcome::failed(
                format!("timed out after {timeout_ms} ms waiting for {target}"),
                started,
            )
        }
    };
    let status = response.status();
    let status_line = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    let headers_at = started.elapsed();

    let mut capture = Capture::default();
    let read = timeout_at(deadline, async {
        // Once something had to be dropped, the rest of the body is not read: the
        // connection is closed instead.
        while !capture.overflowed {
            match response.chunk().await {
                Ok(Some(bytes)) => capture.push(&bytes),
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    let (success, summary) = match read {
        Ok(Ok(())) => (
            status.is_success(),
            format!("{status_line} after {} ms", millis(headers_at)),
        ),
        Ok(Err(e)) if !e.is_timeout() => (
            false,
            format!(
                "{status_line}, then reading the body failed: {}",
                error_chain(&e.without_url())
            ),
        ),
        Ok(Err(_)) | Err(_) => (
            false,
            format!("{status_line}, then timed out after {timeout_ms} ms reading the body"),
        ),
    };
    HookOutcome {
        http_status: Some(status.as_u16()),
        ..HookOutcome::new(success, summary, capture.into_output(), started)
    }
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
fn sign(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut mac = hmac::Context::with_key(&key);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.sign();
    let mut out = String::with_capacity(7 + 2 * tag.as_ref().len());
    out.push_str("sha256=");
    for byte in tag.as_ref() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The receiver's side of [`sign`]: whether `signature` (the value of [`SIGNATURE_HEADER`])
/// is the HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`, compared in constant time.
/// `timestamp` is the value of [`TIMESTAMP_HEADER`] as received; checking its age (replay
/// protection) is the caller's business.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    hmac::verify(&key, &signed, &tag).is_ok()
}

/// Wall-clock seconds for the signed timestamp only (replay protection at the receiver);
/// never used for a decision here. A clock before 1970 signs 0 rather than failing.
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client per call: hooks run a few times per failover, and a client tied to no runtime
/// or connection pool cannot carry a broken connection from an earlier call into this one.
fn client() -> reqwest::Result<reqwest::Client> {
    // reqwest is built without a crypto provider of its own; use the process's (ring).
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .pool_max_idle_per_host(0)
        .build()
}

/// `scheme://host:port` of `url`: enough to tell which receiver failed, without the path
/// and query, which may hold a token.
fn describe_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            _ => "the hook URL".to_string(),
        },
        Err(_) => "the hook URL".to_string(),
    }
}

/// One line for a request that got no response.
fn request_failure(target: &str, e: &reqwest::Error) -> String {
    if e.is_builder() {
        return format!("invalid request to {target}: {}", error_chain(e));
    }
    if let Some(io) = find_io_error(e) {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return format!("cannot connect to {target}: connection refused");
        }
    }
    let e = error_chain(e);
    format!("request to {target} failed: {e}")
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// The error and its sources on one line, without the URL, repeated messages dropped.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // The URL is left out: its path and query may carry a token.
    let top = e.to_string();
    let top = match e.url() {
        Some(url) => top
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "<url>"),
        None => top,
    };
    parts.push(top);
    let mut next = std::error::Error::source(e);
    while let Some(source) = next {
        let text = source.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = source.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hides_path_and_query() {
        assert_eq!(
            describe_target("https://hooks.example/T000/B000/XXXX?token=abc"),
            "https://hooks.example:443"
        );
        assert_eq!(
            describe_target("http://127.0.0.1:8080/x"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(describe_target("not a url"), "the hook URL");
    }

    /// A known answer computed outside this code base (Python's `hmac` module) for the
    /// documented scheme, so a change to the signed bytes cannot go unnoticed.
    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "key\n").unwrap();
        let secret = Secret::read(&SecretRef {
            file: Some(path),
            env: None,
        })
        .unwrap();
        assert_eq!(
            sign(&secret, 1_700_000_000, br#"{"group":"g"}"#),
            "sha256=dd170b16c9ac5e38c7b98d3c7f454c547df29c8715300db11028eb478b65445b"
        );
    }

    /// Goal: a receiver verifying with [`verify_signature`] accepts exactly what [`sign`]
    /// produced, and refuses another body, timestamp, secret or a malformed header.
    #[test]
    fn verify_signature_accepts_only_the_signed_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "key\n").unwrap();
        let secret = Secret::read(&SecretRef {
            file: Some(path),
            env: None,
        })
        .unwrap();
        let body = br#"{"group":"g"}"#;
        let signature = sign(&secret, 1_700_000_000, body);
        assert!(verify_signature(b"key", "1700000000", body, &signature));
        assert!(!verify_signature(b"key", "1700000001", body, &signature));
        assert!(!verify_signature(b"key", "1700000000", b"{}", &signature));
        assert!(!verify_signature(b"other", "1700000000", body, &signature));
        assert!(!verify_signature(
            b"key",
            "1700000000",
            body,
            &signature[7..]
        ));
        assert!(!verify_signature(b"key", "1700000000", body, "sha256=zz"));
    }
}
