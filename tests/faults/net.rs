//! The network sandbox: one namespace per coordinator node and per
//! instance, each with a veth pair into a bridge that lives in a namespace
//! of its own, and addresses (10.77.0.0/24) that exist only in there.
//! Faults are nftables rules inside a member's namespace, so they act on
//! exactly that member's traffic. Everything made is removed on drop, and
//! leftovers of a run that was killed are swept at the next start.
//!
//! Sockets are created inside a namespace by a short-lived thread that
//! enters it (`setns`) first: a socket stays in the namespace it was made in,
//! so the runner's own tasks can query a node's DNS or API from within.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The prefix of every namespace this suite makes, then the runner's pid.
const PREFIX: &str = "hlf";

/// Runs `ip` (or `nft` through `ip netns exec`) and fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this machine lets us make namespaces, and if not, why.
pub fn available() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fault suite needs root (network namespaces, nftables)");
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("`{tool}` is missing: apt-get install -y iproute2 nftables (CI's .ci/run does)");
        }
    }
    let probe = format!("{PREFIX}-probe-{}", std::process::id());
    run("ip", &["netns", "add", &probe]).context("cannot create a network namespace")?;
    run("ip", &["netns", "del", &probe])?;
    Ok(())
}

/// The source name of the small filesystems a node's data dir is mounted
/// on: this, then the runner's pid, so a sweep can find those a killed run
/// left.
pub fn mount_source() -> String {
    format!("highlander-fault-{}", std::process::id())
}

/// Whether `pid` (as text) names a process that no longer runs.
fn gone(pid: Option<&str>) -> bool {
    pid.and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes namespaces, and unmounts the small data-dir filesystems, left by
/// runs whose process is gone.
pub fn sweep_leftovers() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(source), Some(target)) = (fields.next(), fields.next()) {
            if gone(source.strip_prefix("highlander-fault-")) {
                let _ = run("umount", &["-l", target]);
            }
        }
    }
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        if gone(rest.split('-').next()) {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// One member of the sandbox: a namespace with one interface and address.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one run.
pub struct Sandbox {
    bridge: String,
    members: Vec<Member>,
}

impl Sandbox {
    /// The bridge and one member per `(name, last octet)`.
    pub fn new(members: &[(&str, u8)]) -> Result<Sandbox> {
        let pid = std::process::id();
        let bridge = format!("{PREFIX}-{pid}-br");
        let mut sandbox = Sandbox {
            bridge: bridge.clone(),
            members: Vec::new(),
        };
        run("ip", &["netns", "add", &bridge])?;
        run(
            "ip",
            &["-n", &bridge, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", &bridge, "link", "set", "br0", "up"])?;
        for &(name, octet) in members {
            let ns = format!("{PREFIX}-{pid}-{name}");
            let ip = Ipv4Addr::new(10, 77, 0, octet);
            run("ip", &["netns", "add", &ns])?;
            sandbox.members.push(Member {
                name: name.to_owned(),
                ns: ns.clone(),
                ip,
            });
            let port = format!("p-{name}");
            run(
                "ip",
                &[
                    "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &bridge, "link", "set", &port, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            nft(
                &ns,
                "add table inet fault\n\
                 add chain inet fault input { type filter hook input priority 0; policy accept; }\n\
                 add chain inet fault output { type filter hook output priority 0; policy accept; }",
            )?;
        }
        Ok(sandbox)
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no sandbox member {name}"))
    }

    /// Drops everything `name` sends to or receives from `peers` on its
    /// interface (traffic inside its namespace, over `lo`, is untouched).
    pub fn cut(&self, name: &str, peers: &[Ipv4Addr]) -> Result<()> {
        let ns = &self.member(name)?.ns;
        let set = address_set(peers);
        nft(
            ns,
            &format!(
                "add rule inet fault input iifname \"eth0\" ip saddr {set} drop\n\
                 add rule inet fault output oifname \"eth0\" ip daddr {set} drop"
            ),
        )
    }

    /// Drops everything on `name`'s interface: a full isolation that its
    /// own processes and the runner's clients inside it do not notice.
    pub fn isolate(&self, name: &str) -> Result<()> {
        let ns = &self.member(name)?.ns;
        nft(
            ns,
            "add rule inet fault input iifname \"eth0\" drop\n\
             add rule inet fault output oifname \"eth0\" drop",
        )
    }

    /// Drops `percent` % of the packets `name` receives from `peers`, at random.
    pub fn lose(&self, name: &str, peers: &[Ipv4Addr], percent: u8) -> Result<()> {
        let ns = &self.member(name)?.ns;
        let set = address_set(peers);
        nft(
            ns,
            &format!(
                "add rule inet fault input iifname \"eth0\" ip saddr {set} numgen random mod 100 < {percent} counter drop"
            ),
        )
    }

    /// How many packets the counted rules of `name`'s input chain (those of
    /// [`Sandbox::lose`]) have dropped: the proof that a loss fault bit.
    pub fn dropped(&self, name: &str) -> Result<u64> {
        let ns = &self.member(name)?.ns;
        let output = Command::new("ip")
            .args([
                "netns", "exec", ns, "nft", "list", "chain", "inet", "fault", "input",
            ])
            .output()
            .context("cannot run nft")?;
        if !output.status.success() {
            bail!(
                "nft list chain in {ns} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut words = text.split_whitespace();
        let mut packets = 0;
        while let Some(word) = words.next() {
            if word == "packets" {
                packets += words
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(packets)
    }

    /// Removes every fault from `name`.
    pub fn heal(&self, name: &str) -> Result<()> {
        let ns = &self.member(name)?.ns;
        nft(
            ns,
            "flush chain inet fault input\nflush chain inet fault output",
        )
    }

    /// Removes every fault from every member.
    pub fn heal_all(&self) -> Result<()> {
        for member in &self.members {
            self.heal(&member.name)?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for member in &self.members {
            let _ = run("ip", &["netns", "del", &member.ns]);
        }
        let _ = run("ip", &["netns", "del", &self.bridge]);
    }
}

fn address_set(peers: &[Ipv4Addr]) -> String {
    let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

/// Applies an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            child.wait_with_output()
        })
        .context("cannot run nft")?;
    if !output.status.success() {
        bail!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `make` on a thread that has entered namespace `ns`, so whatever
/// socket it creates lives there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let thread = std::thread::spawn(move || {
        // SAFETY: the fd is open for the whole call; entering a network
        // namespace affects only this thread, which ends right after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        make()
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        .with_context(|| format!("in namespace {ns}"))
}
