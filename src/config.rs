//! The model configuration as a file: TOML for people (`--config model.toml`), JSON in
//! checkpoint metadata (`steadygrad.config`). Names and values are strings where the
//! library has a parser (activation, init, loss), so the file reads like the CLI flags.

use crate::model::{BatchNorm, BnPlacement, Clip, LrSchedule, MlpSpec, Optimizer, Regularizer};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

mod layers;
pub use layers::LayerConfig;

/// Metadata key under which checkpoints carry the model configuration.
pub const CONFIG_KEY: &str = "steadygrad.config";

/// The architecture of an MLP: what is needed to rebuild it around saved weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub input: usize,
    /// Units per hidden layer; may be left out when every `[[model.layers]]` table has a
    /// `width`.
    #[serde(default)]
    pub hidden: Vec<usize>,
    pub output: usize,
    #[serde(default = "default_activation")]
    pub activation: String,
    #[serde(default = "default_init")]
    pub init: String,
    #[serde(default = "default_loss")]
    pub loss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<BatchNormConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_every: Option<usize>,
    /// Per hidden layer, what differs from the settings above (`[[model.layers]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormConfig {
    /// `before` or `after` the activation.
    #[serde(default = "default_placement")]
    pub placement: String,
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
}

fn default_activation() -> String {
    "relu".into()
}
fn default_init() -> String {
    "auto".into()
}
fn default_loss() -> String {
    "cross-entropy".into()
}
fn default_placement() -> String {
    "before".into()
}
fn default_momentum() -> f32 {
    0.1
}
fn default_eps() -> f32 {
    1e-5
}

impl ModelConfig {
    /// The architecture part of `spec` (optimizer and seed are not architecture).
    pub fn from_spec(spec: &MlpSpec) -> Self {
        ModelConfig {
            input: spec.input,
            hidden: spec.hidden.clone(),
            output: spec.output,
            activation: spec.activation.to_string(),
            init: spec.init.to_string(),
            loss: spec.loss.name().to_string(),
            batch_norm: spec.batch_norm.map(|bn| BatchNormConfig {
                placement: match bn.placement {
                    BnPlacement::BeforeActivation => "before".into(),
                    BnPlacement::AfterActivation => "after".into(),
                },
                momentum: bn.momentum,
                eps: bn.eps,
            }),
            residual_every: spec.residual_every,
            layers: Self::layers_of(spec),
        }
    }

    /// Applies this architecture to `base` (which supplies optimizer and seed).
    pub fn to_spec(&self, base: MlpSpec) -> Result<MlpSpec> {
        let mut spec = MlpSpec {
            input: self.input,
            hidden: self.widths()?,
            output: self.output,
            activation: self.activation.parse().context("config 'activation'")?,
            init: self.init.parse().context("config 'init'")?,
            loss: self.loss.parse().context("config 'loss'")?,
            batch_norm: None,
            residual_every: self.residual_every,
            ..base
        };
        if let Some(bn) = &self.batch_norm {
            let placement = match bn.placement.as_str() {
                "before" => BnPlacement::BeforeActivation,
                "after" => BnPlacement::AfterActivation,
                other => anyhow::bail!(
                    "config 'batch_norm.placement' is '{other}'; expected 'before' or 'after'"
                ),
            };
            spec.batch_norm = Some(BatchNorm {
                placement,
                momentum: bn.momentum,
                eps: bn.eps,
            });
        }
        self.apply_layers(&mut spec)?;
        spec.validate().context("model configuration")?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a config always serializes")
    }

    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).context("reading the model configuration from checkpoint metadata")
    }
}

/// Metadata key under which checkpoints carry the training configuration.
pub const TRAINING_KEY: &str = "steadygrad.training";

/// How to train: everything a run needs beyond the architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seeds weights, data split and shuffling.
    #[serde(default)]
    pub seed: u64,
    /// Dropout probability after every hidden activation (training only).
    #[serde(default)]
    pub dropout: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<Clip>,
    #[serde(default)]
    pub schedule: LrSchedule,
    #[serde(default)]
    pub warmup_steps: usize,
}

fn default_epochs() -> usize {
    20
}
fn default_batch() -> usize {
    32
}

/// A whole `model.toml`: `[model]`, `[optimizer]`, `[training]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub optimizer: Optimizer,
    pub training: TrainingConfig,
    /// `[[regularization]]` groups of layers with their penalty and max-norm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regularization: Vec<Regularizer>,
}

impl Config {
    /// The configuration of `spec` trained with `epochs` and `batch_size`.
    pub fn from_spec(spec: &MlpSpec, epochs: usize, batch_size: usize) -> Self {
        let uniform = spec.dropout.first().copied().unwrap_or(0.0);
        Config {
            model: ModelConfig::from_spec(spec),
            optimizer: spec.optimizer,
            training: TrainingConfig {
                epochs,
                batch_size,
                seed: spec.seed,
                dropout: uniform,
                clip: spec.clip,
                schedule: spec.schedule.clone(),
                warmup_steps: spec.warmup_steps,
            },
            regularization: spec.regularization.clone(),
        }
    }

    pub fn to_spec(&self) -> Result<MlpSpec> {
        let t = &self.training;
        let mut base = MlpSpec::new(self.model.input, &self.model.widths()?, self.model.output)
            .optimizer(self.optimizer)
            .seed(t.seed)
            .schedule(t.schedule.clone())
            .warmup_steps(t.warmup_steps);
        if t.dropout > 0.0 {
            base = base.dropout(t.dropout);
        }
        base.clip = t.clip;
        base.regularization = self.regularization.clone();
        self.model.to_spec(base)
    }

    /// Reads and validates a TOML file, naming the file and the offending key.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading '{}'", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("'{}' is not a valid model configuration", path.display()))?;
        config
            .to_spec()
            .with_context(|| format!("'{}'", path.display()))?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serializes")
    }

    /// The default configuration as TOML with a comment on every option.
    pub fn commented_default() -> String {
        DEFAULT_CONFIG.replace("{ACTIVATIONS}", &activation_comment())
    }
}

/// The activation kinds from `Activation::ALL`, wrapped under the `activation =` line so
/// that a new kind shows up in the template without editing it.
fn activation_comment() -> String {
    let mut lines = vec![String::new()];
    for item in crate::Activation::syntax().split(", ") {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + item.len() > 60 {
            lines.push(item.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(item);
        }
    }
    lines.join(&format!("\n{:27}# ", ""))
}

const DEFAULT_CONFIG: &str = r#"# steadygrad model configuration (use with `steadygrad train --config FILE`).
# With --config, this file replaces the model, optimizer and training flags.

[model]
input = 2                  # features per row (must match the data)
hidden = [64, 64, 64, 64, 64, 64, 64, 64]   # units per hidden layer
output = 3                 # classes (cross-entropy) or targets per row (mse)
activation = "relu"        # {ACTIVATIONS}
init = "auto"              # auto glorot-uniform glorot-normal he-uniform he-normal
                           # lecun-uniform lecun-normal normal normal:MEAN:STD uniform:LOW:HIGH
loss = "cross-entropy"     # cross-entropy | mse
# residual_every = 2       # skip connection into every k-th hidden layer
# [model.batch_norm]       # batch normalization in every hidden layer
# placement = "before"     # before | after the activation
# momentum = 0.1
# eps = 1e-5
# [[model.layers]]         # one table per hidden layer, in order, for a mixed net: a key
# width = 64               # left out takes the setting above (width may replace 'hidden')
# activation = "tanh"
# init = "glorot-uniform"
# batch_norm = "none"      # none | before | after
# dropout = 0.1
# skip_from = "input"     # none | input | N: hidden layer N's output (replaces residual_every's)

[optimizer]
kind = "sgd"               # sgd | adam | adamw | rmsprop | adagrad | adamax | nadam
lr = 0.05
momentum = 0.0             # sgd only
nesterov = false           # sgd only
weight_decay = 0.0
# adam/adamw instead:
# kind = "adam"
# lr = 0.001
# betas = [0.9, 0.999]
# eps = 1e-8
# weight_decay = 0.0       # adamw default 0.01
# amsgrad = false
# rmsprop: alpha = 0.99, eps = 1e-8, weight_decay = 0.0, momentum = 0.0, centered = false
# adagrad: lr_decay = 0.0, weight_decay = 0.0, initial_accumulator_value = 0.0, eps = 1e-10
# adamax:  betas = [0.9, 0.999], eps = 1e-8, weight_decay = 0.0
# nadam:   betas = [0.9, 0.999], eps = 1e-8, weight_decay = 0.0, momentum_decay = 0.004

[training]
epochs = 20
batch_size = 32
seed = 42
dropout = 0.0              # after every hidden activation, training only
# clip = { norm = 1.0 }    # or { value = 0.5 }
schedule = { kind = "constant" }   # or { kind = "step", step_size = 10, gamma = 0.1 }
                                   # or { kind = "cosine", t_max = 20, eta_min = 0.0 }
                                   # or { kind = "exponential", gamma = 0.9 }
                                   # or { kind = "polynomial", total_iters = 5, power = 1.0 }
                                   # or { kind = "multistep", milestones = [30, 80], gamma = 0.1 }
                                   # or { kind = "one-cycle", max_lr = 0.1, total_steps = 1000,
                                   #      pct_start = 0.3, anneal = "cos", div_factor = 25.0,
                                   #      final_div_factor = 1e4, three_phase = false,
                                   #      cycle_momentum = true, base_momentum = 0.85,
                                   #      max_momentum = 0.95 }   (per batch; total_steps required)
                                   # or { kind = "plateau", factor = 0.1, patience = 10,
                                   #      threshold = 1e-4, threshold_mode = "rel", cooldown = 0,
                                   #      min_lr = 0.0, eps = 1e-8 }   (on the validation loss)
warmup_steps = 0           # linear warm-up over the first N steps

# Keras-style regularization, one table per group of linear layers (0 is the first
# hidden layer, the last is the output layer); a layer may be in one group only.
# [[regularization]]
# layers = [0, 1, 2]       # or a range: "0..3"
# l1 = 0.0                 # adds l1·Σ|w| to the loss
# l2 = 1e-4                # adds l2·Σw² to the loss (Keras's l2: gradient 2·l2·w)
# bias = false             # penalise the biases too
# max_norm = 3.0           # each unit's incoming weights rescaled to norm <= 3 after updates
"#;
