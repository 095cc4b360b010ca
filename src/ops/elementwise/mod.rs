//! Elementwise sums: a residual connection's forward sum ([`Add`]) and gradients adding
//! up where a tensor feeds two consumers ([`Accumulate`]).

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::Result;

/// `out = a + b` elementwise (a residual connection's sum).
#[derive(Clone, Debug, PartialEq)]
pub struct Add {
    pub a: TensorId,
    pub b: TensorId,
    pub out: TensorId,
    pub len: usize,
}

/// `y += x` elementwise: gradients meeting at a fork add up.
#[derive(Clone, Debug, PartialEq)]
pub struct Accumulate {
    pub x: TensorId,
    pub y: TensorId,
    pub len: usize,
}

impl Operation for Add {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.a, self.b]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.a, self.len), (self.b, self.len), (self.out, self.len)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.out, |out, h| {
            cpu::add(h.get(self.a), h.get(self.b), out)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::add(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.a, self.b, self.out], self.len, 1, |lw, len| {
            wgpu::add(&Add { len, ..*self }, lw)
        })
    }
}

impl Operation for Accumulate {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.y]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.y, self.len)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.y, |y, h| cpu::accumulate(h.get(self.x), y));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::accumulate(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.x, self.y], self.len, 1, |lw, len| {
            wgpu::accumulate(&Accumulate { len, ..*self }, lw)
        })
    }
}
