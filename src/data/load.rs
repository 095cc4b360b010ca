//! Loading a [`Dataset`] from a file: format detection, the options every format shares,
//! and the label rules that turn raw numbers into classes or regression targets.

use super::array::{to_f32, Array};
use super::{csv, idx, npy, safetensors, Dataset};
use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File formats [`load`] understands. Any of them may be gzip-compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma- (or tab-) separated numbers, one row per line, optional header line.
    Csv,
    /// A NumPy `.npy` array.
    Npy,
    /// The IDX format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte`).
    Idx,
    /// A safetensors file holding a features tensor and a labels tensor.
    Safetensors,
}

impl Format {
    /// The format a file name implies, ignoring a trailing `.gz`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match ext {
            "csv" | "tsv" => Some(Format::Csv),
            "npy" => Some(Format::Npy),
            "safetensors" => Some(Format::Safetensors),
            "idx" => Some(Format::Idx),
            // MNIST's own names: `train-images-idx3-ubyte`, `t10k-labels.idx1-ubyte`.
            _ if name.ends_with("-ubyte") => Some(Format::Idx),
            _ => None,
        }
    }

    /// The format the first bytes (after decompression) identify, if any.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(npy::MAGIC) {
            return Some(Format::Npy);
        }
        if idx::looks_like_idx(bytes) {
            return Some(Format::Idx);
        }
        // safetensors: an 8-byte little-endian header length, then a JSON object.
        if bytes.len() > 8 && bytes[8] == b'{' {
            return Some(Format::Safetensors);
        }
        None
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Format> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "csv" | "tsv" => Format::Csv,
            "npy" => Format::Npy,
            "idx" => Format::Idx,
            "safetensors" => Format::Safetensors,
            _ => bail!("unknown data format '{s}': expected csv, npy, idx or safetensors"),
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Npy => "npy",
            Format::Idx => "idx",
            Format::Safetensors => "safetensors",
        })
    }
}

/// What the label values mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// One whole-number class index per row. `classes: None` takes the largest label + 1;
    /// give the count when a file may lack the highest classes (a small validation file).
    Classification { classes: Option<usize> },
    /// Real-valued targets, one or more per row.
    Regression,
}

impl Default for Task {
    fn default() -> Self {
        Task::Classification { classes: None }
    }
}

/// A CSV column (or a column of a single 2-D `.npy` array), counted from 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    Index(usize),
    Name(String),
}

/// Digits are an index, anything else a header name.
impl FromStr for Column {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Column, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => Column::Index(i),
            Err(_) => Column::Name(s.to_string()),
        })
    }
}

impl From<usize> for Column {
    fn from(i: usize) -> Column {
        Column::Index(i)
    }
}

impl From<&str> for Column {
    fn from(s: &str) -> Column {
        Column::Name(s.to_string())
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Column::Index(i) => write!(f, "{i}"),
            Column::Name(n) => write!(f, "'{n}'"),
        }
    }
}

/// Whether a CSV file starts with a line of column names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Header {
    /// A header when any cell of the first line is not a number.
    #[default]
    Auto,
    Present,
    Absent,
}

/// How to read a data file; `LoadOptions::default()` suits a CSV or `.npy` file whose last
/// column is the class label, a safetensors file with `features` and `labels`, and MNIST.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `None`: from the file name, else from the first bytes.
    pub format: Option<Format>,
    /// A separate labels/targets file (`.npy` or IDX), row `i` labelling row `i` of the
    /// features file. For IDX images, `None` looks for the matching `labels-idx1` file.
    pub labels: Option<PathBuf>,
    pub task: Task,
    /// Label or target columns of a CSV file or a single 2-D `.npy` array; every other
    /// column is a feature. Empty: the last column.
    pub label_columns: Vec<Column>,
    pub header: Header,
    /// CSV field separator; `None`: tab for `.tsv`, else comma.
    pub delimiter: Option<u8>,
    /// safetensors tensor names; `None` tries `features`, `x`, `X`, `inputs`, `data`.
    pub features_tensor: Option<String>,
    /// `None` tries `labels`, `label`, `y`, `Y`, `targets`, `target`.
    pub labels_tensor: Option<String>,
}

/// Loads a dataset, choosing the parser from `opts.format`, the file name or the file's
/// first bytes. Errors name the file and where in it the problem is.
///
/// Everything is held in memory as `f32`; plain (uncompressed) CSV and `.npy` files are
/// converted as they are read, so loading one peaks near the size of its data as `f32`
/// rather than the file plus the data. That bounds the data by host RAM, not by the GPU:
/// training uploads one batch at a time, so a dataset larger than the adapter's largest
/// storage binding trains fine.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Dataset> {
    load_with_columns(path.as_ref(), opts, None).map(|(d, _)| d)
}

/// [`load`], also returning a CSV file's column names (from its header line). With
/// `order`, the column names of the training file, a CSV file with a header naming the
/// same columns in another order is reordered to match, and one naming other columns is
/// refused with an error naming the file and the columns.
pub fn load_with_columns(
    path: &Path,
    opts: &LoadOptions,
    order: Option<&[String]>,
) -> Result<(Dataset, Option<Vec<String>>)> {
    let named = opts.format.or_else(|| Format::from_path(path));
    // Plain CSV and .npy files are converted as they are read, so loading needs little
    // more memory than the data; other files are read whole first.
    let mut plain = match named {
        Some(Format::Csv | Format::Npy) => open_plain(path)?,
        _ => None,
    };
    let bytes = if plain.is_some() {
        Vec::new()
    } else {
        read_file(path)?
    };
    let format = match named {
        Some(f) => f,
        None => Format::sniff(&bytes).with_context(|| {
            format!(
                "{}: cannot tell the file format from its name or its first bytes; name it \
                 .csv, .tsv, .npy, .safetensors or .idx, or set the format",
                path.display()
            )
        })?,
    };
    // Silently ignoring a label column the user chose would train on the wrong target.
    ensure!(
        opts.label_columns.is_empty()
            || (opts.labels.is_none() && matches!(format, Format::Csv | Format::Npy)),
        "{}: label columns pick labels out of a CSV file or a single .npy array; this {format} \
         data has its labels in {}",
        path.display(),
        if opts.labels.is_some() {
            "a separate file"
        } else {
            "a tensor or file of their own"
        }
    );
    let in_file = || path.display().to_string();
    match format {
        Format::Csv | Format::Safetensors => {
            if let Some(l) = &opts.labels {
                bail!(
                    "{}: a separate labels file ({}) is supported for .npy and IDX data; {} \
                     files hold their labels themselves",
                    path.display(),
                    l.display(),
                    format
                );
            }
            if format == Format::Csv {
                match plain.take() {
                    Some((file, _)) => csv::parse(file, path, opts, order),
                    None => csv::parse(&bytes[..], path, opts, order),
                }
                .with_context(in_file)
            } else {
                Ok((
                    safetensors::parse(&bytes, opts).with_context(in_file)?,
                    None,
                ))
            }
        }
        Format::Npy | Format::Idx => Ok((load_arrays(path, plain, &bytes, format, opts)?, None)),
    }
}

/// An open regular file and its length, when it is not gzip-compressed (`None` then: it
/// is read whole and decompressed).
fn open_plain(path: &Path) -> Result<Option<(File, usize)>> {
    // Pipes and devices are left to `read_file`, unopened: a pipe opened twice may lose
    // what the first opening would have read.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let cannot = || format!("cannot read {}", path.display());
    let mut file = File::open(path).with_context(cannot)?;
    let meta = file.metadata().with_context(cannot)?;
    let mut magic = Vec::new();
    (&mut file)
        .take(2)
        .read_to_end(&mut magic)
        .with_context(cannot)?;
    if magic == [0x1f, 0x8b] {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0)).with_context(cannot)?;
    Ok(Some((file, meta.len() as usize)))
}

/// `.npy` and IDX data: one array of features with a labels array from a second file, or
/// (`.npy` only) one 2-D array whose label columns are picked out.
fn load_arrays(
    path: &Path,
    plain: Option<(File, usize)>,
    bytes: &[u8],
    format: Format,
    opts: &LoadOptions,
) -> Result<Dataset> {
    let in_file = || path.display().to_string();
    let (array, mut src): (Array, Box<dyn Read>) = match plain {
        Some((mut file, len)) if format == Format::Npy => {
            let array = npy::declared(&mut file, len, "features").with_context(in_file)?;
            (array, Box::new(file))
        }
        _ => {
            let array = parse_array(bytes, format, "features").with_context(in_file)?;
            let payload = array.payload();
            (array, Box::new(payload))
        }
    };
    let labels_path = match (&opts.labels, format) {
        (Some(l), _) => l.clone(),
        (None, Format::Npy) => {
            let cols = array
                .columns()
                .and_then(|n| resolve_columns(&opts.label_columns, None, n))
                .with_context(in_file)?;
            let (features, width, targets, tdim) = array
                .split_columns_from(&cols, &mut src)
                .with_context(in_file)?;
            return build(features, width, targets, tdim, &opts.task, &|i| {
                array.locate((i / tdim) * (width + tdim) + cols[i % tdim], width + tdim)
            })
            .with_context(in_file);
        }
        (None, _) => idx_labels_beside(path).with_context(|| {
            format!(
                "{}: IDX images need a labels file (e.g. train-labels-idx1-ubyte); set the \
                 labels path",
                path.display()
            )
        })?,
    };
    let (features, rows, width) = array.features_from(&mut src).with_context(in_file)?;
    let in_labels = || labels_path.display().to_string();
    let label_bytes = read_file(&labels_path)?;
    let label_format = Format::from_path(&labels_path)
        .or_else(|| Format::sniff(&label_bytes))
        .unwrap_or(format);
    ensure!(
        matches!(label_format, Format::Npy | Format::Idx),
        "{}: a labels file must be .npy or IDX, not {label_format}",
        labels_path.display()
    );
    let labels = parse_array(&label_bytes, label_format, "labels").with_context(in_labels)?;
    let (targets, label_rows, tdim) = labels.targets().with_context(in_labels)?;
    ensure!(
        rows == label_rows,
        "row counts differ: {} holds {rows} rows of features but {} holds {label_rows} rows of \
         labels",
        path.display(),
        labels_path.display()
    );
    build(features, width, targets, tdim, &opts.task, &|i| {
        labels.locate(i, tdim)
    })
    .with_context(in_labels)
}

fn parse_array<'a>(bytes: &'a [u8], format: Format, what: &str) -> Result<Array<'a>> {
    match format {
        Format::Npy => npy::parse(bytes, what),
        Format::Idx => idx::parse(bytes, what),
        _ => unreachable!("only array formats are parsed here"),
    }
}

/// MNIST ships `train-images-idx3-ubyte` beside `train-labels-idx1-ubyte` (some mirrors
/// use `.idx3-ubyte`), so the labels of an images file can be found by name.
fn idx_labels_beside(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    [
        ("images-idx3", "labels-idx1"),
        ("images.idx3", "labels.idx1"),
    ]
    .iter()
    .filter(|(from, _)| name.contains(from))
    .map(|(from, to)| images.with_file_name(name.replace(from, to)))
    .find(|p| p.exists())
}

/// Reads a whole file, decompressing it when it starts with the gzip magic number.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    check_not_device(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .with_context(|| format!("{}: gzip data is corrupt or truncated", path.display()))?;
    Ok(out)
}

fn check_not_device(path: &Path) -> Result<()> {
    // A device such as /dev/zero or a terminal would be read until memory runs out or
    // forever; pipes (`<(zcat …)`, /dev/stdin) are fine, they end.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        ensure!(
            !(t.is_char_device() || t.is_block_device() || t.is_socket()),
            "{} is a device, not a data file",
            path.display()
        );
    }
    Ok(())
}

/// Indices of the label columns among `count` columns; empty `wanted` means the last one.
pub(crate) fn resolve_columns(
    wanted: &[Column],
    names: Option<&[String]>,
    count: usize,
) -> Result<Vec<usize>> {
    ensure!(count > 0, "rows have no columns");
    if wanted.is_empty() {
        ensure!(
            count >= 2,
            "rows have a single column: there must be at least one feature column besides the label"
        );
        return Ok(vec![count - 1]);
    }
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let i = match w {
            Column::Index(i) => {
                ensure!(
                    *i < count,
                    "label column {i} does not exist: rows have {count} columns, numbered from 0"
                );
                *i
            }
            Column::Name(n) => {
                let Some(names) = names else {
                    bail!("label column '{n}' is given by name, but the data has no header line of column names");
                };
                names.iter().position(|h| h == n).with_context(|| {
                    format!(
                        "no column is named '{n}'; the columns are: {}",
                        names.join(", ")
                    )
                })?
            }
        };
        ensure!(!out.contains(&i), "label column {w} is given twice");
        out.push(i);
    }
    ensure!(
        out.len() < count,
        "all {count} columns are label columns: no features are left"
    );
    Ok(out)
}

/// Below this largest label, any label set is taken at face value.
const GAP_FLOOR: usize = 20;

/// Refuses to infer the class count from a largest label far beyond the labels present
/// (at least [`GAP_FLOOR`] and twice the number of distinct labels): one stray label of
/// 100000 would otherwise build a 100001-class output layer that trains silently.
fn check_label_gap(targets: &[f64], max: usize, locate: &dyn Fn(usize) -> String) -> Result<()> {
    if max < GAP_FLOOR {
        return Ok(());
    }
    let distinct: std::collections::BTreeSet<u64> = targets.iter().map(|&v| v as u64).collect();
    if max < 2 * distinct.len() {
        return Ok(());
    }
    let at = targets
        .iter()
        .position(|&v| v as usize == max)
        .expect("max is one of the labels");
    let shown: Vec<String> = distinct.iter().take(8).map(u64::to_string).collect();
    bail!(
        "{}: label {max} would make {} classes, but the file holds only {} distinct labels \
         ({}{}); if there really are {} classes, give the class count (--classes {}), \
         otherwise fix that label",
        locate(at),
        max + 1,
        distinct.len(),
        shown.join(", "),
        if distinct.len() > 8 { ", …" } else { "" },
        max + 1,
        max + 1
    )
}

/// Labels beyond 2²⁴ are not exact in `f32`, where datasets keep them.
const MAX_CLASSES: usize = 1 << 24;

/// `v` as `f32`, converted from the back a slice at a time while `v` gives its memory
/// back, so the two are never both whole: for a file of few columns the `f64` labels
/// are a sizable part of the data.
fn narrow(mut v: Vec<f64>) -> Vec<f32> {
    const STEP: usize = 1 << 18;
    let mut out = Vec::with_capacity(v.len());
    while !v.is_empty() {
        let cut = v.len().saturating_sub(STEP);
        out.extend(v[cut..].iter().rev().map(|&x| x as f32));
        v.truncate(cut);
        v.shrink_to_fit();
    }
    out.reverse();
    out
}

/// Turns raw label values into a validated dataset. `locate(i)` names target value `i` in
/// the file for error messages.
pub(crate) fn build(
    features: Vec<f32>,
    input_dim: usize,
    targets: Vec<f64>,
    target_dim: usize,
    task: &Task,
    locate: &dyn Fn(usize) -> String,
) -> Result<Dataset> {
    let rows = targets.len() / target_dim.max(1);
    let (targets, classes) = match task {
        Task::Classification { classes } => {
            ensure!(
                target_dim == 1,
                "classification needs one label per row, but there are {target_dim} label \
                 columns; use regression for several targets"
            );
            if let Some(c) = *classes {
                ensure!(
                    (2..=MAX_CLASSES).contains(&c),
                    "the class count must be between 2 and {MAX_CLASSES}, got {c}"
                );
            }
            let mut max = 0;
            for (i, &v) in targets.iter().enumerate() {
                ensure!(
                    v >= 0.0 && v.fract() == 0.0,
                    "{}: label {v} is not a class index (a whole number >= 0); use regression \
                     for real-valued targets",
                    locate(i)
                );
                ensure!(
                    v < MAX_CLASSES as f64,
                    "{}: label {v} is too large for a class index (at most {MAX_CLASSES} classes)",
                    locate(i)
                );
                if let Some(c) = *classes {
                    ensure!(
                        (v as usize) < c,
                        "{}: label {v} is out of range for {c} classes (labels must be in 0..{c})",
                        locate(i)
                    );
                }
                max = max.max(v as usize);
            }
            if classes.is_none() {
                check_label_gap(&targets, max, locate)?;
            }
            let classes = classes.unwrap_or(max + 1);
            ensure!(
                classes >= 2,
                "every label is 0, so there is only one class; classification needs at least 2 \
                 (give the class count if this file holds only part of the classes)"
            );
            (narrow(targets), Some(classes))
        }
        Task::Regression => {
            for (i, &v) in targets.iter().enumerate() {
                to_f32(v, || locate(i))?;
            }
            (narrow(targets), None)
        }
    };
    let data = Dataset {
        features,
        targets,
        rows,
        input_dim,
        target_dim,
        classes,
    };
    data.validate()?;
    Ok(data)
}
