//! highlander's integration tests: real nodes, real sockets on 127.0.0.1:0,
//! real DNS on the wire. One binary; each module is one area.

/// The operator API: auth, validation, forwarding, switchover, drain, events.
mod api;
/// A real BIND 9 primary started from the test's own config (named, dig, nsupdate).
mod bind;
/// The `highlander` binary: `check-config`, `run`, signals and exit codes.
mod cli;
/// Real `highlander` processes in a cluster: leader loss, failover, pause, restart, wrong secret.
mod cluster;
/// Three nodes in one process with a network and probes the test controls.
pub mod cluster_inprocess;
/// The operator commands against a running cluster.
mod ctl;
/// The dashboard in a real headless Chromium: active instance, failover, screenshot.
mod dashboard;
/// `highlander demo`: the scripted story and its summary; nothing left behind, even after SIGKILL.
mod demo;
/// The DNS server under abuse: a UDP flood against rate limits, minimal ANY, TCP caps and timeouts, API body limits.
mod dns_abuse;
/// Local fakes of the DigitalOcean and Cloudflare DNS record APIs, from their public docs.
mod fake_dns_api;
/// Test harness: local HTTP instances, configs, DNS queries, polling.
mod harness;
/// Hooks: exec and webhook per change, retries, a hanging hook, re-run by the next leader.
mod hooks;
/// `GET /metrics` on a running node: the exposition parses and shows the decision, DNS, probes and Raft.
mod metrics;
/// RFC 2136 publishing to a real BIND: create, change, stale write refused, wrong key, drift repair.
mod publish_bind;
/// The DigitalOcean and Cloudflare publishers against the fakes, alone and under the reconcile loop.
mod publish_http;
/// One node in-process: probe, decide through Raft, answer DNS, survive a restart.
mod single_node;
/// `[cluster.tls]`: three nodes over mutual TLS; a node with another CA's certificate is refused.
mod tls;
