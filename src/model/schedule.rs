//! Learning-rate schedules with `torch.optim.lr_scheduler`'s definitions: the epoch
//! schedules in closed form, one-cycle per training step, reduce-on-plateau on the
//! validation loss, and the per-step linear warm-up that multiplies any of them.

pub use super::plateau::{Plateau, PlateauState, ThresholdMode};

/// A learning-rate schedule: torch's epoch schedulers stepped once per epoch, `OneCycleLR`
/// stepped once per batch, or `ReduceLROnPlateau` stepped after each epoch's validation.
/// Combined with a per-step linear warm-up by [`crate::MlpSpec::warmup_steps`].
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
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
    /// `torch.optim.lr_scheduler.ExponentialLR(gamma)`: `lr · gamma^epoch`.
    Exponential { gamma: f32 },
    /// `torch.optim.lr_scheduler.PolynomialLR(total_iters, power)`:
    /// `lr · (1 − min(epoch, total_iters) / total_iters)^power`, reaching 0 at
    /// `total_iters` and staying there (torch's defaults: 5 and 1.0).
    Polynomial { total_iters: usize, power: f32 },
    /// `torch.optim.lr_scheduler.MultiStepLR(milestones, gamma)`: `lr · gamma^k` where `k`
    /// is the number of milestones (epochs, increasing) at or before `epoch`.
    MultiStep { milestones: Vec<usize>, gamma: f32 },
    /// `torch.optim.lr_scheduler.OneCycleLR`, stepped after every training step; it
    /// replaces the optimizer's learning rate (and, with `cycle_momentum`, its momentum or
    /// beta1).
    #[serde(rename = "one-cycle")]
    OneCycle(OneCycle),
    /// `torch.optim.lr_scheduler.ReduceLROnPlateau` on the validation loss, stepped after
    /// each epoch; its counters live in the model ([`PlateauState`]).
    Plateau(Plateau),
}

impl LrSchedule {
    /// The learning rate during epoch `epoch` (counted from 0) for base rate `base`. For
    /// one-cycle it is the first step's rate (see [`LrSchedule::rate`]); for plateau the
    /// base rate, which the model's [`PlateauState`] then lowers.
    pub fn lr(&self, base: f32, epoch: usize) -> f64 {
        self.rate(base, epoch, 1)
    }

    /// The learning rate of training step `step` (1 on the first) during epoch `epoch`
    /// (from 0), before warm-up.
    pub fn rate(&self, base: f32, epoch: usize, step: u64) -> f64 {
        let (base, e) = (base as f64, epoch as f64);
        match *self {
            LrSchedule::Constant | LrSchedule::Plateau(_) => base,
            LrSchedule::OneCycle(c) => c.at(step.saturating_sub(1)).0,
            LrSchedule::MultiStep {
                ref milestones,
                gamma,
            } => {
                let k = milestones.iter().filter(|&&m| m <= epoch).count() as i32;
                base * (gamma as f64).powi(k)
            }
            LrSchedule::Step { step_size, gamma } => {
                let k = (epoch / step_size.max(1)) as i32;
                base * (gamma as f64).powi(k)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let eta = eta_min as f64;
                let phase = std::f64::consts::PI * e / t_max.max(1) as f64;
                eta + (base - eta) * (1.0 + phase.cos()) / 2.0
            }
            LrSchedule::Exponential { gamma } => base * (gamma as f64).powi(epoch as i32),
            LrSchedule::Polynomial { total_iters, power } => {
                let t = total_iters.max(1) as f64;
                base * (1.0 - e.min(t) / t).powf(power as f64)
            }
        }
    }

    /// The momentum (SGD, RMSprop) or beta1 (Adam family) of training step `step`, when
    /// the schedule cycles it.
    pub fn momentum(&self, step: u64) -> Option<f64> {
        match self {
            LrSchedule::OneCycle(c) if c.cycle_momentum => Some(c.at(step.saturating_sub(1)).1),
            _ => None,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        match *self {
            LrSchedule::Constant => {}
            LrSchedule::OneCycle(c) => c.validate()?,
            LrSchedule::Plateau(p) => p.validate()?,
            LrSchedule::MultiStep {
                ref milestones,
                gamma,
            } => {
                anyhow::ensure!(
                    !milestones.is_empty() && milestones.windows(2).all(|w| w[0] < w[1]),
                    "multistep schedule: milestones must be a non-empty, increasing list of \
                     epochs, got {milestones:?}"
                );
                anyhow::ensure!(
                    gamma.is_finite() && gamma > 0.0,
                    "multistep schedule: gamma must be a finite number > 0, got {gamma}"
                );
            }
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
            LrSchedule::Exponential { gamma } => {
                anyhow::ensure!(
                    gamma.is_finite() && gamma > 0.0 && gamma <= 1.0,
                    "exponential schedule: gamma must be in (0, 1], got {gamma}"
                );
            }
            LrSchedule::Polynomial { total_iters, power } => {
                anyhow::ensure!(
                    total_iters > 0,
                    "polynomial schedule: total_iters must be at least 1"
                );
                anyhow::ensure!(
                    power.is_finite() && power > 0.0,
                    "polynomial schedule: power must be a finite number > 0, got {power}"
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

/// How one-cycle moves between two rates within a phase (torch's `anneal_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anneal {
    /// `end + (start - end)/2·(cos(π·pct) + 1)`.
    #[default]
    Cos,
    /// `start + (end - start)·pct`.
    Linear,
}

impl Anneal {
    fn apply(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            Anneal::Cos => end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0),
            Anneal::Linear => (end - start) * pct + start,
        }
    }
}

fn default_pct_start() -> f32 {
    0.3
}
fn default_div_factor() -> f32 {
    25.0
}
fn default_final_div_factor() -> f32 {
    1e4
}
fn default_true() -> bool {
    true
}
fn default_base_momentum() -> f32 {
    0.85
}
fn default_max_momentum() -> f32 {
    0.95
}

/// `torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy,
/// cycle_momentum, base_momentum, max_momentum, div_factor, final_div_factor,
/// three_phase)` with torch's defaults. The rate rises from `max_lr / div_factor` to
/// `max_lr` over the first `pct_start` of the steps, then falls to
/// `max_lr / (div_factor·final_div_factor)`; momentum moves the opposite way between
/// `max_momentum` and `base_momentum`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycle {
    pub max_lr: f32,
    /// Training steps (batches) in the whole cycle; training further is an error.
    pub total_steps: usize,
    #[serde(default = "default_pct_start")]
    pub pct_start: f32,
    #[serde(default)]
    pub anneal: Anneal,
    #[serde(default = "default_div_factor")]
    pub div_factor: f32,
    #[serde(default = "default_final_div_factor")]
    pub final_div_factor: f32,
    /// A third phase: back down to the initial rate by `2·pct_start`, then annihilate.
    #[serde(default)]
    pub three_phase: bool,
    #[serde(default = "default_true")]
    pub cycle_momentum: bool,
    #[serde(default = "default_base_momentum")]
    pub base_momentum: f32,
    #[serde(default = "default_max_momentum")]
    pub max_momentum: f32,
}

/// One phase of the cycle: rates and momenta at its start and its last step.
struct Phase {
    end_step: f64,
    lr: (f64, f64),
    momentum: (f64, f64),
}

impl OneCycle {
    /// torch's defaults around `max_lr` and `total_steps`.
    pub fn new(max_lr: f32, total_steps: usize) -> Self {
        OneCycle {
            max_lr,
            total_steps,
            pct_start: default_pct_start(),
            anneal: Anneal::Cos,
            div_factor: default_div_factor(),
            final_div_factor: default_final_div_factor(),
            three_phase: false,
            cycle_momentum: true,
            base_momentum: default_base_momentum(),
            max_momentum: default_max_momentum(),
        }
    }

    fn phases(&self) -> Vec<Phase> {
        let (total, pct) = (self.total_steps as f64, self.pct_start as f64);
        let max_lr = self.max_lr as f64;
        let initial = max_lr / self.div_factor as f64;
        let min = initial / self.final_div_factor as f64;
        let (lo, hi) = (self.base_momentum as f64, self.max_momentum as f64);
        // torch's float end steps: `pct_start·total_steps - 1` is not rounded.
        let rise = Phase {
            end_step: pct * total - 1.0,
            lr: (initial, max_lr),
            momentum: (hi, lo),
        };
        if self.three_phase {
            vec![
                rise,
                Phase {
                    end_step: 2.0 * pct * total - 2.0,
                    lr: (max_lr, initial),
                    momentum: (lo, hi),
                },
                Phase {
                    end_step: total - 1.0,
                    lr: (initial, min),
                    momentum: (hi, hi),
                },
            ]
        } else {
            vec![
                rise,
                Phase {
                    end_step: total - 1.0,
                    lr: (max_lr, min),
                    momentum: (lo, hi),
                },
            ]
        }
    }

    /// Learning rate and momentum at torch's `step_num` (0 for the first batch), as
    /// `OneCycleLR.get_lr` computes them.
    pub fn at(&self, step_num: u64) -> (f64, f64) {
        let step = step_num as f64;
        let phases = self.phases();
        let mut start = 0.0;
        for (i, p) in phases.iter().enumerate() {
            if step <= p.end_step || i == phases.len() - 1 {
                let pct = (step - start) / (p.end_step - start);
                return (
                    self.anneal.apply(p.lr.0, p.lr.1, pct),
                    self.anneal.apply(p.momentum.0, p.momentum.1, pct),
                );
            }
            start = p.end_step;
        }
        unreachable!("the last phase always matches")
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, v) in [
            ("max_lr (--max-lr)", self.max_lr),
            ("div_factor (--div-factor)", self.div_factor),
            (
                "final_div_factor (--final-div-factor)",
                self.final_div_factor,
            ),
        ] {
            anyhow::ensure!(
                v.is_finite() && v > 0.0,
                "one-cycle schedule: {what} must be a finite number > 0, got {v}"
            );
        }
        anyhow::ensure!(
            self.total_steps > 0,
            "one-cycle schedule: total_steps (--total-steps) must be at least 1"
        );
        let pct = self.pct_start;
        anyhow::ensure!(
            pct > 0.0 && pct < 1.0,
            "one-cycle schedule: pct_start (--pct-start) must be in (0, 1), got {pct}"
        );
        if self.cycle_momentum {
            for (what, m) in [
                ("base_momentum (--base-momentum)", self.base_momentum),
                ("max_momentum (--max-momentum)", self.max_momentum),
            ] {
                anyhow::ensure!(
                    (0.0..1.0).contains(&m),
                    "one-cycle schedule: {what} must be in [0, 1), got {m}"
                );
            }
            anyhow::ensure!(
                self.base_momentum <= self.max_momentum,
                "one-cycle schedule: base_momentum ({}) must not exceed max_momentum ({})",
                self.base_momentum,
                self.max_momentum
            );
        }
        // torch divides by each phase's length; an empty or reversed phase would give a
        // NaN or a nonsensical rate, so it is refused here.
        let mut start = 0.0;
        for (i, p) in self.phases().iter().enumerate() {
            anyhow::ensure!(
                p.end_step > start,
                "one-cycle schedule: phase {} is empty with total_steps {} and pct_start {pct}{}",
                i + 1,
                self.total_steps,
                if self.three_phase {
                    " (three_phase needs 1 < pct_start·total_steps < (total_steps + 1)/2)"
                } else {
                    " (needs pct_start·total_steps > 1)"
                }
            );
            start = p.end_step;
        }
        Ok(())
    }
}
