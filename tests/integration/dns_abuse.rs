//! The DNS server under abuse, measured on a real node over loopback: a UDP
//! flood from one prefix against a client on another, a flood beside an
//! exempt client in the same prefix, ANY, more TCP connections than the
//! cap, one source holding more than its share, idle and slowloris
//! connections, and oversized API bodies. Each test prints what it measured (`--nocapture` shows it)
//! and asserts behaviour; timings only within generous bounds.
//!
//! Every packet goes to 127.0.0.0/8. Clients bind distinct loopback
//! addresses (Linux routes the whole /8 to `lo`) in different /24s, which
//! the rate limit treats as different clients. Loopback is exempt from the
//! rate limit by default, so the tests that flood set their own exemptions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::harness::{
    ConfigDir, Instance, RunningNode, ZONE, answer, eventually, one_node_config, start_node,
};

/// The API token the test config names, for the body-size check.
const API_TOKEN: &str = "dns-abuse-test-token-0123456789";

/// A one-node cluster serving `app` with `[dns]` extended by `dns_keys`.
struct AbuseNode {
    node: RunningNode,
    _instance: Instance,
    _dir: ConfigDir,
}

impl AbuseNode {
    async fn start(dns_keys: &str) -> Result<AbuseNode> {
        let instance = Instance::start("primary").await?;
        let dir = ConfigDir::new()?;
        std::fs::write(dir.path().join("api.token"), API_TOKEN)?;
        let config = one_node_config(&[&instance], "manual", "127.0.0.1:0").replace(
            "[dns]\n",
            &format!("[api]\ntoken_file = \"api.token\"\n\n[dns]\n{dns_keys}\n"),
        );
        let node = start_node(&dir.write(&config)?).await?;
        Ok(AbuseNode {
            node,
            _instance: instance,
            _dir: dir,
        })
    }

    /// Waits until `app` is decided, so service names are answered.
    async fn decided(&self) -> Result<()> {
        let dns = self.node.dns;
        eventually(Duration::from_secs(10), "the first decision", || async {
            Ok(answer(dns).await?.map(|_| ()))
        })
        .await
    }

    /// The value of one `/metrics` series (name and labels, as rendered).
    async fn metric(&self, series: &str) -> Result<u64> {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("http://{}/metrics", self.node.api))
            .send()
            .await?
            .text()
            .await?;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .with_context(|| format!("no {series} in /metrics:\n{text}"))
    }

    async fn stop(self) -> Result<()> {
        self.node.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.node.task).await???;
        Ok(())
    }
}

/// A question as wire bytes, with an OPT (as resolvers send) when `edns`.
fn question(id: u16, name: &str, rtype: RecordType, edns: bool) -> Result<Vec<u8>> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(Name::from_ascii(name)?, rtype));
    if edns {
        message.set_edns(Edns::new());
    }
    Ok(message.to_vec()?)
}

/// Sends `message` on a fresh TCP connection and returns the answer.
async fn tcp_query(server: SocketAddr, message: &[u8]) -> Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    tcp_exchange(&mut stream, message).await
}

/// One framed query and its framed answer on `stream`, within 2 s.
async fn tcp_exchange(stream: &mut TcpStream, message: &[u8]) -> Result<Message> {
    let mut framed = u16::try_from(message.len())?.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await?;
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let mut length = [0; 2];
        stream.read_exact(&mut length).await?;
        let mut body = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut body).await?;
        anyhow::Ok(body)
    })
    .await
    .context("no TCP answer within 2 s")??;
    Ok(Message::from_vec(&answer)?)
}

/// Waits (at most `limit`) for the server to close `stream` (EOF or reset)
/// without sending anything.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<()> {
    let mut buf = [0; 512];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(_)) => bail!("the server answered on a connection it should close"),
        Err(_) => bail!("the connection was still open after {limit:?}"),
    }
}

/// Flood size: bounded in count and time, and paced so that what limits the
/// flood is the server's policy, not a full socket buffer.
const FLOOD_QUERIES: u64 = 10_000;
const FLOOD_BATCH: u64 = 50;
const FLOOD_TICK: Duration = Duration::from_millis(10);
const FLOOD_MAX_TIME: Duration = Duration::from_secs(5);
/// The other client asks this often while the flood runs.
const VICTIM_EVERY: Duration = Duration::from_millis(50);
const RATE_LIMIT: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_prefix_is_limited_while_a_client_on_another_is_answered() -> Result<()> {
    let node = AbuseNode::start(&format!(
        "rate_limit = {RATE_LIMIT}\nrate_limit_slip = 2\nrate_limit_exempt = []"
    ))
    .await?;
    node.decided().await?;
    let dns = node.node.dns;
    let flood = Arc::new(UdpSocket::bind("127.0.1.1:0").await?);
    let victim = UdpSocket::bind("127.0.2.1:0").await?;
    let query = question(0xf100, &format!("app.{ZONE}"), RecordType::A, true)?;

    // Replies to the flood, counted by kind as they come back.
    let full = Arc::new(AtomicU64::new(0));
    let truncated = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (flood, full, truncated) = (flood.clone(), full.clone(), truncated.clone());
        tokio::spawn(async move {
            let mut buf = [0; 2048];
            // Ends when no reply has come for a while after the flood.
            while let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(500), flood.recv_from(&mut buf)).await
            {
                // TC is bit 1 of the third header byte.
                match buf.get(2).filter(|_| len >= 12) {
                    Some(flags) if flags & 0x02 != 0 => truncated.fetch_add(1, Ordering::Relaxed),
                    Some(_) => full.fetch_add(1, Ordering::Relaxed),
                    None => 0,
                };
            }
        })
    };

    let start = Instant::now();
    let sender = {
        let (flood, query) = (flood.clone(), query.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            let mut tick = tokio::time::interval(FLOOD_TICK);
            while sent < FLOOD_QUERIES && start.elapsed() < FLOOD_MAX_TIME {
                tick.tick().await;
                for _ in 0..FLOOD_BATCH {
                    flood.send_to(&query, dns).await?;
                    sent += 1;
                }
            }
            anyhow::Ok(sent)
        })
    };

    // The other client: one query at a time, each waited for up to 1 s.
    let (mut asked, mut answered) = (0u16, 0u16);
    let mut buf = [0; 2048];
    while !sender.is_finished() {
        let id = 0x1000 + asked;
        asked += 1;
        victim
            .send_to(
                &question(id, &format!("app.{ZONE}"), RecordType::A, true)?,
                dns,
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(deadline, victim.recv_from(&mut buf)).await
        {
            let reply = Message::from_vec(&buf[..len])?;
            if reply.metadata.id == id {
                ensure!(!reply.metadata.truncation, "the other client was limited");
                ensure!(reply.metadata.response_code == ResponseCode::NoError);
                answered += 1;
                break;
            }
        }
        tokio::time::sleep(VICTIM_EVERY).await;
    }
    let sent = sender.await??;
    let elapsed = start.elapsed();
    receiver.await?;
    let (full, truncated) = (
        full.load(Ordering::Relaxed),
        truncated.load(Ordering::Relaxed),
    );
    let dropped = node
        .metric("highlander_dns_rate_limited_total{action=\"dropped\"}")
        .await?;
    let slipped = node
        .metric("highlander_dns_rate_limited_total{action=\"slipped\"}")
        .await?;
    node.stop().await?;

    let seconds = elapsed.as_secs_f64();
    let victim_rate = f64::from(answered) / f64::from(asked.max(1));
    eprintln!(
        "dns_abuse | UDP flood from 127.0.1.1 (rate_limit {RATE_LIMIT}/s, slip 2)\n\
         dns_abuse |   flood sent        {sent:>6} in {seconds:.2} s ({:.0} q/s)\n\
         dns_abuse |   answered in full  {full:>6} ({:.0}/s)\n\
         dns_abuse |   slipped (TC=1)    {slipped:>6} (received {truncated})\n\
         dns_abuse |   dropped           {dropped:>6}\n\
         dns_abuse |   client 127.0.2.1  {answered:>6} of {asked} answered ({:.1}%)",
        sent as f64 / seconds,
        full as f64 / seconds,
        victim_rate * 100.0,
    );

    // The flood got its budget (one second's burst plus the rate), no more:
    // 25% slack for the tail of the flood and scheduling.
    let budget = RATE_LIMIT as f64 * (seconds + 1.0) * 1.25;
    ensure!(
        (full as f64) <= budget,
        "{full} full answers, budget {budget:.0}"
    );
    ensure!(full >= RATE_LIMIT, "the flood still gets its rate: {full}");
    ensure!(
        dropped > 0 && slipped > 0,
        "dropped {dropped}, slipped {slipped}"
    );
    // Every limited response is either dropped or slipped, one in two slips.
    ensure!(
        slipped.abs_diff(dropped) <= dropped / 10 + 1,
        "slip 2: dropped {dropped}, slipped {slipped}"
    );
    ensure!(
        full + slipped + dropped <= sent,
        "more responses than queries: {full} + {slipped} + {dropped} > {sent}"
    );
    ensure!(
        victim_rate >= 0.9,
        "the other client got {answered} of {asked} answers"
    );
    Ok(())
}

/// Replies to a paced burst from one source, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Burst {
    sent: u64,
    full: u64,
    truncated: u64,
}

/// Sends `count` copies of `query` from `from` to `server`, `FLOOD_BATCH`
/// every `FLOOD_TICK` (so the server's policy, not a socket buffer, is what
/// limits), while counting the replies until none has come for 500 ms.
async fn paced_burst(from: &str, server: SocketAddr, query: Vec<u8>, count: u64) -> Result<Burst> {
    let socket = Arc::new(UdpSocket::bind(from).await?);
    let receiver = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let (mut full, mut truncated) = (0, 0);
            let mut buf = [0; 2048];
            while let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
            {
                match buf.get(2).filter(|_| len >= 12) {
                    Some(flags) if flags & 0x02 != 0 => truncated += 1,
                    Some(_) => full += 1,
                    None => {}
                }
            }
            (full, truncated)
        })
    };
    let mut sent = 0;
    let mut tick = tokio::time::interval(FLOOD_TICK);
    while sent < count {
        tick.tick().await;
        for _ in 0..FLOOD_BATCH.min(count - sent) {
            socket.send_to(&query, server).await?;
            sent += 1;
        }
    }
    let (full, truncated) = receiver.await?;
    Ok(Burst {
        sent,
        full,
        truncated,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_client_is_never_limited_while_a_flood_from_its_own_prefix_is() -> Result<()> {
    // The case the exemption is for: a local stub resolver at 127.0.0.53
    // shares 127.0.0.0/24 with whatever floods from 127.0.0.1.
    const RATE: u64 = 50;
    const QUERIES: u64 = 500;
    let node = AbuseNode::start(&format!(
        "rate_limit = {RATE}\nrate_limit_slip = 2\nrate_limit_exempt = [\"127.0.0.53\"]"
    ))
    .await?;
    node.decided().await?;
    let dns = node.node.dns;
    let query = question(0xe100, &format!("app.{ZONE}"), RecordType::A, true)?;
    let start = Instant::now();
    let (flood, stub) = tokio::join!(
        paced_burst("127.0.0.1:0", dns, query.clone(), QUERIES),
        paced_burst("127.0.0.53:0", dns, query, QUERIES),
    );
    let (flood, stub) = (flood?, stub?);
    let seconds = start.elapsed().as_secs_f64();
    let dropped = node
        .metric("highlander_dns_rate_limited_total{action=\"dropped\"}")
        .await?;
    let slipped = node
        .metric("highlander_dns_rate_limited_total{action=\"slipped\"}")
        .await?;
    node.stop().await?;
    eprintln!(
        "dns_abuse | rate_limit {RATE}/s, 127.0.0.53 exempt, both sending {QUERIES} in {seconds:.2} s\n\
         dns_abuse |   flood 127.0.0.1   {:>4} full, {:>4} truncated\n\
         dns_abuse |   stub 127.0.0.53   {:>4} full, {:>4} truncated\n\
         dns_abuse |   limited           {dropped} dropped, {slipped} slipped",
        flood.full, flood.truncated, stub.full, stub.truncated,
    );
    // The flood got its budget, no more (25% slack for scheduling) ...
    let budget = RATE as f64 * (seconds + 1.0) * 1.25;
    ensure!(
        (flood.full as f64) <= budget && dropped > 0 && slipped > 0,
        "the flood was not limited: {flood:?}, budget {budget:.0}"
    );
    // ... while the exempt client beside it, asking as fast, got every
    // answer in full: far beyond what the limit would have let through.
    ensure!(
        stub.truncated == 0,
        "the exempt client was limited: {stub:?}"
    );
    ensure!(
        stub.full as f64 >= stub.sent as f64 * 0.95 && stub.full as f64 > budget,
        "the exempt client got {} of {} answers",
        stub.full,
        stub.sent
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_is_answered_with_one_rrset_over_udp_and_tcp() -> Result<()> {
    let node = AbuseNode::start("").await?;
    node.decided().await?;
    let dns = node.node.dns;
    let mut rows = Vec::new();
    for (name, expected) in [
        (ZONE.to_owned(), RecordType::SOA),
        (format!("app.{ZONE}"), RecordType::CNAME),
    ] {
        let any = question(7, &name, RecordType::ANY, true)?;
        let udp = crate::harness::query(dns, &name, RecordType::ANY).await?;
        let tcp = tcp_query(dns, &any).await?;
        for (transport, reply) in [("UDP", &udp), ("TCP", &tcp)] {
            ensure!(
                reply.metadata.response_code == ResponseCode::NoError,
                "{reply:?}"
            );
            let types: Vec<RecordType> = reply.answers.iter().map(|r| r.record_type()).collect();
            ensure!(
                types == [expected],
                "ANY {name} over {transport}: {types:?}"
            );
            ensure!(
                reply.authorities.is_empty() && reply.additionals.is_empty(),
                "{reply:?}"
            );
        }
        rows.push((name, expected, udp.to_vec()?.len(), tcp.to_vec()?.len()));
    }
    node.stop().await?;

    eprintln!("dns_abuse | ANY (RFC 8482): one RRset, UDP and TCP alike");
    for (name, rtype, udp, tcp) in rows {
        eprintln!(
            "dns_abuse |   ANY {name:<16} -> {rtype} only, {udp} B over UDP, {tcp} B over TCP"
        );
    }
    Ok(())
}

const TCP_CAP: usize = 4;
const TCP_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_over_the_cap_are_closed_and_idle_or_slow_ones_time_out() -> Result<()> {
    let node = AbuseNode::start(&format!(
        "tcp_max_connections = {TCP_CAP}\ntcp_timeout = \"{}ms\"",
        TCP_TIMEOUT.as_millis()
    ))
    .await?;
    let dns = node.node.dns;
    let soa = question(9, ZONE, RecordType::SOA, false)?;

    // Fill the cap; an answer on each proves the server holds it open.
    let mut held = Vec::new();
    for _ in 0..TCP_CAP {
        let mut stream = TcpStream::connect(dns).await?;
        tcp_exchange(&mut stream, &soa).await?;
        held.push((stream, Instant::now()));
    }
    // Every connection beyond it is closed without an answer, at once.
    let mut extra_close = Duration::ZERO;
    for _ in 0..6 {
        let connecting = Instant::now();
        let mut stream = TcpStream::connect(dns).await?;
        let mut framed = u16::try_from(soa.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&soa);
        // The server may already have closed it; then writing fails.
        let _ = stream.write_all(&framed).await;
        closed_within(&mut stream, TCP_TIMEOUT / 2).await?;
        extra_close = extra_close.max(connecting.elapsed());
    }
    let refused = node.metric("highlander_dns_tcp_refused_total").await?;
    ensure!(refused == 6, "{refused} connections counted as refused");

    // The held ones, idle since their answer, are closed at the timeout.
    let mut idle_close = Duration::ZERO;
    for (stream, answered_at) in &mut held {
        closed_within(stream, TCP_TIMEOUT * 4).await?;
        idle_close = idle_close.max(answered_at.elapsed());
    }
    // Which frees the slots: a fresh client is answered again.
    let reply = tcp_query(dns, &soa).await?;
    ensure!(reply.metadata.response_code == ResponseCode::NoError);

    // Slowloris: a frame that never completes, one byte every 100 ms,
    // is closed at the timeout although bytes keep arriving.
    let (mut reader, mut writer) = TcpStream::connect(dns).await?.into_split();
    let trickle = tokio::spawn(async move {
        let mut frame = vec![0, 200];
        frame.resize(202, 0x5a);
        for byte in frame {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let mut buf = [0; 16];
    let slow_close = match tokio::time::timeout(TCP_TIMEOUT * 4, reader.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => start.elapsed(),
        Ok(Ok(_)) => bail!("the server answered a partial frame"),
        Err(_) => bail!(
            "a slowloris connection was still open after {:?}",
            TCP_TIMEOUT * 4
        ),
    };
    trickle.abort();
    node.stop().await?;

    eprintln!(
        "dns_abuse | TCP (tcp_max_connections {TCP_CAP}, tcp_timeout {TCP_TIMEOUT:?})\n\
         dns_abuse |   connections held open     {TCP_CAP}, each answered\n\
         dns_abuse |   extra connections         6 closed unanswered within {extra_close:?} (counted {refused})\n\
         dns_abuse |   idle connections closed   {idle_close:?} after their answer\n\
         dns_abuse |   slowloris closed          {slow_close:?} after connecting\n\
         dns_abuse |   fresh client afterwards   answered"
    );
    // Generous bounds: closed by the timeout, not by something else early.
    ensure!(
        idle_close >= TCP_TIMEOUT.mul_f64(0.9),
        "idle closed after {idle_close:?}"
    );
    ensure!(
        slow_close >= TCP_TIMEOUT.mul_f64(0.9),
        "slowloris closed after {slow_close:?}"
    );
    Ok(())
}

/// A TCP connection to `server` from the loopback address `from`.
async fn tcp_connect_from(from: &str, server: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse()?)?;
    Ok(socket.connect(server).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_held_to_its_tcp_share_while_another_still_gets_in() -> Result<()> {
    // Regression: the cap was global only, so one source could hold every
    // slot (renewing each with a query before its timeout) and shut out the
    // TCP retries that truncated UDP answers depend on.
    const CAP: usize = 8;
    const PER_SOURCE: usize = 3;
    let node = AbuseNode::start(&format!(
        "tcp_max_connections = {CAP}\ntcp_max_connections_per_source = {PER_SOURCE}\ntcp_timeout = \"5s\""
    ))
    .await?;
    let dns = node.node.dns;
    let soa = question(11, ZONE, RecordType::SOA, false)?;

    // The hog takes its share; an answer on each proves it is held open.
    let mut held = Vec::new();
    for _ in 0..PER_SOURCE {
        let mut stream = tcp_connect_from("127.0.1.1", dns).await?;
        tcp_exchange(&mut stream, &soa).await?;
        held.push(stream);
    }
    // More from it, or from anywhere in its /24, are closed unanswered
    // although the global cap has room.
    for from in ["127.0.1.1", "127.0.1.1", "127.0.1.200"] {
        let mut stream = tcp_connect_from(from, dns).await?;
        let mut framed = u16::try_from(soa.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&soa);
        let _ = stream.write_all(&framed).await;
        closed_within(&mut stream, Duration::from_secs(1))
            .await
            .with_context(|| format!("connection {} from {from}", held.len() + 1))?;
    }
    let refused = node.metric("highlander_dns_tcp_refused_total").await?;
    ensure!(refused == 3, "{refused} connections counted as refused");
    // Renewing its connections with queries gains the hog nothing ...
    for stream in &mut held {
        tcp_exchange(stream, &soa).await?;
    }
    // ... while another source still connects and is answered.
    let mut other = tcp_connect_from("127.0.2.1", dns).await?;
    let reply = tcp_exchange(&mut other, &soa).await?;
    ensure!(reply.metadata.response_code == ResponseCode::NoError);

    // Closing one of the hog's connections gives its slot back.
    drop(held.pop());
    let reopened = eventually(
        Duration::from_secs(3),
        "a freed per-source slot",
        || async {
            let mut stream = tcp_connect_from("127.0.1.1", dns).await?;
            Ok(tcp_exchange(&mut stream, &soa).await.ok().map(|_| stream))
        },
    )
    .await?;
    let refused_total = node.metric("highlander_dns_tcp_refused_total").await?;
    drop((held, other, reopened));
    node.stop().await?;
    eprintln!(
        "dns_abuse | TCP per source (tcp_max_connections {CAP}, per source {PER_SOURCE})\n\
         dns_abuse |   127.0.1.0/24 held {PER_SOURCE}, 3 more closed unanswered (counted {refused})\n\
         dns_abuse |   127.0.2.1 connected and answered meanwhile\n\
         dns_abuse |   a closed connection's slot reused ({refused_total} refused in all)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bodies_over_4_kib() -> Result<()> {
    let node = AbuseNode::start("").await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{}/v1/services/app/switchover", node.node.api);
    let mut statuses = Vec::new();
    for size in [
        highlander::api::MAX_BODY,
        highlander::api::MAX_BODY + 1,
        1 << 20,
    ] {
        let status = client
            .post(&url)
            .header("authorization", format!("Bearer {API_TOKEN}"))
            .header("content-type", "application/json")
            .body(vec![b' '; size])
            .send()
            .await?
            .status()
            .as_u16();
        statuses.push((size, status));
    }
    node.stop().await?;
    eprintln!(
        "dns_abuse | API request bodies (limit {} B)",
        highlander::api::MAX_BODY
    );
    for (size, status) in &statuses {
        eprintln!("dns_abuse |   {size:>8} B -> HTTP {status}");
    }
    let [(_, at_limit), (_, over), (_, huge)] = statuses[..] else {
        bail!("three sizes were sent");
    };
    ensure!(
        at_limit != 413,
        "a body at the limit is read (and judged on its content)"
    );
    ensure!(over == 413 && huge == 413, "{statuses:?}");
    Ok(())
}
