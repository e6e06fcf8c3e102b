//! The decision: given the config, the replicated state and a health view,
//! which command (if any) should the leader propose for each service.
//!
//! Pure: no I/O, no clock, no randomness. Time enters only as `now` (stamped on
//! the command for people to read) and as how long each verdict has held (in
//! the [`HealthView`]), so every branch is tested with exact values.
//!
//! The rules, per service:
//! - nothing changes on an `Unknown` verdict for the active instance;
//! - keep the active instance while it is up (no change just because a node
//!   or leader is new);
//! - when it is down (or drained, or gone from the config), move to the
//!   healthy, undrained instance with the lowest priority, ties broken by
//!   config order;
//! - `failback = "auto"` returns to a better-priority instance only after it
//!   has been up for `failback_delay`; `"manual"` never does by itself, and
//!   neither does an instance an operator switched over to;
//! - when every instance is down, keep the last active (fail-static) and
//!   record why, once.

use crate::config::{Config, Failback, ServiceConfig};
use crate::model::{
    Command, Evidence, HealthView, Reason, ServiceHealth, ServiceState, State, UnixMillis, Verdict,
};

/// Decides for every configured service; at most one command per service.
pub fn decide(config: &Config, state: &State, view: &HealthView, now: UnixMillis) -> Vec<Command> {
    let never_decided = ServiceState::default();
    config
        .services
        .iter()
        .filter_map(|service| {
            let current = state.service(&service.name).unwrap_or(&never_decided);
            decide_service(service, current, view, now)
        })
        .collect()
}

/// Decides for one service.
pub fn decide_service(
    service: &ServiceConfig,
    current: &ServiceState,
    view: &HealthView,
    now: UnixMillis,
) -> Option<Command> {
    let activate = |instance: &str, reason: Reason| Command::Activate {
        service: service.name.clone(),
        instance: instance.to_owned(),
        epoch: current.epoch.next(),
        reason,
        at: now,
        evidence: Evidence::new(),
    };
    let view = view.service(&service.name);
    let best = best_healthy(service, current, view);

    let Some(active) = current.active.as_deref() else {
        // No decision yet: wait until some instance is known to be up, and
        // until every better-priority instance has a verdict, so the first
        // choice does not depend on which probe happened to run first (and
        // is not followed by a failback moments later).
        let (name, priority) = best?;
        let undecided_better = service.instances.iter().any(|i| {
            i.priority < priority
                && !current.drained.contains(&i.name)
                && view.get(&i.name).verdict == Verdict::Unknown
        });
        return (!undecided_better).then(|| activate(name, Reason::Initial));
    };

    let active_priority = service.instance(active).map(|i| i.priority);
    let active_verdict = match active_priority {
        Some(_) => view.get(active).verdict,
        // Removed from the config: as good as down.
        None => Verdict::Down,
    };

    if current.drained.contains(active) {
        // With nowhere to go, keep serving the drained instance rather than nothing.
        return best.map(|(name, _)| activate(name, Reason::Drain));
    }

    match active_verdict {
        Verdict::Unknown => None,
        Verdict::Down => match best {
            Some((name, _)) => Some(activate(name, Reason::Failover)),
            None if current.all_down_since.is_none() => Some(Command::MarkAllDown {
                service: service.name.clone(),
                epoch: current.epoch,
                at: now,
                evidence: Evidence::new(),
            }),
            None => None,
        },
        Verdict::Up => {
            if current.all_down_since.is_some() {
                return Some(Command::ClearAllDown {
                    service: service.name.clone(),
                    epoch: current.epoch,
                    at: now,
                });
            }
            // An operator's switchover sticks until the instance fails.
            if service.failback == Failback::Manual || current.reason == Some(Reason::Switchover) {
                return None;
            }
            let active_priority = active_priority?;
            best_healthy_where(service, current, view, |priority, held_for| {
                priority < active_priority && held_for >= service.failback_delay
            })
            .map(|(name, _)| activate(name, Reason::Failback))
        }
    }
}

/// The up, undrained instance with the lowest priority (config order breaks ties).
fn best_healthy<'a>(
    service: &'a ServiceConfig,
    current: &ServiceState,
    view: ServiceHealth<'_>,
) -> Option<(&'a str, i64)> {
    best_healthy_where(service, current, view, |_, _| true)
}

fn best_healthy_where<'a>(
    service: &'a ServiceConfig,
    current: &ServiceState,
    view: ServiceHealth<'_>,
    eligible: impl Fn(i64, std::time::Duration) -> bool,
) -> Option<(&'a str, i64)> {
    service
        .instances
        .iter()
        .filter(|i| !current.drained.contains(&i.name))
        .filter(|i| {
            let health = view.get(&i.name);
            health.verdict == Verdict::Up && eligible(i.priority, health.held_for)
        })
        // min_by_key keeps the first of equal keys: config order breaks ties.
        .min_by_key(|i| i.priority)
        .map(|i| (i.name.as_str(), i.priority))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{CheckConfig, CheckKind, InstanceConfig, Target};
    use crate::model::{Epoch, InstanceHealth};

    const NOW: UnixMillis = 1_700_000_000_000;
    const DELAY: Duration = Duration::from_secs(30);

    /// db1 (priority 1), db2 (priority 2), db3 (priority 2): db2 before db3 by config order.
    fn service(failback: Failback) -> ServiceConfig {
        let instance = |name: &str, priority| InstanceConfig {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            target: Target::Cname(format!("{name}.internal.")),
            priority,
        };
        ServiceConfig {
            name: "db".into(),
            failback,
            failback_delay: DELAY,
            check: CheckConfig {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
            },
            instances: vec![instance("db1", 1), instance("db2", 2), instance("db3", 2)],
        }
    }

    fn view(verdicts: &[(&str, Verdict, u64)]) -> HealthView {
        let mut view = HealthView::default();
        for (name, verdict, held_secs) in verdicts {
            view.set(
                "db",
                name,
                InstanceHealth::new(*verdict, Duration::from_secs(*held_secs)),
            );
        }
        view
    }

    fn active(name: &str, epoch: u64) -> ServiceState {
        ServiceState {
            active: Some(name.into()),
            epoch: Epoch(epoch),
            since: Some(NOW - 1),
            ..ServiceState::default()
        }
    }

    fn activation(instance: &str, epoch: u64, reason: Reason) -> Option<Command> {
        Some(Command::Activate {
            service: "db".into(),
            instance: instance.into(),
            epoch: Epoch(epoch),
            reason,
            at: NOW,
            evidence: Evidence::new(),
        })
    }

    use Verdict::{Down, Unknown, Up};

    #[test]
    fn no_decision_until_an_instance_is_up() {
        let s = service(Failback::Auto);
        let none = ServiceState::default();
        assert_eq!(decide_service(&s, &none, &view(&[]), NOW), None);
        let all_down = view(&[("db1", Down, 5), ("db2", Down, 5), ("db3", Unknown, 0)]);
        assert_eq!(decide_service(&s, &none, &all_down, NOW), None);
    }

    #[test]
    fn first_decision_takes_best_priority_up_instance() {
        let s = service(Failback::Auto);
        let none = ServiceState::default();
        let v = view(&[("db1", Up, 0), ("db2", Up, 9)]);
        assert_eq!(
            decide_service(&s, &none, &v, NOW),
            activation("db1", 1, Reason::Initial)
        );
        // Even a just-up better instance wins the first decision: there is nothing to fail back from.
        let v = view(&[("db1", Down, 0), ("db3", Up, 9), ("db2", Up, 9)]);
        assert_eq!(
            decide_service(&s, &none, &v, NOW),
            activation("db2", 1, Reason::Initial),
            "equal priority: config order decides"
        );
    }

    #[test]
    fn first_decision_waits_for_better_priority_verdicts() {
        let s = service(Failback::Auto);
        let none = ServiceState::default();
        // db2 is up, but db1 (better) has not been judged yet.
        let v = view(&[("db1", Unknown, 0), ("db2", Up, 1)]);
        assert_eq!(decide_service(&s, &none, &v, NOW), None);
        // A drained better instance does not hold the decision up.
        let mut drained = none.clone();
        drained.drained.insert("db1".into());
        assert_eq!(
            decide_service(&s, &drained, &v, NOW),
            activation("db2", 1, Reason::Initial)
        );
        // Worse-priority instances still unknown do not matter.
        let v = view(&[("db1", Up, 0), ("db2", Unknown, 0), ("db3", Unknown, 0)]);
        assert_eq!(
            decide_service(&s, &none, &v, NOW),
            activation("db1", 1, Reason::Initial)
        );
    }

    #[test]
    fn healthy_active_is_kept() {
        let s = service(Failback::Auto);
        let v = view(&[("db1", Up, 100), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &active("db1", 4), &v, NOW), None);
        // A worse-priority active stays while nothing better has been up long enough.
        let v = view(&[("db1", Up, 29), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &active("db2", 4), &v, NOW), None);
    }

    #[test]
    fn unknown_active_changes_nothing() {
        let s = service(Failback::Auto);
        let v = view(&[("db1", Unknown, 0), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &active("db1", 4), &v, NOW), None);
        let v = view(&[("db1", Up, 100), ("db2", Unknown, 0)]);
        assert_eq!(decide_service(&s, &active("db2", 4), &v, NOW), None);
    }

    #[test]
    fn down_active_fails_over_to_best_priority() {
        let s = service(Failback::Auto);
        let v = view(&[("db1", Down, 1), ("db2", Up, 1), ("db3", Up, 100)]);
        assert_eq!(
            decide_service(&s, &active("db1", 4), &v, NOW),
            activation("db2", 5, Reason::Failover)
        );
        let v = view(&[("db1", Down, 1), ("db2", Down, 1), ("db3", Up, 1)]);
        assert_eq!(
            decide_service(&s, &active("db1", 4), &v, NOW),
            activation("db3", 5, Reason::Failover)
        );
    }

    #[test]
    fn failover_skips_drained_instances() {
        let s = service(Failback::Auto);
        let mut current = active("db1", 4);
        current.drained.insert("db2".into());
        let v = view(&[("db1", Down, 1), ("db2", Up, 100), ("db3", Up, 100)]);
        assert_eq!(
            decide_service(&s, &current, &v, NOW),
            activation("db3", 5, Reason::Failover)
        );
    }

    #[test]
    fn drained_active_moves_to_best_healthy() {
        let s = service(Failback::Manual);
        let mut current = active("db1", 4);
        current.drained.insert("db1".into());
        let v = view(&[("db1", Up, 100), ("db2", Up, 1)]);
        assert_eq!(
            decide_service(&s, &current, &v, NOW),
            activation("db2", 5, Reason::Drain)
        );
        // With nowhere healthy to go, the drained active keeps serving.
        let v = view(&[("db1", Up, 100), ("db2", Down, 1), ("db3", Unknown, 0)]);
        assert_eq!(decide_service(&s, &current, &v, NOW), None);
    }

    #[test]
    fn auto_failback_waits_for_the_delay() {
        let s = service(Failback::Auto);
        let current = active("db2", 5);
        let v = view(&[("db1", Up, 29), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &current, &v, NOW), None);
        let v = view(&[("db1", Up, 30), ("db2", Up, 100)]);
        assert_eq!(
            decide_service(&s, &current, &v, NOW),
            activation("db1", 6, Reason::Failback)
        );
    }

    #[test]
    fn failback_never_goes_to_equal_or_worse_priority() {
        let s = service(Failback::Auto);
        // db3 is active; db2 has the same priority and has been up for long: no change.
        let v = view(&[("db1", Down, 100), ("db2", Up, 1000), ("db3", Up, 1000)]);
        assert_eq!(decide_service(&s, &active("db3", 2), &v, NOW), None);
    }

    #[test]
    fn failback_skips_a_drained_better_instance() {
        let s = service(Failback::Auto);
        let mut current = active("db2", 5);
        current.drained.insert("db1".into());
        let v = view(&[("db1", Up, 1000), ("db2", Up, 1000)]);
        assert_eq!(decide_service(&s, &current, &v, NOW), None);
    }

    #[test]
    fn auto_failback_does_not_undo_a_switchover() {
        let s = service(Failback::Auto);
        let mut current = active("db2", 5);
        current.reason = Some(Reason::Switchover);
        let v = view(&[("db1", Up, 1_000_000), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &current, &v, NOW), None);
        // It still fails over when the chosen instance dies.
        let v = view(&[("db1", Up, 1_000_000), ("db2", Down, 1)]);
        assert_eq!(
            decide_service(&s, &current, &v, NOW),
            activation("db1", 6, Reason::Failover)
        );
    }

    #[test]
    fn manual_failback_never_returns_by_itself() {
        let s = service(Failback::Manual);
        let v = view(&[("db1", Up, 1_000_000), ("db2", Up, 100)]);
        assert_eq!(decide_service(&s, &active("db2", 5), &v, NOW), None);
        // but it still fails over when the active dies.
        let v = view(&[("db1", Up, 1_000_000), ("db2", Down, 1)]);
        assert_eq!(
            decide_service(&s, &active("db2", 5), &v, NOW),
            activation("db1", 6, Reason::Failover)
        );
    }

    #[test]
    fn all_down_keeps_active_and_records_why_once() {
        let s = service(Failback::Auto);
        let v = view(&[("db1", Down, 5), ("db2", Down, 5), ("db3", Unknown, 0)]);
        let current = active("db1", 4);
        assert_eq!(
            decide_service(&s, &current, &v, NOW),
            Some(Command::MarkAllDown {
                service: "db".into(),
                epoch: Epoch(4),
                at: NOW,
                evidence: Evidence::new(),
            })
        );
        let mut marked = current.clone();
        marked.all_down_since = Some(NOW);
        assert_eq!(decide_service(&s, &marked, &v, NOW + 1000), None);

        // The kept active comes back: the mark is cleared, the epoch stays.
        let v = view(&[("db1", Up, 1), ("db2", Down, 5)]);
        assert_eq!(
            decide_service(&s, &marked, &v, NOW),
            Some(Command::ClearAllDown {
                service: "db".into(),
                epoch: Epoch(4),
                at: NOW
            })
        );
        // Another instance comes back first: fail over to it.
        let v = view(&[("db1", Down, 50), ("db3", Up, 1)]);
        assert_eq!(
            decide_service(&s, &marked, &v, NOW),
            activation("db3", 5, Reason::Failover)
        );
    }

    #[test]
    fn active_removed_from_config_is_replaced() {
        let s = service(Failback::Manual);
        let v = view(&[("db1", Up, 1), ("db2", Up, 1)]);
        assert_eq!(
            decide_service(&s, &active("old", 7), &v, NOW),
            activation("db1", 8, Reason::Failover)
        );
    }

    #[test]
    fn decide_covers_every_service() {
        let toml = r#"
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
            name = "db"
            check = { kind = "tcp" }
            instances = [{ name = "db1", address = "127.0.0.1:1", a = "10.0.0.1" }]
            [[services]]
            name = "cache"
            check = { kind = "tcp" }
            instances = [{ name = "c1", address = "127.0.0.1:2", a = "10.0.0.2" }]
        "#;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").expect("secret");
        let config =
            Config::parse(&dir.path().join("highlander.toml"), toml).expect("valid config");
        let mut v = HealthView::default();
        v.set("db", "db1", InstanceHealth::new(Up, Duration::ZERO));
        v.set("cache", "c1", InstanceHealth::new(Up, Duration::ZERO));
        let mut state = State::default();
        state.services.insert("cache".into(), {
            let mut s = active("c1", 3);
            s.since = None;
            s
        });
        let commands = decide(&config, &state, &v, NOW);
        assert_eq!(
            commands,
            vec![Command::Activate {
                service: "db".into(),
                instance: "db1".into(),
                epoch: Epoch(1),
                reason: Reason::Initial,
                at: NOW,
                evidence: Evidence::new(),
            }]
        );
    }
}
