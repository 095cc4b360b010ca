// Weight regularization: penalty_grad adds the gradient of Keras's L1L2 kernel penalty,
// max_norm applies Keras's MaxNorm constraint after the update. penalty_grad runs over `V`
// elements (see `ELEMENT_F32` in src/device/kernels.rs); max_norm is always lowered with
// V = f32, one invocation per row.

struct Dims {
    len: u32,
    cols: u32,
    // penalty_grad: l1; max_norm: the limit.
    a: f32,
    // penalty_grad: 2·l2 (from the host, so both backends multiply by one f32);
    // max_norm: Keras's epsilon, 1e-7.
    b: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> w: array<V>;
@group(0) @binding(2) var<storage, read_write> grad: array<V>;


// grad += l1·sign(w) + 2·l2·w; WGSL's sign(0) is 0, as torch.sign.
@compute @workgroup_size(256)
fn penalty_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let wv = w[i];
    grad[i] += dims.a * sign(wv) + dims.b * wv;
}

const ROWS_WG: u32 = 64u;

// One invocation per row, summing its squares in order like the CPU reference: weight rows
// are short (a layer's fan-in), and a per-row tree would cost barriers on CPU adapters.
@compute @workgroup_size(64)
fn max_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = (wg.y * nwg.x + wg.x) * ROWS_WG + lid;
    if row >= dims.len {
        return;
    }
    let base = row * dims.cols;
    var sq = 0.0;
    for (var c = 0u; c < dims.cols; c++) {
        // lane 0 is the element itself with V = f32, the only build max_norm is lowered to.
        let v = lane(w[base + c], 0u);
        sq += v * v;
    }
    let norm = sqrt(sq);
    if norm > dims.a {
        let scale = dims.a / (dims.b + norm);
        for (var c = 0u; c < dims.cols; c++) {
            w[base + c] *= scale;
        }
    }
}
