//! The HTTP API on each node's `api` address: what a person (or a script) on
//! call reads to see the cluster.
//!
//! - `GET /v1/status`: this node's role, term, leader, applied index, whether
//!   it is in the majority, and every service with its active instance,
//!   epoch and each node's verdict on each instance;
//! - `GET /v1/services/{name}`: one service of the status;
//! - `GET /v1/events?since=INDEX`: committed changes after a Raft index;
//! - `POST /v1/services/{name}/switchover` (`{"to": "INSTANCE"}` optional),
//!   `POST /v1/services/{name}/instances/{instance}/drain` and `…/undrain`:
//!   changes, with `Authorization: Bearer <api.token_file>`, proposed
//!   through the leader from any node;
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: 200 while the node is in the majority, 503 otherwise.
//!
//! Errors are JSON `{"error": "…"}` with a message a person can act on.
//! Changes go through the cluster handle (Raft); this module never imports
//! `dns`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError, NodeId};
use crate::config::{Config, ServiceConfig};
use crate::model::{
    ApplyOutcome, Command, Epoch, Event, PublishBoard, PublishStatus, Reason, ServiceState,
    UnixMillis, Verdict,
};

/// The largest request body the API accepts.
pub const MAX_BODY: usize = 4096;

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    /// How the external DNS targets stand, as this node's publishers see them.
    pub publish: PublishBoard,
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
    /// The `[[publish]]` targets. Only the leader publishes, so only its
    /// entries are `active` and current.
    #[serde(default)]
    pub publish: Vec<PublishStatus>,
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
        .route("/v1/services/{name}", get(service))
        .route("/v1/events", get(events))
        .route("/v1/services/{name}/switchover", post(switchover))
        .route(
            "/v1/services/{name}/instances/{instance}/drain",
            post(drain),
        )
        .route(
            "/v1/services/{name}/instances/{instance}/undrain",
            post(undrain),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(crate::dashboard::router())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An API error: a status and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
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

fn service_status(
    state: &ApiState,
    service: &ServiceConfig,
    current: &ServiceState,
) -> ServiceStatus {
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
            service_status(state, service, &current)
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
        publish: state.publish.snapshot(),
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

fn find_service<'a>(state: &'a ApiState, name: &str) -> Result<&'a ServiceConfig, ApiError> {
    state.config.service(name).ok_or_else(|| {
        let known: Vec<&str> = state
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no service {name:?}; this cluster has: {}",
                known.join(", ")
            ),
        )
    })
}

fn check_instance(service: &ServiceConfig, instance: &str) -> Result<(), ApiError> {
    if service.instance(instance).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = service.instances.iter().map(|i| i.name.as_str()).collect();
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "service {} has no instance {instance:?}; it has: {}",
            service.name,
            known.join(", ")
        ),
    ))
}

fn current(state: &ApiState, service: &str) -> ServiceState {
    state
        .cluster
        .applied()
        .borrow()
        .state
        .service(service)
        .cloned()
        .unwrap_or_default()
}

async fn service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let service = find_service(&state, &name)?;
    Ok(Json(service_status(
        &state,
        service,
        &current(&state, &name),
    )))
}

/// `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

async fn events(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Events>, ApiError> {
    let mut since = 0u64;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("since", value)) => {
                since = value.parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("since={value:?} is not a Raft log index; expected a whole number, like since=42"),
                    )
                })?;
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?}; expected since=INDEX"),
                ));
            }
        }
    }
    let applied = state.cluster.applied().borrow().clone();
    Ok(Json(Events {
        events: applied
            .state
            .events
            .iter()
            .filter(|e| e.index > since)
            .map(|e| Event::clone(e))
            .collect(),
    }))
}

/// Checks the bearer token of a request that changes something.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(api) = &state.config.api else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this cluster's API is read-only: set [api] token_file in the config to allow changes",
        ));
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request changes the cluster: send Authorization: Bearer <the token in api.token_file>",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(presented.trim().as_bytes(), api.token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the bearer token is not this cluster's API token (api.token_file)",
        ));
    }
    Ok(())
}

/// Compares digests without an early exit, so the time taken says nothing
/// about how much of the token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| ring::digest::digest(&ring::digest::SHA256, x);
    let (a, b) = (digest(a), digest(b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `POST /v1/services/{name}/switchover` body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The instance to switch to; the best healthy other one if absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// The answer to a change.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeResult {
    pub service: String,
    pub active: Option<String>,
    pub epoch: Epoch,
    pub drained: Vec<String>,
}

fn change_result(state: &ApiState, service: &str) -> Json<ChangeResult> {
    let current = current(state, service);
    Json(ChangeResult {
        service: service.to_owned(),
        active: current.active,
        epoch: current.epoch,
        drained: current.drained.into_iter().collect(),
    })
}

/// The healthy (per the quorum view), undrained instance with the best
/// priority, other than `except`.
fn best_other(
    state: &ApiState,
    service: &ServiceConfig,
    current: &ServiceState,
    except: Option<&str>,
) -> Option<String> {
    let view = state.cluster.health_view();
    service
        .instances
        .iter()
        .filter(|i| Some(i.name.as_str()) != except && !current.drained.contains(&i.name))
        .filter(|i| view.get(&service.name, &i.name).verdict == Verdict::Up)
        .min_by_key(|i| i.priority)
        .map(|i| i.name.clone())
}

async fn propose(state: &ApiState, command: Command) -> Result<(), ApiError> {
    match state.cluster.propose(command).await {
        Ok(ApplyOutcome::Applied | ApplyOutcome::Unchanged) => Ok(()),
        Ok(ApplyOutcome::Rejected { why }) => Err(ApiError::new(StatusCode::CONFLICT, why)),
        Err(e @ ClusterError::Forward(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

fn activate(
    state: &ApiState,
    service: &str,
    instance: &str,
    epoch: Epoch,
    reason: Reason,
) -> Command {
    Command::Activate {
        service: service.to_owned(),
        instance: instance.to_owned(),
        epoch,
        reason,
        at: crate::cluster::transport::unix_millis(),
        evidence: state.cluster.evidence(service),
    }
}

async fn switchover(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ChangeResult>, ApiError> {
    authorize(&state, &headers)?;
    let request: SwitchoverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SwitchoverRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not a switchover request ({e}); expected {{\"to\": \"INSTANCE\"}} or nothing"),
            )
        })?
    };
    let service = find_service(&state, &name)?;
    let current = current(&state, &name);
    let target = match request.to {
        Some(to) => {
            check_instance(service, &to)?;
            if current.active.as_deref() == Some(to.as_str()) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{to} is already the active instance of {name} (epoch {})",
                        current.epoch
                    ),
                ));
            }
            if current.drained.contains(&to) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{to} is drained; undrain it first"),
                ));
            }
            let verdict = state.cluster.health_view().get(&name, &to).verdict;
            if verdict != Verdict::Up {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{to} is not healthy (the majority of nodes says {verdict}); switch to a healthy instance"
                    ),
                ));
            }
            to
        }
        None => {
            best_other(&state, service, &current, current.active.as_deref()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{name} has no other healthy, undrained instance to switch to"),
                )
            })?
        }
    };
    let command = activate(
        &state,
        &name,
        &target,
        current.epoch.next(),
        Reason::Switchover,
    );
    propose(&state, command).await?;
    Ok(change_result(&state, &name))
}

async fn drain(
    State(state): State<ApiState>,
    Path((name, instance)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ChangeResult>, ApiError> {
    authorize(&state, &headers)?;
    let service = find_service(&state, &name)?;
    check_instance(service, &instance)?;
    let current = current(&state, &name);
    if current.active.as_deref() == Some(instance.as_str()) {
        // Move the service first, so DNS never answers a drained instance.
        let Some(other) = best_other(&state, service, &current, Some(&instance)) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{instance} is the active instance of {name} and no other instance is healthy and undrained; it stays active"
                ),
            ));
        };
        let command = activate(&state, &name, &other, current.epoch.next(), Reason::Drain);
        propose(&state, command).await?;
    }
    let command = Command::Drain {
        service: name.clone(),
        instance,
        at: crate::cluster::transport::unix_millis(),
    };
    propose(&state, command).await?;
    Ok(change_result(&state, &name))
}

async fn undrain(
    State(state): State<ApiState>,
    Path((name, instance)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ChangeResult>, ApiError> {
    authorize(&state, &headers)?;
    let service = find_service(&state, &name)?;
    check_instance(service, &instance)?;
    let command = Command::Undrain {
        service: name.clone(),
        instance,
        at: crate::cluster::transport::unix_millis(),
    };
    propose(&state, command).await?;
    Ok(change_result(&state, &name))
}
