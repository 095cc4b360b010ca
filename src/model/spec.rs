//! The specification of a multilayer perceptron and its validation.

use crate::graph::{Activation, Loss, PersistentDesc, METRICS_LEN};
use crate::model::Init;

/// The optimizer that updates parameters each step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// Plain stochastic gradient descent, `p -= lr·g` (`torch.optim.SGD` without momentum).
    Sgd { lr: f32 },
}

impl Optimizer {
    pub fn lr(self) -> f32 {
        match self {
            Optimizer::Sgd { lr } => lr,
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
///     .optimizer(Optimizer::Sgd { lr: 0.05 })
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
}

impl MlpSpec {
    pub fn new(input: usize, hidden: &[usize], output: usize) -> Self {
        MlpSpec {
            input,
            hidden: hidden.to_vec(),
            output,
            activation: Activation::Relu,
            loss: Loss::SoftmaxCrossEntropy,
            optimizer: Optimizer::Sgd { lr: 0.01 },
            init: Init::Auto,
            layer_inits: Vec::new(),
            bias_init: None,
            seed: 0,
        }
    }
    pub fn activation(mut self, act: Activation) -> Self {
        self.activation = act;
        self
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

    /// `[input, hidden..., output]`.
    pub fn layer_sizes(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.hidden.len() + 2);
        v.push(self.input);
        v.extend_from_slice(&self.hidden);
        v.push(self.output);
        v
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
        let lr = self.optimizer.lr();
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0,
            "learning rate must be a finite number > 0, got {lr}"
        );
        self.activation.validate()?;
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
                init: self
                    .init_of_layer(l)
                    .sample(self.activation, fan_in, fan_out, layer_seed),
            });
            out.push(PersistentDesc {
                name: format!("layers.{l}.linear.bias"),
                shape: vec![fan_out],
                init: match self.bias_init {
                    // A stream apart from the weight's, so adding a bias init leaves
                    // the weights as they were.
                    Some(init) => init.sample_bias(
                        self.activation,
                        fan_in,
                        fan_out,
                        layer_seed ^ 0xB1A5_B1A5_B1A5_B1A5,
                    ),
                    None => vec![0.0; fan_out],
                },
            });
            if let Activation::Prelu { per_unit, init } = self.activation {
                if l + 1 < self.num_layers() {
                    let units = if per_unit { fan_out } else { 1 };
                    out.push(PersistentDesc {
                        name: prelu_weight_name(l),
                        shape: vec![units],
                        init: vec![init; units],
                    });
                }
            }
        }
        out.push(PersistentDesc {
            name: STEP_SLOT_NAME.to_string(),
            shape: vec![1],
            init: vec![0.0],
        });
        out.push(PersistentDesc {
            name: METRICS_SLOT_NAME.to_string(),
            shape: vec![METRICS_LEN],
            init: vec![0.0; METRICS_LEN],
        });
        out
    }
}

pub(crate) const METRICS_SLOT_NAME: &str = "metrics";
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
