//! `latency.svg` (each status, fence-check and operator operation's latency over time, log
//! scale, by kind and outcome) and `rate.svg` (completed operations per second, by kind),
//! both with the faults shaded so cause and effect line up.

use super::{escape, fault_colour, fault_intervals, palette, TimeAxis};
use crate::checker::{fmt_s, Pair};
use crate::history::{History, OpType, FINAL};
use std::collections::BTreeMap;
use std::fmt::Write;

const W: f64 = 1200.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// The kinds the latency plot shows (writes and leases are drawn in the timeline).
const LATENCY_KINDS: [&str; 9] = [
    "status",
    "fence-check",
    "failover",
    "failback",
    "mode",
    "approve",
    "retry",
    "abort",
    "skip",
];

/// At most this many points per kind in the latency plot (evenly thinned beyond): keeps a
/// long run's SVG small enough for a browser.
const POINTS_PER_KIND_MAX: usize = 5_000;

fn pairs(history: &History) -> Vec<Pair<'_>> {
    history
        .pairs()
        .into_iter()
        .map(|(invoke, complete)| Pair { invoke, complete })
        .collect()
}

fn end_ns(history: &History) -> u64 {
    history.ops.iter().map(|o| o.time_ns).max().unwrap_or(0)
}

/// The frame: shaded faults, the time axis and a title.
fn frame(out: &mut String, axis: &TimeAxis, pairs: &[Pair], end: u64, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{}</text>",
        escape(title)
    );
    for f in fault_intervals(pairs, end) {
        let (x1, x2) = (axis.x(f.start_ns), axis.x(f.end_ns));
        let _ = write!(
            out,
            "<rect x=\"{x1:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
            (x2 - x1).max(1.0),
            H - TOP - BOTTOM,
            fault_colour(&f.kind),
            escape(&f.title)
        );
    }
    for (x, label) in axis.ticks() {
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM,
            H - BOTTOM + 14.0,
            escape(&label)
        );
    }
    let _ = write!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        axis.width,
        H - TOP - BOTTOM
    );
}

fn legend(out: &mut String, entries: &[(String, &str)]) {
    for (i, (name, colour)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 16.0;
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - RIGHT + 10.0,
            y - 9.0,
            W - RIGHT + 24.0,
            y,
            escape(name)
        );
    }
}

/// `latency.svg`.
pub fn latency(history: &History) -> String {
    let pairs = pairs(history);
    let end = end_ns(history);
    let axis = TimeAxis::new(LEFT, W - LEFT - RIGHT, end);
    let mut out = String::new();
    frame(
        &mut out,
        &axis,
        &pairs,
        end,
        "latency (ms, log scale): ● ok  ○ fail  ▲ info",
    );
    let mut by_kind: BTreeMap<&str, Vec<(&Pair, u64)>> = BTreeMap::new();
    for p in &pairs {
        if let (Some(c), true) = (p.complete, LATENCY_KINDS.contains(&p.invoke.f.as_str())) {
            by_kind
                .entry(p.invoke.f.as_str())
                .or_default()
                .push((p, c.time_ns.saturating_sub(p.invoke.time_ns)));
        }
    }
    let max_ns = by_kind
        .values()
        .flatten()
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(1)
        .max(10_000_000);
    // Log scale from 0.1 ms to the largest latency.
    let lo = (100_000f64).log10();
    let hi = (max_ns as f64 * 1.5).log10().max(lo + 1.0);
    let plot_h = H - TOP - BOTTOM;
    let y_of = |ns: u64| TOP + plot_h * (1.0 - ((ns.max(100_000) as f64).log10() - lo) / (hi - lo));
    let mut decade = 0.1f64;
    while decade * 1e6 <= max_ns as f64 * 1.0001 {
        let y = y_of((decade * 1e6) as u64);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            if decade < 1.0 { format!("{decade:.1}") } else { format!("{decade:.0}") }
        );
        decade *= 10.0;
    }
    let mut entries = Vec::new();
    for (i, (kind, points)) in by_kind.iter().enumerate() {
        let colour = palette(i);
        entries.push((kind.to_string(), colour));
        let stride = points.len().div_ceil(POINTS_PER_KIND_MAX).max(1);
        for (p, lat) in points.iter().step_by(stride) {
            let (x, y) = (axis.x(p.invoke.time_ns), y_of(*lat));
            let title = escape(&format!(
                "{} #{} ({}) at {}: {:?} after {:.1} ms",
                p.invoke.f,
                p.invoke.index,
                p.invoke.process,
                fmt_s(p.invoke.time_ns),
                p.kind(),
                *lat as f64 / 1e6
            ));
            let _ = match p.kind() {
                OpType::Ok => write!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.2\" fill=\"{colour}\"><title>{title}</title></circle>"
                ),
                OpType::Fail => write!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"none\" stroke=\"{colour}\"><title>{title}</title></circle>"
                ),
                _ => write!(
                    out,
                    "<path d=\"M{x:.1},{:.1} l3,5 h-6 z\" fill=\"{colour}\"><title>{title}</title></path>",
                    y - 3.0
                ),
            };
        }
    }
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}

/// `rate.svg`.
pub fn rate(history: &History) -> String {
    let pairs = pairs(history);
    let end = end_ns(history);
    let axis = TimeAxis::new(LEFT, W - LEFT - RIGHT, end);
    let mut out = String::new();
    frame(
        &mut out,
        &axis,
        &pairs,
        end,
        "completed client and operator operations per second, by kind (faults shaded)",
    );
    // One-second buckets, wider for long runs so a line has at most ~600 points.
    let bucket_ns = 1_000_000_000u64.max(end / 600 + 1);
    let buckets = (end / bucket_ns + 1) as usize;
    let mut by_kind: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for p in pairs
        .iter()
        .filter(|p| !p.invoke.is_nemesis() && p.invoke.f != FINAL)
    {
        if let Some(c) = p.complete {
            let counts = by_kind
                .entry(p.invoke.f.as_str())
                .or_insert_with(|| vec![0; buckets]);
            counts[((c.time_ns / bucket_ns) as usize).min(buckets - 1)] += 1;
        }
    }
    let per_s = |n: u64| n as f64 * 1e9 / bucket_ns as f64;
    let max = by_kind
        .values()
        .flatten()
        .map(|n| per_s(*n))
        .fold(1.0, f64::max);
    let plot_h = H - TOP - BOTTOM;
    let y_of = |r: f64| TOP + plot_h * (1.0 - r / max);
    for k in 0..=4 {
        let r = max * k as f64 / 4.0;
        let y = y_of(r);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{r:.1}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0
        );
    }
    let mut entries = Vec::new();
    for (i, (kind, counts)) in by_kind.iter().enumerate() {
        let colour = palette(i);
        entries.push((kind.to_string(), colour));
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(b, n)| {
                let mid = (b as u64 * bucket_ns + bucket_ns / 2).min(end);
                format!("{:.1},{:.1}", axis.x(mid), y_of(per_s(*n)))
            })
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"><title>{}</title></polyline>",
            points.join(" "),
            escape(kind)
        );
    }
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}
