//! The one error type for configuration input (node file and policy): which key, and why.

use std::fmt;

/// A configuration value that was refused. `key` is the dotted path of the offending key as
/// the user wrote it (`groups[1].candidates`, `tls.ca`), `reason` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the key, or the file name for errors about the whole file.
    pub key: String,
    /// Why the value was refused, phrased so the user knows what to change.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A TOML syntax or schema error (unknown key, wrong type) from the parser, located by
    /// line and column in `source`.
    pub fn parse(file: &str, source: &str, err: toml::de::Error) -> Self {
        let at = err.span().map(|span| {
            let before = &source[..span.start.min(source.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        Self::new(
            file,
            format!("{}{}", at.unwrap_or_default(), err.message().trim_end()),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Names of regions, groups, hooks and sites: lowercase DNS-label style, so they can appear
/// in DNS names, metric labels and file names without escaping.
pub(crate) fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    const NAME_LEN_MAX: usize = 63; // one DNS label
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{name:?} is not a valid name: use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"),
        ))
    }
}
