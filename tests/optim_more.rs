//! RMSprop, Adagrad, Adamax, NAdam and AMSGrad: the CPU reference against torch's
//! single-tensor update rules transcribed in `f64`, hand-computed sequences, the GPU
//! against the CPU at odd and `vec4` sizes, exact resume from a checkpoint holding the
//! state under torch's keys, the configuration file and the CLI.

mod common;

use common::{gpu, random, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::*;
use steadygrad::tensor::{Hyper, Storage, TensorId};
use steadygrad::Tolerance;

#[derive(Clone, Copy, Debug)]
enum Cfg {
    Amsgrad {
        decoupled: bool,
        wd: f32,
    },
    Rms {
        alpha: f32,
        eps: f32,
        wd: f32,
        momentum: f32,
        centered: bool,
    },
    Adagrad {
        lr_decay: f32,
        wd: f32,
        eps: f32,
        init: f32,
    },
    Adamax {
        betas: (f32, f32),
        eps: f32,
        wd: f32,
    },
    Nadam {
        betas: (f32, f32),
        eps: f32,
        wd: f32,
        psi: f32,
    },
}

const CFGS: [Cfg; 12] = [
    Cfg::Amsgrad {
        decoupled: false,
        wd: 0.0,
    },
    Cfg::Amsgrad {
        decoupled: true,
        wd: 0.1,
    },
    // torch's defaults.
    Cfg::Rms {
        alpha: 0.99,
        eps: 1e-8,
        wd: 0.0,
        momentum: 0.0,
        centered: false,
    },
    Cfg::Rms {
        alpha: 0.9,
        eps: 1e-3,
        wd: 0.05,
        momentum: 0.8,
        centered: false,
    },
    Cfg::Rms {
        alpha: 0.9,
        eps: 1e-8,
        wd: 0.0,
        momentum: 0.0,
        centered: true,
    },
    Cfg::Rms {
        alpha: 0.5,
        eps: 1e-6,
        wd: 0.01,
        momentum: 0.9,
        centered: true,
    },
    Cfg::Adagrad {
        lr_decay: 0.0,
        wd: 0.0,
        eps: 1e-10,
        init: 0.0,
    },
    Cfg::Adagrad {
        lr_decay: 0.5,
        wd: 0.1,
        eps: 1e-10,
        init: 0.3,
    },
    Cfg::Adamax {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.0,
    },
    Cfg::Adamax {
        betas: (0.8, 0.5),
        eps: 1e-3,
        wd: 0.1,
    },
    Cfg::Nadam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.05,
        psi: 4e-3,
    },
    // A fast momentum decay, so that μ_t and μ_{t+1} differ by 2% and a kernel that
    // confused them would fail the GPU comparison (at ψ = 4e-3 they differ by 1e-4).
    Cfg::Nadam {
        betas: (0.8, 0.9),
        eps: 1e-6,
        wd: 0.0,
        psi: 0.5,
    },
];

// Tensor ids of the one-optimizer plans below.
const PARAM: TensorId = 0;
const GRAD: TensorId = 1;
const S0: TensorId = 2;
const S1: TensorId = 3;
const S2: TensorId = 4;
const MU: TensorId = 5;
const STEP: TensorId = 6;

/// `[AdvanceStep, update ops]` over local tensors; the states the optimizer does not use
/// stay unread.
fn plan(cfg: Cfg, len: usize) -> Plan {
    let mut plan = Plan::default();
    for (name, n) in [
        ("param", len),
        ("grad", len),
        ("s0", len),
        ("s1", len),
        ("s2", len),
        ("mu_product", 1),
        ("step", 1),
    ] {
        plan.add_tensor(name, &[n], Storage::Local);
    }
    plan.forward
        .push(Op::AdvanceStep(AdvanceStep { counter: STEP }));
    let (param, grad) = (PARAM, GRAD);
    match cfg {
        Cfg::Amsgrad { decoupled, wd } => plan.forward.push(Op::Adam(Adam {
            param,
            grad,
            exp_avg: S0,
            exp_avg_sq: S1,
            step: STEP,
            len,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            decoupled,
            max_exp_avg_sq: Some(S2),
        })),
        Cfg::Rms {
            alpha,
            eps,
            wd,
            momentum,
            centered,
        } => plan.forward.push(Op::Rmsprop(Rmsprop {
            param,
            grad,
            square_avg: S0,
            momentum_buffer: (momentum > 0.0).then_some(S1),
            grad_avg: centered.then_some(S2),
            len,
            alpha,
            eps,
            weight_decay: wd,
            momentum,
        })),
        Cfg::Adagrad {
            lr_decay, wd, eps, ..
        } => plan.forward.push(Op::Adagrad(Adagrad {
            param,
            grad,
            sum: S0,
            step: STEP,
            len,
            lr_decay,
            eps,
            weight_decay: wd,
        })),
        Cfg::Adamax { betas, eps, wd } => plan.forward.push(Op::Adamax(Adamax {
            param,
            grad,
            exp_avg: S0,
            exp_inf: S1,
            step: STEP,
            len,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay: wd,
        })),
        Cfg::Nadam {
            betas,
            eps,
            wd,
            psi,
        } => {
            plan.forward.push(Op::NadamMuProduct(NadamMuProduct {
                mu_product: MU,
                step: STEP,
                beta1: betas.0,
                momentum_decay: psi,
            }));
            plan.forward.push(Op::Nadam(Nadam {
                param,
                grad,
                exp_avg: S0,
                exp_avg_sq: S1,
                mu_product: MU,
                step: STEP,
                len,
                beta1: betas.0,
                beta2: betas.1,
                eps,
                weight_decay: wd,
                momentum_decay: psi,
            }));
        }
    }
    plan
}

/// Runs one step per gradient; returns `[param, s0, s1, s2, mu_product]`.
fn run_steps(
    engine: &mut dyn Engine,
    cfg: Cfg,
    p0: &[f32],
    grads: &[Vec<f32>],
    lr: f32,
) -> [Vec<f32>; 5] {
    let plan = plan(cfg, p0.len());
    engine.init_persistent(&[]).unwrap();
    engine.set_hyper(Hyper::lr(lr)).unwrap();
    let id = engine.compile(&plan).unwrap();
    engine.write(id, PARAM, p0).unwrap();
    // torch's starting values: Adagrad's accumulator, NAdam's product of 1.
    if let Cfg::Adagrad { init, .. } = cfg {
        engine.write(id, S0, &vec![init; p0.len()]).unwrap();
    }
    engine.write(id, MU, &[1.0]).unwrap();
    for g in grads {
        engine.write(id, GRAD, g).unwrap();
        engine.run(id, Stage::Predict).unwrap();
    }
    [PARAM, S0, S1, S2, MU].map(|t| engine.read(id, t).unwrap())
}

/// torch's `_single_tensor_*` loops transcribed in `f64` (tensor ops written per element,
/// `lerp_(g, w)` as `x + w·(g − x)`).
fn torch_reference(cfg: Cfg, p0: &[f32], grads: &[Vec<f32>], lr: f32) -> Vec<f64> {
    let lr = lr as f64;
    let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    let n = p.len();
    let f = |v: f32| v as f64;
    match cfg {
        Cfg::Amsgrad { decoupled, wd } => {
            let (b1, b2, eps, wd) = (f(0.9), f(0.999), f(1e-8), f(wd));
            let (mut m, mut v, mut vmax) = (vec![0.0; n], vec![0.0; n], vec![0.0f64; n]);
            for (t, g) in grads.iter().enumerate() {
                let t = (t + 1) as i32;
                for i in 0..n {
                    let mut g = f(g[i]);
                    if decoupled {
                        p[i] *= 1.0 - lr * wd;
                    } else {
                        g += wd * p[i];
                    }
                    m[i] += (1.0 - b1) * (g - m[i]);
                    v[i] = v[i] * b2 + (1.0 - b2) * g * g;
                    vmax[i] = vmax[i].max(v[i]);
                    let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
                    let denom = vmax[i].sqrt() / bc2_sqrt + eps;
                    p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
                }
            }
        }
        Cfg::Rms {
            alpha,
            eps,
            wd,
            momentum,
            centered,
        } => {
            let (alpha, eps, wd, mu) = (f(alpha), f(eps), f(wd), f(momentum));
            let (mut sq, mut buf, mut ga) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for g in grads {
                for i in 0..n {
                    let g = f(g[i]) + wd * p[i];
                    sq[i] = sq[i] * alpha + (1.0 - alpha) * g * g;
                    let avg = if centered {
                        ga[i] += (1.0 - alpha) * (g - ga[i]);
                        (sq[i] - ga[i] * ga[i]).sqrt()
                    } else {
                        sq[i].sqrt()
                    } + eps;
                    if mu > 0.0 {
                        buf[i] = buf[i] * mu + g / avg;
                        p[i] -= lr * buf[i];
                    } else {
                        p[i] -= lr * g / avg;
                    }
                }
            }
        }
        Cfg::Adagrad {
            lr_decay,
            wd,
            eps,
            init,
        } => {
            let (lr_decay, wd, eps) = (f(lr_decay), f(wd), f(eps));
            let mut sum = vec![f(init); n];
            for (t, g) in grads.iter().enumerate() {
                let step = (t + 1) as f64;
                let clr = lr / (1.0 + (step - 1.0) * lr_decay);
                for i in 0..n {
                    let g = f(g[i]) + wd * p[i];
                    sum[i] += g * g;
                    p[i] -= clr * g / (sum[i].sqrt() + eps);
                }
            }
        }
        Cfg::Adamax { betas, eps, wd } => {
            let (b1, b2, eps, wd) = (f(betas.0), f(betas.1), f(eps), f(wd));
            let (mut m, mut u) = (vec![0.0; n], vec![0.0f64; n]);
            for (t, g) in grads.iter().enumerate() {
                let t = (t + 1) as i32;
                for i in 0..n {
                    let g = f(g[i]) + wd * p[i];
                    m[i] += (1.0 - b1) * (g - m[i]);
                    u[i] = (u[i] * b2).max(g.abs() + eps);
                    p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / u[i];
                }
            }
        }
        Cfg::Nadam {
            betas,
            eps,
            wd,
            psi,
        } => {
            let (b1, b2, eps, wd, psi) = (f(betas.0), f(betas.1), f(eps), f(wd), f(psi));
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let mut mu_product = 1.0;
            for (t, g) in grads.iter().enumerate() {
                let step = (t + 1) as f64;
                let bias_correction2 = 1.0 - b2.powf(step);
                let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(step * psi));
                let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * psi));
                mu_product *= mu;
                for i in 0..n {
                    let g = f(g[i]) + wd * p[i];
                    m[i] += (1.0 - b1) * (g - m[i]);
                    v[i] = v[i] * b2 + (1.0 - b2) * g * g;
                    let denom = (v[i] / bias_correction2).sqrt() + eps;
                    p[i] -= lr * (1.0 - mu) / (1.0 - mu_product) * g / denom;
                    p[i] -= lr * mu_next / (1.0 - mu_product * mu_next) * m[i] / denom;
                }
            }
        }
    }
    p
}

/// The CPU reference keeps parameters and state in `f32` between steps, so after three
/// steps it may differ from the all-`f64` transcription by a few `f32` roundings:
/// `|cpu − ref| <= 1e-6 · max(1, |ref|)` (an `f32` half-ulp is 6e-8 relative). A wrong
/// rule (a missing bias correction, the wrong μ, an uncentered denominator) moves the
/// result by 1e-4 or more at the rates used here; the test checks that perturbing each
/// configuration's own constant fails the comparison.
fn matches(got: &[f32], want: &[f64]) -> Option<String> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (&g, &w))| (g as f64 - w).abs() > 1e-6 * w.abs().max(1.0))
        .map(|(i, (g, w))| format!("[{i}]: got {g}, want {w}"))
}

/// The same configuration with its distinguishing constant nudged, for the negative
/// control: a reference that could not tell these apart would prove nothing.
fn nudged(cfg: Cfg) -> Cfg {
    match cfg {
        Cfg::Amsgrad { decoupled, wd } => Cfg::Amsgrad {
            decoupled: !decoupled,
            wd: wd + 0.1,
        },
        Cfg::Rms {
            alpha,
            eps,
            wd,
            momentum,
            centered,
        } => Cfg::Rms {
            alpha,
            eps,
            wd,
            momentum,
            centered: !centered,
        },
        Cfg::Adagrad {
            lr_decay,
            wd,
            eps,
            init,
        } => Cfg::Adagrad {
            lr_decay: lr_decay + 0.1,
            wd,
            eps,
            init,
        },
        Cfg::Adamax { betas, eps, wd } => Cfg::Adamax {
            betas: (betas.0 - 0.1, betas.1),
            eps,
            wd,
        },
        Cfg::Nadam {
            betas,
            eps,
            wd,
            psi,
        } => Cfg::Nadam {
            betas,
            eps,
            wd,
            psi: psi * 10.0,
        },
    }
}

#[test]
fn cpu_optimizers_match_torch_update_rules() {
    let len = 37;
    let p0 = random(len, 1);
    // Gradients that shrink, so AMSGrad's maximum differs from the current second moment.
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|s| {
            random(len, 10 + s)
                .iter()
                .map(|g| g / (1 + 3 * s) as f32)
                .collect()
        })
        .collect();
    let lr = 0.01;
    for cfg in CFGS {
        let [p, ..] = run_steps(&mut CpuEngine::new(), cfg, &p0, &grads, lr);
        if let Some(e) = matches(&p, &torch_reference(cfg, &p0, &grads, lr)) {
            panic!("{cfg:?}{e}");
        }
        assert!(
            matches(&p, &torch_reference(nudged(cfg), &p0, &grads, lr)).is_some(),
            "{cfg:?}: the comparison cannot tell it from {:?}",
            nudged(cfg)
        );
    }
}

/// Sequences worked out by hand, independent of any transcription, on both backends.
#[test]
fn hand_computed_sequences() {
    let engines = || -> Vec<Box<dyn Engine>> {
        vec![Box::new(CpuEngine::new()), Box::new(GpuEngine::new(gpu()))]
    };
    let g = |v: f32| vec![vec![v]; 3];
    for mut e in engines() {
        // Adagrad, g ≡ 0.5: sum_t = t/4, each step moves lr·0.5/(√t/2) = lr/√t.
        let cfg = CFGS[6];
        let [p, s, ..] = run_steps(e.as_mut(), cfg, &[1.0], &g(0.5), 0.1);
        let want = 1.0 - 0.1 * (1.0 + 0.5f64.sqrt() + (1.0f64 / 3.0).sqrt());
        assert!(
            (p[0] as f64 - want).abs() < 1e-6,
            "adagrad {} vs {want}",
            p[0]
        );
        assert_eq!(s[0], 0.75, "adagrad sum");
        // RMSprop (α 0.99), g ≡ 0.5: square_avg_t = (1 − αᵗ)/4, step t moves
        // lr·0.5/(0.5·√(1 − αᵗ) + eps).
        let cfg = CFGS[2];
        let [p, s, ..] = run_steps(e.as_mut(), cfg, &[1.0], &g(0.5), 0.01);
        let a = 0.99f32 as f64;
        let want = 1.0
            - (1..=3)
                .map(|t| 0.01 * 0.5 / (0.5 * (1.0 - a.powi(t)).sqrt() + 1e-8))
                .sum::<f64>();
        assert!(
            (p[0] as f64 - want).abs() < 1e-5,
            "rmsprop {} vs {want}",
            p[0]
        );
        assert!((s[0] as f64 - (1.0 - a.powi(3)) / 4.0).abs() < 1e-8);
        // Adamax, g ≡ 0.5: exp_inf = 0.5 + eps throughout, m̂ = g, so each step moves
        // lr·0.5/(0.5 + 1e-8).
        let cfg = CFGS[8];
        let [p, _, u, ..] = run_steps(e.as_mut(), cfg, &[1.0], &g(0.5), 0.01);
        let want = 1.0 - 3.0 * 0.01 * 0.5 / (0.5 + 1e-8);
        assert!(
            (p[0] as f64 - want).abs() < 1e-6,
            "adamax {} vs {want}",
            p[0]
        );
        assert_eq!(u[0], 0.5, "exp_inf");
        // AMSGrad with g = 1 then 0, 0: exp_avg_sq decays as β₂ᵗ⁻¹·(1 − β₂), the maximum
        // keeps the first step's 1 − β₂.
        let cfg = CFGS[0];
        let grads = [vec![1.0], vec![0.0], vec![0.0]];
        let [_, _, v, vmax, _] = run_steps(e.as_mut(), cfg, &[1.0], &grads, 0.01);
        let first = 1.0 - 0.999f32;
        assert_eq!(vmax[0], first, "max_exp_avg_sq");
        assert!(
            v[0] < vmax[0],
            "exp_avg_sq {} decays below the maximum",
            v[0]
        );
        // NAdam's product after 3 steps: Π μ_t with μ_t = 0.9·(1 − ½·0.96^(0.004·t)).
        let cfg = CFGS[10];
        let [.., mu] = run_steps(e.as_mut(), cfg, &[1.0], &g(0.5), 0.01);
        let want: f64 = (1..=3)
            .map(|t| 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.004 * t as f64)))
            .product();
        assert!(
            (mu[0] as f64 - want).abs() < 1e-7,
            "mu_product {} vs {want}",
            mu[0]
        );
    }
}

/// Every new update on the GPU against the CPU over three steps, at sizes that are not
/// multiples of the workgroup, scalar and `vec4` kernels, every state compared.
/// Default tolerance (1e-6 absolute + 1e-4 relative): the GPU rounds each term in `f32`
/// and its `exp` and `sqrt` are a few ulps from the CPU's `f64`.
#[test]
fn gpu_matches_cpu() {
    for cfg in CFGS {
        for len in ODD_SIZES.into_iter().chain(VEC4_SIZES) {
            // Small starting weights, so the comparison is relative to the updates rather
            // than to weights of order 1 that would hide an error in them.
            let p0: Vec<f32> = random(len, 3).iter().map(|v| v * 0.01).collect();
            // Step 2's gradients are tiny, near eps, where the denominators are most
            // sensitive (the regime of gradients that are rounding noise).
            let grads: Vec<Vec<f32>> = (0..3)
                .map(|s| {
                    let scale = if s == 1 { 1e-7 } else { 1.0 };
                    random(len, 20 + s).iter().map(|g| g * scale).collect()
                })
                .collect();
            let g = run_steps(&mut GpuEngine::new(gpu()), cfg, &p0, &grads, 0.01);
            let c = run_steps(&mut CpuEngine::new(), cfg, &p0, &grads, 0.01);
            for (name, g, c) in ["param", "s0", "s1", "s2", "mu_product"]
                .iter()
                .zip(&g)
                .zip(&c)
                .map(|((n, g), c)| (n, g, c))
            {
                let t = steadygrad::check::compare(name, g, c, Tolerance::default());
                assert!(
                    t.pass,
                    "{cfg:?} len {len}: {name} max abs {:e} rel {:e}",
                    t.max_abs, t.max_rel
                );
            }
        }
    }
}

/// Tensors over the device's binding limit (forced down to 4 KiB here): every update is
/// split into windows of elements, with the step counter, NAdam's product and the
/// switched-off state bindings bound whole, and matches the CPU as the unsplit kernels
/// do (same tolerance as `gpu_matches_cpu`).
#[test]
fn updates_split_over_small_bindings() {
    for cfg in CFGS {
        for len in [3001, 3000] {
            let p0: Vec<f32> = random(len, 5).iter().map(|v| v * 0.01).collect();
            let grads: Vec<Vec<f32>> = (0..3).map(|s| random(len, 40 + s)).collect();
            let mut engine = GpuEngine::new(gpu());
            engine.limit_memory(4096, u64::MAX);
            let g = run_steps(&mut engine, cfg, &p0, &grads, 0.01);
            let c = run_steps(&mut CpuEngine::new(), cfg, &p0, &grads, 0.01);
            for (i, (g, c)) in g.iter().zip(&c).enumerate() {
                let t = steadygrad::check::compare("split", g, c, Tolerance::default());
                assert!(
                    t.pass,
                    "{cfg:?} len {len} output {i}: max abs {:e}",
                    t.max_abs
                );
            }
        }
    }
}
