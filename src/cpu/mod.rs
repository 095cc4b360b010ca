//! The CPU reference backend: interprets a [`Plan`] op by op with the loops in [`ops`].

pub mod ops;

use crate::engine::{Engine, PlanId};
use crate::graph::{Hyper, Op, PersistentDesc, Plan, Stage, Storage, TensorId};
use anyhow::{ensure, Context, Result};

#[derive(Default)]
pub struct CpuEngine {
    persistent: Vec<Vec<f32>>,
    persistent_desc: Vec<PersistentDesc>,
    plans: Vec<CpuPlan>,
    hyper: Option<Hyper>,
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

    fn execute(&mut self, plan: PlanId, op: &Op) -> Result<()> {
        // Outputs are taken out of storage while the op runs; Plan::validate guarantees no
        // op reads a tensor through one operand that it writes through another.
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
                let mut out = self.take(plan, c);
                ops::matmul(
                    self.get(plan, a),
                    self.get(plan, b),
                    &mut out,
                    m,
                    k,
                    n,
                    trans_a,
                    trans_b,
                    accumulate,
                );
                self.put(plan, c, out);
            }
            Op::AddBias {
                y,
                bias,
                rows,
                cols,
            } => {
                let mut out = self.take(plan, y);
                ops::add_bias(&mut out, self.get(plan, bias), rows, cols);
                self.put(plan, y, out);
            }
            Op::SumRows {
                x,
                out,
                rows,
                cols,
                accumulate,
            } => {
                let mut o = self.take(plan, out);
                ops::sum_rows(self.get(plan, x), &mut o, rows, cols, accumulate);
                self.put(plan, out, o);
            }
            Op::Activate { act, x, y, .. } => {
                let mut out = self.take(plan, y);
                ops::activate(act, self.get(plan, x), &mut out);
                self.put(plan, y, out);
            }
            Op::ActivateBackward {
                act, x, y, dy, dx, ..
            } => {
                let mut out = self.take(plan, dx);
                ops::activate_backward(
                    act,
                    self.get(plan, x),
                    self.get(plan, y),
                    self.get(plan, dy),
                    &mut out,
                );
                self.put(plan, dx, out);
            }
            Op::RreluTrain {
                x,
                y,
                step,
                stream,
                lower,
                upper,
                ..
            } => {
                let step = self.get(plan, step)[0].to_bits();
                let mut out = self.take(plan, y);
                ops::rrelu_train(self.get(plan, x), &mut out, step, stream, lower, upper);
                self.put(plan, y, out);
            }
            Op::RreluTrainBackward {
                x,
                dy,
                dx,
                step,
                stream,
                lower,
                upper,
                ..
            } => {
                let step = self.get(plan, step)[0].to_bits();
                let mut out = self.take(plan, dx);
                ops::rrelu_train_backward(
                    self.get(plan, x),
                    self.get(plan, dy),
                    &mut out,
                    step,
                    stream,
                    lower,
                    upper,
                );
                self.put(plan, dx, out);
            }
            Op::Prelu { x, weight, y, .. } => {
                let mut out = self.take(plan, y);
                ops::prelu(self.get(plan, x), self.get(plan, weight), &mut out);
                self.put(plan, y, out);
            }
            Op::PreluBackward {
                x,
                weight,
                dy,
                dx,
                dw_terms,
                ..
            } => {
                let (mut d, mut t) = (self.take(plan, dx), self.take(plan, dw_terms));
                ops::prelu_backward(
                    self.get(plan, x),
                    self.get(plan, weight),
                    self.get(plan, dy),
                    &mut d,
                    &mut t,
                );
                self.put(plan, dx, d);
                self.put(plan, dw_terms, t);
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
                let (mut d, mut l, mut c) = (
                    self.take(plan, dpred),
                    self.take(plan, row_loss),
                    self.take(plan, row_correct),
                );
                ops::loss(
                    loss,
                    self.get(plan, pred),
                    self.get(plan, target),
                    Some(&mut d),
                    &mut l,
                    &mut c,
                    rows,
                    cols,
                );
                self.put(plan, dpred, d);
                self.put(plan, row_loss, l);
                self.put(plan, row_correct, c);
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
                let (mut l, mut c) = (self.take(plan, row_loss), self.take(plan, row_correct));
                ops::loss(
                    loss,
                    self.get(plan, pred),
                    self.get(plan, target),
                    None,
                    &mut l,
                    &mut c,
                    rows,
                    cols,
                );
                self.put(plan, row_loss, l);
                self.put(plan, row_correct, c);
            }
            Op::AccumulateMetrics {
                row_loss,
                row_correct,
                metrics,
                ..
            } => {
                let mut m = self.take(plan, metrics);
                ops::accumulate_metrics(
                    self.get(plan, row_loss),
                    self.get(plan, row_correct),
                    &mut m,
                );
                self.put(plan, metrics, m);
            }
            Op::AdvanceStep { counter } => {
                let mut c = self.take(plan, counter);
                ops::advance_step(&mut c);
                self.put(plan, counter, c);
            }
            Op::SgdStep { param, grad, .. } => {
                let lr = self
                    .hyper
                    .context("hyper-parameters were not set before a training step")?
                    .lr;
                let mut p = self.take(plan, param);
                ops::sgd_step(&mut p, self.get(plan, grad), lr);
                self.put(plan, param, p);
            }
        }
        Ok(())
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        "CPU reference backend (plain loops, single thread)".to_string()
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
        let ops: Vec<Op> = self.plans[plan].plan.ops(stage).cloned().collect();
        for op in &ops {
            self.execute(plan, op)?;
        }
        Ok(())
    }

    fn set_hyper(&mut self, hyper: Hyper) -> Result<()> {
        self.hyper = Some(hyper);
        Ok(())
    }
}
