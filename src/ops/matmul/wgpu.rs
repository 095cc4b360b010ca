//! Lowering of the matrix product to the storage-buffer kernels `shaders/matmul/reg4x4.wgsl`
//! and `shaders/matmul/tiled.wgsl` (with the block configuration tuned for its shape
//! class), and its windows for operands larger than one binding.

use super::MatMul;
use crate::device::{
    u32_of, Dispatch, KernelKey, Lowerer, MatmulTile, MatmulVariant, Res, Shader, ShaderTable,
    Slot, Uniform,
};
use anyhow::{ensure, Result};

pub const REG4X4: Shader = Shader::scalar(
    "matmul/reg4x4",
    include_str!("../../../shaders/matmul/reg4x4.wgsl"),
);
pub const TILED: Shader = Shader::scalar(
    "matmul/tiled",
    include_str!("../../../shaders/matmul/tiled.wgsl"),
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

/// The tiled kernel with configuration `tile`.
pub fn tiled_key(tile: &MatmulTile, trans_a: bool, trans_b: bool, accumulate: bool) -> KernelKey {
    tile.constants().into_iter().fold(
        key(&TILED, trans_a, trans_b, accumulate),
        |key, (name, v)| key.with(name, v),
    )
}

pub fn matmul(op: &MatMul, lw: &mut Lowerer) -> Result<Dispatch> {
    let (m, k, n) = (op.m, op.k, op.n);
    let (key, tile_m, tile_n) = match lw.variant {
        MatmulVariant::Tiled => {
            let tile = lw.matmul_tile(m, k, n, op.trans_a, op.trans_b);
            let key = tiled_key(&tile, op.trans_a, op.trans_b, op.accumulate);
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
    lw.dispatch(
        key,
        Some(dims),
        &[
            (A, Res::Tensor(op.a)),
            (B, Res::Tensor(op.b)),
            (C, Res::Tensor(op.c)),
        ],
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
    let table = |shader| ShaderTable {
        shader,
        slots: &[A, B, C],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    };
    let mut tables = vec![table(REG4X4), table(TILED)];
    tables.extend(super::texture::tables());
    tables
}
