//! The replication lag an `rpo-check` hook reports: the last JSON object in its output, such
//! as `{"lag_ms": 1200, "lag_bytes": 4096}`, optionally with `"exceeds_rpo": true` when the
//! hook itself finds the lag over the RPO or cannot prove it within (the built-in PostgreSQL
//! hook does, see docs/postgres.md).
//!
//! This module owns reading that report. It must never guess: a report that is missing,
//! malformed or says nothing (neither lag field nor `"exceeds_rpo": true`) is no report
//! (`None`), so the step cannot pass on it.

use serde::Deserialize;

/// Replication lag of the target region, as its hook measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// How far behind the target is in time, in milliseconds.
    pub ms: Option<u64>,
    /// How far behind the target is in replicated data, in bytes.
    pub bytes: Option<u64>,
    /// The hook found the lag over the RPO, or could not prove it within: the step must not
    /// pass whatever the numbers say (they may be lower bounds, or absent).
    pub exceeds_rpo: bool,
}

/// The report as written by the hook; other fields (a note, a database name) are allowed.
#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    lag_ms: Option<u64>,
    #[serde(default)]
    lag_bytes: Option<u64>,
    #[serde(default)]
    exceeds_rpo: Option<bool>,
}

/// The report in a hook's output: the whole output if it is one JSON object (an HTTP body,
/// possibly pretty-printed), otherwise its last line that starts with `{`, so a program may
/// log before printing its report. `None` when there is none or it does not parse as `T`.
pub(crate) fn last_json_object<T: serde::de::DeserializeOwned>(output: &str) -> Option<T> {
    let trimmed = output.trim();
    match serde_json::from_str::<T>(trimmed) {
        Ok(report) => Some(report),
        Err(_) => {
            let line = trimmed
                .lines()
                .rev()
                .map(str::trim)
                .find(|line| line.starts_with('{'))?;
            serde_json::from_str::<T>(line).ok()
        }
    }
}

/// Reads the lag from a hook's output: the whole output if it is one JSON object (an HTTP
/// body, possibly pretty-printed), otherwise its last line that starts with `{`, so a
/// program may log before printing its report. Values must be non-negative integers.
///
/// Returns `None` when there is no such object, when it does not parse, when a field has
/// another type, or when it has neither `lag_ms` nor `lag_bytes` and does not say
/// `"exceeds_rpo": true`.
pub fn parse_lag(output: &str) -> Option<Lag> {
    let report: Report = last_json_object(output)?;
    let exceeds_rpo = report.exceeds_rpo.unwrap_or(false);
    if report.lag_ms.is_none() && report.lag_bytes.is_none() && !exceeds_rpo {
        return None;
    }
    Some(Lag {
        ms: report.lag_ms,
        bytes: report.lag_bytes,
        exceeds_rpo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_fields_are_read() {
        assert_eq!(
            parse_lag(r#"{"lag_ms": 1200, "lag_bytes": 4096}"#),
            Some(Lag {
                ms: Some(1200),
                bytes: Some(4096),
                exceeds_rpo: false,
            })
        );
    }

    #[test]
    fn either_field_may_be_missing() {
        assert_eq!(
            parse_lag(r#"{"lag_ms": 0}"#),
            Some(Lag {
                ms: Some(0),
                bytes: None,
                exceeds_rpo: false,
            })
        );
        assert_eq!(
            parse_lag(r#"{"lag_bytes": 7, "replica": "db-b"}"#),
            Some(Lag {
                ms: None,
                bytes: Some(7),
                exceeds_rpo: false,
            })
        );
    }

    #[test]
    fn pretty_printed_body_is_read() {
        let body = "{\n  \"lag_ms\": 15,\n  \"lag_bytes\": 0\n}\n";
        assert_eq!(
            parse_lag(body),
            Some(Lag {
                ms: Some(15),
                bytes: Some(0),
                exceeds_rpo: false,
            })
        );
    }

    #[test]
    fn last_json_line_after_log_lines_is_read() {
        let out = "checking replica db-b\n{\"lag_ms\": 1}\nstill checking\n{\"lag_ms\": 2}\n";
        assert_eq!(parse_lag(out).and_then(|l| l.ms), Some(2));
    }

    #[test]
    fn a_hook_may_say_the_lag_exceeds_the_rpo() {
        assert_eq!(
            parse_lag(r#"{"lag_ms": 900, "lag_bytes": 0, "exceeds_rpo": true}"#),
            Some(Lag {
                ms: Some(900),
                bytes: Some(0),
                exceeds_rpo: true,
            }),
            "numbers within the RPO do not overrule it"
        );
        assert_eq!(
            parse_lag(r#"{"lag_ms": null, "lag_bytes": null, "exceeds_rpo": true}"#),
            Some(Lag {
                ms: None,
                bytes: None,
                exceeds_rpo: true,
            }),
            "no numbers, but a report: the lag cannot be proven"
        );
        assert_eq!(parse_lag(r#"{"exceeds_rpo": false}"#), None);
        assert_eq!(
            parse_lag(r#"{"lag_ms": 1, "exceeds_rpo": "yes"}"#),
            None,
            "not a boolean: refused, not guessed"
        );
    }

    #[test]
    fn no_report_is_none() {
        assert_eq!(parse_lag(""), None);
        assert_eq!(parse_lag("replica is fine"), None);
        assert_eq!(parse_lag("{}"), None, "neither field: no report");
        assert_eq!(parse_lag(r#"{"other": 1}"#), None);
    }

    #[test]
    fn malformed_values_are_refused_not_guessed() {
        assert_eq!(parse_lag(r#"{"lag_ms": -5}"#), None);
        assert_eq!(parse_lag(r#"{"lag_ms": 1.5}"#), None);
        assert_eq!(parse_lag(r#"{"lag_ms": "12"}"#), None);
        assert_eq!(parse_lag(r#"{"lag_ms": 12"#), None, "cut short");
        // The last report is malformed: an earlier good one must not be used instead.
        assert_eq!(
            parse_lag("{\"lag_ms\": 1}\n{\"lag_ms\": null, \"lag_bytes\": \"x\"}"),
            None
        );
    }
}
