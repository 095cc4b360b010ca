//! The gradient-health statistics spliced into a statistics step, and the always-on guard.

use super::*;
use crate::device::lane_groups;

impl Builder<'_> {
    /// The non-finite guard, in `train` (every step), and the statistics ops of
    /// `Stage::TrainWithStats`, in `train_stats` only. `backward_end` is where the updates
    /// start in `train`: the guard and the gradient statistics see the raw gradients
    /// there, and the weights before the update.
    pub(super) fn health(
        &mut self,
        net: &[Layer],
        backward_end: usize,
        step: TensorId,
    ) -> anyhow::Result<()> {
        let rows = self.rows;
        let flags_len = self
            .persistent
            .iter()
            .find(|p| p.name == GUARD_SLOT_NAME)
            .map_or(0, |p| p.init.len());
        let flags = self.persistent(GUARD_SLOT_NAME, &[flags_len])?;
        let (row_loss, row_correct) = match (self.p.find("loss.rows"), self.p.find("loss.correct"))
        {
            (Some(l), Some(c)) => (l, c),
            _ => anyhow::bail!("the plan has no per-row loss to guard"),
        };
        let layers = self.spec.num_layers();
        let peaks = flags_len / 2;
        let guard = |tensors: &[(TensorId, usize, usize)]| {
            Op::GuardFinite(GuardFinite {
                tensors: tensors.to_vec(),
                step,
                flags,
                flags_len,
                peaks,
            })
        };
        // Each flag records its own tensor, in execution order (see `layout::forward_flag`),
        // so the host can name the first op whose output held a NaN or inf, wherever in
        // the step it appeared. All of them are checked here, after the backward pass:
        // the plan keeps every forward tensor in its own buffer, so they still hold what
        // the forward pass wrote, and one place keeps the dispatches grouped.
        let mut checked = Vec::new();
        for layer in net {
            let len = rows * layer.fan_out;
            // Saturation and overflow are the activation's, so before any dropout.
            let act_out = layer.dropout.as_ref().map_or(layer.act_out, |d| d.pre);
            let mut seen = Vec::new();
            for (point, x) in [
                (st::ForwardPoint::Linear, layer.z),
                (st::ForwardPoint::BatchNorm, layer.act_in),
                (st::ForwardPoint::Activation, act_out),
                (st::ForwardPoint::Output, layer.out),
            ] {
                // A tensor shared by several points (no batch norm, no skip, the output
                // layer) is checked once, under the first. Dropout's output is finite
                // where its input is, so it is not checked again.
                let dropout_only = point == st::ForwardPoint::Output && x == layer.act_out;
                // An activation that maps finite inputs to finite outputs cannot be where
                // values first go bad; reading its output again would only cost time.
                let follows_input = point == st::ForwardPoint::Activation
                    && self.spec.activation_of(layer.index).keeps_finite();
                if seen.contains(&x) || dropout_only || follows_input {
                    continue;
                }
                seen.push(x);
                checked.push((x, len, st::forward_flag(layer.index, point)));
            }
        }
        checked.push((row_loss, rows, st::loss_flag(layers)));
        checked.extend(self.params.iter().filter_map(|&(param, grad)| {
            match self.p.tensors[param].storage {
                Storage::Persistent(slot) => Some((
                    grad,
                    self.p.tensors[grad].len(),
                    st::grad_flag(layers, slot),
                )),
                Storage::Local => None,
            }
        }));
        self.p.guarded = checked.iter().map(|&(t, _, flag)| (flag, t)).collect();
        // A tensor whose length does not divide by 4 would put its whole group on the
        // scalar kernel: those are grouped apart.
        let guards: Vec<Op> = lane_groups(&checked, |t| t.1, GUARD_GROUP)
            .iter()
            .map(|g| guard(g))
            .collect();
        let after_guards = backward_end + guards.len();
        self.p.train.splice(backward_end..backward_end, guards);
        // Data-parallel runs exchange gradients between the stages: the guards run after,
        // on the averaged gradients, so a NaN from any rank's shard stops every rank (a
        // guard on the local gradients alone let rank 0 save the NaN weights it received).
        self.p.update_start = backward_end;

        let stats_len = st::record_len(layers);
        let stats = self.local("stats.record", &[stats_len]);
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        let norm = |x: TensorId, minus: Option<TensorId>, len: usize, at: usize| {
            Op::Norm(Norm {
                x,
                minus,
                len,
                stats,
                stats_len,
                at,
            })
        };
        for layer in net {
            let (l, hidden) = (layer.index, !self.is_output(layer.index));
            let act = self.spec.activation_of(l);
            let base = l * st::LAYER_STRIDE;
            pre.push(Op::ActivationStats(ActivationStats {
                out: layer.out,
                act_in: layer.act_in,
                // Saturation is a property of the activation, so before any dropout.
                act_out: layer.dropout.as_ref().map_or(layer.act_out, |d| d.pre),
                rows,
                cols: layer.fan_out,
                dead: hidden && st::has_dead_units(act),
                saturation: st::saturation_thresholds(act).filter(|_| hidden),
                stats,
                stats_len,
                at: base,
            }));
            let grad_of = |p: TensorId| self.params.iter().find(|g| g.0 == p).map(|g| g.1);
            let (Some(dw), Some(db)) = (grad_of(layer.weight), grad_of(layer.bias)) else {
                continue; // frozen: no gradients, no update
            };
            let n = layer.fan_in * layer.fan_out;
            pre.push(norm(dw, None, n, base + st::WEIGHT_GRAD_NORM));
            pre.push(norm(db, None, layer.fan_out, base + st::BIAS_GRAD_NORM));
            pre.push(norm(layer.weight, None, n, base + st::WEIGHT_NORM));
            let snapshot = self.local(
                format!("stats.snapshot.layers.{l}.linear.weight"),
                &[layer.fan_out, layer.fan_in],
            );
            pre.push(Op::CopyInto(CopyInto {
                src: layer.weight,
                dst: snapshot,
                len: n,
                dst_len: n,
                offset: 0,
            }));
            post.push(norm(
                layer.weight,
                Some(snapshot),
                n,
                base + st::UPDATE_NORM,
            ));
        }
        let global = st::global_at(layers);
        for (x, at) in [(row_loss, st::LOSS), (row_correct, st::CORRECT)] {
            pre.push(Op::ActivationStats(ActivationStats {
                out: x,
                act_in: x,
                act_out: x,
                rows,
                cols: 1,
                dead: false,
                saturation: None,
                stats,
                stats_len,
                at: global + at,
            }));
        }
        pre.push(Op::CopyInto(CopyInto {
            src: step,
            dst: stats,
            len: 1,
            dst_len: stats_len,
            offset: global + st::STEP,
        }));
        let mut with_stats = self.p.train[..after_guards].to_vec();
        with_stats.extend(pre);
        with_stats.extend_from_slice(&self.p.train[after_guards..]);
        with_stats.extend(post);
        self.p.train_stats = with_stats;
        self.p.stats = Some(stats);
        self.p.guard = Some(flags);
        Ok(())
    }
}
