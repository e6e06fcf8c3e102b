//! The UDP fast path: answers the hot questions (service names, their
//! `_highlander` TXT, the apex SOA and NS) from responses encoded once per
//! [`ZoneView`], and serves the UDP socket in batches (`recvmmsg`/`sendmmsg`).
//!
//! The templates are made by the real handler ([`super::answer`]) for a
//! canonical query, so a fast answer is the slow path's answer with only
//! what depends on the query patched in: the ID, RD and CD, the question
//! bytes as received (0x20 case) and the DO bit of the OPT. Anything this
//! module does not recognise exactly (another opcode or class, QDCOUNT≠1,
//! EDNS options other than COOKIE and PADDING, an unknown name or type, an
//! answer bigger than the client takes, a lapsed lease) goes to the hickory
//! handler unchanged. It applies the same rate limit, slip and metrics as
//! the handler, and never answers a leased name while the lease is lapsed
//! (S3). It must never panic on a packet: every index is checked.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::{Name, RecordType};
use hickory_server::proto::serialize::binary::BinEncodable;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::rate_limit::Verdict;
use super::{Authority, MAX_UDP_PAYLOAD, PLAIN_UDP_PAYLOAD, Transport, ZoneView};

/// The DNS header length.
const HEADER: usize = 12;
/// Our OPT record's length: we never echo options.
const OPT: usize = 11;
/// EDNS option codes the handler ignores (RFC 7873 COOKIE, RFC 7830
/// PADDING): a query carrying them gets the same answer as one without.
const COOKIE: u16 = 10;
const PADDING: u16 = 12;
/// Datagrams taken from (and answers given to) the kernel per system call.
const BATCH: usize = 32;
/// hickory's own UDP receive buffer; bigger datagrams are cut here either way.
pub(super) const RECV_BUFFER: usize = 4096;

/// The pre-encoded answers of one [`ZoneView`], keyed by the lowercase wire
/// question name followed by the query type.
pub(super) struct FastTable {
    /// The view they were made from, so the loop rebuilds only on change.
    view: Arc<ZoneView>,
    entries: HashMap<Box<[u8]>, Entry>,
}

/// The answers to one (name, type) question.
struct Entry {
    /// For a query without OPT.
    plain: Box<[u8]>,
    /// For a query with an EDNS(0) OPT; DO clear (set per query).
    edns: Box<[u8]>,
    /// The response code, for the metrics.
    rcode: u16,
    /// Answered only while the lease holds.
    leased: bool,
}

/// What the fast path did with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fast {
    /// `out` holds the answer to send.
    Answer,
    /// The rate limit says send nothing.
    Dropped,
    /// Not for the fast path: hand the datagram to the handler.
    Slow,
}

/// The parts of a query the fast path needs, found by [`parse`].
struct Parsed {
    /// Where the question (name, type, class) ends.
    question_end: usize,
    /// The lowercase question name and type, the table's key.
    key: [u8; 257],
    key_len: usize,
    /// The client's UDP payload and DO bit, if it sent an OPT.
    edns: Option<(u16, bool)>,
}

impl FastTable {
    /// Encodes the answers of `view`'s hot names with the real handler.
    pub(super) fn build(view: Arc<ZoneView>) -> FastTable {
        let mut entries = HashMap::new();
        let names: Vec<(Name, bool)> = view
            .hot_names()
            .map(|(name, leased)| (Name::from(name.clone()), leased))
            .collect();
        for (name, leased) in names {
            let Ok(wire) = name.to_bytes() else { continue };
            let types: &[RecordType] = if leased {
                &[
                    RecordType::A,
                    RecordType::AAAA,
                    RecordType::CNAME,
                    RecordType::TXT,
                ]
            } else {
                &[RecordType::SOA, RecordType::NS]
            };
            for &qtype in types {
                let plain = super::answer(
                    Arc::clone(&view),
                    &template_query(&wire, qtype, false),
                    Transport::Udp,
                );
                let edns = super::answer(
                    Arc::clone(&view),
                    &template_query(&wire, qtype, true),
                    Transport::Udp,
                );
                let (Some(plain), Some(edns)) = (plain, edns) else {
                    continue;
                };
                // Only answers of the shape the patching assumes: a whole
                // (not truncated) answer, the question echoed at 12, and
                // our bare OPT last.
                let question = HEADER + wire.len() + 4;
                let shaped = |t: &[u8], opt: bool| {
                    t.len() >= question + if opt { OPT } else { 0 }
                        && t[2] & 0x02 == 0
                        && (!opt || t[t.len() - OPT..t.len() - 6] == [0, 0, 41, 0x04, 0xd0])
                };
                if !shaped(&plain, false) || !shaped(&edns, true) {
                    continue;
                }
                let mut key = wire.clone();
                key.extend_from_slice(&u16::from(qtype).to_be_bytes());
                entries.insert(
                    key.into_boxed_slice(),
                    Entry {
                        rcode: u16::from(plain[3] & 0x0f),
                        plain: plain.into_boxed_slice(),
                        edns: edns.into_boxed_slice(),
                        leased,
                    },
                );
            }
        }
        FastTable { view, entries }
    }

    /// Answers `query` into `out` if it is a hot question: the lease is
    /// checked (for leased names) and the rate limit spent exactly as the
    /// handler would, and the metrics counted.
    pub(super) fn answer(
        &self,
        authority: &Authority,
        query: &[u8],
        source: IpAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Fast {
        let Some(parsed) = parse(query) else {
            return Fast::Slow;
        };
        let Some(entry) = self.entries.get(&parsed.key[..parsed.key_len]) else {
            return Fast::Slow;
        };
        if entry.leased && !authority.lease.holds() {
            return Fast::Slow;
        }
        let (template, limit) = match parsed.edns {
            Some((payload, _)) => (
                &entry.edns,
                payload.clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            ),
            None => (&entry.plain, PLAIN_UDP_PAYLOAD),
        };
        if template.len() > usize::from(limit) {
            return Fast::Slow;
        }
        let verdict = match &authority.limiter {
            Some(limiter) => limiter.check(source, now),
            None => Verdict::Send,
        };
        let question = &query[HEADER..parsed.question_end];
        out.clear();
        match verdict {
            Verdict::Drop => {
                if let Some(metrics) = &authority.metrics {
                    metrics.dns_dropped();
                }
                return Fast::Dropped;
            }
            Verdict::Slip => {
                if let Some(metrics) = &authority.metrics {
                    metrics.dns_slipped();
                }
                // The handler's slip: the answer's header with TC and no
                // records, the question, and the OPT if the client sent one.
                out.extend_from_slice(&template[..HEADER]);
                out[2] |= 0x02;
                out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, u8::from(parsed.edns.is_some())]);
                out.extend_from_slice(question);
                if parsed.edns.is_some() {
                    out.extend_from_slice(&template[template.len() - OPT..]);
                }
            }
            Verdict::Send => {
                if let Some(metrics) = &authority.metrics {
                    metrics.dns_query(entry.rcode);
                }
                out.extend_from_slice(template);
                out[HEADER..parsed.question_end].copy_from_slice(question);
            }
        }
        // ID, RD and CD come from the query (RFC 1035 §4.1.1, RFC 4035 §3.2.2);
        // DO is copied (RFC 3225).
        out[..2].copy_from_slice(&query[..2]);
        out[2] = (out[2] & !0x01) | (query[2] & 0x01);
        out[3] = (out[3] & !0x10) | (query[3] & 0x10);
        if let Some((_, true)) = parsed.edns {
            let flags = out.len() - 4;
            out[flags] |= 0x80;
        }
        Fast::Answer
    }
}

/// A canonical query for a template: ID 0, no flags, and an OPT advertising
/// our own payload when `edns`.
fn template_query(name: &[u8], qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut query = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
    query.extend_from_slice(name);
    query.extend_from_slice(&u16::from(qtype).to_be_bytes());
    query.extend_from_slice(&[0, 1]);
    if edns {
        let payload = MAX_UDP_PAYLOAD.to_be_bytes();
        query.extend_from_slice(&[0, 0, 41, payload[0], payload[1], 0, 0, 0, 0, 0, 0]);
    }
    query
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Recognises the one shape of query the fast path answers: a plain QUERY
/// with only RD/CD set, one IN question with an uncompressed name, and at
/// most an EDNS(0) OPT carrying only options the handler ignores, with
/// nothing after it. `None` for anything else.
fn parse(query: &[u8]) -> Option<Parsed> {
    // QR, opcode, AA, TC; then RA, Z, AD and RCODE must all be clear.
    if query.len() < HEADER || query[2] & 0xfe != 0 || query[3] & 0xef != 0 {
        return None;
    }
    let arcount = match query.get(4..12)? {
        [0, 1, 0, 0, 0, 0, 0, ar @ (0 | 1)] => *ar,
        _ => return None,
    };
    let mut key = [0u8; 257];
    let mut at = HEADER;
    loop {
        let len = usize::from(*query.get(at)?);
        if len > 63 || at - HEADER + len + 1 > 255 {
            return None;
        }
        let label = query.get(at..=at + len)?;
        for (k, b) in key[at - HEADER..].iter_mut().zip(label) {
            *k = b.to_ascii_lowercase();
        }
        at += len + 1;
        if len == 0 {
            break;
        }
    }
    let name_len = at - HEADER;
    // TYPE then CLASS IN.
    key[name_len..name_len + 2].copy_from_slice(query.get(at..at + 2)?);
    if be16(query, at + 2)? != 1 {
        return None;
    }
    let question_end = at + 4;
    let edns = if arcount == 1 {
        // Root owner, type OPT, payload, extended RCODE 0, version 0, only DO.
        let opt = query.get(question_end..question_end + OPT)?;
        if opt[..3] != [0, 0, 41] || opt[5..7] != [0, 0] || opt[7] & 0x7f != 0 || opt[8] != 0 {
            return None;
        }
        let rdlen = usize::from(be16(opt, 9)?);
        let options = query.get(question_end + OPT..)?;
        if options.len() != rdlen {
            return None;
        }
        let mut rest = options;
        while !rest.is_empty() {
            let code = be16(rest, 0)?;
            let len = usize::from(be16(rest, 2)?);
            let ignorable = match code {
                // A client cookie, or client and server cookies (RFC 7873 §4).
                COOKIE => len == 8 || (16..=40).contains(&len),
                PADDING => true,
                _ => false,
            };
            if !ignorable {
                return None;
            }
            rest = rest.get(4 + len..)?;
        }
        Some((be16(opt, 3)?, opt[7] & 0x80 != 0))
    } else {
        if query.len() != question_end {
            return None;
        }
        None
    };
    Some(Parsed {
        question_end,
        key,
        key_len: name_len + 2,
        edns,
    })
}

/// Serves `socket` until `cancel`: batches of datagrams are read with
/// `recvmmsg`, hot questions answered from the [`FastTable`] and sent with
/// `sendmmsg`, and the rest answered by the handler in a task each (as
/// hickory's server does). Returns only if the socket fails.
pub(super) async fn serve_udp(
    socket: UdpSocket,
    authority: Authority,
    cancel: CancellationToken,
) -> io::Result<()> {
    let socket = Arc::new(socket);
    let mut zone = authority.zone.clone();
    let mut table = FastTable::build(Arc::clone(&zone.borrow_and_update()));
    let mut batch = Batch::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            ready = socket.readable() => ready?,
        }
        let received = match socket.try_io(Interest::READABLE, || batch.receive(&socket)) {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            // ICMP errors of earlier sends surface here; they are not ours.
            Err(error) if transient(&error) => continue,
            Err(error) => return Err(error),
        };
        if zone.has_changed().unwrap_or(false) {
            let view = Arc::clone(&zone.borrow_and_update());
            if !Arc::ptr_eq(&view, &table.view) {
                table = FastTable::build(view);
            }
        }
        let now = Instant::now();
        let mut answers = 0;
        for i in 0..received {
            let Some(source) = batch.source(i) else {
                continue;
            };
            let (query, out) = batch.query_and_answer(i);
            match table.answer(&authority, query, source.ip(), now, out) {
                Fast::Answer => {
                    batch.keep(answers, i);
                    answers += 1;
                }
                Fast::Dropped => {}
                Fast::Slow => {
                    let message = query.to_vec();
                    let authority = authority.clone();
                    let socket = Arc::clone(&socket);
                    tokio::spawn(async move {
                        let wire = authority.answer_raw(message, source, Protocol::Udp).await;
                        if let Some(wire) = wire
                            && let Err(error) = socket.send_to(&wire, source).await
                        {
                            debug!(%error, %source, "sending a DNS response failed");
                        }
                    });
                }
            }
        }
        let mut sent = 0;
        while sent < answers {
            socket.writable().await?;
            match socket.try_io(Interest::WRITABLE, || batch.send(&socket, sent, answers)) {
                Ok(n) => sent += n.max(1),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    // This datagram's alone (say, an unreachable source):
                    // skip it, as the handler's send would.
                    debug!(%error, "sending a DNS response failed");
                    sent += 1;
                }
            }
        }
    }
}

/// Errors a UDP socket reports for one earlier datagram, not for itself.
fn transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EINTR)
    )
}

/// The buffers of one `recvmmsg`/`sendmmsg` round, allocated once.
struct Batch {
    queries: Vec<[u8; RECV_BUFFER]>,
    lengths: [usize; BATCH],
    sources: Vec<libc::sockaddr_storage>,
    source_lengths: [libc::socklen_t; BATCH],
    answers: Vec<Vec<u8>>,
    /// For each answer to send, the datagram it answers.
    order: [usize; BATCH],
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
        let empty: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        Batch {
            queries: vec![[0; RECV_BUFFER]; BATCH],
            lengths: [0; BATCH],
            sources: vec![empty; BATCH],
            source_lengths: [0; BATCH],
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            order: [0; BATCH],
        }
    }

    /// Reads up to [`BATCH`] datagrams without blocking; how many.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = self
            .queries
            .iter_mut()
            .map(|buffer| libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            })
            .collect();
        let full = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(self.sources.iter_mut())
            .map(|(iovec, source)| message_header(iovec, source, full))
            .collect();
        // SAFETY: every header points at a live iovec over a buffer of the
        // length it states and at a sockaddr_storage, all owned by `self` or
        // this frame and not otherwise borrowed during the call; the count
        // is the length of `headers`.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
        for (i, header) in headers.iter().take(received).enumerate() {
            self.lengths[i] = (header.msg_len as usize).min(RECV_BUFFER);
            self.source_lengths[i] = header.msg_hdr.msg_namelen;
        }
        Ok(received)
    }

    /// Where datagram `i` came from; `None` for an address family we do not serve.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        let storage = &self.sources[i];
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for AF_INET, and
                // sockaddr_storage is large and aligned enough for it.
                let v4 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for AF_INET6 and sockaddr_in6.
                let v6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(v6.sin6_addr.s6_addr),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    fn query_and_answer(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
        (&self.queries[i][..self.lengths[i]], &mut self.answers[i])
    }

    /// Marks datagram `i`'s answer as the `n`th to send.
    fn keep(&mut self, n: usize, i: usize) {
        self.order[n] = i;
    }

    /// Sends answers `from..to` without blocking; how many went.
    fn send(&mut self, socket: &UdpSocket, from: usize, to: usize) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = self.order[from..to]
            .iter()
            .map(|&i| libc::iovec {
                iov_base: self.answers[i].as_mut_ptr().cast(),
                iov_len: self.answers[i].len(),
            })
            .collect();
        let sources = self.sources.as_mut_ptr();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(&self.order[from..to])
            // `wrapping_add` stays in bounds: `i` < BATCH, the length of `sources`.
            .map(|(iovec, &i)| {
                message_header(iovec, sources.wrapping_add(i), self.source_lengths[i])
            })
            .collect();
        // SAFETY: every header points at a live iovec over an answer buffer
        // of the stated length and at the source address the kernel filled
        // in, all owned by `self` or this frame for the whole call; the count
        // is the length of `headers`.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }
}

/// One `mmsghdr` for a single buffer and peer address; the pointers must
/// outlive the system call that uses it.
fn message_header(
    iovec: &mut libc::iovec,
    peer: *mut libc::sockaddr_storage,
    peer_len: libc::socklen_t,
) -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data; all zeroes is valid.
    let mut header: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    header.msg_hdr.msg_name = peer.cast();
    header.msg_hdr.msg_namelen = peer_len;
    header.msg_hdr.msg_iov = iovec;
    header.msg_hdr.msg_iovlen = 1;
    header
}
