// How every kernel that checks values for the non-finite guard records what it saw (the
// guard itself, the texture matmul's epilogue, the metric accumulator), so the flags mean
// one thing whoever wrote them. The including module declares `flags`
// (`array<atomic<u32>>`: a flag per checked tensor, then their peaks from `dims.peaks`)
// and `step_bits` (the device's step counter).

// The value a flag takes at this step: `atomicMax` keeps the earliest step that marked it.
fn guard_step_mark() -> u32 {
    return 0xffffffffu - step_bits[0];
}

// `seen` after value `v`: `.x` is 1 once a NaN or inf was seen, `.y` the bits of the
// largest finite magnitude (non-negative floats order like their bits). Non-finite from
// the exponent bits: compilers may assume floats finite.
fn guard_see(seen: vec2<u32>, v: f32) -> vec2<u32> {
    let bits = bitcast<u32>(abs(v));
    let finite = (bits & 0x7f800000u) != 0x7f800000u;
    return vec2<u32>(select(1u, seen.x, finite), max(seen.y, select(0u, bits, finite)));
}

// Records `seen` for flag `slot`. Most callers find the peak already as high: a load
// spares their atomic.
fn guard_mark(slot: u32, seen: vec2<u32>) {
    if seen.x != 0u {
        atomicMax(&flags[slot], guard_step_mark());
    }
    if seen.y > atomicLoad(&flags[dims.peaks + slot]) {
        atomicMax(&flags[dims.peaks + slot], seen.y);
    }
}
