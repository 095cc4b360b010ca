//! Every op a plan can run, one folder per family: `mod.rs` holds the op structs (what
//! they read and write, their lengths, their checks), `cpu.rs` the plain reference loops,
//! `wgpu.rs` the lowering to the family's kernels in `shaders/`.
//!
//! | family | ops | kernels |
//! |---|---|---|
//! | [`matmul`] | [`MatMul`] | `shaders/matmul/` |
//! | [`bias`] | [`AddBias`], [`SumRows`], [`SumRowsGroup`] | `shaders/bias.wgsl`, `shaders/bias_group.wgsl` |
//! | [`activation`] | [`Activate`], [`ActivateBackward`], [`RreluTrain`], [`RreluTrainBackward`], [`Prelu`], [`PreluBackward`] | `shaders/activation/` |
//! | [`loss`] | [`LossGrad`], [`LossEval`], [`AccumulateMetrics`] | `shaders/loss.wgsl` |
//! | [`batch_norm`] | [`BatchNormTrain`], [`BatchNormEval`], [`BatchNormBackward`], [`BatchNormStats`], [`BatchNormApply`], [`BatchNormGradSums`], [`BatchNormGradApply`] | `shaders/batch_norm.wgsl` |
//! | [`elementwise`] | [`Add`], [`Accumulate`] | `shaders/elementwise.wgsl` |
//! | [`optim`] | [`AdvanceStep`], [`Sgd`], [`SgdGroup`], [`Adam`], [`Rmsprop`], [`Adagrad`], [`Adamax`], [`NadamMuProduct`], [`Nadam`] | `shaders/optim.wgsl`, `shaders/optim_group.wgsl` |
//! | [`clip`] | [`NormPartials`], [`ClipCoef`], [`ScaleBy`], [`ClampValue`] | `shaders/clip.wgsl` |
//! | [`dropout`] | [`Dropout`] | `shaders/dropout.wgsl` |
//! | [`regularize`] | [`PenaltyGrad`], [`MaxNorm`] | `shaders/regularize.wgsl` |
//! | [`health`] | [`ActivationStats`], [`Norm`], [`CopyInto`], [`GuardFinite`] | `shaders/health/` |
//!
//! Each op struct implements [`Operation`]; [`Op`] only forwards to it.

pub mod activation;
pub mod batch_norm;
pub mod bias;
pub mod clip;
pub mod dropout;
pub mod elementwise;
pub mod health;
mod host;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod regularize;
pub mod rng;

pub use activation::{
    Activate, ActivateBackward, Activation, Prelu, PreluBackward, RreluTrain, RreluTrainBackward,
};
pub use batch_norm::{
    BatchNormApply, BatchNormBackward, BatchNormEval, BatchNormGradApply, BatchNormGradSums,
    BatchNormStats, BatchNormTrain,
};
pub use bias::{AddBias, ColumnSum, SumRows, SumRowsGroup, SUM_ROWS_GROUP};
pub use clip::{ClampValue, ClipCoef, NormPartials, ScaleBy, NORM_BLOCK};
pub use dropout::{dropout_scale, Dropout};
pub use elementwise::{Accumulate, Add};
pub use health::{ActivationStats, CopyInto, GuardFinite, Norm};
pub use host::Host;
pub use loss::{target_len, AccumulateMetrics, Loss, LossEval, LossGrad, METRICS_LEN};
pub use matmul::MatMul;
pub use optim::{
    Adagrad, Adam, Adamax, AdvanceStep, Momentum, Nadam, NadamMuProduct, Rmsprop, Sgd, SgdGroup,
    SGD_GROUP,
};
pub use regularize::{MaxNorm, PenaltyGrad};

use crate::device::{Dispatch, Lowerer, ShaderTable, Step};
use crate::tensor::TensorId;
use anyhow::Result;

/// What every op provides: its operands, its checks, its CPU reference and its lowering.
pub trait Operation {
    /// Tensors the op reads.
    fn reads(&self) -> Vec<TensorId>;
    /// Tensors the op writes, each once.
    fn writes(&self) -> Vec<TensorId>;
    /// Tensors the op reads and writes through the same operand by design (in-place
    /// updates); any other tensor both read and written is an aliasing error.
    fn in_place(&self) -> Vec<TensorId> {
        Vec::new()
    }
    /// Elements each operand must hold, checked against the tensor table at compile time.
    fn lens(&self) -> Vec<(TensorId, usize)>;
    /// Checks the op's constants (probabilities, decay rates, offsets into a larger
    /// tensor), which the tensor table cannot, so a bad hand-built plan is an error
    /// rather than a panic or an out-of-bounds write.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// A short description for dispatch labels and errors.
    fn label(&self) -> String {
        let name = std::any::type_name::<Self>();
        name.rsplit("::").next().unwrap_or(name).to_string()
    }
    /// Runs the op on the CPU reference backend.
    fn run_cpu(&self, host: &mut Host) -> Result<()>;
    /// The op as one dispatch over whole tensors.
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch>;
    /// The op as several dispatches over windows of its tensors, called when one of them
    /// exceeds the largest storage binding ([`Lowerer::big`]). Ops that cannot be split
    /// refuse, naming the tensor.
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        Err(lw.refuse(""))
    }
    /// The op fused with the ops after it into one kernel, with the extra steps that
    /// kernel needs, and how many ops it covers; `None` where this op has no such kernel
    /// on this adapter.
    fn lower_fused(
        &self,
        _lw: &mut Lowerer,
        _following: &[Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        Ok(None)
    }
}

/// Declares [`Op`] with one variant per op struct, each forwarding to its [`Operation`].
macro_rules! ops {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// One kernel launch: any op of any family. Shapes are in elements; all matrices
        /// are row-major.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($(#[$doc])* $name($name),)*
        }

        $(impl From<$name> for Op {
            fn from(op: $name) -> Op {
                Op::$name(op)
            }
        })*

        impl Op {
            fn get(&self) -> &dyn Operation {
                match self {
                    $(Op::$name(op) => op,)*
                }
            }
        }
    };
}

ops! {
    MatMul,
    AddBias,
    SumRows,
    SumRowsGroup,
    Activate,
    ActivateBackward,
    RreluTrain,
    RreluTrainBackward,
    Prelu,
    PreluBackward,
    LossGrad,
    LossEval,
    AccumulateMetrics,
    BatchNormTrain,
    BatchNormEval,
    BatchNormBackward,
    BatchNormStats,
    BatchNormApply,
    BatchNormGradSums,
    BatchNormGradApply,
    Add,
    Accumulate,
    AdvanceStep,
    Sgd,
    SgdGroup,
    Adam,
    Rmsprop,
    Adagrad,
    Adamax,
    NadamMuProduct,
    Nadam,
    NormPartials,
    ClipCoef,
    ScaleBy,
    ClampValue,
    Dropout,
    PenaltyGrad,
    MaxNorm,
    CopyInto,
    ActivationStats,
    Norm,
    GuardFinite,
}

impl Op {
    /// Tensors the op reads and the ones it writes, for validation and hazard checks.
    pub fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (self.get().reads(), self.get().writes())
    }
    pub fn in_place(&self) -> Vec<TensorId> {
        self.get().in_place()
    }
    pub fn lens(&self) -> Vec<(TensorId, usize)> {
        self.get().lens()
    }
    pub fn check(&self) -> Result<()> {
        self.get().check()
    }
    pub fn label(&self) -> String {
        self.get().label()
    }
    pub fn run_cpu(&self, host: &mut Host) -> Result<()> {
        self.get().run_cpu(host)
    }
    pub fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        self.get().lower(lw)
    }
    pub fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        self.get().lower_split(lw)
    }
    pub fn lower_fused(
        &self,
        lw: &mut Lowerer,
        following: &[Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        self.get().lower_fused(lw, following)
    }
}

/// Every kernel module the engine can build, with the binding table and uniform layouts
/// it is lowered against, for the test that checks them against the WGSL with naga.
pub fn shader_tables() -> Vec<ShaderTable> {
    [
        matmul::wgpu::tables(),
        bias::wgpu::tables(),
        bias::group::tables(),
        activation::wgpu::tables(),
        loss::wgpu::tables(),
        batch_norm::wgpu::tables(),
        elementwise::wgpu::tables(),
        optim::wgpu::tables(),
        optim::group::tables(),
        clip::wgpu::tables(),
        dropout::wgpu::tables(),
        regularize::wgpu::tables(),
        health::wgpu::tables(),
    ]
    .concat()
}
