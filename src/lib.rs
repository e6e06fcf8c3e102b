//! highlander: a highly available cluster of coordinator nodes that keeps
//! exactly one healthy instance active per service and answers it in DNS.
//!
//! # Layout
//!
//! - [`config`]: the cluster config file, its defaults and validation.
//! - [`model`]: plain data: epochs, the replicated state, commands, health views.
//! - [`engine`]: the pure decision of which instance is active.
//! - [`health`]: probers (http, tcp, exec), scheduling and rise/fall hysteresis.
//! - [`cluster`]: openraft wiring: log store, state machine, the authenticated
//!   transport, the health-observation exchange and quorum view, leadership
//!   and leases.
//! - [`dns`]: the authoritative DNS server that answers from the applied state.
//! - [`hooks`]: the commands and webhooks the leader runs, at least once, after
//!   each committed change of active instance.
//! - [`api`]: the HTTP API (status, events, switchover, drain, health).
//! - [`ctl`]: the operator commands, a client of the HTTP API.
//! - [`dashboard`]: the on-call web page at `/`, served by the API.
//! - [`metrics`]: Prometheus metrics and the `GET /metrics` route the node
//!   serves beside the API.
//! - [`retry`]: exponential backoff with jitter for whatever retries an outside party.
//! - [`node`]: the only place that wires the parts together and owns shutdown.
//! - [`demo`]: `highlander demo`, the whole system on loopback telling its
//!   story (failover, leader loss, failback) with a measured summary.
//! - [`local_cluster`]: a test and demo kit that runs real `highlander`
//!   processes on loopback; never used by a node.

pub mod api;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod dashboard;
pub mod demo;
pub mod dns;
pub mod engine;
pub mod health;
pub mod hooks;
pub mod local_cluster;
pub mod metrics;
pub mod model;
pub mod node;
pub mod retry;
