//! `--on-spike stop`: ends training when a statistics step's total gradient norm jumps far
//! above the median of the records before it *and* above every norm the run has had, the
//! usual first sign of a divergence that has not yet produced a NaN. The second condition
//! matters: late in a healthy run most batches are fitted and their gradients small, so a
//! batch with a hard example sits 10–20× above the median (measured on the digits with
//! statistics every step), but still below the gradients of the first steps; a
//! divergence climbs past those.
//!
//! It watches statistics records, so it acts at statistics steps (`--stats-every`), a few
//! steps after the spike as records arrive asynchronously. Skipping the spiking batch's
//! update instead, as some frameworks offer, would need a gate on the device read by every
//! optimizer kernel before the update; it is not offered.

use super::{StepStats, TrainObserver};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;

/// Records whose median a new norm is judged against.
const HISTORY: usize = 20;
/// Records needed before anything is judged: fewer give no stable median.
const MIN_HISTORY: usize = 4;

/// Training stopped on a gradient-norm spike. Returned inside an `anyhow::Error` (see
/// `downcast_ref`) by `Model::fit` when [`SpikeStop`] observes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpikeError {
    pub step: u64,
    pub epoch: usize,
    pub norm: f32,
    pub median: f32,
    pub factor: f32,
}

impl fmt::Display for SpikeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stopped on a gradient spike at step {} (epoch {}): the total gradient norm \
             {:.3e} is {:.0}× the median {:.3e} of the statistics records before it \
             (threshold {}×) and the largest of the run; lower the learning rate or clip \
             gradients (--clip-norm)",
            self.step,
            self.epoch,
            self.norm,
            self.norm / self.median,
            self.median,
            self.factor
        )
    }
}

impl std::error::Error for SpikeError {}

/// The observer behind `--on-spike stop`.
pub struct SpikeStop {
    factor: f32,
    norms: VecDeque<f32>,
    /// The largest norm seen so far.
    highest: f32,
}

impl SpikeStop {
    /// Stops when a norm is at least `factor` times the median of the records before it.
    pub fn new(factor: f32) -> anyhow::Result<SpikeStop> {
        anyhow::ensure!(
            factor.is_finite() && factor > 1.0,
            "the spike threshold must be a finite number > 1, got {factor}"
        );
        Ok(SpikeStop {
            factor,
            norms: VecDeque::with_capacity(HISTORY),
            highest: 0.0,
        })
    }
}

impl TrainObserver for SpikeStop {
    fn on_stats(&mut self, stats: &StepStats) -> anyhow::Result<()> {
        let norm = stats.total_grad_norm();
        if self.norms.len() >= MIN_HISTORY {
            let mut sorted: Vec<f32> = self.norms.iter().copied().collect();
            sorted.sort_by(f32::total_cmp);
            let median = sorted[sorted.len() / 2];
            if median > 0.0
                && norm.is_finite()
                && norm >= self.factor * median
                && norm > self.highest
            {
                return Err(anyhow::Error::new(SpikeError {
                    step: stats.step,
                    epoch: stats.epoch,
                    norm,
                    median,
                    factor: self.factor,
                }));
            }
        }
        // A non-finite norm is the NaN guard's to report.
        if norm.is_finite() {
            self.highest = self.highest.max(norm);
            if self.norms.len() == HISTORY {
                self.norms.pop_front();
            }
            self.norms.push_back(norm);
        }
        Ok(())
    }
}
