//! Lowering of the elementwise sums to `shaders/elementwise.wgsl`.

use super::{Accumulate, Add};
use crate::device::{Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform};
use anyhow::Result;

pub const SHADER: Shader = Shader::elements(
    "elementwise",
    include_str!("../../../shaders/elementwise.wgsl"),
);

const A: Slot = Slot::read(1, "a");
const B: Slot = Slot::read(2, "b");
const OUT: Slot = Slot::read_write(3, "out");

crate::uniform! {
    pub struct Dims { len: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
}

fn dims(len: u32) -> Dims {
    Dims {
        len,
        ..Dims::default()
    }
}

pub fn add(op: &Add, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "add"),
        op.len,
        dims,
        &[
            (A, Res::Tensor(op.a)),
            (B, Res::Tensor(op.b)),
            (OUT, Res::Tensor(op.out)),
        ],
    )
}

pub fn accumulate(op: &Accumulate, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "accumulate"),
        op.len,
        dims,
        &[(A, Res::Tensor(op.x)), (OUT, Res::Tensor(op.y))],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[A, B, OUT],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
