//! `exec` hooks: runs the configured program with the step's context in its arguments and
//! environment, captures its output and waits for it, at most until its deadline.
//!
//! This module owns the hook's process group from spawn until it is reaped. It must never
//! leave a timed-out or abandoned hook running, never signal a process group after its
//! leader was reaped (the id could then belong to someone else), and never read more than
//! the output limit into memory.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::{sleep_until, timeout, Instant};

use super::{millis, Capture, HookContext, HookOutcome};

/// After the program exits, output still held open by a process it left in the background
/// is read for at most this long; the outcome is known, waiting longer only delays the step.
const EXIT_DRAIN: Duration = Duration::from_millis(1_000);

/// After `SIGKILL`, how long to wait for the kernel to end the program before giving up on
/// reaping it here (tokio then reaps it in the background).
const KILL_REAP: Duration = Duration::from_millis(5_000);

/// A program being replaced while we start it fails with "text file busy"; it is retried
/// this many times, `SPAWN_RETRY_DELAY` apart, before the hook fails. This also covers a
/// script written by this process whose write descriptor a concurrent fork still holds.
const SPAWN_RETRIES: u32 = 5;
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Output is read in chunks of this size: one pipe buffer page run, no more.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Runs `program` with `args` (placeholders substituted) for `ctx`; exit 0 is success.
pub(super) async fn run(
    program: &Path,
    args: &[String],
    timeout_ms: u64,
    ctx: &HookContext,
) -> HookOutcome {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms);
    let (mut process, mut output) = match spawn(program, args, ctx).await {
        Ok(spawned) => spawned,
        Err(e) => return HookOutcome::failed(spawn_failure(program, &e), started),
    };
    let mut capture = Capture::default();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut eof = false;
    let mut exited: Option<(io::Result<ExitStatus>, Instant)> = None;

    let timed_out = loop {
        if eof && exited.is_some() {
            break false;
        }
        let wake = match &exited {
            Some((_, at)) => (*at + EXIT_DRAIN).min(deadline),
            None => deadline,
        };
        tokio::select! {
            read = output.read(&mut chunk), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => capture.push(&chunk[..n]),
            },
            status = process.child.wait(), if exited.is_none() => {
                process.reaped = true;
                exited = Some((status, Instant::now()));
            }
            _ = sleep_until(wake) => break exited.is_none(),
        }
    };

    if timed_out {
        process.kill_group();
        if let Ok(Ok(_)) = timeout(KILL_REAP, process.child.wait()).await {
            process.reaped = true;
        }
        // The group is gone, so the pipe closes; still, never wait unbounded for it.
        let _ = timeout(EXIT_DRAIN, drain(&mut output, &mut capture, &mut chunk)).await;
        return HookOutcome::new(
            false,
            format!("timed out after {timeout_ms} ms; process group killed"),
            capture.into_output(),
            started,
        );
    }

    let (status, at) = exited.expect("the loop ends without a timeout only after the exit");
    let elapsed = millis(at - started);
    let (success, mut summary) = match status {
        Ok(status) => describe(status, elapsed),
        Err(e) => (false, format!("cannot wait for the program: {e}")),
    };
    if !eof {
        summary.push_str("; output cut short: a background process kept it open");
    }
    HookOutcome::new(success, summary, capture.into_output(), started)
}

/// A started hook process. Dropping it before it was reaped kills its whole process group,
/// so an abandoned hook (the caller dropped [`run`]'s future) leaves nothing running.
struct Process {
    child: Child,
    /// Set once `wait` returned: the process id may then be reused, so no more signals.
    reaped: bool,
}

impl Process {
    /// `SIGKILL` to the program's process group (its id is the program's pid, from
    /// `process_group(0)`), then to the program itself in case it left the group.
    fn kill_group(&mut self) {
        if self.reaped {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The
            // program is not reaped yet, so `pid` still names its (possibly zombie) process
            // and hence its group: the kernel does not hand out a live group id again.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Starts the program with stdin null and stdout and stderr on one pipe; returns the
/// process and the read end of the pipe.
async fn spawn(
    program: &Path,
    args: &[String],
    ctx: &HookContext,
) -> io::Result<(Process, pipe::Receiver)> {
    let (tx, rx) = pipe::pipe()?;
    let stdout: OwnedFd = tx.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;
    let fields = ctx.fields();
    let mut command = Command::new(program);
    command
        .args(args.iter().map(|arg| substitute(arg, &fields)))
        .envs(
            fields
                .iter()
                .map(|(name, value)| (format!("ARBITER_{}", name.to_ascii_uppercase()), value)),
        )
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .process_group(0);
    let mut attempt = 0;
    let child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_RETRIES => {
                attempt += 1;
                tokio::time::sleep(SPAWN_RETRY_DELAY).await;
            }
            Err(e) => return Err(e),
        }
    };
    // The command holds our copies of the pipe's write end; drop them now or the read end
    // would never see end-of-file.
    drop(command);
    Ok((
        Process {
            child,
            reaped: false,
        },
        rx,
    ))
}

/// Replaces `{name}` for each context field, in one left-to-right pass.
fn substitute(arg: &str, fields: &[(&'static str, String)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open + 1..];
        let value = tail.find('}').and_then(|close| {
            let name = &tail[..close];
            fields
                .iter()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| (value, close))
        });
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('{');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads what is left in the pipe into `capture` until end-of-file.
async fn drain(output: &mut pipe::Receiver, capture: &mut Capture, chunk: &mut [u8]) {
    while let Ok(n) = output.read(chunk).await {
        if n == 0 {
            break;
        }
        capture.push(&chunk[..n]);
    }
}

/// Success and summary for a program that exited by itself or was killed by a signal.
fn describe(status: ExitStatus, elapsed_ms: u128) -> (bool, String) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code == 0, format!("exit code {code} after {elapsed_ms} ms")),
        (None, Some(signal)) => (
            false,
            format!(
                "killed by signal {signal}{} after {elapsed_ms} ms",
                signal_name(signal)
                    .map(|name| format!(" ({name})"))
                    .unwrap_or_default()
            ),
        ),
        (None, None) => (false, format!("ended with {status} after {elapsed_ms} ms")),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// One line for a program that could not be started.
fn spawn_failure(program: &Path, e: &io::Error) -> String {
    let exists = program.exists();
    let program = program.display();
    match e.kind() {
        io::ErrorKind::NotFound if exists => {
            format!("cannot start {program}: its #! interpreter was not found")
        }
        io::ErrorKind::NotFound => format!("program {program} not found"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot start {program}: permission denied (is it executable?)")
        }
        _ => format!("cannot start {program}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> [(&'static str, String); 8] {
        HookContext {
            group: "checkout".into(),
            from: "region-a".into(),
            to: "region-b".into(),
            epoch: 7,
            operation: 42,
            step: "{step}".into(),
            witness: 1,
            term: 1,
            rpo: None,
        }
        .fields()
    }

    #[test]
    fn placeholders_are_substituted_once() {
        let f = fields();
        assert_eq!(
            substitute("--group={group} {from}->{to}@{epoch}/{operation}", &f),
            "--group=checkout region-a->region-b@7/42"
        );
        // A value containing a placeholder is not expanded again.
        assert_eq!(substitute("{step}", &f), "{step}");
    }

    #[test]
    fn unknown_braces_are_left_alone() {
        let f = fields();
        assert_eq!(substitute("{print $1} {}", &f), "{print $1} {}");
        assert_eq!(substitute("{{group}}", &f), "{checkout}");
        assert_eq!(substitute("tail {", &f), "tail {");
    }

    #[test]
    fn exit_statuses_are_described() {
        assert_eq!(
            describe(ExitStatus::from_raw(0), 5),
            (true, "exit code 0 after 5 ms".to_string())
        );
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8), 5),
            (false, "exit code 3 after 5 ms".to_string())
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL), 5),
            (false, "killed by signal 9 (SIGKILL) after 5 ms".to_string())
        );
    }
}
