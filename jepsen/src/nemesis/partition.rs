//! Partitions, packet loss and their healing, as iptables rules in the hosts' own
//! namespaces (INPUT chain only: a host drops what it receives from the cut-off sources).
//! Rules never go into the root namespace.

use crate::hosts::{run_in, Host, INNER_IF};

/// One dropped direction: `host` drops everything it receives from `from_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub host: Host,
    pub from_ip: String,
}

/// Both directions between every host of `a` and every host of `b`.
pub fn cut(a: &[Host], b: &[Host]) -> Vec<Drop> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.name == y.name {
                continue;
            }
            out.push(Drop {
                host: x.clone(),
                from_ip: y.ip.clone(),
            });
            out.push(Drop {
                host: y.clone(),
                from_ip: x.ip.clone(),
            });
        }
    }
    out
}

/// `to` receives nothing from any of `from` (it can still send).
pub fn one_way(to: &Host, from: &[Host]) -> Vec<Drop> {
    from.iter()
        .filter(|f| f.name != to.name)
        .map(|f| Drop {
            host: to.clone(),
            from_ip: f.ip.clone(),
        })
        .collect()
}

/// Majorities ring: each witness hears only its two neighbours (in a ring of 5 every
/// witness sees a majority, but no two witnesses see the same majority).
pub fn ring(witnesses: &[Host]) -> Vec<Drop> {
    let n = witnesses.len();
    let mut out = Vec::new();
    for (i, x) in witnesses.iter().enumerate() {
        for (j, y) in witnesses.iter().enumerate() {
            let d = (i + n - j) % n;
            if i != j && d != 1 && d != n - 1 {
                out.push(Drop {
                    host: x.clone(),
                    from_ip: y.ip.clone(),
                });
            }
        }
    }
    out
}

pub fn install(drops: &[Drop]) -> anyhow::Result<()> {
    for d in drops {
        run_in(
            &d.host.ns(),
            "iptables",
            &["-w", "-A", "INPUT", "-s", &d.from_ip, "-j", "DROP"],
        )?;
    }
    Ok(())
}

/// Drops each packet `host` receives on its bridge interface with `probability`.
pub fn loss(host: &Host, probability: f64) -> anyhow::Result<()> {
    run_in(
        &host.ns(),
        "iptables",
        &[
            "-w",
            "-A",
            "INPUT",
            "-i",
            INNER_IF,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &format!("{probability:.2}"),
            "-j",
            "DROP",
        ],
    )?;
    Ok(())
}

/// Removes every rule the harness put into `hosts`' INPUT chains.
pub fn heal(hosts: &[Host]) -> anyhow::Result<()> {
    let mut first_error = None;
    for h in hosts {
        if let Err(e) = run_in(&h.ns(), "iptables", &["-w", "-F", "INPUT"]) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_of_five_leaves_each_witness_a_majority() {
        let hosts: Vec<Host> = crate::hosts::plan(5)
            .into_iter()
            .filter(|h| h.witness_id().is_some())
            .collect();
        let drops = ring(&hosts);
        for h in &hosts {
            let dropped = drops.iter().filter(|d| d.host.name == h.name).count();
            // Hears itself and two neighbours: 3 of 5.
            assert_eq!(dropped, 2, "{}", h.name);
        }
    }

    #[test]
    fn cut_is_symmetric_and_skips_self() {
        let hosts = crate::hosts::plan(3);
        let drops = cut(&hosts[..1], &hosts);
        assert_eq!(drops.len(), 2 * (hosts.len() - 1));
        assert!(drops.iter().all(|d| d.from_ip != d.host.ip));
    }
}
