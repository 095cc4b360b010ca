//! Model configuration files: the commented default parses, round trips are exact, and
//! bad files name the problem.

mod common;

use common::TempDir;

use steadygrad::config::Config;
use steadygrad::{BatchNorm, Clip, LrSchedule, MlpSpec, Optimizer};

/// Writes `text` to a file in a fresh temporary directory, removed with the returned guard.
fn write(name: &str, text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("config");
    let p = dir.write(name, text.as_bytes());
    (dir, p)
}

#[test]
fn commented_default_is_valid() {
    let (_dir, p) = write("default.toml", &Config::commented_default());
    let c = Config::load(&p).unwrap();
    let spec = c.to_spec().unwrap();
    assert_eq!(spec.hidden.len(), 8);
    assert_eq!(spec.optimizer, Optimizer::sgd(0.05));
    assert_eq!(c.training.epochs, 20);
}

/// The template's activation comment comes from `Activation::ALL`: every kind is listed and
/// each listed name parses.
#[test]
fn commented_default_lists_every_activation() {
    let text = Config::commented_default();
    let line = text
        .lines()
        .position(|l| l.starts_with("activation ="))
        .expect("an activation line");
    let comment: String = text
        .lines()
        .skip(line)
        .take_while(|l| l.starts_with("activation =") || l.trim_start().starts_with('#'))
        .map(|l| l.split('#').nth(1).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    for a in steadygrad::Activation::ALL {
        let listed = comment
            .split_whitespace()
            .any(|w| w == a.name() || w.starts_with(&format!("{}[", a.name())));
        assert!(listed, "{} missing from the template: {comment}", a.name());
    }
}

#[test]
fn round_trip_through_toml() {
    let spec = MlpSpec::new(4, &[16, 8], 3)
        .activation("leaky-relu:0.2".parse().unwrap())
        .batch_norm(BatchNorm::default())
        .residual(2)
        .optimizer(Optimizer::adamw(3e-3))
        .clip(Clip::Norm(1.5))
        .schedule(LrSchedule::Cosine {
            t_max: 10,
            eta_min: 1e-5,
        })
        .warmup_steps(7)
        .dropout(0.25)
        .seed(9);
    let c = Config::from_spec(&spec, 12, 64);
    let (_dir, p) = write("rt.toml", &c.to_toml());
    let back = Config::load(&p).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.to_spec().unwrap(), spec);

    // Every schedule kind survives the file.
    for schedule in [
        LrSchedule::Exponential { gamma: 0.9 },
        LrSchedule::Polynomial {
            total_iters: 7,
            power: 2.0,
        },
        LrSchedule::MultiStep {
            milestones: vec![3, 8],
            gamma: 0.2,
        },
    ] {
        let spec = spec.clone().schedule(schedule.clone());
        let c = Config::from_spec(&spec, 12, 64);
        let (_dir, p) = write("schedule.toml", &c.to_toml());
        let back = Config::load(&p).unwrap().to_spec().unwrap();
        assert_eq!(back.schedule, schedule);
    }
}

#[test]
fn bad_files_name_the_problem() {
    let base = Config::commented_default();
    let cases = [
        (base.replace("lr = 0.05", "lr = -1.0"), "learning rate"),
        (
            base.replace("activation = \"relu\"", "activation = \"swish\""),
            "unknown activation 'swish'",
        ),
        (
            base.replace("epochs = 20", "epochs = 20\nepochz = 3"),
            "epochz",
        ),
        (base.replace("kind = \"sgd\"", "kind = \"lbfgs\""), "lbfgs"),
        (
            base.replace(
                "hidden = [64, 64, 64, 64, 64, 64, 64, 64]",
                "hidden = [64, 0]",
            ),
            "hidden layer 1 size is zero",
        ),
        ("[model\n".to_string(), "bad.toml"),
    ];
    for (text, needle) in cases {
        let (_dir, p) = write("bad.toml", &text);
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(
            e.contains(needle) && e.contains("bad.toml"),
            "expected '{needle}' in: {e}"
        );
    }
}
