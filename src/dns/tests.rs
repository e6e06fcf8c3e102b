//! Wire tests for the DNS server: a real `serve` on 127.0.0.1:0, queried with
//! raw hickory `Message`s over UDP and TCP so every header bit can be checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DnsError, Limits, ZoneView, serve, serve_with_metrics};
use crate::config::Config;
use crate::model::{AppliedState, Epoch, ServiceState};

/// Every wait in these tests is bounded by this, so a broken server fails
/// the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(5);

const TTL: u32 = 5;

/// The config every test uses unless it needs many nodes: three nodes (an
/// IPv4, an IPv6 and an unspecified DNS address) and four services.
fn small_config() -> (Config, tempfile::TempDir) {
    let nodes = r#"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "192.0.2.1:53"
api = "127.0.0.1:8101"

[[cluster.nodes]]
id = 2
rpc = "127.0.0.1:7102"
dns = "[2001:db8::2]:53"
api = "127.0.0.1:8102"

[[cluster.nodes]]
id = 3
rpc = "127.0.0.1:7103"
dns = "0.0.0.0:5301"
api = "127.0.0.1:8103"
"#;
    config_with_nodes(nodes)
}

/// A config with `n` nodes, each with an IPv6 DNS address so NS + glue is big.
fn many_node_config(n: u64) -> (Config, tempfile::TempDir) {
    let mut nodes = String::new();
    for id in 1..=n {
        nodes.push_str(&format!(
            "[[cluster.nodes]]\nid = {id}\nrpc = \"127.0.0.1:{}\"\ndns = \"[2001:db8::{id:x}]:53\"\napi = \"127.0.0.1:{}\"\n\n",
            7100 + id,
            8100 + id
        ));
    }
    config_with_nodes(&nodes)
}

fn config_with_nodes(nodes: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.secret"), "0123456789abcdef0123").expect("secret");
    let text = format!(
        r#"
[cluster]
secret_file = "cluster.secret"
{nodes}
[dns]
zone = "Svc.Example."
ttl = "{TTL}s"

[[services]]
name = "web"
[services.check]
kind = "tcp"
[[services.instances]]
name = "web1"
address = "10.0.0.1:80"
cname = "web1.internal.example."

[[services]]
name = "db"
[services.check]
kind = "tcp"
[[services.instances]]
name = "db1"
address = "10.0.0.11:5432"
a = "10.0.0.11"
[[services.instances]]
name = "db2"
address = "10.0.0.12:5432"
a = "10.0.0.12"

[[services]]
name = "v6"
[services.check]
kind = "tcp"
[[services.instances]]
name = "v6a"
address = "[2001:db8::11]:80"
aaaa = "2001:db8::11"

[[services]]
name = "idle"
[services.check]
kind = "tcp"
[[services.instances]]
name = "idle1"
address = "10.0.0.21:80"
a = "10.0.0.21"
"#
    );
    let config = Config::parse(&dir.path().join("highlander.toml"), &text).expect("valid config");
    (config, dir)
}

/// Applied state at log index `index` with the given (service, instance, epoch).
fn applied(index: u64, active: &[(&str, &str, u64)]) -> AppliedState {
    let mut state = AppliedState {
        index,
        ..AppliedState::default()
    };
    for (service, instance, epoch) in active {
        state.state.services.insert(
            (*service).to_owned(),
            ServiceState {
                active: Some((*instance).to_owned()),
                epoch: Epoch(*epoch),
                ..ServiceState::default()
            },
        );
    }
    state
}

fn decided() -> AppliedState {
    applied(7, &[("web", "web1", 1), ("db", "db1", 3), ("v6", "v6a", 1)])
}

/// A running server and the handles to drive it.
struct Harness {
    udp: SocketAddr,
    tcp: SocketAddr,
    zone: watch::Sender<Arc<ZoneView>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), DnsError>>,
}

impl Harness {
    async fn start(view: ZoneView) -> Harness {
        Harness::start_with_lease(view, crate::dns::Lease::forever()).await
    }

    async fn start_with_lease(view: ZoneView, lease: crate::dns::Lease) -> Harness {
        Harness::spawn(view, lease, None, Limits::default()).await
    }

    async fn spawn(
        view: ZoneView,
        lease: crate::dns::Lease,
        metrics: Option<crate::metrics::Metrics>,
        limits: Limits,
    ) -> Harness {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let (udp_addr, tcp_addr) = (
            udp.local_addr().expect("udp addr"),
            tcp.local_addr().expect("tcp addr"),
        );
        let (zone, rx) = watch::channel(Arc::new(view));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            match metrics {
                Some(metrics) => {
                    serve_with_metrics(udp, tcp, rx, lease, limits, metrics, stop).await
                }
                None => serve(udp, tcp, rx, lease, limits, stop).await,
            }
        });
        Harness {
            udp: udp_addr,
            tcp: tcp_addr,
            zone,
            cancel,
            task,
        }
    }

    async fn standard() -> Harness {
        let (config, _dir) = small_config();
        Harness::start(ZoneView::build(&config, &decided(), true)).await
    }

    /// Sends raw bytes over UDP and returns the raw reply.
    async fn udp_raw(&self, bytes: &[u8]) -> Vec<u8> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        socket.send_to(bytes, self.udp).await.expect("send");
        let mut buf = vec![0; 65535];
        let (len, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
            .await
            .expect("a UDP reply before the deadline")
            .expect("recv");
        buf.truncate(len);
        buf
    }

    async fn udp(&self, query: &Message) -> Message {
        let raw = self.udp_raw(&query.to_vec().expect("encode")).await;
        Message::from_vec(&raw).expect("decodable reply")
    }

    async fn tcp(&self, query: &Message) -> Message {
        let mut stream = TcpStream::connect(self.tcp).await.expect("connect");
        let raw = tcp_exchange(&mut stream, &query.to_vec().expect("encode")).await;
        Message::from_vec(&raw).expect("decodable reply")
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("serve returns after cancel")
            .expect("serve did not panic");
        assert!(result.is_ok(), "serve failed: {result:?}");
    }
}

async fn tcp_exchange(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).expect("short message");
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.expect("write");
    tokio::time::timeout(DEADLINE, async {
        let mut len = [0; 2];
        stream.read_exact(&mut len).await.expect("read length");
        let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut body).await.expect("read body");
        body
    })
    .await
    .expect("a TCP reply before the deadline")
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("valid name")
}

/// A query without EDNS, RD set like a stub would.
fn query(qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    message
}

fn query_edns(qname: &str, qtype: RecordType, payload: u16, dnssec_ok: bool) -> Message {
    let mut message = query(qname, qtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    edns.set_dnssec_ok(dnssec_ok);
    message.set_edns(edns);
    message
}

/// Asserts the flags every answer from us carries.
fn assert_header(reply: &Message, code: ResponseCode, authoritative: bool) {
    assert_eq!(reply.metadata.id, 0x1234, "ID copied");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.response_code, code, "rcode of {reply:?}");
    assert_eq!(
        reply.metadata.authoritative, authoritative,
        "AA of {reply:?}"
    );
    assert!(!reply.metadata.recursion_available, "RA is always clear");
    assert!(!reply.metadata.truncation, "not truncated: {reply:?}");
}

/// Asserts NOERROR/NXDOMAIN with no answer and the negative SOA in AUTHORITY.
fn assert_negative(reply: &Message, code: ResponseCode) {
    assert_header(reply, code, true);
    assert!(reply.answers.is_empty(), "no answers: {reply:?}");
    assert_eq!(reply.authorities.len(), 1, "one SOA: {reply:?}");
    let soa = &reply.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name, name("svc.example."));
    assert_eq!(soa.ttl, TTL, "negative TTL = min(TTL, MINIMUM)");
}

fn only_answer(reply: &Message) -> &Record {
    assert_eq!(reply.answers.len(), 1, "one answer: {reply:?}");
    &reply.answers[0]
}

#[tokio::test]
async fn cname_service_answers_its_cname_for_every_type() {
    let server = Harness::standard().await;
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::TXT,
        RecordType::ANY,
    ] {
        let reply = server.udp(&query("web.svc.example.", qtype)).await;
        assert_header(&reply, ResponseCode::NoError, true);
        assert!(reply.metadata.recursion_desired, "RD copied");
        let answer = only_answer(&reply);
        assert_eq!(answer.name, name("web.svc.example."));
        assert_eq!(answer.ttl, TTL);
        assert_eq!(
            answer.data,
            RData::CNAME(CNAME(name("web1.internal.example."))),
            "qtype {qtype}"
        );
        // The out-of-zone target is not chased.
        assert!(reply.additionals.is_empty() && reply.authorities.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_service_answers_a_and_any_and_nodata_otherwise() {
    let server = Harness::standard().await;
    for qtype in [RecordType::A, RecordType::ANY] {
        let reply = server.udp(&query("db.svc.example.", qtype)).await;
        assert_header(&reply, ResponseCode::NoError, true);
        assert_eq!(only_answer(&reply).data, RData::A(A([10, 0, 0, 11].into())));
    }
    for qtype in [RecordType::AAAA, RecordType::TXT, RecordType::MX] {
        let reply = server.udp(&query("db.svc.example.", qtype)).await;
        assert_negative(&reply, ResponseCode::NoError);
    }
    server.stop().await;
}

#[tokio::test]
async fn aaaa_service_answers_aaaa_and_nodata_for_a() {
    let server = Harness::standard().await;
    for qtype in [RecordType::AAAA, RecordType::ANY] {
        let reply = server.udp(&query("v6.svc.example.", qtype)).await;
        assert_header(&reply, ResponseCode::NoError, true);
        let expected: std::net::Ipv6Addr = "2001:db8::11".parse().expect("ip");
        assert_eq!(only_answer(&reply).data, RData::AAAA(AAAA(expected)));
    }
    let reply = server.udp(&query("v6.svc.example.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NoError);
    server.stop().await;
}

#[tokio::test]
async fn highlander_txt_names_instance_and_epoch() {
    let server = Harness::standard().await;
    let reply = server
        .udp(&query("_highlander.db.svc.example.", RecordType::TXT))
        .await;
    assert_header(&reply, ResponseCode::NoError, true);
    let RData::TXT(txt) = &only_answer(&reply).data else {
        panic!("not a TXT: {reply:?}");
    };
    let strings: Vec<&[u8]> = txt.txt_data.iter().map(|s| &s[..]).collect();
    assert_eq!(strings, [&b"instance=db1"[..], &b"epoch=3"[..]]);

    let reply = server
        .udp(&query("_highlander.db.svc.example.", RecordType::A))
        .await;
    assert_negative(&reply, ResponseCode::NoError);
    server.stop().await;
}

#[tokio::test]
async fn apex_answers_soa_and_ns_with_glue() {
    let server = Harness::standard().await;
    let reply = server.udp(&query("svc.example.", RecordType::SOA)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    let RData::SOA(soa) = &only_answer(&reply).data else {
        panic!("not a SOA: {reply:?}");
    };
    assert_eq!(&soa.mname, &name("ns1.svc.example."));
    assert_eq!(&soa.rname, &name("hostmaster.svc.example."));
    assert_eq!(soa.serial, 7, "serial = applied index");
    assert_eq!(soa.minimum, TTL);
    assert_eq!(only_answer(&reply).ttl, TTL);

    let reply = server.udp(&query("svc.example.", RecordType::NS)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    let ns: Vec<&RData> = reply.answers.iter().map(|r| &r.data).collect();
    assert_eq!(
        ns,
        [1, 2, 3]
            .map(|id| RData::NS(NS(name(&format!("ns{id}.svc.example.")))))
            .iter()
            .collect::<Vec<_>>()
    );
    let glue: Vec<(Name, RData)> = reply
        .additionals
        .iter()
        .map(|r| (r.name.clone(), r.data.clone()))
        .collect();
    let v6: std::net::Ipv6Addr = "2001:db8::2".parse().expect("ip");
    assert_eq!(
        glue,
        [
            (name("ns1.svc.example."), RData::A(A([192, 0, 2, 1].into()))),
            (name("ns2.svc.example."), RData::AAAA(AAAA(v6))),
        ],
        "no glue for node 3's unspecified address"
    );

    // RFC 8482: ANY at the apex is answered with the SOA alone.
    let reply = server.udp(&query("svc.example.", RecordType::ANY)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    assert_eq!(only_answer(&reply).record_type(), RecordType::SOA);

    let reply = server.udp(&query("svc.example.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NoError);
    server.stop().await;
}

#[tokio::test]
async fn nameserver_names_answer_their_address() {
    let server = Harness::standard().await;
    let reply = server.udp(&query("ns1.svc.example.", RecordType::A)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    assert_eq!(only_answer(&reply).data, RData::A(A([192, 0, 2, 1].into())));
    let reply = server
        .udp(&query("ns1.svc.example.", RecordType::AAAA))
        .await;
    assert_negative(&reply, ResponseCode::NoError);
    let reply = server
        .udp(&query("ns2.svc.example.", RecordType::AAAA))
        .await;
    assert_eq!(only_answer(&reply).record_type(), RecordType::AAAA);
    // Node 3 listens on 0.0.0.0: the name exists but has no address to give.
    let reply = server.udp(&query("ns3.svc.example.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NoError);
    server.stop().await;
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_existing_names_nodata() {
    let server = Harness::standard().await;
    for qname in [
        "nope.svc.example.",
        "www.web.svc.example.",
        "ns9.svc.example.",
        "_highlander.nope.svc.example.",
    ] {
        let reply = server.udp(&query(qname, RecordType::A)).await;
        assert_negative(&reply, ResponseCode::NXDomain);
    }
    // The only names below a service are _highlander.<service>.<zone>, whose
    // parent is the service itself: it exists (RFC 8020), so other types
    // there are NODATA. _highlander.<zone> is no ancestor of anything.
    let reply = server.udp(&query("db.svc.example.", RecordType::TXT)).await;
    assert_negative(&reply, ResponseCode::NoError);
    let reply = server
        .udp(&query("_highlander.svc.example.", RecordType::TXT))
        .await;
    assert_negative(&reply, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn names_outside_the_zone_and_other_classes_are_refused() {
    let server = Harness::standard().await;
    for qname in ["example.", "example.com.", ".", "xsvc.example."] {
        let reply = server.udp(&query(qname, RecordType::A)).await;
        assert_header(&reply, ResponseCode::Refused, false);
        assert!(reply.answers.is_empty() && reply.authorities.is_empty());
    }
    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_header(&server.udp(&chaos).await, ResponseCode::Refused, false);
    let mut chaos = query("db.svc.example.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_header(&server.udp(&chaos).await, ResponseCode::Refused, false);
    server.stop().await;
}

#[tokio::test]
async fn services_without_a_decision_get_servfail() {
    let server = Harness::standard().await;
    for qname in ["idle.svc.example.", "_highlander.idle.svc.example."] {
        for qtype in [RecordType::A, RecordType::TXT] {
            let reply = server.udp(&query(qname, qtype)).await;
            assert_header(&reply, ResponseCode::ServFail, false);
            assert!(reply.answers.is_empty() && reply.authorities.is_empty());
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_node_outside_the_majority_fails_service_names_but_answers_the_apex() {
    let (config, _dir) = small_config();
    let server = Harness::start(ZoneView::build(&config, &decided(), false)).await;
    for (qname, qtype) in [
        ("db.svc.example.", RecordType::A),
        ("web.svc.example.", RecordType::CNAME),
        ("_highlander.db.svc.example.", RecordType::TXT),
    ] {
        let reply = server.udp(&query(qname, qtype)).await;
        assert_header(&reply, ResponseCode::ServFail, false);
    }
    let reply = server.udp(&query("svc.example.", RecordType::SOA)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    let reply = server.udp(&query("svc.example.", RecordType::NS)).await;
    assert_eq!(reply.answers.len(), 3);
    let reply = server.udp(&query("nope.svc.example.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn questions_match_case_insensitively_and_keep_their_case() {
    let server = Harness::standard().await;
    let reply = server.udp(&query("dB.SvC.eXaMpLe.", RecordType::A)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    assert!(
        reply.queries[0].name().eq_case(&name("dB.SvC.eXaMpLe.")),
        "question echoed as sent (0x20)"
    );
    assert!(
        only_answer(&reply).name.eq_case(&name("db.svc.example.")),
        "answers are lowercase"
    );
    server.stop().await;
}

#[tokio::test]
async fn edns_is_echoed_with_our_payload_and_the_do_bit() {
    let server = Harness::standard().await;
    for dnssec_ok in [false, true] {
        let reply = server
            .udp(&query_edns(
                "db.svc.example.",
                RecordType::A,
                4096,
                dnssec_ok,
            ))
            .await;
        assert_header(&reply, ResponseCode::NoError, true);
        let edns = reply.edns.as_ref().expect("OPT echoed");
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
        assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
    }
    let reply = server.udp(&query("db.svc.example.", RecordType::A)).await;
    assert!(reply.edns.is_none(), "no OPT to a client that sent none");
    server.stop().await;
}

#[tokio::test]
async fn unknown_edns_version_gets_badvers() {
    let server = Harness::standard().await;
    let mut message = query_edns("db.svc.example.", RecordType::A, 1232, false);
    if let Some(edns) = message.edns.as_mut() {
        edns.set_version(1);
    }
    let reply = server.udp(&message).await;
    // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(reply.metadata.response_code), 16, "{reply:?}");
    assert!(!reply.metadata.authoritative);
    assert!(reply.answers.is_empty());
    let edns = reply.edns.as_ref().expect("BADVERS travels in the OPT");
    assert_eq!(edns.version(), 0);
    server.stop().await;
}

#[tokio::test]
async fn other_opcodes_are_notimp_and_bad_question_counts_formerr() {
    let server = Harness::standard().await;
    for op in [OpCode::Notify, OpCode::Status, OpCode::Update] {
        let mut message = query("db.svc.example.", RecordType::SOA);
        message.metadata.op_code = op;
        let reply = server.udp(&message).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp, "{op}");
        assert_eq!(reply.metadata.op_code, op);
    }

    let mut none = query("db.svc.example.", RecordType::A);
    none.queries.clear();
    assert_header(&server.udp(&none).await, ResponseCode::FormErr, false);

    let mut two = query("db.svc.example.", RecordType::A);
    two.add_query(Query::query(name("web.svc.example."), RecordType::A));
    assert_header(&server.udp(&two).await, ResponseCode::FormErr, false);
    server.stop().await;
}

#[tokio::test]
async fn meta_query_types_are_not_answered_as_data() {
    let server = Harness::standard().await;
    for (qtype, code) in [
        (RecordType::AXFR, ResponseCode::Refused),
        (RecordType::IXFR, ResponseCode::Refused),
        (RecordType::Unknown(254), ResponseCode::NotImp),
        (RecordType::ZERO, ResponseCode::FormErr),
    ] {
        let reply = server.udp(&query("svc.example.", qtype)).await;
        assert_header(&reply, code, false);
    }
    server.stop().await;
}

#[tokio::test]
async fn oversize_udp_answers_are_truncated_and_tcp_gets_them_whole() {
    let (config, _dir) = many_node_config(30);
    let server = Harness::start(ZoneView::build(&config, &decided(), true)).await;

    // No EDNS: the limit is 512 bytes; TC with the question and nothing else.
    let raw = server
        .udp_raw(
            &query("svc.example.", RecordType::NS)
                .to_vec()
                .expect("encode"),
        )
        .await;
    assert!(raw.len() <= 512, "{} bytes", raw.len());
    let reply = Message::from_vec(&raw).expect("decodable");
    assert!(reply.metadata.truncation, "TC set");
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.queries.len(), 1);
    assert!(reply.answers.is_empty() && reply.authorities.is_empty());
    assert!(reply.additionals.is_empty() && reply.edns.is_none());

    // A client offering more than we advertise is still held to 1232.
    for payload in [512, 1232, 4096] {
        let raw = server
            .udp_raw(
                &query_edns("svc.example.", RecordType::NS, payload, false)
                    .to_vec()
                    .expect("encode"),
            )
            .await;
        let reply = Message::from_vec(&raw).expect("decodable");
        assert!(reply.metadata.truncation, "TC at bufsize {payload}");
        assert!(reply.answers.is_empty() && reply.additionals.is_empty());
        assert_eq!(reply.edns.map(|e| e.max_payload()), Some(1232));
    }

    // Small answers from the same zone still fit.
    let reply = server.udp(&query("svc.example.", RecordType::SOA)).await;
    assert_header(&reply, ResponseCode::NoError, true);

    let reply = server.tcp(&query("svc.example.", RecordType::NS)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    assert_eq!(reply.answers.len(), 30);
    assert_eq!(reply.additionals.len(), 30);
    server.stop().await;
}

#[tokio::test]
async fn tcp_answers_several_queries_on_one_connection() {
    let server = Harness::standard().await;
    let mut stream = TcpStream::connect(server.tcp).await.expect("connect");
    for (qname, qtype) in [
        ("db.svc.example.", RecordType::A),
        ("web.svc.example.", RecordType::A),
        ("nope.svc.example.", RecordType::A),
    ] {
        let raw = tcp_exchange(&mut stream, &query(qname, qtype).to_vec().expect("encode")).await;
        let reply = Message::from_vec(&raw).expect("decodable");
        assert_eq!(reply.queries[0].name(), &name(qname));
        assert!(reply.metadata.authoritative);
    }
    server.stop().await;
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let server = Harness::standard().await;
    let good = query("db.svc.example.", RecordType::A)
        .to_vec()
        .expect("encode");
    let mut qr_set = good.clone();
    qr_set[2] |= 0x80;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![0xab; 300],
        // A question whose name is a compression pointer to itself.
        vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
        // A question cut short.
        good[..good.len() - 3].to_vec(),
        // A response, which must never be answered (reflection).
        qr_set,
    ];
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for packet in &garbage {
        socket.send_to(packet, server.udp).await.expect("send");
    }
    // Replies (FORMERR or nothing) don't matter; the next good query does.
    let reply = server.udp(&query("db.svc.example.", RecordType::A)).await;
    assert_header(&reply, ResponseCode::NoError, true);

    // A garbage TCP frame, then a good query on a fresh connection.
    let mut stream = TcpStream::connect(server.tcp).await.expect("connect");
    let mut frame = vec![0, 40];
    frame.extend_from_slice(&[0x5a; 40]);
    stream.write_all(&frame).await.expect("write");
    drop(stream);
    let reply = server.tcp(&query("db.svc.example.", RecordType::A)).await;
    assert_header(&reply, ResponseCode::NoError, true);
    server.stop().await;
}

#[tokio::test]
async fn a_new_view_is_answered_from_the_next_query() {
    let (config, _dir) = small_config();
    let server = Harness::start(ZoneView::build(&config, &applied(1, &[]), true)).await;
    let reply = server.udp(&query("db.svc.example.", RecordType::A)).await;
    assert_header(&reply, ResponseCode::ServFail, false);

    server
        .zone
        .send(Arc::new(ZoneView::build(
            &config,
            &applied(9, &[("db", "db2", 4)]),
            true,
        )))
        .expect("server holds the receiver");
    let reply = server.udp(&query("db.svc.example.", RecordType::A)).await;
    assert_eq!(only_answer(&reply).data, RData::A(A([10, 0, 0, 12].into())));
    let reply = server
        .udp(&query("_highlander.db.svc.example.", RecordType::TXT))
        .await;
    let RData::TXT(txt) = &only_answer(&reply).data else {
        panic!("not a TXT: {reply:?}");
    };
    assert_eq!(&txt.txt_data[1][..], b"epoch=4");
    let reply = server.udp(&query("svc.example.", RecordType::SOA)).await;
    let RData::SOA(soa) = &only_answer(&reply).data else {
        panic!("not a SOA: {reply:?}");
    };
    assert_eq!(soa.serial, 9);
    server.stop().await;
}

#[tokio::test]
async fn answers_between_512_and_1232_bytes_follow_the_client_payload() {
    // Regression for hickory truncating at our advertised 1232 instead of the
    // client's 512 (notes §2, bug A): 12 IPv6 nameservers make NS + glue
    // land between the two limits.
    let (config, _dir) = many_node_config(12);
    let server = Harness::start(ZoneView::build(&config, &decided(), true)).await;
    let whole = server.tcp(&query("svc.example.", RecordType::NS)).await;
    let size = whole.to_vec().expect("encode").len();
    assert!((513..=1232).contains(&size), "NS + glue is {size} bytes");

    for (payload, truncated) in [(None, true), (Some(512), true), (Some(1232), false)] {
        let message = match payload {
            None => query("svc.example.", RecordType::NS),
            Some(payload) => query_edns("svc.example.", RecordType::NS, payload, false),
        };
        let sent = message.to_vec().expect("encode");
        let raw = server.udp_raw(&sent).await;
        let reply = Message::from_vec(&raw).expect("decodable");
        assert_eq!(reply.metadata.truncation, truncated, "bufsize {payload:?}");
        if truncated {
            // Header, question and OPT as the query had them: nothing else
            // (notes §2, bug B: no trailing garbage).
            assert_eq!(raw.len(), sent.len(), "bufsize {payload:?}");
        } else {
            assert_eq!(reply.answers.len(), 12);
            assert_eq!(reply.additionals.len(), 12);
        }
    }
    server.stop().await;
}

#[test]
fn wire_bound_is_never_below_the_encoded_size() {
    use hickory_server::proto::serialize::binary::BinEncodable;
    let (config, _dir) = many_node_config(3);
    let view = ZoneView::build(&config, &decided(), true);
    let mut checked = 0;
    for (qname, qtype) in [
        ("svc.example.", RecordType::SOA),
        ("svc.example.", RecordType::NS),
        ("web.svc.example.", RecordType::CNAME),
        ("db.svc.example.", RecordType::A),
        ("v6.svc.example.", RecordType::AAAA),
        ("_highlander.db.svc.example.", RecordType::TXT),
    ] {
        let lookup = view.lookup(&name(qname).into(), qtype);
        let super::Lookup::Answer {
            answers,
            additionals,
        } = lookup
        else {
            panic!("no answer for {qname} {qtype}: {lookup:?}");
        };
        for record in answers.iter().chain(additionals) {
            let encoded = record.to_bytes().expect("encode").len();
            assert!(super::wire_bound(record) >= encoded, "{record:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 1 + 3 + 3 + 1 + 1 + 1 + 1);
}

#[test]
fn serial_wraps_with_the_applied_index() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(&config, &applied(u64::from(u32::MAX) + 3, &[]), true);
    let RData::SOA(soa) = &view.negative_soa().data else {
        panic!("not a SOA");
    };
    assert_eq!(soa.serial, 2);
}

#[test]
fn state_the_config_no_longer_matches_is_not_answered() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(
        &config,
        &applied(3, &[("db", "db-removed", 2), ("gone", "x", 1)]),
        true,
    );
    // An active instance the config no longer lists has no target to give.
    for qname in ["db.svc.example.", "_highlander.db.svc.example."] {
        assert_eq!(
            view.lookup(&name(qname).into(), RecordType::A),
            super::Lookup::ServFail,
            "{qname}"
        );
    }
    // A service only the state knows is not in the zone.
    assert_eq!(
        view.lookup(&name("gone.svc.example.").into(), RecordType::A),
        super::Lookup::NxDomain
    );
}

#[tokio::test]
async fn service_names_are_answered_only_while_the_lease_holds() {
    let (config, _dir) = small_config();
    let lease = crate::dns::Lease::new();
    let server =
        Harness::start_with_lease(ZoneView::build(&config, &decided(), true), lease.clone()).await;
    let service = query("db.svc.example.", RecordType::A);
    let apex = query("svc.example.", RecordType::SOA);

    // Never renewed: service names fail, the apex still answers.
    assert_header(&server.udp(&service).await, ResponseCode::ServFail, false);
    assert_header(&server.udp(&apex).await, ResponseCode::NoError, true);

    lease.renew(Some(tokio::time::Instant::now() + Duration::from_secs(30)));
    assert_header(&server.udp(&service).await, ResponseCode::NoError, true);

    // A deadline that has passed is checked per query, without a renewal.
    lease.renew(Some(
        tokio::time::Instant::now() + Duration::from_millis(50),
    ));
    assert_header(&server.udp(&service).await, ResponseCode::NoError, true);
    tokio::time::sleep(Duration::from_millis(80)).await; // let the deadline pass
    assert_header(&server.udp(&service).await, ResponseCode::ServFail, false);
    let txt = query("_highlander.db.svc.example.", RecordType::TXT);
    assert_header(&server.udp(&txt).await, ResponseCode::ServFail, false);

    lease.renew(None);
    assert!(!lease.holds());
    server.stop().await;
}

#[test]
fn a_forever_lease_ignores_renewals() {
    let lease = crate::dns::Lease::forever();
    lease.renew(None);
    assert!(lease.holds());
    let lease = crate::dns::Lease::new();
    assert!(!lease.holds());
}

#[tokio::test]
async fn served_with_metrics_every_answer_is_counted_by_response_code() {
    let (config, _dir) = small_config();
    let metrics = crate::metrics::Metrics::new();
    let view = ZoneView::build(&config, &decided(), true);
    let server = Harness::spawn(
        view,
        crate::dns::Lease::forever(),
        Some(metrics.clone()),
        Limits::default(),
    )
    .await;
    let asked = [
        ("db.svc.example.", ResponseCode::NoError),
        ("_highlander.db.svc.example.", ResponseCode::NoError),
        ("nope.svc.example.", ResponseCode::NXDomain),
        ("www.example.org.", ResponseCode::Refused),
    ];
    for (qname, code) in asked {
        let reply = server.udp(&query(qname, RecordType::TXT)).await;
        assert_eq!(reply.metadata.response_code, code, "{qname}");
    }
    let mut tcp = TcpStream::connect(server.tcp).await.expect("connect");
    let nx = query("gone.svc.example.", RecordType::A);
    tcp_exchange(&mut tcp, &nx.to_vec().expect("encode")).await;
    server.stop().await;

    let count = |rcode: &str| {
        counter(
            &metrics,
            &format!("highlander_dns_queries_total{{rcode=\"{rcode}\"}}"),
        )
    };
    assert_eq!(count("noerror"), Some(2));
    assert_eq!(count("nxdomain"), Some(2), "UDP and TCP alike");
    assert_eq!(count("refused"), Some(1));
    assert_eq!(count("servfail"), Some(0));
}

/// The value of the series `series` (name and labels) in `metrics`.
fn counter(metrics: &crate::metrics::Metrics, series: &str) -> Option<u64> {
    let text = metrics.render(crate::metrics::ScrapeView::default());
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse::<u64>().ok())
}

/// Queries that cover every kind of answer: data, CNAME, NODATA, NXDOMAIN,
/// REFUSED, SERVFAIL, ANY, EDNS with DO, BADVERS, an oversize NS set, a
/// question count of two and undecodable bytes (FORMERR, header only).
fn assorted_messages() -> Vec<Vec<u8>> {
    let encode = |message: Message| message.to_vec().expect("encode");
    let mut messages: Vec<Vec<u8>> = [
        query("db.svc.example.", RecordType::A),
        query("WeB.svc.example.", RecordType::AAAA),
        query("db.svc.example.", RecordType::MX),
        query("nope.svc.example.", RecordType::A),
        query("example.org.", RecordType::A),
        query("idle.svc.example.", RecordType::A),
        query("svc.example.", RecordType::ANY),
        query("svc.example.", RecordType::NS),
        query_edns("_highlander.db.svc.example.", RecordType::TXT, 4096, true),
        query_edns("svc.example.", RecordType::NS, 512, false),
    ]
    .into_iter()
    .map(encode)
    .collect();
    let mut badvers = query_edns("db.svc.example.", RecordType::A, 1232, false);
    if let Some(edns) = badvers.edns.as_mut() {
        edns.set_version(1);
    }
    let mut two = query("db.svc.example.", RecordType::A);
    two.add_query(Query::query(name("web.svc.example."), RecordType::A));
    messages.extend([encode(badvers), encode(two), vec![0x5a; 40]]);
    messages
}

/// hickory's own TCP listener around the same handler, for comparison.
async fn hickorys_tcp_listener(
    view: ZoneView,
) -> (SocketAddr, hickory_server::Server<super::Authority>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let addr = listener.local_addr().expect("tcp addr");
    let (_sender, zone) = watch::channel(Arc::new(view));
    let mut server = hickory_server::Server::new(super::Authority {
        zone,
        lease: crate::dns::Lease::forever(),
        limiter: None,
        metrics: None,
    });
    server.register_listener(listener, DEADLINE, 32);
    (addr, server)
}

#[tokio::test]
async fn tcp_answers_are_byte_for_byte_what_hickorys_listener_sent() {
    let (config, _dir) = many_node_config(12);
    let view = ZoneView::build(&config, &decided(), true);
    let (hickory, _server) = hickorys_tcp_listener(view.clone()).await;
    let ours = Harness::start(view.clone()).await;
    let mut theirs = TcpStream::connect(hickory).await.expect("connect");
    let mut mine = TcpStream::connect(ours.tcp).await.expect("connect");
    for message in assorted_messages() {
        let expected = tcp_exchange(&mut theirs, &message).await;
        assert_eq!(
            tcp_exchange(&mut mine, &message).await,
            expected,
            "{message:02x?}"
        );
        let direct = super::answer(Arc::new(view.clone()), &message, super::Transport::Tcp);
        assert_eq!(direct, Some(expected), "answer() over TCP");
    }
    ours.stop().await;
}

#[tokio::test]
async fn answer_gives_the_bytes_the_udp_server_sends() {
    let (config, _dir) = many_node_config(12);
    let view = ZoneView::build(&config, &decided(), true);
    let server = Harness::start(view.clone()).await;
    for message in assorted_messages() {
        let sent = server.udp_raw(&message).await;
        let direct = super::answer(Arc::new(view.clone()), &message, super::Transport::Udp);
        assert_eq!(direct, Some(sent), "{message:02x?}");
    }
    // What the server never answers, answer() does not either.
    let mut response = query("db.svc.example.", RecordType::A)
        .to_vec()
        .expect("encode");
    response[2] |= 0x80;
    for silent in [vec![], vec![0; 11], response] {
        assert_eq!(
            super::answer(Arc::new(view.clone()), &silent, super::Transport::Udp),
            None
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn over_the_rate_udp_answers_are_dropped_or_slipped_and_tcp_is_not_limited() {
    let (config, _dir) = small_config();
    let metrics = crate::metrics::Metrics::new();
    // The test queries from loopback, exempt by default.
    let limits = Limits {
        rate_limit: 5,
        rate_limit_slip: 2,
        rate_limit_exempt: Vec::new(),
        ..Limits::default()
    };
    let view = ZoneView::build(&config, &decided(), true);
    let server = Harness::spawn(
        view,
        crate::dns::Lease::forever(),
        Some(metrics.clone()),
        limits,
    )
    .await;
    let question = query_edns("db.svc.example.", RecordType::A, 1232, false);
    let sent = question.to_vec().expect("encode");
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    const QUERIES: u64 = 40;
    for _ in 0..QUERIES {
        socket.send_to(&sent, server.udp).await.expect("send");
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = vec![0; 4096];
    // Every reply arrives well within this once the queries are sent.
    while let Ok(received) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
    {
        let (len, _) = received.expect("recv");
        let reply = Message::from_vec(&buf[..len]).expect("decodable");
        if reply.metadata.truncation {
            // A slip: the question and OPT echoed, nothing else, no bigger
            // than the query, so a spoofed flood reflects nothing.
            assert!(reply.answers.is_empty() && reply.additionals.is_empty());
            assert_eq!(reply.queries, question.queries);
            assert_eq!(len, sent.len());
            truncated += 1;
        } else {
            assert_eq!(only_answer(&reply).data, RData::A(A([10, 0, 0, 11].into())));
            full += 1;
        }
    }
    // The burst is one second of the rate; the rest of the flood took
    // milliseconds, so at most one more token was earned meanwhile.
    assert!((5..=6).contains(&full), "{full} full answers");
    let dropped = counter(
        &metrics,
        "highlander_dns_rate_limited_total{action=\"dropped\"}",
    );
    let slipped = counter(
        &metrics,
        "highlander_dns_rate_limited_total{action=\"slipped\"}",
    );
    assert_eq!(slipped, Some(truncated));
    assert_eq!(dropped, Some(QUERIES - full - truncated));
    assert!(
        truncated.abs_diff(QUERIES - full - truncated) <= 1,
        "every other one slips"
    );
    assert_eq!(
        counter(&metrics, "highlander_dns_queries_total{rcode=\"noerror\"}"),
        Some(full),
        "limited responses are not counted as answered"
    );
    // TCP proves the address: it is answered whatever the UDP budget.
    let reply = server.tcp(&question).await;
    assert_header(&reply, ResponseCode::NoError, true);
    server.stop().await;
}

#[tokio::test]
async fn many_questions_get_formerr_without_them_not_a_bare_servfail() {
    // Regression: the FORMERR for a question count other than one echoed
    // every question; 100 of them (6 bytes each with compression) did not
    // fit 512 bytes, so hickory's encoder failed, logged an ERROR and sent a
    // 12-byte SERVFAIL without RD: one ERROR line per packet an attacker sends.
    let server = Harness::standard().await;
    for edns in [false, true] {
        let first = match edns {
            false => query("db.svc.example.", RecordType::A),
            true => query_edns("db.svc.example.", RecordType::A, 1232, false),
        };
        let mut message = first.to_vec().expect("encode");
        let opt = message.split_off(message.len() - usize::from(edns) * 11);
        message[5] = 100;
        for _ in 1..100 {
            message.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        }
        message.extend_from_slice(&opt);
        let raw = server.udp_raw(&message).await;
        let reply = Message::from_vec(&raw).expect("decodable");
        assert_header(&reply, ResponseCode::FormErr, false);
        assert!(reply.metadata.recursion_desired, "RD copied");
        assert!(reply.queries.is_empty(), "no questions echoed: {reply:?}");
        assert_eq!(reply.edns.is_some(), edns, "OPT echoed when sent");
        assert_eq!(raw.len(), 12 + usize::from(edns) * 11);
        let direct = super::answer(
            Arc::new(ZoneView::build(&small_config().0, &decided(), true)),
            &message,
            super::Transport::Udp,
        );
        assert_eq!(direct, Some(raw));
    }
    server.stop().await;
}

#[test]
fn default_limits_are_those_of_a_dns_table_that_sets_none() {
    let (config, _dir) = small_config();
    assert_eq!(Limits::from(&config.dns), Limits::default());
}

/// A raw query: `name` encoded label by label as written (so its case is
/// kept), the header flag bytes as given, and an OPT with `payload`, DO and
/// the raw `options` when `edns` is set.
fn raw_query(
    id: u16,
    flags: [u8; 2],
    qname: &str,
    qtype: u16,
    edns: Option<(u16, bool, &[u8])>,
) -> Vec<u8> {
    let mut wire = id.to_be_bytes().to_vec();
    wire.extend_from_slice(&flags);
    wire.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in qname.split('.').filter(|l| !l.is_empty()) {
        wire.push(u8::try_from(label.len()).expect("short label"));
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire.extend_from_slice(&qtype.to_be_bytes());
    wire.extend_from_slice(&[0, 1]);
    if let Some((payload, dnssec_ok, options)) = edns {
        wire.extend_from_slice(&[0, 0, 41]);
        wire.extend_from_slice(&payload.to_be_bytes());
        wire.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        let len = u16::try_from(options.len()).expect("short options");
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(options);
    }
    wire
}

/// An [`Authority`](super::Authority) over `view` as the server builds it.
fn authority(
    view: ZoneView,
    lease: crate::dns::Lease,
    rate_limit: Option<(u32, u32)>,
) -> (super::Authority, watch::Sender<Arc<ZoneView>>) {
    let (sender, zone) = watch::channel(Arc::new(view));
    let limiter = rate_limit.and_then(|(rate, slip)| {
        super::rate_limit::RateLimiter::new(rate, slip, std::time::Instant::now()).map(Arc::new)
    });
    let authority = super::Authority {
        zone,
        lease,
        limiter,
        metrics: None,
    };
    (authority, sender)
}

/// The fast path's answer to `query`, or `None` if it leaves it to the handler.
fn fast_answer(
    table: &super::fast::FastTable,
    authority: &super::Authority,
    query: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let source = std::net::IpAddr::from([192, 0, 2, 1]);
    match table.answer(
        authority,
        query,
        source,
        std::time::Instant::now(),
        &mut out,
    ) {
        super::fast::Fast::Answer => Some(out),
        super::fast::Fast::Dropped => Some(Vec::new()),
        super::fast::Fast::Slow => None,
    }
}

/// Every query shape the byte comparison tries, for each name and type.
fn query_variants(qname: &str, qtype: u16) -> Vec<Vec<u8>> {
    let mixed: String = qname
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let client_cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let both_cookies: Vec<u8> = [0, 10, 0, 24].into_iter().chain(1..=24).collect();
    let padding = [0, 12, 0, 4, 0, 0, 0, 0];
    let cookie_and_padding: Vec<u8> = client_cookie.iter().chain(&padding).copied().collect();
    // Options the fast path must leave to the handler: NSID, a short cookie.
    let nsid = [0, 3, 0, 0];
    let short_cookie = [0, 10, 0, 7, 1, 2, 3, 4, 5, 6, 7];
    let edns: [Option<(u16, bool, &[u8])>; 12] = [
        None,
        Some((512, false, &[])),
        Some((1232, false, &[])),
        Some((4096, true, &[])),
        Some((100, false, &[])),
        Some((1232, true, &client_cookie)),
        Some((1232, false, &both_cookies)),
        Some((1400, true, &cookie_and_padding)),
        Some((1232, false, &padding)),
        Some((1232, false, &nsid)),
        Some((1232, false, &short_cookie)),
        Some((600, true, &[])),
    ];
    let mut variants = Vec::new();
    for name in [qname, mixed.as_str()] {
        for (i, &edns) in edns.iter().enumerate() {
            // RD, CD, both, none; and bits the fast path leaves alone (AD, TC).
            let flags = [
                [0x01, 0],
                [0, 0x10],
                [0x01, 0x10],
                [0, 0],
                [0, 0x20],
                [0x03, 0],
            ][i % 6];
            let id = u16::try_from(i).expect("few variants") * 257 + 3;
            variants.push(raw_query(id, flags, name, qtype, edns));
        }
    }
    variants
}

/// The names every byte comparison asks about: services of each kind, their
/// TXT names, the apex, a nameserver, an unknown name and one outside the zone.
const COMPARED_NAMES: [&str; 9] = [
    "db.svc.example.",
    "web.svc.example.",
    "v6.svc.example.",
    "idle.svc.example.",
    "_highlander.db.svc.example.",
    "svc.example.",
    "ns1.svc.example.",
    "nope.svc.example.",
    "db.example.org.",
];

/// Types asked for each name: A, NS, CNAME, SOA, MX, TXT, AAAA, ANY, CAA.
const COMPARED_TYPES: [u16; 9] = [1, 2, 5, 6, 15, 16, 28, 255, 257];

/// Compares the fast path with the handler for every variant against
/// `view`, with `lease`; returns how many the fast path answered.
fn compare_fast_with_slow(view: &ZoneView, lease: &crate::dns::Lease) -> usize {
    let (authority, _sender) = authority(view.clone(), lease.clone(), None);
    let table = super::fast::FastTable::build(Arc::new(view.clone()));
    let mut fast_count = 0;
    for qname in COMPARED_NAMES {
        for qtype in COMPARED_TYPES {
            for query in query_variants(qname, qtype) {
                let Some(fast) = fast_answer(&table, &authority, &query) else {
                    continue;
                };
                fast_count += 1;
                let slow = super::answer(Arc::new(view.clone()), &query, super::Transport::Udp)
                    .expect("the handler answers what the fast path answered");
                assert_eq!(fast, slow, "{qname} type {qtype}, query {query:02x?}");
            }
        }
    }
    fast_count
}

#[test]
fn fast_path_answers_equal_the_handlers_byte_for_byte() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(&config, &decided(), true);
    let answered = compare_fast_with_slow(&view, &crate::dns::Lease::forever());
    // The hot questions really are fast-pathed: 4 services x A/AAAA/CNAME,
    // 4 TXT names x TXT (some of these are NODATA or SERVFAIL, equally
    // pre-encoded), apex SOA/NS, each in the variants the fast path takes.
    assert!(answered > 200, "only {answered} answered fast");

    // The common question in the shapes resolvers send is fast-pathed.
    let (authority, _sender) = authority(view.clone(), crate::dns::Lease::forever(), None);
    let table = super::fast::FastTable::build(Arc::new(view));
    for edns in [
        None,
        Some((1232, true, &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8][..])),
    ] {
        let query = raw_query(9, [1, 0], "dB.SvC.eXamplE.", 1, edns);
        assert!(
            fast_answer(&table, &authority, &query).is_some(),
            "{edns:?}"
        );
    }
    // Options the handler might treat differently are left to it.
    let nsid = raw_query(
        9,
        [1, 0],
        "db.svc.example.",
        1,
        Some((1232, false, &[0, 3, 0, 0])),
    );
    assert!(fast_answer(&table, &authority, &nsid).is_none());
}

#[test]
fn fast_path_equals_the_handler_for_big_apex_answers_and_undecided_services() {
    // 12 nodes with IPv6 glue: NS answers over 512 bytes, so small clients
    // must get the handler's TC answer, never a fast one.
    let (config, _dir) = many_node_config(12);
    let view = ZoneView::build(&config, &applied(3, &[]), true);
    compare_fast_with_slow(&view, &crate::dns::Lease::forever());
    let (authority, _sender) = authority(view.clone(), crate::dns::Lease::forever(), None);
    let table = super::fast::FastTable::build(Arc::new(view));
    let small = raw_query(1, [0, 0], "svc.example.", 2, None);
    assert!(fast_answer(&table, &authority, &small).is_none());
}

#[test]
fn a_lapsed_lease_leaves_service_names_to_the_handler() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(&config, &decided(), true);
    let lapsed = crate::dns::Lease::new();
    compare_fast_with_slow(&view, &lapsed);
    let (authority, _sender) = authority(view.clone(), lapsed, None);
    let table = super::fast::FastTable::build(Arc::new(view));
    for qname in ["db.svc.example.", "_highlander.db.svc.example."] {
        for query in query_variants(qname, 1)
            .into_iter()
            .chain(query_variants(qname, 16))
        {
            assert!(fast_answer(&table, &authority, &query).is_none(), "{qname}");
        }
    }
    // The apex does not depend on the lease.
    let soa = raw_query(1, [0, 0], "svc.example.", 6, None);
    assert!(fast_answer(&table, &authority, &soa).is_some());
}

#[test]
fn the_fast_path_spends_the_rate_limit_and_slips_like_the_handler() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(&config, &decided(), true);
    let table = super::fast::FastTable::build(Arc::new(view.clone()));
    for edns in [None, Some((1232, true, &[][..]))] {
        let query = raw_query(77, [1, 0x10], "Db.svc.example.", 1, edns);
        // One response a second, every limited one slips; then none slips.
        for slip in [1, 0] {
            let (fast, _f) = authority(view.clone(), crate::dns::Lease::forever(), Some((1, slip)));
            let (slow, _s) = authority(view.clone(), crate::dns::Lease::forever(), Some((1, slip)));
            let source = SocketAddr::from(([192, 0, 2, 1], 5353));
            for round in 0..3 {
                let by_handler = futures::executor::block_on(slow.answer_raw(
                    query.clone(),
                    source,
                    hickory_server::net::xfer::Protocol::Udp,
                ));
                let by_fast = fast_answer(&table, &fast, &query).expect("fast-pathed");
                match by_handler {
                    Some(wire) => assert_eq!(by_fast, wire, "round {round} slip {slip}"),
                    None => assert!(by_fast.is_empty(), "round {round} slip {slip}: dropped"),
                }
            }
        }
    }
}

#[test]
fn mangled_queries_never_panic_and_fast_answers_still_equal_the_handlers() {
    let (config, _dir) = small_config();
    let view = ZoneView::build(&config, &decided(), true);
    let (authority, _sender) = authority(view.clone(), crate::dns::Lease::forever(), None);
    let table = super::fast::FastTable::build(Arc::new(view.clone()));
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let base = raw_query(5, [1, 0], "db.svc.example.", 1, Some((1232, true, &cookie)));
    let mut mangled: Vec<Vec<u8>> = (0..base.len()).map(|n| base[..n].to_vec()).collect();
    for at in 0..base.len() {
        for bit in 0..8 {
            let mut flipped = base.clone();
            flipped[at] ^= 1 << bit;
            mangled.push(flipped);
        }
    }
    let mut longer = base.clone();
    longer.push(0);
    mangled.push(longer);
    for query in mangled {
        if let Some(fast) = fast_answer(&table, &authority, &query) {
            let slow = super::answer(Arc::new(view.clone()), &query, super::Transport::Udp);
            assert_eq!(Some(fast), slow, "query {query:02x?}");
        }
    }
}

// Found by the dns_request fuzz target: a question whose name ends in a
// compression pointer to offset 2 (the header). hickory echoes the question
// as received, so the answer's pointer landed on its own flags (0x80, an
// invalid label code) and no client could decode it. Such a query is
// malformed: FORMERR, without the question, over either transport.
#[test]
fn a_compressed_question_name_gets_formerr_without_the_question() {
    // The fuzzer's input, with the ID set to the one `assert_header` expects.
    let crash: &[u8] = &[
        0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 0, 4, 0, 2, 2, 2, 2, 2, 2, 2, 192, 2, 2, 2, 2,
        2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 96, 2,
        2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 38, 0, 0, 0, 0, 0, 7, 101, 120,
        97, 109, 112, 108, 101, 0, 101, 120, 97, 111, 112, 108, 101, 0, 1, 0, 1,
    ];
    let view = Arc::new(ZoneView::build(&small_config().0, &decided(), true));
    for transport in [super::Transport::Udp, super::Transport::Tcp] {
        let raw = super::answer(view.clone(), crash, transport).expect("an answer");
        let reply = Message::from_vec(&raw).expect("decodable");
        assert_header(&reply, ResponseCode::FormErr, false);
        assert!(reply.queries.is_empty(), "no questions echoed: {reply:?}");
        assert_eq!(raw.get(..2), Some(&crash[..2]), "the ID is echoed");
    }
    // An ordinary query still gets its answer.
    let plain = query("db.svc.example.", RecordType::A)
        .to_vec()
        .expect("encode");
    let raw = super::answer(view, &plain, super::Transport::Udp).expect("an answer");
    let reply = Message::from_vec(&raw).expect("decodable");
    assert_header(&reply, ResponseCode::NoError, true);
}

/// Sends `count` copies of `question` from `from` and sorts the replies
/// into full and truncated ones.
async fn udp_burst(server: SocketAddr, from: &str, question: &[u8], count: u64) -> (u64, u64) {
    let socket = UdpSocket::bind(from).await.expect("bind");
    for _ in 0..count {
        socket.send_to(question, server).await.expect("send");
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = vec![0; 4096];
    while let Ok(received) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
    {
        let (len, _) = received.expect("recv");
        let reply = Message::from_vec(&buf[..len]).expect("decodable");
        if reply.metadata.truncation {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    (full, truncated)
}

#[tokio::test]
async fn loopback_is_exempt_from_the_rate_limit_by_default_and_others_are_not() {
    // Regression: every 127.0.0.0/24 source shared one budget, so a local
    // flood from 127.0.0.1 starved the stub resolver at 127.0.0.53.
    let (config, _dir) = small_config();
    let limits = Limits {
        rate_limit: 2,
        rate_limit_slip: 1,
        ..Limits::default()
    };
    assert_eq!(
        limits.rate_limit_exempt,
        crate::config::DEFAULT_RATE_LIMIT_EXEMPT
    );
    let view = ZoneView::build(&config, &decided(), true);
    let server = Harness::spawn(view, crate::dns::Lease::forever(), None, limits).await;
    let question = query_edns("db.svc.example.", RecordType::A, 1232, false)
        .to_vec()
        .expect("encode");
    // Both through the fast path (db A) and the handler (the apex MX).
    let handler_question = query("svc.example.", RecordType::MX)
        .to_vec()
        .expect("encode");
    for question in [&question, &handler_question] {
        for from in ["127.0.0.1:0", "127.0.0.53:0"] {
            let (full, truncated) = udp_burst(server.udp, from, question, 20).await;
            assert_eq!((full, truncated), (20, 0), "from {from}");
        }
    }
    server.stop().await;

    // Without the exemption the same burst is limited, fast path or not.
    let limits = Limits {
        rate_limit: 2,
        rate_limit_slip: 1,
        rate_limit_exempt: vec!["127.0.0.53".parse().expect("a prefix")],
        ..Limits::default()
    };
    let view = ZoneView::build(&config, &decided(), true);
    let server = Harness::spawn(view, crate::dns::Lease::forever(), None, limits).await;
    for question in [&question, &handler_question] {
        let (full, truncated) = udp_burst(server.udp, "127.0.0.1:0", question, 20).await;
        assert!(
            full <= 3 && full + truncated == 20,
            "{full} full, {truncated} TC"
        );
        // The exempt neighbour in the same /24 is still answered in full.
        let exempt = udp_burst(server.udp, "127.0.0.53:0", question, 20).await;
        assert_eq!(exempt, (20, 0));
    }
    server.stop().await;
}

#[test]
fn limits_carry_the_dns_tables_exemptions_prefixes_and_per_source_cap() {
    let (mut config, _dir) = small_config();
    config.dns.rate_limit_exempt = vec!["192.0.2.0/24".parse().expect("a prefix")];
    config.dns.rate_limit_ipv4_prefix = 32;
    config.dns.rate_limit_ipv6_prefix = 64;
    config.dns.tcp_max_connections_per_source = 3;
    let limits = Limits::from(&config.dns);
    assert_eq!(limits.rate_limit_exempt, config.dns.rate_limit_exempt);
    assert_eq!(
        (
            limits.rate_limit_ipv4_prefix,
            limits.rate_limit_ipv6_prefix,
            limits.tcp_max_connections_per_source
        ),
        (32, 64, 3)
    );
}

/// The seed inputs of the `dns_request` fuzz target, by file name.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dns_request");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("the fuzz corpus")
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read(&path).expect("a corpus file"))
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn the_udp_answerer_answers_hot_questions_fast_and_the_rest_by_the_handler() {
    use super::{UdpAnswer, UdpAnswerer, UdpBudget};
    let (config, _dir) = small_config();
    let view = Arc::new(ZoneView::build(&config, &decided(), true));
    let answerers = [
        (true, UdpBudget::Unlimited),
        (false, UdpBudget::Unlimited),
        (true, UdpBudget::Spent),
        (false, UdpBudget::Spent),
    ]
    .map(|(held, budget)| {
        let lease = if held {
            crate::dns::Lease::forever()
        } else {
            crate::dns::Lease::new()
        };
        UdpAnswerer::new(Arc::clone(&view), lease, budget)
    });
    let seeds = fuzz_seeds();
    assert!(seeds.len() > 30, "{} seeds", seeds.len());
    for (name, seed) in seeds {
        // As the fuzz target picks them: the ID's second byte.
        let id = seed.get(1).copied().unwrap_or(0);
        let lapsed = id & 0x01 != 0;
        let spent = id & 0x80 != 0;
        let answerer = &answerers[usize::from(lapsed) + 2 * usize::from(spent)];
        let answer = answerer.answer(&seed);
        let by_handler = answerer.handler_answer(&seed);
        match &answer {
            UdpAnswer::Fast(fast) => {
                assert_eq!(Some(fast), by_handler.as_ref(), "{name}");
                let reply = Message::from_vec(fast).expect("decodable");
                assert_eq!(reply.metadata.truncation, spent, "{name}");
            }
            UdpAnswer::Handler(wire) => assert_eq!(wire, &by_handler, "{name}"),
            UdpAnswer::FastDropped => panic!("{name}: dropped with slip 1"),
        }
        // The seeds made for the fast path reach it, except service names
        // under a lapsed lease, which are the handler's (SERVFAIL); ANY is
        // always the handler's.
        if name.starts_with("handler_") {
            assert!(matches!(answer, UdpAnswer::Handler(Some(_))), "{name}");
            continue;
        }
        if !["fast_", "lapsed_", "spent_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            continue;
        }
        let service = !name.contains("apex");
        assert_eq!(
            matches!(answer, UdpAnswer::Fast(_)),
            !(lapsed && service),
            "{name}: {answer:?}"
        );
        if lapsed && service {
            let reply = Message::from_vec(&by_handler.expect("an answer")).expect("decodable");
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::ServFail,
                "{name}"
            );
        }
    }
}
