//! `steadygrad export --onnx`: the exported file, run by tract (a Rust ONNX runtime),
//! gives what `predict` gives on the CPU backend.
//!
//! Tolerance: `|onnx − predict| ≤ 1e-5·(1 + |predict|)`. Both compute in f32 but sum the
//! matrix products in different orders and tract evaluates sigmoid, tanh, exp and erf with
//! its own f32 approximations where steadygrad's reference computes them in f64 and
//! rounds once; over these few small layers that leaves differences of a few f32 ulps of
//! values of order 1 (about 1e-7 to 1e-6), so 1e-5 holds with room while a wrong
//! operator, attribute, weight layout or a missing standardizer differs by far more.

mod common;

use common::{run_cli, TempDir};
use std::path::{Path, PathBuf};
use steadygrad::checkpoint::{self, TrainingState};
use steadygrad::data::Standardizer;
use steadygrad::{
    Activation, BackendChoice, BatchNorm, BnPlacement, Dataset, FitOptions, Loss, MlpSpec, Model,
    Optimizer,
};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

const ROWS: usize = 48;

/// Raw features far from standardized (means near 5, spreads near 3), so a graph that
/// left out the standardizer would be far off.
fn features(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    common::random(rows * cols, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| 5.0 + (i % cols) as f32 + 3.0 * v)
        .collect()
}

fn dataset(spec: &MlpSpec, x: Vec<f32>) -> Dataset {
    let rows = x.len() / spec.input;
    match spec.loss {
        Loss::SoftmaxCrossEntropy => {
            let labels: Vec<usize> = (0..rows).map(|r| r % spec.output).collect();
            Dataset::classification(x, &labels, spec.input, spec.output).unwrap()
        }
        Loss::MeanSquaredError => {
            let y = common::random(rows * spec.output, 99);
            Dataset::regression(x, y, spec.input, spec.output).unwrap()
        }
    }
}

/// A model trained for two epochs on standardized data (so weights, batch-norm running
/// statistics and PReLU slopes are no longer their initial values), saved as a training
/// checkpoint with its standardizer. Returns the model and the raw evaluation features.
fn trained(spec: MlpSpec, dir: &Path, standardize: bool) -> (Model, PathBuf, Vec<f32>) {
    let raw = dataset(&spec, features(ROWS, spec.input, 1));
    let standardizer = standardize.then(|| Standardizer::fit(&raw).unwrap());
    let mut train = raw.clone();
    if let Some(s) = &standardizer {
        s.apply(&mut train).unwrap();
    }
    let mut m = Model::with_backend(spec, &BackendChoice::Cpu).unwrap();
    let opts = FitOptions {
        epochs: 2,
        batch_size: 16,
        ..FitOptions::default()
    };
    m.fit(&train, None, &opts, |_| {}).unwrap();
    let path = dir.join("model.safetensors");
    let state = TrainingState {
        config: None,
        epoch: m.epoch(),
        standardizer,
        plateau: None,
    };
    checkpoint::save_checkpoint(&mut m, &path, &state).unwrap();
    (m, path, features(ROWS, raw.input_dim, 2))
}

fn export(checkpoint: &Path, onnx: &Path, extra: &[&str]) -> Result<String, String> {
    let (c, o) = (checkpoint.to_str().unwrap(), onnx.to_str().unwrap());
    let args = [
        &["--backend", "cpu", "export", "--checkpoint", c, "--onnx", o],
        extra,
    ]
    .concat();
    let (ok, out, err) = run_cli(&args, checkpoint.parent().unwrap());
    if ok {
        Ok(out)
    } else {
        Err(err)
    }
}

/// Runs the ONNX file on `x`: the `output` values and, when the model has it, `class`.
fn run_onnx(path: &Path, x: &[f32], cols: usize) -> (Vec<f32>, Option<Vec<i64>>) {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array2::from_shape_vec((x.len() / cols, cols), x.to_vec())
        .unwrap()
        .into();
    let out = model.run(tvec!(input.into())).unwrap();
    let values = out[0]
        .to_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let class = out
        .get(1)
        .map(|c| c.to_array_view::<i64>().unwrap().iter().copied().collect());
    (values, class)
}

fn proto(path: &Path) -> ModelProto {
    tract_onnx::onnx().proto_model_for_path(path).unwrap()
}

fn op_types(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().expect("a graph");
    g.node.iter().map(|n| n.op_type.clone()).collect()
}

fn opset(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty())
        .expect("the ai.onnx opset")
        .version
}

/// `predict` on the standardized features, as the `predict` command computes it.
fn predict(m: &mut Model, ckpt: &Path, raw: &[f32]) -> Vec<f32> {
    let mut x = raw.to_vec();
    let ckpt = checkpoint::load_checkpoint(ckpt).unwrap();
    if let Some(s) = &ckpt.state.standardizer {
        s.transform(&mut x).unwrap();
    }
    m.predict(&x).unwrap()
}

fn assert_matches(what: &str, onnx: &[f32], expected: &[f32]) {
    assert_eq!(onnx.len(), expected.len(), "{what}: output length");
    let mut worst = (0.0f32, 0);
    for (i, (&a, &b)) in onnx.iter().zip(expected).enumerate() {
        let err = (a - b).abs() / (1.0 + b.abs());
        assert!(!err.is_nan(), "{what}: NaN at {i} (onnx {a}, predict {b})");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1e-5,
        "{what}: value {i} is {} in ONNX but {} from predict (relative error {:e})",
        onnx[i],
        expected[i],
        worst.0
    );
}

fn argmax(row: &[f32]) -> i64 {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as i64
}

/// Exports `spec` trained, runs the file and compares it with `predict`; returns the
/// exported file's proto.
fn check(what: &str, spec: MlpSpec, extra: &[&str]) -> ModelProto {
    let tmp = TempDir::new("onnx");
    let (input, classify) = (spec.input, spec.loss == Loss::SoftmaxCrossEntropy);
    let (mut m, ckpt, raw) = trained(spec, tmp.path(), true);
    let onnx = tmp.path().join("model.onnx");
    let msg = export(&ckpt, &onnx, extra).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(msg.contains("model.onnx"), "{what}: {msg}");
    let expected = predict(&mut m, &ckpt, &raw);
    let (values, class) = run_onnx(&onnx, &raw, input);
    assert_matches(what, &values, &expected);
    match class {
        Some(c) => {
            assert!(classify, "{what}: a regression model has no class output");
            let want: Vec<i64> = expected.chunks(m.spec().output).map(argmax).collect();
            assert_eq!(c, want, "{what}: class output");
        }
        None => assert!(!classify, "{what}: no class output"),
    }
    proto(&onnx)
}

fn small(act: Activation) -> MlpSpec {
    MlpSpec::new(5, &[7, 6], 3)
        .activation(act)
        .optimizer(Optimizer::adam(0.01))
        .seed(11)
}

#[test]
fn every_activation_matches_predict() {
    // Non-default parameters, so an attribute left at ONNX's default would show.
    let mut acts = Activation::ALL.to_vec();
    acts.extend([
        Activation::LeakyRelu { slope: 0.2 },
        Activation::Rrelu {
            lower: 0.05,
            upper: 0.45,
        },
        Activation::Elu { alpha: 0.6 },
        Activation::Prelu {
            per_unit: true,
            init: 0.1,
        },
    ]);
    for act in acts {
        let what = format!("{act}");
        // GELU and Mish as operators tract lacks: checked below in their own test.
        let p = check(&what, small(act), &["--decompose"]);
        let ops = op_types(&p);
        let expected_op = match act {
            Activation::Sigmoid => Some("Sigmoid"),
            Activation::Tanh => Some("Tanh"),
            Activation::Relu => Some("Relu"),
            Activation::LeakyRelu { .. } | Activation::Rrelu { .. } => Some("LeakyRelu"),
            Activation::Prelu { .. } => Some("PRelu"),
            Activation::Elu { .. } => Some("Elu"),
            Activation::Selu => Some("Selu"),
            Activation::Gelu => Some("Erf"),
            Activation::GeluTanh | Activation::Mish => Some("Tanh"),
            Activation::Silu => Some("Sigmoid"),
            Activation::Identity => None,
        };
        match expected_op {
            Some(op) => assert!(ops.iter().any(|o| o == op), "{what}: no {op} in {ops:?}"),
            None => assert_eq!(
                ops,
                ["Sub", "Div", "Gemm", "Gemm", "Gemm", "Identity", "ArgMax"],
                "{what}"
            ),
        }
        assert_eq!(
            opset(&p),
            17,
            "{what}: decomposed models need opset 17 only"
        );
    }
}

/// GELU and Mish as ONNX's own operators (the default): tract cannot run `Gelu` and
/// `Mish`, so the file is compared node by node with the decomposed one, which runs.
#[test]
fn gelu_and_mish_are_their_onnx_operators() {
    for (act, op, approximate, opset_needed) in [
        (Activation::Gelu, "Gelu", Some("none"), 20),
        (Activation::GeluTanh, "Gelu", Some("tanh"), 20),
        (Activation::Mish, "Mish", None, 18),
    ] {
        let tmp = TempDir::new("onnx-gelu");
        let (_, ckpt, _) = trained(small(act), tmp.path(), true);
        let onnx = tmp.path().join("gelu.onnx");
        export(&ckpt, &onnx, &[]).unwrap();
        let p = proto(&onnx);
        assert_eq!(opset(&p), opset_needed, "{act}");
        // IR 9 came with opset 19 (ONNX 1.14); opset 18 is IR 8.
        assert_eq!(
            p.ir_version,
            if opset_needed >= 20 { 9 } else { 8 },
            "{act}"
        );
        let g = p.graph.as_ref().unwrap();
        let nodes: Vec<_> = g.node.iter().filter(|n| n.op_type == op).collect();
        assert_eq!(nodes.len(), 2, "{act}: one {op} per hidden layer");
        for n in nodes {
            let attr = n.attribute.iter().find(|a| a.name == "approximate");
            assert_eq!(
                attr.map(|a| String::from_utf8_lossy(&a.s).into_owned())
                    .as_deref(),
                approximate,
                "{act}"
            );
        }
        // The rest of the graph is the decomposed one's, which tract runs and matches.
        let plain = tmp.path().join("plain.onnx");
        export(&ckpt, &plain, &["--decompose"]).unwrap();
        let decomposed = op_types(&proto(&plain));
        let ops = op_types(&p);
        assert_eq!(ops.len(), 7 + 2, "{act}: {ops:?}");
        assert!(decomposed.len() > ops.len() && !decomposed.iter().any(|o| o == op));
        let outer = |v: &[String]| (v[..3].to_vec(), v[v.len() - 3..].to_vec());
        assert_eq!(outer(&ops), outer(&decomposed), "{act}");
    }
}

#[test]
fn batch_norm_before_and_after_the_activation() {
    for placement in [BnPlacement::BeforeActivation, BnPlacement::AfterActivation] {
        let spec = small(Activation::Tanh).batch_norm(BatchNorm {
            placement,
            momentum: 0.3,
            eps: 1e-3,
        });
        let p = check(&format!("{placement:?}"), spec, &[]);
        let ops = op_types(&p);
        let bn = ops.iter().position(|o| o == "BatchNormalization").unwrap();
        let act = ops.iter().position(|o| o == "Tanh").unwrap();
        assert_eq!(
            bn < act,
            placement == BnPlacement::BeforeActivation,
            "{ops:?}"
        );
        // PyTorch's export: BatchNormalization with the running statistics, not folded.
        let g = p.graph.as_ref().unwrap();
        let stats = g
            .initializer
            .iter()
            .find(|t| t.name == "layers.0.bn.running_var")
            .expect("running variance stored");
        let var: Vec<f32> = stats
            .raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            var.iter().any(|&v| (v - 1.0).abs() > 1e-3),
            "trained: {var:?}"
        );
    }
}

#[test]
fn residual_connections_with_and_without_projection() {
    // Layer 1 adds the 5-wide input through a projection, layer 3 adds layer 1's output.
    let spec = MlpSpec::new(5, &[8, 8, 8, 8], 4)
        .activation(Activation::Relu)
        .residual(2)
        .batch_norm(BatchNorm::default())
        .optimizer(Optimizer::adam(0.01))
        .seed(4);
    let p = check("residual", spec, &[]);
    let g = p.graph.as_ref().unwrap();
    let adds: Vec<_> = g.node.iter().filter(|n| n.op_type == "Add").collect();
    assert_eq!(adds.len(), 2);
    assert_eq!(adds[0].input[1], "layers.1.proj.out");
    assert_eq!(adds[1].input[1], "layers.1.out");
    // Every other layer: a skip with the widths equal (no projection) from the input.
    check(
        "residual every layer",
        MlpSpec::new(6, &[6, 6, 6], 2)
            .activation(Activation::Selu)
            .residual(1)
            .seed(8),
        &[],
    );
}

#[test]
fn regression_model_has_one_output() {
    let spec = MlpSpec::new(4, &[9, 9, 9], 2)
        .activation(Activation::GeluTanh)
        .loss(Loss::MeanSquaredError)
        .batch_norm(BatchNorm::default())
        .dropout(0.2)
        .optimizer(Optimizer::adam(0.01))
        .seed(2);
    let p = check("regression", spec, &["--decompose"]);
    let g = p.graph.as_ref().unwrap();
    let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["output"]);
    // Dropout is training only.
    assert!(!op_types(&p).iter().any(|o| o == "Dropout"));
}

#[test]
fn checkpoint_without_standardizer_takes_features_as_trained() {
    let tmp = TempDir::new("onnx-raw");
    let spec = small(Activation::Relu);
    let (mut m, ckpt, raw) = trained(spec, tmp.path(), false);
    let onnx = tmp.path().join("raw.onnx");
    let msg = export(&ckpt, &onnx, &[]).unwrap();
    assert!(msg.contains("no standardizer"), "{msg}");
    let (values, _) = run_onnx(&onnx, &raw, 5);
    assert_matches("no standardizer", &values, &predict(&mut m, &ckpt, &raw));
    assert_eq!(op_types(&proto(&onnx))[0], "Gemm");
}

#[test]
fn inputs_and_outputs_have_a_dynamic_batch_dimension() {
    let tmp = TempDir::new("onnx-io");
    let (_, ckpt, _) = trained(small(Activation::Relu), tmp.path(), true);
    let onnx = tmp.path().join("io.onnx");
    export(&ckpt, &onnx, &[]).unwrap();
    let g = proto(&onnx).graph.unwrap();
    let dims = |v: &tract_onnx::pb::ValueInfoProto| -> Vec<String> {
        use tract_onnx::pb::tensor_shape_proto::dimension::Value;
        use tract_onnx::pb::type_proto::Value as Ty;
        let Some(Ty::TensorType(t)) = v.r#type.as_ref().unwrap().value.as_ref() else {
            panic!("not a tensor")
        };
        let shape = t.shape.as_ref().unwrap();
        shape
            .dim
            .iter()
            .map(|d| match d.value.as_ref().unwrap() {
                Value::DimValue(n) => n.to_string(),
                Value::DimParam(p) => p.clone(),
            })
            .collect()
    };
    assert_eq!(g.input[0].name, "features");
    assert_eq!(dims(&g.input[0]), ["batch", "5"]);
    assert_eq!(g.output[0].name, "output");
    assert_eq!(dims(&g.output[0]), ["batch", "3"]);
    assert_eq!(g.output[1].name, "class");
    assert_eq!(dims(&g.output[1]), ["batch"]);
    // Weights are initializers, not graph inputs.
    assert_eq!(g.input.len(), 1);
    // Any batch size runs, one row included.
    let (one, _) = run_onnx(&onnx, &features(1, 5, 7), 5);
    assert_eq!(one.len(), 3);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = TempDir::new("onnx-bad");
    let (_, ckpt, _) = trained(small(Activation::Relu), tmp.path(), true);
    let dir = tmp.path();

    let missing = dir.join("nope.safetensors");
    let err = export(&missing, &dir.join("a.onnx"), &[]).unwrap_err();
    assert!(err.contains("nope.safetensors"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let err = export(&ckpt, &dir.join("no-such-dir").join("a.onnx"), &[]).unwrap_err();
    assert!(
        err.contains("--onnx") && err.contains("does not exist"),
        "{err}"
    );
    let err = export(&ckpt, dir, &[]).unwrap_err();
    assert!(err.contains("is a directory"), "{err}");

    // Not a checkpoint at all.
    let junk = tmp.write("junk.safetensors", b"not a model");
    let err = export(&junk, &dir.join("a.onnx"), &[]).unwrap_err();
    assert!(err.contains("junk.safetensors"), "{err}");

    // A diverged model (which the model itself refuses to load, so the file is edited):
    // refused, and an existing file at the path is left as it was.
    let (mut tensors, meta) = checkpoint::load(&ckpt).unwrap();
    let w = tensors
        .iter_mut()
        .find(|t| t.name == "layers.0.linear.weight")
        .unwrap();
    w.values[3] = f32::NAN;
    let nan = dir.join("nan.safetensors");
    checkpoint::save(&nan, &tensors, &meta).unwrap();
    let keep = tmp.write("keep.onnx", b"previous export");
    let err = export(&nan, &keep, &[]).unwrap_err();
    assert!(
        err.contains("layers.0.linear.weight") && err.contains("NaN"),
        "{err}"
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"previous export");

    // A tensor the architecture needs is missing.
    let (mut tensors, _) = checkpoint::load(&ckpt).unwrap();
    tensors.retain(|t| t.name != "layers.1.linear.bias");
    let cut = dir.join("cut.safetensors");
    checkpoint::save(&cut, &tensors, &meta).unwrap();
    let err = export(&cut, &dir.join("b.onnx"), &[]).unwrap_err();
    assert!(err.contains("no tensor 'layers.1.linear.bias'"), "{err}");
    assert!(!dir.join("b.onnx").exists());

    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A mixed per-layer net (tanh, PReLU, then ReLU; batch norm before, after and none; skip
/// connections from `residual_every` and one from the input through a projection)
/// exports layer by layer and matches `predict`.
#[test]
fn mixed_per_layer_net_matches_predict() {
    let after = BatchNorm {
        placement: BnPlacement::AfterActivation,
        ..BatchNorm::default()
    };
    let spec = MlpSpec::new(5, &[7, 6, 6], 3)
        .activation(Activation::Relu)
        .layer_activation(0, Activation::Tanh)
        .layer_activation(
            1,
            Activation::Prelu {
                per_unit: true,
                init: 0.1,
            },
        )
        .batch_norm(BatchNorm::default())
        .layer_batch_norm(1, Some(after))
        .layer_batch_norm(2, None)
        .residual(2)
        .layer_skip(2, Some(0))
        .optimizer(Optimizer::adam(0.01))
        .seed(11);
    let p = check("mixed", spec, &[]);
    let ops = op_types(&p);
    let count = |op: &str| ops.iter().filter(|o| *o == op).count();
    assert_eq!(
        (
            count("Tanh"),
            count("PRelu"),
            count("Relu"),
            count("BatchNormalization")
        ),
        (1, 1, 1, 2),
        "{ops:?}"
    );
}
