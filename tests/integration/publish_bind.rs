//! RFC 2136 publishing against a real BIND 9 that the harness starts: the
//! record and its epoch marker created and changed, a write based on a
//! stale read refused by BIND itself (S4), a marker that is not UTF-8
//! matched byte for byte, a server whose UDP is dropped reached over TCP, a
//! wrong TSIG key reported clearly, and a running node following a failover
//! and repairing an edit made with `nsupdate` behind its back.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use highlander::config::{Config, Target};
use highlander::dns::publish::rfc2136::Rfc2136;
use highlander::dns::publish::{
    Desired, Marker, Plan, PublishError, Publisher, Unfenced, WriteReason, plan,
};
use highlander::node::Node;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::bind::{self, Bind};
use crate::harness::{ConfigDir, Instance, eventually, one_node_config};

const RECORD: &str = "db.example.test.";

/// A one-service config whose only `[[publish]]` target is `bind`, with
/// `tsig` lines naming the key (override them to test a wrong key).
fn config_text(bind: &Bind, tsig: &str) -> String {
    format!(
        r#"
[cluster]
secret_file = "cluster.secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:0"
dns = "127.0.0.1:0"
api = "127.0.0.1:0"
[dns]
zone = "svc.test."
[[services]]
name = "db"
[services.check]
kind = "tcp"
[[services.instances]]
name = "db1"
address = "127.0.0.1:1"
a = "192.0.2.1"

[[publish]]
name = "bind"
kind = "rfc2136"
server = "{}"
zone = "{}"
timeout = "2s"
{tsig}
"#,
        bind.addr(),
        bind::ZONE
    )
}

fn right_key(bind: &Bind) -> String {
    format!(
        "tsig_key = \"{}\"\ntsig_secret_file = \"{}\"",
        bind::KEY_NAME,
        bind.key_file().display()
    )
}

fn publisher(dir: &ConfigDir, text: &str) -> Result<Rfc2136> {
    let config = Config::parse(&dir.path().join("highlander.toml"), text)?;
    Rfc2136::new(&config.publish[0]).map_err(anyhow::Error::msg)
}

fn desired(epoch: u64, instance: &str, target: Target) -> Desired {
    Desired {
        service: "db".into(),
        name: RECORD.into(),
        target,
        ttl: 30,
        marker: Marker {
            instance: instance.into(),
            epoch,
        },
    }
}

/// The zone's SOA serial at BIND: it grows by one with every update.
fn serial(bind: &Bind) -> Result<u64> {
    let soa = bind.data(bind::ZONE, "SOA")?;
    let serial = soa
        .first()
        .and_then(|data| data.split(' ').nth(2))
        .and_then(|s| s.parse().ok());
    serial.ok_or_else(|| anyhow::anyhow!("no SOA serial in {soa:?}"))
}

fn marker_text(instance: &str, epoch: u64) -> Vec<String> {
    vec![format!("\"instance={instance}\" \"epoch={epoch}\"")]
}

/// Reads, checks the plan, writes: what one pass of the loop does.
async fn publish(publisher: &Rfc2136, want: &Desired, expect: WriteReason) -> Result<()> {
    let actual = publisher.read(&want.name).await?;
    assert_eq!(plan(want, &actual), Plan::Write(expect), "{actual:?}");
    publisher.write(want, &actual, &Unfenced).await?;
    let after = publisher.read(&want.name).await?;
    assert_eq!(plan(want, &after), Plan::InSync, "read back: {after:?}");
    Ok(())
}

#[tokio::test]
async fn creates_then_changes_the_record_and_its_marker_in_bind() -> Result<()> {
    let bind = bind::start()?;
    let dir = ConfigDir::new()?;
    let publisher = publisher(&dir, &config_text(&bind, &right_key(&bind)))?;
    let marker = format!("_highlander.{RECORD}");

    let a = Target::A(Ipv4Addr::new(192, 0, 2, 1));
    publish(&publisher, &desired(1, "db1", a), WriteReason::Create).await?;
    assert_eq!(bind.data(RECORD, "A")?, ["192.0.2.1"]);
    assert_eq!(bind.data(&marker, "TXT")?, marker_text("db1", 1));
    let ttl = bind.dig(RECORD, "A")?;
    assert!(ttl[0].starts_with(&format!("{RECORD} 30 IN A")), "{ttl:?}");

    // A change of type: the A goes, the CNAME comes, in one update.
    let cname = Target::Cname("db2.internal.example.".into());
    publish(&publisher, &desired(2, "db2", cname), WriteReason::Change).await?;
    assert_eq!(bind.data(RECORD, "CNAME")?, ["db2.internal.example."]);
    assert_eq!(bind.data(RECORD, "A")?, Vec::<String>::new());
    assert_eq!(bind.data(&marker, "TXT")?, marker_text("db2", 2));

    let aaaa = Target::Aaaa("2001:db8::3".parse()?);
    publish(&publisher, &desired(3, "db3", aaaa), WriteReason::Change).await?;
    assert_eq!(bind.data(RECORD, "AAAA")?, ["2001:db8::3"]);
    assert_eq!(bind.data(RECORD, "CNAME")?, Vec::<String>::new());
    assert_eq!(bind.data(&marker, "TXT")?, marker_text("db3", 3));
    Ok(())
}

#[tokio::test]
async fn hmac_sha512_keys_sign_as_well() -> Result<()> {
    let bind = bind::start_with("hmac-sha512")?;
    let dir = ConfigDir::new()?;
    let key = format!("{}\ntsig_algorithm = \"hmac-sha512\"", right_key(&bind));
    let publisher = publisher(&dir, &config_text(&bind, &key))?;
    let a = Target::A(Ipv4Addr::new(192, 0, 2, 1));
    publish(&publisher, &desired(1, "db1", a), WriteReason::Create).await?;
    assert_eq!(bind.data(RECORD, "A")?, ["192.0.2.1"]);
    Ok(())
}

#[tokio::test]
async fn a_record_set_too_big_for_udp_is_read_over_tcp_and_replaced() -> Result<()> {
    let bind = bind::start()?;
    let dir = ConfigDir::new()?;
    let publisher = publisher(&dir, &config_text(&bind, &right_key(&bind)))?;
    // 60 A records: about 1 KB, over the 512 bytes of UDP without EDNS, so
    // BIND truncates the UDP answer and the read must go over TCP.
    let adds: Vec<String> = (1..=60)
        .map(|i| format!("update add {RECORD} 60 A 198.51.100.{i}"))
        .collect();
    bind.nsupdate(&adds.join("\n"))?;
    let actual = publisher.read(RECORD).await?;
    assert_eq!(actual.records.len(), 60, "every record, read over TCP");
    let want = desired(1, "db1", Target::A(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(plan(&want, &actual), Plan::Write(WriteReason::Adopt));
    publisher.write(&want, &actual, &Unfenced).await?;
    assert_eq!(bind.data(RECORD, "A")?, ["192.0.2.1"]);
    Ok(())
}

#[tokio::test]
async fn a_marker_that_is_not_utf8_is_matched_byte_for_byte() -> Result<()> {
    let bind = bind::start()?;
    let dir = ConfigDir::new()?;
    let publisher = publisher(&dir, &config_text(&bind, &right_key(&bind)))?;
    let marker = format!("_highlander.{RECORD}");
    // Left by hand, with the byte 0xff in its first string.
    bind.nsupdate(&format!(
        "update add {marker} 30 TXT \"instance=db1\\255\" \"epoch=1\""
    ))?;
    let actual = publisher.read(RECORD).await?;
    assert_eq!(
        actual.markers[0].value,
        [b"instance=db1\xff".to_vec(), b"epoch=1".to_vec()]
    );
    // The update's prerequisite must name that marker exactly, or BIND
    // refuses it (NXRRSET) at every pass.
    let a = Target::A(Ipv4Addr::new(192, 0, 2, 1));
    publish(&publisher, &desired(2, "db1", a), WriteReason::Create).await?;
    assert_eq!(bind.data(&marker, "TXT")?, marker_text("db1", 2));
    Ok(())
}

/// A loopback port where UDP is bound but never answered, and TCP is
/// relayed to `to`: a server behind a firewall that drops UDP.
async fn udp_dropped_tcp_relayed(
    to: SocketAddr,
) -> Result<(SocketAddr, UdpSocket, tokio::task::JoinHandle<()>)> {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = udp.local_addr()?;
        // The same port for TCP is usually free; else try another.
        let Ok(tcp) = TcpListener::bind(addr).await else {
            continue;
        };
        let relay = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        return Ok((addr, udp, relay));
    }
    bail!("no loopback port free for both UDP and TCP")
}

#[tokio::test]
async fn a_server_that_drops_udp_is_asked_over_tcp_in_the_time_left() -> Result<()> {
    let bind = bind::start()?;
    let (addr, _udp, relay) = udp_dropped_tcp_relayed(bind.addr()).await?;
    let dir = ConfigDir::new()?;
    // 600 ms per exchange: 300 ms for UDP, the rest for TCP.
    let text = config_text(&bind, &right_key(&bind))
        .replace(&bind.addr().to_string(), &addr.to_string())
        .replace("timeout = \"2s\"", "timeout = \"600ms\"");
    let publisher = publisher(&dir, &text)?;
    let a = Target::A(Ipv4Addr::new(192, 0, 2, 1));
    publish(&publisher, &desired(1, "db1", a), WriteReason::Create).await?;
    assert_eq!(bind.data(RECORD, "A")?, ["192.0.2.1"]);
    // With TCP gone too, the error says what was tried.
    relay.abort();
    let _ = relay.await;
    let error = publisher.read(RECORD).await.err();
    let Some(PublishError::Unreachable(why)) = &error else {
        bail!("expected the server to be unreachable, got {error:?}");
    };
    assert!(why.contains("no answer over UDP within 300ms"), "{why}");
    assert!(why.contains("TCP"), "{why}");
    Ok(())
}

#[tokio::test]
async fn bind_refuses_a_write_based_on_a_stale_read() -> Result<()> {
    let bind = bind::start()?;
    let dir = ConfigDir::new()?;
    let text = config_text(&bind, &right_key(&bind));
    let old_leader = publisher(&dir, &text)?;
    let new_leader = publisher(&dir, &text)?;
    let marker = format!("_highlander.{RECORD}");
    let db1 = Target::A(Ipv4Addr::new(192, 0, 2, 1));
    let db2 = Target::A(Ipv4Addr::new(192, 0, 2, 2));

    // Two writers that both saw an empty zone: only the first create lands.
    let empty = old_leader.read(RECORD).await?;
    new_leader
        .write(&desired(1, "db1", db1.clone()), &empty, &Unfenced)
        .await?;
    let late = old_leader
        .write(&desired(1, "db1", db1.clone()), &empty, &Unfenced)
        .await;
    assert!(
        matches!(&late, Err(PublishError::Conflict(why)) if why.contains("YXRRSET")),
        "{late:?}"
    );

    // The deposed leader read epoch 1 and means to write its epoch 2; the
    // new leader has meanwhile written epoch 3.
    let stale = old_leader.read(RECORD).await?;
    let fresh = new_leader.read(RECORD).await?;
    new_leader
        .write(&desired(3, "db2", db2.clone()), &fresh, &Unfenced)
        .await?;
    let refused = old_leader
        .write(&desired(2, "db1", db1.clone()), &stale, &Unfenced)
        .await;
    match &refused {
        Err(PublishError::Conflict(why)) => {
            assert!(why.contains("NXRRSET"), "{why}");
            assert!(why.contains(RECORD), "{why}");
        }
        other => bail!("expected BIND to refuse the stale write, got {other:?}"),
    }
    assert_eq!(bind.data(RECORD, "A")?, ["192.0.2.2"]);
    assert_eq!(bind.data(&marker, "TXT")?, marker_text("db2", 3));

    // Read afresh, the deposed leader's plan holds off on its own.
    let now = old_leader.read(RECORD).await?;
    assert!(
        matches!(plan(&desired(2, "db1", db1), &now), Plan::Hold { .. }),
        "{now:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_wrong_tsig_key_is_reported_clearly() -> Result<()> {
    let bind = bind::start()?;
    let dir = ConfigDir::new()?;
    let other_secret = data_encoding::BASE64.encode(&[7u8; 32]);
    std::fs::write(dir.path().join("wrong.key"), &other_secret)?;

    let wrong_secret = publisher(
        &dir,
        &config_text(
            &bind,
            &format!(
                "tsig_key = \"{}\"\ntsig_secret_file = \"wrong.key\"",
                bind::KEY_NAME
            ),
        ),
    )?;
    let error = wrong_secret.read(RECORD).await.err();
    let Some(PublishError::Refused(why)) = &error else {
        bail!("expected the key to be refused, got {error:?}");
    };
    eprintln!("wrong secret: {why}");
    assert!(why.contains("rejected TSIG key highlander."), "{why}");
    assert!(why.contains("BADSIG") || why.contains("BadSig"), "{why}");
    assert!(!why.contains(&other_secret), "the secret leaked: {why}");

    let unknown_key = publisher(
        &dir,
        &config_text(
            &bind,
            "tsig_key = \"nobody\"\ntsig_secret_file = \"wrong.key\"",
        ),
    )?;
    let error = unknown_key
        .write(
            &desired(1, "db1", Target::A(Ipv4Addr::new(192, 0, 2, 1))),
            &Default::default(),
            &Unfenced,
        )
        .await
        .err();
    let Some(PublishError::Refused(why)) = &error else {
        bail!("expected the key to be refused, got {error:?}");
    };
    eprintln!("unknown key: {why}");
    assert!(why.contains("nobody."), "{why}");
    assert!(why.contains("BADKEY") || why.contains("BadKey"), "{why}");
    assert_eq!(
        bind.data(RECORD, "A")?,
        Vec::<String>::new(),
        "nothing written"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_failovers_and_repairs_edits_made_behind_its_back() -> Result<()> {
    let bind = bind::start()?;
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let dir = ConfigDir::new()?;
    let mut text = one_node_config(&[&primary, &backup], "manual", "127.0.0.1:0");
    text.push_str(&format!(
        r#"
[[publish]]
name = "bind"
kind = "rfc2136"
server = "{}"
zone = "{}"
record = "{{service}}.{}"
ttl = "30s"
interval = "1s"
timeout = "1s"
tsig_key = "{}"
tsig_secret_file = "{}"
"#,
        bind.addr(),
        bind::ZONE,
        bind::ZONE,
        bind::KEY_NAME,
        bind.key_file().display()
    ));
    let file = dir.write(&text)?;
    let node = Node::bind(Config::load(&file)?, 1).await?;
    let api = node.api_addr();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(node.run(cancel.clone()));
    let record = format!("app.{}", bind::ZONE);
    let marker = format!("_highlander.{record}");
    let holds = |cname: &'static str, epoch: u64| {
        let bind = &bind;
        let (record, marker) = (record.clone(), marker.clone());
        move || {
            let ok = bind.data(&record, "CNAME").ok() == Some(vec![cname.to_owned()])
                && bind.data(&marker, "TXT").ok().is_some_and(|txt| {
                    txt.len() == 1 && txt[0].contains(&format!("\"epoch={epoch}\""))
                });
            async move { Ok(ok.then_some(())) }
        }
    };

    eventually(
        Duration::from_secs(15),
        "BIND holds the first choice",
        holds("primary.internal.", 1),
    )
    .await?;

    let killed = Instant::now();
    primary.kill().await;
    eventually(
        Duration::from_secs(15),
        "BIND follows the failover",
        holds("backup.internal.", 2),
    )
    .await?;
    eprintln!(
        "instance killed -> BIND answers the backup: {} ms",
        killed.elapsed().as_millis()
    );

    // The repair can come within milliseconds of the edit, before any read
    // of ours, so the zone's serial is what shows both happened: nsupdate's
    // success is one change, highlander's repair another.
    let serial_before = serial(&bind)?;
    bind.nsupdate(&format!(
        "update delete {record} CNAME\nupdate add {record} 300 A 192.0.2.66"
    ))?;
    let edited = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the edit is repaired",
        holds("backup.internal.", 2),
    )
    .await?;
    let serial_after = serial(&bind)?;
    assert!(
        serial_after >= serial_before + 2,
        "an edit and a repair: serial {serial_before} -> {serial_after}"
    );
    eprintln!(
        "edit behind highlander's back -> repaired: {} ms (interval 1 s)",
        edited.elapsed().as_millis()
    );
    assert_eq!(bind.data(&record, "A")?, Vec::<String>::new());

    let status = eventually(
        Duration::from_secs(5),
        "the status says in sync",
        || async {
            let body = reqwest::get(format!("http://{api}/v1/status"))
                .await?
                .text()
                .await?;
            let status: serde_json::Value = serde_json::from_str(&body)?;
            Ok((status["publish"][0]["in_sync"] == true).then_some(status))
        },
    )
    .await?;
    let target = &status["publish"][0];
    assert_eq!(target["name"], "bind");
    assert_eq!(target["kind"], "rfc2136");
    assert_eq!(target["active"], true);
    assert!(target["last_success"].as_u64().is_some(), "{target}");
    assert!(
        target["writes"].as_u64().is_some_and(|w| w >= 3),
        "{target}"
    );
    assert_eq!(target["records"][0]["name"], record);
    assert_eq!(target["records"][0]["epoch"], 2);
    assert_eq!(target["records"][0]["published_epoch"], 2);
    assert_eq!(target["records"][0]["state"], "in-sync");
    let text = serde_json::to_string(&status)?;
    assert!(
        !text.contains(bind.secret()),
        "the TSIG secret must never reach the API"
    );

    let metrics = reqwest::get(format!("http://{api}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("highlander_publisher_in_sync{publisher=\"bind\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("highlander_publisher_active{publisher=\"bind\"} 1"),
        "{metrics}"
    );

    cancel.cancel();
    task.await??;
    Ok(())
}
