//! Reference loops of the optimizer updates, in `f64`.

/// The step counter is a `u32` kept in the bits of an `f32` so it is exact past 2²⁴.
pub fn advance_step(counter: &mut [f32]) {
    counter[0] = f32::from_bits(counter[0].to_bits().wrapping_add(1));
}

/// `torch.optim.SGD`'s update with dampening 0, see [`super::Sgd`].
/// `momentum` is `(buffer, μ, nesterov)`.
pub fn sgd(
    param: &mut [f32],
    grad: &[f32],
    momentum: Option<(&mut [f32], f32, bool)>,
    lr: f32,
    weight_decay: f32,
) {
    let (lr, wd) = (lr as f64, weight_decay as f64);
    match momentum {
        None => {
            for (p, &g) in param.iter_mut().zip(grad) {
                let d = g as f64 + wd * *p as f64;
                *p = (*p as f64 - lr * d) as f32;
            }
        }
        Some((buf, mu, nesterov)) => {
            let mu = mu as f64;
            for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf) {
                let d = g as f64 + wd * *p as f64;
                let nb = mu * *b as f64 + d;
                *b = nb as f32;
                let step = if nesterov { d + mu * nb } else { nb };
                *p = (*p as f64 - lr * step) as f32;
            }
        }
    }
}

/// Adam's constants, as in `torch.optim.Adam` / `AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW's decoupled decay instead of Adam's L2 term.
    pub decoupled: bool,
}

/// One Adam/AdamW step at training step `step` (1 on the first), see
/// [`super::Adam`]. Follows torch's single-tensor implementation:
/// `denom = √v / √(1-β₂ᵗ) + eps`, `param -= lr / (1-β₁ᵗ) · m / denom`.
pub fn adam(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    step: u32,
    h: AdamParams,
) {
    let (lr, b1, b2, eps, wd) = (
        h.lr as f64,
        h.beta1 as f64,
        h.beta2 as f64,
        h.eps as f64,
        h.weight_decay as f64,
    );
    let t = step as f64;
    let bc1 = 1.0 - b1.powf(t);
    let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
    for i in 0..param.len() {
        let mut p = param[i] as f64;
        let mut g = grad[i] as f64;
        if h.decoupled {
            p *= 1.0 - lr * wd;
        } else {
            g += wd * p;
        }
        let m = b1 * exp_avg[i] as f64 + (1.0 - b1) * g;
        let v = b2 * exp_avg_sq[i] as f64 + (1.0 - b2) * g * g;
        exp_avg[i] = m as f32;
        exp_avg_sq[i] = v as f32;
        let denom = v.sqrt() / bc2_sqrt + eps;
        param[i] = (p - lr / bc1 * m / denom) as f32;
    }
}
