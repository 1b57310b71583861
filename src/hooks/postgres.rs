//! `postgres` hooks: the built-in PostgreSQL actions of a failover, spoken over the
//! PostgreSQL protocol (`tokio-postgres`; TLS with `sslmode=verify-full`) to the server of
//! one region.
//!
//! - `rpo-check` (on `to`, the standby): the standby's received and replayed WAL positions
//!   and its WAL receiver, measured against the primary's position: the old primary's own
//!   answer when it still gives one, otherwise its last known position from this witness's
//!   history (`super::wal`), by [`super::rpo::judge`] (S8). Prints
//!   `{"lag_ms": .., "lag_bytes": .., "exceeds_rpo": .., ...}` for [`super::parse_lag`].
//! - `promote` (on `to`): `pg_promote`, then waits until `pg_is_in_recovery()` is false;
//!   succeeds at once on a server that is already primary.
//! - `fence` (on `from`): `ALTER SYSTEM SET default_transaction_read_only = on`, reload,
//!   terminate every other client session, then verifies from a new session that a write is
//!   refused. Or, when the region has a `stop` command, runs it and verifies the server no
//!   longer accepts connections. Success only after verification.
//! - `validate` (on `to`): inserts `(group, epoch, operation, region)` into
//!   `arbiter_validate`, creating the table if needed.
//!
//! This module owns the connections of one action (and [`connect`] for the sessions of
//! `super::wal`). It must never put the password into an outcome or a log line, never report
//! a fence it has not verified, never call a lag within the RPO that it cannot prove, and
//! never leave a connection open after the action (the connection task ends with the
//! client).

use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep, timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::rpo::{self, lsn_text, Receiver, Standby, Verdict, WalSample};
use super::{millis, HookContext, HookOutcome};
use crate::config::{PostgresAction, PostgresHook, PostgresRegion, PostgresTls};
use crate::secret::Secret;

/// Connecting takes at most this long even when the hook's deadline is further away: a
/// server that does not answer a TCP handshake in 10 s is unreachable for this purpose.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(10);
/// `rpo-check` asks the old primary for its WAL position with this much patience at most:
/// the measurement works without it (from the history), and the old region is often dark.
const OLD_PRIMARY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two looks at a condition the hook waits for (end of recovery, reload
/// reaching new sessions, terminated sessions gone).
const POLL: Duration = Duration::from_millis(100);
/// The table `validate` writes to.
pub const VALIDATE_TABLE: &str = "arbiter_validate";
/// `application_name` of the hook's sessions, so operators can tell them apart (and so a
/// fence does not count its own sessions as writers).
const APPLICATION_NAME: &str = "arbiter";

/// A successful action: a one-line summary and a one-line JSON report.
struct Report {
    summary: String,
    json: serde_json::Value,
}

/// Runs the hook's action for `ctx`, bounded by its `timeout_ms`.
pub(super) async fn run(hook: &PostgresHook, ctx: &HookContext) -> HookOutcome {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(hook.timeout_ms);
    let region = if hook.action.acts_on_from() {
        &ctx.from
    } else {
        &ctx.to
    };
    let Some(server) = hook.regions.get(region) else {
        return HookOutcome::failed(
            format!("the postgres hook has no connection for region {region}"),
            started,
        );
    };
    let action = async {
        match hook.action {
            PostgresAction::RpoCheck => rpo_check(hook, ctx, server, deadline).await,
            PostgresAction::Promote => promote(region, server, deadline).await,
            PostgresAction::Fence => fence(region, server, ctx, deadline).await,
            PostgresAction::Validate => validate(region, server, ctx, deadline).await,
        }
    };
    match timeout_at(deadline, action).await {
        Ok(Ok(report)) => HookOutcome::new(
            true,
            format!(
                "{}: {} ({} ms)",
                hook.action,
                report.summary,
                millis(started.elapsed())
            ),
            report.json.to_string(),
            started,
        ),
        Ok(Err(why)) => HookOutcome::failed(format!("{}: {why}", hook.action), started),
        Err(_) => HookOutcome::failed(
            format!(
                "{} on {region}: timed out after {} ms",
                hook.action, hook.timeout_ms
            ),
            started,
        ),
    }
}

/// Opens a session to `region`'s server, at most until `deadline` (and
/// [`CONNECT_TIMEOUT_MAX`]). The error names the region and the cause, never the password.
pub(super) async fn connect(
    region: &str,
    server: &PostgresRegion,
    deadline: Instant,
) -> Result<Client, String> {
    let (dsn, tls) = crate::config::split_tls(&server.dsn)
        .map_err(|why| format!("the connection string of {region}: {why}"))?;
    let mut config = tokio_postgres::Config::from_str(&dsn)
        .map_err(|_| format!("the connection string of {region} does not parse"))?;
    if let Some(reference) = &server.password {
        let secret = Secret::read(reference)?;
        config.password(secret.as_bytes());
    }
    let patience = deadline
        .saturating_duration_since(Instant::now())
        .min(CONNECT_TIMEOUT_MAX)
        .max(Duration::from_millis(1));
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(patience);
    let until = Instant::now() + patience;
    let no_answer = || {
        format!(
            "cannot connect to {region}: no answer within {} ms",
            patience.as_millis()
        )
    };
    let failed = |e: tokio_postgres::Error| format!("cannot connect to {region}: {}", pg_error(&e));
    // The connection ends when the client is dropped, at the latest with this action.
    match tls {
        PostgresTls::Off => match timeout_at(until, config.connect(NoTls)).await {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(no_answer()),
        },
        PostgresTls::VerifyFull { ca } => {
            let connector = verify_full(&ca).map_err(|why| format!("{region}: {why}"))?;
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            match timeout_at(until, config.connect(connector)).await {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Ok(client)
                }
                Ok(Err(e)) => Err(failed(e)),
                Err(_) => Err(no_answer()),
            }
        }
    }
}

/// A TLS connector that accepts only a server certificate chaining to the CA in `ca` and
/// naming the host connected to (libpq's `verify-full`).
fn verify_full(ca: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("sslrootcert {} cannot be read: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {} is not PEM: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {} holds no certificate", ca.display()));
    }
    crate::tls::install_crypto_provider();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One line for a PostgreSQL error: the server's SQLSTATE and message, or the client's
/// error with its causes (the client's own text is only "error connecting to server").
fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut line = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        next = cause.source();
    }
    line
}

/// A query that returns one row, with its error told in one line.
async fn one_row(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, String> {
    client
        .query_one(sql, params)
        .await
        .map_err(|e| format!("`{}` failed: {}", first_words(sql), pg_error(&e)))
}

/// The statement's first words, to name it in an error without a wall of SQL.
fn first_words(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(4).collect();
    words.join(" ")
}

async fn in_recovery(client: &Client) -> Result<bool, String> {
    Ok(one_row(client, "SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0))
}

/// A WAL position (`pg_lsn` text, `X/Y` in hex) as a byte offset.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some((hi << 32) | lo)
}

/// Lag of the standby in `to`: what a promotion now would lose, measured against the
/// primary's position (the old primary's answer, or its last known position in the
/// witness's history given in `ctx.rpo`), with the standby's WAL receiver as a second
/// witness; see [`rpo::judge`] and docs/postgres.md. The old primary is asked first, so the
/// standby's position read afterwards shows whether it holds what the primary had.
async fn rpo_check(
    hook: &PostgresHook,
    ctx: &HookContext,
    server: &PostgresRegion,
    deadline: Instant,
) -> Result<Report, String> {
    let region = &ctx.to;
    let live = match hook.regions.get(&ctx.from) {
        Some(old) if ctx.from != ctx.to => {
            let patience = (Instant::now() + OLD_PRIMARY_TIMEOUT).min(deadline);
            old_primary_lsn(&ctx.from, old, patience)
                .await
                .map(|lsn| WalSample {
                    lsn,
                    at: Instant::now(),
                })
        }
        _ => None,
    };
    let standby = connect(region, server, deadline).await?;
    let row = one_row(
        &standby,
        "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, \
         pg_last_wal_replay_lsn()::text",
        &[],
    )
    .await?;
    let recovery: bool = row.get(0);
    if !recovery {
        return Err(format!(
            "{region} is not a standby (pg_is_in_recovery() is false): there is no replication lag to measure"
        ));
    }
    let received: Option<String> = row.get(1);
    let replayed: Option<String> = row.get(2);
    let replayed_at = replayed
        .as_deref()
        .and_then(parse_lsn)
        .ok_or_else(|| format!("{region} reports no replayed WAL position"))?;
    // Streaming may not have started since the standby's start (no position, or the start
    // of the segment it asks for): it holds at least what it replayed.
    let received_at = received
        .as_deref()
        .and_then(parse_lsn)
        .map_or(replayed_at, |lsn| lsn.max(replayed_at));
    let receiver = wal_receiver(&standby).await?;
    let input = Standby {
        received_lsn: received_at,
        replayed_lsn: replayed_at,
        receiver,
    };
    let (history, bound) = match &ctx.rpo {
        Some(r) => (r.primary_history.as_slice(), r.bound),
        None => (&[][..], rpo::RpoBound::default()),
    };
    let verdict = rpo::judge(history, live, &input, bound, Instant::now());
    let (status, silence_ms) = match &input.receiver {
        Receiver::Absent => (None, None),
        Receiver::Running { status, silence_ms } => (Some(status.as_str()), *silence_ms),
    };
    let json = json!({
        "lag_ms": verdict.lag_ms,
        "lag_bytes": verdict.lag_bytes,
        "exceeds_rpo": !verdict.within(),
        "lag_ms_at_least": verdict.lag_ms_at_least,
        "basis": verdict.basis.as_str(),
        "region": region,
        "primary": ctx.from,
        "primary_lsn": verdict.primary_lsn.map(lsn_text),
        "primary_age_ms": verdict.primary_age_ms,
        "primary_dark_ms": verdict.primary_dark_ms,
        "history_samples": verdict.history_samples,
        "history_span_ms": verdict.history_span_ms,
        "received_lsn": received,
        "replayed_lsn": replayed,
        "replay_pending_bytes": verdict.replay_pending_bytes,
        "receiver_status": status,
        "receiver_silence_ms": silence_ms,
        "over": verdict.over,
        "notes": verdict.notes,
    });
    Ok(Report {
        summary: rpo_summary(ctx, &verdict, &input, received_at),
        json,
    })
}

/// One line with every number the verdict rests on, for the step detail or the halt.
fn rpo_summary(ctx: &HookContext, v: &Verdict, standby: &Standby, received: u64) -> String {
    let (region, from) = (&ctx.to, &ctx.from);
    let lag = match (v.lag_bytes, v.lag_ms) {
        (Some(bytes), Some(ms)) => format!(
            "{region} lacks {bytes} bytes and {}{ms} ms of {from}'s WAL",
            if v.lag_ms_at_least { "at least " } else { "" }
        ),
        _ => format!("{region}'s lag behind {from} is unknown"),
    };
    let basis = match (v.basis, v.primary_lsn) {
        (rpo::Basis::OldPrimary, Some(lsn)) => {
            format!("against the old primary's own answer, {}", lsn_text(lsn))
        }
        (rpo::Basis::LastKnown, Some(lsn)) => format!(
            "against its last known position {}, seen {} ms ago ({} sightings over {} ms; {from} did not answer)",
            lsn_text(lsn),
            v.primary_age_ms.unwrap_or(0),
            v.history_samples,
            v.history_span_ms
        ),
        _ => format!("against nothing: {from} did not answer and this witness has no history of it"),
    };
    let receiver = match &standby.receiver {
        Receiver::Absent => "no WAL receiver running".to_string(),
        Receiver::Running {
            status,
            silence_ms: Some(ms),
        } => format!("WAL receiver {status}, last message {ms} ms ago"),
        Receiver::Running { status, .. } => format!("WAL receiver {status}, no message yet"),
    };
    let mut line = format!(
        "{lag}, measured {basis}; received {}, replayed {} ({} bytes to replay at promotion); {receiver}",
        lsn_text(received),
        lsn_text(standby.replayed_lsn),
        v.replay_pending_bytes
    );
    if !v.over.is_empty() {
        line += &format!("; over the RPO: {}", v.over.join("; "));
    }
    line
}

/// The standby's WAL receiver, from `pg_stat_wal_receiver` (no row: none runs). Its silence
/// is the standby's `now()` minus its `last_msg_receipt_time`: one host's own clock.
async fn wal_receiver(standby: &Client) -> Result<Receiver, String> {
    let rows = standby
        .query(
            "SELECT status, \
             (EXTRACT(EPOCH FROM now() - last_msg_receipt_time) * 1000)::float8 \
             FROM pg_stat_wal_receiver",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "`SELECT ... FROM pg_stat_wal_receiver` failed: {}",
                pg_error(&e)
            )
        })?;
    let Some(row) = rows.first() else {
        return Ok(Receiver::Absent);
    };
    let status: Option<String> = row.get(0);
    let silence: Option<f64> = row.get(1);
    Ok(Receiver::Running {
        // Without pg_monitor (pg_read_all_stats) only the pid is shown.
        status: status.unwrap_or_else(|| "not visible to this role (grant pg_monitor)".into()),
        silence_ms: silence.map(|ms| ms.max(0.0).round() as u64),
    })
}

/// The server's current WAL position if it is a primary, `None` if it is in recovery.
pub(super) async fn primary_lsn(client: &Client) -> Result<Option<u64>, String> {
    let row = one_row(
        client,
        "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
        &[],
    )
    .await?;
    let lsn: Option<String> = row.get(0);
    match lsn {
        None => Ok(None),
        Some(text) => parse_lsn(&text)
            .map(Some)
            .ok_or_else(|| format!("the server reports an unreadable WAL position {text:?}")),
    }
}

/// The old primary's current WAL position, if it answers before `deadline` and is not itself
/// in recovery. Any failure is `None`: the old region being dark is the common case.
async fn old_primary_lsn(region: &str, server: &PostgresRegion, deadline: Instant) -> Option<u64> {
    let attempt = async {
        let client = connect(region, server, deadline).await.ok()?;
        primary_lsn(&client).await.ok().flatten()
    };
    timeout_at(deadline, attempt).await.ok().flatten()
}

/// Promotes `region`'s standby and waits until it has left recovery; a server that is
/// already primary is left as it is. A read-only default left by an earlier fence of this
/// server is lifted, since it is now the primary.
async fn promote(
    region: &str,
    server: &PostgresRegion,
    deadline: Instant,
) -> Result<Report, String> {
    let client = connect(region, server, deadline).await?;
    let was_standby = in_recovery(&client).await?;
    if was_standby {
        let wait_seconds = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .clamp(1, 60) as i32;
        // `false` only means "not finished within wait_seconds"; the loop below waits on.
        if let Err(e) = client
            .query_one("SELECT pg_promote(true, $1)", &[&wait_seconds])
            .await
        {
            // Another promotion (a retried step) may have ended recovery meanwhile.
            if in_recovery(&client).await? {
                return Err(format!("pg_promote on {region} failed: {}", pg_error(&e)));
            }
        }
        while in_recovery(&client).await? {
            if Instant::now() >= deadline {
                return Err(format!("{region} is still in recovery after pg_promote"));
            }
            sleep(POLL).await;
        }
    }
    let read_only: String = one_row(&client, "SHOW default_transaction_read_only", &[])
        .await?
        .get(0);
    let lifted = read_only == "on";
    if lifted {
        for sql in [
            "ALTER SYSTEM RESET default_transaction_read_only",
            "SELECT pg_reload_conf()",
        ] {
            client.batch_execute(sql).await.map_err(|e| {
                format!(
                    "{region} is primary but its read-only default could not be lifted: {}",
                    pg_error(&e)
                )
            })?;
        }
    }
    let lsn: String = one_row(&client, "SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let summary = if was_standby {
        format!("{region} promoted, primary at WAL {lsn}")
    } else {
        format!("{region} was already primary (WAL {lsn})")
    };
    Ok(Report {
        summary,
        json: json!({
            "region": region,
            "promoted": was_standby,
            "read_only_default_lifted": lifted,
            "lsn": lsn,
        }),
    })
}

/// Fences `region`'s server: by its stop command when it has one, otherwise by SQL.
async fn fence(
    region: &str,
    server: &PostgresRegion,
    ctx: &HookContext,
    deadline: Instant,
) -> Result<Report, String> {
    match &server.stop {
        Some(stop) => fence_by_stop(region, server, stop, ctx, deadline).await,
        None => fence_by_sql(region, server, deadline).await,
    }
}

/// Runs the stop command; the fence holds when it exits 0 and the server then refuses new
/// sessions (a server that still accepts one is not stopped, whatever the command said).
async fn fence_by_stop(
    region: &str,
    server: &PostgresRegion,
    stop: &crate::config::StopCommand,
    ctx: &HookContext,
    deadline: Instant,
) -> Result<Report, String> {
    let left_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    let outcome = super::exec::run(&stop.program, &stop.args, left_ms.max(1), ctx).await;
    if !outcome.success {
        return Err(format!(
            "stop command for {region}: {}; output: {}",
            outcome.summary,
            outcome.output.trim()
        ));
    }
    // A hard fence only when the stop command itself says so for this epoch, over its own
    // channel (ssh to the host, a cloud API): a server that merely does not answer may be
    // unreachable from here and still writing.
    let claimed = super::parse_fence_claim(&outcome.output) == Some(ctx.epoch);
    let hard = if claimed {
        format!(
            "the stop command confirmed the fence for epoch {}",
            ctx.epoch
        )
    } else {
        format!(
            "not a hard fence: the stop command did not print {{\"fenced\": true, \"epoch\": {}}}",
            ctx.epoch
        )
    };
    match connect(region, server, deadline).await {
        Err(why) => Ok(Report {
            summary: format!(
                "{region} stopped by its stop command (no new session: {why}); {hard}"
            ),
            json: json!({ "region": region, "fenced_by": "stop", "verified": "no new session accepted",
                          "fenced": claimed, "epoch": ctx.epoch }),
        }),
        Ok(client) => {
            if in_recovery(&client).await.unwrap_or(false) {
                return Ok(Report {
                    summary: format!("{region} runs as a standby and refuses writes; {hard}"),
                    json: json!({ "region": region, "fenced_by": "stop", "verified": "standby",
                                  "fenced": claimed, "epoch": ctx.epoch }),
                });
            }
            Err(format!(
                "the stop command for {region} exited 0 but the server still accepts sessions as a primary"
            ))
        }
    }
}

/// Read-only default, reload, termination of the other client sessions, then verification
/// from a new session that a write is refused.
async fn fence_by_sql(
    region: &str,
    server: &PostgresRegion,
    deadline: Instant,
) -> Result<Report, String> {
    let admin = connect(region, server, deadline).await?;
    if in_recovery(&admin).await? {
        return Ok(Report {
            summary: format!("{region} is a standby: it refuses writes"),
            json: json!({ "region": region, "fenced_by": "standby", "verified": "in recovery",
                          "fenced": false }),
        });
    }
    // Two statements: ALTER SYSTEM cannot run in the implicit transaction of a batch.
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        admin
            .batch_execute(sql)
            .await
            .map_err(|e| format!("cannot make {region} read-only: {}", pg_error(&e)))?;
    }

    // The reload reaches new sessions once the postmaster has handled it: wait for that
    // before terminating, so the sessions that come back are read-only.
    loop {
        let probe = connect(region, server, deadline).await?;
        let value: String = one_row(&probe, "SHOW default_transaction_read_only", &[])
            .await?
            .get(0);
        if value == "on" {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("{region}: new sessions are still not read-only"));
        }
        sleep(POLL).await;
    }

    let rows = admin
        .query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "cannot terminate the client sessions of {region}: {}",
                pg_error(&e)
            )
        })?;
    let terminated: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    loop {
        let left: i64 = one_row(
            &admin,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
            &[&terminated],
        )
        .await?
        .get(0);
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{region}: {left} terminated client sessions are still there"
            ));
        }
        sleep(POLL).await;
    }

    // Verification: a new session's write must be refused as a read-only transaction.
    let probe = connect(region, server, deadline).await?;
    let write = probe
        .batch_execute("BEGIN; CREATE TABLE arbiter_fence_probe (x int); ROLLBACK")
        .await;
    match write {
        Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {}
        Err(e) => {
            return Err(format!(
                "{region}: the verifying write failed for another reason than read-only: {}",
                pg_error(&e)
            ))
        }
        Ok(()) => {
            return Err(format!(
                "{region}: a new session could still write after the fence"
            ))
        }
    }
    Ok(Report {
        summary: format!(
            "{region} is read-only: {} client sessions terminated, a new session's write is refused (not a hard fence: any session can turn read-only off)",
            terminated.len()
        ),
        json: json!({
            "region": region,
            "fenced": false,
            "fenced_by": "sql",
            "terminated_sessions": terminated.len(),
            "verified": "write refused with SQLSTATE 25006",
        }),
    })
}

/// Writes the operation's row into [`VALIDATE_TABLE`] on the new primary.
async fn validate(
    region: &str,
    server: &PostgresRegion,
    ctx: &HookContext,
    deadline: Instant,
) -> Result<Report, String> {
    let client = connect(region, server, deadline).await?;
    if in_recovery(&client).await? {
        return Err(format!(
            "{region} is still a standby: it cannot accept writes"
        ));
    }
    let epoch = i64::try_from(ctx.epoch)
        .map_err(|_| format!("epoch {} does not fit a bigint", ctx.epoch))?;
    let operation = i64::try_from(ctx.operation)
        .map_err(|_| format!("operation {} does not fit a bigint", ctx.operation))?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {VALIDATE_TABLE} (\
               group_name text NOT NULL, epoch bigint NOT NULL, operation bigint NOT NULL, \
               region text NOT NULL, at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (group_name, epoch))"
        ))
        .await
        .map_err(|e| {
            format!(
                "cannot create {VALIDATE_TABLE} on {region}: {}",
                pg_error(&e)
            )
        })?;
    let row = one_row(
        &client,
        &format!(
            "INSERT INTO {VALIDATE_TABLE} (group_name, epoch, operation, region) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_name, epoch) DO UPDATE \
             SET operation = EXCLUDED.operation, region = EXCLUDED.region, at = now() \
             RETURNING pg_current_wal_lsn()::text"
        ),
        &[&ctx.group, &epoch, &operation, &ctx.to],
    )
    .await?;
    let lsn: String = row.get(0);
    Ok(Report {
        summary: format!(
            "{region} accepted a write (epoch {}) at WAL {lsn}",
            ctx.epoch
        ),
        json: json!({ "region": region, "table": VALIDATE_TABLE, "epoch": ctx.epoch, "lsn": lsn }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_is_a_byte_offset() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000060"), Some(0x0300_0060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("A/FF"), Some((10 << 32) | 0xff));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/2/3"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
    }
}
