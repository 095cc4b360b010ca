//! Data-parallel training across processes (`--features mpi`): two ranks with batch 32
//! reach the weights one process reaches with batch 64, and a rank killed mid-run stops
//! the job with an error naming it while the last checkpoint stays loadable.
//!
//! Runs `mpirun -np 2 --oversubscribe` on the built binary, on the Vulkan backend
//! (lavapipe in CI): `--backend vulkan` is an error without an adapter, so these tests
//! fail rather than skip there.
#![cfg(feature = "mpi")]

mod common;

use common::TempDir;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The model and data of every run: 300 spiral points, 240 of them for training, so a
/// global batch of 64 leaves an uneven last batch of 48 (24 per rank).
const MODEL: &[&str] = &[
    "train",
    "--backend",
    "vulkan",
    "--points",
    "100",
    "--spiral-classes",
    "3",
    "--depth",
    "4",
    "--width",
    "24",
    "--seed",
    "3",
    "--quiet",
];

fn mpirun(np: usize) -> Command {
    mpirun_with(np, &[])
}

/// [`mpirun`] with options of mpirun's own.
fn mpirun_with(np: usize, options: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .args(options);
    // CI runs as root, which Open MPI refuses unless told; the variables are ignored
    // otherwise. Single-copy (CMA) transfers need ptrace rights containers often lack.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c.arg(env!("CARGO_BIN_EXE_steadygrad"));
    c
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Trains `ranks` processes (`None`: one process without `--distributed`) with `args`
/// and returns the saved tensors by name.
fn train(dir: &Path, ranks: Option<usize>, args: &[&str], save: &str) -> HashMap<String, Vec<f32>> {
    train_logged(dir, ranks, args, save).0
}

/// [`train`], also returning what the run printed.
fn train_logged(
    dir: &Path,
    ranks: Option<usize>,
    args: &[&str],
    save: &str,
) -> (HashMap<String, Vec<f32>>, String) {
    let mut cmd = match ranks {
        Some(n) => {
            let mut c = mpirun(n);
            c.args(MODEL).arg("--distributed");
            c
        }
        None => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_steadygrad"));
            c.args(MODEL);
            c
        }
    };
    let out = cmd
        .args(args)
        .args(["--save", save])
        .current_dir(dir)
        .output()
        .expect("mpirun (Open MPI) is installed");
    assert!(
        out.status.success(),
        "{ranks:?} ranks, {args:?}:\n{}",
        text(&out)
    );
    (load(&dir.join(save)), text(&out))
}

fn load(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest difference between same-named tensors, relative to max(1, |value|).
fn max_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> (f32, String) {
    let mut worst = (0.0f32, String::new());
    for (name, x) in a {
        let y = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(x.len(), y.len(), "{name}");
        for (u, v) in x.iter().zip(y) {
            let d = (u - v).abs() / u.abs().max(1.0);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

/// Two ranks × 32 against one process × 64 for `flags`, 3 epochs (12 steps, the last
/// of each epoch uneven). The tolerance, 1e-5 relative to max(1, |value|): the two runs
/// differ only in float32 summation order (each rank sums 32 rows, then the halves are
/// added), which measured at most 1.2e-7 after these 12 steps on lavapipe; 1e-5 leaves
/// room for other drivers' orders, while a different global batch (the control, batch 32
/// in one process) differs by 1e-2 to 3e-1.
fn equivalent(flags: &[&str]) {
    let tmp = TempDir::new("distributed");
    let d = tmp.path();
    let epochs = ["--epochs", "3"];
    let args = [&epochs[..], flags].concat();
    let run =
        |ranks, batch, file| train(d, ranks, &[&args[..], &["--batch", batch]].concat(), file);
    let two = run(Some(2), "32", "two.safetensors");
    let one = run(None, "64", "one.safetensors");
    let (diff, name) = max_diff(&one, &two);
    eprintln!("{flags:?}: 2×32 against 1×64: {diff:e} ({name})");
    assert!(
        diff < 1e-5,
        "{flags:?}: 2×32 and 1×64 differ by {diff} in {name}"
    );
    // Compared are the layers' weights, not only bookkeeping.
    assert!(two.keys().any(|k| k.ends_with("linear.weight")));
    let control = run(None, "32", "ctl.safetensors");
    let (diff, name) = max_diff(&one, &control);
    eprintln!("{flags:?}: 1×32 against 1×64: {diff:e} ({name})");
    assert!(
        diff > 1e-3,
        "{flags:?}: batch 32 alone is as close ({diff} in {name}): the comparison cannot fail"
    );
}

#[test]
fn sgd_momentum_two_ranks_equal_one_with_twice_the_batch() {
    equivalent(&["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9"]);
}

#[test]
fn adam_two_ranks_equal_one_with_twice_the_batch() {
    equivalent(&["--optimizer", "adam", "--lr", "0.01"]);
}

#[test]
fn clip_norm_uses_the_global_norm() {
    // A limit well below the gradients' norm, so every step clips.
    equivalent(&["--optimizer", "sgd", "--lr", "0.5", "--clip-norm", "0.05"]);
}

/// Synchronized batch norm: 2 ranks × 32 with --sync-bn and 1 process × 64 reach the same
/// weights and running statistics (every saved tensor is compared). The tolerance is the
/// one of [`equivalent`] for the same reason, float32 summation order: each rank's
/// statistics and sums cover 32 rows and the host merges them in f64, where one process
/// sums 64 rows in float32. The control, per-rank batch norm (no --sync-bn), normalizes
/// each half by its own statistics and must differ.
fn sync_bn_equivalent(flags: &[&str]) {
    let tmp = TempDir::new("distributed_sync_bn");
    let d = tmp.path();
    let args = [&["--epochs", "3", "--batch-norm", "before"][..], flags].concat();
    let run = |ranks, extra: &[&str], file| train(d, ranks, &[&args[..], extra].concat(), file);
    let two = run(Some(2), &["--batch", "32", "--sync-bn"], "two.safetensors");
    let one = run(None, &["--batch", "64"], "one.safetensors");
    let (diff, name) = max_diff(&one, &two);
    eprintln!("{flags:?}: 2×32 --sync-bn against 1×64: {diff:e} ({name})");
    assert!(
        diff < 1e-5,
        "2×32 --sync-bn and 1×64 differ by {diff} in {name}"
    );
    assert!(
        two.keys().any(|k| k.ends_with("bn.running_var")),
        "{:?}",
        two.keys()
    );
    let local = run(Some(2), &["--batch", "32"], "local.safetensors");
    let (diff, name) = max_diff(&one, &local);
    eprintln!("{flags:?}: 2×32 per-rank batch norm against 1×64: {diff:e} ({name})");
    assert!(
        diff > 1e-3,
        "per-rank batch norm is as close ({diff} in {name}): the comparison cannot fail"
    );
}

#[test]
fn sync_bn_two_ranks_equal_one_with_twice_the_batch() {
    sync_bn_equivalent(&["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9"]);
}

/// Gradient buckets of 2 kB (the model's 24×24 weight gradients are 2.3 kB each) cut
/// the backward pass into several parts, each bucket all-reduced while the device computes
/// the next; the run still equals one process with the global batch, with sync-bn too.
#[test]
fn gradient_buckets_keep_the_equivalence() {
    let tmp = TempDir::new("distributed_buckets");
    let d = tmp.path();
    let args = ["--epochs", "3", "--optimizer", "adam", "--lr", "0.01"];
    let one = train(
        d,
        None,
        &[&args[..], &["--batch", "64"]].concat(),
        "one.safetensors",
    );
    for extra in [&[][..], &["--batch-norm", "after", "--sync-bn"][..]] {
        let flags = [&args[..], &["--batch", "32", "--bucket-mb", "0.002"], extra].concat();
        let (two, log) = train_logged(d, Some(2), &flags, "two.safetensors");
        let buckets: f64 = log
            .split("steps, ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no bucket count in:\n{log}"));
        assert!(buckets >= 3.0, "{buckets} buckets per step:\n{log}");
        let reference = if extra.is_empty() {
            one.clone()
        } else {
            let flags = [&args[..], &["--batch", "64", "--batch-norm", "after"]].concat();
            train(d, None, &flags, "one_bn.safetensors")
        };
        let (diff, name) = max_diff(&reference, &two);
        eprintln!("{extra:?}: {buckets} buckets, 2×32 against 1×64: {diff:e} ({name})");
        assert!(diff < 1e-5, "{extra:?}: differs by {diff} in {name}");
    }
}

#[test]
fn resume_with_a_different_number_of_ranks() {
    let tmp = TempDir::new("distributed_resume");
    let d = tmp.path();
    let flags = ["--optimizer", "adam", "--lr", "0.01"];
    train(
        d,
        Some(2),
        &[&flags[..], &["--epochs", "2", "--batch", "32"]].concat(),
        "r.safetensors",
    );
    std::fs::copy(d.join("r.safetensors"), d.join("r1.safetensors")).unwrap();
    // Rank counts 2 then 1 with the global batch kept at 64 equal one process throughout.
    let out = Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .args(MODEL)
        .args(flags)
        .args([
            "--resume",
            "r1.safetensors",
            "--epochs",
            "3",
            "--batch",
            "64",
        ])
        .args(["--save", "r1.safetensors"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let resumed = load(&d.join("r1.safetensors"));
    let one = train(
        d,
        None,
        &[&flags[..], &["--epochs", "3", "--batch", "64"]].concat(),
        "o.safetensors",
    );
    let (diff, name) = max_diff(&one, &resumed);
    assert!(
        diff < 1e-5,
        "resumed 2 → 1 ranks differs by {diff} in {name}"
    );
}

/// The pid of the process of rank `rank` that `mpirun` (pid `parent`) started.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1));
        if ppid != Some(&parent.to_string()) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Starts a long 2-rank run saving every epoch, sends `signal` to rank 1 once a
/// checkpoint exists, and checks that the job ends within 60 s, unsuccessfully, with
/// `expect` in its output, and that the checkpoint still loads whole.
fn fault_stops_the_job(signal: &str, expect: &str) {
    let tmp = TempDir::new("distributed_fault");
    let d = tmp.path();
    let mut child = mpirun(2)
        .args(MODEL)
        .args(["--distributed", "--epochs", "100000", "--batch", "16"])
        .args(["--save", "k.safetensors", "--collective-timeout", "10"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) is installed");
    let ckpt = d.join("k.safetensors");
    let started = Instant::now();
    while !ckpt.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before the fault"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = rank_pid(child.id(), 1).expect("rank 1's process");
    let hit = Instant::now();
    let status = Command::new("kill")
        .args([signal, &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Bounded: mpirun notices a death at once, the others notice a silent rank after the
    // 10 s timeout. Anything near a minute means a rank hung.
    while child.try_wait().unwrap().is_none() {
        assert!(
            hit.elapsed() < Duration::from_secs(60),
            "the job still runs 60 s after {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(expect),
        "after {signal}, no '{expect}' in:\n{log}"
    );
    // Rank 0 replaces the checkpoint atomically, so whatever it held last loads whole.
    let saved = load(&ckpt);
    assert!(
        saved.keys().any(|k| k.ends_with("linear.weight")),
        "{:?}",
        saved.keys()
    );
}

#[test]
fn a_killed_rank_stops_the_job_naming_it() {
    // mpirun's own report of the death.
    fault_stops_the_job("-KILL", "process rank 1");
}

/// A rank that stops answering (SIGSTOP: alive but silent) is named by the others after
/// --collective-timeout: they heard no heartbeat from it while they waited.
#[test]
fn a_stopped_rank_is_named_after_the_timeout() {
    fault_stops_the_job("-STOP", "for rank(s) 1, which died or stopped responding");
}

/// Ranks that do not hold the same weights (here: rank 1 built with another seed, through
/// mpirun's `:` syntax) are refused before the first step, by name.
#[test]
fn diverged_replicas_are_named() {
    let tmp = TempDir::new("distributed_diverged");
    let rank = |seed: &'static str| {
        let mut args: Vec<&str> = MODEL.to_vec();
        let at = args.iter().position(|a| *a == "--seed").unwrap();
        args[at + 1] = seed;
        args.extend(["--distributed", "--epochs", "1"]);
        args
    };
    let out = mpirun(1)
        .args(rank("3"))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_steadygrad")])
        .args(rank("4"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("the replicas diverged before training") && log.contains("rank(s) 1 differ"),
        "{log}"
    );
}

#[test]
fn distributed_flags_are_checked() {
    let tmp = TempDir::new("distributed_flags");
    let fails = |args: &[&str], expect: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_steadygrad"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let log = text(&out);
        assert!(
            !out.status.success() && log.contains(expect),
            "{args:?}: {log}"
        );
    };
    fails(&["train", "--sync-bn"], "--distributed");
    fails(
        &["train", "--distributed", "--log", "l.csv"],
        "--log cannot be combined with --distributed",
    );
    fails(
        &[
            "train",
            "--distributed",
            "--report",
            "r.html",
            "--tensorboard",
            "tb",
        ],
        "--report, --tensorboard cannot be combined",
    );
    fails(
        &["train", "--distributed", "--collective-timeout", "1e20"],
        "at most a year",
    );
    fails(
        &["train", "--distributed", "--bucket-mb", "0"],
        "--bucket-mb must be a positive number",
    );
    fails(&["train", "--bucket-mb", "1"], "--distributed");
    fails(
        &["train", "--distributed", "--collective-timeout", "0"],
        "--collective-timeout must be a positive",
    );
}

/// A value that overflows in one rank's shard only (3e38 in both features of one row,
/// finite as data, infinite after the first layers) stops every rank with the
/// non-finite error: the guard reads the averaged gradients, which the overflow reaches
/// on every rank. The row is placed where the resumed epoch's shuffle puts it into rank
/// 1's shard of the first step, by replaying the trainer's shuffle. The checkpoint
/// written before stays as it was.
#[test]
fn overflow_in_one_shard_stops_every_rank() {
    use rand::{RngExt, SeedableRng};
    let tmp = TempDir::new("distributed_overflow");
    let d = tmp.path();
    let rows = |n: usize, seed: u64, bad: Option<usize>| {
        let mut csv = String::from("x0,x1,label\n");
        let v = common::random(2 * n, seed);
        for r in 0..n {
            let (a, b) = if bad == Some(r) {
                (3e38, 3e38)
            } else {
                (v[2 * r], v[2 * r + 1])
            };
            csv.push_str(&format!("{a},{b},{}\n", r % 3));
        }
        csv
    };
    std::fs::write(d.join("clean.csv"), rows(64, 1, None)).unwrap();
    std::fs::write(d.join("valid.csv"), rows(16, 2, None)).unwrap();
    // The trainer's shuffle of epoch 2 (index 1) with the default seed, 42.
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(42 ^ 2u64.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..64).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    // Global batch 32: positions 16..32 of the first step are rank 1's shard.
    std::fs::write(d.join("bad.csv"), rows(64, 1, Some(order[20]))).unwrap();
    let run = |data: &str, extra: &[&str]| {
        mpirun_with(2, &["--tag-output"])
            .args(["train", "--backend", "vulkan", "--data", data])
            .args(["--label-column", "label", "--valid-data", "valid.csv"])
            .args([
                "--no-standardize",
                "--depth",
                "2",
                "--width",
                "16",
                "--batch",
                "16",
            ])
            .args(["--distributed", "--quiet", "--save", "ck.safetensors"])
            .args(extra)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let out = run("clean.csv", &["--epochs", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read(d.join("ck.safetensors")).unwrap();
    let out = run("bad.csv", &["--epochs", "3", "--resume", "ck.safetensors"]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    // Each rank's stderr: mpirun tags each write (`[1,R]<stderr>:`), and writes of
    // different ranks and an error line's several writes interleave, so every piece goes
    // to the rank of the tag in front of it.
    let stderr_of = |rank: usize| {
        let tag = format!("[1,{rank}]<stderr>:");
        let mut out = String::new();
        for piece in log.split("[1,").skip(1) {
            if let Some(text) = format!("[1,{piece}").strip_prefix(&tag) {
                out.push_str(text);
            }
        }
        out
    };
    for rank in 0..2 {
        let err = stderr_of(rank);
        assert!(
            err.contains(&format!("error: rank {rank}: training diverged at step 3"))
                && err.contains("non-finite"),
            "rank {rank} did not stop with the non-finite error:\n{log}"
        );
    }
    // At the same step, so no rank waits in an exchange for one that stopped.
    let stopped = |rank| {
        let err = stderr_of(rank);
        let at = err
            .find("Training stopped after step ")
            .expect("a stop step");
        err[at..].split(',').next().unwrap().to_string()
    };
    assert_eq!(stopped(0), stopped(1), "{log}");
    // Rank 1 met the overflow in its own forward pass; rank 0 only in the averaged
    // gradients it received.
    assert!(
        stderr_of(1).contains("first appeared in the layers.0 linear output"),
        "{log}"
    );
    assert!(
        !stderr_of(0).contains("first appeared in the layers.0"),
        "{log}"
    );
    assert!(
        std::fs::read(d.join("ck.safetensors")).unwrap() == before,
        "the checkpoint written before changed"
    );
}

/// Dropout's masks follow the row in the global batch (each rank offsets them by its
/// shard's first row), so 2 ranks × 32 with dropout draw the masks of 1 process × 64 and
/// reach its weights; before, every rank drew the masks of rows 0..32.
#[test]
fn dropout_two_ranks_equal_one_with_twice_the_batch() {
    equivalent(&["--optimizer", "sgd", "--lr", "0.1", "--dropout", "0.3"]);
}
