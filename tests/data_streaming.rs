//! Plain CSV and `.npy` files are converted as they are read, a few MiB of rows at a time;
//! gzip-compressed ones are still read whole. Both paths must give the same datasets and
//! the same errors, naming rows and byte offsets of the whole file, also past the first
//! chunk. And `split_owned` must pick the rows `split` picks.

mod common;

use common::files::{gz, npy};
use common::TempDir;
use std::path::PathBuf;
use steadygrad::data::{load, split, split_owned, LoadOptions};

/// The same bytes as `name` and gzip-compressed as `name` in another directory (the
/// compressed file is recognised by its magic number).
fn both(dir: &TempDir, name: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir.path().join("plain")).unwrap();
    std::fs::create_dir_all(dir.path().join("gz")).unwrap();
    let (a, b) = (
        dir.path().join("plain").join(name),
        dir.path().join("gz").join(name),
    );
    std::fs::write(&a, bytes).unwrap();
    std::fs::write(&b, gz(bytes)).unwrap();
    (a, b)
}

/// 200 000 rows of 5 features and a label: 4.8 MB as f32, more than one chunk.
const ROWS: usize = 200_000;

fn cell(r: usize, c: usize) -> f64 {
    if c == 5 {
        (r % 4) as f64
    } else {
        ((r * 7 + c * 13) % 1000) as f64 / 8.0 - 60.0
    }
}

fn err(r: anyhow::Result<steadygrad::Dataset>) -> String {
    format!("{:#}", r.expect_err("loading must fail"))
}

#[test]
fn npy_streamed_equals_read_whole() {
    let dir = TempDir::new("stream-npy");
    let opts = LoadOptions::default();
    for (descr, size) in [("<f4", 4), ("<f8", 8)] {
        let mut data = Vec::with_capacity(ROWS * 6 * size);
        for r in 0..ROWS {
            for c in 0..6 {
                match size {
                    4 => data.extend_from_slice(&(cell(r, c) as f32).to_le_bytes()),
                    _ => data.extend_from_slice(&cell(r, c).to_le_bytes()),
                }
            }
        }
        let file = npy(descr, &[ROWS, 6], &data);
        let (plain, zipped) = both(&dir, "d.npy", &file);
        let a = load(&plain, &opts).unwrap();
        assert_eq!((a.rows, a.input_dim, a.classes), (ROWS, 5, Some(4)));
        assert_eq!(a.features[(ROWS - 1) * 5 + 3], cell(ROWS - 1, 3) as f32);
        assert_eq!(a, load(&zipped, &opts).unwrap(), "{descr}");

        // A NaN far past the first chunk is named by its row in the file.
        let (r, c) = (ROWS - 3, 2);
        let at = file.len() - data.len() + (r * 6 + c) * size;
        let mut bad = file.clone();
        match size {
            4 => bad[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
            _ => bad[at..at + 8].copy_from_slice(&f64::NAN.to_le_bytes()),
        }
        let (plain, zipped) = both(&dir, "bad.npy", &bad);
        let (e, z) = (err(load(&plain, &opts)), err(load(&zipped, &opts)));
        let want = format!("features row {r}, column {c} (byte offset {at})");
        assert!(e.contains(&want), "{e}");
        assert_eq!(
            e.replace("plain", "gz"),
            z,
            "the two paths disagree on {descr}"
        );

        // One byte short: refused before any data is read, as from memory.
        let (plain, zipped) = both(&dir, "short.npy", &file[..file.len() - 1]);
        let (e, z) = (err(load(&plain, &opts)), err(load(&zipped, &opts)));
        assert!(e.contains("truncated file"), "{e}");
        assert_eq!(e.replace("plain", "gz"), z);
    }
}

#[test]
fn npy_features_with_a_labels_file() {
    let dir = TempDir::new("stream-npy-labels");
    // 3-D features (rows × 4 × 8, u8) flattened to 32 columns, labels in their own file.
    let n = 300_000;
    let x: Vec<u8> = (0..n * 32).map(|i| (i % 251) as u8).collect();
    let y: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let (xp, xz) = both(&dir, "x.npy", &npy("|u1", &[n, 4, 8], &x));
    let (yp, _) = both(&dir, "y.npy", &npy("|u1", &[n], &y));
    let opts = LoadOptions {
        labels: Some(yp),
        ..LoadOptions::default()
    };
    let a = load(&xp, &opts).unwrap();
    assert_eq!((a.rows, a.input_dim), (n, 32));
    assert_eq!(a.features[n * 32 - 1], x[n * 32 - 1] as f32);
    assert_eq!(a, load(&xz, &opts).unwrap());
}

#[test]
fn csv_streamed_equals_read_whole() {
    let dir = TempDir::new("stream-csv");
    let mut text = String::from("a,b,c,d,e,label\n");
    for r in 0..ROWS {
        let row: Vec<String> = (0..6).map(|c| cell(r, c).to_string()).collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    let opts = LoadOptions::default();
    let (plain, zipped) = both(&dir, "d.csv", text.as_bytes());
    let a = load(&plain, &opts).unwrap();
    assert_eq!((a.rows, a.input_dim), (ROWS, 5));
    assert_eq!(a, load(&zipped, &opts).unwrap());

    // A blank line moves the rows after it down one line; a label error is found after
    // reading, and must still name its line.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1000, "");
    let row = ROWS - 10;
    let relabelled = lines[row + 2].rsplit_once(',').unwrap().0.to_string() + ",2.5";
    lines[row + 2] = &relabelled;
    let (plain, zipped) = both(&dir, "label.csv", (lines.join("\n") + "\n").as_bytes());
    let (e, z) = (err(load(&plain, &opts)), err(load(&zipped, &opts)));
    assert!(
        e.contains(&format!("line {}, column 5 ('label'): label 2.5", row + 3)),
        "{e}"
    );
    assert_eq!(e.replace("plain", "gz"), z);

    let bad = text.replacen("\n7.375,", "\nseven,", 1);
    assert_ne!(bad, text);
    let (plain, zipped) = both(&dir, "bad.csv", bad.as_bytes());
    let (e, z) = (err(load(&plain, &opts)), err(load(&zipped, &opts)));
    assert!(e.contains("'seven' is not a number"), "{e}");
    assert_eq!(e.replace("plain", "gz"), z);
}

#[test]
fn split_owned_picks_the_rows_split_picks() {
    let features: Vec<f32> = (0..3000).map(|i| i as f32).collect();
    let labels: Vec<usize> = (0..1000).map(|i| i % 3).collect();
    let data = steadygrad::Dataset::classification(features, &labels, 3, 3).unwrap();
    for (fraction, seed) in [(0.2, 1), (0.5, 2), (0.999, 3), (0.001, 4)] {
        let (t, v) = split(&data, fraction, seed).unwrap();
        let (t2, v2) = split_owned(data.clone(), fraction, seed).unwrap();
        assert_eq!((t2.rows, v2.rows), (t.rows, v.rows));
        assert_eq!((t2, v2), (t, v), "{fraction}");
    }
    assert!(split_owned(data, 1.5, 1).is_err());
}
