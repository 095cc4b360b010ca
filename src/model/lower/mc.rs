//! Monte Carlo dropout plans: the forward pass with dropout active (see [`build_mc`]).

use super::{build_with, dropout_stream};
use crate::graph::Plan;
use crate::model::MlpSpec;
use crate::tensor::PersistentDesc;

/// The local tensor a Monte Carlo plan reads its sample's mask counter from (a `u32` in
/// an `f32`'s bits, as the step counter).
pub const MC_SAMPLE_NAME: &str = "mc.sample";

/// As [`build`](super::build), but the forward pass (the `Predict` stage) keeps dropout active, as
/// Monte Carlo dropout asks (Gal & Ghahramani 2016; Keras's `training=True` on the
/// dropout layers only): batch norm stays in evaluation mode. The masks derive from
/// `seed` (see [`mc_dropout_stream`]) and the value the host writes to [`MC_SAMPLE_NAME`].
pub fn build_mc(
    spec: &MlpSpec,
    persistent: &[PersistentDesc],
    rows: usize,
    seed: u64,
) -> anyhow::Result<Plan> {
    build_with(spec, persistent, rows, 0, Some(seed), None)
}

/// The random stream of hidden layer `l`'s Monte Carlo dropout masks for `seed`: apart
/// from the training streams, so prediction never replays a training step's masks.
pub fn mc_dropout_stream(seed: u64, l: usize) -> u32 {
    dropout_stream(seed ^ 0x4D43_0000_0000_0000, l)
}
