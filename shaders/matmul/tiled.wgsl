// C[m,n] (+)= op(A)[m,k] · op(B)[k,n], for GPUs with fast workgroup memory: a workgroup
// stages BK-deep slices of a BM×BN block of op(A) and op(B) in shared memory, then each
// invocation accumulates a TM×TN block of C in registers, so every global load feeds
// BM·BN/(BM+BN) multiply-adds. The block sizes are override constants, one set per named
// configuration (`MatmulTile` in src/ops/matmul/tile.rs, which checks them against the
// device's limits and the divisibility this kernel assumes); the engine tunes among them.
// Transposes are chosen by the TRANS_A / TRANS_B overrides as in reg4x4.wgsl. The store
// can fold in the ops that follow a layer's matmul (EPILOGUE, as `Epilogue::codes` in
// src/ops/matmul/texture_kernel.rs), saving each a pass over C: 1 adds the bias e0[col],
// 2 also writes e1 = act(C), 3 writes e2 = C ⊙ act'(e0, e1), 4 writes e1[i] = Σ_p A[p, i]
// (TRANS_A only: a layer's bias gradient next to its weight gradient, summed by the first
// column of workgroups from the slices of A they stage anyway). The activation functions
// (shaders/activation/functions.wgsl) are appended to this file.

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACCUMULATE: bool = false;
override EPILOGUE: u32 = 0u;
// Read by the activation functions. Fused activations have no parameters, so SLOPE and
// ALPHA are placeholders.
override ACT: u32 = 0u;
const SLOPE: f32 = 0.0;
const ALPHA: f32 = 1.0;

// Rows and columns of C per workgroup, values of k per staged slice, and rows and columns
// of C per invocation (at most 8 each: the size of the register arrays below).
override TILE_BM: u32 = 64u;
override TILE_BN: u32 = 64u;
override TILE_BK: u32 = 16u;
override TILE_TM: u32 = 4u;
override TILE_TN: u32 = 4u;

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
@group(0) @binding(4) var<storage, read> e0: array<f32>;
@group(0) @binding(5) var<storage, read_write> e1: array<f32>;
@group(0) @binding(6) var<storage, read_write> e2: array<f32>;

// Indexed [p * BM + i] and [p * BN + j]: the inner loop's reads of one p are a row.
var<workgroup> tile_a: array<f32, TILE_BK * TILE_BM>;
var<workgroup> tile_b: array<f32, TILE_BK * TILE_BN>;

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

// Invocation (x, y) owns rows y + i·(BM/TM) and columns x + j·(BN/TN) of the block rather
// than a contiguous TM×TN patch: adjacent invocations then read adjacent words of the
// staged rows (no shared-memory bank conflicts) and store adjacent words of C (coalesced).
@compute @workgroup_size(TILE_BN / TILE_TN, TILE_BM / TILE_TM)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let wx = TILE_BN / TILE_TN;
    let wy = TILE_BM / TILE_TM;
    let threads = wx * wy;
    let tid = lid.y * wx + lid.x;
    let row0 = wg.y * TILE_BM;
    let col0 = wg.x * TILE_BN;
    var acc: array<f32, 64>;
    var ra: array<f32, 8>;
    var rb: array<f32, 8>;
    var sums: array<f32, 8>;
    // Uniform per workgroup, so the barriers stay in uniform control flow.
    let row_sums = EPILOGUE == 4u && wg.x == 0u;
    // `dims.k` is uniform, so every invocation reaches the same barriers.
    for (var p0 = 0u; p0 < dims.k; p0 += TILE_BK) {
        // Adjacent invocations load adjacent addresses of the stored layout.
        for (var e = tid; e < TILE_BK * TILE_BM; e += threads) {
            if TRANS_A {
                let p = e / TILE_BM;
                let i = e % TILE_BM;
                tile_a[p * TILE_BM + i] = a_at(row0 + i, p0 + p);
            } else {
                let i = e / TILE_BK;
                let p = e % TILE_BK;
                tile_a[p * TILE_BM + i] = a_at(row0 + i, p0 + p);
            }
        }
        for (var e = tid; e < TILE_BK * TILE_BN; e += threads) {
            if TRANS_B {
                let j = e / TILE_BK;
                let p = e % TILE_BK;
                tile_b[p * TILE_BN + j] = b_at(p0 + p, col0 + j);
            } else {
                let p = e / TILE_BN;
                let j = e % TILE_BN;
                tile_b[p * TILE_BN + j] = b_at(p0 + p, col0 + j);
            }
        }
        workgroupBarrier();
        for (var p = 0u; p < TILE_BK; p++) {
            for (var i = 0u; i < TILE_TM; i++) {
                ra[i] = tile_a[p * TILE_BM + lid.y + i * wy];
            }
            for (var j = 0u; j < TILE_TN; j++) {
                rb[j] = tile_b[p * TILE_BN + lid.x + j * wx];
            }
            // Values past k or m were staged as zeros.
            if row_sums {
                for (var i = 0u; i < TILE_TM; i++) {
                    sums[i] += ra[i];
                }
            }
            for (var i = 0u; i < TILE_TM; i++) {
                for (var j = 0u; j < TILE_TN; j++) {
                    acc[i * TILE_TN + j] = fma(ra[i], rb[j], acc[i * TILE_TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TILE_TM; i++) {
        let row = row0 + lid.y + i * wy;
        if row >= dims.m {
            break;
        }
        if row_sums && lid.x == 0u {
            e1[row] = sums[i];
        }
        for (var j = 0u; j < TILE_TN; j++) {
            let col = col0 + lid.x + j * wx;
            if col < dims.n {
                let idx = row * dims.n + col;
                var out = acc[i * TILE_TN + j];
                if EPILOGUE == 1u || EPILOGUE == 2u {
                    out += e0[col];
                }
                if ACCUMULATE {
                    out += c[idx];
                }
                c[idx] = out;
                if EPILOGUE == 2u {
                    e1[idx] = act(out);
                } else if EPILOGUE == 3u {
                    e2[idx] = out * act_grad(e0[idx], e1[idx]);
                }
            }
        }
    }
}
