//! CSV files: header detection (named, numeric, absent), labels by name or position,
//! a stray label far beyond the others, validation columns matched by name, delimiters,
//! quotes and gzip, and every kind of bad CSV as an error naming the file and the place.

mod common;

use common::files::*;
use common::TempDir;
use steadygrad::data::{load, load_with_columns, Column, Header, LoadOptions, Task};

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
