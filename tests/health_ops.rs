//! The gradient-health kernels (`shaders/stats.wgsl`) against the CPU reference at sizes
//! that are not multiples of the workgroup size, and the reference against values worked
//! out by hand.

mod common;

use common::{random, OpCase, ODD_SIZES};
use steadygrad::model::health::layout::{guard_step, saturation_thresholds};
use steadygrad::ops::health::cpu as reference;
use steadygrad::ops::health::{ACT_STATS_LEN, GUARD_GROUP};
use steadygrad::ops::*;
use steadygrad::ops::{Activation, Op};

/// `|gpu - cpu| <= atol + rtol·scale` element by element, with a message naming `what`.
fn assert_near(gpu: &[f32], cpu: &[f32], scale: f32, what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let tol = 1e-6 + 1e-4 * scale.max(c.abs());
        assert!(
            (g - c).abs() <= tol,
            "{what}: element {i}: gpu {g} vs cpu {c} (tolerance {tol:e})"
        );
    }
}

fn outputs<'a>(results: &'a [(String, Vec<f32>, Vec<f32>)], name: &str) -> (&'a [f32], &'a [f32]) {
    let (_, g, c) = results.iter().find(|r| r.0 == name).expect("tensor");
    (g, c)
}

#[test]
fn reference_activation_stats_by_hand() {
    // 2 rows × 3 units; unit 1 is dead (never > 0), unit 2 is dead at exactly 0.
    let x = [1.0, -1.0, 0.0, 3.0, -2.0, 0.0];
    let mut out = [0.0; ACT_STATS_LEN];
    reference::activation_stats(&x, &x, &x, 2, 3, true, Some((-0.5, 2.5)), &mut out);
    let mean = 1.0 / 6.0;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 6.0;
    assert!((out[0] - mean).abs() < 1e-6, "{out:?}");
    assert!((out[1] - var.sqrt()).abs() < 1e-6, "{out:?}");
    assert_eq!(out[2], 2.0 / 3.0, "dead fraction");
    // -1, 3, -2 are at or beyond the thresholds.
    assert_eq!(out[3], 0.5, "saturated fraction");
    assert_eq!(out[4], 0.0);
    // Non-finite elements are counted and left out of mean and deviation.
    let y = [f32::NAN, 2.0, f32::INFINITY, 4.0];
    reference::activation_stats(&y, &y, &y, 2, 2, false, None, &mut out);
    assert_eq!(&out[..], &[3.0, 1.0, 0.0, 0.0, 2.0]);
}

#[test]
fn reference_norm_and_guard_by_hand() {
    let mut out = [0.0; 2];
    reference::norm(&[3.0, 4.0, f32::NAN], None, &mut out);
    assert_eq!(out, [5.0, 1.0]);
    reference::norm(&[4.0, 6.0], Some(&[1.0, 2.0]), &mut out);
    assert_eq!(out, [5.0, 0.0]);
    let mut flags = [0.0f32; 4];
    let step = |s: u32| f32::from_bits(s);
    reference::guard_finite(&[1.0, -2.0], step(3), &mut flags, 1, 2);
    assert_eq!(flags[3], 2.0, "the peak is the largest magnitude");
    assert_eq!(
        guard_step(flags[1]),
        None,
        "finite values leave the flag alone"
    );
    reference::guard_finite(&[1.0, f32::NEG_INFINITY], step(7), &mut flags, 1, 2);
    reference::guard_finite(&[f32::NAN, -3.5], step(9), &mut flags, 1, 2);
    assert_eq!(guard_step(flags[1]), Some(7), "the earliest step is kept");
    assert_eq!(guard_step(flags[0]), None);
    assert_eq!(flags[3], 3.5, "non-finite values are left out of the peak");
    assert_eq!(flags[2], 0.0);
}

/// Random values with dead columns, a few exact zeros and (optionally) non-finite entries.
fn layer_values(rows: usize, cols: usize, seed: u64, poison: bool) -> Vec<f32> {
    let mut x = random(rows * cols, seed);
    for r in 0..rows {
        for c in (0..cols).step_by(3) {
            x[r * cols + c] = -x[r * cols + c].abs();
        }
        if cols > 1 {
            x[r * cols + 1] = 0.0;
        }
    }
    if poison && x.len() > 4 {
        x[1] = f32::NAN;
        let n = x.len();
        x[n - 2] = f32::INFINITY;
    }
    x
}

#[test]
fn activation_stats_gpu_matches_cpu_at_odd_sizes() {
    let sat = saturation_thresholds(Activation::Tanh);
    for &rows in &ODD_SIZES {
        for &cols in &ODD_SIZES {
            for (dead, saturation, poison) in
                [(true, None, false), (false, sat, false), (true, sat, true)]
            {
                let n = rows * cols;
                let case = OpCase::new(&[("out", n), ("act_in", n), ("act_out", n), ("rec", 9)])
                    .op(Op::ActivationStats(ActivationStats {
                        out: 0,
                        act_in: 1,
                        act_out: 2,
                        rows,
                        cols,
                        dead,
                        saturation,
                        stats: 3,
                        stats_len: 9,
                        at: 3,
                    }));
                let act_in = layer_values(rows, cols, (rows * 31 + cols) as u64, poison);
                let act_out: Vec<f32> = act_in.iter().map(|v| v.tanh() * 1.02).collect();
                let out: Vec<f32> = act_in.iter().map(|v| 3.0 * v + 0.5).collect();
                let inputs = [
                    ("out", out.clone()),
                    ("act_in", act_in),
                    ("act_out", act_out),
                    ("rec", vec![-7.0; 9]),
                ];
                let results = case.both(&inputs, 0.0);
                let (g, c) = outputs(&results, "rec");
                let scale = out
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold(0f32, |m, v| m.max(v.abs()));
                let what = format!(
                    "activation stats {rows}x{cols} dead={dead} sat={saturation:?} poison={poison}"
                );
                assert_near(g, c, scale, &what);
                assert_eq!(&g[..3], &[-7.0; 3], "{what}: wrote outside its slots");
                assert_eq!(g[8], -7.0, "{what}: wrote outside its slots");
                if dead && cols > 1 {
                    assert!(c[5] > 0.0, "{what}: the test data has dead units");
                }
            }
        }
    }
}

#[test]
fn norms_gpu_match_cpu_at_odd_sizes() {
    for &len in ODD_SIZES.iter().chain(&[1000, 70_000]) {
        for (minus, scale, poison) in [(false, 1.0, false), (true, 1.0, true), (false, 1e30, false)]
        {
            let case = OpCase::new(&[("x", len), ("m", len), ("rec", 4)]).op(Op::Norm(Norm {
                x: 0,
                minus: minus.then_some(1),
                len,
                stats: 2,
                stats_len: 4,
                at: 1,
            }));
            let mut x: Vec<f32> = random(len, len as u64).iter().map(|v| v * scale).collect();
            if poison {
                x[len / 2] = f32::NAN;
            }
            let inputs = [("x", x), ("m", random(len, 9)), ("rec", vec![0.0; 4])];
            let results = case.both(&inputs, 0.0);
            let (g, c) = outputs(&results, "rec");
            let what = format!("norm len {len} minus={minus} scale={scale} poison={poison}");
            assert!(c[1].is_finite() && g[1].is_finite(), "{what}: {g:?} {c:?}");
            // Relative to the norm itself: both sum the same squares in another order.
            assert_near(g, c, c[1].abs(), &what);
            assert_eq!(g[2], if poison { 1.0 } else { 0.0 }, "{what}");
        }
    }
}

#[test]
fn copy_and_guard_gpu_match_cpu() {
    for &len in &ODD_SIZES {
        let case = OpCase::new(&[("src", len), ("dst", len + 5)]).op(Op::CopyInto(CopyInto {
            src: 0,
            dst: 1,
            len,
            dst_len: len + 5,
            offset: 3,
        }));
        // Small integers as bits are denormal floats: the copy must keep them exactly.
        let src: Vec<f32> = (0..len as u32).map(|i| f32::from_bits(i + 1)).collect();
        let results = case.both(&[("src", src.clone()), ("dst", vec![2.0; len + 5])], 0.0);
        let (g, c) = outputs(&results, "dst");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(g), bits(c), "copy {len}");
        assert_eq!(bits(&g[3..3 + len]), bits(&src), "copy {len}");

        // Groups of 1 to 6 tensors of different lengths, the longest not first, so the
        // grid must cover every one; each tensor in turn holds the bad value. The second
        // set divides by 4 and takes the vector kernel.
        let length_sets = [
            [len, 2 * len + 3, 1, len + 300, 3 * len, len + 1],
            [
                4 * len,
                8 * len + 4,
                4,
                4 * len + 300,
                12 * len,
                4 * len + 8,
            ],
        ];
        for (lens, group) in length_sets
            .into_iter()
            .flat_map(|lens| (1..=GUARD_GROUP).map(move |group| (lens, group)))
        {
            for bad in (0..group).map(Some).chain([None]) {
                let mut names: Vec<(String, usize)> =
                    (0..group).map(|t| (format!("x{t}"), lens[t])).collect();
                names.push(("step".into(), 1));
                names.push(("flags".into(), 16));
                let refs: Vec<(&str, usize)> =
                    names.iter().map(|(n, l)| (n.as_str(), *l)).collect();
                // Tensor t reports to slot t + 1; slot 7 holds an earlier step (2) that a
                // later one must not replace.
                let slot = |t: usize| if t == 2 { 7 } else { t + 1 };
                let case = OpCase::new(&refs).op(Op::GuardFinite(GuardFinite {
                    tensors: (0..group).map(|t| (t, lens[t], slot(t))).collect(),
                    step: group,
                    flags: group + 1,
                    flags_len: 16,
                    peaks: 8,
                }));
                let mut inputs: Vec<(&str, Vec<f32>)> = (0..group)
                    .map(|t| {
                        let mut x = random(lens[t], t as u64);
                        if bad == Some(t) {
                            let i = lens[t] - 1 - t % lens[t];
                            x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][t % 3];
                        }
                        (refs[t].0, x)
                    })
                    .collect();
                inputs.push(("step", vec![f32::from_bits(41)]));
                let mut flags = vec![0.0; 16];
                flags[7] = f32::from_bits(u32::MAX - 2);
                // A peak from an earlier step that is larger than anything now stays.
                flags[8 + 7] = 1e9;
                inputs.push(("flags", flags));
                let results = case.both(&inputs, 0.0);
                let (g, c) = outputs(&results, "flags");
                let what = format!("guard lens {lens:?} group {group} bad {bad:?}");
                assert_eq!(bits(g), bits(c), "{what}");
                for t in 0..group {
                    let expect = match (t, bad) {
                        (2, _) => Some(2),
                        (t, Some(b)) if t == b => Some(41),
                        _ => None,
                    };
                    assert_eq!(guard_step(g[slot(t)]), expect, "{what}: tensor {t}");
                    let x = &inputs[t].1;
                    let peak = x
                        .iter()
                        .filter(|v| v.is_finite())
                        .fold(0.0f32, |m, v| m.max(v.abs()));
                    let expect = if t == 2 { 1e9 } else { peak };
                    assert_eq!(g[8 + slot(t)], expect, "{what}: peak of tensor {t}");
                }
                assert_eq!(g[0], 0.0, "{what}: slot 0 belongs to nobody");
            }
        }
    }
}

#[test]
fn guard_groups_are_checked() {
    let mut case = OpCase::new(&[("x", 4), ("step", 1), ("flags", 2)]);
    case.plan.forward.push(Op::GuardFinite(GuardFinite {
        tensors: vec![(0, 4, 0); GUARD_GROUP + 1],
        step: 1,
        flags: 2,
        flags_len: 2,
        peaks: 0,
    }));
    let e = case.plan.validate(&[]).unwrap_err().to_string();
    let too_many = format!("guards {} tensors", GUARD_GROUP + 1);
    assert!(e.contains(&too_many), "{e}");
    case.plan.forward[0] = Op::GuardFinite(GuardFinite {
        tensors: vec![(0, 4, 2)],
        step: 1,
        flags: 2,
        flags_len: 2,
        peaks: 0,
    });
    let e = case.plan.validate(&[]).unwrap_err().to_string();
    assert!(e.contains("writes up to element 3 of a tensor of 2"), "{e}");
}

/// The metric accumulator takes over the guard's check of the per-row losses it reads
/// (a guard dispatch fewer): flags and metrics as the CPU running the ops one by one
/// has them, with and without a NaN or inf among the losses.
#[test]
fn metrics_accumulator_guards_the_losses() {
    for rows in ODD_SIZES {
        for bad in [None, Some(f32::NAN), Some(f32::NEG_INFINITY)] {
            let case = OpCase::new(&[
                ("loss", rows),
                ("correct", rows),
                ("metrics", 3),
                ("step", 1),
                ("flags", 16),
            ]);
            let id = |n| case.id(n);
            let (loss, flags) = (id("loss"), id("flags"));
            let accumulate = Op::AccumulateMetrics(AccumulateMetrics {
                row_loss: loss,
                row_correct: id("correct"),
                metrics: id("metrics"),
                rows,
            });
            let guard = Op::GuardFinite(GuardFinite {
                tensors: vec![(loss, rows, 3)],
                step: id("step"),
                flags,
                flags_len: 16,
                peaks: 8,
            });
            let case = case.op(accumulate).op(guard);
            let mut losses: Vec<f32> = random(rows, 7).iter().map(|v| v.abs() * 5.0).collect();
            if let Some(v) = bad {
                losses[rows / 2] = v;
            }
            let inputs = [
                ("loss", losses),
                ("correct", vec![1.0; rows]),
                ("metrics", vec![0.5, 0.25, 2.0]),
                ("step", vec![f32::from_bits(9)]),
                ("flags", vec![0.0; 16]),
            ];
            let mut engine = steadygrad::gpu::GpuEngine::new(common::gpu());
            let g = case.run(&mut engine, &inputs, 0.0);
            let c = case.run(&mut steadygrad::cpu::CpuEngine::new(), &inputs, 0.0);
            let what = format!("rows {rows} bad {bad:?}");
            assert_eq!(
                engine.counters().dispatches,
                1,
                "{what}: guard not taken over"
            );
            let (gf, cf) = (&g[flags].1, &c[flags].1);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(gf), bits(cf), "{what}: flags");
            assert_eq!(guard_step(gf[3]), bad.map(|_| 9), "{what}");
            let m = case.id("metrics");
            if bad.is_none() {
                assert_near(&g[m].1, &c[m].1, 1.0, &what);
            }
        }
    }
}
