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
///
/// With `first_row`, the index is offset by `first_row[0]·cols` (a `u32` in an `f32`'s
/// bits, written by the host): a data-parallel rank whose shard starts at that row of the
/// global batch draws the masks one process draws for those rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    pub x: TensorId,
    pub y: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub p: f32,
    pub stream: u32,
    pub first_row: Option<TensorId>,
    /// Elements per row, which `first_row` counts in.
    pub cols: usize,
}

/// The multiplier of kept units, computed once in `f32` so both backends scale by the
/// identical value.
pub fn dropout_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

impl Operation for Dropout {
    fn reads(&self) -> Vec<TensorId> {
        [
            vec![self.x, self.step],
            self.first_row.into_iter().collect(),
        ]
        .concat()
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let first = self.first_row.map(|t| (t, 1));
        [(self.x, self.len), (self.y, self.len), (self.step, 1)]
            .into_iter()
            .chain(first)
            .collect()
    }
    fn check(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.p),
            "dropout probability must be in [0, 1), got {}",
            self.p
        );
        ensure!(
            self.first_row.is_none() || (self.cols > 0 && self.len.is_multiple_of(self.cols)),
            "dropout over {} elements cannot have rows of {}",
            self.len,
            self.cols
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let step = h.step(self.step);
        let offset = self
            .first_row
            .map_or(0, |t| h.step(t).wrapping_mul(self.cols as u32));
        h.update(self.y, |y, h| {
            cpu::dropout(h.get(self.x), y, self.p, self.stream, step, offset)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::dropout(self, lw)
    }
}
