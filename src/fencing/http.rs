//! HTTP/JSON endpoints on the witness's TLS listener, for shell hooks and tools that do not
//! speak gRPC (`curl --cert client.pem --key client.key --cacert ca.pem https://...`).
//!
//! - `GET  /v1/status`: groups with their active region, epoch and mode (linearizable).
//! - `GET  /v1/groups/{group}`: one group.
//! - `GET  /v1/groups/{group}/fence?region=R&epoch=E`: 200 allowed, 409 refused (JSON body
//!   with the current active region and epoch), 400 bad input, 404 unknown group or region.
//! - `POST /v1/groups/{group}/acquire` `{"region": R, "holder": H}`
//! - `POST /v1/groups/{group}/renew` `{"region": R, "epoch": E, "holder": H}`
//!
//! A witness that is not the leader forwards fencing requests to the leader (one hop), so a
//! hook can ask any witness.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::service::{Fencing, FORWARD_TIMEOUT_MAX};
use crate::access::Caller;
use crate::api::{ApiError, ErrorKind};
use crate::proto;
use crate::state::LeaseKind;

#[derive(Clone)]
struct AppState {
    /// Decides, or forwards to the leader.
    fencing: Fencing,
}

/// The HTTP routes, to be served beside the gRPC services.
pub fn router(fencing: Fencing) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/groups/{group}", get(group))
        .route("/v1/groups/{group}/fence", get(fence))
        .route("/v1/groups/{group}/acquire", post(acquire))
        .route("/v1/groups/{group}/renew", post(renew))
        .with_state(AppState { fencing })
}

/// An error of the HTTP routes as its answer: status from [`ErrorKind::http_status`], a JSON
/// body with the kind and the message.
pub fn error_response(e: &ApiError) -> Response {
    kind_response(e.kind(), &e.to_string())
}

/// An error as an HTTP answer: the status from the one mapping ([`ErrorKind::http_status`]).
fn kind_response(kind: ErrorKind, message: &str) -> Response {
    let status =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "error": kind.as_str(), "message": message })),
    )
        .into_response()
}

fn lease_response(reply: &proto::LeaseReply) -> Response {
    let status = if reply.allowed {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    let body = json!({
        "allowed": reply.allowed,
        "epoch": reply.epoch,
        "lease_ms": reply.lease_ms,
        "active": reply.active,
        "refusal": reply.refusal,
        "message": reply.message,
    });
    (status, Json(body)).into_response()
}

/// Decides here, or asks the leader when this witness is not the leader.
/// The caller is the one the access middleware verified; without it (a router served without
/// the middleware) the request has no role and is refused.
async fn decide(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    kind: LeaseKind,
    req: proto::LeaseRequest,
) -> Response {
    let caller = caller.map(|Extension(c)| c).unwrap_or_default();
    match state
        .fencing
        .answer(&caller, kind, &req, false, FORWARD_TIMEOUT_MAX)
        .await
    {
        Ok(reply) => lease_response(&reply),
        Err(status) => {
            let kind = crate::client::ClientError::from_status(&status).kind;
            kind_response(kind, status.message())
        }
    }
}

async fn fence(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(group): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let region = q.get("region").cloned().unwrap_or_default();
    let epoch = match q.get("epoch").map(|e| e.parse::<u64>()) {
        Some(Ok(e)) => e,
        Some(Err(_)) => {
            return error_response(&ApiError::invalid(
                "epoch",
                format!("{:?} is not a whole number", q["epoch"]),
            ));
        }
        None => return error_response(&ApiError::invalid("epoch", "missing (?region=R&epoch=E)")),
    };
    let req = proto::LeaseRequest {
        group,
        region,
        epoch,
        holder: String::new(),
    };
    decide(&state, caller, LeaseKind::Check, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    region: String,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    holder: String,
}

async fn acquire(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(group): Path<String>,
    Json(body): Json<LeaseBody>,
) -> Response {
    let req = proto::LeaseRequest {
        group,
        region: body.region,
        epoch: 0,
        holder: body.holder,
    };
    decide(&state, caller, LeaseKind::Acquire, req).await
}

async fn renew(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(group): Path<String>,
    Json(body): Json<LeaseBody>,
) -> Response {
    let req = proto::LeaseRequest {
        group,
        region: body.region,
        epoch: body.epoch,
        holder: body.holder,
    };
    decide(&state, caller, LeaseKind::Renew, req).await
}

fn group_json(g: &crate::state::GroupState) -> serde_json::Value {
    json!({
        "name": g.name, "active": g.active, "epoch": g.epoch, "mode": g.mode.as_str(),
        "candidates": g.candidates, "revoked": g.revoked, "operation": g.operation,
    })
}

async fn status(State(state): State<AppState>) -> Response {
    let consensus = state.fencing.consensus();
    if let Err(e) = consensus.linearizable_read().await {
        return error_response(&ApiError::from(e));
    }
    let view = consensus.view();
    let body = consensus.with_state(|s| {
        json!({
            "cluster_id": s.cluster_id,
            "leader_id": view.leader,
            "policy_version": s.policy_version,
            "groups": s.groups.values().map(group_json).collect::<Vec<_>>(),
            "verdicts": s.verdicts,
        })
    });
    Json(body).into_response()
}

async fn group(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    let consensus = state.fencing.consensus();
    if let Err(e) = consensus.linearizable_read().await {
        return error_response(&ApiError::from(e));
    }
    match consensus.with_state(|s| s.groups.get(&group).map(group_json)) {
        Some(body) => Json(body).into_response(),
        None => error_response(&ApiError::from(crate::state::Refusal::UnknownGroup {
            group,
        })),
    }
}
