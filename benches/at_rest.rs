//! The at-rest benchmark (`cargo bench --bench at_rest`): what a 3-node
//! highlander cluster costs when nothing fails: memory per node and CPU
//! per hour per node, with 100 services of 2 instances each.
//!
//! The instances are 200 HTTP endpoints of one endpoint server process
//! (see `common`) on 127.22.0.1 onwards; every node probes all of them with
//! the default check (HTTP, interval 1 s, timeout 500 ms), so each node
//! makes 200 probes a second, and keeps its Raft heartbeats (50 ms) and
//! health observations going. Nobody queries DNS. After every service has
//! its first decision on every node and a settling time, each node's
//! utime + stime (`/proc/PID/stat`) is read over a window and extrapolated
//! to an hour; RSS (VmRSS) is read at the window's end. The window is
//! repeated and the table shows, per node, the median over the windows.
//! `--smoke` shortens every wait to seconds and runs 10 services.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use highlander::local_cluster::{ClusterSpec, LocalCluster};

use common::{EndpointKind, EndpointRange, Endpoints, ProcUsage, markdown_table, median, mib};

const INSTANCES_PER_SERVICE: u32 = 2;
const NODES: usize = 3;
const BASE: Ipv4Addr = Ipv4Addr::new(127, 22, 0, 1);
const ZONE: &str = "svc.bench.";
/// How long every node may take to answer every service.
const DECIDED_DEADLINE: Duration = Duration::from_secs(60);

/// How long to wait and measure.
struct Plan {
    /// 100 in a full run.
    services: u32,
    settle: Duration,
    window: Duration,
    windows: usize,
}

impl Plan {
    fn new(smoke: bool) -> Plan {
        if smoke {
            // Fewer services: the first decisions are committed one after
            // another, which takes a while for 100 in a debug build.
            Plan {
                services: 10,
                settle: Duration::from_secs(1),
                window: Duration::from_secs(2),
                windows: 2,
            }
        } else {
            Plan {
                services: 100,
                settle: Duration::from_secs(10),
                window: Duration::from_secs(60),
                windows: 3,
            }
        }
    }
}

fn main() -> ExitCode {
    common::bench_main("at_rest", false, |_| run())
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(common::smoke());
    let count = plan.services * INSTANCES_PER_SERVICE;
    let port = common::free_port_on(&[BASE])?;
    let range = EndpointRange {
        kind: EndpointKind::Http,
        first: BASE,
        count,
        port,
    };
    let _endpoints = Endpoints::start(&[range], None)?;
    let binary = Path::new(env!("CARGO_BIN_EXE_highlander"));
    let mut spec = ClusterSpec::new(NODES, ZONE, &services_toml(plan.services, &range));
    spec.die_with_parent = true;
    let cluster = LocalCluster::start(binary, spec)?;
    let result = measure(&cluster, &plan, started).await;
    result.map_err(|e| {
        e.context(format!(
            "node logs (last 20 lines each):\n{}",
            cluster.log_tails(20)
        ))
    })
}

/// Services `s0`, `s1`, …, each with two instances on its own addresses.
fn services_toml(services: u32, range: &EndpointRange) -> String {
    let mut toml = String::new();
    for s in 0..services {
        toml.push_str(&format!(
            "\n[[services]]\nname = \"s{s}\"\n[services.check]\nkind = \"http\"\npath = \"/health\"\n"
        ));
        for i in 0..INSTANCES_PER_SERVICE {
            let addr = range.addr(s * INSTANCES_PER_SERVICE + i);
            toml.push_str(&format!(
                "[[services.instances]]\nname = \"i{i}\"\naddress = \"{addr}\"\na = \"{}\"\npriority = {}\n",
                addr.ip(),
                i + 1
            ));
        }
    }
    toml
}

async fn measure(cluster: &LocalCluster, plan: &Plan, started: Instant) -> Result<()> {
    let ids = cluster.node_ids();
    let decided = Instant::now();
    common::until(
        DECIDED_DEADLINE,
        Duration::from_millis(100),
        "every node answers every service",
        || async {
            for &id in &ids {
                for s in 0..plan.services {
                    if cluster.answer(id, &format!("s{s}")).await?.is_none() {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    eprintln!(
        "every node answers all {} services after {:.1} s; settling for {} s",
        plan.services,
        decided.elapsed().as_secs_f64(),
        plan.settle.as_secs()
    );
    tokio::time::sleep(plan.settle).await;

    let pids: Vec<u32> = ids
        .iter()
        .map(|&id| {
            cluster
                .pid(id)
                .with_context(|| format!("node {id} is not running"))
        })
        .collect::<Result<_>>()?;
    // Per node: CPU seconds per hour and RSS bytes, one of each per window.
    let mut per_hour = vec![Vec::new(); ids.len()];
    let mut rss = vec![Vec::new(); ids.len()];
    for w in 1..=plan.windows {
        let before: Vec<ProcUsage> = pids
            .iter()
            .map(|&p| ProcUsage::of(p))
            .collect::<Result<_>>()?;
        let start = Instant::now();
        tokio::time::sleep(plan.window).await;
        let after: Vec<ProcUsage> = pids
            .iter()
            .map(|&p| ProcUsage::of(p))
            .collect::<Result<_>>()?;
        let elapsed = start.elapsed().as_secs_f64();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            per_hour[i].push(cpu * 3600.0 / elapsed);
            rss[i].push(a.rss_bytes as f64);
            eprintln!(
                "window {w}/{}: node {}: {cpu:.2} CPU s in {elapsed:.1} s ({:.0} s per hour), RSS {} MiB",
                plan.windows,
                ids[i],
                cpu * 3600.0 / elapsed,
                mib(a.rss_bytes)
            );
        }
    }
    let rows: Vec<Vec<String>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let hour = median(&per_hour[i]);
            vec![
                format!("{id}"),
                mib(median(&rss[i]) as u64),
                format!("{hour:.0}"),
                format!("{:.2}", hour / 36.0),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        markdown_table(
            &["node", "RSS MiB", "CPU s per hour", "% of one core"],
            &rows
        )
    );
    println!();
    println!(
        "{NODES} nodes on loopback, {} services × {INSTANCES_PER_SERVICE} HTTP instances (one endpoint server), default timings (check interval 1 s, heartbeat 50 ms); no DNS queries. CPU is utime + stime from /proc/PID/stat over a {} s window, extrapolated to an hour; RSS is VmRSS at the window's end; medians of {} windows after every node answered every service and {} s of settling. Not pinned: the nodes share the machine's 2 cores.",
        plan.services,
        plan.window.as_secs(),
        plan.windows,
        plan.settle.as_secs()
    );
    println!("run took {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}
