//! `/metrics`, `/healthz` and `/readyz`: routes served on the witness's TLS listener beside
//! the API, and, when the node file has `metrics.listen`, alone on a plaintext port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{readiness, Metrics};
use crate::raft::Consensus;

/// What the three endpoints read.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub consensus: Arc<Consensus>,
    /// Longest time without leader contact that still counts as ready (see
    /// [`super::readiness`]): the election timeout maximum of the node file.
    pub contact_max: Duration,
}

/// The three routes.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        e.metrics.encode(),
    )
        .into_response()
}

/// The process is up and this listener serves: always 200.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    let status = e.consensus.raft_status();
    match readiness(&status, e.contact_max) {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({
                "ready": true,
                "leader": status.leader,
                "applied_index": status.applied_index,
            })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// The plaintext port: serves `router` on `listener` until the task is aborted.
pub struct PlaintextServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl PlaintextServer {
    pub fn start(listener: TcpListener, router: Router) -> std::io::Result<PlaintextServer> {
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "plaintext metrics port stopped");
            }
        });
        tracing::info!(addr = %local_addr, "plaintext /metrics, /healthz and /readyz listening");
        Ok(PlaintextServer { local_addr, task })
    }
}

impl Drop for PlaintextServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
