//! Tensors as a plan names them: ids into a table of shapes, and where their storage lives.
//! The bottom layer: the ops, the plan and both backends build on it.

/// Index into a plan's tensor table.
pub type TensorId = usize;

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

/// Hyper-parameters that may change between steps without recompiling (learning-rate
/// schedules). Stored in one small device buffer; indices are fixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f32,
    /// One-cycle's momentum of this step, replacing the compiled-in momentum of SGD and
    /// RMSprop and beta1 of Adam, AdamW, Adamax and NAdam; `None` keeps those.
    pub momentum: Option<f32>,
}

impl Hyper {
    pub const LEN: usize = 4;

    /// Only a learning rate; every other constant as compiled.
    pub fn lr(lr: f32) -> Self {
        Hyper { lr, momentum: None }
    }

    /// `[lr, momentum, ln momentum, 1 when the momentum replaces the compiled one]`; the
    /// logarithm, for Adam's bias correction, is taken in f64 as the compiled one is.
    pub fn to_array(self) -> [f32; Self::LEN] {
        match self.momentum {
            None => [self.lr, 0.0, 0.0, 0.0],
            Some(m) => {
                let ln = if m > 0.0 { (m as f64).ln() as f32 } else { 0.0 };
                [self.lr, m, ln, 1.0]
            }
        }
    }
}
