//! Reference loops of batch normalization, in `f64`.

/// Mean and centered sum of squares (M2) of feature `c` over the rows, two passes, which
/// avoid the cancellation of `Σx² − n·mean²` (and let ranks merge with Chan's formula).
fn moments(x: &[f32], rows: usize, cols: usize, c: usize) -> (f64, f64) {
    let m = (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() / rows as f64;
    let m2 = (0..rows)
        .map(|r| (x[r * cols + c] as f64 - m).powi(2))
        .sum();
    (m, m2)
}

/// Normalizes feature `c` with mean `m` and biased variance `var`, saves `mean` and
/// `invstd`, and moves the running statistics towards `m` and `unbiased`.
#[allow(clippy::too_many_arguments)]
fn normalize_column(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    saved: (&mut [f32], &mut [f32]),
    running: (&mut [f32], &mut [f32]),
    (rows, cols, c): (usize, usize, usize),
    (m, var, unbiased): (f64, f64, f64),
    momentum: f32,
    eps: f32,
) {
    let is = 1.0 / (var + eps as f64).sqrt();
    saved.0[c] = m as f32;
    saved.1[c] = is as f32;
    let mom = momentum as f64;
    running.0[c] = ((1.0 - mom) * running.0[c] as f64 + mom * m) as f32;
    running.1[c] = ((1.0 - mom) * running.1[c] as f64 + mom * unbiased) as f32;
    for r in 0..rows {
        let xhat = (x[r * cols + c] as f64 - m) * is;
        y[r * cols + c] = (gamma[c] as f64 * xhat + beta[c] as f64) as f32;
    }
}

/// `(Σdy, Σdy·x̂)` of feature `c` over the rows: `dβ` and `dγ`.
fn grad_sums(
    x: &[f32],
    dy: &[f32],
    m: f64,
    is: f64,
    rows: usize,
    cols: usize,
    c: usize,
) -> (f64, f64) {
    (0..rows)
        .map(|r| r * cols + c)
        .map(|i| (dy[i] as f64, dy[i] as f64 * (x[i] as f64 - m) * is))
        .fold((0.0, 0.0), |(a, b), (u, v)| (a + u, b + v))
}

/// `dx = γ·invstd·(dy − a − x̂·b)` for feature `c`, with `a = Σdy/N`, `b = Σdy·x̂/N` over
/// the (local or global) batch.
#[allow(clippy::too_many_arguments)]
fn grad_x_column(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    dx: &mut [f32],
    (m, is): (f64, f64),
    (a, b): (f64, f64),
    (rows, cols, c): (usize, usize, usize),
) {
    for r in 0..rows {
        let i = r * cols + c;
        let xhat = (x[i] as f64 - m) * is;
        dx[i] = (gamma[c] as f64 * is * (dy[i] as f64 - a - xhat * b)) as f32;
    }
}

/// Training-mode batch norm over `rows` for each of `cols` features (see
/// [`super::BatchNormTrain`]). Requires `rows >= 2` for the unbiased running variance.
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
        let (m, m2) = moments(x, rows, cols, c);
        let stats = (m, m2 / n, m2 / (n - 1.0));
        let saved = (&mut *mean, &mut *invstd);
        let running = (&mut *running_mean, &mut *running_var);
        let at = (rows, cols, c);
        normalize_column(x, y, gamma, beta, saved, running, at, stats, momentum, eps);
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
        let (sum_dy, sum_dy_xhat) = grad_sums(x, dy, m, is, rows, cols, c);
        dbeta[c] = sum_dy as f32;
        dgamma[c] = sum_dy_xhat as f32;
        let ab = (sum_dy / n, sum_dy_xhat / n);
        grad_x_column(x, dy, gamma, dx, (m, is), ab, (rows, cols, c));
    }
}

/// The local half of synchronized batch norm's forward pass: per feature, the mean of
/// the `rows` local rows in `stats[..cols]` and their M2 in `stats[cols..]`, for the host
/// to merge across ranks.
pub fn batch_norm_stats(x: &[f32], stats: &mut [f32], rows: usize, cols: usize) {
    for c in 0..cols {
        let (m, m2) = moments(x, rows, cols, c);
        stats[c] = m as f32;
        stats[cols + c] = m2 as f32;
    }
}

/// The second half of synchronized batch norm's forward pass: normalizes with the global
/// statistics in `global` (`[mean; biased var; unbiased var]` per feature, written by the
/// host), saves `mean` and `invstd`, and updates the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_apply(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    global: &[f32],
    mean: &mut [f32],
    invstd: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    rows: usize,
    cols: usize,
    momentum: f32,
    eps: f32,
) {
    for c in 0..cols {
        let g = |k: usize| global[k * cols + c] as f64;
        let saved = (&mut *mean, &mut *invstd);
        let running = (&mut *running_mean, &mut *running_var);
        let at = (rows, cols, c);
        normalize_column(
            x,
            y,
            gamma,
            beta,
            saved,
            running,
            at,
            (g(0), g(1), g(2)),
            momentum,
            eps,
        );
    }
}

/// The local half of synchronized batch norm's backward pass: `dβ = Σdy` and
/// `dγ = Σdy·x̂` over the local rows, which are also what the ranks exchange.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_grad_sums(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    rows: usize,
    cols: usize,
) {
    for c in 0..cols {
        let (sum_dy, sum_dy_xhat) =
            grad_sums(x, dy, mean[c] as f64, invstd[c] as f64, rows, cols, c);
        dbeta[c] = sum_dy as f32;
        dgamma[c] = sum_dy_xhat as f32;
    }
}

/// The second half of synchronized batch norm's backward pass:
/// `dx = γ·invstd·(dy − a − x̂·b)`, with `global = [a; b]` per feature from the host
/// (`Σdy/N` and `Σdy·x̂/N` over the global batch, in this rank's loss scale).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_grad_apply(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    global: &[f32],
    dx: &mut [f32],
    rows: usize,
    cols: usize,
) {
    for c in 0..cols {
        let saved = (mean[c] as f64, invstd[c] as f64);
        let ab = (global[c] as f64, global[cols + c] as f64);
        grad_x_column(x, dy, gamma, dx, saved, ab, (rows, cols, c));
    }
}
