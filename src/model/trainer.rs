//! [`Model`]: a compiled MLP on one backend, with training, evaluation and prediction.

use crate::data::{check_finite, check_labels, Dataset};
use crate::engine::{create_engine, BackendChoice, Engine, PlanId};
use crate::graph::{mlp, target_len, Hyper, Loss, PersistentDesc, Plan, Stage, METRICS_LEN};
use crate::model::optim::is_optimizer_state;
use crate::model::spec::GRAD_NORM_SLOT_NAME;
use crate::model::{Clip, MlpSpec};
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
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 10,
            batch_size: 64,
            shuffle_seed: 0,
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
/// let opts = FitOptions { epochs: 20, batch_size: 64, shuffle_seed: 7 };
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
    /// Compiled plans by batch size: the last partial batch of an epoch gets its own.
    plans: HashMap<usize, (PlanId, Plan)>,
    /// The learning rate last written to the device's hyper-parameter block.
    lr: f32,
    /// Epochs completed, which the learning-rate schedule follows.
    epoch: usize,
    /// Training steps enqueued, which the warm-up follows (the device counts them too).
    steps_taken: u64,
}

impl Model {
    /// Compiles `spec` onto `engine`, uploading the seeded initial parameters.
    pub fn new(spec: MlpSpec, mut engine: Box<dyn Engine>) -> Result<Model> {
        spec.validate()?;
        let persistent = spec.persistent();
        engine.init_persistent(&persistent)?;
        let lr = spec.optimizer.lr();
        engine.set_hyper(Hyper { lr })?;
        Ok(Model {
            spec,
            engine,
            persistent,
            plans: HashMap::new(),
            lr,
            epoch: 0,
            steps_taken: 0,
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
        if !self.plans.contains_key(&rows) {
            let plan = mlp::build(&self.spec, &self.persistent, rows)?;
            let id = self.engine.compile(&plan)?;
            self.plans.insert(rows, (id, plan));
        }
        let (id, plan) = &self.plans[&rows];
        Ok((*id, plan))
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

    /// Enqueues one training step (forward, loss, backward, update) on a batch that was
    /// already validated. On the GPU nothing is read back.
    fn step_unchecked(&mut self, x: &[f32], y: &[f32], rows: usize) -> Result<()> {
        let (id, plan) = self.plan(rows)?;
        let (input, target) = (
            plan.input.expect("mlp plans have an input"),
            plan.target.expect("mlp plans have a target"),
        );
        self.engine.write(id, input, x)?;
        self.engine.write(id, target, y)?;
        self.apply_schedule()?;
        self.engine.run(id, Stage::Train)?;
        self.steps_taken += 1;
        Ok(())
    }

    /// Writes the coming step's learning rate into the hyper-parameter block when the
    /// schedule changed it: a 16-byte write, with nothing rebuilt.
    fn apply_schedule(&mut self) -> Result<()> {
        let lr = self.spec.lr_at(self.epoch, self.steps_taken + 1);
        if lr != self.lr {
            self.engine.set_hyper(Hyper { lr })?;
            self.lr = lr;
        }
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
        Ok(Some(self.read_tensor(1, GRAD_NORM_SLOT_NAME)?[0]))
    }

    /// Optimizer state (momentum buffers, Adam's moments), named `{parameter}.{key}` with
    /// torch's state keys.
    pub fn optimizer_state(&mut self) -> Result<Vec<NamedTensor>> {
        self.persistent_where(is_optimizer_state)
    }

    fn persistent_where(&mut self, keep: impl Fn(&str) -> bool) -> Result<Vec<NamedTensor>> {
        let (id, plan) = self.plan(1)?;
        let named: Vec<(usize, String, Vec<usize>)> = plan
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.storage, crate::graph::Storage::Persistent(_)))
            .filter(|(_, t)| keep(&t.name))
            .map(|(i, t)| (i, t.name.clone(), t.shape.clone()))
            .collect();
        named
            .into_iter()
            .map(|(i, name, shape)| {
                Ok(NamedTensor {
                    values: self.engine.read(id, i)?,
                    name,
                    shape,
                })
            })
            .collect()
    }

    /// One training step on a batch: `x` is `rows × input`, `y` holds class indices
    /// (cross-entropy) or `rows × output` targets (MSE).
    pub fn train_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = self.check_batch(x, y)?;
        self.step_unchecked(x, y, rows)
    }

    /// Reads the metric accumulator and resets it.
    pub fn take_metrics(&mut self) -> Result<Metrics> {
        let (id, plan) = self.plan(1)?;
        let m = plan.metrics.expect("mlp plans have metrics");
        let values = self.engine.read(id, m)?;
        self.engine.write(id, m, &[0.0; METRICS_LEN])?;
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
        ensure!(opts.batch_size > 0, "batch size must be at least 1");
        ensure!(opts.epochs > 0, "epochs must be at least 1");
        self.check_dataset(train).context("training data")?;
        if let Some(v) = valid {
            self.check_dataset(v).context("validation data")?;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(opts.shuffle_seed);
        let mut order: Vec<usize> = (0..train.rows).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut reports = Vec::with_capacity(opts.epochs);
        self.take_metrics()?;
        for epoch in 1..=opts.epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let start = Instant::now();
            for chunk in order.chunks(opts.batch_size) {
                train.gather(chunk, &mut x, &mut y);
                self.step_unchecked(&x, &y, chunk.len())?;
            }
            self.epoch += 1;
            let metrics = self.take_metrics()?;
            let seconds = start.elapsed().as_secs_f64();
            ensure!(
                metrics.loss.is_finite(),
                "training diverged in epoch {epoch}: the mean loss is {}; lower the learning rate \
                 or use an initialisation suited to the activation",
                metrics.loss
            );
            let valid = valid
                .map(|v| self.evaluate(v, opts.batch_size))
                .transpose()?;
            let report = EpochReport {
                epoch,
                train: metrics,
                valid,
                samples_per_sec: train.rows as f64 / seconds.max(1e-9),
            };
            on_epoch(&report);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Mean loss and accuracy on `data` without updating the model.
    pub fn evaluate(&mut self, data: &Dataset, batch_size: usize) -> Result<Metrics> {
        ensure!(batch_size > 0, "batch size must be at least 1");
        self.check_dataset(data)?;
        self.take_metrics()?;
        let index: Vec<usize> = (0..data.rows).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for chunk in index.chunks(batch_size) {
            data.gather(chunk, &mut x, &mut y);
            let (id, plan) = self.plan(chunk.len())?;
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

    /// Current parameters in `state_dict()` order.
    pub fn parameters(&mut self) -> Result<Vec<NamedTensor>> {
        let (id, plan) = self.plan(1)?;
        let named: Vec<(usize, String, Vec<usize>)> = plan
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.name.starts_with("layers."))
            .filter(|(_, t)| !is_optimizer_state(&t.name))
            .filter(|(_, t)| matches!(t.storage, crate::graph::Storage::Persistent(_)))
            .map(|(i, t)| (i, t.name.clone(), t.shape.clone()))
            .collect();
        named
            .into_iter()
            .map(|(i, name, shape)| {
                Ok(NamedTensor {
                    values: self.engine.read(id, i)?,
                    name,
                    shape,
                })
            })
            .collect()
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
        let v = self.read_tensor(1, crate::model::spec::STEP_SLOT_NAME)?;
        Ok(v[0].to_bits() as u64)
    }

    /// Overwrites a parameter by name (e.g. for finite-difference checks).
    pub fn set_parameter(&mut self, name: &str, values: &[f32]) -> Result<()> {
        check_finite(name, values, 1)?;
        let (id, plan) = self.plan(1)?;
        let t = plan
            .find(name)
            .with_context(|| format!("the model has no parameter '{name}'"))?;
        self.engine.write(id, t, values)
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
