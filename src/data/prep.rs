//! Preparing loaded data for training: a seeded, shuffled train/validation split, and
//! per-feature standardization fitted on the training rows only, so nothing about the
//! validation or test rows leaks into the model's inputs.

use super::Dataset;
use anyhow::{ensure, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Splits `data` into training and validation rows: `valid_fraction` of the rows (rounded,
/// at least one, and at least one row left for training) chosen by a shuffle seeded with
/// `seed`. Each part keeps the file's row order and the full class count, so a validation
/// set that happens to lack a class still matches the model.
pub fn split(data: &Dataset, valid_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    let valid = valid_rows(data, valid_fraction, seed)?;
    Ok((subset(data, &valid, false), subset(data, &valid, true)))
}

/// [`split`] that consumes `data` and reuses its buffers for the training rows, moving
/// them forward in place: the rows are never held twice, so splitting a file as large as
/// memory allows needs only the validation rows' worth more. Same rows as [`split`].
pub fn split_owned(
    mut data: Dataset,
    valid_fraction: f64,
    seed: u64,
) -> Result<(Dataset, Dataset)> {
    let valid = valid_rows(&data, valid_fraction, seed)?;
    let valid_set = subset(&data, &valid, true);
    let (d, t) = (data.input_dim, data.target_dim);
    // Each row moves to a place at or before its own: nothing unread is overwritten.
    let mut to = 0;
    for from in (0..data.rows).filter(|&r| !valid[r]) {
        if to != from {
            data.features.copy_within(from * d..(from + 1) * d, to * d);
            data.targets.copy_within(from * t..(from + 1) * t, to * t);
        }
        to += 1;
    }
    data.rows = to;
    data.features.truncate(to * d);
    data.targets.truncate(to * t);
    data.features.shrink_to_fit();
    data.targets.shrink_to_fit();
    Ok((data, valid_set))
}

/// Which rows are validation rows.
fn valid_rows(data: &Dataset, valid_fraction: f64, seed: u64) -> Result<Vec<bool>> {
    ensure!(
        valid_fraction > 0.0 && valid_fraction < 1.0,
        "the validation fraction must be between 0 and 1 (exclusive), got {valid_fraction}"
    );
    ensure!(
        data.rows >= 2,
        "{} row cannot be split into training and validation rows",
        data.rows
    );
    ensure!(
        data.rows <= 1 << 32,
        "{} rows are more than a split can shuffle (2^32)",
        data.rows
    );
    let n_valid = ((data.rows as f64 * valid_fraction).round() as usize).clamp(1, data.rows - 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // u32, not usize: the permutation of a large file is a fifth of its size in usize.
    let mut order: Vec<u32> = (0..data.rows).map(|r| r as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut valid = vec![false; data.rows];
    for &r in &order[..n_valid] {
        valid[r as usize] = true;
    }
    Ok(valid)
}

/// The rows whose `valid` entry is `which`, in file order.
fn subset(data: &Dataset, valid: &[bool], which: bool) -> Dataset {
    let rows = valid.iter().filter(|&&v| v == which).count();
    let (d, t) = (data.input_dim, data.target_dim);
    let (mut features, mut targets) = (Vec::with_capacity(rows * d), Vec::with_capacity(rows * t));
    for r in (0..data.rows).filter(|&r| valid[r] == which) {
        features.extend_from_slice(&data.features[r * d..(r + 1) * d]);
        targets.extend_from_slice(&data.targets[r * t..(r + 1) * t]);
    }
    Dataset {
        features,
        targets,
        rows,
        input_dim: d,
        target_dim: t,
        classes: data.classes,
    }
}

/// Per-feature standardization: `x' = (x − mean) / std`.
///
/// `std` is the population standard deviation (divisor `n`, as scikit-learn's
/// `StandardScaler` and NumPy's `std()`). A feature that is constant in the training rows
/// has `std = 0` and is only centered (divided by 1), because dividing by zero would turn
/// it into NaN and it carries no information for the model either way; MNIST's border
/// pixels are such features.
///
/// `mean` and `std` are public so they can be saved with a checkpoint and restored with
/// [`Standardizer::from_parts`]: a model trained on standardized inputs needs the same
/// transform at prediction time.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Measures every feature of `train` (accumulating in `f64`).
    pub fn fit(train: &Dataset) -> Result<Standardizer> {
        let (rows, dim) = (train.rows, train.input_dim);
        ensure!(
            rows > 0 && dim > 0 && train.features.len() == rows * dim,
            "cannot fit a standardizer: the data holds {} values for {rows} rows × {dim} \
             features",
            train.features.len()
        );
        let mut mean = vec![0f64; dim];
        let (mut min, mut max) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
        for row in train.features.chunks_exact(dim) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                min[j] = min[j].min(v);
                max[j] = max[j].max(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        // Two passes: the one-pass formula cancels catastrophically for large means.
        let mut var = vec![0f64; dim];
        for row in train.features.chunks_exact(dim) {
            for (j, &v) in row.iter().enumerate() {
                let d = v as f64 - mean[j];
                var[j] += d * d;
            }
        }
        let std = (0..dim)
            .map(|j| {
                // Exactly constant columns get exactly 0, whatever the rounding in `var`.
                if min[j] == max[j] {
                    0.0
                } else {
                    (var[j] / rows as f64).sqrt() as f32
                }
            })
            .collect();
        Ok(Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// Restores a standardizer from saved statistics.
    pub fn from_parts(mean: Vec<f32>, std: Vec<f32>) -> Result<Standardizer> {
        ensure!(
            !mean.is_empty() && mean.len() == std.len(),
            "a standardizer needs one mean and one std per feature, got {} means and {} stds",
            mean.len(),
            std.len()
        );
        for (j, (&m, &s)) in mean.iter().zip(&std).enumerate() {
            ensure!(
                m.is_finite() && s.is_finite() && s >= 0.0,
                "feature {j} has mean {m} and std {s}: both must be finite and std >= 0"
            );
        }
        Ok(Standardizer { mean, std })
    }

    /// Number of features it was fitted on.
    pub fn input_dim(&self) -> usize {
        self.mean.len()
    }

    /// Standardizes rows of features in place (e.g. inputs for `Model::predict`).
    pub fn transform(&self, features: &mut [f32]) -> Result<()> {
        let dim = self.input_dim();
        ensure!(
            features.len().is_multiple_of(dim),
            "{} values are not whole rows of the {dim} features the standardizer was fitted on",
            features.len()
        );
        for (r, row) in features.chunks_exact_mut(dim).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let s = if self.std[j] > 0.0 { self.std[j] } else { 1.0 };
                let z = ((*v as f64 - self.mean[j] as f64) / s as f64) as f32;
                // Finite data can still overflow when a feature barely varied in training.
                ensure!(
                    z.is_finite(),
                    "row {r}, column {j}: value {v} standardizes to {z} (training mean {}, std \
                     {}): it is far outside the range the standardizer was fitted on",
                    self.mean[j],
                    self.std[j]
                );
                *v = z;
            }
        }
        Ok(())
    }

    /// Standardizes a dataset's features in place; its targets are left as they are.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        ensure!(
            data.input_dim == self.input_dim(),
            "the data has {} features per row, the standardizer was fitted on {}",
            data.input_dim,
            self.input_dim()
        );
        self.transform(&mut data.features)
    }
}
