//! Hosts: one network namespace per witness and database host, and one for BIND (the
//! external authoritative DNS server), each with a veth pair into a
//! bridge the harness owns, addressed inside a private /24 used only on that bridge.
//!
//! Setup and teardown are idempotent and name-based: every name the harness creates starts
//! with [`NS_PREFIX`] / [`VETH_PREFIX`] or is [`BRIDGE`], so a start first removes whatever
//! an interrupted run left behind (killing the processes still inside those namespaces). This
//! module never touches an interface, namespace or firewall rule it did not create.

use std::process::Command;

use anyhow::{bail, Context};

/// The bridge every host's veth is attached to.
pub const BRIDGE: &str = "jpbr0";
/// Prefix of every network namespace the harness creates.
pub const NS_PREFIX: &str = "jpn-";
/// Prefix of the root-side end of every veth pair.
pub const VETH_PREFIX: &str = "jpv-";
/// The private /24 used only inside the bridge (first three octets).
pub const SUBNET: &str = "10.213.0";
/// Name of the veth end inside each namespace.
pub const INNER_IF: &str = "eth0";
/// Held (flock) by the one run that owns the names above; the kernel releases it when that
/// run's process ends, however it ends.
const LOCK_FILE: &str = "/run/lock/arbiter-jepsen.lock";

/// Exclusive use of the hosts' names by this process, until dropped.
pub struct HostsLock {
    _file: std::fs::File,
}

/// How long a run waits for another one to release the hosts before it gives up.
const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60 * 60);
/// How often a waiting run says it is still waiting.
const LOCK_WAIT_NOTICE: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the hosts lock, waiting (at most [`LOCK_WAIT_MAX`], saying so every
/// [`LOCK_WAIT_NOTICE`]) while another run holds it: a second run would otherwise tear down
/// the first one's namespaces as leftovers.
pub fn lock() -> anyhow::Result<HostsLock> {
    use std::os::unix::io::AsRawFd;
    let path = if std::path::Path::new("/run/lock").is_dir() {
        std::path::PathBuf::from(LOCK_FILE)
    } else {
        std::env::temp_dir().join("arbiter-jepsen.lock")
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    let started = std::time::Instant::now();
    let mut noticed: Option<std::time::Instant> = None;
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let waited = started.elapsed();
        if waited >= LOCK_WAIT_MAX {
            bail!(
                "another jepsen run has held {} (it owns the bridge {BRIDGE}) for over {} min; \
                 wait for it to end",
                path.display(),
                LOCK_WAIT_MAX.as_secs() / 60
            );
        }
        if noticed.is_none_or(|at| at.elapsed() >= LOCK_WAIT_NOTICE) {
            eprintln!(
                "jepsen: another run holds {} (it owns the bridge {BRIDGE}); waiting ({} s so far)",
                path.display(),
                waited.as_secs()
            );
            noticed = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    Ok(HostsLock { _file: file })
}

/// What a host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An `arbiter serve` witness with this node id.
    Witness { id: u64 },
    /// The database host of a region: `arbiter agent`, the health endpoint and the writer.
    Database { region: String },
    /// The external authoritative DNS server (BIND's `named`).
    Dns,
}

/// One host of the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `n1`..`n5`, `db-a`, `db-b`, `dns`.
    pub name: String,
    /// The site (failure domain) it belongs to.
    pub site: String,
    pub ip: String,
    pub role: Role,
}

impl Host {
    pub fn ns(&self) -> String {
        format!("{NS_PREFIX}{}", self.name)
    }

    fn veth(&self) -> String {
        format!("{VETH_PREFIX}{}", self.name)
    }

    pub fn is_database(&self) -> bool {
        matches!(self.role, Role::Database { .. })
    }

    pub fn witness_id(&self) -> Option<u64> {
        match self.role {
            Role::Witness { id } => Some(id),
            Role::Database { .. } | Role::Dns => None,
        }
    }
}

/// The site of witness `id`: region-a (n1, n4), region-b (n2, n5), tiebreaker (n3).
pub fn witness_site(id: u64) -> &'static str {
    match id {
        1 | 4 => "region-a",
        2 | 5 => "region-b",
        _ => "tiebreaker",
    }
}

/// The hosts of a test with `witnesses` (3 or 5) witnesses, both database hosts and the DNS
/// host (a site of its own: no region cut separates it from one region only).
pub fn plan(witnesses: u64) -> Vec<Host> {
    let mut hosts: Vec<Host> = (1..=witnesses)
        .map(|id| Host {
            name: format!("n{id}"),
            site: witness_site(id).to_string(),
            ip: format!("{SUBNET}.{}", 10 + id),
            role: Role::Witness { id },
        })
        .collect();
    for (suffix, region, octet) in [("a", "region-a", 21), ("b", "region-b", 22)] {
        hosts.push(Host {
            name: format!("db-{suffix}"),
            site: region.to_string(),
            ip: format!("{SUBNET}.{octet}"),
            role: Role::Database {
                region: region.to_string(),
            },
        });
    }
    hosts.push(Host {
        name: "dns".to_string(),
        site: "dns".to_string(),
        ip: format!("{SUBNET}.30"),
        role: Role::Dns,
    });
    hosts
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Creates the bridge and every host, after removing leftovers of an earlier run.
pub fn setup(hosts: &[Host]) -> anyhow::Result<()> {
    teardown();
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    for h in hosts {
        let ns = h.ns();
        let veth = h.veth();
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", INNER_IF, "netns", &ns,
            ],
        )?;
        run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                INNER_IF,
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", INNER_IF, "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Removes every namespace, veth and bridge of ours, killing the processes still inside our
/// namespaces first. Best effort and idempotent: what is already gone is skipped.
pub fn teardown() {
    let names = run("ip", &["netns", "list"]).unwrap_or_default();
    // Bounded: a namespace list is a handful of lines.
    for line in names.lines().take(1_000) {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if !ns.starts_with(NS_PREFIX) {
            continue;
        }
        kill_inside(ns);
        let _ = run("ip", &["netns", "del", ns]);
    }
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines().take(10_000) {
        // "7: jpv-n1@if2: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(VETH_PREFIX) || name == BRIDGE {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

/// Kills (SIGKILL, after SIGCONT so stopped ones die too) every process in namespace `ns`:
/// only the harness starts processes there.
fn kill_inside(ns: &str) {
    let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
    for pid in pids.lines().take(10_000) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            if pid > 1 {
                // SAFETY: kill(2) with a pid read from our own namespace; no memory involved.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
