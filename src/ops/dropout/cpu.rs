//! Reference loop of dropout, drawing the same mask as the kernel.

use crate::ops::rng::rng_uniform;

/// Inverted dropout with the counter-based mask, see [`super::Dropout`]; element `i`
/// draws index `offset + i`.
pub fn dropout(x: &[f32], y: &mut [f32], p: f32, stream: u32, step: u32, offset: u32) {
    let scale = super::dropout_scale(p);
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = if rng_uniform(stream, step, offset.wrapping_add(i as u32)) >= p {
            xi * scale
        } else {
            0.0
        };
    }
}
