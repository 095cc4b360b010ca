//! Early stopping (`--early-stop`, `--monitor`, `--min-delta`), the best epoch's
//! checkpoint (`--save-best`) and `--restore-best`: the tracker against Keras's rules on
//! hand-made sequences, and whole runs on a slice of the digits that a wide net overfits.

mod common;

use common::TempDir;
use std::path::Path;
use std::process::Command;
use steadygrad::model::optim::{EarlyStopping, Monitor, StopDecision};

fn decisions(mut s: EarlyStopping, values: &[f64]) -> Vec<(bool, bool)> {
    values
        .iter()
        .enumerate()
        .map(|(e, &v)| {
            let StopDecision { improved, stop } = s.update(e + 1, v);
            (improved, stop)
        })
        .collect()
}

#[test]
fn tracker_follows_keras_rules() {
    let (y, n) = (true, false);
    // Loss: 1.0 best, 0.9 improves, 0.9 and 0.95 do not (equal is no improvement), 0.8
    // improves and resets the count, then three without: stop at the third (patience 3).
    let s = EarlyStopping::new(Monitor::ValLoss, Some(3), 0.0).unwrap();
    let got = decisions(s, &[1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.81, 0.8]);
    let want = [
        (y, n),
        (y, n),
        (n, n),
        (n, n),
        (y, n),
        (n, n),
        (n, n),
        (n, y),
    ];
    assert_eq!(got, want);
    // min_delta 0.05: 0.96 is not 0.05 better than 1.0; 0.94 is; 0.9 is not better than 0.94
    // by more than 0.05.
    let mut s = EarlyStopping::new(Monitor::ValLoss, Some(2), 0.05).unwrap();
    let got: Vec<bool> = [1.0, 0.96, 0.94, 0.9]
        .iter()
        .enumerate()
        .map(|(e, &v)| s.update(e + 1, v).improved)
        .collect();
    assert_eq!(got, [y, n, y, n]);
    assert_eq!(s.best(), Some((3, 0.94)));
    // Accuracy: higher is better; without a patience it never stops.
    let s = EarlyStopping::new(Monitor::ValAccuracy, None, 0.0).unwrap();
    let got = decisions(s, &[0.5, 0.4, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1]);
    assert!(got.iter().all(|&(_, stop)| !stop));
    let improved: Vec<bool> = got.iter().map(|d| d.0).collect();
    assert_eq!(improved, [y, n, y, n, n, n, n, n]);
    // A NaN never becomes the best.
    let mut s = EarlyStopping::new(Monitor::ValLoss, Some(1), 0.0).unwrap();
    assert!(!s.update(1, f64::NAN).improved);
    assert!(s.update(2, 3.0).improved);
    assert!(s.update(3, f64::NAN).stop);
    assert_eq!(s.best(), Some((2, 3.0)));
    // Bad settings are named.
    let e = EarlyStopping::new(Monitor::ValLoss, Some(0), 0.0).unwrap_err();
    assert!(e.to_string().contains("patience of at least 1"), "{e}");
    let e = EarlyStopping::new(Monitor::ValLoss, Some(2), -0.1).unwrap_err();
    assert!(e.to_string().contains("--min-delta must be"), "{e}");
}

/// The first 120 training rows of the digits: a 2×256 net fits them perfectly within a
/// few epochs, after which the validation loss stops falling and turns up.
fn small_digits(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("data/digits_train.csv")).unwrap();
    let path = dir.join("small.csv");
    let lines: Vec<&str> = text.lines().take(121).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn steadygrad(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .arg("--backend")
        .arg("cpu")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `(epoch, val loss, val accuracy %)` of every printed epoch line.
fn epochs(text: &str) -> Vec<(usize, f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = |key: &str| w.iter().position(|&x| x == key).unwrap();
            let loss = at("val") + 2;
            let acc = w[loss + 3].trim_end_matches('%');
            (
                w[1].parse().unwrap(),
                w[loss].parse().unwrap(),
                acc.parse().unwrap(),
            )
        })
        .collect()
}

/// The number after `prefix` up to the next space, comma or colon.
fn number_after(text: &str, prefix: &str) -> f64 {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no '{prefix}' in {text}"));
    let rest = &text[at + prefix.len()..];
    let end = rest.find([' ', ',', ':', '\n']).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
fn stops_at_best_plus_patience_and_restores_the_best_epoch() {
    let tmp = TempDir::new("early-stop");
    let data = small_digits(tmp.path());
    let (best, last) = (tmp.path().join("best.st"), tmp.path().join("last.st"));
    let valid = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits_valid.csv");
    let common = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--valid-data",
        valid.to_str().unwrap(),
        "--label-column",
        "label",
        "--depth",
        "2",
        "--width",
        "256",
        "--optimizer",
        "adam",
        "--batch",
        "16",
        "--epochs",
        "100",
    ];
    let patience = 5;
    let mut args = common.to_vec();
    args.extend([
        "--early-stop",
        "5",
        "--save-best",
        best.to_str().unwrap(),
        "--save",
        last.to_str().unwrap(),
        "--restore-best",
    ]);
    let (ok, text) = steadygrad(&args);
    assert!(ok, "{text}");
    let rows = epochs(&text);
    let stopped = rows.last().unwrap().0;
    assert!(stopped < 100, "the run must stop early:\n{text}");
    let best_epoch = number_after(&text, "best epoch ") as usize;
    assert_eq!(stopped, best_epoch + patience, "{text}");
    // The best epoch has the lowest validation loss of the run (printed to 4 decimals).
    let best_loss = rows[best_epoch - 1].1;
    for &(e, loss, _) in &rows {
        assert!(
            loss >= best_loss,
            "epoch {e}'s {loss} beats the best {best_loss}"
        );
    }
    // The loss went up afterwards: the run overfits, which is what makes this test bite.
    assert!(rows.last().unwrap().1 > best_loss, "{text}");
    // The restored weights give the best epoch's validation loss exactly.
    let tracked = number_after(&text, &format!("best epoch {best_epoch}: val loss "));
    let restored_line = text
        .lines()
        .find(|l| l.starts_with("restored the weights"))
        .unwrap();
    assert_eq!(number_after(restored_line, "val loss "), tracked, "{text}");
    assert!(
        (tracked - best_loss).abs() <= 5e-5,
        "{tracked} vs {best_loss}"
    );
    // The best checkpoint holds the best epoch; the last one the stopping epoch.
    let eval = |ckpt: &Path| {
        let (ok, out) = steadygrad(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            valid.to_str().unwrap(),
            "--label-column",
            "label",
        ]);
        assert!(ok, "{out}");
        number_after(&out, "loss ")
    };
    assert_eq!(eval(&best), best_loss);
    assert_eq!(eval(&last), rows.last().unwrap().1);

    // min_delta 0.01: the small late gains no longer count, so the best epoch comes no
    // later and the run stops sooner.
    let mut args = common.to_vec();
    args.extend(["--early-stop", "5", "--min-delta", "0.01"]);
    let (ok, text) = steadygrad(&args);
    assert!(ok, "{text}");
    let coarse = number_after(&text, "best epoch ") as usize;
    assert!(coarse < best_epoch, "{coarse} vs {best_epoch}:\n{text}");
    assert_eq!(epochs(&text).last().unwrap().0, coarse + patience);

    // Accuracy, higher is better: the best epoch is the first with the top accuracy.
    let mut args = common.to_vec();
    args.extend(["--early-stop", "8", "--monitor", "val-accuracy"]);
    let (ok, text) = steadygrad(&args);
    assert!(ok, "{text}");
    let rows = epochs(&text);
    let top = rows.iter().map(|r| r.2).fold(f64::MIN, f64::max);
    let first_top = rows.iter().find(|r| r.2 == top).unwrap().0;
    assert_eq!(
        number_after(&text, "best epoch ") as usize,
        first_top,
        "{text}"
    );
    assert_eq!(rows.last().unwrap().0, first_top + 8, "{text}");
}

#[test]
fn bad_flags_are_named() {
    let tmp = TempDir::new("early-stop-bad");
    let same = tmp.path().join("x.st");
    let base = ["train", "--depth", "1", "--width", "4", "--points", "20"];
    for (extra, want) in [
        (
            vec!["--early-stop", "0"],
            "--early-stop needs a patience of at least 1",
        ),
        (
            vec!["--early-stop", "3", "--min-delta", "-1"],
            "--min-delta must be a finite number >= 0",
        ),
        (
            vec![
                "--save",
                same.to_str().unwrap(),
                "--save-best",
                same.to_str().unwrap(),
            ],
            "is the same file as --save",
        ),
        (
            vec!["--early-stop", "3", "--monitor", "val-loss-ish"],
            "invalid value 'val-loss-ish'",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let (ok, text) = steadygrad(&args);
        assert!(!ok && text.contains(want), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        assert!(
            !text.contains("epoch   1"),
            "refused before training: {text}"
        );
    }
    assert!(!same.exists());
}

/// A resumed run keeps the best checkpoint of the epochs before it unless it beats it:
/// stopping at epoch 16 (best 14) and resuming to the end, the later epochs of this data
/// never go below epoch 14's loss, so `--save-best` must still hold epoch 14. A tracker
/// that started afresh would overwrite it with the first resumed epoch.
#[test]
fn resumed_run_keeps_an_earlier_best() {
    let tmp = TempDir::new("early-stop-resume");
    let data = small_digits(tmp.path());
    let (best, last) = (tmp.path().join("best.st"), tmp.path().join("last.st"));
    let valid = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits_valid.csv");
    let data_args = [
        "--data",
        data.to_str().unwrap(),
        "--valid-data",
        valid.to_str().unwrap(),
        "--label-column",
        "label",
    ];
    let mut first = vec!["train"];
    first.extend(data_args);
    first.extend(["--depth", "2", "--width", "256", "--optimizer", "adam"]);
    first.extend(["--batch", "16", "--epochs", "16"]);
    first.extend(["--save", last.to_str().unwrap()]);
    first.extend(["--save-best", best.to_str().unwrap()]);
    let (ok, text) = steadygrad(&first);
    assert!(ok, "{text}");
    let rows = epochs(&text);
    let best_epoch = number_after(&text, "best epoch ") as usize;
    let best_loss = rows[best_epoch - 1].1;
    assert!(
        best_epoch < 16,
        "the first part must end past its best: {text}"
    );

    let mut second = vec![
        "train",
        "--resume",
        last.to_str().unwrap(),
        "--epochs",
        "40",
    ];
    second.extend(data_args);
    second.extend(["--early-stop", "5", "--save-best", best.to_str().unwrap()]);
    second.push("--restore-best");
    let (ok, text) = steadygrad(&second);
    assert!(ok, "{text}");
    let later = epochs(&text);
    assert_eq!(later[0].0, 17, "{text}");
    let min_later = later.iter().map(|r| r.1).fold(f64::MAX, f64::min);
    assert!(
        min_later > best_loss,
        "this data must not beat epoch {best_epoch} after it: {text}"
    );
    assert!(
        text.contains(&format!("best epoch {best_epoch}:")),
        "{text}"
    );
    assert_eq!(later.last().unwrap().0, 16 + 5, "{text}");
    let restored = text
        .lines()
        .find(|l| l.starts_with("restored the weights"))
        .unwrap();
    assert!(
        (number_after(restored, "val loss ") - best_loss).abs() <= 5e-5,
        "{restored} vs {best_loss}"
    );
    let (ok, out) = steadygrad(&[
        "eval",
        "--checkpoint",
        best.to_str().unwrap(),
        "--data",
        valid.to_str().unwrap(),
        "--label-column",
        "label",
    ]);
    assert!(ok, "{out}");
    assert_eq!(number_after(&out, "loss "), best_loss, "{out}");
    assert!(
        text.contains(&format!("best so far: epoch {best_epoch} in")),
        "{text}"
    );
}
