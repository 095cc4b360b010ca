//! Plots of training runs, each written as SVG and PNG: loss and accuracy curves, a
//! heatmap of per-layer gradient norms over training (log scale), and the standard
//! deviation of each layer's activations.
//!
//! Text is drawn with a bundled subset of DejaVu Sans (`assets/fonts`, through plotters'
//! `ab_glyph` feature), so plots need no system fonts, fontconfig or freetype.

use super::StepStats;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    anyhow::ensure!(ok, "the bundled plot font could not be loaded");
    Ok(())
}

/// One training run: a label and its statistics records (oldest first).
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    pub label: &'a str,
    pub stats: &'a [StepStats],
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot failed: {e:?}")
}

/// Renders a figure to `stem.svg` and `stem.png`. The figure is drawn twice, once per
/// backend, because plotters' backends are distinct types.
fn save_both(
    stem: &Path,
    size: (u32, u32),
    svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let (svg_path, png_path) = (stem.with_extension("svg"), stem.with_extension("png"));
    {
        let root = SVGBackend::new(&svg_path, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        svg(root.clone())?;
        root.present()
            .map_err(|e| anyhow!("writing '{}': {e:?}", svg_path.display()))?;
    }
    {
        let root = BitMapBackend::new(&png_path, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        png(root.clone())?;
        root.present()
            .map_err(|e| anyhow!("writing '{}': {e:?}", png_path.display()))?;
    }
    Ok(vec![svg_path, png_path])
}

/// Writes every figure for `runs` into `dir` (created if needed); returns the files.
pub fn write_all(dir: &Path, runs: &[Run]) -> Result<Vec<PathBuf>> {
    anyhow::ensure!(!runs.is_empty(), "nothing to plot: no runs");
    anyhow::ensure!(
        runs.iter().any(|r| !r.stats.is_empty()),
        "nothing to plot: no statistics were gathered (turn them on with a statistics interval)"
    );
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("creating plot directory '{}': {e}", dir.display()))?;
    let mut files = training_curves(&dir.join("training"), runs)?;
    files.extend(gradient_heatmap(&dir.join("grad_heatmap"), runs)?);
    files.extend(activation_std(&dir.join("activation_std"), runs)?);
    Ok(files)
}

/// Exponential moving average, restarting after non-finite values (which it skips).
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut avg: Option<f64> = None;
    for &(x, y) in points {
        if !y.is_finite() {
            avg = None;
            continue;
        }
        let a = avg.map_or(y, |a| a + alpha * (y - a));
        avg = Some(a);
        out.push((x, a));
    }
    out
}

/// A tick label for a log axis: plain decimals in the readable range, else powers of ten.
fn log_tick(v: &f64) -> String {
    if (0.01..10_000.0).contains(v) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

fn int_tick(v: &f64) -> String {
    format!("{}", v.round() as i64)
}

/// Earlier series are drawn thicker, so a later one lying exactly on top of an earlier
/// one (identical runs up to a divergence) leaves it visible.
fn stroke(i: usize, n: usize) -> u32 {
    2 + 2 * (n.saturating_sub(i + 1)).min(3) as u32 / 2
}

fn color(i: usize) -> RGBColor {
    // Tableau 10: distinct and readable on white.
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// Batch loss (log scale) and accuracy against the training step, smoothed.
pub fn training_curves(stem: &Path, runs: &[Run]) -> Result<Vec<PathBuf>> {
    let loss: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let p: Vec<(f64, f64)> = r
                .stats
                .iter()
                .map(|s| (s.step as f64, s.loss as f64))
                .collect();
            smooth(&p, 0.3)
        })
        .collect();
    let acc: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let p: Vec<(f64, f64)> = r
                .stats
                .iter()
                .filter_map(|s| s.accuracy.map(|a| (s.step as f64, a as f64)))
                .collect();
            smooth(&p, 0.3)
        })
        .collect();
    let size = (1400, 560);
    save_both(
        stem,
        size,
        |root| draw_training(root, runs, &loss, &acc),
        |root| draw_training(root, runs, &loss, &acc),
    )
}

fn draw_training<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Run],
    loss: &[Vec<(f64, f64)>],
    acc: &[Vec<(f64, f64)>],
) -> Result<()> {
    let steps = runs
        .iter()
        .flat_map(|r| r.stats.iter().map(|s| s.step as f64))
        .fold(1.0f64, f64::max);
    let (lo, hi) = loss
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0.0f64), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (lo, hi) = if lo.is_finite() && lo > 0.0 {
        (lo * 0.8, hi * 1.25)
    } else {
        (1e-3, 10.0)
    };
    let with_acc = acc.iter().any(|a| !a.is_empty());
    let panels = if with_acc {
        root.split_evenly((1, 2))
    } else {
        vec![root]
    };
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("training loss (batch, smoothed)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..steps, (lo..hi).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .x_label_formatter(&int_tick)
        .y_label_formatter(&log_tick)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    for (i, (run, pts)) in runs.iter().zip(loss).enumerate() {
        let (c, w) = (color(i), stroke(i, runs.len()));
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(w)))
            .map_err(draw_err)?
            .label(run.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    if with_acc {
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("training accuracy (batch, smoothed)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..steps, 0.0..1.0)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("accuracy")
            .x_label_formatter(&int_tick)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(draw_err)?;
        for (i, pts) in acc.iter().enumerate() {
            let style = color(i).stroke_width(stroke(i, acc.len()));
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(draw_err)?;
        }
    }
    Ok(())
}

/// log₁₀ of a gradient norm, `None` where there is none or it is not positive and finite.
fn log_norm(v: Option<f32>) -> Option<f64> {
    v.filter(|g| g.is_finite() && *g > 0.0)
        .map(|g| (g as f64).log10())
}

/// What a heatmap cell shows besides a colour of the scale.
const ZERO: RGBColor = RGBColor(0, 0, 0);
const NON_FINITE: RGBColor = RGBColor(150, 150, 150);
const NOT_TRAINED: RGBColor = RGBColor(228, 228, 228);

/// The colour of one heatmap cell: ‖∇W‖ on the viridis scale over log₁₀ `lo..hi`, an exact
/// zero (dead units) black, below the scale's darkest; NaN or ±inf (a diverged step) grey;
/// no gradient at all (a frozen layer) light grey. Non-finite cells must not pass for zero
/// or for a small norm: they are the ones a user looks for after a divergence.
pub fn heatmap_cell_color(norm: Option<f32>, (lo, hi): (f64, f64)) -> RGBColor {
    match norm {
        None => NOT_TRAINED,
        Some(g) if !g.is_finite() => NON_FINITE,
        Some(g) if g <= 0.0 => ZERO,
        Some(g) => ViridisRGB.get_color_normalized((g as f64).log10().clamp(lo, hi), lo, hi),
    }
}

/// Log₁₀ colour range of the heatmap, panel grid and figure size.
fn heatmap_layout(runs: &[Run]) -> ((f64, f64), (usize, usize), (u32, u32)) {
    let values = runs
        .iter()
        .flat_map(|r| r.stats.iter())
        .flat_map(|s| s.layers.iter().filter_map(|l| log_norm(l.weight_grad_norm)));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-1.0, 0.0)
    };
    let cols = if runs.len() > 1 { 2 } else { 1 };
    let rows = runs.len().div_ceil(cols);
    let size = (560 * cols as u32 + BAR_WIDTH, 300 * rows as u32 + 80);
    ((lo, hi), (rows, cols), size)
}

/// Width of the colour bar and legend at the right of the heatmap.
const BAR_WIDTH: u32 = 130;

/// One panel per run: training step across, layer up, colour log₁₀ ‖∇W‖, on one colour
/// scale for all runs so they compare.
pub fn gradient_heatmap(stem: &Path, runs: &[Run]) -> Result<Vec<PathBuf>> {
    let (range, grid, size) = heatmap_layout(runs);
    save_both(
        stem,
        size,
        |root| draw_heatmap(root, runs, range, grid),
        |root| draw_heatmap(root, runs, range, grid),
    )
}

/// The heatmap as [`gradient_heatmap`] draws it, rendered to RGB pixels in memory:
/// `(pixels, width, height)`, 3 bytes a pixel, rows top down.
pub fn gradient_heatmap_rgb(runs: &[Run]) -> Result<(Vec<u8>, u32, u32)> {
    ensure_font()?;
    let (range, grid, (w, h)) = heatmap_layout(runs);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw_heatmap(root.clone(), runs, range, grid)?;
        root.present().map_err(draw_err)?;
    }
    Ok((pixels, w, h))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Run],
    (lo, hi): (f64, f64),
    (rows, cols): (usize, usize),
) -> Result<()> {
    // The title spans the whole figure, colour bar included, so that it fits over a
    // single run's panel; what the colours mean is in the legend under the colour bar.
    let titled = root
        .titled(
            "gradient norm ‖∇W‖ per layer over training (log₁₀)",
            ("sans-serif", 22),
        )
        .map_err(draw_err)?;
    let (w, _) = titled.dim_in_pixel();
    let (main, bar) = titled.split_horizontally(w - BAR_WIDTH);
    let panels = main.split_evenly((rows, cols));
    for (run, panel) in runs.iter().zip(&panels) {
        let layers = run.stats.first().map_or(1, |s| s.layers.len());
        let steps: Vec<f64> = run.stats.iter().map(|s| s.step as f64).collect();
        let x_max = steps.last().copied().unwrap_or(1.0).max(1.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(run.label, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..x_max + 1.0, 0.0..layers as f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step")
            .y_desc("layer")
            .x_label_formatter(&int_tick)
            .y_label_formatter(&int_tick)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(draw_err)?;
        // Each record's cell reaches to the next record's step.
        let mut cells = Vec::new();
        for (i, s) in run.stats.iter().enumerate() {
            let x0 = steps[i] - 1.0;
            let x1 = steps.get(i + 1).map_or(steps[i], |n| n - 1.0).max(x0 + 1.0);
            for l in &s.layers {
                let fill = heatmap_cell_color(l.weight_grad_norm, (lo, hi)).filled();
                let y = l.layer as f64;
                cells.push(Rectangle::new([(x0, y), (x1, y + 1.0)], fill));
            }
        }
        chart.draw_series(cells).map_err(draw_err)?;
    }
    let legend = [
        (ZERO, "zero"),
        (NON_FINITE, "NaN or inf"),
        (NOT_TRAINED, "frozen"),
    ];
    let legend_height = 24 * legend.len() as u32 + 16;
    let mut chart = ChartBuilder::on(&bar)
        .margin_top(20)
        .margin_bottom(40 + legend_height)
        .margin_right(10)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("log₁₀ ‖∇W‖")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    let n = 100;
    chart
        .draw_series((0..n).map(|i| {
            let a = lo + (hi - lo) * i as f64 / n as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                ViridisRGB.get_color_normalized(a, lo, hi).filled(),
            )
        }))
        .map_err(draw_err)?;
    let (_, bar_h) = bar.dim_in_pixel();
    for (i, (c, label)) in legend.into_iter().enumerate() {
        let y = (bar_h - legend_height + 24 * i as u32) as i32;
        bar.draw(&Rectangle::new([(12, y), (28, y + 16)], c.filled()))
            .map_err(draw_err)?;
        bar.draw(&Rectangle::new([(12, y), (28, y + 16)], BLACK.mix(0.4)))
            .map_err(draw_err)?;
        bar.draw(&Text::new(label, (34, y + 1), ("sans-serif", 13)))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Standard deviation of each layer's output (log scale), at the first statistics record
/// and at the last, one line per run.
pub fn activation_std(stem: &Path, runs: &[Run]) -> Result<Vec<PathBuf>> {
    let pick = |s: Option<&StepStats>| -> Vec<(f64, f64)> {
        s.map(|s| {
            s.layers
                .iter()
                .filter_map(|l| {
                    l.act_std
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .map(|v| (l.layer as f64, v as f64))
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let first: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| pick(r.stats.first())).collect();
    let last: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| pick(r.stats.last())).collect();
    let size = (1400, 560);
    save_both(
        stem,
        size,
        |root| draw_std(root, runs, &first, &last),
        |root| draw_std(root, runs, &first, &last),
    )
}

fn draw_std<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Run],
    first: &[Vec<(f64, f64)>],
    last: &[Vec<(f64, f64)>],
) -> Result<()> {
    let all = first.iter().chain(last).flatten();
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    // Headroom above the data for the legend.
    let (lo, hi) = if lo.is_finite() {
        (lo * 0.5, hi * 20.0)
    } else {
        (1e-3, 10.0)
    };
    let layers = runs
        .iter()
        .filter_map(|r| r.stats.first().map(|s| s.layers.len()))
        .max()
        .unwrap_or(1) as f64;
    let panels = root.split_evenly((1, 2));
    for (k, (data, title)) in [(first, "at the first step"), (last, "at the last record")]
        .into_iter()
        .enumerate()
    {
        let mut chart = ChartBuilder::on(&panels[k])
            .caption(
                format!("activation std per layer, {title}"),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..layers - 0.5, (lo..hi).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("std of the layer's output")
            .x_label_formatter(&int_tick)
            .y_label_formatter(&log_tick)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(draw_err)?;
        for (i, (run, pts)) in runs.iter().zip(data).enumerate() {
            let (c, w) = (color(i), stroke(i, runs.len()));
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(w)))
                .map_err(draw_err)?
                .label(run.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, w + 1, c.filled())))
                .map_err(draw_err)?;
        }
        if k == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(draw_err)?;
        }
    }
    Ok(())
}
