//! A reader of TensorBoard event files written from the documented record format (not
//! the crate's encoder): TFRecord framing with masked CRC-32C, and the few protobuf fields
//! of `Event`, `Summary`, `Summary.Value` and `HistogramProto`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// CRC-32C, bit by bit from the Castagnoli polynomial (reversed 0x82F63B78).
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The fields of one protobuf message: field number → values, as raw integers (varint
/// and fixed) or bytes.
#[derive(Debug)]
enum Field {
    Int(u64),
    Bytes(Vec<u8>),
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> BTreeMap<u64, Vec<Field>> {
    let mut out: BTreeMap<u64, Vec<Field>> = BTreeMap::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at);
        let f = match key & 7 {
            0 => Field::Int(varint(b, &mut at)),
            1 => {
                at += 8;
                Field::Int(u64::from_le_bytes(b[at - 8..at].try_into().unwrap()))
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                Field::Bytes(b[at - n..at].to_vec())
            }
            5 => {
                at += 4;
                Field::Int(u64::from(u32::from_le_bytes(
                    b[at - 4..at].try_into().unwrap(),
                )))
            }
            w => panic!("wire type {w} at byte {at}"),
        };
        out.entry(key >> 3).or_default().push(f);
    }
    out
}

fn bytes(f: &Field) -> &[u8] {
    match f {
        Field::Bytes(b) => b,
        Field::Int(_) => panic!("expected a length-delimited field, got {f:?}"),
    }
}

fn int(f: &Field) -> u64 {
    match f {
        Field::Int(v) => *v,
        Field::Bytes(_) => panic!("expected a number, got {f:?}"),
    }
}

pub struct Events {
    pub file_version: Option<String>,
    /// tag → (step, value) in file order.
    pub scalars: BTreeMap<String, Vec<(i64, f32)>>,
    /// tag → (step, histogram) in file order.
    pub histograms: BTreeMap<String, Vec<(i64, Histo)>>,
    pub records: usize,
}

/// A `HistogramProto`.
#[derive(Debug, Default)]
pub struct Histo {
    pub min: f64,
    pub max: f64,
    pub num: f64,
    pub sum: f64,
    pub sum_squares: f64,
    pub bucket_limit: Vec<f64>,
    pub bucket: Vec<f64>,
}

fn double(f: &Field) -> f64 {
    f64::from_bits(int(f))
}

/// A repeated double, packed (one length-delimited run) or not (one field per value).
fn doubles(fs: Option<&Vec<Field>>) -> Vec<f64> {
    let mut out = Vec::new();
    for f in fs.into_iter().flatten() {
        match f {
            Field::Int(v) => out.push(f64::from_bits(*v)),
            Field::Bytes(b) => {
                assert_eq!(b.len() % 8, 0, "a packed double run of {} bytes", b.len());
                out.extend(
                    b.chunks(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap())),
                );
            }
        }
    }
    out
}

/// `min = 1, max = 2, num = 3, sum = 4, sum_squares = 5, bucket_limit = 6, bucket = 7`;
/// a field left out is 0 (proto3 defaults).
fn histo(b: &[u8]) -> Histo {
    let h = fields(b);
    let get = |n: u64| h.get(&n).map_or(0.0, |f| double(&f[0]));
    Histo {
        min: get(1),
        max: get(2),
        num: get(3),
        sum: get(4),
        sum_squares: get(5),
        bucket_limit: doubles(h.get(&6)),
        bucket: doubles(h.get(&7)),
    }
}

/// Reads every record of the one event file in `dir`, checking both CRCs of each.
pub fn read_events(dir: &Path) -> Events {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"], "{name}");
    let secs: u64 = parts[3].parse().expect("unix seconds in the name");
    assert!(secs > 1_600_000_000, "{name}");
    assert!(
        parts.len() == 5 && !parts[4].is_empty(),
        "no host name: {name}"
    );
    let b = std::fs::read(&files[0]).unwrap();
    let mut ev = Events {
        file_version: None,
        scalars: BTreeMap::new(),
        histograms: BTreeMap::new(),
        records: 0,
    };
    let mut at = 0;
    while at < b.len() {
        assert!(b.len() - at >= 12, "a torn record header at byte {at}");
        let len_bytes = &b[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            crc,
            masked(len_bytes),
            "length CRC of record {}",
            ev.records
        );
        let data = &b[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(b[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked(data), "data CRC of record {}", ev.records);
        at += 16 + len;
        let event = fields(data);
        let wall = f64::from_bits(int(&event[&1][0]));
        assert!(wall > 1.6e9, "wall_time {wall}");
        let step = event.get(&2).map_or(0, |f| int(&f[0]) as i64);
        if let Some(v) = event.get(&3) {
            assert_eq!(ev.records, 0, "file_version after the first record");
            ev.file_version = Some(String::from_utf8(bytes(&v[0]).to_vec()).unwrap());
        }
        if let Some(s) = event.get(&5) {
            for value in fields(bytes(&s[0])).get(&1).into_iter().flatten() {
                let v = fields(bytes(value));
                let tag = String::from_utf8(bytes(&v[&1][0]).to_vec()).unwrap();
                if let Some(x) = v.get(&2) {
                    let x = f32::from_bits(int(&x[0]) as u32);
                    ev.scalars.entry(tag).or_default().push((step, x));
                } else {
                    let h = histo(bytes(&v.get(&5).expect("a simple_value or a histo")[0]));
                    ev.histograms.entry(tag).or_default().push((step, h));
                }
            }
        }
        ev.records += 1;
    }
    ev
}
