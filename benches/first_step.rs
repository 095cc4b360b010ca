//! Wall time from process start to the end of the first W1 training step (784 → 8×512 →
//! 10, batch 256): device creation, shader compilation and pipeline creation included.
//!
//! The measurement runs in child processes of this binary so that each one really is a
//! first step: one with Mesa's on-disk shader cache disabled (`MESA_SHADER_CACHE_DISABLE`,
//! a cold start) and one with the cache as the user has it.
//!
//! ```text
//! cargo bench --bench first_step [-- --json]
//! ```
//! `--runs N` repeats each child N times (default 1) and reports the best.

mod common;

use common::{json_line, noise, Args, V};
use std::process::Command;
use std::time::Instant;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine};
use steadygrad::graph::Stage;
use steadygrad::model::lower as mlp;
use steadygrad::tensor::Hyper;
use steadygrad::{Activation, MlpSpec, Optimizer};

const CHILD_ENV: &str = "STEADYGRAD_FIRST_STEP_CHILD";

/// Seconds since this process was created, from `/proc` (Linux), else `None`.
fn since_process_start() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 (starttime, clock ticks since boot), counted after the `(comm)` field.
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = after.split(' ').nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux ABI Rust supports.
    Some(uptime - start_ticks / 100.0)
}

/// The measured part: prints `device_s compile_s step_s total_s proc_s`.
fn child(t_main: Instant, proc_at_main: Option<f64>) {
    let spec = MlpSpec::new(784, &[512; 8], 10)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(0.01))
        .seed(1);
    let ctx = GpuContext::shared().expect("no GPU adapter");
    let t_device = t_main.elapsed().as_secs_f64();
    let mut engine = GpuEngine::new(ctx);
    let persistent = spec.persistent();
    engine.init_persistent(&persistent).unwrap();
    engine.set_hyper(Hyper::lr(0.01)).unwrap();
    let plan = mlp::build(&spec, &persistent, 256).unwrap();
    let id = engine.compile(&plan).unwrap();
    let t_compile = t_main.elapsed().as_secs_f64();
    let x: Vec<f32> = noise(256 * 784, 7).iter().map(|v| v * 0.5 + 0.5).collect();
    let y: Vec<f32> = (0..256).map(|i| (i % 10) as f32).collect();
    engine.write(id, plan.input.unwrap(), &x).unwrap();
    engine.write(id, plan.target.unwrap(), &y).unwrap();
    engine.run(id, Stage::Train).unwrap();
    let m = engine.read(id, plan.metrics.unwrap()).unwrap();
    assert_eq!(m[2], 256.0);
    let total = t_main.elapsed().as_secs_f64();
    // Time before main (loader, dynamic linking) is only visible through /proc.
    let before_main = proc_at_main.unwrap_or(0.0);
    println!(
        "{t_device} {} {} {total} {}",
        t_compile - t_device,
        total - t_compile,
        total + before_main
    );
}

fn main() {
    let t_main = Instant::now();
    let proc_at_main = since_process_start();
    if std::env::var_os(CHILD_ENV).is_some() {
        child(t_main, proc_at_main);
        return;
    }
    let args = Args::parse();
    let runs = args.number("runs", "STEADYGRAD_BENCH_RUNS", 1).max(1);
    let commit = common::git_commit();
    let exe = std::env::current_exe().expect("own path");
    if !args.json {
        println!("first W1 training step (784 -> 8x512 -> 10, batch 256), best of {runs}");
    }
    for (cache, disable) in [("cold", true), ("warm", false)] {
        let mut best: Option<(f64, Vec<f64>)> = None;
        for _ in 0..runs {
            let mut cmd = Command::new(&exe);
            cmd.env(CHILD_ENV, "1");
            if disable {
                cmd.env("MESA_SHADER_CACHE_DISABLE", "true");
            }
            let t0 = Instant::now();
            let out = cmd.output().expect("spawn child");
            let spawn_to_exit = t0.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|s| s.parse().expect("child output"))
                .collect();
            let mut v = v;
            v.push(spawn_to_exit);
            if best.as_ref().is_none_or(|(t, _)| v[4] < *t) {
                best = Some((v[4], v));
            }
        }
        let (_, v) = best.unwrap();
        if args.json {
            println!(
                "{}",
                json_line(&[
                    ("bench", V::from("first_step")),
                    ("commit", V::from(commit.as_str())),
                    ("shader_cache", V::from(cache)),
                    ("first_step_s", V::from(v[4])),
                    ("device_s", V::from(v[0])),
                    ("compile_s", V::from(v[1])),
                    ("step_s", V::from(v[2])),
                    ("since_main_s", V::from(v[3])),
                    ("spawn_to_exit_s", V::from(v[5])),
                ])
            );
        } else {
            println!(
                "{cache:>4} shader cache: {:.3} s from process start (device {:.3} s, plan \
                 compile {:.3} s, first step {:.3} s; spawn to exit {:.3} s)",
                v[4], v[0], v[1], v[2], v[5]
            );
        }
    }
}
