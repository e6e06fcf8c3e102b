//! Hooks: the `[[hooks]]` commands and webhooks the leader runs after each
//! committed change of active instance, so that something outside DNS (a
//! load balancer, a pager, the old instance's fencing) hears of it.
//!
//! Delivery is **at least once**, across leader changes. A hook's progress is
//! itself in the Raft log: after a run succeeds, the leader proposes
//! [`Command::HookDone`], and [`State::hooks_done`] keeps, per hook, the index
//! of the last event it has run for. Whichever node leads runs, for each
//! hook, every event the record says it still owes ([`next_due`]), so a run
//! that a deposed leader never confirmed is run again by the next one. The
//! epoch in every payload lets a receiver drop duplicates and refuse the
//! older instance.
//!
//! Each hook has its own loop: a failing or hanging hook is retried with
//! exponential backoff and jitter (0.5 s doubling up to 30 s), forever while
//! this node leads, and holds back only its own later events, which keeps
//! them in epoch order. Nothing here is awaited by the decide loop or DNS.
//! A run in progress is abandoned as soon as this node stops being the
//! acting leader (an exec hook's process group is killed).
//!
//! This module must never propose anything but [`Command::HookDone`], and
//! never runs a hook for a change before it is committed and applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::config::{Config, HookConfig, HookKind, HookSecret};
use crate::health::probe::{describe_http_error, run_program, substitute_fields};
use crate::model::{AppliedState, ApplyOutcome, Command, Event, Reason, State, UnixMillis};
use crate::retry::Backoff;

/// The wait before the second attempt; it doubles after every failure.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often a waiting or running hook checks that this node still leads.
/// Leadership is a clock-based judgement ([`Cluster::is_acting_leader`]),
/// so there is nothing to wait on but time.
const LEADERSHIP_POLL: Duration = Duration::from_millis(50);

/// The header carrying a webhook body's HMAC-SHA256, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-highlander-signature";

/// What the hook runner needs from the cluster; a trait so tests can fake it.
pub trait Leadership: Send + Sync + 'static {
    /// Whether this node may act as the leader now.
    fn is_acting_leader(&self) -> bool;
    /// The applied state, updated after every apply.
    fn applied(&self) -> watch::Receiver<Arc<AppliedState>>;
    /// Commits that `hook` has run for every event it owed up to `index`.
    fn confirm(&self, hook: String, index: u64) -> BoxFuture<'_, Result<(), String>>;
}

impl Leadership for Cluster {
    fn is_acting_leader(&self) -> bool {
        Cluster::is_acting_leader(self)
    }

    fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        Cluster::applied(self)
    }

    fn confirm(&self, hook: String, index: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.propose(Command::HookDone { hook, index }).await {
                Ok(ApplyOutcome::Applied | ApplyOutcome::Unchanged) => Ok(()),
                Ok(ApplyOutcome::Rejected { why }) => Err(why),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Whether hooks run for events with this reason: only changes of active
/// instance. `all-down` and `recovered` keep the instance and the epoch, so
/// a receiver that acts on "the active instance is now X" has nothing to do.
pub fn is_change(reason: Reason) -> bool {
    match reason {
        Reason::Initial
        | Reason::Failover
        | Reason::Failback
        | Reason::Switchover
        | Reason::Drain => true,
        Reason::AllDown | Reason::Recovered => false,
    }
}

/// The next event a hook owes, and the index to confirm once it has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub event: Event,
    /// Every event up to here is settled for this hook once `event` has run.
    pub through: u64,
}

/// The next event `hook` owes, given what the state records it has run for.
///
/// With a record, that is the oldest covered change after it. A hook with
/// no record yet (a new hook, or a new cluster) owes only each service's
/// latest change, oldest first, so adding a hook to a running cluster tells
/// it where things stand instead of replaying the whole history. Events
/// dropped from the bounded history before a hook ran for them are never
/// run.
pub fn next_due(hook: &HookConfig, state: &State) -> Option<Due> {
    let mut owed = state
        .events
        .iter()
        .filter(|e| is_change(e.reason) && hook.covers(&e.service));
    match state.hooks_done.get(&hook.name) {
        Some(&done) => owed.find(|e| e.index > done).map(|e| Due {
            event: Event::clone(e),
            through: e.index,
        }),
        None => {
            let mut latest: BTreeMap<&str, &Event> = BTreeMap::new();
            for e in owed {
                latest.insert(&e.service, e);
            }
            let mut baseline: Vec<&Event> = latest.into_values().collect();
            baseline.sort_by_key(|e| e.index);
            let first = baseline.first()?;
            // Skipping what lies between the baseline events is the point,
            // so confirming the first settles everything before the second.
            let through = baseline.get(1).map_or(first.index, |next| next.index - 1);
            Some(Due {
                event: (*first).clone(),
                through,
            })
        }
    }
}

/// What a hook is told about a change: the webhook's JSON body, and the
/// exec hook's placeholders and environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub service: String,
    /// The instance that was active before; empty for the first choice.
    pub old: String,
    pub new: String,
    pub epoch: u64,
    pub reason: &'static str,
    /// The Raft log index of the change: unique per change, like the epoch
    /// is per service.
    pub index: u64,
    pub at: UnixMillis,
}

impl Change {
    /// The change an event records.
    pub fn of(event: &Event) -> Change {
        Change {
            service: event.service.clone(),
            old: event.from.clone().unwrap_or_default(),
            new: event.to.clone().unwrap_or_default(),
            epoch: event.epoch.0,
            reason: event.reason.as_str(),
            index: event.index,
            at: event.at,
        }
    }

    /// `(placeholder, value)`: `{service}` and friends in an exec hook's
    /// argv, `HIGHLANDER_SERVICE` and friends in its environment.
    pub fn fields(&self) -> [(&'static str, String); 7] {
        [
            ("service", self.service.clone()),
            ("old", self.old.clone()),
            ("new", self.new.clone()),
            ("epoch", self.epoch.to_string()),
            ("reason", self.reason.to_owned()),
            ("index", self.index.to_string()),
            ("at", self.at.to_string()),
        ]
    }

    /// An exec hook's argv with the placeholders substituted.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let fields = self.fields();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        command
            .iter()
            .map(|arg| substitute_fields(arg, &fields))
            .collect()
    }

    /// An exec hook's extra environment: `HIGHLANDER_<FIELD>`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.fields()
            .into_iter()
            .map(|(name, value)| {
                let var = match name {
                    "service" => "HIGHLANDER_SERVICE",
                    "old" => "HIGHLANDER_OLD",
                    "new" => "HIGHLANDER_NEW",
                    "epoch" => "HIGHLANDER_EPOCH",
                    "reason" => "HIGHLANDER_REASON",
                    "index" => "HIGHLANDER_INDEX",
                    _ => "HIGHLANDER_AT",
                };
                (var, value)
            })
            .collect()
    }
}

/// The `X-Highlander-Signature` value for `body`: `sha256=` and the
/// lowercase hex HMAC-SHA256 of the body under the webhook's secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for byte in tag.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// How a failing hook is retried: [`RETRY_FIRST`] doubling up to [`RETRY_MAX`].
pub const BACKOFF: Backoff = Backoff {
    first: RETRY_FIRST,
    max: RETRY_MAX,
};

/// Per hook: how often it failed and how many runs were confirmed. For the
/// metrics endpoint; never reset.
/// Told the hook's name on every failed attempt.
type FailureObserver = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub struct HookStats {
    /// Fixed at construction (one entry per configured hook), so counting
    /// needs no lock.
    counters: BTreeMap<String, Counters>,
    /// Told of every failed attempt (the metrics endpoint's counter).
    on_failure: std::sync::OnceLock<FailureObserver>,
}

impl std::fmt::Debug for HookStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookStats")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Counters {
    failures: AtomicU64,
    confirmed: AtomicU64,
}

impl HookStats {
    fn new(hooks: &[HookConfig]) -> HookStats {
        HookStats {
            counters: hooks
                .iter()
                .map(|h| (h.name.clone(), Counters::default()))
                .collect(),
            on_failure: std::sync::OnceLock::new(),
        }
    }

    /// Counts a failed attempt of `hook` and tells the observer, if any.
    fn failed(&self, hook: &str) {
        self.count(hook, |c| &c.failures);
        if let Some(observer) = self.on_failure.get() {
            observer(hook);
        }
    }

    /// Failed attempts of `hook` (each retry counts), 0 for an unknown hook.
    pub fn failures(&self, hook: &str) -> u64 {
        self.counters
            .get(hook)
            .map_or(0, |c| c.failures.load(Ordering::Relaxed))
    }

    /// Runs of `hook` that succeeded and were committed as done.
    pub fn confirmed(&self, hook: &str) -> u64 {
        self.counters
            .get(hook)
            .map_or(0, |c| c.confirmed.load(Ordering::Relaxed))
    }

    fn count(&self, hook: &str, what: impl Fn(&Counters) -> &AtomicU64) {
        if let Some(c) = self.counters.get(hook) {
            what(c).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every configured hook, ready to run on the leader.
pub struct Hooks {
    hooks: Vec<HookConfig>,
    /// Shared by every webhook; `Err` (reported at every attempt) if it
    /// could not be built.
    client: Result<reqwest::Client, String>,
    stats: Arc<HookStats>,
}

impl Hooks {
    /// The hooks of `config`.
    pub fn new(config: &Config) -> Hooks {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // HTTP_PROXY in the environment must not route hooks elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("highlander/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"));
        Hooks {
            stats: Arc::new(HookStats::new(&config.hooks)),
            hooks: config.hooks.clone(),
            client,
        }
    }

    /// The failure and delivery counters, shared with whoever reports them.
    pub fn stats(&self) -> Arc<HookStats> {
        self.stats.clone()
    }

    /// Calls `observer` with the hook's name on every failed attempt.
    pub fn on_failure(self, observer: impl Fn(&str) + Send + Sync + 'static) -> Hooks {
        // Set once, right after construction; a second call keeps the first.
        let _ = self.stats.on_failure.set(Box::new(observer));
        self
    }

    /// Runs every hook, each in its own loop, whenever this node is the
    /// acting leader, until `cancel`.
    pub async fn run(self, leadership: Arc<dyn Leadership>, cancel: CancellationToken) {
        let runs = self.hooks.iter().map(|hook| {
            run_hook(
                hook,
                &self.client,
                &self.stats,
                leadership.as_ref(),
                &cancel,
            )
        });
        futures::future::join_all(runs).await;
    }
}

/// One hook's loop: wait until this node leads and the hook owes an event,
/// run it until it succeeds (or leadership is lost), confirm it, repeat.
async fn run_hook(
    hook: &HookConfig,
    client: &Result<reqwest::Client, String>,
    stats: &HookStats,
    leadership: &dyn Leadership,
    cancel: &CancellationToken,
) {
    let mut applied = leadership.applied();
    loop {
        let due = loop {
            if leadership.is_acting_leader() {
                let state = applied.borrow_and_update().clone();
                if let Some(due) = next_due(hook, &state.state) {
                    break due;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(LEADERSHIP_POLL * 2) => {}
            }
        };
        let change = Change::of(&due.event);
        let ran = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = leadership_lost(leadership) => false,
            () = run_until_success(hook, client, stats, &change) => true,
        };
        if !ran {
            info!(hook = %hook.name, service = %change.service, epoch = change.epoch, "no longer the leader: stopped the hook's run; the next leader runs it again");
            continue;
        }
        match leadership.confirm(hook.name.clone(), due.through).await {
            Ok(()) => stats.count(&hook.name, |c| &c.confirmed),
            // The run will be repeated (by us, or the next leader): at least once.
            Err(error) => {
                warn!(hook = %hook.name, service = %change.service, epoch = change.epoch, %error, "hook ran but its completion was not committed; it will run again");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_FIRST) => {}
                }
            }
        }
    }
}

/// Resolves once this node is no longer the acting leader.
async fn leadership_lost(leadership: &dyn Leadership) {
    while leadership.is_acting_leader() {
        tokio::time::sleep(LEADERSHIP_POLL).await;
    }
}

/// Runs `hook` for `change` until an attempt succeeds, waiting [`BACKOFF`]
/// between attempts.
async fn run_until_success(
    hook: &HookConfig,
    client: &Result<reqwest::Client, String>,
    stats: &HookStats,
    change: &Change,
) {
    let mut attempt = 1u32;
    loop {
        match attempt_once(hook, client, change).await {
            Ok(detail) => {
                info!(hook = %hook.name, service = %change.service, epoch = change.epoch, reason = change.reason, attempt, %detail, "hook ran");
                return;
            }
            Err(error) => {
                stats.failed(&hook.name);
                let wait = BACKOFF.jittered(attempt);
                warn!(
                    hook = %hook.name,
                    service = %change.service,
                    epoch = change.epoch,
                    attempt,
                    %error,
                    "hook failed; retrying in {}",
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
                    ))
                );
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// One attempt, bounded by the hook's timeout.
async fn attempt_once(
    hook: &HookConfig,
    client: &Result<reqwest::Client, String>,
    change: &Change,
) -> Result<String, String> {
    match &hook.kind {
        HookKind::Exec { command } => {
            // `run_program` kills at the timeout and reports it; the outer
            // bound only catches a wait that outlives the kill.
            let (argv, env) = (change.argv(command), change.env());
            let run = run_program(&argv, &env, hook.timeout);
            tokio::time::timeout(hook.timeout + Duration::from_secs(1), run)
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))
        }
        HookKind::Webhook { url, secret, .. } => {
            let client = client.as_ref().map_err(Clone::clone)?;
            post(client, url, secret.as_ref(), change, hook.timeout).await
        }
    }
}

/// POSTs `change` as JSON, signed when there is a secret; success is 2xx.
async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&HookSecret>,
    change: &Change,
    timeout: Duration,
) -> Result<String, String> {
    let body = serde_json::to_vec(change).map_err(|e| e.to_string())?;
    let mut request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        request = request.header(SIGNATURE_HEADER, signature(&secret.0, &body));
    }
    let send = request.body(body).send();
    // reqwest's timeout covers the whole exchange; this outer one is a guard.
    let response = tokio::time::timeout(timeout + Duration::from_secs(1), send)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| describe_http_error(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("HTTP {} (expected 2xx)", status.as_u16()))
    }
}

#[cfg(test)]
mod tests;
