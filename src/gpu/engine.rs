//! The GPU backend: every tensor is a device buffer, every op a prebuilt dispatch, and a
//! stage is recorded into one compute pass and submitted once.

use super::kernels::{KernelKey, Kernels, Shader};
use super::GpuContext;
use crate::engine::{Engine, PlanId};
use crate::graph::{Hyper, Loss, Op, PersistentDesc, Plan, Stage, Storage, TensorId};
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Invocations per workgroup of the 1-D kernels (see the WGSL files).
const ELEMENTWISE_WG: usize = 256;
const ROWWISE_WG: usize = 64;
/// Outputs per matmul workgroup along each dimension (8 invocations × 4).
const MATMUL_TILE: usize = 32;

struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

struct GpuPlan {
    plan: Plan,
    /// Buffers of local tensors, `None` for persistent ones.
    local: Vec<Option<wgpu::Buffer>>,
    forward: Vec<Dispatch>,
    eval: Vec<Dispatch>,
    train: Vec<Dispatch>,
}

/// Which matmul kernel a [`GpuEngine`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Chosen from the adapter type.
    #[default]
    Auto,
    /// 4×4 outputs per invocation in registers, 8×8 workgroups.
    Reg4x4,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 2] = [MatmulVariant::Auto, MatmulVariant::Reg4x4];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Auto => "auto",
            MatmulVariant::Reg4x4 => "reg4x4",
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
    fn from_str(s: &str) -> Result<Self> {
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

pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    matmul_variant: MatmulVariant,
    persistent: Vec<wgpu::Buffer>,
    persistent_desc: Vec<PersistentDesc>,
    hyper: wgpu::Buffer,
    plans: Vec<GpuPlan>,
}

impl GpuEngine {
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        let hyper = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hyper"),
            size: (Hyper::LEN * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuEngine {
            ctx,
            kernels: Kernels::default(),
            matmul_variant: MatmulVariant::Auto,
            persistent: Vec::new(),
            persistent_desc: Vec::new(),
            hyper,
            plans: Vec::new(),
        }
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Forces a matmul kernel for plans compiled from now on (tests and benches).
    pub fn set_matmul_variant(&mut self, variant: MatmulVariant) {
        self.matmul_variant = variant;
    }

    /// The concrete variant `variant` stands for on this engine's adapter.
    pub fn resolve_matmul_variant(&self, variant: MatmulVariant) -> MatmulVariant {
        match variant {
            MatmulVariant::Auto => MatmulVariant::Reg4x4,
            v => v,
        }
    }

    fn buffer<'a>(
        &'a self,
        local: &'a [Option<wgpu::Buffer>],
        plan: &Plan,
        t: TensorId,
    ) -> &'a wgpu::Buffer {
        match plan.tensors[t].storage {
            Storage::Persistent(s) => &self.persistent[s],
            Storage::Local => local[t].as_ref().expect("local tensors have buffers"),
        }
    }

    fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let max = self.ctx.max_binding_bytes();
        ensure!(
            bytes <= max,
            "tensor '{label}' needs {bytes} bytes but this adapter binds at most {max} bytes per \
             storage buffer; use a smaller batch or layer"
        );
        Ok(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Splits a 1-D workgroup count over x and y so neither exceeds the device limit.
    fn grid(&self, groups: usize) -> Result<[u32; 3]> {
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        ensure!(
            y <= max,
            "{groups} workgroups exceed the device's dispatch limit"
        );
        Ok([x as u32, y as u32, 1])
    }

    fn dispatch(
        &mut self,
        key: KernelKey,
        dims: [u32; 4],
        bindings: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.kernels.get(&self.ctx.device, &key)?;
        let device = &self.ctx.device;
        // Shapes never change after compile, so they go in a uniform written once here.
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dims"),
            contents: bytemuck::cast_slice(&dims),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bindings.iter().map(|&(binding, buf)| wgpu::BindGroupEntry {
            binding,
            resource: buf.as_entire_binding(),
        }));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(key.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            groups,
        })
    }

    fn lower(&mut self, plan: &Plan, local: &[Option<wgpu::Buffer>], op: &Op) -> Result<Dispatch> {
        let buf = |t: TensorId| self.buffer(local, plan, t).clone();
        let u = |v: usize| -> Result<u32> { u32::try_from(v).context("size exceeds u32 indexing") };
        match *op {
            Op::MatMul {
                a,
                b,
                c,
                m,
                k,
                n,
                trans_a,
                trans_b,
                accumulate,
            } => {
                let key = KernelKey::new(Shader::Matmul, "main")
                    .with("TRANS_A", trans_a as u32)
                    .with("TRANS_B", trans_b as u32)
                    .with("ACCUMULATE", accumulate as u32);
                let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
                let groups = [n.div_ceil(MATMUL_TILE), m.div_ceil(MATMUL_TILE)];
                ensure!(
                    groups.iter().all(|&g| g <= max),
                    "matmul {m}×{k}×{n} needs more workgroups than the device allows per dimension"
                );
                let (ba, bb, bc) = (buf(a), buf(b), buf(c));
                self.dispatch(
                    key,
                    [u(m)?, u(k)?, u(n)?, 0],
                    &[(1, &ba), (2, &bb), (3, &bc)],
                    [groups[0] as u32, groups[1] as u32, 1],
                )
            }
            Op::AddBias {
                y,
                bias,
                rows,
                cols,
            } => {
                let (by, bb) = (buf(y), buf(bias));
                let g = self.grid((rows * cols).div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Bias, "add_bias"),
                    [u(rows)?, u(cols)?, 0, 0],
                    &[(1, &bb), (2, &by)],
                    g,
                )
            }
            Op::SumRows {
                x,
                out,
                rows,
                cols,
                accumulate,
            } => {
                let (bx, bo) = (buf(x), buf(out));
                let g = self.grid(cols)?;
                self.dispatch(
                    KernelKey::new(Shader::Bias, "sum_rows"),
                    [u(rows)?, u(cols)?, accumulate as u32, 0],
                    &[(1, &bx), (2, &bo)],
                    g,
                )
            }
            Op::Activate { act, x, y, len } => {
                let (bx, by) = (buf(x), buf(y));
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "forward").with("ACT", act as u32),
                    [u(len)?, 0, 0, 0],
                    &[(1, &bx), (4, &by)],
                    g,
                )
            }
            Op::ActivateBackward {
                act,
                x,
                y,
                dy,
                dx,
                len,
            } => {
                let (bx, by, bdy, bdx) = (buf(x), buf(y), buf(dy), buf(dx));
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "backward").with("ACT", act as u32),
                    [u(len)?, 0, 0, 0],
                    &[(1, &bx), (2, &by), (3, &bdy), (4, &bdx)],
                    g,
                )
            }
            Op::LossGrad {
                loss,
                pred,
                target,
                dpred,
                row_loss,
                row_correct,
                rows,
                cols,
            } => {
                let (bp, bt, bd, bl, bc) = (
                    buf(pred),
                    buf(target),
                    buf(dpred),
                    buf(row_loss),
                    buf(row_correct),
                );
                self.loss_dispatch(loss, &bp, &bt, &bd, &bl, &bc, rows, cols)
            }
            Op::LossEval {
                loss,
                pred,
                target,
                row_loss,
                row_correct,
                rows,
                cols,
            } => {
                // The kernel always writes a gradient; in evaluation it goes to scratch.
                let (bp, bt, bl, bc) = (buf(pred), buf(target), buf(row_loss), buf(row_correct));
                let scratch = self.storage_buffer("loss.eval.scratch", (rows * cols * 4) as u64)?;
                self.loss_dispatch(loss, &bp, &bt, &scratch, &bl, &bc, rows, cols)
            }
            Op::AccumulateMetrics {
                row_loss,
                row_correct,
                metrics,
                rows,
            } => {
                let (bl, bc, bm) = (buf(row_loss), buf(row_correct), buf(metrics));
                self.dispatch(
                    KernelKey::new(Shader::Loss, "accumulate_metrics"),
                    [u(rows)?, 0, 0, 0],
                    &[(6, &bl), (7, &bc), (8, &bm)],
                    [1, 1, 1],
                )
            }
            Op::SgdStep { param, grad, len } => {
                let (bp, bg, bh) = (buf(param), buf(grad), self.hyper.clone());
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Optim, "sgd"),
                    [u(len)?, 0, 0, 0],
                    &[(1, &bp), (2, &bg), (3, &bh)],
                    g,
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn loss_dispatch(
        &mut self,
        loss: Loss,
        pred: &wgpu::Buffer,
        target: &wgpu::Buffer,
        dpred: &wgpu::Buffer,
        row_loss: &wgpu::Buffer,
        row_correct: &wgpu::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<Dispatch> {
        let entry = match loss {
            Loss::SoftmaxCrossEntropy => "cross_entropy",
            Loss::MeanSquaredError => "mse",
        };
        let g = self.grid(rows.div_ceil(ROWWISE_WG))?;
        self.dispatch(
            KernelKey::new(Shader::Loss, entry),
            [rows as u32, cols as u32, 0, 0],
            &[
                (1, pred),
                (2, target),
                (3, dpred),
                (4, row_loss),
                (5, row_correct),
            ],
            g,
        )
    }

    fn tensor_buffer(&self, plan: PlanId, t: TensorId) -> Result<(&wgpu::Buffer, usize, &str)> {
        let p = self.plans.get(plan).context("unknown plan id")?;
        let desc = p
            .plan
            .tensors
            .get(t)
            .with_context(|| format!("plan has no tensor {t}"))?;
        Ok((self.buffer(&p.local, &p.plan, t), desc.len(), &desc.name))
    }
}

impl Engine for GpuEngine {
    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn is_gpu(&self) -> bool {
        true
    }

    fn init_persistent(&mut self, persistent: &[PersistentDesc]) -> Result<()> {
        ensure!(
            self.persistent.is_empty(),
            "persistent tensors were already initialised"
        );
        let mut bufs = Vec::with_capacity(persistent.len());
        for p in persistent {
            ensure!(
                !p.init.is_empty(),
                "persistent tensor '{}' is empty",
                p.name
            );
            let buf = self.storage_buffer(&p.name, (p.init.len() * 4) as u64)?;
            self.ctx
                .queue
                .write_buffer(&buf, 0, bytemuck::cast_slice(&p.init));
            bufs.push(buf);
        }
        self.persistent = bufs;
        self.persistent_desc = persistent.to_vec();
        self.ctx.take_error()
    }

    fn compile(&mut self, plan: &Plan) -> Result<PlanId> {
        plan.validate(&self.persistent_desc)?;
        for t in &plan.tensors {
            ensure!(
                t.len() <= u32::MAX as usize,
                "tensor '{}' has {} elements; kernels index with 32 bits",
                t.name,
                t.len()
            );
        }
        let local = plan
            .tensors
            .iter()
            .map(|t| match t.storage {
                Storage::Local => self.storage_buffer(&t.name, (t.len() * 4) as u64).map(Some),
                Storage::Persistent(_) => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut lower_all = |ops: &[Op]| -> Result<Vec<Dispatch>> {
            ops.iter().map(|op| self.lower(plan, &local, op)).collect()
        };
        let forward = lower_all(&plan.forward)?;
        let eval = lower_all(&plan.eval)?;
        let train = lower_all(&plan.train)?;
        self.ctx.take_error().context("compiling the plan")?;
        self.plans.push(GpuPlan {
            plan: plan.clone(),
            local,
            forward,
            eval,
            train,
        });
        Ok(self.plans.len() - 1)
    }

    fn write(&mut self, plan: PlanId, t: TensorId, data: &[f32]) -> Result<()> {
        let (buf, len, name) = self.tensor_buffer(plan, t)?;
        ensure!(
            data.len() == len,
            "tensor '{name}' holds {len} values, got {}",
            data.len()
        );
        self.ctx
            .queue
            .write_buffer(buf, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    fn read(&mut self, plan: PlanId, t: TensorId) -> Result<Vec<f32>> {
        let (buf, len, name) = self.tensor_buffer(plan, t)?;
        let name = name.to_string();
        let bytes = (len * 4) as u64;
        let device = &self.ctx.device;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
        encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes);
        self.ctx.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.ctx
            .wait()
            .with_context(|| format!("reading tensor '{name}'"))?;
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("mapping tensor '{name}' for readback failed: {e}"),
            None => bail!("mapping tensor '{name}' for readback was cancelled"),
        }
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| anyhow::anyhow!("reading tensor '{name}': {e}"))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    fn run(&mut self, plan: PlanId, stage: Stage) -> Result<()> {
        let p = self.plans.get(plan).context("unknown plan id")?;
        let tail: &[Dispatch] = match stage {
            Stage::Predict => &[],
            Stage::Eval => &p.eval,
            Stage::Train => &p.train,
        };
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            for d in p.forward.iter().chain(tail) {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.take_error()
    }

    fn set_hyper(&mut self, hyper: Hyper) -> Result<()> {
        self.ctx
            .queue
            .write_buffer(&self.hyper, 0, bytemuck::cast_slice(&hyper.to_array()));
        Ok(())
    }
}
