//! `[[model.layers]]`: one table per hidden layer with what differs from the model-wide
//! settings (activation, init, batch norm, dropout), as PyTorch and Keras users build
//! mixed nets (tanh below, ReLU above; batch norm on some layers).

use super::{BatchNormConfig, ModelConfig};
use crate::model::{BatchNorm, BnPlacement, MlpSpec};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One hidden layer's own settings; a key left out takes the model-wide value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Units; may stand in for `hidden` (all layers give one, or none does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// `none`, `before` or `after` the activation (momentum and eps are the model-wide
    /// `[model.batch_norm]`'s, else PyTorch's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    /// The skip connection into this layer: `none`, `input` (the network's) or `N`
    /// (hidden layer N's output, below this one), in place of `residual_every`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_from: Option<String>,
}

fn placement_name(p: BnPlacement) -> &'static str {
    match p {
        BnPlacement::BeforeActivation => "before",
        BnPlacement::AfterActivation => "after",
    }
}

impl ModelConfig {
    /// The hidden widths: `hidden`, or the layers' `width`s when `hidden` is left out.
    pub fn widths(&self) -> Result<Vec<usize>> {
        if self.layers.is_empty() {
            return Ok(self.hidden.clone());
        }
        if self.hidden.is_empty() {
            return self
                .layers
                .iter()
                .enumerate()
                .map(|(l, c)| {
                    c.width.with_context(|| {
                        format!("config [[model.layers]] entry {l} has no width (or give 'hidden')")
                    })
                })
                .collect();
        }
        anyhow::ensure!(
            self.layers.len() == self.hidden.len(),
            "config lists {} [[model.layers]] tables but 'hidden' has {} layers",
            self.layers.len(),
            self.hidden.len()
        );
        for (l, (c, &w)) in self.layers.iter().zip(&self.hidden).enumerate() {
            if let Some(cw) = c.width {
                anyhow::ensure!(
                    cw == w,
                    "config [[model.layers]] entry {l} has width {cw} but 'hidden' says {w}"
                );
            }
        }
        Ok(self.hidden.clone())
    }

    /// The per-layer tables of `spec`: only where a hidden layer differs from the
    /// model-wide settings; empty for a uniform net.
    pub(super) fn layers_of(spec: &MlpSpec) -> Vec<LayerConfig> {
        let n = spec.hidden.len();
        let uniform_dropout = spec.dropout.windows(2).all(|w| w[0] == w[1]);
        let layers: Vec<LayerConfig> = (0..n)
            .map(|l| {
                let act = spec.activation_of(l);
                let bn = spec.batch_norm_of(l);
                let init = spec.init_of_layer(l);
                LayerConfig {
                    width: None,
                    activation: (act != spec.activation).then(|| act.to_string()),
                    init: (init != spec.init).then(|| init.to_string()),
                    batch_norm: (bn != spec.batch_norm).then(|| {
                        bn.map_or("none", |b| placement_name(b.placement))
                            .to_string()
                    }),
                    dropout: (!uniform_dropout)
                        .then(|| spec.dropout.get(l).copied().unwrap_or(0.0)),
                    skip_from: (spec.skip_source(l) != spec.residual_source(l)).then(|| match spec
                        .skip_source(l)
                    {
                        None => "none".to_string(),
                        Some(0) => "input".to_string(),
                        Some(j) => (j - 1).to_string(),
                    }),
                }
            })
            .collect();
        if layers.iter().all(|c| *c == LayerConfig::default()) {
            Vec::new()
        } else {
            layers
        }
    }

    /// Applies the per-layer tables to `spec` (built from the model-wide settings).
    pub(super) fn apply_layers(&self, spec: &mut MlpSpec) -> Result<()> {
        let model_bn = self.batch_norm.clone().unwrap_or(BatchNormConfig {
            placement: "before".into(),
            momentum: 0.1,
            eps: 1e-5,
        });
        for (l, c) in self.layers.iter().enumerate() {
            let at = || format!("config [[model.layers]] entry {l}");
            if let Some(a) = &c.activation {
                spec.layer_activations.push((
                    l,
                    a.parse().with_context(|| format!("{}: activation", at()))?,
                ));
            }
            if let Some(i) = &c.init {
                spec.layer_inits
                    .push((l, i.parse().with_context(|| format!("{}: init", at()))?));
            }
            if let Some(b) = &c.batch_norm {
                let placement = match b.as_str() {
                    "none" => None,
                    "before" => Some(BnPlacement::BeforeActivation),
                    "after" => Some(BnPlacement::AfterActivation),
                    other => anyhow::bail!(
                        "{}: batch_norm is '{other}'; expected 'none', 'before' or 'after'",
                        at()
                    ),
                };
                spec.layer_batch_norms.push((
                    l,
                    placement.map(|placement| BatchNorm {
                        placement,
                        momentum: model_bn.momentum,
                        eps: model_bn.eps,
                    }),
                ));
            }
            if let Some(from) = &c.skip_from {
                let src = match from.as_str() {
                    "none" => None,
                    "input" => Some(0),
                    n => Some(n.parse::<usize>().map(|k| k + 1).map_err(|_| {
                        anyhow::anyhow!(
                            "{}: skip_from is '{n}'; expected 'none', 'input' or a hidden \
                             layer's number",
                            at()
                        )
                    })?),
                };
                spec.layer_skips.push((l, src));
            }
            if let Some(p) = c.dropout {
                if spec.dropout.len() != spec.hidden.len() {
                    spec.dropout = vec![0.0; spec.hidden.len()];
                }
                spec.dropout[l] = p;
            }
        }
        Ok(())
    }
}
