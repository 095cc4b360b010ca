//! Batch normalization (`torch.nn.BatchNorm1d`): training mode with batch statistics and
//! running-statistics updates ([`BatchNormTrain`]), evaluation mode with the running
//! statistics ([`BatchNormEval`]), and the exact backward through the batch statistics
//! ([`BatchNormBackward`]).
//!
//! Synchronized batch norm (data-parallel training over the global batch, as PyTorch's
//! `SyncBatchNorm`) splits the training-mode ops where the host exchanges with the other
//! ranks: [`BatchNormStats`] → host merges the ranks' statistics → [`BatchNormApply`],
//! and [`BatchNormGradSums`] → host sums them over ranks → [`BatchNormGradApply`]. One
//! process running the split ops computes what the fused ones do.

pub mod cpu;
pub mod wgpu;

use super::{Host, Op, Operation};
use crate::device::{Dispatch, Lowerer, Step};
use crate::tensor::TensorId;
use anyhow::Result;

/// Batch normalization in training mode, per feature over the batch: normalizes `x`
/// with the batch mean and biased variance, then scales by `gamma` and shifts by
/// `beta`. Saves `mean` and `invstd = 1/√(var+eps)` for backward and updates the
/// running statistics with `momentum`, using the unbiased variance as PyTorch does.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormTrain {
    pub x: TensorId,
    pub y: TensorId,
    pub gamma: TensorId,
    pub beta: TensorId,
    pub mean: TensorId,
    pub invstd: TensorId,
    pub running_mean: TensorId,
    pub running_var: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub momentum: f32,
    pub eps: f32,
}

/// Batch normalization in evaluation mode, with the running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormEval {
    pub x: TensorId,
    pub y: TensorId,
    pub gamma: TensorId,
    pub beta: TensorId,
    pub running_mean: TensorId,
    pub running_var: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

/// The exact batch-norm backward through the batch statistics:
/// `dx = γ·invstd/N · (N·dy − Σdy − x̂·Σ(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormBackward {
    pub x: TensorId,
    pub dy: TensorId,
    pub gamma: TensorId,
    pub mean: TensorId,
    pub invstd: TensorId,
    pub dx: TensorId,
    pub dgamma: TensorId,
    pub dbeta: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// Per-feature mean and centered sum of squares of the local rows, into
/// `stats = [mean; M2]` (`2·cols`), for the host to merge across ranks.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormStats {
    pub x: TensorId,
    pub stats: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// [`BatchNormTrain`] with statistics the host wrote to `global`
/// (`[mean; biased var; unbiased var]`, `3·cols`): the global batch's.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormApply {
    pub x: TensorId,
    pub y: TensorId,
    pub gamma: TensorId,
    pub beta: TensorId,
    pub global: TensorId,
    pub mean: TensorId,
    pub invstd: TensorId,
    pub running_mean: TensorId,
    pub running_var: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub momentum: f32,
    pub eps: f32,
}

/// The local sums of the batch-norm backward pass: `dβ = Σdy`, `dγ = Σdy·x̂`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormGradSums {
    pub x: TensorId,
    pub dy: TensorId,
    pub mean: TensorId,
    pub invstd: TensorId,
    pub dgamma: TensorId,
    pub dbeta: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// `dx = γ·invstd·(dy − a − x̂·b)` with `global = [a; b]` (`2·cols`) from the host: the
/// global batch's `Σdy/N` and `Σdy·x̂/N`, in this rank's loss scale.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormGradApply {
    pub x: TensorId,
    pub dy: TensorId,
    pub gamma: TensorId,
    pub mean: TensorId,
    pub invstd: TensorId,
    pub global: TensorId,
    pub dx: TensorId,
    pub rows: usize,
    pub cols: usize,
}

impl Operation for BatchNormStats {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.stats]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.rows * self.cols), (self.stats, 2 * self.cols)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.stats, |s, h| {
            cpu::batch_norm_stats(h.get(self.x), s, self.rows, self.cols)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::stats(self, lw)
    }
}

impl Operation for BatchNormApply {
    fn reads(&self) -> Vec<TensorId> {
        let ins = [self.x, self.gamma, self.beta, self.global];
        [ins.as_slice(), &[self.running_mean, self.running_var]].concat()
    }
    fn writes(&self) -> Vec<TensorId> {
        let outs = [self.y, self.mean, self.invstd];
        [outs.as_slice(), &[self.running_mean, self.running_var]].concat()
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.running_mean, self.running_var]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        let per_col = [
            self.gamma,
            self.beta,
            self.mean,
            self.invstd,
            self.running_mean,
            self.running_var,
        ];
        let mut lens = vec![(self.x, all), (self.y, all), (self.global, 3 * col)];
        lens.extend(per_col.map(|t| (t, col)));
        lens
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let outs = [
            self.y,
            self.mean,
            self.invstd,
            self.running_mean,
            self.running_var,
        ];
        let [mut y, mut mean, mut invstd, mut rm, mut rv] = outs.map(|t| h.take(t));
        cpu::batch_norm_apply(
            h.get(self.x),
            &mut y,
            h.get(self.gamma),
            h.get(self.beta),
            h.get(self.global),
            &mut mean,
            &mut invstd,
            &mut rm,
            &mut rv,
            self.rows,
            self.cols,
            self.momentum,
            self.eps,
        );
        for (t, v) in outs.into_iter().zip([y, mean, invstd, rm, rv]) {
            h.put(t, v);
        }
        Ok(())
    }
    fn lower(&self, _lw: &mut Lowerer) -> Result<Dispatch> {
        anyhow::bail!(
            "synchronized batch norm's normalization is two dispatches, lowered by lower_fused"
        )
    }
    /// Both dispatches of [`wgpu::apply`] as the op's own steps; `None` where a tensor
    /// exceeds one storage binding, so the engine refuses the op naming it.
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        _following: &[Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        let max = lw.max_binding();
        if self
            .reads()
            .into_iter()
            .chain(self.writes())
            .any(|t| lw.bytes(t) > max)
        {
            return Ok(None);
        }
        let steps = wgpu::apply(self, lw)?
            .into_iter()
            .map(Step::Dispatch)
            .collect();
        Ok(Some((steps, 1)))
    }
}

impl Operation for BatchNormGradSums {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.dy, self.mean, self.invstd]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dgamma, self.dbeta]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        vec![
            (self.x, all),
            (self.dy, all),
            (self.mean, col),
            (self.invstd, col),
            (self.dgamma, col),
            (self.dbeta, col),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let [mut dgamma, mut dbeta] = [self.dgamma, self.dbeta].map(|t| h.take(t));
        let [x, dy, mean, invstd] = [self.x, self.dy, self.mean, self.invstd].map(|t| h.get(t));
        cpu::batch_norm_grad_sums(
            x,
            dy,
            mean,
            invstd,
            &mut dgamma,
            &mut dbeta,
            self.rows,
            self.cols,
        );
        h.put(self.dgamma, dgamma);
        h.put(self.dbeta, dbeta);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::grad_sums(self, lw)
    }
}

impl Operation for BatchNormGradApply {
    fn reads(&self) -> Vec<TensorId> {
        vec![
            self.x,
            self.dy,
            self.gamma,
            self.mean,
            self.invstd,
            self.global,
        ]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dx]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        vec![
            (self.x, all),
            (self.dy, all),
            (self.gamma, col),
            (self.mean, col),
            (self.invstd, col),
            (self.global, 2 * col),
            (self.dx, all),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.dx, |dx, h| {
            let ins = [
                self.x,
                self.dy,
                self.gamma,
                self.mean,
                self.invstd,
                self.global,
            ];
            let [x, dy, gamma, mean, invstd, global] = ins.map(|t| h.get(t));
            cpu::batch_norm_grad_apply(x, dy, gamma, mean, invstd, global, dx, self.rows, self.cols)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::grad_apply(self, lw)
    }
}

impl Operation for BatchNormTrain {
    fn reads(&self) -> Vec<TensorId> {
        vec![
            self.x,
            self.gamma,
            self.beta,
            self.running_mean,
            self.running_var,
        ]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![
            self.y,
            self.mean,
            self.invstd,
            self.running_mean,
            self.running_var,
        ]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.running_mean, self.running_var]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        vec![
            (self.x, all),
            (self.y, all),
            (self.gamma, col),
            (self.beta, col),
            (self.mean, col),
            (self.invstd, col),
            (self.running_mean, col),
            (self.running_var, col),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let outs = [
            self.y,
            self.mean,
            self.invstd,
            self.running_mean,
            self.running_var,
        ];
        let [mut y, mut mean, mut invstd, mut rm, mut rv] = outs.map(|t| h.take(t));
        cpu::batch_norm_train(
            h.get(self.x),
            &mut y,
            h.get(self.gamma),
            h.get(self.beta),
            &mut mean,
            &mut invstd,
            &mut rm,
            &mut rv,
            self.rows,
            self.cols,
            self.momentum,
            self.eps,
        );
        for (t, v) in outs.into_iter().zip([y, mean, invstd, rm, rv]) {
            h.put(t, v);
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::train(self, lw)
    }
}

impl Operation for BatchNormEval {
    fn reads(&self) -> Vec<TensorId> {
        vec![
            self.x,
            self.gamma,
            self.beta,
            self.running_mean,
            self.running_var,
        ]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        vec![
            (self.x, all),
            (self.y, all),
            (self.gamma, col),
            (self.beta, col),
            (self.running_mean, col),
            (self.running_var, col),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.y, |y, h| {
            let ins = [
                self.x,
                self.gamma,
                self.beta,
                self.running_mean,
                self.running_var,
            ];
            let [x, gamma, beta, rm, rv] = ins.map(|t| h.get(t));
            cpu::batch_norm_eval(x, y, gamma, beta, rm, rv, self.rows, self.cols, self.eps)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::eval(self, lw)
    }
}

impl Operation for BatchNormBackward {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.x, self.dy, self.gamma, self.mean, self.invstd]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dx, self.dgamma, self.dbeta]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (all, col) = (self.rows * self.cols, self.cols);
        vec![
            (self.x, all),
            (self.dy, all),
            (self.gamma, col),
            (self.mean, col),
            (self.invstd, col),
            (self.dx, all),
            (self.dgamma, col),
            (self.dbeta, col),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let outs = [self.dx, self.dgamma, self.dbeta];
        let [mut dx, mut dgamma, mut dbeta] = outs.map(|t| h.take(t));
        let ins = [self.x, self.dy, self.gamma, self.mean, self.invstd];
        let [x, dy, gamma, mean, invstd] = ins.map(|t| h.get(t));
        cpu::batch_norm_backward(
            x,
            dy,
            gamma,
            mean,
            invstd,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            self.rows,
            self.cols,
        );
        for (t, v) in outs.into_iter().zip([dx, dgamma, dbeta]) {
            h.put(t, v);
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::backward(self, lw)
    }
}
