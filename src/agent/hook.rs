//! The agent's commands (`--on-gain`, `--on-lose`, `--on-start-without-lease`). Each runs
//! with `sh -c` as the leader of a process group of its own, so that a timeout, or a lease
//! lost while on-gain still runs, kills everything the command started and not only the
//! shell. Every command is bounded by its timeout.
//!
//! Must never: run a command without a deadline, or leave a killed command's children
//! running.

use std::process::Stdio;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Output of a command kept in the agent's log.
const OUTPUT_BYTES_MAX: usize = 2_048;
/// How long to wait for a killed command's pipes to close: SIGKILL leaves no choice, so
/// only a grandchild that left the group can hold them open; it is not waited for.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// One command to run and what it is told.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `on-gain`, `on-lose` or `on-start-without-lease`: logged and passed as
    /// `ARBITER_EVENT`.
    pub event: &'static str,
    pub command: String,
    pub timeout: Duration,
    pub group: String,
    pub region: String,
    pub epoch: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with status 0.
    Succeeded,
    /// Exited with another status, or could not be started.
    Failed,
    /// Still running at its timeout: its process group was killed.
    TimedOut,
    /// Stopped on purpose (the lease was lost while it ran): its process group was killed.
    Killed,
}

/// Runs `spec` to its end or its timeout.
pub async fn run(spec: Spec) -> Outcome {
    supervise(spec, None).await
}

/// A command running in the background (on-gain), until it ends or [`Running::kill`].
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Outcome>,
}

impl Running {
    /// Starts `spec` in the background.
    pub fn spawn(spec: Spec) -> Running {
        let (stop, stopped) = oneshot::channel();
        Running {
            stop: Some(stop),
            task: tokio::spawn(supervise(spec, Some(stopped))),
        }
    }

    /// Kills the command's process group if it still runs, and waits until it is reaped.
    pub async fn kill(mut self) -> Outcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or(Outcome::Killed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the sender stops the command too (the receiver sees it closed).
        self.stop.take();
    }
}

/// SIGKILL to every process of the group led by `pid`.
fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    // The group's id is the pid of our own child, not reaped yet or with members left, so
    // it cannot belong to anyone else.
    let rc = unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::error!(pid, error = %e, "cannot kill the command's process group");
        }
    }
}

async fn supervise(spec: Spec, stop: Option<oneshot::Receiver<()>>) -> Outcome {
    let event = spec.event;
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&spec.command)
        .env("ARBITER_GROUP", &spec.group)
        .env("ARBITER_REGION", &spec.region)
        .env("ARBITER_EPOCH", spec.epoch.to_string())
        .env("ARBITER_EVENT", event)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: killing it reaches whatever the shell started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(event, error = %e, "cannot start the command");
            return Outcome::Failed;
        }
    };
    let Some(pid) = child.id() else {
        tracing::error!(event, "the command exited before it could be watched");
        return Outcome::Failed;
    };
    let output = child.wait_with_output();
    tokio::pin!(output);
    let stopped = async {
        match stop {
            // Sent or dropped: either way the command must stop.
            Some(rx) => {
                let _ = rx.await;
            }
            None => futures::future::pending().await,
        }
    };
    let ended = tokio::select! {
        out = &mut output => Ended::Exited(out),
        _ = tokio::time::sleep(spec.timeout) => Ended::TimedOut,
        _ = stopped => Ended::Stopped,
    };
    match ended {
        Ended::Stopped => {
            kill_group(pid);
            let _ = tokio::time::timeout(REAP_WAIT, &mut output).await;
            tracing::warn!(
                event,
                "command killed with its process group: the lease was lost while it ran"
            );
            Outcome::Killed
        }
        Ended::Exited(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if text.len() > OUTPUT_BYTES_MAX {
                let mut cut = OUTPUT_BYTES_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            if out.status.success() {
                tracing::info!(event, output = %text.trim(), "command succeeded");
                Outcome::Succeeded
            } else {
                tracing::error!(event, status = %out.status, output = %text.trim(), "command failed");
                Outcome::Failed
            }
        }
        Ended::Exited(Err(e)) => {
            tracing::error!(event, error = %e, "command failed");
            Outcome::Failed
        }
        Ended::TimedOut => {
            kill_group(pid);
            let _ = tokio::time::timeout(REAP_WAIT, &mut output).await;
            tracing::error!(
                event,
                timeout_ms = spec.timeout.as_millis() as u64,
                "command timed out and was killed with its process group"
            );
            Outcome::TimedOut
        }
    }
}

enum Ended {
    Exited(std::io::Result<std::process::Output>),
    TimedOut,
    Stopped,
}
