//! What highlander's benchmarks share: the `--smoke` switch, polling with a
//! deadline, percentiles and markdown tables, CPU and memory read from
//! `/proc`, child processes that die with the benchmark, and the endpoint
//! server, a helper process that serves many HTTP and TCP endpoints on
//! loopback addresses and counts what connects to them.
//!
//! The endpoint server is this same benchmark executable started again
//! with [`ROLE_ENV`] set: every benchmark's `main` first calls
//! [`run_helper_if_asked`]. So the endpoints are a process of their own,
//! which can be pinned to another core than the prober, frozen with
//! SIGSTOP (a hung instance) or killed (a dead one), and need no binary
//! beyond the benchmark itself.
//!
//! Nothing here may outlive the benchmark: every child is killed and reaped
//! when its handle drops, and is also asked to die with the thread that
//! started it (`PR_SET_PDEATHSIG`), for a benchmark that is itself killed.
//! Each benchmark uses part of this module, so unused items are allowed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use highlander::local_cluster::{die_with_parent_thread, pin_to_cpus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the benchmark was asked for its seconds-long smoke run (CI).
/// Other arguments (cargo bench passes `--bench`) are ignored.
pub fn smoke() -> bool {
    std::env::args().skip(1).any(|a| a == "--smoke")
}

/// Every benchmark's `main`: serves as a helper if started as one; else
/// moves into a network namespace of its own if `isolate` asks (see
/// [`private_network`]; `run` is told whether that worked), builds the
/// runtime and runs `run`. An error means the benchmark could not measure:
/// it is printed and the exit code is 1.
pub fn bench_main<F, Fut>(name: &str, isolate: bool, run: F) -> ExitCode
where
    F: FnOnce(bool) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if let Some(code) = run_helper_if_asked() {
        return code;
    }
    let isolated = isolate && private_network();
    match runtime().and_then(|rt| rt.block_on(run(isolated))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} benchmark abandoned: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The number of trials of each kind: `HIGHLANDER_BENCH_TRIALS`, or
/// `smoke_trials` with `--smoke`, or `default`.
pub fn trials(default: usize, smoke_trials: usize) -> Result<usize> {
    if smoke() {
        return Ok(smoke_trials);
    }
    match std::env::var("HIGHLANDER_BENCH_TRIALS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!(
                "HIGHLANDER_BENCH_TRIALS = {v:?}: expected a whole number of trials, 1 or more"
            ),
        },
        Err(_) => Ok(default),
    }
}

/// The runtime every benchmark's measuring side runs on: two workers, as
/// many as the machine has cores.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the Tokio runtime")
}

/// Polls `check` every `every` until it returns `Some`, or fails after
/// `deadline` with the last error it returned. An error does not end the
/// wait: a node may not answer for a moment.
pub async fn until<T, F, Fut>(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            match last_error {
                Some(e) => bail!("{what}: not within {deadline:?} (last error: {e:#})"),
                None => bail!("{what}: not within {deadline:?}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The sample at nearest rank `ceil(p/100 × n)` of `sorted`.
///
/// # Panics
/// If `sorted` is empty: a benchmark with no sample has measured nothing.
pub fn percentile<T: Copy>(sorted: &[T], p: usize) -> T {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The median of `values` (the lower middle one for an even count), or
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// Whole milliseconds, `"1234ms"`.
pub fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The columns [`latency_cells`] fills, after a row's own first ones.
pub const LATENCY_COLUMNS: [&str; 6] = ["trials", "p50", "p99", "max", "goal (p99)", "met"];

/// A latency row's cells for [`LATENCY_COLUMNS`]: nearest-rank p50 and p99
/// of `samples`, the max, the goal and whether p99 met it ("—" without a
/// goal).
///
/// # Panics
/// If `samples` is empty.
pub fn latency_cells(samples: &[Duration], goal: Option<Duration>) -> Vec<String> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let p99 = percentile(&sorted, 99);
    vec![
        sorted.len().to_string(),
        ms(percentile(&sorted, 50)),
        ms(p99),
        ms(percentile(&sorted, 100)),
        goal.map_or("—".into(), ms),
        goal.map_or("—".into(), |g| if p99 <= g { "yes" } else { "no" }.into()),
    ]
}

/// A markdown table: a header row, the separator, one line per row.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push_str(&line(
        &headers.iter().map(|_| "---".to_owned()).collect::<Vec<_>>(),
    ));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// A process's CPU time so far (user plus system, all threads) and its
/// resident memory now, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    /// utime + stime, to the clock tick (10 ms).
    pub cpu: Duration,
    /// stime alone: the part of `cpu` spent in the kernel.
    pub kernel: Duration,
    /// VmRSS.
    pub rss_bytes: u64,
}

impl ProcUsage {
    /// Reads process `pid`'s `/proc/PID/stat` (utime, stime) and
    /// `/proc/PID/status` (VmRSS).
    pub fn of(pid: u32) -> Result<ProcUsage> {
        let (user, kernel) = stat_cpu(&format!("/proc/{pid}/stat"))?;
        let status_path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&status_path).with_context(|| format!("read {status_path}"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{status_path}: no VmRSS"))?;
        Ok(ProcUsage {
            cpu: user + kernel,
            kernel,
            rss_bytes: rss_kib * 1024,
        })
    }

    /// The CPU time (user plus system) of each of process `pid`'s threads
    /// alive now, summed by thread name, from `/proc/PID/task/*/stat`.
    pub fn by_thread(pid: u32) -> Result<BTreeMap<String, Duration>> {
        let dir = format!("/proc/{pid}/task");
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
            let path = task
                .with_context(|| format!("read {dir}"))?
                .path()
                .join("stat");
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(&path) else {
                continue;
            };
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or("?", |(name, _)| name);
            let (user, kernel) = stat_cpu_of(&stat, &path.display().to_string())?;
            *threads.entry(name.to_owned()).or_default() += user + kernel;
        }
        Ok(threads)
    }
}

/// User and system CPU time from the `stat` file at `path` (of a process
/// or a thread).
fn stat_cpu(path: &str) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    stat_cpu_of(&stat, path)
}

/// User and system CPU time from `stat`, the text of the `stat` file at
/// `path`.
fn stat_cpu_of(stat: &str, path: &str) -> Result<(Duration, Duration)> {
    // The command name may hold spaces and parentheses; the fields after
    // its closing parenthesis are fixed: utime and stime are the 12th and
    // 13th of them (fields 14 and 15 of the line).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let (user_ticks, kernel_ticks) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
    Ok((time(user_ticks), time(kernel_ticks)))
}

/// Sets the nice value of every thread process `pid` has now (threads it
/// starts later inherit it from their creator). The benchmarks run their
/// measured processes at -10 on a machine where others compile: at the
/// default 0 a pinned prober gets a third of its core beside two
/// compilers, and its figures measure them. Needs root; without it the
/// figures are just noisier, so a failure is only reported.
pub fn renice(pid: u32, nice: i32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // highlander renders scrapes on a thread it runs below its others
        // (`metrics::RENDER_NICE`); that thread keeps its distance.
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        let nice = if comm.trim_end() == highlander::metrics::RENDER_THREAD {
            (nice + highlander::metrics::RENDER_NICE).min(19)
        } else {
            nice
        };
        // SAFETY: setpriority takes plain values and touches no memory.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            eprintln!(
                "warning: cannot set thread {tid} of process {pid} to nice {nice}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Mebibytes, one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// A child process that is killed and reaped when this handle drops.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    child: Option<Child>,
}

impl Guarded {
    /// Spawns `command` as `name` (for messages), asking the kernel to kill
    /// it when the calling thread exits and, if `cpus` is given, pinning it
    /// to those cores. Call it from the thread that lives as long as the
    /// benchmark (the runtime's main thread), never from `spawn_blocking`.
    pub fn spawn(name: &str, mut command: Command, cpus: Option<&[usize]>) -> Result<Guarded> {
        die_with_parent_thread(&mut command);
        if let Some(cpus) = cpus {
            pin_to_cpus(&mut command, cpus);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        Ok(Guarded {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its standard output, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) while it runs.
    pub fn signal(&self, signal: libc::c_int) {
        let Some(child) = &self.child else { return };
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return;
        };
        // SAFETY: kill(2) touches no memory of ours; the pid is our own
        // unreaped child, so it names no other process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Whether it has exited (and so was reaped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Kills it with SIGKILL (a stopped process too) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What it was started as.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Set to [`ENDPOINTS_ROLE`] in the environment of the benchmark executable
/// started again as the endpoint server.
pub const ROLE_ENV: &str = "HIGHLANDER_BENCH_ROLE";
const ENDPOINTS_ROLE: &str = "endpoints";
/// The endpoint ranges, as [`EndpointRange::encode`] writes them.
const ENDPOINTS_ENV: &str = "HIGHLANDER_BENCH_ENDPOINTS";
/// How long the endpoint server may take to bind everything.
const ENDPOINTS_READY: Duration = Duration::from_secs(30);
/// The gap histogram's resolution and reach: 100 µs buckets up to 5 s.
const GAP_BUCKET: Duration = Duration::from_micros(100);
const GAP_BUCKETS: usize = 50_000;

/// If this process was started as a helper, runs it and returns its exit
/// code; otherwise `None`, and the benchmark goes on. Call it first in
/// `main`, before any runtime is built.
pub fn run_helper_if_asked() -> Option<ExitCode> {
    match std::env::var(ROLE_ENV).ok().as_deref() {
        Some(ENDPOINTS_ROLE) => Some(match serve_endpoints() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("endpoint server: {e:#}");
                ExitCode::FAILURE
            }
        }),
        _ => None,
    }
}

/// What an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// Reads a request and answers `200 OK`, then closes.
    Http,
    /// Accepts and closes: a TCP check only needs the connection to open.
    Tcp,
}

/// `count` endpoints of one kind on consecutive IPv4 loopback addresses
/// from `first`, all on `port`.
#[derive(Debug, Clone, Copy)]
pub struct EndpointRange {
    /// What every endpoint of the range answers.
    pub kind: EndpointKind,
    /// The first endpoint's address; the others follow it.
    pub first: Ipv4Addr,
    /// How many endpoints.
    pub count: u32,
    /// The port every endpoint listens on.
    pub port: u16,
}

impl EndpointRange {
    /// The `i`th endpoint's address.
    pub fn addr(&self, i: u32) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::from(u32::from(self.first) + i), self.port))
    }

    /// Every endpoint's address.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (0..self.count).map(|i| self.addr(i))
    }

    fn encode(ranges: &[EndpointRange]) -> String {
        ranges
            .iter()
            .map(|r| {
                let kind = match r.kind {
                    EndpointKind::Http => "http",
                    EndpointKind::Tcp => "tcp",
                };
                format!("{kind},{},{},{}", r.first, r.count, r.port)
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    fn decode(text: &str) -> Result<Vec<EndpointRange>> {
        text.split(';')
            .filter(|s| !s.is_empty())
            .map(|part| {
                let fields: Vec<&str> = part.split(',').collect();
                let [kind, first, count, port] = fields[..] else {
                    bail!("{ENDPOINTS_ENV}: {part:?} is not kind,first,count,port");
                };
                Ok(EndpointRange {
                    kind: match kind {
                        "http" => EndpointKind::Http,
                        "tcp" => EndpointKind::Tcp,
                        other => bail!("{ENDPOINTS_ENV}: unknown kind {other:?}"),
                    },
                    first: first
                        .parse()
                        .with_context(|| format!("{ENDPOINTS_ENV}: {first:?}"))?,
                    count: count
                        .parse()
                        .with_context(|| format!("{ENDPOINTS_ENV}: {count:?}"))?,
                    port: port
                        .parse()
                        .with_context(|| format!("{ENDPOINTS_ENV}: {port:?}"))?,
                })
            })
            .collect()
    }
}

/// A port free on every one of `ips` right now (for a set of endpoints
/// that must share a port, as PowerDNS's `ifurlup` wants).
pub fn free_port_on(ips: &[Ipv4Addr]) -> Result<u16> {
    for _ in 0..50 {
        let Some(first) = ips.first() else {
            bail!("no address to find a port on");
        };
        let probe =
            std::net::TcpListener::bind((*first, 0)).with_context(|| format!("bind {first}:0"))?;
        let port = probe.local_addr()?.port();
        let rest: Result<Vec<_>, _> = ips[1..]
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if rest.is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free on all of {ips:?} in 50 tries")
}

/// The endpoint server: a helper process serving [`EndpointRange`]s,
/// counting accepted connections and the gaps between consecutive
/// connections to each endpoint. Killed when dropped.
pub struct Endpoints {
    process: Guarded,
    control: SocketAddr,
}

impl Endpoints {
    /// Starts the server (pinned to `cpus` if given) and waits until it has
    /// bound every endpoint.
    pub fn start(ranges: &[EndpointRange], cpus: Option<&[usize]>) -> Result<Endpoints> {
        let exe = std::env::current_exe().context("find the benchmark's own executable")?;
        let mut command = Command::new(exe);
        command
            .env(ROLE_ENV, ENDPOINTS_ROLE)
            .env(ENDPOINTS_ENV, EndpointRange::encode(ranges))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Guarded::spawn("endpoint server", command, cpus)?;
        let stdout = process
            .take_stdout()
            .context("the endpoint server's stdout")?;
        // A blocking read on a helper thread, bounded by a channel timeout:
        // the server prints one line once everything is bound, or dies.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(ENDPOINTS_READY)
            .context("the endpoint server did not report ready")?;
        let port: u16 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("the endpoint server said {line:?} instead of `ready PORT` (see its error above)"))?;
        Ok(Endpoints {
            process,
            control: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Freezes the server with SIGSTOP: connections still open (the kernel
    /// completes the handshake) but nothing answers, as a hung instance.
    pub fn pause(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// Kills the server: its ports refuse connections from then on.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The counters so far.
    pub async fn stats(&self) -> Result<EndpointStats> {
        let mut stream = tokio::net::TcpStream::connect(self.control)
            .await
            .with_context(|| {
                format!(
                    "connect to the endpoint server's control port {}",
                    self.control
                )
            })?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
            .await
            .context("the endpoint server's stats took over 5 s")??;
        EndpointStats::parse(&text)
    }
}

/// What the endpoint server counted: accepted connections by kind, and a
/// histogram of the time between two connections to the same HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointStats {
    /// Connections accepted by HTTP endpoints.
    pub http: u64,
    /// Connections accepted by TCP endpoints (a check that resets at the
    /// SYN-ACK is never accepted, so never counted here).
    pub tcp: u64,
    /// Bucket index (× [`GAP_BUCKET`]) to count; the last bucket holds
    /// everything longer.
    gaps: BTreeMap<usize, u64>,
}

impl EndpointStats {
    fn parse(text: &str) -> Result<EndpointStats> {
        let mut stats = EndpointStats::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("http") => {
                    stats.http = words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .context("http count")?
                }
                Some("tcp") => {
                    stats.tcp = words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .context("tcp count")?
                }
                Some("gaps") => {
                    for pair in words {
                        let (i, n) = pair.split_once(':').context("gap bucket")?;
                        stats.gaps.insert(i.parse()?, n.parse()?);
                    }
                }
                _ => {}
            }
        }
        Ok(stats)
    }

    /// Connections accepted, of both kinds.
    pub fn accepted(&self) -> u64 {
        self.http + self.tcp
    }

    /// What was counted after `earlier` (a snapshot of the same server).
    pub fn since(&self, earlier: &EndpointStats) -> EndpointStats {
        let mut gaps = self.gaps.clone();
        for (i, n) in &earlier.gaps {
            if let Some(v) = gaps.get_mut(i) {
                *v = v.saturating_sub(*n);
            }
        }
        gaps.retain(|_, n| *n > 0);
        EndpointStats {
            http: self.http.saturating_sub(earlier.http),
            tcp: self.tcp.saturating_sub(earlier.tcp),
            gaps,
        }
    }

    /// The `p`th percentile of the gaps (an upper bound, to the bucket),
    /// or `None` with no gap counted.
    pub fn gap_percentile(&self, p: f64) -> Option<Duration> {
        let total: u64 = self.gaps.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in &self.gaps {
            seen += n;
            if seen >= rank {
                return Some(GAP_BUCKET * (*i as u32 + 1));
            }
        }
        None
    }
}

/// The endpoint server's own counters, shared by every endpoint task.
struct Counters {
    http: AtomicU64,
    tcp: AtomicU64,
    gaps: Box<[AtomicU64]>,
}

impl Counters {
    fn render(&self) -> String {
        let mut out = format!(
            "http {}\ntcp {}\ngaps",
            self.http.load(Ordering::Relaxed),
            self.tcp.load(Ordering::Relaxed)
        );
        for (i, n) in self.gaps.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.push_str(&format!(" {i}:{n}"));
            }
        }
        out.push('\n');
        out
    }
}

/// The helper side: binds every endpoint, prints `ready PORT` (its control
/// port) and serves until killed.
fn serve_endpoints() -> Result<()> {
    let ranges = EndpointRange::decode(&std::env::var(ENDPOINTS_ENV).context(ENDPOINTS_ENV)?)?;
    let wanted: u64 = ranges.iter().map(|r| u64::from(r.count)).sum();
    raise_open_files(wanted + 1024)?;
    // One thread: the server is pinned to one core, and its own cost is not
    // what is measured.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the endpoint server's runtime")?;
    runtime.block_on(async move {
        let counters = Arc::new(Counters {
            http: AtomicU64::new(0),
            tcp: AtomicU64::new(0),
            gaps: (0..GAP_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        });
        let mut listeners = Vec::new();
        for range in &ranges {
            for addr in range.addrs() {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind endpoint {addr}"))?;
                listeners.push((range.kind, listener));
            }
        }
        for (kind, listener) in listeners {
            tokio::spawn(serve_endpoint(kind, listener, counters.clone()));
        }
        let control = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind the control port")?;
        println!("ready {}", control.local_addr()?.port());
        use std::io::Write;
        std::io::stdout().flush()?;
        loop {
            let Ok((mut stream, _)) = control.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.write_all(counters.render().as_bytes()).await;
        }
    })
}

/// Accepts on one endpoint until the process ends.
async fn serve_endpoint(
    kind: EndpointKind,
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
) {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors for a moment: let connections finish.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match kind {
            EndpointKind::Tcp => {
                counters.tcp.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
            EndpointKind::Http => {
                // HTTP only: a TCP check may never be accepted (see
                // `active_opens`), so its gaps would be made up.
                let now = tokio::time::Instant::now();
                if let Some(last) = last.replace(now) {
                    let bucket =
                        (now.duration_since(last).as_micros() / GAP_BUCKET.as_micros()) as usize;
                    counters.gaps[bucket.min(GAP_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
                }
                counters.http.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(answer_http(stream));
            }
        }
    }
}

/// Reads one request's head (bounded in size and time) and answers 200.
async fn answer_http(mut stream: tokio::net::TcpStream) {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    let read_head = async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
        true
    };
    if let Ok(true) = tokio::time::timeout(Duration::from_secs(2), read_head).await {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
        let _ = stream.shutdown().await;
    }
}

/// Raises this process's open-file limit to at least `wanted` (as root the
/// hard limit can be raised too).
fn raise_open_files(wanted: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if limit.rlim_cur >= wanted {
            return Ok(());
        }
        let raised = libc::rlimit {
            rlim_cur: wanted.max(limit.rlim_cur),
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(());
        }
        // Not root: as far as the hard limit allows.
        let capped = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
        if limit.rlim_max < wanted {
            bail!(
                "the open-file limit is {} and cannot be raised to {wanted}; run as root or raise `ulimit -Hn`",
                limit.rlim_max
            );
        }
    }
    Ok(())
}

/// Moves this process into a network namespace of its own with only
/// loopback, up: every child started afterwards shares it, and nothing
/// else on the machine does, so the namespace's TCP counters
/// ([`active_opens`]) count the benchmark's connections only. Needs root;
/// returns `false` (and stays in the host's namespace) without it. Call it
/// first in `main`, before any thread is started: a namespace is a
/// per-thread property, inherited by the threads created afterwards.
pub fn private_network() -> bool {
    // SAFETY: unshare and the ioctls take plain values and a zeroed
    // ifreq that this function owns; the socket is closed before return.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return false;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return false;
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut up = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) == 0;
        if up {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            up = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) == 0;
        }
        libc::close(fd);
        up
    }
}

/// `Tcp: ActiveOpens` of this process's network namespace: every
/// `connect()` started, by anyone in it. HAProxy's TCP checks never
/// complete the handshake from the server's side (they reset after the
/// SYN-ACK, without the last ACK), so no accept counter sees them; the
/// connecting side's count does, for every prober alike.
pub fn active_opens() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("read /proc/net/snmp")?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("/proc/net/snmp has no Tcp lines");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find_map(|(n, v)| (n == "ActiveOpens").then(|| v.parse().ok()).flatten())
        .context("/proc/net/snmp: no ActiveOpens")
}

/// Reads a Prometheus histogram's cumulative buckets (`le` to count,
/// summed over every series of `family`) from `/metrics` text.
pub fn histogram_buckets(text: &str, family: &str) -> BTreeMap<u64, f64> {
    let prefix = format!("{family}_bucket{{");
    let mut buckets = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("le=\"")?.strip_suffix('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            // Keyed by the bound's bits so the map sorts: every bound is positive.
            *buckets.entry(le.to_bits()).or_insert(0.0) += v;
        }
    }
    buckets
}

/// The sum over every series of a counter-like `series` (`name` followed by
/// labels or a space) in `/metrics` text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// From two readings of the same cumulative histogram, the upper bound of
/// the bucket holding the `p`th percentile of what was observed between
/// them; `None` with nothing observed.
pub fn histogram_percentile(
    before: &BTreeMap<u64, f64>,
    after: &BTreeMap<u64, f64>,
    p: f64,
) -> Option<f64> {
    let total = after.get(&f64::INFINITY.to_bits()).copied().unwrap_or(0.0)
        - before.get(&f64::INFINITY.to_bits()).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return None;
    }
    after.iter().find_map(|(le, cum)| {
        let n = cum - before.get(le).copied().unwrap_or(0.0);
        (n >= total * p / 100.0).then(|| f64::from_bits(*le))
    })
}
