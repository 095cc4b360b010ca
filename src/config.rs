//! The model configuration as a file: TOML for people (`--config model.toml`), JSON in
//! checkpoint metadata (`steadygrad.config`). Names and values are strings where the
//! library has a parser (activation, init, loss), so the file reads like the CLI flags.

use crate::model::{BatchNorm, BnPlacement, MlpSpec};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Metadata key under which checkpoints carry the model configuration.
pub const CONFIG_KEY: &str = "steadygrad.config";

/// The architecture of an MLP: what is needed to rebuild it around saved weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub input: usize,
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
        }
    }

    /// Applies this architecture to `base` (which supplies optimizer and seed).
    pub fn to_spec(&self, base: MlpSpec) -> Result<MlpSpec> {
        let mut spec = MlpSpec {
            input: self.input,
            hidden: self.hidden.clone(),
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
