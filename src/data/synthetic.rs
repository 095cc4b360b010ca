//! Built-in data generated in-process from a seed.

use super::Dataset;
use anyhow::{ensure, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Generated rows are held in memory, two features each: a cap well below what would
/// exhaust it, so a typo like `--points 1000000000000` is an error, not an abort.
pub const MAX_SPIRAL_ROWS: usize = 50_000_000;

/// [`spirals`] with its arguments checked: at least 2 classes, at least one point per
/// class, at most [`MAX_SPIRAL_ROWS`] points in all, and a finite, non-negative noise.
pub fn try_spirals(
    points_per_class: usize,
    classes: usize,
    noise: f32,
    seed: u64,
) -> Result<Dataset> {
    ensure!(
        classes >= 2,
        "spirals need at least 2 classes (arms), got {classes}"
    );
    ensure!(
        points_per_class >= 1,
        "spirals need at least 1 point per class, got {points_per_class}"
    );
    ensure!(
        points_per_class
            .checked_mul(classes)
            .is_some_and(|n| n <= MAX_SPIRAL_ROWS),
        "{points_per_class} points × {classes} classes is more than the {MAX_SPIRAL_ROWS} \
         generated rows allowed"
    );
    ensure!(
        noise.is_finite() && noise >= 0.0,
        "spiral noise must be finite and >= 0, got {noise}"
    );
    Ok(spirals(points_per_class, classes, noise, seed))
}

/// Interleaved spiral arms in 2-D, one class per arm (the CS231n toy problem). Each arm
/// turns 1.5 times around the origin, so no linear (or shallow, narrow) model separates
/// them. Points are in [-1, 1]²; `noise` is the standard deviation of angular jitter.
///
/// Panics when `classes < 2` or `points_per_class == 0`; [`try_spirals`] checks instead.
pub fn spirals(points_per_class: usize, classes: usize, noise: f32, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = points_per_class * classes;
    let mut features = Vec::with_capacity(n * 2);
    let mut labels = Vec::with_capacity(n);
    for c in 0..classes {
        for i in 0..points_per_class {
            let t = i as f32 / points_per_class.max(2).saturating_sub(1) as f32;
            let radius = 0.05 + 0.95 * t;
            let jitter: f32 = (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>()
                - 1.5)
                * 2.0
                * noise;
            let angle = c as f32 * std::f32::consts::TAU / classes as f32
                + t * 3.0 * std::f32::consts::PI
                + jitter;
            features.push(radius * angle.cos());
            features.push(radius * angle.sin());
            labels.push(c);
        }
    }
    // Interleave classes so a contiguous validation split holds every class.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let f = order
        .iter()
        .flat_map(|&r| [features[2 * r], features[2 * r + 1]])
        .collect();
    let l: Vec<usize> = order.iter().map(|&r| labels[r]).collect();
    Dataset::classification(f, &l, 2, classes).expect("generated data is well-formed")
}
