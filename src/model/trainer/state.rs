//! A model's tensors by name: reading them out (PyTorch's `state_dict()` and
//! `named_parameters()`), loading them back, and the optimizer state and step counter that
//! exact resume needs.

use super::{Model, NamedTensor};
use crate::data::check_finite;
use crate::graph::Stage;
use crate::model::spec::STEP_SLOT_NAME;
use crate::tensor::PersistentKind;
use anyhow::{ensure, Context, Result};

impl Model {
    /// Optimizer state (momentum buffers, Adam's moments), named `{parameter}.{key}` with
    /// torch's state keys.
    pub fn optimizer_state(&mut self) -> Result<Vec<NamedTensor>> {
        self.persistent_of(|k| k == PersistentKind::OptimizerState)
    }

    fn persistent_of(&mut self, keep: impl Fn(PersistentKind) -> bool) -> Result<Vec<NamedTensor>> {
        let wanted: Vec<(usize, String, Vec<usize>)> = self
            .persistent
            .iter()
            .enumerate()
            .filter(|(_, p)| keep(p.kind))
            .map(|(i, p)| (i, p.name.clone(), p.shape.clone()))
            .collect();
        wanted
            .into_iter()
            .map(|(slot, name, shape)| {
                Ok(NamedTensor {
                    values: self.engine.read_persistent(slot)?,
                    name,
                    shape,
                })
            })
            .collect()
    }

    /// Trainable parameters, as PyTorch's `named_parameters()`.
    pub fn parameters(&mut self) -> Result<Vec<NamedTensor>> {
        self.persistent_of(|k| k == PersistentKind::Param)
    }

    /// Parameters and buffers (batch-norm running statistics), as PyTorch's `state_dict()`.
    pub fn state_dict(&mut self) -> Result<Vec<NamedTensor>> {
        self.persistent_of(|k| matches!(k, PersistentKind::Param | PersistentKind::Buffer))
    }

    /// Reads any tensor of the plan for batch size `rows` by name, e.g. `layers.3.z` or
    /// `layers.0.linear.weight.grad` after a step of that size. For tests and diagnostics.
    pub fn read_tensor(&mut self, rows: usize, name: &str) -> Result<Vec<f32>> {
        let (id, plan) = self.plan(rows)?;
        let t = plan
            .find(name)
            .with_context(|| format!("the plan has no tensor named '{name}'"))?;
        self.engine.read(id, t)
    }

    /// Names of the gradient tensors and the parameters they belong to.
    pub fn gradient_names(&mut self, rows: usize) -> Result<Vec<(String, String)>> {
        let (_, plan) = self.plan(rows)?;
        Ok(plan
            .grads
            .iter()
            .map(|&(p, g)| (plan.tensors[p].name.clone(), plan.tensors[g].name.clone()))
            .collect())
    }

    /// Training steps taken so far (counted on the device).
    pub fn steps(&mut self) -> Result<u64> {
        let v = self.engine.read_persistent(self.slot(STEP_SLOT_NAME)?)?;
        Ok(v[0].to_bits() as u64)
    }

    /// Loads parameters and buffers by name, as PyTorch's `load_state_dict(strict=True)`:
    /// every tensor of the model must be present with the right shape, and nothing
    /// unknown may be given. All mismatches are reported together, by name; on any
    /// mismatch nothing is loaded.
    pub fn load_state_dict(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        let saved = |k: PersistentKind| matches!(k, PersistentKind::Param | PersistentKind::Buffer);
        let mut problems = Vec::new();
        let mut writes = Vec::new();
        for (slot, p) in self
            .persistent
            .iter()
            .enumerate()
            .filter(|(_, p)| saved(p.kind))
        {
            match tensors.iter().find(|t| t.name == p.name) {
                None => problems.push(format!("missing '{}' (shape {:?})", p.name, p.shape)),
                Some(t) if t.shape != p.shape => problems.push(format!(
                    "'{}' has shape {:?}, the model needs {:?}",
                    p.name, t.shape, p.shape
                )),
                Some(t) if t.values.len() != p.init.len() => problems.push(format!(
                    "'{}' holds {} values for shape {:?}",
                    p.name,
                    t.values.len(),
                    t.shape
                )),
                Some(t) => match check_finite(&p.name, &t.values, 1) {
                    Err(e) => problems.push(format!("{e}")),
                    Ok(()) => writes.push((slot, t)),
                },
            }
        }
        for t in tensors {
            if !self
                .persistent
                .iter()
                .any(|p| p.name == t.name && saved(p.kind))
            {
                problems.push(format!(
                    "unexpected '{}' (shape {:?}): the model has no such tensor",
                    t.name, t.shape
                ));
            }
        }
        ensure!(
            problems.is_empty(),
            "state dict does not match the model:\n  {}",
            problems.join("\n  ")
        );
        for (slot, t) in writes {
            self.engine.write_persistent(slot, &t.values)?;
        }
        Ok(())
    }

    /// Transfer learning: loads the tensors of layers `0..n` (linear, batch norm,
    /// activation and projection parameters) from `tensors`, such as a pretrained
    /// checkpoint, and leaves the layers above at their fresh initialisation. Every
    /// model tensor of those layers must be present with the right shape; tensors of
    /// other layers in `tensors` are ignored.
    pub fn load_layers(&mut self, tensors: &[NamedTensor], n: usize) -> Result<()> {
        ensure!(
            n <= self.spec.num_layers(),
            "cannot keep {n} layers: the model has {}",
            self.spec.num_layers()
        );
        let wanted = |name: &str| layer_index(name).is_some_and(|l| l < n);
        let mine: Vec<NamedTensor> = tensors
            .iter()
            .filter(|t| wanted(&t.name))
            .cloned()
            .collect();
        let mut full = self.state_dict()?;
        for t in full.iter_mut().filter(|t| wanted(&t.name)) {
            match mine.iter().find(|m| m.name == t.name) {
                Some(m) if m.shape == t.shape => t.values.clone_from(&m.values),
                Some(m) => anyhow::bail!(
                    "pretrained '{}' has shape {:?}, the model needs {:?}",
                    m.name,
                    m.shape,
                    t.shape
                ),
                None => anyhow::bail!(
                    "pretrained weights have no '{}' (shape {:?})",
                    t.name,
                    t.shape
                ),
            }
        }
        for m in &mine {
            ensure!(
                full.iter().any(|t| t.name == m.name),
                "pretrained '{}' has no counterpart in the model (different architecture?)",
                m.name
            );
        }
        self.load_state_dict(&full)
    }

    /// Restores optimizer state saved from [`Model::optimizer_state`], by name; every
    /// state tensor of this model's optimizer must be present with its shape.
    pub fn load_optimizer_state(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        let mut writes = Vec::new();
        for (slot, p) in self.persistent.iter().enumerate() {
            if p.kind != PersistentKind::OptimizerState {
                continue;
            }
            let t = tensors.iter().find(|t| t.name == p.name).with_context(|| {
                format!("optimizer state has no '{}' (different optimizer?)", p.name)
            })?;
            ensure!(
                t.shape == p.shape,
                "optimizer state '{}' has shape {:?}, the model needs {:?}",
                p.name,
                t.shape,
                p.shape
            );
            writes.push((slot, t));
        }
        for (slot, t) in writes {
            self.engine.write_persistent(slot, &t.values)?;
        }
        Ok(())
    }

    /// Sets the device's training-step counter (resuming a run, or replaying a step's
    /// random draws). The next step sees `steps + 1`.
    pub fn set_steps(&mut self, steps: u32) -> Result<()> {
        let slot = self.slot(STEP_SLOT_NAME)?;
        self.engine
            .write_persistent(slot, &[f32::from_bits(steps)])?;
        // The warm-up follows the host's count of steps.
        self.steps_taken = steps as u64;
        Ok(())
    }

    /// Overwrites a parameter or buffer by name (e.g. for finite-difference checks).
    pub fn set_parameter(&mut self, name: &str, values: &[f32]) -> Result<()> {
        check_finite(name, values, 1)?;
        let slot = self.slot(name)?;
        ensure!(
            matches!(
                self.persistent[slot].kind,
                PersistentKind::Param | PersistentKind::Buffer
            ),
            "'{name}' is not a parameter"
        );
        self.engine.write_persistent(slot, values)
    }

    /// Mean loss of one batch without updating the model.
    pub fn batch_loss(&mut self, x: &[f32], y: &[f32]) -> Result<f32> {
        let rows = self.check_batch(x, y)?;
        self.take_metrics()?;
        let (id, plan) = self.plan(rows)?;
        let (input, target) = (plan.input.expect("input"), plan.target.expect("target"));
        self.engine.write(id, input, x)?;
        self.engine.write(id, target, y)?;
        self.engine.run(id, Stage::Eval)?;
        Ok(self.take_metrics()?.loss)
    }
}

/// The layer index in a `layers.{i}.…` tensor name.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}
