//! The non-finite stop: the step, layer and tensor where NaN or ±inf first appeared,
//! found within the guard's lag, named in the error, with the last checkpoint intact.

mod common;

use common::health::{batch, cpu, gpu, spirals};
use steadygrad::health::NonFiniteError;
use steadygrad::{checkpoint, data, Activation, FitOptions, Init, MlpSpec, Model, Optimizer};

/// The first step at which any guarded tensor was non-finite, and the tensors that were,
/// in execution order (each layer's forward outputs, the loss, then the gradients in
/// backward order), found by reading every tensor after every step.
fn first_nonfinite_by_hand(spec: &MlpSpec, d: &data::Dataset, rows: usize) -> (u64, Vec<String>) {
    let mut m = Model::new(spec.clone(), cpu()).unwrap();
    let layers = spec.num_layers();
    let forward = (0..layers).flat_map(|l| {
        // The guard watches an activation's output only where it could overflow by itself.
        let watched = l + 1 < layers && !spec.activation.keeps_finite();
        std::iter::once(format!("layers.{l}.z")).chain(watched.then(|| format!("layers.{l}.h")))
    });
    let names: Vec<String> = forward
        .chain(std::iter::once("loss.rows".to_string()))
        .chain(m.gradient_names(rows).unwrap().into_iter().map(|(_, g)| g))
        .collect();
    for step in 1..=50u64 {
        let (x, y) = batch(d, rows, rows * step as usize);
        m.train_batch(&x, &y)
            .or_else(|e| e.downcast::<NonFiniteError>().map(|_| ()))
            .unwrap();
        let bad: Vec<String> = names
            .iter()
            .filter(|n| {
                m.read_tensor(rows, n)
                    .unwrap()
                    .iter()
                    .any(|v| !v.is_finite())
            })
            .cloned()
            .collect();
        if !bad.is_empty() {
            return (step, bad);
        }
    }
    panic!("the test model never produced a non-finite value");
}

/// The stop names the step, the layer and the tensor where non-finite values first
/// appeared, exactly as reading every tensor after every step finds them.
#[test]
fn nonfinite_stop_names_step_layer_and_tensor() {
    let d = spirals(40);
    let rows = 8;
    // Two ways to blow up: through the loss (huge logits) and through a gradient first.
    let specs = [
        MlpSpec::new(2, &[16; 6], 3)
            .activation(Activation::Relu)
            .optimizer(Optimizer::sgd(30.0))
            .seed(9),
        MlpSpec::new(2, &[16; 6], 3)
            .activation(Activation::Relu)
            .optimizer(Optimizer::sgd(100.0))
            .seed(1),
    ];
    let mut origins = Vec::new();
    for spec in specs {
        let (step, bad) = first_nonfinite_by_hand(&spec, &d, rows);
        for engine in [cpu(), gpu()] {
            let is_gpu = engine.is_gpu();
            let mut m = Model::new(spec.clone(), engine).unwrap();
            let mut err = None;
            for s in 1..=step {
                let (x, y) = batch(&d, rows, rows * s as usize);
                if let Err(e) = m.train_batch(&x, &y).and_then(|_| m.check_finite()) {
                    err = Some(e);
                    break;
                }
            }
            let e = err.unwrap_or_else(|| panic!("no stop by step {step} (gpu: {is_gpu})"));
            let nf = e
                .downcast_ref::<NonFiniteError>()
                .expect("a NonFiniteError");
            if is_gpu {
                // The GPU rounds differently; it must still stop near the same step and
                // name a tensor that really was non-finite first on its side.
                assert!(nf.step.abs_diff(step) <= 2, "{nf}");
                continue;
            }
            assert_eq!(nf.step, step, "{nf}");
            assert_eq!(nf.tensor, bad[0], "{nf}");
            assert_eq!(nf.also, bad[1..], "{nf}");
            let layer = bad[0]
                .strip_prefix("layers.")
                .and_then(|r| r.split('.').next())
                .map(|l| l.parse::<usize>().unwrap());
            assert_eq!(nf.layer, layer);
            let text = e.to_string();
            assert!(text.contains(&format!("step {step}")), "{text}");
            assert!(text.contains(&format!("'{}'", bad[0])), "{text}");
            origins.push(bad[0].clone());
            // Reported once: the flags are cleared.
            m.check_finite().unwrap();
        }
    }
    // Large learning rates blow up the weights in one update; the next forward pass is
    // where that first shows, which the guard now sees (it watched only the loss and the
    // gradients before, and named a gradient further on).
    assert!(
        origins
            .iter()
            .all(|o| o.ends_with(".z") || o.ends_with(".h")),
        "{origins:?}"
    );
}

/// Huge weights in one layer only overflow that layer's linear output in the first
/// forward pass: the stop names that layer and op, not a gradient further on, and shows
/// that its input was modest (the weights, not the values coming in, overflowed).
#[test]
fn forward_overflow_is_named_at_its_layer() {
    let d = spirals(40);
    let rows = 8;
    let spec = MlpSpec::new(2, &[16; 6], 3)
        .activation(Activation::Tanh)
        .init(Init::GlorotUniform)
        .seed(3);
    for engine in [cpu(), gpu()] {
        let is_gpu = engine.is_gpu();
        let mut m = Model::new(spec.clone(), engine).unwrap();
        // With every weight and the bias at f32::MAX, any positive input sum overflows.
        m.set_parameter("layers.4.linear.weight", &vec![f32::MAX; 16 * 16])
            .unwrap();
        m.set_parameter("layers.4.linear.bias", &[f32::MAX; 16])
            .unwrap();
        let (x, y) = batch(&d, rows, 0);
        let e = m
            .train_batch(&x, &y)
            .and_then(|_| m.check_finite())
            .unwrap_err();
        let nf = e
            .downcast_ref::<NonFiniteError>()
            .expect("a NonFiniteError");
        assert_eq!(nf.step, 1, "gpu {is_gpu}: {nf}");
        assert_eq!(nf.layer, Some(4), "gpu {is_gpu}: {nf}");
        assert_eq!(nf.tensor, "layers.4.z", "gpu {is_gpu}: {nf}");
        assert!(
            nf.op.contains("linear output, before the activation"),
            "{nf}"
        );
        let peak = nf.input_peak.as_ref().expect("the input's peak");
        // tanh cannot overflow, so the guard watches its input, layer 3's pre-activation:
        // a modest value, so the weights of layer 4 overflowed, not the values coming in.
        assert_eq!(peak.tensor, "layers.3.z");
        assert!(peak.magnitude > 0.0 && peak.magnitude < 100.0, "{nf}");
        assert!(e.to_string().contains("layers.4 linear output"), "{e}");
    }
}

/// With statistics off, `fit` stops within `GUARD_LAG` steps of the first non-finite step,
/// in the middle of the epoch (the flags are read back asynchronously after every step).
#[test]
fn nonfinite_stop_comes_within_the_guard_lag() {
    let spec = MlpSpec::new(2, &[16; 6], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(300.0))
        .seed(2);
    let data = spirals(200);
    let opts = FitOptions {
        epochs: 1,
        batch_size: 8,
        shuffle_seed: 1,
        drop_last: false,
    };
    let steps_per_epoch = data.rows.div_ceil(opts.batch_size) as u64;
    for engine in [cpu(), gpu()] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let e = m.fit(&data, None, &opts, |_| {}).unwrap_err();
        let nf = e
            .downcast_ref::<NonFiniteError>()
            .expect("a NonFiniteError");
        let lag = steadygrad::model::health::layout::GUARD_LAG as u64;
        assert!(nf.stopped_after >= nf.step, "{nf}");
        assert!(nf.stopped_after - nf.step <= lag, "{nf}");
        assert!(
            nf.stopped_after < steps_per_epoch,
            "stopped at the epoch's end: {nf}"
        );
    }
}

/// `fit` stops at the end of the epoch the first non-finite step fell in, before the
/// epoch's hook runs: a checkpoint saved earlier is left byte for byte as it was.
#[test]
fn nonfinite_stop_leaves_the_last_checkpoint_intact() {
    let tmp = common::TempDir::new("health");
    let dir = tmp.path();
    let path = dir.join("last-good.safetensors");
    let spec = MlpSpec::new(2, &[16; 6], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(300.0))
        .seed(2);
    for engine in [cpu(), gpu()] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let state = checkpoint::TrainingState {
            config: None,
            epoch: 0,
            standardizer: None,
            plateau: None,
        };
        checkpoint::save_checkpoint(&mut m, &path, &state).unwrap();
        let before = std::fs::read(&path).unwrap();
        let opts = FitOptions {
            epochs: 3,
            batch_size: 8,
            shuffle_seed: 1,
            drop_last: false,
        };
        let mut hooks = 0;
        let e = m
            .fit_with_hook(&spirals(40), None, &opts, |m, _| {
                hooks += 1;
                checkpoint::save_checkpoint(m, &path, &state)
            })
            .unwrap_err();
        let nf = e
            .downcast_ref::<NonFiniteError>()
            .expect("a NonFiniteError");
        assert_eq!(nf.epoch, Some(1), "{nf}");
        assert!(nf.step <= 15, "{nf}");
        assert_eq!(hooks, 0);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}

/// The guard checks what a step computes from the weights before its update, so the
/// update of an epoch's last step is checked after the epoch: weights it made non-finite,
/// or whose validation outputs overflow, stop `fit` before the epoch's hook (and its
/// checkpoint), naming the parameter or the validation loss.
#[test]
fn an_epochs_last_update_is_checked_before_its_checkpoint() {
    let opts = FitOptions {
        epochs: 3,
        batch_size: 64,
        shuffle_seed: 1,
        drop_last: false,
    };
    let expect_stop = |m: &mut Model, d: &data::Dataset, valid: bool| {
        let mut hooks = 0;
        let e = m
            .fit_with_hook(d, valid.then_some(d), &opts, |_, _| {
                hooks += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(hooks, 0, "{e:#}");
        e.downcast_ref::<NonFiniteError>()
            .unwrap_or_else(|| panic!("not a non-finite stop: {e:#}"))
            .clone()
    };
    for gpu_engine in [false, true] {
        let engine = || if gpu_engine { gpu() } else { cpu() };
        // One step per epoch whose forward pass is finite; its update makes the weights
        // about 1e29, finite, but their products overflow on the validation rows.
        let spec = MlpSpec::new(2, &[64; 4], 3)
            .activation(Activation::Relu)
            .optimizer(Optimizer::sgd(1e30))
            .seed(3);
        let nf = expect_stop(&mut Model::new(spec, engine()).unwrap(), &spirals(10), true);
        assert!(
            nf.after_epoch && nf.step == 1 && nf.epoch == Some(1),
            "{nf}"
        );
        assert_eq!(nf.tensor, "validation loss", "{nf}");
        let shown = nf.to_string();
        assert!(
            shown.contains("before the epoch's report and checkpoint"),
            "{shown}"
        );

        // Regression with targets of 1e6: gradients of about 1e6 times a learning rate of
        // 1e38 overflow the weights themselves; no validation set needed.
        let rows = 16;
        let x: Vec<f32> = (0..rows * 2).map(|i| (i % 7) as f32 / 7.0).collect();
        let d = data::Dataset::regression(x, vec![1e6; rows], 2, 1).unwrap();
        let spec = MlpSpec::new(2, &[8], 1)
            .loss(steadygrad::Loss::MeanSquaredError)
            .optimizer(Optimizer::sgd(1e38))
            .seed(3);
        let nf = expect_stop(&mut Model::new(spec, engine()).unwrap(), &d, false);
        assert!(nf.after_epoch && nf.step == 1, "{nf}");
        assert!(
            nf.tensor.starts_with("layers.") && nf.layer.is_some() && nf.op.contains("update"),
            "{nf}"
        );
    }
}
