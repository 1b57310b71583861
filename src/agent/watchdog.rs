//! The agent's watchdog: the fence that still works when the agent itself cannot run.
//!
//! A paused agent (SIGSTOP, a stall, a hung host) cannot run `--on-lose`, so without help
//! its database keeps accepting writes past the lease deadline until the agent runs again.
//! With a watchdog, the agent opens the device when it gains the lease and kicks it only
//! while `now + timeout <= deadline`: when the kicks stop, for whatever reason, the device
//! fires no later than the lease deadline. In production the device is the kernel's
//! (`softdog`, or a hardware watchdog's driver), which resets the host; for tests any plain
//! file or FIFO stands in, read by a monitor of the test's own.
//!
//! The timeout is half the lease (whole seconds on a real device, set with
//! `WDIOC_SETTIMEOUT` and read back), so the kicks keep up with renewals at a third of the
//! lease. While armed, the agent self-fences `margin` before its deadline, so that after a
//! normal loss on-lose has `margin` to finish and the device is closed with the magic
//! character `V` before it fires.
//!
//! Must never: kick once `now + timeout` is past the lease deadline, open the device before
//! holding a lease (opening arms most drivers), or close it with `V` while the database may
//! still accept writes.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `WDIOC_SETTIMEOUT` from `<linux/watchdog.h>`: `_IOWR('W', 6, int)`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// The magic character: written just before closing, it tells the driver the close is on
/// purpose, so the watchdog stops instead of firing.
const MAGIC_CLOSE: &[u8] = b"V";
/// A kick: any byte but the magic character.
const KICK: &[u8] = b"\0";
/// Kicks per timeout (and per margin): several, so one late kick never lets it fire.
const KICKS_PER_TIMEOUT: u32 = 4;
/// The shortest pause between kicks; a stand-in with a tiny timeout must not spin.
const KICK_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// `--watchdog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No watchdog.
    Off,
    /// Use the device when it is there and writable; run without it otherwise.
    Automatic,
    /// Refuse to start without the device, and never hold a lease without arming it.
    Required,
}

/// The watchdog settings of an agent, checked at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub path: PathBuf,
    /// How long before its deadline the agent self-fences while armed.
    pub margin: Duration,
}

impl Config {
    /// Whether the agent uses a watchdog: `Ok(false)` when off, or automatic without a
    /// usable device; an error (naming the flag and the reason) when required and missing.
    /// Checks without opening: opening arms most drivers.
    pub fn check(&self) -> Result<bool, String> {
        if self.mode == Mode::Off {
            return Ok(false);
        }
        let usable = usable(&self.path);
        match (self.mode, usable) {
            (_, Ok(())) => Ok(true),
            (Mode::Required, Err(why)) => Err(format!(
                "--watchdog required: {}: {why} (load softdog or a hardware watchdog's driver, \
                 give its path with --watchdog-device, or use --watchdog automatic or off)",
                self.path.display()
            )),
            (_, Err(why)) => {
                tracing::warn!(path = %self.path.display(), reason = %why, "no usable watchdog: running without one");
                Ok(false)
            }
        }
    }
}

/// Whether `path` exists and may be opened for writing.
fn usable(path: &Path) -> Result<(), String> {
    std::fs::metadata(path).map_err(|e| e.to_string())?;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: access(2) on a NUL-terminated path we own.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// An open, armed watchdog and the task that kicks it.
pub struct Armed {
    file: Arc<File>,
    timeout: Duration,
    /// The lease deadline the kicks are bounded by; `None` stops them.
    deadline: Arc<Mutex<Option<Instant>>>,
    kicker: JoinHandle<()>,
    path: PathBuf,
}

impl Armed {
    /// Opens `config.path`, sets its timeout for `lease` and starts kicking while
    /// `now + timeout <= deadline`.
    pub fn arm(config: &Config, lease: Duration, deadline: Instant) -> Result<Armed, String> {
        let path = &config.path;
        let kind = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .file_type();
        let wanted = lease / 2;
        if config.margin * 3 >= lease {
            return Err(format!(
                "--watchdog-margin-ms {} is not below a third of the {} ms lease: the agent \
                 would self-fence before its first renewal",
                config.margin.as_millis(),
                lease.as_millis()
            ));
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if kind.is_fifo() {
            // A FIFO without a reader would block the open: fail instead.
            options.custom_flags(libc::O_NONBLOCK);
        } else if kind.is_file() {
            options.append(true);
        }
        let file = options
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let timeout = if kind.is_char_device() {
            match set_timeout(&file, wanted) {
                Ok(t) => t,
                Err(why) => {
                    // Opening armed it with the driver's old timeout: close on purpose.
                    let _ = (&file).write_all(MAGIC_CLOSE);
                    return Err(format!("{}: {why}", path.display()));
                }
            }
        } else {
            wanted
        };
        let file = Arc::new(file);
        let deadline = Arc::new(Mutex::new(Some(deadline)));
        let interval = (timeout.min(config.margin) / KICKS_PER_TIMEOUT).max(KICK_INTERVAL_MIN);
        let kicker = tokio::spawn(kick(file.clone(), timeout, deadline.clone(), interval));
        tracing::info!(path = %path.display(), timeout_ms = timeout.as_millis() as u64, "watchdog armed");
        Ok(Armed {
            file,
            timeout,
            deadline,
            kicker,
            path: path.clone(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The new lease deadline after a renewal, or `None` once the lease is lost: the kicks
    /// stop and the device fires within its timeout unless disarmed first.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().expect("watchdog deadline lock") = deadline;
    }

    /// Stops the kicks and closes the device with the magic character: only once the
    /// database cannot accept writes any more (on-lose succeeded).
    pub async fn disarm(mut self) {
        self.kicker.abort();
        let _ = (&mut self.kicker).await;
        match (&*self.file).write_all(MAGIC_CLOSE) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "watchdog disarmed (magic close)")
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot disarm the watchdog: it will fire")
            }
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        // Dropped without `disarm`: closed without the magic character, the device fires.
        self.kicker.abort();
    }
}

/// Sets the device's timeout to `wanted`, rounded down to whole seconds; the driver's
/// answer must not be longer.
fn set_timeout(file: &File, wanted: Duration) -> Result<Duration, String> {
    use std::os::fd::AsRawFd as _;
    let secs = wanted.as_secs();
    if secs == 0 {
        return Err(format!(
            "a device counts whole seconds and half the lease is {} ms: a watchdog device \
             needs a lease of at least 2 s",
            wanted.as_millis()
        ));
    }
    let mut value: libc::c_int = secs.min(libc::c_int::MAX as u64) as libc::c_int;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer, which lives
    // for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut value) };
    if rc != 0 {
        return Err(format!(
            "WDIOC_SETTIMEOUT {secs} s: {}",
            std::io::Error::last_os_error()
        ));
    }
    let set = Duration::from_secs(value.max(0) as u64);
    if set.is_zero() || set > wanted {
        return Err(format!(
            "the driver set a {} s timeout for the {secs} s asked: longer than half the lease",
            set.as_secs()
        ));
    }
    Ok(set)
}

async fn kick(
    file: Arc<File>,
    timeout: Duration,
    deadline: Arc<Mutex<Option<Instant>>>,
    interval: Duration,
) {
    loop {
        let allowed = deadline
            .lock()
            .expect("watchdog deadline lock")
            .is_some_and(|d| Instant::now() + timeout <= d);
        if allowed {
            if let Err(e) = (&*file).write_all(KICK) {
                // A full FIFO (its reader is slow) is not worth more than a debug line: the
                // next kick tries again.
                tracing::debug!(error = %e, "watchdog kick failed");
            }
        }
        tokio::time::sleep(interval).await;
    }
}
