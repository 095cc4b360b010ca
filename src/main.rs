//! The `steadygrad` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Instant;
use steadygrad::check::{cross_check, Tolerance};
use steadygrad::gpu::{describe_adapter, list_adapters, AdapterSelection, GpuContext};
use steadygrad::{
    data, Activation, BackendChoice, FitOptions, Init, Loss, MlpSpec, Model, Optimizer,
};

#[derive(Parser)]
#[command(
    name = "steadygrad",
    version,
    about = "Train deep MLPs on any GPU through wgpu, checked against a CPU reference"
)]
struct Cli {
    /// Backend: auto (best GPU, else CPU), cpu, vulkan, metal, dx12 or gl.
    #[arg(
        long,
        global = true,
        env = "STEADYGRAD_BACKEND",
        default_value = "auto"
    )]
    backend: String,
    /// GPU adapter: index from `steadygrad devices`, or part of its name.
    #[arg(long, global = true, env = "STEADYGRAD_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Number of hidden layers.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Hidden activation: identity, sigmoid, tanh, relu, leaky-relu[:SLOPE], rrelu[:LOWER:UPPER],
    /// prelu[:INIT] (one slope per layer), prelu-unit[:INIT] (one per unit), elu[:ALPHA], selu,
    /// gelu, gelu-tanh. Parameters default to PyTorch's (0.01; 1/8:1/3; 0.25; 1).
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// Weight init: auto, glorot-uniform, glorot-normal, he-uniform, he-normal, lecun-uniform, lecun-normal, normal.
    #[arg(long, default_value = "auto")]
    init: Init,
    /// Learning rate of SGD.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Seed for weights, data and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Train a deep MLP on the built-in spiral data and report loss, accuracy and speed.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Spiral arms (classes).
        #[arg(long, default_value_t = 3)]
        classes: usize,
        /// Points per arm; 20% of them are held out for validation.
        #[arg(long, default_value_t = 1000)]
        points: usize,
    },
    /// List the GPU adapters wgpu can see.
    Devices,
    /// Run one training step on the GPU and the CPU reference and compare every tensor.
    Check {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 33)]
        batch: usize,
        /// cross-entropy or mse.
        #[arg(long, default_value = "cross-entropy")]
        loss: Loss,
        #[arg(long, default_value_t = Tolerance::default().rtol)]
        rtol: f32,
        #[arg(long, default_value_t = Tolerance::default().atol)]
        atol: f32,
    },
}

fn spec_from(args: &ModelArgs, input: usize, output: usize) -> MlpSpec {
    MlpSpec::new(input, &vec![args.width; args.depth], output)
        .activation(args.activation)
        .init(args.init)
        .optimizer(Optimizer::Sgd { lr: args.lr })
        .seed(args.seed)
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = BackendChoice::parse(&cli.backend, cli.adapter.as_deref())?;
    match cli.command {
        Command::Devices => {
            let adapters = list_adapters(wgpu::Backends::all());
            if adapters.is_empty() {
                println!("no GPU adapters found (on Linux: apt-get install mesa-vulkan-drivers libvulkan1)");
            }
            for (i, a) in adapters.iter().enumerate() {
                println!("{i}: {}", describe_adapter(a));
            }
            println!("select with --backend vulkan|metal|dx12|gl|cpu and --adapter INDEX|NAME (or STEADYGRAD_BACKEND / STEADYGRAD_ADAPTER)");
            Ok(())
        }
        Command::Train {
            model,
            epochs,
            batch,
            classes,
            points,
        } => {
            anyhow::ensure!(points >= 5, "--points must be at least 5");
            let all = data::synthetic::spirals(points, classes, 0.05, model.seed);
            let split = all.rows * 4 / 5;
            let (train, valid) = (all.slice(0, split), all.slice(split, all.rows));
            let spec = spec_from(&model, 2, classes);
            let mut m = Model::with_backend(spec, &choice)?;
            println!("device: {}", m.device());
            println!(
                "model: 2 → {} hidden × {} ({}) → {classes}, SGD lr {}, batch {batch}; data: {} spirals, {} train / {} validation rows",
                model.depth, model.width, model.activation, model.lr, classes, train.rows, valid.rows
            );
            let opts = FitOptions {
                epochs,
                batch_size: batch,
                shuffle_seed: model.seed,
            };
            let start = Instant::now();
            m.fit(&train, Some(&valid), &opts, |r| {
                let v = r.valid.expect("validation data was given");
                println!(
                    "epoch {:>3}  loss {:.4}  acc {:5.1}%  val loss {:.4}  val acc {:5.1}%  {:>8.0} samples/s",
                    r.epoch,
                    r.train.loss,
                    100.0 * r.train.accuracy.unwrap_or(0.0),
                    v.loss,
                    100.0 * v.accuracy.unwrap_or(0.0),
                    r.samples_per_sec
                );
            })?;
            println!(
                "trained {epochs} epochs in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Check {
            model,
            batch,
            loss,
            rtol,
            atol,
        } => {
            let sel = match choice {
                BackendChoice::Gpu(sel) => sel,
                BackendChoice::Auto => AdapterSelection::default(),
                BackendChoice::Cpu => {
                    anyhow::bail!("check compares a GPU against the CPU; pick a GPU backend")
                }
            };
            let ctx = Arc::new(GpuContext::new(&sel)?);
            let (input, output) = (model.width.max(1), 7);
            let spec = spec_from(&model, input, output).loss(loss);
            let data =
                data::synthetic::spirals(batch.div_ceil(output).max(1), output, 0.1, model.seed);
            // Widen the 2-D spiral points to `input` features deterministically.
            let x: Vec<f32> = (0..batch)
                .flat_map(|r| {
                    let (a, b) = (data.features[2 * r], data.features[2 * r + 1]);
                    (0..input).map(
                        move |j| if j % 2 == 0 { a } else { b } * (1.0 + j as f32 / input as f32),
                    )
                })
                .collect();
            let y: Vec<f32> = match loss {
                Loss::SoftmaxCrossEntropy => data.targets[..batch].to_vec(),
                Loss::MeanSquaredError => (0..batch * output)
                    .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                    .collect(),
            };
            let report =
                cross_check(&spec, &x, &y, ctx, Tolerance { atol, rtol }).context("cross-check")?;
            print!("{}", report.table());
            anyhow::ensure!(
                report.passed(),
                "{} tensor(s) differ beyond tolerance",
                report.failures().len()
            );
            Ok(())
        }
    }
}
