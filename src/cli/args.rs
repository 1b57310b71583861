//! The commands and flags of `arbiter` (clap): every doc comment here is help text the
//! operator reads, so wording changes show in `--help`. Also how to reach the cluster from
//! the connection flags ([`Conn::client`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::Failure;
use crate::client::Client;
use crate::tls::TlsPaths;

#[derive(Parser, Debug)]
#[command(
    name = "arbiter",
    version,
    about = "Failover arbiter for multi-region disaster recovery"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
    #[command(subcommand)]
    pub(super) command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub(super) enum Cmd {
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
        /// Approve alone, where the group asks for more approvers (`approvals_required`),
        /// giving the reason: needs a break-glass certificate; audited and counted in
        /// `arbiter_break_glass_approvals_total`.
        #[arg(long, value_name = "REASON")]
        break_glass: Option<String>,
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
    Agent(AgentArgs),
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

// The flags of `arbiter agent` (no doc comment: clap would show it as the command's help).
#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    #[command(flatten)]
    pub(super) conn: Conn,
    #[arg(long)]
    pub(super) group: String,
    #[arg(long)]
    pub(super) region: String,
    /// Shown as the lease holder in `arbiter status` (default: the host name).
    #[arg(long)]
    pub(super) holder: Option<String>,
    /// Shell command run when a held lease is lost (stop accepting writes). Never run
    /// by an agent that did not hold the lease. Empty: none.
    #[arg(long)]
    pub(super) on_lose: Option<String>,
    /// Shell command run in the background when the lease is gained (accept writes);
    /// killed with its process group if the lease is lost while it runs. Empty: none.
    #[arg(long)]
    pub(super) on_gain: Option<String>,
    /// Shell command run once when the agent starts without getting the lease. For the
    /// primary's host: stops a database started before its agent (fail closed). Leave
    /// it out on a standby's host. Empty: none.
    #[arg(long)]
    pub(super) on_start_without_lease: Option<String>,
    /// Milliseconds --on-gain may run before its process group is killed.
    #[arg(long, default_value_t = crate::agent::ON_GAIN_TIMEOUT_DEFAULT.as_millis() as u64)]
    pub(super) on_gain_timeout_ms: u64,
    /// Milliseconds --on-lose (and --on-start-without-lease) may run before its process
    /// group is killed.
    #[arg(long, default_value_t = crate::agent::ON_LOSE_TIMEOUT_DEFAULT.as_millis() as u64)]
    pub(super) on_lose_timeout_ms: u64,
    /// Write the current state here as JSON (atomically).
    #[arg(long)]
    pub(super) state_file: Option<PathBuf>,
    /// Milliseconds between acquire attempts while the lease is not held.
    #[arg(long, default_value_t = 1000)]
    pub(super) retry_ms: u64,
    /// Watchdog: off, automatic (use --watchdog-device when present) or required
    /// (refuse to start without it, never hold the lease without arming it).
    #[arg(long, value_enum, default_value_t = crate::agent::watchdog::Mode::Off)]
    pub(super) watchdog: crate::agent::watchdog::Mode,
    /// The watchdog device (`softdog` or a hardware driver), or a stand-in file or FIFO.
    #[arg(long, default_value = "/dev/watchdog")]
    pub(super) watchdog_device: PathBuf,
    /// While the watchdog is armed, self-fence this many milliseconds before the lease
    /// deadline, so that on-lose finishes before the device fires (below a third of
    /// the lease).
    #[arg(long, default_value_t = crate::agent::WATCHDOG_MARGIN_DEFAULT.as_millis() as u64)]
    pub(super) watchdog_margin_ms: u64,
    /// Do not run: for systemd's ExecStopPost, after the agent exited. Runs --on-lose
    /// once if --state-file says a fence is pending (the agent died holding the lease);
    /// otherwise nothing.
    #[arg(long)]
    pub(super) after_exit: bool,
}

#[derive(Subcommand, Debug)]
pub(super) enum PolicyCmd {
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
pub(super) enum MembersCmd {
    List(Conn),
    /// Add a witness: as a learner until it has caught up, then as a voter.
    Add {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
        /// The site its certificate names.
        #[arg(long)]
        site: String,
        /// Make the change even though it weakens the failure domains (a site's loss would
        /// stop the cluster, or one site would hold a quorum), for REASON, which the audit
        /// log keeps.
        #[arg(long, value_name = "REASON")]
        accept_site_risk: Option<String>,
    },
    /// Remove a witness from the cluster.
    Remove {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: u64,
        /// As for `members add`.
        #[arg(long, value_name = "REASON")]
        accept_site_risk: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum DnsCmd {
    /// Query every DNS source now; exit 1 when one does not match the committed state.
    Check {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum CertsCmd {
    /// Create a development CA and node/client certificates. FOR DEVELOPMENT ONLY.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// How many witness certificates (node-1 ... node-N).
        #[arg(long)]
        nodes: Option<u32>,
        /// The site of witness 1, 2, ... in order, comma-separated: each certificate names its
        /// site, which the witness's node file must agree with [default: region-a, region-b,
        /// tiebreaker, repeated; 3 witnesses].
        #[arg(long, value_delimiter = ',', value_name = "SITE,...")]
        sites: Vec<String>,
        /// Extra host names or IPs to put in node certificates.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        roles: RoleCerts,
    },
    /// Issue role certificates with the development CA of an existing directory.
    Issue {
        /// The directory `certs init` wrote (its ca.pem and ca.key sign the new ones).
        #[arg(long)]
        dir: PathBuf,
        /// A new certificate for witness ID, node-ID.pem (repeat): a rotation with --force,
        /// which the running witness picks up without a restart.
        #[arg(long = "witness", value_name = "ID")]
        witnesses: Vec<u64>,
        /// The site the witness certificates name (default: the site of the current
        /// node-ID.pem, so a rotation keeps it; a new witness needs one).
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// Extra host names or IPs to put in the witness certificates.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Overwrite existing files (each replaced whole, by a rename).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        roles: RoleCerts,
    },
}

/// Client certificates of one role each (`NAME.pem`, or `agent-GROUP-REGION.pem`).
#[derive(Args, Debug, Clone, Default)]
pub(super) struct RoleCerts {
    /// An admin certificate named NAME: everything, policy and members included (repeat).
    #[arg(long = "admin", value_name = "NAME")]
    pub(super) admins: Vec<String>,
    /// An operator certificate: reads and failover, failback, approve, retry, skip, abort,
    /// mode (repeat).
    #[arg(long = "operator", value_name = "NAME")]
    pub(super) operators: Vec<String>,
    /// A viewer certificate: status, watch, operations, DNS check, metrics (repeat).
    #[arg(long = "viewer", value_name = "NAME")]
    pub(super) viewers: Vec<String>,
    /// A check certificate: fence checks only, for hooks (repeat).
    #[arg(long = "check", value_name = "NAME")]
    pub(super) checks: Vec<String>,
    /// A break-glass certificate: an operator's, and may approve alone with a reason where a
    /// group asks for two approvals; keep it for emergencies (repeat).
    #[arg(long = "break-glass", value_name = "NAME")]
    pub(super) break_glass: Vec<String>,
    /// An agent certificate for the lease of one group and region (repeat).
    #[arg(long = "agent", value_name = "GROUP/REGION")]
    pub(super) agents: Vec<String>,
}

/// Whether to wait for an operation to finish.
#[derive(Args, Debug, Clone)]
pub(super) struct Wait {
    /// Return once the operation is declared instead of waiting for it.
    #[arg(long)]
    pub(super) no_wait: bool,
    /// Give up waiting after this many seconds (the operation goes on).
    #[arg(long, default_value_t = 600)]
    pub(super) timeout: u64,
}

/// How to reach the cluster.
#[derive(Args, Debug, Clone)]
pub(super) struct Conn {
    /// Witness address host:port (repeat or comma-separate to list several).
    #[arg(
        long = "server",
        short = 's',
        env = "ARBITER_SERVERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101"
    )]
    pub(super) servers: Vec<String>,
    /// Directory holding ca.pem, client.pem and client.key (as written by `arbiter certs init`).
    #[arg(long, env = "ARBITER_TLS_DIR", default_value = "certs")]
    pub(super) tls_dir: PathBuf,
    /// Cluster CA (overrides --tls-dir).
    #[arg(long, env = "ARBITER_CA")]
    pub(super) ca: Option<PathBuf>,
    /// Client certificate (overrides --tls-dir).
    #[arg(long, env = "ARBITER_CERT")]
    pub(super) cert: Option<PathBuf>,
    /// Client key (overrides --tls-dir).
    #[arg(long, env = "ARBITER_KEY")]
    pub(super) key: Option<PathBuf>,
}

impl Conn {
    pub(super) fn client(&self) -> Result<Client, Failure> {
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
