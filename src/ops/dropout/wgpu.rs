//! Lowering of dropout to `shaders/dropout.wgsl`.

use super::{dropout_scale, Dropout};
use crate::device::{Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform};
use anyhow::Result;

pub const SHADER: Shader =
    Shader::elements("dropout", include_str!("../../../shaders/dropout.wgsl"));

const X: Slot = Slot::read(1, "x");
const Y: Slot = Slot::read_write(2, "y");
const STEP: Slot = Slot::read(3, "step_counter");

crate::uniform! {
    /// `scale`: 1/(1−p), computed once on the host so both backends scale by one `f32`.
    pub struct Dims { len: u32, stream: u32, p: f32, scale: f32 }
}

pub fn dropout(op: &Dropout, lw: &mut Lowerer) -> Result<Dispatch> {
    let (stream, p) = (op.stream, op.p);
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "dropout"),
        op.len,
        |len| Dims {
            len,
            stream,
            p,
            scale: dropout_scale(p),
        },
        &[
            (X, Res::Tensor(op.x)),
            (Y, Res::Tensor(op.y)),
            (STEP, Res::Tensor(op.step)),
        ],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[X, Y, STEP],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
