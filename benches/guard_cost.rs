//! Per-step cost of the always-on non-finite guard on the GPU: the same training plan
//! timed without its `GuardFinite` ops, with them, and with them plus the asynchronous
//! readback of the flags after every step that `Model::fit` and `Model::train_batch` do
//! (at most `GUARD_LAG` readbacks outstanding).
//!
//! ```text
//! cargo bench --bench guard_cost                      # W1: 784 → 8×512 → 10, batch 256
//! cargo bench --bench guard_cost -- 8 64 32 300       # DEPTH WIDTH BATCH STEPS
//! ```
//! Rounds of the three variants alternate so drift on a shared machine hits all alike;
//! the fastest round of each is reported, and CPU-seconds per step (on a software
//! adapter the device work runs on this process's threads, so they are far less
//! sensitive to other load than wall time).

mod common;

use std::collections::VecDeque;
use std::time::Instant;
use steadygrad::engine::{Engine, PendingRead};
use steadygrad::gpu::{GpuContext, GpuEngine};
use steadygrad::graph::Stage;
use steadygrad::model::health::layout::GUARD_LAG;
use steadygrad::model::lower as mlp;
use steadygrad::ops::Op;
use steadygrad::ops::*;
use steadygrad::tensor::Hyper;
use steadygrad::MlpSpec;

fn main() -> anyhow::Result<()> {
    let arg = common::numeric_args();
    let (depth, width, batch, steps) = (arg(0, 8), arg(1, 512), arg(2, 256), arg(3, 60));
    let (input, output) = if width == 512 && depth == 8 {
        (784, 10)
    } else {
        (2, 3)
    };
    let ctx = GpuContext::shared()?;
    println!("device: {}", ctx.describe());
    let spec = MlpSpec::new(input, &vec![width; depth], output).seed(1);
    let persistent = spec.persistent();
    let with = mlp::build(&spec, &persistent, batch)?;
    let mut without = with.clone();
    without
        .train
        .retain(|op| !matches!(op, Op::GuardFinite(GuardFinite { .. })));
    let guards = with.train.len() - without.train.len();
    let flags = with.guard.expect("the plan has a guard");
    let mut engine = GpuEngine::new(ctx.clone());
    engine.init_persistent(&persistent)?;
    engine.set_hyper(Hyper::lr(0.01))?;
    let ids = [engine.compile(&without)?, engine.compile(&with)?];
    let x: Vec<f32> = (0..batch * input)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let y: Vec<f32> = (0..batch).map(|i| (i % output) as f32).collect();
    for (&id, plan) in ids.iter().zip([&without, &with]) {
        engine.write(id, plan.input.unwrap(), &x)?;
        engine.write(id, plan.target.unwrap(), &y)?;
    }
    // Variant 0: no guard; 1: guard ops; 2: guard ops and the per-step flag readback.
    let mut time = |variant: usize, n: usize| -> anyhow::Result<(f64, f64)> {
        let id = ids[variant.min(1)];
        let cpu0 = common::process_cpu_secs().unwrap_or(0.0);
        let t = Instant::now();
        let mut reads: VecDeque<Box<dyn PendingRead>> = VecDeque::new();
        for _ in 0..n {
            engine.run(id, Stage::Train)?;
            if variant == 2 {
                reads.push_back(engine.read_async(id, &[flags])?);
                loop {
                    let wait = reads.len() > GUARD_LAG;
                    let Some(front) = reads.front_mut() else {
                        break;
                    };
                    if front.poll(wait)?.is_none() {
                        break;
                    }
                    reads.pop_front();
                }
            }
        }
        for mut r in reads {
            r.poll(true)?;
        }
        ctx.wait()?;
        let cpu = common::process_cpu_secs().unwrap_or(0.0) - cpu0;
        Ok((t.elapsed().as_secs_f64() / n as f64, cpu / n as f64))
    };
    for v in 0..3 {
        time(v, 5)?;
    }
    let rounds = 10;
    let mut best = [f64::INFINITY; 3];
    let mut cpu = [0.0; 3];
    for _ in 0..rounds {
        for v in 0..3 {
            let (wall, c) = time(v, (steps / rounds).max(1))?;
            best[v] = best[v].min(wall);
            cpu[v] += c / rounds as f64;
        }
    }
    println!(
        "{input} → {depth} hidden × {width} → {output}, batch {batch}: {} ops per step without \
         the guard, +{guards} guard ops",
        without.train.len()
    );
    let names = ["no guard", "guard ops", "guard ops + flag readback"];
    for v in 0..3 {
        println!(
            "{:<26} fastest round {:8.3} ms/step ({:+5.1}%), {:8.3} CPU-ms/step ({:+5.1}%)",
            names[v],
            best[v] * 1e3,
            100.0 * (best[v] - best[0]) / best[0],
            cpu[v] * 1e3,
            100.0 * (cpu[v] - cpu[0]) / cpu[0],
        );
    }
    Ok(())
}
