//! A weight gradient `dW = dZᵀ·X` followed, later in the list, by the bias gradient's
//! `SumRowsGroup`, the non-finite guard and the plain SGD updates: the texture matmul
//! takes them into its epilogue (`src/ops/matmul/absorb.rs`) and the later ops leave out
//! what it did. Every tensor and flag must match the CPU running the same ops one by
//! one, with and without a NaN or inf in the inputs, at sizes 1, 7, 33 and 257.

mod common;

use common::{gpu, random, OpCase};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::{GpuEngine, MatmulVariant};
use steadygrad::model::health::layout::guard_step;
use steadygrad::ops::Op;
use steadygrad::ops::*;

const FLAGS: usize = 16;
const PEAKS: usize = 8;

/// The plan: `dW = dZᵀ·X` (`dz` stored `[k, m]`, `x` `[k, n]`), the sums of `dz`'s
/// columns, the guard of `dw` (slot 1) and `db` (slot 2), and the SGD updates of `w` and
/// `b` with them. `partial`: the group also sums another tensor, the guard also checks it
/// and `dz` (slots 3 and 4), and SGD also updates `ow` with it, which the matmul cannot
/// take over; and a copy of `w` before the update, which keeps `w`'s update in place.
fn case(m: usize, k: usize, n: usize, partial: bool) -> OpCase {
    let case = OpCase::new(&[
        ("dz", k * m),
        ("x", k * n),
        ("dw", m * n),
        ("db", m),
        ("oz", k * 5),
        ("ob", 5),
        ("step", 1),
        ("flags", FLAGS),
        ("w", m * n),
        ("b", m),
        ("ow", 5),
        ("w_before", m * n),
    ]);
    let id = |name| case.id(name);
    let (dz, x, dw, db, oz, ob) = (id("dz"), id("x"), id("dw"), id("db"), id("oz"), id("ob"));
    let mut sums = vec![ColumnSum {
        x: dz,
        out: db,
        rows: k,
        cols: m,
    }];
    let mut guarded = vec![(dw, m * n, 1), (db, m, 2)];
    if partial {
        sums.push(ColumnSum {
            x: oz,
            out: ob,
            rows: k,
            cols: 5,
        });
        guarded.extend([(ob, 5, 3), (dz, k * m, 4)]);
    }
    let (step, flags) = (id("step"), id("flags"));
    let mut params = vec![(id("w"), dw, m * n), (id("b"), db, m)];
    if partial {
        params.push((id("ow"), ob, 5));
    }
    let snapshot = Op::CopyInto(CopyInto {
        src: id("w"),
        dst: id("w_before"),
        len: m * n,
        dst_len: m * n,
        offset: 0,
    });
    let case = case
        .op(Op::MatMul(MatMul {
            a: dz,
            b: x,
            c: dw,
            m,
            k,
            n,
            trans_a: true,
            trans_b: false,
            accumulate: false,
        }))
        .op(Op::SumRowsGroup(SumRowsGroup { sums }))
        .op(Op::GuardFinite(GuardFinite {
            tensors: guarded,
            step,
            flags,
            flags_len: FLAGS,
            peaks: PEAKS,
        }));
    let case = if partial { case.op(snapshot) } else { case };
    case.op(Op::SgdGroup(SgdGroup {
        tensors: params,
        weight_decay: 0.25,
    }))
}

#[test]
fn weight_gradient_takes_bias_sum_and_guard() {
    // The last weight is larger than the epilogue updates (`absorb::UPDATE_MAX`).
    let shapes = [
        (1, 1, 1),
        (7, 33, 257),
        (257, 7, 33),
        (33, 257, 7),
        (257, 257, 1),
        (257, 7, 257),
    ];
    let variants = [MatmulVariant::Texture, MatmulVariant::TextureNoSubgroup];
    let mut failures = Vec::new();
    for (&(m, k, n), partial) in shapes.iter().flat_map(|s| [(s, false), (s, true)]) {
        for bad in [None, Some("dz"), Some("x")] {
            let mut inputs = vec![
                ("dz", random(k * m, 1)),
                ("x", random(k * n, 2)),
                ("oz", random(k * 5, 3)),
                ("step", vec![f32::from_bits(41)]),
                ("flags", vec![0.0; FLAGS]),
                ("w", random(m * n, 4)),
                ("b", random(m, 5)),
                ("ow", random(5, 6)),
            ];
            if let Some(name) = bad {
                let t = inputs.iter_mut().find(|i| i.0 == name).unwrap();
                let last = t.1.len() - 1;
                t.1[last] = if name == "dz" {
                    f32::NAN
                } else {
                    f32::INFINITY
                };
            }
            let plan = case(m, k, n, partial);
            let cpu = plan.run(&mut CpuEngine::new(), &inputs, 0.1);
            for variant in variants {
                let what = format!("{variant} m={m} k={k} n={n} partial={partial} bad={bad:?}");
                let mut engine = GpuEngine::new(gpu());
                engine.set_matmul_variant(variant);
                let out = plan.run(&mut engine, &inputs, 0.1);
                // The matmul and the packs of dZᵀ and X (one dispatch for both where
                // they are small, see `pack_pair.rs`); the partial plan's copy, and the
                // sums, guard and updates of its other tensors, one dispatch each; the
                // large weight's update.
                let packs = if k * m.max(n) <= 65_536 { 1 } else { 2 };
                let large = m * n > steadygrad::ops::matmul::absorb::UPDATE_MAX;
                let want = 1 + packs + if partial { 4 } else { large as usize };
                let got = engine.counters().dispatches;
                if got != want {
                    failures.push(format!("{what}: {got} dispatches, want {want}"));
                }
                for ((name, g), (_, c)) in out.iter().zip(&cpu) {
                    check(&what, name, g, c, &mut failures);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check(what: &str, name: &str, g: &[f32], c: &[f32], failures: &mut Vec<String>) {
    if name != "flags" {
        // Non-finite values must match in kind; `compare` takes them as mismatches.
        let mark = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| match x {
                    x if x.is_nan() => 3e3,
                    x if x.is_infinite() => 2e3 * x.signum(),
                    x => x,
                })
                .collect()
        };
        let (g, c) = (mark(g), mark(c));
        let r = steadygrad::check::compare(name, &g, &c, steadygrad::Tolerance::default());
        if !r.pass {
            failures.push(format!("{what}: {name} max abs err {:e}", r.max_abs));
        }
        return;
    }
    for slot in 0..PEAKS {
        if guard_step(g[slot]) != guard_step(c[slot]) {
            failures.push(format!(
                "{what}: flag {slot}: step {:?}, want {:?}",
                guard_step(g[slot]),
                guard_step(c[slot])
            ));
        }
        // Peaks of sums taken in another order may differ in the last bits.
        let (gp, cp) = (g[PEAKS + slot], c[PEAKS + slot]);
        if (gp - cp).abs() > 1e-5 * cp.abs().max(1.0) {
            failures.push(format!("{what}: peak {slot}: {gp}, want {cp}"));
        }
    }
}
