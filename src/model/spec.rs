//! The specification of a multilayer perceptron and its validation.

pub use crate::model::optim::Optimizer;
use crate::model::optim::{warmup_factor, Clip, LrSchedule};
use crate::model::regularize::{self, Regularizer};
use crate::model::Init;
use crate::ops::{Activation, Loss, METRICS_LEN};
use crate::tensor::{PersistentDesc, PersistentKind};

/// Where batch normalization sits in a hidden layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnPlacement {
    /// `linear → BN → activation` (the original paper's placement; the default).
    BeforeActivation,
    /// `linear → activation → BN`.
    AfterActivation,
}

/// Batch normalization after each hidden layer's linear map, as `torch.nn.BatchNorm1d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub placement: BnPlacement,
    /// Weight of the new batch statistic in the running estimates (PyTorch: 0.1).
    pub momentum: f32,
    /// Added to the variance before the square root (PyTorch: 1e-5).
    pub eps: f32,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            placement: BnPlacement::BeforeActivation,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// A fully connected network: `input → hidden[0] → … → hidden[n-1] → output`, with
/// `activation` after every hidden layer and none after the output layer (the loss
/// applies softmax itself, as PyTorch's `CrossEntropyLoss` does).
///
/// ```
/// use steadygrad::{Activation, Loss, MlpSpec, Optimizer};
/// let spec = MlpSpec::new(2, &[64; 8], 3)
///     .activation(Activation::Relu)
///     .loss(Loss::SoftmaxCrossEntropy)
///     .optimizer(Optimizer::sgd(0.05))
///     .seed(7);
/// spec.validate().unwrap();
/// assert_eq!(spec.layer_sizes(), vec![2, 64, 64, 64, 64, 64, 64, 64, 64, 3]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MlpSpec {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub output: usize,
    pub activation: Activation,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub init: Init,
    /// Per-layer overrides of `init` as `(layer, init)`; a later entry wins. Set with
    /// [`MlpSpec::layer_init`].
    pub layer_inits: Vec<(usize, Init)>,
    /// How biases start; `None` is zero (see [`MlpSpec::bias_init`]).
    pub bias_init: Option<Init>,
    pub seed: u64,
    /// Batch normalization in every hidden layer, when set.
    pub batch_norm: Option<BatchNorm>,
    /// Per-layer overrides of `activation` as `(hidden layer, activation)`; a later entry
    /// wins. Set with [`MlpSpec::layer_activation`].
    pub layer_activations: Vec<(usize, Activation)>,
    /// Per-layer overrides of `batch_norm` as `(hidden layer, setting)`, `None` for no
    /// batch norm there; a later entry wins. Set with [`MlpSpec::layer_batch_norm`].
    pub layer_batch_norms: Vec<(usize, Option<BatchNorm>)>,
    /// Per-layer overrides of the skip connections of `residual_every` as `(hidden layer,
    /// source)`, the source indexing [`MlpSpec::layer_sizes`] (0 the network input, `j`
    /// the output of layer `j - 1`), `None` for no skip there. Set with
    /// [`MlpSpec::layer_skip`].
    pub layer_skips: Vec<(usize, Option<usize>)>,
    /// A skip connection into every k-th hidden layer: hidden layer `l` with
    /// `(l + 1) % k == 0` adds the output of the layer `k` below it (or the network input)
    /// to its own output, through a learned projection when the sizes differ.
    pub residual_every: Option<usize>,
    /// Layers `0..frozen_layers` are frozen: not trained, run in inference mode, and no
    /// backward kernels are dispatched for them (transfer learning).
    pub frozen_layers: usize,
    /// Gradient clipping, none by default.
    pub clip: Option<Clip>,
    /// Dropout probability after each hidden layer's activation (training only); empty
    /// for none, otherwise one per hidden layer.
    pub dropout: Vec<f32>,
    /// Learning-rate schedule (per epoch, per step for one-cycle).
    pub schedule: LrSchedule,
    /// Linear learning-rate warm-up over the first this many training steps (0: none).
    pub warmup_steps: usize,
    /// Weight penalties and max-norm constraints per group of linear layers.
    pub regularization: Vec<Regularizer>,
}

impl MlpSpec {
    pub fn new(input: usize, hidden: &[usize], output: usize) -> Self {
        MlpSpec {
            input,
            hidden: hidden.to_vec(),
            output,
            activation: Activation::Relu,
            loss: Loss::SoftmaxCrossEntropy,
            optimizer: Optimizer::sgd(0.01),
            init: Init::Auto,
            layer_inits: Vec::new(),
            bias_init: None,
            seed: 0,
            batch_norm: None,
            layer_activations: Vec::new(),
            layer_batch_norms: Vec::new(),
            layer_skips: Vec::new(),
            residual_every: None,
            frozen_layers: 0,
            clip: None,
            dropout: Vec::new(),
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
            regularization: Vec::new(),
        }
    }
    /// Freezes layers `0..k` (see [`MlpSpec::frozen_layers`]).
    pub fn freeze(mut self, k: usize) -> Self {
        self.frozen_layers = k;
        self
    }
    pub fn batch_norm(mut self, bn: BatchNorm) -> Self {
        self.batch_norm = Some(bn);
        self
    }
    /// Adds a skip connection into every `k`-th hidden layer (see [`MlpSpec::residual_every`]).
    pub fn residual(mut self, k: usize) -> Self {
        self.residual_every = Some(k);
        self
    }

    /// For hidden layer `l`, the index into [`MlpSpec::layer_sizes`] of the tensor its skip
    /// connection reads: 0 is the network input, `j > 0` the output of layer `j - 1`.
    pub fn skip_source(&self, l: usize) -> Option<usize> {
        match self.layer_skips.iter().rev().find(|(i, _)| *i == l) {
            Some(&(_, src)) => src.filter(|_| l < self.hidden.len()),
            None => self.residual_source(l),
        }
    }

    /// The skip source `residual_every` gives hidden layer `l`, before any
    /// [`MlpSpec::layer_skip`].
    pub fn residual_source(&self, l: usize) -> Option<usize> {
        let k = self.residual_every?;
        (k > 0 && l < self.hidden.len() && (l + 1).is_multiple_of(k)).then(|| l + 1 - k)
    }
    pub fn activation(mut self, act: Activation) -> Self {
        self.activation = act;
        self
    }
    /// Gives hidden layer `l` its own activation instead of the model-wide one (tanh
    /// below, ReLU above, as PyTorch and Keras users mix them).
    pub fn layer_activation(mut self, l: usize, act: Activation) -> Self {
        self.layer_activations.push((l, act));
        self
    }
    /// Gives hidden layer `l` its own skip connection: `Some(src)` adds the tensor
    /// `src` of [`MlpSpec::layer_sizes`] (0 the network input, `j` layer `j - 1`'s
    /// output, `j <= l`) to its output, through a projection when the widths differ;
    /// `None` removes the one `residual_every` would give it.
    pub fn layer_skip(mut self, l: usize, src: Option<usize>) -> Self {
        self.layer_skips.push((l, src));
        self
    }
    /// Gives hidden layer `l` its own batch-norm setting (`None`: none there).
    pub fn layer_batch_norm(mut self, l: usize, bn: Option<BatchNorm>) -> Self {
        self.layer_batch_norms.push((l, bn));
        self
    }
    /// The activation after linear layer `l`; the output layer (which has none) reports
    /// the model-wide one, which its init follows.
    pub fn activation_of(&self, l: usize) -> Activation {
        self.layer_activations
            .iter()
            .rev()
            .find(|(i, _)| *i == l)
            .map_or(self.activation, |&(_, a)| a)
    }
    /// Batch norm of linear layer `l`; never on the output layer.
    pub fn batch_norm_of(&self, l: usize) -> Option<BatchNorm> {
        if l >= self.hidden.len() {
            return None;
        }
        self.layer_batch_norms
            .iter()
            .rev()
            .find(|(i, _)| *i == l)
            .map_or(self.batch_norm, |&(_, bn)| bn)
    }
    /// Whether any hidden layer has batch norm.
    pub fn has_batch_norm(&self) -> bool {
        (0..self.hidden.len()).any(|l| self.batch_norm_of(l).is_some())
    }
    /// The activations for a one-line summary: `relu`, or one per hidden layer when
    /// they differ.
    pub fn activation_summary(&self) -> String {
        let acts: Vec<String> = (0..self.hidden.len())
            .map(|l| self.activation_of(l).to_string())
            .collect();
        if acts.iter().all(|a| *a == self.activation.to_string()) {
            self.activation.to_string()
        } else {
            acts.join(", ")
        }
    }
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }
    pub fn optimizer(mut self, opt: Optimizer) -> Self {
        self.optimizer = opt;
        self
    }
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Initialises linear layer `layer` (0-based; the output layer is the last) with
    /// `init` instead of the model-wide one.
    pub fn layer_init(mut self, layer: usize, init: Init) -> Self {
        self.layer_inits.push((layer, init));
        self
    }
    /// Draws biases from `init` (with the fans of their layer) instead of starting them
    /// at zero, e.g. `Init::Uniform { low: 0.1, high: 0.1 }` for a constant 0.1.
    pub fn bias_init(mut self, init: Init) -> Self {
        self.bias_init = Some(init);
        self
    }
    /// The init of linear layer `layer`'s weight.
    pub fn init_of_layer(&self, layer: usize) -> Init {
        self.layer_inits
            .iter()
            .rev()
            .find(|(l, _)| *l == layer)
            .map_or(self.init, |&(_, init)| init)
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn clip(mut self, clip: Clip) -> Self {
        self.clip = Some(clip);
        self
    }
    /// Adds a regularization group (see [`Regularizer`]).
    pub fn regularize(mut self, group: Regularizer) -> Self {
        self.regularization.push(group);
        self
    }
    /// The same dropout probability after every hidden layer (`torch.nn.Dropout(p)`).
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = vec![p; self.hidden.len()];
        self
    }
    /// One dropout probability per hidden layer (0 for none at that layer).
    pub fn dropout_per_layer(mut self, p: &[f32]) -> Self {
        self.dropout = p.to_vec();
        self
    }
    pub fn schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = schedule;
        self
    }
    pub fn warmup_steps(mut self, steps: usize) -> Self {
        self.warmup_steps = steps;
        self
    }

    /// The learning rate of training step `step` (1 on the first) during epoch `epoch`
    /// (from 0): the schedule times the per-step warm-up factor. A plateau schedule's
    /// reductions depend on the validation losses, which the model tracks; here it is the
    /// optimizer's rate.
    pub fn lr_at(&self, epoch: usize, step: u64) -> f32 {
        let base = self.schedule.rate(self.optimizer.lr(), epoch, step);
        (base * warmup_factor(step, self.warmup_steps)) as f32
    }

    /// The dropout probability after hidden layer `l`, when it has dropout.
    pub fn dropout_p(&self, l: usize) -> Option<f32> {
        self.dropout.get(l).copied().filter(|&p| p > 0.0)
    }

    fn validate_training(&self) -> anyhow::Result<()> {
        self.optimizer.validate()?;
        if let Some(c) = self.clip {
            c.validate()?;
        }
        self.schedule.validate()?;
        regularize::validate(&self.regularization, self.num_layers())?;
        if let LrSchedule::OneCycle(c) = &self.schedule {
            if c.cycle_momentum {
                self.check_cycled_momentum()?;
            }
        }
        anyhow::ensure!(
            self.dropout.is_empty() || self.dropout.len() == self.hidden.len(),
            "dropout lists {} probabilities but the model has {} hidden layers",
            self.dropout.len(),
            self.hidden.len()
        );
        for (l, &p) in self.dropout.iter().enumerate() {
            anyhow::ensure!(
                (0.0..1.0).contains(&p),
                "dropout probability of hidden layer {l} must be in [0, 1), got {p}"
            );
        }
        Ok(())
    }

    /// One-cycle's momentum cycling replaces the momentum (SGD, RMSprop) or beta1 (Adam,
    /// AdamW, Adamax, NAdam) of the optimizer, as torch's does.
    fn check_cycled_momentum(&self) -> anyhow::Result<()> {
        let name = self.optimizer.name();
        let off = "pass --no-cycle-momentum (cycle_momentum = false)";
        match self.optimizer {
            Optimizer::Sgd { momentum, .. } | Optimizer::RmsProp { momentum, .. } => {
                // torch would silently switch momentum on for an optimizer built without
                // it; here the buffer exists only when asked for, so the choice is explicit.
                anyhow::ensure!(
                    momentum > 0.0,
                    "one-cycle's momentum cycling needs {name} with a momentum > 0 \
                     (--momentum), or {off}"
                );
            }
            Optimizer::Adam { .. }
            | Optimizer::AdamW { .. }
            | Optimizer::Adamax { .. }
            | Optimizer::NAdam { .. } => {}
            Optimizer::Adagrad { .. } => anyhow::bail!(
                "one-cycle's momentum cycling needs an optimizer with a momentum or beta1; \
                 Adagrad has neither (torch raises too): {off}"
            ),
        }
        Ok(())
    }

    /// `[input, hidden..., output]`.
    pub fn layer_sizes(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.hidden.len() + 2);
        v.push(self.input);
        v.extend_from_slice(&self.hidden);
        v.push(self.output);
        v
    }

    /// The hidden widths for a one-line summary: `8 × 64` when they are all alike, else
    /// the list, with the middle elided past 8 entries so a deep net stays one line.
    pub fn hidden_summary(&self) -> String {
        match self.hidden.as_slice() {
            [] => "no hidden layers".to_string(),
            [w, rest @ ..] if rest.iter().all(|v| v == w) => {
                format!("{} × {w}", self.hidden.len())
            }
            h if h.len() > 8 => format!(
                "[{}, … {} more …, {}]",
                h[..4]
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                h.len() - 6,
                h[h.len() - 2..]
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            h => format!("{h:?}"),
        }
    }

    /// Number of linear layers (hidden layers plus the output layer).
    pub fn num_layers(&self) -> usize {
        self.hidden.len() + 1
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, &n) in self.layer_sizes().iter().enumerate() {
            let what = if i == 0 {
                "input size".to_string()
            } else if i == self.hidden.len() + 1 {
                "output size".to_string()
            } else {
                format!("hidden layer {} size", i - 1)
            };
            anyhow::ensure!(n > 0, "{what} is zero: every layer needs at least one unit");
        }
        if self.loss == Loss::SoftmaxCrossEntropy {
            anyhow::ensure!(
                self.output >= 2,
                "cross-entropy needs at least 2 output classes, got {}",
                self.output
            );
        }
        for bn in std::iter::once(self.batch_norm)
            .chain(self.layer_batch_norms.iter().map(|&(_, bn)| bn))
            .flatten()
        {
            anyhow::ensure!(
                (0.0..=1.0).contains(&bn.momentum),
                "batch-norm momentum must be in [0, 1], got {}",
                bn.momentum
            );
            anyhow::ensure!(
                bn.eps.is_finite() && bn.eps > 0.0,
                "batch-norm eps must be a finite number > 0, got {}",
                bn.eps
            );
        }
        anyhow::ensure!(
            self.frozen_layers < self.num_layers(),
            "{} layers frozen but the model has {}: at least the output layer must train",
            self.frozen_layers,
            self.num_layers()
        );
        if let Some(k) = self.residual_every {
            anyhow::ensure!(
                k >= 1,
                "residual connections need a spacing k >= 1, got {k}"
            );
        }
        self.activation.validate()?;
        for &(l, act) in &self.layer_activations {
            anyhow::ensure!(
                l < self.hidden.len(),
                "layer_activation({l}, ..): the model has {} hidden layers (0 to {})",
                self.hidden.len(),
                self.hidden.len().saturating_sub(1)
            );
            act.validate()
                .map_err(|e| anyhow::anyhow!("hidden layer {l}: {e}"))?;
        }
        for &(l, src) in &self.layer_skips {
            anyhow::ensure!(
                l < self.hidden.len(),
                "layer_skip({l}, ..): the model has {} hidden layers (0 to {})",
                self.hidden.len(),
                self.hidden.len().saturating_sub(1)
            );
            if let Some(src) = src {
                anyhow::ensure!(
                    src <= l,
                    "hidden layer {l}'s skip connection reads {}, which is not below it",
                    if src == 0 {
                        "the network input".to_string()
                    } else {
                        format!("layer {}'s output", src - 1)
                    }
                );
            }
        }
        for &(l, _) in &self.layer_batch_norms {
            anyhow::ensure!(
                l < self.hidden.len(),
                "layer_batch_norm({l}, ..): the model has {} hidden layers (0 to {})",
                self.hidden.len(),
                self.hidden.len().saturating_sub(1)
            );
        }
        for &(layer, init) in &self.layer_inits {
            anyhow::ensure!(
                layer < self.num_layers(),
                "layer_init({layer}, ..): the model has {} linear layers (0 to {})",
                self.num_layers(),
                self.num_layers() - 1
            );
            init.validate()
                .map_err(|e| anyhow::anyhow!("layer {layer}: {e}"))?;
        }
        if let Some(init) = self.bias_init {
            init.validate()
                .map_err(|e| anyhow::anyhow!("bias init: {e}"))?;
        }
        self.validate_training()?;
        self.init.validate()
    }

    /// Parameters and accumulators that every compiled plan of this model shares, with
    /// their initial values. Names follow PyTorch's `state_dict()` of a module holding
    /// an `nn.ModuleList` named `layers` whose blocks have a `linear` attribute.
    pub fn persistent(&self) -> Vec<PersistentDesc> {
        let sizes = self.layer_sizes();
        let mut out = Vec::new();
        for l in 0..self.num_layers() {
            let (fan_in, fan_out) = (sizes[l], sizes[l + 1]);
            // Each layer gets its own stream so inserting a layer leaves the others unchanged.
            let layer_seed = self
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(l as u64 + 1);
            out.push(PersistentDesc {
                name: format!("layers.{l}.linear.weight"),
                shape: vec![fan_out, fan_in],
                init: self.init_of_layer(l).sample(
                    self.activation_of(l),
                    fan_in,
                    fan_out,
                    layer_seed,
                ),
                kind: PersistentKind::Param,
            });
            out.push(PersistentDesc {
                name: format!("layers.{l}.linear.bias"),
                shape: vec![fan_out],
                init: match self.bias_init {
                    // A stream apart from the weight's, so adding a bias init leaves
                    // the weights as they were.
                    Some(init) => init.sample_bias(
                        self.activation_of(l),
                        fan_in,
                        fan_out,
                        layer_seed ^ 0xB1A5_B1A5_B1A5_B1A5,
                    ),
                    None => vec![0.0; fan_out],
                },
                kind: PersistentKind::Param,
            });
            let hidden = l < self.hidden.len();
            if hidden && self.batch_norm_of(l).is_some() {
                // PyTorch's BatchNorm1d starts at γ = 1, β = 0, running mean 0, variance 1.
                for (what, value, kind) in [
                    ("weight", 1.0, PersistentKind::Param),
                    ("bias", 0.0, PersistentKind::Param),
                    ("running_mean", 0.0, PersistentKind::Buffer),
                    ("running_var", 1.0, PersistentKind::Buffer),
                ] {
                    out.push(PersistentDesc {
                        name: format!("layers.{l}.bn.{what}"),
                        shape: vec![fan_out],
                        init: vec![value; fan_out],
                        kind,
                    });
                }
            }
            if let Some(src) = self.skip_source(l) {
                if sizes[src] != fan_out {
                    // A linear map: LeCun normal keeps the variance of what it carries.
                    let seed = layer_seed ^ 0x005E_ED0F_5C1F;
                    out.push(PersistentDesc {
                        name: format!("layers.{l}.proj.weight"),
                        shape: vec![fan_out, sizes[src]],
                        init: Init::LecunNormal.sample(
                            self.activation_of(l),
                            sizes[src],
                            fan_out,
                            seed,
                        ),
                        kind: PersistentKind::Param,
                    });
                }
            }
            if let Activation::Prelu { per_unit, init } = self.activation_of(l) {
                if l + 1 < self.num_layers() {
                    let units = if per_unit { fan_out } else { 1 };
                    out.push(PersistentDesc {
                        name: prelu_weight_name(l),
                        shape: vec![units],
                        init: vec![init; units],
                        kind: PersistentKind::Param,
                    });
                }
            }
        }
        let state = self.training_state(&out);
        out.extend(state);
        out.push(PersistentDesc {
            name: STEP_SLOT_NAME.to_string(),
            shape: vec![1],
            init: vec![0.0],
            kind: PersistentKind::Internal,
        });
        out.push(PersistentDesc {
            name: METRICS_SLOT_NAME.to_string(),
            shape: vec![METRICS_LEN],
            init: vec![0.0; METRICS_LEN],
            kind: PersistentKind::Internal,
        });
        // Last, so it has a flag for every slot before it (see `graph::stats`).
        out.push(crate::model::health::layout::guard_desc(
            self.num_layers(),
            out.len(),
        ));
        out
    }

    /// Zero-initialised optimizer state for every parameter in `params`, and the gradient
    /// norm when clipping by norm.
    fn training_state(&self, params: &[PersistentDesc]) -> Vec<PersistentDesc> {
        let zeros = |name: String, shape: &[usize], kind| PersistentDesc {
            name,
            shape: shape.to_vec(),
            init: vec![0.0; shape.iter().product()],
            kind,
        };
        let mut out = Vec::new();
        for p in params.iter().filter(|p| p.kind == PersistentKind::Param) {
            for st in self.optimizer.state() {
                let shape: &[usize] = if st.scalar { &[1] } else { &p.shape };
                out.push(PersistentDesc {
                    name: format!("{}.{}", p.name, st.key),
                    shape: shape.to_vec(),
                    init: vec![st.init; shape.iter().product()],
                    kind: PersistentKind::OptimizerState,
                });
            }
        }
        if let Some(Clip::Norm(_)) = self.clip {
            out.push(zeros(
                GRAD_NORM_SLOT_NAME.to_string(),
                &[1],
                PersistentKind::Internal,
            ));
        }
        out
    }
}

pub(crate) const METRICS_SLOT_NAME: &str = "metrics";
/// The total gradient norm before clipping, from the last training step.
pub(crate) const GRAD_NORM_SLOT_NAME: &str = "state.grad_norm";
/// Training steps taken, as `u32` bits (see `Op::AdvanceStep`).
pub(crate) const STEP_SLOT_NAME: &str = "state.step";

/// PReLU's slope of hidden layer `l`: `nn.PReLU`'s `weight` under a block attribute `act`.
pub(crate) fn prelu_weight_name(l: usize) -> String {
    format!("layers.{l}.act.weight")
}

/// RReLU's random stream for layer `l`: a fixed tag plus the layer, so layers draw
/// independent slopes and the streams stay apart from other users of the RNG.
pub(crate) fn rrelu_stream(l: usize) -> u32 {
    0x5252_4C55u32.wrapping_add(l as u32)
}
