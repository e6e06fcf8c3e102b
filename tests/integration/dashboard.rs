//! The dashboard in a real headless Chromium: the page served by a node runs
//! its script under the node's content security policy, polls the API and
//! shows the active instance and epoch, before and after a failover.
//!
//! Chromium is driven the simplest way that works: `--dump-dom` after a
//! `--virtual-time-budget` (virtual time waits for pending fetches, so the
//! page has polled by the time the DOM is printed), and `--screenshot`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use highlander::config::Config;
use highlander::node::Node;
use tokio_util::sync::CancellationToken;

use crate::harness::{ConfigDir, Instance, eventually, one_node_config};

/// Virtual time each page load gets: the first poll fires at once, so this
/// leaves room for a few.
const VIRTUAL_TIME_MS: u32 = 2500;

/// The headless browser, or `None` (with the reason) when it is not installed.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HIGHLANDER_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome-stable",
        "google-chrome",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `url` with `extra` arguments and returns its stdout.
async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> Result<String> {
    // A fresh profile each run: no cache, no state shared between loads.
    let profile = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .context("chromium did not finish within 60s")?
        .with_context(|| format!("run {}", browser.display()))?;
    if !output.status.success() {
        bail!(
            "chromium exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// One element of the dumped DOM, found by its `data-testid`.
#[derive(Debug)]
struct Element {
    /// The opening tag, attributes included.
    tag: String,
    /// The text up to the first child tag (our test ids mark leaf elements).
    text: String,
}

impl Element {
    fn hidden(&self) -> bool {
        self.tag.contains(" hidden")
    }
}

fn element(dom: &str, testid: &str) -> Option<Element> {
    let marker = format!("data-testid=\"{testid}\"");
    let at = dom.find(&marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let text_end = dom[end + 1..].find('<').map_or(dom.len(), |i| end + 1 + i);
    Some(Element {
        tag: dom[start..=end].to_owned(),
        text: unescape(&dom[end + 1..text_end]),
    })
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// What the page shows for service `app` once it has polled the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    active: String,
    epoch: u64,
}

async fn shown(browser: &Path, url: &str) -> Result<Option<(Shown, String)>> {
    let dom = run_chromium(browser, url, &["--dump-dom".into()]).await?;
    if !dom.contains("data-state=\"ready\"") {
        return Ok(None);
    }
    let (Some(active), Some(epoch)) = (element(&dom, "active-app"), element(&dom, "epoch-app"))
    else {
        return Ok(None);
    };
    let epoch = epoch
        .text
        .trim()
        .parse()
        .with_context(|| format!("epoch element {epoch:?}"))?;
    Ok(Some((
        Shown {
            active: active.text.trim().to_owned(),
            epoch,
        },
        dom,
    )))
}

/// The screenshot's folder: kept after the run for a person to look at.
fn output_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-output/dashboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_active_instance_and_follows_a_failover() -> Result<()> {
    let Some(browser) = chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "chromium is not installed, and CI=true: the dashboard must be tested in CI \
                 (apt-get install -y chromium, or set HIGHLANDER_CHROMIUM to a Chrome binary)"
            );
        }
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED: dashboard browser test: no chromium on PATH               !!\n\
             !! (apt-get install -y chromium, or set HIGHLANDER_CHROMIUM)          !!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return Ok(());
    };

    let primary = Instance::start("primary").await?;
    let backup = Instance::start("backup").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(
        &[&primary, &backup],
        "auto",
        "127.0.0.1:0",
    ))?;
    let node = Node::bind(Config::load(&file)?, 1).await?;
    let url = format!("http://{}/", node.api_addr());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(node.run(cancel.clone()));

    let (first, dom) = eventually(
        Duration::from_secs(30),
        "the page shows the first decision",
        || shown(&browser, &url),
    )
    .await?;
    assert_eq!(
        first,
        Shown {
            active: "primary".into(),
            epoch: 1
        }
    );
    let majority = element(&dom, "majority").context("the majority pill")?;
    assert_eq!(majority.text, "in majority");
    assert!(element(&dom, "banner-minority").is_some_and(|e| e.hidden()));
    assert!(element(&dom, "connection-error").is_some_and(|e| e.hidden()));
    let primary_row = element(&dom, "instance-app-primary").context("primary's row")?;
    assert!(primary_row.tag.contains("data-health=\"up\""), "{dom}");

    primary.kill().await;
    let (moved, dom) = eventually(
        Duration::from_secs(30),
        "the page shows the failover to backup",
        || async {
            Ok(shown(&browser, &url)
                .await?
                .filter(|(shown, _)| shown.active == "backup"))
        },
    )
    .await?;
    assert_eq!(
        moved,
        Shown {
            active: "backup".into(),
            epoch: 2
        }
    );
    // The timeline either lists the failover or, on a node without
    // `GET /v1/events`, says so instead of failing.
    let unavailable = element(&dom, "events-unavailable").context("the events note")?;
    ensure!(
        !unavailable.hidden() || dom.contains("data-testid=\"event-"),
        "neither a timeline nor the 'not available' note: {dom}"
    );

    let out = output_dir();
    std::fs::create_dir_all(&out)?;
    let png = out.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &browser,
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,800".into(),
        ],
    )
    .await?;
    let bytes = std::fs::read(&png).with_context(|| format!("read {}", png.display()))?;
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes: a blank page?",
        png.display(),
        bytes.len()
    );
    eprintln!("dashboard screenshot: {}", png.display());

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;
    drop(backup);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_uncached_under_a_strict_policy() -> Result<()> {
    let instance = Instance::start("only").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(&[&instance], "auto", "127.0.0.1:0"))?;
    let node = Node::bind(Config::load(&file)?, 1).await?;
    let url = format!("http://{}/", node.api_addr());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(node.run(cancel.clone()));

    let response = reqwest::get(&url).await?;
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("cache-control"), "no-cache");
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} missing: {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let body = response.text().await?;
    assert!(body.contains("data-testid=\"services\""));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;
    Ok(())
}
