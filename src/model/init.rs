//! Weight initialisation, computed on the host from the seed so both backends start from
//! bit-identical parameters.

use crate::ops::activation::InitScheme;
use crate::ops::Activation;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a linear layer's weight `[fan_out, fan_in]` is drawn. Fan-in and fan-out follow
/// PyTorch's `_calculate_fan_in_and_fan_out` for a 2-D weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// The activation's usual init (see [`Init::default_for`]): He for the ReLU family,
    /// ELU and GELU, LeCun normal for SELU, Glorot uniform for sigmoid, tanh and identity.
    Auto,
    /// `torch.nn.init.xavier_uniform_`: U(±√(6/(fan_in+fan_out))).
    GlorotUniform,
    /// `torch.nn.init.xavier_normal_`: N(0, 2/(fan_in+fan_out)).
    GlorotNormal,
    /// `torch.nn.init.kaiming_uniform_(a, nonlinearity='leaky_relu')`:
    /// U(±√(6/((1+a²)·fan_in))), where `a` is the activation's negative slope
    /// ([`Activation::negative_slope`]; 0 for ReLU and for activations outside its family,
    /// which gives `nonlinearity='relu'`).
    HeUniform,
    /// `torch.nn.init.kaiming_normal_(a, nonlinearity='leaky_relu')`: N(0, 2/((1+a²)·fan_in)),
    /// `a` as for [`Init::HeUniform`].
    HeNormal,
    /// U(±√(3/fan_in)), Keras' `lecun_uniform`.
    LecunUniform,
    /// N(0, 1/fan_in), Keras' `lecun_normal` without truncation.
    LecunNormal,
    /// N(mean, std²), e.g. N(0,1) to reproduce vanishing gradients with sigmoid.
    Normal { mean: f32, std: f32 },
    /// U(low, high).
    Uniform { low: f32, high: f32 },
}

/// Which variance rule an init follows: He's uniform and normal forms scale alike, so
/// swapping one for the other changes nothing a diagnosis cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitFamily {
    He,
    Glorot,
    Lecun,
    Other,
}

impl Init {
    pub fn family(self) -> InitFamily {
        match self {
            Init::HeNormal | Init::HeUniform => InitFamily::He,
            Init::GlorotNormal | Init::GlorotUniform => InitFamily::Glorot,
            Init::LecunNormal | Init::LecunUniform => InitFamily::Lecun,
            _ => InitFamily::Other,
        }
    }

    /// The initialisation `act` recommends ([`Activation::recommended_init`]).
    pub fn default_for(act: Activation) -> Init {
        match act.recommended_init() {
            InitScheme::GlorotUniform => Init::GlorotUniform,
            InitScheme::HeNormal => Init::HeNormal,
            InitScheme::LecunNormal => Init::LecunNormal,
        }
    }

    pub fn validate(self) -> anyhow::Result<()> {
        match self {
            Init::Normal { mean, std } => anyhow::ensure!(
                mean.is_finite() && std.is_finite() && std >= 0.0,
                "init normal(mean={mean}, std={std}): std must be finite and >= 0"
            ),
            Init::Uniform { low, high } => anyhow::ensure!(
                low.is_finite() && high.is_finite() && low <= high,
                "init uniform({low}, {high}): bounds must be finite with low <= high"
            ),
            _ => {}
        }
        Ok(())
    }

    /// Draws a `[fan_out, fan_in]` weight. Deterministic in `seed`.
    pub fn sample(self, act: Activation, fan_in: usize, fan_out: usize, seed: u64) -> Vec<f32> {
        self.sample_n(act, fan_in, fan_out, fan_in * fan_out, seed)
    }

    /// Draws the `[fan_out]` bias of a layer with the given fans: the same distribution
    /// (and scale) as its weight would have.
    pub fn sample_bias(
        self,
        act: Activation,
        fan_in: usize,
        fan_out: usize,
        seed: u64,
    ) -> Vec<f32> {
        self.sample_n(act, fan_in, fan_out, fan_out, seed)
    }

    fn sample_n(
        self,
        act: Activation,
        fan_in: usize,
        fan_out: usize,
        n: usize,
        seed: u64,
    ) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (fi, fo) = (fan_in as f64, fan_out as f64);
        // He's gain² 2/(1+a²) for a leaky slope a, as torch.nn.init.calculate_gain.
        let a = act.negative_slope().unwrap_or(0.0) as f64;
        let he = 2.0 / (1.0 + a * a);
        let uniform = |rng: &mut ChaCha8Rng, bound: f64| -> Vec<f32> {
            (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (mean + std * standard_normal(rng)) as f32)
                .collect()
        };
        match self {
            Init::Auto => Init::default_for(act).sample_n(act, fan_in, fan_out, n, seed),
            Init::GlorotUniform => uniform(&mut rng, (6.0 / (fi + fo)).sqrt()),
            Init::GlorotNormal => normal(&mut rng, 0.0, (2.0 / (fi + fo)).sqrt()),
            Init::HeUniform => uniform(&mut rng, (3.0 * he / fi).sqrt()),
            Init::HeNormal => normal(&mut rng, 0.0, (he / fi).sqrt()),
            Init::LecunUniform => uniform(&mut rng, (3.0 / fi).sqrt()),
            Init::LecunNormal => normal(&mut rng, 0.0, (1.0 / fi).sqrt()),
            Init::Normal { mean, std } => normal(&mut rng, mean as f64, std as f64),
            Init::Uniform { low, high } => (0..n)
                .map(|_| (low as f64 + (high as f64 - low as f64) * rng.random::<f64>()) as f32)
                .collect(),
        }
    }
}

impl std::fmt::Display for Init {
    /// The name [`Init::from_str`] parses back (normal/uniform with their parameters).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Init::Auto => f.write_str("auto"),
            Init::GlorotUniform => f.write_str("glorot-uniform"),
            Init::GlorotNormal => f.write_str("glorot-normal"),
            Init::HeUniform => f.write_str("he-uniform"),
            Init::HeNormal => f.write_str("he-normal"),
            Init::LecunUniform => f.write_str("lecun-uniform"),
            Init::LecunNormal => f.write_str("lecun-normal"),
            Init::Normal { mean, std } => write!(f, "normal:{mean}:{std}"),
            Init::Uniform { low, high } => write!(f, "uniform:{low}:{high}"),
        }
    }
}

impl std::str::FromStr for Init {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let lower = s.to_ascii_lowercase().replace('_', "-");
        let mut parts = lower.split(':');
        let head = parts.next().unwrap_or_default();
        let nums: Vec<f32> = parts
            .map(|p| {
                p.parse::<f32>()
                    .map_err(|_| anyhow::anyhow!("init '{s}': '{p}' is not a number"))
            })
            .collect::<anyhow::Result<_>>()?;
        match (head, nums.as_slice()) {
            ("normal", [mean, std]) => {
                return Ok(Init::Normal {
                    mean: *mean,
                    std: *std,
                })
            }
            ("uniform", [low, high]) => {
                return Ok(Init::Uniform {
                    low: *low,
                    high: *high,
                })
            }
            (_, []) => {}
            _ => anyhow::bail!(
                "init '{s}': only normal:MEAN:STD and uniform:LOW:HIGH take parameters"
            ),
        }
        Ok(match head {
            "auto" | "default" => Init::Auto,
            "glorot-uniform" | "xavier-uniform" => Init::GlorotUniform,
            "glorot-normal" | "xavier-normal" => Init::GlorotNormal,
            "he-uniform" | "kaiming-uniform" => Init::HeUniform,
            "he-normal" | "kaiming-normal" => Init::HeNormal,
            "lecun-uniform" => Init::LecunUniform,
            "lecun-normal" => Init::LecunNormal,
            "normal" | "std-normal" => Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
            _ => anyhow::bail!(
                "unknown init '{s}'; expected auto, glorot-uniform, glorot-normal, he-uniform, \
                 he-normal, lecun-uniform, lecun-normal, normal (N(0,1)), normal:MEAN:STD or \
                 uniform:LOW:HIGH"
            ),
        })
    }
}

/// Box–Muller; uses `1 - u` so the logarithm never sees zero.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
