//! The gradient-health record a statistics step writes, and the guard's flags, as the
//! MLP plan lays them out.
//!
//! On a statistics step ([`crate::graph::Stage::TrainWithStats`]) the plan writes one *record*, a
//! small local tensor, with a block of [`LAYER_STRIDE`] values per layer followed by a
//! global block. The host copies it back asynchronously and decodes it (see
//! `crate::health`). Ordinary training steps never touch it.
//!
//! The guard is part of every training step: one cheap check of each layer's forward
//! outputs, the per-row losses and each gradient, recording the first step at which each
//! held a NaN or ±inf, and the largest finite magnitude each has held, in the persistent
//! tensor [`GUARD_SLOT_NAME`].

use crate::ops::health::ACT_STATS_LEN;
use crate::ops::Activation;
use crate::tensor::{PersistentDesc, PersistentKind};

/// Offsets inside one layer's block.
pub const ACT_MEAN: usize = 0;
pub const ACT_STD: usize = 1;
pub const DEAD: usize = 2;
pub const SATURATED: usize = 3;
pub const ACT_NONFINITE: usize = 4;
pub const WEIGHT_GRAD_NORM: usize = 5;
pub const WEIGHT_GRAD_NONFINITE: usize = 6;
pub const BIAS_GRAD_NORM: usize = 7;
pub const BIAS_GRAD_NONFINITE: usize = 8;
/// ‖W‖ before the update.
pub const WEIGHT_NORM: usize = 9;
pub const WEIGHT_NONFINITE: usize = 10;
/// ‖W_after − W_before‖.
pub const UPDATE_NORM: usize = 11;
pub const UPDATE_NONFINITE: usize = 12;
pub const LAYER_STRIDE: usize = 13;

/// Offsets inside the global block: statistics of the per-row losses (their mean is the
/// batch loss) and of the per-row correct flags (their mean is the batch accuracy), and
/// the step counter's bits.
pub const LOSS: usize = 0;
pub const CORRECT: usize = ACT_STATS_LEN;
pub const STEP: usize = 2 * ACT_STATS_LEN;
pub const GLOBAL_LEN: usize = STEP + 1;

/// Elements of the record of a model with `layers` linear layers.
pub fn record_len(layers: usize) -> usize {
    layers * LAYER_STRIDE + GLOBAL_LEN
}

/// Where the global block starts.
pub fn global_at(layers: usize) -> usize {
    layers * LAYER_STRIDE
}

/// A bounded activation's output counts as saturated within this fraction of its output
/// range from either bound: sigmoid below 0.01 or above 0.99, tanh beyond ±0.98. There the
/// derivative is under 1% (sigmoid) or 4% (tanh) of its peak, so almost no gradient passes.
pub const SATURATION_EPS: f32 = 0.01;

/// Thresholds `(lo, hi)` at or beyond which an output is saturated, computed once in
/// `f32` so both backends compare against identical values.
pub fn saturation_thresholds(act: Activation) -> Option<(f32, f32)> {
    act.output_bounds().map(|(lo, hi)| {
        let margin = SATURATION_EPS * (hi - lo);
        (lo + margin, hi - margin)
    })
}

/// The ReLU family, whose units can die: a unit whose pre-activation is `<= 0` for every
/// row of the batch outputs zero (ReLU) and passes no gradient to its weights. Leaky,
/// randomized and parametric ReLUs still pass `slope·gradient` there, so for them the
/// fraction counts units stuck on the negative side rather than dead ones.
pub fn has_dead_units(act: Activation) -> bool {
    act.negative_slope().is_some()
}

/// Name of the persistent guard flags (see [`guard_desc`] for their layout).
pub const GUARD_SLOT_NAME: &str = "state.nonfinite";

/// What the guard watches in each layer, in the order the forward pass writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardPoint {
    /// `x·Wᵀ + b`, before batch norm and the activation.
    Linear = 0,
    /// Batch norm's output, when it runs before the activation.
    BatchNorm = 1,
    /// The activation's output.
    Activation = 2,
    /// What the next layer reads, when batch norm after the activation or a skip
    /// connection changes it.
    Output = 3,
}

impl ForwardPoint {
    pub const ALL: [ForwardPoint; 4] = [
        ForwardPoint::Linear,
        ForwardPoint::BatchNorm,
        ForwardPoint::Activation,
        ForwardPoint::Output,
    ];

    /// How a non-finite error names the op that wrote this point.
    pub fn describe(self, layer: usize, output_layer: bool) -> String {
        match (self, output_layer) {
            (ForwardPoint::Linear, true) => format!("layers.{layer} linear output (the logits)"),
            (ForwardPoint::Linear, false) => {
                format!("layers.{layer} linear output, before the activation")
            }
            (ForwardPoint::BatchNorm, _) => format!("layers.{layer} batch-norm output"),
            (ForwardPoint::Activation, _) => format!("layers.{layer} activation output"),
            (ForwardPoint::Output, _) => {
                format!("layers.{layer} output (after batch norm or the skip connection)")
            }
        }
    }
}

/// Guard points of one layer.
pub const POINTS_PER_LAYER: usize = ForwardPoint::ALL.len();

/// Flag index of a forward point. Flags are numbered in execution order: each layer's
/// forward points, the loss, then one per persistent slot (a parameter's gradient sits
/// at its parameter's slot), so the host can tell which op produced the first NaN or inf
/// of a step without knowing the plan.
pub fn forward_flag(layer: usize, point: ForwardPoint) -> usize {
    layer * POINTS_PER_LAYER + point as usize
}

/// Flag index of the per-row losses.
pub fn loss_flag(layers: usize) -> usize {
    layers * POINTS_PER_LAYER
}

/// Flag index of the gradient of the parameter in persistent slot `slot`.
pub fn grad_flag(layers: usize, slot: usize) -> usize {
    loss_flag(layers) + 1 + slot
}

/// Flags of a model with `layers` layers and `slots` other persistent tensors.
pub fn guard_flags(layers: usize, slots: usize) -> usize {
    grad_flag(layers, slots)
}

/// The guard's persistent tensor: [`guard_flags`] first-step flags, then as many
/// *peaks*, the largest finite magnitude each guarded tensor has held (as `f32` bits;
/// non-negative floats order like their bits, so an atomic max on `u32` keeps the
/// largest). Zero means "never non-finite" and "nothing seen".
pub fn guard_desc(layers: usize, slots: usize) -> PersistentDesc {
    let len = 2 * guard_flags(layers, slots);
    PersistentDesc {
        name: GUARD_SLOT_NAME.to_string(),
        shape: vec![len],
        init: vec![0.0; len],
        kind: PersistentKind::Internal,
    }
}

/// Guard readbacks a training loop may have in flight before it waits for the oldest: a
/// NaN or inf produced by step `s` stops training once step `s + GUARD_LAG` has been
/// enqueued at the latest, while the device keeps that many steps queued.
pub const GUARD_LAG: usize = 2;

/// Whether any first-step flag of a guard tensor (not its peaks) is set.
pub fn flagged(guard: &[f32]) -> bool {
    guard[..guard.len() / 2]
        .iter()
        .any(|&f| guard_step(f).is_some())
}

/// Decodes a guard flag: the first step at which the tensor was non-finite, if any.
pub fn guard_step(flag: f32) -> Option<u32> {
    let bits = flag.to_bits();
    (bits != 0).then(|| u32::MAX - bits)
}
