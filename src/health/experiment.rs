//! The vanishing-gradient experiment: one deep MLP trained under several activation,
//! initialisation and normalisation choices on the built-in spirals, compared side by
//! side.

use super::detect::{detect, DetectorConfig, WarningKind};
use super::{NonFiniteError, StepStats};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::model::{BatchNorm, Clip, FitOptions, Init, MlpSpec, Model, Optimizer};
use crate::ops::Activation;
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
}

impl Config {
    fn new(activation: Activation, init: Init) -> Config {
        Config {
            label: format!("{} + {init}", activation.name()),
            activation,
            init,
            batch_norm: false,
            lr_scale: 1.0,
            clip_norm: None,
        }
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

/// The classic comparison; each entry is one line, so adding an activation is one line.
pub fn vanishing_configs(high_lr_scale: f32) -> Vec<Config> {
    let normal = Init::Normal {
        mean: 0.0,
        std: 1.0,
    };
    vec![
        Config::new(Activation::Sigmoid, normal),
        Config::new(Activation::Tanh, Init::GlorotUniform),
        Config::new(Activation::Relu, Init::HeNormal),
        Config::new(Activation::ELU, Init::HeNormal),
        Config::new(Activation::Selu, Init::LecunNormal),
        Config::new(Activation::Sigmoid, normal).batch_norm(),
        Config::new(Activation::Relu, Init::HeNormal).lr_scale(high_lr_scale),
        Config::new(Activation::Relu, Init::HeNormal)
            .lr_scale(high_lr_scale)
            .clip_norm(1.0),
    ]
}

/// Sizes and schedule of the experiment.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentOptions {
    pub depth: usize,
    pub width: usize,
    pub batch: usize,
    pub epochs: usize,
    /// Spiral points per class (3 classes); 20% are held out for validation.
    pub points: usize,
    pub lr: f32,
    /// The learning-rate multiplier of the high-learning-rate configurations.
    pub high_lr_scale: f32,
    pub stats_every: usize,
    pub seed: u64,
}

impl Default for ExperimentOptions {
    fn default() -> Self {
        ExperimentOptions {
            depth: 20,
            width: 32,
            batch: 32,
            epochs: 25,
            points: 200,
            lr: 0.1,
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
        anyhow::ensure!(self.points >= 5, "--points must be at least 5");
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

    pub fn spec(&self, c: &Config) -> MlpSpec {
        let mut spec = MlpSpec::new(2, &vec![self.width; self.depth], 3)
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
        spec
    }
}

/// What one configuration did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub label: String,
    pub lr: f32,
    /// ‖∇W‖ of the first layer over the output layer's, at the first step and the median
    /// over the last five records.
    pub ratio_start: Option<f32>,
    pub ratio_end: Option<f32>,
    /// Training loss of the last completed epoch, and validation accuracy after it.
    pub final_loss: Option<f32>,
    pub accuracy: Option<f32>,
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

/// Trains every configuration with an engine from `make_engine`; `on_done` sees each
/// outcome as it finishes. A configuration that diverges is an outcome, not an error.
pub fn run(
    opts: &ExperimentOptions,
    configs: &[Config],
    make_engine: &mut dyn FnMut() -> Result<Box<dyn Engine>>,
    mut on_done: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>> {
    opts.validate()?;
    let all = crate::data::synthetic::spirals(opts.points, 3, 0.05, opts.seed);
    let split = all.rows * 4 / 5;
    let (train, valid): (Dataset, Dataset) = (all.slice(0, split), all.slice(split, all.rows));
    let fit = FitOptions {
        epochs: opts.epochs,
        batch_size: opts.batch,
        shuffle_seed: opts.seed,
        drop_last: false,
    };
    let mut out = Vec::with_capacity(configs.len());
    for c in configs {
        let spec = opts.spec(c);
        let lr = spec.optimizer.lr();
        let mut model = Model::new(spec.clone(), make_engine()?)?;
        model.gather_stats_every(opts.stats_every);
        let clock = Instant::now();
        let result = model.fit(&train, Some(&valid), &fit, |_| {});
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
            lr,
            ratio_start: stats.first().and_then(|s| s.first_last_ratio()),
            ratio_end: median_ratio(&stats),
            final_loss: last.map(|r| r.train.loss),
            accuracy: last.and_then(|r| r.valid.and_then(|v| v.accuracy)),
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

/// The side-by-side table.
pub fn table(outcomes: &[Outcome]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.label.chars().count())
        .max()
        .unwrap_or(6)
        .max(13);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<width$}  {:>6}  {:>12}  {:>12}  {:>10}  {:>8}  verdict",
        "configuration", "lr", "‖∇W₀‖/‖∇Wₗ‖", "(at end)", "final loss", "val acc"
    );
    let sci = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.1e}"));
    for o in outcomes {
        let loss = match (&o.diverged, o.final_loss) {
            (Some(d), _) => format!("NaN@{}", d.step),
            (None, Some(l)) => format!("{l:.4}"),
            (None, None) => "-".to_string(),
        };
        let acc = o
            .accuracy
            .map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        let verdict = if o.warnings.is_empty() {
            "healthy".to_string()
        } else {
            let mut names: Vec<&str> = o.warnings.iter().map(|w| w.name()).collect();
            names.dedup();
            names.join(", ")
        };
        let _ = writeln!(
            s,
            "{:<width$}  {:>6}  {:>12}  {:>12}  {:>10}  {:>8}  {verdict}",
            o.label,
            o.lr,
            sci(o.ratio_start),
            sci(o.ratio_end),
            loss,
            acc
        );
    }
    s
}
