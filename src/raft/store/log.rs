//! The Raft log and vote, stored in redb: openraft's `RaftLogStorage` and `RaftLogReader`.
//!
//! Owns the log table (entries keyed by big-endian index) and the meta records for the vote,
//! the committed log id and the last purged log id.
//!
//! It must never: acknowledge an append or a vote before its transaction is durably committed;
//! leave a hole in the log (purge and truncate each run in a single transaction); read or
//! write the state-machine snapshot, which belongs to [`super::state_machine`].

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use redb::ReadableTable;

use super::blocking;
use super::decode;
use super::encode;
use super::key;
use super::Fault;
use super::IdentityCheck;
use super::Shared;
use super::StoreError;
use super::LOG_TABLE;
use super::META_TABLE;

/// Most entries returned by one [`RaftLogReader::limited_get_log_entries`] call, so a
/// replication batch to a far-behind follower stays bounded.
pub const MAX_ENTRIES_PER_READ: usize = 4096;

/// Most encoded bytes returned by one [`RaftLogReader::limited_get_log_entries`] call (at least
/// one entry is always returned, whatever its size).
pub const MAX_BYTES_PER_READ: usize = 8 * 1024 * 1024;

/// The durable Raft log of one node. Cheap to clone; clones share the database and are also
/// the log readers handed to replication tasks.
pub struct LogStore<C: RaftTypeConfig> {
    /// The node's database, shared with the state machine store.
    shared: Arc<Shared>,
    /// Ties the store to one type config without owning any value of it.
    _types: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _types: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            _types: PhantomData,
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    /// The `(node_id, cluster_id)` recorded by [`Self::set_identity`], if any.
    ///
    /// Blocking; meant for node start-up, before the store is handed to openraft.
    pub fn identity(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.shared.read_identity()
    }

    /// Durably record which node of which cluster owns this data directory, replacing any
    /// previous record.
    ///
    /// Blocking; meant for node start-up, before the store is handed to openraft.
    pub fn set_identity(&self, node_id: u64, cluster_id: &str) -> Result<(), StoreError> {
        self.shared.write_identity(node_id, cluster_id)
    }

    /// Record the identity if none is recorded yet, otherwise check that it matches.
    ///
    /// [`IdentityCheck::Recorded`] means the directory carried no identity: either a first
    /// start, or a wiped directory; the caller decides which is acceptable. A different
    /// recorded identity is [`StoreError::IdentityMismatch`].
    pub fn ensure_identity(
        &self,
        node_id: u64,
        cluster_id: &str,
    ) -> Result<IdentityCheck, StoreError> {
        self.shared.ensure_identity(node_id, cluster_id)
    }

    /// Read one meta record and decode it.
    async fn read_meta<T>(&self, name: &'static str) -> Result<Option<T>, Fault>
    where
        T: serde::de::DeserializeOwned,
    {
        let raw = blocking(&self.shared, move |s| {
            s.read(|txn| {
                let table = txn.open_table(META_TABLE)?;
                Ok(table.get(name)?.map(|v| v.value().to_vec()))
            })
        })
        .await?;
        raw.map(|raw| decode(name, &raw)).transpose()
    }

    /// Durably write (`Some`) or delete (`None`) one meta record.
    async fn write_meta(&self, name: &'static str, raw: Option<Vec<u8>>) -> Result<(), Fault> {
        blocking(&self.shared, move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(META_TABLE)?;
                match raw {
                    Some(raw) => table.insert(name, raw.as_slice())?,
                    None => table.remove(name)?,
                };
                Ok(())
            })
        })
        .await
    }

    /// Entries with index in `range`, decoded and checked for holes.
    ///
    /// `limit` caps the number of entries and their encoded size; `None` reads the whole range.
    async fn read_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        limit: Option<(usize, usize)>,
    ) -> Result<Vec<C::Entry>, Fault> {
        let Some((first, last)) = inclusive_bounds(range) else {
            return Ok(Vec::new());
        };
        let rows = blocking(&self.shared, move |s| {
            s.read(|txn| {
                let table = txn.open_table(LOG_TABLE)?;
                let (max_entries, max_bytes) = limit.unwrap_or((usize::MAX, usize::MAX));
                let mut rows = Vec::new();
                let mut bytes = 0usize;
                let (lo, hi) = (index_key(first), index_key(last));
                for item in table.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
                    let (k, v) = item?;
                    let value = v.value();
                    if !rows.is_empty()
                        && (rows.len() >= max_entries || bytes + value.len() > max_bytes)
                    {
                        break;
                    }
                    bytes += value.len();
                    rows.push((key_index(k.value())?, value.to_vec()));
                }
                Ok(rows)
            })
        })
        .await?;

        let mut entries = Vec::with_capacity(rows.len());
        let mut expected: Option<u64> = None;
        for (index, raw) in rows {
            if let Some(expected) = expected {
                if index != expected {
                    return Err(Fault::Corrupt(format!(
                        "hole in the log: entry {expected} missing before {index}"
                    )));
                }
            }
            let entry: C::Entry = decode("log entry", &raw)?;
            if entry.index() != index {
                return Err(Fault::Corrupt(format!(
                    "log entry stored at index {index} claims index {}",
                    entry.index()
                )));
            }
            entries.push(entry);
            expected = index.checked_add(1);
        }
        Ok(entries)
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        Ok(self.read_entries(bounds, None).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.read_meta(key::VOTE).await?)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let bounds = (Bound::Included(start), Bound::Excluded(end));
        let limit = Some((MAX_ENTRIES_PER_READ, MAX_BYTES_PER_READ));
        Ok(self.read_entries(bounds, limit).await?)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let (purged, last) = blocking(&self.shared, |s| {
            s.read(|txn| {
                let meta = txn.open_table(META_TABLE)?;
                let purged = meta.get(key::LAST_PURGED)?.map(|v| v.value().to_vec());
                let log = txn.open_table(LOG_TABLE)?;
                let last = log.last()?.map(|(_, v)| v.value().to_vec());
                Ok((purged, last))
            })
        })
        .await?;

        let last_purged_log_id: Option<LogIdOf<C>> = purged
            .map(|raw| decode("last purged log id", &raw))
            .transpose()?;
        let last_log_id = match last {
            Some(raw) => Some(decode::<C::Entry>("log entry", &raw)?.log_id()),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let raw = encode("vote", vote)?;
        Ok(self.write_meta(key::VOTE, Some(raw)).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let raw = committed
            .map(|id| encode("committed log id", &id))
            .transpose()?;
        Ok(self.write_meta(key::COMMITTED, raw).await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.read_meta(key::COMMITTED).await?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| Ok((index_key(entry.index()), encode("log entry", &entry)?)))
            .collect::<Result<Vec<_>, Fault>>()?;

        let written = blocking(&self.shared, move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(LOG_TABLE)?;
                for (k, v) in &rows {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            })
        })
        .await;

        // `write` returns only after the commit was fsynced, so the entries are durable here.
        match written {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(fault) => {
                let err = io::Error::from(fault);
                callback.io_completed(Err(io::Error::new(err.kind(), err.to_string())));
                Err(err)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let first_removed = match &last_log_id {
            None => 0,
            Some(id) => match id.index.checked_add(1) {
                Some(i) => i,
                None => return Ok(()),
            },
        };
        let from = index_key(first_removed);
        blocking(&self.shared, move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(LOG_TABLE)?;
                table.retain_in::<&[u8], _>(from.as_slice().., |_, _| false)?;
                Ok(())
            })
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let upto = index_key(log_id.index);
        let raw = encode("last purged log id", &log_id)?;
        blocking(&self.shared, move |s| {
            // The purge marker and the deletion commit together: after a crash either both
            // happened or neither did, so the log never starts after an unrecorded gap.
            s.write(|txn| {
                txn.open_table(META_TABLE)?
                    .insert(key::LAST_PURGED, raw.as_slice())?;
                let mut table = txn.open_table(LOG_TABLE)?;
                table.retain_in::<&[u8], _>(..=upto.as_slice(), |_, _| false)?;
                Ok(())
            })
        })
        .await?;
        Ok(())
    }
}

/// Table key of log index `index`: big-endian, so lexicographic order is numeric order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, Fault> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| Fault::Corrupt(format!("log key of {} bytes, expected 8", key.len())))
}

/// `(first, last)` indexes covered by `range`, or `None` when it is empty.
fn inclusive_bounds((start, end): (Bound<u64>, Bound<u64>)) -> Option<(u64, u64)> {
    let first = match start {
        Bound::Included(i) => i,
        Bound::Excluded(i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match end {
        Bound::Included(i) => i,
        Bound::Excluded(i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_indexes() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, u64::MAX, 0, 256].map(index_key).to_vec();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| key_index(k).unwrap()).collect();
        assert_eq!(back, vec![0, 2, 256, 300, u64::MAX]);
    }

    #[test]
    fn range_bounds_are_normalized() {
        use Bound::*;
        assert_eq!(inclusive_bounds((Included(3), Excluded(5))), Some((3, 4)));
        assert_eq!(inclusive_bounds((Excluded(3), Included(5))), Some((4, 5)));
        assert_eq!(
            inclusive_bounds((Unbounded, Unbounded)),
            Some((0, u64::MAX))
        );
        assert_eq!(inclusive_bounds((Included(5), Excluded(5))), None);
        assert_eq!(inclusive_bounds((Included(0), Excluded(0))), None);
        assert_eq!(inclusive_bounds((Excluded(u64::MAX), Unbounded)), None);
        assert_eq!(inclusive_bounds((Included(6), Included(5))), None);
    }
}
