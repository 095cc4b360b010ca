// Bias add (forward) and the bias gradient, a column sum over the batch (backward). Over
// `V` elements (see `ELEMENT_F32` in src/device/kernels.rs): `vec4` when the column count
// divides by 4, and `dims.cols` then counts groups of 4 columns.

struct Dims {
    rows: u32,
    cols: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<V>;
@group(0) @binding(2) var<storage, read_write> dst: array<V>;


// dst[r,c] += src[c]
@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.rows * dims.cols {
        return;
    }
    dst[i] += src[i % dims.cols];
}

// The bias gradient keeps one invocation per column summing its rows in order: on
// CPU-backed adapters workgroup memory and barriers cost more than the loads (a tree
// reduction took 7 of a W1 step's milliseconds), and on GPUs a batch of rows per
// invocation is short enough. Adjacent invocations read adjacent addresses.
const COLS_WG: u32 = 64u;

// dst[c] (+)= Σ_r src[r,c].
@compute @workgroup_size(64)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let col = (wg.y * nwg.x + wg.x) * COLS_WG + lid;
    if col >= dims.cols {
        return;
    }
    var acc = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        acc += src[r * dims.cols + col];
    }
    if dims.accumulate != 0u {
        acc += dst[col];
    }
    dst[col] = acc;
}

