//! The authoritative DNS server every node runs for the configured zone.
//!
//! It answers only from a [`ZoneView`], an immutable snapshot of the config
//! and the applied replicated state that the node rebuilds after every apply
//! and hands over through a `watch` channel. A query clones the current
//! `Arc<ZoneView>` out of the channel and never holds the borrow across an
//! await, so publishing a new view never waits on queries.
//!
//! UDP is served by `dns::fast`: batched `recvmmsg`/`sendmmsg`, the hot
//! questions answered from responses the handler encoded once per view, and
//! everything else parsed by hickory and answered by the handler (FORMERR
//! for undecodable packets, as hickory's own server does). TCP is served by
//! our own listener (`dns::tcp`) because hickory's caps neither connections
//! nor partial frames. All reach the one handler's policy, so a message gets
//! the same bytes back whichever way it goes (a test compares them). This module owns every policy decision: AA, EDNS echo and
//! BADVERS, negative SOA, ANY, opcodes, classes, UDP truncation (hickory's
//! own truncation sizes are wrong, see `notes/hickory-server-0.26.md`) and
//! the abuse limits of [`Limits`]. It never recurses, never chases CNAMEs
//! out of the zone and never installs a log subscriber.
//!
//! Served through [`serve_with_metrics`], it counts each answer by response
//! code, and each response the rate limit dropped or truncated and each TCP
//! connection refused: one atomic add per event, the only thing it does
//! with metrics. A limited response is counted as limited, not by its code.
//!
//! Choices where the RFCs leave room:
//! - ANY is answered minimally (RFC 8482 §4.2), over UDP and TCP alike: the
//!   SOA at the apex, the one RRset of the name elsewhere. A real RRset
//!   rather than the synthesized HINFO "RFC8482": it is as small, tells a
//!   person running `dig ANY` something true, and needs no special record
//!   that a cache would keep. Never the whole apex (SOA, every NS and their
//!   glue), the amplification ANY is known for.
//! - Answer owner names are lowercase; the question is echoed as received,
//!   so 0x20 case randomisation still works.
//! - A class other than IN is REFUSED, like an out-of-zone name: we hold no
//!   data in any other class. AXFR/IXFR are REFUSED too (transfers are not
//!   offered: every node answers from the replicated state).

mod fast;
pub mod publish;
mod rate_limit;
mod tcp;
mod zone;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{CNAME, NS};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{DnsConfig, IpPrefix};
use crate::metrics::Metrics;
use rate_limit::{ClientPrefixes, RateLimiter, Verdict};
use zone::Lookup;
pub use zone::ZoneView;

/// The UDP payload size we advertise and the most we ever send over UDP:
/// the DNS Flag Day 2020 value, which avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The UDP size limit for a client that sent no OPT (RFC 1035 §4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// Why the DNS server stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP socket at `addr` failed in a way that is not one datagram's
    /// fault (for example it was closed underneath the server).
    #[error("the DNS UDP socket on {addr} stopped: {source}")]
    Udp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener at `addr` can no longer accept connections.
    #[error("the DNS TCP listener on {addr} stopped: {source}")]
    Tcp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the server allows one client before it stops answering it: the
/// `[dns]` abuse limits, so a flood from one place cannot starve the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// UDP responses per second per client prefix; 0 turns the limit off.
    pub rate_limit: u32,
    /// Every this-many-th limited response is sent truncated; 0 never.
    pub rate_limit_slip: u32,
    /// Sources the UDP rate limit never applies to.
    pub rate_limit_exempt: Vec<IpPrefix>,
    /// Leading bits of an IPv4 source that make one client, for the rate
    /// limit and the per-source TCP cap.
    pub rate_limit_ipv4_prefix: u8,
    /// The same for IPv6 sources.
    pub rate_limit_ipv6_prefix: u8,
    /// How long a TCP connection may take to deliver its next complete
    /// query, or to read an answer.
    pub tcp_timeout: Duration,
    /// TCP connections open at once; more are closed on accept.
    pub tcp_max_connections: u32,
    /// TCP connections open at once from one client prefix; more from it
    /// are closed on accept.
    pub tcp_max_connections_per_source: u32,
}

impl Limits {
    /// How sources are grouped into clients.
    fn prefixes(&self) -> ClientPrefixes {
        ClientPrefixes {
            ipv4: self.rate_limit_ipv4_prefix,
            ipv6: self.rate_limit_ipv6_prefix,
        }
    }
}

impl From<&DnsConfig> for Limits {
    fn from(dns: &DnsConfig) -> Limits {
        Limits {
            rate_limit: dns.rate_limit,
            rate_limit_slip: dns.rate_limit_slip,
            rate_limit_exempt: dns.rate_limit_exempt.clone(),
            rate_limit_ipv4_prefix: dns.rate_limit_ipv4_prefix,
            rate_limit_ipv6_prefix: dns.rate_limit_ipv6_prefix,
            tcp_timeout: dns.tcp_timeout,
            tcp_max_connections: dns.tcp_max_connections,
            tcp_max_connections_per_source: dns.tcp_max_connections_per_source,
        }
    }
}

impl Default for Limits {
    /// The limits of a `[dns]` table that sets none of them.
    fn default() -> Limits {
        use crate::config as c;
        Limits {
            rate_limit: c::DEFAULT_RATE_LIMIT,
            rate_limit_slip: c::DEFAULT_RATE_LIMIT_SLIP,
            rate_limit_exempt: c::DEFAULT_RATE_LIMIT_EXEMPT.to_vec(),
            rate_limit_ipv4_prefix: c::DEFAULT_RATE_LIMIT_IPV4_PREFIX,
            rate_limit_ipv6_prefix: c::DEFAULT_RATE_LIMIT_IPV6_PREFIX,
            tcp_timeout: c::DEFAULT_TCP_TIMEOUT,
            tcp_max_connections: c::DEFAULT_TCP_MAX_CONNECTIONS,
            tcp_max_connections_per_source: c::DEFAULT_TCP_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Serves DNS on an already-bound UDP socket and TCP listener until `cancel`
/// is cancelled.
///
/// Reads the current view from `zone` on each query, so a new [`ZoneView`]
/// sent on the channel is answered from the next query on.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<ZoneView>>,
    lease: Lease,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    serve_counted(udp, tcp, zone, lease, limits, None, cancel).await
}

/// [`serve`], counting every answered query in `metrics` by response code,
/// and every rate-limited response and refused TCP connection. Messages
/// rejected before they reach the handler (undecodable ones, answered
/// FORMERR) are not counted.
pub async fn serve_with_metrics(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<ZoneView>>,
    lease: Lease,
    limits: Limits,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    serve_counted(udp, tcp, zone, lease, limits, Some(metrics), cancel).await
}

async fn serve_counted(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<ZoneView>>,
    lease: Lease,
    limits: Limits,
    metrics: Option<Metrics>,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    let authority = Authority {
        zone,
        lease,
        limiter: RateLimiter::new(limits.rate_limit, limits.rate_limit_slip, Instant::now()).map(
            |limiter| {
                Arc::new(
                    limiter
                        .grouped_by(limits.prefixes())
                        .exempting(&limits.rate_limit_exempt),
                )
            },
        ),
        metrics,
    };
    let addr = udp
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let udp = fast::serve_udp(udp, authority.clone(), cancel.clone());
    let tcp = tcp::serve(tcp, authority, limits, cancel.clone());
    // Both return Ok once `cancel` is cancelled, and early only if their
    // socket failed; the first failure stops the server.
    tokio::select! {
        result = udp => result.map_err(|source| DnsError::Udp { addr, source }),
        result = tcp => result,
    }
}

/// The request handler: all answering policy lives here. One clone serves
/// UDP (inside [`fast::serve_udp`], for what the fast path leaves) and one
/// TCP (inside [`tcp::serve`]).
#[derive(Clone)]
struct Authority {
    /// The latest view; the node holds the sender and replaces it on apply.
    zone: watch::Receiver<Arc<ZoneView>>,
    /// Whether service names may be answered, checked on every query.
    lease: Lease,
    /// The UDP response budgets of client prefixes; `None` when limiting is
    /// off. Shared by both clones (only UDP uses it).
    limiter: Option<Arc<RateLimiter>>,
    /// Where answered queries are counted, if anywhere.
    metrics: Option<Metrics>,
}

/// Until when this node may answer service names (S3). The node renews it
/// from the cluster's lease; the server checks it on every query, so a node
/// that was paused or cut off stops answering the moment its lease ends,
/// not at the next renewal.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Instants are stored as milliseconds after `base`.
    base: tokio::time::Instant,
    /// 0: not held; `u64::MAX`: held for ever (serving stale on purpose).
    until: Arc<std::sync::atomic::AtomicU64>,
}

impl Lease {
    /// A lease that is not held until renewed.
    pub fn new() -> Lease {
        Lease {
            base: tokio::time::Instant::now(),
            until: Arc::default(),
        }
    }

    /// A lease that always holds (`dns.on_minority = "stale"`).
    pub fn forever() -> Lease {
        let lease = Lease::new();
        lease
            .until
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        lease
    }

    /// Holds the lease until `deadline`, or drops it (`None`).
    pub fn renew(&self, deadline: Option<tokio::time::Instant>) {
        if self.until.load(std::sync::atomic::Ordering::Relaxed) == u64::MAX {
            return;
        }
        let until = deadline.map_or(0, |d| {
            u64::try_from(d.saturating_duration_since(self.base).as_millis())
                .unwrap_or(u64::MAX - 1)
                .max(1)
        });
        self.until
            .store(until, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the lease holds now.
    pub fn holds(&self) -> bool {
        let until = self.until.load(std::sync::atomic::Ordering::Relaxed);
        until == u64::MAX
            || (until > 0
                && u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX) < until)
    }
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

/// What to send: the response code, whether it is authoritative and which
/// records go in which section.
struct Reply<'a> {
    code: ResponseCode,
    authoritative: bool,
    answers: &'a [Record],
    authorities: &'a [Record],
    additionals: &'a [Record],
}

impl<'a> Reply<'a> {
    /// A non-authoritative error with no records.
    fn error(code: ResponseCode) -> Self {
        Reply {
            code,
            authoritative: false,
            answers: &[],
            authorities: &[],
            additionals: &[],
        }
    }

    /// The reply for a successful zone lookup.
    fn from_lookup(lookup: Lookup<'a>, zone: &'a ZoneView) -> Self {
        let negative = std::slice::from_ref(zone.negative_soa());
        let authoritative = |code, authorities| Reply {
            code,
            authoritative: true,
            answers: &[],
            authorities,
            additionals: &[],
        };
        match lookup {
            Lookup::Answer {
                answers,
                additionals,
            } => Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                answers,
                authorities: &[],
                additionals,
            },
            Lookup::NoData => authoritative(ResponseCode::NoError, negative),
            Lookup::NxDomain => authoritative(ResponseCode::NXDomain, negative),
            Lookup::ServFail => Reply::error(ResponseCode::ServFail),
            Lookup::Refused => Reply::error(ResponseCode::Refused),
        }
    }
}

impl Authority {
    /// Decides the reply to `request` from `zone`, before any size limits.
    fn reply<'a>(request: &Request, zone: &'a ZoneView, lease_holds: bool) -> Reply<'a> {
        // RFC 6891 §6.1.3: a version we do not speak is answered BADVERS
        // before anything else is looked at.
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Reply::error(ResponseCode::BADVERS);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Reply::error(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        let lookup = zone.lookup_leased(query.name(), query.query_type(), lease_holds);
        if lookup == Lookup::Refused {
            return Reply::error(ResponseCode::Refused);
        }
        match query.query_type() {
            // Not real types: a question for them is malformed.
            RecordType::ZERO | RecordType::OPT => Reply::error(ResponseCode::FormErr),
            RecordType::AXFR | RecordType::IXFR => Reply::error(ResponseCode::Refused),
            // TKEY, TSIG, MAILB, MAILA: meta-types we do not implement.
            RecordType::TSIG | RecordType::Unknown(249 | 253 | 254) => {
                Reply::error(ResponseCode::NotImp)
            }
            _ => Reply::from_lookup(lookup, zone),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Authority {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Clone the snapshot out so the watch borrow ends before any await.
        let zone = Arc::clone(&self.zone.borrow());
        let reply = Authority::reply(request, &zone, self.lease.holds());

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;

        // Echo an OPT only to clients that sent one (RFC 6891 §7), always
        // advertising our own limit, with DO copied (RFC 3225).
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(MAX_UDP_PAYLOAD);
            ours.set_dnssec_ok(theirs.flags().dnssec_ok);
            ours
        });
        // Any question count but one is FORMERR, sent without the questions:
        // they tell the client nothing, and echoing thousands of bytes of them
        // could not fit a UDP answer (hickory would then log an ERROR and send
        // a bare SERVFAIL for every such packet).
        let no_questions;
        let questions = match request.queries.len() {
            1 => &request.queries,
            _ => match no_questions_section() {
                Some(none) => {
                    no_questions = none;
                    &no_questions
                }
                None => &request.queries,
            },
        };
        let builder = || {
            let mut builder = MessageResponseBuilder::new(questions, None);
            if let Some(edns) = &edns {
                builder.edns(edns);
            }
            builder
        };

        // Only UDP is limited: a TCP client has proven its address, and the
        // connection cap bounds what it can take.
        let limited = match (&self.limiter, request.protocol()) {
            (Some(limiter), Protocol::Udp) => limiter.check(request.src().ip(), Instant::now()),
            _ => Verdict::Send,
        };
        match limited {
            Verdict::Send => {
                if let Some(metrics) = &self.metrics {
                    metrics.dns_query(u16::from(reply.code));
                }
            }
            Verdict::Drop => {
                if let Some(metrics) = &self.metrics {
                    metrics.dns_dropped();
                }
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            // The same TC answer as an oversize one: no bigger than the query.
            Verdict::Slip => {
                if let Some(metrics) = &self.metrics {
                    metrics.dns_slipped();
                }
                metadata.truncation = true;
                return send(&mut response_handle, builder().build_no_records(metadata)).await;
            }
        }

        // hickory truncates against our advertised size, not the client's,
        // and leaves garbage behind when it does (notes §2, bugs A and B):
        // encode once here, and if the answer does not fit what this client
        // can take, send TC with no records so it retries over TCP. Most
        // answers are a few records whose size bound already fits, so only
        // big ones pay for the extra encoding.
        if request.protocol() == Protocol::Udp {
            let limit = match &request.edns {
                Some(theirs) => theirs
                    .max_payload()
                    .clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
                None => PLAIN_UDP_PAYLOAD,
            };
            let bound = HEADER_LEN
                + questions.as_bytes().len()
                + edns.as_ref().map_or(0, |_| OPT_LEN)
                + [reply.answers, reply.authorities, reply.additionals]
                    .into_iter()
                    .flatten()
                    .map(wire_bound)
                    .sum::<usize>();
            if bound > usize::from(limit) && too_big_for_udp(&builder, metadata, &reply, limit) {
                metadata.truncation = true;
                return send(&mut response_handle, builder().build_no_records(metadata)).await;
            }
        }
        let response = builder().build(
            metadata,
            reply.answers,
            reply.authorities,
            [],
            reply.additionals,
        );
        send(&mut response_handle, response).await
    }
}

/// Whether `reply` encodes to more than `limit` bytes.
fn too_big_for_udp<'q>(
    builder: &impl Fn() -> MessageResponseBuilder<'q>,
    metadata: Metadata,
    reply: &Reply<'_>,
    limit: u16,
) -> bool {
    let mut wire = Vec::with_capacity(usize::from(limit));
    let encoded = builder()
        .build(
            metadata,
            reply.answers,
            reply.authorities,
            [],
            reply.additionals,
        )
        .destructive_emit(&mut BinEncoder::new(&mut wire));
    match encoded {
        Ok(_) => wire.len() > usize::from(limit),
        // Nothing we hold is too big to encode; if it ever is,
        // TC sends the client to TCP instead of failing here.
        Err(error) => {
            debug!(%error, "encoding the UDP response failed; sending TC");
            true
        }
    }
}

/// The DNS header: ID, flags and four counts.
const HEADER_LEN: usize = 12;

/// Our OPT record: root owner, type, class, TTL, RDLENGTH 0 (we echo no options).
const OPT_LEN: usize = 11;

/// An upper bound on the wire size of `record` without name compression.
/// Types we never serve count as too big, so they always get encoded.
fn wire_bound(record: &Record) -> usize {
    // Name::len counts one byte per label plus the label bytes; the wire form
    // adds the root label.
    let name = |name: &Name| name.len() + 1;
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(CNAME(target)) | RData::NS(NS(target)) => name(target),
        RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len() + 1).sum(),
        _ => usize::from(u16::MAX),
    };
    // TYPE, CLASS, TTL and RDLENGTH take 10 bytes.
    name(&record.name) + 10 + rdata
}

impl Authority {
    /// Answers one raw message from `source` as hickory's server does around
    /// the handler: under 12 bytes or a response (QR=1) gets nothing, an
    /// undecodable one FORMERR with the header only, and the rest go to
    /// [`RequestHandler::handle_request`]. Returns the wire bytes to send, if any.
    async fn answer_raw(
        &self,
        message: Vec<u8>,
        source: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        let header = Header::read(&mut BinDecoder::new(&message)).ok()?;
        let mut captured = Captured {
            protocol,
            wire: Arc::default(),
        };
        // hickory echoes the question as received; a compression pointer in
        // it can only point into the header, which in the answer holds other
        // bytes, so the echo would be undecodable.
        let request = if question_name_is_compressed(&message) {
            Err("the question's name uses a compression pointer".to_owned())
        } else {
            Request::from_bytes(message, source, protocol).map_err(|error| error.to_string())
        };
        match request {
            // Answering a response would make us a reflector.
            Ok(request) if request.metadata.message_type == MessageType::Response => return None,
            Ok(request) => {
                self.handle_request::<_, TokioTime>(&request, captured.clone())
                    .await;
            }
            Err(error) => {
                debug!(%error, %source, "undecodable DNS message; answering FORMERR");
                let no_questions = no_questions_section()?;
                let response = MessageResponseBuilder::new(&no_questions, None)
                    .error_msg(&header.metadata, ResponseCode::FormErr);
                captured.send_response(response).await.ok()?;
            }
        }
        captured
            .wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Whether the first question's name contains a compression pointer. In a
/// query the question comes first, so such a pointer can only point back
/// into the header (or loop): a malformed query. Anything too short to
/// tell is left to the decoder.
fn question_name_is_compressed(message: &[u8]) -> bool {
    if message.get(4..6).is_none_or(|count| count == [0, 0]) {
        return false;
    }
    let mut at = 12;
    while let Some(&len) = message.get(at) {
        match len {
            0 => return false,
            len if len & 0xC0 != 0 => return true,
            len => at += 1 + usize::from(len),
        }
    }
    false
}

/// An empty question section, for answers that must not echo the query's.
/// hickory only builds one by decoding; decoding nothing cannot fail.
fn no_questions_section() -> Option<Queries> {
    Queries::read(&mut BinDecoder::new(&[]), 0).ok()
}

/// The transport a raw message came over, for [`answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Held to the client's UDP payload size (truncated with TC above it).
    Udp,
    /// Up to 64 KiB, never truncated.
    Tcp,
}

/// Answers one raw DNS message against `view` exactly as a node's server
/// would over `transport`: parsing, FORMERR for undecodable messages, every
/// answering policy, truncation and encoding; the lease held and no rate
/// limit. `None` when the server would send nothing. Without sockets, so it
/// serves the fuzz target and tests that compare bytes. Over UDP this is the
/// handler alone, whose bytes the fast path must reproduce; [`UdpAnswerer`]
/// runs the fast path first, as the server does.
pub fn answer(view: Arc<ZoneView>, message: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let (_sender, zone) = watch::channel(view);
    let authority = Authority {
        zone,
        lease: Lease::forever(),
        limiter: None,
        metrics: None,
    };
    let protocol = match transport {
        Transport::Udp => Protocol::Udp,
        Transport::Tcp => Protocol::Tcp,
    };
    let source = SocketAddr::from(([192, 0, 2, 1], 5353));
    // Nothing in the handler waits on I/O or timers (`Captured` stores the
    // answer at once), so any executor will do; no runtime needed.
    futures::executor::block_on(authority.answer_raw(message.to_vec(), source, protocol))
}

/// A node's UDP answering without a socket, exactly as the UDP loop
/// (`dns::fast`) composes it: the fast path first, then the handler for whatever the
/// fast path declines. The lease and the rate limit are fixed when it is
/// made, and every message comes from one source (192.0.2.1). It also
/// answers with the handler alone, so the fuzz target and tests can check
/// that both paths agree on what the fast path answers.
pub struct UdpAnswerer {
    /// The pre-encoded answers of the view.
    table: fast::FastTable,
    /// What answers the datagrams, fast path and handler alike.
    authority: Authority,
    /// The same handler with a rate limit of its own, for
    /// [`UdpAnswerer::handler_answer`], so asking it spends nothing of
    /// `authority`'s and both reach the same verdicts.
    handler: Authority,
}

/// What the UDP path did with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpAnswer {
    /// The fast path answered, with these bytes.
    Fast(Vec<u8>),
    /// The fast path spent the rate limit and sends nothing.
    FastDropped,
    /// The fast path declined; the handler's answer, if it sends one.
    Handler(Option<Vec<u8>>),
}

/// The rate limit a [`UdpAnswerer`] answers under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpBudget {
    /// No rate limit.
    Unlimited,
    /// The source is over its budget for good, with a slip of 1: every
    /// answer goes out truncated, with no records.
    Spent,
}

impl UdpAnswerer {
    /// Where every message comes from.
    const SOURCE: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        5353,
    );

    /// The UDP path over `view`, answering service names only while `lease`
    /// holds, under `budget`.
    pub fn new(view: Arc<ZoneView>, lease: Lease, budget: UdpBudget) -> UdpAnswerer {
        let now = Instant::now();
        let authority = || {
            let limiter = match budget {
                UdpBudget::Unlimited => None,
                // Frozen time: the two limiters cannot drift apart. The one
                // response of the budget is spent here.
                UdpBudget::Spent => RateLimiter::frozen(1, 1, now).map(|limiter| {
                    limiter.check(UdpAnswerer::SOURCE.ip(), now);
                    Arc::new(limiter)
                }),
            };
            let (_sender, zone) = watch::channel(Arc::clone(&view));
            Authority {
                zone,
                lease: lease.clone(),
                limiter,
                metrics: None,
            }
        };
        UdpAnswerer {
            table: fast::FastTable::build(Arc::clone(&view)),
            authority: authority(),
            handler: authority(),
        }
    }

    /// What the UDP server does with `datagram` (cut to the receive buffer
    /// as the socket would): answered by the fast path, dropped by it, or
    /// handed to the handler.
    pub fn answer(&self, datagram: &[u8]) -> UdpAnswer {
        let datagram = &datagram[..datagram.len().min(fast::RECV_BUFFER)];
        let mut out = Vec::new();
        let source = UdpAnswerer::SOURCE;
        match self.table.answer(
            &self.authority,
            datagram,
            source.ip(),
            Instant::now(),
            &mut out,
        ) {
            fast::Fast::Answer => UdpAnswer::Fast(out),
            fast::Fast::Dropped => UdpAnswer::FastDropped,
            fast::Fast::Slow => UdpAnswer::Handler(futures::executor::block_on(
                self.authority
                    .answer_raw(datagram.to_vec(), source, Protocol::Udp),
            )),
        }
    }

    /// What the handler alone would send for `datagram`: the slow path,
    /// which must agree with every fast answer.
    pub fn handler_answer(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        let datagram = &datagram[..datagram.len().min(fast::RECV_BUFFER)];
        futures::executor::block_on(self.handler.answer_raw(
            datagram.to_vec(),
            UdpAnswerer::SOURCE,
            Protocol::Udp,
        ))
    }
}

/// A [`ResponseHandler`] that keeps the encoded answer instead of sending it,
/// so messages that arrive outside hickory's server (TCP, [`answer`]) get
/// exactly the bytes hickory would have sent.
#[derive(Clone)]
struct Captured {
    protocol: Protocol,
    /// The encoded answer, once the handler has sent one.
    wire: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Captured {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // hickory's own encoding (crate-private there): the size limit is
        // the response OPT's payload over UDP, and a message that cannot be
        // encoded becomes a bare SERVFAIL header.
        let limit = match self.protocol {
            Protocol::Udp => response
                .edns()
                .map_or(PLAIN_UDP_PAYLOAD, |edns| edns.max_payload()),
            _ => u16::MAX,
        };
        let id = response.metadata().id;
        let mut wire = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut wire);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, id, "encoding a DNS response failed; sending SERVFAIL");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                wire.clear();
                header.emit(&mut BinEncoder::new(&mut wire))?;
                ResponseInfo::from(header)
            }
        };
        *self.wire.lock().unwrap_or_else(PoisonError::into_inner) = Some(wire);
        Ok(info)
    }
}

/// Sends `response`; a failure is this request's alone, so it is logged and
/// the server goes on.
async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let metadata = *response.metadata();
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, id = metadata.id, "sending a DNS response failed");
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
