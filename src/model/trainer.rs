//! [`Model`]: a compiled MLP on one backend, with training, evaluation and prediction.

mod distributed;
mod health;
pub mod mc;
mod regularize;
mod resources;
mod schedule;
mod state;

use crate::backend::{create_engine, BackendChoice};
use crate::data::{check_finite, check_labels, Dataset};
use crate::engine::{Engine, PlanId};
use crate::graph::{Plan, Stage};
use crate::model::optim::LrSchedule;
use crate::model::plateau::PlateauState;
use crate::model::spec::{GRAD_NORM_SLOT_NAME, METRICS_SLOT_NAME};
use crate::model::{Clip, MlpSpec};
use crate::ops::{target_len, Loss, METRICS_LEN};
use crate::tensor::{Hyper, PersistentDesc};
use anyhow::{ensure, Context, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::time::Instant;

/// Mean loss (and accuracy for classification) over the rows seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub loss: f32,
    /// Fraction of rows whose argmax equals the label; `None` for regression.
    pub accuracy: Option<f32>,
    pub rows: usize,
}

impl Metrics {
    fn from_accumulator(m: &[f32], loss: Loss) -> Metrics {
        let rows = m[2].max(1.0);
        Metrics {
            loss: m[0] / rows,
            accuracy: (loss == Loss::SoftmaxCrossEntropy).then(|| m[1] / rows),
            rows: m[2] as usize,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FitOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Seed of the per-epoch shuffle.
    pub shuffle_seed: u64,
    /// Skip the last batch of each epoch when it is smaller than `batch_size`, as
    /// PyTorch's `DataLoader(drop_last=True)`. Without it, a last batch of a single row
    /// is still skipped (with a warning on stderr) when the model has batch norm, which
    /// cannot estimate a variance from one row; PyTorch raises an error there instead.
    pub drop_last: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 10,
            batch_size: 64,
            shuffle_seed: 0,
            drop_last: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub train: Metrics,
    pub valid: Option<Metrics>,
    /// Training rows per second over this epoch, device time included.
    pub samples_per_sec: f64,
    /// The regularization penalty at the end of the epoch (see [`Model::penalty`]), apart
    /// from `train.loss`, which is the data loss alone; `None` without L1/L2 groups.
    pub penalty: Option<f32>,
    /// The learning rate of the epoch's last training step (schedule and warm-up
    /// applied; for reduce-on-plateau, before this epoch's validation lowered it).
    pub lr: f32,
}

/// A named tensor copied to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A multilayer perceptron compiled for one backend.
///
/// ```no_run
/// use steadygrad::{data, Activation, BackendChoice, FitOptions, MlpSpec, Model, Optimizer};
/// # fn main() -> anyhow::Result<()> {
/// let train = data::synthetic::spirals(500, 3, 0.05, 1);
/// let spec = MlpSpec::new(2, &[64; 8], 3)
///     .activation(Activation::Relu)
///     .optimizer(Optimizer::sgd(0.05))
///     .seed(42);
/// let mut model = Model::with_backend(spec, &BackendChoice::Auto)?;
/// let opts = FitOptions { epochs: 20, batch_size: 64, shuffle_seed: 7, drop_last: false };
/// for report in model.fit(&train, None, &opts, |_| {})? {
///     println!("epoch {} loss {:.4}", report.epoch, report.train.loss);
/// }
/// let logits = model.predict(&[0.1, 0.2])?; // one row → 3 logits
/// # Ok(()) }
/// ```
pub struct Model {
    spec: MlpSpec,
    engine: Box<dyn Engine>,
    persistent: Vec<PersistentDesc>,
    /// Compiled plans by batch size and first layer: the last partial batch of an epoch
    /// gets its own, and so does training from cached frozen outputs.
    plans: HashMap<(usize, usize), (PlanId, Plan)>,
    /// Plans built (not compiled) by the resource check of a fit, taken by `plan_at`
    /// so none is built twice.
    built: HashMap<(usize, usize), Plan>,
    /// Monte Carlo dropout plans by batch size and seed (see `mc.rs`).
    mc_plans: HashMap<(usize, u64), (PlanId, Plan)>,
    cache_frozen: bool,
    /// The learning rate last written to the device's hyper-parameter block.
    lr: f32,
    /// The cycled momentum last written there.
    momentum: Option<f32>,
    /// A fixed learning rate that overrides the schedule (see `set_learning_rate`).
    lr_override: Option<f32>,
    /// Epochs completed, which the learning-rate schedule follows.
    epoch: usize,
    /// Training steps enqueued, which the warm-up and one-cycle follow (the device counts
    /// them too).
    steps_taken: u64,
    /// ReduceLROnPlateau's counters and rate, with a plateau schedule.
    plateau: Option<PlateauState>,
    /// Statistics schedule, records and observer (see `health.rs`).
    health: health::Health,
    /// The other processes of data-parallel training, when there are (see
    /// `distributed.rs`).
    dist: Option<crate::distributed::Distributed>,
}

impl Model {
    /// Compiles `spec` onto `engine`, uploading the seeded initial parameters.
    pub fn new(spec: MlpSpec, mut engine: Box<dyn Engine>) -> Result<Model> {
        spec.validate()?;
        let persistent = spec.persistent();
        resources::check_persistent_memory(&persistent, engine.as_ref())?;
        engine.init_persistent(&persistent)?;
        let lr = spec.optimizer.lr();
        engine.set_hyper(Hyper::lr(lr))?;
        let plateau = match &spec.schedule {
            LrSchedule::Plateau(p) => Some(p.start(lr)),
            _ => None,
        };
        Ok(Model {
            spec,
            engine,
            persistent,
            plans: HashMap::new(),
            built: HashMap::new(),
            mc_plans: HashMap::new(),
            cache_frozen: false,
            lr,
            momentum: None,
            lr_override: None,
            epoch: 0,
            steps_taken: 0,
            plateau,
            health: health::Health::default(),
            dist: None,
        })
    }

    /// Picks the backend as [`create_engine`] does; a CPU fallback notice goes to stderr.
    pub fn with_backend(spec: MlpSpec, choice: &BackendChoice) -> Result<Model> {
        let engine = create_engine(choice, &mut |msg| eprintln!("{msg}"))?;
        Model::new(spec, engine)
    }

    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    /// The device this model runs on, in one line.
    pub fn device(&self) -> String {
        self.engine.describe()
    }

    pub fn is_gpu(&self) -> bool {
        self.engine.is_gpu()
    }

    fn plan(&mut self, rows: usize) -> Result<(PlanId, &Plan)> {
        self.plan_at(rows, 0)
    }

    /// The plan for `rows` rows whose input is the output of layer `start - 1`.
    fn plan_at(&mut self, rows: usize, start: usize) -> Result<(PlanId, &Plan)> {
        let key = (rows, start);
        if !self.plans.contains_key(&key) {
            let plan = match self.built.remove(&key) {
                Some(plan) => plan,
                None => self.build_plan(rows, start)?,
            };
            let id = self.engine.compile(&plan)?;
            self.plans.insert(key, (id, plan));
        }
        let (id, plan) = &self.plans[&key];
        Ok((*id, plan))
    }

    /// When on, [`Model::fit`] computes the outputs of the frozen layers once per row and
    /// trains the layers above from that cache instead of recomputing them every epoch.
    /// Frozen layers run in inference mode, so the cache is exact.
    pub fn cache_frozen_outputs(&mut self, on: bool) {
        self.cache_frozen = on;
    }

    /// Freezes layers `0..k` from now on (e.g. 0 to unfreeze everything). Plans are
    /// rebuilt on next use; parameters and optimizer state are kept.
    pub fn set_frozen_layers(&mut self, k: usize) -> Result<()> {
        let spec = MlpSpec {
            frozen_layers: k,
            ..self.spec.clone()
        };
        spec.validate()?;
        self.spec = spec;
        self.plans.clear();
        self.built.clear();
        self.mc_plans.clear();
        Ok(())
    }

    /// Outputs of layer `k - 1` (the top frozen layer) for every row of `data`, as a
    /// dataset with the same targets.
    fn frozen_features(&mut self, data: &Dataset, batch_size: usize) -> Result<Dataset> {
        let k = self.spec.frozen_layers;
        let width = self.spec.layer_sizes()[k];
        let mut features = Vec::with_capacity(data.rows * width);
        let index: Vec<usize> = (0..data.rows).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for chunk in index.chunks(batch_size) {
            data.gather(chunk, &mut x, &mut y);
            let (id, plan) = self.plan(chunk.len())?;
            let (input, out) = (
                plan.input.expect("input"),
                plan.layer_outputs[k - 1].expect("full plans have every layer"),
            );
            self.engine.write(id, input, &x)?;
            self.engine.run(id, Stage::Predict)?;
            features.extend(self.engine.read(id, out)?);
        }
        Ok(Dataset {
            features,
            input_dim: width,
            ..data.clone()
        })
    }

    fn rows_of(&self, x: &[f32]) -> Result<usize> {
        let d = self.spec.input;
        ensure!(!x.is_empty(), "input batch is empty");
        ensure!(
            x.len().is_multiple_of(d),
            "input holds {} values, not a whole number of rows of {d} features",
            x.len()
        );
        Ok(x.len() / d)
    }

    fn check_batch(&self, x: &[f32], y: &[f32]) -> Result<usize> {
        let rows = self.rows_of(x)?;
        let need = target_len(self.spec.loss, rows, self.spec.output);
        ensure!(
            y.len() == need,
            "{rows} input rows need {need} target values for {} with {} outputs, got {}",
            self.spec.loss.name(),
            self.spec.output,
            y.len()
        );
        check_finite("input", x, self.spec.input)?;
        check_finite("target", y, need / rows)?;
        if self.spec.loss == Loss::SoftmaxCrossEntropy {
            check_labels(y, self.spec.output)?;
        }
        Ok(rows)
    }

    fn check_dataset(&self, data: &Dataset) -> Result<()> {
        data.validate()?;
        ensure!(
            data.input_dim == self.spec.input,
            "data has {} features per row but the model's input size is {}",
            data.input_dim,
            self.spec.input
        );
        match (self.spec.loss, data.classes) {
            (Loss::SoftmaxCrossEntropy, Some(c)) => ensure!(
                c <= self.spec.output,
                "data has {c} classes but the model has {} outputs",
                self.spec.output
            ),
            (Loss::SoftmaxCrossEntropy, None) => {
                anyhow::bail!("cross-entropy needs class labels, the data has regression targets")
            }
            (Loss::MeanSquaredError, _) => ensure!(
                data.target_dim == self.spec.output,
                "data has {} targets per row but the model has {} outputs",
                data.target_dim,
                self.spec.output
            ),
        }
        Ok(())
    }

    /// The training plan for `rows` rows from layer `start`, with the batch `x`, `y`
    /// written to its input and target.
    fn load_batch(
        &mut self,
        x: &[f32],
        y: &[f32],
        rows: usize,
        start: usize,
    ) -> Result<(PlanId, &Plan)> {
        self.plan_at(rows, start)?;
        let (id, plan) = &self.plans[&(rows, start)];
        if let Some(e) = &plan.train_error {
            anyhow::bail!("{e}");
        }
        let (input, target) = (
            plan.input.expect("mlp plans have an input"),
            plan.target.expect("mlp plans have a target"),
        );
        self.engine.write(*id, input, x)?;
        self.engine.write(*id, target, y)?;
        Ok((*id, plan))
    }

    /// Enqueues one training step (forward, loss, backward, update) on a batch that was
    /// already validated. On the GPU nothing is waited for: the guard flags (and a
    /// statistics record) come back asynchronously.
    fn step_unchecked(&mut self, x: &[f32], y: &[f32], rows: usize, start: usize) -> Result<()> {
        let (_, plan) = self.load_batch(x, y, rows, start)?;
        // A data-parallel plan's whole step would run its split batch norms without the
        // statistics the exchanges write.
        ensure!(
            plan.parts.is_empty(),
            "this model trains data-parallel: its steps go through the exchanges with the \
             other ranks (fit), not one whole step"
        );
        let has_stats = plan.stats.is_some();
        let gathered = has_stats && self.health.due();
        self.apply_schedule()?;
        let stage = if gathered {
            Stage::TrainWithStats
        } else {
            Stage::Train
        };
        self.run_with_readback((rows, start), stage, gathered)?;
        self.steps_taken += 1;
        self.health_after_step()
    }

    /// The momentum (SGD, RMSprop) or beta1 (Adam family) of the most recent step when
    /// one-cycle cycles it.
    pub fn momentum(&self) -> Option<f32> {
        self.momentum
    }

    /// ReduceLROnPlateau's counters and rate, with a plateau schedule.
    pub fn plateau_state(&self) -> Option<PlateauState> {
        self.plateau
    }

    /// Restores ReduceLROnPlateau's counters (resuming from a checkpoint).
    pub fn set_plateau_state(&mut self, state: PlateauState) -> Result<()> {
        ensure!(
            self.plateau.is_some(),
            "the checkpoint holds reduce-on-plateau counters but the model's schedule is {:?}",
            self.spec.schedule
        );
        ensure!(
            state.lr.is_finite() && state.lr >= 0.0,
            "reduce-on-plateau learning rate must be a finite number >= 0, got {}",
            state.lr
        );
        self.plateau = Some(state);
        Ok(())
    }

    /// The learning rate of the most recent training step (the base rate before any).
    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// Epochs completed so far; the learning-rate schedule follows it. [`Model::fit`]
    /// advances it after each epoch.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Sets the epoch the schedule uses, for training loops written around
    /// [`Model::train_batch`].
    pub fn set_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    /// The global gradient norm `√Σ‖g‖²` before clipping, from the last training step, when
    /// the model clips by norm (`None` otherwise); 0 before the first step. Reading it
    /// waits for the device.
    pub fn last_grad_norm(&mut self) -> Result<Option<f32>> {
        if !matches!(self.spec.clip, Some(Clip::Norm(_))) {
            return Ok(None);
        }
        let slot = self.slot(GRAD_NORM_SLOT_NAME)?;
        Ok(Some(self.engine.read_persistent(slot)?[0]))
    }

    /// One training step on a batch: `x` is `rows × input`, `y` holds class indices
    /// (cross-entropy) or `rows × output` targets (MSE).
    pub fn train_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = self.check_batch(x, y)?;
        self.step_unchecked(x, y, rows, 0)
    }

    fn slot(&self, name: &str) -> Result<usize> {
        self.persistent
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("the model has no tensor named '{name}'"))
    }

    /// Fixes the learning rate from the next step on, overriding the schedule and warm-up
    /// (`None` returns to them). 0 is allowed: a step then computes gradients and batch
    /// statistics without moving any parameter.
    pub fn set_learning_rate(&mut self, lr: Option<f32>) -> Result<()> {
        if let Some(lr) = lr {
            ensure!(
                lr.is_finite() && lr >= 0.0,
                "learning rate must be a finite number >= 0, got {lr}"
            );
        }
        self.lr_override = lr;
        Ok(())
    }

    /// Reads the metric accumulator and resets it.
    pub fn take_metrics(&mut self) -> Result<Metrics> {
        let slot = self.slot(METRICS_SLOT_NAME)?;
        let values = self.engine.read_persistent(slot)?;
        self.engine.write_persistent(slot, &[0.0; METRICS_LEN])?;
        Ok(Metrics::from_accumulator(&values, self.spec.loss))
    }

    /// Trains for `opts.epochs` epochs, shuffling every epoch, and evaluates on `valid`
    /// after each. Metrics are read back once per epoch. `on_epoch` sees each report as
    /// it is made. Stops with an error when the loss becomes non-finite.
    pub fn fit(
        &mut self,
        train: &Dataset,
        valid: Option<&Dataset>,
        opts: &FitOptions,
        mut on_epoch: impl FnMut(&EpochReport),
    ) -> Result<Vec<EpochReport>> {
        self.fit_with_hook(train, valid, opts, |_, r| {
            on_epoch(r);
            Ok(())
        })
    }

    /// As [`Model::fit`], with a hook that gets the model after each epoch: to save a
    /// checkpoint, or to unfreeze layers (the frozen-output cache is rebuilt then). An
    /// error from the hook stops training.
    ///
    /// Each epoch's shuffle derives from `opts.shuffle_seed` and the epoch number, so a
    /// run resumed from a checkpoint at epoch `e` continues exactly as the uninterrupted
    /// run would have.
    pub fn fit_with_hook(
        &mut self,
        raw_train: &Dataset,
        raw_valid: Option<&Dataset>,
        opts: &FitOptions,
        mut hook: impl FnMut(&mut Model, &EpochReport) -> Result<()>,
    ) -> Result<Vec<EpochReport>> {
        ensure!(opts.batch_size > 0, "batch size must be at least 1");
        ensure!(opts.epochs > 0, "epochs must be at least 1");
        self.check_dataset(raw_train).context("training data")?;
        if let Some(v) = raw_valid {
            self.check_dataset(v).context("validation data")?;
        }
        // Data-parallel ranks each train on their shard of a global batch of
        // `batch_size` rows per rank; one process is the case of one rank.
        let world = self.dist.as_ref().map_or(1, |d| d.size());
        let global = opts.batch_size * world;
        let full = raw_train.rows / global;
        let partial = raw_train.rows % global;
        ensure!(
            !opts.drop_last || full > 0,
            "drop_last (--drop-last) leaves no batch: the {} training rows are fewer than one batch of {}",
            raw_train.rows,
            global
        );
        if self.spec.has_batch_norm() {
            ensure!(
                opts.batch_size >= 2 && full + usize::from(partial >= 2 * world) > 0,
                "batch norm needs at least 2 rows per training batch to estimate a variance, \
                 but the batch size is {} and there are {} training rows",
                opts.batch_size,
                raw_train.rows
            );
        }
        // Batch norm cannot train on one row; dropping that row each epoch (a different
        // one, as the order is shuffled) costs nothing measurable, while failing would end
        // a run for an accident of the data size.
        // Every rank must take part in every step, so a last batch too small to give each
        // rank a row (two with batch norm) is skipped as well.
        let least = world * if self.spec.has_batch_norm() { 2 } else { 1 };
        let skip_last = partial > 0 && (opts.drop_last || partial < least);
        if skip_last && !opts.drop_last && world > 1 {
            eprintln!(
                "warning: the last batch of each epoch has {partial} rows, fewer than {least} \
                 for {world} ranks; it is skipped"
            );
        } else if skip_last && !opts.drop_last {
            eprintln!(
                "warning: the last batch of each epoch has 1 row, which batch norm cannot train \
                 on; it is skipped (use drop_last / --drop-last to say so, or change the batch \
                 size)"
            );
        }
        let valid_rows = raw_valid.map_or(0, |v| v.rows);
        self.check_fit_resources(
            &[
                if full > 0 { opts.batch_size } else { 0 },
                if skip_last {
                    0
                } else {
                    partial.div_ceil(world)
                },
                valid_rows.min(opts.batch_size),
                valid_rows % opts.batch_size,
            ],
            if self.cache_frozen {
                self.spec.frozen_layers
            } else {
                0
            },
        )?;
        let per_epoch = full + usize::from(partial > 0 && !skip_last);
        self.check_schedule(raw_valid.is_some(), opts.epochs, per_epoch)?;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut reports = Vec::with_capacity(opts.epochs);
        // `(first layer, train, valid)`: with a cache, the frozen layers run once per
        // freeze setting instead of once per epoch.
        let mut cache: Option<(usize, Dataset, Option<Dataset>)> = None;
        self.take_metrics()?;
        self.health_begin_fit(opts.epochs, per_epoch)?;
        for _ in 0..opts.epochs {
            let start = if self.cache_frozen {
                self.spec.frozen_layers
            } else {
                0
            };
            if start > 0 && cache.as_ref().map(|c| c.0) != Some(start) {
                let t = self.frozen_features(raw_train, opts.batch_size)?;
                let v = raw_valid
                    .map(|v| self.frozen_features(v, opts.batch_size))
                    .transpose()?;
                cache = Some((start, t, v));
            }
            let (train, valid) = match &cache {
                Some((s, t, v)) if *s == start => (t, v.as_ref()),
                _ => (raw_train, raw_valid),
            };
            let mut rng = ChaCha8Rng::seed_from_u64(
                opts.shuffle_seed ^ (self.epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let mut order: Vec<usize> = (0..train.rows).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let clock = Instant::now();
            self.health_begin_epoch(self.epoch + 1);
            let used = if skip_last {
                full * global
            } else {
                order.len()
            };
            for chunk in order[..used].chunks(global) {
                let rank = self.dist.as_ref().map_or(0, |d| d.rank());
                let (lo, hi) = crate::distributed::shard(chunk.len(), rank, world);
                train.gather(&chunk[lo..hi], &mut x, &mut y);
                if self.dist.is_some() {
                    self.step_distributed(&x, &y, (lo, hi), chunk.len(), start)?;
                } else {
                    self.step_unchecked(&x, &y, chunk.len(), start)?;
                }
                self.health_step_done(hi - lo)?;
            }
            let metrics = self.take_train_metrics()?;
            self.check_replicas(&format!("in epoch {}", self.epoch + 1))?;
            self.health_end_epoch()?;
            let seconds = clock.elapsed().as_secs_f64();
            let epoch = self.epoch + 1;
            ensure!(
                metrics.loss.is_finite(),
                "training diverged in epoch {epoch}: the mean loss is {}; lower the learning rate \
                 or use an initialisation suited to the activation",
                metrics.loss
            );
            self.epoch = epoch;
            let valid = valid
                .map(|v| self.evaluate_at(v, opts.batch_size, start))
                .transpose()?
                .map(|v| self.root_metrics(v))
                .transpose()?;
            self.check_weights_after_epoch(epoch, start, valid.as_ref())?;
            if let (Some(p), Some(v), LrSchedule::Plateau(settings)) =
                (&mut self.plateau, &valid, &self.spec.schedule)
            {
                p.step(settings, v.loss as f64);
            }
            let report = EpochReport {
                epoch,
                train: metrics,
                valid,
                samples_per_sec: train.rows as f64 / seconds.max(1e-9),
                penalty: self.penalty()?,
                lr: self.lr,
            };
            self.health_epoch_report(&report)?;
            hook(self, &report)?;
            reports.push(report);
        }
        self.health_end_fit();
        Ok(reports)
    }

    /// Mean loss and accuracy on `data` without updating the model.
    pub fn evaluate(&mut self, data: &Dataset, batch_size: usize) -> Result<Metrics> {
        self.check_dataset(data)?;
        self.evaluate_at(data, batch_size, 0)
    }

    fn evaluate_at(&mut self, data: &Dataset, batch_size: usize, start: usize) -> Result<Metrics> {
        ensure!(batch_size > 0, "batch size must be at least 1");
        self.take_metrics()?;
        let index: Vec<usize> = (0..data.rows).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for chunk in index.chunks(batch_size) {
            data.gather(chunk, &mut x, &mut y);
            let (id, plan) = self.plan_at(chunk.len(), start)?;
            let (input, target) = (plan.input.expect("input"), plan.target.expect("target"));
            self.engine.write(id, input, &x)?;
            self.engine.write(id, target, &y)?;
            self.engine.run(id, Stage::Eval)?;
        }
        self.take_metrics()
    }

    /// Model outputs (logits for classification) for `x`, `rows × output`.
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let rows = self.rows_of(x)?;
        check_finite("input", x, self.spec.input)?;
        let (id, plan) = self.plan(rows)?;
        let (input, output) = (plan.input.expect("input"), plan.output.expect("output"));
        self.engine.write(id, input, x)?;
        self.engine.run(id, Stage::Predict)?;
        self.engine.read(id, output)
    }
}
