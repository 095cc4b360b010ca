//! Activations and their derivatives: [`Activate`] and [`ActivateBackward`] for every kind
//! at constant parameters, [`RreluTrain`] for RReLU's random training slopes, [`Prelu`]
//! for PReLU's learned ones. The kinds themselves are in [`kind`].

pub mod cpu;
pub mod kind;
pub mod wgpu;

pub use kind::{Activation, InitScheme, SELU_ALPHA, SELU_SCALE};

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::Result;

/// `y = f(x)` elementwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Activate {
    pub act: Activation,
    pub x: TensorId,
    pub y: TensorId,
    pub len: usize,
}

/// `dx = dy ⊙ f'(x)`, with `y = f(x)` supplied because sigmoid and tanh derive cheaply
/// from it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivateBackward {
    pub act: Activation,
    pub x: TensorId,
    pub y: TensorId,
    pub dy: TensorId,
    pub dx: TensorId,
    pub len: usize,
}

/// RReLU in training: `y = x` for `x > 0`, else `a·x` with a fresh slope per element
/// and step, `a = lower + (upper − lower)·rng_uniform(stream, step, i)`, `step` being
/// the persistent step counter. Evaluation uses [`Activate`] (the mean slope).
#[derive(Clone, Debug, PartialEq)]
pub struct RreluTrain {
    pub x: TensorId,
    pub y: TensorId,
    pub step: TensorId,
    pub stream: u32,
    pub lower: f32,
    pub upper: f32,
    pub len: usize,
}

/// `dx = dy ⊙ f'(x)` for [`RreluTrain`], redrawing the slopes its forward pass drew
/// from the same `(stream, step, i)` instead of storing them.
#[derive(Clone, Debug, PartialEq)]
pub struct RreluTrainBackward {
    pub x: TensorId,
    pub dy: TensorId,
    pub dx: TensorId,
    pub step: TensorId,
    pub stream: u32,
    pub lower: f32,
    pub upper: f32,
    pub len: usize,
}

/// PReLU: `y = x` for `x > 0`, else `weight[i mod units]·x`. `units` is 1 (one slope
/// per layer) or the row width (one per unit of a row-major `[rows, units]` tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct Prelu {
    pub x: TensorId,
    pub weight: TensorId,
    pub y: TensorId,
    pub len: usize,
    pub units: usize,
}

/// PReLU backward: `dx = dy·(x > 0 ? 1 : weight[i mod units])` and the slope gradient's
/// per-element terms `dw_terms = dy·min(x, 0)`, which [`super::SumRows`] then reduces
/// over the batch (the same reduction as the bias gradient).
#[derive(Clone, Debug, PartialEq)]
pub struct PreluBackward {
    pub x: TensorId,
    pub weight: TensorId,
    pub dy: TensorId,
    pub dx: TensorId,
    pub dw_terms: TensorId,
    pub len: usize,
    pub units: usize,
}

impl Operation for Activate {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.y, self.len)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.y, |y, h| cpu::activate(self.act, h.get(self.x), y));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::activate(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&[self.x, self.y], self.len, 1, |lw, len| {
            wgpu::activate(&Activate { len, ..*self }, lw)
        })
    }
}

impl Operation for ActivateBackward {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.y, self.dy]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dx]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        [self.x, self.y, self.dy, self.dx]
            .map(|t| (t, self.len))
            .to_vec()
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.dx, |dx, h| {
            cpu::activate_backward(self.act, h.get(self.x), h.get(self.y), h.get(self.dy), dx)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::activate_backward(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        let touched = [self.x, self.y, self.dy, self.dx];
        lw.element_windows(&touched, self.len, 1, |lw, len| {
            wgpu::activate_backward(&ActivateBackward { len, ..*self }, lw)
        })
    }
}

impl Operation for RreluTrain {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.len), (self.y, self.len), (self.step, 1)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let step = h.step(self.step);
        h.update(self.y, |y, h| {
            cpu::rrelu_train(h.get(self.x), y, step, self.stream, self.lower, self.upper)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::rrelu_train(self, lw)
    }
}

impl Operation for RreluTrainBackward {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.dy, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dx]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.x, self.len),
            (self.dy, self.len),
            (self.dx, self.len),
            (self.step, 1),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let step = h.step(self.step);
        h.update(self.dx, |dx, h| {
            let (lower, upper) = (self.lower, self.upper);
            cpu::rrelu_train_backward(
                h.get(self.x),
                h.get(self.dy),
                dx,
                step,
                self.stream,
                lower,
                upper,
            )
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::rrelu_train_backward(self, lw)
    }
}

/// PReLU's slopes must cover whole rows.
fn check_units(len: usize, units: usize) -> Result<()> {
    anyhow::ensure!(
        units > 0 && len.is_multiple_of(units),
        "{len} elements are not whole rows of {units} slope(s)"
    );
    Ok(())
}

impl Operation for Prelu {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.weight]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.x, self.len),
            (self.weight, self.units),
            (self.y, self.len),
        ]
    }
    fn check(&self) -> Result<()> {
        check_units(self.len, self.units)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.y, |y, h| {
            cpu::prelu(h.get(self.x), h.get(self.weight), y)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::prelu(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        // Windows of whole rows keep `i mod units` the unit of element i.
        let touched = [self.x, self.weight, self.y];
        lw.element_windows(&touched, self.len, self.units, |lw, len| {
            wgpu::prelu(&Prelu { len, ..*self }, lw)
        })
    }
}

impl Operation for PreluBackward {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.weight, self.dy]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dx, self.dw_terms]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.x, self.len),
            (self.weight, self.units),
            (self.dy, self.len),
            (self.dx, self.len),
            (self.dw_terms, self.len),
        ]
    }
    fn check(&self) -> Result<()> {
        check_units(self.len, self.units)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let mut terms = h.take(self.dw_terms);
        h.update(self.dx, |dx, h| {
            cpu::prelu_backward(
                h.get(self.x),
                h.get(self.weight),
                h.get(self.dy),
                dx,
                &mut terms,
            )
        });
        h.put(self.dw_terms, terms);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::prelu_backward(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        let touched = [self.x, self.weight, self.dy, self.dx, self.dw_terms];
        lw.element_windows(&touched, self.len, self.units, |lw, len| {
            wgpu::prelu_backward(&PreluBackward { len, ..*self }, lw)
        })
    }
}
