// Bias add (forward) and the bias gradient, a column sum over the batch (backward).

struct Dims {
    rows: u32,
    cols: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

const WG: u32 = 256u;

// dst[r,c] += src[c]
@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.rows * dims.cols {
        return;
    }
    dst[i] += src[i % dims.cols];
}

var<workgroup> partial: array<f32, 256>;

// dst[c] (+)= Σ_r src[r,c]: one workgroup per column, each invocation sums a strided
// subset of rows, then a tree reduction in shared memory. Correct for any row count.
@compute @workgroup_size(256)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let col = wg.y * nwg.x + wg.x;
    // `col` is uniform across the workgroup, so this early exit keeps barriers uniform.
    if col >= dims.cols {
        return;
    }
    var acc = 0.0;
    for (var r = lid; r < dims.rows; r += WG) {
        acc += src[r * dims.cols + col];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lid < width {
            partial[lid] += partial[lid + width];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        var out = partial[0];
        if dims.accumulate != 0u {
            out += dst[col];
        }
        dst[col] = out;
    }
}
