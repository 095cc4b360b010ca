// Helpers shared by every kernel file; `device::kernels` puts this file in front of each.

// Invocations per workgroup of the 1-D kernels (`@workgroup_size(256)`).
const WG: u32 = 256u;

// The flat invocation index of a 1-D kernel whose workgroups were laid out over x and y
// (a dispatch may exceed the per-dimension workgroup limit; see `Lowerer::grid`).
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + lid;
}

fn sigmoid(v: f32) -> f32 {
    // Two branches so exp never overflows into inf/inf.
    if v >= 0.0 {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

// Non-finite values are found from the exponent bits: WGSL lets compilers assume floats
// are finite, so comparisons such as `v != v` may be folded away.
fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Counter-based random numbers (dropout, RReLU). Stateless: the value depends only on
// (stream, step, index), so the CPU reference (`ops::dropout::cpu::rng_uniform`) draws
// bit-identical numbers and backward passes can redraw what the forward pass drew.

// PCG-RXS-M-XS hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform in [0, 1) with 24 random bits, exactly representable in f32.
fn rng_uniform(stream: u32, step: u32, index: u32) -> f32 {
    let h = pcg_hash(index ^ pcg_hash(step ^ pcg_hash(stream)));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}
