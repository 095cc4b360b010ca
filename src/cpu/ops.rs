//! Reference kernels: plain loops, written to be obviously correct rather than fast.
//! Sums accumulate in `f64` so the reference is at least as accurate as any GPU kernel.

use crate::graph::{Activation, Loss, SELU_ALPHA, SELU_SCALE};

#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            let prev = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (prev + acc) as f32;
        }
    }
}

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

pub fn activation(act: Activation, x: f32) -> f32 {
    let xd = x as f64;
    match act {
        Activation::Identity => x,
        Activation::Sigmoid => (1.0 / (1.0 + (-xd).exp())) as f32,
        Activation::Tanh => xd.tanh() as f32,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu { slope } => leaky(x, slope),
        // RReLU in evaluation and PReLU at a fixed slope; see `Activation::negative_slope`.
        Activation::Rrelu { .. } | Activation::Prelu { .. } => {
            leaky(x, act.negative_slope().unwrap_or_default())
        }
        Activation::Elu { alpha } => elu(xd, alpha as f64) as f32,
        Activation::Selu => (SELU_SCALE * elu(xd, SELU_ALPHA)) as f32,
        Activation::Gelu => (xd * normal_cdf(xd)) as f32,
        Activation::GeluTanh => (xd * gelu_tanh_gate(xd).0) as f32,
    }
}

/// `f'(x)` given `x` and `y = f(x)`.
pub fn activation_grad(act: Activation, x: f32, y: f32) -> f32 {
    let xd = x as f64;
    match act {
        Activation::Identity => 1.0,
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        // PyTorch's convention: the derivative at exactly 0 is 0.
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { slope } => leaky_grad(x, slope),
        Activation::Rrelu { .. } | Activation::Prelu { .. } => {
            leaky_grad(x, act.negative_slope().unwrap_or_default())
        }
        // From x rather than y + alpha, which loses digits where eˣ is tiny; at 0 it is
        // alpha, as PyTorch's elu_backward gives.
        Activation::Elu { alpha } => elu_grad(xd, alpha as f64) as f32,
        Activation::Selu => (SELU_SCALE * elu_grad(xd, SELU_ALPHA)) as f32,
        // d/dx x·Φ(x) = Φ(x) + x·φ(x).
        Activation::Gelu => {
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (normal_cdf(xd) + xd * pdf) as f32
        }
        Activation::GeluTanh => {
            let (s, du) = gelu_tanh_gate(xd);
            // x·σ(2u) differentiates to σ + x·σ(1−σ)·2u'.
            (s + xd * s * (1.0 - s) * 2.0 * du) as f32
        }
    }
}

/// The ReLU family: `x` for `x > 0`, else `slope·x`, as PyTorch's `leaky_relu`.
pub fn leaky(x: f32, slope: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        slope * x
    }
}

/// Its derivative; at 0 it is `slope`, as in PyTorch (0 for ReLU).
pub fn leaky_grad(x: f32, slope: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else {
        slope
    }
}

fn elu(x: f64, alpha: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        alpha * x.exp_m1()
    }
}

fn elu_grad(x: f64, alpha: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else {
        alpha * x.exp()
    }
}

/// Φ(x) = ½·erfc(−x/√2): erfc keeps full relative accuracy in the lower tail, where
/// ½·(1 + erf) cancels.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// The error function, the reference the WGSL `erf` is tested against.
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

/// For GELU's tanh form: `(σ(2u), u')` with `u = √(2/π)·(x + 0.044715·x³)`, using
/// `½(1 + tanh u) = σ(2u)`, which does not cancel for negative `u`.
fn gelu_tanh_gate(x: f64) -> (f64, f64) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let u = k * (x + GELU_TANH_C * x * x * x);
    let s = 1.0 / (1.0 + (-2.0 * u).exp());
    (s, k * (1.0 + 3.0 * GELU_TANH_C * x * x))
}

const GELU_TANH_C: f64 = 0.044715;

pub fn activate(act: Activation, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = activation(act, xi);
    }
}

pub fn activate_backward(act: Activation, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for i in 0..dx.len() {
        dx[i] = dy[i] * activation_grad(act, x[i], y[i]);
    }
}

/// Per-row loss and whether the row was classified correctly. For cross-entropy the
/// gradient of the mean loss is `(softmax - onehot) / rows`; for MSE it is
/// `2 (pred - target) / (rows·cols)`. Pass `dpred = None` to skip the gradient.
#[allow(clippy::too_many_arguments)]
pub fn loss(
    loss: Loss,
    pred: &[f32],
    target: &[f32],
    mut dpred: Option<&mut [f32]>,
    row_loss: &mut [f32],
    row_correct: &mut [f32],
    rows: usize,
    cols: usize,
) {
    for r in 0..rows {
        let z = &pred[r * cols..(r + 1) * cols];
        match loss {
            Loss::SoftmaxCrossEntropy => {
                let label = target[r] as usize;
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
                row_loss[r] = (sum.ln() + max - z[label] as f64) as f32;
                // First maximum wins, as torch.argmax does.
                let argmax = (0..cols).fold(0, |best, c| if z[c] > z[best] { c } else { best });
                row_correct[r] = if argmax == label { 1.0 } else { 0.0 };
                if let Some(d) = dpred.as_deref_mut() {
                    for c in 0..cols {
                        let p = (z[c] as f64 - max).exp() / sum;
                        let onehot = if c == label { 1.0 } else { 0.0 };
                        d[r * cols + c] = ((p - onehot) / rows as f64) as f32;
                    }
                }
            }
            Loss::MeanSquaredError => {
                let t = &target[r * cols..(r + 1) * cols];
                let sq: f64 = z
                    .iter()
                    .zip(t)
                    .map(|(&p, &t)| (p as f64 - t as f64).powi(2))
                    .sum();
                // Row loss is the row's share of the overall mean, so Σ rows / rows = MSE.
                row_loss[r] = (sq / cols as f64) as f32;
                row_correct[r] = 0.0;
                if let Some(d) = dpred.as_deref_mut() {
                    for c in 0..cols {
                        d[r * cols + c] =
                            (2.0 * (z[c] as f64 - t[c] as f64) / (rows * cols) as f64) as f32;
                    }
                }
            }
        }
    }
}

pub fn accumulate_metrics(row_loss: &[f32], row_correct: &[f32], metrics: &mut [f32]) {
    let l: f64 = row_loss.iter().map(|&v| v as f64).sum();
    let c: f64 = row_correct.iter().map(|&v| v as f64).sum();
    metrics[0] = (metrics[0] as f64 + l) as f32;
    metrics[1] = (metrics[1] as f64 + c) as f32;
    metrics[2] += row_loss.len() as f32;
}

pub fn sgd_step(param: &mut [f32], grad: &[f32], lr: f32) {
    for (p, &g) in param.iter_mut().zip(grad) {
        *p -= lr * g;
    }
}

/// The step counter is a `u32` kept in the bits of an `f32` so it is exact past 2²⁴.
pub fn advance_step(counter: &mut [f32]) {
    counter[0] = f32::from_bits(counter[0].to_bits().wrapping_add(1));
}

/// PCG-RXS-M-XS hash, bit-identical to `pcg_hash` in `shaders/rng.wgsl`.
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Uniform in [0, 1) from `(stream, step, index)`, bit-identical to `rng_uniform` in
/// `shaders/rng.wgsl`, so both backends draw the same dropout masks and RReLU slopes.
pub fn rng_uniform(stream: u32, step: u32, index: u32) -> f32 {
    let h = pcg_hash(index ^ pcg_hash(step ^ pcg_hash(stream)));
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// RReLU's training slope for element `i`, the same draw as `rrelu_slope` in
/// `shaders/activation.wgsl`.
pub fn rrelu_slope(lower: f32, upper: f32, stream: u32, step: u32, i: usize) -> f32 {
    lower + (upper - lower) * rng_uniform(stream, step, i as u32)
}

pub fn rrelu_train(x: &[f32], y: &mut [f32], step: u32, stream: u32, lower: f32, upper: f32) {
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = leaky(xi, rrelu_slope(lower, upper, stream, step, i));
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rrelu_train_backward(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    step: u32,
    stream: u32,
    lower: f32,
    upper: f32,
) {
    for i in 0..dx.len() {
        dx[i] = dy[i] * leaky_grad(x[i], rrelu_slope(lower, upper, stream, step, i));
    }
}

/// `y[i] = leaky(x[i], weight[i % units])`.
pub fn prelu(x: &[f32], weight: &[f32], y: &mut [f32]) {
    let units = weight.len();
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = leaky(xi, weight[i % units]);
    }
}

/// `dx = dy·leaky'(x)` and the slope gradient's terms `dy·min(x, 0)` (PyTorch's
/// `input > 0 ? 0 : input·grad`).
pub fn prelu_backward(x: &[f32], weight: &[f32], dy: &[f32], dx: &mut [f32], terms: &mut [f32]) {
    let units = weight.len();
    for i in 0..dx.len() {
        dx[i] = dy[i] * leaky_grad(x[i], weight[i % units]);
        terms[i] = if x[i] > 0.0 { 0.0 } else { x[i] * dy[i] };
    }
}

/// Training-mode batch norm over `rows` for each of `cols` features (see
/// `Op::BatchNormTrain`). Requires `rows >= 2` for the unbiased running variance.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &mut [f32],
    invstd: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    rows: usize,
    cols: usize,
    momentum: f32,
    eps: f32,
) {
    let n = rows as f64;
    for c in 0..cols {
        let m = (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() / n;
        let var = (0..rows)
            .map(|r| (x[r * cols + c] as f64 - m).powi(2))
            .sum::<f64>()
            / n;
        let is = 1.0 / (var + eps as f64).sqrt();
        mean[c] = m as f32;
        invstd[c] = is as f32;
        let mom = momentum as f64;
        running_mean[c] = ((1.0 - mom) * running_mean[c] as f64 + mom * m) as f32;
        running_var[c] = ((1.0 - mom) * running_var[c] as f64 + mom * var * n / (n - 1.0)) as f32;
        for r in 0..rows {
            let xhat = (x[r * cols + c] as f64 - m) * is;
            y[r * cols + c] = (gamma[c] as f64 * xhat + beta[c] as f64) as f32;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
) {
    for r in 0..rows {
        for c in 0..cols {
            let is = 1.0 / (running_var[c] as f64 + eps as f64).sqrt();
            let xhat = (x[r * cols + c] as f64 - running_mean[c] as f64) * is;
            y[r * cols + c] = (gamma[c] as f64 * xhat + beta[c] as f64) as f32;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    rows: usize,
    cols: usize,
) {
    let n = rows as f64;
    for c in 0..cols {
        let (m, is) = (mean[c] as f64, invstd[c] as f64);
        let xhat = |r: usize| (x[r * cols + c] as f64 - m) * is;
        let sum_dy: f64 = (0..rows).map(|r| dy[r * cols + c] as f64).sum();
        let sum_dy_xhat: f64 = (0..rows).map(|r| dy[r * cols + c] as f64 * xhat(r)).sum();
        dbeta[c] = sum_dy as f32;
        dgamma[c] = sum_dy_xhat as f32;
        for r in 0..rows {
            let g = gamma[c] as f64 * is / n
                * (n * dy[r * cols + c] as f64 - sum_dy - xhat(r) * sum_dy_xhat);
            dx[r * cols + c] = g as f32;
        }
    }
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

pub fn accumulate(x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

/// `torch.optim.SGD`'s update with dampening 0, see [`crate::graph::Op::Sgd`].
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
/// [`crate::graph::Op::Adam`]. Follows torch's single-tensor implementation:
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

/// The partials of [`crate::graph::Op::NormPartials`]: `out` holds `groups` pairs.
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

/// Inverted dropout with the counter-based mask, see [`crate::graph::Op::Dropout`].
pub fn dropout(x: &[f32], y: &mut [f32], p: f32, stream: u32, step: u32) {
    let scale = crate::graph::dropout_scale(p);
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = if rng_uniform(stream, step, i as u32) >= p {
            xi * scale
        } else {
            0.0
        };
    }
}
