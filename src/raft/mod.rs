//! openraft glue: type configuration, durable storage (redb) and the witness-to-witness network.
//! This module owns every openraft type; nothing outside it names one.

pub mod store;

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
