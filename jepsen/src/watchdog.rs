//! The watchdog device of each database host, as the harness models one: a plain file the
//! agent opens and kicks (`arbiter agent --watchdog required --watchdog-device FILE`, each
//! kick one byte appended, a magic close the byte `V`), and a monitor in the harness process
//! that does what the kernel's driver would: once armed (a kick), it fires when no kick came
//! for the device's timeout, and a fired watchdog resets the host, which here means the
//! region's database is closed at once ([`crate::database::Database::close`] by `watchdog`)
//! and its agent killed and started again (a reset host boots without a lease; the new
//! agent arms the device anew, with the timeout of the lease it is granted then).
//!
//! The monitor runs in the harness, so no fault of the agent (a pause, a faked clock) reaches
//! it; it measures silence on the harness's monotonic clock, polling the file every
//! [`POLL`], so it fires at most two polls late. The timeout is the one the agent set
//! (half the lease, `watchdog_timeout_ms` in its state file, a real driver's
//! `WDIOC_SETTIMEOUT`), read at every kick.
//!
//! Must never: fire a watchdog that was closed with the magic character, or fire before its
//! timeout has passed without a kick.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ctx::Ctx;
use crate::database::Database;
use crate::history::OpType;
use crate::hosts::{Host, Role};
use crate::spec::GROUP;

/// The device file in each database host's node directory.
pub const DEVICE_FILE: &str = "watchdog";
/// How often the monitor looks at the device: a tenth of the shortest timeout the runs
/// use (half of a 1 s lease), so it fires well inside the lease margin.
pub const POLL: Duration = Duration::from_millis(20);
/// The magic close byte (as the agent writes it).
const MAGIC_CLOSE: u8 = b'V';

/// What the monitor knows of the device.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Device {
    /// Never opened, closed on purpose, or fired.
    Disarmed,
    /// Kicked last at this instant; fires once `timeout` passes without another.
    Armed {
        last_kick: Instant,
        timeout: Duration,
    },
}

/// The timeout the agent set, from its state file; `fallback` when it says nothing.
fn agent_timeout(state_file: &Path, fallback: Duration) -> Duration {
    std::fs::read_to_string(state_file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["watchdog_timeout_ms"].as_u64())
        .map(Duration::from_millis)
        .unwrap_or(fallback)
}

/// The device's next state after the bytes `new` arrived at `now` (empty: none did).
fn step(
    device: Device,
    new: &[u8],
    now: Instant,
    timeout: impl FnOnce() -> Duration,
) -> (Device, bool) {
    match new.last() {
        Some(&MAGIC_CLOSE) => (Device::Disarmed, false),
        // The timeout is read at every kick: the agent writes it to its state file just
        // after arming, which may come a moment after the first kick.
        Some(_) => (
            Device::Armed {
                last_kick: now,
                timeout: timeout(),
            },
            false,
        ),
        None => match device {
            Device::Armed { last_kick, timeout } if now.duration_since(last_kick) > timeout => {
                (Device::Disarmed, true)
            }
            d => (d, false),
        },
    }
}

/// Creates the (empty) device file of a database host, before its agent starts: the agent's
/// `--watchdog required` refuses to start without it.
pub fn create_device(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(DEVICE_FILE);
    std::fs::write(&path, b"")?;
    Ok(path)
}

/// Monitors `db`'s device for the whole run (the runner aborts it at the end); every firing closes the region's database and is
/// recorded as a `watchdog` operation `{group, region, epoch, silent_ms, was}` (`was` the
/// database's state before, so a firing that closed an open database says so).
pub async fn monitor(ctx: Ctx, db: Host, fallback: Duration) {
    let Role::Database { region } = db.role.clone() else {
        return;
    };
    let dir = ctx.cluster().node_dir(&db.name);
    let device_path = dir.join(DEVICE_FILE);
    let state_file = dir.join("agent.json");
    let database = Database::in_dir(&dir);
    let process = format!("watchdog-{region}");
    let mut device = Device::Disarmed;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    // Bounded by the run: aborted once the run ends.
    loop {
        tokio::time::sleep(POLL).await;
        buf.clear();
        if let Ok(mut f) = std::fs::File::open(&device_path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        offset += buf.len() as u64;
        let now = Instant::now();
        let silent = match device {
            Device::Armed { last_kick, .. } => now.duration_since(last_kick),
            Device::Disarmed => Duration::ZERO,
        };
        let (next, fired) = step(device, &buf, now, || agent_timeout(&state_file, fallback));
        device = next;
        if !fired {
            continue;
        }
        let was = database.state();
        let value = |epoch: u64| {
            json!({"group": GROUP, "region": region, "epoch": epoch,
                   "silent_ms": silent.as_millis() as u64,
                   "was": match &was { Ok(s) if s.is_open() => "open", Ok(_) => "closed", Err(_) => "unreadable" }})
        };
        let epoch = was.as_ref().map(|s| s.epoch()).unwrap_or(0);
        ctx.rec
            .invoke("watchdog", value(epoch), &process, Some(&db.name));
        let closed = database.close("watchdog");
        // The rest of the reset: the agent, paused or not, starts again.
        let reset = {
            let ctx = ctx.clone();
            let host = db.name.clone();
            tokio::task::spawn_blocking(move || {
                let mut c = ctx.cluster();
                match c.agents.get_mut(&host) {
                    Some(p) => {
                        p.kill9();
                        p.start()
                    }
                    None => Ok(()),
                }
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("agent restart panicked: {e}")))
        };
        match closed.and(reset) {
            Ok(_) => ctx.rec.complete(
                OpType::Ok,
                "watchdog",
                value(epoch),
                &process,
                Some(&db.name),
                None,
            ),
            Err(e) => ctx.rec.complete(
                OpType::Info,
                "watchdog",
                value(epoch),
                &process,
                Some(&db.name),
                Some(format!("{e:#}")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_after_its_timeout_without_kicks_and_never_after_a_magic_close() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let timeout = || Duration::from_millis(100);
        let (d, fired) = step(Device::Disarmed, b"", ms(500), timeout);
        assert!(!fired && d == Device::Disarmed, "never armed: never fires");
        let (d, _) = step(d, b"\0", ms(0), timeout);
        let (d, fired) = step(d, b"", ms(90), timeout);
        assert!(!fired, "within its timeout");
        let (d, _) = step(d, b"\0\0", ms(90), timeout);
        let (d, fired) = step(d, b"", ms(180), timeout);
        assert!(!fired, "a kick restarts the timeout");
        let (d, fired) = step(d, b"", ms(191), timeout);
        assert!(fired && d == Device::Disarmed, "silent past its timeout");
        let (d, _) = step(d, b"\0", ms(200), timeout);
        let (d, _) = step(d, b"\0V", ms(210), timeout);
        let (_, fired) = step(d, b"", ms(900), timeout);
        assert!(!fired, "closed on purpose");
    }
}
