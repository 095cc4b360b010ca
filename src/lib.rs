//! steadygrad trains deep multilayer perceptrons on any GPU through wgpu compute shaders,
//! with a plain CPU reference backend that computes the same plan for checking.
//!
//! * [`ops`]: every op, one folder per family (matmul, bias, activation, loss, batch_norm,
//!   elementwise, optim, clip, dropout, health), each with its CPU reference (`cpu.rs`)
//!   and its lowering to the family's kernels in `shaders/` (`wgpu.rs`).
//! * [`tensor`]: tensor ids and descriptions; [`graph`]: the plan (tensors and op lists).
//! * [`cpu`]: the reference backend; [`gpu`]: the wgpu backend's executor; [`device`]:
//!   the wgpu device, kernel cache and the tools ops lower with; [`backend`]: choosing one.
//! * [`model`]: the model specification, its lowering to a plan, initialisation and the
//!   training loop.
//! * [`check`]: GPU-versus-CPU comparison of one training step.
//! * [`data`]: datasets and the built-in synthetic data.
//! * [`distributed`]: data-parallel training across processes (MPI with the `mpi` feature).
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
//! let opts = FitOptions { epochs: 30, batch_size: 32, shuffle_seed: 3, drop_last: false };
//! model.fit(&train, Some(&valid), &opts, |r| println!("{r:?}"))?;
//! # Ok(()) }
//! ```

pub mod backend;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod distributed;
pub mod engine;
pub mod gpu;
pub mod graph;
pub mod health;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod proto;
pub mod tensor;

pub use backend::{create_engine, BackendChoice};
pub use check::{cross_check, CheckReport, Tolerance};
pub use data::Dataset;
pub use engine::Engine;
pub use model::{
    BatchNorm, BnPlacement, Clip, EpochReport, FitOptions, Init, LrSchedule, McPrediction, Metrics,
    MlpSpec, Model, NamedTensor, Optimizer, Regularizer,
};
pub use ops::{Activation, Loss};

/// Compiles the README's examples as doctests so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
