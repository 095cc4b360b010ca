//! What a model is (its specification and initial weights) and the user-facing handle
//! that trains it on either backend.

pub mod early_stopping;
pub mod health;
pub mod import;
pub mod init;
pub mod lower;
pub mod optim;
pub mod plateau;
pub mod regularize;
pub mod schedule;
pub mod spec;
pub mod trainer;

pub use init::Init;
pub use optim::{Clip, LrSchedule};
pub use regularize::Regularizer;
pub use spec::{BatchNorm, BnPlacement, MlpSpec, Optimizer};
pub use trainer::mc::McPrediction;
pub use trainer::{EpochReport, FitOptions, Metrics, Model, NamedTensor};
