//! Three real `highlander` processes, one per node namespace, and two
//! instances (`primary`, `backup`) in namespaces of their own, on the
//! sandbox's addresses. The runner starts, kills, pauses and restarts the
//! processes, and reaches each node's DNS and API from inside the node's
//! namespace.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use highlander::local_cluster::HttpInstance;
use highlander::local_cluster::bind::{KEY_NAME, LocalBind, Placement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{Sandbox, in_netns};

pub const NODES: [u64; 3] = [1, 2, 3];
pub const INSTANCES: [(&str, u8); 2] = [("primary", 11), ("backup", 12)];
pub const DNS_PORT: u16 = 5300;
const API_PORT: u16 = 8000;
pub const RPC_PORT: u16 = 7000;
/// What the nodes' API takes as a bearer token for changes.
const API_TOKEN: &str = "fault-suite-api-token-0123";
const INSTANCE_PORT: u16 = 8080;
pub const ZONE: &str = "svc.test.";

/// The size of the filesystem a node with a small disk gets.
const SMALL_DISK: &str = "size=16m";

/// The lease every node runs with (the config's default); S3 is checked
/// against it.
pub const LEASE: Duration = Duration::from_secs(2);

/// The health check: an instance is down after `FALL` failed probes
/// `INTERVAL` apart.
pub const INTERVAL: Duration = Duration::from_millis(200);
pub const FALL: u32 = 3;

pub fn node_member(id: u64) -> String {
    format!("n{id}")
}

pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, u8::try_from(id).unwrap_or(u8::MAX))
}

pub fn instance_ip(name: &str) -> Ipv4Addr {
    let octet = INSTANCES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, o)| *o);
    Ipv4Addr::new(10, 77, 0, octet)
}

/// How a node process is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// As is.
    #[default]
    Normal,
    /// In a time namespace whose monotonic and boot clocks run this many
    /// seconds ahead of everyone else's.
    AheadBy(u64),
    /// With libfaketime preloaded, its wall clock offset by what the node's
    /// offset file says at each read ([`FaultCluster::set_clock_offset`]);
    /// the monotonic clock is left alone. Time namespaces cannot move
    /// CLOCK_REALTIME, so this is how a wall-clock jump is made.
    FakeWall,
    /// Like [`Clock::FakeWall`], but the monotonic clock moves with the
    /// offset too: a time namespace's offset is fixed once a process is in
    /// it, so this is how a running node's monotonic clock jumps.
    FakeBoth,
}

/// libfaketime's thread-safe build (Debian's `faketime` package).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// What a scenario needs beyond three nodes and two instances.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// This node's data dir is a small tmpfs ([`FaultCluster::fill_disk`]).
    pub small_disk: Option<u64>,
    /// How every node's clocks run.
    pub clock: Clock,
    /// A BIND primary in a namespace of its own that the leader publishes
    /// `app` to ([`PUBLISH_ZONE`]).
    pub publish: bool,
}

/// The sandbox member BIND runs in, and its address.
pub const BIND_MEMBER: &str = "dns";
const BIND_OCTET: u8 = 20;

/// The zone the leader publishes to, at BIND.
pub const PUBLISH_ZONE: &str = "example.test.";

pub struct FaultCluster {
    pub sandbox: Sandbox,
    /// The BIND primary, when the scenario publishes.
    pub bind: Option<LocalBind>,
    dir: tempfile::TempDir,
    config: PathBuf,
    binary: PathBuf,
    nodes: BTreeMap<u64, Child>,
    instances: BTreeMap<String, HttpInstance>,
    /// Small filesystems mounted as a node's data dir, unmounted on drop.
    mounts: Vec<PathBuf>,
}

impl FaultCluster {
    /// Makes the sandbox, starts both instances and all three nodes, set
    /// up as `setup` says.
    pub async fn start_with(setup: Setup) -> Result<FaultCluster> {
        let Setup {
            small_disk,
            clock,
            publish,
        } = setup;
        let mut members: Vec<(String, u8)> = NODES
            .iter()
            .map(|&id| (node_member(id), u8::try_from(id).unwrap_or(0)))
            .collect();
        members.extend(INSTANCES.iter().map(|(n, o)| ((*n).to_owned(), *o)));
        if publish {
            members.push((BIND_MEMBER.to_owned(), BIND_OCTET));
        }
        let refs: Vec<(&str, u8)> = members.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        let sandbox = Sandbox::new(&refs)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("cluster.secret"),
            "fault-suite-secret-0123456789",
        )?;
        std::fs::write(dir.path().join("api.token"), API_TOKEN)?;
        let bind = if publish {
            let member = sandbox.member(BIND_MEMBER)?;
            Some(LocalBind::start(
                PUBLISH_ZONE,
                "hmac-sha256",
                Placement::Namespace {
                    netns: member.ns.clone(),
                    addr: SocketAddr::from((member.ip, 53)),
                },
            )?)
        } else {
            None
        };
        let config = dir.path().join("highlander.toml");
        std::fs::write(&config, config_text(bind.as_ref()))?;
        let mut cluster = FaultCluster {
            bind,
            sandbox,
            dir,
            config,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_highlander")),
            nodes: BTreeMap::new(),
            instances: BTreeMap::new(),
            mounts: Vec::new(),
        };
        if let Some(id) = small_disk {
            let path = cluster.data_dir(id);
            std::fs::create_dir_all(&path)?;
            let path_text = path.to_string_lossy().into_owned();
            crate::net::run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    SMALL_DISK,
                    &crate::net::mount_source(),
                    &path_text,
                ],
            )?;
            cluster.mounts.push(path);
        }
        for (name, _) in INSTANCES {
            cluster.start_instance(name)?;
        }
        for id in NODES {
            cluster.start_node(id, clock)?;
        }
        Ok(cluster)
    }

    /// Starts instance `name` in its namespace (again, after a kill).
    pub fn start_instance(&mut self, name: &str) -> Result<()> {
        let member = self.sandbox.member(name)?;
        let addr = SocketAddr::from((member.ip, INSTANCE_PORT));
        let listener = in_netns(&member.ns, move || std::net::TcpListener::bind(addr))?;
        let instance = HttpInstance::from_listener(name, listener)?;
        self.instances.insert(name.to_owned(), instance);
        Ok(())
    }

    /// Kills instance `name`: its address refuses connections from now on.
    pub async fn kill_instance(&mut self, name: &str) {
        if let Some(instance) = self.instances.remove(name) {
            instance.kill().await;
        }
    }

    /// Starts node `id` in its namespace.
    pub fn start_node(&mut self, id: u64, clock: Clock) -> Result<()> {
        let ns = self.sandbox.member(&node_member(id))?.ns.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns]);
        if let Clock::AheadBy(seconds) = clock {
            let s = seconds.to_string();
            command.args([
                "unshare",
                "--fork",
                "--kill-child",
                "--time",
                "--monotonic",
                &s,
                "--boottime",
                &s,
                "--",
            ]);
        }
        if matches!(clock, Clock::FakeWall | Clock::FakeBoth) {
            let file = self.clock_file(id);
            if !file.exists() {
                std::fs::write(&file, "+0")?;
            }
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_NO_CACHE", "1");
            if clock == Clock::FakeWall {
                command.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
        }
        command
            .arg(&self.binary)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it makes the node die with the
        // runner, so a killed runner leaves no node behind.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        self.nodes.insert(id, child);
        Ok(())
    }

    fn clock_file(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.faketime"))
    }

    /// Moves node `id`'s faked clocks (started with [`Clock::FakeWall`] or
    /// [`Clock::FakeBoth`]) to `offset_seconds` from the real ones, from
    /// their next read on.
    pub fn set_clock_offset(&self, id: u64, offset_seconds: i64) -> Result<()> {
        std::fs::write(self.clock_file(id), format!("{offset_seconds:+}"))?;
        Ok(())
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(format!("node-{id}"))
    }

    /// Fills node `id`'s data dir until the filesystem is full.
    pub fn fill_disk(&self, id: u64) -> Result<()> {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.data_dir(id).join("filler"))?;
        let block = vec![0u8; 64 * 1024];
        loop {
            match filler.write(&block) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Frees what [`FaultCluster::fill_disk`] took.
    pub fn free_disk(&self, id: u64) -> Result<()> {
        std::fs::remove_file(self.data_dir(id).join("filler"))?;
        Ok(())
    }

    /// Whether node `id`'s process is still running.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.nodes
            .get_mut(&id)
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// The last `lines` lines of every node's log.
    /// Everything node `id` has logged in this run.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for id in NODES {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {id}\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn signal(&self, id: u64, signal: i32) -> Result<()> {
        let child = self
            .nodes
            .get(&id)
            .with_context(|| format!("node {id} is not running"))?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL, and reaps the process.
    pub fn kill_node(&mut self, id: u64) -> Result<()> {
        if let Some(mut child) = self.nodes.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    pub fn pause_node(&self, id: u64) -> Result<()> {
        self.signal(id, libc::SIGSTOP)
    }

    pub fn resume_node(&self, id: u64) -> Result<()> {
        self.signal(id, libc::SIGCONT)
    }

    /// `GET path` on node `id`'s API, from inside its namespace.
    pub async fn get(&self, id: u64, path: &str) -> Result<serde_json::Value> {
        self.request(id, "GET", path, "").await
    }

    /// `POST path` with a JSON `body` and the API token on node `id`'s API:
    /// a change the node acknowledges with its answer.
    pub async fn post(&self, id: u64, path: &str, body: &str) -> Result<serde_json::Value> {
        self.request(id, "POST", path, body).await
    }

    async fn request(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<serde_json::Value> {
        let ns = self.sandbox.member(&node_member(id))?.ns.clone();
        let addr = SocketAddr::from((node_ip(id), API_PORT));
        let stream = in_netns(&ns, move || {
            let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })?;
        let mut stream = tokio::net::TcpStream::from_std(stream)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: node\r\nauthorization: Bearer {API_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, anyhow::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .context("no API response within 5 s")??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no end of headers in the API response")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "{method} {path} on node {id}: {}: {body}",
                head.lines().next().unwrap_or("")
            );
        }
        Ok(serde_json::from_str(body)?)
    }

    /// Node `id`'s Raft term, as its status says.
    pub async fn term(&self, id: u64) -> Result<Option<u64>> {
        Ok(self.get(id, "/v1/status").await?["term"].as_u64())
    }

    /// The term of the node that leads now; `None` if none does.
    pub async fn leader_term(&self) -> Result<Option<u64>> {
        match self.leader().await {
            Some(id) => self.term(id).await,
            None => Ok(None),
        }
    }

    /// The node that says it leads and is in the majority, if any.
    pub async fn leader(&self) -> Option<u64> {
        for id in self.nodes.keys() {
            if let Ok(status) = self.get(*id, "/v1/status").await {
                if status["role"] == "leader" && status["in_majority"] == true {
                    return Some(*id);
                }
            }
        }
        None
    }

    /// Waits until some node leads, up to `within`.
    pub async fn wait_leader(&self, within: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no leader within {within:?}:\n{}", self.log_tails(15));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every committed change, as a node in the majority reports it.
    pub async fn events(&self) -> Result<Vec<serde_json::Value>> {
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        let events = self.get(leader, "/v1/events").await?;
        Ok(events["events"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for mount in &self.mounts {
            let _ = crate::net::run("umount", &["-l", &mount.to_string_lossy()]);
        }
    }
}

fn config_text(bind: Option<&LocalBind>) -> String {
    let mut toml =
        String::from("[cluster]\ndata_dir = \"data\"\nsecret_file = \"cluster.secret\"\n\n");
    for id in NODES {
        let ip = node_ip(id);
        toml.push_str(&format!(
            "[[cluster.nodes]]\nid = {id}\nrpc = \"{ip}:{RPC_PORT}\"\ndns = \"{ip}:{DNS_PORT}\"\napi = \"{ip}:{API_PORT}\"\n\n"
        ));
    }
    toml.push_str(&format!(
        r#"[api]
token_file = "api.token"

[dns]
zone = "{ZONE}"
ttl = "1s"

[[services]]
name = "app"
failback = "manual"
[services.check]
kind = "http"
path = "/"
interval = "{}ms"
timeout = "150ms"
rise = 2
fall = {FALL}
"#,
        INTERVAL.as_millis()
    ));
    for (i, (name, _)) in INSTANCES.iter().enumerate() {
        let ip = instance_ip(name);
        toml.push_str(&format!(
            "\n[[services.instances]]\nname = \"{name}\"\naddress = \"{ip}:{INSTANCE_PORT}\"\na = \"{ip}\"\npriority = {}\n",
            i + 1
        ));
    }
    if let Some(bind) = bind {
        toml.push_str(&format!(
            r#"
[[publish]]
name = "bind"
kind = "rfc2136"
server = "{}"
zone = "{PUBLISH_ZONE}"
ttl = "30s"
interval = "1s"
timeout = "500ms"
tsig_key = "{KEY_NAME}"
tsig_secret_file = "{}"
"#,
            bind.addr(),
            bind.key_file().display()
        ));
    }
    toml
}
