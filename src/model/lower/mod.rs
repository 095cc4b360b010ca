//! Lowers an [`MlpSpec`] to a [`Plan`] for one batch size.
//!
//! The lowering is split by concern so each feature touches one place: a layer's forward
//! ops ([`Builder::layer_forward`]), its backward ops ([`Builder::layer_backward`]), the
//! loss ([`Builder::loss`]) and the parameter updates ([`Builder::updates`]). Ops that
//! behave the same in training and evaluation go to both op lists through
//! [`Builder::both`]; mode-dependent ones (dropout, batch norm) push to each separately.

mod backward;
mod health;
mod mc;
mod regularize;
mod split;

pub use mc::{build_mc, mc_dropout_stream, MC_SAMPLE_NAME};
pub use split::{build_split, SplitOptions};

use crate::graph::Plan;
use crate::model::health::layout::{self as st, GUARD_SLOT_NAME};
use crate::model::spec::{
    prelu_weight_name, rrelu_stream, GRAD_NORM_SLOT_NAME, METRICS_SLOT_NAME, STEP_SLOT_NAME,
};
use crate::model::{BnPlacement, Clip, MlpSpec, Optimizer};
use crate::ops::health::GUARD_GROUP;
use crate::ops::*;
use crate::tensor::{PersistentDesc, Storage, TensorId};
use anyhow::Context;

/// Builds forward, evaluation and training ops for `rows` rows per batch.
/// `persistent` must be `spec.persistent()`; slots are found by name.
pub fn build(spec: &MlpSpec, persistent: &[PersistentDesc], rows: usize) -> anyhow::Result<Plan> {
    build_from(spec, persistent, rows, 0)
}

/// As [`build`], but the plan starts at layer `start`: its input is the output of layer
/// `start - 1`, e.g. cached outputs of frozen layers. Only frozen layers can be skipped.
pub fn build_from(
    spec: &MlpSpec,
    persistent: &[PersistentDesc],
    rows: usize,
    start: usize,
) -> anyhow::Result<Plan> {
    build_with(spec, persistent, rows, start, None, None)
}

fn build_with(
    spec: &MlpSpec,
    persistent: &[PersistentDesc],
    rows: usize,
    start: usize,
    mc_seed: Option<u64>,
    split: Option<SplitOptions>,
) -> anyhow::Result<Plan> {
    spec.validate()?;
    anyhow::ensure!(rows > 0, "batch size must be at least 1");
    anyhow::ensure!(
        start <= spec.frozen_layers,
        "a plan can only start above frozen layers: start {start}, {} frozen",
        spec.frozen_layers
    );
    let sizes = spec.layer_sizes();
    let mut b = Builder {
        spec,
        persistent,
        rows,
        p: Plan::default(),
        params: Vec::new(),
        pending_skips: Vec::new(),
        bias_sums: Vec::new(),
        mc: None,
        split,
    };
    let input = b.local("input", &[rows, sizes[start]]);
    if let Some(seed) = mc_seed {
        b.mc = Some((b.local(MC_SAMPLE_NAME, &[1]), seed));
    }
    let target = b.local("target", &[target_len(spec.loss, rows, spec.output)]);
    let step = b.persistent(STEP_SLOT_NAME, &[1])?;
    // The counter advances first, so step-dependent kernels see 1 on the first step.
    b.p.train
        .push(Op::AdvanceStep(AdvanceStep { counter: step }));

    let layers = spec.num_layers();
    let mut net: Vec<Layer> = Vec::with_capacity(layers);
    let mut x = input;
    for l in start..layers {
        // A skip connection reads the plan's input or an earlier layer's output.
        let skip =
            match spec.skip_source(l) {
                None => None,
                Some(j) if j == start => Some(input),
                Some(j) if j > start => Some(net[j - 1 - start].out),
                Some(j) => anyhow::bail!(
                "layer {l}'s skip connection reads {} below the cached boundary at layer {start}; \
                 outputs of frozen layers cannot be cached for this model",
                if j == 0 { "the network input".to_string() } else { format!("layer {}", j - 1) }
            ),
            };
        let layer = b.layer_forward(l, x, skip)?;
        x = layer.out;
        net.push(layer);
    }
    let output = x;
    b.p.layer_outputs = (0..layers)
        .map(|l| l.checked_sub(start).map(|i| net[i].out))
        .collect();
    let mut grad = b.loss(output, target)?;
    // Backward stops at the lowest trainable layer: frozen layers below it need no
    // gradients, so none of their backward kernels are dispatched.
    let lowest = spec.frozen_layers;
    for l in (lowest..layers).rev() {
        grad = b.layer_backward(&net[l - start], grad);
        // `grad` is now the gradient of layer l's input, i.e. of the output of layer l-1:
        // add what the skip connections reading that tensor contributed.
        if l > lowest {
            b.flush_skip_grads(l, grad);
        }
    }
    // Nothing reads a bias gradient before the updates: summed here, a few per dispatch.
    let sums = std::mem::take(&mut b.bias_sums);
    b.p.train.extend(
        SumRowsGroup::chunked(&sums)
            .into_iter()
            .map(Op::SumRowsGroup),
    );
    b.penalty_grads(&net);
    // The guard and statistics read the raw gradients here, before clipping changes them.
    let backward_end = b.p.train.len();
    b.p.update_start = backward_end;
    b.clip_gradients()?;
    b.updates()?;
    b.max_norms(&net);
    // With sync-bn the statistics are the global batch's: the host checks its rows.
    let sync_bn = split.is_some_and(|s| s.sync_bn);
    if spec.has_batch_norm() && rows < 2 && !sync_bn {
        b.p.train.clear();
        b.p.update_start = 0;
        b.p.train_error = Some(format!(
            "batch norm needs at least 2 rows per training batch to estimate a variance, got {rows} \
             (PyTorch raises the same error); use a larger batch or drop the last partial batch"
        ));
    }

    if b.p.train_error.is_none() {
        b.health(&net, backward_end, step)?;
    }
    b.finish_parts();

    let mut p = b.p;
    p.input = Some(input);
    p.target = Some(target);
    p.output = Some(output);
    p.validate(persistent)?;
    Ok(p)
}

/// The tensors of one linear layer and what follows it:
/// `x → linear → z → [BN] → act_in → activation → act_out → [BN] → (+ skip) → out`.
struct Layer {
    index: usize,
    fan_in: usize,
    fan_out: usize,
    weight: TensorId,
    bias: TensorId,
    /// The layer's input (the previous layer's output, or the batch).
    x: TensorId,
    /// Linear output `x·Wᵀ + b`.
    z: TensorId,
    /// Activation input and output (both `z` for the output layer, which has none).
    act_in: TensorId,
    act_out: TensorId,
    bn_before: Option<BnTensors>,
    bn_after: Option<BnTensors>,
    skip: Option<Skip>,
    /// What the next layer reads.
    out: TensorId,
    dropout: Option<DropoutSite>,
    /// The extra tensor the activation's backward pass reads: PReLU's slope, or the
    /// step counter RReLU's random slopes derive from.
    act_extra: Option<TensorId>,
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

struct BnTensors {
    input: TensorId,
    gamma: TensorId,
    beta: TensorId,
    mean: TensorId,
    invstd: TensorId,
}

/// A skip connection into a layer: `out = branch + proj(source)`.
struct Skip {
    /// Index into `layer_sizes()` of the source: 0 is the input, `j` is layer `j-1`'s output.
    source: usize,
    tensor: TensorId,
    proj: Option<TensorId>,
}

struct Builder<'a> {
    spec: &'a MlpSpec,
    persistent: &'a [PersistentDesc],
    rows: usize,
    p: Plan,
    /// `(param, grad)` pairs in the order their updates run.
    params: Vec<(TensorId, TensorId)>,
    /// Skip-connection gradients waiting for their source's gradient tensor to be
    /// written: `(source index, gradient at the sum, projection)`.
    pending_skips: Vec<(usize, TensorId, Option<TensorId>)>,
    /// The linear layers' bias gradients, summed together after the backward pass.
    bias_sums: Vec<ColumnSum>,
    /// For a Monte Carlo plan: the sample counter and the seed of its dropout masks.
    mc: Option<(TensorId, u64)>,
    /// For a data-parallel plan: how its training step is split.
    split: Option<SplitOptions>,
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

    fn layer_forward(
        &mut self,
        l: usize,
        x: TensorId,
        skip: Option<TensorId>,
    ) -> anyhow::Result<Layer> {
        let sizes = self.spec.layer_sizes();
        let (fan_in, fan_out, rows) = (sizes[l], sizes[l + 1], self.rows);
        let weight = self.persistent(&format!("layers.{l}.linear.weight"), &[fan_out, fan_in])?;
        let bias = self.persistent(&format!("layers.{l}.linear.bias"), &[fan_out])?;
        let z = self.local(format!("layers.{l}.z"), &[rows, fan_out]);
        self.both(Op::MatMul(MatMul {
            a: x,
            b: weight,
            c: z,
            m: rows,
            k: fan_in,
            n: fan_out,
            trans_a: false,
            trans_b: true,
            accumulate: false,
        }));
        self.both(Op::AddBias(AddBias {
            y: z,
            bias,
            rows,
            cols: fan_out,
        }));
        let mut layer = Layer {
            index: l,
            fan_in,
            fan_out,
            weight,
            bias,
            x,
            z,
            act_in: z,
            act_out: z,
            bn_before: None,
            bn_after: None,
            skip: None,
            out: z,
            dropout: None,
            act_extra: None,
        };
        if self.is_output(l) {
            return Ok(layer);
        }
        let placement = self.spec.batch_norm_of(l).map(|bn| bn.placement);
        if placement == Some(BnPlacement::BeforeActivation) {
            let (bn, y) = self.batch_norm(l, z, "bn")?;
            layer.bn_before = Some(bn);
            layer.act_in = y;
        }
        let h = self.local(format!("layers.{l}.h"), &[rows, fan_out]);
        // Frozen layers train in inference mode: no dropout. Monte Carlo prediction
        // samples every dropout layer the model has.
        let dropout_p = self
            .spec
            .dropout_p(l)
            .filter(|_| l >= self.spec.frozen_layers || self.mc.is_some());
        match dropout_p {
            None => layer.act_extra = self.activation_forward(l, layer.act_in, h, h, fan_out)?,
            Some(p) => {
                // Evaluation activates straight into `h`, the tensor the next layer reads,
                // and runs no dropout op; training activates into `pre` and drops out
                // `pre` into `h`.
                let pre = self.local(format!("layers.{l}.act"), &[rows, fan_out]);
                let step = self.step_counter()?;
                let stream = dropout_stream(self.spec.seed, l);
                // A Monte Carlo plan's evaluation-mode activation feeds a dropout of its own.
                let eval_out = if self.mc.is_some() { pre } else { h };
                layer.act_extra =
                    self.activation_forward(l, layer.act_in, eval_out, pre, fan_out)?;
                if let Some((sample, seed)) = self.mc {
                    self.p.forward.push(Op::Dropout(Dropout {
                        x: pre,
                        y: h,
                        step: sample,
                        len: rows * fan_out,
                        p,
                        stream: mc_dropout_stream(seed, l),
                        first_row: None,
                        cols: fan_out,
                    }));
                }
                let first_row = self.first_row();
                self.p.train.push(Op::Dropout(Dropout {
                    x: pre,
                    y: h,
                    step,
                    len: rows * fan_out,
                    p,
                    stream,
                    first_row,
                    cols: fan_out,
                }));
                layer.dropout = Some(DropoutSite {
                    pre,
                    step,
                    p,
                    stream,
                });
            }
        }
        layer.act_out = h;
        layer.out = h;
        if placement == Some(BnPlacement::AfterActivation) {
            let (bn, y) = self.batch_norm(l, h, "bn")?;
            layer.bn_after = Some(bn);
            layer.out = y;
        }
        if let (Some(src), Some(source)) = (skip, self.spec.skip_source(l)) {
            let carried = if sizes[source] == fan_out {
                None
            } else {
                let proj = self.persistent(
                    &format!("layers.{l}.proj.weight"),
                    &[fan_out, sizes[source]],
                )?;
                let p = self.local(format!("layers.{l}.proj.out"), &[rows, fan_out]);
                self.both(Op::MatMul(MatMul {
                    a: src,
                    b: proj,
                    c: p,
                    m: rows,
                    k: sizes[source],
                    n: fan_out,
                    trans_a: false,
                    trans_b: true,
                    accumulate: false,
                }));
                Some((proj, p))
            };
            let sum = self.local(format!("layers.{l}.out"), &[rows, fan_out]);
            self.both(Op::Add(Add {
                a: layer.out,
                b: carried.map_or(src, |(_, p)| p),
                out: sum,
                len: rows * fan_out,
            }));
            layer.skip = Some(Skip {
                source,
                tensor: src,
                proj: carried.map(|(w, _)| w),
            });
            layer.out = sum;
        }
        Ok(layer)
    }

    /// `y = f(x)` for hidden layer `l` of `width` units, into `y_eval` in evaluation and
    /// `y_train` in training (they differ when dropout follows); returns what the backward
    /// pass needs besides `x` and `y` (see [`Layer::act_extra`]).
    fn activation_forward(
        &mut self,
        l: usize,
        z: TensorId,
        y_eval: TensorId,
        y_train: TensorId,
        width: usize,
    ) -> anyhow::Result<Option<TensorId>> {
        let act = self.spec.activation_of(l);
        let len = self.rows * width;
        let frozen = l < self.spec.frozen_layers;
        let activate = |y| Op::Activate(Activate { act, x: z, y, len });
        match act {
            Activation::Prelu { per_unit, .. } => {
                let units = if per_unit { width } else { 1 };
                let weight = self.persistent(&prelu_weight_name(l), &[units])?;
                let prelu = |y| {
                    Op::Prelu(Prelu {
                        x: z,
                        weight,
                        y,
                        len,
                        units,
                    })
                };
                self.p.forward.push(prelu(y_eval));
                self.p.train.push(prelu(y_train));
                Ok(Some(weight))
            }
            Activation::Rrelu { .. } if frozen => {
                // Frozen layers run in inference mode: the mean slope, nothing random.
                self.p.forward.push(activate(y_eval));
                self.p.train.push(activate(y_train));
                Ok(None)
            }
            Activation::Rrelu { lower, upper } => {
                // Evaluation uses the mean slope, as torch.nn.RReLU in eval mode.
                self.p.forward.push(activate(y_eval));
                let step = self.p.find(STEP_SLOT_NAME).ok_or_else(|| {
                    anyhow::anyhow!("the plan has no step counter for RReLU's slopes")
                })?;
                self.p.train.push(Op::RreluTrain(RreluTrain {
                    x: z,
                    y: y_train,
                    step,
                    stream: rrelu_stream(l),
                    lower,
                    upper,
                    len,
                }));
                Ok(Some(step))
            }
            _ => {
                self.p.forward.push(activate(y_eval));
                self.p.train.push(activate(y_train));
                Ok(None)
            }
        }
    }

    /// `dz = dh ⊙ f'(x)` for a hidden layer whose activation read `x` and wrote `y`
    /// (before any dropout); PReLU also gets its slope's gradient.
    fn activation_backward(&mut self, layer: &Layer, y: TensorId, dh: TensorId, dz: TensorId) {
        let (l, rows, width) = (layer.index, self.rows, layer.fan_out);
        let (x, len, act) = (layer.act_in, rows * width, self.spec.activation_of(l));
        match (act, layer.act_extra) {
            (Activation::Prelu { .. }, Some(weight)) => {
                let units = self.p.tensors[weight].len();
                let terms = self.local(format!("layers.{l}.act.weight.grad_terms"), &[rows, width]);
                let dw = self.local(format!("layers.{l}.act.weight.grad"), &[units]);
                self.p.train.push(Op::PreluBackward(PreluBackward {
                    x,
                    weight,
                    dy: dh,
                    dx: dz,
                    dw_terms: terms,
                    len,
                    units,
                }));
                // Summed over the batch like a bias gradient; one slope per layer sums the
                // per-unit sums too, in a second pass so the first stays parallel over units.
                let per_unit = if units == width {
                    dw
                } else {
                    self.local(format!("layers.{l}.act.weight.grad_units"), &[width])
                };
                self.p.train.push(Op::SumRows(SumRows {
                    x: terms,
                    out: per_unit,
                    rows,
                    cols: width,
                    accumulate: false,
                }));
                if per_unit != dw {
                    self.p.train.push(Op::SumRows(SumRows {
                        x: per_unit,
                        out: dw,
                        rows: width,
                        cols: 1,
                        accumulate: false,
                    }));
                }
                self.params.push((weight, dw));
            }
            (Activation::Rrelu { lower, upper }, Some(step)) => {
                self.p
                    .train
                    .push(Op::RreluTrainBackward(RreluTrainBackward {
                        x,
                        dy: dh,
                        dx: dz,
                        step,
                        stream: rrelu_stream(l),
                        lower,
                        upper,
                        len,
                    }));
            }
            _ => self.p.train.push(Op::ActivateBackward(ActivateBackward {
                act,
                x,
                y,
                dy: dh,
                dx: dz,
                len,
            })),
        }
    }

    fn step_counter(&self) -> anyhow::Result<TensorId> {
        self.p
            .find(STEP_SLOT_NAME)
            .context("the plan has no step counter")
    }

    /// Batch norm of `x` (training statistics in `train`, running ones in `forward`);
    /// returns its tensors and its output.
    fn batch_norm(
        &mut self,
        l: usize,
        x: TensorId,
        name: &str,
    ) -> anyhow::Result<(BnTensors, TensorId)> {
        let cfg = self
            .spec
            .batch_norm_of(l)
            .expect("only called where the layer has batch norm");
        let (rows, cols) = (self.rows, self.p.tensors[x].shape[1]);
        let gamma = self.persistent(&format!("layers.{l}.{name}.weight"), &[cols])?;
        let beta = self.persistent(&format!("layers.{l}.{name}.bias"), &[cols])?;
        let running_mean = self.persistent(&format!("layers.{l}.{name}.running_mean"), &[cols])?;
        let running_var = self.persistent(&format!("layers.{l}.{name}.running_var"), &[cols])?;
        let mean = self.local(format!("layers.{l}.{name}.batch_mean"), &[cols]);
        let invstd = self.local(format!("layers.{l}.{name}.batch_invstd"), &[cols]);
        let y = self.local(format!("layers.{l}.{name}.out"), &[rows, cols]);
        self.p.forward.push(Op::BatchNormEval(BatchNormEval {
            x,
            y,
            gamma,
            beta,
            running_mean,
            running_var,
            rows,
            cols,
            eps: cfg.eps,
        }));
        let frozen = l < self.spec.frozen_layers;
        if frozen {
            // Frozen layers run in inference mode (as Keras does for frozen batch norm), so
            // their outputs are deterministic and can be cached.
            let eval = self.p.forward.last().expect("just pushed").clone();
            self.p.train.push(eval);
            let bn = BnTensors {
                input: x,
                gamma,
                beta,
                mean,
                invstd,
            };
            return Ok((bn, y));
        }
        self.push_bn_train(BatchNormTrain {
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
            momentum: cfg.momentum,
            eps: cfg.eps,
        });
        let bn = BnTensors {
            input: x,
            gamma,
            beta,
            mean,
            invstd,
        };
        Ok((bn, y))
    }

    fn batch_norm_backward(&mut self, l: usize, bn: &BnTensors, dy: TensorId) -> TensorId {
        let (rows, cols) = (self.rows, self.p.tensors[bn.input].shape[1]);
        let dx = self.local(
            format!("{}.grad", self.p.tensors[bn.input].name),
            &[rows, cols],
        );
        let dgamma = self.local(format!("layers.{l}.bn.weight.grad"), &[cols]);
        let dbeta = self.local(format!("layers.{l}.bn.bias.grad"), &[cols]);
        self.push_bn_backward(BatchNormBackward {
            x: bn.input,
            dy,
            gamma: bn.gamma,
            mean: bn.mean,
            invstd: bn.invstd,
            dx,
            dgamma,
            dbeta,
            rows,
            cols,
        });
        self.params.push((bn.gamma, dgamma));
        self.params.push((bn.beta, dbeta));
        dx
    }

    /// Loss and metrics for evaluation and training; returns the gradient of the loss
    /// with respect to `output`.
    fn loss(&mut self, output: TensorId, target: TensorId) -> anyhow::Result<TensorId> {
        let (rows, cols) = (self.rows, self.spec.output);
        let metrics = self.persistent(METRICS_SLOT_NAME, &[METRICS_LEN])?;
        self.p.metrics = Some(metrics);
        let row_loss = self.local("loss.rows", &[rows]);
        let row_correct = self.local("loss.correct", &[rows]);
        let accumulate = Op::AccumulateMetrics(AccumulateMetrics {
            row_loss,
            row_correct,
            metrics,
            rows,
        });
        self.p.eval.push(Op::LossEval(LossEval {
            loss: self.spec.loss,
            pred: output,
            target,
            row_loss,
            row_correct,
            rows,
            cols,
        }));
        self.p.eval.push(accumulate.clone());
        let dout = self.local("output.grad", &[rows, cols]);
        self.p.train.push(Op::LossGrad(LossGrad {
            loss: self.spec.loss,
            pred: output,
            target,
            dpred: dout,
            row_loss,
            row_correct,
            rows,
            cols,
        }));
        self.p.train.push(accumulate);
        Ok(dout)
    }
}
