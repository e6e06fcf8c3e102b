//! The operator commands (`highlander status|switchover|drain|undrain|events`)
//! as a person runs them, against three in-process nodes.

use std::process::{Command, Output};

use anyhow::Result;

use crate::cluster_inprocess::{API_TOKEN, TestCluster};

fn highlander(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_highlander"))
        .args(args)
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_show_and_steer_the_cluster() -> Result<()> {
    let cluster = TestCluster::start("majority").await?;
    let leader = cluster.leader().await?;
    let follower = leader % 3 + 1;
    let api = format!("http://{}", cluster.node(follower).api);
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("api.token");
    std::fs::write(&token, API_TOKEN)?;
    let token = token.to_string_lossy().into_owned();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-api-token-0000")?;
    let wrong = wrong.to_string_lossy().into_owned();

    // Wait (through the CLI itself) until the first decision and both instances are up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let table = loop {
        let out = highlander(&["status", "--api", &api])?;
        let table = text(&out.stdout);
        if out.status.success()
            && table.contains("active primary at epoch 1")
            && table.matches(":up").count() >= 4
        {
            break table;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "never ready: {table}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // polling pace
    };
    assert!(table.contains(&format!("leader node {leader}")), "{table}");
    assert!(table.contains("in the majority"), "{table}");

    let out = highlander(&["status", "--api", &api, "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["services"][0]["active"], "primary");

    let out = highlander(&[
        "switchover",
        "app",
        "--to",
        "backup",
        "--api",
        &api,
        "--token-file",
        &token,
    ])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "service app: active backup at epoch 2; drained: none\n"
    );

    // Refused: the server's reason, exit 1.
    let out = highlander(&[
        "switchover",
        "app",
        "--to",
        "backup",
        "--api",
        &api,
        "--token-file",
        &token,
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already the active instance"),
        "{}",
        text(&out.stderr)
    );
    let out = highlander(&[
        "drain",
        "app",
        "primary",
        "--api",
        &api,
        "--token-file",
        &wrong,
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));

    let out = highlander(&[
        "drain",
        "app",
        "primary",
        "--api",
        &api,
        "--token-file",
        &token,
    ])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("drained: primary"));
    let out = highlander(&[
        "undrain",
        "app",
        "primary",
        "--api",
        &api,
        "--token-file",
        &token,
    ])?;
    assert!(
        text(&out.stdout).contains("drained: none"),
        "{}",
        text(&out.stdout)
    );

    let out = highlander(&["events", "--api", &api])?;
    let lines = text(&out.stdout);
    assert!(out.status.success());
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.contains("none -> primary  (initial)"), "{lines}");
    assert!(lines.contains("primary -> backup  (switchover)"), "{lines}");

    // No API given at all: a usage error.
    let out = highlander(&["status"])?;
    assert_eq!(out.status.code(), Some(2));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_changes_as_they_are_committed() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let cluster = TestCluster::start("majority").await?;
    let leader = cluster.leader().await?;
    let api = format!("http://{}", cluster.node(leader).api);
    /// Kills the follower however the test ends.
    struct Follower(std::process::Child);
    impl Drop for Follower {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follower = Follower(
        Command::new(env!("CARGO_BIN_EXE_highlander"))
            .args(["events", "--follow", "--api", &api])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = follower
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> Result<String> {
        rx.recv_timeout(std::time::Duration::from_secs(15))
            .map_err(|_| anyhow::anyhow!("no event line for {what}"))
    };
    let first = next("the first decision")?;
    assert!(first.contains("none -> primary  (initial)"), "{first}");

    let dir = tempfile::tempdir()?;
    let token = dir.path().join("api.token");
    std::fs::write(&token, API_TOKEN)?;
    // Wait until backup is healthy everywhere, then switch to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = highlander(&[
            "switchover",
            "app",
            "--to",
            "backup",
            "--api",
            &api,
            "--token-file",
            &token.to_string_lossy(),
        ])?;
        if out.status.success() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{}",
            text(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // polling pace
    }
    let second = next("the switchover")?;
    assert!(
        second.contains("primary -> backup  (switchover)"),
        "{second}"
    );

    drop(follower);
    cluster.stop().await
}
