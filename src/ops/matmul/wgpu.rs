//! Lowering of the matrix product to the storage-buffer kernels `shaders/matmul/reg4x4.wgsl`
//! and `shaders/matmul/tiled.wgsl` (with the block configuration tuned for its shape
//! class), and its windows for operands larger than one binding.

use super::texture;
use super::texture_kernel::{Epilogue, EPILOGUE_SLOTS};
use super::MatMul;
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, MatmulTile, MatmulVariant, Res, Shader, ShaderTable,
    Slot, Step, Uniform,
};
use crate::ops::{Op, SumRows};
use anyhow::{ensure, Result};

pub const REG4X4: Shader = Shader::scalar(
    "matmul/reg4x4",
    include_str!("../../../shaders/matmul/reg4x4.wgsl"),
);
pub const TILED: Shader = Shader::scalar(
    "matmul/tiled",
    concat!(
        include_str!("../../../shaders/matmul/tiled.wgsl"),
        include_str!("../../../shaders/activation/functions.wgsl")
    ),
);

pub const A: Slot = Slot::read(1, "a");
pub const B: Slot = Slot::read(2, "b");
pub const C: Slot = Slot::read_write(3, "c");

crate::uniform! {
    pub struct Dims { m: u32, k: u32, n: u32, _pad: u32 }
}

/// Outputs per workgroup along each dimension of `reg4x4` (8 invocations × 4).
const REG4X4_TILE: usize = 32;

fn key(shader: &Shader, trans_a: bool, trans_b: bool, accumulate: bool) -> KernelKey {
    KernelKey::new(shader, "main")
        .with("TRANS_A", trans_a as u32)
        .with("TRANS_B", trans_b as u32)
        .with("ACCUMULATE", accumulate as u32)
}

/// The tiled kernel with configuration `tile` and `epilogue`.
pub fn tiled_key(tile: &MatmulTile, op: &MatMul, epilogue: Epilogue) -> KernelKey {
    let [code, act] = epilogue.codes();
    let key = key(&TILED, op.trans_a, op.trans_b, op.accumulate)
        .with("EPILOGUE", code)
        .with("ACT", act);
    tile.constants()
        .into_iter()
        .fold(key, |key, (name, v)| key.with(name, v))
}

pub fn matmul(op: &MatMul, lw: &mut Lowerer) -> Result<Dispatch> {
    let [p0, p1, p2, ..] = lw.placeholders.clone();
    dispatch(op, lw, Epilogue::Plain, &[p0, p1, p2])
}

/// The matmul with the epilogue it absorbs from `following` (`following[0]` is `op`), as
/// one tiled dispatch, and how many ops that covers; `None` on other kernels, where there
/// is nothing to absorb, or where a tensor needs windows (the ops are then lowered one by
/// one, split as they need).
pub fn lower_fused(
    op: &MatMul,
    lw: &mut Lowerer,
    following: &[Op],
) -> Result<Option<(Vec<Step>, usize)>> {
    if lw.variant != MatmulVariant::Tiled {
        return Ok(None);
    }
    let (epilogue, used) = match texture::fusable_epilogue(op, following) {
        (Epilogue::Plain, _) => row_sums(op, following),
        fused => fused,
    };
    if epilogue == Epilogue::Plain {
        return Ok(None);
    }
    let absorbed = &following[1..used];
    let (extra, c_shaped) = texture::epilogue_buffers(lw, epilogue, op.c, absorbed);
    // Outputs of the absorbed ops not shaped like C (the row sums) must fit too.
    let outputs = absorbed.iter().flat_map(|o| o.reads_writes().1);
    let max = lw.max_binding();
    let mut bound = [op.a, op.b].into_iter().chain(c_shaped).chain(outputs);
    if bound.any(|t| lw.bytes(t) > max) {
        return Ok(None);
    }
    let d = dispatch(op, lw, epilogue, &extra)?;
    Ok(Some((vec![Step::Dispatch(d)], used)))
}

/// `RowSums` where `op` is a weight gradient `dW = dZᵀ·X` followed by the bias gradient
/// `SumRows` of the same `dZ` (which saves that op a pass over `dZ`), else `Plain`.
fn row_sums(op: &MatMul, following: &[Op]) -> (Epilogue, usize) {
    match following.get(1) {
        Some(Op::SumRows(SumRows {
            x,
            out,
            rows,
            cols,
            accumulate: false,
        })) if op.trans_a
            && !op.trans_b
            && *x == op.a
            && *rows == op.k
            && *cols == op.m
            && ![op.a, op.b, op.c].contains(out) =>
        {
            (Epilogue::RowSums, 2)
        }
        _ => (Epilogue::Plain, 1),
    }
}

/// One dispatch of `op` with `epilogue`, whose buffers (bindings 4..=6 of the tiled
/// kernel, placeholders where it has none) are `extra`.
fn dispatch(
    op: &MatMul,
    lw: &mut Lowerer,
    epilogue: Epilogue,
    extra: &[wgpu::Buffer; 3],
) -> Result<Dispatch> {
    let (m, k, n) = (op.m, op.k, op.n);
    let (key, tile_m, tile_n) = match lw.variant {
        MatmulVariant::Tiled => {
            let tile = lw.matmul_tile(m, k, n, op.trans_a, op.trans_b);
            let key = tiled_key(&tile, op, epilogue);
            (key, tile.bm as usize, tile.bn as usize)
        }
        _ => {
            let key = key(&REG4X4, op.trans_a, op.trans_b, op.accumulate);
            (key, REG4X4_TILE, REG4X4_TILE)
        }
    };
    let groups = [n.div_ceil(tile_n), m.div_ceil(tile_m)];
    ensure!(
        groups.iter().all(|&g| g <= lw.max_groups()),
        "matmul {m}×{k}×{n} needs more workgroups than the device allows per dimension"
    );
    let dims = Dims {
        m: u32_of(m)?,
        k: u32_of(k)?,
        n: u32_of(n)?,
        _pad: 0,
    };
    let mut bindings = vec![
        (A, Res::Tensor(op.a)),
        (B, Res::Tensor(op.b)),
        (C, Res::Tensor(op.c)),
    ];
    // The tiled kernel declares the epilogue's bindings whatever its EPILOGUE.
    if lw.variant == MatmulVariant::Tiled {
        bindings.extend(
            EPILOGUE_SLOTS
                .into_iter()
                .zip(extra.iter().map(Res::Buffer)),
        );
    }
    lw.dispatch(
        key,
        Some(dims),
        &bindings,
        [groups[0] as u32, groups[1] as u32, 1],
    )
}

/// The matmul over windows of rows, where an operand exceeds one storage binding.
pub fn matmul_windows(op: &MatMul, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
    let max = lw.max_binding();
    let MatMul {
        a,
        b,
        c,
        m,
        k,
        n,
        trans_a,
        trans_b,
        accumulate,
    } = *op;
    if trans_a && !trans_b && lw.bytes(c) <= max && a != b {
        // `dW = dZᵀ·X` with C fitting: split k, windows of the rows of both A
        // (`[k, m]`) and B (`[k, n]`), each window adding to C. (Other forms would
        // need the kernels to know the full row stride of an operand bound whole.)
        return lw.row_windows(k, &[(a, m), (b, n)], |lw, p0, pc| {
            let part = MatMul {
                k: pc,
                accumulate: accumulate || p0 > 0,
                ..*op
            };
            matmul(&part, lw)
        });
    }
    if trans_a {
        return Err(lw.refuse(""));
    }
    // Rows of C and of A together; B whole. Windows are matched by buffer, so B must
    // not be A or C.
    if lw.bytes(b) > max {
        return Err(lw.refuse(" (its B operand is too large)"));
    }
    if b == a || b == c {
        return Err(lw.refuse(" (B is also A or C)"));
    }
    lw.row_windows(m, &[(a, k), (c, n)], |lw, _, rc| {
        matmul(&MatMul { m: rc, ..*op }, lw)
    })
}

pub fn tables() -> Vec<ShaderTable> {
    let table = |shader, slots| ShaderTable {
        shader,
        slots,
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    };
    const TILED_SLOTS: [Slot; 6] = [
        A,
        B,
        C,
        EPILOGUE_SLOTS[0],
        EPILOGUE_SLOTS[1],
        EPILOGUE_SLOTS[2],
    ];
    let mut tables = vec![table(REG4X4, &[A, B, C]), table(TILED, &TILED_SLOTS)];
    tables.extend(super::texture::tables());
    tables.extend(super::pack_pair::tables());
    tables
}
