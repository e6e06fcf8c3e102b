//! Config validation: every problem a person can make, named by key path.
//!
//! Each test starts from [`BASE`], a valid three-node cluster with an http
//! service (cname instances) and a tcp service (a/aaaa instances), changes one
//! thing, and checks the exact key, the value and the hint of the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A valid config that leaves every defaulted key out, so tests of defaults
/// and tests of single rules share one starting point.
const BASE: &str = r#"
[cluster]
secret_file = "cluster.secret"

[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"

[[cluster.nodes]]
id = 2
rpc = "127.0.0.1:7102"
dns = "127.0.0.1:5302"
api = "127.0.0.1:8102"

[[cluster.nodes]]
id = 3
rpc = "127.0.0.1:7103"
dns = "127.0.0.1:5303"
api = "127.0.0.1:8103"

[dns]
zone = "svc.example."

[[services]]
name = "web"
[services.check]
kind = "http"
path = "/health"

[[services.instances]]
name = "web1"
address = "10.0.0.11:8080"
cname = "web1.internal.example."
priority = 2

[[services.instances]]
name = "web2"
address = "10.0.0.12:8080"
cname = "web2.internal.example."
priority = 1

[[services]]
name = "db"
[services.check]
kind = "tcp"

[[services.instances]]
name = "db1"
address = "10.0.0.21:5432"
a = "10.0.0.21"

[[services.instances]]
name = "db2"
address = "[2001:db8::22]:5432"
aaaa = "2001:db8::22"
"#;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// [`BASE`] with each `(from, to)` applied once, in order. Panics when `from`
/// is missing, so a typo in a test cannot silently test the unchanged base.
#[track_caller]
fn base_with(edits: &[(&str, &str)]) -> String {
    let mut text = BASE.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "base config has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// A directory holding `highlander.toml`'s neighbours: a valid secret file.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("cluster.secret"), format!("{SECRET}\n"))
            .expect("write secret");
        Fixture { dir }
    }

    /// The path the config is parsed as if read from (never written).
    fn file(&self) -> PathBuf {
        self.dir.path().join("highlander.toml")
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(&self.file(), text)
    }

    #[track_caller]
    fn valid(&self, text: &str) -> Config {
        match self.parse(text) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    /// The problems of an invalid config, and the error's `Display`.
    #[track_caller]
    fn invalid(&self, text: &str) -> (Vec<Problem>, String) {
        match self.parse(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let shown = e.to_string();
                let ConfigError::Invalid { file, problems } = e else {
                    unreachable!()
                };
                assert_eq!(file, self.file());
                (problems, shown)
            }
            Err(e) => panic!("expected ConfigError::Invalid, got: {e}"),
            Ok(_) => panic!("expected ConfigError::Invalid, the config was accepted"),
        }
    }

    /// Asserts that `text` has exactly one problem, at `key`, whose value
    /// contains `value` and whose message contains `hint`; and that the
    /// error's `Display` names the file, key, value and hint. Returns it.
    #[track_caller]
    fn single_problem(&self, text: &str, key: &str, value: &str, hint: &str) -> Problem {
        let (problems, shown) = self.invalid(text);
        assert_eq!(
            problems.len(),
            1,
            "expected one problem at {key}, got: {shown}"
        );
        let problem = problems.into_iter().next().unwrap();
        assert_problem(&problem, key, value, hint);
        assert_shown(&shown, &self.file(), &problem);
        problem
    }
}

#[track_caller]
fn assert_problem(problem: &Problem, key: &str, value: &str, hint: &str) {
    assert_eq!(problem.key, key, "{problem}");
    assert!(
        problem.value.contains(value),
        "value {:?} should contain {value:?}",
        problem.value
    );
    assert!(
        problem.message.contains(hint),
        "message {:?} should contain {hint:?}",
        problem.message
    );
}

/// The error's `Display` names the file and shows the problem line in full:
/// key, value (when there is one) and the message with its accepted form.
#[track_caller]
fn assert_shown(shown: &str, file: &Path, problem: &Problem) {
    assert!(
        shown.contains(&file.display().to_string()),
        "{shown:?} should name {}",
        file.display()
    );
    assert!(
        shown.contains(&problem.to_string()),
        "{shown:?} should contain {problem}"
    );
    if problem.value.is_empty() {
        assert!(shown.contains(&format!("{}: ", problem.key)));
    } else {
        assert!(shown.contains(&format!("{} = {}: ", problem.key, problem.value)));
    }
}

// ---------------------------------------------------------------- the base

#[test]
fn base_config_is_valid() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(config.file, fx.file());
    let ids: Vec<u64> = config.cluster.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(config.dns.zone, "svc.example.");
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    let db = config.service("db").unwrap();
    assert_eq!(db.check.kind, CheckKind::Tcp);
    assert_eq!(
        db.instance("db1").unwrap().target,
        Target::A("10.0.0.21".parse().unwrap())
    );
    assert_eq!(
        db.instance("db2").unwrap().target,
        Target::Aaaa("2001:db8::22".parse().unwrap())
    );
    assert_eq!(
        config.service("web").unwrap().instances[0].target,
        Target::Cname("web1.internal.example.".into())
    );
}

#[test]
fn defaults_are_filled_in() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(config.dns.ttl, Duration::from_secs(5));
    assert_eq!(config.dns.hostmaster, "hostmaster.svc.example.");
    assert_eq!(config.cluster.data_dir, fx.dir.path().join("data"));
    assert_eq!(config.cluster.heartbeat, Duration::from_millis(50));
    assert_eq!(
        config.cluster.election_timeout_min,
        Duration::from_millis(150)
    );
    assert_eq!(
        config.cluster.election_timeout_max,
        Duration::from_millis(300)
    );
    for service in &config.services {
        assert_eq!(service.failback, Failback::Auto, "{}", service.name);
        assert_eq!(service.failback_delay, Duration::from_secs(30));
        assert_eq!(service.check.interval, Duration::from_secs(1));
        assert_eq!(service.check.timeout, Duration::from_millis(500));
        assert_eq!(service.check.rise, 2);
        assert_eq!(service.check.fall, 3);
    }
    let db = config.service("db").unwrap();
    assert!(db.instances.iter().all(|i| i.priority == 1));
    let CheckKind::Http {
        https,
        path,
        host,
        expect_status,
        body_contains,
    } = &config.service("web").unwrap().check.kind
    else {
        panic!("web is an http check");
    };
    assert!(!https);
    assert_eq!(path, "/health");
    assert_eq!(host, &None);
    assert_eq!(expect_status, &StatusMatcher::single(200));
    assert_eq!(body_contains, &None);
}

#[test]
fn http_path_defaults_to_root() {
    let fx = Fixture::new();
    let config = fx.valid(&base_with(&[("path = \"/health\"\n", "")]));
    let CheckKind::Http { path, .. } = &config.services[0].check.kind else {
        panic!("web is an http check");
    };
    assert_eq!(path, "/");
}

#[test]
fn explicit_settings_override_defaults() {
    let fx = Fixture::new();
    let text = base_with(&[
        (
            "zone = \"svc.example.\"",
            "zone = \"svc.example.\"\nttl = \"30s\"\nhostmaster = \"ops.example.\"",
        ),
        (
            "name = \"db\"",
            "name = \"db\"\nfailback = \"manual\"\nfailback_delay = \"2m\"",
        ),
        (
            "kind = \"tcp\"",
            "kind = \"tcp\"\ninterval = \"5s\"\ntimeout = \"2s\"\nrise = 1\nfall = 5",
        ),
    ]);
    let config = fx.valid(&text);
    assert_eq!(config.dns.ttl, Duration::from_secs(30));
    assert_eq!(config.dns.hostmaster, "ops.example.");
    let db = config.service("db").unwrap();
    assert_eq!(db.failback, Failback::Manual);
    assert_eq!(db.failback_delay, Duration::from_secs(120));
    assert_eq!(db.check.interval, Duration::from_secs(5));
    assert_eq!(db.check.timeout, Duration::from_secs(2));
    assert_eq!((db.check.rise, db.check.fall), (1, 5));
}

// ------------------------------------------------------------- duplicates

#[test]
fn duplicate_node_ids_are_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("id = 3", "id = 1")]);
    fx.single_problem(
        &text,
        "cluster.nodes[2].id",
        "1",
        "every node needs its own id",
    );
}

#[test]
fn node_id_zero_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("id = 3", "id = 0")]);
    fx.single_problem(&text, "cluster.nodes[2].id", "0", "expected a positive");
}

#[test]
fn duplicate_service_names_are_rejected_ignoring_case() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"db\"", "name = \"WEB\"")]);
    fx.single_problem(
        &text,
        "services[1].name",
        "\"WEB\"",
        "every service needs its own name",
    );
}

#[test]
fn duplicate_instance_names_are_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"db2\"", "name = \"db1\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[1].name",
        "\"db1\"",
        "every instance needs its own name",
    );
}

#[test]
fn same_instance_name_in_two_services_is_allowed() {
    let fx = Fixture::new();
    let config = fx.valid(&base_with(&[("name = \"db1\"", "name = \"web1\"")]));
    assert!(config.service("db").unwrap().instance("web1").is_some());
    assert!(config.service("web").unwrap().instance("web1").is_some());
}

#[test]
fn reused_listener_address_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("api = \"127.0.0.1:8103\"", "api = \"127.0.0.1:7101\"")]);
    fx.single_problem(
        &text,
        "cluster.nodes[2].api",
        "\"127.0.0.1:7101\"",
        "every listener needs its own address",
    );
}

// ------------------------------------------------------------ DNS targets

#[test]
fn instance_without_target_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("a = \"10.0.0.21\"\n", "")]);
    fx.single_problem(
        &text,
        "services[1].instances[0]",
        "",
        "exactly one of cname, a or aaaa",
    );
}

#[test]
fn instance_with_two_targets_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("a = \"10.0.0.21\"", "a = \"10.0.0.21\"\naaaa = \"::1\"")]);
    let problem = fx.single_problem(
        &text,
        "services[1].instances[0]",
        "",
        "exactly one of cname, a or aaaa",
    );
    assert!(problem.message.contains("found a and aaaa"), "{problem}");
}

#[test]
fn ipv6_address_in_a_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("a = \"10.0.0.21\"", "a = \"2001:db8::21\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[0].a",
        "\"2001:db8::21\"",
        "give an IPv4 address like \"10.0.0.11\"",
    );
}

#[test]
fn non_address_in_a_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("a = \"10.0.0.21\"", "a = \"10.0.0.256\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[0].a",
        "\"10.0.0.256\"",
        "expected something like \"10.0.0.11\"",
    );
}

#[test]
fn ipv4_address_in_aaaa_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("aaaa = \"2001:db8::22\"", "aaaa = \"10.0.0.22\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[1].aaaa",
        "\"10.0.0.22\"",
        "give an IPv6 address like \"2001:db8::11\"",
    );
}

#[test]
fn non_address_in_aaaa_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("aaaa = \"2001:db8::22\"", "aaaa = \"db2.internal\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[1].aaaa",
        "\"db2.internal\"",
        "expected something like \"2001:db8::11\"",
    );
}

#[test]
fn relative_cname_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "cname = \"web2.internal.example.\"",
        "cname = \"web2.internal.example\"",
    )]);
    fx.single_problem(
        &text,
        "services[0].instances[1].cname",
        "\"web2.internal.example\"",
        "expected an absolute name ending with a dot, like \"web2.internal.example.\"",
    );
}

#[test]
fn cname_with_invalid_label_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "cname = \"web2.internal.example.\"",
        "cname = \"web2..example.\"",
    )]);
    fx.single_problem(
        &text,
        "services[0].instances[1].cname",
        "\"web2..example.\"",
        "expected a DNS label",
    );
}

// ------------------------------------------------------------------ names

#[test]
fn service_name_that_is_not_a_dns_label_is_rejected() {
    let fx = Fixture::new();
    for bad in ["web.app", "-web", "web-", "web app", "", &"w".repeat(64)] {
        let text = base_with(&[("name = \"web\"", &format!("name = \"{bad}\""))]);
        fx.single_problem(&text, "services[0].name", bad, "expected a DNS label");
    }
}

#[test]
fn service_name_starting_with_underscore_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"web\"", "name = \"_web\"")]);
    fx.single_problem(&text, "services[0].name", "\"_web\"", "reserved");
}

#[test]
fn instance_name_that_is_not_a_dns_label_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"db2\"", "name = \"db2.east\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[1].name",
        "\"db2.east\"",
        "expected a DNS label",
    );
}

#[test]
fn zone_without_trailing_dot_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("zone = \"svc.example.\"", "zone = \"svc.example\"")]);
    fx.single_problem(
        &text,
        "dns.zone",
        "\"svc.example\"",
        "ending with a dot, like \"svc.example.\"",
    );
}

#[test]
fn zone_with_invalid_label_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("zone = \"svc.example.\"", "zone = \"svc!.example.\"")]);
    fx.single_problem(
        &text,
        "dns.zone",
        "\"svc!.example.\"",
        "expected a DNS label",
    );
}

#[test]
fn relative_hostmaster_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "zone = \"svc.example.\"",
        "zone = \"svc.example.\"\nhostmaster = \"ops.example\"",
    )]);
    fx.single_problem(
        &text,
        "dns.hostmaster",
        "\"ops.example\"",
        "expected an absolute name ending with a dot",
    );
}

#[test]
fn names_are_lowercased() {
    let fx = Fixture::new();
    let text = base_with(&[
        ("zone = \"svc.example.\"", "zone = \"SVC.Example.\""),
        ("name = \"web\"", "name = \"Web\""),
        ("name = \"web1\"", "name = \"WEB1\""),
        (
            "cname = \"web1.internal.example.\"",
            "cname = \"Web1.Internal.EXAMPLE.\"",
        ),
    ]);
    let config = fx.valid(&text);
    assert_eq!(config.dns.zone, "svc.example.");
    assert_eq!(config.dns.hostmaster, "hostmaster.svc.example.");
    let web = config
        .service("web")
        .expect("service found by lowercase name");
    let web1 = web
        .instance("web1")
        .expect("instance found by lowercase name");
    assert_eq!(web1.target, Target::Cname("web1.internal.example.".into()));
}

// ------------------------------------------------------------ the check

#[test]
fn zero_rise_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"tcp\"", "kind = \"tcp\"\nrise = 0")]);
    fx.single_problem(&text, "services[1].check.rise", "0", "must be at least 1");
}

#[test]
fn zero_fall_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"http\"", "kind = \"http\"\nfall = 0")]);
    fx.single_problem(&text, "services[0].check.fall", "0", "must be at least 1");
}

#[test]
fn timeout_equal_to_interval_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "kind = \"tcp\"",
        "kind = \"tcp\"\ninterval = \"2s\"\ntimeout = \"2s\"",
    )]);
    fx.single_problem(
        &text,
        "services[1].check.timeout",
        "\"2s\"",
        "must be shorter than the interval (2s)",
    );
}

#[test]
fn timeout_longer_than_interval_is_rejected() {
    let fx = Fixture::new();
    // Only the timeout is set: it must be compared with the default interval.
    let text = base_with(&[("kind = \"tcp\"", "kind = \"tcp\"\ntimeout = \"1500ms\"")]);
    fx.single_problem(
        &text,
        "services[1].check.timeout",
        "\"1500ms\"",
        "must be shorter than the interval (1s)",
    );
}

#[test]
fn zero_interval_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"tcp\"", "kind = \"tcp\"\ninterval = \"0s\"")]);
    fx.single_problem(
        &text,
        "services[1].check.interval",
        "\"0s\"",
        "must be longer than 0",
    );
}

#[test]
fn bad_duration_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"tcp\"", "kind = \"tcp\"\ninterval = \"5x\"")]);
    fx.single_problem(
        &text,
        "services[1].check.interval",
        "\"5x\"",
        "expected a number with a unit, like \"500ms\"",
    );
}

#[test]
fn bad_durations_are_rejected_wherever_they_appear() {
    let fx = Fixture::new();
    let cases = [
        (
            "secret_file = ",
            "heartbeat = \"5x\"\nsecret_file = ",
            "cluster.heartbeat",
        ),
        ("zone = ", "ttl = \"5x\"\nzone = ", "dns.ttl"),
        (
            "name = \"db\"",
            "name = \"db\"\nfailback_delay = \"5x\"",
            "services[1].failback_delay",
        ),
        (
            "kind = \"http\"",
            "kind = \"http\"\ntimeout = \"5x\"",
            "services[0].check.timeout",
        ),
    ];
    for (from, to, key) in cases {
        let text = base_with(&[(from, to)]);
        fx.single_problem(&text, key, "\"5x\"", "expected a number with a unit");
    }
}

#[test]
fn fractional_ttl_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("zone = ", "ttl = \"1500ms\"\nzone = ")]);
    fx.single_problem(&text, "dns.ttl", "\"1500ms\"", "whole seconds");
}

#[test]
fn unknown_check_kind_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"tcp\"", "kind = \"icmp\"")]);
    fx.single_problem(
        &text,
        "services[1].check.kind",
        "\"icmp\"",
        "expected \"http\", \"tcp\" or \"exec\"",
    );
}

#[test]
fn unknown_failback_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"db\"", "name = \"db\"\nfailback = \"never\"")]);
    fx.single_problem(
        &text,
        "services[1].failback",
        "\"never\"",
        "expected \"auto\" or \"manual\"",
    );
}

#[test]
fn expect_status_forms_are_accepted() {
    let fx = Fixture::new();
    let cases: [(&str, &[u16], &[u16]); 3] = [
        ("200", &[200], &[199, 201, 204]),
        ("[200, 204]", &[200, 204], &[201, 203, 205]),
        ("\"200-299\"", &[200, 250, 299], &[199, 300]),
    ];
    for (spec, accepted, refused) in cases {
        let text = base_with(&[(
            "path = \"/health\"",
            &format!("path = \"/health\"\nexpect_status = {spec}"),
        )]);
        let config = fx.valid(&text);
        let CheckKind::Http { expect_status, .. } = &config.services[0].check.kind else {
            panic!("web is an http check");
        };
        for &status in accepted {
            assert!(
                expect_status.accepts(status),
                "{spec} should accept {status}"
            );
        }
        for &status in refused {
            assert!(
                !expect_status.accepts(status),
                "{spec} should refuse {status}"
            );
        }
    }
}

#[test]
fn bad_expect_status_is_rejected() {
    let fx = Fixture::new();
    let cases = [
        ("99", "99"),
        ("600", "600"),
        ("[200, 99]", "99"),
        ("[]", "[]"),
        ("\"300-200\"", "\"300-200\""),
        ("\"2xx\"", "\"2xx\""),
    ];
    for (spec, value) in cases {
        let text = base_with(&[(
            "path = \"/health\"",
            &format!("path = \"/health\"\nexpect_status = {spec}"),
        )]);
        fx.single_problem(
            &text,
            "services[0].check.expect_status",
            value,
            "expected a status code (200), a list ([200, 204]) or a range (\"200-299\")",
        );
    }
}

#[test]
fn relative_http_path_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("path = \"/health\"", "path = \"health\"")]);
    fx.single_problem(
        &text,
        "services[0].check.path",
        "\"health\"",
        "expected an absolute path starting with '/', like \"/health\"",
    );
}

#[test]
fn bad_http_scheme_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("path = \"/health\"", "path = \"/health\"\nscheme = \"ftp\"")]);
    fx.single_problem(
        &text,
        "services[0].check.scheme",
        "\"ftp\"",
        "expected \"http\" or \"https\"",
    );
}

#[test]
fn http_keys_on_tcp_check_are_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("kind = \"tcp\"", "kind = \"tcp\"\npath = \"/health\"")]);
    fx.single_problem(
        &text,
        "services[1].check.path",
        "\"/health\"",
        "only applies to kind = \"http\", not kind = \"tcp\"",
    );
}

#[test]
fn command_on_http_check_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "kind = \"http\"",
        "kind = \"http\"\ncommand = [\"/bin/true\"]",
    )]);
    fx.single_problem(
        &text,
        "services[0].check.command",
        "[\"/bin/true\"]",
        "only applies to kind = \"exec\", not kind = \"http\"",
    );
}

#[test]
fn exec_check_with_command_is_accepted() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "kind = \"tcp\"",
        "kind = \"exec\"\ncommand = [\"/usr/local/bin/check-db\", \"{address}\"]",
    )]);
    let config = fx.valid(&text);
    assert_eq!(
        config.service("db").unwrap().check.kind,
        CheckKind::Exec {
            command: vec!["/usr/local/bin/check-db".into(), "{address}".into()]
        }
    );
}

#[test]
fn exec_check_without_command_is_rejected() {
    let fx = Fixture::new();
    for command in ["", "\ncommand = []", "\ncommand = [\"\"]"] {
        let text = base_with(&[("kind = \"tcp\"", &format!("kind = \"exec\"{command}"))]);
        fx.single_problem(
            &text,
            "services[1].check.command",
            "",
            "an exec check needs a command: an argv list like",
        );
    }
}

// ------------------------------------------------------------- addresses

#[test]
fn bad_node_socket_addresses_are_rejected() {
    let fx = Fixture::new();
    let cases = [
        (
            "rpc = \"127.0.0.1:7102\"",
            "rpc = \"127.0.0.1\"",
            "cluster.nodes[1].rpc",
            "\"127.0.0.1\"",
        ),
        (
            "dns = \"127.0.0.1:5302\"",
            "dns = \"localhost:5302\"",
            "cluster.nodes[1].dns",
            "\"localhost:5302\"",
        ),
        (
            "api = \"127.0.0.1:8102\"",
            "api = \"::1:8102\"",
            "cluster.nodes[1].api",
            "\"::1:8102\"",
        ),
        (
            "rpc = \"127.0.0.1:7102\"",
            "rpc = \"127.0.0.1:70000\"",
            "cluster.nodes[1].rpc",
            "\"127.0.0.1:70000\"",
        ),
    ];
    for (from, to, key, value) in cases {
        let text = base_with(&[(from, to)]);
        fx.single_problem(
            &text,
            key,
            value,
            "expected an IP address and port, like \"127.0.0.1:5301\"",
        );
    }
}

#[test]
fn ipv6_node_addresses_are_accepted() {
    let fx = Fixture::new();
    let config = fx.valid(&base_with(&[(
        "rpc = \"127.0.0.1:7102\"",
        "rpc = \"[::1]:7102\"",
    )]));
    assert_eq!(config.node(2).unwrap().rpc, "[::1]:7102".parse().unwrap());
}

#[test]
fn bad_instance_addresses_are_rejected() {
    let fx = Fixture::new();
    for bad in ["10.0.0.21", "10.0.0.21:http", "2001:db8::21:5432"] {
        let text = base_with(&[(
            "address = \"10.0.0.21:5432\"",
            &format!("address = \"{bad}\""),
        )]);
        fx.single_problem(
            &text,
            "services[1].instances[0].address",
            bad,
            "expected host:port, like \"10.0.0.11:8080\"",
        );
    }
}

#[test]
fn instance_address_with_bad_host_name_is_rejected() {
    let fx = Fixture::new();
    for (bad, hint) in [
        ("db!.internal:5432", "expected a DNS label"),
        (":5432", "expected a domain name"),
    ] {
        let text = base_with(&[(
            "address = \"10.0.0.21:5432\"",
            &format!("address = \"{bad}\""),
        )]);
        fx.single_problem(&text, "services[1].instances[0].address", bad, hint);
    }
}

#[test]
fn instance_address_may_be_a_host_name() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "address = \"10.0.0.21:5432\"",
        "address = \"db1.internal:5432\"",
    )]);
    let config = fx.valid(&text);
    assert_eq!(
        config.service("db").unwrap().instances[0].address,
        "db1.internal:5432"
    );
}

// ------------------------------------------------------------ raft timing

#[test]
fn election_timeout_min_not_below_max_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "secret_file = ",
        "election_timeout_min = \"300ms\"\nelection_timeout_max = \"300ms\"\nsecret_file = ",
    )]);
    fx.single_problem(
        &text,
        "cluster.election_timeout_max",
        "\"300ms\"",
        "must be longer than cluster.election_timeout_min (300ms)",
    );
}

#[test]
fn election_timeout_min_not_above_heartbeat_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "secret_file = ",
        "heartbeat = \"100ms\"\nelection_timeout_min = \"100ms\"\nsecret_file = ",
    )]);
    fx.single_problem(
        &text,
        "cluster.election_timeout_min",
        "\"100ms\"",
        "must be longer than cluster.heartbeat (100ms)",
    );
}

#[test]
fn zero_heartbeat_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("secret_file = ", "heartbeat = \"0s\"\nsecret_file = ")]);
    fx.single_problem(
        &text,
        "cluster.heartbeat",
        "\"0s\"",
        "must be longer than 0",
    );
}

// --------------------------------------------------------- nodes, secret

#[test]
fn node_id_the_file_does_not_list_is_rejected() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(
        config.node(2).unwrap().api,
        "127.0.0.1:8102".parse().unwrap()
    );
    let err = config.node(7).unwrap_err();
    let ConfigError::UnknownNode { file, id, known } = &err else {
        panic!("expected UnknownNode, got {err}");
    };
    assert_eq!(
        (file, *id, known.as_slice()),
        (&fx.file(), 7, &[1, 2, 3][..])
    );
    let shown = err.to_string();
    assert!(shown.contains(&fx.file().display().to_string()), "{shown}");
    assert!(shown.contains("node id 7"), "{shown}");
    assert!(shown.contains("node ids 1, 2, 3"), "{shown}");
}

#[test]
fn config_without_nodes_is_rejected() {
    let fx = Fixture::new();
    let start = BASE.find("[[cluster.nodes]]").unwrap();
    let end = BASE.find("[dns]").unwrap();
    let text = format!("{}{}", &BASE[..start], &BASE[end..]);
    fx.single_problem(
        &text,
        "cluster.nodes",
        "",
        "list at least one [[cluster.nodes]]",
    );
}

#[test]
fn missing_secret_file_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[("\"cluster.secret\"", "\"missing.secret\"")]);
    let problem = fx.single_problem(
        &text,
        "cluster.secret_file",
        "\"missing.secret\"",
        "expected a readable file holding the shared cluster secret",
    );
    let full = fx.dir.path().join("missing.secret");
    assert!(
        problem.message.contains(&full.display().to_string()),
        "{problem}"
    );
}

#[test]
fn unreadable_secret_file_is_rejected() {
    // Tests may run as root, which reads any file whatever its mode; a
    // directory is unreadable as a file for everyone.
    let fx = Fixture::new();
    std::fs::create_dir(fx.dir.path().join("secrets")).unwrap();
    let text = base_with(&[("\"cluster.secret\"", "\"secrets\"")]);
    fx.single_problem(
        &text,
        "cluster.secret_file",
        "\"secrets\"",
        "expected a readable file holding the shared cluster secret",
    );
}

#[test]
fn too_short_secret_is_rejected() {
    let fx = Fixture::new();
    // 15 bytes once the trailing newline is trimmed.
    std::fs::write(fx.dir.path().join("short.secret"), "0123456789abcde\n").unwrap();
    let text = base_with(&[("\"cluster.secret\"", "\"short.secret\"")]);
    let problem = fx.single_problem(
        &text,
        "cluster.secret_file",
        "\"short.secret\"",
        "use at least 16 random bytes",
    );
    assert!(problem.message.contains("15 bytes long"), "{problem}");
}

#[test]
fn secret_is_read_and_trimmed() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(config.cluster.secret, SECRET.as_bytes());
}

#[test]
fn secret_is_not_shown_by_debug() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    let shown = format!("{config:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let pretty = format!("{config:#?}");
    assert!(!pretty.contains(SECRET), "{pretty}");
}

#[test]
fn relative_paths_are_resolved_against_the_config_directory() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dir.path().join("etc")).unwrap();
    std::fs::write(fx.dir.path().join("etc/cluster.secret"), SECRET).unwrap();
    let text = base_with(&[(
        "secret_file = \"cluster.secret\"",
        "data_dir = \"state\"\nsecret_file = \"etc/cluster.secret\"",
    )]);
    let config = fx.valid(&text);
    assert_eq!(config.cluster.data_dir, fx.dir.path().join("state"));
    assert_eq!(
        config.cluster.secret_file,
        fx.dir.path().join("etc/cluster.secret")
    );
    assert_eq!(
        config.node_data_dir(2),
        fx.dir.path().join("state").join("node-2")
    );
}

#[test]
fn absolute_paths_are_kept() {
    let fx = Fixture::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = elsewhere.path().join("data");
    let text = base_with(&[(
        "secret_file = \"cluster.secret\"",
        &format!(
            "data_dir = {:?}\nsecret_file = {:?}",
            data.display().to_string(),
            secret.display().to_string()
        ),
    )]);
    let config = fx.valid(&text);
    assert_eq!(config.cluster.data_dir, data);
    assert_eq!(config.cluster.secret_file, secret);
}

// ---------------------------------------------------- syntax, many problems

#[test]
fn unknown_keys_are_rejected_with_the_key_named() {
    let fx = Fixture::new();
    let cases = [
        ("[dns]", "[dns]\nzoen = \"x.\"", "zoen"),
        ("kind = \"tcp\"", "kind = \"tcp\"\nretries = 3", "retries"),
        (
            "a = \"10.0.0.21\"",
            "a = \"10.0.0.21\"\nweight = 5",
            "weight",
        ),
        ("[dns]", "[metrics]\nenabled = true\n\n[dns]", "metrics"),
    ];
    for (from, to, unknown) in cases {
        let text = base_with(&[(from, to)]);
        match fx.parse(&text) {
            Err(e @ ConfigError::Syntax { .. }) => {
                let shown = e.to_string();
                assert!(shown.contains(&fx.file().display().to_string()), "{shown}");
                assert!(
                    shown.contains(&format!("unknown field `{unknown}`")),
                    "{shown}"
                );
                assert!(shown.contains("expected"), "{shown}");
            }
            other => panic!("expected a syntax error for {unknown}, got {other:?}"),
        }
    }
}

#[test]
fn toml_syntax_error_names_the_file() {
    let fx = Fixture::new();
    let text = base_with(&[("id = 2", "id = \"two\"")]);
    let err = fx.parse(&text).unwrap_err();
    let ConfigError::Syntax { file, message } = &err else {
        panic!("expected a syntax error, got {err}");
    };
    assert_eq!(file, &fx.file());
    assert!(message.contains("id"), "{message}");
    assert!(err.to_string().contains(&fx.file().display().to_string()));
}

#[test]
fn several_problems_are_reported_together() {
    let fx = Fixture::new();
    let text = base_with(&[
        ("id = 3", "id = 2"),
        ("zone = \"svc.example.\"", "zone = \"svc.example\""),
        (
            "kind = \"tcp\"",
            "kind = \"tcp\"\nrise = 0\ninterval = \"5x\"",
        ),
        ("aaaa = \"2001:db8::22\"", "aaaa = \"10.0.0.22\""),
    ]);
    let (problems, shown) = fx.invalid(&text);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.nodes[2].id",
            "dns.zone",
            "services[1].check.interval",
            "services[1].check.rise",
            "services[1].instances[1].aaaa",
        ]
    );
    assert!(shown.contains("has 5 problems"), "{shown}");
    for problem in &problems {
        assert_shown(&shown, &fx.file(), problem);
    }
}

// ---------------------------------------------------------------- describe

#[test]
fn describe_mentions_nodes_zone_services_checks_and_instances_in_priority_order() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    let text = describe(&config);
    assert!(text.contains(&fx.file().display().to_string()), "{text}");
    assert!(text.contains("3 nodes"), "{text}");
    for node in [
        "node 1: rpc 127.0.0.1:7101",
        "node 2:",
        "node 3: rpc 127.0.0.1:7103",
    ] {
        assert!(text.contains(node), "{node} missing from:\n{text}");
    }
    assert!(text.contains("svc.example."), "{text}");
    assert!(text.contains("ttl 5s"), "{text}");
    assert!(text.contains("service web → web.svc.example."), "{text}");
    assert!(text.contains("service db → db.svc.example."), "{text}");
    assert!(text.contains("failback auto after 30s"), "{text}");
    assert!(
        text.contains("GET http://<address>/health expecting 200"),
        "{text}"
    );
    assert!(text.contains("TCP connect to <address>"), "{text}");
    assert!(text.contains("every 1s, timeout 500ms"), "{text}");
    assert!(
        text.contains("up after 2 successes, down after 3 failures"),
        "{text}"
    );
    // web2 has priority 1, web1 priority 2: web2 is listed first although
    // it comes second in the file.
    let web2 = text.find("1. instance web2").expect(&text);
    let web1 = text.find("2. instance web1").expect(&text);
    assert!(web2 < web1, "{text}");
    assert!(
        text.contains("answers CNAME web2.internal.example."),
        "{text}"
    );
    // Equal priorities keep file order.
    let db1 = text.find("1. instance db1").expect(&text);
    let db2 = text.find("2. instance db2").expect(&text);
    assert!(db1 < db2, "{text}");
    assert!(text.contains("answers A 10.0.0.21"), "{text}");
    assert!(text.contains("answers AAAA 2001:db8::22"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

// ------------------------------------------------------------ regressions

#[test]
fn zero_election_timeouts_are_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "secret_file = ",
        "election_timeout_min = \"0s\"\nsecret_file = ",
    )]);
    fx.single_problem(
        &text,
        "cluster.election_timeout_min",
        "\"0s\"",
        "must be longer than cluster.heartbeat (50ms)",
    );
    let text = base_with(&[(
        "secret_file = ",
        "election_timeout_max = \"0s\"\nsecret_file = ",
    )]);
    fx.single_problem(
        &text,
        "cluster.election_timeout_max",
        "\"0s\"",
        "must be longer than cluster.election_timeout_min (150ms)",
    );
}

#[test]
fn http_keys_on_exec_check_are_rejected_with_their_values() {
    let fx = Fixture::new();
    let cases = [
        (
            "scheme = \"https\"",
            "services[1].check.scheme",
            "\"https\"",
        ),
        (
            "host = \"db.example\"",
            "services[1].check.host",
            "\"db.example\"",
        ),
        (
            "expect_status = [200, 204]",
            "services[1].check.expect_status",
            "[200, 204]",
        ),
        (
            "expect_status = \"200-299\"",
            "services[1].check.expect_status",
            "\"200-299\"",
        ),
        (
            "body_contains = \"ok\"",
            "services[1].check.body_contains",
            "\"ok\"",
        ),
    ];
    for (line, key, value) in cases {
        let text = base_with(&[(
            "kind = \"tcp\"",
            &format!("kind = \"exec\"\ncommand = [\"/bin/true\"]\n{line}"),
        )]);
        fx.single_problem(
            &text,
            key,
            value,
            "only applies to kind = \"http\", not kind = \"exec\"",
        );
    }
}

#[test]
fn command_on_tcp_check_is_rejected() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "kind = \"tcp\"",
        "kind = \"tcp\"\ncommand = [\"nc\", \"-z\"]",
    )]);
    fx.single_problem(
        &text,
        "services[1].check.command",
        "[\"nc\", \"-z\"]",
        "only applies to kind = \"exec\", not kind = \"tcp\"",
    );
}

#[test]
fn hostmaster_problem_shows_the_value_as_written() {
    let fx = Fixture::new();
    let text = base_with(&[(
        "zone = \"svc.example.\"",
        "zone = \"svc.example.\"\nhostmaster = \"Ops.Example\"",
    )]);
    fx.single_problem(
        &text,
        "dns.hostmaster",
        "\"Ops.Example\"",
        "expected an absolute name ending with a dot",
    );
}

#[test]
fn root_zone_gets_a_valid_default_hostmaster() {
    let fx = Fixture::new();
    let config = fx.valid(&base_with(&[("zone = \"svc.example.\"", "zone = \".\"")]));
    assert_eq!(config.dns.zone, ".");
    assert_eq!(config.dns.hostmaster, "hostmaster.");
    assert!(describe(&config).contains("service db → db."));
}

#[test]
fn zone_without_dot_and_with_invalid_label_reports_both() {
    let fx = Fixture::new();
    let text = base_with(&[("zone = \"svc.example.\"", "zone = \"svc!.example\"")]);
    let (problems, shown) = fx.invalid(&text);
    assert_eq!(problems.len(), 2, "{shown}");
    assert_problem(
        &problems[0],
        "dns.zone",
        "\"svc!.example\"",
        "ending with a dot",
    );
    assert_problem(
        &problems[1],
        "dns.zone",
        "\"svc!.example\"",
        "expected a DNS label",
    );
}

#[test]
fn dns_address_shared_with_another_listener_is_rejected() {
    let fx = Fixture::new();
    for (to, value) in [
        ("dns = \"127.0.0.1:7102\"", "\"127.0.0.1:7102\""),
        ("dns = \"127.0.0.1:5301\"", "\"127.0.0.1:5301\""),
    ] {
        let text = base_with(&[("dns = \"127.0.0.1:5302\"", to)]);
        fx.single_problem(
            &text,
            "cluster.nodes[1].dns",
            value,
            "every listener needs its own address",
        );
    }
}

#[test]
fn port_zero_listeners_may_repeat() {
    // Tests bind port 0 everywhere; the OS picks distinct ports.
    let fx = Fixture::new();
    let text = base_with(&[
        ("rpc = \"127.0.0.1:7101\"", "rpc = \"127.0.0.1:0\""),
        ("dns = \"127.0.0.1:5301\"", "dns = \"127.0.0.1:0\""),
        ("api = \"127.0.0.1:8101\"", "api = \"127.0.0.1:0\""),
    ]);
    let config = fx.valid(&text);
    assert_eq!(config.node(1).unwrap().dns.port(), 0);
}

#[test]
fn underscore_in_names_is_accepted_as_the_label_message_says() {
    let fx = Fixture::new();
    let text = base_with(&[("name = \"db1\"", "name = \"db_1\"")]);
    assert!(
        fx.valid(&text)
            .service("db")
            .unwrap()
            .instance("db_1")
            .is_some()
    );
    let text = base_with(&[("name = \"db1\"", "name = \"db 1\"")]);
    fx.single_problem(
        &text,
        "services[1].instances[0].name",
        "\"db 1\"",
        "letters, digits, '-' or '_'",
    );
}

// ------------------------------- cluster name, lease, quorum, on_minority

/// [`BASE`] with `keys` (TOML lines) added to `[cluster]`.
#[track_caller]
fn with_cluster(keys: &str) -> String {
    base_with(&[("secret_file = ", &format!("{keys}\nsecret_file = "))])
}

/// [`BASE`] with `keys` (TOML lines) added to `[dns]`.
#[track_caller]
fn with_dns(keys: &str) -> String {
    base_with(&[(
        "zone = \"svc.example.\"",
        &format!("zone = \"svc.example.\"\n{keys}"),
    )])
}

#[test]
fn cluster_name_lease_quorum_and_on_minority_have_defaults() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(config.cluster.name, "svc.example.");
    assert_eq!(config.cluster.name, config.dns.zone);
    assert_eq!(config.cluster.lease, Duration::from_secs(2));
    assert_eq!(config.cluster.health_quorum, HealthQuorum::Majority);
    assert_eq!(config.dns.on_minority, OnMinority::Servfail);
}

#[test]
fn default_cluster_name_is_the_normalised_zone() {
    let fx = Fixture::new();
    let text = base_with(&[("zone = \"svc.example.\"", "zone = \"SVC.Example.\"")]);
    let config = fx.valid(&text);
    assert_eq!(config.cluster.name, "svc.example.");
}

#[test]
fn explicit_cluster_name_is_kept() {
    let fx = Fixture::new();
    let config = fx.valid(&with_cluster("name = \"prod-eu\""));
    assert_eq!(config.cluster.name, "prod-eu");
    assert_eq!(config.dns.zone, "svc.example.");
    // Any printable ASCII without spaces, kept as written (case included).
    let config = fx.valid(&with_cluster("name = \"Prod/EU:1@dc~2\""));
    assert_eq!(config.cluster.name, "Prod/EU:1@dc~2");
}

#[test]
fn health_quorum_values_are_accepted() {
    let fx = Fixture::new();
    for (written, expected) in [
        ("majority", HealthQuorum::Majority),
        ("leader", HealthQuorum::Leader),
    ] {
        let config = fx.valid(&with_cluster(&format!("health_quorum = \"{written}\"")));
        assert_eq!(config.cluster.health_quorum, expected, "{written}");
        assert_eq!(expected.to_string(), written);
    }
}

#[test]
fn on_minority_values_are_accepted() {
    let fx = Fixture::new();
    for (written, expected) in [
        ("servfail", OnMinority::Servfail),
        ("stale", OnMinority::Stale),
    ] {
        let config = fx.valid(&with_dns(&format!("on_minority = \"{written}\"")));
        assert_eq!(config.dns.on_minority, expected, "{written}");
        assert_eq!(expected.to_string(), written);
    }
}

#[test]
fn explicit_lease_is_parsed() {
    let fx = Fixture::new();
    let config = fx.valid(&with_cluster("lease = \"750ms\""));
    assert_eq!(config.cluster.lease, Duration::from_millis(750));
    let config = fx.valid(&with_cluster("lease = \"1m\""));
    assert_eq!(config.cluster.lease, Duration::from_secs(60));
}

#[test]
fn bad_health_quorum_is_rejected() {
    let fx = Fixture::new();
    // Values are exact: no other words, no other case.
    for bad in ["all", "Majority", "", "quorum"] {
        let problem = fx.single_problem(
            &with_cluster(&format!("health_quorum = \"{bad}\"")),
            "cluster.health_quorum",
            &format!("{bad:?}"),
            "expected \"majority\"",
        );
        assert_eq!(problem.value, format!("{bad:?}"));
        assert!(problem.message.contains("\"leader\""), "{problem}");
    }
}

#[test]
fn bad_on_minority_is_rejected() {
    let fx = Fixture::new();
    for bad in ["nxdomain", "STALE", "", "refused"] {
        let problem = fx.single_problem(
            &with_dns(&format!("on_minority = \"{bad}\"")),
            "dns.on_minority",
            &format!("{bad:?}"),
            "expected \"servfail\"",
        );
        assert_eq!(problem.value, format!("{bad:?}"));
        assert!(problem.message.contains("\"stale\""), "{problem}");
    }
}

// ------------------------------------------------ DNS abuse limits ([dns])

#[test]
fn dns_abuse_limits_have_defaults_and_are_described() {
    let fx = Fixture::new();
    let config = fx.valid(BASE);
    assert_eq!(config.dns.rate_limit, 500);
    assert_eq!(config.dns.rate_limit_slip, 2);
    assert_eq!(config.dns.tcp_timeout, Duration::from_secs(5));
    assert_eq!(config.dns.tcp_max_connections, 100);
    assert_eq!(
        config.dns.rate_limit_exempt,
        ["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    );
    assert_eq!(config.dns.rate_limit_ipv4_prefix, 24);
    assert_eq!(config.dns.rate_limit_ipv6_prefix, 56);
    assert_eq!(config.dns.tcp_max_connections_per_source, 16);
    let text = describe(&config);
    assert!(
        text.contains(
            "UDP 500 responses/s per /24 or /56, 1 in 2 of the rest truncated (not for 127.0.0.0/8, ::1/128)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "TCP at most 100 connections, 16 per /24 or /56, closed after 5s without a query"
        ),
        "{text}"
    );
}

#[test]
fn rate_limit_exemptions_and_prefixes_can_be_set() {
    let fx = Fixture::new();
    let config = fx.valid(&with_dns(
        "rate_limit_exempt = [\"192.0.2.0/24\", \"127.0.0.53\", \"2001:db8::/32\", \"::ffff:198.51.100.0/120\"]\n\
         rate_limit_ipv4_prefix = 32\nrate_limit_ipv6_prefix = 64",
    ));
    let exempt: Vec<String> = config
        .dns
        .rate_limit_exempt
        .iter()
        .map(ToString::to_string)
        .collect();
    // One address is its own /32; an IPv4-mapped network is kept as IPv4,
    // the form sources are compared in.
    assert_eq!(
        exempt,
        [
            "192.0.2.0/24",
            "127.0.0.53/32",
            "2001:db8::/32",
            "198.51.100.0/24"
        ]
    );
    let [lan, stub, v6, mapped] = &config.dns.rate_limit_exempt[..] else {
        panic!("four networks");
    };
    assert!(lan.contains("192.0.2.77".parse().unwrap()));
    assert!(!lan.contains("192.0.3.1".parse().unwrap()));
    assert!(stub.contains("127.0.0.53".parse().unwrap()));
    assert!(!stub.contains("127.0.0.1".parse().unwrap()));
    assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!v6.contains("192.0.2.1".parse().unwrap()));
    assert!(mapped.contains("::ffff:198.51.100.9".parse().unwrap()));
    assert!(mapped.contains("198.51.100.9".parse().unwrap()));
    assert_eq!(config.dns.rate_limit_ipv4_prefix, 32);
    assert_eq!(config.dns.rate_limit_ipv6_prefix, 64);
    assert!(
        describe(&config).contains("UDP 500 responses/s per /32 or /64"),
        "{}",
        describe(&config)
    );

    // An empty list exempts no one, loopback included.
    let config = fx.valid(&with_dns("rate_limit_exempt = []"));
    assert!(config.dns.rate_limit_exempt.is_empty());
    assert!(!describe(&config).contains("(not for"));
}

#[test]
fn rate_limit_exemptions_that_are_not_networks_are_rejected_with_what_would_do() {
    let fx = Fixture::new();
    for (written, value, hint) in [
        ("localhost", "\"localhost\"", "like \"192.0.2.0/24\""),
        ("10.0.0.0/33", "\"10.0.0.0/33\"", "from 0 to 32"),
        ("::/129", "\"::/129\"", "from 0 to 128"),
        ("10.0.0.0/x", "\"10.0.0.0/x\"", "like \"/24\""),
        ("10.0.0.0/", "\"10.0.0.0/\"", "not a prefix length"),
        (
            "10.1.2.3/8",
            "\"10.1.2.3/8\"",
            "expected the network address, \"10.0.0.0/8\", or \"10.1.2.3\" alone",
        ),
        ("2001:db8::1/64", "\"2001:db8::1/64\"", "\"2001:db8::/64\""),
        (" 127.0.0.1", "\" 127.0.0.1\"", "is not an IP address"),
    ] {
        fx.single_problem(
            &with_dns(&format!(
                "rate_limit_exempt = [\"127.0.0.0/8\", {written:?}]"
            )),
            "dns.rate_limit_exempt[1]",
            value,
            hint,
        );
    }
}

#[test]
fn a_per_source_tcp_cap_defaults_to_sixteen_or_the_whole_cap_if_smaller() {
    let fx = Fixture::new();
    let config = fx.valid(&with_dns("tcp_max_connections = 5"));
    assert_eq!(config.dns.tcp_max_connections_per_source, 5);
    let config = fx.valid(&with_dns(
        "tcp_max_connections = 500\ntcp_max_connections_per_source = 40",
    ));
    assert_eq!(config.dns.tcp_max_connections_per_source, 40);
    assert!(
        describe(&config).contains("TCP at most 500 connections, 40 per /24 or /56"),
        "{}",
        describe(&config)
    );
}

#[test]
fn dns_abuse_limits_can_be_set_and_rate_limiting_turned_off() {
    let fx = Fixture::new();
    let config = fx.valid(&with_dns(
        "rate_limit = 0\nrate_limit_slip = 0\ntcp_timeout = \"750ms\"\ntcp_max_connections = 3",
    ));
    assert_eq!(config.dns.rate_limit, 0);
    assert_eq!(config.dns.rate_limit_slip, 0);
    assert_eq!(config.dns.tcp_timeout, Duration::from_millis(750));
    assert_eq!(config.dns.tcp_max_connections, 3);
    assert!(describe(&config).contains("UDP not rate limited"));
}

#[test]
fn dns_abuse_limits_out_of_range_are_rejected_with_the_accepted_range() {
    let fx = Fixture::new();
    for (line, key, value, hint) in [
        (
            "rate_limit = -1",
            "dns.rate_limit",
            "-1",
            "from 0 to 1000000",
        ),
        (
            "rate_limit = 5000000",
            "dns.rate_limit",
            "5000000",
            "0 to turn rate limiting off",
        ),
        (
            "rate_limit_slip = 11",
            "dns.rate_limit_slip",
            "11",
            "from 0 to 10",
        ),
        (
            "tcp_max_connections = 0",
            "dns.tcp_max_connections",
            "0",
            "from 1 to 10000",
        ),
        (
            "tcp_timeout = \"0s\"",
            "dns.tcp_timeout",
            "\"0s\"",
            "from 100ms to 5m",
        ),
        (
            "tcp_timeout = \"1h\"",
            "dns.tcp_timeout",
            "\"1h\"",
            "like \"5s\"",
        ),
        (
            "tcp_timeout = \"soon\"",
            "dns.tcp_timeout",
            "\"soon\"",
            "not a duration",
        ),
        (
            "rate_limit_ipv4_prefix = 4",
            "dns.rate_limit_ipv4_prefix",
            "4",
            "from 8 to 32",
        ),
        (
            "rate_limit_ipv4_prefix = 33",
            "dns.rate_limit_ipv4_prefix",
            "33",
            "leading bits of an IPv4 source",
        ),
        (
            "rate_limit_ipv6_prefix = 128",
            "dns.rate_limit_ipv6_prefix",
            "128",
            "from 16 to 64",
        ),
        (
            "rate_limit_ipv6_prefix = 8",
            "dns.rate_limit_ipv6_prefix",
            "8",
            "within a /64",
        ),
        (
            "tcp_max_connections_per_source = 0",
            "dns.tcp_max_connections_per_source",
            "0",
            "from 1 to 100",
        ),
        (
            "tcp_max_connections = 10\ntcp_max_connections_per_source = 11",
            "dns.tcp_max_connections_per_source",
            "11",
            "at most dns.tcp_max_connections (from 1 to 10)",
        ),
        ("rate_limit_exempt = \"127.0.0.0/8\"", "", "", ""),
    ] {
        if key.is_empty() {
            // Not a list: a syntax error naming the key, not a problem list.
            let error = fx
                .parse(&with_dns(line))
                .expect_err("a string is not a list");
            assert!(error.to_string().contains("rate_limit_exempt"), "{error}");
            continue;
        }
        fx.single_problem(&with_dns(line), key, value, hint);
    }
}

#[test]
fn cluster_name_that_is_not_printable_ascii_is_rejected() {
    let fx = Fixture::new();
    for (written, shown) in [
        ("\"prod eu\"", "\"prod eu\""),
        ("\"prod\\teu\"", "\"prod\\teu\""),
        ("\"prod-é\"", "\"prod-é\""),
        ("\" prod\"", "\" prod\""),
    ] {
        let problem = fx.single_problem(
            &with_cluster(&format!("name = {written}")),
            "cluster.name",
            shown,
            "printable ASCII without spaces",
        );
        assert_eq!(problem.value, shown);
    }
}

#[test]
fn bad_lease_duration_is_rejected() {
    let fx = Fixture::new();
    fx.single_problem(
        &with_cluster("lease = \"two seconds\""),
        "cluster.lease",
        "\"two seconds\"",
        "not a duration; expected a number with a unit",
    );
}

#[test]
fn lease_of_two_heartbeats_is_rejected_and_just_above_accepted() {
    let fx = Fixture::new();
    // The default heartbeat is 50ms.
    let problem = fx.single_problem(
        &with_cluster("lease = \"100ms\""),
        "cluster.lease",
        "\"100ms\"",
        "must be longer than two heartbeats (50ms each)",
    );
    assert!(problem.message.contains("like \"2s\""), "{problem}");
    let config = fx.valid(&with_cluster("lease = \"101ms\""));
    assert_eq!(config.cluster.lease, Duration::from_millis(101));

    // With an explicit heartbeat, compared as durations, not as text.
    fx.single_problem(
        &with_cluster("heartbeat = \"1s\"\nelection_timeout_min = \"3s\"\nelection_timeout_max = \"6s\"\nlease = \"2000ms\""),
        "cluster.lease",
        "\"2000ms\"",
        "must be longer than two heartbeats (1s each)",
    );
    let config = fx.valid(&with_cluster(
        "heartbeat = \"1s\"\nelection_timeout_min = \"3s\"\nelection_timeout_max = \"6s\"\nlease = \"2001ms\"",
    ));
    assert_eq!(config.cluster.lease, Duration::from_millis(2001));
}

#[test]
fn default_lease_is_checked_against_a_long_heartbeat() {
    // Only the heartbeat is written: the default 2s lease no longer fits.
    let fx = Fixture::new();
    fx.single_problem(
        &with_cluster(
            "heartbeat = \"1s\"\nelection_timeout_min = \"3s\"\nelection_timeout_max = \"6s\"",
        ),
        "cluster.lease",
        "\"2s\"",
        "must be longer than two heartbeats (1s each)",
    );
}

#[test]
fn zero_lease_is_rejected() {
    let fx = Fixture::new();
    fx.single_problem(
        &with_cluster("lease = \"0s\""),
        "cluster.lease",
        "\"0s\"",
        "must be longer than two heartbeats",
    );
}

#[test]
fn equal_election_timeouts_are_rejected_however_written() {
    // min == max makes openraft panic when it draws the timeout.
    let fx = Fixture::new();
    fx.single_problem(
        &with_cluster("election_timeout_min = \"1s\"\nelection_timeout_max = \"1000ms\""),
        "cluster.election_timeout_max",
        "\"1000ms\"",
        "must be longer than cluster.election_timeout_min (1s)",
    );
    fx.single_problem(
        &with_cluster("election_timeout_min = \"400ms\"\nelection_timeout_max = \"350ms\""),
        "cluster.election_timeout_max",
        "\"350ms\"",
        "must be longer than cluster.election_timeout_min (400ms)",
    );
    let config = fx.valid(&with_cluster(
        "election_timeout_min = \"300ms\"\nelection_timeout_max = \"301ms\"",
    ));
    assert_eq!(
        config.cluster.election_timeout_max,
        Duration::from_millis(301)
    );
}

#[test]
fn new_key_problems_are_reported_together() {
    let fx = Fixture::new();
    let text = base_with(&[
        (
            "secret_file = ",
            "name = \"a b\"\nlease = \"1ms\"\nhealth_quorum = \"all\"\nsecret_file = ",
        ),
        (
            "zone = \"svc.example.\"",
            "zone = \"svc.example.\"\non_minority = \"drop\"",
        ),
    ]);
    let (problems, shown) = fx.invalid(&text);
    let keys: BTreeSet<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "cluster.name",
            "cluster.lease",
            "cluster.health_quorum",
            "dns.on_minority",
        ]),
        "{shown}"
    );
    assert_eq!(problems.len(), 4, "{shown}");
    assert!(shown.contains("has 4 problems"), "{shown}");
}

#[test]
fn describe_mentions_lease_health_quorum_on_minority_and_name() {
    let fx = Fixture::new();
    let text = describe(&fx.valid(BASE));
    assert!(text.contains("lease 2s"), "{text}");
    assert!(text.contains("health quorum: majority"), "{text}");
    assert!(text.contains("outside the majority: servfail"), "{text}");
    assert!(text.contains("cluster name svc.example."), "{text}");

    let config = fx.valid(&base_with(&[
        (
            "secret_file = ",
            "name = \"prod-eu\"\nlease = \"3s\"\nhealth_quorum = \"leader\"\nsecret_file = ",
        ),
        (
            "zone = \"svc.example.\"",
            "zone = \"svc.example.\"\non_minority = \"stale\"",
        ),
    ]));
    let text = describe(&config);
    assert!(text.contains("lease 3s"), "{text}");
    assert!(text.contains("health quorum: leader"), "{text}");
    assert!(text.contains("outside the majority: stale"), "{text}");
    assert!(text.contains("cluster name prod-eu"), "{text}");
}

#[test]
fn huge_heartbeat_is_reported_not_a_panic() {
    // Twice this heartbeat does not fit in a Duration; validation must say
    // the lease is too short rather than overflow.
    let fx = Fixture::new();
    let (problems, shown) = fx.invalid(&with_cluster("heartbeat = \"10000000000000000000s\""));
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["cluster.election_timeout_min", "cluster.lease"],
        "{shown}"
    );
    assert_problem(
        &problems[1],
        "cluster.lease",
        "\"2s\"",
        "must be longer than two heartbeats",
    );
}

#[test]
fn empty_cluster_name_is_rejected() {
    // Written but empty is a mistake, not a request for the default: the
    // default comes from leaving the key out.
    let fx = Fixture::new();
    let problem = fx.single_problem(
        &with_cluster("name = \"\""),
        "cluster.name",
        "\"\"",
        "printable ASCII without spaces",
    );
    assert!(problem.message.contains("leave the key out"), "{problem}");
}

// ---------------------------------------------------------------- hooks

/// [`BASE`] with `hooks` appended (one or more `[[hooks]]` tables).
fn with_hooks(hooks: &str) -> String {
    format!("{BASE}\n{hooks}")
}

#[test]
fn hooks_are_read_with_their_defaults() {
    let fx = Fixture::new();
    std::fs::write(fx.dir.path().join("hook.secret"), format!("{SECRET}\n")).expect("secret");
    let config = fx.valid(&with_hooks(
        r#"
[[hooks]]
name = "Notify"
kind = "exec"
command = ["/usr/local/bin/on-change", "{service}", "{new}", "{epoch}"]

[[hooks]]
name = "lb"
kind = "webhook"
url = "https://lb.example/highlander"
secret_file = "hook.secret"
timeout = "2s"
services = ["DB"]
"#,
    ));
    assert_eq!(config.hooks.len(), 2);
    let notify = &config.hooks[0];
    assert_eq!(notify.name, "notify");
    assert_eq!(notify.timeout, Duration::from_secs(10));
    assert_eq!(notify.services, None);
    assert!(notify.covers("web") && notify.covers("db"));
    let lb = &config.hooks[1];
    assert_eq!(lb.timeout, Duration::from_secs(2));
    assert_eq!(lb.services, Some(vec!["db".to_owned()]));
    assert!(lb.covers("db") && !lb.covers("web"));
    match &lb.kind {
        HookKind::Webhook { url, secret, .. } => {
            assert_eq!(url, "https://lb.example/highlander");
            assert_eq!(
                secret.as_ref().map(|s| s.0.clone()),
                Some(SECRET.as_bytes().to_vec())
            );
        }
        other => panic!("expected a webhook, got {other:?}"),
    }
    assert!(
        !format!("{config:?}").contains(SECRET),
        "the secret must not be printed"
    );
    assert!(describe(&config).contains("hook lb: POST https://lb.example/highlander"));
}

#[test]
fn hook_without_command_is_rejected() {
    Fixture::new().single_problem(
        &with_hooks("[[hooks]]\nname = \"notify\"\nkind = \"exec\"\n"),
        "hooks[0].command",
        "",
        "an exec hook needs a command",
    );
}

#[test]
fn hook_of_unknown_kind_is_rejected() {
    Fixture::new().single_problem(
        &with_hooks("[[hooks]]\nname = \"notify\"\nkind = \"email\"\n"),
        "hooks[0].kind",
        "\"email\"",
        "expected \"exec\" (run a command) or \"webhook\"",
    );
}

#[test]
fn webhook_url_must_be_http_or_https() {
    let fx = Fixture::new();
    for (url, hint) in [
        ("ftp://files.example/", "scheme \"ftp\" is not supported"),
        ("lb.example/hook", "expected an http:// or https:// URL"),
    ] {
        fx.single_problem(
            &with_hooks(&format!(
                "[[hooks]]\nname = \"lb\"\nkind = \"webhook\"\nurl = \"{url}\"\n"
            )),
            "hooks[0].url",
            url,
            hint,
        );
    }
    fx.single_problem(
        &with_hooks("[[hooks]]\nname = \"lb\"\nkind = \"webhook\"\n"),
        "hooks[0].url",
        "\"\"",
        "a webhook needs a url",
    );
}

#[test]
fn keys_of_the_other_hook_kind_are_rejected() {
    let fx = Fixture::new();
    fx.single_problem(
        &with_hooks(
            "[[hooks]]\nname = \"n\"\nkind = \"exec\"\ncommand = [\"true\"]\nurl = \"http://x.example/\"\n",
        ),
        "hooks[0].url",
        "\"http://x.example/\"",
        "only applies to kind = \"webhook\", not kind = \"exec\"",
    );
    fx.single_problem(
        &with_hooks(
            "[[hooks]]\nname = \"n\"\nkind = \"webhook\"\nurl = \"http://x.example/\"\ncommand = [\"true\"]\n",
        ),
        "hooks[0].command",
        "[\"true\"]",
        "only applies to kind = \"exec\"",
    );
}

#[test]
fn duplicate_hook_names_are_rejected_ignoring_case() {
    Fixture::new().single_problem(
        &with_hooks(
            "[[hooks]]\nname = \"n\"\nkind = \"exec\"\ncommand = [\"true\"]\n\n[[hooks]]\nname = \"N\"\nkind = \"exec\"\ncommand = [\"true\"]\n",
        ),
        "hooks[1].name",
        "\"N\"",
        "duplicate hook name",
    );
}

#[test]
fn hook_name_that_is_not_a_dns_label_is_rejected() {
    Fixture::new().single_problem(
        &with_hooks("[[hooks]]\nname = \"no tify\"\nkind = \"exec\"\ncommand = [\"true\"]\n"),
        "hooks[0].name",
        "\"no tify\"",
        "expected a DNS label",
    );
}

#[test]
fn hook_for_an_unknown_service_is_rejected() {
    let fx = Fixture::new();
    fx.single_problem(
        &with_hooks(
            "[[hooks]]\nname = \"n\"\nkind = \"exec\"\ncommand = [\"true\"]\nservices = [\"web\", \"mail\"]\n",
        ),
        "hooks[0].services[1]",
        "\"mail\"",
        "no such service; expected one of the [[services]] names: web, db",
    );
    fx.single_problem(
        &with_hooks(
            "[[hooks]]\nname = \"n\"\nkind = \"exec\"\ncommand = [\"true\"]\nservices = []\n",
        ),
        "hooks[0].services",
        "[]",
        "leave the key out to run it for every service",
    );
}

#[test]
fn bad_hook_timeout_is_rejected() {
    let fx = Fixture::new();
    for (timeout, hint) in [("0s", "must be longer than 0"), ("soon", "not a duration")] {
        fx.single_problem(
            &with_hooks(&format!(
                "[[hooks]]\nname = \"n\"\nkind = \"exec\"\ncommand = [\"true\"]\ntimeout = \"{timeout}\"\n"
            )),
            "hooks[0].timeout",
            timeout,
            hint,
        );
    }
}

#[test]
fn short_or_missing_webhook_secret_is_rejected() {
    let fx = Fixture::new();
    std::fs::write(fx.dir.path().join("short.secret"), "abc\n").expect("secret");
    let hook = |file: &str| {
        with_hooks(&format!(
            "[[hooks]]\nname = \"lb\"\nkind = \"webhook\"\nurl = \"http://lb.example/\"\nsecret_file = \"{file}\"\n"
        ))
    };
    fx.single_problem(
        &hook("short.secret"),
        "hooks[0].secret_file",
        "\"short.secret\"",
        "is 3 bytes long; use at least 16 random bytes",
    );
    fx.single_problem(
        &hook("missing.secret"),
        "hooks[0].secret_file",
        "\"missing.secret\"",
        "cannot read",
    );
}

// ---------------------------------------------------------------- [cluster.tls]

/// [`BASE`] with a `[cluster.tls]` table naming `cert`, `key` and `ca`.
fn with_tls(cert: &str, key: &str, ca: &str) -> String {
    base_with(&[(
        "[dns]",
        &format!(
            "[cluster.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\n\n[dns]"
        ),
    )])
}

impl Fixture {
    /// Writes `ca.pem`, and `node.pem`/`node.key` signed by it for 127.0.0.1,
    /// into `certs/`; returns the node's key PEM.
    fn write_tls(&self) -> String {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = self.dir.path().join("certs");
        std::fs::create_dir_all(&dir).expect("certs dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let key = KeyPair::generate().expect("node key");
        let node = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("node cert");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        std::fs::write(dir.join("node.pem"), node.pem()).expect("write cert");
        std::fs::write(dir.join("node.key"), key.serialize_pem()).expect("write key");
        key.serialize_pem()
    }
}

#[test]
fn links_are_cleartext_without_a_tls_table() {
    let config = Fixture::new().valid(BASE);
    assert_eq!(config.cluster.tls, None);
    assert!(describe(&config).contains("links: cleartext"));
}

#[test]
fn tls_files_are_read_relative_to_the_config_dir() {
    let fx = Fixture::new();
    fx.write_tls();
    let config = fx.valid(&with_tls(
        "certs/node.pem",
        "certs/node.key",
        "certs/ca.pem",
    ));
    let tls = config.cluster.tls.as_ref().expect("tls");
    assert_eq!(tls.cert_file, fx.dir.path().join("certs/node.pem"));
    assert_eq!(tls.key_file, fx.dir.path().join("certs/node.key"));
    assert_eq!(tls.ca_file, fx.dir.path().join("certs/ca.pem"));
    assert_eq!((tls.cert_chain.len(), tls.ca.len()), (1, 1));
    assert!(describe(&config).contains("links: mutual TLS"));
}

#[test]
fn tls_private_key_never_reaches_debug_output() {
    let fx = Fixture::new();
    let key = fx.write_tls();
    let config = fx.valid(&with_tls(
        "certs/node.pem",
        "certs/node.key",
        "certs/ca.pem",
    ));
    let shown = format!("{config:?}");
    assert!(shown.contains("<redacted>"));
    let body = key.lines().nth(1).expect("a base64 line");
    assert!(!shown.contains(body), "{shown}");
}

#[test]
fn unreadable_tls_cert_file_is_rejected() {
    let fx = Fixture::new();
    fx.write_tls();
    fx.single_problem(
        &with_tls("certs/missing.pem", "certs/node.key", "certs/ca.pem"),
        "cluster.tls.cert_file",
        "\"certs/missing.pem\"",
        "cannot read",
    );
}

#[test]
fn tls_key_file_without_a_key_is_rejected() {
    let fx = Fixture::new();
    fx.write_tls();
    fx.single_problem(
        &with_tls("certs/node.pem", "certs/node.pem", "certs/ca.pem"),
        "cluster.tls.key_file",
        "\"certs/node.pem\"",
        "holds no PEM private key",
    );
}

#[test]
fn tls_ca_file_without_a_certificate_is_rejected() {
    let fx = Fixture::new();
    fx.write_tls();
    fx.single_problem(
        &with_tls("certs/node.pem", "certs/node.key", "cluster.secret"),
        "cluster.tls.ca_file",
        "\"cluster.secret\"",
        "holds no PEM certificate",
    );
}

#[test]
fn tls_key_that_does_not_match_the_certificate_is_rejected() {
    let fx = Fixture::new();
    fx.write_tls();
    let other = rcgen::KeyPair::generate().expect("key");
    std::fs::write(fx.dir.path().join("other.key"), other.serialize_pem()).expect("write");
    fx.single_problem(
        &with_tls("certs/node.pem", "other.key", "certs/ca.pem"),
        "cluster.tls.key_file",
        "\"other.key\"",
        "expected the private key of the certificate in certs/node.pem",
    );
}

#[test]
fn unknown_key_in_the_tls_table_is_a_syntax_error() {
    let fx = Fixture::new();
    let text = with_tls("a.pem", "a.key", "ca.pem").replace("ca_file", "ca_cert");
    match fx.parse(&text) {
        Err(ConfigError::Syntax { message, .. }) => {
            assert!(message.contains("ca_cert"), "{message}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- [[publish]]

/// A TSIG secret as `tsig-keygen` makes it (32 bytes, base64).
const TSIG_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYnk=";

/// An API token the tests write to `api.token`.
const API_TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef";

/// [`BASE`] with `publish` appended (one or more `[[publish]]` tables).
fn with_publish(publish: &str) -> String {
    format!("{BASE}\n{publish}")
}

impl Fixture {
    /// Writes the files the publish tests name: a TSIG secret alone, a
    /// `tsig-keygen` key file, and an API token.
    fn with_publish_files(self) -> Self {
        let write = |name: &str, text: &str| {
            std::fs::write(self.dir.path().join(name), text).expect("write");
        };
        write("tsig.secret", &format!("{TSIG_SECRET}\n"));
        write(
            "highlander.key",
            &format!(
                "key \"highlander\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{TSIG_SECRET}\";\n}};\n"
            ),
        );
        write("api.token", &format!("{API_TOKEN}\n"));
        self
    }
}

/// An environment variable that is set and holds a token-shaped value
/// (visible ASCII only), so a test can name it without setting one.
fn some_token_env() -> (String, String) {
    std::env::vars()
        .find(|(_, value)| !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic()))
        .expect("an environment variable with a token-shaped value")
}

/// A variable no environment holds.
const UNSET_ENV: &str = "HIGHLANDER_TEST_TOKEN_THAT_IS_NEVER_SET";

const RFC2136: &str = r#"
[[publish]]
name = "ns1"
kind = "rfc2136"
zone = "example.com."
server = "192.0.2.53"
tsig_key = "highlander"
tsig_secret_file = "tsig.secret"
"#;

const DIGITALOCEAN: &str = r#"
[[publish]]
name = "do"
kind = "digitalocean"
zone = "example.com."
token_file = "api.token"
"#;

#[test]
fn publish_targets_of_every_kind_are_read_with_their_defaults() {
    let fx = Fixture::new().with_publish_files();
    let (env, env_token) = some_token_env();
    let config = fx.valid(&with_publish(&format!(
        r#"{RFC2136}
[[publish]]
name = "DO"
kind = "digitalocean"
zone = "Example.COM."
record = "{{service}}.prod.example.com."
services = ["DB"]
ttl = "1m"
token_file = "api.token"

[[publish]]
name = "cf"
kind = "cloudflare"
zone = "example.org."
base_url = "http://127.0.0.1:8080/client/v4/"
zone_id = "023e105f4ecef8ad9ca31a8372d0c353"
token_env = "{env}"
interval = "10s"
timeout = "2s"
"#
    )));
    assert_eq!(config.publish.len(), 3);

    let ns1 = &config.publish[0];
    assert_eq!(ns1.name, "ns1");
    assert_eq!(ns1.services, ["web", "db"]);
    assert_eq!(ns1.record, "{service}.example.com.");
    assert_eq!(ns1.record_name("db"), "db.example.com.");
    assert_eq!(ns1.ttl, config.dns.ttl, "the default TTL is [dns]'s");
    assert_eq!(ns1.interval, Duration::from_secs(30));
    assert_eq!(ns1.timeout, Duration::from_secs(5));
    match &ns1.kind {
        PublishKind::Rfc2136 { server, tsig } => {
            assert_eq!(server, "192.0.2.53:53");
            assert_eq!(tsig.name, "highlander.");
            assert_eq!(tsig.algorithm, TsigAlgorithm::HmacSha256);
            assert_eq!(tsig.secret.0, b"secret-secret-secret-secret-32by");
        }
        other => panic!("expected rfc2136, got {other:?}"),
    }

    let digitalocean = &config.publish[1];
    assert_eq!(digitalocean.name, "do");
    assert_eq!(digitalocean.zone, "example.com.");
    assert_eq!(digitalocean.services, ["db"]);
    assert_eq!(digitalocean.record_name("db"), "db.prod.example.com.");
    assert_eq!(digitalocean.ttl, Duration::from_secs(60));
    match &digitalocean.kind {
        PublishKind::DigitalOcean { base_url, token } => {
            assert_eq!(base_url, publish::DIGITALOCEAN_API);
            assert_eq!(token.secret.0, API_TOKEN.as_bytes());
            assert_eq!(token.bearer(), format!("Bearer {API_TOKEN}"));
            assert_eq!(
                token.source,
                TokenSource::File(fx.dir.path().join("api.token"))
            );
        }
        other => panic!("expected digitalocean, got {other:?}"),
    }

    let cloudflare = &config.publish[2];
    // A provider's minimum wins over a shorter [dns] TTL; Cloudflare's
    // default is the 60 s every plan takes (30 s is Enterprise only).
    assert_eq!(cloudflare.ttl, Duration::from_secs(60));
    assert_eq!(cloudflare.interval, Duration::from_secs(10));
    assert_eq!(cloudflare.timeout, Duration::from_secs(2));
    match &cloudflare.kind {
        PublishKind::Cloudflare {
            base_url,
            zone_id,
            token,
        } => {
            assert_eq!(base_url, "http://127.0.0.1:8080/client/v4");
            assert_eq!(zone_id.as_deref(), Some("023e105f4ecef8ad9ca31a8372d0c353"));
            assert_eq!(token.secret.0, env_token.as_bytes());
            assert_eq!(token.source, TokenSource::Env(env.clone()));
        }
        other => panic!("expected cloudflare, got {other:?}"),
    }
}

#[test]
fn a_tsig_keygen_key_file_is_accepted_as_the_secret() {
    let fx = Fixture::new().with_publish_files();
    let config = fx.valid(&with_publish(
        &RFC2136.replace("tsig.secret", "highlander.key"),
    ));
    match &config.publish[0].kind {
        PublishKind::Rfc2136 { tsig, .. } => {
            assert_eq!(tsig.secret.0, b"secret-secret-secret-secret-32by");
        }
        other => panic!("expected rfc2136, got {other:?}"),
    }
}

#[test]
fn no_token_or_tsig_secret_reaches_debug_output() {
    let fx = Fixture::new().with_publish_files();
    let config = fx.valid(&with_publish(&format!("{RFC2136}{DIGITALOCEAN}")));
    let shown = format!("{config:?}");
    assert!(!shown.contains(API_TOKEN), "the API token was printed");
    assert!(!shown.contains(TSIG_SECRET), "the TSIG secret was printed");
    assert!(
        !shown.contains("secret-secret"),
        "the TSIG secret was printed"
    );
    assert!(shown.contains("<redacted>"));
    let described = describe(&config);
    assert!(!described.contains(API_TOKEN) && !described.contains(TSIG_SECRET));
}

#[test]
fn describe_prints_each_publish_target_on_one_line() {
    let fx = Fixture::new().with_publish_files();
    let config = fx.valid(&with_publish(&format!("{RFC2136}{DIGITALOCEAN}")));
    let described = describe(&config);
    let lines: Vec<&str> = described
        .lines()
        .filter(|l| l.starts_with("publish "))
        .collect();
    assert_eq!(lines.len(), 2, "{described}");
    assert_eq!(
        lines[0],
        "publish ns1: rfc2136 at 192.0.2.53:53, TSIG key highlander. (hmac-sha256); zone example.com., record {service}.example.com. for web, db; ttl 5s, every 30s, timeout 5s"
    );
    assert_eq!(
        lines[1],
        format!(
            "publish do: digitalocean at https://api.digitalocean.com, token from {}; zone example.com., record {{service}}.example.com. for web, db; ttl 30s, every 30s, timeout 5s",
            fx.dir.path().join("api.token").display()
        )
    );
}

#[test]
fn publish_of_unknown_kind_is_rejected() {
    Fixture::new().single_problem(
        &with_publish("[[publish]]\nname = \"x\"\nkind = \"route53\"\nzone = \"example.com.\"\n"),
        "publish[0].kind",
        "\"route53\"",
        "expected \"rfc2136\" (a DNS server taking TSIG-signed updates), \"digitalocean\" or \"cloudflare\"",
    );
}

#[test]
fn rfc2136_without_server_key_or_secret_is_rejected() {
    let fx = Fixture::new().with_publish_files();
    for (key, line, hint) in [
        (
            "server",
            "server = \"192.0.2.53\"\n",
            "an rfc2136 target needs a server; expected the primary server's address",
        ),
        (
            "tsig_key",
            "tsig_key = \"highlander\"\n",
            "name the key the server knows, like \"highlander\"; create one with `tsig-keygen",
        ),
        (
            "tsig_secret_file",
            "tsig_secret_file = \"tsig.secret\"\n",
            "a file holding its base64 secret, or the key file itself",
        ),
    ] {
        fx.single_problem(
            &with_publish(&RFC2136.replace(line, "")),
            &format!("publish[0].{key}"),
            "",
            hint,
        );
    }
}

#[test]
fn rfc2136_secret_that_is_not_base64_is_rejected() {
    let fx = Fixture::new().with_publish_files();
    std::fs::write(fx.dir.path().join("bad.secret"), "not base64 at all!\n").expect("write");
    std::fs::write(fx.dir.path().join("short.secret"), "c2hvcnQ=\n").expect("write");
    fx.single_problem(
        &with_publish(&RFC2136.replace("tsig.secret", "bad.secret")),
        "publish[0].tsig_secret_file",
        "\"bad.secret\"",
        "the secret is not valid base64",
    );
    fx.single_problem(
        &with_publish(&RFC2136.replace("tsig.secret", "short.secret")),
        "publish[0].tsig_secret_file",
        "\"short.secret\"",
        "the secret is 5 bytes long; use at least 16 random bytes",
    );
    fx.single_problem(
        &with_publish(&RFC2136.replace("tsig.secret", "missing.secret")),
        "publish[0].tsig_secret_file",
        "\"missing.secret\"",
        "cannot read",
    );
}

#[test]
fn api_token_from_both_or_neither_source_is_rejected() {
    let fx = Fixture::new().with_publish_files();
    let accepted = "expected token_file (a file holding the API token) or token_env (the name of an environment variable holding it)";
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace(
            "token_file = \"api.token\"\n",
            "token_file = \"api.token\"\ntoken_env = \"DO_TOKEN\"\n",
        )),
        "publish[0].token_env",
        "\"DO_TOKEN\"",
        &format!("set only one of token_file and token_env; {accepted}"),
    );
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace("token_file = \"api.token\"\n", "")),
        "publish[0].token_file",
        "",
        accepted,
    );
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace("api.token", "missing.token")),
        "publish[0].token_file",
        "\"missing.token\"",
        "cannot read",
    );
}

#[test]
fn api_token_from_a_missing_environment_variable_is_rejected() {
    assert!(std::env::var_os(UNSET_ENV).is_none());
    let fx = Fixture::new().with_publish_files();
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace(
            "token_file = \"api.token\"",
            &format!("token_env = \"{UNSET_ENV}\""),
        )),
        "publish[0].token_env",
        &format!("\"{UNSET_ENV}\""),
        "environment variable not found in highlander's environment; expected token_file",
    );
}

#[test]
fn api_token_holding_whitespace_is_rejected_without_printing_it() {
    let fx = Fixture::new().with_publish_files();
    std::fs::write(
        fx.dir.path().join("two.token"),
        "first-token second-token\n",
    )
    .expect("write");
    let problem = fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace("api.token", "two.token")),
        "publish[0].token_file",
        "token from",
        "the token holds whitespace or control characters",
    );
    assert!(!problem.to_string().contains("first-token"), "{problem}");
}

#[test]
fn record_template_outside_the_zone_is_rejected() {
    let fx = Fixture::new().with_publish_files();
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace(
            "zone = \"example.com.\"\n",
            "zone = \"example.com.\"\nrecord = \"{service}.example.org.\"\n",
        )),
        "publish[0].record",
        "\"{service}.example.org.\"",
        "\"web.example.org.\" is not a name below the zone \"example.com.\"; expected an absolute name inside the zone",
    );
    fx.single_problem(
        &with_publish(&DIGITALOCEAN.replace(
            "zone = \"example.com.\"\n",
            "zone = \"example.com.\"\nrecord = \"{service}\"\n",
        )),
        "publish[0].record",
        "\"{service}\"",
        "not an absolute name",
    );
}

#[test]
fn two_services_sharing_one_record_name_are_rejected() {
    Fixture::new().with_publish_files().single_problem(
        &with_publish(&DIGITALOCEAN.replace(
            "zone = \"example.com.\"\n",
            "zone = \"example.com.\"\nrecord = \"db.example.com.\"\n",
        )),
        "publish[0].record",
        "\"db.example.com.\"",
        "this target publishes 2 services, and without {service} they would all write the same record",
    );
}

#[test]
fn ttl_under_the_providers_minimum_is_rejected() {
    let fx = Fixture::new().with_publish_files();
    for (kind, target, min) in [
        ("digitalocean", DIGITALOCEAN.to_owned(), 30),
        (
            "cloudflare",
            DIGITALOCEAN.replace("digitalocean", "cloudflare"),
            30,
        ),
        ("rfc2136", RFC2136.to_owned(), 1),
    ] {
        let too_short = if min == 1 { "500ms" } else { "10s" };
        fx.single_problem(
            &with_publish(&format!("{target}ttl = \"{too_short}\"\n")),
            "publish[0].ttl",
            too_short,
            &format!("a {kind} record's TTL is whole seconds from {min}s to 1 day"),
        );
    }
}

#[test]
fn keys_of_another_publish_kind_are_rejected() {
    let fx = Fixture::new().with_publish_files();
    fx.single_problem(
        &with_publish(&format!("{RFC2136}token_file = \"api.token\"\n")),
        "publish[0].token_file",
        "\"api.token\"",
        "only applies to kind = \"digitalocean\" or \"cloudflare\", not kind = \"rfc2136\"",
    );
    fx.single_problem(
        &with_publish(&format!(
            "{DIGITALOCEAN}zone_id = \"023e105f4ecef8ad9ca31a8372d0c353\"\n"
        )),
        "publish[0].zone_id",
        "\"023e105f4ecef8ad9ca31a8372d0c353\"",
        "only applies to kind = \"cloudflare\", not kind = \"digitalocean\"",
    );
    fx.single_problem(
        &with_publish(&format!(
            "{}server = \"192.0.2.53\"\n",
            DIGITALOCEAN.replace("digitalocean", "cloudflare")
        )),
        "publish[0].server",
        "\"192.0.2.53\"",
        "only applies to kind = \"rfc2136\", not kind = \"cloudflare\"",
    );
}

#[test]
fn other_publish_mistakes_name_their_key() {
    let fx = Fixture::new().with_publish_files();
    let cases = [
        (
            DIGITALOCEAN.replace("zone = \"example.com.\"", "zone = \"example.com\""),
            "publish[0].zone",
            "\"example.com\"",
            "a zone must be an absolute name ending with a dot, like \"example.com.\"",
        ),
        (
            format!("{DIGITALOCEAN}base_url = \"ftp://api.example/\"\n"),
            "publish[0].base_url",
            "\"ftp://api.example/\"",
            "expected an http:// or https:// URL, like \"https://api.digitalocean.com\"",
        ),
        (
            format!("{DIGITALOCEAN}services = [\"mail\"]\n"),
            "publish[0].services[0]",
            "\"mail\"",
            "no such service; expected one of the [[services]] names: web, db",
        ),
        (
            format!("{DIGITALOCEAN}interval = \"0s\"\n"),
            "publish[0].interval",
            "0s",
            "must be longer than 0",
        ),
        (
            format!(
                "{}zone_id = \"not/an/id\"\n",
                DIGITALOCEAN.replace("digitalocean", "cloudflare")
            ),
            "publish[0].zone_id",
            "\"not/an/id\"",
            "expected the zone's id from the Cloudflare dashboard",
        ),
        (
            format!("{DIGITALOCEAN}{}", DIGITALOCEAN.replace("\"do\"", "\"DO\"")),
            "publish[1].name",
            "\"DO\"",
            "duplicate publish target name",
        ),
    ];
    for (text, key, value, hint) in cases {
        fx.single_problem(&with_publish(&text), key, value, hint);
    }
}
