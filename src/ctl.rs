//! The operator commands (`highlander status`, `switchover`, `drain`,
//! `undrain`, `events`): a client of the HTTP API that prints readable
//! tables, or the API's JSON with `--json` for scripts.
//!
//! It only talks HTTP to one node (`--api`, or the first node of
//! `--config`); any node forwards changes to the leader. It never touches a
//! node's data.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::api::{ChangeResult, ErrorBody, Events, Status};
use crate::config::{Config, ConfigError};
use crate::model::Event;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("give --api URL (like http://127.0.0.1:8101) or --config FILE to find the API")]
    NoApi,
    #[error("cannot read the API token from {file}: {source}")]
    Token {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot reach the API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered something that is not highlander's API: {reason}")]
    BadAnswer { url: String, reason: String },
}

impl CtlError {
    /// Whether the command line or config was at fault (exit 2) rather than
    /// the cluster (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CtlError::Config(_) | CtlError::NoApi | CtlError::Token { .. }
        )
    }
}

/// Where the commands send their requests, and with which token.
pub struct Target {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Target {
    /// `api` if given, else the first node of `config`; the token from
    /// `token_file`, else from the config's `[api] token_file`.
    pub fn resolve(
        api: Option<&str>,
        config: Option<&Path>,
        token_file: Option<&Path>,
    ) -> Result<Target, CtlError> {
        let config = config.map(Config::load).transpose()?;
        let base = match (api, &config) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(config)) => {
                let first = config.cluster.nodes.first().ok_or(CtlError::NoApi)?;
                format!("http://{}", first.api)
            }
            (None, None) => return Err(CtlError::NoApi),
        };
        let token = match token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|source| CtlError::Token {
                        file: file.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => config.and_then(|c| c.api.map(|a| a.token)),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CtlError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Target { base, token, http })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        };
        if method == "POST"
            && let Some(token) = &self.token
        {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let unreachable = |e: reqwest::Error| CtlError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(CtlError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes.to_vec())
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Vec<u8>), CtlError> {
        let bytes = self.send("GET", path, None).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })?;
        Ok((value, bytes))
    }
}

/// `highlander status`.
pub async fn status(target: &Target, json: bool) -> Result<String, CtlError> {
    let (status, raw): (Status, _) = target.get("/v1/status").await?;
    if json {
        return Ok(String::from_utf8_lossy(&raw).into_owned() + "\n");
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}, term {}), leader {}, applied index {}, {}",
        status.node,
        status.role,
        status.term,
        status.leader.map_or("none".into(), |l| format!("node {l}")),
        status.last_applied,
        if status.in_majority {
            "in the majority"
        } else {
            "OUTSIDE the majority (DNS answers SERVFAIL)"
        }
    );
    for service in &status.services {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "service {}: active {} at epoch {} (failback {}){}",
            service.name,
            service.active.as_deref().unwrap_or("none yet"),
            service.epoch,
            service.failback,
            if service.all_down_since.is_some() {
                ", EVERY INSTANCE DOWN"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  {:<2} {:<16} {:<24} {:>8}  health by node",
            "", "instance", "address", "priority"
        );
        for instance in &service.instances {
            let marker = if service.active.as_deref() == Some(instance.name.as_str()) {
                "*"
            } else {
                ""
            };
            let health: Vec<String> = instance
                .health
                .iter()
                .map(|(node, v)| format!("{node}:{v}"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<2} {:<16} {:<24} {:>8}  {}{}",
                marker,
                instance.name,
                instance.address,
                instance.priority,
                health.join(" "),
                if instance.drained { "  (drained)" } else { "" }
            );
        }
    }
    print_publish(&mut out, &status, crate::cluster::transport::unix_millis());
    Ok(out)
}

/// The `[[publish]]` targets of `status`, as of `now` (unix ms). Only the
/// leader publishes, so another node's entries just point at it.
fn print_publish(out: &mut String, status: &Status, now: u64) {
    for target in &status.publish {
        let _ = writeln!(out);
        if !target.active {
            let _ = writeln!(
                out,
                "publish {} ({}): not published from this node; the leader ({}) publishes, ask it",
                target.name,
                target.kind,
                status
                    .leader
                    .map_or("none yet".into(), |l| format!("node {l}"))
            );
            continue;
        }
        let ago = |at: Option<u64>| {
            at.map_or("never".to_owned(), |at| {
                format!("{} s ago", now.saturating_sub(at) / 1000)
            })
        };
        let state = if target.failures > 0 {
            format!(
                "FAILING ({} in a row): {}",
                target.failures,
                target.last_error.as_deref().unwrap_or("")
            )
        } else if target.in_sync {
            "in sync".to_owned()
        } else {
            "NOT in sync".to_owned()
        };
        let _ = writeln!(
            out,
            "publish {} ({}): {state}; last success {}, {} write{}",
            target.name,
            target.kind,
            ago(target.last_success),
            target.writes,
            if target.writes == 1 { "" } else { "s" }
        );
        for record in &target.records {
            let _ = writeln!(
                out,
                "  {:<32} epoch {:<4} published {:<4} {}{}",
                record.name,
                record.epoch,
                record
                    .published_epoch
                    .map_or("none".to_owned(), |e| e.to_string()),
                record.state.as_str(),
                record
                    .detail
                    .as_deref()
                    .map_or(String::new(), |d| format!(": {d}"))
            );
        }
    }
}

async fn change(
    target: &Target,
    path: &str,
    body: Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    let bytes = target.send("POST", path, body).await?;
    if json {
        return Ok(String::from_utf8_lossy(&bytes).into_owned() + "\n");
    }
    let result: ChangeResult = serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer {
        url: format!("{}{path}", target.base),
        reason: e.to_string(),
    })?;
    let drained = if result.drained.is_empty() {
        "none".into()
    } else {
        result.drained.join(", ")
    };
    Ok(format!(
        "service {}: active {} at epoch {}; drained: {drained}\n",
        result.service,
        result.active.as_deref().unwrap_or("none"),
        result.epoch
    ))
}

/// `highlander switchover SERVICE [--to INSTANCE]`.
pub async fn switchover(
    target: &Target,
    service: &str,
    to: Option<&str>,
    json: bool,
) -> Result<String, CtlError> {
    let body = to.map(|to| serde_json::json!({ "to": to }).to_string());
    change(
        target,
        &format!("/v1/services/{service}/switchover"),
        body,
        json,
    )
    .await
}

/// `highlander drain|undrain SERVICE INSTANCE`.
pub async fn drain(
    target: &Target,
    service: &str,
    instance: &str,
    undrain: bool,
    json: bool,
) -> Result<String, CtlError> {
    let verb = if undrain { "undrain" } else { "drain" };
    change(
        target,
        &format!("/v1/services/{service}/instances/{instance}/{verb}"),
        None,
        json,
    )
    .await
}

/// One event as a line of text.
pub fn event_line(event: &Event) -> String {
    let at =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(event.at));
    format!(
        "{at}  #{:<6} {:<12} epoch {:<5} {} -> {}  ({})",
        event.index,
        event.service,
        event.epoch,
        event.from.as_deref().unwrap_or("none"),
        event.to.as_deref().unwrap_or("none"),
        event.reason
    )
}

/// `highlander events [--follow]`: prints every change after `since`; with
/// `follow`, keeps polling once a second and prints new ones as they come,
/// riding out a node that is briefly unreachable.
pub async fn events(
    target: &Target,
    mut since: u64,
    follow: bool,
    json: bool,
    mut print: impl FnMut(&str),
) -> Result<(), CtlError> {
    loop {
        let answer = target.get(&format!("/v1/events?since={since}")).await;
        let events: Events = match answer {
            Ok((events, _)) => events,
            // Following outlives a node restart or a network blip: say so and retry.
            Err(e) if follow => {
                eprintln!("highlander: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for event in &events.events {
            let line = if json {
                serde_json::to_string(event).unwrap_or_default()
            } else {
                event_line(event)
            };
            print(&line);
            since = since.max(event.index);
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PublishStatus, PublishedRecord, RecordState};

    fn status(publish: Vec<PublishStatus>) -> Status {
        Status {
            node: 2,
            role: "follower".into(),
            term: 3,
            leader: Some(1),
            last_applied: 9,
            in_majority: true,
            services: Vec::new(),
            publish,
        }
    }

    fn target(active: bool, failures: u64) -> PublishStatus {
        PublishStatus {
            name: "corp-bind".into(),
            kind: "rfc2136".into(),
            active,
            in_sync: failures == 0,
            records: vec![PublishedRecord {
                service: "db".into(),
                name: "db.example.com.".into(),
                epoch: 5,
                published_epoch: Some(4),
                state: if failures == 0 {
                    RecordState::InSync
                } else {
                    RecordState::Failed
                },
                detail: (failures > 0).then(|| "ns1 did not answer within 5s".to_owned()),
            }],
            last_success: Some(1_000_000),
            last_error: (failures > 0).then(|| "ns1 did not answer within 5s".to_owned()),
            last_error_at: None,
            failures,
            writes: 1,
        }
    }

    #[test]
    fn publish_targets_show_their_state_or_point_at_the_leader() {
        let mut out = String::new();
        print_publish(&mut out, &status(vec![target(true, 0)]), 1_042_000);
        assert!(
            out.contains("publish corp-bind (rfc2136): in sync; last success 42 s ago, 1 write\n"),
            "{out}"
        );
        assert!(out.contains("db.example.com."), "{out}");
        assert!(out.contains("published 4"), "{out}");

        let mut out = String::new();
        print_publish(&mut out, &status(vec![target(true, 3)]), 1_042_000);
        assert!(
            out.contains("FAILING (3 in a row): ns1 did not answer within 5s"),
            "{out}"
        );
        assert!(out.contains("failed: ns1 did not answer"), "{out}");

        let mut out = String::new();
        print_publish(&mut out, &status(vec![target(false, 0)]), 1_042_000);
        assert!(
            out.contains("not published from this node; the leader (node 1) publishes"),
            "{out}"
        );
    }
}
