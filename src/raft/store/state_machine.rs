//! The replicated state machine and its snapshots: openraft's `RaftStateMachine` and
//! `RaftSnapshotBuilder`.
//!
//! Owns the in-memory applied view ([`Applied`]) shared with the rest of the node, the watch
//! channel announcing the last applied index, and the snapshot table (metadata and data of the
//! current snapshot, always written in the same transaction).
//!
//! It must never: persist the applied state anywhere but in a snapshot (after a restart the
//! state comes from the snapshot and openraft re-applies the committed log after it); hold the
//! state lock across an `.await`; let an older built snapshot overwrite a newer one; touch the
//! log or vote, which belong to [`super::log`].

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

use futures::Stream;
use futures::StreamExt;
use openraft::alias::CommittedLeaderIdOf;
use openraft::alias::EntryPayloadOf;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::RaftTypeConfig;
use openraft::Snapshot;
use openraft::SnapshotMeta;
use openraft::StoredMembership;
use redb::ReadableTable;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use super::blocking;
use super::decode;
use super::encode;
use super::key;
use super::Fault;
use super::Shared;
use super::SNAPSHOT_TABLE;
use crate::raft::ReplicatedState;

/// Version of the snapshot data layout; bumped whenever the serialized snapshot changes shape, so
/// a node never silently misreads a snapshot written by a different layout.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Receiver of the index of the last applied log entry (0 until something is applied; index 0
/// only ever holds the initial membership entry, never an application command).
pub type AppliedIndex = watch::Receiver<u64>;

/// What the state machine has applied so far. Shared, behind a lock, with the rest of the node.
pub struct Applied<C: RaftTypeConfig, S> {
    /// The application state after applying every entry up to `last_applied`.
    pub state: S,
    /// The last log entry reflected in `state`; `None` before anything was applied.
    pub last_applied: Option<LogIdOf<C>>,
    /// The last membership configuration applied, with the id of the entry that carried it.
    pub membership: StoredMembershipOf<C>,
}

impl<C: RaftTypeConfig, S: Default> Default for Applied<C, S> {
    fn default() -> Self {
        Self {
            state: S::default(),
            last_applied: None,
            membership: StoredMembership::default(),
        }
    }
}

impl<C: RaftTypeConfig, S: Clone> Clone for Applied<C, S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            last_applied: self.last_applied.clone(),
            membership: self.membership.clone(),
        }
    }
}

impl<C: RaftTypeConfig, S: fmt::Debug> fmt::Debug for Applied<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applied")
            .field("state", &self.state)
            .field("last_applied", &self.last_applied)
            .field("membership", &self.membership)
            .finish()
    }
}

impl<C: RaftTypeConfig, S> Applied<C, S> {
    /// Index published on the watch channel for this view.
    fn index(&self) -> u64 {
        self.last_applied.as_ref().map_or(0, |id| id.index)
    }
}

/// Access to the application command of a log entry.
///
/// openraft's generic entry type exposes no payload accessor, so the state machine asks for this
/// instead; it is implemented for openraft's standard [`openraft::Entry`] with
/// [`EntryPayload`], which is what `declare_raft_types!` uses by default.
pub trait CommandEntry<C: RaftTypeConfig> {
    /// The command of a normal entry; `None` for blank and membership entries.
    fn command(&self) -> Option<&C::D>;
}

impl<C: RaftTypeConfig> CommandEntry<C>
    for openraft::Entry<CommittedLeaderIdOf<C>, EntryPayloadOf<C>>
{
    fn command(&self) -> Option<&C::D> {
        match &self.payload {
            EntryPayload::Normal(cmd) => Some(cmd),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        }
    }
}

/// The snapshot data, as serialized by [`SnapshotBuilder::build_snapshot`].
#[derive(Deserialize)]
#[serde(bound(deserialize = "S: DeserializeOwned"))]
struct SnapshotPayload<C: RaftTypeConfig, S> {
    /// Must equal [`SNAPSHOT_FORMAT_VERSION`].
    format: u32,
    /// Last entry reflected in `state`; must match the snapshot metadata.
    last_applied: Option<LogIdOf<C>>,
    /// Membership in force at `last_applied`; must match the snapshot metadata.
    membership: StoredMembershipOf<C>,
    /// The application state itself.
    state: S,
}

/// Borrowing twin of [`SnapshotPayload`], so building a snapshot does not clone the state.
/// Field order must match [`SnapshotPayload`]: the encoding is positional.
#[derive(Serialize)]
#[serde(bound(serialize = "S: Serialize"))]
struct SnapshotPayloadRef<'a, C: RaftTypeConfig, S> {
    /// See [`SnapshotPayload::format`].
    format: u32,
    /// See [`SnapshotPayload::last_applied`].
    last_applied: &'a Option<LogIdOf<C>>,
    /// See [`SnapshotPayload::membership`].
    membership: &'a StoredMembershipOf<C>,
    /// See [`SnapshotPayload::state`].
    state: &'a S,
}

fn decode_payload<C: RaftTypeConfig, S: DeserializeOwned>(
    data: &[u8],
) -> Result<SnapshotPayload<C, S>, Fault> {
    let payload: SnapshotPayload<C, S> = decode("snapshot data", data)?;
    if payload.format != SNAPSHOT_FORMAT_VERSION {
        return Err(Fault::Corrupt(format!(
            "snapshot data has format {}, this build reads format {SNAPSHOT_FORMAT_VERSION}",
            payload.format
        )));
    }
    Ok(payload)
}

/// The replicated state machine of one node, held in memory and restored from its durable
/// snapshot on open.
pub struct StateMachineStore<C: RaftTypeConfig, S> {
    /// The node's database, shared with the log store; holds the current snapshot.
    shared: Arc<Shared>,
    /// The applied view; the node reads it, only this store (and snapshot install) writes it.
    applied: Arc<RwLock<Applied<C, S>>>,
    /// Publishes the last applied index after every apply batch and snapshot install, so
    /// readers can wait for "applied >= N" without polling the lock.
    applied_tx: watch::Sender<u64>,
}

impl<C: RaftTypeConfig, S> fmt::Debug for StateMachineStore<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.shared.path)
            .field("applied_index", &*self.applied_tx.borrow())
            .finish()
    }
}

impl<C, S> StateMachineStore<C, S>
where
    C: RaftTypeConfig,
    S: ReplicatedState,
{
    /// Load the persisted snapshot, if any, as the starting applied view.
    pub(super) fn restore(shared: Arc<Shared>) -> Result<Self, Fault> {
        let applied = match read_snapshot::<C>(&shared)? {
            None => Applied::default(),
            Some(snapshot) => {
                let payload = decode_payload::<C, S>(&snapshot.snapshot)?;
                Applied {
                    state: payload.state,
                    last_applied: snapshot.meta.last_log_id,
                    membership: snapshot.meta.last_membership,
                }
            }
        };
        let (applied_tx, _) = watch::channel(applied.index());
        Ok(Self {
            shared,
            applied: Arc::new(RwLock::new(applied)),
            applied_tx,
        })
    }
}

impl<C: RaftTypeConfig, S> StateMachineStore<C, S> {
    /// The applied view shared with the rest of the node. Hold its lock briefly: applying
    /// committed entries waits for it.
    pub fn applied(&self) -> Arc<RwLock<Applied<C, S>>> {
        Arc::clone(&self.applied)
    }

    /// A receiver of the last applied log index, updated after each apply batch and each
    /// snapshot install; e.g. `rx.wait_for(|i| *i >= n)`.
    pub fn applied_index(&self) -> AppliedIndex {
        self.applied_tx.subscribe()
    }

    /// Path of the database file.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    fn read_applied(&self) -> Result<RwLockReadGuard<'_, Applied<C, S>>, io::Error> {
        self.applied.read().map_err(|_| poisoned())
    }

    fn write_applied(&self) -> Result<RwLockWriteGuard<'_, Applied<C, S>>, io::Error> {
        self.applied.write().map_err(|_| poisoned())
    }
}

/// A panic while the state was locked for writing may have left it half-updated; refuse to
/// continue from it rather than diverge from the other replicas.
fn poisoned() -> io::Error {
    io::Error::other("state machine lock poisoned by a panic during apply")
}

/// Builds snapshots of the applied view and makes them the node's current snapshot.
pub struct SnapshotBuilder<C: RaftTypeConfig, S> {
    /// The node's database, where the built snapshot is persisted.
    shared: Arc<Shared>,
    /// The applied view to snapshot.
    applied: Arc<RwLock<Applied<C, S>>>,
    /// The builder is tied to its state machine's type config.
    _types: PhantomData<fn() -> C>,
}

impl<C, S> RaftSnapshotBuilder<C> for SnapshotBuilder<C, S>
where
    C: RaftTypeConfig,
    S: ReplicatedState,
{
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        // Serialize under the read lock: applying waits briefly, but nothing is cloned.
        let (meta, data) = {
            let applied = self.applied.read().map_err(|_| poisoned())?;
            let data = encode(
                "snapshot data",
                &SnapshotPayloadRef::<C, S> {
                    format: SNAPSHOT_FORMAT_VERSION,
                    last_applied: &applied.last_applied,
                    membership: &applied.membership,
                    state: &applied.state,
                },
            )?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied.clone(),
                last_membership: applied.membership.clone(),
            };
            (meta, data)
        };
        // Built snapshots run beside the state machine; an install may have landed meanwhile.
        let data = persist_snapshot::<C>(&self.shared, meta.clone(), data, false).await?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<C, S> RaftStateMachine<C> for StateMachineStore<C, S>
where
    C: RaftTypeConfig,
    C::Entry: CommandEntry<C>,
    C::R: Default,
    S: ReplicatedState<Command = C::D, Response = C::R>,
{
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<C, S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let applied = self.read_applied()?;
        Ok((applied.last_applied.clone(), applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut outcome = Ok(());
        let mut applied_any = false;
        while let Some(item) = entries.next().await {
            let (entry, responder) = match item {
                Ok(item) => item,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            let log_id = entry.log_id();
            let response = {
                let mut applied = match self.write_applied() {
                    Ok(guard) => guard,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                };
                let response = match entry.command() {
                    Some(cmd) => applied.state.apply(log_id.index, cmd),
                    None => C::R::default(),
                };
                if let Some(membership) = entry.get_membership() {
                    applied.membership = StoredMembership::new(Some(log_id.clone()), membership);
                }
                applied.last_applied = Some(log_id);
                response
            };
            applied_any = true;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        if applied_any {
            let index = self.read_applied()?.index();
            self.applied_tx.send_replace(index);
        }
        outcome
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            applied: Arc::clone(&self.applied),
            _types: PhantomData,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let payload = decode_payload::<C, S>(&snapshot)?;
        if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot data does not match its metadata",
            ));
        }
        // Durable first: if persisting fails, the in-memory state is left untouched.
        persist_snapshot::<C>(&self.shared, meta.clone(), snapshot, true).await?;
        let index = {
            let mut applied = self.write_applied()?;
            *applied = Applied {
                state: payload.state,
                last_applied: meta.last_log_id.clone(),
                membership: meta.last_membership.clone(),
            };
            applied.index()
        };
        self.applied_tx.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        Ok(blocking(&self.shared, |s| read_snapshot::<C>(s)).await?)
    }
}

/// The persisted current snapshot, if any.
fn read_snapshot<C: RaftTypeConfig>(
    shared: &Shared,
) -> Result<Option<SnapshotOf<C, Vec<u8>>>, Fault> {
    let (meta, data) = shared.read(|txn| {
        let table = txn.open_table(SNAPSHOT_TABLE)?;
        let meta = table.get(key::SNAPSHOT_META)?.map(|v| v.value().to_vec());
        let data = table.get(key::SNAPSHOT_DATA)?.map(|v| v.value().to_vec());
        Ok((meta, data))
    })?;
    match (meta, data) {
        (None, None) => Ok(None),
        (Some(meta), Some(data)) => Ok(Some(Snapshot {
            meta: decode("snapshot meta", &meta)?,
            snapshot: data,
        })),
        _ => Err(Fault::Corrupt(
            "snapshot metadata and data are not both present".to_owned(),
        )),
    }
}

/// Make `(meta, data)` the current snapshot, metadata and data in one transaction, and hand the
/// data back. Unless `force`, a snapshot older than the persisted one is not written.
async fn persist_snapshot<C: RaftTypeConfig>(
    shared: &Arc<Shared>,
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
    force: bool,
) -> Result<Vec<u8>, Fault> {
    let raw_meta = encode("snapshot meta", &meta)?;
    blocking(shared, move |s| {
        s.write(|txn| {
            let mut table = txn.open_table(SNAPSHOT_TABLE)?;
            if !force {
                let current = table.get(key::SNAPSHOT_META)?.map(|v| v.value().to_vec());
                if let Some(current) = current {
                    let current: SnapshotMetaOf<C> = decode("snapshot meta", &current)?;
                    if current.last_log_id > meta.last_log_id {
                        return Ok(());
                    }
                }
            }
            table.insert(key::SNAPSHOT_META, raw_meta.as_slice())?;
            table.insert(key::SNAPSHOT_DATA, data.as_slice())?;
            Ok(())
        })?;
        Ok(data)
    })
    .await
}
