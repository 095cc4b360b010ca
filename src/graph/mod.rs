//! The plan: a table of tensors and the op lists that run over them, validated once.
//!
//! Both backends execute exactly this description: the CPU reference runs each op's
//! reference loops, the GPU backend lowers each op to dispatches. What the ops are lives
//! in `crate::ops`; how an MLP becomes a plan lives in `crate::model::lower`.

use crate::ops::Op;
use crate::tensor::{PersistentDesc, Storage, TensorDesc, TensorId};

/// Which op list to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Forward pass, loss and metrics; no gradients, no update.
    Eval,
    /// Forward, loss, backward and update: one training step.
    Train,
    /// Forward pass only (no targets needed).
    Predict,
    /// A training step that also gathers gradient-health statistics into
    /// [`Plan::stats`]; ordinary [`Stage::Train`] steps dispatch none of that work.
    TrainWithStats,
    /// Part `k` of [`Stage::Train`] up to the update, in a plan built for data-parallel
    /// training: the ops of [`Plan::part_range`], which end where the host exchanges
    /// [`Plan::parts`]`[k]` with the other processes (see `crate::distributed`). The
    /// last part ends with every gradient in its tensor ([`Plan::grads`]).
    Part(usize),
    /// The rest of [`Stage::Train`] after the parts: clipping and the parameter updates,
    /// reading the gradient tensors as the host left them.
    Update,
}

/// What the host exchanges with the other ranks after a part of a data-parallel step.
#[derive(Clone, Debug, PartialEq)]
pub enum Exchange {
    /// Synchronized batch norm's forward statistics: this rank's `[mean; M2]` in `local`
    /// (`2·cols`, from `BatchNormStats`); the host merges every rank's and writes
    /// `[mean; biased var; unbiased var]` of the global batch to `global` (`3·cols`).
    BnStats {
        local: TensorId,
        global: TensorId,
        cols: usize,
    },
    /// Synchronized batch norm's backward sums: this rank's `Σdy` in `dbeta` and
    /// `Σdy·x̂` in `dgamma` (from `BatchNormGradSums`); the host sums them over ranks,
    /// each weighted by its share of the global batch, and writes
    /// `[Σdy/N; Σdy·x̂/N]` in this rank's loss scale to `global` (`2·cols`).
    BnGrads {
        dgamma: TensorId,
        dbeta: TensorId,
        global: TensorId,
        cols: usize,
    },
    /// A bucket of gradients, complete after this part: these indices into
    /// [`Plan::grads`], all-reduced and written back before [`Stage::Update`].
    Grads(Vec<usize>),
}

/// A compiled-once description of a computation for one batch size.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub tensors: Vec<TensorDesc>,
    /// The forward pass in evaluation mode (running statistics, no dropout, mean RReLU
    /// slopes) that produces `output` from `input`.
    pub forward: Vec<Op>,
    /// Loss and metrics, run after `forward` to evaluate.
    pub eval: Vec<Op>,
    /// A complete training step on its own: the training-mode forward pass, loss,
    /// backward pass and update.
    pub train: Vec<Op>,
    pub input: Option<TensorId>,
    pub target: Option<TensorId>,
    pub output: Option<TensorId>,
    /// The metrics accumulator (persistent).
    pub metrics: Option<TensorId>,
    /// Gradient tensor for each persistent parameter slot it updates: `(param, grad)`.
    pub grads: Vec<(TensorId, TensorId)>,
    /// Why this plan cannot train, when it cannot (batch norm with one row per batch);
    /// it can still predict and evaluate.
    pub train_error: Option<String>,
    /// Output tensor of each layer in the plan, by layer index (`None` for layers below
    /// the plan's first layer).
    pub layer_outputs: Vec<Option<TensorId>>,
    /// [`Plan::train`] with the statistics ops spliced in (see [`stats`]).
    pub train_stats: Vec<Op>,
    /// The statistics record that [`Stage::TrainWithStats`] writes (local).
    pub stats: Option<TensorId>,
    /// The persistent non-finite flags written by the guard in [`Plan::train`].
    pub guard: Option<TensorId>,
    /// `(flag index, tensor)` of every tensor the guard checks, so the host can name the
    /// tensor behind a flag.
    pub guarded: Vec<(usize, TensorId)>,
    /// Where [`Stage::Update`] starts in [`Plan::train`]: after the backward pass and the
    /// guard, before clipping. Equal to `train.len()` when the plan cannot train.
    pub update_start: usize,
    /// Data-parallel plans only (empty otherwise): where each [`Stage::Part`] ends in
    /// [`Plan::train`] and what the host exchanges there, in order. The last ends at
    /// [`Plan::update_start`].
    pub parts: Vec<(usize, Exchange)>,
    /// Data-parallel plans with dropout: where the host writes this rank's first row in
    /// the global batch before each step (a `u32` in an `f32`'s bits), which offsets the
    /// dropout masks so the ranks draw the single-process masks of their rows.
    pub first_row: Option<TensorId>,
}

impl Plan {
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        storage: Storage,
    ) -> TensorId {
        self.tensors.push(TensorDesc {
            name: name.into(),
            shape: shape.to_vec(),
            storage,
        });
        self.tensors.len() - 1
    }

    pub fn ops(&self, stage: Stage) -> impl Iterator<Item = &Op> {
        let (head, tail): (&[Op], &[Op]) = match stage {
            Stage::Predict => (&self.forward, &[]),
            Stage::Eval => (&self.forward, &self.eval),
            Stage::Train => (&self.train, &[]),
            Stage::TrainWithStats => (&self.train_stats, &[]),
            Stage::Part(k) => (self.part_range(k).map_or(&[][..], |r| &self.train[r]), &[]),
            Stage::Update => (&self.train[self.update_start..], &[]),
        };
        head.iter().chain(tail.iter())
    }

    /// The ops of [`Stage::Part`]`(k)` in [`Plan::train`]; `None` past the last part.
    pub fn part_range(&self, k: usize) -> Option<std::ops::Range<usize>> {
        let end = self.parts.get(k)?.0;
        let start = k.checked_sub(1).map_or(0, |j| self.parts[j].0);
        Some(start..end)
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Checks every op against the tensor table: ids in range, sizes that match, no op
    /// reading and writing the same tensor through different operands, nothing empty.
    pub fn validate(&self, persistent: &[PersistentDesc]) -> anyhow::Result<()> {
        for (id, t) in self.tensors.iter().enumerate() {
            anyhow::ensure!(
                !t.is_empty(),
                "tensor {id} '{}' has zero elements (shape {:?})",
                t.name,
                t.shape
            );
            if let Storage::Persistent(slot) = t.storage {
                let p = persistent.get(slot).ok_or_else(|| {
                    anyhow::anyhow!(
                        "tensor '{}' refers to persistent slot {slot}, which does not exist",
                        t.name
                    )
                })?;
                anyhow::ensure!(
                    p.init.len() == t.len(),
                    "tensor '{}' has {} elements but persistent slot '{}' holds {}",
                    t.name,
                    t.len(),
                    p.name,
                    p.init.len()
                );
            }
        }
        anyhow::ensure!(
            self.update_start <= self.train.len(),
            "the update starts at op {} of a training step of {}",
            self.update_start,
            self.train.len()
        );
        let mut at = 0;
        for (end, exchange) in &self.parts {
            anyhow::ensure!(
                at <= *end && *end <= self.update_start,
                "part of the split step ending at op {end} is out of order (update at {})",
                self.update_start
            );
            at = *end;
            let (tensors, range) = match exchange {
                Exchange::BnStats { local, global, .. } => (vec![*local, *global], vec![]),
                Exchange::BnGrads {
                    dgamma,
                    dbeta,
                    global,
                    ..
                } => (vec![*dgamma, *dbeta, *global], vec![]),
                Exchange::Grads(g) => (vec![], g.clone()),
            };
            anyhow::ensure!(
                tensors.iter().all(|&t| t < self.tensors.len())
                    && range.iter().all(|&g| g < self.grads.len()),
                "exchange {exchange:?} refers to tensors the plan does not have"
            );
        }
        anyhow::ensure!(
            self.parts.last().is_none_or(|p| p.0 == self.update_start),
            "the split step's last part must end where the update starts"
        );
        let with_stats = self.train_stats.iter();
        for op in self
            .forward
            .iter()
            .chain(&self.eval)
            .chain(&self.train)
            .chain(with_stats)
        {
            op.check().map_err(|e| anyhow::anyhow!("op {op:?}: {e}"))?;
            for (id, need) in op.lens() {
                let t = self.tensors.get(id).ok_or_else(|| {
                    anyhow::anyhow!("op {op:?} refers to tensor {id}, which does not exist")
                })?;
                anyhow::ensure!(
                    t.len() == need,
                    "op {op:?}: tensor '{}' has {} elements, the op needs {need}",
                    t.name,
                    t.len()
                );
            }
            let (reads, writes) = op.reads_writes();
            let in_place = op.in_place();
            for w in &writes {
                let own = usize::from(in_place.contains(w));
                let aliased = reads.iter().filter(|r| *r == w).count() > own
                    || writes.iter().filter(|o| *o == w).count() > 1;
                anyhow::ensure!(
                    !aliased,
                    "op {op:?} reads tensor '{}' that it also writes",
                    self.tensors[*w].name
                );
                // Each output is produced once; the CPU backend takes each out of storage.
                anyhow::ensure!(
                    writes.iter().filter(|o| *o == w).count() == 1,
                    "op {op:?} writes tensor '{}' through two operands",
                    self.tensors[*w].name
                );
            }
        }
        Ok(())
    }
}
