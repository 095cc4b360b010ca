//! Speed-up of training from cached frozen-layer outputs.
//!
//! A W1-shaped model (784 → 8 × 512 ReLU → 10) with its lower 6 layers frozen trains for
//! a few epochs twice on the same synthetic data: recomputing the frozen layers every
//! epoch, and computing them once (`Model::cache_frozen_outputs`). Prints epochs/s of
//! each and the ratio. `cargo bench --bench frozen_cache [-- --json] [-- --cpu]`.

use std::time::Instant;
use steadygrad::{BackendChoice, Dataset, FitOptions, MlpSpec, Model, Optimizer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let cpu = args.iter().any(|a| a == "--cpu");
    let (rows, epochs, frozen) = (2048, 3, 6);
    // Deterministic pseudo-random features and labels; the content does not matter.
    let features: Vec<f32> = (0..rows * 784)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let labels: Vec<usize> = (0..rows).map(|r| (r * 7) % 10).collect();
    let data = Dataset::classification(features, &labels, 784, 10)?;
    let spec = MlpSpec::new(784, &[512; 8], 10)
        .optimizer(Optimizer::sgd(0.01))
        .freeze(frozen)
        .seed(1);
    let choice = if cpu {
        BackendChoice::Cpu
    } else {
        BackendChoice::Auto
    };
    let opts = FitOptions {
        epochs,
        batch_size: 256,
        shuffle_seed: 1,
        drop_last: false,
    };
    let mut seconds = Vec::new();
    let mut device = String::new();
    for cache in [false, true] {
        let mut m = Model::with_backend(spec.clone(), &choice)?;
        device = m.device();
        m.cache_frozen_outputs(cache);
        // Warm-up: compiles the plans so the timing measures training only.
        m.evaluate(&data.slice(0, 256), 256)?;
        let t = Instant::now();
        m.fit(&data, None, &opts, |_| {})?;
        seconds.push(t.elapsed().as_secs_f64());
    }
    let speedup = seconds[0] / seconds[1];
    if json {
        println!(
            "{{\"bench\":\"frozen_cache\",\"device\":{device:?},\"rows\":{rows},\"epochs\":{epochs},\"frozen_layers\":{frozen},\"seconds_recompute\":{:.3},\"seconds_cached\":{:.3},\"speedup\":{speedup:.2}}}",
            seconds[0], seconds[1]
        );
    } else {
        println!("device: {device}");
        println!(
            "784 → 8×512 → 10, layers 0..{frozen} frozen, {rows} rows, {epochs} epochs, batch 256"
        );
        println!(
            "recompute frozen layers every epoch: {:.2} s ({:.2} epochs/s)",
            seconds[0],
            epochs as f64 / seconds[0]
        );
        println!(
            "cached frozen outputs:               {:.2} s ({:.2} epochs/s)",
            seconds[1],
            epochs as f64 / seconds[1]
        );
        println!("speed-up: {speedup:.2}×");
    }
    Ok(())
}
