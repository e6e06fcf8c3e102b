//! A test and demo kit, not part of a coordinator node: a cluster of real
//! `highlander run` processes on loopback, for the process-level integration
//! tests, the cross-process benchmark and `highlander demo`.
//!
//! [`LocalCluster::start`] writes one config file and a secret into a
//! temporary directory, picks free loopback ports for every node, starts one
//! process per node with its stderr captured into `node-N.log` beside the
//! config, and waits until each has logged `highlander node started`. The
//! caller then kills, terminates, pauses, resumes and restarts nodes by id,
//! and reads each node's `GET /v1/status` and its DNS answer for a service
//! ([`LocalCluster::answer`]). [`HttpInstance`] is a service instance in the
//! caller's own process that can be killed and brought back on its address.
//!
//! [`bind::LocalBind`] is a real BIND 9 primary for the publishing tests,
//! the fault suite and the benchmarks.
//!
//! It must never leave a process behind: dropping a [`LocalCluster`] (also
//! while a test unwinds from a panic) resumes paused nodes, kills every child
//! still running and reaps it. Only a test process that is itself killed
//! with SIGKILL can leak its children.
//!
//! The methods that start or stop processes block the calling thread (for at
//! most their stated deadline); call them from a multi-threaded runtime's
//! main task or from `spawn_blocking`, not from a current-thread runtime that
//! must keep serving something else meanwhile.

pub mod bind;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::Status;

/// The line a node logs once every socket is bound and it serves.
pub const STARTED: &str = "highlander node started";

/// How long a node may take from spawn to [`STARTED`]: it opens its store
/// and binds, which is quick, but CI machines are small and loaded.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`LocalCluster::terminate`] waits for a node to exit after
/// SIGTERM (a node promises 2 s; the rest is slack for a loaded machine).
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one `GET /v1/status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one DNS query may go unanswered before it counts as a failure:
/// on loopback an answer takes well under a millisecond, so a second means
/// the node is not answering, as a resolver would judge it.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`HttpInstance::start`] retries binding an address that is still
/// in use (a port released a moment ago).
const BIND_RETRY: Duration = Duration::from_secs(1);

/// How often a process's log and exit status are polled while waiting.
const POLL: Duration = Duration::from_millis(10);

/// How the name of every cluster's temporary directory begins.
pub const DIR_PREFIX: &str = "highlander-cluster-";

/// The secret file every node of the cluster reads.
const SECRET_FILE: &str = "cluster.secret";

/// What to run: how many nodes and what they serve.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// How many nodes (ids `1..=nodes`); 3, 5 or 7 make sense.
    pub nodes: usize,
    /// The zone every node answers, absolute (`"svc.example."`).
    pub zone: String,
    /// The `[[services]]` tables, written by the caller.
    pub services_toml: String,
    /// Extra keys under `[cluster]`, such as timings (`heartbeat = "50ms"`).
    pub extra_cluster_toml: String,
    /// The shared secret; `None` writes a random one.
    pub secret: Option<String>,
    /// `RUST_LOG` for every node; `None` uses the binary's own default,
    /// whatever the caller's environment says, so logs read the same in
    /// every run.
    pub log_filter: Option<String>,
    /// Ask the kernel to SIGKILL each node when the thread that spawned it
    /// exits (`PR_SET_PDEATHSIG`), so a caller killed with SIGKILL leaves no
    /// node behind. Only for a caller that starts and restarts nodes from
    /// one thread living as long as the cluster (`highlander demo` does):
    /// a node spawned from a short-lived thread would die with it.
    pub die_with_parent: bool,
    /// Run every node on these CPUs only (as `taskset -c` would), so a
    /// benchmark can keep a node and its load generator on separate cores;
    /// `None` leaves the scheduler free.
    pub cpus: Option<Vec<usize>>,
}

impl ClusterSpec {
    /// `nodes` nodes answering `zone` for `services_toml`, default timings,
    /// a random secret.
    pub fn new(nodes: usize, zone: &str, services_toml: &str) -> ClusterSpec {
        ClusterSpec {
            nodes,
            zone: zone.to_owned(),
            services_toml: services_toml.to_owned(),
            extra_cluster_toml: String::new(),
            secret: None,
            log_filter: None,
            die_with_parent: false,
            cpus: None,
        }
    }
}

/// Why the cluster, or one of its nodes, could not be started, stopped or read.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("node {id} exited ({status}) before it logged `{STARTED}`; its log ends:\n{log_tail}")]
    Exited {
        id: u64,
        status: ExitStatus,
        log_tail: String,
    },
    #[error("node {id} did not log `{STARTED}` within {timeout:?}; its log ends:\n{log_tail}")]
    NotStarted {
        id: u64,
        timeout: Duration,
        log_tail: String,
    },
    #[error("node {id} did not exit within {timeout:?} of SIGTERM, so it was killed")]
    StopTimeout { id: u64, timeout: Duration },
    #[error("node {0} is already running; kill or terminate it first")]
    AlreadyRunning(u64),
    #[error("node {0} is not running")]
    NotRunning(u64),
    #[error("GET {url}: {source}")]
    Status { url: String, source: reqwest::Error },
    #[error("GET {url} answered something that is not a status: {source}")]
    StatusBody {
        url: String,
        source: serde_json::Error,
    },
    #[error("DNS query to {server} for {name}: {reason}")]
    Dns {
        server: SocketAddr,
        name: String,
        reason: String,
    },
}

impl LocalClusterError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalClusterError {
        let what = what.into();
        move |source| LocalClusterError::Io { what, source }
    }

    /// A node lost the race for one of its ports to another process.
    fn is_port_taken(&self) -> bool {
        matches!(self, LocalClusterError::Exited { log_tail, .. } if log_tail.contains("cannot bind"))
    }
}

/// What a node's DNS names as a service's active instance: its
/// `_highlander.<service>.<zone>` TXT record, `"instance=<name>" "epoch=<n>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAnswer {
    pub instance: String,
    pub epoch: u64,
}

/// One node's fixed addresses (kept across restarts) and its process.
#[derive(Debug)]
struct LocalNode {
    id: u64,
    rpc: SocketAddr,
    dns: SocketAddr,
    api: SocketAddr,
    /// Every run of this node appends its stderr here.
    log: PathBuf,
    /// The running process; `None` after kill/terminate. Reaped by whoever
    /// takes it, or by [`LocalCluster`]'s `Drop`.
    child: Option<Child>,
    /// Stopped with SIGSTOP: must get SIGCONT before anything waits on it.
    paused: bool,
}

/// A running cluster of `highlander` processes in a temporary directory.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    log_filter: Option<String>,
    /// [`ClusterSpec::die_with_parent`], applied to every spawn.
    die_with_parent: bool,
    /// [`ClusterSpec::cpus`], applied to every spawn.
    cpus: Option<Vec<usize>>,
    /// The config rendered for a given secret file, for variants.
    config_template: ConfigTemplate,
    config: PathBuf,
    nodes: Vec<LocalNode>,
    http: reqwest::Client,
    /// Config, secret, logs and every node's data dir; removed on drop,
    /// after the children (declared last so it is dropped last).
    dir: tempfile::TempDir,
}

/// What a config file is made of, so that a variant differing only in its
/// secret file can be written.
#[derive(Debug, Clone)]
struct ConfigTemplate {
    zone: String,
    services_toml: String,
    extra_cluster_toml: String,
    nodes: Vec<(u64, SocketAddr, SocketAddr, SocketAddr)>,
}

impl ConfigTemplate {
    fn render(&self, secret_file: &str) -> String {
        let mut toml = format!(
            "# Written by highlander's local_cluster kit.\n[cluster]\ndata_dir = \"data\"\nsecret_file = \"{secret_file}\"\n{}\n",
            self.extra_cluster_toml
        );
        for (id, rpc, dns, api) in &self.nodes {
            toml.push_str(&format!(
                "\n[[cluster.nodes]]\nid = {id}\nrpc = \"{rpc}\"\ndns = \"{dns}\"\napi = \"{api}\"\n"
            ));
        }
        toml.push_str(&format!("\n[dns]\nzone = \"{}\"\n\n", self.zone));
        toml.push_str(&self.services_toml);
        toml.push('\n');
        toml
    }
}

impl LocalCluster {
    /// Writes the config and secret, starts every node and waits until each
    /// has logged [`STARTED`]. Ports are picked free and then released, so
    /// another process may take one before the node binds it; a start that
    /// fails that way is retried once on fresh ports.
    pub fn start(binary: &Path, spec: ClusterSpec) -> Result<LocalCluster, LocalClusterError> {
        match LocalCluster::start_once(binary, &spec) {
            Err(e) if e.is_port_taken() => LocalCluster::start_once(binary, &spec),
            other => other,
        }
    }

    fn start_once(binary: &Path, spec: &ClusterSpec) -> Result<LocalCluster, LocalClusterError> {
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(LocalClusterError::io("create a temporary directory"))?;
        let ids: Vec<u64> = (1..=spec.nodes as u64).collect();
        let addrs = free_addresses(ids.len())?;
        let template = ConfigTemplate {
            zone: spec.zone.clone(),
            services_toml: spec.services_toml.clone(),
            extra_cluster_toml: spec.extra_cluster_toml.clone(),
            nodes: ids
                .iter()
                .zip(&addrs)
                .map(|(&id, &(rpc, dns, api))| (id, rpc, dns, api))
                .collect(),
        };
        let secret = spec.secret.clone().unwrap_or_else(random_secret);
        write(&dir.path().join(SECRET_FILE), &secret)?;
        let config = dir.path().join("highlander.toml");
        write(&config, &template.render(SECRET_FILE))?;

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STATUS_TIMEOUT)
            .build()
            .map_err(|e| LocalClusterError::Io {
                what: "build the HTTP client".into(),
                source: std::io::Error::other(e),
            })?;
        let mut cluster = LocalCluster {
            binary: binary.to_owned(),
            log_filter: spec.log_filter.clone(),
            die_with_parent: spec.die_with_parent,
            cpus: spec.cpus.clone(),
            config_template: template,
            nodes: ids
                .iter()
                .zip(&addrs)
                .map(|(&id, &(rpc, dns, api))| LocalNode {
                    id,
                    rpc,
                    dns,
                    api,
                    log: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                })
                .collect(),
            config,
            http,
            dir,
        };
        // Spawn every node before waiting for any, so they start together
        // and the lowest id's bootstrap finds its peers listening.
        let mut offsets = Vec::new();
        for id in &ids {
            let config = cluster.config.clone();
            offsets.push(cluster.spawn(*id, &config)?);
        }
        for (id, offset) in ids.iter().zip(offsets) {
            cluster.wait_started(*id, offset)?;
        }
        Ok(cluster)
    }

    /// The config file every node reads.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The directory holding the config, the secret, the logs and `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node's id, ascending.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The ids of the nodes whose process runs and is not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Node `id`'s DNS address (UDP and TCP).
    ///
    /// # Panics
    /// If `id` is not a node of this cluster, as every per-node accessor does.
    pub fn dns_addr(&self, id: u64) -> SocketAddr {
        self.node(id).dns
    }

    /// The zone every node answers, absolute (`"svc.example."`).
    pub fn zone(&self) -> &str {
        &self.config_template.zone
    }

    /// Node `id`'s HTTP API address.
    pub fn api_addr(&self, id: u64) -> SocketAddr {
        self.node(id).api
    }

    /// Node `id`'s cluster RPC address.
    pub fn rpc_addr(&self, id: u64) -> SocketAddr {
        self.node(id).rpc
    }

    /// Node `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// The file node `id`'s stderr goes to (every run appends to it).
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log
    }

    /// Everything node `id` has logged so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read(&self.node(id).log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of every node's log, each under a header: for
    /// a failing test's message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "--- node {} ({}) ---\n{}\n",
                node.id,
                node.log.display(),
                tail(&self.log(node.id), lines)
            ));
        }
        out
    }

    /// Kills node `id` with SIGKILL and reaps it (resuming it first if paused).
    /// Does nothing if it is not running.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            if std::mem::take(&mut node.paused) {
                signal(&child, libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends node `id` SIGTERM and waits up to [`TERMINATE_TIMEOUT`] for it
    /// to exit; kills it if it does not.
    pub fn terminate(&mut self, id: u64) -> Result<ExitStatus, LocalClusterError> {
        let node = self.node_mut(id);
        let mut child = node.child.take().ok_or(LocalClusterError::NotRunning(id))?;
        if std::mem::take(&mut node.paused) {
            signal(&child, libc::SIGCONT);
        }
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LocalClusterError::StopTimeout {
                        id,
                        timeout: TERMINATE_TIMEOUT,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LocalClusterError::io(format!("wait for node {id}"))(e));
                }
            }
        }
    }

    /// Freezes node `id` with SIGSTOP: its sockets stay open but nothing
    /// answers, as if its machine hung.
    pub fn pause(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let (Some(child), false) = (&node.child, node.paused) {
            signal(child, libc::SIGSTOP);
            node.paused = true;
        }
    }

    /// Lets a paused node run again with SIGCONT.
    pub fn resume(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let (Some(child), true) = (&node.child, node.paused) {
            signal(child, libc::SIGCONT);
            node.paused = false;
        }
    }

    /// Starts node `id` again with the cluster's config, on the same data
    /// dir and ports, and waits until it has logged [`STARTED`].
    pub fn restart(&mut self, id: u64) -> Result<(), LocalClusterError> {
        let config = self.config.clone();
        self.start_with_config(id, &config)
    }

    /// Starts node `id` with another config file (for example one written
    /// by [`LocalCluster::write_config_with_secret`]), on the same data dir
    /// and ports, and waits until it has logged [`STARTED`].
    pub fn start_with_config(&mut self, id: u64, config: &Path) -> Result<(), LocalClusterError> {
        let offset = self.spawn(id, config)?;
        self.wait_started(id, offset)
    }

    /// Writes a config beside the cluster's, named `file_name`, that differs
    /// only in its secret file (`<file_name>.secret`, holding `secret`).
    pub fn write_config_with_secret(
        &self,
        file_name: &str,
        secret: &str,
    ) -> Result<PathBuf, LocalClusterError> {
        let secret_file = format!("{file_name}.secret");
        write(&self.dir.path().join(&secret_file), secret)?;
        let path = self.dir.path().join(file_name);
        write(&path, &self.config_template.render(&secret_file))?;
        Ok(path)
    }

    /// Node `id`'s `GET /v1/status`.
    pub async fn status(&self, id: u64) -> Result<Status, LocalClusterError> {
        let url = format!("http://{}/v1/status", self.api_addr(id));
        let failed = |source| LocalClusterError::Status {
            url: url.clone(),
            source,
        };
        let body = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .bytes()
            .await
            .map_err(failed)?;
        serde_json::from_slice(&body)
            .map_err(|source| LocalClusterError::StatusBody { url, source })
    }

    /// What node `id`'s DNS names as `service`'s active instance; `Ok(None)`
    /// while it answers SERVFAIL (no decision yet, or outside the majority).
    /// No answer within [`DNS_TIMEOUT`], another response code or a TXT
    /// record without instance and epoch is an error.
    pub async fn answer(
        &self,
        id: u64,
        service: &str,
    ) -> Result<Option<ActiveAnswer>, LocalClusterError> {
        active_answer(self.dns_addr(id), service, self.zone()).await
    }

    /// The leader every live node names, if they all answer and agree and
    /// the leader is itself live.
    pub async fn leader(&self) -> Option<u64> {
        let live = self.live_ids();
        let mut agreed = None;
        for id in &live {
            let leader = self.status(*id).await.ok()?.leader?;
            if agreed.is_some_and(|l| l != leader) {
                return None;
            }
            agreed = Some(leader);
        }
        agreed.filter(|l| live.contains(l))
    }

    /// Spawns node `id` with `config`, its stderr appended to its log.
    /// Returns the log's length before the spawn, where this run's lines begin.
    fn spawn(&mut self, id: u64, config: &Path) -> Result<u64, LocalClusterError> {
        let binary = self.binary.clone();
        let filter = self.log_filter.clone();
        let die_with_parent = self.die_with_parent;
        let cpus = self.cpus.clone();
        let cwd = self.dir.path().to_owned();
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Err(LocalClusterError::AlreadyRunning(id));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(LocalClusterError::io(format!(
                "open the log file {}",
                node.log.display()
            )))?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--node-id")
            .arg(id.to_string())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        match filter {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        if die_with_parent {
            die_with_parent_thread(&mut command);
        }
        if let Some(cpus) = &cpus {
            pin_to_cpus(&mut command, cpus);
        }
        let child = command.spawn().map_err(LocalClusterError::io(format!(
            "start node {id} ({})",
            binary.display()
        )))?;
        node.child = Some(child);
        Ok(offset)
    }

    /// Waits until node `id`'s log, from `offset` on, holds [`STARTED`].
    fn wait_started(&mut self, id: u64, offset: u64) -> Result<(), LocalClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let log_path = self.node(id).log.clone();
        loop {
            if read_from(&log_path, offset).contains(STARTED) {
                return Ok(());
            }
            let node = self.node_mut(id);
            let Some(child) = node.child.as_mut() else {
                return Err(LocalClusterError::NotRunning(id));
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return Err(LocalClusterError::Exited {
                    id,
                    status,
                    log_tail: tail(&read_from(&log_path, offset), 20),
                });
            }
            if Instant::now() > deadline {
                self.kill(id);
                return Err(LocalClusterError::NotStarted {
                    id,
                    timeout: START_TIMEOUT,
                    log_tail: tail(&read_from(&log_path, offset), 20),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn node(&self, id: u64) -> &LocalNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("node {id} is not part of this local cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut LocalNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("node {id} is not part of this local cluster"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in self.node_ids() {
            self.kill(id);
        }
    }
}

/// Asks `server` for `name`: the NOERROR response, or `None` for SERVFAIL
/// (no decision yet, or outside the majority). No answer within
/// [`DNS_TIMEOUT`] or another response code is an error.
async fn answered(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Result<Option<Message>, LocalClusterError> {
    let failed = |reason: String| LocalClusterError::Dns {
        server,
        name: name.to_owned(),
        reason,
    };
    let response = tokio::time::timeout(DNS_TIMEOUT, query(server, name, rtype))
        .await
        .map_err(|_| failed(format!("no answer within {DNS_TIMEOUT:?}")))?
        .map_err(failed)?;
    match response.metadata.response_code {
        ResponseCode::ServFail => Ok(None),
        ResponseCode::NoError => Ok(Some(response)),
        other => Err(failed(format!("answered {other}"))),
    }
}

/// What the DNS server at `server` names as `service`'s active instance in
/// `zone`, as [`LocalCluster::answer`] does; for callers that query from a
/// task of their own and cannot borrow the cluster.
pub async fn active_answer(
    server: SocketAddr,
    service: &str,
    zone: &str,
) -> Result<Option<ActiveAnswer>, LocalClusterError> {
    let name = format!("_highlander.{service}.{zone}");
    let Some(response) = answered(server, &name, RecordType::TXT).await? else {
        return Ok(None);
    };
    let failed = |reason: String| LocalClusterError::Dns {
        server,
        name: name.clone(),
        reason,
    };
    let (mut instance, mut epoch) = (None, None);
    for record in &response.answers {
        if let RData::TXT(data) = &record.data {
            for part in data.txt_data.iter() {
                let text = String::from_utf8_lossy(part);
                if let Some(v) = text.strip_prefix("instance=") {
                    instance = Some(v.to_owned());
                }
                if let Some(v) = text.strip_prefix("epoch=") {
                    epoch = v.parse::<u64>().ok();
                }
            }
        }
    }
    match (instance, epoch) {
        (Some(instance), Some(epoch)) => Ok(Some(ActiveAnswer { instance, epoch })),
        other => Err(failed(format!(
            "NOERROR without an instance and a numeric epoch: {other:?}"
        ))),
    }
}

/// The IPv4 address the DNS server at `server` answers for `service` in
/// `zone` (the `A` record at `<service>.<zone>`), as a client resolving the
/// service would get it; `Ok(None)` while it answers SERVFAIL. No answer
/// within [`DNS_TIMEOUT`], another response code or an answer without an
/// `A` record (a service answered by CNAME) is an error.
pub async fn active_address(
    server: SocketAddr,
    service: &str,
    zone: &str,
) -> Result<Option<Ipv4Addr>, LocalClusterError> {
    let name = format!("{service}.{zone}");
    let Some(response) = answered(server, &name, RecordType::A).await? else {
        return Ok(None);
    };
    let failed = |reason: String| LocalClusterError::Dns {
        server,
        name: name.clone(),
        reason,
    };
    response
        .answers
        .iter()
        .find_map(|record| match &record.data {
            RData::A(a) => Some(Some(a.0)),
            _ => None,
        })
        .ok_or_else(|| failed("NOERROR without an A record".into()))
}

/// Sends one query for `name` and `kind` over UDP and waits for the
/// response with the same id (a stray datagram with another id is skipped).
async fn query(server: SocketAddr, name: &str, kind: RecordType) -> Result<Message, String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind a UDP socket: {e}"))?;
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| format!("not a DNS name: {e}"))?,
        kind,
    ));
    query.metadata.recursion_desired = false;
    let wire = query.to_vec().map_err(|e| format!("encode: {e}"))?;
    socket
        .send_to(&wire, server)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, _) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let response =
            Message::from_vec(&buf[..len]).map_err(|e| format!("malformed response: {e}"))?;
        if response.metadata.id == query.metadata.id {
            return Ok(response);
        }
    }
}

/// A service instance in the caller's process: an HTTP server on loopback
/// that answers every request with 200 and its name, until it is killed.
/// Needs a Tokio runtime; its server task is aborted when it is dropped.
#[derive(Debug)]
pub struct HttpInstance {
    name: String,
    addr: SocketAddr,
    /// The accept loop; aborting it closes the listener, so the port
    /// refuses connections.
    server: tokio::task::JoinHandle<()>,
}

impl HttpInstance {
    /// Starts instance `name` on `addr` (`127.0.0.1:0` picks a free port).
    /// A killed instance comes back on the address the config names, which
    /// may still be held for a moment, so a bind that finds the address in
    /// use is retried for up to [`BIND_RETRY`].
    pub async fn start(name: &str, addr: SocketAddr) -> Result<HttpInstance, LocalClusterError> {
        let deadline = Instant::now() + BIND_RETRY;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    return Err(LocalClusterError::io(format!(
                        "bind instance {name} on {addr}"
                    ))(e));
                }
            }
        };
        HttpInstance::serve(name, listener)
    }

    /// Serves instance `name` on an already-bound listener (one made in
    /// another network namespace, say).
    pub fn from_listener(
        name: &str,
        listener: std::net::TcpListener,
    ) -> Result<HttpInstance, LocalClusterError> {
        listener
            .set_nonblocking(true)
            .map_err(LocalClusterError::io("make a listener non-blocking"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(LocalClusterError::io("register a listener with Tokio"))?;
        HttpInstance::serve(name, listener)
    }

    fn serve(
        name: &str,
        listener: tokio::net::TcpListener,
    ) -> Result<HttpInstance, LocalClusterError> {
        let addr = listener
            .local_addr()
            .map_err(LocalClusterError::io("read a bound TCP address"))?;
        let body = name.to_owned();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    // Only the request's arrival matters, not its content.
                    let _ = stream.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(HttpInstance {
            name: name.to_owned(),
            addr,
            server,
        })
    }

    /// The instance's name, as the config and DNS name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens (and is probed).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the instance: once this returns, its port refuses connections.
    pub async fn kill(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }
}

impl Drop for HttpInstance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Picks `n` sets of (rpc, dns, api) loopback addresses that are free now:
/// TCP for rpc and api, UDP and TCP on one port for dns. Every socket is
/// held until all are picked, so no two addresses collide.
fn free_addresses(
    n: usize,
) -> Result<Vec<(SocketAddr, SocketAddr, SocketAddr)>, LocalClusterError> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let tcp = |held: &mut Vec<TcpListener>| -> Result<SocketAddr, LocalClusterError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(LocalClusterError::io("bind a free TCP port on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(LocalClusterError::io("read a bound TCP address"))?;
        held.push(listener);
        Ok(addr)
    };
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let rpc = tcp(&mut held_tcp)?;
        let api = tcp(&mut held_tcp)?;
        let dns = free_dns_address(&mut held_udp, &mut held_tcp)?;
        addrs.push((rpc, dns, api));
    }
    Ok(addrs)
}

/// A loopback port free for both UDP and TCP; both sockets are held.
fn free_dns_address(
    held_udp: &mut Vec<UdpSocket>,
    held_tcp: &mut Vec<TcpListener>,
) -> Result<SocketAddr, LocalClusterError> {
    let mut last = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .map_err(LocalClusterError::io("bind a free UDP port on 127.0.0.1"))?;
        let addr = udp
            .local_addr()
            .map_err(LocalClusterError::io("read a bound UDP address"))?;
        match TcpListener::bind(addr) {
            Ok(tcp) => {
                held_udp.push(udp);
                held_tcp.push(tcp);
                return Ok(addr);
            }
            // Taken for TCP: try another UDP port.
            Err(e) => last = Some(e),
        }
    }
    Err(LocalClusterError::io(
        "find a port on 127.0.0.1 free for both UDP and TCP (50 tries)",
    )(
        last.unwrap_or_else(|| std::io::Error::other("no port tried")),
    ))
}

fn write(path: &Path, contents: &str) -> Result<(), LocalClusterError> {
    std::fs::write(path, contents)
        .map_err(LocalClusterError::io(format!("write {}", path.display())))
}

/// 32 random bytes, hex-encoded.
fn random_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes the child `command` starts receive SIGKILL when the spawning
/// thread exits, including when its process is killed with SIGKILL: for
/// the helpers a benchmark starts (instances, anchors), which must not
/// outlive it however it ends.
pub fn die_with_parent_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid, raise); it touches
    // no lock and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no
            // signal would ever come, so die now.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Makes the child `command` starts run on `cpus` only, as `taskset -c`
/// would: set before exec, so every thread it starts inherits it. A
/// benchmark pins what it measures and what loads it to different cores,
/// so neither steals the other's time. CPUs beyond the set's size are
/// ignored; an empty list leaves the child unpinned.
pub fn pin_to_cpus(command: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET only writes
    // inside it, and the index is checked against its size first.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu < 8 * std::mem::size_of::<libc::cpu_set_t>() {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        set
    };
    if cpus.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only sched_setaffinity, which is async-signal-safe; the set was built
    // before the fork, so nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: `kill` has no memory effects; the pid is our own unreaped
    // child, so it cannot have been reused by another process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The file's contents from byte `offset` on (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_distinct_loopback_ports() {
        let addrs = free_addresses(7).unwrap();
        let mut ports: Vec<u16> = addrs
            .iter()
            .flat_map(|(rpc, dns, api)| [rpc.port(), dns.port(), api.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 21);
        assert!(addrs.iter().all(|(rpc, _, _)| rpc.ip().is_loopback()));
    }

    #[test]
    fn the_secret_variant_differs_only_in_the_secret_file() {
        let template = ConfigTemplate {
            zone: "svc.test.".into(),
            services_toml: "# services".into(),
            extra_cluster_toml: "heartbeat = \"50ms\"".into(),
            nodes: vec![(
                1,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap(),
            )],
        };
        let normal = template.render("cluster.secret");
        let variant = template.render("wrong.toml.secret");
        assert_eq!(
            normal.replace("cluster.secret", "wrong.toml.secret"),
            variant
        );
        assert!(normal.contains("heartbeat = \"50ms\"\n\n[[cluster.nodes]]\nid = 1\n"));
    }

    #[tokio::test]
    async fn a_killed_instance_refuses_connections_and_comes_back_on_its_address() {
        let instance = HttpInstance::start("primary", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = instance.addr();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(response.ends_with("\r\n\r\nprimary"));

        instance.kill().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        let again = HttpInstance::start("primary", addr).await.unwrap();
        assert_eq!(again.addr(), addr);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
