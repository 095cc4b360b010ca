//! Tensors larger than one storage binding: the GPU backend binds them in windows (ranges
//! of elements or rows, one dispatch each) and must compute exactly what the CPU
//! reference does; ops that cannot be split refuse by name.
//!
//! Most cases lower the engine's limits (`GpuEngine::limit_memory`) so that small, odd
//! shapes split into several windows with ragged last ones; one case crosses lavapipe's
//! real 128 MiB binding limit. Tolerance: `cross_check`'s default (1e-6 + 1e-4 of each
//! tensor's largest value): windows change only the order of additions (k-split matmuls,
//! windowed column sums and norm partials).

mod common;

use common::{gpu, random};
use steadygrad::check::{cross_check_engine, Tolerance};
use steadygrad::gpu::{GpuEngine, MatmulVariant};
use steadygrad::ops::*;
use steadygrad::{Activation, BatchNorm, Clip, MlpSpec, Model, Optimizer};

/// Bytes per binding in the small-limit cases: 1024 floats.
const SMALL_BINDING: u64 = 4096;

fn limited(variant: MatmulVariant, binding: u64) -> GpuEngine {
    let mut engine = GpuEngine::new(gpu());
    engine.set_matmul_variant(variant);
    engine.limit_memory(binding, u64::MAX);
    engine
}

fn batch(spec: &MlpSpec, rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let x = random(rows * spec.input, seed);
    let y = (0..rows).map(|i| ((i * 7) % spec.output) as f32).collect();
    (x, y)
}

fn assert_matches_cpu(spec: &MlpSpec, rows: usize, engine: GpuEngine, what: &str) {
    let (x, y) = batch(spec, rows, 5);
    let report = cross_check_engine(spec, &x, &y, engine, Tolerance::default())
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(report.passed(), "{what}:\n{}", report.table());
}

/// Weights and activations over the limit, on the texture-mirror kernels: windowed
/// mirror packs, row windows of C with every fused epilogue, column sums, Adam, norm
/// clipping and the guard.
#[test]
fn texture_kernels_split_weights_and_activations() {
    // W0 45×37 = 1665 and W1 40×45 = 1800 floats, activations 33×45 = 1485: all over 1024.
    let spec = MlpSpec::new(37, &[45, 40], 5)
        .activation(Activation::Tanh)
        .optimizer(Optimizer::adam(1e-2))
        .clip(Clip::Norm(0.5))
        .seed(11);
    for variant in [MatmulVariant::Texture, MatmulVariant::TextureNoSubgroup] {
        let engine = limited(variant, SMALL_BINDING);
        assert_matches_cpu(&spec, 33, engine, &format!("{variant}"));
    }
    // Momentum SGD, value clipping and PReLU (per unit) over windows too.
    let spec = MlpSpec::new(37, &[45, 40], 5)
        .activation(Activation::PRELU_UNIT)
        .optimizer(Optimizer::sgd_momentum(0.05, 0.9))
        .clip(Clip::Value(0.01))
        .seed(12);
    assert_matches_cpu(
        &spec,
        33,
        limited(MatmulVariant::Texture, SMALL_BINDING),
        "prelu",
    );
}

/// The buffer kernels (real GPUs) split activations: rows of C and A for the forward and
/// `dX` matmuls, k for `dW = dZᵀ·X`, rows for the bias add and the activation.
#[test]
fn buffer_kernels_split_activations() {
    // Activations 57×30 = 1710 and input 57×20 = 1140 floats; weights 900 fit.
    let spec = MlpSpec::new(20, &[30, 30], 4)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(0.1))
        .seed(13);
    for variant in [MatmulVariant::Reg4x4, MatmulVariant::Tiled] {
        let engine = limited(variant, SMALL_BINDING);
        assert_matches_cpu(&spec, 57, engine, &format!("{variant}"));
    }
}

/// Several epochs through `fit` with windows agree with the CPU, evaluation included.
#[test]
fn split_training_and_evaluation_agree() {
    let spec = MlpSpec::new(37, &[45, 40], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(0.05))
        .seed(14);
    let (x, y) = batch(&spec, 70, 6);
    let mut gpu = Model::new(
        spec.clone(),
        Box::new(limited(MatmulVariant::Auto, SMALL_BINDING)),
    )
    .unwrap();
    let mut cpu = Model::new(spec.clone(), Box::new(steadygrad::cpu::CpuEngine::new())).unwrap();
    for _ in 0..3 {
        gpu.train_batch(&x, &y).unwrap();
        cpu.train_batch(&x, &y).unwrap();
    }
    let (g, c) = (gpu.predict(&x).unwrap(), cpu.predict(&x).unwrap());
    let t = steadygrad::check::compare("predictions", &g, &c, Tolerance::default());
    assert!(t.pass, "{t:?}");
}

/// Ops with no windowed form refuse a tensor over the limit, naming it and the op.
#[test]
fn unsplittable_ops_name_the_tensor() {
    let spec = MlpSpec::new(20, &[30, 30], 4)
        .batch_norm(BatchNorm::default())
        .seed(1);
    let e = Model::new(
        spec,
        Box::new(limited(MatmulVariant::Texture, SMALL_BINDING)),
    )
    .and_then(|mut m| {
        let (x, y) = batch(&MlpSpec::new(20, &[30, 30], 4), 57, 1);
        m.train_batch(&x, &y)
    })
    .map(|_| ())
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("BatchNorm") && e.contains("4096 bytes") && e.contains("layers.0"),
        "{e}"
    );
    // The buffer kernels (for GPUs, whose bindings are usually gigabytes) do not window a
    // weight larger than a binding: it is the whole B operand of the forward matmul.
    let spec = MlpSpec::new(37, &[45], 5).seed(1);
    let e = Model::new(
        spec.clone(),
        Box::new(limited(MatmulVariant::Reg4x4, SMALL_BINDING)),
    )
    .and_then(|mut m| {
        let (x, y) = batch(&spec, 8, 1);
        m.train_batch(&x, &y)
    })
    .map(|_| ())
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("tensor 'layers.0.linear.weight'") && e.contains("B operand"),
        "{e}"
    );
}

/// A weight over lavapipe's real binding limit (128 MiB): one training step matches the
/// CPU reference. The layer is 8200 × 4100 floats (134.5 MB).
#[test]
fn weight_over_the_device_binding_limit_trains() {
    let ctx = gpu();
    let max = ctx.max_binding_bytes();
    // Square enough to exceed the limit by a little whatever it is, within 1 GiB.
    let fan_in = 4100;
    let fan_out = (max as usize / 4 / fan_in) + 2;
    assert!(
        fan_out * fan_in * 4 <= 1 << 30,
        "this adapter binds {max} bytes; the test keeps below 1 GiB per tensor"
    );
    let spec = MlpSpec::new(fan_in, &[fan_out], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(0.01))
        .seed(2);
    assert_matches_cpu(&spec, 2, GpuEngine::new(ctx), "over the real limit");
}

/// Every matmul form with operands over the limit, as a bare op on the buffer and texture
/// kernels: either the CPU's result or a refusal naming a tensor, never a wrong result.
#[test]
fn every_matmul_form_splits_or_refuses() {
    use steadygrad::cpu::CpuEngine;
    use steadygrad::engine::Engine;
    use steadygrad::graph::{Plan, Stage};
    use steadygrad::ops::Op;
    use steadygrad::tensor::{Hyper, Storage};
    // k = 37: with m = 45 A is over 1024 floats, with n = 33 B is; C is over when both
    // are 45 and 33.
    let k = 37;
    let mut split = 0;
    for (variant, m, n) in [MatmulVariant::Reg4x4, MatmulVariant::Texture]
        .into_iter()
        .flat_map(|v| [(v, 45, 33), (v, 45, 20), (v, 20, 33)])
    {
        for (trans_a, trans_b, accumulate) in [
            (false, false, false),
            (false, true, true),
            (true, false, false),
            (true, true, true),
        ] {
            let mut plan = Plan::default();
            for (name, len) in [("a", m * k), ("b", k * n), ("c", m * n)] {
                plan.add_tensor(name, &[len], Storage::Local);
            }
            plan.forward.push(Op::MatMul(MatMul {
                a: 0,
                b: 1,
                c: 2,
                m,
                k,
                n,
                trans_a,
                trans_b,
                accumulate,
            }));
            let inputs = [random(m * k, 1), random(k * n, 2), random(m * n, 3)];
            let run = |engine: &mut dyn Engine| -> anyhow::Result<Vec<f32>> {
                engine.init_persistent(&[])?;
                engine.set_hyper(Hyper::lr(0.0))?;
                let id = engine.compile(&plan)?;
                for (t, data) in inputs.iter().enumerate() {
                    engine.write(id, t, data)?;
                }
                engine.run(id, Stage::Predict)?;
                engine.read(id, 2)
            };
            let what = format!("{variant} {m}×{k}×{n} trans_a={trans_a} trans_b={trans_b}");
            let cpu = run(&mut CpuEngine::new()).unwrap();
            match run(&mut limited(variant, SMALL_BINDING)) {
                Ok(gpu) => {
                    let t = steadygrad::check::compare("c", &gpu, &cpu, Tolerance::default());
                    assert!(t.pass, "{what}: {t:?}");
                    split += 1;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(
                        e.contains("tensor '") && e.contains("4096 bytes"),
                        "{what}: {e}"
                    );
                }
            }
        }
    }
    // The texture kernels take every form; the buffer kernels split rows when B fits and
    // A is not transposed, and k for `Aᵀ·B` when C fits.
    assert_eq!(split, 12 + 4, "forms that ran split");
}

/// Norm partials of a tensor over the limit run in windows of whole block rounds, each
/// merging into the partials stored so far, in both forms (a loop per partial with the
/// texture variants, a workgroup tree with the buffer ones).
#[test]
fn norm_partials_merge_windows() {
    use steadygrad::cpu::CpuEngine;
    use steadygrad::engine::Engine;
    use steadygrad::graph::{Plan, Stage};
    use steadygrad::ops::Op;
    use steadygrad::tensor::{Hyper, Storage};
    // 5000 floats in windows of 768 (3 groups of 256-element blocks), the last ragged.
    let (len, groups, first, slots) = (5000, 3, 1, 5);
    let mut plan = Plan::default();
    plan.add_tensor("x", &[len], Storage::Local);
    plan.add_tensor("partials", &[slots, 2], Storage::Local);
    plan.forward.push(Op::NormPartials(NormPartials {
        x: 0,
        len,
        partials: 1,
        first,
        groups,
        slots,
    }));
    let x: Vec<f32> = random(len, 8)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1 + i % 13) as f32)
        .collect();
    let run = |engine: &mut dyn Engine| -> Vec<f32> {
        engine.init_persistent(&[]).unwrap();
        engine.set_hyper(Hyper::lr(0.0)).unwrap();
        let id = engine.compile(&plan).unwrap();
        engine.write(id, 0, &x).unwrap();
        engine.write(id, 1, &[0.5; 10]).unwrap();
        engine.run(id, Stage::Predict).unwrap();
        engine.read(id, 1).unwrap()
    };
    let cpu = run(&mut CpuEngine::new());
    for variant in [MatmulVariant::Texture, MatmulVariant::Tiled] {
        let gpu = run(&mut limited(variant, SMALL_BINDING));
        for j in 0..slots {
            let what = format!("{variant} slot {j}");
            if j < first || j >= first + groups {
                assert_eq!(gpu[2 * j..2 * j + 2], [0.5, 0.5], "{what}: untouched");
                continue;
            }
            // The scale is a maximum: exact. The scaled sum: merged in another order.
            assert_eq!(gpu[2 * j], cpu[2 * j], "{what}: scale");
            let dq = (gpu[2 * j + 1] - cpu[2 * j + 1]).abs();
            assert!(
                dq <= 2e-5 * cpu[2 * j + 1],
                "{what}: q {} vs {}",
                gpu[2 * j + 1],
                cpu[2 * j + 1]
            );
        }
    }
}
