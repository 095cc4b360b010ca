//! Remedy trials (`health::remedy`, `diagnose`): candidates fitted to the model, measured
//! on the digits data, judged against the unchanged model, and never a recommendation
//! that measured worse than doing nothing.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use std::time::Duration;
use steadygrad::cpu::CpuEngine;
use steadygrad::data::{self, Dataset, LoadOptions, Standardizer};
use steadygrad::engine::Engine;
use steadygrad::health::remedy::{
    candidates, run_trials, Change, Measure, Trial, TrialOptions, TrialReport, Verdict,
};
use steadygrad::health::NonFiniteError;
use steadygrad::{Activation, BatchNorm, Clip, FitOptions, Init, Loss, MlpSpec, Model, Optimizer};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The digits training and validation sets, standardized as the CLI does.
fn digits() -> (Dataset, Dataset) {
    let dir = data_dir();
    let mut train = data::load(dir.join("digits_train.csv"), &LoadOptions::default()).unwrap();
    let mut valid = data::load(dir.join("digits_valid.csv"), &LoadOptions::default()).unwrap();
    let c = train.classes.unwrap().max(valid.classes.unwrap());
    train.classes = Some(c);
    valid.classes = Some(c);
    let s = Standardizer::fit(&train).unwrap();
    s.apply(&mut train).unwrap();
    s.apply(&mut valid).unwrap();
    (train, valid)
}

fn deep_sigmoid(input: usize, output: usize) -> MlpSpec {
    MlpSpec::new(input, &[32; 20], output)
        .activation(Activation::Sigmoid)
        .init(Init::Normal {
            mean: 0.0,
            std: 1.0,
        })
        .loss(Loss::SoftmaxCrossEntropy)
        .optimizer(Optimizer::sgd(0.05))
        .seed(42)
}

fn cpu() -> anyhow::Result<Box<dyn Engine>> {
    Ok(Box::new(CpuEngine::new()))
}

/// Validation accuracy of `spec` trained from scratch with `fit`, as a user would.
fn trained_accuracy(spec: MlpSpec, train: &Dataset, valid: &Dataset, opts: &FitOptions) -> f32 {
    let mut m = Model::new(spec, cpu().unwrap()).unwrap();
    let reports = m.fit(train, Some(valid), opts, |_| {}).unwrap();
    reports.last().unwrap().valid.unwrap().accuracy.unwrap()
}

#[test]
fn deep_sigmoid_gets_a_measured_remedy_that_beats_the_unchanged_model() {
    let (train, valid) = digits();
    let spec = deep_sigmoid(train.input_dim, 10);
    let remedies = candidates(&spec);
    // Two epochs of 45 batches: whole epochs, so `fit` below sees the same steps.
    let opts = TrialOptions {
        steps: 90,
        batch_size: 32,
        shuffle_seed: 42,
        // Generous: no trial may be cut short, so the outcome does not depend on the
        // machine's speed.
        budget: Duration::from_secs(3600),
        ..TrialOptions::default()
    };
    let mut seen = 0;
    let report = run_trials(
        &spec,
        &remedies,
        &train,
        Some(&valid),
        &opts,
        &mut cpu,
        |_| seen += 1,
    )
    .unwrap();
    assert_eq!(seen, remedies.len() + 1);
    assert_eq!(report.trials.len(), remedies.len() + 1);
    assert_eq!(report.measure, Measure::ValidationAccuracy);
    println!("{}", report.table());

    let base = report.baseline();
    let base_acc = base.val_accuracy.unwrap();
    assert_eq!(base.steps, 90);
    assert!(
        base.grad_ratio.unwrap() < 1e-2,
        "the baseline must show the problem"
    );
    for t in &report.trials {
        assert!(!t.cut_short, "{}", t.label);
        assert_eq!(t.steps, 90, "{}", t.label);
    }

    // The recommendation is a remedy that beat the baseline by the margin, and the best
    // of those; nothing that measured worse, or merely as good, is recommended.
    let best = report
        .best()
        .expect("a remedy beats deep sigmoid on digits");
    assert_eq!(best.verdict, Verdict::Better);
    let best_acc = best.val_accuracy.unwrap();
    assert!(
        best_acc >= base_acc + opts.min_accuracy_gain,
        "{best_acc} vs {base_acc}"
    );
    assert!(best.val_loss.unwrap() < base.val_loss.unwrap());
    for t in &report.trials {
        let acc = t.val_accuracy.unwrap_or(0.0);
        assert!(
            acc <= best_acc || t.verdict != Verdict::Better,
            "{}",
            t.label
        );
        if acc < base_acc {
            assert_ne!(t.verdict, Verdict::Better, "{}", t.label);
        }
        if acc < base_acc + opts.min_accuracy_gain && t.verdict == Verdict::Better {
            // Only a clearly lower validation loss makes up for a small accuracy gain.
            let bar = base.val_loss.unwrap() * (1.0 - opts.min_loss_gain);
            assert!(t.val_loss.unwrap() <= bar, "{}", t.label);
        }
        if acc <= base_acc - opts.min_accuracy_gain {
            assert_eq!(t.verdict, Verdict::Worse, "{}", t.label);
        }
    }
    // Glorot, the textbook init for sigmoid, does not help this network: it must not be
    // what the tool recommends.
    let glorot = report
        .trials
        .iter()
        .find(|t| {
            t.change
                == Some(Change::Init {
                    init: Init::GlorotUniform,
                })
        })
        .expect("the init matched to sigmoid is a candidate");
    assert!(glorot.grad_ratio.unwrap() < base.grad_ratio.unwrap());
    assert_ne!(glorot.verdict, Verdict::Better);
    assert_ne!(best.change, glorot.change);

    // The figures are real: training the recommended change from scratch with `fit`, as
    // the user would after taking the advice, gives the same accuracy and beats the
    // unchanged model trained the same way.
    let remedy = remedies
        .iter()
        .find(|r| Some(r.change) == best.change)
        .unwrap();
    let fit = FitOptions {
        epochs: 2,
        batch_size: 32,
        shuffle_seed: 42,
        drop_last: false,
    };
    let fixed = trained_accuracy(remedy.apply(&spec), &train, &valid, &fit);
    let unchanged = trained_accuracy(spec.clone(), &train, &valid, &fit);
    assert!((fixed - best_acc).abs() < 1e-6, "{fixed} vs {best_acc}");
    assert!(
        (unchanged - base_acc).abs() < 1e-6,
        "{unchanged} vs {base_acc}"
    );
    assert!(fixed >= unchanged + opts.min_accuracy_gain);
}

#[test]
fn the_same_remedy_is_judged_on_each_model() {
    // The init matched to the activation is Glorot for both sigmoid and tanh; measured, it
    // cures the deep tanh network and not the deep sigmoid one.
    let (train, valid) = digits();
    let opts = TrialOptions {
        steps: 90,
        budget: Duration::from_secs(3600),
        ..TrialOptions::default()
    };
    let glorot = |spec: &MlpSpec| {
        let only: Vec<_> = candidates(spec)
            .into_iter()
            .filter(|r| {
                r.change
                    == Change::Init {
                        init: Init::GlorotUniform,
                    }
            })
            .collect();
        assert_eq!(only.len(), 1);
        let r = run_trials(spec, &only, &train, Some(&valid), &opts, &mut cpu, |_| {}).unwrap();
        let t = r
            .trials
            .iter()
            .find(|t| t.change.is_some())
            .unwrap()
            .clone();
        (r.baseline().val_accuracy.unwrap(), t, r.best().is_some())
    };
    let sigmoid = deep_sigmoid(train.input_dim, 10);
    let (base, t, recommended) = glorot(&sigmoid);
    assert_ne!(t.verdict, Verdict::Better, "sigmoid: {t:?}");
    assert!(!recommended);
    assert!(t.val_accuracy.unwrap() < base + opts.min_accuracy_gain);

    let tanh = sigmoid.clone().activation(Activation::Tanh);
    let (base, t, recommended) = glorot(&tanh);
    assert_eq!(t.verdict, Verdict::Better, "tanh: {t:?}");
    assert!(recommended);
    assert!(
        t.val_accuracy.unwrap() >= base + 0.3,
        "{base} → {:?}",
        t.val_accuracy
    );
}

fn trial(label: &str, change: Option<Change>, acc: f32, loss: f32, ratio: f32) -> Trial {
    Trial {
        label: label.to_string(),
        flags: if change.is_some() {
            format!("--{label}")
        } else {
            String::new()
        },
        change,
        steps: 50,
        cut_short: false,
        grad_ratio: Some(ratio),
        loss_start: Some(2.3),
        loss_end: Some(loss),
        val_loss: Some(loss),
        val_accuracy: Some(acc),
        nan: false,
        diverged: None,
        error: None,
        seconds: 1.0,
        verdict: Verdict::Skipped,
    }
}

fn judge(trials: Vec<Trial>) -> TrialReport {
    TrialReport::judge(
        trials,
        Measure::ValidationAccuracy,
        TrialOptions::default(),
        50,
        1.0,
    )
    .unwrap()
}

fn verdict_of(r: &TrialReport, label: &str) -> Verdict {
    r.trials.iter().find(|t| t.label == label).unwrap().verdict
}

#[test]
fn a_remedy_worse_than_doing_nothing_is_never_recommended() {
    let lr = Some(Change::LearningRate { lr: 0.01 });
    let clip = Some(Change::ClipNorm { max_norm: 1.0 });
    let bn = Some(Change::BatchNormBefore);
    let res = Some(Change::Residual { every: 2 });
    // A perfect gradient ratio does not make up for a lower accuracy; a gain within the
    // margin is no gain; an accuracy gain with a rising loss is mixed.
    let r = judge(vec![
        trial("base", None, 0.50, 1.5, 1e-4),
        trial("worse", lr, 0.40, 1.9, 1.0),
        trial("same", clip, 0.51, 1.5, 1.0),
        trial("mixed", bn, 0.60, 2.0, 1.0),
    ]);
    assert_eq!(r.best().map(|t| t.label.as_str()), None);
    assert_eq!(verdict_of(&r, "worse"), Verdict::Worse);
    assert_eq!(verdict_of(&r, "same"), Verdict::NoBetter);
    assert_eq!(verdict_of(&r, "mixed"), Verdict::Mixed);
    assert!(
        r.recommendation().starts_with("none"),
        "{}",
        r.recommendation()
    );

    // When accuracy cannot tell them apart, a clearly lower validation loss can, but only
    // at an accuracy no lower than the baseline's.
    let r = judge(vec![
        trial("base", None, 0.10, 2.3, 1e-4),
        trial("lower acc", lr, 0.09, 1.0, 1.0),
        trial("slightly", clip, 0.10, 2.2, 1.0),
        trial("clearly", bn, 0.10, 1.2, 1.0),
    ]);
    assert_eq!(verdict_of(&r, "lower acc"), Verdict::NoBetter);
    assert_eq!(verdict_of(&r, "slightly"), Verdict::NoBetter);
    assert_eq!(r.best().unwrap().label, "clearly");

    // The best better remedy is recommended and ranked first, even when a worse one has
    // the healthier gradient ratio.
    let r = judge(vec![
        trial("base", None, 0.50, 1.5, 1e-4),
        trial("worse", lr, 0.30, 2.0, 1.0),
        trial("good", clip, 0.60, 1.2, 1e-3),
        trial("best", res, 0.80, 0.7, 1e-2),
    ]);
    assert_eq!(r.best().unwrap().label, "best");
    assert_eq!(r.recommended, Some(0));
    assert_eq!(verdict_of(&r, "good"), Verdict::Better);
    assert_eq!(r.trials.last().unwrap().label, "worse");
    assert!(
        r.recommendation().contains("50.0% → 80.0%"),
        "{}",
        r.recommendation()
    );

    // Divergence is worst; a baseline that diverged is beaten by any remedy that did not.
    let nan = |mut t: Trial| {
        t.nan = true;
        t.diverged = Some(NonFiniteError {
            step: 7,
            epoch: Some(1),
            tensor: "loss.rows".to_string(),
            op: "the loss (per-row losses of the batch)".to_string(),
            layer: None,
            input_peak: None,
            also: Vec::new(),
            stopped_after: 9,
            after_epoch: false,
        });
        t.val_accuracy = None;
        t.val_loss = None;
        t
    };
    let r = judge(vec![
        trial("base", None, 0.50, 1.5, 1e-4),
        nan(trial("nan", bn, 0.99, 0.1, 1.0)),
    ]);
    assert_eq!(verdict_of(&r, "nan"), Verdict::Diverged);
    assert!(r.best().is_none());
    let r = judge(vec![
        nan(trial("base", None, 0.1, 9.0, 1e-4)),
        trial("clip", clip, 0.15, 2.2, 1.0),
    ]);
    assert_eq!(r.best().unwrap().label, "clip");
    assert!(r.table().contains("NaN at step 7"), "{}", r.table());

    // A remedy cut short by the budget that did not win is not called worse.
    let mut short = trial("short", bn, 0.2, 2.2, 1.0);
    short.cut_short = true;
    let r = judge(vec![trial("base", None, 0.5, 1.5, 1e-4), short]);
    assert_eq!(verdict_of(&r, "short"), Verdict::CutShort);

    assert!(TrialReport::judge(
        vec![trial("no baseline", bn, 0.5, 1.5, 1.0)],
        Measure::ValidationAccuracy,
        TrialOptions::default(),
        50,
        1.0
    )
    .is_err());
}

#[test]
fn candidates_cover_the_toolbox_and_leave_out_what_the_model_does() {
    let spec = deep_sigmoid(64, 10);
    let c = candidates(&spec);
    let flags: Vec<&str> = c.iter().map(|r| r.flags.as_str()).collect();
    for want in [
        "--init glorot-uniform",
        "--activation relu --init he-normal",
        "--activation leaky-relu --init he-normal",
        "--activation elu --init he-normal",
        "--activation selu --init lecun-normal",
        "--batch-norm before",
        "--residual 2",
        "--clip-norm 1",
        "--lr 0.005",
    ] {
        assert!(flags.contains(&want), "{want} missing from {flags:?}");
    }
    // Each remedy changes its own part of the model and nothing else.
    for r in &c {
        let s = r.apply(&spec);
        assert_ne!(s, spec, "{}", r.label);
        let back = MlpSpec {
            activation: spec.activation,
            init: spec.init,
            batch_norm: spec.batch_norm,
            residual_every: spec.residual_every,
            clip: spec.clip,
            optimizer: spec.optimizer,
            ..s.clone()
        };
        assert_eq!(back, spec, "{}", r.label);
    }

    // A ReLU model with He init, batch norm, skip connections and clipping already does
    // most of it.
    let done = MlpSpec::new(64, &[32; 6], 10)
        .activation(Activation::Relu)
        .init(Init::HeUniform)
        .batch_norm(BatchNorm::default())
        .residual(2)
        .clip(Clip::Norm(5.0));
    let flags: Vec<String> = candidates(&done).into_iter().map(|r| r.flags).collect();
    assert_eq!(
        flags,
        [
            "--activation leaky-relu --init he-normal",
            "--activation elu --init he-normal",
            "--activation selu --init lecun-normal",
            "--lr 0.001",
        ]
    );
    // `auto` is the matched init already.
    let auto = MlpSpec::new(64, &[32; 6], 10).activation(Activation::Tanh);
    assert!(candidates(&auto)
        .iter()
        .all(|r| !matches!(r.change, Change::Init { .. })));
}

#[test]
fn the_budget_bounds_the_trials() {
    let (train, valid) = digits();
    let spec = deep_sigmoid(train.input_dim, 10);
    let remedies = candidates(&spec);
    // No time at all: the baseline still takes one step (it sets the length every remedy
    // is compared at), and every remedy is skipped, never recommended.
    let opts = TrialOptions {
        steps: 90,
        budget: Duration::from_nanos(1),
        ..TrialOptions::default()
    };
    let report = run_trials(
        &spec,
        &remedies,
        &train,
        Some(&valid),
        &opts,
        &mut cpu,
        |_| {},
    )
    .unwrap();
    let base = report.baseline();
    assert!(base.cut_short);
    assert_eq!(base.steps, 1);
    assert_eq!(report.steps, 1);
    for t in report.trials.iter().filter(|t| t.change.is_some()) {
        assert_eq!(t.verdict, Verdict::Skipped, "{}", t.label);
        assert_eq!(t.steps, 0);
    }
    assert!(report.best().is_none());
    assert!(report.too_short);
    assert!(report.table().contains("skipped (budget)"));
    assert!(
        report.recommendation().contains("too few to judge"),
        "{}",
        report.recommendation()
    );

    // Trials a step or two long measure the initial weights, not a cure: even a remedy
    // that measured better then is not recommended.
    let short = TrialReport::judge(
        vec![
            trial("base", None, 0.10, 2.3, 1e-4),
            trial("lucky", Some(Change::BatchNormBefore), 0.30, 1.9, 1.0),
        ],
        Measure::ValidationAccuracy,
        TrialOptions::default(),
        2,
        1.0,
    )
    .unwrap();
    assert_eq!(short.trials[0].verdict, Verdict::Better);
    assert!(short.best().is_none() && short.too_short);

    let bad = TrialOptions {
        steps: 0,
        ..TrialOptions::default()
    };
    let err = run_trials(&spec, &remedies, &train, None, &bad, &mut cpu, |_| {}).unwrap_err();
    assert!(err.to_string().contains("at least 1 step"), "{err}");
}

/// Runs the binary on the CPU backend; returns (success, stdout, stderr).
fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    common::run_cli_env(args, cwd, &[("STEADYGRAD_BACKEND", "cpu")])
}

#[test]
fn diagnose_prints_and_carries_the_measured_table() {
    let tmp = TempDir::new("remedy-cli");
    let dir = data_dir();
    let (t, v) = (dir.join("digits_train.csv"), dir.join("digits_valid.csv"));
    let base = [
        "diagnose",
        "--data",
        t.to_str().unwrap(),
        "--valid-data",
        v.to_str().unwrap(),
        "--depth",
        "20",
        "--width",
        "32",
        "--activation",
        "sigmoid",
        "--init",
        "normal",
        "--epochs",
        "2",
    ];
    let (ok, out, err) = run(&[&base[..], &["--json"]].concat(), tmp.path());
    assert!(ok, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(j["healthy"], false);
    let trials = j["trials"]["trials"].as_array().expect("the table");
    assert_eq!(trials.len(), 10, "the baseline and nine remedies");
    assert_eq!(j["trials"]["measure"], "validation-accuracy");
    let baseline = trials
        .iter()
        .find(|t| t["verdict"] == "baseline")
        .expect("the baseline row");
    let i = j["trials"]["recommended"]
        .as_u64()
        .expect("a recommendation") as usize;
    let rec = &trials[i];
    assert_eq!(rec["verdict"], "better");
    assert_eq!(j["recommendation"]["flags"], rec["flags"]);
    assert_eq!(j["recommendation"]["label"], rec["label"]);
    let acc = |t: &serde_json::Value| t["val_accuracy"].as_f64().unwrap();
    assert!(acc(rec) >= acc(baseline) + 0.02, "{out}");
    for t in trials {
        assert!(t["flags"].is_string() && t["grad_ratio"].is_number(), "{t}");
        if t["verdict"] != "baseline" && acc(t) < acc(baseline) {
            assert_ne!(t["verdict"], "better", "{t}");
        }
    }
    assert!(
        j["advice"]
            .as_str()
            .unwrap()
            .contains(rec["flags"].as_str().unwrap()),
        "{out}"
    );
    assert!(j["trials"]["seconds"].as_f64().unwrap() > 0.0);

    // The text: findings as evidence, the unmeasured suggestions gone, then the table.
    let (ok, out, err) = run(&base, tmp.path());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("verdict: 1 problem") || out.contains("problems"),
        "{out}"
    );
    assert!(!out.contains("\n  1. "), "unmeasured advice printed: {out}");
    assert!(
        out.contains("remedy trials: the unchanged model and 9 remedies"),
        "{out}"
    );
    assert!(out.contains("unchanged (baseline)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("recommendation: "))
        .expect("a recommendation line");
    assert!(line.contains(rec["flags"].as_str().unwrap()), "{line}");

    // Without trials: no table, and the suggestions are labelled as unmeasured.
    let (ok, out, err) = run(&[&base[..], &["--no-trials"]].concat(), tmp.path());
    assert!(ok, "{out}{err}");
    assert!(!out.contains("remedy trials"), "{out}");
    assert!(out.contains("not measured"), "{out}");
    let (ok, out, _) = run(
        &[&base[..], &["--no-trials", "--json"]].concat(),
        tmp.path(),
    );
    assert!(ok);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(j["trials"].is_null() && j["recommendation"].is_null());

    for (flag, value, msg) in [
        ("--trial-budget", "0", "--trial-budget"),
        ("--trial-budget", "NaN", "--trial-budget"),
        ("--trial-steps", "0", "--trial-steps"),
    ] {
        let (ok, _, err) = run(&[&base[..], &[flag, value]].concat(), tmp.path());
        assert!(!ok && err.contains(msg), "{flag} {value}: {err}");
    }
}

/// Reduce-on-plateau is offered for a rising validation loss, only where it applies, and
/// what `diagnose` prints for it is a command line that runs: `train` with the trial's
/// flags reaches the validation loss and accuracy the trial measured (printed to 4
/// decimals and 0.1%), and a rate the schedule reduced.
#[test]
fn plateau_remedy_runs_as_printed_and_measures_that_run() {
    use steadygrad::health::remedy::schedule_candidates;
    use steadygrad::health::WarningKind;
    use steadygrad::LrSchedule;
    let spec = deep_sigmoid(64, 10);
    let rising = [WarningKind::RisingValidationLoss];
    let c = schedule_candidates(&spec, &rising, true, 20);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].flags, "--schedule plateau --plateau-patience 2");
    assert!(matches!(c[0].apply(&spec).schedule, LrSchedule::Plateau(p) if p.patience == 2));
    assert!(schedule_candidates(&spec, &rising, false, 20).is_empty());
    assert!(schedule_candidates(&spec, &[WarningKind::Vanishing], true, 20).is_empty());
    let cosine = spec.clone().schedule(LrSchedule::Cosine {
        t_max: 5,
        eta_min: 0.0,
    });
    assert!(schedule_candidates(&cosine, &rising, true, 20).is_empty());

    // 120 rows and a wide network: the validation loss rises within a few epochs.
    let tmp = TempDir::new("remedy-plateau");
    let dir = data_dir();
    let full = std::fs::read_to_string(dir.join("digits_train.csv")).unwrap();
    let small: String = full.lines().take(121).map(|l| format!("{l}\n")).collect();
    let small = tmp.write("small.csv", small.as_bytes());
    let v = dir.join("digits_valid.csv");
    let model = [
        "--data",
        small.to_str().unwrap(),
        "--valid-data",
        v.to_str().unwrap(),
        "--depth",
        "2",
        "--width",
        "128",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--batch",
        "16",
        "--epochs",
        "20",
    ];
    let (ok, out, err) = run(
        &[
            &["diagnose"],
            &model[..],
            &["--json", "--rising-factor", "1.05"],
        ]
        .concat(),
        tmp.path(),
    );
    assert!(ok, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let kinds: Vec<&str> = j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"rising-validation-loss"),
        "{kinds:?}: {out}"
    );
    let trials = j["trials"]["trials"].as_array().expect("the table");
    let row = trials
        .iter()
        .find(|t| t["change"]["kind"] == "plateau")
        .unwrap_or_else(|| panic!("a plateau trial in {out}"));
    assert_eq!(row["flags"], "--schedule plateau --plateau-patience 2");
    assert_eq!(row["steps"], 20 * 8, "{row}");

    let flags: Vec<&str> = row["flags"].as_str().unwrap().split(' ').collect();
    let (ok, out, err) = run(&[&["train"], &model[..], &flags[..]].concat(), tmp.path());
    assert!(ok, "the printed flags run: {out}{err}");
    let last = out
        .lines()
        .rfind(|l| l.starts_with("epoch "))
        .expect("epoch lines");
    let field = |name: &str| -> String {
        let rest = &last[last
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {last}"))
            + name.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('%')
            .to_string()
    };
    let val_loss: f64 = field("val loss ").parse().unwrap();
    let val_acc: f64 = field("val acc ").parse().unwrap();
    let trial_loss = row["val_loss"].as_f64().unwrap();
    let trial_acc = 100.0 * row["val_accuracy"].as_f64().unwrap();
    assert!(
        (val_loss - trial_loss).abs() <= 5e-5,
        "{last} vs trial {row}"
    );
    assert!(
        (val_acc - trial_acc).abs() <= 0.05 + 1e-9,
        "{last} vs trial {row}"
    );
    // The baseline's figures differ: the schedule changed the run.
    let base = trials.iter().find(|t| t["verdict"] == "baseline").unwrap();
    assert_ne!(base["val_loss"], row["val_loss"], "{out}");
}
