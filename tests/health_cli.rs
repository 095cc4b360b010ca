//! The gradient-health commands end to end: diagnose and experiment (text and JSON),
//! train with a metric log and plots, and clear errors for bad options.

mod common;

use common::TempDir;

use std::path::Path;

fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    common::run_cli(args, cwd)
}

#[test]
fn diagnose_prints_a_table_and_a_verdict() {
    let tmp = TempDir::new("health-cli");
    let d = tmp.path();
    let small = [
        "--depth", "3", "--width", "8", "--epochs", "1", "--points", "40",
    ];
    let (ok, out, err) = run(&[&["diagnose"], &small[..]].concat(), d);
    assert!(ok, "{out}{err}");
    assert!(out.contains("per-layer health at step"), "{out}");
    assert!(out.contains("layer units"), "{out}");
    assert!(out.contains("verdict:"), "{out}");
    // Output is not a terminal: no progress bar control characters.
    assert!(!err.contains('\u{1b}'), "{err}");

    let (ok, out, err) = run(&[&["diagnose", "--json"], &small[..]].concat(), d);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(
        v["model"]["layer_sizes"],
        serde_json::json!([2, 8, 8, 8, 3])
    );
    assert_eq!(v["last"]["layers"].as_array().unwrap().len(), 4);
    assert!(v["healthy"].is_boolean() && v["warnings"].is_array());

    // A deep sigmoid network with N(0,1) weights is diagnosed as vanishing.
    let (ok, out, err) = run(
        &[
            "diagnose",
            "--json",
            "--depth",
            "20",
            "--width",
            "32",
            "--activation",
            "sigmoid",
            "--init",
            "normal",
            "--lr",
            "0.1",
            "--epochs",
            "2",
            "--points",
            "60",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["warnings"][0]["kind"], "vanishing", "{out}");

    let (ok, _, err) = run(&["diagnose", "--stats-every", "0"], d);
    assert!(
        !ok && err.contains("--stats-every must be at least 1"),
        "{err}"
    );
    let (ok, _, err) = run(&["diagnose", "--window", "0"], d);
    assert!(!ok && err.contains("window"), "{err}");
}

#[test]
fn experiment_compares_every_configuration() {
    let tmp = TempDir::new("health-cli");
    let d = tmp.path();
    let args = [
        "experiment",
        "vanishing",
        "--depth",
        "3",
        "--width",
        "8",
        "--epochs",
        "1",
        "--points",
        "20",
        "--plots",
        "exp-plots",
    ];
    let (ok, out, err) = run(&args, d);
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration"), "{out}");
    for label in [
        "sigmoid + normal:0:1",
        "tanh + glorot-uniform",
        "relu + he-normal",
        "selu + lecun-normal",
        "batch norm",
        "residual 2",
        "clip 1",
    ] {
        assert!(out.contains(label), "{label} missing from\n{out}");
    }
    for f in ["training", "grad_heatmap", "activation_std"] {
        for ext in ["svg", "png"] {
            let p = d.join("exp-plots").join(format!("{f}.{ext}"));
            assert!(
                p.metadata().map(|m| m.len() > 1000).unwrap_or(false),
                "{}",
                p.display()
            );
        }
    }
    let (ok, out, err) = run(&[&args[..], &["--json", "--no-plots"]].concat(), d);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcomes"].as_array().unwrap().len(), 9);
    assert_eq!(v["plots"].as_array().unwrap().len(), 0);

    let (ok, _, err) = run(&["experiment", "vanishing", "--batch", "1"], d);
    assert!(!ok && err.contains("--batch"), "{err}");
}

#[test]
fn train_writes_a_log_and_plots() {
    let tmp = TempDir::new("health-cli");
    let d = tmp.path();
    let (ok, out, err) = run(
        &[
            "train",
            "--depth",
            "2",
            "--width",
            "8",
            "--epochs",
            "2",
            "--points",
            "20",
            "--log",
            "run.csv",
            "--stats-every",
            "2",
            "--plots",
            "train-plots",
            "--quiet",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    assert!(
        !out.contains("epoch   1"),
        "--quiet drops the epoch lines: {out}"
    );
    let log = std::fs::read_to_string(d.join("run.csv")).unwrap();
    // 48 training rows in batches of 32: 2 steps per epoch, 4 steps, every 2nd.
    assert_eq!(log.lines().count(), 1 + 2, "{log}");
    assert!(d.join("train-plots/grad_heatmap.png").exists());
    let (ok, _, err) = run(&["train", "--epochs", "1", "--log", "run.txt"], d);
    assert!(!ok && err.contains(".csv"), "{err}");
}

/// The run that goes nowhere on real data (10 ReLU layers, Adam at lr 0.1 on the digits:
/// the loss spikes past 1000 and accuracy ends at chance) is not healthy, and says why. The
/// statistics detectors alone found only dying units and, before the run verdicts, such a
/// run could be reported healthy. The CPU backend keeps the trajectory the same on any
/// machine.
#[test]
fn diagnose_calls_a_diverging_digits_run_unhealthy() {
    let tmp = TempDir::new("health-cli");
    let data = |f: &str| format!("{}/data/{f}", env!("CARGO_MANIFEST_DIR"));
    let (train, valid) = (data("digits_train.csv"), data("digits_valid.csv"));
    let args = [
        "--backend",
        "cpu",
        "diagnose",
        "--data",
        &train,
        "--valid-data",
        &valid,
        "--depth",
        "10",
        "--width",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "0.1",
        "--epochs",
        "5",
        "--no-trials",
        "--json",
    ];
    let (ok, out, err) = run(&args, tmp.path());
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], false, "{out}");
    let kinds: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"loss-spike"), "{kinds:?}");
    assert!(kinds.contains(&"accuracy-collapse"), "{kinds:?}");
}

/// `--on-spike stop` on the digits: the run that diverges (10 ReLU layers, Adam at lr 0.1)
/// stops on the gradient spike, before the epochs run out and before any NaN; healthy
/// runs with statistics at every step (where late batches routinely sit 10–20× above the
/// median gradient) train to the end. CPU backend: the same trajectory on any machine.
#[test]
fn on_spike_stop_ends_a_diverging_run_and_spares_healthy_ones() {
    let tmp = TempDir::new("health-cli");
    let data = |f: &str| format!("{}/data/{f}", env!("CARGO_MANIFEST_DIR"));
    let (train, valid) = (data("digits_train.csv"), data("digits_valid.csv"));
    let base = [
        "--backend",
        "cpu",
        "train",
        "--data",
        &train,
        "--valid-data",
        &valid,
        "--quiet",
        "--on-spike",
        "stop",
        "--stats-every",
        "1",
    ];
    let diverging = [
        "--depth",
        "10",
        "--optimizer",
        "adam",
        "--lr",
        "0.1",
        "--epochs",
        "5",
    ];
    let (ok, out, err) = run(&[&base[..], &diverging[..]].concat(), tmp.path());
    assert!(!ok, "{out}{err}");
    assert!(err.contains("stopped on a gradient spike at step"), "{err}");
    assert!(
        !err.contains("non-finite"),
        "the spike comes before any NaN: {err}"
    );
    for healthy in [
        &["--epochs", "20"][..],
        &["--epochs", "20", "--optimizer", "adam"][..],
    ] {
        let (ok, out, err) = run(&[&base[..], healthy].concat(), tmp.path());
        assert!(ok, "{healthy:?}: {out}{err}");
        assert!(out.contains("trained 20 epochs"), "{out}");
    }
    // Without statistics there is nothing to watch.
    let (ok, _, err) = run(
        &[&base[..10], &["--stats-every", "0"][..]].concat(),
        tmp.path(),
    );
    assert!(
        !ok && err.contains("--on-spike watches statistics"),
        "{err}"
    );
}
