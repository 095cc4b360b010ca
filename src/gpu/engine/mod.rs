//! The GPU backend: every tensor is a device buffer, every op a prebuilt dispatch, and a
//! stage is recorded into one command buffer and submitted once.
//!
//! On CPU-backed adapters the matmuls read their operands from texture mirrors (see
//! `matmul_tex.rs` for why); a stage then interleaves the copies that refresh those
//! mirrors with its compute passes, still in a single submission.

use super::kernels::{KernelKey, Kernels, Shader};
use super::matmul_tex::{self, Epilogue, TexKernel};
use super::GpuContext;
use crate::engine::{Engine, PendingRead, PlanId};
use crate::graph::stats::GUARD_GROUP;
use crate::graph::{
    dropout_scale, Activation, Hyper, Loss, Op, PersistentDesc, Plan, Stage, Storage, TensorId,
    NORM_BLOCK,
};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

mod texture;
mod windows;

use texture::{fusable_epilogue, Lowering, MirrorCopy};

/// Invocations per workgroup of the 1-D kernels (see the WGSL files).
const ELEMENTWISE_WG: usize = 256;
const ROWWISE_WG: usize = 64;
/// Columns (or groups of 4) per workgroup of `sum_rows` in `bias.wgsl` and of the
/// per-feature kernels of `batchnorm.wgsl`.
const SUM_ROWS_WG: usize = 64;
const BN_COLS_WG: usize = 64;
/// Outputs per workgroup along each dimension: `matmul.wgsl` (8 invocations × 4) and
/// `matmul_tiled.wgsl` (16 × 4).
const REG4X4_TILE: usize = 32;
const TILED_TILE: usize = 64;
/// Texels per invocation row of `pack.wgsl`.
const PACK_WG: usize = 64;

/// Which matmul kernel a [`GpuEngine`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Chosen from the adapter type: `texture` on CPU-backed adapters, `tiled` otherwise.
    #[default]
    Auto,
    /// 4×4 outputs per invocation in registers, operands read from storage buffers.
    Reg4x4,
    /// 64×64 tiles staged in workgroup memory, 4×4 outputs per invocation (GPUs).
    Tiled,
    /// Operands read from texture mirrors, `A` shared across a subgroup where the adapter
    /// has subgroups of 8 (CPU-backed adapters, see `matmul_tex.rs`).
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

#[derive(Clone)]
struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    /// What the dispatch computes, for [`GpuEngine::profile`].
    label: String,
}

#[derive(Clone)]
enum Step {
    Dispatch(Dispatch),
    Copy(MirrorCopy),
}

struct GpuPlan {
    plan: Plan,
    /// Buffers of local tensors, `None` for persistent ones.
    local: Vec<Option<wgpu::Buffer>>,
    forward: Vec<Step>,
    eval: Vec<Step>,
    /// A whole training step, training-mode forward pass included.
    train: Vec<Step>,
    /// The training step with statistics, lowered on first use so models that never
    /// gather statistics pay nothing for them, not even pipeline creation.
    train_stats: Option<Vec<Step>>,
}

pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    matmul_variant: MatmulVariant,
    persistent: Vec<wgpu::Buffer>,
    persistent_desc: Vec<PersistentDesc>,
    hyper: wgpu::Buffer,
    /// Stand-ins for the epilogue buffers a texture matmul does not use.
    placeholders: [wgpu::Buffer; 3],
    plans: Vec<GpuPlan>,
    counters: Counters,
    /// Limits planned against when lower than the device's (see `limit_memory`).
    memory_limits: Option<(u64, u64)>,
    /// Byte ranges bound in place of whole buffers while an op is lowered in pieces
    /// (tensors larger than one storage binding, see `lower_split`).
    windows: Vec<(wgpu::Buffer, u64, u64)>,
}

/// What a [`GpuEngine`] has created and submitted so far, for tests that check a compiled
/// step creates nothing and is one submission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Distinct compute pipelines built (each is cached by shader, entry and constants).
    pub pipelines: usize,
    pub bind_groups: usize,
    /// Command buffers submitted to run a stage.
    pub stage_submissions: usize,
    /// Submissions that copy tensors back to the host.
    pub readbacks: usize,
}

impl GpuEngine {
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        let hyper = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hyper"),
            size: (Hyper::LEN * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let placeholders = [0, 1, 2].map(|i| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("epilogue placeholder {i}")),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        GpuEngine {
            ctx,
            placeholders,
            kernels: Kernels::default(),
            matmul_variant: MatmulVariant::Auto,
            persistent: Vec::new(),
            persistent_desc: Vec::new(),
            hyper,
            plans: Vec::new(),
            counters: Counters::default(),
            memory_limits: None,
            windows: Vec::new(),
        }
    }

    /// Plans compiled from now on respect at most `max_binding` bytes per storage binding
    /// and `max_buffer` bytes per buffer (or the device's limits where those are lower).
    /// Tests use it to exercise the splitting of large tensors at small sizes.
    pub fn limit_memory(&mut self, max_binding: u64, max_buffer: u64) {
        self.memory_limits = Some((max_binding.max(16), max_buffer.max(16)));
    }

    /// Largest storage binding planned against, in bytes.
    fn max_binding(&self) -> u64 {
        let device = self.ctx.max_binding_bytes();
        self.memory_limits.map_or(device, |(b, _)| b.min(device))
    }

    /// Largest buffer planned against, in bytes.
    fn max_buffer(&self) -> u64 {
        let device = self.ctx.limits.max_buffer_size;
        self.memory_limits.map_or(device, |(_, b)| b.min(device))
    }

    pub fn counters(&self) -> Counters {
        Counters {
            pipelines: self.kernels.built(),
            ..self.counters
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
            MatmulVariant::Auto => match self.ctx.info.device_type {
                wgpu::DeviceType::Cpu => MatmulVariant::Texture,
                _ => MatmulVariant::Tiled,
            },
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
        // Tensors over one storage binding are bound in windows (see `lower_split`); a
        // buffer itself cannot exceed the device's largest buffer.
        let max = self.max_buffer();
        ensure!(
            bytes <= max,
            "tensor '{label}' needs {bytes} bytes but this adapter's largest buffer is {max} \
             bytes; use a smaller batch or layer"
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
        dims: Option<[u32; 4]>,
        bindings: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let entries = bindings
            .iter()
            .map(|&(binding, buf)| (binding, self.bind(buf)))
            .collect();
        self.dispatch_with(key, dims.as_ref().map(|d| &d[..]), entries, groups)
    }

    /// `dispatch` with arbitrary binding resources (texture views) and dims of any length.
    fn dispatch_with(
        &mut self,
        key: KernelKey,
        dims: Option<&[u32]>,
        bindings: Vec<(u32, wgpu::BindingResource<'_>)>,
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.kernels.get(&self.ctx.device, &key)?;
        let device = &self.ctx.device;
        // Shapes never change after compile, so they go in a uniform written once here.
        let uniform = dims.map(|dims| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("dims"),
                contents: bytemuck::cast_slice(dims),
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });
        let mut entries: Vec<wgpu::BindGroupEntry> = uniform
            .iter()
            .map(|u| wgpu::BindGroupEntry {
                binding: 0,
                resource: u.as_entire_binding(),
            })
            .collect();
        entries.extend(
            bindings
                .into_iter()
                .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
        );
        self.counters.bind_groups += 1;
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(key.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            groups,
            label: key.entry.to_string(),
        })
    }

    /// The steps of `stage` in order.
    fn stage_steps(&self, plan: PlanId, stage: Stage) -> Result<Vec<&Step>> {
        let p = self.plans.get(plan).context("unknown plan id")?;
        let (head, tail): (&[Step], &[Step]) = match stage {
            Stage::Predict => (&p.forward, &[]),
            Stage::Eval => (&p.forward, &p.eval),
            Stage::Train => (&p.train, &[]),
            Stage::TrainWithStats => (p.train_stats.as_deref().unwrap_or_default(), &[]),
        };
        Ok(head.iter().chain(tail).collect())
    }

    /// Records `steps` into a new command encoder.
    fn record(&self, steps: Vec<&Step>) -> wgpu::CommandEncoder {
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        let mut steps = steps.into_iter().peekable();
        while let Some(step) = steps.next() {
            match step {
                Step::Copy(copy) => copy.record(&mut encoder),
                Step::Dispatch(first) => {
                    // Consecutive dispatches share one compute pass; copies end it.
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("step"),
                        timestamp_writes: None,
                    });
                    let mut d = first;
                    loop {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.bind_group, &[]);
                        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                        match steps.peek() {
                            Some(Step::Dispatch(next)) => {
                                d = next;
                                steps.next();
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        encoder
    }

    /// Times every step of `stage` alone: each dispatch or mirror copy is submitted by
    /// itself and waited for, `reps` times, and the fastest time is kept. For finding where
    /// a stage's time goes (`cargo bench --bench train_mlp -- --profile`): the sum exceeds
    /// a normal run of the stage by one submission's overhead per step, and the stage's
    /// effects are applied `reps` times.
    pub fn profile(
        &mut self,
        plan: PlanId,
        stage: Stage,
        reps: usize,
    ) -> Result<Vec<(String, std::time::Duration)>> {
        if stage == Stage::TrainWithStats {
            self.lower_stats(plan)?;
        }
        let steps = self.stage_steps(plan, stage)?;
        let mut times = vec![std::time::Duration::MAX; steps.len()];
        let wait = || self.ctx.wait();
        wait()?;
        for _ in 0..reps.max(1) {
            for (i, step) in steps.iter().enumerate() {
                let encoder = self.record(vec![step]);
                let t0 = std::time::Instant::now();
                self.ctx.queue.submit([encoder.finish()]);
                wait()?;
                times[i] = times[i].min(t0.elapsed());
            }
        }
        Ok(steps
            .iter()
            .zip(times)
            .map(|(step, t)| {
                let label = match step {
                    Step::Dispatch(d) => d.label.clone(),
                    Step::Copy(c) => c.label.clone(),
                };
                (label, t)
            })
            .collect())
    }

    /// An elementwise kernel over `len` values: the `vec4` build where `len` divides by 4
    /// (see `ELEMENT_F32` in `kernels.rs`), one invocation per element, and the dims
    /// uniform `[elements, rest…]`.
    fn dispatch_elementwise(
        &mut self,
        key: KernelKey,
        len: usize,
        rest: [u32; 3],
        bindings: &[(u32, &wgpu::Buffer)],
    ) -> Result<Dispatch> {
        let (vec4, elements) = lanes(len);
        let groups = self.grid(elements.div_ceil(ELEMENTWISE_WG))?;
        let elements = u32::try_from(elements).context("size exceeds u32 indexing")?;
        let [a, b, c] = rest;
        self.dispatch(key.vec4(vec4), Some([elements, a, b, c]), bindings, groups)
    }

    /// Lowers a whole op list, continuing from the mirror state in `st`.
    fn lower_ops(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        ops: &[Op],
        st: &mut Lowering,
    ) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let (s, used) = self.lower(plan, local, &ops[i..], st)?;
            steps.extend(s);
            i += used;
        }
        Ok(steps)
    }

    /// Lowers `ops[0]` (with the ops after it that a fused kernel absorbs) to the steps
    /// that run it, refreshing the texture mirrors it reads. Returns the steps and how
    /// many ops they cover.
    fn lower(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        ops: &[Op],
        st: &mut Lowering,
    ) -> Result<(Vec<Step>, usize)> {
        let op = &ops[0];
        let mut steps = Vec::new();
        let texture = match self.resolve_matmul_variant(self.matmul_variant) {
            MatmulVariant::Texture => Some(self.subgroups_of_8()),
            MatmulVariant::TextureNoSubgroup => Some(false),
            _ => None,
        };
        let mut lowered = None;
        if let (Op::MatMul { .. }, Some(subgroup)) = (op, texture) {
            let (epilogue, used) = fusable_epilogue(ops);
            lowered = self
                .lower_texture_matmul(
                    plan,
                    local,
                    &ops[..used],
                    epilogue,
                    subgroup,
                    st,
                    &mut steps,
                )?
                .map(|d| (d, used));
        }
        let (dispatches, used) = match lowered {
            Some(d) => d,
            None => (self.lower_split(plan, local, op)?, 1),
        };
        let label = describe_ops(plan, &ops[..used]);
        let parts = dispatches.len();
        for (i, mut d) in dispatches.into_iter().enumerate() {
            d.label = if parts > 1 {
                format!("{label} (part {} of {parts})", i + 1)
            } else {
                label.clone()
            };
            steps.push(Step::Dispatch(d));
        }
        for op in &ops[..used] {
            let (_, writes) = op.reads_writes();
            st.fresh.retain(|key| !writes.contains(&key.tensor));
        }
        Ok((steps, used))
    }

    /// Whether reductions run one invocation per output with a loop (CPU-backed adapters,
    /// i.e. the texture matmul variants, where workgroup barriers cost more than the work)
    /// rather than one workgroup per output with a tree (GPUs). Norm partials and batch
    /// norm have both forms.
    fn serial_reductions(&self) -> bool {
        matches!(
            self.resolve_matmul_variant(self.matmul_variant),
            MatmulVariant::Texture | MatmulVariant::TextureNoSubgroup
        )
    }

    /// The `Op::NormPartials` dispatch, `merge` into the partials already stored.
    fn norm_partials(
        &mut self,
        x: &wgpu::Buffer,
        partials: &wgpu::Buffer,
        len: usize,
        first: usize,
        groups: usize,
        merge: bool,
    ) -> Result<Dispatch> {
        let (entry, workgroups) = if self.serial_reductions() {
            ("norm_partials_serial", groups.div_ceil(64))
        } else {
            ("norm_partials", groups)
        };
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        ensure!(
            workgroups <= max,
            "{groups} norm partials exceed the device's dispatch limit"
        );
        let dims = [
            u32::try_from(len).context("size exceeds u32 indexing")?,
            first as u32,
            groups as u32,
            if merge { 1f32.to_bits() } else { 0 },
        ];
        self.dispatch(
            KernelKey::new(Shader::Clip, entry),
            Some(dims),
            &[(2, x), (3, partials)],
            [workgroups as u32, 1, 1],
        )
    }

    fn lower_op(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        op: &Op,
    ) -> Result<Dispatch> {
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
                let (shader, tile) = match self.resolve_matmul_variant(self.matmul_variant) {
                    MatmulVariant::Tiled => (Shader::MatmulTiled, TILED_TILE),
                    _ => (Shader::Matmul, REG4X4_TILE),
                };
                let key = KernelKey::new(shader, "main")
                    .with("TRANS_A", trans_a as u32)
                    .with("TRANS_B", trans_b as u32)
                    .with("ACCUMULATE", accumulate as u32);
                let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
                let groups = [n.div_ceil(tile), m.div_ceil(tile)];
                ensure!(
                    groups.iter().all(|&g| g <= max),
                    "matmul {m}×{k}×{n} needs more workgroups than the device allows per dimension"
                );
                let (ba, bb, bc) = (buf(a), buf(b), buf(c));
                self.dispatch(
                    key,
                    Some([u(m)?, u(k)?, u(n)?, 0]),
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
                let (vec4, cols) = lanes(cols);
                let g = self.grid((rows * cols).div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Bias, "add_bias").vec4(vec4),
                    Some([u(rows)?, u(cols)?, 0, 0]),
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
                let (vec4, cols) = lanes(cols);
                let g = self.grid(cols.div_ceil(SUM_ROWS_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Bias, "sum_rows").vec4(vec4),
                    Some([u(rows)?, u(cols)?, accumulate as u32, 0]),
                    &[(1, &bx), (2, &bo)],
                    g,
                )
            }
            Op::Activate { act, x, y, len } => {
                let (bx, by) = (buf(x), buf(y));
                self.dispatch_elementwise(
                    KernelKey::activation("forward", act),
                    len,
                    [0, 0, 0],
                    &[(1, &bx), (4, &by)],
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
                self.dispatch_elementwise(
                    KernelKey::activation("backward", act),
                    len,
                    [0, 0, 0],
                    &[(1, &bx), (2, &by), (3, &bdy), (4, &bdx)],
                )
            }
            Op::RreluTrain {
                x,
                y,
                step,
                stream,
                lower,
                upper,
                len,
            } => {
                let (bx, by, bs) = (buf(x), buf(y), buf(step));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Activation, "rrelu_forward")
                        .with_f32("LOWER", lower)
                        .with_f32("UPPER", upper),
                    len,
                    [0, stream, 0],
                    &[(1, &bx), (4, &by), (5, &bs)],
                )
            }
            Op::RreluTrainBackward {
                x,
                dy,
                dx,
                step,
                stream,
                lower,
                upper,
                len,
            } => {
                let (bx, bdy, bdx, bs) = (buf(x), buf(dy), buf(dx), buf(step));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Activation, "rrelu_backward")
                        .with_f32("LOWER", lower)
                        .with_f32("UPPER", upper),
                    len,
                    [0, stream, 0],
                    &[(1, &bx), (3, &bdy), (4, &bdx), (5, &bs)],
                )
            }
            Op::Prelu {
                x,
                weight,
                y,
                len,
                units,
            } => {
                let (bx, bw, by) = (buf(x), buf(weight), buf(y));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Activation, "prelu_forward"),
                    len,
                    [u(units)?, 0, 0],
                    &[(1, &bx), (4, &by), (6, &bw)],
                )
            }
            Op::PreluBackward {
                x,
                weight,
                dy,
                dx,
                dw_terms,
                len,
                units,
            } => {
                let (bx, bw, bdy, bdx, bt) = (buf(x), buf(weight), buf(dy), buf(dx), buf(dw_terms));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Activation, "prelu_backward"),
                    len,
                    [u(units)?, 0, 0],
                    &[(1, &bx), (3, &bdy), (4, &bdx), (6, &bw), (7, &bt)],
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
                    Some([u(rows)?, 0, 0, 0]),
                    &[(6, &bl), (7, &bc), (8, &bm)],
                    [1, 1, 1],
                )
            }
            Op::BatchNormTrain {
                x,
                y,
                gamma,
                beta,
                mean,
                invstd,
                running_mean,
                running_var,
                rows,
                cols,
                momentum,
                eps,
            } => {
                let b = [x, gamma, beta, y, mean, invstd, running_mean, running_var].map(buf);
                let (vec4, cols) = lanes(cols);
                let (entry, g) = if self.serial_reductions() {
                    ("train", self.grid(cols.div_ceil(BN_COLS_WG))?)
                } else {
                    ("train_tree", self.grid(cols)?)
                };
                let bindings: Vec<(u32, &wgpu::Buffer)> = (1..=8).zip(b.iter()).collect();
                self.dispatch(
                    KernelKey::new(Shader::BatchNorm, entry).vec4(vec4),
                    Some([u(rows)?, u(cols)?, momentum.to_bits(), eps.to_bits()]),
                    &bindings,
                    g,
                )
            }
            Op::BatchNormEval {
                x,
                y,
                gamma,
                beta,
                running_mean,
                running_var,
                rows,
                cols,
                eps,
            } => {
                let [bx, bg, bb, by, bm, bv] =
                    [x, gamma, beta, y, running_mean, running_var].map(buf);
                let (vec4, cols) = lanes(cols);
                let g = self.grid((rows * cols).div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::BatchNorm, "eval").vec4(vec4),
                    Some([u(rows)?, u(cols)?, 0, eps.to_bits()]),
                    &[(1, &bx), (2, &bg), (3, &bb), (4, &by), (9, &bm), (10, &bv)],
                    g,
                )
            }
            Op::BatchNormBackward {
                x,
                dy,
                gamma,
                mean,
                invstd,
                dx,
                dgamma,
                dbeta,
                rows,
                cols,
            } => {
                let [bx, bgam, bdy, bm, bis, bdx, bdg, bdb] =
                    [x, gamma, dy, mean, invstd, dx, dgamma, dbeta].map(buf);
                let (vec4, cols) = lanes(cols);
                let (entry, g) = if self.serial_reductions() {
                    ("backward", self.grid(cols.div_ceil(BN_COLS_WG))?)
                } else {
                    ("backward_tree", self.grid(cols)?)
                };
                self.dispatch(
                    KernelKey::new(Shader::BatchNorm, entry).vec4(vec4),
                    Some([u(rows)?, u(cols)?, 0, 0]),
                    &[
                        (1, &bx),
                        (2, &bgam),
                        (11, &bdy),
                        (12, &bm),
                        (13, &bis),
                        (14, &bdx),
                        (15, &bdg),
                        (16, &bdb),
                    ],
                    g,
                )
            }
            Op::Add { a, b, out, len } => {
                let [ba, bb, bo] = [a, b, out].map(buf);
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Elementwise, "add"),
                    len,
                    [0, 0, 0],
                    &[(1, &ba), (2, &bb), (3, &bo)],
                )
            }
            Op::Accumulate { x, y, len } => {
                let [bx, by] = [x, y].map(buf);
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Elementwise, "accumulate"),
                    len,
                    [0, 0, 0],
                    &[(1, &bx), (3, &by)],
                )
            }
            Op::AdvanceStep { counter } => {
                let bc = buf(counter);
                self.dispatch(
                    KernelKey::new(Shader::Optim, "advance_step"),
                    None,
                    &[(4, &bc)],
                    [1, 1, 1],
                )
            }
            Op::SgdStep { param, grad, len } => {
                let (bp, bg, bh) = (buf(param), buf(grad), self.hyper.clone());
                let consts = self.constants([0.0; 8]);
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Optim, "sgd"),
                    len,
                    [0, 0, 0],
                    &[(1, &bp), (2, &bg), (3, &bh), (5, &consts)],
                )
            }
            Op::Sgd {
                param,
                grad,
                len,
                momentum,
                weight_decay,
            } => {
                let (bp, bg, bh) = (buf(param), buf(grad), self.hyper.clone());
                match momentum {
                    None => {
                        let consts =
                            self.constants([0.0, 0.0, 0.0, weight_decay, 0.0, 0.0, 0.0, 0.0]);
                        self.dispatch_elementwise(
                            KernelKey::new(Shader::Optim, "sgd"),
                            len,
                            [0, 0, 0],
                            &[(1, &bp), (2, &bg), (3, &bh), (5, &consts)],
                        )
                    }
                    Some(m) => {
                        let bb = buf(m.buffer);
                        let consts = self.constants([
                            m.momentum,
                            0.0,
                            0.0,
                            weight_decay,
                            0.0,
                            0.0,
                            0.0,
                            0.0,
                        ]);
                        self.dispatch_elementwise(
                            KernelKey::new(Shader::Optim, "sgd_momentum"),
                            len,
                            [m.nesterov as u32, 0, 0],
                            &[(1, &bp), (2, &bg), (3, &bh), (5, &consts), (6, &bb)],
                        )
                    }
                }
            }
            Op::Adam {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                step,
                len,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let (bp, bg, bh, bs, bm, bv) = (
                    buf(param),
                    buf(grad),
                    self.hyper.clone(),
                    buf(step),
                    buf(exp_avg),
                    buf(exp_avg_sq),
                );
                // ln β in f64 on the host: the kernel's bias correction needs it accurately.
                let ln = |b: f32| if b > 0.0 { (b as f64).ln() as f32 } else { 0.0 };
                let consts = self.constants([
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ln(beta1),
                    ln(beta2),
                    0.0,
                    0.0,
                ]);
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Optim, "adam"),
                    len,
                    [decoupled as u32, 0, 0],
                    &[
                        (1, &bp),
                        (2, &bg),
                        (3, &bh),
                        (4, &bs),
                        (5, &consts),
                        (6, &bm),
                        (7, &bv),
                    ],
                )
            }
            Op::NormPartials {
                x,
                len,
                partials,
                first,
                groups,
                ..
            } => {
                let (bx, bp) = (buf(x), buf(partials));
                self.norm_partials(&bx, &bp, len, first, groups, false)
            }
            Op::ClipCoef {
                partials,
                slots,
                total_norm,
                coef,
                max_norm,
            } => {
                let (bp, bt, bc) = (buf(partials), buf(total_norm), buf(coef));
                self.dispatch(
                    KernelKey::new(Shader::Clip, "clip_coef"),
                    Some([u(slots)?, 0, 0, max_norm.to_bits()]),
                    &[(4, &bp), (5, &bt), (6, &bc)],
                    [1, 1, 1],
                )
            }
            Op::ScaleBy { x, coef, len } => {
                let (bx, bc) = (buf(x), buf(coef));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Clip, "scale_by"),
                    len,
                    [0, 0, 0],
                    &[(1, &bx), (7, &bc)],
                )
            }
            Op::ClampValue { x, len, limit } => {
                let bx = buf(x);
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Clip, "clamp_value"),
                    len,
                    [0, 0, limit.to_bits()],
                    &[(1, &bx)],
                )
            }
            Op::Dropout {
                x,
                y,
                step,
                len,
                p,
                stream,
            } => {
                let (bx, by, bs) = (buf(x), buf(y), buf(step));
                self.dispatch_elementwise(
                    KernelKey::new(Shader::Dropout, "dropout"),
                    len,
                    [stream, p.to_bits(), dropout_scale(p).to_bits()],
                    &[(1, &bx), (2, &by), (3, &bs)],
                )
            }
            Op::Copy {
                src,
                dst,
                len,
                offset,
                ..
            } => {
                let [bs, bd] = [src, dst].map(buf);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Stats, "copy"),
                    Some([u(len)?, u(offset)?, 0, 0]),
                    &[(7, &bs), (8, &bd)],
                    g,
                )
            }
            Op::ActivationStats {
                out,
                act_in,
                act_out,
                rows,
                cols,
                dead,
                saturation,
                stats,
                at,
                ..
            } => {
                let [bo, bi, ba, bs] = [out, act_in, act_out, stats].map(buf);
                let (lo, hi) = saturation.unwrap_or((0.0, 0.0));
                let mode = dead as u32 | (saturation.is_some() as u32) << 1;
                // Statistics steps are rare; one workgroup per layer is enough (see the WGSL).
                self.dispatch(
                    KernelKey::new(Shader::Stats, "activation_stats")
                        .with("LO_BITS", lo.to_bits())
                        .with("HI_BITS", hi.to_bits()),
                    Some([u(rows)?, u(cols)?, u(at)?, mode]),
                    &[(1, &bo), (2, &bi), (3, &ba), (4, &bs)],
                    [1, 1, 1],
                )
            }
            Op::Norm {
                x,
                minus,
                len,
                stats,
                at,
                ..
            } => {
                let [bx, bs] = [x, stats].map(buf);
                let bm = buf(minus.unwrap_or(x));
                self.dispatch(
                    KernelKey::new(Shader::Stats, "norm"),
                    Some([u(len)?, u(at)?, minus.is_some() as u32, 0]),
                    &[(1, &bx), (2, &bm), (4, &bs)],
                    [1, 1, 1],
                )
            }
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                ..
            } => {
                ensure!(
                    (1..=GUARD_GROUP).contains(&tensors.len()),
                    "a guard dispatch checks 1 to {GUARD_GROUP} tensors, got {}",
                    tensors.len()
                );
                // Unused places repeat the first tensor with length 0.
                let mut group = [(tensors[0].0, 0, 0); GUARD_GROUP];
                group[..tensors.len()].copy_from_slice(tensors);
                // Vector loads when every length allows (see `guard.wgsl`).
                let vec4 = tensors.iter().all(|t| t.1.is_multiple_of(4));
                let width = if vec4 { 4 } else { 1 };
                let (mut lens, mut slots) = ([0u32; GUARD_GROUP], [0u32; GUARD_GROUP]);
                for (i, &(_, len, slot)) in group.iter().enumerate() {
                    (lens[i], slots[i]) = (u(len / width)?, u(slot)?);
                }
                let slots = self
                    .ctx
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("guard slots"),
                        contents: bytemuck::cast_slice(&slots),
                        usage: wgpu::BufferUsages::STORAGE,
                    });
                let [b0, b1, b2, b3] = group.map(|t| buf(t.0));
                let [bst, bf] = [step, flags].map(buf);
                let longest = group.iter().map(|t| t.1 / width).max().unwrap_or(0);
                let g = self.grid(longest.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Guard, "guard").vec4(vec4),
                    Some(lens),
                    &[
                        (1, &b0),
                        (2, &b1),
                        (3, &b2),
                        (4, &b3),
                        (5, &bf),
                        (6, &bst),
                        (7, &slots),
                    ],
                    g,
                )
            }
        }
    }

    /// An op's fixed non-size constants (decay rates, eps) as a small uniform, made once
    /// at compile time like the shape uniform. `optim.wgsl` reads eight.
    fn constants(&self, values: [f32; 8]) -> wgpu::Buffer {
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("constants"),
                contents: bytemuck::cast_slice(&values),
                usage: wgpu::BufferUsages::UNIFORM,
            })
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
            Some([rows as u32, cols as u32, 0, 0]),
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

    /// Copies `len` floats of `buf` to the host through a staging buffer and waits.
    fn read_buffer(&self, buf: &wgpu::Buffer, len: usize, name: &str) -> Result<Vec<f32>> {
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

    /// Lowers the plan's statistics step the first time it is run.
    fn lower_stats(&mut self, id: PlanId) -> Result<()> {
        let p = self.plans.get(id).context("unknown plan id")?;
        if p.train_stats.is_some() {
            return Ok(());
        }
        let (plan, local) = (p.plan.clone(), p.local.clone());
        let dispatches =
            self.lower_ops(&plan, &local, &plan.train_stats, &mut Lowering::default())?;
        self.ctx
            .take_error()
            .context("compiling the statistics step")?;
        self.plans[id].train_stats = Some(dispatches);
        Ok(())
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

/// Whether a kernel over `len` values runs over `vec4<f32>` elements (see `ELEMENT_F32` in
/// `kernels.rs`), and its length in elements.
fn lanes(len: usize) -> (bool, usize) {
    if len.is_multiple_of(4) {
        (true, len / 4)
    } else {
        (false, len)
    }
}

/// `ops`' kinds and output tensors, with matmul shapes, e.g. `MatMul[256×784×512 Bᵀ]+AddBias+Activate → layers.0.out`.
fn describe_ops(plan: &Plan, ops: &[Op]) -> String {
    let kinds: Vec<String> = ops
        .iter()
        .map(|op| {
            let debug = format!("{op:?}");
            let kind = debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_string();
            match *op {
                Op::MatMul {
                    m,
                    k,
                    n,
                    trans_a,
                    trans_b,
                    accumulate,
                    ..
                } => format!(
                    "{kind}[{m}×{k}×{n}{}{}{}]",
                    if trans_a { " Aᵀ" } else { "" },
                    if trans_b { " Bᵀ" } else { "" },
                    if accumulate { " +=" } else { "" }
                ),
                _ => kind,
            }
        })
        .collect();
    let out = ops
        .last()
        .and_then(|op| op.reads_writes().1.first().copied())
        .map(|t| plan.tensors[t].name.as_str())
        .unwrap_or_default();
    format!("{} → {out}", kinds.join("+"))
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
        // Every stage starts with all mirrors stale (the host or the last step may have
        // written anything); eval continues from the state forward leaves. A training step
        // runs its own forward pass, so it starts stale.
        let mut st = Lowering::default();
        let forward = self.lower_ops(plan, &local, &plan.forward, &mut st)?;
        let eval = self.lower_ops(plan, &local, &plan.eval, &mut st)?;
        let train = self.lower_ops(plan, &local, &plan.train, &mut Lowering::default())?;
        self.ctx.take_error().context("compiling the plan")?;
        self.plans.push(GpuPlan {
            plan: plan.clone(),
            local,
            forward,
            eval,
            train,
            train_stats: None,
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
        self.counters.readbacks += 1;
        let (buf, len, name) = self.tensor_buffer(plan, t)?;
        self.read_buffer(buf, len, name)
    }

    fn read_persistent(&mut self, slot: usize) -> Result<Vec<f32>> {
        self.counters.readbacks += 1;
        let desc = self
            .persistent_desc
            .get(slot)
            .with_context(|| format!("no persistent slot {slot}"))?;
        self.read_buffer(&self.persistent[slot], desc.init.len(), &desc.name)
    }

    fn write_persistent(&mut self, slot: usize, data: &[f32]) -> Result<()> {
        let desc = self
            .persistent_desc
            .get(slot)
            .with_context(|| format!("no persistent slot {slot}"))?;
        ensure!(
            data.len() == desc.init.len(),
            "tensor '{}' holds {} values, got {}",
            desc.name,
            desc.init.len(),
            data.len()
        );
        let buf = &self.persistent[slot];
        self.ctx.scoped(
            || format!("writing tensor '{}'", desc.name),
            || {
                self.ctx
                    .queue
                    .write_buffer(buf, 0, bytemuck::cast_slice(data))
            },
        )
    }

    fn run(&mut self, plan: PlanId, stage: Stage) -> Result<()> {
        if stage == Stage::TrainWithStats {
            self.lower_stats(plan)?;
        }
        let steps = self.stage_steps(plan, stage)?;
        let encoder = self.record(steps);
        self.counters.stage_submissions += 1;
        let what = || format!("running the {stage:?} stage");
        self.ctx
            .scoped(what, || self.ctx.queue.submit([encoder.finish()]))?;
        Ok(())
    }

    fn set_hyper(&mut self, hyper: Hyper) -> Result<()> {
        self.ctx
            .queue
            .write_buffer(&self.hyper, 0, bytemuck::cast_slice(&hyper.to_array()));
        Ok(())
    }

    fn read_async(&mut self, plan: PlanId, tensors: &[TensorId]) -> Result<Box<dyn PendingRead>> {
        self.counters.readbacks += 1;
        let mut lens = Vec::with_capacity(tensors.len());
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("async readback"),
            });
        let total: usize = tensors
            .iter()
            .map(|&t| self.tensor_buffer(plan, t).map(|(_, len, _)| len * 4))
            .sum::<Result<usize>>()?;
        ensure!(total > 0, "nothing to read");
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("async readback"),
            size: total as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut offset = 0u64;
        for &t in tensors {
            let (buf, len, _) = self.tensor_buffer(plan, t)?;
            let bytes = (len * 4) as u64;
            encoder.copy_buffer_to_buffer(buf, 0, &staging, offset, bytes);
            offset += bytes;
            lens.push(len);
        }
        let ctx = &self.ctx;
        ctx.scoped(
            || "starting an asynchronous readback".to_string(),
            || ctx.queue.submit([encoder.finish()]),
        )?;
        let state = Arc::new(Mutex::new(None));
        let sink = state.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        Ok(Box::new(GpuPendingRead {
            ctx: self.ctx.clone(),
            staging,
            lens,
            state,
            collected: false,
        }))
    }
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// A staging buffer being mapped; the map callback fills `state` during a device poll.
struct GpuPendingRead {
    ctx: Arc<GpuContext>,
    staging: wgpu::Buffer,
    lens: Vec<usize>,
    state: Arc<Mutex<Option<MapResult>>>,
    collected: bool,
}

impl GpuPendingRead {
    fn take_state(&self) -> Option<MapResult> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl PendingRead for GpuPendingRead {
    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Vec<f32>>>> {
        ensure!(!self.collected, "this read was already collected");
        let status = match self.take_state() {
            Some(s) => s,
            None => {
                if wait {
                    self.ctx.wait()?;
                } else {
                    // One non-blocking look: runs the callbacks of finished work only.
                    self.ctx
                        .device
                        .poll(wgpu::PollType::Poll)
                        .map_err(|e| anyhow::anyhow!("polling the GPU failed: {e}"))?;
                    self.ctx.take_error()?;
                }
                match self.take_state() {
                    Some(s) => s,
                    None if wait => bail!("the GPU finished but the readback was not mapped"),
                    None => return Ok(None),
                }
            }
        };
        status.map_err(|e| anyhow::anyhow!("mapping a readback failed: {e}"))?;
        let values = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| anyhow::anyhow!("reading a readback: {e}"))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            let mut out = Vec::with_capacity(self.lens.len());
            let mut at = 0;
            for &len in &self.lens {
                out.push(all[at..at + len].to_vec());
                at += len;
            }
            out
        };
        self.staging.unmap();
        self.collected = true;
        Ok(Some(values))
    }
}
