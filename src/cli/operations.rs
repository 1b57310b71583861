//! The operation commands: `failover`, `failback`, `approve`, `retry`, `skip`, `abort`,
//! `operations` and `mode`. A command that starts or resumes an operation follows it,
//! printing each step as it completes, until it ends, halts or waits for approval.

use super::args::{Conn, Wait};
use super::{output, Failure};
use crate::client::Client;
use crate::proto;

/// Starts a failover (or a failback) of `group` and follows it (see [`follow`]).
pub(super) async fn start(
    conn: &Conn,
    group: String,
    to: String,
    reason: String,
    failback: bool,
    wait: &Wait,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let req = proto::FailoverRequest {
        group,
        to,
        reason,
        request_id: crate::api::new_request_id(),
    };
    let reply = if failback {
        client.failback(req).await?
    } else {
        client.failover(req).await?
    };
    follow(&client, reply, wait).await
}

/// An operator's action that lets an operation go on.
#[derive(Clone)]
pub(super) enum Resume {
    /// With `break_glass`, the reason for approving alone where the group asks for more
    /// approvers.
    Approve {
        break_glass: Option<String>,
    },
    Retry,
    Skip,
}

/// Sends `resume` for `operation` (`step`: the step to skip) and follows the operation.
pub(super) async fn resume(
    conn: &Conn,
    resume: Resume,
    operation: u64,
    step: &str,
    wait: &Wait,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = match resume {
        Resume::Approve { break_glass } => {
            let mut req = action(operation, step, break_glass.as_deref().unwrap_or(""));
            req.break_glass = break_glass.is_some();
            client.approve(req).await?
        }
        Resume::Retry => client.retry(action(operation, step, "")).await?,
        Resume::Skip => client.skip(action(operation, step, "")).await?,
    };
    follow(&client, reply, wait).await
}

pub(super) async fn abort(conn: &Conn, operation: u64, reason: &str) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = client.abort(action(operation, "", reason)).await?;
    let op = reply.operation.unwrap_or_default();
    println!(
        "operation {} aborted: {} stays active at epoch {}",
        op.id, op.from, op.from_epoch
    );
    Ok(())
}

/// `arbiter operations`: running, halted and past operations with their steps.
pub(super) async fn list(
    conn: &Conn,
    group: String,
    limit: u32,
    json: bool,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = client
        .operations(proto::OperationsRequest {
            group,
            limit,
            active_only: false,
        })
        .await?;
    if json {
        println!(
            "{}",
            serde_json::Value::Array(
                reply
                    .operations
                    .iter()
                    .map(output::operation_json)
                    .collect()
            )
        );
    } else {
        print!("{}", output::operations_table(&reply.operations));
    }
    Ok(())
}

pub(super) async fn set_mode(
    conn: &Conn,
    group: String,
    mode: String,
    reason: String,
) -> Result<(), Failure> {
    let client = conn.client()?;
    let reply = client
        .set_mode(proto::SetModeRequest {
            group,
            mode,
            reason,
            request_id: crate::api::new_request_id(),
        })
        .await?;
    let g = reply.group.unwrap_or_default();
    println!(
        "{}: mode {} (active {}, epoch {})",
        g.name, g.mode, g.active, g.epoch
    );
    Ok(())
}

/// An action on `operation` under a new request id.
fn action(operation: u64, step: &str, reason: &str) -> proto::OperationAction {
    proto::OperationAction {
        operation,
        step: step.to_string(),
        reason: reason.to_string(),
        request_id: crate::api::new_request_id(),
        break_glass: false,
    }
}

/// Prints an operation's steps as they complete until it is done, aborted, halted or
/// waiting for approval, or until the wait times out. Exit: 0 done (or not waiting),
/// 1 halted, aborted or timed out.
pub(super) async fn follow(
    client: &Client,
    reply: proto::OperationReply,
    wait: &Wait,
) -> Result<(), Failure> {
    /// How often the operation is polled while waiting.
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);
    let mut op = reply.operation.unwrap_or_default();
    println!(
        "operation {} ({}) of {}: {} -> {}, epoch {} -> {} [{}]",
        op.id, op.kind, op.group, op.from, op.to, op.from_epoch, op.to_epoch, op.state
    );
    if wait.no_wait {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut printed = 0;
    loop {
        for s in op.steps.iter().skip(printed) {
            println!(
                "  {:>7.1}s  {:<10} {:<9} {}",
                started.elapsed().as_secs_f64(),
                s.step,
                s.outcome,
                s.detail.lines().next().unwrap_or("")
            );
        }
        printed = op.steps.len();
        match op.state.as_str() {
            "done" => {
                println!("done: {} active at epoch {} after {:.1}s", op.to, op.to_epoch, started.elapsed().as_secs_f64());
                return Ok(());
            }
            "aborted" => {
                return Err(Failure::refused(format!(
                    "operation {} aborted: {}",
                    op.id, op.error
                )))
            }
            "halted" if !op.approvals.is_empty() => {
                return Err(Failure::refused(format!(
                    "operation {} halted at {}: {}\n  its data loss is approved by {}; another operator must approve: arbiter approve {}",
                    op.id,
                    op.step,
                    op.error,
                    op.approvals.join(", "),
                    op.id
                )))
            }
            "halted" => {
                return Err(Failure::refused(format!(
                    "operation {} halted at {}: {}\n  then: arbiter retry {} | arbiter skip {} --step {} | arbiter abort {} --reason ...",
                    op.id, op.step, op.error, op.id, op.id, op.step, op.id
                )))
            }
            "awaiting-approval" if op.approvals.is_empty() => {
                println!("waiting for approval: arbiter approve {}", op.id);
                return Ok(());
            }
            "awaiting-approval" => {
                println!(
                    "approved by {}; waiting for another operator's approval: arbiter approve {} \
                     (with a different certificate)",
                    op.approvals.join(", "),
                    op.id
                );
                return Ok(());
            }
            _ => {}
        }
        if started.elapsed() > std::time::Duration::from_secs(wait.timeout) {
            return Err(Failure::refused(format!(
                "operation {} still at step {} after {}s; it goes on: arbiter operations",
                op.id, op.step, wait.timeout
            )));
        }
        tokio::time::sleep(POLL).await;
        if let Some(o) = client.operation(&op.group, op.id).await? {
            op = o;
        }
    }
}
