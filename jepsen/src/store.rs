//! The store: `jepsen/store/<test>/<timestamp>/` per run (history, test.json, results, node
//! logs and data dirs) and a `latest` link in `jepsen/store/<test>/` to the newest run.
//! The store is git-ignored; nothing here is ever deleted by the harness.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `jepsen/store`, next to this crate's manifest.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("store")
}

/// The workspace root (where the arbiter crate lives).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// UTC `YYYYMMDDTHHMMSS` of `t` (civil-from-days; no time zone data needed).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Creates a fresh run directory for `test` and points `latest` at it.
pub fn create_run(test: &str) -> anyhow::Result<PathBuf> {
    let base = root().join(test);
    std::fs::create_dir_all(&base)?;
    let mut stamp = timestamp(SystemTime::now());
    // Two runs in the same second get distinct directories (bounded: a handful at most).
    for n in 1..100 {
        if !base.join(&stamp).exists() {
            break;
        }
        stamp = format!("{}-{n}", timestamp(SystemTime::now()));
    }
    let dir = base.join(&stamp);
    std::fs::create_dir_all(&dir)?;
    let latest = base.join("latest");
    let _ = std::fs::remove_file(&latest);
    std::os::unix::fs::symlink(&stamp, &latest)?;
    Ok(dir)
}

/// The commit checked out in the workspace, if git can tell.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000");
        // 2024-02-29 12:34:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(timestamp(t), "20240229T123456");
    }
}
