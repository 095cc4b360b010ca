//! Optimizer updates with `torch.optim`'s definitions: the step counter
//! ([`AdvanceStep`]), SGD with momentum, Nesterov and weight decay ([`Sgd`]), and
//! Adam/AdamW ([`Adam`]). The learning rate comes from the hyper-parameter block
//! ([`crate::tensor::Hyper`]) so schedules change it without recompiling.

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Increments the training-step counter, a `u32` stored in the bits of an `f32`
/// element. Kernels that need the step (random streams, bias correction) read it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdvanceStep {
    pub counter: TensorId,
}

/// `torch.optim.SGD` with dampening 0: `d = grad + weight_decay·param`, then with
/// momentum `buf = μ·buf + d` and `d = d + μ·buf` (Nesterov) or `d = buf`, and finally
/// `param -= lr·d`. The buffer starts at zero, so the first step sets `buf = d` exactly
/// as torch's first-step clone does.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub param: TensorId,
    pub grad: TensorId,
    pub len: usize,
    pub momentum: Option<Momentum>,
    pub weight_decay: f32,
}

/// Momentum state of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Momentum {
    pub buffer: TensorId,
    pub momentum: f32,
    pub nesterov: bool,
}

/// `torch.optim.Adam` (`decoupled: false`, L2 decay added to the gradient) or
/// `torch.optim.AdamW` (`decoupled: true`, `param *= 1 - lr·weight_decay` first), with
/// bias correction from the device step counter `step` (see [`AdvanceStep`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub param: TensorId,
    pub grad: TensorId,
    pub exp_avg: TensorId,
    pub exp_avg_sq: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
}

fn unit(name: &str, v: f32) -> Result<()> {
    ensure!((0.0..1.0).contains(&v), "{name} must be in [0, 1), got {v}");
    Ok(())
}

fn non_negative(name: &str, v: f32) -> Result<()> {
    ensure!(
        v.is_finite() && v >= 0.0,
        "{name} must be finite and >= 0, got {v}"
    );
    Ok(())
}

impl Operation for AdvanceStep {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.counter]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.counter]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.counter]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.counter, 1)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.counter, |c, _| cpu::advance_step(c));
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::advance_step(self, lw)
    }
}

impl Operation for Sgd {
    fn reads(&self) -> Vec<TensorId> {
        let mut r = vec![self.param, self.grad];
        r.extend(self.momentum.map(|m| m.buffer));
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        let mut w = vec![self.param];
        w.extend(self.momentum.map(|m| m.buffer));
        w
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        self.reads().into_iter().map(|t| (t, self.len)).collect()
    }
    fn check(&self) -> Result<()> {
        non_negative("weight_decay", self.weight_decay)?;
        if let Some(m) = self.momentum {
            unit("momentum", m.momentum)?;
        }
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let lr = h.lr()?;
        let mut buf = self.momentum.map(|m| h.take(m.buffer));
        h.update(self.param, |p, h| {
            let momentum = buf
                .as_deref_mut()
                .zip(self.momentum)
                .map(|(b, m)| (b, m.momentum, m.nesterov));
            cpu::sgd(p, h.get(self.grad), momentum, lr, self.weight_decay)
        });
        if let (Some(b), Some(m)) = (buf, self.momentum) {
            h.put(m.buffer, b);
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::sgd(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::sgd(&Sgd { len, ..*self }, lw)
        })
    }
}

impl Operation for Adam {
    fn reads(&self) -> Vec<TensorId> {
        vec![
            self.param,
            self.grad,
            self.exp_avg,
            self.exp_avg_sq,
            self.step,
        ]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.param, self.exp_avg, self.exp_avg_sq]
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v: Vec<_> = [self.param, self.grad, self.exp_avg, self.exp_avg_sq]
            .map(|t| (t, self.len))
            .to_vec();
        v.push((self.step, 1));
        v
    }
    fn check(&self) -> Result<()> {
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        ensure!(
            self.eps.is_finite() && self.eps > 0.0,
            "eps must be finite and > 0, got {}",
            self.eps
        );
        non_negative("weight_decay", self.weight_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let params = cpu::AdamParams {
            lr: h.lr()?,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
        };
        let t = h.step(self.step);
        let (mut m, mut v) = (h.take(self.exp_avg), h.take(self.exp_avg_sq));
        h.update(self.param, |p, h| {
            cpu::adam(p, h.get(self.grad), &mut m, &mut v, t, params)
        });
        h.put(self.exp_avg, m);
        h.put(self.exp_avg_sq, v);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::adam(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::adam(&Adam { len, ..*self }, lw)
        })
    }
}
