//! IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic number (two zero
//! bytes, an element type code, the number of dimensions), one big-endian `u32` per
//! dimension, then the elements, big-endian, in C order.

use super::array::{Array, Elem};
use anyhow::{ensure, Result};

fn elem_of(code: u8) -> Option<Elem> {
    Some(match code {
        0x08 => Elem::U8,
        0x09 => Elem::I8,
        0x0B => Elem::I16,
        0x0C => Elem::I32,
        0x0D => Elem::F32,
        0x0E => Elem::F64,
        _ => return None,
    })
}

pub(crate) fn looks_like_idx(bytes: &[u8]) -> bool {
    bytes.len() >= 4
        && bytes[0] == 0
        && bytes[1] == 0
        && elem_of(bytes[2]).is_some()
        && bytes[3] > 0
}

pub(crate) fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<Array<'a>> {
    ensure!(
        bytes.len() >= 4,
        "truncated file: {} bytes, shorter than the 4-byte IDX magic number",
        bytes.len()
    );
    let magic = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    let elem = elem_of(bytes[2]);
    ensure!(
        bytes[0] == 0 && bytes[1] == 0 && elem.is_some() && bytes[3] > 0,
        "not an IDX file: wrong magic number 0x{magic:08X} at byte offset 0 (expected \
         0x0000TTNN: two zero bytes, a type code TT of 08 u8, 09 i8, 0B i16, 0C i32, 0D f32 or \
         0E f64, and NN ≥ 1 dimensions, e.g. 0x00000803 for MNIST images)"
    );
    let ndim = bytes[3] as usize;
    let data_start = 4 + 4 * ndim;
    ensure!(
        bytes.len() >= data_start,
        "truncated file: the magic number declares {ndim} dimensions, whose sizes need bytes \
         4..{data_start}, but the file has only {} bytes",
        bytes.len()
    );
    let shape = bytes[4..data_start]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes(d.try_into().expect("4 bytes")) as usize)
        .collect();
    Array::new(
        what,
        elem.expect("checked above"),
        true,
        shape,
        &bytes[data_start..],
        data_start,
        true,
    )
}
