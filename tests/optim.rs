//! Optimizers and learning-rate schedules: the CPU reference against torch's update rules
//! written out in `f64`, the GPU against the CPU for every optimizer op, schedules against
//! their formulas, bad settings as named errors, and 20 training steps of Adam with
//! clipping and dropout agreeing across backends.

mod common;

use common::{gpu, random, ODD_SIZES, VEC4_SIZES};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::{Engine, PlanId};
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::*;
use steadygrad::ops::{Momentum, Op};
use steadygrad::tensor::{Hyper, Storage, TensorId};
use steadygrad::{Clip, LrSchedule, MlpSpec, Model, Optimizer, Tolerance};

#[derive(Clone, Copy, Debug)]
enum Cfg {
    Sgd {
        mu: f32,
        nesterov: bool,
        wd: f32,
    },
    Adam {
        betas: (f32, f32),
        eps: f32,
        wd: f32,
        decoupled: bool,
    },
}

const CFGS: [Cfg; 7] = [
    Cfg::Sgd {
        mu: 0.0,
        nesterov: false,
        wd: 0.1,
    },
    Cfg::Sgd {
        mu: 0.9,
        nesterov: false,
        wd: 0.0,
    },
    Cfg::Sgd {
        mu: 0.5,
        nesterov: true,
        wd: 0.05,
    },
    Cfg::Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.0,
        decoupled: false,
    },
    Cfg::Adam {
        betas: (0.8, 0.99),
        eps: 1e-3,
        wd: 0.1,
        decoupled: false,
    },
    Cfg::Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.1,
        decoupled: true,
    },
    // beta1 = 0 takes the kernel's pow(0, t) guard.
    Cfg::Adam {
        betas: (0.0, 0.5),
        eps: 1e-8,
        wd: 0.0,
        decoupled: true,
    },
];

// Tensor ids of the one-optimizer plans below.
const PARAM: TensorId = 0;
const GRAD: TensorId = 1;
const STATE_A: TensorId = 2;
const STATE_B: TensorId = 3;
const STEP: TensorId = 4;

/// `[AdvanceStep, update]` over local tensors `param, grad, state_a, state_b, step`.
fn optimizer_plan(cfg: Cfg, len: usize) -> Plan {
    let mut plan = Plan::default();
    for (name, n) in [
        ("param", len),
        ("grad", len),
        ("state_a", len),
        ("state_b", len),
        ("step", 1),
    ] {
        plan.add_tensor(name, &[n], Storage::Local);
    }
    plan.forward
        .push(Op::AdvanceStep(AdvanceStep { counter: STEP }));
    plan.forward.push(match cfg {
        Cfg::Sgd { mu, nesterov, wd } => Op::Sgd(Sgd {
            param: PARAM,
            grad: GRAD,
            len,
            momentum: (mu > 0.0).then_some(Momentum {
                buffer: STATE_A,
                momentum: mu,
                nesterov,
            }),
            weight_decay: wd,
        }),
        Cfg::Adam {
            betas,
            eps,
            wd,
            decoupled,
        } => Op::Adam(Adam {
            param: PARAM,
            grad: GRAD,
            exp_avg: STATE_A,
            exp_avg_sq: STATE_B,
            step: STEP,
            len,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay: wd,
            decoupled,
            max_exp_avg_sq: None,
        }),
    });
    plan
}

/// Runs one step per gradient in `grads`; returns `[param, state_a, state_b]`.
fn run_steps(
    engine: &mut dyn Engine,
    cfg: Cfg,
    p0: &[f32],
    grads: &[Vec<f32>],
    lr: f32,
) -> [Vec<f32>; 3] {
    let plan = optimizer_plan(cfg, p0.len());
    engine.init_persistent(&[]).unwrap();
    engine.set_hyper(Hyper::lr(lr)).unwrap();
    let id: PlanId = engine.compile(&plan).unwrap();
    engine.write(id, PARAM, p0).unwrap();
    for g in grads {
        engine.write(id, GRAD, g).unwrap();
        engine.run(id, Stage::Predict).unwrap();
    }
    [PARAM, STATE_A, STATE_B].map(|t| engine.read(id, t).unwrap())
}

/// torch's single-tensor SGD and Adam/AdamW loops transcribed in `f64`, including SGD's
/// first-step `buf = clone(d_p)` (the engines instead start from a zero buffer).
fn torch_reference(cfg: Cfg, p0: &[f32], grads: &[Vec<f32>], lr: f32) -> Vec<f64> {
    let lr = lr as f64;
    let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    let n = p.len();
    match cfg {
        Cfg::Sgd { mu, nesterov, wd } => {
            let (mu, wd) = (mu as f64, wd as f64);
            let mut buf: Option<Vec<f64>> = None;
            for g in grads {
                let mut d: Vec<f64> = (0..n).map(|i| g[i] as f64 + wd * p[i]).collect();
                if mu != 0.0 {
                    let b = match buf.take() {
                        None => d.clone(),
                        Some(b) => (0..n).map(|i| mu * b[i] + d[i]).collect(),
                    };
                    d = if nesterov {
                        (0..n).map(|i| d[i] + mu * b[i]).collect()
                    } else {
                        b.clone()
                    };
                    buf = Some(b);
                }
                for i in 0..n {
                    p[i] -= lr * d[i];
                }
            }
        }
        Cfg::Adam {
            betas,
            eps,
            wd,
            decoupled,
        } => {
            let (b1, b2, eps, wd) = (betas.0 as f64, betas.1 as f64, eps as f64, wd as f64);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            for (t, g) in grads.iter().enumerate() {
                let t = (t + 1) as i32;
                for i in 0..n {
                    let mut g = g[i] as f64;
                    if decoupled {
                        p[i] *= 1.0 - lr * wd;
                    } else {
                        g += wd * p[i];
                    }
                    m[i] += (1.0 - b1) * (g - m[i]); // exp_avg.lerp_(grad, 1 - beta1)
                    v[i] = v[i] * b2 + (1.0 - b2) * g * g;
                    let step_size = lr / (1.0 - b1.powi(t));
                    let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                    p[i] -= step_size * m[i] / denom;
                }
            }
        }
    }
    p
}

/// The CPU reference keeps parameters and state in `f32` between steps, so after three
/// steps it may differ from the all-`f64` transcription by a few `f32` roundings:
/// `|cpu - ref| <= 1e-6 · max(1, |ref|)` (an `f32` half-ulp is 6e-8 relative). A wrong
/// rule (no bias correction, coupled instead of decoupled decay, a skipped momentum term)
/// moves the result by 1e-4 or more with the rates used here.
fn assert_matches_reference(what: &str, got: &[f32], want: &[f64]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn cpu_optimizers_match_torch_update_rules() {
    let len = 37;
    let p0 = random(len, 1);
    let grads: Vec<Vec<f32>> = (0..3).map(|s| random(len, 10 + s)).collect();
    for cfg in CFGS {
        let lr = match cfg {
            Cfg::Sgd { .. } => 0.1,
            Cfg::Adam { .. } => 0.01,
        };
        let [p, _, _] = run_steps(&mut CpuEngine::new(), cfg, &p0, &grads, lr);
        assert_matches_reference(
            &format!("{cfg:?}"),
            &p,
            &torch_reference(cfg, &p0, &grads, lr),
        );
    }
}

/// Sequences worked out by hand, independent of any transcription.
#[test]
fn optimizers_match_hand_computed_sequences() {
    let ones = vec![vec![1.0f32]; 3];
    // Heavy ball, lr 0.1, μ 0.9, g ≡ 1: buf 1, 1.9, 2.71 → p 0.9, 0.71, 0.439.
    let sgd = Cfg::Sgd {
        mu: 0.9,
        nesterov: false,
        wd: 0.0,
    };
    // Nesterov: d = g + μ·buf = 1.9, 2.71, 3.439 → p 0.81, 0.539, 0.1951.
    let nesterov = Cfg::Sgd {
        mu: 0.9,
        nesterov: true,
        wd: 0.0,
    };
    // L2 decay without momentum, lr 0.1, wd 0.5, g ≡ 1: p ← p − 0.1·(1 + 0.5p) = 0.95p − 0.1
    // → 0.85, 0.7075, 0.572125.
    let decay = Cfg::Sgd {
        mu: 0.0,
        nesterov: false,
        wd: 0.5,
    };
    for (cfg, want) in [(sgd, 0.439), (nesterov, 0.1951), (decay, 0.572125)] {
        for engine in engines() {
            let mut e = engine;
            let [p, _, _] = run_steps(e.as_mut(), cfg, &[1.0], &ones, 0.1);
            assert!((p[0] - want).abs() < 1e-6, "{cfg:?}: {} vs {want}", p[0]);
        }
    }
    // Adam on a constant gradient: bias correction makes m̂ = g and v̂ = g² exactly, so every
    // step moves by lr·g/(|g| + eps): after 3 steps p = 1 − 3·0.01·0.5/(0.5 + 1e-8).
    let adam = Cfg::Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.0,
        decoupled: false,
    };
    let half = vec![vec![0.5f32]; 3];
    let want = 1.0 - 3.0 * 0.01 * 0.5 / (0.5 + 1e-8);
    for engine in engines() {
        let mut e = engine;
        let [p, m, v] = run_steps(e.as_mut(), adam, &[1.0], &half, 0.01);
        assert!(
            (p[0] as f64 - want).abs() < 1e-6,
            "adam: {} vs {want}",
            p[0]
        );
        // Raw moments after 3 steps: m = (1 − β₁³)·g, v = (1 − β₂³)·g², with the β the
        // engines hold (0.999 as f32 is 0.99900001, which moves 1 − β₂³ by 1e-5 relative).
        let (b1, b2) = (0.9f32 as f64, 0.999f32 as f64);
        let m_want = (1.0 - b1.powi(3)) * 0.5;
        assert!((m[0] as f64 - m_want).abs() < 1e-7, "exp_avg {}", m[0]);
        let v_want = (1.0 - b2.powi(3)) * 0.25;
        assert!((v[0] as f64 - v_want).abs() < 1e-9, "exp_avg_sq {}", v[0]);
    }
}

fn engines() -> Vec<Box<dyn Engine>> {
    vec![Box::new(CpuEngine::new()), Box::new(GpuEngine::new(gpu()))]
}

/// Every optimizer op on the GPU against the CPU over three steps (so Adam's bias
/// correction sees t = 1, 2, 3), at sizes that are not multiples of the workgroup size,
/// scalar and `vec4` kernels.
/// Default tolerance (see `steadygrad::check::Tolerance`): the GPU rounds each term in
/// `f32` and computes βᵗ with `pow`, a few ulps from the reference.
#[test]
fn optimizer_ops_gpu_vs_cpu() {
    for cfg in CFGS {
        for len in ODD_SIZES.into_iter().chain(VEC4_SIZES) {
            let p0 = random(len, 3);
            let grads: Vec<Vec<f32>> = (0..3).map(|s| random(len, 20 + s)).collect();
            let g = run_steps(&mut GpuEngine::new(gpu()), cfg, &p0, &grads, 0.05);
            let c = run_steps(&mut CpuEngine::new(), cfg, &p0, &grads, 0.05);
            for (name, g, c) in [
                ("param", &g[0], &c[0]),
                ("state_a", &g[1], &c[1]),
                ("state_b", &g[2], &c[2]),
            ] {
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

/// Adam's bias corrections `1 − βᵗ` on the GPU at step counts from 1 to 10⁶: one update
/// from zero moments must match the CPU's (`f64`) to 1e-5 relative. `1 − pow(β, t)` in
/// `f32` misses this by ~1e-4 for small t (WGSL's `log2` is only good to 2⁻²¹ absolute
/// near 1); the kernel's `−expm1(t·ln β)` meets it.
#[test]
fn adam_bias_correction_is_accurate_at_any_step() {
    let cfg = Cfg::Adam {
        betas: (0.9, 0.999),
        eps: 1e-8,
        wd: 0.0,
        decoupled: false,
    };
    let len = 33;
    // Parameters start at 0, so the new parameter is the update itself, with no rounding
    // against a larger value.
    let (p0, g) = (vec![0.0; len], random(len, 31));
    for t0 in [0u32, 1, 2, 9, 99, 699, 999, 9_999, 999_999] {
        let deltas = engines().into_iter().map(|mut e| {
            let plan = optimizer_plan(cfg, len);
            e.init_persistent(&[]).unwrap();
            e.set_hyper(Hyper::lr(1e-3)).unwrap();
            let id = e.compile(&plan).unwrap();
            e.write(id, PARAM, &p0).unwrap();
            e.write(id, GRAD, &g).unwrap();
            e.write(id, STEP, &[f32::from_bits(t0)]).unwrap();
            e.run(id, Stage::Predict).unwrap();
            let p = e.read(id, PARAM).unwrap();
            p.iter().zip(&p0).map(|(a, b)| a - b).collect::<Vec<f32>>()
        });
        let [cpu, gpu]: [Vec<f32>; 2] = deltas.collect::<Vec<_>>().try_into().unwrap();
        let tol = Tolerance {
            atol: 0.0,
            rtol: 1e-5,
        };
        let t = steadygrad::check::compare("update", &gpu, &cpu, tol);
        assert!(t.pass, "step {}: max rel {:e}", t0 + 1, t.max_rel);
    }
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_settings_are_named() {
    let base = || MlpSpec::new(3, &[5, 4], 2);
    let adam = |betas, eps| Optimizer::Adam {
        lr: 1e-3,
        betas,
        eps,
        weight_decay: 0.0,
        amsgrad: false,
    };
    let cases: Vec<(MlpSpec, &str)> = vec![
        (
            base().optimizer(Optimizer::adam(0.0)),
            "learning rate must be",
        ),
        (
            base().optimizer(Optimizer::adamw(-1e-3)),
            "learning rate must be",
        ),
        (
            base().optimizer(Optimizer::sgd_momentum(0.1, 1.0)),
            "SGD momentum must be in [0, 1), got 1",
        ),
        (
            base().optimizer(Optimizer::sgd_momentum(0.1, -0.5)),
            "SGD momentum must be in [0, 1)",
        ),
        (
            base().optimizer(Optimizer::nesterov(0.1, 0.0)),
            "Nesterov momentum needs a momentum > 0",
        ),
        (
            base().optimizer(adam((1.0, 0.999), 1e-8)),
            "Adam beta1 must be in [0, 1), got 1",
        ),
        (
            base().optimizer(adam((0.9, -0.1), 1e-8)),
            "Adam beta2 must be in [0, 1)",
        ),
        (
            base().optimizer(adam((0.9, 0.999), 0.0)),
            "Adam eps must be a finite number > 0, got 0",
        ),
        (
            base().optimizer(adam((0.9, 0.999), f32::NAN)),
            "Adam eps must be",
        ),
        (
            base().optimizer(Optimizer::adamw(1e-3).with_weight_decay(-0.1)),
            "AdamW weight decay must be a finite number >= 0",
        ),
        (
            base().clip(Clip::Norm(0.0)),
            "clip max norm must be a finite number > 0",
        ),
        (base().clip(Clip::Norm(-1.0)), "clip max norm must be"),
        (
            base().clip(Clip::Value(f32::INFINITY)),
            "clip value must be a finite number > 0",
        ),
        (
            base().dropout(1.0),
            "dropout probability of hidden layer 0 must be in [0, 1), got 1",
        ),
        (
            base().dropout(-0.1),
            "dropout probability of hidden layer 0",
        ),
        (
            base().dropout_per_layer(&[0.1, f32::NAN]),
            "dropout probability of hidden layer 1",
        ),
        (
            base().dropout_per_layer(&[0.1]),
            "dropout lists 1 probabilities but the model has 2 hidden layers",
        ),
        (
            base().schedule(LrSchedule::Step {
                step_size: 0,
                gamma: 0.1,
            }),
            "step schedule: step_size must be at least 1",
        ),
        (
            base().schedule(LrSchedule::Step {
                step_size: 2,
                gamma: 0.0,
            }),
            "step schedule: gamma must be",
        ),
        (
            base().schedule(LrSchedule::Cosine {
                t_max: 0,
                eta_min: 0.0,
            }),
            "cosine schedule: t_max must be at least 1",
        ),
        (
            base().schedule(LrSchedule::Cosine {
                t_max: 5,
                eta_min: -1.0,
            }),
            "cosine schedule: eta_min must be",
        ),
    ];
    for (spec, want) in cases {
        let e = err_of(spec.validate());
        assert!(e.contains(want), "{e:?} should contain {want:?}");
        // Building a model refuses it the same way, on either backend.
        let e = err_of(Model::new(spec.clone(), Box::new(CpuEngine::new())));
        assert!(e.contains(want), "{e}");
    }
    // A hand-built plan with a bad constant is refused when compiled, not run.
    let plan = optimizer_plan(
        Cfg::Adam {
            betas: (0.9, 1.5),
            eps: 1e-8,
            wd: 0.0,
            decoupled: false,
        },
        4,
    );
    for mut engine in engines() {
        engine.init_persistent(&[]).unwrap();
        let e = err_of(engine.compile(&plan));
        assert!(e.contains("beta2 must be in [0, 1)"), "{e}");
    }
}

/// 20 training steps of a ReLU MLP with Adam, clipping and dropout: GPU and CPU end with
/// the same parameters, optimizer state and gradient norm.
///
/// Tolerance `max|gpu − cpu| <= 1e-5 + 1e-3·max|cpu|` per tensor, ten times the one-step
/// default: the `f32` rounding differences of each step feed into the next, and Adam
/// divides by `√v + eps`, so a gradient element that is pure rounding noise (≈1e-9) can
/// move its parameter by up to `lr·1e-9/eps` ≈ 0.1·lr per step. A wrong mask, a missing
/// clip or a wrong bias correction differs by ~lr = 1e-2 per step, far outside; the test
/// checks that a run without dropout fails the same comparison.
#[test]
fn twenty_steps_adam_clip_dropout_agree() {
    let tol = Tolerance {
        atol: 1e-5,
        rtol: 1e-3,
    };
    let spec = MlpSpec::new(5, &[33, 17, 33], 3)
        .optimizer(Optimizer::adamw(1e-2))
        .clip(Clip::Norm(0.5))
        .dropout(0.2)
        .warmup_steps(5)
        .seed(11);
    let run = |spec: &MlpSpec, engine: Box<dyn Engine>| {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        let mut norms = Vec::new();
        for s in 0..20u64 {
            let rows = [33, 7][s as usize % 2];
            let x = random(rows * 5, 100 + s);
            let y: Vec<f32> = (0..rows)
                .map(|r| ((r * 7 + s as usize) % 3) as f32)
                .collect();
            m.train_batch(&x, &y).unwrap();
            norms.push(m.last_grad_norm().unwrap().unwrap());
        }
        let mut tensors: Vec<(String, Vec<f32>)> = m
            .parameters()
            .unwrap()
            .into_iter()
            .chain(m.optimizer_state().unwrap())
            .map(|t| (t.name, t.values))
            .collect();
        tensors.push(("grad norms".to_string(), norms));
        tensors
    };
    let g = run(&spec, Box::new(GpuEngine::new(gpu())));
    let c = run(&spec, Box::new(CpuEngine::new()));
    let norms = &c.last().unwrap().1;
    assert!(
        norms.iter().filter(|&&n| n > 0.5).count() >= 5,
        "clipping must be active in several steps: {norms:?}"
    );
    let mut worst = 0.0f32;
    for ((name, gv), (_, cv)) in g.iter().zip(&c) {
        let t = steadygrad::check::compare(name, gv, cv, tol);
        assert!(
            t.pass,
            "{name} after 20 steps: max abs {:e}, rel {:e}",
            t.max_abs, t.max_rel
        );
        worst = worst.max(t.max_rel);
    }
    println!("worst relative difference after 20 steps: {worst:e}");
    let without_dropout = run(
        &MlpSpec {
            dropout: vec![],
            ..spec
        },
        Box::new(CpuEngine::new()),
    );
    let differs = g
        .iter()
        .zip(&without_dropout)
        .any(|((name, a), (_, b))| !steadygrad::check::compare(name, a, b, tol).pass);
    assert!(differs, "the comparison must be able to fail");
}

/// The same with SGD (Nesterov momentum, L2 decay), value clipping and per-layer dropout.
/// SGD's update is linear in the gradient, so the one-step default tolerance holds.
#[test]
fn twenty_steps_nesterov_clip_value_agree() {
    let spec = MlpSpec::new(5, &[33, 17], 3)
        .optimizer(Optimizer::nesterov(0.05, 0.9).with_weight_decay(1e-3))
        .clip(Clip::Value(0.05))
        .dropout_per_layer(&[0.5, 0.0])
        .schedule(LrSchedule::Cosine {
            t_max: 4,
            eta_min: 0.001,
        })
        .seed(3);
    let run = |engine: Box<dyn Engine>| {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        for s in 0..20u64 {
            m.set_epoch(s as usize / 5);
            let x = random(33 * 5, 200 + s);
            let y: Vec<f32> = (0..33).map(|r| ((r + s as usize) % 3) as f32).collect();
            m.train_batch(&x, &y).unwrap();
        }
        assert_eq!(m.last_grad_norm().unwrap(), None);
        m.parameters()
            .unwrap()
            .into_iter()
            .chain(m.optimizer_state().unwrap())
            .collect::<Vec<_>>()
    };
    let g = run(Box::new(GpuEngine::new(gpu())));
    let c = run(Box::new(CpuEngine::new()));
    assert_eq!(
        g.len(),
        12,
        "3 layers × (weight, bias) × (parameter, momentum buffer)"
    );
    for (a, b) in g.iter().zip(&c) {
        let t = steadygrad::check::compare(&a.name, &a.values, &b.values, Tolerance::default());
        assert!(t.pass, "{}: max abs {:e}", a.name, t.max_abs);
    }
}

/// The CLI's new flags reach the model, and bad combinations are errors, not panics.
#[test]
fn cli_flags() {
    let bin = env!("CARGO_BIN_EXE_steadygrad");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["--backend", "cpu", "train", "--depth", "2", "--width", "8"])
            .args(["--points", "20", "--epochs", "2"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&[
        "--optimizer",
        "adamw",
        "--clip-norm",
        "1",
        "--dropout",
        "0.1",
        "--schedule",
        "cosine",
        "--warmup-steps",
        "3",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)"),
        "{text}"
    );
    for (args, want) in [
        (&["--dropout", "1"][..], "dropout probability"),
        (
            &["--optimizer", "adam", "--momentum", "0.9"],
            "--momentum applies to --optimizer sgd and rmsprop only",
        ),
        (&["--nesterov"], "Nesterov momentum needs a momentum > 0"),
        (
            &["--clip-norm", "1", "--clip-value", "1"],
            "cannot be used with",
        ),
        (&["--clip-value", "0"], "clip value must be"),
        (&["--optimizer", "lbfgs"], "invalid value 'lbfgs'"),
        (
            &["--optimizer", "adam", "--centered"],
            "--centered applies to --optimizer rmsprop only",
        ),
        (
            &["--optimizer", "rmsprop", "--amsgrad"],
            "--amsgrad applies to --optimizer adam and adamw only",
        ),
        (
            &["--optimizer", "sgd", "--eps", "1e-3"],
            "--eps does not apply",
        ),
        (
            &["--optimizer", "rmsprop", "--alpha", "1"],
            "RMSprop alpha must be in [0, 1), got 1",
        ),
        (
            &["--optimizer", "adagrad", "--lr-decay", "-1"],
            "Adagrad lr_decay must be a finite number >= 0",
        ),
    ] {
        let (ok, text) = run(args);
        assert!(!ok && text.contains(want), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}
