//! The replicated policy: regions, groups and hooks. Parsed from TOML, validated into typed
//! values, and only then proposed through consensus, so every witness acts on the same,
//! already-checked policy. This module never reads secrets: it only checks that a secret
//! reference resolves on the witness that validates it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{check_name, ConfigError};
use super::hook::{check_program, check_timeout, default_hook_timeout_ms};
use super::postgres::PostgresHook;
pub use super::secret_ref::SecretRef;

/// At most this many regions: a failover group is a handful of regions, not a fleet.
pub const REGIONS_MAX: usize = 16;
/// At most this many groups, so status output and the applied state stay small.
pub const GROUPS_MAX: usize = 256;
/// At most this many hooks in one policy.
pub const HOOKS_MAX: usize = 64;
/// Lease bounds: shorter than 1 s cannot be renewed reliably across regions; longer than
/// 10 minutes makes every failover wait that long before activation.
pub const LEASE_MS_MIN: u64 = 1_000;
pub const LEASE_MS_MAX: u64 = 600_000;
/// Default lease: renewed every few seconds by the holder, short enough for a fast failover.
pub const LEASE_MS_DEFAULT: u64 = 10_000;
/// The policy source is kept in the replicated state for `policy show`; bound its size.
pub const POLICY_TOML_BYTES_MAX: usize = 256 * 1024;
/// The policy as replicated (JSON, defaults filled in) is bounded too: it travels in one
/// log entry and sits in every snapshot.
pub const POLICY_JSON_BYTES_MAX: usize = 512 * 1024;

/// How a group may fail over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The cluster fails over by itself on a quorum verdict.
    Auto,
    /// The cluster proposes; an operator approves.
    Manual,
    /// No failover of any kind until the mode changes.
    Frozen,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Manual => "manual",
            Mode::Frozen => "frozen",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "manual" => Ok(Mode::Manual),
            "frozen" => Ok(Mode::Frozen),
            other => Err(format!(
                "{other:?} is not a mode: use auto, manual or frozen"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A region: a site that can run the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// How witnesses check the region's health; a region without probes is never `down`
    /// and never `up` by verdict (only operators fail it over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<super::probe::ProbeSpec>,
}

/// A failover group as written in the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    pub name: String,
    /// Candidate regions in priority order; the first is active when the group is created.
    pub candidates: Vec<String>,
    /// Mode when the group is created. Afterwards `arbiter mode` changes it; a policy that
    /// changes this value changes the group's mode too.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Lease granted to the active region's primary.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Allowed clock-rate difference between a lease holder and the leader, in percent: the
    /// leader waits `lease_ms x (1 + drift) + lease_margin_ms` after revoking a lease.
    #[serde(default = "default_clock_drift_percent")]
    pub clock_drift_percent: u64,
    /// Extra wait after a revoked lease has certainly expired (network and scheduling slack).
    #[serde(default = "default_lease_margin_ms")]
    pub lease_margin_ms: u64,
    /// Opt-in: the lease wait ends early when every fence hook positively confirms a hard
    /// fence of the old primary for the operation's epoch (`{"fenced": true, "epoch": N}`).
    /// Off (the default): the wait always runs to its end, so S1 holds without exception.
    #[serde(default)]
    pub fence_ends_lease_wait: bool,
    /// A region is `down` for this group once a majority of voters have seen it failing for
    /// this long.
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Anti-flap: no automatic failover of this group for this long after any failover.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// Automatic failback to a higher-priority candidate once it has been `up` this long.
    /// Absent: never fail back automatically (an operator runs `arbiter failback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_after_ms: Option<u64>,
    /// Recovery point objective: the most replication lag the target may have at promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_lag_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_lag_bytes: Option<u64>,
    /// How long the rpo-check step waits for the lag to come within the RPO before halting
    /// for an operator's approval.
    #[serde(default = "default_rpo_wait_ms")]
    pub rpo_wait_ms: u64,
    /// Attempts of a failing step before the operation halts.
    #[serde(default = "default_step_attempts")]
    pub step_attempts: u32,
    /// Distinct operator identities that must approve a manual operation (one an operator
    /// asked for counts its requester) or accept an rpo-check's data loss. 2 is the
    /// two-person rule; a `break-glass` certificate may still approve alone, with a reason.
    #[serde(default = "default_approvals_required")]
    pub approvals_required: u32,
    /// Hooks (by name) run by each failover step.
    #[serde(default)]
    pub hooks: GroupHooks,
    /// The DNS record that follows this group's active region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<super::dns::GroupDns>,
}

/// Which hooks each step of a failover runs, by name from `[hooks]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupHooks {
    /// Fence the old primary, before the lease wait ends. Only with `fence_ends_lease_wait`
    /// does a hard-fence confirmation from all of them end the wait early.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence: Vec<String>,
    /// Measures the target's replication lag; prints `{"lag_ms": .., "lag_bytes": ..}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_check: Option<String>,
    /// Promote the standby and scale up services, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promote: Vec<String>,
    /// Checks that the new region serves; the region's probes must pass too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validate: Vec<String>,
    /// Undo the fence hooks on the old primary when an operator aborts an operation after
    /// they may have run (the old region stays active), in order. `exec` or `http` hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfence: Vec<String>,
}

impl GroupHooks {
    pub fn is_empty(&self) -> bool {
        self.fence.is_empty()
            && self.rpo_check.is_none()
            && self.promote.is_empty()
            && self.validate.is_empty()
            && self.unfence.is_empty()
    }

    /// Every hook name with the key it appears under.
    fn names(&self) -> Vec<(&'static str, &String)> {
        let mut out: Vec<(&'static str, &String)> = Vec::new();
        out.extend(self.fence.iter().map(|n| ("fence", n)));
        out.extend(self.rpo_check.iter().map(|n| ("rpo_check", n)));
        out.extend(self.promote.iter().map(|n| ("promote", n)));
        out.extend(self.validate.iter().map(|n| ("validate", n)));
        out.extend(self.unfence.iter().map(|n| ("unfence", n)));
        out
    }
}

fn default_clock_drift_percent() -> u64 {
    5
}

fn default_lease_margin_ms() -> u64 {
    1_000
}

fn default_down_after_ms() -> u64 {
    5_000
}

fn default_cooldown_ms() -> u64 {
    600_000
}

fn default_rpo_wait_ms() -> u64 {
    60_000
}

fn default_step_attempts() -> u32 {
    5
}

/// Most approvals a group may ask for: beyond three, a failover at 3 a.m. waits for people
/// who are not there.
pub const APPROVALS_REQUIRED_MAX: u32 = 3;

fn default_approvals_required() -> u32 {
    1
}

fn default_mode() -> Mode {
    Mode::Manual
}

fn default_lease_ms() -> u64 {
    LEASE_MS_DEFAULT
}

/// How a hook acts on the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Hook {
    /// Runs a program; exit 0 is success.
    Exec {
        program: PathBuf,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default = "default_hook_timeout_ms")]
        timeout_ms: u64,
    },
    /// POSTs a signed JSON body; 2xx is success.
    Http {
        url: String,
        secret: SecretRef,
        #[serde(default = "default_hook_timeout_ms")]
        timeout_ms: u64,
    },
    /// A built-in PostgreSQL action (rpo-check, promote, fence or validate).
    Postgres(PostgresHook),
}

impl Hook {
    /// The `kind` of the hook as written in the policy (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Hook::Exec { .. } => "exec",
            Hook::Http { .. } => "http",
            Hook::Postgres(_) => "postgres",
        }
    }
}

/// The policy, exactly as it will be replicated. Build it with [`Policy::parse`], which
/// validates everything; a `Policy` value is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub regions: Vec<Region>,
    #[serde(default)]
    pub groups: Vec<GroupPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, Hook>,
    /// Zones, external servers and embedded-server behaviour.
    #[serde(default, skip_serializing_if = "is_default_dns")]
    pub dns: super::dns::DnsPolicy,
    /// Certificates refused on every call, whatever their role, and how often one identity
    /// may write.
    #[serde(default)]
    pub access: AccessPolicy,
}

/// Most entries of `access.denied_serials`: a denylist is for the certificates stolen or
/// lost before they expire, not a registry of every certificate ever issued; it is read on
/// every request.
pub const DENIED_SERIALS_MAX: usize = 1_000;
/// Longest certificate serial number, in hex digits: 20 octets (RFC 5280, 4.1.2.2).
const SERIAL_HEX_DIGITS_MAX: usize = 40;

/// Default of `access.writes_per_minute`: far above what people type (an operator's busiest
/// minute is a handful of commands), far below what a script stuck in a loop sends.
pub const WRITES_PER_MINUTE_DEFAULT: u32 = 60;
/// Largest `access.writes_per_minute`: every write is a Raft entry replicated to every
/// witness and kept in the log until the next snapshot.
pub const WRITES_PER_MINUTE_MAX: u32 = 6_000;

/// The access part of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Serial numbers of revoked certificates, as [`normalise_serial`] writes them: every
    /// request presenting one is refused, on connections opened before the change too.
    #[serde(default)]
    pub denied_serials: Vec<String>,
    /// How many writes (operator and admin calls, and DNS checks, which query every
    /// external server) one certificate identity may make per minute on one witness; past
    /// it a call is refused with `rate-limited` until the allowance refills (evenly, over a
    /// minute). Lease calls are never limited.
    #[serde(default = "writes_per_minute_default")]
    pub writes_per_minute: u32,
}

fn writes_per_minute_default() -> u32 {
    WRITES_PER_MINUTE_DEFAULT
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            denied_serials: Vec::new(),
            writes_per_minute: WRITES_PER_MINUTE_DEFAULT,
        }
    }
}

impl AccessPolicy {
    /// Whether a certificate with `serial` (normalised) is revoked.
    pub fn denies(&self, serial: &str) -> bool {
        self.denied_serials.iter().any(|s| s == serial)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=WRITES_PER_MINUTE_MAX).contains(&self.writes_per_minute) {
            return Err(ConfigError::new(
                "access.writes_per_minute",
                format!(
                    "must be between 1 and {WRITES_PER_MINUTE_MAX}, got {}",
                    self.writes_per_minute
                ),
            ));
        }
        if self.denied_serials.len() > DENIED_SERIALS_MAX {
            return Err(ConfigError::new(
                "access.denied_serials",
                format!("at most {DENIED_SERIALS_MAX} serials are allowed"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, serial) in self.denied_serials.iter().enumerate() {
            let key = format!("access.denied_serials[{i}]");
            let normal =
                normalise_serial(serial).map_err(|reason| ConfigError::new(&key, reason))?;
            if normal != *serial {
                return Err(ConfigError::new(
                    key,
                    format!("{serial:?} is not normalised (expected {normal:?})"),
                ));
            }
            if !seen.insert(serial) {
                return Err(ConfigError::new(key, format!("{serial:?} is listed twice")));
            }
        }
        Ok(())
    }
}

/// A certificate serial number as the policy and the access check compare it: lowercase hex,
/// no colons, no leading zeros. Accepts what `openssl x509 -serial` prints (`serial=` and
/// upper case) and the colon-separated form of other tools.
pub fn normalise_serial(text: &str) -> Result<String, String> {
    let digits: String = text
        .trim()
        .trim_start_matches("serial=")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a certificate serial: use hex digits (as `openssl x509 -noout -serial` prints), colons allowed"
        ));
    }
    let trimmed = digits.trim_start_matches('0').to_ascii_lowercase();
    if trimmed.len() > SERIAL_HEX_DIGITS_MAX {
        return Err(format!(
            "{text:?} is longer than a certificate serial ({SERIAL_HEX_DIGITS_MAX} hex digits)"
        ));
    }
    Ok(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed
    })
}

fn is_default_dns(dns: &super::dns::DnsPolicy) -> bool {
    *dns == super::dns::DnsPolicy::default()
}

impl Policy {
    /// Parses and validates policy TOML. `file` names the source in errors. Secret
    /// references are resolved on this machine: a missing secret file is an error here.
    pub fn parse(file: &str, source: &str) -> Result<Policy, ConfigError> {
        if source.len() > POLICY_TOML_BYTES_MAX {
            return Err(ConfigError::new(
                file,
                format!(
                    "policy is {} bytes, more than the limit of {POLICY_TOML_BYTES_MAX}",
                    source.len()
                ),
            ));
        }
        let mut policy: Policy =
            toml::from_str(source).map_err(|e| ConfigError::parse(file, source, e))?;
        // Serials are compared in one form; users paste them in several.
        for (i, serial) in policy.access.denied_serials.iter_mut().enumerate() {
            *serial = normalise_serial(serial).map_err(|reason| {
                ConfigError::new(format!("access.denied_serials[{i}]"), reason)
            })?;
        }
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every rule a policy must satisfy. Called by [`Policy::parse`]; public so a
    /// policy built in code (tests, the demo) is held to the same rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.regions.is_empty() {
            return Err(ConfigError::new(
                "regions",
                "at least two regions are needed",
            ));
        }
        if self.regions.len() > REGIONS_MAX {
            return Err(ConfigError::new(
                "regions",
                format!("at most {REGIONS_MAX} regions are allowed"),
            ));
        }
        let mut regions = BTreeSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            let key = format!("regions[{i}].name");
            check_name(&key, &region.name)?;
            if !regions.insert(region.name.as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("duplicate region {:?}", region.name),
                ));
            }
            super::probe::validate_region_probes(&format!("regions[{i}]"), &region.probes)?;
        }
        if self.groups.len() > GROUPS_MAX {
            return Err(ConfigError::new(
                "groups",
                format!("at most {GROUPS_MAX} groups are allowed"),
            ));
        }
        if self.hooks.len() > HOOKS_MAX {
            return Err(ConfigError::new(
                "hooks",
                format!("at most {HOOKS_MAX} hooks are allowed"),
            ));
        }
        for (name, hook) in &self.hooks {
            let key = format!("hooks.{name}");
            check_name(&key, name)?;
            match hook {
                Hook::Exec {
                    program,
                    timeout_ms,
                    ..
                } => {
                    check_program(&format!("{key}.program"), program)?;
                    check_timeout(&key, *timeout_ms)?;
                }
                Hook::Http {
                    url,
                    secret,
                    timeout_ms,
                } => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(ConfigError::new(
                            format!("{key}.url"),
                            format!("{url:?} is not an http(s) URL"),
                        ));
                    }
                    secret.check(&format!("{key}.secret"))?;
                    check_timeout(&key, *timeout_ms)?;
                }
                Hook::Postgres(pg) => {
                    pg.validate(&key, &regions)?;
                    check_timeout(&key, pg.timeout_ms)?;
                }
            }
        }
        self.dns.validate()?;
        self.access.validate()?;
        let mut groups = BTreeSet::new();
        let mut dns_names: BTreeMap<String, &str> = BTreeMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            let key = format!("groups[{i}]");
            check_name(&format!("{key}.name"), &group.name)?;
            if !groups.insert(group.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("duplicate group {:?}", group.name),
                ));
            }
            if group.candidates.len() < 2 {
                return Err(ConfigError::new(
                    format!("{key}.candidates"),
                    format!(
                        "group {:?} needs at least two candidate regions to fail over between",
                        group.name
                    ),
                ));
            }
            let mut seen = BTreeSet::new();
            for candidate in &group.candidates {
                if !regions.contains(candidate.as_str()) {
                    return Err(ConfigError::new(
                        format!("{key}.candidates"),
                        format!("{candidate:?} is not a region of this policy"),
                    ));
                }
                if !seen.insert(candidate) {
                    return Err(ConfigError::new(
                        format!("{key}.candidates"),
                        format!("{candidate:?} is listed twice"),
                    ));
                }
            }
            if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&group.lease_ms) {
                return Err(ConfigError::new(
                    format!("{key}.lease_ms"),
                    format!(
                        "{} is outside {LEASE_MS_MIN}..={LEASE_MS_MAX}",
                        group.lease_ms
                    ),
                ));
            }
            if let Some(dns) = &group.dns {
                dns.validate(&format!("{key}.dns"), &self.dns, &group.candidates)?;
                // Two groups on one name would overwrite each other's records, and a server's
                // marker (`_arbiter.<name>`) can name only one group.
                if let Some(other) = dns_names.insert(dns.name.to_ascii_lowercase(), &group.name) {
                    return Err(ConfigError::new(
                        format!("{key}.dns.name"),
                        format!("{:?} is already published by group {other:?}", dns.name),
                    ));
                }
            }
            for (step, hook) in group.hooks.names() {
                match self.hooks.get(hook) {
                    None => {
                        return Err(ConfigError::new(
                            format!("{key}.hooks.{step}"),
                            format!("hook {hook:?} is not defined under [hooks]"),
                        ))
                    }
                    Some(Hook::Postgres(pg)) => pg.check_use(
                        &format!("{key}.hooks.{step}"),
                        hook,
                        step,
                        &group.candidates,
                    )?,
                    Some(_) => {}
                }
            }
            let ranges: [(&str, u64, u64, u64); 5] = [
                ("clock_drift_percent", group.clock_drift_percent, 0, 100),
                ("lease_margin_ms", group.lease_margin_ms, 0, 600_000),
                ("down_after_ms", group.down_after_ms, 100, 3_600_000),
                ("cooldown_ms", group.cooldown_ms, 0, 86_400_000),
                ("rpo_wait_ms", group.rpo_wait_ms, 0, 3_600_000),
            ];
            for (field, value, min, max) in ranges {
                if !(min..=max).contains(&value) {
                    return Err(ConfigError::new(
                        format!("{key}.{field}"),
                        format!("{value} is outside {min}..={max}"),
                    ));
                }
            }
            if !(1..=100).contains(&group.step_attempts) {
                return Err(ConfigError::new(
                    format!("{key}.step_attempts"),
                    format!("{} is outside 1..=100", group.step_attempts),
                ));
            }
            if !(1..=APPROVALS_REQUIRED_MAX).contains(&group.approvals_required) {
                return Err(ConfigError::new(
                    format!("{key}.approvals_required"),
                    format!(
                        "{} is outside 1..={APPROVALS_REQUIRED_MAX}",
                        group.approvals_required
                    ),
                ));
            }
            if group.fence_ends_lease_wait && group.hooks.fence.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.fence_ends_lease_wait"),
                    "needs fence hooks (groups.hooks.fence) whose confirmation can end the wait",
                ));
            }
            if let Some(ms) = group.failback_after_ms {
                if ms < group.down_after_ms {
                    return Err(ConfigError::new(
                        format!("{key}.failback_after_ms"),
                        "must be at least down_after_ms, or a flapping region would be failed back to",
                    ));
                }
            }
        }
        self.check_structure()
            .map_err(|reason| ConfigError::new("policy", reason))
    }

    /// The rules the replicated state machine relies on, checked again when it applies a
    /// policy: deterministic (no secrets or programs looked up), so every witness decides
    /// alike. A policy that passed [`Policy::validate`] passes this.
    pub fn check_structure(&self) -> Result<(), String> {
        if self.regions.len() > REGIONS_MAX
            || self.groups.len() > GROUPS_MAX
            || self.hooks.len() > HOOKS_MAX
        {
            return Err(format!(
                "at most {REGIONS_MAX} regions, {GROUPS_MAX} groups and {HOOKS_MAX} hooks"
            ));
        }
        let regions: BTreeSet<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
        let mut groups = BTreeSet::new();
        for g in &self.groups {
            if !groups.insert(g.name.as_str()) {
                return Err(format!("group {:?} is listed twice", g.name));
            }
            if g.candidates.len() < 2 {
                return Err(format!("group {:?} has fewer than two candidates", g.name));
            }
            if let Some(c) = g.candidates.iter().find(|c| !regions.contains(c.as_str())) {
                return Err(format!(
                    "candidate {c:?} of group {:?} is not a region",
                    g.name
                ));
            }
        }
        let size = serde_json::to_vec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > POLICY_JSON_BYTES_MAX {
            return Err(format!(
                "the policy is {size} bytes as replicated, more than {POLICY_JSON_BYTES_MAX}"
            ));
        }
        Ok(())
    }

    pub fn group(&self, name: &str) -> Option<&GroupPolicy> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Renders the policy as TOML (the canonical form shown by `arbiter policy show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render policy: {e}\n"))
    }

    /// A human diff from `old` (None: no policy yet) to `self`, one change per line.
    /// Empty when nothing changes.
    pub fn diff(&self, old: Option<&Policy>) -> String {
        let mut out = String::new();
        let empty = Policy {
            regions: Vec::new(),
            groups: Vec::new(),
            hooks: BTreeMap::new(),
            dns: super::dns::DnsPolicy::default(),
            access: AccessPolicy::default(),
        };
        let old = old.unwrap_or(&empty);
        let old_regions: BTreeSet<_> = old.regions.iter().map(|r| &r.name).collect();
        let new_regions: BTreeSet<_> = self.regions.iter().map(|r| &r.name).collect();
        for r in new_regions.difference(&old_regions) {
            let _ = writeln!(out, "+ region {r}");
        }
        for r in old_regions.difference(&new_regions) {
            let _ = writeln!(out, "- region {r}");
        }
        for g in &self.groups {
            match old.group(&g.name) {
                None => {
                    let _ = writeln!(
                        out,
                        "+ group {}: candidates [{}], mode {}, lease_ms {}",
                        g.name,
                        g.candidates.join(", "),
                        g.mode,
                        g.lease_ms
                    );
                }
                Some(o) if o != g => {
                    if o.candidates != g.candidates {
                        let _ = writeln!(
                            out,
                            "~ group {}: candidates [{}] -> [{}]",
                            g.name,
                            o.candidates.join(", "),
                            g.candidates.join(", ")
                        );
                    }
                    if o.mode != g.mode {
                        let _ = writeln!(out, "~ group {}: mode {} -> {}", g.name, o.mode, g.mode);
                    }
                    if o.lease_ms != g.lease_ms {
                        let _ = writeln!(
                            out,
                            "~ group {}: lease_ms {} -> {}",
                            g.name, o.lease_ms, g.lease_ms
                        );
                    }
                    if o.dns != g.dns {
                        let _ = writeln!(out, "~ group {}: dns", g.name);
                    }
                    if o.hooks != g.hooks {
                        let _ = writeln!(out, "~ group {}: hooks", g.name);
                    }
                    if o.approvals_required != g.approvals_required {
                        let _ = writeln!(
                            out,
                            "~ group {}: approvals_required {} -> {}",
                            g.name, o.approvals_required, g.approvals_required
                        );
                    }
                    let settings = |p: &GroupPolicy| {
                        (
                            p.clock_drift_percent,
                            p.lease_margin_ms,
                            p.fence_ends_lease_wait,
                            p.down_after_ms,
                            p.cooldown_ms,
                            p.failback_after_ms,
                            p.rpo_lag_ms,
                            p.rpo_lag_bytes,
                            p.rpo_wait_ms,
                            p.step_attempts,
                        )
                    };
                    if settings(o) != settings(g) {
                        let _ = writeln!(out, "~ group {}: failover settings", g.name);
                    }
                }
                Some(_) => {}
            }
        }
        for g in &old.groups {
            if self.group(&g.name).is_none() {
                let _ = writeln!(out, "- group {}", g.name);
            }
        }
        for (name, hook) in &self.hooks {
            match old.hooks.get(name) {
                None => {
                    let _ = writeln!(out, "+ hook {name}");
                }
                Some(o) if o != hook => {
                    let _ = writeln!(out, "~ hook {name}");
                }
                Some(_) => {}
            }
        }
        if old.dns != self.dns {
            let _ = writeln!(out, "~ dns zones, servers or settings");
        }
        for name in old.hooks.keys() {
            if !self.hooks.contains_key(name) {
                let _ = writeln!(out, "- hook {name}");
            }
        }
        if old.access.writes_per_minute != self.access.writes_per_minute {
            let _ = writeln!(
                out,
                "~ access.writes_per_minute {} -> {}",
                old.access.writes_per_minute, self.access.writes_per_minute
            );
        }
        for serial in &self.access.denied_serials {
            if !old.access.denies(serial) {
                let _ = writeln!(out, "+ denied certificate serial {serial}");
            }
        }
        for serial in &old.access.denied_serials {
            if !self.access.denies(serial) {
                let _ = writeln!(out, "- denied certificate serial {serial}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "manual"
"#;

    fn err(src: &str) -> ConfigError {
        Policy::parse("policy.toml", src).expect_err("policy must be refused")
    }

    #[test]
    fn good_policy_parses_with_defaults() {
        let p = Policy::parse("policy.toml", GOOD).unwrap();
        assert_eq!(p.groups[0].lease_ms, LEASE_MS_DEFAULT);
        assert_eq!(p.groups[0].mode, Mode::Manual);
        assert_eq!(
            Policy::parse("x", &p.to_toml()).unwrap(),
            p,
            "canonical TOML round-trips"
        );
    }

    #[test]
    fn malformed_toml_names_line() {
        let e = err("[[regions]\nname = 1");
        assert_eq!(e.key, "policy.toml");
        assert!(e.reason.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err(&format!("{GOOD}\ncolour = \"red\"\n"));
        assert!(e.reason.contains("colour"), "{e}");
    }

    #[test]
    fn duplicate_region_is_refused() {
        let e = err(&format!("{GOOD}\n[[regions]]\nname = \"region-a\"\n"));
        assert_eq!(e.key, "regions[2].name");
        assert!(e.reason.contains("duplicate"), "{e}");
    }

    #[test]
    fn group_with_one_candidate_is_refused() {
        let e = err(&GOOD.replace(r#"["region-a", "region-b"]"#, r#"["region-a"]"#));
        assert_eq!(e.key, "groups[0].candidates");
        assert!(e.reason.contains("at least two"), "{e}");
    }

    #[test]
    fn candidate_outside_regions_is_refused() {
        let e = err(&GOOD.replace(r#""region-b"]"#, r#""region-z"]"#));
        assert!(e.reason.contains("region-z"), "{e}");
    }

    #[test]
    fn hook_with_missing_secret_file_is_refused() {
        let src = format!(
            "{GOOD}\n[hooks.notify]\nkind = \"http\"\nurl = \"https://hooks.invalid/x\"\nsecret = {{ file = \"/nonexistent/arbiter-secret\" }}\n"
        );
        let e = err(&src);
        assert_eq!(e.key, "hooks.notify.secret.file");
        assert!(e.reason.contains("/nonexistent/arbiter-secret"), "{e}");
    }

    fn exec_hook(program: &str) -> String {
        format!("{GOOD}\n[hooks.fence-db]\nkind = \"exec\"\nprogram = \"{program}\"\n")
    }

    /// Goal: an exec hook's program is checked on the validating witness, so a typo or a
    /// missing execute bit is refused with the key, not discovered during a failover.
    #[test]
    fn exec_hook_program_must_exist_and_be_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fence.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let script_str = script.to_str().unwrap();

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&exec_hook(script_str));
        assert_eq!(e.key, "hooks.fence-db.program");
        assert!(e.reason.contains("not executable"), "{e}");

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Policy::parse("policy.toml", &exec_hook(script_str)).unwrap();
        assert!(matches!(p.hooks["fence-db"], Hook::Exec { .. }));

        let missing = dir.path().join("no-such-program");
        let e = err(&exec_hook(missing.to_str().unwrap()));
        assert_eq!(e.key, "hooks.fence-db.program");
        assert!(e.reason.contains("no-such-program"), "{e}");

        let e = err(&exec_hook(dir.path().to_str().unwrap()));
        assert_eq!(e.key, "hooks.fence-db.program");
        assert!(e.reason.contains("not a regular file"), "{e}");

        let e = err(&exec_hook("bin/fence.sh"));
        assert_eq!(e.key, "hooks.fence-db.program");
        assert!(e.reason.contains("absolute"), "{e}");
    }

    fn pg_hook(action: &str, extra: &str) -> String {
        format!(
            "{GOOD}\n[groups.hooks]\n{step} = {list}\n\n[hooks.pg]\nkind = \"postgres\"\naction = \"{action}\"\n\
             regions.region-a = {{ dsn = \"host=127.0.0.1 port=5432 user=arbiter\" }}\n{extra}",
            step = match action {
                "rpo-check" => "rpo_check",
                other => other,
            },
            list = if action == "rpo-check" { "\"pg\"" } else { "[\"pg\"]" },
        )
    }

    /// Goal: a postgres hook is wired and validated like the others: it round-trips, and a
    /// wrong step, a missing candidate, a password in the connection string or a stop
    /// command on a non-fence hook is refused with the key that is wrong.
    #[test]
    fn postgres_hook_is_validated_with_keys_named() {
        let b = "regions.region-b = { dsn = \"host=127.0.0.1 port=5433 user=arbiter\" }\n";
        let p = Policy::parse("policy.toml", &pg_hook("promote", b)).unwrap();
        let Hook::Postgres(pg) = &p.hooks["pg"] else {
            panic!("postgres hook: {:?}", p.hooks["pg"]);
        };
        assert_eq!(pg.action, super::super::PostgresAction::Promote);
        assert_eq!(Policy::parse("x", &p.to_toml()).unwrap(), p, "round-trips");
        Policy::parse("policy.toml", &pg_hook("rpo-check", b)).unwrap();

        // The hook is listed under promote but says fence.
        let wrong_step =
            pg_hook("promote", b).replace("action = \"promote\"", "action = \"fence\"");
        let e = err(&wrong_step);
        assert_eq!(e.key, "groups[0].hooks.promote");
        assert!(e.reason.contains("list it under fence"), "{e}");

        let e = err(&pg_hook("promote", ""));
        assert_eq!(e.key, "groups[0].hooks.promote");
        assert!(e.reason.contains("region-b"), "{e}");

        let e = err(&pg_hook(
            "promote",
            "regions.region-b = { dsn = \"host=h password=hunter2\" }\n",
        ));
        assert_eq!(e.key, "hooks.pg.regions.region-b.dsn");
        assert!(!e.reason.contains("hunter2"), "{e}");

        let e = err(&pg_hook(
            "promote",
            "regions.region-z = { dsn = \"host=h\" }\n",
        ));
        assert_eq!(e.key, "hooks.pg.regions.region-z");

        let e = err(&pg_hook(
            "promote",
            "regions.region-b = { dsn = \"host=h\", password = { file = \"/nonexistent/pg-pass\" } }\n",
        ));
        assert_eq!(e.key, "hooks.pg.regions.region-b.password.file");

        let e = err(&pg_hook(
            "validate",
            "regions.region-b = { dsn = \"host=h\", stop = { program = \"/bin/true\" } }\n",
        ));
        assert_eq!(e.key, "hooks.pg.regions.region-b.stop");
        Policy::parse(
            "policy.toml",
            &pg_hook(
                "fence",
                "regions.region-b = { dsn = \"host=h\", stop = { program = \"/bin/true\", args = [\"{from}\"] } }\n",
            ),
        )
        .unwrap();

        let e = err(&pg_hook("fence", &format!("{b}bogus = 1\n")));
        assert!(e.reason.contains("bogus"), "{e}");
    }

    #[test]
    fn lease_bounds_are_enforced() {
        let e = err(&format!("{GOOD}lease_ms = 5\n"));
        assert_eq!(e.key, "groups[0].lease_ms");
    }

    /// Goal: serials are accepted as tools print them and stored in one form; junk, too
    /// long, duplicates (after normalising) and too many are refused naming the entry.
    #[test]
    fn denied_serials_are_normalised_and_checked() {
        let with = |serials: &str| format!("{GOOD}\n[access]\ndenied_serials = [{serials}]\n");
        let p = Policy::parse("p", &with(r#""serial=0A1B", "0c:0d:EF", "00""#)).unwrap();
        assert_eq!(p.access.denied_serials, ["a1b", "c0def", "0"]);
        assert!(p.access.denies("c0def"));
        assert!(!p.access.denies("c0de"));
        let old = Policy::parse("a", GOOD).unwrap();
        assert_eq!(
            p.diff(Some(&old)),
            "+ denied certificate serial a1b\n+ denied certificate serial c0def\n+ denied certificate serial 0\n"
        );
        assert_eq!(old.diff(Some(&p)).lines().count(), 3);
        for (serials, needle) in [
            (
                r#""xyz""#,
                "access.denied_serials[0]: \"xyz\" is not a certificate serial",
            ),
            (r#""""#, "access.denied_serials[0]"),
            (
                r#""0a", "A""#,
                "access.denied_serials[1]: \"a\" is listed twice",
            ),
        ] {
            let e = Policy::parse("p", &with(serials)).unwrap_err().to_string();
            assert!(e.contains(needle), "{serials}: {e}");
        }
        let long = format!("\"{}\"", "f".repeat(41));
        let e = Policy::parse("p", &with(&long)).unwrap_err().to_string();
        assert!(e.contains("longer than a certificate serial"), "{e}");
        let many: Vec<String> = (0..=DENIED_SERIALS_MAX)
            .map(|i| format!("\"{:x}\"", i + 1))
            .collect();
        let e = Policy::parse("p", &with(&many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1000 serials"), "{e}");
        // A policy built in code is held to the normal form.
        let mut built = old.clone();
        built.access.denied_serials = vec!["0A".into()];
        assert!(built
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not normalised"));
    }

    #[test]
    fn diff_lists_changes() {
        let a = Policy::parse("a", GOOD).unwrap();
        let b = Policy::parse("b", &GOOD.replace("manual", "auto")).unwrap();
        assert_eq!(b.diff(Some(&a)), "~ group checkout: mode manual -> auto\n");
        assert!(a.diff(None).contains("+ group checkout"));
        assert_eq!(a.diff(Some(&a)), "");
    }
}
