//! CSV and TSV files: one row per line, every cell a number, an optional header line.

use super::array::{check_finite_value, to_f32};
use super::load::{build, resolve_columns, Header, LoadOptions};
use super::Dataset;
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

pub(crate) fn parse(bytes: &[u8], path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let tsv = path
        .to_str()
        .is_some_and(|p| p.ends_with(".tsv") || p.ends_with(".tsv.gz"));
    let delimiter = opts.delimiter.unwrap_or(if tsv { b'\t' } else { b',' });
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        // Ragged rows are checked below, with a message naming the line.
        .flexible(true)
        .trim(::csv::Trim::All)
        .delimiter(delimiter)
        .from_reader(bytes);
    let mut records = reader.byte_records();
    let first = match records.next() {
        None => bail!("the file holds no rows"),
        Some(r) => r.context("malformed CSV")?,
    };
    let first_line = line_of(&first);
    let has_header = match opts.header {
        Header::Auto => first.iter().any(|c| number(c).is_none()),
        Header::Present => true,
        Header::Absent => false,
    };
    let count = first.len();
    let names: Option<Vec<String>> = has_header.then(|| {
        first
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    });
    let label = resolve_columns(&opts.label_columns, names.as_deref(), count)?;
    let mut is_label = vec![false; count];
    for &c in &label {
        is_label[c] = true;
    }
    let column = |c: usize| match &names {
        Some(n) => format!("column {c} ('{}')", n[c]),
        None => format!("column {c}"),
    };

    let (mut features, mut targets) = (Vec::new(), Vec::new());
    // Line of each data row, for label errors found after reading.
    let mut lines = Vec::new();
    let mut label_cells = vec![0.0; label.len()];
    let mut add_row = |rec: &::csv::ByteRecord| -> Result<()> {
        let line = line_of(rec);
        ensure!(
            rec.len() == count,
            "line {line} has {} columns, expected {count} as on line {first_line}",
            rec.len()
        );
        for (c, cell) in rec.iter().enumerate() {
            let at = || format!("line {line}, {}", column(c));
            let Some(v) = number(cell) else {
                bail!("{}: {} is not a number", at(), show(cell));
            };
            if is_label[c] {
                check_finite_value(v, at)?;
                let k = label
                    .iter()
                    .position(|&l| l == c)
                    .expect("c is a label column");
                label_cells[k] = v;
            } else {
                features.push(to_f32(v, at)?);
            }
        }
        targets.extend_from_slice(&label_cells);
        lines.push(line);
        Ok(())
    };
    if !has_header {
        add_row(&first)?;
    }
    for rec in records {
        add_row(&rec.context("malformed CSV")?)?;
    }
    ensure!(
        !lines.is_empty(),
        "the file has a header line but no data rows"
    );
    let tdim = label.len();
    build(features, count - tdim, targets, tdim, &opts.task, &|i| {
        format!("line {}, {}", lines[i / tdim], column(label[i % tdim]))
    })
}

fn line_of(rec: &::csv::ByteRecord) -> u64 {
    rec.position().map_or(0, |p| p.line())
}

/// Rust's float syntax, which also accepts `nan` and `inf` so they can be reported as
/// non-finite rather than as text.
fn number(cell: &[u8]) -> Option<f64> {
    std::str::from_utf8(cell).ok()?.parse().ok()
}

fn show(cell: &[u8]) -> String {
    if cell.is_empty() {
        return "the empty cell".to_string();
    }
    let text = String::from_utf8_lossy(cell);
    let mut short: String = text.chars().take(40).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("'{short}'")
}
