//! Builders and assertions for the data-file tests (`data_csv.rs`, `data_files.rs`):
//! files laid out as numpy, IDX and safetensors write them, and errors that must name
//! the file.

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::io::Write;
use std::path::{Path, PathBuf};
use steadygrad::data::{Dataset, LoadOptions, Task};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// Asserts that the error names the file and contains every fragment.
pub fn assert_err(r: anyhow::Result<Dataset>, file: &Path, fragments: &[&str]) {
    let e = err_of(r);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "error does not name {name}: {e}");
    for f in fragments {
        assert!(e.contains(f), "error lacks '{f}': {e}");
    }
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A version 1.0 `.npy` file, as `np.save` lays it out.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
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

pub fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An IDX file: magic 0x0000TTNN, big-endian dimensions, then the data.
pub fn idx(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

pub fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

pub fn classification(classes: Option<usize>) -> LoadOptions {
    LoadOptions {
        task: Task::Classification { classes },
        ..LoadOptions::default()
    }
}

pub const TINY_X: [f32; 12] = [
    0.5, -1.0, 2.0, 1.5, 0.0, -2.0, 2.5, 1.0, 0.25, 3.5, 2.0, 8.0,
];
pub const TINY_Y: [f32; 4] = [0.0, 2.0, 1.0, 2.0];
