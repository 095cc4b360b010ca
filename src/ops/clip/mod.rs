//! Gradient clipping: by global norm in three stages that never leave the device
//! ([`NormPartials`] per gradient, [`ClipCoef`] once, [`ScaleBy`] per gradient), as
//! `torch.nn.utils.clip_grad_norm_`, and by value ([`ClampValue`]), as
//! `clip_grad_value_`.

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Elements per block of [`NormPartials`]: the GPU kernel's workgroup size, fixed in
/// the op's definition so the CPU reference computes the same partials.
pub const NORM_BLOCK: usize = 256;

/// First stage of the global gradient norm: `groups` partial results of `x` into
/// slots `first..first + groups` of `partials` (`slots` pairs in all). Partial `j`
/// covers the [`NORM_BLOCK`]-element blocks `b` of `x` with `b mod groups = j` and is
/// stored as a pair `(s, q)` standing for the sum of squares `s²·q`, where `s` is the
/// largest magnitude: scaling by it keeps squares of huge gradients from overflowing.
#[derive(Clone, Debug, PartialEq)]
pub struct NormPartials {
    pub x: TensorId,
    pub len: usize,
    pub partials: TensorId,
    pub first: usize,
    pub groups: usize,
    pub slots: usize,
}

/// Combines all `slots` partial pairs into the total norm `√Σ‖g‖²` (written to
/// `total_norm`) and `torch.nn.utils.clip_grad_norm_`'s coefficient
/// `min(max_norm / (total + 1e-6), 1)` (written to `coef`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipCoef {
    pub partials: TensorId,
    pub slots: usize,
    pub total_norm: TensorId,
    pub coef: TensorId,
    pub max_norm: f32,
}

/// `x *= coef[0]` in place (applying the clip coefficient to one gradient).
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleBy {
    pub x: TensorId,
    pub coef: TensorId,
    pub len: usize,
}

/// `x = clamp(x, -limit, limit)` in place, as `torch.nn.utils.clip_grad_value_`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClampValue {
    pub x: TensorId,
    pub len: usize,
    pub limit: f32,
}

fn positive(name: &str, v: f32) -> Result<()> {
    ensure!(
        v.is_finite() && v > 0.0,
        "{name} must be finite and > 0, got {v}"
    );
    Ok(())
}

impl Operation for NormPartials {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.partials]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.partials, 2 * self.slots)]
    }
    fn check(&self) -> Result<()> {
        ensure!(
            self.groups > 0 && self.first + self.groups <= self.slots,
            "partial slots {}..{} do not fit in {} slots",
            self.first,
            self.first + self.groups,
            self.slots
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (first, groups) = (self.first, self.groups);
        h.update(self.partials, |out, h| {
            let out = &mut out[2 * first..2 * (first + groups)];
            cpu::norm_partials(h.get(self.x), out, groups, NORM_BLOCK)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::norm_partials(self, false, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        wgpu::norm_partials_windows(self, lw)
    }
}

impl Operation for ClipCoef {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.partials]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.total_norm, self.coef]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.partials, 2 * self.slots),
            (self.total_norm, 1),
            (self.coef, 1),
        ]
    }
    fn check(&self) -> Result<()> {
        positive("max_norm", self.max_norm)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (total, coef) = cpu::clip_coef(h.get(self.partials), self.max_norm);
        h.put(self.total_norm, vec![total]);
        h.put(self.coef, vec![coef]);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::clip_coef(self, lw)
    }
}

impl Operation for ScaleBy {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.coef]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.coef, 1)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let coef = h.get(self.coef)[0];
        h.update(self.x, |x, _| cpu::scale_by(x, coef));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::scale_by(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.x, self.coef], self.len, 1, |lw, len| {
            wgpu::scale_by(&ScaleBy { len, ..*self }, lw)
        })
    }
}

impl Operation for ClampValue {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len)]
    }
    fn check(&self) -> Result<()> {
        positive("limit", self.limit)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.x, |x, _| cpu::clamp_value(x, self.limit));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::clamp_value(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.x], self.len, 1, |lw, len| {
            wgpu::clamp_value(&ClampValue { len, ..*self }, lw)
        })
    }
}
