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
    /// How many more bind groups the device can take, where its driver caps them below
    /// what memory would allow (see `GpuEngine`); `None` where nothing short of memory
    /// does.
    fn bind_group_budget(&self) -> Option<BindGroupBudget> {
        None
    }
    /// Memory new tensors may take, where the engine can tell: host memory for the CPU
    /// backend and CPU-backed adapters, the device-local heap less what this engine holds
    /// for a Vulkan GPU. Elsewhere (Metal, DX12, GL) wgpu reports no memory size, and a
    /// failed allocation is an error when the plan compiles.
    fn memory_budget(&self) -> Option<MemoryBudget> {
        None
    }
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
    /// [`Engine::run`], then [`Engine::read_async`] of `tensors` as the stage left them.
    /// On the GPU the copies join the stage's command buffer: a training step that reads
    /// its guard flags back is one submission instead of two.
    fn run_and_read(
        &mut self,
        plan: PlanId,
        stage: Stage,
        tensors: &[TensorId],
    ) -> Result<Box<dyn PendingRead>> {
        self.run(plan, stage)?;
        self.read_async(plan, tensors)
    }
}

/// Bytes a device can still allocate, and which memory that is.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryBudget {
    pub available: u64,
    /// Which memory, and where the figure comes from, for the error that names it.
    pub memory: String,
}

impl MemoryBudget {
    /// The host's available memory, where `/proc/meminfo` tells.
    pub fn host() -> Option<Self> {
        available_memory().map(|available| MemoryBudget {
            available,
            memory: "host memory".to_string(),
        })
    }
}

/// `1.6 GB`, `312 MB`, `48 kB`: decimal units, three significant figures at most.
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.0} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

/// Bind groups a device can still take, and why it caps them.
#[derive(Clone, Debug)]
pub struct BindGroupBudget {
    pub available: usize,
    /// The cap and what it is, for error messages.
    pub limit: usize,
    pub limit_name: &'static str,
    pub in_use: usize,
    /// What a user can do about it.
    pub remedy: &'static str,
}

impl BindGroupBudget {
    /// An error naming `need` (for `what`) against the cap, or nothing when it fits.
    pub fn check(&self, need: usize, what: &str) -> Result<()> {
        anyhow::ensure!(
            need <= self.available,
            "{what} needs about {need} GPU bind groups (one per dispatch), but this device \
             takes at most {} more: {} is {}, of which {} are in use. Use fewer or wider \
             layers, or {}",
            self.available,
            self.limit_name,
            self.limit,
            self.in_use,
            self.remedy
        );
        Ok(())
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

/// `MemAvailable` of `/proc/meminfo`, where there is one.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
