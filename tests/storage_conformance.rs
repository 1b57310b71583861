//! The redb store against openraft's storage conformance suite, plus the durability guarantees
//! the suite cannot see: everything survives closing and reopening the database file.
//!
//! These tests own a throwaway type config and state; they must never depend on the
//! application's real commands or state.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::io;

use arbiter::raft::store;
use arbiter::raft::store::IdentityCheck;
use arbiter::raft::store::LogStore;
use arbiter::raft::store::StateMachineStore;
use arbiter::raft::store::StoreError;
use arbiter::raft::ReplicatedState;
use futures::stream;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::Membership;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use openraft::StorageHelper;
use openraft::StoredMembership;
use serde::Deserialize;
use serde::Serialize;
use tempfile::TempDir;

/// Set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Put {
    key: String,
    value: u64,
}

impl fmt::Display for Put {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}={}", self.key, self.value)
    }
}

/// The value `key` held before the put.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Previous(Option<u64>);

openraft::declare_raft_types!(
    TestConfig:
        D = Put,
        R = Previous,
);

/// A tiny key-value map that also remembers which log indexes carried commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kv {
    values: BTreeMap<String, u64>,
    command_indexes: Vec<u64>,
}

impl ReplicatedState for Kv {
    type Command = Put;
    type Response = Previous;

    fn apply(&mut self, index: u64, cmd: &Put) -> Previous {
        self.command_indexes.push(index);
        Previous(self.values.insert(cmd.key.clone(), cmd.value))
    }
}

type Log = LogStore<TestConfig>;
type Sm = StateMachineStore<TestConfig, Kv>;

/// Builds each store in a fresh temporary directory, removed when the guard drops.
struct RedbBuilder;

impl StoreBuilder<TestConfig, Log, Sm, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, Log, Sm), StorageError<TestConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TestConfig::err_from_error(&e)))?;
        let (log, sm) = store::open::<TestConfig, Kv>(dir.path())
            .map_err(|e| StorageError::write(TestConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite() -> Result<(), StorageError<TestConfig>> {
    Suite::test_all(RedbBuilder).await
}

// ---- helpers -------------------------------------------------------------------------------

fn log_id(term: u64, index: u64) -> LogIdOf<TestConfig> {
    let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new_committed(term, 1);
    LogIdOf::<TestConfig>::new(leader, index)
}

fn blank(term: u64, index: u64) -> EntryOf<TestConfig> {
    EntryOf::<TestConfig>::new_blank(log_id(term, index))
}

fn put(term: u64, index: u64, key: &str, value: u64) -> EntryOf<TestConfig> {
    let cmd = Put {
        key: key.to_owned(),
        value,
    };
    EntryOf::<TestConfig>::new_normal(log_id(term, index), cmd)
}

fn members(ids: &[u64]) -> Membership<u64, openraft::BasicNode> {
    let voters: BTreeSet<u64> = ids.iter().copied().collect();
    Membership::new_with_defaults(vec![voters], [])
}

fn membership(term: u64, index: u64, ids: &[u64]) -> EntryOf<TestConfig> {
    EntryOf::<TestConfig>::new_membership(log_id(term, index), members(ids))
}

fn open(dir: &TempDir) -> (Log, Sm) {
    store::open::<TestConfig, Kv>(dir.path()).expect("open store")
}

async fn append(log: &mut Log, entries: Vec<EntryOf<TestConfig>>) {
    let (tx, rx) = TestConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush callback").expect("flush ok");
}

async fn apply(sm: &mut Sm, entries: Vec<EntryOf<TestConfig>>) {
    let items = entries.into_iter().map(|e| Ok::<_, io::Error>((e, None)));
    sm.apply(stream::iter(items)).await.expect("apply");
}

fn state_of(sm: &Sm) -> Kv {
    sm.applied().read().unwrap().state.clone()
}

// ---- durability ----------------------------------------------------------------------------

#[tokio::test]
async fn reopen_keeps_vote_committed_log_and_snapshot_state() {
    let dir = tempfile::tempdir().unwrap();
    let vote = VoteOf::<TestConfig>::new_committed(3, 1);
    let entries = vec![
        membership(1, 0, &[1, 2, 3]),
        put(1, 1, "a", 1),
        put(1, 2, "b", 2),
        put(2, 3, "a", 3),
        put(2, 4, "c", 4),
    ];
    {
        let (mut log, mut sm) = open(&dir);
        log.save_vote(&vote).await.unwrap();
        append(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(2, 3))).await.unwrap();

        apply(&mut sm, entries[..3].to_vec()).await;
        let snap = sm
            .try_create_snapshot_builder(true)
            .await
            .unwrap()
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 2)));
        // Applied after the snapshot: lost on restart, recovered by re-applying the log.
        apply(&mut sm, entries[3..4].to_vec()).await;
        assert_eq!(*sm.applied_index().borrow(), 3);
    }

    let (mut log, mut sm) = open(&dir);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);

    // The state machine restarts from the snapshot.
    let (last_applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 2)));
    assert_eq!(
        mem,
        StoredMembership::new(Some(log_id(1, 0)), members(&[1, 2, 3]))
    );
    assert_eq!(*sm.applied_index().borrow(), 2);
    let restored = state_of(&sm);
    assert_eq!(restored.command_indexes, vec![1, 2]);
    assert_eq!(restored.values.get("a"), Some(&1));

    // openraft re-applies the committed log after the snapshot, and no further.
    StorageHelper::new(&mut log, &mut sm)
        .with_id(1)
        .get_initial_state()
        .await
        .unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 3)));
    assert_eq!(*sm.applied_index().borrow(), 3);
    let state = state_of(&sm);
    assert_eq!(state.command_indexes, vec![1, 2, 3]);
    assert_eq!(state.values.get("a"), Some(&3));
    assert_eq!(state.values.get("c"), None);
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (0..=10).map(|i| blank(1, i)).collect();
    {
        let (mut log, _sm) = open(&dir);
        append(&mut log, entries.clone()).await;
        log.purge(log_id(1, 4)).await.unwrap();
        log.truncate_after(Some(log_id(1, 8))).await.unwrap();
    }

    let (mut log, _sm) = open(&dir);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    assert_eq!(
        log.try_get_log_entries(0..=10).await.unwrap(),
        entries[5..=8].to_vec()
    );

    // Purging everything leaves the purged id as the last log id.
    log.purge(log_id(1, 8)).await.unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open(&dir);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 8)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

#[tokio::test]
async fn installed_snapshot_survives_reopen() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();

    let (_leader_log, mut leader) = open(&leader_dir);
    apply(
        &mut leader,
        vec![
            membership(1, 1, &[1, 2]),
            put(1, 2, "x", 7),
            blank(2, 3),
            put(2, 4, "y", 8),
        ],
    )
    .await;
    let snap = leader
        .try_create_snapshot_builder(true)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .unwrap();
    let expected_state = state_of(&leader);

    {
        let (_log, mut follower) = open(&follower_dir);
        let mut applied = follower.applied_index();
        follower
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert!(applied.has_changed().unwrap());
        assert_eq!(*applied.borrow_and_update(), 4);
        assert_eq!(state_of(&follower), expected_state);
    }

    let (_log, mut follower) = open(&follower_dir);
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot, snap.snapshot);
    assert_eq!(
        follower.applied_state().await.unwrap(),
        (
            Some(log_id(2, 4)),
            StoredMembership::new(Some(log_id(1, 1)), members(&[1, 2]))
        )
    );
    assert_eq!(state_of(&follower), expected_state);
    assert_eq!(*follower.applied_index().borrow(), 4);
}

#[tokio::test]
async fn mismatched_snapshot_is_rejected_and_state_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(&dir);
    apply(&mut sm, vec![put(1, 1, "k", 1)]).await;
    let mut snap = sm
        .try_create_snapshot_builder(true)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .unwrap();
    snap.meta.last_log_id = Some(log_id(1, 9));
    let err = sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let err = sm
        .install_snapshot(&snap.meta, b"garbage".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1)));
}

#[tokio::test]
async fn apply_updates_view_and_publishes_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(&dir);
    let mut applied = sm.applied_index();
    assert_eq!(*applied.borrow_and_update(), 0);

    apply(&mut sm, vec![put(1, 1, "k", 1), put(1, 2, "k", 2)]).await;
    applied.wait_for(|i| *i >= 2).await.unwrap();
    let view = sm.applied();
    let view = view.read().unwrap();
    assert_eq!(view.state.values.get("k"), Some(&2));
    assert_eq!(view.last_applied, Some(log_id(1, 2)));
}

#[tokio::test]
async fn limited_reads_are_bounded_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(&dir);
    let count = store::MAX_ENTRIES_PER_READ as u64 + 10;
    let entries: Vec<_> = (1..=count).map(|i| blank(1, i)).collect();
    append(&mut log, entries).await;
    let got = log.limited_get_log_entries(1, count + 1).await.unwrap();
    assert_eq!(got.len(), store::MAX_ENTRIES_PER_READ);
    assert_eq!(got[0].index(), 1);
    let got = log.limited_get_log_entries(count, count + 1).await.unwrap();
    assert_eq!(got.len(), 1);
}

#[test]
fn identity_is_recorded_checked_and_persistent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _sm) = open(&dir);
        assert_eq!(log.identity().unwrap(), None);
        assert_eq!(
            log.ensure_identity(2, "dr-east").unwrap(),
            IdentityCheck::Recorded
        );
    }
    let (log, _sm) = open(&dir);
    assert_eq!(log.identity().unwrap(), Some((2, "dr-east".to_owned())));
    assert_eq!(
        log.ensure_identity(2, "dr-east").unwrap(),
        IdentityCheck::Matched
    );
    match log.ensure_identity(3, "dr-east") {
        Err(StoreError::IdentityMismatch {
            path,
            found_node_id: 2,
            ..
        }) => assert!(path.starts_with(dir.path())),
        other => panic!("expected identity mismatch, got {other:?}"),
    }
    log.set_identity(3, "dr-west").unwrap();
    assert_eq!(log.identity().unwrap(), Some((3, "dr-west".to_owned())));
}

#[test]
fn second_open_of_a_live_store_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(&dir);
    let err = store::open::<TestConfig, Kv>(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(store::DB_FILE_NAME), "{err}");
}
