//! WGSL sources and the pipeline cache. Pipelines are keyed by shader, entry point and
//! override constants, so a plan with twenty layers of the same activation creates one.

use super::matmul_tex::TexKernel;
use crate::graph::Activation;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// The kernel families: one WGSL file each, or a generated source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Matmul,
    MatmulTiled,
    MatmulTexture(TexKernel),
    Pack,
    Bias,
    Activation,
    Loss,
    Optim,
    BatchNorm,
    Elementwise,
    Clip,
    Dropout,
    Stats,
    Guard,
}

impl Shader {
    /// Shared WGSL helpers a kernel file may call; prepended to its source.
    fn prelude(self) -> &'static [&'static str] {
        match self {
            Shader::Activation | Shader::Dropout => &[RNG],
            _ => &[],
        }
    }

    /// The WGSL of the file, built over `f32` or `vec4<f32>` elements (see [`ELEMENT_F32`]).
    pub fn source(self, vec4: bool) -> String {
        if let Shader::MatmulTexture(k) = self {
            return k.source();
        }
        let mut src: String = self.prelude().concat();
        if self.over_elements() {
            src.push_str(if vec4 { ELEMENT_VEC4 } else { ELEMENT_F32 });
        }
        src.push_str(self.body());
        src
    }

    /// Whether the file is written against the element type `V` (see [`ELEMENT_F32`]).
    fn over_elements(self) -> bool {
        matches!(
            self,
            Shader::Bias
                | Shader::Activation
                | Shader::Optim
                | Shader::BatchNorm
                | Shader::Elementwise
                | Shader::Clip
                | Shader::Dropout
                | Shader::Guard
        )
    }

    fn body(self) -> &'static str {
        match self {
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::MatmulTiled => include_str!("../../shaders/matmul_tiled.wgsl"),
            Shader::MatmulTexture(_) => unreachable!("generated in `source`"),
            Shader::Pack => include_str!("../../shaders/pack.wgsl"),
            Shader::Bias => include_str!("../../shaders/bias.wgsl"),
            Shader::Activation => include_str!("../../shaders/activation.wgsl"),
            Shader::Loss => include_str!("../../shaders/loss.wgsl"),
            Shader::Optim => include_str!("../../shaders/optim.wgsl"),
            Shader::BatchNorm => include_str!("../../shaders/batchnorm.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Shader::Clip => include_str!("../../shaders/clip.wgsl"),
            Shader::Dropout => include_str!("../../shaders/dropout.wgsl"),
            Shader::Stats => include_str!("../../shaders/stats.wgsl"),
            Shader::Guard => include_str!("../../shaders/guard.wgsl"),
        }
    }
}

const RNG: &str = include_str!("../../shaders/rng.wgsl");

/// The element type the elementwise and per-feature kernels are written against, put in
/// front of every file: `V` holds `LANES` consecutive values (`U` the matching `u32`
/// type), `lane`/`with_lane` read and replace one. Engines pick `vec4<f32>` where a length
/// divides by 4: on CPU-backed adapters one vector load or store costs about what a
/// scalar one does, so those kernels run up to four times faster. Element
/// `LANES * i + c` of a tensor is lane `c` of its `V` number `i`.
const ELEMENT_F32: &str = "\
alias V = f32;
alias U = u32;
const LANES: u32 = 1u;
fn lane(v: V, c: u32) -> f32 { return v; }
fn with_lane(v: V, c: u32, value: f32) -> V { return value; }
";

const ELEMENT_VEC4: &str = "\
alias V = vec4<f32>;
alias U = vec4<u32>;
const LANES: u32 = 4u;
fn lane(v: V, c: u32) -> f32 { return v[c]; }
fn with_lane(v: V, c: u32, value: f32) -> V { var w = v; w[c] = value; return w; }
";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: Shader,
    pub entry: &'static str,
    /// Override constants; values are stored as integers (bools as 0/1).
    pub constants: Vec<(&'static str, u32)>,
    /// `f32` override constants (activation slopes), kept as bits so the key stays
    /// `Eq + Hash`; the bits round-trip exactly through the `f64` wgpu takes.
    pub float_constants: Vec<(&'static str, u32)>,
    /// The file built over `vec4<f32>` elements (see [`ELEMENT_F32`]).
    pub vec4: bool,
}

impl KernelKey {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        KernelKey {
            shader,
            entry,
            constants: Vec::new(),
            float_constants: Vec::new(),
            vec4: false,
        }
    }

    /// Builds the file over `vec4<f32>` elements when `vec4`.
    pub fn vec4(mut self, vec4: bool) -> Self {
        self.vec4 = vec4;
        self
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.constants.push((name, value));
        self
    }
    pub fn with_f32(mut self, name: &'static str, value: f32) -> Self {
        self.float_constants.push((name, value.to_bits()));
        self
    }

    /// An entry point of `shaders/activation.wgsl` specialised for `act`: its kind and
    /// constant parameters become override constants, so each distinct activation gets
    /// its own pipeline and shares it across layers.
    pub fn activation(entry: &'static str, act: Activation) -> Self {
        let mut key = KernelKey::new(Shader::Activation, entry).with("ACT", act.kernel_id());
        if let Some(slope) = act.negative_slope() {
            key = key.with_f32("SLOPE", slope);
        }
        if let Activation::Elu { alpha } = act {
            key = key.with_f32("ALPHA", alpha);
        }
        key
    }
}

#[derive(Default)]
pub struct Kernels {
    modules: HashMap<(Shader, bool), wgpu::ShaderModule>,
    pipelines: HashMap<KernelKey, Arc<wgpu::ComputePipeline>>,
}

impl Kernels {
    /// Pipelines built so far.
    pub fn built(&self) -> usize {
        self.pipelines.len()
    }

    pub fn get(
        &mut self,
        device: &wgpu::Device,
        key: &KernelKey,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.get(key) {
            return Ok(p.clone());
        }
        debug_assert!(
            !key.vec4 || key.shader.over_elements(),
            "{:?} has no vec4 build",
            key.shader
        );
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .modules
            .entry((key.shader, key.vec4))
            .or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{:?}", key.shader)),
                    source: wgpu::ShaderSource::Wgsl(key.shader.source(key.vec4).into()),
                })
            });
        let constants: Vec<(&str, f64)> = key
            .constants
            .iter()
            .map(|&(n, v)| (n, v as f64))
            .chain(
                key.float_constants
                    .iter()
                    .map(|&(n, v)| (n, f32::from_bits(v) as f64)),
            )
            .collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: None,
            module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            // Drop the cached module too: it may be the part that failed.
            self.modules.remove(&(key.shader, key.vec4));
            bail!(
                "building kernel {:?}::{} failed: {err}",
                key.shader,
                key.entry
            );
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }
}
