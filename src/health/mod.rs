//! Health checks: this node's own view of every instance of every service.
//!
//! The module owns three things. [`probe`] holds the real probers (http, tcp,
//! exec) behind the [`Probe`] trait, the boundary tests fake. [`Hysteresis`]
//! turns a stream of probe outcomes into a [`Verdict`] with rise/fall
//! thresholds, purely. [`Checker`] runs one task per instance that probes on a
//! jittered schedule and publishes a [`LocalHealth`] snapshot on a `watch`
//! channel whenever a verdict changes.
//!
//! It must never decide anything: a verdict here is one node's opinion, and only
//! the cluster leader, from a quorum of such opinions, changes the active
//! instance. It must never let one instance's probe delay another's, so every
//! probe is bounded by the check's timeout and runs in its instance's own task.

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
/// timeout itself, but the [`Checker`] does not rely on it: it drops a probe
/// that overruns, so the future must be safe to drop at any await point.
pub trait Probe: Send + Sync + 'static {
    /// Probes `instance` once.
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport>;
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
/// Nested maps rather than one map keyed by `(String, String)` so that a lookup
/// by `&str` allocates nothing; the checker updates an entry after every probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalHealth {
    services: BTreeMap<String, BTreeMap<String, InstanceStatus>>,
}

impl LocalHealth {
    /// Every instance of every service in `config`, unknown since `now`.
    pub fn new(config: &Config, now: Instant) -> Self {
        let services = config
            .services
            .iter()
            .map(|s| {
                let instances = s
                    .instances
                    .iter()
                    .map(|i| (i.name.clone(), InstanceStatus::unknown(now)))
                    .collect();
                (s.name.clone(), instances)
            })
            .collect();
        LocalHealth { services }
    }

    /// The status of `instance` of `service`, if it is configured.
    pub fn get(&self, service: &str, instance: &str) -> Option<&InstanceStatus> {
        self.services.get(service)?.get(instance)
    }

    /// The verdict on `instance` of `service`; unknown if it is not configured.
    pub fn verdict(&self, service: &str, instance: &str) -> Verdict {
        self.get(service, instance)
            .map_or(Verdict::Unknown, |s| s.verdict)
    }

    /// Every `(service, instance, status)`, sorted by service then instance.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &InstanceStatus)> {
        self.services.iter().flat_map(|(service, instances)| {
            instances
                .iter()
                .map(move |(instance, status)| (service.as_str(), instance.as_str(), status))
        })
    }

    /// How many instances are tracked.
    pub fn len(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    /// Whether no instance is tracked.
    pub fn is_empty(&self) -> bool {
        self.services.values().all(BTreeMap::is_empty)
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

    fn get_mut(&mut self, service: &str, instance: &str) -> Option<&mut InstanceStatus> {
        self.services.get_mut(service)?.get_mut(instance)
    }
}
