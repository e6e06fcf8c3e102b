//! The leader's quorum health view: every node's verdicts on every instance,
//! combined into the one [`HealthView`] that `engine::decide` acts on (S2).
//!
//! Every node probes every instance and sends its verdicts (already through
//! its own rise/fall hysteresis) to the leader as [`Observations`]; the
//! leader's own verdicts enter the same way. With `health_quorum =
//! "majority"` an instance is down when a majority of the *configured* nodes
//! report it down, up when a majority report it up, and unknown otherwise, so
//! a leader with a bad network path to an instance cannot fail it over alone
//! and a node that is gone counts as an abstention, never as a vote. With
//! `health_quorum = "leader"` the leader's own verdicts alone count.
//!
//! A report goes stale after [`STALE_AFTER_INTERVALS`] check intervals plus
//! [`STALE_MARGIN`] without a fresh one; a stale verdict counts as unknown.
//!
//! Pure: no I/O and no clock reads. Every time arrives as `now`, so tests use
//! exact instants. It must never decide anything itself: it only says what
//! the nodes agree on.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Config, HealthQuorum};
use crate::health::LocalHealth;
use crate::model::{HealthView, InstanceHealth, Verdict};

/// How many missed check intervals make a node's verdict stale. Followers
/// resend at least once per interval, so three missed reports in a row mean
/// the node is gone or cut off, not merely slow.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Added to the staleness bound so that scheduling jitter and one slow RPC
/// never turn a live node's verdict unknown at short intervals.
pub const STALE_MARGIN: Duration = Duration::from_secs(1);

/// One node's verdicts, as sent to the leader. It crosses the network as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// The reporting node's id (a `[[cluster.nodes]]` id).
    pub node: u64,
    /// One verdict per instance the node checks.
    pub verdicts: Vec<ObservedVerdict>,
}

/// One node's verdict on one instance, after that node's rise/fall hysteresis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVerdict {
    /// A `[[services]]` name.
    pub service: String,
    /// One of that service's `[[services.instances]]` names.
    pub instance: String,
    /// Unknown while the node's own rise/fall thresholds are not yet met.
    pub verdict: Verdict,
}

impl Observations {
    /// Node `node`'s current verdict on every instance it checks.
    pub fn from_local(node: u64, local: &LocalHealth) -> Self {
        let verdicts = local
            .iter()
            .map(|(service, instance, status)| ObservedVerdict {
                service: service.to_owned(),
                instance: instance.to_owned(),
                verdict: status.verdict,
            })
            .collect();
        Observations { node, verdicts }
    }
}

/// What [`QuorumView::record`] could not use, so the caller can log it. A
/// mismatch usually means the nodes run different config files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignored {
    /// The reporting node is not in the config, so its whole report was ignored.
    pub unknown_node: Option<u64>,
    /// `(service, instance)` pairs the config does not list.
    pub unknown_instances: Vec<(String, String)>,
}

impl Ignored {
    /// Whether everything in the report was used.
    pub fn is_empty(&self) -> bool {
        self.unknown_node.is_none() && self.unknown_instances.is_empty()
    }
}

/// One line for a log message; meant for an `Ignored` that is not empty.
impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = self.unknown_node {
            return write!(
                f,
                "node {node} is not in the config; its report was ignored"
            );
        }
        f.write_str("verdicts on instances not in the config were ignored:")?;
        for (service, instance) in &self.unknown_instances {
            write!(f, " {service}/{instance}")?;
        }
        Ok(())
    }
}

/// The leader's view of every configured node's verdicts on every configured
/// instance, and how long each combined verdict has held.
///
/// Built afresh by each new leader: everything starts unknown, and the time
/// a combined verdict has held starts counting when this view first computes
/// it, not when the nodes first agreed. A new leader therefore waits a full
/// `failback_delay` before failing back, even if the better instance had
/// been up for longer under the previous leader: conservative on purpose,
/// since failback is optional and a wrong one is a needless change (L3).
/// Failover is not delayed: it needs a down verdict, not a held one.
#[derive(Debug, Clone)]
pub struct QuorumView {
    /// Whose verdicts count.
    quorum: HealthQuorum,
    /// This node's id; in [`HealthQuorum::Leader`] mode its verdicts alone count.
    leader: u64,
    /// The configured node ids, ascending: the electorate, whether or not
    /// they report.
    nodes: Vec<u64>,
    /// Per configured service, per configured instance.
    services: BTreeMap<String, ServiceQuorum>,
}

#[derive(Debug, Clone)]
struct ServiceQuorum {
    /// How old a report may be and still count (from the service's interval).
    stale_after: Duration,
    instances: BTreeMap<String, InstanceQuorum>,
}

#[derive(Debug, Clone, Default)]
struct InstanceQuorum {
    /// Each node's latest verdict; a node that never reported is absent.
    reports: BTreeMap<u64, Report>,
    /// The combined verdict and since when it has held; `None` until first computed.
    combined: Option<(Verdict, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Report {
    verdict: Verdict,
    received: Instant,
}

impl QuorumView {
    /// An empty view of `config`'s nodes and instances, kept by node `leader`
    /// (this node). Every instance is unknown until reports arrive.
    pub fn new(config: &Config, leader: u64) -> Self {
        let mut nodes: Vec<u64> = config.cluster.nodes.iter().map(|n| n.id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let services = config
            .services
            .iter()
            .map(|s| {
                let instances = s
                    .instances
                    .iter()
                    .map(|i| (i.name.clone(), InstanceQuorum::default()))
                    .collect();
                let quorum = ServiceQuorum {
                    stale_after: s.check.interval * STALE_AFTER_INTERVALS + STALE_MARGIN,
                    instances,
                };
                (s.name.clone(), quorum)
            })
            .collect();
        QuorumView {
            quorum: config.cluster.health_quorum,
            leader,
            nodes,
            services,
        }
    }

    /// How many agreeing nodes make a verdict: a strict majority of the
    /// configured nodes, so two disjoint groups can never both have one.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Records `observations`, received at `now`. A node's newer verdict on an
    /// instance replaces its older one; an instance left out of a report keeps
    /// the node's previous verdict until that goes stale.
    ///
    /// Reports from nodes that are not configured, and verdicts on services
    /// or instances that are not configured, are ignored and returned.
    pub fn record(&mut self, observations: &Observations, now: Instant) -> Ignored {
        let mut ignored = Ignored::default();
        let node = observations.node;
        if self.nodes.binary_search(&node).is_err() {
            ignored.unknown_node = Some(node);
            return ignored;
        }
        let (quorum, leader, majority) = (self.quorum, self.leader, self.majority());
        for observed in &observations.verdicts {
            let Some(service) = self.services.get_mut(&observed.service) else {
                ignored
                    .unknown_instances
                    .push((observed.service.clone(), observed.instance.clone()));
                continue;
            };
            let stale_after = service.stale_after;
            let Some(instance) = service.instances.get_mut(&observed.instance) else {
                ignored
                    .unknown_instances
                    .push((observed.service.clone(), observed.instance.clone()));
                continue;
            };
            instance.reports.insert(
                node,
                Report {
                    verdict: observed.verdict,
                    received: now,
                },
            );
            // Settle now rather than at the next `view`, so that `held_for`
            // counts from the report that changed the outcome.
            instance.settle(quorum, leader, majority, stale_after, now);
        }
        ignored
    }

    /// The combined view at `now`, for `engine::decide`: every configured
    /// instance with its combined verdict and how long that has held.
    /// Verdicts that went stale since the last call change here.
    pub fn view(&mut self, now: Instant) -> HealthView {
        let (quorum, leader, majority) = (self.quorum, self.leader, self.majority());
        let mut view = HealthView::default();
        for (service_name, service) in &mut self.services {
            for (instance_name, instance) in &mut service.instances {
                let health = instance.settle(quorum, leader, majority, service.stale_after, now);
                view.set(service_name, instance_name, health);
            }
        }
        view
    }

    /// Each configured node's latest verdict on `instance` of `service`, in
    /// node id order, unknown where a node never reported or its report is
    /// stale. Empty if the instance is not configured. For the status API.
    pub fn per_node(&self, service: &str, instance: &str, now: Instant) -> Vec<(u64, Verdict)> {
        let Some(service) = self.services.get(service) else {
            return Vec::new();
        };
        let Some(instance) = service.instances.get(instance) else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .map(|&node| (node, instance.fresh(node, service.stale_after, now)))
            .collect()
    }
}

impl InstanceQuorum {
    /// Node `node`'s verdict if it is fresh at `now`, else unknown. A report
    /// still counts at exactly `stale_after` old and stops counting after it.
    fn fresh(&self, node: u64, stale_after: Duration, now: Instant) -> Verdict {
        match self.reports.get(&node) {
            Some(r) if now.saturating_duration_since(r.received) <= stale_after => r.verdict,
            _ => Verdict::Unknown,
        }
    }

    /// The combined verdict at `now`, ignoring how long it has held.
    fn combine(
        &self,
        quorum: HealthQuorum,
        leader: u64,
        majority: usize,
        stale_after: Duration,
        now: Instant,
    ) -> Verdict {
        match quorum {
            HealthQuorum::Leader => self.fresh(leader, stale_after, now),
            HealthQuorum::Majority => {
                // Only nodes that reported can vote; `reports` holds
                // configured nodes only, and silence is an abstention.
                let (mut up, mut down) = (0, 0);
                for &node in self.reports.keys() {
                    match self.fresh(node, stale_after, now) {
                        Verdict::Up => up += 1,
                        Verdict::Down => down += 1,
                        Verdict::Unknown => {}
                    }
                }
                if up >= majority {
                    Verdict::Up
                } else if down >= majority {
                    Verdict::Down
                } else {
                    Verdict::Unknown
                }
            }
        }
    }

    /// Recomputes the combined verdict at `now`, restarts its clock if it
    /// changed (or was never computed), and returns it with how long it held.
    fn settle(
        &mut self,
        quorum: HealthQuorum,
        leader: u64,
        majority: usize,
        stale_after: Duration,
        now: Instant,
    ) -> InstanceHealth {
        let verdict = self.combine(quorum, leader, majority, stale_after, now);
        let since = match self.combined {
            Some((held, since)) if held == verdict => since,
            _ => {
                self.combined = Some((verdict, now));
                now
            }
        };
        InstanceHealth::new(verdict, now.saturating_duration_since(since))
    }
}
