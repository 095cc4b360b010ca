//! The interface both backends implement (see `crate::backend` for choosing one).

use crate::graph::{Plan, Stage};
use crate::tensor::{Hyper, PersistentDesc, TensorId};
use anyhow::Result;

/// Handle to a plan compiled into an engine.
pub type PlanId = usize;

/// A backend that executes [`Plan`]s. Persistent tensors (parameters, optimizer state,
/// metrics) are created once and shared by every plan compiled afterwards, so plans for
/// different batch sizes train the same weights.
pub trait Engine {
    /// One line naming the device, e.g. the adapter name, backend and driver.
    fn describe(&self) -> String;
    fn is_gpu(&self) -> bool;
    fn init_persistent(&mut self, persistent: &[PersistentDesc]) -> Result<()>;
    /// Copies a persistent tensor back to the host (waits for queued work on the GPU).
    fn read_persistent(&mut self, slot: usize) -> Result<Vec<f32>>;
    /// Overwrites a persistent tensor.
    fn write_persistent(&mut self, slot: usize, data: &[f32]) -> Result<()>;
    /// Validates the plan and prepares everything its steps need. Called once per plan.
    fn compile(&mut self, plan: &Plan) -> Result<PlanId>;
    /// Copies host data into a tensor (local or persistent).
    fn write(&mut self, plan: PlanId, tensor: TensorId, data: &[f32]) -> Result<()>;
    /// Copies a tensor back to the host; on the GPU this waits for queued work.
    fn read(&mut self, plan: PlanId, tensor: TensorId) -> Result<Vec<f32>>;
    /// Enqueues one stage. On the GPU this is a single command-buffer submission and
    /// returns without waiting.
    fn run(&mut self, plan: PlanId, stage: Stage) -> Result<()>;
    fn set_hyper(&mut self, hyper: Hyper) -> Result<()>;
    /// Starts copying tensors to the host behind the work already queued, without waiting
    /// for it; the values arrive through [`PendingRead::poll`]. The default reads at once
    /// (the CPU backend has nothing to wait for).
    fn read_async(&mut self, plan: PlanId, tensors: &[TensorId]) -> Result<Box<dyn PendingRead>> {
        let values = tensors
            .iter()
            .map(|&t| self.read(plan, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(ReadyRead(Some(values))))
    }
}

/// A readback in flight, from [`Engine::read_async`].
pub trait PendingRead {
    /// The tensors' values, in the order asked for, once the device has produced them;
    /// `None` while it has not. With `wait`, blocks until they are ready. A read yields
    /// its values once; polling it again is an error.
    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Vec<f32>>>>;
}

/// A read whose values are already on the host.
pub struct ReadyRead(pub Option<Vec<Vec<f32>>>);

impl PendingRead for ReadyRead {
    fn poll(&mut self, _wait: bool) -> Result<Option<Vec<Vec<f32>>>> {
        self.0
            .take()
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("this read was already collected"))
    }
}
