//! The `steadygrad` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Instant;
use steadygrad::check::{cross_check, Tolerance};
use steadygrad::gpu::{describe_adapter, list_adapters, AdapterSelection, GpuContext};
use steadygrad::{
    data, Activation, BackendChoice, BatchNorm, BnPlacement, Clip, FitOptions, Init, Loss,
    LrSchedule, MlpSpec, Model, Optimizer,
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
    /// Learning rate [default: 0.05 for sgd; 0.001, torch's default, for adam and adamw].
    #[arg(long)]
    lr: Option<f32>,
    /// Seed for weights, data and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Batch normalization in every hidden layer: before (the activation) or after.
    #[arg(long, value_parser = ["before", "after"])]
    batch_norm: Option<String>,
    /// Batch-norm momentum for the running statistics (PyTorch: 0.1).
    #[arg(long, default_value_t = 0.1)]
    bn_momentum: f32,
    /// A skip connection into every K-th hidden layer (projection when sizes differ).
    #[arg(long, value_name = "K")]
    residual: Option<usize>,
    /// Optimizer: sgd, adam or adamw (torch.optim.SGD, Adam, AdamW; betas (0.9, 0.999), eps 1e-8).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    optimizer: OptimizerKind,
    /// SGD momentum in [0, 1), dampening 0 [default: 0].
    #[arg(long)]
    momentum: Option<f32>,
    /// Nesterov momentum (SGD, needs --momentum > 0).
    #[arg(long)]
    nesterov: bool,
    /// Weight decay on all parameters, biases included: L2 for sgd and adam, decoupled for adamw [default: 0; 0.01 for adamw, as torch].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Scale gradients so their global L2 norm is at most this (torch.nn.utils.clip_grad_norm_).
    #[arg(long, conflicts_with = "clip_value")]
    clip_norm: Option<f32>,
    /// Clamp every gradient element to [-V, V] (torch.nn.utils.clip_grad_value_).
    #[arg(long)]
    clip_value: Option<f32>,
    /// Dropout probability in [0, 1) after every hidden activation, in training only.
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Learning-rate schedule per epoch: constant, step (StepLR) or cosine (CosineAnnealingLR).
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    schedule: ScheduleKind,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 10)]
    step_size: usize,
    /// Step schedule: decay factor per step_size epochs.
    #[arg(long, default_value_t = 0.1)]
    gamma: f32,
    /// Cosine schedule: epochs from the full rate down to --eta-min [default: the number of epochs; 1 for check].
    #[arg(long)]
    t_max: Option<usize>,
    /// Cosine schedule: the lowest learning rate.
    #[arg(long, default_value_t = 0.0)]
    eta_min: f32,
    /// Linear learning-rate warm-up over the first N steps (batches): step s uses lr·min(1, s/N).
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ScheduleKind {
    Constant,
    Step,
    Cosine,
}

impl ModelArgs {
    fn optimizer(&self) -> Result<Optimizer> {
        if self.optimizer != OptimizerKind::Sgd {
            anyhow::ensure!(
                self.momentum.is_none() && !self.nesterov,
                "--momentum and --nesterov apply to --optimizer sgd only"
            );
        }
        let opt = match self.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd {
                lr: self.lr.unwrap_or(0.05),
                momentum: self.momentum.unwrap_or(0.0),
                nesterov: self.nesterov,
                weight_decay: 0.0,
            },
            OptimizerKind::Adam => Optimizer::adam(self.lr.unwrap_or(1e-3)),
            OptimizerKind::Adamw => Optimizer::adamw(self.lr.unwrap_or(1e-3)),
        };
        Ok(match self.weight_decay {
            Some(wd) => opt.with_weight_decay(wd),
            None => opt,
        })
    }

    fn schedule(&self, default_t_max: usize) -> LrSchedule {
        match self.schedule {
            ScheduleKind::Constant => LrSchedule::Constant,
            ScheduleKind::Step => LrSchedule::Step {
                step_size: self.step_size,
                gamma: self.gamma,
            },
            ScheduleKind::Cosine => LrSchedule::Cosine {
                t_max: self.t_max.unwrap_or(default_t_max),
                eta_min: self.eta_min,
            },
        }
    }
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

/// `t_max` is the cosine schedule's default half period.
fn spec_from(args: &ModelArgs, input: usize, output: usize, t_max: usize) -> Result<MlpSpec> {
    let mut spec = MlpSpec::new(input, &vec![args.width; args.depth], output)
        .activation(args.activation)
        .init(args.init)
        .optimizer(args.optimizer()?)
        .seed(args.seed)
        .dropout(args.dropout)
        .schedule(args.schedule(t_max))
        .warmup_steps(args.warmup_steps);
    if let Some(v) = args.clip_norm {
        spec = spec.clip(Clip::Norm(v));
    }
    if let Some(v) = args.clip_value {
        spec = spec.clip(Clip::Value(v));
    }
    if let Some(place) = &args.batch_norm {
        spec = spec.batch_norm(BatchNorm {
            placement: if place == "after" {
                BnPlacement::AfterActivation
            } else {
                BnPlacement::BeforeActivation
            },
            momentum: args.bn_momentum,
            ..BatchNorm::default()
        });
    }
    spec.residual_every = args.residual;
    Ok(spec)
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
            let spec = spec_from(&model, 2, classes, epochs)?;
            let mut m = Model::with_backend(spec, &choice)?;
            println!("device: {}", m.device());
            println!(
                "model: 2 → {} hidden × {} ({}) → {classes}, {}, batch {batch}; data: {} spirals, {} train / {} validation rows",
                model.depth, model.width, model.activation, m.spec().optimizer, classes, train.rows, valid.rows
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
            let spec = spec_from(&model, input, output, 1)?.loss(loss);
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
