//! The vanishing-gradient experiment: one deep MLP trained on the user's data (or the
//! built-in spirals) under several activation, initialisation, normalisation, clipping
//! and skip-connection choices, compared side by side. Each configuration carries a claim
//! of the literature, and the outcome is checked against it: the table says plainly
//! whether the claim held on this data.

use super::detect::{detect, DetectorConfig, WarningKind};
use super::{NonFiniteError, StepStats};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::model::health::json_float;
use crate::model::{BatchNorm, Clip, FitOptions, Init, MlpSpec, Model, Optimizer};
use crate::ops::{Activation, Loss};
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Instant;

/// One configuration of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub label: String,
    pub activation: Activation,
    pub init: Init,
    pub batch_norm: bool,
    /// Multiplies the experiment's learning rate.
    pub lr_scale: f32,
    /// Gradient clipping by global norm.
    pub clip_norm: Option<f32>,
    /// A skip connection into every k-th hidden layer.
    pub residual: Option<usize>,
    /// What the literature says this configuration does.
    pub claim: Claim,
}

/// A claim about a configuration, checked against what it did (see [`verdicts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Claim {
    /// The baseline: the lower layers get a vanishing share of the gradient.
    Vanishes,
    /// Trains where the baseline does not: clearly better than it, gradients not vanishing.
    Trains,
    /// Diverges (NaN or ±inf) at the high learning rate.
    Diverges,
    /// Stays finite at the high learning rate where the same network without clipping
    /// diverged, and trains (as [`Claim::Trains`], without the vanishing condition).
    StaysFinite,
}

impl Config {
    fn new(activation: Activation, init: Init, claim: Claim) -> Config {
        Config {
            label: format!("{} + {init}", activation.name()),
            activation,
            init,
            batch_norm: false,
            lr_scale: 1.0,
            clip_norm: None,
            residual: None,
            claim,
        }
    }
    fn residual(mut self, k: usize) -> Config {
        self.residual = Some(k);
        self.label.push_str(&format!(" + residual {k}"));
        self
    }
    fn batch_norm(mut self) -> Config {
        self.batch_norm = true;
        self.label.push_str(" + batch norm");
        self
    }
    fn lr_scale(mut self, scale: f32) -> Config {
        self.lr_scale = scale;
        self.label.push_str(&format!(" + lr ×{scale}"));
        self
    }
    fn clip_norm(mut self, max_norm: f32) -> Config {
        self.clip_norm = Some(max_norm);
        self.label.push_str(&format!(" + clip {max_norm}"));
        self
    }
}

/// The classic comparison; each entry is one line, so adding a configuration is one line.
/// The first is the baseline the others are measured against.
pub fn vanishing_configs(high_lr_scale: f32) -> Vec<Config> {
    use Claim::*;
    let normal = Init::Normal {
        mean: 0.0,
        std: 1.0,
    };
    vec![
        Config::new(Activation::Sigmoid, normal, Vanishes),
        Config::new(Activation::Tanh, Init::GlorotUniform, Trains),
        Config::new(Activation::Relu, Init::HeNormal, Trains),
        Config::new(Activation::ELU, Init::HeNormal, Trains),
        Config::new(Activation::Selu, Init::LecunNormal, Trains),
        Config::new(Activation::Sigmoid, normal, Trains).batch_norm(),
        Config::new(Activation::Sigmoid, normal, Trains).residual(2),
        Config::new(Activation::Relu, Init::HeNormal, Diverges).lr_scale(high_lr_scale),
        Config::new(Activation::Relu, Init::HeNormal, StaysFinite)
            .lr_scale(high_lr_scale)
            .clip_norm(1.0),
    ]
}

/// The claim of the literature behind a configuration, in words.
pub fn claim_text(c: &Config) -> String {
    let what = match c.claim {
        Claim::Vanishes => {
            "gradients vanish in the lower layers of a deep sigmoid net with N(0,1) weights"
        }
        Claim::Diverges => "plain SGD diverges at a high learning rate",
        Claim::StaysFinite => "clipping the gradient norm prevents the divergence, and it trains",
        Claim::Trains if c.residual.is_some() => "skip connections let a deep saturating net train",
        Claim::Trains if c.batch_norm => "batch norm rescues deep sigmoid",
        Claim::Trains => match c.init {
            Init::GlorotUniform | Init::GlorotNormal => "Glorot init lets deep tanh train",
            Init::LecunNormal | Init::LecunUniform => "SELU with LeCun init trains deep",
            _ => "He init lets a deep ReLU-family net train",
        },
    };
    let source = match c.claim {
        Claim::Vanishes => "Glorot & Bengio 2010",
        Claim::Diverges | Claim::StaysFinite => "Pascanu et al. 2013",
        Claim::Trains if c.residual.is_some() => "He et al. 2016",
        Claim::Trains if c.batch_norm => "Ioffe & Szegedy 2015",
        Claim::Trains => match c.activation {
            Activation::Tanh => "Glorot & Bengio 2010",
            Activation::Selu => "Klambauer et al. 2017",
            Activation::ELU => "He et al. 2015; Clevert et al. 2016",
            _ => "He et al. 2015",
        },
    };
    format!("{what} ({source})")
}

/// Sizes and schedule of the experiment.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentOptions {
    pub depth: usize,
    pub width: usize,
    pub batch: usize,
    pub epochs: usize,
    pub lr: f32,
    /// The learning-rate multiplier of the high-learning-rate configurations.
    pub high_lr_scale: f32,
    pub stats_every: usize,
    pub seed: u64,
}

/// Measured on the digits data set (`data/digits_*.csv`, see the README's table): at depth
/// 20 and width 32 the sigmoid/N(0,1) baseline passes its first layer 4e-4 to 2e-3 of the
/// output layer's gradient over five seeds (at width 64, 9e-3 to 2.2e-2: the verdict
/// would hinge on the seed). At lr 0.1 plain ReLU with He init diverges there
/// and clipped ReLU at ×20 dies; at 0.03 they train, and ×20 of it diverges within a few
/// steps unless clipped. All nine configurations take about two minutes on lavapipe.
impl Default for ExperimentOptions {
    fn default() -> Self {
        ExperimentOptions {
            depth: 20,
            width: 32,
            batch: 32,
            epochs: 15,
            lr: 0.03,
            high_lr_scale: 20.0,
            stats_every: 5,
            seed: 7,
        }
    }
}

impl ExperimentOptions {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.depth >= 1, "--depth must be at least 1");
        anyhow::ensure!(self.width >= 1, "--width must be at least 1");
        anyhow::ensure!(
            self.batch >= 2,
            "--batch must be at least 2 (batch norm needs 2 rows)"
        );
        anyhow::ensure!(self.epochs >= 1, "--epochs must be at least 1");
        anyhow::ensure!(self.stats_every >= 1, "--stats-every must be at least 1");
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "--lr must be a finite number > 0, got {}",
            self.lr
        );
        anyhow::ensure!(
            self.high_lr_scale.is_finite() && self.high_lr_scale > 0.0,
            "--high-lr-scale must be a finite number > 0, got {}",
            self.high_lr_scale
        );
        Ok(())
    }

    /// The model of configuration `c` for data with `input` features and `output` classes
    /// (or regression targets).
    pub fn spec(&self, c: &Config, input: usize, output: usize, loss: Loss) -> MlpSpec {
        let mut spec = MlpSpec::new(input, &vec![self.width; self.depth], output)
            .loss(loss)
            .activation(c.activation)
            .init(c.init)
            .optimizer(Optimizer::sgd(self.lr * c.lr_scale))
            .seed(self.seed);
        if c.batch_norm {
            spec = spec.batch_norm(BatchNorm::default());
        }
        if let Some(max_norm) = c.clip_norm {
            spec = spec.clip(Clip::Norm(max_norm));
        }
        if let Some(k) = c.residual {
            spec = spec.residual(k);
        }
        spec
    }
}

/// What one configuration did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub label: String,
    pub claim: Claim,
    pub lr: f32,
    /// ‖∇W‖ of the first layer over the output layer's, at the first step and the median
    /// over the last five records.
    #[serde(serialize_with = "json_float::opt")]
    pub ratio_start: Option<f32>,
    #[serde(serialize_with = "json_float::opt")]
    pub ratio_end: Option<f32>,
    /// Training loss of the last completed epoch, and validation accuracy after it.
    #[serde(serialize_with = "json_float::opt")]
    pub final_loss: Option<f32>,
    #[serde(serialize_with = "json_float::opt")]
    pub accuracy: Option<f32>,
    #[serde(serialize_with = "json_float::opt")]
    pub val_loss: Option<f32>,
    /// Set when training stopped on non-finite values.
    pub diverged: Option<NonFiniteError>,
    pub warnings: Vec<WarningKind>,
    pub seconds: f64,
    #[serde(skip)]
    pub stats: Vec<StepStats>,
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

/// Trains every configuration on `train`, validating on `valid`, with an engine from
/// `make_engine`; `on_done` sees each outcome as it finishes. A configuration that
/// diverges is an outcome, not an error.
pub fn run(
    opts: &ExperimentOptions,
    configs: &[Config],
    train: &Dataset,
    valid: &Dataset,
    make_engine: &mut dyn FnMut() -> Result<Box<dyn Engine>>,
    mut on_done: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>> {
    opts.validate()?;
    anyhow::ensure!(
        train.rows >= opts.batch,
        "the training set has {} rows, fewer than one batch of {}: lower --batch",
        train.rows,
        opts.batch
    );
    anyhow::ensure!(valid.rows > 0, "the validation set is empty");
    let (output, loss) = match train.classes {
        Some(c) => (c, Loss::SoftmaxCrossEntropy),
        None => (train.target_dim, Loss::MeanSquaredError),
    };
    let fit = FitOptions {
        epochs: opts.epochs,
        batch_size: opts.batch,
        shuffle_seed: opts.seed,
        drop_last: false,
    };
    let mut out = Vec::with_capacity(configs.len());
    for c in configs {
        let spec = opts.spec(c, train.input_dim, output, loss);
        let lr = spec.optimizer.lr();
        let mut model = Model::new(spec.clone(), make_engine()?)?;
        model.gather_stats_every(opts.stats_every);
        let clock = Instant::now();
        let result = model.fit(train, Some(valid), &fit, |_| {});
        let seconds = clock.elapsed().as_secs_f64();
        let (reports, diverged) = match result {
            Ok(r) => (r, None),
            Err(e) => match e.downcast_ref::<NonFiniteError>() {
                Some(nf) => (Vec::new(), Some(nf.clone())),
                None => return Err(e.context(format!("configuration '{}'", c.label))),
            },
        };
        let stats = model.take_stats_history();
        let warnings = detect(&spec, &stats, &DetectorConfig::default())
            .into_iter()
            .map(|w| w.kind)
            .collect();
        let last = reports.last();
        let outcome = Outcome {
            label: c.label.clone(),
            claim: c.claim,
            lr,
            ratio_start: stats.first().and_then(|s| s.first_last_ratio()),
            ratio_end: median_ratio(&stats),
            final_loss: last.map(|r| r.train.loss),
            accuracy: last.and_then(|r| r.valid.and_then(|v| v.accuracy)),
            val_loss: last.and_then(|r| r.valid.map(|v| v.loss)),
            diverged,
            warnings,
            seconds,
            stats,
        };
        on_done(&outcome);
        out.push(outcome);
    }
    Ok(out)
}

/// How far above the baseline a configuration that "trains" must end, in accuracy.
pub const TRAINS_MARGIN: f32 = 0.2;

/// Whether one configuration's claim held, and the numbers that say so.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub label: String,
    pub claim: String,
    pub holds: bool,
    pub evidence: String,
}

impl Verdict {
    /// "claim holds: …" or "claim does NOT hold here: …".
    pub fn line(&self) -> String {
        let head = if self.holds {
            "claim holds"
        } else {
            "claim does NOT hold here"
        };
        format!("{head}: {}", self.evidence)
    }
}

/// A learning rate as written: 0.6, not the f32 product 0.59999996.
fn lr_text(lr: f32) -> String {
    let s = format!("{lr:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn pct(a: f32) -> String {
    format!("{:.1}%", 100.0 * a)
}

/// Validation accuracy, or loss for regression, in words.
fn score(o: &Outcome) -> String {
    match (&o.diverged, o.accuracy, o.val_loss) {
        (Some(d), _, _) => format!("diverged at step {}", d.step),
        (None, Some(a), _) => format!("{} val acc", pct(a)),
        (None, None, Some(l)) => format!("val loss {l:.4}"),
        _ => "no result".to_string(),
    }
}

/// `o` trained clearly better than `base`: at least [`TRAINS_MARGIN`] more validation
/// accuracy, or (regression) at most half its validation loss.
fn beats(o: &Outcome, base: &Outcome) -> bool {
    if o.diverged.is_some() {
        return false;
    }
    match (o.accuracy, base.accuracy, o.val_loss, base.val_loss) {
        (Some(a), Some(b), _, _) => a >= b + TRAINS_MARGIN,
        (Some(_), None, _, _) => base.diverged.is_some(),
        (None, None, Some(l), Some(b)) => l.is_finite() && l <= 0.5 * b,
        (None, None, Some(l), None) => l.is_finite() && base.diverged.is_some(),
        _ => false,
    }
}

/// Checks each configuration's claim against the outcomes (in the order of `configs`).
/// "Trains" is measured against the first configuration, the baseline; "stays finite"
/// against the latest "diverges" configuration before it.
pub fn verdicts(configs: &[Config], outcomes: &[Outcome]) -> Vec<Verdict> {
    let cfg = DetectorConfig::default();
    let sci = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.1e}"));
    let base = outcomes.first();
    let mut unclipped: Option<&Outcome> = None;
    configs
        .iter()
        .zip(outcomes)
        .map(|(c, o)| {
            let (holds, evidence) = match c.claim {
                Claim::Vanishes => {
                    let r = o.ratio_start;
                    let holds = r.is_some_and(|r| r < cfg.vanishing_ratio);
                    (
                        holds,
                        format!(
                            "‖∇W₀‖/‖∇Wₗ‖ = {} at the first step ({} {:.0e}), {} at the end; {}",
                            sci(r),
                            if holds { "below" } else { "not below" },
                            cfg.vanishing_ratio,
                            sci(o.ratio_end),
                            score(o)
                        ),
                    )
                }
                Claim::Trains => {
                    let base = base.expect("a baseline when there is an outcome");
                    let vanishing = o.warnings.contains(&WarningKind::Vanishing);
                    let holds = beats(o, base) && !vanishing;
                    let mut e = format!("{} vs {} baseline", score(o), score(base));
                    if vanishing {
                        e.push_str(", but gradients still vanish");
                    } else if !holds && o.diverged.is_none() {
                        match o.accuracy {
                            Some(_) => e.push_str(&format!(
                                ", not {:.0} points better",
                                100.0 * TRAINS_MARGIN
                            )),
                            None => e.push_str(", not half the baseline's loss"),
                        }
                    }
                    (holds, e)
                }
                Claim::Diverges => {
                    unclipped = Some(o);
                    let holds = o.diverged.is_some();
                    let e = match &o.diverged {
                        Some(d) => {
                            format!(
                                "non-finite values at step {} (lr {})",
                                d.step,
                                lr_text(o.lr)
                            )
                        }
                        None => format!("stayed finite at lr {}: {}", lr_text(o.lr), score(o)),
                    };
                    (holds, e)
                }
                Claim::StaysFinite => match (&o.diverged, unclipped) {
                    (Some(d), _) => (false, format!("diverged at step {} all the same", d.step)),
                    (None, Some(u)) if u.diverged.is_none() => (
                        false,
                        format!(
                            "stayed finite ({}), but so did the run without clipping ({})",
                            score(o),
                            score(u)
                        ),
                    ),
                    (None, Some(u)) => {
                        let base = base.expect("a baseline when there is an outcome");
                        let holds = beats(o, base);
                        let mut e = format!(
                            "finite, {} vs {} baseline, where without clipping {}",
                            score(o),
                            score(base),
                            score(u)
                        );
                        if !holds {
                            e.push_str(", but it did not train");
                        }
                        (holds, e)
                    }
                    (None, None) => (false, "no unclipped run to compare with".to_string()),
                },
            };
            Verdict {
                label: c.label.clone(),
                claim: claim_text(c),
                holds,
                evidence,
            }
        })
        .collect()
}

fn detectors(o: &Outcome) -> String {
    if o.warnings.is_empty() {
        "healthy".to_string()
    } else {
        let mut names: Vec<&str> = o.warnings.iter().map(|w| w.name()).collect();
        names.dedup();
        names.join(", ")
    }
}

fn loss_cell(o: &Outcome) -> String {
    match (&o.diverged, o.final_loss) {
        (Some(d), _) => format!("NaN@{}", d.step),
        (None, Some(l)) => format!("{l:.4}"),
        (None, None) => "-".to_string(),
    }
}

fn acc_cell(o: &Outcome) -> String {
    o.accuracy.map_or("-".to_string(), pct)
}

fn sci(v: Option<f32>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1e}"))
}

/// The side-by-side table, then each claim with its verdict.
pub fn table(outcomes: &[Outcome], verdicts: &[Verdict]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.label.chars().count())
        .max()
        .unwrap_or(6)
        .max(13);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<width$}  {:>6}  {:>12}  {:>12}  {:>10}  {:>8}  {:<8}  detectors",
        "configuration", "lr", "‖∇W₀‖/‖∇Wₗ‖", "(at end)", "final loss", "val acc", "claim"
    );
    for (o, v) in outcomes.iter().zip(verdicts) {
        let _ = writeln!(
            s,
            "{:<width$}  {:>6}  {:>12}  {:>12}  {:>10}  {:>8}  {:<8}  {}",
            o.label,
            lr_text(o.lr),
            sci(o.ratio_start),
            sci(o.ratio_end),
            loss_cell(o),
            acc_cell(o),
            if v.holds { "holds" } else { "NOT held" },
            detectors(o)
        );
    }
    let _ = writeln!(s, "\nclaims:");
    for v in verdicts {
        let _ = writeln!(s, "- {}: {}\n  {}", v.label, v.claim, v.line());
    }
    s
}

/// Where a Markdown table came from.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// The command line that produced it.
    pub command: String,
    /// `git rev-parse --short HEAD`, or "unknown".
    pub commit: String,
    pub device: String,
    /// The data, in words (file names and sizes).
    pub data: String,
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The table and verdicts as Markdown, headed by where they came from, for the README and
/// for reports: one row per configuration, its claim and whether it held.
pub fn markdown(
    opts: &ExperimentOptions,
    outcomes: &[Outcome],
    verdicts: &[Verdict],
    from: &Provenance,
) -> String {
    let mut s = String::new();
    let held = verdicts.iter().filter(|v| v.holds).count();
    let _ = writeln!(
        s,
        "`{}`\n\ncommit `{}`, {}; {}; {} hidden layers × {}, batch {}, {} epochs, SGD lr {} \
         (×{} for the high-rate runs). {held} of {} claims hold.\n",
        md_cell(&from.command),
        md_cell(&from.commit),
        md_cell(&from.device),
        md_cell(&from.data),
        opts.depth,
        opts.width,
        opts.batch,
        opts.epochs,
        lr_text(opts.lr),
        lr_text(opts.high_lr_scale),
        verdicts.len()
    );
    let _ = writeln!(
        s,
        "| configuration | claim | lr | ‖∇W₀‖/‖∇Wₗ‖ step 1 | at end | final loss | val acc | detectors | verdict |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|---|---|");
    for (o, v) in outcomes.iter().zip(verdicts) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            md_cell(&o.label),
            md_cell(&v.claim),
            lr_text(o.lr),
            sci(o.ratio_start),
            sci(o.ratio_end),
            loss_cell(o),
            acc_cell(o),
            md_cell(&detectors(o)),
            md_cell(&if v.holds {
                v.line()
            } else {
                format!("**{}**", v.line())
            })
        );
    }
    s
}
