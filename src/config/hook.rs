//! What every hook kind shares in the policy: the default and bounds of a hook's timeout, and
//! the check that a program it runs exists here. It must never run a hook: that is
//! `crate::hooks`, at the moment of a step.

use std::path::Path;

use super::error::ConfigError;

/// Default time a hook may take before the step counts it as failed.
pub(super) fn default_hook_timeout_ms() -> u64 {
    30_000
}

pub(super) fn check_timeout(key: &str, timeout_ms: u64) -> Result<(), ConfigError> {
    /// A hook that needs more than 10 minutes should report progress another way.
    const HOOK_TIMEOUT_MS_MAX: u64 = 600_000;
    if timeout_ms == 0 || timeout_ms > HOOK_TIMEOUT_MS_MAX {
        return Err(ConfigError::new(
            format!("{key}.timeout_ms"),
            format!("{timeout_ms} is outside 1..={HOOK_TIMEOUT_MS_MAX}"),
        ));
    }
    Ok(())
}

/// An `exec` hook's program must be an absolute path to an executable regular file on the
/// witness that validates the policy, so a typo is refused now rather than during a
/// failover. (Every witness that may become leader needs it at the same path.)
pub(crate) fn check_program(key: &str, program: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    /// Any of the owner, group and other execute bits.
    const MODE_EXECUTE_ANY: u32 = 0o111;
    if !program.is_absolute() {
        return Err(ConfigError::new(key, "must be an absolute path"));
    }
    let shown = program.display();
    let meta = std::fs::metadata(program).map_err(|e| {
        ConfigError::new(key, format!("{shown} cannot be used on this witness: {e}"))
    })?;
    if !meta.is_file() {
        return Err(ConfigError::new(
            key,
            format!("{shown} is not a regular file"),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & MODE_EXECUTE_ANY == 0 {
        return Err(ConfigError::new(
            key,
            format!("{shown} is not executable (mode {:o})", mode & 0o7777),
        ));
    }
    Ok(())
}
