//! The largest request message each RPC takes, enforced while its body arrives: a caller who
//! passed the access check still cannot make a witness buffer more for a `Vote` than a vote
//! can be. One cap per service (what tonic offers) would let every RPC of the Raft service
//! take as much as the largest AppendEntries.
//!
//! [`limit_messages`] runs after the access check, so a caller without the role is refused
//! before a byte of its body is read; past its RPC's limit, a request is `OUT_OF_RANGE`
//! naming the RPC and the limit, and its handler never sees it.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;

use super::{ARBITER_SERVICE, FENCING_SERVICE, RAFT_SERVICE};

/// What gRPC puts before each message: a compression flag and a 4-byte length.
const GRPC_FRAME_HEADER_BYTES: usize = 5;

/// The limit of RPCs whose requests hold a few names, ids, a reason and a request id, each
/// bounded far below it (`REASON_BYTES_MAX`, `NAME_BYTES_MAX`, ...): room for the
/// validation to refuse an oversized field by name, and no more.
pub const SMALL_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// The largest request message `path`'s RPC takes (gRPC message bytes, not counting the
/// frame header), or `None` where the body is not bounded here: the client-streamed
/// `InstallSnapshot` (its chunks are bounded by the service's message cap and the whole by
/// `SNAPSHOT_BYTES_MAX`) and the HTTP routes.
pub fn message_bytes_max(path: &str) -> Option<usize> {
    let (service, rpc) = path.strip_prefix('/')?.split_once('/')?;
    match (service, rpc) {
        (RAFT_SERVICE, "InstallSnapshot") => None,
        (RAFT_SERVICE, "AppendEntries") => Some(crate::raft::RAFT_MESSAGE_BYTES_MAX),
        // One probe per region, each with a bounded detail: a policy's worth at most.
        (RAFT_SERVICE, "ReportProbes") => Some(crate::node::API_MESSAGE_BYTES_MAX),
        (ARBITER_SERVICE, "PolicyApply") => Some(crate::node::API_MESSAGE_BYTES_MAX),
        (RAFT_SERVICE | ARBITER_SERVICE | FENCING_SERVICE, _) => Some(SMALL_MESSAGE_BYTES_MAX),
        _ => None,
    }
}

/// Middleware: bounds the request body of a gRPC call to its RPC's
/// [`message_bytes_max`]; the body is cut off with `OUT_OF_RANGE` as soon as it passes.
pub async fn limit_messages(req: Request, next: Next) -> Response {
    let Some(max) = message_bytes_max(req.uri().path()) else {
        return next.run(req).await;
    };
    let rpc = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let req = req.map(|body| {
        let mut left = max + GRPC_FRAME_HEADER_BYTES;
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(axum::BoxError::from)?;
            if chunk.len() > left {
                return Err(axum::BoxError::from(tonic::Status::out_of_range(format!(
                    "{rpc}: the request message is larger than the {max} bytes this RPC takes"
                ))));
            }
            left -= chunk.len();
            Ok(chunk)
        }))
    });
    next.run(req).await
}
