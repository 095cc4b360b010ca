//! Data files: round trips for CSV, .npy, IDX (plain and gzip) and safetensors, every
//! kind of bad file as an error naming the file and the place, garbage that must never
//! panic, standardization statistics and the train/validation split.

mod common;

use common::TempDir;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::io::Write;
use std::path::{Path, PathBuf};
use steadygrad::cpu::CpuEngine;
use steadygrad::data::{
    load, load_with_columns, split, Column, Dataset, Format, Header, LoadOptions, Standardizer,
    Task,
};
use steadygrad::{FitOptions, MlpSpec, Model, Optimizer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// Asserts that the error names the file and contains every fragment.
fn assert_err(r: anyhow::Result<Dataset>, file: &Path, fragments: &[&str]) {
    let e = err_of(r);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "error does not name {name}: {e}");
    for f in fragments {
        assert!(e.contains(f), "error lacks '{f}': {e}");
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A version 1.0 `.npy` file, as `np.save` lays it out.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
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

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An IDX file: magic 0x0000TTNN, big-endian dimensions, then the data.
fn idx(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn classification(classes: Option<usize>) -> LoadOptions {
    LoadOptions {
        task: Task::Classification { classes },
        ..LoadOptions::default()
    }
}

const TINY_X: [f32; 12] = [
    0.5, -1.0, 2.0, 1.5, 0.0, -2.0, 2.5, 1.0, 0.25, 3.5, 2.0, 8.0,
];
const TINY_Y: [f32; 4] = [0.0, 2.0, 1.0, 2.0];

// ---------------------------------------------------------------------------------- CSV

#[test]
fn csv_header_and_label_by_name() {
    let dir = TempDir::new("csv");
    let p = dir.write(
        "iris.csv",
        b"a, b ,label,c\n1,2,0,3\n4,5,1,6\n\n7,8.5e0,2,-9\n",
    );
    let opts = LoadOptions {
        label_columns: vec![Column::Name("label".into())],
        ..LoadOptions::default()
    };
    let d = load(&p, &opts).unwrap();
    assert_eq!((d.rows, d.input_dim, d.target_dim), (3, 3, 1));
    assert_eq!(d.features, [1., 2., 3., 4., 5., 6., 7., 8.5, -9.]);
    assert_eq!(d.targets, [0., 1., 2.]);
    assert_eq!(d.classes, Some(3));
    // The same by index, and with a larger class count given.
    let opts = LoadOptions {
        label_columns: vec![Column::Index(2)],
        ..classification(Some(10))
    };
    let e = load(&p, &opts).unwrap();
    assert_eq!((e.features, e.classes), (d.features, Some(10)));
}

#[test]
fn csv_without_header_label_last_or_first() {
    let dir = TempDir::new("csv");
    let p = dir.write("plain.csv", b"0.5,1,1\n-1,2,0\n");
    let d = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(d.features, [0.5, 1.0, -1.0, 2.0]);
    assert_eq!((d.targets, d.classes), (vec![1.0, 0.0], Some(2)));
    // MNIST-as-CSV puts the label first.
    let opts = LoadOptions {
        label_columns: vec!["0".parse().unwrap()],
        header: Header::Absent,
        ..LoadOptions::default()
    };
    let p = dir.write("first.csv", b"1,0.5,7\n0,-1,8\n");
    let d = load(&p, &opts).unwrap();
    assert_eq!(d.features, [0.5, 7.0, -1.0, 8.0]);
    assert_eq!(d.targets, [1.0, 0.0]);
    // A numeric first line is data unless the header is declared present.
    let opts = LoadOptions {
        header: Header::Present,
        ..LoadOptions::default()
    };
    let p = dir.write("numeric_header.csv", b"10,20,30\n1,2,1\n3,4,0\n");
    assert_eq!(load(&p, &opts).unwrap().rows, 2);
    // Read as data, its 30 would silently make a 31-class model of a 2-class file.
    assert_err(
        load(&p, &LoadOptions::default()),
        &p,
        &["line 1", "label 30", "31 classes", "--classes 31"],
    );
    let opts = LoadOptions {
        task: Task::Classification { classes: Some(31) },
        ..LoadOptions::default()
    };
    assert_eq!(load(&p, &opts).unwrap().rows, 3);
}

#[test]
fn csv_stray_label_far_beyond_the_others() {
    let dir = TempDir::new("csvgap");
    let p = dir.write("stray.csv", b"x,label\n0.1,0\n0.2,1\n0.3,100000\n0.4,1\n");
    assert_err(
        load(&p, &LoadOptions::default()),
        &p,
        &[
            "line 4",
            "label 100000",
            "100001 classes",
            "3 distinct",
            "--classes",
        ],
    );
    // Saying the class count is how a sparse label set is accepted.
    let d = load(&p, &classification(Some(100_001))).unwrap();
    assert_eq!(d.classes, Some(100_001));
    // Dense labels are taken at face value however many there are, and so is any label
    // set below the floor.
    let dense: String = (0..30).map(|l| format!("{l}.5,{l}\n")).collect();
    let p = dir.write("dense.csv", format!("x,label\n{dense}").as_bytes());
    assert_eq!(load(&p, &LoadOptions::default()).unwrap().classes, Some(30));
    let p = dir.write("small.csv", b"x,label\n0.1,0\n0.2,19\n");
    assert_eq!(load(&p, &LoadOptions::default()).unwrap().classes, Some(20));
}

#[test]
fn csv_numeric_header_is_detected() {
    let dir = TempDir::new("csvnum");
    // pandas' header for numbered columns, read as data, would be a row of labels 5.
    for header in ["1,2,3,4,5", "0,1,2,3,4"] {
        let p = dir.write(
            "numbered.csv",
            format!("{header}\n0.1,0.2,0.3,0.4,1\n0.5,0.1,0.3,0.2,0\n").as_bytes(),
        );
        assert_err(
            load(&p, &LoadOptions::default()),
            &p,
            &[
                "line 1",
                "header of column numbers",
                "--header yes",
                "--header no",
            ],
        );
        let opts = LoadOptions {
            header: Header::Present,
            ..LoadOptions::default()
        };
        let d = load(&p, &opts).unwrap();
        assert_eq!((d.rows, d.input_dim, d.classes), (2, 4, Some(2)));
        let opts = LoadOptions {
            header: Header::Absent,
            ..classification(Some(6))
        };
        assert_eq!(load(&p, &opts).unwrap().rows, 3);
    }
    // All numbers and a label column by name: the name cannot be found, and we say why.
    let p = dir.write("nohead.csv", b"0.5,0.25,1\n0.1,0.2,0\n");
    let opts = LoadOptions {
        label_columns: vec![Column::Name("label".into())],
        ..LoadOptions::default()
    };
    assert_err(
        load(&p, &opts),
        &p,
        &["'label'", "line 1", "all numbers", "--header yes"],
    );
}

#[test]
fn csv_validation_columns_matched_by_name() {
    let dir = TempDir::new("csvorder");
    let train = dir.write("train.csv", b"a,b,label\n1,2,0\n3,4,1\n5,6,2\n");
    let (t, cols) = load_with_columns(&train, &LoadOptions::default(), None).unwrap();
    let cols = cols.expect("the file has a header");
    assert_eq!(cols, ["a", "b", "label"]);
    let same = dir.write("same.csv", b"a,b,label\n7,8,1\n9,10,2\n");
    let moved = dir.write("moved.csv", b"label,b,a\n1,8,7\n2,10,9\n");
    let opts = classification(t.classes);
    let (want, _) = load_with_columns(&same, &opts, Some(&cols)).unwrap();
    let (got, got_cols) = load_with_columns(&moved, &opts, Some(&cols)).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.features, [7., 8., 9., 10.]);
    assert_eq!(got_cols.unwrap(), cols);
    // Other columns, more columns, or a repeated name are refused naming the file.
    for (name, body, fragments) in [
        (
            "other.csv",
            "a,c,label\n1,2,0\n",
            &["lacks b", "c besides"][..],
        ),
        ("wider.csv", "a,b,c,label\n1,2,3,0\n", &["c besides"][..]),
        ("twice.csv", "a,a,label\n1,2,0\n", &["lacks b"][..]),
        ("twice2.csv", "b,a,a,label\n1,2,3,0\n", &["a, a"][..]),
    ] {
        let p = dir.write(name, body.as_bytes());
        let e = err_of(load_with_columns(&p, &opts, Some(&cols)));
        assert!(e.contains(name), "{e}");
        assert!(e.contains("a, b, label"), "training columns not named: {e}");
        for f in fragments {
            assert!(e.contains(f), "lacks '{f}': {e}");
        }
    }
}

#[test]
fn csv_regression_several_targets() {
    let dir = TempDir::new("csv");
    let p = dir.write("reg.csv", b"t1,x1,x2,t2\n0.5,1,2,-3\n1.5,3,4,-4\n");
    let opts = LoadOptions {
        task: Task::Regression,
        label_columns: vec![Column::Name("t2".into()), Column::Name("t1".into())],
        ..LoadOptions::default()
    };
    let d = load(&p, &opts).unwrap();
    assert_eq!((d.input_dim, d.target_dim, d.classes), (2, 2, None));
    assert_eq!(d.features, [1., 2., 3., 4.]);
    assert_eq!(d.targets, [-3.0, 0.5, -4.0, 1.5]);
}

#[test]
fn csv_delimiters_quotes_and_gzip() {
    let dir = TempDir::new("csv");
    let p = dir.write("t.tsv", b"x\ty\tclass\n1\t2\t0\n3\t4\t1\n");
    let d = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(d.features, [1., 2., 3., 4.]);
    let p = dir.write("semi.csv", b"\"x\";\"y\";\"c\"\n\"1\";2;0\n3;4;1\n");
    let opts = LoadOptions {
        delimiter: Some(b';'),
        ..LoadOptions::default()
    };
    assert_eq!(load(&p, &opts).unwrap().features, [1., 2., 3., 4.]);
    // Spreadsheet exports start with a UTF-8 byte order mark.
    let p = dir.write("bom.csv", b"\xef\xbb\xbf1,2,0\n3,4,1\n");
    assert_eq!(load(&p, &LoadOptions::default()).unwrap().rows, 2);
    let p = dir.write("z.csv.gz", &gz(b"x,y,c\n1,2,0\n3,4,1\n"));
    let d = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(
        (d.features, d.targets),
        (vec![1., 2., 3., 4.], vec![0., 1.])
    );
}

#[test]
fn csv_bad_files() {
    let dir = TempDir::new("csvbad");
    let cases: &[(&str, &[u8], LoadOptions, &[&str])] = &[
        (
            "ragged.csv",
            b"a,b,c\n1,2,0\n3,4\n",
            LoadOptions::default(),
            &["line 3 has 2 columns, expected 3"],
        ),
        (
            "text.csv",
            b"a,b,c\n1,2,0\n3,abc,1\n",
            LoadOptions::default(),
            &["line 3, column 1 ('b')", "'abc' is not a number"],
        ),
        (
            "empty_cell.csv",
            b"1,2,0\n3,,1\n",
            LoadOptions::default(),
            &["line 2, column 1", "empty cell is not a number"],
        ),
        (
            "nan.csv",
            b"a,b,c\n1,2,0\n3,4,1\nNaN,5,0\n",
            LoadOptions::default(),
            &["line 4, column 0 ('a')", "NaN"],
        ),
        (
            "inf.csv",
            b"1,-inf,0\n",
            LoadOptions::default(),
            &["line 1, column 1", "-inf"],
        ),
        (
            "huge.csv",
            b"1,2,0\n1e39,2,1\n",
            LoadOptions::default(),
            &["line 2, column 0", "too large for f32"],
        ),
        (
            "fraction.csv",
            b"x,y,label\n1,2,0\n3,4,1.5\n",
            LoadOptions::default(),
            &[
                "line 3, column 2 ('label')",
                "label 1.5 is not a class index",
            ],
        ),
        (
            "negative.csv",
            b"1,2,-1\n",
            LoadOptions::default(),
            &["line 1, column 2", "label -1 is not a class index"],
        ),
        (
            "range.csv",
            b"1,2,0\n1,2,1\n1,2,3\n",
            classification(Some(3)),
            &["line 3, column 2", "label 3 is out of range for 3 classes"],
        ),
        (
            "one_class.csv",
            b"1,2,0\n1,2,0\n",
            LoadOptions::default(),
            &["only one class"],
        ),
        (
            "two_labels.csv",
            b"1,2,0\n",
            LoadOptions {
                label_columns: vec![Column::Index(1), Column::Index(2)],
                ..LoadOptions::default()
            },
            &["classification needs one label per row", "2 label columns"],
        ),
        (
            "no_such_name.csv",
            b"a,b,c\n1,2,0\n",
            LoadOptions {
                label_columns: vec![Column::Name("label".into())],
                ..LoadOptions::default()
            },
            &["no column is named 'label'", "a, b, c"],
        ),
        (
            "name_without_header.csv",
            b"1,2,0\n",
            LoadOptions {
                label_columns: vec![Column::Name("label".into())],
                ..LoadOptions::default()
            },
            &["no header line"],
        ),
        (
            "index_out_of_range.csv",
            b"1,2,0\n",
            LoadOptions {
                label_columns: vec![Column::Index(3)],
                ..LoadOptions::default()
            },
            &["label column 3 does not exist", "3 columns"],
        ),
        (
            "all_labels.csv",
            b"1,2\n",
            LoadOptions {
                task: Task::Regression,
                label_columns: vec![Column::Index(0), Column::Index(1)],
                ..LoadOptions::default()
            },
            &["no features are left"],
        ),
        (
            "single_column.csv",
            b"1\n0\n",
            LoadOptions::default(),
            &["single column"],
        ),
        (
            "header_only.csv",
            b"a,b,c\n",
            LoadOptions::default(),
            &["header line but no data rows"],
        ),
        ("empty.csv", b"", LoadOptions::default(), &["no rows"]),
    ];
    for (name, bytes, opts, fragments) in cases {
        let p = dir.write(name, bytes);
        assert_err(load(&p, opts), &p, fragments);
    }
    let e = err_of(load(
        dir.path().join("missing.csv"),
        &LoadOptions::default(),
    ));
    assert!(
        e.contains("cannot read") && e.contains("missing.csv"),
        "{e}"
    );
}

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

// ---------------------------------------------------------------------------------- preparation

#[test]
fn standardizer_statistics() {
    // Columns: 1..4 (mean 2.5, population std √1.25), constant 7, and 0,0,0,10
    // (mean 2.5, std √18.75).
    let train = Dataset::classification(
        vec![1., 7., 0., 2., 7., 0., 3., 7., 0., 4., 7., 10.],
        &[0, 1, 0, 1],
        3,
        2,
    )
    .unwrap();
    let s = Standardizer::fit(&train).unwrap();
    assert_eq!(s.mean, [2.5, 7.0, 2.5]);
    assert!((s.std[0] - 1.25f32.sqrt()).abs() < 1e-6, "{:?}", s.std);
    assert_eq!(s.std[1], 0.0);
    assert!((s.std[2] - 18.75f32.sqrt()).abs() < 1e-6, "{:?}", s.std);

    let mut t = train.clone();
    s.apply(&mut t).unwrap();
    let col = |d: &Dataset, j: usize| -> Vec<f32> {
        d.features.iter().skip(j).step_by(3).copied().collect()
    };
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    for j in [0, 2] {
        let c = col(&t, j);
        let var = c.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(
            mean(&c).abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "column {j}: {c:?}"
        );
    }
    // The constant column is centered, not divided by zero.
    assert_eq!(col(&t, 1), [0.0; 4]);
    assert_eq!(t.targets, train.targets);

    // Validation rows use the training statistics, not their own.
    let mut valid =
        Dataset::classification(vec![2.5, 9.0, 2.5 + 18.75f32.sqrt()], &[1], 3, 2).unwrap();
    s.apply(&mut valid).unwrap();
    assert_eq!(valid.features[0], 0.0);
    assert_eq!(valid.features[1], 2.0);
    assert!((valid.features[2] - 1.0).abs() < 1e-6);

    // Saved and restored statistics give the same transform.
    let r = Standardizer::from_parts(s.mean.clone(), s.std.clone()).unwrap();
    let mut row = vec![4.0, 7.0, 10.0];
    r.transform(&mut row).unwrap();
    assert!((row[0] - 1.5 / 1.25f32.sqrt()).abs() < 1e-6);

    assert!(err_of(Standardizer::from_parts(vec![0.0], vec![-1.0])).contains("std >= 0"));
    assert!(
        err_of(Standardizer::from_parts(vec![0.0, 1.0], vec![1.0])).contains("2 means and 1 stds")
    );
    assert!(err_of(s.transform(&mut [1.0, 2.0])).contains("not whole rows of the 3 features"));
    let mut two = Dataset::classification(vec![1.0, 2.0], &[0], 2, 2).unwrap();
    assert!(err_of(s.apply(&mut two)).contains("2 features per row"));
    let tiny = Standardizer::from_parts(vec![0.0], vec![1e-30]).unwrap();
    assert!(err_of(tiny.transform(&mut [1e30])).contains("far outside the range"));
}

fn numbered(rows: usize) -> Dataset {
    let features = (0..rows).map(|r| r as f32).collect();
    let labels: Vec<usize> = (0..rows).map(|r| r % 3).collect();
    Dataset::classification(features, &labels, 1, 5).unwrap()
}

#[test]
fn split_sizes_and_determinism() {
    let data = numbered(10);
    for (fraction, valid_rows) in [(0.2, 2), (0.25, 3), (0.5, 5), (0.04, 1), (0.99, 9)] {
        let (t, v) = split(&data, fraction, 7).unwrap();
        assert_eq!(
            (t.rows, v.rows),
            (10 - valid_rows, valid_rows),
            "{fraction}"
        );
        assert_eq!((t.classes, v.classes), (Some(5), Some(5)));
        // Every row lands in exactly one part, in file order, its label with it.
        let mut all: Vec<f32> = t.features.iter().chain(&v.features).copied().collect();
        assert!(t.features.is_sorted() && v.features.is_sorted());
        for d in [&t, &v] {
            for (x, y) in d.features.iter().zip(&d.targets) {
                assert_eq!(*x as usize % 3, *y as usize);
            }
        }
        all.sort_by(f32::total_cmp);
        assert_eq!(all, data.features);
    }
    let a = split(&data, 0.3, 1).unwrap();
    assert_eq!(a, split(&data, 0.3, 1).unwrap());
    let b = split(&numbered(1000), 0.3, 1).unwrap();
    assert_ne!(b.1, split(&numbered(1000), 0.3, 2).unwrap().1);

    for bad in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(
            err_of(split(&data, bad, 1)).contains("between 0 and 1"),
            "{bad}"
        );
    }
    assert!(err_of(split(&numbered(1), 0.5, 1)).contains("1 row cannot be split"));
}

/// A file all the way to a trained model: load, split, standardize (fitted on the
/// training rows), fit on the CPU reference.
#[test]
fn csv_to_trained_model() {
    let dir = TempDir::new("fit");
    let mut text = String::from("x,y,class\n");
    for i in 0..60 {
        let (x, y) = (1000.0 + (i % 10) as f32, (i / 10) as f32 * 0.001);
        text += &format!("{x},{y},{}\n", (i % 10 >= 5) as u8);
    }
    let p = dir.write("blobs.csv", text.as_bytes());
    let data = load(&p, &LoadOptions::default()).unwrap();
    let (mut train, mut valid) = split(&data, 0.25, 3).unwrap();
    let s = Standardizer::fit(&train).unwrap();
    s.apply(&mut train).unwrap();
    s.apply(&mut valid).unwrap();
    let spec = MlpSpec::new(2, &[8], 2)
        .optimizer(Optimizer::sgd(0.2))
        .seed(1);
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let opts = FitOptions {
        epochs: 60,
        batch_size: 8,
        shuffle_seed: 1,
        drop_last: false,
    };
    let last = m
        .fit(&train, Some(&valid), &opts, |_| {})
        .unwrap()
        .pop()
        .unwrap();
    assert!(last.valid.unwrap().accuracy.unwrap() > 0.9, "{last:?}");
}
