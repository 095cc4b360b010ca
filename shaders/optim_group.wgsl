// Plain SGD over up to four parameters in one dispatch (`ops::optim::SgdGroup`): on small
// models launching a dispatch costs more than the update, so one per tensor made the
// updates a third of a step's dispatches. `V` is `f32` or `vec4<f32>` (see optim.wgsl);
// `dims.a`..`dims.d` count `V`s, 0 for an unused place. The learning rate is read as a
// uniform, so four parameters and their gradients fit WebGPU's 8 storage bindings.

struct Dims {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// `crate::tensor::Hyper`: only the learning rate matters without momentum.
struct Hyper {
    lr: f32,
    momentum: f32,
    ln_momentum: f32,
    cycled: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> hyper: Hyper;
@group(0) @binding(2) var<storage, read_write> param: array<V>;
@group(0) @binding(3) var<storage, read> grad: array<V>;
@group(0) @binding(4) var<storage, read_write> param2: array<V>;
@group(0) @binding(5) var<storage, read> grad2: array<V>;
@group(0) @binding(6) var<storage, read_write> param3: array<V>;
@group(0) @binding(7) var<storage, read> grad3: array<V>;
@group(0) @binding(8) var<storage, read_write> param4: array<V>;
@group(0) @binding(9) var<storage, read> grad4: array<V>;

// The same arithmetic as `sgd` in optim.wgsl: param -= lr·(grad + weight_decay·param).
@compute @workgroup_size(256)
fn sgd_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let lr = hyper.lr;
    let wd = dims.weight_decay;
    if i < dims.a {
        param[i] -= lr * (grad[i] + wd * param[i]);
    }
    if i < dims.b {
        param2[i] -= lr * (grad2[i] + wd * param2[i]);
    }
    if i < dims.c {
        param3[i] -= lr * (grad3[i] + wd * param3[i]);
    }
    if i < dims.d {
        param4[i] -= lr * (grad4[i] + wd * param4[i]);
    }
}
