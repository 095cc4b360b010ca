//! The gradient-health record a statistics step writes, and the guard's flags, as the
//! MLP plan lays them out.
//!
//! On a statistics step ([`crate::graph::Stage::TrainWithStats`]) the plan writes one *record*, a
//! small local tensor, with a block of [`LAYER_STRIDE`] values per layer followed by a
//! global block. The host copies it back asynchronously and decodes it (see
//! `crate::health`). Ordinary training steps never touch it.
//!
//! The guard is part of every training step: one cheap check per gradient tensor and one
//! for the per-row losses, recording the first step at which each held a NaN or ±inf in
//! the persistent tensor [`GUARD_SLOT_NAME`].

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

/// Name of the persistent guard flags: one `u32` per persistent slot (the flag of a
/// parameter's gradient sits at the parameter's slot) and, last, one for the loss.
pub const GUARD_SLOT_NAME: &str = "state.nonfinite";

/// The guard's persistent tensor for a model whose other persistent tensors number
/// `slots`. Zero means "never non-finite".
pub fn guard_desc(slots: usize) -> PersistentDesc {
    PersistentDesc {
        name: GUARD_SLOT_NAME.to_string(),
        shape: vec![slots + 1],
        init: vec![0.0; slots + 1],
        kind: PersistentKind::Internal,
    }
}

/// Decodes a guard flag: the first step at which the tensor was non-finite, if any.
pub fn guard_step(flag: f32) -> Option<u32> {
    let bits = flag.to_bits();
    (bits != 0).then(|| u32::MAX - bits)
}
