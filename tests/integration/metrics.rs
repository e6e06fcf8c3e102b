use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use highlander::config::Config;
use highlander::node::Node;
use tokio_util::sync::CancellationToken;

use crate::harness::{ConfigDir, Instance, ZONE, answer, eventually, one_node_config, query};

/// One sample of an OpenMetrics exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: each family's type and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses OpenMetrics text, failing on anything the format does not
    /// allow here: an unknown comment, a sample of a family without a
    /// `# TYPE`, a malformed label set, a missing `# EOF` at the end.
    fn parse(text: &str) -> Result<Exposition> {
        let mut exposition = Exposition::default();
        let mut lines = text.lines().collect::<Vec<_>>();
        ensure!(
            lines.pop() == Some("# EOF"),
            "the exposition must end with # EOF:\n{text}"
        );
        for line in lines {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (kind, name) = (parts.next(), parts.next());
                match (kind, name, parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        exposition.types.insert(name.to_owned(), kind.to_owned());
                    }
                    (Some("HELP" | "UNIT"), Some(_), _) => {}
                    _ => bail!("unexpected comment line {line:?}"),
                }
                continue;
            }
            let sample = parse_sample(line).with_context(|| format!("sample line {line:?}"))?;
            let family = ["_total", "_count", "_sum", "_bucket", "_created"]
                .iter()
                .find_map(|suffix| sample.name.strip_suffix(suffix))
                .filter(|family| exposition.types.contains_key(*family))
                .unwrap_or(&sample.name);
            ensure!(
                exposition.types.contains_key(family),
                "{} has no # TYPE before it",
                sample.name
            );
            exposition.samples.push(sample);
        }
        Ok(exposition)
    }

    /// The value of the one sample `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == labels)
            .map(|s| s.value)
    }
}

/// `name value` or `name{key="value",...} value`, with `\\`, `\"` and `\n`
/// escapes in label values.
fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .context("a sample has a name and a value")?;
    let name = line[..name_end].to_owned();
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name {name:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"").context("a label without =\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().context("an unterminated label value")? {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next().context("a dangling escape")?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            body = &after[end..];
            body = body.strip_prefix(',').unwrap_or(body);
        }
    }
    let value = rest.strip_prefix(' ').context("a space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().with_context(|| format!("value {other:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `GET /metrics` from `api`, checking the status and content type.
async fn scrape(api: std::net::SocketAddr) -> Result<Exposition> {
    let response = reqwest::get(format!("http://{api}/metrics")).await?;
    ensure!(response.status() == 200, "status {}", response.status());
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "content type {content_type:?}"
    );
    Exposition::parse(&response.text().await?)
}

#[test]
fn the_sample_parser_reads_escapes_and_rejects_untyped_families() -> Result<()> {
    let text =
        "# TYPE a gauge\na{x=\"q\\\"uo,te\",y=\"\\\\\"} 2\n# TYPE b counter\nb_total 1.5\n# EOF\n";
    let parsed = Exposition::parse(text)?;
    assert_eq!(
        parsed.get("a", &[("x", "q\"uo,te"), ("y", "\\")]),
        Some(2.0)
    );
    assert_eq!(parsed.get("b_total", &[]), Some(1.5));
    assert!(Exposition::parse("c 1\n# EOF\n").is_err());
    assert!(Exposition::parse("# TYPE a gauge\na 1\n").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_decision_dns_answers_probes_and_raft() -> Result<()> {
    let primary = Instance::start("primary").await?;
    let dir = ConfigDir::new()?;
    let file = dir.write(&one_node_config(&[&primary], "auto", "127.0.0.1:0"))?;
    let node = Node::bind(Config::load(&file)?, 1).await?;
    let (dns, api) = (node.dns_addr(), node.api_addr());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(node.run(cancel.clone()));

    let first = eventually(Duration::from_secs(10), "the first decision", || {
        answer(dns)
    })
    .await?;
    assert_eq!((first.instance.as_str(), first.epoch), ("primary", 1));

    for _ in 0..3 {
        let reply = query(dns, &format!("app.{ZONE}"), RecordType::A).await?;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    }
    for _ in 0..2 {
        let reply = query(dns, &format!("nope.{ZONE}"), RecordType::A).await?;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }

    let metrics = scrape(api).await?;
    let app = [("service", "app")];
    assert_eq!(metrics.get("highlander_service_epoch", &app), Some(1.0));
    let active = [("service", "app"), ("instance", "primary")];
    assert_eq!(metrics.get("highlander_service_active", &active), Some(1.0));
    let initial = [("service", "app"), ("reason", "initial")];
    assert_eq!(metrics.get("highlander_changes_total", &initial), Some(1.0));

    // The two answers above (TXT and A) plus three A queries.
    let rcode = |metrics: &Exposition, rcode| {
        metrics
            .get("highlander_dns_queries_total", &[("rcode", rcode)])
            .unwrap_or(0.0)
    };
    assert!(rcode(&metrics, "noerror") >= 5.0, "{:?}", metrics.samples);
    assert!(rcode(&metrics, "nxdomain") >= 2.0, "{:?}", metrics.samples);

    let up = [
        ("service", "app"),
        ("instance", "primary"),
        ("node", "1"),
        ("state", "up"),
    ];
    assert_eq!(metrics.get("highlander_instance_health", &up), Some(1.0));
    let probes = [("service", "app"), ("kind", "http")];
    let probed = metrics.get("highlander_probe_duration_seconds_count", &probes);
    assert!(probed.is_some_and(|n| n > 0.0), "{probed:?}");
    assert_eq!(
        metrics
            .types
            .get("highlander_probe_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    let term = metrics.get("highlander_raft_term", &[]);
    assert!(term.is_some_and(|t| t >= 1.0), "{term:?}");
    assert_eq!(metrics.get("highlander_raft_leader", &[]), Some(1.0));
    let applied = metrics.get("highlander_raft_applied_index", &[]);
    assert!(applied.is_some_and(|i| i >= 1.0), "{applied:?}");
    assert_eq!(metrics.get("highlander_in_majority", &[]), Some(1.0));

    // Counters only grow between scrapes, and the change is not counted again.
    let again = scrape(api).await?;
    assert!(rcode(&again, "noerror") >= rcode(&metrics, "noerror"));
    assert_eq!(again.get("highlander_changes_total", &initial), Some(1.0));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await???;
    drop(primary);
    Ok(())
}
