//! Training-mode gradients and optimizer steps checked against PyTorch itself: the
//! fixture (tests/fixtures/make_pytorch_gradients.py, made with torch) holds a net's
//! initial weights, three batches, the gradients of the first step after clipping, the
//! total norms before clipping, the losses and the weights after three steps of SGD with
//! momentum and weight decay, clip_grad_norm_ between backward and step. The net is
//! mixed per layer (tanh, ELU, ReLU; batch norm before the activation, in training mode,
//! on the first two layers only), with a residual connection through a projection and
//! no dropout; its per-layer settings come from the file's `steadygrad.config`. Both
//! backends start from the same weights and must land where PyTorch did.

mod common;

use steadygrad::checkpoint;
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::NamedTensor;
use steadygrad::{Clip, Engine, MlpSpec, Model, Optimizer};

const STEPS: usize = 3;

/// Within `atol + rtol·max|torch|` over the tensor. PyTorch and both backends compute in
/// f32 in other summation orders over at most 16 rows or 6 features, so single steps agree
/// to about 1e-6 relative; three steps of momentum SGD with a clipping coefficient
/// carry that through, and 1e-4 of the tensor's scale leaves room for the growth while
/// any wrong term (a missing weight decay, clipping after the update, batch statistics
/// with the unbiased variance) moves values by 1e-3 of their scale or more.
fn assert_close(what: &str, ours: &[f32], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len(), "{what}: length");
    let scale = torch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(torch)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-6 + 1e-4 * scale,
        "{what}: max |ours − torch| = {err:e} (torch's scale {scale:e})"
    );
}

#[test]
fn training_steps_match_pytorch_on_both_backends() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch_train.safetensors");
    let (config, all, _) = checkpoint::load_with_config(&path).unwrap();
    let with = |prefix: &str| -> Vec<NamedTensor> {
        all.iter()
            .filter_map(|t| {
                t.name.strip_prefix(prefix).map(|n| NamedTensor {
                    name: n.to_string(),
                    ..t.clone()
                })
            })
            .collect()
    };
    let get = |name: &str| all.iter().find(|t| t.name == name).unwrap().values.clone();
    let spec = config
        .to_spec(MlpSpec::new(1, &[], 2))
        .unwrap()
        .optimizer(Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-2,
        })
        .clip(Clip::Norm(0.5));
    assert_eq!(
        (spec.activation_of(0), spec.activation_of(2)),
        (steadygrad::Activation::Tanh, steadygrad::Activation::Relu)
    );
    assert!(spec.batch_norm_of(0).is_some() && spec.batch_norm_of(2).is_none());
    let init = with("init.");
    let grads0 = with("grad0.");
    let after = with("after.");
    assert!(!init.is_empty() && !grads0.is_empty() && after.len() == init.len());

    for engine in [
        Box::new(CpuEngine::new()) as Box<dyn Engine>,
        Box::new(GpuEngine::new(common::gpu())),
    ] {
        let gpu = engine.is_gpu();
        let mut m = Model::new(spec.clone(), engine).unwrap();
        m.load_state_dict(&init).unwrap();
        for step in 0..STEPS {
            let (x, y) = (get(&format!("x.{step}")), get(&format!("y.{step}")));
            let rows = y.len();
            m.take_metrics().unwrap();
            m.train_batch(&x, &y).unwrap();
            let loss = m.take_metrics().unwrap().loss;
            let at =
                |what: &str| format!("{} step {step}: {what}", if gpu { "GPU" } else { "CPU" });
            assert_close(&at("loss"), &[loss], &get(&format!("loss.{step}")));
            let norm = m
                .last_grad_norm()
                .unwrap()
                .expect("clipping by norm reports it");
            assert_close(
                &at("norm before clipping"),
                &[norm],
                &get(&format!("norm.{step}")),
            );
            if step == 0 {
                for (param, grad) in m.gradient_names(rows).unwrap() {
                    let torch = grads0
                        .iter()
                        .find(|t| t.name == param)
                        .unwrap_or_else(|| panic!("the fixture has no gradient for {param}"));
                    let ours = m.read_tensor(rows, &grad).unwrap();
                    assert_close(
                        &at(&format!("{param} gradient, clipped")),
                        &ours,
                        &torch.values,
                    );
                }
            }
        }
        let ours = m.state_dict().unwrap();
        for t in &after {
            let o = ours
                .iter()
                .find(|o| o.name == t.name)
                .unwrap_or_else(|| panic!("the model has no {}", t.name));
            let what = format!(
                "{} after {STEPS} steps: {}",
                if gpu { "GPU" } else { "CPU" },
                t.name
            );
            assert_close(&what, &o.values, &t.values);
        }
        // The comparison can fail: the weights moved, by more than the tolerance.
        let w = |v: &[NamedTensor]| {
            v.iter()
                .find(|t| t.name == "layers.0.linear.weight")
                .unwrap()
                .values
                .clone()
        };
        let moved = w(&init)
            .iter()
            .zip(&w(&after))
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-3, "three steps moved layer 0 by only {moved:e}");
    }
}
