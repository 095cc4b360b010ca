//! The data-parallel training step: each rank runs forward and backward on its shard,
//! the gradients are averaged across ranks on the host, and every rank applies the same
//! update to the same weights. With synchronized batch norm the step also stops at each
//! batch norm, forward and backward, for the ranks to combine their statistics.

use super::{Metrics, Model};
use crate::distributed::{checksum, merge_moments, Distributed, ExchangeStats, CHECKSUM_START};
use crate::engine::PendingRead;
use crate::graph::{Exchange, Plan, Stage};
use crate::model::lower::{self as mlp, SplitOptions};
use crate::model::spec::METRICS_SLOT_NAME;
use crate::ops::METRICS_LEN;
use crate::tensor::{PersistentKind, TensorId};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

impl Model {
    /// Trains data-parallel with the ranks of `dist` from now on: [`Model::fit`] takes
    /// this rank's shard of each global batch of `batch_size` × ranks rows. Every rank
    /// must build the same model (same seed, or the same checkpoint); that is checked here
    /// by comparing checksums of the weights and optimizer state.
    ///
    /// Batch norm uses each rank's own batch statistics (PyTorch DDP's default), and the
    /// running statistics saved are rank 0's, unless `dist.sync_bn` asks for the global
    /// batch's (PyTorch's `SyncBatchNorm`): then every rank normalizes alike and keeps
    /// the same running statistics.
    ///
    /// Call it before the model first trains or evaluates: plans compiled before are
    /// rebuilt split for the exchanges, and the engine keeps the old ones' buffers.
    pub fn set_distributed(&mut self, dist: Distributed) -> Result<()> {
        self.dist = Some(dist);
        // Plans built so far have the fused training step.
        self.plans.clear();
        self.built.clear();
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

    /// The plan for `rows` rows from layer `start`: split for the exchanges when training
    /// data-parallel.
    pub(super) fn build_plan(&self, rows: usize, start: usize) -> Result<Plan> {
        match &self.dist {
            None => mlp::build_from(&self.spec, &self.persistent, rows, start),
            Some(d) => {
                let split = SplitOptions {
                    sync_bn: d.sync_bn,
                    bucket_bytes: d.bucket_bytes,
                };
                mlp::build_split(&self.spec, &self.persistent, rows, start, split)
            }
        }
    }

    /// One data-parallel step on this rank's rows `[lo, hi)` of a global batch of
    /// `global_rows`.
    pub(super) fn step_distributed(
        &mut self,
        x: &[f32],
        y: &[f32],
        (lo, hi): (usize, usize),
        global_rows: usize,
        start: usize,
    ) -> Result<()> {
        let clock = Instant::now();
        let rows = hi - lo;
        let (id, plan) = self.load_batch(x, y, rows, start)?;
        let parts = plan.parts.clone();
        let first_row = plan.first_row;
        let grads: Vec<(TensorId, usize)> = plan
            .grads
            .iter()
            .map(|&(_, g)| (g, plan.tensors[g].len()))
            .collect();
        if let Some(first_row) = first_row {
            let first = u32::try_from(lo).context("the global batch exceeds 2^32 rows")?;
            self.engine.write(id, first_row, &[f32::from_bits(first)])?;
        }
        anyhow::ensure!(
            !parts.is_empty(),
            "the training plan for {rows} rows is not split for data-parallel training"
        );
        self.apply_schedule()?;
        // Each rank's gradients are means over its own rows; weighted by its share of
        // the global batch, their sum is the mean over the global batch that one process
        // computes, also for an uneven last batch.
        let share = (rows as f64 / global_rows as f64) as f32;
        let (mut bn_time, mut bn_count) = (Duration::ZERO, 0);
        let mut buckets: Vec<(Vec<usize>, Box<dyn PendingRead>)> = Vec::new();
        for (k, (_, exchange)) in parts.iter().enumerate() {
            match exchange {
                // Submitted without waiting: the host sums bucket k while the device
                // computes the parts after it.
                // A model whose layers are all frozen has no gradients to read.
                Exchange::Grads(bucket) if bucket.is_empty() => {
                    self.engine.run(id, Stage::Part(k))?;
                }
                Exchange::Grads(bucket) => {
                    let ids: Vec<TensorId> = bucket.iter().map(|&i| grads[i].0).collect();
                    let read = self.engine.run_and_read(id, Stage::Part(k), &ids)?;
                    buckets.push((bucket.clone(), read));
                }
                Exchange::BnStats {
                    local,
                    global,
                    cols,
                } => {
                    let read = self.engine.run_and_read(id, Stage::Part(k), &[*local])?;
                    let values = first(read)?;
                    let t = Instant::now();
                    let merged = self.merge_bn_stats(&values, rows, *cols)?;
                    (bn_time, bn_count) = (bn_time + t.elapsed(), bn_count + 1);
                    self.engine.write(id, *global, &merged)?;
                }
                Exchange::BnGrads {
                    dgamma,
                    dbeta,
                    global,
                    cols,
                } => {
                    let read = self
                        .engine
                        .run_and_read(id, Stage::Part(k), &[*dbeta, *dgamma])?;
                    let mut sums: Vec<f32> = first_two(read)?;
                    let t = Instant::now();
                    sums.iter_mut().for_each(|v| *v *= share);
                    let dist = self.dist.as_ref().expect("only called when distributed");
                    dist.sum_f32(&mut sums, "the synchronized batch-norm backward exchange")?;
                    (bn_time, bn_count) = (bn_time + t.elapsed(), bn_count + 1);
                    // Divided by this rank's rows (its share of N), so that after the
                    // gradients' weighting by the share every rank's dx is the global one.
                    let global_sums: Vec<f32> = sums.iter().map(|&s| s / rows as f32).collect();
                    debug_assert_eq!(global_sums.len(), 2 * cols);
                    self.engine.write(id, *global, &global_sums)?;
                }
            }
        }
        let (mut computed, mut reduced, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
        let n_buckets = buckets.len() as u64;
        let mut values_of = Vec::new();
        for (range, mut read) in buckets {
            let parts = read
                .poll(true)?
                .context("the gradient readback returned nothing")?;
            computed = clock.elapsed();
            let mut flat: Vec<f32> = parts.into_iter().flatten().map(|v| v * share).collect();
            let dist = self.dist.as_ref().expect("only called when distributed");
            let t = Instant::now();
            dist.sum_f32(&mut flat, "the gradient all-reduce")?;
            reduced += t.elapsed();
            bytes += (flat.len() * 4) as u64;
            values_of.push((range, flat));
        }
        let before_update = clock.elapsed();
        for (bucket, flat) in values_of {
            let mut at = 0;
            for i in bucket {
                let (g, len) = grads[i];
                self.engine.write(id, g, &flat[at..at + len])?;
                at += len;
            }
        }
        // Clipping by norm runs here, on the averaged gradients: its norm is the global one.
        // Statistics steps are not split for the exchange; the guard still runs, its
        // flags read back behind the update in the same submission.
        self.run_with_readback((rows, start), Stage::Update, false)?;
        self.steps_taken += 1;
        let dist = self.dist.as_mut().expect("only called when distributed");
        let s = &mut dist.stats;
        s.steps += 1;
        // What the device and the synchronized batch norm took, less the all-reduces
        // done while it computed.
        s.compute += computed.saturating_sub(reduced.saturating_sub(before_update - computed));
        s.all_reduce += reduced;
        s.update += clock.elapsed() - before_update;
        s.bytes += bytes;
        s.buckets += n_buckets;
        s.bn_exchanges += bn_count;
        s.bn_exchange += bn_time;
        let every = dist.check_every;
        self.health_after_step()?;
        if every > 0 && self.steps_taken.is_multiple_of(every) {
            self.check_replicas(&format!("at step {}", self.steps_taken))?;
        }
        Ok(())
    }

    /// The global batch's `[mean; biased var; unbiased var]` per feature from this rank's
    /// `[mean; M2]` of `rows` rows and every other rank's: gathered (each rank fills its
    /// own slot of a zeroed vector, so a sum is a gather) and merged in `f64`.
    fn merge_bn_stats(&self, local: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        let dist = self.dist.as_ref().expect("only called when distributed");
        let width = 1 + 2 * cols;
        let mut all = vec![0.0f32; width * dist.size()];
        let mine = &mut all[dist.rank() * width..][..width];
        mine[0] = rows as f32;
        mine[1..].copy_from_slice(local);
        dist.sum_f32(&mut all, "the synchronized batch-norm statistics exchange")?;
        merge_moments(&all, cols)
    }

    /// Compares a checksum of the replicated state (parameters and optimizer state, and
    /// with synchronized batch norm the running statistics) across ranks; nothing without
    /// data parallelism. Per-rank batch norm keeps per-rank running statistics, which are
    /// left out then.
    pub(super) fn check_replicas(&mut self, when: &str) -> Result<()> {
        let Some(dist) = &self.dist else {
            return Ok(());
        };
        let sync_bn = dist.sync_bn;
        let slots: Vec<usize> = (self.persistent.iter().enumerate())
            .filter(|(_, p)| match p.kind {
                PersistentKind::Param | PersistentKind::OptimizerState => true,
                PersistentKind::Buffer => sync_bn,
                PersistentKind::Internal => false,
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

    /// Rank 0's `metrics` on every rank; the metrics themselves without data parallelism.
    /// Without `--sync-bn` each rank's batch-norm running statistics are its own, so each
    /// evaluates the validation set a little differently; every decision taken on those
    /// figures (early stopping, the plateau schedule, the non-finite stop) must be taken
    /// alike on all ranks, or one rank leaves the exchanges the others wait in.
    pub(super) fn root_metrics(&self, metrics: Metrics) -> Result<Metrics> {
        let Some(dist) = self.dist.as_ref() else {
            return Ok(metrics);
        };
        let mut values = [metrics.loss, metrics.accuracy.unwrap_or(0.0)];
        if dist.rank() != 0 {
            values = [0.0; 2];
        }
        dist.sum_f32(&mut values, "sharing rank 0's validation metrics")?;
        Ok(Metrics {
            loss: values[0],
            accuracy: metrics.accuracy.map(|_| values[1]),
            rows: metrics.rows,
        })
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

/// The one tensor a readback of one tensor returns, once the device has it.
fn first(mut read: Box<dyn PendingRead>) -> Result<Vec<f32>> {
    let mut values = read.poll(true)?.context("a readback returned nothing")?;
    values.pop().context("a readback returned no tensor")
}

/// The two tensors of a readback of two, laid end to end.
fn first_two(mut read: Box<dyn PendingRead>) -> Result<Vec<f32>> {
    let values = read.poll(true)?.context("a readback returned nothing")?;
    anyhow::ensure!(
        values.len() == 2,
        "a readback returned {} tensors",
        values.len()
    );
    Ok(values.concat())
}
