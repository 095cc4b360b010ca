//! The training step of a data-parallel plan, split where the host exchanges with the
//! other ranks: synchronized batch norm's statistics and sums, and the gradients.

use super::*;
use crate::graph::Exchange;

/// The local tensor of a data-parallel plan where the host writes, each step, the
/// rank's first row in the global batch (a `u32` in an `f32`'s bits).
pub const FIRST_ROW_NAME: &str = "rank.first_row";

/// As [`build_from`], for data-parallel training: the training step is split into
/// [`Plan::parts`] where the host exchanges with the other ranks (see
/// `crate::distributed`), and dropout draws the masks of the rank's global rows.
pub fn build_split(
    spec: &MlpSpec,
    persistent: &[PersistentDesc],
    rows: usize,
    start: usize,
    split: SplitOptions,
) -> anyhow::Result<Plan> {
    build_with(spec, persistent, rows, start, None, Some(split))
}

/// How a data-parallel plan is split (see `crate::distributed`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SplitOptions {
    /// Batch norm over the global batch (PyTorch's `SyncBatchNorm`): each training-mode
    /// batch norm becomes its two halves around an exchange, forward and backward.
    pub sync_bn: bool,
    /// Gradient bytes per bucket: the backward pass is cut after the op that completes
    /// each bucket's last gradient, so the host all-reduces a bucket while the device
    /// computes the rest (PyTorch DDP's `bucket_cap_mb`). `None`: one bucket, after the
    /// whole backward pass.
    pub bucket_bytes: Option<u64>,
}

impl Builder<'_> {
    /// In a data-parallel plan, the tensor holding the rank's first global row, for
    /// dropout to draw the masks one process draws for those rows; `None` elsewhere.
    pub(super) fn first_row(&mut self) -> Option<TensorId> {
        self.split?;
        let t = self.p.find(FIRST_ROW_NAME);
        let t = t.unwrap_or_else(|| self.local(FIRST_ROW_NAME, &[1]));
        self.p.first_row = Some(t);
        Some(t)
    }

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

    /// Adds the gradient exchanges to the split step: buckets of about `bucket_bytes`,
    /// each read back after the op that last writes one of its gradients, the last where
    /// the update starts; nothing for a plan that is not split.
    pub(super) fn finish_parts(&mut self) {
        let Some(split) = self.split.filter(|_| self.p.train_error.is_none()) else {
            self.p.parts.clear();
            return;
        };
        let end = self.p.update_start;
        // Where each gradient is complete: after the last op before the update that
        // writes it (a penalty or a grouped bias sum may come long after its matmul).
        let mut done: Vec<(usize, usize)> = (self.p.grads.iter().enumerate())
            .map(|(i, &(_, g))| {
                let last = self.p.train[..end]
                    .iter()
                    .rposition(|op| op.reads_writes().1.contains(&g));
                (last.map_or(0, |at| at + 1), i)
            })
            .collect();
        done.sort_unstable();
        let cap = split.bucket_bytes.unwrap_or(u64::MAX).max(1);
        let (mut bucket, mut bytes) = (Vec::new(), 0u64);
        let mut buckets = Vec::new();
        for (k, &(at, i)) in done.iter().enumerate() {
            bucket.push(i);
            bytes += self.p.tensors[self.p.grads[i].1].len() as u64 * 4;
            // A bucket closes once full, after the op completing its last gradient; the
            // gradients completed by that same op go with it.
            let same_op = done.get(k + 1).is_some_and(|n| n.0 == at);
            if bytes >= cap && !same_op && k + 1 < done.len() {
                buckets.push((at, Exchange::Grads(std::mem::take(&mut bucket))));
                bytes = 0;
            }
        }
        buckets.push((end, Exchange::Grads(bucket)));
        self.p.parts.extend(buckets);
        // Stable: at the same op, a batch-norm exchange (pushed earlier) goes first.
        self.p.parts.sort_by_key(|p| p.0);
    }
}
