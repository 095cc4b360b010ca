//! The data-parallel training step: each rank runs forward and backward on its shard,
//! the gradients are averaged across ranks on the host, and every rank applies the same
//! update to the same weights.

use super::{Metrics, Model};
use crate::distributed::{checksum, Distributed, ExchangeStats, CHECKSUM_START};
use crate::graph::Stage;
use crate::model::spec::METRICS_SLOT_NAME;
use crate::ops::METRICS_LEN;
use crate::tensor::{PersistentKind, TensorId};
use anyhow::{Context, Result};
use std::time::Instant;

impl Model {
    /// Trains data-parallel with the ranks of `dist` from now on: [`Model::fit`] takes
    /// this rank's shard of each global batch of `batch_size` × ranks rows. Every rank
    /// must build the same model (same seed, or the same checkpoint); that is checked here
    /// by comparing checksums of the weights and optimizer state.
    ///
    /// Batch norm uses each rank's own batch statistics (PyTorch DDP's default); their
    /// running statistics are rank 0's in what is saved.
    pub fn set_distributed(&mut self, dist: Distributed) -> Result<()> {
        self.dist = Some(dist);
        self.check_replicas("before training")
    }

    /// Gradient-exchange timings and traffic so far, when training data-parallel.
    pub fn exchange_stats(&self) -> Option<ExchangeStats> {
        self.dist.as_ref().map(|d| d.stats)
    }

    /// This process's rank and the number of ranks (0 of 1 without data parallelism).
    pub fn rank_of(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.size()))
    }

    /// One data-parallel step on this rank's `rows` of a global batch of `global_rows`.
    pub(super) fn step_distributed(
        &mut self,
        x: &[f32],
        y: &[f32],
        rows: usize,
        global_rows: usize,
        start: usize,
    ) -> Result<()> {
        let clock = Instant::now();
        let (id, plan) = self.load_batch(x, y, rows, start)?;
        let grads: Vec<(TensorId, usize)> = plan
            .grads
            .iter()
            .map(|&(_, g)| (g, plan.tensors[g].len()))
            .collect();
        self.apply_schedule()?;
        let ids: Vec<TensorId> = grads.iter().map(|g| g.0).collect();
        let mut flat = Vec::with_capacity(grads.iter().map(|g| g.1).sum());
        if ids.is_empty() {
            self.engine.run(id, Stage::Backward)?;
        } else {
            // The gradients' copy rides in the backward pass's own submission.
            let parts = self
                .engine
                .run_and_read(id, Stage::Backward, &ids)?
                .poll(true)?
                .context("the gradient readback returned nothing")?;
            // Each rank's gradients are means over its own rows; weighted by its share of
            // the global batch, their sum is the mean over the global batch that one
            // process computes, also for an uneven last batch.
            let share = rows as f32 / global_rows as f32;
            for part in parts {
                flat.extend(part.into_iter().map(|v| v * share));
            }
        }
        let computed = clock.elapsed();
        let dist = self.dist.as_mut().expect("only called when distributed");
        dist.sum_f32(&mut flat, "the gradient all-reduce")?;
        let reduced = clock.elapsed();
        let mut at = 0;
        for (g, len) in grads {
            self.engine.write(id, g, &flat[at..at + len])?;
            at += len;
        }
        // Clipping by norm runs here, on the averaged gradients: its norm is the global one.
        // Statistics steps are not split for the exchange; the guard still runs, its
        // flags read back behind the update in the same submission.
        self.run_with_readback((rows, start), Stage::Update, false)?;
        self.steps_taken += 1;
        let dist = self.dist.as_mut().expect("only called when distributed");
        let s = &mut dist.stats;
        s.steps += 1;
        s.compute += computed;
        s.all_reduce += reduced - computed;
        s.update += clock.elapsed() - reduced;
        s.bytes += (flat.len() * 4) as u64;
        let every = dist.check_every;
        self.health_after_step()?;
        if every > 0 && self.steps_taken.is_multiple_of(every) {
            self.check_replicas(&format!("at step {}", self.steps_taken))?;
        }
        Ok(())
    }

    /// Compares a checksum of the replicated state (parameters and optimizer state) across
    /// ranks; nothing without data parallelism. Batch-norm running statistics are left
    /// out: each rank keeps its own.
    pub(super) fn check_replicas(&mut self, when: &str) -> Result<()> {
        if self.dist.is_none() {
            return Ok(());
        }
        let slots: Vec<usize> = (self.persistent.iter().enumerate())
            .filter(|(_, p)| {
                matches!(
                    p.kind,
                    PersistentKind::Param | PersistentKind::OptimizerState
                )
            })
            .map(|(i, _)| i)
            .collect();
        let mut hash = CHECKSUM_START;
        for slot in slots {
            hash = checksum(hash, &self.engine.read_persistent(slot)?);
        }
        let dist: &Distributed = self.dist.as_ref().expect("checked above");
        dist.check_replicas(hash, when)
    }

    /// The training metrics since the last call, summed over ranks, and reset.
    pub(super) fn take_train_metrics(&mut self) -> Result<Metrics> {
        if self.dist.is_none() {
            return self.take_metrics();
        }
        let slot = self.slot(METRICS_SLOT_NAME)?;
        let mut values = self.engine.read_persistent(slot)?;
        self.engine.write_persistent(slot, &[0.0; METRICS_LEN])?;
        let dist = self.dist.as_ref().expect("checked above");
        dist.sum_f32(&mut values, "summing the epoch's loss and accuracy")?;
        Ok(Metrics::from_accumulator(&values, self.spec.loss))
    }
}
