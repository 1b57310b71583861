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
use super::secret_ref::SecretRef;

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
    #[serde(default = "super::hook::default_hook_timeout_ms")]
    pub timeout_ms: u64,
}

/// One region's PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresRegion {
    /// libpq-style connection string (`host=.. port=.. user=.. dbname=..`) or URL, without a
    /// password. TLS: `sslmode=verify-full sslrootcert=/path/ca.pem` (key=value form) checks
    /// the server's certificate against that CA and the host name; without `sslmode` (or
    /// `disable`) the session is plain TCP. Other modes are refused: they would not prove
    /// that the server is the one named.
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
                super::hook::check_program(&format!("{rkey}.stop.program"), &stop.program)?;
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

/// How a postgres hook's session is protected, from its connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresTls {
    /// Plain TCP (no `sslmode`, or `sslmode=disable`).
    Off,
    /// TLS; the server's certificate must chain to `ca` and name the connection's host.
    VerifyFull { ca: PathBuf },
}

/// Splits libpq's TLS keys (`sslmode`, `sslrootcert`), which the client library does not
/// understand as libpq does, from a connection string: the rest, and the TLS to use.
pub fn split_tls(dsn: &str) -> Result<(String, PostgresTls), String> {
    let url = dsn.starts_with("postgresql://") || dsn.starts_with("postgres://");
    if url {
        if dsn.contains("sslmode=") || dsn.contains("sslrootcert=") {
            return Err(
                "sslmode and sslrootcert are read from key=value connection strings only: write it as `host=.. port=.. sslmode=verify-full sslrootcert=..`"
                    .into(),
            );
        }
        return Ok((dsn.to_string(), PostgresTls::Off));
    }
    let (mut rest, mut mode, mut root) = (Vec::new(), None, None);
    for (key, value, raw) in key_values(dsn)? {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(PathBuf::from(value)),
            _ => rest.push(raw),
        }
    }
    let tls = match (mode.as_deref(), root) {
        (None | Some("disable"), None) => PostgresTls::Off,
        (None | Some("disable"), Some(_)) => {
            return Err("sslrootcert is set but sslmode is not verify-full".into())
        }
        (Some("verify-full"), Some(ca)) => PostgresTls::VerifyFull { ca },
        (Some("verify-full"), None) => {
            return Err("sslmode=verify-full needs sslrootcert=/path/to/ca.pem".into())
        }
        (Some(other), _) => {
            return Err(format!(
                "sslmode={other} is not supported: use sslmode=verify-full with sslrootcert (it checks that the server is the one named by host), or leave it out for plain TCP on a trusted network"
            ))
        }
    };
    Ok((rest.join(" "), tls))
}

/// The `key=value` pairs of a libpq connection string, each with its original text. Values
/// may be single-quoted (with `\'` and `\\` escapes). Errors never echo a value.
fn key_values(dsn: &str) -> Result<Vec<(String, String, String)>, String> {
    let chars: Vec<char> = dsn.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!(
                "not a valid connection string: option `{key}` has no value"
            ));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                        "not a valid connection string: the value of `{key}` has no closing quote"
                    ))
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(chars.get(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value, chars[start..i].iter().collect()));
    }
}

/// A connection string must parse, name a host and carry no password; TLS, when asked
/// for, must be `verify-full` with a CA file readable here.
fn check_dsn(key: &str, dsn: &str) -> Result<(), ConfigError> {
    let (dsn, tls) = split_tls(dsn).map_err(|reason| ConfigError::new(key, reason))?;
    let dsn = dsn.as_str();
    if let PostgresTls::VerifyFull { ca } = &tls {
        match std::fs::metadata(ca) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(ConfigError::new(
                    key,
                    format!("sslrootcert {} is not a regular file", ca.display()),
                ))
            }
            Err(e) => {
                return Err(ConfigError::new(
                    key,
                    format!("sslrootcert {} cannot be read: {e}", ca.display()),
                ))
            }
        }
    }
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
        for weak in ["require", "prefer", "verify-ca", "allow"] {
            let e = check_dsn("k", &format!("host=h sslmode={weak}")).unwrap_err();
            assert!(e.reason.contains("use sslmode=verify-full"), "{weak}: {e}");
        }
        let e = check_dsn("k", "host=h sslmode=verify-full").unwrap_err();
        assert!(e.reason.contains("needs sslrootcert"), "{e}");
        let e = check_dsn(
            "k",
            "host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err();
        assert!(e.reason.contains("/nonexistent/ca.pem"), "{e}");
        let e = check_dsn("k", "postgresql://h/db?sslmode=verify-full").unwrap_err();
        assert!(e.reason.contains("key=value"), "{e}");
        let ca = tempfile::NamedTempFile::new().unwrap();
        let dsn = format!(
            "host=h port=5432 sslmode = verify-full sslrootcert='{}' user=u",
            ca.path().display()
        );
        check_dsn("k", &dsn).unwrap();
        assert_eq!(
            split_tls(&dsn).unwrap(),
            (
                "host=h port=5432 user=u".to_string(),
                PostgresTls::VerifyFull {
                    ca: ca.path().to_path_buf()
                }
            )
        );
        let e = check_dsn("k", "host=h colour=red").unwrap_err();
        assert!(e.reason.contains("unknown option `colour`"), "{e}");
        let e = check_dsn("k", "host=h password='hunter2").unwrap_err();
        assert!(e.reason.contains("not a valid connection string"), "{e}");
        assert!(!e.reason.contains("hunter2"), "{e}");
    }
}
