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
/// `denom = √v / √(1-β₂ᵗ) + eps`, `param -= lr / (1-β₁ᵗ) · m / denom`; with AMSGrad
/// (`max_exp_avg_sq`), `v` in the denominator is the running maximum of `v`.
pub fn adam(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    mut max_exp_avg_sq: Option<&mut [f32]>,
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
        // torch takes the maximum of the stored (rounded) tensors.
        let v = match max_exp_avg_sq.as_deref_mut() {
            Some(vmax) => {
                vmax[i] = vmax[i].max(v as f32);
                vmax[i] as f64
            }
            None => v,
        };
        let denom = v.sqrt() / bc2_sqrt + eps;
        param[i] = (p - lr / bc1 * m / denom) as f32;
    }
}

/// RMSprop's constants, as in `torch.optim.RMSprop`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmspropParams {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
}

/// One RMSprop step, see [`super::Rmsprop`]; `momentum_buffer` is present when
/// `momentum > 0`, `grad_avg` when centered.
pub fn rmsprop(
    param: &mut [f32],
    grad: &[f32],
    square_avg: &mut [f32],
    mut momentum_buffer: Option<&mut [f32]>,
    mut grad_avg: Option<&mut [f32]>,
    c: RmspropParams,
) {
    let (lr, alpha, eps, wd, mu) = (
        c.lr as f64,
        c.alpha as f64,
        c.eps as f64,
        c.weight_decay as f64,
        c.momentum as f64,
    );
    for i in 0..param.len() {
        let p = param[i] as f64;
        let g = grad[i] as f64 + wd * p;
        let sq = alpha * square_avg[i] as f64 + (1.0 - alpha) * g * g;
        square_avg[i] = sq as f32;
        let var = match grad_avg.as_deref_mut() {
            Some(ga) => {
                let a = ga[i] as f64 + (1.0 - alpha) * (g - ga[i] as f64);
                ga[i] = a as f32;
                sq - a * a
            }
            None => sq,
        };
        let denom = var.sqrt() + eps;
        param[i] = match momentum_buffer.as_deref_mut() {
            Some(buf) => {
                let b = mu * buf[i] as f64 + g / denom;
                buf[i] = b as f32;
                p - lr * b
            }
            None => p - lr * g / denom,
        } as f32;
    }
}

/// One Adagrad step at training step `step` (1 on the first), see [`super::Adagrad`].
#[allow(clippy::too_many_arguments)]
pub fn adagrad(
    param: &mut [f32],
    grad: &[f32],
    sum: &mut [f32],
    step: u32,
    lr: f32,
    lr_decay: f32,
    eps: f32,
    weight_decay: f32,
) {
    let (eps, wd) = (eps as f64, weight_decay as f64);
    let clr = lr as f64 / (1.0 + (step as f64 - 1.0) * lr_decay as f64);
    for i in 0..param.len() {
        let p = param[i] as f64;
        let g = grad[i] as f64 + wd * p;
        let s = sum[i] as f64 + g * g;
        sum[i] = s as f32;
        param[i] = (p - clr * g / (s.sqrt() + eps)) as f32;
    }
}

/// One Adamax step at training step `step`, see [`super::Adamax`]; `c` is
/// `[lr, beta1, beta2, eps, weight_decay]`.
pub fn adamax(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_inf: &mut [f32],
    step: u32,
    c: [f32; 5],
) {
    let [lr, b1, b2, eps, wd] = c.map(|v| v as f64);
    let clr = lr / (1.0 - b1.powf(step as f64));
    for i in 0..param.len() {
        let p = param[i] as f64;
        let g = grad[i] as f64 + wd * p;
        let m = b1 * exp_avg[i] as f64 + (1.0 - b1) * g;
        let u = (b2 * exp_inf[i] as f64).max(g.abs() + eps);
        exp_avg[i] = m as f32;
        exp_inf[i] = u as f32;
        param[i] = (p - clr * m / u) as f32;
    }
}

/// NAdam's constants, as in `torch.optim.NAdam`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NadamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum_decay: f32,
}

/// One NAdam step at training step `step`, `mu_product` already including `μ_step`, see
/// [`super::Nadam`].
pub fn nadam(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    mu_product: f32,
    step: u32,
    c: NadamParams,
) {
    let (lr, b1, b2, eps, wd, psi) = (
        c.lr as f64,
        c.beta1 as f64,
        c.beta2 as f64,
        c.eps as f64,
        c.weight_decay as f64,
        c.momentum_decay as f64,
    );
    let t = step as f64;
    let bc2 = 1.0 - b2.powf(t);
    let mu = super::nadam_mu(b1, psi, t);
    let mu_next = super::nadam_mu(b1, psi, t + 1.0);
    let prod = mu_product as f64;
    let coef_g = lr * (1.0 - mu) / (1.0 - prod);
    let coef_m = lr * mu_next / (1.0 - prod * mu_next);
    for i in 0..param.len() {
        let p = param[i] as f64;
        let g = grad[i] as f64 + wd * p;
        let m = b1 * exp_avg[i] as f64 + (1.0 - b1) * g;
        let v = b2 * exp_avg_sq[i] as f64 + (1.0 - b2) * g * g;
        exp_avg[i] = m as f32;
        exp_avg_sq[i] = v as f32;
        let denom = (v / bc2).sqrt() + eps;
        param[i] = (p - coef_g * g / denom - coef_m * m / denom) as f32;
    }
}
