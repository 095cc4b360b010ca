// Gradient clipping: torch.nn.utils.clip_grad_value_ (clamp_value) and clip_grad_norm_ in
// three stages that never leave the device: norm_partials per gradient tensor, clip_coef
// once, then scale_by per tensor.
//
// A sum of squares is carried as a pair (s, q) standing for s²·q, with s the largest
// magnitude seen (LAPACK's nrm2 scaling). Plain f32 squares overflow for |g| > 1.8e19;
// scaled ones stay finite, so a huge but finite gradient gets a finite norm and a tiny,
// finite clip coefficient.

struct Dims {
    len: u32,
    first: u32,
    groups: u32,
    // clip_coef: max_norm; clamp_value: the clip value; norm_partials: nonzero to merge
    // into the partials already stored.
    limit: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
// Over `V` elements (see `ELEMENT_F32` in src/device/kernels.rs), for scale_by and
// clamp_value; `dims.len` then counts them.
@group(0) @binding(1) var<storage, read_write> x: array<V>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read> partials_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> total_norm: array<f32>;
@group(0) @binding(6) var<storage, read_write> coef: array<f32>;
@group(0) @binding(7) var<storage, read> coef_in: array<f32>;


var<workgroup> pairs: array<vec2<f32>, 256>;

// A bit test, because WGSL lets compilers assume floats are never NaN and fold `v != v`.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Combines two scaled sums. The CPU twin is cpu::ops::merge_scaled_squares: NaN poisons
// the result, and equal infinities add their counts rather than computing inf / inf.
fn merge(p: vec2<f32>, q: vec2<f32>) -> vec2<f32> {
    if is_nan(p.x) || is_nan(q.x) {
        let nan = bitcast<f32>(0x7fc00000u);
        return vec2<f32>(nan, nan);
    }
    if q.x > p.x {
        let r = p.x / q.x;
        return vec2<f32>(q.x, q.y + p.y * r * r);
    }
    if q.x == 0.0 {
        return p;
    }
    let r = select(q.x / p.x, 1.0, q.x == p.x);
    return vec2<f32>(p.x, p.y + q.y * r * r);
}

// Tree reduction of `pairs` for a whole workgroup; the result is in pairs[0].
fn reduce_pairs(lid: u32, acc: vec2<f32>) {
    pairs[lid] = acc;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lid < width {
            pairs[lid] = merge(pairs[lid], pairs[lid + width]);
        }
        workgroupBarrier();
    }
}

// Workgroup j reduces the 256-element blocks b with b mod groups = j (see Op::NormPartials),
// so any length works with a bounded number of workgroups.
@compute @workgroup_size(256)
fn norm_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = wg.x * WG + lid; i < dims.len; i += dims.groups * WG) {
        acc = merge(acc, vec2<f32>(abs(values[i]), 1.0));
    }
    reduce_pairs(lid, acc);
    if lid == 0u {
        store_partial(wg.x, pairs[0]);
    }
}

fn store_partial(j: u32, pair: vec2<f32>) {
    let slot = 2u * (dims.first + j);
    var p = pair;
    // A tensor larger than one storage binding is reduced in windows of whole rounds of
    // blocks; each window after the first merges into the pairs stored so far.
    if dims.limit != 0.0 {
        p = merge(vec2<f32>(partials[slot], partials[slot + 1u]), p);
    }
    partials[slot] = p.x;
    partials[slot + 1u] = p.y;
}

// The same partials with one invocation per partial walking its blocks in order, each
// block summed on its own and then merged: CPU-backed adapters run workgroup barriers
// slowly, and a block round has little work. GPUs would leave most lanes idle here and
// use `norm_partials`.
@compute @workgroup_size(64)
fn norm_partials_serial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= dims.groups {
        return;
    }
    // Each block is summed on its own and then merged, so rounding grows with the block
    // size plus the block count rather than with the partial's whole length.
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = j; b * WG < dims.len; b += dims.groups) {
        let end = min((b + 1u) * WG, dims.len);
        var block = vec2<f32>(0.0, 0.0);
        for (var i = b * WG; i < end; i++) {
            block = merge(block, vec2<f32>(abs(values[i]), 1.0));
        }
        acc = merge(acc, block);
    }
    store_partial(j, acc);
}

// One workgroup: total = s·√q over all partials, coef = min(max_norm / (total + 1e-6), 1)
// with a clamp that keeps NaN, as torch.clamp does. The NaN test reads the exponent bits:
// GL drivers were seen to take `NaN > 1.0` as true, which turned a NaN coefficient into 1.
@compute @workgroup_size(256)
fn clip_coef(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < dims.len; j += WG) {
        acc = merge(acc, vec2<f32>(partials_in[2u * j], partials_in[2u * j + 1u]));
    }
    reduce_pairs(lid, acc);
    if lid == 0u {
        let total = pairs[0].x * sqrt(pairs[0].y);
        let c = dims.limit / (total + 1e-6);
        total_norm[0] = total;
        coef[0] = select(c, 1.0, is_finite(c) && c > 1.0);
    }
}

@compute @workgroup_size(256)
fn scale_by(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        x[i] *= coef_in[0];
    }
}

@compute @workgroup_size(256)
fn clamp_value(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        x[i] = clamp(x[i], V(-dims.limit), V(dims.limit));
    }
}

