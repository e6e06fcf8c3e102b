//! Health checks: hysteresis exactly, real probers against servers and
//! programs started here, and the checker's schedule under tokio's paused clock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::substitute;
use super::*;
use crate::config::{
    CheckConfig, CheckKind, ClusterConfig, Config, DnsConfig, Failback, HealthQuorum,
    InstanceConfig, OnMinority, ServiceConfig, StatusMatcher, Target,
};
use crate::model::Verdict;

// ---------------------------------------------------------------- fixtures

fn instance(name: &str, address: &str) -> InstanceConfig {
    InstanceConfig {
        name: name.into(),
        address: address.into(),
        target: Target::A([10, 0, 0, 1].into()),
        priority: 1,
    }
}

fn check(kind: CheckKind, timeout: Duration) -> CheckConfig {
    CheckConfig {
        kind,
        interval: Duration::from_secs(1),
        timeout,
        rise: 2,
        fall: 3,
    }
}

fn service(name: &str, check: CheckConfig, instances: Vec<InstanceConfig>) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        failback: Failback::Auto,
        failback_delay: Duration::from_secs(30),
        check,
        instances,
    }
}

fn config(services: Vec<ServiceConfig>) -> Config {
    Config {
        file: PathBuf::from("test.toml"),
        cluster: ClusterConfig {
            data_dir: PathBuf::from("data"),
            secret_file: PathBuf::from("secret"),
            secret: b"0123456789abcdef".to_vec(),
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            name: "test".into(),
            lease: Duration::from_secs(2),
            health_quorum: HealthQuorum::Majority,
            nodes: Vec::new(),
            tls: None,
        },
        dns: DnsConfig {
            zone: "svc.example.".into(),
            ttl: Duration::from_secs(5),
            hostmaster: "hostmaster.svc.example.".into(),
            on_minority: OnMinority::Servfail,
            rate_limit: 0,
            rate_limit_slip: 0,
            rate_limit_exempt: Vec::new(),
            rate_limit_ipv4_prefix: 24,
            rate_limit_ipv6_prefix: 56,
            tcp_timeout: Duration::from_secs(5),
            tcp_max_connections: 100,
            tcp_max_connections_per_source: 16,
        },
        api: None,
        services,
        hooks: Vec::new(),
        publish: Vec::new(),
    }
}

fn http(path: &str) -> CheckKind {
    CheckKind::Http {
        https: false,
        path: path.into(),
        host: None,
        expect_status: StatusMatcher::single(200),
        body_contains: None,
    }
}

/// `StatusMatcher` is built only by config validation, so lists and ranges
/// come from a parsed file, as in production.
fn status_matcher(expect_status: &str) -> StatusMatcher {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").expect("write secret");
    let text = format!(
        r#"
[cluster]
secret_file = "secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"
[dns]
zone = "svc.example."
[[services]]
name = "web"
[services.check]
kind = "http"
expect_status = {expect_status}
[[services.instances]]
name = "web1"
address = "127.0.0.1:80"
a = "127.0.0.1"
"#
    );
    let config = Config::parse(&dir.path().join("highlander.toml"), &text).expect("valid config");
    match &config.services[0].check.kind {
        CheckKind::Http { expect_status, .. } => expect_status.clone(),
        other => panic!("expected an http check, got {other:?}"),
    }
}

async fn probe_once(kind: CheckKind, timeout: Duration, address: &str) -> ProbeReport {
    let service = service("web", check(kind, timeout), vec![instance("web1", address)]);
    let probe = prober(&service).expect("prober builds");
    probe.probe(&service.instances[0]).await
}

// ---------------------------------------------------------------- hysteresis

fn run_hysteresis(rise: u32, fall: u32, outcomes: &[bool]) -> Vec<Option<Verdict>> {
    let mut h = Hysteresis::new(rise, fall);
    outcomes.iter().map(|&ok| h.record(ok)).collect()
}

#[test]
fn hysteresis_starts_unknown() {
    assert_eq!(Hysteresis::new(2, 3).verdict(), Verdict::Unknown);
}

#[test]
fn hysteresis_unknown_to_up_after_rise_successes() {
    assert_eq!(
        run_hysteresis(3, 2, &[true, true, true, true]),
        vec![None, None, Some(Verdict::Up), None]
    );
}

#[test]
fn hysteresis_unknown_to_down_after_fall_failures() {
    assert_eq!(
        run_hysteresis(2, 3, &[false, false, false, false]),
        vec![None, None, Some(Verdict::Down), None]
    );
}

#[test]
fn hysteresis_up_to_down_and_back() {
    let mut h = Hysteresis::new(2, 2);
    assert_eq!((h.record(true), h.record(true)), (None, Some(Verdict::Up)));
    assert_eq!(
        (h.record(false), h.record(false)),
        (None, Some(Verdict::Down))
    );
    assert_eq!(h.verdict(), Verdict::Down);
    assert_eq!((h.record(true), h.record(true)), (None, Some(Verdict::Up)));
    assert_eq!(h.verdict(), Verdict::Up);
}

#[test]
fn hysteresis_flapping_resets_streaks() {
    // Alternating outcomes never reach a threshold of 2 either way.
    let flapping = [true, false, true, false, true, false, true, false];
    assert!(run_hysteresis(2, 2, &flapping).iter().all(Option::is_none));

    // An up instance that flaps stays up: one success resets the failure streak.
    let mut h = Hysteresis::new(1, 3);
    assert_eq!(h.record(true), Some(Verdict::Up));
    for ok in [false, false, true, false, false, true] {
        assert_eq!(h.record(ok), None);
    }
    assert_eq!(h.verdict(), Verdict::Up);
    assert_eq!(h.consecutive_successes(), 1);
    assert_eq!(h.consecutive_failures(), 0);
    assert_eq!(
        (h.record(false), h.record(false), h.record(false)),
        (None, None, Some(Verdict::Down))
    );
    assert_eq!(h.consecutive_failures(), 3);
}

#[test]
fn hysteresis_rise_one_fall_one_follows_every_probe() {
    assert_eq!(
        run_hysteresis(1, 1, &[true, true, false, true, false, false]),
        vec![
            Some(Verdict::Up),
            None,
            Some(Verdict::Down),
            Some(Verdict::Up),
            Some(Verdict::Down),
            None
        ]
    );
}

#[test]
fn hysteresis_zero_thresholds_act_as_one() {
    assert_eq!(
        run_hysteresis(0, 0, &[true, false]),
        vec![Some(Verdict::Up), Some(Verdict::Down)]
    );
}

// ---------------------------------------------------------------- a tiny HTTP server

/// How the test server answers every request.
#[derive(Clone)]
enum Reply {
    Respond {
        status: u16,
        body: String,
    },
    /// Accept, read the request, never answer.
    Hang,
}

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection it came on (0, 1, …).
    connection: usize,
    path: String,
    host: Option<String>,
}

struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A minimal HTTP/1.1 responder on 127.0.0.1:0. It keeps connections open
/// (keep-alive) so that a client that reused them would be caught.
async fn http_server(reply: Reply) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (connections.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(
                stream,
                connection,
                reply.clone(),
                s.clone(),
            ));
        }
    });
    TestServer {
        addr,
        connections,
        seen,
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    connection: usize,
    reply: Reply,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.lines();
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        let host = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_owned());
        seen.lock().expect("lock").push(Seen {
            connection,
            path,
            host,
        });
        match &reply {
            Reply::Hang => {
                // Hold the connection open, answering nothing.
                let _ = stream.read(&mut [0u8; 1]).await;
                std::future::pending::<()>().await;
            }
            Reply::Respond { status, body } => {
                let response = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nLocation: http://127.0.0.1:1/elsewhere\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn respond(status: u16, body: &str) -> Reply {
    Reply::Respond {
        status,
        body: body.into(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- http

#[tokio::test]
async fn http_200_is_healthy() {
    let server = http_server(respond(200, "fine")).await;
    let report = probe_once(http("/health"), TIMEOUT, &server.addr.to_string()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, "HTTP 200");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/health");
    // Without an override the Host header is the address probed.
    assert_eq!(
        seen[0].host.as_deref(),
        Some(server.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn http_503_fails() {
    let server = http_server(respond(503, "overloaded")).await;
    let report = probe_once(http("/"), TIMEOUT, &server.addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(report.detail, "HTTP 503 (expected 200)");
}

#[tokio::test]
async fn http_expect_status_list_and_range() {
    let no_content = http_server(respond(204, "")).await;
    let unavailable = http_server(respond(503, "")).await;
    let redirect = http_server(respond(302, "")).await;
    let with = |spec: &str| CheckKind::Http {
        https: false,
        path: "/".into(),
        host: None,
        expect_status: status_matcher(spec),
        body_contains: None,
    };
    let list = with("[200, 204]");
    assert!(
        probe_once(list.clone(), TIMEOUT, &no_content.addr.to_string())
            .await
            .ok
    );
    let report = probe_once(list, TIMEOUT, &unavailable.addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(report.detail, "HTTP 503 (expected 200, 204)");

    // A redirect is judged by its own status, never followed (its Location
    // points at a closed port).
    let range = with("\"300-399\"");
    let report = probe_once(range.clone(), TIMEOUT, &redirect.addr.to_string()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, "HTTP 302");
    assert!(
        !probe_once(range, TIMEOUT, &no_content.addr.to_string())
            .await
            .ok
    );
}

#[tokio::test]
async fn http_body_contains_matched_and_unmatched() {
    let server = http_server(respond(200, "{\"status\":\"ok\",\"db\":\"up\"}")).await;
    let with = |needle: &str| CheckKind::Http {
        https: false,
        path: "/".into(),
        host: None,
        expect_status: StatusMatcher::single(200),
        body_contains: Some(needle.into()),
    };
    let report = probe_once(with("\"db\":\"up\""), TIMEOUT, &server.addr.to_string()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, "HTTP 200, body matched");
    let report = probe_once(with("\"db\":\"down\""), TIMEOUT, &server.addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(
        report.detail,
        "HTTP 200 but the body does not contain \"\\\"db\\\":\\\"down\\\"\""
    );
}

#[tokio::test]
async fn http_body_is_searched_only_up_to_the_limit() {
    let body = format!("{}needle", "x".repeat(probe::MAX_BODY_BYTES));
    let server = http_server(respond(200, &body)).await;
    let kind = CheckKind::Http {
        https: false,
        path: "/".into(),
        host: None,
        expect_status: StatusMatcher::single(200),
        body_contains: Some("needle".into()),
    };
    let report = probe_once(kind, TIMEOUT, &server.addr.to_string()).await;
    assert!(!report.ok);
    assert!(report.detail.contains("first 64 KiB"), "{report:?}");
}

#[tokio::test]
async fn http_host_header_is_sent() {
    let server = http_server(respond(200, "")).await;
    let kind = CheckKind::Http {
        https: false,
        path: "/status".into(),
        host: Some("db.internal.example".into()),
        expect_status: StatusMatcher::single(200),
        body_contains: None,
    };
    assert!(probe_once(kind, TIMEOUT, &server.addr.to_string()).await.ok);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host.as_deref(), Some("db.internal.example"));
}

#[tokio::test]
async fn http_times_out_on_a_server_that_never_answers() {
    let server = http_server(Reply::Hang).await;
    let timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let report = probe_once(http("/"), timeout, &server.addr.to_string()).await;
    // Generous margin: the point is that it returns, not how precisely.
    assert!(started.elapsed() < timeout + Duration::from_secs(5));
    assert!(!report.ok);
    assert_eq!(report.detail, "timed out after 300ms");
    assert_eq!(server.seen().len(), 1, "the request did reach the server");
}

#[tokio::test]
async fn http_opens_a_new_connection_for_every_probe() {
    let server = http_server(respond(200, "")).await;
    let service = service(
        "web",
        check(http("/"), TIMEOUT),
        vec![instance("web1", &server.addr.to_string())],
    );
    // One prober, as the checker uses it: its client is shared by every probe.
    let probe = prober(&service).expect("prober builds");
    for _ in 0..3 {
        let report = probe.probe(&service.instances[0]).await;
        assert!(report.ok, "{report:?}");
    }
    let seen = server.seen();
    let connections: Vec<usize> = seen.iter().map(|s| s.connection).collect();
    assert_eq!(
        connections,
        vec![0, 1, 2],
        "every probe on its own connection"
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
}

/// A server that answers its first connection's request with `raw` bytes
/// and closes: for answers the usual test server cannot give.
async fn raw_server(raw: &'static [u8]) -> SocketAddr {
    raw_server_in_pieces(vec![raw], Duration::ZERO).await
}

/// [`raw_server`], writing its answer in `pieces` with `pause` between
/// them.
async fn raw_server_in_pieces(pieces: Vec<&'static [u8]>, pause: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if stream.write_all(piece).await.is_err() {
                    return;
                }
            }
        }
    });
    addr
}

/// An interim answer is skipped, whether the answers come at once or in
/// pieces (part of the head read at once after the request, the rest
/// waited for).
#[tokio::test]
async fn http_skips_an_interim_response() {
    let at_once = raw_server(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
    let pieces: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2",
        b"04 No Content\r",
        b"\n\r\n",
    ];
    let in_pieces = raw_server_in_pieces(pieces, Duration::from_millis(30)).await;
    for addr in [at_once, in_pieces] {
        let kind = CheckKind::Http {
            https: false,
            path: "/".into(),
            host: None,
            expect_status: StatusMatcher::single(204),
            body_contains: None,
        };
        let report = probe_once(kind, TIMEOUT, &addr.to_string()).await;
        assert!(report.ok, "{addr}: {report:?}");
        assert_eq!(report.detail, "HTTP 204");
    }
}

#[tokio::test]
async fn http_fails_on_what_is_not_http() {
    let addr = raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    let report = probe_once(http("/"), TIMEOUT, &addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(
        report.detail,
        "not an HTTP response: \"SSH-2.0-OpenSSH_9.2\""
    );
}

#[tokio::test]
async fn http_fails_on_a_connection_closed_without_an_answer() {
    let addr = raw_server(b"").await;
    let report = probe_once(http("/"), TIMEOUT, &addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(report.detail, "connection closed without a response");
}

#[tokio::test]
async fn http_connection_refused() {
    let addr = closed_port().await;
    let report = probe_once(http("/"), TIMEOUT, &addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(report.detail, "connection refused");
}

#[tokio::test]
async fn https_against_a_plain_http_server_fails() {
    let server = http_server(respond(200, "")).await;
    let kind = CheckKind::Http {
        https: true,
        path: "/".into(),
        host: None,
        expect_status: StatusMatcher::single(200),
        body_contains: None,
    };
    let report = probe_once(kind, TIMEOUT, &server.addr.to_string()).await;
    assert!(!report.ok, "{report:?}");
    assert!(!report.detail.is_empty());
}

// ---------------------------------------------------------------- tcp

/// An address where nothing listens: bound, then closed.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

#[tokio::test]
async fn tcp_open_port_is_healthy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let report = probe_once(CheckKind::Tcp, TIMEOUT, &addr.to_string()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, format!("connected to {addr}"));
}

#[tokio::test]
async fn tcp_probe_resets_before_the_instance_accepts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    for _ in 0..3 {
        let report = probe_once(CheckKind::Tcp, TIMEOUT, &addr.to_string()).await;
        assert!(report.ok, "{report:?}");
    }
    // The handshake's last ACK was held back and the reset went first, so
    // the listener never queued a connection for the instance to accept.
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the instance accepted {accepted:?}");
}

/// A listener whose accept queue is full: a new SYN is dropped, so a
/// connection to it stays in progress until the SYN is sent again (after
/// a second) and the queue has room.
async fn full_listener() -> (TcpListener, std::net::TcpStream, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    // A backlog of 0 holds one connection.
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let queued = std::net::TcpStream::connect(addr).expect("fill the queue");
    (listener, queued, addr)
}

#[tokio::test]
async fn tcp_times_out_when_the_handshake_never_completes() {
    let (_listener, _queued, addr) = full_listener().await;
    let timeout = Duration::from_millis(300);
    let report = probe_once(CheckKind::Tcp, timeout, &addr.to_string()).await;
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.detail, "timed out after 300ms");
}

#[tokio::test]
async fn tcp_waits_for_a_handshake_that_completes_late() {
    let (listener, _queued, addr) = full_listener().await;
    // Room in the queue shortly after the probe's first SYN was dropped:
    // its second SYN, a second later, completes the handshake.
    let drain = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = listener.accept().await;
        (listener, first)
    });
    let report = probe_once(CheckKind::Tcp, Duration::from_secs(5), &addr.to_string()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, format!("connected to {addr}"));
    assert!(
        report.took >= Duration::from_millis(500),
        "the handshake was waited for, not seen at once: {report:?}"
    );
    let (_listener, first) = drain.await.expect("drain task");
    first.expect("the queued connection was accepted");
}

#[tokio::test]
async fn tcp_resolves_host_names() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let report = probe_once(CheckKind::Tcp, TIMEOUT, &format!("localhost:{port}")).await;
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn tcp_closed_port_fails() {
    let addr = closed_port().await;
    let report = probe_once(CheckKind::Tcp, TIMEOUT, &addr.to_string()).await;
    assert!(!report.ok);
    assert_eq!(report.detail, "connection refused");
}

// ---------------------------------------------------------------- exec

fn exec(argv: &[&str]) -> CheckKind {
    CheckKind::Exec {
        command: argv.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn exec_exit_status_decides() {
    let report = probe_once(exec(&["true"]), TIMEOUT, "127.0.0.1:80").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, "exit status 0");

    let report = probe_once(exec(&["false"]), TIMEOUT, "127.0.0.1:80").await;
    assert!(!report.ok);
    assert_eq!(report.detail, "exit status 1");

    let script = "echo starting; echo 'replica lag 42s' >&2; exit 3";
    let report = probe_once(exec(&["sh", "-c", script]), TIMEOUT, "127.0.0.1:80").await;
    assert!(!report.ok);
    assert_eq!(report.detail, "exit status 3: replica lag 42s");
}

#[tokio::test]
async fn exec_detail_uses_stdout_when_stderr_is_empty() {
    let report = probe_once(
        exec(&["sh", "-c", "echo one; echo; echo 'all good'"]),
        TIMEOUT,
        "127.0.0.1:80",
    )
    .await;
    assert!(report.ok);
    assert_eq!(report.detail, "exit status 0: all good");
}

#[tokio::test]
async fn exec_output_is_bounded() {
    // 1 MiB of output: drained so the program finishes, but not kept.
    let script = "head -c 1048576 /dev/zero | tr '\\0' 'x'; echo; echo last";
    let report = probe_once(exec(&["sh", "-c", script]), TIMEOUT, "127.0.0.1:80").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.detail, "exit status 0: last");
}

#[tokio::test]
async fn exec_substitutes_placeholders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("args");
    let out_arg = out.to_str().expect("utf-8 temp path");
    let kind = exec(&[
        "sh",
        "-c",
        "printf '%s|%s|%s|%s|%s' \"$1\" \"$2\" \"$3\" \"$4\" \"$5\" > \"$6\"",
        "sh",
        "{service}",
        "{instance}",
        "{address}",
        "{host}",
        "{port}",
        out_arg,
    ]);
    let report = probe_once(kind, TIMEOUT, "[::1]:5432").await;
    assert!(report.ok, "{report:?}");
    let written = std::fs::read_to_string(&out).expect("command wrote its arguments");
    assert_eq!(written, "web|web1|[::1]:5432|::1|5432");
}

#[test]
fn substitution_is_one_pass_and_keeps_unknown_braces() {
    let db = instance("db1", "db1.internal:5432");
    assert_eq!(
        substitute("--target={host}:{port}/{service}", "db", &db),
        "--target=db1.internal:5432/db"
    );
    assert_eq!(substitute("{nope} {} {", "db", &db), "{nope} {} {");
    // A value that looks like a placeholder is not substituted again.
    let odd = instance("x{port}", "10.0.0.1:80");
    assert_eq!(substitute("{instance}", "db", &odd), "x{port}");
}

#[tokio::test]
async fn exec_missing_program_fails_with_a_reason() {
    let report = probe_once(
        exec(&["/nonexistent/highlander-check"]),
        TIMEOUT,
        "127.0.0.1:80",
    )
    .await;
    assert!(!report.ok);
    assert!(report.detail.starts_with("cannot start"), "{report:?}");
}

#[tokio::test]
async fn exec_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let pid_arg = pid_file.to_str().expect("utf-8 temp path");
    let timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let report = probe_once(
        exec(&["sh", "-c", "echo $$ > \"$1\"; exec sleep 10", "sh", pid_arg]),
        timeout,
        "127.0.0.1:80",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "not left to sleep 10 s"
    );
    assert!(!report.ok);
    assert_eq!(report.detail, "timed out after 1s, killed");
    let pid = std::fs::read_to_string(&pid_file).expect("the program recorded its pid");
    let proc_dir = Path::new("/proc").join(pid.trim());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "process {} still exists",
            pid.trim()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` has ended: gone from /proc, or a zombie waiting for
/// a parent (in a container, PID 1 may never reap what it inherits).
fn process_ended(pid: &str) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_process_ended(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).expect("the program recorded a pid");
    let pid = pid.trim();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !process_ended(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_timeout_kills_what_the_check_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let pid_arg = pid_file.to_str().expect("utf-8 temp path");
    let report = probe_once(
        exec(&[
            "sh",
            "-c",
            "sleep 10 & echo $! > \"$1\"; wait",
            "sh",
            pid_arg,
        ]),
        Duration::from_secs(1),
        "127.0.0.1:80",
    )
    .await;
    assert!(!report.ok);
    assert_eq!(report.detail, "timed out after 1s, killed");
    wait_process_ended(&pid_file).await;
}

#[tokio::test]
async fn exec_leaves_nothing_running_after_a_normal_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let pid_arg = pid_file.to_str().expect("utf-8 temp path");
    let report = probe_once(
        exec(&[
            "sh",
            "-c",
            "sleep 10 >/dev/null 2>&1 & echo $! > \"$1\"",
            "sh",
            pid_arg,
        ]),
        TIMEOUT,
        "127.0.0.1:80",
    )
    .await;
    assert!(report.ok, "{report:?}");
    wait_process_ended(&pid_file).await;
}

#[test]
fn exec_with_an_empty_command_is_refused() {
    let svc = service(
        "db",
        check(exec(&[]), TIMEOUT),
        vec![instance("db1", "127.0.0.1:5432")],
    );
    assert!(matches!(
        prober(&svc),
        Err(HealthError::EmptyCommand { service }) if service == "db"
    ));
}

// ---------------------------------------------------------------- the checker

/// What the fake probe does for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Pass,
    Fail,
    /// Never finishes: the checker's own timeout must cut it off.
    Hang,
}

/// A probe that does what each instance is told to, and records when every
/// probe started and how many hung probes were dropped.
struct FakeProbe {
    default: Act,
    acts: Mutex<HashMap<String, Act>>,
    starts: Mutex<Vec<(String, Instant)>>,
    dropped: Arc<AtomicUsize>,
}

impl FakeProbe {
    fn new(default: Act) -> Arc<Self> {
        Arc::new(FakeProbe {
            default,
            acts: Mutex::new(HashMap::new()),
            starts: Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn set(&self, instance: &str, act: Act) {
        self.acts
            .lock()
            .expect("lock")
            .insert(instance.to_owned(), act);
    }

    fn starts_of(&self, instance: &str) -> Vec<Instant> {
        self.starts
            .lock()
            .expect("lock")
            .iter()
            .filter(|(name, _)| name == instance)
            .map(|(_, at)| *at)
            .collect()
    }

    fn start_count(&self) -> usize {
        self.starts.lock().expect("lock").len()
    }
}

/// Counts the hung probes that were dropped.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Probe for FakeProbe {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        let act = self
            .acts
            .lock()
            .expect("lock")
            .get(&instance.name)
            .copied()
            .unwrap_or(self.default);
        self.starts
            .lock()
            .expect("lock")
            .push((instance.name.clone(), Instant::now()));
        let guard = DropCounter(self.dropped.clone());
        async move {
            match act {
                Act::Pass => ProbeReport::ok("pass", Duration::ZERO),
                Act::Fail => ProbeReport::failed("fail", Duration::ZERO),
                Act::Hang => {
                    let _guard = guard;
                    std::future::pending().await
                }
            }
        }
        .boxed()
    }
}

fn fake_config(names: &[&str], timeout: Duration, rise: u32, fall: u32) -> Config {
    let instances = names
        .iter()
        .enumerate()
        .map(|(i, name)| instance(name, &format!("10.0.0.{}:80", i % 250 + 1)))
        .collect();
    let check = CheckConfig {
        kind: CheckKind::Tcp,
        interval: Duration::from_secs(1),
        timeout,
        rise,
        fall,
    };
    config(vec![service("web", check, instances)])
}

fn start(
    config: &Config,
    probe: Arc<FakeProbe>,
) -> (
    watch::Receiver<LocalHealth>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (checker, rx) = Checker::with_probes(config, vec![("web".into(), probe)], 7)
        .expect("every service has a probe");
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(checker.run(cancel.clone()));
    (rx, cancel, handle)
}

/// Waits (in paused time) until `instance` has `verdict`.
async fn wait_verdict(rx: &mut watch::Receiver<LocalHealth>, instance: &str, verdict: Verdict) {
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|h| h.verdict("web", instance) == verdict),
    )
    .await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("the checker stopped before {instance} was {verdict}"),
        Err(_) => panic!("{instance} never became {verdict}"),
    }
}

async fn stop(cancel: CancellationToken, handle: tokio::task::JoinHandle<()>) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run returns promptly after cancel")
        .expect("run does not panic");
}

#[tokio::test(start_paused = true)]
async fn checker_rises_after_rise_probes_and_falls_after_fall() {
    let config = fake_config(&["a"], Duration::from_millis(500), 2, 3);
    let probe = FakeProbe::new(Act::Pass);
    let t0 = Instant::now();
    let (mut rx, cancel, handle) = start(&config, probe.clone());
    assert_eq!(rx.borrow().verdict("web", "a"), Verdict::Unknown);

    wait_verdict(&mut rx, "a", Verdict::Up).await;
    let starts = probe.starts_of("a");
    assert_eq!(starts.len(), 2, "up after exactly rise = 2 probes");
    // First probe within one interval, then exactly one interval apart.
    assert!(starts[0] < t0 + Duration::from_secs(1));
    assert_eq!(starts[1] - starts[0], Duration::from_secs(1));
    {
        let health = rx.borrow();
        let status = health.get("web", "a").expect("a is tracked");
        assert_eq!(status.since, starts[1]);
        assert_eq!(status.consecutive_successes, 2);
        assert_eq!(
            status.last.as_ref().map(|r| r.detail.as_str()),
            Some("pass")
        );
        let view = health.view(starts[1] + Duration::from_secs(5));
        assert_eq!(
            view.get("web", "a"),
            crate::model::InstanceHealth::new(Verdict::Up, Duration::from_secs(5))
        );
    }

    // Probes that change no verdict update the entry without waking receivers.
    rx.borrow_and_update();
    // Half an interval off the schedule, so no probe is due at the wake-up.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!rx.has_changed().expect("checker running"));
    assert_eq!(
        rx.borrow().get("web", "a").map(|s| s.consecutive_successes),
        Some(5)
    );

    probe.set("a", Act::Fail);
    let before = probe.starts_of("a").len();
    wait_verdict(&mut rx, "a", Verdict::Down).await;
    assert_eq!(
        probe.starts_of("a").len(),
        before + 3,
        "down after fall = 3 failures"
    );
    {
        let health = rx.borrow();
        let status = health.get("web", "a").expect("a is tracked");
        assert_eq!(status.consecutive_failures, 3);
        assert_eq!(status.consecutive_successes, 0);
        assert_eq!(status.last.as_ref().map(|r| r.ok), Some(false));
    }
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn checker_with_metrics_records_every_finished_probe() {
    let config = fake_config(&["ok", "bad"], Duration::from_millis(500), 2, 2);
    let probe = FakeProbe::new(Act::Pass);
    probe.set("bad", Act::Hang);
    let metrics = crate::metrics::Metrics::new();
    let (checker, mut rx) = Checker::with_probes(&config, vec![("web".into(), probe)], 7)
        .expect("every service has a probe");
    let checker = checker.with_metrics(metrics.clone());
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(checker.run(cancel.clone()));
    wait_verdict(&mut rx, "ok", Verdict::Up).await;
    wait_verdict(&mut rx, "bad", Verdict::Down).await;
    stop(cancel, handle).await;

    let text = metrics.render(crate::metrics::ScrapeView::default());
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let labels = r#"{service="web",kind="tcp"}"#;
    // Two passes and two timeouts at least; a probe cut off by the stop is
    // not counted.
    let probes = sample(&format!("highlander_probe_duration_seconds_count{labels}"));
    let failures = sample(&format!("highlander_probe_failures_total{labels}"));
    let seconds = sample(&format!("highlander_probe_duration_seconds_sum{labels}"));
    assert!(probes >= 4.0, "{probes} probes");
    assert!(failures >= 2.0, "{failures} failures");
    assert!(seconds >= 1.0, "two timeouts of 500ms take {seconds}s");
}

/// The count and sum of the node-wide probe lag histogram in `metrics`.
fn lag_count_and_sum(metrics: &crate::metrics::Metrics) -> (f64, f64) {
    let text = metrics.render(crate::metrics::ScrapeView::default());
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    (
        sample("highlander_probe_lag_seconds_count"),
        sample("highlander_probe_lag_seconds_sum"),
    )
}

#[tokio::test(start_paused = true)]
async fn probes_on_schedule_record_no_lag() {
    let config = fake_config(&["a", "b", "c"], Duration::from_millis(500), 2, 3);
    let metrics = crate::metrics::Metrics::new();
    let probe = FakeProbe::new(Act::Pass);
    let (checker, _rx) = Checker::with_probes(&config, vec![("web".into(), probe.clone())], 7)
        .expect("every service has a probe");
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(checker.with_metrics(metrics.clone()).run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(5500)).await;
    stop(cancel, handle).await;

    let (count, sum) = lag_count_and_sum(&metrics);
    assert_eq!(
        count,
        probe.start_count() as f64,
        "one lag per probe started"
    );
    assert!(count >= 15.0, "{count} probes");
    // Tokio's timer rounds each deadline up to the next millisecond, which
    // is all the lag a probe on schedule can show.
    assert!(sum <= count * 0.001, "{sum}s of lag over {count} probes");
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_probe_permit_counts_as_lag() {
    // One permit and ten instances whose probes hang to the 500 ms timeout:
    // two probes a second can run, so most wait, and skip ticks.
    let names: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = fake_config(&refs, Duration::from_millis(500), 2, 3);
    let metrics = crate::metrics::Metrics::new();
    let probe = FakeProbe::new(Act::Hang);
    let (checker, _rx) = Checker::with_probes(&config, vec![("web".into(), probe.clone())], 7)
        .expect("every service has a probe");
    let checker = checker
        .with_max_concurrent_probes(1)
        .with_metrics(metrics.clone());
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(checker.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Read before stopping: a stop lets the queued probes take the freed
    // permit one after another, each dropped at once, which is no schedule.
    let (count, sum) = lag_count_and_sum(&metrics);
    let started = probe.start_count() as f64;
    stop(cancel, handle).await;

    assert_eq!(count, started, "one lag per probe started");
    // 10 s at 500 ms a probe: about 20 probes, the schedule asked for 100.
    assert!((19.0..=21.0).contains(&count), "{count} probes");
    // Each probe waits for up to nine others ahead of it in the queue.
    assert!(sum / count >= 0.5, "mean lag {}s", sum / count);
}

/// A probe that passes after `after`, however long that is, and says
/// whether it claims to end within the check's timeout by itself.
struct TakesItsTime {
    after: Duration,
    claims_bounded: bool,
}

impl Probe for TakesItsTime {
    fn probe<'a>(&'a self, _instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        async move {
            tokio::time::sleep(self.after).await;
            ProbeReport::ok("took its time", self.after)
        }
        .boxed()
    }

    fn bounded(&self) -> bool {
        self.claims_bounded
    }
}

#[tokio::test(start_paused = true)]
async fn the_checker_times_out_only_probes_that_do_not_bound_themselves() {
    let config = fake_config(&["i0"], Duration::from_millis(500), 1, 1);
    let mut details = Vec::new();
    for claims_bounded in [false, true] {
        let probe = Arc::new(TakesItsTime {
            after: Duration::from_millis(700),
            claims_bounded,
        });
        let (checker, rx) = Checker::with_probes(&config, vec![("web".into(), probe)], 7)
            .expect("every service has a probe");
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(checker.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let last = rx
            .borrow()
            .get("web", "i0")
            .and_then(|s| s.last.clone())
            .expect("probed");
        stop(cancel, handle).await;
        details.push((claims_bounded, last.ok, last.detail));
    }
    assert_eq!(
        details,
        vec![
            (false, false, "timed out after 500ms".to_owned()),
            // Trusted: no second timer cuts it short.
            (true, true, "took its time".to_owned()),
        ]
    );
}

#[test]
fn the_http_and_tcp_probers_bound_themselves_and_exec_is_guarded() {
    let config = fake_config(&["i0"], Duration::from_millis(500), 1, 1);
    let mut service = config.services[0].clone();
    let mut bounded = Vec::new();
    for kind in [
        CheckKind::Http {
            https: false,
            path: "/health".into(),
            host: None,
            expect_status: crate::config::StatusMatcher::single(200),
            body_contains: None,
        },
        CheckKind::Tcp,
        CheckKind::Exec {
            command: vec!["/bin/true".into()],
        },
    ] {
        service.check.kind = kind;
        let probe = prober(&service).expect("a prober");
        bounded.push((service.check.kind.name(), probe.bounded()));
    }
    assert_eq!(
        bounded,
        vec![("http", true), ("tcp", true), ("exec", false)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_probe_delays_no_other_instance() {
    let config = fake_config(&["fast", "slow"], Duration::from_millis(500), 2, 2);
    let probe = FakeProbe::new(Act::Pass);
    probe.set("slow", Act::Hang);
    let t0 = Instant::now();
    let (mut rx, cancel, handle) = start(&config, probe.clone());

    wait_verdict(&mut rx, "fast", Verdict::Up).await;
    assert!(
        Instant::now() < t0 + Duration::from_secs(2),
        "up within one jitter plus one interval"
    );
    wait_verdict(&mut rx, "slow", Verdict::Down).await;
    {
        let health = rx.borrow();
        let slow = health.get("web", "slow").expect("slow is tracked");
        let last = slow.last.as_ref().expect("slow was probed");
        assert_eq!(last.detail, "timed out after 500ms");
        assert_eq!(last.took, Duration::from_millis(500));
    }
    // Let a few more intervals pass: both keep their own one-second schedule.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["fast", "slow"] {
        let starts = probe.starts_of(name);
        assert!(starts.len() >= 6, "{name} probed {} times", starts.len());
        for pair in starts.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                Duration::from_secs(1),
                "{name} on schedule"
            );
        }
    }
    // Every hung probe was cut off at the timeout, none left running.
    let slow_starts = probe.starts_of("slow").len();
    let dropped = probe.dropped.load(Ordering::SeqCst);
    assert!(
        dropped + 1 >= slow_starts,
        "{dropped} of {slow_starts} dropped"
    );
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn first_probes_are_spread_across_the_interval() {
    let names: Vec<String> = (0..1000).map(|i| format!("i{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = fake_config(&refs, Duration::from_millis(500), 2, 3);
    let probe = FakeProbe::new(Act::Pass);
    let t0 = Instant::now();
    let (_rx, cancel, handle) = start(&config, probe.clone());
    // Tokio's timer rounds deadlines up to the next millisecond, so a draw
    // just below one interval fires at exactly one interval.
    tokio::time::sleep(Duration::from_millis(1001)).await;
    stop(cancel, handle).await;

    let starts = probe.starts.lock().expect("lock").clone();
    let mut first: BTreeMap<String, Instant> = BTreeMap::new();
    for (name, at) in starts {
        first.entry(name).or_insert(at);
    }
    assert_eq!(
        first.len(),
        1000,
        "every instance probed within one interval"
    );
    // 1,000 probes a second make slots of 100 ms: ten of them.
    let mut buckets = [0usize; 10];
    for at in first.values() {
        let offset = *at - t0;
        assert!(
            offset <= Duration::from_secs(1),
            "first probe after {offset:?}"
        );
        buckets[(offset.as_millis() / 100).min(9) as usize] += 1;
    }
    // Uniform would put 100 in each; a burst would leave some empty.
    assert!(
        buckets.iter().all(|n| (60..=140).contains(n)),
        "first probes per 100 ms: {buckets:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_every_task_and_drops_probes_in_flight() {
    let config = fake_config(&["a", "b", "c"], Duration::from_millis(900), 2, 3);
    let probe = FakeProbe::new(Act::Hang);
    let (_rx, cancel, handle) = start(&config, probe.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = probe.start_count();
    assert!(started >= 6, "{started} probes started");
    stop(cancel, handle).await;
    // Every probe, including those in flight at cancel, has been dropped.
    assert_eq!(probe.dropped.load(Ordering::SeqCst), started);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(probe.start_count(), started, "no probe after cancel");
}

/// A probe that panics for instance `boom`, inside its first poll or
/// after a wait, and passes every other instance.
struct PanicsFor {
    after_a_wait: bool,
}

impl Probe for PanicsFor {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        async move {
            if instance.name == "boom" {
                if self.after_a_wait {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("a probe bug");
            }
            ProbeReport::ok("pass", Duration::ZERO)
        }
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_stops_only_its_own_instance() {
    let config = fake_config(&["boom", "fine"], Duration::from_millis(500), 2, 2);
    for after_a_wait in [false, true] {
        let probe: Arc<dyn Probe> = Arc::new(PanicsFor { after_a_wait });
        let (checker, mut rx) = Checker::with_probes(&config, vec![("web".into(), probe)], 7)
            .expect("every service has a probe");
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(checker.run(cancel.clone()));
        wait_verdict(&mut rx, "fine", Verdict::Up).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        {
            let health = rx.borrow();
            let fine = health.get("web", "fine").expect("fine is tracked");
            assert!(
                fine.consecutive_successes >= 6,
                "after_a_wait {after_a_wait}: {fine:?}"
            );
            let boom = health.get("web", "boom").expect("boom is tracked");
            assert_eq!(
                boom.verdict,
                Verdict::Unknown,
                "after_a_wait {after_a_wait}"
            );
            assert_eq!(boom.last, None, "after_a_wait {after_a_wait}");
        }
        stop(cancel, handle).await;
    }
}

#[test]
fn with_probes_needs_a_probe_for_every_service() {
    let config = fake_config(&["a"], Duration::from_millis(500), 2, 3);
    let other: Arc<dyn Probe> = FakeProbe::new(Act::Pass);
    let result = Checker::with_probes(&config, vec![("other".into(), other)], 1);
    assert!(matches!(
        result,
        Err(HealthError::MissingProbe { service }) if service == "web"
    ));
}

#[tokio::test]
async fn checker_with_real_probers_sees_a_local_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = listener.local_addr().expect("local addr").to_string();
    let down = closed_port().await.to_string();
    let check = CheckConfig {
        kind: CheckKind::Tcp,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(90),
        rise: 1,
        fall: 1,
    };
    let config = config(vec![service(
        "web",
        check,
        vec![instance("up", &up), instance("down", &down)],
    )]);
    let (checker, mut rx) = Checker::new(&config).expect("real probers build");
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(checker.run(cancel.clone()));
    let both = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|h| {
            h.verdict("web", "up") == Verdict::Up && h.verdict("web", "down") == Verdict::Down
        }),
    )
    .await
    .map(|seen| seen.map(|_| ()));
    assert!(matches!(both, Ok(Ok(()))), "verdicts reached in time");
    {
        let health = rx.borrow();
        assert_eq!(health.len(), 2);
        let names: Vec<_> = health.iter().map(|(s, i, _)| format!("{s}/{i}")).collect();
        assert_eq!(names, vec!["web/down", "web/up"]);
        let down = health.get("web", "down").and_then(|s| s.last.clone());
        assert_eq!(down.map(|r| r.detail), Some("connection refused".into()));
    }
    stop(cancel, handle).await;
}

// Instances share timer wake-ups: every probe of every instance starts on a
// whole slot after the checker started, and together they still spread
// over the interval rather than bunching in a few slots.
#[tokio::test(start_paused = true)]
async fn probes_start_on_shared_slots_spread_over_the_interval() {
    let names: Vec<String> = (0..200).map(|i| format!("i{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = fake_config(&refs, Duration::from_millis(500), 2, 3);
    let probe = FakeProbe::new(Act::Pass);
    let t0 = Instant::now();
    let (_rx, cancel, handle) = start(&config, probe.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop(cancel, handle).await;

    let starts = probe.starts.lock().expect("lock").clone();
    assert!(
        starts.len() >= 400,
        "{} probes in 2.5 intervals",
        starts.len()
    );
    // 200 probes a second: the longest slot, 100 ms.
    let slot = crate::health::checker::MAX_PROBE_SLOT.as_millis();
    let mut slots = std::collections::BTreeSet::new();
    for (instance, at) in &starts {
        let offset = at.duration_since(t0).as_millis();
        assert_eq!(offset % slot, 0, "{instance} probed at +{offset} ms");
        slots.insert(offset % 1000);
    }
    // 200 draws over 10 slots leave none empty; an empty one would mean
    // the spread was lost.
    assert_eq!(slots.len(), 10, "slots used: {slots:?}");
}

#[test]
fn the_probe_slot_holds_about_a_hundred_probes_within_1_to_100_ms() {
    use crate::health::checker::probe_slot;
    let second = Duration::from_secs(1);
    let ms = Duration::from_millis;
    assert_eq!(probe_slot(&vec![second; 200]), ms(100));
    assert_eq!(probe_slot(&vec![second; 1_000]), ms(100));
    assert_eq!(probe_slot(&vec![second; 5_000]), ms(20));
    assert_eq!(probe_slot(&vec![second; 10_000]), ms(10));
    assert_eq!(probe_slot(&vec![second; 100_000]), ms(1));
    assert_eq!(probe_slot(&vec![second; 1_000_000]), ms(1));
    // 2,500 instances every 200 ms are 12,500 probes a second.
    assert_eq!(probe_slot(&vec![ms(200); 2_500]), ms(8));
    assert_eq!(probe_slot(&[]), ms(100));
}

/// A probe that takes `turns + 1` steps with a turn between each (as an
/// HTTP check on a near instance takes three: connect, send, read), and
/// logs each step as `(step, instance)`.
struct Steps {
    turns: usize,
    log: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Probe for Steps {
    fn probe<'a>(&'a self, instance: &'a InstanceConfig) -> BoxFuture<'a, ProbeReport> {
        async move {
            for step in 0..=self.turns {
                if step > 0 {
                    super::probe::next_turn().await;
                }
                self.log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((step, instance.name.clone()));
            }
            ProbeReport::ok("pass", Duration::ZERO)
        }
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn the_probes_of_a_slot_take_their_steps_in_lockstep() {
    let names = ["a", "b", "c", "d", "e"];
    let mut config = fake_config(&names, Duration::from_millis(50), 1, 1);
    // Five instances every 100 ms share one slot of 100 ms: they start
    // together.
    config.services[0].check.interval = Duration::from_millis(100);
    // Two turns are taken in lockstep; six go on among the running probes
    // after the first three, and still finish.
    for turns in [2, 6] {
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe: Arc<dyn Probe> = Arc::new(Steps {
            turns,
            log: log.clone(),
        });
        let (checker, mut rx) = Checker::with_probes(&config, vec![("web".into(), probe)], 7)
            .expect("every service has a probe");
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(checker.run(cancel.clone()));
        for name in names {
            wait_verdict(&mut rx, name, Verdict::Up).await;
        }
        stop(cancel, handle).await;
        let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let first: Vec<_> = log.iter().take(names.len() * 3).collect();
        let mut expected = Vec::new();
        for step in 0..3 {
            expected.extend(names.iter().map(|n| (step, n.to_string())));
        }
        let first_steps: Vec<_> = first.iter().map(|(step, _)| *step).collect();
        let expected_steps: Vec<_> = expected.iter().map(|(step, _)| *step).collect();
        assert_eq!(first_steps, expected_steps, "turns {turns}: {log:?}");
        let mut seen: Vec<_> = first.iter().map(|(s, n)| (*s, n.clone())).collect();
        seen.sort();
        expected.sort();
        assert_eq!(
            seen, expected,
            "turns {turns}: every instance takes each step once"
        );
    }
}
