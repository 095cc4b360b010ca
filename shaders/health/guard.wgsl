// The always-on non-finite guard (`ops::health::GuardFinite`). `V` is `f32` or `vec4<f32>` and `U`
// the matching `u32` type, declared by the host in front of this file: vectors when every
// checked length divides by 4, because on CPU-backed adapters one vector load costs about
// what one scalar load does. Lengths in `dims` count `V`s.
//
// Non-finite values are found from the exponent bits: WGSL lets compilers assume floats
// are finite, so comparisons such as `v != v` may be folded away.

// The six tensors' lengths (0 for an unused place) and flag slots, and where the peaks
// start in `flags`. Slots are in the uniform, not a storage buffer, so six tensors and
// the flags and step fit WebGPU's 8 storage bindings.
struct GuardDims {
    len0: u32,
    len1: u32,
    len2: u32,
    len3: u32,
    len4: u32,
    len5: u32,
    peaks: u32,
    _pad0: u32,
    slot0: u32,
    slot1: u32,
    slot2: u32,
    slot3: u32,
    slot4: u32,
    slot5: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> dims: GuardDims;
@group(0) @binding(1) var<storage, read> src: array<V>;
@group(0) @binding(2) var<storage, read> src2: array<V>;
@group(0) @binding(3) var<storage, read> src3: array<V>;
@group(0) @binding(4) var<storage, read> src4: array<V>;
@group(0) @binding(5) var<storage, read> src5: array<V>;
@group(0) @binding(6) var<storage, read> src6: array<V>;
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read> step_bits: array<u32>;

// Elements each invocation checks (`GUARD_PER_THREAD` on the host): the workgroup's
// reduction of the peaks is then paid once per 2048 elements, not per 256.
const PER_THREAD: u32 = 8u;

var<workgroup> peak: array<vec4<u32>, 256>;
var<workgroup> peak2: array<vec2<u32>, 256>;

// Marks flag `slot` when `v` holds a NaN or inf, and returns the largest finite
// magnitude in `v` as bits (non-negative floats order like their bits).
fn check(v: V, slot: u32, mark: u32) -> u32 {
    let bits = bitcast<U>(abs(v));
    let finite = (bits & U(0x7f800000u)) != U(0x7f800000u);
    if !all(finite) {
        atomicMax(&flags[slot], mark);
    }
    let kept = select(U(0u), bits, finite);
    var m = 0u;
    for (var c = 0u; c < LANES; c++) {
        m = max(m, bitcast<u32>(lane(bitcast<V>(kept), c)));
    }
    return m;
}

// Raises the peak of flag `slot` to `top` (bits of a non-negative float), if any.
fn raise_peak(slot: u32, top: u32) {
    if top > 0u {
        atomicMax(&flags[dims.peaks + slot], top);
    }
}

// Up to six tensors (src … src6) per dispatch. One load per element; the flag's atomic
// only runs on a NaN or inf, the peaks' once per workgroup. Grouped because on small
// layers launching a dispatch costs more than the loads.
@compute @workgroup_size(256)
fn guard(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let first = flat_index(wg, nwg, lid);
    let stride = nwg.x * nwg.y * WG;
    let mark = guard_step_mark();
    var m = vec4<u32>(0u);
    var m2 = vec2<u32>(0u);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = first + k * stride;
        if i < dims.len0 {
            m.x = max(m.x, check(src[i], dims.slot0, mark));
        }
        if i < dims.len1 {
            m.y = max(m.y, check(src2[i], dims.slot1, mark));
        }
        if i < dims.len2 {
            m.z = max(m.z, check(src3[i], dims.slot2, mark));
        }
        if i < dims.len3 {
            m.w = max(m.w, check(src4[i], dims.slot3, mark));
        }
        if i < dims.len4 {
            m2.x = max(m2.x, check(src5[i], dims.slot4, mark));
        }
        if i < dims.len5 {
            m2.y = max(m2.y, check(src6[i], dims.slot5, mark));
        }
    }
    peak[lid] = m;
    peak2[lid] = m2;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            peak[lid] = max(peak[lid], peak[lid + s]);
            peak2[lid] = max(peak2[lid], peak2[lid + s]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let top = peak[0];
        let top2 = peak2[0];
        raise_peak(dims.slot0, top.x);
        raise_peak(dims.slot1, top.y);
        raise_peak(dims.slot2, top.z);
        raise_peak(dims.slot3, top.w);
        raise_peak(dims.slot4, top2.x);
        raise_peak(dims.slot5, top2.y);
    }
}
