//! Synchronized batch norm's split ops (`BatchNormStats` → host → `BatchNormApply`,
//! `BatchNormGradSums` → host → `BatchNormGradApply`): against the CPU on the GPU, and,
//! composed across shards the way data-parallel ranks compose them, against the fused
//! ops on the whole batch, whose gradient the finite-difference tests of
//! `batchnorm_residual.rs` check. A one-process (`Solo`) data-parallel model with
//! sync-bn trains like the plain model, which needs no MPI.
//!
//! Tolerances: GPU vs CPU the default cross-check bound (f32 reductions in another
//! order). Split vs fused: both are f64 references rounded to f32, the split one rounds
//! its intermediate statistics and sums to f32 once more, so 1e-5 relative to
//! max(1, |value|) (measured ~1e-7).

mod common;

use common::{assert_close, gpu, random, OpCase, ODD_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::distributed::{merge_moments, Distributed, Solo};
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuEngine, MatmulVariant};
use steadygrad::ops::batch_norm::cpu;
use steadygrad::ops::*;
use steadygrad::{data, BatchNorm, BnPlacement, FitOptions, MlpSpec, Model};

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (u, v)) in a.iter().zip(b).enumerate() {
        let d = (u - v).abs() / u.abs().max(1.0);
        assert!(d < 1e-5, "{what}[{i}]: {u} vs {v}");
    }
}

fn features(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    random(rows * cols, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| 3.0 * v + (i % cols % 7) as f32)
        .collect()
}

/// Row and feature counts from 1, 7, 33, 257, and feature counts that take the `vec4`
/// kernels.
fn shapes() -> Vec<(usize, usize)> {
    let mut s: Vec<(usize, usize)> = ODD_SIZES
        .iter()
        .flat_map(|&r| ODD_SIZES.iter().map(move |&c| (r, c)))
        .collect();
    s.extend([(7, 4), (33, 36), (257, 260)]);
    s
}

#[test]
fn split_ops_gpu_vs_cpu() {
    for (rows, cols) in shapes() {
        let x = features(rows, cols, 1);
        let (gamma, beta) = (random(cols, 2), random(cols, 3));
        let (rm, rv) = (random(cols, 4), random(cols, 5));
        let positive =
            |seed| -> Vec<f32> { random(cols, seed).iter().map(|v| v.abs() + 0.5).collect() };
        let global = [random(cols, 6), positive(7), positive(8)].concat();
        let (mean, invstd) = (random(cols, 9), positive(10));
        for variant in [MatmulVariant::Texture, MatmulVariant::Tiled] {
            let ctx = format!("{variant}: {rows}x{cols}");
            let stats = OpCase::new(&[("x", rows * cols), ("stats", 2 * cols)]).op(
                Op::BatchNormStats(BatchNormStats {
                    x: 0,
                    stats: 1,
                    rows,
                    cols,
                }),
            );
            assert_close(
                &stats.both_with(variant, &[("x", x.clone())], 0.0),
                &format!("{ctx} stats"),
            );

            let apply = OpCase::new(&[
                ("x", rows * cols),
                ("y", rows * cols),
                ("gamma", cols),
                ("beta", cols),
                ("global", 3 * cols),
                ("mean", cols),
                ("invstd", cols),
                ("rm", cols),
                ("rv", cols),
            ])
            .op(Op::BatchNormApply(BatchNormApply {
                x: 0,
                y: 1,
                gamma: 2,
                beta: 3,
                global: 4,
                mean: 5,
                invstd: 6,
                running_mean: 7,
                running_var: 8,
                rows,
                cols,
                momentum: 0.1,
                eps: 1e-5,
            }));
            let inputs = [
                ("x", x.clone()),
                ("gamma", gamma.clone()),
                ("beta", beta.clone()),
                ("global", global.clone()),
                ("rm", rm.clone()),
                ("rv", rv.clone()),
            ];
            assert_close(
                &apply.both_with(variant, &inputs, 0.0),
                &format!("{ctx} apply"),
            );

            let dy = random(rows * cols, 11);
            let sums = OpCase::new(&[
                ("x", rows * cols),
                ("dy", rows * cols),
                ("mean", cols),
                ("invstd", cols),
                ("dgamma", cols),
                ("dbeta", cols),
            ])
            .op(Op::BatchNormGradSums(BatchNormGradSums {
                x: 0,
                dy: 1,
                mean: 2,
                invstd: 3,
                dgamma: 4,
                dbeta: 5,
                rows,
                cols,
            }));
            let inputs = [
                ("x", x.clone()),
                ("dy", dy.clone()),
                ("mean", mean.clone()),
                ("invstd", invstd.clone()),
            ];
            assert_close(
                &sums.both_with(variant, &inputs, 0.0),
                &format!("{ctx} grad sums"),
            );

            let grad = OpCase::new(&[
                ("x", rows * cols),
                ("dy", rows * cols),
                ("gamma", cols),
                ("mean", cols),
                ("invstd", cols),
                ("global", 2 * cols),
                ("dx", rows * cols),
            ])
            .op(Op::BatchNormGradApply(BatchNormGradApply {
                x: 0,
                dy: 1,
                gamma: 2,
                mean: 3,
                invstd: 4,
                global: 5,
                dx: 6,
                rows,
                cols,
            }));
            let inputs = [
                ("x", x.clone()),
                ("dy", dy.clone()),
                ("gamma", gamma.clone()),
                ("mean", mean.clone()),
                ("invstd", invstd.clone()),
                ("global", global[..2 * cols].to_vec()),
            ];
            assert_close(
                &grad.both_with(variant, &inputs, 0.0),
                &format!("{ctx} grad apply"),
            );
        }
    }
}

/// The split ops composed over uneven shards as data-parallel ranks compose them (each
/// rank's upstream gradient in its own loss scale, its outputs weighted by its share
/// before the all-reduce) equal the fused ops over the whole batch: forward outputs,
/// saved and running statistics, dx, dγ and dβ.
#[test]
fn split_across_shards_equals_fused_on_the_whole_batch() {
    for (shards, cols) in [
        (vec![3usize, 5], 4usize),
        (vec![1, 6, 2], 7),
        (vec![33, 1], 33),
    ] {
        let n: usize = shards.iter().sum();
        let x = features(n, cols, 21);
        let dy = random(n * cols, 22);
        let (gamma, beta) = (random(cols, 23), random(cols, 24));
        let (rm0, rv0) = (random(cols, 25), vec![1.0; cols]);
        let (mut y, mut mean, mut invstd) = (vec![0.0; n * cols], vec![0.0; cols], vec![0.0; cols]);
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        cpu::batch_norm_train(
            &x,
            &mut y,
            &gamma,
            &beta,
            &mut mean,
            &mut invstd,
            &mut rm,
            &mut rv,
            n,
            cols,
            0.1,
            1e-5,
        );
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; n * cols], vec![0.0; cols], vec![0.0; cols]);
        cpu::batch_norm_backward(
            &x,
            &dy,
            &gamma,
            &mean,
            &invstd,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            n,
            cols,
        );

        let bounds: Vec<(usize, usize)> = shards
            .iter()
            .scan(0, |at, &r| {
                *at += r;
                Some((*at - r, *at))
            })
            .collect();
        let part = |v: &[f32], (lo, hi): (usize, usize)| v[lo * cols..hi * cols].to_vec();
        let mut gathered = Vec::new();
        for &b in &bounds {
            let mut s = vec![0.0; 2 * cols];
            cpu::batch_norm_stats(&part(&x, b), &mut s, b.1 - b.0, cols);
            gathered.push((b.1 - b.0) as f32);
            gathered.extend(s);
        }
        let global = merge_moments(&gathered, cols).unwrap();
        let (mut sums, mut ranks) = (vec![0.0f32; 2 * cols], Vec::new());
        for &b in &bounds {
            let rows = b.1 - b.0;
            let share = rows as f32 / n as f32;
            let (mut ys, mut m, mut is) =
                (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
            let (mut rms, mut rvs) = (rm0.clone(), rv0.clone());
            cpu::batch_norm_apply(
                &part(&x, b),
                &mut ys,
                &gamma,
                &beta,
                &global,
                &mut m,
                &mut is,
                &mut rms,
                &mut rvs,
                rows,
                cols,
                0.1,
                1e-5,
            );
            close(&ys, &part(&y, b), "y");
            close(&m, &mean, "saved mean");
            close(&is, &invstd, "saved invstd");
            close(&rms, &rm, "running mean");
            close(&rvs, &rv, "running var");
            // This rank's loss is the mean over its rows: its upstream gradient is the
            // global one over its share.
            let dys: Vec<f32> = part(&dy, b).iter().map(|v| v / share).collect();
            let (mut dg, mut db) = (vec![0.0; cols], vec![0.0; cols]);
            cpu::batch_norm_grad_sums(&part(&x, b), &dys, &m, &is, &mut dg, &mut db, rows, cols);
            for c in 0..cols {
                sums[c] += share * db[c];
                sums[cols + c] += share * dg[c];
            }
            ranks.push((b, dys, m, is, dg, db));
        }
        close(&sums[..cols], &dbeta, "Σ share·dβ");
        close(&sums[cols..], &dgamma, "Σ share·dγ");
        for (b, dys, m, is, _, _) in ranks {
            let rows = b.1 - b.0;
            let share = rows as f32 / n as f32;
            let coef: Vec<f32> = sums.iter().map(|s| s / rows as f32).collect();
            let mut dxs = vec![0.0; rows * cols];
            cpu::batch_norm_grad_apply(
                &part(&x, b),
                &dys,
                &gamma,
                &m,
                &is,
                &coef,
                &mut dxs,
                rows,
                cols,
            );
            let weighted: Vec<f32> = dxs.iter().map(|v| v * share).collect();
            close(&weighted, &part(&dx, b), "share·dx");
        }
    }
}

/// One process training "data-parallel" with the `Solo` collective runs the split step
/// (its exchanges are identities) and must train like the fused plan: same weights and
/// running statistics after several steps, on the CPU and on the GPU, with sync-bn, with
/// gradient buckets small enough to cut the backward pass several times, and with both.
#[test]
fn solo_split_step_equals_the_fused_step() {
    let data = data::synthetic::spirals(30, 3, 0.05, 3);
    let opts = FitOptions {
        epochs: 2,
        batch_size: 16,
        shuffle_seed: 4,
        drop_last: false,
    };
    let spec = |placement| {
        MlpSpec::new(2, &[12, 8], 3).seed(5).batch_norm(BatchNorm {
            placement,
            ..BatchNorm::default()
        })
    };
    let engines: [fn() -> Box<dyn Engine>; 2] = [
        || Box::new(CpuEngine::new()),
        || Box::new(GpuEngine::new(gpu())),
    ];
    // 100 bytes: about one layer's gradients per bucket.
    let splits = [(true, None), (false, Some(100)), (true, Some(100))];
    for engine in engines {
        for placement in [BnPlacement::BeforeActivation, BnPlacement::AfterActivation] {
            let mut fused = Model::new(spec(placement), engine()).unwrap();
            fused.fit(&data, None, &opts, |_| {}).unwrap();
            let a = fused.state_dict().unwrap();
            assert!(a.iter().any(|t| t.name.ends_with("running_var")));
            for (sync_bn, bucket_bytes) in splits {
                let ctx = format!("{placement:?}, sync-bn {sync_bn}, buckets {bucket_bytes:?}");
                let mut split = Model::new(spec(placement), engine()).unwrap();
                let mut dist =
                    Distributed::new(Box::new(Solo), std::time::Duration::from_secs(60), 1);
                dist.sync_bn = sync_bn;
                dist.bucket_bytes = bucket_bytes;
                split.set_distributed(dist).unwrap();
                split.fit(&data, None, &opts, |_| {}).unwrap();
                let stats = split.exchange_stats().unwrap();
                // Two batch norms, forward and backward, each step.
                let bn = if sync_bn { 4 } else { 0 };
                assert_eq!(stats.bn_exchanges, bn * stats.steps, "{ctx}: {stats:?}");
                let buckets = stats.buckets / stats.steps;
                match bucket_bytes {
                    None => assert_eq!(buckets, 1, "{ctx}"),
                    Some(_) => assert!(buckets >= 3, "{ctx}: {buckets} buckets"),
                }
                let b = split.state_dict().unwrap();
                for (u, v) in a.iter().zip(&b) {
                    assert_eq!(u.name, v.name);
                    close(&u.values, &v.values, &format!("{} ({ctx})", u.name));
                }
            }
        }
    }
}
