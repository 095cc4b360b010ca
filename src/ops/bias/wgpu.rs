//! Lowering of the bias add and column sum to `shaders/bias.wgsl`.

use super::{AddBias, SumRows};
use crate::device::{
    lanes, u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
    ELEMENTWISE_WG,
};
use anyhow::Result;

pub const SHADER: Shader = Shader::elements("bias", include_str!("../../../shaders/bias.wgsl"));

const SRC: Slot = Slot::read(1, "src");
const DST: Slot = Slot::read_write(2, "dst");

crate::uniform! {
    /// `cols` counts `V` elements (groups of 4 columns in the vec4 build).
    pub struct Dims { rows: u32, cols: u32, accumulate: u32, _pad: u32 }
}

/// Columns (or groups of 4) per workgroup of `sum_rows`.
const SUM_ROWS_WG: usize = 64;

pub fn add_bias(op: &AddBias, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let groups = lw.grid((op.rows * cols).div_ceil(ELEMENTWISE_WG))?;
    let dims = Dims {
        rows: u32_of(op.rows)?,
        cols: u32_of(cols)?,
        ..Dims::default()
    };
    lw.dispatch(
        KernelKey::new(&SHADER, "add_bias").vec4(vec4),
        Some(dims),
        &[(SRC, Res::Tensor(op.bias)), (DST, Res::Tensor(op.y))],
        groups,
    )
}

pub fn sum_rows(op: &SumRows, lw: &mut Lowerer) -> Result<Dispatch> {
    let (vec4, cols) = lanes(op.cols);
    let groups = lw.grid(cols.div_ceil(SUM_ROWS_WG))?;
    let dims = Dims {
        rows: u32_of(op.rows)?,
        cols: u32_of(cols)?,
        accumulate: op.accumulate as u32,
        _pad: 0,
    };
    lw.dispatch(
        KernelKey::new(&SHADER, "sum_rows").vec4(vec4),
        Some(dims),
        &[(SRC, Res::Tensor(op.x)), (DST, Res::Tensor(op.out))],
        groups,
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[SRC, DST],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
