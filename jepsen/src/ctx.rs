//! What every workload and the nemesis share during a run: the cluster, the CLI, the
//! recorder, and helpers that ask the cluster who is leader and which region is active.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cluster::{client_addr, Cli, Cluster};
use crate::hosts::{Host, Role};
use crate::recorder::Recorder;
use crate::spec::GROUP;

/// Deadline of one `status --local` asked while looking for the leader.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Ctx {
    pub cluster: Arc<Mutex<Cluster>>,
    pub cli: Cli,
    pub rec: Arc<Recorder>,
    pub hosts: Vec<Host>,
}

impl Ctx {
    pub fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn witnesses(&self) -> Vec<Host> {
        self.hosts
            .iter()
            .filter(|h| h.witness_id().is_some())
            .cloned()
            .collect()
    }

    pub fn dbs(&self) -> Vec<Host> {
        self.hosts
            .iter()
            .filter(|h| h.is_database())
            .cloned()
            .collect()
    }

    /// The host BIND runs on.
    pub fn dns_host(&self) -> Option<Host> {
        self.hosts.iter().find(|h| h.role == Role::Dns).cloned()
    }

    pub fn host(&self, name: &str) -> Option<Host> {
        self.hosts.iter().find(|h| h.name == name).cloned()
    }

    /// Every witness's own view (`status --json --local`), asked concurrently.
    pub async fn local_views(&self) -> Vec<(Host, serde_json::Value)> {
        let mut tasks = Vec::new();
        for h in self.witnesses() {
            let cli = self.cli.clone();
            tasks.push(tokio::spawn(async move {
                let args: Vec<String> = ["status", "--json", "--local"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                let out = cli
                    .run_servers(&h, &args, &[client_addr(&h)], LOOKUP_TIMEOUT)
                    .await;
                let v = (out.code == Some(0))
                    .then(|| serde_json::from_str::<serde_json::Value>(out.stdout.trim()).ok())
                    .flatten();
                v.map(|v| (h, v))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(Some(x)) = t.await {
                out.push(x);
            }
        }
        out
    }

    /// The leader as most witnesses see it, by host name.
    pub async fn leader(&self) -> Option<String> {
        let views = self.local_views().await;
        let mut votes: std::collections::BTreeMap<u64, usize> = Default::default();
        for (_, v) in &views {
            if let Some(id) = v["leader_id"].as_u64().filter(|id| *id > 0) {
                *votes.entry(id).or_default() += 1;
            }
        }
        let (id, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        self.hosts
            .iter()
            .find(|h| h.witness_id() == Some(id))
            .map(|h| h.name.clone())
    }

    /// The group's active region with the highest epoch any witness has applied.
    pub async fn active_region(&self) -> Option<(String, u64)> {
        let views = self.local_views().await;
        views
            .iter()
            .filter_map(|(_, v)| {
                v["groups"].as_array()?.iter().find_map(|g| {
                    (g["name"] == GROUP).then(|| {
                        (
                            g["active"].as_str().unwrap_or_default().to_string(),
                            g["epoch"].as_u64().unwrap_or_default(),
                        )
                    })
                })
            })
            .max_by_key(|(_, e)| *e)
    }
}
