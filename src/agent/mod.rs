//! `arbiter agent`: the lease-holding sidecar of a database (or any primary).
//!
//! It acquires the lease of its (group, region) while that region is active, renews it
//! every third of the lease, runs `on-gain` in the background each time it comes to hold
//! the lease, and runs `on-lose` (self-fence) the moment the lease deadline passes without
//! a renewal or a renewal is refused. The deadline is the send time of the last successful
//! request plus the lease, on this process's monotonic clock ([`crate::fencing::LeaseClient`]),
//! and the self-fence timer runs independently of any request or command in flight: it
//! fires on time even when no witness answers or on-gain is still running (on-gain's process
//! group is then killed first), and right away after the process was paused past its
//! deadline. The current state is written atomically to a JSON file for the database, for
//! tools and for `--after-exit` to read.
//!
//! "Never held" is not "lost": an agent that starts without the lease runs
//! `on-start-without-lease` once (the primary's host uses it to stop a database started
//! before its agent); `on-lose` runs only after a lease was held, so a standby's agent never
//! stops the standby. `fence_pending` in the state file is true from the moment the lease is
//! gained until an on-lose succeeds, so the unit's `ExecStopPost` (`arbiter agent
//! --after-exit`) fences a database whose agent died holding the lease, and nothing else.
//!
//! With a watchdog ([`watchdog`]), the database is fenced by the device even when this
//! process cannot run at all.
//!
//! Must never: run on-gain before the lease is held (and the watchdog armed when one is
//! used), let any command delay the self-fence, or run on-lose for a lease it never held.

mod hook;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::Client;
use crate::fencing::{LeaseClient, LeaseService, LeaseState};
use crate::wallclock::{SystemClock, WallClock};
use hook::{Outcome, Running, Spec};

/// Default bound of `--on-gain`: a promotion or a service start may take a while, and it
/// never delays the self-fence (it runs in the background).
pub const ON_GAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Default bound of `--on-lose` and `--on-start-without-lease`: a fence must be quick
/// (`pg_ctl stop -m immediate` takes well under a second); systemd's stop timeout of the
/// unit (90 s) leaves room for it twice.
pub const ON_LOSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest command timeout accepted: a command that needs more than 10 minutes is a
/// service of its own, not a hook.
pub const COMMAND_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Default of `--watchdog-margin-ms`: long enough for `pg_ctl stop -m immediate` and the
/// magic close, short against production leases (15 s).
pub const WATCHDOG_MARGIN_DEFAULT: Duration = Duration::from_millis(1000);

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub group: String,
    pub region: String,
    /// Shown as the lease holder in `arbiter status`.
    pub holder: String,
    /// Shell command run (`sh -c`) when a held lease is lost: stop accepting writes.
    pub on_lose: Option<String>,
    /// Shell command run in the background when the lease is gained: accept writes.
    pub on_gain: Option<String>,
    /// Shell command run once when the agent starts without getting the lease; on the
    /// primary's host, stops a database started before its agent (fail closed).
    pub on_start_without_lease: Option<String>,
    pub on_gain_timeout: Duration,
    /// Bound of on-lose and of the start action.
    pub on_lose_timeout: Duration,
    /// Where the current state is written as JSON (atomically: write then rename).
    pub state_file: Option<PathBuf>,
    /// Pause between acquire attempts while the lease is not held.
    pub retry: Duration,
    /// The watchdog, when one is used (checked at start with [`watchdog::Config::check`]).
    pub watchdog: Option<watchdog::Config>,
}

impl AgentConfig {
    /// An agent without commands, state file or watchdog, with the default timeouts.
    pub fn new(group: &str, region: &str, holder: &str) -> Self {
        AgentConfig {
            group: group.to_string(),
            region: region.to_string(),
            holder: holder.to_string(),
            on_lose: None,
            on_gain: None,
            on_start_without_lease: None,
            on_gain_timeout: ON_GAIN_TIMEOUT_DEFAULT,
            on_lose_timeout: ON_LOSE_TIMEOUT_DEFAULT,
            state_file: None,
            retry: Duration::from_secs(1),
            watchdog: None,
        }
    }
}

/// What the agent writes to its state file (and `--after-exit` reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub group: String,
    pub region: String,
    pub holder: String,
    /// Whether this region may accept writes right now.
    pub holding: bool,
    /// True from the moment the lease was gained until an on-lose succeeded after losing
    /// it: the database may still accept writes and must be fenced if the agent dies.
    #[serde(default)]
    pub fence_pending: bool,
    /// The epoch the lease is held at (or the group's current epoch when not held).
    pub epoch: u64,
    /// Milliseconds until the lease deadline when holding.
    pub deadline_in_ms: Option<u64>,
    /// The group's active region as last reported.
    pub active: String,
    /// What happened last, in words.
    pub event: String,
    /// The watchdog's timeout while it is armed.
    #[serde(default)]
    pub watchdog_timeout_ms: Option<u64>,
    /// When `holding` last changed (wall-clock ms): when the lease was gained or lost,
    /// even after later attempts rewrote the file.
    pub since_ms: u64,
    pub updated_at_ms: u64,
}

/// The lease as held.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    lease: Duration,
    deadline: Instant,
}

/// Runs the agent until `shutdown` completes. On shutdown while holding, the lease is given
/// up by running `on-lose` first.
pub async fn run(
    config: AgentConfig,
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let lease = LeaseClient::new(client, &config.group, &config.region, &config.holder);
    run_with(config, Box::new(lease), Arc::new(SystemClock), shutdown).await
}

/// [`run`], asking `lease` about the lease and stamping the state file with `clock`: the
/// seams a simulation swaps (the agent's deadlines run on the monotonic clock either way).
pub async fn run_with(
    config: AgentConfig,
    lease: Box<dyn LeaseService>,
    clock: Arc<dyn WallClock>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut agent = Agent {
        config,
        lease,
        clock,
        since: None,
        active: String::new(),
        epoch: 0,
        fence_pending: false,
        on_gain: None,
        watchdog: None,
    };
    tokio::pin!(shutdown);
    let mut holding: Option<Held> = None;
    // The start action runs once, after the first attempt that does not yield the lease,
    // and only if no lease was held before it.
    let mut first_attempt = true;
    loop {
        match holding {
            None => {
                let result = tokio::select! {
                    _ = &mut shutdown => return agent.stop().await,
                    r = agent.lease.acquire() => r,
                };
                let event = match result {
                    Ok(LeaseState::Held {
                        epoch,
                        lease,
                        deadline,
                    }) if Instant::now() < deadline => {
                        first_attempt = false;
                        agent.epoch = epoch;
                        match agent.gain(Held {
                            epoch,
                            lease,
                            deadline,
                        }) {
                            Ok(held) => {
                                holding = Some(held);
                                continue;
                            }
                            Err(why) => why,
                        }
                    }
                    Ok(LeaseState::Held { epoch, .. }) => {
                        agent.epoch = epoch;
                        "lease granted but already expired on arrival".to_string()
                    }
                    Ok(LeaseState::Refused {
                        active,
                        epoch,
                        message,
                        ..
                    }) => {
                        agent.active = active;
                        agent.epoch = epoch;
                        message
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the cluster to acquire the lease");
                        "no witness reachable".to_string()
                    }
                };
                agent.write_state(None, &event);
                if std::mem::take(&mut first_attempt) {
                    agent.start_without_lease(&event).await;
                }
                tokio::select! {
                    _ = &mut shutdown => return agent.stop().await,
                    _ = tokio::time::sleep(agent.config.retry) => {}
                }
            }
            Some(held) => {
                let renew_at = held
                    .deadline
                    .checked_sub(held.lease * 2 / 3)
                    .unwrap_or(held.deadline);
                let outcome = tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(agent.fence_at(&held)) => Renewal::Expired,
                    _ = &mut shutdown => Renewal::Shutdown,
                    r = async {
                        tokio::time::sleep_until(renew_at).await;
                        agent.lease.renew(held.epoch).await
                    } => Renewal::Answer(r),
                };
                match outcome {
                    Renewal::Expired => {
                        holding = None;
                        let why = if agent.watchdog.is_some() {
                            "lease deadline (less the watchdog margin) passed without a renewal"
                        } else {
                            "lease deadline passed without a renewal"
                        };
                        agent.lose(why).await;
                    }
                    Renewal::Shutdown => {
                        agent.lose("agent stopping").await;
                        return agent.stop().await;
                    }
                    Renewal::Answer(Ok(LeaseState::Held {
                        deadline: next,
                        lease,
                        ..
                    })) => {
                        // A grant whose deadline is already past (the process was paused
                        // while the answer was in flight) is no lease at all.
                        if Instant::now() >= next {
                            holding = None;
                            agent.lose("renewal arrived after its own deadline").await;
                        } else {
                            // The lease of this grant: a policy that changed it moves the
                            // next renewal to a third of the new lease before its deadline.
                            let held = Held {
                                deadline: next,
                                lease,
                                ..held
                            };
                            holding = Some(held);
                            if let Some(w) = &agent.watchdog {
                                w.set_deadline(Some(next));
                            }
                            agent.write_state(Some(&held), "lease renewed");
                        }
                    }
                    Renewal::Answer(Ok(LeaseState::Refused {
                        active,
                        epoch: current,
                        message,
                        ..
                    })) => {
                        holding = None;
                        agent.active = active;
                        agent.lose(&format!("renewal refused: {message}")).await;
                        agent.epoch = current;
                    }
                    Renewal::Answer(Err(e)) => {
                        // Keep the lease until its deadline; try again shortly.
                        tracing::warn!(error = %e, "renewal failed; retrying until the deadline");
                        let retry_at = (Instant::now() + agent.config.retry.min(held.lease / 6))
                            .min(held.deadline);
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(retry_at) => {}
                            _ = &mut shutdown => {
                                agent.lose("agent stopping").await;
                                return agent.stop().await;
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
    lease: Box<dyn LeaseService>,
    /// Stamps the state file (for people; never for the lease).
    clock: Arc<dyn WallClock>,
    /// The last `holding` written and since when (wall-clock ms), for the state file.
    since: Option<(bool, u64)>,
    /// The group's active region as last reported.
    active: String,
    /// The epoch the lease is (or was last) held at, or the group's current epoch.
    epoch: u64,
    /// A lease was held and no on-lose has succeeded since.
    fence_pending: bool,
    /// on-gain, while it runs.
    on_gain: Option<Running>,
    /// The armed watchdog: from a gain until on-lose succeeded after the loss.
    watchdog: Option<watchdog::Armed>,
}

impl Agent {
    fn spec(&self, event: &'static str, command: &str, timeout: Duration) -> Spec {
        Spec {
            event,
            command: command.to_string(),
            timeout,
            group: self.config.group.clone(),
            region: self.config.region.clone(),
            epoch: self.epoch,
        }
    }

    /// When the self-fence fires for `held`: the deadline, or `margin` before it while a
    /// watchdog is armed (so on-lose and the magic close finish before the device fires).
    fn fence_at(&self, held: &Held) -> Instant {
        match (&self.watchdog, &self.config.watchdog) {
            (Some(_), Some(w)) => held.deadline.checked_sub(w.margin).unwrap_or(held.deadline),
            _ => held.deadline,
        }
    }

    /// Takes a granted lease: arms the watchdog (when one is used), records the lease as
    /// held, and starts on-gain. `Err(why)` when the lease cannot be used.
    fn gain(&mut self, held: Held) -> Result<Held, String> {
        if let Some(config) = &self.config.watchdog {
            match &self.watchdog {
                // Still armed after a failed fence: the kicks resume under the new deadline.
                Some(w) => w.set_deadline(Some(held.deadline)),
                None => match watchdog::Armed::arm(config, held.lease, held.deadline) {
                    Ok(w) => self.watchdog = Some(w),
                    Err(why) if config.mode == watchdog::Mode::Required => {
                        tracing::error!(reason = %why, "lease granted but the watchdog cannot be armed: not taking it (--watchdog required)");
                        return Err(format!("watchdog cannot be armed: {why}"));
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "the watchdog cannot be armed: holding the lease without it (--watchdog automatic)");
                    }
                },
            }
        }
        self.fence_pending = true;
        self.active = self.config.region.clone();
        // A witness that does not answer must cost a fraction of the lease, not all of it.
        self.lease.bound_by_lease(held.lease);
        tracing::info!(group = %self.config.group, region = %self.config.region, epoch = held.epoch, "lease gained");
        self.write_state(Some(&held), "lease gained");
        if let Some(command) = self.config.on_gain.clone() {
            let spec = self.spec("on-gain", &command, self.config.on_gain_timeout);
            self.on_gain = Some(Running::spawn(spec));
        }
        Ok(held)
    }

    /// The lease is lost: kills on-gain if it still runs, then runs on-lose; disarms the
    /// watchdog once on-lose succeeded.
    async fn lose(&mut self, why: &str) {
        tracing::warn!(group = %self.config.group, region = %self.config.region, epoch = self.epoch, reason = why, "lease lost: self-fencing");
        if let Some(w) = &self.watchdog {
            w.set_deadline(None);
        }
        if let Some(on_gain) = self.on_gain.take() {
            on_gain.kill().await;
        }
        self.write_state(None, why);
        self.fence().await;
    }

    /// Runs on-lose while a fence is pending; clears it (and disarms the watchdog) when it
    /// succeeded. A failed on-lose leaves the watchdog armed without kicks: it fires.
    async fn fence(&mut self) {
        if !self.fence_pending {
            return;
        }
        let outcome = match self.config.on_lose.clone() {
            Some(command) => {
                let spec = self.spec("on-lose", &command, self.config.on_lose_timeout);
                hook::run(spec).await
            }
            None => Outcome::Succeeded,
        };
        if outcome == Outcome::Succeeded {
            self.fence_pending = false;
            if let Some(w) = self.watchdog.take() {
                w.disarm().await;
            }
        } else if self.watchdog.is_some() {
            tracing::error!(
                ?outcome,
                "on-lose did not succeed: the watchdog is left armed without kicks and will fire"
            );
        }
        let event = if self.fence_pending {
            "on-lose did not succeed: fence still pending"
        } else {
            "fenced: on-lose succeeded"
        };
        self.write_state(None, event);
    }

    /// The first attempt did not yield the lease: runs the start action, once.
    async fn start_without_lease(&mut self, event: &str) {
        let Some(command) = self.config.on_start_without_lease.clone() else {
            return;
        };
        tracing::warn!(group = %self.config.group, region = %self.config.region, reason = event, "started without the lease: running the start action");
        let spec = self.spec(
            "on-start-without-lease",
            &command,
            self.config.on_lose_timeout,
        );
        hook::run(spec).await;
    }

    /// Clean stop, not holding: a fence still pending is tried once more; the watchdog is
    /// closed with the magic character only when nothing is left to fence.
    async fn stop(mut self) {
        if let Some(on_gain) = self.on_gain.take() {
            on_gain.kill().await;
        }
        self.fence().await;
        if self.fence_pending {
            tracing::error!("stopping with the fence still pending");
        }
    }

    fn write_state(&mut self, held: Option<&Held>, event: &str) {
        let Some(path) = self.config.state_file.clone() else {
            return;
        };
        let now = self.clock.now_ms();
        let holding = held.is_some();
        let since_ms = match self.since {
            Some((was, at)) if was == holding => at,
            _ => {
                self.since = Some((holding, now));
                now
            }
        };
        let state = AgentState {
            group: self.config.group.clone(),
            region: self.config.region.clone(),
            holder: self.config.holder.clone(),
            holding,
            fence_pending: self.fence_pending,
            epoch: held.map_or(self.epoch, |h| h.epoch),
            deadline_in_ms: held.map(|h| {
                h.deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64
            }),
            active: self.active.clone(),
            event: event.to_string(),
            watchdog_timeout_ms: self
                .watchdog
                .as_ref()
                .map(|w| w.timeout().as_millis() as u64),
            since_ms,
            updated_at_ms: now,
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the agent state file");
        }
    }
}

/// `arbiter agent --after-exit`: run after the agent's process is gone (systemd's
/// `ExecStopPost`). Runs `on_lose` once when the state file says a fence is pending (the
/// agent died holding the lease, or before its on-lose succeeded); does nothing when the
/// agent never held the lease (a standby) or fenced already. A state file that exists but
/// cannot be read fails closed (on-lose runs); a missing one means the agent never wrote a
/// state, so never held a lease. Returns whether everything needed succeeded.
pub async fn after_exit(config: &AgentConfig, state_file: &std::path::Path) -> bool {
    let state = match std::fs::read(state_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %state_file.display(), "no state file: the agent never held the lease; nothing to fence");
            return true;
        }
        Err(e) => Err(e.to_string()),
        Ok(bytes) => serde_json::from_slice::<AgentState>(&bytes).map_err(|e| e.to_string()),
    };
    let epoch = match state {
        Ok(s) if !s.fence_pending => {
            tracing::info!(holding = s.holding, event = %s.event, "no fence pending: nothing to do");
            return true;
        }
        Ok(s) => {
            tracing::warn!(epoch = s.epoch, event = %s.event, "the agent stopped with a fence pending: running on-lose");
            s.epoch
        }
        Err(why) => {
            tracing::error!(path = %state_file.display(), error = %why, "unreadable state file: running on-lose (fail closed)");
            0
        }
    };
    let Some(command) = &config.on_lose else {
        return true;
    };
    let spec = Spec {
        event: "on-lose",
        command: command.clone(),
        timeout: config.on_lose_timeout,
        group: config.group.clone(),
        region: config.region.clone(),
        epoch,
    };
    hook::run(spec).await == Outcome::Succeeded
}
