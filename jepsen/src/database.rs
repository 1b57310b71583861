//! The database of a region, as far as the harness models one: a state file on the region's
//! database host that says whether its primary accepts writes, and for which epoch.
//!
//! The agent's own commands move it, as they would move a real database: `--on-gain` runs
//! `jepsen database open` (the primary opens for writes at the agent's `ARBITER_EPOCH`
//! after `--db-latency-ms`, the time a promotion or a start takes) and `--on-lose` runs
//! `jepsen database close` (it stops accepting writes after the same latency, the time a
//! stop takes). The watchdog monitor ([`crate::watchdog`]) closes it at once when the
//! agent's kicks stop, as a reset of the host would; a hard fence (the fence hook under
//! `--hard-fence`) sets a floor below which no epoch is accepted. The writer
//! ([`crate::workload::writer`]) writes only while [`Database::accepts`] says so, at the
//! instant each write is stamped; nothing reads the agent's state file to decide.
//!
//! So a paused agent's database keeps writing, as a real one would: its on-lose cannot
//! run, and only the watchdog closes it.
//!
//! Must never: open for an epoch the agent did not pass, or leave a half-written state file
//! (every change is a write to a temporary file and a rename).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// The state file in each database host's node directory.
pub const STATE_FILE: &str = "database";
/// Longest latency an open or close honours, whatever its options say (a promotion that
/// takes longer is a fault of its own, not a latency).
const LATENCY_MS_MAX: u64 = 10_000;

/// What the state file says: open for writes at an epoch, or closed (and by whom).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbState {
    Open { epoch: u64 },
    Closed { epoch: u64, by: String },
}

impl DbState {
    /// The epoch it is (or was last) open at.
    pub fn epoch(&self) -> u64 {
        match self {
            DbState::Open { epoch } | DbState::Closed { epoch, .. } => *epoch,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, DbState::Open { .. })
    }

    fn render(&self) -> String {
        match self {
            DbState::Open { epoch } => format!("open {epoch}\n"),
            DbState::Closed { epoch, by } => format!("closed {epoch} {by}\n"),
        }
    }

    fn parse(text: &str) -> Result<DbState, String> {
        let mut words = text.split_whitespace();
        let what = words.next().ok_or("empty database state file")?;
        let epoch = words
            .next()
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| format!("no epoch in the database state {text:?}"))?;
        match what {
            "open" => Ok(DbState::Open { epoch }),
            "closed" => Ok(DbState::Closed {
                epoch,
                by: words.next().unwrap_or("unknown").to_string(),
            }),
            _ => Err(format!("unknown database state {text:?}")),
        }
    }
}

/// One region's database: its state file and its hard-fence file.
#[derive(Debug, Clone)]
pub struct Database {
    state: PathBuf,
    fence: PathBuf,
}

impl Database {
    /// The database of the host whose node directory is `dir`.
    pub fn in_dir(dir: &Path) -> Database {
        Database {
            state: dir.join(STATE_FILE),
            fence: dir.join(crate::hook_log::FENCE_FILE),
        }
    }

    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// The current state; a missing file is a database never opened (closed at epoch 0).
    pub fn state(&self) -> Result<DbState, String> {
        match std::fs::read_to_string(&self.state) {
            Ok(text) => DbState::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DbState::Closed {
                epoch: 0,
                by: "never-opened".into(),
            }),
            Err(e) => Err(format!("{}: {e}", self.state.display())),
        }
    }

    /// The epoch it accepts writes of right now, if any: open, and not below a hard fence.
    /// Read at the instant a write is stamped.
    pub fn accepts(&self) -> Option<u64> {
        let DbState::Open { epoch } = self.state().ok()? else {
            return None;
        };
        let fenced = crate::hook_log::fenced_epoch(&self.fence).is_some_and(|f| epoch < f);
        (!fenced).then_some(epoch)
    }

    /// Writes `state` whole (temporary file and rename).
    pub fn set(&self, state: &DbState) -> anyhow::Result<()> {
        let tmp = self.state.with_extension("tmp");
        std::fs::write(&tmp, state.render()).with_context(|| format!("{}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state)
            .with_context(|| format!("rename to {}", self.state.display()))?;
        Ok(())
    }

    /// Closes it now (the watchdog's reset, or a close after its latency), keeping the epoch
    /// it was open at.
    pub fn close(&self, by: &str) -> anyhow::Result<DbState> {
        let epoch = self.state().map(|s| s.epoch()).unwrap_or(0);
        let closed = DbState::Closed {
            epoch,
            by: by.to_string(),
        };
        self.set(&closed)?;
        Ok(closed)
    }
}

/// `jepsen database open|close`: the agent's on-gain and on-lose commands. Open takes the
/// epoch from `ARBITER_EPOCH` (the agent's); both wait `latency_ms` first, as a promotion or
/// a stop would. An error is a failed command (exit code non-zero), which the agent logs.
pub fn command(file: &Path, action: &str, latency_ms: u64) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .context("the database state file has no directory")?;
    let db = Database {
        state: file.to_path_buf(),
        fence: dir.join(crate::hook_log::FENCE_FILE),
    };
    std::thread::sleep(Duration::from_millis(latency_ms.min(LATENCY_MS_MAX)));
    match action {
        "open" => {
            let epoch = std::env::var("ARBITER_EPOCH")
                .ok()
                .and_then(|e| e.parse::<u64>().ok())
                .context("no ARBITER_EPOCH: `open` runs as the agent's on-gain")?;
            db.set(&DbState::Open { epoch })
        }
        "close" => db.close("on-lose").map(|_| ()),
        _ => anyhow::bail!("unknown database action {action:?} (open or close)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_closes_and_honours_the_hard_fence() {
        let dir = std::env::temp_dir().join(format!("jepsen-database-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::in_dir(&dir);
        let _ = std::fs::remove_file(db.state_path());
        let _ = std::fs::remove_file(dir.join(crate::hook_log::FENCE_FILE));
        assert_eq!(db.accepts(), None, "never opened");
        db.set(&DbState::Open { epoch: 3 }).unwrap();
        assert_eq!(db.accepts(), Some(3));
        std::fs::write(dir.join(crate::hook_log::FENCE_FILE), "3\n").unwrap();
        assert_eq!(
            db.accepts(),
            Some(3),
            "a fence of epoch 3 leaves epoch 3 open"
        );
        std::fs::write(dir.join(crate::hook_log::FENCE_FILE), "4\n").unwrap();
        assert_eq!(db.accepts(), None, "a fence of epoch 4 closes epoch 3");
        let closed = db.close("watchdog").unwrap();
        assert_eq!(
            closed,
            DbState::Closed {
                epoch: 3,
                by: "watchdog".into()
            }
        );
        assert_eq!(db.state().unwrap(), closed);
        std::fs::write(db.state_path(), "half").unwrap();
        assert!(db.state().is_err());
        assert_eq!(db.accepts(), None, "an unreadable state accepts nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
