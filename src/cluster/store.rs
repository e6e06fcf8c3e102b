//! Durable Raft storage in one redb file per node: the log, the vote and the
//! applied state machine.
//!
//! Every write is an fsync'd redb transaction before the call returns (or
//! before openraft's flush callback fires), so a vote, an appended entry or an
//! applied change survives a crash or power loss (S5). The state machine
//! persists itself on every `apply`, so a restart serves the last applied
//! state at once, without replaying the log.

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
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{NodeId, TypeConfig};
use crate::model::{AppliedState, ApplyOutcome};

/// Log entries by index, serialized as JSON.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records: the vote, the last purged log id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The applied state machine and the current snapshot.
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

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

fn write_meta(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    records: &[(&str, Vec<u8>)],
) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(table)?;
        for (key, value) in records {
            t.insert(*key, value.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
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
        write_meta(&self.db, META, &[(VOTE, bytes)])
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        read_meta(&self.db, META, VOTE).map_err(|e| StorageIOError::read_vote(&io_error(e)).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = || -> std::result::Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for entry in entries {
                    let bytes = encode(&entry).map_err(|e| e.to_string())?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            // Durability::Immediate (redb's default): fsync'd when commit returns.
            txn.commit().map_err(|e| e.to_string())
        };
        match write() {
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
        let write = || -> std::result::Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let write = || -> std::result::Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                let bytes = encode(&log_id).map_err(|e| e.to_string())?;
                meta.insert(LAST_PURGED, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
                let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        };
        write().map_err(|e| StorageIOError::write_logs(&io_error(e)).into())
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

/// The applied state. After every apply it persists itself and publishes an
/// immutable snapshot of the state to `published` (DNS and the API read that).
pub struct StateMachine {
    db: Arc<Database>,
    image: MachineImage,
    published: watch::Sender<Arc<AppliedState>>,
}

impl StateMachine {
    /// Loads the persisted state machine from an opened database. The
    /// returned receiver sees the state as of the last apply.
    pub fn load(
        db: Arc<Database>,
    ) -> std::result::Result<(StateMachine, watch::Receiver<Arc<AppliedState>>), StorageError<NodeId>>
    {
        let image: MachineImage = read_meta(&db, MACHINE, APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(&io_error(e)))?
            .unwrap_or_default();
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

    fn persist(&self) -> Result<()> {
        let bytes = encode(&self.image).map_err(|e| StorageIOError::write_state_machine(&e))?;
        write_meta(&self.db, MACHINE, &[(APPLIED, bytes)])
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
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
        let bytes = encode(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_meta(&self.db, MACHINE, &[(SNAPSHOT, bytes)])
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
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
        self.persist()?;
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
        let snapshot_bytes = encode(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let image_bytes =
            encode(&self.image).map_err(|e| StorageIOError::write_state_machine(&e))?;
        write_meta(
            &self.db,
            MACHINE,
            &[(SNAPSHOT, snapshot_bytes), (APPLIED, image_bytes)],
        )
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
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
}
