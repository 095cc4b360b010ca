//! Reference loops of batch normalization, in `f64`.

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

/// The local half of synchronized batch norm's forward pass: per feature, the mean of
/// the `rows` local rows in `stats[..cols]` and the centered sum of squares (M2) in
/// `stats[cols..]`, two passes as in [`batch_norm_train`], so the host can merge ranks
/// with Chan's formula without the cancellation of `Σx² − n·mean²`.
pub fn batch_norm_stats(x: &[f32], stats: &mut [f32], rows: usize, cols: usize) {
    let n = rows as f64;
    for c in 0..cols {
        let m = (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() / n;
        let m2: f64 = (0..rows)
            .map(|r| (x[r * cols + c] as f64 - m).powi(2))
            .sum();
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
    let mom = momentum as f64;
    for c in 0..cols {
        let (m, var, unbiased) = (
            global[c] as f64,
            global[cols + c] as f64,
            global[2 * cols + c] as f64,
        );
        let is = 1.0 / (var + eps as f64).sqrt();
        mean[c] = m as f32;
        invstd[c] = is as f32;
        running_mean[c] = ((1.0 - mom) * running_mean[c] as f64 + mom * m) as f32;
        running_var[c] = ((1.0 - mom) * running_var[c] as f64 + mom * unbiased) as f32;
        for r in 0..rows {
            let xhat = (x[r * cols + c] as f64 - m) * is;
            y[r * cols + c] = (gamma[c] as f64 * xhat + beta[c] as f64) as f32;
        }
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
        let (m, is) = (mean[c] as f64, invstd[c] as f64);
        let xhat = |r: usize| (x[r * cols + c] as f64 - m) * is;
        dbeta[c] = (0..rows).map(|r| dy[r * cols + c] as f64).sum::<f64>() as f32;
        dgamma[c] = (0..rows)
            .map(|r| dy[r * cols + c] as f64 * xhat(r))
            .sum::<f64>() as f32;
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
        let (m, is) = (mean[c] as f64, invstd[c] as f64);
        let (a, b) = (global[c] as f64, global[cols + c] as f64);
        for r in 0..rows {
            let i = r * cols + c;
            let xhat = (x[i] as f64 - m) * is;
            dx[i] = (gamma[c] as f64 * is * (dy[i] as f64 - a - xhat * b)) as f32;
        }
    }
}
