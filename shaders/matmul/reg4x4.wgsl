// C[m,n] (+)= op(A)[m,k] · op(B)[k,n], row-major.
// op(A) = A, or Aᵀ of a stored [k,m] matrix when TRANS_A; likewise B (stored [n,k]).
// Each invocation computes a 4×4 block of C held in registers, so each loaded value is
// used four times; an 8×8 workgroup covers a 32×32 tile.

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

fn a_at(i: u32, p: u32) -> f32 {
    if TRANS_A {
        return a[p * dims.m + i];
    }
    return a[i * dims.k + p];
}

fn b_at(p: u32, j: u32) -> f32 {
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

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= dims.m || col0 >= dims.n {
        return;
    }
    // Ragged edges are clamped onto the last valid row/column: every load stays in
    // bounds with no branch in the inner loop, and the duplicates are dropped at the store.
    let step = vec4<u32>(0u, 1u, 2u, 3u);
    let r = min(vec4<u32>(row0) + step, vec4<u32>(dims.m - 1u));
    let q = min(vec4<u32>(col0) + step, vec4<u32>(dims.n - 1u));
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var p = 0u; p < dims.k; p++) {
        let bv = vec4<f32>(b_at(p, q.x), b_at(p, q.y), b_at(p, q.z), b_at(p, q.w));
        acc0 = fma(vec4<f32>(a_at(r.x, p)), bv, acc0);
        acc1 = fma(vec4<f32>(a_at(r.y, p)), bv, acc1);
        acc2 = fma(vec4<f32>(a_at(r.z, p)), bv, acc2);
        acc3 = fma(vec4<f32>(a_at(r.w, p)), bv, acc3);
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}
