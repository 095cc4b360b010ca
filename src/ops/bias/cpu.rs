//! Reference loops of the bias add and the column sum.

pub fn add_bias(y: &mut [f32], bias: &[f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            y[r * cols + c] += bias[c];
        }
    }
}

pub fn sum_rows(x: &[f32], out: &mut [f32], rows: usize, cols: usize, accumulate: bool) {
    for c in 0..cols {
        let mut acc = 0.0f64;
        for r in 0..rows {
            acc += x[r * cols + c] as f64;
        }
        out[c] = if accumulate {
            (out[c] as f64 + acc) as f32
        } else {
            acc as f32
        };
    }
}
