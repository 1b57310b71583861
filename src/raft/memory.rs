//! An in-process Raft network: witnesses of one process reach each other through a shared
//! [`MemoryRouter`] instead of gRPC, each RPC handed straight to the target's Raft as the
//! gRPC service would (AppendEntries, votes, pre-votes, full snapshots). Links can be cut
//! one way. For simulations and tests that run Raft without sockets; a witness in
//! production uses [`super::Network`].
//!
//! It must never be what a served witness uses: it has no TLS, no peer identity and no
//! message bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, Weak};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};

use super::types::{TypeConfig, WitnessNode};
use super::Consensus;

type C = TypeConfig;

#[derive(Default)]
struct Routes {
    witnesses: BTreeMap<u64, Weak<Consensus>>,
    /// Directed links (from, to) that deliver nothing.
    cut: BTreeSet<(u64, u64)>,
}

/// The witnesses of one process and the links between them. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryRouter(Arc<RwLock<Routes>>);

impl MemoryRouter {
    /// The network of witness `id`: what to give [`Consensus::start_with`].
    pub fn network(&self, id: u64) -> MemoryNetwork {
        MemoryNetwork {
            from: id,
            router: self.clone(),
        }
    }

    /// Makes `consensus` reachable at its id (after [`Consensus::start_with`]).
    pub fn register(&self, consensus: &Arc<Consensus>) {
        let mut routes = self.0.write().expect("router lock");
        routes
            .witnesses
            .insert(consensus.id(), Arc::downgrade(consensus));
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: u64, to: u64) {
        self.0.write().expect("router lock").cut.insert((from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        let mut routes = self.0.write().expect("router lock");
        let ids: Vec<u64> = routes.witnesses.keys().copied().collect();
        for other in ids.into_iter().filter(|o| *o != id) {
            routes.cut.insert((id, other));
            routes.cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.0.write().expect("router lock").cut.clear();
    }

    fn target(&self, from: u64, to: u64) -> Result<Arc<Consensus>, Unreachable<C>> {
        let routes = self.0.read().expect("router lock");
        if routes.cut.contains(&(from, to)) || routes.cut.contains(&(to, from)) {
            return Err(unreachable(format!("link {from} -> {to} cut")));
        }
        routes
            .witnesses
            .get(&to)
            .and_then(Weak::upgrade)
            .ok_or_else(|| unreachable(format!("witness {to} is not running")))
    }
}

fn unreachable(why: String) -> Unreachable<C> {
    Unreachable::new(&AnyError::error(why))
}

fn network_error(e: impl std::fmt::Display) -> RPCError<C> {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// One witness's side of the [`MemoryRouter`].
#[derive(Clone)]
pub struct MemoryNetwork {
    from: u64,
    router: MemoryRouter,
}

impl RaftNetworkFactory<C> for MemoryNetwork {
    type Network = MemoryConnection;

    async fn new_client(&mut self, target: u64, _node: &WitnessNode) -> MemoryConnection {
        MemoryConnection {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

/// The link from one witness to one peer.
pub struct MemoryConnection {
    from: u64,
    to: u64,
    router: MemoryRouter,
}

impl MemoryConnection {
    fn target(&self) -> Result<Arc<Consensus>, RPCError<C>> {
        self.router
            .target(self.from, self.to)
            .map_err(RPCError::Unreachable)
    }
}

impl RaftNetworkV2<C> for MemoryConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let target = self.target()?;
        let resp = target
            .raft
            .append_entries(rpc)
            .await
            .map_err(network_error)?;
        // As the gRPC service does: anything but a higher vote is contact with a leader.
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            target.note_leader_append();
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.target()?.raft.vote(rpc).await.map_err(network_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.target()?
            .raft
            .pre_vote(rpc)
            .await
            .map_err(network_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<C>,
        snapshot: openraft::alias::SnapshotOf<C, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let target = self.target().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        target
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| {
                StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::NodeConfig;
    use crate::raft::Stores;
    use crate::state::{Command, Proposal};
    use crate::wallclock::ManualClock;

    /// A node file for witness `id` of three (TLS files exist but are never read here).
    fn config(dir: &std::path::Path, id: u64) -> NodeConfig {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let text = format!(
            r#"id = {id}
site = "site-{id}"
data_dir = "node-{id}"
listen = "127.0.0.1:{port}"
tls = {{ ca = "ca.pem", cert = "cert.pem", key = "key.pem" }}
peers = [{{ id = 1, addr = "127.0.0.1:1", site = "site-1" }}, {{ id = 2, addr = "127.0.0.1:2", site = "site-2" }}, {{ id = 3, addr = "127.0.0.1:3", site = "site-3" }}]
[timing]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
rpc_timeout_ms = 500
"#,
            port = id
        );
        NodeConfig::parse("node.toml", &text, dir).unwrap()
    }

    fn bootstrap(at_ms: u64, cluster_id: &str) -> Proposal {
        Proposal {
            actor: "test".into(),
            at_ms,
            request_id: String::new(),
            command: Command::Bootstrap {
                cluster_id: cluster_id.into(),
            },
        }
    }

    /// Three witnesses on in-memory stores over the in-process network elect a leader,
    /// commit on all three, elect another leader when the first is cut off, and the first
    /// catches up after the heal: Raft runs with neither sockets nor files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_witnesses_run_raft_without_sockets_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let router = MemoryRouter::default();
        let mut witnesses = Vec::new();
        for id in 1..=3 {
            let c = config(dir.path(), id);
            let stores = Stores::on(redb::backends::InMemoryBackend::new(), "memory").unwrap();
            let clock = Arc::new(ManualClock::new(1_000 * id));
            let consensus = Consensus::start_with(&c, router.network(id), stores, clock)
                .await
                .unwrap();
            router.register(&consensus);
            witnesses.push((c, consensus));
        }
        let peers = witnesses[0].0.peers.clone();
        witnesses[0].1.initialize(&peers).await.unwrap();
        let on = |id: u64| witnesses[id as usize - 1].1.clone();
        let leader = propose_until_committed(&witnesses, bootstrap(1, "cluster-x"), None).await;
        for (_, w) in &witnesses {
            wait_until(|| w.with_state(|s| s.cluster_id.is_some())).await;
        }

        router.isolate(leader);
        // The two others elect a new leader and commit without the old one.
        let next =
            propose_until_committed(&witnesses, bootstrap(2, "cluster-y"), Some(leader)).await;
        assert_ne!(next, leader);
        let deposed = tokio::time::timeout(
            Duration::from_secs(3),
            on(leader).propose(bootstrap(3, "cluster-z")),
        )
        .await;
        assert!(
            !matches!(deposed, Ok(Ok(_))),
            "a cut-off leader committed: {deposed:?}"
        );
        router.heal();
        let applied = on(next).view().applied_index;
        wait_until(|| on(leader).view().applied_index >= applied).await;
        for (_, w) in &witnesses {
            w.shutdown().await;
        }
    }

    /// Proposes through whichever witness (other than `not`) leads, until one commits it;
    /// returns that leader.
    async fn propose_until_committed(
        witnesses: &[(NodeConfig, Arc<Consensus>)],
        proposal: Proposal,
        not: Option<u64>,
    ) -> u64 {
        for _ in 0..300 {
            for (_, w) in witnesses.iter().filter(|(c, _)| Some(c.id) != not) {
                if w.is_leader() && w.propose(proposal.clone()).await.is_ok() {
                    return w.id();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader committed within 30 s");
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..300 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not reached within 30 s");
    }
}
