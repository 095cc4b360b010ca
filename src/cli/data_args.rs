//! Loading the data the `DataArgs` flags name: the training and validation splits and
//! single files for `eval` and `predict`.

use super::args::DataArgs;
use anyhow::{Context, Result};
use steadygrad::{data, Dataset};

impl DataArgs {
    pub fn load_options(&self, classes: Option<usize>) -> Result<data::LoadOptions> {
        anyhow::ensure!(
            self.task != "regression" || self.classes.is_none(),
            "--classes applies to classification; regression (--task regression) has targets, \
             not classes"
        );
        Ok(data::LoadOptions {
            labels: self.labels.clone(),
            task: if self.task == "regression" {
                data::Task::Regression
            } else {
                data::Task::Classification {
                    classes: classes.or(self.classes),
                }
            },
            label_columns: self
                .label_columns
                .iter()
                .map(|c| c.parse().expect("infallible"))
                .collect(),
            header: match self.header.as_str() {
                "yes" => data::Header::Present,
                "no" => data::Header::Absent,
                _ => data::Header::Auto,
            },
            ..data::LoadOptions::default()
        })
    }

    /// Training and validation sets, standardized by statistics of the training set
    /// (returned so checkpoints can carry them).
    pub fn train_valid(
        &self,
        seed: u64,
        points: usize,
        spiral_classes: usize,
        reuse: Option<data::Standardizer>,
    ) -> Result<(Dataset, Dataset, Option<data::Standardizer>)> {
        let Some(path) = &self.data else {
            anyhow::ensure!(points >= 5, "--points must be at least 5, got {points}");
            anyhow::ensure!(
                spiral_classes >= 2,
                "--spiral-classes must be at least 2, got {spiral_classes}"
            );
            let all = data::synthetic::try_spirals(points, spiral_classes, 0.05, seed)
                .context("--points/--spiral-classes")?;
            let split = all.rows * 4 / 5;
            return Ok((all.slice(0, split), all.slice(split, all.rows), None));
        };
        let (all, columns) = data::load_with_columns(path, &self.load_options(None)?, None)?;
        let (mut train, mut valid) = match &self.valid_data {
            Some(v) => {
                let (valid, _) = data::load_with_columns(
                    v,
                    &self.load_options(all.classes)?,
                    columns.as_deref(),
                )?;
                anyhow::ensure!(
                    valid.input_dim == all.input_dim && valid.target_dim == all.target_dim,
                    "{}: rows have {} feature and {} label column(s), but the training file {} \
                     has {} and {}",
                    v.display(),
                    valid.input_dim,
                    valid.target_dim,
                    path.display(),
                    all.input_dim,
                    all.target_dim
                );
                (all, valid)
            }
            None => data::split_owned(all, self.valid_fraction, seed)?,
        };
        if let (Some(a), Some(b)) = (train.classes, valid.classes) {
            // A validation file without the top classes must not shrink the output layer.
            let c = a.max(b);
            train.classes = Some(c);
            valid.classes = Some(c);
        }
        let standardizer = if self.no_standardize {
            None
        } else {
            let s = match reuse {
                Some(s) => {
                    anyhow::ensure!(
                        s.input_dim() == train.input_dim,
                        "the standardization saved with --init-from's model has {} features, \
                         but {} has {}; pass --refit-standardizer to fit one on this data",
                        s.input_dim(),
                        path.display(),
                        train.input_dim
                    );
                    s
                }
                None => data::Standardizer::fit(&train)?,
            };
            s.apply(&mut train)?;
            s.apply(&mut valid)?;
            Some(s)
        };
        Ok((train, valid, standardizer))
    }

    /// A single dataset (for eval/predict), standardized as at training time.
    pub fn load_one(
        &self,
        classes: Option<usize>,
        standardizer: Option<&data::Standardizer>,
    ) -> Result<Dataset> {
        let path = self.data.as_ref().context("--data is required")?;
        let mut d = data::load(path, &self.load_options(classes)?)?;
        if let Some(s) = standardizer {
            anyhow::ensure!(
                s.mean.len() == d.input_dim,
                "{}: rows have {} features, but the model was trained on {}",
                path.display(),
                d.input_dim,
                s.mean.len()
            );
        }
        if let Some(s) = standardizer {
            s.apply(&mut d)?;
        }
        Ok(d)
    }
}
