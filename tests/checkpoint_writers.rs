//! Checkpoint writers that die or collide: temporary files of killed writers are removed
//! by the next save, a second process saving to the same path is refused, and no output
//! may overwrite a file the command reads.

mod common;

use common::TempDir;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steadygrad::checkpoint;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_steadygrad"));
    c.env_remove("STEADYGRAD_BACKEND")
        .env_remove("STEADYGRAD_ADAPTER");
    c
}

/// A long CPU run whose epochs are short and whose checkpoint is large (adam state for
/// ~0.5 M parameters, ~6 MB), so much of its time is spent saving.
fn long_run(dir: &Path, save: &str) -> Child {
    bin()
        .args([
            "--backend",
            "cpu",
            "train",
            "--points",
            "20",
            "--depth",
            "8",
            "--width",
            "256",
            "--optimizer",
            "adam",
            "--batch",
            "64",
            "--epochs",
            "100000",
            "--quiet",
            "--save",
            save,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn temps(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.tmp-");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

/// Waits (at most `limit`) for `ready`; false on timeout.
fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn killed_writers_leave_temps_that_the_next_save_removes() {
    let tmp = TempDir::new("kill9");
    let d = tmp.path();
    let name = "m.safetensors";
    let mut killed_mid_write = 0;
    for round in 0..8 {
        let mut child = long_run(d, name);
        let pid = child.id();
        let mine = format!(".{name}.tmp-{pid}");
        // SIGKILL the moment its temporary file appears: mid-write, before the rename.
        // Every other round waits for a checkpoint to exist first, so that a kill lands
        // while a good checkpoint is being replaced.
        let seen = wait_for(Duration::from_secs(60), || {
            (temps(d, name).contains(&mine) && (round % 2 == 0 || d.join(name).exists()))
                || child.try_wait().unwrap().is_some()
        });
        kill(&mut child);
        assert!(seen, "round {round}: no save started within 60 s");
        if let Some(status) = child.try_wait().unwrap() {
            // Exited by itself (not by our kill): it must not have been refused the lock
            // a killed predecessor held.
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            assert!(
                !err.contains("another steadygrad process"),
                "round {round}: a killed writer's lock was not released ({status}): {err}"
            );
        }
        if temps(d, name).contains(&mine) {
            killed_mid_write += 1;
        }
    }
    eprintln!("{killed_mid_write} of 8 writers killed mid-write");
    assert!(
        killed_mid_write > 0,
        "no writer was killed mid-write, so nothing was tested"
    );
    // Whatever moment the kills hit, the checkpoint on disk is a whole one.
    let survivor = checkpoint::load_checkpoint(&d.join(name)).unwrap();
    assert!(survivor.state.epoch >= 1);
    assert_eq!(survivor.model.hidden, [256; 8]);
    let stale = temps(d, name);
    assert!(
        !stale.is_empty(),
        "killed writers left no temporary files to clean up"
    );

    // A full run that saves once removes every stale file and writes a loadable checkpoint.
    let out = bin()
        .args([
            "--backend",
            "cpu",
            "train",
            "--points",
            "20",
            "--depth",
            "2",
            "--width",
            "8",
            "--epochs",
            "1",
            "--quiet",
            "--save",
            name,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(temps(d, name), Vec::<String>::new(), "was: {stale:?}");
    let ckpt = checkpoint::load_checkpoint(&d.join(name)).unwrap();
    assert_eq!(ckpt.state.epoch, 1);
    assert_eq!(ckpt.model.hidden, [8, 8]);
}

#[test]
fn a_second_writer_of_the_same_path_is_refused() {
    let tmp = TempDir::new("twowriters");
    let d = tmp.path();
    let name = "shared.safetensors";
    let mut first = long_run(d, name);
    // The first run holds the lock from before its first epoch; once it has saved, it
    // certainly holds it.
    let saved = wait_for(Duration::from_secs(60), || {
        d.join(name).exists() || first.try_wait().unwrap().is_some()
    });
    let second = bin()
        .args([
            "--backend",
            "cpu",
            "train",
            "--points",
            "20",
            "--depth",
            "1",
            "--width",
            "4",
            "--epochs",
            "1",
            "--quiet",
            "--save",
            name,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    kill(&mut first);
    assert!(saved && still_running, "the first writer did not stay up");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second writer was let in: {err}");
    assert!(
        err.contains("shared.safetensors") && err.contains("another steadygrad process"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The first writer's checkpoint is intact, and with it gone the path is free again.
    checkpoint::load_checkpoint(&d.join(name)).unwrap();
    let again = bin()
        .args([
            "--backend",
            "cpu",
            "train",
            "--points",
            "20",
            "--depth",
            "1",
            "--width",
            "4",
            "--epochs",
            "1",
            "--quiet",
            "--save",
            name,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[cfg(target_os = "linux")]
#[test]
fn stale_temps_are_those_of_dead_processes_only() {
    let tmp = TempDir::new("stale");
    let d = tmp.path();
    let target = d.join("m.safetensors");
    // A process id that existed and is gone, and one that is alive.
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let mut alive = Command::new("sleep").arg("30").spawn().unwrap();
    let dead_tmp = tmp.write(&format!(".m.safetensors.tmp-{}", dead.id()), b"partial");
    let alive_tmp = tmp.write(&format!(".m.safetensors.tmp-{}", alive.id()), b"writing");
    let other = tmp.write(
        &format!(".other.safetensors.tmp-{}", dead.id()),
        b"not ours",
    );
    let removed = checkpoint::remove_stale_temps(&target);
    let (dead_left, alive_left) = (dead_tmp.exists(), alive_tmp.exists());
    kill(&mut alive);
    assert_eq!(removed, 1);
    assert!(!dead_left, "a dead writer's temp file was kept");
    assert!(alive_left, "a live writer's temp file was removed");
    assert!(other.exists(), "another file's temp file was removed");
    // A save does the same cleanup on its own.
    let again = tmp.write(&format!(".m.safetensors.tmp-{}", dead.id()), b"partial");
    checkpoint::write_atomic(&target, b"new").unwrap();
    assert!(!again.exists());
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
}

#[test]
fn lock_is_per_path_and_released_on_drop() {
    let tmp = TempDir::new("lock");
    let a = tmp.path().join("a.safetensors");
    let b = tmp.path().join("b.safetensors");
    let la = checkpoint::lock_for_writing(&a).unwrap();
    // Another path is independent; the same path is refused until the lock is dropped.
    let lb = checkpoint::lock_for_writing(&b).unwrap();
    let e = format!("{:#}", checkpoint::lock_for_writing(&a).unwrap_err());
    assert!(
        e.contains("a.safetensors") && e.contains("being written"),
        "{e}"
    );
    drop(la);
    checkpoint::lock_for_writing(&a).unwrap();
    drop(lb);
}

#[test]
fn output_paths_are_checked() {
    let tmp = TempDir::new("paths");
    let d = tmp.path();
    let e = format!(
        "{:#}",
        checkpoint::check_writable(&d.join("missing/m.safetensors"), "--save").unwrap_err()
    );
    assert!(e.contains("--save") && e.contains("does not exist"), "{e}");
    let e = format!("{:#}", checkpoint::check_writable(d, "--save").unwrap_err());
    assert!(e.contains("is a directory"), "{e}");
    checkpoint::check_writable(&d.join("m.safetensors"), "--save").unwrap();
    // A plots directory may be created, but not under a file.
    checkpoint::check_writable_dir(&d.join("new/plots"), "--plots").unwrap();
    let f = tmp.write("file", b"");
    let e = format!(
        "{:#}",
        checkpoint::check_writable_dir(&f.join("plots"), "--plots").unwrap_err()
    );
    assert!(e.contains("not a directory"), "{e}");
    // Checks leave nothing behind.
    let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Every output flag that names a file the command reads (the checkpoint, the data, the
/// config), or another output, is refused before anything is written, through a
/// different spelling of the path too; the file is left byte for byte as it was. Saving
/// over the checkpoint a run resumed from stays allowed: that is how a run continues.
#[test]
fn no_output_overwrites_an_input() {
    let tmp = TempDir::new("overwrite");
    let dir = tmp.path();
    let train = |extra: &[&str]| {
        let mut a = vec!["--backend", "cpu", "train", "--quiet"];
        a.extend_from_slice(extra);
        common::run_cli(&a, dir)
    };
    let (ok, _, err) = train(&["--epochs", "1", "--points", "30", "--save", "m.safetensors"]);
    assert!(ok, "{err}");
    let rows: String = (0..30)
        .map(|r| format!("{},{},{}\n", r % 7, r % 5, r % 3))
        .collect();
    std::fs::write(dir.join("d.csv"), format!("a,b,class\n{rows}")).unwrap();
    std::fs::write(dir.join("c.toml"), "").unwrap();
    let files = ["m.safetensors", "d.csv", "c.toml"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let ckpt = ["--checkpoint", "m.safetensors"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [
                &["--backend", "cpu", "predict"][..],
                &ckpt,
                &["--data", "d.csv", "--out", "./m.safetensors"],
            ]
            .concat(),
            "--out './m.safetensors' is the same file as --checkpoint 'm.safetensors'",
        ),
        (
            [
                &["--backend", "cpu", "predict"][..],
                &ckpt,
                &["--data", "d.csv", "--out", "d.csv"],
            ]
            .concat(),
            "--out 'd.csv' is the same file as --data 'd.csv'",
        ),
        (
            [&["export"][..], &ckpt, &["--onnx", "m.safetensors"]].concat(),
            "--onnx 'm.safetensors' is the same file as --checkpoint",
        ),
    ];
    for (args, expected) in cases {
        let (ok, out, err) = common::run_cli(&args, dir);
        assert!(!ok && err.contains(expected), "{args:?}: {out}{err}");
    }
    let trains: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--data",
                "d.csv",
                "--label-column",
                "class",
                "--save",
                "d.csv",
            ],
            "--save 'd.csv' is the same file as --data 'd.csv'",
        ),
        (
            vec!["--config", "c.toml", "--log", "c.toml"],
            "--log 'c.toml' is the same file as --config",
        ),
        (
            vec!["--resume", "m.safetensors", "--log", "m.safetensors"],
            "--log 'm.safetensors' is the same file as --resume",
        ),
        (
            vec!["--log", "new.jsonl", "--save", "sub/../new.jsonl"],
            "--save 'sub/../new.jsonl' is the same file as --log 'new.jsonl'",
        ),
    ];
    std::fs::create_dir(dir.join("sub")).unwrap();
    #[cfg(unix)]
    {
        std::fs::hard_link(dir.join("d.csv"), dir.join("linked.csv")).unwrap();
        let (ok, out, err) = train(&[
            "--data",
            "d.csv",
            "--label-column",
            "class",
            "--log",
            "linked.csv",
        ]);
        let expected = "--log 'linked.csv' is the same file as --data 'd.csv'";
        assert!(!ok && err.contains(expected), "hard link: {out}{err}");
    }
    for (args, expected) in trains {
        let (ok, out, err) = train(&args);
        assert!(!ok && err.contains(expected), "{args:?}: {out}{err}");
    }
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(dir.join(f)).unwrap(), b, "{f} changed");
    }
    assert!(!dir.join("new.jsonl").exists());
    let (ok, _, err) = train(&[
        "--resume",
        "m.safetensors",
        "--epochs",
        "2",
        "--save",
        "m.safetensors",
    ]);
    assert!(ok, "saving over the resumed checkpoint: {err}");
}
