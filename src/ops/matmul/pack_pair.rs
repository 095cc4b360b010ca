//! Mirror refreshes in pairs: where a texture matmul's operands both need a pack
//! dispatch (the input batch and the first layer's weight, whose rows are too short to
//! copy), or an operand's mirror needs one and a later matmul will want the same tensor
//! in the other orientation (the output layer's gradient, read as it is and transposed),
//! one dispatch refreshes both (`shaders/matmul/pack_pair.wgsl`).

use super::texture::operand_keys;
use crate::device::{KernelKey, Lowerer, MirrorKey, Res, Shader, ShaderTable, Slot, Step, Uniform};
use crate::ops::Op;
use anyhow::Result;

pub const SHADER: Shader = Shader::scalar(
    "matmul/pack_pair",
    include_str!("../../../shaders/matmul/pack_pair.wgsl"),
);

const SRC: [Slot; 2] = [Slot::read(1, "src0"), Slot::read(2, "src1")];
const DST: [Slot; 2] = [Slot::texture(3, "dst0"), Slot::texture(4, "dst1")];

crate::uniform! {
    pub struct Dims {
        rows0: u32, cols0: u32, transpose0: u32, rows1: u32, cols1: u32, transpose1: u32,
        _pad0: u32, _pad1: u32
    }
}

/// Largest source a pair packs: its loads are scalar where the single packs load
/// vectors, which costs more than the dispatch saved on large matrices (not measured).
const PAIR_MAX: usize = 65_536;

/// The steps that bring the mirrors `stale` (the operands of `following[0]`, marked
/// fresh already) up to date, adding the other orientation of a packed operand where a
/// later matmul in `following` reads it before anything writes it.
pub fn refresh(lw: &mut Lowerer, stale: &[MirrorKey], following: &[Op]) -> Result<Vec<Step>> {
    let mut keys = stale.to_vec();
    for &key in stale {
        let other = MirrorKey {
            transpose: !key.transpose,
            ..key
        };
        let fresh = lw.mirrors.fresh.get(&key.tensor);
        if pair_source(lw, key).is_none()
            || keys.contains(&other)
            || fresh.is_some_and(|f| f.contains(&other))
            || !wanted(other, &following[1..])
        {
            continue;
        }
        if !lw.mirrors.mirrors.contains_key(&other) {
            let made = super::texture::mirror(lw, other)?;
            lw.mirrors.mirrors.insert(other, made);
        }
        if pair_source(lw, other).is_some() {
            lw.mirrors.refreshed(other);
            keys.push(other);
        }
    }
    let (pairable, single): (Vec<MirrorKey>, Vec<MirrorKey>) =
        keys.iter().partition(|&&k| pair_source(lw, k).is_some());
    let mut steps = Vec::new();
    for key in single {
        steps.extend(
            lw.mirrors.mirrors[&key]
                .as_ref()
                .expect("made")
                .refresh
                .clone(),
        );
    }
    for pair in pairable.chunks(2) {
        match pair {
            [a, b] => steps.push(pack_pair(lw, *a, *b)?),
            [a] => steps.extend(
                lw.mirrors.mirrors[a]
                    .as_ref()
                    .expect("made")
                    .refresh
                    .clone(),
            ),
            _ => unreachable!("chunks of 2"),
        }
    }
    Ok(steps)
}

/// The source of `key`'s mirror where one pack dispatch refreshes it and it is small
/// enough to pair.
fn pair_source(lw: &Lowerer, key: MirrorKey) -> Option<wgpu::Buffer> {
    let mirror = lw.mirrors.mirrors.get(&key)?.as_ref()?;
    let src = mirror.pack.clone()?;
    let fits = key.rows.div_ceil(4) <= lw.max_groups();
    (key.rows * key.cols <= PAIR_MAX && fits).then_some(src)
}

/// Whether a matmul in `rest` reads mirror `key` before an op writes its tensor.
fn wanted(key: MirrorKey, rest: &[Op]) -> bool {
    let rest = &rest[..rest.len().min(crate::device::LOOKAHEAD)];
    for op in rest {
        if let Op::MatMul(mm) = op {
            if operand_keys(mm).contains(&key) {
                return true;
            }
        }
        if op.reads_writes().1.contains(&key.tensor) {
            return false;
        }
    }
    false
}

fn pack_pair(lw: &mut Lowerer, a: MirrorKey, b: MirrorKey) -> Result<Step> {
    let (sa, sb) = (
        pair_source(lw, a).expect("pairable"),
        pair_source(lw, b).expect("pairable"),
    );
    let view = |k: &MirrorKey| lw.mirrors.mirrors[k].as_ref().expect("made").view.clone();
    let (va, vb) = (view(&a), view(&b));
    let u = |v: usize| v as u32;
    let dims = Dims {
        rows0: u(a.rows),
        cols0: u(a.cols),
        transpose0: a.transpose as u32,
        rows1: u(b.rows),
        cols1: u(b.cols),
        transpose1: b.transpose as u32,
        ..Dims::default()
    };
    let blocks = |k: &MirrorKey| [k.cols.div_ceil(4), k.rows.div_ceil(4)];
    let [ax, ay] = blocks(&a);
    let [bx, by] = blocks(&b);
    let grid = [ax.max(bx).div_ceil(64) as u32, ay.max(by) as u32, 1];
    let bindings = [
        (SRC[0], Res::Buffer(&sa)),
        (SRC[1], Res::Buffer(&sb)),
        (DST[0], Res::View(&va)),
        (DST[1], Res::View(&vb)),
    ];
    let mut d = lw.dispatch(
        KernelKey::new(&SHADER, "pack_pair"),
        Some(dims),
        &bindings,
        grid,
    )?;
    let name = |k: &MirrorKey| {
        let t = lw.tensor(k.tensor).name.clone();
        format!("{t}{}", if k.transpose { "ᵀ" } else { "" })
    };
    d.label = format!("mirror {} and {}", name(&a), name(&b));
    Ok(Step::Dispatch(d))
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[SRC[0], SRC[1], DST[0], DST[1]],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
