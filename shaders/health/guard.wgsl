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
@group(0) @binding(7) var<storage, read> guard_slots: array<u32>;


fn all_finite(v: V) -> bool {
    return all((bitcast<U>(v) & U(0x7f800000u)) != U(0x7f800000u));
}

// Up to four tensors (src … src4) per dispatch: dims holds their lengths (0 for an unused
// place), guard_slots their flag slots. One load per element; the atomic only runs on a
// NaN or inf. Grouped because on small layers launching a dispatch costs more than the
// loads.
@compute @workgroup_size(256)
fn guard(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    let mark = 0xffffffffu - step_bits[0];
    if i < dims.a && !all_finite(src[i]) {
        atomicMax(&flags[guard_slots[0]], mark);
    }
    if i < dims.b && !all_finite(src2[i]) {
        atomicMax(&flags[guard_slots[1]], mark);
    }
    if i < dims.c && !all_finite(src3[i]) {
        atomicMax(&flags[guard_slots[2]], mark);
    }
    if i < dims.d && !all_finite(src4[i]) {
        atomicMax(&flags[guard_slots[3]], mark);
    }
}
