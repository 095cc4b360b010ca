//! The catalogue's cases: each a bad input a new user could give, and the fragments the
//! error must contain. The files they name are written by `write_files`.

/// `(what, arguments, fragments stderr must contain)`.
pub fn cases() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
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
        (
            "check --batch 0",
            vec!["check", "--batch", "0"],
            vec!["--batch must be at least 1"],
        ),
        (
            "predict: --out is the checkpoint",
            vec![
                "--backend",
                "cpu",
                "predict",
                "--checkpoint",
                "ok.safetensors",
                "--data",
                "good.csv",
                "--out",
                "./ok.safetensors",
            ],
            vec!["--out", "same file as --checkpoint", "ok.safetensors"],
        ),
        (
            "train: --save is the data file",
            t(&["--data", "good.csv", "--save", "good.csv"]),
            vec!["--save", "same file as --data", "good.csv"],
        ),
        #[cfg(unix)]
        (
            "a device as data",
            t(&["--data", "/dev/zero"]),
            vec!["/dev/zero", "device"],
        ),
    ]
}
