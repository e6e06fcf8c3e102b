//! The operator API against three in-process nodes: status codes, auth,
//! validation, forwarding from a follower, switchover, drain and events.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::cluster_inprocess::{API_TOKEN, TestCluster};
use crate::harness::{answer, eventually};

/// Sends a request and returns the status and the JSON body.
async fn call(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{api}{path}");
    let mut request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, json, headers))
}

async fn started() -> Result<(TestCluster, u64, u64)> {
    let cluster = TestCluster::start("majority").await?;
    let leader = cluster.leader().await?;
    let follower = leader % 3 + 1;
    for id in 1..=3 {
        let dns = cluster.node(id).dns;
        eventually(Duration::from_secs(10), "the first decision", || async {
            Ok(answer(dns).await?.filter(|a| a.instance == "primary"))
        })
        .await?;
    }
    // Every node must see backup up before it can be chosen.
    let api = cluster.node(follower).api;
    eventually(Duration::from_secs(10), "backup up in the view", || async {
        let (_, status, _) = call(api, "GET", "/v1/services/app", None, None).await?;
        let up = status["instances"][1]["health"]
            .as_object()
            .is_some_and(|h| h.values().filter(|v| *v == "up").count() >= 2);
        Ok(up.then_some(()))
    })
    .await?;
    Ok((cluster, leader, follower))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_bearer_token_and_valid_input() -> Result<()> {
    let (cluster, _, follower) = started().await?;
    let api = cluster.node(follower).api;
    let path = "/v1/services/app/switchover";

    let (code, body, headers) = call(api, "POST", path, None, None).await?;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Authorization: Bearer"))
    );

    let (code, body, _) = call(api, "POST", path, Some("not-the-token-000000"), None).await?;
    assert_eq!(code, 403, "{body}");

    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/nope/switchover",
        Some(API_TOKEN),
        None,
    )
    .await?;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("app")),
        "{body}"
    );

    let (code, body, _) = call(api, "POST", path, Some(API_TOKEN), Some("{\"too\": 1}")).await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("\"to\"")),
        "{body}"
    );

    let big = format!("{{\"to\": \"{}\"}}", "x".repeat(10_000));
    let (code, _, _) = call(api, "POST", path, Some(API_TOKEN), Some(&big)).await?;
    assert_eq!(code, 413);

    let (code, body, _) = call(
        api,
        "POST",
        path,
        Some(API_TOKEN),
        Some("{\"to\": \"ghost\"}"),
    )
    .await?;
    assert_eq!(code, 404, "{body}");

    let (code, body, _) = call(api, "GET", "/v1/events?since=abc", None, None).await?;
    assert_eq!(code, 400, "{body}");

    // Nothing changed through all of that.
    let (_, status, _) = call(api, "GET", "/v1/services/app", None, None).await?;
    assert_eq!(
        (status["active"].as_str(), status["epoch"].as_u64()),
        (Some("primary"), Some(1))
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_from_a_follower_moves_every_node_and_is_recorded() -> Result<()> {
    let (cluster, _, follower) = started().await?;
    let api = cluster.node(follower).api;

    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/switchover",
        Some(API_TOKEN),
        Some("{\"to\": \"backup\"}"),
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["active"].as_str(), body["epoch"].as_u64()),
        (Some("backup"), Some(2))
    );
    for id in 1..=3 {
        let dns = cluster.node(id).dns;
        let moved = eventually(
            Duration::from_secs(5),
            "every node answers backup",
            || async { Ok(answer(dns).await?.filter(|a| a.instance == "backup")) },
        )
        .await?;
        assert_eq!(moved.epoch, 2);
    }

    // Already active, and (with primary down everywhere) a down target: 409.
    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/switchover",
        Some(API_TOKEN),
        Some("{\"to\": \"backup\"}"),
    )
    .await?;
    assert_eq!(code, 409, "{body}");
    for node in &cluster.nodes {
        node.probes.set_down("primary", true);
    }
    eventually(
        Duration::from_secs(5),
        "primary down in the view",
        || async {
            let (_, status, _) = call(api, "GET", "/v1/services/app", None, None).await?;
            let down = status["instances"][0]["health"]
                .as_object()
                .is_some_and(|h| h.values().filter(|v| *v == "down").count() >= 2);
            Ok(down.then_some(()))
        },
    )
    .await?;
    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/switchover",
        Some(API_TOKEN),
        Some("{\"to\": \"primary\"}"),
    )
    .await?;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not healthy")),
        "{body}"
    );

    // The history names the switchover and who saw what.
    let (code, events, _) = call(api, "GET", "/v1/events?since=0", None, None).await?;
    assert_eq!(code, 200);
    let events = events["events"].as_array().context("events list")?;
    let last = events.last().context("at least one event")?;
    assert_eq!(
        (
            last["reason"].as_str(),
            last["from"].as_str(),
            last["to"].as_str(),
            last["epoch"].as_u64()
        ),
        (Some("switchover"), Some("primary"), Some("backup"), Some(2))
    );
    ensure!(
        last["evidence"]["backup"]
            .as_object()
            .is_some_and(|h| h.len() == 3),
        "evidence: {last}"
    );
    let index = last["index"].as_u64().context("index")?;
    let (_, later, _) = call(api, "GET", &format!("/v1/events?since={index}"), None, None).await?;
    assert_eq!(later["events"].as_array().map(Vec::len), Some(0));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_the_active_instance_moves_the_service_first() -> Result<()> {
    let (cluster, leader, _) = started().await?;
    let api = cluster.node(leader).api;
    let drain = "/v1/services/app/instances/primary/drain";

    let (code, body, _) = call(api, "POST", drain, Some(API_TOKEN), None).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["active"].as_str(), body["epoch"].as_u64()),
        (Some("backup"), Some(2))
    );
    assert_eq!(body["drained"], serde_json::json!(["primary"]));

    // A drained instance cannot be switched to, and backup (now the only
    // undrained one) cannot be drained while it is active.
    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/switchover",
        Some(API_TOKEN),
        Some("{\"to\": \"primary\"}"),
    )
    .await?;
    assert_eq!(code, 409, "{body}");
    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/instances/backup/drain",
        Some(API_TOKEN),
        None,
    )
    .await?;
    assert_eq!(code, 409, "{body}");

    let (code, body, _) = call(
        api,
        "POST",
        "/v1/services/app/instances/primary/undrain",
        Some(API_TOKEN),
        None,
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["drained"], serde_json::json!([]));
    let (_, events, _) = call(api, "GET", "/v1/events", None, None).await?;
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["initial", "drain"]);
    cluster.stop().await
}
