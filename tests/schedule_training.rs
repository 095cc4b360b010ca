//! Training with one-cycle and reduce-on-plateau: the rates the trainer used are torch's
//! (`common/torch_schedules.rs`), the cycled momentum reaches the update kernels, resume is
//! exact on both backends, the GPU matches the CPU, `fit` and `train` refuse what the
//! schedule cannot follow, and `train` prints the rates.

mod common;
#[path = "common/torch_schedules.rs"]
mod torch_schedules;

use common::TempDir;
use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::plateau::Plateau;
use steadygrad::model::schedule::{Anneal, OneCycle};
use steadygrad::{Engine, FitOptions, LrSchedule, MlpSpec, Model, Optimizer};
use torch_schedules::{torch_one_cycle, TorchPlateau};

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

/// Asserts `r` is an error whose message holds every one of `needles`.
fn refused<T: std::fmt::Debug>(r: anyhow::Result<T>, needles: &[&str]) {
    let e = format!("{:#}", r.unwrap_err());
    assert!(needles.iter().all(|n| e.contains(n)), "{needles:?} in: {e}");
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
    refused(
        m.fit(&train, None, &opts(3), |_| {}),
        &["total_steps 17", "18 training steps"],
    );
    assert_eq!(m.steps().unwrap(), 0, "refused before any step");
    let spec = MlpSpec::new(2, &[8], 3).schedule(LrSchedule::Plateau(Plateau::default()));
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    refused(
        m.fit(&train, None, &opts(1), |_| {}),
        &["plateau", "no validation data"],
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
    refused(m.train_batch(x, y), &["step 19 is past", "total_steps 18"]);
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
        (Optimizer::nadam(0.1), beta1(Optimizer::nadam(0.1), 0.5)),
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
    | Optimizer::Adamax { betas, .. }
    | Optimizer::NAdam { betas, .. } = &mut o
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

/// A plateau schedule that must reduce: an epoch only improves by halving the best loss.
const PLATEAU_FLAGS: [&str; 8] = [
    "--schedule",
    "plateau",
    "--plateau-patience",
    "0",
    "--plateau-factor",
    "0.5",
    "--plateau-threshold",
    "0.5",
];

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

    let (ok, out, err) = cli(&PLATEAU_FLAGS);
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
    for opt in [
        Optimizer::sgd_momentum(0.05, 0.9),
        Optimizer::adam(0.05),
        Optimizer::nadam(0.05),
    ] {
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

/// `train --save` for 3 epochs then `--resume` to 6 prints the epoch lines (losses,
/// accuracies and rates, speed aside) of 6 epochs in one run, for both schedules.
#[test]
fn train_resumes_both_schedules_exactly() {
    let tmp = TempDir::new("schedule-cli-resume");
    let run = |args: &[&str]| {
        let base = ["train", "--points", "30", "--depth", "2", "--width", "16"];
        let (ok, out, err) = common::run_cli_env(
            &[&base[..], args].concat(),
            tmp.path(),
            &[("STEADYGRAD_BACKEND", "cpu")],
        );
        assert!(ok, "{args:?}: {out}{err}");
        // Each epoch line without its speed, the last field pair.
        out.lines()
            .filter(|l| l.starts_with("epoch "))
            .map(|l| l.rsplit_once("  ").map_or(l, |(a, _)| a).trim().to_string())
            .collect::<Vec<_>>()
    };
    for schedule in [
        &PLATEAU_FLAGS[..],
        &[
            "--optimizer",
            "adam",
            "--schedule",
            "one-cycle",
            "--max-lr",
            "0.01",
            "--three-phase",
            // The whole run's: a first run of 3 epochs alone has a 9-step cycle.
            "--total-steps",
            "18",
        ][..],
    ] {
        let straight = run(&[schedule, &["--epochs", "6"]].concat());
        let mut split = run(&[schedule, &["--epochs", "3", "--save", "c.safetensors"]].concat());
        split.extend(run(&["--resume", "c.safetensors", "--epochs", "6"]));
        assert_eq!(split, straight, "{schedule:?}");
        let rates: Vec<&str> = straight
            .iter()
            .map(|l| &l[l.find("lr ").unwrap()..])
            .collect();
        assert!(rates.windows(2).any(|w| w[0] != w[1]), "{rates:?}");
    }
}
