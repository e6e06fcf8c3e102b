//! The DigitalOcean and Cloudflare publishers against local fakes of their
//! APIs: creating, changing and repairing a record and its marker,
//! pagination, rate limits, a wrong token, a write fenced by the lease, and
//! the reconcile loop (`Publishers`) under a leader the test controls,
//! failing as well as succeeding.
//!
//! Every scenario runs against both APIs (`digitalocean::…` and
//! `cloudflare::…`).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use highlander::config::{
    ApiToken, Config, PublishConfig, PublishKind, Secret, Target, TokenSource,
};
use highlander::dns::publish::{
    self, Desired, Leader, Lease, Marker, Plan, PublishError, Publisher, Publishers, Unfenced,
    WriteReason,
};
use highlander::metrics::{Metrics, ScrapeView};
use highlander::model::{AppliedState, Command, Epoch, PublishStatus, Reason, RecordState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::fake_dns_api::{FakeDnsApi, FakeRecord, Flavour};
use crate::harness::eventually;

const ZONE: &str = "example.com.";
const NAME: &str = "db.example.com.";
const MARKER: &str = "_highlander.db.example.com.";
const TOKEN: &str = "fake-api-token-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs each scenario once per API, as `digitalocean::name` and `cloudflare::name`.
macro_rules! for_both_apis {
    ($($scenario:ident),* $(,)?) => {
        mod digitalocean {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Flavour::DigitalOcean).await
                }
            )*
        }
        mod cloudflare {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Flavour::Cloudflare).await
                }
            )*
        }
    };
}

for_both_apis!(
    an_empty_zone_gets_the_record_and_its_marker,
    a_new_epoch_replaces_record_and_marker_without_leaving_duplicates,
    a_record_edited_behind_highlanders_back_is_repaired,
    listings_follow_every_page,
    a_rate_limit_is_reported_with_the_servers_retry_after,
    a_wrong_token_is_refused_naming_its_source_never_the_token,
    publishers_follow_the_active_instance_only_while_leading,
    an_older_epoch_is_never_written_over_a_newer_marker,
    a_write_stops_at_the_first_request_after_the_lease_ran_out,
    a_slow_request_gets_the_targets_timeout_not_the_lease_left,
    a_rate_limited_loop_sends_nothing_until_retry_after_then_clears_its_error,
    a_wrong_token_under_the_loop_names_its_source_and_backs_off,
    one_refused_record_does_not_keep_the_others_from_being_published,
);

// ---------------------------------------------------------------- helpers

/// A `[[publish]]` target for `fake` sending `token`.
fn target(fake: &FakeDnsApi, token: &str) -> PublishConfig {
    let token = ApiToken {
        source: TokenSource::Env("HIGHLANDER_TEST_TOKEN".into()),
        secret: Secret(token.as_bytes().to_vec()),
    };
    let base_url = fake.base_url.clone();
    let kind = match fake.flavour {
        Flavour::DigitalOcean => PublishKind::DigitalOcean { base_url, token },
        Flavour::Cloudflare => PublishKind::Cloudflare {
            base_url,
            zone_id: None,
            token,
        },
    };
    PublishConfig {
        name: "fake".into(),
        kind,
        services: vec!["db".into()],
        zone: ZONE.into(),
        record: "{service}.example.com.".into(),
        ttl: Duration::from_secs(60),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
    }
}

async fn start(flavour: Flavour) -> Result<(FakeDnsApi, Box<dyn Publisher>)> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    let publisher = publish::build(&target(&fake, TOKEN)).map_err(anyhow::Error::msg)?;
    Ok((fake, publisher))
}

fn a(last: u8) -> Target {
    Target::A(Ipv4Addr::new(192, 0, 2, last))
}

fn desired(instance: &str, epoch: u64, target: Target) -> Desired {
    Desired {
        service: "db".into(),
        name: NAME.into(),
        target,
        ttl: 60,
        marker: Marker {
            instance: instance.into(),
            epoch,
        },
    }
}

/// One pass by hand: read, plan, write if the plan says so, and read back,
/// which must then be in sync. Returns the plan.
async fn reconcile(publisher: &dyn Publisher, want: &Desired) -> Result<Plan> {
    let actual = publisher.read(&want.name).await?;
    let plan = publish::plan(want, &actual);
    if let Plan::Write(_) = plan {
        publisher.write(want, &actual, &Unfenced).await?;
    }
    let after = publisher.read(&want.name).await?;
    ensure!(
        publish::plan(want, &after) == Plan::InSync,
        "not in sync after {plan:?}: {after:?}"
    );
    Ok(plan)
}

/// What the fake holds at the record's name and at its marker, briefly.
fn holding(fake: &FakeDnsApi) -> (Vec<(String, String, u32)>, Vec<String>) {
    let brief = |r: FakeRecord| (r.rtype, r.content, r.ttl);
    let records = fake.at(NAME).into_iter().map(brief).collect();
    let markers = fake
        .at(MARKER)
        .into_iter()
        .map(|r| format!("{} {}", r.rtype, r.content))
        .collect();
    (records, markers)
}

/// Asserts that the fake holds exactly one record, `(type, content)` with
/// the TTL the tests publish, and exactly the marker `(instance, epoch)`.
#[track_caller]
fn assert_holds(fake: &FakeDnsApi, (rtype, content): (&str, &str), (instance, epoch): (&str, u64)) {
    assert_eq!(
        holding(fake),
        (
            vec![(rtype.to_owned(), content.to_owned(), 60)],
            vec![marker(instance, epoch)]
        )
    );
}

fn marker(instance: &str, epoch: u64) -> String {
    format!("TXT instance={instance} epoch={epoch}")
}

// ---------------------------------------------------------------- one publisher

async fn an_empty_zone_gets_the_record_and_its_marker(flavour: Flavour) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    let unrelated = fake.add("A", "www.example.com.", "203.0.113.80", 300);
    let want = desired("db1", 1, a(1));
    assert_eq!(
        reconcile(publisher.as_ref(), &want).await?,
        Plan::Write(WriteReason::Create)
    );
    assert_holds(&fake, ("A", "192.0.2.1"), ("db1", 1));
    // In sync now: another pass reads and writes nothing.
    let writes = fake.writes();
    assert_eq!(reconcile(publisher.as_ref(), &want).await?, Plan::InSync);
    assert_eq!(fake.writes(), writes);
    assert!(fake.records().iter().any(|r| r.id == unrelated));
    if flavour == Flavour::Cloudflare {
        // The zone's id was looked up by name once, then kept.
        assert_eq!(fake.count_path("/client/v4/zones"), 1);
    }
    Ok(())
}

async fn a_new_epoch_replaces_record_and_marker_without_leaving_duplicates(
    flavour: Flavour,
) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    reconcile(publisher.as_ref(), &desired("db1", 1, a(1))).await?;
    let marker_id = fake.at(MARKER)[0].id.clone();
    // Another address: both are updated in place.
    assert_eq!(
        reconcile(publisher.as_ref(), &desired("db2", 2, a(2))).await?,
        Plan::Write(WriteReason::Change)
    );
    assert_holds(&fake, ("A", "192.0.2.2"), ("db2", 2));
    assert_eq!(
        fake.at(MARKER)[0].id,
        marker_id,
        "the marker's id is reused"
    );
    // A CNAME: the A must go first, or the API refuses the CNAME.
    let cname = Target::Cname("db3.internal.example.".into());
    reconcile(publisher.as_ref(), &desired("db3", 3, cname)).await?;
    assert_holds(&fake, ("CNAME", "db3.internal.example."), ("db3", 3));
    // And back to an address.
    reconcile(publisher.as_ref(), &desired("db1", 4, a(1))).await?;
    assert_holds(&fake, ("A", "192.0.2.1"), ("db1", 4));
    Ok(())
}

async fn a_record_edited_behind_highlanders_back_is_repaired(flavour: Flavour) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    let want = desired("db1", 5, a(1));
    reconcile(publisher.as_ref(), &want).await?;
    let id = fake.at(NAME)[0].id.clone();
    fake.edit(&id, "203.0.113.9");
    fake.add("AAAA", NAME, "2001:db8::9", 60);
    assert_eq!(
        reconcile(publisher.as_ref(), &want).await?,
        Plan::Write(WriteReason::Repair)
    );
    assert_holds(&fake, ("A", "192.0.2.1"), ("db1", 5));
    assert_eq!(fake.at(NAME)[0].id, id, "the record's id is reused");
    // A marker edited by hand is repaired too.
    let marker_id = fake.at(MARKER)[0].id.clone();
    fake.edit(&marker_id, "hello");
    assert_eq!(
        reconcile(publisher.as_ref(), &want).await?,
        Plan::Write(WriteReason::Adopt)
    );
    assert_eq!(holding(&fake).1, vec![marker("db1", 5)]);
    Ok(())
}

async fn listings_follow_every_page(flavour: Flavour) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    // The fake's pages hold two records; the name holds five, the marker
    // three, and the zone more besides.
    for i in 0..4 {
        fake.add("A", &format!("host{i}.example.com."), "203.0.113.1", 300);
    }
    for last in 11..16 {
        fake.add("A", NAME, &format!("192.0.2.{last}"), 300);
    }
    for epoch in [1, 2] {
        fake.add("TXT", MARKER, &format!("instance=db1 epoch={epoch}"), 300);
    }
    fake.add("TXT", MARKER, "left by hand", 300);
    // A first read, so Cloudflare's zone lookup is not counted below.
    publisher.read(NAME).await?;
    let gets = fake.count("GET");
    let actual = publisher.read(NAME).await?;
    assert_eq!(actual.records.len(), 5, "{actual:?}");
    assert_eq!(actual.markers.len(), 3, "{actual:?}");
    assert_eq!(actual.marker().map(|m| m.epoch), Some(2));
    // Three pages for the records, two for the markers.
    assert_eq!(fake.count("GET") - gets, 5);
    assert_eq!(
        reconcile(publisher.as_ref(), &desired("db2", 3, a(2))).await?,
        Plan::Write(WriteReason::Change)
    );
    assert_holds(&fake, ("A", "192.0.2.2"), ("db2", 3));
    assert_eq!(
        fake.records().len(),
        4 + 2,
        "the other names are left alone"
    );
    Ok(())
}

async fn a_rate_limit_is_reported_with_the_servers_retry_after(flavour: Flavour) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    // A first read, so Cloudflare's zone id is known and the limit meets a listing.
    publisher.read(NAME).await?;
    fake.rate_limit(1, 7);
    match publisher.read(NAME).await {
        Err(PublishError::RateLimited {
            retry_after,
            detail,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(7));
            assert!(detail.contains(NAME), "{detail}");
        }
        other => bail!("expected RateLimited, got {other:?}"),
    }
    // A write that meets the limit half-way is finished by the next attempt.
    let want = desired("db1", 1, a(1));
    let actual = publisher.read(NAME).await?;
    fake.rate_limit(1, 2);
    let first = publisher.write(&want, &actual, &Unfenced).await;
    assert!(
        matches!(first, Err(PublishError::RateLimited { retry_after, .. }) if retry_after == Duration::from_secs(2)),
        "{first:?}"
    );
    assert_eq!(
        reconcile(publisher.as_ref(), &want).await?,
        Plan::Write(WriteReason::Create)
    );
    assert_holds(&fake, ("A", "192.0.2.1"), ("db1", 1));
    Ok(())
}

async fn a_wrong_token_is_refused_naming_its_source_never_the_token(
    flavour: Flavour,
) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    let wrong = "wrong-token-fedcba9876543210";
    let publisher = publish::build(&target(&fake, wrong)).map_err(anyhow::Error::msg)?;
    let error = match publisher.read(NAME).await {
        Err(error @ PublishError::Refused(_)) => error.to_string(),
        other => bail!("expected Refused, got {other:?}"),
    };
    assert!(
        error.contains("token from $HIGHLANDER_TEST_TOKEN"),
        "{error}"
    );
    assert!(error.contains("401"), "{error}");
    let api_says = match flavour {
        Flavour::DigitalOcean => "Unable to authenticate you",
        Flavour::Cloudflare => "Authentication error",
    };
    assert!(error.contains(api_says), "{error}");
    assert!(error.contains(&fake.base_url), "{error}");
    assert!(!error.contains(wrong) && !error.contains(TOKEN), "{error}");
    assert_eq!(fake.writes(), 0);
    Ok(())
}

// ---------------------------------------------------------------- the reconcile loop

/// A leader the test controls: whether it leads, and its applied state.
struct FakeLeader {
    leading: AtomicBool,
    applied: watch::Sender<Arc<AppliedState>>,
}

impl Leader for FakeLeader {
    fn acting_for(&self) -> Option<Duration> {
        self.leading
            .load(Ordering::SeqCst)
            .then_some(Duration::from_secs(10))
    }

    fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.applied.subscribe()
    }
}

impl FakeLeader {
    fn new(leading: bool) -> Arc<FakeLeader> {
        Arc::new(FakeLeader {
            leading: AtomicBool::new(leading),
            applied: watch::Sender::new(Arc::new(AppliedState::default())),
        })
    }

    /// Applies "make `instance` of db active at `epoch`".
    fn activate(&self, instance: &str, epoch: u64) {
        self.activate_in("db", instance, epoch);
    }

    /// Applies "make `instance` of `service` active at `epoch`".
    fn activate_in(&self, service: &str, instance: &str, epoch: u64) {
        self.applied.send_modify(|applied| {
            let mut next = AppliedState::clone(applied);
            next.index += 1;
            next.state.apply(
                next.index,
                &Command::Activate {
                    service: service.into(),
                    instance: instance.into(),
                    epoch: Epoch(epoch),
                    reason: Reason::Failover,
                    at: next.index,
                    evidence: Default::default(),
                },
            );
            *applied = Arc::new(next);
        });
    }
}

/// A config with service db (db1 answers an A, db2 a CNAME) published to `fake`.
fn config(fake: &FakeDnsApi, dir: &tempfile::TempDir) -> Result<Arc<Config>> {
    config_with(fake, dir, TOKEN, "")
}

/// [`config`] with `token` in the token file and `more` TOML at the end.
fn config_with(
    fake: &FakeDnsApi,
    dir: &tempfile::TempDir,
    token: &str,
    more: &str,
) -> Result<Arc<Config>> {
    std::fs::write(
        dir.path().join("cluster.secret"),
        "integration-test-secret-0123456789",
    )?;
    std::fs::write(dir.path().join("api.token"), format!("{token}\n"))?;
    let text = format!(
        r#"
[cluster]
secret_file = "cluster.secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"

[dns]
zone = "svc.example."

[[services]]
name = "db"
[services.check]
kind = "tcp"
[[services.instances]]
name = "db1"
address = "10.0.0.11:5432"
a = "192.0.2.11"
[[services.instances]]
name = "db2"
address = "10.0.0.12:5432"
cname = "db2.internal.example."

[[publish]]
name = "fake"
kind = "{kind}"
zone = "{ZONE}"
base_url = "{base_url}"
token_file = "api.token"
ttl = "60s"
interval = "1s"
timeout = "2s"
{more}
"#,
        kind = fake.flavour.kind(),
        base_url = fake.base_url,
    );
    let config = Config::parse(&dir.path().join("highlander.toml"), &text)?;
    Ok(Arc::new(config))
}

/// Runs `Publishers` for `fake` under `leader` until the returned token is cancelled.
fn run(
    config: Arc<Config>,
    leader: Arc<FakeLeader>,
) -> Result<(
    highlander::model::PublishBoard,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    run_counted(config, leader, Metrics::new())
}

/// [`run`], counting in `metrics`.
fn run_counted(
    config: Arc<Config>,
    leader: Arc<FakeLeader>,
    metrics: Metrics,
) -> Result<(
    highlander::model::PublishBoard,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let publishers = Publishers::new(config)
        .map_err(anyhow::Error::msg)?
        .with_metrics(metrics);
    let board = publishers.board();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(publishers.run(leader, cancel.clone()));
    Ok((board, cancel, task))
}

/// The only target's status.
fn status(board: &highlander::model::PublishBoard) -> Result<PublishStatus> {
    board
        .snapshot()
        .into_iter()
        .next()
        .context("the board lists no target")
}

/// Waits until the board says db's record is in sync at `epoch`.
async fn in_sync_at(board: &highlander::model::PublishBoard, epoch: u64) -> Result<PublishStatus> {
    eventually(DEADLINE, &format!("in sync at epoch {epoch}"), || async {
        let status = status(board)?;
        let record = status.records.first();
        let synced = status.active
            && status.in_sync
            && status.last_success.is_some()
            && record.is_some_and(|r| {
                r.state == RecordState::InSync && r.published_epoch == Some(epoch)
            });
        Ok(synced.then_some(status))
    })
    .await
}

/// How long a node that does not lead is watched for writes it must not
/// make: several of the loop's leadership checks (every 100 ms). A negative
/// can only be observed over a window.
const QUIET_WINDOW: Duration = Duration::from_millis(700);

async fn publishers_follow_the_active_instance_only_while_leading(flavour: Flavour) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    let dir = tempfile::tempdir()?;
    let leader = FakeLeader::new(false);
    leader.activate("db1", 1);
    let (board, cancel, task) = run(config(&fake, &dir)?, leader.clone())?;

    // Not the leader: not a single request.
    tokio::time::sleep(QUIET_WINDOW).await;
    assert_eq!(fake.requests(), 0);
    assert!(!status(&board)?.active);

    // Leading: the record and marker appear and the board says in sync.
    leader.leading.store(true, Ordering::SeqCst);
    let synced = in_sync_at(&board, 1).await?;
    assert_eq!(synced.failures, 0);
    assert!(synced.writes >= 1);
    assert_holds(&fake, ("A", "192.0.2.11"), ("db1", 1));

    // A failover: the record follows, an A becomes a CNAME.
    leader.activate("db2", 2);
    in_sync_at(&board, 2).await?;
    assert_holds(&fake, ("CNAME", "db2.internal.example."), ("db2", 2));

    // Deposed: it stops, and a later change is not written by this node.
    leader.leading.store(false, Ordering::SeqCst);
    eventually(DEADLINE, "the board says inactive", || async {
        Ok((!status(&board)?.active).then_some(()))
    })
    .await?;
    let writes = fake.writes();
    leader.activate("db1", 3);
    tokio::time::sleep(QUIET_WINDOW).await;
    assert_eq!(fake.writes(), writes);
    assert_eq!(holding(&fake).1, vec![marker("db2", 2)]);

    cancel.cancel();
    task.await?;
    Ok(())
}

async fn an_older_epoch_is_never_written_over_a_newer_marker(flavour: Flavour) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    fake.add("CNAME", NAME, "db2.internal.example.", 60);
    fake.add("TXT", MARKER, "instance=db2 epoch=9", 60);
    let before = fake.records();
    let dir = tempfile::tempdir()?;
    let leader = FakeLeader::new(true);
    // Epochs only move one at a time: this node is at 2, the target at 9.
    leader.activate("db2", 1);
    leader.activate("db1", 2);
    let (board, cancel, task) = run(config(&fake, &dir)?, leader)?;

    let held = eventually(DEADLINE, "the record is held", || async {
        let status = status(&board)?;
        Ok(status
            .records
            .first()
            .filter(|r| r.state == RecordState::Held)
            .cloned())
    })
    .await?;
    assert_eq!(held.epoch, 2);
    assert_eq!(held.published_epoch, Some(9));
    let why = held.detail.unwrap_or_default();
    assert!(why.contains("epoch 9 (db2)"), "{why}");
    assert!(!status(&board)?.in_sync);
    assert_eq!(fake.writes(), 0);
    assert_eq!(fake.records(), before);

    cancel.cancel();
    task.await?;
    Ok(())
}

/// `highlander_publisher_failures_total` for the target `fake` and `kind`.
fn failures_counted(metrics: &Metrics, kind: &str) -> u64 {
    let labels = format!("{{publisher=\"fake\",kind=\"{kind}\"}}");
    metrics
        .render(ScrapeView::default())
        .lines()
        .find(|line| line.starts_with(&format!("highlander_publisher_failures_total{labels}")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- failing passes

async fn a_rate_limited_loop_sends_nothing_until_retry_after_then_clears_its_error(
    flavour: Flavour,
) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    let retry_after = Duration::from_secs(2);
    fake.rate_limit(1, retry_after.as_secs());
    let dir = tempfile::tempdir()?;
    let leader = FakeLeader::new(true);
    leader.activate("db1", 1);
    let metrics = Metrics::new();
    let (board, cancel, task) = run_counted(config(&fake, &dir)?, leader.clone(), metrics.clone())?;

    let limited = eventually(DEADLINE, "the board says rate-limited", || async {
        let status = status(&board)?;
        Ok(status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("rate-limited"))
            .then_some(status))
    })
    .await?;
    let error = limited.last_error.clone().unwrap_or_default();
    assert!(error.contains("retrying after 2s"), "{error}");
    assert!(limited.last_error_at.is_some());
    assert_eq!(limited.failures, 1);
    assert!(!limited.in_sync);
    assert_eq!(failures_counted(&metrics, "rate-limited"), 1);
    // An applied change does not cut a rate limit's wait short.
    leader.activate("db2", 2);

    let synced = in_sync_at(&board, 2).await?;
    let arrivals = fake.arrivals();
    let waited = arrivals[1].duration_since(arrivals[0]);
    assert!(
        waited >= retry_after,
        "the second request came {waited:?} after the 429, before Retry-After ({retry_after:?})"
    );
    // In sync again: the status no longer says it fails, but keeps when it did.
    assert_eq!(synced.last_error, None);
    assert_eq!(synced.last_error_at, limited.last_error_at);
    assert_eq!(synced.failures, 0);
    assert_holds(&fake, ("CNAME", "db2.internal.example."), ("db2", 2));

    cancel.cancel();
    task.await?;
    Ok(())
}

async fn a_wrong_token_under_the_loop_names_its_source_and_backs_off(
    flavour: Flavour,
) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    let dir = tempfile::tempdir()?;
    let wrong = "wrong-token-fedcba9876543210";
    let leader = FakeLeader::new(true);
    leader.activate("db1", 1);
    let metrics = Metrics::new();
    let config = config_with(&fake, &dir, wrong, "")?;
    let (board, cancel, task) = run_counted(config, leader, metrics.clone())?;

    // Every pass is one refused request: four passes, three waits.
    let failing = eventually(Duration::from_secs(15), "four failed passes", || async {
        let status = status(&board)?;
        Ok((status.failures >= 4 && fake.requests() >= 4).then_some(status))
    })
    .await?;
    let error = failing.last_error.clone().unwrap_or_default();
    let source = format!("token from {}", dir.path().join("api.token").display());
    assert!(error.contains(&source), "{error}");
    assert!(!error.contains(wrong) && !error.contains(TOKEN), "{error}");
    assert!(!failing.in_sync);
    assert!(failures_counted(&metrics, "refused") >= 4);
    assert_eq!(fake.writes(), 0);
    // The waits double (1 s, 2 s, 4 s, each scaled by 0.5 to 1).
    let arrivals = fake.arrivals();
    let waits: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(waits[1] >= Duration::from_secs(1), "{waits:?}");
    assert!(waits[2] >= Duration::from_secs(2), "{waits:?}");

    cancel.cancel();
    task.await?;
    Ok(())
}

async fn one_refused_record_does_not_keep_the_others_from_being_published(
    flavour: Flavour,
) -> Result<()> {
    let fake = FakeDnsApi::start(flavour, ZONE, TOKEN).await?;
    // db comes first in the config, and every write to it is refused.
    fake.refuse_writes_at(NAME);
    let web = "web.example.com.";
    let dir = tempfile::tempdir()?;
    let leader = FakeLeader::new(true);
    leader.activate("db1", 1);
    leader.activate_in("web", "web1", 1);
    let more = r#"
[[services]]
name = "web"
[services.check]
kind = "tcp"
[[services.instances]]
name = "web1"
address = "10.0.0.21:80"
a = "192.0.2.21"
"#;
    let config = config_with(&fake, &dir, TOKEN, more)?;
    let (board, cancel, task) = run(config, leader)?;

    let status = eventually(DEADLINE, "web in sync while db fails", || async {
        let status = status(&board)?;
        let web_synced = status
            .records
            .iter()
            .any(|r| r.name == web && r.state == RecordState::InSync);
        Ok(web_synced.then_some(status))
    })
    .await?;
    let states: Vec<(&str, RecordState)> = status
        .records
        .iter()
        .map(|r| (r.service.as_str(), r.state))
        .collect();
    assert_eq!(
        states,
        [("db", RecordState::Failed), ("web", RecordState::InSync)]
    );
    let db = &status.records[0];
    let detail = db.detail.clone().unwrap_or_default();
    assert!(detail.contains("refused by the test"), "{detail}");
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.contains(NAME), "{error}");
    assert!(status.failures >= 1 && !status.in_sync);
    let published: Vec<String> = fake
        .at(web)
        .into_iter()
        .map(|r| format!("{} {}", r.rtype, r.content))
        .collect();
    assert_eq!(published, ["A 192.0.2.21"]);
    assert!(fake.at(NAME).is_empty());

    cancel.cancel();
    task.await?;
    Ok(())
}

// ---------------------------------------------------------------- the lease fences writes

/// A lease that holds for `checks` more checks, then is gone: a leader
/// deposed in the middle of a write.
struct RunsOut(AtomicUsize);

impl Lease for RunsOut {
    fn left(&self) -> Option<Duration> {
        let held = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        held.then_some(Duration::from_secs(10))
    }
}

/// A lease with a fixed time left.
struct Left(Duration);

impl Lease for Left {
    fn left(&self) -> Option<Duration> {
        Some(self.0)
    }
}

async fn a_write_stops_at_the_first_request_after_the_lease_ran_out(
    flavour: Flavour,
) -> Result<()> {
    let (fake, publisher) = start(flavour).await?;
    let want = desired("db1", 1, a(1));
    let actual = publisher.read(NAME).await?;
    // The record goes out; by the marker's request the lease is gone.
    let result = publisher
        .write(&want, &actual, &RunsOut(AtomicUsize::new(1)))
        .await;
    match &result {
        Err(PublishError::Deposed(why)) => assert!(why.contains("no longer leads"), "{why}"),
        other => bail!("expected the write to stop, got {other:?}"),
    }
    assert_eq!(fake.writes(), 1);
    assert_eq!(holding(&fake).1, Vec::<String>::new(), "no marker written");
    // Deposed before it starts: not a single request.
    let requests = fake.requests();
    let result = publisher
        .write(&want, &actual, &RunsOut(AtomicUsize::new(0)))
        .await;
    assert!(
        matches!(result, Err(PublishError::Deposed(_))),
        "{result:?}"
    );
    assert_eq!(fake.requests(), requests);
    Ok(())
}

async fn a_slow_request_gets_the_targets_timeout_not_the_lease_left(
    flavour: Flavour,
) -> Result<()> {
    // A leader's lease has a few hundred milliseconds left at any moment
    // (every heartbeat renews it); a real API call can take longer, and
    // must get the target's timeout (5 s here), not be cut off.
    let (fake, publisher) = start(flavour).await?;
    let want = desired("db1", 1, a(1));
    let actual = publisher.read(NAME).await?;
    fake.delay_writes(Duration::from_millis(600));
    let started = Instant::now();
    publisher
        .write(&want, &actual, &Left(Duration::from_millis(200)))
        .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the write did not wait for the slow API"
    );
    assert_holds(&fake, ("A", "192.0.2.1"), ("db1", 1));
    Ok(())
}

#[test]
fn a_token_env_that_is_not_utf8_is_named_but_never_printed() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("cluster.secret"),
        "integration-test-secret-0123456789",
    )?;
    let file = dir.path().join("highlander.toml");
    std::fs::write(
        &file,
        r#"
[cluster]
secret_file = "cluster.secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"
[dns]
zone = "svc.example."
[[services]]
name = "db"
[services.check]
kind = "tcp"
[[services.instances]]
name = "db1"
address = "10.0.0.11:5432"
a = "192.0.2.11"
[[publish]]
name = "cf"
kind = "cloudflare"
zone = "example.com."
token_env = "CFTOK"
"#,
    )?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_highlander"))
        .arg("check-config")
        .arg(&file)
        .env("CFTOK", std::ffi::OsStr::from_bytes(b"supersecret-tok\xff"))
        .output()?;
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("publish[0].token_env = \"CFTOK\""),
        "{shown}"
    );
    assert!(
        shown.contains("$CFTOK") && shown.contains("not UTF-8"),
        "{shown}"
    );
    assert!(!shown.contains("supersecret"), "the token leaked: {shown}");
    Ok(())
}
