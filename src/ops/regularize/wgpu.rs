//! Lowering of the regularization ops to `shaders/regularize.wgsl`.

use super::{two_l2, MaxNorm, PenaltyGrad, MAX_NORM_EPS};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
};
use anyhow::Result;

pub const SHADER: Shader = Shader::elements(
    "regularize",
    include_str!("../../../shaders/regularize.wgsl"),
);

const W: Slot = Slot::read_write(1, "w");
const GRAD: Slot = Slot::read_write(2, "grad");

crate::uniform! {
    /// `penalty_grad`: `a` = l1, `b` = 2·l2 (computed once on the host so both backends
    /// multiply by one `f32`); `max_norm`: `a` = the limit, `b` = Keras's epsilon.
    pub struct Dims { len: u32, cols: u32, a: f32, b: f32 }
}

/// Rows per workgroup of `max_norm`.
const ROWS_WG: usize = 64;

pub fn penalty_grad(op: &PenaltyGrad, lw: &mut Lowerer) -> Result<Dispatch> {
    let (l1, l2x2) = (op.l1, two_l2(op.l2));
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "penalty_grad"),
        op.len,
        |len| Dims {
            len,
            cols: 0,
            a: l1,
            b: l2x2,
        },
        &[(W, Res::Tensor(op.w)), (GRAD, Res::Tensor(op.grad))],
    )
}

pub fn max_norm(op: &MaxNorm, lw: &mut Lowerer) -> Result<Dispatch> {
    let groups = lw.grid(op.rows.div_ceil(ROWS_WG))?;
    let dims = Dims {
        len: u32_of(op.rows)?,
        cols: u32_of(op.cols)?,
        a: op.max_value,
        b: MAX_NORM_EPS,
    };
    lw.dispatch(
        KernelKey::new(&SHADER, "max_norm"),
        Some(dims),
        &[(W, Res::Tensor(op.w))],
        groups,
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[W, GRAD],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
