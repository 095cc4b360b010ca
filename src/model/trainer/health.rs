//! Gradient-health monitoring inside the training loop: which steps gather statistics,
//! their asynchronous readback, the non-finite guard and the observer hooks.
//!
//! A child of `trainer` so it can reach [`Model`]'s fields without widening them.

use super::Model;
use crate::engine::PendingRead;
use crate::graph::Stage;
use crate::model::health::histogram::{
    of_each, HistogramKind, LayerHistogram, StepHistograms, BUCKETS,
};
use crate::model::health::layout::{
    self as st, guard_step, ForwardPoint, GUARD_SLOT_NAME, POINTS_PER_LAYER,
};
use crate::model::health::InputPeak;
use crate::model::health::{layer_of, NonFiniteError, StepProgress, StepStats, TrainObserver};
use crate::model::EpochReport;
use crate::tensor::{PersistentKind, Storage, TensorId};
use anyhow::{Context, Result};
use std::collections::VecDeque;

/// One tensor the guard checks, as the non-finite error names it.
struct GuardPoint {
    flag: usize,
    tensor: String,
    op: String,
    layer: Option<usize>,
    forward: bool,
}

/// A statistics record on its way back from the device.
struct InFlight {
    read: Box<dyn PendingRead>,
    /// First layer of the plan that wrote it.
    start: usize,
    epoch: usize,
    /// The tensors read after the record and the flags, for histograms.
    histograms: Vec<(usize, HistogramKind)>,
}

#[derive(Default)]
pub(super) struct Health {
    /// Gather statistics every this many steps; 0 never.
    every: usize,
    /// Read back weights, gradients and activations with each statistics record.
    histograms: bool,
    /// Steps this model has enqueued, and that count when statistics were turned on.
    steps: u64,
    phase: u64,
    in_flight: VecDeque<InFlight>,
    /// Readbacks of the guard flags after ordinary steps, oldest first (statistics steps
    /// read the flags with their record).
    guard_reads: VecDeque<Box<dyn PendingRead>>,
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
    /// Whether statistics steps will run.
    pub(super) fn gathers_stats(&self) -> bool {
        self.every > 0
    }
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

    /// With `on`, each statistics step also reads back every layer's weights, weight
    /// gradients and outputs and passes their histograms to the observer's
    /// [`TrainObserver::on_histograms`] (they are not kept). That readback is whole
    /// tensors, so it is off by default.
    pub fn gather_histograms(&mut self, on: bool) {
        self.health.histograms = on;
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

    /// Runs `stage` of the plan for `(rows, start)` with the readback of what it wrote for
    /// the host: the statistics record (and the guard flags) after a statistics step, the
    /// guard flags alone after an ordinary one. Both go in one submission, so a training
    /// step costs no second one for its readback.
    pub(super) fn run_with_readback(
        &mut self,
        key: (usize, usize),
        stage: Stage,
        gathered: bool,
    ) -> Result<()> {
        let (id, plan) = &self.plans[&key];
        match (gathered, plan.stats, plan.guard) {
            (true, Some(stats), Some(guard)) => {
                let mut tensors = vec![stats, guard];
                let mut histograms = Vec::new();
                if self.health.histograms && self.health.observer.is_some() {
                    for (layer, kind, t) in histogram_tensors(plan) {
                        tensors.push(t);
                        histograms.push((layer, kind));
                    }
                }
                let read = self.engine.run_and_read(*id, stage, &tensors)?;
                self.health.in_flight.push_back(InFlight {
                    read,
                    start: key.1,
                    epoch: self.health.epoch,
                    histograms,
                });
            }
            (_, _, Some(guard)) => {
                let read = self.engine.run_and_read(*id, stage, &[guard])?;
                self.health.guard_reads.push_back(read);
            }
            _ => self.engine.run(*id, stage)?,
        }
        Ok(())
    }

    /// Collects whatever readbacks have arrived. Called after every training step; a
    /// step the guard flagged stops training within [`st::GUARD_LAG`] steps.
    pub(super) fn health_after_step(&mut self) -> Result<()> {
        self.health.steps += 1;
        self.collect_guard()?;
        self.collect_stats(false)
    }

    /// Checks the guard readbacks that have arrived, waiting for the oldest while more
    /// than [`st::GUARD_LAG`] are outstanding.
    fn collect_guard(&mut self) -> Result<()> {
        // Data-parallel ranks must stop at the same step, or one would wait in the next
        // exchange for a rank that stopped: they look at step s's flags at step s + 1,
        // when its gradient readback has waited for the device anyway, and never earlier
        // (a flag that happens to be back on one rank only).
        let distributed = self.dist.is_some();
        let lag = if distributed { 1 } else { st::GUARD_LAG };
        loop {
            let wait = self.health.guard_reads.len() > lag;
            if distributed && !wait {
                return Ok(());
            }
            let Some(front) = self.health.guard_reads.front_mut() else {
                return Ok(());
            };
            let Some(values) = front.poll(wait)? else {
                return Ok(());
            };
            self.health.guard_reads.pop_front();
            let flags = values.into_iter().next().unwrap_or_default();
            if st::flagged(&flags) {
                self.health.guard_reads.clear();
                self.health.in_flight.clear();
                return self.raise_nonfinite(&flags);
            }
        }
    }

    /// Decodes the records that have arrived (all of them with `wait`), in order. A record
    /// whose guard flags are set stops training with the non-finite error.
    fn collect_stats(&mut self, wait: bool) -> Result<()> {
        while let Some(front) = self.health.in_flight.front_mut() {
            let Some(values) = front.read.poll(wait)? else {
                return Ok(());
            };
            let done = self.health.in_flight.pop_front().expect("front exists");
            anyhow::ensure!(
                values.len() == 2 + done.histograms.len(),
                "a statistics readback returned {} parts, not {}",
                values.len(),
                2 + done.histograms.len()
            );
            let mut values = values.into_iter();
            let (record, flags) = (values.next().unwrap(), values.next().unwrap());
            let stats = StepStats::decode(&record, &self.spec, done.start, done.epoch)?;
            self.health.last_loss = Some(stats.loss);
            self.health.last_accuracy = stats.accuracy;
            if let Some(o) = self.health.observer.as_mut() {
                o.on_stats(&stats)?;
                if !done.histograms.is_empty() {
                    let tensors: Vec<Vec<f32>> = values.collect();
                    let layers = done
                        .histograms
                        .iter()
                        .zip(of_each(&tensors, BUCKETS))
                        .map(|(&(layer, kind), histogram)| LayerHistogram {
                            layer,
                            kind,
                            histogram,
                        })
                        .collect();
                    o.on_histograms(&StepHistograms {
                        step: stats.step,
                        layers,
                    })?;
                }
            }
            // Kept even when the guard fired: it shows where the values went bad.
            self.health.history.push(stats);
            if st::flagged(&flags) {
                self.health.in_flight.clear();
                self.health.guard_reads.clear();
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
        if st::flagged(&flags) {
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
        let peaks = flags.len() / 2;
        let Some(step) = flags[..peaks].iter().filter_map(|&f| guard_step(f)).min() else {
            return Ok(());
        };
        let at_step = |i: usize| flags.get(i).and_then(|&f| guard_step(f)) == Some(step);
        let points = self.guard_points()?;
        let first = points.iter().position(|p| at_step(p.flag));
        let Some(first) = first else {
            anyhow::bail!(
                "training diverged at step {step}: the non-finite guard fired, but on no \
                 tensor of the current plan"
            );
        };
        let p = &points[first];
        // The op's inputs are the tensors guarded just before it in the forward pass (the
        // previous point of the same layer, or the previous layer's output); gradients
        // have none listed.
        let input_peak = (first > 0 && p.forward)
            .then(|| &points[first - 1])
            .filter(|q| q.forward)
            .map(|q| InputPeak {
                tensor: q.tensor.clone(),
                magnitude: flags[peaks + q.flag],
            });
        let err = NonFiniteError {
            step: step as u64,
            epoch: self.health.epoch_of(step as u64),
            tensor: p.tensor.clone(),
            op: p.op.clone(),
            layer: p.layer,
            input_peak,
            also: points[first + 1..]
                .iter()
                .filter(|q| at_step(q.flag))
                .map(|q| q.tensor.clone())
                .collect(),
            // The device's step counter: the last step enqueued has run by now.
            stopped_after: self.steps()?,
            after_epoch: false,
        };
        Err(anyhow::Error::new(err))
    }

    /// Every tensor the guard checks in the current plan, in execution order: the
    /// forward pass layer by layer, the loss, then the gradients in the order the backward
    /// pass wrote them (the output layer first).
    fn guard_points(&mut self) -> Result<Vec<GuardPoint>> {
        let layers = self.spec.num_layers();
        let rows = self.plans.keys().next().map_or(1, |k| k.0);
        let start = self.plans.keys().next().map_or(0, |k| k.1);
        let (_, plan) = self.plan_at(rows, start)?;
        let name = |t: crate::tensor::TensorId| plan.tensors[t].name.clone();
        let mut forward: Vec<GuardPoint> = plan
            .guarded
            .iter()
            .filter(|&&(flag, _)| flag <= st::loss_flag(layers))
            .map(|&(flag, t)| {
                if flag == st::loss_flag(layers) {
                    return GuardPoint {
                        flag,
                        tensor: name(t),
                        op: "the loss (per-row losses of the batch)".to_string(),
                        layer: None,
                        forward: true,
                    };
                }
                let layer = flag / POINTS_PER_LAYER;
                let point = ForwardPoint::ALL[flag % POINTS_PER_LAYER];
                GuardPoint {
                    flag,
                    tensor: name(t),
                    op: point.describe(layer, layer + 1 == layers),
                    layer: Some(layer),
                    forward: true,
                }
            })
            .collect();
        forward.sort_by_key(|p| p.flag);
        let backward = plan
            .grads
            .iter()
            .filter_map(|&(p, g)| match plan.tensors[p].storage {
                crate::tensor::Storage::Persistent(s) => Some(GuardPoint {
                    flag: st::grad_flag(layers, s),
                    tensor: name(g),
                    op: format!("the gradient of {} (backward pass)", name(p)),
                    layer: layer_of(&name(g)),
                    forward: false,
                }),
                crate::tensor::Storage::Local => None,
            });
        forward.extend(backward);
        Ok(forward)
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
        h.guard_reads.clear();
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
        self.health.guard_reads.clear();
        self.check_finite()
    }

    /// After an epoch's training steps and validation, before its report (and so before
    /// its checkpoint): the guard saw only what the steps computed, from the weights before
    /// each update, so the epoch's last update may have left non-finite weights, or weights
    /// whose outputs overflow on the validation rows. Either is a [`NonFiniteError`].
    pub(super) fn check_weights_after_epoch(
        &mut self,
        epoch: usize,
        start: usize,
        valid: Option<&super::Metrics>,
    ) -> Result<()> {
        // The device's step counter, as the guard's errors count steps (across resumes).
        let step = self.steps()?;
        let stop = |tensor: String, op: &str| NonFiniteError {
            step,
            epoch: Some(epoch),
            layer: layer_of(&tensor),
            tensor,
            op: op.to_string(),
            input_peak: None,
            also: Vec::new(),
            stopped_after: step,
            after_epoch: true,
        };
        // The parameters the epoch trained are those of its plans (layers below `start`
        // are frozen), read back together in one copy rather than one wait each.
        let plan = self
            .plans
            .iter()
            .find(|(k, _)| k.1 == start)
            .map(|(_, p)| p);
        if let Some((id, plan)) = plan {
            let params: Vec<(TensorId, String)> = (plan.tensors.iter().enumerate())
                .filter_map(|(t, desc)| match desc.storage {
                    Storage::Persistent(slot) => Some((t, slot)),
                    Storage::Local => None,
                })
                .filter(|&(_, slot)| self.persistent[slot].kind == PersistentKind::Param)
                .map(|(t, slot)| (t, self.persistent[slot].name.clone()))
                .collect();
            let ids: Vec<TensorId> = params.iter().map(|p| p.0).collect();
            let id = *id;
            let values = self
                .engine
                .read_async(id, &ids)?
                .poll(true)?
                .context("the parameter readback returned nothing")?;
            if let Some(((_, name), _)) =
                (params.into_iter().zip(values)).find(|(_, v)| v.iter().any(|x| !x.is_finite()))
            {
                let op = "parameter, by the update of the epoch's last step";
                return Err(anyhow::Error::new(stop(name, op)));
            }
        }
        if valid.is_some_and(|v| !v.loss.is_finite()) {
            let op = "validation loss, from the weights the epoch's last update left";
            return Err(anyhow::Error::new(stop("validation loss".into(), op)));
        }
        Ok(())
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

/// `(layer, kind, tensor)` of every tensor a statistics step reads for histograms, layer
/// by layer: the weights of each layer the plan holds, their gradients where the layer
/// trains, and the outputs of the layers it computes.
fn histogram_tensors(plan: &crate::graph::Plan) -> Vec<(usize, HistogramKind, usize)> {
    let mut out = Vec::new();
    for (layer, act) in plan.layer_outputs.iter().enumerate() {
        let weight = plan.find(&format!("layers.{layer}.linear.weight"));
        if let Some(w) = weight {
            out.push((layer, HistogramKind::Weights, w));
            if let Some(&(_, g)) = plan.grads.iter().find(|(p, _)| *p == w) {
                out.push((layer, HistogramKind::Gradients, g));
            }
        }
        if let Some(a) = act {
            out.push((layer, HistogramKind::Activations, *a));
        }
    }
    out
}
