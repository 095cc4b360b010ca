//! Compile time of very deep nets: a training plan for `2 → depth × 2 → 3` at batch 32,
//! for depths 250 to 5,000, each in a child process of its own so every compile is the
//! process's first. Linear in depth means a flat "µs/layer" column.
//!
//! ```text
//! cargo bench --bench compile_depth [-- --json] [--depths 1000,5000]
//! ```
//! On lavapipe each bind group takes a memory mapping, so a depth whose plan needs more
//! than the kernel's `vm.max_map_count` allows is refused (the row says so, with the
//! figure) rather than timed; `sysctl -w vm.max_map_count=262144` lifts that.

mod common;

use common::{json_line, Args, V};
use std::process::Command;
use std::time::Instant;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine};
use steadygrad::model::lower as mlp;
use steadygrad::tensor::Hyper;
use steadygrad::MlpSpec;

const CHILD_ENV: &str = "STEADYGRAD_COMPILE_DEPTH_CHILD";

/// Prints `build_ms compile_ms bind_groups`, or `refused MESSAGE`.
fn child(depth: usize) {
    let ctx = GpuContext::shared().expect("no GPU adapter");
    let spec = MlpSpec::new(2, &vec![2; depth], 3).seed(1);
    let mut engine = GpuEngine::new(ctx);
    let persistent = spec.persistent();
    engine.init_persistent(&persistent).unwrap();
    engine.set_hyper(Hyper::lr(0.01)).unwrap();
    let t = Instant::now();
    let plan = mlp::build(&spec, &persistent, 32).unwrap();
    let build = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    match engine.compile(&plan) {
        Ok(_) => println!(
            "{build} {} {}",
            t.elapsed().as_secs_f64() * 1e3,
            engine.counters().bind_groups
        ),
        Err(e) => println!("refused {e}"),
    }
}

fn main() {
    if let Ok(depth) = std::env::var(CHILD_ENV) {
        child(depth.parse().expect("child depth"));
        return;
    }
    let args = Args::parse();
    let depths: Vec<usize> = args
        .value("depths", "STEADYGRAD_BENCH_DEPTHS")
        .unwrap_or_else(|| "250,500,1000,2000,5000".into())
        .split(',')
        .map(|d| {
            d.trim()
                .parse()
                .expect("--depths: numbers separated by commas")
        })
        .collect();
    let exe = std::env::current_exe().expect("own path");
    if !args.json {
        println!("depth  build ms  compile ms  µs/layer  bind groups");
    }
    for depth in depths {
        let out = Command::new(&exe)
            .env(CHILD_ENV, depth.to_string())
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Some(why) = text.strip_prefix("refused ") {
            if args.json {
                println!(
                    "{}",
                    json_line(&[("depth", V::from(depth)), ("refused", V::from(why))])
                );
            } else {
                println!("{depth:>5}  refused: {why}");
            }
            continue;
        }
        let f: Vec<f64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [build, compile, groups] = f[..] else {
            panic!(
                "depth {depth}: the child failed: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let per_layer = compile * 1e3 / depth as f64;
        if args.json {
            println!(
                "{}",
                json_line(&[
                    ("depth", V::from(depth)),
                    ("build_ms", V::from(build)),
                    ("compile_ms", V::from(compile)),
                    ("us_per_layer", V::from(per_layer)),
                    ("bind_groups", V::from(groups as usize)),
                ])
            );
        } else {
            println!("{depth:>5}  {build:>8.1}  {compile:>10.1}  {per_layer:>8.1}  {groups:>11}");
        }
    }
}
