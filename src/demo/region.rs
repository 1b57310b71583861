//! The demo's simulated regions: per region a tiny HTTP server whose `/health` the
//! witnesses probe, which the demo (or a user, with `curl -X POST .../health/off`) can turn
//! off, and one receiver of the signed promote hook that marks the target region's
//! simulated database primary.
//!
//! It stands in for real workloads only: it must never be mistaken for a health check to
//! copy (it answers whatever it is told to) and never act on an unsigned hook call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::hooks::{verify_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// A hook call signed longer ago than this (or this far in the future) is refused as a
/// possible replay.
const HOOK_AGE_MAX: Duration = Duration::from_secs(300);

/// What one simulated region is doing.
#[derive(Debug, Clone)]
struct RegionState {
    /// Whether `/health` answers 200 (on) or 503 (off: the region went dark).
    healthy: bool,
    /// The epoch its simulated database was promoted at, if it ever was.
    primary_epoch: Option<u64>,
}

/// Shared by the servers' handlers.
#[derive(Clone)]
struct Shared {
    regions: Arc<Mutex<BTreeMap<String, RegionState>>>,
    /// The promote hook's secret (the same bytes the policy's secret file holds).
    secret: Arc<Vec<u8>>,
    /// Whether the regions have simulated databases (promoted by the hook); without, the
    /// databases are real and `/health` says nothing about them.
    databases: bool,
}

/// The running simulated regions and hook receiver. Stopped (its tasks aborted) on drop.
pub struct SimulatedRegions {
    shared: Shared,
    tasks: Vec<JoinHandle<()>>,
}

impl SimulatedRegions {
    /// Serves one region per `(name, listener)`, all healthy. With `hooks` (a listener and
    /// the webhook's secret), each region has a simulated database, the first one primary at
    /// epoch 1, and the promote hook is received there.
    pub fn start(
        regions: Vec<(String, TcpListener)>,
        hooks: Option<(TcpListener, Vec<u8>)>,
    ) -> SimulatedRegions {
        let shared = Shared {
            regions: Arc::new(Mutex::new(
                regions
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        let state = RegionState {
                            healthy: true,
                            primary_epoch: (i == 0).then_some(1),
                        };
                        (name.clone(), state)
                    })
                    .collect(),
            )),
            secret: Arc::new(hooks.as_ref().map(|(_, s)| s.clone()).unwrap_or_default()),
            databases: hooks.is_some(),
        };
        let mut tasks = Vec::new();
        for (name, listener) in regions {
            let router = Router::new()
                .route("/health", get(health))
                .route("/health/on", post(turn_on))
                .route("/health/off", post(turn_off))
                .with_state((shared.clone(), name));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "simulated region stopped");
                }
            }));
        }
        if let Some((hooks, _)) = hooks {
            let router = Router::new()
                .route("/promote", post(promote))
                .with_state(shared.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(hooks, router).await {
                    tracing::error!(error = %e, "hook receiver stopped");
                }
            }));
        }
        SimulatedRegions { shared, tasks }
    }

    /// Turns `region`'s health endpoint on (200) or off (503).
    pub fn set_healthy(&self, region: &str, healthy: bool) {
        set_healthy(&self.shared, region, healthy);
    }
}

impl Drop for SimulatedRegions {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn set_healthy(shared: &Shared, region: &str, healthy: bool) {
    if let Some(r) = shared.regions.lock().expect("regions lock").get_mut(region) {
        r.healthy = healthy;
    }
    tracing::info!(%region, healthy, "simulated region health endpoint switched");
}

async fn health(State((shared, name)): State<(Shared, String)>) -> (StatusCode, String) {
    let state = shared
        .regions
        .lock()
        .expect("regions lock")
        .get(&name)
        .cloned();
    match state {
        Some(RegionState {
            healthy: true,
            primary_epoch,
        }) if shared.databases => {
            let role = match primary_epoch {
                Some(epoch) => format!("primary since epoch {epoch}"),
                None => "standby".to_string(),
            };
            (
                StatusCode::OK,
                format!("ok: {name} (simulated database: {role})\n"),
            )
        }
        Some(RegionState { healthy: true, .. }) => (StatusCode::OK, format!("ok: {name}\n")),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name} is dark (simulated outage)\n"),
        ),
    }
}

async fn turn_on(State((shared, name)): State<(Shared, String)>) -> String {
    set_healthy(&shared, &name, true);
    format!("{name}: health endpoint on\n")
}

async fn turn_off(State((shared, name)): State<(Shared, String)>) -> String {
    set_healthy(&shared, &name, false);
    format!("{name}: health endpoint off\n")
}

/// The promote hook: verifies the signature and its age, then marks `to` primary at
/// `epoch`. Idempotent, as every hook must be: a repeated call changes nothing more.
async fn promote(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
    if !verify_signature(&shared.secret, &timestamp, &body, &signature) {
        return (StatusCode::UNAUTHORIZED, "bad signature\n".into());
    }
    let now_s = crate::wallclock::now_ms() / 1000;
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now_s) <= HOOK_AGE_MAX.as_secs());
    if !fresh {
        return (StatusCode::UNAUTHORIZED, "stale timestamp\n".into());
    }
    let Ok(call) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON\n".into());
    };
    let (to, epoch) = (
        call["to"].as_str().unwrap_or_default().to_string(),
        call["epoch"].as_u64().unwrap_or_default(),
    );
    let mut regions = shared.regions.lock().expect("regions lock");
    if !regions.contains_key(&to) {
        return (
            StatusCode::NOT_FOUND,
            format!("no simulated region {to:?}\n"),
        );
    }
    for (name, region) in regions.iter_mut() {
        if *name == to {
            region.primary_epoch = Some(region.primary_epoch.unwrap_or(0).max(epoch));
        } else if region.primary_epoch.is_some_and(|e| e < epoch) {
            // A primary of an older epoch is fenced by the newer one: it follows as standby.
            region.primary_epoch = None;
        }
    }
    tracing::info!(region = %to, epoch, "simulated database promoted");
    (
        StatusCode::OK,
        format!("{to}'s simulated database is primary at epoch {epoch}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Hook, SecretRef};
    use crate::hooks::HookContext;

    async fn get_health(addr: std::net::SocketAddr) -> (u16, String) {
        let response = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Goal: the health endpoint answers what the demo sets, and the promote hook acts only
    /// on a correctly signed call, sent by the real http hook runner. Method: serve on port
    /// 0, switch region-a off and on, call the hook with the right and a wrong secret.
    #[tokio::test]
    async fn health_follows_the_switch_and_only_a_signed_promote_acts() {
        crate::tls::install_crypto_provider();
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let (a, b, hooks) = (bind().await, bind().await, bind().await);
        let addrs = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        let hooks_addr = hooks.local_addr().unwrap();
        let regions = SimulatedRegions::start(
            vec![("region-a".into(), a), ("region-b".into(), b)],
            Some((hooks, b"s3cret".to_vec())),
        );
        assert_eq!(
            get_health(addrs[0]).await,
            (
                200,
                "ok: region-a (simulated database: primary since epoch 1)\n".into()
            )
        );
        regions.set_healthy("region-a", false);
        assert_eq!(get_health(addrs[0]).await.0, 503);
        regions.set_healthy("region-a", true);
        assert_eq!(get_health(addrs[0]).await.0, 200);

        let dir = super::super::files::WorkDir::create().unwrap();
        let ctx = HookContext {
            group: "checkout".into(),
            from: "region-a".into(),
            to: "region-b".into(),
            epoch: 2,
            operation: 1,
            step: "promote".into(),
            witness: 1,
            term: 1,
            rpo: None,
        };
        let hook = |secret: &str| {
            let path = dir.path().join(format!("secret-{secret}"));
            std::fs::write(&path, secret).unwrap();
            Hook::Http {
                url: format!("http://{hooks_addr}/promote"),
                secret: SecretRef {
                    file: Some(path),
                    env: None,
                },
                timeout_ms: 5_000,
            }
        };
        let refused = crate::hooks::run("promote", &hook("wrong"), &ctx).await;
        assert!(!refused.success, "{refused:?}");
        assert!(get_health(addrs[1]).await.1.contains("standby"));

        let promoted = crate::hooks::run("promote", &hook("s3cret"), &ctx).await;
        assert!(promoted.success, "{promoted:?}");
        assert!(get_health(addrs[1])
            .await
            .1
            .contains("primary since epoch 2"));
        assert!(
            get_health(addrs[0]).await.1.contains("standby"),
            "the older primary follows"
        );
    }
}
