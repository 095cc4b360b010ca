//! The wgpu backend: device selection, kernels and the plan executor.

pub mod context;
pub mod engine;
pub mod kernels;
pub mod matmul_tex;

pub use context::{describe_adapter, list_adapters, AdapterSelection, GpuContext};
pub use engine::{Counters, GpuEngine, MatmulVariant};
