//! Optimizers and gradient clipping, with PyTorch's definitions
//! and defaults.

pub use super::early_stopping::{EarlyStopping, Monitor, StopDecision};
pub use super::schedule::{warmup_factor, LrSchedule};
use std::fmt;

/// The optimizer that updates parameters each step. Its state (momentum buffers, Adam's
/// moments) lives on the device as persistent tensors named after the parameter, e.g.
/// `layers.0.linear.weight.exp_avg`. Weight decay applies to every parameter, biases
/// included, as torch does when given `model.parameters()`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Optimizer {
    /// `torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov)`. Dampening is
    /// always 0 (torch's default, and what Nesterov requires).
    Sgd {
        lr: f32,
        momentum: f32,
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f32,
    },
    /// `torch.optim.Adam(lr, betas, eps, weight_decay, amsgrad)`; weight decay is the L2
    /// term added to the gradient.
    Adam {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        /// Divide by the running maximum of the second moment (`max_exp_avg_sq`).
        #[serde(default)]
        amsgrad: bool,
    },
    /// `torch.optim.AdamW`: Adam with decoupled weight decay `param *= 1 - lr·weight_decay`.
    AdamW {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        #[serde(default)]
        amsgrad: bool,
    },
    /// `torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)`.
    RmsProp {
        lr: f32,
        /// Smoothing constant of the squared-gradient average.
        alpha: f32,
        eps: f32,
        weight_decay: f32,
        momentum: f32,
        /// Divide by the estimated variance (`square_avg - grad_avg²`) instead.
        centered: bool,
    },
    /// `torch.optim.Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)`.
    Adagrad {
        lr: f32,
        lr_decay: f32,
        weight_decay: f32,
        initial_accumulator_value: f32,
        eps: f32,
    },
    /// `torch.optim.Adamax(lr, betas, eps, weight_decay)`.
    Adamax {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    },
    /// `torch.optim.NAdam(lr, betas, eps, weight_decay, momentum_decay)` with L2 weight
    /// decay (`decoupled_weight_decay=False`).
    NAdam {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        momentum_decay: f32,
    },
}

/// torch's Adam/AdamW defaults.
const BETAS: (f32, f32) = (0.9, 0.999);
const EPS: f32 = 1e-8;
const ADAMW_WEIGHT_DECAY: f32 = 1e-2;
/// torch's RMSprop smoothing constant.
pub const RMSPROP_ALPHA: f32 = 0.99;
/// torch's Adagrad eps.
pub const ADAGRAD_EPS: f32 = 1e-10;
/// torch's NAdam momentum decay ψ.
pub const NADAM_MOMENTUM_DECAY: f32 = 4e-3;

/// One per-parameter state tensor of an optimizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateTensor {
    /// torch's key in `optimizer.state[param]`.
    pub key: &'static str,
    /// A 1-element tensor (torch keeps a 0-d scalar) rather than one of the parameter's
    /// shape.
    pub scalar: bool,
    /// Every element's value before the first step.
    pub init: f32,
}

const fn zeros(key: &'static str) -> StateTensor {
    StateTensor {
        key,
        scalar: false,
        init: 0.0,
    }
}

impl Optimizer {
    /// Plain SGD: no momentum, no weight decay.
    pub fn sgd(lr: f32) -> Self {
        Optimizer::Sgd {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// SGD with (heavy-ball) momentum.
    pub fn sgd_momentum(lr: f32, momentum: f32) -> Self {
        Optimizer::Sgd {
            lr,
            momentum,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// SGD with Nesterov momentum.
    pub fn nesterov(lr: f32, momentum: f32) -> Self {
        Optimizer::Sgd {
            lr,
            momentum,
            nesterov: true,
            weight_decay: 0.0,
        }
    }

    /// Adam with torch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn adam(lr: f32) -> Self {
        Optimizer::Adam {
            lr,
            betas: BETAS,
            eps: EPS,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }

    /// AdamW with torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw(lr: f32) -> Self {
        Optimizer::AdamW {
            lr,
            betas: BETAS,
            eps: EPS,
            weight_decay: ADAMW_WEIGHT_DECAY,
            amsgrad: false,
        }
    }

    /// RMSprop with torch's defaults: alpha 0.99, eps 1e-8, no momentum, not centered.
    pub fn rmsprop(lr: f32) -> Self {
        Optimizer::RmsProp {
            lr,
            alpha: RMSPROP_ALPHA,
            eps: EPS,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }

    /// Adagrad with torch's defaults: lr_decay 0, initial_accumulator_value 0, eps 1e-10.
    pub fn adagrad(lr: f32) -> Self {
        Optimizer::Adagrad {
            lr,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: ADAGRAD_EPS,
        }
    }

    /// Adamax with torch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn adamax(lr: f32) -> Self {
        Optimizer::Adamax {
            lr,
            betas: BETAS,
            eps: EPS,
            weight_decay: 0.0,
        }
    }

    /// NAdam with torch's defaults: betas (0.9, 0.999), eps 1e-8, momentum_decay 4e-3.
    pub fn nadam(lr: f32) -> Self {
        Optimizer::NAdam {
            lr,
            betas: BETAS,
            eps: EPS,
            weight_decay: 0.0,
            momentum_decay: NADAM_MOMENTUM_DECAY,
        }
    }

    /// Adam or AdamW with AMSGrad switched on or off; other optimizers are unchanged.
    pub fn with_amsgrad(mut self, on: bool) -> Self {
        if let Optimizer::Adam { amsgrad, .. } | Optimizer::AdamW { amsgrad, .. } = &mut self {
            *amsgrad = on;
        }
        self
    }

    /// The same optimizer with another weight decay (L2 for all but AdamW, decoupled for
    /// AdamW).
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { weight_decay, .. }
            | Optimizer::Adam { weight_decay, .. }
            | Optimizer::AdamW { weight_decay, .. }
            | Optimizer::RmsProp { weight_decay, .. }
            | Optimizer::Adagrad { weight_decay, .. }
            | Optimizer::Adamax { weight_decay, .. }
            | Optimizer::NAdam { weight_decay, .. } => *weight_decay = wd,
        }
        self
    }

    /// The same optimizer with another `eps` (SGD has none and is unchanged).
    pub fn with_eps(mut self, new: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { .. } => {}
            Optimizer::Adam { eps, .. }
            | Optimizer::AdamW { eps, .. }
            | Optimizer::RmsProp { eps, .. }
            | Optimizer::Adagrad { eps, .. }
            | Optimizer::Adamax { eps, .. }
            | Optimizer::NAdam { eps, .. } => *eps = new,
        }
        self
    }

    /// The same optimizer with another base learning rate.
    pub fn with_lr(mut self, new: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. }
            | Optimizer::RmsProp { lr, .. }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Adamax { lr, .. }
            | Optimizer::NAdam { lr, .. } => *lr = new,
        }
        self
    }

    /// The base learning rate (before any schedule).
    pub fn lr(self) -> f32 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. }
            | Optimizer::RmsProp { lr, .. }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Adamax { lr, .. }
            | Optimizer::NAdam { lr, .. } => lr,
        }
    }

    pub fn weight_decay(self) -> f32 {
        match self {
            Optimizer::Sgd { weight_decay, .. }
            | Optimizer::Adam { weight_decay, .. }
            | Optimizer::AdamW { weight_decay, .. }
            | Optimizer::RmsProp { weight_decay, .. }
            | Optimizer::Adagrad { weight_decay, .. }
            | Optimizer::Adamax { weight_decay, .. }
            | Optimizer::NAdam { weight_decay, .. } => weight_decay,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "SGD",
            Optimizer::Adam { .. } => "Adam",
            Optimizer::AdamW { .. } => "AdamW",
            Optimizer::RmsProp { .. } => "RMSprop",
            Optimizer::Adagrad { .. } => "Adagrad",
            Optimizer::Adamax { .. } => "Adamax",
            Optimizer::NAdam { .. } => "NAdam",
        }
    }

    /// The per-parameter state tensors, with torch's state keys and initial values.
    pub fn state(self) -> Vec<StateTensor> {
        match self {
            Optimizer::Sgd { momentum, .. } if momentum > 0.0 => vec![zeros("momentum_buffer")],
            Optimizer::Sgd { .. } => vec![],
            Optimizer::Adam { amsgrad, .. } | Optimizer::AdamW { amsgrad, .. } => {
                let mut v = vec![zeros("exp_avg"), zeros("exp_avg_sq")];
                if amsgrad {
                    v.push(zeros("max_exp_avg_sq"));
                }
                v
            }
            Optimizer::RmsProp {
                momentum, centered, ..
            } => {
                let mut v = vec![zeros("square_avg")];
                if momentum > 0.0 {
                    v.push(zeros("momentum_buffer"));
                }
                if centered {
                    v.push(zeros("grad_avg"));
                }
                v
            }
            Optimizer::Adagrad {
                initial_accumulator_value,
                ..
            } => vec![StateTensor {
                key: "sum",
                scalar: false,
                init: initial_accumulator_value,
            }],
            Optimizer::Adamax { .. } => vec![zeros("exp_avg"), zeros("exp_inf")],
            // torch starts the product of the momentum coefficients at 1.
            Optimizer::NAdam { .. } => vec![
                zeros("exp_avg"),
                zeros("exp_avg_sq"),
                StateTensor {
                    key: "mu_product",
                    scalar: true,
                    init: 1.0,
                },
            ],
        }
    }

    /// Suffixes of the per-parameter state tensors, as keys of torch's optimizer state.
    pub fn state_names(self) -> Vec<&'static str> {
        self.state().into_iter().map(|s| s.key).collect()
    }

    pub fn validate(self) -> anyhow::Result<()> {
        let lr = self.lr();
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0,
            "learning rate must be a finite number > 0, got {lr}"
        );
        let name = self.name();
        let wd = self.weight_decay();
        anyhow::ensure!(
            wd.is_finite() && wd >= 0.0,
            "{name} weight decay must be a finite number >= 0, got {wd}"
        );
        let unit = |what: &str, v: f32| {
            anyhow::ensure!(
                (0.0..1.0).contains(&v),
                "{name} {what} must be in [0, 1), got {v}"
            );
            Ok(())
        };
        let positive = |what: &str, v: f32| {
            anyhow::ensure!(
                v.is_finite() && v > 0.0,
                "{name} {what} must be a finite number > 0, got {v}"
            );
            Ok(())
        };
        let non_negative = |what: &str, v: f32| {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{name} {what} must be a finite number >= 0, got {v}"
            );
            Ok(())
        };
        match self {
            Optimizer::Sgd {
                momentum, nesterov, ..
            } => {
                unit("momentum", momentum)?;
                anyhow::ensure!(
                    !nesterov || momentum > 0.0,
                    "Nesterov momentum needs a momentum > 0 (got {momentum})"
                );
            }
            Optimizer::Adam {
                betas: (b1, b2),
                eps,
                ..
            }
            | Optimizer::AdamW {
                betas: (b1, b2),
                eps,
                ..
            }
            | Optimizer::Adamax {
                betas: (b1, b2),
                eps,
                ..
            } => {
                unit("beta1", b1)?;
                unit("beta2", b2)?;
                positive("eps", eps)?;
            }
            Optimizer::NAdam {
                betas: (b1, b2),
                eps,
                momentum_decay,
                ..
            } => {
                unit("beta1", b1)?;
                unit("beta2", b2)?;
                positive("eps", eps)?;
                non_negative("momentum_decay", momentum_decay)?;
            }
            Optimizer::RmsProp {
                alpha,
                eps,
                momentum,
                ..
            } => {
                unit("alpha", alpha)?;
                positive("eps", eps)?;
                unit("momentum", momentum)?;
            }
            Optimizer::Adagrad {
                lr_decay,
                initial_accumulator_value,
                eps,
                ..
            } => {
                non_negative("lr_decay", lr_decay)?;
                non_negative("initial_accumulator_value", initial_accumulator_value)?;
                positive("eps", eps)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => {
                write!(f, "SGD(lr={lr}")?;
                if momentum > 0.0 {
                    write!(f, ", momentum={momentum}")?;
                }
                if nesterov {
                    write!(f, ", nesterov")?;
                }
                if weight_decay > 0.0 {
                    write!(f, ", weight_decay={weight_decay}")?;
                }
                write!(f, ")")
            }
            Optimizer::Adam {
                lr,
                betas,
                eps,
                weight_decay,
                amsgrad,
            }
            | Optimizer::AdamW {
                lr,
                betas,
                eps,
                weight_decay,
                amsgrad,
            } => {
                write!(
                    f,
                    "{}(lr={lr}, betas=({}, {}), eps={eps:e}, weight_decay={weight_decay}",
                    self.name(),
                    betas.0,
                    betas.1
                )?;
                if amsgrad {
                    write!(f, ", amsgrad")?;
                }
                write!(f, ")")
            }
            Optimizer::RmsProp {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => {
                write!(
                    f,
                    "RMSprop(lr={lr}, alpha={alpha}, eps={eps:e}, weight_decay={weight_decay}, \
                     momentum={momentum}"
                )?;
                if centered {
                    write!(f, ", centered")?;
                }
                write!(f, ")")
            }
            Optimizer::Adagrad {
                lr,
                lr_decay,
                weight_decay,
                initial_accumulator_value,
                eps,
            } => write!(
                f,
                "Adagrad(lr={lr}, lr_decay={lr_decay}, weight_decay={weight_decay}, \
                 initial_accumulator_value={initial_accumulator_value}, eps={eps:e})"
            ),
            Optimizer::Adamax {
                lr,
                betas,
                eps,
                weight_decay,
            } => write!(
                f,
                "Adamax(lr={lr}, betas=({}, {}), eps={eps:e}, weight_decay={weight_decay})",
                betas.0, betas.1
            ),
            Optimizer::NAdam {
                lr,
                betas,
                eps,
                weight_decay,
                momentum_decay,
            } => write!(
                f,
                "NAdam(lr={lr}, betas=({}, {}), eps={eps:e}, weight_decay={weight_decay}, \
                 momentum_decay={momentum_decay})",
                betas.0, betas.1
            ),
        }
    }
}

/// Gradient clipping over all trainable parameters, applied after the backward pass and
/// before the update.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clip {
    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: with `total = √Σ‖g‖²`, every
    /// gradient is multiplied by `min(max_norm / (total + 1e-6), 1)`. The total is
    /// computed on the device and kept for [`crate::Model::last_grad_norm`].
    Norm(f32),
    /// `torch.nn.utils.clip_grad_value_(params, v)`: every element clamped to `[-v, v]`.
    Value(f32),
}

impl Clip {
    pub fn validate(self) -> anyhow::Result<()> {
        let (what, v) = match self {
            Clip::Norm(v) => ("clip max norm", v),
            Clip::Value(v) => ("clip value", v),
        };
        anyhow::ensure!(
            v.is_finite() && v > 0.0,
            "{what} must be a finite number > 0, got {v}"
        );
        Ok(())
    }
}
