//! Matmul throughput (GFLOP/s) of the GPU backend for the three forms the MLP uses, with
//! the CPU reference for scale.
//!
//! ```text
//! cargo bench --bench matmul                       # default sizes
//! cargo bench --bench matmul -- --json             # one JSON object per line
//! cargo bench --bench matmul -- --sizes 1024,mlp --forms nt --variant auto
//! ```
//! `--sizes` (env `STEADYGRAD_BENCH_SIZES`): comma-separated `N` (N×N×N), `MxKxN`, or `mlp`
//! (the shapes of the W1/W2 training benches). `--forms`: nt, nn, tn. `--variant`: a
//! matmul kernel variant name (see `steadygrad::gpu::MatmulVariant`), default `auto`.
//! `--secs`: time per measurement window (default 0.5); `--tries`: windows, the best is
//! reported (default 3). `--tile`: pin the tiled kernel's block configuration (env
//! `STEADYGRAD_MATMUL_TILE`; `STEADYGRAD_MATMUL_TUNE=on|off` forces or disables tuning;
//! the tile column shows what each shape ran with and why). `--cpu-rows`: the CPU reference computes
//! only this many rows of C (default 32; 0 skips it) because it is a plain triple loop.

mod common;

use common::{json_line, noise, Args, V};
use std::time::Instant;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine, MatmulVariant, ShapeClass, TuneOptions};
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::Op;
use steadygrad::ops::*;
use steadygrad::tensor::Storage;

#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// `C = A·Bᵀ`: forward `Y = X·Wᵀ`.
    Nt,
    /// `C = A·B`: backward `dX = dY·W`.
    Nn,
    /// `C = Aᵀ·B`: backward `dW = dYᵀ·X`.
    Tn,
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::Nt => "nt",
            Form::Nn => "nn",
            Form::Tn => "tn",
        }
    }
    fn trans(self) -> (bool, bool) {
        match self {
            Form::Nt => (false, true),
            Form::Nn => (false, false),
            Form::Tn => (true, false),
        }
    }
}

/// A problem: `m×k×n` for every form, or an MLP layer (batch, fan_in, fan_out) that each
/// form maps the way training uses it.
#[derive(Clone, Copy)]
enum Shape {
    Mkn(usize, usize, usize),
    Layer(usize, usize, usize),
}

impl Shape {
    fn mkn(self, form: Form) -> (usize, usize, usize) {
        match (self, form) {
            (Shape::Mkn(m, k, n), _) => (m, k, n),
            (Shape::Layer(b, i, o), Form::Nt) => (b, i, o),
            (Shape::Layer(b, i, o), Form::Nn) => (b, o, i),
            (Shape::Layer(b, i, o), Form::Tn) => (o, b, i),
        }
    }
    fn label(self) -> String {
        match self {
            Shape::Mkn(m, k, n) if m == k && k == n => format!("{m}^3"),
            Shape::Mkn(m, k, n) => format!("{m}x{k}x{n}"),
            Shape::Layer(b, i, o) => format!("layer b{b} {i}->{o}"),
        }
    }
}

fn parse_shapes(spec: &str) -> Vec<Shape> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if part == "mlp" {
            out.extend([
                Shape::Layer(256, 512, 512),
                Shape::Layer(256, 784, 512),
                Shape::Layer(256, 2048, 2048),
            ]);
            continue;
        }
        let dims: Vec<usize> = part
            .split('x')
            .map(|d| d.parse().unwrap_or_else(|_| panic!("bad size '{part}'")))
            .collect();
        out.push(match dims[..] {
            [s] => Shape::Mkn(s, s, s),
            [m, k, n] => Shape::Mkn(m, k, n),
            _ => panic!("bad size '{part}': expected N or MxKxN or mlp"),
        });
    }
    out
}

fn single_matmul_plan(m: usize, k: usize, n: usize, form: Form) -> (Plan, [usize; 4]) {
    let (trans_a, trans_b) = form.trans();
    let mut p = Plan::default();
    let a = p.add_tensor("a", &[m * k], Storage::Local);
    let b = p.add_tensor("b", &[k * n], Storage::Local);
    let c = p.add_tensor("c", &[m * n], Storage::Local);
    // Untouched by the op: reading it back waits for the queue without copying all of C.
    let sync = p.add_tensor("sync", &[1], Storage::Local);
    p.forward.push(Op::MatMul(MatMul {
        a,
        b,
        c,
        m,
        k,
        n,
        trans_a,
        trans_b,
        accumulate: false,
    }));
    (p, [a, b, c, sync])
}

fn main() {
    let args = Args::parse();
    let shapes = parse_shapes(
        &args
            .value("sizes", "STEADYGRAD_BENCH_SIZES")
            .unwrap_or_else(|| "256,1024,2048,mlp".into()),
    );
    let forms: Vec<Form> = args
        .value("forms", "STEADYGRAD_BENCH_FORMS")
        .unwrap_or_else(|| "nt,nn,tn".into())
        .split(',')
        .map(|f| match f.trim() {
            "nt" => Form::Nt,
            "nn" => Form::Nn,
            "tn" => Form::Tn,
            other => panic!("unknown form '{other}': expected nt, nn or tn"),
        })
        .collect();
    let variant: MatmulVariant = args
        .value("variant", "STEADYGRAD_MATMUL_VARIANT")
        .unwrap_or_else(|| "auto".into())
        .parse()
        .expect("--variant");
    let secs: f64 = args
        .value("secs", "STEADYGRAD_BENCH_SECS")
        .map_or(0.5, |s| s.parse().expect("--secs: a number"));
    let cpu_rows = args.number("cpu-rows", "STEADYGRAD_BENCH_CPU_ROWS", 32);
    let tries = args.number("tries", "STEADYGRAD_BENCH_TRIES", 3).max(1);
    let commit = common::git_commit();

    let ctx = GpuContext::shared().expect("no GPU adapter (set STEADYGRAD_BACKEND?)");
    let mut engine = GpuEngine::new(ctx.clone());
    engine.set_matmul_variant(variant);
    let mut tune = TuneOptions::from_env().expect("STEADYGRAD_MATMUL_*");
    if let Some(tile) = args.value("tile", "STEADYGRAD_MATMUL_TILE") {
        tune.pin = Some(tile.parse().expect("--tile"));
    }
    engine.set_tune_options(tune);
    engine.init_persistent(&[]).expect("init");
    let device = engine.describe();
    if !args.json {
        println!("device: {device}");
        println!(
            "matmul variant: {variant} (resolves to {})",
            engine.resolve_matmul_variant(variant)
        );
        println!(
            "{:<22} {:>4} {:>16} {:>10} {:>6} {:>9} {:>12}  tile",
            "shape", "form", "m x k x n", "GFLOP/s", "reps", "/cpu-s", "CPU GFLOP/s"
        );
    }
    for &shape in &shapes {
        for &form in &forms {
            let (m, k, n) = shape.mkn(form);
            let flops = 2.0 * (m * k * n) as f64;
            let (plan, [a, b, _c, sync]) = single_matmul_plan(m, k, n, form);
            let id = engine.compile(&plan).expect("compile");
            let (ta, tb) = form.trans();
            let class = ShapeClass::of(m, k, n, ta, tb);
            let tile = engine
                .matmul_tiles()
                .0
                .into_iter()
                .find(|c| c.class == class)
                .map_or("-".to_string(), |c| format!("{} ({})", c.tile, c.source));
            engine.write(id, a, &noise(m * k, 1)).unwrap();
            engine.write(id, b, &noise(k * n, 2)).unwrap();
            // Warm-up: the first run pays for lazy allocation inside the driver.
            let t0 = Instant::now();
            engine.run(id, Stage::Predict).unwrap();
            engine.read(id, sync).unwrap();
            let once = t0.elapsed().as_secs_f64();
            let reps = ((secs / once).ceil() as usize).clamp(2, 200);
            // Best of `tries` windows: other load on a shared machine only ever slows a
            // window down, so the best one is the closest to the kernel's own speed.
            let (mut wall, mut cpu_secs) = (f64::INFINITY, None::<f64>);
            for _ in 0..tries {
                let cpu0 = common::process_cpu_secs();
                let t0 = Instant::now();
                for _ in 0..reps {
                    engine.run(id, Stage::Predict).unwrap();
                }
                engine.read(id, sync).unwrap();
                wall = wall.min(t0.elapsed().as_secs_f64());
                let used = common::process_cpu_secs().zip(cpu0).map(|(b, a)| b - a);
                cpu_secs = match (cpu_secs, used) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let gpu_gflops = flops * reps as f64 / wall / 1e9;
            let per_cpu_s = cpu_secs.map(|s| flops * reps as f64 / s / 1e9);

            // The CPU reference on the first `cpu_rows` rows of C only (rate, not total).
            let cpu_m = m.min(cpu_rows);
            let cpu_gflops = (cpu_m > 0).then(|| {
                let (ta, tb) = form.trans();
                let (av, bv) = (noise(cpu_m * k, 3), noise(k * n, 4));
                let mut cv = vec![0.0f32; cpu_m * n];
                let t0 = Instant::now();
                steadygrad::ops::matmul::cpu::matmul(&av, &bv, &mut cv, cpu_m, k, n, ta, tb, false);
                std::hint::black_box(&cv);
                2.0 * (cpu_m * k * n) as f64 / t0.elapsed().as_secs_f64() / 1e9
            });
            if args.json {
                let mut fields = vec![
                    ("bench", V::from("matmul")),
                    ("commit", V::from(commit.as_str())),
                    ("shape", V::from(shape.label())),
                    ("form", V::from(form.name())),
                    ("m", V::from(m)),
                    ("k", V::from(k)),
                    ("n", V::from(n)),
                    ("variant", V::from(variant.to_string())),
                    ("tile", V::from(tile.as_str())),
                    ("gflops", V::from(gpu_gflops)),
                    ("reps", V::from(reps)),
                    ("wall_s", V::from(wall)),
                    ("tries", V::from(tries)),
                    ("device", V::from(device.as_str())),
                ];
                if let Some(g) = per_cpu_s {
                    fields.push(("gflop_per_cpu_s", V::from(g)));
                }
                if let Some(g) = cpu_gflops {
                    fields.push(("cpu_gflops", V::from(g)));
                    fields.push(("cpu_rows_sampled", V::from(cpu_m)));
                }
                println!("{}", json_line(&fields));
            } else {
                let cpu = match cpu_gflops {
                    Some(g) if cpu_m < m => format!("{g:.2} ({cpu_m} rows)"),
                    Some(g) => format!("{g:.2}"),
                    None => "skipped".into(),
                };
                println!(
                    "{:<22} {:>4} {:>16} {:>10.2} {:>6} {:>9} {:>12}  {tile}",
                    shape.label(),
                    form.name(),
                    format!("{m}x{k}x{n}"),
                    gpu_gflops,
                    reps,
                    per_cpu_s.map_or("-".into(), |g| format!("{g:.2}")),
                    cpu
                );
            }
        }
    }
    if !args.json {
        println!(
            "/cpu-s: GFLOP per CPU-second of this process; on a software adapter (lavapipe) \
             that is the kernel's speed per core, less sensitive to other load than GFLOP/s."
        );
    }
    if !args.json && cpu_rows > 0 {
        println!(
            "CPU column: src/cpu/ops.rs matmul (plain f64 loops) timed on at most {cpu_rows} \
             rows of C, so big shapes are sampled, not run in full."
        );
    }
}
