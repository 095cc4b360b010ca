//! Choosing a backend: the best GPU adapter, a named one, or the CPU reference.

use crate::cpu::CpuEngine;
use crate::device::{AdapterSelection, GpuContext};
use crate::engine::Engine;
use crate::gpu::GpuEngine;
use anyhow::Result;
use std::sync::Arc;

/// Which backend to use.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BackendChoice {
    /// The best GPU adapter, or the CPU backend with a notice when there is none.
    #[default]
    Auto,
    /// A GPU adapter matching the selection; an error when there is none.
    Gpu(AdapterSelection),
    /// The CPU reference backend.
    Cpu,
}

impl BackendChoice {
    /// Parses `auto`, `cpu`, or a wgpu backend name (`vulkan`, `metal`, `dx12`, `gl`),
    /// with an optional adapter filter (index or name substring).
    pub fn parse(backend: &str, adapter: Option<&str>) -> Result<Self> {
        Ok(match backend.to_ascii_lowercase().as_str() {
            "auto" | "" if adapter.is_none() => BackendChoice::Auto,
            "auto" | "" | "gpu" => BackendChoice::Gpu(AdapterSelection::new(None, adapter)?),
            "cpu" => BackendChoice::Cpu,
            other => BackendChoice::Gpu(AdapterSelection::new(Some(other), adapter)?),
        })
    }
}

/// Matmul work of one training step, in FLOPs, below which lavapipe runs the step faster
/// on the calling thread than on its worker threads (see
/// [`lavapipe_inline_for_small_steps`]). Measured on 2 cores with `train --epochs 4`:
/// inline wins at width 128, batch 32 (22 MFLOP: 9.4k against 8.1k samples/s) and loses
/// at width 128, batch 128 (88 MFLOP: 15.8k against 19.3k).
pub const LAVAPIPE_INLINE_FLOPS: f64 = 32e6;

/// The FLOPs of one training step's matrix products over `layer_sizes` (input, hidden
/// widths, output) at `batch` rows: the forward product and backward's two per layer.
pub fn step_flops(layer_sizes: &[usize], batch: usize) -> f64 {
    let products: f64 = layer_sizes.windows(2).map(|w| (w[0] * w[1]) as f64).sum();
    6.0 * batch as f64 * products
}

/// For a small model, asks lavapipe (Mesa's Vulkan driver on the CPU) to run dispatches
/// on the calling thread (`LP_NUM_THREADS=0`): its worker threads wake for every
/// dispatch, which costs more than they save when a step's work is below
/// [`LAVAPIPE_INLINE_FLOPS`]. The default `train` model (2 → 8×64 → 3, batch 32) runs
/// about twice as fast that way, while W1 runs a third slower, so only small steps get
/// it. Nothing changes where `LP_NUM_THREADS` is set (the user's choice); other drivers
/// ignore the variable. Must run before the wgpu instance that opens the device is
/// created, and while the process has no other threads (it sets an environment
/// variable). Returns whether it did.
pub fn lavapipe_inline_for_small_steps(layer_sizes: &[usize], batch: usize) -> bool {
    if std::env::var_os("LP_NUM_THREADS").is_some()
        || step_flops(layer_sizes, batch) >= LAVAPIPE_INLINE_FLOPS
    {
        return false;
    }
    std::env::set_var("LP_NUM_THREADS", "0");
    true
}

/// Creates an engine. `notice` receives the one-line explanation when `Auto` falls back
/// to the CPU.
pub fn create_engine(
    choice: &BackendChoice,
    notice: &mut dyn FnMut(&str),
) -> Result<Box<dyn Engine>> {
    Ok(match choice {
        BackendChoice::Cpu => Box::new(CpuEngine::new()),
        BackendChoice::Gpu(sel) => Box::new(GpuEngine::new(Arc::new(GpuContext::new(sel)?))),
        BackendChoice::Auto => match GpuContext::new(&AdapterSelection::default()) {
            Ok(ctx) => Box::new(GpuEngine::new(Arc::new(ctx))),
            Err(e) => {
                notice(&format!("{e:#}; running on the CPU backend instead"));
                Box::new(CpuEngine::new())
            }
        },
    })
}
