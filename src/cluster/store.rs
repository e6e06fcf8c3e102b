//! Durable Raft storage in one redb file per node: the log, the vote and the
//! state machine's snapshots.
//!
//! Every write is an fsync'd redb transaction before the call returns (or
//! before openraft's flush callback fires), so a vote or an appended entry
//! survives a crash or power loss (S5). The state machine is written with
//! each snapshot (every [`super::SNAPSHOT_EVERY`] entries), not on every
//! apply: at startup openraft re-applies the committed entries after it,
//! which the log still holds, before the node does anything else. Writing
//! the whole state on every apply cost the number of services squared
//! when a thousand of them were first decided.
//!
//! Writes run on Tokio's blocking threads: an fsync can take milliseconds,
//! and on a one-core node the runtime's only worker also answers DNS and
//! runs the health checks.

// openraft's traits fix the error type (`StorageError`, ~224 bytes); our helpers
// return the same type so `?` works throughout.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{NodeId, TypeConfig};
use crate::model::{AppliedState, ApplyOutcome};

/// Log entries by index, serialized as JSON.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records: the vote, the last purged and the last committed log id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The current snapshot, which is the persisted state machine.
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";
/// The whole state machine as earlier versions wrote it on every apply;
/// read at load if newer than the snapshot, and removed by the next one.
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";
/// The last log id the stored snapshot covers, apart from the snapshot so
/// that a newer one can be told from an older one without decoding either.
const SNAPSHOT_AT: &str = "snapshot_at";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// How long opening waits for a previous holder of the database to let go.
const OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens (or creates) the node's database at `dir/raft.redb`.
pub fn open(dir: &Path) -> std::result::Result<Arc<Database>, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
        dir: dir.display().to_string(),
        source,
    })?;
    let file = dir.join("raft.redb");
    // redb releases its file lock only when the last transaction of a closed
    // database ends, which can trail the close by a moment; a node restarted
    // in the same process (or right after its predecessor exited) waits for
    // it instead of failing. A second live node on this data dir still fails.
    let deadline = std::time::Instant::now() + OPEN_RETRY;
    let db = loop {
        match Database::create(&file) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(source) => {
                return Err(OpenError::Database {
                    file: file.display().to_string(),
                    source,
                });
            }
        }
    };
    // Create every table up front: reading a table that no write has created fails.
    let init = || -> std::result::Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.open_table(MACHINE)?;
        txn.commit()?;
        Ok(())
    };
    init().map_err(|source| OpenError::Init {
        file: file.display().to_string(),
        source,
    })?;
    Ok(Arc::new(db))
}

/// Why the node's database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error(
        "cannot open database {file}: {source} (is another highlander process using this data dir?)"
    )]
    Database {
        file: String,
        source: redb::DatabaseError,
    },
    #[error("cannot initialise database {file}: {source}")]
    Init { file: String, source: redb::Error },
}

fn encode<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::result::Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn read_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(table).map_err(|e| e.to_string())?;
    match table.get(key).map_err(|e| e.to_string())? {
        Some(v) => decode(v.value()).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Writes `records` into `table` in one transaction, on a blocking thread:
/// fsync'd before it returns with [`Durability::Immediate`], made durable
/// by the next such write with [`Durability::None`].
async fn write_meta(
    db: &Arc<Database>,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    records: Vec<(&'static str, Vec<u8>)>,
    durability: Durability,
) -> std::result::Result<(), String> {
    write_txn(db, durability, move |txn| {
        let mut t = txn.open_table(table).map_err(|e| e.to_string())?;
        for (key, value) in &records {
            t.insert(*key, value.as_slice())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
}

/// Runs `write` in one write transaction of `durability`, committed once it
/// returns `Ok`, on one of Tokio's blocking threads, so that its fsync does
/// not hold up the runtime's worker. openraft awaits each storage call
/// before making the next, so writes still happen in the order it asks.
async fn write_txn(
    db: &Arc<Database>,
    durability: Durability,
    write: impl FnOnce(&WriteTransaction) -> std::result::Result<(), String> + Send + 'static,
) -> std::result::Result<(), String> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(durability).map_err(|e| e.to_string())?;
        write(&txn)?;
        txn.commit().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("a storage write did not finish: {e}"))?
}

fn io_error(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log store of an opened database.
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn last_purged(&self) -> Result<Option<LogId<NodeId>>> {
        read_meta(&self.db, META, LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&io_error(e)).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let read = || -> std::result::Result<Vec<Entry<TypeConfig>>, String> {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let mut entries = Vec::new();
            for row in table.range(range).map_err(|e| e.to_string())? {
                let (_, value) = row.map_err(|e| e.to_string())?;
                entries.push(decode(value.value()).map_err(|e| e.to_string())?);
            }
            Ok(entries)
        };
        read().map_err(|e| StorageIOError::read_logs(&io_error(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged = self.last_purged()?;
        let last = {
            let read = || -> std::result::Result<Option<LogId<NodeId>>, String> {
                let txn = self.db.begin_read().map_err(|e| e.to_string())?;
                let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                match table.last().map_err(|e| e.to_string())? {
                    Some((_, value)) => {
                        let entry: Entry<TypeConfig> =
                            decode(value.value()).map_err(|e| e.to_string())?;
                        Ok(Some(entry.log_id))
                    }
                    None => Ok(None),
                }
            };
            read().map_err(|e| StorageIOError::read_logs(&io_error(e)))?
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_meta(&self.db, META, vec![(VOTE, bytes)], Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(&io_error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        read_meta(&self.db, META, VOTE).map_err(|e| StorageIOError::read_vote(&io_error(e)).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<std::result::Result<Vec<_>, serde_json::Error>>();
        let write = async {
            let rows = rows.map_err(|e| e.to_string())?;
            // fsync'd when the commit returns.
            write_txn(&self.db, Durability::Immediate, move |txn| {
                let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for (index, bytes) in &rows {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
        };
        match write.await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io_error(&e)));
                Err(StorageIOError::write_logs(&io_error(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        write_txn(&self.db, Durability::Immediate, move |txn| {
            let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&io_error(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        write_txn(&self.db, Durability::Immediate, move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(LAST_PURGED, bytes.as_slice())
                .map_err(|e| e.to_string())?;
            let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&io_error(e)).into())
    }

    /// Saved so that a restart re-applies the committed entries at once
    /// rather than when a leader next says what is committed. Not fsync'd:
    /// the next log append makes it durable, and one lost on a crash only
    /// means re-applying less at startup (the lease does not let a node
    /// answer before it has caught up anyway).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&e))?;
        write_meta(&self.db, META, vec![(COMMITTED, bytes)], Durability::None)
            .await
            .map_err(|e| StorageIOError::write(&io_error(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        read_meta::<Option<LogId<NodeId>>>(&self.db, META, COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(&io_error(e)).into())
    }
}

/// What the state machine persists, and what a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineImage {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    applied: AppliedState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The applied state. After every apply it publishes an immutable copy of
/// the state to `published` (DNS and the API read that); it is persisted
/// with each snapshot (see the module documentation).
pub struct StateMachine {
    db: Arc<Database>,
    image: MachineImage,
    published: watch::Sender<Arc<AppliedState>>,
}

impl StateMachine {
    /// Loads the persisted state machine from an opened database: the state
    /// as of the last snapshot, to which openraft re-applies the committed
    /// entries after it when it starts. The returned receiver sees every
    /// apply from then on.
    pub fn load(
        db: Arc<Database>,
    ) -> std::result::Result<(StateMachine, watch::Receiver<Arc<AppliedState>>), StorageError<NodeId>>
    {
        let image =
            load_image(&db).map_err(|e| StorageIOError::read_state_machine(&io_error(e)))?;
        let (published, receiver) = watch::channel(Arc::new(image.applied.clone()));
        Ok((
            StateMachine {
                db,
                image,
                published,
            },
            receiver,
        ))
    }

    fn publish(&self) {
        // send_replace: publish even when no receiver is left (shutdown).
        self.published
            .send_replace(Arc::new(self.image.applied.clone()));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let data = encode(&self.image).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let last = self.image.last_applied;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.image.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        store_snapshot(&self.db, &stored)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_error(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// The newest state machine the database holds: its snapshot's, or the
/// whole state as earlier versions wrote it on every apply if that is newer
/// (the first snapshot after an upgrade removes it).
fn load_image(db: &Database) -> std::result::Result<MachineImage, String> {
    let snapshot = read_meta::<StoredSnapshot>(db, MACHINE, SNAPSHOT)?
        .map(|stored| {
            let image: MachineImage = decode(&stored.data).map_err(|e| e.to_string())?;
            Ok::<_, String>(MachineImage {
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership,
                applied: image.applied,
            })
        })
        .transpose()?;
    let legacy = read_meta::<MachineImage>(db, MACHINE, APPLIED)?;
    Ok(match (snapshot, legacy) {
        (Some(snapshot), Some(legacy)) if legacy.last_applied > snapshot.last_applied => legacy,
        (Some(snapshot), _) => snapshot,
        (None, legacy) => legacy.unwrap_or_default(),
    })
}

/// Stores `stored` as the current snapshot (fsync'd, on a blocking thread)
/// unless the database already holds a newer one: a snapshot installed from
/// the leader while this node built an older one of its own is kept.
async fn store_snapshot(
    db: &Arc<Database>,
    stored: &StoredSnapshot,
) -> std::result::Result<(), String> {
    let at = stored.meta.last_log_id;
    let bytes = encode(stored).map_err(|e| e.to_string())?;
    let at_bytes = encode(&at).map_err(|e| e.to_string())?;
    write_txn(db, Durability::Immediate, move |txn| {
        let mut table = txn.open_table(MACHINE).map_err(|e| e.to_string())?;
        let held: Option<LogId<NodeId>> = match table.get(SNAPSHOT_AT).map_err(|e| e.to_string())? {
            Some(value) => decode(value.value()).map_err(|e| e.to_string())?,
            None => None,
        };
        // A newer one stays: nothing is written (the commit is empty).
        if held > at {
            return Ok(());
        }
        table
            .insert(SNAPSHOT, bytes.as_slice())
            .map_err(|e| e.to_string())?;
        table
            .insert(SNAPSHOT_AT, at_bytes.as_slice())
            .map_err(|e| e.to_string())?;
        table.remove(APPLIED).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
}

/// A snapshot builder works on a copy, so the state machine goes on applying.
pub struct SnapshotBuilder {
    machine: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        self.machine.build_snapshot().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        Ok((self.image.last_applied, self.image.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.image.last_applied = Some(entry.log_id);
            self.image.applied.index = entry.log_id.index;
            let outcome = match entry.payload {
                EntryPayload::Blank => ApplyOutcome::Unchanged,
                EntryPayload::Normal(command) => {
                    let outcome = self.image.applied.state.apply(entry.log_id.index, &command);
                    if let ApplyOutcome::Rejected { why } = &outcome {
                        tracing::warn!(index = entry.log_id.index, %why, "command rejected when applied");
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    self.image.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ApplyOutcome::Applied
                }
            };
            outcomes.push(outcome);
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            machine: StateMachine {
                db: self.db.clone(),
                image: self.image.clone(),
                published: self.published.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let image: MachineImage =
            decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.image = MachineImage {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            applied: image.applied,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        store_snapshot(&self.db, &stored)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_error(e)))?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, MACHINE, SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &io_error(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let db = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
            let (machine, _) = StateMachine::load(db.clone())?;
            Ok((dir, LogStore::new(db), machine))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn openraft_storage_suite_passes() -> Result<()> {
        Suite::test_all(RedbBuilder)
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
        indexes
            .map(|index| Entry {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    /// A state machine on a new database in `dir`, with `1..=applied`
    /// applied (blank entries).
    async fn machine_with(
        dir: &tempfile::TempDir,
        applied: u64,
    ) -> (
        Arc<Database>,
        StateMachine,
        watch::Receiver<Arc<AppliedState>>,
    ) {
        let db = open(dir.path()).expect("open");
        let (mut machine, published) = StateMachine::load(db.clone()).expect("load");
        machine.apply(blanks(1..=applied)).await.expect("apply");
        (db, machine, published)
    }

    async fn snapshot(machine: &mut StateMachine) -> Snapshot<TypeConfig> {
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot")
    }

    async fn last_applied(machine: &mut StateMachine) -> Option<u64> {
        let (applied, _) = machine.applied_state().await.expect("applied state");
        applied.map(|id| id.index)
    }

    /// The state machine is written with each snapshot, not on every apply:
    /// a reload starts from the snapshot, and openraft re-applies the log
    /// after it (which `save_committed` lets it do at once).
    #[tokio::test]
    async fn a_reload_starts_from_the_last_snapshot_and_knows_what_was_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, mut machine, published) = machine_with(&dir, 3).await;
        snapshot(&mut machine).await;
        machine.apply(blanks(4..=5)).await.expect("apply");
        assert_eq!(published.borrow().index, 5, "every apply is published");
        let mut log = LogStore::new(db.clone());
        log.save_committed(Some(log_id(5)))
            .await
            .expect("save committed");
        drop((machine, log, published));

        let (mut machine, published) = StateMachine::load(db.clone()).expect("reload");
        assert_eq!(last_applied(&mut machine).await, Some(3));
        assert_eq!(published.borrow().index, 3);
        let mut log = LogStore::new(db);
        assert_eq!(log.read_committed().await.expect("read"), Some(log_id(5)));
    }

    /// A snapshot this node built from an older state must not replace one
    /// installed from the leader meanwhile.
    #[tokio::test]
    async fn an_older_snapshot_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, mut machine, _) = machine_with(&dir, 2).await;
        let mut older = machine.get_snapshot_builder().await;

        let leader_dir = tempfile::tempdir().expect("temp dir");
        let (_, mut leader, _) = machine_with(&leader_dir, 9).await;
        let newer = snapshot(&mut leader).await;
        machine
            .install_snapshot(&newer.meta, newer.snapshot)
            .await
            .expect("install");
        older.build_snapshot().await.expect("snapshot");

        let current = machine
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta.last_log_id, Some(log_id(9)));
        drop(machine);
        let (mut machine, _) = StateMachine::load(db).expect("reload");
        assert_eq!(last_applied(&mut machine).await, Some(9));
    }

    /// Earlier versions wrote the whole state on every apply; a node
    /// upgraded from one starts from that state when it is the newer, and
    /// its next snapshot supersedes it.
    #[tokio::test]
    async fn a_state_written_by_an_earlier_version_is_loaded_while_newer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, mut machine, _) = machine_with(&dir, 2).await;
        snapshot(&mut machine).await;
        machine.apply(blanks(3..=4)).await.expect("apply");
        let legacy = encode(&machine.image).expect("encode");
        write_meta(&db, MACHINE, vec![(APPLIED, legacy)], Durability::Immediate)
            .await
            .expect("write");
        drop(machine);

        let (mut machine, _) = StateMachine::load(db.clone()).expect("reload");
        assert_eq!(last_applied(&mut machine).await, Some(4));
        snapshot(&mut machine).await;
        let left = read_meta::<MachineImage>(&db, MACHINE, APPLIED).expect("read");
        assert!(left.is_none(), "the snapshot supersedes the old state");
    }
}
