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
