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
