//! Dropout: identical masks on both backends, the statistics of inverted dropout, the
//! identity in evaluation, and finite-difference checks of the backward with a fixed mask.

mod common;

use common::{gpu, random, OpCase, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::lower as mlp;
use steadygrad::ops::*;
use steadygrad::ops::{dropout_scale, Op};
use steadygrad::{Activation, Loss, MlpSpec, Model, Optimizer};

/// The mask comes from a bit-identical counter-based RNG and the kept values are one
/// correctly rounded `f32` multiply by the same host-computed scale, so GPU and CPU must
/// agree exactly, not merely within a tolerance.
#[test]
fn dropout_op_is_bit_identical_on_both_backends() {
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES).chain([70_001]) {
        for (p, step, stream) in [(0.1, 1u32, 0u32), (0.5, 12_345, 7), (0.9, u32::MAX, 99)] {
            let case =
                OpCase::new(&[("x", len), ("y", len), ("step", 1)]).op(Op::Dropout(Dropout {
                    x: 0,
                    y: 1,
                    step: 2,
                    len,
                    p,
                    stream,
                    first_row: None,
                    cols: 1,
                }));
            let x = random(len, len as u64);
            let out = case.both(
                &[("x", x.clone()), ("step", vec![f32::from_bits(step)])],
                0.0,
            );
            assert_eq!(out[1].1, out[1].2, "len {len} p {p} step {step}");
            let mut want = vec![0.0; len];
            steadygrad::ops::dropout::cpu::dropout(&x, &mut want, p, stream, step, 0);
            assert_eq!(out[1].2, want);
        }
    }
}

/// A rank's mask offset (its first global row × the row width) gives the masks of those
/// rows of the whole batch, on both backends alike: the rows of two shards laid end to
/// end are the mask of the whole batch.
#[test]
fn offset_masks_are_the_whole_batch_rows() {
    for cols in ODD_SIZES.into_iter().chain([4, 36]) {
        for rows in [1usize, 7, 33] {
            let (p, step, stream) = (0.4, 17u32, 5u32);
            let total = 2 * rows + 1;
            let x = random(total * cols, cols as u64);
            let mut whole = vec![0.0; total * cols];
            steadygrad::ops::dropout::cpu::dropout(&x, &mut whole, p, stream, step, 0);
            // Shards [0, rows) and [rows, total): the second starts at row `rows`.
            for (first, shard_rows) in [(0, rows), (rows, rows + 1)] {
                let len = shard_rows * cols;
                let case = OpCase::new(&[("x", len), ("y", len), ("step", 1), ("first", 1)]).op(
                    Op::Dropout(Dropout {
                        x: 0,
                        y: 1,
                        step: 2,
                        len,
                        p,
                        stream,
                        first_row: Some(3),
                        cols,
                    }),
                );
                let xs = x[first * cols..][..len].to_vec();
                let out = case.both(
                    &[
                        ("x", xs),
                        ("step", vec![f32::from_bits(step)]),
                        ("first", vec![f32::from_bits(first as u32)]),
                    ],
                    0.0,
                );
                assert_eq!(out[1].1, out[1].2, "{rows}x{cols} from row {first}");
                assert_eq!(
                    out[1].2,
                    whole[first * cols..][..len],
                    "{rows}x{cols} from {first}"
                );
            }
        }
    }
}

#[test]
fn inverted_dropout_statistics() {
    let n = 100_000;
    let x: Vec<f32> = random(n, 1).iter().map(|v| v + 2.0).collect(); // never 0
    let mask = |p: f32, stream: u32, step: u32| {
        let mut y = vec![0.0; n];
        steadygrad::ops::dropout::cpu::dropout(&x, &mut y, p, stream, step, 0);
        y
    };
    for p in [0.1f32, 0.3, 0.75] {
        let y = mask(p, 3, 5);
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        // 5 standard deviations of a binomial proportion: fails by chance ~1 in 2 million.
        let sigma = (p as f64 * (1.0 - p as f64) / n as f64).sqrt();
        assert!(
            (dropped - p as f64).abs() < 5.0 * sigma,
            "p {p}: dropped {dropped}"
        );
        let scale = 1.0 / (1.0 - p);
        for (&yi, &xi) in y.iter().zip(&x) {
            assert!(yi == 0.0 || yi == xi * scale, "kept units scale by 1/(1-p)");
        }
        // The mask depends on the step and the stream; about 2p(1-p) of units differ.
        for other in [mask(p, 3, 6), mask(p, 4, 5)] {
            let differ = y
                .iter()
                .zip(&other)
                .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
                .count() as f64
                / n as f64;
            let want = 2.0 * p as f64 * (1.0 - p as f64);
            assert!((differ - want).abs() < 0.01, "p {p}: {differ} vs {want}");
        }
    }
    assert_eq!(mask(0.0, 1, 1), x, "p = 0 keeps everything unscaled");
    assert_eq!(dropout_scale(0.5), 2.0);
}

/// `L(x) = Σ r·dropout(x)` with the mask fixed by `(stream, step)`: the analytic gradient
/// is the dropout op applied to `r`, and central differences agree (`L` is linear in `x`,
/// so only `f32` rounding of the objective remains; tolerance as `tests/gradcheck.rs`).
#[test]
fn dropout_backward_matches_finite_differences() {
    let (len, p, stream, step) = (50, 0.4, 11, 3);
    let (x, r) = (random(len, 2), random(len, 3));
    let objective = |x: &[f32]| {
        let mut y = vec![0.0; len];
        steadygrad::ops::dropout::cpu::dropout(x, &mut y, p, stream, step, 0);
        y.iter()
            .zip(&r)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    };
    let mut grad = vec![0.0; len];
    steadygrad::ops::dropout::cpu::dropout(&r, &mut grad, p, stream, step, 0);
    let h = 1e-2f32;
    for i in 0..len {
        let mut xp = x.clone();
        xp[i] += h;
        let up = objective(&xp);
        xp[i] = x[i] - h;
        let fd = ((up - objective(&xp)) / (2.0 * h as f64)) as f32;
        assert!(
            (fd - grad[i]).abs() <= 2e-3 + 2e-2 * grad[i].abs(),
            "x[{i}]: finite difference {fd} vs analytic {}",
            grad[i]
        );
    }
    assert!(grad.contains(&0.0) && grad.iter().any(|&g| g != 0.0));
}

/// Loss of the training-mode forward pass with the mask of step `STEP + 1`: the step
/// counter is reset before the step, and the parameters restored after it, since
/// training updates them.
fn training_loss(
    model: &mut Model,
    params: &[steadygrad::model::NamedTensor],
    x: &[f32],
    y: &[f32],
) -> f64 {
    const STEP: u32 = 41;
    for p in params {
        model.set_parameter(&p.name, &p.values).unwrap();
    }
    model.set_steps(STEP).unwrap();
    model.take_metrics().unwrap();
    model.train_batch(x, y).unwrap();
    model.take_metrics().unwrap().loss as f64
}

/// A whole MLP with dropout between tanh layers: every gradient the training step computes
/// matches central differences of the training loss under the same mask. This checks the
/// wiring too: backward must go through the dropout mask and then the activation of the
/// pre-dropout values. Tolerance as `tests/gradcheck.rs`.
#[test]
fn model_with_dropout_gradients_match_finite_differences() {
    let spec = MlpSpec::new(3, &[8, 6], 3)
        .activation(Activation::Tanh)
        .loss(Loss::MeanSquaredError)
        .optimizer(Optimizer::sgd(1e-3))
        .dropout_per_layer(&[0.75, 0.3])
        .seed(2);
    let rows = 4;
    let (x, y) = (random(rows * 3, 4), random(rows * 3, 5));
    let mut model = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let p0 = model.parameters().unwrap();
    training_loss(&mut model, &p0, &x, &y);
    // Read every gradient before the finite differences overwrite them.
    let grads: Vec<(String, String, Vec<f32>)> = model
        .gradient_names(rows)
        .unwrap()
        .into_iter()
        .map(|(p, g)| {
            let v = model.read_tensor(rows, &g).unwrap();
            (p, g, v)
        })
        .collect();
    let h = 1e-2f32;
    let mut checked_zero = false;
    for (param, grad, analytic) in grads {
        let base = p0.iter().position(|p| p.name == param).unwrap();
        for (i, &a) in analytic.iter().enumerate() {
            let mut at = |delta: f32| {
                let mut params = p0.clone();
                params[base].values[i] += delta;
                training_loss(&mut model, &params, &x, &y)
            };
            let fd = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
            assert!(
                (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                "{grad}[{i}]: finite difference {fd} vs analytic {a}"
            );
            checked_zero |= a == 0.0 && param.starts_with("layers.1.linear.weight");
        }
    }
    // Units dropped after layer 0 feed nothing to layer 1: their weight columns have an
    // exactly zero gradient, which finite differences confirmed above.
    assert!(checked_zero, "some weights must only see dropped inputs");
}

/// Evaluation is the identity (same outputs as the model without dropout), training drops
/// about p of the units and scales the rest, GPU and CPU drop the same units, and the
/// dropout ops are only in the training op list.
#[test]
fn eval_is_identity_and_training_drops() {
    let p = 0.5;
    let plain = MlpSpec::new(4, &[64, 64], 3)
        .activation(Activation::Tanh)
        .seed(8);
    let spec = plain.clone().dropout(p);
    let rows = 64;
    let plan = mlp::build(&spec, &spec.persistent(), rows).unwrap();
    let count = |ops: &[Op]| {
        ops.iter()
            .filter(|o| matches!(o, Op::Dropout(Dropout { .. })))
            .count()
    };
    assert_eq!(count(&plan.forward), 0, "no dropout in evaluation");
    assert_eq!(
        count(&plan.train),
        4,
        "forward and backward for each of 2 layers"
    );

    let x = random(rows * 4, 9);
    let y: Vec<f32> = (0..rows).map(|r| (r % 3) as f32).collect();
    let mut masks = Vec::new();
    for on_gpu in [true, false] {
        let engine = || -> Box<dyn Engine> {
            if on_gpu {
                Box::new(GpuEngine::new(gpu()))
            } else {
                Box::new(CpuEngine::new())
            }
        };
        let mut with = Model::new(spec.clone(), engine()).unwrap();
        let mut without = Model::new(plain.clone(), engine()).unwrap();
        assert_eq!(with.predict(&x).unwrap(), without.predict(&x).unwrap());
        assert_eq!(
            with.batch_loss(&x, &y).unwrap(),
            without.batch_loss(&x, &y).unwrap()
        );
        with.train_batch(&x, &y).unwrap();
        for l in 0..2 {
            let act = with.read_tensor(rows, &format!("layers.{l}.act")).unwrap();
            let h = with.read_tensor(rows, &format!("layers.{l}.h")).unwrap();
            let dropped = h.iter().filter(|&&v| v == 0.0).count() as f64 / h.len() as f64;
            // 4096 units: 5 standard deviations of the proportion is 0.04.
            assert!((dropped - p as f64).abs() < 0.04, "layer {l}: {dropped}");
            for (&a, &v) in act.iter().zip(&h) {
                assert!(v == 0.0 || v == a * 2.0, "kept units are doubled");
            }
            masks.push(h.iter().map(|&v| v == 0.0).collect::<Vec<_>>());
        }
    }
    assert_eq!(
        masks[0], masks[2],
        "layer 0: same units dropped on GPU and CPU"
    );
    assert_eq!(
        masks[1], masks[3],
        "layer 1: same units dropped on GPU and CPU"
    );
    assert_ne!(masks[0], masks[1], "layers draw independent masks");
}
