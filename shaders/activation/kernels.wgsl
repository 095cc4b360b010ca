// Elementwise activations and their derivatives (PyTorch's definitions), selected by
// override constants so each activation specialises one pipeline shared by its layers.
// ACT is `Activation::kernel_id` (src/ops/activation/kind.rs); the functions it selects
// are in functions.wgsl, which is put in front of this file.
//
// Entry points: `forward`/`backward` for every kind at constant parameters;
// `rrelu_forward`/`rrelu_backward` for RReLU in training (a random slope per element and
// step, redrawn in backward from the counter-based RNG rather than stored);
// `prelu_forward`/`prelu_backward` for PReLU's learned slopes. Each binds only what it uses.
//
// Tensors are read and written as `V` elements (see `ELEMENT_F32` in src/device/kernels.rs),
// the functions applied lane by lane; `dims.len` counts `V`s, and element
// `LANES * i + c` (lane c of number i) is what indexes random draws and PReLU slopes.

override ACT: u32 = 0u;
// The ReLU family's slope for x <= 0 (`Activation::negative_slope`).
override SLOPE: f32 = 0.0;
override ALPHA: f32 = 1.0;
// RReLU's training range.
override LOWER: f32 = 0.125;
override UPPER: f32 = 0.33333334;

struct Dims {
    len: u32,
    // PReLU: number of slopes; element i uses slope[i % units].
    units: u32,
    // RReLU: the random stream (one per layer).
    stream: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> y: array<V>;
@group(0) @binding(3) var<storage, read> dy: array<V>;
@group(0) @binding(4) var<storage, read_write> out: array<V>;
// The persistent step counter: a u32 kept in an f32 slot, read as its bits.
@group(0) @binding(5) var<storage, read> step_counter: array<u32>;
@group(0) @binding(6) var<storage, read> slope: array<f32>;
@group(0) @binding(7) var<storage, read_write> slope_terms: array<V>;

// RReLU's training slope of element i: the same draw as `ops::activation::cpu::rrelu_slope`.
fn rrelu_slope(i: u32) -> f32 {
    return LOWER + (UPPER - LOWER) * rng_uniform(dims.stream, step_counter[0], i);
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        var o = xv;
        for (var c = 0u; c < LANES; c++) {
            o = with_lane(o, c, act(lane(xv, c)));
        }
        out[i] = o;
    }
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        let yv = y[i];
        var g = xv;
        for (var c = 0u; c < LANES; c++) {
            g = with_lane(g, c, act_grad(lane(xv, c), lane(yv, c)));
        }
        out[i] = dy[i] * g;
    }
}

@compute @workgroup_size(256)
fn rrelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        var o = xv;
        for (var c = 0u; c < LANES; c++) {
            let v = lane(xv, c);
            o = with_lane(o, c, select(rrelu_slope(LANES * i + c) * v, v, v > 0.0));
        }
        out[i] = o;
    }
}

@compute @workgroup_size(256)
fn rrelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        var g = xv;
        for (var c = 0u; c < LANES; c++) {
            g = with_lane(g, c, select(rrelu_slope(LANES * i + c), 1.0, lane(xv, c) > 0.0));
        }
        out[i] = dy[i] * g;
    }
}

@compute @workgroup_size(256)
fn prelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        var o = xv;
        for (var c = 0u; c < LANES; c++) {
            let v = lane(xv, c);
            o = with_lane(o, c, select(slope[(LANES * i + c) % dims.units] * v, v, v > 0.0));
        }
        out[i] = o;
    }
}

// dx, and the slope gradient's per-element terms dy·x for x <= 0, which a column sum
// (bias.wgsl's sum_rows) reduces over the batch.
@compute @workgroup_size(256)
fn prelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        let xv = x[i];
        let gv = dy[i];
        var o = xv;
        var t = xv;
        for (var c = 0u; c < LANES; c++) {
            let v = lane(xv, c);
            let g = lane(gv, c);
            o = with_lane(o, c, g * select(slope[(LANES * i + c) % dims.units], 1.0, v > 0.0));
            t = with_lane(t, c, select(v * g, 0.0, v > 0.0));
        }
        out[i] = o;
        slope_terms[i] = t;
    }
}
