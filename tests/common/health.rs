//! Engines, data and a fit shared by the gradient-health tests (`health.rs`,
//! `health_nonfinite.rs`).

use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{data, FitOptions, Model};

pub fn gpu() -> Box<dyn Engine> {
    Box::new(GpuEngine::new(super::gpu()))
}

pub fn cpu() -> Box<dyn Engine> {
    Box::new(CpuEngine::new())
}

pub fn spirals(points: usize) -> data::Dataset {
    data::synthetic::spirals(points, 3, 0.05, 11)
}

pub fn batch(d: &data::Dataset, rows: usize, offset: usize) -> (Vec<f32>, Vec<f32>) {
    let index: Vec<usize> = (0..rows).map(|i| (i + offset) % d.rows).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    d.gather(&index, &mut x, &mut y);
    (x, y)
}

pub fn fit(
    m: &mut Model,
    d: &data::Dataset,
    epochs: usize,
    batch_size: usize,
) -> anyhow::Result<()> {
    let opts = FitOptions {
        epochs,
        batch_size,
        shuffle_seed: 5,
        drop_last: false,
    };
    m.fit(d, None, &opts, |_| {}).map(|_| ())
}
