//! Gradient-health monitoring inside the training loop: which steps gather statistics,
//! their asynchronous readback, the non-finite guard and the observer hooks.
//!
//! A child of `trainer` so it can reach [`Model`]'s fields without widening them.

use super::Model;
use crate::engine::PendingRead;
use crate::model::health::layout::{guard_step, GUARD_SLOT_NAME};
use crate::model::health::{layer_of, NonFiniteError, StepProgress, StepStats, TrainObserver};
use crate::model::EpochReport;
use anyhow::{Context, Result};
use std::collections::VecDeque;

/// A statistics record on its way back from the device.
struct InFlight {
    read: Box<dyn PendingRead>,
    /// First layer of the plan that wrote it.
    start: usize,
    epoch: usize,
}

#[derive(Default)]
pub(super) struct Health {
    /// Gather statistics every this many steps; 0 never.
    every: usize,
    /// Steps this model has enqueued, and that count when statistics were turned on.
    steps: u64,
    phase: u64,
    in_flight: VecDeque<InFlight>,
    history: Vec<StepStats>,
    observer: Option<Box<dyn TrainObserver>>,
    /// The epoch `fit` is in (0 outside it), its length, and steps done in it.
    epoch: usize,
    epochs: usize,
    steps_per_epoch: usize,
    step_in_epoch: usize,
    /// Device step counter and completed epochs when the current `fit` started.
    fit_origin: Option<(u64, usize)>,
    last_loss: Option<f32>,
    last_accuracy: Option<f32>,
}

impl Health {
    /// Whether the coming step gathers statistics: the first after they were turned on,
    /// then every `every`-th.
    pub(super) fn due(&self) -> bool {
        self.every > 0 && (self.steps - self.phase).is_multiple_of(self.every as u64)
    }

    fn epoch_of(&self, step: u64) -> Option<usize> {
        let (origin, epochs_before) = self.fit_origin?;
        let per = self.steps_per_epoch.max(1) as u64;
        (step > origin).then(|| epochs_before + ((step - origin - 1) / per) as usize + 1)
    }
}

impl Model {
    /// Gathers per-layer statistics on the device on the next training step and every
    /// `every`-th after it (0 turns them off, the default). Other steps dispatch nothing
    /// extra. Records reach [`Model::stats_history`] asynchronously, a few steps later;
    /// `fit` collects all of them by the end of each epoch.
    pub fn gather_stats_every(&mut self, every: usize) {
        self.health.every = every;
        self.health.phase = self.health.steps;
    }

    /// The statistics records collected so far, oldest first.
    pub fn stats_history(&self) -> &[StepStats] {
        &self.health.history
    }

    /// Takes the records collected so far, leaving none.
    pub fn take_stats_history(&mut self) -> Vec<StepStats> {
        std::mem::take(&mut self.health.history)
    }

    /// Receives step, statistics and epoch events during [`Model::fit`] (progress bars,
    /// metric logs). `None` removes it.
    pub fn set_observer(&mut self, observer: Option<Box<dyn TrainObserver>>) {
        self.health.observer = observer;
    }

    /// Starts the readback of the statistics record (and the guard flags) just written by
    /// a statistics step of the plan for `(rows, start)`, and collects any earlier ones
    /// that have arrived. Called after every training step.
    pub(super) fn health_after_step(&mut self, key: (usize, usize), gathered: bool) -> Result<()> {
        self.health.steps += 1;
        if gathered {
            let (id, plan) = &self.plans[&key];
            if let (Some(stats), Some(guard)) = (plan.stats, plan.guard) {
                let read = self.engine.read_async(*id, &[stats, guard])?;
                self.health.in_flight.push_back(InFlight {
                    read,
                    start: key.1,
                    epoch: self.health.epoch,
                });
            }
        }
        self.collect_stats(false)
    }

    /// Decodes the records that have arrived (all of them with `wait`), in order. A record
    /// whose guard flags are set stops training with the non-finite error.
    fn collect_stats(&mut self, wait: bool) -> Result<()> {
        while let Some(front) = self.health.in_flight.front_mut() {
            let Some(values) = front.read.poll(wait)? else {
                return Ok(());
            };
            let done = self.health.in_flight.pop_front().expect("front exists");
            let [record, flags] = <[Vec<f32>; 2]>::try_from(values)
                .map_err(|_| anyhow::anyhow!("a statistics readback returned the wrong parts"))?;
            let stats = StepStats::decode(&record, &self.spec, done.start, done.epoch)?;
            self.health.last_loss = Some(stats.loss);
            self.health.last_accuracy = stats.accuracy;
            if let Some(o) = self.health.observer.as_mut() {
                o.on_stats(&stats)?;
            }
            // Kept even when the guard fired: it shows where the values went bad.
            self.health.history.push(stats);
            if flags.iter().any(|&f| guard_step(f).is_some()) {
                self.health.in_flight.clear();
                return self.raise_nonfinite(&flags);
            }
        }
        Ok(())
    }

    /// Waits for the statistics records still on their way back and collects them, for
    /// loops built on [`Model::train_batch`] (`fit` does this after every epoch).
    pub fn wait_for_stats(&mut self) -> Result<()> {
        self.collect_stats(true)
    }

    /// Reads the guard flags (waiting for queued work) and returns the non-finite error
    /// when any training step so far produced a NaN or ±inf loss or gradient. `fit` does
    /// this after every epoch; call it yourself in loops built on
    /// [`Model::train_batch`]. The flags are cleared once reported.
    pub fn check_finite(&mut self) -> Result<()> {
        let slot = self.slot(GUARD_SLOT_NAME)?;
        let flags = self.engine.read_persistent(slot)?;
        if flags.iter().any(|&f| guard_step(f).is_some()) {
            return self.raise_nonfinite(&flags);
        }
        Ok(())
    }

    /// Builds the non-finite error from the guard flags and clears them.
    fn raise_nonfinite(&mut self, flags: &[f32]) -> Result<()> {
        let slot = self.slot(GUARD_SLOT_NAME)?;
        self.engine
            .write_persistent(slot, &vec![0.0; flags.len()])
            .context("clearing the non-finite flags")?;
        let Some(step) = flags.iter().filter_map(|&f| guard_step(f)).min() else {
            return Ok(());
        };
        let at_step = |i: usize| flags.get(i).and_then(|&f| guard_step(f)) == Some(step);
        // Backward order: the loss, then the gradients in the order the backward pass
        // wrote them (the output layer first), as the plan lists them.
        let mut names = Vec::new();
        if at_step(flags.len() - 1) {
            names.push("loss".to_string());
        }
        let order = self.grad_order()?;
        for (param_slot, grad) in order {
            if at_step(param_slot) {
                names.push(grad);
            }
        }
        let tensor = names
            .first()
            .cloned()
            .unwrap_or_else(|| "an unknown tensor".to_string());
        let err = NonFiniteError {
            step: step as u64,
            epoch: self.health.epoch_of(step as u64),
            layer: if tensor == "loss" {
                None
            } else {
                layer_of(&tensor)
            },
            tensor,
            also: names.into_iter().skip(1).collect(),
        };
        Err(anyhow::Error::new(err))
    }

    /// `(persistent slot of the parameter, gradient name)` in backward order.
    fn grad_order(&mut self) -> Result<Vec<(usize, String)>> {
        let rows = self.plans.keys().next().map_or(1, |k| k.0);
        let start = self.plans.keys().next().map_or(0, |k| k.1);
        let (_, plan) = self.plan_at(rows, start)?;
        Ok(plan
            .grads
            .iter()
            .filter_map(|&(p, g)| match plan.tensors[p].storage {
                crate::tensor::Storage::Persistent(s) => Some((s, plan.tensors[g].name.clone())),
                crate::tensor::Storage::Local => None,
            })
            .collect())
    }

    /// Start of `fit`: remembers the length of the run for progress and epoch numbers
    /// (counted across `fit` calls, as [`Model::epoch`] is).
    /// Reads the device step counter once; the queue is idle here (`fit` has just read
    /// the metrics).
    pub(super) fn health_begin_fit(&mut self, epochs: usize, steps_per_epoch: usize) -> Result<()> {
        let origin = (self.steps()?, self.epoch);
        let h = &mut self.health;
        h.epochs = origin.1 + epochs;
        h.steps_per_epoch = steps_per_epoch;
        h.fit_origin = Some(origin);
        h.in_flight.clear();
        Ok(())
    }

    /// Start of an epoch of `fit`.
    pub(super) fn health_begin_epoch(&mut self, epoch: usize) {
        self.health.epoch = epoch;
        self.health.step_in_epoch = 0;
    }

    /// After each step of `fit`: progress for the observer.
    pub(super) fn health_step_done(&mut self, rows: usize) -> Result<()> {
        let h = &mut self.health;
        h.step_in_epoch += 1;
        if let Some(o) = h.observer.as_mut() {
            o.on_step(&StepProgress {
                epoch: h.epoch,
                epochs: h.epochs,
                step: h.step_in_epoch,
                steps_per_epoch: h.steps_per_epoch,
                rows,
                loss: h.last_loss,
                accuracy: h.last_accuracy,
            })?;
        }
        Ok(())
    }

    /// End of an epoch's training steps: collects every outstanding record and checks the
    /// guard, so a non-finite step stops `fit` before anything else happens.
    pub(super) fn health_end_epoch(&mut self) -> Result<()> {
        self.collect_stats(true)?;
        self.check_finite()
    }

    /// After an epoch's report is made.
    pub(super) fn health_epoch_report(&mut self, report: &EpochReport) -> Result<()> {
        self.health.last_loss = Some(report.train.loss);
        self.health.last_accuracy = report.train.accuracy;
        match self.health.observer.as_mut() {
            Some(o) => o.on_epoch(report),
            None => Ok(()),
        }
    }

    /// `fit` is returning its reports.
    pub(super) fn health_end_fit(&mut self) {
        self.health.epoch = 0;
        self.health.fit_origin = None;
    }
}
