//! Lowering of dropout to `shaders/dropout.wgsl`.

use super::{dropout_scale, Dropout};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
};
use anyhow::Result;

pub const SHADER: Shader =
    Shader::elements("dropout", include_str!("../../../shaders/dropout.wgsl"));

const X: Slot = Slot::read(1, "x");
const Y: Slot = Slot::read_write(2, "y");
const STEP: Slot = Slot::read(3, "step_counter");
const FIRST_ROW: Slot = Slot::read(4, "first_row");

crate::uniform! {
    /// `scale`: 1/(1−p), computed once on the host so both backends scale by one `f32`.
    /// `row_width`: elements per row of the mask offset, 0 without one.
    pub struct Dims {
        len: u32, stream: u32, p: f32, scale: f32, row_width: u32, _pad0: u32, _pad1: u32,
        _pad2: u32,
    }
}

pub fn dropout(op: &Dropout, lw: &mut Lowerer) -> Result<Dispatch> {
    let (stream, p) = (op.stream, op.p);
    // Without an offset the step counter stands in for its tensor, multiplied by 0.
    let row_width = u32_of(op.first_row.map_or(0, |_| op.cols))?;
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "dropout"),
        op.len,
        |len| Dims {
            len,
            stream,
            p,
            scale: dropout_scale(p),
            row_width,
            ..Dims::default()
        },
        &[
            (X, Res::Tensor(op.x)),
            (Y, Res::Tensor(op.y)),
            (STEP, Res::Tensor(op.step)),
            (FIRST_ROW, Res::Tensor(op.first_row.unwrap_or(op.step))),
        ],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[X, Y, STEP, FIRST_ROW],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
