//! openraft's network over tonic gRPC with mutual TLS. One lazily connected channel per
//! peer, reused for every RPC; every RPC has a deadline; snapshots stream in chunks.
//! Messages are openraft's own types, serialized with serde as opaque payloads.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::types::{TypeConfig, WitnessNode};
use crate::proto::raft_client::RaftClient;
use crate::proto::{RaftMessage, SnapshotChunk};
use crate::tls::LiveTls;

type C = TypeConfig;

/// Snapshot chunk size: small enough to interleave with heartbeats on a slow WAN link.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// Largest Raft message accepted or sent; bounds memory per RPC.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest snapshot accepted: the state's worst case fits with room for the membership
/// and the envelope.
pub const SNAPSHOT_BYTES_MAX: usize = 4 * RAFT_MESSAGE_BYTES_MAX;
/// Entries per AppendEntries: a batch of the largest proposals fits one message.
pub const APPEND_ENTRIES_MAX: u64 = 16;
/// Per-entry envelope (log id, payload tag) and per-request fields, generously.
const ENTRY_ENVELOPE_BYTES: usize = 4 * 1024;

const _: () = assert!(
    crate::state::STATE_BYTES_MAX + 4 * 1024 * 1024 <= SNAPSHOT_BYTES_MAX,
    "the state's worst case must fit a snapshot"
);
const _: () = assert!(
    APPEND_ENTRIES_MAX as usize * (crate::state::PROPOSAL_BYTES_MAX + ENTRY_ENVELOPE_BYTES)
        + ENTRY_ENVELOPE_BYTES
        <= RAFT_MESSAGE_BYTES_MAX,
    "a batch of the largest proposals must fit one Raft message"
);

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Header of a streamed snapshot (first chunk).
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct SnapshotHeader {
    pub vote: openraft::alias::VoteOf<C>,
    pub meta: openraft::alias::SnapshotMetaOf<C>,
}

/// Builds channels to peers. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    tls: ClientTls,
    rpc_timeout: Duration,
    /// Links cut on purpose (tests, drills); empty in normal operation.
    faults: LinkFaults,
}

/// Outgoing Raft links of one witness that are cut on purpose: an RPC to a cut address
/// fails as unreachable without leaving the process. The seam for partition tests and
/// drills; a new `Network` has none cut.
#[derive(Clone, Debug, Default)]
pub struct LinkFaults(Arc<RwLock<BTreeSet<String>>>);

impl LinkFaults {
    /// Cuts the link to the witness at `addr`.
    pub fn cut(&self, addr: &str) {
        self.0
            .write()
            .expect("link faults lock")
            .insert(addr.to_string());
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.0.write().expect("link faults lock").clear();
    }

    /// Whether the link to `addr` is cut.
    pub fn is_cut(&self, addr: &str) -> bool {
        self.0.read().expect("link faults lock").contains(addr)
    }
}

/// The client side of a network's TLS: one configuration for its lifetime, or the current
/// material of a [`LiveTls`].
#[derive(Clone)]
enum ClientTls {
    Fixed(ClientTlsConfig),
    Live(Arc<LiveTls>),
}

impl Network {
    /// A network presenting and trusting `tls` for its lifetime.
    pub fn new(tls: ClientTlsConfig, rpc_timeout: Duration) -> Self {
        Self::with_tls(ClientTls::Fixed(tls), rpc_timeout)
    }

    /// A network presenting and trusting what `tls` holds: channels built after a reload use
    /// the new material, and each peer's connection is rebuilt at its next RPC.
    pub fn live(tls: Arc<LiveTls>, rpc_timeout: Duration) -> Self {
        Self::with_tls(ClientTls::Live(tls), rpc_timeout)
    }

    fn with_tls(tls: ClientTls, rpc_timeout: Duration) -> Self {
        Self {
            tls,
            rpc_timeout,
            faults: LinkFaults::default(),
        }
    }

    /// The TLS generation channels are built with now (always 0 for fixed material).
    fn generation(&self) -> u64 {
        match &self.tls {
            ClientTls::Fixed(_) => 0,
            ClientTls::Live(tls) => tls.generation(),
        }
    }

    /// The handle that cuts and heals this witness's outgoing links.
    pub fn faults(&self) -> LinkFaults {
        self.faults.clone()
    }

    /// A lazily connected channel to `addr` (reconnects by itself after failures).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(match &self.tls {
                ClientTls::Fixed(tls) => tls.clone(),
                ClientTls::Live(tls) => tls.current().client_config(None),
            })?
            .connect_timeout(self.rpc_timeout)
            .timeout(self.rpc_timeout)
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

impl RaftNetworkFactory<C> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &WitnessNode) -> Connection {
        let built = Mutex::new(self.raft_client(&node.addr));
        Connection {
            target,
            addr: node.addr.clone(),
            network: self.clone(),
            built,
        }
    }
}

impl Network {
    /// A Raft client for `addr` and the TLS generation it was built with, or why it could
    /// not be built (bad address).
    fn raft_client(&self, addr: &str) -> (u64, Result<RaftClient<Channel>, String>) {
        let generation = self.generation();
        let client = self.channel(addr).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        });
        (generation, client.map_err(|e| e.to_string()))
    }
}

/// The connection to one peer, owned by openraft's replication task for that peer.
pub struct Connection {
    target: u64,
    addr: String,
    network: Network,
    /// The client and the TLS generation it was built with; rebuilt when the network's
    /// material was reloaded since.
    built: Mutex<(u64, Result<RaftClient<Channel>, String>)>,
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<C>> {
        if self.network.faults.is_cut(&self.addr) {
            return Err(Unreachable::new(&AnyError::error(format!(
                "peer {} at {}: link cut",
                self.target, self.addr
            ))));
        }
        let mut built = self.built.lock().expect("connection lock");
        if built.0 != self.network.generation() {
            *built = self.network.raft_client(&self.addr);
        }
        built.1.clone().map_err(|e| {
            Unreachable::new(&AnyError::error(format!(
                "peer {} at {}: {e}",
                self.target, self.addr
            )))
        })
    }

    fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(option.soft_ttl());
        req
    }

    fn status_error(&self, status: tonic::Status) -> RPCError<C> {
        let err = AnyError::error(format!("peer {} at {}: {status}", self.target, self.addr));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&err))
            }
            _ => RPCError::Network(NetworkError::new(&err)),
        }
    }

    fn decode_reply<T: DeserializeOwned>(&self, reply: RaftMessage) -> Result<T, RPCError<C>> {
        decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

/// The request-reply Raft RPCs, all carrying a serialized openraft message.
#[derive(Clone, Copy)]
enum Unary {
    AppendEntries,
    Vote,
    PreVote,
}

impl Connection {
    /// Sends one request-reply Raft RPC with the option's deadline and decodes the reply.
    async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Unary,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let req = Self::request(encode_rpc(rpc)?, option);
        let mut client = self.client()?;
        let reply = match method {
            Unary::AppendEntries => client.append_entries(req).await,
            Unary::Vote => client.vote(req).await,
            Unary::PreVote => client.pre_vote(req).await,
        }
        .map_err(|s| self.status_error(s))?;
        self.decode_reply(reply.into_inner())
    }
}

fn encode_rpc<T: Serialize>(value: &T) -> Result<RaftMessage, RPCError<C>> {
    encode(value)
        .map(|payload| RaftMessage { payload })
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetworkV2<C> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.unary(Unary::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.unary(Unary::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.unary(Unary::PreVote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<C>,
        snapshot: openraft::alias::SnapshotOf<C, Vec<u8>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let chunks = snapshot_chunks(header, &snapshot.snapshot);
        let mut req = tonic::Request::new(futures::stream::iter(chunks));
        req.set_timeout(option.hard_ttl());
        let mut client = self.client()?;
        let send = client.install_snapshot(req);
        tokio::pin!(send);
        let cancel = cancel;
        tokio::pin!(cancel);
        let reply = tokio::select! {
            r = &mut send => r.map_err(|s| match self.status_error(s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?,
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
        };
        decode(&reply.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// The chunks a snapshot is streamed in: `header` (an encoded [`SnapshotHeader`]) in the
/// first, `data` cut into [`SNAPSHOT_CHUNK_BYTES`] pieces; at least one chunk.
fn snapshot_chunks(header: Vec<u8>, data: &[u8]) -> Vec<SnapshotChunk> {
    let mut chunks: Vec<SnapshotChunk> = data
        .chunks(SNAPSHOT_CHUNK_BYTES)
        .map(|c| SnapshotChunk {
            header: Vec::new(),
            data: c.to_vec(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(SnapshotChunk::default());
    }
    chunks[0].header = header;
    chunks
}

/// Collects a streamed snapshot on the receiving side: header from the first chunk, data
/// appended, bounded by [`SNAPSHOT_BYTES_MAX`].
pub(crate) async fn collect_snapshot<S>(
    mut stream: S,
) -> Result<(SnapshotHeader, Vec<u8>), tonic::Status>
where
    S: futures::Stream<Item = Result<SnapshotChunk, tonic::Status>> + Unpin,
{
    let mut header = None;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if header.is_none() {
            header =
                Some(decode::<SnapshotHeader>(&chunk.header).map_err(|e| {
                    tonic::Status::invalid_argument(format!("snapshot header: {e}"))
                })?);
        }
        if data.len() + chunk.data.len() > SNAPSHOT_BYTES_MAX {
            return Err(tonic::Status::resource_exhausted(format!(
                "InstallSnapshot: snapshot larger than the limit of {SNAPSHOT_BYTES_MAX} bytes"
            )));
        }
        data.extend_from_slice(&chunk.data);
    }
    let header = header.ok_or_else(|| tonic::Status::invalid_argument("empty snapshot stream"))?;
    Ok((header, data))
}

#[cfg(test)]
pub(crate) mod limit_tests {
    use super::*;
    use crate::state::{Command, Proposal, PROPOSAL_BYTES_MAX};

    /// The chunk stream of a snapshot of `bytes` bytes, as a sender streams it.
    pub(crate) fn snapshot_of(
        bytes: usize,
    ) -> impl futures::Stream<Item = Result<SnapshotChunk, tonic::Status>> + Unpin {
        let header = encode(&SnapshotHeader {
            vote: openraft::Vote::new(1, 1),
            meta: Default::default(),
        })
        .unwrap();
        futures::stream::iter(
            snapshot_chunks(header, &vec![7u8; bytes])
                .into_iter()
                .map(Ok),
        )
    }

    /// Goal: a snapshot of exactly [`SNAPSHOT_BYTES_MAX`] is received whole, and one byte
    /// more is `RESOURCE_EXHAUSTED` naming the limit. Method: the sender's own chunking,
    /// collected as the receiving service collects it.
    #[tokio::test]
    async fn a_snapshot_at_the_limit_is_received_and_one_byte_past_it_is_refused() {
        let (_, data) = collect_snapshot(snapshot_of(SNAPSHOT_BYTES_MAX))
            .await
            .expect("a snapshot at the limit");
        assert_eq!(data.len(), SNAPSHOT_BYTES_MAX);
        assert!(data.iter().all(|&b| b == 7), "received as sent");
        let past = collect_snapshot(snapshot_of(SNAPSHOT_BYTES_MAX + 1))
            .await
            .map(|(_, data)| data.len())
            .expect_err("one byte past the limit");
        assert_eq!(past.code(), tonic::Code::ResourceExhausted);
        assert!(past.message().contains("larger than the limit"), "{past}");
    }

    /// Goal: a full AppendEntries batch of the largest proposal `propose` accepts fits one
    /// Raft message, encoded exactly as the network encodes it. Method: a detail string
    /// of quotes (two bytes each in JSON) sized so the proposal is at the limit.
    #[test]
    fn a_batch_of_the_largest_proposals_fits_one_raft_message() {
        let mut proposal = Proposal {
            actor: "a".repeat(crate::state::limits::ACTOR_BYTES_MAX),
            at_ms: u64::MAX,
            request_id: "r".repeat(crate::state::REQUEST_ID_BYTES_MAX),
            command: Command::CompleteStep {
                operation: u64::MAX,
                step: crate::state::Step::Validate,
                outcome: crate::state::StepOutcome::Completed,
                detail: String::new(),
            },
        };
        let base = encode(&proposal).unwrap().len();
        if let Command::CompleteStep { detail, .. } = &mut proposal.command {
            *detail = "\"".repeat((PROPOSAL_BYTES_MAX - base) / 2);
        }
        let size = encode(&proposal).unwrap().len();
        assert!(
            size <= PROPOSAL_BYTES_MAX && size + 2 > PROPOSAL_BYTES_MAX,
            "{size}"
        );
        use openraft::entry::RaftEntry;
        use openraft::vote::RaftLeaderIdExt;
        let log_id = |index| {
            let leader =
                openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new_committed(u64::MAX, 1);
            openraft::alias::LogIdOf::<C>::new(leader, index)
        };
        let entries = (0..APPEND_ENTRIES_MAX)
            .map(|i| {
                openraft::alias::EntryOf::<C>::new_normal(log_id(u64::MAX - i), proposal.clone())
            })
            .collect();
        let rpc = AppendEntriesRequest::<C> {
            vote: openraft::alias::VoteOf::<C>::new_committed(u64::MAX, u64::MAX),
            prev_log_id: Some(log_id(u64::MAX)),
            entries,
            leader_commit: Some(log_id(u64::MAX)),
        };
        let bytes = encode(&rpc).unwrap().len();
        println!(
            "AppendEntries of {APPEND_ENTRIES_MAX} proposals of {size} bytes: {bytes} bytes (limit {RAFT_MESSAGE_BYTES_MAX})"
        );
        assert!(bytes <= RAFT_MESSAGE_BYTES_MAX, "{bytes}");
    }
}
