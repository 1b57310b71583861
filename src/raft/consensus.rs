//! [`Consensus`]: the node's handle on Raft, in arbiter's own words. Proposes commands,
//! serves linearizable reads from the in-memory applied state, reports the cluster view,
//! initialises the cluster and changes membership. Callers outside `raft` never see an
//! openraft type: errors come back as [`ConsensusError`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::Instant as _;
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use tokio::sync::{mpsc, oneshot, watch};

use super::network::Network;
use super::store::{self, Applied, LogStore, StateMachineStore};
use super::types::{TypeConfig, WitnessNode};
use crate::config::{NodeConfig, Peer};
use crate::proto::HelloReply;
use crate::state::{ClusterState, Proposal, Response, PROPOSAL_BYTES_MAX};
use crate::wallclock::{SystemClock, WallClock};

/// The Raft instance type of a witness.
pub(crate) type ArbiterRaft =
    openraft::Raft<TypeConfig, StateMachineStore<TypeConfig, ClusterState>>;

/// Waiting for a store still locked by a stopping instance: 50 x 100 ms.
const STORE_LOCK_WAIT_ATTEMPTS: u32 = 50;
const STORE_LOCK_WAIT_PAUSE: Duration = Duration::from_millis(100);

/// How long `members add` waits for a new witness to catch up as a learner before giving up.
const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a consensus call did not succeed. `NotLeader` and `Unavailable` are definite: the
/// command was not applied. `Indeterminate` means it may or may not be applied: retry with
/// the same request id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    #[error("this witness is not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("no quorum reachable: {0}")]
    Unavailable(String),
    #[error("outcome unknown (leadership changed while committing): {0}")]
    Indeterminate(String),
    #[error("the cluster is already initialised{}", .cluster_id.as_ref().map(|c| format!(" (cluster id {c})")).unwrap_or_default())]
    AlreadyInitialized { cluster_id: Option<String> },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("witness is shutting down")]
    ShuttingDown,
    /// Definite: nothing was proposed.
    #[error("the command is {bytes} bytes encoded, more than {max}")]
    TooLarge { bytes: usize, max: usize },
}

fn leader_hint(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; the leader is witness {id} at {addr}"),
        (Some(id), None) => format!("; the leader is witness {id}"),
        _ => "; no leader is known yet".to_string(),
    }
}

/// A witness as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub site: String,
    pub voter: bool,
    pub leader: bool,
    /// Milliseconds since the leader last heard from it (known on the leader only).
    pub last_contact_ms: Option<u64>,
    /// Highest log index known replicated to it (known on the leader only).
    pub matched_index: Option<u64>,
}

/// The cluster as seen from this node.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied_index: u64,
    /// Highest log index removed from this witness's log after a snapshot.
    pub purged_index: Option<u64>,
    pub members: Vec<MemberView>,
}

/// What Raft says this witness is doing, for metrics and readiness. Role, term, leader and
/// indexes come from one snapshot of openraft's metrics, so they agree with each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub term: u64,
    /// The leader this witness knows of, if any.
    pub leader: Option<u64>,
    /// Last log index appended here.
    pub last_log_index: u64,
    /// Last log index this witness knows is committed (and may apply).
    pub committed_index: u64,
    /// Last log index a quorum acknowledged, as last reported by the leader: ahead of
    /// `committed_index` while this witness is missing entries.
    pub cluster_committed_index: u64,
    pub applied_index: u64,
    /// See [`Consensus::leader_contact_age`].
    pub leader_contact_age: Option<Duration>,
}

/// The node's handle on Raft.
pub struct Consensus {
    pub(crate) raft: ArbiterRaft,
    id: u64,
    /// The applied state shared with the state-machine store; the hot read path.
    applied: Arc<RwLock<Applied<TypeConfig, ClusterState>>>,
    /// Last applied log index, published after every apply batch.
    applied_index: watch::Receiver<u64>,
    /// For the identity record; dropped at shutdown so the store's file is released even
    /// while connection tasks still hold this handle.
    log_store: std::sync::Mutex<Option<LogStore<TypeConfig>>>,
    /// The wall clock this witness stamps its proposals with.
    clock: Arc<dyn WallClock>,
    /// The store had no log, no purged prefix and no vote when this witness started.
    pristine: bool,
    /// How long [`Consensus::confirm_leadership`] waits for a quorum: one maximal election
    /// timeout, after which the others may have elected a new leader anyway.
    confirm_timeout: std::time::Duration,
    /// Queue of linearizable reads waiting for the next leadership confirmation.
    reads: mpsc::Sender<oneshot::Sender<Result<(), ConsensusError>>>,
    /// When this witness last accepted an AppendEntries (heartbeat or entries) from a leader
    /// of the current or a newer term; openraft's metrics say this on the leader only.
    /// Monotonic (`tokio::time::Instant`) so paused-time tests control it.
    last_leader_append: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Reads waiting for one leadership confirmation; a full queue makes callers wait, which
/// bounds memory under overload.
const READ_QUEUE: usize = 65_536;
/// Reads answered by one confirmation at most (the rest wait for the next round).
const READ_BATCH_MAX: usize = 8_192;

/// Confirms leadership once for every read that arrived before the confirmation started:
/// the read's linearization point is after its arrival, as it must be. Always ReadIndex (a
/// quorum acknowledgement newer than the confirmation's start), never openraft's leader
/// lease: that lease is the *local* `election_timeout_max`, node files may differ, and a
/// restarted voter has no lease of its own, so a leader cut off from the others could keep
/// granting renewals for up to its lease after the cut. Batching keeps the cost at one
/// heartbeat round per batch, not per read.
async fn read_batcher(
    raft: ArbiterRaft,
    mut rx: mpsc::Receiver<oneshot::Sender<Result<(), ConsensusError>>>,
) {
    let mut batch = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < READ_BATCH_MAX {
            match rx.try_recv() {
                Ok(waiter) => batch.push(waiter),
                Err(_) => break,
            }
        }
        let result = confirm_leadership(&raft).await;
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

async fn confirm_leadership(raft: &ArbiterRaft) -> Result<(), ConsensusError> {
    match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
        Ok(_) => Ok(()),
        Err(e) => match e.forward_to_leader() {
            Some(f) => Err(ConsensusError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
            }),
            None => Err(ConsensusError::Unavailable(e.to_string())),
        },
    }
}

impl Consensus {
    /// Opens storage in the node's data dir and starts Raft over the gRPC network, with the
    /// system's wall clock. Does not initialise a cluster.
    pub async fn start(
        config: &NodeConfig,
        network: Network,
    ) -> Result<Arc<Consensus>, ConsensusError> {
        let stores = Self::open_stores(config).await?;
        Self::start_with(config, network, stores, Arc::new(SystemClock)).await
    }

    /// Opens the stores in the node's data dir (the redb file [`store::DB_FILE_NAME`]).
    pub async fn open_stores(config: &NodeConfig) -> Result<super::Stores, ConsensusError> {
        // A witness restarted in the same process (tests, drills) may find its previous
        // instance still releasing the store's lock: wait a bounded moment for it.
        let mut attempts = 0;
        let stores = loop {
            match store::open::<TypeConfig, ClusterState>(&config.data_dir) {
                Ok(stores) => break stores,
                Err(store::StoreError::Open {
                    source: redb::DatabaseError::DatabaseAlreadyOpen,
                    ..
                }) if attempts < STORE_LOCK_WAIT_ATTEMPTS => {
                    attempts += 1;
                    tokio::time::sleep(STORE_LOCK_WAIT_PAUSE).await;
                }
                Err(e) => return Err(ConsensusError::Storage(e.to_string())),
            }
        };
        let (log, sm) = stores;
        Ok(super::Stores(log, sm))
    }

    /// Starts Raft on `stores` (see [`store::open`] and [`store::open_on`], which takes any
    /// redb storage backend), talking to the other witnesses through `network`, with `clock`
    /// as this witness's wall clock for proposals' timestamps. The seams a simulation
    /// swaps; [`Consensus::start`] is this with the real ones.
    pub async fn start_with<N>(
        config: &NodeConfig,
        network: N,
        stores: super::Stores,
        clock: Arc<dyn WallClock>,
    ) -> Result<Arc<Consensus>, ConsensusError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
    {
        let super::Stores(mut log_store, sm) = stores;
        // Read from the store itself, before Raft starts: Raft's metrics are not loaded yet
        // when `start` returns, and a witness with any log or vote is not pristine.
        let pristine = {
            use openraft::storage::{RaftLogReader, RaftLogStorage};
            let state = log_store
                .get_log_state()
                .await
                .map_err(|e| ConsensusError::Storage(e.to_string()))?;
            let vote = log_store
                .get_log_reader()
                .await
                .read_vote()
                .await
                .map_err(|e| ConsensusError::Storage(e.to_string()))?;
            state.last_log_id.is_none() && state.last_purged_log_id.is_none() && vote.is_none()
        };
        let applied = sm.applied();
        let applied_index = sm.applied_index();
        let t = config.timing;
        let raft_config = openraft::Config {
            cluster_name: "arbiter".to_string(),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_timeout_min.as_millis() as u64,
            election_timeout_max: t.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                config.storage.snapshot_every_entries,
            ),
            max_in_snapshot_log_to_keep: config.storage.log_keep_after_snapshot,
            // Snapshots stream over WAN links: allow several election timeouts.
            install_snapshot_timeout: 10 * t.election_timeout_max.as_millis() as u64,
            enable_pre_vote: Some(true),
            max_payload_entries: super::network::APPEND_ENTRIES_MAX,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Storage(format!("raft config: {e}")))?;
        let raft = openraft::Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            log_store.clone(),
            sm,
        )
        .await
        .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let (reads, rx) = mpsc::channel(READ_QUEUE);
        tokio::spawn(read_batcher(raft.clone(), rx));
        Ok(Arc::new(Consensus {
            raft,
            id: config.id,
            applied,
            applied_index,
            log_store: std::sync::Mutex::new(Some(log_store)),
            clock,
            reads,
            pristine,
            last_leader_append: std::sync::Mutex::new(None),
            confirm_timeout: t.election_timeout_max,
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// This witness's wall clock, in milliseconds since the Unix epoch: for proposals'
    /// timestamps and reports, never for safety.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Proposes a command and waits until it is committed and applied here. A proposal
    /// larger than [`PROPOSAL_BYTES_MAX`] is refused before it reaches the log, so every
    /// AppendEntries batch fits one message.
    pub async fn propose(&self, proposal: Proposal) -> Result<Response, ConsensusError> {
        let bytes = serde_json::to_vec(&proposal).map_or(usize::MAX, |v| v.len());
        if bytes > PROPOSAL_BYTES_MAX {
            return Err(ConsensusError::TooLarge {
                bytes,
                max: PROPOSAL_BYTES_MAX,
            });
        }
        match self.raft.client_write(proposal).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ConsensusError {
        if let Some(f) = e.forward_to_leader() {
            return ConsensusError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
            };
        }
        match e {
            RaftError::Fatal(f) => ConsensusError::Storage(f.to_string()),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ConsensusError::Membership(c.to_string())
            }
            RaftError::APIError(other) => ConsensusError::Indeterminate(other.to_string()),
        }
    }

    /// Confirms leadership with a quorum (ReadIndex) and waits until the local state machine
    /// has applied everything committed before the read: afterwards, the local applied state
    /// is linearizable.
    pub async fn linearizable_read(&self) -> Result<(), ConsensusError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(f) = e.forward_to_leader() {
                    return Err(ConsensusError::NotLeader {
                        leader_id: f.leader_id,
                        leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
                    });
                }
                Err(ConsensusError::Unavailable(e.to_string()))
            }
        }
    }

    /// Confirms that this witness is still the leader with a quorum acknowledgement newer
    /// than this call (ReadIndex), within one election timeout. Called right before every
    /// external action (hook call, DNS update): openraft keeps a leader that lost its
    /// quorum in the `Leader` state, so [`Self::is_leader`] alone is not enough (S3).
    pub async fn confirm_leadership(&self) -> Result<(), ConsensusError> {
        // UNSAFE (feature `unsafe-holes` only): openraft's `Leader` state taken for the truth.
        #[cfg(feature = "unsafe-holes")]
        if crate::holes::open(&crate::holes::NO_LEADER_CONFIRM) {
            return if self.is_leader() {
                Ok(())
            } else {
                Err(ConsensusError::Unavailable("not leader".into()))
            };
        }
        match tokio::time::timeout(self.confirm_timeout, self.linearizable_read()).await {
            Ok(result) => result,
            Err(_) => Err(ConsensusError::Unavailable(format!(
                "leadership not confirmed by a quorum within {} ms",
                self.confirm_timeout.as_millis()
            ))),
        }
    }

    /// A batched linearizable read for the hot path (fence checks, acquires, renewals):
    /// ReadIndex, one confirmation for every read queued meanwhile; afterwards the local
    /// applied state is linearizable.
    pub async fn batched_read(&self) -> Result<(), ConsensusError> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(tx)
            .await
            .map_err(|_| ConsensusError::ShuttingDown)?;
        rx.await.map_err(|_| ConsensusError::ShuttingDown)?
    }

    /// Whether this witness is the leader right now (by its own metrics; may be stale).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// A copy of the applied state (may be stale unless preceded by [`Self::linearizable_read`]).
    pub fn state(&self) -> ClusterState {
        self.applied
            .read()
            .expect("applied state lock poisoned")
            .state
            .clone()
    }

    /// Runs `f` on the applied state without copying it.
    pub fn with_state<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self
            .applied
            .read()
            .expect("applied state lock poisoned")
            .state)
    }

    /// Runs `f` on the applied state and the index of the last log entry reflected in it, read
    /// together under one lock (the applied-index watch may lag the state by one batch).
    pub fn with_state_at<T>(&self, f: impl FnOnce(&ClusterState, u64) -> T) -> T {
        let applied = self.applied.read().expect("applied state lock poisoned");
        f(
            &applied.state,
            applied.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
        )
    }

    /// Last applied log index, updated after every apply.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_index.clone()
    }

    /// The cluster as seen from this witness.
    pub fn view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow_watched().clone();
        let is_leader = m.state == ServerState::Leader;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let last_contact_ms = if !is_leader {
                    None
                } else if *id == self.id {
                    Some(0)
                } else {
                    m.heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .map(|t| t.elapsed().as_millis() as u64)
                };
                let matched_index = if is_leader {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                } else {
                    None
                };
                MemberView {
                    id: *id,
                    addr: node.addr.clone(),
                    site: node.site.clone(),
                    voter: voters.contains(id),
                    leader: m.current_leader == Some(*id),
                    last_contact_ms,
                    matched_index,
                }
            })
            .collect();
        ClusterView {
            id: self.id,
            term: m.current_term,
            leader: m.current_leader,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// How long ago this witness last had contact with a leader: on the leader, the age of
    /// the newest quorum acknowledgement; on a follower, the age of the last AppendEntries
    /// it accepted from a leader. `None`: no leader known, or no contact yet.
    ///
    /// A follower cannot tell whether its leader still holds a quorum: a follower cut off
    /// together with a deposed leader (a minority of 2 in a 5-voter cluster) keeps seeing
    /// contact until that leader steps down. The leader's own answer is quorum-based.
    pub fn leader_contact_age(&self) -> Option<Duration> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state == ServerState::Leader {
            return m.last_quorum_acked.map(|t| t.elapsed());
        }
        m.current_leader?;
        self.last_leader_append
            .lock()
            .expect("leader contact lock")
            .map(|t| t.elapsed())
    }

    /// Role, term, leader and log indexes of this witness right now.
    pub fn raft_status(&self) -> RaftStatus {
        let leader_contact_age = self.leader_contact_age();
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        RaftStatus {
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            cluster_committed_index: m.cluster_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            leader_contact_age,
        }
    }

    /// Calls `observe(leader, term)` now and after every change of Raft's metrics, until Raft
    /// stops. The caller decides what counts as a change of leader.
    pub async fn watch_leader(&self, mut observe: impl FnMut(Option<u64>, u64)) {
        let mut rx = self.raft.metrics();
        loop {
            let (leader, term) = {
                let m = rx.borrow_watched();
                (m.current_leader, m.current_term)
            };
            observe(leader, term);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Records that an AppendEntries from a leader was accepted (see [`Self::leader_contact_age`]).
    pub(crate) fn note_leader_append(&self) {
        *self.last_leader_append.lock().expect("leader contact lock") =
            Some(tokio::time::Instant::now());
    }

    /// Address of the current leader, when known and not this node.
    pub fn leader_addr(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node.addr))
    }

    /// Waits until some leader is known, or the timeout passes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow_watched().current_leader {
                    return l;
                }
                if rx.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Initialises a new cluster with `peers` as voters. Refused when this node, or the
    /// state it has applied, already belongs to a cluster.
    pub async fn initialize(&self, peers: &[Peer]) -> Result<(), ConsensusError> {
        if let Some(cluster_id) = self.with_state(|s| s.cluster_id.clone()) {
            return Err(ConsensusError::AlreadyInitialized {
                cluster_id: Some(cluster_id),
            });
        }
        let members: BTreeMap<u64, WitnessNode> = peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    WitnessNode {
                        addr: p.addr.clone(),
                        site: p.site.clone(),
                    },
                )
            })
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(ConsensusError::AlreadyInitialized {
                    cluster_id: self.with_state(|s| s.cluster_id.clone()),
                })
            }
            Err(e) => Err(ConsensusError::Membership(e.to_string())),
        }
    }

    /// Adds a witness: first as a learner (waits until it has caught up), then as a voter
    /// through joint consensus.
    pub async fn add_member(
        &self,
        id: u64,
        addr: String,
        site: String,
    ) -> Result<(), ConsensusError> {
        let add = self.raft.add_learner(
            id,
            WitnessNode {
                addr: addr.clone(),
                site,
            },
            true,
        );
        match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, add).await {
            Ok(result) => result.map_err(|e| self.write_error(e))?,
            Err(_) => {
                return Err(ConsensusError::Membership(format!(
                    "witness {id} at {addr} did not catch up within {LEARNER_CATCH_UP_TIMEOUT:?}; it stays a learner \
                     (no vote). Check it is running and presents a certificate from the cluster CA, then add it \
                     again, or remove it with `arbiter members remove --id {id}`"
                )))
            }
        };
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Removes a witness from the voters and from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<(), ConsensusError> {
        let is_voter = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        if is_voter {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.write_error(e))?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Records this node's identity in its store once the cluster id is known, and checks it
    /// on later starts (a data dir of another node or cluster is refused).
    pub fn record_identity(&self, cluster_id: &str) -> Result<(), ConsensusError> {
        let store = self
            .log_store
            .lock()
            .expect("log store lock")
            .clone()
            .ok_or(ConsensusError::ShuttingDown)?;
        store
            .ensure_identity(self.id, cluster_id)
            .map(|_| ())
            .map_err(|e| ConsensusError::Storage(e.to_string()))
    }

    /// The identity recorded in this node's store, if any.
    pub fn stored_identity(&self) -> Result<Option<(u64, String)>, ConsensusError> {
        let store = self
            .log_store
            .lock()
            .expect("log store lock")
            .clone()
            .ok_or(ConsensusError::ShuttingDown)?;
        store
            .identity()
            .map_err(|e| ConsensusError::Storage(e.to_string()))
    }

    /// Whether this node has any Raft state at all (vote or log).
    pub fn is_pristine(&self) -> bool {
        self.pristine
    }

    /// Answers a peer asking whether the cluster counts it as a member.
    pub(crate) fn hello(&self, node_id: u64) -> HelloReply {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let is_member = membership.get_node(&node_id).is_some();
        let matched_index = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&node_id).cloned().flatten())
            .map(|l| l.index)
            .unwrap_or(0);
        HelloReply {
            initialized: m.last_log_index.is_some(),
            cluster_id: self
                .with_state(|s| s.cluster_id.clone())
                .unwrap_or_default(),
            is_member,
            matched_index,
        }
    }

    /// Waits until Raft's core has stopped: after [`Self::shutdown`], or on its own when it
    /// failed (a panic, a storage error). A witness whose core stopped can no longer vote,
    /// replicate or apply, yet would go on answering from what it last applied.
    pub async fn core_stopped(&self) {
        let mut rx = self.raft.metrics();
        while rx.changed().await.is_ok() {}
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.log_store.lock().expect("log store lock").take();
    }
}
