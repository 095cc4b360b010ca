//! NumPy `.npy` arrays (format versions 1–3): a magic string, a header that is a Python
//! dict literal (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`), then the
//! elements.

use super::array::{Array, Elem};
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Seek, SeekFrom};

pub(crate) const MAGIC: &[u8] = b"\x93NUMPY";

pub(crate) fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<Array<'a>> {
    let (elem, big_endian, shape, end) = header(bytes, bytes.len())?;
    Array::new(what, elem, big_endian, shape, &bytes[end..], end, true)
}

/// The array of an uncompressed `.npy` file of `file_len` bytes, leaving `file` at its
/// first element: only the header is read, so the caller can convert the elements into
/// their final buffer chunk by chunk instead of holding the file's bytes as well.
pub(crate) fn declared(
    file: &mut (impl Read + Seek),
    file_len: usize,
    what: &str,
) -> Result<Array<'static>> {
    let mut prefix = Vec::new();
    // The preamble, then the header it declares (never more than the file holds).
    file.take(12.min(file_len) as u64)
        .read_to_end(&mut prefix)
        .context("reading the .npy header")?;
    if let Some(end) = header_end(&prefix) {
        let more = end.min(file_len).saturating_sub(prefix.len());
        file.take(more as u64)
            .read_to_end(&mut prefix)
            .context("reading the .npy header")?;
    }
    let (elem, big_endian, shape, end) = header(&prefix, file_len)?;
    // A header shorter than the 12 bytes read first has its data start among them.
    file.seek(SeekFrom::Start(end as u64))
        .context("reading the .npy header")?;
    Array::declared(what, elem, big_endian, shape, file_len - end, end, true)
}

/// Where the header ends, from the preamble's declared length.
fn header_end(prefix: &[u8]) -> Option<usize> {
    if !prefix.starts_with(MAGIC) || prefix.len() < 10 {
        return None;
    }
    match prefix[6] {
        1 => Some(10 + u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
        2 | 3 if prefix.len() >= 12 => {
            Some(12 + u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes")) as usize)
        }
        _ => None,
    }
}

/// Element type, byte order, shape and the data's byte offset, from the file's first
/// bytes (`bytes`, at least through the header when the file holds it) and its length.
fn header(bytes: &[u8], file_len: usize) -> Result<(Elem, bool, Vec<usize>, usize)> {
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    ensure!(
        head == MAGIC,
        "not a .npy file: wrong magic number {} at byte offset 0 (expected \\x93NUMPY)",
        hex(head)
    );
    ensure!(
        file_len >= 10 && bytes.len() >= 10,
        "truncated file: {file_len} bytes, shorter than the 10-byte .npy preamble"
    );
    let (major, minor) = (bytes[6], bytes[7]);
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(
                file_len >= 12 && bytes.len() >= 12,
                "truncated file: {file_len} bytes, shorter than the 12-byte .npy {major}.{minor} \
                 preamble"
            );
            let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
            (n as usize, 12)
        }
        _ => bail!("unsupported .npy format version {major}.{minor} (1.0 to 3.0 are known)"),
    };
    let end = start.saturating_add(len);
    let Some(header) = bytes.get(start..end).filter(|_| end <= file_len) else {
        bail!(
            "truncated file: the header is declared as {len} bytes from byte offset {start}, \
             but the file has only {file_len} bytes"
        );
    };
    let header = String::from_utf8_lossy(header);
    let dict = parse_header(&header)
        .with_context(|| format!("malformed .npy header at byte offset {start}: {header:?}"))?;
    let (elem, big_endian) = dtype(&dict.descr)?;
    ensure!(
        !dict.fortran_order,
        "the array is in Fortran (column-major) order, which is not supported; save it with \
         np.save(path, np.ascontiguousarray(a))"
    );
    Ok((elem, big_endian, dict.shape, end))
}

/// Maps a NumPy type string to an element type and endianness.
fn dtype(descr: &str) -> Result<(Elem, bool)> {
    let unsupported = || {
        anyhow::anyhow!(
            "unsupported .npy dtype '{descr}': use float32, float64, uint8, int8, int16, int32 or \
             int64 (e.g. a.astype(np.float32))"
        )
    };
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<' | b'|' | b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let elem = match code {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "u1" | "b1" => Elem::U8,
        "i1" => Elem::I8,
        "u2" => Elem::U16,
        "i2" => Elem::I16,
        "u4" => Elem::U32,
        "i4" => Elem::I32,
        "u8" => Elem::U64,
        "i8" => Elem::I64,
        _ => return Err(unsupported()),
    };
    Ok((elem, big_endian))
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// A list: NumPy's spelling of a structured (record) dtype.
    List,
}

/// Parses the subset of Python literal syntax that `np.save` writes.
fn parse_header(text: &str) -> Result<Header> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        let value = p.value()?;
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", Value::List) => bail!("structured dtypes (record arrays) are not supported"),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", _) => bail!("'{key}' has the wrong type"),
            _ => {}
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    Ok(Header {
        descr: descr.context("the header has no 'descr'")?,
        fortran_order: fortran.context("the header has no 'fortran_order'")?,
        shape: shape.context("the header has no 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let hit = self.s.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        ensure!(
            self.eat(c),
            "expected '{}' at character {}",
            c as char,
            self.i
        );
        Ok(())
    }

    fn string(&mut self) -> Result<String> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => bail!("expected a quoted string at character {}", self.i),
        };
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .with_context(|| format!("unterminated string at character {}", self.i))?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn value(&mut self) -> Result<Value> {
        self.skip_ws();
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        break;
                    }
                    dims.push(self.integer()?);
                    // Python 2 wrote longs as `3L`.
                    self.eat(b'L');
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(dims))
            }
            Some(b'[') => Ok(Value::List),
            _ if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Ok(Value::Bool(true))
            }
            _ if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Ok(Value::Bool(false))
            }
            _ => bail!("unexpected value at character {}", self.i),
        }
    }

    fn integer(&mut self) -> Result<usize> {
        self.skip_ws();
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
        digits
            .parse()
            .with_context(|| format!("expected a dimension at character {start}"))
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(empty file)".to_string();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}
