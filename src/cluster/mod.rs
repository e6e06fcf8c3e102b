//! The replicated log: openraft wiring, the durable store, and the answer to
//! "may this node act as the leader right now".
//!
//! Every change of state is a [`Command`] proposed through Raft and applied by
//! [`store::StateMachine`] on every node in log order; nothing else writes the
//! state. The applied state is published as an immutable [`AppliedState`]
//! snapshot on a `watch` channel that DNS and the API read without locks.
//!
//! A cluster of one node is a one-member Raft cluster, not a shortcut: the
//! same log, vote and state machine, initialised by the node itself.
//! Multi-node membership needs the cluster transport; until it exists
//! [`Cluster::start`] refuses a config with more than one node rather than
//! pretending to be highly available.

pub mod quorum;
pub mod store;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, ServerState};
use tokio::sync::watch;

use crate::config::Config;
use crate::model::{AppliedState, ApplyOutcome, Command};

/// Raft node ids are the `id`s of `[[cluster.nodes]]`.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// highlander's Raft types: commands in, apply outcomes out.
    pub TypeConfig:
        D = Command,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// How long a proposal may wait for its commit before it is abandoned. An
/// isolated openraft leader never resolves `client_write` by itself.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster could not start or a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Open(#[from] store::OpenError),
    #[error("cannot load the state machine: {0}")]
    Load(openraft::StorageError<NodeId>),
    #[error("invalid Raft timings: {0}")]
    Timing(#[from] openraft::ConfigError),
    #[error("cannot start Raft: {0}")]
    Start(String),
    #[error(
        "config file {file} lists {count} nodes; this build of highlander runs single-node clusters only (the cluster transport is not built yet), so list exactly one [[cluster.nodes]]"
    )]
    MultiNode { file: String, count: usize },
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("proposal was not committed within {0:?}")]
    Timeout(Duration),
    #[error("proposal failed: {0}")]
    Proposal(String),
}

/// A running Raft member and the state it applies.
#[derive(Clone)]
pub struct Cluster {
    /// The openraft handle; shut down by [`Cluster::shutdown`].
    raft: Raft<TypeConfig>,
    /// The latest applied state, replaced on every apply.
    applied: watch::Receiver<Arc<AppliedState>>,
    /// How stale a leader's quorum acknowledgement may be before the leader
    /// stops acting (half the minimum election timeout: by then a follower
    /// that lost contact may be about to campaign).
    max_ack_age: Duration,
    id: NodeId,
    /// The store, watched so that shutdown can wait until openraft's tasks
    /// have let go of it (its state-machine worker outlives `Raft::shutdown`).
    db: std::sync::Weak<redb::Database>,
}

impl Cluster {
    /// Opens node `id`'s store under its data dir, starts Raft, and forms the
    /// cluster if this is its first start.
    pub async fn start(config: &Config, id: NodeId) -> Result<Cluster, ClusterError> {
        if config.cluster.nodes.len() > 1 {
            return Err(ClusterError::MultiNode {
                file: config.file.display().to_string(),
                count: config.cluster.nodes.len(),
            });
        }
        let c = &config.cluster;
        let raft_config = openraft::Config {
            cluster_name: "highlander".into(),
            heartbeat_interval: millis(c.heartbeat),
            election_timeout_min: millis(c.election_timeout_min),
            election_timeout_max: millis(c.election_timeout_max),
            // The state is small; snapshot often so the log stays short.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()?;

        let db = store::open(&config.node_data_dir(id))?;
        let (machine, applied) =
            store::StateMachine::load(db.clone()).map_err(ClusterError::Load)?;
        let weak_db = Arc::downgrade(&db);
        let log = store::LogStore::new(db);
        let raft = Raft::new(id, Arc::new(raft_config), Network, log, machine)
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;

        if !raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> = config
                .cluster
                .nodes
                .iter()
                .map(|n| (n.id, BasicNode::new(n.rpc.to_string())))
                .collect();
            // `NotAllowed` means another start already initialised it: fine.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "initialize refused; the cluster already exists");
            }
        }
        Ok(Cluster {
            raft,
            applied,
            max_ack_age: c.election_timeout_min / 2,
            id,
            db: weak_db,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The applied state, updated after every apply.
    pub fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.applied.clone()
    }

    /// Whether this node may act as the leader now: it is the Raft leader and
    /// a quorum acknowledged it recently. An isolated openraft leader keeps
    /// reporting `Leader`, so the role alone is not enough.
    pub fn is_acting_leader(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || metrics.current_leader != Some(self.id) {
            return false;
        }
        let voters = metrics.membership_config.membership().voter_ids().count();
        if voters <= 1 {
            return true;
        }
        metrics
            .millis_since_quorum_ack
            .is_some_and(|age| Duration::from_millis(age) < self.max_ack_age)
    }

    /// Role, term and leader, for status and logs.
    pub fn role(&self) -> (ServerState, u64, Option<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        (m.state, m.current_term, m.current_leader)
    }

    /// Proposes `command` and waits until it is committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome, ClusterError> {
        match tokio::time::timeout(PROPOSAL_TIMEOUT, self.raft.client_write(command)).await {
            Err(_) => Err(ClusterError::Timeout(PROPOSAL_TIMEOUT)),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(forward) => Err(ClusterError::NotLeader {
                    leader: forward.leader_id,
                }),
                None => Err(ClusterError::Proposal(e.to_string())),
            },
        }
    }

    /// Stops Raft and waits (up to a second) until the store is closed, so
    /// the same data dir can be opened again at once. The store is flushed on
    /// every write, so nothing is lost either way.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.db.strong_count() > 0 {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("the Raft store is still open one second after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The Raft transport. A one-member cluster never sends an RPC; every peer is
/// reported unreachable until the cluster transport is built.
struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Network;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> Network {
        Network
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "no cluster transport in a single-node build",
    )))
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("no cluster transport in a single-node build"),
        )))
    }
}
