//! The binary over a catalogue of bad inputs (CSV, .npy, TOML, command-line flags,
//! checkpoints to resume, evaluate or predict from): every one must end within a time
//! limit, with a non-zero exit, no panic, and a message naming the problem.

mod common;

use common::files::{le_f32, npy};
use common::TempDir;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A case that takes longer than this is reported as a hang.
const LIMIT: Duration = Duration::from_secs(60);

struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
    hung: bool,
}

/// Runs the binary in `cwd`, killing it after [`LIMIT`].
fn run(args: &[String], cwd: &Path) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .args(args)
        .current_dir(cwd)
        .env_remove("STEADYGRAD_BACKEND")
        .env_remove("STEADYGRAD_ADAPTER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            hung = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        hung,
    }
}

/// A version 1.0 `.npy` file of little-endian f32 values.
fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    npy("<f4", shape, &le_f32(values))
}

/// 60 rows of 2 features and a label in 0..3, with a header.
fn good_csv() -> String {
    let mut s = String::from("a,b,label\n");
    for r in 0..60 {
        s += &format!(
            "{},{},{}\n",
            (r as f32 * 0.37).sin(),
            (r as f32 * 0.11).cos(),
            r % 3
        );
    }
    s
}

fn write_files(d: &TempDir) {
    let good = good_csv();
    d.write("good.csv", good.as_bytes());
    d.write("empty.csv", b"");
    d.write("header_only.csv", b"a,b,label\n");
    d.write("ragged.csv", b"a,b,label\n1,2,0\n3,1\n4,5,1\n");
    d.write("text.csv", b"a,b,label\n1,2,0\n3,oops,1\n");
    d.write("nan.csv", b"a,b,label\n1,2,0\n3,NaN,1\n");
    d.write("inf.csv", b"a,b,label\n1,2,0\n3,inf,1\n");
    d.write("neg_label.csv", b"a,b,label\n1,2,0\n3,4,-1\n");
    d.write("frac_label.csv", b"a,b,label\n1,2,0\n3,4,0.5\n");
    d.write(
        "stray_label.csv",
        b"a,b,label\n1,2,0\n3,4,1\n5,6,100000\n7,8,1\n",
    );
    d.write("one_class.csv", b"a,b,label\n1,2,0\n3,4,0\n5,6,0\n");
    d.write(
        "numbered_header.csv",
        b"1,2,3\n0.5,0.25,1\n0.1,0.2,0\n0.3,0.3,1\n",
    );
    d.write("no_header.csv", b"0.5,0.25,1\n0.1,0.2,0\n0.3,0.3,1\n");
    d.write("single_column.csv", b"label\n0\n1\n");
    d.write(
        "garbage.csv",
        &[0xff, 0xfe, 0x00, 0x12, b',', 0x80, b'\n', 0x01],
    );
    d.write("data.bin", b"\x01\x02\x03 not a known format");
    d.write(
        "corrupt.csv.gz",
        &[0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00],
    );
    // Validation files beside good.csv.
    d.write("v_other.csv", b"a,c,label\n1,2,0\n3,4,1\n");
    d.write("v_wide.csv", b"a,b,c,label\n1,2,3,0\n3,4,5,1\n");
    d.write("v_narrow_nohead.csv", b"1,0\n3,1\n");
    d.write("v_label.csv", b"a,b,label\n1,2,0\n3,4,7\n");
    // .npy
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    d.write("x.npy", &npy_f32(&[4, 3], &x));
    d.write("y3.npy", &npy_f32(&[3], &[0.0, 1.0, 0.0]));
    d.write("y_frac.npy", &npy_f32(&[4], &[0.0, 1.0, 0.5, 1.0]));
    let mut truncated = npy_f32(&[4, 3], &x);
    truncated.truncate(truncated.len() - 7);
    d.write("truncated.npy", &truncated);
    d.write("bad_magic.npy", b"NUMPY? this is not an array at all");
    d.write("complex.npy", &npy("<c8", &[2, 2], &[0; 32]));
    d.write("vector.npy", &npy_f32(&[4], &[0.0, 1.0, 0.0, 1.0]));
    let mut xn = npy_f32(&[4, 3], &x);
    let at = xn.len() - 4;
    xn[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    d.write("x_nan.npy", &xn);
    // TOML
    d.write("syntax.toml", b"[model\ninput = 2\n");
    d.write(
        "typo.toml",
        b"[model]\ninput = 2\nhidden = [4]\noutput = 3\nactivaton = \"relu\"\n",
    );
    let cfg = |training: &str, optimizer: &str| {
        format!(
            "[model]\ninput = 2\nhidden = [4]\noutput = 3\nactivation = \"relu\"\n\
             init = \"auto\"\nloss = \"cross-entropy\"\n\n[optimizer]\nkind = \"sgd\"\n\
             {optimizer}\nmomentum = 0.0\nnesterov = false\nweight_decay = 0.0\n\n\
             [training]\n{training}\nbatch_size = 8\nseed = 1\ndropout = 0.0\n\
             schedule = {{ kind = \"constant\" }}\nwarmup_steps = 0\n"
        )
    };
    d.write("epochs0.toml", cfg("epochs = 0", "lr = 0.05").as_bytes());
    d.write("good.toml", cfg("epochs = 1", "lr = 0.05").as_bytes());
    d.write("neg_lr.toml", cfg("epochs = 1", "lr = -0.5").as_bytes());
    d.write(
        "wrong_input.toml",
        cfg("epochs = 1", "lr = 0.05")
            .replace("input = 2", "input = 5")
            .as_bytes(),
    );
    d.write(
        "huge.toml",
        cfg("epochs = 1", "lr = 0.05")
            .replace("hidden = [4]", "hidden = [200000, 200000, 200000]")
            .as_bytes(),
    );
    d.write(
        "batch0.toml",
        cfg("epochs = 1", "lr = 0.05")
            .replace("batch_size = 8", "batch_size = 0")
            .as_bytes(),
    );
    // Checkpoints
    d.write(
        "garbage.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    );
    d.write("wide.csv", b"a,b,c,label\n1,2,3,0\n3,4,5,1\n5,6,7,2\n");
    std::fs::create_dir(d.path().join("a_dir")).unwrap();
}

#[path = "bad_input/cases.rs"]
mod cases;
use cases::cases;

#[test]
fn every_bad_input_is_a_clear_error() {
    let dir = TempDir::new("catalogue");
    let d = dir.path();
    write_files(&dir);
    // A good checkpoint for the resume/eval/predict cases (and a control: the harness
    // sees success when there is success).
    let args: Vec<String> = [
        "--backend",
        "cpu",
        "train",
        "--data",
        "good.csv",
        "--depth",
        "1",
        "--width",
        "4",
        "--epochs",
        "1",
        "--save",
        "ok.safetensors",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = run(&args, d);
    assert_eq!(
        o.code,
        Some(0),
        "control run failed: {}{}",
        o.stdout,
        o.stderr
    );

    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (what, args, fragments) in &cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = run(&args, d);
        let mut why = Vec::new();
        if o.hung {
            why.push(format!("still running after {LIMIT:?}"));
        }
        if o.code == Some(0) {
            why.push("exit code 0".to_string());
        }
        if o.code.is_none() && !o.hung {
            why.push("killed by a signal".to_string());
        }
        let all = format!("{}{}", o.stdout, o.stderr);
        if all.contains("panicked at") || all.contains("RUST_BACKTRACE") {
            why.push("panicked".to_string());
        }
        for f in fragments {
            if !o.stderr.contains(f) {
                why.push(format!("stderr lacks '{f}'"));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{what} ({}): {}\n    stderr: {}",
                args.join(" "),
                why.join(", "),
                o.stderr.trim().replace('\n', "\n            ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A net too deep for the device: on lavapipe every bind group takes a memory mapping, so
/// a plan with more than the kernel's `vm.max_map_count` crashed inside the driver (a
/// segfault at depth 2000). The resource plan refuses it before compiling anything,
/// naming the figure and the limit. The depth is worked out from this machine's limit
/// (about 12 bind groups per layer and plan, three plans), so the case stays too deep
/// wherever the limit was raised.
#[test]
fn a_net_deeper_than_the_device_takes_is_refused_before_compiling() {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("Linux's /proc/sys/vm/max_map_count")
        .trim()
        .parse()
        .unwrap();
    let depth = (limit / 36 * 3 / 2).to_string();
    let dir = TempDir::new("too-deep");
    let args: Vec<String> = [
        "train", "--depth", &depth, "--width", "2", "--epochs", "1", "--points", "64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = run(&args, dir.path());
    assert!(!o.hung, "depth {depth} hung");
    assert_eq!(o.code, Some(1), "depth {depth}: {}{}", o.stdout, o.stderr);
    for f in ["bind groups", "vm.max_map_count", "sysctl"] {
        assert!(o.stderr.contains(f), "stderr lacks '{f}': {}", o.stderr);
    }
    assert!(
        !o.stdout.contains("epoch   1"),
        "an epoch ran before the refusal: {}",
        o.stdout
    );
}
