//! The receiving side of the witness-to-witness Raft RPCs: decode, hand to openraft, encode.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use tonic::{Request, Response, Status, Streaming};

use super::consensus::Consensus;
use super::network::{collect_snapshot, decode, encode};
use super::types::TypeConfig;
use crate::proto::raft_server::Raft as RaftRpc;
use crate::proto::{HelloReply, HelloRequest, ProbeAck, ProbeReport, RaftMessage, SnapshotChunk};

/// Where the leader's side of `ReportProbes` goes. Injected, so this module stays openraft
/// and gRPC glue and imports nothing above it.
pub trait ProbeReports: Send + Sync + 'static {
    /// Records a witness's report; `Err` with the reason when it is refused whole.
    fn accept(&self, report: &ProbeReport) -> Result<(), &'static str>;
}

/// gRPC service for the Raft protocol between witnesses.
pub struct RaftService {
    pub(crate) consensus: Arc<Consensus>,
    /// Where probe reports from witnesses go while this witness is the leader.
    pub(crate) reports: Arc<dyn ProbeReports>,
}

fn bad_request(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("cannot decode raft message: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    encode(value)
        .map(|payload| Response::new(RaftMessage { payload }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

fn raft_error(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        let resp = self
            .consensus
            .raft
            .append_entries(rpc)
            .await
            .map_err(raft_error)?;
        // Anything but HigherVote means the sender's leadership was accepted: contact with
        // a leader (a log conflict is still contact; the leader will repair the log).
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.consensus.note_leader_append();
        }
        reply(&resp)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        let resp = self.consensus.raft.vote(rpc).await.map_err(raft_error)?;
        reply(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        let resp = self
            .consensus
            .raft
            .pre_vote(rpc)
            .await
            .map_err(raft_error)?;
        reply(&resp)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let (header, data) = collect_snapshot(req.into_inner()).await?;
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: data,
        };
        let resp = self
            .consensus
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await
            .map_err(raft_error)?;
        reply(&resp)
    }

    async fn report_probes(&self, req: Request<ProbeReport>) -> Result<Response<ProbeAck>, Status> {
        let report = req.into_inner();
        if !self.consensus.is_leader() {
            return Ok(Response::new(ProbeAck { accepted: false }));
        }
        self.reports
            .accept(&report)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(ProbeAck { accepted: true }))
    }

    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(
            self.consensus.hello(req.into_inner().node_id),
        ))
    }
}
