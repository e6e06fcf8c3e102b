//! The cluster config: one TOML file that every node reads.
//!
//! Loading goes through two layers. [`raw`] mirrors the file exactly (serde,
//! `deny_unknown_fields`, strings where a value needs parsing), and
//! [`Config::from_raw`] turns it into typed, validated values. Validation
//! collects every problem at once, each naming the file, the key path
//! (`services[1].instances[0].a`), the value and what would be accepted, so a
//! person fixes the whole file in one pass.
//!
//! Relative paths (`data_dir`, `secret_file`, `token_file`, the
//! `[cluster.tls]` files) are taken relative to the directory of the config
//! file, so a node behaves the same whatever its working directory. This
//! module reads only the config file and the files it names.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use publish::{
    ApiToken, PublishConfig, PublishKind, Secret, TokenSource, TsigAlgorithm, TsigKey,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A config that cannot be used, with every reason why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("config file {} has {} problem{}:\n{}", file.display(), problems.len(), if problems.len() == 1 { "" } else { "s" }, ProblemList(problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
    #[error("node id {id} is not in config file {}: it lists {}", file.display(), list_ids(known))]
    UnknownNode {
        file: PathBuf,
        id: u64,
        known: Vec<u64>,
    },
}

fn list_ids(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("node ids {}", ids.join(", "))
}

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, like `services[1].instances[0].a`.
    pub key: String,
    /// The offending value as written (empty when the key is missing).
    pub value: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.message)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.message)
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// The exact shape of the TOML file. Values that need parsing stay strings
/// here so that validation can name them with their key path.
pub mod raw {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        pub cluster: Cluster,
        pub dns: Dns,
        #[serde(default)]
        pub api: Option<Api>,
        #[serde(default)]
        pub services: Vec<Service>,
        #[serde(default)]
        pub hooks: Vec<Hook>,
        #[serde(default)]
        pub publish: Vec<super::publish::RawPublish>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Hook {
        pub name: String,
        pub kind: String,
        #[serde(default = "default_hook_timeout")]
        pub timeout: String,
        pub services: Option<Vec<String>>,
        // exec
        pub command: Option<Vec<String>>,
        // webhook
        pub url: Option<String>,
        pub secret_file: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cluster {
        #[serde(default = "default_data_dir")]
        pub data_dir: String,
        pub secret_file: String,
        #[serde(default = "default_heartbeat")]
        pub heartbeat: String,
        #[serde(default = "default_election_timeout_min")]
        pub election_timeout_min: String,
        #[serde(default = "default_election_timeout_max")]
        pub election_timeout_max: String,
        #[serde(default)]
        pub name: Option<String>,
        #[serde(default = "default_lease")]
        pub lease: String,
        #[serde(default = "default_health_quorum")]
        pub health_quorum: String,
        #[serde(default)]
        pub nodes: Vec<Node>,
        #[serde(default)]
        pub tls: Option<Tls>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub cert_file: String,
        pub key_file: String,
        pub ca_file: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub id: u64,
        pub rpc: String,
        pub dns: String,
        pub api: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Api {
        pub token_file: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dns {
        pub zone: String,
        #[serde(default = "default_ttl")]
        pub ttl: String,
        #[serde(default)]
        pub hostmaster: Option<String>,
        #[serde(default = "default_on_minority")]
        pub on_minority: String,
        #[serde(default = "default_rate_limit")]
        pub rate_limit: i64,
        #[serde(default = "default_rate_limit_slip")]
        pub rate_limit_slip: i64,
        #[serde(default = "default_rate_limit_exempt")]
        pub rate_limit_exempt: Vec<String>,
        #[serde(default = "default_rate_limit_ipv4_prefix")]
        pub rate_limit_ipv4_prefix: i64,
        #[serde(default = "default_rate_limit_ipv6_prefix")]
        pub rate_limit_ipv6_prefix: i64,
        #[serde(default = "default_tcp_timeout")]
        pub tcp_timeout: String,
        #[serde(default = "default_tcp_max_connections")]
        pub tcp_max_connections: i64,
        /// Absent: [`super::DEFAULT_TCP_MAX_CONNECTIONS_PER_SOURCE`], or
        /// `tcp_max_connections` if that is smaller.
        #[serde(default)]
        pub tcp_max_connections_per_source: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub name: String,
        #[serde(default = "default_failback")]
        pub failback: String,
        #[serde(default = "default_failback_delay")]
        pub failback_delay: String,
        pub check: Check,
        #[serde(default)]
        pub instances: Vec<Instance>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Check {
        pub kind: String,
        #[serde(default = "default_interval")]
        pub interval: String,
        #[serde(default = "default_timeout")]
        pub timeout: String,
        #[serde(default = "default_rise")]
        pub rise: u32,
        #[serde(default = "default_fall")]
        pub fall: u32,
        // http
        pub path: Option<String>,
        pub scheme: Option<String>,
        pub host: Option<String>,
        pub expect_status: Option<ExpectStatus>,
        pub body_contains: Option<String>,
        // exec
        pub command: Option<Vec<String>>,
    }

    /// `200`, `[200, 204]` or `"200-299"`.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum ExpectStatus {
        One(i64),
        List(Vec<i64>),
        Text(String),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Instance {
        pub name: String,
        pub address: String,
        pub cname: Option<String>,
        pub a: Option<String>,
        pub aaaa: Option<String>,
        #[serde(default = "default_priority")]
        pub priority: i64,
    }

    fn default_data_dir() -> String {
        "data".into()
    }
    fn default_heartbeat() -> String {
        "50ms".into()
    }
    fn default_election_timeout_min() -> String {
        "150ms".into()
    }
    fn default_election_timeout_max() -> String {
        "300ms".into()
    }
    fn default_lease() -> String {
        "2s".into()
    }
    fn default_health_quorum() -> String {
        "majority".into()
    }
    fn default_on_minority() -> String {
        "servfail".into()
    }
    fn default_ttl() -> String {
        "5s".into()
    }
    fn default_rate_limit() -> i64 {
        super::DEFAULT_RATE_LIMIT.into()
    }
    fn default_rate_limit_slip() -> i64 {
        super::DEFAULT_RATE_LIMIT_SLIP.into()
    }
    fn default_rate_limit_exempt() -> Vec<String> {
        super::DEFAULT_RATE_LIMIT_EXEMPT
            .iter()
            .map(ToString::to_string)
            .collect()
    }
    fn default_rate_limit_ipv4_prefix() -> i64 {
        super::DEFAULT_RATE_LIMIT_IPV4_PREFIX.into()
    }
    fn default_rate_limit_ipv6_prefix() -> i64 {
        super::DEFAULT_RATE_LIMIT_IPV6_PREFIX.into()
    }
    fn default_tcp_timeout() -> String {
        humantime::format_duration(super::DEFAULT_TCP_TIMEOUT).to_string()
    }
    fn default_tcp_max_connections() -> i64 {
        super::DEFAULT_TCP_MAX_CONNECTIONS.into()
    }
    fn default_failback() -> String {
        "auto".into()
    }
    fn default_failback_delay() -> String {
        "30s".into()
    }
    fn default_interval() -> String {
        "1s".into()
    }
    fn default_timeout() -> String {
        "500ms".into()
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
    }
    fn default_priority() -> i64 {
        1
    }
    fn default_hook_timeout() -> String {
        "10s".into()
    }
}

/// A validated cluster config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    pub cluster: ClusterConfig,
    pub dns: DnsConfig,
    /// `[api]`: absent means the API is read-only.
    pub api: Option<ApiConfig>,
    pub services: Vec<ServiceConfig>,
    /// `[[hooks]]`, in config order.
    pub hooks: Vec<HookConfig>,
    /// `[[publish]]`, in config order.
    pub publish: Vec<PublishConfig>,
}

/// `[[hooks]]`: a command or webhook the leader runs once per committed
/// change of active instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Lowercase, unique: the key of its record in the replicated state.
    pub name: String,
    pub kind: HookKind,
    /// How long one attempt may take before it is abandoned (and retried).
    pub timeout: Duration,
    /// The services it runs for; `None` means every service.
    pub services: Option<Vec<String>>,
}

impl HookConfig {
    /// Whether the hook runs for changes of `service`.
    pub fn covers(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == service))
    }
}

/// What a hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookKind {
    /// Runs `command` (argv, no shell) with `{service}`, `{old}`, `{new}`,
    /// `{epoch}`, `{reason}` and `{index}` substituted; success is exit 0.
    Exec { command: Vec<String> },
    /// POSTs the change as JSON to `url`; success is a 2xx status.
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
        /// Signs the body (HMAC-SHA256) when set.
        secret: Option<HookSecret>,
    },
}

impl HookKind {
    /// `exec` or `webhook`.
    pub fn name(&self) -> &'static str {
        match self {
            HookKind::Exec { .. } => "exec",
            HookKind::Webhook { .. } => "webhook",
        }
    }
}

/// A webhook's signing key (trimmed contents of its `secret_file`); never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct HookSecret(pub Vec<u8>);

impl fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[api]`: who may change things through the HTTP API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub token_file: PathBuf,
    /// The bearer token mutating requests must carry (trimmed file contents).
    pub token: String,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token_file", &self.token_file)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `[cluster]`: who the nodes are and how they talk.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Node N keeps its state in `data_dir/node-N`.
    pub data_dir: PathBuf,
    pub secret_file: PathBuf,
    /// The shared cluster secret (contents of `secret_file`, trimmed).
    pub secret: Vec<u8>,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range; a follower campaigns after
    /// `election_timeout_max` plus a draw from this range without contact.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Carried by every cluster request, so nodes of another cluster that
    /// share the secret are still refused (defaults to the DNS zone).
    pub name: String,
    /// A node answers service names only while it has heard from a leader
    /// holding a quorum within this long (S3).
    pub lease: Duration,
    /// Whose probes decide an instance's health.
    pub health_quorum: HealthQuorum,
    /// Sorted by id.
    pub nodes: Vec<NodeConfig>,
    /// `[cluster.tls]`: mutual TLS on the cluster links; cleartext when absent.
    pub tls: Option<TlsConfig>,
}

/// `[cluster.tls]`: this node's certificate and key, and the CA every
/// node's certificate is signed by, parsed from PEM at load.
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// This node's certificate first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The only roots a peer's certificate is verified against.
    pub ca: Vec<CertificateDer<'static>>,
}

// By hand because `PrivateKeyDer` is cloned only on purpose (`clone_key`).
impl Clone for TlsConfig {
    fn clone(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ca_file: self.ca_file.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &TlsConfig) -> bool {
        (
            &self.cert_file,
            &self.key_file,
            &self.ca_file,
            &self.cert_chain,
            &self.ca,
        ) == (
            &other.cert_file,
            &other.key_file,
            &other.ca_file,
            &other.cert_chain,
            &other.ca,
        ) && self.key == other.key
    }
}

impl Eq for TlsConfig {}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("TlsConfig")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("ca_file", &self.ca_file)
            .field(
                "cert_chain",
                &format_args!("{} certificate(s)", self.cert_chain.len()),
            )
            .field("key", &"<redacted>")
            .field("ca", &format_args!("{} certificate(s)", self.ca.len()))
            .finish()
    }
}

/// `health_quorum`: whose verdicts make an instance up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthQuorum {
    /// Down when a majority of the configured nodes report it down, up when
    /// a majority report it up, otherwise unknown (and nothing changes).
    Majority,
    /// The leader's own probes alone (a leader with a bad network path can
    /// fail over wrongly; for clusters where that is acceptable).
    Leader,
}

impl fmt::Display for HealthQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthQuorum::Majority => "majority",
            HealthQuorum::Leader => "leader",
        })
    }
}

/// `on_minority`: what a node outside the majority answers for service names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMinority {
    /// SERVFAIL, so resolvers ask another nameserver (S3).
    Servfail,
    /// The last answer it knew, possibly stale.
    Stale,
}

impl fmt::Display for OnMinority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnMinority::Servfail => "servfail",
            OnMinority::Stale => "stale",
        })
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("ClusterConfig")
            .field("data_dir", &self.data_dir)
            .field("secret_file", &self.secret_file)
            .field("secret", &"<redacted>")
            .field("heartbeat", &self.heartbeat)
            .field("election_timeout_min", &self.election_timeout_min)
            .field("election_timeout_max", &self.election_timeout_max)
            .field("name", &self.name)
            .field("lease", &self.lease)
            .field("health_quorum", &self.health_quorum)
            .field("nodes", &self.nodes)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[[cluster.nodes]]`: one coordinator node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u64,
    pub rpc: SocketAddr,
    pub dns: SocketAddr,
    pub api: SocketAddr,
}

/// `[dns]`: the zone the nodes are authoritative for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Lowercase, absolute (`svc.example.`).
    pub zone: String,
    pub ttl: Duration,
    /// The SOA RNAME, absolute (`hostmaster.<zone>` by default).
    pub hostmaster: String,
    /// What a node outside the majority answers for service names.
    pub on_minority: OnMinority,
    /// UDP responses per second to one client prefix (IPv4 /24, IPv6 /56
    /// by default) before the rest are dropped or truncated; 0 turns the
    /// limit off.
    pub rate_limit: u32,
    /// Every this-many-th limited response goes out truncated (TC=1) so a
    /// real client behind the prefix retries over TCP; 0 drops them all.
    pub rate_limit_slip: u32,
    /// Clients the UDP rate limit never applies to (BIND's
    /// `exempt-clients`); loopback by default.
    pub rate_limit_exempt: Vec<IpPrefix>,
    /// How many leading bits of an IPv4 source make one client for the rate
    /// limit and the per-source TCP cap.
    pub rate_limit_ipv4_prefix: u8,
    /// The same for IPv6 sources.
    pub rate_limit_ipv6_prefix: u8,
    /// How long a DNS TCP connection may take to deliver its next complete
    /// query (idle and slow clients alike) or to read our answer.
    pub tcp_timeout: Duration,
    /// DNS TCP connections open at once; more are closed on accept.
    pub tcp_max_connections: u32,
    /// DNS TCP connections open at once from one client prefix, so one
    /// source cannot hold every slot; at most `tcp_max_connections`.
    pub tcp_max_connections_per_source: u32,
}

/// An IP network, like `127.0.0.0/8`: an address whose bits past the
/// prefix length are all zero. An IPv4-mapped IPv6 network is kept as the
/// IPv4 network it maps, since sources are compared in that form too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    network: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The network `network`/`len`; an error saying what is wrong (and what
    /// was probably meant) when `len` is longer than the address or bits
    /// past it are set.
    pub fn new(network: IpAddr, len: u8) -> Result<IpPrefix, String> {
        let bits = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if len > bits {
            return Err(format!(
                "/{len} is longer than an {} address; expected a prefix length from 0 to {bits}",
                if bits == 32 { "IPv4" } else { "IPv6" }
            ));
        }
        let masked = match network {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(len))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(len))),
        };
        if masked != network {
            return Err(format!(
                "bits past the /{len} prefix are set; expected the network address, \"{masked}/{len}\", or \"{network}\" alone for one address"
            ));
        }
        Ok(match network {
            IpAddr::V6(v6) if len >= 96 && v6.to_ipv4_mapped().is_some() => IpPrefix {
                network: IpAddr::V6(v6).to_canonical(),
                len: len - 96,
            },
            _ => IpPrefix { network, len },
        })
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` (or the IPv4 address an IPv4-mapped `ip` stands for)
    /// lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.len) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.len) == u128::from(network)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    /// `"192.0.2.0/24"`, `"2001:db8::/48"`, or one address (`"127.0.0.53"`,
    /// a /32 or /128).
    fn from_str(text: &str) -> Result<IpPrefix, String> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("{address:?} is not an IP address; expected a prefix like \"192.0.2.0/24\" or \"2001:db8::/48\", or one address like \"127.0.0.53\"")
        })?;
        let len = match len {
            None => match network {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(len) => len.parse::<u8>().map_err(|_| {
                format!("{len:?} is not a prefix length; expected a number of bits after the slash, like \"/24\"")
            })?,
        };
        IpPrefix::new(network, len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// The top `len` of 32 bits set.
fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// The top `len` of 128 bits set.
fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// `dns.rate_limit` when absent: generous for resolvers (the whole zone is a
/// few names with short TTLs), yet it caps what one prefix can reflect.
pub const DEFAULT_RATE_LIMIT: u32 = 500;

/// `dns.rate_limit_slip` when absent: BIND's default, every other limited
/// response truncated.
pub const DEFAULT_RATE_LIMIT_SLIP: u32 = 2;

/// `dns.rate_limit_exempt` when absent: loopback. Nothing off the host can
/// send from it (the kernel drops such packets as martians), so the
/// reflection the limit guards against cannot come from there, while a
/// local stub resolver (127.0.0.53, ::1) would otherwise share one budget
/// with every local process.
pub const DEFAULT_RATE_LIMIT_EXEMPT: [IpPrefix; 2] = [
    IpPrefix {
        network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        len: 8,
    },
    IpPrefix {
        network: IpAddr::V6(Ipv6Addr::LOCALHOST),
        len: 128,
    },
];

/// `dns.rate_limit_ipv4_prefix` when absent: BIND's default.
pub const DEFAULT_RATE_LIMIT_IPV4_PREFIX: u8 = 24;

/// `dns.rate_limit_ipv6_prefix` when absent: BIND's default.
pub const DEFAULT_RATE_LIMIT_IPV6_PREFIX: u8 = 56;

/// `dns.tcp_timeout` when absent: what hickory's listener used here before,
/// and half of Knot's idle timeout; a resolver's retry over TCP needs far less.
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// `dns.tcp_max_connections` when absent: BIND's `tcp-clients` is 150; TCP
/// here only carries retries of truncated answers, so fewer suffice.
pub const DEFAULT_TCP_MAX_CONNECTIONS: u32 = 100;

/// `dns.tcp_max_connections_per_source` when absent (or
/// `dns.tcp_max_connections` if smaller): a resolver retrying truncated
/// answers needs a few connections at a time; sixteen leave room for a
/// busy one, and six such prefixes cannot fill the default cap.
pub const DEFAULT_TCP_MAX_CONNECTIONS_PER_SOURCE: u32 = 16;

/// The accepted `dns.rate_limit_ipv4_prefix`: /8 groups a whole allocation
/// (shorter would let one flood silence unrelated networks); /32 is one host.
const RATE_LIMIT_IPV4_PREFIXES: RangeInclusive<i64> = 8..=32;

/// The accepted `dns.rate_limit_ipv6_prefix`: at most /64, because a host
/// picks any address inside its /64 freely, so a longer prefix would hand
/// one host as many budgets as it likes.
const RATE_LIMIT_IPV6_PREFIXES: RangeInclusive<i64> = 16..=64;

/// The largest `dns.rate_limit`: beyond this a limit no longer limits.
const MAX_RATE_LIMIT: i64 = 1_000_000;

/// The largest `dns.rate_limit_slip`, as in BIND.
const MAX_RATE_LIMIT_SLIP: i64 = 10;

/// The largest `dns.tcp_max_connections`: each one holds a file descriptor.
const MAX_TCP_CONNECTIONS: i64 = 10_000;

/// The range of `dns.tcp_timeout`: long enough for a slow link, short
/// enough that idle connections cannot pile up.
const TCP_TIMEOUTS: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(300);

/// `failback`: what happens when a better-priority instance is healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// Return to it once it has been healthy for `failback_delay`.
    Auto,
    /// Stay on the current instance until an operator switches over.
    Manual,
}

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failback::Auto => "auto",
            Failback::Manual => "manual",
        })
    }
}

/// `[[services]]`: one service and its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub failback: Failback,
    pub failback_delay: Duration,
    pub check: CheckConfig,
    /// In config order, which breaks priority ties.
    pub instances: Vec<InstanceConfig>,
}

impl ServiceConfig {
    /// The instance called `name`, if the service has one.
    pub fn instance(&self, name: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.name == name)
    }
}

/// `[services.check]`: how every instance of a service is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that turn a verdict up.
    pub rise: u32,
    /// Consecutive failures that turn a verdict down.
    pub fall: u32,
}

/// The probe itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `scheme://address/path`; healthy when the status matches and the
    /// body contains `body_contains` (if set).
    Http {
        https: bool,
        path: String,
        host: Option<String>,
        expect_status: StatusMatcher,
        body_contains: Option<String>,
    },
    /// Healthy when a TCP connection opens within the timeout.
    Tcp,
    /// Runs `command` (argv, no shell); healthy on exit 0; killed at the
    /// timeout. `{service}`, `{instance}`, `{address}`, `{host}` and `{port}`
    /// are substituted in every argument.
    Exec { command: Vec<String> },
}

impl CheckKind {
    /// `http`, `tcp` or `exec`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Exec { .. } => "exec",
        }
    }
}

/// The HTTP status codes an http check accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatcher {
    ranges: Vec<RangeInclusive<u16>>,
}

impl StatusMatcher {
    /// Accepts exactly `status`.
    pub fn single(status: u16) -> Self {
        StatusMatcher {
            ranges: vec![status..=status],
        }
    }

    /// Whether `status` is accepted.
    pub fn accepts(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }
}

impl fmt::Display for StatusMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// What DNS answers for the service when this instance is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Absolute, lowercase.
    Cname(String),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cname(name) => write!(f, "CNAME {name}"),
            Target::A(ip) => write!(f, "A {ip}"),
            Target::Aaaa(ip) => write!(f, "AAAA {ip}"),
        }
    }
}

/// `[[services.instances]]`: one instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    /// Where it is probed: `host:port`, where host is an IP address or a name.
    pub address: String,
    pub target: Target,
    /// Lower is preferred.
    pub priority: i64,
}

impl Config {
    /// Reads and validates the config file at `file`, including the secret file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses and validates `text`, as if read from `file` (relative paths are
    /// taken from `file`'s directory; the secret file is read).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        Config::from_raw(file, raw)
    }

    /// Validates `raw`, read from `file`.
    pub fn from_raw(file: &Path, raw: raw::Config) -> Result<Config, ConfigError> {
        let mut v = Validator::default();
        let base = file.parent().unwrap_or(Path::new("."));
        let cluster = v.cluster(base, raw.cluster);
        let dns = v.dns(raw.dns);
        let mut cluster = cluster;
        if cluster.name.is_empty() {
            cluster.name = dns.zone.clone();
        }
        let services = v.services(raw.services);
        let api = raw.api.map(|api| v.api(base, api));
        let hooks = v.hooks(base, raw.hooks, &services);
        let publish = v.publish(base, raw.publish, &services, dns.ttl);
        if v.problems.is_empty() {
            Ok(Config {
                file: file.to_owned(),
                cluster,
                dns,
                api,
                services,
                hooks,
                publish,
            })
        } else {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems: v.problems,
            })
        }
    }

    /// The node with `id`, or an error naming the ids the file lists.
    pub fn node(&self, id: u64) -> Result<&NodeConfig, ConfigError> {
        self.cluster
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::UnknownNode {
                file: self.file.clone(),
                id,
                known: self.cluster.nodes.iter().map(|n| n.id).collect(),
            })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Where node `id` keeps its state.
    pub fn node_data_dir(&self, id: u64) -> PathBuf {
        self.cluster.data_dir.join(format!("node-{id}"))
    }
}

/// Collects problems while converting the raw config.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(
        &mut self,
        key: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            key: key.into(),
            value: value.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) => d,
            Err(_) => {
                self.problem(
                    key,
                    quoted(value),
                    "not a duration; expected a number with a unit, like \"500ms\", \"1s\" or \"2m\"",
                );
                Duration::ZERO
            }
        }
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        match value.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    key,
                    quoted(value),
                    "not an address; expected an IP address and port, like \"127.0.0.1:5301\" or \"[::1]:5301\"",
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }

    fn cluster(&mut self, base: &Path, raw: raw::Cluster) -> ClusterConfig {
        let data_dir = base.join(&raw.data_dir);
        let secret_file = base.join(&raw.secret_file);
        let secret = match std::fs::read(&secret_file) {
            Ok(bytes) => {
                let secret = bytes.trim_ascii().to_vec();
                if secret.len() < 16 {
                    self.problem(
                        "cluster.secret_file",
                        quoted(&raw.secret_file),
                        format!(
                            "the secret in {} is {} bytes long; use at least 16 random bytes (for example `openssl rand -hex 32 > {}`)",
                            secret_file.display(),
                            secret.len(),
                            raw.secret_file
                        ),
                    );
                }
                secret
            }
            Err(e) => {
                self.problem(
                    "cluster.secret_file",
                    quoted(&raw.secret_file),
                    format!(
                        "cannot read {}: {e}; expected a readable file holding the shared cluster secret (for example `openssl rand -hex 32 > {}`)",
                        secret_file.display(),
                        raw.secret_file
                    ),
                );
                Vec::new()
            }
        };
        let heartbeat = self.duration("cluster.heartbeat", &raw.heartbeat);
        let min = self.duration("cluster.election_timeout_min", &raw.election_timeout_min);
        let max = self.duration("cluster.election_timeout_max", &raw.election_timeout_max);
        if heartbeat.is_zero()
            && !raw.heartbeat.is_empty()
            && humantime::parse_duration(&raw.heartbeat).is_ok()
        {
            self.problem(
                "cluster.heartbeat",
                quoted(&raw.heartbeat),
                "must be longer than 0; 50ms suits most clusters",
            );
        }
        // Compare only values that parsed: one that did not is already
        // reported, and stands in as zero here. A parsed zero must still be
        // compared, or "0s" would slip through.
        let parsed = |text: &str| humantime::parse_duration(text).is_ok();
        if parsed(&raw.election_timeout_min) && parsed(&raw.heartbeat) && min <= heartbeat {
            self.problem(
                "cluster.election_timeout_min",
                quoted(&raw.election_timeout_min),
                format!(
                    "must be longer than cluster.heartbeat ({}); about 3× the heartbeat is usual",
                    raw.heartbeat
                ),
            );
        }
        if parsed(&raw.election_timeout_max) && parsed(&raw.election_timeout_min) && max <= min {
            self.problem(
                "cluster.election_timeout_max",
                quoted(&raw.election_timeout_max),
                format!(
                    "must be longer than cluster.election_timeout_min ({}); the election timeout is drawn at random between them",
                    raw.election_timeout_min
                ),
            );
        }

        let lease = self.duration("cluster.lease", &raw.lease);
        // Twice a huge heartbeat overflows a Duration: no lease outlasts it.
        let too_short = heartbeat.checked_mul(2).is_none_or(|two| lease <= two);
        if parsed(&raw.lease) && parsed(&raw.heartbeat) && too_short {
            self.problem(
                "cluster.lease",
                quoted(&raw.lease),
                format!(
                    "must be longer than two heartbeats ({} each), or one late heartbeat makes nodes answer SERVFAIL; it should outlast a leader election (about twice election_timeout_max), like \"2s\"",
                    raw.heartbeat
                ),
            );
        }
        let health_quorum = match raw.health_quorum.as_str() {
            "majority" => HealthQuorum::Majority,
            "leader" => HealthQuorum::Leader,
            other => {
                self.problem(
                    "cluster.health_quorum",
                    quoted(other),
                    "expected \"majority\" (an instance is down when most nodes say so) or \"leader\" (the leader's probes alone)",
                );
                HealthQuorum::Majority
            }
        };
        // Empty stands for "not written" until `from_raw` fills in the zone;
        // a name written as "" is a mistake, not a request for the default.
        let name = match raw.name {
            None => String::new(),
            Some(name) => {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
                    self.problem(
                        "cluster.name",
                        quoted(&name),
                        "expected printable ASCII without spaces, like \"prod-eu\" (leave the key out to use the DNS zone)",
                    );
                }
                name
            }
        };

        if raw.nodes.is_empty() {
            self.problem(
                "cluster.nodes",
                "",
                "no nodes; list at least one [[cluster.nodes]] table with id, rpc, dns and api",
            );
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut nodes = Vec::new();
        for (i, node) in raw.nodes.into_iter().enumerate() {
            let key = format!("cluster.nodes[{i}]");
            if node.id == 0 {
                self.problem(
                    format!("{key}.id"),
                    0,
                    "node ids start at 1; expected a positive whole number",
                );
            } else if !ids.insert(node.id) {
                self.problem(
                    format!("{key}.id"),
                    node.id,
                    "duplicate node id; every node needs its own id",
                );
            }
            let rpc = self.socket_addr(&format!("{key}.rpc"), &node.rpc);
            let dns = self.socket_addr(&format!("{key}.dns"), &node.dns);
            let api = self.socket_addr(&format!("{key}.api"), &node.api);
            // DNS listens on TCP as well as UDP, so it competes with rpc and
            // api for the same ports.
            for (field, addr, text) in [
                ("rpc", rpc, &node.rpc),
                ("dns", dns, &node.dns),
                ("api", api, &node.api),
            ] {
                if addr.port() != 0 && !addrs.insert(addr) {
                    self.problem(
                        format!("{key}.{field}"),
                        quoted(text),
                        "this TCP address is already used by another node or key; every listener needs its own address",
                    );
                }
            }
            nodes.push(NodeConfig {
                id: node.id,
                rpc,
                dns,
                api,
            });
        }
        nodes.sort_by_key(|n| n.id);
        let tls = raw.tls.and_then(|tls| self.tls(base, tls));
        ClusterConfig {
            data_dir,
            secret_file,
            secret,
            heartbeat,
            election_timeout_min: min,
            election_timeout_max: max,
            name,
            lease,
            health_quorum,
            nodes,
            tls,
        }
    }

    /// Reads and checks `[cluster.tls]`; `None` (with problems recorded) if
    /// any file is unusable.
    fn tls(&mut self, base: &Path, raw: raw::Tls) -> Option<TlsConfig> {
        let cert_file = base.join(&raw.cert_file);
        let key_file = base.join(&raw.key_file);
        let ca_file = base.join(&raw.ca_file);
        let cert_chain = self.pem_certs(
            "cluster.tls.cert_file",
            &raw.cert_file,
            &cert_file,
            "this node's certificate (then any intermediates)",
        );
        let ca = self.pem_certs(
            "cluster.tls.ca_file",
            &raw.ca_file,
            &ca_file,
            "the certificate of the CA that signs every node's certificate",
        );
        let key = self.pem_key(&raw.key_file, &key_file);
        let tls = TlsConfig {
            cert_file,
            key_file,
            ca_file,
            cert_chain: cert_chain?,
            key: key?,
            ca: ca?,
        };
        match crate::cluster::tls::check(&tls) {
            Ok(()) => Some(tls),
            Err(e @ crate::cluster::tls::TlsError::Ca(_)) => {
                self.problem(
                    "cluster.tls.ca_file",
                    quoted(&raw.ca_file),
                    format!(
                        "{e}; expected the PEM certificate of the CA that signs every node's certificate"
                    ),
                );
                None
            }
            Err(e @ crate::cluster::tls::TlsError::Identity(_)) => {
                self.problem(
                    "cluster.tls.key_file",
                    quoted(&raw.key_file),
                    format!(
                        "{e}; expected the private key of the certificate in {}",
                        raw.cert_file
                    ),
                );
                None
            }
        }
    }

    /// The PEM certificates in `file`, at least one.
    fn pem_certs(
        &mut self,
        key: &str,
        value: &str,
        file: &Path,
        expected: &str,
    ) -> Option<Vec<CertificateDer<'static>>> {
        let bytes = self.read_tls_file(key, value, file, expected)?;
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(certs),
            Ok(_) => {
                self.problem(
                    key,
                    quoted(value),
                    format!(
                        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); expected {expected}",
                        file.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.problem(
                    key,
                    quoted(value),
                    format!(
                        "{} is not valid PEM ({e}); expected {expected}",
                        file.display()
                    ),
                );
                None
            }
        }
    }

    /// The PEM private key in `file` (PKCS#8, PKCS#1 or SEC1).
    fn pem_key(&mut self, value: &str, file: &Path) -> Option<PrivateKeyDer<'static>> {
        const KEY: &str = "cluster.tls.key_file";
        const EXPECTED: &str = "this node's private key in PEM (PKCS#8, PKCS#1 or SEC1)";
        let bytes = self.read_tls_file(KEY, value, file, EXPECTED)?;
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(key) => Some(key),
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                self.problem(
                    KEY,
                    quoted(value),
                    format!(
                        "{} holds no PEM private key; expected {EXPECTED}",
                        file.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.problem(
                    KEY,
                    quoted(value),
                    format!(
                        "{} is not valid PEM ({e}); expected {EXPECTED}",
                        file.display()
                    ),
                );
                None
            }
        }
    }

    fn read_tls_file(
        &mut self,
        key: &str,
        value: &str,
        file: &Path,
        expected: &str,
    ) -> Option<Vec<u8>> {
        match std::fs::read(file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.problem(
                    key,
                    quoted(value),
                    format!(
                        "cannot read {}: {e}; expected a readable PEM file with {expected}",
                        file.display()
                    ),
                );
                None
            }
        }
    }

    fn api(&mut self, base: &Path, raw: raw::Api) -> ApiConfig {
        let token_file = base.join(&raw.token_file);
        let token = match std::fs::read_to_string(&token_file) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
                    self.problem(
                        "api.token_file",
                        quoted(&raw.token_file),
                        format!(
                            "the token in {} must be at least 16 printable characters without spaces (for example `openssl rand -hex 24 > {}`)",
                            token_file.display(),
                            raw.token_file
                        ),
                    );
                }
                token
            }
            Err(e) => {
                self.problem(
                    "api.token_file",
                    quoted(&raw.token_file),
                    format!(
                        "cannot read {}: {e}; expected a readable file holding the API bearer token (for example `openssl rand -hex 24 > {}`)",
                        token_file.display(),
                        raw.token_file
                    ),
                );
                String::new()
            }
        };
        ApiConfig { token_file, token }
    }

    fn hooks(
        &mut self,
        base: &Path,
        raw: Vec<raw::Hook>,
        services: &[ServiceConfig],
    ) -> Vec<HookConfig> {
        let mut names = HashSet::new();
        let mut hooks = Vec::new();
        for (i, hook) in raw.into_iter().enumerate() {
            let key = format!("hooks[{i}]");
            let name = hook.name.to_ascii_lowercase();
            if let Err(why) = check_label(&name) {
                self.problem(format!("{key}.name"), quoted(&hook.name), why);
            } else if !names.insert(name.clone()) {
                self.problem(
                    format!("{key}.name"),
                    quoted(&hook.name),
                    "duplicate hook name; every hook needs its own name (it keys the record of what the hook has run for)",
                );
            }
            let timeout = self.duration(&format!("{key}.timeout"), &hook.timeout);
            if timeout.is_zero() && humantime::parse_duration(&hook.timeout).is_ok() {
                self.problem(
                    format!("{key}.timeout"),
                    quoted(&hook.timeout),
                    "must be longer than 0, like \"10s\"",
                );
            }
            let hook_services = hook.services.map(|list| {
                if list.is_empty() {
                    self.problem(
                        format!("{key}.services"),
                        "[]",
                        "an empty list runs the hook for nothing; leave the key out to run it for every service",
                    );
                }
                list.iter()
                    .enumerate()
                    .map(|(j, written)| {
                        let service = written.to_ascii_lowercase();
                        if !services.iter().any(|s| s.name == service) {
                            let known: Vec<&str> =
                                services.iter().map(|s| s.name.as_str()).collect();
                            self.problem(
                                format!("{key}.services[{j}]"),
                                quoted(written),
                                format!(
                                    "no such service; expected one of the [[services]] names: {}",
                                    known.join(", ")
                                ),
                            );
                        }
                        service
                    })
                    .collect()
            });
            let only_for = |this: &mut Self, field: &str, value: Option<String>, kind: &str| {
                if let Some(value) = value {
                    this.problem(
                        format!("{key}.{field}"),
                        value,
                        format!(
                            "only applies to kind = \"{kind}\", not kind = \"{}\"",
                            hook.kind
                        ),
                    );
                }
            };
            let kind = match hook.kind.as_str() {
                "exec" => {
                    only_for(self, "url", hook.url.as_deref().map(quoted), "webhook");
                    only_for(
                        self,
                        "secret_file",
                        hook.secret_file.as_deref().map(quoted),
                        "webhook",
                    );
                    let command = hook.command.unwrap_or_default();
                    if command.first().is_none_or(|p| p.is_empty()) {
                        self.problem(
                            format!("{key}.command"),
                            "",
                            "an exec hook needs a command: an argv list like [\"/usr/local/bin/on-change\", \"{service}\", \"{new}\", \"{epoch}\"]",
                        );
                    }
                    HookKind::Exec { command }
                }
                "webhook" => {
                    only_for(
                        self,
                        "command",
                        hook.command.as_ref().map(|c| format!("{c:?}")),
                        "exec",
                    );
                    let url = hook.url.unwrap_or_default();
                    if let Err(why) = check_url(&url) {
                        self.problem(format!("{key}.url"), quoted(&url), why);
                    }
                    let (secret_file, secret) = match hook.secret_file {
                        None => (None, None),
                        Some(written) => {
                            let path = base.join(&written);
                            let secret =
                                self.hook_secret(&format!("{key}.secret_file"), &written, &path);
                            (Some(path), Some(secret))
                        }
                    };
                    HookKind::Webhook {
                        url,
                        secret_file,
                        secret,
                    }
                }
                other => {
                    self.problem(
                        format!("{key}.kind"),
                        quoted(other),
                        "expected \"exec\" (run a command) or \"webhook\" (POST JSON to a URL)",
                    );
                    HookKind::Exec {
                        command: Vec::new(),
                    }
                }
            };
            hooks.push(HookConfig {
                name,
                kind,
                timeout,
                services: hook_services,
            });
        }
        hooks
    }

    fn hook_secret(&mut self, key: &str, written: &str, path: &Path) -> HookSecret {
        match std::fs::read(path) {
            Ok(bytes) => {
                let secret = bytes.trim_ascii().to_vec();
                if secret.len() < 16 {
                    self.problem(
                        key,
                        quoted(written),
                        format!(
                            "the secret in {} is {} bytes long; use at least 16 random bytes (for example `openssl rand -hex 32 > {written}`)",
                            path.display(),
                            secret.len(),
                        ),
                    );
                }
                HookSecret(secret)
            }
            Err(e) => {
                self.problem(
                    key,
                    quoted(written),
                    format!(
                        "cannot read {}: {e}; expected a readable file holding the webhook's signing secret (for example `openssl rand -hex 32 > {written}`)",
                        path.display(),
                    ),
                );
                HookSecret(Vec::new())
            }
        }
    }

    fn dns(&mut self, raw: raw::Dns) -> DnsConfig {
        let zone = raw.zone.to_ascii_lowercase();
        if !zone.ends_with('.') {
            self.problem(
                "dns.zone",
                quoted(&raw.zone),
                format!(
                    "a zone must be an absolute name ending with a dot, like \"{}.\"",
                    raw.zone
                ),
            );
        }
        // Checked with or without the dot, so both mistakes show in one pass.
        if zone != "." {
            if let Err(why) = check_name(&zone) {
                self.problem("dns.zone", quoted(&raw.zone), why);
            }
        }
        let ttl = self.duration("dns.ttl", &raw.ttl);
        if ttl.as_secs() > u64::from(u32::MAX / 2) {
            self.problem(
                "dns.ttl",
                quoted(&raw.ttl),
                "too long; DNS TTLs are at most 68 years, and a few seconds suits failover",
            );
        }
        if ttl.subsec_nanos() != 0 {
            self.problem(
                "dns.ttl",
                quoted(&raw.ttl),
                "DNS TTLs are whole seconds; expected something like \"5s\"",
            );
        }
        let hostmaster = match raw.hostmaster {
            Some(written) => {
                let h = written.to_ascii_lowercase();
                if let Err(why) = check_name(&h).and_then(|()| {
                    if h.ends_with('.') { Ok(()) } else { Err("expected an absolute name ending with a dot, like \"hostmaster.example.\"".into()) }
                }) {
                    self.problem("dns.hostmaster", quoted(&written), why);
                }
                h
            }
            // `dot_zone`, so the root zone gives "hostmaster." and not "hostmaster..".
            None => format!("hostmaster{}", dot_zone(&zone)),
        };
        let on_minority = match raw.on_minority.as_str() {
            "servfail" => OnMinority::Servfail,
            "stale" => OnMinority::Stale,
            other => {
                self.problem(
                    "dns.on_minority",
                    quoted(other),
                    "expected \"servfail\" (resolvers move to another nameserver) or \"stale\" (keep answering the last known instance)",
                );
                OnMinority::Servfail
            }
        };
        let rate_limit = self.integer(
            "dns.rate_limit",
            raw.rate_limit,
            0..=MAX_RATE_LIMIT,
            "responses per second to one client prefix (IPv4 /24, IPv6 /56), like 500, or 0 to turn rate limiting off",
        );
        let rate_limit_slip = self.integer(
            "dns.rate_limit_slip",
            raw.rate_limit_slip,
            0..=MAX_RATE_LIMIT_SLIP,
            "how often a limited response goes out truncated instead of dropped: 1 every one, 2 every other one (the default), 0 never",
        );
        let tcp_timeout = self.duration("dns.tcp_timeout", &raw.tcp_timeout);
        if !TCP_TIMEOUTS.contains(&tcp_timeout)
            && humantime::parse_duration(&raw.tcp_timeout).is_ok()
        {
            self.problem(
                "dns.tcp_timeout",
                quoted(&raw.tcp_timeout),
                format!(
                    "expected a duration from {} to {}, like \"5s\"",
                    humantime::format_duration(*TCP_TIMEOUTS.start()),
                    humantime::format_duration(*TCP_TIMEOUTS.end())
                ),
            );
        }
        let mut rate_limit_exempt = Vec::with_capacity(raw.rate_limit_exempt.len());
        for (i, written) in raw.rate_limit_exempt.iter().enumerate() {
            match written.parse::<IpPrefix>() {
                Ok(prefix) => rate_limit_exempt.push(prefix),
                Err(why) => {
                    self.problem(format!("dns.rate_limit_exempt[{i}]"), quoted(written), why)
                }
            }
        }
        // Both ranges lie within 0..=64, so the lengths fit a u8.
        let rate_limit_ipv4_prefix = self.integer(
            "dns.rate_limit_ipv4_prefix",
            raw.rate_limit_ipv4_prefix,
            RATE_LIMIT_IPV4_PREFIXES,
            "how many leading bits of an IPv4 source make one client, like 24 (BIND's default)",
        );
        let rate_limit_ipv6_prefix = self.integer(
            "dns.rate_limit_ipv6_prefix",
            raw.rate_limit_ipv6_prefix,
            RATE_LIMIT_IPV6_PREFIXES,
            "how many leading bits of an IPv6 source make one client, like 56 (BIND's default); a host picks its address within a /64 freely, so a longer prefix would not limit it",
        );
        let tcp_max_connections = self.integer(
            "dns.tcp_max_connections",
            raw.tcp_max_connections,
            1..=MAX_TCP_CONNECTIONS,
            "how many DNS TCP connections may be open at once, like 100",
        );
        let tcp_max_connections_per_source = match raw.tcp_max_connections_per_source {
            None => DEFAULT_TCP_MAX_CONNECTIONS_PER_SOURCE.min(tcp_max_connections.max(1)),
            Some(written) => self.integer(
                "dns.tcp_max_connections_per_source",
                written,
                1..=raw.tcp_max_connections.clamp(1, MAX_TCP_CONNECTIONS),
                "how many DNS TCP connections one client prefix may hold open at once, like 16; at most dns.tcp_max_connections",
            ),
        };
        DnsConfig {
            zone,
            ttl,
            hostmaster,
            on_minority,
            rate_limit,
            rate_limit_slip,
            rate_limit_exempt,
            rate_limit_ipv4_prefix: u8::try_from(rate_limit_ipv4_prefix).unwrap_or(u8::MAX),
            rate_limit_ipv6_prefix: u8::try_from(rate_limit_ipv6_prefix).unwrap_or(u8::MAX),
            tcp_timeout,
            tcp_max_connections,
            tcp_max_connections_per_source,
        }
    }

    /// `value` as a `u32` if it lies in `range` (which must fit a `u32`);
    /// otherwise a problem saying `accepted`.
    fn integer(
        &mut self,
        key: &str,
        value: i64,
        range: RangeInclusive<i64>,
        accepted: &str,
    ) -> u32 {
        match u32::try_from(value) {
            Ok(fits) if range.contains(&value) => fits,
            _ => {
                self.problem(
                    key,
                    value,
                    format!(
                        "expected {accepted} (from {} to {})",
                        range.start(),
                        range.end()
                    ),
                );
                0
            }
        }
    }

    fn services(&mut self, raw: Vec<raw::Service>) -> Vec<ServiceConfig> {
        let mut names = HashSet::new();
        let mut services = Vec::new();
        for (i, service) in raw.into_iter().enumerate() {
            let key = format!("services[{i}]");
            let name = service.name.to_ascii_lowercase();
            if let Err(why) = check_label(&name) {
                self.problem(format!("{key}.name"), quoted(&service.name), why);
            } else if name.starts_with('_') {
                self.problem(format!("{key}.name"), quoted(&service.name), "service names cannot start with '_' (reserved for _highlander.<service> records)");
            } else if !names.insert(name.clone()) {
                self.problem(
                    format!("{key}.name"),
                    quoted(&service.name),
                    "duplicate service name; every service needs its own name",
                );
            }
            let failback = match service.failback.as_str() {
                "auto" => Failback::Auto,
                "manual" => Failback::Manual,
                other => {
                    self.problem(
                        format!("{key}.failback"),
                        quoted(other),
                        "expected \"auto\" or \"manual\"",
                    );
                    Failback::Auto
                }
            };
            let failback_delay =
                self.duration(&format!("{key}.failback_delay"), &service.failback_delay);
            let check = self.check(&format!("{key}.check"), service.check);
            if service.instances.is_empty() {
                self.problem(
                    format!("{key}.instances"),
                    "",
                    "no instances; list at least one [[services.instances]] table",
                );
            }
            let mut instance_names = HashSet::new();
            let mut instances = Vec::new();
            for (j, instance) in service.instances.into_iter().enumerate() {
                let key = format!("{key}.instances[{j}]");
                let iname = instance.name.to_ascii_lowercase();
                if let Err(why) = check_label(&iname) {
                    self.problem(format!("{key}.name"), quoted(&instance.name), why);
                } else if !instance_names.insert(iname.clone()) {
                    self.problem(format!("{key}.name"), quoted(&instance.name), "duplicate instance name in this service; every instance needs its own name");
                }
                if let Err(why) = check_host_port(&instance.address) {
                    self.problem(format!("{key}.address"), quoted(&instance.address), why);
                }
                let target = self.target(&key, &instance);
                instances.push(InstanceConfig {
                    name: iname,
                    address: instance.address,
                    target,
                    priority: instance.priority,
                });
            }
            services.push(ServiceConfig {
                name,
                failback,
                failback_delay,
                check,
                instances,
            });
        }
        services
    }

    fn target(&mut self, key: &str, raw: &raw::Instance) -> Target {
        let given: Vec<&str> = [("cname", &raw.cname), ("a", &raw.a), ("aaaa", &raw.aaaa)]
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        let placeholder = Target::A(Ipv4Addr::UNSPECIFIED);
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(" and ")
            };
            self.problem(
                key,
                "",
                format!("an instance needs exactly one of cname, a or aaaa (what DNS answers when it is active); found {found}"),
            );
            return placeholder;
        }
        if let Some(cname) = &raw.cname {
            let name = cname.to_ascii_lowercase();
            match check_name(&name) {
                Ok(()) if name.ends_with('.') => Target::Cname(name),
                Ok(()) => {
                    self.problem(
                        format!("{key}.cname"),
                        quoted(cname),
                        format!("expected an absolute name ending with a dot, like \"{cname}.\""),
                    );
                    placeholder
                }
                Err(why) => {
                    self.problem(format!("{key}.cname"), quoted(cname), why);
                    placeholder
                }
            }
        } else if let Some(a) = &raw.a {
            match a.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Target::A(ip),
                Ok(IpAddr::V6(_)) => {
                    self.problem(format!("{key}.a"), quoted(a), "an IPv6 address; put it in `aaaa`, or give an IPv4 address like \"10.0.0.11\" here");
                    placeholder
                }
                Err(_) => {
                    self.problem(
                        format!("{key}.a"),
                        quoted(a),
                        "not an IPv4 address; expected something like \"10.0.0.11\"",
                    );
                    placeholder
                }
            }
        } else if let Some(aaaa) = &raw.aaaa {
            match aaaa.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => Target::Aaaa(ip),
                Ok(IpAddr::V4(_)) => {
                    self.problem(format!("{key}.aaaa"), quoted(aaaa), "an IPv4 address; put it in `a`, or give an IPv6 address like \"2001:db8::11\" here");
                    placeholder
                }
                Err(_) => {
                    self.problem(
                        format!("{key}.aaaa"),
                        quoted(aaaa),
                        "not an IPv6 address; expected something like \"2001:db8::11\"",
                    );
                    placeholder
                }
            }
        } else {
            placeholder
        }
    }

    fn check(&mut self, key: &str, raw: raw::Check) -> CheckConfig {
        let interval = self.duration(&format!("{key}.interval"), &raw.interval);
        let timeout = self.duration(&format!("{key}.timeout"), &raw.timeout);
        if interval.is_zero() && humantime::parse_duration(&raw.interval).is_ok() {
            self.problem(
                format!("{key}.interval"),
                quoted(&raw.interval),
                "must be longer than 0, like \"1s\"",
            );
        }
        if !interval.is_zero() && timeout >= interval {
            self.problem(
                format!("{key}.timeout"),
                quoted(&raw.timeout),
                format!(
                    "must be shorter than the interval ({}) so probes never overlap",
                    raw.interval
                ),
            );
        }
        if timeout.is_zero() && humantime::parse_duration(&raw.timeout).is_ok() {
            self.problem(
                format!("{key}.timeout"),
                quoted(&raw.timeout),
                "must be longer than 0, like \"500ms\"",
            );
        }
        for (field, value) in [("rise", raw.rise), ("fall", raw.fall)] {
            if value == 0 {
                self.problem(
                    format!("{key}.{field}"),
                    0,
                    "must be at least 1 (the number of consecutive probes that change the verdict)",
                );
            }
        }
        // `value` is the key's value as written, or None when it is absent.
        let only_for = |this: &mut Self, field: &str, value: Option<String>, kinds: &str| {
            if let Some(value) = value {
                this.problem(
                    format!("{key}.{field}"),
                    value,
                    format!(
                        "only applies to kind = {kinds}, not kind = \"{}\"",
                        raw.kind
                    ),
                );
            }
        };
        let command_text = raw.command.as_ref().map(|c| format!("{c:?}"));
        let kind = match raw.kind.as_str() {
            "http" => {
                only_for(self, "command", command_text, "\"exec\"");
                let https = match raw.scheme.as_deref() {
                    None | Some("http") => false,
                    Some("https") => true,
                    Some(other) => {
                        self.problem(
                            format!("{key}.scheme"),
                            quoted(other),
                            "expected \"http\" or \"https\"",
                        );
                        false
                    }
                };
                let path = raw.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    self.problem(
                        format!("{key}.path"),
                        quoted(&path),
                        format!("expected an absolute path starting with '/', like \"/{path}\""),
                    );
                }
                let expect_status = match raw.expect_status {
                    None => StatusMatcher::single(200),
                    Some(spec) => self.status_matcher(&format!("{key}.expect_status"), spec),
                };
                CheckKind::Http {
                    https,
                    path,
                    host: raw.host,
                    expect_status,
                    body_contains: raw.body_contains,
                }
            }
            "tcp" | "exec" => {
                for (field, value) in [
                    ("path", raw.path.as_deref().map(quoted)),
                    ("scheme", raw.scheme.as_deref().map(quoted)),
                    ("host", raw.host.as_deref().map(quoted)),
                    (
                        "expect_status",
                        raw.expect_status.as_ref().map(expect_status_text),
                    ),
                    ("body_contains", raw.body_contains.as_deref().map(quoted)),
                ] {
                    only_for(self, field, value, "\"http\"");
                }
                if raw.kind == "tcp" {
                    only_for(self, "command", command_text, "\"exec\"");
                    CheckKind::Tcp
                } else {
                    let command = raw.command.unwrap_or_default();
                    if command.first().is_none_or(|p| p.is_empty()) {
                        self.problem(
                            format!("{key}.command"),
                            "",
                            "an exec check needs a command: an argv list like [\"/usr/local/bin/check-db\", \"{address}\"]",
                        );
                    }
                    CheckKind::Exec { command }
                }
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    quoted(other),
                    "expected \"http\", \"tcp\" or \"exec\"",
                );
                CheckKind::Tcp
            }
        };
        CheckConfig {
            kind,
            interval,
            timeout,
            rise: raw.rise,
            fall: raw.fall,
        }
    }

    fn status_matcher(&mut self, key: &str, spec: raw::ExpectStatus) -> StatusMatcher {
        const ACCEPTED: &str = "expected a status code (200), a list ([200, 204]) or a range (\"200-299\"), with codes from 100 to 599";
        let code = |n: i64| u16::try_from(n).ok().filter(|c| (100..=599).contains(c));
        let mut ranges = Vec::new();
        let bad = |this: &mut Self, value: String| this.problem(key, value, ACCEPTED);
        match spec {
            raw::ExpectStatus::One(n) => match code(n) {
                Some(c) => ranges.push(c..=c),
                None => bad(self, n.to_string()),
            },
            raw::ExpectStatus::List(list) => {
                if list.is_empty() {
                    bad(self, "[]".into());
                }
                for n in list {
                    match code(n) {
                        Some(c) => ranges.push(c..=c),
                        None => bad(self, n.to_string()),
                    }
                }
            }
            raw::ExpectStatus::Text(text) => {
                let parsed = text.split_once('-').and_then(|(lo, hi)| {
                    let lo = code(lo.trim().parse().ok()?)?;
                    let hi = code(hi.trim().parse().ok()?)?;
                    (lo <= hi).then_some(lo..=hi)
                });
                match parsed {
                    Some(r) => ranges.push(r),
                    None => bad(self, quoted(&text)),
                }
            }
        }
        if ranges.is_empty() {
            ranges.push(200..=200);
        }
        StatusMatcher { ranges }
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `expect_status` as written in the file.
fn expect_status_text(spec: &raw::ExpectStatus) -> String {
    match spec {
        raw::ExpectStatus::One(n) => n.to_string(),
        raw::ExpectStatus::List(list) => format!("{list:?}"),
        raw::ExpectStatus::Text(text) => quoted(text),
    }
}

/// Checks one DNS label: 1–63 letters, digits, '-' or '_', not starting or
/// ending with '-'.
pub fn check_label(label: &str) -> Result<(), String> {
    const ACCEPTED: &str = "expected a DNS label: 1 to 63 letters, digits, '-' or '_', not starting or ending with '-'";
    if label.is_empty() || label.len() > 63 {
        return Err(format!("{} characters long; {ACCEPTED}", label.len()));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!("contains {c:?}; {ACCEPTED}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("starts or ends with '-'; {ACCEPTED}"));
    }
    Ok(())
}

/// Checks a domain name (absolute or not): valid labels, at most 253 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("empty name; expected a domain name like \"svc.example.\"".into());
    }
    if bare.len() > 253 {
        return Err(format!(
            "{} characters long; a domain name has at most 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        check_label(label).map_err(|why| format!("label {label:?} is not valid: {why}"))?;
    }
    Ok(())
}

/// Checks a webhook URL: http or https, with a host.
fn check_url(url: &str) -> Result<(), String> {
    const ACCEPTED: &str =
        "expected an http:// or https:// URL, like \"https://hooks.example/highlander\"";
    if url.is_empty() {
        return Err(format!("a webhook needs a url; {ACCEPTED}"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{e}; {ACCEPTED}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; {ACCEPTED}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host; {ACCEPTED}"));
    }
    Ok(())
}

fn check_host_port(address: &str) -> Result<(), String> {
    const ACCEPTED: &str = "expected host:port, like \"10.0.0.11:8080\", \"[2001:db8::11]:8080\" or \"db1.internal:8080\"";
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("no port; {ACCEPTED}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "port {port:?} is not a number from 0 to 65535; {ACCEPTED}"
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!("not a valid IPv6 address; {ACCEPTED}"));
    }
    check_name(host).map_err(|why| format!("host {host:?}: {why}"))
}

/// A one-screen description of what the config means, for `check-config`.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let c = &config.cluster;
    let _ = writeln!(out, "config {} is valid", config.file.display());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "cluster: {} node{}, data in {}, secret from {} ({} bytes)",
        c.nodes.len(),
        if c.nodes.len() == 1 { "" } else { "s" },
        c.data_dir.display(),
        c.secret_file.display(),
        c.secret.len()
    );
    let _ = writeln!(
        out,
        "  raft: heartbeat {}, election timeout {}–{}; lease {}; health quorum: {}; cluster name {}",
        humantime::format_duration(c.heartbeat),
        humantime::format_duration(c.election_timeout_min),
        humantime::format_duration(c.election_timeout_max),
        humantime::format_duration(c.lease),
        c.health_quorum,
        c.name
    );
    for n in &c.nodes {
        let _ = writeln!(
            out,
            "  node {}: rpc {}, dns {}, api {}",
            n.id, n.rpc, n.dns, n.api
        );
    }
    let _ = match &c.tls {
        None => writeln!(
            out,
            "  links: cleartext HTTP/2 (HMAC-signed, not encrypted)"
        ),
        Some(tls) => writeln!(
            out,
            "  links: mutual TLS; certificate {}, key {}, CA {}",
            tls.cert_file.display(),
            tls.key_file.display(),
            tls.ca_file.display()
        ),
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "dns: authoritative for {} (ttl {}, hostmaster {}, outside the majority: {})",
        config.dns.zone,
        humantime::format_duration(config.dns.ttl),
        config.dns.hostmaster,
        config.dns.on_minority
    );
    let d = &config.dns;
    let prefixes = format!(
        "/{} or /{}",
        d.rate_limit_ipv4_prefix, d.rate_limit_ipv6_prefix
    );
    let mut udp = match (d.rate_limit, d.rate_limit_slip) {
        (0, _) => "UDP not rate limited".to_owned(),
        (rate, 0) => format!("UDP {rate} responses/s per {prefixes}, the rest dropped"),
        (rate, 1) => format!("UDP {rate} responses/s per {prefixes}, the rest truncated"),
        (rate, slip) => {
            format!("UDP {rate} responses/s per {prefixes}, 1 in {slip} of the rest truncated")
        }
    };
    if d.rate_limit != 0 && !d.rate_limit_exempt.is_empty() {
        let exempt: Vec<String> = d
            .rate_limit_exempt
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = write!(udp, " (not for {})", exempt.join(", "));
    }
    let _ = writeln!(
        out,
        "  limits: {udp}; TCP at most {} connections, {} per {prefixes}, closed after {} without a query",
        d.tcp_max_connections,
        d.tcp_max_connections_per_source,
        humantime::format_duration(d.tcp_timeout)
    );
    for s in &config.services {
        let _ = writeln!(out);
        let failback = match s.failback {
            Failback::Auto => format!(
                "auto after {}",
                humantime::format_duration(s.failback_delay)
            ),
            Failback::Manual => "manual".into(),
        };
        let _ = writeln!(
            out,
            "service {} → {}{} (failback {failback})",
            s.name,
            s.name,
            dot_zone(&config.dns.zone)
        );
        let ch = &s.check;
        let what = match &ch.kind {
            CheckKind::Http {
                https,
                path,
                host,
                expect_status,
                body_contains,
            } => {
                let mut w = format!(
                    "GET {}://<address>{path} expecting {expect_status}",
                    if *https { "https" } else { "http" }
                );
                if let Some(h) = host {
                    let _ = write!(w, ", Host {h}");
                }
                if let Some(b) = body_contains {
                    let _ = write!(w, ", body containing {b:?}");
                }
                w
            }
            CheckKind::Tcp => "TCP connect to <address>".into(),
            CheckKind::Exec { command } => format!("exec {command:?}"),
        };
        let _ = writeln!(
            out,
            "  check {}: {what}; every {}, timeout {}, up after {} success{}, down after {} failure{}",
            ch.kind.name(),
            humantime::format_duration(ch.interval),
            humantime::format_duration(ch.timeout),
            ch.rise,
            if ch.rise == 1 { "" } else { "es" },
            ch.fall,
            if ch.fall == 1 { "" } else { "s" },
        );
        let ordered: BTreeSet<(i64, usize)> = s
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| (inst.priority, i))
            .collect();
        for (rank, (_, i)) in ordered.into_iter().enumerate() {
            let inst = &s.instances[i];
            let _ = writeln!(
                out,
                "  {}. instance {} at {} (priority {}) answers {}",
                rank + 1,
                inst.name,
                inst.address,
                inst.priority,
                inst.target
            );
        }
    }
    for h in &config.hooks {
        let _ = writeln!(out);
        let what = match &h.kind {
            HookKind::Exec { command } => format!("exec {command:?}"),
            HookKind::Webhook {
                url, secret_file, ..
            } => match secret_file {
                Some(file) => format!("POST {url}, signed with {}", file.display()),
                None => format!("POST {url}, unsigned"),
            },
        };
        let services = match &h.services {
            None => "every service".to_owned(),
            Some(names) => names.join(", "),
        };
        let _ = writeln!(
            out,
            "hook {}: {what}; for {services}; timeout {} per attempt",
            h.name,
            humantime::format_duration(h.timeout)
        );
    }
    for p in &config.publish {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", describe_publish(p));
    }
    out
}

/// One `[[publish]]` target on one line: where, what, how often. Names where
/// the token or TSIG secret comes from, never the secret.
fn describe_publish(p: &PublishConfig) -> String {
    let at = match &p.kind {
        PublishKind::Rfc2136 { server, tsig } => format!(
            "at {server}, TSIG key {} ({})",
            tsig.name,
            tsig.algorithm.name()
        ),
        PublishKind::DigitalOcean { base_url, token } => format!("at {base_url}, {}", token.source),
        PublishKind::Cloudflare {
            base_url,
            zone_id,
            token,
        } => format!(
            "at {base_url}, zone id {}, {}",
            zone_id.as_deref().unwrap_or("looked up by name"),
            token.source
        ),
    };
    format!(
        "publish {}: {} {at}; zone {}, record {} for {}; ttl {}, every {}, timeout {}",
        p.name,
        p.kind.name(),
        p.zone,
        p.record,
        p.services.join(", "),
        humantime::format_duration(p.ttl),
        humantime::format_duration(p.interval),
        humantime::format_duration(p.timeout)
    )
}

fn dot_zone(zone: &str) -> String {
    if zone == "." {
        ".".into()
    } else {
        format!(".{zone}")
    }
}

mod publish;
#[cfg(test)]
mod tests;
