// Gradient-health statistics, dispatched only on statistics steps. Layout of the record
// they write: `src/model/health_record.rs`. The always-on guard is in `guard.wgsl`.
//
// The statistics kernels run as one workgroup: each invocation walks a strided subset of
// the tensor, then a tree reduction in shared memory combines the partial results, so
// any size works. They run once every N steps on tensors of a layer's size, where one
// pass with no second dispatch is cheaper than a multi-workgroup reduction.
//
// Non-finite values are found from the exponent bits: WGSL lets compilers assume floats
// are finite, so comparisons such as `v != v` may be folded away.

// Saturation thresholds (f32 bits) of `activation_stats`.
override LO_BITS: u32 = 0u;
override HI_BITS: u32 = 0u;

struct Dims {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> src2: array<f32>;
@group(0) @binding(3) var<storage, read> src3: array<f32>;
@group(0) @binding(4) var<storage, read_write> record: array<f32>;
// `copy` moves bits, so it reads and writes as u32: a float copy may flush the step
// counter's bits (small integers are denormal floats) to zero.
@group(0) @binding(7) var<storage, read> copy_src: array<u32>;
@group(0) @binding(8) var<storage, read_write> copy_dst: array<u32>;

var<workgroup> part: array<vec2<f32>, 256>;

// Sums of both components over the workgroup. Must be called from uniform control flow.
fn workgroup_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    part[lid] = v;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lid < width {
            part[lid] += part[lid + width];
        }
        workgroupBarrier();
    }
    let total = part[0];
    // Everyone has read the total before the next call overwrites `part`.
    workgroupBarrier();
    return total;
}

// (max of x, sum of y) over the workgroup. Uniform control flow only.
fn workgroup_max_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    part[lid] = v;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lid < width {
            let o = part[lid + width];
            part[lid] = vec2<f32>(max(part[lid].x, o.x), part[lid].y + o.y);
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

// dims: rows, cols, record offset, mode (bit 0: dead units, bit 1: saturation).
// src: the layer output, src2: the activation input, src3: the activation output.
@compute @workgroup_size(256)
fn activation_stats(@builtin(local_invocation_index) lid: u32) {
    let rows = dims.a;
    let cols = dims.b;
    let n = rows * cols;
    var s = 0.0;
    var bad = 0.0;
    for (var i = lid; i < n; i += WG) {
        let v = src[i];
        if is_finite(v) {
            s += v;
        } else {
            bad += 1.0;
        }
    }
    let t = workgroup_sum2(lid, vec2<f32>(s, bad));
    let finite = f32(n) - t.y;
    let mean = select(0.0, t.x / max(finite, 1.0), finite > 0.0);
    // Squared deviations from the mean in a second pass, free of E[x²] − E[x]² cancellation.
    var ss = 0.0;
    for (var i = lid; i < n; i += WG) {
        let v = src[i];
        if is_finite(v) {
            let d = v - mean;
            ss += d * d;
        }
    }
    var sat = 0.0;
    if (dims.d & 2u) != 0u {
        let lo = bitcast<f32>(LO_BITS);
        let hi = bitcast<f32>(HI_BITS);
        for (var i = lid; i < n; i += WG) {
            let y = src3[i];
            if y <= lo || y >= hi {
                sat += 1.0;
            }
        }
    }
    let u = workgroup_sum2(lid, vec2<f32>(ss, sat));
    var dead = 0.0;
    if (dims.d & 1u) != 0u {
        for (var c = lid; c < cols; c += WG) {
            var alive = false;
            for (var r = 0u; r < rows && !alive; r++) {
                alive = src2[r * cols + c] > 0.0;
            }
            if !alive {
                dead += 1.0;
            }
        }
    }
    let w = workgroup_sum2(lid, vec2<f32>(dead, 0.0));
    if lid == 0u {
        let at = dims.c;
        record[at] = mean;
        record[at + 1u] = sqrt(u.x / max(finite, 1.0));
        record[at + 2u] = w.x / f32(cols);
        record[at + 3u] = u.y / f32(n);
        record[at + 4u] = t.y;
    }
}

// dims: length, record offset, whether to subtract src2. record[at] = ‖src − src2‖ over
// the finite differences, record[at + 1] = how many were not finite. Without a `minus`
// tensor the engine binds `src` again as src2 and sets dims.c = 0.
@compute @workgroup_size(256)
fn norm(@builtin(local_invocation_index) lid: u32) {
    let len = dims.a;
    let minus = dims.c != 0u;
    // Scale by the largest magnitude first so squares of huge values cannot overflow.
    var m = 0.0;
    var bad = 0.0;
    for (var i = lid; i < len; i += WG) {
        var v = src[i];
        if minus {
            v -= src2[i];
        }
        if is_finite(v) {
            m = max(m, abs(v));
        } else {
            bad += 1.0;
        }
    }
    let t = workgroup_max_sum(lid, vec2<f32>(m, bad));
    let scale = t.x;
    var q = 0.0;
    if scale > 0.0 {
        for (var i = lid; i < len; i += WG) {
            var v = src[i];
            if minus {
                v -= src2[i];
            }
            if is_finite(v) {
                let r = v / scale;
                q += r * r;
            }
        }
    }
    let u = workgroup_sum2(lid, vec2<f32>(q, 0.0));
    if lid == 0u {
        record[dims.b] = scale * sqrt(u.x);
        record[dims.b + 1u] = t.y;
    }
}

// dims: length, destination offset.
@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.a {
        copy_dst[dims.b + i] = copy_src[i];
    }
}
