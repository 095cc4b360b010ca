//! Lowering of the activations to `shaders/activation/`: `functions.wgsl` (the functions,
//! selected by `ACT`) in front of `kernels.wgsl` (the entry points).

use super::{
    Activate, ActivateBackward, Activation, Prelu, PreluBackward, RreluTrain, RreluTrainBackward,
};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
};
use anyhow::Result;

/// The activation functions, shared with the texture matmul's fused epilogue.
pub const FUNCTIONS: &str = include_str!("../../../shaders/activation/functions.wgsl");

pub const SHADER: Shader = Shader::elements(
    "activation",
    concat!(
        include_str!("../../../shaders/activation/functions.wgsl"),
        include_str!("../../../shaders/activation/kernels.wgsl")
    ),
);

const X: Slot = Slot::read(1, "x");
const Y: Slot = Slot::read(2, "y");
const DY: Slot = Slot::read(3, "dy");
const OUT: Slot = Slot::read_write(4, "out");
const STEP: Slot = Slot::read(5, "step_counter");
const SLOPE: Slot = Slot::read(6, "slope");
const SLOPE_TERMS: Slot = Slot::read_write(7, "slope_terms");

crate::uniform! {
    /// `units`: PReLU's slope count; `stream`: RReLU's random stream.
    pub struct Dims { len: u32, units: u32, stream: u32, _pad: u32 }
}

/// An entry point specialised for `act`: its kind and constant parameters become override
/// constants, so each distinct activation gets its own pipeline and shares it across
/// layers.
fn key(entry: &'static str, act: Activation) -> KernelKey {
    let mut key = KernelKey::new(&SHADER, entry).with("ACT", act.kernel_id());
    if let Some(slope) = act.negative_slope() {
        key = key.with_f32("SLOPE", slope);
    }
    if let Activation::Elu { alpha } = act {
        key = key.with_f32("ALPHA", alpha);
    }
    key
}

fn dims(units: usize, stream: u32) -> Result<impl FnOnce(u32) -> Dims> {
    let units = u32_of(units)?;
    Ok(move |len| Dims {
        len,
        units,
        stream,
        _pad: 0,
    })
}

fn rrelu_key(entry: &'static str, lower: f32, upper: f32) -> KernelKey {
    KernelKey::new(&SHADER, entry)
        .with_f32("LOWER", lower)
        .with_f32("UPPER", upper)
}

pub fn activate(op: &Activate, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        key("forward", op.act),
        op.len,
        dims(0, 0)?,
        &[(X, Res::Tensor(op.x)), (OUT, Res::Tensor(op.y))],
    )
}

pub fn activate_backward(op: &ActivateBackward, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        key("backward", op.act),
        op.len,
        dims(0, 0)?,
        &[
            (X, Res::Tensor(op.x)),
            (Y, Res::Tensor(op.y)),
            (DY, Res::Tensor(op.dy)),
            (OUT, Res::Tensor(op.dx)),
        ],
    )
}

pub fn rrelu_train(op: &RreluTrain, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        rrelu_key("rrelu_forward", op.lower, op.upper),
        op.len,
        dims(0, op.stream)?,
        &[
            (X, Res::Tensor(op.x)),
            (OUT, Res::Tensor(op.y)),
            (STEP, Res::Tensor(op.step)),
        ],
    )
}

pub fn rrelu_train_backward(op: &RreluTrainBackward, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        rrelu_key("rrelu_backward", op.lower, op.upper),
        op.len,
        dims(0, op.stream)?,
        &[
            (X, Res::Tensor(op.x)),
            (DY, Res::Tensor(op.dy)),
            (OUT, Res::Tensor(op.dx)),
            (STEP, Res::Tensor(op.step)),
        ],
    )
}

pub fn prelu(op: &Prelu, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "prelu_forward"),
        op.len,
        dims(op.units, 0)?,
        &[
            (X, Res::Tensor(op.x)),
            (OUT, Res::Tensor(op.y)),
            (SLOPE, Res::Tensor(op.weight)),
        ],
    )
}

pub fn prelu_backward(op: &PreluBackward, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "prelu_backward"),
        op.len,
        dims(op.units, 0)?,
        &[
            (X, Res::Tensor(op.x)),
            (DY, Res::Tensor(op.dy)),
            (OUT, Res::Tensor(op.dx)),
            (SLOPE, Res::Tensor(op.weight)),
            (SLOPE_TERMS, Res::Tensor(op.dw_terms)),
        ],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[X, Y, DY, OUT, STEP, SLOPE, SLOPE_TERMS],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
