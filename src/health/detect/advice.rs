//! Unmeasured suggestions fitted to the model's configuration: what the textbooks
//! prescribe for each finding, leaving out what the model already does. `diagnose`
//! measures them (see `health::remedy`) before recommending any.

use crate::model::init::InitFamily;
use crate::model::{Init, LrSchedule, MlpSpec};
use crate::ops::Activation;

/// Remedies for a given model, each only when the model does not already do it.
pub(super) struct Advice<'a> {
    spec: &'a MlpSpec,
    /// The init the model actually uses (`auto` resolved).
    init: Init,
    suited: Init,
}

impl<'a> Advice<'a> {
    pub(super) fn new(spec: &'a MlpSpec) -> Self {
        let suited = Init::default_for(spec.activation);
        let init = match spec.init {
            Init::Auto => suited,
            other => other,
        };
        Advice { spec, init, suited }
    }

    fn init(&self) -> Option<String> {
        (self.init.family() != self.suited.family()).then(|| {
            let why = match self.suited.family() {
                InitFamily::He => "He scales weights by √(2/fan_in) so ReLU layers keep their variance",
                InitFamily::Lecun => "LeCun scales weights by √(1/fan_in), which SELU's self-normalisation assumes",
                _ => "Glorot scales weights by √(2/(fan_in+fan_out)) so signals neither shrink nor grow through the layer",
            };
            format!(
                "initialise the weights for {}: {} instead of {} (--init {}); {why}",
                self.spec.activation, self.suited, self.init, self.suited
            )
        })
    }

    fn saturating(&self) -> bool {
        self.spec.activation.output_bounds().is_some()
    }

    fn non_saturating(&self) -> Option<String> {
        self.saturating().then(|| {
            format!(
                "use a non-saturating activation: relu or elu with he-normal init \
                 (--activation relu --init he-normal), or selu with lecun-normal; {}'s \
                 derivative is at most {} and near zero when saturated, so gradients shrink \
                 at every layer",
                self.spec.activation,
                if self.spec.activation == Activation::Sigmoid {
                    "0.25"
                } else {
                    "1"
                }
            )
        })
    }

    fn batch_norm(&self) -> Option<String> {
        (!self.spec.has_batch_norm()).then(|| {
            "add batch normalization before each activation (--batch-norm before): it keeps \
             every layer's inputs at zero mean and unit variance"
                .to_string()
        })
    }

    fn residual(&self) -> Option<String> {
        self.spec.residual_every.is_none().then(|| {
            "add skip connections (--residual 2): they carry gradients past the layers that \
             shrink them"
                .to_string()
        })
    }

    fn leaky(&self) -> Option<String> {
        (self.spec.activation == Activation::Relu).then(|| {
            "use leaky ReLU or ELU (--activation leaky-relu or elu): units on the negative \
             side keep a gradient and can recover"
                .to_string()
        })
    }

    fn clip(&self) -> Option<String> {
        self.spec.clip.is_none().then(|| {
            "clip the gradient norm (--clip-norm 1): one bad batch can no longer throw the \
             weights far"
                .to_string()
        })
    }

    fn lower_lr(&self) -> Option<String> {
        let lr = self.spec.optimizer.lr();
        Some(format!(
            "lower the learning rate from {lr} to about {} (--lr {})",
            lr / 10.0,
            lr / 10.0
        ))
    }

    fn plateau(&self) -> Option<String> {
        (self.spec.schedule == LrSchedule::Constant).then(|| {
            "lower the learning rate when the validation loss stops improving (--schedule \
             plateau, torch's ReduceLROnPlateau): late epochs then take smaller steps"
                .to_string()
        })
    }

    /// A validation loss that rose: a schedule that lowers the rate once it stops
    /// improving, then what helps a run that diverges.
    pub(super) fn rising_validation(&self) -> Vec<String> {
        self.plateau().into_iter().chain(self.exploding()).collect()
    }

    pub(super) fn vanishing(&self) -> Vec<String> {
        [
            self.init(),
            self.non_saturating(),
            self.batch_norm(),
            self.residual(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub(super) fn exploding(&self) -> Vec<String> {
        [self.init(), self.batch_norm(), self.clip(), self.lower_lr()]
            .into_iter()
            .flatten()
            .collect()
    }

    pub(super) fn dying(&self) -> Vec<String> {
        [
            self.init(),
            self.leaky(),
            self.batch_norm(),
            self.lower_lr(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
