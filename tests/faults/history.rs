//! The history a scenario records, and the checker that reads it.
//!
//! A client inside each node's namespace asks that node for
//! `_highlander.app.<zone>` TXT every [`QUERY_EVERY`] and records what came
//! back (instance and epoch, SERVFAIL, or nothing), stamped with the wall
//! clock the nodes also stamp their decisions with. At the end the
//! committed changes are read from the API. [`check`] then holds the
//! history against the invariants of DESIGN.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio_util::sync::CancellationToken;

use crate::cluster::{
    BIND_MEMBER, DNS_PORT, FaultCluster, NODES, PUBLISH_ZONE, ZONE, node_ip, node_member,
};
use crate::net::in_netns;

/// The "node" whose observations are what the external DNS server holds.
pub const PUBLISHED: u64 = 0;

/// The end of the recording, as the end of an [`Expect`] window.
pub const END: u64 = u64::MAX;

/// How often each node is asked.
pub const QUERY_EVERY: Duration = Duration::from_millis(50);

/// How long a query may go unanswered before it counts as no answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(300);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one query got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Answer { instance: String, epoch: u64 },
    ServFail,
    Silent,
    Other(String),
}

/// One query: when it was sent (unix ms), to which node, and its reply.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: u64,
    pub node: u64,
    pub reply: Reply,
}

/// One committed change of active instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub index: u64,
    pub at: u64,
    pub epoch: u64,
    pub instance: String,
    pub reason: String,
}

impl Commit {
    pub fn parse(events: &[serde_json::Value]) -> Vec<Commit> {
        events
            .iter()
            .filter(|e| e["service"] == "app")
            .filter_map(|e| {
                Some(Commit {
                    index: e["index"].as_u64()?,
                    at: e["at"].as_u64()?,
                    epoch: e["epoch"].as_u64()?,
                    instance: e["to"].as_str()?.to_owned(),
                    reason: e["reason"].as_str()?.to_owned(),
                })
            })
            .collect()
    }
}

/// The clients of a running scenario.
pub struct Recorder {
    observations: Arc<Mutex<Vec<Observation>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Starts one client per node, each inside that node's namespace, and
    /// one for the external DNS server when the cluster publishes to one
    /// (recorded as node [`PUBLISHED`]).
    pub fn start(cluster: &FaultCluster) -> Result<Recorder> {
        let mut targets = Vec::new();
        for node in NODES {
            targets.push((
                node,
                cluster.sandbox.member(&node_member(node))?.ns.clone(),
                SocketAddr::from((node_ip(node), DNS_PORT)),
                format!("_highlander.app.{ZONE}"),
            ));
        }
        if let Some(bind) = &cluster.bind {
            targets.push((
                PUBLISHED,
                cluster.sandbox.member(BIND_MEMBER)?.ns.clone(),
                bind.addr(),
                format!("_highlander.app.{PUBLISH_ZONE}"),
            ));
        }
        let observations = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for (node, ns, server, name) in targets {
            let socket = in_netns(&ns, || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })?;
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            let (observations, stop) = (observations.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(QUERY_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let at = now_ms();
                    let reply = ask(&socket, server, &name).await;
                    let mut all = observations.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(Observation { at, node, reply });
                }
            }));
        }
        Ok(Recorder {
            observations,
            stop,
            tasks,
        })
    }

    /// Stops the clients and returns what they saw, oldest first.
    pub async fn finish(self) -> Vec<Observation> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let mut all =
            std::mem::take(&mut *self.observations.lock().unwrap_or_else(|e| e.into_inner()));
        all.sort_by_key(|o| o.at);
        all
    }
}

async fn ask(socket: &tokio::net::UdpSocket, server: SocketAddr, name: &str) -> Reply {
    let mut query = Message::query();
    let Ok(name) = Name::from_ascii(name) else {
        return Reply::Other("bad name".into());
    };
    query.add_query(Query::query(name, RecordType::TXT));
    query.metadata.recursion_desired = false;
    let Ok(wire) = query.to_vec() else {
        return Reply::Other("cannot encode".into());
    };
    if socket.send_to(&wire, server).await.is_err() {
        return Reply::Silent;
    }
    let id = query.metadata.id;
    let receive = async {
        let mut buf = vec![0u8; 2048];
        loop {
            let (len, _) = socket.recv_from(&mut buf).await.ok()?;
            let response = Message::from_vec(&buf[..len]).ok()?;
            // A late reply to an earlier query is skipped.
            if response.metadata.id == id {
                return Some(response);
            }
        }
    };
    let Ok(Some(response)) = tokio::time::timeout(QUERY_TIMEOUT, receive).await else {
        return Reply::Silent;
    };
    match response.metadata.response_code {
        ResponseCode::ServFail => Reply::ServFail,
        ResponseCode::NoError => {
            let (mut instance, mut epoch) = (None, None);
            for record in &response.answers {
                if let RData::TXT(txt) = &record.data {
                    for part in txt.txt_data.iter() {
                        let text = String::from_utf8_lossy(part);
                        if let Some(v) = text.strip_prefix("instance=") {
                            instance = Some(v.to_owned());
                        }
                        if let Some(v) = text.strip_prefix("epoch=") {
                            epoch = v.parse().ok();
                        }
                    }
                }
            }
            match (instance, epoch) {
                (Some(instance), Some(epoch)) => Reply::Answer { instance, epoch },
                other => Reply::Other(format!("NOERROR without instance and epoch: {other:?}")),
            }
        }
        other => Reply::Other(other.to_string()),
    }
}

/// What a scenario promises, for the checker.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// (node, from, to): the node was outside the majority in this window
    /// (unix ms); after `from + lease` it must not answer (S3).
    pub minority: Vec<(u64, u64, u64)>,
    /// When the last fault healed; every node must answer the final choice
    /// within `converge_within` of it (L2).
    pub healed_at: u64,
    pub converge_within: Duration,
    /// When the active instance was killed, if it was: a failover must be
    /// committed within `failover_within` (L1).
    pub active_killed_at: Option<u64>,
    pub failover_within: Duration,
    /// The most changes the scenario may commit (L3); 0 where nothing
    /// should fail over.
    pub max_changes: usize,
    /// (node, from, to): the node is in the majority throughout, so every
    /// query it got in the window must be answered...
    pub must_answer: Vec<(u64, u64, u64)>,
    /// ...or, where this is not zero, no run of unanswered queries may
    /// last longer than this (a lossy network stalls TCP for a
    /// retransmission timeout or more, which a heartbeat cannot beat).
    pub tolerated_gap: Duration,
    /// Commits seen before a whole-cluster restart, all of which must still
    /// be there after it (S5).
    pub committed_before: Vec<Commit>,
    /// (node, from, to): the node runs but is cut off from the majority in
    /// this window, so once its lease is over it must be seen refusing
    /// (SERVFAIL, S3), not merely silent: silence would also pass the S3
    /// check if the node had crashed or the fault had not bitten.
    pub must_refuse: Vec<(u64, u64, u64)>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub answers: usize,
    pub violations: Vec<String>,
    pub converged_after: Option<Duration>,
    pub changes: usize,
    pub unanswered_in_majority: usize,
}

/// Slack for scheduling: a query stamped just before an event can be
/// answered just after it, and the lease is checked every 25 ms.
const SLACK_MS: u64 = 300;

/// Holds `history` and `commits` (everything committed since the scenario
/// began, and before, for S5) against the invariants.
pub fn check(
    history: &[Observation],
    commits: &[Commit],
    started_at: u64,
    lease: Duration,
    expect: &Expect,
) -> Report {
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let mut report = Report::default();
    let mut violations = Vec::new();
    let committed: BTreeMap<u64, &Commit> = commits.iter().map(|c| (c.epoch, c)).collect();
    let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
    let mut newest_at_node: BTreeMap<u64, u64> = BTreeMap::new();
    for o in history {
        let Reply::Answer { instance, epoch } = &o.reply else {
            continue;
        };
        report.answers += 1;
        // S1: one instance per epoch, and only what was committed.
        match seen.get(epoch) {
            Some(first) if first != instance => violations.push(format!(
                "S1: epoch {epoch} answered as {first} and as {instance} (node {} at {})",
                o.node, o.at
            )),
            _ => {
                seen.insert(*epoch, instance);
            }
        }
        match committed.get(epoch) {
            Some(c) if c.instance != *instance => violations.push(format!(
                "S1: node {} answered epoch {epoch} as {instance}, but {} was committed",
                o.node, c.instance
            )),
            None => violations.push(format!(
                "S1: node {} answered epoch {epoch} ({instance}), which was never committed",
                o.node
            )),
            _ => {}
        }
        // S1: epochs never go backwards at a node; S4: nor at the external
        // server, whatever a deposed leader tried to write.
        let newest = newest_at_node.entry(o.node).or_insert(0);
        if *epoch < *newest {
            violations.push(if o.node == PUBLISHED {
                format!(
                    "S4: the external server held epoch {epoch} at {} after holding epoch {newest}",
                    o.at
                )
            } else {
                format!(
                    "S1: node {} answered epoch {epoch} at {} after having answered epoch {newest}",
                    o.node, o.at
                )
            });
        }
        *newest = (*newest).max(*epoch);
        // S3: outside the majority, no answer once the lease is over.
        for &(node, from, to) in &expect.minority {
            if node == o.node && o.at > from + lease_ms + SLACK_MS && o.at < to {
                violations.push(format!(
                    "S3: node {node} answered epoch {epoch} at +{} ms, {} ms into its time outside the majority and {} ms before it ended (lease {lease_ms} ms)",
                    o.at.saturating_sub(started_at),
                    o.at - from,
                    to - o.at
                ));
            }
        }
        // S3: no answer older than a commit the lease must have shown it.
        // (Not for the external server, which no lease governs; S4 below.)
        if o.node == PUBLISHED {
            continue;
        }
        if let Some(newer) = commits
            .iter()
            .find(|c| c.epoch > *epoch && c.at + lease_ms + SLACK_MS < o.at)
        {
            violations.push(format!(
                "S3: node {} answered epoch {epoch} at +{} ms, {} ms after epoch {} was committed (lease {lease_ms} ms)",
                o.node,
                o.at.saturating_sub(started_at),
                o.at - newer.at,
                newer.epoch
            ));
        }
    }
    // S1 in the log itself: each commit a new epoch, higher than the last.
    let mut by_index: Vec<&Commit> = commits.iter().collect();
    by_index.sort_by_key(|c| c.index);
    for pair in by_index.windows(2) {
        if pair[1].epoch <= pair[0].epoch {
            violations.push(format!(
                "S1: the log commits epoch {} at index {} after epoch {} at index {}",
                pair[1].epoch, pair[1].index, pair[0].epoch, pair[0].index
            ));
        }
    }
    // S3 seen to bite: a node cut off from the majority refuses.
    for &(node, from, to) in &expect.must_refuse {
        let refused = history.iter().any(|o| {
            o.node == node
                && o.at > from + lease_ms + SLACK_MS
                && o.at < to
                && o.reply == Reply::ServFail
        });
        if !refused {
            violations.push(format!(
                "S3 untested: node {node} was never seen refusing between +{} and +{} ms, once its lease was over",
                (from + lease_ms).saturating_sub(started_at),
                to.saturating_sub(started_at)
            ));
        }
    }
    // Nodes in the majority keep answering.
    let tolerated_ms = u64::try_from(expect.tolerated_gap.as_millis()).unwrap_or(u64::MAX);
    for &(node, from, to) in &expect.must_answer {
        let window: Vec<&Observation> = history
            .iter()
            .filter(|o| o.node == node && o.at >= from && o.at <= to)
            .collect();
        let missed = window
            .iter()
            .filter(|o| !matches!(o.reply, Reply::Answer { .. }))
            .count();
        report.unanswered_in_majority += missed;
        // The longest run of unanswered queries, from the first miss to
        // the next answer.
        let (mut longest, mut since) = (0, None);
        for o in &window {
            match (&o.reply, since) {
                (Reply::Answer { .. }, Some(first)) => {
                    longest = longest.max(o.at - first);
                    since = None;
                }
                (Reply::Answer { .. }, None) => {}
                (_, None) => since = Some(o.at),
                (_, Some(_)) => {}
            }
        }
        if let (Some(first), Some(last)) = (since, window.last()) {
            longest = longest.max(last.at - first + 1);
        }
        let violated = if tolerated_ms == 0 {
            missed > 0
        } else {
            longest > tolerated_ms
        };
        if violated {
            violations.push(format!(
                "availability: node {node}, in the majority, left {missed} queries unanswered between +{} ms and {}, the longest run {longest} ms{}",
                from.saturating_sub(started_at),
                if to == END {
                    "the end".to_owned()
                } else {
                    format!("+{} ms", to.saturating_sub(started_at))
                },
                if tolerated_ms == 0 {
                    String::new()
                } else {
                    format!(" (tolerated: {tolerated_ms} ms)")
                }
            ));
        }
    }
    // L2: every node converges on the final choice after the last heal.
    let last = commits.iter().max_by_key(|c| c.epoch);
    if let Some(last) = last {
        let published = history.iter().any(|o| o.node == PUBLISHED);
        let converged = NODES
            .iter()
            .copied()
            .chain(published.then_some(PUBLISHED))
            .map(|node| {
                let after: Vec<&Observation> = history
                    .iter()
                    .filter(|o| o.node == node && o.at >= expect.healed_at)
                    .collect();
                // The first query from which on every reply is the final answer.
                let mut from = None;
                for o in after.iter().rev() {
                    let right = matches!(&o.reply, Reply::Answer { instance, epoch }
                        if *epoch == last.epoch && *instance == last.instance);
                    if !right {
                        break;
                    }
                    from = Some(o.at);
                }
                from
            })
            .collect::<Option<Vec<u64>>>();
        match converged.and_then(|at| at.into_iter().max()) {
            Some(at) => {
                let after = Duration::from_millis(at.saturating_sub(expect.healed_at));
                report.converged_after = Some(after);
                if after > expect.converge_within {
                    violations.push(format!(
                        "L2: the nodes agreed on {} (epoch {}) {after:?} after the heal (bound {:?})",
                        last.instance, last.epoch, expect.converge_within
                    ));
                }
            }
            None => violations.push(format!(
                "L2: not every node ended answering {} (epoch {})",
                last.instance, last.epoch
            )),
        }
    } else {
        violations.push("nothing was ever committed".into());
    }
    // L1 and the health quorum: a failover when it should, none when not.
    let during: Vec<&Commit> = commits.iter().filter(|c| c.at >= started_at).collect();
    report.changes = during.len();
    if let Some(killed) = expect.active_killed_at {
        let bound = u64::try_from(expect.failover_within.as_millis()).unwrap_or(u64::MAX);
        let failover = during
            .iter()
            .find(|c| c.reason == "failover" && c.at >= killed);
        match failover {
            Some(c) if c.at - killed <= bound => {}
            Some(c) => violations.push(format!(
                "L1: failover committed {} ms after the kill (bound {bound} ms)",
                c.at - killed
            )),
            None => violations.push("L1: the active instance died and nothing failed over".into()),
        }
        // L1 is about the answer, not the log: each node that stays in the
        // majority serves the new choice within the bound too.
        if let Some(failover) = failover {
            for &(node, _, _) in &expect.must_answer {
                let served = history.iter().find(|o| {
                    o.node == node
                        && o.at >= killed
                        && matches!(&o.reply, Reply::Answer { epoch, .. } if *epoch >= failover.epoch)
                });
                match served {
                    Some(o) if o.at - killed <= bound + SLACK_MS => {}
                    Some(o) => violations.push(format!(
                        "L1: node {node} first served epoch {} {} ms after the kill (bound {bound} ms plus {SLACK_MS} ms of slack)",
                        failover.epoch,
                        o.at - killed
                    )),
                    None => violations.push(format!(
                        "L1: node {node} never served epoch {} after the kill",
                        failover.epoch
                    )),
                }
            }
        }
    }
    if during.len() > expect.max_changes {
        violations.push(format!(
            "L3: {} changes committed, at most {} expected: {:?}",
            during.len(),
            expect.max_changes,
            during
        ));
    }
    // S5: what was committed before a restart is still there.
    for before in &expect.committed_before {
        if !commits.contains(before) {
            violations.push(format!("S5: commit {before:?} was lost across the restart"));
        }
    }
    report.violations = violations;
    report
}

/// Changes a clean history, its commits or its expectations so that it
/// holds one violation.
type Plant<'a> = dyn Fn(&mut Vec<Observation>, &mut Vec<Commit>, &mut Expect) + 'a;

/// Plants one violation of each kind in an otherwise clean history and
/// returns an error naming any the checker misses (or any it finds in the
/// clean one): a checker that cannot fail proves nothing.
pub fn self_test() -> Result<(), String> {
    let t0 = 1_000_000;
    let lease = Duration::from_secs(2);
    let commit = |epoch: u64, instance: &str, at: u64, reason: &str| Commit {
        index: epoch + 10,
        at,
        epoch,
        instance: instance.into(),
        reason: reason.into(),
    };
    let answer = |at: u64, node: u64, instance: &str, epoch: u64| Observation {
        at,
        node,
        reply: Reply::Answer {
            instance: instance.into(),
            epoch,
        },
    };
    // Epoch 1 (primary) before t0; epoch 2 (backup) committed at t0 + 1000.
    let commits = vec![
        commit(1, "primary", t0 - 5_000, "initial"),
        commit(2, "backup", t0 + 1_000, "failover"),
    ];
    let clean: Vec<Observation> = (0..40u64)
        .flat_map(|i| {
            let at = t0 + i * 100;
            let (instance, epoch) = if at < t0 + 1_100 {
                ("primary", 1)
            } else {
                ("backup", 2)
            };
            NODES.map(|node| answer(at, node, instance, epoch))
        })
        .collect();
    let expect = Expect {
        healed_at: t0,
        converge_within: Duration::from_secs(2),
        active_killed_at: Some(t0),
        failover_within: Duration::from_secs(2),
        max_changes: 1,
        ..Expect::default()
    };
    let found = check(&clean, &commits, t0, lease, &expect).violations;
    if !found.is_empty() {
        return Err(format!("the clean history has violations: {found:?}"));
    }
    let planted: Vec<(&str, Box<Plant<'_>>)> = vec![
        (
            "S1: epoch 2 answered",
            Box::new(|h, _, _| h.push(answer(t0 + 1_500, 1, "primary", 2))),
        ),
        (
            "never committed",
            Box::new(|h, _, _| h.push(answer(t0 + 3_000, 2, "backup", 3))),
        ),
        (
            "after having answered epoch 2",
            Box::new(|h, _, _| h.push(answer(t0 + 2_000, 3, "primary", 1))),
        ),
        (
            "S3: node 2 answered",
            Box::new(|_, _, e| e.minority = vec![(2, t0, t0 + 4_000)]),
        ),
        (
            "after epoch 2 was committed",
            Box::new(|h, _, _| h.push(answer(t0 + 3_900, 1, "primary", 1))),
        ),
        (
            "L2: not every node",
            Box::new(|h, _, _| h.push(answer(t0 + 3_950, 3, "nobody", 2))),
        ),
        (
            "L1: failover committed",
            Box::new(|_, c, _| c[1].at = t0 + 3_500),
        ),
        (
            "L3: 2 changes",
            Box::new(|_, c, _| c.push(commit(3, "primary", t0 + 3_990, "failback"))),
        ),
        (
            "S4: the external server held epoch 1",
            Box::new(|h, _, _| {
                h.push(answer(t0 + 2_000, PUBLISHED, "backup", 2));
                h.push(answer(t0 + 2_100, PUBLISHED, "primary", 1));
                h.push(answer(t0 + 3_900, PUBLISHED, "backup", 2));
            }),
        ),
        (
            "S5: commit",
            Box::new(|_, _, e| e.committed_before = vec![commit(0, "old", t0 - 9_000, "initial")]),
        ),
        (
            "S1: the log commits epoch 2",
            Box::new(|_, c, _| c.push(commit(2, "backup", t0 + 3_000, "switchover"))),
        ),
        (
            "S3 untested",
            Box::new(|h, _, e| {
                e.minority = vec![(2, t0, t0 + 4_000)];
                e.must_refuse = e.minority.clone();
                h.retain(|o| o.node != 2 || o.at <= t0 + 2_000);
            }),
        ),
        (
            "L1: node 3 first served",
            Box::new(|h, _, e| {
                e.must_answer = vec![(3, t0, t0 + 4_000)];
                for o in h.iter_mut().filter(|o| o.node == 3 && o.at < t0 + 3_500) {
                    o.reply = Reply::Answer {
                        instance: "primary".into(),
                        epoch: 1,
                    };
                }
            }),
        ),
        (
            "the longest run 600 ms",
            Box::new(|h, _, e| {
                e.must_answer = vec![(3, t0, END)];
                e.tolerated_gap = Duration::from_millis(500);
                for o in h
                    .iter_mut()
                    .filter(|o| o.node == 3 && (t0 + 2_000..t0 + 2_600).contains(&o.at))
                {
                    o.reply = Reply::ServFail;
                }
            }),
        ),
        (
            "availability",
            Box::new(|h, _, e| {
                e.must_answer = vec![(3, t0, t0 + 500)];
                h.push(Observation {
                    at: t0 + 250,
                    node: 3,
                    reply: Reply::ServFail,
                });
            }),
        ),
    ];
    for (expected, plant) in planted {
        let (mut history, mut commits, mut expect) =
            (clean.clone(), commits.clone(), expect.clone());
        plant(&mut history, &mut commits, &mut expect);
        history.sort_by_key(|o| o.at);
        let found = check(&history, &commits, t0, lease, &expect).violations;
        if !found.iter().any(|v| v.contains(expected)) {
            return Err(format!(
                "a planted violation ({expected:?}) was not found; found {found:?}"
            ));
        }
    }
    Ok(())
}
