//! Scheduling: one task per instance, each probing on its own jittered
//! interval and publishing verdict changes at once. In a node the tasks run
//! on a thread and runtime of their own ([`Checker::spawn`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::{HealthError, Hysteresis, LocalHealth, Probe, ProbeReport, Slot, probe};
use crate::config::{CheckConfig, Config, InstanceConfig};
use crate::metrics::{Metrics, ProbeInstruments};

/// At most this many probes run at once, whatever the number of instances:
/// enough for 10,000 instances at 1 s with slow answers, few enough that a
/// burst never exhausts file descriptors.
pub const MAX_CONCURRENT_PROBES: usize = 1024;

/// First probes are spread over the interval in steps of a slot, so that
/// instances share timer wake-ups: on a virtual machine a wake-up from idle
/// costs about as much as a probe's own system calls. A slot holds about
/// this many probes...
const PROBES_PER_SLOT: f64 = 10.0;

/// ...and lasts at most this: at 1,000 probes a second, ~100 wake-ups of
/// ~10 probes instead of ~650 of one or two. Far below any interval or
/// timeout, so nobody waits on it. At 10,000 probes a second the slot is
/// Tokio's timer resolution (1 ms), which shares wake-ups already; longer
/// slots there would make bursts of a hundred connections.
pub const MAX_PROBE_SLOT: Duration = Duration::from_millis(10);

/// The name of the thread a node's health checks run on.
pub const PROBE_THREAD: &str = "hl-probe";

/// The slot for probing `instances` (each with its own interval): about
/// [`PROBES_PER_SLOT`] probes, between 1 ms and [`MAX_PROBE_SLOT`].
pub fn probe_slot<'a>(intervals: impl IntoIterator<Item = &'a Duration>) -> Duration {
    let per_second: f64 = intervals
        .into_iter()
        .map(|interval| 1.0 / interval.as_secs_f64().max(0.001))
        .sum();
    if per_second <= 0.0 {
        return MAX_PROBE_SLOT;
    }
    Duration::from_secs_f64(PROBES_PER_SLOT / per_second)
        .clamp(Duration::from_millis(1), MAX_PROBE_SLOT)
}

/// Probes every instance of every service until cancelled, and publishes this
/// node's [`LocalHealth`] on a `watch` channel.
///
/// The channel's value is updated in place after every probe (the last report),
/// but receivers are woken only when a verdict changes: a woken receiver has
/// something to act on, and 10,000 probes a second do not become 10,000 wake-ups.
pub struct Checker {
    /// One entry per configured instance, in config order.
    instances: Vec<Watched>,
    /// Shared by every instance task; dropped when `run` returns.
    health: watch::Sender<LocalHealth>,
    /// Draws each instance's first-probe offset; seeded so tests are exact.
    rng: StdRng,
    /// Bounds concurrent probes across all instances.
    permits: Arc<Semaphore>,
    /// Where probe durations and failures are counted, if anywhere.
    metrics: Option<Metrics>,
}

/// One instance and how to check it.
struct Watched {
    service: Arc<str>,
    instance: InstanceConfig,
    check: CheckConfig,
    probe: Arc<dyn Probe>,
}

impl Checker {
    /// A checker with the real probers for every service; the first probes are
    /// jittered with a seed from the operating system.
    pub fn new(config: &Config) -> Result<(Checker, watch::Receiver<LocalHealth>), HealthError> {
        // One HTTP client for all services: one connector, one set of TLS roots.
        let mut client = None;
        let probes = config
            .services
            .iter()
            .map(|s| Ok((s.name.clone(), probe::build(s, &mut client)?)))
            .collect::<Result<Vec<_>, HealthError>>()?;
        Checker::with_probes(config, probes, rand::random())
    }

    /// A checker with the given probe for each service (by name), and the
    /// first-probe offsets drawn from `jitter_seed`. Fails if a configured
    /// service has no probe; probes for unknown services are ignored.
    pub fn with_probes(
        config: &Config,
        probes: Vec<(String, Arc<dyn Probe>)>,
        jitter_seed: u64,
    ) -> Result<(Checker, watch::Receiver<LocalHealth>), HealthError> {
        let probes: HashMap<String, Arc<dyn Probe>> = probes.into_iter().collect();
        let mut instances = Vec::new();
        for service in &config.services {
            let probe = probes
                .get(&service.name)
                .ok_or_else(|| HealthError::MissingProbe {
                    service: service.name.clone(),
                })?;
            let name: Arc<str> = Arc::from(service.name.as_str());
            instances.extend(service.instances.iter().map(|instance| Watched {
                service: name.clone(),
                instance: instance.clone(),
                check: service.check.clone(),
                probe: probe.clone(),
            }));
        }
        let (health, receiver) = watch::channel(LocalHealth::new(config, Instant::now()));
        let checker = Checker {
            instances,
            health,
            rng: StdRng::seed_from_u64(jitter_seed),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            metrics: None,
        };
        Ok((checker, receiver))
    }

    /// Bounds concurrent probes at `permits` instead of
    /// [`MAX_CONCURRENT_PROBES`], so a test can hold probes up with a few.
    #[cfg(test)]
    pub(super) fn with_max_concurrent_probes(mut self, permits: usize) -> Self {
        self.permits = Arc::new(Semaphore::new(permits));
        self
    }

    /// Records every probe's duration, failure and scheduling lag in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs [`Checker::run`] on a thread of its own ([`PROBE_THREAD`]) with
    /// a single-threaded runtime, and returns what resolves once it has
    /// stopped.
    ///
    /// At 10,000 instances the checks keep a core busy most of the time
    /// with ten thousand tasks a second. On the node's runtime, every other
    /// task (a Raft step, a DNS answer, a commit's next stage) waited in the
    /// same queue behind hundreds of them; here the kernel shares the core
    /// between the two threads instead, and a woken Raft or DNS task runs
    /// at once. The single-threaded runtime is also the cheaper one to
    /// drive so many small tasks with.
    pub fn spawn(self, cancel: CancellationToken) -> std::io::Result<impl Future<Output = ()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(PROBE_THREAD.into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done;
                runtime.block_on(self.run(cancel));
            })?;
        Ok(async move {
            let _ = stopped.await;
        })
    }

    /// Probes every instance until `cancel` fires; returns once every instance
    /// task has ended (an in-flight probe is dropped, which kills an exec
    /// check's program).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        let start = Instant::now();
        let slot = probe_slot(self.instances.iter().map(|w| &w.check.interval));
        for watched in self.instances {
            // Spread first probes over one interval so that a thousand
            // instances configured together are not probed in one burst,
            // in steps of a slot so that they share wake-ups.
            let offset = slotted(random_below(&mut self.rng, watched.check.interval), slot);
            let instruments = self
                .metrics
                .as_ref()
                .map(|m| m.probe_instruments(&watched.service, watched.check.kind.name()));
            let Some(slot) = self
                .health
                .borrow()
                .slot(&watched.service, &watched.instance.name)
            else {
                // Not possible: the health map was made from the same config.
                continue;
            };
            let task = InstanceTask {
                instruments,
                slot,
                watched,
                first: start + offset,
                health: self.health.clone(),
                permits: self.permits.clone(),
            };
            tasks.spawn(task.run(cancel.clone()));
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                if e.is_panic() {
                    // Only this instance stops being probed; its verdict stays
                    // as it was, which the status page shows as stale.
                    error!(error = %e, "a health check task panicked");
                }
            }
        }
    }
}

/// A uniform draw from `[0, bound)`; zero when `bound` is zero.
fn random_below(rng: &mut StdRng, bound: Duration) -> Duration {
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(rng.random_range(0..nanos))
    }
}

/// `offset` rounded down to a whole number of `slot`s.
fn slotted(offset: Duration, slot: Duration) -> Duration {
    let slot = slot.as_nanos().max(1);
    Duration::from_nanos(u64::try_from(offset.as_nanos() / slot * slot).unwrap_or(u64::MAX))
}

/// The probe loop of one instance.
struct InstanceTask {
    watched: Watched,
    /// When the first probe fires: the run's start plus this instance's jitter.
    first: Instant,
    /// Where verdicts are published; the task updates only its own entry,
    /// at `slot`.
    health: watch::Sender<LocalHealth>,
    slot: Slot,
    /// The checker-wide concurrency bound, held for the length of one probe.
    permits: Arc<Semaphore>,
    /// This service's probe metrics, if the checker has any.
    instruments: Option<ProbeInstruments>,
}

impl InstanceTask {
    async fn run(self, cancel: CancellationToken) {
        let check = &self.watched.check;
        let mut hysteresis = Hysteresis::new(check.rise, check.fall);
        // Validation forbids a zero interval, but tokio panics on one, and a
        // hand-built config must not bring the node down.
        let period = check.interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(self.first, period);
        // If probes were held up (by the concurrency bound), catch up by
        // skipping, never by probing in a burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // One wait for cancellation for the task's life, rather than one
        // made and dropped twice per probe.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let due = tokio::select! {
                () = &mut cancelled => return,
                due = ticks.tick() => due,
            };
            let report = tokio::select! {
                () = &mut cancelled => return,
                report = self.probe_once(due) => report,
            };
            self.record(&mut hysteresis, report);
        }
    }

    /// Probes once, for the tick that was `due`; the wait for a permit and
    /// a late wake-up both count as this probe's scheduling lag.
    async fn probe_once(&self, due: Instant) -> ProbeReport {
        // The semaphore is never closed; if it were, probing unbounded is the
        // lesser harm compared to not probing at all.
        let _permit = self.permits.acquire().await.ok();
        let timeout = self.watched.check.timeout;
        let start = Instant::now();
        if let Some(instruments) = &self.instruments {
            instruments.probe_started(start.saturating_duration_since(due));
        }
        let probe = self.watched.probe.probe(&self.watched.instance);
        if self.watched.probe.bounded() {
            return probe.await;
        }
        // The probe should honour the timeout itself; this bound makes sure a
        // misbehaving one cannot hold the schedule.
        match tokio::time::timeout(timeout, probe).await {
            Ok(report) => report,
            Err(_) => ProbeReport {
                took: start.elapsed(),
                ..ProbeReport::timed_out(timeout)
            },
        }
    }

    fn record(&self, hysteresis: &mut Hysteresis, report: ProbeReport) {
        let service = &*self.watched.service;
        let instance = self.watched.instance.name.as_str();
        if let Some(instruments) = &self.instruments {
            instruments.probe_done(report.took, report.ok);
        }
        let changed = hysteresis.record(report.ok);
        if let Some(verdict) = changed {
            info!(service, instance, verdict = %verdict, detail = %report.detail, "instance verdict changed");
        } else if !report.ok {
            debug!(service, instance, detail = %report.detail, "probe failed");
        }
        let now = Instant::now();
        self.health.send_if_modified(|health| {
            let Some(status) = health.at_mut(self.slot) else {
                return false;
            };
            status.last = Some(report);
            status.consecutive_successes = hysteresis.consecutive_successes();
            status.consecutive_failures = hysteresis.consecutive_failures();
            if let Some(verdict) = changed {
                status.verdict = verdict;
                status.since = now;
            }
            changed.is_some()
        });
    }
}
