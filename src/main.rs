//! The `highlander` binary: command line, logging and exit codes.
//!
//! Startup reads like a script: parse the command line, start logging, load
//! the config (exit 2 on a bad one, before anything listens), bind, log the
//! bound addresses, run until SIGINT/SIGTERM, then drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use highlander::config::{self, Config};
use highlander::ctl;
use highlander::node::{Node, NodeError};
use tokio_util::sync::CancellationToken;

/// Exit code for a bad config, secret or command line (the node never started).
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while running.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "highlander",
    version,
    about = "There can be only one: a highly available cluster that keeps exactly one healthy instance of each service active and answers it in DNS.",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one coordinator node of the cluster described by the config file.
    ///
    /// The node health-checks every instance of every service, records the
    /// active instance of each service in its Raft log under
    /// `data_dir/node-N`, and answers DNS for the zone on its `dns` address
    /// (UDP and TCP). Stop it with SIGINT or SIGTERM.
    Run {
        /// The cluster config file (TOML); every node reads the same file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Which `[[cluster.nodes]]` entry this process is.
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
    /// Validate a config file and print what it means.
    ///
    /// Exit 0 when it is valid, 2 with every problem listed (file, key,
    /// value, what would be accepted) when not. The secret file is read too.
    CheckConfig {
        /// The cluster config file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also check that this node id is listed.
        #[arg(long, value_name = "N")]
        node_id: Option<u64>,
    },
    /// Show the cluster as one node sees it: roles, every service's active
    /// instance and epoch, every instance's health by node.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move a service to another healthy instance (planned change).
    ///
    /// Without --to, the best healthy other instance by priority. Refused
    /// (with the reason) when the target is down, drained or already active.
    Switchover {
        /// The service to move.
        service: String,
        /// The instance to move it to.
        #[arg(long, value_name = "INSTANCE")]
        to: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put an instance in maintenance: it is never chosen while drained; an
    /// active one is first replaced by the best healthy other instance.
    Drain {
        service: String,
        instance: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take an instance out of maintenance.
    Undrain {
        service: String,
        instance: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a three-node cluster, two HTTP instances and a client on
    /// loopback, and show failover, leader loss and failback, measured.
    ///
    /// Nothing else to install: the nodes are child processes of this
    /// binary in a temporary directory, removed (with every child) on exit,
    /// Ctrl-C, a panic or a killed demo. Exit 0 when every check held.
    Demo {
        /// Wait for a key before each step (k: kill the active instance,
        /// l: kill the leader, r: restore everything, q: quit).
        #[arg(long, conflicts_with = "scripted")]
        interactive: bool,
        /// Run the story without pauses and exit with the summary (1 if a
        /// check failed).
        #[arg(long)]
        scripted: bool,
        /// Configure `failback = "manual"`: the primary, once back, is not
        /// made active again.
        #[arg(long)]
        manual_failback: bool,
    },
    /// Removes a demo's temporary directory once the demo exits (internal).
    #[command(hide = true)]
    DemoJanitor {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the committed changes (time, index, service, epoch, from, to, reason).
    Events {
        /// Only changes after this Raft log index.
        #[arg(long, default_value_t = 0, value_name = "INDEX")]
        since: u64,
        /// Keep printing new changes as they are committed.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the operator commands find the API.
#[derive(clap::Args)]
struct ApiArgs {
    /// The HTTP API of any node, like http://127.0.0.1:8101 (default: the
    /// first node of --config).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// The cluster config (for the default API address and the API token).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The API bearer token file (default: the config's [api] token_file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, node_id } => check_config(&file, node_id),
        Command::Status { api } => operate(&api, |t, json| async move {
            ctl::status(&t, json).await.map(|out| print!("{out}"))
        }),
        Command::Switchover { service, to, api } => operate(&api, |t, json| async move {
            ctl::switchover(&t, &service, to.as_deref(), json)
                .await
                .map(|out| print!("{out}"))
        }),
        Command::Drain {
            service,
            instance,
            api,
        } => operate(&api, |t, json| async move {
            ctl::drain(&t, &service, &instance, false, json)
                .await
                .map(|out| print!("{out}"))
        }),
        Command::Undrain {
            service,
            instance,
            api,
        } => operate(&api, |t, json| async move {
            ctl::drain(&t, &service, &instance, true, json)
                .await
                .map(|out| print!("{out}"))
        }),
        Command::Events { since, follow, api } => operate(&api, |t, json| async move {
            ctl::events(&t, since, follow, json, |line| println!("{line}")).await
        }),
        Command::Demo {
            interactive,
            scripted,
            manual_failback,
        } => demo(interactive, scripted, manual_failback),
        Command::DemoJanitor { dir } => match highlander::demo::janitor(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("highlander demo-janitor: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Run { config, node_id } => {
            init_logging();
            let config = match load(&config, Some(node_id)) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("highlander: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            runtime.block_on(run(config, node_id))
        }
    }
}

/// Runs one operator command against the API; exit 2 for a usage or config
/// problem, 1 for a refusal or an unreachable node (with the server's message).
fn operate<F, Fut>(args: &ApiArgs, command: F) -> ExitCode
where
    F: FnOnce(ctl::Target, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), ctl::CtlError>>,
{
    let target = match ctl::Target::resolve(
        args.api.as_deref(),
        args.config.as_deref(),
        args.token_file.as_deref(),
    ) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("highlander: {e}");
            return ExitCode::from(if e.is_usage() {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("highlander: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(command(target, args.json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("highlander: {e}");
            ExitCode::from(if e.is_usage() {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            })
        }
    }
}

fn demo(interactive: bool, scripted: bool, manual_failback: bool) -> ExitCode {
    use highlander::demo::{self, DemoError, DemoOptions, Pace, Style};
    use std::io::IsTerminal;
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("highlander: cannot find this binary to run the nodes: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let options = DemoOptions {
        binary,
        pace: match (interactive, scripted) {
            (true, _) => Pace::Interactive,
            (_, true) => Pace::Scripted,
            _ => Pace::Narrated,
        },
        manual_failback,
        colour,
    };
    // Multi-threaded: the story blocks this (main) thread while it starts
    // nodes, which must be spawned from a thread living as long as the demo.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("highlander: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(demo::run(options));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(summary) => {
            println!("\n{}", summary.render(Style::new(colour)));
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e @ DemoError::Interrupted(_)) => {
            eprintln!("highlander demo: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("highlander demo: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // hickory logs two INFO lines per query; keep its warnings only.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,hickory_server=warn,hickory_proto=warn,openraft=error")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LossyStderr)
        .init();
}

/// Standard error that drops what it cannot write. A node whose log reader
/// went away (a closed pipe) must keep running and still stop cleanly:
/// tracing-subscriber reports a failed write with `eprintln!`, which panics
/// on a closed stderr.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn load(file: &std::path::Path, node_id: Option<u64>) -> Result<Config, ExitCode> {
    let config = Config::load(file).and_then(|c| match node_id {
        Some(id) => c.node(id).map(|_| ()).map(|()| c),
        None => Ok(c),
    });
    config.map_err(|e| {
        eprintln!("highlander: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(file: &std::path::Path, node_id: Option<u64>) -> ExitCode {
    match load(file, node_id) {
        Ok(config) => {
            print!("{}", config::describe(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run(config: Config, node_id: u64) -> ExitCode {
    let node = match Node::bind(config, node_id).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("highlander: {e}");
            return ExitCode::from(match e {
                NodeError::Config(_) => EXIT_CONFIG,
                _ => EXIT_FAILURE,
            });
        }
    };
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(shutdown_signal(cancel.clone()));
    let result = node.run(cancel).await;
    signals.abort();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM.
async fn shutdown_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    cancel.cancel();
}
