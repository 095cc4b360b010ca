//! Data files other than CSV (`data_csv.rs`): round trips for .npy, IDX (plain and gzip)
//! and safetensors, every kind of bad file as an error naming the file and the place, and
//! garbage that must never panic. Preparing loaded data: `data_preparation.rs`.

mod common;

use common::files::*;
use common::TempDir;
use safetensors::Dtype;
use std::path::Path;
use steadygrad::data::{load, Column, Format, LoadOptions, Task};

// ---------------------------------------------------------------------------------- .npy

#[test]
fn npy_fixtures_from_numpy() {
    let opts = |labels: &str| LoadOptions {
        labels: Some(fixture(labels)),
        ..LoadOptions::default()
    };
    let d = load(fixture("tiny_x.npy"), &opts("tiny_y.npy")).unwrap();
    assert_eq!((d.rows, d.input_dim, d.classes), (4, 3, Some(3)));
    assert_eq!(
        (d.features.as_slice(), d.targets.as_slice()),
        (&TINY_X[..], &TINY_Y[..])
    );
    for (x, y) in [
        ("tiny_x_be.npy", "tiny_y_u8.npy"),
        ("tiny_x_v2.npy", "tiny_y.npy"),
    ] {
        let e = load(fixture(x), &opts(y)).unwrap();
        assert_eq!(
            (&e.features, &e.targets),
            (&d.features, &d.targets),
            "{x} {y}"
        );
    }
    // One float64 array, label in the last column.
    let e = load(fixture("tiny_xy_f64.npy"), &LoadOptions::default()).unwrap();
    assert_eq!((&e.features, &e.targets), (&d.features, &d.targets));
    // Images of any shape become rows of features.
    let e = load(fixture("tiny_images_u8.npy"), &opts("tiny_y.npy")).unwrap();
    assert_eq!(e.input_dim, 4);
    assert_eq!(e.features[4..8], [4.0, 5.0, 6.0, 7.0]);
    // Two regression targets per row.
    let mut o = opts("tiny_targets.npy");
    o.task = Task::Regression;
    let e = load(fixture("tiny_x.npy"), &o).unwrap();
    assert_eq!((e.target_dim, e.classes), (2, None));
    assert_eq!(e.targets[2..4], [0.2, 2.0]);
}

#[test]
fn npy_round_trip_every_dtype() {
    let dir = TempDir::new("npy");
    let labels = dir.write(
        "y.npy",
        &npy("<i8", &[2], &[1i64, 0].map(i64::to_le_bytes).concat()),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("<f4", le_f32(&[1.5, -2.0, 3.0, 4.25])),
        (
            "<f8",
            [1.5f64, -2.0, 3.0, 4.25].map(f64::to_le_bytes).concat(),
        ),
        ("|u1", vec![1, 254, 3, 4]),
        ("<i8", [1i64, -2, 3, 4].map(i64::to_le_bytes).concat()),
    ];
    for (descr, data) in cases {
        let p = dir.write("x.npy", &npy(descr, &[2, 2], &data));
        let opts = LoadOptions {
            labels: Some(labels.clone()),
            ..LoadOptions::default()
        };
        let d = load(&p, &opts).unwrap();
        assert_eq!((d.rows, d.input_dim), (2, 2), "{descr}");
        assert_eq!(
            d.features[0],
            1.0 + 0.5 * (descr.contains('f') as u8 as f32),
            "{descr}"
        );
        assert_eq!(d.targets, [1.0, 0.0]);
    }
}

#[test]
fn npy_bad_files() {
    let dir = TempDir::new("npybad");
    let y4 = fixture("tiny_y.npy");
    let with = |labels: &Path| LoadOptions {
        labels: Some(labels.to_path_buf()),
        ..LoadOptions::default()
    };
    let p = fixture("tiny_x_fortran.npy");
    assert_err(load(&p, &with(&y4)), &p, &["Fortran", "not supported"]);
    let p = fixture("tiny_x_f16.npy");
    assert_err(load(&p, &with(&y4)), &p, &["unsupported .npy dtype '<f2'"]);
    let p = dir.write("strings.npy", &npy("<U3", &[4, 3], &[0; 144]));
    assert_err(load(&p, &with(&y4)), &p, &["unsupported .npy dtype '<U3'"]);

    let p = dir.write("magic.npy", b"PK\x03\x04 this is a zip file");
    assert_err(
        load(&p, &with(&y4)),
        &p,
        &["wrong magic number 50 4B 03 04 20 74"],
    );
    let whole = std::fs::read(fixture("tiny_x.npy")).unwrap();
    let p = dir.write("short.npy", &whole[..whole.len() - 5]);
    assert_err(
        load(&p, &with(&y4)),
        &p,
        &[
            "truncated file",
            "shape (4, 3)",
            "48 bytes",
            "byte offset 128",
            "only 43",
        ],
    );
    let p = dir.write("short_header.npy", &whole[..60]);
    assert_err(load(&p, &with(&y4)), &p, &["truncated file", "118 bytes"]);
    let p = dir.write("long.npy", &[&whole[..], b"xx"].concat());
    assert_err(load(&p, &with(&y4)), &p, &["2 unexpected bytes"]);
    let p = dir.write(
        "bad_header.npy",
        &npy("<f4", &[4, 3], &[0; 48])
            .iter()
            .map(|&b| if b == b'(' { b'[' } else { b })
            .collect::<Vec<_>>(),
    );
    assert_err(
        load(&p, &with(&y4)),
        &p,
        &["malformed .npy header", "'shape' has the wrong type"],
    );

    // Row counts that disagree name both files.
    let y3 = dir.write("y3.npy", &npy("<i8", &[3], &[0u8; 24]));
    let x = fixture("tiny_x.npy");
    assert_err(
        load(&x, &with(&y3)),
        &y3,
        &[
            "row counts differ",
            "tiny_x.npy holds 4 rows",
            "y3.npy holds 3 rows",
        ],
    );
    // Label problems name the labels file, row and byte offset.
    let y = dir.write(
        "y_bad.npy",
        &npy("<f4", &[4], &le_f32(&[0.0, 1.0, 0.5, 1.0])),
    );
    assert_err(
        load(&x, &with(&y)),
        &y,
        &[
            "labels row 2, column 0 (byte offset 136)",
            "label 0.5 is not a class index",
        ],
    );
    let y = dir.write("y_range.npy", &npy("|u1", &[4], &[0, 1, 7, 1]));
    let mut o = with(&y);
    o.task = Task::Classification { classes: Some(5) };
    assert_err(
        load(&x, &o),
        &y,
        &["labels row 2", "label 7 is out of range for 5 classes"],
    );
    // NaN in the features: row, column and byte offset.
    let mut vals = TINY_X;
    vals[5] = f32::NAN;
    let p = dir.write("nan.npy", &npy("<f4", &[4, 3], &le_f32(&vals)));
    assert_err(
        load(&p, &with(&y4)),
        &p,
        &["features row 1, column 2 (byte offset 148)", "NaN"],
    );
    let p = dir.write(
        "big.npy",
        &npy(
            "<f8",
            &[1, 2],
            &[1e300f64, 0.0].map(f64::to_le_bytes).concat(),
        ),
    );
    assert_err(
        load(&p, &LoadOptions::default()),
        &p,
        &["too large for f32"],
    );
    // Shapes: 1-D features, 3-D labels.
    let p = dir.write("flat.npy", &npy("<f4", &[4], &le_f32(&[1.0; 4])));
    assert_err(load(&p, &with(&y4)), &p, &["shape (4,)", "2 dimensions"]);
    let y = dir.write("y3d.npy", &npy("|u1", &[4, 1, 1], &[0; 4]));
    assert_err(load(&x, &with(&y)), &y, &["shape (4, 1, 1)"]);
    // A single array needs its label column given by index.
    let o = LoadOptions {
        label_columns: vec![Column::Name("y".into())],
        ..LoadOptions::default()
    };
    assert_err(load(&x, &o), &x, &["no header line"]);
    let o = LoadOptions {
        label_columns: vec![Column::Index(0)],
        ..with(&y4)
    };
    assert_err(load(&x, &o), &x, &["label columns", "a separate file"]);
    // A huge declared shape is refused before anything is allocated.
    let p = dir.write("claims.npy", &npy("<f8", &[1 << 40, 1 << 30], &[0; 8]));
    assert_err(load(&p, &with(&y4)), &p, &["overflows"]);
    let p = dir.write("zero.npy", &npy("<f4", &[4, 1 << 40, 1 << 40, 0], &[]));
    assert_err(load(&p, &with(&y4)), &p, &["zero features"]);
    let p = dir.write("claims2.npy", &npy("<f8", &[1 << 30, 1 << 20], &[0; 8]));
    assert_err(
        load(&p, &with(&y4)),
        &p,
        &["truncated file", "only 8 bytes"],
    );
}

// ---------------------------------------------------------------------------------- IDX

/// Five 3 × 2 `u8` images and their labels, MNIST-style.
fn mnist_like() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..30).map(|i| (i * 8) as u8).collect();
    (
        idx(0x08, &[5, 3, 2], &pixels),
        idx(0x08, &[5], &[3, 1, 4, 1, 5]),
    )
}

#[test]
fn idx_plain_and_gzip() {
    let dir = TempDir::new("idx");
    let (images, labels) = mnist_like();
    let x = dir.write("imgs.idx", &images);
    let y = dir.write("labs.idx", &labels);
    let opts = LoadOptions {
        labels: Some(y),
        ..LoadOptions::default()
    };
    let d = load(&x, &opts).unwrap();
    assert_eq!((d.rows, d.input_dim, d.classes), (5, 6, Some(6)));
    assert_eq!(d.features[6..9], [48.0, 56.0, 64.0]);
    assert_eq!(d.targets, [3.0, 1.0, 4.0, 1.0, 5.0]);
    // MNIST's own file names: the labels file is found beside the images.
    let x = dir.write("train-images-idx3-ubyte.gz", &gz(&images));
    dir.write("train-labels-idx1-ubyte.gz", &gz(&labels));
    let e = load(&x, &classification(Some(10))).unwrap();
    assert_eq!(
        (&e.features, &e.targets, e.classes),
        (&d.features, &d.targets, Some(10))
    );
    // Other element types are big-endian.
    let floats: Vec<u8> = [0.5f32, -1.0, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let x = dir.write("f.idx", &idx(0x0D, &[2, 2], &floats));
    let y = dir.write("l.idx", &idx(0x0C, &[2], &[0, 0, 0, 1, 0, 0, 0, 0]));
    let opts = LoadOptions {
        labels: Some(y),
        ..LoadOptions::default()
    };
    let d = load(&x, &opts).unwrap();
    assert_eq!(
        (d.features, d.targets),
        (vec![0.5, -1.0, 2.0, 3.0], vec![1.0, 0.0])
    );
}

#[test]
fn idx_bad_files() {
    let dir = TempDir::new("idxbad");
    let (images, labels) = mnist_like();
    let y = dir.write("labels.idx", &labels);
    let with = |labels: &Path| LoadOptions {
        labels: Some(labels.to_path_buf()),
        ..LoadOptions::default()
    };
    // A little-endian writer's mistake: the magic number byte-swapped.
    let mut swapped = images.clone();
    swapped[..4].copy_from_slice(&[3, 8, 0, 0]);
    let p = dir.write("swapped.idx", &swapped);
    assert_err(load(&p, &with(&y)), &p, &["wrong magic number 0x03080000"]);
    let p = dir.write("short.idx", &images[..images.len() - 1]);
    assert_err(
        load(&p, &with(&y)),
        &p,
        &[
            "truncated file",
            "shape (5, 3, 2)",
            "30 bytes",
            "byte offset 16",
            "only 29",
        ],
    );
    let p = dir.write("dims.idx", &images[..9]);
    assert_err(load(&p, &with(&y)), &p, &["truncated file", "3 dimensions"]);
    let p = dir.write("tiny.idx", &images[..2]);
    assert_err(load(&p, &with(&y)), &p, &["truncated file", "2 bytes"]);
    let p = dir.write("cut-images-idx3-ubyte.gz", &gz(&images)[..20]);
    assert_err(
        load(&p, &with(&y)),
        &p,
        &["gzip data is corrupt or truncated"],
    );
    let x = dir.write("images.idx", &images);
    let y4 = dir.write("labels4.idx", &idx(0x08, &[4], &[0, 1, 2, 3]));
    assert_err(
        load(&x, &with(&y4)),
        &y4,
        &[
            "row counts differ",
            "images.idx holds 5 rows",
            "labels4.idx holds 4 rows",
        ],
    );
    let mut o = with(&y);
    o.task = Task::Classification { classes: Some(4) };
    assert_err(
        load(&x, &o),
        &y,
        &[
            "labels row 2, column 0 (byte offset 10)",
            "label 4 is out of range for 4 classes",
        ],
    );
    assert_err(
        load(&x, &LoadOptions::default()),
        &x,
        &["need a labels file"],
    );
    let p = dir.write("ints.idx", &idx(0x0C, &[1 << 31, 1 << 31, 1 << 31], &[]));
    assert_err(load(&p, &with(&y)), &p, &["overflows"]);
}

// ---------------------------------------------------------------------------------- safetensors

#[test]
fn safetensors_round_trip() {
    let dir = TempDir::new("st");
    let x = le_f32(&TINY_X);
    let y: Vec<u8> = [0i64, 2, 1, 2].map(i64::to_le_bytes).concat();
    let p = dir.write(
        "d.safetensors",
        &safetensors_file(&[
            ("features", Dtype::F32, vec![4, 3], x.clone()),
            ("labels", Dtype::I64, vec![4], y.clone()),
            ("unrelated", Dtype::U8, vec![2], vec![9, 9]),
        ]),
    );
    let d = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(
        (d.features.as_slice(), d.targets.as_slice()),
        (&TINY_X[..], &TINY_Y[..])
    );
    assert_eq!(d.classes, Some(3));
    // `x`/`y` naming, f64 features and u8 labels, detected without the extension.
    let x64: Vec<u8> = TINY_X
        .iter()
        .flat_map(|&v| (v as f64).to_le_bytes())
        .collect();
    let p = dir.write(
        "d.bin",
        &safetensors_file(&[
            ("x", Dtype::F64, vec![4, 3], x64),
            ("y", Dtype::U8, vec![4], vec![0, 2, 1, 2]),
        ]),
    );
    let e = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!((&e.features, &e.targets), (&d.features, &d.targets));
    // Own names, regression targets.
    let p = dir.write(
        "r.safetensors",
        &safetensors_file(&[
            ("inp", Dtype::F32, vec![4, 3], x.clone()),
            (
                "out",
                Dtype::F32,
                vec![4, 2],
                le_f32(&[1., 2., 3., 4., 5., 6., 7., 8.]),
            ),
        ]),
    );
    let opts = LoadOptions {
        task: Task::Regression,
        features_tensor: Some("inp".into()),
        labels_tensor: Some("out".into()),
        ..LoadOptions::default()
    };
    let r = load(&p, &opts).unwrap();
    assert_eq!((r.target_dim, r.targets[7]), (2, 8.0));
}

#[test]
fn safetensors_bad_files() {
    let dir = TempDir::new("stbad");
    let x = le_f32(&TINY_X);
    let good = safetensors_file(&[
        ("features", Dtype::F32, vec![4, 3], x.clone()),
        ("labels", Dtype::U8, vec![4], vec![0, 2, 1, 2]),
    ]);
    let opts = LoadOptions::default();
    let p = dir.write("short.safetensors", &good[..good.len() - 3]);
    assert_err(
        load(&p, &opts),
        &p,
        &["truncated file", "52 bytes of tensor data", "only 49"],
    );
    let p = dir.write("short_header.safetensors", &good[..40]);
    assert_err(
        load(&p, &opts),
        &p,
        &["truncated file", "bytes of JSON header"],
    );
    let p = dir.write("garbage.safetensors", b"hello, world, this is not it");
    assert_err(load(&p, &opts), &p, &["not a safetensors file"]);
    let mut bad_json = good.clone();
    bad_json[9] = b'!';
    let p = dir.write("json.safetensors", &bad_json);
    assert_err(load(&p, &opts), &p, &["malformed safetensors header"]);
    let p = dir.write(
        "f16.safetensors",
        &safetensors_file(&[
            ("x", Dtype::F16, vec![4, 1], vec![0; 8]),
            ("y", Dtype::U8, vec![4], vec![0, 1, 0, 1]),
        ]),
    );
    assert_err(
        load(&p, &opts),
        &p,
        &["tensor 'x' has dtype F16", "not supported"],
    );
    let p = dir.write(
        "names.safetensors",
        &safetensors_file(&[
            ("images", Dtype::F32, vec![4, 3], x.clone()),
            ("y", Dtype::U8, vec![4], vec![0, 1, 0, 1]),
        ]),
    );
    assert_err(
        load(&p, &opts),
        &p,
        &["no features tensor", "the file holds: images, y"],
    );
    let o = LoadOptions {
        features_tensor: Some("pixels".into()),
        ..LoadOptions::default()
    };
    assert_err(load(&p, &o), &p, &["no tensor is named 'pixels'"]);
    let p = dir.write(
        "rows.safetensors",
        &safetensors_file(&[
            ("x", Dtype::F32, vec![4, 3], x.clone()),
            ("y", Dtype::U8, vec![3], vec![0, 1, 0]),
        ]),
    );
    assert_err(
        load(&p, &opts),
        &p,
        &[
            "row counts differ",
            "tensor 'x' has 4 rows but tensor 'y' has 3",
        ],
    );
    let mut vals = TINY_X;
    vals[11] = f32::INFINITY;
    let p = dir.write(
        "inf.safetensors",
        &safetensors_file(&[
            ("x", Dtype::F32, vec![4, 3], le_f32(&vals)),
            ("y", Dtype::U8, vec![4], vec![0, 1, 0, 1]),
        ]),
    );
    assert_err(load(&p, &opts), &p, &["tensor 'x' row 3, column 2", "inf"]);
    let o = LoadOptions {
        labels: Some(p.clone()),
        ..LoadOptions::default()
    };
    assert_err(load(&p, &o), &p, &["separate labels file"]);
}

// ---------------------------------------------------------------------------------- formats

#[test]
fn format_from_name_or_content() {
    assert_eq!(
        Format::from_path(Path::new("a/t10k-labels.idx1-ubyte")),
        Some(Format::Idx)
    );
    assert_eq!(Format::from_path(Path::new("x.NPY.gz")), Some(Format::Npy));
    assert_eq!(Format::from_path(Path::new("data.bin")), None);
    assert_eq!(
        "safetensors".parse::<Format>().unwrap(),
        Format::Safetensors
    );
    let dir = TempDir::new("fmt");
    let p = dir.write("noext", &std::fs::read(fixture("tiny_xy_f64.npy")).unwrap());
    assert_eq!(load(&p, &LoadOptions::default()).unwrap().rows, 4);
    let p = dir.write("mystery.dat", b"1,2,3\n");
    assert_err(
        load(&p, &LoadOptions::default()),
        &p,
        &["cannot tell the file format"],
    );
    let opts = LoadOptions {
        format: Some(Format::Csv),
        ..LoadOptions::default()
    };
    let p = dir.write("forced.dat", b"1,2,0\n3,4,1\n");
    assert_eq!(load(&p, &opts).unwrap().rows, 2);
}

/// Every truncation and many corruptions of valid files load or fail; none panics or
/// allocates what a corrupt header claims.
#[test]
fn garbage_never_panics() {
    let dir = TempDir::new("fuzz");
    let (images, labels) = mnist_like();
    let labels_path = dir.write("labels.idx", &labels);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("f.csv", b"a,b,label\n1,2,0\n3,4.5,1\n\"5\",6,1\n".to_vec()),
        ("f.npy", std::fs::read(fixture("tiny_xy_f64.npy")).unwrap()),
        ("f.idx", images.clone()),
        ("f.idx.gz", gz(&images)),
        (
            "f.safetensors",
            safetensors_file(&[
                ("x", Dtype::F32, vec![5, 2], le_f32(&[1.0; 10])),
                ("y", Dtype::U8, vec![5], vec![0, 1, 0, 1, 1]),
            ]),
        ),
    ];
    for (name, good) in files {
        let opts = LoadOptions {
            labels: name.contains("idx").then(|| labels_path.clone()),
            ..LoadOptions::default()
        };
        assert!(load(dir.write(name, &good), &opts).is_ok(), "{name}");
        for cut in 0..good.len() {
            let _ = load(dir.write(name, &good[..cut]), &opts);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..good.len() {
            for v in [0x00, 0xff, 0x7f, 0x80, b'(', b',', b'9'] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = load(dir.write(name, &bad), &opts);
            }
            // And a few random multi-byte corruptions.
            let mut bad = good.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % bad.len() as u64) as usize;
                bad[at] = (state >> 32) as u8;
            }
            let _ = load(dir.write(name, &bad), &opts);
        }
    }
}
