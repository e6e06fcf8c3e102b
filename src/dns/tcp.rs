//! DNS over TCP (RFC 7766, 2-byte length framing) with the limits hickory's
//! listener lacks: at most `tcp_max_connections` open at once, and at most
//! `tcp_max_connections_per_source` of them from one client prefix (the
//! rate limit's prefixes), so one source cannot hold every slot and shut
//! out the TCP retries that truncated UDP answers depend on; and every
//! connection closed when it has not delivered its next complete query
//! within `tcp_timeout`, idle and slow (partial frame) alike, or does not
//! take its answer within that time.
//!
//! A connection over either cap is accepted and closed at once, rather than
//! left waiting in the kernel's backlog: the client learns straight away
//! and can try another nameserver, and the accept loop never spins on a
//! full descriptor table (hickory's did, at ~94% of a core). Queries on one
//! connection are answered one at a time, in order, like hickory's, so one
//! client cannot make us work on many queries at once.
//!
//! Every message goes through [`Authority::answer_raw`], the same parsing
//! and handler as UDP, so the bytes are what hickory's listener sent. This
//! module must never answer anything itself.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::rate_limit::{ClientPrefixes, PrefixKey};
use super::{Authority, DnsError, Limits};

/// How long accepting pauses when the process or system is out of file
/// descriptors or memory: long enough not to spin, short enough that
/// clients barely notice once some are free again.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// Accepts DNS TCP connections on `listener` until `cancel`; open
/// connections are closed (EOF) when it returns.
pub(super) async fn serve(
    listener: TcpListener,
    authority: Authority,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    let open = Arc::new(Semaphore::new(
        usize::try_from(limits.tcp_max_connections).unwrap_or(usize::MAX),
    ));
    let per_source = PerSource::new(limits.prefixes(), limits.tcp_max_connections_per_source);
    // Owns every connection task: dropping it (on return) closes them all.
    let mut connections = JoinSet::new();
    // Whether running out of descriptors has been logged since the last
    // successful accept: one warning per episode, not one per retry.
    let mut exhausted = false;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_exhaustion(&error) => {
                if !exhausted {
                    warn!(%error, "DNS TCP cannot accept: out of file descriptors or memory; pausing accepts");
                    exhausted = true;
                }
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(EXHAUSTED_PAUSE) => continue,
                }
            }
            Err(error) if is_fatal(&error) => {
                let addr = listener
                    .local_addr()
                    .map_or_else(|_| "?".to_owned(), |addr| addr.to_string());
                return Err(DnsError::Tcp {
                    addr,
                    source: error,
                });
            }
            // One connection's trouble (reset before we accepted it, …).
            Err(error) => {
                debug!(%error, "accepting a DNS TCP connection failed");
                continue;
            }
        };
        exhausted = false;
        // The source's own cap first, so a source at it takes no global slot.
        let Some(source_slot) = per_source.open(peer) else {
            debug!(%peer, max = limits.tcp_max_connections_per_source, "closing a DNS TCP connection: too many open from its prefix");
            if let Some(metrics) = &authority.metrics {
                metrics.dns_tcp_refused();
            }
            drop(stream);
            continue;
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            debug!(%peer, max = limits.tcp_max_connections, "closing a DNS TCP connection: too many open");
            if let Some(metrics) = &authority.metrics {
                metrics.dns_tcp_refused();
            }
            drop(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            authority.clone(),
            limits.tcp_timeout,
            (permit, source_slot),
        ));
    }
}

/// Serves one connection until the client closes it, breaks the framing or
/// runs out of time. Errors are this connection's alone: logged, then closed.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    authority: Authority,
    timeout: Duration,
    // Held for as long as the connection is open: its global and its
    // prefix's slot.
    _slots: (OwnedSemaphorePermit, SourceSlot),
) {
    loop {
        // Partial bytes do not extend the deadline: a slow sender gets the
        // same time for its whole query as an idle one gets to start it.
        let query = match tokio::time::timeout(timeout, read_frame(&mut stream)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                debug!(%peer, %error, "DNS TCP connection failed while reading");
                return;
            }
            Err(_) => {
                debug!(%peer, ?timeout, "closing a DNS TCP connection: no complete query in time");
                return;
            }
        };
        // A zero-length frame is no message at all (hickory resets here too).
        if query.is_empty() {
            debug!(%peer, "closing a DNS TCP connection: zero-length frame");
            return;
        }
        let Some(answer) = authority.answer_raw(query, peer, Protocol::Tcp).await else {
            continue;
        };
        // The encoder stops at 65535 bytes, so this always fits.
        let Ok(length) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(timeout, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(%peer, %error, "DNS TCP connection failed while writing");
                return;
            }
            Err(_) => {
                debug!(%peer, ?timeout, "closing a DNS TCP connection: the client does not read");
                return;
            }
        }
    }
}

/// Open connections per client prefix, capped at `max` each.
struct PerSource {
    /// How peers are grouped into clients (the rate limit's prefixes).
    prefixes: ClientPrefixes,
    /// `dns.tcp_max_connections_per_source`.
    max: u32,
    /// Prefixes with at least one connection open, and how many; an entry
    /// goes when its last connection closes, so at most one per connection.
    open: Arc<Mutex<HashMap<PrefixKey, u32>>>,
}

impl PerSource {
    fn new(prefixes: ClientPrefixes, max: u32) -> PerSource {
        PerSource {
            prefixes,
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `peer`'s prefix, held until
    /// dropped; `None` when the prefix already has `max` open.
    fn open(&self, peer: SocketAddr) -> Option<SourceSlot> {
        let key = self.prefixes.key(peer.ip());
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.get(&key).copied().unwrap_or(0);
        if count >= self.max {
            return None;
        }
        open.insert(key, count + 1);
        Some(SourceSlot {
            key,
            open: Arc::clone(&self.open),
        })
    }
}

/// One open connection's place in its prefix's count; given back on drop.
struct SourceSlot {
    /// The prefix whose count this holds one of.
    key: PrefixKey,
    /// [`PerSource`]'s counts, shared with it.
    open: Arc<Mutex<HashMap<PrefixKey, u32>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Reads one length-prefixed message; `None` when the client closed the
/// connection between messages.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0; 2];
    if stream.read(&mut length[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut length[1..]).await?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Out of descriptors or memory: it passes once connections close.
fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The listener itself is broken: no later accept can succeed.
fn is_fatal(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    #[test]
    fn a_prefix_gets_its_cap_of_connections_and_its_slots_back_as_they_close() {
        let per_source = PerSource::new(ClientPrefixes::default(), 2);
        let first = per_source.open(peer("192.0.2.1:1000"));
        let second = per_source.open(peer("192.0.2.200:1001"));
        assert!(first.is_some() && second.is_some());
        // Same /24, any port or host: over the cap.
        assert!(per_source.open(peer("192.0.2.7:1002")).is_none());
        assert!(per_source.open(peer("[::ffff:192.0.2.9]:1003")).is_none());
        // Another prefix is not affected.
        let other = per_source.open(peer("192.0.3.1:1000"));
        assert!(other.is_some());
        drop(first);
        assert!(per_source.open(peer("192.0.2.7:1004")).is_some());
        drop((second, other));
        let open = per_source.open.lock().expect("not poisoned");
        assert!(open.is_empty(), "closed prefixes are forgotten: {open:?}");
    }

    #[test]
    fn the_per_source_cap_groups_sources_by_the_configured_prefixes() {
        let hosts = ClientPrefixes { ipv4: 32, ipv6: 64 };
        let per_source = PerSource::new(hosts, 1);
        let _held = per_source.open(peer("192.0.2.1:1000")).expect("a slot");
        assert!(per_source.open(peer("192.0.2.2:1000")).is_some());
        let _v6 = per_source
            .open(peer("[2001:db8:0:1::1]:53"))
            .expect("a slot");
        assert!(per_source.open(peer("[2001:db8:0:1::2]:53")).is_none());
        assert!(per_source.open(peer("[2001:db8:0:2::1]:53")).is_some());
    }
}
