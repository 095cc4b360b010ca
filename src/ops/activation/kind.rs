//! The activation kinds: names, parameters, the kernel id that selects each in
//! `shaders/activation/functions.wgsl`, and the facts other parts read (recommended
//! init, saturation bounds, fusability). [`Activation::ALL`] is the one list of kinds.

use std::fmt;

/// The weight initialisations an activation can recommend (`crate::model::Init` has them
/// all, with their parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitScheme {
    GlorotUniform,
    HeNormal,
    LecunNormal,
}

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
    /// SiLU or Swish, `x·σ(x)` (`torch.nn.SiLU`).
    Silu,
    /// `x·tanh(softplus(x))` (`torch.nn.Mish`).
    Mish,
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
    pub const ALL: [Activation; 14] = [
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
        Activation::Silu,
        Activation::Mish,
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
            Activation::Silu => "silu",
            Activation::Mish => "mish",
        }
    }

    /// The WGSL `ACT` value selecting this kind in `shaders/activation/functions.wgsl`.
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
            Activation::Silu => 11,
            Activation::Mish => 12,
        }
    }

    /// Names of the parameters `name:P1:P2` sets, in order (see `FromStr`).
    pub fn param_names(self) -> &'static [&'static str] {
        match self {
            Activation::LeakyRelu { .. } => &["SLOPE"],
            Activation::Rrelu { .. } => &["LOWER", "UPPER"],
            Activation::Prelu { .. } => &["INIT"],
            Activation::Elu { .. } => &["ALPHA"],
            _ => &[],
        }
    }

    /// Whether the texture matmul's epilogue applies this activation itself (a layer's
    /// matmul, bias and activation then run as one kernel): the kinds without parameters,
    /// which `functions.wgsl` computes from `ACT` alone.
    pub fn fusable(self) -> bool {
        self.param_names().is_empty()
    }

    /// The weight initialisation that keeps activations' variance steady through depth
    /// with this kind (`Init::default_for`): He for the ReLU family and the functions
    /// that behave like it for large inputs (ELU, GELU, SiLU, Mish); LeCun for SELU, whose
    /// self-normalizing fixed point assumes it; Glorot for the functions that are linear
    /// around 0.
    pub fn recommended_init(self) -> InitScheme {
        match self {
            Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Rrelu { .. }
            | Activation::Prelu { .. }
            | Activation::Elu { .. }
            | Activation::Gelu
            | Activation::GeluTanh
            | Activation::Silu
            | Activation::Mish => InitScheme::HeNormal,
            Activation::Selu => InitScheme::LecunNormal,
            Activation::Identity | Activation::Sigmoid | Activation::Tanh => {
                InitScheme::GlorotUniform
            }
        }
    }

    /// The output range of kinds that saturate (their derivative vanishes towards both
    /// bounds), for the gradient-health statistics.
    pub fn output_bounds(self) -> Option<(f32, f32)> {
        match self {
            Activation::Sigmoid => Some((0.0, 1.0)),
            Activation::Tanh => Some((-1.0, 1.0)),
            _ => None,
        }
    }

    /// Whether a finite input always gives a finite output: `|f(x)|` is bounded or at most
    /// `max(|x|, c)` with slopes ≤ 1 (the ReLU family with slopes that validation keeps ≤ 1
    /// is checked by `validate`'s ranges; ELU is `x` above 0 and above `-alpha` below).
    /// Not SELU (its scale 1.0507 can push `|x|` near `f32::MAX` over it) nor PReLU (its
    /// slope is learned). The non-finite guard watches an activation's output only where
    /// this is false; elsewhere the output goes bad exactly when its input did.
    pub fn keeps_finite(self) -> bool {
        match self {
            Activation::Selu | Activation::Prelu { .. } => false,
            Activation::LeakyRelu { slope } => slope.abs() <= 1.0,
            Activation::Rrelu { lower, upper } => lower.abs() <= 1.0 && upper.abs() <= 1.0,
            _ => true,
        }
    }

    /// The syntax `FromStr` accepts, for error messages and `--help`, from [`Self::ALL`].
    pub fn syntax() -> String {
        Activation::ALL
            .iter()
            .map(|a| {
                let params: String = a.param_names().iter().map(|p| format!(":{p}")).collect();
                if params.is_empty() {
                    a.name().to_string()
                } else {
                    format!("{}[{params}]", a.name())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
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
                anyhow::anyhow!(
                    "unknown activation '{s}'; expected one of: {}",
                    Activation::syntax()
                )
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
                "activation '{s}': {} takes {}, got {} parameter(s); expected one of: {}",
                a.name(),
                match a.param_names() {
                    [] => "no parameters".to_string(),
                    [_] => format!("one parameter ({})", a.param_names()[0].to_lowercase()),
                    names => format!("two parameters ({})", names.join(":").to_lowercase()),
                },
                p.len(),
                Activation::syntax()
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
