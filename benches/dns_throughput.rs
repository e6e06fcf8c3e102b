//! The DNS throughput benchmark (`cargo bench --bench dns_throughput`): UDP
//! queries per second for highlander's health-checked service name against
//! BIND 9, Knot and PowerDNS serving the same name as a static A record, and
//! PowerDNS serving the health-checked equivalent (a LUA `ifurlup` record).
//!
//! Each server runs on loopback from a temporary directory, pinned to core 0;
//! this process and the load generators run on core 1. Two generators:
//! `dnsperf`, which saturates its own core before a fast server does, and a
//! batched one of our own (several sockets, `sendmmsg`/`recvmmsg`, a fixed
//! window of outstanding queries). Each server's CPU time (utime + stime of
//! all its threads and children, from `/proc/PID/stat`) over the run gives
//! µs of CPU per answered query: the measure that does not depend on which
//! side was the limit. Three rounds (1 with `--smoke`, at 1 s each), each
//! measuring every server in turn; medians over the rounds, and ratios taken
//! within a round.
//!
//! It measures and never judges: it exits 1 only when it cannot measure (a
//! server that does not start or answer, a generator that gets no answers).
//! Children are killed on drop and with this process (`PR_SET_PDEATHSIG`).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use highlander::local_cluster::{ClusterSpec, HttpInstance, LocalCluster};

const ZONE: &str = "bench.test.";
const QNAME: &str = "app.bench.test.";
/// What every server answers for [`QNAME`].
const ADDRESS: &str = "192.0.2.10";
/// Our generator: sockets, and queries outstanding on each.
const SOCKETS: usize = 8;
const WINDOW: usize = 64;
/// The longest a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// dnsperf's outstanding queries.
const DNSPERF_OUTSTANDING: &str = "500";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dns_throughput benchmark abandoned: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The servers measured, in table order; the first is highlander.
const SERVERS: [&str; 5] = [
    "highlander (health-checked)",
    "BIND 9 (static)",
    "Knot (static)",
    "PowerDNS (static)",
    "PowerDNS LUA ifurlup (health-checked)",
];

/// One generator's figures for one server: medians over the runs.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    qps: f64,
    cpu_us_per_query: f64,
}

fn run() -> Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (seconds, runs) = if smoke { (1, 1) } else { (10, 3) };
    let duration = Duration::from_secs(seconds);
    pin_self_to(1)?;
    // The health-checked instance (highlander's and PowerDNS LUA's probes
    // reach it); its runtime lives on core 1 with the generators.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let instance = runtime.block_on(HttpInstance::start("app", "127.0.0.1:0".parse()?))?;
    let query = query_wire();
    let query_file = tempfile::NamedTempFile::new()?;
    std::fs::write(query_file.path(), format!("{QNAME} A\n"))?;

    // Rounds, each measuring every server in turn, so that a machine that
    // gets busier or quieter during the run weighs on every server alike;
    // the ratios are taken within a round and their median reported.
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); SERVERS.len()];
    for round in 1..=runs {
        for (index, name) in SERVERS.iter().enumerate() {
            eprintln!("== round {round}/{runs}: {name}");
            let server =
                Server::start(index, instance.addr()).with_context(|| format!("start {name}"))?;
            await_answer(server.addr, &query).with_context(|| format!("{name} answers {QNAME}"))?;
            let dnsperf = measure(&server, || {
                dnsperf_qps(server.addr, query_file.path(), seconds)
            })
            .with_context(|| format!("{name}: dnsperf, round {round}"))?;
            eprintln!("   dnsperf  {dnsperf}");
            let batched = measure(&server, || batched_qps(server.addr, &query, duration))
                .with_context(|| format!("{name}: batched, round {round}"))?;
            eprintln!("   batched  {batched}");
            rounds[index].push(Round { dnsperf, batched });
            drop(server);
        }
    }
    print_tables(&rounds, seconds, runs);
    drop(instance);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// One server's figures in one round, under each generator.
#[derive(Debug, Clone, Copy)]
struct Round {
    dnsperf: Figures,
    batched: Figures,
}

/// Picks one generator's figures out of a [`Round`].
type Pick = fn(&Round) -> Figures;

impl Round {
    fn dnsperf(&self) -> Figures {
        self.dnsperf
    }

    fn batched(&self) -> Figures {
        self.batched
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} qps {:>6.2} µs/q {:>4.0} % of its core",
            self.qps,
            self.cpu_us_per_query,
            self.core_busy() * 100.0
        )
    }
}

impl Figures {
    /// The share of one core the server was busy: near 1 when the server,
    /// not the generator, was the limit.
    fn core_busy(&self) -> f64 {
        self.qps * self.cpu_us_per_query / 1e6
    }
}

/// Runs `load` against `server`, reading its CPU time around it.
fn measure(server: &Server, load: impl FnOnce() -> Result<f64>) -> Result<Figures> {
    let before = cpu_seconds(server.pid)?;
    let started = Instant::now();
    let qps = load()?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid)? - before;
    if qps <= 0.0 {
        bail!("no answers");
    }
    Ok(Figures {
        qps,
        cpu_us_per_query: cpu * 1e6 / (qps * elapsed),
    })
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_tables(rounds: &[Vec<Round>], seconds: u64, runs: usize) {
    let Some(highlander) = rounds.first() else {
        return;
    };
    println!(
        "\nDNS throughput: `{QNAME}` A over UDP, server on core 0, generator on core 1, {seconds} s per run; {runs} round(s), every server measured in each round, medians over the rounds, ratios taken within a round.\n"
    );
    println!(
        "| server | generator | qps | server CPU µs/query | server core busy | highlander/this (qps) | this/highlander (CPU per query) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (generator, pick) in [
        ("dnsperf", Round::dnsperf as Pick),
        ("batched", Round::batched),
    ] {
        for (name, server) in SERVERS.iter().zip(rounds) {
            let of = |f: fn(&Figures) -> f64| median(server.iter().map(|r| f(&pick(r))).collect());
            let ratio = |f: fn(&Figures, &Figures) -> f64| {
                median(
                    highlander
                        .iter()
                        .zip(server)
                        .map(|(h, s)| f(&pick(h), &pick(s)))
                        .collect(),
                )
            };
            println!(
                "| {name} | {generator} | {:.0} | {:.2} | {:.0} % | {:.2}× | {:.2}× |",
                of(|f| f.qps),
                of(|f| f.cpu_us_per_query),
                of(|f| f.core_busy()) * 100.0,
                ratio(|h, s| h.qps / s.qps),
                ratio(|h, s| s.cpu_us_per_query / h.cpu_us_per_query),
            );
        }
    }
}

/// A running server: the process and where it answers. Killed on drop.
struct Server {
    addr: SocketAddr,
    pid: u32,
    /// The process, unless the local-cluster kit owns it.
    child: Option<Child>,
    /// highlander's node, owned (and killed on drop) by the kit.
    _cluster: Option<LocalCluster>,
    /// Config, zone and run files; removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    fn start(index: usize, health: SocketAddr) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = free_udp_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let path = dir.path();
        let static_zone = zone_file(&format!("app IN A {ADDRESS}"));
        let (child, cluster) = match index {
            0 => {
                let cluster = highlander(health)?;
                (None, Some(cluster))
            }
            1 => {
                std::fs::write(path.join("zone"), static_zone)?;
                std::fs::write(path.join("named.conf"), bind_conf(path, port))?;
                let mut command = Command::new("named");
                command.args(["-g", "-c"]).arg(path.join("named.conf"));
                (Some(spawn(command)?), None)
            }
            2 => {
                std::fs::write(path.join("zone"), static_zone)?;
                std::fs::write(path.join("knot.conf"), knot_conf(path, port))?;
                let mut command = Command::new("knotd");
                command.arg("-c").arg(path.join("knot.conf"));
                (Some(spawn(command)?), None)
            }
            _ => {
                let lua = index == 4;
                let record = if lua {
                    format!("app IN LUA A \"ifurlup('http://{health}/health', {{'{ADDRESS}'}})\"")
                } else {
                    format!("app IN A {ADDRESS}")
                };
                std::fs::write(path.join("zone"), zone_file(&record))?;
                std::fs::write(
                    path.join("named.conf"),
                    format!(
                        "zone \"bench.test\" {{ type native; file \"{}\"; }};\n",
                        path.join("zone").display()
                    ),
                )?;
                std::fs::write(path.join("pdns.conf"), "")?;
                let mut command = Command::new("pdns_server");
                command
                    .arg(format!("--config-dir={}", path.display()))
                    .arg("--launch=bind")
                    .arg(format!(
                        "--bind-config={}",
                        path.join("named.conf").display()
                    ))
                    .arg("--local-address=127.0.0.1")
                    .arg(format!("--local-port={port}"))
                    .arg(format!("--socket-dir={}", path.display()))
                    .args([
                        "--guardian=no",
                        "--daemon=no",
                        "--disable-syslog",
                        "--write-pid=no",
                    ])
                    .args(["--loglevel=3", "--webserver=no"])
                    .arg(format!(
                        "--enable-lua-records={}",
                        if lua { "yes" } else { "no" }
                    ));
                (Some(spawn(command)?), None)
            }
        };
        let (addr, pid) = match (&child, &cluster) {
            (Some(child), _) => (addr, child.id()),
            (None, Some(cluster)) => (
                cluster.dns_addr(1),
                cluster.pid(1).context("highlander node has no pid")?,
            ),
            (None, None) => bail!("no server started"),
        };
        Ok(Server {
            addr,
            pid,
            child,
            _cluster: cluster,
            _dir: dir,
        })
        .and_then(|server| {
            // Every thread it has now; threads it starts later inherit this.
            pin_to_core_0(server.pid)?;
            Ok(server)
        })
    }
}

/// A one-node highlander cluster serving `app` (HTTP-checked at `health`).
fn highlander(health: SocketAddr) -> Result<LocalCluster> {
    // The keys before the first `[[services]]` land in the kit's `[dns]`
    // table: the benchmark is one client prefix, which the default
    // per-prefix rate limit would (rightly) hold back.
    let services = format!(
        "rate_limit = 0\n\n[[services]]\nname = \"app\"\n[services.check]\nkind = \"http\"\npath = \"/health\"\n\n[[services.instances]]\nname = \"app1\"\naddress = \"{health}\"\na = \"{ADDRESS}\"\n"
    );
    let mut spec = ClusterSpec::new(1, ZONE, &services);
    spec.die_with_parent = true;
    let binary = Path::new(env!("CARGO_BIN_EXE_highlander"));
    Ok(LocalCluster::start(binary, spec)?)
}

fn zone_file(record: &str) -> String {
    format!(
        "$ORIGIN {ZONE}\n$TTL 5\n@ IN SOA ns1 hostmaster 1 3600 600 86400 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\n{record}\n"
    )
}

fn bind_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n  recursion no; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\"; }};\ncontrols {{ }};\nzone \"bench.test\" {{ type primary; file \"{d}/zone\"; }};\n"
    )
}

fn knot_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\ndatabase:\n  storage: {d}\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: bench.test\n    storage: {d}\n    file: {d}/zone\n"
    )
}

/// Spawns `command` quietly, killed if this process dies (`PR_SET_PDEATHSIG`;
/// the main thread that spawns it lives until the end).
fn spawn(mut command: Command) -> Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = format!("{:?}", command.get_program());
    command.spawn().with_context(|| format!("spawn {program}"))
}

fn pin_to_core_0(pid: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("run taskset")?;
    if !status.success() {
        bail!("taskset could not pin {pid} to core 0");
    }
    Ok(())
}

fn pin_self_to(core: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it; the
    // call reads `size_of` bytes of it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        bail!(
            "cannot pin the benchmark to core {core}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn free_udp_port() -> Result<u16> {
    // Both protocols free: the servers bind TCP on the same port.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = tcp.local_addr()?.port();
    UdpSocket::bind(("127.0.0.1", port)).context("UDP twin of a free TCP port")?;
    Ok(port)
}

/// utime + stime of `pid`, its threads and its waited-for children, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14-17 of stat(5), counted from the state (field 3) at 0.
    let ticks: u64 = fields
        .get(11..15)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}

/// `QNAME` A with RD clear and no EDNS, as a resolver asks; the generator
/// patches the ID.
fn query_wire() -> Vec<u8> {
    let mut wire = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in QNAME.split('.').filter(|l| !l.is_empty()) {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.extend_from_slice(&[0, 0, 1, 0, 1]);
    wire
}

/// Polls `addr` until it answers NOERROR with an answer record.
fn await_answer(addr: SocketAddr, query: &[u8]) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + START_DEADLINE;
    let mut reply = [0u8; 512];
    while Instant::now() < deadline {
        socket.send_to(query, addr)?;
        if let Ok(n) = socket.recv(&mut reply)
            && n >= 12
            && reply[3] & 0x0f == 0
            && reply[6..8] != [0, 0]
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no NOERROR answer from {addr} within {START_DEADLINE:?}")
}

/// dnsperf's queries per second, from its summary.
fn dnsperf_qps(addr: SocketAddr, queries: &Path, seconds: u64) -> Result<f64> {
    let output = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-q",
            DNSPERF_OUTSTANDING,
            "-c",
            "8",
        ])
        .output()
        .context("run dnsperf")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no qps in dnsperf's output:\n{text}"))
}

/// Our batched generator: [`SOCKETS`] connected sockets, each keeping
/// [`WINDOW`] queries outstanding, answers read and queries sent in batches.
/// A socket that hears nothing for a second assumes its window lost (no
/// loss is expected on loopback) and sends a fresh one. Returns answers per second.
fn batched_qps(addr: SocketAddr, query: &[u8], duration: Duration) -> Result<f64> {
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| -> Result<UdpSocket> {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(addr)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<Result<_>>()?;
    let mut outstanding = [0usize; SOCKETS];
    let mut heard = [Instant::now(); SOCKETS];
    let mut sends: Vec<Vec<u8>> = vec![query.to_vec(); WINDOW];
    let mut receives = vec![[0u8; 512]; WINDOW];
    let mut next_id: u16 = 0;
    let mut answers: u64 = 0;
    let started = Instant::now();
    while started.elapsed() < duration {
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
        let now = Instant::now();
        for (s, socket) in sockets.iter().enumerate() {
            let got = mmsg(socket, &mut receives, false);
            if got > 0 {
                answers += got as u64;
                outstanding[s] = outstanding[s].saturating_sub(got);
                heard[s] = now;
            } else if now.duration_since(heard[s]) > Duration::from_secs(1) {
                outstanding[s] = 0;
                heard[s] = now;
            }
            let room = WINDOW - outstanding[s];
            for send in sends.iter_mut().take(room) {
                send[..2].copy_from_slice(&next_id.to_be_bytes());
                next_id = next_id.wrapping_add(1);
            }
            outstanding[s] += mmsg(socket, &mut sends[..room], true);
        }
    }
    Ok(answers as f64 / started.elapsed().as_secs_f64())
}

/// One `sendmmsg` (or `recvmmsg`) of `buffers` on a connected socket,
/// without blocking; how many datagrams went (or came).
fn mmsg<B: AsMut<[u8]>>(socket: &UdpSocket, buffers: &mut [B], send: bool) -> usize {
    if buffers.is_empty() {
        return 0;
    }
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| {
            let b = b.as_mut();
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            }
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iovec| {
            // SAFETY: mmsghdr is plain old data; all zeroes is valid.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    let fd = socket.as_raw_fd();
    let count = headers.len() as libc::c_uint;
    // SAFETY: every header points at a live iovec over a live buffer of the
    // stated length for the whole call; the socket is connected, so no
    // address is needed; the count is the length of `headers`.
    let done = unsafe {
        if send {
            libc::sendmmsg(fd, headers.as_mut_ptr(), count, libc::MSG_DONTWAIT)
        } else {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                count,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        }
    };
    usize::try_from(done).unwrap_or(0)
}
