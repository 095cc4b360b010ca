//! Keras-style regularization: the L1/L2 penalty's gradient (finite differences of data
//! loss + penalty, GPU vs CPU, sign(0) = 0) and the max-norm constraint (norms after
//! every step, rows under the limit untouched, GPU vs CPU, exact resume).

mod common;

use common::fd::H;
use common::{gpu, random, OpCase, TempDir, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::ops::regularize::cpu;
use steadygrad::ops::{MaxNorm, Op, PenaltyGrad};
use steadygrad::{MlpSpec, Model, Optimizer, Regularizer};

fn group(layers: &[usize], l1: f32, l2: f32, max_norm: Option<f32>) -> Regularizer {
    Regularizer {
        layers: layers.to_vec(),
        l1,
        l2,
        bias: false,
        max_norm,
    }
}

/// The penalty op on both backends. The GPU computes `g + (l1·sign(w) + 2l2·w)` with the
/// same host-computed `2l2` but may fuse a multiply-add, so results agree to a few ulps:
/// 1e-6 relative plus 1e-7 absolute. Zero weights get exactly the L1 term 0 on both.
#[test]
fn penalty_grad_gpu_matches_cpu_and_sign_of_zero_is_zero() {
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES) {
        let mut w = random(len, len as u64);
        // Every third weight exactly 0 (±0), where torch.sign gives 0.
        for (i, v) in w.iter_mut().enumerate() {
            if i % 3 == 0 {
                *v = if i % 2 == 0 { 0.0 } else { -0.0 };
            }
        }
        let g0 = random(len, 99 + len as u64);
        for (l1, l2) in [(0.01, 0.0), (0.0, 0.05), (0.3, 0.2)] {
            let case = OpCase::new(&[("w", len), ("g", len)]).op(Op::PenaltyGrad(PenaltyGrad {
                w: 0,
                grad: 1,
                len,
                l1,
                l2,
            }));
            let out = case.both(&[("w", w.clone()), ("g", g0.clone())], 0.0);
            let (gpu_g, cpu_g) = (&out[1].1, &out[1].2);
            let mut want = g0.clone();
            cpu::penalty_grad(&w, &mut want, l1, l2);
            assert_eq!(cpu_g, &want, "the op runs the reference loop");
            for i in 0..len {
                let d = (gpu_g[i] - cpu_g[i]).abs();
                assert!(
                    d <= 1e-7 + 1e-6 * cpu_g[i].abs(),
                    "len {len} l1 {l1} l2 {l2} [{i}]: gpu {} cpu {}",
                    gpu_g[i],
                    cpu_g[i]
                );
                if w[i] == 0.0 {
                    assert_eq!(gpu_g[i], g0[i], "sign(0) = 0 on the GPU");
                    assert_eq!(cpu_g[i], g0[i], "sign(0) = 0 on the CPU");
                } else {
                    // Not a no-op: the penalty moved this gradient.
                    assert_ne!(cpu_g[i], g0[i]);
                }
            }
        }
    }
}

/// The gradient a training step computes is d(data loss + penalty)/dw, checked by central
/// differences of the model's batch loss plus [`Model::penalty`] (bound in common/fd.rs).
/// Weights are moved away from 0 first so no difference straddles L1's kink.
#[test]
fn penalty_gradient_matches_finite_differences() {
    let mut biased = group(&[1], 0.02, 0.0, None);
    biased.bias = true;
    let spec = MlpSpec::new(3, &[6, 5, 4], 3)
        .activation(steadygrad::Activation::Tanh)
        .optimizer(Optimizer::sgd(1e-3))
        .regularize(group(&[0, 3], 0.05, 0.1, None))
        .regularize(biased)
        .regularize(group(&[2], 0.0, 0.3, None))
        .seed(4);
    let rows = 4;
    let x = random(rows * 3, 5);
    let y = vec![0.0, 2.0, 1.0, 2.0];
    let mut model = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    for p in model.parameters().unwrap() {
        let moved: Vec<f32> = p
            .values
            .iter()
            .map(|&v| v.signum() * v.abs().max(3.0 * H) + 0.1 * v.signum())
            .collect();
        model.set_parameter(&p.name, &moved).unwrap();
    }
    let before = model.parameters().unwrap();
    model.train_batch(&x, &y).unwrap();
    common::assert_model_gradients(&mut model, rows, &before, H, 1, "l1/l2", |m| {
        m.batch_loss(&x, &y).unwrap() as f64 + m.penalty().unwrap().unwrap() as f64
    });
    // The same check against the data loss alone fails: the penalty term is really there.
    let mut plain = Model::new(
        MlpSpec::new(3, &[6, 5, 4], 3)
            .activation(steadygrad::Activation::Tanh)
            .optimizer(Optimizer::sgd(1e-3))
            .seed(4),
        Box::new(CpuEngine::new()),
    )
    .unwrap();
    for p in &before {
        plain.set_parameter(&p.name, &p.values).unwrap();
    }
    plain.train_batch(&x, &y).unwrap();
    let g_reg = model
        .read_tensor(rows, "layers.2.linear.weight.grad")
        .unwrap();
    let g_plain = plain
        .read_tensor(rows, "layers.2.linear.weight.grad")
        .unwrap();
    let w2 = &before
        .iter()
        .find(|p| p.name == "layers.2.linear.weight")
        .unwrap()
        .values;
    for i in 0..w2.len() {
        let want = g_plain[i] + 2.0 * 0.3 * w2[i];
        assert!(
            (g_reg[i] - want).abs() <= 1e-6 + 1e-5 * want.abs(),
            "Keras's l2: gradient 2·l2·w, [{i}] {} vs {want}",
            g_reg[i]
        );
    }
}

/// The penalty reported is Keras's `l1·Σ|w| + l2·Σw²` per group, biases only when asked.
#[test]
fn reported_penalty_is_the_keras_formula() {
    let mut biased = group(&[1], 0.5, 0.25, None);
    biased.bias = true;
    let spec = MlpSpec::new(2, &[3], 2)
        .regularize(group(&[0], 0.1, 0.2, Some(9.0)))
        .regularize(biased);
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let w0 = vec![1.0, -2.0, 0.0, 3.0, 0.5, -0.5];
    let w1 = vec![1.0, 1.0, -1.0, 2.0, 0.0, 0.0];
    let b1 = vec![-4.0, 2.0];
    m.set_parameter("layers.0.linear.weight", &w0).unwrap();
    m.set_parameter("layers.0.linear.bias", &[7.0, 7.0, 7.0])
        .unwrap();
    m.set_parameter("layers.1.linear.weight", &w1).unwrap();
    m.set_parameter("layers.1.linear.bias", &b1).unwrap();
    let g0 = 0.1 * 7.0 + 0.2 * 14.5; // Σ|w| = 7, Σw² = 14.5; biases excluded
    let g1 = 0.5 * (5.0 + 6.0) + 0.25 * (7.0 + 20.0);
    let p = m.penalties().unwrap();
    assert!(
        (p[0] - g0).abs() < 1e-5 && (p[1] - g1).abs() < 1e-5,
        "{p:?}"
    );
    assert!((m.penalty().unwrap().unwrap() - (g0 + g1)).abs() < 1e-5);
    let none = MlpSpec::new(2, &[3], 2).regularize(group(&[0], 0.0, 0.0, Some(1.0)));
    let mut m = Model::new(none, Box::new(CpuEngine::new())).unwrap();
    assert_eq!(m.penalty().unwrap(), None, "max-norm alone adds no penalty");
}

/// Max-norm op on both backends over rows × cols not multiples of the workgroup: rows over
/// the limit end at norm ≤ c (Keras's c / (1e-7 + norm) makes it just under), rows under
/// it are bit-identical. The norm is summed in the same order on both, so they agree to
/// a few ulps of the sqrt and divide (1e-6 relative).
#[test]
fn max_norm_op_gpu_matches_cpu_and_leaves_short_rows_alone() {
    for rows in ODD_SIZES {
        for cols in ODD_SIZES {
            let len = rows * cols;
            // Rows alternate between small (norm < 1) and large (norm ~ 3√cols).
            let w: Vec<f32> = random(len, (rows * 1000 + cols) as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if (i / cols) % 2 == 0 {
                        v * 0.5 / cols as f32
                    } else {
                        v * 6.0
                    }
                })
                .collect();
            let c = 1.0;
            let case = OpCase::new(&[("w", len)]).op(Op::MaxNorm(MaxNorm {
                w: 0,
                rows,
                cols,
                max_value: c,
            }));
            let out = case.both(&[("w", w.clone())], 0.0);
            let (g, cp) = (&out[0].1, &out[0].2);
            for r in 0..rows {
                let row = |v: &[f32]| v[r * cols..(r + 1) * cols].to_vec();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let before = norm(&row(&w));
                for (name, after) in [("gpu", row(g)), ("cpu", row(cp))] {
                    if before <= c {
                        assert_eq!(after, row(&w), "{name}: row {r} under the limit untouched");
                    } else {
                        assert!(norm(&after) <= c * (1.0 + 1e-6), "{name}: row {r}");
                        assert!(norm(&after) > c * 0.999, "{name}: row {r} scaled to c");
                    }
                }
                for (a, b) in row(g).iter().zip(row(cp)) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs() + 1e-9,
                        "{rows}x{cols} row {r}"
                    );
                }
            }
        }
    }
}

fn max_norm_spec() -> MlpSpec {
    // A large learning rate grows the weights, so the constraint keeps acting.
    MlpSpec::new(7, &[33, 9], 3)
        .optimizer(Optimizer::Sgd {
            lr: 0.5,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        })
        .regularize(group(&[0, 1, 2], 0.0, 1e-3, Some(0.8)))
        .dropout(0.1)
        .seed(11)
}

/// After every training step each unit's incoming weights have norm ≤ c, on both
/// backends, and the two backends' weights agree (default cross-check tolerance).
#[test]
fn every_step_leaves_row_norms_within_the_limit_on_both_backends() {
    let rows = 33;
    let x = random(rows * 7, 3);
    let y: Vec<f32> = (0..rows).map(|i| (i % 3) as f32).collect();
    let spec = max_norm_spec();
    let mut models = [
        Model::new(spec.clone(), Box::new(GpuEngine::new(gpu()))).unwrap(),
        Model::new(spec.clone(), Box::new(CpuEngine::new())).unwrap(),
    ];
    let mut scaled = 0;
    for step in 0..6 {
        for m in &mut models {
            m.train_batch(&x, &y).unwrap();
            for l in 0..3 {
                let name = format!("layers.{l}.linear.weight");
                let w = m.read_tensor(rows, &name).unwrap();
                let cols = spec.layer_sizes()[l];
                for (r, row) in w.chunks(cols).enumerate() {
                    let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    assert!(n <= 0.8 * (1.0 + 1e-5), "step {step} {name} row {r}: {n}");
                    scaled += usize::from(n > 0.79);
                }
            }
        }
        let [g, c] = &mut models;
        for (a, b) in g.parameters().unwrap().iter().zip(c.parameters().unwrap()) {
            let t = steadygrad::check::compare(&a.name, &a.values, &b.values, Default::default());
            assert!(t.pass, "step {step} {}: max rel {:e}", a.name, t.max_rel);
        }
    }
    assert!(
        scaled > 0,
        "the constraint never acted: the test would prove nothing"
    );
}

/// Exact resume with regularization: the groups travel in the checkpoint's configuration
/// and 2 + 2 epochs give exactly the parameters of 4.
#[test]
fn resume_with_regularization_is_exact() {
    use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
    use steadygrad::config::Config;
    let tmp = TempDir::new("reg-resume");
    let path = tmp.path().join("ckpt.safetensors");
    let data = steadygrad::data::synthetic::spirals(20, 3, 0.05, 1);
    let spec = MlpSpec::new(2, &[12, 12], 3)
        .optimizer(Optimizer::adam(5e-2))
        .regularize(group(&[0, 1], 1e-3, 1e-2, Some(0.7)))
        .regularize(group(&[2], 0.0, 0.0, Some(1.5)))
        .seed(2);
    let opts = |epochs| steadygrad::FitOptions {
        epochs,
        batch_size: 16,
        shuffle_seed: 7,
        ..Default::default()
    };
    let new_model = |s: MlpSpec| Model::new(s, Box::new(GpuEngine::new(gpu()))).unwrap();
    let mut straight = new_model(spec.clone());
    straight.fit(&data, None, &opts(4), |_| {}).unwrap();
    let mut first = new_model(spec.clone());
    first.fit(&data, None, &opts(2), |_| {}).unwrap();
    let state = TrainingState {
        config: Some(Config::from_spec(&spec, 4, 16)),
        ..TrainingState::default()
    };
    save_checkpoint(&mut first, &path, &state).unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    let back = ckpt.state.config.as_ref().unwrap().to_spec().unwrap();
    assert_eq!(back.regularization, spec.regularization);
    let mut resumed = new_model(back);
    ckpt.restore(&mut resumed).unwrap();
    let reports = resumed.fit(&data, None, &opts(2), |_| {}).unwrap();
    assert!(reports.iter().all(|r| r.penalty.is_some_and(|p| p > 0.0)));
    assert_eq!(
        resumed.state_dict().unwrap(),
        straight.state_dict().unwrap()
    );
}

/// Weights over a 4 KiB binding (the engine's limit lowered): the penalty gradient is
/// bound in element windows and max-norm in windows of whole rows, and one training step
/// still matches the CPU reference (`cross_check`'s default tolerance: windows change no
/// arithmetic, only which dispatch does it).
#[test]
fn split_weights_match_the_cpu() {
    use steadygrad::check::{cross_check_engine, Tolerance};
    // W0 45×37 = 1665 and W1 40×45 = 1800 floats, over the 1024 floats of one binding.
    let spec = MlpSpec::new(37, &[45, 40], 5)
        .optimizer(Optimizer::sgd(0.5))
        .regularize(group(&[0, 1, 2], 1e-3, 1e-2, Some(0.3)))
        .seed(11);
    let mut engine = GpuEngine::new(gpu());
    engine.limit_memory(4096, u64::MAX);
    let rows = 33;
    let x = random(rows * 37, 5);
    let y: Vec<f32> = (0..rows).map(|i| (i % 5) as f32).collect();
    let report = cross_check_engine(&spec, &x, &y, engine, Tolerance::default()).unwrap();
    assert!(report.passed(), "{}", report.table());
}
