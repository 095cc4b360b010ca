//! Built-in data generated in-process from a seed.

use super::Dataset;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Interleaved spiral arms in 2-D, one class per arm (the CS231n toy problem). Each arm
/// turns 1.5 times around the origin, so no linear (or shallow, narrow) model separates
/// them. Points are in [-1, 1]²; `noise` is the standard deviation of angular jitter.
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
