//! Per-layer architectures: each hidden layer with its own activation, batch norm (none,
//! before, after), init and dropout, as PyTorch and Keras users mix them. Every guarantee
//! of a uniform net holds for a mixed one: finite-difference gradients on the CPU, GPU
//! against CPU, checkpoints and configs that round-trip, freezing, and clear errors.

mod common;

use common::fd::H;
use common::{gpu, random, run_cli, TempDir};
use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
use steadygrad::config::Config;
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{
    cross_check, Activation, BatchNorm, BnPlacement, Init, Loss, MlpSpec, Model, Optimizer,
    Tolerance,
};

/// tanh below, PReLU, then ReLU (the model-wide default) above; batch norm before on
/// layers 0 and 3, after on layer 1, none on layer 2; Glorot init on layer 0, dropout on
/// layer 1 only; the skip connection `residual_every = 2` would give layer 1 removed and
/// layer 3's taken from layer 0's output instead (through a projection: 8 → 6).
fn mixed() -> MlpSpec {
    let after = BatchNorm {
        placement: BnPlacement::AfterActivation,
        ..BatchNorm::default()
    };
    MlpSpec::new(5, &[8, 7, 9, 6], 3)
        .activation(Activation::Relu)
        .layer_activation(0, Activation::Tanh)
        .layer_activation(1, Activation::PRELU_UNIT)
        .batch_norm(BatchNorm::default())
        .layer_batch_norm(1, Some(after))
        .layer_batch_norm(2, None)
        .layer_init(0, Init::GlorotUniform)
        .dropout_per_layer(&[0.0, 0.2, 0.0, 0.0])
        .residual(2)
        .layer_skip(1, None)
        .layer_skip(3, Some(1))
        .optimizer(Optimizer::adam(1e-2))
        .seed(5)
}

#[test]
fn the_spec_resolves_per_layer_settings() {
    let s = mixed();
    s.validate().unwrap();
    assert_eq!(s.activation_of(0), Activation::Tanh);
    assert_eq!(s.activation_of(2), Activation::Relu);
    assert_eq!(
        s.batch_norm_of(1).map(|b| b.placement),
        Some(BnPlacement::AfterActivation)
    );
    assert_eq!(s.batch_norm_of(2), None);
    assert_eq!(s.batch_norm_of(4), None, "never on the output layer");
    let names: Vec<String> = s.persistent().into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"layers.0.bn.weight".to_string()));
    assert!(
        names.contains(&"layers.3.proj.weight".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("layers.1.proj")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("layers.2.bn.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("layers.1.act.")),
        "PReLU slope: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("layers.0.act.")),
        "{names:?}"
    );
    assert_eq!((s.skip_source(1), s.skip_source(3)), (None, Some(1)));
    assert_eq!(
        Config::from_spec(&s, 1, 8).model.layers.len(),
        4,
        "a mixed net's config lists its layers"
    );
    assert_eq!(s.activation_summary(), "tanh, prelu-unit:0.25, relu, relu");

    // Out-of-range layers are named.
    for bad in [
        MlpSpec::new(2, &[4], 2).layer_activation(1, Activation::Tanh),
        MlpSpec::new(2, &[4], 2).layer_batch_norm(3, None),
        MlpSpec::new(2, &[4], 2).layer_skip(2, Some(0)),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("hidden layers"), "{e}");
    }
    let e = MlpSpec::new(2, &[4, 4], 2)
        .layer_skip(0, Some(1))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("not below it"), "{e}");
}

/// Every gradient of a mixed net against finite differences of its own training-mode
/// loss (batch statistics, as the gradients are), on the CPU reference; the loss is read
/// from a step at learning rate 0, which moves no parameter. The layout is `mixed()`'s
/// with smooth activations (tanh, ELU, GELU, sigmoid) and no dropout: central
/// differences with a step of 1e-2 across a ReLU kink measure neither side, and with
/// batch-normalized pre-activations near N(0, 1) some of 6 × 30 values always lie that
/// close to 0. PReLU's and ReLU's own gradients are checked in tests/activations.rs.
#[test]
fn mixed_net_gradients_match_finite_differences() {
    let spec = MlpSpec {
        dropout: Vec::new(),
        ..mixed()
    }
    .activation(Activation::Sigmoid)
    .layer_activation(1, Activation::ELU)
    .layer_activation(2, Activation::Gelu)
    .loss(Loss::MeanSquaredError)
    .optimizer(Optimizer::sgd(1e-3));
    assert_eq!(spec.activation_of(0), Activation::Tanh);
    let rows = 6;
    let x = random(rows * spec.input, 21);
    let y = random(rows * spec.output, 22);
    let mut model = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let before = model.parameters().unwrap();
    model.train_batch(&x, &y).unwrap();
    common::assert_model_gradients(&mut model, rows, &before, H, 3, "mixed", |m| {
        m.set_learning_rate(Some(0.0)).unwrap();
        m.take_metrics().unwrap();
        m.train_batch(&x, &y).unwrap();
        m.take_metrics().unwrap().loss as f64
    });
}

/// One training step on the GPU and the CPU reference, every tensor compared with the
/// calibrated cross-check (default tolerance, see `steadygrad::check`), at a batch that
/// is not a multiple of any workgroup size; also with the lower two layers frozen.
#[test]
fn mixed_net_gpu_matches_cpu() {
    for (spec, rows) in [(mixed(), 33), (mixed().freeze(2), 7)] {
        let x = random(rows * spec.input, 3);
        let y: Vec<f32> = (0..rows).map(|i| (i % spec.output) as f32).collect();
        let r = cross_check(&spec, &x, &y, gpu(), Tolerance::default()).unwrap();
        assert!(r.passed(), "frozen {}:\n{}", spec.frozen_layers, r.table());
    }
}

/// A checkpoint of a mixed net carries its per-layer settings: the model it describes
/// predicts exactly what the saved one did, and a uniform net reads the same weights
/// differently (the comparison can fail).
#[test]
fn mixed_net_checkpoints_round_trip() {
    let tmp = TempDir::new("per-layer-ckpt");
    let path = tmp.path().join("m.safetensors");
    let spec = mixed();
    let data = steadygrad::data::synthetic::spirals(30, 3, 0.05, 2);
    let data = steadygrad::Dataset::classification(
        data.features
            .chunks(2)
            .flat_map(|p| [p[0], p[1], p[0] * p[1], p[0] - p[1], 0.5])
            .collect(),
        &data.targets.iter().map(|&t| t as usize).collect::<Vec<_>>(),
        5,
        3,
    )
    .unwrap();
    let mut m = Model::new(spec.clone(), Box::new(GpuEngine::new(gpu()))).unwrap();
    let opts = steadygrad::FitOptions {
        epochs: 2,
        batch_size: 16,
        ..Default::default()
    };
    m.fit(&data, None, &opts, |_| {}).unwrap();
    let state = TrainingState {
        config: Some(Config::from_spec(&spec, 2, 16)),
        epoch: m.epoch(),
        ..TrainingState::default()
    };
    save_checkpoint(&mut m, &path, &state).unwrap();
    let x = random(9 * 5, 4);
    let want = m.predict(&x).unwrap();

    let ckpt = load_checkpoint(&path).unwrap();
    let back = ckpt.state.config.as_ref().unwrap().to_spec().unwrap();
    for l in 0..spec.hidden.len() {
        assert_eq!(back.activation_of(l), spec.activation_of(l), "layer {l}");
        assert_eq!(back.batch_norm_of(l), spec.batch_norm_of(l), "layer {l}");
        assert_eq!(back.init_of_layer(l), spec.init_of_layer(l), "layer {l}");
        assert_eq!(back.dropout_p(l), spec.dropout_p(l), "layer {l}");
        assert_eq!(back.skip_source(l), spec.skip_source(l), "layer {l}");
    }
    let mut again = Model::new(back, Box::new(CpuEngine::new())).unwrap();
    ckpt.restore(&mut again).unwrap();
    let got = again.predict(&x).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5, "restored {g} vs saved {w}");
    }

    // The same tensors under a uniform tanh net (no batch norm on layer 1's output, no
    // PReLU) do not load or do not predict the same.
    let uniform = MlpSpec::new(5, &[8, 7, 9, 6], 3)
        .activation(Activation::Tanh)
        .batch_norm(BatchNorm::default())
        .residual(2);
    let mut other = Model::new(uniform, Box::new(CpuEngine::new())).unwrap();
    if other.load_state_dict(&ckpt.tensors).is_ok() {
        let o = other.predict(&x).unwrap();
        assert!(o.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

/// The TOML config takes a list of layer tables (widths may replace `hidden`), and the
/// CLI trains from it; a bad table is named.
#[test]
fn toml_layer_tables_build_and_train_a_mixed_net() {
    let tmp = TempDir::new("per-layer-toml");
    let d = tmp.path();
    let toml = r#"
[model]
input = 2
output = 3
activation = "relu"
[model.batch_norm]
placement = "before"
[[model.layers]]
width = 16
activation = "tanh"
batch_norm = "none"
[[model.layers]]
width = 12
activation = "elu"
init = "he-normal"
dropout = 0.1
[[model.layers]]
width = 8
batch_norm = "after"
skip_from = "input"

[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.0
nesterov = false
weight_decay = 0.0

[training]
epochs = 2
batch_size = 16
"#;
    std::fs::write(d.join("mixed.toml"), toml).unwrap();
    let spec = Config::load(&d.join("mixed.toml"))
        .unwrap()
        .to_spec()
        .unwrap();
    assert_eq!(spec.hidden, vec![16, 12, 8]);
    assert_eq!(spec.activation_of(0), Activation::Tanh);
    assert_eq!(spec.activation_of(1), Activation::ELU);
    assert_eq!(spec.activation_of(2), Activation::Relu);
    assert_eq!(spec.batch_norm_of(0), None);
    assert_eq!(
        spec.batch_norm_of(1).map(|b| b.placement),
        Some(BnPlacement::BeforeActivation)
    );
    assert_eq!(
        spec.batch_norm_of(2).map(|b| b.placement),
        Some(BnPlacement::AfterActivation)
    );
    assert_eq!(spec.init_of_layer(1), Init::HeNormal);
    assert_eq!(spec.dropout_p(1), Some(0.1));
    assert_eq!(spec.dropout_p(0), None);
    assert_eq!((spec.skip_source(1), spec.skip_source(2)), (None, Some(0)));

    let (ok, out, err) = run_cli(
        &[
            "--backend",
            "cpu",
            "train",
            "--config",
            "mixed.toml",
            "--points",
            "60",
        ],
        d,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("(tanh, elu:1, relu)"), "{out}");

    for (bad, want) in [
        ("batch_norm = \"none\"", "batch_norm = \"sideways\""),
        ("activation = \"elu\"", "activation = \"elephant\""),
        ("skip_from = \"input\"", "skip_from = \"above\""),
    ] {
        std::fs::write(d.join("bad.toml"), toml.replace(bad, want)).unwrap();
        let e = format!("{:#}", Config::load(&d.join("bad.toml")).unwrap_err());
        assert!(e.contains("[[model.layers]] entry"), "{e}");
    }
    std::fs::write(d.join("nowidth.toml"), toml.replace("width = 12\n", "")).unwrap();
    let e = format!("{:#}", Config::load(&d.join("nowidth.toml")).unwrap_err());
    assert!(e.contains("entry 1 has no width"), "{e}");
}
