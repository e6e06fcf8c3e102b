//! The only wiring: builds the parts of one coordinator node, runs them in one
//! `JoinSet`, and owns shutdown.
//!
//! [`Node::bind`] does everything that can fail because of the config or the
//! machine (data dir, database, sockets) before anything serves, so a bad
//! config stops the node before it listens. [`Node::run`] then serves until
//! the cancellation token fires and stops every part in order: probes and the
//! decision loop first, then DNS, then Raft (whose store is flushed on every
//! write).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, ConfigError};
use crate::dns::{self, ZoneView};
use crate::engine;
use crate::health::{Checker, HealthError, LocalHealth};
use crate::model::{AppliedState, ApplyOutcome, UnixMillis};

/// How often the leader re-evaluates even when no verdict changed, so a
/// failback delay that elapses is acted on without waiting for a probe.
const DECIDE_TICK: Duration = Duration::from_millis(250);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS server failed: {0}")]
    Dns(#[from] dns::DnsError),
    #[error("DNS server stopped unexpectedly: {0}")]
    DnsStopped(String),
}

/// A node whose sockets are bound and whose store is open, ready to run.
pub struct Node {
    config: Arc<Config>,
    cluster: Cluster,
    checker: Checker,
    health: watch::Receiver<LocalHealth>,
    dns_udp: UdpSocket,
    dns_tcp: TcpListener,
}

impl Node {
    /// Opens node `id`'s store, starts its Raft member and binds its DNS
    /// sockets (port 0 binds any free port; see [`Node::dns_addr`]).
    pub async fn bind(config: Config, id: u64) -> Result<Node, NodeError> {
        let me = config.node(id)?.clone();
        let (checker, health) = Checker::new(&config)?;
        let dns_udp = UdpSocket::bind(me.dns)
            .await
            .map_err(|source| NodeError::Bind {
                what: "DNS (UDP)",
                addr: me.dns,
                source,
            })?;
        // TCP on the same port as UDP, also when the config asked for port 0.
        let tcp_addr = dns_udp.local_addr().map_err(|source| NodeError::Bind {
            what: "DNS (UDP)",
            addr: me.dns,
            source,
        })?;
        let dns_tcp = TcpListener::bind(tcp_addr)
            .await
            .map_err(|source| NodeError::Bind {
                what: "DNS (TCP)",
                addr: tcp_addr,
                source,
            })?;
        let cluster = Cluster::start(&config, id).await?;
        Ok(Node {
            config: Arc::new(config),
            cluster,
            checker,
            health,
            dns_udp,
            dns_tcp,
        })
    }

    /// The address DNS is served on (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `cancel` fires, then stops every part.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), NodeError> {
        let Node {
            config,
            cluster,
            checker,
            health,
            dns_udp,
            dns_tcp,
        } = self;
        info!(
            node = cluster.id(),
            dns = %dns_udp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            zone = %config.dns.zone,
            services = config.services.len(),
            "highlander node started"
        );

        // Parts that stop first: probes and decisions.
        let work = cancel.child_token();
        let mut tasks = JoinSet::new();
        tasks.spawn(checker.run(work.clone()));
        tasks.spawn(decide_loop(
            config.clone(),
            cluster.clone(),
            health,
            work.clone(),
        ));

        let (zone_tx, zone_rx) = watch::channel(Arc::new(ZoneView::build(
            &config,
            &cluster.applied().borrow(),
            true,
        )));
        tasks.spawn(publish_zone(
            config.clone(),
            cluster.applied(),
            zone_tx,
            work.clone(),
        ));
        let dns_stop = CancellationToken::new();
        let mut dns_task = tokio::spawn(dns::serve(dns_udp, dns_tcp, zone_rx, dns_stop.clone()));

        let failure = tokio::select! {
            _ = cancel.cancelled() => None,
            result = &mut dns_task => Some(match result {
                Ok(Ok(())) => NodeError::DnsStopped("it returned".into()),
                Ok(Err(e)) => NodeError::Dns(e),
                Err(join) => NodeError::DnsStopped(join.to_string()),
            }),
        };

        work.cancel();
        while tasks.join_next().await.is_some() {}
        dns_stop.cancel();
        if failure.is_none() {
            let _ = dns_task.await;
        }
        cluster.shutdown().await;
        match failure {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Rebuilds the DNS view on every applied change.
async fn publish_zone(
    config: Arc<Config>,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    zone: watch::Sender<Arc<ZoneView>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
        let state = applied.borrow_and_update().clone();
        zone.send_replace(Arc::new(ZoneView::build(&config, &state, true)));
    }
}

/// While this node is the acting leader, turns health into decisions and
/// proposes them through Raft.
async fn decide_loop(
    config: Arc<Config>,
    cluster: Cluster,
    mut health: watch::Receiver<LocalHealth>,
    cancel: CancellationToken,
) {
    let mut applied = cluster.applied();
    let mut tick = tokio::time::interval(DECIDE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = health.changed() => if changed.is_err() { return },
            changed = applied.changed() => if changed.is_err() { return },
        }
        if !cluster.is_acting_leader() {
            continue;
        }
        let view = health.borrow_and_update().view(tokio::time::Instant::now());
        let state = applied.borrow_and_update().clone();
        for command in engine::decide(&config, &state.state, &view, unix_now()) {
            let description = command.to_string();
            match cluster.propose(command).await {
                Ok(ApplyOutcome::Applied) => info!(command = %description, "committed"),
                Ok(ApplyOutcome::Unchanged) => {}
                Ok(ApplyOutcome::Rejected { why }) => {
                    warn!(command = %description, %why, "decision rejected")
                }
                Err(e) => warn!(error = %e, command = %description, "proposal failed"),
            }
        }
    }
}

fn unix_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
