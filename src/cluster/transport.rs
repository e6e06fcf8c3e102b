//! Cluster traffic between nodes: Raft RPCs, health observations and
//! forwarded proposals, as authenticated JSON over HTTP/2 on each node's
//! `rpc` address: cleartext with prior knowledge by default, or inside
//! mutual TLS (ALPN `h2`) when `[cluster.tls]` is set ([`super::tls`]).
//!
//! Every request is signed by [`auth::Authenticator`] and verified before its
//! body is even parsed; a refused request is logged with the peer's address
//! and the reason, answered 401, and never reaches Raft. The server side is an
//! axum [`Router`]; the client side implements openraft's
//! [`RaftNetworkFactory`].
//!
//! [`Links`] lets tests cut the network between chosen nodes in both
//! directions without touching the sockets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::Authenticator;
use super::{NodeId, TypeConfig};

/// Paths of the cluster endpoints.
pub mod path {
    pub const APPEND: &str = "/cluster/v1/raft/append";
    pub const VOTE: &str = "/cluster/v1/raft/vote";
    pub const SNAPSHOT: &str = "/cluster/v1/raft/snapshot";
    pub const OBSERVE: &str = "/cluster/v1/observe";
    pub const PROPOSE: &str = "/cluster/v1/propose";
}

/// The largest request body a node accepts (snapshot chunks are far smaller).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Which links are cut, for tests: a request from `a` to `b` fails (as if
/// the peer were unreachable) while `(a, b)` is in the set.
#[derive(Debug, Default)]
pub struct Links {
    cut: RwLock<HashSet<(NodeId, NodeId)>>,
}

impl Links {
    /// Cuts every link between `node` and the others, both ways.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut cut = self.cut.write().unwrap_or_else(|e| e.into_inner());
        for other in others {
            cut.insert((node, other));
            cut.insert((other, node));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether requests from `from` to `to` are dropped.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(from, to))
    }
}

/// Milliseconds since the Unix epoch, for request signing.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a failed cluster request looked like from the sender.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("node {to} at {addr} is unreachable: {reason}")]
    Unreachable {
        to: NodeId,
        addr: String,
        reason: String,
    },
    #[error("node {to} did not answer within {timeout:?}")]
    Timeout { to: NodeId, timeout: Duration },
    #[error("node {to} refused the request ({status}): {message}")]
    Refused {
        to: NodeId,
        status: u16,
        message: String,
    },
    #[error("node {to} sent an answer that is not valid: {reason}")]
    BadAnswer { to: NodeId, reason: String },
}

/// Sends signed requests to peers.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    auth: Arc<Authenticator>,
    me: NodeId,
    links: Option<Arc<Links>>,
    /// `"https"` when the links use TLS, else `"http"`.
    scheme: &'static str,
    /// Per peer, when the newest AppendEntries it accepted was *sent*: the
    /// peer reset its election timer no earlier than that, which is what the
    /// leader's lease may count from (openraft's own quorum-ack metric is
    /// sampled, and stale right after this process was paused).
    acks: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Client {
    /// A client for node `me`; over TLS with `tls` (see [`super::tls::client_config`]).
    pub fn new(
        auth: Arc<Authenticator>,
        me: NodeId,
        links: Option<Arc<Links>>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Client, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_millis(500))
            // A peer behind a partition drops packets without a reset, and
            // the connection would sit in TCP's retransmission backoff for
            // seconds after the partition heals. PINGs that go unanswered
            // close it instead, so the next request opens a fresh one.
            .http2_keep_alive_interval(Duration::from_millis(250))
            .http2_keep_alive_timeout(Duration::from_millis(500))
            .http2_keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .no_proxy();
        let (builder, scheme) = match tls {
            Some(config) => (builder.use_preconfigured_tls(config), "https"),
            None => (builder, "http"),
        };
        Ok(Client {
            http: builder.build()?,
            auth,
            me,
            links,
            scheme,
            acks: Arc::default(),
        })
    }

    /// Records that `peer` accepted an AppendEntries sent at `sent`.
    fn record_ack(&self, peer: NodeId, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = acks.entry(peer).or_insert(sent);
        if *entry < sent {
            *entry = sent;
        }
    }

    /// When `peer` last accepted an AppendEntries from this node (send time).
    pub fn last_ack(&self, peer: NodeId) -> Option<Instant> {
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }

    /// POSTs `body` as JSON to `path` on node `to` at `addr` and parses the answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        to: NodeId,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        let bytes = serde_json::to_vec(body).map_err(|e| SendError::BadAnswer {
            to,
            reason: format!("cannot encode request: {e}"),
        })?;
        self.post_encoded(to, addr, path, bytes.into(), timeout)
            .await
    }

    /// [`Client::post`] with the body already encoded as JSON: what one
    /// body sent to several peers is encoded once for.
    pub async fn post_encoded<Resp: DeserializeOwned>(
        &self,
        to: NodeId,
        addr: &str,
        path: &str,
        bytes: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        if self.links.as_ref().is_some_and(|l| l.is_cut(self.me, to)) {
            return Err(SendError::Unreachable {
                to,
                addr: addr.to_owned(),
                reason: "link cut by test".into(),
            });
        }
        let nonce: u64 = rand::random();
        let mut request = self
            .http
            .post(format!("{}://{addr}{path}", self.scheme))
            .timeout(timeout)
            .header("content-type", "application/json");
        for (name, value) in self.auth.sign("POST", path, &bytes, unix_millis(), nonce) {
            request = request.header(name, value);
        }
        let response = request.body(bytes).send().await.map_err(|e| {
            if e.is_timeout() {
                SendError::Timeout { to, timeout }
            } else {
                SendError::Unreachable {
                    to,
                    addr: addr.to_owned(),
                    reason: error_chain(&e),
                }
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| SendError::Unreachable {
            to,
            addr: addr.to_owned(),
            reason: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(SendError::Refused {
                to,
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| SendError::BadAnswer {
            to,
            reason: e.to_string(),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// openraft's view of the network: one [`PeerNetwork`] per target.
pub struct Network {
    pub(super) client: Client,
    /// Each node's `rpc` address from the config. Preferred over the address
    /// stored in the Raft membership, so that an address changed in the
    /// config takes effect with a rolling restart.
    pub(super) addrs: HashMap<NodeId, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            client: self.client.clone(),
            target,
            addr: self
                .addrs
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.addr.clone()),
        }
    }
}

/// The connection to one peer (the HTTP client pools it).
pub struct PeerNetwork {
    client: Client,
    target: NodeId,
    addr: String,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, SendError> = self
            .client
            .post(self.target, &self.addr, path, request, option.hard_ttl())
            .await;
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(self.addr.clone()),
                remote,
            ))),
            // Unreachable makes openraft back off (500 ms) before retrying this peer.
            Err(e @ SendError::Unreachable { .. }) => {
                debug!(error = %e, "raft rpc failed");
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => {
                debug!(error = %e, "raft rpc failed");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let sent = Instant::now();
        let response = self.call(path::APPEND, &rpc, &option).await;
        // A higher vote means the peer no longer follows us.
        if let Ok(answer) = &response
            && !matches!(answer, AppendEntriesResponse::HigherVote(_))
        {
            self.client.record_ack(self.target, sent);
        }
        response
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(path::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(path::VOTE, &rpc, &option).await
    }
}

/// Commits a proposal forwarded by a follower; answers with the outcome and
/// the log index.
pub type ProposeHandler = Box<
    dyn Fn(
            crate::model::Command,
        ) -> futures::future::BoxFuture<
            'static,
            Result<(crate::model::ApplyOutcome, u64), super::ForwardError>,
        > + Send
        + Sync,
>;

/// What the server side needs: Raft, the verifier, and the handlers for
/// observations and forwarded proposals.
pub struct ServerState {
    pub raft: Raft<TypeConfig>,
    pub auth: Arc<Authenticator>,
    pub me: NodeId,
    /// The configured node ids: a request signed by anyone else is refused.
    pub members: HashSet<NodeId>,
    pub links: Option<Arc<Links>>,
    /// Called with every AppendEntries accepted from a legitimate leader (the
    /// follower's lease), with the leader's commit index.
    pub on_leader_contact: Box<dyn Fn(u64) + Send + Sync>,
    /// Handles a peer's health observations.
    pub on_observations: Box<dyn Fn(super::quorum::Observations) + Send + Sync>,
    /// Handles a proposal forwarded by a follower.
    pub propose: ProposeHandler,
}

/// The cluster endpoints, served on the node's `rpc` address.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(path::APPEND, post(append))
        .route(path::VOTE, post(vote))
        .route(path::SNAPSHOT, post(snapshot))
        .route(path::OBSERVE, post(observe))
        .route(path::PROPOSE, post(propose))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A request that failed authentication or could not be parsed.
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// Verifies the signature, then parses the body. Returns the sender's id.
fn accept<T: DeserializeOwned>(
    state: &ServerState,
    peer: SocketAddr,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(NodeId, T), Rejection> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let from = state
        .auth
        .verify("POST", path, header, body, unix_millis())
        .map_err(|e| {
            warn!(%peer, path, error = %e, "refused a cluster request");
            Rejection(StatusCode::UNAUTHORIZED, e.to_string())
        })?;
    if !state.members.contains(&from) {
        warn!(%peer, path, node = from, "refused a cluster request from a node that is not in the config");
        return Err(Rejection(
            StatusCode::FORBIDDEN,
            format!(
                "node {from} is not a member of this cluster; list it in [[cluster.nodes]] on every node"
            ),
        ));
    }
    if state
        .links
        .as_ref()
        .is_some_and(|l| l.is_cut(from, state.me))
    {
        return Err(Rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            "link cut by test".into(),
        ));
    }
    let parsed = serde_json::from_slice(body).map_err(|e| {
        warn!(%peer, path, node = from, error = %e, "malformed cluster request");
        Rejection(StatusCode::BAD_REQUEST, format!("malformed request: {e}"))
    })?;
    Ok((from, parsed))
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([("content-type", "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (_, request): (_, AppendEntriesRequest<TypeConfig>) =
        accept(&state, peer, path::APPEND, &headers, &body)?;
    let leader_commit = request.leader_commit.map_or(0, |id| id.index);
    let result = state.raft.append_entries(request).await;
    if let Ok(response) = &result {
        // A higher vote means the sender is not (or no longer) our leader.
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            (state.on_leader_contact)(leader_commit);
        }
    }
    Ok(json(&result))
}

async fn vote(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (_, request): (_, VoteRequest<NodeId>) = accept(&state, peer, path::VOTE, &headers, &body)?;
    Ok(json(&state.raft.vote(request).await))
}

async fn snapshot(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (_, request): (_, InstallSnapshotRequest<TypeConfig>) =
        accept(&state, peer, path::SNAPSHOT, &headers, &body)?;
    Ok(json(&state.raft.install_snapshot(request).await))
}

async fn observe(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (from, observations): (_, super::quorum::Observations) =
        accept(&state, peer, path::OBSERVE, &headers, &body)?;
    if observations.node != from {
        warn!(%peer, node = from, claimed = observations.node, "observations signed by one node on behalf of another");
        return Err(Rejection(
            StatusCode::BAD_REQUEST,
            format!(
                "observations claim node {} but are signed by node {from}",
                observations.node
            ),
        ));
    }
    (state.on_observations)(observations);
    Ok(json(&()))
}

async fn propose(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (_, command): (_, crate::model::Command) =
        accept(&state, peer, path::PROPOSE, &headers, &body)?;
    Ok(json(&(state.propose)(command).await))
}

/// The members of the cluster as openraft wants them.
pub fn members(config: &crate::config::Config) -> BTreeMap<NodeId, BasicNode> {
    config
        .cluster
        .nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.rpc.to_string())))
        .collect()
}
