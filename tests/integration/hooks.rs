//! Hooks on a real node: an exec script that records its calls and a local
//! webhook receiver that records bodies and signatures, for the first choice
//! and a failover; retries; a hanging hook; and a hook whose run was never
//! confirmed, re-run by the next leader after a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use highlander::cluster::Cluster;
use highlander::node::NodeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{
    ConfigDir, Instance, RunningNode, answer, eventually, one_node_config, start_node,
};

/// The webhook secret the tests configure.
const HOOK_SECRET: &str = "webhook-secret-0123456789abcdef";

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
struct Call {
    body: serde_json::Value,
    raw: Vec<u8>,
    signature: Option<String>,
    status: u16,
}

/// How the receiver answers.
#[derive(Default)]
struct Behaviour {
    /// Answer 500 to this many more requests, then 200.
    fail_next: AtomicUsize,
    /// Answer 500 to everything while set.
    failing: AtomicBool,
    /// Never answer (hold the connection open) while set.
    hanging: AtomicBool,
}

/// A webhook receiver on a free loopback port.
struct Receiver {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    behaviour: Arc<Behaviour>,
    server: JoinHandle<()>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(behaviour);
        let server = {
            let calls = calls.clone();
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let calls = calls.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, &calls, &behaviour).await;
                    });
                }
            })
        };
        Ok(Receiver {
            addr,
            calls,
            behaviour,
            server,
        })
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Reads one HTTP/1.1 request, records it and answers as `behaviour` says.
async fn serve(
    mut stream: TcpStream,
    calls: &Mutex<Vec<Call>>,
    behaviour: &Behaviour,
) -> Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the request head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .context("no content-length")?
        .parse()?;
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let raw = buf[head_end..head_end + length].to_vec();
    if behaviour.hanging.load(Ordering::SeqCst) {
        calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
            body: serde_json::from_slice(&raw)?,
            raw,
            signature: header("x-highlander-signature"),
            status: 0,
        });
        // Hold the connection until the client gives up.
        let _ = stream.read(&mut [0u8; 1]).await;
        return Ok(());
    }
    let fail = behaviour.failing.load(Ordering::SeqCst)
        || behaviour
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if fail { 500 } else { 200 };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
        body: serde_json::from_slice(&raw)?,
        raw,
        signature: header("x-highlander-signature"),
        status,
    });
    let reply = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        if fail { "Internal Server Error" } else { "OK" }
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(())
}

/// The signature a receiver expects, computed independently of highlander.
fn expected_signature(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A running node: its DNS address, cluster handle, stop token and task.
struct Running {
    dns: SocketAddr,
    cluster: Cluster,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Running {
    async fn start(config_file: &Path) -> Result<Running> {
        let RunningNode {
            dns,
            cluster,
            cancel,
            task,
            ..
        } = start_node(config_file).await?;
        Ok(Running {
            dns,
            cluster,
            cancel,
            task,
        })
    }

    /// The index of the last event hook `name` is recorded as done with.
    fn hook_done(&self, name: &str) -> Option<u64> {
        self.cluster
            .applied()
            .borrow()
            .state
            .hooks_done
            .get(name)
            .copied()
    }

    /// The Raft index of the event that made `epoch` of `app`.
    fn event_index(&self, epoch: u64) -> Option<u64> {
        self.cluster
            .applied()
            .borrow()
            .state
            .events
            .iter()
            .find(|e| e.service == "app" && e.epoch.0 == epoch)
            .map(|e| e.index)
    }

    /// Waits until hook `name` is recorded done with the event of `epoch`.
    async fn wait_confirmed(&self, name: &str, epoch: u64) -> Result<u64> {
        eventually(
            Duration::from_secs(10),
            &format!("hook {name} confirmed for epoch {epoch}"),
            || async {
                let index = self.event_index(epoch);
                Ok(index.filter(|&i| self.hook_done(name).is_some_and(|d| d >= i)))
            },
        )
        .await
    }

    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(3), self.task).await???;
        Ok(())
    }
}

/// Writes the one-node config with `hooks` appended, and the webhook secret.
fn write_config(
    dir: &ConfigDir,
    instances: &[&Instance],
    hooks: &str,
) -> Result<std::path::PathBuf> {
    std::fs::write(dir.path().join("hook.secret"), HOOK_SECRET)?;
    dir.write(&format!(
        "{}\n{hooks}",
        one_node_config(instances, "manual", "127.0.0.1:0")
    ))
}

fn webhook(name: &str, url: &str, timeout: &str) -> String {
    format!(
        "[[hooks]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"hook.secret\"\ntimeout = \"{timeout}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_hooks_run_once_for_the_first_choice_and_a_failover() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let receiver = Receiver::start(Behaviour::default()).await?;
    let dir = ConfigDir::new()?;
    let record = dir.path().join("exec-calls");
    let hooks = format!(
        "{}\n[[hooks]]\nname = \"script\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", 'echo \"$HIGHLANDER_EPOCH {{service}} {{new}} $HIGHLANDER_OLD\" >> {}']\n",
        webhook("lb", &receiver.url(), "2s"),
        record.display()
    );
    let file = write_config(&dir, &[&primary, &backup], &hooks)?;
    let node = Running::start(&file).await?;

    eventually(Duration::from_secs(10), "the first choice", || async {
        Ok(answer(node.dns).await?.filter(|a| a.epoch == 1))
    })
    .await?;
    let first = node.wait_confirmed("lb", 1).await?;
    node.wait_confirmed("script", 1).await?;

    primary.kill().await;
    eventually(Duration::from_secs(10), "failover to backup", || async {
        Ok(answer(node.dns).await?.filter(|a| a.epoch == 2))
    })
    .await?;
    let second = node.wait_confirmed("lb", 2).await?;
    node.wait_confirmed("script", 2).await?;

    // Confirmed runs are never repeated.
    let lines = std::fs::read_to_string(&record)?;
    assert_eq!(lines, "1 app primary \n2 app backup primary\n");
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let expected = [
        (first, 1, "", "primary", "initial"),
        (second, 2, "primary", "backup", "failover"),
    ];
    for (call, (index, epoch, old, new, reason)) in calls.iter().zip(expected) {
        assert_eq!(call.status, 200);
        let body = &call.body;
        assert_eq!(body["service"], "app");
        assert_eq!(body["epoch"], epoch);
        assert_eq!(body["index"], index);
        assert_eq!(body["old"], old);
        assert_eq!(body["new"], new);
        assert_eq!(body["reason"], reason);
        assert!(body["at"].as_u64().is_some_and(|at| at > 0), "{body}");
        assert_eq!(
            call.signature.as_deref(),
            Some(expected_signature(&call.raw).as_str())
        );
    }
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhook_is_retried_until_it_succeeds() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let receiver = Receiver::start(Behaviour {
        fail_next: AtomicUsize::new(2),
        ..Behaviour::default()
    })
    .await?;
    let dir = ConfigDir::new()?;
    let file = write_config(&dir, &[&primary], &webhook("lb", &receiver.url(), "2s"))?;
    let node = Running::start(&file).await?;

    let index = node.wait_confirmed("lb", 1).await?;
    let calls = receiver.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    // Every attempt carries the same change, so a receiver can deduplicate.
    for call in &calls {
        assert_eq!(call.body["index"], index);
        assert_eq!(call.body["epoch"], 1);
    }
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_webhook_does_not_delay_the_failover() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let receiver = Receiver::start(Behaviour {
        hanging: AtomicBool::new(true),
        ..Behaviour::default()
    })
    .await?;
    let dir = ConfigDir::new()?;
    let file = write_config(
        &dir,
        &[&primary, &backup],
        &webhook("lb", &receiver.url(), "60s"),
    )?;
    let node = Running::start(&file).await?;
    eventually(Duration::from_secs(10), "the first choice", || async {
        Ok(answer(node.dns).await?.filter(|a| a.epoch == 1))
    })
    .await?;
    eventually(Duration::from_secs(5), "the hook hanging", || async {
        Ok((!receiver.calls().is_empty()).then_some(()))
    })
    .await?;

    primary.kill().await;
    // Probes every 100 ms, fall 2: well within 2 s unless something waits on the hook.
    eventually(
        Duration::from_secs(2),
        "failover while the hook hangs",
        || async { Ok(answer(node.dns).await?.filter(|a| a.epoch == 2)) },
    )
    .await?;
    assert_eq!(
        node.hook_done("lb"),
        None,
        "the hanging run was never confirmed"
    );
    // Shutdown is not held up by the hanging hook either.
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_leader_reruns_a_hook_whose_run_was_not_confirmed() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let receiver = Receiver::start(Behaviour {
        failing: AtomicBool::new(true),
        ..Behaviour::default()
    })
    .await?;
    let dir = ConfigDir::new()?;
    let file = write_config(&dir, &[&primary], &webhook("lb", &receiver.url(), "2s"))?;

    // The first leader decides, but the hook never succeeds: no HookDone.
    let node = Running::start(&file).await?;
    eventually(Duration::from_secs(10), "the first choice", || async {
        Ok(answer(node.dns).await?.filter(|a| a.epoch == 1))
    })
    .await?;
    eventually(Duration::from_secs(5), "a failed run", || async {
        Ok((!receiver.calls().is_empty()).then_some(()))
    })
    .await?;
    let index = node
        .event_index(1)
        .context("the first choice is an event")?;
    assert_eq!(node.hook_done("lb"), None);
    node.stop().await?;

    // The receiver recovers; the node comes back on the same data dir and
    // leads again, in a new term: it owes the hook that earlier event.
    receiver.behaviour.failing.store(false, Ordering::SeqCst);
    let failed_before = receiver.calls().len();
    let node = Running::start(&file).await?;
    assert_eq!(node.wait_confirmed("lb", 1).await?, index);
    let calls = receiver.calls();
    let delivered: Vec<&Call> = calls.iter().filter(|c| c.status == 200).collect();
    assert_eq!(delivered.len(), 1, "{calls:?}");
    assert_eq!(calls.len(), failed_before + 1, "{calls:?}");
    assert_eq!(delivered[0].body["index"], index);
    assert_eq!(delivered[0].body["epoch"], 1);
    assert_eq!(answer(node.dns).await?.map(|a| a.epoch), Some(1));
    node.stop().await
}
