//! A real BIND 9 primary for the publishing tests: `named` started from a
//! config this harness writes (one zone, one TSIG key, an update policy
//! granting that key the zone), on a free loopback port, in the foreground,
//! killed when dropped. Reads and edits behind highlander's back go through
//! BIND's own tools (`dig`, `nsupdate`), so the tests check the server's
//! view, not ours.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The TSIG key BIND knows and highlander signs with.
pub const KEY_NAME: &str = "highlander";

/// The zone the primary serves.
pub const ZONE: &str = "example.test.";

/// A running `named`.
pub struct Bind {
    child: Child,
    /// Holds named.conf, the zone file, its journal and the key file.
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    algorithm: &'static str,
    secret: String,
}

impl Bind {
    /// Starts `named` for [`ZONE`] with a fresh hmac-sha256 key.
    pub fn start() -> Result<Bind> {
        Bind::start_with("hmac-sha256")
    }

    /// Starts `named` for [`ZONE`] with a fresh key of `algorithm`.
    pub fn start_with(algorithm: &'static str) -> Result<Bind> {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context(
                "BIND's named is not installed: `apt-get install -y bind9 bind9-dnsutils` (CI's .ci/run does)",
            )?;
        let secret = data_encoding::BASE64.encode(&rand::random::<[u8; 64]>());
        // A port freed just before named binds it can be taken in between,
        // so a failed start is retried on another.
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            write_config(dir.path(), port, algorithm, &secret)?;
            let log = std::fs::File::create(dir.path().join("named.log"))?;
            let child = Command::new(named)
                .args(["-g", "-n", "1", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {named}"))?;
            let mut bind = Bind {
                child,
                dir,
                addr,
                algorithm,
                secret: secret.clone(),
            };
            match bind.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return Ok(bind),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("named did not start")))
    }

    fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("named exited with {status}: {}", self.log());
            }
            if self.dig(ZONE, "SOA").is_ok_and(|lines| !lines.is_empty()) {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("named did not answer within {within:?}: {}", self.log());
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

    /// The `host:port` a `[[publish]]` target names.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// The answer section of `dig name type` against this server, one
    /// record per line as `name ttl class type data`.
    pub fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>> {
        let output = Command::new("dig")
            .args([
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
            ])
            .output()
            .context("cannot run dig: `apt-get install -y bind9-dnsutils`")?;
        if !output.status.success() {
            bail!(
                "dig {name} {rtype} failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Just the data of each `name type` record, sorted.
    pub fn data(&self, name: &str, rtype: &str) -> Result<Vec<String>> {
        let mut data: Vec<String> = self
            .dig(name, rtype)?
            .into_iter()
            .filter(|line| line.split(' ').nth(3) == Some(rtype))
            .map(|line| line.splitn(5, ' ').nth(4).unwrap_or_default().to_owned())
            .collect();
        data.sort();
        Ok(data)
    }

    /// Runs `nsupdate` with `commands` (one per line) for [`ZONE`], signed
    /// with the key: an edit made behind highlander's back.
    pub fn nsupdate(&self, commands: &str) -> Result<()> {
        let script = format!(
            "server {} {}\nzone {ZONE}\n{commands}\nsend\n",
            self.addr.ip(),
            self.addr.port()
        );
        let mut child = Command::new("nsupdate")
            .args([
                "-y",
                &format!("{}:{KEY_NAME}:{}", self.algorithm, self.secret),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nsupdate: `apt-get install -y bind9-dnsutils`")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(script.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "nsupdate failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    // Free on both UDP and TCP, which named binds alike.
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port for named")
}

fn write_config(dir: &Path, port: u16, algorithm: &str, secret: &str) -> Result<()> {
    let d = dir.display();
    std::fs::write(
        dir.join("key.conf"),
        format!("key \"{KEY_NAME}\" {{\n\talgorithm {algorithm};\n\tsecret \"{secret}\";\n}};\n"),
    )?;
    std::fs::write(
        dir.join("zone.db"),
        format!(
            "$TTL 60\n@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 60 60 600 60\n@ IN NS ns.{ZONE}\nns IN A 127.0.0.1\n"
        ),
    )?;
    std::fs::write(
        dir.join("named.conf"),
        format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
include "{d}/key.conf";
zone "{ZONE}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
}};
"#
        ),
    )?;
    Ok(())
}
