//! Weight regularization: the gradient of Keras's `L1L2` kernel penalty
//! ([`PenaltyGrad`]) and Keras's `MaxNorm` constraint ([`MaxNorm`]).

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Keras's `epsilon()` in `MaxNorm`'s `w * desired / (epsilon + norms)`.
pub const MAX_NORM_EPS: f32 = 1e-7;

/// `grad += l1·sign(w) + 2·l2·w` in place: the gradient of Keras's `L1L2(l1, l2)` penalty
/// `l1·Σ|w| + l2·Σw²`, with `sign(0) = 0` as `torch.sign` (so L1 leaves zero weights be).
#[derive(Clone, Debug, PartialEq)]
pub struct PenaltyGrad {
    pub w: TensorId,
    pub grad: TensorId,
    pub len: usize,
    pub l1: f32,
    pub l2: f32,
}

/// Keras's `MaxNorm(max_value, axis=0)` on a `[rows, cols]` weight (one row per unit, its
/// incoming weights): a row whose norm exceeds `max_value` is multiplied by
/// `max_value / (1e-7 + norm)`; rows within the limit are left untouched.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxNorm {
    pub w: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub max_value: f32,
}

/// `2·l2`, computed once in `f32` so both backends multiply by the identical value.
pub fn two_l2(l2: f32) -> f32 {
    2.0 * l2
}

fn non_negative(name: &str, v: f32) -> Result<()> {
    ensure!(
        v.is_finite() && v >= 0.0,
        "{name} must be finite and >= 0, got {v}"
    );
    Ok(())
}

impl Operation for PenaltyGrad {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.w, self.grad]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.grad]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.grad]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.w, self.len), (self.grad, self.len)]
    }
    fn check(&self) -> Result<()> {
        non_negative("l1", self.l1)?;
        non_negative("l2", self.l2)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.grad, |g, h| {
            cpu::penalty_grad(h.get(self.w), g, self.l1, self.l2)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::penalty_grad(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.w, self.grad], self.len, 1, |lw, len| {
            wgpu::penalty_grad(&PenaltyGrad { len, ..*self }, lw)
        })
    }
}

impl Operation for MaxNorm {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.w]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.w]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.w]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.w, self.rows * self.cols)]
    }
    fn check(&self) -> Result<()> {
        ensure!(
            self.max_value.is_finite() && self.max_value > 0.0,
            "max_norm must be finite and > 0, got {}",
            self.max_value
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.w, |w, _| cpu::max_norm(w, self.cols, self.max_value));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::max_norm(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        // Windows of whole rows: each unit's norm is computed within one dispatch.
        lw.row_windows(self.rows, &[(self.w, self.cols)], |lw, _, rows| {
            wgpu::max_norm(&MaxNorm { rows, ..*self }, lw)
        })
    }
}
