//! The built-in `postgres` hook as written in the policy: which action it performs and how to
//! reach the PostgreSQL server of each region.
//!
//! ```toml
//! [hooks.pg-promote]
//! kind = "postgres"
//! action = "promote"             # rpo-check | promote | fence | validate
//! timeout_ms = 30000
//! regions.region-a = { dsn = "host=10.0.1.5 port=5432 user=arbiter dbname=postgres",
//!                      password = { file = "/etc/arbiter/pg-region-a.password" } }
//! regions.region-b = { dsn = "host=10.0.2.5 port=5432 user=arbiter dbname=postgres",
//!                      password = { env = "ARBITER_PG_B_PASSWORD" } }
//! ```
//!
//! This module owns the shape of that table and its validation. It never connects to a
//! database and never reads a password: a password is only referenced (file or environment
//! variable), and a connection string that carries one is refused, so no password can enter
//! the Raft log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::policy::SecretRef;

/// What a `postgres` hook does. Each action serves exactly one failover step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresAction {
    /// Measures the target's replication lag (the `rpo-check` step).
    RpoCheck,
    /// Promotes the target's standby and waits until it has left recovery.
    Promote,
    /// Makes the old primary refuse writes and verifies it does.
    Fence,
    /// Writes a row on the new primary.
    Validate,
}

impl PostgresAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PostgresAction::RpoCheck => "rpo-check",
            PostgresAction::Promote => "promote",
            PostgresAction::Fence => "fence",
            PostgresAction::Validate => "validate",
        }
    }

    /// The key under a group's `[groups.hooks]` where a hook with this action belongs.
    pub fn group_hooks_key(self) -> &'static str {
        match self {
            PostgresAction::RpoCheck => "rpo_check",
            PostgresAction::Promote => "promote",
            PostgresAction::Fence => "fence",
            PostgresAction::Validate => "validate",
        }
    }

    /// Whether the action acts on the region being left (`from`); all others act on the
    /// region being activated (`to`).
    pub fn acts_on_from(self) -> bool {
        self == PostgresAction::Fence
    }
}

impl std::fmt::Display for PostgresAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `kind = "postgres"` hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresHook {
    /// The one thing this hook does; a group may use it only for the matching step.
    pub action: PostgresAction,
    /// How to reach each region's server, by region name. Every candidate of a group that
    /// uses the hook must be listed: any of them may be the source or the target.
    pub regions: BTreeMap<String, PostgresRegion>,
    /// Deadline of the whole action, connections included.
    #[serde(default = "super::policy::default_hook_timeout_ms")]
    pub timeout_ms: u64,
}

/// One region's PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresRegion {
    /// libpq-style connection string (`host=.. port=.. user=.. dbname=..`) or URL, without a
    /// password. TLS is not offered: `sslmode` may be `disable` or `prefer` (which then
    /// connects in plain text), so use it on a trusted network or through a tunnel.
    pub dsn: String,
    /// Where this witness reads the password; absent when the server needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// Fence hooks only: a program that stops this server (for example `pg_ctl stop` over
    /// ssh). When set, the fence runs it instead of making the server read-only by SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopCommand>,
}

/// A program and its arguments, run like an `exec` hook (same placeholders and
/// environment, the hook's deadline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopCommand {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
}

impl PostgresHook {
    /// Checks the hook's own fields; `regions` are the policy's region names. `key` is the
    /// hook's key (`hooks.NAME`).
    pub(crate) fn validate(&self, key: &str, regions: &BTreeSet<&str>) -> Result<(), ConfigError> {
        if self.regions.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.regions"),
                "a postgres hook needs the connection of at least one region",
            ));
        }
        for (name, region) in &self.regions {
            let rkey = format!("{key}.regions.{name}");
            if !regions.contains(name.as_str()) {
                return Err(ConfigError::new(
                    rkey,
                    format!("{name:?} is not a region of this policy"),
                ));
            }
            check_dsn(&format!("{rkey}.dsn"), &region.dsn)?;
            if let Some(password) = &region.password {
                password.check(&format!("{rkey}.password"))?;
            }
            if let Some(stop) = &region.stop {
                if self.action != PostgresAction::Fence {
                    return Err(ConfigError::new(
                        format!("{rkey}.stop"),
                        format!(
                            "only a fence hook runs a stop command, this hook's action is {}",
                            self.action
                        ),
                    ));
                }
                super::policy::check_program(&format!("{rkey}.stop.program"), &stop.program)?;
            }
        }
        Ok(())
    }

    /// Checks that a group may use this hook for the step under `step_key` (`fence`,
    /// `rpo_check`, ...): the action must be that step's, and every candidate needs a
    /// connection. `key` names the group's entry (`groups[0].hooks.fence`).
    pub(crate) fn check_use(
        &self,
        key: &str,
        name: &str,
        step_key: &str,
        candidates: &[String],
    ) -> Result<(), ConfigError> {
        if self.action.group_hooks_key() != step_key {
            return Err(ConfigError::new(
                key,
                format!(
                    "hook {name:?} is a postgres {} hook; list it under {}",
                    self.action,
                    self.action.group_hooks_key()
                ),
            ));
        }
        if let Some(missing) = candidates.iter().find(|c| !self.regions.contains_key(*c)) {
            return Err(ConfigError::new(
                key,
                format!("hook {name:?} has no connection for candidate region {missing:?} (hooks.{name}.regions)"),
            ));
        }
        Ok(())
    }
}

/// A connection string must parse, name a host, carry no password and ask for no TLS (the
/// hook speaks plain TCP).
fn check_dsn(key: &str, dsn: &str) -> Result<(), ConfigError> {
    // The parser's causes name an option or a byte position, never a value, so they are
    // safe to show even when the string holds a password.
    let config = tokio_postgres::Config::from_str(dsn).map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        ConfigError::new(
            key,
            format!(
                "not a valid connection string (key=value pairs or a postgresql:// URL){cause}"
            ),
        )
    })?;
    if config.get_password().is_some() {
        return Err(ConfigError::new(
            key,
            "a connection string must not contain the password: reference it with `password = { file = .. }` or `{ env = .. }`",
        ));
    }
    if config.get_hosts().is_empty() {
        return Err(ConfigError::new(key, "the connection string names no host"));
    }
    use tokio_postgres::config::SslMode;
    if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
        return Err(ConfigError::new(
            key,
            "only sslmode=disable or prefer is supported: the postgres hook connects without TLS (use a trusted network or a tunnel)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_checks_name_the_problem_without_echoing_it() {
        check_dsn("k", "host=127.0.0.1 port=5432 user=arbiter dbname=postgres").unwrap();
        check_dsn("k", "postgresql://arbiter@127.0.0.1:5432/postgres").unwrap();
        let e = check_dsn("k", "host=h user=u password=hunter2").unwrap_err();
        assert!(e.reason.contains("must not contain the password"), "{e}");
        assert!(!e.reason.contains("hunter2"), "{e}");
        let e = check_dsn("k", "postgresql://u:hunter2@h/db").unwrap_err();
        assert!(!e.reason.contains("hunter2"), "{e}");
        let e = check_dsn("k", "user=u dbname=d").unwrap_err();
        assert!(e.reason.contains("no host"), "{e}");
        let e = check_dsn("k", "host=h sslmode=require").unwrap_err();
        assert!(e.reason.contains("only sslmode=disable or prefer"), "{e}");
        let e = check_dsn("k", "host=h colour=red").unwrap_err();
        assert!(e.reason.contains("unknown option `colour`"), "{e}");
        let e = check_dsn("k", "host=h password='hunter2").unwrap_err();
        assert!(e.reason.contains("not a valid connection string"), "{e}");
        assert!(!e.reason.contains("hunter2"), "{e}");
    }
}
