//! `highlander demo`: the whole system on loopback, telling its own story.
//!
//! It starts two HTTP instances of service `app` in this process (`primary`
//! on 127.0.0.2, `backup` on 127.0.0.3, one port), three coordinator nodes
//! as child processes of this binary (the [`local_cluster`] kit, in a
//! temporary directory), and a client that every 500 ms resolves `app.<zone>`
//! through the nodes' DNS and sends `GET /` to the address it got. Then it
//! kills the active instance, kills the Raft leader and restores everything,
//! measuring each step from the client's and the nodes' point of view, and
//! ends with a summary table and its checks.
//!
//! It must never leave anything behind: every node is spawned from the
//! thread that runs the demo with `PR_SET_PDEATHSIG`, so the kernel kills the
//! nodes even when the demo is killed with SIGKILL; SIGINT, SIGTERM, SIGHUP
//! and a panic drop the [`LocalCluster`], which kills and reaps the nodes and
//! removes the temporary directory. It is a demo and a smoke test, never
//! part of a node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::api::Events;
use crate::local_cluster::{
    ActiveAnswer, ClusterSpec, DIR_PREFIX, HttpInstance, LocalCluster, LocalClusterError,
    active_address, active_answer,
};
use crate::model::Verdict;

/// The zone the demo's nodes answer.
pub const ZONE: &str = "svc.example.";
/// The demo's one service.
pub const SERVICE: &str = "app";
/// `primary` (priority 1) is answered and bound here …
const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// … and `backup` (priority 2) here, on the same port, so that the DNS
/// answer alone decides where the client's request goes.
const BACKUP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// How often the client resolves and requests, as the prototype's curl loop.
const CLIENT_EVERY: Duration = Duration::from_millis(500);
/// How long the client waits for one node's DNS answer or one HTTP response
/// before it counts as failed (well under [`CLIENT_EVERY`]).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);
/// How often a step polls the nodes while it measures.
const POLL: Duration = Duration::from_millis(10);
/// The longest any step may take before the demo gives up as hung.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the survivors' DNS is still watched after a new leader is agreed.
const WATCH_AFTER: Duration = Duration::from_millis(500);
/// The configured failback delay, short so that the story is quick.
const FAILBACK_DELAY: Duration = Duration::from_secs(5);
/// With manual failback, how long past [`FAILBACK_DELAY`] the demo watches
/// that nothing fails back.
const MANUAL_WATCH_EXTRA: Duration = Duration::from_secs(3);

/// How the story is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Narrated with short pauses between steps, for a person watching.
    Narrated,
    /// No pauses beyond what the client needs to show each state.
    Scripted,
    /// Each step waits for a key.
    Interactive,
}

/// What `highlander demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `highlander` binary the nodes run (normally this process's own).
    pub binary: PathBuf,
    pub pace: Pace,
    /// `failback = "manual"` instead of `"auto"`.
    pub manual_failback: bool,
    /// ANSI colours (only for a terminal, and not with `NO_COLOR`).
    pub colour: bool,
}

/// Why the demo could not run its story to the end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    #[error("{what} did not happen within {STEP_DEADLINE:?}; node logs:\n{logs}")]
    Hung { what: String, logs: String },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("stopped by {0}; every node was killed and the temporary directory removed")]
    Interrupted(&'static str),
}

/// One measured value in the summary.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub value: String,
}

/// One check the demo makes; a failed one makes `--scripted` exit 1.
#[derive(Debug, Clone)]
pub struct Check {
    pub label: String,
    pub ok: bool,
    pub detail: String,
}

/// What the demo measured and checked.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
}

impl Summary {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The summary table, coloured by `style`.
    pub fn render(&self, style: Style) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.label.len())
            .chain(self.checks.iter().map(|c| c.label.len()))
            .max()
            .unwrap_or(0);
        let mut out = style.bold("Summary\n");
        let _ = writeln!(out, "  {:width$}  measured", "what");
        for row in &self.rows {
            let _ = writeln!(out, "  {:width$}  {}", row.label, row.value);
        }
        out.push('\n');
        let _ = writeln!(out, "  {:width$}  result", "check");
        for check in &self.checks {
            let verdict = if check.ok {
                style.green("ok")
            } else {
                style.red("FAILED")
            };
            let _ = writeln!(out, "  {:width$}  {verdict}  {}", check.label, check.detail);
        }
        out
    }
}

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
}

impl Style {
    pub fn new(colour: bool) -> Style {
        Style { colour }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }
    pub fn cyan(self, text: &str) -> String {
        self.paint("1;36", text)
    }
}

/// One round of the client: what it resolved and what the request got.
#[derive(Debug, Clone)]
struct ClientSample {
    /// When the round started.
    at: Instant,
    /// The node whose answer was used.
    node: Option<u64>,
    answer: Option<Ipv4Addr>,
    epoch: Option<u64>,
    /// The response body, or why the request (or resolution) failed.
    response: Result<String, String>,
}

/// What the client and the steps saw, shared with the client task. Locked
/// only for a push or a read, never across an `.await`.
#[derive(Debug, Default)]
struct Observations {
    samples: Vec<ClientSample>,
    /// Every (epoch → instance) pair any node answered, for the S1 check.
    epochs: BTreeMap<u64, BTreeSet<String>>,
    answers_checked: usize,
}

impl Observations {
    fn record(&mut self, epoch: u64, instance: &str) {
        self.epochs
            .entry(epoch)
            .or_default()
            .insert(instance.to_owned());
        self.answers_checked += 1;
    }
}

type Shared = Arc<Mutex<Observations>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Observations> {
    // A panicked client task leaves plain data behind; keep using it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the demo until its story ends (or `q` in interactive mode), or
/// until SIGINT, SIGTERM or SIGHUP. Must run on a multi-threaded runtime's
/// main task: nodes are spawned (blocking) from this thread, and die with it.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    tokio::select! {
        result = story(options) => result,
        signal = shutdown_signal() => Err(DemoError::Interrupted(signal)),
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ];
    let mut streams = Vec::new();
    for (kind, name) in kinds {
        if let Ok(stream) = signal(kind) {
            streams.push((stream, name));
        }
    }
    let waits = streams.iter_mut().map(|(stream, name)| {
        Box::pin(async move {
            stream.recv().await;
            *name
        })
    });
    futures::future::select_all(waits).await.0
}

/// Everything the story acts on. Dropping it (at the end, on a signal or
/// while a panic unwinds) stops the client, kills every node and removes
/// the temporary directory.
struct Demo {
    options: DemoOptions,
    style: Style,
    started: Instant,
    cluster: LocalCluster,
    /// `Some` while running; `None` after it was killed.
    primary: Option<HttpInstance>,
    backup: Option<HttpInstance>,
    /// Where each instance listens (kept for restarts).
    instance_addrs: [(String, SocketAddr); 2],
    seen: Shared,
    http: reqwest::Client,
    summary: Summary,
    failovers: usize,
    leader_kills: usize,
    restores: usize,
    /// Stops the client when the demo is dropped.
    _client: DropGuard,
    /// The janitor's standard input: closed when the demo exits, however it
    /// exits, which tells the janitor to remove the temporary directory.
    /// Declared after `cluster`, so a normal exit removes it first.
    _janitor: Option<std::process::ChildStdin>,
}

async fn story(options: DemoOptions) -> Result<Summary, DemoError> {
    let style = Style::new(options.colour);
    let started = Instant::now();
    say(
        style,
        &style.cyan("highlander demo: there can be only one"),
        "",
    );
    let (primary, backup) = start_instances().await?;
    let instance_addrs = [
        ("primary".to_owned(), primary.addr()),
        ("backup".to_owned(), backup.addr()),
    ];
    let services = services_toml(&instance_addrs, options.manual_failback);
    let mut spec = ClusterSpec::new(3, ZONE, &services);
    spec.die_with_parent = true;
    let cluster = LocalCluster::start(&options.binary, spec)?;

    println!(
        "instances: primary on http://{} (answered as A {PRIMARY_IP}), backup on http://{} (A {BACKUP_IP})",
        primary.addr(),
        backup.addr()
    );
    for id in cluster.node_ids() {
        println!(
            "node {id}: pid {}, dns {}, api http://{}",
            cluster.pid(id).unwrap_or(0),
            cluster.dns_addr(id),
            cluster.api_addr(id)
        );
    }
    println!("temporary directory: {}", cluster.dir().display());
    println!(
        "dashboard: http://{}/ (any node's API serves it)",
        cluster.api_addr(1)
    );
    println!(
        "check interval 500ms, timeout 300ms, rise 2, fall 2; failback {}",
        if options.manual_failback {
            "manual".to_owned()
        } else {
            format!("auto after {FAILBACK_DELAY:?}")
        }
    );

    let janitor = spawn_janitor(&options.binary, cluster.dir());
    let seen: Shared = Arc::default();
    let cancel = CancellationToken::new();
    let dns: Vec<(u64, SocketAddr)> = cluster
        .node_ids()
        .into_iter()
        .map(|id| (id, cluster.dns_addr(id)))
        .collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .map_err(|e| DemoError::Io {
            what: "build an HTTP client".into(),
            source: std::io::Error::other(e),
        })?;
    let mut demo = Demo {
        style,
        started,
        cluster,
        primary: Some(primary),
        backup: Some(backup),
        instance_addrs,
        seen: seen.clone(),
        http: http.clone(),
        summary: Summary::default(),
        failovers: 0,
        leader_kills: 0,
        restores: 0,
        _client: cancel.clone().drop_guard(),
        _janitor: janitor,
        options,
    };

    let first = Instant::now();
    demo.wait_all_answer("primary", 0, first).await?;
    demo.summary.rows.push(Row {
        label: "start: every node answers primary".into(),
        value: format!("{} after the nodes started", secs(first.elapsed())),
    });
    say(
        style,
        &style.bold("The cluster chose primary (epoch 1)."),
        "Now the client resolves app.svc.example. every 500 ms through the nodes' DNS \
         and requests what it got: time, answer, epoch, response.",
    );
    let port = demo.instance_addrs[0].1.port();
    tokio::spawn(client(
        dns,
        port,
        http,
        seen,
        started,
        style,
        cancel.clone(),
    ));

    match demo.options.pace {
        Pace::Interactive => demo.interactive().await?,
        Pace::Scripted | Pace::Narrated => {
            demo.pause().await;
            demo.kill_active().await?;
            demo.pause().await;
            demo.kill_leader().await?;
            demo.pause().await;
            demo.restore().await?;
            demo.pause().await;
        }
    }
    cancel.cancel();
    demo.finish();
    Ok(std::mem::take(&mut demo.summary))
}

impl Demo {
    async fn pause(&self) {
        let pause = match self.options.pace {
            Pace::Narrated => Duration::from_secs(4),
            Pace::Scripted => Duration::from_millis(1500),
            Pace::Interactive => Duration::ZERO,
        };
        tokio::time::sleep(pause).await;
    }

    fn at(&self) -> String {
        format!("{:>7}", secs(self.started.elapsed()))
    }

    fn step(&self, title: &str, story: &str) {
        println!();
        say(
            self.style,
            &format!("{} {}", self.at(), self.style.cyan(title)),
            story,
        );
    }

    fn result(&self, text: &str) {
        println!("{} {}", self.at(), self.style.green(text));
    }

    fn warn(&self, text: &str) {
        println!("{} {}", self.at(), self.style.red(text));
    }

    async fn interactive(&mut self) -> Result<(), DemoError> {
        let (mut keys, _terminal) = read_keys();
        loop {
            println!(
                "\n{}",
                self.style.bold(
                    "keys: k kill the active instance, l kill the leader, r restore everything, q quit"
                )
            );
            match keys.recv().await {
                Some('k') => self.kill_active().await?,
                Some('l') => self.kill_leader().await?,
                Some('r') => self.restore().await?,
                Some('q') | None => return Ok(()),
                Some(_) => {}
            }
        }
    }

    /// Which instance every node agrees is active, with its epoch.
    async fn agreed_active(&self) -> Option<ActiveAnswer> {
        let mut agreed: Option<ActiveAnswer> = None;
        for id in self.cluster.live_ids() {
            let answer = self.cluster.answer(id, SERVICE).await.ok()??;
            lock(&self.seen).record(answer.epoch, &answer.instance);
            if agreed.as_ref().is_some_and(|a| *a != answer) {
                return None;
            }
            agreed = Some(answer);
        }
        agreed
    }

    /// Polls until every live node answers the same active instance.
    async fn wait_agreed(&self) -> Result<ActiveAnswer, DemoError> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            if let Some(answer) = self.agreed_active().await {
                return Ok(answer);
            }
            self.check_deadline(deadline, "the nodes agreeing on an active instance")?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until every live node answers `instance` at an epoch above
    /// `above`; returns when the last one did, measured from `since`.
    async fn wait_all_answer(
        &self,
        instance: &str,
        above: u64,
        since: Instant,
    ) -> Result<(Duration, u64), DemoError> {
        let deadline = since + STEP_DEADLINE;
        loop {
            if let Some(answer) = self.agreed_active().await {
                if answer.instance == instance && answer.epoch > above {
                    return Ok((since.elapsed(), answer.epoch));
                }
            }
            self.check_deadline(deadline, &format!("every node answering {instance}"))?;
            tokio::time::sleep(POLL).await;
        }
    }

    fn check_deadline(&self, deadline: Instant, what: &str) -> Result<(), DemoError> {
        if Instant::now() > deadline {
            return Err(DemoError::Hung {
                what: what.to_owned(),
                logs: self.cluster.log_tails(20),
            });
        }
        Ok(())
    }

    async fn leader(&self) -> Result<u64, DemoError> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            if let Some(leader) = self.cluster.leader().await {
                return Ok(leader);
            }
            self.check_deadline(deadline, "an agreed leader")?;
            tokio::time::sleep(POLL).await;
        }
    }

    fn instance_ip(name: &str) -> Ipv4Addr {
        if name == "primary" {
            PRIMARY_IP
        } else {
            BACKUP_IP
        }
    }

    /// Kill the active instance and measure the failover.
    async fn kill_active(&mut self) -> Result<(), DemoError> {
        let active = self.wait_agreed().await?;
        let other = if active.instance == "primary" {
            "backup"
        } else {
            "primary"
        };
        let other_running = match other {
            "primary" => self.primary.is_some(),
            _ => self.backup.is_some(),
        };
        if !other_running {
            self.warn(&format!(
                "{other} is down too: killing {} would leave nothing to fail over to; press r first",
                active.instance
            ));
            return Ok(());
        }
        self.failovers += 1;
        let n = self.failovers;
        self.step(
            &format!("Kill the active instance, {}.", active.instance),
            &format!(
                "Its port now refuses connections. Every node probes it every 500 ms; after 2 failed \
                 probes a node calls it down, once a majority does the leader commits a failover to \
                 {other} at epoch {}. The client's requests fail only until DNS answers {other}.",
                active.epoch + 1
            ),
        );
        let leader = self.leader().await?;
        let killed = match active.instance.as_str() {
            "primary" => self.primary.take(),
            _ => self.backup.take(),
        };
        let wall = unix_ms();
        let t0 = Instant::now();
        if let Some(instance) = killed {
            instance.kill().await;
        }
        let deadline = t0 + STEP_DEADLINE;
        let mut detected = None;
        let all = loop {
            if detected.is_none() && self.majority_down(leader, &active.instance).await {
                detected = Some(t0.elapsed());
            }
            if let Some(answer) = self.agreed_active().await {
                if answer.instance == other && answer.epoch > active.epoch {
                    break (t0.elapsed(), answer.epoch);
                }
            }
            self.check_deadline(deadline, &format!("the failover to {other}"))?;
            tokio::time::sleep(POLL).await;
        };
        let detected = detected.unwrap_or(all.0);
        let commit = self.commit_after(leader, all.1, wall).await;
        // One more client round, so that the first request to the new
        // instance is counted in this step.
        tokio::time::sleep(CLIENT_EVERY).await;
        let (failed, total, late) =
            self.client_failures(t0, Some(Self::instance_ip(&active.instance)));
        self.result(&format!(
            "a majority saw {} down after {}; epoch {} committed after {}; every node answered {other} after {}; the client saw {failed} of {total} requests fail",
            active.instance,
            secs(detected),
            all.1,
            commit.map_or("?".to_owned(), secs),
            secs(all.0),
        ));
        let label = |what: &str| format!("failover {n} ({}): {what}", active.instance);
        let rows = [
            ("detection (majority verdict down)", secs(detected)),
            (
                "commit (event at)",
                commit.map_or("not found in /v1/events".to_owned(), secs),
            ),
            ("every node answers the new instance", secs(all.0)),
            ("failed client requests", format!("{failed} of {total}")),
        ];
        for (what, value) in rows {
            self.summary.rows.push(Row {
                label: label(what),
                value,
            });
        }
        self.summary.checks.push(Check {
            label: label("requests failed only while DNS named the dead instance"),
            ok: late == 0,
            detail: format!("{late} failed after the answer changed"),
        });
        Ok(())
    }

    /// Whether most nodes' verdicts on `instance`, as `leader` reports
    /// them in `/v1/status`, are down.
    async fn majority_down(&self, leader: u64, instance: &str) -> bool {
        let Ok(status) = self.cluster.status(leader).await else {
            return false;
        };
        let nodes = self.cluster.node_ids().len();
        status
            .services
            .iter()
            .filter(|s| s.name == SERVICE)
            .flat_map(|s| &s.instances)
            .filter(|i| i.name == instance)
            .any(|i| i.health.values().filter(|v| **v == Verdict::Down).count() > nodes / 2)
    }

    /// How long after `wall` (Unix ms) the change to `epoch` was committed,
    /// by its event's `at` in the leader's (or any live node's) `/v1/events`.
    async fn commit_after(&self, leader: u64, epoch: u64, wall: u64) -> Option<Duration> {
        let mut ids = vec![leader];
        ids.extend(self.cluster.live_ids());
        for id in ids {
            let url = format!("http://{}/v1/events", self.cluster.api_addr(id));
            let Ok(response) = self.http.get(&url).send().await else {
                continue;
            };
            let Ok(body) = response.bytes().await else {
                continue;
            };
            let Ok(events) = serde_json::from_slice::<Events>(&body) else {
                continue;
            };
            if let Some(event) = events
                .events
                .iter()
                .find(|e| e.service == SERVICE && e.epoch.0 == epoch)
            {
                return Some(Duration::from_millis(event.at.saturating_sub(wall)));
            }
        }
        None
    }

    /// The client's failed and total requests since `since`, and how many
    /// of the failures came after DNS stopped answering `dead` (always 0
    /// when `dead` is `None`: then every failure counts as late).
    fn client_failures(&self, since: Instant, dead: Option<Ipv4Addr>) -> (usize, usize, usize) {
        let seen = lock(&self.seen);
        let step: Vec<&ClientSample> = seen.samples.iter().filter(|s| s.at >= since).collect();
        let failed: Vec<&&ClientSample> = step.iter().filter(|s| s.response.is_err()).collect();
        let late = failed
            .iter()
            .filter(|s| dead.is_none() || s.answer != dead)
            .count();
        (failed.len(), step.len(), late)
    }

    /// Kill the Raft leader and measure the election and DNS meanwhile.
    async fn kill_leader(&mut self) -> Result<(), DemoError> {
        if self.cluster.live_ids().len() < self.cluster.node_ids().len() {
            self.warn(
                "a node is already down: killing another would lose the majority; press r first",
            );
            return Ok(());
        }
        let leader = self.leader().await?;
        self.leader_kills += 1;
        let n = self.leader_kills;
        self.step(
            &format!("Kill the coordinator leader, node {leader} (SIGKILL)."),
            "The two survivors stop hearing heartbeats, elect a new leader within an election \
             timeout (150-300 ms), and keep answering DNS all along: their lease of 2 s outlasts \
             the election. The active instance does not change.",
        );
        let before = self.agreed_active().await;
        let t0 = Instant::now();
        self.cluster.kill(leader);
        let survivors = self.cluster.live_ids();
        let deadline = t0 + STEP_DEADLINE;
        let (mut queries, mut failures) = (0usize, 0usize);
        let mut elected: Option<(u64, Duration)> = None;
        loop {
            for id in &survivors {
                queries += 1;
                match self.cluster.answer(*id, SERVICE).await {
                    Ok(Some(answer)) => lock(&self.seen).record(answer.epoch, &answer.instance),
                    _ => failures += 1,
                }
            }
            if elected.is_none() {
                if let Some(new) = self.cluster.leader().await.filter(|l| *l != leader) {
                    elected = Some((new, t0.elapsed()));
                }
            }
            if let Some((_, after)) = elected {
                if t0.elapsed() > after + WATCH_AFTER {
                    break;
                }
            }
            self.check_deadline(deadline, "a new leader")?;
            tokio::time::sleep(POLL).await;
        }
        let (new, after) = elected.unwrap_or((0, Duration::ZERO));
        let after_state = self.agreed_active().await;
        let (failed, total, _) = self.client_failures(t0, None);
        self.result(&format!(
            "node {new} leads after {}; the survivors answered {} of {queries} DNS queries; the client saw {failed} of {total} requests fail",
            secs(after),
            queries - failures
        ));
        let label = |what: &str| format!("leader kill {n} (node {leader}): {what}");
        self.summary.rows.push(Row {
            label: label("new leader agreed"),
            value: format!("{} (node {new})", secs(after)),
        });
        self.summary.rows.push(Row {
            label: label("survivor DNS failures"),
            value: format!("{failures} of {queries}"),
        });
        self.summary.rows.push(Row {
            label: label("failed client requests"),
            value: format!("{failed} of {total}"),
        });
        self.summary.checks.push(Check {
            label: label("DNS kept answering, the active instance stayed"),
            ok: failures == 0 && failed == 0 && before.is_some() && before == after_state,
            detail: format!(
                "{failures} DNS failures, {failed} failed requests, {} before, {} after",
                describe(&before),
                describe(&after_state)
            ),
        });
        Ok(())
    }

    /// Restart every killed node and instance; watch failback (or its absence).
    async fn restore(&mut self) -> Result<(), DemoError> {
        self.restores += 1;
        let n = self.restores;
        let dead_nodes: Vec<u64> = self
            .cluster
            .node_ids()
            .into_iter()
            .filter(|id| !self.cluster.live_ids().contains(id))
            .collect();
        let primary_back = self.primary.is_none();
        self.step(
            "Restore everything: bring the primary back and restart killed nodes.",
            &if self.options.manual_failback {
                format!(
                    "A restarted node rejoins from its data dir. With failback = \"manual\" the \
                     primary, once healthy, is NOT made active again: backup stays until an operator \
                     runs `highlander switchover app --to primary`. Watching for {:?}.",
                    FAILBACK_DELAY + MANUAL_WATCH_EXTRA
                )
            } else {
                format!(
                    "A restarted node rejoins from its data dir. With failback = \"auto\" the primary \
                     becomes active again once a majority has seen it up (rise 2) for {FAILBACK_DELAY:?}, \
                     at a new epoch; the backup answers until then, so no request fails."
                )
            },
        );
        let before = self.wait_agreed().await?;
        for id in &dead_nodes {
            self.cluster.restart(*id)?;
            self.result(&format!("node {id} restarted and serves again"));
        }
        let t0 = Instant::now();
        let wall = unix_ms();
        for (name, addr) in self.instance_addrs.clone() {
            let slot = if name == "primary" {
                &mut self.primary
            } else {
                &mut self.backup
            };
            if slot.is_none() {
                *slot = Some(HttpInstance::start(&name, addr).await?);
                println!(
                    "{} {}",
                    self.at(),
                    self.style.green(&format!("{name} is back on {addr}"))
                );
            }
        }
        let label = |what: &str| format!("restore {n}: {what}");
        let on_backup = before.instance == "backup";
        let before = Some(before);
        if !(primary_back && on_backup) {
            self.result("nothing to fail back");
            return Ok(());
        }
        let epoch = before.as_ref().map_or(0, |a| a.epoch);
        if self.options.manual_failback {
            tokio::time::sleep(FAILBACK_DELAY + MANUAL_WATCH_EXTRA).await;
            let now = self.agreed_active().await;
            let (failed, total, _) = self.client_failures(t0, None);
            let stayed = now == before;
            self.result(&format!(
                "after {}: {} (manual failback); the client saw {failed} of {total} requests fail",
                secs(t0.elapsed()),
                describe(&now)
            ));
            self.summary.rows.push(Row {
                label: label("failback"),
                value: format!("none in {} (manual)", secs(t0.elapsed())),
            });
            self.summary.rows.push(Row {
                label: label("failed client requests"),
                value: format!("{failed} of {total}"),
            });
            self.summary.checks.push(Check {
                label: label("manual failback: backup stayed active"),
                ok: stayed && failed == 0,
                detail: format!("{}, {failed} failed requests", describe(&now)),
            });
        } else {
            let (all, new_epoch) = self.wait_all_answer("primary", epoch, t0).await?;
            let leader = self.leader().await?;
            let commit = self.commit_after(leader, new_epoch, wall).await;
            tokio::time::sleep(CLIENT_EVERY).await;
            let (failed, total, _) = self.client_failures(t0, None);
            self.result(&format!(
                "failback to primary at epoch {new_epoch} committed after {}; every node answered it after {}; the client saw {failed} of {total} requests fail",
                commit.map_or("?".to_owned(), secs),
                secs(all)
            ));
            self.summary.rows.push(Row {
                label: label("failback commit (event at)"),
                value: commit.map_or("not found in /v1/events".to_owned(), secs),
            });
            self.summary.rows.push(Row {
                label: label("every node answers primary"),
                value: secs(all),
            });
            self.summary.rows.push(Row {
                label: label("failed client requests"),
                value: format!("{failed} of {total}"),
            });
            self.summary.checks.push(Check {
                label: label("auto failback without a failed request"),
                ok: failed == 0,
                detail: format!("{failed} failed requests"),
            });
        }
        Ok(())
    }

    /// The S1 check and the client's totals.
    fn finish(&mut self) {
        let seen = lock(&self.seen);
        let doubled: Vec<String> = seen
            .epochs
            .iter()
            .filter(|(_, instances)| instances.len() > 1)
            .map(|(epoch, instances)| format!("epoch {epoch}: {instances:?}"))
            .collect();
        let failed = seen.samples.iter().filter(|s| s.response.is_err()).count();
        self.summary.rows.push(Row {
            label: "client requests, all steps".into(),
            value: format!("{} ({failed} failed)", seen.samples.len()),
        });
        self.summary.checks.push(Check {
            label: "S1: no epoch answered with two instances".into(),
            ok: doubled.is_empty(),
            detail: if doubled.is_empty() {
                format!(
                    "{} answers over {} epochs",
                    seen.answers_checked,
                    seen.epochs.len()
                )
            } else {
                doubled.join("; ")
            },
        });
    }
}

/// Starts `highlander demo-janitor` for `dir`, holding its standard input.
/// Without it, a demo killed with SIGKILL would leave the directory behind
/// (its nodes die by themselves). `None`, with a note, if it cannot start.
fn spawn_janitor(
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> Option<std::process::ChildStdin> {
    let spawned = std::process::Command::new(binary)
        .arg("demo-janitor")
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => child.stdin.take(),
        Err(e) => {
            println!(
                "(no janitor: {e}; if the demo is killed with SIGKILL, remove {} yourself)",
                dir.display()
            );
            None
        }
    }
}

/// `highlander demo-janitor DIR`: waits until standard input closes (the
/// demo exited, however it exited), then removes `DIR`, which must be a
/// local_cluster temporary directory. Nothing to do after a normal exit.
pub fn janitor(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    let is_cluster_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(DIR_PREFIX));
    if !is_cluster_dir {
        return Err(std::io::Error::other(format!(
            "{} is not a {DIR_PREFIX}* directory",
            dir.display()
        )));
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    // The nodes get SIGKILL as the demo dies, but on a loaded machine one
    // may still be writing its log or store for a moment, which makes a
    // removal fail with "directory not empty": keep trying for 5 s.
    for _ in 0..25 {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => return Ok(()),
        }
    }
    std::fs::remove_dir_all(dir)
}

/// The client: every [`CLIENT_EVERY`], resolve through every node at once,
/// use the first answer in a rotating node order, request it, print a line.
async fn client(
    dns: Vec<(u64, SocketAddr)>,
    port: u16,
    http: reqwest::Client,
    seen: Shared,
    started: Instant,
    style: Style,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(CLIENT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0usize;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at = Instant::now();
        let answers =
            futures::future::join_all(dns.iter().map(|(id, addr)| resolve(*id, *addr))).await;
        let mut used = None;
        {
            let mut seen = lock(&seen);
            for answer in answers.iter().flatten() {
                seen.record(answer.epoch, &answer.instance);
            }
        }
        for offset in 0..answers.len() {
            if let Some(answer) = &answers[(round + offset) % answers.len()] {
                used = Some(answer.clone());
                break;
            }
        }
        round += 1;
        let response = match &used {
            None => Err("no node answered".to_owned()),
            Some(answer) => request(&http, answer.ip, port).await,
        };
        let sample = ClientSample {
            at,
            node: used.as_ref().map(|a| a.node),
            answer: used.as_ref().map(|a| a.ip),
            epoch: used.as_ref().map(|a| a.epoch),
            response,
        };
        println!("{}", client_line(&sample, started, style));
        lock(&seen).samples.push(sample);
    }
}

/// One node's consistent answer: the A record and the TXT epoch, read as
/// TXT, A, TXT and kept only when both TXT reads name the same epoch.
#[derive(Debug, Clone)]
struct Resolved {
    node: u64,
    ip: Ipv4Addr,
    epoch: u64,
    instance: String,
}

async fn resolve(node: u64, server: SocketAddr) -> Option<Resolved> {
    let read = async {
        let before = active_answer(server, SERVICE, ZONE).await.ok()??;
        let ip = active_address(server, SERVICE, ZONE).await.ok()??;
        let after = active_answer(server, SERVICE, ZONE).await.ok()??;
        (before == after).then(|| Resolved {
            node,
            ip,
            epoch: after.epoch,
            instance: if ip == PRIMARY_IP {
                "primary".to_owned()
            } else if ip == BACKUP_IP {
                "backup".to_owned()
            } else {
                ip.to_string()
            },
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, read).await.ok()?
}

async fn request(http: &reqwest::Client, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let response = http
        .get(format!("http://{ip}:{port}/"))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                "connection refused".to_owned()
            } else if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            }
        })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(format!("{} {body}", status.as_u16()))
    } else {
        Err(format!("{} {body}", status.as_u16()))
    }
}

fn client_line(sample: &ClientSample, started: Instant, style: Style) -> String {
    let at = format!("{:>7}", secs(sample.at.duration_since(started)));
    let answer = match (sample.answer, sample.node) {
        (Some(ip), Some(node)) => format!("{ip:<10} (node {node})"),
        _ => format!("{:<19}", "-"),
    };
    let epoch = sample.epoch.map_or("-".to_owned(), |e| e.to_string());
    let response = match &sample.response {
        Ok(body) => style.green(body),
        Err(why) => style.red(&format!("FAILED: {why}")),
    };
    format!(
        "{} {}",
        style.dim(&format!("{at}  client  app -> {answer}  epoch {epoch:<3}")),
        response
    )
}

/// Binds primary on 127.0.0.2 at a free port and backup on 127.0.0.3 at
/// the same port (retrying a few ports if 127.0.0.3's is taken).
async fn start_instances() -> Result<(HttpInstance, HttpInstance), DemoError> {
    let mut last = None;
    for _ in 0..20 {
        let primary = HttpInstance::start("primary", SocketAddr::from((PRIMARY_IP, 0))).await?;
        let port = primary.addr().port();
        match HttpInstance::start("backup", SocketAddr::from((BACKUP_IP, port))).await {
            Ok(backup) => return Ok((primary, backup)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || DemoError::Io {
            what: "bind the demo instances".into(),
            source: std::io::Error::other("no port tried"),
        },
        DemoError::Cluster,
    ))
}

/// Service `app`: primary (priority 1) and backup (priority 2), answered
/// as their own loopback addresses, checked at the demo's quick timings.
fn services_toml(instances: &[(String, SocketAddr); 2], manual_failback: bool) -> String {
    let failback = if manual_failback { "manual" } else { "auto" };
    let mut toml = format!(
        "[[services]]\nname = \"{SERVICE}\"\nfailback = \"{failback}\"\nfailback_delay = \"{}s\"\n\n\
         [services.check]\nkind = \"http\"\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n",
        FAILBACK_DELAY.as_secs()
    );
    for (priority, (name, addr)) in instances.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[services.instances]]\nname = \"{name}\"\naddress = \"{addr}\"\na = \"{}\"\npriority = {}\n",
            addr.ip(),
            priority + 1
        ));
    }
    toml
}

/// Keys typed on standard input, one at a time when it is a terminal (its
/// mode is restored when the returned guard drops). End of input reads as `q`.
fn read_keys() -> (mpsc::UnboundedReceiver<char>, Option<TerminalMode>) {
    let terminal = TerminalMode::single_keys();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        loop {
            let key = match stdin.read(&mut byte) {
                Ok(1) => char::from(byte[0]).to_ascii_lowercase(),
                _ => 'q',
            };
            if tx.send(key).is_err() || key == 'q' {
                return;
            }
        }
    });
    (rx, terminal)
}

/// Standard input switched from line mode to single keys without echo; the
/// previous mode comes back on drop. Ctrl-C still sends SIGINT (ISIG stays).
struct TerminalMode {
    saved: libc::termios,
}

impl TerminalMode {
    fn single_keys() -> Option<TerminalMode> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut keys = saved;
        keys.c_lflag &= !(libc::ICANON | libc::ECHO);
        keys.c_cc[libc::VMIN] = 1;
        keys.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid termios for fd 0, copied from its own.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &keys) };
        Some(TerminalMode { saved })
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        // SAFETY: restores the mode read from fd 0 in `single_keys`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

fn say(style: Style, title: &str, text: &str) {
    println!("{title}");
    if !text.is_empty() {
        for line in wrap(text, 78) {
            println!("        {}", style.dim(&line));
        }
    }
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn describe(answer: &Option<ActiveAnswer>) -> String {
    answer.as_ref().map_or("no agreed answer".to_owned(), |a| {
        format!("{} at epoch {}", a.instance, a.epoch)
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_answer_each_instance_as_its_own_loopback_address() {
        let toml = services_toml(
            &[
                ("primary".into(), "127.0.0.2:4000".parse().unwrap()),
                ("backup".into(), "127.0.0.3:4000".parse().unwrap()),
            ],
            true,
        );
        assert!(toml.contains("failback = \"manual\"\nfailback_delay = \"5s\""));
        assert!(toml.contains("address = \"127.0.0.2:4000\"\na = \"127.0.0.2\"\npriority = 1"));
        assert!(toml.contains("address = \"127.0.0.3:4000\"\na = \"127.0.0.3\"\npriority = 2"));
    }

    #[test]
    fn a_summary_fails_when_one_check_fails_and_plain_text_has_no_escapes() {
        let mut summary = Summary::default();
        summary.rows.push(Row {
            label: "failover 1: detection".into(),
            value: "1.00s".into(),
        });
        summary.checks.push(Check {
            label: "S1".into(),
            ok: true,
            detail: String::new(),
        });
        assert!(summary.passed());
        let plain = summary.render(Style::new(false));
        assert!(!plain.contains('\x1b'));
        assert!(plain.contains("failover 1: detection  1.00s"));
        assert!(
            summary
                .render(Style::new(true))
                .contains("\x1b[32mok\x1b[0m")
        );
        summary.checks.push(Check {
            label: "late".into(),
            ok: false,
            detail: String::new(),
        });
        assert!(!summary.passed());
    }

    #[test]
    fn wrap_breaks_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
    }
}
