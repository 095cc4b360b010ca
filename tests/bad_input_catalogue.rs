//! The binary over a catalogue of bad inputs (CSV, .npy, TOML, command-line flags,
//! checkpoints to resume, evaluate or predict from): every one must end within a time
//! limit, with a non-zero exit, no panic, and a message naming the problem.

mod common;

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
    npy_raw(
        "<f4",
        shape,
        &values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

fn npy_raw(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
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
    d.write("complex.npy", &npy_raw("<c8", &[2, 2], &[0; 32]));
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

/// `(what, arguments, fragments stderr must contain)`.
fn cases() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    let tiny = ["--depth", "1", "--width", "4", "--epochs", "1"];
    // A small model on the CPU, unless the case sets those flags itself.
    let t = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["--backend", "cpu", "train"];
        for pair in tiny.chunks(2) {
            if !rest.contains(&pair[0]) {
                v.extend_from_slice(pair);
            }
        }
        v.extend_from_slice(rest);
        v
    };
    vec![
        // CSV files
        (
            "missing data file",
            t(&["--data", "nope.csv"]),
            vec!["nope.csv"],
        ),
        (
            "empty CSV",
            t(&["--data", "empty.csv"]),
            vec!["empty.csv", "no rows"],
        ),
        (
            "header only",
            t(&["--data", "header_only.csv"]),
            vec!["header_only.csv", "no data rows"],
        ),
        (
            "ragged row",
            t(&["--data", "ragged.csv"]),
            vec!["ragged.csv", "line 3", "columns"],
        ),
        (
            "text cell",
            t(&["--data", "text.csv"]),
            vec!["text.csv", "line 3", "'oops'"],
        ),
        (
            "NaN feature",
            t(&["--data", "nan.csv"]),
            vec!["nan.csv", "line 3", "NaN"],
        ),
        (
            "inf feature",
            t(&["--data", "inf.csv"]),
            vec!["inf.csv", "line 3"],
        ),
        (
            "negative label",
            t(&["--data", "neg_label.csv"]),
            vec!["neg_label.csv", "label -1"],
        ),
        (
            "fractional label",
            t(&["--data", "frac_label.csv"]),
            vec!["frac_label.csv", "label 0.5"],
        ),
        (
            "stray huge label",
            t(&["--data", "stray_label.csv"]),
            vec!["stray_label.csv", "line 4", "label 100000", "--classes"],
        ),
        (
            "one class",
            t(&["--data", "one_class.csv"]),
            vec!["one_class.csv", "one class"],
        ),
        (
            "numbered header",
            t(&["--data", "numbered_header.csv"]),
            vec!["numbered_header.csv", "--header"],
        ),
        (
            "named label, no header",
            t(&["--data", "no_header.csv", "--label-column", "label"]),
            vec!["no_header.csv", "'label'", "--header yes"],
        ),
        (
            "label name not in header",
            t(&["--data", "good.csv", "--label-column", "target"]),
            vec!["good.csv", "'target'", "a, b, label"],
        ),
        (
            "label index out of range",
            t(&["--data", "good.csv", "--label-column", "9"]),
            vec!["good.csv", "label column 9"],
        ),
        (
            "single column",
            t(&["--data", "single_column.csv"]),
            vec!["single_column.csv", "single column"],
        ),
        (
            "--classes 1",
            t(&["--data", "good.csv", "--classes", "1"]),
            vec!["good.csv", "class count"],
        ),
        (
            "--classes below the labels",
            t(&["--data", "good.csv", "--classes", "2"]),
            vec!["good.csv", "label 2", "out of range"],
        ),
        (
            "--classes negative",
            t(&["--data", "good.csv", "--classes", "-3"]),
            vec!["--classes", "-3"],
        ),
        (
            "binary garbage as CSV",
            t(&["--data", "garbage.csv"]),
            vec!["garbage.csv"],
        ),
        (
            "unknown format",
            t(&["--data", "data.bin"]),
            vec!["data.bin", "file format"],
        ),
        (
            "corrupt gzip",
            t(&["--data", "corrupt.csv.gz"]),
            vec!["corrupt.csv.gz", "gzip"],
        ),
        (
            "labels file beside a CSV",
            t(&["--data", "good.csv", "--labels", "y3.npy"]),
            vec!["good.csv", "labels file"],
        ),
        (
            "data path is a directory",
            t(&["--data", "a_dir"]),
            vec!["a_dir"],
        ),
        // Validation files
        (
            "validation: other columns",
            t(&["--data", "good.csv", "--valid-data", "v_other.csv"]),
            vec!["v_other.csv", "lacks b", "c besides"],
        ),
        (
            "validation: extra column",
            t(&["--data", "good.csv", "--valid-data", "v_wide.csv"]),
            vec!["v_wide.csv", "c besides"],
        ),
        (
            "validation: fewer columns, no header",
            t(&["--data", "good.csv", "--valid-data", "v_narrow_nohead.csv"]),
            vec!["v_narrow_nohead.csv", "good.csv", "1 feature"],
        ),
        (
            "validation: label beyond training classes",
            t(&["--data", "good.csv", "--valid-data", "v_label.csv"]),
            vec!["v_label.csv", "label 7", "3 classes"],
        ),
        (
            "validation: missing file",
            t(&["--data", "good.csv", "--valid-data", "nope_valid.csv"]),
            vec!["nope_valid.csv"],
        ),
        (
            "validation fraction above 1",
            t(&["--data", "good.csv", "--valid-fraction", "1.5"]),
            vec!["validation fraction", "1.5"],
        ),
        (
            "validation fraction negative",
            t(&["--data", "good.csv", "--valid-fraction", "-0.2"]),
            vec!["validation fraction", "-0.2"],
        ),
        // .npy files
        (
            "npy: labels row count differs",
            t(&["--data", "x.npy", "--labels", "y3.npy"]),
            vec!["x.npy", "y3.npy", "row counts differ"],
        ),
        (
            "npy: fractional labels",
            t(&["--data", "x.npy", "--labels", "y_frac.npy"]),
            vec!["y_frac.npy", "label 0.5"],
        ),
        (
            "npy: truncated",
            t(&["--data", "truncated.npy"]),
            vec!["truncated.npy"],
        ),
        (
            "npy: bad magic",
            t(&["--data", "bad_magic.npy"]),
            vec!["bad_magic.npy"],
        ),
        (
            "npy: complex dtype",
            t(&["--data", "complex.npy"]),
            vec!["complex.npy", "c8"],
        ),
        (
            "npy: 1-D array without labels",
            t(&["--data", "vector.npy"]),
            vec!["vector.npy"],
        ),
        (
            "npy: NaN feature",
            t(&["--data", "x_nan.npy", "--labels", "y3.npy"]),
            vec!["x_nan.npy"],
        ),
        // TOML configuration files
        (
            "config: missing",
            vec!["--backend", "cpu", "train", "--config", "nope.toml"],
            vec!["nope.toml"],
        ),
        (
            "config: syntax error",
            vec!["--backend", "cpu", "train", "--config", "syntax.toml"],
            vec!["syntax.toml"],
        ),
        (
            "config: unknown key",
            vec!["--backend", "cpu", "train", "--config", "typo.toml"],
            vec!["typo.toml", "activaton"],
        ),
        (
            "config: zero epochs",
            vec!["--backend", "cpu", "train", "--config", "epochs0.toml"],
            vec!["epochs", "at least 1"],
        ),
        (
            "config: negative learning rate",
            vec!["--backend", "cpu", "train", "--config", "neg_lr.toml"],
            vec!["learning rate", "-0.5"],
        ),
        (
            "config: input width differs from the data",
            vec!["--backend", "cpu", "train", "--config", "wrong_input.toml"],
            vec!["5 inputs", "2 features"],
        ),
        // Flags
        ("--lr -1", t(&["--lr", "-1"]), vec!["learning rate", "-1"]),
        (
            "--lr nan",
            t(&["--lr", "nan"]),
            vec!["learning rate", "NaN"],
        ),
        ("--lr text", t(&["--lr", "fast"]), vec!["--lr", "fast"]),
        (
            "--epochs 0",
            t(&["--epochs", "0"]),
            vec!["--epochs", "at least 1"],
        ),
        (
            "--epochs -3",
            t(&["--epochs", "-3"]),
            vec!["--epochs", "-3"],
        ),
        (
            "--batch 0",
            t(&["--batch", "0"]),
            vec!["--batch", "at least 1"],
        ),
        (
            "--spiral-classes 1",
            t(&["--spiral-classes", "1"]),
            vec!["--spiral-classes", "at least 2"],
        ),
        (
            "--spiral-classes 0",
            t(&["--spiral-classes", "0"]),
            vec!["--spiral-classes"],
        ),
        (
            "--points 0",
            t(&["--points", "0"]),
            vec!["--points", "at least"],
        ),
        (
            "--points huge",
            t(&["--points", "10000000000000"]),
            vec!["--points", "generated rows"],
        ),
        ("--width 0", t(&["--width", "0"]), vec!["size is zero"]),
        (
            "--dropout 1.5",
            t(&["--dropout", "1.5"]),
            vec!["dropout", "1.5"],
        ),
        (
            "--dropout -0.1",
            t(&["--dropout", "-0.1"]),
            vec!["dropout", "-0.1"],
        ),
        (
            "--momentum -1",
            t(&["--momentum", "-1"]),
            vec!["momentum", "-1"],
        ),
        (
            "--weight-decay -1",
            t(&["--weight-decay", "-1"]),
            vec!["weight decay", "-1"],
        ),
        (
            "--clip-norm -1",
            t(&["--clip-norm", "-1"]),
            vec!["clip", "-1"],
        ),
        (
            "--unfreeze-at-epoch 0",
            t(&["--freeze", "1", "--unfreeze-at-epoch", "0"]),
            vec!["--unfreeze-at-epoch", "from 1"],
        ),
        (
            "--unfreeze-at-epoch after the last epoch",
            t(&["--freeze", "1", "--unfreeze-at-epoch", "9"]),
            vec!["--unfreeze-at-epoch 9", "last epoch"],
        ),
        (
            "--freeze beyond the layers",
            t(&["--freeze", "9"]),
            vec!["9 layers frozen"],
        ),
        (
            "--freeze text",
            t(&["--freeze", "all"]),
            vec!["'all'", "layer count"],
        ),
        (
            "batch norm with batch 1",
            t(&["--batch-norm", "before", "--batch", "1"]),
            vec!["batch norm", "at least 2 rows"],
        ),
        (
            "--drop-last with a batch above the rows",
            t(&["--data", "good.csv", "--drop-last", "--batch", "1000"]),
            vec!["--drop-last", "fewer than one batch"],
        ),
        (
            "--backend bogus",
            vec!["--backend", "bogus", "train"],
            vec!["unknown backend 'bogus'"],
        ),
        (
            "--backend metal off Apple",
            vec!["--backend", "metal", "train", "--depth", "1"],
            if cfg!(target_os = "macos") {
                vec![]
            } else {
                vec!["Metal exists only on macOS"]
            },
        ),
        (
            "--adapter out of range",
            vec![
                "--backend",
                "vulkan",
                "--adapter",
                "99",
                "train",
                "--depth",
                "1",
            ],
            vec!["adapter"],
        ),
        // Output paths, checked before training
        (
            "--save into a missing directory",
            t(&["--save", "no/such/dir/m.safetensors"]),
            vec!["--save", "does not exist"],
        ),
        (
            "--save to a directory",
            t(&["--save", "a_dir"]),
            vec!["--save", "a_dir", "is a directory"],
        ),
        (
            "--plots under a file",
            t(&["--plots", "good.csv/plots"]),
            vec!["--plots", "not a directory"],
        ),
        // Checkpoints: resume, transfer, eval, predict
        (
            "--resume missing",
            t(&["--resume", "nope.safetensors"]),
            vec!["nope.safetensors"],
        ),
        (
            "--resume garbage",
            t(&["--resume", "garbage.safetensors"]),
            vec!["garbage.safetensors", "safetensors"],
        ),
        (
            "--resume a CSV",
            t(&["--resume", "good.csv"]),
            vec!["good.csv"],
        ),
        (
            "--resume with wider data",
            t(&["--resume", "ok.safetensors", "--data", "wide.csv"]),
            vec!["3 features"],
        ),
        (
            // Refused before the (missing) data file is read.
            "--resume with a conflicting flag",
            t(&[
                "--resume",
                "ok.safetensors",
                "--lr",
                "0.5",
                "--data",
                "nope.csv",
            ]),
            vec![
                "--lr 0.5",
                "conflicts with the checkpoint given to --resume",
            ],
        ),
        (
            "--config with a conflicting flag",
            vec![
                "--backend",
                "cpu",
                "train",
                "--config",
                "good.toml",
                "--lr",
                "0.5",
                "--data",
                "nope.csv",
            ],
            vec!["--lr 0.5", "conflicts with the --config file"],
        ),
        (
            "--resume an already finished run",
            t(&["--resume", "ok.safetensors", "--epochs", "1"]),
            vec!["already completed 1 of 1"],
        ),
        (
            "--init-from missing",
            t(&["--init-from", "nope2.safetensors"]),
            vec!["nope2.safetensors"],
        ),
        (
            "eval: missing checkpoint",
            vec![
                "--backend",
                "cpu",
                "eval",
                "--checkpoint",
                "nope.safetensors",
                "--data",
                "good.csv",
            ],
            vec!["nope.safetensors"],
        ),
        (
            "eval: data of another width",
            vec![
                "--backend",
                "cpu",
                "eval",
                "--checkpoint",
                "ok.safetensors",
                "--data",
                "wide.csv",
            ],
            vec!["wide.csv", "3 features", "2"],
        ),
        (
            "eval: no --data",
            vec!["--backend", "cpu", "eval", "--checkpoint", "ok.safetensors"],
            vec!["--data"],
        ),
        (
            "predict: output into a missing directory",
            vec![
                "--backend",
                "cpu",
                "predict",
                "--checkpoint",
                "ok.safetensors",
                "--data",
                "good.csv",
                "--out",
                "no/dir/p.csv",
            ],
            vec!["--out", "does not exist"],
        ),
        (
            "predict: data with a stray label",
            vec![
                "--backend",
                "cpu",
                "predict",
                "--checkpoint",
                "ok.safetensors",
                "--data",
                "stray_label.csv",
                "--out",
                "p.csv",
            ],
            vec!["stray_label.csv", "label 100000"],
        ),
        (
            "export: a missing checkpoint",
            vec![
                "export",
                "--checkpoint",
                "nope.safetensors",
                "--onnx",
                "m.onnx",
            ],
            vec!["nope.safetensors"],
        ),
        (
            "export: not a checkpoint",
            vec![
                "export",
                "--checkpoint",
                "garbage.safetensors",
                "--onnx",
                "m.onnx",
            ],
            vec!["garbage.safetensors", "safetensors"],
        ),
        (
            "export: into a missing directory",
            vec![
                "export",
                "--checkpoint",
                "ok.safetensors",
                "--onnx",
                "no/dir/m.onnx",
            ],
            vec!["--onnx", "does not exist"],
        ),
        // Added checks: model size, flags that do not fit together, output paths
        (
            "config: hidden layers beyond memory",
            vec!["--backend", "cpu", "train", "--config", "huge.toml"],
            vec!["too large", "hidden"],
        ),
        (
            "config: zero batch size",
            vec!["--backend", "cpu", "train", "--config", "batch0.toml"],
            vec!["batch0.toml", "batch size"],
        ),
        (
            "--width beyond memory",
            t(&["--width", "1000000", "--depth", "100"]),
            vec!["too large", "--width"],
        ),
        (
            "activations beyond memory (huge batch)",
            t(&[
                "--points", "200000", "--depth", "50", "--width", "1000", "--batch", "200000",
            ]),
            vec!["activations and gradients", "GB", "--batch"],
        ),
        (
            "--width overflowing",
            t(&["--width", "10000000000", "--depth", "10"]),
            vec!["too large", "overflows"],
        ),
        (
            "--classes with regression",
            t(&[
                "--data",
                "good.csv",
                "--task",
                "regression",
                "--classes",
                "3",
            ]),
            vec!["--classes", "regression"],
        ),
        (
            "--header with a bad value",
            t(&["--data", "good.csv", "--header", "maybe"]),
            vec!["--header", "maybe"],
        ),
        (
            "--log into a missing directory",
            t(&["--log", "no/dir/log.csv"]),
            vec!["--log", "does not exist"],
        ),
        (
            "experiment --lr -1",
            vec!["--backend", "cpu", "experiment", "vanishing", "--lr", "-1"],
            vec!["--lr", "-1"],
        ),
        (
            "diagnose --lr -1",
            vec!["--backend", "cpu", "diagnose", "--lr", "-1"],
            vec!["learning rate", "-1"],
        ),
        (
            "eval --batch -1",
            vec![
                "--backend",
                "cpu",
                "eval",
                "--checkpoint",
                "ok.safetensors",
                "--data",
                "good.csv",
                "--batch",
                "-1",
            ],
            vec!["--batch", "-1"],
        ),
        #[cfg(unix)]
        (
            "a device as data",
            t(&["--data", "/dev/zero"]),
            vec!["/dev/zero", "device"],
        ),
    ]
}

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
