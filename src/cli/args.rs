//! The command line's arguments: global options, the model and data flag groups shared
//! by the subcommands, and the subcommands themselves.

use super::experiment::ExperimentKind;
use super::health::{DiagnoseArgs, RunArgs};
use super::schedule::{OneCycleArgs, PlateauArgs, Span};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use steadygrad::check::Tolerance;
use steadygrad::model::optim::{ADAGRAD_EPS, NADAM_MOMENTUM_DECAY, RMSPROP_ALPHA};
use steadygrad::{
    Activation, BatchNorm, BnPlacement, Clip, Init, Loss, LrSchedule, MlpSpec, Optimizer,
    Regularizer,
};

#[derive(Parser)]
#[command(
    name = "steadygrad",
    version,
    about = "Train deep MLPs on any GPU through wgpu, checked against a CPU reference"
)]
pub struct Cli {
    /// Backend: auto (best GPU, else CPU), cpu, vulkan, metal, dx12 or gl.
    #[arg(
        long,
        global = true,
        env = "STEADYGRAD_BACKEND",
        default_value = "auto"
    )]
    pub backend: String,
    /// GPU adapter: index from `steadygrad devices`, or part of its name.
    #[arg(long, global = true, env = "STEADYGRAD_ADAPTER")]
    pub adapter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Number of hidden layers.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Hidden activation (the list comes from `Activation::ALL`).
    #[arg(long, default_value = "relu", long_help = activation_help())]
    pub activation: Activation,
    /// Weight init: auto, glorot-uniform, glorot-normal, he-uniform, he-normal, lecun-uniform, lecun-normal, normal.
    #[arg(long, default_value = "auto")]
    pub init: Init,
    /// Learning rate [default: 0.05 for sgd; torch's for the others: 0.001 adam and adamw, 0.01 rmsprop and adagrad, 0.002 adamax and nadam].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Seed for weights, data and shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Batch normalization in every hidden layer: before (the activation) or after.
    #[arg(long, value_parser = ["before", "after"])]
    pub batch_norm: Option<String>,
    /// Batch-norm momentum for the running statistics (PyTorch: 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub bn_momentum: f32,
    /// A skip connection into every K-th hidden layer (projection when sizes differ).
    #[arg(long, value_name = "K")]
    pub residual: Option<usize>,
    /// Optimizer: sgd, adam, adamw, rmsprop, adagrad, adamax or nadam (torch.optim's, with its defaults).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Momentum in [0, 1) of sgd (dampening 0) or rmsprop [default: 0].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Nesterov momentum (SGD, needs --momentum > 0).
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay on all parameters, biases included: decoupled for adamw, L2 for the others [default: 0; 0.01 for adamw, as torch].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// AMSGrad: divide by the running maximum of the second moment (adam, adamw).
    #[arg(long)]
    pub amsgrad: bool,
    /// Centered RMSprop: divide by the estimated variance of the gradient.
    #[arg(long)]
    pub centered: bool,
    /// RMSprop's smoothing constant in [0, 1) [default: 0.99].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Adagrad's learning-rate decay: step t uses lr / (1 + (t-1)·lr_decay) [default: 0].
    #[arg(long)]
    pub lr_decay: Option<f32>,
    /// Adagrad's starting value of the squared-gradient sums [default: 0].
    #[arg(long)]
    pub initial_accumulator_value: Option<f32>,
    /// NAdam's momentum decay ψ in μ_t = β₁(1 - ½·0.96^(tψ)) [default: 0.004].
    #[arg(long)]
    pub momentum_decay: Option<f32>,
    /// Term added to the denominator (all but sgd) [default: torch's, 1e-8; 1e-10 for adagrad].
    #[arg(long)]
    pub eps: Option<f32>,
    /// Scale gradients so their global L2 norm is at most this (torch.nn.utils.clip_grad_norm_).
    #[arg(long, conflicts_with = "clip_value")]
    pub clip_norm: Option<f32>,
    /// Clamp every gradient element to [-V, V] (torch.nn.utils.clip_grad_value_).
    #[arg(long)]
    pub clip_value: Option<f32>,
    /// L1 penalty l1·Σ|w| on every layer's weights, added to the loss (Keras's kernel_regularizer; biases excluded).
    #[arg(long, default_value_t = 0.0)]
    pub l1: f32,
    /// L2 penalty l2·Σw² on every layer's weights, added to the loss: Keras's l2, gradient 2·l2·w (not --weight-decay).
    #[arg(long, default_value_t = 0.0)]
    pub l2: f32,
    /// Rescale each unit's incoming weights to norm ≤ C after every update (Keras's MaxNorm, axis=0).
    #[arg(long, value_name = "C")]
    pub max_norm: Option<f32>,
    /// Dropout probability in [0, 1) after every hidden activation, in training only.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Learning-rate schedule: constant, step (StepLR), cosine (CosineAnnealingLR),
    /// exponential (ExponentialLR, with --gamma), polynomial (PolynomialLR, with
    /// --total-iters and --power), multistep (MultiStepLR, with --milestones and --gamma),
    /// one-cycle (OneCycleLR per batch, with --max-lr) or plateau (ReduceLROnPlateau on
    /// the validation loss).
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    pub schedule: ScheduleKind,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 10)]
    pub step_size: usize,
    /// Step and exponential schedules: decay factor per step_size epochs (step) or per
    /// epoch (exponential).
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Multistep schedule: the epochs at which the rate is multiplied by --gamma,
    /// comma-separated (MultiStepLR's milestones).
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<usize>,
    /// Polynomial schedule: epochs until the rate reaches 0 (PolynomialLR's total_iters).
    #[arg(long, default_value_t = 5)]
    pub total_iters: usize,
    /// Polynomial schedule: the polynomial's power.
    #[arg(long, default_value_t = 1.0)]
    pub power: f32,
    /// Cosine schedule: epochs from the full rate down to --eta-min [default: the number of epochs; 1 for check].
    #[arg(long)]
    pub t_max: Option<usize>,
    /// Cosine schedule: the lowest learning rate.
    #[arg(long, default_value_t = 0.0)]
    pub eta_min: f32,
    /// Linear learning-rate warm-up over the first N steps (batches): step s uses lr·min(1, s/N).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[command(flatten)]
    pub one_cycle: OneCycleArgs,
    #[command(flatten)]
    pub plateau: PlateauArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
    Rmsprop,
    Adagrad,
    Adamax,
    Nadam,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum MonitorKind {
    ValLoss,
    ValAccuracy,
}

impl MonitorKind {
    pub fn monitor(self) -> steadygrad::model::optim::Monitor {
        match self {
            MonitorKind::ValLoss => steadygrad::model::optim::Monitor::ValLoss,
            MonitorKind::ValAccuracy => steadygrad::model::optim::Monitor::ValAccuracy,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
    Exponential,
    Polynomial,
    Multistep,
    OneCycle,
    Plateau,
}

impl ModelArgs {
    pub fn optimizer(&self) -> Result<Optimizer> {
        use OptimizerKind as K;
        let k = self.optimizer;
        let only = |set: bool, flag: &str, kinds: &[K], which: &str| {
            anyhow::ensure!(!set || kinds.contains(&k), "{flag} applies to {which} only");
            Ok(())
        };
        only(
            self.momentum.is_some(),
            "--momentum",
            &[K::Sgd, K::Rmsprop],
            "--optimizer sgd and rmsprop",
        )?;
        only(self.nesterov, "--nesterov", &[K::Sgd], "--optimizer sgd")?;
        only(
            self.amsgrad,
            "--amsgrad",
            &[K::Adam, K::Adamw],
            "--optimizer adam and adamw",
        )?;
        let rms = "--optimizer rmsprop";
        only(self.centered, "--centered", &[K::Rmsprop], rms)?;
        only(self.alpha.is_some(), "--alpha", &[K::Rmsprop], rms)?;
        let ada = "--optimizer adagrad";
        only(self.lr_decay.is_some(), "--lr-decay", &[K::Adagrad], ada)?;
        only(
            self.initial_accumulator_value.is_some(),
            "--initial-accumulator-value",
            &[K::Adagrad],
            ada,
        )?;
        only(
            self.momentum_decay.is_some(),
            "--momentum-decay",
            &[K::Nadam],
            "--optimizer nadam",
        )?;
        anyhow::ensure!(
            self.eps.is_none() || k != K::Sgd,
            "--eps does not apply to --optimizer sgd"
        );
        let mut opt = match k {
            K::Sgd => Optimizer::Sgd {
                lr: self.lr.unwrap_or(0.05),
                momentum: self.momentum.unwrap_or(0.0),
                nesterov: self.nesterov,
                weight_decay: 0.0,
            },
            K::Adam => Optimizer::adam(self.lr.unwrap_or(1e-3)).with_amsgrad(self.amsgrad),
            K::Adamw => Optimizer::adamw(self.lr.unwrap_or(1e-3)).with_amsgrad(self.amsgrad),
            K::Rmsprop => Optimizer::RmsProp {
                lr: self.lr.unwrap_or(1e-2),
                alpha: self.alpha.unwrap_or(RMSPROP_ALPHA),
                eps: 1e-8,
                weight_decay: 0.0,
                momentum: self.momentum.unwrap_or(0.0),
                centered: self.centered,
            },
            K::Adagrad => Optimizer::Adagrad {
                lr: self.lr.unwrap_or(1e-2),
                lr_decay: self.lr_decay.unwrap_or(0.0),
                weight_decay: 0.0,
                initial_accumulator_value: self.initial_accumulator_value.unwrap_or(0.0),
                eps: ADAGRAD_EPS,
            },
            K::Adamax => Optimizer::adamax(self.lr.unwrap_or(2e-3)),
            K::Nadam => Optimizer::NAdam {
                lr: self.lr.unwrap_or(2e-3),
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.0,
                momentum_decay: self.momentum_decay.unwrap_or(NADAM_MOMENTUM_DECAY),
            },
        };
        if let Some(e) = self.eps {
            opt = opt.with_eps(e);
        }
        Ok(match self.weight_decay {
            Some(wd) => opt.with_weight_decay(wd),
            None => opt,
        })
    }

    pub fn schedule(&self, span: Span) -> Result<LrSchedule> {
        let default_t_max = span.epochs;
        Ok(match self.schedule {
            ScheduleKind::Constant => LrSchedule::Constant,
            ScheduleKind::Step => LrSchedule::Step {
                step_size: self.step_size,
                gamma: self.gamma,
            },
            ScheduleKind::Exponential => LrSchedule::Exponential { gamma: self.gamma },
            ScheduleKind::Multistep => LrSchedule::MultiStep {
                milestones: self.milestones.clone(),
                gamma: self.gamma,
            },
            ScheduleKind::Polynomial => LrSchedule::Polynomial {
                total_iters: self.total_iters,
                power: self.power,
            },
            ScheduleKind::Cosine => LrSchedule::Cosine {
                t_max: self.t_max.unwrap_or(default_t_max),
                eta_min: self.eta_min,
            },
            ScheduleKind::OneCycle => LrSchedule::OneCycle(self.one_cycle.schedule(span)?),
            ScheduleKind::Plateau => LrSchedule::Plateau(self.plateau.schedule()),
        })
    }
}

/// Where data comes from and how to read it.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Data file: .csv/.tsv, .npy, IDX (MNIST; .gz too) or .safetensors. Without it, the
    /// built-in spirals.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A separate labels file (.npy or IDX) for --data.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Label column of a CSV or 2-D .npy file, by 0-based index or header name (repeat
    /// for several regression targets) [default: the last column].
    #[arg(long = "label-column")]
    pub label_columns: Vec<String>,
    /// Whether the CSV file has a header line: auto, yes or no.
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    pub header: String,
    /// classification (whole-number labels, cross-entropy) or regression (mse).
    #[arg(long, default_value = "classification", value_parser = ["classification", "regression"])]
    pub task: String,
    /// Number of classes [default: largest label + 1].
    #[arg(long)]
    pub classes: Option<usize>,
    /// Fraction of --data held out for validation (seeded shuffle).
    #[arg(long, default_value_t = 0.2)]
    pub valid_fraction: f64,
    /// A separate validation file instead of --valid-fraction.
    #[arg(long)]
    pub valid_data: Option<PathBuf>,
    /// Do not standardize features (by default: mean 0, std 1 fitted on the training split).
    #[arg(long)]
    pub no_standardize: bool,
}

impl DataArgs {
    /// The files these arguments read, by flag.
    pub fn inputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        [
            ("--data", &self.data),
            ("--labels", &self.labels),
            ("--valid-data", &self.valid_data),
        ]
        .into_iter()
        .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
        .collect()
    }
}

// Parsed once per process, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
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
        /// Start from a pretrained model's lower layers (transfer learning): a steadygrad
        /// checkpoint, or a safetensors state dict in PyTorch's nn.Sequential layout
        /// (0.weight, 1.running_mean, …) or renamed with --name-map. Without steadygrad's
        /// metadata the widths come from the tensors; activation and batch norm from the
        /// flags.
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// How many layers of --init-from to keep [default: all but the output layer].
        #[arg(long, requires = "init_from")]
        keep_layers: Option<usize>,
        /// Fit the input standardization on this data instead of reusing the one saved
        /// with --init-from's model (the default, so the reused layers see inputs scaled
        /// as they were trained on).
        #[arg(long, requires = "init_from")]
        refit_standardizer: bool,
        /// Reuse --init-from's layers even though they were trained with another
        /// activation than --activation.
        #[arg(long, requires = "init_from")]
        allow_activation_change: bool,
        /// TOML table renaming --init-from's tensors to steadygrad's names:
        /// "their.name" = "layers.0.linear.weight", or rules such as
        /// "encoder.{i}.fc.weight" = "layers.{i}.linear.weight".
        #[arg(long, requires = "init_from", value_name = "FILE")]
        name_map: Option<PathBuf>,
        /// Freeze layers 0..K: not trained, run in inference mode, no backward kernels.
        /// Written `--freeze 0..K` or `--freeze K`.
        #[arg(long, value_parser = parse_freeze)]
        freeze: Option<usize>,
        /// Unfreeze every layer from this epoch on (1-based).
        #[arg(long, requires = "freeze")]
        unfreeze_at_epoch: Option<usize>,
        /// The learning rate from the unfreezing on, fixed (as a Keras user recompiles
        /// with a lower rate before fine-tuning the reused layers).
        #[arg(long, requires = "unfreeze_at_epoch", allow_negative_numbers = true)]
        unfreeze_lr: Option<f32>,
        /// Compute the frozen layers' outputs once and train the layers above from them.
        #[arg(long, requires = "freeze")]
        cache_frozen: bool,
        /// Drop the last batch of each epoch when it is smaller than --batch (PyTorch's
        /// DataLoader drop_last).
        #[arg(long)]
        drop_last: bool,
        /// Stop after this many epochs in a row without improvement of --monitor (Keras's
        /// EarlyStopping patience).
        #[arg(long, value_name = "PATIENCE")]
        early_stop: Option<usize>,
        /// What --early-stop, --save-best and --restore-best follow.
        #[arg(long, value_enum, default_value_t = MonitorKind::ValLoss)]
        monitor: MonitorKind,
        /// An epoch improves only when it beats the best by more than this.
        #[arg(long, default_value_t = 0.0)]
        min_delta: f64,
        /// Keep the checkpoint of the best epoch here (atomic; saved when an epoch improves).
        #[arg(long)]
        save_best: Option<PathBuf>,
        /// Load the best epoch's weights at the end (Keras's restore_best_weights).
        #[arg(long)]
        restore_best: bool,
        #[command(flatten)]
        dist: super::distributed::DistArgs,
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
        /// Monte Carlo dropout: N forward passes with dropout active (batch norm in eval
        /// mode); writes mean_j and std_j per output (class probabilities for
        /// classification) and the argmax of the means.
        #[arg(long, value_name = "N")]
        mc_samples: Option<usize>,
        /// Seed of the Monte Carlo dropout masks.
        #[arg(long, default_value_t = 42, requires = "mc_samples")]
        seed: u64,
    },
    /// Write a checkpoint's model as ONNX for inference elsewhere: standardizer, layers,
    /// batch norm with its running statistics, activations and residual connections.
    Export {
        /// A checkpoint saved by `train --save`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The ONNX file to write (atomic).
        #[arg(long, value_name = "FILE")]
        onnx: PathBuf,
        /// Write GELU and Mish from elementary operators (Erf, Tanh, Softplus, …) instead
        /// of the Gelu (opset 20) and Mish (opset 18) operators, for runtimes without them
        /// such as tract.
        #[arg(long)]
        decompose: bool,
    },
    /// A short training run that reports per-layer gradient health and a verdict
    /// (vanishing or exploding gradients, dying ReLUs, saturation, NaN, loss spikes,
    /// divergence, accuracy at chance), then tries each candidate remedy on the same model
    /// and data and recommends the best measured one.
    Diagnose(DiagnoseArgs),
    /// Built-in experiments.
    Experiment {
        #[command(subcommand)]
        which: ExperimentKind,
    },
    /// List the GPU adapters wgpu can see.
    Devices,
    /// Measure this adapter: training samples/s of the standard workloads (or the model
    /// the model flags describe) and matmul GFLOP/s against the adapter's fp32 peak.
    Bench(super::bench::BenchArgs),
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

/// The command line, with negative numbers read as values in every subcommand, so that
/// `--lr -1` reaches the range checks and gets a message about the learning rate rather
/// than clap's "unexpected argument '-1'".
pub fn command() -> clap::Command {
    fn negatives(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        names
            .iter()
            .fold(cmd.allow_negative_numbers(true), |cmd, name| {
                cmd.mut_subcommand(name, negatives)
            })
    }
    negatives(<Cli as clap::CommandFactory>::command())
}

/// `span` gives the schedules' defaults (cosine's half period, one-cycle's steps).
pub fn spec_from(args: &ModelArgs, input: usize, output: usize, span: Span) -> Result<MlpSpec> {
    let mut spec = MlpSpec::new(input, &vec![args.width; args.depth], output)
        .activation(args.activation)
        .init(args.init)
        .optimizer(args.optimizer()?)
        .seed(args.seed)
        .dropout(args.dropout)
        .schedule(args.schedule(span)?)
        .warmup_steps(args.warmup_steps);
    if let Some(v) = args.clip_norm {
        spec = spec.clip(Clip::Norm(v));
    }
    if let Some(v) = args.clip_value {
        spec = spec.clip(Clip::Value(v));
    }
    let layers = spec.num_layers();
    if let Some(g) = Regularizer::all_layers(layers, args.l1, args.l2, args.max_norm) {
        spec = spec.regularize(g);
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

pub fn parse_freeze(s: &str) -> Result<usize, String> {
    let k = s.strip_prefix("0..").unwrap_or(s);
    k.parse()
        .map_err(|_| format!("'{s}' is not a layer count: write K or 0..K"))
}

/// `--activation`'s help: every kind from the one list, with PyTorch's defaults.
fn activation_help() -> String {
    format!(
        "Hidden activation: {}. prelu has one slope per layer, prelu-unit one per unit. \
         Parameters default to PyTorch's (0.01; 1/8:1/3; 0.25; 1).",
        Activation::syntax()
    )
}
