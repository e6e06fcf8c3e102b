//! The authoritative DNS server every node runs for the configured zone.
//!
//! It answers only from a [`ZoneView`], an immutable snapshot of the config
//! and the applied replicated state that the node rebuilds after every apply
//! and hands over through a `watch` channel. A query clones the current
//! `Arc<ZoneView>` out of the channel and never holds the borrow across an
//! await, so publishing a new view never waits on queries.
//!
//! hickory-server does the wire work (UDP, TCP framing and idle timeouts,
//! parsing, FORMERR for undecodable packets); this module owns every policy
//! decision: AA, EDNS echo and BADVERS, negative SOA, ANY, opcodes, classes
//! and UDP truncation (hickory's own truncation sizes are wrong, see
//! `notes/hickory-server-0.26.md`). It never recurses, never chases CNAMEs
//! out of the zone and never installs a log subscriber: hickory logs two INFO
//! lines per request under `hickory_server::server`, which the binary filters.
//!
//! Served through [`serve_with_metrics`], it counts each answer by response
//! code: one atomic add per query, the only thing it does with metrics.
//!
//! Choices where the RFCs leave room:
//! - ANY is answered minimally (RFC 8482): the SOA at the apex, the single
//!   record elsewhere.
//! - Answer owner names are lowercase; the question is echoed as received,
//!   so 0x20 case randomisation still works.
//! - A class other than IN is REFUSED, like an out-of-zone name: we hold no
//!   data in any other class. AXFR/IXFR are REFUSED too (transfers are not
//!   offered: every node answers from the replicated state).

pub mod publish;
mod zone;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{CNAME, NS};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;
use zone::Lookup;
pub use zone::ZoneView;

/// The UDP payload size we advertise and the most we ever send over UDP:
/// the DNS Flag Day 2020 value, which avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The UDP size limit for a client that sent no OPT (RFC 1035 §4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// How long a TCP connection may stay idle between complete messages. Short,
/// because hickory caps neither connections nor partial frames.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Responses queued per TCP connection before the handler waits for the
/// client to read.
const TCP_RESPONSE_QUEUE: usize = 32;

/// Why the DNS server stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A UDP socket or TCP listener failed in a way hickory cannot recover
    /// from (for example the socket was closed underneath it).
    #[error("the DNS server stopped: {source}")]
    Server {
        #[source]
        source: NetError,
    },
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
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    serve_counted(udp, tcp, zone, lease, None, cancel).await
}

/// [`serve`], counting every answered query in `metrics` by response code.
/// Messages hickory rejects before they reach the handler (undecodable ones,
/// answered FORMERR by hickory itself) are not counted.
pub async fn serve_with_metrics(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<ZoneView>>,
    lease: Lease,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    serve_counted(udp, tcp, zone, lease, Some(metrics), cancel).await
}

async fn serve_counted(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<ZoneView>>,
    lease: Lease,
    metrics: Option<Metrics>,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    let mut server = Server::new(Authority {
        zone,
        lease,
        metrics,
    });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_QUEUE);
    // `block_until_done` only returns early if a socket task failed; it is
    // cancel-safe (a JoinSet), so it can lose the race against `cancel`.
    let failed = tokio::select! {
        () = cancel.cancelled() => None,
        result = server.block_until_done() => Some(result),
    };
    match failed {
        None => server.shutdown_gracefully().await,
        Some(result) => result,
    }
    .map_err(|source| DnsError::Server { source })
}

/// The hickory request handler: all answering policy lives here.
struct Authority {
    /// The latest view; the node holds the sender and replaces it on apply.
    zone: watch::Receiver<Arc<ZoneView>>,
    /// Whether service names may be answered, checked on every query.
    lease: Lease,
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
        if let Some(metrics) = &self.metrics {
            metrics.dns_query(u16::from(reply.code));
        }

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
        let builder = || {
            let mut builder = MessageResponseBuilder::from_message_request(request);
            if let Some(edns) = &edns {
                builder.edns(edns);
            }
            builder
        };

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
                + request.queries.as_bytes().len()
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
