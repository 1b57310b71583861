//! `init`, `status`, `watch` and `dns check`: what the cluster is and what it shows. A
//! witness's own view (`status --local`) and the watch stream are asked of the first witness
//! that answers; everything else goes to the leader.

use std::io::Write as _;

use super::args::Conn;
use super::{output, Failure};
use crate::proto;

pub(super) async fn init(conn: &Conn) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = client.init().await?;
    println!(
        "cluster {} initialised with {} witnesses",
        reply.cluster_id,
        reply.witnesses.len()
    );
    Ok(())
}

pub(super) async fn status(
    conn: &Conn,
    json: bool,
    local: bool,
    audit: u32,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let audit_limit = audit.max(1);
    let reply = if local {
        let mut c = client.connect_any().await?;
        c.status(proto::StatusRequest { local, audit_limit })
            .await
            .map_err(Failure::unavailable)?
            .into_inner()
    } else {
        client.status(audit_limit).await?
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
        let mut value = output::status_json(&reply);
        value["dns"] = serde_json::Value::Array(dns.iter().map(output::dns_json).collect());
        println!("{value}");
    } else {
        print!("{}", output::status_table(&reply, audit));
        if !dns.is_empty() {
            print!("\n{}", output::dns_table(&dns));
        }
    }
    Ok(())
}

pub(super) async fn watch(conn: &Conn) -> Result<(), Failure> {
    let client = conn.client()?;
    let mut c = client.connect_any().await?;
    let mut stream = c
        .watch(proto::WatchRequest {})
        .await
        .map_err(Failure::unavailable)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(Failure::unavailable)? {
        println!("{}", output::watch_json(&event));
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

pub(super) async fn dns_check(conn: &Conn, json: bool) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = client.dns_check().await?;
    if json {
        println!(
            "{}",
            serde_json::Value::Array(reply.sources.iter().map(output::dns_json).collect())
        );
    } else {
        print!("{}", output::dns_table(&reply.sources));
    }
    let bad = reply.sources.iter().filter(|s| !s.matches).count();
    if bad > 0 {
        return Err(Failure::refused(format!(
            "{bad} DNS source(s) do not publish the committed state"
        )));
    }
    Ok(())
}
