//! A training run as one self-contained HTML file: the model and device, loss and
//! accuracy curves, per-layer gradient-norm and activation heatmaps, the verdicts with
//! their evidence, the measured remedies, and the non-finite stop.
//!
//! Everything is inline (CSS and SVG, no scripts, fonts, images or links), so the file
//! can be mailed, attached to an issue or opened offline. Charts are downsampled to a
//! fixed number of columns and points, so the size depends on the layers more than on the
//! steps: a 100-layer, 10,000-step run stays a few hundred kB. Non-finite values are drawn
//! in red, never as zero or left out silently.

mod charts;
mod experiment;
use super::detect::{detect_run, layer_list, DetectorConfig, Warning};
use super::experiment::{Outcome, Verdict as ExperimentVerdict};
use super::remedy::TrialReport;
use super::{LayerStats, NonFiniteError, StepProgress, StepStats, TrainObserver};
use crate::model::{EpochReport, MlpSpec};
use anyhow::Result;
use charts::*;
pub use experiment::ExperimentReport;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
use plotters::style::RGBColor;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Heatmap columns at most: beyond a few hundred, cells are narrower than a screen pixel
/// and only grow the file.
const MAX_COLUMNS: usize = 200;
/// Line chart bins at most; each keeps its minimum and maximum so spikes survive.
const MAX_BINS: usize = 400;
/// Colour levels of the heatmaps: cells of one level share one SVG path.
const LEVELS: usize = 32;

const NON_FINITE: &str = "#d62728";
const ZERO: &str = "#000000";
const ABSENT: &str = "#e4e4e4";

/// What the report shows. Fill it in as the run goes and write it with
/// [`Report::write`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// "train", "diagnose".
    pub title: String,
    pub command: String,
    pub device: String,
    pub model: String,
    /// Epochs `fit` was asked for, when known.
    pub epochs_planned: Option<usize>,
    pub epochs: Vec<EpochReport>,
    pub stats: Vec<StepStats>,
    pub warnings: Vec<Warning>,
    /// Detectors' window, for the healthy verdict's wording.
    pub window: usize,
    pub stopped: Option<NonFiniteError>,
    pub trials: Option<TrialReport>,
    /// Training (and trials) are over; otherwise the report is a snapshot after an epoch.
    pub finished: bool,
}

/// The model in one line: sizes, activation, init, normalization, optimizer.
pub fn model_summary(spec: &MlpSpec) -> String {
    let hidden = match spec.hidden.as_slice() {
        [] => "no hidden layers".to_string(),
        [first, rest @ ..] if rest.iter().all(|h| h == first) => {
            format!("{} hidden × {first}", spec.hidden.len())
        }
        h => format!(
            "hidden {}",
            h.iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join("-")
        ),
    };
    let mut extras = vec![
        spec.activation_summary(),
        format!("init {}", spec.init),
        format!("{:?}", spec.loss),
        spec.optimizer.to_string(),
    ];
    if spec.has_batch_norm() {
        extras.push("batch norm".into());
    }
    if let Some(k) = spec.residual_every {
        extras.push(format!("skip every {k}"));
    }
    if let Some(c) = spec.clip {
        extras.push(format!("clip {c:?}"));
    }
    if spec.frozen_layers > 0 {
        extras.push(format!("layers 0..{} frozen", spec.frozen_layers));
    }
    format!(
        "{} → {hidden} → {} ({} linear layers; {})",
        spec.input,
        spec.output,
        spec.num_layers(),
        extras.join(", ")
    )
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A number for a table cell: non-finite values in words and marked.
fn num(v: Option<f32>) -> String {
    match v {
        None => "–".to_string(),
        Some(v) if v.is_nan() => "<span class=bad>NaN</span>".to_string(),
        Some(v) if v.is_infinite() => format!(
            "<span class=bad>{}inf</span>",
            if v < 0.0 { "-" } else { "" }
        ),
        Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e4) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn pct(v: Option<f32>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
        other => num(other),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of now (the civil-from-days algorithm of H. Hinnant; std has
/// no calendar).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

const CSS: &str = "
:root{color-scheme:light}
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1040px;padding:12px 16px;color:#1b1b1b;background:#fff}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.status{display:inline-block;padding:2px 8px;border-radius:4px;background:#e8f0fe}
.status.bad,.stop{background:#fdecea}.status.ok{background:#e6f4ea}
.stop{border-left:4px solid #d62728;padding:8px 12px;margin:8px 0}
.bad{color:#b00020;font-weight:600}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.text{text-align:left}
tr.best{background:#e6f4ea}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
code{font-size:.9em;overflow-wrap:anywhere}
figure{margin:10px 0}figcaption{font-size:.85em;color:#555}
svg{max-width:100%;height:auto;display:block}
svg text{font-family:system-ui,sans-serif;font-size:12px;fill:#333}
ul.verdicts li{margin:.4em 0}
@media (max-width:600px){body{font-size:14px;padding:8px}dl{grid-template-columns:1fr}dd{margin-bottom:4px}}
";

impl Report {
    /// The whole page.
    pub fn html(&self) -> String {
        let mut h = page_start(&self.title);
        let _ = writeln!(h, "<p>{}</p>", self.status_html());
        h.push_str("<dl>");
        let mut row = |k: &str, v: String| {
            let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
        };
        row("written", utc_now());
        if !self.command.is_empty() {
            row("command", format!("<code>{}</code>", esc(&self.command)));
        }
        row("device", esc(&self.device));
        row("model", esc(&self.model));
        row(
            "epochs",
            match self.epochs_planned {
                Some(p) => format!("{} of {p}", self.epochs.len()),
                None => self.epochs.len().to_string(),
            },
        );
        row(
            "statistics",
            match (self.stats.first(), self.stats.last()) {
                (Some(a), Some(b)) => {
                    format!("{} records, steps {}–{}", self.stats.len(), a.step, b.step)
                }
                _ => "none gathered".to_string(),
            },
        );
        h.push_str("</dl>\n");
        if let Some(nf) = &self.stopped {
            h.push_str(&stop_html(nf));
        }
        self.verdicts_html(&mut h);
        if let Some(t) = &self.trials {
            h.push_str(&trials_html(t));
        }
        h.push_str("<h2>Loss and accuracy</h2>\n");
        h.push_str(&self.curves_html());
        h.push_str("<h2>Gradients</h2>\n");
        h.push_str(&heatmap(
            "‖∇W‖ per layer (log₁₀)",
            &self.stats,
            grad_value,
            "gradient-heatmap",
            None,
        ));
        h.push_str(&heatmap(
            "Update/weight ratio ‖ΔW‖/‖W‖ per layer (log₁₀)",
            &self.stats,
            |l| l.update_ratio,
            "update-heatmap",
            None,
        ));
        h.push_str("<h2>Activations</h2>\n");
        h.push_str(&heatmap(
            "Activation standard deviation per layer (log₁₀)",
            &self.stats,
            act_value,
            "activation-heatmap",
            None,
        ));
        if let Some(last) = self.stats.last() {
            h.push_str(&layer_table(last));
        }
        h.push_str("</body></html>\n");
        h
    }

    fn status_html(&self) -> String {
        let (class, text) = if let Some(nf) = &self.stopped {
            (
                "bad",
                format!("stopped: non-finite values at step {}", nf.step),
            )
        } else if !self.finished {
            (
                "",
                format!(
                    "in progress: written after epoch {}",
                    self.epochs.last().map_or(0, |e| e.epoch)
                ),
            )
        } else if self.epochs_planned.is_some_and(|p| self.epochs.len() < p) {
            (
                "bad",
                format!(
                    "stopped after {} of {} epochs (the command's error says why)",
                    self.epochs.len(),
                    self.epochs_planned.unwrap_or_default()
                ),
            )
        } else if self.warnings.is_empty() {
            ("ok", "finished: healthy".to_string())
        } else {
            (
                "bad",
                format!(
                    "finished: {} problem{}",
                    self.warnings.len(),
                    if self.warnings.len() == 1 { "" } else { "s" }
                ),
            )
        };
        format!("<span class=\"status {class}\">{}</span>", esc(&text))
    }

    fn verdicts_html(&self, h: &mut String) {
        h.push_str("<h2>Verdicts</h2>\n");
        if self.warnings.is_empty() {
            if self.stopped.is_none() && !self.stats.is_empty() {
                let _ = writeln!(
                    h,
                    "<p>Healthy: the loss fell, no loss spikes, no vanishing or exploding \
                     gradients, dead or saturated units over the last {} statistics records.</p>",
                    self.window.min(self.stats.len())
                );
            } else if self.stats.is_empty() {
                h.push_str("<p>No statistics records yet: nothing to judge.</p>\n");
            } else {
                h.push_str("<p>No detector fired before the stop.</p>\n");
            }
            return;
        }
        h.push_str("<ul class=verdicts>\n");
        for w in &self.warnings {
            let _ = write!(h, "<li><b>{}</b>", esc(w.kind.name()));
            if !w.layers.is_empty() {
                let _ = write!(h, " in {}", esc(&layer_list(&w.layers)));
            }
            let _ = write!(h, ": {}", esc(&w.evidence));
            if !w.remedies.is_empty() && self.trials.is_none() {
                h.push_str("<br>suggestions (not measured):<ol>");
                for r in &w.remedies {
                    let _ = write!(h, "<li>{}</li>", esc(r));
                }
                h.push_str("</ol>");
            }
            h.push_str("</li>\n");
        }
        h.push_str("</ul>\n");
    }

    fn curves_html(&self) -> String {
        let mut h = String::new();
        let epoch = |f: &dyn Fn(&EpochReport) -> Option<f32>| -> Vec<(f64, f32)> {
            self.epochs
                .iter()
                .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
                .collect()
        };
        let loss = [
            Series {
                name: "train loss",
                color: "#1f77b4",
                points: epoch(&|e| Some(e.train.loss)),
            },
            Series {
                name: "validation loss",
                color: "#ff7f0e",
                points: epoch(&|e| e.valid.map(|v| v.loss)),
            },
        ];
        h.push_str(&line_chart("Loss per epoch", "epoch", &loss, "loss-chart"));
        let acc = [
            Series {
                name: "train accuracy",
                color: "#1f77b4",
                points: epoch(&|e| e.train.accuracy),
            },
            Series {
                name: "validation accuracy",
                color: "#ff7f0e",
                points: epoch(&|e| e.valid.and_then(|v| v.accuracy)),
            },
        ];
        if acc.iter().any(|s| !s.points.is_empty()) {
            h.push_str(&line_chart(
                "Accuracy per epoch",
                "epoch",
                &acc,
                "accuracy-chart",
            ));
        }
        let batch = [
            Series {
                name: "batch loss",
                color: "#1f77b4",
                points: self.stats.iter().map(|s| (s.step as f64, s.loss)).collect(),
            },
            Series {
                name: "total ‖∇‖",
                color: "#2ca02c",
                points: self
                    .stats
                    .iter()
                    .map(|s| (s.step as f64, s.total_grad_norm()))
                    .collect(),
            },
        ];
        h.push_str(&line_chart(
            "Batch loss and total gradient norm at statistics steps",
            "training step",
            &batch,
            "batch-chart",
        ));
        h
    }

    /// Writes the page to `path` atomically: a reader (or a crash) sees the previous
    /// version or this one, never half of one.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.html().as_bytes())
    }
}

fn stop_html(nf: &NonFiniteError) -> String {
    let mut h = String::from("<h2>Non-finite stop</h2>\n<div class=stop><dl>");
    let mut row = |k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    row(
        "step",
        match nf.epoch {
            Some(e) => format!("{} (epoch {e})", nf.step),
            None => nf.step.to_string(),
        },
    );
    row("op", esc(&nf.op));
    row("tensor", format!("<code>{}</code>", esc(&nf.tensor)));
    if let Some(p) = &nf.input_peak {
        row(
            "input peak",
            format!(
                "<code>{}</code> held finite values up to {:.3e} in magnitude (f32 overflows past 3.4e38)",
                esc(&p.tensor),
                p.magnitude
            ),
        );
    }
    if !nf.also.is_empty() {
        row(
            "also non-finite",
            nf.also
                .iter()
                .map(|t| format!("<code>{}</code>", esc(t)))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    row("stopped after", format!("step {}", nf.stopped_after));
    h.push_str("</dl></div>\n");
    h
}

fn trials_html(r: &TrialReport) -> String {
    let mut h = format!(
        "<h2>Remedy trials</h2>\n<p>The unchanged model and {} remedies, {} steps each from the \
         same seed on the same batches, ranked by {}; {:.1} s.</p>\n<div class=scroll><table>\
         <tr><th>remedy</th><th>flags</th><th>steps</th><th>‖∇W₀‖/‖∇Wₗ‖</th><th>loss start</th>\
         <th>loss end</th><th>val loss</th><th>val acc</th><th>verdict</th><th>s</th></tr>\n",
        r.trials.len().saturating_sub(1),
        r.steps,
        esc(r.measure.name()),
        r.seconds
    );
    for (i, t) in r.trials.iter().enumerate() {
        let verdict = match (&t.diverged, &t.error) {
            (Some(d), _) => format!("<span class=bad>NaN at step {}</span>", d.step),
            (_, Some(e)) => format!("<span class=bad>failed: {}</span>", esc(e)),
            _ => esc(t.verdict.name()),
        };
        let _ = writeln!(
            h,
            "<tr{}><td>{}</td><td class=text><code>{}</code></td><td>{}{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=text>{verdict}</td>\
             <td>{:.1}</td></tr>",
            if r.recommended == Some(i) {
                " class=best"
            } else {
                ""
            },
            esc(&t.label),
            esc(&t.flags),
            t.steps,
            if t.cut_short { " (cut short)" } else { "" },
            num(t.grad_ratio),
            num(t.loss_start),
            num(t.loss_end),
            num(t.val_loss),
            pct(t.val_accuracy),
            t.seconds
        );
    }
    let _ = writeln!(
        h,
        "</table></div>\n<p><b>Recommendation:</b> {}</p>",
        esc(&r.recommendation())
    );
    h
}

fn layer_table(s: &StepStats) -> String {
    let mut h = format!(
        "<figure><figcaption>Per-layer statistics at step {} (batch loss {})</figcaption>\
         <div class=scroll><table><tr><th>layer</th><th>units</th><th>act mean</th>\
         <th>act std</th><th>dead</th><th>saturated</th><th>‖∇W‖</th><th>‖∇b‖</th>\
         <th>‖ΔW‖/‖W‖</th><th>non-finite</th></tr>\n",
        s.step,
        num(Some(s.loss))
    );
    for l in &s.layers {
        let nonfinite = l.act_nonfinite + l.grad_nonfinite;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            l.layer,
            l.units,
            num(l.act_mean),
            num(l.act_std),
            pct(l.dead),
            pct(l.saturated),
            num(l.weight_grad_norm),
            num(l.bias_grad_norm),
            num(l.update_ratio),
            if nonfinite > 0 {
                format!("<span class=bad>{nonfinite}</span>")
            } else {
                "0".to_string()
            }
        );
    }
    h.push_str("</table></div></figure>\n");
    h
}

fn page_start(title: &str) -> String {
    let title = format!("steadygrad {title}");
    format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(&title)
    )
}

/// Shared between [`ReportObserver`] (which fills it during `fit`) and whoever writes the
/// final version after `fit` returns.
pub type SharedReport = Rc<RefCell<Report>>;

/// Collects a run's epochs and statistics records into a [`Report`] and rewrites the file
/// after every epoch, so a run that stops (a non-finite value, a crash, Ctrl-C) leaves the
/// report of its last complete epoch.
pub struct ReportObserver {
    path: PathBuf,
    report: SharedReport,
    spec: MlpSpec,
    cfg: DetectorConfig,
}

impl ReportObserver {
    pub fn new(
        path: &Path,
        report: SharedReport,
        spec: &MlpSpec,
        cfg: DetectorConfig,
    ) -> ReportObserver {
        report.borrow_mut().window = cfg.window;
        ReportObserver {
            path: path.to_path_buf(),
            report,
            spec: spec.clone(),
            cfg,
        }
    }
}

impl TrainObserver for ReportObserver {
    fn on_step(&mut self, p: &StepProgress) -> Result<()> {
        let mut r = self.report.borrow_mut();
        if r.epochs_planned.is_none() {
            // fit's epochs count this call's; a resumed run has more before them.
            r.epochs_planned = Some(p.epochs + r.epochs.len());
        }
        Ok(())
    }

    fn on_stats(&mut self, s: &StepStats) -> Result<()> {
        self.report.borrow_mut().stats.push(s.clone());
        Ok(())
    }

    fn on_epoch(&mut self, e: &EpochReport) -> Result<()> {
        let mut r = self.report.borrow_mut();
        r.epochs.push(e.clone());
        r.warnings = detect_run(&self.spec, &r.stats, &r.epochs, &self.cfg);
        r.write(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bin_with_a_non_finite_value_is_non_finite() {
        assert!(cell([Some(1.0), Some(f32::NAN), Some(2.0)].into_iter()) == Cell::NonFinite);
        assert!(cell([Some(f32::INFINITY)].into_iter()) == Cell::NonFinite);
        assert!(cell([None, None].into_iter()) == Cell::Absent);
        assert!(cell([Some(0.0), None].into_iter()) == Cell::Zero);
        assert!(cell([Some(10.0), Some(1000.0)].into_iter()) == Cell::Log(2.0));
    }

    #[test]
    fn downsampling_keeps_spikes_and_non_finite_points() {
        let mut points: Vec<(f64, f32)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        points[5_000].1 = 100.0;
        points[7_000].1 = f32::NAN;
        let d = downsample(&points);
        assert!(d.len() <= 3 * MAX_BINS, "{}", d.len());
        assert!(d.iter().any(|p| p.1 == 100.0));
        assert!(d.iter().any(|p| p.1.is_nan() && p.0 == 7_000.0));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t[0] == 0.0 && (t[5] - 1.0).abs() < 1e-9, "{t:?}");
        let t = ticks(3.0, 97.0);
        assert!(
            t.len() >= 3 && t.iter().all(|v| (3.0..=97.0).contains(v)),
            "{t:?}"
        );
    }
}
