// C[m,n] (+)= op(A)[m,k] · op(B)[k,n], for GPUs with fast workgroup memory: a 16×16
// workgroup stages 64×16 slices of op(A) and op(B) in shared memory, then each invocation
// accumulates a 4×4 block of C from them, so every global load feeds 64 multiply-adds.
// Transposes are chosen by the TRANS_A / TRANS_B overrides as in matmul.wgsl.

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACCUMULATE: bool = false;

struct Dims {
    m: u32,
    k: u32,
    n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

// Indexed [p][i] and [p][j] so the inner loop reads four adjacent values of each.
var<workgroup> tile_a: array<array<f32, 64>, 16>;
var<workgroup> tile_b: array<array<f32, 64>, 16>;

// Out-of-range elements read as zero, so ragged tiles need no special case below.
fn a_at(i: u32, p: u32) -> f32 {
    if i >= dims.m || p >= dims.k {
        return 0.0;
    }
    if TRANS_A {
        return a[p * dims.m + i];
    }
    return a[i * dims.k + p];
}

fn b_at(p: u32, j: u32) -> f32 {
    if p >= dims.k || j >= dims.n {
        return 0.0;
    }
    if TRANS_B {
        return b[j * dims.k + p];
    }
    return b[p * dims.n + j];
}

fn store_row(row: u32, col0: u32, v: vec4<f32>) {
    if row >= dims.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if col < dims.n {
            let idx = row * dims.n + col;
            var out = v[j];
            if ACCUMULATE {
                out += c[idx];
            }
            c[idx] = out;
        }
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // `dims.k` is uniform, so every invocation reaches the same barriers.
    for (var p0 = 0u; p0 < dims.k; p0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            // Adjacent invocations load adjacent addresses of the stored layout.
            if TRANS_A {
                tile_a[idx / TILE][idx % TILE] = a_at(row0 + idx % TILE, p0 + idx / TILE);
            } else {
                tile_a[idx % TK][idx / TK] = a_at(row0 + idx / TK, p0 + idx % TK);
            }
            if TRANS_B {
                tile_b[idx % TK][idx / TK] = b_at(p0 + idx % TK, col0 + idx / TK);
            } else {
                tile_b[idx / TILE][idx % TILE] = b_at(p0 + idx / TILE, col0 + idx % TILE);
            }
        }
        workgroupBarrier();
        let ty = lid.y * 4u;
        let tx = lid.x * 4u;
        for (var p = 0u; p < TK; p++) {
            let bv = vec4<f32>(tile_b[p][tx], tile_b[p][tx + 1u], tile_b[p][tx + 2u], tile_b[p][tx + 3u]);
            acc0 = fma(vec4<f32>(tile_a[p][ty]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[p][ty + 1u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[p][ty + 2u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[p][ty + 3u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    store_row(row, col, acc0);
    store_row(row + 1u, col, acc1);
    store_row(row + 2u, col, acc2);
    store_row(row + 3u, col, acc3);
}
