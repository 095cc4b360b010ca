//! Regularization and Monte Carlo dropout from the command line: the penalty in the epoch
//! report and the JSON-lines log, `predict --mc-samples`, and clear errors for bad groups.

mod common;

use common::{write_spirals_csv as write_csv, TempDir};
use std::path::Path;

/// The binary on the CPU backend, which these small runs need no GPU for.
fn run(args: &[&str], cwd: &Path) -> (bool, String) {
    let (ok, out, err) = common::run_cli(&[&["--backend", "cpu"][..], args].concat(), cwd);
    (ok, out + &err)
}

const DATA: [&str; 8] = [
    "--data",
    "s.csv",
    "--label-column",
    "label",
    "--depth",
    "2",
    "--width",
    "16",
];

#[test]
fn penalty_is_reported_and_mc_predictions_are_written() {
    let tmp = TempDir::new("reg-cli");
    let d = tmp.path();
    write_csv(&d.join("s.csv"), 40);
    let flags = [
        "--epochs",
        "2",
        "--l1",
        "1e-4",
        "--l2",
        "1e-3",
        "--max-norm",
        "2",
    ];
    let more = [
        "--dropout",
        "0.2",
        "--save",
        "m.safetensors",
        "--log",
        "run.jsonl",
    ];
    let (ok, out) = run(&[&["train"][..], &DATA, &flags, &more].concat(), d);
    assert!(ok, "{out}");
    let epochs: Vec<&str> = out.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(epochs.len(), 2, "{out}");
    assert!(epochs.iter().all(|l| l.contains("penalty")), "{out}");
    let log = std::fs::read_to_string(d.join("run.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["record"] == "epoch")
        .collect();
    assert_eq!(records.len(), 2, "{log}");
    assert!(records.iter().all(|r| r["penalty"].as_f64().unwrap() > 0.0));

    let predict = [
        "predict",
        "--checkpoint",
        "m.safetensors",
        "--data",
        "s.csv",
    ];
    let label = ["--label-column", "label", "--out", "mc.csv"];
    let (ok, out) = run(&[&predict[..], &label, &["--mc-samples", "4"]].concat(), d);
    assert!(ok, "{out}");
    let csv = std::fs::read_to_string(d.join("mc.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "mean_0,mean_1,mean_2,std_0,std_1,std_2,class"
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 120);
    for r in &rows {
        let sum: f64 = r[..3].iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "mean probabilities sum to 1: {r:?}"
        );
        let best = (0..3).fold(0, |b, j| if r[j] > r[b] { j } else { b });
        assert_eq!(r[6] as usize, best, "class is the argmax of the means");
    }
    assert!(rows.iter().any(|r| r[3..6].iter().any(|&s| s > 0.0)));
    let again = run(&[&predict[..], &label, &["--mc-samples", "4"]].concat(), d);
    assert!(again.0);
    assert_eq!(
        std::fs::read_to_string(d.join("mc.csv")).unwrap(),
        csv,
        "seeded"
    );

    let (ok, out) = run(&[&predict[..], &label, &["--mc-samples", "0"]].concat(), d);
    assert!(!ok && out.contains("at least 1 sample"), "{out}");
}

#[test]
fn mc_without_dropout_and_bad_groups_are_clear_errors() {
    let tmp = TempDir::new("reg-cli-err");
    let d = tmp.path();
    write_csv(&d.join("s.csv"), 40);
    let (ok, out) = run(
        &[
            &["train"][..],
            &DATA,
            &["--epochs", "1", "--save", "p.safetensors"],
        ]
        .concat(),
        d,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        &[
            "predict",
            "--checkpoint",
            "p.safetensors",
            "--data",
            "s.csv",
            "--label-column",
            "label",
            "--out",
            "o.csv",
            "--mc-samples",
            "3",
        ],
        d,
    );
    assert!(!ok && out.contains("no dropout"), "{out}");

    let base = "[model]\ninput = 2\nhidden = [8, 8]\noutput = 3\n\
                [optimizer]\nkind = \"sgd\"\nlr = 0.05\nmomentum = 0.0\nnesterov = false\nweight_decay = 0.0\n[training]\nepochs = 1\n";
    for (groups, want) in [
        (
            "[[regularization]]\nlayers = [0, 1]\nl2 = 0.1\n\
             [[regularization]]\nlayers = \"1..3\"\nl1 = 0.1\n",
            "layer 1 is in regularization groups 0 and 1",
        ),
        (
            "[[regularization]]\nlayers = [3]\nl2 = 0.1\n",
            "selects layer 3, but the model has 3 linear layers",
        ),
        (
            "[[regularization]]\nlayers = [0]\nmax_norm = -1.0\n",
            "max_norm must be finite and > 0",
        ),
    ] {
        std::fs::write(d.join("c.toml"), format!("{base}{groups}")).unwrap();
        let (ok, out) = run(
            &[
                "train",
                "--data",
                "s.csv",
                "--label-column",
                "label",
                "--config",
                "c.toml",
            ],
            d,
        );
        assert!(!ok && out.contains(want), "{want}: {out}");
    }
}
