//! Export of a trained model to ONNX, for inference elsewhere (onnxruntime, tract,
//! TensorRT, …).
//!
//! The graph computes what `predict` writes, from raw features:
//!
//! * the standardizer fitted on the training data, when the checkpoint has one, as
//!   `Sub(mean)` then `Div(std)` (a constant feature, std 0, is divided by 1, as
//!   [`Standardizer::transform`] does);
//! * per layer `Gemm` (the PyTorch `[out, in]` weight with `transB = 1`), then in hidden
//!   layers `BatchNormalization` in inference mode with the running statistics (not
//!   folded into the weights, as PyTorch exports it, so the file keeps the trained
//!   tensors under their names), the activation as its ONNX operator, and the residual
//!   `Add`, through a `Gemm` projection when the widths differ. Dropout is absent:
//!   inference has none.
//! * the output layer's values as `output`, logits for classification as `predict`
//!   gives them, and for classification also `class`, the `ArgMax` that `predict`'s class
//!   column holds.
//!
//! Activations map one to one except SiLU, which ONNX lacks and which is written
//! `Mul(x, Sigmoid(x))` as PyTorch exports it, and RReLU, which is `LeakyRelu` with its
//! evaluation slope `(lower + upper) / 2`. GELU (`Gelu`, opset 20) and Mish (opset 18)
//! are ONNX *function* operators that some runtimes do not implement (tract among
//! them); [`ExportOptions::decompose`] writes their function bodies from elementary
//! operators instead, e.g. `0.5·x·(1 + Erf(x/√2))`. The opset is the lowest that has
//! every operator written: 17 unless `Gelu` (20) or `Mish` (18) is used.

mod encode;

pub use encode::BATCH_DIM;
use encode::{encode_model, Attr, ElemType, Graph, Initializer, ModelInfo, Node, ValueInfo};

use crate::data::Standardizer;
use crate::model::{BnPlacement, MlpSpec, NamedTensor};
use crate::ops::activation::{SELU_ALPHA, SELU_SCALE};
use crate::ops::{Activation, Loss};
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// The graph input: raw features, `[batch, input]`.
pub const INPUT: &str = "features";
/// The model's outputs, `[batch, output]`.
pub const OUTPUT: &str = "output";
/// For classification, the predicted class of each row, `[batch]` int64.
pub const CLASS_OUTPUT: &str = "class";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Write GELU and Mish from elementary operators rather than as the `Gelu` and
    /// `Mish` operators, for runtimes without these function operators.
    pub decompose: bool,
}

/// An encoded model and what it holds.
#[derive(Clone, Debug)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub opset: i64,
    pub ir_version: i64,
    /// Nodes in the graph.
    pub nodes: usize,
    pub standardized: bool,
}

/// Protobuf messages cannot exceed 2 GiB; larger models would need ONNX's external data
/// files, which this exporter does not write.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Encodes the model `spec` describes with the weights in `tensors` (its `state_dict`,
/// PyTorch names) and, when given, the input standardizer. Errors name a missing,
/// misshapen or non-finite tensor.
pub fn export(
    spec: &MlpSpec,
    tensors: &[NamedTensor],
    standardizer: Option<&Standardizer>,
    opts: ExportOptions,
) -> Result<Exported> {
    spec.validate()?;
    let mut b = Builder {
        tensors: tensors.iter().map(|t| (t.name.as_str(), t)).collect(),
        g: Graph {
            name: "steadygrad_mlp".into(),
            ..Graph::default()
        },
        opts,
        opset: 17,
    };
    b.g.inputs.push(ValueInfo {
        name: INPUT.into(),
        elem: ElemType::Float,
        width: Some(spec.input),
    });
    let x = match standardizer {
        Some(s) => b.standardize(s, spec.input)?,
        None => INPUT.to_string(),
    };
    let logits = b.layers(spec, x)?;
    b.node("output", "Identity", &[&logits], OUTPUT, vec![]);
    b.g.outputs.push(ValueInfo {
        name: OUTPUT.into(),
        elem: ElemType::Float,
        width: Some(spec.output),
    });
    if spec.loss == Loss::SoftmaxCrossEntropy {
        // The first of equal maxima, as predict's class column picks.
        let attrs = vec![
            ("axis", Attr::Int(1)),
            ("keepdims", Attr::Int(0)),
            ("select_last_index", Attr::Int(0)),
        ];
        b.node("class", "ArgMax", &[OUTPUT], CLASS_OUTPUT, attrs);
        b.g.outputs.push(ValueInfo {
            name: CLASS_OUTPUT.into(),
            elem: ElemType::Int64,
            width: None,
        });
    }
    ensure!(
        b.g.weight_bytes() < PROTOBUF_LIMIT,
        "the model's weights take {} bytes, over the 2 GiB an ONNX file can hold without \
         external data files, which steadygrad does not write",
        b.g.weight_bytes()
    );
    // onnx.checker refuses an opset newer than its IR version: opsets 17 and 18 came with
    // IR 8 (ONNX 1.12, 1.13), opset 19 with IR 9 (ONNX 1.14).
    let ir_version = if b.opset >= 19 { 9 } else { 8 };
    let doc = format!(
        "steadygrad MLP {} -> {} -> {} ({}); input '{INPUT}': raw features{}",
        spec.input,
        spec.hidden_summary(),
        spec.output,
        spec.loss.name(),
        if standardizer.is_some() {
            ", standardized in the graph"
        } else {
            ""
        }
    );
    let info = ModelInfo {
        ir_version,
        opset: b.opset,
        producer_version: env!("CARGO_PKG_VERSION"),
        doc: &doc,
    };
    Ok(Exported {
        bytes: encode_model(&b.g, &info),
        opset: b.opset,
        ir_version,
        nodes: b.g.nodes.len(),
        standardized: standardizer.is_some(),
    })
}

/// Writes `exported` to `path` atomically (a temporary file renamed over it) under the
/// writer lock, so a crash or a concurrent export never leaves a torn model.
pub fn write(path: &Path, exported: &Exported) -> Result<()> {
    let _lock = crate::checkpoint::lock_for_writing(path)?;
    crate::checkpoint::write_atomic(path, &exported.bytes)
}

struct Builder<'a> {
    tensors: HashMap<&'a str, &'a NamedTensor>,
    g: Graph,
    opts: ExportOptions,
    opset: i64,
}

impl Builder<'_> {
    fn node(
        &mut self,
        name: &str,
        op: &'static str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<(&'static str, Attr)>,
    ) {
        self.g.nodes.push(Node {
            op,
            name: name.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.to_string()],
            attrs,
        });
    }

    /// `x·Wᵀ (+ b)` with `inputs` `[x, W, b?]`, W in PyTorch's `[out, in]` layout.
    fn gemm(&mut self, name: &str, inputs: &[&str], out: &str) {
        self.node(name, "Gemm", inputs, out, vec![("transB", Attr::Int(1))]);
    }

    /// A checkpoint tensor as an initializer of the same name, checked against `shape`.
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        let t = self.tensors.get(name).with_context(|| {
            format!("the checkpoint has no tensor '{name}', which the model's architecture needs")
        })?;
        ensure!(
            t.shape == shape && t.values.len() == shape.iter().product::<usize>(),
            "tensor '{name}' has shape {:?}; the architecture needs {shape:?}",
            t.shape
        );
        if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "tensor '{name}' holds {} at index {i}: a model with non-finite weights cannot \
                 be exported (the run diverged; export an earlier checkpoint)",
                t.values[i]
            );
        }
        let values = t.values.clone();
        self.constant(name, shape, values);
        Ok(name.to_string())
    }

    fn constant(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        if !self.g.initializers.iter().any(|t| t.name == name) {
            self.g.initializers.push(Initializer {
                name: name.to_string(),
                dims: dims.to_vec(),
                values,
            });
        }
        name.to_string()
    }

    /// A scalar constant, shared by every node that uses the same value.
    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.constant(&format!("const.{name}"), &[], vec![v])
    }

    fn standardize(&mut self, s: &Standardizer, input: usize) -> Result<String> {
        ensure!(
            s.input_dim() == input,
            "the checkpoint's standardizer has {} features but the model takes {input}",
            s.input_dim()
        );
        let mean = self.constant("standardizer.mean", &[input], s.mean.clone());
        let std: Vec<f32> = s
            .std
            .iter()
            .map(|&v| if v > 0.0 { v } else { 1.0 })
            .collect();
        let std = self.constant("standardizer.std", &[input], std);
        self.node(
            "standardizer.sub",
            "Sub",
            &[INPUT, &mean],
            "standardizer.centered",
            vec![],
        );
        self.node(
            "standardizer.div",
            "Div",
            &["standardizer.centered", &std],
            "standardized",
            vec![],
        );
        Ok("standardized".into())
    }

    /// Every layer from the (standardized) input `x`; returns the output layer's tensor.
    fn layers(&mut self, spec: &MlpSpec, x: String) -> Result<String> {
        let sizes = spec.layer_sizes();
        // outs[0] is the network input, outs[j] the output of layer j - 1: what skip
        // connections read.
        let mut outs = vec![x];
        for l in 0..spec.num_layers() {
            let (fan_in, fan_out) = (sizes[l], sizes[l + 1]);
            let w = self.param(&format!("layers.{l}.linear.weight"), &[fan_out, fan_in])?;
            let bias = self.param(&format!("layers.{l}.linear.bias"), &[fan_out])?;
            let mut h = format!("layers.{l}.z");
            let x = outs[l].clone();
            self.gemm(&format!("layers.{l}.linear"), &[&x, &w, &bias], &h);
            if l + 1 == spec.num_layers() {
                return Ok(h);
            }
            let placement = spec.batch_norm_of(l).map(|bn| (bn.placement, bn.eps));
            if let Some((BnPlacement::BeforeActivation, eps)) = placement {
                h = self.batch_norm(l, &h, fan_out, eps)?;
            }
            h = self.activation(spec.activation_of(l), l, &h, fan_out)?;
            if let Some((BnPlacement::AfterActivation, eps)) = placement {
                h = self.batch_norm(l, &h, fan_out, eps)?;
            }
            if let Some(src) = spec.skip_source(l) {
                let mut carried = outs[src].clone();
                if sizes[src] != fan_out {
                    let p =
                        self.param(&format!("layers.{l}.proj.weight"), &[fan_out, sizes[src]])?;
                    let out = format!("layers.{l}.proj.out");
                    self.gemm(&format!("layers.{l}.proj"), &[&carried, &p], &out);
                    carried = out;
                }
                let sum = format!("layers.{l}.out");
                self.node(
                    &format!("layers.{l}.residual"),
                    "Add",
                    &[&h, &carried],
                    &sum,
                    vec![],
                );
                h = sum;
            }
            outs.push(h);
        }
        unreachable!("the loop returns at the output layer")
    }

    fn batch_norm(&mut self, l: usize, x: &str, width: usize, eps: f32) -> Result<String> {
        let mut inputs = Vec::new();
        for what in ["weight", "bias", "running_mean", "running_var"] {
            inputs.push(self.param(&format!("layers.{l}.bn.{what}"), &[width])?);
        }
        let out = format!("layers.{l}.bn.out");
        let mut all = vec![x];
        all.extend(inputs.iter().map(String::as_str));
        self.node(
            &format!("layers.{l}.bn"),
            "BatchNormalization",
            &all,
            &out,
            vec![("epsilon", Attr::Float(eps))],
        );
        Ok(out)
    }

    /// `act` applied to `x`, the pre-activation of hidden layer `l` (`width` units).
    fn activation(&mut self, act: Activation, l: usize, x: &str, width: usize) -> Result<String> {
        let name = format!("layers.{l}.act");
        let out = format!("layers.{l}.h");
        let one = |b: &mut Self, op, attrs| {
            b.node(&name, op, &[x], &out, attrs);
            Ok(out.clone())
        };
        match act {
            Activation::Identity => Ok(x.to_string()),
            Activation::Sigmoid => one(self, "Sigmoid", vec![]),
            Activation::Tanh => one(self, "Tanh", vec![]),
            Activation::Relu => one(self, "Relu", vec![]),
            Activation::LeakyRelu { .. } | Activation::Rrelu { .. } => {
                let slope = act.negative_slope().expect("the ReLU family has a slope");
                one(self, "LeakyRelu", vec![("alpha", Attr::Float(slope))])
            }
            Activation::Prelu { per_unit, .. } => {
                let units = if per_unit { width } else { 1 };
                let w = self.param(&crate::model::spec::prelu_weight_name(l), &[units])?;
                self.node(&name, "PRelu", &[x, &w], &out, vec![]);
                Ok(out)
            }
            Activation::Elu { alpha } => one(self, "Elu", vec![("alpha", Attr::Float(alpha))]),
            Activation::Selu => one(
                self,
                "Selu",
                vec![
                    ("alpha", Attr::Float(SELU_ALPHA as f32)),
                    ("gamma", Attr::Float(SELU_SCALE as f32)),
                ],
            ),
            Activation::Gelu | Activation::GeluTanh if !self.opts.decompose => {
                self.opset = self.opset.max(20);
                let approximate = if act == Activation::Gelu {
                    "none"
                } else {
                    "tanh"
                };
                one(
                    self,
                    "Gelu",
                    vec![("approximate", Attr::Str(approximate.into()))],
                )
            }
            Activation::Gelu => {
                // 0.5·x·(1 + erf(x/√2)), the body of ONNX's Gelu function.
                let k = self.scalar("inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
                let u = self.binary(&name, "Mul", x, &k, "scaled");
                Ok(self.gate(&name, "Erf", x, &u, &out))
            }
            Activation::GeluTanh => {
                // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
                let c = self.scalar("gelu_c", 0.044715);
                let k = self.scalar("sqrt_2_over_pi", (2.0 / std::f64::consts::PI).sqrt() as f32);
                let x2 = self.binary(&name, "Mul", x, x, "x2");
                let x3 = self.binary(&name, "Mul", &x2, x, "x3");
                let cx3 = self.binary(&name, "Mul", &x3, &c, "cx3");
                let inner = self.binary(&name, "Add", x, &cx3, "inner");
                let u = self.binary(&name, "Mul", &inner, &k, "scaled");
                Ok(self.gate(&name, "Tanh", x, &u, &out))
            }
            Activation::Silu => {
                let s = format!("{name}.sigmoid");
                self.node(&s, "Sigmoid", &[x], &s, vec![]);
                self.node(&name, "Mul", &[x, &s], &out, vec![]);
                Ok(out)
            }
            Activation::Mish if !self.opts.decompose => {
                self.opset = self.opset.max(18);
                one(self, "Mish", vec![])
            }
            Activation::Mish => {
                let sp = format!("{name}.softplus");
                let t = format!("{name}.tanh");
                self.node(&sp, "Softplus", &[x], &sp, vec![]);
                self.node(&t, "Tanh", &[&sp], &t, vec![]);
                self.node(&name, "Mul", &[x, &t], &out, vec![]);
                Ok(out)
            }
        }
    }

    /// `a op b` into `{name}.{what}` (the node has the same name as its output).
    fn binary(&mut self, name: &str, op: &'static str, a: &str, b: &str, what: &str) -> String {
        let out = format!("{name}.{what}");
        self.node(&out, op, &[a, b], &out, vec![]);
        out
    }

    /// GELU's tail from `u`: `0.5·x·(1 + f(u))` with `f` Erf or Tanh, into `out`.
    fn gate(&mut self, name: &str, f: &'static str, x: &str, u: &str, out: &str) -> String {
        let (one, half) = (self.scalar("one", 1.0), self.scalar("half", 0.5));
        let fu = format!("{name}.{}", f.to_lowercase());
        self.node(&fu, f, &[u], &fu, vec![]);
        let g = self.binary(name, "Add", &fu, &one, "gate");
        let xg = self.binary(name, "Mul", x, &g, "xgate");
        self.node(name, "Mul", &[&xg, &half], out, vec![]);
        out.to_string()
    }
}
