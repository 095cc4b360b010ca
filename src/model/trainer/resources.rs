//! The resource plan of a fit: every plan a fit will compile is counted before the first
//! is, so a model the device cannot hold is refused at once, naming the figure and the
//! limit, instead of crashing inside a driver during the first epoch.

use super::Model;
use crate::engine::{format_bytes, Engine};
use crate::tensor::{PersistentDesc, Storage};
use anyhow::Result;

impl Model {
    /// Checks the bind groups of the plans for batches of `rows` (the batch, the last
    /// partial batch, the validation batches; plus the statistics step where statistics
    /// are gathered) starting at layer `start`, against what the device takes. Plans
    /// already compiled cost nothing more; those built here are kept for `plan_at`.
    pub(super) fn check_fit_resources(&mut self, rows: &[usize], start: usize) -> Result<()> {
        let groups = self.engine.bind_group_budget();
        let memory = self.engine.memory_budget();
        if groups.is_none() && memory.is_none() {
            return Ok(());
        }
        let mut rows: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&r| r > 0 && !self.plans.contains_key(&(r, start)))
            .collect();
        rows.sort_unstable();
        rows.dedup();
        let (mut need, mut bytes) = (0, 0u64);
        for &r in &rows {
            let plan = match self.built.remove(&(r, start)) {
                Some(plan) => plan,
                None => self.build_plan(r, start)?,
            };
            need += plan.forward.len() + plan.eval.len() + plan.train.len();
            if self.health.gathers_stats() {
                need += plan.train_stats.len();
            }
            bytes += plan
                .tensors
                .iter()
                .filter(|t| t.storage == Storage::Local)
                .map(|t| t.len() as u64 * 4)
                .sum::<u64>();
            self.built.insert((r, start), plan);
        }
        let shown: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        let what = format!(
            "training this {}-layer model (plans for batches of {} rows)",
            self.spec.hidden.len() + 1,
            shown.join(", ")
        );
        if let Some(budget) = memory {
            anyhow::ensure!(
                bytes <= budget.available,
                "{what} needs {} for activations and gradients, but {} of {} is available; \
                 use a smaller --batch or fewer or narrower layers",
                format_bytes(bytes),
                format_bytes(budget.available),
                budget.memory
            );
        }
        match groups {
            Some(budget) => budget.check(need, &what),
            None => Ok(()),
        }
    }
}

/// Refuses parameters and optimizer state that the engine's memory cannot hold before any
/// of it is allocated: a driver that runs out of memory during the upload may abort the
/// process rather than return an error.
pub(super) fn check_persistent_memory(
    persistent: &[PersistentDesc],
    engine: &dyn Engine,
) -> Result<()> {
    let Some(budget) = engine.memory_budget() else {
        return Ok(());
    };
    let bytes: u64 = persistent.iter().map(|p| p.init.len() as u64 * 4).sum();
    anyhow::ensure!(
        bytes <= budget.available,
        "the model's parameters and optimizer state need {}, but {} of {} is available; \
         make the hidden layers fewer or narrower (--depth, --width, or `hidden` in --config)",
        format_bytes(bytes),
        format_bytes(budget.available),
        budget.memory
    );
    Ok(())
}
