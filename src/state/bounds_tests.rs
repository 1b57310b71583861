//! The worst case of the replicated state, built through `apply` (so the limits that are
//! tested are the ones `apply` enforces), measured as a snapshot encodes it.

use super::limits::{ACTOR_BYTES_MAX, CLUSTER_ID_BYTES_MAX, REMOVED_GROUPS_MAX};
use super::*;
use crate::config::{GroupPolicy, Policy, Region, GROUPS_MAX, POLICY_JSON_BYTES_MAX};

/// A name of `NAME_BYTES_MAX` bytes, distinct per (`prefix`, `i`).
fn long_name(prefix: &str, i: usize) -> String {
    let head = format!("{prefix}-{i:03}-");
    format!("{head}{}", "x".repeat(NAME_BYTES_MAX - head.len()))
}

/// Text that JSON escapes to twice its length, `len` bytes long.
fn quotes(len: usize) -> String {
    "\"".repeat(len)
}

/// The largest policy shape: every region, every group with every region as a candidate,
/// all names at their limit. Groups are named after `prefix`.
fn policy(prefix: &str) -> Policy {
    let template = Policy::parse(
        "p",
        "[[regions]]\nname = \"a\"\n[[regions]]\nname = \"b\"\n\n[[groups]]\nname = \"g\"\ncandidates = [\"a\", \"b\"]\nmode = \"manual\"\n",
    )
    .unwrap();
    let regions: Vec<String> = (0..crate::config::REGIONS_MAX)
        .map(|i| long_name("region", i))
        .collect();
    let groups = (0..GROUPS_MAX)
        .map(|i| GroupPolicy {
            name: long_name(prefix, i),
            candidates: regions.clone(),
            ..template.groups[0].clone()
        })
        .collect();
    let policy = Policy {
        regions: regions
            .iter()
            .map(|name| Region {
                name: name.clone(),
                probes: Vec::new(),
            })
            .collect(),
        groups,
        ..template
    };
    policy
        .validate()
        .expect("the largest policy shape is valid");
    policy
}

struct Driver {
    state: ClusterState,
    index: u64,
}

impl Driver {
    fn apply(&mut self, request_id: String, command: Command) -> Response {
        self.index += 1;
        let p = Proposal {
            actor: quotes(ACTOR_BYTES_MAX),
            at_ms: u64::MAX,
            request_id,
            command,
        };
        self.state.apply(self.index, &p)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let r = self.apply(String::new(), command.clone());
        r.outcome
            .unwrap_or_else(|e| panic!("{command:?} refused: {e}"))
    }

    fn start(&mut self, group: &str, to: &str) -> u64 {
        match self.ok(Command::StartOperation {
            group: group.to_string(),
            to: to.to_string(),
            kind: OperationKind::Failover,
            reason: quotes(REASON_BYTES_MAX),
            approval_required: false,
            requested: false,
        }) {
            Outcome::Operation(op) => op.id,
            other => panic!("{other:?}"),
        }
    }

    fn complete(&mut self, operation: u64, steps: &[Step]) {
        for step in steps {
            self.ok(Command::CompleteStep {
                operation,
                step: *step,
                outcome: StepOutcome::Completed,
                detail: quotes(DETAIL_BYTES_MAX * 4),
            });
        }
    }
}

/// Goal: with every limit reached (every collection full, every string at its limit and
/// made of characters JSON escapes), the state encodes below STATE_BYTES_MAX, which the
/// raft layer's snapshot limit covers. Method: drive `apply` to that state: removed groups
/// with pending and expired leases, a full set of groups each with a finished and a halted
/// operation carrying maximal details, a full audit log and a full set of remembered
/// responses, the largest of which are refusals listing every candidate and operations.
#[test]
fn worst_case_state_fits_a_snapshot() {
    let mut d = Driver {
        state: ClusterState::default(),
        index: 0,
    };
    d.ok(Command::Bootstrap {
        cluster_id: quotes(CLUSTER_ID_BYTES_MAX),
    });

    // Removed groups: one full set whose leases expired, one whose leases may be held.
    d.ok(Command::ApplyPolicy {
        policy: policy("expired"),
        if_version: 0,
    });
    d.ok(Command::ApplyPolicy {
        policy: policy("pending"),
        if_version: 0,
    });
    for i in 0..GROUPS_MAX {
        let group = long_name("expired", i);
        let epoch = d.state.removed[&group].epoch;
        d.ok(Command::RemovedLeasesExpired { group, epoch });
    }
    let live = policy("live");
    let policy_bytes = serde_json::to_vec(&live).unwrap().len();
    d.ok(Command::ApplyPolicy {
        policy: live.clone(),
        if_version: 0,
    });
    assert_eq!(d.state.removed.len(), REMOVED_GROUPS_MAX + GROUPS_MAX);

    // One finished operation per group, every step with a maximal detail.
    let regions: Vec<String> = live.regions.iter().map(|r| r.name.clone()).collect();
    let all = [
        Step::Revoke,
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
        Step::Dns,
        Step::Validate,
    ];
    for g in &live.groups {
        let op = d.start(&g.name, &regions[1]);
        d.complete(op, &all);
    }
    assert_eq!(d.state.operations.len(), FINISHED_OPERATIONS_MAX);

    // Remembered responses: refusals naming every candidate, and whole operations.
    for i in 0..REQUEST_IDS_MAX {
        let id = format!("{}{i:08}", quotes(REQUEST_ID_BYTES_MAX - 8));
        let command = if i % 2 == 0 {
            Command::StartOperation {
                group: live.groups[i % GROUPS_MAX].name.clone(),
                to: quotes(NAME_BYTES_MAX),
                kind: OperationKind::Failover,
                reason: quotes(REASON_BYTES_MAX),
                approval_required: false,
                requested: false,
            }
        } else {
            // A stale halt of a finished operation answers with the whole operation.
            Command::HaltOperation {
                operation: 1 + (i % FINISHED_OPERATIONS_MAX) as u64,
                step: Step::Validate,
                error: String::new(),
            }
        };
        d.apply(id, command);
    }
    assert_eq!(d.state.requests.len(), REQUEST_IDS_MAX);

    // One unfinished operation per group, halted after activation with a maximal error.
    for g in &live.groups {
        let op = d.start(&g.name, &regions[2]);
        d.complete(op, &all[..6]);
        d.ok(Command::HaltOperation {
            operation: op,
            step: Step::Validate,
            error: quotes(DETAIL_BYTES_MAX * 4),
        });
    }

    // A full audit log of maximal entries (and a verdict for every region).
    for i in 0..AUDIT_ENTRIES_MAX {
        d.ok(Command::RecordVerdict {
            region: regions[i % regions.len()].clone(),
            verdict: Verdict::Unknown,
            evidence: quotes(AUDIT_DETAIL_BYTES_MAX * 4),
        });
    }
    assert_eq!(d.state.audit.len(), AUDIT_ENTRIES_MAX);

    let size = |v: &dyn erased::Json| v.bytes();
    let s = &d.state;
    let parts = [
        ("policy", size(&s.policy)),
        ("groups", size(&s.groups)),
        ("removed", size(&s.removed)),
        ("operations", size(&s.operations)),
        ("requests", size(&s.requests)),
        ("audit", size(&s.audit)),
        ("verdicts", size(&s.verdicts)),
    ];
    let total = size(s);
    // The policy built here is below the policy limit; the rest of that limit counts too.
    let worst = total + POLICY_JSON_BYTES_MAX.saturating_sub(policy_bytes);
    for (part, bytes) in parts {
        println!("{part:>10}: {:>6} KiB", bytes / 1024);
    }
    println!(
        "     state: {} KiB measured, {} KiB with the policy at its limit, limit {} KiB",
        total / 1024,
        worst / 1024,
        STATE_BYTES_MAX / 1024
    );
    assert!(
        worst <= STATE_BYTES_MAX,
        "the worst-case state encodes to {worst} bytes, more than {STATE_BYTES_MAX}"
    );
}

/// Encoded size of anything serializable, behind one object-safe trait for the table.
mod erased {
    pub trait Json {
        fn bytes(&self) -> usize;
    }

    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> usize {
            serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
        }
    }
}
