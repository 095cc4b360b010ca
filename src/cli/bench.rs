//! `steadygrad bench`: training throughput of the standard workloads (or the model the
//! model flags describe) and matmul GFLOP/s on the user's own adapter, from the installed
//! binary, as a table or as JSON lines.

use super::args::{spec_from, ModelArgs};
use super::schedule::Span;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use steadygrad::bench::{self, MatmulForm, StepCounts, STANDARD_BATCH, STANDARD_WORKLOADS};
use steadygrad::engine::PlanId;
use steadygrad::gpu::{
    AdapterSelection, GpuContext, GpuEngine, MatmulTile, MatmulVariant, ShapeClass, TuneMode,
    TuneOptions,
};
use steadygrad::graph::Stage;
use steadygrad::{BackendChoice, Engine, Loss, MlpSpec};

/// The workload name that stands for the model the model flags describe.
const MODEL_WORKLOAD: &str = "model";

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Workloads, comma-separated: w1 (784 → 8×512 → 10, SGD), w2 (784 → 4×2048 → 10),
    /// w1-bn (W1 with batch norm, Adam 1e-3, clip-norm 1.0, dropout 0.1), model (the
    /// model the model flags describe), or none [default: w1,w2,w1-bn; model when a model
    /// flag is given].
    #[arg(long)]
    pub workloads: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Inputs of the `model` workload.
    #[arg(long, default_value_t = 784)]
    pub input: usize,
    /// Classes (outputs) of the `model` workload.
    #[arg(long, default_value_t = 10)]
    pub output: usize,
    /// Batch size of every workload [default: 256; 32 with --quick].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps per window [default: 20; 3 with --quick].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Untimed steps after the first [default: 3; 1 with --quick].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Timed windows; the fastest is reported, since other load only slows a window down
    /// [default: 2; 1 with --quick].
    #[arg(long)]
    pub tries: Option<usize>,
    /// After timing, each dispatch of one training step timed alone, slowest first.
    #[arg(long)]
    pub profile: bool,
    /// Square (N) or MxKxN matmul sizes, comma-separated, or none [default:
    /// 1024,2048,4096; 64,128 with --quick].
    #[arg(long)]
    pub matmul_sizes: Option<String>,
    /// The adapter's fp32 peak in GFLOP/s, for the matmul share of peak [default: from
    /// the table of known GPUs, by adapter name].
    #[arg(long, value_name = "GFLOPS")]
    pub peak: Option<f64>,
    /// Matmul kernel: auto, reg4x4, tiled, texture or texture-nosubgroup.
    #[arg(long, default_value = "auto")]
    pub variant: MatmulVariant,
    /// Pin the tiled matmul's block configuration (e.g. 128x128-8x8; see the README)
    /// instead of tuning it per shape [env: STEADYGRAD_MATMUL_TILE].
    #[arg(long, value_name = "NAME")]
    pub matmul_tile: Option<MatmulTile>,
    /// Time the tiled matmul's configurations when compiling: auto (not on CPU-backed
    /// adapters), on or off [env: STEADYGRAD_MATMUL_TUNE].
    #[arg(long, value_name = "MODE")]
    pub matmul_tune: Option<TuneMode>,
    /// One JSON object per line instead of the table: the adapter, then one per
    /// workload, profiled step and matmul measurement.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON lines to this file (the table still goes to stdout).
    #[arg(long, value_name = "PATH")]
    pub json_file: Option<PathBuf>,
    /// Tiny sizes and few steps (hidden widths / 8, batch 32, matmuls 64 and 128), so a
    /// smoke run takes seconds even on a software adapter. Figures are not comparable
    /// with full runs.
    #[arg(long)]
    pub quick: bool,
}

/// The tiled matmul's options: the flags of `args` over the environment.
fn tune_options(args: &BenchArgs) -> Result<TuneOptions> {
    let mut options = TuneOptions::from_env()?;
    if let Some(tile) = args.matmul_tile {
        options.pin = Some(tile);
    }
    if let Some(mode) = args.matmul_tune {
        options.mode = mode;
    }
    Ok(options)
}

/// An engine with the kernel and tile options of `args`.
fn engine_for(ctx: &Arc<GpuContext>, args: &BenchArgs) -> Result<GpuEngine> {
    let mut engine = GpuEngine::new(ctx.clone());
    engine.set_matmul_variant(args.variant);
    engine.set_tune_options(tune_options(args)?);
    Ok(engine)
}

/// Whether `m`, the bench subcommand's matches, has a model flag typed on the command
/// line (which makes the `model` workload the default).
pub fn model_flags_typed(m: &clap::ArgMatches) -> bool {
    let model = <ModelArgs as clap::Args>::augment_args(clap::Command::new("model"));
    let typed = model
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .chain(["input".to_string(), "output".to_string()])
        .any(|id| m.value_source(&id) == Some(clap::parser::ValueSource::CommandLine));
    typed
}

struct Settings {
    workloads: Vec<String>,
    batch: usize,
    counts: StepCounts,
    matmul_sizes: Vec<[usize; 3]>,
    /// Seconds per matmul window and windows.
    matmul_secs: f64,
    matmul_tries: usize,
}

fn settings(args: &BenchArgs, model_typed: bool) -> Result<Settings> {
    let q = args.quick;
    let default_workloads = if model_typed {
        MODEL_WORKLOAD.to_string()
    } else {
        STANDARD_WORKLOADS.join(",")
    };
    let list = args.workloads.clone().unwrap_or(default_workloads);
    let mut workloads = Vec::new();
    if list.trim() != "none" {
        for w in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let w = w.to_ascii_lowercase();
            anyhow::ensure!(
                STANDARD_WORKLOADS.contains(&w.as_str()) || w == MODEL_WORKLOAD,
                "unknown workload '{w}': expected {}, {MODEL_WORKLOAD} or none",
                STANDARD_WORKLOADS.join(", ")
            );
            workloads.push(w);
        }
        anyhow::ensure!(
            !workloads.is_empty(),
            "--workloads is empty: name at least one of {}, {MODEL_WORKLOAD}, or none",
            STANDARD_WORKLOADS.join(", ")
        );
    }
    let at_least_1 = |v: Option<usize>, quick: usize, full: usize, flag: &str| {
        let v = v.unwrap_or(if q { quick } else { full });
        anyhow::ensure!(v >= 1, "{flag} must be at least 1, got {v}");
        Ok(v)
    };
    let batch = at_least_1(args.batch, 32, STANDARD_BATCH, "--batch")?;
    let steps = at_least_1(args.steps, 3, 20, "--steps")?;
    let tries = at_least_1(args.tries, 1, 2, "--tries")?;
    let warmup = args.warmup.unwrap_or(if q { 1 } else { 3 });
    anyhow::ensure!(
        args.input >= 1 && args.output >= 1,
        "--input and --output must be at least 1, got {} and {}",
        args.input,
        args.output
    );
    if let Some(p) = args.peak {
        anyhow::ensure!(
            p.is_finite() && p > 0.0,
            "--peak must be a positive number of GFLOP/s, got {p}"
        );
    }
    let sizes = args
        .matmul_sizes
        .clone()
        .unwrap_or_else(|| if q { "64,128" } else { "1024,2048,4096" }.to_string());
    let matmul_sizes = if sizes.trim() == "none" {
        Vec::new()
    } else {
        bench::parse_matmul_sizes(&sizes).context("--matmul-sizes")?
    };
    Ok(Settings {
        workloads,
        batch,
        counts: StepCounts {
            warmup,
            steps,
            tries,
        },
        matmul_sizes,
        matmul_secs: if q { 0.05 } else { 0.5 },
        matmul_tries: if q { 1 } else { 3 },
    })
}

fn workload_spec(name: &str, args: &BenchArgs) -> Result<MlpSpec> {
    if name == MODEL_WORKLOAD {
        let spec = spec_from(&args.model, args.input, args.output, Span::single())?
            .loss(Loss::SoftmaxCrossEntropy);
        crate::cli::checks::check_model_size(&spec)?;
        Ok(spec)
    } else {
        bench::standard_spec(name, args.quick)
    }
}

/// `784 → 8×512 ReLU → 10, SGD(lr=0.01)`, with batch norm, clipping and dropout named.
fn describe_model(spec: &MlpSpec) -> String {
    let hidden = match spec.hidden.as_slice() {
        [] => String::new(),
        [first, rest @ ..] if rest.iter().all(|w| w == first) => {
            format!("{}×{first} {} → ", spec.hidden.len(), spec.activation)
        }
        all => format!("{all:?} {} → ", spec.activation),
    };
    let mut s = format!(
        "{} → {hidden}{}, {}",
        spec.input, spec.output, spec.optimizer
    );
    if spec.has_batch_norm() {
        s.push_str(", batch norm");
    }
    if let Some(c) = &spec.clip {
        s.push_str(&format!(", clip {c:?}"));
    }
    if let Some(p) = spec.dropout.iter().find(|p| **p > 0.0) {
        s.push_str(&format!(", dropout {p}"));
    }
    if let Some(k) = spec.residual_every {
        s.push_str(&format!(", residual every {k}"));
    }
    s
}

/// Where the JSON lines go: stdout with `--json` (instead of the table), and the
/// `--json-file` as well, so one run gives both the table and the record.
struct Sink {
    stdout: bool,
    file: Option<(std::fs::File, PathBuf)>,
}

impl Sink {
    fn new(args: &BenchArgs) -> Result<Sink> {
        let file = match &args.json_file {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("--json-file: cannot write '{}'", path.display()))?;
                Some((f, path.clone()))
            }
            None => None,
        };
        Ok(Sink {
            stdout: args.json,
            file,
        })
    }

    fn emit(&mut self, v: Value) -> Result<()> {
        if self.stdout {
            println!("{v}");
        }
        if let Some((f, path)) = &mut self.file {
            writeln!(f, "{v}").with_context(|| format!("writing '{}'", path.display()))?;
        }
        Ok(())
    }
}

pub fn run(args: &BenchArgs, choice: &BackendChoice, model_typed: bool) -> Result<()> {
    let s = settings(args, model_typed)?;
    let mut sink = Sink::new(args)?;
    let sel = match choice {
        BackendChoice::Gpu(sel) => sel.clone(),
        BackendChoice::Auto => AdapterSelection::default(),
        BackendChoice::Cpu => anyhow::bail!(
            "bench measures a GPU adapter; pick one with --backend auto|vulkan|metal|dx12|gl"
        ),
    };
    let ctx = Arc::new(GpuContext::new(&sel)?);
    let info = ctx.info.clone();
    let peak = match args.peak {
        Some(g) => Some((g, "--peak".to_string())),
        None => bench::known_peak(&info.name).map(|p| (p.gflops, p.source.to_string())),
    };
    let variant = engine_for(&ctx, args)?.resolve_matmul_variant(args.variant);
    let driver = format!("{} {}", info.driver, info.driver_info)
        .trim()
        .to_string();
    let mut line = json!({
        "kind": "adapter",
        "name": info.name,
        "backend": info.backend.to_string(),
        "device_type": format!("{:?}", info.device_type),
        "driver": driver,
        "matmul_variant": variant.name(),
        "quick": args.quick,
        "steadygrad": env!("CARGO_PKG_VERSION"),
    });
    if let Some((g, source)) = &peak {
        line["peak_gflops"] = json!(g);
        line["peak_source"] = json!(source);
    }
    sink.emit(line)?;
    if !args.json {
        println!(
            "adapter: {} ({:?}), backend {}, driver {}",
            info.name,
            info.device_type,
            info.backend,
            if driver.is_empty() {
                "unknown"
            } else {
                &driver
            }
        );
        match &peak {
            Some((g, source)) => println!("fp32 peak: {g:.0} GFLOP/s ({source})"),
            None => println!(
                "fp32 peak unknown, pass --peak GFLOPS (no GPU in the table matches this name)"
            ),
        }
        println!(
            "matmul kernel: {variant}{}",
            if args.quick {
                "; --quick: tiny sizes, figures not comparable with full runs"
            } else {
                ""
            }
        );
        if variant == MatmulVariant::Tiled {
            let o = tune_options(args)?;
            let cache = o
                .cache
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string());
            match o.pin {
                Some(tile) => println!("matmul tile: {tile} (pinned)"),
                None => println!(
                    "matmul tiles: chosen per shape class (tuning {:?}, cache {cache}); see \
                     the tile column",
                    o.mode
                ),
            }
        }
    }

    if !s.workloads.is_empty() && !args.json {
        println!(
            "\ntraining, batch {}: best of {} window(s) of {} steps after {} warm-up step(s)",
            s.batch, s.counts.tries, s.counts.steps, s.counts.warmup
        );
        println!(
            "{:<8} {:>11} {:>9} {:>15} {:>12}  model",
            "workload", "samples/s", "ms/step", "dispatches/step", "first step"
        );
    }
    for name in &s.workloads {
        let spec = workload_spec(name, args)?;
        let mut engine = engine_for(&ctx, args)?;
        let (f, id) = bench::time_training(&mut engine, &spec, s.batch, s.counts)
            .with_context(|| format!("workload {name}"))?;
        let model = describe_model(&spec);
        sink.emit(json!({
            "kind": "train",
            "workload": name,
            "model": model,
            "batch": s.batch,
            "steps": s.counts.steps,
            "tries": s.counts.tries,
            "samples_per_sec": f.samples_per_sec,
            "ms_per_step": f.ms_per_step,
            "dispatches_per_step": f.dispatches_per_step,
            "first_step_ms": f.first_step_ms,
            "loss": f.loss,
        }))?;
        if !args.json {
            println!(
                "{name:<8} {:>11.1} {:>9.2} {:>15} {:>9.0} ms  {model}",
                f.samples_per_sec, f.ms_per_step, f.dispatches_per_step, f.first_step_ms
            );
        }
        if args.profile {
            print_profile(&mut engine, id, name, args.json, &mut sink)?;
        }
    }

    if s.matmul_sizes.is_empty() {
        return Ok(());
    }
    if !args.json {
        println!(
            "\nmatmul: best of {} window(s) of about {} s each",
            s.matmul_tries, s.matmul_secs
        );
        println!(
            "{:<4} {:<16} {:>16} {:>10} {:>8}  tile",
            "form", "role", "m×k×n", "GFLOP/s", "of peak"
        );
    }
    let mut engine = engine_for(&ctx, args)?;
    engine.init_persistent(&[])?;
    for &mkn in &s.matmul_sizes {
        for form in MatmulForm::ALL {
            let gflops = bench::time_matmul(&mut engine, form, mkn, s.matmul_secs, s.matmul_tries)
                .with_context(|| {
                    format!("matmul {} {}×{}×{}", form.name(), mkn[0], mkn[1], mkn[2])
                })?;
            let share = peak.as_ref().map(|(p, _)| gflops / p);
            let (ta, tb) = form.trans();
            let class = ShapeClass::of(mkn[0], mkn[1], mkn[2], ta, tb);
            // The texture kernel has no configurations: no choice is recorded for it.
            let choice = engine
                .matmul_tiles()
                .0
                .into_iter()
                .find(|c| c.class == class);
            let mut line = json!({
                "kind": "matmul",
                "form": form.name(),
                "m": mkn[0],
                "k": mkn[1],
                "n": mkn[2],
                "gflops": gflops,
            });
            if let Some(c) = &choice {
                line["tile"] = json!(c.tile.name);
                line["tile_source"] = json!(c.source.to_string());
                line["shape_class"] = json!(c.class.to_string());
            }
            if let Some(share) = share {
                line["share_of_peak"] = json!(share);
            }
            sink.emit(line)?;
            if !args.json {
                println!(
                    "{:<4} {:<16} {:>16} {:>10.1} {:>8}  {}",
                    form.name(),
                    form.role(),
                    format!("{}×{}×{}", mkn[0], mkn[1], mkn[2]),
                    gflops,
                    share.map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0)),
                    choice.map_or("-".to_string(), |c| format!("{} ({})", c.tile, c.source))
                );
            }
        }
    }
    if !args.json && peak.is_none() {
        println!("of peak: -, peak unknown, pass --peak GFLOPS");
    }
    Ok(())
}

/// Each dispatch or mirror copy of one training step timed alone (the engine's profile),
/// slowest first, then the totals per kind of op.
fn print_profile(
    engine: &mut GpuEngine,
    id: PlanId,
    workload: &str,
    json: bool,
    sink: &mut Sink,
) -> Result<()> {
    let mut times = engine.profile(id, Stage::Train, 3)?;
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
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (label, t) in &times {
        sink.emit(json!({
            "kind": "profile",
            "workload": workload,
            "op": label,
            "ms": t.as_secs_f64() * 1e3,
        }))?;
    }
    if json {
        return Ok(());
    }
    let total: f64 = times.iter().map(|(_, t)| t.as_secs_f64()).sum();
    println!(
        "  profile of {workload}: {} steps, {:.1} ms in all when submitted one by one",
        times.len(),
        total * 1e3
    );
    for (label, t) in times.iter().take(15) {
        println!("  {:>8.2} ms  {label}", t.as_secs_f64() * 1e3);
    }
    println!("  by kind:");
    for (kind, t, n) in kinds {
        println!("  {:>8.2} ms  {n:>3}× {kind}", t * 1e3);
    }
    Ok(())
}
