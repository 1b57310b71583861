//! `arbiter agent`: the lease-holding sidecar of a database (or any primary).
//!
//! It acquires the lease of its (group, region) while that region is active, renews it
//! every third of the lease, and runs `on-gain` each time it comes to hold the lease and
//! `on-lose` (self-fence) the moment the lease deadline passes without a renewal or a
//! renewal is refused. The deadline is the send time of the last successful request plus the
//! lease, on this process's monotonic clock ([`crate::fencing::LeaseClient`]), and the
//! self-fence timer runs independently of any request in flight: it fires on time even when
//! no witness answers, and right away after the process was paused past its deadline. The
//! current state is written atomically to a JSON file for the database and tools to read.
//!
//! An agent that starts without getting the lease (its region is not active, the lease is
//! revoked, or no witness answers) runs `on-lose` once before anything else: the database
//! may have been started before the agent, or left running by an agent that crashed, and
//! must not keep accepting writes without a lease (fail closed).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::fencing::{LeaseClient, LeaseState};
use crate::wallclock::now_ms;

/// How long an on-gain or on-lose command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Output of a command kept in the agent's log.
const COMMAND_OUTPUT_BYTES_MAX: usize = 2_048;

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub group: String,
    pub region: String,
    /// Shown as the lease holder in `arbiter status`.
    pub holder: String,
    /// Shell command run (`sh -c`) when the lease is lost: stop accepting writes.
    pub on_lose: Option<String>,
    /// Shell command run when the lease is gained: accept writes.
    pub on_gain: Option<String>,
    /// Where the current state is written as JSON (atomically: write then rename).
    pub state_file: Option<PathBuf>,
    /// Pause between acquire attempts while the lease is not held.
    pub retry: Duration,
}

/// What the agent writes to its state file.
#[derive(Debug, Clone, Serialize)]
struct AgentState<'a> {
    group: &'a str,
    region: &'a str,
    holder: &'a str,
    /// Whether this region may accept writes right now.
    holding: bool,
    /// The epoch the lease is held at (or the group's current epoch when not held).
    epoch: u64,
    /// Milliseconds until the lease deadline when holding.
    deadline_in_ms: Option<u64>,
    /// The group's active region as last reported.
    active: &'a str,
    /// What happened last, in words.
    event: &'a str,
    /// When `holding` last changed (wall-clock ms): when the lease was gained or lost,
    /// even after later attempts rewrote the file.
    since_ms: u64,
    updated_at_ms: u64,
}

/// Runs the agent until `shutdown` completes. On shutdown while holding, the lease is given
/// up by running `on-lose` first.
pub async fn run(
    config: AgentConfig,
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let lease = LeaseClient::new(client, &config.group, &config.region, &config.holder);
    let agent = Agent {
        config,
        lease,
        since: std::sync::Mutex::new(None),
    };
    tokio::pin!(shutdown);
    let mut holding: Option<(u64, Duration, Instant)> = None;
    let mut active = String::new();
    let mut last_epoch = 0;
    // Whether on-lose has run since the lease was last held. An agent starts "not fenced":
    // the database may have been started before it (or left running by a crashed agent), so
    // the first attempt that does not yield a lease fences it (fail closed), once.
    let mut fenced = false;
    loop {
        match holding {
            None => {
                let result = tokio::select! {
                    _ = &mut shutdown => return,
                    r = agent.lease.acquire() => r,
                };
                let event = match result {
                    Ok(LeaseState::Held {
                        epoch,
                        lease,
                        deadline,
                    }) if Instant::now() < deadline => {
                        holding = Some((epoch, lease, deadline));
                        fenced = false;
                        active = agent.config.region.clone();
                        last_epoch = epoch;
                        tracing::info!(group = %agent.config.group, region = %agent.config.region, epoch, "lease gained");
                        agent.write_state(true, epoch, Some(deadline), &active, "lease gained");
                        agent
                            .run_command("on-gain", agent.config.on_gain.as_deref(), epoch)
                            .await;
                        continue;
                    }
                    Ok(LeaseState::Held { epoch, .. }) => {
                        last_epoch = epoch;
                        "lease granted but already expired on arrival".to_string()
                    }
                    Ok(LeaseState::Refused {
                        active: a,
                        epoch,
                        message,
                        ..
                    }) => {
                        active = a;
                        last_epoch = epoch;
                        message
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the cluster to acquire the lease");
                        "no witness reachable".to_string()
                    }
                };
                if fenced {
                    agent.write_state(false, last_epoch, None, &active, &event);
                } else {
                    fenced = true;
                    let why = format!("started without the lease: {event}");
                    agent.lose(last_epoch, &active, &why).await;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(agent.config.retry) => {}
                }
            }
            Some((epoch, lease, deadline)) => {
                // Every way out of holding below runs on-lose.
                fenced = true;
                let renew_at = deadline.checked_sub(lease * 2 / 3).unwrap_or(deadline);
                let outcome = tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline) => Renewal::Expired,
                    _ = &mut shutdown => Renewal::Shutdown,
                    r = async {
                        tokio::time::sleep_until(renew_at).await;
                        agent.lease.renew(epoch).await
                    } => Renewal::Answer(r),
                };
                match outcome {
                    Renewal::Expired => {
                        holding = None;
                        agent
                            .lose(epoch, &active, "lease deadline passed without a renewal")
                            .await;
                    }
                    Renewal::Shutdown => {
                        agent.lose(epoch, &active, "agent stopping").await;
                        return;
                    }
                    Renewal::Answer(Ok(LeaseState::Held { deadline: next, .. })) => {
                        // A grant whose deadline is already past (the process was paused
                        // while the answer was in flight) is no lease at all.
                        if Instant::now() >= next {
                            holding = None;
                            agent
                                .lose(epoch, &active, "renewal arrived after its own deadline")
                                .await;
                        } else {
                            holding = Some((epoch, lease, next));
                            agent.write_state(true, epoch, Some(next), &active, "lease renewed");
                        }
                    }
                    Renewal::Answer(Ok(LeaseState::Refused {
                        active: a,
                        epoch: current,
                        message,
                        ..
                    })) => {
                        holding = None;
                        active = a;
                        last_epoch = current;
                        agent
                            .lose(epoch, &active, &format!("renewal refused: {message}"))
                            .await;
                    }
                    Renewal::Answer(Err(e)) => {
                        // Keep the lease until its deadline; try again shortly.
                        tracing::warn!(error = %e, "renewal failed; retrying until the deadline");
                        let retry_at =
                            (Instant::now() + agent.config.retry.min(lease / 6)).min(deadline);
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(retry_at) => {}
                            _ = &mut shutdown => {
                                agent.lose(epoch, &active, "agent stopping").await;
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

enum Renewal {
    Expired,
    Shutdown,
    Answer(Result<LeaseState, crate::client::ClientError>),
}

struct Agent {
    config: AgentConfig,
    lease: LeaseClient,
    /// The last `holding` written and since when (wall-clock ms), for the state file.
    since: std::sync::Mutex<Option<(bool, u64)>>,
}

impl Agent {
    async fn lose(&self, epoch: u64, active: &str, why: &str) {
        tracing::warn!(group = %self.config.group, region = %self.config.region, epoch, reason = why, "lease lost: self-fencing");
        self.write_state(false, epoch, None, active, why);
        self.run_command("on-lose", self.config.on_lose.as_deref(), epoch)
            .await;
    }

    fn write_state(
        &self,
        holding: bool,
        epoch: u64,
        deadline: Option<Instant>,
        active: &str,
        event: &str,
    ) {
        let Some(path) = &self.config.state_file else {
            return;
        };
        let now = now_ms();
        let since_ms = {
            let mut since = self.since.lock().expect("agent state lock");
            match *since {
                Some((was, at)) if was == holding => at,
                _ => {
                    *since = Some((holding, now));
                    now
                }
            }
        };
        let state = AgentState {
            group: &self.config.group,
            region: &self.config.region,
            holder: &self.config.holder,
            holding,
            epoch,
            deadline_in_ms: deadline
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
            active,
            event,
            since_ms,
            updated_at_ms: now,
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the agent state file");
        }
    }

    /// Runs `command` with `sh -c`, bounded by COMMAND_TIMEOUT; logs its outcome.
    async fn run_command(&self, event: &str, command: Option<&str>, epoch: u64) {
        let Some(command) = command else { return };
        let child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env("ARBITER_GROUP", &self.config.group)
            .env("ARBITER_REGION", &self.config.region)
            .env("ARBITER_EPOCH", epoch.to_string())
            .env("ARBITER_EVENT", event)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(event, error = %e, "cannot start the command");
                return;
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text.truncate(COMMAND_OUTPUT_BYTES_MAX);
                if out.status.success() {
                    tracing::info!(event, output = %text.trim(), "command succeeded");
                } else {
                    tracing::error!(event, status = %out.status, output = %text.trim(), "command failed");
                }
            }
            Ok(Err(e)) => tracing::error!(event, error = %e, "command failed"),
            Err(_) => tracing::error!(
                event,
                timeout_s = COMMAND_TIMEOUT.as_secs(),
                "command timed out and was killed"
            ),
        }
    }
}
