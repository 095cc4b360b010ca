//! Monte Carlo dropout at prediction (Gal & Ghahramani 2016): several forward passes with
//! dropout active and batch norm in evaluation mode, summarised per output by their mean
//! and standard deviation.

use super::Model;
use crate::data::check_finite;
use crate::graph::Stage;
use crate::model::lower::{self as mlp, MC_SAMPLE_NAME};
use crate::ops::Loss;
use anyhow::{ensure, Context, Result};

/// Rows per forward pass of [`Model::predict_mc`]; the masks of a row depend on its place
/// in its batch (see [`mc_step`]), so this is fixed rather than chosen per call.
pub const MC_BATCH: usize = 256;

/// The mask counter of sample `sample` (from 0) of batch `batch` when each batch draws
/// `samples` samples: distinct for every (batch, sample), and never 0.
pub fn mc_step(batch: usize, samples: usize, sample: usize) -> u32 {
    (batch as u64 * samples as u64 + sample as u64 + 1) as u32
}

/// What [`Model::predict_mc`] returns: `rows × outputs` values each, row-major. For
/// classification the samples are softmax probabilities, so `mean` is the mean predicted
/// probability of each class; for regression they are the outputs themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct McPrediction {
    pub rows: usize,
    pub outputs: usize,
    pub samples: usize,
    pub mean: Vec<f32>,
    /// The population standard deviation over the samples (divides by N, NumPy's
    /// `np.std` default), so one sample gives 0.
    pub std: Vec<f32>,
}

impl McPrediction {
    /// The class with the highest mean probability of each row (the first of ties).
    pub fn argmax(&self) -> Vec<usize> {
        self.mean
            .chunks(self.outputs)
            .map(|row| (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b }))
            .collect()
    }
}

/// `softmax(v)` in place, in `f64` with the maximum subtracted so large logits stay finite.
fn softmax(v: &mut [f64]) {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

impl Model {
    /// Monte Carlo dropout: `samples` forward passes over `x` with every dropout layer
    /// active (batch norm and RReLU in evaluation mode), seeded by `seed` so a call is
    /// reproducible. Rows go through in batches of [`MC_BATCH`]. An error for 0 samples
    /// and for a model without dropout, whose samples would all be the same prediction.
    pub fn predict_mc(&mut self, x: &[f32], samples: usize, seed: u64) -> Result<McPrediction> {
        ensure!(
            samples >= 1,
            "Monte Carlo dropout needs at least 1 sample, got 0"
        );
        ensure!(
            (0..self.spec.hidden.len()).any(|l| self.spec.dropout_p(l).is_some()),
            "the model has no dropout, so every Monte Carlo sample would be the same \
             prediction (std 0); Monte Carlo dropout needs a model trained with dropout"
        );
        let rows = self.rows_of(x)?;
        check_finite("input", x, self.spec.input)?;
        let (width, classify) = (
            self.spec.output,
            self.spec.loss == Loss::SoftmaxCrossEntropy,
        );
        let mut sum = vec![0.0f64; rows * width];
        let mut sum_sq = vec![0.0f64; rows * width];
        for (b, chunk) in x.chunks(MC_BATCH * self.spec.input).enumerate() {
            let n = chunk.len() / self.spec.input;
            let key = (n, seed);
            if !self.mc_plans.contains_key(&key) {
                let plan = mlp::build_mc(&self.spec, &self.persistent, n, seed)?;
                let id = self.engine.compile(&plan)?;
                self.mc_plans.insert(key, (id, plan));
            }
            let (id, plan) = &self.mc_plans[&key];
            let id = *id;
            let (input, output) = (plan.input.context("input")?, plan.output.context("output")?);
            let sample = plan.find(MC_SAMPLE_NAME).context("mc sample counter")?;
            self.engine.write(id, input, chunk)?;
            let first = b * MC_BATCH * width;
            for s in 0..samples {
                let step = f32::from_bits(mc_step(b, samples, s));
                self.engine.write(id, sample, &[step])?;
                self.engine.run(id, Stage::Predict)?;
                let out = self.engine.read(id, output)?;
                for (r, row) in out.chunks(width).enumerate() {
                    let mut v: Vec<f64> = row.iter().map(|&o| o as f64).collect();
                    if classify {
                        softmax(&mut v);
                    }
                    let at = first + r * width;
                    for (j, value) in v.into_iter().enumerate() {
                        sum[at + j] += value;
                        sum_sq[at + j] += value * value;
                    }
                }
            }
        }
        let n = samples as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0)).sqrt() as f32)
            .collect();
        Ok(McPrediction {
            rows,
            outputs: width,
            samples,
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        })
    }
}
