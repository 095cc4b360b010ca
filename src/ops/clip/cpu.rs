//! Reference loops of gradient clipping, in `f64`.

/// Merges two scaled sums of squares `(s, q)`, each standing for `s²·q` with `s` the
/// largest magnitude seen. The CPU twin of `merge` in `shaders/clip.wgsl`, in `f64`, so
/// both backends agree on non-finite input too: NaN poisons the result, and equal
/// infinities add their counts instead of dividing inf by inf.
pub fn merge_scaled_squares(p: (f64, f64), q: (f64, f64)) -> (f64, f64) {
    if p.0.is_nan() || q.0.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    if q.0 > p.0 {
        let r = p.0 / q.0;
        return (q.0, q.1 + p.1 * r * r);
    }
    if q.0 == 0.0 {
        return p;
    }
    let r = if q.0 == p.0 { 1.0 } else { q.0 / p.0 };
    (p.0, p.1 + q.1 * r * r)
}

/// The partials of [`super::NormPartials`]: `out` holds `groups` pairs.
pub fn norm_partials(x: &[f32], out: &mut [f32], groups: usize, block: usize) {
    for j in 0..groups {
        let mut acc = (0.0, 0.0);
        for (b, chunk) in x.chunks(block).enumerate() {
            if b % groups == j {
                for &v in chunk {
                    acc = merge_scaled_squares(acc, ((v as f64).abs(), 1.0));
                }
            }
        }
        out[2 * j] = acc.0 as f32;
        out[2 * j + 1] = acc.1 as f32;
    }
}

/// Total norm and clip coefficient from the partial pairs, as
/// `torch.nn.utils.clip_grad_norm_`: the coefficient is computed in `f32` from the `f32`
/// total, exactly as torch does, and clamped so that NaN stays NaN.
pub fn clip_coef(partials: &[f32], max_norm: f32) -> (f32, f32) {
    let acc = partials.chunks(2).fold((0.0, 0.0), |acc, p| {
        merge_scaled_squares(acc, (p[0] as f64, p[1] as f64))
    });
    let total = (acc.0 * acc.1.sqrt()) as f32;
    let coef = max_norm / (total + 1e-6);
    (total, if coef > 1.0 { 1.0 } else { coef })
}

pub fn scale_by(x: &mut [f32], coef: f32) {
    for v in x {
        *v *= coef;
    }
}

pub fn clamp_value(x: &mut [f32], limit: f32) {
    for v in x {
        *v = v.clamp(-limit, limit);
    }
}
