//! Lowers an [`MlpSpec`] to a [`Plan`] for one batch size.
//!
//! The lowering is split by concern so each feature touches one place: a layer's forward
//! ops ([`Builder::layer_forward`]), its backward ops ([`Builder::layer_backward`]), the
//! loss ([`Builder::loss`]) and the parameter updates ([`Builder::updates`]). Ops that
//! behave the same in training and evaluation go to both op lists through
//! [`Builder::both`]; mode-dependent ones (dropout, batch norm) push to each separately.

use super::{
    target_len, Momentum, Op, PersistentDesc, Plan, Storage, TensorId, METRICS_LEN, NORM_BLOCK,
};
use crate::model::spec::{GRAD_NORM_SLOT_NAME, METRICS_SLOT_NAME, STEP_SLOT_NAME};
use crate::model::{Clip, MlpSpec, Optimizer};
use anyhow::Context;

/// Builds forward, evaluation and training ops for `rows` rows per batch.
/// `persistent` must be `spec.persistent()`; slots are found by name.
pub fn build(spec: &MlpSpec, persistent: &[PersistentDesc], rows: usize) -> anyhow::Result<Plan> {
    spec.validate()?;
    anyhow::ensure!(rows > 0, "batch size must be at least 1");
    let mut b = Builder {
        spec,
        persistent,
        rows,
        p: Plan::default(),
        params: Vec::new(),
    };
    let input = b.local("input", &[rows, spec.input]);
    let target = b.local("target", &[target_len(spec.loss, rows, spec.output)]);
    let step = b.persistent(STEP_SLOT_NAME, &[1])?;
    // The counter advances first, so step-dependent kernels see 1 on the first step.
    b.p.train.push(Op::AdvanceStep { counter: step });

    let layers = spec.num_layers();
    let mut net = Vec::with_capacity(layers);
    let mut x = input;
    for l in 0..layers {
        let layer = b.layer_forward(l, x)?;
        x = layer.out;
        net.push(layer);
    }
    let output = x;
    let mut grad = b.loss(output, target)?;
    for l in (0..layers).rev() {
        grad = b.layer_backward(&net[l], grad);
    }
    b.clip_gradients()?;
    b.updates()?;

    let mut p = b.p;
    p.input = Some(input);
    p.target = Some(target);
    p.output = Some(output);
    p.validate(persistent)?;
    Ok(p)
}

/// The tensors of one linear layer and what follows it.
struct Layer {
    index: usize,
    fan_in: usize,
    fan_out: usize,
    weight: TensorId,
    bias: TensorId,
    /// The layer's input (the previous layer's output, or the batch).
    x: TensorId,
    /// Pre-activation output `x·Wᵀ + b`.
    z: TensorId,
    /// What the next layer reads: the activation output, or `z` for the output layer.
    out: TensorId,
    dropout: Option<DropoutSite>,
}

/// Dropout after a hidden layer's activation, in training only.
struct DropoutSite {
    /// The activation output before dropout; in training `Layer::out` holds it after.
    pre: TensorId,
    step: TensorId,
    p: f32,
    stream: u32,
}

/// The random stream of hidden layer `l`'s dropout masks: derived from the model seed so
/// other seeds draw other masks, and mixed with a dropout tag (splitmix64's finaliser) so
/// it is unlikely to meet another layer's or another random consumer's stream.
fn dropout_stream(seed: u64, l: usize) -> u32 {
    let mut z = seed ^ 0xD50F_0000_0000_0000 ^ l as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

/// Workgroups (partials) per gradient tensor for the norm: each reduces at least 16 blocks
/// before writing, and at most 64 per tensor bound the finalising reduction's work.
fn norm_groups(len: usize) -> usize {
    len.div_ceil(16 * NORM_BLOCK).clamp(1, 64)
}

struct Builder<'a> {
    spec: &'a MlpSpec,
    persistent: &'a [PersistentDesc],
    rows: usize,
    p: Plan,
    /// `(param, grad)` pairs in the order their updates run.
    params: Vec<(TensorId, TensorId)>,
}

impl Builder<'_> {
    fn local(&mut self, name: impl Into<String>, shape: &[usize]) -> TensorId {
        self.p.add_tensor(name, shape, Storage::Local)
    }

    fn persistent(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<TensorId> {
        let slot = self
            .persistent
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("model has no persistent tensor '{name}'"))?;
        Ok(self.p.add_tensor(name, shape, Storage::Persistent(slot)))
    }

    /// Ops identical in training and evaluation.
    fn both(&mut self, op: Op) {
        self.p.forward.push(op.clone());
        self.p.train.push(op);
    }

    fn is_output(&self, l: usize) -> bool {
        l + 1 == self.spec.num_layers()
    }

    fn layer_forward(&mut self, l: usize, x: TensorId) -> anyhow::Result<Layer> {
        let sizes = self.spec.layer_sizes();
        let (fan_in, fan_out, rows) = (sizes[l], sizes[l + 1], self.rows);
        let weight = self.persistent(&format!("layers.{l}.linear.weight"), &[fan_out, fan_in])?;
        let bias = self.persistent(&format!("layers.{l}.linear.bias"), &[fan_out])?;
        let z = self.local(format!("layers.{l}.z"), &[rows, fan_out]);
        self.both(Op::MatMul {
            a: x,
            b: weight,
            c: z,
            m: rows,
            k: fan_in,
            n: fan_out,
            trans_a: false,
            trans_b: true,
            accumulate: false,
        });
        self.both(Op::AddBias {
            y: z,
            bias,
            rows,
            cols: fan_out,
        });
        let mut dropout = None;
        let out = if self.is_output(l) {
            z
        } else {
            let h = self.local(format!("layers.{l}.h"), &[rows, fan_out]);
            let act = self.spec.activation;
            let activate = |y| Op::Activate {
                act,
                x: z,
                y,
                len: rows * fan_out,
            };
            match self.spec.dropout_p(l) {
                None => self.both(activate(h)),
                Some(p) => {
                    // Evaluation activates straight into `h`, the tensor the next layer
                    // reads, and runs no dropout op; training activates into `pre` and
                    // drops out `pre` into `h`.
                    let pre = self.local(format!("layers.{l}.act"), &[rows, fan_out]);
                    let step = self.step_counter()?;
                    let stream = dropout_stream(self.spec.seed, l);
                    self.p.forward.push(activate(h));
                    self.p.train.push(activate(pre));
                    self.p.train.push(Op::Dropout {
                        x: pre,
                        y: h,
                        step,
                        len: rows * fan_out,
                        p,
                        stream,
                    });
                    dropout = Some(DropoutSite {
                        pre,
                        step,
                        p,
                        stream,
                    });
                }
            }
            h
        };
        Ok(Layer {
            index: l,
            fan_in,
            fan_out,
            weight,
            bias,
            x,
            z,
            out,
            dropout,
        })
    }

    fn step_counter(&self) -> anyhow::Result<TensorId> {
        self.p
            .find(STEP_SLOT_NAME)
            .context("the plan has no step counter")
    }

    /// Loss and metrics for evaluation and training; returns the gradient of the loss
    /// with respect to `output`.
    fn loss(&mut self, output: TensorId, target: TensorId) -> anyhow::Result<TensorId> {
        let (rows, cols) = (self.rows, self.spec.output);
        let metrics = self.persistent(METRICS_SLOT_NAME, &[METRICS_LEN])?;
        self.p.metrics = Some(metrics);
        let row_loss = self.local("loss.rows", &[rows]);
        let row_correct = self.local("loss.correct", &[rows]);
        let accumulate = Op::AccumulateMetrics {
            row_loss,
            row_correct,
            metrics,
            rows,
        };
        self.p.eval.push(Op::LossEval {
            loss: self.spec.loss,
            pred: output,
            target,
            row_loss,
            row_correct,
            rows,
            cols,
        });
        self.p.eval.push(accumulate.clone());
        let dout = self.local("output.grad", &[rows, cols]);
        self.p.train.push(Op::LossGrad {
            loss: self.spec.loss,
            pred: output,
            target,
            dpred: dout,
            row_loss,
            row_correct,
            rows,
            cols,
        });
        self.p.train.push(accumulate);
        Ok(dout)
    }

    /// Backward through one layer given the gradient of its output `dout`; returns the
    /// gradient of its input (unused below the first layer, where none is computed).
    fn layer_backward(&mut self, layer: &Layer, dout: TensorId) -> TensorId {
        let (l, rows, fan_in, fan_out) = (layer.index, self.rows, layer.fan_in, layer.fan_out);
        let dz = if self.is_output(l) {
            dout
        } else {
            // Dropout is its own adjoint: the same op on the gradient, redrawing the mask.
            let (y, dy) = match &layer.dropout {
                None => (layer.out, dout),
                Some(d) => {
                    let dpre = self.local(format!("layers.{l}.act.grad"), &[rows, fan_out]);
                    self.p.train.push(Op::Dropout {
                        x: dout,
                        y: dpre,
                        step: d.step,
                        len: rows * fan_out,
                        p: d.p,
                        stream: d.stream,
                    });
                    (d.pre, dpre)
                }
            };
            let dz = self.local(format!("layers.{l}.z.grad"), &[rows, fan_out]);
            self.p.train.push(Op::ActivateBackward {
                act: self.spec.activation,
                x: layer.z,
                y,
                dy,
                dx: dz,
                len: rows * fan_out,
            });
            dz
        };
        let dw = self.local(format!("layers.{l}.linear.weight.grad"), &[fan_out, fan_in]);
        let db = self.local(format!("layers.{l}.linear.bias.grad"), &[fan_out]);
        // dW[out,in] = dZᵀ[out,rows] · X[rows,in]
        self.p.train.push(Op::MatMul {
            a: dz,
            b: layer.x,
            c: dw,
            m: fan_out,
            k: rows,
            n: fan_in,
            trans_a: true,
            trans_b: false,
            accumulate: false,
        });
        self.p.train.push(Op::SumRows {
            x: dz,
            out: db,
            rows,
            cols: fan_out,
            accumulate: false,
        });
        self.params.push((layer.weight, dw));
        self.params.push((layer.bias, db));
        if l == 0 {
            return dz; // nothing below the first layer needs a gradient
        }
        // dX[rows,in] = dZ[rows,out] · W[out,in]
        let dx = self.local(format!("layers.{}.h.grad", l - 1), &[rows, fan_in]);
        self.p.train.push(Op::MatMul {
            a: dz,
            b: layer.weight,
            c: dx,
            m: rows,
            k: fan_out,
            n: fan_in,
            trans_a: false,
            trans_b: false,
            accumulate: false,
        });
        dx
    }

    /// Gradient clipping over all trainable parameters, after the whole backward pass and
    /// before any update, where torch code calls `clip_grad_norm_`/`clip_grad_value_`.
    /// By norm it stays on the device: partial sums per tensor, one coefficient, scaling.
    fn clip_gradients(&mut self) -> anyhow::Result<()> {
        let grads: Vec<(TensorId, usize)> = self
            .params
            .iter()
            .map(|&(_, g)| (g, self.p.tensors[g].len()))
            .collect();
        match self.spec.clip {
            None => {}
            Some(Clip::Value(limit)) => {
                for (x, len) in grads {
                    self.p.train.push(Op::ClampValue { x, len, limit });
                }
            }
            Some(Clip::Norm(max_norm)) => {
                let slots = grads.iter().map(|&(_, len)| norm_groups(len)).sum();
                let partials = self.local("clip.partials", &[slots, 2]);
                let mut first = 0;
                for &(x, len) in &grads {
                    let groups = norm_groups(len);
                    self.p.train.push(Op::NormPartials {
                        x,
                        len,
                        partials,
                        first,
                        groups,
                        slots,
                    });
                    first += groups;
                }
                let total_norm = self.persistent(GRAD_NORM_SLOT_NAME, &[1])?;
                let coef = self.local("clip.coef", &[1]);
                self.p.train.push(Op::ClipCoef {
                    partials,
                    slots,
                    total_norm,
                    coef,
                    max_norm,
                });
                for (x, len) in grads {
                    self.p.train.push(Op::ScaleBy { x, coef, len });
                }
            }
        }
        Ok(())
    }

    /// Optimizer updates, after the whole backward pass so no gradient reads an updated
    /// weight.
    fn updates(&mut self) -> anyhow::Result<()> {
        for (param, grad) in self.params.clone() {
            let op = self.update_op(param, grad)?;
            self.p.train.push(op);
        }
        self.p.grads = self.params.clone();
        Ok(())
    }

    /// The update of one parameter, with its optimizer state found by name.
    fn update_op(&mut self, param: TensorId, grad: TensorId) -> anyhow::Result<Op> {
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
                if momentum == 0.0 && weight_decay == 0.0 {
                    Op::SgdStep { param, grad, len }
                } else {
                    let momentum = if momentum > 0.0 {
                        Some(Momentum {
                            buffer: state(self, "momentum_buffer")?,
                            momentum,
                            nesterov,
                        })
                    } else {
                        None
                    };
                    Op::Sgd {
                        param,
                        grad,
                        len,
                        momentum,
                        weight_decay,
                    }
                }
            }
            Optimizer::Adam {
                betas,
                eps,
                weight_decay,
                ..
            }
            | Optimizer::AdamW {
                betas,
                eps,
                weight_decay,
                ..
            } => Op::Adam {
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
            },
        })
    }
}
