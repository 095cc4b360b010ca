//! WGSL sources and the pipeline cache. Pipelines are keyed by shader, entry point and
//! override constants, so a plan with twenty layers of the same activation creates one.

use super::matmul_tex::TexKernel;
use anyhow::{bail, Result};
use std::borrow::Cow;
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
}

impl Shader {
    fn source(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::MatmulTiled => include_str!("../../shaders/matmul_tiled.wgsl"),
            Shader::MatmulTexture(k) => return Cow::Owned(k.source()),
            Shader::Pack => include_str!("../../shaders/pack.wgsl"),
            Shader::Bias => include_str!("../../shaders/bias.wgsl"),
            Shader::Activation => concat!(
                include_str!("../../shaders/activation.wgsl"),
                include_str!("../../shaders/act_fn.wgsl")
            ),
            Shader::Loss => include_str!("../../shaders/loss.wgsl"),
            Shader::Optim => include_str!("../../shaders/optim.wgsl"),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: Shader,
    pub entry: &'static str,
    /// Override constants; values are stored as integers (bools as 0/1).
    pub constants: Vec<(&'static str, u32)>,
}

impl KernelKey {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        KernelKey {
            shader,
            entry,
            constants: Vec::new(),
        }
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.constants.push((name, value));
        self
    }
}

#[derive(Default)]
pub struct Kernels {
    modules: HashMap<Shader, wgpu::ShaderModule>,
    pipelines: HashMap<KernelKey, Arc<wgpu::ComputePipeline>>,
}

impl Kernels {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        key: &KernelKey,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.get(key) {
            return Ok(p.clone());
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.modules.entry(key.shader).or_insert_with(|| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{:?}", key.shader)),
                source: wgpu::ShaderSource::Wgsl(key.shader.source()),
            })
        });
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
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
            self.modules.remove(&key.shader);
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
