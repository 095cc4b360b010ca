//! The few protocol-buffer wire encodings steadygrad writes by hand (TensorBoard events,
//! ONNX models): both need a handful of field kinds, far less code than a protobuf crate
//! and the `.proto` files it would compile.
//!
//! Fields are written in the order given; readers accept any order. Encoding only: nothing
//! here reads protobuf.

/// A base-128 varint, least significant group first.
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2): strings and nested messages.
pub fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field (wire type 0): `int32`, `int64` and enums. Negative values take ten
/// bytes, as protobuf sign-extends them to 64 bits.
pub fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    varint(out, u64::from(field << 3));
    varint(out, v as u64);
}

/// A `float` field (wire type 5, little-endian).
pub fn float_field(out: &mut Vec<u8>, field: u32, v: f32) {
    varint(out, u64::from(field << 3 | 5));
    out.extend_from_slice(&v.to_le_bytes());
}

/// A fixed 64-bit field (wire type 1).
pub fn double_field(out: &mut Vec<u8>, field: u32, v: f64) {
    varint(out, u64::from(field << 3 | 1));
    out.extend_from_slice(&v.to_le_bytes());
}

/// A packed repeated double field: one length-delimited run of little-endian values.
pub fn packed_doubles(out: &mut Vec<u8>, field: u32, values: &[f64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(out, field, &bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte strings from the protobuf encoding guide's examples.
    #[test]
    fn encodings_match_the_protobuf_guide() {
        let mut v = Vec::new();
        int_field(&mut v, 1, 150);
        assert_eq!(v, [0x08, 0x96, 0x01]);
        let mut s = Vec::new();
        bytes_field(&mut s, 2, b"testing");
        assert_eq!(s, b"\x12\x07testing");
        let mut n = Vec::new();
        int_field(&mut n, 1, -2);
        assert_eq!(
            n,
            [0x08, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        let mut f = Vec::new();
        float_field(&mut f, 2, 1.0);
        assert_eq!(f, [0x15, 0x00, 0x00, 0x80, 0x3f]);
    }
}
