//! External DNS publishers: the leader keeps each `[[publish]]` target's
//! records equal to the committed choice, so resolvers that never ask
//! highlander's own servers (a company's BIND, a hosted zone) follow a
//! failover too.
//!
//! Each target has one reconcile loop ([`Publishers::run`]). Whenever this
//! node is the acting leader, a pass reads every record back from the
//! target, compares it with what the applied state says it should be
//! ([`plan`]) and writes only what differs. A pass runs at once after every
//! applied change, and every `interval` otherwise, so a record edited by
//! hand is repaired. A failed pass is retried with exponential backoff and
//! jitter; a rate limit's `Retry-After` is honoured as given. A record
//! that fails does not stop the pass: the others are still read and
//! written, and the wait before the next pass follows the worst error.
//!
//! **Fencing (S4).** Beside each record the target keeps a marker, a TXT
//! record at `_highlander.<record>` holding the instance and its epoch
//! (`"instance=db2" "epoch=7"`, as highlander's own DNS answers). The
//! marker is what makes writes safe against a deposed leader:
//! - a record whose marker holds a newer epoch than this node's state is
//!   never written ([`Plan::Hold`]): an older epoch never replaces a newer one;
//! - an RFC 2136 update carries a prerequisite that the marker is exactly
//!   what was read (or absent), so a write based on a stale read is refused
//!   by the server itself, atomically;
//! - the HTTP APIs (DigitalOcean, Cloudflare) offer no conditional write,
//!   so for them S4 is weaker: *leader-checked per request, plus read-back
//!   repair*. The marker is read just before the write; the lease
//!   ([`Lease`]) is checked again before every request of the write. A
//!   deposed leader
//!   therefore sends nothing once its lease has run out, but a request it
//!   sent just before can still land after a new leader's write; the
//!   window is one request in flight. The next leader's passes read back
//!   and repair anything written late (within `interval`): a late write
//!   carries an older epoch, so it never makes the new leader hold off.
//!
//! Nothing here proposes to the cluster or blocks the decide loop or DNS.
//! Secrets never reach a log line, an error or the status: every error is
//! written by this module or its providers from what they know, not from
//! request headers.

pub mod cloudflare;
pub mod digitalocean;
mod http;
pub mod rfc2136;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, PublishConfig, PublishKind, Target};
use crate::metrics::Metrics;
use crate::model::{AppliedState, PublishBoard, PublishedRecord, RecordState, State, UnixMillis};
use crate::retry::Backoff;

/// How failing passes are retried: 1 s doubling up to 5 minutes.
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How soon a pass re-reads what it wrote, so the status says `in-sync`
/// from a read-back and not from the write's success alone.
const VERIFY_AFTER: Duration = Duration::from_millis(200);

/// How often a node that does not lead checks whether it now does.
/// Leadership is a clock-based judgement, so there is nothing to wait on.
const LEADERSHIP_POLL: Duration = Duration::from_millis(100);

/// The prefix of a record's marker name.
pub const MARKER_LABEL: &str = "_highlander";

/// What the publishers need from the cluster; a trait so tests can fake it.
pub trait Leader: Send + Sync + 'static {
    /// How much longer this node may act as the leader without hearing
    /// from a quorum again; `None` when it may not act now.
    fn acting_for(&self) -> Option<Duration>;
    /// Whether this node may act as the leader now.
    fn is_acting_leader(&self) -> bool {
        self.acting_for().is_some()
    }
    /// The applied state, updated after every apply.
    fn applied(&self) -> watch::Receiver<Arc<AppliedState>>;
}

/// The leadership a write is made under. A publisher checks it before
/// every request of a write.
pub trait Lease: Send + Sync {
    /// How long this node may still act as the leader; `None` once it may not.
    fn left(&self) -> Option<Duration>;
}

/// A lease that never runs out, for writes fenced some other way: tests
/// and tools that write outside the reconcile loop.
pub struct Unfenced;

impl Lease for Unfenced {
    fn left(&self) -> Option<Duration> {
        Some(Duration::MAX)
    }
}

/// The reconcile loop's lease: the leader's own judgement.
struct Acting<'a>(&'a dyn Leader);

impl Lease for Acting<'_> {
    fn left(&self) -> Option<Duration> {
        self.0.acting_for()
    }
}

/// The record and marker a target should hold for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub service: String,
    /// The record's owner: absolute, lowercase.
    pub name: String,
    pub target: Target,
    pub ttl: u32,
    pub marker: Marker,
}

impl Desired {
    /// The marker's owner name.
    pub fn marker_name(&self) -> String {
        marker_name(&self.name)
    }
}

/// The owner of the marker kept beside `record`.
pub fn marker_name(record: &str) -> String {
    format!("{MARKER_LABEL}.{record}")
}

/// Which instance, at which epoch, a record was written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub instance: String,
    pub epoch: u64,
}

impl Marker {
    /// The TXT strings an RFC 2136 target keeps, like highlander's own DNS.
    pub fn strings(&self) -> Vec<String> {
        vec![
            format!("instance={}", self.instance),
            format!("epoch={}", self.epoch),
        ]
    }

    /// [`Marker::strings`] as bytes, as [`Actual::markers`] holds them.
    pub fn txt(&self) -> Vec<Vec<u8>> {
        self.strings().into_iter().map(String::into_bytes).collect()
    }

    /// The single string an HTTP API's TXT content holds.
    pub fn text(&self) -> String {
        self.strings().join(" ")
    }

    /// Reads a marker from TXT strings in any form it is written or
    /// returned in: one string per field, both fields in one string, and
    /// either with each field or the whole in quotes (an API may return
    /// a multi-string TXT as `"instance=db2" "epoch=7"`). `None` if they
    /// do not hold both an instance and an epoch.
    pub fn parse<S: AsRef<[u8]>>(strings: &[S]) -> Option<Marker> {
        let (mut instance, mut epoch) = (None, None);
        // A string that is not UTF-8 holds nothing highlander wrote.
        let texts = strings
            .iter()
            .filter_map(|s| std::str::from_utf8(s.as_ref()).ok());
        for field in texts.flat_map(str::split_whitespace) {
            match field.trim_matches('"').split_once('=') {
                Some(("instance", value)) if !value.is_empty() => {
                    instance = Some(value.to_owned());
                }
                Some(("epoch", value)) => epoch = value.parse().ok(),
                _ => {}
            }
        }
        Some(Marker {
            instance: instance?,
            epoch: epoch?,
        })
    }
}

/// One record as read back from a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<T> {
    pub value: T,
    pub ttl: u32,
    /// The provider's id for the record (HTTP APIs), needed to change it.
    pub id: Option<String>,
}

/// What a target holds at a record's name and at its marker's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    /// CNAME, A and AAAA records at the name.
    pub records: Vec<Found<Target>>,
    /// TXT records at the marker's name, each as its strings' bytes,
    /// exactly as read (not necessarily UTF-8), so that a conditional
    /// write can name them exactly.
    pub markers: Vec<Found<Vec<Vec<u8>>>>,
}

impl Actual {
    /// The marker the target holds: the newest readable one, if several.
    pub fn marker(&self) -> Option<Marker> {
        self.markers
            .iter()
            .filter_map(|m| Marker::parse(&m.value))
            .max_by_key(|m| m.epoch)
    }
}

/// What a pass does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The target holds exactly the desired record and marker.
    InSync,
    /// Write the desired record.
    Write(WriteReason),
    /// Do not write: the target holds a newer epoch.
    Hold { why: String },
}

/// Why a record is written, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// Nothing is there yet.
    Create,
    /// Records are there but no marker: written before highlander managed it.
    Adopt,
    /// The marker holds an older epoch: the active instance changed.
    Change,
    /// Same epoch, but the record or marker differs: edited by hand.
    Repair,
}

impl WriteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteReason::Create => "create",
            WriteReason::Adopt => "adopt",
            WriteReason::Change => "change",
            WriteReason::Repair => "repair",
        }
    }
}

/// Compares what a target holds with what it should hold.
pub fn plan(desired: &Desired, actual: &Actual) -> Plan {
    let Some(marker) = actual.marker() else {
        return Plan::Write(if actual.records.is_empty() {
            WriteReason::Create
        } else {
            WriteReason::Adopt
        });
    };
    if marker.epoch > desired.marker.epoch {
        return Plan::Hold {
            why: format!(
                "the target's marker holds epoch {} ({}), newer than this node's epoch {} ({}); \
                 an older epoch is never written over a newer one",
                marker.epoch, marker.instance, desired.marker.epoch, desired.marker.instance
            ),
        };
    }
    if marker.epoch < desired.marker.epoch {
        return Plan::Write(WriteReason::Change);
    }
    let record_ok = matches!(
        actual.records.as_slice(),
        [only] if only.value == desired.target && only.ttl == desired.ttl
    );
    let marker_ok = matches!(
        actual.markers.as_slice(),
        [only] if Marker::parse(&only.value).as_ref() == Some(&desired.marker)
    );
    if record_ok && marker_ok {
        Plan::InSync
    } else {
        Plan::Write(WriteReason::Repair)
    }
}

/// The records `target` should hold under `state`: one per covered service
/// that has an active instance, in config order. A service with no
/// decision yet is left alone at the target.
pub fn desired(config: &Config, target: &PublishConfig, state: &State) -> Vec<Desired> {
    target
        .services
        .iter()
        .filter_map(|name| {
            let service = config.service(name)?;
            let current = state.service(name)?;
            let instance = service.instance(current.active.as_deref()?)?;
            Some(Desired {
                service: name.clone(),
                name: target.record_name(name),
                target: instance.target.clone(),
                ttl: u32::try_from(target.ttl.as_secs()).unwrap_or(u32::MAX),
                marker: Marker {
                    instance: instance.name.clone(),
                    epoch: current.epoch.0,
                },
            })
        })
        .collect()
}

/// Why a request to a target failed. Messages name the target's address,
/// the record and what to check; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No answer, a timeout, a server error: worth retrying as is.
    #[error("{0}")]
    Unreachable(String),
    /// The target understood and said no (credentials, permissions, a
    /// malformed request): retried, but someone has to fix something.
    #[error("{0}")]
    Refused(String),
    /// The target changed between the read and the write (a failed RFC
    /// 2136 prerequisite): re-read and plan again.
    #[error("{0}")]
    Conflict(String),
    /// The target asked us to slow down.
    #[error("{detail}; retrying after {}", humantime::format_duration(*retry_after))]
    RateLimited {
        retry_after: Duration,
        detail: String,
    },
    /// A write stopped because this node no longer leads: not a failure
    /// of the target, and not reported as one.
    #[error("{0}")]
    Deposed(String),
}

impl PublishError {
    /// The `kind` label of the failure metric.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Unreachable(_) => "unreachable",
            PublishError::Refused(_) => "refused",
            PublishError::Conflict(_) => "conflict",
            PublishError::RateLimited { .. } => "rate-limited",
            PublishError::Deposed(_) => "deposed",
        }
    }

    /// How much this error weighs in choosing a failed pass's wait: a rate
    /// limit (the longest) first, a conflict last.
    fn rank(&self) -> (u8, Duration) {
        match self {
            PublishError::Deposed(_) | PublishError::Conflict(_) => (0, Duration::ZERO),
            PublishError::Unreachable(_) => (1, Duration::ZERO),
            PublishError::Refused(_) => (2, Duration::ZERO),
            PublishError::RateLimited { retry_after, .. } => (3, *retry_after),
        }
    }
}

/// How long to wait after a failed pass whose worst error is `error`, the
/// `failures`th in a row, with `jitter` from 0.5 to 1.0 scaling the
/// backoff; and whether an applied change may cut the wait short (never
/// while a rate limit runs).
pub fn wait_after(error: &PublishError, failures: u32, jitter: f64) -> (Duration, bool) {
    match error {
        PublishError::RateLimited { retry_after, .. } => {
            ((*retry_after).min(MAX_RETRY_AFTER), false)
        }
        PublishError::Conflict(_) if failures < 3 => (VERIFY_AFTER, true),
        _ => (BACKOFF.delay(failures, jitter), true),
    }
}

/// One external DNS target: reads what it holds and writes what it should.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Reads the records at `name` and the marker beside it.
    async fn read(&self, name: &str) -> Result<Actual, PublishError>;

    /// Replaces what `actual` holds (as just read) with `desired`: the
    /// record and its marker, and nothing else of another type at the name.
    /// Where the target supports it, the write is conditional on the marker
    /// still being what `actual` holds. Every request checks `lease` first
    /// and is cut off when it runs out ([`PublishError::Deposed`]).
    async fn write(
        &self,
        desired: &Desired,
        actual: &Actual,
        lease: &dyn Lease,
    ) -> Result<(), PublishError>;
}

/// The publisher for `target`.
pub fn build(target: &PublishConfig) -> Result<Box<dyn Publisher>, String> {
    match &target.kind {
        PublishKind::Rfc2136 { .. } => Ok(Box::new(rfc2136::Rfc2136::new(target)?)),
        PublishKind::DigitalOcean { .. } => Ok(Box::new(digitalocean::DigitalOcean::new(target)?)),
        PublishKind::Cloudflare { .. } => Ok(Box::new(cloudflare::Cloudflare::new(target)?)),
    }
}

/// Every configured target, ready to run on the leader.
pub struct Publishers {
    config: Arc<Config>,
    targets: Vec<(PublishConfig, Box<dyn Publisher>)>,
    board: PublishBoard,
    metrics: Option<Metrics>,
}

impl Publishers {
    /// The targets of `config`, each with the publisher [`build`] makes.
    pub fn new(config: Arc<Config>) -> Result<Publishers, String> {
        let targets = config
            .publish
            .iter()
            .map(|target| Ok((target.clone(), build(target)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Publishers::with_targets(config, targets))
    }

    /// Publishers over the given targets (tests bring their own).
    pub fn with_targets(
        config: Arc<Config>,
        targets: Vec<(PublishConfig, Box<dyn Publisher>)>,
    ) -> Publishers {
        let board = PublishBoard::new(
            targets
                .iter()
                .map(|(t, _)| (t.name.clone(), t.kind.name().to_owned())),
        );
        Publishers {
            config,
            targets,
            board,
            metrics: None,
        }
    }

    /// Counts writes and failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Publishers {
        self.metrics = Some(metrics);
        self
    }

    /// The status board the loops keep up to date.
    pub fn board(&self) -> PublishBoard {
        self.board.clone()
    }

    /// Runs every target's loop until `cancel`.
    pub async fn run(self, leader: Arc<dyn Leader>, cancel: CancellationToken) {
        let loops = self.targets.iter().map(|(target, publisher)| {
            let run = TargetLoop {
                config: &self.config,
                target,
                publisher: publisher.as_ref(),
                leader: leader.as_ref(),
                board: &self.board,
                metrics: self.metrics.as_ref(),
            };
            run.run(&cancel)
        });
        futures::future::join_all(loops).await;
    }
}

/// One target's reconcile loop and what it reports to.
struct TargetLoop<'a> {
    config: &'a Config,
    target: &'a PublishConfig,
    publisher: &'a dyn Publisher,
    leader: &'a dyn Leader,
    board: &'a PublishBoard,
    metrics: Option<&'a Metrics>,
}

/// What one pass came to: every record's status and every error met.
struct Pass {
    /// One per desired record, in config order.
    records: Vec<PublishedRecord>,
    wrote: bool,
    /// One per record that failed.
    errors: Vec<PublishError>,
}

impl Pass {
    /// The error that decides the wait: a rate limit (the longest) first.
    fn worst(&self) -> Option<&PublishError> {
        self.errors.iter().max_by_key(|e| e.rank())
    }

    /// What the status says of a failed pass: the worst error, and how
    /// many other records failed (each record's own is in `records`).
    fn summary(&self, worst: &PublishError) -> String {
        match self.errors.len() {
            0 | 1 => worst.to_string(),
            n => format!(
                "{worst} (and {} more failed record{}; see records)",
                n - 1,
                if n == 2 { "" } else { "s" }
            ),
        }
    }
}

/// What became of one record in a pass.
enum Reconciled {
    Done {
        record: PublishedRecord,
        wrote: bool,
    },
    Failed {
        record: PublishedRecord,
        error: PublishError,
    },
    /// This node stopped leading before or while writing it.
    Deposed,
}

impl TargetLoop<'_> {
    async fn run(self, cancel: &CancellationToken) {
        let mut applied = self.leader.applied();
        let mut failures = 0u32;
        loop {
            if !self.leader.is_acting_leader() {
                self.board.update(&self.target.name, |s| s.active = false);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = applied.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(LEADERSHIP_POLL) => {}
                }
                continue;
            }
            self.board.update(&self.target.name, |s| s.active = true);
            let state = applied.borrow_and_update().clone();
            let wanted = desired(self.config, self.target, &state.state);
            let pass = tokio::select! {
                () = cancel.cancelled() => return,
                () = leadership_lost(self.leader) => continue,
                pass = self.pass(&wanted) => pass,
            };
            // Deposed mid-pass: nothing to report; the loop's top notices
            // and stands by.
            let Some(pass) = pass else { continue };
            let (wait, wake_on_change) = match pass.worst() {
                None => {
                    failures = 0;
                    let in_sync = pass.records.iter().all(|r| r.state == RecordState::InSync);
                    let wait = if pass.wrote {
                        VERIFY_AFTER
                    } else {
                        self.target.interval
                    };
                    self.board.update(&self.target.name, |s| {
                        s.in_sync = in_sync;
                        s.records = pass.records;
                        s.last_success = Some(now_millis());
                        // `last_error` is set exactly while passes fail;
                        // `last_error_at` stays, as when the last one did.
                        s.last_error = None;
                        s.failures = 0;
                    });
                    (wait, true)
                }
                Some(worst) => {
                    failures = failures.saturating_add(1);
                    if let Some(metrics) = self.metrics {
                        metrics.publisher_failed(&self.target.name, worst.kind());
                    }
                    let summary = pass.summary(worst);
                    let wait = wait_after(worst, failures, rand::random_range(0.5..=1.0));
                    self.board.update(&self.target.name, |s| {
                        s.in_sync = false;
                        s.records = pass.records;
                        s.last_error = Some(summary);
                        s.last_error_at = Some(now_millis());
                        s.failures = u64::from(failures);
                    });
                    wait
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = desired_changes(self.config, self.target, &mut applied, &wanted), if wake_on_change => {}
            }
        }
    }

    /// Reads, plans and (where needed) writes every record once; `None` if
    /// it stopped because this node no longer leads. A record that fails
    /// does not stop the others, except a rate limit: the target asked for
    /// no more requests, so the records after it wait for the next pass.
    async fn pass(&self, wanted: &[Desired]) -> Option<Pass> {
        let mut pass = Pass {
            records: Vec::with_capacity(wanted.len()),
            wrote: false,
            errors: Vec::new(),
        };
        for (i, desired) in wanted.iter().enumerate() {
            match self.reconcile(desired).await {
                Reconciled::Deposed => return None,
                Reconciled::Done { record, wrote } => {
                    pass.records.push(record);
                    pass.wrote |= wrote;
                }
                Reconciled::Failed { record, error } => {
                    pass.records.push(record);
                    let limited = matches!(error, PublishError::RateLimited { .. });
                    pass.errors.push(error);
                    if limited {
                        let skipped =
                            "not read in this pass: the target rate-limited an earlier request";
                        for later in &wanted[i + 1..] {
                            pass.records.push(record_status(
                                later,
                                RecordState::Failed,
                                None,
                                Some(skipped.into()),
                            ));
                        }
                        break;
                    }
                }
            }
        }
        Some(pass)
    }

    /// Reads one record back, plans, and writes it if the plan says so.
    async fn reconcile(&self, desired: &Desired) -> Reconciled {
        let status = |state, published, detail| record_status(desired, state, published, detail);
        let failed = |published, error: PublishError| Reconciled::Failed {
            record: status(RecordState::Failed, published, Some(error.to_string())),
            error,
        };
        let actual = match self.publisher.read(&desired.name).await {
            Ok(actual) => actual,
            Err(error) => {
                warn!(target_name = %self.target.name, record = %desired.name, %error, "reading the published record failed");
                return failed(None, error);
            }
        };
        let published = actual.marker().map(|m| m.epoch);
        let reason = match plan(desired, &actual) {
            Plan::InSync => {
                return Reconciled::Done {
                    record: status(RecordState::InSync, published, None),
                    wrote: false,
                };
            }
            Plan::Hold { why } => {
                warn!(target_name = %self.target.name, record = %desired.name, %why, "not publishing");
                return Reconciled::Done {
                    record: status(RecordState::Held, published, Some(why)),
                    wrote: false,
                };
            }
            Plan::Write(reason) => reason,
        };
        match self
            .publisher
            .write(desired, &actual, &Acting(self.leader))
            .await
        {
            Ok(()) => {}
            Err(PublishError::Deposed(why)) => {
                info!(target_name = %self.target.name, record = %desired.name, %why, "stopped publishing");
                return Reconciled::Deposed;
            }
            Err(error) => {
                warn!(target_name = %self.target.name, record = %desired.name, reason = reason.as_str(), %error, "publishing failed");
                return failed(published, error);
            }
        }
        self.board.update(&self.target.name, |s| s.writes += 1);
        if let Some(metrics) = self.metrics {
            metrics.publisher_wrote(&self.target.name);
        }
        info!(
            target_name = %self.target.name,
            record = %desired.name,
            answer = %desired.target,
            instance = %desired.marker.instance,
            epoch = desired.marker.epoch,
            previous_epoch = ?published,
            reason = reason.as_str(),
            "published"
        );
        Reconciled::Done {
            record: status(RecordState::Written, published, None),
            wrote: true,
        }
    }
}

/// The status of `desired`'s record after a pass.
fn record_status(
    desired: &Desired,
    state: RecordState,
    published_epoch: Option<u64>,
    detail: Option<String>,
) -> PublishedRecord {
    PublishedRecord {
        service: desired.service.clone(),
        name: desired.name.clone(),
        epoch: desired.marker.epoch,
        published_epoch,
        state,
        detail,
    }
}

/// Resolves once this node is no longer the acting leader.
async fn leadership_lost(leader: &dyn Leader) {
    while leader.is_acting_leader() {
        tokio::time::sleep(LEADERSHIP_POLL).await;
    }
}

/// Resolves once an applied change alters what `target` should hold (never
/// if the channel closes: the caller's other branches end the wait).
async fn desired_changes(
    config: &Config,
    target: &PublishConfig,
    applied: &mut watch::Receiver<Arc<AppliedState>>,
    wanted: &[Desired],
) {
    loop {
        if applied.changed().await.is_err() {
            return std::future::pending().await;
        }
        let state = applied.borrow_and_update().clone();
        if desired(config, target, &state.state) != wanted {
            return;
        }
    }
}

fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
