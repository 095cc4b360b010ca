//! Gradient clipping: the norm's ops and value clamping on the GPU against the CPU, the
//! CPU reference against the plain definition in `f64`, edge cases on both backends, and
//! whole models against an unclipped twin.

mod common;

use common::{assert_close, gpu, random, OpCase, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuEngine, MatmulVariant};
use steadygrad::ops::*;
use steadygrad::ops::{Op, NORM_BLOCK};
use steadygrad::{Clip, Loss, MlpSpec, Model, Optimizer};

/// Values spanning twelve orders of magnitude, so the scaled sums really rescale.
fn spread(len: usize, seed: u64) -> Vec<f32> {
    random(len, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 10f32.powi((i % 13) as i32 - 6))
        .collect()
}

/// Partial `j` by its definition: Σ x² over the blocks `b` with `b mod groups = j`.
fn partial_sum_of_squares(x: &[f32], groups: usize, j: usize) -> f64 {
    x.chunks(NORM_BLOCK)
        .enumerate()
        .filter(|(b, _)| b % groups == j)
        .flat_map(|(_, c)| c.iter())
        .map(|&v| (v as f64).powi(2))
        .sum()
}

/// Each partial pair `(s, q)`: `s` is a maximum, so the GPU must match it exactly; `q` is a
/// sum of up to a few hundred rescaled squares per invocation plus a 256-way tree (GPU
/// form) or of 256-element blocks, each merged into the running pair (CPU-adapter form,
/// with the texture variants), so `f32` rounding stays below 2e-5 relative. The CPU
/// reference is also checked against the definition `s²·q = Σ x²` (in `f64`, to 1e-6: `s`
/// and `q` are each rounded to `f32`).
#[test]
fn norm_partials_gpu_vs_cpu_and_definition() {
    for len in ODD_SIZES.into_iter().chain([4097, 70_001, (1 << 20) + 3]) {
        for groups in [1, 5, 64] {
            let first = 2;
            let slots = first + groups + 1;
            let case = OpCase::new(&[("x", len), ("partials", 2 * slots)]).op(Op::NormPartials(
                NormPartials {
                    x: 0,
                    len,
                    partials: 1,
                    first,
                    groups,
                    slots,
                },
            ));
            let x = spread(len, len as u64);
            // Slots outside first..first + groups must be left alone.
            let sentinel = random(2 * slots, 7);
            let inputs = [("x", x.clone()), ("partials", sentinel.clone())];
            let cp = &case.run(&mut CpuEngine::new(), &inputs, 0.0)[1].1;
            for variant in [MatmulVariant::Texture, MatmulVariant::Tiled] {
                let mut engine = GpuEngine::new(gpu());
                engine.set_matmul_variant(variant);
                let gp = &case.run(&mut engine, &inputs, 0.0)[1].1;
                for j in 0..slots {
                    let what = format!("{variant}: len {len} groups {groups} slot {j}");
                    if j < first || j >= first + groups {
                        assert_eq!(cp[2 * j..2 * j + 2], sentinel[2 * j..2 * j + 2], "{what}");
                        assert_eq!(gp[2 * j..2 * j + 2], sentinel[2 * j..2 * j + 2], "{what}");
                        continue;
                    }
                    let (s, q) = (cp[2 * j] as f64, cp[2 * j + 1] as f64);
                    let want = partial_sum_of_squares(&x, groups, j - first);
                    assert!(
                        (s * s * q - want).abs() <= 1e-6 * want,
                        "{what}: cpu {} vs {want}",
                        s * s * q
                    );
                    assert_eq!(gp[2 * j], cp[2 * j], "{what}: scale");
                    let dq = (gp[2 * j + 1] - cp[2 * j + 1]).abs();
                    assert!(dq <= 2e-5 * cp[2 * j + 1], "{what}: q {dq:e}");
                }
            }
        }
    }
}

#[test]
fn clip_coef_scale_and_clamp_gpu_vs_cpu() {
    for slots in ODD_SIZES {
        let partials: Vec<f32> = (0..slots)
            .flat_map(|j| {
                let r = random(2, j as u64 + 50);
                [
                    r[0].abs() * 10f32.powi(j as i32 % 9 - 4),
                    1.0 + 100.0 * r[1].abs(),
                ]
            })
            .collect();
        let want: f64 = partials
            .chunks(2)
            .map(|p| (p[0] as f64).powi(2) * p[1] as f64)
            .sum::<f64>()
            .sqrt();
        // One threshold below the total (clips) and one above (coefficient 1).
        for max_norm in [want as f32 * 0.3, want as f32 * 3.0] {
            let case = OpCase::new(&[("partials", 2 * slots), ("total", 1), ("coef", 1)]).op(
                Op::ClipCoef(ClipCoef {
                    partials: 0,
                    slots,
                    total_norm: 1,
                    coef: 2,
                    max_norm,
                }),
            );
            let out = case.both(&[("partials", partials.clone())], 0.0);
            assert_close(&out, &format!("clip_coef slots {slots}"));
            let (total, coef) = (out[1].2[0], out[2].2[0]);
            assert!(
                (total as f64 - want).abs() <= 1e-6 * want,
                "{total} vs {want}"
            );
            let c = max_norm / (total + 1e-6);
            assert_eq!(coef, if c > 1.0 { 1.0 } else { c });
        }
    }
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES).chain([70_001]) {
        let case =
            OpCase::new(&[("x", len), ("coef", 1)]).op(Op::ScaleBy(ScaleBy { x: 0, coef: 1, len }));
        let x = random(len, 9);
        let out = case.both(&[("x", x.clone()), ("coef", vec![0.37])], 0.0);
        assert_close(&out, &format!("scale_by len {len}"));
        let scaled: Vec<f32> = x.iter().map(|v| v * 0.37).collect();
        assert_eq!(out[0].2, scaled);

        let case = OpCase::new(&[("x", len)]).op(Op::ClampValue(ClampValue {
            x: 0,
            len,
            limit: 0.5,
        }));
        let out = case.both(&[("x", x.clone())], 0.0);
        let clamped: Vec<f32> = x.iter().map(|v| v.clamp(-0.5, 0.5)).collect();
        assert_eq!(out[0].1, clamped, "gpu clamp len {len}");
        assert_eq!(out[0].2, clamped, "cpu clamp len {len}");
    }
}

/// The ops the model emits for clipping by norm, over gradient tensors of `lens`.
fn norm_pipeline(lens: &[usize], max_norm: f32) -> OpCase {
    let slots = lens.len();
    let mut tensors: Vec<(String, usize)> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("g{i}"), n))
        .collect();
    tensors.push(("partials".into(), 2 * slots));
    tensors.push(("total".into(), 1));
    tensors.push(("coef".into(), 1));
    let named: Vec<(&str, usize)> = tensors.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let mut case = OpCase::new(&named);
    let (p, total, coef) = (slots, slots + 1, slots + 2);
    for (i, &len) in lens.iter().enumerate() {
        case = case.op(Op::NormPartials(NormPartials {
            x: i,
            len,
            partials: p,
            first: i,
            groups: 1,
            slots,
        }));
    }
    case = case.op(Op::ClipCoef(ClipCoef {
        partials: p,
        slots,
        total_norm: total,
        coef,
        max_norm,
    }));
    for (i, &len) in lens.iter().enumerate() {
        case = case.op(Op::ScaleBy(ScaleBy { x: i, coef, len }));
    }
    case
}

/// `(total, coef, clipped gradients)` per backend, GPU first.
fn clip_both(grads: &[Vec<f32>], max_norm: f32) -> [(f32, f32, Vec<Vec<f32>>); 2] {
    let lens: Vec<usize> = grads.iter().map(Vec::len).collect();
    let case = norm_pipeline(&lens, max_norm);
    let names: Vec<String> = (0..grads.len()).map(|i| format!("g{i}")).collect();
    let inputs: Vec<(&str, Vec<f32>)> = names
        .iter()
        .zip(grads)
        .map(|(n, g)| (n.as_str(), g.clone()))
        .collect();
    let k = grads.len();
    let pick = |out: Vec<(String, Vec<f32>)>| {
        (
            out[k + 1].1[0],
            out[k + 2].1[0],
            out[..k].iter().map(|(_, v)| v.clone()).collect(),
        )
    };
    [
        pick(case.run(&mut GpuEngine::new(gpu()), &inputs, 0.0)),
        pick(case.run(&mut CpuEngine::new(), &inputs, 0.0)),
    ]
}

#[test]
fn all_zero_gradients_stay_zero() {
    let grads = vec![vec![0.0; 7], vec![0.0; 257], vec![0.0]];
    for (backend, (total, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 1.0)) {
        assert_eq!(total, 0.0, "{backend}");
        assert_eq!(coef, 1.0, "{backend}: 1 / (0 + 1e-6) clamps to 1");
        assert_eq!(clipped, grads, "{backend}: no NaN, nothing moved");
    }
}

/// A norm exactly at the threshold is still multiplied by `max_norm / (total + 1e-6)`,
/// just under 1, as in torch; a threshold above the norm leaves gradients bit-identical.
#[test]
fn norm_exactly_at_threshold() {
    let grads = vec![vec![3.0, 0.0], vec![0.0; 33], vec![4.0]]; // norm 5
    let at = 5.0f32 / (5.0f32 + 1e-6);
    assert!(at < 1.0);
    for (backend, (total, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 5.0)) {
        assert!((total - 5.0).abs() <= 1e-6, "{backend}: total {total}");
        assert!((coef - at).abs() <= 2.0 * f32::EPSILON, "{backend}: {coef}");
        assert!((clipped[0][0] - 3.0 * at).abs() <= 1e-6, "{backend}");
        assert!((clipped[2][0] - 4.0 * at).abs() <= 1e-6, "{backend}");
    }
    for (backend, (_, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 5.001)) {
        assert_eq!(coef, 1.0, "{backend}");
        assert_eq!(clipped, grads, "{backend}");
    }
}

/// Squares of these overflow `f32` (1e30² = 1e60, 3e19² = 9e38 > 3.4e38), but the norm is
/// computed from scaled sums, so it stays finite and exact to `f32` rounding; the clipped
/// gradients then have norm `max_norm`. (torch's `f32` sum of squares would give an
/// infinite norm and zero every gradient; see the README.)
#[test]
fn huge_finite_gradients_get_a_finite_norm() {
    for huge in [1e30f32, 3e19, -1e38] {
        let mut g = random(33, 1);
        g[17] = huge;
        let grads = vec![random(7, 2), g, random(257, 3)];
        let want: f64 = grads
            .iter()
            .flatten()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        for (backend, (total, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 2.0)) {
            let what = format!("{backend} huge {huge:e}");
            assert!(
                total.is_finite() && coef.is_finite() && coef > 0.0,
                "{what}"
            );
            assert!(
                (total as f64 - want).abs() <= 1e-6 * want,
                "{what}: {total}"
            );
            let norm: f64 = clipped
                .iter()
                .flatten()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((norm - 2.0).abs() <= 1e-5, "{what}: clipped norm {norm}");
            assert!((clipped[1][17] as f64 - 2.0f64.copysign(huge as f64)).abs() < 1e-5);
        }
    }
}

/// Non-finite gradients behave as in torch (with `error_if_nonfinite=False`): an inf
/// gives an infinite norm, coefficient 0, NaN where the inf was and 0 elsewhere; a NaN
/// makes everything NaN. Both backends agree (WGSL lets drivers assume finite math, so
/// this documents lavapipe and IEEE-conforming drivers).
#[test]
fn non_finite_gradients_as_torch() {
    let grads = vec![vec![1.0, f32::INFINITY, -2.0], vec![f32::NEG_INFINITY; 2]];
    for (backend, (total, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 1.0)) {
        assert_eq!(total, f32::INFINITY, "{backend}");
        assert_eq!(coef, 0.0, "{backend}");
        assert!(clipped[0][1].is_nan() && clipped[1].iter().all(|v| v.is_nan()));
        assert_eq!([clipped[0][0], clipped[0][2]], [0.0, 0.0], "{backend}");
    }
    let grads = vec![vec![1.0, f32::NAN, 2.0], vec![3.0; 5]];
    for (backend, (total, coef, clipped)) in ["gpu", "cpu"].iter().zip(clip_both(&grads, 1.0)) {
        assert!(total.is_nan() && coef.is_nan(), "{backend}: {total} {coef}");
        assert!(clipped.iter().flatten().all(|v| v.is_nan()), "{backend}");
    }
}

/// Whole models: the reported norm is the unclipped gradients' norm, and the clipped
/// gradients are the unclipped ones times the coefficient (by norm) or clamped (by value).
/// Tolerance 1e-5 relative: the same gradients summed in another order.
#[test]
fn model_clipping_against_an_unclipped_twin() {
    let base = MlpSpec::new(7, &[33, 7], 3)
        .loss(Loss::SoftmaxCrossEntropy)
        .optimizer(Optimizer::adam(1e-3))
        .seed(5);
    let rows = 33;
    let x: Vec<f32> = random(rows * 7, 8).iter().map(|v| v * 5.0).collect();
    let y: Vec<f32> = (0..rows).map(|r| (r % 3) as f32).collect();
    let grads_of = |spec: &MlpSpec, engine: Box<dyn Engine>| {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let before = m.last_grad_norm().unwrap();
        m.train_batch(&x, &y).unwrap();
        let grads: Vec<Vec<f32>> = m
            .gradient_names(rows)
            .unwrap()
            .iter()
            .map(|(_, g)| m.read_tensor(rows, g).unwrap())
            .collect();
        (before, m.last_grad_norm().unwrap(), grads)
    };
    for on_gpu in [true, false] {
        let engine = || -> Box<dyn Engine> {
            if on_gpu {
                Box::new(GpuEngine::new(gpu()))
            } else {
                Box::new(CpuEngine::new())
            }
        };
        let backend = if on_gpu { "gpu" } else { "cpu" };
        let (_, none, plain) = grads_of(&base, engine());
        assert_eq!(none, None, "no norm without norm clipping");
        let total: f64 = plain
            .iter()
            .flatten()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let max_norm = (total * 0.25) as f32;
        let (before, norm, clipped) = grads_of(&base.clone().clip(Clip::Norm(max_norm)), engine());
        assert_eq!(before, Some(0.0), "{backend}: 0 before the first step");
        let norm = norm.unwrap() as f64;
        assert!(
            (norm - total).abs() <= 1e-5 * total,
            "{backend}: {norm} vs {total}"
        );
        let coef = max_norm as f64 / (total + 1e-6);
        for (c, p) in clipped.iter().zip(&plain) {
            for (&c, &p) in c.iter().zip(p) {
                assert!(
                    (c as f64 - p as f64 * coef).abs() <= 1e-5 * total * coef,
                    "{backend}: {c} vs {p}·{coef}"
                );
            }
        }
        let limit = 0.01;
        let (_, _, clamped) = grads_of(&base.clone().clip(Clip::Value(limit)), engine());
        for (c, p) in clamped.iter().zip(&plain) {
            let want: Vec<f32> = p.iter().map(|v| v.clamp(-limit, limit)).collect();
            assert_eq!(c, &want, "{backend}");
        }
        assert!(
            plain.iter().flatten().any(|v| v.abs() > limit),
            "the value limit must bite"
        );
    }
}
