//! The `steadygrad` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use steadygrad::check::{cross_check, Tolerance};
use steadygrad::checkpoint;
use steadygrad::config::Config;
use steadygrad::gpu::{describe_adapter, list_adapters, AdapterSelection, GpuContext};
use steadygrad::{
    data, Activation, BackendChoice, BatchNorm, BnPlacement, Clip, Dataset, EpochReport,
    FitOptions, Init, Loss, LrSchedule, MlpSpec, Model, Optimizer,
};

#[path = "cli/health.rs"]
mod health_cli;
use health_cli::{DiagnoseArgs, ExperimentKind, RunArgs};

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
    /// Hidden activation (the list comes from `Activation::ALL`).
    #[arg(long, default_value = "relu", long_help = activation_help())]
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

/// Where data comes from and how to read it.
#[derive(clap::Args, Clone)]
struct DataArgs {
    /// Data file: .csv/.tsv, .npy, IDX (MNIST; .gz too) or .safetensors. Without it, the
    /// built-in spirals.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A separate labels file (.npy or IDX) for --data.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Label column of a CSV or 2-D .npy file, by 0-based index or header name (repeat
    /// for several regression targets) [default: the last column].
    #[arg(long = "label-column")]
    label_columns: Vec<String>,
    /// Whether the CSV file has a header line: auto, yes or no.
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    header: String,
    /// classification (whole-number labels, cross-entropy) or regression (mse).
    #[arg(long, default_value = "classification", value_parser = ["classification", "regression"])]
    task: String,
    /// Number of classes [default: largest label + 1].
    #[arg(long)]
    classes: Option<usize>,
    /// Fraction of --data held out for validation (seeded shuffle).
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    /// A separate validation file instead of --valid-fraction.
    #[arg(long)]
    valid_data: Option<PathBuf>,
    /// Do not standardize features (by default: mean 0, std 1 fitted on the training split).
    #[arg(long)]
    no_standardize: bool,
}

impl DataArgs {
    fn load_options(&self, classes: Option<usize>) -> Result<data::LoadOptions> {
        Ok(data::LoadOptions {
            labels: self.labels.clone(),
            task: if self.task == "regression" {
                data::Task::Regression
            } else {
                data::Task::Classification {
                    classes: classes.or(self.classes),
                }
            },
            label_columns: self
                .label_columns
                .iter()
                .map(|c| c.parse().expect("infallible"))
                .collect(),
            header: match self.header.as_str() {
                "yes" => data::Header::Present,
                "no" => data::Header::Absent,
                _ => data::Header::Auto,
            },
            ..data::LoadOptions::default()
        })
    }

    /// Training and validation sets, standardized by statistics of the training set
    /// (returned so checkpoints can carry them).
    fn train_valid(
        &self,
        seed: u64,
        points: usize,
        spiral_classes: usize,
    ) -> Result<(Dataset, Dataset, Option<data::Standardizer>)> {
        let Some(path) = &self.data else {
            anyhow::ensure!(points >= 5, "--points must be at least 5");
            let all = data::synthetic::spirals(points, spiral_classes, 0.05, seed);
            let split = all.rows * 4 / 5;
            return Ok((all.slice(0, split), all.slice(split, all.rows), None));
        };
        let all = data::load(path, &self.load_options(None)?)?;
        let (mut train, mut valid) = match &self.valid_data {
            Some(v) => {
                let valid = data::load(v, &self.load_options(all.classes)?)?;
                (all, valid)
            }
            None => data::split(&all, self.valid_fraction, seed)?,
        };
        if let (Some(a), Some(b)) = (train.classes, valid.classes) {
            // A validation file without the top classes must not shrink the output layer.
            let c = a.max(b);
            train.classes = Some(c);
            valid.classes = Some(c);
        }
        let standardizer = if self.no_standardize {
            None
        } else {
            let s = data::Standardizer::fit(&train)?;
            s.apply(&mut train)?;
            s.apply(&mut valid)?;
            Some(s)
        };
        Ok((train, valid, standardizer))
    }

    /// A single dataset (for eval/predict), standardized as at training time.
    fn load_one(
        &self,
        classes: Option<usize>,
        standardizer: Option<&data::Standardizer>,
    ) -> Result<Dataset> {
        let path = self.data.as_ref().context("--data is required")?;
        let mut d = data::load(path, &self.load_options(classes)?)?;
        if let Some(s) = standardizer {
            s.apply(&mut d)?;
        }
        Ok(d)
    }
}

// Parsed once per process, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Train a deep MLP (on --data, or the built-in spirals) and report loss, accuracy and speed.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Total epochs [default: the config's or the checkpoint's, else 20]. With
        /// --resume, training continues up to this many.
        #[arg(long)]
        epochs: Option<usize>,
        /// Batch size [default: the config's or the checkpoint's, else 32].
        #[arg(long)]
        batch: Option<usize>,
        /// Spiral arms (classes) of the built-in data.
        #[arg(long, default_value_t = 3)]
        spiral_classes: usize,
        /// Points per spiral arm; 20% of them are held out for validation.
        #[arg(long, default_value_t = 1000)]
        points: usize,
        /// Model configuration file (TOML); replaces the model, optimizer and training flags.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the configuration (the commented default, or that of --config) and exit.
        #[arg(long)]
        print_config: bool,
        /// Save a checkpoint here after every epoch (atomic; safetensors with PyTorch names).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Continue a run from a checkpoint saved with --save: weights, optimizer state,
        /// epoch and random streams.
        #[arg(long, conflicts_with_all = ["config", "init_from"])]
        resume: Option<PathBuf>,
        /// Start from a pretrained checkpoint's lower layers (transfer learning).
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// How many layers of --init-from to keep [default: all but the output layer].
        #[arg(long, requires = "init_from")]
        keep_layers: Option<usize>,
        /// Freeze layers 0..K: not trained, run in inference mode, no backward kernels.
        /// Written `--freeze 0..K` or `--freeze K`.
        #[arg(long, value_parser = parse_freeze)]
        freeze: Option<usize>,
        /// Unfreeze every layer from this epoch on (1-based).
        #[arg(long, requires = "freeze")]
        unfreeze_at_epoch: Option<usize>,
        /// Compute the frozen layers' outputs once and train the layers above from them.
        #[arg(long, requires = "freeze")]
        cache_frozen: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Loss and accuracy (or RMSE) of a checkpoint on --data.
    Eval {
        /// A checkpoint saved by `train --save`.
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Write a checkpoint's outputs for --data to a CSV file.
    Predict {
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Output CSV: one row per input row, the model outputs, and for classification
        /// the predicted class.
        #[arg(long)]
        out: PathBuf,
    },
    /// A short training run that reports per-layer gradient health and a verdict with
    /// advice (vanishing or exploding gradients, dying ReLUs, saturation, NaN).
    Diagnose(DiagnoseArgs),
    /// Built-in experiments.
    Experiment {
        #[command(subcommand)]
        which: ExperimentKind,
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

fn parse_freeze(s: &str) -> Result<usize, String> {
    let k = s.strip_prefix("0..").unwrap_or(s);
    k.parse()
        .map_err(|_| format!("'{s}' is not a layer count: write K or 0..K"))
}

fn print_epoch(r: &EpochReport) {
    let v = r.valid.expect("validation data was given");
    let metric = |m: &steadygrad::Metrics| match m.accuracy {
        Some(a) => format!("acc {:5.1}%", 100.0 * a),
        None => format!("rmse {:.4}", m.loss.sqrt()),
    };
    println!(
        "epoch {:>3}  loss {:.4}  {}  val loss {:.4}  val {}  {:>8.0} samples/s",
        r.epoch,
        r.train.loss,
        metric(&r.train),
        v.loss,
        metric(&v),
        r.samples_per_sec
    );
}

/// Builds the model a checkpoint describes on `choice` and restores it.
fn model_from_checkpoint(
    path: &std::path::Path,
    choice: &BackendChoice,
) -> Result<(Model, checkpoint::Checkpoint)> {
    let ckpt = checkpoint::load_checkpoint(path)?;
    let base = match &ckpt.state.config {
        Some(c) => c.to_spec()?,
        None => MlpSpec::new(ckpt.model.input, &ckpt.model.hidden, ckpt.model.output),
    };
    let spec = ckpt.model.to_spec(base)?;
    let mut m = Model::with_backend(spec, choice)?;
    ckpt.restore(&mut m)
        .with_context(|| format!("loading '{}'", path.display()))?;
    Ok((m, ckpt))
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
        Command::Diagnose(args) => health_cli::diagnose(&args, &choice),
        Command::Experiment { which } => health_cli::experiment(&which, &choice),
        Command::Train {
            model,
            data: data_args,
            epochs,
            batch,
            spiral_classes,
            points,
            config,
            print_config,
            save,
            resume,
            init_from,
            keep_layers,
            freeze,
            unfreeze_at_epoch,
            cache_frozen,
            run,
        } => {
            if print_config {
                match &config {
                    Some(p) => print!("{}", Config::load(p)?.to_toml()),
                    None => print!("{}", Config::commented_default()),
                }
                return Ok(());
            }
            let file_config = config.as_deref().map(Config::load).transpose()?;
            let seed = file_config.as_ref().map_or(model.seed, |c| c.training.seed);
            let (train, valid, standardizer) =
                data_args.train_valid(seed, points, spiral_classes)?;
            let (input, output) = (train.input_dim, train.classes.unwrap_or(train.target_dim));
            let loss = if train.classes.is_some() {
                Loss::SoftmaxCrossEntropy
            } else {
                Loss::MeanSquaredError
            };
            let (mut m, epochs, batch, run_config) = if let Some(path) = &resume {
                let (m, ckpt) = model_from_checkpoint(path, &choice)?;
                let (e, b) = ckpt
                    .state
                    .config
                    .as_ref()
                    .map_or((20, 32), |c| (c.training.epochs, c.training.batch_size));
                let (e, b) = (epochs.unwrap_or(e), batch.unwrap_or(b));
                println!("resuming '{}' after epoch {}", path.display(), m.epoch());
                let cfg = ckpt.state.config.clone();
                (m, e, b, cfg)
            } else {
                let (mut spec, e, b) = match &file_config {
                    Some(c) => (
                        c.to_spec()?,
                        epochs.unwrap_or(c.training.epochs),
                        batch.unwrap_or(c.training.batch_size),
                    ),
                    None => {
                        let e = epochs.unwrap_or(20);
                        let spec = spec_from(&model, input, output, e)?.loss(loss);
                        (spec, e, batch.unwrap_or(32))
                    }
                };
                spec.frozen_layers = freeze.unwrap_or(0);
                let cfg = Config::from_spec(&spec, e, b);
                (Model::with_backend(spec, &choice)?, e, b, Some(cfg))
            };
            let spec = m.spec().clone();
            anyhow::ensure!(
                spec.input == input && spec.output == output && spec.loss == loss,
                "the model takes {} inputs and gives {} outputs ({}), but the data has {input} features and {output} {}",
                spec.input,
                spec.output,
                spec.loss.name(),
                if loss == Loss::SoftmaxCrossEntropy { "classes" } else { "targets" }
            );
            if let Some(path) = &init_from {
                let pre = checkpoint::load_checkpoint(path)?;
                let keep = keep_layers.unwrap_or(pre.model.hidden.len());
                m.load_layers(&pre.tensors, keep)
                    .with_context(|| format!("--init-from '{}'", path.display()))?;
                println!("kept layers 0..{keep} of '{}'", path.display());
            }
            m.cache_frozen_outputs(cache_frozen);
            println!("device: {}", m.device());
            println!(
                "model: {} → {:?} ({}) → {}, {}, batch {batch}; {} train / {} validation rows{}",
                spec.input,
                spec.hidden,
                spec.activation,
                spec.output,
                spec.optimizer,
                train.rows,
                valid.rows,
                if spec.frozen_layers > 0 {
                    format!("; layers 0..{} frozen", spec.frozen_layers)
                } else {
                    String::new()
                }
            );
            let remaining = epochs.saturating_sub(m.epoch());
            anyhow::ensure!(
                remaining > 0,
                "the run already completed {} of {epochs} epochs",
                m.epoch()
            );
            let opts = FitOptions {
                epochs: remaining,
                batch_size: batch,
                shuffle_seed: seed,
            };
            let state = checkpoint::TrainingState {
                config: run_config,
                epoch: 0,
                standardizer,
            };
            let start = Instant::now();
            let bar = run.attach(&mut m)?;
            let result = m.fit_with_hook(&train, Some(&valid), &opts, |m, r| {
                if !run.quiet() {
                    bar.suspend(|| print_epoch(r));
                }
                if let Some(path) = &save {
                    // After the epoch succeeded only: a diverged run never overwrites the
                    // last good checkpoint.
                    checkpoint::save_checkpoint(m, path, &state)?;
                }
                if unfreeze_at_epoch.is_some_and(|e| r.epoch + 1 >= e) && m.spec().frozen_layers > 0
                {
                    bar.suspend(|| println!("unfreezing all layers from epoch {}", r.epoch + 1));
                    m.set_frozen_layers(0)?;
                }
                Ok(())
            });
            bar.finish_and_clear();
            run.finish(&mut m, "train")?;
            result?;
            println!(
                "trained {remaining} epochs in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            if let Some(path) = &save {
                println!("saved '{}'", path.display());
            }
            Ok(())
        }
        Command::Eval {
            checkpoint: path,
            data: data_args,
            batch,
        } => {
            let (mut m, ckpt) = model_from_checkpoint(&path, &choice)?;
            let classes = (m.spec().loss == Loss::SoftmaxCrossEntropy).then_some(m.spec().output);
            let d = data_args.load_one(classes, ckpt.state.standardizer.as_ref())?;
            let metrics = m.evaluate(&d, batch)?;
            match metrics.accuracy {
                Some(a) => println!(
                    "{} rows: loss {:.4}, accuracy {:.2}%",
                    metrics.rows,
                    metrics.loss,
                    100.0 * a
                ),
                None => println!(
                    "{} rows: mse {:.6}, rmse {:.6}",
                    metrics.rows,
                    metrics.loss,
                    metrics.loss.sqrt()
                ),
            }
            Ok(())
        }
        Command::Predict {
            checkpoint: path,
            data: data_args,
            out,
        } => {
            let (mut m, ckpt) = model_from_checkpoint(&path, &choice)?;
            let classify = m.spec().loss == Loss::SoftmaxCrossEntropy;
            let classes = classify.then_some(m.spec().output);
            let d = data_args.load_one(classes, ckpt.state.standardizer.as_ref())?;
            let width = m.spec().output;
            let mut csv = String::new();
            let names: Vec<String> = (0..width).map(|j| format!("output_{j}")).collect();
            csv.push_str(&names.join(","));
            csv.push_str(if classify { ",class\n" } else { "\n" });
            for chunk in d.features.chunks(256 * d.input_dim) {
                let outputs = m.predict(chunk)?;
                for row in outputs.chunks(width) {
                    let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                    csv.push_str(&cells.join(","));
                    if classify {
                        let best = (0..width).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                        csv.push_str(&format!(",{best}"));
                    }
                    csv.push('\n');
                }
            }
            checkpoint::write_atomic(&out, csv.as_bytes())?;
            println!("wrote {} predictions to '{}'", d.rows, out.display());
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

/// `--activation`'s help: every kind from the one list, with PyTorch's defaults.
fn activation_help() -> String {
    format!(
        "Hidden activation: {}. prelu has one slope per layer, prelu-unit one per unit. \
         Parameters default to PyTorch's (0.01; 1/8:1/3; 0.25; 1).",
        Activation::syntax()
    )
}
