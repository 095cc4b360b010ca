//! Lowering of the gradient-health statistics (`shaders/health/stats.wgsl`) and the
//! non-finite guard (`shaders/health/guard.wgsl`).

use super::{ActivationStats, CopyInto, GuardFinite, Norm, GUARD_GROUP};
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform, ELEMENTWISE_WG,
};
use anyhow::{ensure, Result};

pub const STATS: Shader = Shader::scalar(
    "health/stats",
    include_str!("../../../shaders/health/stats.wgsl"),
);
pub const GUARD: Shader = Shader::elements(
    "health/guard",
    concat!(
        include_str!("../../../shaders/health/guard.wgsl"),
        include_str!("../../../shaders/health/mark.wgsl")
    ),
);

const SRC: Slot = Slot::read(1, "src");
const SRC2: Slot = Slot::read(2, "src2");
const SRC3: Slot = Slot::read(3, "src3");
const RECORD: Slot = Slot::read_write(4, "record");
const COPY_SRC: Slot = Slot::read(7, "copy_src");
const COPY_DST: Slot = Slot::read_write(8, "copy_dst");

const GUARD_SRC: [Slot; GUARD_GROUP] = [
    Slot::read(1, "src"),
    Slot::read(2, "src2"),
    Slot::read(3, "src3"),
    Slot::read(4, "src4"),
    Slot::read(5, "src5"),
    Slot::read(6, "src6"),
];
const FLAGS: Slot = Slot::read_write(7, "flags");
/// Elements (of `V`) each guard invocation checks: `PER_THREAD` in `guard.wgsl`. Enough
/// that the workgroup's reduction of the peaks costs little per element.
const GUARD_PER_THREAD: usize = 8;
const STEP_BITS: Slot = Slot::read(8, "step_bits");

crate::uniform! {
    /// The guard's tensor lengths (in `V`s), where the peaks start and the flag slots.
    pub struct GuardDims {
        len0: u32, len1: u32, len2: u32, len3: u32, len4: u32, len5: u32,
        peaks: u32, _pad0: u32,
        slot0: u32, slot1: u32, slot2: u32, slot3: u32, slot4: u32, slot5: u32,
        _pad1: u32, _pad2: u32,
    }
}

crate::uniform! {
    /// Four sizes or offsets, named per kernel in the WGSL.
    pub struct Dims { a: u32, b: u32, c: u32, d: u32 }
}

pub fn copy(op: &CopyInto, lw: &mut Lowerer) -> Result<Dispatch> {
    let groups = lw.grid(op.len.div_ceil(ELEMENTWISE_WG))?;
    let dims = Dims {
        a: u32_of(op.len)?,
        b: u32_of(op.offset)?,
        ..Dims::default()
    };
    lw.dispatch(
        KernelKey::new(&STATS, "copy"),
        Some(dims),
        &[
            (COPY_SRC, Res::Tensor(op.src)),
            (COPY_DST, Res::Tensor(op.dst)),
        ],
        groups,
    )
}

pub fn activation_stats(op: &ActivationStats, lw: &mut Lowerer) -> Result<Dispatch> {
    let (lo, hi) = op.saturation.unwrap_or((0.0, 0.0));
    let mode = op.dead as u32 | (op.saturation.is_some() as u32) << 1;
    let dims = Dims {
        a: u32_of(op.rows)?,
        b: u32_of(op.cols)?,
        c: u32_of(op.at)?,
        d: mode,
    };
    // Statistics steps are rare; one workgroup per layer is enough (see the WGSL).
    lw.dispatch(
        KernelKey::new(&STATS, "activation_stats")
            .with("LO_BITS", lo.to_bits())
            .with("HI_BITS", hi.to_bits()),
        Some(dims),
        &[
            (SRC, Res::Tensor(op.out)),
            (SRC2, Res::Tensor(op.act_in)),
            (SRC3, Res::Tensor(op.act_out)),
            (RECORD, Res::Tensor(op.stats)),
        ],
        [1, 1, 1],
    )
}

pub fn norm(op: &Norm, lw: &mut Lowerer) -> Result<Dispatch> {
    let dims = Dims {
        a: u32_of(op.len)?,
        b: u32_of(op.at)?,
        c: op.minus.is_some() as u32,
        d: 0,
    };
    lw.dispatch(
        KernelKey::new(&STATS, "norm"),
        Some(dims),
        &[
            (SRC, Res::Tensor(op.x)),
            (SRC2, Res::Tensor(op.minus.unwrap_or(op.x))),
            (RECORD, Res::Tensor(op.stats)),
        ],
        [1, 1, 1],
    )
}

pub fn guard(op: &GuardFinite, lw: &mut Lowerer) -> Result<Dispatch> {
    let tensors = &op.tensors;
    ensure!(
        (1..=GUARD_GROUP).contains(&tensors.len()),
        "a guard dispatch checks 1 to {GUARD_GROUP} tensors, got {}",
        tensors.len()
    );
    // Unused places repeat the first tensor with length 0.
    let mut group = [(tensors[0].0, 0, 0); GUARD_GROUP];
    group[..tensors.len()].copy_from_slice(tensors);
    // Vector loads when every length allows (see `guard.wgsl`).
    let vec4 = tensors.iter().all(|t| t.1.is_multiple_of(4));
    let width = if vec4 { 4 } else { 1 };
    let (mut lens, mut slots) = ([0u32; GUARD_GROUP], [0u32; GUARD_GROUP]);
    for (i, &(_, len, slot)) in group.iter().enumerate() {
        (lens[i], slots[i]) = (u32_of(len / width)?, u32_of(slot)?);
    }
    let longest = group.iter().map(|t| t.1 / width).max().unwrap_or(0);
    let groups = lw.grid(longest.div_ceil(ELEMENTWISE_WG * GUARD_PER_THREAD))?;
    let [len0, len1, len2, len3, len4, len5] = lens;
    let [slot0, slot1, slot2, slot3, slot4, slot5] = slots;
    let dims = GuardDims {
        len0,
        len1,
        len2,
        len3,
        len4,
        len5,
        peaks: u32_of(op.peaks)?,
        slot0,
        slot1,
        slot2,
        slot3,
        slot4,
        slot5,
        ..GuardDims::default()
    };
    let mut bindings: Vec<(Slot, Res)> = GUARD_SRC
        .iter()
        .zip(group)
        .map(|(&slot, t)| (slot, Res::Tensor(t.0)))
        .collect();
    bindings.extend([
        (FLAGS, Res::Tensor(op.flags)),
        (STEP_BITS, Res::Tensor(op.step)),
    ]);
    lw.dispatch(
        KernelKey::new(&GUARD, "guard").vec4(vec4),
        Some(dims),
        &bindings,
        groups,
    )
}

/// Small tensors keep their shared dispatch; each one larger than a storage binding gets
/// its own, in windows.
pub fn guard_split(op: &GuardFinite, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
    let max = lw.max_binding();
    lw.split_groups(
        &op.tensors,
        |lw, &(t, _, _)| lw.bytes(t) <= max,
        |lw, tensors| {
            guard(
                &GuardFinite {
                    tensors,
                    ..op.clone()
                },
                lw,
            )
        },
        |lw, (t, len, slot)| {
            let touched = [t, op.step, op.flags];
            lw.element_windows(&touched, len, 1, |lw, n| {
                let part = GuardFinite {
                    tensors: vec![(t, n, slot)],
                    ..op.clone()
                };
                guard(&part, lw)
            })
        },
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![
        ShaderTable {
            shader: STATS,
            slots: &[SRC, SRC2, SRC3, RECORD, COPY_SRC, COPY_DST],
            dims: Some(Dims::FIELDS),
            uniforms: &[],
        },
        ShaderTable {
            shader: GUARD,
            slots: &[
                GUARD_SRC[0],
                GUARD_SRC[1],
                GUARD_SRC[2],
                GUARD_SRC[3],
                GUARD_SRC[4],
                GUARD_SRC[5],
                FLAGS,
                STEP_BITS,
            ],
            dims: Some(GuardDims::FIELDS),
            uniforms: &[],
        },
    ]
}
