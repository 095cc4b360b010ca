//! Lowering of gradient clipping to `shaders/clip.wgsl`.

use super::{ClampValue, ClipCoef, NormPartials, ScaleBy, NORM_BLOCK};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform,
};
use anyhow::{ensure, Result};

pub const SHADER: Shader = Shader::elements("clip", include_str!("../../../shaders/clip.wgsl"));

const X: Slot = Slot::read_write(1, "x");
const VALUES: Slot = Slot::read(2, "values");
const PARTIALS: Slot = Slot::read_write(3, "partials");
const PARTIALS_IN: Slot = Slot::read(4, "partials_in");
const TOTAL_NORM: Slot = Slot::read_write(5, "total_norm");
const COEF: Slot = Slot::read_write(6, "coef");
const COEF_IN: Slot = Slot::read(7, "coef_in");

crate::uniform! {
    /// `limit`: `max_norm` for `clip_coef`, the clip value for `clamp_value`, nonzero for
    /// `norm_partials` to merge into the partials already stored.
    pub struct Dims { len: u32, first: u32, groups: u32, limit: f32 }
}

/// The `norm_partials` dispatch, `merge` into the partials already stored.
pub fn norm_partials(op: &NormPartials, merge: bool, lw: &mut Lowerer) -> Result<Dispatch> {
    let (entry, workgroups) = if lw.serial_reductions() {
        ("norm_partials_serial", op.groups.div_ceil(64))
    } else {
        ("norm_partials", op.groups)
    };
    ensure!(
        workgroups <= lw.max_groups(),
        "{} norm partials exceed the device's dispatch limit",
        op.groups
    );
    let dims = Dims {
        len: u32_of(op.len)?,
        first: u32_of(op.first)?,
        groups: u32_of(op.groups)?,
        limit: if merge { 1.0 } else { 0.0 },
    };
    lw.dispatch(
        KernelKey::new(&SHADER, entry),
        Some(dims),
        &[
            (VALUES, Res::Tensor(op.x)),
            (PARTIALS, Res::Tensor(op.partials)),
        ],
        [workgroups as u32, 1, 1],
    )
}

/// `norm_partials` over windows of whole rounds (`groups` blocks), which keep each
/// block's partial; later windows merge into the partials the earlier ones wrote.
pub fn norm_partials_windows(op: &NormPartials, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
    let round = op.groups * NORM_BLOCK;
    let per = (lw.max_binding() / 4) as usize / round * round;
    if per == 0 || lw.bytes(op.partials) > lw.max_binding() {
        return Err(lw.refuse(""));
    }
    let bx = lw.buffer(op.x);
    let mut out = Vec::new();
    for start in (0..op.len).step_by(per) {
        let n = per.min(op.len - start);
        let window = vec![(bx.clone(), (start * 4) as u64, (n * 4) as u64)];
        let part = NormPartials {
            len: n,
            ..op.clone()
        };
        out.push(lw.windowed(window, |lw| norm_partials(&part, start > 0, lw))?);
    }
    Ok(out)
}

pub fn clip_coef(op: &ClipCoef, lw: &mut Lowerer) -> Result<Dispatch> {
    let dims = Dims {
        len: u32_of(op.slots)?,
        limit: op.max_norm,
        ..Dims::default()
    };
    lw.dispatch(
        KernelKey::new(&SHADER, "clip_coef"),
        Some(dims),
        &[
            (PARTIALS_IN, Res::Tensor(op.partials)),
            (TOTAL_NORM, Res::Tensor(op.total_norm)),
            (COEF, Res::Tensor(op.coef)),
        ],
        [1, 1, 1],
    )
}

pub fn scale_by(op: &ScaleBy, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "scale_by"),
        op.len,
        |len| Dims {
            len,
            ..Dims::default()
        },
        &[(X, Res::Tensor(op.x)), (COEF_IN, Res::Tensor(op.coef))],
    )
}

pub fn clamp_value(op: &ClampValue, lw: &mut Lowerer) -> Result<Dispatch> {
    let limit = op.limit;
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "clamp_value"),
        op.len,
        |len| Dims {
            len,
            limit,
            ..Dims::default()
        },
        &[(X, Res::Tensor(op.x))],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[X, VALUES, PARTIALS, PARTIALS_IN, TOTAL_NORM, COEF, COEF_IN],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
