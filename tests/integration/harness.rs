//! What every integration test needs: HTTP instances that can be killed,
//! a config written to a temporary directory, DNS queries over UDP, and
//! polling a condition against a deadline (never a sleep as synchronisation).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use highlander::cluster::Cluster;
use highlander::config::Config;
use highlander::local_cluster::HttpInstance;
use highlander::node::{Node, NodeError};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The zone every test config serves.
pub const ZONE: &str = "svc.test.";

/// A tiny HTTP server standing in for a service instance: it answers every
/// request with 200 and its name, until it is killed (the kit's
/// [`HttpInstance`], with its name and address at hand).
pub struct Instance {
    pub name: String,
    pub addr: SocketAddr,
    server: HttpInstance,
}

impl Instance {
    /// Starts an instance on a free loopback port.
    pub async fn start(name: &str) -> Result<Instance> {
        Instance::start_at(name, "127.0.0.1:0".parse()?).await
    }

    /// Starts an instance on `addr`: a killed instance comes back at the
    /// address the config names.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Result<Instance> {
        let server = HttpInstance::start(name, addr).await?;
        Ok(Instance {
            name: name.to_owned(),
            addr: server.addr(),
            server,
        })
    }

    /// Kills the instance: its port refuses connections from now on.
    pub async fn kill(self) {
        self.server.kill().await;
    }
}

/// A config directory with a secret file.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Result<ConfigDir> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("cluster.secret"),
            "integration-test-secret-0123456789",
        )?;
        Ok(ConfigDir { dir })
    }

    /// Writes `highlander.toml` and returns its path.
    pub fn write(&self, toml: &str) -> Result<PathBuf> {
        let path = self.dir.path().join("highlander.toml");
        std::fs::write(&path, toml)?;
        Ok(path)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A one-node config serving service `app` with the given instances
/// (in priority order), each answering `CNAME <name>.internal.`. The node's
/// DNS listens on `dns` (port 0 picks a free one).
pub fn one_node_config(instances: &[&Instance], failback: &str, dns: &str) -> String {
    let mut toml = format!(
        r#"
[cluster]
data_dir = "data"
secret_file = "cluster.secret"

[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:0"
dns = "{dns}"
api = "127.0.0.1:0"

[dns]
zone = "{ZONE}"
ttl = "5s"

[[services]]
name = "app"
failback = "{failback}"
failback_delay = "1s"
[services.check]
kind = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
rise = 1
fall = 2
"#
    );
    for (i, instance) in instances.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[services.instances]]\nname = \"{}\"\naddress = \"{}\"\ncname = \"{}.internal.\"\npriority = {}\n",
            instance.name,
            instance.addr,
            instance.name,
            i + 1
        ));
    }
    toml
}

/// Node 1 of a config, running in this process.
pub struct RunningNode {
    pub dns: SocketAddr,
    pub api: SocketAddr,
    /// The node's view of the cluster and its applied state.
    pub cluster: Cluster,
    /// Stops the node; `task` then returns.
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

/// Starts node 1 of `config_file` in-process.
pub async fn start_node(config_file: &Path) -> Result<RunningNode> {
    let config = Config::load(config_file)?;
    let node = Node::bind(config, 1).await?;
    let (dns, api, cluster) = (node.dns_addr(), node.api_addr(), node.cluster().clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(node.run(cancel.clone()));
    Ok(RunningNode {
        dns,
        api,
        cluster,
        cancel,
        task,
    })
}

/// Sends one query over UDP and returns the response.
pub async fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name)?, rtype));
    message.metadata.recursion_desired = false;
    socket.send_to(&message.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .context("no DNS response within 2s")??;
    let response = Message::from_vec(&buf[..len])?;
    if response.metadata.id != message.metadata.id {
        bail!(
            "response id {} does not match query id {}",
            response.metadata.id,
            message.metadata.id
        );
    }
    Ok(response)
}

/// What the node answers for service `app`: the instance and epoch from the
/// `_highlander` TXT record, and the CNAME target of the service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub instance: String,
    pub epoch: u64,
    pub cname: String,
}

/// Asks `server` for `app`'s TXT and CNAME; `Ok(None)` while it answers SERVFAIL.
pub async fn answer(server: SocketAddr) -> Result<Option<Answer>> {
    let txt = query(server, &format!("_highlander.app.{ZONE}"), RecordType::TXT).await?;
    if txt.metadata.response_code == ResponseCode::ServFail {
        return Ok(None);
    }
    let mut instance = None;
    let mut epoch = None;
    for record in &txt.answers {
        if let RData::TXT(data) = &record.data {
            for part in data.txt_data.iter() {
                let text = String::from_utf8_lossy(part);
                if let Some(v) = text.strip_prefix("instance=") {
                    instance = Some(v.to_owned());
                }
                if let Some(v) = text.strip_prefix("epoch=") {
                    epoch = Some(v.parse::<u64>()?);
                }
            }
        }
    }
    let cname_response = query(server, &format!("app.{ZONE}"), RecordType::A).await?;
    let cname = cname_response.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(target) => Some(target.0.to_ascii()),
        _ => None,
    });
    match (instance, epoch, cname) {
        (Some(instance), Some(epoch), Some(cname)) => Ok(Some(Answer {
            instance,
            epoch,
            cname,
        })),
        other => bail!("incomplete answer from {server}: {other:?}; TXT response {txt:?}"),
    }
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            bail!("{what}: not true within {deadline:?} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
