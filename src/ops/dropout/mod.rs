//! Inverted dropout (`torch.nn.Dropout`) with a counter-based mask: the backward pass is
//! the same op applied to the output gradient, redrawing the forward pass's mask.

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Inverted dropout: `y = x · keep / (1 - p)` with `keep = rng_uniform(stream, step, i)
/// >= p`. The map is its own adjoint, so the backward pass is the same op applied to
/// the output gradient with the same `(stream, step)`: it redraws the same mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    pub x: TensorId,
    pub y: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub p: f32,
    pub stream: u32,
}

/// The multiplier of kept units, computed once in `f32` so both backends scale by the
/// identical value.
pub fn dropout_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

impl Operation for Dropout {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.y, self.len), (self.step, 1)]
    }
    fn check(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.p),
            "dropout probability must be in [0, 1), got {}",
            self.p
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let step = h.step(self.step);
        h.update(self.y, |y, h| {
            cpu::dropout(h.get(self.x), y, self.p, self.stream, step)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::dropout(self, lw)
    }
}
