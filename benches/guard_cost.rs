//! Per-step cost of the always-on non-finite guard: the same training plan timed with and
//! without its `GuardFinite` ops, on the GPU. `cargo bench --bench guard_cost [-- DEPTH WIDTH BATCH STEPS]`.

use std::time::Instant;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine};
use steadygrad::graph::Stage;
use steadygrad::model::lower as mlp;
use steadygrad::ops::Op;
use steadygrad::ops::*;
use steadygrad::tensor::Hyper;
use steadygrad::MlpSpec;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (depth, width, batch, steps) = (arg(0, 8), arg(1, 64), arg(2, 32), arg(3, 300));
    let ctx = GpuContext::shared()?;
    println!("device: {}", ctx.describe());
    let spec = MlpSpec::new(2, &vec![width; depth], 3).seed(1);
    let persistent = spec.persistent();
    let with = mlp::build(&spec, &persistent, batch)?;
    let mut without = with.clone();
    without
        .train
        .retain(|op| !matches!(op, Op::GuardFinite(GuardFinite { .. })));
    let guards = with.train.len() - without.train.len();
    let mut engine = GpuEngine::new(ctx.clone());
    engine.init_persistent(&persistent)?;
    engine.set_hyper(Hyper { lr: 0.01 })?;
    let ids = [engine.compile(&without)?, engine.compile(&with)?];
    let x: Vec<f32> = (0..batch * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    let y: Vec<f32> = (0..batch).map(|i| (i % 3) as f32).collect();
    for (&id, plan) in ids.iter().zip([&without, &with]) {
        engine.write(id, plan.input.unwrap(), &x)?;
        engine.write(id, plan.target.unwrap(), &y)?;
    }
    let mut time = |id: usize, n: usize| -> anyhow::Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            engine.run(id, Stage::Train)?;
        }
        ctx.wait()?;
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    // Warm up both, then alternate short rounds so drift on a shared machine hits both
    // alike, and keep each variant's fastest round: other load only ever adds time.
    time(ids[0], 20)?;
    time(ids[1], 20)?;
    let rounds = 15;
    let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        a = a.min(time(ids[0], (steps / rounds).max(1))?);
        b = b.min(time(ids[1], (steps / rounds).max(1))?);
    }
    println!(
        "{depth} hidden × {width}, batch {batch}: {} ops per step without the guard, +{guards} guard ops",
        without.train.len()
    );
    println!(
        "fastest of {rounds} rounds: step without guard {:.3} ms, with guard {:.3} ms: {:+.3} ms ({:+.1}%)",
        a * 1e3,
        b * 1e3,
        (b - a) * 1e3,
        100.0 * (b - a) / a
    );
    Ok(())
}
