//! Reference loops of the losses and the metric accumulator, in `f64`.

use super::Loss;

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
