//! The value of the regularization penalty, reported beside the data loss.

use super::Model;
use crate::model::regularize::Regularizer;
use anyhow::Result;

impl Model {
    /// Each regularization group's penalty `l1·Σ|w| + l2·Σw²` at the current weights (and
    /// biases for groups with `bias`), in group order; 0 for groups with only a max-norm.
    /// Frozen layers count too: the penalty is a function of the weights, as Keras's
    /// `model.losses` is.
    pub fn penalties(&mut self) -> Result<Vec<f32>> {
        let groups = self.spec.regularization.clone();
        let mut out = Vec::with_capacity(groups.len());
        for r in &groups {
            out.push(if r.has_penalty() {
                self.group_penalty(r)? as f32
            } else {
                0.0
            });
        }
        Ok(out)
    }

    /// The sum of [`Model::penalties`], or `None` when no group has an L1 or L2 factor.
    pub fn penalty(&mut self) -> Result<Option<f32>> {
        if !self.spec.regularization.iter().any(|r| r.has_penalty()) {
            return Ok(None);
        }
        Ok(Some(self.penalties()?.iter().sum()))
    }

    fn group_penalty(&mut self, r: &Regularizer) -> Result<f64> {
        let mut total = 0.0;
        for &l in &r.layers {
            let mut names = vec![format!("layers.{l}.linear.weight")];
            if r.bias {
                names.push(format!("layers.{l}.linear.bias"));
            }
            for name in names {
                let slot = self.slot(&name)?;
                total += r.penalty_of(&self.engine.read_persistent(slot)?);
            }
        }
        Ok(total)
    }
}
