//! Counter-based random numbers, the CPU twin of the RNG in `shaders/prelude.wgsl`:
//! dropout masks and RReLU slopes are drawn from `(stream, step, index)`, so both
//! backends draw bit-identical values and backward passes redraw what forward drew.

/// PCG-RXS-M-XS hash, bit-identical to `pcg_hash` in `shaders/prelude.wgsl`.
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Uniform in [0, 1) from `(stream, step, index)`, bit-identical to `rng_uniform` in
/// `shaders/prelude.wgsl`, so both backends draw the same dropout masks and RReLU slopes.
pub fn rng_uniform(stream: u32, step: u32, index: u32) -> f32 {
    let h = pcg_hash(index ^ pcg_hash(step ^ pcg_hash(stream)));
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}
