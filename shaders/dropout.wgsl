// Inverted dropout: kept units are scaled by 1/(1-p), dropped ones zeroed. The mask is
// redrawn from (stream, step, index) by rng_uniform (shaders/rng.wgsl, prepended), so the
// backward pass, which is this same kernel applied to the output gradient, sees the mask
// the forward pass drew, and the CPU reference draws it bit for bit.

struct Dims {
    len: u32,
    stream: u32,
    p: f32,
    // 1/(1-p), computed once on the host so both backends scale by the same f32.
    scale: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> step_counter: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.len {
        return;
    }
    let keep = rng_uniform(dims.stream, bitcast<u32>(step_counter[0]), i) >= dims.p;
    y[i] = select(0.0, x[i] * dims.scale, keep);
}

// The same four values at a time, for lengths divisible by 4 (`dims.len` counts vec4s);
// element 4i + c draws with index 4i + c, as above.
@group(0) @binding(4) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn dropout4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.len {
        return;
    }
    let step = bitcast<u32>(step_counter[0]);
    var keep: vec4<bool>;
    for (var c = 0u; c < 4u; c++) {
        keep[c] = rng_uniform(dims.stream, step, 4u * i + c) >= dims.p;
    }
    y4[i] = select(vec4<f32>(0.0), x4[i] * dims.scale, keep);
}
