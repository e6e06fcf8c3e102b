//! Plain data shared by every part of highlander: the replicated [`State`], the
//! [`Command`]s that change it, and the [`HealthView`] the engine decides from.
//!
//! This module does no I/O and reads no clock: every time it needs arrives as an
//! argument, so [`State::apply`] gives the same result on every node that applies
//! the same log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many committed changes the state keeps for `GET /v1/events` and the
/// dashboard; older ones are dropped (the Raft log itself is compacted too).
pub const EVENT_HISTORY: usize = 1000;

/// The fencing token of a service: it grows by one at every change of active
/// instance and never goes back, so a receiver that has seen epoch `n` can
/// refuse anything older.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that the next change of active instance must carry.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch, as read by the leader that proposed a
/// command. Only used to tell people when something happened, never to decide.
pub type UnixMillis = u64;

/// Why the active instance of a service changed (or why it did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The service had no active instance yet.
    Initial,
    /// The active instance went down and a healthy one took over.
    Failover,
    /// A better-priority instance had been healthy for `failback_delay`.
    Failback,
    /// An operator asked for the change.
    Switchover,
    /// The active instance was drained for maintenance.
    Drain,
    /// Every instance is down; the last active one is kept (fail-static).
    AllDown,
    /// The active instance answers again after every instance was down.
    Recovered,
}

impl Reason {
    /// Every reason, so that a per-reason series can exist before its first
    /// change (a counter that appears at 1 hides that change from `rate()`).
    pub const ALL: [Reason; 7] = [
        Reason::Initial,
        Reason::Failover,
        Reason::Failback,
        Reason::Switchover,
        Reason::Drain,
        Reason::AllDown,
        Reason::Recovered,
    ];

    /// The lowercase name used in the API, metrics and hooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::Failover => "failover",
            Reason::Failback => "failback",
            Reason::Switchover => "switchover",
            Reason::Drain => "drain",
            Reason::AllDown => "all-down",
            Reason::Recovered => "recovered",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to the replicated state. Every command is a Raft log entry; it is
/// applied on every node in log order.
///
/// Commands that depend on the current state carry the epoch they were decided
/// against (`epoch` is the *next* epoch for [`Command::Activate`], the current
/// one otherwise). A command whose epoch no longer fits is rejected when
/// applied, so a decision made by a deposed leader can never overwrite a newer
/// one even if it reaches the log (S1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Command {
    /// Make `instance` the active instance of `service` at `epoch`.
    Activate {
        service: String,
        instance: String,
        epoch: Epoch,
        reason: Reason,
        at: UnixMillis,
        /// The health each node reported when the change was decided.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        evidence: Evidence,
    },
    /// Record that every instance of `service` is down while the active one
    /// (still at `epoch`) is kept.
    MarkAllDown {
        service: String,
        epoch: Epoch,
        at: UnixMillis,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        evidence: Evidence,
    },
    /// Clear the all-down mark: the active instance (still at `epoch`) is up.
    ClearAllDown {
        service: String,
        epoch: Epoch,
        at: UnixMillis,
    },
    /// Put `instance` in maintenance: it is never chosen while drained.
    Drain {
        service: String,
        instance: String,
        at: UnixMillis,
    },
    /// Take `instance` out of maintenance.
    Undrain {
        service: String,
        instance: String,
        at: UnixMillis,
    },
    /// Record that hook `hook` has run for every event it owes up to and
    /// including the one at log `index`, so no later leader runs it again
    /// for those (the hook is at least once, not exactly once).
    HookDone { hook: String, index: u64 },
}

impl Command {
    /// Attaches which node saw what (kept by commands that record an event).
    pub fn with_evidence(mut self, seen: Evidence) -> Command {
        if let Command::Activate { evidence, .. } | Command::MarkAllDown { evidence, .. } =
            &mut self
        {
            *evidence = seen;
        }
        self
    }

    /// The service the command is about; empty for [`Command::HookDone`],
    /// which is about no service.
    pub fn service(&self) -> &str {
        match self {
            Command::Activate { service, .. }
            | Command::MarkAllDown { service, .. }
            | Command::ClearAllDown { service, .. }
            | Command::Drain { service, .. }
            | Command::Undrain { service, .. } => service,
            Command::HookDone { .. } => "",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Activate {
                service,
                instance,
                epoch,
                reason,
                ..
            } => write!(
                f,
                "activate {service}/{instance} at epoch {epoch} ({reason})"
            ),
            Command::MarkAllDown { service, epoch, .. } => {
                write!(
                    f,
                    "mark every instance of {service} down (keeping epoch {epoch})"
                )
            }
            Command::ClearAllDown { service, epoch, .. } => {
                write!(f, "clear the all-down mark of {service} (epoch {epoch})")
            }
            Command::Drain {
                service, instance, ..
            } => write!(f, "drain {service}/{instance}"),
            Command::Undrain {
                service, instance, ..
            } => write!(f, "undrain {service}/{instance}"),
            Command::HookDone { hook, index } => {
                write!(f, "hook {hook} ran for events up to index {index}")
            }
        }
    }
}

/// What applying one command did; returned to the proposer through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ApplyOutcome {
    /// The state changed.
    Applied,
    /// The state already said so; nothing changed.
    Unchanged,
    /// The command no longer fits the state (for example a stale epoch).
    Rejected { why: String },
}

/// The replicated state of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The instance DNS answers with; `None` until the first decision.
    pub active: Option<String>,
    /// The epoch of the current `active` (0 before the first decision).
    pub epoch: Epoch,
    /// When `active` was chosen.
    pub since: Option<UnixMillis>,
    /// Set while every instance is down and `active` is kept fail-static.
    pub all_down_since: Option<UnixMillis>,
    /// Instances in maintenance.
    pub drained: BTreeSet<String>,
    /// Why `active` was chosen (an operator's switchover is not undone by
    /// an automatic failback).
    #[serde(default)]
    pub reason: Option<Reason>,
}

/// Which node saw what: per instance, each node's verdict (keyed by the node
/// id as text) when a decision was made. Recorded with every change for the
/// event history. The keys are text because commands are internally tagged
/// enums, through which serde cannot read JSON object keys as numbers.
pub type Evidence = BTreeMap<String, BTreeMap<String, Verdict>>;

/// One committed change, kept for people (API, dashboard) and hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Raft log index of the entry that made the change.
    pub index: u64,
    pub at: UnixMillis,
    pub service: String,
    pub epoch: Epoch,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Reason,
    /// Which node saw what when the change was decided.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: Evidence,
}

/// The replicated state: what every node answers from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub services: BTreeMap<String, ServiceState>,
    /// The most recent committed changes, oldest first, at most [`EVENT_HISTORY`].
    /// Shared, because the whole state is copied on every apply to be
    /// published: a thousand events with their evidence were most of that
    /// copy.
    pub events: VecDeque<Arc<Event>>,
    /// Per hook name, the index of the last event its run was confirmed for
    /// ([`Command::HookDone`]). Absent from snapshots written before hooks
    /// existed, hence the default.
    #[serde(default)]
    pub hooks_done: BTreeMap<String, u64>,
}

impl State {
    /// The state of `service`, or the empty state if nothing was ever decided.
    pub fn service(&self, service: &str) -> Option<&ServiceState> {
        self.services.get(service)
    }

    /// Applies `command`, committed at Raft log `index`. Deterministic: the
    /// same state and command give the same result on every node.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyOutcome {
        if let Command::HookDone { hook, index: done } = command {
            // Confirmations may arrive out of order (a deposed leader's late
            // one): the record only moves forward.
            if self
                .hooks_done
                .get(hook)
                .is_some_and(|record| record >= done)
            {
                return ApplyOutcome::Unchanged;
            }
            self.hooks_done.insert(hook.clone(), *done);
            return ApplyOutcome::Applied;
        }
        let entry = self
            .services
            .entry(command.service().to_owned())
            .or_default();
        let event = match command {
            Command::Activate {
                service,
                instance,
                epoch,
                reason,
                at,
                evidence,
            } => {
                if *epoch != entry.epoch.next() {
                    return ApplyOutcome::Rejected {
                        why: format!(
                            "epoch {epoch} for service {service} is stale: the current epoch is {}, so the next change must carry {}",
                            entry.epoch,
                            entry.epoch.next()
                        ),
                    };
                }
                if entry.drained.contains(instance) {
                    return ApplyOutcome::Rejected {
                        why: format!("instance {instance} of service {service} is drained"),
                    };
                }
                let from = entry.active.replace(instance.clone());
                entry.epoch = *epoch;
                entry.since = Some(*at);
                entry.all_down_since = None;
                entry.reason = Some(*reason);
                Event {
                    index,
                    at: *at,
                    service: service.clone(),
                    epoch: *epoch,
                    from,
                    to: Some(instance.clone()),
                    reason: *reason,
                    evidence: evidence.clone(),
                }
            }
            Command::MarkAllDown {
                service, epoch, at, ..
            }
            | Command::ClearAllDown { service, epoch, at } => {
                if *epoch != entry.epoch {
                    return ApplyOutcome::Rejected {
                        why: format!(
                            "epoch {epoch} for service {service} is stale: the current epoch is {}",
                            entry.epoch
                        ),
                    };
                }
                let marking = matches!(command, Command::MarkAllDown { .. });
                if entry.all_down_since.is_some() == marking {
                    return ApplyOutcome::Unchanged;
                }
                entry.all_down_since = marking.then_some(*at);
                Event {
                    index,
                    at: *at,
                    service: service.clone(),
                    epoch: *epoch,
                    from: entry.active.clone(),
                    to: entry.active.clone(),
                    reason: if marking {
                        Reason::AllDown
                    } else {
                        Reason::Recovered
                    },
                    evidence: match command {
                        Command::MarkAllDown { evidence, .. } => evidence.clone(),
                        _ => Evidence::new(),
                    },
                }
            }
            Command::Drain { instance, .. } => {
                if !entry.drained.insert(instance.clone()) {
                    return ApplyOutcome::Unchanged;
                }
                return ApplyOutcome::Applied;
            }
            Command::Undrain { instance, .. } => {
                if !entry.drained.remove(instance) {
                    return ApplyOutcome::Unchanged;
                }
                return ApplyOutcome::Applied;
            }
            // Applied above, before a service entry is made for it.
            Command::HookDone { .. } => return ApplyOutcome::Unchanged,
        };
        self.record(event);
        ApplyOutcome::Applied
    }

    fn record(&mut self, event: Event) {
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(Arc::new(event));
    }
}

/// The state as applied up to a Raft log index: what a node answers from.
/// Published as an immutable snapshot after every apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The index of the last applied log entry (0 before the first).
    pub index: u64,
    pub state: State,
}

/// A health verdict on one instance, after rise/fall hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not enough probes yet (or not enough nodes agree) to say.
    Unknown,
    Up,
    Down,
}

impl Verdict {
    /// `up`, `down` or `unknown`, as shown and as in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Up => "up",
            Verdict::Down => "down",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of one instance as the deciding node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceHealth {
    pub verdict: Verdict,
    /// How long the verdict has held, measured on a monotonic clock by whoever
    /// built the view. Failback waits on this.
    pub held_for: Duration,
}

impl InstanceHealth {
    /// A verdict that has held for `held_for`.
    pub fn new(verdict: Verdict, held_for: Duration) -> Self {
        InstanceHealth { verdict, held_for }
    }
}

/// The health of every instance of every service, keyed by (service, instance).
/// An instance missing from the view is [`Verdict::Unknown`].
///
/// Each instance also has a position: the order in which it was first set.
/// A view kept from one pass to the next (as the leader's quorum view keeps
/// one) is updated by position ([`HealthView::set_at`]), without looking a
/// name up or allocating one, and its names are shared by its clones.
#[derive(Debug, Clone, Default)]
pub struct HealthView {
    /// Service, then instance, to its position in `health`: looked up by
    /// `&str` without allocating, which matters at 10,000 instances read on
    /// every decision pass.
    positions: Arc<BTreeMap<String, BTreeMap<String, usize>>>,
    health: Vec<InstanceHealth>,
}

impl HealthView {
    /// Records the health of `instance` of `service`.
    pub fn set(&mut self, service: &str, instance: &str, health: InstanceHealth) {
        if let Some(position) = self.position(service, instance) {
            self.health[position] = health;
            return;
        }
        let position = self.health.len();
        let positions = Arc::make_mut(&mut self.positions);
        let instances = match positions.get_mut(service) {
            Some(instances) => instances,
            None => positions.entry(service.to_owned()).or_default(),
        };
        instances.insert(instance.to_owned(), position);
        self.health.push(health);
    }

    /// Records the health of the instance at `position` (see the type's
    /// doc); `false`, changing nothing, if there is none.
    pub fn set_at(&mut self, position: usize, health: InstanceHealth) -> bool {
        match self.health.get_mut(position) {
            Some(held) => {
                *held = health;
                true
            }
            None => false,
        }
    }

    /// The health of `instance` of `service` (unknown if never set).
    pub fn get(&self, service: &str, instance: &str) -> InstanceHealth {
        self.service(service).get(instance)
    }

    /// The health of `service`'s instances, found once for reading several.
    pub fn service(&self, service: &str) -> ServiceHealth<'_> {
        ServiceHealth {
            positions: self.positions.get(service),
            health: &self.health,
        }
    }

    /// The position of `instance` of `service`, if it was ever set.
    pub fn position(&self, service: &str, instance: &str) -> Option<usize> {
        self.positions.get(service)?.get(instance).copied()
    }

    /// Every `(service, instance, health)`, sorted by service then instance.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, InstanceHealth)> {
        self.positions.iter().flat_map(move |(service, instances)| {
            instances.iter().filter_map(move |(instance, &position)| {
                let health = *self.health.get(position)?;
                Some((service.as_str(), instance.as_str(), health))
            })
        })
    }
}

/// One service's part of a [`HealthView`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceHealth<'a> {
    positions: Option<&'a BTreeMap<String, usize>>,
    health: &'a [InstanceHealth],
}

impl ServiceHealth<'_> {
    /// The health of `instance` (unknown if never set).
    pub fn get(&self, instance: &str) -> InstanceHealth {
        self.positions
            .and_then(|positions| positions.get(instance))
            .and_then(|&position| self.health.get(position))
            .copied()
            .unwrap_or(InstanceHealth {
                verdict: Verdict::Unknown,
                held_for: Duration::ZERO,
            })
    }
}

/// Two views are equal when they hold the same instances with the same
/// health, whatever order the instances were set in.
impl PartialEq for HealthView {
    fn eq(&self, other: &Self) -> bool {
        self.health.len() == other.health.len()
            && self.iter().all(|(service, instance, health)| {
                other.position(service, instance).is_some()
                    && other.get(service, instance) == health
            })
    }
}

impl Eq for HealthView {}

/// How one external DNS target (`[[publish]]`) stands, as this node last
/// saw it. Only the acting leader publishes, so on any other node `active`
/// is false and the rest is what it saw when it last led (if ever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    pub name: String,
    /// `rfc2136`, `digitalocean` or `cloudflare`.
    pub kind: String,
    /// Whether this node is publishing to it now.
    pub active: bool,
    /// Whether every record, read back from the target, matched the
    /// committed choice at the last pass.
    pub in_sync: bool,
    pub records: Vec<PublishedRecord>,
    /// When a pass last completed without an error.
    pub last_success: Option<UnixMillis>,
    /// Why the last pass failed, set only while passes fail (`None` after
    /// a pass without an error); never holds a secret.
    pub last_error: Option<String>,
    /// When a pass last failed; kept after a recovery, as history.
    pub last_error_at: Option<UnixMillis>,
    /// Failed passes since the last success.
    pub failures: u64,
    /// Writes this node has made to the target since it started.
    pub writes: u64,
}

/// One record a [`PublishStatus`] keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRecord {
    pub service: String,
    /// The record's name at the target.
    pub name: String,
    /// The committed epoch it should carry.
    pub epoch: u64,
    /// The epoch the target's marker held when last read; `None` if it had none.
    pub published_epoch: Option<u64>,
    pub state: RecordState,
    /// Why it is not in sync, when it is not.
    pub detail: Option<String>,
}

/// Where a [`PublishedRecord`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    /// Read back equal to the committed choice.
    InSync,
    /// Written; the next read confirms it.
    Written,
    /// Not written: the target holds a newer epoch than this node's state.
    Held,
    /// The last attempt failed.
    Failed,
}

impl RecordState {
    /// The name the API and CLI print.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::InSync => "in-sync",
            RecordState::Written => "written",
            RecordState::Held => "held",
            RecordState::Failed => "failed",
        }
    }
}

/// The latest [`PublishStatus`] of every target, shared by the publishers
/// (which write it) and the API and metrics (which read it). Cloning shares.
#[derive(Debug, Clone, Default)]
pub struct PublishBoard(std::sync::Arc<std::sync::RwLock<Vec<PublishStatus>>>);

impl PublishBoard {
    /// A board listing `targets`, none of them active yet.
    pub fn new(targets: impl IntoIterator<Item = (String, String)>) -> PublishBoard {
        let statuses = targets
            .into_iter()
            .map(|(name, kind)| PublishStatus {
                name,
                kind,
                active: false,
                in_sync: false,
                records: Vec::new(),
                last_success: None,
                last_error: None,
                last_error_at: None,
                failures: 0,
                writes: 0,
            })
            .collect();
        PublishBoard(std::sync::Arc::new(std::sync::RwLock::new(statuses)))
    }

    /// Every target's status, in config order.
    pub fn snapshot(&self) -> Vec<PublishStatus> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the status of the target `name` (nothing if there is none).
    pub fn update(&self, name: &str, change: impl FnOnce(&mut PublishStatus)) {
        let mut statuses = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(status) = statuses.iter_mut().find(|s| s.name == name) {
            change(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activate(instance: &str, epoch: u64) -> Command {
        Command::Activate {
            service: "db".into(),
            instance: instance.into(),
            epoch: Epoch(epoch),
            reason: Reason::Failover,
            at: 1000 + epoch,
            evidence: Evidence::new(),
        }
    }

    #[test]
    fn a_health_view_updates_by_name_or_position_and_equals_one_set_in_another_order() {
        let up = |secs| InstanceHealth::new(Verdict::Up, Duration::from_secs(secs));
        let mut view = HealthView::default();
        view.set("db", "db2", up(1));
        view.set("db", "db1", up(2));
        view.set("web", "web1", up(3));
        assert_eq!(view.position("db", "db1"), Some(1));
        let kept = view.clone();
        assert!(view.set_at(1, InstanceHealth::new(Verdict::Down, Duration::ZERO)));
        assert!(!view.set_at(3, up(4)), "no instance at position 3");
        view.set("web", "web1", up(5));
        assert_eq!(view.get("db", "db1").verdict, Verdict::Down);
        assert_eq!(view.get("web", "web1"), up(5));
        assert_eq!(view.get("web", "web2").verdict, Verdict::Unknown);
        // A clone shares the names, not the health.
        assert_eq!(kept.get("db", "db1"), up(2));

        let mut same = HealthView::default();
        same.set("web", "web1", up(5));
        same.set(
            "db",
            "db1",
            InstanceHealth::new(Verdict::Down, Duration::ZERO),
        );
        same.set("db", "db2", up(1));
        assert_eq!(same, view);
        same.set("db", "db3", up(1));
        assert_ne!(same, view);
    }

    #[test]
    fn activate_needs_exactly_the_next_epoch() {
        let mut state = State::default();
        assert_eq!(state.apply(1, &activate("db1", 1)), ApplyOutcome::Applied);
        assert_eq!(state.apply(2, &activate("db2", 2)), ApplyOutcome::Applied);
        // A late duplicate of an older decision, or one that skips an epoch, is refused.
        assert!(matches!(
            state.apply(3, &activate("db1", 2)),
            ApplyOutcome::Rejected { .. }
        ));
        assert!(matches!(
            state.apply(4, &activate("db1", 4)),
            ApplyOutcome::Rejected { .. }
        ));
        let db = state.service("db").expect("db was decided");
        assert_eq!(db.active.as_deref(), Some("db2"));
        assert_eq!(db.epoch, Epoch(2));
        let history: Vec<_> = state
            .events
            .iter()
            .map(|e| (e.index, e.epoch.0, e.from.clone(), e.to.clone()))
            .collect();
        assert_eq!(
            history,
            vec![
                (1, 1, None, Some("db1".into())),
                (2, 2, Some("db1".into()), Some("db2".into()))
            ]
        );
    }

    /// Regression: evidence keyed by numeric node ids could be written to
    /// the Raft log but not read back, which stopped the node.
    #[test]
    fn commands_round_trip_through_json_with_evidence() {
        let evidence: Evidence = [(
            "db1".to_owned(),
            [
                ("1".to_owned(), Verdict::Down),
                ("2".to_owned(), Verdict::Up),
            ]
            .into(),
        )]
        .into();
        for command in [
            activate("db1", 3).with_evidence(evidence.clone()),
            Command::MarkAllDown {
                service: "db".into(),
                epoch: Epoch(3),
                at: 7,
                evidence: evidence.clone(),
            },
            Command::Drain {
                service: "db".into(),
                instance: "db1".into(),
                at: 8,
            },
        ] {
            let json = serde_json::to_vec(&command).expect("encodes");
            let back: Command = serde_json::from_slice(&json).expect("decodes");
            assert_eq!(back, command);
        }
    }

    #[test]
    fn drained_instance_cannot_be_activated() {
        let mut state = State::default();
        let drain = Command::Drain {
            service: "db".into(),
            instance: "db1".into(),
            at: 5,
        };
        assert_eq!(state.apply(1, &drain), ApplyOutcome::Applied);
        assert_eq!(state.apply(2, &drain), ApplyOutcome::Unchanged);
        assert!(matches!(
            state.apply(3, &activate("db1", 1)),
            ApplyOutcome::Rejected { .. }
        ));
        let undrain = Command::Undrain {
            service: "db".into(),
            instance: "db1".into(),
            at: 6,
        };
        assert_eq!(state.apply(4, &undrain), ApplyOutcome::Applied);
        assert_eq!(state.apply(5, &activate("db1", 1)), ApplyOutcome::Applied);
    }

    #[test]
    fn all_down_mark_keeps_active_and_epoch() {
        let mut state = State::default();
        state.apply(1, &activate("db1", 1));
        let mark = Command::MarkAllDown {
            service: "db".into(),
            epoch: Epoch(1),
            at: 50,
            evidence: Evidence::new(),
        };
        assert_eq!(state.apply(2, &mark), ApplyOutcome::Applied);
        assert_eq!(state.apply(3, &mark), ApplyOutcome::Unchanged);
        let db = state.service("db").expect("db was decided");
        assert_eq!(
            (db.active.as_deref(), db.epoch, db.all_down_since),
            (Some("db1"), Epoch(1), Some(50))
        );
        let clear = Command::ClearAllDown {
            service: "db".into(),
            epoch: Epoch(1),
            at: 60,
        };
        assert_eq!(state.apply(4, &clear), ApplyOutcome::Applied);
        assert_eq!(state.service("db").and_then(|s| s.all_down_since), None);
        let reasons: Vec<_> = state.events.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            vec![Reason::Failover, Reason::AllDown, Reason::Recovered]
        );
        // A mark decided against an older epoch is refused.
        state.apply(5, &activate("db2", 2));
        assert!(matches!(
            state.apply(6, &mark),
            ApplyOutcome::Rejected { .. }
        ));
    }

    #[test]
    fn hook_record_only_moves_forward() {
        let mut state = State::default();
        let done = |index| Command::HookDone {
            hook: "notify".into(),
            index,
        };
        assert_eq!(state.apply(1, &activate("db1", 1)), ApplyOutcome::Applied);
        assert_eq!(state.apply(3, &done(1)), ApplyOutcome::Applied);
        assert_eq!(state.apply(4, &done(5)), ApplyOutcome::Applied);
        // A deposed leader's late confirmation of an older event changes nothing.
        assert_eq!(state.apply(5, &done(1)), ApplyOutcome::Unchanged);
        assert_eq!(state.hooks_done.get("notify"), Some(&5));
        // It is no event and touches no service.
        assert_eq!(state.events.len(), 1);
        assert_eq!(state.services.keys().collect::<Vec<_>>(), ["db"]);
    }

    /// Snapshots written before hooks existed have no `hooks_done`.
    #[test]
    fn state_without_hook_records_still_loads() {
        let old = r#"{"services":{},"events":[]}"#;
        let state: State = serde_json::from_str(old).expect("old snapshot loads");
        assert!(state.hooks_done.is_empty());
    }

    #[test]
    fn event_history_is_bounded() {
        let mut state = State::default();
        for epoch in 1..=(EVENT_HISTORY as u64 + 10) {
            let name = if epoch % 2 == 0 { "db1" } else { "db2" };
            assert_eq!(
                state.apply(epoch, &activate(name, epoch)),
                ApplyOutcome::Applied
            );
        }
        assert_eq!(state.events.len(), EVENT_HISTORY);
        assert_eq!(state.events.front().map(|e| e.index), Some(11));
    }
}
