//! The report of a run: `timeline.html` (every operation on a time axis, faults shaded,
//! write windows and epoch changes marked, the checkers' verdicts) and two plots,
//! `latency.svg` and `rate.svg`. Every file is self-contained (inline SVG and CSS, no
//! external assets) and every text taken from the history is escaped.
//!
//! # Layout
//!
//! - `timeline`: the HTML page.
//! - `plots`: the latency and rate SVGs.

pub mod plots;
pub mod timeline;

use crate::checker::Pair;
use crate::history::{History, HEAL};
use crate::results::Results;
use crate::spec::TestSpec;
use std::path::Path;

/// Writes `timeline.html`, `latency.svg` and `rate.svg` into `dir`.
pub fn write_all(
    dir: &Path,
    history: &History,
    spec: &TestSpec,
    results: &Results,
) -> anyhow::Result<()> {
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    write("timeline.html", timeline::render(history, spec, results))?;
    write("latency.svg", plots::latency(history))?;
    write("rate.svg", plots::rate(history))?;
    Ok(())
}

/// Escapes text for HTML and SVG (element content and quoted attributes).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A horizontal time axis: run time in nanoseconds to pixels.
#[derive(Debug, Clone, Copy)]
pub struct TimeAxis {
    /// Pixel where time 0 is drawn.
    pub x0: f64,
    pub width: f64,
    /// The time drawn at `x0 + width` (at least 1 ns).
    pub end_ns: u64,
}

impl TimeAxis {
    pub fn new(x0: f64, width: f64, end_ns: u64) -> TimeAxis {
        TimeAxis {
            x0,
            width,
            end_ns: end_ns.max(1),
        }
    }

    pub fn x(&self, ns: u64) -> f64 {
        self.x0 + self.width * (ns.min(self.end_ns) as f64 / self.end_ns as f64)
    }

    /// Tick marks: about eight, at round numbers of seconds.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        let span_s = self.end_ns as f64 / 1e9;
        let raw = span_s / 8.0;
        let step = [
            0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]
        .into_iter()
        .find(|s| *s >= raw)
        .unwrap_or(1800.0);
        let mut out = Vec::new();
        let mut t = 0.0;
        while t <= span_s + 1e-9 && out.len() < 100 {
            let label = if step < 1.0 {
                format!("{t:.3}s")
            } else {
                format!("{t:.0}s")
            };
            out.push((self.x((t * 1e9) as u64), label));
            t += step;
        }
        out
    }
}

/// A fault's interval: from its invocation until the next `heal` completes (or the end).
#[derive(Debug, Clone)]
pub struct FaultInterval {
    pub kind: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub installed: bool,
    pub title: String,
}

/// The faults of a history, from the nemesis operations.
pub fn fault_intervals(pairs: &[Pair], end_ns: u64) -> Vec<FaultInterval> {
    let nemesis: Vec<&Pair> = pairs.iter().filter(|p| p.invoke.is_nemesis()).collect();
    let heals: Vec<u64> = nemesis
        .iter()
        .filter(|p| p.invoke.f == HEAL)
        .map(|p| p.complete.map(|c| c.time_ns).unwrap_or(p.invoke.time_ns))
        .collect();
    nemesis
        .iter()
        .filter(|p| p.invoke.f != HEAL)
        .map(|p| {
            let start = p.invoke.time_ns;
            let end = heals
                .iter()
                .copied()
                .filter(|h| *h >= start)
                .min()
                .unwrap_or(end_ns);
            let installed = p
                .complete
                .and_then(|c| c.value.get("installed"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let title = format!(
                "{} {} ({}) {} .. {}: {}{}",
                p.invoke.f,
                p.invoke.index,
                if installed {
                    "installed"
                } else {
                    "not installed"
                },
                crate::checker::fmt_s(start),
                crate::checker::fmt_s(end),
                p.invoke.value,
                p.complete
                    .map(|c| format!(" -> {}", c.value))
                    .unwrap_or_default()
            );
            FaultInterval {
                kind: p.invoke.f.clone(),
                start_ns: start,
                end_ns: end.max(start),
                installed,
                title,
            }
        })
        .collect()
}

/// A colour for the `n`th series (regions, operation kinds, faults).
pub fn palette(n: usize) -> &'static str {
    const COLOURS: [&str; 10] = [
        "#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#2ca02c",
        "#d62728", "#ff7f0e",
    ];
    COLOURS[n % COLOURS.len()]
}

/// A light fill for a fault kind.
pub fn fault_colour(kind: &str) -> &'static str {
    match kind {
        "partition" => "#fde2e2",
        "kill" => "#e2e8fd",
        "pause" => "#fdf3d0",
        "clock" => "#e3f6e3",
        "loss" => "#f1e2fd",
        "delay" => "#d9f2f7",
        "health" => "#f7e6d9",
        _ => "#eeeeee",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn ticks_are_round_and_bounded() {
        let axis = TimeAxis::new(0.0, 800.0, 60_000_000_000);
        let ticks = axis.ticks();
        assert!(ticks.len() >= 5 && ticks.len() <= 13, "{ticks:?}");
        assert_eq!(ticks[1].1, "10s");
    }
}
