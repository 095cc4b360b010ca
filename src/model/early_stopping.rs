//! Early stopping on a validation metric and the choice of the best epoch (Keras's
//! `EarlyStopping` with `restore_best_weights`), kept apart from the optimizers and
//! schedules, which act within a step or an epoch.

/// The validation metric that early stopping and the best checkpoint follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// The validation loss; lower is better (Keras's `val_loss`).
    ValLoss,
    /// The validation accuracy; higher is better (Keras's `val_accuracy`).
    ValAccuracy,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val loss",
            Monitor::ValAccuracy => "val accuracy",
        }
    }
}

/// What [`EarlyStopping::update`] concluded about one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopDecision {
    /// The epoch is the new best: keep its weights.
    pub improved: bool,
    /// `patience` epochs in a row failed to improve: stop training.
    pub stop: bool,
}

/// Keras's `EarlyStopping(monitor, min_delta, patience)`: an epoch improves when it beats
/// the best value so far by more than `min_delta` (lower for the loss, higher for the
/// accuracy); training stops after `patience` epochs in a row without improvement. The
/// best epoch is the last one that improved, which is what `restore_best_weights` and
/// the best checkpoint keep.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    /// Epochs without improvement before stopping; `None` tracks the best epoch only.
    pub patience: Option<usize>,
    pub min_delta: f64,
    best: Option<(usize, f64)>,
    wait: usize,
}

impl EarlyStopping {
    pub fn new(monitor: Monitor, patience: Option<usize>, min_delta: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            min_delta.is_finite() && min_delta >= 0.0,
            "--min-delta must be a finite number >= 0, got {min_delta}"
        );
        anyhow::ensure!(
            patience != Some(0),
            "--early-stop needs a patience of at least 1 epoch"
        );
        Ok(EarlyStopping {
            monitor,
            patience,
            min_delta,
            best: None,
            wait: 0,
        })
    }

    /// Records epoch `epoch`'s monitored `value`. A NaN never improves.
    pub fn update(&mut self, epoch: usize, value: f64) -> StopDecision {
        let improved = match self.best {
            None => !value.is_nan(),
            Some((_, best)) => match self.monitor {
                Monitor::ValLoss => value + self.min_delta < best,
                Monitor::ValAccuracy => value - self.min_delta > best,
            },
        };
        if improved {
            self.best = Some((epoch, value));
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        StopDecision {
            improved,
            stop: self.patience.is_some_and(|p| self.wait >= p),
        }
    }

    /// Starts from a best epoch found before (a resumed run's best checkpoint), so later
    /// epochs must beat it; the patience count starts afresh.
    pub fn seed(&mut self, epoch: usize, value: f64) {
        if !value.is_nan() {
            self.best = Some((epoch, value));
        }
    }

    /// The best epoch so far and its value.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best
    }
}
