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

// dst[c] (+)= Σ_r src[r,c]: one invocation per column, rows summed in order. Adjacent
// invocations read adjacent addresses; no workgroup memory or barriers, which CPU-backed
// adapters execute slowly.
@compute @workgroup_size(64)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let col = (wg.y * nwg.x + wg.x) * 64u + lid;
    if col >= dims.cols {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < dims.rows; r++) {
        acc += src[r * dims.cols + col];
    }
    if dims.accumulate != 0u {
        acc += dst[col];
    }
    dst[col] = acc;
}
