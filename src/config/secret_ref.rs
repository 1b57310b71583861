//! A reference to a secret (a file or an environment variable of the witness process), as
//! written in the policy. It owns the reference and the check that it resolves on this
//! witness; it must never read the secret's contents (that is `crate::secret`'s job, at the
//! moment of use) and the secret itself never enters the Raft log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// Where a secret lives on each witness. The secret itself never enters the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// A file readable by the witness process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An environment variable of the witness process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl SecretRef {
    /// Checks that the reference names exactly one source and that it resolves here.
    pub(crate) fn check(&self, key: &str) -> Result<(), ConfigError> {
        match (&self.file, &self.env) {
            (Some(path), None) => match std::fs::metadata(path) {
                Ok(m) if m.is_file() => Ok(()),
                Ok(_) => Err(ConfigError::new(
                    format!("{key}.file"),
                    format!("{} is not a regular file", path.display()),
                )),
                Err(e) => Err(ConfigError::new(
                    format!("{key}.file"),
                    format!("secret file {} cannot be read: {e}", path.display()),
                )),
            },
            (None, Some(var)) => match std::env::var_os(var) {
                Some(_) => Ok(()),
                None => Err(ConfigError::new(
                    format!("{key}.env"),
                    format!("environment variable {var} is not set on this witness"),
                )),
            },
            _ => Err(ConfigError::new(
                key,
                "a secret reference needs exactly one of `file` or `env`",
            )),
        }
    }
}
