//! One-cycle and reduce-on-plateau against PyTorch's own code, replicated in f64
//! (`common/torch_schedules.rs`), their TOML keys and their bad settings. Training with
//! them (rates used, resume, GPU against CPU, the CLI) is in `schedule_training.rs`.

mod common;
#[path = "common/torch_schedules.rs"]
mod torch_schedules;

use common::TempDir;
use steadygrad::cpu::CpuEngine;
use steadygrad::model::plateau::{Plateau, ThresholdMode};
use steadygrad::model::schedule::{Anneal, OneCycle};
use steadygrad::{LrSchedule, MlpSpec, Model, Optimizer};
use torch_schedules::{torch_one_cycle, TorchPlateau};

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
