//! Long-running processes inside the hosts' namespaces (witnesses, agents, health endpoints,
//! delay proxies): start, restart, `kill -9`, `SIGSTOP`/`SIGCONT`, stop.
//!
//! A process is started as `ip netns exec NS PROGRAM ...`; `ip` executes the program in place,
//! so the pid we hold is the program's own. Output is appended to a log file in the run's
//! store. This module owns no policy about when to do any of it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a stopping process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A process the harness can start again with the same command.
#[derive(Debug)]
pub struct Proc {
    /// Host name it runs on (`n1`, `db-a`).
    pub host: String,
    ns: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Whether the harness stopped it with SIGSTOP (and has not continued it yet).
    pub paused: bool,
    /// When it was last started: libfaketime measures a rate from the start of the process,
    /// so the monotonic clock nemesis needs the process's age to keep its clock continuous.
    pub started_at: Option<Instant>,
}

impl Proc {
    pub fn new(
        host: &str,
        ns: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Proc {
        Proc {
            host: host.to_string(),
            ns: ns.to_string(),
            argv,
            env,
            log,
            child: None,
            paused: false,
            started_at: None,
        }
    }

    /// Starts the process unless it is running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("{}", self.log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(&self.argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} on {}", self.argv[0], self.host))?;
        self.child = Some(child);
        self.paused = false;
        self.started_at = Some(Instant::now());
        Ok(())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether it was started and has not exited (reaps it if it has).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid of our own child; no memory involved.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal_child(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.paused = false;
    }

    fn signal_child(&self, c: &Child, sig: i32) {
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    pub fn pause(&mut self) {
        if self.running() {
            self.signal(libc::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        self.signal_child(&c, libc::SIGCONT);
        self.signal_child(&c, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_child(&c, libc::SIGKILL);
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
