//! Learning-rate schedules against their formulas and torch's chainable updates, applied
//! by the model per epoch (warm-up per step), written to the device only on change, and
//! advanced by `fit`.

mod common;

use common::{gpu, random};
use std::cell::RefCell;
use std::rc::Rc;
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::{Engine, PlanId};
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::{Plan, Stage};
use steadygrad::model::optim::warmup_factor;
use steadygrad::tensor::{Hyper, PersistentDesc, TensorId};
use steadygrad::{LrSchedule, MlpSpec, Model, Optimizer};

fn engines() -> Vec<Box<dyn Engine>> {
    vec![Box::new(CpuEngine::new()), Box::new(GpuEngine::new(gpu()))]
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
