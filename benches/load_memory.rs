//! Peak memory of loading large data files: writes a `.npy` file of f32 (300 MB of data
//! by default) and a CSV file to a temporary directory, loads each with
//! `steadygrad::data::load` in a child process (this same executable), and reports the
//! child's peak resident set (VmHWM) divided by the data's size as f32.
//!
//! ```text
//! cargo bench --bench load_memory              # 300 MB .npy, 60 MB (as f32) CSV
//! cargo bench --bench load_memory -- 100 20    # MB of f32 data in the .npy and the CSV
//! ```
//! "prep" also splits off 20% for validation (`split_owned`) and standardizes, as
//! `steadygrad train` does after loading. Linux only (`/proc/self/status`).

mod common;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use steadygrad::data::{self, LoadOptions, Standardizer};

const COLS: usize = 10;

/// kB of a `/proc/self/status` line such as `VmHWM:  123 kB`.
fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn child(mode: &str, path: &Path) -> anyhow::Result<()> {
    let before = status_kb("VmHWM:");
    let d = data::load(path, &LoadOptions::default())?;
    let rows = d.rows;
    if mode == "prep" {
        let (mut train, mut valid) = data::split_owned(d, 0.2, 1)?;
        let s = Standardizer::fit(&train)?;
        s.apply(&mut train)?;
        s.apply(&mut valid)?;
    }
    println!("{before} {} {rows}", status_kb("VmHWM:"));
    Ok(())
}

fn cell(r: usize, c: usize) -> f32 {
    if c == COLS - 1 {
        (r % 10) as f32
    } else {
        ((r * 7919 + c * 104_729) % 100_000) as f32 / 1000.0 - 50.0
    }
}

fn write_npy(path: &Path, rows: usize) -> anyhow::Result<()> {
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {COLS}), }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(h.len() as u16).to_le_bytes())?;
    w.write_all(h.as_bytes())?;
    for r in 0..rows {
        for c in 0..COLS {
            w.write_all(&cell(r, c).to_le_bytes())?;
        }
    }
    Ok(w.flush()?)
}

fn write_csv(path: &Path, rows: usize) -> anyhow::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for r in 0..rows {
        for c in 0..COLS {
            let sep = if c + 1 == COLS { '\n' } else { ',' };
            write!(w, "{}{sep}", cell(r, c))?;
        }
    }
    Ok(w.flush()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(mode), Some(path)) = (std::env::var_os("LOAD_MEMORY_CHILD"), args.get(1)) {
        return child(&mode.to_string_lossy(), Path::new(path));
    }
    let arg = common::numeric_args();
    let (npy_mb, csv_mb) = (arg(0, 300), arg(1, 60));
    let dir = std::env::temp_dir().join(format!("steadygrad-load-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let row_bytes = COLS * 4;
    let files = [
        ("npy", dir.join("big.npy"), npy_mb * 1_000_000 / row_bytes),
        ("csv", dir.join("big.csv"), csv_mb * 1_000_000 / row_bytes),
    ];
    for (kind, path, rows) in &files {
        if *kind == "npy" {
            write_npy(path, *rows)?;
        } else {
            write_csv(path, *rows)?;
        }
    }
    println!(
        "{:<5} {:<5} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "file", "mode", "rows", "file MB", "f32 MB", "peak MB", "peak/f32"
    );
    for (kind, path, rows) in &files {
        for mode in ["load", "prep"] {
            let out = Command::new(std::env::current_exe()?)
                .arg(path)
                .env("LOAD_MEMORY_CHILD", mode)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Vec<u64> = text
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            anyhow::ensure!(v.len() == 3 && v[2] == *rows as u64, "child said {text:?}");
            let payload = (*rows * row_bytes) as f64;
            let peak = v[1] as f64 * 1024.0;
            println!(
                "{kind:<5} {mode:<5} {rows:>10} {:>12.1} {:>12.1} {:>10.1} {:>10.3}",
                std::fs::metadata(path)?.len() as f64 / 1e6,
                payload / 1e6,
                peak / 1e6,
                peak / payload
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
