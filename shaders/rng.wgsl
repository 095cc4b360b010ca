// Counter-based random numbers shared by kernels that need them (dropout, RReLU).
// Stateless: the value depends only on (stream, step, index), so the CPU reference
// (`cpu::ops::rng_uniform`) draws bit-identical numbers and backward passes can redraw
// what the forward pass drew. Prepended to the kernel files that use it.

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
