//! Durable Raft storage: one redb file per node, shared by the log store and the state machine.
//!
//! This module owns the on-disk layout (file name, tables, keys and the byte encoding of every
//! record), the [`open`] entry point that wires both stores to one [`redb::Database`], and the
//! node identity record used to detect a wiped or swapped data directory. The log half lives in
//! [`LogStore`], the state-machine half in [`StateMachineStore`].
//!
//! It must never:
//! - report a write as done before the redb transaction carrying it committed with
//!   [`Durability::Immediate`] (i.e. was fsynced);
//! - spread one logical change (purge, truncate, snapshot install) over several transactions,
//!   which would let a crash expose a half-applied change;
//! - name an application type: everything is generic over [`openraft::RaftTypeConfig`] and
//!   [`ReplicatedState`];
//! - run redb work on an async worker thread when a tokio runtime is available. The only
//!   blocking entry points are the start-up calls ([`open`] and the identity methods), which
//!   say so.

mod log;
mod state_machine;

use std::fmt;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::RaftTypeConfig;
use redb::Database;
use redb::Durability;
use redb::ReadTransaction;
use redb::ReadableDatabase;
use redb::TableDefinition;
use redb::WriteTransaction;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

pub use self::log::LogStore;
pub use self::log::MAX_BYTES_PER_READ;
pub use self::log::MAX_ENTRIES_PER_READ;
pub use self::state_machine::Applied;
pub use self::state_machine::AppliedIndex;
pub use self::state_machine::CommandEntry;
pub use self::state_machine::SnapshotBuilder;
pub use self::state_machine::StateMachineStore;
pub use self::state_machine::SNAPSHOT_FORMAT_VERSION;
use super::ReplicatedState;

/// Name of the database file inside a node's data directory.
pub const DB_FILE_NAME: &str = "arbiter.redb";

/// Upper bound on the size of any single record this store will decode. A larger length prefix
/// means corruption (or a hostile snapshot), and must not turn into a huge allocation.
pub const MAX_DECODED_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// Log entries, keyed by the big-endian `u64` log index so byte order equals index order.
const LOG_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raft_log");
/// Small singleton records of the log store: vote, committed id, last purged id, identity.
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The current state-machine snapshot: its metadata and its data, always written together.
const SNAPSHOT_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");

/// Keys of [`META_TABLE`] and [`SNAPSHOT_TABLE`].
mod key {
    pub(super) const VOTE: &str = "vote";
    pub(super) const COMMITTED: &str = "committed";
    pub(super) const LAST_PURGED: &str = "last_purged";
    pub(super) const IDENTITY: &str = "identity";
    pub(super) const SNAPSHOT_META: &str = "meta";
    pub(super) const SNAPSHOT_DATA: &str = "data";
}

/// Errors from opening the store and from the identity record. Each names the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory does not exist and could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// redb refused to open or create the database file (locked, corrupt, wrong format...).
    #[error("cannot open raft store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    /// Reading or writing the database failed.
    #[error("raft store {}: {source}", path.display())]
    Storage { path: PathBuf, source: io::Error },
    /// The persisted snapshot could not be decoded into the application state.
    #[error("raft store {}: cannot restore the state machine from its snapshot: {source}", path.display())]
    Restore { path: PathBuf, source: io::Error },
    /// The data directory was written by a different node or cluster.
    #[error(
        "raft store {} belongs to node {found_node_id} of cluster {found_cluster_id:?}, \
         not node {node_id} of cluster {cluster_id:?}",
        path.display()
    )]
    IdentityMismatch {
        path: PathBuf,
        node_id: u64,
        cluster_id: String,
        found_node_id: u64,
        found_cluster_id: String,
    },
}

/// Outcome of [`LogStore::ensure_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// No identity was recorded (a new, or wiped, data directory); it has now been written.
    Recorded,
    /// The recorded identity equals the expected one.
    Matched,
}

/// Open (creating if needed) the store in `data_dir` (file [`DB_FILE_NAME`]), returning the log
/// store and the state machine that share its single database file. Blocking.
///
/// The state machine starts from the persisted snapshot, if any; openraft then re-applies the
/// committed log after it. The database stays open until both returned values (and every clone
/// or reader derived from them) are dropped.
#[allow(clippy::type_complexity)]
pub fn open<C, S>(
    data_dir: impl AsRef<Path>,
) -> Result<(LogStore<C>, StateMachineStore<C, S>), StoreError>
where
    C: RaftTypeConfig,
    S: ReplicatedState,
{
    let data_dir = data_dir.as_ref();
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(DB_FILE_NAME);
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    stores(db, path, false)
}

/// Opens (creating if needed) the store on any redb storage `backend`: an in-memory one, or
/// one a simulation controls (lost writes, failed syncs, a crash between two). `name` stands
/// for the file in every error message. Otherwise as [`open`], except that storage work runs
/// on the calling task (see `Shared::inline`).
#[allow(clippy::type_complexity)]
pub fn open_on<C, S>(
    backend: impl redb::StorageBackend,
    name: impl Into<PathBuf>,
) -> Result<(LogStore<C>, StateMachineStore<C, S>), StoreError>
where
    C: RaftTypeConfig,
    S: ReplicatedState,
{
    let path = name.into();
    let db = redb::Builder::new()
        .create_with_backend(backend)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    stores(db, path, true)
}

#[allow(clippy::type_complexity)]
fn stores<C, S>(
    db: Database,
    path: PathBuf,
    inline: bool,
) -> Result<(LogStore<C>, StateMachineStore<C, S>), StoreError>
where
    C: RaftTypeConfig,
    S: ReplicatedState,
{
    let shared = Arc::new(Shared { db, path, inline });

    // Create every table up front so read transactions never meet a missing table.
    shared
        .write(|txn| {
            txn.open_table(LOG_TABLE)?;
            txn.open_table(META_TABLE)?;
            txn.open_table(SNAPSHOT_TABLE)?;
            Ok(())
        })
        .map_err(|e| shared.storage_error(e))?;

    let sm = StateMachineStore::restore(Arc::clone(&shared)).map_err(|e| StoreError::Restore {
        path: shared.path.clone(),
        source: e.into(),
    })?;
    Ok((LogStore::new(shared), sm))
}

/// The database handle shared by both stores.
pub(crate) struct Shared {
    /// The single redb database of this node.
    db: Database,
    /// Where the database file lives; every error message names it.
    path: PathBuf,
    /// Run storage work on the calling task instead of tokio's blocking pool: set for a
    /// backend of the caller's ([`open_on`]), which is memory-speed and, in a simulation on
    /// one thread, must not let another thread decide when a write completes (a blocking
    /// task's completion wakes its waiter at a moment no seed controls).
    inline: bool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("path", &self.path).finish()
    }
}

impl Shared {
    /// Run `f` in one write transaction and commit it durably (fsync) before returning.
    /// If `f` fails, the transaction is dropped, which aborts it.
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, Fault>) -> Result<T, Fault> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// Run `f` against a consistent read snapshot of the database.
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, Fault>) -> Result<T, Fault> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }

    fn storage_error(&self, fault: Fault) -> StoreError {
        StoreError::Storage {
            path: self.path.clone(),
            source: fault.into(),
        }
    }

    fn read_identity(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(META_TABLE)?;
            let Some(raw) = table.get(key::IDENTITY)? else {
                return Ok(None);
            };
            let id: Identity = decode("node identity", raw.value())?;
            Ok(Some((id.node_id, id.cluster_id)))
        })
        .map_err(|e| self.storage_error(e))
    }

    fn write_identity(&self, node_id: u64, cluster_id: &str) -> Result<(), StoreError> {
        let raw = encode(
            "node identity",
            &Identity {
                node_id,
                cluster_id: cluster_id.to_owned(),
            },
        )
        .map_err(|e| self.storage_error(e))?;
        self.write(|txn| {
            txn.open_table(META_TABLE)?
                .insert(key::IDENTITY, raw.as_slice())?;
            Ok(())
        })
        .map_err(|e| self.storage_error(e))
    }

    fn ensure_identity(&self, node_id: u64, cluster_id: &str) -> Result<IdentityCheck, StoreError> {
        match self.read_identity()? {
            None => {
                self.write_identity(node_id, cluster_id)?;
                Ok(IdentityCheck::Recorded)
            }
            Some((found_node_id, found_cluster_id))
                if found_node_id == node_id && found_cluster_id == cluster_id =>
            {
                Ok(IdentityCheck::Matched)
            }
            Some((found_node_id, found_cluster_id)) => Err(StoreError::IdentityMismatch {
                path: self.path.clone(),
                node_id,
                cluster_id: cluster_id.to_owned(),
                found_node_id,
                found_cluster_id,
            }),
        }
    }
}

/// Who wrote this data directory.
#[derive(Serialize, Deserialize)]
struct Identity {
    /// Raft node id this directory was created for.
    node_id: u64,
    /// Cluster the node belongs to; a directory copied from another cluster must not start.
    cluster_id: String,
}

/// Run blocking redb work off the async worker threads.
///
/// Falls back to running inline when no tokio runtime is present. If the returned future is
/// dropped, the work still runs to completion; redb serializes write transactions, so a later
/// write never commits before an earlier one that already began.
async fn blocking<T, F>(shared: &Arc<Shared>, f: F) -> Result<T, Fault>
where
    T: Send + 'static,
    F: FnOnce(&Shared) -> Result<T, Fault> + Send + 'static,
{
    let shared = Arc::clone(shared);
    if shared.inline {
        return f(&shared);
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Fault::Task(e.to_string()))?,
        Err(_) => f(&shared),
    }
}

/// Internal error of a storage operation; becomes an [`io::Error`] at the openraft boundary and
/// a [`StoreError`] at ours.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

macro_rules! fault_from_redb {
    ($($ty:ty),* $(,)?) => {
        $(impl From<$ty> for Fault {
            fn from(e: $ty) -> Self {
                Fault::Db(e.into())
            }
        })*
    };
}

fault_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

impl From<Fault> for io::Error {
    fn from(fault: Fault) -> Self {
        let kind = match fault {
            Fault::Decode { .. } | Fault::Corrupt(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, fault)
    }
}

/// The one encoding of every record: JSON. Self-describing, so every serde feature of the
/// replicated types (optional fields, tagged enums) round-trips, and a record can be read by
/// hand when debugging a data dir. Records are small; the state is decisions, not data.
fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Fault> {
    serde_json::to_vec(value).map_err(|source| Fault::Encode { what, source })
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Fault> {
    if bytes.len() > MAX_DECODED_RECORD_BYTES {
        return Err(Fault::Corrupt(format!(
            "{what}: record of {} bytes is larger than the limit of {MAX_DECODED_RECORD_BYTES}",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|source| Fault::Decode { what, source })
}
