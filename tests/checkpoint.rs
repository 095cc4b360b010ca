//! safetensors checkpoints: round trips, atomic writes, and validated loads.

mod common;

use common::TempDir;

use std::collections::BTreeMap;
use steadygrad::checkpoint;
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{BatchNorm, MlpSpec, Model, NamedTensor, Optimizer};

#[test]
fn save_load_round_trip_is_exact() {
    let tmp = TempDir::new("roundtrip");
    let dir = tmp.path();
    let path = dir.join("m.safetensors");
    let spec = MlpSpec::new(3, &[5, 4], 2)
        .batch_norm(BatchNorm::default())
        .seed(3);
    let mut a = Model::new(spec.clone(), Box::new(GpuEngine::new(common::gpu()))).unwrap();
    a.train_batch(&common::random(12, 1), &[0.0, 1.0, 1.0, 0.0])
        .unwrap();
    let state = a.state_dict().unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("note".to_string(), "hello".to_string());
    checkpoint::save(&path, &state, &meta).unwrap();
    let (loaded, meta2) = checkpoint::load(&path).unwrap();
    assert_eq!(meta2.get("note").map(String::as_str), Some("hello"));
    let by_name = |v: &[NamedTensor]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert_eq!(by_name(&loaded), by_name(&state), "bit-exact round trip");
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let mut b = Model::new(spec.clone().seed(99), Box::new(CpuEngine::new())).unwrap();
    b.load_state_dict(&loaded).unwrap();
    // save_model carries the architecture; it rebuilds the same spec.
    let path2 = dir.join("with_config.safetensors");
    checkpoint::save_model(&mut a, &path2, &BTreeMap::new()).unwrap();
    let (config, _, _) = checkpoint::load_with_config(&path2).unwrap();
    assert_eq!(config.to_spec(spec.clone()).unwrap(), spec);
    std::fs::remove_file(&path2).unwrap();
    assert_eq!(b.state_dict().unwrap(), state);
    let x = common::random(6, 2);
    let (pa, pb) = (a.predict(&x).unwrap(), b.predict(&x).unwrap());
    let t = steadygrad::check::compare("predict", &pa, &pb, steadygrad::Tolerance::default());
    assert!(t.pass, "{t:?}");
}

#[test]
fn mismatches_are_all_named() {
    let mut m = Model::new(
        MlpSpec::new(3, &[5], 2).optimizer(Optimizer::sgd(0.1)),
        Box::new(CpuEngine::new()),
    )
    .unwrap();
    let before = m.state_dict().unwrap();
    let mut bad: Vec<NamedTensor> = before.clone();
    bad.retain(|t| t.name != "layers.1.linear.bias");
    bad[0].shape = vec![3, 5];
    bad.push(NamedTensor {
        name: "layers.7.linear.weight".into(),
        shape: vec![1],
        values: vec![0.0],
    });
    let e = format!("{:#}", m.load_state_dict(&bad).unwrap_err());
    assert!(e.contains("missing 'layers.1.linear.bias'"), "{e}");
    assert!(
        e.contains("'layers.0.linear.weight' has shape [3, 5], the model needs [5, 3]"),
        "{e}"
    );
    assert!(e.contains("unexpected 'layers.7.linear.weight'"), "{e}");
    assert_eq!(
        m.state_dict().unwrap(),
        before,
        "nothing loaded on a mismatch"
    );
}

#[test]
fn corrupt_files_are_errors() {
    let tmp = TempDir::new("corrupt");
    let dir = tmp.path();
    let path = dir.join("bad.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let e = format!("{:#}", checkpoint::load(&path).unwrap_err());
    assert!(
        e.contains("bad.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        checkpoint::load(&dir.join("missing.safetensors")).unwrap_err()
    );
    assert!(e.contains("missing.safetensors"), "{e}");
    // A truncated but otherwise valid file.
    let m = NamedTensor {
        name: "x".into(),
        shape: vec![4],
        values: vec![1.0; 4],
    };
    checkpoint::save(&path, &[m], &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(checkpoint::load(&path).is_err());
}

/// A checkpoint written by PyTorch (tests/fixtures/make_pytorch_checkpoint.py: tanh,
/// batch norm before the activation with trained running statistics, a residual
/// projection) reproduces PyTorch's eval-mode outputs on both backends.
/// Tolerance 1e-5 absolute: outputs are O(0.1–1) and the two implementations differ only
/// in f32 summation order over at most 6 terms per dot product.
#[test]
fn pytorch_checkpoint_reproduces_pytorch_outputs() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (state, meta) = checkpoint::load(&fixtures.join("pytorch_mlp.safetensors")).unwrap();
    assert!(meta.contains_key("steadygrad.config"));
    let (io, _) = checkpoint::load(&fixtures.join("pytorch_io.safetensors")).unwrap();
    let get = |n: &str| io.iter().find(|t| t.name == n).unwrap().values.clone();
    let (x, expect) = (get("test.input"), get("test.output"));
    // The architecture comes from the file's own metadata.
    let (config, _, _) =
        checkpoint::load_with_config(&fixtures.join("pytorch_mlp.safetensors")).unwrap();
    let spec = config.to_spec(MlpSpec::new(1, &[], 2)).unwrap();
    assert_eq!(
        spec,
        MlpSpec::new(4, &[6, 6, 5], 3)
            .activation(steadygrad::Activation::Tanh)
            .batch_norm(BatchNorm::default())
            .residual(2)
    );
    for engine in [
        Box::new(CpuEngine::new()) as Box<dyn steadygrad::Engine>,
        Box::new(GpuEngine::new(common::gpu())),
    ] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        m.load_state_dict(&state).unwrap();
        let out = m.predict(&x).unwrap();
        for (o, e) in out.iter().zip(&expect) {
            assert!((o - e).abs() <= 1e-5, "steadygrad {o} vs PyTorch {e}");
        }
    }
}

/// `--resume`: training 2 epochs, saving, and continuing for 2 more in a new process
/// (a new model) gives exactly the parameters of 4 uninterrupted epochs: optimizer
/// state, step counter (dropout masks), epoch (shuffle, schedule) all come back.
#[test]
fn resume_continues_exactly() {
    use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
    use steadygrad::{LrSchedule, Optimizer as O};
    let tmp = TempDir::new("resume");
    let dir = tmp.path();
    let path = dir.join("ckpt.safetensors");
    let data = steadygrad::data::synthetic::spirals(20, 3, 0.05, 1);
    let spec = MlpSpec::new(2, &[12, 12], 3)
        .batch_norm(BatchNorm::default())
        .dropout(0.2)
        .optimizer(O::adam(1e-2))
        .schedule(LrSchedule::Step {
            step_size: 1,
            gamma: 0.5,
        })
        .warmup_steps(5)
        .seed(2);
    let opts = |epochs| steadygrad::FitOptions {
        epochs,
        batch_size: 16,
        shuffle_seed: 7,
        drop_last: false,
    };
    let new_model = || Model::new(spec.clone(), Box::new(GpuEngine::new(common::gpu()))).unwrap();
    let mut straight = new_model();
    straight.fit(&data, None, &opts(4), |_| {}).unwrap();

    let mut first = new_model();
    first.fit(&data, None, &opts(2), |_| {}).unwrap();
    save_checkpoint(&mut first, &path, &TrainingState::default()).unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.state.epoch, 2);
    let mut resumed = new_model();
    ckpt.restore(&mut resumed).unwrap();
    resumed.fit(&data, None, &opts(2), |_| {}).unwrap();
    assert_eq!(resumed.epoch(), 4);
    assert_eq!(
        resumed.state_dict().unwrap(),
        straight.state_dict().unwrap()
    );
    assert_eq!(
        resumed.optimizer_state().unwrap(),
        straight.optimizer_state().unwrap()
    );
}
