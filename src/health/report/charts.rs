//! The report's inline SVG charts: line charts with downsampling that keeps each bin's
//! extremes, and per-layer heatmaps over the steps with non-finite cells marked.

use super::*;

pub(super) struct Series<'a> {
    pub(super) name: &'a str,
    pub(super) color: &'a str,
    pub(super) points: Vec<(f64, f32)>,
}

/// At most `2 * MAX_BINS` points: each bin of consecutive points keeps its lowest and
/// highest finite value, in step order, and any non-finite point as NaN.
pub(super) fn downsample(points: &[(f64, f32)]) -> Vec<(f64, f32)> {
    if points.len() <= 2 * MAX_BINS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_BINS);
    let mut out = Vec::with_capacity(2 * MAX_BINS + 1);
    for bin in points.chunks(per) {
        let finite = bin.iter().filter(|p| p.1.is_finite());
        let lo = finite.clone().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = finite.max_by(|a, b| a.1.total_cmp(&b.1));
        let mut keep: Vec<(f64, f32)> = lo.into_iter().chain(hi).copied().collect();
        keep.sort_by(|a, b| a.0.total_cmp(&b.0));
        keep.dedup_by(|a, b| a.0 == b.0);
        out.extend(keep);
        if let Some(bad) = bin.iter().find(|p| !p.1.is_finite()) {
            out.push((bad.0, f32::NAN));
        }
    }
    out
}

/// Up to about six round values covering `lo..=hi`.
pub(super) fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 12 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

pub(super) fn tick_label(v: f64, log: bool) -> String {
    if log {
        return format!("1e{}", v.round() as i64);
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub(super) const W: f64 = 680.0;
pub(super) const H: f64 = 280.0;
pub(super) const LEFT: f64 = 62.0;
pub(super) const RIGHT: f64 = 16.0;
pub(super) const TOP: f64 = 30.0;
pub(super) const BOTTOM: f64 = 62.0;

/// A line chart of `series` as inline SVG. The y axis turns logarithmic when the finite
/// positive values span more than three decades; non-finite points are marked with red
/// crosses along the top edge and break the line.
pub(super) fn line_chart(title: &str, x_label: &str, series: &[Series], id: &str) -> String {
    let series: Vec<(&Series, Vec<(f64, f32)>)> = series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| (s, downsample(&s.points)))
        .collect();
    let mut svg = format!(
        "<figure id={id}><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=img aria-label=\"{t}\"><text x=\"{LEFT}\" y=\"18\" \
         style=\"font-weight:600\">{t}</text>",
        t = esc(title)
    );
    let finite = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|p| p.1.is_finite())
    };
    if finite().next().is_none() {
        let any = series.iter().any(|(_, p)| !p.is_empty());
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">{}</text></svg></figure>",
            W / 2.0 - 80.0,
            H / 2.0,
            if any {
                "no finite values"
            } else {
                "no data yet"
            }
        );
        return svg;
    }
    let (xlo, xhi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (ylo, yhi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1 as f64), b.max(p.1 as f64))
    });
    let log = ylo > 0.0 && yhi / ylo > 1e3;
    let ty = |v: f64| if log { v.log10() } else { v };
    let (mut ylo, mut yhi) = (ty(ylo), ty(yhi));
    if log {
        (ylo, yhi) = (ylo.floor(), yhi.ceil());
    }
    if yhi - ylo < 1e-12 {
        (ylo, yhi) = (ylo - 0.5, yhi + 0.5);
    } else if !log {
        let pad = 0.04 * (yhi - ylo);
        (ylo, yhi) = (
            if ylo >= 0.0 {
                (ylo - pad).max(0.0)
            } else {
                ylo - pad
            },
            yhi + pad,
        );
    }
    let (xlo, xhi) = if xhi > xlo {
        (xlo, xhi)
    } else {
        (xlo - 1.0, xhi + 1.0)
    };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - xlo) / (xhi - xlo) * pw;
    let sy = |y: f64| TOP + ph - (ty(y) - ylo) / (yhi - ylo) * ph;
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#bbb\"/>"
    );
    for t in ticks(ylo, yhi) {
        let y = TOP + ph - (t - ylo) / (yhi - ylo) * ph;
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=end>{}</text>",
            LEFT + pw,
            LEFT - 4.0,
            y + 4.0,
            tick_label(t, log)
        );
    }
    // Epochs and steps are whole numbers: no tick between them.
    for t in ticks(xlo, xhi).into_iter().filter(|t| t.fract() == 0.0) {
        let x = sx(t);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=middle>{}</text>",
            TOP + ph,
            TOP + ph + 15.0,
            tick_label(t, false)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=middle>{}</text>",
        LEFT + pw / 2.0,
        TOP + ph + 32.0,
        esc(x_label)
    );
    let mut legend_x = LEFT;
    let mut any_bad = false;
    for (s, points) in &series {
        let mut d = String::new();
        let mut pen_down = false;
        let mut bad = String::new();
        for &(x, y) in points {
            if y.is_finite() && !(log && y <= 0.0) {
                let _ = write!(
                    d,
                    "{}{:.1} {:.1}",
                    if pen_down { "L" } else { "M" },
                    sx(x),
                    sy(y as f64)
                );
                pen_down = true;
            } else {
                pen_down = false;
                if !y.is_finite() {
                    let (cx, cy) = (sx(x), TOP + 6.0);
                    let _ = write!(bad, "M{:.1} {:.1}l8 8m0-8l-8 8", cx - 4.0, cy - 4.0);
                }
            }
        }
        // A lone point draws no line; a dot shows it.
        if !d.contains('L') {
            for &(x, y) in points.iter().filter(|p| p.1.is_finite()) {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                    sx(x),
                    sy(y as f64),
                    s.color
                );
            }
        }
        let _ = write!(
            svg,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"/>",
            s.color
        );
        if !bad.is_empty() {
            any_bad = true;
            let _ = write!(
                svg,
                "<path d=\"{bad}\" stroke=\"{NON_FINITE}\" stroke-width=\"2\"/>"
            );
        }
        let ly = H - 10.0;
        let _ = write!(
            svg,
            "<rect x=\"{legend_x:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\">{}</text>",
            ly - 6.0,
            s.color,
            legend_x + 18.0,
            esc(s.name)
        );
        legend_x += 40.0 + 7.0 * s.name.chars().count() as f64;
    }
    if any_bad {
        let _ = write!(
            svg,
            "<text x=\"{legend_x:.1}\" y=\"{:.1}\" style=\"fill:{NON_FINITE}\">× non-finite</text>",
            H - 10.0
        );
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// One heatmap cell over a bin of records: non-finite if any record was (the step a user
/// looks for must not average away), absent if none had a value, else the geometric mean
/// (the scale is logarithmic).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Cell {
    Absent,
    NonFinite,
    Zero,
    Log(f64),
}

pub(super) fn cell(values: impl Iterator<Item = Option<f32>>) -> Cell {
    let (mut n, mut sum, mut zeros, mut any) = (0usize, 0.0f64, 0usize, false);
    for v in values.flatten() {
        any = true;
        if !v.is_finite() {
            return Cell::NonFinite;
        }
        if v <= 0.0 {
            zeros += 1;
        } else {
            n += 1;
            sum += (v as f64).log10();
        }
    }
    match (any, n) {
        (false, _) => Cell::Absent,
        (true, 0) if zeros > 0 => Cell::Zero,
        (true, _) => Cell::Log(sum / n as f64),
    }
}

pub(super) fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// A layers × steps heatmap of `value` as inline SVG: training step across, layer up,
/// colour log₁₀ of the value on the viridis scale, exact zeros black, non-finite red,
/// no value (a frozen layer, the output layer's activation statistics) light grey.
/// `range` fixes the log₁₀ colour range (to compare several heatmaps); by default it spans
/// the values shown.
pub(super) fn heatmap(
    title: &str,
    stats: &[StepStats],
    value: impl Fn(&LayerStats) -> Option<f32>,
    id: &str,
    range: Option<(f64, f64)>,
) -> String {
    let layers = stats.iter().map(|s| s.layers.len()).max().unwrap_or(0);
    let hh = (H + 20.0).max(TOP + BOTTOM + 2.0 * layers.min(200) as f64);
    let mut svg = format!(
        "<figure id={id}><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{hh}\" \
         viewBox=\"0 0 {W} {hh}\" role=img aria-label=\"{t}\"><text x=\"{LEFT}\" y=\"18\" \
         style=\"font-weight:600\">{t}</text>",
        t = esc(title)
    );
    if stats.is_empty() || layers == 0 {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">no statistics records yet</text></svg></figure>",
            W / 2.0 - 80.0,
            hh / 2.0
        );
        return svg;
    }
    let cols = stats.len().min(MAX_COLUMNS);
    let per = stats.len().div_ceil(cols);
    let bins: Vec<&[StepStats]> = stats.chunks(per).collect();
    let cols = bins.len();
    let grid: Vec<Vec<Cell>> = bins
        .iter()
        .map(|bin| {
            (0..layers)
                .map(|l| cell(bin.iter().map(|s| s.layers.get(l).and_then(&value))))
                .collect()
        })
        .collect();
    let logs = grid.iter().flatten().filter_map(|c| match c {
        Cell::Log(v) => Some(*v),
        _ => None,
    });
    let (lo, hi) = range.unwrap_or_else(|| log_range(logs));
    // Cells of one colour become one path of unit squares in a grid-sized viewBox, and
    // runs of equal cells along a layer one rectangle: the file grows with the colour
    // changes, not with the cells.
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    let color = |c: Cell| -> String {
        match c {
            Cell::Absent => ABSENT.to_string(),
            Cell::NonFinite => NON_FINITE.to_string(),
            Cell::Zero => ZERO.to_string(),
            Cell::Log(v) => {
                let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
                let q = (t * (LEVELS - 1) as f64).round() / (LEVELS - 1) as f64;
                hex(ViridisRGB.get_color_normalized(q, 0.0, 1.0))
            }
        }
    };
    for l in 0..layers {
        let y = layers - 1 - l;
        let row: Vec<String> = grid.iter().map(|column| color(column[l])).collect();
        let mut c = 0;
        while c < cols {
            let fill = row[c].clone();
            let mut end = c + 1;
            while end < cols && row[end] == fill {
                end += 1;
            }
            let _ = write!(
                paths.entry(fill).or_default(),
                "M{c} {y}h{}v1h-{}z",
                end - c,
                end - c
            );
            c = end;
        }
    }
    let bar = 70.0;
    let (pw, ph) = (W - LEFT - RIGHT - bar, hh - TOP - BOTTOM);
    let _ = write!(
        svg,
        "<svg x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" viewBox=\"0 0 {cols} {layers}\" \
         preserveAspectRatio=\"none\" shape-rendering=\"crispEdges\">"
    );
    for (fill, d) in &paths {
        let _ = write!(svg, "<path fill=\"{fill}\" d=\"{d}\"/>");
    }
    svg.push_str("</svg>");
    // Layer axis: the first, last and a few between.
    let layer_ticks: Vec<usize> = if layers <= 8 {
        (0..layers).collect()
    } else {
        let mut t: Vec<usize> = (0..5).map(|i| i * (layers - 1) / 4).collect();
        t.dedup();
        t
    };
    for l in layer_ticks {
        let y = TOP + ph - (l as f64 + 0.5) / layers as f64 * ph;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=end>{l}</text>",
            LEFT - 4.0,
            y + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=middle>layer</text>",
        TOP + ph / 2.0
    );
    let first = stats[0].step;
    let last = stats[stats.len() - 1].step;
    for (i, (step, anchor)) in [(first, "start"), (last, "end")].iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor={anchor}>{step}</text>",
            LEFT + i as f64 * pw,
            TOP + ph + 15.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=middle>training step ({} records{})</text>",
        LEFT + pw / 2.0,
        TOP + ph + 32.0,
        stats.len(),
        if per > 1 {
            format!(", {per} per column")
        } else {
            String::new()
        }
    );
    // The colour bar, then swatches for the cells that are not on it.
    let bx = W - RIGHT - bar + 12.0;
    let steps = 8;
    for i in 0..steps {
        let t = 1.0 - i as f64 / (steps - 1) as f64;
        let _ = write!(
            svg,
            "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"14\" height=\"{:.1}\" fill=\"{}\"/>",
            TOP + i as f64 * 12.0,
            12.0,
            hex(ViridisRGB.get_color_normalized(t, 0.0, 1.0))
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\">1e{}</text><text x=\"{:.1}\" y=\"{:.1}\">1e{}</text>",
        bx + 18.0,
        TOP + 10.0,
        hi as i64,
        bx + 18.0,
        TOP + steps as f64 * 12.0,
        lo as i64
    );
    for (i, (fill, label)) in [(NON_FINITE, "NaN/inf"), (ZERO, "0"), (ABSENT, "none")]
        .iter()
        .enumerate()
    {
        let y = TOP + steps as f64 * 12.0 + 14.0 + i as f64 * 16.0;
        let _ = write!(
            svg,
            "<rect x=\"{bx:.1}\" y=\"{y:.1}\" width=\"14\" height=\"12\" fill=\"{fill}\" stroke=\"#999\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            bx + 18.0,
            y + 10.0
        );
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// Whole decades around the values, one at least; `(-1, 0)` without any.
pub(super) fn log_range(logs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = logs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-1.0, 0.0)
    }
}

/// ‖∇W‖ for the heatmap. The norm leaves non-finite elements out; the cell must not.
pub(super) fn grad_value(l: &LayerStats) -> Option<f32> {
    l.weight_grad_norm
        .map(|g| if l.grad_nonfinite > 0 { f32::NAN } else { g })
}

/// The activation std for the heatmap, non-finite when the layer's output held NaN or
/// ±inf (which the std leaves out).
pub(super) fn act_value(l: &LayerStats) -> Option<f32> {
    l.act_std
        .map(|v| if l.act_nonfinite > 0 { f32::NAN } else { v })
}
