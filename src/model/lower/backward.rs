//! The backward pass, gradient clipping and parameter updates of the MLP plan.

use super::*;

impl Builder<'_> {
    /// Backward through one layer given the gradient of its output `dout`; returns the
    /// gradient of its input (for the first layer, which needs none, its `z` gradient).
    pub(super) fn layer_backward(&mut self, layer: &Layer, dout: TensorId) -> TensorId {
        let (l, rows, fan_in, fan_out) = (layer.index, self.rows, layer.fan_in, layer.fan_out);
        if let Some(skip) = &layer.skip {
            // The sum passes `dout` unchanged to both branches.
            if let Some(proj) = skip.proj {
                let dproj = self.local(
                    format!("layers.{l}.proj.weight.grad"),
                    &self.p.tensors[proj].shape.clone(),
                );
                // dP[out,src] = doutᵀ[out,rows] · source[rows,src]
                self.p.train.push(Op::MatMul(MatMul {
                    a: dout,
                    b: skip.tensor,
                    c: dproj,
                    m: fan_out,
                    k: rows,
                    n: self.p.tensors[proj].shape[1],
                    trans_a: true,
                    trans_b: false,
                    accumulate: false,
                }));
                self.params.push((proj, dproj));
            }
            // Source j is layer j-1's output; it needs a gradient only if that layer trains.
            if skip.source > self.spec.frozen_layers {
                self.pending_skips.push((skip.source, dout, skip.proj));
            }
        }
        let dz = if self.is_output(l) {
            dout
        } else {
            let dh = match &layer.bn_after {
                Some(bn) => self.batch_norm_backward(l, bn, dout),
                None => dout,
            };
            let dact = self.local(
                format!("{}.grad", self.p.tensors[layer.act_in].name),
                &[rows, fan_out],
            );
            // Dropout is its own adjoint: the same op on the gradient, redrawing the mask.
            let (y, dy) = match &layer.dropout {
                None => (layer.act_out, dh),
                Some(d) => {
                    let dpre = self.local(format!("layers.{l}.act.grad"), &[rows, fan_out]);
                    let first_row = self.first_row();
                    self.p.train.push(Op::Dropout(Dropout {
                        x: dh,
                        y: dpre,
                        step: d.step,
                        len: rows * fan_out,
                        p: d.p,
                        stream: d.stream,
                        first_row,
                        cols: fan_out,
                    }));
                    (d.pre, dpre)
                }
            };
            self.activation_backward(layer, y, dy, dact);
            match &layer.bn_before {
                Some(bn) => self.batch_norm_backward(l, bn, dact),
                None => dact,
            }
        };
        debug_assert_eq!(self.p.tensors[layer.z].len(), self.p.tensors[dz].len());
        let dw = self.local(format!("layers.{l}.linear.weight.grad"), &[fan_out, fan_in]);
        let db = self.local(format!("layers.{l}.linear.bias.grad"), &[fan_out]);
        // dW[out,in] = dZᵀ[out,rows] · X[rows,in]
        self.p.train.push(Op::MatMul(MatMul {
            a: dz,
            b: layer.x,
            c: dw,
            m: fan_out,
            k: rows,
            n: fan_in,
            trans_a: true,
            trans_b: false,
            accumulate: false,
        }));
        self.bias_sums.push(ColumnSum {
            x: dz,
            out: db,
            rows,
            cols: fan_out,
        });
        self.params.push((layer.weight, dw));
        self.params.push((layer.bias, db));
        if l == self.spec.frozen_layers {
            return dz; // nothing below the lowest trainable layer needs a gradient
        }
        // dX[rows,in] = dZ[rows,out] · W[out,in]
        let dx = self.local(format!("layers.{}.out.grad", l - 1), &[rows, fan_in]);
        self.p.train.push(Op::MatMul(MatMul {
            a: dz,
            b: layer.weight,
            c: dx,
            m: rows,
            k: fan_out,
            n: fan_in,
            trans_a: false,
            trans_b: false,
            accumulate: false,
        }));
        dx
    }

    /// Adds the gradients of skip connections that read layer `l-1`'s output into
    /// `grad`, once the main path has written it.
    pub(super) fn flush_skip_grads(&mut self, l: usize, grad: TensorId) {
        let len = self.p.tensors[grad].len();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.pending_skips.drain(..).partition(|s| s.0 == l);
        self.pending_skips = waiting;
        for (_, dsum, proj) in ready {
            match proj {
                None => self.p.train.push(Op::Accumulate(Accumulate {
                    x: dsum,
                    y: grad,
                    len,
                })),
                // grad[rows,src] += dsum[rows,out] · P[out,src]
                Some(p) => self.p.train.push(Op::MatMul(MatMul {
                    a: dsum,
                    b: p,
                    c: grad,
                    m: self.rows,
                    k: self.p.tensors[p].shape[0],
                    n: self.p.tensors[p].shape[1],
                    trans_a: false,
                    trans_b: false,
                    accumulate: true,
                })),
            }
        }
    }

    /// Gradient clipping over all trainable parameters, after the whole backward pass and
    /// before any update, where torch code calls `clip_grad_norm_`/`clip_grad_value_`.
    /// By norm it stays on the device: partial sums per tensor, one coefficient, scaling.
    pub(super) fn clip_gradients(&mut self) -> anyhow::Result<()> {
        let grads: Vec<(TensorId, usize)> = self
            .params
            .iter()
            .map(|&(_, g)| (g, self.p.tensors[g].len()))
            .collect();
        match self.spec.clip {
            None => {}
            Some(Clip::Value(limit)) => {
                for (x, len) in grads {
                    self.p
                        .train
                        .push(Op::ClampValue(ClampValue { x, len, limit }));
                }
            }
            Some(Clip::Norm(max_norm)) => {
                let slots = grads.iter().map(|&(_, len)| norm_groups(len)).sum();
                let partials = self.local("clip.partials", &[slots, 2]);
                let mut first = 0;
                for &(x, len) in &grads {
                    let groups = norm_groups(len);
                    self.p.train.push(Op::NormPartials(NormPartials {
                        x,
                        len,
                        partials,
                        first,
                        groups,
                        slots,
                    }));
                    first += groups;
                }
                let total_norm = self.persistent(GRAD_NORM_SLOT_NAME, &[1])?;
                let coef = self.local("clip.coef", &[1]);
                self.p.train.push(Op::ClipCoef(ClipCoef {
                    partials,
                    slots,
                    total_norm,
                    coef,
                    max_norm,
                }));
                for (x, len) in grads {
                    self.p.train.push(Op::ScaleBy(ScaleBy { x, coef, len }));
                }
            }
        }
        Ok(())
    }

    /// Optimizer updates, after the whole backward pass so no gradient reads an updated
    /// weight.
    pub(super) fn updates(&mut self) -> anyhow::Result<()> {
        // Plain SGD keeps no state, so a few parameters share each dispatch.
        if let Optimizer::Sgd {
            momentum,
            weight_decay,
            ..
        } = self.spec.optimizer
        {
            if momentum <= 0.0 {
                let params: Vec<_> = self
                    .params
                    .iter()
                    .map(|&(p, g)| (p, g, self.p.tensors[p].len()))
                    .collect();
                let groups = SgdGroup::chunked(&params, weight_decay);
                self.p.train.extend(groups.into_iter().map(Op::SgdGroup));
                self.p.grads = self.params.clone();
                return Ok(());
            }
        }
        for (param, grad) in self.params.clone() {
            let ops = self.update_ops(param, grad)?;
            self.p.train.extend(ops);
        }
        self.p.grads = self.params.clone();
        Ok(())
    }

    /// The update of one parameter, with its optimizer state found by name (NAdam's is
    /// two ops: its momentum product, then the update reading it).
    pub(super) fn update_ops(
        &mut self,
        param: TensorId,
        grad: TensorId,
    ) -> anyhow::Result<Vec<Op>> {
        let t = &self.p.tensors[param];
        let (name, shape, len) = (t.name.clone(), t.shape.clone(), t.len());
        let state = |b: &mut Self, suffix: &str| b.persistent(&format!("{name}.{suffix}"), &shape);
        Ok(match self.spec.optimizer {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                let momentum = if momentum > 0.0 {
                    Some(Momentum {
                        buffer: state(self, "momentum_buffer")?,
                        momentum,
                        nesterov,
                    })
                } else {
                    None
                };
                vec![Op::Sgd(Sgd {
                    param,
                    grad,
                    len,
                    momentum,
                    weight_decay,
                })]
            }
            Optimizer::Adam {
                betas,
                eps,
                weight_decay,
                amsgrad,
                ..
            }
            | Optimizer::AdamW {
                betas,
                eps,
                weight_decay,
                amsgrad,
                ..
            } => vec![Op::Adam(Adam {
                param,
                grad,
                exp_avg: state(self, "exp_avg")?,
                exp_avg_sq: state(self, "exp_avg_sq")?,
                step: self.step_counter()?,
                len,
                beta1: betas.0,
                beta2: betas.1,
                eps,
                weight_decay,
                decoupled: matches!(self.spec.optimizer, Optimizer::AdamW { .. }),
                max_exp_avg_sq: if amsgrad {
                    Some(state(self, "max_exp_avg_sq")?)
                } else {
                    None
                },
            })],
            Optimizer::RmsProp {
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
                ..
            } => vec![Op::Rmsprop(Rmsprop {
                param,
                grad,
                square_avg: state(self, "square_avg")?,
                momentum_buffer: if momentum > 0.0 {
                    Some(state(self, "momentum_buffer")?)
                } else {
                    None
                },
                grad_avg: if centered {
                    Some(state(self, "grad_avg")?)
                } else {
                    None
                },
                len,
                alpha,
                eps,
                weight_decay,
                momentum,
            })],
            Optimizer::Adagrad {
                lr_decay,
                weight_decay,
                eps,
                ..
            } => vec![Op::Adagrad(Adagrad {
                param,
                grad,
                sum: state(self, "sum")?,
                step: self.step_counter()?,
                len,
                lr_decay,
                eps,
                weight_decay,
            })],
            Optimizer::Adamax {
                betas,
                eps,
                weight_decay,
                ..
            } => vec![Op::Adamax(Adamax {
                param,
                grad,
                exp_avg: state(self, "exp_avg")?,
                exp_inf: state(self, "exp_inf")?,
                step: self.step_counter()?,
                len,
                beta1: betas.0,
                beta2: betas.1,
                eps,
                weight_decay,
            })],
            Optimizer::NAdam {
                betas,
                eps,
                weight_decay,
                momentum_decay,
                ..
            } => {
                let mu_product = self.persistent(&format!("{name}.mu_product"), &[1])?;
                let step = self.step_counter()?;
                vec![
                    Op::NadamMuProduct(NadamMuProduct {
                        mu_product,
                        step,
                        beta1: betas.0,
                        momentum_decay,
                    }),
                    Op::Nadam(Nadam {
                        param,
                        grad,
                        exp_avg: state(self, "exp_avg")?,
                        exp_avg_sq: state(self, "exp_avg_sq")?,
                        mu_product,
                        step,
                        len,
                        beta1: betas.0,
                        beta2: betas.1,
                        eps,
                        weight_decay,
                        momentum_decay,
                    }),
                ]
            }
        })
    }
}
