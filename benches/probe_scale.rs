//! The health-check cost benchmark (`cargo bench --bench probe_scale`):
//! what probing 1,000 and 10,000 instances every second costs one
//! highlander node, against HAProxy health-checking the same endpoints.
//!
//! The endpoints are one endpoint server process (see `common`), pinned to
//! core 1: half HTTP (`GET /health` answered `200`) on consecutive
//! addresses from 127.20.0.1, half TCP (accept and close) from 127.21.0.1,
//! all on one port. highlander is one node (a single-node cluster: the
//! probing is per node, and peers would only add their own probes), pinned
//! to core 0, with one service per 10 instances and the default check
//! (interval 1 s, timeout 500 ms, rise 2, fall 3). HAProxy 2.6 gets the same
//! instances as `server` lines, one backend per service, `check inter 1s
//! rise 2 fall 3`, `timeout check 500ms`, `option httpchk GET /health` for
//! the HTTP ones, `nbthread 1`, also pinned to core 0.
//!
//! Both run at nice -10, as does the endpoint server, so that other work on
//! the machine (it is shared) takes little of their cores. The highlander
//! node is started once per scale and measured once it is steady: every
//! service decided and every instance up (the time that takes is printed);
//! it is frozen with SIGSTOP while HAProxy runs. Each round, each system
//! gets a warm-up and is then measured over a fixed window:
//!
//! - probes: connections opened in the window (`Tcp: ActiveOpens`; the
//!   benchmark runs in a network namespace of its own, so only its own
//!   connections count). The endpoint server's accept counter cannot be
//!   the common count: HAProxy's TCP check resets the connection after the
//!   SYN-ACK without completing the handshake, so it is never accepted.
//!   The accepts and highlander's own probe counter are printed on stderr
//!   as cross-checks;
//! - CPU seconds per 1,000 probes: the prober's utime + stime from
//!   `/proc/PID/stat` over the window, divided by the probes;
//! - RSS: the prober's VmRSS at the end of the window;
//! - lag p99: highlander's `highlander_probe_lag_seconds` histogram between
//!   two scrapes of `/metrics` around the window (from the instant a probe
//!   was due to its start; an upper bound, to the bucket); it includes the
//!   stall of the first scrape, which renders every series on the node's
//!   worker (its duration is printed); HAProxy exports no such figure;
//! - gap p99: the time between two consecutive connections to the same
//!   HTTP endpoint, seen by the endpoint server (to 0.1 ms), for both
//!   systems: a late probe shows as a gap above the 1 s interval. The
//!   endpoints' window starts a few seconds after highlander's scrape, so
//!   this one is free of it.
//!
//! Every system is measured once per round, in turn, the order reversed
//! every other round so that neither always follows the other (a window
//! right after HAProxy's measured differently from one after highlander's).
//! The table shows medians over the rounds; the ratio is the median of the
//! ratios of each round. It exits 1 only when it cannot measure (a process
//! that does not start, no probe counted); a missed goal prints "no".
//!
//! - `HIGHLANDER_BENCH_SCALES=10000` measures only the scales it lists;
//! - `HIGHLANDER_BENCH_ROUNDS=N` measures N rounds instead of 5;
//! - `HIGHLANDER_BENCH_BASELINE=path/to/highlander` also measures another
//!   highlander build (started and measured the same way, in the same
//!   rounds), and prints the ratio of this build's CPU per probe to it:
//!   the way to tell whether a change to the checks saves anything, on a
//!   machine whose speed drifts by more than the change saves between two
//!   runs.
//!
//! `--smoke` runs 200 instances once over a few seconds.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use highlander::local_cluster::{ClusterSpec, LocalCluster};

use common::{
    EndpointKind, EndpointRange, EndpointStats, Endpoints, Guarded, ProcUsage, histogram_buckets,
    histogram_percentile, markdown_table, median, metric_sum, mib,
};

/// Instances per highlander service (and per HAProxy backend).
const PER_SERVICE: u32 = 10;
/// The core the prober (highlander or HAProxy) runs on.
const PROBER_CPU: usize = 0;
/// The core the endpoint server runs on.
const ENDPOINT_CPU: usize = 1;
/// Where the HTTP and the TCP endpoints' addresses begin.
const HTTP_BASE: Ipv4Addr = Ipv4Addr::new(127, 20, 0, 1);
const TCP_BASE: Ipv4Addr = Ipv4Addr::new(127, 21, 0, 1);
/// The nice value of the prober and the endpoint server (see
/// `common::renice`).
const NICE: i32 = -10;
/// How long a highlander node may take to reach steady state: every
/// service decided and every instance up.
const STEADY_DEADLINE: Duration = Duration::from_secs(240);
/// How long after a /metrics scrape the endpoints' window starts.
const SCRAPE_SETTLE: Duration = Duration::from_secs(3);
/// The goals issue 8 set.
const LAG_GOAL: Duration = Duration::from_millis(50);
const RSS_GOAL_BYTES: u64 = 100 * 1024 * 1024;
const ZONE: &str = "svc.bench.";

/// How much to measure.
struct Plan {
    scales: Vec<u32>,
    reps: usize,
    warmup: Duration,
    window: Duration,
}

impl Plan {
    /// The smoke plan, or the full one at the scales
    /// `HIGHLANDER_BENCH_SCALES` lists (comma-separated instance counts;
    /// 1,000 and 10,000 without it).
    fn new(smoke: bool) -> Result<Plan> {
        if smoke {
            return Ok(Plan {
                scales: vec![200],
                reps: 1,
                warmup: Duration::from_secs(3),
                window: Duration::from_secs(3),
            });
        }
        let scales = match std::env::var("HIGHLANDER_BENCH_SCALES") {
            Ok(list) => list
                .split(',')
                .map(|n| match n.trim().parse::<u32>() {
                    Ok(n) if (2..=60_000).contains(&n) => Ok(n),
                    _ => bail!(
                        "HIGHLANDER_BENCH_SCALES={list:?}: expected instance counts from 2 to 60000, comma-separated, like 1000,10000"
                    ),
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => vec![1_000, 10_000],
        };
        Ok(Plan {
            scales,
            reps: rounds()?,
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(20),
        })
    }
}

fn main() -> ExitCode {
    common::bench_main("probe_scale", true, run)
}

/// Which prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Highlander,
    /// Another highlander build, with `HIGHLANDER_BENCH_BASELINE`.
    Baseline,
    HaProxy,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Highlander => "highlander",
            System::Baseline => "highlander (baseline build)",
            System::HaProxy => "HAProxy",
        }
    }
}

/// One system's figures over one window.
#[derive(Debug, Clone)]
struct Sample {
    probes_per_s: f64,
    /// CPU seconds per 1,000 probes.
    cpu_per_1000: f64,
    rss_bytes: u64,
    /// highlander's own lag histogram, p99 upper bound, seconds.
    lag_p99: Option<f64>,
    /// The endpoints' view: p99 of the time between two probes of one endpoint.
    gap_p99: Option<Duration>,
}

async fn run(private: bool) -> Result<()> {
    let started = Instant::now();
    if !private {
        eprintln!(
            "warning: not root, so no network namespace of its own: the probe counts include every other connection made on this machine meanwhile"
        );
    }
    let plan = Plan::new(common::smoke())?;
    let haproxy = find_haproxy()?;
    let binary = Path::new(env!("CARGO_BIN_EXE_highlander"));
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    let mut baseline_rows = Vec::new();
    let baseline_binary =
        std::env::var_os("HIGHLANDER_BENCH_BASELINE").map(std::path::PathBuf::from);
    for &scale in &plan.scales {
        let half = scale / 2;
        let port = common::free_port_on(&[HTTP_BASE, TCP_BASE])?;
        let ranges = [
            EndpointRange {
                kind: EndpointKind::Http,
                first: HTTP_BASE,
                count: half,
                port,
            },
            EndpointRange {
                kind: EndpointKind::Tcp,
                first: TCP_BASE,
                count: scale - half,
                port,
            },
        ];
        let endpoints = Endpoints::start(&ranges, Some(&[ENDPOINT_CPU]))?;
        common::renice(endpoints.pid(), NICE);
        eprintln!(
            "{scale} endpoints up on port {port} (endpoint server pid {})",
            endpoints.pid()
        );
        let mut samples: BTreeMap<System, Vec<Sample>> = BTreeMap::new();
        let mut ratios: BTreeMap<System, Vec<f64>> = BTreeMap::new();
        let mut to_baseline = Vec::new();
        let mut node = Node::start(binary, &ranges)
            .await
            .with_context(|| format!("highlander, {scale} instances"))?;
        node.cluster.pause(1);
        let mut baseline = match &baseline_binary {
            Some(path) => {
                let mut b = Node::start(path, &ranges).await.with_context(|| {
                    format!("the baseline build {}, {scale} instances", path.display())
                })?;
                b.cluster.pause(1);
                Some(b)
            }
            None => None,
        };
        let mut systems = vec![System::Highlander];
        if baseline.is_some() {
            systems.push(System::Baseline);
        }
        systems.push(System::HaProxy);
        for rep in 1..=plan.reps {
            let mut order = systems.clone();
            if rep % 2 == 0 {
                order.reverse();
            }
            let mut round = BTreeMap::new();
            for system in order {
                let sample = match (system, &mut baseline) {
                    (System::Highlander, _) => node.measure(&endpoints, &plan).await,
                    (System::Baseline, Some(b)) => b.measure(&endpoints, &plan).await,
                    (System::Baseline, None) => continue,
                    (System::HaProxy, _) => {
                        measure_haproxy(&haproxy, &endpoints, &ranges, &plan).await
                    }
                }
                .with_context(|| format!("{}, {scale} instances, round {rep}", system.name()))?;
                eprintln!(
                    "{scale} instances, round {rep}/{}: {:<10} {:>8.0} probes/s, {:.4} CPU s per 1,000 probes, RSS {} MiB, lag p99 {}, gap p99 {}",
                    plan.reps,
                    system.name(),
                    sample.probes_per_s,
                    sample.cpu_per_1000,
                    mib(sample.rss_bytes),
                    sample
                        .lag_p99
                        .map_or("n/a".into(), |l| format!("{} ms", lag_text(l))),
                    sample.gap_p99.map_or("n/a".into(), |g| format!(
                        "{:.1} ms",
                        g.as_secs_f64() * 1000.0
                    )),
                );
                round.insert(system, sample);
            }
            let cpu = |system| round.get(&system).map(|s: &Sample| s.cpu_per_1000);
            if let Some(ha) = cpu(System::HaProxy) {
                for system in [System::Highlander, System::Baseline] {
                    if let Some(own) = cpu(system) {
                        ratios.entry(system).or_default().push(own / ha);
                    }
                }
            }
            if let (Some(own), Some(base)) = (cpu(System::Highlander), cpu(System::Baseline)) {
                to_baseline.push(own / base);
                eprintln!(
                    "{scale} instances, round {rep}: this build's CPU per probe is {:.3}x the baseline build's",
                    own / base
                );
            }
            for (system, sample) in round {
                samples.entry(system).or_default().push(sample);
            }
        }
        if !to_baseline.is_empty() {
            baseline_rows.push(vec![
                format!("{scale}"),
                format!("{:.3}", median(&to_baseline)),
                to_baseline
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        for system in systems {
            let Some(s) = samples.get(&system) else {
                continue;
            };
            let ratio = ratios.get(&system).map_or(1.0, |r| median(r));
            let pick = |f: &dyn Fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
            let lag = pick(&|s| s.lag_p99.unwrap_or(f64::NAN));
            let gap = pick(&|s| s.gap_p99.map_or(f64::NAN, |g| g.as_secs_f64()));
            let rss = pick(&|s| s.rss_bytes as f64);
            rows.push(vec![
                format!("{scale}"),
                system.name().to_owned(),
                format!("{:.0}", pick(&|s| s.probes_per_s)),
                format!("{:.4}", pick(&|s| s.cpu_per_1000)),
                mib(rss as u64),
                if lag.is_nan() {
                    "n/a".into()
                } else {
                    lag_text(lag)
                },
                if gap.is_nan() {
                    "n/a".into()
                } else {
                    format!("{:.1}", gap * 1000.0)
                },
                match system {
                    System::HaProxy => "1".into(),
                    _ => format!("{ratio:.2}"),
                },
            ]);
            if system == System::Highlander {
                verdicts.push(vec![
                    format!("{scale}"),
                    format!(
                        "CPU per probe ≤ HAProxy's: ratio {ratio:.2}: {}",
                        yes(ratio <= 1.0)
                    ),
                    format!(
                        "lag p99 < {} ms: {}",
                        LAG_GOAL.as_millis(),
                        yes(lag < LAG_GOAL.as_secs_f64())
                    ),
                    if scale >= 10_000 {
                        format!(
                            "RSS < 100 MB: {} MiB: {}",
                            mib(rss as u64),
                            yes((rss as u64) < RSS_GOAL_BYTES)
                        )
                    } else {
                        "(RSS goal is for 10,000)".into()
                    },
                ]);
            }
        }
        drop(baseline);
        drop(node);
        drop(endpoints);
    }
    println!();
    print!(
        "{}",
        markdown_table(
            &[
                "instances",
                "system",
                "probes/s",
                "CPU s per 1,000 probes",
                "RSS MiB",
                "lag p99 ms (own metric, one /metrics scrape included)",
                "gap p99 ms (at the endpoints)",
                "CPU ratio to HAProxy",
            ],
            &rows
        )
    );
    println!();
    print!(
        "{}",
        markdown_table(
            &["instances", "CPU goal", "lag goal", "RSS goal"],
            &verdicts
        )
    );
    if !baseline_rows.is_empty() {
        println!();
        print!(
            "{}",
            markdown_table(
                &[
                    "instances",
                    "this build's CPU per probe / the baseline build's (median)",
                    "each round",
                ],
                &baseline_rows
            )
        );
    }
    println!();
    println!(
        "Half HTTP, half TCP endpoints on loopback, one endpoint server pinned to core {ENDPOINT_CPU}; the prober pinned to core {PROBER_CPU}; all three at nice {NICE}. Interval 1 s, timeout 500 ms, rise 2, fall 3 for both; highlander as a single-node cluster, one service per {PER_SERVICE} instances. Medians of {} rounds of a {} s window after {} s of warm-up (highlander's counted from when it is steady: every service decided, every instance up), the systems in turn, the order reversed every other round; the CPU ratio is the median of each round's ratio. Probes are the connections opened (Tcp: ActiveOpens of the benchmark's own network namespace); CPU is utime + stime from /proc/PID/stat; RSS is VmRSS at the end of the window; lag is highlander's highlander_probe_lag_seconds between two /metrics scrapes (upper bound of the p99 bucket; the first scrape's stall included); gap is the time between two connections to one HTTP endpoint, seen by the endpoint server (interval plus lateness), over a window starting {} s after the scrape.",
        plan.reps,
        plan.window.as_secs(),
        plan.warmup.as_secs(),
        SCRAPE_SETTLE.as_secs()
    );
    println!("run took {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// A lag p99 (a bucket's upper bound, in seconds) in milliseconds:
/// `≤ 5`, or `> 2000` past the last finite bucket.
fn lag_text(seconds: f64) -> String {
    if seconds.is_infinite() {
        "> 2000".into()
    } else {
        format!("≤ {}", seconds * 1000.0)
    }
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}

/// HAProxy's binary, or an error saying how to install it.
fn find_haproxy() -> Result<std::path::PathBuf> {
    for candidate in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        let path = Path::new(candidate);
        if path.exists() {
            return Ok(path.to_owned());
        }
    }
    bail!("HAProxy is not installed; bench/install installs it from Debian's packages")
}

/// How many rounds: `HIGHLANDER_BENCH_ROUNDS`, or 5.
fn rounds() -> Result<usize> {
    match std::env::var("HIGHLANDER_BENCH_ROUNDS") {
        Ok(n) => match n.trim().parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => bail!("HIGHLANDER_BENCH_ROUNDS={n:?}: expected a number of rounds from 1 to 100"),
        },
        Err(_) => Ok(5),
    }
}

/// highlander's `[[services]]`: one service per [`PER_SERVICE`] endpoints
/// of one kind, each instance answered by its own address.
fn services_toml(ranges: &[EndpointRange]) -> String {
    let mut toml = String::new();
    for (r, range) in ranges.iter().enumerate() {
        let kind = match range.kind {
            EndpointKind::Http => "kind = \"http\"\npath = \"/health\"",
            EndpointKind::Tcp => "kind = \"tcp\"",
        };
        for i in 0..range.count {
            if i % PER_SERVICE == 0 {
                toml.push_str(&format!(
                    "\n[[services]]\nname = \"s{r}-{}\"\n[services.check]\n{kind}\n",
                    i / PER_SERVICE
                ));
            }
            let addr = range.addr(i);
            toml.push_str(&format!(
                "[[services.instances]]\nname = \"i{}\"\naddress = \"{addr}\"\na = \"{}\"\n",
                i % PER_SERVICE,
                addr.ip()
            ));
        }
    }
    toml
}

/// HAProxy's config: one backend per [`PER_SERVICE`] endpoints, and a
/// frontend on an abstract socket only because HAProxy will not start
/// without a listener.
fn haproxy_cfg(ranges: &[EndpointRange]) -> String {
    let mut cfg = format!(
        "global\n    nbthread 1\n    maxconn 4096\n\ndefaults\n    timeout connect 500ms\n    timeout check 500ms\n    timeout client 5s\n    timeout server 5s\n    default-server check inter 1s rise 2 fall 3\n\nfrontend unused\n    mode tcp\n    bind abns@highlander-bench-{}\n    default_backend b0-0\n",
        std::process::id()
    );
    for (r, range) in ranges.iter().enumerate() {
        for i in 0..range.count {
            if i % PER_SERVICE == 0 {
                cfg.push_str(&format!("\nbackend b{r}-{}\n", i / PER_SERVICE));
                cfg.push_str(match range.kind {
                    EndpointKind::Http => "    mode http\n    option httpchk GET /health\n",
                    EndpointKind::Tcp => "    mode tcp\n",
                });
            }
            cfg.push_str(&format!(
                "    server i{} {}\n",
                i % PER_SERVICE,
                range.addr(i)
            ));
        }
    }
    cfg
}

/// A highlander node probing the endpoints; started once per scale and
/// frozen (SIGSTOP) while HAProxy is measured, since reaching steady state
/// at 10,000 instances takes minutes.
struct Node {
    cluster: LocalCluster,
    pid: u32,
    http: reqwest::Client,
}

impl Node {
    /// Starts the node and waits until it is steady.
    async fn start(binary: &Path, ranges: &[EndpointRange]) -> Result<Node> {
        let mut spec = ClusterSpec::new(1, ZONE, &services_toml(ranges));
        spec.die_with_parent = true;
        spec.cpus = Some(vec![PROBER_CPU]);
        let cluster = LocalCluster::start(binary, spec)?;
        let pid = cluster.pid(1).context("the node is not running")?;
        common::renice(pid, NICE);
        let began = Instant::now();
        let steady = common::until(
            STEADY_DEADLINE,
            Duration::from_secs(1),
            "every service decided and every instance up",
            || async {
                let status = cluster.status(1).await?;
                let decided = status.services.iter().filter(|s| s.active.is_some()).count();
                let up = status
                    .services
                    .iter()
                    .flat_map(|s| &s.instances)
                    .filter(|i| i.health.get(&1) == Some(&highlander::model::Verdict::Up))
                    .count();
                let instances: usize = status.services.iter().map(|s| s.instances.len()).sum();
                let steady = decided == status.services.len() && up == instances;
                if !steady {
                    eprintln!(
                        "  after {:.1} s: {decided} of {} services decided, {up} of {instances} instances up",
                        began.elapsed().as_secs_f64(),
                        status.services.len()
                    );
                }
                Ok(steady.then_some(()))
            },
        )
        .await;
        if let Err(e) = steady {
            bail!("{e:#}; node log:\n{}", cluster.log_tails(20));
        }
        eprintln!(
            "  highlander steady (every service decided, every instance up) after {:.1} s",
            began.elapsed().as_secs_f64()
        );
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Node { cluster, pid, http })
    }

    async fn metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.cluster.api_addr(1));
        self.http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("GET /metrics")?
            .text()
            .await
            .context("read /metrics")
    }

    /// Lets the node run again, warms up, measures one window, and freezes
    /// it again.
    async fn measure(&mut self, endpoints: &Endpoints, plan: &Plan) -> Result<Sample> {
        self.cluster.resume(1);
        tokio::time::sleep(plan.warmup).await;
        // Threads started since the last call run at the default priority.
        common::renice(self.pid, NICE);
        let scrape = Instant::now();
        let before = self.metrics().await?;
        let scrape = scrape.elapsed();
        // A scrape at 10,000 instances renders ~65,000 series on the node's
        // worker and holds its probes back meanwhile; the endpoints' window
        // starts after that has passed, so the gap figure is the node's own.
        tokio::time::sleep(SCRAPE_SETTLE).await;
        let (sample, _) = window(self.pid, endpoints, plan.window).await?;
        let after = self.metrics().await?;
        self.cluster.pause(1);
        let family = "highlander_probe_lag_seconds";
        let (lag_before, lag_after) = (
            histogram_buckets(&before, family),
            histogram_buckets(&after, family),
        );
        let lag = histogram_percentile(&lag_before, &lag_after, 99.0);
        let own = metric_sum(&after, "highlander_probe_duration_seconds_count")
            - metric_sum(&before, "highlander_probe_duration_seconds_count");
        let spread: Vec<String> = lag_after
            .iter()
            .map(|(le, n)| {
                format!(
                    "≤{}s: {:.0}",
                    f64::from_bits(*le),
                    n - lag_before.get(le).copied().unwrap_or(0.0)
                )
            })
            .collect();
        eprintln!(
            "  highlander started {own:.0} probes over the window; a /metrics scrape took {} ms; lag (cumulative, the scrape's stall included) {}",
            scrape.as_millis(),
            spread.join(", ")
        );
        if lag.is_none() {
            bail!(
                "no probe lag recorded over the window; node log:\n{}",
                self.cluster.log_tails(20)
            );
        }
        Ok(Sample {
            lag_p99: lag,
            ..sample
        })
    }
}

async fn measure_haproxy(
    haproxy: &Path,
    endpoints: &Endpoints,
    ranges: &[EndpointRange],
    plan: &Plan,
) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("highlander-bench-haproxy-")
        .tempdir()
        .context("create a temporary directory")?;
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_cfg(ranges))
        .with_context(|| format!("write {}", cfg.display()))?;
    let log_path = dir.path().join("haproxy.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut command = Command::new(haproxy);
    command
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut process = Guarded::spawn("HAProxy", command, Some(&[PROBER_CPU]))?;
    common::renice(process.pid(), NICE);
    tokio::time::sleep(plan.warmup).await;
    if let Some(status) = process.exited() {
        bail!(
            "HAProxy exited ({status}): {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let (sample, _) = window(process.pid(), endpoints, plan.window).await?;
    process.kill();
    Ok(sample)
}

/// Measures process `pid` and the endpoints over `length`.
async fn window(
    pid: u32,
    endpoints: &Endpoints,
    length: Duration,
) -> Result<(Sample, EndpointStats)> {
    let before_usage = ProcUsage::of(pid)?;
    let before_threads = ProcUsage::by_thread(pid)?;
    let before = endpoints.stats().await?;
    let before_opens = common::active_opens()?;
    let start = Instant::now();
    tokio::time::sleep(length).await;
    let after_opens = common::active_opens()?;
    let after_usage = ProcUsage::of(pid)?;
    let after_threads = ProcUsage::by_thread(pid)?;
    let after = endpoints.stats().await?;
    let elapsed = start.elapsed().as_secs_f64();
    let counted = after.since(&before);
    // The two control connections to the endpoint server (the second
    // counted before the reading) are the only ones that are not probes.
    let probes = (after_opens - before_opens).saturating_sub(1);
    eprintln!(
        "  {probes} connections opened in {elapsed:.1} s; the endpoints accepted {} HTTP and {} TCP connections",
        counted.http, counted.tcp
    );
    if probes == 0 || counted.http == 0 {
        bail!("no probe counted in {elapsed:.1} s: nothing is probing");
    }
    let cpu = after_usage
        .cpu
        .saturating_sub(before_usage.cpu)
        .as_secs_f64();
    let kernel = after_usage
        .kernel
        .saturating_sub(before_usage.kernel)
        .as_secs_f64();
    // Where it went: for highlander, the probe thread against the node's
    // own work (Raft, observations, decisions) on the runtime's workers.
    let threads: Vec<String> = after_threads
        .iter()
        .map(|(name, after)| {
            let spent = after.saturating_sub(before_threads.get(name).copied().unwrap_or_default());
            format!("{name} {:.2} s", spent.as_secs_f64())
        })
        .collect();
    eprintln!(
        "  {cpu:.2} CPU s over the window, {:.0} % of it in the kernel; by thread: {}",
        if cpu > 0.0 { kernel / cpu * 100.0 } else { 0.0 },
        threads.join(", ")
    );
    Ok((
        Sample {
            probes_per_s: probes as f64 / elapsed,
            cpu_per_1000: cpu / (probes as f64 / 1000.0),
            rss_bytes: after_usage.rss_bytes,
            lag_p99: None,
            gap_p99: counted.gap_percentile(99.0),
        },
        counted,
    ))
}
