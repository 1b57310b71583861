//! The term supervisor: the one place that asks "am I the leader?". When this witness
//! becomes leader and a quorum confirms it, the supervisor starts the leader duties (the
//! executor of operations, the verdict duty, the DNS reconciler) in one `JoinSet`; when the
//! leadership is lost, the term changes, a quorum no longer confirms it, or a duty ends by
//! itself, it stops every duty (their tasks are aborted, so no further hook call or UPDATE
//! leaves) and clears the leader tables, once.
//!
//! openraft keeps a leader that lost its quorum in the `Leader` state, so the supervisor
//! confirms the leadership with a quorum (ReadIndex) at the start of the term and then every
//! [`CONFIRM_EVERY`]; the duties confirm again right before each external action (S3).

use std::time::Duration;

use tokio::task::JoinSet;

use super::Duty;

/// How often the supervisor looks at the leadership.
const TICK: Duration = Duration::from_millis(100);
/// How often a running term is confirmed with a quorum: a few heartbeats, cheap next to the
/// harm of duties running on a deposed leader.
const CONFIRM_EVERY: Duration = Duration::from_millis(500);

/// Runs forever on every witness.
pub async fn run(duty: Duty) {
    loop {
        while !duty.consensus.is_leader() {
            tokio::time::sleep(TICK).await;
        }
        let term = duty.consensus.view().term;
        if let Err(e) = duty.consensus.confirm_leadership().await {
            tracing::warn!(term, error = %e, "leader by its own metrics, not confirmed by a quorum: no duties");
            tokio::time::sleep(TICK).await;
            continue;
        }
        tracing::info!(term, "leader: starting the leader duties");
        let mut duties = JoinSet::new();
        duties.spawn(super::executor::run(duty.clone()));
        duties.spawn(super::engine::run(duty.clone()));
        duties.spawn(super::reconciler::run(duty.clone()));
        let why = watch(&duty, term, &mut duties).await;
        duties.abort_all();
        while duties.join_next().await.is_some() {}
        duty.tables.clear();
        tracing::info!(term, reason = why, "leader duties stopped");
    }
}

/// Waits until the term this witness leads is over; says why.
async fn watch(duty: &Duty, term: u64, duties: &mut JoinSet<()>) -> &'static str {
    let mut confirmed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ended = duties.join_next() => {
                tracing::error!(term, ?ended, "a leader duty ended by itself: restarting the term's duties");
                return "a duty ended";
            }
            _ = tokio::time::sleep(TICK) => {}
        }
        if !duty.consensus.is_leader() || duty.consensus.view().term != term {
            return "no longer leader";
        }
        if confirmed_at.elapsed() >= CONFIRM_EVERY {
            if let Err(e) = duty.consensus.confirm_leadership().await {
                tracing::warn!(term, error = %e, "leadership not confirmed by a quorum");
                return "not confirmed by a quorum";
            }
            confirmed_at = tokio::time::Instant::now();
        }
    }
}
