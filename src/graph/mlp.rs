//! Lowers an [`MlpSpec`] to a [`Plan`] for one batch size.
//!
//! The lowering is split by concern so each feature touches one place: a layer's forward
//! ops ([`Builder::layer_forward`]), its backward ops ([`Builder::layer_backward`]), the
//! loss ([`Builder::loss`]) and the parameter updates ([`Builder::updates`]). Ops that
//! behave the same in training and evaluation go to both op lists through
//! [`Builder::both`]; mode-dependent ones (dropout, batch norm) push to each separately.

use super::{target_len, Activation, Op, PersistentDesc, Plan, Storage, TensorId, METRICS_LEN};
use crate::model::spec::{prelu_weight_name, rrelu_stream, METRICS_SLOT_NAME, STEP_SLOT_NAME};
use crate::model::MlpSpec;

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
    b.updates();

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
    /// The extra tensor the activation's backward pass reads: PReLU's slope, or the
    /// step counter RReLU's random slopes derive from.
    act_extra: Option<TensorId>,
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
        let (out, act_extra) = if self.is_output(l) {
            (z, None)
        } else {
            let h = self.local(format!("layers.{l}.h"), &[rows, fan_out]);
            let extra = self.activation_forward(l, z, h, fan_out)?;
            (h, extra)
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
            act_extra,
        })
    }

    /// `h = f(z)` for hidden layer `l` of `width` units; returns what the backward pass
    /// needs besides `z` and `h` (see [`Layer::act_extra`]).
    fn activation_forward(
        &mut self,
        l: usize,
        z: TensorId,
        h: TensorId,
        width: usize,
    ) -> anyhow::Result<Option<TensorId>> {
        let act = self.spec.activation;
        let len = self.rows * width;
        match act {
            Activation::Prelu { per_unit, .. } => {
                let units = if per_unit { width } else { 1 };
                let weight = self.persistent(&prelu_weight_name(l), &[units])?;
                self.both(Op::Prelu {
                    x: z,
                    weight,
                    y: h,
                    len,
                    units,
                });
                Ok(Some(weight))
            }
            Activation::Rrelu { lower, upper } => {
                // Evaluation uses the mean slope, as torch.nn.RReLU in eval mode.
                self.p.forward.push(Op::Activate {
                    act,
                    x: z,
                    y: h,
                    len,
                });
                let step = self.p.find(STEP_SLOT_NAME).ok_or_else(|| {
                    anyhow::anyhow!("the plan has no step counter for RReLU's slopes")
                })?;
                self.p.train.push(Op::RreluTrain {
                    x: z,
                    y: h,
                    step,
                    stream: rrelu_stream(l),
                    lower,
                    upper,
                    len,
                });
                Ok(Some(step))
            }
            _ => {
                self.both(Op::Activate {
                    act,
                    x: z,
                    y: h,
                    len,
                });
                Ok(None)
            }
        }
    }

    /// `dz = dh ⊙ f'(z)` for a hidden layer; PReLU also gets its slope's gradient.
    fn activation_backward(&mut self, layer: &Layer, dh: TensorId, dz: TensorId) {
        let (l, rows, width) = (layer.index, self.rows, layer.fan_out);
        let (x, len, act) = (layer.z, rows * width, self.spec.activation);
        match (act, layer.act_extra) {
            (Activation::Prelu { .. }, Some(weight)) => {
                let units = self.p.tensors[weight].len();
                let terms = self.local(format!("layers.{l}.act.weight.grad_terms"), &[rows, width]);
                let dw = self.local(format!("layers.{l}.act.weight.grad"), &[units]);
                self.p.train.push(Op::PreluBackward {
                    x,
                    weight,
                    dy: dh,
                    dx: dz,
                    dw_terms: terms,
                    len,
                    units,
                });
                // Summed over the batch like a bias gradient; one slope per layer sums the
                // per-unit sums too, in a second pass so the first stays parallel over units.
                let per_unit = if units == width {
                    dw
                } else {
                    self.local(format!("layers.{l}.act.weight.grad_units"), &[width])
                };
                self.p.train.push(Op::SumRows {
                    x: terms,
                    out: per_unit,
                    rows,
                    cols: width,
                    accumulate: false,
                });
                if per_unit != dw {
                    self.p.train.push(Op::SumRows {
                        x: per_unit,
                        out: dw,
                        rows: width,
                        cols: 1,
                        accumulate: false,
                    });
                }
                self.params.push((weight, dw));
            }
            (Activation::Rrelu { lower, upper }, Some(step)) => {
                self.p.train.push(Op::RreluTrainBackward {
                    x,
                    dy: dh,
                    dx: dz,
                    step,
                    stream: rrelu_stream(l),
                    lower,
                    upper,
                    len,
                });
            }
            _ => self.p.train.push(Op::ActivateBackward {
                act,
                x,
                y: layer.out,
                dy: dh,
                dx: dz,
                len,
            }),
        }
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
            let dz = self.local(format!("layers.{l}.z.grad"), &[rows, fan_out]);
            self.activation_backward(layer, dout, dz);
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

    /// Optimizer updates, after the whole backward pass so no gradient reads an updated
    /// weight.
    fn updates(&mut self) {
        for &(param, grad) in &self.params {
            let len = self.p.tensors[param].len();
            self.p.train.push(Op::SgdStep { param, grad, len });
        }
        self.p.grads = self.params.clone();
    }
}
