//! steadygrad trains deep multilayer perceptrons on any GPU through wgpu compute shaders,
//! with a plain CPU reference backend that computes the same plan for checking.
//!
//! * [`graph`]: the backend-neutral plan (tensors and ops) and the MLP lowering.
//! * [`cpu`]: the reference backend (plain loops).
//! * [`gpu`]: the wgpu backend; kernels live in `shaders/*.wgsl`.
//! * [`model`]: the model specification, initialisation and the training loop.
//! * [`check`]: GPU-versus-CPU comparison of one training step.
//! * [`data`]: datasets and the built-in synthetic data.
//!
//! ```no_run
//! use steadygrad::{data, Activation, BackendChoice, FitOptions, MlpSpec, Model, Optimizer};
//! # fn main() -> anyhow::Result<()> {
//! let all = data::synthetic::spirals(600, 3, 0.05, 1);
//! let (train, valid) = (all.slice(0, 1500), all.slice(1500, 1800));
//! let spec = MlpSpec::new(2, &[64; 8], 3).activation(Activation::Relu)
//!     .optimizer(Optimizer::sgd(0.05)).seed(42);
//! let mut model = Model::with_backend(spec, &BackendChoice::Auto)?;
//! println!("running on {}", model.device());
//! let opts = FitOptions { epochs: 30, batch_size: 32, shuffle_seed: 3 };
//! model.fit(&train, Some(&valid), &opts, |r| println!("{r:?}"))?;
//! # Ok(()) }
//! ```

pub mod check;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod diag;
pub mod engine;
pub mod gpu;
pub mod graph;
pub mod model;

pub use check::{cross_check, CheckReport, Tolerance};
pub use data::Dataset;
pub use engine::{create_engine, BackendChoice, Engine};
pub use graph::{Activation, Loss};
pub use model::{
    BatchNorm, BnPlacement, Clip, EpochReport, FitOptions, Init, LrSchedule, Metrics, MlpSpec,
    Model, NamedTensor, Optimizer,
};

/// Compiles the README's examples as doctests so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
