//! The only wiring: builds the parts of one coordinator node, runs them in one
//! `JoinSet`, and owns shutdown.
//!
//! [`Node::bind`] does everything that can fail because of the config or the
//! machine (data dir, database, sockets) before anything serves, so a bad
//! config stops the node before it listens. [`Node::run`] then serves until
//! the cancellation token fires and stops every part in order: probes,
//! observations and decisions first, then the API and DNS, then the cluster
//! transport and Raft (whose store is flushed on every write).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use futures::StreamExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::cluster::tls::{self, TlsListener};
use crate::cluster::transport::{Links, unix_millis};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, ConfigError, OnMinority};
use crate::dns::publish::{self, Publishers};
use crate::dns::{self, ZoneView};
use crate::engine;
use crate::health::{Checker, HealthError, Probe};
use crate::metrics::{self, Metrics};
use crate::model::{AppliedState, ApplyOutcome};

/// How often the decision loop checks whether this node is the acting
/// leader, so that a new leader decides within this of taking over.
const DECIDE_TICK: Duration = Duration::from_millis(100);

/// How often the leader re-decides when nothing woke it: what only time
/// changes (a failback delay elapsing, a silent node's reports going stale)
/// is acted on within this. A changed verdict or applied state wakes it at
/// once; a full pass over 10,000 instances every tick would cost more than
/// probing them.
const DECIDE_RECHECK: Duration = Duration::from_secs(1);

/// How many of one pass's decisions (one per service at most) are proposed
/// at once: openraft then commits them in shared log writes, where one at a
/// time a thousand services' first decisions wait for a thousand writes.
const PROPOSALS_IN_FLIGHT: usize = 64;

/// How often the lease is re-checked, which bounds how late a node that
/// loses the majority stops answering (on top of the lease itself).
const LEASE_TICK: Duration = Duration::from_millis(25);

/// How often the stall watch wakes to see how late it woke.
const STALL_TICK: Duration = Duration::from_millis(100);

/// How long the HTTP servers may take to finish requests in flight at shutdown.
const DRAIN: Duration = Duration::from_millis(500);

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
    #[error("cannot set up external DNS publishing: {0}")]
    Publish(String),
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
    #[error("cannot start the thread that renders /metrics: {0}")]
    MetricsThread(std::io::Error),
    #[error("cannot start the thread that runs the health checks: {0}")]
    ProbeThread(std::io::Error),
    #[error("the Raft core stopped: {0}; exiting so that a supervisor restarts the node")]
    Raft(String),
}

/// The sockets a node serves on, already bound.
pub struct Sockets {
    pub rpc: TcpListener,
    pub api: TcpListener,
    pub dns_udp: UdpSocket,
    pub dns_tcp: TcpListener,
}

impl Sockets {
    /// Binds node `id`'s addresses from the config (port 0 binds a free
    /// port; DNS TCP then takes the same port as DNS UDP).
    pub async fn bind(config: &Config, id: u64) -> Result<Sockets, NodeError> {
        let me = config.node(id)?.clone();
        let bind_tcp = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { what, addr, source })
        };
        let (dns_udp, dns_tcp) = bind_dns(me.dns).await?;
        Ok(Sockets {
            dns_tcp,
            dns_udp,
            rpc: bind_tcp("cluster RPC", me.rpc).await?,
            api: bind_tcp("HTTP API", me.api).await?,
        })
    }
}

/// Binds DNS on `addr` over UDP and TCP, on one port. With port 0 the
/// kernel picks a UDP port whose TCP twin may be taken (by anything,
/// including a client's ephemeral port), so a taken pair is tried again on
/// a new port.
async fn bind_dns(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), NodeError> {
    let failed = |what, addr, source| NodeError::Bind { what, addr, source };
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| failed("DNS (UDP)", addr, e))?;
        let bound = udp.local_addr().map_err(|e| failed("DNS (UDP)", addr, e))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(failed("DNS (TCP)", bound, e)),
        }
    }
    Err(last.unwrap_or(NodeError::Stopped("binding DNS")))
}

/// Test hooks: a network the test can cut, and probes it controls.
#[derive(Default)]
pub struct Options {
    pub links: Option<Arc<Links>>,
    /// Replaces the configured probes, per service name.
    pub probes: Option<Vec<(String, Arc<dyn Probe>)>>,
}

/// A node whose sockets are bound and whose store is open, ready to run.
pub struct Node {
    config: Arc<Config>,
    cluster: Cluster,
    checker: Checker,
    health: watch::Receiver<crate::health::LocalHealth>,
    sockets: Sockets,
    /// Shared by the checker, DNS and `GET /metrics`.
    metrics: Metrics,
    /// When `[cluster.tls]` is set, the rpc listener terminates TLS with this.
    rpc_tls: Option<rustls::ServerConfig>,
    /// The `[[publish]]` targets, written by this node while it leads.
    publishers: Publishers,
}

impl Node {
    /// Binds node `id`'s sockets from the config and opens its store.
    pub async fn bind(config: Config, id: u64) -> Result<Node, NodeError> {
        let sockets = Sockets::bind(&config, id).await?;
        Node::new(config, id, sockets, Options::default()).await
    }

    /// Builds node `id` on already-bound sockets.
    pub async fn new(
        config: Config,
        id: u64,
        sockets: Sockets,
        options: Options,
    ) -> Result<Node, NodeError> {
        config.node(id)?;
        let (checker, health) = match options.probes {
            Some(probes) => Checker::with_probes(&config, probes, id)?,
            None => Checker::new(&config)?,
        };
        let metrics = Metrics::new();
        let checker = checker.with_metrics(metrics.clone());
        let rpc_tls = config
            .cluster
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()
            .map_err(ClusterError::from)?;
        let config = Arc::new(config);
        let publishers = Publishers::new(config.clone())
            .map_err(NodeError::Publish)?
            .with_metrics(metrics.clone());
        let cluster = Cluster::start(config.clone(), id, options.links).await?;
        metrics.changes_applied_before_start(cluster.applied().borrow().index);
        Ok(Node {
            config,
            cluster,
            checker,
            health,
            sockets,
            metrics,
            rpc_tls,
            publishers,
        })
    }

    /// The address DNS is served on (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        local_addr(self.sockets.dns_udp.local_addr())
    }

    /// The address of the HTTP API.
    pub fn api_addr(&self) -> SocketAddr {
        local_addr(self.sockets.api.local_addr())
    }

    /// The cluster handle (for tests and status).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Serves until `cancel` fires, then stops every part.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), NodeError> {
        let Node {
            config,
            cluster,
            checker,
            health,
            sockets,
            metrics,
            rpc_tls,
            publishers,
        } = self;
        info!(
            node = cluster.id(),
            dns = %local_addr(sockets.dns_udp.local_addr()),
            rpc = %local_addr(sockets.rpc.local_addr()),
            api = %local_addr(sockets.api.local_addr()),
            rpc_tls = rpc_tls.is_some(),
            zone = %config.dns.zone,
            services = config.services.len(),
            "highlander node started"
        );

        let servers = CancellationToken::new();
        let mut server_tasks: JoinSet<(&'static str, Result<(), NodeError>)> = JoinSet::new();
        match rpc_tls {
            Some(tls) => server_tasks.spawn(serve_http(
                "cluster RPC",
                TlsListener::new(sockets.rpc, tls),
                cluster.router(),
                servers.clone(),
            )),
            None => server_tasks.spawn(serve_http(
                "cluster RPC",
                sockets.rpc,
                cluster.router(),
                servers.clone(),
            )),
        };
        let metrics_router = metrics::router(
            metrics.clone(),
            config.clone(),
            cluster.clone(),
            publishers.board(),
        )
        .map_err(NodeError::MetricsThread)?;
        server_tasks.spawn(serve_http(
            "HTTP API",
            sockets.api,
            api::router(ApiState {
                config: config.clone(),
                cluster: cluster.clone(),
                publish: publishers.board(),
            })
            .merge(metrics_router),
            servers.clone(),
        ));

        let (zone_tx, zone_rx) = watch::channel(Arc::new(ZoneView::build(
            &config,
            &cluster.applied().borrow(),
            true,
        )));
        let lease = match config.dns.on_minority {
            OnMinority::Servfail => dns::Lease::new(),
            OnMinority::Stale => dns::Lease::forever(),
        };
        lease.renew(cluster.lease_deadline());
        let dns_stop = servers.clone();
        let dns_lease = lease.clone();
        let dns_limits = dns::Limits::from(&config.dns);
        let hook_metrics = metrics.clone();
        let stall_metrics = metrics.clone();
        server_tasks.spawn(async move {
            let result = dns::serve_with_metrics(
                sockets.dns_udp,
                sockets.dns_tcp,
                zone_rx,
                dns_lease,
                dns_limits,
                metrics,
                dns_stop,
            )
            .await;
            ("DNS", result.map_err(NodeError::from))
        });

        // Parts that stop first: probes, observations, decisions.
        let work = cancel.child_token();
        let mut tasks = JoinSet::new();
        tasks.spawn(
            checker
                .spawn(work.clone())
                .map_err(NodeError::ProbeThread)?,
        );
        {
            let cluster = cluster.clone();
            let work = work.clone();
            let health = health.clone();
            tasks.spawn(async move { cluster.share_observations(health, work).await });
        }
        {
            let cluster = cluster.clone();
            let work = work.clone();
            tasks.spawn(async move { cluster.bootstrap(work).await });
        }
        tasks.spawn(decide_loop(config.clone(), cluster.clone(), work.clone()));
        // Hooks run on the leader, in their own loops: never awaited by decisions or DNS.
        let hooks = crate::hooks::Hooks::new(&config)
            .on_failure(move |hook| hook_metrics.hook_failed(hook));
        tasks.spawn(hooks.run(Arc::new(cluster.clone()), work.clone()));
        // So do the external DNS publishers, one loop per target.
        tasks.spawn(publishers.run(Arc::new(cluster.clone()), work.clone()));
        tasks.spawn(watch_stalls(
            config.cluster.election_timeout_max,
            stall_metrics,
            work.clone(),
        ));
        tasks.spawn(publish_zone(
            config.clone(),
            cluster.clone(),
            zone_tx,
            lease,
            work.clone(),
        ));

        let failure = tokio::select! {
            _ = cancel.cancelled() => None,
            fatal = cluster.stopped_fatally() => Some(NodeError::Raft(fatal)),
            Some(ended) = server_tasks.join_next() => Some(match ended {
                Ok((_, Err(e))) => e,
                Ok((what, Ok(()))) => NodeError::Stopped(what),
                Err(_) => NodeError::Stopped("a server task"),
            }),
        };

        work.cancel();
        while tasks.join_next().await.is_some() {}
        servers.cancel();
        let drained = tokio::time::timeout(DRAIN * 2, async {
            while server_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("servers did not stop in time; aborting them");
            server_tasks.abort_all();
        }
        cluster.shutdown().await;
        match failure {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

fn local_addr(addr: std::io::Result<SocketAddr>) -> SocketAddr {
    addr.unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Serves `router` on `listener` (plain TCP or [`TlsListener`]) until
/// `stop`, then drains for [`DRAIN`].
async fn serve_http<L>(
    what: &'static str,
    listener: L,
    router: axum::Router,
    stop: CancellationToken,
) -> (&'static str, Result<(), NodeError>)
where
    L: Listener<Addr = SocketAddr>,
{
    let addr = local_addr(listener.local_addr());
    // A no-op tap: axum gives `ConnectInfo<SocketAddr>` (the peer address the
    // handlers log) to `TcpListener` and to any tapped listener, so tapping
    // lets the TLS listener serve the same router unchanged.
    let listener = listener.tap_io(|_| {});
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    (
        what,
        result.map_err(|source| NodeError::Bind { what, addr, source }),
    )
}

/// Rebuilds the DNS view on every applied change, and renews the DNS lease
/// from the cluster's (every [`LEASE_TICK`]; DNS checks the deadline itself
/// on every query, so the tick only bounds how late a renewal comes).
async fn publish_zone(
    config: Arc<Config>,
    cluster: Cluster,
    zone: watch::Sender<Arc<ZoneView>>,
    lease: dns::Lease,
    cancel: CancellationToken,
) {
    let mut applied = cluster.applied();
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_answering = cluster.in_majority();
    loop {
        // `changed()` marks the value seen, so it says itself that it fired.
        let changed = tokio::select! {
            _ = cancel.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return } else { true },
            _ = tick.tick() => false,
        };
        // The lease may hold because this node has applied up to the
        // leader's commit; the view must show what was applied before the
        // lease is renewed on the strength of it, whichever branch woke us.
        if changed || applied.has_changed().is_ok_and(|changed| changed) {
            let state: Arc<AppliedState> = applied.borrow_and_update().clone();
            zone.send_replace(Arc::new(ZoneView::build(&config, &state, true)));
        }
        let deadline = cluster.lease_deadline();
        lease.renew(deadline);
        let answering = deadline.is_some();
        if answering != was_answering {
            if answering {
                info!("in contact with a quorum-holding leader: answering service names");
            } else if config.dns.on_minority == OnMinority::Stale {
                warn!(lease = ?config.cluster.lease, "no quorum-holding leader within the lease: serving possibly stale answers (dns.on_minority = \"stale\")");
            } else {
                warn!(lease = ?config.cluster.lease, "no quorum-holding leader within the lease: answering SERVFAIL for service names");
            }
            was_answering = answering;
        }
    }
}

/// Says when this node stalled: when a timer of [`STALL_TICK`] fired more
/// than `threshold` late (the longest election timeout: Raft's timers are
/// disturbed by a stall that long). The node's other timers most likely
/// fired as late: the process was paused (SIGSTOP, a VM suspended) or
/// starved of CPU, or its monotonic clock jumped, or (less likely) its
/// runtime's threads were all held up. Leases, elections and failover times
/// saw the gap, so an operator reading about them needs to know of it. A
/// stall that begins while this timer runs is reported up to a tick
/// shorter than it was.
async fn watch_stalls(threshold: Duration, metrics: Metrics, cancel: CancellationToken) {
    let mut woke = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = tokio::time::sleep(STALL_TICK) => {}
        }
        let now = tokio::time::Instant::now();
        let late = now
            .saturating_duration_since(woke)
            .saturating_sub(STALL_TICK);
        woke = now;
        if late > threshold {
            warn!(
                late_ms = late.as_millis(),
                "{STALLED}: timers fired later than the election timeout allows (the process was paused or starved of CPU, or its monotonic clock jumped)"
            );
            metrics.stalled(late);
        }
    }
}

/// What [`watch_stalls`] logs.
const STALLED: &str = "this node stalled";

/// While this node is the acting leader, turns the quorum health view into
/// decisions and proposes them through Raft.
async fn decide_loop(config: Arc<Config>, cluster: Cluster, cancel: CancellationToken) {
    let mut applied = cluster.applied();
    let mut tick = tokio::time::interval(DECIDE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    // When the last pass ran while leading; `None` while not leading.
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        let woken_by_change = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => false,
            changed = applied.changed() => if changed.is_err() { return } else { true },
            () = cluster.quorum_changed() => true,
        };
        let leader = cluster.is_acting_leader();
        if leader != was_leader {
            let (_, term, _) = cluster.role();
            if leader {
                info!(term, "gained leadership: deciding");
            } else {
                info!(term, "lost leadership (or its quorum): no longer deciding");
            }
            was_leader = leader;
        }
        if !leader {
            last_pass = None;
            continue;
        }
        if !woken_by_change && last_pass.is_some_and(|at| at.elapsed() < DECIDE_RECHECK) {
            continue;
        }
        last_pass = Some(tokio::time::Instant::now());
        let view = cluster.health_view();
        let state = applied.borrow_and_update().clone();
        let proposals = engine::decide(&config, &state.state, &view, unix_millis())
            .into_iter()
            .map(|command| {
                let command = {
                    let evidence = cluster.evidence(command.service());
                    command.with_evidence(evidence)
                };
                let cluster = &cluster;
                async move {
                    let description = command.to_string();
                    (description, cluster.propose(command).await)
                }
            });
        let mut outcomes = futures::stream::iter(proposals).buffer_unordered(PROPOSALS_IN_FLIGHT);
        while let Some((description, outcome)) = outcomes.next().await {
            match outcome {
                Ok(ApplyOutcome::Applied) => info!(command = %description, "committed"),
                Ok(ApplyOutcome::Unchanged) => {}
                Ok(ApplyOutcome::Rejected { why }) => {
                    warn!(command = %description, %why, "decision rejected")
                }
                Err(e) => {
                    warn!(error = %e, command = %description, "proposal failed");
                    // Retried at the next tick, not a recheck later.
                    last_pass = None;
                }
            }
        }
    }
}

impl publish::Leader for Cluster {
    fn acting_for(&self) -> Option<Duration> {
        Cluster::acting_leader_for(self)
    }

    fn is_acting_leader(&self) -> bool {
        Cluster::is_acting_leader(self)
    }

    fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        Cluster::applied(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalls(metrics: &Metrics) -> Option<(f64, f64)> {
        let text = metrics.render(metrics::ScrapeView::default());
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Some((
            value("highlander_stalls_total")?,
            value("highlander_stalled_seconds_total")?,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_longer_than_the_threshold_is_counted_with_its_length() {
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let watch = tokio::spawn(watch_stalls(
            Duration::from_millis(300),
            metrics.clone(),
            cancel.clone(),
        ));
        // Time moves on in steps of the tick: no stall. Each wait ends half
        // a tick after the watch's last wake-up, so that every jump below
        // comes while it sleeps.
        let half_tick = STALL_TICK / 2;
        tokio::time::sleep(Duration::from_secs(5) + half_tick).await;
        assert_eq!(stalls(&metrics), Some((0.0, 0.0)));
        // Late by less than the threshold: no stall either.
        tokio::time::advance(STALL_TICK + Duration::from_millis(200)).await;
        tokio::time::sleep(Duration::from_secs(1) + half_tick).await;
        assert_eq!(stalls(&metrics), Some((0.0, 0.0)));
        // The clock jumps by 10 s at once, as a paused process sees it.
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (count, seconds) = stalls(&metrics).expect("the stall metrics");
        assert_eq!(count, 1.0);
        assert!(
            (9.8..=10.0).contains(&seconds),
            "stalled {seconds} s for a jump of 10 s"
        );
        cancel.cancel();
        watch.await.expect("the watch ends when cancelled");
    }
}
