// Inverted dropout: kept units are scaled by 1/(1-p), dropped ones zeroed. The mask is
// redrawn from (stream, step, index) by rng_uniform (shaders/prelude.wgsl), so the
// backward pass, which is this same kernel applied to the output gradient, sees the mask
// the forward pass drew, and the CPU reference draws it bit for bit. Over `V` elements
// (see `ELEMENT_F32` in src/device/kernels.rs); `dims.len` counts them. A data-parallel
// rank offsets the index by its first global row × `dims.row_width`, so its masks are
// the ones one process draws for those rows of the global batch.

struct Dims {
    len: u32,
    stream: u32,
    p: f32,
    // 1/(1-p), computed once on the host so both backends scale by the same f32.
    scale: f32,
    // Elements per row of the offset; 0 without one (then `first_row` is a stand-in).
    row_width: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;
@group(0) @binding(3) var<storage, read> step_counter: array<f32>;
@group(0) @binding(4) var<storage, read> first_row: array<f32>;


@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let step = bitcast<u32>(step_counter[0]);
    let offset = bitcast<u32>(first_row[0]) * dims.row_width;
    let xv = x[i];
    var yv = xv;
    for (var c = 0u; c < LANES; c++) {
        let keep = rng_uniform(dims.stream, step, offset + LANES * i + c) >= dims.p;
        yv = with_lane(yv, c, select(0.0, lane(xv, c) * dims.scale, keep));
    }
    y[i] = yv;
}

