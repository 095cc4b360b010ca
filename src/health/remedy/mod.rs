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

mod judge;
mod trial;

pub use judge::{Measure, Trial, TrialOptions, TrialReport, Verdict};
pub use trial::run_trials;

use crate::health::WarningKind;
use crate::model::plateau::Plateau;
use crate::model::{BatchNorm, BnPlacement, Clip, Init, LrSchedule, MlpSpec, Optimizer};
use crate::ops::Activation;
use anyhow::Result;
use serde::Serialize;
use std::fmt;

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
    /// ReduceLROnPlateau on the validation loss with this patience (torch's other
    /// defaults), in place of a constant rate.
    Plateau { patience: usize },
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
            Change::Plateau { patience } => {
                s.schedule = LrSchedule::Plateau(Plateau {
                    patience,
                    ..Plateau::default()
                })
            }
        }
        s
    }
}

fn with_lr(opt: Optimizer, new: f32) -> Optimizer {
    opt.with_lr(new)
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
    if current.family() != suited.family() {
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

/// Remedies that change the learning-rate schedule, for findings a schedule addresses:
/// reduce-on-plateau when the validation loss rose (it needs validation data, and only
/// replaces a constant rate). The patience is a tenth of the `epochs` the trial and the
/// user's run train, at most torch's 10, so a trial is long enough to see a reduction.
pub fn schedule_candidates(
    spec: &MlpSpec,
    findings: &[WarningKind],
    has_valid: bool,
    epochs: usize,
) -> Vec<Remedy> {
    let rising = findings.contains(&WarningKind::RisingValidationLoss);
    if !(rising && has_valid && spec.schedule == LrSchedule::Constant) {
        return Vec::new();
    }
    let patience = (epochs / 10).min(Plateau::default().patience);
    vec![Remedy {
        label: format!("lr ÷10 on plateau (patience {patience})"),
        flags: format!("--schedule plateau --plateau-patience {patience}"),
        change: Change::Plateau { patience },
    }]
}
