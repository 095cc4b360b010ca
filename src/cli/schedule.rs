//! The flags of the one-cycle and reduce-on-plateau schedules, apart from `args.rs` (the
//! epoch schedules' flags stay there).

use anyhow::Result;
use steadygrad::model::plateau::{Plateau, ThresholdMode};
use steadygrad::model::schedule::{Anneal, OneCycle};

/// How long a run is, for the schedules' defaults: cosine's `t_max` is the number of
/// epochs, one-cycle's `total_steps` the number of training steps.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub epochs: usize,
    pub steps_per_epoch: usize,
}

impl Span {
    /// `epochs` epochs over `rows` training rows in batches of `batch` (the last, smaller
    /// batch counted unless `drop_last`).
    pub fn new(epochs: usize, rows: usize, batch: usize, drop_last: bool) -> Span {
        let batch = batch.max(1);
        let partial = !drop_last && !rows.is_multiple_of(batch);
        Span {
            epochs,
            steps_per_epoch: rows / batch + usize::from(partial),
        }
    }

    /// One epoch of one step, for commands that take a handful of steps (check, bench).
    pub fn single() -> Span {
        Span {
            epochs: 1,
            steps_per_epoch: 1,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AnnealKind {
    Cos,
    Linear,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ThresholdModeKind {
    Rel,
    Abs,
}

/// `--schedule one-cycle` (torch's OneCycleLR).
#[derive(clap::Args, Clone, Debug)]
pub struct OneCycleArgs {
    /// One-cycle: the peak learning rate (OneCycleLR's max_lr); required, and it replaces --lr.
    #[arg(long)]
    pub max_lr: Option<f32>,
    /// One-cycle: training steps (batches) in the cycle [default: epochs × batches per epoch].
    #[arg(long)]
    pub total_steps: Option<usize>,
    /// One-cycle: fraction of the steps spent raising the rate.
    #[arg(long, default_value_t = 0.3)]
    pub pct_start: f32,
    /// One-cycle: how the rate moves within a phase (anneal_strategy).
    #[arg(long, value_enum, default_value_t = AnnealKind::Cos)]
    pub anneal: AnnealKind,
    /// One-cycle: the first rate is max_lr / div_factor.
    #[arg(long, default_value_t = 25.0)]
    pub div_factor: f32,
    /// One-cycle: the last rate is max_lr / (div_factor · final_div_factor).
    #[arg(long, default_value_t = 1e4)]
    pub final_div_factor: f32,
    /// One-cycle: go back down to the first rate before annihilating (three_phase).
    #[arg(long)]
    pub three_phase: bool,
    /// One-cycle: keep the optimizer's momentum / beta1 instead of cycling it.
    #[arg(long)]
    pub no_cycle_momentum: bool,
    /// One-cycle: the lowest momentum (SGD, RMSprop) or beta1 (Adam family), at the peak rate.
    #[arg(long, default_value_t = 0.85)]
    pub base_momentum: f32,
    /// One-cycle: the highest momentum or beta1, at the lowest rates.
    #[arg(long, default_value_t = 0.95)]
    pub max_momentum: f32,
}

impl OneCycleArgs {
    pub fn schedule(&self, span: Span) -> Result<OneCycle> {
        let max_lr = self.max_lr.ok_or_else(|| {
            anyhow::anyhow!(
                "--schedule one-cycle needs --max-lr, the peak learning rate (torch's \
                 OneCycleLR has no default either)"
            )
        })?;
        Ok(OneCycle {
            max_lr,
            total_steps: self
                .total_steps
                .unwrap_or(span.epochs * span.steps_per_epoch),
            pct_start: self.pct_start,
            anneal: match self.anneal {
                AnnealKind::Cos => Anneal::Cos,
                AnnealKind::Linear => Anneal::Linear,
            },
            div_factor: self.div_factor,
            final_div_factor: self.final_div_factor,
            three_phase: self.three_phase,
            cycle_momentum: !self.no_cycle_momentum,
            base_momentum: self.base_momentum,
            max_momentum: self.max_momentum,
        })
    }
}

/// `--schedule plateau` (torch's ReduceLROnPlateau on the validation loss). The names
/// carry `plateau` where `--early-stop`'s settings could be mistaken for them.
#[derive(clap::Args, Clone, Debug)]
pub struct PlateauArgs {
    /// Plateau: multiply the rate by this when the validation loss stops improving.
    #[arg(long, default_value_t = 0.1)]
    pub plateau_factor: f32,
    /// Plateau: epochs without improvement tolerated before reducing the rate.
    #[arg(long, default_value_t = 10)]
    pub plateau_patience: usize,
    /// Plateau: how much better the loss must get to count (relative or absolute, see --threshold-mode).
    #[arg(long, default_value_t = 1e-4)]
    pub plateau_threshold: f32,
    /// Plateau: rel (loss < best·(1 - threshold)) or abs (loss < best - threshold).
    #[arg(long, value_enum, default_value_t = ThresholdModeKind::Rel)]
    pub threshold_mode: ThresholdModeKind,
    /// Plateau: epochs after a reduction before bad epochs count again.
    #[arg(long, default_value_t = 0)]
    pub cooldown: usize,
    /// Plateau: the rate is never reduced below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f32,
    /// Plateau: reductions smaller than this are skipped.
    #[arg(long, default_value_t = 1e-8)]
    pub plateau_eps: f32,
}

impl PlateauArgs {
    pub fn schedule(&self) -> Plateau {
        Plateau {
            factor: self.plateau_factor,
            patience: self.plateau_patience,
            threshold: self.plateau_threshold,
            threshold_mode: match self.threshold_mode {
                ThresholdModeKind::Rel => ThresholdMode::Rel,
                ThresholdModeKind::Abs => ThresholdMode::Abs,
            },
            cooldown: self.cooldown,
            min_lr: self.min_lr,
            eps: self.plateau_eps,
        }
    }
}
