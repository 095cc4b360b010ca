//! The specification of a multilayer perceptron and its validation.

use crate::graph::{Activation, Loss, PersistentDesc, PersistentKind, METRICS_LEN};
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
                    .init
                    .sample(self.activation, fan_in, fan_out, layer_seed),
                kind: PersistentKind::Param,
            });
            out.push(PersistentDesc {
                name: format!("layers.{l}.linear.bias"),
                shape: vec![fan_out],
                init: vec![0.0; fan_out],
                kind: PersistentKind::Param,
            });
        }
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
        out
    }
}

pub(crate) const METRICS_SLOT_NAME: &str = "metrics";
/// Training steps taken, as `u32` bits (see `Op::AdvanceStep`).
pub(crate) const STEP_SLOT_NAME: &str = "state.step";
