//! The wgpu backend: the plan executor ([`GpuEngine`]). The device, kernel cache and
//! lowering tools are in `crate::device`; each op's lowering is in its family's `wgpu.rs`.

pub mod budget;
pub mod engine;
mod pending_read;

pub use crate::device::{
    describe_adapter, list_adapters, AdapterSelection, Counters, GpuContext, LimitsProfile,
    MatmulTile, MatmulVariant, ShapeClass,
};
pub use crate::ops::matmul::tune::{TileChoice, TileSource, TuneMode, TuneOptions};
pub use engine::GpuEngine;
