//! RMSprop, Adagrad, Adamax, NAdam and AMSGrad in whole models: exact resume from a
//! checkpoint holding the state under torch's keys, training agreeing across backends,
//! the configuration file, bad settings and the CLI. The update rules themselves:
//! `optim_more.rs`.

mod common;

use common::{gpu, TempDir};
use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{MlpSpec, Model, Optimizer, Tolerance};

fn model_optimizers() -> Vec<Optimizer> {
    vec![
        Optimizer::adam(1e-2).with_amsgrad(true),
        Optimizer::adamw(1e-2).with_amsgrad(true),
        Optimizer::RmsProp {
            lr: 1e-3,
            alpha: 0.9,
            eps: 1e-8,
            weight_decay: 1e-3,
            momentum: 0.5,
            centered: true,
        },
        Optimizer::Adagrad {
            lr: 1e-2,
            lr_decay: 0.01,
            weight_decay: 0.0,
            initial_accumulator_value: 0.1,
            eps: 1e-10,
        },
        Optimizer::adamax(2e-3),
        Optimizer::nadam(2e-3),
    ]
}

/// Training 2 epochs, saving, and continuing for 2 more in a new model gives exactly the
/// parameters and state of 4 uninterrupted epochs; the checkpoint names the state with
/// torch's keys. Restoring only the weights (fresh optimizer state) does not match, so
/// the comparison can fail.
#[test]
fn resume_is_exact_with_torch_state_keys() {
    let tmp = TempDir::new("optim-resume");
    let path = tmp.path().join("ckpt.safetensors");
    let data = steadygrad::data::synthetic::spirals(20, 3, 0.05, 1);
    let opts = |epochs| steadygrad::FitOptions {
        epochs,
        batch_size: 16,
        shuffle_seed: 7,
        drop_last: false,
    };
    for opt in model_optimizers() {
        let spec = MlpSpec::new(2, &[12, 9], 3).optimizer(opt).seed(2);
        let new_model = || Model::new(spec.clone(), Box::new(GpuEngine::new(gpu()))).unwrap();
        let mut straight = new_model();
        straight.fit(&data, None, &opts(4), |_| {}).unwrap();

        let mut first = new_model();
        first.fit(&data, None, &opts(2), |_| {}).unwrap();
        save_checkpoint(&mut first, &path, &TrainingState::default()).unwrap();
        let ckpt = load_checkpoint(&path).unwrap();
        let mut keys: Vec<&str> = ckpt
            .optimizer
            .iter()
            .filter_map(|t| t.name.strip_prefix("layers.0.linear.weight."))
            .collect();
        keys.sort();
        let mut want = opt.state_names();
        want.sort();
        assert_eq!(keys, want, "{opt}");
        assert!(!keys.is_empty());
        if let Optimizer::NAdam { .. } = opt {
            let mu = ckpt
                .optimizer
                .iter()
                .find(|t| t.name == "layers.0.linear.weight.mu_product")
                .unwrap();
            assert_eq!(mu.shape, vec![1]);
            assert!(mu.values[0] < 0.5, "mu_product {}", mu.values[0]);
        }

        let mut resumed = new_model();
        ckpt.restore(&mut resumed).unwrap();
        resumed.fit(&data, None, &opts(2), |_| {}).unwrap();
        assert_eq!(resumed.epoch(), 4);
        assert_eq!(
            resumed.state_dict().unwrap(),
            straight.state_dict().unwrap(),
            "{opt}"
        );
        assert_eq!(
            resumed.optimizer_state().unwrap(),
            straight.optimizer_state().unwrap(),
            "{opt}"
        );

        let mut weights_only = new_model();
        weights_only.load_state_dict(&ckpt.tensors).unwrap();
        weights_only.set_steps(ckpt.steps.unwrap()).unwrap();
        weights_only.set_epoch(2);
        weights_only.fit(&data, None, &opts(2), |_| {}).unwrap();
        assert_ne!(
            weights_only.state_dict().unwrap(),
            straight.state_dict().unwrap(),
            "{opt}: resuming without the optimizer state must differ"
        );
    }
}

/// A few epochs of every new optimizer on the GPU and the CPU end with the same
/// parameters. Tolerance `1e-5 + 1e-3·|cpu|` as `tests/optim.rs`'s 20-step Adam run, for the
/// same reason: rounding differences of one step feed the next, and the adaptive
/// denominators amplify a gradient element that is pure rounding noise.
#[test]
fn model_training_agrees_across_backends() {
    let data = steadygrad::data::synthetic::spirals(15, 3, 0.05, 4);
    let opts = steadygrad::FitOptions {
        epochs: 3,
        batch_size: 13,
        shuffle_seed: 1,
        drop_last: false,
    };
    let tol = Tolerance {
        atol: 1e-5,
        rtol: 1e-3,
    };
    for opt in model_optimizers() {
        let spec = MlpSpec::new(2, &[33, 7], 3).optimizer(opt).seed(5);
        let run = |engine: Box<dyn Engine>| {
            let mut m = Model::new(spec.clone(), engine).unwrap();
            m.fit(&data, None, &opts, |_| {}).unwrap();
            m.parameters()
                .unwrap()
                .into_iter()
                .chain(m.optimizer_state().unwrap())
                .collect::<Vec<_>>()
        };
        let g = run(Box::new(GpuEngine::new(gpu())));
        let c = run(Box::new(CpuEngine::new()));
        assert_eq!(g.len(), c.len());
        for (a, b) in g.iter().zip(&c) {
            let t = steadygrad::check::compare(&a.name, &a.values, &b.values, tol);
            assert!(t.pass, "{opt} {}: max abs {:e}", a.name, t.max_abs);
        }
    }
}

/// Each optimizer in a TOML file round-trips through `Config`, and a file written before
/// `amsgrad` existed still reads (off by default).
#[test]
fn config_files_carry_the_optimizers() {
    use steadygrad::config::Config;
    for opt in model_optimizers() {
        let spec = MlpSpec::new(2, &[4], 3).optimizer(opt);
        let toml = Config::from_spec(&spec, 3, 8).to_toml();
        let back: Config = toml::from_str(&toml).unwrap();
        assert_eq!(back.optimizer, opt, "{toml}");
    }
    let old = "kind = \"adam\"\nlr = 0.001\nbetas = [0.9, 0.999]\neps = 1e-8\nweight_decay = 0.0\n";
    let opt: Optimizer = toml::from_str(old).unwrap();
    assert_eq!(opt, Optimizer::adam(1e-3));
    let bad = "kind = \"rmsprop\"\nlr = 0.01\nalpha = 1.5\neps = 1e-8\nweight_decay = 0.0\nmomentum = 0.0\ncentered = false\n";
    let opt: Optimizer = toml::from_str(bad).unwrap();
    let e = opt.validate().unwrap_err().to_string();
    assert!(
        e.contains("RMSprop alpha must be in [0, 1), got 1.5"),
        "{e}"
    );
}

#[test]
fn bad_settings_are_named() {
    let cases = [
        (
            Optimizer::nadam(1e-3),
            "NAdam momentum_decay must be a finite number >= 0",
            Optimizer::NAdam {
                lr: 1e-3,
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.0,
                momentum_decay: -1.0,
            },
        ),
        (
            Optimizer::adagrad(1e-2),
            "Adagrad initial_accumulator_value must be a finite number >= 0",
            Optimizer::Adagrad {
                lr: 1e-2,
                lr_decay: 0.0,
                weight_decay: 0.0,
                initial_accumulator_value: f32::NAN,
                eps: 1e-10,
            },
        ),
        (
            Optimizer::rmsprop(1e-2),
            "RMSprop momentum must be in [0, 1), got 1",
            Optimizer::RmsProp {
                lr: 1e-2,
                alpha: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                momentum: 1.0,
                centered: false,
            },
        ),
        (
            Optimizer::adamax(2e-3),
            "Adamax eps must be a finite number > 0, got 0",
            Optimizer::adamax(2e-3).with_eps(0.0),
        ),
    ];
    for (good, want, bad) in cases {
        good.validate().unwrap();
        let spec = MlpSpec::new(3, &[4], 2).optimizer(bad);
        let e = match Model::new(spec, Box::new(CpuEngine::new())) {
            Ok(_) => panic!("{bad} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(want), "{e}");
    }
}

/// The CLI trains with each new optimizer and prints it with torch's defaults.
#[test]
fn cli_trains_with_each_optimizer() {
    let bin = env!("CARGO_BIN_EXE_steadygrad");
    for (args, want) in [
        (
            &["--optimizer", "rmsprop", "--centered", "--momentum", "0.5"][..],
            "RMSprop(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0.5, centered)",
        ),
        (
            &["--optimizer", "adagrad", "--lr-decay", "0.01"],
            "Adagrad(lr=0.01, lr_decay=0.01, weight_decay=0, initial_accumulator_value=0, eps=1e-10)",
        ),
        (
            &["--optimizer", "adamax"],
            "Adamax(lr=0.002, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
        ),
        (
            &["--optimizer", "nadam"],
            "NAdam(lr=0.002, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=0.004)",
        ),
        (
            &["--optimizer", "adam", "--amsgrad"],
            "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad)",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .args(["--backend", "cpu", "train", "--depth", "2", "--width", "8"])
            .args(["--points", "20", "--epochs", "2"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: {text}");
        assert!(!text.contains("NaN"), "{args:?}: {text}");
    }
}
