//! Optimizer updates with `torch.optim`'s definitions: the step counter
//! ([`AdvanceStep`]), SGD with momentum, Nesterov and weight decay ([`Sgd`]),
//! Adam/AdamW with AMSGrad ([`Adam`]), [`Rmsprop`], [`Adagrad`], [`Adamax`] and NAdam
//! ([`NadamMuProduct`] then [`Nadam`]). The learning rate comes from the hyper-parameter block
//! ([`crate::tensor::Hyper`]) so schedules change it without recompiling.

pub mod cpu;
pub mod group;
pub mod wgpu;

pub use group::{SgdGroup, SGD_GROUP};

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
    /// AMSGrad's running maximum of `exp_avg_sq` (`max_exp_avg_sq`), when on.
    pub max_exp_avg_sq: Option<TensorId>,
}

/// `torch.optim.RMSprop`: `square_avg = α·square_avg + (1-α)·g²`; centered, `grad_avg =
/// α·grad_avg + (1-α)·g` and the denominator `√(square_avg - grad_avg²) + eps`, else
/// `√square_avg + eps`; with momentum `buf = μ·buf + g/denom`, `param -= lr·buf`, else
/// `param -= lr·g/denom`. `g` includes the L2 term `weight_decay·param`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rmsprop {
    pub param: TensorId,
    pub grad: TensorId,
    pub square_avg: TensorId,
    /// `momentum_buffer`, present when `momentum > 0`.
    pub momentum_buffer: Option<TensorId>,
    /// `grad_avg`, present when centered.
    pub grad_avg: Option<TensorId>,
    pub len: usize,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
}

/// `torch.optim.Adagrad`: `sum += g²`, `param -= clr·g/(√sum + eps)` with
/// `clr = lr / (1 + (t-1)·lr_decay)` at step `t` of the device counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Adagrad {
    pub param: TensorId,
    pub grad: TensorId,
    pub sum: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub lr_decay: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// `torch.optim.Adamax`: `exp_avg` as Adam's, `exp_inf = max(β₂·exp_inf, |g| + eps)`,
/// `param -= lr/(1-β₁ᵗ)·exp_avg/exp_inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Adamax {
    pub param: TensorId,
    pub grad: TensorId,
    pub exp_avg: TensorId,
    pub exp_inf: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// NAdam's momentum coefficient at step `t`: `μ_t = β₁·(1 - ½·0.96^(t·ψ))` with `ψ` the
/// momentum decay, as torch's `_single_tensor_nadam`.
pub fn nadam_mu(beta1: f64, momentum_decay: f64, t: f64) -> f64 {
    beta1 * (1.0 - 0.5 * 0.96f64.powf(t * momentum_decay))
}

/// Multiplies NAdam's `mu_product` (a 1-element tensor) by `μ_t` of the current step.
/// Its own op because every element of the update reads the product: a kernel that also
/// wrote it would race with its other workgroups.
#[derive(Clone, Debug, PartialEq)]
pub struct NadamMuProduct {
    pub mu_product: TensorId,
    pub step: TensorId,
    pub beta1: f32,
    pub momentum_decay: f32,
}

/// `torch.optim.NAdam` (L2 weight decay), after [`NadamMuProduct`] of the same step:
/// with `Π = mu_product` (through `μ_t`), `denom = √(v/(1-β₂ᵗ)) + eps`,
/// `param -= lr·(1-μ_t)/(1-Π)·g/denom + lr·μ_{t+1}/(1-Π·μ_{t+1})·m/denom`.
#[derive(Clone, Debug, PartialEq)]
pub struct Nadam {
    pub param: TensorId,
    pub grad: TensorId,
    pub exp_avg: TensorId,
    pub exp_avg_sq: TensorId,
    pub mu_product: TensorId,
    pub step: TensorId,
    pub len: usize,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum_decay: f32,
}

fn unit(name: &str, v: f32) -> Result<()> {
    ensure!((0.0..1.0).contains(&v), "{name} must be in [0, 1), got {v}");
    Ok(())
}

fn positive(name: &str, v: f32) -> Result<()> {
    ensure!(
        v.is_finite() && v > 0.0,
        "{name} must be finite and > 0, got {v}"
    );
    Ok(())
}

/// Takes the state tensors out of the host for an update that writes them, and puts them
/// back after.
fn with_states<const N: usize>(
    h: &mut Host,
    states: [TensorId; N],
    f: impl FnOnce(&mut [Vec<f32>; N], &mut Host),
) {
    let mut taken = states.map(|t| h.take(t));
    f(&mut taken, h);
    for (t, v) in states.into_iter().zip(taken) {
        h.put(t, v);
    }
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
                .map(|(b, m)| (b, h.momentum(m.momentum), m.nesterov));
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
        let mut r = vec![
            self.param,
            self.grad,
            self.exp_avg,
            self.exp_avg_sq,
            self.step,
        ];
        r.extend(self.max_exp_avg_sq);
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        let mut w = vec![self.param, self.exp_avg, self.exp_avg_sq];
        w.extend(self.max_exp_avg_sq);
        w
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v: Vec<_> = self.writes().into_iter().map(|t| (t, self.len)).collect();
        v.push((self.grad, self.len));
        v.push((self.step, 1));
        v
    }
    fn check(&self) -> Result<()> {
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let params = cpu::AdamParams {
            lr: h.lr()?,
            beta1: h.momentum(self.beta1),
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
        };
        let t = h.step(self.step);
        let (mut m, mut v) = (h.take(self.exp_avg), h.take(self.exp_avg_sq));
        let mut vmax = self.max_exp_avg_sq.map(|t| h.take(t));
        h.update(self.param, |p, h| {
            cpu::adam(
                p,
                h.get(self.grad),
                &mut m,
                &mut v,
                vmax.as_deref_mut(),
                t,
                params,
            )
        });
        h.put(self.exp_avg, m);
        h.put(self.exp_avg_sq, v);
        if let (Some(t), Some(v)) = (self.max_exp_avg_sq, vmax) {
            h.put(t, v);
        }
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

impl Operation for Rmsprop {
    fn reads(&self) -> Vec<TensorId> {
        let mut r = vec![self.param, self.grad, self.square_avg];
        r.extend(self.momentum_buffer);
        r.extend(self.grad_avg);
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        let mut w = vec![self.param, self.square_avg];
        w.extend(self.momentum_buffer);
        w.extend(self.grad_avg);
        w
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        self.reads().into_iter().map(|t| (t, self.len)).collect()
    }
    fn check(&self) -> Result<()> {
        unit("alpha", self.alpha)?;
        positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)?;
        unit("momentum", self.momentum)?;
        ensure!(
            (self.momentum > 0.0) == self.momentum_buffer.is_some(),
            "RMSprop has a momentum buffer exactly when its momentum is > 0"
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let c = cpu::RmspropParams {
            lr: h.lr()?,
            alpha: self.alpha,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum: h.momentum(self.momentum),
        };
        let mut sq = h.take(self.square_avg);
        let mut buf = self.momentum_buffer.map(|t| h.take(t));
        let mut gavg = self.grad_avg.map(|t| h.take(t));
        h.update(self.param, |p, h| {
            cpu::rmsprop(
                p,
                h.get(self.grad),
                &mut sq,
                buf.as_deref_mut(),
                gavg.as_deref_mut(),
                c,
            )
        });
        h.put(self.square_avg, sq);
        for (t, v) in [(self.momentum_buffer, buf), (self.grad_avg, gavg)] {
            if let (Some(t), Some(v)) = (t, v) {
                h.put(t, v);
            }
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::rmsprop(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::rmsprop(&Rmsprop { len, ..*self }, lw)
        })
    }
}

impl Operation for Adagrad {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.param, self.grad, self.sum, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.param, self.sum]
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v: Vec<_> = [self.param, self.grad, self.sum]
            .map(|t| (t, self.len))
            .to_vec();
        v.push((self.step, 1));
        v
    }
    fn check(&self) -> Result<()> {
        non_negative("lr_decay", self.lr_decay)?;
        positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (lr, t) = (h.lr()?, h.step(self.step));
        with_states(h, [self.sum], |[sum], h| {
            h.update(self.param, |p, h| {
                cpu::adagrad(
                    p,
                    h.get(self.grad),
                    sum,
                    t,
                    lr,
                    self.lr_decay,
                    self.eps,
                    self.weight_decay,
                )
            })
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::adagrad(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::adagrad(&Adagrad { len, ..*self }, lw)
        })
    }
}

impl Operation for Adamax {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.param, self.grad, self.exp_avg, self.exp_inf, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.param, self.exp_avg, self.exp_inf]
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v: Vec<_> = [self.param, self.grad, self.exp_avg, self.exp_inf]
            .map(|t| (t, self.len))
            .to_vec();
        v.push((self.step, 1));
        v
    }
    fn check(&self) -> Result<()> {
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (lr, t, beta1) = (h.lr()?, h.step(self.step), h.momentum(self.beta1));
        with_states(h, [self.exp_avg, self.exp_inf], |[m, u], h| {
            h.update(self.param, |p, h| {
                cpu::adamax(
                    p,
                    h.get(self.grad),
                    m,
                    u,
                    t,
                    [lr, beta1, self.beta2, self.eps, self.weight_decay],
                )
            })
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::adamax(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::adamax(&Adamax { len, ..*self }, lw)
        })
    }
}

impl Operation for NadamMuProduct {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.mu_product, self.step]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.mu_product]
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.mu_product, 1), (self.step, 1)]
    }
    fn check(&self) -> Result<()> {
        unit("beta1", self.beta1)?;
        non_negative("momentum_decay", self.momentum_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let t = h.step(self.step) as f64;
        let beta1 = h.momentum(self.beta1);
        let mu = nadam_mu(beta1 as f64, self.momentum_decay as f64, t);
        h.update(self.mu_product, |p, _| p[0] = (p[0] as f64 * mu) as f32);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::nadam_mu_product(self, lw)
    }
}

impl Operation for Nadam {
    fn reads(&self) -> Vec<TensorId> {
        vec![
            self.param,
            self.grad,
            self.exp_avg,
            self.exp_avg_sq,
            self.mu_product,
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
        v.push((self.mu_product, 1));
        v.push((self.step, 1));
        v
    }
    fn check(&self) -> Result<()> {
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("momentum_decay", self.momentum_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let c = cpu::NadamParams {
            lr: h.lr()?,
            beta1: h.momentum(self.beta1),
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum_decay: self.momentum_decay,
        };
        let t = h.step(self.step);
        let mu_product = h.get(self.mu_product)[0];
        with_states(h, [self.exp_avg, self.exp_avg_sq], |[m, v], h| {
            h.update(self.param, |p, h| {
                cpu::nadam(p, h.get(self.grad), m, v, mu_product, t, c)
            })
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::nadam(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        lw.element_windows(&self.reads(), self.len, 1, |lw, len| {
            wgpu::nadam(&Nadam { len, ..*self }, lw)
        })
    }
}
