//! Scheduling: one task drives every instance's probes from a schedule of
//! its own, each instance on its own jittered interval, and publishes
//! verdict changes at once. In a node that task runs on a thread and
//! runtime of their own ([`Checker::spawn`]).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::probe::{self, LazyDeadline};
use super::{HealthError, Hysteresis, LocalHealth, Probe, ProbeReport, Slot};
use crate::config::{CheckConfig, Config, InstanceConfig};
use crate::metrics::{Metrics, ProbeInstruments};

/// At most this many probes run at once, whatever the number of instances:
/// enough for 10,000 instances at 1 s with slow answers, few enough that a
/// burst never exhausts file descriptors.
pub const MAX_CONCURRENT_PROBES: usize = 1024;

/// First probes are spread over the interval in steps of a slot, so that
/// instances share wake-ups: on a virtual machine a wake-up from idle costs
/// about as much as a probe's own system calls, and so does waking each
/// instance's server from idle for every probe, where it is near (a
/// loopback address, or the same host's containers). A slot holds about
/// this many probes...
const PROBES_PER_SLOT: f64 = 100.0;

/// ...and lasts at most this: at 1,000 probes a second, 10 wake-ups of 100
/// probes, about as HAProxy spreads its checks (the n-th server of every
/// backend at once). Each instance is still probed once per interval, on
/// time to within the few milliseconds a slot's probes take to start.
pub const MAX_PROBE_SLOT: Duration = Duration::from_millis(100);

/// How many times the probes started in one slot are polled in lockstep
/// (see [`Driver::start_due`]) before those still under way join the
/// running ones: enough for an HTTP check on a near instance, which takes
/// three steps (connect, send, read) with a turn between each.
const LOCKSTEP_POLLS: usize = 3;

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
    /// Where verdicts are published; dropped when `run` returns.
    health: watch::Sender<LocalHealth>,
    /// Draws each instance's first-probe offset; seeded so tests are exact.
    rng: StdRng,
    /// At most this many probes run at once.
    max_running: usize,
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
            max_running: MAX_CONCURRENT_PROBES,
            metrics: None,
        };
        Ok((checker, receiver))
    }

    /// Bounds concurrent probes at `max` instead of
    /// [`MAX_CONCURRENT_PROBES`], so a test can hold probes up with a few.
    #[cfg(test)]
    pub(super) fn with_max_concurrent_probes(mut self, max: usize) -> Self {
        self.max_running = max;
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
    /// At 10,000 instances the checks keep a core busy most of the time.
    /// On the node's runtime, every other task (a Raft step, a DNS answer,
    /// a commit's next stage) waited in the same queue behind them; here
    /// the kernel shares the core between the two threads instead, and a
    /// woken Raft or DNS task runs at once.
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

    /// Probes every instance until `cancel` fires; returns at once then,
    /// dropping the probes in flight (which kills an exec check's program).
    ///
    /// One task does all of it, with a schedule of its own rather than a
    /// task and a timer per instance: each wake-up starts every probe that
    /// is due (a slot's worth), in lockstep (see [`Driver::start_due`]),
    /// and a probe that finishes within those first polls, as a TCP check
    /// on a nearby instance does inside `connect`, is recorded right
    /// there. Only probes that must wait (for an HTTP answer, a slow
    /// handshake, a program) are kept and polled again. The
    /// per-instance tasks, timers and permits this replaces were about a
    /// third of the checker's user-space time (the rest of its CPU is the
    /// kernel's: sockets).
    pub async fn run(self, cancel: CancellationToken) {
        let Checker {
            instances,
            health,
            mut rng,
            max_running,
            metrics,
        } = self;
        let start = Instant::now();
        let slot = probe_slot(instances.iter().map(|w| &w.check.interval));
        let mut states = Vec::with_capacity(instances.len());
        let mut schedule = Schedule::default();
        let mut runs = Vec::with_capacity(instances.len());
        for watched in &instances {
            let Some(slot_in_health) = health
                .borrow()
                .slot(&watched.service, &watched.instance.name)
            else {
                // Not possible: the health map was made from the same config.
                continue;
            };
            // Spread first probes over one interval so that a thousand
            // instances configured together are not probed in one burst,
            // in steps of a slot so that they share wake-ups.
            let offset = slotted(random_below(&mut rng, watched.check.interval), slot);
            schedule.at(start + offset, runs.len());
            states.push(InstanceState {
                hysteresis: Hysteresis::new(watched.check.rise, watched.check.fall),
                next: start + offset,
            });
            runs.push(Run {
                watched,
                slot: slot_in_health,
                instruments: metrics
                    .as_ref()
                    .map(|m| m.probe_instruments(&watched.service, watched.check.kind.name())),
            });
        }
        let mut driver = Driver {
            runs,
            states,
            schedule,
            running: FuturesUnordered::new(),
            starting: Vec::new(),
            again: Vec::new(),
            turn: Arc::new(Turn::default()),
            max_running,
            health,
        };
        let cancelled = cancel.cancelled();
        let wake = tokio::time::sleep_until(start);
        tokio::pin!(cancelled, wake);
        loop {
            driver.start_due();
            // The next slot, unless as many probes run as may: then a
            // probe's end is the next chance to start one.
            let next = driver
                .schedule
                .next_due()
                .filter(|_| driver.running.len() < driver.max_running);
            if let Some(next) = next {
                if wake.deadline() != next {
                    wake.as_mut().reset(next);
                }
            }
            tokio::select! {
                biased;
                () = &mut cancelled => return,
                Some((index, outcome)) = driver.running.next() => driver.finish(index, outcome),
                () = &mut wake, if next.is_some() => {}
            }
        }
    }
}

/// When each instance's next probe is due, earliest first. An instance is
/// in it only while its probe is not running: one probe per instance at a
/// time, as one task per instance would have it.
///
/// Instances are kept in buckets by due instant: slotted first probes and a
/// common interval make most instances share one, so a wake-up takes a
/// whole slot's worth from one bucket. (A binary heap over 10,000 entries
/// was the checker's largest item in user space: each pop walks a quarter
/// of a megabyte.)
#[derive(Default)]
struct Schedule {
    buckets: BTreeMap<Instant, Vec<usize>>,
    /// Emptied buckets, kept to be reused rather than reallocated.
    spare: Vec<Vec<usize>>,
}

impl Schedule {
    fn at(&mut self, due: Instant, index: usize) {
        let spare = &mut self.spare;
        self.buckets
            .entry(due)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(index);
    }

    fn next_due(&self) -> Option<Instant> {
        self.buckets.first_key_value().map(|(due, _)| *due)
    }

    /// An instance whose probe is due by `now`, and when it was due; the
    /// earliest first.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        let mut bucket = self.buckets.first_entry()?;
        let due = *bucket.key();
        if due > now {
            return None;
        }
        let index = bucket.get_mut().pop();
        if bucket.get().is_empty() {
            self.spare.push(bucket.remove());
        }
        // An empty bucket is never kept, so this is always an instance.
        index.map(|index| (due, index))
    }
}

/// What does not change about one instance while the checker runs: the
/// probes in flight borrow it.
struct Run<'a> {
    watched: &'a Watched,
    /// Where this instance's status sits in the published health.
    slot: Slot,
    /// This service's probe metrics, if the checker has any.
    instruments: Option<ProbeInstruments>,
}

/// What does: its verdict so far and when it is probed next.
struct InstanceState {
    hysteresis: Hysteresis,
    /// When the probe after the running one is due.
    next: Instant,
}

/// The checker's working state while it runs.
struct Driver<'a> {
    runs: Vec<Run<'a>>,
    states: Vec<InstanceState>,
    schedule: Schedule,
    /// The probes that did not finish in their first turns.
    running: FuturesUnordered<InFlight<'a>>,
    /// The probes of the slot being started, and those of them that asked
    /// for another turn; both empty between slots, kept for their
    /// allocations.
    starting: Vec<InFlight<'a>>,
    again: Vec<InFlight<'a>>,
    /// Whether the probe just polled asked for another turn.
    turn: Arc<Turn>,
    max_running: usize,
    health: watch::Sender<LocalHealth>,
}

impl<'a> Driver<'a> {
    /// Starts every probe that is due, as far as the concurrency bound
    /// allows; a probe that waited for room counts the wait as its lag.
    ///
    /// The probes of a slot start in lockstep: each is polled once, then
    /// each that asked for another turn (by waking its waker at once) is
    /// polled again, and so on, up to [`LOCKSTEP_POLLS`] polls, so that
    /// their steps happen together (every connect, then every request, then
    /// every answer; see `probe::exchange_near`). A probe done by then is
    /// recorded at once; one that waits on the reactor (for an answer, a
    /// slow handshake, a program) joins the probes running, which poll it
    /// again with a waker of their own.
    fn start_due(&mut self) {
        let now = Instant::now();
        let mut starting = std::mem::take(&mut self.starting);
        while self.running.len() + starting.len() < self.max_running {
            let Some((due, index)) = self.schedule.pop_due(now) else {
                break;
            };
            let Some(run) = self.runs.get(index) else {
                continue;
            };
            let Some(state) = self.states.get_mut(index) else {
                continue;
            };
            let check = &run.watched.check;
            // Validation forbids a zero interval; a hand-built config must
            // not make the schedule spin.
            let period = check.interval.max(Duration::from_millis(1));
            // A probe held up past its next turn skips the turns it missed
            // rather than catching up in a burst.
            state.next = due + period;
            if state.next <= now {
                let missed = (now - state.next).as_nanos() / period.as_nanos();
                let missed = u32::try_from(missed).unwrap_or(u32::MAX);
                state.next += period.saturating_mul(missed.saturating_add(1));
            }
            if let Some(instruments) = &run.instruments {
                instruments.probe_started(now.saturating_duration_since(due));
            }
            let probe = &run.watched.probe;
            starting.push(InFlight {
                index,
                started: now,
                probe: probe.probe(&run.watched.instance),
                guard: (!probe.bounded()).then(|| LazyDeadline::new(now + check.timeout)),
                timeout: check.timeout,
            });
        }
        let mut again = std::mem::take(&mut self.again);
        let waker = Waker::from(self.turn.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..LOCKSTEP_POLLS {
            if starting.is_empty() {
                break;
            }
            for mut in_flight in starting.drain(..) {
                self.turn.asked.store(false, Ordering::Relaxed);
                match Pin::new(&mut in_flight).poll(&mut cx) {
                    Poll::Ready((index, outcome)) => self.finish(index, outcome),
                    Poll::Pending if self.turn.asked.load(Ordering::Relaxed) => {
                        again.push(in_flight);
                    }
                    Poll::Pending => self.running.push(in_flight),
                }
            }
            std::mem::swap(&mut starting, &mut again);
        }
        // Still asking for turns: they go on among the running ones.
        for in_flight in starting.drain(..) {
            self.running.push(in_flight);
        }
        self.again = again;
        self.starting = starting;
    }

    /// Records a probe's outcome and puts its instance back on the
    /// schedule. An instance whose probe panicked is no longer probed; its
    /// verdict stays as it was, which the status page shows as stale.
    fn finish(&mut self, index: usize, outcome: Outcome) {
        let (Some(run), Some(state)) = (self.runs.get(index), self.states.get_mut(index)) else {
            return;
        };
        let service = &*run.watched.service;
        let instance = run.watched.instance.name.as_str();
        let report = match outcome {
            Outcome::Report(report) => report,
            Outcome::Panicked => {
                error!(
                    service,
                    instance, "a health check panicked; this instance is no longer probed"
                );
                return;
            }
        };
        if let Some(instruments) = &run.instruments {
            instruments.probe_done(report.took, report.ok);
        }
        let changed = state.hysteresis.record(report.ok);
        if let Some(verdict) = changed {
            info!(service, instance, verdict = %verdict, detail = %report.detail, "instance verdict changed");
        } else if !report.ok {
            debug!(service, instance, detail = %report.detail, "probe failed");
        }
        let now = Instant::now();
        let hysteresis = &state.hysteresis;
        self.health.send_if_modified(|health| {
            let Some(status) = health.at_mut(run.slot) else {
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
        self.schedule.at(state.next, index);
    }
}

/// How a probe ended.
enum Outcome {
    Report(ProbeReport),
    Panicked,
}

/// One probe of one instance, under way.
struct InFlight<'a> {
    index: usize,
    started: Instant,
    probe: BoxFuture<'a, ProbeReport>,
    /// The checker's own bound, for a probe that does not bound itself: it
    /// should honour the timeout itself, and this makes sure a misbehaving
    /// one cannot hold the schedule.
    guard: Option<LazyDeadline>,
    timeout: Duration,
}

impl Future for InFlight<'_> {
    type Output = (usize, Outcome);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A panicking probe must not take every other instance's checks
        // down with it.
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.probe.as_mut().poll(cx))) {
            Ok(Poll::Ready(report)) => return Poll::Ready((this.index, Outcome::Report(report))),
            Ok(Poll::Pending) => {}
            Err(_) => return Poll::Ready((this.index, Outcome::Panicked)),
        }
        let Some(guard) = &mut this.guard else {
            return Poll::Pending;
        };
        if guard.poll_elapsed(cx).is_pending() {
            return Poll::Pending;
        }
        let report = ProbeReport {
            took: this.started.elapsed(),
            ..ProbeReport::timed_out(this.timeout)
        };
        Poll::Ready((this.index, Outcome::Report(report)))
    }
}

/// The waker a slot's probes are polled with while they start in
/// lockstep: a probe that wakes it at once asks for another turn.
#[derive(Default)]
struct Turn {
    asked: AtomicBool,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.asked.store(true, Ordering::Relaxed);
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
