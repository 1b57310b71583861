//! The `arbiter` command line: argument parsing, output formatting and exit codes. Each
//! subcommand is a thin layer over [`crate::client::Client`] or [`crate::node::Node`].
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the request, 64 bad usage or
//! configuration (sysexits `EX_USAGE`), 69 no witness reachable (`EX_UNAVAILABLE`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{Client, ClientError};
use crate::config::{NodeConfig, EXIT_CONFIG};
use crate::proto;
use crate::tls::TlsPaths;

const EXIT_REFUSED: u8 = 1;
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "arbiter",
    version,
    about = "Failover arbiter for multi-region disaster recovery"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a witness.
    Serve {
        /// Node file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Validate the node file and exit (0 valid, 64 invalid).
        #[arg(long)]
        check: bool,
        /// UNSAFE, test builds only: the fence step skips the lease wait (breaks S1).
        #[cfg(feature = "unsafe-skip-lease-wait")]
        #[arg(long, hide = true)]
        unsafe_skip_lease_wait: bool,
    },
    /// Initialise a new cluster, once, from the initial peers of the witness's node file.
    Init(Conn),
    /// Who is active for each group, the witnesses and recent decisions.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Serve from the first witness's own applied state without asking the leader (may
        /// be stale; useful during a partition).
        #[arg(long)]
        local: bool,
        /// How many recent audit entries to show.
        #[arg(long, default_value_t = 10)]
        audit: u32,
    },
    /// Stream state changes as they are applied (one JSON object per line).
    Watch(Conn),
    /// Fail GROUP over to REGION: revoke, fence, rpo-check, promote, activate (epoch + 1),
    /// dns, validate. Waits for the operation and prints each step as it completes.
    Failover {
        #[command(flatten)]
        conn: Conn,
        group: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Move GROUP back to a higher-priority region (its first candidate by default).
    Failback {
        #[command(flatten)]
        conn: Conn,
        group: String,
        #[arg(long, default_value = "")]
        to: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Let an operation waiting for approval run, or accept a halted rpo-check.
    Approve {
        #[command(flatten)]
        conn: Conn,
        operation: u64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Run a halted operation's step again.
    Retry {
        #[command(flatten)]
        conn: Conn,
        operation: u64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Skip a halted operation's step (rpo-check, promote, dns or validate only).
    Skip {
        #[command(flatten)]
        conn: Conn,
        operation: u64,
        #[arg(long)]
        step: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Abort an operation before activation: the old region stays active.
    Abort {
        #[command(flatten)]
        conn: Conn,
        operation: u64,
        #[arg(long)]
        reason: String,
    },
    /// Running, halted and past operations with their steps.
    Operations {
        #[command(flatten)]
        conn: Conn,
        /// Only this group.
        #[arg(long, default_value = "")]
        group: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Run the lease-holding sidecar of a database in REGION: acquire and renew the lease,
    /// run --on-gain when it is gained and --on-lose (self-fence) the moment it lapses.
    Agent {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        group: String,
        #[arg(long)]
        region: String,
        /// Shown as the lease holder in `arbiter status` (default: the host name).
        #[arg(long)]
        holder: Option<String>,
        /// Shell command run when a held lease is lost (stop accepting writes). Never run
        /// by an agent that did not hold the lease. Empty: none.
        #[arg(long)]
        on_lose: Option<String>,
        /// Shell command run in the background when the lease is gained (accept writes);
        /// killed with its process group if the lease is lost while it runs. Empty: none.
        #[arg(long)]
        on_gain: Option<String>,
        /// Shell command run once when the agent starts without getting the lease. For the
        /// primary's host: stops a database started before its agent (fail closed). Leave
        /// it out on a standby's host. Empty: none.
        #[arg(long)]
        on_start_without_lease: Option<String>,
        /// Milliseconds --on-gain may run before its process group is killed.
        #[arg(long, default_value_t = crate::agent::ON_GAIN_TIMEOUT_DEFAULT.as_millis() as u64)]
        on_gain_timeout_ms: u64,
        /// Milliseconds --on-lose (and --on-start-without-lease) may run before its process
        /// group is killed.
        #[arg(long, default_value_t = crate::agent::ON_LOSE_TIMEOUT_DEFAULT.as_millis() as u64)]
        on_lose_timeout_ms: u64,
        /// Write the current state here as JSON (atomically).
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Milliseconds between acquire attempts while the lease is not held.
        #[arg(long, default_value_t = 1000)]
        retry_ms: u64,
        /// Watchdog: off, automatic (use --watchdog-device when present) or required
        /// (refuse to start without it, never hold the lease without arming it).
        #[arg(long, value_enum, default_value_t = crate::agent::watchdog::Mode::Off)]
        watchdog: crate::agent::watchdog::Mode,
        /// The watchdog device (`softdog` or a hardware driver), or a stand-in file or FIFO.
        #[arg(long, default_value = "/dev/watchdog")]
        watchdog_device: PathBuf,
        /// While the watchdog is armed, self-fence this many milliseconds before the lease
        /// deadline, so that on-lose finishes before the device fires (below a third of
        /// the lease).
        #[arg(long, default_value_t = crate::agent::WATCHDOG_MARGIN_DEFAULT.as_millis() as u64)]
        watchdog_margin_ms: u64,
        /// Do not run: for systemd's ExecStopPost, after the agent exited. Runs --on-lose
        /// once if --state-file says a fence is pending (the agent died holding the lease);
        /// otherwise nothing.
        #[arg(long)]
        after_exit: bool,
    },
    /// Is EPOCH still current for REGION of GROUP? Exit 0 allowed, 1 refused (for hooks).
    FenceCheck {
        #[command(flatten)]
        conn: Conn,
        group: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        epoch: u64,
    },
    /// Set a group's mode: auto, manual or frozen.
    Mode {
        #[command(flatten)]
        conn: Conn,
        group: String,
        mode: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show or apply the replicated policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// List, add or remove witnesses.
    Members {
        #[command(subcommand)]
        command: MembersCmd,
    },
    /// DNS: compare what every source publishes with the committed state.
    Dns {
        #[command(subcommand)]
        command: DnsCmd,
    },
    /// Watch a failover happen: starts 3 witnesses, 2 simulated regions and their agents on
    /// loopback in this process, makes region-a go dark and prints the timeline. Needs
    /// nothing but this binary; removes its temporary files at exit (Ctrl-C too).
    Demo {
        /// Leave everything running after the scenario for exploring, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
        /// Use fixed loopback ports from this one instead of free ports: witnesses +0..+2,
        /// their DNS servers +3..+5, the simulated regions +6 and +7, the hook receiver +8,
        /// the witnesses' plaintext metrics +9..+11.
        #[arg(long)]
        base_port: Option<u16>,
        /// Real PostgreSQL servers (primary in region-a, streaming standby in region-b) from
        /// the installed server binaries, failed over by the built-in postgres hooks,
        /// instead of simulated databases.
        #[arg(long)]
        postgres: bool,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Validate FILE, show the diff against the committed policy, and commit it.
    Apply {
        #[command(flatten)]
        conn: Conn,
        file: PathBuf,
        /// Validate and show the diff only.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the committed policy version is N.
        #[arg(long, default_value_t = 0)]
        if_version: u64,
    },
    /// Print the committed policy.
    Show(Conn),
}

#[derive(Subcommand, Debug)]
enum MembersCmd {
    List(Conn),
    /// Add a witness: as a learner until it has caught up, then as a voter.
    Add {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        site: String,
    },
    /// Remove a witness from the cluster.
    Remove {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DnsCmd {
    /// Query every DNS source now; exit 1 when one does not match the committed state.
    Check {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Create a development CA and node/client certificates. FOR DEVELOPMENT ONLY.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Extra host names or IPs to put in node certificates.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Whether to wait for an operation to finish.
#[derive(Args, Debug, Clone)]
struct Wait {
    /// Return once the operation is declared instead of waiting for it.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the operation goes on).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// How to reach the cluster.
#[derive(Args, Debug, Clone)]
struct Conn {
    /// Witness address host:port (repeat or comma-separate to list several).
    #[arg(
        long = "server",
        short = 's',
        env = "ARBITER_SERVERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101"
    )]
    servers: Vec<String>,
    /// Directory holding ca.pem, client.pem and client.key (as written by `arbiter certs init`).
    #[arg(long, env = "ARBITER_TLS_DIR", default_value = "certs")]
    tls_dir: PathBuf,
    /// Cluster CA (overrides --tls-dir).
    #[arg(long, env = "ARBITER_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (overrides --tls-dir).
    #[arg(long, env = "ARBITER_CERT")]
    cert: Option<PathBuf>,
    /// Client key (overrides --tls-dir).
    #[arg(long, env = "ARBITER_KEY")]
    key: Option<PathBuf>,
}

impl Conn {
    fn client(&self) -> Result<Client, Failure> {
        let tls = TlsPaths {
            ca: self
                .ca
                .clone()
                .unwrap_or_else(|| self.tls_dir.join("ca.pem")),
            cert: self
                .cert
                .clone()
                .unwrap_or_else(|| self.tls_dir.join("client.pem")),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| self.tls_dir.join("client.key")),
        };
        Client::new(self.servers.clone(), &tls).map_err(|e| Failure::usage(e.to_string()))
    }
}

/// A failed command: the message to print and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: String) -> Self {
        Failure {
            code: EXIT_CONFIG as u8,
            message,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = e.kind.exit_code();
        Failure {
            code,
            message: format!("{} ({})", e.message, e.kind),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo writes its witnesses' logs to a file of its own: the terminal shows its timeline.
    if !matches!(cli.command, Cmd::Demo { .. }) {
        init_logging(cli.log_format);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        #[cfg(not(feature = "unsafe-skip-lease-wait"))]
        Cmd::Serve { config, check } => serve(&config, check).await,
        #[cfg(feature = "unsafe-skip-lease-wait")]
        Cmd::Serve {
            config,
            check,
            unsafe_skip_lease_wait,
        } => {
            if unsafe_skip_lease_wait {
                tracing::warn!(
                    "UNSAFE: the fence step skips the lease wait (split brain possible)"
                );
                crate::leader::executor::UNSAFE_SKIP_LEASE_WAIT
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            serve(&config, check).await
        }
        Cmd::Init(conn) => {
            let client = conn.client()?;
            let reply = client.init().await?;
            println!(
                "cluster {} initialised with {} witnesses",
                reply.cluster_id,
                reply.witnesses.len()
            );
            Ok(())
        }
        Cmd::Status {
            conn,
            json,
            local,
            audit,
        } => {
            let client = conn.client()?;
            let req = proto::StatusRequest {
                local,
                audit_limit: audit.max(1),
            };
            let reply = if local {
                let mut c = client.connect_any().await?;
                c.status(req)
                    .await
                    .map_err(|s| Failure {
                        code: EXIT_UNAVAILABLE,
                        message: s.message().to_string(),
                    })?
                    .into_inner()
            } else {
                client.status(req.audit_limit).await?
            };
            // What each DNS source publishes (only through the leader; best effort).
            let dns = if local {
                Vec::new()
            } else {
                client
                    .dns_check()
                    .await
                    .map(|r| r.sources)
                    .unwrap_or_default()
            };
            if json {
                let mut value = status_json(&reply);
                value["dns"] = serde_json::Value::Array(dns.iter().map(dns_json).collect());
                println!("{value}");
            } else {
                print!("{}", status_table(&reply, audit));
                if !dns.is_empty() {
                    print!("\n{}", dns_table(&dns));
                }
            }
            Ok(())
        }
        Cmd::Watch(conn) => {
            let client = conn.client()?;
            let mut c = client.connect_any().await?;
            let mut stream = c
                .watch(proto::WatchRequest {})
                .await
                .map_err(|s| Failure {
                    code: EXIT_UNAVAILABLE,
                    message: s.message().to_string(),
                })?
                .into_inner();
            while let Some(event) = stream.message().await.map_err(|s| Failure {
                code: EXIT_UNAVAILABLE,
                message: s.message().to_string(),
            })? {
                let line = serde_json::json!({
                    "applied_index": event.applied_index,
                    "groups": event.groups.iter().map(group_json).collect::<Vec<_>>(),
                    "audit": event.audit.iter().map(audit_json).collect::<Vec<_>>(),
                });
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            Ok(())
        }
        Cmd::Failover {
            conn,
            group,
            to,
            reason,
            wait,
        } => start_operation(&conn, group, to, reason, false, &wait).await,
        Cmd::Failback {
            conn,
            group,
            to,
            reason,
            wait,
        } => start_operation(&conn, group, to, reason, true, &wait).await,
        Cmd::Approve {
            conn,
            operation,
            wait,
        } => {
            let client = conn.client()?;
            let reply = client.approve(action(operation, "", "")).await?;
            follow(&client, reply, &wait).await
        }
        Cmd::Retry {
            conn,
            operation,
            wait,
        } => {
            let client = conn.client()?;
            let reply = client.retry(action(operation, "", "")).await?;
            follow(&client, reply, &wait).await
        }
        Cmd::Skip {
            conn,
            operation,
            step,
            wait,
        } => {
            let client = conn.client()?;
            let reply = client.skip(action(operation, &step, "")).await?;
            follow(&client, reply, &wait).await
        }
        Cmd::Abort {
            conn,
            operation,
            reason,
        } => {
            let client = conn.client()?;
            let reply = client.abort(action(operation, "", &reason)).await?;
            let op = reply.operation.unwrap_or_default();
            println!(
                "operation {} aborted: {} stays active at epoch {}",
                op.id, op.from, op.from_epoch
            );
            Ok(())
        }
        Cmd::Operations {
            conn,
            group,
            limit,
            json,
        } => {
            let client = conn.client()?;
            let reply = client
                .operations(proto::OperationsRequest {
                    group,
                    limit,
                    active_only: false,
                })
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(reply.operations.iter().map(operation_json).collect())
                );
            } else {
                print!("{}", operations_table(&reply.operations));
            }
            Ok(())
        }
        Cmd::Mode {
            conn,
            group,
            mode,
            reason,
        } => {
            let client = conn.client()?;
            let reply = client
                .set_mode(proto::SetModeRequest {
                    group,
                    mode,
                    reason,
                    request_id: crate::api::new_request_id(),
                })
                .await?;
            let g = reply.group.unwrap_or_default();
            println!(
                "{}: mode {} (active {}, epoch {})",
                g.name, g.mode, g.active, g.epoch
            );
            Ok(())
        }
        Cmd::Agent {
            conn,
            group,
            region,
            holder,
            on_lose,
            on_gain,
            on_start_without_lease,
            on_gain_timeout_ms,
            on_lose_timeout_ms,
            state_file,
            retry_ms,
            watchdog,
            watchdog_device,
            watchdog_margin_ms,
            after_exit,
        } => {
            if retry_ms == 0 {
                return Err(Failure::usage("--retry-ms must be at least 1".into()));
            }
            let timeout = |flag: &str, ms: u64| {
                let max = crate::agent::COMMAND_TIMEOUT_MAX.as_millis() as u64;
                if ms == 0 || ms > max {
                    Err(Failure::usage(format!(
                        "{flag} {ms}: must be between 1 and {max} ms"
                    )))
                } else {
                    Ok(std::time::Duration::from_millis(ms))
                }
            };
            let on_gain_timeout = timeout("--on-gain-timeout-ms", on_gain_timeout_ms)?;
            let on_lose_timeout = timeout("--on-lose-timeout-ms", on_lose_timeout_ms)?;
            if watchdog_margin_ms == 0 {
                return Err(Failure::usage(
                    "--watchdog-margin-ms 0: must be at least 1 (on-lose needs time to finish before the watchdog fires)".into(),
                ));
            }
            // An empty command (an unset variable in a unit's environment file) is none.
            let command = |c: Option<String>| c.filter(|c| !c.trim().is_empty());
            let holder = holder.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "agent".into())
            });
            let mut config = crate::agent::AgentConfig::new(&group, &region, &holder);
            config.on_lose = command(on_lose);
            config.on_gain = command(on_gain);
            config.on_start_without_lease = command(on_start_without_lease);
            config.on_gain_timeout = on_gain_timeout;
            config.on_lose_timeout = on_lose_timeout;
            config.state_file = state_file;
            config.retry = std::time::Duration::from_millis(retry_ms);
            if after_exit {
                let Some(path) = config.state_file.clone() else {
                    return Err(Failure::usage(
                        "--after-exit needs --state-file: where the agent recorded whether a fence is pending".into(),
                    ));
                };
                return if crate::agent::after_exit(&config, &path).await {
                    Ok(())
                } else {
                    Err(Failure {
                        code: EXIT_REFUSED,
                        message: "on-lose did not succeed after the agent exited".into(),
                    })
                };
            }
            let watchdog = crate::agent::watchdog::Config {
                mode: watchdog,
                path: watchdog_device,
                margin: std::time::Duration::from_millis(watchdog_margin_ms),
            };
            if watchdog.check().map_err(Failure::usage)? {
                config.watchdog = Some(watchdog);
            }
            let client = conn.client()?;
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => futures::future::pending().await } } => {}
                }
            };
            crate::agent::run(config, client, shutdown).await;
            Ok(())
        }
        Cmd::FenceCheck {
            conn,
            group,
            region,
            epoch,
        } => {
            let client = conn.client()?;
            let lease = crate::fencing::LeaseClient::new(client, &group, &region, "");
            let reply = lease.check(epoch).await?;
            if reply.allowed {
                println!("allowed: {region} is active for {group} at epoch {epoch}");
                Ok(())
            } else {
                Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!("refused ({}): {}", reply.refusal, reply.message),
                })
            }
        }
        Cmd::Dns {
            command: DnsCmd::Check { conn, json },
        } => {
            let client = conn.client()?;
            let reply = client.dns_check().await?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(reply.sources.iter().map(dns_json).collect())
                );
            } else {
                print!("{}", dns_table(&reply.sources));
            }
            let bad = reply.sources.iter().filter(|s| !s.matches).count();
            if bad > 0 {
                return Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!("{bad} DNS source(s) do not publish the committed state"),
                });
            }
            Ok(())
        }
        Cmd::Demo {
            keep_running,
            base_port,
            postgres,
        } => crate::demo::run(crate::demo::Options {
            keep_running,
            base_port,
            postgres,
        })
        .await
        .map_err(|e| Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }),
        Cmd::Policy { command } => policy(command).await,
        Cmd::Members { command } => members(command).await,
        Cmd::Certs {
            command:
                CertsCmd::Init {
                    out,
                    nodes,
                    hosts,
                    force,
                },
        } => {
            let written = crate::certs::init_dev_certs(&out, nodes, &hosts, force)
                .map_err(|e| Failure::usage(e.to_string()))?;
            eprintln!("warning: these certificates are for development only; use your own CA in production");
            println!(
                "wrote a development CA and {} node certificates to {}",
                written.nodes.len(),
                out.display()
            );
            Ok(())
        }
    }
}

async fn serve(path: &Path, check: bool) -> Result<(), Failure> {
    let config =
        NodeConfig::load(path).map_err(|e| Failure::usage(format!("invalid node file: {e}")))?;
    if check {
        println!(
            "{}: ok (node {}, site {}, {} initial peers)",
            path.display(),
            config.id,
            config.site,
            config.peers.len()
        );
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure {
            code: EXIT_UNAVAILABLE,
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => futures::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
    };
    let node = crate::node::Node::start(config, listener, shutdown)
        .await
        .map_err(|e| Failure {
            code: EXIT_REFUSED,
            message: e.to_string(),
        })?;
    node.wait().await.map_err(|e| Failure {
        code: EXIT_REFUSED,
        message: e.to_string(),
    })
}

async fn policy(cmd: PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Apply {
            conn,
            file,
            dry_run,
            if_version,
        } => {
            let toml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::usage(format!("{}: cannot read: {e}", file.display())))?;
            // Validate locally first for a precise message; the leader validates again.
            crate::config::Policy::parse(&file.display().to_string(), &toml)
                .map_err(|e| Failure::usage(format!("invalid policy: {e}")))?;
            let client = conn.client()?;
            let reply = client
                .policy_apply(proto::PolicyApplyRequest {
                    toml,
                    dry_run,
                    if_version,
                    request_id: crate::api::new_request_id(),
                })
                .await?;
            if reply.diff.is_empty() {
                println!("no changes");
            } else {
                print!("{}", reply.diff);
            }
            if reply.applied {
                println!("policy version {} committed", reply.version);
            } else {
                println!(
                    "dry run: nothing committed (current version {})",
                    reply.version
                );
            }
            Ok(())
        }
        PolicyCmd::Show(conn) => {
            let client = conn.client()?;
            let reply = client.policy_show().await?;
            println!("# policy version {}", reply.version);
            print!("{}", reply.toml);
            Ok(())
        }
    }
}

async fn members(cmd: MembersCmd) -> Result<(), Failure> {
    let reply = match cmd {
        MembersCmd::List(conn) => conn.client()?.members_list().await?,
        MembersCmd::Add {
            conn,
            id,
            addr,
            site,
        } => {
            conn.client()?
                .members_add(proto::MembersAddRequest { id, addr, site })
                .await?
        }
        MembersCmd::Remove { conn, id } => conn.client()?.members_remove(id).await?,
    };
    print!("{}", witness_table(&reply.witnesses));
    Ok(())
}

fn dns_json(s: &proto::DnsSourceStatus) -> serde_json::Value {
    serde_json::json!({
        "group": s.group, "name": s.name, "source": s.source, "expected": s.expected,
        "found": s.found, "matches": s.matches, "error": s.error,
        "marker_expected": s.marker_expected, "marker_found": s.marker_found,
        "marker_problem": s.marker_problem,
    })
}

fn dns_table(sources: &[proto::DnsSourceStatus]) -> String {
    if sources.is_empty() {
        return "no group has a DNS record\n".to_string();
    }
    let mut out = format!(
        "{:<12} {:<28} {:<24} {:<6} {}\n",
        "GROUP", "NAME", "SOURCE", "MATCH", "PUBLISHES"
    );
    for s in sources {
        let mut found = if !s.error.is_empty() {
            format!("error: {}", s.error)
        } else {
            s.found.join(", ")
        };
        // External servers: their `_arbiter.` marker, shown only when it is not current.
        if !s.marker_problem.is_empty() {
            found += &format!("; marker: {}", s.marker_problem);
        }
        let matches = if s.matches { "yes" } else { "NO" };
        out += &format!(
            "{:<12} {:<28} {:<24} {:<6} {}\n",
            s.group, s.name, s.source, matches, found
        );
    }
    out
}

/// Starts a failover (or a failback) of `group` and follows it (see [`follow`]).
async fn start_operation(
    conn: &Conn,
    group: String,
    to: String,
    reason: String,
    failback: bool,
    wait: &Wait,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let req = proto::FailoverRequest {
        group,
        to,
        reason,
        request_id: crate::api::new_request_id(),
    };
    let reply = if failback {
        client.failback(req).await?
    } else {
        client.failover(req).await?
    };
    follow(&client, reply, wait).await
}

fn action(operation: u64, step: &str, reason: &str) -> proto::OperationAction {
    proto::OperationAction {
        operation,
        step: step.to_string(),
        reason: reason.to_string(),
        request_id: crate::api::new_request_id(),
    }
}

/// Prints an operation's steps as they complete until it is done, aborted, halted or
/// waiting for approval, or until the wait times out. Exit: 0 done (or not waiting),
/// 1 halted, aborted or timed out.
async fn follow(client: &Client, reply: proto::OperationReply, wait: &Wait) -> Result<(), Failure> {
    /// How often the operation is polled while waiting.
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);
    let mut op = reply.operation.unwrap_or_default();
    println!(
        "operation {} ({}) of {}: {} -> {}, epoch {} -> {} [{}]",
        op.id, op.kind, op.group, op.from, op.to, op.from_epoch, op.to_epoch, op.state
    );
    if wait.no_wait {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut printed = 0;
    loop {
        for s in op.steps.iter().skip(printed) {
            println!(
                "  {:>7.1}s  {:<10} {:<9} {}",
                started.elapsed().as_secs_f64(),
                s.step,
                s.outcome,
                s.detail.lines().next().unwrap_or("")
            );
        }
        printed = op.steps.len();
        match op.state.as_str() {
            "done" => {
                println!("done: {} active at epoch {} after {:.1}s", op.to, op.to_epoch, started.elapsed().as_secs_f64());
                return Ok(());
            }
            "aborted" => {
                return Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!("operation {} aborted: {}", op.id, op.error),
                })
            }
            "halted" => {
                return Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!(
                        "operation {} halted at {}: {}\n  then: arbiter retry {} | arbiter skip {} --step {} | arbiter abort {} --reason ...",
                        op.id, op.step, op.error, op.id, op.id, op.step, op.id
                    ),
                })
            }
            "awaiting-approval" => {
                println!("waiting for approval: arbiter approve {}", op.id);
                return Ok(());
            }
            _ => {}
        }
        if started.elapsed() > std::time::Duration::from_secs(wait.timeout) {
            return Err(Failure {
                code: EXIT_REFUSED,
                message: format!(
                    "operation {} still at step {} after {}s; it goes on: arbiter operations",
                    op.id, op.step, wait.timeout
                ),
            });
        }
        tokio::time::sleep(POLL).await;
        if let Some(o) = client.operation(&op.group, op.id).await? {
            op = o;
        }
    }
}

fn operation_json(o: &proto::OperationStatus) -> serde_json::Value {
    serde_json::json!({
        "id": o.id, "group": o.group, "kind": o.kind, "from": o.from, "to": o.to,
        "from_epoch": o.from_epoch, "to_epoch": o.to_epoch, "reason": o.reason, "actor": o.actor,
        "state": o.state, "error": o.error, "step": o.step, "created_at_ms": o.created_at_ms,
        "steps": o.steps.iter().map(|s| serde_json::json!({
            "step": s.step, "outcome": s.outcome, "detail": s.detail,
            "finished_at_ms": s.finished_at_ms, "index": s.index,
        })).collect::<Vec<_>>(),
    })
}

fn operations_table(ops: &[proto::OperationStatus]) -> String {
    let mut out = format!(
        "{:<5} {:<12} {:<10} {:<22} {:<18} {:<10} {}\n",
        "ID", "GROUP", "KIND", "FROM -> TO", "STATE", "STEP", "TOOK"
    );
    for o in ops {
        let took = match (o.steps.first(), o.steps.last()) {
            (Some(a), Some(b)) if b.finished_at_ms >= a.finished_at_ms => format!(
                "{:.1}s",
                (b.finished_at_ms - a.finished_at_ms) as f64 / 1000.0
            ),
            _ => "-".into(),
        };
        out += &format!(
            "{:<5} {:<12} {:<10} {:<22} {:<18} {:<10} {}\n",
            o.id,
            o.group,
            o.kind,
            format!("{} -> {}", o.from, o.to),
            o.state,
            o.step,
            took
        );
        let mut prev = o.steps.first().map(|s| s.finished_at_ms).unwrap_or(0);
        for s in &o.steps {
            out += &format!(
                "        {:<10} {:<9} +{:.1}s  {}\n",
                s.step,
                s.outcome,
                s.finished_at_ms.saturating_sub(prev) as f64 / 1000.0,
                s.detail.lines().next().unwrap_or("")
            );
            prev = s.finished_at_ms;
        }
        if !o.error.is_empty() {
            out += &format!("        error: {}\n", o.error);
        }
    }
    out
}

fn group_json(g: &proto::GroupStatus) -> serde_json::Value {
    serde_json::json!({
        "name": g.name, "active": g.active, "epoch": g.epoch, "mode": g.mode, "candidates": g.candidates,
    })
}

fn audit_json(a: &proto::AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": a.seq, "index": a.index, "at_ms": a.at_ms, "actor": a.actor, "group": a.group,
        "kind": a.kind, "detail": a.detail, "epoch": a.epoch,
    })
}

fn status_json(r: &proto::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "cluster_id": r.cluster_id,
        "served_by": r.served_by,
        "local": r.local,
        "leader_id": r.leader_id,
        "term": r.term,
        "applied_index": r.applied_index,
        "policy_version": r.policy_version,
        "groups": r.groups.iter().map(group_json).collect::<Vec<_>>(),
        "witnesses": r.witnesses.iter().map(|w| serde_json::json!({
            "id": w.id, "addr": w.addr, "site": w.site, "role": w.role,
            "last_contact_ms": w.last_contact_ms, "matched_index": w.matched_index,
        })).collect::<Vec<_>>(),
        "audit": r.audit.iter().map(audit_json).collect::<Vec<_>>(),
        "regions": r.regions.iter().map(|g| serde_json::json!({
            "name": g.name, "verdict": g.verdict, "voters_seeing_down": g.voters_seeing_down,
            "voters_seeing_up": g.voters_seeing_up, "voters": g.voters,
        })).collect::<Vec<_>>(),
        "operations": r.operations.iter().map(operation_json).collect::<Vec<_>>(),
        "leases": r.leases.iter().map(|l| serde_json::json!({
            "group": l.group, "region": l.region, "holder": l.holder, "epoch": l.epoch,
            "remaining_ms": l.remaining_ms,
        })).collect::<Vec<_>>(),
    })
}

fn witness_table(ws: &[proto::WitnessStatus]) -> String {
    let mut out = format!(
        "{:<4} {:<8} {:<12} {:<22} {:>12} {:>8}\n",
        "ID", "ROLE", "SITE", "ADDR", "LAST-CONTACT", "MATCHED"
    );
    for w in ws {
        let contact = w
            .last_contact_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "-".into());
        let matched = w
            .matched_index
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<4} {:<8} {:<12} {:<22} {:>12} {:>8}\n",
            w.id, w.role, w.site, w.addr, contact, matched
        );
    }
    out
}

fn status_table(r: &proto::StatusReply, audit: u32) -> String {
    let leader = r
        .leader_id
        .and_then(|id| r.witnesses.iter().find(|w| w.id == id))
        .map(|w| format!("witness {} ({}, {})", w.id, w.site, w.addr))
        .unwrap_or_else(|| "none".into());
    let mut out = format!(
        "cluster {}  leader {}  term {}  applied {}  policy v{}{}\n\n",
        if r.cluster_id.is_empty() {
            "(not initialised)"
        } else {
            &r.cluster_id
        },
        leader,
        r.term,
        r.applied_index,
        r.policy_version,
        if r.local {
            format!("  [local view of witness {}, may be stale]", r.served_by)
        } else {
            String::new()
        }
    );
    out += &format!(
        "{:<16} {:<12} {:>6} {:<8} {}\n",
        "GROUP", "ACTIVE", "EPOCH", "MODE", "CANDIDATES"
    );
    for g in &r.groups {
        out += &format!(
            "{:<16} {:<12} {:>6} {:<8} {}\n",
            g.name,
            g.active,
            g.epoch,
            g.mode,
            g.candidates.join(",")
        );
    }
    if r.groups.is_empty() {
        out += "(no groups: apply a policy with `arbiter policy apply FILE`)\n";
    }
    if !r.regions.is_empty() {
        out += &format!(
            "\n{:<16} {:<8} {}\n",
            "REGION", "VERDICT", "WITNESSES (voters seeing it down / up)"
        );
        for g in &r.regions {
            out += &format!(
                "{:<16} {:<8} {} down / {} up of {}\n",
                g.name, g.verdict, g.voters_seeing_down, g.voters_seeing_up, g.voters
            );
        }
    }
    if !r.operations.is_empty() {
        out += "\nOPERATIONS IN PROGRESS\n";
        for o in &r.operations {
            out += &format!(
                "#{:<4} {:<12} {} -> {}  {}  step {}{}\n",
                o.id,
                o.group,
                o.from,
                o.to,
                o.state,
                o.step,
                if o.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", o.error)
                }
            );
        }
    }
    if !r.leases.is_empty() {
        out += &format!(
            "\n{:<16} {:<12} {:<20} {:>6} {:>12}\n",
            "LEASE GROUP", "REGION", "HOLDER", "EPOCH", "REMAINING"
        );
        for l in &r.leases {
            let remaining = if l.remaining_ms >= 0 {
                format!("{} ms", l.remaining_ms)
            } else {
                "expired".into()
            };
            out += &format!(
                "{:<16} {:<12} {:<20} {:>6} {:>12}\n",
                l.group, l.region, l.holder, l.epoch, remaining
            );
        }
    }
    out += "\n";
    out += &witness_table(&r.witnesses);
    if audit > 0 && !r.audit.is_empty() {
        out += "\nRECENT DECISIONS (newest first)\n";
        for a in &r.audit {
            let group = if a.group.is_empty() { "-" } else { &a.group };
            let detail = a.detail.lines().next().unwrap_or("");
            out += &format!(
                "#{:<5} idx {:<6} {:<14} {:<12} {:<10} {}\n",
                a.seq, a.index, a.kind, group, a.actor, detail
            );
        }
    }
    out
}
