//! A delay fault: the kernel here has no `tc netem`, so a userspace proxy
//! inside one member's namespace holds every chunk of data for a fixed time
//! each way. An nftables table of its own (`ip fault_delay_<port>`, apart
//! from the `inet fault` table that [`crate::net::Sandbox::heal`] flushes)
//! redirects the member's new connections to the peers into the proxy, and
//! resets those that were open before, so their owners reconnect through it.
//! The proxy's own upstream connections carry a socket mark the rules skip.
//!
//! It must never touch traffic other than the member's outgoing TCP
//! connections to the given peers and port, and never outlive its [`Delay`]:
//! dropping it removes the table first, then ends every proxied connection.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::net::in_netns;

/// The socket mark of the proxy's upstream connections: the redirect and
/// reset rules skip packets that carry it, or the proxy would loop into
/// itself. No other rule in the sandbox uses marks.
const MARK: u32 = 0x6864_6c79;

/// How long the proxy waits for a peer to accept an upstream connection:
/// the nodes' own connect timeout (src/cluster/transport.rs). The node's
/// connect to the proxy succeeds at once, so without this a cut peer would
/// hold the proxied connection open far longer than a direct one.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// Chunks in flight per direction before the reader waits: enough for
/// Raft's traffic at any delay the suite uses, while a runaway sender
/// still meets backpressure instead of growing memory.
const IN_FLIGHT: usize = 1024;

/// Delays every TCP connection that processes in namespace `ns` open to
/// `peers` on `port` by `delay` each way (data is forwarded in order, each
/// chunk held `delay` after it was read), until dropped.
///
/// Such connections that are already open when it starts are reset on
/// their next packet, so their owners reconnect through the delay. The
/// TCP handshake itself is not delayed, and connections peers open to
/// `ns` are untouched: to delay both directions of a link, start one in
/// each namespace.
pub struct Delay {
    /// The namespace the table lives in; drop deletes the table there.
    ns: String,
    /// The name of this delay's own nftables table (family `ip`).
    table: String,
    /// Bytes written onward, both directions; shared with every relay.
    forwarded: Arc<AtomicU64>,
    /// The accept loop. It owns the relays in a `JoinSet`, so aborting it
    /// on drop ends every proxied connection too.
    proxy: JoinHandle<()>,
}

impl Delay {
    /// Starts the proxy in `ns` and then the rules that send `peers:port`
    /// traffic through it.
    pub async fn start(ns: &str, peers: &[Ipv4Addr], port: u16, delay: Duration) -> Result<Delay> {
        if peers.is_empty() {
            bail!("a delay in {ns} needs at least one peer address");
        }
        // On 127.0.0.1 only: a redirect in the output hook rewrites the
        // destination to the loopback address, and nothing outside the
        // namespace should reach the proxy.
        let listener = in_netns(ns, || {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        let listener = TcpListener::from_std(listener)
            .with_context(|| format!("cannot register the delay proxy of {ns}"))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("the delay proxy of {ns} has no address"))?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let table = format!("fault_delay_{}", local.port());
        // Built before the rules, so a failure below still stops the proxy.
        let fault = Delay {
            ns: ns.to_owned(),
            table: table.clone(),
            forwarded: forwarded.clone(),
            proxy: tokio::spawn(accept_loop(
                listener,
                local,
                ns.to_owned(),
                delay,
                forwarded,
            )),
        };
        let set = peers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // -100 is nat's usual place ahead of filter at 0 (nft 1.0.6 takes
        // no `dstnat` name in the output hook). A redirected connection's
        // destination is 127.0.0.1 by the time filter sees it, so the
        // reject rule catches only connections opened before this table:
        // those conntrack already followed, which nat never sees again.
        // Those it did not follow yet are picked up mid-stream, redirected,
        // and answered with a reset by the loopback stack (no socket there).
        nft(
            ns,
            &format!(
                "add table ip {table}\n\
                 add chain ip {table} steer {{ type nat hook output priority -100; policy accept; }}\n\
                 add rule ip {table} steer meta mark != {MARK:#x} ip daddr {{ {set} }} tcp dport {port} redirect to :{}\n\
                 add chain ip {table} stale {{ type filter hook output priority 0; policy accept; }}\n\
                 add rule ip {table} stale meta mark != {MARK:#x} ip daddr {{ {set} }} tcp dport {port} reject with tcp reset",
                local.port()
            ),
        )?;
        Ok(fault)
    }

    /// Bytes forwarded so far (both directions): proof the fault bit.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        // The table goes first: were the proxy gone while the redirect
        // stayed, new connections would be refused. Established proxied
        // connections keep their nat mapping until the abort closes them.
        // The namespace may already be gone with the sandbox, and the
        // table with it.
        let _ = nft(&self.ns, &format!("delete table ip {}", self.table));
        self.proxy.abort();
    }
}

/// Accepts redirected connections and relays each in a task of its own
/// until aborted. A failed connection never ends the loop.
async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    ns: String,
    delay: Duration,
    forwarded: Arc<AtomicU64>,
) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    relays.spawn(relay(client, local, ns.clone(), delay, forwarded.clone()));
                }
                Err(error) => {
                    // Out of descriptors or the like: pause rather than spin.
                    eprintln!("delay proxy in {ns}: cannot accept: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reaps finished relays so the set does not grow over a scenario.
            Some(_) = relays.join_next() => {}
        }
    }
}

/// Connects `client` to where it was going and pumps both ways with the
/// delay. Failures are what faults cause, so they are not reported: the
/// client sees its connection reset, as it would without the proxy.
async fn relay(
    mut client: TcpStream,
    local: SocketAddr,
    ns: String,
    delay: Duration,
    forwarded: Arc<AtomicU64>,
) {
    let mut upstream = match connect_upstream(&client, local, ns).await {
        Ok(upstream) => upstream,
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let outcome = tokio::try_join!(
        pump(client_read, upstream_write, delay, &forwarded),
        pump(upstream_read, client_write, delay, &forwarded),
    );
    if outcome.is_err() {
        // An error on either side resets both, so neither end waits on a
        // connection that can no longer carry its data.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Opens the connection `client` was redirected from, inside `ns`, marked
/// so the rules let it through.
async fn connect_upstream(client: &TcpStream, local: SocketAddr, ns: String) -> Result<TcpStream> {
    let target = original_destination(client).context("no original destination")?;
    if SocketAddr::V4(target) == local {
        // Reached directly, not through the redirect: relaying would loop.
        bail!("connected to the proxy itself");
    }
    let socket = in_netns(&ns, || {
        let socket = TcpSocket::new_v4()?;
        set_mark(&socket)?;
        Ok(socket)
    })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target.into()))
        .await
        .with_context(|| format!("{target} did not answer"))?
        .with_context(|| format!("cannot connect to {target}"))?;
    Ok(stream)
}

/// What the data of one direction turns into, in the order read, each held
/// until its stamp plus the delay.
enum Segment {
    Data(Vec<u8>),
    /// The sender closed its side: half-close onward.
    Fin,
    /// Reading failed: the connection ends with a reset, after the data
    /// read before it.
    Reset(std::io::Error),
}

/// One direction: a reader stamps each chunk as it arrives, a writer sends
/// it on once it is `delay` old. Ends when the FIN went through, or with
/// the first error.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
    forwarded: &AtomicU64,
) -> std::io::Result<()> {
    let (sender, mut receiver) = mpsc::channel::<(Instant, Segment)>(IN_FLIGHT);
    let read = async move {
        let mut buffer = vec![0; CHUNK];
        loop {
            let segment = match from.read(&mut buffer).await {
                Ok(0) => Segment::Fin,
                Ok(n) => Segment::Data(buffer[..n].to_vec()),
                Err(error) => Segment::Reset(error),
            };
            let last = !matches!(segment, Segment::Data(_));
            // A closed channel means the writer failed, and try_join is
            // already tearing the connection down.
            if sender.send((Instant::now(), segment)).await.is_err() || last {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((read_at, segment)) = receiver.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            match segment {
                Segment::Data(data) => {
                    to.write_all(&data).await?;
                    forwarded.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Segment::Fin => return to.shutdown().await,
                Segment::Reset(error) => return Err(error),
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Where a redirected connection was headed before nat rewrote it.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let mut address = libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    let mut length = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the fd is open while `stream` is borrowed; `address` and
    // `length` are valid for writes, and `length` says how much fits.
    let status = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut address).cast(),
            &raw mut length,
        )
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
        u16::from_be(address.sin_port),
    ))
}

/// Marks `socket`'s packets with [`MARK`] (needs CAP_NET_ADMIN, which the
/// suite has as root).
fn set_mark(socket: &TcpSocket) -> std::io::Result<()> {
    let mark = MARK;
    // SAFETY: the fd is open while `socket` is borrowed; the value is a
    // u32 that lives across the call, and its size is passed with it.
    let status = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Applies an nftables script inside namespace `ns` (net.rs has its own,
/// private to the sandbox).
fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(script.as_bytes())
            .context("cannot feed nft")?;
    }
    let output = child.wait_with_output().context("cannot run nft")?;
    if !output.status.success() {
        bail!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
