//! Remedy trials: instead of guessing which change cures a gradient-health problem, train
//! the user's own model briefly with each candidate change, from the same seed on the same
//! batches, and rank the changes by what they measured against the unchanged model.
//!
//! Guessing is not good enough: on a 20-layer sigmoid network with N(0, 1) weights, the
//! "textbook" Glorot init makes gradients vanish completely (ratio 1e-12) while batch norm
//! cures it; on tanh the same Glorot init is the cure. Only a trial tells them apart.
//!
//! **Better than the baseline** means: the remedy did not diverge, and its primary measure
//! beat the unchanged model's by at least a margin — validation accuracy by
//! [`TrialOptions::min_accuracy_gain`] (absolute) for classification with validation data,
//! otherwise validation (or, without validation data, training) loss by
//! [`TrialOptions::min_loss_gain`] (relative). When accuracy is the measure, the
//! validation loss must also not have grown by more than the loss margin: near chance
//! level a few rows can flip the accuracy while the model got worse (measured: a 20-layer
//! sigmoid net at lr ÷10 gained 3 points of accuracy at 12% while its validation loss rose
//! 15%); such a remedy is *mixed*. Conversely, when every model is still stuck at one
//! accuracy, a remedy whose accuracy is at least the baseline's and whose validation loss
//! fell by the loss margin is better too. A baseline that diverged is beaten by any remedy
//! that did not. **Worse** means the measure lost by at least the same margin, or the
//! remedy diverged where the baseline did not. Only a remedy that is better is ever
//! recommended. The gradient ratio is shown and breaks the last ties in the ranking, but
//! never makes a remedy recommended on its own: a healthier-looking gradient that does not
//! train better is not a cure.

use super::{NonFiniteError, StepProgress, StepStats, TrainObserver};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::model::{BatchNorm, BnPlacement, Clip, FitOptions, Init, MlpSpec, Model, Optimizer};
use crate::ops::Activation;
use anyhow::Result;
use serde::Serialize;
use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One change to the model's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// Another weight init for the same activation.
    Init {
        #[serde(serialize_with = "display")]
        init: Init,
    },
    /// Another activation with its matching init.
    Activation {
        #[serde(serialize_with = "display")]
        activation: Activation,
        #[serde(serialize_with = "display")]
        init: Init,
    },
    /// Batch normalization before every hidden activation.
    BatchNormBefore,
    /// Gradient clipping by global norm.
    ClipNorm { max_norm: f32 },
    /// Another (base) learning rate.
    LearningRate { lr: f32 },
    /// A skip connection into every `every`-th hidden layer.
    Residual { every: usize },
}

/// Inits and activations in JSON as the flags spell them.
fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A candidate remedy: what it is, the command-line flags that make it, and the change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Remedy {
    pub label: String,
    pub flags: String,
    pub change: Change,
}

impl Remedy {
    /// The model with this change applied; everything else stays as it was.
    pub fn apply(&self, spec: &MlpSpec) -> MlpSpec {
        let mut s = spec.clone();
        match self.change {
            Change::Init { init } => s.init = init,
            Change::Activation { activation, init } => {
                s.activation = activation;
                s.init = init;
            }
            Change::BatchNormBefore => {
                s.batch_norm = Some(BatchNorm {
                    placement: BnPlacement::BeforeActivation,
                    ..spec.batch_norm.unwrap_or_default()
                })
            }
            Change::ClipNorm { max_norm } => s.clip = Some(Clip::Norm(max_norm)),
            Change::LearningRate { lr } => s.optimizer = with_lr(s.optimizer, lr),
            Change::Residual { every } => s.residual_every = Some(every),
        }
        s
    }
}

fn with_lr(opt: Optimizer, new: f32) -> Optimizer {
    let mut opt = opt;
    match &mut opt {
        Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } | Optimizer::AdamW { lr, .. } => {
            *lr = new
        }
    }
    opt
}

/// Init families: He uniform and He normal scale alike, so swapping one for the other is
/// not a remedy worth a trial.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InitFamily {
    He,
    Glorot,
    Lecun,
    Other,
}

fn family(init: Init) -> InitFamily {
    match init {
        Init::HeNormal | Init::HeUniform => InitFamily::He,
        Init::GlorotNormal | Init::GlorotUniform => InitFamily::Glorot,
        Init::LecunNormal | Init::LecunUniform => InitFamily::Lecun,
        _ => InitFamily::Other,
    }
}

/// The non-saturating activations worth a trial, each with the init it needs.
const NON_SATURATING: [Activation; 4] = [
    Activation::Relu,
    Activation::LEAKY_RELU,
    Activation::ELU,
    Activation::Selu,
];

/// Every remedy in the toolbox that differs from what `spec` already does: an init matched
/// to the activation, non-saturating activations with their inits, batch norm before the
/// activation, skip connections, clipping by norm and a learning rate ten times lower.
pub fn candidates(spec: &MlpSpec) -> Vec<Remedy> {
    let mut out = Vec::new();
    let suited = Init::default_for(spec.activation);
    let current = match spec.init {
        Init::Auto => suited,
        other => other,
    };
    if family(current) != family(suited) {
        out.push(Remedy {
            label: format!("{suited} init"),
            flags: format!("--init {suited}"),
            change: Change::Init { init: suited },
        });
    }
    for act in NON_SATURATING {
        if act.name() == spec.activation.name() {
            continue;
        }
        let init = Init::default_for(act);
        out.push(Remedy {
            label: format!("{} + {init}", act.name()),
            flags: format!("--activation {} --init {init}", act.name()),
            change: Change::Activation {
                activation: act,
                init,
            },
        });
    }
    if spec.batch_norm.map(|b| b.placement) != Some(BnPlacement::BeforeActivation) {
        out.push(Remedy {
            label: "batch norm".to_string(),
            flags: "--batch-norm before".to_string(),
            change: Change::BatchNormBefore,
        });
    }
    if spec.residual_every.is_none() && spec.hidden.len() >= 2 {
        out.push(Remedy {
            label: "skip connections".to_string(),
            flags: "--residual 2".to_string(),
            change: Change::Residual { every: 2 },
        });
    }
    if spec.clip.is_none() {
        out.push(Remedy {
            label: "clip norm 1".to_string(),
            flags: "--clip-norm 1".to_string(),
            change: Change::ClipNorm { max_norm: 1.0 },
        });
    }
    // Rounded to four significant digits, so the flag reads `--lr 0.001`, not
    // `0.0009999999`, and the trial trains with exactly what the flag sets.
    let lr = format!("{:.3e}", spec.optimizer.lr() / 10.0)
        .parse::<f32>()
        .unwrap_or(spec.optimizer.lr() / 10.0);
    out.push(Remedy {
        label: "lr ÷10".to_string(),
        flags: format!("--lr {lr}"),
        change: Change::LearningRate { lr },
    });
    out
}

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
    fn empty(label: &str, flags: &str, change: Option<Change>) -> Trial {
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

/// Why the observer stopped `fit`.
#[derive(Debug)]
enum Stop {
    Steps,
    Budget,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Steps => "the trial's steps are done",
            Stop::Budget => "the trial's time budget is spent",
        })
    }
}

impl std::error::Error for Stop {}

/// Stops `fit` after `limit` steps or at `deadline`, whichever comes first.
struct Stopper {
    limit: usize,
    deadline: Instant,
    done: Rc<Cell<usize>>,
}

impl TrainObserver for Stopper {
    fn on_step(&mut self, _: &StepProgress) -> Result<()> {
        self.done.set(self.done.get() + 1);
        if self.done.get() >= self.limit {
            return Err(Stop::Steps.into());
        }
        if Instant::now() >= self.deadline {
            return Err(Stop::Budget.into());
        }
        Ok(())
    }
}

fn median_ratio(stats: &[StepStats]) -> Option<f32> {
    let mut r: Vec<f32> = stats[stats.len().saturating_sub(5)..]
        .iter()
        .filter_map(|s| s.first_last_ratio())
        .filter(|r| r.is_finite())
        .collect();
    r.sort_by(f32::total_cmp);
    r.get(r.len() / 2).copied()
}

/// Trains `spec` for up to `steps` steps (or until `deadline`) and measures it into `t`.
/// Errors other than divergence are returned for the caller to record.
fn measure_into(
    t: &mut Trial,
    spec: MlpSpec,
    engine: Box<dyn Engine>,
    (train, valid): (&Dataset, Option<&Dataset>),
    o: &TrialOptions,
    (steps, deadline): (usize, Instant),
) -> Result<()> {
    let mut m = Model::new(spec, engine)?;
    let bs = o.batch_size;
    t.loss_start = Some(m.evaluate(train, bs)?.loss);
    m.gather_stats_every(o.stats_every);
    let done = Rc::new(Cell::new(0));
    m.set_observer(Some(Box::new(Stopper {
        limit: steps,
        deadline,
        done: done.clone(),
    })));
    let per_epoch = train.rows.div_ceil(bs).max(1);
    let fit = FitOptions {
        epochs: steps.div_ceil(per_epoch),
        batch_size: bs,
        shuffle_seed: o.shuffle_seed,
        drop_last: false,
    };
    // Validation runs once, after the trial, not after every epoch of it.
    let result = m.fit(train, None, &fit, |_| {});
    m.set_observer(None);
    let mut outcome = match result {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<Stop>() {
            Some(Stop::Budget) => {
                t.cut_short = true;
                Ok(())
            }
            Some(Stop::Steps) => Ok(()),
            None => Err(e),
        },
    };
    t.steps = done.get();
    if outcome.is_ok() {
        // A step past the last epoch's guard check may have gone bad.
        outcome = m.wait_for_stats().and_then(|_| m.check_finite());
    }
    if let Err(e) = outcome {
        let Some(nf) = e.downcast_ref::<NonFiniteError>() else {
            return Err(e);
        };
        t.diverged = Some(nf.clone());
        t.nan = true;
        // The device counts steps from 1 for this fresh model; the bad step may have
        // stopped `fit` before the observer counted it.
        t.steps = (nf.step as usize).min(steps);
    }
    t.grad_ratio = median_ratio(m.stats_history());
    if t.nan {
        return Ok(());
    }
    let end = m.evaluate(train, bs)?;
    t.loss_end = Some(end.loss);
    if let Some(v) = valid {
        let vm = m.evaluate(v, bs)?;
        t.val_loss = Some(vm.loss);
        t.val_accuracy = vm.accuracy;
    }
    t.nan = [t.loss_end, t.val_loss, t.val_accuracy]
        .into_iter()
        .flatten()
        .any(|v| !v.is_finite());
    Ok(())
}

/// Trains the unchanged model (the baseline) and then `spec` with each remedy, every one
/// from the same seed on the same batches for the same number of steps, within the
/// budget, and ranks them. `make_engine` gives each trial a fresh engine; `on_done` sees
/// each trial as it finishes (the baseline first). A trial that diverges or fails is a
/// row of the report, not an error.
pub fn run_trials(
    spec: &MlpSpec,
    remedies: &[Remedy],
    train: &Dataset,
    valid: Option<&Dataset>,
    options: &TrialOptions,
    make_engine: &mut dyn FnMut() -> Result<Box<dyn Engine>>,
    mut on_done: impl FnMut(&Trial),
) -> Result<TrialReport> {
    options.validate()?;
    spec.validate()?;
    let valid = valid.filter(|v| v.rows > 0);
    let measure = match valid {
        Some(v) if v.classes.is_some() => Measure::ValidationAccuracy,
        Some(_) => Measure::ValidationLoss,
        None => Measure::TrainingLoss,
    };
    let clock = Instant::now();
    let mut steps = options.steps;
    let mut trials = Vec::with_capacity(remedies.len() + 1);
    let runs = std::iter::once((spec.clone(), Trial::empty("unchanged (baseline)", "", None)))
        .chain(remedies.iter().map(|r| {
            (
                r.apply(spec),
                Trial::empty(&r.label, &r.flags, Some(r.change)),
            )
        }));
    let total = remedies.len() + 1;
    for (i, (s, mut t)) in runs.enumerate() {
        let left = options.budget.saturating_sub(clock.elapsed());
        if left.is_zero() && i > 0 {
            on_done(&t);
            trials.push(t);
            continue;
        }
        let start = Instant::now();
        let deadline = start + left / (total - i) as u32;
        let result = make_engine()
            .and_then(|e| measure_into(&mut t, s, e, (train, valid), options, (steps, deadline)));
        t.seconds = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            if i == 0 {
                return Err(e.context("the unchanged model (baseline) of the remedy trials"));
            }
            t.error = Some(format!("{e:#}"));
            t.verdict = Verdict::Failed;
        }
        if i == 0 && t.cut_short {
            // The remedies train as many steps as the baseline managed, so they are
            // compared at equal length.
            steps = t.steps.max(1);
        }
        on_done(&t);
        trials.push(t);
    }
    TrialReport::judge(
        trials,
        measure,
        options.clone(),
        steps,
        clock.elapsed().as_secs_f64(),
    )
}
