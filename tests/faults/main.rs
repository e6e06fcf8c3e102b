//! highlander under faults: real `highlander` processes in network
//! namespaces, crashed, paused, isolated, partitioned, starved of packets and
//! restarted, while clients inside each node's namespace record every DNS
//! answer; a checker then holds the history against S1–S5 and L1–L3 of
//! DESIGN.md and each scenario prints one row.
//!
//! Run with `cargo test --test faults` (as root). Arguments: words that
//! select scenarios by name, and `--seed N` (the default is fixed, so a run
//! repeats). Without root or namespaces it says so and, unless `CI=true`,
//! exits 0; under CI that is a failure.

mod cluster;
mod delay;
mod history;
mod net;

use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cluster::{
    Clock, FALL, FaultCluster, INTERVAL, LEASE, NODES, Setup, instance_ip, node_ip, node_member,
};
use history::{Commit, END, Expect, Recorder, Report, check, now_ms};

/// The seed when none is given: runs repeat unless asked not to.
const DEFAULT_SEED: u64 = 20261127;

/// How long after the last heal every node must answer the final choice.
const CONVERGE_WITHIN: Duration = Duration::from_secs(5);

/// How long a scenario keeps recording after its last heal.
const SETTLE: Duration = Duration::from_secs(4);

/// The time a fault lasts: longer than the lease, so S3 is exercised.
const FAULT: Duration = Duration::from_secs(4);

struct Row {
    name: &'static str,
    faults: String,
    report: Report,
}

type Scenario = fn(&mut StdRng) -> futures::future::BoxFuture<'_, Result<Row>>;

fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("kill-leader", |rng| {
            Box::pin(kill_node(rng, "kill-leader", true))
        }),
        ("kill-follower", |rng| {
            Box::pin(kill_node(rng, "kill-follower", false))
        }),
        ("pause-leader", |rng| Box::pin(pause_leader(rng))),
        ("pause-leader-during-failover", |rng| {
            Box::pin(pause_leader_during_failover(rng))
        }),
        ("isolate-leader", |rng| Box::pin(isolate_leader(rng))),
        ("partition-leader-minority", |rng| {
            Box::pin(partition_leader(rng))
        }),
        ("follower-campaigns-and-rejoins", |rng| {
            Box::pin(campaign_and_rejoin(rng))
        }),
        ("leader-cannot-reach-active", |rng| {
            Box::pin(cannot_reach_active(rng, true))
        }),
        ("follower-cannot-reach-active", |rng| {
            Box::pin(cannot_reach_active(rng, false))
        }),
        ("kill-active-instance", |rng| Box::pin(kill_active(rng))),
        ("packet-loss-20pct", |rng| Box::pin(packet_loss(rng))),
        ("restart-whole-cluster", |rng| Box::pin(restart_all(rng))),
        ("monotonic-clock-ahead", |rng| Box::pin(clock_ahead(rng))),
        ("follower-disk-full-during-failover", |rng| {
            Box::pin(disk_full(rng))
        }),
        ("publish-through-leader-partition", |rng| {
            Box::pin(publish_through_partition(rng))
        }),
        ("leader-wall-clock-jumps", |rng| {
            Box::pin(wall_clock_jump(rng))
        }),
        // New scenarios go last, so that the others keep their seeds.
        ("monotonic-clock-jumps", |rng| Box::pin(clock_jump(rng))),
        ("delay-between-nodes-during-failover", |rng| {
            Box::pin(delay_during_failover(rng))
        }),
    ]
}

/// What the command line asks for.
struct Args {
    seed: u64,
    /// Words a scenario's name must contain one of (all when empty).
    filters: Vec<String>,
    /// Words no selected scenario's name may contain (libtest's `--skip`).
    skips: Vec<String>,
    /// List the scenarios instead of running them (libtest's `--list`).
    list: bool,
}

impl Args {
    /// Reads the arguments: ours (`--seed N`, name filters) and those
    /// `cargo test` passes to every test binary, which are honoured where
    /// they mean something here (`--list`, `--skip`) and otherwise skipped
    /// with their values, so that no value is taken for a filter.
    fn parse(words: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            seed: DEFAULT_SEED,
            filters: Vec::new(),
            skips: Vec::new(),
            list: false,
        };
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            match word.as_str() {
                "--seed" => {
                    let value = words.next().unwrap_or_default();
                    args.seed = value.parse().map_err(|_| {
                        format!(
                            "--seed takes a whole number from 0 to {}, not {value:?}",
                            u64::MAX
                        )
                    })?;
                }
                "--list" => args.list = true,
                "--skip" => args.skips.extend(words.next()),
                "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                    words.next();
                }
                w if w.starts_with('-') => {}
                w => args.filters.push(w.to_owned()),
            }
        }
        Ok(args)
    }

    fn selects(&self, name: &str) -> bool {
        (self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str())))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("fault suite: {why}");
            std::process::exit(2);
        }
    };
    if args.list {
        for (name, _) in scenarios() {
            if args.selects(name) {
                println!("{name}: test");
            }
        }
        return;
    }
    let seed = args.seed;
    if let Err(why) = history::self_test() {
        eprintln!("the history checker is broken: {why}");
        std::process::exit(1);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(why) = net::available() {
        eprintln!("\n!!! the fault suite cannot run here: {why:#}\n");
        std::process::exit(if ci { 1 } else { 0 });
    }
    net::sweep_leftovers();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a Tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut signals = match runtime.block_on(async { StopSignals::watch() }) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("fault suite: {e:#}");
            std::process::exit(1);
        }
    };
    // Each scenario's seed comes from its place in the whole list, so one
    // run alone draws exactly what it draws in a full run.
    let selected: Vec<(u64, &str, Scenario)> = scenarios()
        .into_iter()
        .zip(0u64..)
        .filter(|((name, _), _)| args.selects(name))
        .map(|((name, run), i)| (seed.wrapping_add(i), name, run))
        .collect();
    eprintln!("fault suite: {} scenarios, seed {seed}", selected.len());
    let mut rows = Vec::new();
    let mut failed = false;
    for (scenario_seed, name, run) in selected {
        let mut rng = StdRng::seed_from_u64(scenario_seed);
        let started = std::time::Instant::now();
        eprintln!("== {name}");
        match runtime.block_on(interruptible(run(&mut rng), &mut signals)) {
            Ok(row) => {
                for v in &row.report.violations {
                    eprintln!("   VIOLATION {v}");
                }
                failed |= !row.report.violations.is_empty();
                eprintln!("   done in {:.1} s", started.elapsed().as_secs_f64());
                rows.push(row);
            }
            Err(e) => {
                failed = true;
                eprintln!("   ERROR {e:#}");
                rows.push(Row {
                    name,
                    faults: format!("error: {e}"),
                    report: Report {
                        violations: vec![format!("{e:#}")],
                        ..Report::default()
                    },
                });
            }
        }
    }
    println!("\n| scenario | faults injected | answers | changes | violations | converged after |");
    println!("|---|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.name,
            row.faults,
            row.report.answers,
            row.report.changes,
            row.report.violations.len(),
            row.report
                .converged_after
                .map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()))
        );
    }
    println!(
        "\nseed {seed}; lease {LEASE:?}; check every {INTERVAL:?}, down after {FALL} failures"
    );
    if failed {
        std::process::exit(1);
    }
}

/// The signals that stop a run: Ctrl-C, SIGTERM and SIGHUP (a CI timeout,
/// a developer). Watched from the start, so none is missed between two
/// scenarios.
struct StopSignals(Vec<tokio::signal::unix::Signal>);

impl StopSignals {
    /// Must be called within the runtime.
    fn watch() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .map(|kind| signal(kind).context("cannot watch for signals"))
        .collect::<Result<_>>()
        .map(StopSignals)
    }
}

/// Runs a scenario until it ends or a stop signal comes: then the scenario
/// is dropped, which stops its processes and removes its namespaces and
/// mounts, and the runner exits 1.
async fn interruptible(
    scenario: impl std::future::Future<Output = Result<Row>>,
    signals: &mut StopSignals,
) -> Result<Row> {
    let any = futures::future::select_all(signals.0.iter_mut().map(|s| Box::pin(s.recv())));
    let ended = tokio::select! {
        row = scenario => Some(row),
        _ = any => None,
    };
    // The scenario future (and with it its cluster and sandbox) is gone by
    // now: it was moved into the select.
    ended.unwrap_or_else(|| {
        eprintln!("fault suite: interrupted; what the scenario made is removed");
        std::process::exit(1)
    })
}

/// A cluster whose nodes all answer the first choice, and its leader.
async fn settled() -> Result<(FaultCluster, u64)> {
    settled_with(Setup::default()).await
}

/// Like [`settled`], set up as `setup` says.
async fn settled_with(setup: Setup) -> Result<(FaultCluster, u64)> {
    if matches!(setup.clock, Clock::FakeWall | Clock::FakeBoth)
        && !std::path::Path::new(cluster::LIBFAKETIME).exists()
    {
        anyhow::bail!(
            "{} is missing: apt-get install -y faketime (CI's .ci/run does)",
            cluster::LIBFAKETIME
        );
    }
    settle(FaultCluster::start_with(setup).await?).await
}

async fn settle(cluster: FaultCluster) -> Result<(FaultCluster, u64)> {
    let leader = cluster.wait_leader(Duration::from_secs(15)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut agreed = true;
        for id in NODES {
            let ok = cluster
                .get(id, "/v1/status")
                .await
                .is_ok_and(|s| s["in_majority"] == true && s["services"][0]["active"] == "primary");
            agreed &= ok;
        }
        if agreed {
            return Ok((cluster, leader));
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the cluster never settled on primary:\n{}",
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends a scenario: waits [`SETTLE`], stops recording, reads the commits
/// and checks the history.
async fn finish(
    cluster: &FaultCluster,
    recorder: Recorder,
    started_at: u64,
    mut expect: Expect,
) -> Result<Report> {
    if expect.converge_within.is_zero() {
        expect.converge_within = CONVERGE_WITHIN;
    }
    tokio::time::sleep(SETTLE).await;
    let history = recorder.finish().await;
    let commits = Commit::parse(&cluster.events().await.context("reading the commits")?);
    let report = check(&history, &commits, started_at, LEASE, &expect);
    if !report.violations.is_empty() {
        eprintln!("{}", cluster.log_tails(12));
    }
    Ok(report)
}

fn jitter(rng: &mut StdRng, base: Duration) -> Duration {
    base.mul_f64(rng.random_range(0.9..1.2))
}

/// Starts the clients' recording and lets them see the settled cluster for
/// half a second before any fault: when the scenario began, and the
/// recorder.
async fn record(cluster: &FaultCluster) -> Result<(u64, Recorder)> {
    let started_at = now_ms();
    let recorder = Recorder::start(cluster)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((started_at, recorder))
}

/// `nodes` must answer every query from `from` to the end of the recording.
fn answering(nodes: &[u64], from: u64) -> Vec<(u64, u64, u64)> {
    nodes.iter().map(|&n| (n, from, END)).collect()
}

fn other_nodes(of: u64) -> Vec<u64> {
    NODES.iter().copied().filter(|&n| n != of).collect()
}

fn pick_follower(rng: &mut StdRng, leader: u64) -> u64 {
    let followers = other_nodes(leader);
    followers[rng.random_range(0..followers.len())]
}

async fn kill_node(rng: &mut StdRng, name: &'static str, leader_too: bool) -> Result<Row> {
    let (mut cluster, leader) = settled().await?;
    let victim = if leader_too {
        leader
    } else {
        pick_follower(rng, leader)
    };
    let (started_at, recorder) = record(&cluster).await?;
    cluster.kill_node(victim)?;
    let killed_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.start_node(victim, Clock::Normal)?;
    let survivors = other_nodes(victim);
    // The survivors keep a majority: they answer throughout, apart from the
    // moment a new leader is elected (their leases outlast it).
    let must_answer = answering(&survivors, killed_at);
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            must_answer,
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name,
        faults: format!("SIGKILL node {victim}, restart after {} s", FAULT.as_secs()),
        report,
    })
}

async fn pause_leader(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    cluster.pause_node(leader)?;
    let paused_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.resume_node(leader)?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, paused_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), paused_at),
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "pause-leader",
        faults: format!("SIGSTOP leader {leader} ~{} s, SIGCONT", FAULT.as_secs()),
        report,
    })
}

/// The frozen leader holds epoch 1 in memory while the others fail over:
/// when it resumes, its first contact with the new leader must not let it
/// answer epoch 1 again before it has applied epoch 2 (S3).
async fn pause_leader_during_failover(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, leader) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    cluster.pause_node(leader)?;
    let paused_at = now_ms();
    cluster.kill_instance("primary").await;
    let killed_at = now_ms();
    // A second longer than the other faults, so that epoch 2 is committed
    // well over a lease before the node resumes and any epoch 1 it answers
    // then is a violation the checker can tell from commit timing.
    tokio::time::sleep(jitter(rng, FAULT + Duration::from_secs(1))).await;
    let healed_at = now_ms();
    cluster.resume_node(leader)?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, paused_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), paused_at),
            active_killed_at: Some(killed_at),
            // An election first, then the failover as in kill-active-instance.
            failover_within: LEASE + INTERVAL * (FALL + 1) + Duration::from_millis(500),
            max_changes: 1,
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "pause-leader-during-failover",
        faults: format!(
            "SIGSTOP leader {leader} ~{} s, primary killed meanwhile, SIGCONT",
            (FAULT + Duration::from_secs(1)).as_secs()
        ),
        report,
    })
}

async fn isolate_leader(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    cluster.sandbox.isolate(&node_member(leader))?;
    let cut_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, cut_at, healed_at)],
            must_refuse: vec![(leader, cut_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), cut_at),
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "isolate-leader",
        faults: format!(
            "all traffic of leader {leader} dropped ~{} s",
            FAULT.as_secs()
        ),
        report,
    })
}

async fn partition_leader(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    // The leader still reaches the instances, only not the other nodes.
    let peers: Vec<_> = other_nodes(leader).into_iter().map(node_ip).collect();
    cluster.sandbox.cut(&node_member(leader), &peers)?;
    let cut_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, cut_at, healed_at)],
            must_refuse: vec![(leader, cut_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), cut_at),
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "partition-leader-minority",
        faults: format!(
            "{{{leader}}} cut from {:?} ~{} s",
            other_nodes(leader),
            FAULT.as_secs()
        ),
        report,
    })
}

async fn campaign_and_rejoin(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled().await?;
    let follower = pick_follower(rng, leader);
    let (started_at, recorder) = record(&cluster).await?;
    cluster.sandbox.isolate(&node_member(follower))?;
    let cut_at = now_ms();
    // Long enough to campaign several times and raise its term.
    tokio::time::sleep(jitter(rng, Duration::from_secs(3))).await;
    let before = cluster.term(leader).await?;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.leader_term().await?;
    let mut report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(follower, cut_at, healed_at)],
            must_refuse: vec![(follower, cut_at, healed_at)],
            healed_at,
            // Through the election the rejoining node forces, too.
            must_answer: answering(&other_nodes(follower), cut_at),
            ..Expect::default()
        },
    )
    .await?;
    // The fault must bite: without PreVote the node's campaigns raise the
    // term, and its return deposes the leader.
    if !matches!((before, after), (Some(b), Some(a)) if a > b) {
        report.violations.push(format!(
            "the isolation had no effect: the term went from {before:?} to {after:?}"
        ));
    }
    Ok(Row {
        name: "follower-campaigns-and-rejoins",
        faults: format!(
            "follower {follower} isolated ~3 s, rejoins (term {} -> {})",
            before.map_or("?".into(), |t| t.to_string()),
            after.map_or("?".into(), |t| t.to_string())
        ),
        report,
    })
}

async fn cannot_reach_active(rng: &mut StdRng, leader_side: bool) -> Result<Row> {
    let (cluster, leader) = settled().await?;
    let node = if leader_side {
        leader
    } else {
        pick_follower(rng, leader)
    };
    let (started_at, recorder) = record(&cluster).await?;
    cluster
        .sandbox
        .cut(&node_member(node), &[instance_ip("primary")])?;
    let fault = jitter(rng, FAULT);
    tokio::time::sleep(fault / 2).await;
    // The fault must bite: the cut node sees primary down, the others up.
    let status = cluster.get(leader, "/v1/status").await?;
    let seen = status["services"][0]["instances"][0]["health"].clone();
    let bit = NODES.iter().all(|n| {
        let verdict = &seen[n.to_string()];
        if *n == node {
            verdict == "down"
        } else {
            verdict == "up"
        }
    });
    tokio::time::sleep(fault / 2).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    let mut report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            must_answer: answering(&NODES, started_at),
            ..Expect::default()
        },
    )
    .await?;
    if !bit {
        report.violations.push(format!(
            "the cut had no effect: primary's health as node {leader} saw it mid-fault: {seen}"
        ));
    }
    Ok(Row {
        name: if leader_side {
            "leader-cannot-reach-active"
        } else {
            "follower-cannot-reach-active"
        },
        faults: format!("node {node} cut from primary ~{} s", FAULT.as_secs()),
        report,
    })
}

async fn kill_active(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, _) = settled().await?;
    let started_at = now_ms();
    let recorder = Recorder::start(&cluster)?;
    tokio::time::sleep(jitter(rng, Duration::from_millis(500))).await;
    cluster.kill_instance("primary").await;
    let killed_at = now_ms();
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at: killed_at,
            active_killed_at: Some(killed_at),
            // fall probes an interval apart, plus one interval of phase and
            // the round trip through the leader.
            failover_within: INTERVAL * (FALL + 1) + Duration::from_millis(500),
            max_changes: 1,
            must_answer: answering(&NODES, started_at),
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "kill-active-instance",
        faults: "primary killed".into(),
        report,
    })
}

async fn packet_loss(rng: &mut StdRng) -> Result<Row> {
    let (cluster, _) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    for id in NODES {
        let peers: Vec<_> = other_nodes(id).into_iter().map(node_ip).collect();
        cluster.sandbox.lose(&node_member(id), &peers, 20)?;
    }
    let lossy_at = now_ms();
    tokio::time::sleep(jitter(rng, Duration::from_secs(6))).await;
    let mut dropped = 0;
    for id in NODES {
        dropped += cluster.sandbox.dropped(&node_member(id))?;
    }
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    let mut report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            // Every node keeps its majority, but a lost segment stalls a
            // peer connection for a TCP retransmission timeout (200 ms and
            // more, doubling), which can cost an election and a moment
            // of answers; never as long as a lease.
            must_answer: answering(&NODES, lossy_at),
            tolerated_gap: LEASE,
            ..Expect::default()
        },
    )
    .await?;
    if dropped == 0 {
        report
            .violations
            .push("the loss had no effect: no packet was dropped".into());
    }
    Ok(Row {
        name: "packet-loss-20pct",
        faults: format!("20 % of packets between nodes dropped ~6 s ({dropped} packets)"),
        report,
    })
}

async fn restart_all(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, leader) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    // A change acknowledged by the API just before the crash, through any
    // node (a follower forwards it): once the node answers 200, the change
    // is committed, and S5 says no restart may lose it.
    let via = NODES[rng.random_range(0..NODES.len())];
    let acked = cluster
        .post(via, "/v1/services/app/switchover", r#"{"to": "backup"}"#)
        .await
        .with_context(|| format!("switchover through node {via} (leader {leader})"))?;
    let acked_epoch = acked["epoch"]
        .as_u64()
        .context("no epoch in the switchover answer")?;
    let before = Commit::parse(&cluster.events().await?);
    let mut report_extra = Vec::new();
    if !before
        .iter()
        .any(|c| c.epoch == acked_epoch && c.instance == "backup")
    {
        report_extra.push(format!(
            "S5: the acknowledged switchover (epoch {acked_epoch}) is not among the commits: {before:?}"
        ));
    }
    for id in NODES {
        cluster.kill_node(id)?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in NODES {
        cluster.start_node(id, Clock::Normal)?;
    }
    let healed_at = now_ms();
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            // The switchover; the restart itself must change nothing.
            max_changes: 1,
            committed_before: before,
            ..Expect::default()
        },
    )
    .await?;
    let mut report = report;
    report.violations.extend(report_extra);
    Ok(Row {
        name: "restart-whole-cluster",
        faults: format!(
            "switchover to backup acknowledged by node {via}, then SIGKILL all 3 nodes, restart all"
        ),
        report,
    })
}

async fn clock_ahead(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, leader) = settled().await?;
    let victim = if rng.random_bool(0.5) {
        leader
    } else {
        pick_follower(rng, leader)
    };
    let (started_at, recorder) = record(&cluster).await?;
    cluster.kill_node(victim)?;
    cluster.start_node(victim, Clock::AheadBy(30 * 86_400))?;
    let healed_at = now_ms();
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "monotonic-clock-ahead",
        faults: format!("node {victim} restarted with its monotonic clock 30 days ahead"),
        report,
    })
}

/// A running node's monotonic clock jumps forward (its wall clock with it,
/// within the transport's skew limit): every timer it has is due at once,
/// so a follower campaigns and deposes the leader (no PreVote), and a
/// leader finds its lease over. Neither may cost the majority an answer.
async fn clock_jump(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled_with(Setup {
        clock: Clock::FakeBoth,
        ..Setup::default()
    })
    .await?;
    let victim = if rng.random_bool(0.5) {
        leader
    } else {
        pick_follower(rng, leader)
    };
    let (started_at, recorder) = record(&cluster).await?;
    let before = cluster.term(leader).await?;
    let lapses = |log: &str| log.matches(LEADERSHIP_LAPSED).count();
    let log_before = cluster.log(victim);
    let lapsed_before = lapses(&log_before);
    cluster.set_clock_offset(victim, JUMP_SECONDS)?;
    let jumped_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    let after = cluster.leader_term().await?;
    let mut report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            // A jump is over as it happens; a monotonic clock never goes back.
            healed_at: jumped_at,
            must_answer: answering(&other_nodes(victim), jumped_at),
            ..Expect::default()
        },
    )
    .await?;
    // The fault must bite: the node's clocks jumped, so every timer it had
    // fired at once and it says it stalled for as long as the jump. What
    // else that set off is a race with the next heartbeat and is reported,
    // not required: a follower that wakes before a heartbeat reaches it
    // campaigns; a leader that looks before its next acknowledgements
    // arrive finds its quorum's old ones too old to lead on.
    let campaigned = matches!((before, after), (Some(b), Some(a)) if a > b);
    let log = cluster.log(victim);
    let lapsed = lapses(&log) > lapsed_before;
    // Only what the node logged since the jump.
    let since_jump = log.get(log_before.len()..).unwrap_or_default();
    let stalled_ms = stalls_ms(since_jump).max().unwrap_or(0);
    let jump_ms = u128::from(JUMP_SECONDS.unsigned_abs()) * 1000;
    if stalled_ms < jump_ms * 9 / 10 {
        report.violations.push(format!(
            "the jump had no effect: node {victim} never said it stalled for about {JUMP_SECONDS} s \
             (longest stall {stalled_ms} ms)"
        ));
    }
    Ok(Row {
        name: "monotonic-clock-jumps",
        faults: format!(
            "{} {victim}'s monotonic clock jumps +{JUMP_SECONDS} s while it runs (stalled {:.1} s; term {} -> {}{})",
            if victim == leader {
                "leader"
            } else {
                "follower"
            },
            stalled_ms as f64 / 1000.0,
            before.map_or("?".into(), |t| t.to_string()),
            after.map_or("?".into(), |t| t.to_string()),
            match (victim == leader, lapsed, campaigned) {
                (true, true, _) => "; lease lapsed",
                (true, false, _) => "; acknowledged again before the lease was looked at",
                (false, _, true) => "; campaigned",
                (false, _, false) => "; a heartbeat came before it campaigned",
            }
        ),
        report,
    })
}

/// Every node's connections to its peers are held [`PEER_DELAY`] each way
/// (the round trip of zones some way apart), and the active instance dies
/// meanwhile: the cluster keeps answering and fails over as it would
/// without the delay, apart from the extra round trips.
async fn delay_during_failover(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, _) = settled().await?;
    let (started_at, recorder) = record(&cluster).await?;
    let mut delays = Vec::new();
    for id in NODES {
        let ns = cluster.sandbox.member(&node_member(id))?.ns.clone();
        let peers: Vec<_> = other_nodes(id).into_iter().map(node_ip).collect();
        delays.push(delay::Delay::start(&ns, &peers, cluster::RPC_PORT, PEER_DELAY).await?);
    }
    let delayed_at = now_ms();
    tokio::time::sleep(jitter(rng, Duration::from_secs(1))).await;
    cluster.kill_instance("primary").await;
    let killed_at = now_ms();
    tokio::time::sleep(FAULT).await;
    let forwarded: u64 = delays.iter().map(delay::Delay::forwarded).sum();
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    drop(delays);
    let mut report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            active_killed_at: Some(killed_at),
            // Two delayed round trips more than kill-active-instance: the
            // reports to the leader and the commit.
            failover_within: INTERVAL * (FALL + 1) + Duration::from_millis(500) + PEER_DELAY * 8,
            max_changes: 1,
            must_answer: answering(&NODES, delayed_at),
            ..Expect::default()
        },
    )
    .await?;
    if forwarded == 0 {
        report
            .violations
            .push("the delay had no effect: nothing went through the proxies".into());
    }
    Ok(Row {
        name: "delay-between-nodes-during-failover",
        faults: format!(
            "{} ms each way between nodes ({} KiB held), primary killed",
            PEER_DELAY.as_millis(),
            forwarded / 1024
        ),
        report,
    })
}

/// The delay [`delay_during_failover`] adds to each direction of every
/// peer connection: a 30 ms round trip more, within the heartbeat (50 ms,
/// also the time an AppendEntries may take) that the defaults allow.
const PEER_DELAY: Duration = Duration::from_millis(15);

/// What a node logs when it stops deciding because it lost leadership or
/// its quorum's acknowledgements grew too old.
const LEADERSHIP_LAPSED: &str = "lost leadership (or its quorum)";

/// What a node logs when its timers fired late ([`stalls_ms`] reads how late).
const STALLED: &str = "this node stalled";

/// How late, in milliseconds, the stalls `log` (a node's log) tells of were.
fn stalls_ms(log: &str) -> impl Iterator<Item = u128> + '_ {
    log.lines()
        .filter(|line| line.contains(STALLED))
        .filter_map(|line| {
            let rest = &line[line.find("late_ms=")? + "late_ms=".len()..];
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..digits].parse().ok()
        })
}

/// How far [`clock_jump`] moves a node's clocks: far beyond every timer
/// (election, lease), within the cluster transport's ±30 s of wall-clock
/// skew, so the node stays in the cluster.
const JUMP_SECONDS: i64 = 10;

async fn disk_full(rng: &mut StdRng) -> Result<Row> {
    // Node 3's data dir is small. If it won the first election, it is
    // restarted until another node leads, so that a follower's disk fills.
    let victim = 3;
    let (mut cluster, mut leader) = settled_with(Setup {
        small_disk: Some(victim),
        ..Setup::default()
    })
    .await?;
    for _ in 0..3 {
        if leader != victim {
            break;
        }
        cluster.kill_node(victim)?;
        cluster.wait_leader(Duration::from_secs(10)).await?;
        cluster.start_node(victim, Clock::Normal)?;
        (cluster, leader) = settle(cluster).await?;
    }
    if leader == victim {
        anyhow::bail!("node {victim} kept winning the election: no follower's disk to fill");
    }
    let (started_at, recorder) = record(&cluster).await?;
    cluster.fill_disk(victim)?;
    let full_at = now_ms();
    tokio::time::sleep(jitter(rng, Duration::from_secs(1))).await;
    // A change the full node cannot persist.
    cluster.kill_instance("primary").await;
    let killed_at = now_ms();
    tokio::time::sleep(FAULT).await;
    cluster.free_disk(victim)?;
    let exited = !cluster.is_running(victim);
    // The fault must bite: the node met the full disk (it logs the
    // storage error, or exits on it).
    let log = cluster.log(victim);
    let bit = exited || log.contains("No space left") || log.contains("os error 28");
    if exited {
        // What a supervisor (systemd's Restart=) does.
        cluster.kill_node(victim)?;
        cluster.start_node(victim, Clock::Normal)?;
    }
    let healed_at = now_ms();
    let survivors = other_nodes(victim);
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            healed_at,
            active_killed_at: Some(killed_at),
            failover_within: INTERVAL * (FALL + 1) + Duration::from_millis(500),
            max_changes: 1,
            must_answer: answering(&survivors, full_at),
            ..Expect::default()
        },
    )
    .await?;
    let mut report = report;
    if !bit {
        report.violations.push(format!(
            "the full disk had no effect: node {victim} neither exited nor logged a storage error"
        ));
    }
    Ok(Row {
        name: "follower-disk-full-during-failover",
        faults: format!(
            "follower {victim}'s data dir full, primary killed, space freed{}",
            if exited {
                ", node had exited and was restarted"
            } else {
                ""
            }
        ),
        report,
    })
}

async fn wall_clock_jump(rng: &mut StdRng) -> Result<Row> {
    let (cluster, leader) = settled_with(Setup {
        clock: Clock::FakeWall,
        ..Setup::default()
    })
    .await?;
    let (started_at, recorder) = record(&cluster).await?;
    // Far beyond the cluster transport's ±30 s: the peers refuse its
    // requests and it refuses theirs, so it is cut off.
    cluster.set_clock_offset(leader, 120)?;
    let jumped_at = now_ms();
    let fault = jitter(rng, FAULT);
    tokio::time::sleep(fault / 2).await;
    // The fault must bite: the others have elected someone else.
    let mut successor = None;
    for id in other_nodes(leader) {
        if let Ok(status) = cluster.get(id, "/v1/status").await {
            successor = successor.or(status["leader"].as_u64().filter(|&l| l != leader));
        }
    }
    tokio::time::sleep(fault / 2).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.set_clock_offset(leader, 0)?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, jumped_at, healed_at)],
            must_refuse: vec![(leader, jumped_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), jumped_at),
            ..Expect::default()
        },
    )
    .await?;
    let mut report = report;
    let Some(successor) = successor else {
        report
            .violations
            .push("the jump had no effect: the others still followed the old leader".into());
        return Ok(Row {
            name: "leader-wall-clock-jumps",
            faults: "wall clock +120 s (no effect)".into(),
            report,
        });
    };
    Ok(Row {
        name: "leader-wall-clock-jumps",
        faults: format!(
            "leader {leader}'s wall clock jumps +120 s for ~{} s, then back (node {successor} took over)",
            FAULT.as_secs()
        ),
        report,
    })
}

async fn publish_through_partition(rng: &mut StdRng) -> Result<Row> {
    let (mut cluster, leader) = settled_with(Setup {
        publish: true,
        ..Setup::default()
    })
    .await?;
    let (started_at, recorder) = record(&cluster).await?;
    // The leader loses the other nodes but still reaches BIND and the
    // instances: it may probe, but must neither decide nor publish.
    let peers: Vec<_> = other_nodes(leader).into_iter().map(node_ip).collect();
    cluster.sandbox.cut(&node_member(leader), &peers)?;
    let cut_at = now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The majority fails over and publishes the new epoch meanwhile.
    cluster.kill_instance("primary").await;
    let killed_at = now_ms();
    tokio::time::sleep(jitter(rng, FAULT)).await;
    // Stamped before the heal: from the first healed packet on, the
    // node may rightly answer again.
    let healed_at = now_ms();
    cluster.sandbox.heal_all()?;
    let report = finish(
        &cluster,
        recorder,
        started_at,
        Expect {
            minority: vec![(leader, cut_at, healed_at)],
            must_refuse: vec![(leader, cut_at, healed_at)],
            healed_at,
            must_answer: answering(&other_nodes(leader), cut_at),
            active_killed_at: Some(killed_at),
            // The majority needs a new leader first.
            failover_within: INTERVAL * (FALL + 1) + Duration::from_secs(2),
            max_changes: 1,
            ..Expect::default()
        },
    )
    .await?;
    Ok(Row {
        name: "publish-through-leader-partition",
        faults: format!(
            "leader {leader} cut from {:?} (not from BIND), primary killed; BIND checked for S4",
            other_nodes(leader)
        ),
        report,
    })
}
