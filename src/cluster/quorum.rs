//! The leader's quorum health view: every node's verdicts on every instance,
//! combined into the one [`HealthView`] that `engine::decide` acts on (S2).
//!
//! Every node probes every instance and sends its verdicts (already through
//! its own rise/fall hysteresis) to every node as [`Observations`]; a
//! node's own verdicts enter the same way, read where its checker keeps
//! them ([`QuorumView::record_local`]). With `health_quorum =
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
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
    /// Node `node`'s current verdict on every instance it checks: what
    /// [`LocalObservations`] encodes, as it decodes.
    #[cfg(test)]
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

/// This node's [`Observations`] as they are sent, borrowed from its
/// [`LocalHealth`] rather than copied: at 10,000 instances a copy is 20,000
/// strings a second.
pub struct LocalObservations<'a> {
    pub node: u64,
    pub health: &'a LocalHealth,
}

impl Serialize for LocalObservations<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        /// An [`ObservedVerdict`] that borrows its names.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            service: &'a str,
            instance: &'a str,
            verdict: Verdict,
        }

        struct Verdicts<'a>(&'a LocalHealth);

        impl Serialize for Verdicts<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(service, instance, status)| Borrowed {
                    service,
                    instance,
                    verdict: status.verdict,
                }))
            }
        }

        let mut observations = serializer.serialize_struct("Observations", 2)?;
        observations.serialize_field("node", &self.node)?;
        observations.serialize_field("verdicts", &Verdicts(self.health))?;
        observations.end()
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
/// Every node keeps one from its start, fed with every node's reports, so a
/// node that becomes leader decides from a complete view at once. Everything
/// starts unknown, and the time a combined verdict has held starts counting
/// when this view first computes it, not when the nodes first agreed. A
/// node that has just started therefore waits a full `failback_delay`
/// before failing back, even if the better instance had been up for longer:
/// conservative on purpose, since failback is optional and a wrong one is a
/// needless change (L3). Failover is not delayed: it needs a down verdict,
/// not a held one.
#[derive(Debug, Clone)]
pub struct QuorumView {
    /// Whose verdicts count.
    quorum: HealthQuorum,
    /// This node's id; in [`HealthQuorum::Leader`] mode its verdicts alone count.
    leader: u64,
    /// The configured node ids, ascending: the electorate, whether or not
    /// they report.
    nodes: Vec<u64>,
    /// Every configured instance, sorted by service then instance: the
    /// order a node lists them in its report, and their positions in
    /// `view`.
    instances: Vec<InstanceQuorum>,
    /// The combined verdicts as of the last `view`, kept so that each pass
    /// updates them in place; also how names are looked up.
    view: HealthView,
    /// Counts the combined verdicts that changed, in `record` or `view`:
    /// the leader re-decides when it moves.
    generation: u64,
}

#[derive(Debug, Clone)]
struct InstanceQuorum {
    service: Arc<str>,
    name: String,
    /// How old a report may be and still count (from the service's interval).
    stale_after: Duration,
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
        // Sorted and without duplicates (which validation refuses anyway),
        // as every node's report lists them.
        let services: BTreeMap<&str, (Duration, BTreeSet<&str>)> = config
            .services
            .iter()
            .map(|s| {
                let stale_after = s.check.interval * STALE_AFTER_INTERVALS + STALE_MARGIN;
                let instances = s.instances.iter().map(|i| i.name.as_str()).collect();
                (s.name.as_str(), (stale_after, instances))
            })
            .collect();
        let mut instances = Vec::new();
        let mut view = HealthView::default();
        let unknown = InstanceHealth::new(Verdict::Unknown, Duration::ZERO);
        for (service, (stale_after, names)) in services {
            let service: Arc<str> = Arc::from(service);
            for name in names {
                view.set(&service, name, unknown);
                instances.push(InstanceQuorum {
                    service: service.clone(),
                    name: name.to_owned(),
                    stale_after,
                    reports: BTreeMap::new(),
                    combined: None,
                });
            }
        }
        QuorumView {
            quorum: config.cluster.health_quorum,
            leader,
            nodes,
            instances,
            view,
            generation: 0,
        }
    }

    /// How many times a combined verdict has changed so far; unchanged
    /// means the [`view`](Self::view) differs only in how long each
    /// verdict has held (or in verdicts going stale, which `view` finds).
    pub fn generation(&self) -> u64 {
        self.generation
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
        let verdicts = observations
            .verdicts
            .iter()
            .map(|v| (v.service.as_str(), v.instance.as_str(), v.verdict));
        self.record_each(observations.node, verdicts, now)
    }

    /// [`QuorumView::record`] for node `node`'s own [`LocalHealth`], read
    /// where it is rather than copied into [`Observations`] first.
    pub fn record_local(&mut self, node: u64, local: &LocalHealth, now: Instant) -> Ignored {
        let verdicts = local
            .iter()
            .map(|(service, instance, status)| (service, instance, status.verdict));
        self.record_each(node, verdicts, now)
    }

    fn record_each<'a>(
        &mut self,
        node: u64,
        verdicts: impl Iterator<Item = (&'a str, &'a str, Verdict)>,
        now: Instant,
    ) -> Ignored {
        let mut ignored = Ignored::default();
        if self.nodes.binary_search(&node).is_err() {
            ignored.unknown_node = Some(node);
            return ignored;
        }
        let (quorum, leader, majority) = (self.quorum, self.leader, self.majority());
        let mut changes = 0;
        for (listed, (service, instance, verdict)) in verdicts.enumerate() {
            // A node with the same config lists every instance in the same
            // order as this view: the n-th verdict is then on the n-th
            // instance, which two string comparisons confirm.
            let position = match self.instances.get(listed) {
                Some(i) if i.name == instance && *i.service == *service => Some(listed),
                _ => self.view.position(service, instance),
            };
            let Some(entry) = position.and_then(|p| self.instances.get_mut(p)) else {
                ignored
                    .unknown_instances
                    .push((service.to_owned(), instance.to_owned()));
                continue;
            };
            entry.reports.insert(
                node,
                Report {
                    verdict,
                    received: now,
                },
            );
            // Settle now rather than at the next `view`, so that `held_for`
            // counts from the report that changed the outcome.
            let (_, changed) = entry.settle(quorum, leader, majority, now);
            changes += u64::from(changed);
        }
        self.generation += changes;
        ignored
    }

    /// The combined view at `now`, for `engine::decide`: every configured
    /// instance with its combined verdict and how long that has held.
    /// Verdicts that went stale since the last call change here.
    pub fn view(&mut self, now: Instant) -> HealthView {
        let (quorum, leader, majority) = (self.quorum, self.leader, self.majority());
        let mut changes = 0;
        for (position, instance) in self.instances.iter_mut().enumerate() {
            let (health, changed) = instance.settle(quorum, leader, majority, now);
            changes += u64::from(changed);
            self.view.set_at(position, health);
        }
        self.generation += changes;
        self.view.clone()
    }

    /// Each configured node's latest verdict on `instance` of `service`, in
    /// node id order, unknown where a node never reported or its report is
    /// stale. Empty if the instance is not configured. For the status API.
    pub fn per_node(&self, service: &str, instance: &str, now: Instant) -> Vec<(u64, Verdict)> {
        let Some(entry) = self
            .view
            .position(service, instance)
            .and_then(|p| self.instances.get(p))
        else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .map(|&node| (node, entry.fresh(node, now)))
            .collect()
    }
}

impl InstanceQuorum {
    /// Node `node`'s verdict if it is fresh at `now`, else unknown. A report
    /// still counts at exactly `stale_after` old and stops counting after it.
    fn fresh(&self, node: u64, now: Instant) -> Verdict {
        match self.reports.get(&node) {
            Some(r) if now.saturating_duration_since(r.received) <= self.stale_after => r.verdict,
            _ => Verdict::Unknown,
        }
    }

    /// The combined verdict at `now`, ignoring how long it has held.
    fn combine(&self, quorum: HealthQuorum, leader: u64, majority: usize, now: Instant) -> Verdict {
        match quorum {
            HealthQuorum::Leader => self.fresh(leader, now),
            HealthQuorum::Majority => {
                // Only nodes that reported can vote; `reports` holds
                // configured nodes only, and silence is an abstention.
                let (mut up, mut down) = (0, 0);
                for &node in self.reports.keys() {
                    match self.fresh(node, now) {
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
    /// changed (or was never computed), and returns it with how long it
    /// held, and whether it changed.
    fn settle(
        &mut self,
        quorum: HealthQuorum,
        leader: u64,
        majority: usize,
        now: Instant,
    ) -> (InstanceHealth, bool) {
        let verdict = self.combine(quorum, leader, majority, now);
        let (since, changed) = match self.combined {
            Some((held, since)) if held == verdict => (since, false),
            _ => {
                self.combined = Some((verdict, now));
                (now, true)
            }
        };
        let health = InstanceHealth::new(verdict, now.saturating_duration_since(since));
        (health, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with nodes `ids` (written in the given order), whose
    /// `health_quorum` is `quorum`, and two services: `db` (db1, db2) checked
    /// every second, so its reports go stale after 4 s, and `web` (web1)
    /// checked every 2 s, stale after 7 s.
    fn config(ids: &[u64], quorum: &str) -> Config {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").expect("write secret");
        let mut text =
            format!("[cluster]\nsecret_file = \"secret\"\nhealth_quorum = \"{quorum}\"\n");
        for id in ids {
            text.push_str(&format!(
                "[[cluster.nodes]]\nid = {id}\nrpc = \"127.0.0.1:{}\"\ndns = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
                7100 + id,
                5300 + id,
                8100 + id
            ));
        }
        text.push_str(
            r#"
[dns]
zone = "svc.example."

[[services]]
name = "db"
[services.check]
kind = "tcp"
interval = "1s"
timeout = "500ms"
[[services.instances]]
name = "db1"
address = "10.0.0.11:5432"
a = "10.0.0.11"
[[services.instances]]
name = "db2"
address = "10.0.0.12:5432"
a = "10.0.0.12"

[[services]]
name = "web"
[services.check]
kind = "tcp"
interval = "2s"
timeout = "500ms"
[[services.instances]]
name = "web1"
address = "10.0.0.21:80"
a = "10.0.0.21"
"#,
        );
        Config::parse(&dir.path().join("highlander.toml"), &text).expect("valid config")
    }

    fn three_nodes() -> Config {
        config(&[1, 2, 3], "majority")
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Node `node`'s report with one verdict per `(service, instance, verdict)`.
    fn report(node: u64, verdicts: &[(&str, &str, Verdict)]) -> Observations {
        Observations {
            node,
            verdicts: verdicts
                .iter()
                .map(|&(service, instance, verdict)| ObservedVerdict {
                    service: service.into(),
                    instance: instance.into(),
                    verdict,
                })
                .collect(),
        }
    }

    /// Node `node` says `verdict` about db/db1, at `at`.
    fn db1(view: &mut QuorumView, node: u64, verdict: Verdict, at: Instant) {
        let ignored = view.record(&report(node, &[("db", "db1", verdict)]), at);
        assert!(ignored.is_empty(), "nothing ignored, got {ignored:?}");
    }

    fn db1_verdict(view: &mut QuorumView, now: Instant) -> Verdict {
        view.view(now).get("db", "db1").verdict
    }

    // The leader re-decides when the generation moves, so it must move on
    // every change of a combined verdict and only then.
    #[test]
    fn the_generation_counts_changes_of_a_combined_verdict_only() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        // The first pass settles every instance (unknown) once.
        view.view(t0);
        let settled = view.generation();
        db1(&mut view, 1, Verdict::Up, t0);
        assert_eq!(
            view.generation(),
            settled,
            "one up of three changes nothing"
        );
        db1(&mut view, 2, Verdict::Up, t0);
        assert_eq!(view.generation(), settled + 1, "two up of three is up");
        db1(&mut view, 2, Verdict::Up, t0 + ms(1000));
        db1(&mut view, 3, Verdict::Up, t0 + ms(1000));
        view.view(t0 + ms(1000));
        assert_eq!(
            view.generation(),
            settled + 1,
            "repeated reports change nothing"
        );
        db1(&mut view, 2, Verdict::Down, t0 + ms(2000));
        assert_eq!(view.generation(), settled + 1, "still two up (1 and 3)");
        db1(&mut view, 3, Verdict::Down, t0 + ms(2000));
        assert_eq!(view.generation(), settled + 2, "two down of three is down");
        // Node 2 and 3 fall silent: their reports go stale in `view`.
        db1(&mut view, 1, Verdict::Up, t0 + ms(5000));
        assert_eq!(db1_verdict(&mut view, t0 + ms(6500)), Verdict::Unknown);
        assert_eq!(
            view.generation(),
            settled + 3,
            "stale reports found by view count"
        );
    }

    #[test]
    fn three_nodes_two_down_is_down() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 1, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
        db1(&mut view, 2, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Down);
    }

    #[test]
    fn three_nodes_one_down_one_up_one_silent_is_unknown() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 1, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Up, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
    }

    #[test]
    fn three_nodes_two_up_is_up() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 2, Verdict::Up, t0);
        db1(&mut view, 3, Verdict::Up, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Up);
        // The third node disagreeing does not outvote two.
        db1(&mut view, 1, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Up);
    }

    #[test]
    fn majority_counts_configured_nodes_not_reporting_ones() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        // One of one reporter is all of the reports but not a majority of three.
        db1(&mut view, 1, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Unknown, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
    }

    #[test]
    fn only_the_leader_reporting_down_is_unknown_by_majority_but_down_by_leader() {
        let t0 = Instant::now();
        let mut majority = QuorumView::new(&three_nodes(), 1);
        db1(&mut majority, 1, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut majority, t0), Verdict::Unknown);

        let mut leader = QuorumView::new(&config(&[1, 2, 3], "leader"), 1);
        db1(&mut leader, 1, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut leader, t0), Verdict::Down);
    }

    #[test]
    fn leader_mode_counts_the_leader_alone() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&config(&[1, 2, 3], "leader"), 2);
        db1(&mut view, 1, Verdict::Up, t0);
        db1(&mut view, 3, Verdict::Up, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
        db1(&mut view, 2, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Down);
        // The leader's own report goes stale like anyone's (db: 4 s).
        assert_eq!(db1_verdict(&mut view, t0 + ms(4000)), Verdict::Down);
        assert_eq!(db1_verdict(&mut view, t0 + ms(4001)), Verdict::Unknown);
    }

    #[test]
    fn only_the_leader_cannot_reach_the_active_instance() {
        // The case the prototype got wrong: the leader's own path to db1 is
        // broken while the followers reach it fine.
        let t0 = Instant::now();
        let asymmetric = |view: &mut QuorumView| {
            db1(view, 1, Verdict::Down, t0);
            db1(view, 2, Verdict::Up, t0);
            db1(view, 3, Verdict::Up, t0);
        };
        let mut majority = QuorumView::new(&three_nodes(), 1);
        asymmetric(&mut majority);
        assert_eq!(db1_verdict(&mut majority, t0), Verdict::Up);

        let mut leader = QuorumView::new(&config(&[1, 2, 3], "leader"), 1);
        asymmetric(&mut leader);
        assert_eq!(db1_verdict(&mut leader, t0), Verdict::Down);
    }

    #[test]
    fn five_nodes_need_three() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&config(&[1, 2, 3, 4, 5], "majority"), 1);
        assert_eq!(view.majority(), 3);
        db1(&mut view, 1, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Down, t0);
        db1(&mut view, 4, Verdict::Up, t0);
        db1(&mut view, 5, Verdict::Up, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
        db1(&mut view, 3, Verdict::Down, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Down);
    }

    #[test]
    fn even_cluster_needs_more_than_half() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&config(&[1, 2, 3, 4], "majority"), 1);
        assert_eq!(view.majority(), 3);
        db1(&mut view, 1, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Down, t0);
        db1(&mut view, 3, Verdict::Up, t0);
        db1(&mut view, 4, Verdict::Up, t0);
        assert_eq!(db1_verdict(&mut view, t0), Verdict::Unknown);
    }

    #[test]
    fn a_stale_verdict_is_unknown_exactly_after_the_bound_until_a_fresh_report() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 1, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Down, t0 + ms(500));
        // db is checked every 1 s: 3 × 1 s + 1 s margin = 4 s.
        assert_eq!(db1_verdict(&mut view, t0 + ms(4000)), Verdict::Down);
        assert_eq!(db1_verdict(&mut view, t0 + ms(4001)), Verdict::Unknown);
        assert_eq!(
            view.per_node("db", "db1", t0 + ms(4001)),
            vec![
                (1, Verdict::Unknown),
                (2, Verdict::Down),
                (3, Verdict::Unknown)
            ]
        );
        db1(&mut view, 1, Verdict::Down, t0 + ms(4200));
        assert_eq!(db1_verdict(&mut view, t0 + ms(4200)), Verdict::Down);
        // Now node 2's report, received at 0.5 s, is the one to expire.
        assert_eq!(db1_verdict(&mut view, t0 + ms(4500)), Verdict::Down);
        assert_eq!(db1_verdict(&mut view, t0 + ms(4501)), Verdict::Unknown);
    }

    #[test]
    fn staleness_follows_each_services_interval() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        for node in [1, 2] {
            view.record(
                &report(
                    node,
                    &[("db", "db1", Verdict::Up), ("web", "web1", Verdict::Up)],
                ),
                t0,
            );
        }
        // web is checked every 2 s: 3 × 2 s + 1 s = 7 s; db goes stale at 4 s.
        let later = view.view(t0 + ms(7000));
        assert_eq!(later.get("db", "db1").verdict, Verdict::Unknown);
        assert_eq!(later.get("web", "web1").verdict, Verdict::Up);
        let stale = view.view(t0 + ms(7001));
        assert_eq!(stale.get("web", "web1").verdict, Verdict::Unknown);
    }

    #[test]
    fn held_for_counts_from_the_change_and_restarts_on_a_flip() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 1, Verdict::Up, t0);
        db1(&mut view, 2, Verdict::Up, t0 + ms(300));
        // Up since node 2's report at 0.3 s, not since node 1's.
        let health = view.view(t0 + ms(300)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Up, Duration::ZERO));
        // Fresh reports that keep it up do not restart the clock.
        for at in [1000, 2000, 3000] {
            db1(&mut view, 1, Verdict::Up, t0 + ms(at));
            db1(&mut view, 2, Verdict::Up, t0 + ms(at));
        }
        let health = view.view(t0 + ms(3300)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Up, ms(3000)));
        // One node changing its mind makes it unknown from that report on.
        db1(&mut view, 2, Verdict::Down, t0 + ms(3500));
        let health = view.view(t0 + ms(3700)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Unknown, ms(200)));
        // A majority down: down, counted from the report that made it so.
        db1(&mut view, 3, Verdict::Down, t0 + ms(3800));
        let health = view.view(t0 + ms(5000)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Down, ms(1200)));
    }

    #[test]
    fn held_for_of_a_stale_change_counts_from_the_view_that_saw_it() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 1, Verdict::Up, t0);
        db1(&mut view, 2, Verdict::Up, t0);
        // No report marks the moment a verdict expires; the view notices it.
        let health = view.view(t0 + ms(6000)).get("db", "db1");
        assert_eq!(
            health,
            InstanceHealth::new(Verdict::Unknown, Duration::ZERO)
        );
        let health = view.view(t0 + ms(6500)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Unknown, ms(500)));
    }

    #[test]
    fn a_new_view_starts_unknown_and_counts_held_for_from_its_first_sight() {
        // A new leader builds a new view: the nodes may have agreed for
        // minutes, but this view only knows from when it hears them.
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        let empty = view.view(t0);
        for instance in ["db1", "db2"] {
            assert_eq!(empty.get("db", instance).verdict, Verdict::Unknown);
        }
        db1(&mut view, 2, Verdict::Up, t0 + ms(10_000));
        db1(&mut view, 3, Verdict::Up, t0 + ms(10_000));
        let health = view.view(t0 + ms(10_250)).get("db", "db1");
        assert_eq!(health, InstanceHealth::new(Verdict::Up, ms(250)));
    }

    #[test]
    fn a_node_reporting_twice_counts_once_and_its_latest_verdict_wins() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        db1(&mut view, 2, Verdict::Down, t0);
        db1(&mut view, 2, Verdict::Down, t0 + ms(100));
        assert_eq!(db1_verdict(&mut view, t0 + ms(100)), Verdict::Unknown);
        db1(&mut view, 3, Verdict::Down, t0 + ms(200));
        assert_eq!(db1_verdict(&mut view, t0 + ms(200)), Verdict::Down);
        db1(&mut view, 2, Verdict::Up, t0 + ms(300));
        assert_eq!(db1_verdict(&mut view, t0 + ms(300)), Verdict::Unknown);
        assert_eq!(
            view.per_node("db", "db1", t0 + ms(300)),
            vec![(1, Verdict::Unknown), (2, Verdict::Up), (3, Verdict::Down)]
        );
    }

    #[test]
    fn unknown_nodes_services_and_instances_are_ignored() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&three_nodes(), 1);
        let stranger = report(9, &[("db", "db1", Verdict::Down)]);
        let ignored = view.record(&stranger, t0);
        assert_eq!(ignored.unknown_node, Some(9));
        assert!(!ignored.is_empty());
        assert_eq!(
            ignored.to_string(),
            "node 9 is not in the config; its report was ignored"
        );

        let mixed = report(
            1,
            &[
                ("db", "db1", Verdict::Down),
                ("db", "db9", Verdict::Down),
                ("cache", "c1", Verdict::Down),
            ],
        );
        let ignored = view.record(&mixed, t0);
        assert_eq!(ignored.unknown_node, None);
        assert_eq!(
            ignored.unknown_instances,
            vec![
                ("db".to_owned(), "db9".to_owned()),
                ("cache".to_owned(), "c1".to_owned())
            ]
        );
        assert_eq!(
            ignored.to_string(),
            "verdicts on instances not in the config were ignored: db/db9 cache/c1"
        );
        db1(&mut view, 2, Verdict::Down, t0);
        // Node 9 did not count: nodes 1 and 2 are the majority, and only
        // configured instances appear in the view.
        let seen = view.view(t0);
        assert_eq!(seen.get("db", "db1").verdict, Verdict::Down);
        assert_eq!(view.per_node("db", "db9", t0), Vec::new());
        assert_eq!(view.per_node("cache", "c1", t0), Vec::new());
    }

    #[test]
    fn per_node_lists_every_configured_node_in_id_order() {
        let t0 = Instant::now();
        let mut view = QuorumView::new(&config(&[3, 1, 5], "majority"), 1);
        db1(&mut view, 5, Verdict::Up, t0);
        db1(&mut view, 1, Verdict::Down, t0);
        assert_eq!(
            view.per_node("db", "db1", t0),
            vec![(1, Verdict::Down), (3, Verdict::Unknown), (5, Verdict::Up)]
        );
        assert_eq!(
            view.per_node("db", "db2", t0),
            vec![
                (1, Verdict::Unknown),
                (3, Verdict::Unknown),
                (5, Verdict::Unknown)
            ]
        );
    }

    #[test]
    fn observations_round_trip_through_json() {
        let sent = report(
            2,
            &[
                ("db", "db1", Verdict::Up),
                ("db", "db2", Verdict::Down),
                ("web", "web1", Verdict::Unknown),
            ],
        );
        let json = serde_json::to_string(&sent).expect("serialize");
        assert_eq!(
            json,
            r#"{"node":2,"verdicts":[{"service":"db","instance":"db1","verdict":"up"},{"service":"db","instance":"db2","verdict":"down"},{"service":"web","instance":"web1","verdict":"unknown"}]}"#
        );
        let received: Observations = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(received, sent);
    }

    #[test]
    fn from_local_reports_every_instance_the_node_checks() {
        let config = three_nodes();
        let local = LocalHealth::new(&config, Instant::now());
        let observations = Observations::from_local(3, &local);
        assert_eq!(
            observations,
            report(
                3,
                &[
                    ("db", "db1", Verdict::Unknown),
                    ("db", "db2", Verdict::Unknown),
                    ("web", "web1", Verdict::Unknown),
                ]
            )
        );
    }

    #[test]
    fn a_nodes_own_verdicts_count_as_its_report_of_them_would_in_any_order() {
        let config = three_nodes();
        let t0 = Instant::now();
        let mut local = LocalHealth::new(&config, t0);
        local.set_verdict("db", "db1", Verdict::Down);
        local.set_verdict("web", "web1", Verdict::Up);
        // What a node sends decodes as the observations it stands for.
        let sent = serde_json::to_vec(&LocalObservations {
            node: 2,
            health: &local,
        })
        .expect("encode");
        let received: Observations = serde_json::from_slice(&sent).expect("decode");
        assert_eq!(received, Observations::from_local(2, &local));

        // Read in place, decoded, or listed in another order than this
        // node's (the slow path): the same view.
        let mut in_place = QuorumView::new(&config, 1);
        let mut decoded = QuorumView::new(&config, 1);
        let mut reordered = QuorumView::new(&config, 1);
        for node in [2, 3] {
            assert!(in_place.record_local(node, &local, t0).is_empty());
            let mut report = received.clone();
            report.node = node;
            assert!(decoded.record(&report, t0).is_empty());
            report.verdicts.reverse();
            assert!(reordered.record(&report, t0).is_empty());
        }
        // A peer whose config has an instance more, listed first: every
        // verdict after it is one place off and found by name.
        let mut shifted = QuorumView::new(&config, 1);
        let mut report = received.clone();
        report.verdicts.insert(
            0,
            ObservedVerdict {
                service: "db".into(),
                instance: "db0".into(),
                verdict: Verdict::Down,
            },
        );
        for node in [2, 3] {
            report.node = node;
            let ignored = shifted.record(&report, t0);
            assert_eq!(ignored.unknown_instances, vec![("db".into(), "db0".into())]);
        }
        let view = in_place.view(t0);
        assert_eq!(shifted.view(t0), view);
        let verdict = |service, instance| view.get(service, instance).verdict;
        assert_eq!(verdict("db", "db1"), Verdict::Down);
        assert_eq!(verdict("db", "db2"), Verdict::Unknown);
        assert_eq!(verdict("web", "web1"), Verdict::Up);
        assert_eq!(decoded.view(t0), view);
        assert_eq!(reordered.view(t0), view);
    }
}
