//! `highlander demo`: `--scripted` runs the story end to end and exits 0
//! with a summary of what it measured; however the demo ends (even by
//! SIGKILL) no node process or temporary directory is left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scripted story takes about 20 s; a loaded CI machine gets slack.
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn scripted_demo_tells_the_story_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_highlander"))
        .args(["demo", "--scripted"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start highlander demo");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the demo's output");
            panic!(
                "the demo did not finish within {DEADLINE:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().expect("collect the demo's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "demo exited {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "colours in piped output:\n{stdout}"
    );

    let summary = stdout
        .split("\nSummary\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    for row in [
        "failover 1 (primary): detection (majority verdict down)",
        "failover 1 (primary): commit (event at)",
        "failover 1 (primary): every node answers the new instance",
        "failover 1 (primary): failed client requests",
        "leader kill 1 (node ",
        "new leader agreed",
        "survivor DNS failures",
        "restore 1: every node answers primary",
        "S1: no epoch answered with two instances",
    ] {
        assert!(summary.contains(row), "summary lacks {row:?}:\n{summary}");
    }
    assert!(!summary.contains("FAILED"), "a check failed:\n{summary}");
    // Every client line is the prototype's: time, answer, epoch, response.
    assert!(
        stdout.contains("client  app -> 127.0.0.2") && stdout.contains("200 primary"),
        "{stdout}"
    );
    assert!(
        stdout.contains("client  app -> 127.0.0.3") && stdout.contains("200 backup"),
        "{stdout}"
    );

    // Nothing survives the demo: no node process, no temporary directory.
    let (pids, dir) = leftovers(&stdout);
    for pid in pids {
        assert!(!node_alive(&pid), "node process {pid} survived the demo");
    }
    assert!(!Path::new(&dir).exists(), "{dir} survived the demo");
}

#[test]
fn a_demo_killed_with_sigkill_leaves_no_node_and_no_directory() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_highlander"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start highlander demo");
    let stdout = child.stdout.take().expect("piped stdout");
    // Read until the demo has named its nodes and directory.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("temporary directory: ") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    let Ok(seen) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the demo never named its temporary directory");
    };
    let (pids, dir) = leftovers(&seen);
    assert!(pids.iter().all(|pid| node_alive(pid)), "{seen}");
    child.kill().expect("SIGKILL the demo");
    child.wait().expect("reap the demo");

    // The kernel kills the nodes (PR_SET_PDEATHSIG); the janitor removes
    // the directory. Poll: both take a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<&String> = pids.iter().filter(|pid| node_alive(pid)).collect();
        let dir_left = Path::new(&dir).exists();
        if alive.is_empty() && !dir_left {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after SIGKILL: nodes {alive:?} alive, {dir} left: {dir_left}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node pids and the temporary directory the demo printed.
fn leftovers(stdout: &str) -> (Vec<String>, String) {
    let pids: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node ")?.split(": pid ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 3, "three node pids in:\n{stdout}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("temporary directory: "))
        .expect("the demo names its temporary directory")
        .to_owned();
    (pids, dir)
}

/// Whether `pid` is a running `highlander run` process (a zombie, or a
/// reused pid running something else, does not count).
fn node_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.contains("highlander") && cmdline.contains("run"))
}
