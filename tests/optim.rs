//! Optimizers and learning-rate schedules: the CPU reference against torch's update rules
//! written out in `f64`, the GPU against the CPU for every optimizer op, schedules against
//! their formulas, bad settings as named errors, and 20 training steps of Adam with
//! clipping and dropout agreeing across backends.

mod common;

use common::{gpu, random, ODD_SIZES, VEC4_SIZES};
use std::cell::RefCell;
use std::rc::Rc;
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::{Engine, PlanId};
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::{Plan, Stage};
use steadygrad::model::optim::warmup_factor;
use steadygrad::ops::*;
use steadygrad::ops::{Momentum, Op};
use steadygrad::tensor::{Hyper, PersistentDesc, Storage, TensorId};
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

#[test]
fn schedules_match_their_formulas() {
    let base = 0.1f32;
    let step = LrSchedule::Step {
        step_size: 3,
        gamma: 0.5,
    };
    // Formulas in f64 from the f32 base rate the optimizer holds.
    let b = base as f64;
    let factors = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125];
    for (e, &f) in factors.iter().enumerate() {
        assert_eq!(step.lr(base, e), b * f, "step epoch {e}");
    }
    let cosine = LrSchedule::Cosine {
        t_max: 10,
        eta_min: 0.001,
    };
    let eta = 0.001f32 as f64;
    for e in 0..=20 {
        let want = eta + (b - eta) * (1.0 + (std::f64::consts::PI * e as f64 / 10.0).cos()) / 2.0;
        assert!(
            (cosine.lr(base, e) - want).abs() < 1e-12,
            "cosine epoch {e}"
        );
    }
    // Landmarks: the full rate at 0, the midpoint at T_max/2, eta_min at T_max, and back
    // up to the full rate at 2·T_max as torch's periodic closed form does.
    assert!((cosine.lr(base, 0) - b).abs() < 1e-12);
    assert!((cosine.lr(base, 5) - (b + eta) / 2.0).abs() < 1e-12);
    assert!((cosine.lr(base, 10) - eta).abs() < 1e-12);
    assert!((cosine.lr(base, 20) - b).abs() < 1e-12);
    assert_eq!(LrSchedule::Constant.lr(base, 7), b);
    // Warm-up over 4 steps: 1/4, 2/4, 3/4, then the full rate.
    let w: Vec<f64> = (1..=6).map(|s| warmup_factor(s, 4)).collect();
    assert_eq!(w, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    assert_eq!(warmup_factor(1, 0), 1.0);
    // Combined: the epoch schedule times the warm-up factor.
    let spec = MlpSpec::new(2, &[3], 2)
        .optimizer(Optimizer::sgd(base))
        .schedule(step)
        .warmup_steps(4);
    assert_eq!(spec.lr_at(0, 1), (b * 0.25) as f32);
    assert_eq!(spec.lr_at(3, 2), (b * 0.5 * 0.5) as f32);
    assert_eq!(spec.lr_at(6, 100), (b * 0.25) as f32);
}

/// An engine that records every hyper-parameter write, to see when the host writes.
struct Recording {
    inner: Box<dyn Engine>,
    lrs: Rc<RefCell<Vec<f32>>>,
}

impl Engine for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn is_gpu(&self) -> bool {
        self.inner.is_gpu()
    }
    fn init_persistent(&mut self, p: &[PersistentDesc]) -> anyhow::Result<()> {
        self.inner.init_persistent(p)
    }
    fn read_persistent(&mut self, slot: usize) -> anyhow::Result<Vec<f32>> {
        self.inner.read_persistent(slot)
    }
    fn write_persistent(&mut self, slot: usize, data: &[f32]) -> anyhow::Result<()> {
        self.inner.write_persistent(slot, data)
    }
    fn compile(&mut self, plan: &Plan) -> anyhow::Result<PlanId> {
        self.inner.compile(plan)
    }
    fn write(&mut self, plan: PlanId, t: TensorId, data: &[f32]) -> anyhow::Result<()> {
        self.inner.write(plan, t, data)
    }
    fn read(&mut self, plan: PlanId, t: TensorId) -> anyhow::Result<Vec<f32>> {
        self.inner.read(plan, t)
    }
    fn run(&mut self, plan: PlanId, stage: Stage) -> anyhow::Result<()> {
        self.inner.run(plan, stage)
    }
    fn set_hyper(&mut self, hyper: Hyper) -> anyhow::Result<()> {
        self.lrs.borrow_mut().push(hyper.lr);
        self.inner.set_hyper(hyper)
    }
}

/// The model applies the schedule per epoch and the warm-up per step, each step really
/// uses that rate (`p_after = p_before − lr·g` for plain SGD), and the host writes the
/// hyper-parameter block only when the rate changes.
#[test]
fn model_applies_schedule_and_writes_lr_only_on_change() {
    for engine in engines() {
        let lrs = Rc::new(RefCell::new(Vec::new()));
        let spec = MlpSpec::new(3, &[5], 2)
            .optimizer(Optimizer::sgd(0.1))
            .schedule(LrSchedule::Step {
                step_size: 1,
                gamma: 0.5,
            })
            .warmup_steps(3)
            .seed(4);
        let gpu = engine.is_gpu();
        let recording = Recording {
            inner: engine,
            lrs: lrs.clone(),
        };
        let mut model = Model::new(spec, Box::new(recording)).unwrap();
        let (x, y) = (random(4 * 3, 5), vec![0.0, 1.0, 1.0, 0.0]);
        // The schedule's formula, from the same f32 base rate the spec holds.
        let rate = |epoch: i32, s: u64| {
            (0.1f32 as f64 * 0.5f64.powi(epoch) * (s as f64 / 3.0).min(1.0)) as f32
        };
        let mut s = 0u64;
        for epoch in 0..3 {
            model.set_epoch(epoch);
            for _ in 0..2 {
                s += 1;
                let before = model.parameters().unwrap();
                model.train_batch(&x, &y).unwrap();
                let want = rate(epoch as i32, s);
                assert_eq!(model.lr(), want, "gpu={gpu} epoch {epoch} step {s}");
                let after = model.parameters().unwrap();
                for (b, a) in before.iter().zip(&after) {
                    let g = model.read_tensor(4, &format!("{}.grad", b.name)).unwrap();
                    for (i, &gi) in g.iter().enumerate() {
                        let expect = b.values[i] - want * gi;
                        assert!(
                            (a.values[i] - expect).abs() <= 1e-6,
                            "gpu={gpu} step {s} {}[{i}]: {} vs {expect}",
                            b.name,
                            a.values[i]
                        );
                    }
                }
            }
        }
        // Model::new writes the base rate; then steps 1, 2, 3 (warm-up), 5 (epoch 2)
        // change it; steps 4 and 6 reuse the rate already on the device.
        let expect = [0.1, rate(0, 1), rate(0, 2), rate(1, 3), rate(2, 5)];
        assert_eq!(*lrs.borrow(), expect, "gpu={gpu}");
    }
}

#[test]
fn fit_advances_the_schedule_epoch() {
    let data = steadygrad::data::synthetic::spirals(10, 2, 0.05, 1); // 20 rows
    let spec = MlpSpec::new(2, &[8], 2)
        .optimizer(Optimizer::adam(0.01))
        .schedule(LrSchedule::Cosine {
            t_max: 4,
            eta_min: 0.0,
        });
    let mut model = Model::new(spec.clone(), Box::new(CpuEngine::new())).unwrap();
    let opts = steadygrad::FitOptions {
        epochs: 3,
        batch_size: 8,
        shuffle_seed: 0,
        drop_last: false,
    };
    model.fit(&data, None, &opts, |_| {}).unwrap();
    assert_eq!(model.epoch(), 3);
    // The last step was step 9 (3 batches per epoch) in epoch 2.
    assert_eq!(model.lr(), spec.lr_at(2, 9));
    assert!((model.lr() as f64 - 0.005).abs() < 1e-9, "{}", model.lr());
    assert_eq!(model.steps().unwrap(), 9);
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

/// ExponentialLR, PolynomialLR and MultiStepLR: the closed forms the engine uses against torch's own
/// chainable updates (each epoch's rate from the previous one, as `get_lr` computes
/// them), in f64, through and past `total_iters`; then a model trained under each
/// lands on the formula's rate after `fit`, and bad settings are named.
#[test]
fn exponential_and_polynomial_schedules_match_torch() {
    let base = 0.1f32;
    let b = base as f64;
    let exp = LrSchedule::Exponential { gamma: 0.8 };
    let mut torch = b;
    for e in 0..12 {
        if e > 0 {
            torch *= 0.8f32 as f64;
        }
        let ours = exp.lr(base, e);
        assert!(
            (ours - torch).abs() <= 1e-12 * b,
            "exponential epoch {e}: {ours} vs {torch}"
        );
    }
    for (total, power) in [(5usize, 1.0f32), (7, 2.0), (4, 0.5)] {
        let poly = LrSchedule::Polynomial {
            total_iters: total,
            power,
        };
        let (t, p) = (total as f64, power as f64);
        let mut torch = b;
        for e in 0..12usize {
            if e > 0 && e <= total {
                let k = e as f64;
                torch *= ((1.0 - k / t) / (1.0 - (k - 1.0) / t)).powf(p);
            }
            let ours = poly.lr(base, e);
            assert!(
                (ours - torch).abs() <= 1e-12 * b,
                "polynomial({total}, {power}) epoch {e}: {ours} vs {torch}"
            );
        }
        assert_eq!(poly.lr(base, total), 0.0, "zero at total_iters");
    }
    // MultiStepLR([3, 7], 0.1): torch multiplies by gamma at each milestone epoch.
    let multi = LrSchedule::MultiStep {
        milestones: vec![3, 7],
        gamma: 0.1,
    };
    let mut torch = b;
    for e in 0..10usize {
        if e == 3 || e == 7 {
            torch *= 0.1f32 as f64;
        }
        let ours = multi.lr(base, e);
        assert!(
            (ours - torch).abs() <= 1e-12 * b,
            "multistep epoch {e}: {ours} vs {torch}"
        );
    }

    let data = steadygrad::data::synthetic::spirals(10, 2, 0.05, 1); // 20 rows
    for schedule in [
        exp.clone(),
        LrSchedule::Polynomial {
            total_iters: 5,
            power: 2.0,
        },
        LrSchedule::MultiStep {
            milestones: vec![1, 2],
            gamma: 0.5,
        },
    ] {
        let spec = MlpSpec::new(2, &[8], 2)
            .optimizer(Optimizer::sgd(base))
            .schedule(schedule.clone());
        let mut model = Model::new(spec.clone(), Box::new(CpuEngine::new())).unwrap();
        let opts = steadygrad::FitOptions {
            epochs: 3,
            batch_size: 8,
            shuffle_seed: 0,
            drop_last: false,
        };
        model.fit(&data, None, &opts, |_| {}).unwrap();
        let want = schedule.lr(base, 2) as f32;
        assert!(
            (model.lr() - want).abs() <= 1e-7,
            "{schedule:?}: {} vs {want}",
            model.lr()
        );
    }

    for (bad, what) in [
        (
            LrSchedule::Exponential { gamma: 1.5 },
            "gamma must be in (0, 1]",
        ),
        (
            LrSchedule::Exponential { gamma: 0.0 },
            "gamma must be in (0, 1]",
        ),
        (
            LrSchedule::Polynomial {
                total_iters: 0,
                power: 1.0,
            },
            "total_iters must be at least 1",
        ),
        (
            LrSchedule::Polynomial {
                total_iters: 3,
                power: f32::NAN,
            },
            "power must be a finite number",
        ),
        (
            LrSchedule::MultiStep {
                milestones: vec![5, 3],
                gamma: 0.1,
            },
            "increasing list",
        ),
        (
            LrSchedule::MultiStep {
                milestones: Vec::new(),
                gamma: 0.1,
            },
            "non-empty",
        ),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(what), "{bad:?}: {e}");
    }
}
