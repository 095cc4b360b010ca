//! Gradient health: per-layer statistics gathered on the device every N steps, detectors
//! for vanishing and exploding gradients and dying ReLUs with advice fitted to the model,
//! the non-finite stop, metric logs, progress bars, plots, and the vanishing-gradient
//! experiment.
//!
//! Turn statistics on with [`crate::Model::gather_stats_every`]; records arrive in
//! [`crate::Model::stats_history`] a few steps after they were taken, without stalling
//! the device (see `model::health::layout` for what a statistics step computes).

pub mod detect;
pub mod experiment;
pub mod log;
pub mod plot;
pub mod progress;
pub mod remedy;
pub mod report;
pub mod spike;
pub mod table;
pub mod tensorboard;

pub use detect::{detect, detect_run, DetectorConfig, Warning, WarningKind};

pub use crate::model::health::histogram::{Histogram, HistogramKind, StepHistograms};
pub use crate::model::health::{
    LayerStats, NonFiniteError, Observers, StepProgress, StepStats, TrainObserver,
};
