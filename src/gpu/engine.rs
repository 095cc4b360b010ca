//! The GPU backend: every tensor is a device buffer, every op a prebuilt dispatch, and a
//! stage is recorded into one command buffer and submitted once.
//!
//! Each op lowers itself (the `wgpu.rs` of its family in `crate::ops`); this executor
//! walks the op lists, hands each op a [`Lowerer`], splits ops over tensors larger than one
//! storage binding, and records the steps. On CPU-backed adapters the matmuls read their
//! operands from texture mirrors; a stage then interleaves the copies that refresh those
//! mirrors with its compute passes, still in a single submission.

use crate::device::lower::storage_buffer;
use crate::device::{
    Counters, GpuContext, Kernels, LowerParts, Lowerer, MatmulVariant, Mirrors, Step,
};
use crate::engine::{BindGroupBudget, Engine, MemoryBudget, PendingRead, PlanId};
use crate::graph::{Plan, Stage};
use crate::ops::matmul::tune::{self, TileChoice, TuneOptions, Tuner};
use crate::ops::Op;
use crate::tensor::{Hyper, PersistentDesc, Storage, TensorId};
use anyhow::{bail, ensure, Context, Result};
use std::sync::{Arc, Mutex};

mod readback;

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
    /// The training step as its `Stage::Part`s and `Stage::Update` (last), lowered on
    /// first use: only data-parallel training runs them.
    split: Option<Vec<Vec<Step>>>,
}

pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    matmul_variant: MatmulVariant,
    tuner: Tuner,
    persistent: Vec<wgpu::Buffer>,
    persistent_desc: Vec<PersistentDesc>,
    hyper: wgpu::Buffer,
    /// Stand-ins for the epilogue buffers a texture matmul does not use.
    placeholders: [wgpu::Buffer; 6],
    plans: Vec<GpuPlan>,
    counters: Counters,
    /// Limits planned against when lower than the device's (see `limit_memory`).
    memory_limits: Option<(u64, u64)>,
    /// Staging buffers of collected asynchronous readbacks, for the next ones to reuse:
    /// training reads the guard flags back after every step, and a buffer made and
    /// freed per step would cost an allocation on that path.
    staging_pool: StagingPool,
}

pub(super) type StagingPool = Arc<Mutex<Vec<wgpu::Buffer>>>;

/// Staging buffers kept for reuse: a few readbacks are in flight at once.
pub(super) const STAGING_POOL_MAX: usize = 8;

impl GpuEngine {
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        let hyper = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hyper"),
            size: (Hyper::LEN * 4) as u64,
            // A uniform too for the grouped SGD, whose storage bindings all go to tensors.
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let placeholders = [0, 1, 2, 3, 4, 5].map(|i| {
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
            tuner: Tuner::default(),
            persistent: Vec::new(),
            persistent_desc: Vec::new(),
            hyper,
            plans: Vec::new(),
            counters: Counters::default(),
            memory_limits: None,
            staging_pool: StagingPool::default(),
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

    /// How plans compiled from now on choose the tiled matmul's configuration (else
    /// from the environment, see [`TuneOptions::from_env`]).
    pub fn set_tune_options(&mut self, options: TuneOptions) {
        self.tuner.set_options(options);
    }

    /// The tiled matmul's configuration per shape class so far, and shape classes timed.
    pub fn matmul_tiles(&self) -> (Vec<TileChoice>, usize) {
        (self.tuner.choices(), self.tuner.timed)
    }

    /// The concrete variant `variant` stands for on this engine's adapter: a pinned tile
    /// makes `auto` the tiled kernel even on CPU-backed adapters.
    pub fn resolve_matmul_variant(&self, variant: MatmulVariant) -> MatmulVariant {
        match variant {
            MatmulVariant::Auto if self.tuner.pinned() => MatmulVariant::Tiled,
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
        storage_buffer(&self.ctx, self.max_buffer(), label, bytes)
    }

    /// The steps of `stage` in order.
    fn stage_steps(&self, plan: PlanId, stage: Stage) -> Result<Vec<&Step>> {
        let p = self.plans.get(plan).context("unknown plan id")?;
        let (head, tail): (&[Step], &[Step]) = match stage {
            Stage::Predict => (&p.forward, &[]),
            Stage::Eval => (&p.forward, &p.eval),
            Stage::Train => (&p.train, &[]),
            Stage::TrainWithStats => (p.train_stats.as_deref().unwrap_or_default(), &[]),
            Stage::Part(k) => (
                p.split
                    .as_ref()
                    .and_then(|s| s[..s.len() - 1].get(k))
                    .map_or(&[], |s| s),
                &[],
            ),
            Stage::Update => (
                p.split.as_ref().and_then(|s| s.last()).map_or(&[], |s| s),
                &[],
            ),
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

    /// Records `stage` of `plan` (lowering the statistics step on first use) and counts
    /// it as one stage submission.
    fn record_stage(&mut self, plan: PlanId, stage: Stage) -> Result<wgpu::CommandEncoder> {
        self.lower_on_demand(plan, stage)?;
        let steps = self.stage_steps(plan, stage)?;
        let dispatches = steps
            .iter()
            .filter(|s| matches!(s, Step::Dispatch(_)))
            .count();
        let encoder = self.record(steps);
        self.counters.stage_submissions += 1;
        self.counters.dispatches += dispatches;
        Ok(encoder)
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
        self.lower_on_demand(plan, stage)?;
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

    /// Lowers the op lists of `plan` in order, continuing from the mirror state in
    /// `mirrors` (each list's starting state is the caller's choice, see `compile`).
    fn lower_ops(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        lists: &[(&[Op], bool)],
    ) -> Result<Vec<Vec<Step>>> {
        let variant = self.resolve_matmul_variant(self.matmul_variant);
        if variant == MatmulVariant::Tiled {
            let shapes = tune::shapes(lists.iter().map(|l| l.0));
            self.tuner.prepare(&self.ctx, &mut self.kernels, &shapes)?;
        }
        let (max_binding, max_buffer) = (self.max_binding(), self.max_buffer());
        let mut mirrors = Mirrors::default();
        let mut lw = Lowerer::new(LowerParts {
            ctx: &self.ctx,
            kernels: &mut self.kernels,
            counters: &mut self.counters,
            tensors: &plan.tensors,
            local,
            persistent: &self.persistent,
            hyper: &self.hyper,
            placeholders: &self.placeholders,
            variant,
            tiles: self.tuner.tiles(),
            mirrors: &mut mirrors,
            max_binding,
            max_buffer,
        });
        let mut out = Vec::new();
        for &(ops, fresh_start) in lists {
            if fresh_start {
                lw.mirrors.fresh.clear();
            }
            lw.absorbed.clear();
            out.push(lower_list(&mut lw, ops)?);
        }
        Ok(out)
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

    /// Lowers what `compile` leaves for first use: the statistics step, or the training
    /// step split into its `Stage::Part`s and `Stage::Update` (data-parallel training).
    /// Each list starts with all mirrors stale: the host rewrites gradients in between.
    fn lower_on_demand(&mut self, id: PlanId, stage: Stage) -> Result<()> {
        let p = self.plans.get(id).context("unknown plan id")?;
        let stats = stage == Stage::TrainWithStats;
        let done = match stage {
            Stage::TrainWithStats => p.train_stats.is_some(),
            Stage::Part(_) | Stage::Update => p.split.is_some(),
            _ => true,
        };
        if done {
            return Ok(());
        }
        let (plan, local) = (p.plan.clone(), p.local.clone());
        let (what, lists): (&str, Vec<(&[Op], bool)>) = if stats {
            ("the statistics step", vec![(&plan.train_stats, true)])
        } else {
            let mut lists: Vec<(&[Op], bool)> = (0..plan.parts.len())
                .filter_map(|k| plan.part_range(k))
                .map(|r| (&plan.train[r], true))
                .collect();
            lists.push((&plan.train[plan.update_start..], true));
            ("the split step", lists)
        };
        if let Some(budget) = self.bind_group_budget() {
            budget.check(lists.iter().map(|l| l.0.len()).sum(), what)?;
        }
        let mut lowered = self.lower_ops(&plan, &local, &lists)?;
        self.ctx
            .take_error()
            .with_context(|| format!("compiling {what}"))?;
        let p = &mut self.plans[id];
        if stats {
            p.train_stats = lowered.pop();
        } else {
            p.split = Some(lowered);
        }
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

/// Lowers one op list: each op (with the ops after it that a fused kernel absorbs) to
/// the steps that run it, split over windows where a tensor it touches exceeds one
/// storage binding; mirrors of tensors an op writes go stale after it.
fn lower_list(lw: &mut Lowerer, ops: &[Op]) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        let (mut lowered, used) = match op.lower_fused(lw, &ops[i..])? {
            Some((s, used)) => (s, used),
            None => {
                let dispatches = lw.lower_op(op)?;
                (dispatches.into_iter().map(Step::Dispatch).collect(), 1)
            }
        };
        let label = describe(lw, &ops[i..i + used]);
        let own = |s: &Step| matches!(s, Step::Dispatch(d) if !d.label.starts_with("mirror "));
        let parts = lowered.iter().filter(|s| own(s)).count();
        let mut part = 0;
        for step in &mut lowered {
            if !own(step) {
                continue;
            }
            if let Step::Dispatch(d) = step {
                part += 1;
                d.label = if parts > 1 {
                    format!("{label} (part {part} of {parts})")
                } else {
                    label.clone()
                };
            }
        }
        steps.extend(lowered);
        for op in &ops[i..i + used] {
            for t in op.reads_writes().1 {
                lw.mirrors.written(t);
            }
        }
        lw.mirrors.settle();
        i += used;
    }
    Ok(steps)
}

/// `ops`' labels and output tensor, e.g. `MatMul[256×784×512 Bᵀ]+AddBias+Activate →
/// layers.0.out`.
fn describe(lw: &Lowerer, ops: &[Op]) -> String {
    let kinds: Vec<String> = ops.iter().map(Op::label).collect();
    let out = ops
        .last()
        .and_then(|op| op.reads_writes().1.first().copied())
        .map(|t| lw.tensor(t).name.as_str())
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
            bufs.push(self.storage_buffer(&p.name, (p.init.len() * 4) as u64)?);
        }
        // Written after all are made: each write's staging buffer, freed later, would
        // otherwise leave a hole between two tensors that every later allocation searches.
        for (buf, p) in bufs.iter().zip(persistent) {
            self.ctx
                .queue
                .write_buffer(buf, 0, bytemuck::cast_slice(&p.init));
        }
        self.persistent = bufs;
        self.persistent_desc = persistent.to_vec();
        self.ctx.take_error()
    }

    fn bind_group_budget(&self) -> Option<BindGroupBudget> {
        super::budget::bind_groups(&self.ctx.info)
    }

    fn memory_budget(&self) -> Option<MemoryBudget> {
        if let Some(heap) = self.ctx.device_memory {
            // Only this process's own allocations are known; other processes' use of the
            // GPU is not, so this is a ceiling, and an allocation can still fail.
            let held = self
                .ctx
                .device
                .generate_allocator_report()
                .map_or(0, |r| r.total_reserved_bytes);
            let env = super::budget::DEVICE_MEMORY_ENV;
            let source = match std::env::var(env) {
                Ok(cap) if !cap.trim().is_empty() => format!("at most {env}={cap}"),
                _ => format!("a {} device-local heap", crate::engine::format_bytes(heap)),
            };
            return Some(MemoryBudget {
                available: heap.saturating_sub(held),
                memory: format!(
                    "GPU memory ({source}, less {} this process holds)",
                    crate::engine::format_bytes(held)
                ),
            });
        }
        if self.ctx.info.device_type == wgpu::DeviceType::Cpu {
            return MemoryBudget::host();
        }
        None
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
        if let Some(budget) = self.bind_group_budget() {
            let need = plan.forward.len() + plan.eval.len() + plan.train.len();
            budget.check(need, "compiling this plan")?;
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
        let lists = [
            (plan.forward.as_slice(), true),
            (plan.eval.as_slice(), false),
            (plan.train.as_slice(), true),
        ];
        let [forward, eval, train]: [Vec<Step>; 3] = self
            .lower_ops(plan, &local, &lists)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("three op lists lower to three step lists"))?;
        self.ctx.take_error().context("compiling the plan")?;
        self.plans.push(GpuPlan {
            plan: plan.clone(),
            local,
            forward,
            eval,
            train,
            train_stats: None,
            split: None,
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
        let encoder = self.record_stage(plan, stage)?;
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
        let encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("async readback"),
            });
        self.submit_with_readback(encoder, plan, tensors, || {
            "starting an asynchronous readback".to_string()
        })
    }

    fn run_and_read(
        &mut self,
        plan: PlanId,
        stage: Stage,
        tensors: &[TensorId],
    ) -> Result<Box<dyn PendingRead>> {
        let encoder = self.record_stage(plan, stage)?;
        self.submit_with_readback(encoder, plan, tensors, || {
            format!("running the {stage:?} stage")
        })
    }
}
