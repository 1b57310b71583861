//! openraft glue: type configuration, durable storage (redb) and the witness-to-witness network.
//! This module owns every openraft type; nothing outside it names one. [`Stores`] and
//! [`Consensus::start_with`] are its seams: any redb storage backend, any openraft network.
//!
//! It must never interpret a command (that is the state machine's), never act on the world,
//! and never answer a read as current without a quorum's confirmation when asked for one.

mod consensus;
pub mod memory;
mod network;
mod runtime;
mod service;
pub mod store;
mod types;

pub use consensus::{ClusterView, Consensus, ConsensusError, MemberView, RaftStatus};
pub use network::{LinkFaults, Network, RAFT_MESSAGE_BYTES_MAX};
pub use runtime::{random_u128, seed_thread_rng, SeedableTokio};
pub use service::{ProbeReports, RaftService};
pub use types::TypeConfig;

/// A witness's log store and state machine, which share one redb database.
pub struct Stores(
    pub(crate) store::LogStore<types::TypeConfig>,
    pub(crate) store::StateMachineStore<types::TypeConfig, crate::state::ClusterState>,
);

impl Stores {
    /// A witness's stores on any redb storage `backend` (in memory, or one a simulation
    /// controls: lost writes, failed syncs, a crash between two); `name` stands for the file
    /// in error messages. A witness started on them with `node::World::stores`.
    pub fn on(
        backend: impl redb::StorageBackend,
        name: impl Into<std::path::PathBuf>,
    ) -> Result<Stores, store::StoreError> {
        let (log, sm) = store::open_on(backend, name)?;
        Ok(Stores(log, sm))
    }
}

/// The application state replicated by Raft. Pure: `apply` does no I/O and reads no clock.
///
/// Every replica applies the same committed commands in the same order, so `apply` must be
/// deterministic: its result may depend only on `self`, `index` and `cmd`. The whole state is
/// serialized into snapshots, so it must round-trip through serde without loss.
pub trait ReplicatedState:
    Default + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// The command carried by a normal log entry (the type config's `D`).
    type Command;
    /// What applying a command returns to the client that proposed it (the type config's `R`).
    type Response;
    /// Apply one committed command found at log index `index`.
    fn apply(&mut self, index: u64, cmd: &Self::Command) -> Self::Response;
}

impl ReplicatedState for crate::state::ClusterState {
    type Command = crate::state::Proposal;
    type Response = crate::state::Response;
    fn apply(&mut self, index: u64, cmd: &Self::Command) -> Self::Response {
        crate::state::ClusterState::apply(self, index, cmd)
    }
}

#[cfg(test)]
mod conformance {
    //! openraft's storage conformance suite against the redb store with arbiter's own type
    //! configuration and state machine (the generic store is also checked in
    //! tests/storage_conformance.rs with a toy state).

    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::store::{self, LogStore, StateMachineStore};
    use super::types::TypeConfig;
    use crate::state::ClusterState;

    type Log = LogStore<TypeConfig>;
    type Sm = StateMachineStore<TypeConfig, ClusterState>;

    struct Builder;

    impl StoreBuilder<TypeConfig, Log, Sm, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, Log, Sm), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) =
                store::open::<TypeConfig, ClusterState>(dir.path()).expect("store opens");
            Ok((dir, log, sm))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes_with_arbiter_types(
    ) -> Result<(), StorageError<TypeConfig>> {
        Suite::test_all(Builder).await
    }
}
