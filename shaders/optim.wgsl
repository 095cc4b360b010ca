// Optimizer updates. Hyper-parameters come from a small storage buffer so a schedule can
// change them between steps without rebuilding bind groups: hyper[0] is the learning rate.

struct Dims {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read> hyper: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i < dims.len {
        param[i] -= hyper[0] * grad[i];
    }
}

// The same for lengths divisible by 4, four values per invocation (`dims.len` counts
// vec4s). On CPU-backed adapters a vector load costs little more than a scalar one.
@group(0) @binding(4) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> grad4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn sgd4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i < dims.len {
        param4[i] -= hyper[0] * grad4[i];
    }
}
