//! SVG charts of the results, written with plain string formatting: a
//! latency chart (percentile bars per contender) and a ratio chart (the
//! median over rounds of a paired ratio, with its range and IQR).

use std::fmt::Write;

/// The plot's width (right of the labels).
const PLOT_W: f64 = 440.0;
const ROW_H: f64 = 28.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 40.0;

/// One contender's latency percentiles, in µs.
pub struct LatRow {
    pub name: String,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
}

/// One contender's paired ratio over rounds.
pub struct RatioRow {
    pub name: String,
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let mag = 10f64.powf(max.log10().floor());
    let step = [0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 8.0)
        .unwrap_or(mag * 10.0);
    ((max / step).ceil() * step, step)
}

/// An x axis: where a value goes, and the ticks to draw.
struct Scale {
    label_w: f64,
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Scale {
    /// Linear from 0 to a nice maximum above `max`.
    fn linear(label_w: f64, max: f64) -> Scale {
        let (hi, step) = axis(max);
        let ticks = (0..=((hi / step).round() as usize))
            .map(|i| i as f64 * step)
            .collect();
        Scale {
            label_w,
            lo: 0.0,
            hi,
            log: false,
            ticks,
        }
    }

    /// Logarithmic over [min, max], ticks at 1, 2, 5 × 10^k.
    fn log(label_w: f64, min: f64, max: f64) -> Scale {
        let lo = 10f64.powf(min.max(0.1).log10().floor());
        let hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
        let mut ticks = Vec::new();
        let mut decade = lo;
        while decade < hi * 1.01 {
            for m in [1.0, 2.0, 5.0] {
                if decade * m <= hi * 1.01 {
                    ticks.push(decade * m);
                }
            }
            decade *= 10.0;
        }
        Scale {
            label_w,
            lo,
            hi,
            log: true,
            ticks,
        }
    }

    fn x(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v.max(0.0) - self.lo) / (self.hi - self.lo)
        };
        self.label_w + f.clamp(0.0, 1.0) * PLOT_W
    }
}

/// Room for the longest label (about 6.6 px a character at 12 px).
fn label_width<'a>(names: impl Iterator<Item = &'a str>) -> f64 {
    let longest = names.map(|n| n.chars().count()).max().unwrap_or(10);
    (longest as f64 * 6.6 + 20.0).max(120.0)
}

/// The frame: title, grid and axis labels.
fn frame(title: &str, unit: &str, rows: usize, scale: &Scale) -> String {
    let width = scale.label_w + PLOT_W + 60.0;
    let height = TOP + rows as f64 * ROW_H + BOTTOM;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="22" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let bottom = TOP + rows as f64 * ROW_H;
    for &v in &scale.ticks {
        let gx = scale.x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{bottom:.1}" stroke="#dddddd"/>"##,
            TOP - 6.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555555">{}</text>"##,
            bottom + 16.0,
            trim(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">{}</text>"##,
        scale.label_w + PLOT_W / 2.0,
        bottom + 34.0,
        escape(unit)
    );
    s
}

fn trim(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Percentile bars: a line from p10 to p99, a box from p25 to p75, a tick
/// at p50 (and p90 as a small mark).
pub fn latency(title: &str, rows: &[LatRow]) -> String {
    let max = rows.iter().map(|r| r.p99).fold(0.0, f64::max);
    let min = rows.iter().map(|r| r.p10).fold(f64::MAX, f64::min);
    let scale = Scale::log(label_width(rows.iter().map(|r| r.name.as_str())), min, max);
    let x = |v| scale.x(v);
    let label_w = scale.label_w;
    let unit = "µs, log scale (line p10–p99, box p25–p75, red bar p50, dot p90; labels p50 / p99)";
    let mut s = frame(title, unit, rows.len(), &scale);
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H + ROW_H / 2.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            label_w - 8.0,
            y + 4.0,
            escape(&r.name)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333333"/>"##,
            x(r.p10),
            x(r.p99)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="14" fill="#8fb8de" stroke="#2b5d8a"/>"##,
            x(r.p25),
            y - 7.0,
            (x(r.p75) - x(r.p25)).max(1.0)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#c0392b" stroke-width="2.5"/>"##,
            x(r.p50),
            y - 9.0,
            y + 9.0
        );
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{y:.1}" r="2.5" fill="#333333"/>"##,
            x(r.p90)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#555555" font-size="10">{:.1} / {:.1}</text>"##,
            x(r.p99) + 4.0,
            y + 4.0,
            r.p50,
            r.p99
        );
    }
    s + "</svg>\n"
}

/// Ratio bars: a bar to the median over rounds, the IQR as a dark band and
/// the range as a whisker; a dashed line at 1×.
pub fn ratios(title: &str, unit: &str, rows: &[RatioRow]) -> String {
    let max = rows
        .iter()
        .map(|r| r.max)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.05;
    let scale = Scale::linear(label_width(rows.iter().map(|r| r.name.as_str())), max);
    let x = |v| scale.x(v);
    let label_w = scale.label_w;
    let mut s = frame(title, unit, rows.len(), &scale);
    let bottom = TOP + rows.len() as f64 * ROW_H;
    let one = x(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{one:.1}" y1="{:.1}" x2="{one:.1}" y2="{bottom:.1}" stroke="#888888" stroke-dasharray="4 3"/>"##,
        TOP - 6.0
    );
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H + ROW_H / 2.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            label_w - 8.0,
            y + 4.0,
            escape(&r.name)
        );
        if !r.median.is_finite() {
            continue;
        }
        let _ = writeln!(
            s,
            r##"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="14" fill="#8fb8de"/>"##,
            y - 7.0,
            (x(r.median) - label_w).max(1.0)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#2b5d8a"/>"##,
            x(r.p25),
            y - 3.0,
            (x(r.p75) - x(r.p25)).max(1.0)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333333"/>"##,
            x(r.min),
            x(r.max)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#333333" font-size="11">{:.2}×</text>"##,
            x(r.max).max(x(r.median)) + 4.0,
            y + 4.0,
            r.median
        );
    }
    s + "</svg>\n"
}
