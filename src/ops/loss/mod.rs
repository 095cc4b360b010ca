//! Losses: per-row loss and correctness with the gradient of the mean loss
//! ([`LossGrad`]), without the gradient ([`LossEval`]), and the on-device metric
//! accumulator ([`AccumulateMetrics`]).

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer, Res};
use crate::tensor::TensorId;
use anyhow::Result;

/// Training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Mean over rows of `-log softmax(logits)[label]`, as `torch.nn.CrossEntropyLoss`.
    /// Targets are class indices stored as `f32` (one per row).
    SoftmaxCrossEntropy,
    /// Mean over all elements of `(pred - target)^2`, as `torch.nn.MSELoss`.
    MeanSquaredError,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "cross-entropy",
            Loss::MeanSquaredError => "mse",
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cross-entropy" | "crossentropy" | "ce" | "softmax-cross-entropy" => {
                Ok(Loss::SoftmaxCrossEntropy)
            }
            "mse" | "mean-squared-error" => Ok(Loss::MeanSquaredError),
            _ => anyhow::bail!("unknown loss '{s}'; expected 'cross-entropy' or 'mse'"),
        }
    }
}
/// Elements of the target tensor for `rows` rows: one class index per row for
/// cross-entropy, a full row of values for MSE.
pub fn target_len(loss: Loss, rows: usize, cols: usize) -> usize {
    match loss {
        Loss::SoftmaxCrossEntropy => rows,
        Loss::MeanSquaredError => rows * cols,
    }
}

/// Layout of the metrics accumulator: `[loss sum, correct count, rows seen]`.
pub const METRICS_LEN: usize = 3;

/// Per-row loss and the gradient of the *mean* loss with respect to `pred`.
/// Writes `row_loss[r]`, `row_correct[r]` (1 when argmax equals the label; 0 for MSE)
/// and `dpred`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossGrad {
    pub loss: Loss,
    pub pred: TensorId,
    pub target: TensorId,
    pub dpred: TensorId,
    pub row_loss: TensorId,
    pub row_correct: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// Per-row loss without the gradient (evaluation).
#[derive(Clone, Debug, PartialEq)]
pub struct LossEval {
    pub loss: Loss,
    pub pred: TensorId,
    pub target: TensorId,
    pub row_loss: TensorId,
    pub row_correct: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// `metrics += [Σ row_loss, Σ row_correct, rows]`, so metrics accumulate on the device
/// and are read back only when the host asks.
#[derive(Clone, Debug, PartialEq)]
pub struct AccumulateMetrics {
    pub row_loss: TensorId,
    pub row_correct: TensorId,
    pub metrics: TensorId,
    pub rows: usize,
}

impl Operation for LossGrad {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.pred, self.target]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dpred, self.row_loss, self.row_correct]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.pred, self.rows * self.cols),
            (self.target, target_len(self.loss, self.rows, self.cols)),
            (self.dpred, self.rows * self.cols),
            (self.row_loss, self.rows),
            (self.row_correct, self.rows),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (mut d, mut l, mut c) = (
            h.take(self.dpred),
            h.take(self.row_loss),
            h.take(self.row_correct),
        );
        let (pred, target) = (h.get(self.pred), h.get(self.target));
        cpu::loss(
            self.loss,
            pred,
            target,
            Some(&mut d),
            &mut l,
            &mut c,
            self.rows,
            self.cols,
        );
        h.put(self.dpred, d);
        h.put(self.row_loss, l);
        h.put(self.row_correct, c);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::loss(self, Res::Tensor(self.dpred), lw)
    }
}

impl Operation for LossEval {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.pred, self.target]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.row_loss, self.row_correct]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.pred, self.rows * self.cols),
            (self.target, target_len(self.loss, self.rows, self.cols)),
            (self.row_loss, self.rows),
            (self.row_correct, self.rows),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (mut l, mut c) = (h.take(self.row_loss), h.take(self.row_correct));
        let (pred, target) = (h.get(self.pred), h.get(self.target));
        cpu::loss(
            self.loss, pred, target, None, &mut l, &mut c, self.rows, self.cols,
        );
        h.put(self.row_loss, l);
        h.put(self.row_correct, c);
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        // The kernel always writes a gradient; in evaluation it goes to scratch.
        let bytes = (self.rows * self.cols * 4) as u64;
        let scratch = lw.storage_buffer("loss.eval.scratch", bytes)?;
        let with_grad = LossGrad {
            loss: self.loss,
            pred: self.pred,
            target: self.target,
            dpred: self.pred,
            row_loss: self.row_loss,
            row_correct: self.row_correct,
            rows: self.rows,
            cols: self.cols,
        };
        wgpu::loss(&with_grad, Res::Buffer(&scratch), lw)
    }
}

impl Operation for AccumulateMetrics {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.row_loss, self.row_correct, self.metrics]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.metrics]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.metrics]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![
            (self.row_loss, self.rows),
            (self.row_correct, self.rows),
            (self.metrics, METRICS_LEN),
        ]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.metrics, |m, h| {
            cpu::accumulate_metrics(h.get(self.row_loss), h.get(self.row_correct), m)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::accumulate_metrics(self, None, lw)
    }
    /// With the non-finite guard of the per-row losses, where a guard later in the list
    /// checks them and nothing in between changes them: the accumulator reads them anyway,
    /// and the guard leaves them out (a dispatch fewer where they were all it had left).
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        following: &[super::Op],
    ) -> Result<Option<(Vec<crate::device::Step>, usize)>> {
        let later =
            crate::ops::health::later_guard(&following[1..], self.row_loss, self.rows, None);
        let Some((g, slot)) = later else {
            return Ok(None);
        };
        let guard = Some((g.flags, g.step, g.peaks, slot));
        let d = wgpu::accumulate_metrics(self, guard, lw)?;
        lw.absorbed
            .insert(crate::device::Absorbed::Guard(self.row_loss));
        Ok(Some((vec![crate::device::Step::Dispatch(d)], 1)))
    }
}
