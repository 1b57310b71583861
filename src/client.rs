//! [`Client`]: talks to any witness over mutual TLS and follows the leader transparently.
//! Used by the CLI and the tests. A `not-leader` answer redirects to the leader's address;
//! an unreachable witness is skipped for the next one. Attempts and total time are bounded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::api::{META_ERROR, META_LEADER_ADDR};
use crate::proto::arbiter_client::ArbiterClient;
use crate::tls::{TlsMaterial, TlsPaths};

/// Deadline of one RPC. Long enough for a commit across WAN links and a leader election.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout per witness.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts across witnesses and redirects for one call.
const ATTEMPTS_MAX: usize = 60;
/// Total time one call keeps trying: long enough to ride out a leader election with
/// WAN-sized timeouts, short enough for an operator at a terminal.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Pause before trying again when no reachable leader is known (an election is likely
/// under way, or the known leader just died).
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// An error from the cluster, with its machine-readable kind (`unknown-group`,
/// `not-candidate`, `frozen`, `unavailable`, ...; see the API error reference).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: String,
    pub code: Code,
    pub message: String,
}

impl ClientError {
    /// The error a gRPC status from a witness stands for (its kind from the metadata).
    pub fn from_status(s: &Status) -> Self {
        let kind = s
            .metadata()
            .get(META_ERROR)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| match s.code() {
                Code::Unavailable | Code::DeadlineExceeded => "unavailable".to_string(),
                _ => "transport".to_string(),
            });
        ClientError {
            kind,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    fn local(kind: &str, message: String) -> Self {
        ClientError {
            kind: kind.to_string(),
            code: Code::Unavailable,
            message,
        }
    }
}

/// A client of the witness cluster.
#[derive(Clone)]
pub struct Client {
    servers: Vec<String>,
    tls: ClientTlsConfig,
    /// One channel per witness address, reused by every call (HTTP/2 multiplexes).
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Client {
    /// `servers` are `host:port` of any witnesses; `tls` the client certificate files.
    pub fn new(servers: Vec<String>, tls: &TlsPaths) -> Result<Client, ClientError> {
        crate::tls::install_crypto_provider();
        if servers.is_empty() {
            return Err(ClientError::local(
                "invalid-argument",
                "no witness address given (--server)".into(),
            ));
        }
        let material =
            TlsMaterial::load(tls).map_err(|e| ClientError::local("tls", e.to_string()))?;
        Ok(Client {
            servers,
            tls: material.client_config(None),
            channels: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.new_channel(addr)?;
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn new_channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(self.tls.clone()))
            .map_err(|e| {
                ClientError::local("invalid-argument", format!("witness address {addr:?}: {e}"))
            })?;
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .connect_lazy())
    }

    /// Runs `call` against the leader: starts with the given witnesses in order, follows
    /// `not-leader` redirects, skips unreachable witnesses, and gives up after a bounded
    /// number of attempts with the last error.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(ArbiterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(|channel| call(ArbiterClient::new(channel)))
            .await
    }

    /// Like [`Client::call`] for any service on the witnesses (the `Fencing` service).
    pub async fn call_channel<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut target = self.servers[0].clone();
        let mut next_server = 1;
        let mut last = ClientError::local("unavailable", "no witness answered".into());
        let started = tokio::time::Instant::now();
        // Addresses that just failed at the transport level: a redirect to one of them is
        // not followed until an election had time to move on.
        let mut failed: Vec<String> = Vec::new();
        for _ in 0..ATTEMPTS_MAX {
            if started.elapsed() > CALL_DEADLINE {
                break;
            }
            let channel = self.channel(&target)?;
            match call(channel).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let err = ClientError::from_status(&status);
                    let redirect = status
                        .metadata()
                        .get(META_LEADER_ADDR)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let retry = matches!(
                        err.kind.as_str(),
                        "not-leader" | "unavailable" | "transport" | "shutting-down"
                    );
                    last = ClientError {
                        message: format!("{target}: {}", err.message),
                        ..err
                    };
                    if !retry {
                        return Err(last);
                    }
                    if last.kind != "not-leader" && !failed.contains(&target) {
                        failed.push(target.clone());
                    }
                    match redirect {
                        Some(leader) if leader != target && !failed.contains(&leader) => {
                            tracing::debug!(from = %target, to = %leader, "following the leader");
                            target = leader;
                        }
                        _ => {
                            if failed.len() >= self.servers.len() {
                                failed.clear();
                            }
                            target = self.servers[next_server % self.servers.len()].clone();
                            next_server += 1;
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
            }
        }
        Err(last)
    }

    /// A streaming call (watch) to the first witness that answers; no leader needed.
    pub async fn connect_any(&self) -> Result<ArbiterClient<Channel>, ClientError> {
        let mut last = ClientError::local("unavailable", "no witness answered".into());
        for addr in &self.servers {
            match Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(self.tls.clone()))
            {
                Ok(e) => match e.connect_timeout(CONNECT_TIMEOUT).connect().await {
                    Ok(ch) => return Ok(ArbiterClient::new(ch)),
                    Err(err) => last = ClientError::local("unavailable", format!("{addr}: {err}")),
                },
                Err(err) => last = ClientError::local("invalid-argument", format!("{addr}: {err}")),
            }
        }
        Err(last)
    }
}
