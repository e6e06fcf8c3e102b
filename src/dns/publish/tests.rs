//! The pure parts of publishing: markers, the plan, and what a target should hold.

use std::net::Ipv4Addr;

use super::*;
use crate::model::{Command, Epoch};

fn desired(epoch: u64, instance: &str, target: Target) -> Desired {
    Desired {
        service: "db".into(),
        name: "db.example.com.".into(),
        target,
        ttl: 30,
        marker: Marker {
            instance: instance.into(),
            epoch,
        },
    }
}

fn found<T>(value: T, ttl: u32) -> Found<T> {
    Found {
        value,
        ttl,
        id: None,
    }
}

fn holding(epoch: u64, instance: &str, target: Target) -> Actual {
    Actual {
        records: vec![found(target, 30)],
        markers: vec![found(
            Marker {
                instance: instance.into(),
                epoch,
            }
            .txt(),
            30,
        )],
    }
}

fn a(last: u8) -> Target {
    Target::A(Ipv4Addr::new(192, 0, 2, last))
}

#[test]
fn markers_read_back_in_both_written_forms() {
    let marker = Marker {
        instance: "db2".into(),
        epoch: 7,
    };
    assert_eq!(marker.strings(), ["instance=db2", "epoch=7"]);
    assert_eq!(marker.text(), "instance=db2 epoch=7");
    assert_eq!(Marker::parse(&marker.strings()), Some(marker.clone()));
    assert_eq!(Marker::parse(&[marker.text()]), Some(marker.clone()));
    // Cloudflare returns TXT content with its quotes.
    assert_eq!(Marker::parse(&["\"instance=db2 epoch=7\""]), Some(marker));
    assert_eq!(Marker::parse(&["instance=db2"]), None);
    assert_eq!(Marker::parse(&["epoch=seven instance=db2"]), None);
    assert_eq!(Marker::parse::<&str>(&[]), None);
}

#[test]
fn a_marker_quoted_string_by_string_reads_back() {
    let marker = Marker {
        instance: "db2".into(),
        epoch: 7,
    };
    // A multi-string TXT as an API may return it in one content.
    assert_eq!(
        Marker::parse(&["\"instance=db2\" \"epoch=7\""]),
        Some(marker.clone())
    );
    assert_eq!(
        Marker::parse(&["\"instance=db2\"", "\"epoch=7\""]),
        Some(marker.clone())
    );
    // And so it is in sync, not rewritten at every pass.
    let mut actual = holding(7, "db2", a(2));
    actual.markers[0].value = vec![b"\"instance=db2\" \"epoch=7\"".to_vec()];
    assert_eq!(plan(&desired(7, "db2", a(2)), &actual), Plan::InSync);
    // A string that is not UTF-8 is skipped, not misread.
    let bytes = [
        b"instance=db2".to_vec(),
        vec![0xff, b'x'],
        b"epoch=7".to_vec(),
    ];
    assert_eq!(Marker::parse(&bytes), Some(marker));
}

#[test]
fn failed_passes_wait_longer_each_time_and_a_rate_limit_as_long_as_asked() {
    let unreachable = PublishError::Unreachable("ns1 did not answer".into());
    let waits: Vec<(u64, bool)> = (1..=10)
        .map(|failures| {
            let (wait, wakes) = wait_after(&unreachable, failures, 1.0);
            (wait.as_secs(), wakes)
        })
        .collect();
    let grown: Vec<u64> = waits.iter().map(|(s, _)| *s).collect();
    assert_eq!(grown, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert!(waits.iter().all(|(_, wakes)| *wakes));
    // Jitter only shortens the wait, by at most half.
    assert_eq!(wait_after(&unreachable, 3, 0.5).0, Duration::from_secs(2));
    let limited = |seconds| PublishError::RateLimited {
        retry_after: Duration::from_secs(seconds),
        detail: "429".into(),
    };
    // A rate limit waits what it says, whatever the count, and no applied
    // change cuts it short.
    assert_eq!(
        wait_after(&limited(7), 1, 0.5),
        (Duration::from_secs(7), false)
    );
    assert_eq!(
        wait_after(&limited(7), 9, 1.0),
        (Duration::from_secs(7), false)
    );
    assert_eq!(wait_after(&limited(86_400), 1, 1.0).0, MAX_RETRY_AFTER);
    // A conflict is re-read at once, twice, then backs off like the rest.
    let conflict = PublishError::Conflict("NXRRSET".into());
    assert_eq!(wait_after(&conflict, 2, 1.0).0, VERIFY_AFTER);
    assert_eq!(wait_after(&conflict, 3, 1.0).0, Duration::from_secs(4));
}

#[test]
fn a_pass_waits_on_its_worst_error_and_says_how_many_failed() {
    let pass = |errors: Vec<PublishError>| Pass {
        records: Vec::new(),
        wrote: false,
        errors,
    };
    let limited = |seconds| PublishError::RateLimited {
        retry_after: Duration::from_secs(seconds),
        detail: format!("slow down {seconds}"),
    };
    let mixed = pass(vec![
        PublishError::Conflict("conflict".into()),
        limited(5),
        PublishError::Refused("refused".into()),
        limited(9),
        PublishError::Unreachable("unreachable".into()),
    ]);
    let worst = mixed.worst().expect("errors");
    assert_eq!(worst, &limited(9));
    assert_eq!(
        mixed.summary(worst),
        "slow down 9; retrying after 9s (and 4 more failed records; see records)"
    );
    let refused = pass(vec![
        PublishError::Unreachable("unreachable".into()),
        PublishError::Refused("refused".into()),
        PublishError::Conflict("conflict".into()),
    ]);
    assert_eq!(refused.worst().map(PublishError::kind), Some("refused"));
    let one = pass(vec![PublishError::Conflict("conflict".into())]);
    assert_eq!(one.summary(one.worst().expect("an error")), "conflict");
    assert!(pass(Vec::new()).worst().is_none());
}

#[test]
fn an_empty_target_is_created_and_an_unmarked_record_adopted() {
    let want = desired(1, "db1", a(1));
    assert_eq!(
        plan(&want, &Actual::default()),
        Plan::Write(WriteReason::Create)
    );
    let unmarked = Actual {
        records: vec![found(a(9), 300)],
        markers: Vec::new(),
    };
    assert_eq!(plan(&want, &unmarked), Plan::Write(WriteReason::Adopt));
}

#[test]
fn the_same_record_and_marker_is_in_sync() {
    let want = desired(3, "db1", a(1));
    assert_eq!(plan(&want, &holding(3, "db1", a(1))), Plan::InSync);
}

#[test]
fn an_older_marker_is_a_change() {
    let want = desired(4, "db2", a(2));
    assert_eq!(
        plan(&want, &holding(3, "db1", a(1))),
        Plan::Write(WriteReason::Change)
    );
}

#[test]
fn a_newer_marker_is_never_overwritten() {
    let want = desired(4, "db2", a(2));
    match plan(&want, &holding(5, "db1", a(1))) {
        Plan::Hold { why } => {
            assert!(why.contains("epoch 5 (db1)"), "{why}");
            assert!(why.contains("epoch 4 (db2)"), "{why}");
        }
        other => panic!("expected Hold, got {other:?}"),
    }
}

#[test]
fn edits_by_hand_at_the_same_epoch_are_repaired() {
    let want = desired(3, "db1", a(1));
    let repair = Plan::Write(WriteReason::Repair);
    // The address changed.
    assert_eq!(plan(&want, &holding(3, "db1", a(9))), repair);
    // The TTL changed.
    let mut ttl = holding(3, "db1", a(1));
    ttl.records[0].ttl = 3600;
    assert_eq!(plan(&want, &ttl), repair);
    // A second record was added beside ours.
    let mut extra = holding(3, "db1", a(1));
    extra.records.push(found(a(9), 30));
    assert_eq!(plan(&want, &extra), repair);
    // The record is gone but the marker stayed.
    let mut gone = holding(3, "db1", a(1));
    gone.records.clear();
    assert_eq!(plan(&want, &gone), repair);
    // A CNAME where an A belongs.
    assert_eq!(
        plan(
            &want,
            &holding(3, "db1", Target::Cname("db1.internal.".into()))
        ),
        repair
    );
    // A stray second marker.
    let mut markers = holding(3, "db1", a(1));
    markers.markers.push(found(vec![b"hello".to_vec()], 30));
    assert_eq!(plan(&want, &markers), repair);
}

#[test]
fn the_newest_of_several_markers_counts() {
    let mut actual = holding(2, "db1", a(1));
    actual.markers.push(found(
        Marker {
            instance: "db2".into(),
            epoch: 9,
        }
        .txt(),
        30,
    ));
    assert_eq!(actual.marker().map(|m| m.epoch), Some(9));
}

const CONFIG: &str = r#"
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
a = "10.0.0.11"
[[services.instances]]
name = "db2"
address = "10.0.0.12:5432"
cname = "db2.internal.example."
[[services]]
name = "web"
[services.check]
kind = "tcp"
[[services.instances]]
name = "web1"
address = "10.0.0.21:80"
a = "10.0.0.21"
"#;

fn config(publish: &str) -> Config {
    let dir = tempfile::tempdir().expect("a temporary dir");
    std::fs::write(dir.path().join("cluster.secret"), "0123456789abcdef0123").expect("write");
    std::fs::write(dir.path().join("do.token"), "dop_v1_abc\n").expect("write");
    let file = dir.path().join("highlander.toml");
    Config::parse(&file, &format!("{CONFIG}\n{publish}")).expect("a valid config")
}

#[test]
fn each_decided_service_wants_its_active_instance_with_its_epoch() {
    let config = config(
        r#"
[[publish]]
name = "do"
kind = "digitalocean"
zone = "example.com."
record = "{service}.prod.example.com."
token_file = "do.token"
"#,
    );
    let target = &config.publish[0];
    let mut state = State::default();
    assert!(super::desired(&config, target, &state).is_empty());
    for (index, command) in [
        Command::Activate {
            service: "db".into(),
            instance: "db1".into(),
            epoch: Epoch(1),
            reason: crate::model::Reason::Initial,
            at: 0,
            evidence: Default::default(),
        },
        Command::Activate {
            service: "db".into(),
            instance: "db2".into(),
            epoch: Epoch(2),
            reason: crate::model::Reason::Failover,
            at: 1,
            evidence: Default::default(),
        },
    ]
    .iter()
    .enumerate()
    {
        state.apply(index as u64 + 1, command);
    }
    let wanted = super::desired(&config, target, &state);
    assert_eq!(
        wanted,
        vec![Desired {
            service: "db".into(),
            name: "db.prod.example.com.".into(),
            target: Target::Cname("db2.internal.example.".into()),
            ttl: 30,
            marker: Marker {
                instance: "db2".into(),
                epoch: 2,
            },
        }]
    );
    assert_eq!(wanted[0].marker_name(), "_highlander.db.prod.example.com.");
}
