//! Prometheus metrics: one [`Metrics`] per node, rendered as OpenMetrics text
//! on `GET /metrics` (served on the node's API address by [`router`]).
//!
//! Two kinds of value live here. Counters and the probe histogram are
//! instrumented where things happen (the health checker, the DNS handler,
//! later the publishers and hooks) and only ever grow. Everything that is a
//! fact about the replicated state or Raft (epochs, the active instance,
//! verdicts, term, leader, applied index, majority) comes from a
//! [`ScrapeView`] snapshot taken for each render, so nothing has to keep
//! those up to date between scrapes: the per-service and per-instance ones
//! are written straight from it as the output is encoded, the node-wide
//! ones are gauges set from it first. `highlander_changes_total` is the one
//! counter fed from the snapshot: it counts the applied state's events whose
//! log index is above the last one counted.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `highlander_service_epoch` | gauge | `service` | the service's current epoch (0 before the first decision) |
//! | `highlander_service_active` | gauge | `service`, `instance` | 1 for the active instance, 0 for every other configured one |
//! | `highlander_changes_total` | counter | `service`, `reason` | changes applied by this process since it started |
//! | `highlander_instance_health` | gauge | `service`, `instance`, `node`, `state` | 1 for the verdict node `node` reports (`state` is `up`, `down` or `unknown`), 0 for the other two |
//! | `highlander_probe_duration_seconds` | histogram | `service`, `kind` | how long this node's probes took |
//! | `highlander_probe_failures_total` | counter | `service`, `kind` | this node's failed probes (timeouts included) |
//! | `highlander_probe_lag_seconds` | histogram | | how late this node's probes started: from the instant a probe was due to its start, waiting for a concurrency permit included |
//! | `highlander_dns_queries_total` | counter | `rcode` | queries this node's DNS handler answered, by response code |
//! | `highlander_dns_rate_limited_total` | counter | `action` | UDP responses over `dns.rate_limit` for their client prefix: `dropped`, or `slipped` (sent truncated) |
//! | `highlander_dns_tcp_refused_total` | counter | | DNS TCP connections closed on accept because `dns.tcp_max_connections` were open, or `dns.tcp_max_connections_per_source` from the client's prefix |
//! | `highlander_raft_term` | gauge | | this node's Raft term |
//! | `highlander_raft_leader` | gauge | | the leader's node id as this node knows it, 0 if none |
//! | `highlander_raft_applied_index` | gauge | | the last log index applied to this node's state |
//! | `highlander_in_majority` | gauge | | 1 while this node answers service names (S3), 0 otherwise |
//! | `highlander_publisher_failures_total` | counter | `publisher`, `kind` | failed passes of an external DNS publisher (`unreachable`, `refused`, `conflict`, `rate-limited`) |
//! | `highlander_publisher_writes_total` | counter | `publisher` | records this node wrote to the target |
//! | `highlander_publisher_in_sync` | gauge | `publisher` | 1 if the target read back equal to the committed choice at the last pass |
//! | `highlander_publisher_active` | gauge | `publisher` | 1 while this node (the leader) publishes to the target |
//! | `highlander_publisher_last_success_timestamp_seconds` | gauge | `publisher` | Unix time of the last pass without an error |
//! | `highlander_hook_failures_total` | counter | `hook` | failed hooks |
//! | `highlander_stalls_total` | counter | | times this node's timers fired later than its election timeout allows: the process was paused or starved of CPU, or its monotonic clock jumped |
//! | `highlander_stalled_seconds_total` | counter | | how late those timers fired, summed |
//!
//! A labelled family appears in the output with its first series:
//! `highlander_dns_queries_total`, `highlander_dns_rate_limited_total` and
//! `highlander_changes_total` (every configured service and reason) are
//! created at zero, the per-service probe families when the checker starts
//! (the node-wide lag histogram at once), the publisher and hook failures
//! with their first
//! failure (none exist yet). Series come out in no particular order within
//! a family.
//!
//! Health is one series per state rather than one gauge coded 1/0/-1, the
//! Prometheus idiom for an enum: `sum by (service, instance)
//! (highlander_instance_health{state="down"})` counts the nodes that see an
//! instance down, and no query has to know a numeric code.
//!
//! It reads the model, the config and (for [`ScrapeView::of`] only) the
//! cluster handle; it never decides or changes anything, and
//! instrumentation never blocks a hot path: counting a DNS query is one
//! atomic add on a counter created up front. Only [`Metrics::render`] takes
//! a lock, to keep two concurrent scrapes from interleaving their refreshes.
//!
//! `highlander_changes_total` counts from the applied state's recent events
//! (at most [`EVENT_HISTORY`](crate::model::EVENT_HISTORY) of them), so
//! more changes than that between two scrapes would be undercounted.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

use crate::cluster::{Cluster, NodeId};
use crate::config::Config;
use crate::model::{AppliedState, PublishBoard, PublishStatus, Reason, Verdict};

/// The `Content-Type` of an OpenMetrics 1.0 text exposition.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Probe duration buckets, in seconds: from a loopback TCP connect to a
/// check that runs into a generous timeout.
/// Scheduling lag is normally well under a millisecond; the buckets
/// resolve the 1–50 ms range where an overloaded node shows, finely below
/// 50 ms (the benchmark's goal is a p99 under 50 ms at 10,000 probes a
/// second, which a bucket ending at 50 ms could not show).
const LAG_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0,
];

const PROBE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The response codes the DNS handler can send, by their wire value, with
/// their label; anything else is counted as `other`.
const RCODES: [(u16, &str); 7] = [
    (0, "noerror"),
    (1, "formerr"),
    (2, "servfail"),
    (3, "nxdomain"),
    (4, "notimp"),
    (5, "refused"),
    (16, "badvers"),
];

/// A node's metrics. Cheap to clone: every clone shares one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Owns every family below (each is a shared handle to the same series).
    registry: Registry,
    /// Epochs, active instances and every node's verdicts, written from
    /// the scrape's snapshot as the registry is encoded.
    state: Arc<StateFamilies>,
    changes: Family<ChangeLabels, Counter>,
    /// Whether `changes` has its series for every service and reason yet.
    changes_created: std::sync::atomic::AtomicBool,
    probe_duration: Family<ProbeLabels, Histogram>,
    probe_failures: Family<ProbeLabels, Counter>,
    /// Node-wide, not per service: every probe shares one scheduler and
    /// one concurrency bound, so lag is a property of the node.
    probe_lag: Histogram,
    /// One counter per entry of [`RCODES`], then `other`: created up front
    /// so that counting a query never touches the family's lock.
    dns_queries: Vec<Counter>,
    /// UDP responses the rate limit dropped, and those it sent truncated.
    dns_dropped: Counter,
    dns_slipped: Counter,
    dns_tcp_refused: Counter,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_applied_index: Gauge,
    in_majority: Gauge,
    publisher_failures: Family<PublisherFailureLabels, Counter>,
    publisher_writes: Family<PublisherLabels, Counter>,
    publisher_in_sync: Family<PublisherLabels, Gauge>,
    publisher_active: Family<PublisherLabels, Gauge>,
    publisher_last_success: Family<PublisherLabels, Gauge>,
    hook_failures: Family<HookLabels, Counter>,
    stalls: Counter,
    stalled_seconds: Counter<f64, AtomicU64>,
    /// The highest log index whose events `changes` has counted. Held for
    /// the whole of a render, so concurrent scrapes neither interleave their
    /// gauge refreshes nor count an event twice.
    changes_counted_through: Mutex<u64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    service: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    service: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublisherLabels {
    publisher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublisherFailureLabels {
    publisher: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

fn probe_histogram() -> Histogram {
    Histogram::new(PROBE_BUCKETS)
}

/// A `u64` as a gauge value; none of ours come near `i64::MAX`.
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Every family registered, with no series yet except the DNS counters
    /// (one per response code, at zero).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("highlander");
        let state = Arc::new(StateFamilies::default());
        registry.register_collector(Box::new(Arc::clone(&state)));
        // prometheus-client adds `_total` to counters itself.
        let changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "changes",
            "Changes of a service's state applied by this process since it started, by reason",
            changes.clone(),
        );
        let probe_duration =
            Family::<ProbeLabels, Histogram>::new_with_constructor(probe_histogram as fn() -> _);
        registry.register_with_unit(
            "probe_duration",
            "How long this node's health probes took",
            Unit::Seconds,
            probe_duration.clone(),
        );
        let probe_failures = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "probe_failures",
            "Health probes by this node that failed or timed out",
            probe_failures.clone(),
        );
        let probe_lag = Histogram::new(LAG_BUCKETS);
        registry.register_with_unit(
            "probe_lag",
            "How late this node's health probes started, from when each was due",
            Unit::Seconds,
            probe_lag.clone(),
        );
        let rcodes = Family::<RcodeLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "DNS queries answered by this node, by response code",
            rcodes.clone(),
        );
        let dns_queries = RCODES
            .iter()
            .map(|(_, name)| *name)
            .chain(["other"])
            .map(|rcode| {
                rcodes.get_or_create_owned(&RcodeLabels {
                    rcode: rcode.into(),
                })
            })
            .collect();
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "dns_rate_limited",
            "UDP responses over the rate limit for their client prefix: dropped, or slipped (sent truncated so the client retries over TCP)",
            limited.clone(),
        );
        let [dns_dropped, dns_slipped] = ["dropped", "slipped"].map(|action| {
            limited.get_or_create_owned(&LimitLabels {
                action: action.into(),
            })
        });
        let dns_tcp_refused = Counter::default();
        registry.register(
            "dns_tcp_refused",
            "DNS TCP connections closed on accept because the most allowed were already open",
            dns_tcp_refused.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let raft_term = gauge(&mut registry, "raft_term", "This node's Raft term");
        let raft_leader = gauge(
            &mut registry,
            "raft_leader",
            "The Raft leader's node id as this node knows it; 0 if it knows none",
        );
        let raft_applied_index = gauge(
            &mut registry,
            "raft_applied_index",
            "The last Raft log index applied to this node's state",
        );
        let in_majority = gauge(
            &mut registry,
            "in_majority",
            "1 while this node is in contact with a quorum-holding leader and answers service names",
        );
        let publisher_failures = Family::<PublisherFailureLabels, Counter>::default();
        registry.register(
            "publisher_failures",
            "Failed passes of an external DNS publisher, by kind: unreachable, refused, conflict or rate-limited",
            publisher_failures.clone(),
        );
        let publisher_writes = Family::<PublisherLabels, Counter>::default();
        registry.register(
            "publisher_writes",
            "Records this node wrote to an external DNS target",
            publisher_writes.clone(),
        );
        let publisher_in_sync = Family::<PublisherLabels, Gauge>::default();
        registry.register(
            "publisher_in_sync",
            "1 if every record read back from the target matched the committed choice at the last pass",
            publisher_in_sync.clone(),
        );
        let publisher_active = Family::<PublisherLabels, Gauge>::default();
        registry.register(
            "publisher_active",
            "1 while this node (the acting leader) publishes to the target",
            publisher_active.clone(),
        );
        let publisher_last_success = Family::<PublisherLabels, Gauge>::default();
        registry.register(
            "publisher_last_success_timestamp_seconds",
            "Unix time of the target's last pass without an error; 0 if none",
            publisher_last_success.clone(),
        );
        let hook_failures = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_failures",
            "Hooks that failed after a committed change",
            hook_failures.clone(),
        );
        let stalls = Counter::default();
        registry.register(
            "stalls",
            "Times this node's timers fired later than its election timeout allows: the process was paused or starved of CPU, or its monotonic clock jumped",
            stalls.clone(),
        );
        let stalled_seconds = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "stalled",
            "How late this node's timers fired in its stalls, summed",
            Unit::Seconds,
            stalled_seconds.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                state,
                changes,
                changes_created: std::sync::atomic::AtomicBool::new(false),
                probe_duration,
                probe_failures,
                probe_lag,
                dns_queries,
                dns_dropped,
                dns_slipped,
                dns_tcp_refused,
                raft_term,
                raft_leader,
                raft_applied_index,
                in_majority,
                publisher_failures,
                publisher_writes,
                publisher_in_sync,
                publisher_active,
                publisher_last_success,
                hook_failures,
                stalls,
                stalled_seconds,
                changes_counted_through: Mutex::new(0),
            }),
        }
    }

    /// Leaves the changes up to log index `applied` uncounted: the node
    /// calls this with the index of the state it loaded from its store, so
    /// `highlander_changes_total` counts only what this process applies.
    pub fn changes_applied_before_start(&self, applied: u64) {
        let mut counted = self
            .inner
            .changes_counted_through
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *counted = (*counted).max(applied);
    }

    /// Counts one DNS response with wire response code `rcode`.
    pub fn dns_query(&self, rcode: u16) {
        let slot = RCODES
            .iter()
            .position(|(code, _)| *code == rcode)
            .unwrap_or(RCODES.len());
        if let Some(counter) = self.inner.dns_queries.get(slot) {
            counter.inc();
        }
    }

    /// Counts one UDP response the rate limit dropped.
    pub fn dns_dropped(&self) {
        self.inner.dns_dropped.inc();
    }

    /// Counts one UDP response the rate limit sent truncated instead.
    pub fn dns_slipped(&self) {
        self.inner.dns_slipped.inc();
    }

    /// Counts one DNS TCP connection closed because too many were open.
    pub fn dns_tcp_refused(&self) {
        self.inner.dns_tcp_refused.inc();
    }

    /// The instruments for probes of `service` with a `kind` check; creates
    /// its series (at zero) if they do not exist yet.
    pub fn probe_instruments(&self, service: &str, kind: &str) -> ProbeInstruments {
        let labels = ProbeLabels {
            service: service.into(),
            kind: kind.into(),
        };
        ProbeInstruments {
            duration: self.inner.probe_duration.get_or_create_owned(&labels),
            failures: self.inner.probe_failures.get_or_create_owned(&labels),
            lag: self.inner.probe_lag.clone(),
        }
    }

    /// Counts one failed pass of the external publisher `name`; `kind`
    /// says how it failed.
    pub fn publisher_failed(&self, name: &str, kind: &str) {
        self.inner
            .publisher_failures
            .get_or_create(&PublisherFailureLabels {
                publisher: name.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Counts one record written by the external publisher `name`.
    pub fn publisher_wrote(&self, name: &str) {
        self.inner
            .publisher_writes
            .get_or_create(&PublisherLabels {
                publisher: name.into(),
            })
            .inc();
    }

    /// Counts one failure of the hook `name`.
    pub fn hook_failed(&self, name: &str) {
        self.inner
            .hook_failures
            .get_or_create(&HookLabels { hook: name.into() })
            .inc();
    }

    /// Counts one stall of this node: its timers fired `late`.
    pub fn stalled(&self, late: Duration) {
        self.inner.stalls.inc();
        self.inner.stalled_seconds.inc_by(late.as_secs_f64());
    }

    /// Sets the per-scrape gauges from `view`, counts the changes in it not
    /// counted yet, and encodes everything as OpenMetrics text (ending with
    /// `# EOF`).
    pub fn render(&self, view: ScrapeView) -> String {
        let inner = &*self.inner;
        let mut counted = inner
            .changes_counted_through
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refresh(&view, &mut counted);
        *inner.state.lock() = Some(view);
        let mut text = String::new();
        // Writing to a String cannot fail, so neither can encoding.
        if let Err(error) = encode(&mut text, &inner.registry) {
            warn!(%error, "encoding the metrics failed; the scrape is incomplete");
        }
        inner.state.lock().take();
        text
    }

    fn refresh(&self, view: &ScrapeView, counted: &mut u64) {
        let inner = &*self.inner;
        let state = &view.applied.state;
        // Created at zero so the first change shows in `rate()`; the
        // services are the config's, which a process never changes.
        if !inner
            .changes_created
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            for service in &view.services {
                for reason in Reason::ALL {
                    let _ = inner.changes.get_or_create(&ChangeLabels {
                        service: service.name.clone(),
                        reason: reason.as_str().into(),
                    });
                }
            }
        }
        for event in state.events.iter().filter(|e| e.index > *counted) {
            inner
                .changes
                .get_or_create(&ChangeLabels {
                    service: event.service.clone(),
                    reason: event.reason.as_str().into(),
                })
                .inc();
        }
        let newest_event = state.events.iter().map(|e| e.index).max().unwrap_or(0);
        *counted = (*counted).max(view.applied.index).max(newest_event);

        inner.raft_term.set(gauge_value(view.term));
        inner.raft_leader.set(gauge_value(view.leader.unwrap_or(0)));
        inner
            .raft_applied_index
            .set(gauge_value(view.applied.index));
        inner.in_majority.set(i64::from(view.in_majority));
        for target in &view.publish {
            let labels = PublisherLabels {
                publisher: target.name.clone(),
            };
            inner
                .publisher_in_sync
                .get_or_create(&labels)
                .set(i64::from(target.in_sync));
            inner
                .publisher_active
                .get_or_create(&labels)
                .set(i64::from(target.active));
            inner
                .publisher_last_success
                .get_or_create(&labels)
                .set(gauge_value(target.last_success.unwrap_or(0) / 1000));
            // Created at zero so the first write shows in `rate()`.
            let _ = inner.publisher_writes.get_or_create(&labels);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The families that are facts about the applied state and the quorum view
/// (`service_epoch`, `service_active`, `instance_health`), written straight
/// from the scrape's [`ScrapeView`] while the registry is encoded. Kept as
/// gauges they were tens of thousands of series at 10,000 instances, each
/// cleared and created again (four label strings apiece) on every scrape.
/// Only what the snapshot holds is written, so nothing lingers at an old
/// value.
#[derive(Default)]
struct StateFamilies {
    /// The snapshot of the render in progress, `None` between renders.
    view: Mutex<Option<ScrapeView>>,
}

impl std::fmt::Debug for StateFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateFamilies")
    }
}

impl StateFamilies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ScrapeView>> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for StateFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.lock();
        let Some(view) = view.as_ref() else {
            return Ok(());
        };
        let state = &view.applied.state;
        {
            let mut family = encoder.encode_descriptor(
                "service_epoch",
                "The service's current epoch (fencing token); 0 before its first decision",
                None,
                MetricType::Gauge,
            )?;
            for service in &view.services {
                let epoch = state.service(&service.name).map_or(0, |s| s.epoch.0);
                family
                    .encode_family(&[("service", service.name.as_str())])?
                    .encode_gauge(&gauge_value(epoch))?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "service_active",
                "1 for the service's active instance, 0 for its other instances",
                None,
                MetricType::Gauge,
            )?;
            for service in &view.services {
                let active = state
                    .service(&service.name)
                    .and_then(|s| s.active.as_deref());
                for instance in &service.instances {
                    let labels = [
                        ("service", service.name.as_str()),
                        ("instance", instance.name.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_gauge(&i64::from(active == Some(instance.name.as_str())))?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "instance_health",
            "1 for the verdict that node reports on the instance (state up, down or unknown), 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for service in &view.services {
            for instance in &service.instances {
                let names = [
                    ("service", service.name.as_str()),
                    ("instance", instance.name.as_str()),
                ];
                for (node, verdict) in &instance.verdicts {
                    for state in [Verdict::Up, Verdict::Down, Verdict::Unknown] {
                        let labels = (names, ([("node", *node)], [("state", state.as_str())]));
                        family
                            .encode_family(&labels)?
                            .encode_gauge(&i64::from(*verdict == state))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The probe series of one service, held by each of its instance tasks so
/// that recording a probe needs no lookup.
#[derive(Clone, Debug)]
pub struct ProbeInstruments {
    duration: Histogram,
    failures: Counter,
    /// The node-wide lag histogram (a shared handle).
    lag: Histogram,
}

impl ProbeInstruments {
    /// Records that a probe started `lag` after it was due.
    pub fn probe_started(&self, lag: Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    /// Records one finished probe.
    pub fn probe_done(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        if !ok {
            self.failures.inc();
        }
    }
}

/// What the per-scrape values are set from: a snapshot of this node's Raft
/// role, applied state and quorum view, read right before a render.
#[derive(Debug, Clone, Default)]
pub struct ScrapeView {
    /// This node's Raft term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether this node answers service names (S3).
    pub in_majority: bool,
    /// The applied state: epochs, active instances and recent events.
    pub applied: Arc<AppliedState>,
    /// Every configured service, in config order.
    pub services: Vec<ServiceView>,
    /// Every `[[publish]]` target's status, as this node's publishers see it.
    pub publish: Vec<PublishStatus>,
}

/// One configured service in a [`ScrapeView`].
#[derive(Debug, Clone, Default)]
pub struct ServiceView {
    pub name: String,
    /// Every configured instance, in config order.
    pub instances: Vec<InstanceView>,
}

/// One configured instance in a [`ServiceView`].
#[derive(Debug, Clone, Default)]
pub struct InstanceView {
    pub name: String,
    /// Each node's latest verdict on the instance.
    pub verdicts: Vec<(NodeId, Verdict)>,
}

impl ScrapeView {
    /// Reads the view of this node now.
    pub fn of(config: &Config, cluster: &Cluster, publish: &PublishBoard) -> ScrapeView {
        let (_, term, leader) = cluster.role();
        ScrapeView {
            term,
            leader,
            in_majority: cluster.in_majority(),
            applied: cluster.applied().borrow().clone(),
            services: config
                .services
                .iter()
                .map(|service| ServiceView {
                    name: service.name.clone(),
                    instances: service
                        .instances
                        .iter()
                        .map(|instance| InstanceView {
                            name: instance.name.clone(),
                            verdicts: cluster.verdicts(&service.name, &instance.name),
                        })
                        .collect(),
                })
                .collect(),
            publish: publish.snapshot(),
        }
    }
}

/// What the `/metrics` handler reads.
#[derive(Clone)]
struct Scrape {
    metrics: Metrics,
    config: Arc<Config>,
    cluster: Cluster,
    publish: PublishBoard,
    renderer: Renderer,
}

/// The name of the thread that renders scrapes (see [`Renderer`]).
pub const RENDER_THREAD: &str = "hl-render";

/// How much lower than the rest of the node the render thread runs, in
/// nice steps: at +10 the scheduler gives it about a tenth of a core the
/// runtime's workers want too.
pub const RENDER_NICE: i32 = 10;

/// Scrapes waiting for the render thread beyond the one it is rendering;
/// more get 503 at once, so a scraper that retries in a loop cannot pile
/// up work.
const RENDER_QUEUE: usize = 2;

/// One thread of its own, at a lower priority than the node's other threads
/// ([`RENDER_NICE`]), that renders every scrape in turn. At 10,000
/// instances a scrape writes some 65,000 series (tens of milliseconds of
/// CPU); rendered on a worker it would hold up every probe and DNS answer
/// queued behind it, and on a blocking thread of equal priority it still
/// takes half of a core the workers need, which is all the core a small
/// machine has. At a lower priority it takes what the workers leave.
#[derive(Clone)]
struct Renderer {
    jobs: std::sync::mpsc::SyncSender<RenderJob>,
}

type RenderJob = Box<dyn FnOnce() + Send>;

impl Renderer {
    /// Starts the thread; it ends once every handle is dropped.
    fn start() -> std::io::Result<Renderer> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<RenderJob>(RENDER_QUEUE);
        std::thread::Builder::new()
            .name(RENDER_THREAD.into())
            .spawn(move || {
                lower_this_threads_priority(RENDER_NICE);
                for job in queue {
                    // A job that panics loses its scrape (its scraper sees
                    // the failure), not the thread.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        warn!("rendering the metrics panicked");
                    }
                }
            })?;
        Ok(Renderer { jobs })
    }

    /// Runs `render` on the thread.
    async fn render<T: Send + 'static>(
        &self,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RenderError> {
        let (done, rendered) = tokio::sync::oneshot::channel();
        let job: RenderJob = Box::new(move || {
            // The scraper may have gone; nothing to do then.
            let _ = done.send(render());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => RenderError::Busy,
            std::sync::mpsc::TrySendError::Disconnected(_) => RenderError::Failed,
        })?;
        rendered.await.map_err(|_| RenderError::Failed)
    }
}

/// Why a scrape got no metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenderError {
    /// [`RENDER_QUEUE`] scrapes wait already.
    Busy,
    /// The render panicked (or the thread is gone).
    Failed,
}

/// Moves the calling thread `steps` nice steps below where it runs now.
/// Lowering one's own priority needs no privilege; if it fails anyway, the
/// thread runs on at the node's priority, which is only slower for probes.
fn lower_this_threads_priority(steps: i32) {
    let (tid, current) = this_threads_nice();
    // SAFETY: setpriority takes plain values, touches no memory of ours,
    // and acts on this thread alone (Linux keeps a nice value per thread).
    if tid == 0 || unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, current + steps) } != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of the metrics render thread; scrapes compete with probes"
        );
    }
}

/// The calling thread's id (0 if it does not fit) and nice value.
fn this_threads_nice() -> (libc::id_t, i32) {
    // SAFETY: gettid and getpriority take plain values and touch no memory
    // of ours.
    unsafe {
        let tid = libc::id_t::try_from(libc::gettid()).unwrap_or(0);
        (tid, libc::getpriority(libc::PRIO_PROCESS, tid))
    }
}

/// `GET /metrics`, to merge into the API router. Fails only if the
/// render thread cannot be started.
pub fn router(
    metrics: Metrics,
    config: Arc<Config>,
    cluster: Cluster,
    publish: PublishBoard,
) -> std::io::Result<Router> {
    Ok(Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape {
            metrics,
            config,
            cluster,
            publish,
            renderer: Renderer::start()?,
        }))
}

/// Renders on the [`Renderer`]'s thread, off the runtime's workers.
async fn scrape(State(scrape): State<Scrape>) -> Response {
    let Scrape {
        metrics,
        config,
        cluster,
        publish,
        renderer,
    } = scrape;
    let rendered = renderer
        .render(move || metrics.render(ScrapeView::of(&config, &cluster, &publish)))
        .await;
    match rendered {
        Ok(text) => ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response(),
        Err(RenderError::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "other scrapes are being rendered; retry in a second\n",
        )
            .into_response(),
        Err(RenderError::Failed) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering the metrics failed; see the node's log\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Command, Epoch, State};

    /// One sample line: `name{label="value",...} value`.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// The `# TYPE` of each family and every sample, checking the framing
    /// OpenMetrics requires: comment lines of a known kind, `# EOF` last.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF:\n{text}");
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in &lines[..lines.len() - 1] {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let kind = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default().to_owned();
                let rest = parts.next().unwrap_or_default().to_owned();
                match kind {
                    "TYPE" => {
                        types.insert(name, rest);
                    }
                    "HELP" | "UNIT" => {}
                    other => panic!("unexpected comment {other:?} in {line:?}"),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().expect("a numeric value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels end with }");
                    let labels = labels
                        .split("\",")
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        (types, samples)
    }

    /// The value of the one sample named `name` with exactly `labels`.
    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut found = samples
            .iter()
            .filter(|s| s.name == name && s.labels == labels);
        let first = found.next()?.value;
        assert!(found.next().is_none(), "{name} {labels:?} appears twice");
        Some(first)
    }

    fn activate(state: &mut State, index: u64, instance: &str, epoch: u64, reason: Reason) {
        let outcome = state.apply(
            index,
            &Command::Activate {
                service: "db".into(),
                instance: instance.into(),
                epoch: Epoch(epoch),
                reason,
                at: 1_000 * index,
                evidence: Default::default(),
            },
        );
        assert_eq!(outcome, crate::model::ApplyOutcome::Applied);
    }

    /// Service `db` with instances db1 and db2, seen by nodes 1 and 2.
    fn view(state: &State, index: u64) -> ScrapeView {
        ScrapeView {
            term: 3,
            leader: Some(2),
            in_majority: true,
            applied: Arc::new(AppliedState {
                index,
                state: state.clone(),
            }),
            services: vec![ServiceView {
                name: "db".into(),
                instances: vec![
                    InstanceView {
                        name: "db1".into(),
                        verdicts: vec![(1, Verdict::Up), (2, Verdict::Down)],
                    },
                    InstanceView {
                        name: "db2".into(),
                        verdicts: vec![(1, Verdict::Unknown), (2, Verdict::Up)],
                    },
                ],
            }],
            publish: vec![PublishStatus {
                name: "route53".into(),
                kind: "rfc2136".into(),
                active: true,
                in_sync: true,
                records: Vec::new(),
                last_success: Some(1_700_000_000_999),
                last_error: None,
                last_error_at: None,
                failures: 0,
                writes: 1,
            }],
        }
    }

    #[test]
    fn render_names_every_family_with_its_labels() {
        let metrics = Metrics::new();
        let mut state = State::default();
        activate(&mut state, 4, "db1", 1, Reason::Initial);
        metrics.dns_query(0);
        metrics.dns_query(0);
        metrics.dns_query(3);
        metrics.dns_query(16);
        metrics.dns_query(9);
        metrics.dns_slipped();
        metrics.dns_dropped();
        metrics.dns_dropped();
        metrics.dns_tcp_refused();
        let probes = metrics.probe_instruments("db", "http");
        probes.probe_done(Duration::from_millis(3), true);
        probes.probe_done(Duration::from_millis(700), false);
        metrics.publisher_failed("route53", "refused");
        metrics.hook_failed("page-oncall");
        metrics.stalled(Duration::from_millis(2500));
        metrics.stalled(Duration::from_millis(500));

        let text = metrics.render(view(&state, 4));
        let (types, samples) = parse(&text);

        let expected_types = [
            ("highlander_service_epoch", "gauge"),
            ("highlander_service_active", "gauge"),
            ("highlander_changes", "counter"),
            ("highlander_instance_health", "gauge"),
            ("highlander_probe_duration_seconds", "histogram"),
            ("highlander_probe_failures", "counter"),
            ("highlander_probe_lag_seconds", "histogram"),
            ("highlander_dns_queries", "counter"),
            ("highlander_dns_rate_limited", "counter"),
            ("highlander_dns_tcp_refused", "counter"),
            ("highlander_raft_term", "gauge"),
            ("highlander_raft_leader", "gauge"),
            ("highlander_raft_applied_index", "gauge"),
            ("highlander_in_majority", "gauge"),
            ("highlander_publisher_failures", "counter"),
            ("highlander_publisher_writes", "counter"),
            ("highlander_publisher_in_sync", "gauge"),
            ("highlander_publisher_active", "gauge"),
            (
                "highlander_publisher_last_success_timestamp_seconds",
                "gauge",
            ),
            ("highlander_hook_failures", "counter"),
            ("highlander_stalls", "counter"),
            ("highlander_stalled_seconds", "counter"),
        ];
        for (name, kind) in expected_types {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert_eq!(types.len(), expected_types.len(), "{types:?}");

        let epoch = value(&samples, "highlander_service_epoch", &[("service", "db")]);
        assert_eq!(epoch, Some(1.0));
        let active = |instance| {
            value(
                &samples,
                "highlander_service_active",
                &[("service", "db"), ("instance", instance)],
            )
        };
        assert_eq!((active("db1"), active("db2")), (Some(1.0), Some(0.0)));
        let changes = |reason| {
            value(
                &samples,
                "highlander_changes_total",
                &[("service", "db"), ("reason", reason)],
            )
        };
        assert_eq!(changes("initial"), Some(1.0));
        assert_eq!(changes("failover"), Some(0.0), "every reason exists at 0");
        let health = |instance, node, state| {
            value(
                &samples,
                "highlander_instance_health",
                &[
                    ("service", "db"),
                    ("instance", instance),
                    ("node", node),
                    ("state", state),
                ],
            )
        };
        assert_eq!(health("db1", "1", "up"), Some(1.0));
        assert_eq!(health("db1", "1", "down"), Some(0.0));
        assert_eq!(health("db1", "1", "unknown"), Some(0.0));
        assert_eq!(health("db1", "2", "down"), Some(1.0));
        assert_eq!(health("db2", "1", "unknown"), Some(1.0));
        assert_eq!(health("db2", "2", "up"), Some(1.0));

        let probe = [("service", "db"), ("kind", "http")];
        let probe_count = value(&samples, "highlander_probe_duration_seconds_count", &probe);
        assert_eq!(probe_count, Some(2.0));
        let sum = value(&samples, "highlander_probe_duration_seconds_sum", &probe);
        assert!(sum.is_some_and(|s| (s - 0.703).abs() < 1e-9), "{sum:?}");
        let le = |bound| {
            let labels = [("service", "db"), ("kind", "http"), ("le", bound)];
            value(
                &samples,
                "highlander_probe_duration_seconds_bucket",
                &labels,
            )
        };
        assert_eq!(
            (le("0.005"), le("0.5"), le("1.0")),
            (Some(1.0), Some(1.0), Some(2.0))
        );
        assert_eq!(le("+Inf"), Some(2.0));
        let failures = value(&samples, "highlander_probe_failures_total", &probe);
        assert_eq!(failures, Some(1.0));

        let dns = |rcode| {
            value(
                &samples,
                "highlander_dns_queries_total",
                &[("rcode", rcode)],
            )
        };
        assert_eq!(dns("noerror"), Some(2.0));
        assert_eq!(dns("nxdomain"), Some(1.0));
        assert_eq!(dns("badvers"), Some(1.0));
        assert_eq!(dns("other"), Some(1.0));
        assert_eq!(dns("servfail"), Some(0.0), "every rcode exists at 0");
        let limited = |action| {
            value(
                &samples,
                "highlander_dns_rate_limited_total",
                &[("action", action)],
            )
        };
        assert_eq!(
            (limited("dropped"), limited("slipped")),
            (Some(2.0), Some(1.0))
        );
        assert_eq!(
            value(&samples, "highlander_dns_tcp_refused_total", &[]),
            Some(1.0)
        );
        assert_eq!(value(&samples, "highlander_stalls_total", &[]), Some(2.0));
        assert_eq!(
            value(&samples, "highlander_stalled_seconds_total", &[]),
            Some(3.0)
        );

        assert_eq!(value(&samples, "highlander_raft_term", &[]), Some(3.0));
        assert_eq!(value(&samples, "highlander_raft_leader", &[]), Some(2.0));
        assert_eq!(
            value(&samples, "highlander_raft_applied_index", &[]),
            Some(4.0)
        );
        assert_eq!(value(&samples, "highlander_in_majority", &[]), Some(1.0));
        let failed = [("publisher", "route53"), ("kind", "refused")];
        let failed = value(&samples, "highlander_publisher_failures_total", &failed);
        assert_eq!(failed, Some(1.0));
        let publisher = [("publisher", "route53")];
        let gauge = |name| value(&samples, name, &publisher);
        assert_eq!(gauge("highlander_publisher_in_sync"), Some(1.0));
        assert_eq!(gauge("highlander_publisher_active"), Some(1.0));
        assert_eq!(
            gauge("highlander_publisher_last_success_timestamp_seconds"),
            Some(1_700_000_000.0)
        );
        assert_eq!(gauge("highlander_publisher_writes_total"), Some(0.0));
        let hook = [("hook", "page-oncall")];
        assert_eq!(
            value(&samples, "highlander_hook_failures_total", &hook),
            Some(1.0)
        );
    }

    #[test]
    fn changes_are_counted_once_per_event_across_renders() {
        let metrics = Metrics::new();
        let mut state = State::default();
        activate(&mut state, 1, "db1", 1, Reason::Initial);
        let changes = |text: &str, reason| {
            let (_, samples) = parse(text);
            let labels = [("service", "db"), ("reason", reason)];
            value(&samples, "highlander_changes_total", &labels)
        };

        let first = metrics.render(view(&state, 1));
        let second = metrics.render(view(&state, 1));
        assert_eq!(changes(&first, "initial"), Some(1.0));
        // Series come out in no particular order within a family.
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(
            sorted(&first),
            sorted(&second),
            "the same state renders the same values"
        );

        activate(&mut state, 5, "db2", 2, Reason::Failover);
        let third = metrics.render(view(&state, 5));
        assert_eq!(changes(&third, "initial"), Some(1.0));
        assert_eq!(changes(&third, "failover"), Some(1.0));

        // A stale snapshot (a scrape racing an apply) counts nothing again
        // and takes nothing back.
        let mut older = State::default();
        activate(&mut older, 1, "db1", 1, Reason::Initial);
        let fourth = metrics.render(view(&older, 1));
        assert_eq!(changes(&fourth, "initial"), Some(1.0));
        assert_eq!(changes(&fourth, "failover"), Some(1.0));
    }

    #[test]
    fn changes_applied_before_start_are_not_counted() {
        let metrics = Metrics::new();
        let mut state = State::default();
        activate(&mut state, 1, "db1", 1, Reason::Initial);
        metrics.changes_applied_before_start(1);
        activate(&mut state, 2, "db2", 2, Reason::Switchover);

        let (_, samples) = parse(&metrics.render(view(&state, 2)));
        let changes = |reason| {
            let labels = [("service", "db"), ("reason", reason)];
            value(&samples, "highlander_changes_total", &labels)
        };
        assert_eq!(changes("initial"), Some(0.0));
        assert_eq!(changes("switchover"), Some(1.0));
    }

    #[test]
    fn counters_never_go_down_across_renders() {
        let metrics = Metrics::new();
        let state = State::default();
        let totals = |text: &str| -> Vec<(String, BTreeMap<String, String>, f64)> {
            let (_, samples) = parse(text);
            samples
                .into_iter()
                .filter(|s| s.name.ends_with("_total") || s.name.ends_with("_count"))
                .map(|s| (s.name, s.labels, s.value))
                .collect()
        };
        metrics.dns_query(0);
        metrics
            .probe_instruments("db", "tcp")
            .probe_done(Duration::from_millis(1), false);
        let before = totals(&metrics.render(view(&state, 0)));
        metrics.dns_query(2);
        let after = totals(&metrics.render(view(&state, 0)));
        for (name, labels, old) in &before {
            let new = after
                .iter()
                .find(|(n, l, _)| n == name && l == labels)
                .map(|(_, _, v)| *v);
            assert!(
                new.is_some_and(|new| new >= *old),
                "{name} {labels:?}: {old} -> {new:?}"
            );
        }
    }

    #[test]
    fn a_service_without_a_decision_has_epoch_zero_and_no_active_instance() {
        let metrics = Metrics::new();
        let (_, samples) = parse(&metrics.render(view(&State::default(), 0)));
        let epoch = value(&samples, "highlander_service_epoch", &[("service", "db")]);
        assert_eq!(epoch, Some(0.0));
        for instance in ["db1", "db2"] {
            let labels = [("service", "db"), ("instance", instance)];
            assert_eq!(
                value(&samples, "highlander_service_active", &labels),
                Some(0.0)
            );
        }
        assert_eq!(
            value(&samples, "highlander_raft_applied_index", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn a_verdict_no_longer_reported_leaves_no_series_behind() {
        let metrics = Metrics::new();
        let state = State::default();
        metrics.render(view(&state, 0));
        let mut fewer = view(&state, 0);
        fewer.services[0].instances[0]
            .verdicts
            .retain(|(node, _)| *node == 1);
        let (_, samples) = parse(&metrics.render(fewer));
        let from_node_2 = samples.iter().filter(|s| {
            s.name == "highlander_instance_health"
                && s.labels.get("instance").map(String::as_str) == Some("db1")
                && s.labels.get("node").map(String::as_str) == Some("2")
        });
        assert_eq!(from_node_2.count(), 0);
    }

    #[test]
    fn every_reason_is_listed_once() {
        // A new reason fails to compile here until it is added to the match,
        // and then this test until it is added to `Reason::ALL`.
        let position = |reason: Reason| match reason {
            Reason::Initial => 0,
            Reason::Failover => 1,
            Reason::Failback => 2,
            Reason::Switchover => 3,
            Reason::Drain => 4,
            Reason::AllDown => 5,
            Reason::Recovered => 6,
        };
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(position(reason), i, "{reason}");
        }
    }

    fn own_nice() -> i32 {
        this_threads_nice().1
    }

    #[tokio::test]
    async fn scrapes_render_on_a_thread_of_lower_priority_than_the_callers() {
        let renderer = Renderer::start().expect("start the render thread");
        let (name, nice) = renderer
            .render(|| {
                let name = std::thread::current().name().map(str::to_owned);
                (name, own_nice())
            })
            .await
            .expect("rendered");
        assert_eq!(name.as_deref(), Some(RENDER_THREAD));
        // Nice values stop at 19.
        assert_eq!(nice, (own_nice() + RENDER_NICE).min(19));
    }

    #[tokio::test]
    async fn scrapes_beyond_the_queue_are_turned_away_and_a_panic_loses_only_its_own() {
        let renderer = Renderer::start().expect("start the render thread");
        // Hold the thread on one scrape until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let renderer = renderer.clone();
            async move {
                renderer
                    .render(move || {
                        let _ = started.send(());
                        let _ = held.recv();
                        "first"
                    })
                    .await
            }
        });
        running.await.expect("the first scrape started");
        // The queue holds RENDER_QUEUE more; the next is turned away.
        let queued: Vec<_> = (0..RENDER_QUEUE)
            .map(|i| {
                let renderer = renderer.clone();
                tokio::spawn(async move { renderer.render(move || i).await })
            })
            .collect();
        // Each queued scrape takes its place on its first poll, which this
        // (single-threaded) runtime gives it while the test sleeps.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(renderer.render(|| usize::MAX).await, Err(RenderError::Busy));
        release.send(()).expect("release the first scrape");
        assert_eq!(first.await.expect("join"), Ok("first"));
        for (i, job) in queued.into_iter().enumerate() {
            assert_eq!(job.await.expect("join"), Ok(i));
        }
        let panicked = renderer
            .render(|| -> u8 { panic!("a render that fails") })
            .await;
        assert_eq!(panicked, Err(RenderError::Failed));
        assert_eq!(renderer.render(|| 7).await, Ok(7), "the thread lives on");
    }
}
