//! Typed numeric arrays inside binary files (`.npy`, IDX, safetensors), decoded lazily
//! so a 60 000 × 784 `u8` image file is never widened to `f64` all at once.

use anyhow::{bail, ensure, Context, Result};
use std::io::Read;

/// Element types the binary loaders can widen to `f32`/`f64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 => 2,
            Elem::U32 | Elem::I32 | Elem::F32 => 4,
            Elem::U64 | Elem::I64 | Elem::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::U8 => "u8",
            Elem::I8 => "i8",
            Elem::U16 => "u16",
            Elem::I16 => "i16",
            Elem::U32 => "u32",
            Elem::I32 => "i32",
            Elem::U64 => "u64",
            Elem::I64 => "i64",
            Elem::F32 => "f32",
            Elem::F64 => "f64",
        }
    }
}

/// Formats a shape the way NumPy prints it, `(3,)` and `(60000, 28, 28)`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A C-ordered array whose element bytes lie in `data`.
pub(crate) struct Array<'a> {
    /// How messages name it: "features", "labels", "tensor 'x'".
    pub what: String,
    pub elem: Elem,
    pub big_endian: bool,
    pub shape: Vec<usize>,
    data: &'a [u8],
    /// Where the array's first element is in the file, so errors can give byte offsets.
    offset: usize,
    /// Elements in the whole array.
    len: usize,
    /// Index in the whole array of `data`'s first element: a chunk read from a file holds
    /// rows from the middle, and messages must still name rows of the file.
    base: usize,
}

/// Bytes of whole rows converted at a time when an array is read from a file: big enough
/// for few reads, small beside any data worth streaming.
const CHUNK_BYTES: usize = 4 << 20;

impl<'a> Array<'a> {
    /// Checks the declared shape against the bytes that follow the header before anything
    /// is allocated: a corrupt header may claim terabytes. With `exact`, trailing bytes are
    /// an error too, since they mean the header and the data disagree.
    pub fn new(
        what: impl Into<String>,
        elem: Elem,
        big_endian: bool,
        shape: Vec<usize>,
        rest: &'a [u8],
        offset: usize,
        exact: bool,
    ) -> Result<Array<'a>> {
        let a = Array::declared(what, elem, big_endian, shape, rest.len(), offset, exact)?;
        Ok(Array {
            data: &rest[..a.len * elem.size()],
            ..a
        })
    }

    /// An array whose elements are still in the file: `available` bytes follow its header
    /// there. The same checks as [`Array::new`]; read it with the `*_from` methods.
    pub fn declared(
        what: impl Into<String>,
        elem: Elem,
        big_endian: bool,
        shape: Vec<usize>,
        available: usize,
        offset: usize,
        exact: bool,
    ) -> Result<Array<'static>> {
        let what = what.into();
        // An empty array needs no bytes whatever its other dimensions.
        let need = if shape.contains(&0) {
            Some(0)
        } else {
            shape
                .iter()
                .try_fold(elem.size(), |acc, &d| acc.checked_mul(d))
        };
        let Some(need) = need else {
            bail!(
                "{what}: the header declares shape {} of {}, which overflows the address space",
                shape_str(&shape),
                elem.name()
            );
        };
        ensure!(
            available >= need,
            "truncated file: the header declares {what} of shape {} and type {} = {need} bytes \
             of data from byte offset {offset}, but only {available} bytes follow",
            shape_str(&shape),
            elem.name(),
        );
        ensure!(
            !exact || available == need,
            "{} unexpected bytes after the data of {what} (shape {}, type {}) which ends at byte \
             offset {}: the header and the data disagree",
            available - need,
            shape_str(&shape),
            elem.name(),
            offset + need
        );
        Ok(Array {
            what,
            elem,
            big_endian,
            shape,
            data: &[],
            offset,
            len: need / elem.size(),
            base: 0,
        })
    }

    /// The element bytes held in memory (none for a [`Array::declared`] one).
    pub fn payload(&self) -> &'a [u8] {
        self.data
    }

    /// Elements of the array in `data`, or of the chunk of it this is.
    fn here(&self) -> usize {
        self.data.len() / self.elem.size()
    }

    pub fn byte_offset(&self, index: usize) -> usize {
        self.offset + index * self.elem.size()
    }

    /// Reads the elements from `src` (positioned at the first) a few MiB of whole rows at a
    /// time, handing each chunk to `f` as an array whose indices are the chunk's own.
    fn chunks(&self, src: &mut dyn Read, f: &mut dyn FnMut(&Array) -> Result<()>) -> Result<()> {
        let rows = self.shape.first().copied().unwrap_or(1).max(1);
        let row = (self.len / rows).max(1) * self.elem.size();
        let per_chunk = (CHUNK_BYTES / row).max(1);
        let mut buf = vec![0u8; per_chunk.min(rows) * row];
        let mut done = 0;
        while done * row < self.len * self.elem.size() {
            let n = per_chunk.min(rows - done);
            let bytes = &mut buf[..n * row];
            src.read_exact(bytes).with_context(|| {
                format!(
                    "reading {} from byte offset {}",
                    self.what,
                    self.byte_offset(done * row / self.elem.size())
                )
            })?;
            let chunk = Array {
                what: self.what.clone(),
                shape: Vec::new(),
                data: &*bytes,
                base: done * row / self.elem.size(),
                ..*self
            };
            f(&chunk)?;
            done += n;
        }
        Ok(())
    }

    /// Element `i` widened to `f64` (exact for everything but integers beyond 2⁵³).
    pub fn get(&self, i: usize) -> f64 {
        let size = self.elem.size();
        let b = &self.data[i * size..(i + 1) * size];
        macro_rules! num {
            ($t:ty) => {{
                let bytes = b.try_into().expect("slice has the element's size");
                if self.big_endian {
                    <$t>::from_be_bytes(bytes)
                } else {
                    <$t>::from_le_bytes(bytes)
                }
            }};
        }
        match self.elem {
            Elem::U8 => b[0] as f64,
            Elem::I8 => b[0] as i8 as f64,
            Elem::U16 => num!(u16) as f64,
            Elem::I16 => num!(i16) as f64,
            Elem::U32 => num!(u32) as f64,
            Elem::I32 => num!(i32) as f64,
            Elem::U64 => num!(u64) as f64,
            Elem::I64 => num!(i64) as f64,
            Elem::F32 => num!(f32) as f64,
            Elem::F64 => num!(f64),
        }
    }

    /// Names element `i` (of this chunk) as row and column of a `rows × width` view of the
    /// whole array, with its byte offset.
    pub fn locate(&self, i: usize, width: usize) -> String {
        let i = self.base + i;
        let width = width.max(1);
        format!(
            "{} row {}, column {} (byte offset {})",
            self.what,
            i / width,
            i % width,
            self.byte_offset(i)
        )
    }

    fn check_rows(&self) -> Result<usize> {
        ensure!(
            !self.shape.is_empty(),
            "{} is a scalar (shape ()); expected one row per sample",
            self.what
        );
        ensure!(self.shape[0] > 0, "{} has no rows", self.what);
        Ok(self.shape[0])
    }

    /// Rows of features: dimensions after the first are flattened (28 × 28 images become
    /// 784 features).
    pub fn features(&self) -> Result<(Vec<f32>, usize, usize)> {
        self.features_from(&mut { self.data })
    }

    /// [`Array::features`] of an array whose elements `src` holds.
    pub fn features_from(&self, src: &mut dyn Read) -> Result<(Vec<f32>, usize, usize)> {
        let rows = self.check_rows()?;
        ensure!(
            self.shape.len() >= 2,
            "{} has shape {}, but features need 2 dimensions (rows × features); for a single \
             feature save it as shape ({rows}, 1)",
            self.what,
            shape_str(&self.shape)
        );
        // Not the product of shape[1..], which can overflow when another dimension is 0.
        let width = self.len / rows;
        ensure!(
            width > 0,
            "{} has shape {}: rows with zero features",
            self.what,
            shape_str(&self.shape)
        );
        let mut out = Vec::with_capacity(self.len);
        self.chunks(src, &mut |c| {
            for i in 0..c.here() {
                out.push(to_f32(c.get(i), || c.locate(i, width))?);
            }
            Ok(())
        })?;
        Ok((out, rows, width))
    }

    /// Labels or targets: 1-D gives one value per row, 2-D one row of targets per row.
    pub fn targets(&self) -> Result<(Vec<f64>, usize, usize)> {
        self.targets_from(&mut { self.data })
    }

    /// [`Array::targets`] of an array whose elements `src` holds.
    pub fn targets_from(&self, src: &mut dyn Read) -> Result<(Vec<f64>, usize, usize)> {
        let rows = self.check_rows()?;
        let width = match self.shape.len() {
            1 => 1,
            2 => self.shape[1],
            _ => bail!(
                "{} has shape {}, but labels or targets need 1 dimension (one per row) or 2 \
                 (rows × targets)",
                self.what,
                shape_str(&self.shape)
            ),
        };
        ensure!(
            width > 0,
            "{} has shape {}: rows with zero targets",
            self.what,
            shape_str(&self.shape)
        );
        let mut out = Vec::with_capacity(self.len);
        self.chunks(src, &mut |c| {
            for i in 0..c.here() {
                let v = c.get(i);
                check_finite_value(v, || c.locate(i, width))?;
                out.push(v);
            }
            Ok(())
        })?;
        Ok((out, rows, width))
    }

    /// Columns of a 2-D array that holds features and labels side by side.
    pub fn columns(&self) -> Result<usize> {
        self.check_rows()?;
        ensure!(
            self.shape.len() == 2,
            "{} has shape {}; a single array holding features and labels must be 2-D \
             (rows × columns), or give the labels in a separate file",
            self.what,
            shape_str(&self.shape)
        );
        Ok(self.shape[1])
    }

    /// Splits a 2-D array into feature columns and the `label` columns (targets in the
    /// order given), whose elements `src` holds.
    pub fn split_columns_from(
        &self,
        label: &[usize],
        src: &mut dyn Read,
    ) -> Result<(Vec<f32>, usize, Vec<f64>, usize)> {
        let (rows, cols) = (self.shape[0], self.columns()?);
        let is_label: Vec<bool> = (0..cols).map(|c| label.contains(&c)).collect();
        let width = cols - label.len();
        let mut features = Vec::with_capacity(rows * width);
        let mut targets = Vec::with_capacity(rows * label.len());
        self.chunks(src, &mut |chunk| {
            for r in 0..chunk.here() / cols {
                for (c, &l) in is_label.iter().enumerate() {
                    let i = r * cols + c;
                    if !l {
                        features.push(to_f32(chunk.get(i), || chunk.locate(i, cols))?);
                    }
                }
                for &c in label {
                    let i = r * cols + c;
                    let v = chunk.get(i);
                    check_finite_value(v, || chunk.locate(i, cols))?;
                    targets.push(v);
                }
            }
            Ok(())
        })?;
        Ok((features, width, targets, label.len()))
    }
}

/// NaN and ±inf cannot be trained on; finite `f64` beyond `f32`'s range would become inf.
pub(crate) fn to_f32(v: f64, at: impl Fn() -> String) -> Result<f32> {
    check_finite_value(v, &at)?;
    let f = v as f32;
    ensure!(
        f.is_finite(),
        "{}: {v} is too large for f32 (limit ±3.4e38)",
        at()
    );
    Ok(f)
}

pub(crate) fn check_finite_value(v: f64, at: impl Fn() -> String) -> Result<()> {
    if !v.is_finite() {
        bail!(
            "{}: value is {v} (NaN and infinity cannot be trained on)",
            at()
        );
    }
    Ok(())
}
