//! DNS of the system under test: the zone every witness's embedded server publishes, a real
//! BIND (`named`) authoritative for the same zone on a host of its own (updated by the
//! failover's `dns` step with RFC 2136 and repaired by the leader's reconciler), and the
//! queries that read what each of them answers (`dig` run inside the right namespace).
//!
//! This module writes BIND's files and the policy's `[dns]` text and asks DNS questions; it
//! starts nothing (the cluster does) and judges nothing (S5 in `checker::dns` does).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::hosts::Host;
use crate::spec::GROUP;

/// Port of every DNS server of the run (the witnesses' embedded ones and BIND), on the
/// host's bridge address.
pub const DNS_PORT: u16 = 53;
/// The zone the policy publishes.
pub const ZONE: &str = "shop.test.";
/// The group's name in the zone.
pub const NAME: &str = "checkout.shop.test.";
/// The TSIG key BIND accepts updates with.
pub const KEY_NAME: &str = "arbiter-jepsen.";
/// The group's A record per region: distinct documentation addresses, so an answer names
/// exactly one region.
pub const RECORDS: [(&str, &str); 2] = [("region-a", "192.0.2.10"), ("region-b", "198.51.100.10")];
/// Deadline of one query (`dig +time`); one try, the caller retries.
const QUERY_TIMEOUT_S: u64 = 1;
/// Kill a `dig` that outlives its own deadline by this much.
const QUERY_KILL_AFTER: Duration = Duration::from_secs(4);
/// How often the reconciler compares BIND with the committed state (the policy's minimum
/// is 1 s; short, so that drift a fault left behind is repaired within the recovery).
const RECONCILE_INTERVAL_MS: u64 = 2_000;

/// The files of the BIND host under `dir` (its node directory).
pub struct BindFiles {
    pub conf: PathBuf,
    /// The base64 TSIG secret, referenced by the policy (`secret = { file = ... }`).
    pub secret: PathBuf,
}

/// Writes `named.conf`, the zone file and the TSIG secret for a BIND listening on `ip`.
/// The zone starts without the group's record: the leader's reconciler publishes it.
pub fn write_bind_files(dir: &Path, ip: &str) -> anyhow::Result<BindFiles> {
    std::fs::create_dir_all(dir)?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("read /dev/urandom for the TSIG secret")?;
    let secret_text = data_encoding::BASE64.encode(&key);
    let secret = dir.join("tsig.secret");
    std::fs::write(&secret, format!("{secret_text}\n"))?;
    let zone_file = dir.join(format!("{ZONE}zone"));
    std::fs::write(
        &zone_file,
        format!(
            "$ORIGIN {ZONE}\n$TTL 60\n\
             @ IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 5\n\
             @ IN NS ns1.{ZONE}\n\
             ns1 IN A {ip}\n"
        ),
    )?;
    let d = dir.display();
    // `controls {}` turns off the rndc channel (it would bind port 953 and need rndc.key).
    let conf = format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {DNS_PORT} {{ {ip}; 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{
    algorithm hmac-sha256;
    secret "{secret_text}";
}};
zone "{ZONE}" {{
    type primary;
    file "{zone}";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
        zone = zone_file.display(),
    );
    let conf_path = dir.join("named.conf");
    std::fs::write(&conf_path, conf)?;
    Ok(BindFiles {
        conf: conf_path,
        secret,
    })
}

/// `named`'s command line: foreground with its log on stderr, IPv4 only, one worker.
pub fn named_argv(named: &Path, conf: &Path) -> Vec<String> {
    [named.display().to_string()]
        .into_iter()
        .chain(["-g", "-4", "-n", "1", "-c"].map(String::from))
        .chain([conf.display().to_string()])
        .collect()
}

/// Finds a program on PATH or in the sbin directories Debian installs daemons into.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The policy's `[dns]` table: the zone (its name servers are the witnesses) and BIND as
/// the one external server.
pub fn policy_table(witnesses: &[Host], bind: &Host, secret: &Path) -> String {
    let nameservers: Vec<String> = witnesses
        .iter()
        .map(|h| format!("\"{}.{ZONE}\"", h.name))
        .collect();
    format!(
        r#"[dns]
zones = [ {{ name = "{ZONE}", nameservers = [{ns}] }} ]
servers = [ {{ address = "{ip}:{DNS_PORT}", zone = "{ZONE}", tsig_key = "{KEY_NAME}", algorithm = "hmac-sha256", secret = {{ file = "{secret}" }}, timeout_ms = 2000 }} ]
reconcile_interval_ms = {RECONCILE_INTERVAL_MS}
"#,
        ns = nameservers.join(", "),
        ip = bind.ip,
        secret = secret.display(),
    )
}

/// The group's `[groups.dns]` table (goes right after the group's own keys).
pub fn group_table() -> String {
    let records: Vec<String> = RECORDS
        .iter()
        .map(|(region, addr)| format!("{region} = {{ type = \"A\", values = [\"{addr}\"] }}"))
        .collect();
    format!(
        "[groups.dns]\nzone = \"{ZONE}\"\nname = \"{NAME}\"\nttl = 5\nrecords = {{ {} }}\n",
        records.join(", ")
    )
}

/// The region whose record set is exactly `addrs`.
pub fn region_of(addrs: &[String]) -> Option<&'static str> {
    let mut addrs = addrs.to_vec();
    addrs.sort();
    addrs.dedup();
    RECORDS
        .iter()
        .find(|(_, a)| addrs.len() == 1 && addrs[0] == *a)
        .map(|(r, _)| *r)
}

/// What one DNS source answered for the group's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `witness-n1`, ..., `bind`.
    pub source: String,
    /// The A records (sorted).
    pub addrs: Vec<String>,
    /// The region those records belong to.
    pub region: Option<String>,
    /// Why there is no region: no answer, an error, or records of no region.
    pub error: Option<String>,
}

impl Answer {
    /// The `final.value.dns` entry (history.rs): `{source, group, answer, error?}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "source": self.source,
            "group": GROUP,
            "answer": self.region,
            "records": self.addrs,
        });
        if let Some(e) = &self.error {
            v["error"] = serde_json::json!(e);
        }
        v
    }
}

/// Asks `server` (inside namespace `ns`) for the group's A records with `dig`.
pub async fn query(source: &str, ns: &str, server: &str) -> Answer {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "dig"])
        .arg(format!("@{server}"))
        .args(["-p", &DNS_PORT.to_string()])
        .args([
            "+norecurse",
            "+noall",
            "+answer",
            "+comments",
            "+tries=1",
            &format!("+time={QUERY_TIMEOUT_S}"),
            NAME,
            "A",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let failed = |error: String| Answer {
        source: source.to_string(),
        addrs: Vec::new(),
        region: None,
        error: Some(error),
    };
    let out = match cmd.spawn() {
        Ok(child) => match tokio::time::timeout(
            Duration::from_secs(QUERY_TIMEOUT_S) + QUERY_KILL_AFTER,
            child.wait_with_output(),
        )
        .await
        {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return failed(format!("dig: {e}")),
            Err(_) => return failed("dig did not end (killed)".into()),
        },
        Err(e) => return failed(format!("cannot run dig: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dig(source, out.status.code(), &text)
}

/// Reads `dig +noall +answer +comments` output: the header's status and the A records.
pub fn parse_dig(source: &str, code: Option<i32>, text: &str) -> Answer {
    let mut addrs: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[3] == "A").then(|| f[4].to_string())
        })
        .collect();
    addrs.sort();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or(s).trim().to_string());
    let region = region_of(&addrs).map(str::to_string);
    let error = match (code, &status, &region) {
        (_, _, Some(_)) => None,
        (Some(0), Some(s), None) if addrs.is_empty() => Some(format!("no A records ({s})")),
        (Some(0), _, None) if !addrs.is_empty() => {
            Some(format!("records {addrs:?} are no region's"))
        }
        (c, _, _) => Some(format!(
            "no answer (dig exit {}): {}",
            c.map(|c| c.to_string()).unwrap_or("signal".into()),
            text.lines()
                .find(|l| l.starts_with(";;") && l.contains("timed out"))
                .unwrap_or("")
                .trim()
        )),
    };
    Answer {
        source: source.to_string(),
        addrs,
        region,
        error,
    }
}

/// Every source's answer, asked concurrently: each witness's embedded server from inside
/// that witness's namespace, BIND from inside its own.
pub async fn query_all(witnesses: &[Host], bind: &Host) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for h in witnesses.iter().chain(std::iter::once(bind)) {
        let source = if h.witness_id().is_some() {
            format!("witness-{}", h.name)
        } else {
            "bind".to_string()
        };
        let (ns, ip) = (h.ns(), h.ip.clone());
        tasks.push(tokio::spawn(async move { query(&source, &ns, &ip).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(a) = t.await {
            out.push(a);
        }
    }
    out
}

/// Whether every source answers `region`.
pub fn converged(answers: &[Answer], region: &str) -> bool {
    !answers.is_empty() && answers.iter().all(|a| a.region.as_deref() == Some(region))
}

/// Per source, the region it answers (for progress lines).
pub fn summary(answers: &[Answer]) -> String {
    let m: BTreeMap<&str, &str> = answers
        .iter()
        .map(|a| (a.source.as_str(), a.region.as_deref().unwrap_or("(none)")))
        .collect();
    m.iter()
        .map(|(s, r)| format!("{s}={r}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_names_the_region() {
        let ok = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
                  checkout.shop.test. 5 IN A 198.51.100.10\n";
        let a = parse_dig("bind", Some(0), ok);
        assert_eq!(a.region.as_deref(), Some("region-b"));
        assert_eq!(a.error, None);

        let empty = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 2\n";
        let a = parse_dig("bind", Some(0), empty);
        assert_eq!(a.region, None);
        assert!(a.error.unwrap().contains("NXDOMAIN"));

        let both =
            "checkout.shop.test. 5 IN A 192.0.2.10\ncheckout.shop.test. 5 IN A 198.51.100.10\n";
        let a = parse_dig("witness-n1", Some(0), both);
        assert_eq!(a.region, None, "two regions' records are no region's");
        assert!(a.error.unwrap().contains("no region"));

        let a = parse_dig(
            "witness-n2",
            Some(9),
            ";; connection timed out; no servers could be reached\n",
        );
        assert_eq!(a.region, None);
        assert!(a.error.unwrap().contains("timed out"));
    }

    #[test]
    fn answers_serialise_as_the_history_documents() {
        let a = parse_dig("bind", Some(0), "checkout.shop.test. 5 IN A 192.0.2.10\n");
        let v = a.to_json();
        assert_eq!(v["source"], "bind");
        assert_eq!(v["group"], GROUP);
        assert_eq!(v["answer"], "region-a");
        assert!(converged(&[a], "region-a"));
    }
}
