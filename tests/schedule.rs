//! One-cycle and reduce-on-plateau against PyTorch's own code, replicated here in f64
//! (`torch/optim/lr_scheduler.py`, `OneCycleLR.get_lr` and `ReduceLROnPlateau.step`), the
//! rates the trainer actually used, bad settings, and exact resume on both backends.

mod common;

use common::TempDir;
use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::plateau::{Plateau, ThresholdMode};
use steadygrad::model::schedule::{Anneal, OneCycle};
use steadygrad::{Engine, FitOptions, LrSchedule, MlpSpec, Model, Optimizer};

/// torch's `OneCycleLR`, transcribed: `_schedule_phases` as built in `__init__`, then
/// `get_lr` for `step_num` (`last_epoch`), with its `_annealing_cos`/`_annealing_linear`.
fn torch_one_cycle(c: &OneCycle, step_num: f64) -> (f64, f64) {
    let max_lr = c.max_lr as f64;
    let initial_lr = max_lr / c.div_factor as f64;
    let min_lr = initial_lr / c.final_div_factor as f64;
    let (base_m, max_m) = (c.base_momentum as f64, c.max_momentum as f64);
    let total = c.total_steps as f64;
    let pct = c.pct_start as f64;
    // (end_step, start_lr, end_lr, start_momentum, end_momentum)
    let phases: Vec<(f64, f64, f64, f64, f64)> = if c.three_phase {
        vec![
            (pct * total - 1.0, initial_lr, max_lr, max_m, base_m),
            (2.0 * pct * total - 2.0, max_lr, initial_lr, base_m, max_m),
            (total - 1.0, initial_lr, min_lr, max_m, max_m),
        ]
    } else {
        vec![
            (pct * total - 1.0, initial_lr, max_lr, max_m, base_m),
            (total - 1.0, max_lr, min_lr, base_m, max_m),
        ]
    };
    let anneal = |start: f64, end: f64, pct: f64| match c.anneal {
        Anneal::Cos => {
            let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
            end + (start - end) / 2.0 * cos_out
        }
        Anneal::Linear => (end - start) * pct + start,
    };
    let mut start_step = 0.0;
    for (i, &(end_step, slr, elr, sm, em)) in phases.iter().enumerate() {
        if step_num <= end_step || i == phases.len() - 1 {
            let pct = (step_num - start_step) / (end_step - start_step);
            return (anneal(slr, elr, pct), anneal(sm, em, pct));
        }
        start_step = end_step;
    }
    unreachable!()
}

/// torch's `ReduceLROnPlateau` (mode 'min'), transcribed.
struct TorchPlateau {
    factor: f64,
    patience: usize,
    threshold: f64,
    rel: bool,
    cooldown: usize,
    min_lr: f64,
    eps: f64,
    best: f64,
    num_bad_epochs: usize,
    cooldown_counter: usize,
    lr: f64,
}

impl TorchPlateau {
    fn new(p: &Plateau, lr: f64) -> Self {
        TorchPlateau {
            factor: p.factor as f64,
            patience: p.patience,
            threshold: p.threshold as f64,
            rel: p.threshold_mode == ThresholdMode::Rel,
            cooldown: p.cooldown,
            min_lr: p.min_lr as f64,
            eps: p.eps as f64,
            best: f64::INFINITY,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            lr,
        }
    }

    fn is_better(&self, a: f64) -> bool {
        if self.rel {
            a < self.best * (1.0 - self.threshold)
        } else {
            a < self.best - self.threshold
        }
    }

    fn step(&mut self, current: f64) {
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.patience {
            let old = self.lr;
            let new = (old * self.factor).max(self.min_lr);
            if old - new > self.eps {
                self.lr = new;
            }
            self.cooldown_counter = self.cooldown;
            self.num_bad_epochs = 0;
        }
    }
}

fn one_cycle_variants() -> Vec<OneCycle> {
    let base = OneCycle::new(0.1, 100);
    vec![
        base,
        OneCycle {
            anneal: Anneal::Linear,
            ..base
        },
        OneCycle {
            three_phase: true,
            ..base
        },
        OneCycle {
            three_phase: true,
            anneal: Anneal::Linear,
            total_steps: 37,
            pct_start: 0.25,
            ..base
        },
        OneCycle {
            total_steps: 53,
            pct_start: 0.45,
            div_factor: 10.0,
            final_div_factor: 100.0,
            base_momentum: 0.8,
            max_momentum: 0.9,
            ..base
        },
    ]
}

/// Every step of the cycle, rate and momentum. Tolerance 1e-12 relative: both sides are
/// the same f64 formulas, so only a different rounding order could separate them.
#[test]
fn one_cycle_matches_torch_through_the_whole_cycle() {
    for c in one_cycle_variants() {
        c.validate().unwrap();
        let s = LrSchedule::OneCycle(c);
        for step_num in 0..c.total_steps as u64 {
            let (lr, m) = c.at(step_num);
            let (want_lr, want_m) = torch_one_cycle(&c, step_num as f64);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-30);
            assert!(
                close(lr, want_lr),
                "{c:?} step {step_num}: lr {lr} vs torch {want_lr}"
            );
            assert!(
                close(m, want_m),
                "{c:?} step {step_num}: momentum {m} vs {want_m}"
            );
            // The trainer's view: training step `step_num + 1` (1 on the first).
            assert_eq!(s.rate(0.5, 0, step_num + 1), lr);
            assert_eq!(s.momentum(step_num + 1), Some(m));
        }
        // Landmarks from torch's documentation: the first rate is max_lr/div_factor, the
        // last max_lr/(div_factor·final_div_factor), momentum starts at max_momentum.
        let initial = c.max_lr as f64 / c.div_factor as f64;
        assert!((c.at(0).0 - initial).abs() < 1e-15);
        assert!((c.at(0).1 - c.max_momentum as f64).abs() < 1e-15);
        let last = c.at(c.total_steps as u64 - 1).0;
        assert!(
            (last - initial / c.final_div_factor as f64).abs() < 1e-15,
            "{c:?}: {last}"
        );
    }
    // The peak: with 100 steps and pct_start 0.3, step 29 ends the rise at max_lr.
    let c = OneCycle::new(0.1, 100);
    assert!((c.at(29).0 - 0.1f32 as f64).abs() < 1e-15);
    assert!((c.at(29).1 - 0.85f32 as f64).abs() < 1e-15);
    assert_eq!(
        LrSchedule::OneCycle(OneCycle {
            cycle_momentum: false,
            ..c
        })
        .momentum(5),
        None
    );
}

fn plateau_variants() -> Vec<Plateau> {
    let base = Plateau {
        patience: 2,
        ..Plateau::default()
    };
    vec![
        base,
        Plateau {
            cooldown: 2,
            ..base
        },
        Plateau {
            threshold_mode: ThresholdMode::Abs,
            threshold: 0.05,
            patience: 1,
            ..base
        },
        Plateau {
            patience: 0,
            factor: 0.5,
            min_lr: 0.02,
            ..base
        },
        // eps larger than a reduction: torch skips it.
        Plateau {
            patience: 0,
            factor: 0.5,
            eps: 0.03,
            ..base
        },
        Plateau::default(),
    ]
}

/// A scripted validation-loss curve: improvements big and small (some under the
/// threshold), plateaus, a rise and a NaN.
const LOSSES: [f64; 24] = [
    1.0,
    0.8,
    0.79995,
    0.81,
    0.7,
    0.7,
    0.7,
    0.69999,
    0.9,
    0.6,
    0.6,
    0.58,
    0.58,
    f64::NAN,
    0.5,
    0.5,
    0.5,
    0.5,
    0.5,
    0.45,
    0.449,
    0.448,
    0.447,
    0.446,
];

/// Counters and rate after every epoch equal torch's exactly: the same comparisons and
/// the same f64 products.
#[test]
fn plateau_matches_torch_on_a_scripted_loss() {
    let mut reductions = 0;
    for p in plateau_variants() {
        p.validate().unwrap();
        let mut ours = p.start(0.1);
        let mut torch = TorchPlateau::new(&p, 0.1f32 as f64);
        for (e, &loss) in LOSSES.iter().enumerate() {
            let before = ours.lr;
            ours.step(&p, loss);
            torch.step(loss);
            reductions += usize::from(ours.lr < before);
            let ctx = format!("{p:?} epoch {}", e + 1);
            assert_eq!(ours.lr, torch.lr, "{ctx}: lr");
            assert_eq!(ours.num_bad_epochs, torch.num_bad_epochs, "{ctx}");
            assert_eq!(ours.cooldown_counter, torch.cooldown_counter, "{ctx}");
            assert!(ours.best == torch.best, "{ctx}: best");
            assert_eq!(ours.last_epoch, e + 1);
        }
    }
    assert!(
        reductions >= 10,
        "the script must reduce the rate ({reductions})"
    );
    // min_lr floors the rate; a reduction under eps is skipped.
    let floor = &plateau_variants()[3];
    let mut s = floor.start(0.1);
    for &l in &LOSSES {
        s.step(floor, l);
    }
    assert_eq!(s.lr, 0.02f32 as f64);
    let skip = &plateau_variants()[4];
    let mut s = skip.start(0.1);
    for &l in &LOSSES {
        s.step(skip, l);
    }
    assert!(s.lr > 0.03, "reductions below eps are skipped: {}", s.lr);
}

fn bad(schedule: LrSchedule, optimizer: Optimizer) -> String {
    let spec = MlpSpec::new(2, &[4], 2)
        .optimizer(optimizer)
        .schedule(schedule);
    format!(
        "{:#}",
        Model::new(spec, Box::new(CpuEngine::new()))
            .err()
            .expect("refused")
    )
}

#[test]
fn bad_settings_are_clear_errors() {
    let sgd = Optimizer::sgd_momentum(0.1, 0.9);
    let c = OneCycle::new(0.1, 100);
    let one = |c: OneCycle| bad(LrSchedule::OneCycle(c), sgd);
    for pct in [0.0, 1.0, 1.5, -0.1, f32::NAN] {
        let e = one(OneCycle {
            pct_start: pct,
            ..c
        });
        assert!(e.contains("pct_start") && e.contains("(0, 1)"), "{e}");
    }
    assert!(one(OneCycle {
        total_steps: 0,
        ..c
    })
    .contains("total_steps"));
    assert!(one(OneCycle { max_lr: -1.0, ..c }).contains("max_lr"));
    assert!(one(OneCycle {
        div_factor: 0.0,
        ..c
    })
    .contains("div_factor"));
    let e = one(OneCycle {
        three_phase: true,
        pct_start: 0.6,
        ..c
    });
    assert!(e.contains("phase 3 is empty"), "{e}");
    let e = one(OneCycle {
        total_steps: 3,
        ..c
    });
    assert!(e.contains("phase 1 is empty"), "{e}");
    let e = one(OneCycle {
        base_momentum: 0.99,
        ..c
    });
    assert!(e.contains("base_momentum"), "{e}");
    let e = bad(LrSchedule::OneCycle(c), Optimizer::adagrad(0.1));
    assert!(
        e.contains("Adagrad has neither") && e.contains("--no-cycle-momentum"),
        "{e}"
    );
    let e = bad(LrSchedule::OneCycle(c), Optimizer::sgd(0.1));
    assert!(e.contains("momentum > 0"), "{e}");
    // Without momentum cycling, any optimizer takes one-cycle.
    let off = OneCycle {
        cycle_momentum: false,
        ..c
    };
    let spec = MlpSpec::new(2, &[4], 2).optimizer(Optimizer::adagrad(0.1));
    Model::new(
        spec.schedule(LrSchedule::OneCycle(off)),
        Box::new(CpuEngine::new()),
    )
    .unwrap();

    let p = Plateau::default();
    let plateau = |p: Plateau| bad(LrSchedule::Plateau(p), sgd);
    for f in [1.0, 1.5, 0.0, -0.5] {
        let e = plateau(Plateau { factor: f, ..p });
        assert!(e.contains("factor") && e.contains("(0, 1)"), "{e}");
    }
    assert!(plateau(Plateau { min_lr: -1.0, ..p }).contains("min_lr"));
    assert!(plateau(Plateau {
        threshold: f32::NAN,
        ..p
    })
    .contains("threshold"));
}

fn data() -> steadygrad::Dataset {
    steadygrad::data::synthetic::spirals(30, 3, 0.05, 1)
}

fn opts(epochs: usize) -> FitOptions {
    FitOptions {
        epochs,
        batch_size: 16,
        shuffle_seed: 7,
        drop_last: false,
    }
}

#[test]
fn fit_refuses_what_the_schedule_cannot_follow() {
    let train = data();
    // 90 rows in batches of 16: 6 steps per epoch, so 3 epochs need 18 > 17 steps.
    let c = OneCycle::new(0.1, 17);
    let spec = MlpSpec::new(2, &[8], 3)
        .optimizer(Optimizer::sgd_momentum(0.1, 0.9))
        .schedule(LrSchedule::OneCycle(c));
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let e = format!("{:#}", m.fit(&train, None, &opts(3), |_| {}).unwrap_err());
    assert!(
        e.contains("total_steps 17") && e.contains("18 training steps"),
        "{e}"
    );
    assert_eq!(m.steps().unwrap(), 0, "refused before any step");
    let spec = MlpSpec::new(2, &[8], 3).schedule(LrSchedule::Plateau(Plateau::default()));
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let e = format!("{:#}", m.fit(&train, None, &opts(1), |_| {}).unwrap_err());
    assert!(
        e.contains("plateau") && e.contains("no validation data"),
        "{e}"
    );
}

/// The rate and momentum each training step used are torch's for that step (cast to the
/// f32 the device reads), warm-up included.
#[test]
fn trainer_uses_the_one_cycle_rates() {
    let train = data();
    let c = OneCycle::new(0.2, 18);
    let spec = MlpSpec::new(2, &[8], 3)
        .optimizer(Optimizer::adam(1e-3))
        .schedule(LrSchedule::OneCycle(c))
        .warmup_steps(3);
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let (x, y) = (&train.features[..32], &train.targets[..16]);
    for step in 1..=18u64 {
        m.train_batch(x, y).unwrap();
        let (lr, mom) = torch_one_cycle(&c, (step - 1) as f64);
        let warm = (step as f64 / 3.0).min(1.0);
        assert_eq!(m.lr(), (lr * warm) as f32, "step {step}");
        assert_eq!(m.momentum(), Some(mom as f32), "step {step}");
    }
}

/// Plateau reduces the rate after the epoch torch would, from the validation losses the
/// fit reported; the next epoch trains at the new rate.
#[test]
fn trainer_uses_the_plateau_rates() {
    let all = data();
    let (train, valid) = steadygrad::data::split(&all, 0.3, 3).unwrap();
    let p = Plateau {
        patience: 0,
        factor: 0.5,
        threshold: 0.2,
        ..Plateau::default()
    };
    let spec = MlpSpec::new(2, &[8], 3)
        .optimizer(Optimizer::sgd(0.3))
        .schedule(LrSchedule::Plateau(p));
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let mut torch = TorchPlateau::new(&p, 0.3f32 as f64);
    let mut seen = Vec::new();
    m.fit_with_hook(&train, Some(&valid), &opts(6), |m, r| {
        // This epoch trained at torch's rate before this epoch's step.
        seen.push((m.lr(), torch.lr as f32));
        torch.step(r.valid.unwrap().loss as f64);
        assert_eq!(m.plateau_state().unwrap().lr, torch.lr);
        Ok(())
    })
    .unwrap();
    for (e, (used, want)) in seen.iter().enumerate() {
        assert_eq!(used, want, "epoch {}", e + 1);
    }
    assert!(
        seen.last().unwrap().0 < 0.3,
        "the threshold forces reductions: {seen:?}"
    );
}

type MakeEngine = fn() -> Box<dyn Engine>;

fn engines() -> [(&'static str, MakeEngine); 2] {
    [
        ("cpu", || Box::new(CpuEngine::new())),
        ("gpu", || Box::new(GpuEngine::new(common::gpu()))),
    ]
}

/// One-cycle with base = max momentum 0.5 must train exactly as the optimizer compiled
/// with momentum (beta1) 0.5 under the same rates: the cycled value reaches the update
/// kernels in place of the compiled one. Bit-for-bit, as both paths do the same
/// arithmetic on the same f32 values (ln β₁ from the same f64 computation).
#[test]
fn cycled_momentum_reaches_the_update_on_both_backends() {
    let train = data();
    let c = OneCycle {
        base_momentum: 0.5,
        max_momentum: 0.5,
        ..OneCycle::new(0.05, 12)
    };
    let fixed = OneCycle {
        cycle_momentum: false,
        ..c
    };
    let optimizers = [
        (
            Optimizer::sgd_momentum(0.1, 0.9),
            Optimizer::sgd_momentum(0.1, 0.5),
        ),
        (Optimizer::nesterov(0.1, 0.9), Optimizer::nesterov(0.1, 0.5)),
        (Optimizer::adam(0.1), beta1(Optimizer::adam(0.1), 0.5)),
        (Optimizer::adamw(0.1), beta1(Optimizer::adamw(0.1), 0.5)),
        (Optimizer::adamax(0.1), beta1(Optimizer::adamax(0.1), 0.5)),
        (
            rms_momentum(Optimizer::rmsprop(0.1), 0.9),
            rms_momentum(Optimizer::rmsprop(0.1), 0.5),
        ),
    ];
    for (name, engine) in engines() {
        for (cycled, compiled) in optimizers {
            let run = |opt: Optimizer, c: OneCycle| {
                let spec = MlpSpec::new(2, &[8, 8], 3)
                    .optimizer(opt)
                    .schedule(LrSchedule::OneCycle(c))
                    .seed(4);
                let mut m = Model::new(spec, engine()).unwrap();
                m.fit(&train, None, &opts(2), |_| {}).unwrap();
                (m.state_dict().unwrap(), m.optimizer_state().unwrap())
            };
            let a = run(cycled, c);
            let b = run(compiled, fixed);
            assert_eq!(a, b, "{name} {cycled}");
            // And a different momentum really changes the result (the test can fail).
            let other = run(cycled, fixed);
            assert_ne!(a.0, other.0, "{name} {cycled}");
        }
    }
}

fn beta1(mut o: Optimizer, b: f32) -> Optimizer {
    if let Optimizer::Adam { betas, .. }
    | Optimizer::AdamW { betas, .. }
    | Optimizer::Adamax { betas, .. } = &mut o
    {
        betas.0 = b;
    }
    o
}

fn rms_momentum(mut o: Optimizer, m: f32) -> Optimizer {
    if let Optimizer::RmsProp { momentum, .. } = &mut o {
        *momentum = m;
    }
    o
}

/// N epochs straight equal N/2, a checkpoint, a new model and N/2 more, bit for bit, for
/// each new schedule on each backend: one-cycle follows the restored step counter,
/// plateau its restored counters and rate.
#[test]
fn new_schedules_resume_exactly() {
    let all = data();
    let (train, valid) = steadygrad::data::split(&all, 0.3, 3).unwrap();
    let tmp = TempDir::new("schedule-resume");
    let path = tmp.path().join("ckpt.safetensors");
    let plateau = Plateau {
        patience: 0,
        factor: 0.5,
        threshold: 0.2,
        cooldown: 1,
        ..Plateau::default()
    };
    let schedules = [
        (
            LrSchedule::OneCycle(OneCycle::new(0.1, 4 * 5)),
            Optimizer::sgd_momentum(0.1, 0.9),
        ),
        (LrSchedule::Plateau(plateau), Optimizer::adam(0.05)),
    ];
    for (name, engine) in engines() {
        for (schedule, opt) in schedules.clone() {
            let spec = MlpSpec::new(2, &[8, 8], 3)
                .optimizer(opt)
                .schedule(schedule.clone())
                .warmup_steps(3)
                .seed(5);
            let new_model = || Model::new(spec.clone(), engine()).unwrap();
            let mut straight = new_model();
            straight
                .fit(&train, Some(&valid), &opts(4), |_| {})
                .unwrap();
            let mut first = new_model();
            first.fit(&train, Some(&valid), &opts(2), |_| {}).unwrap();
            save_checkpoint(&mut first, &path, &TrainingState::default()).unwrap();
            let ckpt = load_checkpoint(&path).unwrap();
            let mut resumed = new_model();
            ckpt.restore(&mut resumed).unwrap();
            assert_eq!(resumed.plateau_state(), first.plateau_state());
            resumed.fit(&train, Some(&valid), &opts(2), |_| {}).unwrap();
            let ctx = format!("{name} {schedule:?}");
            assert_eq!(
                resumed.state_dict().unwrap(),
                straight.state_dict().unwrap(),
                "{ctx}"
            );
            assert_eq!(resumed.plateau_state(), straight.plateau_state(), "{ctx}");
            assert_eq!(resumed.lr(), straight.lr(), "{ctx}");
            if let Some(p) = straight.plateau_state() {
                assert!(p.lr < 0.05f32 as f64, "{ctx}: no reduction happened: {p:?}");
            }
        }
    }
}

/// The TOML keys: torch's defaults fill what is left out, round trips are exact, and bad
/// values name the key.
#[test]
fn toml_config_takes_the_new_schedules() {
    use steadygrad::config::Config;
    let base = Config::commented_default();
    let with = |schedule: &str| {
        base.replace(
            "schedule = { kind = \"constant\" }",
            &format!("schedule = {schedule}"),
        )
        .replace("momentum = 0.0             # sgd only", "momentum = 0.9")
    };
    let load = |text: String| {
        let tmp = TempDir::new("schedule-toml");
        let p = tmp.write("run.toml", text.as_bytes());
        Config::load(&p).map_err(|e| format!("{e:#}"))
    };
    let c = load(with(
        r#"{ kind = "one-cycle", max_lr = 0.2, total_steps = 500, anneal = "linear", three_phase = true }"#,
    ))
    .unwrap();
    let want = OneCycle {
        anneal: Anneal::Linear,
        three_phase: true,
        ..OneCycle::new(0.2, 500)
    };
    assert_eq!(c.training.schedule, LrSchedule::OneCycle(want));
    let c = load(with(
        r#"{ kind = "plateau", patience = 3, threshold_mode = "abs" }"#,
    ))
    .unwrap();
    let want = Plateau {
        patience: 3,
        threshold_mode: ThresholdMode::Abs,
        ..Plateau::default()
    };
    assert_eq!(c.training.schedule, LrSchedule::Plateau(want));
    let back = load(c.to_toml()).unwrap();
    assert_eq!(back, c);
    for (schedule, needle) in [
        (r#"{ kind = "plateau", factor = 1.0 }"#, "factor"),
        (r#"{ kind = "plateau", patience = -1 }"#, "patience"),
        (r#"{ kind = "plateau", patiense = 2 }"#, "patiense"),
        (r#"{ kind = "one-cycle", total_steps = 10 }"#, "max_lr"),
        (
            r#"{ kind = "one-cycle", max_lr = 0.1, total_steps = 100, pct_start = 1.0 }"#,
            "pct_start",
        ),
        (
            r#"{ kind = "one-cycle", max_lr = 0.1, total_steps = 100, anneal = "exp" }"#,
            "exp",
        ),
    ] {
        let e = load(with(schedule)).unwrap_err();
        assert!(
            e.contains(needle) && e.contains("run.toml"),
            "'{needle}' in: {e}"
        );
    }
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let tmp = TempDir::new("schedule-cli");
    let base = [
        "train", "--points", "20", "--depth", "2", "--width", "8", "--batch", "16", "--epochs", "4",
    ];
    common::run_cli_env(
        &[&base[..], args].concat(),
        tmp.path(),
        &[("STEADYGRAD_BACKEND", "cpu")],
    )
}

/// `(lr, val loss)` of every printed epoch line.
fn printed(out: &str) -> Vec<(f64, f64)> {
    out.lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| w[w.iter().position(|&x| x == key).unwrap() + 1];
            let val = w.iter().position(|&x| x == "val").unwrap();
            (after("lr").parse().unwrap(), w[val + 2].parse().unwrap())
        })
        .collect()
}

/// The rate `train` prints for each epoch (its last step's) is torch's: 60 spiral rows,
/// 48 for training in batches of 16, so epoch `e` ends at step `3e` and one-cycle's
/// `total_steps` defaults to 12. Printed to 5 significant digits, hence 1e-4 relative.
#[test]
fn train_prints_the_scheduled_rates_and_refuses_bad_flags() {
    let one_cycle = [
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--schedule",
        "one-cycle",
        "--max-lr",
        "0.1",
        "--anneal",
        "linear",
    ];
    let (ok, out, err) = cli(&one_cycle);
    assert!(ok, "{out}{err}");
    let c = OneCycle {
        anneal: Anneal::Linear,
        ..OneCycle::new(0.1, 12)
    };
    let lines = printed(&out);
    assert_eq!(lines.len(), 4, "{out}");
    for (e, (lr, _)) in lines.iter().enumerate() {
        let want = torch_one_cycle(&c, (3 * (e + 1) - 1) as f64).0;
        assert!(
            (lr - want).abs() <= 1e-4 * want,
            "epoch {}: {lr} vs {want}",
            e + 1
        );
    }

    let (ok, out, err) = cli(&[
        "--schedule",
        "plateau",
        "--plateau-patience",
        "0",
        "--plateau-factor",
        "0.5",
        "--plateau-threshold",
        "0.5",
    ]);
    assert!(ok, "{out}{err}");
    let lines = printed(&out);
    let p = Plateau {
        patience: 0,
        factor: 0.5,
        threshold: 0.5,
        ..Plateau::default()
    };
    let mut torch = TorchPlateau::new(&p, lines[0].0);
    for (e, &(lr, val_loss)) in lines.iter().enumerate() {
        assert!(
            (lr - torch.lr).abs() <= 1e-4 * torch.lr,
            "epoch {}: {out}",
            e + 1
        );
        torch.step(val_loss);
    }
    assert!(
        lines[3].0 < lines[0].0,
        "a threshold of 0.5 forces reductions: {out}"
    );

    for (flags, needle) in [
        (&["--schedule", "one-cycle"][..], "needs --max-lr"),
        (
            &["--schedule", "one-cycle", "--max-lr", "0.1"],
            "needs SGD with a momentum > 0",
        ),
        (
            &[
                "--schedule",
                "one-cycle",
                "--max-lr",
                "0.1",
                "--pct-start",
                "0",
            ],
            "pct_start (--pct-start) must be in (0, 1)",
        ),
        (
            &[
                "--schedule",
                "one-cycle",
                "--max-lr",
                "0.1",
                "--total-steps",
                "11",
                "--no-cycle-momentum",
            ],
            "total_steps 11 but this run would take 12",
        ),
        (
            &["--schedule", "plateau", "--plateau-factor", "1"],
            "factor (--plateau-factor) must be in (0, 1)",
        ),
        (
            &["--schedule", "plateau", "--plateau-patience", "-1"],
            "--plateau-patience",
        ),
        (
            &[
                "--schedule",
                "one-cycle",
                "--max-lr",
                "0.1",
                "--optimizer",
                "adagrad",
            ],
            "Adagrad has neither",
        ),
    ] {
        let (ok, out, err) = cli(flags);
        assert!(!ok && err.contains(needle), "{flags:?}: {out}{err}");
        assert!(
            !out.contains("epoch "),
            "{flags:?} refused before training: {out}"
        );
    }
}

/// One-cycle with momentum cycling, GPU against the CPU reference, over a cycle of 12
/// steps on layers whose sizes are not multiples of the 256-wide workgroups (37·300 and
/// 300·3 weights, 300 biases; 3-element vectors take the scalar kernels). Tolerance 1e-5
/// absolute + 1e-3 relative, as `twenty_steps_adam_clip_dropout_agree` states: f32
/// rounding compounds over the steps, and Adam divides noise-sized moments by √v + eps.
/// A momentum the GPU ignored (0.9 compiled in instead of 0.85–0.95 cycled) differs by
/// the momentum term itself, far outside; the SGD case checks that it does.
#[test]
fn one_cycle_gpu_matches_cpu() {
    use steadygrad::Tolerance;
    let tol = Tolerance {
        atol: 1e-5,
        rtol: 1e-3,
    };
    let c = OneCycle::new(0.05, 12);
    let run = |opt: Optimizer, c: OneCycle, engine: Box<dyn Engine>| {
        let spec = MlpSpec::new(37, &[300], 3)
            .optimizer(opt)
            .schedule(LrSchedule::OneCycle(c))
            .seed(8);
        let mut m = Model::new(spec, engine).unwrap();
        for s in 0..12u64 {
            let rows = [20, 7][s as usize % 2];
            let x = common::random(rows * 37, 200 + s);
            let y: Vec<f32> = (0..rows).map(|r| ((r + s as usize) % 3) as f32).collect();
            m.train_batch(&x, &y).unwrap();
        }
        m.parameters()
            .unwrap()
            .into_iter()
            .chain(m.optimizer_state().unwrap())
            .collect::<Vec<_>>()
    };
    let worst = |a: &[steadygrad::NamedTensor], b: &[steadygrad::NamedTensor]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| steadygrad::check::compare(&a.name, &a.values, &b.values, tol))
            .find(|t| !t.pass)
    };
    for opt in [Optimizer::sgd_momentum(0.05, 0.9), Optimizer::adam(0.05)] {
        let g = run(opt, c, Box::new(GpuEngine::new(common::gpu())));
        let cpu = run(opt, c, Box::new(CpuEngine::new()));
        if let Some(t) = worst(&g, &cpu) {
            panic!("{opt}: max abs {:e} rel {:e}", t.max_abs, t.max_rel);
        }
    }
    let off = OneCycle {
        cycle_momentum: false,
        ..c
    };
    let opt = Optimizer::sgd_momentum(0.05, 0.9);
    let cycled = run(opt, c, Box::new(CpuEngine::new()));
    let fixed = run(opt, off, Box::new(GpuEngine::new(common::gpu())));
    assert!(
        worst(&cycled, &fixed).is_some(),
        "the comparison must see the momentum"
    );
}
