//! The activations beyond identity/sigmoid/tanh/ReLU: derivatives against finite
//! differences on the CPU reference, GPU against CPU op by op and for whole models, the
//! WGSL `erf` against a reference, RReLU's random slopes and PReLU's slope gradient, and
//! bad configurations.

mod common;

use common::fd::{assert_grad, central, dot, H};
use common::{activation_variants, assert_close, gpu, random, OpCase, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::ops::*;
use steadygrad::ops::{Activation, Loss, Op};
use steadygrad::{cross_check, MlpSpec, Model, Optimizer, Tolerance};

/// Every activation except the smooth ones has a kink (or a jump in its derivative) at 0.
fn smooth(act: Activation) -> bool {
    matches!(
        act,
        Activation::Identity
            | Activation::Sigmoid
            | Activation::Tanh
            | Activation::Gelu
            | Activation::GeluTanh
    ) || act == Activation::ELU // alpha = 1: eˣ meets the slope 1 at 0
}

// Finite differences (CPU reference): the scheme and bound of `common::fd`.

/// Inputs in [-3, 3] kept at least 0.05 (5·H) from 0, so no difference straddles a kink.
fn away_from_kink(len: usize, seed: u64) -> Vec<f32> {
    random(len, seed)
        .iter()
        .map(|&v| {
            let v = 3.0 * v;
            if v.abs() < 0.05 {
                v.signum() * 0.1 + v
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn derivatives_match_finite_differences() {
    for act in activation_variants() {
        // Smooth ones are also checked straddling 0.
        let x = if smooth(act) {
            random(60, 7).iter().map(|v| 3.0 * v).collect()
        } else {
            away_from_kink(60, 7)
        };
        let r = random(60, 8);
        let loss = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            steadygrad::ops::activation::cpu::activate(act, x, &mut y);
            dot(&y, &r)
        };
        let mut y = vec![0.0; 60];
        steadygrad::ops::activation::cpu::activate(act, &x, &mut y);
        let mut dx = vec![0.0; 60];
        steadygrad::ops::activation::cpu::activate_backward(act, &x, &y, &r, &mut dx);
        assert_grad(&act.to_string(), &dx, |i| central(&x, i, loss));
    }
}

/// Training-mode RReLU: with the step fixed the slopes are a fixed function of the
/// element, so its backward is the derivative of its forward.
#[test]
fn rrelu_training_derivative_matches_finite_differences() {
    let (lower, upper, stream, step) = (0.1, 0.6, 77, 5);
    let x = away_from_kink(80, 9);
    let r = random(80, 10);
    let loss = |x: &[f32]| {
        let mut y = vec![0.0; x.len()];
        steadygrad::ops::activation::cpu::rrelu_train(x, &mut y, step, stream, lower, upper);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; 80];
    steadygrad::ops::activation::cpu::rrelu_train_backward(
        &x, &r, &mut dx, step, stream, lower, upper,
    );
    assert_grad("rrelu (training)", &dx, |i| central(&x, i, loss));
}

/// PReLU's input gradient and its slope gradient (the terms summed per slope), one slope
/// and one per unit.
#[test]
fn prelu_derivatives_match_finite_differences() {
    let (rows, cols) = (5, 7);
    let x = away_from_kink(rows * cols, 11);
    let r = random(rows * cols, 12);
    for units in [1, cols] {
        let w: Vec<f32> = random(units, 13).iter().map(|v| 0.3 + 0.2 * v).collect();
        let loss = |x: &[f32], w: &[f32]| {
            let mut y = vec![0.0; x.len()];
            steadygrad::ops::activation::cpu::prelu(x, w, &mut y);
            dot(&y, &r)
        };
        let (mut dx, mut terms) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
        steadygrad::ops::activation::cpu::prelu_backward(&x, &w, &r, &mut dx, &mut terms);
        let mut dw = vec![0.0f32; units];
        for (i, t) in terms.iter().enumerate() {
            dw[i % units] += t;
        }
        assert_grad("prelu dx", &dx, |i| central(&x, i, |p| loss(p, &w)));
        assert_grad("prelu dw", &dw, |i| central(&w, i, |p| loss(&x, p)));
    }
}

/// Whole MLPs on the CPU: every gradient the plan computes, PReLU's slopes included,
/// against finite differences of the model's own loss (as `whole_mlp_gradients` in
/// tests/gradcheck.rs). With four rows and these seeds no pre-activation lies within the
/// step's reach of PReLU's kink; a kink inside it would show up as a failure here.
#[test]
fn whole_mlp_gradients_with_new_activations() {
    for act in [
        Activation::PRELU,
        Activation::PRELU_UNIT,
        Activation::Gelu,
        Activation::ELU,
        Activation::GeluTanh,
    ] {
        let spec = MlpSpec::new(3, &[6, 5, 4], 3)
            .activation(act)
            .loss(Loss::MeanSquaredError)
            .optimizer(Optimizer::sgd(1e-3))
            .seed(3);
        let rows = 4;
        let x = random(rows * 3, 11);
        let y = random(rows * 3, 12);
        let mut model = Model::new(spec.clone(), Box::new(CpuEngine::new())).unwrap();
        let before = model.parameters().unwrap();
        model.train_batch(&x, &y).unwrap();
        let grads = model.gradient_names(rows).unwrap();
        let slopes = usize::from(matches!(act, Activation::Prelu { .. })) * 3;
        assert_eq!(
            grads.len(),
            8 + slopes,
            "{act}: every parameter has a gradient"
        );
        common::assert_model_gradients(&mut model, rows, &before, H, 2, &act.to_string(), |m| {
            m.batch_loss(&x, &y).unwrap() as f64
        });
    }
}

// ---------------------------------------------------------------------------------------
// GPU against the CPU reference. Tolerance: the cross-check default,
// max|gpu − cpu| <= 1e-6 + 1e-4·max|cpu| (see steadygrad::check::Tolerance): elementwise
// ops differ only by f32 rounding and the GPU's exp/tanh, orders of magnitude below it.

const LARGE: usize = 70_001;

/// Forward and backward of every kind at constant parameters, at odd lengths and one
/// large one, on three input scales: small inputs exercise the series near 0 (expm1,
/// erf's inner branch), where a normwise bound over ±20 inputs would be too loose to see
/// them, and ±20 the saturated tails.
#[test]
fn activations_gpu_vs_cpu_at_several_scales() {
    for act in activation_variants() {
        for len in ODD_SIZES.into_iter().chain(VEC4_SIZES).chain([LARGE]) {
            for scale in [0.5f32, 4.0, 20.0] {
                let x: Vec<f32> = random(len, 5).iter().map(|v| v * scale).collect();
                let what = format!("{act}, len {len}, inputs ±{scale}");
                let case = OpCase::new(&[("x", len), ("y", len)]).op(Op::Activate(Activate {
                    act,
                    x: 0,
                    y: 1,
                    len,
                }));
                let fwd = case.both(&[("x", x.clone())], 0.0);
                assert_close(&fwd, &format!("{what} forward"));
                let y = fwd[1].2.clone();
                let case = OpCase::new(&[("x", len), ("y", len), ("dy", len), ("dx", len)]).op(
                    Op::ActivateBackward(ActivateBackward {
                        act,
                        x: 0,
                        y: 1,
                        dy: 2,
                        dx: 3,
                        len,
                    }),
                );
                let inputs = [("x", x), ("y", y), ("dy", random(len, 6))];
                assert_close(&case.both(&inputs, 0.0), &format!("{what} backward"));
            }
        }
    }
}

/// Values that have a known closed form, so the CPU reference is right and not merely
/// consistent with the GPU. Tolerance 1e-6 relative: f32 rounding of the result.
#[test]
fn reference_values() {
    let cases: &[(Activation, f32, f64)] = &[
        (Activation::LEAKY_RELU, -2.0, -0.02),
        (Activation::LeakyRelu { slope: 0.2 }, 3.0, 3.0),
        (Activation::RRELU, -1.0, -(1.0 / 8.0 + 1.0 / 3.0) / 2.0),
        (Activation::ELU, -1.0, (-1.0f64).exp_m1()),
        (
            Activation::Elu { alpha: 0.5 },
            -2.0,
            0.5 * (-2.0f64).exp_m1(),
        ),
        (Activation::Selu, 1.0, 1.0507009873554805),
        (
            Activation::Selu,
            -1.0,
            1.0507009873554805 * 1.6732632423543772 * (-1.0f64).exp_m1(),
        ),
        // x·Φ(x) with Φ(1) = 0.8413447460685429, Φ(-2) = 0.022750131948179195.
        (Activation::Gelu, 1.0, 0.8413447460685429),
        (Activation::Gelu, -2.0, -2.0 * 0.022750131948179195),
        // ½x(1 + tanh(√(2/π)(x + 0.044715x³))) at x = 1.
        (Activation::GeluTanh, 1.0, 0.8411919906082768),
        // x·σ(x) and x·tanh(ln(1 + eˣ)), as torch.nn.SiLU and torch.nn.Mish.
        (Activation::Silu, 1.0, 0.7310585786300049),
        (Activation::Silu, -2.0, -0.2384058440442351),
        (Activation::Mish, 1.0, 0.8650983882673103),
        (Activation::Mish, -2.0, -0.2525014826957089),
        // Above 20, softplus(x) is x as in PyTorch, and tanh(x) rounds to 1.
        (Activation::Mish, 30.0, 30.0),
    ];
    for &(act, x, want) in cases {
        let got = steadygrad::ops::activation::cpu::activation(act, x) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-30),
            "{act}({x}) = {got}, expected {want}"
        );
    }
    // Derivatives at the kink follow PyTorch: the negative side's slope.
    assert_eq!(
        steadygrad::ops::activation::cpu::activation_grad(Activation::LEAKY_RELU, 0.0, 0.0),
        0.01
    );
    assert_eq!(
        steadygrad::ops::activation::cpu::activation_grad(Activation::ELU, 0.0, 0.0),
        1.0
    );
    assert_eq!(
        steadygrad::ops::activation::cpu::activation_grad(Activation::Elu { alpha: 0.5 }, 0.0, 0.0),
        0.5
    );
}

/// Training-mode RReLU on both backends draws the same slopes (the shared counter-based
/// RNG), at odd lengths and a large one, for several steps and streams.
#[test]
fn rrelu_training_gpu_vs_cpu() {
    let (lower, upper) = (1.0 / 8.0, 1.0 / 3.0);
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES).chain([LARGE]) {
        for (step, stream) in [
            (1u32, 0u32),
            (2, 0),
            (123_456, 0x5252_4C55),
            (4_000_000_000, 9),
        ] {
            let case = OpCase::new(&[
                ("x", len),
                ("y", len),
                ("dy", len),
                ("dx", len),
                ("step", 1),
            ])
            .op(Op::RreluTrain(RreluTrain {
                x: 0,
                y: 1,
                step: 4,
                stream,
                lower,
                upper,
                len,
            }))
            .op(Op::RreluTrainBackward(RreluTrainBackward {
                x: 0,
                dy: 2,
                dx: 3,
                step: 4,
                stream,
                lower,
                upper,
                len,
            }));
            let x: Vec<f32> = random(len, 20).iter().map(|v| v * 4.0).collect();
            let dy = random(len, 21);
            let inputs = [
                ("x", x.clone()),
                ("dy", dy.clone()),
                ("step", vec![f32::from_bits(step)]),
            ];
            let out = case.both(&inputs, 0.0);
            let what = format!("rrelu training, len {len}, step {step}, stream {stream}");
            assert_close(&out, &what);
            // The slopes are U(lower, upper) draws, and backward used the forward's: dx/dy
            // equals y/x element by element.
            let (y, dx) = (&out[1].2, &out[3].2);
            let mut slopes = Vec::new();
            for i in 0..len {
                if x[i] < -1e-3 {
                    let a = y[i] / x[i];
                    assert!(
                        (lower - 1e-6..=upper + 1e-6).contains(&a),
                        "{what}: slope {a} at {i}"
                    );
                    assert!(
                        (dx[i] / dy[i] - a).abs() <= 1e-5,
                        "{what}: backward slope {} vs forward {a}",
                        dx[i] / dy[i]
                    );
                    slopes.push(a);
                } else if x[i] > 0.0 {
                    assert_eq!(y[i], x[i]);
                    assert_eq!(dx[i], dy[i]);
                }
            }
            if slopes.len() >= 20 {
                let mean = slopes.iter().sum::<f32>() / slopes.len() as f32;
                let spread = slopes.iter().fold(0.0f32, |m, a| m.max(*a))
                    - slopes.iter().fold(1.0f32, |m, a| m.min(*a));
                assert!(
                    spread > 0.5 * (upper - lower),
                    "{what}: slopes do not vary ({spread})"
                );
                // Mean of n uniform draws: std (upper−lower)/√(12n); 6 standard deviations.
                let tol = 6.0 * (upper - lower) / (12.0 * slopes.len() as f32).sqrt();
                assert!(
                    (mean - (lower + upper) / 2.0).abs() <= tol,
                    "{what}: mean slope {mean}"
                );
            }
        }
    }
}

/// PReLU forward, backward and slope gradient (the op and the column sums the MLP
/// lowering adds after it), one slope per layer and one per unit, at odd shapes.
#[test]
fn prelu_gpu_vs_cpu() {
    let shapes = [
        (1, 1),
        (7, 33),
        (33, 7),
        (257, 1),
        (1, 257),
        (257, 33),
        (1000, 70),
        // Lengths that divide by 4 run four values per invocation; rows of 9 units put a
        // row boundary inside a vector.
        (4, 9),
        (7, 36),
    ];
    for (rows, cols) in shapes {
        for per_unit in [false, true] {
            let units = if per_unit { cols } else { 1 };
            let len = rows * cols;
            let case = OpCase::new(&[
                ("x", len),
                ("w", units),
                ("y", len),
                ("dy", len),
                ("dx", len),
                ("terms", len),
                ("per_unit", cols),
                ("dw", 1),
            ])
            .op(Op::Prelu(Prelu {
                x: 0,
                weight: 1,
                y: 2,
                len,
                units,
            }))
            .op(Op::PreluBackward(PreluBackward {
                x: 0,
                weight: 1,
                dy: 3,
                dx: 4,
                dw_terms: 5,
                len,
                units,
            }))
            .op(Op::SumRows(SumRows {
                x: 5,
                out: 6,
                rows,
                cols,
                accumulate: false,
            }))
            .op(Op::SumRows(SumRows {
                x: 6,
                out: 7,
                rows: cols,
                cols: 1,
                accumulate: false,
            }));
            let x: Vec<f32> = random(len, 30).iter().map(|v| v * 3.0).collect();
            let w: Vec<f32> = random(units, 31).iter().map(|v| 0.25 + 0.2 * v).collect();
            let dy = random(len, 32);
            let inputs = [("x", x.clone()), ("w", w.clone()), ("dy", dy.clone())];
            let out = case.both(&inputs, 0.0);
            let what = format!("prelu {rows}x{cols}, {units} slope(s)");
            assert_close(&out, &what);
            // And the gradient is the right one: Σ over the slope's elements with x <= 0
            // of x·dy, summed here independently in f64.
            let mut want = vec![0.0f64; cols];
            for i in 0..len {
                if x[i] <= 0.0 {
                    want[i % cols] += x[i] as f64 * dy[i] as f64;
                }
            }
            let total: f64 = want.iter().sum();
            let got_unit = &out[6].2;
            for c in 0..cols {
                assert!(
                    (got_unit[c] as f64 - want[c]).abs() <= 1e-5 * (1.0 + want[c].abs()),
                    "{what}: unit {c}"
                );
            }
            assert!(
                (out[7].2[0] as f64 - total).abs() <= 1e-5 * (1.0 + total.abs()),
                "{what}: total"
            );
        }
    }
}

/// One training step of whole models on GPU and CPU: every output, gradient (PReLU's
/// slopes included) and updated parameter agrees. RReLU's step trains with random slopes,
/// so agreement shows both backends drew the same ones.
#[test]
fn whole_model_one_step_with_new_activations() {
    type Case<'a> = (usize, &'a [usize], usize, Activation, Loss, usize);
    let cases: &[Case] = &[
        (
            7,
            &[33, 7, 257],
            7,
            Activation::PRELU,
            Loss::SoftmaxCrossEntropy,
            33,
        ),
        (
            7,
            &[33, 7, 257],
            7,
            Activation::PRELU_UNIT,
            Loss::SoftmaxCrossEntropy,
            33,
        ),
        (
            1,
            &[257, 33],
            7,
            Activation::PRELU_UNIT,
            Loss::MeanSquaredError,
            257,
        ),
        (
            33,
            &[7; 5],
            2,
            Activation::RRELU,
            Loss::SoftmaxCrossEntropy,
            257,
        ),
        (
            257,
            &[1, 33],
            1,
            Activation::RRELU,
            Loss::MeanSquaredError,
            1,
        ),
        (
            2,
            &[64; 8],
            3,
            Activation::Rrelu {
                lower: 0.0,
                upper: 0.9,
            },
            Loss::SoftmaxCrossEntropy,
            64,
        ),
        (
            7,
            &[33, 33],
            3,
            Activation::LeakyRelu { slope: 0.2 },
            Loss::SoftmaxCrossEntropy,
            7,
        ),
        (
            7,
            &[33, 33],
            3,
            Activation::Elu { alpha: 0.5 },
            Loss::MeanSquaredError,
            33,
        ),
        (
            7,
            &[33; 4],
            3,
            Activation::Selu,
            Loss::SoftmaxCrossEntropy,
            33,
        ),
        (
            7,
            &[33; 4],
            3,
            Activation::Gelu,
            Loss::SoftmaxCrossEntropy,
            33,
        ),
        (
            7,
            &[33; 4],
            3,
            Activation::GeluTanh,
            Loss::MeanSquaredError,
            7,
        ),
    ];
    for &(input, hidden, output, act, loss, batch) in cases {
        let spec = MlpSpec::new(input, hidden, output)
            .activation(act)
            .loss(loss)
            .optimizer(Optimizer::sgd(0.1))
            .seed(batch as u64);
        let x: Vec<f32> = random(batch * input, 11).iter().map(|v| 2.0 * v).collect();
        let y: Vec<f32> = match loss {
            Loss::SoftmaxCrossEntropy => (0..batch).map(|r| (r % output) as f32).collect(),
            Loss::MeanSquaredError => random(batch * output, 12),
        };
        let report = cross_check(&spec, &x, &y, gpu(), Tolerance::default()).unwrap();
        assert!(
            report.passed(),
            "{act} {spec:?} batch {batch}:\n{}",
            report.table()
        );
        let slopes = report
            .tensors
            .iter()
            .filter(|t| t.name.ends_with("act.weight.grad"))
            .count();
        let expect = if matches!(act, Activation::Prelu { .. }) {
            hidden.len()
        } else {
            0
        };
        assert_eq!(slopes, expect, "{act}: PReLU slope gradients compared");
    }
}

/// RReLU trains with a fresh random slope per element and step and evaluates with the mean
/// slope, on both backends.
#[test]
fn rrelu_training_and_evaluation_modes() {
    let (lower, upper) = (0.1f32, 0.5f32);
    let spec = MlpSpec::new(5, &[64], 3)
        .activation(Activation::Rrelu { lower, upper })
        .seed(4);
    let rows = 40;
    let x = random(rows * 5, 40);
    let y: Vec<f32> = (0..rows).map(|r| (r % 3) as f32).collect();
    for engine in [
        Box::new(CpuEngine::new()) as Box<dyn steadygrad::Engine>,
        Box::new(GpuEngine::new(gpu())),
    ] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let ratios = |m: &mut Model| -> Vec<f32> {
            let z = m.read_tensor(rows, "layers.0.z").unwrap();
            let h = m.read_tensor(rows, "layers.0.h").unwrap();
            z.iter()
                .zip(&h)
                .filter(|(z, _)| **z < -1e-3)
                .map(|(z, h)| h / z)
                .collect()
        };
        m.predict(&x).unwrap();
        let eval = ratios(&mut m);
        assert!(eval.len() > 100);
        for a in &eval {
            assert!(
                (a - (lower + upper) / 2.0).abs() < 1e-5,
                "evaluation slope {a}"
            );
        }
        m.train_batch(&x, &y).unwrap();
        let first = ratios(&mut m);
        m.train_batch(&x, &y).unwrap();
        let second = ratios(&mut m);
        for slopes in [&first, &second] {
            assert!(slopes
                .iter()
                .all(|a| (lower - 1e-6..=upper + 1e-6).contains(a)));
            let spread = slopes.iter().cloned().fold(f32::MIN, f32::max)
                - slopes.iter().cloned().fold(f32::MAX, f32::min);
            assert!(
                spread > 0.5 * (upper - lower),
                "training slopes vary: spread {spread}"
            );
        }
        // The second step drew new slopes (same length only if the signs did not change).
        let same = first
            .iter()
            .zip(&second)
            .filter(|(a, b)| (*a - *b).abs() < 1e-6)
            .count();
        assert!(
            same < first.len() / 4,
            "{same} of {} slopes repeated",
            first.len()
        );
    }
}
