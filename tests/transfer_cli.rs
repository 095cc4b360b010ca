//! Transfer learning from the command line as a Keras user does it (Géron's exercise:
//! digits 0–7 pretrained, 8 against 9 from 50 rows): the pretrained model's input
//! standardization is reused unless refitted, reusing layers under another activation is
//! refused unless allowed, and `--unfreeze-lr` sets the rate the reused layers are
//! fine-tuned with.

mod common;

use common::{run_cli, TempDir};
use std::path::Path;
use steadygrad::checkpoint::load_checkpoint;

/// Rows of `data/digits_{split}.csv` whose label is in `keep`, relabelled by position in
/// `keep`, at most `limit` of them.
fn subset(split: &str, keep: &[usize], limit: usize, out: &Path) {
    let path = format!("{}/data/digits_{split}.csv", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let mut s = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let (x, label) = line.rsplit_once(',').unwrap();
        let label: usize = label.parse().unwrap();
        if let Some(i) = keep.iter().position(|&k| k == label) {
            if s.lines().count() > limit {
                break;
            }
            s += &format!("{x},{i}\n");
        }
    }
    std::fs::write(out, s).unwrap();
}

fn ok(args: &[&str], d: &Path) -> String {
    let (ok, out, err) = run_cli(args, d);
    assert!(ok, "{args:?}\n{out}\n{err}");
    out
}

/// Pretrains on digits 0–7 into `pre.safetensors`; writes the 8-vs-9 files.
fn setup(d: &Path) {
    subset(
        "train",
        &[0, 1, 2, 3, 4, 5, 6, 7],
        usize::MAX,
        &d.join("pre.csv"),
    );
    subset("train", &[8, 9], 50, &d.join("new.csv"));
    subset("valid", &[8, 9], usize::MAX, &d.join("new_valid.csv"));
    ok(
        &[
            "--backend",
            "cpu",
            "train",
            "--data",
            "pre.csv",
            "--label-column",
            "label",
            "--depth",
            "3",
            "--width",
            "32",
            "--activation",
            "elu",
            "--epochs",
            "3",
            "--save",
            "pre.safetensors",
            "--quiet",
        ],
        d,
    );
}

const NEW: [&str; 9] = [
    "--backend",
    "cpu",
    "train",
    "--data",
    "new.csv",
    "--valid-data",
    "new_valid.csv",
    "--label-column",
    "label",
];

#[test]
fn init_from_reuses_the_standardizer_refuses_another_activation_and_sets_the_unfreeze_rate() {
    let tmp = TempDir::new("transfer-cli");
    let d = tmp.path();
    setup(d);
    let model = ["--depth", "3", "--width", "32", "--epochs", "2"];
    let pre = load_checkpoint(&d.join("pre.safetensors")).unwrap();
    let pre_std = pre
        .state
        .standardizer
        .clone()
        .expect("a saved standardizer");

    // Reused by default: the new checkpoint carries the pretrained mean and std.
    let out = ok(
        &[
            &NEW[..],
            &model,
            &["--activation", "elu", "--init-from", "pre.safetensors"],
            &["--save", "reuse.safetensors"],
        ]
        .concat(),
        d,
    );
    assert!(
        out.contains("inputs standardized as its training data was"),
        "{out}"
    );
    let reuse = load_checkpoint(&d.join("reuse.safetensors")).unwrap();
    let s = reuse.state.standardizer.unwrap();
    assert_eq!((&s.mean, &s.std), (&pre_std.mean, &pre_std.std));

    // Refitted on request: the 50 new rows have other statistics.
    ok(
        &[
            &NEW[..],
            &model,
            &["--activation", "elu", "--init-from", "pre.safetensors"],
            &["--refit-standardizer", "--save", "refit.safetensors"],
        ]
        .concat(),
        d,
    );
    let refit = load_checkpoint(&d.join("refit.safetensors")).unwrap();
    let s = refit.state.standardizer.unwrap();
    assert_ne!(s.mean, pre_std.mean);

    // Another activation: refused, naming both; allowed when asked.
    let other = [
        &NEW[..],
        &model,
        &["--activation", "sigmoid", "--init-from", "pre.safetensors"],
    ]
    .concat();
    let (ok_run, _, err) = run_cli(&other, d);
    assert!(!ok_run);
    for f in ["elu", "sigmoid", "--allow-activation-change"] {
        assert!(err.contains(f), "stderr lacks '{f}': {err}");
    }
    ok(&[&other[..], &["--allow-activation-change"]].concat(), d);

    // --unfreeze-lr: with a negligible rate the reused layers, unfrozen after epoch 1,
    // stay where they were; at the optimizer's own rate they move.
    let layer0 = |file: &str| -> Vec<f32> {
        let c = load_checkpoint(&d.join(file)).unwrap();
        let t = c
            .tensors
            .iter()
            .find(|t| t.name == "layers.0.linear.weight")
            .unwrap();
        t.values.clone()
    };
    let unfreeze = |extra: &[&str], save: &str| {
        ok(
            &[
                &NEW[..],
                &model,
                &[
                    "--activation",
                    "elu",
                    "--init-from",
                    "pre.safetensors",
                    "--freeze",
                    "3",
                ],
                &["--unfreeze-at-epoch", "2", "--lr", "0.5", "--save", save],
                extra,
            ]
            .concat(),
            d,
        )
    };
    let out = unfreeze(&["--unfreeze-lr", "1e-12"], "slow.safetensors");
    assert!(out.contains("learning rate 0.000000000001"), "{out}");
    unfreeze(&[], "fast.safetensors");
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let before = layer0("pre.safetensors");
    // 1e-12 × any gradient here is far below f32 resolution of weights of order 0.1.
    assert!(max_diff(&before, &layer0("slow.safetensors")) < 1e-6);
    assert!(max_diff(&before, &layer0("fast.safetensors")) > 1e-4);
}
