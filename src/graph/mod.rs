//! The backend-neutral plan: a table of tensors and a list of ops over them.
//!
//! Both backends execute exactly this description: the CPU reference interprets each
//! [`Op`] with plain loops, the GPU backend turns each one into a compute dispatch. New
//! layers (batch norm, clipping, residuals, optimizers) add `Op` variants and plan-builder
//! code; the executors only need one new arm each.

pub mod mlp;
pub mod stats;

use std::fmt;

/// Index into [`Plan::tensors`].
pub type TensorId = usize;

/// Elementwise nonlinearities, with PyTorch's definitions and defaults (the `torch.nn`
/// module of the same name). Parameters are constants of the compiled kernels (WGSL
/// override constants), except PReLU's slope, which is a trained parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Sigmoid,
    Tanh,
    Relu,
    /// `x` for `x > 0`, else `slope·x` (`torch.nn.LeakyReLU(negative_slope=slope)`).
    LeakyRelu {
        slope: f32,
    },
    /// Leaky ReLU whose slope is drawn from U(lower, upper) per element and step in
    /// training and is the mean `(lower + upper) / 2` in evaluation (`torch.nn.RReLU`).
    Rrelu {
        lower: f32,
        upper: f32,
    },
    /// Leaky ReLU with a learned slope starting at `init`: one per layer, or one per unit
    /// when `per_unit` (`torch.nn.PReLU(num_parameters=1 or width, init)`).
    Prelu {
        per_unit: bool,
        init: f32,
    },
    /// `x` for `x > 0`, else `alpha·(eˣ − 1)` (`torch.nn.ELU(alpha)`).
    Elu {
        alpha: f32,
    },
    /// `scale·elu(x, alpha)` with the fixed constants of Klambauer et al. (`torch.nn.SELU`).
    Selu,
    /// `x·Φ(x)` with the exact normal CDF (`torch.nn.GELU(approximate='none')`).
    Gelu,
    /// `½x·(1 + tanh(√(2/π)·(x + 0.044715x³)))` (`torch.nn.GELU(approximate='tanh')`).
    GeluTanh,
}

/// SELU's constants, as in PyTorch (`torch.nn.SELU`), from Klambauer et al. 2017.
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_284_817_042_991_671_7;
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_493_419_334_985_294_6;

impl Activation {
    /// Each activation with PyTorch's default parameters.
    pub const LEAKY_RELU: Activation = Activation::LeakyRelu { slope: 0.01 };
    pub const RRELU: Activation = Activation::Rrelu {
        lower: 1.0 / 8.0,
        upper: 1.0 / 3.0,
    };
    pub const PRELU: Activation = Activation::Prelu {
        per_unit: false,
        init: 0.25,
    };
    pub const PRELU_UNIT: Activation = Activation::Prelu {
        per_unit: true,
        init: 0.25,
    };
    pub const ELU: Activation = Activation::Elu { alpha: 1.0 };

    /// Every kind, with default parameters.
    pub const ALL: [Activation; 12] = [
        Activation::Identity,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::LEAKY_RELU,
        Activation::RRELU,
        Activation::PRELU,
        Activation::PRELU_UNIT,
        Activation::ELU,
        Activation::Selu,
        Activation::Gelu,
        Activation::GeluTanh,
    ];

    /// The kind's name, without parameters (see `Display` for the full form).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky-relu",
            Activation::Rrelu { .. } => "rrelu",
            Activation::Prelu {
                per_unit: false, ..
            } => "prelu",
            Activation::Prelu { per_unit: true, .. } => "prelu-unit",
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu-tanh",
        }
    }

    /// The WGSL `ACT` override constant selecting this kind in `shaders/activation.wgsl`.
    pub fn kernel_id(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Sigmoid => 1,
            Activation::Tanh => 2,
            Activation::Relu => 3,
            Activation::LeakyRelu { .. } => 4,
            Activation::Rrelu { .. } => 5,
            Activation::Prelu { .. } => 6,
            Activation::Elu { .. } => 7,
            Activation::Selu => 8,
            Activation::Gelu => 9,
            Activation::GeluTanh => 10,
        }
    }

    /// The slope for `x <= 0` of the ReLU family where it is a constant of
    /// [`Op::Activate`]: 0 for ReLU, RReLU's mean slope (its evaluation mode), PReLU's
    /// initial slope (the learned one goes through [`Op::Prelu`]). `None` for the rest.
    /// Also the `a` of He initialisation's gain `√(2/(1+a²))`.
    pub fn negative_slope(self) -> Option<f32> {
        match self {
            Activation::Relu => Some(0.0),
            Activation::LeakyRelu { slope } => Some(slope),
            Activation::Rrelu { lower, upper } => Some((lower + upper) * 0.5),
            Activation::Prelu { init, .. } => Some(init),
            _ => None,
        }
    }

    /// Rejects parameters outside the activation's domain with a message naming them.
    pub fn validate(self) -> anyhow::Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        match self {
            Activation::LeakyRelu { slope } => anyhow::ensure!(
                ok(slope),
                "leaky-relu slope must be a finite number >= 0, got {slope}"
            ),
            Activation::Rrelu { lower, upper } => {
                anyhow::ensure!(
                    ok(lower) && ok(upper),
                    "rrelu bounds must be finite numbers >= 0, got lower {lower}, upper {upper}"
                );
                anyhow::ensure!(
                    lower <= upper,
                    "rrelu needs lower <= upper, got lower {lower} > upper {upper}"
                );
            }
            Activation::Prelu { init, .. } => anyhow::ensure!(
                ok(init),
                "{} initial slope must be a finite number >= 0, got {init}",
                self.name()
            ),
            Activation::Elu { alpha } => anyhow::ensure!(
                ok(alpha),
                "elu alpha must be a finite number >= 0, got {alpha}"
            ),
            _ => {}
        }
        Ok(())
    }
}

/// The syntax `FromStr` accepts, for error messages and `--help`.
pub const ACTIVATION_SYNTAX: &str = "identity, sigmoid, tanh, relu, leaky-relu[:SLOPE], \
     rrelu[:LOWER:UPPER], prelu[:INIT], prelu-unit[:INIT], elu[:ALPHA], selu, gelu, gelu-tanh";

/// Parses `name[:param[:param]]`, e.g. `leaky-relu:0.2` or `rrelu:0.1:0.3`; omitted
/// parameters take PyTorch's defaults. Names are case-insensitive, `_` may replace `-`.
impl std::str::FromStr for Activation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let lower = s.trim().to_ascii_lowercase().replace('_', "-");
        let mut parts = lower.split(':');
        let name = parts.next().unwrap_or_default();
        let base = Activation::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                anyhow::anyhow!("unknown activation '{s}'; expected one of: {ACTIVATION_SYNTAX}")
            })?;
        let params = parts
            .map(|p| {
                p.trim().parse::<f32>().map_err(|_| {
                    anyhow::anyhow!("activation '{s}': parameter '{p}' is not a number")
                })
            })
            .collect::<anyhow::Result<Vec<f32>>>()?;
        let act = match (base, params.as_slice()) {
            (a, []) => a,
            (Activation::LeakyRelu { .. }, &[slope]) => Activation::LeakyRelu { slope },
            (Activation::Rrelu { .. }, &[lower, upper]) => Activation::Rrelu { lower, upper },
            (Activation::Prelu { per_unit, .. }, &[init]) => Activation::Prelu { per_unit, init },
            (Activation::Elu { .. }, &[alpha]) => Activation::Elu { alpha },
            (a, p) => anyhow::bail!(
                "activation '{s}': {} takes {}, got {} parameter(s); expected one of: \
                 {ACTIVATION_SYNTAX}",
                a.name(),
                match a {
                    Activation::LeakyRelu { .. } => "one parameter (slope)",
                    Activation::Rrelu { .. } => "two parameters (lower:upper)",
                    Activation::Prelu { .. } => "one parameter (initial slope)",
                    Activation::Elu { .. } => "one parameter (alpha)",
                    _ => "no parameters",
                },
                p.len()
            ),
        };
        // One message, not a context chain: clap prints only the outermost layer.
        act.validate()
            .map_err(|e| anyhow::anyhow!("activation '{s}': {e}"))?;
        Ok(act)
    }
}

/// The full form `FromStr` reads back, e.g. `leaky-relu:0.2`.
impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Activation::LeakyRelu { slope } => write!(f, ":{slope}"),
            Activation::Rrelu { lower, upper } => write!(f, ":{lower}:{upper}"),
            Activation::Prelu { init, .. } => write!(f, ":{init}"),
            Activation::Elu { alpha } => write!(f, ":{alpha}"),
            _ => Ok(()),
        }
    }
}

/// Training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Mean over rows of `-log softmax(logits)[label]`, as `torch.nn.CrossEntropyLoss`.
    /// Targets are class indices stored as `f32` (one per row).
    SoftmaxCrossEntropy,
    /// Mean over all elements of `(pred - target)^2`, as `torch.nn.MSELoss`.
    MeanSquaredError,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "cross-entropy",
            Loss::MeanSquaredError => "mse",
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cross-entropy" | "crossentropy" | "ce" | "softmax-cross-entropy" => {
                Ok(Loss::SoftmaxCrossEntropy)
            }
            "mse" | "mean-squared-error" => Ok(Loss::MeanSquaredError),
            _ => anyhow::bail!("unknown loss '{s}'; expected 'cross-entropy' or 'mse'"),
        }
    }
}

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Owned by one compiled plan (activations, gradients, scratch).
    Local,
    /// Shared by every plan of a model: parameters, optimizer state, metric accumulators.
    /// The index is into the model's persistent table, see [`PersistentDesc`].
    Persistent(usize),
}

#[derive(Clone, Debug)]
pub struct TensorDesc {
    pub name: String,
    /// Logical shape, row-major. `len()` is its product.
    pub shape: Vec<usize>,
    pub storage: Storage,
}

impl TensorDesc {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a persistent tensor is for; decides whether it is trained, saved, or internal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PersistentKind {
    /// A trainable parameter (in PyTorch's `parameters()` and `state_dict()`).
    #[default]
    Param,
    /// Model state that is not trained but is saved, like batch-norm running statistics
    /// (PyTorch's registered buffers).
    Buffer,
    /// Optimizer state such as momentum or Adam moments.
    OptimizerState,
    /// Engine bookkeeping: metric accumulators, the step counter, gradient norms.
    Internal,
}

/// A tensor that outlives a single plan, with the values it starts from.
#[derive(Clone, Debug)]
pub struct PersistentDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Vec<f32>,
    pub kind: PersistentKind,
}

/// One kernel launch. Shapes are in elements; all matrices are row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `c[m,n] (+)= op(a) · op(b)` with `op(a)` of shape `[m,k]` (stored `[k,m]` when
    /// `trans_a`) and `op(b)` of shape `[k,n]` (stored `[n,k]` when `trans_b`). The
    /// transposed forms let backward compute `dX = dY·W` and `dW = dYᵀ·X` without
    /// materialising a transpose.
    MatMul {
        a: TensorId,
        b: TensorId,
        c: TensorId,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    },
    /// `y[r,c] += bias[c]`.
    AddBias {
        y: TensorId,
        bias: TensorId,
        rows: usize,
        cols: usize,
    },
    /// `out[c] (+)= Σ_r x[r,c]`: the bias gradient.
    SumRows {
        x: TensorId,
        out: TensorId,
        rows: usize,
        cols: usize,
        accumulate: bool,
    },
    /// `y = f(x)` elementwise.
    Activate {
        act: Activation,
        x: TensorId,
        y: TensorId,
        len: usize,
    },
    /// `dx = dy ⊙ f'(x)`, with `y = f(x)` supplied because sigmoid and tanh derive cheaply from it.
    ActivateBackward {
        act: Activation,
        x: TensorId,
        y: TensorId,
        dy: TensorId,
        dx: TensorId,
        len: usize,
    },
    /// RReLU in training: `y = x` for `x > 0`, else `a·x` with a fresh slope per element
    /// and step, `a = lower + (upper − lower)·rng_uniform(stream, step, i)`, `step` being
    /// the persistent step counter. Evaluation uses [`Op::Activate`] (the mean slope).
    RreluTrain {
        x: TensorId,
        y: TensorId,
        step: TensorId,
        stream: u32,
        lower: f32,
        upper: f32,
        len: usize,
    },
    /// `dx = dy ⊙ f'(x)` for [`Op::RreluTrain`], redrawing the slopes its forward pass drew
    /// from the same `(stream, step, i)` instead of storing them.
    RreluTrainBackward {
        x: TensorId,
        dy: TensorId,
        dx: TensorId,
        step: TensorId,
        stream: u32,
        lower: f32,
        upper: f32,
        len: usize,
    },
    /// PReLU: `y = x` for `x > 0`, else `weight[i mod units]·x`. `units` is 1 (one slope
    /// per layer) or the row width (one per unit of a row-major `[rows, units]` tensor).
    Prelu {
        x: TensorId,
        weight: TensorId,
        y: TensorId,
        len: usize,
        units: usize,
    },
    /// PReLU backward: `dx = dy·(x > 0 ? 1 : weight[i mod units])` and the slope gradient's
    /// per-element terms `dw_terms = dy·min(x, 0)`, which [`Op::SumRows`] then reduces
    /// over the batch (the same reduction as the bias gradient).
    PreluBackward {
        x: TensorId,
        weight: TensorId,
        dy: TensorId,
        dx: TensorId,
        dw_terms: TensorId,
        len: usize,
        units: usize,
    },
    /// Per-row loss and the gradient of the *mean* loss with respect to `pred`.
    /// Writes `row_loss[r]`, `row_correct[r]` (1 when argmax equals the label; 0 for MSE)
    /// and `dpred`.
    LossGrad {
        loss: Loss,
        pred: TensorId,
        target: TensorId,
        dpred: TensorId,
        row_loss: TensorId,
        row_correct: TensorId,
        rows: usize,
        cols: usize,
    },
    /// Per-row loss without the gradient (evaluation).
    LossEval {
        loss: Loss,
        pred: TensorId,
        target: TensorId,
        row_loss: TensorId,
        row_correct: TensorId,
        rows: usize,
        cols: usize,
    },
    /// `metrics += [Σ row_loss, Σ row_correct, rows]`, so metrics accumulate on the device
    /// and are read back only when the host asks.
    AccumulateMetrics {
        row_loss: TensorId,
        row_correct: TensorId,
        metrics: TensorId,
        rows: usize,
    },
    /// Batch normalization in training mode, per feature over the batch: normalizes `x`
    /// with the batch mean and biased variance, then scales by `gamma` and shifts by
    /// `beta`. Saves `mean` and `invstd = 1/√(var+eps)` for backward and updates the
    /// running statistics with `momentum`, using the unbiased variance as PyTorch does.
    BatchNormTrain {
        x: TensorId,
        y: TensorId,
        gamma: TensorId,
        beta: TensorId,
        mean: TensorId,
        invstd: TensorId,
        running_mean: TensorId,
        running_var: TensorId,
        rows: usize,
        cols: usize,
        momentum: f32,
        eps: f32,
    },
    /// Batch normalization in evaluation mode, with the running statistics.
    BatchNormEval {
        x: TensorId,
        y: TensorId,
        gamma: TensorId,
        beta: TensorId,
        running_mean: TensorId,
        running_var: TensorId,
        rows: usize,
        cols: usize,
        eps: f32,
    },
    /// The exact batch-norm backward through the batch statistics:
    /// `dx = γ·invstd/N · (N·dy − Σdy − x̂·Σ(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
    BatchNormBackward {
        x: TensorId,
        dy: TensorId,
        gamma: TensorId,
        mean: TensorId,
        invstd: TensorId,
        dx: TensorId,
        dgamma: TensorId,
        dbeta: TensorId,
        rows: usize,
        cols: usize,
    },
    /// `out = a + b` elementwise (a residual connection's sum).
    Add {
        a: TensorId,
        b: TensorId,
        out: TensorId,
        len: usize,
    },
    /// `y += x` elementwise: gradients meeting at a fork add up.
    Accumulate {
        x: TensorId,
        y: TensorId,
        len: usize,
    },
    /// Increments the training-step counter, a `u32` stored in the bits of an `f32`
    /// element. Kernels that need the step (random streams, bias correction) read it.
    AdvanceStep { counter: TensorId },
    /// `param -= lr · grad`, `lr` read from the hyper-parameter block.
    SgdStep {
        param: TensorId,
        grad: TensorId,
        len: usize,
    },
    /// `torch.optim.SGD` with dampening 0: `d = grad + weight_decay·param`, then with
    /// momentum `buf = μ·buf + d` and `d = d + μ·buf` (Nesterov) or `d = buf`, and finally
    /// `param -= lr·d`. The buffer starts at zero, so the first step sets `buf = d` exactly
    /// as torch's first-step clone does. [`Op::SgdStep`] is the case without either.
    Sgd {
        param: TensorId,
        grad: TensorId,
        len: usize,
        momentum: Option<Momentum>,
        weight_decay: f32,
    },
    /// `torch.optim.Adam` (`decoupled: false`, L2 decay added to the gradient) or
    /// `torch.optim.AdamW` (`decoupled: true`, `param *= 1 - lr·weight_decay` first), with
    /// bias correction from the device step counter `step` (see [`Op::AdvanceStep`]).
    Adam {
        param: TensorId,
        grad: TensorId,
        exp_avg: TensorId,
        exp_avg_sq: TensorId,
        step: TensorId,
        len: usize,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        decoupled: bool,
    },
    /// First stage of the global gradient norm: `groups` partial results of `x` into
    /// slots `first..first + groups` of `partials` (`slots` pairs in all). Partial `j`
    /// covers the [`NORM_BLOCK`]-element blocks `b` of `x` with `b mod groups = j` and is
    /// stored as a pair `(s, q)` standing for the sum of squares `s²·q`, where `s` is the
    /// largest magnitude: scaling by it keeps squares of huge gradients from overflowing.
    NormPartials {
        x: TensorId,
        len: usize,
        partials: TensorId,
        first: usize,
        groups: usize,
        slots: usize,
    },
    /// Combines all `slots` partial pairs into the total norm `√Σ‖g‖²` (written to
    /// `total_norm`) and `torch.nn.utils.clip_grad_norm_`'s coefficient
    /// `min(max_norm / (total + 1e-6), 1)` (written to `coef`).
    ClipCoef {
        partials: TensorId,
        slots: usize,
        total_norm: TensorId,
        coef: TensorId,
        max_norm: f32,
    },
    /// `x *= coef[0]` in place (applying the clip coefficient to one gradient).
    ScaleBy {
        x: TensorId,
        coef: TensorId,
        len: usize,
    },
    /// `x = clamp(x, -limit, limit)` in place, as `torch.nn.utils.clip_grad_value_`.
    ClampValue { x: TensorId, len: usize, limit: f32 },
    /// Inverted dropout: `y = x · keep / (1 - p)` with `keep = rng_uniform(stream, step, i)
    /// >= p`. The map is its own adjoint, so the backward pass is the same op applied to
    /// the output gradient with the same `(stream, step)`: it redraws the same mask.
    Dropout {
        x: TensorId,
        y: TensorId,
        step: TensorId,
        len: usize,
        p: f32,
        stream: u32,
    },
    /// `dst[offset..offset + len] = src` bit for bit: weight snapshots before the update on
    /// statistics steps, and the step counter into the statistics record.
    Copy {
        src: TensorId,
        dst: TensorId,
        len: usize,
        dst_len: usize,
        offset: usize,
    },
    /// Activation statistics of one layer, written to `stats[at..at + 5]` (see
    /// [`stats::ACT_STATS_LEN`]): mean and standard deviation of the finite elements of
    /// `out` (`[rows, cols]`), the fraction of dead units (columns where `act_in <= 0` in
    /// every row) when `dead`, the fraction of saturated elements of `act_out` (`<= lo` or
    /// `>= hi`) when `saturation = Some((lo, hi))`, and the count of non-finite elements.
    ActivationStats {
        out: TensorId,
        act_in: TensorId,
        act_out: TensorId,
        rows: usize,
        cols: usize,
        dead: bool,
        saturation: Option<(f32, f32)>,
        stats: TensorId,
        stats_len: usize,
        at: usize,
    },
    /// `stats[at] = ‖x − minus‖₂` (`‖x‖₂` without `minus`) over the finite differences,
    /// and `stats[at + 1]` = how many were not finite.
    Norm {
        x: TensorId,
        minus: Option<TensorId>,
        len: usize,
        stats: TensorId,
        stats_len: usize,
        at: usize,
    },
    /// The always-on non-finite guard: for each `(tensor, len, slot)` in `tensors` (one to
    /// [`stats::GUARD_GROUP`]) that holds a NaN or ±inf, records the current step (the
    /// `u32` counter in `step`) in `flags[slot]` as `u32::MAX - step` with an atomic max,
    /// so 0 means never and the earliest step wins. Several tensors share a dispatch
    /// because on small layers launching it costs more than the loads.
    GuardFinite {
        tensors: Vec<(TensorId, usize, usize)>,
        step: TensorId,
        flags: TensorId,
        flags_len: usize,
    },
}

/// Momentum state of [`Op::Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Momentum {
    pub buffer: TensorId,
    pub momentum: f32,
    pub nesterov: bool,
}

/// Elements per block of [`Op::NormPartials`]: the GPU kernel's workgroup size, fixed in
/// the op's definition so the CPU reference computes the same partials.
pub const NORM_BLOCK: usize = 256;

/// The multiplier of kept units in [`Op::Dropout`], computed once in `f32` so both backends
/// scale by the identical value.
pub fn dropout_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

impl Op {
    /// Tensors the op reads and the one(s) it writes, for validation and hazard checks.
    pub fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        match *self {
            Op::MatMul {
                a,
                b,
                c,
                accumulate,
                ..
            } => {
                let mut r = vec![a, b];
                if accumulate {
                    r.push(c);
                }
                (r, vec![c])
            }
            Op::AddBias { y, bias, .. } => (vec![y, bias], vec![y]),
            Op::SumRows {
                x, out, accumulate, ..
            } => {
                let mut r = vec![x];
                if accumulate {
                    r.push(out);
                }
                (r, vec![out])
            }
            Op::Activate { x, y, .. } => (vec![x], vec![y]),
            Op::ActivateBackward { x, y, dy, dx, .. } => (vec![x, y, dy], vec![dx]),
            Op::RreluTrain { x, y, step, .. } => (vec![x, step], vec![y]),
            Op::RreluTrainBackward {
                x, dy, dx, step, ..
            } => (vec![x, dy, step], vec![dx]),
            Op::Prelu { x, weight, y, .. } => (vec![x, weight], vec![y]),
            Op::PreluBackward {
                x,
                weight,
                dy,
                dx,
                dw_terms,
                ..
            } => (vec![x, weight, dy], vec![dx, dw_terms]),
            Op::LossGrad {
                pred,
                target,
                dpred,
                row_loss,
                row_correct,
                ..
            } => (vec![pred, target], vec![dpred, row_loss, row_correct]),
            Op::LossEval {
                pred,
                target,
                row_loss,
                row_correct,
                ..
            } => (vec![pred, target], vec![row_loss, row_correct]),
            Op::AccumulateMetrics {
                row_loss,
                row_correct,
                metrics,
                ..
            } => (vec![row_loss, row_correct, metrics], vec![metrics]),
            Op::SgdStep { param, grad, .. } => (vec![param, grad], vec![param]),
            Op::AdvanceStep { counter } => (vec![counter], vec![counter]),
            Op::BatchNormTrain {
                x,
                y,
                gamma,
                beta,
                mean,
                invstd,
                running_mean,
                running_var,
                ..
            } => (
                vec![x, gamma, beta, running_mean, running_var],
                vec![y, mean, invstd, running_mean, running_var],
            ),
            Op::BatchNormEval {
                x,
                y,
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => (vec![x, gamma, beta, running_mean, running_var], vec![y]),
            Op::BatchNormBackward {
                x,
                dy,
                gamma,
                mean,
                invstd,
                dx,
                dgamma,
                dbeta,
                ..
            } => (vec![x, dy, gamma, mean, invstd], vec![dx, dgamma, dbeta]),
            Op::Add { a, b, out, .. } => (vec![a, b], vec![out]),
            Op::Accumulate { x, y, .. } => (vec![x, y], vec![y]),
            Op::Sgd {
                param,
                grad,
                momentum,
                ..
            } => match momentum {
                Some(m) => (vec![param, grad, m.buffer], vec![param, m.buffer]),
                None => (vec![param, grad], vec![param]),
            },
            Op::Adam {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                step,
                ..
            } => (
                vec![param, grad, exp_avg, exp_avg_sq, step],
                vec![param, exp_avg, exp_avg_sq],
            ),
            Op::NormPartials { x, partials, .. } => (vec![x], vec![partials]),
            Op::ClipCoef {
                partials,
                total_norm,
                coef,
                ..
            } => (vec![partials], vec![total_norm, coef]),
            Op::ScaleBy { x, coef, .. } => (vec![x, coef], vec![x]),
            Op::ClampValue { x, .. } => (vec![x], vec![x]),
            Op::Dropout { x, y, step, .. } => (vec![x, step], vec![y]),
            Op::Copy { src, dst, .. } => (vec![src], vec![dst]),
            Op::ActivationStats {
                out,
                act_in,
                act_out,
                stats,
                ..
            } => (vec![out, act_in, act_out], vec![stats]),
            Op::Norm {
                x, minus, stats, ..
            } => {
                let mut r = vec![x];
                r.extend(minus);
                (r, vec![stats])
            }
            // The flags are updated atomically in place; listing them as read too would
            // flag the op as aliased.
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                ..
            } => {
                let mut r: Vec<TensorId> = tensors.iter().map(|t| t.0).collect();
                r.push(step);
                (r, vec![flags])
            }
        }
    }

    /// Checks an op's constants (probabilities, decay rates, partial-slot ranges), which
    /// the tensor table cannot, so a bad hand-built plan is an error rather than a panic.
    fn check_constants(&self) -> anyhow::Result<()> {
        let unit = |name: &str, v: f32| {
            anyhow::ensure!(
                (0.0..1.0).contains(&v),
                "op {self:?}: {name} must be in [0, 1), got {v}"
            );
            Ok(())
        };
        let non_negative = |name: &str, v: f32| {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "op {self:?}: {name} must be finite and >= 0, got {v}"
            );
            Ok(())
        };
        let positive = |name: &str, v: f32| {
            anyhow::ensure!(
                v.is_finite() && v > 0.0,
                "op {self:?}: {name} must be finite and > 0, got {v}"
            );
            Ok(())
        };
        match *self {
            Op::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                non_negative("weight_decay", weight_decay)?;
                if let Some(m) = momentum {
                    unit("momentum", m.momentum)?;
                }
            }
            Op::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                positive("eps", eps)?;
                non_negative("weight_decay", weight_decay)?;
            }
            Op::NormPartials {
                first,
                groups,
                slots,
                ..
            } => anyhow::ensure!(
                groups > 0 && first + groups <= slots,
                "op {self:?}: partial slots {first}..{} do not fit in {slots} slots",
                first + groups
            ),
            Op::ClipCoef { max_norm, .. } => positive("max_norm", max_norm)?,
            Op::ClampValue { limit, .. } => positive("limit", limit)?,
            Op::Dropout { p, .. } => unit("dropout probability", p)?,
            _ => {}
        }
        Ok(())
    }

    /// Elements each operand must hold, checked against the tensor table at compile time.
    fn required_lens(&self) -> Vec<(TensorId, usize)> {
        match *self {
            Op::MatMul {
                a, b, c, m, k, n, ..
            } => vec![(a, m * k), (b, k * n), (c, m * n)],
            Op::AddBias {
                y,
                bias,
                rows,
                cols,
            } => vec![(y, rows * cols), (bias, cols)],
            Op::SumRows {
                x, out, rows, cols, ..
            } => vec![(x, rows * cols), (out, cols)],
            Op::Activate { x, y, len, .. } => vec![(x, len), (y, len)],
            Op::ActivateBackward {
                x, y, dy, dx, len, ..
            } => vec![(x, len), (y, len), (dy, len), (dx, len)],
            Op::RreluTrain {
                x, y, step, len, ..
            } => vec![(x, len), (y, len), (step, 1)],
            Op::RreluTrainBackward {
                x,
                dy,
                dx,
                step,
                len,
                ..
            } => vec![(x, len), (dy, len), (dx, len), (step, 1)],
            Op::Prelu {
                x,
                weight,
                y,
                len,
                units,
            } => vec![(x, len), (weight, units), (y, len)],
            Op::PreluBackward {
                x,
                weight,
                dy,
                dx,
                dw_terms,
                len,
                units,
            } => vec![
                (x, len),
                (weight, units),
                (dy, len),
                (dx, len),
                (dw_terms, len),
            ],
            Op::LossGrad {
                loss,
                pred,
                target,
                dpred,
                row_loss,
                row_correct,
                rows,
                cols,
            } => vec![
                (pred, rows * cols),
                (target, target_len(loss, rows, cols)),
                (dpred, rows * cols),
                (row_loss, rows),
                (row_correct, rows),
            ],
            Op::LossEval {
                loss,
                pred,
                target,
                row_loss,
                row_correct,
                rows,
                cols,
            } => vec![
                (pred, rows * cols),
                (target, target_len(loss, rows, cols)),
                (row_loss, rows),
                (row_correct, rows),
            ],
            Op::AccumulateMetrics {
                row_loss,
                row_correct,
                metrics,
                rows,
            } => vec![
                (row_loss, rows),
                (row_correct, rows),
                (metrics, METRICS_LEN),
            ],
            Op::SgdStep { param, grad, len } => vec![(param, len), (grad, len)],
            Op::AdvanceStep { counter } => vec![(counter, 1)],
            Op::BatchNormTrain {
                x,
                y,
                gamma,
                beta,
                mean,
                invstd,
                running_mean,
                running_var,
                rows,
                cols,
                ..
            } => vec![
                (x, rows * cols),
                (y, rows * cols),
                (gamma, cols),
                (beta, cols),
                (mean, cols),
                (invstd, cols),
                (running_mean, cols),
                (running_var, cols),
            ],
            Op::BatchNormEval {
                x,
                y,
                gamma,
                beta,
                running_mean,
                running_var,
                rows,
                cols,
                ..
            } => vec![
                (x, rows * cols),
                (y, rows * cols),
                (gamma, cols),
                (beta, cols),
                (running_mean, cols),
                (running_var, cols),
            ],
            Op::BatchNormBackward {
                x,
                dy,
                gamma,
                mean,
                invstd,
                dx,
                dgamma,
                dbeta,
                rows,
                cols,
            } => vec![
                (x, rows * cols),
                (dy, rows * cols),
                (gamma, cols),
                (mean, cols),
                (invstd, cols),
                (dx, rows * cols),
                (dgamma, cols),
                (dbeta, cols),
            ],
            Op::Add { a, b, out, len } => vec![(a, len), (b, len), (out, len)],
            Op::Accumulate { x, y, len } => vec![(x, len), (y, len)],
            Op::Sgd {
                param,
                grad,
                len,
                momentum,
                ..
            } => {
                let mut v = vec![(param, len), (grad, len)];
                v.extend(momentum.map(|m| (m.buffer, len)));
                v
            }
            Op::Adam {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                step,
                len,
                ..
            } => vec![
                (param, len),
                (grad, len),
                (exp_avg, len),
                (exp_avg_sq, len),
                (step, 1),
            ],
            Op::NormPartials {
                x,
                len,
                partials,
                slots,
                ..
            } => vec![(x, len), (partials, 2 * slots)],
            Op::ClipCoef {
                partials,
                slots,
                total_norm,
                coef,
                ..
            } => vec![(partials, 2 * slots), (total_norm, 1), (coef, 1)],
            Op::ScaleBy { x, coef, len } => vec![(x, len), (coef, 1)],
            Op::ClampValue { x, len, .. } => vec![(x, len)],
            Op::Dropout {
                x, y, step, len, ..
            } => vec![(x, len), (y, len), (step, 1)],
            Op::Copy {
                src,
                dst,
                len,
                dst_len,
                ..
            } => vec![(src, len), (dst, dst_len)],
            Op::ActivationStats {
                out,
                act_in,
                act_out,
                rows,
                cols,
                stats,
                stats_len,
                ..
            } => vec![
                (out, rows * cols),
                (act_in, rows * cols),
                (act_out, rows * cols),
                (stats, stats_len),
            ],
            Op::Norm {
                x,
                minus,
                len,
                stats,
                stats_len,
                ..
            } => {
                let mut v = vec![(x, len), (stats, stats_len)];
                v.extend(minus.map(|m| (m, len)));
                v
            }
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                flags_len,
            } => {
                let mut v: Vec<(TensorId, usize)> = tensors.iter().map(|t| (t.0, t.1)).collect();
                v.extend([(step, 1), (flags, flags_len)]);
                v
            }
        }
    }

    /// Offsets into a larger tensor that the length table cannot check, so a bad
    /// hand-built plan is an error rather than an out-of-bounds write.
    fn check_offsets(&self) -> anyhow::Result<()> {
        let (end, len) = match *self {
            Op::Copy {
                len,
                dst_len,
                offset,
                ..
            } => (offset + len, dst_len),
            Op::ActivationStats { stats_len, at, .. } => (at + stats::ACT_STATS_LEN, stats_len),
            Op::Norm { stats_len, at, .. } => (at + stats::NORM_STATS_LEN, stats_len),
            Op::GuardFinite {
                ref tensors,
                flags_len,
                ..
            } => {
                anyhow::ensure!(
                    (1..=stats::GUARD_GROUP).contains(&tensors.len()),
                    "op {self:?} guards {} tensors; one dispatch takes 1 to {}",
                    tensors.len(),
                    stats::GUARD_GROUP
                );
                (
                    tensors.iter().map(|t| t.2 + 1).max().unwrap_or(0),
                    flags_len,
                )
            }
            _ => return Ok(()),
        };
        anyhow::ensure!(
            end <= len,
            "op {self:?} writes up to element {end} of a tensor of {len}"
        );
        Ok(())
    }
}

/// Elements of the target tensor for `rows` rows: one class index per row for
/// cross-entropy, a full row of values for MSE.
pub fn target_len(loss: Loss, rows: usize, cols: usize) -> usize {
    match loss {
        Loss::SoftmaxCrossEntropy => rows,
        Loss::MeanSquaredError => rows * cols,
    }
}

/// Layout of the metrics accumulator: `[loss sum, correct count, rows seen]`.
pub const METRICS_LEN: usize = 3;

/// Hyper-parameters that may change between steps without recompiling (learning-rate
/// schedules). Stored in one small device buffer; indices are fixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f32,
}

impl Hyper {
    pub const LEN: usize = 4;
    pub fn to_array(self) -> [f32; Self::LEN] {
        [self.lr, 0.0, 0.0, 0.0]
    }
}

/// Which op list to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Forward pass, loss and metrics; no gradients, no update.
    Eval,
    /// Forward, loss, backward and update: one training step.
    Train,
    /// Forward pass only (no targets needed).
    Predict,
    /// A training step that also gathers gradient-health statistics into
    /// [`Plan::stats`]; ordinary [`Stage::Train`] steps dispatch none of that work.
    TrainWithStats,
}

/// A compiled-once description of a computation for one batch size.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub tensors: Vec<TensorDesc>,
    /// The forward pass in evaluation mode (running statistics, no dropout, mean RReLU
    /// slopes) that produces `output` from `input`.
    pub forward: Vec<Op>,
    /// Loss and metrics, run after `forward` to evaluate.
    pub eval: Vec<Op>,
    /// A complete training step on its own: the training-mode forward pass, loss,
    /// backward pass and update.
    pub train: Vec<Op>,
    pub input: Option<TensorId>,
    pub target: Option<TensorId>,
    pub output: Option<TensorId>,
    /// The metrics accumulator (persistent).
    pub metrics: Option<TensorId>,
    /// Gradient tensor for each persistent parameter slot it updates: `(param, grad)`.
    pub grads: Vec<(TensorId, TensorId)>,
    /// Why this plan cannot train, when it cannot (batch norm with one row per batch);
    /// it can still predict and evaluate.
    pub train_error: Option<String>,
    /// Output tensor of each layer in the plan, by layer index (`None` for layers below
    /// the plan's first layer).
    pub layer_outputs: Vec<Option<TensorId>>,
    /// [`Plan::train`] with the statistics ops spliced in (see [`stats`]).
    pub train_stats: Vec<Op>,
    /// The statistics record that [`Stage::TrainWithStats`] writes (local).
    pub stats: Option<TensorId>,
    /// The persistent non-finite flags written by the guard in [`Plan::train`].
    pub guard: Option<TensorId>,
}

impl Plan {
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        storage: Storage,
    ) -> TensorId {
        self.tensors.push(TensorDesc {
            name: name.into(),
            shape: shape.to_vec(),
            storage,
        });
        self.tensors.len() - 1
    }

    pub fn ops(&self, stage: Stage) -> impl Iterator<Item = &Op> {
        let (head, tail): (&[Op], &[Op]) = match stage {
            Stage::Predict => (&self.forward, &[]),
            Stage::Eval => (&self.forward, &self.eval),
            Stage::Train => (&self.train, &[]),
            Stage::TrainWithStats => (&self.train_stats, &[]),
        };
        head.iter().chain(tail.iter())
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Checks every op against the tensor table: ids in range, sizes that match, no op
    /// reading and writing the same tensor through different operands, nothing empty.
    pub fn validate(&self, persistent: &[PersistentDesc]) -> anyhow::Result<()> {
        for (id, t) in self.tensors.iter().enumerate() {
            anyhow::ensure!(
                !t.is_empty(),
                "tensor {id} '{}' has zero elements (shape {:?})",
                t.name,
                t.shape
            );
            if let Storage::Persistent(slot) = t.storage {
                let p = persistent.get(slot).ok_or_else(|| {
                    anyhow::anyhow!(
                        "tensor '{}' refers to persistent slot {slot}, which does not exist",
                        t.name
                    )
                })?;
                anyhow::ensure!(
                    p.init.len() == t.len(),
                    "tensor '{}' has {} elements but persistent slot '{}' holds {}",
                    t.name,
                    t.len(),
                    p.name,
                    p.init.len()
                );
            }
        }
        let with_stats = self.train_stats.iter();
        for op in self
            .forward
            .iter()
            .chain(&self.eval)
            .chain(&self.train)
            .chain(with_stats)
        {
            op.check_constants()?;
            op.check_offsets()?;
            for (id, need) in op.required_lens() {
                let t = self.tensors.get(id).ok_or_else(|| {
                    anyhow::anyhow!("op {op:?} refers to tensor {id}, which does not exist")
                })?;
                anyhow::ensure!(
                    t.len() == need,
                    "op {op:?}: tensor '{}' has {} elements, the op needs {need}",
                    t.name,
                    t.len()
                );
            }
            if let Op::Prelu { len, units, .. } | Op::PreluBackward { len, units, .. } = *op {
                anyhow::ensure!(
                    units > 0 && len % units == 0,
                    "op {op:?}: {len} elements are not whole rows of {units} slope(s)"
                );
            }
            let (reads, writes) = op.reads_writes();
            for w in &writes {
                let own = usize::from(op_reads_own_output(op) || is_running_stat(op, *w));
                let aliased = reads.iter().filter(|r| *r == w).count() > own
                    || writes.iter().filter(|o| *o == w).count() > 1;
                anyhow::ensure!(
                    !aliased,
                    "op {op:?} reads tensor '{}' that it also writes",
                    self.tensors[*w].name
                );
                // Each output is produced once; the CPU backend takes each out of storage.
                anyhow::ensure!(
                    writes.iter().filter(|o| *o == w).count() == 1,
                    "op {op:?} writes tensor '{}' through two operands",
                    self.tensors[*w].name
                );
            }
        }
        Ok(())
    }
}

/// Running statistics are updated in place by the training-mode batch norm.
fn is_running_stat(op: &Op, t: TensorId) -> bool {
    matches!(op, Op::BatchNormTrain { running_mean, running_var, .. } if t == *running_mean || t == *running_var)
}

/// Ops whose output is also one of their inputs by design (in-place updates).
fn op_reads_own_output(op: &Op) -> bool {
    matches!(
        op,
        Op::AddBias { .. }
            | Op::SgdStep { .. }
            | Op::Sgd { .. }
            | Op::Adam { .. }
            | Op::ScaleBy { .. }
            | Op::ClampValue { .. }
            | Op::AccumulateMetrics { .. }
            | Op::AdvanceStep { .. }
            | Op::Accumulate { .. }
            | Op::MatMul {
                accumulate: true,
                ..
            }
            | Op::SumRows {
                accumulate: true,
                ..
            }
    )
}
