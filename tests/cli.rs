//! The command line end to end: train on a CSV file with a checkpoint, resume, evaluate,
//! predict, transfer, and clear errors for bad input.

mod common;

use common::TempDir;

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_steadygrad"))
}

/// Runs the binary; returns (success, stdout + stderr).
fn run(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = bin().args(args).current_dir(cwd).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn write_csv(path: &Path) {
    let data = steadygrad::data::synthetic::spirals(60, 3, 0.05, 3);
    let mut s = String::from("a,b,label\n");
    for r in 0..data.rows {
        s += &format!(
            "{},{},{}\n",
            data.features[2 * r],
            data.features[2 * r + 1],
            data.targets[r]
        );
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn train_save_resume_eval_predict() {
    let tmp = TempDir::new("cli");
    let d = tmp.path();
    write_csv(&d.join("s.csv"));
    let common = [
        "--data",
        "s.csv",
        "--label-column",
        "label",
        "--depth",
        "3",
        "--width",
        "16",
    ];
    let (ok, out) = run(
        &[
            &["train"][..],
            &common,
            &["--epochs", "2", "--save", "m.safetensors"],
        ]
        .concat(),
        d,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("device:") && out.contains("epoch   2") && out.contains("samples/s"),
        "{out}"
    );
    let (ok, out) = run(
        &[
            &["train"][..],
            &common,
            &[
                "--epochs",
                "3",
                "--save",
                "m.safetensors",
                "--resume",
                "m.safetensors",
            ],
        ]
        .concat(),
        d,
    );
    assert!(
        ok && out.contains("resuming") && out.contains("epoch   3") && !out.contains("epoch   1 "),
        "{out}"
    );
    let (ok, out) = run(
        &[
            "eval",
            "--checkpoint",
            "m.safetensors",
            "--data",
            "s.csv",
            "--label-column",
            "label",
        ],
        d,
    );
    assert!(
        ok && out.contains("180 rows") && out.contains("accuracy"),
        "{out}"
    );
    let (ok, out) = run(
        &[
            "predict",
            "--checkpoint",
            "m.safetensors",
            "--data",
            "s.csv",
            "--label-column",
            "label",
            "--out",
            "p.csv",
        ],
        d,
    );
    assert!(ok, "{out}");
    let preds = std::fs::read_to_string(d.join("p.csv")).unwrap();
    assert_eq!(preds.lines().count(), 181);
    assert!(preds.starts_with("output_0,output_1,output_2,class\n"));
    // Transfer: keep 2 layers, freeze them, cache their outputs, unfreeze at epoch 2.
    let (ok, out) = run(
        &[
            &["train"][..],
            &common,
            &[
                "--epochs",
                "2",
                "--init-from",
                "m.safetensors",
                "--keep-layers",
                "2",
                "--freeze",
                "0..2",
                "--cache-frozen",
                "--unfreeze-at-epoch",
                "2",
            ],
        ]
        .concat(),
        d,
    );
    assert!(
        ok && out.contains("kept layers 0..2") && out.contains("unfreezing"),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = TempDir::new("cli");
    let d = tmp.path();
    std::fs::write(d.join("ragged.csv"), "a,b,label\n1,2,0\n3,1\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--data", "missing.csv"], "missing.csv"),
        (&["train", "--data", "ragged.csv"], "ragged.csv"),
        (
            &["train", "--activation", "swish"],
            "unknown activation 'swish'",
        ),
        (&["train", "--lr=-1"], "learning rate"),
        (
            &[
                "eval",
                "--checkpoint",
                "nope.safetensors",
                "--data",
                "ragged.csv",
            ],
            "nope.safetensors",
        ),
        (&["--backend", "cuda", "train"], "unknown backend 'cuda'"),
    ];
    for (args, needle) in cases {
        let (ok, out) = run(args, d);
        assert!(!ok, "{args:?} should fail");
        assert!(
            out.contains(needle),
            "{args:?}: expected '{needle}' in {out}"
        );
        assert!(!out.contains("panicked"), "{args:?} panicked: {out}");
    }
}

/// Parses the validation loss of every epoch line.
fn val_losses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split("val loss ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn validation_file_columns_are_matched_by_name() {
    let tmp = TempDir::new("cli-valid");
    let d = tmp.path();
    write_csv(&d.join("s.csv"));
    let text = std::fs::read_to_string(d.join("s.csv")).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).take(40).collect();
    let mut same = String::from("a,b,label\n");
    let mut moved = String::from("label,b,a\n");
    for r in &rows {
        let c: Vec<&str> = r.split(',').collect();
        same += &format!("{},{},{}\n", c[0], c[1], c[2]);
        moved += &format!("{},{},{}\n", c[2], c[1], c[0]);
    }
    std::fs::write(d.join("same.csv"), same).unwrap();
    std::fs::write(d.join("moved.csv"), moved).unwrap();
    let train = |valid: &str| {
        let (ok, out) = run(
            &[
                "--backend",
                "cpu",
                "train",
                "--data",
                "s.csv",
                "--valid-data",
                valid,
                "--depth",
                "2",
                "--width",
                "8",
                "--epochs",
                "2",
            ],
            d,
        );
        assert!(ok, "{out}");
        val_losses(&out)
    };
    let want = train("same.csv");
    assert_eq!(want.len(), 2);
    assert_eq!(train("moved.csv"), want);
}

#[test]
fn drop_last_and_batch_norm_last_row() {
    let tmp = TempDir::new("cli-droplast");
    let d = tmp.path();
    // 180 rows: with --batch 179 the last batch of each epoch has one row.
    write_csv(&d.join("s.csv"));
    let args = |batch: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "--backend",
            "cpu",
            "train",
            "--data",
            "s.csv",
            "--valid-data",
            "s.csv",
            "--depth",
            "2",
            "--width",
            "8",
            "--epochs",
            "1",
            "--batch",
            batch,
            "--batch-norm",
            "before",
        ];
        v.extend_from_slice(extra);
        v
    };
    let (ok, out) = run(&args("179", &[]), d);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: the last batch of each epoch has 1 row"),
        "{out}"
    );
    let (ok, out) = run(&args("179", &["--drop-last"]), d);
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
    let (ok, out) = run(&args("500", &["--drop-last"]), d);
    assert!(!ok && out.contains("--drop-last"), "{out}");
}

/// The last epoch line, without its speed.
fn last_epoch(out: &str) -> String {
    let line = out.lines().rfind(|l| l.starts_with("epoch")).unwrap_or("");
    line.rsplit_once("  ")
        .map_or(line, |(a, _)| a)
        .trim()
        .to_string()
}

#[test]
fn resume_keeps_the_seed_and_refuses_conflicting_flags() {
    let tmp = TempDir::new("cli-resume-seed");
    let d = tmp.path();
    write_csv(&d.join("s.csv"));
    let base = [
        "--backend",
        "cpu",
        "train",
        "--data",
        "s.csv",
        "--depth",
        "2",
        "--width",
        "8",
        "--seed",
        "7",
    ];
    let (ok, whole) = run(&[&base[..], &["--epochs", "2"]].concat(), d);
    assert!(ok, "{whole}");
    let (ok, out) = run(
        &[&base[..], &["--epochs", "1", "--save", "m.safetensors"]].concat(),
        d,
    );
    assert!(ok, "{out}");
    // Resumed without --seed: the split and the shuffle still use seed 7, so the second
    // epoch matches the uninterrupted run's.
    let resume = [
        "--backend",
        "cpu",
        "train",
        "--data",
        "s.csv",
        "--resume",
        "m.safetensors",
        "--epochs",
        "2",
    ];
    // Flags that differ from the checkpoint are refused with both values, before training;
    // the same values typed again (the original command line plus --resume) are fine.
    let (ok, refused) = run(&[&resume[..], &["--lr", "0.5", "--depth", "3"]].concat(), d);
    assert!(!ok, "{refused}");
    for part in [
        "--depth 3 (3 hidden layers; it has 2 hidden layers)",
        "--lr 0.5 (lr 0.5; it has lr 0.05)",
        "conflict with the checkpoint given to --resume",
    ] {
        assert!(refused.contains(part), "{part}: {refused}");
    }
    assert!(!refused.contains("epoch   2"), "{refused}");
    let (ok, resumed) = run(&[&resume[..], &["--depth", "2", "--seed", "7"]].concat(), d);
    assert!(ok, "{resumed}");
    assert_eq!(last_epoch(&resumed), last_epoch(&whole));
}

/// A checkpoint without part of what a resume needs (here Adam's moments, as in a file
/// written by another tool or stripped to weights) resumes with a loud warning naming the
/// missing part, since the run cannot continue exactly; a complete one resumes silently.
#[test]
fn resume_warns_when_the_checkpoint_lacks_optimizer_state() {
    let tmp = TempDir::new("cli-resume-partial");
    let d = tmp.path();
    let base = [
        "--backend",
        "cpu",
        "train",
        "--depth",
        "2",
        "--width",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--points",
        "60",
    ];
    let (ok, out) = run(
        &[&base[..], &["--epochs", "1", "--save", "full.safetensors"]].concat(),
        d,
    );
    assert!(ok, "{out}");
    let bytes = std::fs::read(d.join("full.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.ends_with("exp_avg") && !name.ends_with("exp_avg_sq"))
        .collect();
    assert!(
        kept.len() < file.len(),
        "the checkpoint had no Adam moments to strip"
    );
    let stripped = safetensors::serialize(kept, meta.metadata().clone()).unwrap();
    std::fs::write(d.join("weights.safetensors"), stripped).unwrap();

    let resume = |file: &str| {
        run(
            &[&base[..], &["--epochs", "2", "--resume", file]].concat(),
            d,
        )
    };
    let (ok, out) = resume("full.safetensors");
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
    let (ok, out) = resume("weights.safetensors");
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: 'weights.safetensors' has no optimizer state (exp_avg, exp_avg_sq)"),
        "{out}"
    );
    assert!(out.contains("not exactly"), "{out}");
}

/// `--distributed` in a build without MPI names the rebuild; `--sync-bn` alone names
/// `--distributed`. (With the feature, tests/distributed.rs runs the flag for real.)
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_needs_the_mpi_feature() {
    let tmp = TempDir::new("cli_distributed");
    let (ok, out) = run(&["train", "--distributed", "--epochs", "1"], tmp.path());
    assert!(!ok && out.contains("--features mpi"), "{out}");
    let (ok, out) = run(&["train", "--sync-bn"], tmp.path());
    assert!(!ok && out.contains("--distributed"), "{out}");
}

/// A small model on lavapipe runs its dispatches on the calling thread (LP_NUM_THREADS=0,
/// said on the output); a large one, or a user's own LP_NUM_THREADS, keeps the driver's
/// worker threads. Which is faster is measured in the README, not asserted here.
#[test]
fn small_models_run_lavapipe_inline() {
    let tmp = TempDir::new("cli_lavapipe_inline");
    let note = "lavapipe runs this small model's dispatches on this thread (LP_NUM_THREADS=0)";
    let small = [
        "--backend",
        "vulkan",
        "train",
        "--epochs",
        "1",
        "--points",
        "30",
    ];
    let (ok, out) = run(&small, tmp.path());
    assert!(ok && out.contains(note), "{out}");
    let large = [&small[..], &["--width", "512", "--batch", "256"]].concat();
    let (ok, out) = run(&large, tmp.path());
    assert!(ok && !out.contains(note), "{out}");
    let own = bin()
        .args(small)
        .env("LP_NUM_THREADS", "2")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&own.stdout);
    assert!(own.status.success() && !out.contains(note), "{out}");
    // 6 · batch · Σ in·out: the default model (2 → 8×64 → 3, batch 32) is 5.6 MFLOP a
    // step, W1 (784 → 8×512 → 10, batch 256) 3.4 GFLOP.
    let sizes = |input, width, output| {
        let mut s = vec![input];
        s.extend([width; 8]);
        s.push(output);
        s
    };
    let default = steadygrad::backend::step_flops(&sizes(2, 64, 3), 32);
    assert!((default - 5.6e6).abs() < 0.1e6, "{default}");
    assert!(default < steadygrad::backend::LAVAPIPE_INLINE_FLOPS);
    assert!(steadygrad::backend::step_flops(&sizes(784, 512, 10), 256) > 3e9);
}
