//! How trials are judged against the unchanged model, ranked and printed.

use super::Change;
use crate::health::NonFiniteError;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// How the trials run and how they are judged.
#[derive(Clone, Debug, Serialize)]
pub struct TrialOptions {
    /// Training steps (batches) per trial.
    pub steps: usize,
    pub batch_size: usize,
    /// The shuffle seed of [`FitOptions`]: every trial sees the same batches.
    pub shuffle_seed: u64,
    /// Statistics every this many steps, for the gradient ratio (at least 1).
    pub stats_every: usize,
    /// Wall-clock budget for all trials together. Each trial gets an equal share of what
    /// is left when it starts; one that runs out stops early and is marked cut short.
    #[serde(serialize_with = "seconds")]
    pub budget: Duration,
    /// Validation accuracy (0..1) a remedy must gain over the baseline to count as better.
    pub min_accuracy_gain: f32,
    /// Fraction of the baseline's loss a remedy must take off to count as better.
    pub min_loss_gain: f32,
    /// Fewest steps a comparison is judged on: when the budget cuts the baseline (and so
    /// every trial) shorter than this, or than `steps` if that is lower, nothing is
    /// recommended. A step or two mostly measures the initial weights.
    pub min_steps: usize,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for TrialOptions {
    fn default() -> Self {
        TrialOptions {
            steps: 135,
            batch_size: 32,
            shuffle_seed: 42,
            stats_every: 5,
            budget: Duration::from_secs(60),
            // Two points: on a few hundred validation rows, run-to-run noise between
            // equally good settings is about one point.
            min_accuracy_gain: 0.02,
            min_loss_gain: 0.05,
            min_steps: 10,
        }
    }
}

impl TrialOptions {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.steps >= 1, "remedy trials need at least 1 step");
        anyhow::ensure!(self.batch_size >= 1, "batch size must be at least 1");
        anyhow::ensure!(
            self.stats_every >= 1,
            "remedy trials need statistics: stats_every must be at least 1"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.min_accuracy_gain),
            "the accuracy margin must be in [0, 1), got {}",
            self.min_accuracy_gain
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.min_loss_gain),
            "the loss margin must be in [0, 1), got {}",
            self.min_loss_gain
        );
        Ok(())
    }
}

/// What the ranking compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    ValidationAccuracy,
    ValidationLoss,
    TrainingLoss,
}

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::ValidationAccuracy => "validation accuracy",
            Measure::ValidationLoss => "validation loss",
            Measure::TrainingLoss => "training loss",
        }
    }
}

/// A trial's standing against the baseline (see the module docs for the definitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Baseline,
    Better,
    /// Within the margin of the baseline, either way.
    NoBetter,
    /// Validation accuracy beat the baseline's but validation loss grew past the margin.
    Mixed,
    Worse,
    /// Not better, but the budget cut it short, so it trained fewer steps than the
    /// baseline: no fair comparison.
    CutShort,
    /// NaN or ±inf.
    Diverged,
    /// The budget was spent before it could start.
    Skipped,
    /// An error other than divergence.
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Baseline => "baseline",
            Verdict::Better => "better",
            Verdict::NoBetter => "no better",
            Verdict::Mixed => "mixed (acc up, loss up)",
            Verdict::Worse => "worse",
            Verdict::CutShort => "cut short",
            Verdict::Diverged => "NaN",
            Verdict::Skipped => "skipped (budget)",
            Verdict::Failed => "failed",
        }
    }
}

/// What one trial measured.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub label: String,
    /// The flags that make the change; empty for the baseline.
    pub flags: String,
    pub change: Option<Change>,
    /// Steps trained.
    pub steps: usize,
    /// The budget ran out before the planned steps.
    pub cut_short: bool,
    /// ‖∇W₀‖/‖∇Wₗ‖: the lowest trained layer's weight-gradient norm over the output
    /// layer's, median over the last five statistics records.
    pub grad_ratio: Option<f32>,
    /// Loss on the training set (evaluation mode) before and after the trial.
    pub loss_start: Option<f32>,
    pub loss_end: Option<f32>,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
    /// NaN or ±inf in the loss or the gradients, or in the final losses.
    pub nan: bool,
    pub diverged: Option<NonFiniteError>,
    pub error: Option<String>,
    pub seconds: f64,
    pub verdict: Verdict,
}

impl Trial {
    pub(super) fn empty(label: &str, flags: &str, change: Option<Change>) -> Trial {
        Trial {
            label: label.to_string(),
            flags: flags.to_string(),
            change,
            steps: 0,
            cut_short: false,
            grad_ratio: None,
            loss_start: None,
            loss_end: None,
            val_loss: None,
            val_accuracy: None,
            nan: false,
            diverged: None,
            error: None,
            seconds: 0.0,
            verdict: if change.is_none() {
                Verdict::Baseline
            } else {
                Verdict::Skipped
            },
        }
    }

    /// The value the ranking compares, higher better; `None` when there is none to
    /// compare (diverged, failed, skipped).
    pub fn score(&self, measure: Measure) -> Option<f32> {
        if self.nan || self.error.is_some() || self.steps == 0 {
            return None;
        }
        let v = match measure {
            Measure::ValidationAccuracy => self.val_accuracy,
            Measure::ValidationLoss => self.val_loss.map(|l| -l),
            Measure::TrainingLoss => self.loss_end.map(|l| -l),
        }?;
        v.is_finite().then_some(v)
    }
}

/// The ranked trials and the recommendation.
#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    pub measure: Measure,
    pub options: TrialOptions,
    /// Steps every trial was planned to train: the requested steps, fewer when the budget
    /// cut the baseline short (the remedies then train as many as it did).
    pub steps: usize,
    /// Wall-clock time of all trials together.
    pub seconds: f64,
    /// Best first; the baseline is among them.
    pub trials: Vec<Trial>,
    /// Index into `trials` of the recommended remedy: the best one that is better than the
    /// baseline; `None` when no remedy is, or when the trials were too short to judge.
    pub recommended: Option<usize>,
    /// The budget cut the trials below [`TrialOptions::min_steps`].
    pub too_short: bool,
}

impl TrialReport {
    /// Judges each trial against the baseline (`trials[0]`) and ranks them.
    pub fn judge(
        mut trials: Vec<Trial>,
        measure: Measure,
        options: TrialOptions,
        steps: usize,
        seconds: f64,
    ) -> Result<TrialReport> {
        anyhow::ensure!(
            trials.first().is_some_and(|t| t.change.is_none()),
            "the first trial must be the baseline"
        );
        let (base, rest) = trials.split_first_mut().expect("checked above");
        for t in rest {
            t.verdict = verdict(t, base, measure, &options);
        }
        // The remedies better than the baseline first, so the top row is the
        // recommendation; then the rest by measure; then NaN or a missing measure (a later
        // divergence before an earlier one). Then the lower validation loss, then
        // the gradient ratio nearer 1.
        let key = |t: &Trial| {
            let tier = match (t.score(measure), t.verdict) {
                (_, Verdict::Better) => 0,
                (Some(_), _) => 1,
                (None, Verdict::Diverged | Verdict::Baseline) => 2,
                _ => 3,
            };
            let step = t.diverged.as_ref().map_or(0, |d| d.step);
            let ratio = t
                .grad_ratio
                .filter(|r| r.is_finite() && *r > 0.0)
                .map_or(f32::INFINITY, |r| r.log10().abs());
            let loss = t
                .val_loss
                .filter(|l| l.is_finite())
                .unwrap_or(f32::INFINITY);
            let score = -t.score(measure).unwrap_or(0.0);
            (tier, score, u64::MAX - step, loss, ratio)
        };
        trials.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.cmp(&kb.2))
                .then(ka.3.total_cmp(&kb.3))
                .then(ka.4.total_cmp(&kb.4))
        });
        let too_short = steps < options.min_steps.min(options.steps);
        let recommended = trials
            .iter()
            .position(|t| t.verdict == Verdict::Better)
            .filter(|_| !too_short);
        Ok(TrialReport {
            measure,
            options,
            steps,
            seconds,
            trials,
            recommended,
            too_short,
        })
    }

    /// The recommended remedy.
    pub fn best(&self) -> Option<&Trial> {
        self.recommended.map(|i| &self.trials[i])
    }

    pub fn baseline(&self) -> &Trial {
        self.trials
            .iter()
            .find(|t| t.change.is_none())
            .expect("a report always holds its baseline")
    }

    /// The ranked table.
    pub fn table(&self) -> String {
        let width = self
            .trials
            .iter()
            .map(|t| t.label.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let fwidth = self
            .trials
            .iter()
            .map(|t| t.flags.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rank  {:<width$}  {:<fwidth$}  {:>11}  {:>15}  {:>8}  {:>8}  {:>5}  verdict",
            "remedy", "flags", "‖∇W₀‖/‖∇Wₗ‖", "train loss", "val loss", "val acc", "steps"
        );
        let num = |v: Option<f32>| v.map_or("-".to_string(), |v| compact(v, 4));
        for (i, t) in self.trials.iter().enumerate() {
            let loss = match (t.loss_start, t.loss_end) {
                (Some(a), Some(b)) => format!("{}→{}", compact(a, 3), compact(b, 3)),
                (Some(a), None) => format!("{}→-", compact(a, 3)),
                _ => "-".to_string(),
            };
            let acc = t
                .val_accuracy
                .map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
            let mut verdict = t.verdict.name().to_string();
            if let Some(d) = &t.diverged {
                verdict = format!("NaN at step {}", d.step);
            }
            if t.cut_short && t.verdict != Verdict::CutShort {
                verdict.push_str(" (cut short)");
            }
            if Some(i) == self.recommended {
                verdict.push_str(", recommended");
            }
            let steps = if t.verdict == Verdict::Skipped {
                "-".to_string()
            } else {
                t.steps.to_string()
            };
            let _ = writeln!(
                s,
                "{:>4}  {:<width$}  {:<fwidth$}  {:>11}  {:>15}  {:>8}  {:>8}  {:>5}  {verdict}",
                i + 1,
                t.label,
                if t.flags.is_empty() { "-" } else { &t.flags },
                t.grad_ratio.map_or("-".to_string(), |r| format!("{r:.1e}")),
                loss,
                num(t.val_loss),
                acc,
                steps,
            );
        }
        s
    }

    /// One sentence: the recommendation with the figures behind it, or that nothing beat
    /// the unchanged model.
    pub fn recommendation(&self) -> String {
        let base = self.baseline();
        let figure = |t: &Trial| match self.measure {
            Measure::ValidationAccuracy => t
                .val_accuracy
                .map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a)),
            Measure::ValidationLoss => t.val_loss.map_or("-".to_string(), |l| format!("{l:.4}")),
            Measure::TrainingLoss => t.loss_end.map_or("-".to_string(), |l| format!("{l:.4}")),
        };
        let base_figure = if base.nan {
            "NaN".to_string()
        } else {
            figure(base)
        };
        match self.best() {
            Some(t) => {
                let loss = match (self.measure, base.val_loss, t.val_loss) {
                    (Measure::ValidationAccuracy, Some(a), Some(b)) if !base.nan => {
                        format!(" (validation loss {a:.4} → {b:.4})")
                    }
                    _ => String::new(),
                };
                format!(
                    "{} ({}): {} {} → {}{loss} against the unchanged model after {}",
                    t.label,
                    t.flags,
                    self.measure.name(),
                    base_figure,
                    figure(t),
                    plural(t.steps, "step")
                )
            }
            None if self.too_short => format!(
                "none — the budget let the unchanged model train only {}, too few to judge any \
                 remedy by (at least {} are needed); raise --trial-budget or lower --trial-steps",
                plural(self.steps, "step"),
                self.options.min_steps.min(self.options.steps)
            ),
            None => {
                let margin = match self.measure {
                    Measure::ValidationAccuracy => {
                        format!("{:.0} points", 100.0 * self.options.min_accuracy_gain)
                    }
                    _ => format!("{:.0}%", 100.0 * self.options.min_loss_gain),
                };
                format!(
                    "none — no remedy beat the unchanged model's {} of {base_figure} by at least \
                     {margin} in {}, so no change is recommended",
                    self.measure.name(),
                    plural(self.steps, "step")
                )
            }
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A loss in a table column: fixed point, or scientific when a diverging model makes it
/// too long.
fn compact(v: f32, decimals: usize) -> String {
    if v.is_finite() && v.abs() >= 1e4 {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn verdict(t: &Trial, base: &Trial, measure: Measure, o: &TrialOptions) -> Verdict {
    let base_loss = base.val_loss.filter(|l| l.is_finite());
    let base = base.score(measure);
    if t.error.is_some() {
        return Verdict::Failed;
    }
    if t.steps == 0 {
        return Verdict::Skipped;
    }
    let Some(score) = t.score(measure) else {
        return Verdict::Diverged;
    };
    let Some(base) = base else {
        return Verdict::Better;
    };
    let gain = match measure {
        Measure::ValidationAccuracy => (score - base) / o.min_accuracy_gain.max(f32::EPSILON),
        // Scores are negated losses: the gain is the fraction of the baseline's loss
        // taken off.
        _ => (score - base) / (base.abs() * o.min_loss_gain).max(f32::MIN_POSITIVE),
    };
    let accuracy = measure == Measure::ValidationAccuracy;
    let (loss_grew, loss_fell) = match (t.val_loss, base_loss) {
        (Some(l), Some(b)) if accuracy => (
            l > b * (1.0 + o.min_loss_gain),
            l <= b * (1.0 - o.min_loss_gain),
        ),
        _ => (false, false),
    };
    // `gain` is in units of the margin.
    if gain >= 1.0 && loss_grew {
        Verdict::Mixed
    } else if gain >= 1.0 || (gain >= 0.0 && loss_fell) {
        Verdict::Better
    } else if t.cut_short {
        Verdict::CutShort
    } else if gain <= -1.0 {
        Verdict::Worse
    } else {
        Verdict::NoBetter
    }
}
