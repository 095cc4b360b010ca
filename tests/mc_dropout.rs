//! Monte Carlo dropout at prediction: mean and spread against a plain-loop reference
//! drawing the same masks (same streams and counters), on both backends; seeding, and
//! the errors for 0 samples and a model without dropout.

mod common;

use common::{gpu, random};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::lower::mc_dropout_stream;
use steadygrad::model::trainer::mc::{mc_step, MC_BATCH};
use steadygrad::ops::dropout::cpu::dropout;
use steadygrad::{BatchNorm, Loss, MlpSpec, Model, NamedTensor, Optimizer};

const SIZES: [usize; 4] = [5, 33, 7, 3];
const P: f32 = 0.3;

fn spec(loss: Loss) -> MlpSpec {
    MlpSpec::new(SIZES[0], &SIZES[1..3], SIZES[3])
        .loss(loss)
        .batch_norm(BatchNorm::default())
        .dropout(P)
        .optimizer(Optimizer::sgd(0.05))
        .seed(9)
}

fn tensor<'a>(s: &'a [NamedTensor], name: &str) -> &'a [f32] {
    &s.iter().find(|t| t.name == name).unwrap().values
}

/// One stochastic forward pass of `rows` rows of batch `b` in plain loops: linear, batch
/// norm with running statistics, ReLU, dropout with the mask of stream
/// `mc_dropout_stream(seed, l)` at counter `mc_step(b, n, s)`.
fn reference_pass(state: &[NamedTensor], x: &[f32], rows: usize, seed: u64, step: u32) -> Vec<f32> {
    let mut h = x.to_vec();
    for l in 0..3 {
        let (fi, fo) = (SIZES[l], SIZES[l + 1]);
        let w = tensor(state, &format!("layers.{l}.linear.weight"));
        let b = tensor(state, &format!("layers.{l}.linear.bias"));
        let mut z = vec![0.0f32; rows * fo];
        for r in 0..rows {
            for o in 0..fo {
                let dot: f64 = (0..fi)
                    .map(|i| h[r * fi + i] as f64 * w[o * fi + i] as f64)
                    .sum();
                z[r * fo + o] = (dot + b[o] as f64) as f32;
            }
        }
        if l == 2 {
            return z;
        }
        let bn = |k: &str| tensor(state, &format!("layers.{l}.bn.{k}"));
        let (g, beta, rm, rv) = (
            bn("weight"),
            bn("bias"),
            bn("running_mean"),
            bn("running_var"),
        );
        for (i, v) in z.iter_mut().enumerate() {
            let c = i % fo;
            let xhat = (*v as f64 - rm[c] as f64) / (rv[c] as f64 + 1e-5).sqrt();
            *v = ((g[c] as f64 * xhat + beta[c] as f64) as f32).max(0.0);
        }
        h = vec![0.0; rows * fo];
        dropout(&z, &mut h, P, mc_dropout_stream(seed, l), step, 0);
    }
    unreachable!()
}

/// Mean and population std over `n` reference passes, softmax first for classification.
fn reference(
    state: &[NamedTensor],
    x: &[f32],
    n: usize,
    seed: u64,
    loss: Loss,
) -> (Vec<f64>, Vec<f64>) {
    let (d, k) = (SIZES[0], SIZES[3]);
    let rows = x.len() / d;
    let (mut sum, mut sq) = (vec![0.0; rows * k], vec![0.0; rows * k]);
    for (b, chunk) in x.chunks(MC_BATCH * d).enumerate() {
        for s in 0..n {
            let out = reference_pass(state, chunk, chunk.len() / d, seed, mc_step(b, n, s));
            for (r, row) in out.chunks(k).enumerate() {
                let mut v: Vec<f64> = row.iter().map(|&o| o as f64).collect();
                if loss == Loss::SoftmaxCrossEntropy {
                    let m = v.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = v.iter().map(|o| (o - m).exp()).collect();
                    let t: f64 = e.iter().sum();
                    v = e.iter().map(|o| o / t).collect();
                }
                for (j, vj) in v.into_iter().enumerate() {
                    let at = (b * MC_BATCH + r) * k + j;
                    sum[at] += vj;
                    sq[at] += vj * vj;
                }
            }
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n as f64 - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

/// A model trained a few steps (so batch norm's running statistics are not the initial
/// 0 and 1) on `engine`.
fn trained(loss: Loss, gpu_engine: bool) -> Model {
    let engine: Box<dyn steadygrad::Engine> = if gpu_engine {
        Box::new(GpuEngine::new(gpu()))
    } else {
        Box::new(CpuEngine::new())
    };
    let mut m = Model::new(spec(loss), engine).unwrap();
    let rows = 33;
    let x = random(rows * SIZES[0], 1);
    let y: Vec<f32> = match loss {
        Loss::SoftmaxCrossEntropy => (0..rows).map(|i| (i % 3) as f32).collect(),
        Loss::MeanSquaredError => random(rows * 3, 2),
    };
    for _ in 0..5 {
        m.train_batch(&x, &y).unwrap();
    }
    m
}

/// 300 rows (a full batch of 256 and a partial one), 20 samples. Same masks, so the only
/// differences are summation order and f32 rounding of the forward pass (the reference
/// sums dot products in f64): 1e-4 absolute on probabilities and outputs of order 1 for
/// the CPU backend, 1e-3 for the GPU, whose matmul tiles sum in another order. One wrong
/// mask changes a row's mean by ~1/20 of an output, far beyond either.
#[test]
fn mean_and_std_match_a_reference_with_the_same_masks() {
    let x = random(300 * SIZES[0], 3);
    for loss in [Loss::SoftmaxCrossEntropy, Loss::MeanSquaredError] {
        for (gpu_engine, tol) in [(false, 1e-4), (true, 1e-3)] {
            let mut m = trained(loss, gpu_engine);
            let state = m.state_dict().unwrap();
            let rm = tensor(&state, "layers.0.bn.running_mean");
            assert!(rm.iter().any(|&v| v != 0.0), "running statistics moved");
            let p = m.predict_mc(&x, 20, 17).unwrap();
            let (mean, std) = reference(&state, &x, 20, 17, loss);
            let ctx = format!("{loss:?} gpu {gpu_engine}");
            for i in 0..mean.len() {
                assert!(
                    (p.mean[i] as f64 - mean[i]).abs() <= tol,
                    "{ctx}: mean[{i}] {} vs {}",
                    p.mean[i],
                    mean[i]
                );
                assert!(
                    (p.std[i] as f64 - std[i]).abs() <= tol,
                    "{ctx}: std[{i}] {} vs {}",
                    p.std[i],
                    std[i]
                );
            }
            assert!(std.iter().any(|&s| s > 0.01), "{ctx}: the samples differ");
            // Another seed draws other masks: the reference for seed 18 no longer matches.
            let (other, _) = reference(&state, &x, 20, 18, loss);
            assert!(other
                .iter()
                .zip(&p.mean)
                .any(|(a, &b)| (a - b as f64).abs() > 10.0 * tol));
        }
    }
}

#[test]
fn seeded_reproducible_and_one_sample_has_no_spread() {
    let mut m = trained(Loss::SoftmaxCrossEntropy, false);
    let x = random(40 * SIZES[0], 4);
    let a = m.predict_mc(&x, 8, 5).unwrap();
    assert_eq!(a, m.predict_mc(&x, 8, 5).unwrap(), "same seed, same result");
    assert_ne!(a.mean, m.predict_mc(&x, 8, 6).unwrap().mean);
    let one = m.predict_mc(&x, 1, 5).unwrap();
    assert!(one.std.iter().all(|&s| s == 0.0));
    for row in one.mean.chunks(3) {
        assert!(
            (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "probabilities"
        );
    }
    assert_eq!(a.argmax().len(), 40);
}

#[test]
fn zero_samples_and_models_without_dropout_are_errors() {
    let mut m = trained(Loss::SoftmaxCrossEntropy, false);
    let x = random(2 * SIZES[0], 4);
    let e = m.predict_mc(&x, 0, 1).unwrap_err().to_string();
    assert!(e.contains("at least 1 sample"), "{e}");
    let plain = MlpSpec::new(5, &[4], 3);
    let mut m = Model::new(plain, Box::new(CpuEngine::new())).unwrap();
    let e = m.predict_mc(&x, 3, 1).unwrap_err().to_string();
    assert!(e.contains("no dropout"), "{e}");
}
