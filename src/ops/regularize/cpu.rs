//! Reference loops of the regularization ops, in the kernels' order of operations.

use super::{two_l2, MAX_NORM_EPS};

/// `torch.sign`: 0 at 0, where `f32::signum` would give ±1.
pub fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// See [`super::PenaltyGrad`].
pub fn penalty_grad(w: &[f32], grad: &mut [f32], l1: f32, l2: f32) {
    let l2x2 = two_l2(l2);
    for (g, &wi) in grad.iter_mut().zip(w) {
        *g += l1 * sign(wi) + l2x2 * wi;
    }
}

/// See [`super::MaxNorm`]: rows of `cols` weights, each summed in order as the kernel does.
pub fn max_norm(w: &mut [f32], cols: usize, max_value: f32) {
    for row in w.chunks_mut(cols) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > max_value {
            let scale = max_value / (MAX_NORM_EPS + norm);
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// Keras's `L1L2` penalty `l1·Σ|w| + l2·Σw²`, summed in `f64` (a report, not a kernel).
pub fn penalty(w: &[f32], l1: f32, l2: f32) -> f64 {
    let (abs, sq) = w.iter().fold((0.0f64, 0.0f64), |(a, s), &v| {
        let v = v as f64;
        (a + v.abs(), s + v * v)
    });
    l1 as f64 * abs + l2 as f64 * sq
}
