//! The programs this binary also is: `serve` (a witness), `agent` (the lease-holding
//! sidecar), `fence-check` (for hooks), `demo` and `certs init` (the development CA).

use std::path::Path;

use super::args::{AgentArgs, Conn, RoleCerts};
use super::{Failure, EXIT_UNAVAILABLE};
use crate::access::Role;
use crate::config::NodeConfig;

pub(super) async fn serve(path: &Path, check: bool) -> Result<(), Failure> {
    let config =
        NodeConfig::load(path).map_err(|e| Failure::usage(format!("invalid node file: {e}")))?;
    // Before anything is bound: a certificate that does not name this node's id is a
    // configuration error (its peers would refuse every Raft RPC from it).
    crate::tls::install_crypto_provider();
    crate::node::witness_tls(&config).map_err(|e| Failure::usage(e.to_string()))?;
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
        terminated().await;
        tracing::info!("shutting down");
    };
    let node = crate::node::Node::start(config, listener, shutdown)
        .await
        .map_err(|e| Failure::refused(e.to_string()))?;
    node.wait()
        .await
        .map_err(|e| Failure::refused(e.to_string()))
}

/// `arbiter agent`: checks the flags, then runs the lease-holding sidecar until a signal
/// (or, with `--after-exit`, runs a pending on-lose once).
pub(super) async fn agent(args: AgentArgs) -> Result<(), Failure> {
    let AgentArgs {
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
    } = args;
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
            Err(Failure::refused(
                "on-lose did not succeed after the agent exited".into(),
            ))
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
    // Rotated certificates, keys and CAs are picked up without a restart.
    let tls_watch = tokio::spawn(client.tls().watch(crate::tls::RELOAD_POLL));
    crate::agent::run(config, client, terminated()).await;
    tls_watch.abort();
    Ok(())
}

/// `arbiter fence-check`: exit 0 when `epoch` is current for `region` of `group`, else 1.
pub(super) async fn fence_check(
    conn: &Conn,
    group: &str,
    region: &str,
    epoch: u64,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let lease = crate::fencing::LeaseClient::new(client, group, region, "");
    let reply = lease.check(epoch).await?;
    if reply.allowed {
        println!("allowed: {region} is active for {group} at epoch {epoch}");
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "refused ({}): {}",
            reply.refusal, reply.message
        )))
    }
}

pub(super) async fn demo(options: crate::demo::Options) -> Result<(), Failure> {
    crate::demo::run(options).await.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })
}

pub(super) fn certs_init(
    out: &Path,
    nodes: Option<u32>,
    sites: &[String],
    hosts: &[String],
    force: bool,
    roles: &RoleCerts,
) -> Result<(), Failure> {
    // Every role is checked before anything is written.
    let wanted = role_certs(roles)?;
    let sites = match (nodes, sites.is_empty()) {
        (nodes, true) => crate::certs::default_sites(nodes.unwrap_or(3)),
        (Some(n), false) if n as usize != sites.len() => {
            return Err(Failure::usage(format!(
                "certs init: --nodes is {n} but --sites names {} sites: give one site per witness",
                sites.len()
            )))
        }
        (_, false) => sites.to_vec(),
    };
    let written = crate::certs::init_dev_certs(out, &sites, hosts, force)
        .map_err(|e| Failure::usage(e.to_string()))?;
    eprintln!(
        "warning: these certificates are for development only; use your own CA in production"
    );
    println!(
        "wrote a development CA, {} node certificates and the admin certificate client.pem to {}",
        written.nodes.len(),
        out.display()
    );
    issue(out, force, &wanted)
}

pub(super) fn certs_issue(
    dir: &Path,
    witnesses: &[u64],
    site: Option<&str>,
    hosts: &[String],
    force: bool,
    roles: &RoleCerts,
) -> Result<(), Failure> {
    let wanted = role_certs(roles)?;
    if wanted.is_empty() && witnesses.is_empty() {
        return Err(Failure::usage(
            "certs issue: name at least one certificate (--witness, --admin, --operator, \
             --viewer, --check, --break-glass or --agent)"
                .to_string(),
        ));
    }
    if (!hosts.is_empty() || site.is_some()) && witnesses.is_empty() {
        return Err(Failure::usage(
            "certs issue: --host and --site go into witness certificates; name one with --witness"
                .into(),
        ));
    }
    for &id in witnesses {
        let paths = crate::certs::issue_witness_cert(dir, id, site, hosts, force)
            .map_err(|e| Failure::usage(e.to_string()))?;
        println!("wrote {} (witness {id})", paths.cert.display());
    }
    issue(dir, force, &wanted)
}

/// The (name, role) of each certificate asked for, checked; a bad `--agent` is a usage error
/// naming it.
fn role_certs(roles: &RoleCerts) -> Result<Vec<(String, Role)>, Failure> {
    let mut wanted = Vec::new();
    for (names, role) in [
        (&roles.admins, Role::Admin),
        (&roles.operators, Role::Operator),
        (&roles.viewers, Role::Viewer),
        (&roles.checks, Role::Check),
        (&roles.break_glass, Role::BreakGlass),
    ] {
        wanted.extend(names.iter().map(|n| (n.clone(), role.clone())));
    }
    for pair in &roles.agents {
        let role = Role::parse(&format!("agent/{pair}")).ok_or_else(|| {
            Failure::usage(format!(
                "--agent {pair:?}: expected GROUP/REGION, two names of a-z, 0-9 and '-'"
            ))
        })?;
        let Role::Agent { group, region } = &role else {
            unreachable!("parsed from agent/...")
        };
        wanted.push((format!("agent-{group}-{region}"), role));
    }
    Ok(wanted)
}

fn issue(dir: &Path, force: bool, wanted: &[(String, Role)]) -> Result<(), Failure> {
    for (name, role) in wanted {
        let paths = crate::certs::issue_role_cert(dir, name, std::slice::from_ref(role), force)
            .map_err(|e| Failure::usage(e.to_string()))?;
        println!("wrote {} (role {role})", paths.cert.display());
    }
    Ok(())
}

/// Resolves at Ctrl-C or SIGTERM (the stop of a service manager).
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => futures::future::pending().await } } => {}
    }
}
