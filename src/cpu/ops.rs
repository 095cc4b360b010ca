//! Reference kernels: plain loops, written to be obviously correct rather than fast.
//! Sums accumulate in `f64` so the reference is at least as accurate as any GPU kernel.

use crate::graph::{Activation, Loss};

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
    match act {
        Activation::Identity => x,
        Activation::Sigmoid => (1.0 / (1.0 + (-(x as f64)).exp())) as f32,
        Activation::Tanh => (x as f64).tanh() as f32,
        Activation::Relu => x.max(0.0),
    }
}

/// `f'(x)` given `x` and `y = f(x)`.
pub fn activation_grad(act: Activation, x: f32, y: f32) -> f32 {
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
    }
}

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
