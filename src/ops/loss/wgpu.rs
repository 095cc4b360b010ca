//! Lowering of the losses and the metric accumulator to `shaders/loss.wgsl`.

use super::{AccumulateMetrics, Loss, LossGrad};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
};
use crate::tensor::TensorId;
use anyhow::Result;

/// With the guard's shared marking, for the per-row losses' check.
pub const SHADER: Shader = Shader::scalar(
    "loss",
    concat!(
        include_str!("../../../shaders/loss.wgsl"),
        include_str!("../../../shaders/health/mark.wgsl")
    ),
);

const PRED: Slot = Slot::read(1, "pred");
const TRUTH: Slot = Slot::read(2, "truth");
const DPRED: Slot = Slot::read_write(3, "dpred");
const ROW_LOSS: Slot = Slot::read_write(4, "row_loss");
const ROW_CORRECT: Slot = Slot::read_write(5, "row_correct");
const LOSS_IN: Slot = Slot::read(6, "loss_in");
const CORRECT_IN: Slot = Slot::read(7, "correct_in");
const METRICS: Slot = Slot::read_write(8, "metrics");
const FLAGS: Slot = Slot::read_write(9, "flags");
const STEP_BITS: Slot = Slot::read(10, "step_bits");

crate::uniform! {
    /// `guard`, `slot`, `peaks`: the accumulator's check of the per-row losses (see
    /// [`accumulate_metrics`]).
    pub struct Dims {
        rows: u32, cols: u32, guard: u32, slot: u32, peaks: u32, _pad0: u32, _pad1: u32, _pad2: u32
    }
}

/// Rows per workgroup of the loss kernels (`ROW_WG` in the WGSL).
const ROW_WG: usize = 64;

/// The loss kernel of `op`, writing its gradient to `dpred`.
pub fn loss(op: &LossGrad, dpred: Res, lw: &mut Lowerer) -> Result<Dispatch> {
    let entry = match op.loss {
        Loss::SoftmaxCrossEntropy => "cross_entropy",
        Loss::MeanSquaredError => "mse",
    };
    let groups = lw.grid(op.rows.div_ceil(ROW_WG))?;
    let dims = Dims {
        rows: u32_of(op.rows)?,
        cols: u32_of(op.cols)?,
        ..Dims::default()
    };
    lw.dispatch(
        KernelKey::new(&SHADER, entry),
        Some(dims),
        &[
            (PRED, Res::Tensor(op.pred)),
            (TRUTH, Res::Tensor(op.target)),
            (DPRED, dpred),
            (ROW_LOSS, Res::Tensor(op.row_loss)),
            (ROW_CORRECT, Res::Tensor(op.row_correct)),
        ],
        groups,
    )
}

/// The metric accumulator, which with `guard` (`flags`, `step`, the peaks' offset and
/// the slot) also does the non-finite guard's check of the per-row losses it reads.
pub fn accumulate_metrics(
    op: &AccumulateMetrics,
    guard: Option<(TensorId, TensorId, usize, usize)>,
    lw: &mut Lowerer,
) -> Result<Dispatch> {
    let [p0, p1, ..] = lw.placeholders.clone();
    let (flags, step, peaks, slot) = match guard {
        Some((flags, step, peaks, slot)) => (lw.buffer(flags), lw.buffer(step), peaks, slot),
        None => (p0, p1, 0, 0),
    };
    let dims = Dims {
        rows: u32_of(op.rows)?,
        guard: guard.is_some() as u32,
        slot: u32_of(slot)?,
        peaks: u32_of(peaks)?,
        ..Dims::default()
    };
    lw.dispatch(
        KernelKey::new(&SHADER, "accumulate_metrics"),
        Some(dims),
        &[
            (LOSS_IN, Res::Tensor(op.row_loss)),
            (CORRECT_IN, Res::Tensor(op.row_correct)),
            (METRICS, Res::Tensor(op.metrics)),
            (FLAGS, Res::Buffer(&flags)),
            (STEP_BITS, Res::Buffer(&step)),
        ],
        [1, 1, 1],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[
            PRED,
            TRUTH,
            DPRED,
            ROW_LOSS,
            ROW_CORRECT,
            LOSS_IN,
            CORRECT_IN,
            METRICS,
            FLAGS,
            STEP_BITS,
        ],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
