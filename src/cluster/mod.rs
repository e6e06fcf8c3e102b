//! The replicated log and everything about the cluster: openraft wiring, the
//! durable store, the transport between nodes, the health-observation
//! exchange, and the answers to "may this node act as the leader right now"
//! and "is this node in contact with a quorum".
//!
//! Every node probes every instance and shares its verdicts with every other
//! node ([`Cluster::share_observations`]), so each node holds the same
//! [`quorum::QuorumView`] and a new leader decides from a complete view at once.
//!
//! Every change of state is a [`Command`] proposed through Raft and applied by
//! [`store::StateMachine`] on every node in log order; nothing else writes the
//! state. The applied state is published as an immutable [`AppliedState`]
//! snapshot on a `watch` channel that DNS and the API read without locks.
//!
//! Two clocks guard the invariants, because an isolated openraft 0.9 leader
//! keeps reporting `Leader` forever:
//! - **acting leader** (S2): the Raft leader whose last quorum acknowledgement
//!   is younger than `election_timeout_max − 2 × heartbeat`, so no other node
//!   can have been elected meanwhile;
//! - **lease** (S3): a node answers service names only while it has heard
//!   from a quorum-holding leader (or, as leader, from a quorum) within
//!   `cluster.lease`.

pub mod auth;
mod lease;
pub mod quorum;
pub mod store;
pub mod tls;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::health::LocalHealth;
use crate::model::{AppliedState, ApplyOutcome, Command, HealthView, Verdict};
use lease::LeaseClock;
use quorum::{Ignored, LocalObservations, Observations, QuorumView};
use transport::{Client, Links, SendError};

/// Raft node ids are the `id`s of `[[cluster.nodes]]`.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// highlander's Raft types: commands in, apply outcomes out.
    pub TypeConfig:
        D = Command,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// How long a proposal may wait for its commit before it is abandoned. An
/// isolated openraft leader never resolves `client_write` by itself.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a node that is not the lowest id waits before initialising the
/// cluster itself (only if nobody else did): long enough for the lowest id's
/// first heartbeat to arrive, so a late node never deposes a fresh leader.
const BOOTSTRAP_GRACE: Duration = Duration::from_secs(2);

/// How many log entries apart the state machine's snapshots are; also
/// the most a restarted node re-applies from its own log (see `store`).
pub const SNAPSHOT_EVERY: u64 = 1000;

/// The shortest time between two passes of [`Cluster::share_observations`].
/// A pass sends every verdict of this node (and records them here), so
/// one pass per verdict change would cost the number of instances squared
/// when many change together: at 10,000 instances starting up, the node
/// did nothing else for a minute. A lone change still goes out at once;
/// only one following it within the gap waits, which L1's commit round
/// absorbs.
pub const OBSERVATIONS_MIN_GAP: Duration = Duration::from_millis(20);

/// When a loop that acts on a watched value makes its next pass: once per
/// `period`, and at once on a change, but never sooner than `min_gap`
/// after the previous pass. Changes made during the gap go out together in
/// the next pass (the channel keeps only the latest value, so nothing is
/// lost).
struct Passes<T> {
    watched: watch::Receiver<T>,
    tick: tokio::time::Interval,
    min_gap: Duration,
    last: Option<Instant>,
}

impl<T> Passes<T> {
    fn new(watched: watch::Receiver<T>, period: Duration, min_gap: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Passes {
            watched,
            tick,
            min_gap,
            last: None,
        }
    }

    /// Waits until the next pass is due; `false` once `cancel` fires or
    /// the value's sender is gone.
    async fn next(&mut self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = self.tick.tick() => {}
            changed = self.watched.changed() => if changed.is_err() { return false },
        }
        if let Some(ready) = self.last.map(|at| at + self.min_gap) {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                () = tokio::time::sleep_until(ready) => {}
            }
        }
        self.last = Some(Instant::now());
        true
    }
}

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
    #[error("cannot set up TLS for the cluster links: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot build the cluster HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// Why a proposal did not commit; crosses the network when a follower
/// forwards a proposal to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("no leader is known right now (an election may be under way); retry in a second")]
    NoLeader,
    #[error("node {0} is not the leader any more; retry")]
    NotLeader(NodeId),
    #[error("the proposal was not committed within {0:?}: the leader may have lost its quorum")]
    Timeout(Duration),
    #[error("the leader could not be reached: {0}")]
    Unreachable(String),
    #[error("the proposal failed: {0}")]
    Failed(String),
}

/// A running Raft member, its transport client and its view of the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    id: NodeId,
    /// The openraft handle; shut down by [`Cluster::shutdown`].
    raft: Raft<TypeConfig>,
    /// The latest applied state, replaced on every apply.
    applied: watch::Receiver<Arc<AppliedState>>,
    /// Signs and verifies cluster requests.
    auth: Arc<auth::Authenticator>,
    client: Client,
    links: Option<Arc<Links>>,
    /// Every node's latest health verdicts, as reported to this node.
    quorum: Mutex<QuorumView>,
    /// Woken when a recorded report changes a combined verdict.
    quorum_changed: tokio::sync::Notify,
    /// When this node last heard from a quorum-holding leader, and whether
    /// it has caught up since its lease last lapsed (S3).
    lease: Mutex<LeaseClock>,
    /// The highest commit index a leader has told this node about.
    known_commit: AtomicU64,
    /// How stale the leader's quorum acknowledgement may be while it acts.
    max_ack_age: Duration,
    /// The store, watched so that shutdown can wait until openraft's tasks
    /// have let go of it (its state-machine worker outlives `Raft::shutdown`).
    db: std::sync::Weak<redb::Database>,
}

impl Cluster {
    /// Opens node `id`'s store under its data dir and starts its Raft member.
    /// Serve [`Cluster::router`] on the node's `rpc` address, then run
    /// [`Cluster::bootstrap`] to form the cluster on first start.
    pub async fn start(
        config: Arc<Config>,
        id: NodeId,
        links: Option<Arc<Links>>,
    ) -> Result<Cluster, ClusterError> {
        let c = &config.cluster;
        let raft_config = openraft::Config {
            cluster_name: c.name.clone(),
            heartbeat_interval: millis(c.heartbeat),
            election_timeout_min: millis(c.election_timeout_min),
            election_timeout_max: millis(c.election_timeout_max),
            // The state is small; snapshot often so the log stays short.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()?;

        let auth = Arc::new(auth::Authenticator::new(&c.name, &c.secret, id));
        let tls = c.tls.as_ref().map(tls::client_config).transpose()?;
        let client = Client::new(auth.clone(), id, links.clone(), tls)?;
        let db = store::open(&config.node_data_dir(id))?;
        let (machine, applied) =
            store::StateMachine::load(db.clone()).map_err(ClusterError::Load)?;
        let weak_db = Arc::downgrade(&db);
        let log = store::LogStore::new(db);
        let network = transport::Network {
            client: client.clone(),
            addrs: c.nodes.iter().map(|n| (n.id, n.rpc.to_string())).collect(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, machine)
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;

        let max_ack_age = c
            .election_timeout_max
            .saturating_sub(c.heartbeat * 2)
            .max(c.heartbeat);
        Ok(Cluster {
            inner: Arc::new(Inner {
                quorum: Mutex::new(QuorumView::new(&config, id)),
                quorum_changed: tokio::sync::Notify::new(),
                lease: Mutex::new(LeaseClock::new(c.lease)),
                config,
                id,
                raft,
                applied,
                auth,
                client,
                links,
                known_commit: AtomicU64::new(0),
                max_ack_age,
                db: weak_db,
            }),
        })
    }

    /// The cluster endpoints (Raft, observations, forwarded proposals), to
    /// serve on this node's `rpc` address.
    pub fn router(&self) -> axum::Router {
        let contact = self.clone();
        let observer = self.clone();
        let proposer = self.clone();
        transport::router(Arc::new(transport::ServerState {
            raft: self.inner.raft.clone(),
            auth: self.inner.auth.clone(),
            me: self.inner.id,
            members: self
                .inner
                .config
                .cluster
                .nodes
                .iter()
                .map(|n| n.id)
                .collect(),
            links: self.inner.links.clone(),
            on_leader_contact: Box::new(move |commit| {
                contact
                    .inner
                    .known_commit
                    .fetch_max(commit, Ordering::Relaxed);
                contact.touch(Instant::now());
            }),
            on_observations: Box::new(move |obs| observer.record(&obs)),
            propose: Box::new(move |command| {
                let cluster = proposer.clone();
                Box::pin(async move { cluster.propose_here(command).await })
            }),
        }))
    }

    /// Forms the cluster on its very first start: the lowest id initialises
    /// at once; any other node only if, after a grace period, nobody has
    /// (the lowest may be down). Already-initialised nodes do nothing, so
    /// restarted and late nodes simply rejoin.
    pub async fn bootstrap(&self, cancel: CancellationToken) {
        let raft = &self.inner.raft;
        let lowest = self.inner.config.cluster.nodes.first().map(|n| n.id);
        if lowest != Some(self.inner.id) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(BOOTSTRAP_GRACE) => {}
            }
        }
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot tell whether the cluster is initialised");
                return;
            }
        }
        let members = transport::members(&self.inner.config);
        info!(members = ?members.keys().collect::<Vec<_>>(), "initialising the cluster");
        // `NotAllowed` means another node got there first: fine.
        if let Err(e) = raft.initialize(members).await {
            debug!(error = %e, "initialise refused; the cluster already exists");
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The applied state, updated after every apply.
    pub fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.inner.applied.clone()
    }

    /// openraft's metrics, for status and for watching role changes.
    pub fn metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>> {
        self.inner.raft.metrics()
    }

    /// Whether this node may act as the leader now: it is the Raft leader and
    /// a quorum accepted one of its AppendEntries so recently that no other
    /// leader can have been elected since.
    pub fn is_acting_leader(&self) -> bool {
        let now = Instant::now();
        self.leader_quorum_contact()
            .is_some_and(|t| now.saturating_duration_since(t) < self.inner.max_ack_age)
    }

    /// How much longer this node may act as the leader without a newer
    /// quorum acknowledgement; `None` when it may not act now.
    pub fn acting_leader_for(&self) -> Option<Duration> {
        let age = Instant::now().saturating_duration_since(self.leader_quorum_contact()?);
        Some(self.inner.max_ack_age.saturating_sub(age)).filter(|left| !left.is_zero())
    }

    /// If this node is the Raft leader: the send time of the newest
    /// AppendEntries that a majority (this node included) has accepted.
    fn leader_quorum_contact(&self) -> Option<Instant> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || metrics.current_leader != Some(self.inner.id) {
            return None;
        }
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let now = Instant::now();
        let mut acks: Vec<Instant> = voters
            .iter()
            .filter(|&&id| id != self.inner.id)
            .filter_map(|&id| self.inner.client.last_ack(id))
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        // This node counts itself; it needs `majority - 1` others.
        let others_needed = voters.len() / 2;
        match others_needed {
            0 => Some(now),
            n => acks.get(n - 1).copied(),
        }
    }

    /// Until when this node may answer service names (S3): the lease counted
    /// from its last contact with a quorum-holding leader (itself, as leader,
    /// from its quorum's last acknowledgement). `None` while outside the
    /// majority, or while it catches up after its lease lapsed.
    pub fn lease_deadline(&self) -> Option<Instant> {
        if let Some(contact) = self.leader_quorum_contact() {
            self.touch(contact);
        }
        let caught_up =
            || self.inner.applied.borrow().index >= self.inner.known_commit.load(Ordering::Relaxed);
        self.lease().deadline(Instant::now(), caught_up)
    }

    /// Whether this node is in contact with a quorum-holding leader within
    /// the lease (S3): only then does it answer service names.
    pub fn in_majority(&self) -> bool {
        self.lease_deadline().is_some()
    }

    /// Records contact with a quorum-holding leader at `at`.
    fn touch(&self, at: Instant) {
        self.lease().touch(at);
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, LeaseClock> {
        self.inner.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the Raft core has stopped on a fatal error (a storage
    /// failure, such as a full disk), with that error. A core that stopped
    /// never restarts in this process: the node must exit so that its
    /// supervisor starts it again, by which time the cause may be gone.
    pub async fn stopped_fatally(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core stopped".into();
            }
        }
    }

    /// Role, term and leader, for status and logs.
    pub fn role(&self) -> (ServerState, u64, Option<NodeId>) {
        let m = self.inner.raft.metrics().borrow().clone();
        (m.state, m.current_term, m.current_leader)
    }

    /// Records a node's health observations.
    pub fn record(&self, observations: &Observations) {
        self.record_with(observations.node, |quorum, now| {
            quorum.record(observations, now)
        });
    }

    /// Records this node's own verdicts. Called with the checker's health
    /// borrowed (its writer waits meanwhile), so the quorum lock must never
    /// be held while borrowing that health, or the two could deadlock.
    fn record_local(&self, local: &LocalHealth) {
        let id = self.inner.id;
        self.record_with(id, |quorum, now| quorum.record_local(id, local, now));
    }

    /// Records node `node`'s verdicts with `record`, wakes the leader's
    /// decisions if a combined verdict changed, and logs what was ignored.
    fn record_with(&self, node: NodeId, record: impl FnOnce(&mut QuorumView, Instant) -> Ignored) {
        let (ignored, changed) = {
            let mut quorum = self.inner.quorum.lock().unwrap_or_else(|e| e.into_inner());
            let before = quorum.generation();
            let ignored = record(&mut quorum, Instant::now());
            (ignored, quorum.generation() != before)
        };
        if changed {
            self.inner.quorum_changed.notify_one();
        }
        if !ignored.is_empty() {
            // A peer with a different config: worth seeing, but it repeats every interval.
            debug!(node, %ignored, "ignored part of a peer's observations");
        }
    }

    /// Resolves once a report has changed a combined verdict since the
    /// last time it resolved (a change before the call counts): what the
    /// leader waits on to decide at once rather than at its next tick.
    pub async fn quorum_changed(&self) {
        self.inner.quorum_changed.notified().await;
    }

    /// The health view the leader decides from (majority or leader quorum).
    pub fn health_view(&self) -> HealthView {
        self.inner
            .quorum
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view(Instant::now())
    }

    /// Each configured node's latest verdict on `instance` of `service`.
    pub fn verdicts(&self, service: &str, instance: &str) -> Vec<(NodeId, Verdict)> {
        self.inner
            .quorum
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .per_node(service, instance, Instant::now())
    }

    /// Every node's latest verdict on every instance of `service`.
    pub fn evidence(&self, service: &str) -> crate::model::Evidence {
        let Some(config) = self.inner.config.service(service) else {
            return crate::model::Evidence::new();
        };
        config
            .instances
            .iter()
            .map(|i| {
                let seen = self.verdicts(service, &i.name).into_iter();
                let seen = seen.map(|(node, v)| (node.to_string(), v)).collect();
                (i.name.clone(), seen)
            })
            .collect()
    }

    /// Sends this node's verdicts to every node (itself included) on every
    /// change and at least once per check interval, until cancelled. Passes
    /// are at least [`OBSERVATIONS_MIN_GAP`] apart.
    pub async fn share_observations(
        &self,
        health: watch::Receiver<LocalHealth>,
        cancel: CancellationToken,
    ) {
        let period = self
            .inner
            .config
            .services
            .iter()
            .map(|s| s.check.interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut passes = Passes::new(health, period, OBSERVATIONS_MIN_GAP);
        let peers: Vec<_> = self
            .inner
            .config
            .cluster
            .nodes
            .iter()
            .filter(|n| n.id != self.inner.id)
            .map(|n| (n.id, n.rpc.to_string()))
            .collect();
        while passes.next(&cancel).await {
            // Read in place, and encoded once for every peer, while the
            // probes wait to publish their next verdicts: a copy of every
            // name first would cost more.
            let encoded = {
                let local = passes.watched.borrow_and_update();
                self.record_local(&local);
                if peers.is_empty() {
                    continue;
                }
                serde_json::to_vec(&LocalObservations {
                    node: self.inner.id,
                    health: &local,
                })
            };
            let body = match encoded {
                Ok(body) => bytes::Bytes::from(body),
                Err(e) => {
                    warn!(error = %e, "cannot encode this node's health observations");
                    continue;
                }
            };
            let sends = peers.iter().map(|(peer, addr)| {
                let client = &self.inner.client;
                let body = body.clone();
                async move {
                    let sent: Result<(), SendError> = client
                        .post_encoded(*peer, addr, transport::path::OBSERVE, body, period)
                        .await;
                    match sent {
                        Ok(()) => {}
                        Err(e @ SendError::Refused { .. }) => {
                            warn!(error = %e, "a peer refused our health observations")
                        }
                        Err(e) => debug!(error = %e, "cannot send health observations"),
                    }
                }
            });
            futures::future::join_all(sends).await;
        }
    }

    /// Proposes `command` through the leader (forwarding it if this node is
    /// a follower) and waits until it is committed and applied on this node,
    /// so what this node answers next already includes it.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome, ClusterError> {
        let (outcome, index) = self.propose_anywhere(command).await?;
        let mut applied = self.applied();
        let caught_up = applied.wait_for(|state| state.index >= index);
        if tokio::time::timeout(PROPOSAL_TIMEOUT, caught_up)
            .await
            .is_err()
        {
            warn!(index, "committed, but not applied on this node in time");
        }
        Ok(outcome)
    }

    async fn propose_anywhere(
        &self,
        command: Command,
    ) -> Result<(ApplyOutcome, u64), ClusterError> {
        match self.propose_here(command.clone()).await {
            Err(ForwardError::NotLeader(leader)) if leader != self.inner.id => {
                let Some(node) = self
                    .inner
                    .config
                    .cluster
                    .nodes
                    .iter()
                    .find(|n| n.id == leader)
                else {
                    return Err(ForwardError::NoLeader.into());
                };
                let answer: Result<Result<(ApplyOutcome, u64), ForwardError>, SendError> = self
                    .inner
                    .client
                    .post(
                        leader,
                        &node.rpc.to_string(),
                        transport::path::PROPOSE,
                        &command,
                        PROPOSAL_TIMEOUT,
                    )
                    .await;
                match answer {
                    Ok(result) => Ok(result?),
                    Err(e) => Err(ForwardError::Unreachable(e.to_string()).into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// Proposes `command` on this node, which must be the leader; returns
    /// the outcome and the log index it was committed at.
    async fn propose_here(&self, command: Command) -> Result<(ApplyOutcome, u64), ForwardError> {
        let write = self.inner.raft.client_write(command);
        match tokio::time::timeout(PROPOSAL_TIMEOUT, write).await {
            Err(_) => Err(ForwardError::Timeout(PROPOSAL_TIMEOUT)),
            Ok(Ok(response)) => Ok((response.data, response.log_id.index)),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(forward) => match forward.leader_id {
                    Some(leader) => Err(ForwardError::NotLeader(leader)),
                    None => Err(ForwardError::NoLeader),
                },
                None => Err(ForwardError::Failed(e.to_string())),
            },
        }
    }

    /// Stops Raft and waits (up to a second) until the store is closed, so
    /// the same data dir can be opened again at once. The store is flushed on
    /// every write, so nothing is lost either way.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.inner.db.strong_count() > 0 {
            if Instant::now() > deadline {
                warn!("the Raft store is still open one second after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone change is acted on at once; changes right after a pass wait
    /// out the gap and are acted on together, in one pass that sees the
    /// latest value; without changes, passes follow the period.
    #[tokio::test(start_paused = true)]
    async fn passes_follow_a_change_at_once_but_never_closer_than_the_gap() {
        let (tx, rx) = watch::channel(0u32);
        let cancel = CancellationToken::new();
        let ms = Duration::from_millis;
        let mut passes = Passes::new(rx, ms(1000), ms(20));
        let t0 = Instant::now();
        assert!(passes.next(&cancel).await, "the first tick is a pass");
        assert_eq!(t0.elapsed(), ms(0));

        tokio::time::sleep(ms(100)).await;
        tx.send_replace(1);
        assert!(passes.next(&cancel).await);
        assert_eq!(t0.elapsed(), ms(100), "a lone change goes at once");
        assert_eq!(*passes.watched.borrow_and_update(), 1);

        for value in 2..=40 {
            tx.send_replace(value);
        }
        assert!(passes.next(&cancel).await);
        assert_eq!(
            t0.elapsed(),
            ms(120),
            "a change right after a pass waits the gap"
        );
        assert_eq!(
            *passes.watched.borrow_and_update(),
            40,
            "and sees the latest"
        );

        assert!(passes.next(&cancel).await);
        assert_eq!(t0.elapsed(), ms(1000), "no change left: the next tick");

        drop(tx);
        assert!(!passes.next(&cancel).await, "the sender is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_end_when_cancelled() {
        let (_tx, rx) = watch::channel(0u32);
        let cancel = CancellationToken::new();
        let mut passes = Passes::new(rx, Duration::from_secs(1), Duration::from_millis(20));
        assert!(passes.next(&cancel).await);
        cancel.cancel();
        assert!(!passes.next(&cancel).await);
    }
}
