//! One probe, run once: an HTTP(S) GET, a TCP connect or a gRPC health check against a
//! region's endpoint, with its deadline, reduced to pass/fail and a short reason.
//!
//! This module owns the network side of probing. It must never run without a deadline, never
//! follow redirects or use a proxy (the probe measures what this witness sees of the region,
//! directly), never reuse a pooled connection (a probe must prove a new connection works),
//! and never read more than [`BODY_BYTES_MAX`] bytes of a response. With a source address
//! in [`ProbeOptions`], every probe's connection starts from it, whatever the protocol.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::{ProbeSpec, ProbeTarget};

/// At most this much of an HTTP body is read to look for `body_contains`: health endpoints
/// answer in a few bytes, and a probe must not download a page.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Probe details are cut to this many bytes: a status code or an error, not a document.
pub const DETAIL_BYTES_MAX: usize = super::table::DETAIL_BYTES_MAX;

/// How this witness runs its probes, the same for every probe: settings of the witness (its
/// node file), not of the policy, since they describe the witness's own network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Local IP address every probe connects from, for a site where only one interface
    /// reaches the regions. `None` lets the OS choose by its routes. With a source, only the
    /// target's addresses of the same family (IPv4 or IPv6) are tried.
    pub source: Option<IpAddr>,
}

/// Checks that `source` is an address of this host, so a typo in the node file stops the
/// witness at start instead of failing every probe (which would report every region down).
pub fn check_source(source: IpAddr) -> std::io::Result<()> {
    // A UDP bind claims nothing beyond this call and fails with "cannot assign requested
    // address" exactly when a TCP bind to the same address would.
    std::net::UdpSocket::bind(SocketAddr::new(source, 0)).map(drop)
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the endpoint answered as the spec requires, within the deadline.
    pub ok: bool,
    /// Short reason: `200`, `status 503, expected 200`, `timeout after 800 ms`,
    /// `connect: Connection refused (os error 111)`, `NOT_SERVING`.
    pub detail: String,
    /// From the start of the probe to its outcome (at most about the timeout).
    pub latency: Duration,
}

/// Runs `spec` once, within its timeout.
///
/// Prepares a fresh client each call; the [`super::Prober`] prepares once per spec instead.
pub async fn probe_once(spec: &ProbeSpec, options: ProbeOptions) -> ProbeResult {
    match Probe::new(spec, options) {
        Ok(probe) => probe.run().await,
        Err(detail) => ProbeResult {
            ok: false,
            detail: clip(detail),
            latency: Duration::ZERO,
        },
    }
}

/// A spec with its client prepared (TLS roots loaded, URL parsed), ready to run repeatedly.
#[derive(Debug)]
pub(crate) struct Probe {
    spec: ProbeSpec,
    how: How,
}

#[derive(Debug)]
enum How {
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    Tcp {
        source: Option<IpAddr>,
    },
    Grpc {
        /// Boxed: a tonic endpoint is several times larger than the other variants.
        endpoint: Box<Endpoint>,
    },
}

impl Probe {
    /// Prepares `spec`. An error is a short reason (unreadable CA, bad URL) that the caller
    /// reports as a failing probe: a probe that cannot run is not a passing one.
    pub(crate) fn new(spec: &ProbeSpec, options: ProbeOptions) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let timeout = spec.timeout();
        let how = match &spec.target {
            ProbeTarget::Http { url, ca, .. } => {
                let url = reqwest::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
                let mut builder = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .local_address(options.source)
                    .user_agent(concat!("arbiter-probe/", env!("CARGO_PKG_VERSION")));
                if let Some(path) = ca {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("cannot read ca {}: {e}", path.display()))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("bad ca {}: {e}", path.display()))?;
                    builder = builder.tls_certs_only(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("http client: {}", chain(&e)))?;
                How::Http { client, url }
            }
            ProbeTarget::Tcp { .. } => How::Tcp {
                source: options.source,
            },
            ProbeTarget::Grpc { addr, tls, ca, .. } => {
                let scheme = if *tls { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| format!("bad addr: {e}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .local_address(options.source);
                if *tls {
                    let host = host_of(addr);
                    let mut config = ClientTlsConfig::new().domain_name(host);
                    config = match ca {
                        Some(path) => {
                            let pem = std::fs::read(path)
                                .map_err(|e| format!("cannot read ca {}: {e}", path.display()))?;
                            config.ca_certificate(Certificate::from_pem(pem))
                        }
                        None => config.with_native_roots(),
                    };
                    endpoint = endpoint
                        .tls_config(config)
                        .map_err(|e| format!("tls: {}", chain(&e)))?;
                }
                How::Grpc {
                    endpoint: Box::new(endpoint),
                }
            }
        };
        Ok(Self {
            spec: spec.clone(),
            how,
        })
    }

    pub(crate) fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Runs the probe once. Never takes much longer than the spec's timeout: the whole
    /// attempt, name resolution included, sits under one deadline.
    pub(crate) async fn run(&self) -> ProbeResult {
        let timeout = self.spec.timeout();
        let start = Instant::now();
        let outcome = tokio::time::timeout(timeout, self.attempt()).await;
        let latency = start.elapsed();
        let (ok, detail) = match outcome {
            Ok(Ok(detail)) => (true, detail),
            Ok(Err(detail)) => (false, detail),
            Err(_) => (false, format!("timeout after {} ms", self.spec.timeout_ms)),
        };
        ProbeResult {
            ok,
            detail: clip(detail),
            latency,
        }
    }

    /// `Ok(detail)` when the endpoint answered as required, `Err(reason)` otherwise.
    async fn attempt(&self) -> Result<String, String> {
        match (&self.how, &self.spec.target) {
            (
                How::Http { client, url },
                ProbeTarget::Http {
                    expect_status,
                    body_contains,
                    ..
                },
            ) => {
                let mut response = client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| http_error(&e, self.spec.timeout_ms))?;
                let status = response.status().as_u16();
                if status != *expect_status {
                    return Err(format!("status {status}, expected {expect_status}"));
                }
                let Some(needle) = body_contains else {
                    return Ok(status.to_string());
                };
                let mut body = Vec::new();
                while body.len() < BODY_BYTES_MAX {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(e) => {
                            return Err(format!("body: {}", http_error(&e, self.spec.timeout_ms)))
                        }
                    }
                }
                body.truncate(BODY_BYTES_MAX);
                let needle = needle.as_bytes();
                if body.windows(needle.len()).any(|w| w == needle) {
                    Ok(status.to_string())
                } else {
                    Err(format!("status {status}, body lacks the expected text"))
                }
            }
            (How::Tcp { source }, ProbeTarget::Tcp { addr }) => {
                match source {
                    None => {
                        tokio::net::TcpStream::connect(addr.as_str())
                            .await
                            .map_err(|e| format!("connect: {e}"))?;
                    }
                    Some(source) => connect_from(*source, addr).await?,
                }
                Ok("connected".to_owned())
            }
            (How::Grpc { endpoint }, ProbeTarget::Grpc { service, .. }) => {
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {}", chain(&e)))?;
                let response = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                    .map_err(|status| grpc_error(&status, self.spec.timeout_ms))?;
                let status = response.into_inner().status();
                match status {
                    ServingStatus::Serving => Ok(status.as_str_name().to_owned()),
                    other => Err(other.as_str_name().to_owned()),
                }
            }
            _ => unreachable!("Probe::new pairs each target with its own client"),
        }
    }
}

/// Connects to `addr` (`host:port`) from `source`: like `TcpStream::connect`, each resolved
/// address in turn until one answers, but only those of the source's family (a socket bound
/// to an IPv4 address cannot reach an IPv6 one), which is also what the HTTP and gRPC
/// connectors do with a local address.
async fn connect_from(source: IpAddr, addr: &str) -> Result<(), String> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("resolve: {e}"))?;
    let mut last = None;
    for target in resolved.filter(|t| t.is_ipv4() == source.is_ipv4()) {
        let socket = match target {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        match socket.connect(target).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("connect: {e}"),
        None => format!("connect: {addr} has no address of the family of source {source}"),
    })
}

/// The host part of `host:port`, without IPv6 brackets.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// A failed gRPC health check in words. The channel's own deadline (equal to the probe's)
/// and the probe's outer deadline race; either way the probe timed out, and says so the
/// same way.
fn grpc_error(status: &tonic::Status, timeout_ms: u64) -> String {
    let timed_out = status.code() == tonic::Code::DeadlineExceeded
        || (status.code() == tonic::Code::Cancelled
            && status.message().contains("Timeout expired"));
    if timed_out {
        format!("timeout after {timeout_ms} ms")
    } else {
        format!("grpc {:?}: {}", status.code(), status.message())
    }
}

fn http_error(e: &reqwest::Error, timeout_ms: u64) -> String {
    if e.is_timeout() {
        format!("timeout after {timeout_ms} ms")
    } else if e.is_connect() {
        format!("connect: {}", innermost(e))
    } else {
        chain(e)
    }
}

/// An error and its sources, joined: libraries wrap the useful reason several levels deep.
/// A source whose text is already present (wrappers often repeat their cause) is skipped.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

fn innermost(e: &dyn std::error::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// Cuts `detail` to [`DETAIL_BYTES_MAX`] on a character boundary.
fn clip(mut detail: String) -> String {
    if detail.len() > DETAIL_BYTES_MAX {
        let mut end = DETAIL_BYTES_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("db.example:443"), "db.example");
        assert_eq!(host_of("[::1]:50051"), "::1");
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(DETAIL_BYTES_MAX);
        let c = clip(s);
        assert!(c.len() <= DETAIL_BYTES_MAX && c.chars().all(|ch| ch == 'é'));
    }
}
