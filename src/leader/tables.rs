//! What the leader knows that is not replicated: who holds each lease and when it was last
//! renewed, and the current quorum verdict of each region. Rebuilt by a new leader within
//! one renewal or probe interval. Never used for safety decisions about leases: those are
//! made from the committed state only.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::health::{RegionView, ReportTable};

/// Lease holders tracked at most: one per (group, region) in practice; bounded against
/// misbehaving clients sending many holder names.
const LEASE_HOLDERS_MAX: usize = 4_096;

/// The last successful acquire or renewal of a (group, region) lease.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: u64,
    pub lease_ms: u64,
    /// When the leader answered; the holder's deadline is at most this plus the lease.
    pub granted: Instant,
}

/// The leader's in-memory tables, shared by the fencing service, the executor and status.
#[derive(Debug, Default)]
pub struct LeaderTables {
    leases: Mutex<BTreeMap<(String, String), LeaseHolder>>,
    regions: Mutex<BTreeMap<String, RegionView>>,
    /// Latest probe report of each witness about each region (fed by `ReportProbes`).
    pub reports: Mutex<ReportTable>,
    /// Where each witness's embedded DNS server answers, as reported with its probes.
    dns_addrs: Mutex<BTreeMap<u64, String>>,
}

impl LeaderTables {
    pub fn record_lease(&self, group: &str, region: &str, holder: LeaseHolder) {
        let mut leases = self.leases.lock().expect("lease table lock");
        let key = (group.to_string(), region.to_string());
        if leases.len() >= LEASE_HOLDERS_MAX && !leases.contains_key(&key) {
            return;
        }
        leases.insert(key, holder);
    }

    pub fn leases(&self) -> Vec<((String, String), LeaseHolder)> {
        self.leases
            .lock()
            .expect("lease table lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn set_regions(&self, regions: BTreeMap<String, RegionView>) {
        *self.regions.lock().expect("region table lock") = regions;
    }

    pub fn regions(&self) -> BTreeMap<String, RegionView> {
        self.regions.lock().expect("region table lock").clone()
    }

    /// Records where witness `id` serves DNS (bounded like the report table: one per witness).
    pub fn record_dns_addr(&self, id: u64, addr: &str) {
        const WITNESSES_MAX: usize = 64;
        let mut addrs = self.dns_addrs.lock().expect("dns address table lock");
        if addr.is_empty() {
            addrs.remove(&id);
        } else if addrs.len() < WITNESSES_MAX || addrs.contains_key(&id) {
            addrs.insert(id, addr.to_string());
        }
    }

    pub fn dns_addrs(&self) -> BTreeMap<u64, String> {
        self.dns_addrs
            .lock()
            .expect("dns address table lock")
            .clone()
    }

    /// Forget everything (this witness stopped being the leader).
    pub fn clear(&self) {
        self.leases.lock().expect("lease table lock").clear();
        self.regions.lock().expect("region table lock").clear();
        *self.reports.lock().expect("report table lock") = ReportTable::new();
    }
}

impl crate::telemetry::LiveRegions for LeaderTables {
    fn regions(&self) -> BTreeMap<String, RegionView> {
        LeaderTables::regions(self)
    }
}
