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

/// A buffer-to-texture copy that refreshes a mirror: `rows` rows of `width` texels, read
/// from rows of `row_bytes` in the buffer.
#[derive(Clone)]
struct MirrorCopy {
    label: String,
    src: wgpu::Buffer,
    dst: wgpu::Texture,
    width: u32,
    rows: u32,
    row_bytes: u32,
}

impl MirrorCopy {
    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &self.src,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(self.row_bytes),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: &self.dst,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: self.width,
                height: self.rows,
                depth_or_array_layers: 1,
            },
        );
    }
}

#[derive(Clone)]
enum Step {
    Dispatch(Dispatch),
    Copy(MirrorCopy),
}

/// A texture mirror of a matrix `[rows, cols]` held in a buffer, or of its transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MirrorKey {
    tensor: TensorId,
    rows: usize,
    cols: usize,
    transpose: bool,
}

struct Mirror {
    view: wgpu::TextureView,
    pitch: u32,
    /// The copy or pack dispatches that bring the mirror up to date with its buffer.
    refresh: Vec<Step>,
}

/// Mirror bookkeeping while a plan is lowered. `fresh` holds the mirrors that are up to
/// date at the current point of the op list, so each is refreshed only after its tensor
/// was written (weights once per step, activations once for forward and backward).
#[derive(Default)]
struct Lowering {
    mirrors: HashMap<MirrorKey, Option<Mirror>>,
    fresh: HashSet<MirrorKey>,
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

    /// `buf` as a binding: the window set for it while an op is lowered in pieces, else
    /// the whole buffer.
    fn bind<'a>(&self, buf: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        match self.windows.iter().find(|w| &w.0 == buf) {
            Some(&(_, offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: buf,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
            None => buf.as_entire_binding(),
        }
    }

    /// The smallest number of rows, a multiple of `multiple`, whose bytes at `row_bytes`
    /// each are a multiple of the device's storage-binding offset alignment: where a
    /// window of rows may start.
    fn row_granularity(&self, row_bytes: usize, multiple: usize) -> usize {
        let align = (self.ctx.limits.min_storage_buffer_offset_alignment as usize).max(4);
        lcm(multiple, align / gcd(row_bytes.max(1), align))
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

    /// Lowers `op` with buffer kernels. Where a tensor it binds exceeds the largest
    /// storage binding, the op runs as several dispatches, each binding a window of the
    /// large tensors: ranges of elements for elementwise ops, ranges of rows for row-wise
    /// ones. Ops that cannot be split that way are refused, naming the tensor.
    fn lower_split(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        op: &Op,
    ) -> Result<Vec<Dispatch>> {
        let max = self.max_binding();
        let bytes = |t: TensorId| plan.tensors[t].len() as u64 * 4;
        let (reads, writes) = op.reads_writes();
        let mut touched = reads;
        touched.extend(writes);
        touched.sort_unstable();
        touched.dedup();
        let Some(&big) = touched.iter().find(|&&t| bytes(t) > max) else {
            return Ok(vec![self.lower_op(plan, local, op)?]);
        };
        let max_elems = (max / 4) as usize;
        let refuse = |why: &str| {
            anyhow::anyhow!(
                "tensor '{}' needs {} bytes, more than this adapter binds at once ({max} bytes), \
                 and {} cannot be split into smaller bindings{why}; use a smaller batch or layer",
                plan.tensors[big].name,
                bytes(big),
                describe_ops(plan, std::slice::from_ref(op)),
            )
        };
        if let Some(&mut len) = elementwise_len(&mut op.clone()) {
            // Windows of whole rows keep `i mod units` the unit of element i.
            let unit = match *op {
                Op::Prelu { units, .. } | Op::PreluBackward { units, .. } => units,
                _ => 1,
            };
            return self.lower_elementwise_windows(plan, local, op, &touched, len, unit, &refuse);
        }
        match *op {
            Op::AddBias { rows, cols, .. } => self.lower_elementwise_windows(
                plan,
                local,
                op,
                &touched,
                rows * cols,
                cols,
                &refuse,
            ),
            Op::Copy {
                len,
                dst_len,
                offset: 0,
                ..
            } if dst_len == len => {
                self.lower_elementwise_windows(plan, local, op, &touched, len, 1, &refuse)
            }
            Op::SumRows {
                x,
                out,
                rows,
                cols,
                accumulate,
            } => {
                if bytes(out) > max {
                    return Err(refuse(" (its output is too large)"));
                }
                // Later windows add to what the earlier ones summed.
                let part = |r0, rc| Op::SumRows {
                    x,
                    out,
                    rows: rc,
                    cols,
                    accumulate: accumulate || r0 > 0,
                };
                self.lower_row_windows(plan, local, rows, &[(x, cols)], part, &refuse)
            }
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
            } if trans_a && !trans_b && bytes(c) <= max && a != b => {
                // `dW = dZᵀ·X` with C fitting: split k, windows of the rows of both A
                // (`[k, m]`) and B (`[k, n]`), each window adding to C. (Other forms would
                // need the kernels to know the full row stride of an operand bound whole.)
                let part = |p0, pc| Op::MatMul {
                    a,
                    b,
                    c,
                    m,
                    k: pc,
                    n,
                    trans_a,
                    trans_b,
                    accumulate: accumulate || p0 > 0,
                };
                self.lower_row_windows(plan, local, k, &[(a, m), (b, n)], part, &refuse)
            }
            Op::MatMul {
                a,
                b,
                c,
                m,
                k,
                n,
                trans_a: false,
                trans_b,
                accumulate,
            } => {
                // Rows of C and of A together; B whole. Windows are matched by buffer, so
                // B must not be A or C.
                if bytes(b) > max {
                    return Err(refuse(" (its B operand is too large)"));
                }
                if b == a || b == c {
                    return Err(refuse(" (B is also A or C)"));
                }
                let part = |_, rc| Op::MatMul {
                    a,
                    b,
                    c,
                    m: rc,
                    k,
                    n,
                    trans_a: false,
                    trans_b,
                    accumulate,
                };
                self.lower_row_windows(plan, local, m, &[(a, k), (c, n)], part, &refuse)
            }
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                flags_len,
            } => {
                // Small tensors keep their shared dispatch; each large one gets its own,
                // in windows.
                let (large, small): (Vec<_>, Vec<_>) =
                    tensors.iter().partition(|&&(t, _, _)| bytes(t) > max);
                let mut out = Vec::new();
                if !small.is_empty() {
                    let part = Op::GuardFinite {
                        tensors: small,
                        step,
                        flags,
                        flags_len,
                    };
                    out.push(self.lower_op(plan, local, &part)?);
                }
                for (t, len, slot) in large {
                    let part = Op::GuardFinite {
                        tensors: vec![(t, len, slot)],
                        step,
                        flags,
                        flags_len,
                    };
                    let touched = [t, step, flags];
                    out.extend(self.lower_elementwise_windows(
                        plan, local, &part, &touched, len, 1, &refuse,
                    )?);
                }
                Ok(out)
            }
            Op::NormPartials {
                x,
                len,
                partials,
                first,
                groups,
                ..
            } => {
                // Windows of whole rounds (`groups` blocks) keep each block's partial.
                let round = groups * NORM_BLOCK;
                let per = max_elems / round * round;
                if per == 0 || bytes(partials) > max {
                    return Err(refuse(""));
                }
                let [bx, bp] = [x, partials].map(|t| self.buffer(local, plan, t).clone());
                let mut out = Vec::new();
                for start in (0..len).step_by(per) {
                    let n = per.min(len - start);
                    self.windows = vec![(bx.clone(), (start * 4) as u64, (n * 4) as u64)];
                    // Later windows merge into the partials the earlier ones wrote.
                    let d = self.norm_partials(&bx, &bp, n, first, groups, start > 0);
                    self.windows.clear();
                    out.push(d?);
                }
                Ok(out)
            }
            _ => Err(refuse("")),
        }
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

    /// Dispatches over windows of `rows` rows of `tensors` (each given with its row
    /// length), `part(first_row, rows)` being the op for one window; as many rows per
    /// window as the widest tensor allows, starting where every tensor's binding offset
    /// is aligned.
    fn lower_row_windows(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        rows: usize,
        tensors: &[(TensorId, usize)],
        part: impl Fn(usize, usize) -> Op,
        refuse: &dyn Fn(&str) -> anyhow::Error,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding() / 4) as usize;
        let gran = tensors
            .iter()
            .fold(1, |g, &(_, row)| lcm(g, self.row_granularity(row * 4, 1)));
        let widest = tensors
            .iter()
            .map(|&(_, row)| row)
            .max()
            .unwrap_or(1)
            .max(1);
        let step = max_elems / widest / gran * gran;
        if step == 0 {
            return Err(refuse(""));
        }
        let bufs: Vec<(wgpu::Buffer, usize)> = tensors
            .iter()
            .map(|&(t, row)| (self.buffer(local, plan, t).clone(), row))
            .collect();
        let mut out = Vec::new();
        for first in (0..rows).step_by(step) {
            let count = step.min(rows - first);
            self.windows = bufs
                .iter()
                .map(|(b, row)| {
                    (
                        b.clone(),
                        (first * row * 4) as u64,
                        (count * row * 4) as u64,
                    )
                })
                .collect();
            let d = self.lower_op(plan, local, &part(first, count));
            self.windows.clear();
            out.push(d?);
        }
        Ok(out)
    }

    /// `op` (an elementwise op over `len` elements, see `lower_split`) as dispatches over
    /// windows of `len` elements, each a multiple of `unit`. Tensors in `touched` of
    /// length `len` are windowed; the others are bound whole and must fit.
    #[allow(clippy::too_many_arguments)]
    fn lower_elementwise_windows(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        op: &Op,
        touched: &[TensorId],
        len: usize,
        unit: usize,
        refuse: &dyn Fn(&str) -> anyhow::Error,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding() / 4) as usize;
        let (full, other): (Vec<TensorId>, Vec<TensorId>) =
            touched.iter().partition(|&&t| plan.tensors[t].len() == len);
        if other.iter().any(|&t| plan.tensors[t].len() > max_elems) {
            return Err(refuse(" (a second large tensor has another length)"));
        }
        // Window starts aligned for the binding offset and for vec4 kernels.
        let gran = lcm(self.row_granularity(4, 4), unit.max(1));
        let per = max_elems / gran * gran;
        if per == 0 {
            return Err(refuse(""));
        }
        let bufs: Vec<wgpu::Buffer> = full
            .iter()
            .map(|&t| self.buffer(local, plan, t).clone())
            .collect();
        let mut out = Vec::new();
        for start in (0..len).step_by(per) {
            let n = per.min(len - start);
            self.windows = bufs
                .iter()
                .map(|b| (b.clone(), (start * 4) as u64, (n * 4) as u64))
                .collect();
            let d = self.lower_op(plan, local, &with_len(op, n));
            self.windows.clear();
            out.push(d?);
        }
        Ok(out)
    }

    /// Rows per window of a `[rows, cols]` tensor: as many as fit in `max_elems`
    /// elements, a multiple of `multiple` and of the offset alignment. `None` when not
    /// even one such group of rows fits.
    fn row_window(&self, cols: usize, multiple: usize, max_elems: usize) -> Option<usize> {
        let gran = self.row_granularity(cols * 4, multiple);
        let rows = max_elems / cols.max(1) / gran * gran;
        (rows > 0).then_some(rows)
    }

    /// Whether the device runs subgroups of exactly 8 invocations, as the cooperative
    /// loads of the texture matmul assume.
    fn subgroups_of_8(&self) -> bool {
        self.ctx
            .device
            .features()
            .contains(wgpu::Features::SUBGROUP)
            && self.ctx.info.subgroup_min_size == 8
            && self.ctx.info.subgroup_max_size == 8
    }

    /// The texture-mirror matmul, or `None` when a mirror would not fit the device's
    /// texture limits (the caller then uses a buffer kernel).
    #[allow(clippy::too_many_arguments)]
    fn lower_texture_matmul(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        ops: &[Op],
        epilogue: Epilogue,
        subgroup: bool,
        st: &mut Lowering,
        steps: &mut Vec<Step>,
    ) -> Result<Option<Vec<Dispatch>>> {
        let Op::MatMul {
            a,
            b,
            c,
            m,
            k,
            n,
            trans_a,
            trans_b,
            accumulate,
        } = ops[0]
        else {
            unreachable!("only matmuls have texture kernels")
        };
        // A transposed A is transposed into its mirror: read in place, each of the
        // kernel's strips of A would span all k rows, which with those of B overflows the
        // TLB for large k (1024³ ran at 60% of the untransposed speed). It is the smaller
        // operand in an MLP's `dW = dYᵀ·X`, and the kernel then needs no transposed-A form.
        // A transposed B is read in place.
        let a_key = MirrorKey {
            tensor: a,
            rows: if trans_a { k } else { m },
            cols: if trans_a { m } else { k },
            transpose: trans_a,
        };
        let b_key = MirrorKey {
            tensor: b,
            rows: if trans_b { n } else { k },
            cols: if trans_b { k } else { n },
            transpose: false,
        };
        for key in [a_key, b_key] {
            if let std::collections::hash_map::Entry::Vacant(slot) = st.mirrors.entry(key) {
                slot.insert(self.mirror(plan, local, key)?);
            }
        }
        let (Some(ma), Some(mb)) = (&st.mirrors[&a_key], &st.mirrors[&b_key]) else {
            return Ok(None);
        };
        let groups = [
            m.div_ceil(matmul_tex::ROWS as usize),
            n.div_ceil(matmul_tex::COLS as usize),
        ];
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            return Ok(None);
        }
        let [code, act] = epilogue.codes();
        let (view_a, view_b) = (ma.view.clone(), mb.view.clone());
        for key in [a_key, b_key] {
            if st.fresh.insert(key) {
                let refresh = st.mirrors[&key]
                    .as_ref()
                    .expect("checked above")
                    .refresh
                    .clone();
                steps.extend(refresh);
            }
        }
        let kernel = TexKernel { trans_b, subgroup };
        let buf = |t: TensorId| self.buffer(local, plan, t).clone();
        // Buffers of the epilogue at bindings 4..=6 (see `Epilogue`), placeholders where
        // it has none, and which tensors are shaped like C.
        let [p0, p1, p2] = self.placeholders.clone();
        let (extra, c_shaped): ([wgpu::Buffer; 3], Vec<TensorId>) = match (epilogue, &ops[1..]) {
            (Epilogue::Plain, _) => ([p0, p1, p2], vec![c]),
            (Epilogue::Bias { act: None }, [Op::AddBias { bias, .. }]) => {
                ([buf(*bias), p1, p2], vec![c])
            }
            (
                Epilogue::Bias { act: Some(_) },
                [Op::AddBias { bias, .. }, Op::Activate { y, .. }],
            ) => ([buf(*bias), buf(*y), p2], vec![c, *y]),
            (Epilogue::ActGrad { .. }, [Op::ActivateBackward { x, y, dx, .. }]) => {
                ([buf(*x), buf(*y), buf(*dx)], vec![c, *x, *y, *dx])
            }
            _ => unreachable!("fusable_epilogue matched these ops"),
        };
        // Where C exceeds one storage binding, dispatch windows of its rows; the kernel
        // reads A's mirror from the window's first row (`dims[7]`).
        let max_elems = (self.max_binding() / 4) as usize;
        let step = if m * n <= max_elems {
            m
        } else {
            // Not even one block of rows fits: the buffer kernels refuse it by name.
            let Some(rows) = self.row_window(n, matmul_tex::ROWS as usize, max_elems) else {
                return Ok(None);
            };
            rows.min(m)
        };
        let windowed: Vec<wgpu::Buffer> = c_shaped.iter().map(|&t| buf(t)).collect();
        let bc = buf(c);
        let mut dispatches = Vec::new();
        for r0 in (0..m).step_by(step) {
            let rc = step.min(m - r0);
            let dims = [
                rc as u32,
                k as u32,
                n as u32,
                ma.pitch,
                accumulate as u32,
                code,
                act,
                r0 as u32,
            ];
            if step < m {
                self.windows = windowed
                    .iter()
                    .map(|b| (b.clone(), (r0 * n * 4) as u64, (rc * n * 4) as u64))
                    .collect();
            }
            let mut bindings = vec![
                (1, wgpu::BindingResource::TextureView(&view_a)),
                (2, wgpu::BindingResource::TextureView(&view_b)),
                (3, self.bind(&bc)),
            ];
            bindings.extend((4..).zip(extra.iter().map(|b| self.bind(b))));
            let d = self.dispatch_with(
                KernelKey::new(Shader::MatmulTexture(kernel), "main"),
                Some(&dims),
                bindings,
                [
                    rc.div_ceil(matmul_tex::ROWS as usize) as u32,
                    groups[1] as u32,
                    1,
                ],
            );
            self.windows.clear();
            dispatches.push(d?);
        }
        Ok(Some(dispatches))
    }

    /// Creates the texture mirror for `key` and the step that refreshes it: a plain copy
    /// where buffer rows are a multiple of 256 bytes, else a pack dispatch (padding rows to
    /// whole texels, or transposing). `None` when it exceeds the device's limits.
    fn mirror(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        key: MirrorKey,
    ) -> Result<Option<Mirror>> {
        let (rows, cols) = if key.transpose {
            (key.cols, key.rows)
        } else {
            (key.rows, key.cols)
        };
        let pitch = cols.div_ceil(4);
        // A row stride of an odd number of 64-byte lines puts the rows the kernel reads
        // together in distinct cache sets (see `matmul_tex.rs`).
        let lines = pitch.div_ceil(4);
        let width = 4 * (lines | 1);
        let height = rows + matmul_tex::MIRROR_SLACK_ROWS;
        let max_dim = self.ctx.limits.max_texture_dimension_2d as usize;
        let max_groups = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        if width > max_dim || height > max_dim || rows > max_groups {
            return Ok(None);
        }
        let name = &plan.tensors[key.tensor].name;
        let texture = self.ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(&format!("{name} (mirror)")),
            size: wgpu::Extent3d {
                width: width as u32,
                height: height as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let src = self.buffer(local, plan, key.tensor).clone();
        let label = format!("mirror {name}{}", if key.transpose { "ᵀ" } else { "" });
        // Buffer-to-texture copies need source rows that are a multiple of 256 bytes.
        if !key.transpose && cols.is_multiple_of(64) {
            let copy = Step::Copy(MirrorCopy {
                label,
                src,
                dst: texture,
                width: pitch as u32,
                rows: rows as u32,
                row_bytes: (cols * 4) as u32,
            });
            return Ok(Some(Mirror {
                view,
                pitch: pitch as u32,
                refresh: vec![copy],
            }));
        }
        // A pack dispatch binds the source: one larger than a storage binding is packed in
        // windows of its rows (a multiple of 4, so transposed windows fill whole texels),
        // each told its first row (`dims[3]`).
        let (src_rows, src_cols) = (key.rows, key.cols);
        let max_elems = (self.max_binding() / 4) as usize;
        let step = if src_rows * src_cols <= max_elems {
            src_rows
        } else {
            // Not even 4 rows fit: no mirror, the buffer kernels refuse it by name.
            let Some(rows) = self.row_window(src_cols, 4, max_elems) else {
                return Ok(None);
            };
            rows.min(src_rows)
        };
        let mut refresh = Vec::new();
        for r0 in (0..src_rows).step_by(step) {
            let rc = step.min(src_rows - r0);
            if step < src_rows {
                self.windows = vec![(
                    src.clone(),
                    (r0 * src_cols * 4) as u64,
                    (rc * src_cols * 4) as u64,
                )];
            }
            let (kernel, binding, dims, groups) =
                if key.transpose && src_rows.is_multiple_of(4) && src_cols.is_multiple_of(4) {
                    (
                        KernelKey::new(Shader::Pack, "transpose4"),
                        3,
                        [rc, src_cols, pitch, r0],
                        [(src_cols / 4).div_ceil(PACK_WG), rc / 4],
                    )
                } else if key.transpose {
                    let window_pitch = rc.div_ceil(4);
                    (
                        KernelKey::new(Shader::Pack, "pack").with("TRANSPOSE", 1),
                        1,
                        [rc, src_cols, window_pitch, r0],
                        [window_pitch.div_ceil(PACK_WG), src_cols],
                    )
                } else {
                    let (entry, binding) = if cols.is_multiple_of(4) {
                        ("pack4", 3)
                    } else {
                        ("pack", 1)
                    };
                    (
                        KernelKey::new(Shader::Pack, entry),
                        binding,
                        [rc, cols, pitch, r0],
                        [pitch.div_ceil(PACK_WG), rc],
                    )
                };
            let d = self.dispatch_with(
                kernel,
                Some(&dims.map(|v| v as u32)),
                vec![
                    (binding, self.bind(&src)),
                    (2, wgpu::BindingResource::TextureView(&view)),
                ],
                [groups[0] as u32, groups[1] as u32, 1],
            );
            self.windows.clear();
            let mut d = d?;
            d.label = label.clone();
            refresh.push(Step::Dispatch(d));
        }
        Ok(Some(Mirror {
            view,
            pitch: pitch as u32,
            refresh,
        }))
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::activation("forward", act).vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::activation("backward", act).vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
                    &[(1, &bx), (2, &by), (3, &bdy), (4, &bdx)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "rrelu_forward")
                        .vec4(vec4)
                        .with_f32("LOWER", lower)
                        .with_f32("UPPER", upper),
                    Some([u(len)?, 0, stream, 0]),
                    &[(1, &bx), (4, &by), (5, &bs)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "rrelu_backward")
                        .vec4(vec4)
                        .with_f32("LOWER", lower)
                        .with_f32("UPPER", upper),
                    Some([u(len)?, 0, stream, 0]),
                    &[(1, &bx), (3, &bdy), (4, &bdx), (5, &bs)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "prelu_forward").vec4(vec4),
                    Some([u(len)?, u(units)?, 0, 0]),
                    &[(1, &bx), (4, &by), (6, &bw)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Activation, "prelu_backward").vec4(vec4),
                    Some([u(len)?, u(units)?, 0, 0]),
                    &[(1, &bx), (3, &bdy), (4, &bdx), (6, &bw), (7, &bt)],
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Elementwise, "add").vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
                    &[(1, &ba), (2, &bb), (3, &bo)],
                    g,
                )
            }
            Op::Accumulate { x, y, len } => {
                let [bx, by] = [x, y].map(buf);
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Elementwise, "accumulate").vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
                    &[(1, &bx), (3, &by)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                let consts = self.constants([0.0; 8]);
                self.dispatch(
                    KernelKey::new(Shader::Optim, "sgd").vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
                    &[(1, &bp), (2, &bg), (3, &bh), (5, &consts)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                match momentum {
                    None => {
                        let consts =
                            self.constants([0.0, 0.0, 0.0, weight_decay, 0.0, 0.0, 0.0, 0.0]);
                        self.dispatch(
                            KernelKey::new(Shader::Optim, "sgd").vec4(vec4),
                            Some([u(len)?, 0, 0, 0]),
                            &[(1, &bp), (2, &bg), (3, &bh), (5, &consts)],
                            g,
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
                        self.dispatch(
                            KernelKey::new(Shader::Optim, "sgd_momentum").vec4(vec4),
                            Some([u(len)?, m.nesterov as u32, 0, 0]),
                            &[(1, &bp), (2, &bg), (3, &bh), (5, &consts), (6, &bb)],
                            g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
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
                self.dispatch(
                    KernelKey::new(Shader::Optim, "adam").vec4(vec4),
                    Some([u(len)?, decoupled as u32, 0, 0]),
                    &[
                        (1, &bp),
                        (2, &bg),
                        (3, &bh),
                        (4, &bs),
                        (5, &consts),
                        (6, &bm),
                        (7, &bv),
                    ],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Clip, "scale_by").vec4(vec4),
                    Some([u(len)?, 0, 0, 0]),
                    &[(1, &bx), (7, &bc)],
                    g,
                )
            }
            Op::ClampValue { x, len, limit } => {
                let bx = buf(x);
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Clip, "clamp_value").vec4(vec4),
                    Some([u(len)?, 0, 0, limit.to_bits()]),
                    &[(1, &bx)],
                    g,
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
                let (vec4, len) = lanes(len);
                let g = self.grid(len.div_ceil(ELEMENTWISE_WG))?;
                self.dispatch(
                    KernelKey::new(Shader::Dropout, "dropout").vec4(vec4),
                    Some([u(len)?, stream, p.to_bits(), dropout_scale(p).to_bits()]),
                    &[(1, &bx), (2, &by), (3, &bs)],
                    g,
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

/// The epilogue a texture matmul at `ops[0]` can absorb, and how many ops it then covers:
/// the bias add and activation that follow a layer's forward matmul, or the activation
/// derivative that follows the matmul producing `dH`. Each absorbed op must work on
/// exactly the matmul's output.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// The element count of an op in which element i of each full-length tensor depends
/// only on element i of the others (and for PReLU on `i mod units`), so that it can run
/// over windows of elements (see `lower_split`).
fn elementwise_len(op: &mut Op) -> Option<&mut usize> {
    match op {
        Op::Activate { len, .. }
        | Op::ActivateBackward { len, .. }
        | Op::Add { len, .. }
        | Op::Accumulate { len, .. }
        | Op::SgdStep { len, .. }
        | Op::Sgd { len, .. }
        | Op::Adam { len, .. }
        | Op::ScaleBy { len, .. }
        | Op::ClampValue { len, .. }
        | Op::Prelu { len, .. }
        | Op::PreluBackward { len, .. } => Some(len),
        _ => None,
    }
}

/// `op` with its element count set to `n` (the ops `lower_split` windows by elements).
fn with_len(op: &Op, n: usize) -> Op {
    let mut op = op.clone();
    if let Some(len) = elementwise_len(&mut op) {
        *len = n;
        return op;
    }
    match &mut op {
        Op::Copy { len, dst_len, .. } => (*len, *dst_len) = (n, n),
        Op::AddBias { rows, cols, .. } => *rows = n / *cols,
        Op::GuardFinite { tensors, .. } => {
            for t in tensors {
                t.1 = n;
            }
        }
        _ => unreachable!("only elementwise ops are split by elements"),
    }
    op
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

fn fusable_epilogue(ops: &[Op]) -> (Epilogue, usize) {
    let Op::MatMul {
        c,
        m,
        n,
        accumulate: false,
        ..
    } = ops[0]
    else {
        return (Epilogue::Plain, 1);
    };
    match ops.get(1..) {
        Some([Op::AddBias { y, rows, cols, .. }, rest @ ..])
            if *y == c && *rows == m && *cols == n =>
        {
            match rest.first() {
                Some(&Op::Activate { act, x, y, len })
                    if fusable_activation(act)
                        && x == c
                        && y != c
                        && Some(&y) != ops.get(1).and_then(bias_of)
                        && len == m * n =>
                {
                    (Epilogue::Bias { act: Some(act) }, 3)
                }
                _ => (Epilogue::Bias { act: None }, 2),
            }
        }
        Some(
            [Op::ActivateBackward {
                act,
                dy,
                dx,
                x,
                y,
                len,
            }, ..],
        ) if *dy == c
            && fusable_activation(*act)
            && *len == m * n
            && x != y
            && ![*x, *y, c].contains(dx)
            && ![*x, *y].contains(&c) =>
        {
            (Epilogue::ActGrad { act: *act }, 2)
        }
        _ => (Epilogue::Plain, 1),
    }
}

/// Activations the texture kernel's epilogue computes itself: those whose kernel ids
/// `act_fn.wgsl` implements (identity, sigmoid, tanh, relu).
fn fusable_activation(act: Activation) -> bool {
    act.kernel_id() <= 3
}

fn bias_of(op: &Op) -> Option<&TensorId> {
    match op {
        Op::AddBias { bias, .. } => Some(bias),
        _ => None,
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
