//! WGSL sources, binding tables and the pipeline cache. Pipelines are keyed by shader,
//! entry point and override constants, so a plan with twenty layers of the same activation
//! creates one.
//!
//! Each op family declares its kernel file as a [`Shader`], its bindings as [`Slot`]s and
//! its uniform as a [`uniform!`](crate::uniform) struct in its `wgpu.rs`; a test reads every
//! module with naga and checks the declarations match (`tests/bindings.rs`).

use anyhow::{bail, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Helpers every kernel file may call (`flat_index`, `sigmoid`, `is_finite`, the RNG),
/// put in front of each.
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// One kernel module: a family's WGSL file (or a generated source), named for errors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shader {
    pub name: &'static str,
    pub body: Cow<'static, str>,
    /// Written against the element type `V` (see [`ELEMENT_F32`]): built over `f32` or
    /// `vec4<f32>`.
    pub over_elements: bool,
}

impl Shader {
    /// A file written against scalar `f32` storage.
    pub const fn scalar(name: &'static str, body: &'static str) -> Self {
        Shader {
            name,
            body: Cow::Borrowed(body),
            over_elements: false,
        }
    }

    /// A file written against the element type `V`.
    pub const fn elements(name: &'static str, body: &'static str) -> Self {
        Shader {
            name,
            body: Cow::Borrowed(body),
            over_elements: true,
        }
    }

    /// The complete WGSL: the prelude, the element type where the file uses one, the body.
    pub fn source(&self, vec4: bool) -> String {
        let mut src = String::from(PRELUDE);
        if self.over_elements {
            src.push_str(if vec4 { ELEMENT_VEC4 } else { ELEMENT_F32 });
        }
        src.push_str(&self.body);
        src
    }
}

/// The element type the elementwise and per-feature kernels are written against, put in
/// front of every such file: `V` holds `LANES` consecutive values (`U` the matching `u32`
/// type), `lane`/`with_lane` read and replace one. Engines pick `vec4<f32>` where a length
/// divides by 4: on CPU-backed adapters one vector load or store costs about what a
/// scalar one does, so those kernels run up to four times faster. Element
/// `LANES * i + c` of a tensor is lane `c` of its `V` number `i`.
pub const ELEMENT_F32: &str = "\
alias V = f32;
alias U = u32;
const LANES: u32 = 1u;
fn lane(v: V, c: u32) -> f32 { return v; }
fn with_lane(v: V, c: u32, value: f32) -> V { return value; }
";

pub const ELEMENT_VEC4: &str = "\
alias V = vec4<f32>;
alias U = vec4<u32>;
const LANES: u32 = 4u;
fn lane(v: V, c: u32) -> f32 { return v[c]; }
fn with_lane(v: V, c: u32, value: f32) -> V { var w = v; w[c] = value; return w; }
";

/// How a kernel may access a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`
    Uniform,
    /// A storage texture (the matmul mirrors).
    Texture,
}

/// One row of a family's binding table: the binding number, the WGSL variable's name and
/// its access, written once in Rust and checked against the shader by naga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub binding: u32,
    pub name: &'static str,
    pub access: Access,
}

impl Slot {
    pub const fn read(binding: u32, name: &'static str) -> Self {
        Slot {
            binding,
            name,
            access: Access::Read,
        }
    }
    pub const fn read_write(binding: u32, name: &'static str) -> Self {
        Slot {
            binding,
            name,
            access: Access::ReadWrite,
        }
    }
    pub const fn uniform(binding: u32, name: &'static str) -> Self {
        Slot {
            binding,
            name,
            access: Access::Uniform,
        }
    }
    pub const fn texture(binding: u32, name: &'static str) -> Self {
        Slot {
            binding,
            name,
            access: Access::Texture,
        }
    }
}

/// A uniform struct shared with WGSL: its field names and WGSL types in order, all 4-byte
/// scalars, checked against the shader's struct by naga.
pub trait Uniform: bytemuck::Pod {
    const FIELDS: &'static [(&'static str, &'static str)];
}

/// Declares a `#[repr(C)]` uniform struct of `u32`/`f32` fields and its [`Uniform`] table.
#[macro_export]
macro_rules! uniform {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($field:ident: $ty:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $(pub $field: $ty),*
        }
        impl $crate::device::Uniform for $name {
            const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty))),*];
        }
    };
}

/// A family's kernels as the binding test sees them: each module it can build, with the
/// binding table and uniform layout it is lowered against.
#[derive(Clone, Debug)]
pub struct ShaderTable {
    pub shader: Shader,
    pub slots: &'static [Slot],
    /// Fields of the uniform at binding 0 (`dims`), when the module has one.
    pub dims: Option<&'static [(&'static str, &'static str)]>,
    /// Further uniform structs by WGSL variable name (e.g. the optimizers' constants).
    pub uniforms: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

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
    pub fn new(shader: &Shader, entry: &'static str) -> Self {
        KernelKey {
            shader: shader.clone(),
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
            !key.vec4 || key.shader.over_elements,
            "{} has no vec4 build",
            key.shader.name
        );
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module_key = (key.shader.clone(), key.vec4);
        let module = self.modules.entry(module_key.clone()).or_insert_with(|| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key.shader.name),
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
            self.modules.remove(&module_key);
            bail!(
                "building kernel {}::{} failed: {err}",
                key.shader.name,
                key.entry
            );
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }
}
