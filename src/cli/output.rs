//! What the CLI prints for a reply: the tables an operator reads and the JSON scripts parse
//! (`--json`; the jepsen harness and the process tests read it, so keys never change).
//! Pure functions of a reply: no I/O.

use crate::proto;

pub(super) fn status_table(r: &proto::StatusReply, audit: u32) -> String {
    let leader = r
        .leader_id
        .and_then(|id| r.witnesses.iter().find(|w| w.id == id))
        .map(|w| format!("witness {} ({}, {})", w.id, w.site, w.addr))
        .unwrap_or_else(|| "none".into());
    let mut out = format!(
        "cluster {}  leader {}  term {}  applied {}  policy v{}{}\n\n",
        if r.cluster_id.is_empty() {
            "(not initialised)"
        } else {
            &r.cluster_id
        },
        leader,
        r.term,
        r.applied_index,
        r.policy_version,
        if r.local {
            format!("  [local view of witness {}, may be stale]", r.served_by)
        } else {
            String::new()
        }
    );
    out += &format!(
        "{:<16} {:<12} {:>6} {:<8} {}\n",
        "GROUP", "ACTIVE", "EPOCH", "MODE", "CANDIDATES"
    );
    for g in &r.groups {
        out += &format!(
            "{:<16} {:<12} {:>6} {:<8} {}\n",
            g.name,
            g.active,
            g.epoch,
            g.mode,
            g.candidates.join(",")
        );
    }
    if r.groups.is_empty() {
        out += "(no groups: apply a policy with `arbiter policy apply FILE`)\n";
    }
    if !r.regions.is_empty() {
        out += &format!(
            "\n{:<16} {:<8} {}\n",
            "REGION", "VERDICT", "WITNESSES (voters seeing it down / up)"
        );
        for g in &r.regions {
            out += &format!(
                "{:<16} {:<8} {} down / {} up of {}\n",
                g.name, g.verdict, g.voters_seeing_down, g.voters_seeing_up, g.voters
            );
        }
    }
    if !r.operations.is_empty() {
        out += "\nOPERATIONS IN PROGRESS\n";
        for o in &r.operations {
            out += &format!(
                "#{:<4} {:<12} {} -> {}  {}  step {}{}\n",
                o.id,
                o.group,
                o.from,
                o.to,
                o.state,
                o.step,
                if o.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", o.error)
                }
            );
        }
    }
    if !r.leases.is_empty() {
        out += &format!(
            "\n{:<16} {:<12} {:<20} {:>6} {:>12}\n",
            "LEASE GROUP", "REGION", "HOLDER", "EPOCH", "REMAINING"
        );
        for l in &r.leases {
            let remaining = if l.remaining_ms >= 0 {
                format!("{} ms", l.remaining_ms)
            } else {
                "expired".into()
            };
            out += &format!(
                "{:<16} {:<12} {:<20} {:>6} {:>12}\n",
                l.group, l.region, l.holder, l.epoch, remaining
            );
        }
    }
    out += "\n";
    out += &witness_table(&r.witnesses);
    if audit > 0 && !r.audit.is_empty() {
        out += "\nRECENT DECISIONS (newest first)\n";
        for a in &r.audit {
            let group = if a.group.is_empty() { "-" } else { &a.group };
            let detail = a.detail.lines().next().unwrap_or("");
            out += &format!(
                "#{:<5} idx {:<6} {:<14} {:<12} {:<10} {}\n",
                a.seq, a.index, a.kind, group, a.actor, detail
            );
        }
    }
    out
}

pub(super) fn status_json(r: &proto::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "cluster_id": r.cluster_id,
        "served_by": r.served_by,
        "local": r.local,
        "leader_id": r.leader_id,
        "term": r.term,
        "applied_index": r.applied_index,
        "policy_version": r.policy_version,
        "groups": r.groups.iter().map(group_json).collect::<Vec<_>>(),
        "witnesses": r.witnesses.iter().map(|w| serde_json::json!({
            "id": w.id, "addr": w.addr, "site": w.site, "role": w.role,
            "last_contact_ms": w.last_contact_ms, "matched_index": w.matched_index,
        })).collect::<Vec<_>>(),
        "audit": r.audit.iter().map(audit_json).collect::<Vec<_>>(),
        "regions": r.regions.iter().map(|g| serde_json::json!({
            "name": g.name, "verdict": g.verdict, "voters_seeing_down": g.voters_seeing_down,
            "voters_seeing_up": g.voters_seeing_up, "voters": g.voters,
        })).collect::<Vec<_>>(),
        "operations": r.operations.iter().map(operation_json).collect::<Vec<_>>(),
        "leases": r.leases.iter().map(|l| serde_json::json!({
            "group": l.group, "region": l.region, "holder": l.holder, "epoch": l.epoch,
            "remaining_ms": l.remaining_ms,
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn watch_json(event: &proto::WatchEvent) -> serde_json::Value {
    serde_json::json!({
        "applied_index": event.applied_index,
        "groups": event.groups.iter().map(group_json).collect::<Vec<_>>(),
        "audit": event.audit.iter().map(audit_json).collect::<Vec<_>>(),
    })
}

pub(super) fn group_json(g: &proto::GroupStatus) -> serde_json::Value {
    serde_json::json!({
        "name": g.name, "active": g.active, "epoch": g.epoch, "mode": g.mode, "candidates": g.candidates,
    })
}

pub(super) fn audit_json(a: &proto::AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": a.seq, "index": a.index, "at_ms": a.at_ms, "actor": a.actor, "group": a.group,
        "kind": a.kind, "detail": a.detail, "epoch": a.epoch,
    })
}

pub(super) fn witness_table(ws: &[proto::WitnessStatus]) -> String {
    let mut out = format!(
        "{:<4} {:<8} {:<12} {:<22} {:>12} {:>8}\n",
        "ID", "ROLE", "SITE", "ADDR", "LAST-CONTACT", "MATCHED"
    );
    for w in ws {
        let contact = w
            .last_contact_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "-".into());
        let matched = w
            .matched_index
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<4} {:<8} {:<12} {:<22} {:>12} {:>8}\n",
            w.id, w.role, w.site, w.addr, contact, matched
        );
    }
    out
}

pub(super) fn operation_json(o: &proto::OperationStatus) -> serde_json::Value {
    serde_json::json!({
        "id": o.id, "group": o.group, "kind": o.kind, "from": o.from, "to": o.to,
        "from_epoch": o.from_epoch, "to_epoch": o.to_epoch, "reason": o.reason, "actor": o.actor,
        "state": o.state, "error": o.error, "step": o.step, "created_at_ms": o.created_at_ms,
        "approvals": o.approvals,
        "steps": o.steps.iter().map(|s| serde_json::json!({
            "step": s.step, "outcome": s.outcome, "detail": s.detail,
            "finished_at_ms": s.finished_at_ms, "index": s.index,
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn operations_table(ops: &[proto::OperationStatus]) -> String {
    let mut out = format!(
        "{:<5} {:<12} {:<10} {:<22} {:<18} {:<10} {}\n",
        "ID", "GROUP", "KIND", "FROM -> TO", "STATE", "STEP", "TOOK"
    );
    for o in ops {
        let took = match (o.steps.first(), o.steps.last()) {
            (Some(a), Some(b)) if b.finished_at_ms >= a.finished_at_ms => format!(
                "{:.1}s",
                (b.finished_at_ms - a.finished_at_ms) as f64 / 1000.0
            ),
            _ => "-".into(),
        };
        out += &format!(
            "{:<5} {:<12} {:<10} {:<22} {:<18} {:<10} {}\n",
            o.id,
            o.group,
            o.kind,
            format!("{} -> {}", o.from, o.to),
            o.state,
            o.step,
            took
        );
        let mut prev = o.steps.first().map(|s| s.finished_at_ms).unwrap_or(0);
        for s in &o.steps {
            out += &format!(
                "        {:<10} {:<9} +{:.1}s  {}\n",
                s.step,
                s.outcome,
                s.finished_at_ms.saturating_sub(prev) as f64 / 1000.0,
                s.detail.lines().next().unwrap_or("")
            );
            prev = s.finished_at_ms;
        }
        if !o.error.is_empty() {
            out += &format!("        error: {}\n", o.error);
        }
    }
    out
}

pub(super) fn dns_json(s: &proto::DnsSourceStatus) -> serde_json::Value {
    serde_json::json!({
        "group": s.group, "name": s.name, "source": s.source, "expected": s.expected,
        "found": s.found, "matches": s.matches, "error": s.error,
        "marker_expected": s.marker_expected, "marker_found": s.marker_found,
        "marker_problem": s.marker_problem,
    })
}

pub(super) fn dns_table(sources: &[proto::DnsSourceStatus]) -> String {
    if sources.is_empty() {
        return "no group has a DNS record\n".to_string();
    }
    let mut out = format!(
        "{:<12} {:<28} {:<24} {:<6} {}\n",
        "GROUP", "NAME", "SOURCE", "MATCH", "PUBLISHES"
    );
    for s in sources {
        let mut found = if !s.error.is_empty() {
            format!("error: {}", s.error)
        } else {
            s.found.join(", ")
        };
        // External servers: their `_arbiter.` marker, shown only when it is not current.
        if !s.marker_problem.is_empty() {
            found += &format!("; marker: {}", s.marker_problem);
        }
        let matches = if s.matches { "yes" } else { "NO" };
        out += &format!(
            "{:<12} {:<28} {:<24} {:<6} {}\n",
            s.group, s.name, s.source, matches, found
        );
    }
    out
}
