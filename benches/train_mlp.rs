//! Training throughput (samples/s) of deep MLPs on the GPU backend, with the CPU
//! reference for scale.
//!
//! * W1: 784 → 8×512 (ReLU) → 10, softmax cross-entropy, SGD, batch 256.
//! * W2: 784 → 4×2048 (ReLU) → 10, otherwise the same.
//! * W1-BN: W1 with the usual cures switched on: batch norm before each activation, Adam
//!   (lr 1e-3), clipping by global norm 1.0 and dropout 0.1.
//!
//! The batch is written once; each step is one `Stage::Train` submission, and the metrics
//! readback at the end waits for all of them.
//!
//! ```text
//! cargo bench --bench train_mlp                       # W1, W2, W1-BN; CPU W1 for scale
//! cargo bench --bench train_mlp -- --json --steps 40 --workloads w1
//! ```
//! `--workloads` (env `STEADYGRAD_BENCH_WORKLOADS`): w1,w2,w1-bn. `--steps`: timed steps per
//! window (default 20, at least 20 is recommended); `--tries`: windows, the fastest is
//! reported (default 2; other load on a shared machine only slows a window down). `--warmup`: untimed steps first (default 3).
//! `--profile`: after timing, each op of one step timed alone, slowest first.
//! `--cpu-steps`: CPU reference steps for W1 (default 1; 0 skips; W2 on the CPU only when
//! `--cpu-w2` is given, it takes minutes). `--variant`: matmul kernel variant.

mod common;

use common::{json_line, noise, Args, V};
use std::time::Instant;
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::{Engine, PlanId};
use steadygrad::gpu::{GpuContext, GpuEngine, MatmulVariant};
use steadygrad::graph::Stage;
use steadygrad::model::lower as mlp;
use steadygrad::tensor::Hyper;
use steadygrad::MlpSpec;

const BATCH: usize = 256;

/// The workloads `steadygrad bench` also runs, defined once in the library.
fn spec(name: &str) -> MlpSpec {
    steadygrad::bench::standard_spec(name, false).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `warmup` steps, then `tries` windows of `steps` training steps. Returns the best
/// window's seconds, its CPU seconds (where known) and the mean loss of the last window
/// (a sanity check that the steps really ran).
fn time_steps(
    engine: &mut dyn Engine,
    spec: &MlpSpec,
    warmup: usize,
    steps: usize,
    tries: usize,
) -> (f64, Option<f64>, f32, PlanId) {
    let persistent = spec.persistent();
    engine.init_persistent(&persistent).expect("init");
    engine.set_hyper(Hyper::lr(spec.optimizer.lr())).unwrap();
    let plan = mlp::build(spec, &persistent, BATCH).expect("plan");
    let id = engine.compile(&plan).expect("compile");
    let x: Vec<f32> = noise(BATCH * spec.input, 7)
        .iter()
        .map(|v| v * 0.5 + 0.5)
        .collect();
    let y: Vec<f32> = (0..BATCH).map(|i| (i % spec.output) as f32).collect();
    engine.write(id, plan.input.unwrap(), &x).unwrap();
    engine.write(id, plan.target.unwrap(), &y).unwrap();
    let metrics = plan.metrics.unwrap();
    for _ in 0..warmup {
        engine.run(id, Stage::Train).unwrap();
    }
    engine.read(id, metrics).unwrap();
    let (mut best, mut best_cpu, mut loss) = (f64::INFINITY, None, 0.0);
    for _ in 0..tries {
        engine.write(id, metrics, &[0.0; 3]).unwrap();
        let cpu0 = common::process_cpu_secs();
        let t0 = Instant::now();
        for _ in 0..steps {
            engine.run(id, Stage::Train).unwrap();
        }
        let m = engine.read(id, metrics).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let cpu = common::process_cpu_secs().zip(cpu0).map(|(b, a)| b - a);
        assert_eq!(
            m[2] as usize,
            steps * BATCH,
            "every step should have counted its rows"
        );
        if secs < best {
            (best, best_cpu) = (secs, cpu);
        }
        loss = m[0] / m[2];
    }
    (best, best_cpu, loss, id)
}

/// Prints each step of one training step timed alone, slowest first, then the totals per
/// kind of step.
fn print_profile(gpu: &mut GpuEngine, id: PlanId) {
    let mut times = gpu.profile(id, Stage::Train, 3).expect("profile");
    let total: f64 = times.iter().map(|(_, t)| t.as_secs_f64()).sum();
    let mut kinds: Vec<(String, f64, usize)> = Vec::new();
    for (label, t) in &times {
        let kind = label.split(" → ").next().unwrap_or_default();
        let kind = kind.split('[').next().unwrap_or_default().to_string();
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => {
                entry.1 += t.as_secs_f64();
                entry.2 += 1;
            }
            None => kinds.push((kind, t.as_secs_f64(), 1)),
        }
    }
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    println!(
        "  profile: {} steps, {:.1} ms in all when submitted one by one",
        times.len(),
        total * 1e3
    );
    for (label, t) in times.iter().take(25) {
        println!("  {:>8.2} ms  {label}", t.as_secs_f64() * 1e3);
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("  by kind:");
    for (kind, t, n) in kinds {
        println!("  {:>8.2} ms  {n:>3}× {kind}", t * 1e3);
    }
}

fn main() {
    let args = Args::parse();
    let workloads = args
        .value("workloads", "STEADYGRAD_BENCH_WORKLOADS")
        .unwrap_or_else(|| "w1,w2,w1-bn".into());
    let steps = args.number("steps", "STEADYGRAD_BENCH_STEPS", 20).max(1);
    let warmup = args.number("warmup", "STEADYGRAD_BENCH_WARMUP", 3);
    let cpu_steps = args.number("cpu-steps", "STEADYGRAD_BENCH_CPU_STEPS", 1);
    let cpu_w2 = args.flag("cpu-w2");
    let profile = args.flag("profile");
    let tries = args.number("tries", "STEADYGRAD_BENCH_TRIES", 2).max(1);
    let variant: MatmulVariant = args
        .value("variant", "STEADYGRAD_MATMUL_VARIANT")
        .unwrap_or_else(|| "auto".into())
        .parse()
        .expect("--variant");
    let commit = common::git_commit();
    let ctx = GpuContext::shared().expect("no GPU adapter (set STEADYGRAD_BACKEND?)");
    if !args.json {
        println!("device: {}", ctx.describe());
        println!(
            "batch {BATCH}, {warmup} warm-up steps, best of {tries} windows of {steps} timed steps"
        );
    }
    for name in workloads
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let spec = spec(name);
        let mut gpu = GpuEngine::new(ctx.clone());
        gpu.set_matmul_variant(variant);
        let (secs, cpu_secs, loss, id) = time_steps(&mut gpu, &spec, warmup, steps, tries);
        let gpu_rate = (steps * BATCH) as f64 / secs;
        let run_cpu = cpu_steps > 0 && (name == "w1" || cpu_w2);
        let cpu_rate = run_cpu.then(|| {
            let (secs, _, _, _) = time_steps(&mut CpuEngine::new(), &spec, 0, cpu_steps, 1);
            (cpu_steps * BATCH) as f64 / secs
        });
        if args.json {
            let mut fields = vec![
                ("bench", V::from("train_mlp")),
                ("commit", V::from(commit.as_str())),
                ("workload", V::from(name)),
                ("batch", V::from(BATCH)),
                ("steps", V::from(steps)),
                ("variant", V::from(variant.to_string())),
                ("samples_per_sec", V::from(gpu_rate)),
                ("ms_per_step", V::from(secs * 1e3 / steps as f64)),
                ("tries", V::from(tries)),
                ("loss", V::from(loss as f64)),
                ("device", V::from(ctx.describe())),
            ];
            if let Some(c) = cpu_secs {
                fields.push(("cpu_s_per_step", V::from(c / steps as f64)));
            }
            if let Some(c) = cpu_rate {
                fields.push(("cpu_samples_per_sec", V::from(c)));
                fields.push(("gpu_over_cpu", V::from(gpu_rate / c)));
            }
            println!("{}", json_line(&fields));
        } else {
            print!(
                "{name}: {gpu_rate:>8.1} samples/s ({:.1} ms/step, {} CPU-ms/step, mean loss \
                 {loss:.4})",
                secs * 1e3 / steps as f64,
                cpu_secs.map_or("?".into(), |c| format!("{:.0}", c * 1e3 / steps as f64))
            );
            match cpu_rate {
                Some(c) => println!(
                    "; CPU reference {c:.1} samples/s over {cpu_steps} step(s), GPU/CPU {:.1}x",
                    gpu_rate / c
                ),
                None => println!("; CPU reference skipped"),
            }
        }
        if profile {
            print_profile(&mut gpu, id);
        }
    }
}
