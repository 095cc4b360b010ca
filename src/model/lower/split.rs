//! The training step of a data-parallel plan, split where the host exchanges with the
//! other ranks: synchronized batch norm's statistics and sums, and the gradients.

use super::*;
use crate::graph::Exchange;

/// How a data-parallel plan is split (see `crate::distributed`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SplitOptions {
    /// Batch norm over the global batch (PyTorch's `SyncBatchNorm`): each training-mode
    /// batch norm becomes its two halves around an exchange, forward and backward.
    pub sync_bn: bool,
}

impl Builder<'_> {
    fn sync_bn(&self) -> bool {
        self.split.is_some_and(|s| s.sync_bn)
    }

    /// Pushes `op` to `train`, or with sync-bn its split: local statistics, the exchange,
    /// normalization by the global ones.
    pub(super) fn push_bn_train(&mut self, op: BatchNormTrain) {
        if !self.sync_bn() {
            self.p.train.push(Op::BatchNormTrain(op));
            return;
        }
        let name = self.p.tensors[op.mean].name.replace(".batch_mean", "");
        let local = self.local(format!("{name}.local_stats"), &[2 * op.cols]);
        let global = self.local(format!("{name}.global_stats"), &[3 * op.cols]);
        self.p.train.push(Op::BatchNormStats(BatchNormStats {
            x: op.x,
            stats: local,
            rows: op.rows,
            cols: op.cols,
        }));
        let exchange = Exchange::BnStats {
            local,
            global,
            cols: op.cols,
        };
        self.p.parts.push((self.p.train.len(), exchange));
        self.p.train.push(Op::BatchNormApply(BatchNormApply {
            x: op.x,
            y: op.y,
            gamma: op.gamma,
            beta: op.beta,
            global,
            mean: op.mean,
            invstd: op.invstd,
            running_mean: op.running_mean,
            running_var: op.running_var,
            rows: op.rows,
            cols: op.cols,
            momentum: op.momentum,
            eps: op.eps,
        }));
    }

    /// Pushes `op` to `train`, or with sync-bn its split: local sums (which are also the
    /// local dγ and dβ), the exchange, dx from the global sums.
    pub(super) fn push_bn_backward(&mut self, op: BatchNormBackward) {
        if !self.sync_bn() {
            self.p.train.push(Op::BatchNormBackward(op));
            return;
        }
        let name = self.p.tensors[op.dbeta].name.replace(".bias.grad", "");
        let global = self.local(format!("{name}.global_grad_sums"), &[2 * op.cols]);
        self.p.train.push(Op::BatchNormGradSums(BatchNormGradSums {
            x: op.x,
            dy: op.dy,
            mean: op.mean,
            invstd: op.invstd,
            dgamma: op.dgamma,
            dbeta: op.dbeta,
            rows: op.rows,
            cols: op.cols,
        }));
        let exchange = Exchange::BnGrads {
            dgamma: op.dgamma,
            dbeta: op.dbeta,
            global,
            cols: op.cols,
        };
        self.p.parts.push((self.p.train.len(), exchange));
        self.p
            .train
            .push(Op::BatchNormGradApply(BatchNormGradApply {
                x: op.x,
                dy: op.dy,
                gamma: op.gamma,
                mean: op.mean,
                invstd: op.invstd,
                global,
                dx: op.dx,
                rows: op.rows,
                cols: op.cols,
            }));
    }

    /// Ends the split step with the gradient exchange where the update starts; nothing
    /// for a plan that is not split.
    pub(super) fn finish_parts(&mut self) {
        if self.split.is_none() || self.p.train_error.is_some() {
            self.p.parts.clear();
            return;
        }
        let all = 0..self.p.grads.len();
        self.p
            .parts
            .push((self.p.update_start, Exchange::Grads(all)));
    }
}
