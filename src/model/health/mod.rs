//! The gradient-health records training produces: per-layer statistics decoded from the
//! device record, progress events for observers, and the non-finite stop. They live beside
//! the model that produces them; `crate::health` interprets them (detectors, logs, plots).

pub mod histogram;
pub mod layout;

use crate::model::{EpochReport, MlpSpec};
use histogram::StepHistograms;
use layout as st;
use serde::{Serialize, Serializer};
use std::fmt;

/// Serializers for floats that may be NaN or ±inf. JSON has neither, and serde_json writes
/// them as `null`, which reads as "does not apply" (a frozen layer, a regression's
/// accuracy): an overflowed activation would vanish from the output. They are written as
/// the strings `"nan"`, `"inf"` and `"-inf"` instead, which Python's `float()` and NumPy
/// parse back. Use with `#[serde(serialize_with = "...")]`.
pub mod json_float {
    use super::Serializer;

    /// The string a non-finite value is written as; `None` for a finite one.
    pub fn non_finite_text(v: f32) -> Option<&'static str> {
        if v.is_nan() {
            Some("nan")
        } else if v == f32::INFINITY {
            Some("inf")
        } else if v == f32::NEG_INFINITY {
            Some("-inf")
        } else {
            None
        }
    }

    pub fn f32<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        match non_finite_text(*v) {
            Some(t) => s.serialize_str(t),
            None => s.serialize_f32(*v),
        }
    }

    /// `None` stays `null`.
    pub fn opt<S: Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => f32(v, s),
            None => s.serialize_none(),
        }
    }
}

/// One layer's statistics at one step. `None` where a value does not apply: activation
/// values of layers below a plan's first layer (cached frozen outputs), gradients and
/// updates of frozen layers, dead units outside the ReLU family, saturation outside
/// sigmoid and tanh, and anything activation-related for the output layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerStats {
    pub layer: usize,
    /// Output units of the layer.
    pub units: usize,
    /// Mean and (population) standard deviation of the layer's output over the batch and
    /// its units, non-finite elements left out; NaN when there is no finite element.
    #[serde(serialize_with = "json_float::opt")]
    pub act_mean: Option<f32>,
    #[serde(serialize_with = "json_float::opt")]
    pub act_std: Option<f32>,
    /// Fraction of units whose pre-activation is `<= 0` for every row of the batch (a
    /// ReLU outputting zero for the whole batch).
    #[serde(serialize_with = "json_float::opt")]
    pub dead: Option<f32>,
    /// Fraction of activation outputs within [`st::SATURATION_EPS`] of the output range
    /// from a bound (per element, over the batch and units).
    #[serde(serialize_with = "json_float::opt")]
    pub saturated: Option<f32>,
    /// L2 norms of the weight and bias gradients (non-finite elements left out); NaN, not
    /// 0, when the tensor holds non-finite elements and no nonzero finite one.
    #[serde(serialize_with = "json_float::opt")]
    pub weight_grad_norm: Option<f32>,
    #[serde(serialize_with = "json_float::opt")]
    pub bias_grad_norm: Option<f32>,
    /// ‖W‖ before this step's update.
    #[serde(serialize_with = "json_float::opt")]
    pub weight_norm: Option<f32>,
    /// ‖W_after − W_before‖ / ‖W_before‖.
    #[serde(serialize_with = "json_float::opt")]
    pub update_ratio: Option<f32>,
    /// NaN or ±inf elements in the layer's output and in its gradients.
    pub act_nonfinite: u32,
    pub grad_nonfinite: u32,
}

/// The statistics of one training step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepStats {
    /// The model's training step (1 for the first step it ever took).
    pub step: u64,
    /// The epoch of [`crate::Model::fit`] it belongs to (from 1), 0 outside `fit`.
    pub epoch: usize,
    /// Mean loss and accuracy of this step's batch (accuracy `None` for regression).
    #[serde(serialize_with = "json_float::f32")]
    pub loss: f32,
    #[serde(serialize_with = "json_float::opt")]
    pub accuracy: Option<f32>,
    pub layers: Vec<LayerStats>,
}

impl StepStats {
    /// Decodes a statistics record (`graph::stats` layout) of a plan whose first layer is
    /// `start`.
    pub fn decode(
        record: &[f32],
        spec: &MlpSpec,
        start: usize,
        epoch: usize,
    ) -> anyhow::Result<StepStats> {
        let layers = spec.num_layers();
        anyhow::ensure!(
            record.len() == st::record_len(layers),
            "a statistics record of a {layers}-layer model holds {} values, got {}",
            st::record_len(layers),
            record.len()
        );
        let sizes = spec.layer_sizes();
        let g = st::global_at(layers);
        let layers = (0..layers)
            .map(|l| {
                let act = spec.activation_of(l);
                let r = &record[l * st::LAYER_STRIDE..(l + 1) * st::LAYER_STRIDE];
                let present = l >= start;
                let hidden = l + 1 < spec.num_layers();
                let trained = l >= spec.frozen_layers;
                let some = |ok: bool, v: f32| ok.then_some(v);
                // The statistics cover the finite elements only, and over none of them
                // they read 0 (the empty sum). Beside non-finite elements, a 0 would pass
                // for a vanished gradient or a collapsed activation where the tensor is
                // really NaN or ±inf, so it is reported as NaN: unknown.
                let norm = |at: usize, nonfinite_at: usize| {
                    let v = r[at];
                    if r[nonfinite_at] > 0.0 && v == 0.0 {
                        f32::NAN
                    } else {
                        v
                    }
                };
                let act_unknown =
                    r[st::ACT_NONFINITE] > 0.0 && r[st::ACT_MEAN] == 0.0 && r[st::ACT_STD] == 0.0;
                let act_value = |at: usize| if act_unknown { f32::NAN } else { r[at] };
                let weight_norm = some(trained, norm(st::WEIGHT_NORM, st::WEIGHT_NONFINITE));
                LayerStats {
                    layer: l,
                    units: sizes[l + 1],
                    act_mean: some(present, act_value(st::ACT_MEAN)),
                    act_std: some(present, act_value(st::ACT_STD)),
                    dead: some(present && hidden && st::has_dead_units(act), r[st::DEAD]),
                    saturated: some(
                        present && hidden && act.output_bounds().is_some(),
                        r[st::SATURATED],
                    ),
                    weight_grad_norm: some(
                        trained,
                        norm(st::WEIGHT_GRAD_NORM, st::WEIGHT_GRAD_NONFINITE),
                    ),
                    bias_grad_norm: some(
                        trained,
                        norm(st::BIAS_GRAD_NORM, st::BIAS_GRAD_NONFINITE),
                    ),
                    weight_norm,
                    update_ratio: weight_norm.map(|w| {
                        norm(st::UPDATE_NORM, st::UPDATE_NONFINITE) / w.max(f32::MIN_POSITIVE)
                    }),
                    act_nonfinite: if present {
                        r[st::ACT_NONFINITE] as u32
                    } else {
                        0
                    },
                    grad_nonfinite: if trained {
                        (r[st::WEIGHT_GRAD_NONFINITE] + r[st::BIAS_GRAD_NONFINITE]) as u32
                    } else {
                        0
                    },
                }
            })
            .collect();
        Ok(StepStats {
            step: record[g + st::STEP].to_bits() as u64,
            epoch,
            // The statistics leave non-finite rows out; the batch loss itself is not finite
            // when any row's is.
            loss: if record[g + st::LOSS + st::ACT_NONFINITE] > 0.0 {
                f32::NAN
            } else {
                record[g + st::LOSS + st::ACT_MEAN]
            },
            accuracy: (spec.loss == crate::Loss::SoftmaxCrossEntropy)
                .then_some(record[g + st::CORRECT + st::ACT_MEAN]),
            layers,
        })
    }

    /// `√Σ‖∇W‖² + ‖∇b‖²` over the trained linear layers.
    pub fn total_grad_norm(&self) -> f32 {
        self.layers
            .iter()
            .map(|l| {
                let w = l.weight_grad_norm.unwrap_or(0.0) as f64;
                let b = l.bias_grad_norm.unwrap_or(0.0) as f64;
                w * w + b * b
            })
            .sum::<f64>()
            .sqrt() as f32
    }

    /// Non-finite elements seen anywhere in this step's statistics.
    pub fn nonfinite(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.act_nonfinite as u64 + l.grad_nonfinite as u64)
            .sum::<u64>()
            + u64::from(!self.loss.is_finite())
    }

    /// ‖∇W‖ of the lowest trained layer over ‖∇W‖ of the output layer.
    pub fn first_last_ratio(&self) -> Option<f32> {
        let first = self.layers.iter().find_map(|l| l.weight_grad_norm)?;
        let last = self.layers.last()?.weight_grad_norm?;
        Some(first / last.max(f32::MIN_POSITIVE))
    }
}

/// Where training is, for progress displays. Passed after every step of
/// [`crate::Model::fit`].
#[derive(Clone, Debug)]
pub struct StepProgress {
    /// From 1.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done in this epoch, from 1.
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Rows in the step just enqueued.
    pub rows: usize,
    /// The latest batch loss and accuracy known on the host (from statistics records,
    /// else the previous epoch), if any.
    pub loss: Option<f32>,
    pub accuracy: Option<f32>,
}

/// Receives training events from [`crate::Model::fit`]: set one with
/// [`crate::Model::set_observer`]. An error stops training with that error.
pub trait TrainObserver {
    /// After each step is enqueued (on the GPU it may not have run yet).
    fn on_step(&mut self, _progress: &StepProgress) -> anyhow::Result<()> {
        Ok(())
    }
    /// When a statistics record has arrived.
    fn on_stats(&mut self, _stats: &StepStats) -> anyhow::Result<()> {
        Ok(())
    }
    /// After each epoch's report (before `fit`'s own callback sees it).
    fn on_epoch(&mut self, _report: &EpochReport) -> anyhow::Result<()> {
        Ok(())
    }
    /// After `on_stats` of a step whose histograms were gathered (see
    /// [`crate::Model::gather_histograms`]).
    fn on_histograms(&mut self, _histograms: &StepHistograms) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Several observers as one, called in order.
pub struct Observers(pub Vec<Box<dyn TrainObserver>>);

impl TrainObserver for Observers {
    fn on_step(&mut self, p: &StepProgress) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.on_step(p))
    }
    fn on_stats(&mut self, s: &StepStats) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.on_stats(s))
    }
    fn on_epoch(&mut self, r: &EpochReport) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.on_epoch(r))
    }
    fn on_histograms(&mut self, h: &StepHistograms) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.on_histograms(h))
    }
}

/// Training stopped because a tensor of a training step held NaN or ±inf. Returned
/// (inside an `anyhow::Error`, see `downcast_ref`) by [`crate::Model::fit`],
/// [`crate::Model::train_batch`] and [`crate::Model::check_finite`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NonFiniteError {
    /// The first training step at which a guarded tensor was non-finite.
    pub step: u64,
    /// Its epoch in `fit` (from 1), when known.
    pub epoch: Option<usize>,
    /// The tensor where the values first appeared within that step, in execution order:
    /// each layer's forward outputs, the loss, then the gradients from the output layer
    /// down.
    pub tensor: String,
    /// The op that wrote it, in words ("layers.4 linear output, before the activation").
    pub op: String,
    /// Its layer; `None` for the loss.
    pub layer: Option<usize>,
    /// The largest finite magnitude held up to the stop by the guarded tensor just before
    /// the op in the forward pass (its input, or the pre-activation feeding it where the
    /// activation cannot overflow): an overflow shows as this growing towards `f32::MAX`
    /// (3.4e38), or as a modest value when the layer's own weights overflowed it.
    pub input_peak: Option<InputPeak>,
    /// Other tensors non-finite at the same step, in execution order.
    pub also: Vec<String>,
    /// Training steps the model had enqueued when training stopped (at most
    /// [`layout::GUARD_LAG`] after [`NonFiniteError::step`]).
    pub stopped_after: u64,
    /// Found after the epoch's last step, in the weights its update left or in the
    /// validation outputs they give, rather than by the guard inside a step.
    pub after_epoch: bool,
}

/// The largest finite magnitude of a guarded tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputPeak {
    pub tensor: String,
    pub magnitude: f32,
}

impl fmt::Display for NonFiniteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "training diverged at step {}", self.step)?;
        if let Some(e) = self.epoch {
            write!(f, " (epoch {e})")?;
        }
        write!(
            f,
            ": non-finite values (NaN or ±inf) first appeared in the {} ('{}')",
            self.op, self.tensor
        )?;
        if let Some(p) = &self.input_peak {
            write!(
                f,
                "; the tensor before it, '{}', held finite values up to {:.3e} in magnitude \
                 (f32 overflows past 3.4e38)",
                p.tensor, p.magnitude,
            )?;
        }
        if !self.also.is_empty() {
            let shown: Vec<&str> = self.also.iter().take(4).map(String::as_str).collect();
            write!(f, "; also non-finite at that step: {}", shown.join(", "))?;
            if self.also.len() > 4 {
                write!(f, " and {} more", self.also.len() - 4)?;
            }
        }
        let when = if self.after_epoch {
            "before the epoch's report and checkpoint"
        } else {
            "before the epoch ended"
        };
        write!(
            f,
            ". Training stopped after step {}, {when}, so checkpoints saved earlier are \
             intact; the model's weights in memory are not. Lower the learning rate, clip \
             gradients, or use an initialisation suited to the activation",
            self.stopped_after
        )
    }
}

impl std::error::Error for NonFiniteError {}

/// The layer index in a `layers.{i}.…` tensor name.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}
