//! `torch.optim.lr_scheduler.ReduceLROnPlateau` on the validation loss: the settings (part
//! of the schedule) and the counters that change after every epoch (part of the model,
//! saved in checkpoints so a resumed run reduces the rate exactly when the whole run
//! would have).

/// How an epoch must beat the best loss to count as an improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdMode {
    /// `loss < best·(1 - threshold)`.
    #[default]
    Rel,
    /// `loss < best - threshold`.
    Abs,
}

fn default_factor() -> f32 {
    0.1
}
fn default_patience() -> usize {
    10
}
fn default_threshold() -> f32 {
    1e-4
}
fn default_eps() -> f32 {
    1e-8
}

/// `ReduceLROnPlateau(mode='min', factor, patience, threshold, threshold_mode, cooldown,
/// min_lr, eps)` with torch's defaults, on the validation loss. Only `mode='min'`: the
/// monitored value is always a loss.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plateau {
    /// The rate is multiplied by this after a plateau.
    #[serde(default = "default_factor")]
    pub factor: f32,
    /// Epochs without improvement tolerated; the rate drops on the next one.
    #[serde(default = "default_patience")]
    pub patience: usize,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    #[serde(default)]
    pub threshold_mode: ThresholdMode,
    /// Epochs after a reduction during which bad epochs are not counted.
    #[serde(default)]
    pub cooldown: usize,
    #[serde(default)]
    pub min_lr: f32,
    /// A reduction smaller than this is skipped.
    #[serde(default = "default_eps")]
    pub eps: f32,
}

impl Default for Plateau {
    fn default() -> Self {
        Plateau {
            factor: default_factor(),
            patience: default_patience(),
            threshold: default_threshold(),
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: default_eps(),
        }
    }
}

impl Plateau {
    pub fn validate(&self) -> anyhow::Result<()> {
        let f = self.factor;
        anyhow::ensure!(
            f > 0.0 && f < 1.0,
            "plateau schedule: factor (--plateau-factor) must be in (0, 1), got {f}"
        );
        for (what, v) in [
            ("threshold (--plateau-threshold)", self.threshold),
            ("min_lr (--min-lr)", self.min_lr),
            ("eps (--plateau-eps)", self.eps),
        ] {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "plateau schedule: {what} must be a finite number >= 0, got {v}"
            );
        }
        Ok(())
    }

    /// The counters before the first epoch, at learning rate `lr`.
    pub fn start(&self, lr: f32) -> PlateauState {
        PlateauState {
            best: f64::INFINITY,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            lr: lr as f64,
            last_epoch: 0,
        }
    }

    fn is_better(&self, current: f64, best: f64) -> bool {
        let t = self.threshold as f64;
        match self.threshold_mode {
            ThresholdMode::Rel => current < best * (1.0 - t),
            ThresholdMode::Abs => current < best - t,
        }
    }
}

/// ReduceLROnPlateau's counters and current rate (torch's `best`, `num_bad_epochs`,
/// `cooldown_counter`, the group's `lr` and `last_epoch`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlateauState {
    /// Lowest validation loss so far; infinite before the first epoch.
    #[serde(with = "infinite_as_null")]
    pub best: f64,
    pub num_bad_epochs: usize,
    pub cooldown_counter: usize,
    /// The rate the next epoch trains with (before warm-up), kept in f64 as torch keeps a
    /// Python float, so repeated reductions do not accumulate f32 rounding.
    pub lr: f64,
    pub last_epoch: usize,
}

impl PlateauState {
    /// torch's `ReduceLROnPlateau.step(loss)`; true when the rate was reduced. A NaN loss
    /// never improves.
    pub fn step(&mut self, p: &Plateau, loss: f64) -> bool {
        self.last_epoch += 1;
        let improved = p.is_better(loss, self.best);
        if improved {
            self.best = loss;
        }
        // Bad epochs during a cooldown do not count.
        let cooling = self.cooldown_counter > 0;
        self.cooldown_counter = self.cooldown_counter.saturating_sub(1);
        self.num_bad_epochs = if improved || cooling {
            0
        } else {
            self.num_bad_epochs + 1
        };
        if self.num_bad_epochs > p.patience {
            self.cooldown_counter = p.cooldown;
            self.num_bad_epochs = 0;
            let new = (self.lr * p.factor as f64).max(p.min_lr as f64);
            if self.lr - new > p.eps as f64 {
                self.lr = new;
                return true;
            }
        }
        false
    }
}

/// JSON has no infinity: the best loss before the first epoch is written as `null`.
mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}
