//! The CPU reference backend: interprets a [`Plan`] op by op with the loops in [`ops`].

pub mod ops;
pub mod stats;

use crate::engine::{Engine, PlanId};
use crate::graph::{Hyper, Op, PersistentDesc, Plan, Stage, Storage, TensorId, NORM_BLOCK};
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

    fn lr(&self) -> Result<f32> {
        Ok(self
            .hyper
            .context("hyper-parameters were not set before a training step")?
            .lr)
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
                let (mut out, mut m, mut is) = (
                    self.take(plan, y),
                    self.take(plan, mean),
                    self.take(plan, invstd),
                );
                let (mut rm, mut rv) =
                    (self.take(plan, running_mean), self.take(plan, running_var));
                ops::batch_norm_train(
                    self.get(plan, x),
                    &mut out,
                    self.get(plan, gamma),
                    self.get(plan, beta),
                    &mut m,
                    &mut is,
                    &mut rm,
                    &mut rv,
                    rows,
                    cols,
                    momentum,
                    eps,
                );
                self.put(plan, y, out);
                self.put(plan, mean, m);
                self.put(plan, invstd, is);
                self.put(plan, running_mean, rm);
                self.put(plan, running_var, rv);
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
                let mut out = self.take(plan, y);
                ops::batch_norm_eval(
                    self.get(plan, x),
                    &mut out,
                    self.get(plan, gamma),
                    self.get(plan, beta),
                    self.get(plan, running_mean),
                    self.get(plan, running_var),
                    rows,
                    cols,
                    eps,
                );
                self.put(plan, y, out);
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
                let (mut d, mut dg, mut db) = (
                    self.take(plan, dx),
                    self.take(plan, dgamma),
                    self.take(plan, dbeta),
                );
                ops::batch_norm_backward(
                    self.get(plan, x),
                    self.get(plan, dy),
                    self.get(plan, gamma),
                    self.get(plan, mean),
                    self.get(plan, invstd),
                    &mut d,
                    &mut dg,
                    &mut db,
                    rows,
                    cols,
                );
                self.put(plan, dx, d);
                self.put(plan, dgamma, dg);
                self.put(plan, dbeta, db);
            }
            Op::Add { a, b, out, .. } => {
                let mut o = self.take(plan, out);
                ops::add(self.get(plan, a), self.get(plan, b), &mut o);
                self.put(plan, out, o);
            }
            Op::Accumulate { x, y, .. } => {
                let mut o = self.take(plan, y);
                ops::accumulate(self.get(plan, x), &mut o);
                self.put(plan, y, o);
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
            Op::Sgd {
                param,
                grad,
                momentum,
                weight_decay,
                ..
            } => {
                let lr = self.lr()?;
                let mut p = self.take(plan, param);
                let mut buf = momentum.map(|m| self.take(plan, m.buffer));
                ops::sgd(
                    &mut p,
                    self.get(plan, grad),
                    buf.as_deref_mut()
                        .zip(momentum)
                        .map(|(b, m)| (b, m.momentum, m.nesterov)),
                    lr,
                    weight_decay,
                );
                self.put(plan, param, p);
                if let (Some(b), Some(m)) = (buf, momentum) {
                    self.put(plan, m.buffer, b);
                }
            }
            Op::Adam {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                step,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                ..
            } => {
                let h = ops::AdamParams {
                    lr: self.lr()?,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                };
                let t = self.get(plan, step)[0].to_bits();
                let (mut p, mut m, mut v) = (
                    self.take(plan, param),
                    self.take(plan, exp_avg),
                    self.take(plan, exp_avg_sq),
                );
                ops::adam(&mut p, self.get(plan, grad), &mut m, &mut v, t, h);
                self.put(plan, param, p);
                self.put(plan, exp_avg, m);
                self.put(plan, exp_avg_sq, v);
            }
            Op::NormPartials {
                x,
                partials,
                first,
                groups,
                ..
            } => {
                let mut out = self.take(plan, partials);
                ops::norm_partials(
                    self.get(plan, x),
                    &mut out[2 * first..2 * (first + groups)],
                    groups,
                    NORM_BLOCK,
                );
                self.put(plan, partials, out);
            }
            Op::ClipCoef {
                partials,
                total_norm,
                coef,
                max_norm,
                ..
            } => {
                let (total, c) = ops::clip_coef(self.get(plan, partials), max_norm);
                self.put(plan, total_norm, vec![total]);
                self.put(plan, coef, vec![c]);
            }
            Op::ScaleBy { x, coef, .. } => {
                let c = self.get(plan, coef)[0];
                let mut v = self.take(plan, x);
                ops::scale_by(&mut v, c);
                self.put(plan, x, v);
            }
            Op::ClampValue { x, limit, .. } => {
                let mut v = self.take(plan, x);
                ops::clamp_value(&mut v, limit);
                self.put(plan, x, v);
            }
            Op::Dropout {
                x,
                y,
                step,
                p,
                stream,
                ..
            } => {
                let t = self.get(plan, step)[0].to_bits();
                let mut out = self.take(plan, y);
                ops::dropout(self.get(plan, x), &mut out, p, stream, t);
                self.put(plan, y, out);
            }
            Op::Copy {
                src,
                dst,
                len,
                offset,
                ..
            } => {
                let mut d = self.take(plan, dst);
                d[offset..offset + len].copy_from_slice(&self.get(plan, src)[..len]);
                self.put(plan, dst, d);
            }
            Op::ActivationStats {
                out,
                act_in,
                act_out,
                rows,
                cols,
                dead,
                saturation,
                stats: s,
                at,
                ..
            } => {
                let mut record = self.take(plan, s);
                stats::activation_stats(
                    self.get(plan, out),
                    self.get(plan, act_in),
                    self.get(plan, act_out),
                    rows,
                    cols,
                    dead,
                    saturation,
                    &mut record[at..at + crate::graph::stats::ACT_STATS_LEN],
                );
                self.put(plan, s, record);
            }
            Op::Norm {
                x,
                minus,
                len,
                stats: s,
                at,
                ..
            } => {
                let mut record = self.take(plan, s);
                stats::norm(
                    &self.get(plan, x)[..len],
                    minus.map(|m| &self.get(plan, m)[..len]),
                    &mut record[at..at + crate::graph::stats::NORM_STATS_LEN],
                );
                self.put(plan, s, record);
            }
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                ..
            } => {
                let mut f = self.take(plan, flags);
                let step = self.get(plan, step)[0];
                for &(x, len, slot) in tensors {
                    stats::guard_finite(&self.get(plan, x)[..len], step, &mut f, slot);
                }
                self.put(plan, flags, f);
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
