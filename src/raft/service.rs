//! The receiving side of the witness-to-witness Raft RPCs: decode, hand to openraft, encode.
//!
//! Every RPC here is a witness's: it is answered only for a caller whose certificate names a
//! witness id ([`crate::tls::WITNESS_URI_PREFIX`]), and only for what that witness may say of
//! itself: an AppendEntries or snapshot as leader, a vote as candidate, a `Hello` or a probe
//! report, each under its own id. Anything else is `PERMISSION_DENIED` before openraft or
//! the leader sees it. This module must never hand openraft a message whose sender is not the
//! witness it claims to be.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::vote::RaftLeaderId;
use openraft::Snapshot;
use tonic::{Request, Response, Status, Streaming};

use super::consensus::Consensus;
use super::network::{collect_snapshot, decode, encode, SnapshotHeader};
use super::types::TypeConfig;
use crate::proto::raft_server::Raft as RaftRpc;
use crate::proto::{HelloReply, HelloRequest, ProbeAck, ProbeReport, RaftMessage, SnapshotChunk};

/// Where the leader's side of `ReportProbes` goes. Injected, so this module stays openraft
/// and gRPC glue and imports nothing above it.
pub trait ProbeReports: Send + Sync + 'static {
    /// Records a witness's report; `Err` with the reason when it is refused whole.
    fn accept(&self, report: &ProbeReport) -> Result<(), &'static str>;
}

/// Most snapshot streams a witness receives at once. A leader sends a follower one
/// snapshot at a time; two leave room for a new leader's stream while a deposed one's is
/// still draining. Each stream may buffer up to [`super::network::SNAPSHOT_BYTES_MAX`]
/// before it is installed, so this bounds that memory (a compromised witness opening
/// streams cannot exhaust it).
pub const SNAPSHOT_STREAMS_MAX: usize = 2;

/// Longest a snapshot stream may take to arrive whole: the largest snapshot at about
/// 1 MB/s, a slow WAN link. Past it the stream is dropped and its place freed, so a sender
/// that stalls cannot hold one of the [`SNAPSHOT_STREAMS_MAX`] places.
pub const SNAPSHOT_RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The places for snapshot streams being received, [`SNAPSHOT_STREAMS_MAX`] of them.
pub struct SnapshotStreams(tokio::sync::Semaphore);

impl Default for SnapshotStreams {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(SNAPSHOT_STREAMS_MAX))
    }
}

impl SnapshotStreams {
    /// A place for one stream, held until the permit is dropped; `RESOURCE_EXHAUSTED` when
    /// every place is taken (the leader retries the snapshot later).
    pub fn enter(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.0.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "InstallSnapshot: {SNAPSHOT_STREAMS_MAX} snapshot streams are being received \
                 already, the most this witness takes at once; retry when one has finished"
            ))
        })
    }

    /// One whole snapshot from `stream`, received in a place of its own and within
    /// `within` ([`SNAPSHOT_RECEIVE_TIMEOUT`] in service): `RESOURCE_EXHAUSTED` when every
    /// place is taken or the snapshot is larger than the limit, `DEADLINE_EXCEEDED` when it
    /// did not arrive whole in time. The place is freed when this returns, whatever the
    /// outcome.
    pub(crate) async fn receive<S>(
        &self,
        stream: S,
        within: std::time::Duration,
    ) -> Result<(SnapshotHeader, Vec<u8>), Status>
    where
        S: futures::Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
    {
        let _place = self.enter()?;
        tokio::time::timeout(within, collect_snapshot(stream))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "InstallSnapshot: the snapshot did not arrive whole within {} s",
                    within.as_secs()
                ))
            })?
    }
}

/// gRPC service for the Raft protocol between witnesses.
pub struct RaftService {
    pub(crate) consensus: Arc<Consensus>,
    /// Where probe reports from witnesses go while this witness is the leader.
    pub(crate) reports: Arc<dyn ProbeReports>,
    /// Places for the snapshot streams being received.
    pub(crate) snapshots: SnapshotStreams,
    /// Where refusals are counted.
    pub(crate) denials: DenialReport,
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

/// Where this service's refusals go: the witness counts them in its metrics and logs them,
/// bounded, as it does the access check's (a flood of refusals grows neither the log nor
/// the replicated state).
pub type DenialReport = Arc<dyn Fn(&crate::access::Denied) + Send + Sync>;

/// A caller whose certificate names a witness.
struct WitnessCaller {
    /// The witness id its certificate names.
    id: u64,
    /// Its certificate's common name.
    identity: String,
}

impl RaftService {
    /// The caller, when its certificate names a witness id; any other is refused.
    fn witness_caller<T>(&self, req: &Request<T>, rpc: &str) -> Result<WitnessCaller, Status> {
        let caller = crate::access::Caller::of(req);
        let Some(id) = caller.witness else {
            (self.denials)(&crate::access::Denied {
                method: rpc.to_string(),
                identity: caller.identity.clone(),
                needed: "a witness certificate".into(),
                has: "a certificate naming no witness id".into(),
            });
            return Err(Status::permission_denied(format!(
                "{rpc} is for witnesses only: the caller's certificate ({}) names no witness \
                 id (a URI SAN {}<id>)",
                caller.identity,
                crate::tls::WITNESS_URI_PREFIX
            )));
        };
        Ok(WitnessCaller {
            id,
            identity: caller.identity,
        })
    }

    /// Refuses a witness speaking for another: `claimed` is the id the message names as
    /// its sender (leader, candidate, reporter).
    fn as_itself(
        &self,
        caller: &WitnessCaller,
        claimed: u64,
        rpc: &str,
        role: &str,
    ) -> Result<(), Status> {
        if caller.id == claimed {
            return Ok(());
        }
        (self.denials)(&crate::access::Denied {
            method: rpc.to_string(),
            identity: caller.identity.clone(),
            needed: format!("the certificate of witness {claimed}"),
            has: format!("the certificate of witness {}", caller.id),
        });
        Err(Status::permission_denied(format!(
            "{rpc}: witness {}'s certificate may not speak as {role} {claimed}",
            caller.id
        )))
    }
}

/// The node id a vote names (the leader or candidate it is for).
fn voter_of(vote: &openraft::alias::VoteOf<TypeConfig>) -> u64 {
    *vote.leader_id().node_id()
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let caller = self.witness_caller(&req, "AppendEntries")?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        self.as_itself(&caller, voter_of(&rpc.vote), "AppendEntries", "leader")?;
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
        let caller = self.witness_caller(&req, "Vote")?;
        let rpc: VoteRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        self.as_itself(&caller, voter_of(&rpc.vote), "Vote", "candidate")?;
        let resp = self.consensus.raft.vote(rpc).await.map_err(raft_error)?;
        reply(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = self.witness_caller(&req, "PreVote")?;
        let rpc: VoteRequest<TypeConfig> =
            decode(&req.into_inner().payload).map_err(bad_request)?;
        self.as_itself(&caller, voter_of(&rpc.vote), "PreVote", "candidate")?;
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
        let caller = self.witness_caller(&req, "InstallSnapshot")?;
        let (header, data) = self
            .snapshots
            .receive(req.into_inner(), SNAPSHOT_RECEIVE_TIMEOUT)
            .await?;
        self.as_itself(&caller, voter_of(&header.vote), "InstallSnapshot", "leader")?;
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
        let caller = self.witness_caller(&req, "ReportProbes")?;
        let report = req.into_inner();
        self.as_itself(&caller, report.witness, "ReportProbes", "witness")?;
        if !self.consensus.is_leader() {
            return Ok(Response::new(ProbeAck { accepted: false }));
        }
        self.reports
            .accept(&report)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(ProbeAck { accepted: true }))
    }

    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let caller = self.witness_caller(&req, "Hello")?;
        let node_id = req.into_inner().node_id;
        self.as_itself(&caller, node_id, "Hello", "witness")?;
        Ok(Response::new(self.consensus.hello(node_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a witness receives at most [`SNAPSHOT_STREAMS_MAX`] snapshot streams at once:
    /// at the limit every stream has a place, one past it is `RESOURCE_EXHAUSTED` naming the
    /// limit, and a finished stream frees its place.
    #[test]
    fn snapshot_streams_are_bounded_and_places_are_freed() {
        let streams = SnapshotStreams::default();
        let mut held: Vec<_> = (0..SNAPSHOT_STREAMS_MAX)
            .map(|i| {
                streams
                    .enter()
                    .unwrap_or_else(|e| panic!("stream {i} at the limit refused: {e}"))
            })
            .collect();
        let past = streams.enter().expect_err("one stream past the limit");
        assert_eq!(past.code(), tonic::Code::ResourceExhausted);
        assert!(
            past.message()
                .contains(&format!("{SNAPSHOT_STREAMS_MAX} snapshot streams")),
            "{}",
            past.message()
        );
        held.pop();
        held.push(streams.enter().expect("a finished stream frees its place"));
        assert!(streams.enter().is_err(), "the freed place is taken again");
    }

    /// `stream`, each item delayed by `gap` of (paused) time.
    fn slowly<S: futures::Stream + Unpin>(
        stream: S,
        gap: std::time::Duration,
    ) -> impl futures::Stream<Item = S::Item> + Unpin {
        use futures::StreamExt;
        Box::pin(stream.then(move |item| async move {
            tokio::time::sleep(gap).await;
            item
        }))
    }

    /// Goal: a snapshot arriving whole within [`SNAPSHOT_RECEIVE_TIMEOUT`] is received; one
    /// whose sender stalls is `DEADLINE_EXCEEDED` once the time is up, and its place is
    /// freed, so stalled senders cannot keep a leader's snapshot out. Method: paused time; a
    /// snapshot of 4 chunks, one every quarter of the limit less a second, is received;
    /// streams holding every place (a third is refused meanwhile), each stalling after its
    /// first chunk, both end `DEADLINE_EXCEEDED` after the limit and not before, and every
    /// place is free again.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_snapshot_stream_ends_at_the_receive_time_and_frees_its_place() {
        use super::super::network::limit_tests::snapshot_of;
        use futures::StreamExt;
        let streams = SnapshotStreams::default();
        let bytes = 3 * super::super::network::SNAPSHOT_CHUNK_BYTES + 1;
        let gap = SNAPSHOT_RECEIVE_TIMEOUT / 4 - std::time::Duration::from_secs(1);
        let (_, data) = streams
            .receive(slowly(snapshot_of(bytes), gap), SNAPSHOT_RECEIVE_TIMEOUT)
            .await
            .expect("a snapshot arriving just within the time");
        assert_eq!(data.len(), bytes);

        let started = tokio::time::Instant::now();
        let stalled = || Box::pin(snapshot_of(bytes).take(1).chain(futures::stream::pending()));
        let meanwhile = async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            streams.enter().map(drop)
        };
        let (a, b, third) = tokio::join!(
            streams.receive(stalled(), SNAPSHOT_RECEIVE_TIMEOUT),
            streams.receive(stalled(), SNAPSHOT_RECEIVE_TIMEOUT),
            meanwhile,
        );
        assert!(third.is_err(), "the stalled streams hold every place");
        assert_eq!(started.elapsed(), SNAPSHOT_RECEIVE_TIMEOUT);
        for ended in [a, b] {
            let e = ended
                .map(|(_, data)| data.len())
                .expect_err("a stalled stream");
            assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
            assert!(e.message().contains("120 s"), "{e}");
        }
        assert_eq!(
            streams.0.available_permits(),
            SNAPSHOT_STREAMS_MAX,
            "every place is freed"
        );
    }
}
