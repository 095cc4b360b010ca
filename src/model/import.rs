//! Pretrained weights from other layouts, for `--init-from`.
//!
//! A safetensors state dict is read in one of three layouts and renamed to steadygrad's
//! (`layers.{i}.linear.weight`, `layers.{i}.bn.running_mean`, …):
//!
//! - **steadygrad's own** names, as written by `--save` (with or without the
//!   `steadygrad.config` metadata);
//! - **PyTorch's `nn.Sequential`**, whose names are module indices: `0.weight`, `0.bias`
//!   for a Linear at index 0, `1.weight`, `1.bias`, `1.running_mean`, `1.running_var`,
//!   `1.num_batches_tracked` for a BatchNorm1d at index 1; activation and dropout modules
//!   hold no tensors, so they leave gaps in the indices;
//! - **a name map** given by the user ([`NameMap`]), for any other naming.
//!
//! Without metadata the architecture is read from the tensors: the linear weights'
//! shapes give the input and hidden widths ([`Pretrained::layer_sizes`]); activation and
//! batch norm come from the flags, and [`Pretrained::check_spec`] says, naming the
//! tensors, where the model the flags describe differs.

use crate::checkpoint::OPTIMIZER_PREFIX;
use crate::config::{ModelConfig, CONFIG_KEY};
use crate::model::{BnPlacement, MlpSpec, Model, NamedTensor};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

mod name_map;
pub use name_map::NameMap;

/// Which naming a file used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `layers.{i}.linear.weight`, …
    Steadygrad,
    /// `nn.Sequential` indices: `0.weight`, `1.running_mean`, …
    Sequential,
    /// Renamed through a user-given [`NameMap`].
    NameMap,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Steadygrad => "steadygrad",
            Layout::Sequential => "nn.Sequential",
            Layout::NameMap => "name map",
        })
    }
}

/// Pretrained tensors under steadygrad's names, with where each came from.
#[derive(Clone, Debug)]
pub struct Pretrained {
    /// Tensors renamed to steadygrad's layout.
    pub tensors: Vec<NamedTensor>,
    /// The layout the file used.
    pub layout: Layout,
    /// The architecture from the `steadygrad.config` metadata, when the file has it.
    pub config: Option<ModelConfig>,
    /// The input standardization saved with the model, when the file has it.
    pub standardizer: Option<crate::data::Standardizer>,
    /// steadygrad name → name in the file, to name the file's tensors in errors.
    sources: BTreeMap<String, String>,
    /// For each layer with a batch norm in an `nn.Sequential` file: where it sat, and
    /// its first tensor's name in the file.
    bn_placements: Vec<(usize, BnPlacement, String)>,
}

impl Pretrained {
    /// Reads a safetensors file in any of the layouts (see the module documentation).
    /// With `name_map`, every tensor is renamed through it.
    pub fn read(path: &Path, name_map: Option<&NameMap>) -> Result<Pretrained> {
        let (tensors, meta) = crate::checkpoint::load(path)?;
        Pretrained::from_tensors(tensors, &meta, name_map)
            .with_context(|| format!("'{}'", path.display()))
    }

    /// As [`Pretrained::read`], from tensors already in memory. (`num_batches_tracked`
    /// tensors are dropped by [`crate::checkpoint::load`]: PyTorch only uses the count
    /// when a BatchNorm's momentum is None, and steadygrad always has a momentum.)
    pub fn from_tensors(
        tensors: Vec<NamedTensor>,
        metadata: &BTreeMap<String, String>,
        name_map: Option<&NameMap>,
    ) -> Result<Pretrained> {
        let config = metadata
            .get(CONFIG_KEY)
            .map(|j| ModelConfig::from_json(j))
            .transpose()?;
        // A training checkpoint's optimizer state has no place in a fresh model.
        let tensors: Vec<NamedTensor> = tensors
            .into_iter()
            .filter(|t| {
                !t.name.starts_with(OPTIMIZER_PREFIX) && !t.name.ends_with(".num_batches_tracked")
            })
            .collect();
        ensure!(!tensors.is_empty(), "the file holds no model tensors");
        let mut p = match name_map {
            Some(map) => rename_with(tensors, map)?,
            None if tensors.iter().all(|t| t.name.starts_with("layers.")) => {
                let sources = tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.name.clone()))
                    .collect();
                Pretrained {
                    tensors,
                    layout: Layout::Steadygrad,
                    config: None,
                    standardizer: None,
                    sources,
                    bn_placements: Vec::new(),
                }
            }
            None if tensors.iter().all(|t| sequential_index(&t.name).is_some()) => {
                from_sequential(tensors)?
            }
            None => {
                let odd: Vec<&str> = tensors
                    .iter()
                    .filter(|t| {
                        !t.name.starts_with("layers.") && sequential_index(&t.name).is_none()
                    })
                    .map(|t| t.name.as_str())
                    .collect();
                bail!(
                    "the tensor names are neither steadygrad's (layers.{{i}}.linear.weight, …) \
                     nor nn.Sequential's (0.weight, 1.running_mean, …); these match neither: \
                     {}. Give a --name-map (see README)",
                    list(&odd)
                )
            }
        };
        p.config = config;
        p.standardizer = crate::checkpoint::standardizer_of(metadata)?;
        Ok(p)
    }

    /// The name a steadygrad tensor had in the file.
    pub fn source<'a>(&'a self, name: &'a str) -> &'a str {
        self.sources.get(name).map_or(name, String::as_str)
    }

    /// `[input, hidden…, output]` read from the linear weights' shapes. Layers must be
    /// numbered from 0 without gaps, and each layer's input width must be the output
    /// width of the one below.
    pub fn layer_sizes(&self) -> Result<Vec<usize>> {
        let weight = |l: usize| {
            self.tensors
                .iter()
                .find(|t| t.name == format!("layers.{l}.linear.weight"))
        };
        let mut sizes = Vec::new();
        let mut below: Option<&NamedTensor> = None;
        for l in 0.. {
            let Some(w) = weight(l) else { break };
            ensure!(
                w.shape.len() == 2,
                "'{}' is a linear weight but has shape {:?}; expected [out, in]",
                self.source(&w.name),
                w.shape
            );
            if let Some(b) = below {
                ensure!(
                    b.shape[0] == w.shape[1],
                    "'{}' has shape {:?} but '{}' below it has shape {:?}: layer {l} takes {} \
                     inputs, layer {} gives {}",
                    self.source(&w.name),
                    w.shape,
                    self.source(&b.name),
                    b.shape,
                    w.shape[1],
                    l - 1,
                    b.shape[0]
                );
            } else {
                sizes.push(w.shape[1]);
            }
            sizes.push(w.shape[0]);
            below = Some(w);
        }
        ensure!(
            !sizes.is_empty(),
            "no linear weight for layer 0 (layers.0.linear.weight) among the tensors"
        );
        let n = sizes.len() - 1;
        let stray: Vec<&str> = self
            .tensors
            .iter()
            .filter(|t| layer_of(&t.name).is_some_and(|l| l >= n))
            .map(|t| self.source(&t.name))
            .collect();
        ensure!(
            stray.is_empty(),
            "the linear layers stop at layer {} (no layers.{n}.linear.weight), but these \
             tensors belong to later layers: {}",
            n - 1,
            list(&stray)
        );
        Ok(sizes)
    }

    /// Number of linear layers.
    pub fn num_layers(&self) -> Result<usize> {
        Ok(self.layer_sizes()?.len() - 1)
    }

    /// Checks that layers `0..keep` of the model `spec` describes can take these
    /// tensors: the widths agree (the error names the tensor, both shapes, and the
    /// flags to change) and an `nn.Sequential` file's batch norms sit where the model
    /// has them.
    pub fn check_spec(&self, spec: &MlpSpec, keep: usize) -> Result<()> {
        let sizes = self.layer_sizes()?;
        let n = sizes.len() - 1;
        ensure!(
            keep <= n,
            "cannot keep {keep} layers: the pretrained model has {n} linear layers ({})",
            describe(&sizes)
        );
        ensure!(
            keep <= spec.num_layers(),
            "cannot keep {keep} layers: the model has {} (--depth {} plus the output layer)",
            spec.num_layers(),
            spec.hidden.len()
        );
        let ours = spec.layer_sizes();
        for l in 0..keep {
            let theirs = [sizes[l + 1], sizes[l]];
            let mine = [ours[l + 1], ours[l]];
            if theirs != mine {
                let name = format!("layers.{l}.linear.weight");
                let hint = if l == 0 && sizes[0] != ours[0] {
                    format!("the data has {} features", ours[0])
                } else if l + 1 == spec.num_layers() {
                    format!("the data has {} outputs", ours[l + 1])
                } else {
                    format!(
                        "its {} units come from --width, or --config's hidden",
                        ours[l + 1]
                    )
                };
                bail!(
                    "pretrained '{}' has shape {theirs:?}, but the model needs {mine:?} for \
                     layer {l} ({hint}); the pretrained model is {}",
                    self.source(&name),
                    describe(&sizes)
                );
            }
        }
        for (l, place, source) in &self.bn_placements {
            if *l >= keep {
                continue;
            }
            let Some(bn) = spec.batch_norm_of(*l) else {
                bail!(
                    "'{source}' is a BatchNorm1d after linear layer {l}, but the model has no \
                     batch norm there (add --batch-norm {})",
                    placement_flag(*place)
                );
            };
            ensure!(
                bn.placement == *place,
                "'{source}' is a BatchNorm1d {} the activation of layer {l}, but the model \
                 puts batch norm {} it (use --batch-norm {})",
                placement_flag(*place),
                placement_flag(bn.placement),
                placement_flag(*place)
            );
        }
        Ok(())
    }

    /// Loads layers `0..keep` into `model` (see [`Model::load_layers`]) after checking
    /// the architecture ([`Pretrained::check_spec`]). When tensors and parameters do not
    /// pair up, the error lists every tensor that matched nothing and every parameter
    /// that found no tensor, under the file's names.
    pub fn load_into(&self, model: &mut Model, keep: usize) -> Result<()> {
        self.check_spec(model.spec(), keep)?;
        let params = model.state_dict()?;
        let kept = |name: &str| layer_of(name).is_some_and(|l| l < keep);
        let unmatched: Vec<String> = self
            .tensors
            .iter()
            // A name outside `layers.{i}` (a name map's typo) belongs to no layer, so
            // keeping fewer layers cannot excuse it.
            .filter(|t| {
                (kept(&t.name) || layer_of(&t.name).is_none())
                    && !params.iter().any(|p| p.name == t.name)
            })
            .map(|t| self.describe_tensor(t))
            .collect();
        let missing: Vec<String> = params
            .iter()
            .filter(|p| kept(&p.name) && !self.tensors.iter().any(|t| t.name == p.name))
            .map(|p| format!("'{}' {:?}", p.name, p.shape))
            .collect();
        let mut problems = Vec::new();
        if !unmatched.is_empty() {
            problems.push(format!(
                "tensors that match no parameter of the model: {}",
                unmatched.join(", ")
            ));
        }
        if !missing.is_empty() {
            problems.push(format!(
                "parameters that found no tensor: {}",
                missing.join(", ")
            ));
        }
        ensure!(
            problems.is_empty(),
            "the {} layout's tensors do not fit layers 0..{keep} of the model:\n  {}",
            self.layout,
            problems.join("\n  ")
        );
        for t in &self.tensors {
            if let Some(p) = params.iter().find(|p| p.name == t.name && kept(&t.name)) {
                ensure!(
                    p.shape == t.shape,
                    "pretrained '{}' has shape {:?}, but the model's '{}' needs {:?}",
                    self.source(&t.name),
                    t.shape,
                    p.name,
                    p.shape
                );
            }
        }
        model.load_layers(&self.tensors, keep)
    }

    fn describe_tensor(&self, t: &NamedTensor) -> String {
        let source = self.source(&t.name);
        if source == t.name {
            format!("'{}' {:?}", t.name, t.shape)
        } else {
            format!("'{source}' {:?} (as '{}')", t.shape, t.name)
        }
    }
}

fn placement_flag(p: BnPlacement) -> &'static str {
    match p {
        BnPlacement::BeforeActivation => "before",
        BnPlacement::AfterActivation => "after",
    }
}

/// `4 → [8, 8] → 3`.
fn describe(sizes: &[usize]) -> String {
    format!(
        "{} → {:?} → {}",
        sizes[0],
        &sizes[1..sizes.len() - 1],
        sizes[sizes.len() - 1]
    )
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The layer index in a `layers.{i}.…` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The module index and attribute of an `nn.Sequential` name such as `3.running_var`.
fn sequential_index(name: &str) -> Option<(usize, &str)> {
    let (index, attr) = name.split_once('.')?;
    let index = index.parse().ok()?;
    matches!(attr, "weight" | "bias" | "running_mean" | "running_var").then_some((index, attr))
}

fn rename_with(tensors: Vec<NamedTensor>, map: &NameMap) -> Result<Pretrained> {
    let mut sources = BTreeMap::new();
    let mut renamed = Vec::new();
    let mut unmatched = Vec::new();
    for t in tensors {
        match map.rename(&t.name)? {
            None => unmatched.push(t.name),
            Some(to) => {
                if let Some(other) = sources.insert(to.clone(), t.name.clone()) {
                    bail!(
                        "the name map sends both '{other}' and '{}' to '{to}'",
                        t.name
                    );
                }
                renamed.push(NamedTensor { name: to, ..t });
            }
        }
    }
    ensure!(
        unmatched.is_empty(),
        "these tensors match no name map entry: {}",
        list(&unmatched.iter().map(String::as_str).collect::<Vec<_>>())
    );
    Ok(Pretrained {
        tensors: renamed,
        layout: Layout::NameMap,
        config: None,
        standardizer: None,
        sources,
        bn_placements: Vec::new(),
    })
}

/// Renames an `nn.Sequential` state dict. Modules are told apart by their tensors: a
/// 2-D `weight` is a Linear, which starts a layer; `running_mean`/`running_var` mark a
/// BatchNorm1d, which belongs to the Linear before it — right after it (no module in
/// between) it normalizes before the activation, after a gap (the activation, which has
/// no tensors) it normalizes after it; a lone 1-D `weight` is a PReLU's slope.
fn from_sequential(tensors: Vec<NamedTensor>) -> Result<Pretrained> {
    let mut modules: BTreeMap<usize, Vec<NamedTensor>> = BTreeMap::new();
    for t in tensors {
        let (i, _) = sequential_index(&t.name).expect("checked by the caller");
        modules.entry(i).or_default().push(t);
    }
    let mut out = Vec::new();
    let mut sources = BTreeMap::new();
    let mut bn_placements = Vec::new();
    // The current layer and the module index of its Linear.
    let mut layer: Option<(usize, usize)> = None;
    let mut next_layer = 0;
    for (index, ts) in modules {
        let attr = |a: &str| ts.iter().find(|t| t.name == format!("{index}.{a}"));
        let is_bn = attr("running_mean").is_some() || attr("running_var").is_some();
        let is_linear = !is_bn && attr("weight").is_some_and(|w| w.shape.len() == 2);
        let is_prelu = !is_bn && !is_linear && attr("bias").is_none() && attr("weight").is_some();
        let (prefix, what) = if is_linear {
            layer = Some((next_layer, index));
            next_layer += 1;
            (format!("layers.{}.linear", next_layer - 1), "Linear")
        } else {
            let Some((l, linear_at)) = layer else {
                bail!(
                    "'{}' comes before any Linear module, so it belongs to no layer",
                    ts[0].name
                );
            };
            if is_bn {
                let place = if index == linear_at + 1 {
                    BnPlacement::BeforeActivation
                } else {
                    BnPlacement::AfterActivation
                };
                ensure!(
                    !bn_placements.iter().any(|(m, _, _)| *m == l),
                    "'{}' is a second BatchNorm1d after linear layer {l}",
                    ts[0].name
                );
                // Named by its weight (γ), as a user would look for it.
                let named = attr("weight").unwrap_or(&ts[0]).name.clone();
                bn_placements.push((l, place, named));
                (format!("layers.{l}.bn"), "BatchNorm1d")
            } else if is_prelu {
                (format!("layers.{l}.act"), "PReLU")
            } else {
                bail!(
                    "module {index} ({}) is neither a Linear (2-D weight), a BatchNorm1d \
                     (running_mean, running_var) nor a PReLU (1-D weight only)",
                    list(&ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>())
                );
            }
        };
        for t in ts {
            let (_, a) = sequential_index(&t.name).expect("checked above");
            let to = format!("{prefix}.{a}");
            ensure!(
                is_bn || a == "weight" || (a == "bias" && what == "Linear"),
                "'{}' is not a tensor a {what} has",
                t.name
            );
            sources.insert(to.clone(), t.name.clone());
            out.push(NamedTensor { name: to, ..t });
        }
    }
    Ok(Pretrained {
        tensors: out,
        layout: Layout::Sequential,
        config: None,
        standardizer: None,
        sources,
        bn_placements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[usize]) -> NamedTensor {
        NamedTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            values: vec![0.0; shape.iter().product()],
        }
    }

    #[test]
    fn name_map_rules_and_exact_entries() {
        let map = NameMap::parse(
            r#"
            "encoder.{i}.fc.weight" = "layers.{i}.linear.weight"
            "encoder.{i}.fc.bias" = "layers.{i}.linear.bias"
            "head.weight" = "layers.2.linear.weight"
            "#,
        )
        .unwrap();
        assert_eq!(
            map.rename("encoder.01.fc.weight").unwrap().as_deref(),
            Some("layers.1.linear.weight")
        );
        assert_eq!(
            map.rename("head.weight").unwrap().as_deref(),
            Some("layers.2.linear.weight")
        );
        assert_eq!(map.rename("encoder.x.fc.weight").unwrap(), None);
        assert_eq!(map.rename("encoder.1.fc.weight.extra").unwrap(), None);
    }

    #[test]
    fn name_map_rejects_bad_rules() {
        for (text, says) in [
            (
                r#""a.{i}" = "layers.{j}.linear.weight""#,
                "'{j}' is not in the name",
            ),
            (
                r#""a.{i" = "layers.{i}.linear.weight""#,
                "without a closing",
            ),
            (r#""a.{i}{j}" = "layers.{i}.linear.weight""#, "text between"),
            (r#""a" = 3"#, "must be a string"),
            (r#""a" = "layers.{i}.x""#, "placeholder the name lacks"),
        ] {
            let e = format!("{:#}", NameMap::parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn name_map_collisions_and_ambiguity_are_errors() {
        let map = NameMap::parse(
            r#"
            "a.{i}.w" = "layers.{i}.linear.weight"
            "b.w" = "layers.0.linear.weight"
            "1.{j}.y" = "layers.{j}.linear.bias"
            "{i}.{j}.y" = "layers.{j}.linear.bias"
            "#,
        )
        .unwrap();
        let e = Pretrained::from_tensors(
            vec![t("a.0.w", &[2, 2]), t("b.w", &[2, 2])],
            &BTreeMap::new(),
            Some(&map),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("'a.0.w'") && e.contains("'b.w'") && e.contains("'layers.0.linear.weight'"),
            "{e}"
        );
        let e = format!("{:#}", map.rename("1.2.y").unwrap_err());
        assert!(e.contains("two name map rules"), "{e}");
    }

    #[test]
    fn sequential_batch_norm_placement_follows_the_gap() {
        // Linear, BN, act, Linear, act, BN, Linear: the first BN is before the
        // activation, the second after it.
        let p = Pretrained::from_tensors(
            vec![
                t("0.weight", &[4, 3]),
                t("0.bias", &[4]),
                t("1.weight", &[4]),
                t("1.bias", &[4]),
                t("1.running_mean", &[4]),
                t("1.running_var", &[4]),
                t("3.weight", &[4, 4]),
                t("3.bias", &[4]),
                t("5.weight", &[4]),
                t("5.bias", &[4]),
                t("5.running_mean", &[4]),
                t("5.running_var", &[4]),
                t("6.weight", &[2, 4]),
                t("6.bias", &[2]),
            ],
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        assert_eq!(p.layout, Layout::Sequential);
        assert_eq!(p.layer_sizes().unwrap(), vec![3, 4, 4, 2]);
        assert_eq!(
            p.bn_placements
                .iter()
                .map(|(l, p, _)| (*l, *p))
                .collect::<Vec<_>>(),
            vec![
                (0, BnPlacement::BeforeActivation),
                (1, BnPlacement::AfterActivation)
            ]
        );
        assert_eq!(p.source("layers.1.bn.running_var"), "5.running_var");
    }

    #[test]
    fn unknown_layout_names_the_odd_tensors() {
        let e = Pretrained::from_tensors(
            vec![t("0.weight", &[4, 3]), t("encoder.fc.weight", &[4, 3])],
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("'encoder.fc.weight'") && !e.contains("'0.weight'"),
            "{e}"
        );
        assert!(e.contains("--name-map"), "{e}");
    }
}
