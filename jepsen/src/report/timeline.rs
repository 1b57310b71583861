//! `timeline.html`: one page a newcomer can read at a glance. From top to bottom: the
//! verdict and each checker's findings; then one SVG with faults shaded across the whole
//! chart, epoch changes as vertical lines, write windows per region as bands labelled with
//! their epoch, and every other operation as a bar from invocation to completion on its
//! process's row, coloured by outcome. Hovering anything shows its details.

use super::{escape, fault_colour, fault_intervals, palette, TimeAxis};
use crate::checker::{epochs, fmt_s, single_writer, Context, Pair, Valid};
use crate::history::{History, OpType};
use crate::results::Results;
use crate::spec::TestSpec;
use std::collections::BTreeMap;
use std::fmt::Write;

const LABEL_W: f64 = 190.0;
const PLOT_W: f64 = 1300.0;
const ROW_H: f64 = 16.0;
const BAR_H: f64 = 11.0;
/// At most this many operations are marked as checker findings (the rest are in
/// results.json).
const FINDINGS_DRAWN_MAX: usize = 500;
/// Room above the rows for the axis and epoch labels.
const TOP: f64 = 46.0;
/// Approximate width of one character of a label at the chart's font size.
const LABEL_CHAR_PX: f64 = 6.5;
/// Least room between two epoch labels.
const LABEL_GAP_PX: f64 = 4.0;

const OK: &str = "#43a047";
const FAIL: &str = "#e53935";
const INFO: &str = "#fb8c00";

fn outcome_colour(kind: OpType) -> &'static str {
    match kind {
        OpType::Ok => OK,
        OpType::Fail => FAIL,
        _ => INFO,
    }
}

fn verdict(v: Valid) -> (&'static str, &'static str) {
    match v {
        Valid::True => ("valid", "#2e7d32"),
        Valid::False => ("INVALID", "#c62828"),
        Valid::Unknown => ("unknown", "#ef6c00"),
    }
}

/// Orders process rows: nemesis, operators, agents, readers, writers, the rest.
fn row_rank(process: &str) -> (u8, String) {
    let rank = if process == crate::history::NEMESIS_PROCESS {
        0
    } else if process.starts_with("operator") {
        1
    } else if process.starts_with("agent") {
        2
    } else if process.starts_with("reader") {
        3
    } else if process.starts_with("writer") {
        4
    } else {
        5
    };
    (rank, process.to_string())
}

fn op_title(p: &Pair) -> String {
    let mut t = format!(
        "{} #{} by {}{}\ninvoke at {}: {}",
        p.invoke.f,
        p.invoke.index,
        p.invoke.process,
        p.invoke
            .node
            .as_deref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default(),
        fmt_s(p.invoke.time_ns),
        p.invoke.value
    );
    match p.complete {
        Some(c) => {
            let _ = write!(
                t,
                "\n{:?} #{} at {} (+{:.1} ms): {}",
                c.kind,
                c.index,
                fmt_s(c.time_ns),
                c.time_ns.saturating_sub(p.invoke.time_ns) as f64 / 1e6,
                c.value
            );
            if let Some(e) = &c.error {
                let _ = write!(t, "\nerror: {e}");
            }
        }
        None => t.push_str("\nnever completed"),
    }
    t
}

/// The operator's actions per kind and targeted step: accepted / refused / unknown.
fn actions_section(out: &mut String, results: &Results) {
    if results.operator_actions.is_empty() {
        return;
    }
    out.push_str("<table class=checks><tr><th>operator action</th><th>step</th><th>accepted / refused / unknown</th><th>error kinds</th></tr>");
    for (f, steps) in &results.operator_actions {
        for (step, c) in steps {
            let kinds: Vec<String> = c.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{} / {} / {}</td><td>{}</td></tr>",
                escape(f),
                escape(step),
                c.accepted,
                c.refused,
                c.unknown,
                escape(&kinds.join(", "))
            );
        }
    }
    out.push_str("</table>");
}

fn checker_section(out: &mut String, results: &Results) {
    out.push_str("<table class=checks><tr><th>checker</th><th>verdict</th><th>findings</th></tr>");
    for (name, r) in &results.checkers {
        let (word, colour) = verdict(r.valid);
        let _ = write!(
            out,
            "<tr><td>{}</td><td style=\"color:{colour};font-weight:bold\">{word}</td><td>",
            escape(name)
        );
        if !r.errors.is_empty() {
            out.push_str("<ul>");
            for e in r.errors.iter().take(10) {
                let ops: Vec<String> = e
                    .ops
                    .iter()
                    .map(|o| format!("#{} {}", o.index, o.process))
                    .collect();
                let _ = write!(
                    out,
                    "<li>{}{}</li>",
                    escape(&e.message),
                    if ops.is_empty() {
                        String::new()
                    } else {
                        format!(" <span class=ops>[{}]</span>", escape(&ops.join(", ")))
                    }
                );
            }
            if r.errors.len() > 10 {
                let _ = write!(
                    out,
                    "<li>... {} more in results.json</li>",
                    r.errors.len() - 10
                );
            }
            out.push_str("</ul>");
        }
        for n in &r.notes {
            let _ = write!(out, "<div class=note>{}</div>", escape(n));
        }
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !counts.is_empty() {
            let _ = write!(out, "<div class=counts>{}</div>", escape(&counts.join(" ")));
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</table>");
}

/// Draws operations of one process as one bar: the first's invocation to the last's end.
fn draw_run(svg: &mut String, axis: &TimeAxis, y: f64, run: &[&Pair], end_ns: u64) {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return;
    };
    let end = last.complete.map(|c| c.time_ns).unwrap_or(end_ns);
    let (x1, x2) = (axis.x(first.invoke.time_ns), axis.x(end));
    let dashed = if last.complete.is_none() {
        " stroke=\"#000\" stroke-dasharray=\"2,2\""
    } else {
        ""
    };
    let title = if run.len() == 1 {
        op_title(first)
    } else {
        format!(
            "{} {} {:?}, #{} .. #{}, {} .. {}\nfirst: {}\nlast: {}",
            run.len(),
            first.invoke.f,
            first.kind(),
            first.invoke.index,
            last.invoke.index,
            fmt_s(first.invoke.time_ns),
            fmt_s(end),
            op_title(first),
            op_title(last)
        )
    };
    let _ = write!(
        svg,
        "<rect x=\"{x1:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" fill=\"{}\"{dashed}><title>{}</title></rect>",
        (x2 - x1).max(1.5),
        outcome_colour(first.kind()),
        escape(&title)
    );
    if x2 - x1 > 40.0 && run.len() == 1 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#fff\" font-size=\"9\">{}</text>",
            x1 + 2.0,
            y + BAR_H - 2.0,
            escape(&first.invoke.f)
        );
    }
}

/// Renders the page.
pub fn render(history: &History, spec: &TestSpec, results: &Results) -> String {
    let ctx = Context::new(history, spec, None);
    let end_ns = ctx.end_ns();
    let axis = TimeAxis::new(LABEL_W, PLOT_W, end_ns);

    // Rows: per group and region a write-window row, then one per process (writes excluded).
    let windows = single_writer::windows(&ctx);
    let mut window_rows: BTreeMap<(String, String), Vec<&single_writer::Window>> = BTreeMap::new();
    for w in &windows {
        window_rows
            .entry((w.group.clone(), w.region.clone()))
            .or_default()
            .push(w);
    }
    let mut processes: Vec<&str> = ctx
        .pairs
        .iter()
        .filter(|p| p.invoke.f != "write")
        .map(|p| p.invoke.process.as_str())
        .collect();
    processes.sort_by_key(|p| row_rank(p));
    processes.dedup();
    // The active region per group, from the first sighting of each greater epoch.
    let mut obs = epochs::observations(&ctx);
    obs.sort_by_key(|o| o.end_ns);
    let mut changes: BTreeMap<String, Vec<&epochs::Observation>> = BTreeMap::new();
    for o in &obs {
        let list = changes.entry(o.group.clone()).or_default();
        if list.last().is_none_or(|l| o.epoch > l.epoch) {
            list.push(o);
        }
    }
    let mut regions: Vec<&str> = window_rows
        .keys()
        .map(|(_, r)| r.as_str())
        .chain(obs.iter().map(|o| o.region.as_str()))
        .collect();
    regions.sort_unstable();
    regions.dedup();
    let region_colour = |r: &str| palette(regions.iter().position(|x| *x == r).unwrap_or(0));
    // Operations the checkers named, with what they said about them.
    let mut findings: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (name, r) in &results.checkers {
        for e in &r.errors {
            for o in &e.ops {
                findings
                    .entry(o.index)
                    .or_default()
                    .push(format!("{name}: {}", e.message));
            }
        }
    }
    let time_of: BTreeMap<u64, u64> = history.ops.iter().map(|o| (o.index, o.time_ns)).collect();
    let finding_rows = usize::from(!findings.is_empty());
    let rows = finding_rows + changes.len() + window_rows.len() + processes.len();
    let height = TOP + rows as f64 * ROW_H + 30.0;
    let svg_w = LABEL_W + PLOT_W + 20.0;

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{svg_w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    // Faults shaded across the whole chart.
    for f in fault_intervals(&ctx.pairs, end_ns) {
        let (x1, x2) = (axis.x(f.start_ns), axis.x(f.end_ns));
        let _ = write!(
            svg,
            "<rect x=\"{x1:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" opacity=\"{}\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{}</text>",
            (x2 - x1).max(1.0),
            height - TOP - 30.0,
            fault_colour(&f.kind),
            if f.installed { "0.9" } else { "0.4" },
            escape(&f.title),
            x1 + 2.0,
            height - 18.0,
            escape(&f.kind)
        );
    }
    // Axis.
    for (x, label) in axis.ticks() {
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
            TOP - 4.0,
            height - 30.0,
            TOP - 30.0,
            escape(&label)
        );
    }
    // Epoch changes: the first observation of each greater epoch, per group. A label that
    // would run into the previous one is shortened to its epoch, or left to the line's
    // hover text when even that does not fit.
    let mut marks: Vec<(f64, &epochs::Observation)> = changes
        .values()
        .flatten()
        .map(|o| (axis.x(o.end_ns), *o))
        .collect();
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut labels_end_x = f64::MIN;
    for (i, &(x, o)) in marks.iter().enumerate() {
        let next_x = marks.get(i + 1).map_or(f64::MAX, |m| m.0);
        let label = format!("{} e{}→{}", o.group, o.epoch, o.region);
        let short = format!("e{}", o.epoch);
        let start = x + 2.0;
        let width = |l: &str| l.chars().count() as f64 * LABEL_CHAR_PX;
        let shown = if start < labels_end_x + LABEL_GAP_PX {
            String::new()
        } else if start + width(&label) + LABEL_GAP_PX <= next_x + 2.0 {
            label.clone()
        } else {
            short
        };
        if !shown.is_empty() {
            labels_end_x = start + width(&shown);
        }
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-dasharray=\"3,3\"><title>{}</title></line>\
             <text x=\"{:.1}\" y=\"{}\" fill=\"#000\">{}</text>",
            TOP - 14.0,
            height - 30.0,
            escape(&format!(
                "{label}: first seen by {} #{} ({}) at {}",
                o.op.f,
                o.op.index,
                o.op.process,
                fmt_s(o.end_ns)
            )),
            x + 2.0,
            TOP - 16.0,
            escape(&shown)
        );
    }
    let mut y = TOP;
    let label = |svg: &mut String, y: f64, text: &str| {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" fill=\"#222\">{}</text><line x1=\"{LABEL_W}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#f0f0f0\"/>",
            y + BAR_H - 1.0,
            escape(text),
            y + ROW_H - 1.0,
            LABEL_W + PLOT_W,
            y + ROW_H - 1.0
        );
    };
    if !findings.is_empty() {
        label(&mut svg, y, "checker findings");
        for (index, messages) in findings.iter().take(FINDINGS_DRAWN_MAX) {
            let x = axis.x(time_of.get(index).copied().unwrap_or(0));
            let _ = write!(
                svg,
                "<path d=\"M{x:.1},{:.1} l5,-5 l-5,-5 l-5,5 z\" fill=\"#c62828\"><title>{}</title></path>",
                y + BAR_H,
                escape(&format!("event #{index}\n{}", messages.join("\n")))
            );
        }
        y += ROW_H;
    }
    for (group, list) in &changes {
        label(&mut svg, y, &format!("active {group}"));
        for (k, o) in list.iter().enumerate() {
            let end = list.get(k + 1).map(|n| n.end_ns).unwrap_or(end_ns);
            let (x1, x2) = (axis.x(o.end_ns), axis.x(end));
            let _ = write!(
                svg,
                "<rect x=\"{x1:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" fill=\"{}\" opacity=\"0.45\"><title>{}</title></rect>",
                (x2 - x1).max(1.0),
                region_colour(&o.region),
                escape(&format!(
                    "group {group}: {} active at epoch {} (first seen by {} #{} at {})",
                    o.region,
                    o.epoch,
                    o.op.f,
                    o.op.index,
                    fmt_s(o.end_ns)
                ))
            );
            if x2 - x1 > 40.0 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#000\" font-size=\"9\">{} e{}</text>",
                    x1 + 2.0,
                    y + BAR_H - 2.0,
                    escape(&o.region),
                    o.epoch
                );
            }
        }
        y += ROW_H;
    }
    for ((group, region), wins) in &window_rows {
        label(&mut svg, y, &format!("writes {group}/{region}"));
        let colour = region_colour(region);
        for w in wins {
            let (x1, x2) = (axis.x(w.start_ns), axis.x(w.end_ns));
            let _ = write!(
                svg,
                "<rect x=\"{x1:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" fill=\"{colour}\" opacity=\"0.8\"><title>{}</title></rect>",
                (x2 - x1).max(1.0),
                escape(&format!(
                    "{} writes by {region} in group {group} at epoch {}\n{} .. {}\nops #{} .. #{}",
                    w.writes,
                    w.epoch,
                    fmt_s(w.start_ns),
                    fmt_s(w.end_ns),
                    w.first.index,
                    w.last.index
                ))
            );
            if x2 - x1 > 18.0 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#fff\" font-size=\"9\">e{}</text>",
                    x1 + 2.0,
                    y + BAR_H - 2.0,
                    w.epoch
                );
            }
        }
        // Writes that failed or whose outcome is unknown, as ticks.
        for p in ctx.pairs_of(&["write"]).filter(|p| {
            !p.is_ok() && p.group() == Some(group.as_str()) && p.str_field("region") == Some(region)
        }) {
            let x = axis.x(p.invoke.time_ns);
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"2\" height=\"{BAR_H}\" fill=\"{}\"><title>{}</title></rect>",
                outcome_colour(p.kind()),
                escape(&op_title(p))
            );
        }
        y += ROW_H;
    }
    let row_of: BTreeMap<&str, f64> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, y + i as f64 * ROW_H))
        .collect();
    for p in &processes {
        label(&mut svg, row_of[p], p);
    }
    // Per process, operations closer than a pixel with the same kind and outcome are drawn
    // as one bar (a long run has tens of thousands of reads; the page must stay usable).
    let mut by_process: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in ctx.pairs.iter().filter(|p| p.invoke.f != "write") {
        by_process
            .entry(p.invoke.process.as_str())
            .or_default()
            .push(p);
    }
    for (process, ops) in by_process {
        let y = row_of[process];
        let mut run: Vec<&Pair> = Vec::new();
        for p in ops {
            if let Some(last) = run.last() {
                let last_end = last.complete.map(|c| c.time_ns).unwrap_or(end_ns);
                let joins = last.complete.is_some()
                    && p.complete.is_some()
                    && last.invoke.f == p.invoke.f
                    && last.kind() == p.kind()
                    && axis.x(p.invoke.time_ns) - axis.x(last_end) < 1.0;
                if !joins {
                    draw_run(&mut svg, &axis, y, &run, end_ns);
                    run.clear();
                }
            }
            run.push(p);
        }
        draw_run(&mut svg, &axis, y, &run, end_ns);
    }
    svg.push_str("</svg>");

    let (word, colour) = verdict(results.valid);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} — {}</title><style>\
         body{{font-family:sans-serif;margin:16px;color:#222}}\
         table.checks{{border-collapse:collapse;margin:8px 0 16px}}\
         table.checks td,table.checks th{{border:1px solid #ccc;padding:3px 8px;vertical-align:top;text-align:left}}\
         .note,.counts{{color:#666;font-size:12px}} .ops{{color:#555;font-family:monospace}}\
         .legend span{{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:3px}}\
         .chart{{overflow-x:auto;border:1px solid #ddd}}\
         </style></head><body>",
        escape(&spec.name),
        word
    );
    let _ = write!(
        out,
        "<h1>{} <span style=\"color:{colour}\">{word}</span></h1><p>workload {}, nemeses {}, {} witnesses, seed {}, time limit {} s{}; {} events, {:.1} s.</p>",
        escape(&spec.name),
        escape(&spec.workload),
        escape(&if spec.nemeses.is_empty() { "none".to_string() } else { spec.nemeses.join(", ") }),
        spec.nodes,
        spec.seed,
        spec.time_limit_s,
        spec.git_commit
            .as_deref()
            .map(|c| format!(", commit {}", escape(c)))
            .unwrap_or_default(),
        history.ops.len(),
        end_ns as f64 / 1e9
    );
    checker_section(&mut out, results);
    actions_section(&mut out, results);
    out.push_str("<div class=legend>");
    for (text, colour) in [("ok", OK), ("fail", FAIL), ("info / unknown", INFO)] {
        let _ = write!(
            out,
            "<span style=\"background:{colour};color:#fff\">{text}</span>"
        );
    }
    for kind in [
        "partition",
        "kill",
        "pause",
        "clock",
        "loss",
        "delay",
        "health",
    ] {
        let _ = write!(
            out,
            "<span style=\"background:{}\">{kind}</span>",
            fault_colour(kind)
        );
    }
    out.push_str(
        "<span>dashed line: a new epoch first seen</span><span>bands: write windows, labelled with their epoch</span></div>",
    );
    let _ = write!(out, "<div class=chart>{svg}</div>");
    out.push_str("<p><a href=\"latency.svg\">latency</a> · <a href=\"rate.svg\">rate</a> · <a href=\"results.json\">results.json</a> · <a href=\"history.jsonl\">history.jsonl</a></p></body></html>\n");
    out
}
