//! `experiment vanishing` on the user's data: every configuration with its claim and a
//! verdict, the Markdown table, and verdicts that follow the measurements (a claim that did
//! not happen is reported as not holding).

mod common;

use common::TempDir;
use std::path::Path;
use steadygrad::health::experiment::{vanishing_configs, verdicts, Claim, Outcome};
use steadygrad::health::{NonFiniteError, WarningKind};
use steadygrad::{BackendChoice, FitOptions, MlpSpec, Model, Optimizer};

fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    common::run_cli(args, cwd)
}

/// The header and first `rows` rows of the digits training set.
fn digits_head(rows: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits_train.csv");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().take(rows + 1).collect::<Vec<_>>().join("\n") + "\n"
}

#[test]
fn runs_on_a_data_file_and_writes_every_verdict_as_markdown() {
    let tmp = TempDir::new("experiment");
    let d = tmp.path();
    tmp.write("small.csv", digits_head(120).as_bytes());
    let args = [
        "experiment",
        "vanishing",
        "--data",
        "small.csv",
        "--label-column",
        "label",
        "--depth",
        "3",
        "--width",
        "8",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--no-plots",
        "--quiet",
        "--markdown",
        "table.md",
    ];
    let (ok, out, err) = run(&args, d);
    assert!(ok, "{out}{err}");
    let md = std::fs::read_to_string(d.join("table.md")).unwrap();
    assert!(
        md.contains("experiment vanishing --data small.csv"),
        "no command line:\n{md}"
    );
    assert!(md.contains("commit `"), "no commit:\n{md}");
    assert!(md.contains("small.csv (96 training rows"), "no data:\n{md}");
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| configuration"))
        .collect();
    let configs = vanishing_configs(20.0);
    assert_eq!(rows.len(), configs.len(), "{md}");
    for (c, row) in configs.iter().zip(&rows) {
        assert!(row.starts_with(&format!("| {} |", c.label)), "{row}");
        assert!(
            row.contains("claim holds: ") || row.contains("claim does NOT hold here: "),
            "no verdict in {row}"
        );
    }
    // The printed table carries the same verdicts.
    assert!(out.contains("claims:"), "{out}");
    let printed = out.matches("claim holds").count() + out.matches("claim does NOT hold").count();
    assert_eq!(printed, configs.len(), "{out}");
    assert!(!d.read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));

    // JSON carries the verdicts too.
    let (ok, out, err) = run(&[&args[..14], &["--no-plots", "--json"]].concat(), d);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(v["verdicts"].as_array().unwrap().len(), configs.len());
    assert_eq!(v["outcomes"][0]["claim"], "vanishes");
}

#[test]
fn bad_data_and_markdown_paths_are_clear_errors() {
    let tmp = TempDir::new("experiment");
    let d = tmp.path();
    let (ok, _, err) = run(
        &[
            "experiment",
            "vanishing",
            "--data",
            "missing.csv",
            "--no-plots",
        ],
        d,
    );
    assert!(!ok && err.contains("missing.csv"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    tmp.write("small.csv", digits_head(40).as_bytes());
    let (ok, _, err) = run(
        &[
            "experiment",
            "vanishing",
            "--data",
            "small.csv",
            "--depth",
            "1",
            "--width",
            "4",
            "--epochs",
            "1",
            "--batch",
            "8",
            "--no-plots",
            "--quiet",
            "--markdown",
            "no-such-dir/table.md",
        ],
        d,
    );
    assert!(!ok && err.contains("no-such-dir/table.md"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A real non-finite stop (tiny model, absurd learning rate, CPU backend), so the test
/// does not depend on how the error's fields are laid out.
fn a_divergence() -> NonFiniteError {
    let data = steadygrad::data::synthetic::spirals(20, 3, 0.05, 1);
    let spec = MlpSpec::new(2, &[8, 8], 3).optimizer(Optimizer::sgd(1e30));
    let mut m = Model::with_backend(spec, &BackendChoice::Cpu).unwrap();
    let opts = FitOptions {
        epochs: 5,
        batch_size: 8,
        shuffle_seed: 1,
        drop_last: false,
    };
    let e = m.fit(&data, None, &opts, |_| {}).unwrap_err();
    e.downcast_ref::<NonFiniteError>()
        .unwrap_or_else(|| panic!("not a non-finite stop: {e:#}"))
        .clone()
}

fn outcome(label: &str, claim: Claim, accuracy: Option<f32>, diverged: bool) -> Outcome {
    Outcome {
        label: label.to_string(),
        claim,
        lr: 0.1,
        ratio_start: Some(0.5),
        ratio_end: Some(0.5),
        final_loss: accuracy.map(|_| 1.0),
        accuracy,
        val_loss: accuracy.map(|_| 1.0),
        diverged: diverged.then(a_divergence),
        warnings: Vec::new(),
        seconds: 0.0,
        stats: Vec::new(),
    }
}

/// Outcomes for `vanishing_configs`, in its order, where every claim holds.
fn all_hold() -> Vec<Outcome> {
    vanishing_configs(20.0)
        .iter()
        .map(|c| match c.claim {
            Claim::Vanishes => {
                let mut o = outcome(&c.label, c.claim, Some(0.1), false);
                o.ratio_start = Some(1e-4);
                o.warnings = vec![WarningKind::Vanishing];
                o
            }
            Claim::Trains | Claim::StaysFinite => outcome(&c.label, c.claim, Some(0.9), false),
            Claim::Diverges => outcome(&c.label, c.claim, None, true),
        })
        .collect()
}

#[test]
fn verdicts_follow_the_measurements() {
    let configs = vanishing_configs(20.0);
    let good = all_hold();
    let v = verdicts(&configs, &good);
    assert!(v.iter().all(|v| v.holds), "{v:#?}");
    assert!(v[1]
        .line()
        .starts_with("claim holds: 90.0% val acc vs 10.0% val acc baseline"));

    let index = |claim: Claim| configs.iter().position(|c| c.claim == claim).unwrap();
    let (trains, diverges, clipped) = (
        index(Claim::Trains),
        index(Claim::Diverges),
        index(Claim::StaysFinite),
    );

    // The baseline's gradients did not vanish.
    let mut o = good.clone();
    o[0].ratio_start = Some(0.2);
    assert!(!verdicts(&configs, &o)[0].holds);

    // A cure only 10 points better than the baseline, or still vanishing, does not hold.
    let mut o = good.clone();
    o[trains].accuracy = Some(0.2);
    let v = verdicts(&configs, &o);
    assert!(!v[trains].holds);
    assert!(
        v[trains].line().starts_with("claim does NOT hold here"),
        "{}",
        v[trains].line()
    );
    let mut o = good.clone();
    o[trains].warnings = vec![WarningKind::Vanishing];
    assert!(!verdicts(&configs, &o)[trains].holds);
    let mut o = good.clone();
    o[trains] = outcome("x", Claim::Trains, None, true);
    assert!(!verdicts(&configs, &o)[trains].holds);

    // No divergence without clipping: neither that claim nor clipping's is shown.
    let mut o = good.clone();
    o[diverges] = outcome("x", Claim::Diverges, Some(0.9), false);
    let v = verdicts(&configs, &o);
    assert!(!v[diverges].holds && !v[clipped].holds, "{v:#?}");
    assert!(v[clipped]
        .evidence
        .contains("so did the run without clipping"));

    // Clipped but diverged anyway, or finite but not trained.
    let mut o = good.clone();
    o[clipped] = outcome("x", Claim::StaysFinite, None, true);
    assert!(!verdicts(&configs, &o)[clipped].holds);
    let mut o = good;
    o[clipped].accuracy = Some(0.1);
    assert!(!verdicts(&configs, &o)[clipped].holds);
}
