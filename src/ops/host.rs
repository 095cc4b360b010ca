//! The CPU reference backend's view of a plan's tensors while an op runs.

use crate::tensor::{Hyper, Storage, TensorDesc, TensorId};
use anyhow::{Context, Result};

/// Host vectors of every tensor, local and persistent. An op takes its outputs out while
/// it runs (see [`Host::update`]); `Plan::validate` guarantees no op reads a tensor through
/// one operand that it writes through another.
pub struct Host<'a> {
    tensors: &'a [TensorDesc],
    local: &'a mut [Vec<f32>],
    persistent: &'a mut [Vec<f32>],
    hyper: Option<Hyper>,
}

impl<'a> Host<'a> {
    pub fn new(
        tensors: &'a [TensorDesc],
        local: &'a mut [Vec<f32>],
        persistent: &'a mut [Vec<f32>],
        hyper: Option<Hyper>,
    ) -> Self {
        Host {
            tensors,
            local,
            persistent,
            hyper,
        }
    }

    pub fn get(&self, t: TensorId) -> &[f32] {
        match self.tensors[t].storage {
            Storage::Persistent(s) => &self.persistent[s],
            Storage::Local => &self.local[t],
        }
    }

    pub fn take(&mut self, t: TensorId) -> Vec<f32> {
        match self.tensors[t].storage {
            Storage::Persistent(s) => std::mem::take(&mut self.persistent[s]),
            Storage::Local => std::mem::take(&mut self.local[t]),
        }
    }

    pub fn put(&mut self, t: TensorId, v: Vec<f32>) {
        match self.tensors[t].storage {
            Storage::Persistent(s) => self.persistent[s] = v,
            Storage::Local => self.local[t] = v,
        }
    }

    /// Runs `f` on tensor `t`'s values, taken out of storage, with the other tensors
    /// readable through the host it is given.
    pub fn update(&mut self, t: TensorId, f: impl FnOnce(&mut [f32], &Self)) {
        let mut v = self.take(t);
        f(&mut v, self);
        self.put(t, v);
    }

    /// The training-step counter, a `u32` kept in the bits of an `f32` element.
    pub fn step(&self, t: TensorId) -> u32 {
        self.get(t)[0].to_bits()
    }

    /// The learning rate of the hyper-parameter block.
    pub fn lr(&self) -> Result<f32> {
        Ok(self
            .hyper
            .context("hyper-parameters were not set before a training step")?
            .lr)
    }

    /// The momentum (or beta1) of this step: one-cycle's when it cycles it, else the
    /// compiled-in `fixed`.
    pub fn momentum(&self, fixed: f32) -> f32 {
        self.hyper.and_then(|h| h.momentum).unwrap_or(fixed)
    }
}
