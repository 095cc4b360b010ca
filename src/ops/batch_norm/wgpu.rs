//! Lowering of batch normalization to `shaders/batch_norm.wgsl`. The per-feature
//! reductions have two forms: a loop per feature for CPU-backed adapters, where barriers
//! cost more than the work, and a workgroup tree per feature for GPUs.

use super::{
    BatchNormApply, BatchNormBackward, BatchNormEval, BatchNormGradApply, BatchNormGradSums,
    BatchNormStats, BatchNormTrain,
};
use crate::device::{
    lanes, u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
    ELEMENTWISE_WG,
};
use anyhow::Result;

pub const SHADER: Shader = Shader::elements(
    "batch_norm",
    include_str!("../../../shaders/batch_norm.wgsl"),
);

const X: Slot = Slot::read(1, "x");
const GAMMA: Slot = Slot::read(2, "gamma");
const BETA: Slot = Slot::read(3, "beta");
const Y: Slot = Slot::read_write(4, "y");
const MEAN: Slot = Slot::read_write(5, "mean");
const INVSTD: Slot = Slot::read_write(6, "invstd");
const RUNNING_MEAN: Slot = Slot::read_write(7, "running_mean");
const RUNNING_VAR: Slot = Slot::read_write(8, "running_var");
const EVAL_MEAN: Slot = Slot::read(9, "eval_mean");
const EVAL_VAR: Slot = Slot::read(10, "eval_var");
const DY: Slot = Slot::read(11, "dy");
const SAVED_MEAN: Slot = Slot::read(12, "saved_mean");
const SAVED_INVSTD: Slot = Slot::read(13, "saved_invstd");
const DX: Slot = Slot::read_write(14, "dx");
const DGAMMA: Slot = Slot::read_write(15, "dgamma");
const DBETA: Slot = Slot::read_write(16, "dbeta");
const LOCAL_STATS: Slot = Slot::read_write(17, "local_stats");
const GLOBAL_STATS: Slot = Slot::read(18, "global_stats");

crate::uniform! {
    /// `cols` counts `V` elements (groups of 4 features in the vec4 build).
    pub struct Dims { rows: u32, cols: u32, momentum: f32, eps: f32 }
}

/// Features (or groups of 4) per workgroup of the loop-per-feature kernels.
const COLS_WG: usize = 64;

/// The entry point and workgroups of a per-feature reduction over `cols` `V` columns.
fn reduction(lw: &Lowerer, serial: &'static str, cols: usize) -> Result<(&'static str, [u32; 3])> {
    Ok(if lw.serial_reductions() {
        (serial, lw.grid(cols.div_ceil(COLS_WG))?)
    } else {
        let tree = match serial {
            "train" => "train_tree",
            "stats" => "stats_tree",
            "grad_sums" => "grad_sums_tree",
            _ => "backward_tree",
        };
        (tree, lw.grid(cols)?)
    })
}

fn dims(rows: usize, cols: usize, momentum: f32, eps: f32) -> Result<Dims> {
    Ok(Dims {
        rows: u32_of(rows)?,
        cols: u32_of(cols)?,
        momentum,
        eps,
    })
}

pub fn train(op: &BatchNormTrain, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let (entry, groups) = reduction(lw, "train", cols)?;
    lw.dispatch(
        KernelKey::new(&SHADER, entry).vec4(vec4),
        Some(dims(op.rows, cols, op.momentum, op.eps)?),
        &[
            (X, Res::Tensor(op.x)),
            (GAMMA, Res::Tensor(op.gamma)),
            (BETA, Res::Tensor(op.beta)),
            (Y, Res::Tensor(op.y)),
            (MEAN, Res::Tensor(op.mean)),
            (INVSTD, Res::Tensor(op.invstd)),
            (RUNNING_MEAN, Res::Tensor(op.running_mean)),
            (RUNNING_VAR, Res::Tensor(op.running_var)),
        ],
        groups,
    )
}

pub fn eval(op: &BatchNormEval, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let groups = lw.grid((op.rows * cols).div_ceil(ELEMENTWISE_WG))?;
    lw.dispatch(
        KernelKey::new(&SHADER, "eval").vec4(vec4),
        Some(dims(op.rows, cols, 0.0, op.eps)?),
        &[
            (X, Res::Tensor(op.x)),
            (GAMMA, Res::Tensor(op.gamma)),
            (BETA, Res::Tensor(op.beta)),
            (Y, Res::Tensor(op.y)),
            (EVAL_MEAN, Res::Tensor(op.running_mean)),
            (EVAL_VAR, Res::Tensor(op.running_var)),
        ],
        groups,
    )
}

pub fn backward(op: &BatchNormBackward, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let (entry, groups) = reduction(lw, "backward", cols)?;
    lw.dispatch(
        KernelKey::new(&SHADER, entry).vec4(vec4),
        Some(dims(op.rows, cols, 0.0, 0.0)?),
        &[
            (X, Res::Tensor(op.x)),
            (GAMMA, Res::Tensor(op.gamma)),
            (DY, Res::Tensor(op.dy)),
            (SAVED_MEAN, Res::Tensor(op.mean)),
            (SAVED_INVSTD, Res::Tensor(op.invstd)),
            (DX, Res::Tensor(op.dx)),
            (DGAMMA, Res::Tensor(op.dgamma)),
            (DBETA, Res::Tensor(op.dbeta)),
        ],
        groups,
    )
}

pub fn stats(op: &BatchNormStats, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let (entry, groups) = reduction(lw, "stats", cols)?;
    lw.dispatch(
        KernelKey::new(&SHADER, entry).vec4(vec4),
        Some(dims(op.rows, cols, 0.0, 0.0)?),
        &[(X, Res::Tensor(op.x)), (LOCAL_STATS, Res::Tensor(op.stats))],
        groups,
    )
}

/// Two dispatches: the per-feature statistics (saved and running), then the elementwise
/// normalization; one kernel doing both would bind nine storage buffers.
pub fn apply(op: &BatchNormApply, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
    let (vec4, cols) = lanes(op.cols);
    let d = dims(op.rows, cols, op.momentum, op.eps)?;
    let stats = lw.dispatch(
        KernelKey::new(&SHADER, "apply_stats").vec4(vec4),
        Some(d),
        &[
            (GLOBAL_STATS, Res::Tensor(op.global)),
            (MEAN, Res::Tensor(op.mean)),
            (INVSTD, Res::Tensor(op.invstd)),
            (RUNNING_MEAN, Res::Tensor(op.running_mean)),
            (RUNNING_VAR, Res::Tensor(op.running_var)),
        ],
        lw.grid(cols.div_ceil(ELEMENTWISE_WG))?,
    )?;
    let normalize = lw.dispatch(
        KernelKey::new(&SHADER, "normalize").vec4(vec4),
        Some(d),
        &[
            (X, Res::Tensor(op.x)),
            (GAMMA, Res::Tensor(op.gamma)),
            (BETA, Res::Tensor(op.beta)),
            (SAVED_MEAN, Res::Tensor(op.mean)),
            (SAVED_INVSTD, Res::Tensor(op.invstd)),
            (Y, Res::Tensor(op.y)),
        ],
        lw.grid((op.rows * cols).div_ceil(ELEMENTWISE_WG))?,
    )?;
    Ok(vec![stats, normalize])
}

pub fn grad_sums(op: &BatchNormGradSums, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let (entry, groups) = reduction(lw, "grad_sums", cols)?;
    lw.dispatch(
        KernelKey::new(&SHADER, entry).vec4(vec4),
        Some(dims(op.rows, cols, 0.0, 0.0)?),
        &[
            (X, Res::Tensor(op.x)),
            (DY, Res::Tensor(op.dy)),
            (SAVED_MEAN, Res::Tensor(op.mean)),
            (SAVED_INVSTD, Res::Tensor(op.invstd)),
            (DGAMMA, Res::Tensor(op.dgamma)),
            (DBETA, Res::Tensor(op.dbeta)),
        ],
        groups,
    )
}

pub fn grad_apply(op: &BatchNormGradApply, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let groups = lw.grid((op.rows * cols).div_ceil(ELEMENTWISE_WG))?;
    lw.dispatch(
        KernelKey::new(&SHADER, "grad_apply").vec4(vec4),
        Some(dims(op.rows, cols, 0.0, 0.0)?),
        &[
            (X, Res::Tensor(op.x)),
            (GAMMA, Res::Tensor(op.gamma)),
            (DY, Res::Tensor(op.dy)),
            (SAVED_MEAN, Res::Tensor(op.mean)),
            (SAVED_INVSTD, Res::Tensor(op.invstd)),
            (GLOBAL_STATS, Res::Tensor(op.global)),
            (DX, Res::Tensor(op.dx)),
        ],
        groups,
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[
            X,
            GAMMA,
            BETA,
            Y,
            MEAN,
            INVSTD,
            RUNNING_MEAN,
            RUNNING_VAR,
            EVAL_MEAN,
            EVAL_VAR,
            DY,
            SAVED_MEAN,
            SAVED_INVSTD,
            DX,
            DGAMMA,
            DBETA,
            LOCAL_STATS,
            GLOBAL_STATS,
        ],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
