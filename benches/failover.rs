//! The failover benchmark (`cargo bench --bench failover`): how quickly a
//! three-node cluster of real `highlander` processes on loopback, with the
//! default cluster and check timings, recovers from
//!
//! - SIGKILL of the Raft leader, until both survivors name the same new
//!   leader in `GET /v1/status` (L2, goal ≤ 1 s at p99), counting every
//!   survivor DNS query that meanwhile got SERVFAIL or no answer (L2 says
//!   the majority never stops answering);
//! - the death of the active instance (its listener closed, so probes are
//!   refused), until every node's DNS names the other instance at a higher
//!   epoch (L1, goal ≤ interval × fall + 100 ms at p99).
//!
//! It measures and never judges: a missed goal prints "no" and still exits 0.
//! It exits 1 only when it cannot measure: a node that does not start, or a
//! step that takes longer than [`STEP_DEADLINE`] (a hang, reported with every
//! node's log tail). `HIGHLANDER_BENCH_TRIALS` sets the number of trials of
//! each kind (default 20; `--smoke`, for CI, runs 2). Progress goes to
//! stderr, the markdown table to stdout.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use highlander::config::Config;
use highlander::local_cluster::{
    ActiveAnswer, ClusterSpec, DNS_TIMEOUT, HttpInstance, LocalCluster, active_answer,
};
use highlander::model::Verdict;
use tokio_util::sync::CancellationToken;

use common::{LATENCY_COLUMNS, latency_cells, markdown_table, ms};

/// Trials of each kind unless `HIGHLANDER_BENCH_TRIALS` says otherwise.
const DEFAULT_TRIALS: usize = 20;
/// Trials of each kind in a `--smoke` run: enough to exercise each path.
const SMOKE_TRIALS: usize = 2;
/// The longest any one step may take (a leader change, a failover, a node
/// rejoining, an instance turning up) before the run is abandoned as hung.
const STEP_DEADLINE: Duration = Duration::from_secs(15);
/// How often leadership (status) and answers (DNS) are polled while timing.
const POLL: Duration = Duration::from_millis(5);
/// How often the survivors' DNS is queried for failures during a leader
/// change: each round is one query per survivor.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// How long the survivors' DNS is still watched after the new leader is
/// agreed: the new leader's first heartbeats renew the followers' leases.
const WATCH_AFTER: Duration = Duration::from_millis(500);
/// A node that answers the new choice this much later than the first one
/// is reported with what it answered meanwhile (all apply the same commit,
/// normally within a heartbeat of each other).
const LAGGARD: Duration = Duration::from_millis(100);
/// L2's goal for a leader change.
const LEADER_GOAL: Duration = Duration::from_secs(1);
/// L1 allows one commit round on top of `interval × fall`.
const COMMIT_ALLOWANCE: Duration = Duration::from_millis(100);

const ZONE: &str = "svc.bench.";
const SERVICE: &str = "app";

fn main() -> ExitCode {
    common::bench_main("failover", false, |_| run())
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let trials = common::trials(DEFAULT_TRIALS, SMOKE_TRIALS)?;
    let primary = HttpInstance::start("primary", "127.0.0.1:0".parse()?).await?;
    let backup = HttpInstance::start("backup", "127.0.0.1:0".parse()?).await?;
    // Only what the benchmark needs is written: cluster timings and check
    // timings are left to their defaults, which is what it measures.
    let binary = Path::new(env!("CARGO_BIN_EXE_highlander"));
    let mut cluster = LocalCluster::start(
        binary,
        ClusterSpec::new(3, ZONE, &services_toml(&primary, &backup)),
    )?;
    let result = measure(&mut cluster, trials, primary, backup, started).await;
    result.map_err(|e| {
        e.context(format!(
            "node logs (last 30 lines each):\n{}",
            cluster.log_tails(30)
        ))
    })
}

/// Service `app`: `primary` (priority 1) and `backup` (priority 2), probed
/// over HTTP with the default interval, timeout, rise and fall; failback
/// `manual`, so after each failover the other instance stays active and the
/// next trial kills it (the direction alternates).
fn services_toml(primary: &HttpInstance, backup: &HttpInstance) -> String {
    let mut toml = format!(
        "[[services]]\nname = \"{SERVICE}\"\nfailback = \"manual\"\n[services.check]\nkind = \"http\"\npath = \"/health\"\n"
    );
    for (instance, priority) in [(primary, 1), (backup, 2)] {
        toml.push_str(&format!(
            "\n[[services.instances]]\nname = \"{}\"\naddress = \"{}\"\ncname = \"{}.internal.\"\npriority = {priority}\n",
            instance.name(),
            instance.addr(),
            instance.name()
        ));
    }
    toml
}

/// The timings the nodes actually run with, read back from the config file
/// they were given.
struct Timings {
    heartbeat: Duration,
    election_min: Duration,
    election_max: Duration,
    lease: Duration,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Timings {
    fn of(cluster: &LocalCluster) -> Result<Timings> {
        let config = Config::load(cluster.config_path())
            .with_context(|| format!("read back {}", cluster.config_path().display()))?;
        let service = config
            .services
            .iter()
            .find(|s| s.name == SERVICE)
            .context("the config has no service app")?;
        Ok(Timings {
            heartbeat: config.cluster.heartbeat,
            election_min: config.cluster.election_timeout_min,
            election_max: config.cluster.election_timeout_max,
            lease: config.cluster.lease,
            interval: service.check.interval,
            timeout: service.check.timeout,
            rise: service.check.rise,
            fall: service.check.fall,
        })
    }

    /// L1's goal: `interval × fall` plus one commit round.
    fn failover_goal(&self) -> Duration {
        self.interval * self.fall + COMMIT_ALLOWANCE
    }
}

/// What the leader-change trials found besides their times.
#[derive(Default)]
struct DnsWatch {
    queries: usize,
    /// SERVFAIL, no answer within the timeout, or anything else that is not
    /// the current choice; each with when and where, for the report.
    failures: Vec<String>,
}

async fn measure(
    cluster: &mut LocalCluster,
    trials: usize,
    primary: HttpInstance,
    backup: HttpInstance,
    started: Instant,
) -> Result<()> {
    let timings = Timings::of(cluster)?;
    let ids = cluster.node_ids();
    let first = ActiveAnswer {
        instance: primary.name().to_owned(),
        epoch: 1,
    };
    // Bootstrap, the first probes (rise 2 at 1 s) and the first commit.
    let startup = Instant::now();
    all_answer(cluster, &ids, &first).await?;
    eprintln!(
        "cluster of {} nodes up; every node answers {} at epoch 1 after {} (binary {})",
        ids.len(),
        first.instance,
        ms(startup.elapsed()),
        env!("CARGO_BIN_EXE_highlander")
    );

    let mut leader_times = Vec::new();
    let mut watch = DnsWatch::default();
    for trial in 1..=trials {
        let change = leader_trial(cluster, &first, &mut watch)
            .await
            .with_context(|| format!("leader-change trial {trial}"))?;
        eprintln!(
            "leader trial {trial:>2}/{trials}: node {} killed (term {}); node {} leads after {} (term {}{})",
            change.old,
            change.old_term,
            change.new,
            ms(change.elapsed),
            change.new_term,
            if change.new_term > change.old_term + 1 {
                ", more than one election"
            } else {
                ""
            }
        );
        leader_times.push(change.elapsed);
    }

    let mut failover_times = Vec::new();
    let (mut active, mut standby, mut epoch) = (primary, backup, first.epoch);
    for trial in 1..=trials {
        let sample = failover_trial(cluster, timings.interval, active, &standby, epoch)
            .await
            .with_context(|| format!("failover trial {trial}"))?;
        eprintln!(
            "failover trial {trial:>2}/{trials}: {} -> {} (epoch {}): first node after {}, all after {}{}",
            sample.restarted.name(),
            standby.name(),
            sample.epoch,
            ms(sample.first),
            ms(sample.last),
            sample
                .notes
                .iter()
                .map(|n| format!("; {n}"))
                .collect::<String>()
        );
        failover_times.push(sample.last);
        (active, standby, epoch) = (standby, sample.restarted, sample.epoch);
    }

    print_report(
        &timings,
        ids.len(),
        &leader_times,
        &failover_times,
        &watch,
        started.elapsed(),
    );
    Ok(())
}

/// One leader change: waits until every node agrees on a leader and answers
/// `expected`, kills the leader with SIGKILL and times until both survivors
/// name the same other node; the survivors' DNS is watched meanwhile. Then
/// restarts the killed node and waits until it has rejoined.
async fn leader_trial(
    cluster: &mut LocalCluster,
    expected: &ActiveAnswer,
    watch: &mut DnsWatch,
) -> Result<LeaderChange> {
    let ids = cluster.node_ids();
    let old = until(
        STEP_DEADLINE,
        "every node names the same leader",
        || async { Ok(cluster.leader().await) },
    )
    .await?;
    all_answer(cluster, &ids, expected).await?;
    let old_term = cluster.status(old).await?.term;
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();

    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_dns(
        survivors
            .iter()
            .map(|&id| (id, cluster.dns_addr(id)))
            .collect(),
        expected.clone(),
        stop.clone(),
    ));
    let killed = Instant::now();
    cluster.kill(old);
    let agreed = until(
        STEP_DEADLINE,
        "both survivors name the same new leader",
        || async {
            let statuses =
                futures::future::join_all(survivors.iter().map(|&id| cluster.status(id))).await;
            let now = killed.elapsed();
            let leaders: Vec<Option<(u64, u64)>> = statuses
                .into_iter()
                .map(|s| s.ok().and_then(|s| Some((s.leader?, s.term))))
                .collect();
            Ok(match leaders[..] {
                [Some((a, term)), Some((b, _))] if a == b && a != old => Some((now, a, term)),
                _ => None,
            })
        },
    )
    .await;
    // Pacing: the window after the election in which answers must go on.
    tokio::time::sleep(WATCH_AFTER).await;
    stop.cancel();
    let (queries, failures) = watcher.await.context("the DNS watcher panicked")?;
    watch.queries += queries;
    watch.failures.extend(
        failures
            .into_iter()
            .map(|f| format!("leader {old} killed: {f}")),
    );
    let (elapsed, new, new_term) = agreed?;

    cluster.restart(old)?;
    until(STEP_DEADLINE, "the restarted node rejoins", || async {
        Ok(cluster.leader().await.filter(|&l| l != old))
    })
    .await?;
    all_answer(cluster, &ids, expected).await?;
    Ok(LeaderChange {
        elapsed,
        old,
        old_term,
        new,
        new_term,
    })
}

/// What one leader-change trial found.
struct LeaderChange {
    /// From SIGKILL to both survivors naming the new leader.
    elapsed: Duration,
    old: u64,
    old_term: u64,
    new: u64,
    /// More than `old_term + 1` means an election failed (a split vote).
    new_term: u64,
}

/// Queries each of `servers` for the service's TXT every [`WATCH_EVERY`]
/// until `stop`; returns how many queries were sent and every answer that
/// was not `expected`.
async fn watch_dns(
    servers: Vec<(u64, SocketAddr)>,
    expected: ActiveAnswer,
    stop: CancellationToken,
) -> (usize, Vec<String>) {
    let start = Instant::now();
    let (mut queries, mut failures) = (0, Vec::new());
    while !stop.is_cancelled() {
        let answers = futures::future::join_all(
            servers
                .iter()
                .map(|(_, dns)| active_answer(*dns, SERVICE, ZONE)),
        )
        .await;
        for ((id, _), answer) in servers.iter().zip(answers) {
            queries += 1;
            match answer {
                Ok(Some(a)) if a == expected => {}
                Ok(Some(a)) => failures.push(format!(
                    "{} after the kill: node {id} answered {a:?}",
                    ms(start.elapsed())
                )),
                Ok(None) => failures.push(format!(
                    "{} after the kill: node {id} answered SERVFAIL",
                    ms(start.elapsed())
                )),
                Err(e) => failures.push(format!("{} after the kill: {e}", ms(start.elapsed()))),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
    (queries, failures)
}

/// One failover: waits until every node sees `standby` up and answers
/// `active` at `epoch`, kills `active` and times until every node answers
/// `standby` at a higher epoch. Returns the time to the last node, the time
/// to the first, the new epoch and the killed instance restarted on its
/// address (the next trial's standby).
async fn failover_trial(
    cluster: &LocalCluster,
    interval: Duration,
    active: HttpInstance,
    standby: &HttpInstance,
    epoch: u64,
) -> Result<FailoverSample> {
    let ids = cluster.node_ids();
    every_node_sees_up(cluster, &ids, standby.name()).await?;
    let current = ActiveAnswer {
        instance: active.name().to_owned(),
        epoch,
    };
    all_answer(cluster, &ids, &current).await?;

    // The wait above ends just after a probe round, so killing now would
    // always strike the same phase of every node's probe schedule and time
    // only one point of the 2–3 s range. A random delay over one interval
    // makes the kill fall anywhere in the schedule, as a real crash does.
    tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
    let (name, addr) = (active.name().to_owned(), active.addr());
    let killed = Instant::now();
    active.kill().await;
    // Each node's first answer naming the standby at a higher epoch.
    let mut switched: Vec<Option<(Duration, u64)>> = vec![None; ids.len()];
    // What each node answered last before it switched, to explain a laggard.
    let mut before = vec![String::new(); ids.len()];
    let (mut errors, mut last_error) = (0, None);
    while switched.iter().any(Option::is_none) {
        if killed.elapsed() > STEP_DEADLINE {
            bail!(
                "not every node answered {} above epoch {epoch} within {STEP_DEADLINE:?} of killing {name} (switched: {switched:?}; last error: {last_error:?})",
                standby.name()
            );
        }
        let pending: Vec<usize> = (0..ids.len()).filter(|&i| switched[i].is_none()).collect();
        let answers =
            futures::future::join_all(pending.iter().map(|&i| cluster.answer(ids[i], SERVICE)))
                .await;
        let now = killed.elapsed();
        for (&i, answer) in pending.iter().zip(answers) {
            match answer {
                Ok(Some(a)) if a.instance == standby.name() && a.epoch > epoch => {
                    switched[i] = Some((now, a.epoch));
                }
                Ok(other) => before[i] = format!("{other:?}"),
                Err(e) => {
                    errors += 1;
                    before[i] = e.to_string();
                    last_error = Some(e);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let (last, new_epoch) = switched
        .iter()
        .flatten()
        .copied()
        .max()
        .expect("every node switched");
    let first = switched
        .iter()
        .flatten()
        .map(|(t, _)| *t)
        .min()
        .unwrap_or(last);
    let mut notes = Vec::new();
    let epochs: Vec<u64> = switched.iter().flatten().map(|(_, e)| *e).collect();
    if epochs.iter().any(|&e| e != new_epoch) {
        notes.push(format!("nodes first answered different epochs {epochs:?}"));
    }
    for (i, s) in switched.iter().enumerate() {
        if let Some((t, _)) = s
            && *t > first + LAGGARD
        {
            notes.push(format!(
                "node {} switched {} after the first, answering {} until then",
                ids[i],
                ms(*t - first),
                before[i]
            ));
        }
    }
    if errors > 0 {
        notes.push(format!("{errors} DNS queries failed while polling"));
    }
    let restarted = HttpInstance::start(&name, addr).await?;
    Ok(FailoverSample {
        last,
        first,
        epoch: new_epoch,
        restarted,
        notes,
    })
}

/// What one failover trial found.
struct FailoverSample {
    /// From the kill to the last node answering the new choice.
    last: Duration,
    /// From the kill to the first node answering it.
    first: Duration,
    epoch: u64,
    /// The killed instance, back on its address: the next trial's standby.
    restarted: HttpInstance,
    /// Anything unusual, for the progress line.
    notes: Vec<String>,
}

/// Waits until every node's `GET /v1/status` shows every node's verdict on
/// `instance` as up: the standby must be a real alternative before the
/// active instance is killed.
async fn every_node_sees_up(cluster: &LocalCluster, ids: &[u64], instance: &str) -> Result<()> {
    until(
        STEP_DEADLINE,
        &format!("every node sees {instance} up"),
        || async {
            for &id in ids {
                let status = cluster.status(id).await?;
                let up = status
                    .services
                    .iter()
                    .filter(|s| s.name == SERVICE)
                    .flat_map(|s| &s.instances)
                    .find(|i| i.name == instance)
                    .is_some_and(|i| {
                        ids.iter()
                            .all(|node| i.health.get(node) == Some(&Verdict::Up))
                    });
                if !up {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// Waits until every node in `ids` answers `expected` in DNS.
async fn all_answer(cluster: &LocalCluster, ids: &[u64], expected: &ActiveAnswer) -> Result<()> {
    until(
        STEP_DEADLINE,
        &format!("every node answers {expected:?}"),
        || async {
            for &id in ids {
                if cluster.answer(id, SERVICE).await?.as_ref() != Some(expected) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// Polls `check` every [`POLL`] until it returns `Some`, or fails after
/// `deadline`.
async fn until<T, F, Fut>(deadline: Duration, what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    common::until(deadline, POLL, what, check).await
}

fn print_report(
    timings: &Timings,
    nodes: usize,
    leader_times: &[Duration],
    failover_times: &[Duration],
    watch: &DnsWatch,
    took: Duration,
) {
    let human = |d: Duration| humantime::format_duration(d).to_string();
    println!();
    println!(
        "highlander failover benchmark: {nodes} nodes on loopback, default timings (heartbeat {}, election timeout {}-{}), check interval {} × fall {}",
        human(timings.heartbeat),
        timings.election_min.as_millis(),
        human(timings.election_max),
        human(timings.interval),
        timings.fall
    );
    println!();
    let rows: Vec<Vec<String>> = [
        ("leader SIGKILL → new leader", leader_times, LEADER_GOAL),
        (
            "active SIGKILL → all nodes answer",
            failover_times,
            timings.failover_goal(),
        ),
    ]
    .into_iter()
    .map(|(what, samples, goal)| {
        let mut row = vec![what.to_owned()];
        row.extend(latency_cells(samples, Some(goal)));
        row
    })
    .collect();
    let mut headers = vec!["measurement"];
    headers.extend(LATENCY_COLUMNS);
    print!("{}", markdown_table(&headers, &rows));
    println!();
    println!(
        "DNS failures on survivors during leader change: {} of {} queries",
        watch.failures.len(),
        watch.queries
    );
    let n = leader_times.len();
    let p99_rank = (99 * n).div_ceil(100);
    println!();
    println!(
        "percentiles are nearest-rank: p50 is sample {} of {n} sorted, p99 is sample {p99_rank} of {n}{}.",
        (50 * n).div_ceil(100).max(1),
        if p99_rank == n { " (the max)" } else { "" }
    );
    println!(
        "leader change: from SIGKILL until both survivors' GET /v1/status name the same new leader (polled every {}).",
        ms(POLL)
    );
    println!(
        "failover: from the active instance's listener closing (after a random delay of up to one interval, so the kill falls anywhere in the probe schedule) until every node's _highlander.{SERVICE} TXT names the other instance at a higher epoch (polled every {}); goal = interval {} × fall {} + {}; check timeout {}, rise {}, failback manual, lease {}.",
        ms(POLL),
        human(timings.interval),
        timings.fall,
        ms(COMMIT_ALLOWANCE),
        human(timings.timeout),
        timings.rise,
        human(timings.lease)
    );
    println!(
        "DNS failures: a survivor's SERVFAIL, no answer within {} or another answer, querying both survivors every {} from the kill until {} after the new leader.",
        human(DNS_TIMEOUT),
        ms(WATCH_EVERY),
        ms(WATCH_AFTER)
    );
    for failure in &watch.failures {
        println!("  {failure}");
    }
    println!("run took {:.0} s.", took.as_secs_f64());
}
