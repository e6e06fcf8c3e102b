use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::{ConfigDir, Instance, answer, eventually, one_node_config};

fn highlander() -> Command {
    Command::new(env!("CARGO_BIN_EXE_highlander"))
}

/// A child process that is killed if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn check_config_prints_what_a_valid_file_means() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(
        &[&primary, &backup],
        "manual",
        "127.0.0.1:0",
    ))?;
    let out = highlander().arg("check-config").arg(&file).output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}");
    for expected in [
        "is valid",
        "node 1",
        "svc.test.",
        "service app",
        "failback manual",
        "every 100ms",
        "instance primary",
        "instance backup",
        "CNAME primary.internal.",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn check_config_exits_2_naming_every_problem() -> Result<()> {
    let dir = ConfigDir::new()?;
    let file = dir.write(
        r#"
[cluster]
secret_file = "cluster.secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"
[dns]
zone = "svc.test"
[[services]]
name = "db"
check = { kind = "tcp", rise = 0 }
[[services.instances]]
name = "db1"
address = "127.0.0.1:5432"
a = "::1"
"#,
    )?;
    let out = highlander().arg("check-config").arg(&file).output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for expected in [
        file.display().to_string(),
        "dns.zone = \"svc.test\"".into(),
        "services[0].check.rise = 0".into(),
        "services[0].instances[0].a = \"::1\"".into(),
    ] {
        assert!(
            stderr.contains(&expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn run_refuses_a_bad_node_id_or_secret_before_listening() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let dir = ConfigDir::new()?;
    // A fixed DNS port would be racy; a listener we hold proves nothing binds it.
    let held = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let dns = held.local_addr()?;
    drop(held);
    let file = dir.write(&one_node_config(&[&primary], "auto", &dns.to_string()))?;

    let out = highlander()
        .args(["run", "--node-id", "7", "--config"])
        .arg(&file)
        .output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("node id 7") && stderr.contains("node ids 1"),
        "{stderr}"
    );

    std::fs::remove_file(dir.path().join("cluster.secret"))?;
    let out = highlander()
        .args(["run", "--node-id", "1", "--config"])
        .arg(&file)
        .output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cluster.secret_file"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "a refused node must not create its data dir"
    );
    Ok(())
}

/// Starts `highlander run` and waits for its "started" log line, which names the DNS address.
fn spawn_node(file: &std::path::Path) -> Result<(Running, SocketAddr)> {
    let (running, dns, _) = spawn_node_with(file, true)?;
    Ok((running, dns))
}

/// Like [`spawn_node`]; also returns the API address. Unless `keep_reading`,
/// the node's stderr is closed for reading right after the started line.
fn spawn_node_with(
    file: &std::path::Path,
    keep_reading: bool,
) -> Result<(Running, SocketAddr, SocketAddr)> {
    let mut child = highlander()
        .args(["run", "--node-id", "1", "--config"])
        .arg(file)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("highlander node started") {
                let _ = tx.send(line);
                if !keep_reading {
                    return;
                }
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the node never logged that it started")?;
    let field = |name: &str| -> Result<SocketAddr> {
        Ok(line
            .split_whitespace()
            .find_map(|field| field.strip_prefix(name))
            .with_context(|| format!("no {name} field in the started line"))?
            .parse()?)
    };
    Ok((running, field("dns=")?, field("api=")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_running_node_with_exit_0_within_2_seconds() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(&[&primary], "auto", "127.0.0.1:0"))?;
    let (mut node, dns) = spawn_node(&file)?;
    eventually(Duration::from_secs(10), "the node answers", || answer(dns)).await?;

    let pid = node.0.id().to_string();
    let sent = Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(status.success(), "kill -TERM failed");
    loop {
        if let Some(status) = node.0.try_wait()? {
            assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
            break;
        }
        if sent.elapsed() > Duration::from_secs(2) {
            bail!("still running 2 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Regression: tracing-subscriber reported a failed log write with
/// `eprintln!`, which panicked once the node's stderr reader had gone away,
/// and a node in that state never stopped on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_reader_went_away_still_stops_cleanly() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(&[&primary], "auto", "127.0.0.1:0"))?;
    // The reader closes the pipe after the started line, as a crashed log
    // shipper would; the node then has to log into a closed pipe.
    let (mut node, dns, api) = spawn_node_with(&file, false)?;
    eventually(Duration::from_secs(10), "the node answers", || answer(dns)).await?;
    primary.kill().await;
    let status_url = format!("http://{api}/v1/status");
    eventually(
        Duration::from_secs(10),
        "the all-down decision (logged)",
        || async {
            let body = reqwest::get(&status_url).await?.bytes().await?;
            let status: serde_json::Value = serde_json::from_slice(&body)?;
            Ok((!status["services"][0]["all_down_since"].is_null()).then_some(()))
        },
    )
    .await?;
    assert!(
        node.0.try_wait()?.is_none(),
        "the node died writing to a closed pipe"
    );
    let pid = node.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let sent = Instant::now();
    loop {
        if let Some(status) = node.0.try_wait()? {
            assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
            return Ok(());
        }
        if sent.elapsed() > Duration::from_secs(2) {
            bail!("still running 2 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The configs the project ships stay valid as the config grows.
#[test]
fn shipped_example_configs_are_valid() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = highlander()
        .arg("check-config")
        .arg(root.join("examples/cluster.toml"))
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The production example names systemd credential paths; point them at
    // files of the right shape.
    let dir = ConfigDir::new()?;
    let secret = dir.path().join("cluster.secret");
    let token = dir.path().join("api.token");
    std::fs::write(&token, "an-api-token-of-enough-length")?;
    let text = std::fs::read_to_string(root.join("contrib/three-zones.toml"))?
        .replace(
            "/run/credentials/highlander.service/cluster.secret",
            &secret.to_string_lossy(),
        )
        .replace(
            "/run/credentials/highlander.service/api.token",
            &token.to_string_lossy(),
        );
    let file = dir.write(&text)?;
    let out = highlander().arg("check-config").arg(&file).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 nodes") && stdout.contains("service db"),
        "{stdout}"
    );
    Ok(())
}
