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
