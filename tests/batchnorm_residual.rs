//! Batch normalization and residual connections: each op against finite differences on
//! the CPU and against the CPU on the GPU, and whole models with both.
//!
//! Tolerances: GPU vs CPU uses the default cross-check bound `1e-6 + 1e-4·max|cpu|`
//! (f32 reductions in another order; see `steadygrad::Tolerance`). Finite differences use
//! a step of 2e-3, smaller than elsewhere because batch norm over a handful of rows has
//! large third derivatives (at 1e-2 the O(h²) truncation reached 12%); rounding of the f32
//! loss then contributes about 1e-7/h ≈ 5e-5. Bound: `2e-3 + 2e-2·|g|`.

mod common;

use common::fd::{central_h, close};
use common::{assert_close, gpu, random, OpCase, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::{GpuEngine, MatmulVariant};
use steadygrad::ops::*;
use steadygrad::ops::{Activation, Loss, Op};
use steadygrad::{cross_check, BatchNorm, BnPlacement, MlpSpec, Model, Optimizer, Tolerance};

const H: f32 = 2e-3;

/// Shapes with awkward row and column counts, including a single feature over many rows
/// and many features over three rows. Feature counts that divide by 4 take the `vec4`
/// kernels.
const BN_SHAPES: [(usize, usize); 12] = [
    (2, 1),
    (7, 33),
    (33, 7),
    (257, 33),
    (1000, 1),
    (3, 1000),
    (257, 1),
    (2, 257),
    (2, 4),
    (7, 36),
    (257, 260),
    (2000, 8),
];

fn bn_train_case(rows: usize, cols: usize, momentum: f32) -> OpCase {
    OpCase::new(&[
        ("x", rows * cols),
        ("y", rows * cols),
        ("gamma", cols),
        ("beta", cols),
        ("mean", cols),
        ("invstd", cols),
        ("rm", cols),
        ("rv", cols),
    ])
    .op(Op::BatchNormTrain(BatchNormTrain {
        x: 0,
        y: 1,
        gamma: 2,
        beta: 3,
        mean: 4,
        invstd: 5,
        running_mean: 6,
        running_var: 7,
        rows,
        cols,
        momentum,
        eps: 1e-5,
    }))
}

#[test]
fn batch_norm_train_eval_backward_gpu_vs_cpu() {
    for (rows, cols) in BN_SHAPES {
        // An offset and a scale per feature make the statistics non-trivial.
        // Per-feature offsets make the mean non-trivial; they stay small next to the spread
        // because f32 normalization of x ≈ 1000 ± 1 loses digits to cancellation on any
        // implementation, which would test f32 rather than the kernel.
        let x: Vec<f32> = random(rows * cols, 1)
            .iter()
            .enumerate()
            .map(|(i, v)| 3.0 * v + (i % cols % 7) as f32)
            .collect();
        let (gamma, beta) = (random(cols, 2), random(cols, 3));
        let (rm, rv): (Vec<f32>, Vec<f32>) = (
            random(cols, 4),
            random(cols, 5).iter().map(|v| v.abs() + 0.5).collect(),
        );
        let inputs = [
            ("x", x.clone()),
            ("gamma", gamma.clone()),
            ("beta", beta.clone()),
            ("rm", rm.clone()),
            ("rv", rv.clone()),
        ];
        // Texture: the CPU-adapter (loop per feature) kernels; Tiled: the GPU (workgroup
        // tree) kernels.
        for variant in [MatmulVariant::Texture, MatmulVariant::Tiled] {
            let out = bn_train_case(rows, cols, 0.1).both_with(variant, &inputs, 0.0);
            assert_close(&out, &format!("{variant}: bn train {rows}x{cols}"));
            let (mean, invstd) = (out[4].2.clone(), out[5].2.clone());

            let eval = OpCase::new(&[
                ("x", rows * cols),
                ("y", rows * cols),
                ("gamma", cols),
                ("beta", cols),
                ("rm", cols),
                ("rv", cols),
            ])
            .op(Op::BatchNormEval(BatchNormEval {
                x: 0,
                y: 1,
                gamma: 2,
                beta: 3,
                running_mean: 4,
                running_var: 5,
                rows,
                cols,
                eps: 1e-5,
            }));
            let inputs = [
                ("x", x.clone()),
                ("gamma", gamma.clone()),
                ("beta", beta.clone()),
                ("rm", rm.clone()),
                ("rv", rv.clone()),
            ];
            assert_close(
                &eval.both_with(variant, &inputs, 0.0),
                &format!("{variant}: bn eval {rows}x{cols}"),
            );

            let back = OpCase::new(&[
                ("x", rows * cols),
                ("dy", rows * cols),
                ("gamma", cols),
                ("mean", cols),
                ("invstd", cols),
                ("dx", rows * cols),
                ("dgamma", cols),
                ("dbeta", cols),
            ])
            .op(Op::BatchNormBackward(BatchNormBackward {
                x: 0,
                dy: 1,
                gamma: 2,
                mean: 3,
                invstd: 4,
                dx: 5,
                dgamma: 6,
                dbeta: 7,
                rows,
                cols,
            }));
            let inputs = [
                ("x", x.clone()),
                ("dy", random(rows * cols, 6)),
                ("gamma", gamma.clone()),
                ("mean", mean),
                ("invstd", invstd),
            ];
            assert_close(
                &back.both_with(variant, &inputs, 0.0),
                &format!("{variant}: bn backward {rows}x{cols}"),
            );
        }
    }
}

/// The statistics are PyTorch's: biased variance to normalize, unbiased variance and
/// momentum for the running estimates. Checked against direct formulas.
#[test]
fn batch_norm_statistics_match_pytorch_definitions() {
    let (rows, cols) = (5, 2);
    let x = vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0, 5.0, 50.0];
    let inputs = [
        ("x", x),
        ("gamma", vec![1.0; 2]),
        ("beta", vec![0.0; 2]),
        ("rm", vec![0.0; 2]),
        ("rv", vec![1.0; 2]),
    ];
    for (name, g, c) in bn_train_case(rows, cols, 0.1).both(&inputs, 0.0) {
        let expect: &[f32] = match name.as_str() {
            // mean (3, 30); biased var (2, 200); unbiased var (2.5, 250).
            "mean" => &[3.0, 30.0],
            "invstd" => &[1.0 / (2.0f32 + 1e-5).sqrt(), 1.0 / (200.0f32 + 1e-5).sqrt()],
            "rm" => &[0.3, 3.0],
            "rv" => &[0.9 + 0.25, 0.9 + 25.0],
            _ => continue,
        };
        for (v, e) in g.iter().chain(&c).zip(expect.iter().cycle()) {
            assert!(
                (v - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{name}: {v} vs {e}"
            );
        }
    }
}

#[test]
fn batch_norm_backward_finite_differences() {
    let (rows, cols) = (6, 3);
    let x: Vec<f32> = random(rows * cols, 7).iter().map(|v| 2.0 * v).collect();
    let (gamma, beta, r) = (random(cols, 8), random(cols, 9), random(rows * cols, 10));
    let objective = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
        let mut y = vec![0.0; rows * cols];
        let (mut m, mut is, mut rm, mut rv) = (
            vec![0.0; cols],
            vec![0.0; cols],
            vec![0.0; cols],
            vec![1.0; cols],
        );
        steadygrad::ops::batch_norm::cpu::batch_norm_train(
            x, &mut y, gamma, beta, &mut m, &mut is, &mut rm, &mut rv, rows, cols, 0.1, 1e-5,
        );
        y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut y = vec![0.0; rows * cols];
    let (mut m, mut is, mut rm, mut rv) = (
        vec![0.0; cols],
        vec![0.0; cols],
        vec![0.0; cols],
        vec![1.0; cols],
    );
    steadygrad::ops::batch_norm::cpu::batch_norm_train(
        &x, &mut y, &gamma, &beta, &mut m, &mut is, &mut rm, &mut rv, rows, cols, 0.1, 1e-5,
    );
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
    steadygrad::ops::batch_norm::cpu::batch_norm_backward(
        &x, &r, &gamma, &m, &is, &mut dx, &mut dg, &mut db, rows, cols,
    );
    for (i, &a) in dx.iter().enumerate() {
        let fd = central_h(&x, i, H, |p| objective(p, &gamma, &beta));
        assert!(close(fd, a), "dx[{i}]: fd {fd} vs {a}");
    }
    for i in 0..cols {
        let fd = central_h(&gamma, i, H, |p| objective(&x, p, &beta));
        assert!(close(fd, dg[i]), "dgamma[{i}]: fd {fd} vs {}", dg[i]);
        let fd = central_h(&beta, i, H, |p| objective(&x, &gamma, p));
        assert!(close(fd, db[i]), "dbeta[{i}]: fd {fd} vs {}", db[i]);
    }
}

#[test]
fn add_and_accumulate_gpu_vs_cpu() {
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES) {
        let add = OpCase::new(&[("a", len), ("b", len), ("out", len)]).op(Op::Add(Add {
            a: 0,
            b: 1,
            out: 2,
            len,
        }));
        assert_close(
            &add.both(&[("a", random(len, 1)), ("b", random(len, 2))], 0.0),
            "add",
        );
        let acc = OpCase::new(&[("x", len), ("y", len)]).op(Op::Accumulate(Accumulate {
            x: 0,
            y: 1,
            len,
        }));
        let out = acc.both(&[("x", random(len, 3)), ("y", random(len, 4))], 0.0);
        assert_close(&out, "accumulate");
        let expect: Vec<f32> = random(len, 3)
            .iter()
            .zip(random(len, 4))
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(out[1].2, expect);
    }
}

fn specs() -> Vec<MlpSpec> {
    let before = BatchNorm::default();
    let after = BatchNorm {
        placement: BnPlacement::AfterActivation,
        ..BatchNorm::default()
    };
    let base = |hidden: &[usize]| {
        MlpSpec::new(3, hidden, 4)
            .optimizer(Optimizer::sgd(0.1))
            .seed(5)
    };
    vec![
        base(&[7, 33])
            .activation(Activation::Tanh)
            .batch_norm(before),
        base(&[7, 33])
            .activation(Activation::Tanh)
            .batch_norm(after),
        // Skips every layer: a projection from the 3-wide input, then identities.
        base(&[5, 5, 5]).activation(Activation::Tanh).residual(1),
        // Every second layer: projections where sizes change (3→8, 8→6).
        base(&[8, 8, 6, 6])
            .activation(Activation::Sigmoid)
            .residual(2),
        base(&[6, 6, 6, 6])
            .activation(Activation::Tanh)
            .residual(2)
            .batch_norm(before),
        base(&[6, 6, 6, 6])
            .activation(Activation::Tanh)
            .residual(1)
            .batch_norm(after)
            .loss(Loss::MeanSquaredError),
        // Widths that divide by 4: batch norm, residual sums and activations take their
        // vec4 kernels.
        base(&[8, 8, 12])
            .activation(Activation::Relu)
            .residual(1)
            .batch_norm(before),
    ]
}

fn targets(spec: &MlpSpec, rows: usize) -> Vec<f32> {
    match spec.loss {
        Loss::SoftmaxCrossEntropy => (0..rows).map(|r| (r % spec.output) as f32).collect(),
        Loss::MeanSquaredError => random(rows * spec.output, 21),
    }
}

#[test]
fn whole_models_gpu_vs_cpu() {
    for spec in specs() {
        // Batch norm over 2 rows maps every input to ±1, so the gradient below it is zero
        // in exact arithmetic and both backends return rounding noise; 1 row is an error.
        let sizes: &[usize] = if spec.batch_norm.is_some() {
            &[7, 33, 257]
        } else {
            &ODD_SIZES
        };
        for &rows in sizes {
            let x = random(rows * spec.input, 20);
            let report = cross_check(
                &spec,
                &x,
                &targets(&spec, rows),
                gpu(),
                Tolerance::default(),
            )
            .unwrap();
            assert!(report.passed(), "{spec:?} rows {rows}:\n{}", report.table());
            if spec.batch_norm.is_some() {
                assert!(report
                    .tensors
                    .iter()
                    .any(|t| t.name.contains("bn.running_var")));
            }
        }
    }
}

/// Every gradient of models with batch norm and skip connections matches finite
/// differences of the training-mode loss: gradients add up correctly at each fork.
#[test]
fn whole_models_finite_differences() {
    for spec in specs() {
        let rows = 5;
        let (x, y) = (random(rows * spec.input, 30), targets(&spec, rows));
        let mut m = Model::new(spec.clone(), Box::new(CpuEngine::new())).unwrap();
        let before = m.state_dict().unwrap();
        // The training-mode loss at the current parameters: a step with lr 0 computes it
        // (batch statistics, not running ones) without moving any parameter.
        m.set_learning_rate(Some(0.0)).unwrap();
        let loss = |m: &mut Model| -> f64 {
            m.take_metrics().unwrap();
            m.train_batch(&x, &y).unwrap();
            m.take_metrics().unwrap().loss as f64
        };
        loss(&mut m);
        common::assert_model_gradients(&mut m, rows, &before, H, 2, &format!("{spec:?}"), loss);
    }
}

#[test]
fn batch_norm_rejects_single_row_training_but_evaluates_it() {
    let spec = MlpSpec::new(3, &[4], 2).batch_norm(BatchNorm::default());
    for engine in [
        Box::new(CpuEngine::new()) as Box<dyn steadygrad::Engine>,
        Box::new(GpuEngine::new(gpu())),
    ] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let e = format!("{:#}", m.train_batch(&[0.1, 0.2, 0.3], &[1.0]).unwrap_err());
        assert!(e.contains("batch norm needs at least 2 rows"), "{e}");
        let out = m.predict(&[0.1, 0.2, 0.3]).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn bad_batch_norm_and_residual_config() {
    let bad = |bn: BatchNorm| {
        MlpSpec::new(3, &[4], 2)
            .batch_norm(bn)
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(bad(BatchNorm {
        momentum: 1.5,
        ..BatchNorm::default()
    })
    .contains("momentum"));
    assert!(bad(BatchNorm {
        eps: 0.0,
        ..BatchNorm::default()
    })
    .contains("eps"));
    let e = MlpSpec::new(3, &[4], 2)
        .residual(0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("spacing"), "{e}");
}

/// Evaluation mode uses the running statistics: after training, the eval forward output
/// differs from the training forward output on the same batch, and matches a direct
/// computation from the running mean and variance.
#[test]
fn eval_mode_uses_running_statistics() {
    let spec = MlpSpec::new(3, &[4], 2)
        .batch_norm(BatchNorm::default())
        .seed(2);
    let mut m = Model::new(spec, Box::new(GpuEngine::new(gpu()))).unwrap();
    let x = random(6 * 3, 40);
    let y = vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
    for _ in 0..3 {
        m.train_batch(&x, &y).unwrap();
    }
    let z = m.read_tensor(6, "layers.0.z").unwrap(); // from the last training forward
    m.predict(&x).unwrap();
    let state = m.state_dict().unwrap();
    let get = |n: &str| state.iter().find(|p| p.name == n).unwrap().values.clone();
    let (rm, rv, g, b) = (
        get("layers.0.bn.running_mean"),
        get("layers.0.bn.running_var"),
        get("layers.0.bn.weight"),
        get("layers.0.bn.bias"),
    );
    // z before the last update differs from z now; recompute z now from predict's own tensor.
    let z_now = m.read_tensor(6, "layers.0.z").unwrap();
    assert_ne!(z, z_now, "parameters moved in the last step");
    let out = m.read_tensor(6, "layers.0.bn.out").unwrap();
    for (i, v) in out.iter().enumerate() {
        let c = i % 4;
        let e = g[c] * (z_now[i] - rm[c]) / (rv[c] + 1e-5).sqrt() + b[c];
        assert!((v - e).abs() <= 1e-5 * e.abs().max(1.0), "{v} vs {e}");
    }
}

/// Everything at once: learned PReLU slopes and random RReLU slopes, dropout, batch norm,
/// residual projections, Adam or Nesterov momentum and clipping agree on both backends
/// over a training step, at odd batch sizes.
#[test]
fn combined_features_gpu_vs_cpu() {
    use steadygrad::Clip;
    let after = BatchNorm {
        placement: BnPlacement::AfterActivation,
        ..BatchNorm::default()
    };
    let specs = [
        MlpSpec::new(5, &[7, 33, 7], 3)
            .activation("prelu-unit".parse().unwrap())
            .batch_norm(after)
            .residual(2)
            .dropout(0.2)
            .optimizer(Optimizer::adam(1e-2))
            .clip(Clip::Norm(0.5)),
        MlpSpec::new(5, &[8, 8, 8], 3)
            .activation("rrelu".parse().unwrap())
            .batch_norm(BatchNorm::default())
            .residual(1)
            .dropout(0.1)
            .optimizer(Optimizer::nesterov(0.05, 0.9))
            .clip(Clip::Value(0.01)),
    ];
    for spec in specs {
        for rows in [7, 33, 257] {
            let x = random(rows * spec.input, 50);
            let report = cross_check(
                &spec,
                &x,
                &targets(&spec, rows),
                gpu(),
                Tolerance::default(),
            )
            .unwrap();
            assert!(report.passed(), "{spec:?} rows {rows}:\n{}", report.table());
        }
    }
}

/// 20 training steps with batch norm, Adam and norm clipping give the same parameters,
/// running statistics and optimizer state on both backends. Tolerance `1e-5 + 1e-3·max`:
/// twenty steps compound the per-step f32 differences, and Adam divides by `√v`, which
/// magnifies them where `v` is small.
///
/// Batch norm sits after the activation here. Placed right after a linear layer, it
/// removes any constant, so that layer's bias gradient is exactly zero in exact
/// arithmetic; both backends then compute rounding noise, which Adam rescales into ±lr
/// steps of random sign (PyTorch does the same), and the biases and running means drift
/// apart for reasons that are not errors.
#[test]
fn twenty_steps_bn_adam_clip_agree() {
    use steadygrad::cpu::CpuEngine as Cpu;
    use steadygrad::Clip;
    let spec = MlpSpec::new(5, &[16, 16, 16], 3)
        .activation(Activation::Relu)
        .batch_norm(BatchNorm {
            placement: BnPlacement::AfterActivation,
            ..BatchNorm::default()
        })
        .optimizer(Optimizer::adam(1e-2))
        .clip(Clip::Norm(0.5))
        .seed(11);
    let mut g = Model::new(spec.clone(), Box::new(GpuEngine::new(gpu()))).unwrap();
    let mut c = Model::new(spec.clone(), Box::new(Cpu::new())).unwrap();
    for step in 0..20u64 {
        let rows = [7, 33, 16][step as usize % 3];
        let x = random(rows * 5, 100 + step);
        let y = targets(&spec, rows);
        g.train_batch(&x, &y).unwrap();
        c.train_batch(&x, &y).unwrap();
    }
    let tol = Tolerance {
        atol: 1e-5,
        rtol: 1e-3,
    };
    let (gs, cs) = (g.state_dict().unwrap(), c.state_dict().unwrap());
    let (go, co) = (g.optimizer_state().unwrap(), c.optimizer_state().unwrap());
    for (a, b) in gs.iter().chain(&go).zip(cs.iter().chain(&co)) {
        let t = steadygrad::check::compare(&a.name, &a.values, &b.values, tol);
        assert!(t.pass, "{} after 20 steps: {t:?}", a.name);
    }
    assert!(gs.iter().any(|t| t.name.ends_with("bn.running_var")));
    let x = random(9 * 5, 999);
    let t = steadygrad::check::compare(
        "predict",
        &g.predict(&x).unwrap(),
        &c.predict(&x).unwrap(),
        tol,
    );
    assert!(t.pass, "{t:?}");
}

/// Batch norm before the activation with Adam: the redundant linear biases get noise
/// gradients, whose Adam steps are reported but not judged; everything else must agree.
#[test]
fn redundant_bias_noise_is_not_judged() {
    let spec = MlpSpec::new(5, &[16, 16], 3)
        .batch_norm(BatchNorm::default())
        .optimizer(Optimizer::adam(1e-2))
        .seed(3);
    let rows = 33;
    let report = cross_check(
        &spec,
        &random(rows * 5, 7),
        &targets(&spec, rows),
        gpu(),
        Tolerance::default(),
    )
    .unwrap();
    assert!(report.passed(), "{}", report.table());
    let unjudged: Vec<&str> = report.unjudged().iter().map(|t| t.name.as_str()).collect();
    assert!(
        unjudged
            .iter()
            .all(|n| (n.starts_with("layers.0.linear.bias")
                || n.starts_with("layers.1.linear.bias"))
                && n.contains("[zero gradient]")),
        "{unjudged:?}"
    );
    assert!(!unjudged.is_empty());
}
