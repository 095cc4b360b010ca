//! Reference computations of the gradient-health statistics and the non-finite guard
//! (`shaders/health/`), in `f64`.

/// Mean, population standard deviation, dead-unit fraction, saturated-element fraction
/// and non-finite count of a `[rows, cols]` layer output, written to `out[..5]` (see
/// [`super::ActivationStats`]). Non-finite elements are left out of the mean and deviation.
#[allow(clippy::too_many_arguments)]
pub fn activation_stats(
    x: &[f32],
    act_in: &[f32],
    act_out: &[f32],
    rows: usize,
    cols: usize,
    dead: bool,
    saturation: Option<(f32, f32)>,
    out: &mut [f32],
) {
    let n = rows * cols;
    let finite: Vec<f64> = x[..n]
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let count = finite.len() as f64;
    let (mean, std) = if finite.is_empty() {
        (0.0, 0.0)
    } else {
        let mean = finite.iter().sum::<f64>() / count;
        let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
        (mean, var.sqrt())
    };
    let dead_fraction = if dead {
        // A unit is alive when some row is > 0; NaN counts as not alive, as in the kernel.
        let dead_units = (0..cols)
            .filter(|&c| !(0..rows).any(|r| act_in[r * cols + c] > 0.0))
            .count();
        dead_units as f64 / cols as f64
    } else {
        0.0
    };
    let saturated = match saturation {
        Some((lo, hi)) => {
            act_out[..n].iter().filter(|&&y| y <= lo || y >= hi).count() as f64 / n as f64
        }
        None => 0.0,
    };
    out[0] = mean as f32;
    out[1] = std as f32;
    out[2] = dead_fraction as f32;
    out[3] = saturated as f32;
    out[4] = (n - finite.len()) as f32;
}

/// `out[0] = ‖x − minus‖₂` over the finite differences, `out[1]` = how many were not
/// finite (see `Op::Norm`).
pub fn norm(x: &[f32], minus: Option<&[f32]>, out: &mut [f32]) {
    let mut sum = 0.0f64;
    let mut bad = 0usize;
    for (i, &v) in x.iter().enumerate() {
        // The difference is taken in f32, as the kernel does, so an overflow to inf
        // counts as non-finite on both backends.
        let d = match minus {
            Some(m) => v - m[i],
            None => v,
        };
        if d.is_finite() {
            sum += (d as f64) * (d as f64);
        } else {
            bad += 1;
        }
    }
    out[0] = sum.sqrt() as f32;
    out[1] = bad as f32;
}

/// The guard on one tensor (see [`super::GuardFinite`]): marks `flags[slot]` with the step
/// when `x` holds a NaN or ±inf, and raises `flags[peaks + slot]` to its largest finite
/// magnitude.
pub fn guard_finite(x: &[f32], step: f32, flags: &mut [f32], slot: usize, peaks: usize) {
    if x.iter().any(|v| !v.is_finite()) {
        let mark = u32::MAX - step.to_bits();
        flags[slot] = f32::from_bits(flags[slot].to_bits().max(mark));
    }
    let peak = x
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    flags[peaks + slot] = flags[peaks + slot].max(peak);
}
