//! Per-layer weight regularization, Keras style: an `L1L2` kernel penalty added to the
//! loss and a `MaxNorm` constraint applied after each update, for groups of linear layers.

use crate::ops::regularize::cpu;
use anyhow::{ensure, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// One group of linear layers (0 is the first hidden layer, the last is the output layer)
/// sharing a penalty and a constraint: `[[regularization]]` in the TOML configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regularizer {
    /// Written `[0, 1, 2]` or as a range `"0..3"` (end excluded, as Rust and Python).
    #[serde(deserialize_with = "layers_of")]
    pub layers: Vec<usize>,
    /// Keras's `l1`: adds `l1·Σ|w|` to the loss.
    #[serde(default)]
    pub l1: f32,
    /// Keras's `l2`: adds `l2·Σw²` to the loss (gradient `2·l2·w`).
    #[serde(default)]
    pub l2: f32,
    /// Also penalise the biases (Keras's `bias_regularizer` with the same factors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bias: bool,
    /// Keras's `MaxNorm(max_value)`: each unit's incoming weights are rescaled to a norm
    /// of at most this after every update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LayersSyntax {
    List(Vec<usize>),
    Range(String),
}

fn layers_of<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    match LayersSyntax::deserialize(d)? {
        LayersSyntax::List(v) => Ok(v),
        LayersSyntax::Range(s) => parse_range(&s).map_err(serde::de::Error::custom),
    }
}

/// `"a..b"` as the layers `a..b`.
fn parse_range(s: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("layers = '{s}' is neither a list [0, 1] nor a range \"0..2\"");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    Ok((a..b).collect())
}

impl Regularizer {
    /// The same penalty and constraint on every linear layer's weights, as the CLI's
    /// `--l1`, `--l2` and `--max-norm` ask; `None` when all are off.
    pub fn all_layers(layers: usize, l1: f32, l2: f32, max_norm: Option<f32>) -> Option<Self> {
        (l1 != 0.0 || l2 != 0.0 || max_norm.is_some()).then(|| Regularizer {
            layers: (0..layers).collect(),
            l1,
            l2,
            bias: false,
            max_norm,
        })
    }

    pub fn has_penalty(&self) -> bool {
        self.l1 > 0.0 || self.l2 > 0.0
    }

    /// The penalty of one tensor of the group (a weight, or a bias when `bias` is set).
    pub fn penalty_of(&self, w: &[f32]) -> f64 {
        cpu::penalty(w, self.l1, self.l2)
    }
}

/// Checks the groups against a model of `layers` linear layers: factors in range, every
/// layer in range and in at most one group.
pub fn validate(groups: &[Regularizer], layers: usize) -> Result<()> {
    let mut owner: Vec<Option<usize>> = vec![None; layers];
    for (g, r) in groups.iter().enumerate() {
        for (name, v) in [("l1", r.l1), ("l2", r.l2)] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "regularization group {g}: {name} must be finite and >= 0, got {v}"
            );
        }
        if let Some(c) = r.max_norm {
            ensure!(
                c.is_finite() && c > 0.0,
                "regularization group {g}: max_norm must be finite and > 0, got {c}"
            );
        }
        ensure!(
            !r.layers.is_empty(),
            "regularization group {g} selects no layers"
        );
        for &l in &r.layers {
            ensure!(
                l < layers,
                "regularization group {g} selects layer {l}, but the model has {layers} linear \
                 layers (0 to {}; the last is the output layer)",
                layers - 1
            );
            if let Some(first) = owner[l].replace(g) {
                anyhow::bail!(
                    "layer {l} is in regularization groups {first} and {g}; a layer may be in \
                     one group only"
                );
            }
        }
    }
    Ok(())
}

/// One line per group for the run's header, e.g. `layers [0, 1, 2]: l2 0.001, max-norm 3`.
pub fn describe(groups: &[Regularizer]) -> Vec<String> {
    groups
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            for (name, v) in [("l1", r.l1), ("l2", r.l2)] {
                if v > 0.0 {
                    parts.push(format!("{name} {v}"));
                }
            }
            if r.bias && r.has_penalty() {
                parts.push("biases too".to_string());
            }
            if let Some(c) = r.max_norm {
                parts.push(format!("max-norm {c}"));
            }
            format!("layers {:?}: {}", r.layers, parts.join(", "))
        })
        .collect()
}

/// The group regularizing linear layer `l`, if any.
pub fn group_of(groups: &[Regularizer], l: usize) -> Option<&Regularizer> {
    groups.iter().find(|r| r.layers.contains(&l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists_parse_alike() {
        let list: Regularizer = toml::from_str("layers = [0, 1, 2]\nl2 = 0.01").unwrap();
        let range: Regularizer = toml::from_str("layers = \"0..3\"\nl2 = 0.01").unwrap();
        assert_eq!(list, range);
        assert_eq!(range.layers, vec![0, 1, 2]);
        assert!(toml::from_str::<Regularizer>("layers = \"0-3\"").is_err());
    }

    #[test]
    fn overlapping_and_out_of_range_layers_are_named() {
        let g = |layers: Vec<usize>| Regularizer {
            layers,
            l1: 0.0,
            l2: 0.1,
            bias: false,
            max_norm: None,
        };
        let e = validate(&[g(vec![0, 1]), g(vec![1, 2])], 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("layer 1 is in regularization groups 0 and 1"),
            "{e}"
        );
        let e = validate(&[g(vec![3])], 3).unwrap_err();
        assert!(e.to_string().contains("selects layer 3"), "{e}");
        validate(&[g(vec![0]), g(vec![1, 2])], 3).unwrap();
    }
}
