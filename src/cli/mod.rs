//! The `arbiter` command line: argument parsing, output formatting and exit codes. Each
//! subcommand is a thin layer over [`crate::client::Client`] or [`crate::node::Node`].
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the request, 64 bad usage or
//! configuration (sysexits `EX_USAGE`), 69 no witness reachable (`EX_UNAVAILABLE`). An error
//! from the cluster exits with the code of its kind ([`crate::api::ErrorKind::exit_code`]).
//!
//! # Layout
//!
//! - `args`: the commands and flags (their doc comments are the help text), and the client
//!   the connection flags describe.
//! - `cluster`: `init`, `status`, `watch` and `dns check`: what the cluster is and shows.
//! - `operations`: `failover`, `failback`, `approve`, `retry`, `skip`, `abort`, `operations`
//!   and `mode`, and following an operation until it ends.
//! - `admin`: `policy apply`/`show` and `members list`/`add`/`remove`.
//! - `entry`: the programs this binary also is: `serve` (a witness), `agent`, `fence-check`,
//!   `demo` and `certs init`.
//! - `output`: the tables and JSON printed for replies; pure functions of a reply.
//!
//! This module must never decide anything the cluster decides: it parses, sends, prints and
//! maps errors to exit codes.

mod admin;
mod args;
mod cluster;
mod entry;
mod operations;
mod output;

use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;
use args::{CertsCmd, Cmd, DnsCmd, LogFormat};

use crate::client::ClientError;
use crate::config::EXIT_CONFIG;

const EXIT_REFUSED: u8 = 1;
const EXIT_UNAVAILABLE: u8 = 69;

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

    /// The cluster refused or failed the request (exit 1).
    fn refused(message: String) -> Self {
        Failure {
            code: EXIT_REFUSED,
            message,
        }
    }

    /// A witness asked directly (no leader needed) did not serve the call: exit 69, unless
    /// it answered with a kind of error of its own (a permission denial is 77 wherever it
    /// comes from).
    fn unavailable(status: tonic::Status) -> Self {
        if status.metadata().get(crate::api::META_ERROR).is_some() {
            return Failure::from(ClientError::from_status(&status));
        }
        Failure {
            code: EXIT_UNAVAILABLE,
            message: status.message().to_string(),
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
    // Usage errors exit 64 (EX_USAGE) like every other bad input; help and version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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

/// Runs one command.
async fn run(cmd: Cmd) -> Result<(), Failure> {
    use operations::Resume;
    match cmd {
        #[cfg(not(feature = "unsafe-skip-lease-wait"))]
        Cmd::Serve { config, check } => entry::serve(&config, check).await,
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
            entry::serve(&config, check).await
        }
        Cmd::Init(conn) => cluster::init(&conn).await,
        Cmd::Status {
            conn,
            json,
            local,
            audit,
        } => cluster::status(&conn, json, local, audit).await,
        Cmd::Watch(conn) => cluster::watch(&conn).await,
        Cmd::Failover {
            conn,
            group,
            to,
            reason,
            wait,
        } => operations::start(&conn, group, to, reason, false, &wait).await,
        Cmd::Failback {
            conn,
            group,
            to,
            reason,
            wait,
        } => operations::start(&conn, group, to, reason, true, &wait).await,
        Cmd::Approve {
            conn,
            operation,
            break_glass,
            wait,
        } => {
            let resume = Resume::Approve { break_glass };
            operations::resume(&conn, resume, operation, "", &wait).await
        }
        Cmd::Retry {
            conn,
            operation,
            wait,
        } => operations::resume(&conn, Resume::Retry, operation, "", &wait).await,
        Cmd::Skip {
            conn,
            operation,
            step,
            wait,
        } => operations::resume(&conn, Resume::Skip, operation, &step, &wait).await,
        Cmd::Abort {
            conn,
            operation,
            reason,
        } => operations::abort(&conn, operation, &reason).await,
        Cmd::Operations {
            conn,
            group,
            limit,
            json,
        } => operations::list(&conn, group, limit, json).await,
        Cmd::Mode {
            conn,
            group,
            mode,
            reason,
        } => operations::set_mode(&conn, group, mode, reason).await,
        Cmd::Agent(args) => entry::agent(args).await,
        Cmd::FenceCheck {
            conn,
            group,
            region,
            epoch,
        } => entry::fence_check(&conn, &group, &region, epoch).await,
        Cmd::Dns {
            command: DnsCmd::Check { conn, json },
        } => cluster::dns_check(&conn, json).await,
        Cmd::Demo {
            keep_running,
            base_port,
            postgres,
        } => {
            entry::demo(crate::demo::Options {
                keep_running,
                base_port,
                postgres,
            })
            .await
        }
        Cmd::Policy { command } => admin::policy(command).await,
        Cmd::Members { command } => admin::members(command).await,
        Cmd::Certs {
            command:
                CertsCmd::Init {
                    out,
                    nodes,
                    sites,
                    hosts,
                    force,
                    roles,
                },
        } => entry::certs_init(&out, nodes, &sites, &hosts, force, &roles),
        Cmd::Certs {
            command:
                CertsCmd::Issue {
                    dir,
                    witnesses,
                    site,
                    hosts,
                    force,
                    roles,
                },
        } => entry::certs_issue(&dir, &witnesses, site.as_deref(), &hosts, force, &roles),
    }
}
