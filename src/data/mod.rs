//! In-memory datasets, loaders for data files, standardization and splitting, and the
//! built-in synthetic data.

mod array;
mod csv;
mod idx;
mod load;
mod npy;
mod prep;
mod safetensors;
pub mod synthetic;

pub use load::{load, load_with_columns, Column, Format, Header, LoadOptions, Task};
pub use prep::{split, split_owned, Standardizer};

use anyhow::{ensure, Result};

/// Rows of `f32` features with either class labels or regression targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `rows × input_dim`, row-major.
    pub features: Vec<f32>,
    /// One class index per row (classification) or `rows × target_dim` values (regression).
    pub targets: Vec<f32>,
    pub rows: usize,
    pub input_dim: usize,
    /// Values per row in `targets`: 1 for classification.
    pub target_dim: usize,
    /// Number of classes for classification, `None` for regression.
    pub classes: Option<usize>,
}

impl Dataset {
    /// Classification data: `features` is `labels.len() × input_dim`.
    pub fn classification(
        features: Vec<f32>,
        labels: &[usize],
        input_dim: usize,
        classes: usize,
    ) -> Result<Self> {
        let d = Dataset {
            rows: labels.len(),
            features,
            targets: labels.iter().map(|&l| l as f32).collect(),
            input_dim,
            target_dim: 1,
            classes: Some(classes),
        };
        d.validate()?;
        Ok(d)
    }

    /// Regression data: `targets` is `rows × target_dim`.
    pub fn regression(
        features: Vec<f32>,
        targets: Vec<f32>,
        input_dim: usize,
        target_dim: usize,
    ) -> Result<Self> {
        ensure!(
            input_dim > 0 && target_dim > 0,
            "input and target widths must be at least 1"
        );
        let rows = features.len() / input_dim;
        let d = Dataset {
            rows,
            features,
            targets,
            input_dim,
            target_dim,
            classes: None,
        };
        d.validate()?;
        Ok(d)
    }

    /// Checks sizes, finiteness and label range, naming the first offending row.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.rows > 0, "dataset is empty: it has no rows");
        ensure!(self.input_dim > 0, "dataset rows have zero features");
        ensure!(
            self.features.len() == self.rows * self.input_dim,
            "features hold {} values, expected rows × input_dim = {} × {} = {}",
            self.features.len(),
            self.rows,
            self.input_dim,
            self.rows * self.input_dim
        );
        ensure!(
            self.targets.len() == self.rows * self.target_dim,
            "targets hold {} values, expected {} rows × {} = {}",
            self.targets.len(),
            self.rows,
            self.target_dim,
            self.rows * self.target_dim
        );
        check_finite("feature", &self.features, self.input_dim)?;
        check_finite("target", &self.targets, self.target_dim)?;
        if let Some(classes) = self.classes {
            ensure!(
                classes >= 2,
                "classification needs at least 2 classes, got {classes}"
            );
            check_labels(&self.targets, classes)?;
        }
        Ok(())
    }

    /// Rows `[start, end)` as a new dataset.
    pub fn slice(&self, start: usize, end: usize) -> Dataset {
        Dataset {
            features: self.features[start * self.input_dim..end * self.input_dim].to_vec(),
            targets: self.targets[start * self.target_dim..end * self.target_dim].to_vec(),
            rows: end - start,
            ..self.clone()
        }
    }

    /// Copies the rows named by `index` into `x` and `y` (cleared first).
    pub fn gather(&self, index: &[usize], x: &mut Vec<f32>, y: &mut Vec<f32>) {
        x.clear();
        y.clear();
        for &r in index {
            x.extend_from_slice(&self.features[r * self.input_dim..(r + 1) * self.input_dim]);
            y.extend_from_slice(&self.targets[r * self.target_dim..(r + 1) * self.target_dim]);
        }
    }
}

/// Rejects NaN and ±inf, naming the row and column.
pub fn check_finite(what: &str, values: &[f32], width: usize) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "{what} at row {}, column {} is {} (non-finite values cannot be trained on)",
            i / width.max(1),
            i % width.max(1),
            values[i]
        );
    }
    Ok(())
}

/// Class labels must be whole numbers in `0..classes`.
pub fn check_labels(labels: &[f32], classes: usize) -> Result<()> {
    for (row, &l) in labels.iter().enumerate() {
        ensure!(
            l >= 0.0 && l.fract() == 0.0 && (l as usize) < classes,
            "label at row {row} is {l}; labels must be whole numbers in 0..{classes}"
        );
    }
    Ok(())
}
