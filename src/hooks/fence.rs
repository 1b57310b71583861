//! What makes a fence hook's success a *hard* fence: a positive, explicit confirmation for
//! the operation's epoch, `{"fenced": true, "epoch": N}` as the hook's report (the last JSON
//! object of an `exec` hook's output after exit 0, the body of an `http` hook's `200 OK`,
//! the built-in PostgreSQL fence only when its stop command says so and the server then
//! accepts no session as a primary). Only such a confirmation may end the lease wait early,
//! and only in a group that opts in (`fence_ends_lease_wait`).
//!
//! This module must never read a confirmation into anything less explicit: a `202
//! Accepted`, an exit 0 without the report, `"fenced": "yes"`, a missing or other epoch, or
//! an unreachable server is no confirmation.

use serde::Deserialize;

use super::lag::last_json_object;

#[derive(Deserialize)]
struct Claim {
    fenced: bool,
    epoch: u64,
}

/// The epoch a hook's report positively confirms a hard fence for, if it does.
pub fn parse_fence_claim(output: &str) -> Option<u64> {
    let claim: Claim = last_json_object(output)?;
    claim.fenced.then_some(claim.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: only an explicit `{"fenced": true, "epoch": N}` confirms, never anything vaguer.
    #[test]
    fn only_an_explicit_claim_with_its_epoch_confirms() {
        assert_eq!(
            parse_fence_claim(r#"{"fenced": true, "epoch": 7}"#),
            Some(7)
        );
        assert_eq!(
            parse_fence_claim("stopping...\nstopped\n{\"fenced\": true, \"epoch\": 3}\n"),
            Some(3)
        );
        for vague in [
            "",
            "ok",
            "{}",
            r#"{"fenced": false, "epoch": 7}"#,
            r#"{"fenced": true}"#,
            r#"{"fenced": "yes", "epoch": 7}"#,
            r#"{"fenced": true, "epoch": -1}"#,
            r#"{"status": "accepted"}"#,
        ] {
            assert_eq!(parse_fence_claim(vague), None, "{vague:?}");
        }
    }
}
