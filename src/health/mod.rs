//! Health checks: this node's own view of every instance of every service.
//!
//! The module owns three things. [`probe`] holds the real probers (http, tcp,
//! exec) behind the [`Probe`] trait, the boundary tests fake. [`Hysteresis`]
//! turns a stream of probe outcomes into a [`Verdict`] with rise/fall
//! thresholds, purely. [`Checker`] probes every instance on its own jittered
//! schedule, all from one task, and publishes a [`LocalHealth`] snapshot on
//! a `watch` channel whenever a verdict changes.
//!
//! It must never decide anything: a verdict here is one node's opinion, and only
//! the cluster leader, from a quorum of such opinions, changes the active
//! instance. It must never let one instance's probe delay another's, so every
//! probe is bounded by the check's timeout and runs alongside the others: a
//! probe that has to wait is polled again only when it can make progress.

mod checker;
mod hysteresis;
pub mod probe;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::config::{Config, InstanceConfig};
use crate::model::{HealthView, InstanceHealth, Verdict};

pub use checker::{Checker, MAX_CONCURRENT_PROBES};
pub use hysteresis::Hysteresis;
pub use probe::prober;

/// Why probing could not be set up. Probing itself never fails with an error:
/// a failed probe is a [`ProbeReport`] with `ok == false`.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The shared HTTP client (connector, TLS roots) could not be built.
    #[error("cannot build the HTTP client for the checks of service {service}: {source}")]
    HttpClient {
        service: String,
        source: reqwest::Error,
    },
    /// An exec check without a program to run (config validation rejects
    /// this, but a hand-built config may not have been validated).
    #[error(
        "service {service} has an exec check with an empty command; expected an argv list like [\"/usr/local/bin/check-db\", \"{{address}}\"]"
    )]
    EmptyCommand { service: String },
    /// [`Checker::with_probes`] was given no probe for a configured service.
    #[error("no probe was given for service {service}; every configured service needs one")]
    MissingProbe { service: String },
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Whether the instance passed the check.
    pub ok: bool,
    /// What was seen, for people: `"HTTP 503"`, `"connection refused"`,
    /// `"timed out after 500ms"`, `"exit status 2: <last line of output>"`.
    pub detail: String,
    /// How long the probe took.
    pub took: Duration,
}

impl ProbeReport {
    /// A passed probe.
    pub fn ok(detail: impl Into<String>, took: Duration) -> Self {
        ProbeReport {
            ok: true,
            detail: detail.into(),
            took,
        }
    }

    /// A failed probe.
    pub fn failed(detail: impl Into<String>, took: Duration) -> Self {
        ProbeReport {
            ok: false,
            detail: detail.into(),
            took,
        }
    }

    /// A probe that did not finish within `timeout`.
    pub fn timed_out(timeout: Duration) -> Self {
        ProbeReport::failed(
            format!("timed out after {}", humantime::format_duration(timeout)),
            timeout,
        )
    }
}

/// Runs one probe of one instance. The boundary tests fake.
///
/// An implementation should finish within the check's timeout and report a
/// timeout itself, but the [`Checker`] does not rely on it unless the probe
/// says so ([`Probe::bounded`]): it drops a probe that overruns, so the
/// future must be safe to drop at any await point.
pub trait Probe: Send + Sync + 'static {
    /// Probes `instance` once.
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport>;

    /// Whether every probe ends by itself within the check's timeout (a
    /// timeout reported as a failed probe), so that the checker need not
    /// keep a timer of its own per probe. At 10,000 probes a second that
    /// second timer is about 2 % of the node's CPU.
    fn bounded(&self) -> bool {
        false
    }
}

/// What this node currently thinks of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The verdict after hysteresis.
    pub verdict: Verdict,
    /// When `verdict` last changed (or when checking started, while unknown).
    pub since: Instant,
    /// The most recent probe, `None` before the first one finishes.
    pub last: Option<ProbeReport>,
    /// Passed probes in a row, up to now.
    pub consecutive_successes: u32,
    /// Failed probes in a row, up to now.
    pub consecutive_failures: u32,
}

impl InstanceStatus {
    fn unknown(since: Instant) -> Self {
        InstanceStatus {
            verdict: Verdict::Unknown,
            since,
            last: None,
            consecutive_successes: 0,
            consecutive_failures: 0,
        }
    }
}

/// This node's own view: per (service, instance) the current verdict, when it
/// last changed and the last probe report.
///
/// The statuses sit in config order, each at a [`Slot`] the checker looks
/// up once per instance and then updates after every probe without
/// comparing names; lookups by name go through nested maps, so a lookup by
/// `&str` allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalHealth {
    /// Every instance's status, in config order.
    statuses: Vec<InstanceStatus>,
    /// Service, then instance, to its index in `statuses`.
    slots: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Where one instance's status sits in a [`LocalHealth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl LocalHealth {
    /// Every instance of every service in `config`, unknown since `now`.
    pub fn new(config: &Config, now: Instant) -> Self {
        let mut health = LocalHealth::default();
        for service in &config.services {
            let slots = health.slots.entry(service.name.clone()).or_default();
            for instance in &service.instances {
                // A name given twice (which validation refuses) keeps one slot.
                slots.entry(instance.name.clone()).or_insert_with(|| {
                    health.statuses.push(InstanceStatus::unknown(now));
                    health.statuses.len() - 1
                });
            }
        }
        health
    }

    /// Where the status of `instance` of `service` sits, if it is configured.
    pub fn slot(&self, service: &str, instance: &str) -> Option<Slot> {
        self.slots.get(service)?.get(instance).copied().map(Slot)
    }

    /// The status of `instance` of `service`, if it is configured.
    pub fn get(&self, service: &str, instance: &str) -> Option<&InstanceStatus> {
        self.statuses.get(self.slot(service, instance)?.0)
    }

    /// The verdict on `instance` of `service`; unknown if it is not configured.
    pub fn verdict(&self, service: &str, instance: &str) -> Verdict {
        self.get(service, instance)
            .map_or(Verdict::Unknown, |s| s.verdict)
    }

    /// Every `(service, instance, status)`, sorted by service then instance.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &InstanceStatus)> {
        self.slots.iter().flat_map(move |(service, instances)| {
            instances.iter().filter_map(move |(instance, &slot)| {
                Some((
                    service.as_str(),
                    instance.as_str(),
                    self.statuses.get(slot)?,
                ))
            })
        })
    }

    /// How many instances are tracked.
    pub fn len(&self) -> usize {
        self.statuses.len()
    }

    /// Whether no instance is tracked.
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
    }

    /// This view as a [`HealthView`] at `now`, where each verdict has held
    /// since it last changed. `now` is passed in so the caller owns the clock.
    pub fn view(&self, now: Instant) -> HealthView {
        let mut view = HealthView::default();
        for (service, instance, status) in self.iter() {
            let held_for = now.saturating_duration_since(status.since);
            view.set(
                service,
                instance,
                InstanceHealth::new(status.verdict, held_for),
            );
        }
        view
    }

    /// Sets the verdict on `instance` of `service` as the checker would,
    /// for tests of what reads a node's health.
    #[cfg(test)]
    pub fn set_verdict(&mut self, service: &str, instance: &str, verdict: Verdict) {
        if let Some(status) = self
            .slot(service, instance)
            .and_then(|slot| self.at_mut(slot))
        {
            status.verdict = verdict;
        }
    }

    fn at_mut(&mut self, slot: Slot) -> Option<&mut InstanceStatus> {
        self.statuses.get_mut(slot.0)
    }
}
