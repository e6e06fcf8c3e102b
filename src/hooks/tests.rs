//! The pure parts of hooks: what a hook owes, the payload, the signature,
//! the backoff.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::{Epoch, Evidence};

fn hook(services: Option<&[&str]>) -> HookConfig {
    HookConfig {
        name: "notify".into(),
        kind: HookKind::Exec {
            command: vec!["true".into()],
        },
        timeout: Duration::from_secs(1),
        services: services.map(|s| s.iter().map(|n| n.to_string()).collect()),
    }
}

fn event(index: u64, service: &str, epoch: u64, reason: Reason) -> Event {
    Event {
        index,
        at: 1000 + index,
        service: service.into(),
        epoch: Epoch(epoch),
        from: (epoch > 1).then(|| format!("{service}{}", epoch - 1)),
        to: Some(format!("{service}{epoch}")),
        reason,
        evidence: Evidence::new(),
    }
}

/// db: initial (1), failover (2), all-down (4); web: initial (3), switchover (5).
fn state(done: Option<u64>) -> State {
    let mut state = State::default();
    state.events.extend(
        [
            event(1, "db", 1, Reason::Initial),
            event(2, "db", 2, Reason::Failover),
            event(3, "web", 1, Reason::Initial),
            event(4, "db", 2, Reason::AllDown),
            event(5, "web", 2, Reason::Switchover),
        ]
        .map(Arc::new),
    );
    if let Some(done) = done {
        state.hooks_done.insert("notify".into(), done);
    }
    state
}

fn due(hook: &HookConfig, state: &State) -> Option<(u64, u64)> {
    next_due(hook, state).map(|d| (d.event.index, d.through))
}

#[test]
fn a_hook_owes_every_change_after_its_record_in_order() {
    let all = hook(None);
    assert_eq!(due(&all, &state(Some(0))), Some((1, 1)));
    assert_eq!(due(&all, &state(Some(1))), Some((2, 2)));
    assert_eq!(due(&all, &state(Some(2))), Some((3, 3)));
    // The all-down event is no change of active instance: skipped.
    assert_eq!(due(&all, &state(Some(3))), Some((5, 5)));
    assert_eq!(due(&all, &state(Some(5))), None);
}

#[test]
fn a_hook_owes_only_the_services_it_covers() {
    let web = hook(Some(&["web"]));
    assert_eq!(due(&web, &state(Some(0))), Some((3, 3)));
    assert_eq!(due(&web, &state(Some(3))), Some((5, 5)));
    let db = hook(Some(&["db"]));
    assert_eq!(due(&db, &state(Some(2))), None);
}

#[test]
fn a_hook_without_a_record_owes_each_services_latest_change() {
    let all = hook(None);
    // db's latest change is 2, web's is 5: confirming 2 settles 1 to 4.
    assert_eq!(due(&all, &state(None)), Some((2, 4)));
    let mut after = state(None);
    after.hooks_done.insert("notify".into(), 4);
    assert_eq!(due(&all, &after), Some((5, 5)));
    assert_eq!(due(&all, &State::default()), None);
}

/// Regression guard for the "new leader re-runs" guarantee: a record from
/// another hook says nothing about this one.
#[test]
fn another_hooks_record_does_not_count() {
    let mut s = state(None);
    s.hooks_done.insert("other".into(), 5);
    assert_eq!(due(&hook(None), &s), Some((2, 4)));
}

#[test]
fn placeholders_and_environment_carry_the_change() {
    let change = Change::of(&event(7, "db", 3, Reason::Failover));
    let argv = change.argv(&[
        "notify".into(),
        "{service}:{old}->{new}@{epoch}".into(),
        "{reason} {index} {unknown} {".into(),
    ]);
    assert_eq!(argv, ["notify", "db:db2->db3@3", "failover 7 {unknown} {"]);
    let env = change.env();
    for (var, value) in [
        ("HIGHLANDER_SERVICE", "db"),
        ("HIGHLANDER_OLD", "db2"),
        ("HIGHLANDER_NEW", "db3"),
        ("HIGHLANDER_EPOCH", "3"),
        ("HIGHLANDER_REASON", "failover"),
        ("HIGHLANDER_INDEX", "7"),
        ("HIGHLANDER_AT", "1007"),
    ] {
        assert!(
            env.contains(&(var, value.to_owned())),
            "{var} missing from {env:?}"
        );
    }
    // A substituted value is never substituted again.
    let tricky = Change {
        service: "{new}".into(),
        ..change
    };
    assert_eq!(tricky.argv(&["{service}".into()]), ["{new}"]);
}

#[test]
fn first_choice_has_an_empty_old_instance() {
    let change = Change::of(&event(1, "db", 1, Reason::Initial));
    let json: serde_json::Value = serde_json::to_value(&change).expect("encodes");
    assert_eq!(
        json,
        serde_json::json!({
            "service": "db", "old": "", "new": "db1", "epoch": 1,
            "reason": "initial", "index": 1, "at": 1001
        })
    );
}

/// RFC 4231 test case 2.
#[test]
fn signature_is_hex_hmac_sha256() {
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn hooks_retry_from_half_a_second_up_to_thirty() {
    assert_eq!(BACKOFF.delay(1, 1.0), Duration::from_millis(500));
    assert_eq!(BACKOFF.delay(u32::MAX, 1.0), RETRY_MAX);
}
