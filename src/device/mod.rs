//! The wgpu layer below the ops: the device and its limits ([`context`]), kernel sources,
//! binding tables and the pipeline cache ([`kernels`]), and the [`Lowerer`] an op's
//! lowering builds its dispatches with ([`lower`]). Nothing here knows an op; the op
//! families in `crate::ops` call it, and `crate::gpu` runs what they build.

pub mod context;
pub mod kernels;
pub mod lower;
pub mod tile;

pub use context::{describe_adapter, list_adapters, AdapterSelection, GpuContext, LimitsProfile};
pub use kernels::{Access, KernelKey, Kernels, Shader, ShaderTable, Slot, Uniform};
pub use lower::{
    lane_groups, lanes, u32_of, Absorbed, Dispatch, LowerParts, Lowerer, Mirror, MirrorCopy,
    MirrorKey, Mirrors, Res, Step, ELEMENTWISE_WG, LOOKAHEAD,
};
pub use tile::{MatmulTile, ShapeClass};

/// Which matmul kernel an engine uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Chosen from the adapter type: `texture` on CPU-backed adapters, `tiled` otherwise.
    #[default]
    Auto,
    /// 4×4 outputs per invocation in registers, operands read from storage buffers.
    Reg4x4,
    /// Blocks staged in workgroup memory, several outputs per invocation in registers
    /// (GPUs); the block sizes are a [`MatmulTile`], tuned per shape class.
    Tiled,
    /// Operands read from texture mirrors, `A` shared across a subgroup where the adapter
    /// has subgroups of 8 (CPU-backed adapters, see `ops/matmul/texture.rs`).
    Texture,
    /// `Texture` without subgroup operations.
    TextureNoSubgroup,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 5] = [
        MatmulVariant::Auto,
        MatmulVariant::Reg4x4,
        MatmulVariant::Tiled,
        MatmulVariant::Texture,
        MatmulVariant::TextureNoSubgroup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Auto => "auto",
            MatmulVariant::Reg4x4 => "reg4x4",
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::Texture => "texture",
            MatmulVariant::TextureNoSubgroup => "texture-nosubgroup",
        }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MatmulVariant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        MatmulVariant::ALL
            .into_iter()
            .find(|v| v.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown matmul variant '{s}'; expected one of: {}",
                    MatmulVariant::ALL.map(|v| v.name()).join(", ")
                )
            })
    }
}

/// What a GPU engine has created and submitted so far, for tests that check a compiled
/// step creates nothing and is one submission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Distinct compute pipelines built (each is cached by shader, entry and constants).
    pub pipelines: usize,
    pub bind_groups: usize,
    /// Command buffers submitted to run a stage.
    pub stage_submissions: usize,
    /// Compute dispatches those submissions recorded (mirror copies are not dispatches),
    /// so a bench can report dispatches per step: on some adapters their fixed cost, not
    /// the arithmetic, bounds a small model's speed.
    pub dispatches: usize,
    /// Submissions that copy tensors back to the host.
    pub readbacks: usize,
}
