//! An in-process Raft network: witnesses of one process reach each other through a shared
//! [`MemoryRouter`] instead of gRPC, each RPC handed straight to the target's Raft as the
//! gRPC service would (AppendEntries, votes, pre-votes, full snapshots). Every RPC is two
//! messages, the request and the reply, each on its own directed link, which can be cut
//! (one way: a cut reply link means the request was handled but its sender never hears),
//! delayed (a fixed latency, and a jitter drawn per message, so messages on one link
//! overtake each other), or lossy, and an endpoint can be paused (its messages wait until
//! it resumes). Losses and jitter are drawn from a seeded RNG ([`MemoryRouter::seeded`]), so
//! a simulation on a current-thread runtime replays them exactly. Endpoints are plain ids: a
//! simulation carries its other traffic (probe reports, lease requests) over
//! [`MemoryRouter::carry`] with ids of its own. For simulations and tests that run Raft without sockets; a witness
//! in production uses [`super::Network`].
//!
//! It must never be what a served witness uses: it has no TLS, no peer identity and no
//! message bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};

use super::types::{TypeConfig, WitnessNode};
use super::Consensus;

type C = TypeConfig;

/// While an endpoint is paused, its messages are re-checked this often.
const PAUSE_POLL: Duration = Duration::from_millis(10);
/// Loss probabilities are in parts per this.
pub const LOSS_SCALE: u32 = 1_000;

#[derive(Default)]
struct Routes {
    witnesses: BTreeMap<u64, Weak<Consensus>>,
    /// Directed links (from, to) that deliver nothing.
    cut: BTreeSet<(u64, u64)>,
    /// One-way latency of directed links; absent: none.
    delay: BTreeMap<(u64, u64), Duration>,
    /// Extra latency of directed links, drawn per message from zero to this; absent: none.
    jitter: BTreeMap<(u64, u64), Duration>,
    /// Loss of directed links in parts per [`LOSS_SCALE`]; absent: none.
    loss: BTreeMap<(u64, u64), u32>,
    /// Endpoints whose messages wait (a stopped process: nothing in or out until resumed).
    paused: BTreeSet<u64>,
    /// Where losses and jitter are drawn from: seeded for a replayable run.
    rng: Option<StdRng>,
}

impl Routes {
    /// A number drawn from `range`, from the seeded stream when there is one.
    fn draw(&mut self, range: std::ops::Range<u64>) -> u64 {
        match &mut self.rng {
            Some(rng) => rng.random_range(range),
            None => rand::rng().random_range(range),
        }
    }
}

/// The witnesses of one process and the links between them. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryRouter(Arc<RwLock<Routes>>);

impl MemoryRouter {
    /// A router whose losses are drawn from a stream seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        let router = Self::default();
        router.0.write().expect("router lock").rng = Some(StdRng::seed_from_u64(seed));
        router
    }

    /// Sets the one-way latency of the link from `from` to `to`.
    pub fn set_delay(&self, from: u64, to: u64, delay: Duration) {
        self.0
            .write()
            .expect("router lock")
            .delay
            .insert((from, to), delay);
    }

    /// Sets the jitter of the link from `from` to `to`: each message waits a further latency
    /// drawn from zero to `jitter` (zero: none).
    pub fn set_jitter(&self, from: u64, to: u64, jitter: Duration) {
        self.0
            .write()
            .expect("router lock")
            .jitter
            .insert((from, to), jitter);
    }

    /// Sets the loss of the link from `from` to `to`, in parts per [`LOSS_SCALE`].
    pub fn set_loss(&self, from: u64, to: u64, loss: u32) {
        self.0
            .write()
            .expect("router lock")
            .loss
            .insert((from, to), loss.min(LOSS_SCALE));
    }

    /// Pauses (`true`) or resumes every message to and from `id`.
    pub fn pause(&self, id: u64, paused: bool) {
        let mut routes = self.0.write().expect("router lock");
        if paused {
            routes.paused.insert(id);
        } else {
            routes.paused.remove(&id);
        }
    }

    /// Carries one message from `from` to `to`: waits while either end is paused, then for
    /// the link's latency; whether it arrived (the link is not cut and did not lose it).
    pub async fn carry(&self, from: u64, to: u64) -> bool {
        loop {
            let paused = {
                let routes = self.0.read().expect("router lock");
                routes.paused.contains(&from) || routes.paused.contains(&to)
            };
            if !paused {
                break;
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }
        let delay = {
            let mut routes = self.0.write().expect("router lock");
            let fixed = routes.delay.get(&(from, to)).copied().unwrap_or_default();
            let jitter = routes.jitter.get(&(from, to)).copied().unwrap_or_default();
            if jitter.is_zero() {
                fixed
            } else {
                let micros = u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX);
                fixed + Duration::from_micros(routes.draw(0..micros.saturating_add(1)))
            }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut routes = self.0.write().expect("router lock");
        if routes.cut.contains(&(from, to)) {
            return false;
        }
        let loss = routes.loss.get(&(from, to)).copied().unwrap_or(0);
        loss == 0 || routes.draw(0..u64::from(LOSS_SCALE)) >= u64::from(loss)
    }

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

    /// Restores every link: no cut, no latency, no jitter, no loss, nothing paused.
    pub fn heal(&self) {
        let mut routes = self.0.write().expect("router lock");
        routes.cut.clear();
        routes.delay.clear();
        routes.jitter.clear();
        routes.loss.clear();
        routes.paused.clear();
    }

    /// Whether the link from `from` to `to` is cut now.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.0
            .read()
            .expect("router lock")
            .cut
            .contains(&(from, to))
    }

    /// The running witness `to`, once the request from `from` has reached it.
    async fn target(&self, from: u64, to: u64) -> Result<Arc<Consensus>, Unreachable<C>> {
        if !self.carry(from, to).await {
            return Err(unreachable(format!("link {from} -> {to} lost the request")));
        }
        let routes = self.0.read().expect("router lock");
        routes
            .witnesses
            .get(&to)
            .and_then(Weak::upgrade)
            .ok_or_else(|| unreachable(format!("witness {to} is not running")))
    }

    /// The reply from `to` back to `from`: `Err` when that link lost it.
    async fn reply<T>(&self, from: u64, to: u64, reply: T) -> Result<T, RPCError<C>> {
        if self.carry(to, from).await {
            Ok(reply)
        } else {
            Err(network_error(format!("link {to} -> {from} lost the reply")))
        }
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
    async fn target(&self) -> Result<Arc<Consensus>, RPCError<C>> {
        self.router
            .target(self.from, self.to)
            .await
            .map_err(RPCError::Unreachable)
    }

    async fn reply<T>(&self, reply: T) -> Result<T, RPCError<C>> {
        self.router.reply(self.from, self.to, reply).await
    }
}

impl RaftNetworkV2<C> for MemoryConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let target = self.target().await?;
        let resp = target
            .raft
            .append_entries(rpc)
            .await
            .map_err(network_error)?;
        // As the gRPC service does: anything but a higher vote is contact with a leader.
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            target.note_leader_append();
        }
        self.reply(resp).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let resp = self
            .target()
            .await?
            .raft
            .vote(rpc)
            .await
            .map_err(network_error)?;
        self.reply(resp).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let resp = self
            .target()
            .await?
            .raft
            .pre_vote(rpc)
            .await
            .map_err(network_error)?;
        self.reply(resp).await
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<C>,
        snapshot: openraft::alias::SnapshotOf<C, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let streaming = |e: RPCError<C>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        };
        let target = self.target().await.map_err(streaming)?;
        let resp = target
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| {
                StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))
            })?;
        self.reply(resp).await.map_err(streaming)
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

    /// Goal: a jittery link delivers each message within its fixed latency plus the jitter,
    /// in an order other than the order sent, the same order again for the same seed, and
    /// in order once the jitter is healed.
    #[tokio::test(start_paused = true)]
    async fn jitter_reorders_messages_within_its_bound_and_replays_by_seed() {
        async fn arrivals(router: &MemoryRouter) -> Vec<usize> {
            let (sent, mut arrived) = tokio::sync::mpsc::unbounded_channel();
            let start = tokio::time::Instant::now();
            for i in 0..20 {
                let (router, sent) = (router.clone(), sent.clone());
                tokio::spawn(async move {
                    assert!(router.carry(1, 2).await);
                    let took = start.elapsed();
                    assert!(took >= Duration::from_millis(100), "{i} took {took:?}");
                    assert!(took <= Duration::from_millis(1_100), "{i} took {took:?}");
                    sent.send(i).unwrap();
                });
                tokio::time::sleep(Duration::from_micros(1)).await;
            }
            drop(sent);
            let mut order = Vec::new();
            while let Some(i) = arrived.recv().await {
                order.push(i);
            }
            order
        }
        let jittery = |seed| {
            let router = MemoryRouter::seeded(seed);
            router.set_delay(1, 2, Duration::from_millis(100));
            router.set_jitter(1, 2, Duration::from_millis(1_000));
            router
        };
        let first = arrivals(&jittery(7)).await;
        assert_eq!(first.len(), 20);
        assert_ne!(
            first,
            (0..20).collect::<Vec<_>>(),
            "no message overtook another"
        );
        assert_eq!(
            arrivals(&jittery(7)).await,
            first,
            "the same seed, another order"
        );
        let healed = jittery(7);
        healed.heal();
        healed.set_delay(1, 2, Duration::from_millis(100));
        assert_eq!(arrivals(&healed).await, (0..20).collect::<Vec<_>>());
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
