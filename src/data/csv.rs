//! CSV and TSV files: one row per line, every cell a number, an optional header line.

use super::array::{check_finite_value, to_f32};
use super::load::{build, resolve_columns, Header, LoadOptions};
use super::Dataset;
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// Parses a CSV file; with `order` (the training file's column names) a file whose header
/// names the same columns in another order is reordered to it. Returns the header's column
/// names (after reordering) when there is a header line.
pub(crate) fn parse(
    bytes: impl std::io::Read,
    path: &Path,
    opts: &LoadOptions,
    order: Option<&[String]>,
) -> Result<(Dataset, Option<Vec<String>>)> {
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
    let all_numeric = first.iter().all(|c| number(c).is_some());
    if all_numeric && opts.header == Header::Auto {
        // Under auto such a line is data, so a column asked for by name cannot be found:
        // the user took the line for a header.
        if let Some(n) = opts.label_columns.iter().find_map(|c| match c {
            super::load::Column::Name(n) => Some(n),
            _ => None,
        }) {
            bail!(
                "label column '{n}' is given by name, but line {first_line} ({}) is all \
                 numbers, so it is read as data and the file has no header line of column \
                 names; pass --header yes if it is a header, or give the column by index",
                preview(&first)
            );
        }
    }
    let has_header = match opts.header {
        Header::Auto => {
            if all_numeric && looks_like_column_numbers(&first) {
                bail!(
                    "line {first_line} ({}) looks like a header of column numbers, but every \
                     cell is a number, so it may be data too; say which with --header yes or \
                     --header no",
                    preview(&first)
                );
            }
            !all_numeric
        }
        Header::Present => true,
        Header::Absent => false,
    };
    let count = first.len();
    let mut names: Option<Vec<String>> = has_header.then(|| {
        first
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    });
    // Cell `c` of a reordered row is cell `perm[c]` of the file's row.
    let mut perm: Option<Vec<usize>> = None;
    if let (Some(n), Some(want)) = (&names, order) {
        if n.as_slice() != want {
            perm = Some(reorder(n, want)?);
            names = Some(want.to_vec());
        }
    }
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
    let mut lines = RowLines::default();
    let mut label_cells = vec![0.0; label.len()];
    let mut add_row = |rec: &::csv::ByteRecord| -> Result<()> {
        let line = line_of(rec);
        ensure!(
            rec.len() == count,
            "line {line} has {} columns, expected {count} as on line {first_line}",
            rec.len()
        );
        let permuted;
        let rec = match &perm {
            Some(p) => {
                permuted = p.iter().map(|&i| &rec[i]).collect::<::csv::ByteRecord>();
                &permuted
            }
            None => rec,
        };
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
        lines.rows > 0,
        "the file has a header line but no data rows"
    );
    let tdim = label.len();
    let data = build(features, count - tdim, targets, tdim, &opts.task, &|i| {
        format!("line {}, {}", lines.get(i / tdim), column(label[i % tdim]))
    })?;
    Ok((data, names))
}

/// The line each data row starts on. Rows are mostly one line after the other, so only
/// where that breaks (quoted line breaks, blank lines) is recorded: a line number per row
/// would take a fifth of a ten-column file's memory.
#[derive(Default)]
struct RowLines {
    rows: usize,
    /// `(row, line)` of the first row and of each row not on the line after the last.
    jumps: Vec<(usize, u64)>,
    last: u64,
}

impl RowLines {
    fn push(&mut self, line: u64) {
        if self.rows == 0 || line != self.last + 1 {
            self.jumps.push((self.rows, line));
        }
        self.last = line;
        self.rows += 1;
    }

    fn get(&self, row: usize) -> u64 {
        let k = self.jumps.partition_point(|&(r, _)| r <= row);
        let (r, line) = self.jumps[k.max(1) - 1];
        line + (row - r) as u64
    }
}

/// For each wanted column, its index among `have`; an error naming the differences when
/// the two are not the same set of columns.
fn reorder(have: &[String], want: &[String]) -> Result<Vec<usize>> {
    let missing: Vec<&str> = want
        .iter()
        .filter(|w| !have.contains(w))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = have
        .iter()
        .filter(|h| !want.contains(h))
        .map(String::as_str)
        .collect();
    let mut differences = Vec::new();
    if !missing.is_empty() {
        differences.push(format!("it lacks {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        differences.push(format!("it has {} besides", extra.join(", ")));
    }
    ensure!(
        differences.is_empty() && have.len() == want.len(),
        "its columns ({}) do not match the training file's ({}){}",
        have.join(", "),
        want.join(", "),
        if differences.is_empty() {
            " (a column name repeats)".to_string()
        } else {
            format!(": {}", differences.join("; "))
        }
    );
    let mut seen = std::collections::HashSet::new();
    ensure!(
        have.iter().all(|h| seen.insert(h)),
        "its header names a column twice ({}), so its columns cannot be matched to the \
         training file's by name",
        have.join(", ")
    );
    Ok(want
        .iter()
        .map(|w| have.iter().position(|h| h == w).expect("checked above"))
        .collect())
}

/// `0,1,2,…` or `1,2,3,…` (three or more cells): what pandas writes as the header of a
/// frame whose columns are numbered.
fn looks_like_column_numbers(first: &::csv::ByteRecord) -> bool {
    let values: Vec<f64> = first.iter().filter_map(number).collect();
    values.len() >= 3
        && values.len() == first.len()
        && (values.iter().enumerate().all(|(i, &v)| v == i as f64)
            || values.iter().enumerate().all(|(i, &v)| v == i as f64 + 1.0))
}

/// The first cells of a row, for messages.
fn preview(rec: &::csv::ByteRecord) -> String {
    let cells: Vec<String> = rec
        .iter()
        .take(6)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let more = if rec.len() > 6 { ",…" } else { "" };
    format!("{}{more}", cells.join(","))
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

#[cfg(test)]
mod tests {
    use super::RowLines;

    #[test]
    fn row_lines_follow_the_jumps() {
        let mut l = RowLines::default();
        let lines = [2, 3, 4, 7, 8, 10, 11];
        for &n in &lines {
            l.push(n);
        }
        assert_eq!(l.rows, lines.len());
        assert_eq!(l.jumps.len(), 3);
        for (row, &n) in lines.iter().enumerate() {
            assert_eq!(l.get(row), n, "row {row}");
        }
    }
}
