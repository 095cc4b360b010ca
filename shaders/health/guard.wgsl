// The always-on non-finite guard (`ops::health::GuardFinite`). `V` is `f32` or `vec4<f32>` and `U`
// the matching `u32` type, declared by the host in front of this file: vectors when every
// checked length divides by 4, because on CPU-backed adapters one vector load costs about
// what one scalar load does. Lengths in `dims` count `V`s.
//
// Non-finite values are found from the exponent bits: WGSL lets compilers assume floats
// are finite, so comparisons such as `v != v` may be folded away.

struct Dims {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<V>;
@group(0) @binding(2) var<storage, read> src2: array<V>;
@group(0) @binding(3) var<storage, read> src3: array<V>;
@group(0) @binding(4) var<storage, read> src4: array<V>;
@group(0) @binding(5) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> step_bits: array<u32>;
// The four tensors' flag slots, then where the peaks start in `flags`.
@group(0) @binding(7) var<storage, read> guard_slots: array<u32>;

// Elements each invocation checks (`GUARD_PER_THREAD` on the host): the workgroup's
// reduction of the peaks is then paid once per 2048 elements, not per 256.
const PER_THREAD: u32 = 8u;

var<workgroup> peak: array<vec4<u32>, 256>;

// Marks the tensor's flag when `v` holds a NaN or inf, and returns the largest finite
// magnitude in `v` as bits (non-negative floats order like their bits).
fn check(v: V, place: u32, mark: u32) -> u32 {
    let bits = bitcast<U>(abs(v));
    let finite = (bits & U(0x7f800000u)) != U(0x7f800000u);
    if !all(finite) {
        atomicMax(&flags[guard_slots[place]], mark);
    }
    let kept = select(U(0u), bits, finite);
    var m = 0u;
    for (var c = 0u; c < LANES; c++) {
        m = max(m, bitcast<u32>(lane(bitcast<V>(kept), c)));
    }
    return m;
}

// Up to four tensors (src … src4) per dispatch: dims holds their lengths (0 for an unused
// place), guard_slots their flag slots. One load per element; the flag's atomic only runs
// on a NaN or inf, the peaks' once per workgroup. Grouped because on small layers
// launching a dispatch costs more than the loads.
@compute @workgroup_size(256)
fn guard(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let first = flat_index(wg, nwg, lid);
    let stride = nwg.x * nwg.y * WG;
    let mark = 0xffffffffu - step_bits[0];
    var m = vec4<u32>(0u);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = first + k * stride;
        if i < dims.a {
            m.x = max(m.x, check(src[i], 0u, mark));
        }
        if i < dims.b {
            m.y = max(m.y, check(src2[i], 1u, mark));
        }
        if i < dims.c {
            m.z = max(m.z, check(src3[i], 2u, mark));
        }
        if i < dims.d {
            m.w = max(m.w, check(src4[i], 3u, mark));
        }
    }
    peak[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            peak[lid] = max(peak[lid], peak[lid + s]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let top = peak[0];
        let at = guard_slots[4];
        if top.x > 0u {
            atomicMax(&flags[at + guard_slots[0]], top.x);
        }
        if top.y > 0u {
            atomicMax(&flags[at + guard_slots[1]], top.y);
        }
        if top.z > 0u {
            atomicMax(&flags[at + guard_slots[2]], top.z);
        }
        if top.w > 0u {
            atomicMax(&flags[at + guard_slots[3]], top.w);
        }
    }
}
