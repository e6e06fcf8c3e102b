//! The HTTP API on each node's `api` address: what a person (or a script) on
//! call reads to see the cluster.
//!
//! - `GET /v1/status`: this node's role, term, leader, applied index, whether
//!   it is in the majority, and every service with its active instance,
//!   epoch and each node's verdict on each instance;
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: 200 while the node is in the majority, 503 otherwise.
//!
//! It only reads: the cluster handle's metrics, quorum view and applied
//! state. It never imports `dns`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, NodeId};
use crate::config::Config;
use crate::model::{Epoch, UnixMillis, Verdict};

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub cluster: Cluster,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_applied: u64,
    /// Whether this node answers service names (S3).
    pub in_majority: bool,
    pub services: Vec<ServiceStatus>,
}

/// One service in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub active: Option<String>,
    pub epoch: Epoch,
    pub since: Option<UnixMillis>,
    pub failback: String,
    pub all_down_since: Option<UnixMillis>,
    pub instances: Vec<InstanceStatus>,
}

/// One instance in [`ServiceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub address: String,
    pub priority: i64,
    pub drained: bool,
    /// Each node's latest verdict, by node id.
    pub health: BTreeMap<NodeId, Verdict>,
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(crate::dashboard::router())
        .with_state(state)
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Builds the status of this node.
pub fn status_of(state: &ApiState) -> Status {
    let (role, term, leader) = state.cluster.role();
    let applied = state.cluster.applied().borrow().clone();
    let services = state
        .config
        .services
        .iter()
        .map(|service| {
            let current = applied
                .state
                .service(&service.name)
                .cloned()
                .unwrap_or_default();
            ServiceStatus {
                name: service.name.clone(),
                active: current.active.clone(),
                epoch: current.epoch,
                since: current.since,
                failback: service.failback.to_string(),
                all_down_since: current.all_down_since,
                instances: service
                    .instances
                    .iter()
                    .map(|instance| InstanceStatus {
                        name: instance.name.clone(),
                        address: instance.address.clone(),
                        priority: instance.priority,
                        drained: current.drained.contains(&instance.name),
                        health: state
                            .cluster
                            .verdicts(&service.name, &instance.name)
                            .into_iter()
                            .collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    Status {
        node: state.cluster.id(),
        role: role_name(role).into(),
        term,
        leader,
        last_applied: applied.index,
        in_majority: state.cluster.in_majority(),
        services,
    }
}

async fn status(State(state): State<ApiState>) -> Json<Status> {
    Json(status_of(&state))
}

async fn ready(State(state): State<ApiState>) -> Response {
    if state.cluster.in_majority() {
        (StatusCode::OK, "in the majority\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not in contact with a quorum-holding leader\n",
        )
            .into_response()
    }
}
