//! Optimizers, gradient clipping and learning-rate schedules, with PyTorch's definitions
//! and defaults.

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
    /// `torch.optim.Adam(lr, betas, eps, weight_decay)` with `amsgrad=False`; weight decay
    /// is the L2 term added to the gradient.
    Adam {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    },
    /// `torch.optim.AdamW`: Adam with decoupled weight decay `param *= 1 - lr·weight_decay`.
    AdamW {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    },
}

/// torch's Adam/AdamW defaults.
const BETAS: (f32, f32) = (0.9, 0.999);
const EPS: f32 = 1e-8;
const ADAMW_WEIGHT_DECAY: f32 = 1e-2;

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
        }
    }

    /// AdamW with torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw(lr: f32) -> Self {
        Optimizer::AdamW {
            lr,
            betas: BETAS,
            eps: EPS,
            weight_decay: ADAMW_WEIGHT_DECAY,
        }
    }

    /// The same optimizer with another weight decay (L2 for SGD and Adam, decoupled for
    /// AdamW).
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { weight_decay, .. }
            | Optimizer::Adam { weight_decay, .. }
            | Optimizer::AdamW { weight_decay, .. } => *weight_decay = wd,
        }
        self
    }

    /// The base learning rate (before any schedule).
    pub fn lr(self) -> f32 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. } => lr,
        }
    }

    pub fn weight_decay(self) -> f32 {
        match self {
            Optimizer::Sgd { weight_decay, .. }
            | Optimizer::Adam { weight_decay, .. }
            | Optimizer::AdamW { weight_decay, .. } => weight_decay,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "SGD",
            Optimizer::Adam { .. } => "Adam",
            Optimizer::AdamW { .. } => "AdamW",
        }
    }

    /// Suffixes of the per-parameter state tensors, as keys of torch's optimizer state.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd { momentum, .. } if momentum > 0.0 => &["momentum_buffer"],
            Optimizer::Sgd { .. } => &[],
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    pub fn validate(self) -> anyhow::Result<()> {
        let lr = self.lr();
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0,
            "learning rate must be a finite number > 0, got {lr}"
        );
        let wd = self.weight_decay();
        anyhow::ensure!(
            wd.is_finite() && wd >= 0.0,
            "{} weight decay must be a finite number >= 0, got {wd}",
            self.name()
        );
        match self {
            Optimizer::Sgd {
                momentum, nesterov, ..
            } => {
                anyhow::ensure!(
                    (0.0..1.0).contains(&momentum),
                    "SGD momentum must be in [0, 1), got {momentum}"
                );
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
            } => {
                let name = self.name();
                anyhow::ensure!(
                    (0.0..1.0).contains(&b1),
                    "{name} beta1 must be in [0, 1), got {b1}"
                );
                anyhow::ensure!(
                    (0.0..1.0).contains(&b2),
                    "{name} beta2 must be in [0, 1), got {b2}"
                );
                anyhow::ensure!(
                    eps.is_finite() && eps > 0.0,
                    "{name} eps must be a finite number > 0, got {eps}"
                );
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
            }
            | Optimizer::AdamW {
                lr,
                betas,
                eps,
                weight_decay,
            } => write!(
                f,
                "{}(lr={lr}, betas=({}, {}), eps={eps:e}, weight_decay={weight_decay})",
                self.name(),
                betas.0,
                betas.1
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

/// A learning-rate schedule over epochs, as torch's schedulers stepped once per epoch.
/// Combined with a per-step linear warm-up by [`crate::MlpSpec::warmup_steps`].
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    /// The optimizer's learning rate throughout.
    #[default]
    Constant,
    /// `torch.optim.lr_scheduler.StepLR(step_size, gamma)`:
    /// `lr · gamma^⌊epoch / step_size⌋`.
    Step { step_size: usize, gamma: f32 },
    /// `torch.optim.lr_scheduler.CosineAnnealingLR(T_max, eta_min)` in closed form:
    /// `eta_min + (lr - eta_min)·(1 + cos(π·epoch / T_max)) / 2`. Past `T_max` it keeps
    /// following the cosine back up, as torch's does.
    Cosine { t_max: usize, eta_min: f32 },
}

impl LrSchedule {
    /// The learning rate during epoch `epoch` (counted from 0) for base rate `base`.
    pub fn lr(self, base: f32, epoch: usize) -> f64 {
        let (base, e) = (base as f64, epoch as f64);
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => {
                let k = (epoch / step_size.max(1)) as i32;
                base * (gamma as f64).powi(k)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let eta = eta_min as f64;
                let phase = std::f64::consts::PI * e / t_max.max(1) as f64;
                eta + (base - eta) * (1.0 + phase.cos()) / 2.0
            }
        }
    }

    pub fn validate(self) -> anyhow::Result<()> {
        match self {
            LrSchedule::Constant => {}
            LrSchedule::Step { step_size, gamma } => {
                anyhow::ensure!(step_size > 0, "step schedule: step_size must be at least 1");
                anyhow::ensure!(
                    gamma.is_finite() && gamma > 0.0,
                    "step schedule: gamma must be a finite number > 0, got {gamma}"
                );
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                anyhow::ensure!(t_max > 0, "cosine schedule: t_max must be at least 1");
                anyhow::ensure!(
                    eta_min.is_finite() && eta_min >= 0.0,
                    "cosine schedule: eta_min must be a finite number >= 0, got {eta_min}"
                );
            }
        }
        Ok(())
    }
}

/// Linear warm-up factor for training step `step` (1 on the first): `min(1, step /
/// warmup_steps)`, so the first step uses `lr / warmup_steps` and step `warmup_steps` the
/// full rate. This is torch's `LinearLR(start_factor=1/W, total_iters=W-1)` stepped per
/// batch. No warm-up when `warmup_steps` is 0.
pub fn warmup_factor(step: u64, warmup_steps: usize) -> f64 {
    if warmup_steps == 0 {
        return 1.0;
    }
    (step as f64 / warmup_steps as f64).min(1.0)
}
