//! The CPU reference backend: runs a [`Plan`] op by op with each op's reference loops
//! (the `cpu.rs` of its family in `crate::ops`).

use crate::engine::{Engine, PlanId};
use crate::graph::{Plan, Stage};
use crate::ops::{Host, Op};
use crate::tensor::{Hyper, PersistentDesc, Storage, TensorId};
use anyhow::{ensure, Context, Result};

#[derive(Default)]
pub struct CpuEngine {
    persistent: Vec<Vec<f32>>,
    persistent_desc: Vec<PersistentDesc>,
    plans: Vec<CpuPlan>,
    hyper: Option<Hyper>,
    /// The random stream of [`CpuEngine::with_rounding_noise`], when on.
    noise: Option<u64>,
}

struct CpuPlan {
    plan: Plan,
    /// One vector per tensor; empty for persistent tensors, which live in the engine.
    local: Vec<Vec<f32>>,
}

impl CpuEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The reference with every reduction's output (matmuls, sums, batch-norm statistics:
    /// the ops whose summation order a GPU changes) moved by `√k` `f32` roundings of
    /// random sign after it runs (`k` terms summed): Monte Carlo arithmetic's model of a float32
    /// evaluation, whose distance from the exact reference is the noise floor
    /// `crate::check` judges the GPU against. Counters, flags and masks are never moved.
    pub fn with_rounding_noise(seed: u64) -> Self {
        CpuEngine {
            noise: Some(seed | 1),
            ..Self::default()
        }
    }

    fn slot(&self, plan: PlanId, t: TensorId) -> Result<(Option<usize>, usize)> {
        let p = self.plans.get(plan).context("unknown plan id")?;
        let desc = p
            .plan
            .tensors
            .get(t)
            .with_context(|| format!("plan has no tensor {t}"))?;
        Ok(match desc.storage {
            Storage::Persistent(s) => (Some(s), desc.len()),
            Storage::Local => (None, desc.len()),
        })
    }

    fn take(&mut self, plan: PlanId, t: TensorId) -> Vec<f32> {
        match self.plans[plan].plan.tensors[t].storage {
            Storage::Persistent(s) => std::mem::take(&mut self.persistent[s]),
            Storage::Local => std::mem::take(&mut self.plans[plan].local[t]),
        }
    }

    fn put(&mut self, plan: PlanId, t: TensorId, v: Vec<f32>) {
        match self.plans[plan].plan.tensors[t].storage {
            Storage::Persistent(s) => self.persistent[s] = v,
            Storage::Local => self.plans[plan].local[t] = v,
        }
    }

    fn get(&self, plan: PlanId, t: TensorId) -> &[f32] {
        match self.plans[plan].plan.tensors[t].storage {
            Storage::Persistent(s) => &self.persistent[s],
            Storage::Local => &self.plans[plan].local[t],
        }
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        "CPU reference backend (plain loops, single thread)".to_string()
    }

    fn memory_budget(&self) -> Option<crate::engine::MemoryBudget> {
        crate::engine::MemoryBudget::host()
    }

    fn is_gpu(&self) -> bool {
        false
    }

    fn init_persistent(&mut self, persistent: &[PersistentDesc]) -> Result<()> {
        ensure!(
            self.persistent.is_empty(),
            "persistent tensors were already initialised"
        );
        self.persistent = persistent.iter().map(|p| p.init.clone()).collect();
        self.persistent_desc = persistent.to_vec();
        Ok(())
    }

    fn read_persistent(&mut self, slot: usize) -> Result<Vec<f32>> {
        self.persistent
            .get(slot)
            .cloned()
            .with_context(|| format!("no persistent slot {slot}"))
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
        self.persistent[slot].copy_from_slice(data);
        Ok(())
    }

    fn compile(&mut self, plan: &Plan) -> Result<PlanId> {
        plan.validate(&self.persistent_desc)?;
        let local = plan
            .tensors
            .iter()
            .map(|t| match t.storage {
                Storage::Local => vec![0.0; t.len()],
                Storage::Persistent(_) => Vec::new(),
            })
            .collect();
        self.plans.push(CpuPlan {
            plan: plan.clone(),
            local,
        });
        Ok(self.plans.len() - 1)
    }

    fn write(&mut self, plan: PlanId, t: TensorId, data: &[f32]) -> Result<()> {
        let (_, len) = self.slot(plan, t)?;
        let name = &self.plans[plan].plan.tensors[t].name;
        ensure!(
            data.len() == len,
            "tensor '{name}' holds {len} values, got {}",
            data.len()
        );
        let mut v = self.take(plan, t);
        v.copy_from_slice(data);
        self.put(plan, t, v);
        Ok(())
    }

    fn read(&mut self, plan: PlanId, t: TensorId) -> Result<Vec<f32>> {
        self.slot(plan, t)?;
        Ok(self.get(plan, t).to_vec())
    }

    fn run(&mut self, plan: PlanId, stage: Stage) -> Result<()> {
        ensure!(plan < self.plans.len(), "unknown plan id {plan}");
        let p = &mut self.plans[plan];
        let mut host = Host::new(
            &p.plan.tensors,
            &mut p.local,
            &mut self.persistent,
            self.hyper,
        );
        let ops: Vec<&Op> = p.plan.ops(stage).collect();
        for op in ops {
            op.run_cpu(&mut host)?;
            if let Some(stream) = &mut self.noise {
                // A float32 sum of `k` terms is typically `√k` roundings off, so each
                // reduction's output moves by that many.
                let terms = match op {
                    Op::MatMul(m) => m.k,
                    Op::SumRows(o) => o.rows,
                    Op::SumRowsGroup(o) => o.sums.iter().map(|s| s.rows).max().unwrap_or(0),
                    Op::BatchNormTrain(o) => o.rows,
                    Op::BatchNormEval(o) => o.rows,
                    Op::BatchNormBackward(o) => o.rows,
                    Op::BatchNormStats(o) => o.rows,
                    Op::BatchNormGradSums(o) => o.rows,
                    _ => 0,
                };
                if terms > 0 {
                    let roundings = (terms as f32).sqrt().max(1.0);
                    for t in op.reads_writes().1 {
                        let mut v = host.take(t);
                        crate::check::perturb(&mut v, roundings, stream);
                        host.put(t, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn set_hyper(&mut self, hyper: Hyper) -> Result<()> {
        self.hyper = Some(hyper);
        Ok(())
    }
}
