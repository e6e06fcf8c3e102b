//! The real probers: http, tcp and exec, each bounded by the check's timeout.
//!
//! A prober never returns an error: whatever goes wrong (refused, reset, bad
//! status, timeout, a program that cannot start) is a failed [`ProbeReport`]
//! whose detail says what a person would want to see in the status page.

use std::error::Error as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, lookup_host};
use tokio::process::Command;
use tokio::time::{Instant, Sleep};

use super::{HealthError, Probe, ProbeReport};
use crate::config::{CheckKind, InstanceConfig, ServiceConfig, StatusMatcher};

/// How much of an HTTP body is searched for `body_contains`. Health endpoints
/// are small; an instance that streams megabytes must not cost us megabytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of an exec check's stdout and stderr is kept (each). Only the
/// last line reaches the detail; the rest is drained so the program never
/// blocks on a full pipe.
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024;

/// What every HTTP check calls itself.
const USER_AGENT: &str = concat!("highlander/", env!("CARGO_PKG_VERSION"));

/// How much of a response head a plain HTTP check reads before giving up
/// on finding its end.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a plain HTTP check's buffer starts with, and grows by: a health
/// endpoint's request or response head fits.
const HEAD_CAPACITY: usize = 512;

/// The longest detail line taken from a program's output.
const MAX_DETAIL_CHARS: usize = 200;

/// Builds the real prober for `service`'s check.
///
/// HTTP checks get their own client here; [`super::Checker::new`] shares one
/// client among all services instead.
pub fn prober(service: &ServiceConfig) -> Result<Arc<dyn Probe>, HealthError> {
    build(service, &mut None)
}

/// Builds the prober for `service`, reusing (or creating and keeping) the
/// shared HTTP client in `client`.
pub(super) fn build(
    service: &ServiceConfig,
    client: &mut Option<reqwest::Client>,
) -> Result<Arc<dyn Probe>, HealthError> {
    let timeout = service.check.timeout;
    Ok(match &service.check.kind {
        CheckKind::Http {
            https,
            path,
            host,
            expect_status,
            body_contains,
        } => {
            let client = match client {
                Some(c) => c.clone(),
                None => {
                    let c = http_client().map_err(|source| HealthError::HttpClient {
                        service: service.name.clone(),
                        source,
                    })?;
                    client.insert(c).clone()
                }
            };
            Arc::new(HttpProbe {
                client,
                scheme: if *https { "https" } else { "http" },
                path: path.clone(),
                host: host.clone(),
                expect_status: expect_status.clone(),
                body_contains: body_contains.clone(),
                timeout,
            })
        }
        CheckKind::Tcp => Arc::new(TcpProbe { timeout }),
        CheckKind::Exec { command } => {
            if command.first().is_none_or(|p| p.is_empty()) {
                return Err(HealthError::EmptyCommand {
                    service: service.name.clone(),
                });
            }
            Arc::new(ExecProbe {
                service: service.name.clone(),
                command: command.clone(),
                timeout,
            })
        }
    })
}

/// The HTTP client every http check shares.
fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_rustls_tls()
        // A health check must open a fresh connection like a real client
        // would: a kept-alive connection can stay up while the instance no
        // longer accepts new ones.
        .pool_max_idle_per_host(0)
        // The instance itself must answer; a redirect is judged as its status.
        .redirect(reqwest::redirect::Policy::none())
        // HTTP_PROXY in the environment must not route checks elsewhere.
        .no_proxy()
        .user_agent(USER_AGENT)
        .build()
}

/// GET `scheme://address/path`: healthy on an accepted status whose body
/// contains `body_contains` (if set).
///
/// `host` overrides the Host header only. With https the TLS name (SNI and
/// certificate check) is still the host part of `address`, so an instance
/// probed by IP address needs a certificate valid for that address.
struct HttpProbe {
    client: reqwest::Client,
    scheme: &'static str,
    path: String,
    host: Option<String>,
    expect_status: StatusMatcher,
    body_contains: Option<String>,
    timeout: Duration,
}

impl HttpProbe {
    async fn check(&self, instance: &InstanceConfig) -> Result<String, String> {
        if self.plain_request_fits(instance) {
            return self.check_plain(instance).await;
        }
        let url = format!("{}://{}{}", self.scheme, instance.address, self.path);
        let mut request = self.client.get(&url);
        if let Some(host) = &self.host {
            request = request.header(reqwest::header::HOST, host);
        }
        let mut response = request.send().await.map_err(|e| describe_http_error(&e))?;
        let status = response.status().as_u16();
        if !self.expect_status.accepts(status) {
            return Err(format!("HTTP {status} (expected {})", self.expect_status));
        }
        let Some(needle) = &self.body_contains else {
            return Ok(format!("HTTP {status}"));
        };
        let needle = needle.as_bytes();
        let mut body = Vec::new();
        while body.len() < MAX_BODY_BYTES {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| format!("HTTP {status}, reading body: {}", describe_http_error(&e)))?;
            let Some(chunk) = chunk else { break };
            let room = MAX_BODY_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            // Stop as soon as it is found: no need to read the rest.
            if contains(&body, needle) {
                return Ok(format!("HTTP {status}, body matched"));
            }
        }
        Err(format!(
            "HTTP {status} but the body does not contain {:?}{}",
            String::from_utf8_lossy(needle),
            if body.len() >= MAX_BODY_BYTES {
                format!(" (searched the first {} KiB)", MAX_BODY_BYTES / 1024)
            } else {
                String::new()
            }
        ))
    }
}

/// The common check, `http` judged by its status alone, does not need an
/// HTTP client: one request written on a fresh connection and the status
/// line of the answer, once its head is complete. At 10,000 checks a second
/// the client's machinery (URL parsing, a connection pool that holds
/// nothing, a task per connection) cost more CPU than the check itself, so
/// this path skips it. HTTPS, a body to search, or a path or Host header
/// that would need encoding still go through the client.
impl HttpProbe {
    fn plain_request_fits(&self, instance: &InstanceConfig) -> bool {
        let plain = |text: &str| text.bytes().all(|b| b.is_ascii_graphic());
        self.scheme == "http"
            && self.body_contains.is_none()
            && plain(&self.path)
            && plain(self.host.as_deref().unwrap_or(&instance.address))
    }

    async fn check_plain(&self, instance: &InstanceConfig) -> Result<String, String> {
        // Reset once the status is read, as HAProxy's HTTP checks end: the
        // answer is in, and neither side keeps a TIME_WAIT entry.
        let (connection, _) = connect_for_check(&instance.address).await?;
        let host = self.host.as_deref().unwrap_or(&instance.address);
        // One buffer for the request and then the response head: a probe
        // allocates as little as it can (10,000 of them a second).
        let mut buffer = Vec::with_capacity(HEAD_CAPACITY);
        for part in [
            "GET ",
            self.path.as_str(),
            " HTTP/1.1\r\nhost: ",
            host,
            "\r\nuser-agent: ",
            USER_AGENT,
            "\r\naccept: */*\r\nconnection: close\r\n\r\n",
        ] {
            buffer.extend_from_slice(part.as_bytes());
        }
        let (mut stream, head) = match connection {
            Connection::Ready(socket) => match exchange_near(socket, buffer).await? {
                Exchange::Answered(status) => return self.judge(status),
                Exchange::Waiting(stream, head) => (stream, head),
            },
            Connection::Waited(mut stream) => {
                let head = send_rest(&mut stream, buffer, 0).await?;
                (stream, head)
            }
        };
        let status = read_status(&mut stream, head).await?;
        self.judge(status)
    }

    /// The verdict on a plain check's answer.
    fn judge(&self, status: u16) -> Result<String, String> {
        if !self.expect_status.accepts(status) {
            return Err(format!("HTTP {status} (expected {})", self.expect_status));
        }
        Ok(format!("HTTP {status}"))
    }
}

/// How far [`exchange_near`] got.
enum Exchange {
    /// The answer's status: no wait on the reactor was needed.
    Answered(u16),
    /// The request is sent; the answer is awaited on `.0`, with the part
    /// of its head already read in `.1`.
    Waiting(TcpStream, Vec<u8>),
}

/// Sends `request` on a connection that was up by the time `connect`
/// returned, which means an instance on this host, and reads what answer
/// is already in.
///
/// It takes two turns (see [`next_turn`]): the checker starts a slot's
/// probes in lockstep, so every probe of the slot connects, then every one
/// sends its request, then every one looks for its answer. The requests go
/// out back to back, and the instance's server, woken by the first, is
/// still awake for the next: a wake-up from idle, paid for by the sender
/// on a virtual machine, was 6 % of a node's CPU at 10,000 probes a
/// second. And by the time a check looks for its answer, that is mostly
/// in: read at once, with no reactor registration, wake-up or removal.
async fn exchange_near(socket: Socket, mut buffer: Vec<u8>) -> Result<Exchange, String> {
    next_turn().await;
    let sent = match socket.send(&buffer) {
        Ok(sent) => sent,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(describe_io_error(&e)),
    };
    let sent_all = sent == buffer.len();
    if sent_all {
        next_turn().await;
        buffer.clear();
        if let Some(status) = status_now(&socket, &mut buffer)? {
            return Ok(Exchange::Answered(status));
        }
    }
    let mut stream = TcpStream::from_std(socket.into()).map_err(|e| describe_io_error(&e))?;
    if !sent_all {
        buffer = send_rest(&mut stream, buffer, sent).await?;
    }
    Ok(Exchange::Waiting(stream, buffer))
}

/// Writes what of `request` is not sent yet (from `sent` on), and returns
/// its buffer emptied, for the answer's head.
async fn send_rest(
    stream: &mut TcpStream,
    mut request: Vec<u8>,
    sent: usize,
) -> Result<Vec<u8>, String> {
    stream
        .write_all(request.get(sent..).unwrap_or_default())
        .await
        .map_err(|e| describe_io_error(&e))?;
    request.clear();
    Ok(request)
}

/// Reads response heads from `stream` into `head` (which may hold the
/// start of one already) until a final one, and returns its status.
async fn read_status(stream: &mut TcpStream, mut head: Vec<u8>) -> Result<u16, String> {
    loop {
        if let Some(status) = final_status(&mut head)? {
            return Ok(status);
        }
        // Straight into the head's spare room: no buffer of its own in the
        // probe's future, which stays small enough for the allocator's
        // fast path.
        make_room(&mut head);
        match stream.read_buf(&mut head).await {
            Ok(0) => return Err(closed_early(&head)),
            Ok(_) => {}
            Err(e) => return Err(describe_io_error(&e)),
        }
    }
}

/// What [`read_status`] returns, if the head of a final answer is in
/// already; read from `socket` without waiting. `None` when the rest must
/// be waited for, with what did come kept in `head`.
fn status_now(socket: &Socket, head: &mut Vec<u8>) -> Result<Option<u16>, String> {
    use std::io::Read as _;
    loop {
        if let Some(status) = final_status(head)? {
            return Ok(Some(status));
        }
        make_room(head);
        let filled = head.len();
        head.resize(head.capacity(), 0);
        let read = (&*socket).read(&mut head[filled..]);
        head.truncate(filled + read.as_ref().map_or(0, |n| *n));
        match read {
            Ok(0) => return Err(closed_early(head)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(describe_io_error(&e)),
        }
    }
}

/// The status of the final answer in `head`, if its head is complete:
/// 1xx interim answers before it are dropped from `head` and skipped, as a
/// client does. An error once `head` is [`MAX_HEAD_BYTES`] long with no
/// end in it.
fn final_status(head: &mut Vec<u8>) -> Result<Option<u16>, String> {
    loop {
        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if head.len() >= MAX_HEAD_BYTES {
                return Err(format!(
                    "no end of the response head in its first {} KiB",
                    MAX_HEAD_BYTES / 1024
                ));
            }
            return Ok(None);
        };
        let status = status_of(&head[..end])?;
        if (100..200).contains(&status) && status != 101 {
            head.drain(..end + 4);
            continue;
        }
        return Ok(Some(status));
    }
}

/// Room for the next read of a response head, within [`MAX_HEAD_BYTES`].
fn make_room(head: &mut Vec<u8>) {
    head.reserve(HEAD_CAPACITY.min(MAX_HEAD_BYTES.saturating_sub(head.len())));
}

/// Why a response ended before its head did.
fn closed_early(head: &[u8]) -> String {
    if head.is_empty() {
        "connection closed without a response".to_owned()
    } else {
        "connection closed in the middle of the response head".to_owned()
    }
}

/// Waits for the probe's next turn: ready at its second poll, having asked
/// for that poll at its first.
///
/// The checker polls the probes it starts in one slot in lockstep, a turn
/// each (see `Driver::start_due`), so a probe that waits here lets every
/// other probe of its slot take its step first. Anywhere else it is a plain
/// yield.
pub(super) fn next_turn() -> NextTurn {
    NextTurn { taken: false }
}

/// Made by [`next_turn`].
pub(super) struct NextTurn {
    taken: bool,
}

impl Future for NextTurn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.taken {
            return Poll::Ready(());
        }
        self.taken = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The status code of a response head (`HTTP/1.x NNN reason`).
fn status_of(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let not_http = || {
        format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(40)])
        )
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(not_http)?;
    match rest {
        [b'0' | b'1', b' ', a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            Ok(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => Err(not_http()),
    }
}

impl Probe for HttpProbe {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        bounded(self.timeout, self.check(instance)).boxed()
    }

    fn bounded(&self) -> bool {
        true
    }
}

/// Healthy when a TCP connection opens. Host names are resolved on every
/// probe, so a moved instance is followed.
///
/// As HAProxy's TCP check does, the connection is reset as soon as the
/// instance's SYN-ACK arrives, before the last ACK of the handshake is
/// sent (see [`connect_for_check`]): the kernel answering is what the check
/// asks (something listens), so the instance's application never accepts a
/// connection it would only see closed, neither side keeps a TIME_WAIT
/// entry, and each probe costs three packets instead of seven. At 10,000
/// instances a second that is most of a TCP check's cost.
struct TcpProbe {
    timeout: Duration,
}

impl TcpProbe {
    async fn check(&self, address: &str) -> Result<String, String> {
        // Dropped at once: the reset described above.
        let (_connection, addr) = connect_for_check(address).await?;
        Ok(format!("connected to {addr}"))
    }
}

impl Probe for TcpProbe {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        bounded(self.timeout, self.check(&instance.address)).boxed()
    }

    fn bounded(&self) -> bool {
        true
    }
}

/// A check's connection, made by [`connect_for_check`]. Closing it, by
/// dropping it, sends RST.
enum Connection {
    /// Up by the time `connect` returned, as on loopback, where the whole
    /// handshake runs within the system call: not registered with the
    /// runtime's reactor, which a TCP check then never needs.
    Ready(Socket),
    /// Up after waiting on the reactor.
    Waited(TcpStream),
}

/// Connects to `address` (resolved on every call, each address tried in
/// turn) on a socket made for a check: closing it sends RST, with no FIN
/// exchange and no TIME_WAIT entry on either side, as HAProxy's checks
/// close; and the handshake's last ACK is held back, to ride on the first
/// data sent or, if none is, to be overtaken by that RST, so that a TCP
/// check's connection never reaches the instance's accept queue.
///
/// As HAProxy does, it asks again at once whether the connection is up
/// before waiting for it: on loopback it always is, and a TCP check then
/// takes six system calls instead of eight, with no reactor registration,
/// wake-up or removal.
async fn connect_for_check(address: &str) -> Result<(Connection, SocketAddr), String> {
    let mut last = None;
    for addr in lookup_host(address)
        .await
        .map_err(|e| describe_io_error(&e))?
    {
        match connect_resetting(addr).await {
            Ok(connection) => return Ok((connection, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || format!("{address} resolves to no address"),
        |e| describe_io_error(&e),
    ))
}

/// One connection attempt for [`connect_for_check`].
async fn connect_resetting(addr: SocketAddr) -> std::io::Result<Connection> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_linger(Some(Duration::ZERO))?;
    // Only an optimisation (the kernel delays the ACK for up to 200 ms): if
    // it cannot be set, the check is still right.
    let _ = setsockopt(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_QUICKACK,
        &0 as &libc::c_int,
    );
    let target = SockAddr::from(addr);
    if connected(socket.connect(&target))? || connected(socket.connect(&target))? {
        return Ok(Connection::Ready(socket));
    }
    let stream = TcpStream::from_std(socket.into())?;
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(Connection::Waited(stream)),
    }
}

/// What a non-blocking `connect` said: connected (`true`), still
/// connecting (`false`), or why it failed.
fn connected(result: std::io::Result<()>) -> std::io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::EISCONN) => Ok(true),
            Some(libc::EINPROGRESS | libc::EALREADY) => Ok(false),
            _ => Err(e),
        },
    }
}

/// `setsockopt(2)` with a typed value.
fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `value` points to a live `T` of `len` bytes for the length of
    // the call, and `fd` is an open socket its owner keeps open meanwhile.
    let rc = unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs a program (argv, no shell) with placeholders substituted; healthy on
/// exit 0. Killed at the timeout.
///
/// The program runs in its own process group, which is killed when the probe
/// ends, so nothing it started outlives it. The verdict waits for stdout and
/// stderr to close as well as for the exit, so a program that leaves a
/// background process holding them open is judged at the timeout.
struct ExecProbe {
    service: String,
    command: Vec<String>,
    timeout: Duration,
}

impl ExecProbe {
    async fn check(&self, instance: &InstanceConfig) -> Result<String, String> {
        let argv: Vec<String> = self
            .command
            .iter()
            .map(|arg| substitute(arg, &self.service, instance))
            .collect();
        run_program(&argv, &[], self.timeout).await
    }
}

/// Runs `argv` (no shell) with `env` added to its environment, and waits for
/// it within `timeout`: `Ok` on exit 0, `Err` otherwise; either way a detail
/// made of the exit status and the last line of its output. Shared by exec
/// checks and exec hooks.
///
/// The program runs in its own process group, which is killed when this
/// returns (or its future is dropped), so nothing it started outlives it.
/// The verdict waits for stdout and stderr to close as well as for the
/// exit, so a program that leaves a background process holding them open
/// is judged at the timeout. Output beyond [`MAX_OUTPUT_BYTES`] is drained
/// and dropped, so the program never blocks on a full pipe.
pub async fn run_program(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".to_owned());
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the caller is dropped (the checker's own timeout, shutdown, a
        // hook run stopped on leadership loss), the program must not
        // outlive it.
        .kill_on_drop(true);
    // Its own process group, so that what it starts (a shell's children)
    // can be killed with it.
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {}", describe_io_error(&e)))?;
    // Declared after `child`, so dropped before it: the group is killed
    // while the child's pid (the group id) is still reserved.
    let group = ProcessGroup::of(&child);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (status, out, err) = tokio::join!(child.wait(), tail(stdout), tail(stderr));
        (status, out, err)
    };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            drop(group);
            // Reap it now rather than leaving it to kill_on_drop, so the
            // program is gone when this returns.
            let _ = child.kill().await;
            return Err(format!(
                "timed out after {}, killed",
                humantime::format_duration(timeout)
            ));
        }
    };
    // Whatever it left running in its group goes now: a check that runs
    // every second must not accumulate processes.
    drop(group);
    let status = status.map_err(|e| format!("cannot wait for {program:?}: {e}"))?;
    let mut detail = describe_exit(status);
    if let Some(line) = last_line(&err).or_else(|| last_line(&out)) {
        detail.push_str(": ");
        detail.push_str(&line);
    }
    if status.success() {
        Ok(detail)
    } else {
        Err(detail)
    }
}

impl Probe for ExecProbe {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        // The exec check reports its own timeout (with the kill), so the outer
        // bound only catches what cannot happen: a wait that outlives the kill.
        bounded(self.timeout + Duration::from_secs(1), self.check(instance)).boxed()
    }
}

/// Kills an exec check's process group when dropped, however the probe ends
/// (finished, timed out, or the probe future dropped by the checker).
///
/// The group id is the child's pid. It is killed before the child is reaped
/// on the timeout and drop paths, so it cannot name another process's group;
/// after a normal exit the window between reaping and this kill is a few
/// instructions, far shorter than the kernel takes to reuse a pid.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        // Never 0 or 1: kill(0) and kill(-1) would signal our own group or
        // every process we may signal.
        ProcessGroup(
            child
                .id()
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|&pid| pid > 1),
        )
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) takes plain integers and touches no memory of
            // ours; a negative pid names the process group `pgid`, which the
            // child leads (process_group(0) at spawn). ESRCH (already empty)
            // is the common, harmless outcome.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `check` within `timeout`, timing it, and turns its outcome into a report.
fn bounded<F>(timeout: Duration, check: F) -> Bounded<F>
where
    F: Future<Output = Result<String, String>>,
{
    let started = Instant::now();
    Bounded {
        check,
        started,
        timeout,
        deadline: LazyDeadline::new(started + timeout),
    }
}

pin_project_lite::pin_project! {
    /// A check bounded by a timeout, made by [`bounded`].
    ///
    /// Unlike `tokio::time::timeout`, its timer is a [`LazyDeadline`]. It
    /// also stores the check once, where an `async fn` wrapper kept its
    /// argument beside the timeout holding the same future, which took an
    /// HTTP check's future past the allocator's fast path.
    struct Bounded<F> {
        #[pin]
        check: F,
        started: Instant,
        timeout: Duration,
        deadline: LazyDeadline,
    }
}

impl<F> Future for Bounded<F>
where
    F: Future<Output = Result<String, String>>,
{
    type Output = ProbeReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ProbeReport> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.check.poll(cx) {
            let took = this.started.elapsed();
            return Poll::Ready(match outcome {
                Ok(detail) => ProbeReport::ok(detail, took),
                Err(detail) => ProbeReport::failed(detail, took),
            });
        }
        match this.deadline.poll_elapsed(cx) {
            Poll::Ready(()) => Poll::Ready(ProbeReport::timed_out(*this.timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A deadline whose timer is made only when something first waits on it.
/// A TCP check on a nearby instance is done within its first poll and
/// never does; at 10,000 of them a second a timer each is work for
/// nothing.
pub(super) struct LazyDeadline {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyDeadline {
    pub(super) fn new(at: Instant) -> Self {
        LazyDeadline { at, sleep: None }
    }

    /// Ready once the deadline has passed; until then, `cx` is woken at it.
    pub(super) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
    }
}

/// Substitutes `{service}`, `{instance}`, `{address}`, `{host}` and `{port}` in
/// `arg`, in one pass so that a substituted value is never substituted again.
/// Unknown `{…}` are kept as written.
pub fn substitute(arg: &str, service: &str, instance: &InstanceConfig) -> String {
    let (host, port) = split_host_port(&instance.address);
    substitute_fields(
        arg,
        &[
            ("service", service),
            ("instance", instance.name.as_str()),
            ("address", instance.address.as_str()),
            ("host", host),
            ("port", port),
        ],
    )
}

/// Replaces each `{name}` in `arg` with its value from `fields`, in one pass
/// so that a substituted value is never substituted again. Unknown `{…}`
/// are kept as written.
pub fn substitute_fields(arg: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let value = fields.iter().find(|(name, _)| {
            after
                .strip_prefix('{')
                .and_then(|a| a.strip_prefix(name))
                .is_some_and(|a| a.starts_with('}'))
        });
        match value {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `host:port` or `[v6]:port` to `(host, port)`, with the IPv6 brackets removed
/// because a program given `{host}` expects an address, not URL syntax.
fn split_host_port(address: &str) -> (&str, &str) {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            (host, port)
        }
        None => (address, ""),
    }
}

/// Reads `reader` to the end, keeping only the last [`MAX_OUTPUT_BYTES`].
async fn tail(reader: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_OUTPUT_BYTES {
                    kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
                }
            }
        }
    }
    kept
}

/// The last non-empty line of `output`, trimmed and shortened for a detail.
fn last_line(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(if line.chars().count() > MAX_DETAIL_CHARS {
        let mut short: String = line.chars().take(MAX_DETAIL_CHARS).collect();
        short.push('…');
        short
    } else {
        line.to_owned()
    })
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The few words that matter from an I/O error: "connection refused", not
/// "Connection refused (os error 111)".
fn describe_io_error(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::ConnectionAborted => "connection aborted".into(),
        ErrorKind::NotFound => "not found".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::TimedOut => "timed out".into(),
        _ => error.to_string(),
    }
}

/// reqwest's own message ("error sending request for url …") says nothing;
/// the innermost cause does.
pub(crate) fn describe_http_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    let mut innermost = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return describe_io_error(io);
        }
        innermost = Some(e);
        source = e.source();
    }
    match innermost {
        Some(e) => e.to_string(),
        None => error.to_string(),
    }
}
