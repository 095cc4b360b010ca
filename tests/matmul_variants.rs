//! Every matmul kernel variant against the CPU reference, forced explicitly, for sizes
//! that are and are not multiples of the tiles, all three transpose forms, and
//! accumulation, and the ops some kernels fuse into their store (every block
//! configuration of the tiled kernel among them; `tests/matmul_tiles.rs` checks each
//! configuration's plain products). Speed is never asserted here; see
//! `benches/matmul.rs`.

mod common;

use common::matmul::check_product;
use steadygrad::check::{compare, Tolerance};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine, MatmulTile, MatmulVariant, TuneMode, TuneOptions};
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::*;
use steadygrad::ops::{Activation, Op};
use steadygrad::tensor::Storage;

const SIZES: [usize; 4] = [1, 7, 33, 257];
/// Shapes whose sides are whole texels of 4 (the texture variants copy instead of
/// padding such operands) and multiples of the tiles.
const ALIGNED: [(usize, usize, usize); 4] =
    [(64, 64, 64), (8, 36, 32), (12, 260, 68), (256, 4, 20)];
/// `(trans_a, trans_b)`: forward `X·Wᵀ`, backward `dY·W` and `dYᵀ·X`, and for
/// completeness `Aᵀ·Bᵀ`.
const FORMS: [(bool, bool); 4] = [(false, true), (false, false), (true, false), (true, true)];

/// Values in [-1, 1) from a seed, different for every operand.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut shapes = Vec::new();
    for &m in &SIZES {
        for &k in &SIZES {
            for &n in &SIZES {
                shapes.push((m, k, n));
            }
        }
    }
    shapes.extend(ALIGNED);
    for &(m, k, n) in &shapes {
        for (f, &(trans_a, trans_b)) in FORMS.iter().enumerate() {
            let case = |accumulate| Case {
                m,
                k,
                n,
                trans_a,
                trans_b,
                accumulate,
            };
            out.push(case(false));
            // Accumulation changes only the epilogue: a rotating subset covers every form
            // and every size without doubling the run time.
            if (m + k + n + f).is_multiple_of(3) {
                out.push(case(true));
            }
        }
    }
    out
}

fn check_variant(variant: MatmulVariant) {
    let ctx = GpuContext::shared().expect("a GPU adapter is required for these tests");
    let mut engine = GpuEngine::new(ctx);
    engine.set_matmul_variant(variant);
    engine.init_persistent(&[]).unwrap();
    let mut failures = Vec::new();
    let all = cases();
    for (i, case) in all.iter().enumerate() {
        let &Case {
            m,
            k,
            n,
            trans_a,
            trans_b,
            accumulate,
        } = case;
        let form = (trans_a, trans_b);
        if let Some(e) = check_product(&mut engine, (m, k, n), form, accumulate, i as u64 * 3) {
            failures.push(format!("{variant} {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed on {}:\n{}",
        failures.len(),
        all.len(),
        engine.describe(),
        failures.join("\n")
    );
}

#[test]
fn reg4x4() {
    check_variant(MatmulVariant::Reg4x4);
}

#[test]
fn tiled() {
    check_variant(MatmulVariant::Tiled);
}

#[test]
fn texture() {
    check_variant(MatmulVariant::Texture);
}

#[test]
fn texture_without_subgroups() {
    check_variant(MatmulVariant::TextureNoSubgroup);
}

#[test]
fn auto() {
    check_variant(MatmulVariant::Auto);
}

/// A layer's forward (`MatMul`, `AddBias`, `Activate`) and the backward pair (`MatMul`,
/// `ActivateBackward`), and a weight gradient with its bias gradient (`MatMul` Aᵀ·B,
/// `SumRows`), which some variants fuse into one kernel, then transposed reads of two fused
/// outputs (mirrors the texture epilogue writes): every tensor, fused or not, must
/// match the CPU running the same plan.
///
/// With `tile`, the tiled kernel pinned to that configuration, a rotating third of the
/// activations (`tile_index` picks which), and a check that every fusable chain became
/// one dispatch.
fn check_fused_ops(variant: MatmulVariant, tile: Option<(usize, MatmulTile)>) {
    let ctx = GpuContext::shared().expect("a GPU adapter is required for these tests");
    let mut failures = Vec::new();
    let acts = Activation::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| tile.is_none_or(|(t, _)| (i + t) % 3 == 0))
        .map(|(_, a)| a);
    for act in acts {
        for &(m, k, n) in &[(33, 7, 257), (257, 33, 7), (8, 32, 32), (1, 1, 1)] {
            let mut plan = Plan::default();
            let local = Storage::Local;
            let x = plan.add_tensor("x", &[m * k], local);
            let w = plan.add_tensor("w", &[n * k], local);
            let bias = plan.add_tensor("bias", &[n], local);
            let z = plan.add_tensor("z", &[m * n], local);
            let h = plan.add_tensor("h", &[m * n], local);
            let dz = plan.add_tensor("dz", &[m * k], local);
            let dh = plan.add_tensor("dh", &[m * n], local);
            let dx = plan.add_tensor("dx", &[m * k], local);
            let xz = plan.add_tensor("xz", &[m * k], local);
            let xh = plan.add_tensor("xh", &[m * k], local);
            let gw = plan.add_tensor("gw", &[k * n], local);
            let gb = plan.add_tensor("gb", &[k], local);
            let gz = plan.add_tensor("gz", &[k * n], local);
            let gd = plan.add_tensor("gd", &[n * k], local);
            plan.forward = vec![
                Op::MatMul(MatMul {
                    a: x,
                    b: w,
                    c: z,
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: true,
                    accumulate: false,
                }),
                Op::AddBias(AddBias {
                    y: z,
                    bias,
                    rows: m,
                    cols: n,
                }),
                Op::Activate(Activate {
                    act,
                    x: z,
                    y: h,
                    len: m * n,
                }),
                // dH-like product back to width k, then the derivative of a layer whose
                // pre-activation is `xz` and output `xh`.
                Op::MatMul(MatMul {
                    a: h,
                    b: w,
                    c: dx,
                    m,
                    k: n,
                    n: k,
                    trans_a: false,
                    trans_b: false,
                    accumulate: false,
                }),
                Op::ActivateBackward(ActivateBackward {
                    act,
                    x: xz,
                    y: xh,
                    dy: dx,
                    dx: dz,
                    len: m * k,
                }),
                // Bias without an activation.
                Op::MatMul(MatMul {
                    a: dz,
                    b: w,
                    c: dh,
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: true,
                    accumulate: false,
                }),
                Op::AddBias(AddBias {
                    y: dh,
                    bias,
                    rows: m,
                    cols: n,
                }),
                // A weight gradient `xᵀ·h` and the bias gradient, the column sums of x.
                Op::MatMul(MatMul {
                    a: x,
                    b: h,
                    c: gw,
                    m: k,
                    k: m,
                    n,
                    trans_a: true,
                    trans_b: false,
                    accumulate: false,
                }),
                Op::SumRows(SumRows {
                    x,
                    out: gb,
                    rows: m,
                    cols: k,
                    accumulate: false,
                }),
                // Transposed reads of an activation derivative's and a bias add's outputs,
                // whose mirrors the texture kernel's epilogue writes.
                Op::MatMul(MatMul {
                    a: dz,
                    b: h,
                    c: gz,
                    m: k,
                    k: m,
                    n,
                    trans_a: true,
                    trans_b: false,
                    accumulate: false,
                }),
                Op::MatMul(MatMul {
                    a: dh,
                    b: x,
                    c: gd,
                    m: n,
                    k: m,
                    n: k,
                    trans_a: true,
                    trans_b: false,
                    accumulate: false,
                }),
            ];
            let inputs = [
                (x, values(m * k, 1)),
                (w, values(n * k, 2)),
                (bias, values(n, 3)),
                (xz, values(m * k, 4)),
            ];
            let xh_values: Vec<f32> = inputs[3]
                .1
                .iter()
                .map(|&v| steadygrad::ops::activation::cpu::activation(act, v))
                .collect();
            let mut gpu = GpuEngine::new(ctx.clone());
            gpu.set_matmul_variant(variant);
            if let Some((_, tile)) = tile {
                gpu.set_tune_options(TuneOptions {
                    pin: Some(tile),
                    mode: TuneMode::Off,
                    cache: None,
                    ..TuneOptions::default()
                });
            }
            let mut cpu = CpuEngine::new();
            let mut outputs = Vec::new();
            for engine in [&mut gpu as &mut dyn Engine, &mut cpu] {
                engine.init_persistent(&[]).unwrap();
                let id = engine.compile(&plan).unwrap();
                for (t, v) in &inputs {
                    engine.write(id, *t, v).unwrap();
                }
                engine.write(id, xh, &xh_values).unwrap();
                engine.run(id, Stage::Predict).unwrap();
                let read: Vec<Vec<f32>> = [z, h, dx, dz, dh, gw, gb, gz, gd]
                    .iter()
                    .map(|&t| engine.read(id, t).unwrap())
                    .collect();
                outputs.push(read);
            }
            // Fused: the four chains of the plan and two plain products; unfusable
            // activations (those with parameters) stay separate dispatches, two of them.
            let dispatches = gpu.counters().dispatches;
            let fused = if act.fusable() { 6 } else { 8 };
            if tile.is_some() && dispatches != fused {
                failures.push(format!(
                    "{variant} {act} m={m} k={k} n={n}: {dispatches} dispatches, want {fused}"
                ));
            }
            let names = ["z", "h", "dx", "dz", "dh", "gw", "gb", "gz", "gd"];
            for (i, name) in names.iter().enumerate() {
                let r = compare(name, &outputs[0][i], &outputs[1][i], Tolerance::default());
                if !r.pass {
                    failures.push(format!(
                        "{variant} {tile:?} {act} m={m} k={k} n={n}: {name} max abs err {:e}",
                        r.max_abs
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fused_epilogues_texture() {
    check_fused_ops(MatmulVariant::Texture, None);
}

#[test]
fn fused_epilogues_texture_without_subgroups() {
    check_fused_ops(MatmulVariant::TextureNoSubgroup, None);
}

#[test]
fn fused_epilogues_tiled() {
    check_fused_ops(MatmulVariant::Tiled, None);
}

#[test]
fn unfused_ops_reg4x4() {
    check_fused_ops(MatmulVariant::Reg4x4, None);
}

/// Every block configuration of the tiled kernel with each epilogue.
#[test]
fn fused_epilogues_every_tile() {
    let ctx = GpuContext::shared().expect("a GPU adapter is required for these tests");
    let tiles: Vec<MatmulTile> = MatmulTile::fitting(&ctx.limits).collect();
    assert!(tiles.len() >= 6, "{tiles:?}");
    for (i, tile) in tiles.into_iter().enumerate() {
        check_fused_ops(MatmulVariant::Tiled, Some((i, tile)));
    }
}
