//! A real BIND 9 primary for tests and benchmarks: `named` started in the
//! foreground from a config this kit writes (one zone, one TSIG key, an
//! update policy granting that key the zone), on a free loopback port or on
//! a given address inside a network namespace, and killed when dropped.
//! Reads and edits behind highlander's back go through BIND's own tools
//! (`dig`, `nsupdate`), so callers check the server's view, not ours.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TSIG key BIND knows and highlander signs with.
pub const KEY_NAME: &str = "highlander";

/// How long `named` may take to answer its first query.
const READY: Duration = Duration::from_secs(10);

/// Why a BIND could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "BIND's named is not installed: `apt-get install -y bind9 bind9-dnsutils` (CI's .ci/run does)"
    )]
    NotInstalled,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("named did not start: {0}")]
    NotStarted(String),
    #[error("{command} failed: {output}")]
    Tool { command: String, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BindError {
    let what = what.into();
    move |source| BindError::Io { what, source }
}

/// Where a [`LocalBind`] listens.
#[derive(Debug, Clone)]
pub enum Placement {
    /// A free port on 127.0.0.1.
    Loopback,
    /// `addr`, inside network namespace `netns` (`ip netns exec`).
    Namespace { netns: String, addr: SocketAddr },
}

/// A running `named` serving one zone.
pub struct LocalBind {
    child: Child,
    /// Holds named.conf, the zone file, its journal, the key file and the log.
    dir: tempfile::TempDir,
    addr: SocketAddr,
    netns: Option<String>,
    zone: String,
    algorithm: &'static str,
    secret: String,
}

impl LocalBind {
    /// Starts `named` for `zone` (absolute) with a fresh key of `algorithm`
    /// (`hmac-sha256` or `hmac-sha512`). It is stopped when this is dropped,
    /// and killed by the kernel when the thread that started it ends, so a
    /// test run killed outright leaves no `named` behind: start it from a
    /// thread that outlives its use (a test's own, a runtime's worker).
    pub fn start(
        zone: &str,
        algorithm: &'static str,
        placement: Placement,
    ) -> Result<LocalBind, BindError> {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or(BindError::NotInstalled)?;
        let secret = data_encoding::BASE64.encode(&rand::random::<[u8; 64]>());
        // A loopback port freed just before named binds it can be taken in
        // between, so a failed start there is retried on another.
        let attempts = match placement {
            Placement::Loopback => 3,
            Placement::Namespace { .. } => 1,
        };
        let mut last = None;
        for _ in 0..attempts {
            let (addr, netns) = match &placement {
                Placement::Loopback => (SocketAddr::from(([127, 0, 0, 1], free_port()?)), None),
                Placement::Namespace { netns, addr } => (*addr, Some(netns.clone())),
            };
            let dir = tempfile::tempdir().map_err(io("create a directory for named"))?;
            write_config(dir.path(), addr, zone, algorithm, &secret)?;
            let log = std::fs::File::create(dir.path().join("named.log"))
                .map_err(io("create named's log"))?;
            let mut command = in_netns(netns.as_deref(), named);
            super::die_with_parent_thread(&mut command);
            command
                .args(["-g", "-n", "1", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io("share named's log"))?)
                .stderr(log);
            let child = command.spawn().map_err(io(format!("start {named}")))?;
            let mut bind = LocalBind {
                child,
                dir,
                addr,
                netns,
                zone: zone.to_owned(),
                algorithm,
                secret: secret.clone(),
            };
            match bind.wait_ready() {
                Ok(()) => return Ok(bind),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BindError::NotStarted("no attempt was made".into())))
    }

    fn wait_ready(&mut self) -> Result<(), BindError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BindError::NotStarted(format!(
                    "named exited with {status}: {}",
                    self.log()
                )));
            }
            let zone = self.zone.clone();
            if self.dig(&zone, "SOA").is_ok_and(|lines| !lines.is_empty()) {
                return Ok(());
            }
            if start.elapsed() > READY {
                return Err(BindError::NotStarted(format!(
                    "no answer within {READY:?}: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// named's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// A key file as `tsig-keygen` writes it: highlander's `tsig_secret_file`.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key.conf")
    }

    /// The key's base64 secret (to check it never leaks).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Where it listens: the `server` a `[[publish]]` target names.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The answer section of `dig name type` against this server, one
    /// record per line as `name ttl class type data`.
    pub fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>, BindError> {
        let mut command = in_netns(self.netns.as_deref(), "dig");
        command.args([
            &format!("@{}", self.addr.ip()),
            "-p",
            &self.addr.port().to_string(),
            "+norec",
            "+noall",
            "+answer",
            "+time=1",
            "+tries=1",
            name,
            rtype,
        ]);
        let output = command
            .output()
            .map_err(io("run dig (`apt-get install -y bind9-dnsutils`)"))?;
        if !output.status.success() {
            return Err(BindError::Tool {
                command: format!("dig {name} {rtype}"),
                output: String::from_utf8_lossy(&output.stdout).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Just the data of each `name type` record, sorted.
    pub fn data(&self, name: &str, rtype: &str) -> Result<Vec<String>, BindError> {
        let mut data: Vec<String> = self
            .dig(name, rtype)?
            .into_iter()
            .filter(|line| line.split(' ').nth(3) == Some(rtype))
            .map(|line| line.splitn(5, ' ').nth(4).unwrap_or_default().to_owned())
            .collect();
        data.sort();
        Ok(data)
    }

    /// Runs `nsupdate` with `commands` (one per line) for the zone, signed
    /// with the key: an edit made behind highlander's back.
    pub fn nsupdate(&self, commands: &str) -> Result<(), BindError> {
        use std::io::Write;
        let script = format!(
            "server {} {}\nzone {}\n{commands}\nsend\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        let mut command = in_netns(self.netns.as_deref(), "nsupdate");
        let mut child = command
            .args([
                "-y",
                &format!("{}:{KEY_NAME}:{}", self.algorithm, self.secret),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("run nsupdate (`apt-get install -y bind9-dnsutils`)"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(io("write to nsupdate"))?;
        }
        let output = child.wait_with_output().map_err(io("wait for nsupdate"))?;
        if !output.status.success() {
            return Err(BindError::Tool {
                command: "nsupdate".into(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(())
    }
}

impl Drop for LocalBind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, run inside `netns` when there is one.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, program]);
            command
        }
        None => Command::new(program),
    }
}

fn free_port() -> Result<u16, BindError> {
    // Free on both UDP and TCP, which named binds alike.
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io("bind a UDP socket"))?;
        let port = udp.local_addr().map_err(io("read a bound address"))?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BindError::NotStarted(
        "no free loopback port for named".into(),
    ))
}

fn write_config(
    dir: &Path,
    addr: SocketAddr,
    zone: &str,
    algorithm: &str,
    secret: &str,
) -> Result<(), BindError> {
    let d = dir.display();
    let (ip, port) = (addr.ip(), addr.port());
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(io(format!("write {name} for named")))
    };
    write(
        "key.conf",
        format!("key \"{KEY_NAME}\" {{\n\talgorithm {algorithm};\n\tsecret \"{secret}\";\n}};\n"),
    )?;
    write(
        "zone.db",
        format!(
            "$TTL 60\n@ IN SOA ns.{zone} hostmaster.{zone} 1 60 60 600 60\n@ IN NS ns.{zone}\nns IN A {ip}\n"
        ),
    )?;
    write(
        "named.conf",
        format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
include "{d}/key.conf";
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
}};
"#
        ),
    )
}
