//! Reads a secret (a webhook key, a TSIG key) from where its [`SecretRef`] points, at the moment
//! it is used, so a rotated secret file takes effect without a restart.
//!
//! This module owns the secret bytes while a request is signed. It must never put them into
//! an error, a log line or a `Debug` rendering: errors name the file or variable only.

use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

use crate::config::SecretRef;

/// A secret file larger than this is a mistake (a key file is tens of bytes), not a key.
const SECRET_BYTES_MAX: u64 = 64 * 1024;

/// Secret bytes. `Debug` shows only the length.
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    /// Reads the secret: the file's contents without trailing newline characters, or the
    /// environment variable's value. An empty secret is refused: it would sign with no key.
    /// The error is one line naming where the secret was looked for, never its content.
    pub(crate) fn read(reference: &SecretRef) -> Result<Secret, String> {
        let (bytes, source) = match (&reference.file, &reference.env) {
            (Some(path), None) => {
                let shown = path.display();
                let file = std::fs::File::open(path)
                    .map_err(|e| format!("cannot read secret file {shown}: {e}"))?;
                let mut bytes = Vec::new();
                file.take(SECRET_BYTES_MAX + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("cannot read secret file {shown}: {e}"))?;
                if bytes.len() as u64 > SECRET_BYTES_MAX {
                    return Err(format!(
                        "secret file {shown} is larger than {SECRET_BYTES_MAX} bytes"
                    ));
                }
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                (bytes, format!("secret file {shown}"))
            }
            (None, Some(var)) => {
                let value = std::env::var_os(var)
                    .ok_or_else(|| format!("secret environment variable {var} is not set"))?;
                (
                    value.into_vec(),
                    format!("secret environment variable {var}"),
                )
            }
            _ => {
                return Err("the secret reference needs exactly one of `file` or `env`".into());
            }
        };
        if bytes.is_empty() {
            return Err(format!("{source} is empty"));
        }
        Ok(Secret(bytes))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_ref(path: &std::path::Path) -> SecretRef {
        SecretRef {
            file: Some(path.to_path_buf()),
            env: None,
        }
    }

    #[test]
    fn trailing_newline_is_trimmed_and_debug_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cr3t-value\r\n").unwrap();
        let secret = Secret::read(&file_ref(&path)).unwrap();
        assert_eq!(secret.as_bytes(), b"s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "Secret(12 bytes)");
    }

    #[test]
    fn empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n").unwrap();
        let e = Secret::read(&file_ref(&path)).unwrap_err();
        assert!(e.contains("is empty") && e.contains("key"), "{e}");
    }

    #[test]
    fn unset_variable_is_named() {
        let e = Secret::read(&SecretRef {
            file: None,
            env: Some("ARBITER_TEST_SURELY_UNSET_SECRET".into()),
        })
        .unwrap_err();
        assert!(
            e.contains("ARBITER_TEST_SURELY_UNSET_SECRET is not set"),
            "{e}"
        );
    }
}
