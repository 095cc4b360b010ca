//! Detectors over the statistics history, and advice fitted to the model's configuration.

use super::StepStats;
use crate::model::{EpochReport, Init, MlpSpec};
use crate::ops::Activation;
use crate::ops::Loss;
use serde::Serialize;
use std::fmt;

/// Thresholds of the detectors. A condition is *sustained* when it holds in every record
/// of the window: the last `window` records (all of them when there are fewer).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DetectorConfig {
    pub window: usize,
    /// Vanishing: the lowest trained layer's ‖∇W‖ below this fraction of the output
    /// layer's, in the median record of the window. Healthy networks measured here sit
    /// between 0.1 and 1 (the first layer's gradient is smaller only because it reads two
    /// input features against tens of units further up); a 20-layer sigmoid network with
    /// N(0, 1) weights sits near 1e-3.
    pub vanishing_ratio: f32,
    /// Exploding: the total gradient norm growing by at least this factor from the first
    /// to the last record of the window.
    pub exploding_factor: f32,
    /// Dying ReLU: a layer whose mean dead-unit fraction over the window is at least this.
    pub dead_fraction: f32,
    /// Saturation: a sigmoid or tanh layer whose mean saturated fraction over the window
    /// is at least this.
    pub saturated_fraction: f32,
    /// Loss spike: a statistics record whose batch loss is at least this many times the
    /// median of the records before it (at least [`SPIKE_HISTORY`] of them). Batch losses
    /// of a healthy run scatter within about 2× of their median on the data sets tried.
    pub spike_factor: f32,
    /// Rising validation loss: the last epoch's validation loss at least this many times
    /// the best earlier one.
    pub rising_factor: f32,
}

/// Records before a loss can be judged a spike: fewer give no stable median.
pub const SPIKE_HISTORY: usize = 4;

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            window: 5,
            vanishing_ratio: 1e-2,
            exploding_factor: 10.0,
            dead_fraction: 0.5,
            saturated_fraction: 0.5,
            spike_factor: 4.0,
            rising_factor: 1.5,
        }
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.window >= 1,
            "the detector window must be at least 1 record"
        );
        let positive = |name: &str, v: f32| {
            anyhow::ensure!(
                v.is_finite() && v > 0.0,
                "{name} must be a finite number > 0, got {v}"
            );
            Ok(())
        };
        positive("the vanishing ratio", self.vanishing_ratio)?;
        for (name, v) in [
            ("the spike factor", self.spike_factor),
            ("the rising factor", self.rising_factor),
        ] {
            anyhow::ensure!(
                v.is_finite() && v > 1.0,
                "{name} must be a finite number > 1, got {v}"
            );
        }
        anyhow::ensure!(
            self.exploding_factor.is_finite() && self.exploding_factor > 1.0,
            "the exploding factor must be a finite number > 1, got {}",
            self.exploding_factor
        );
        for (name, v) in [
            ("the dead fraction", self.dead_fraction),
            ("the saturated fraction", self.saturated_fraction),
        ] {
            anyhow::ensure!(v > 0.0 && v <= 1.0, "{name} must be in (0, 1], got {v}");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    Vanishing,
    Exploding,
    NonFinite,
    DyingRelu,
    Saturation,
    LossSpike,
    Diverging,
    RisingValidationLoss,
    AccuracyCollapse,
}

impl WarningKind {
    pub fn name(self) -> &'static str {
        match self {
            WarningKind::Vanishing => "vanishing gradients",
            WarningKind::Exploding => "exploding gradients",
            WarningKind::NonFinite => "non-finite values",
            WarningKind::DyingRelu => "dying ReLU",
            WarningKind::Saturation => "saturated activations",
            WarningKind::LossSpike => "loss spike",
            WarningKind::Diverging => "diverging loss",
            WarningKind::RisingValidationLoss => "rising validation loss",
            WarningKind::AccuracyCollapse => "accuracy at chance",
        }
    }
}

/// One finding: what, where, the numbers behind it, and what to try, most effective
/// first, leaving out what the model already does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub layers: Vec<usize>,
    pub evidence: String,
    pub remedies: Vec<String>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.layers.is_empty() {
            // Run-level verdicts (loss spikes, divergence) belong to no layer.
            write!(f, "{}: {}", self.kind.name(), self.evidence)?;
        } else {
            write!(
                f,
                "{} in {}: {}",
                self.kind.name(),
                layer_list(&self.layers),
                self.evidence
            )?;
        }
        for (i, r) in self.remedies.iter().enumerate() {
            write!(f, "\n  {}. {r}", i + 1)?;
        }
        Ok(())
    }
}

/// "layer 3", "layers 0-4", "layers 1, 5, 9".
pub fn layer_list(layers: &[usize]) -> String {
    match layers {
        [] => "the model".to_string(),
        [l] => format!("layer {l}"),
        _ if layers.windows(2).all(|w| w[1] == w[0] + 1) => {
            format!("layers {}-{}", layers[0], layers[layers.len() - 1])
        }
        _ => format!(
            "layers {}",
            layers
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs every detector over `history` (oldest first) for a model built from `spec`.
pub fn detect(spec: &MlpSpec, history: &[StepStats], cfg: &DetectorConfig) -> Vec<Warning> {
    let mut out = Vec::new();
    if history.is_empty() {
        return out;
    }
    let window = &history[history.len().saturating_sub(cfg.window.max(1))..];
    let advice = Advice::new(spec);

    if let Some(bad) = history.iter().find(|s| s.nonfinite() > 0) {
        let layers: Vec<usize> = bad
            .layers
            .iter()
            .filter(|l| l.act_nonfinite + l.grad_nonfinite > 0)
            .map(|l| l.layer)
            .collect();
        // The highest layers first: values usually go bad at the top of the backward pass.
        let detail: Vec<String> = bad
            .layers
            .iter()
            .rev()
            .filter(|l| l.act_nonfinite + l.grad_nonfinite > 0)
            .take(3)
            .map(|l| {
                format!(
                    "layer {}: {} in its output, {} in its gradients",
                    l.layer, l.act_nonfinite, l.grad_nonfinite
                )
            })
            .collect();
        let more = layers.len().saturating_sub(detail.len());
        out.push(Warning {
            kind: WarningKind::NonFinite,
            evidence: format!(
                "NaN or inf elements at step {} (batch loss {}){}{}{}",
                bad.step,
                bad.loss,
                if detail.is_empty() { "" } else { ": " },
                detail.join("; "),
                if more > 0 {
                    format!("; {more} more layers")
                } else {
                    String::new()
                }
            ),
            layers,
            remedies: advice.exploding(),
        });
    }

    if let Some(w) = vanishing(window, cfg) {
        out.push(Warning {
            remedies: advice.vanishing(),
            ..w
        });
    }
    if let Some(w) = exploding(window, cfg) {
        // Non-finite values already say the same, louder.
        if !out.iter().any(|w| w.kind == WarningKind::NonFinite) {
            out.push(Warning {
                remedies: advice.exploding(),
                ..w
            });
        }
    }
    let mean_of = |get: &dyn Fn(&super::LayerStats) -> Option<f32>, l: usize| -> Option<f32> {
        let v: Vec<f32> = window
            .iter()
            .filter_map(|s| s.layers.get(l).and_then(get))
            .collect();
        (!v.is_empty() && v.iter().all(|x| x.is_finite()))
            .then(|| v.iter().sum::<f32>() / v.len() as f32)
    };
    let layers = history[0].layers.len();
    // Only a zero slope kills a unit; leaky variants keep passing a scaled gradient.
    let rectifier = spec.activation.negative_slope() == Some(0.0);
    let dead: Vec<(usize, f32)> = (0..layers)
        .filter_map(|l| mean_of(&|s| s.dead, l).map(|d| (l, d)))
        .filter(|&(_, d)| rectifier && d >= cfg.dead_fraction)
        .collect();
    if !dead.is_empty() {
        out.push(Warning {
            kind: WarningKind::DyingRelu,
            layers: dead.iter().map(|d| d.0).collect(),
            evidence: format!(
                "units whose output is zero for every row of the batch, mean over the last {} \
                 records: {} (threshold {:.0}%); they pass no gradient and stop learning",
                window.len(),
                percent_list(&dead),
                100.0 * cfg.dead_fraction
            ),
            remedies: advice.dying(),
        });
    }
    let saturated: Vec<(usize, f32)> = (0..layers)
        .filter_map(|l| mean_of(&|s| s.saturated, l).map(|d| (l, d)))
        .filter(|&(_, d)| d >= cfg.saturated_fraction)
        .collect();
    if !saturated.is_empty() {
        out.push(Warning {
            kind: WarningKind::Saturation,
            layers: saturated.iter().map(|d| d.0).collect(),
            evidence: format!(
                "{} outputs within {:.0}% of their bounds, where the derivative is nearly \
                 zero, mean over the last {} records: {} (threshold {:.0}%)",
                spec.activation,
                100.0 * crate::model::health::layout::SATURATION_EPS,
                window.len(),
                percent_list(&saturated),
                100.0 * cfg.saturated_fraction
            ),
            remedies: advice.vanishing(),
        });
    }
    out
}

/// [`detect`] over the statistics, plus the verdicts that need the whole run: loss spikes
/// in the statistics records, a final loss above the starting one, a rising validation
/// loss and accuracy collapsing to chance, from the epoch reports (oldest first).
pub fn detect_run(
    spec: &MlpSpec,
    history: &[StepStats],
    epochs: &[EpochReport],
    cfg: &DetectorConfig,
) -> Vec<Warning> {
    let mut out = detect(spec, history, cfg);
    let advice = Advice::new(spec);
    let diverging = advice.exploding();
    if let Some(w) = loss_spike(history, cfg) {
        out.push(Warning {
            remedies: diverging.clone(),
            ..w
        });
    }
    if let Some(w) = final_above_start(history, epochs) {
        out.push(Warning {
            remedies: diverging.clone(),
            ..w
        });
    }
    if let Some(w) = rising_validation(epochs, cfg) {
        out.push(Warning {
            remedies: diverging.clone(),
            ..w
        });
    }
    if spec.loss == Loss::SoftmaxCrossEntropy {
        if let Some(w) = collapse(epochs, spec.output) {
            out.push(Warning {
                remedies: diverging,
                ..w
            });
        }
    }
    out
}

fn median(v: &[f32]) -> Option<f32> {
    let mut v: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(v[v.len() / 2])
}

/// The first record whose batch loss is `spike_factor` times the median of those before
/// it (the last 20 of them, so a slow trend does not count).
fn loss_spike(history: &[StepStats], cfg: &DetectorConfig) -> Option<Warning> {
    let losses: Vec<f32> = history.iter().map(|s| s.loss).collect();
    let (i, m) = (SPIKE_HISTORY..losses.len()).find_map(|i| {
        let m = median(&losses[i.saturating_sub(20)..i])?;
        let l = losses[i];
        (m > 0.0 && (!l.is_finite() || l >= cfg.spike_factor * m)).then_some((i, m))
    })?;
    let spikes = (i..losses.len())
        .filter(|&j| !losses[j].is_finite() || losses[j] >= cfg.spike_factor * m)
        .count();
    Some(Warning {
        kind: WarningKind::LossSpike,
        layers: Vec::new(),
        evidence: format!(
            "the batch loss jumped to {:.4} at step {}, {:.1}× the median {:.4} of the records \
             before it (threshold {}×); {spikes} of the {} records from there on are as high",
            losses[i],
            history[i].step,
            losses[i] / m,
            m,
            cfg.spike_factor,
            losses.len() - i
        ),
        remedies: Vec::new(),
    })
}

/// Training loss at the end above its value at the start: the first statistics record
/// (the loss of the untrained model on one batch) or the first epoch's mean, against the
/// last epoch's mean (or the median of the last five records without epochs).
fn final_above_start(history: &[StepStats], epochs: &[EpochReport]) -> Option<Warning> {
    let (start, start_what) = match (history.first(), epochs.first()) {
        (Some(s), _) => (
            s.loss,
            format!("{:.4} (batch loss at step {})", s.loss, s.step),
        ),
        (None, Some(e)) if epochs.len() > 1 => (
            e.train.loss,
            format!("{:.4} (mean over epoch {})", e.train.loss, e.epoch),
        ),
        _ => return None,
    };
    let (end, end_what) = match epochs.last() {
        Some(e) => (
            e.train.loss,
            format!("{:.4} (mean over epoch {})", e.train.loss, e.epoch),
        ),
        None => {
            let tail: Vec<f32> = history[history.len().saturating_sub(5)..]
                .iter()
                .map(|s| s.loss)
                .collect();
            let m = median(&tail)?;
            (
                m,
                format!("{m:.4} (median of the last {} records)", tail.len()),
            )
        }
    };
    if !start.is_finite() || (end.is_finite() && end <= start) {
        return None;
    }
    Some(Warning {
        kind: WarningKind::Diverging,
        layers: Vec::new(),
        evidence: format!(
            "the training loss ended at {end_what}, above where it started, {start_what}: \
             training made the model worse"
        ),
        remedies: Vec::new(),
    })
}

/// The last epoch's validation loss `rising_factor` times the best earlier one.
fn rising_validation(epochs: &[EpochReport], cfg: &DetectorConfig) -> Option<Warning> {
    let val: Vec<(usize, f32)> = epochs
        .iter()
        .filter_map(|e| e.valid.map(|v| (e.epoch, v.loss)))
        .collect();
    let ((last_epoch, last), earlier) = val.split_last()?;
    let &(best_epoch, best) = earlier
        .iter()
        .filter(|v| v.1.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    if last.is_finite() && *last < cfg.rising_factor * best {
        return None;
    }
    let path: Vec<String> = val.iter().map(|v| format!("{:.4}", v.1)).collect();
    Some(Warning {
        kind: WarningKind::RisingValidationLoss,
        layers: Vec::new(),
        evidence: format!(
            "the validation loss rose from its best {best:.4} (epoch {best_epoch}) to {last:.4} \
             (epoch {last_epoch}), {:.1}× (threshold {}×); by epoch: {}",
            last / best,
            cfg.rising_factor,
            path.join(" → ")
        ),
        remedies: Vec::new(),
    })
}

/// Accuracy at the last epoch (validation where there is some) at about chance: within a
/// tenth of the way from chance (1/classes) to perfect. Reported as a collapse when an
/// earlier epoch was at least 10 points better, else as no learning at all.
fn collapse(epochs: &[EpochReport], classes: usize) -> Option<Warning> {
    let acc: Vec<(usize, f32)> = epochs
        .iter()
        .filter_map(|e| e.valid.unwrap_or(e.train).accuracy.map(|a| (e.epoch, a)))
        .collect();
    let ((last_epoch, last), earlier) = acc.split_last()?;
    let chance = 1.0 / classes.max(2) as f32;
    if !last.is_finite() || *last > chance + 0.1 * (1.0 - chance) {
        return None;
    }
    let which = if epochs.last()?.valid.is_some() {
        "validation"
    } else {
        "training"
    };
    let best = earlier.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    let story = match best {
        Some(&(e, b)) if b >= last + 0.1 => format!(
            "{which} accuracy fell from {:.1}% (epoch {e}) to {:.1}% (epoch {last_epoch})",
            100.0 * b,
            100.0 * last
        ),
        _ => format!(
            "{which} accuracy is {:.1}% after {} epoch{}, never clearly above chance",
            100.0 * last,
            acc.len(),
            if acc.len() == 1 { "" } else { "s" }
        ),
    };
    Some(Warning {
        kind: WarningKind::AccuracyCollapse,
        layers: Vec::new(),
        evidence: format!(
            "{story}: about chance for {classes} classes ({:.1}%); the model predicts no \
             better than a guess",
            100.0 * chance
        ),
        remedies: Vec::new(),
    })
}

fn percent_list(v: &[(usize, f32)]) -> String {
    let shown: Vec<String> = v
        .iter()
        .take(6)
        .map(|(l, d)| format!("layer {l} {:.0}%", 100.0 * d))
        .collect();
    let more = if v.len() > 6 {
        format!(" and {} more layers", v.len() - 6)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

fn vanishing(window: &[StepStats], cfg: &DetectorConfig) -> Option<Warning> {
    let last = window.last()?;
    let out_norm = last.layers.last()?.weight_grad_norm?;
    // A zero output-layer gradient means the layers below output nothing at all (dead
    // units, reported as such), not that the gradient vanished on its way down.
    if !(out_norm.is_finite() && out_norm > 0.0) {
        return None;
    }
    let mut ratios: Vec<f32> = window
        .iter()
        .map(|s| s.first_last_ratio())
        .collect::<Option<_>>()?;
    if ratios.iter().any(|r| !r.is_finite()) {
        return None;
    }
    let latest = ratios[ratios.len() - 1];
    // The median, so one noisy batch neither hides nor fakes a sustained condition.
    ratios.sort_by(f32::total_cmp);
    let median = ratios[ratios.len() / 2];
    if median >= cfg.vanishing_ratio {
        return None;
    }
    let first = last.layers.iter().find(|l| l.weight_grad_norm.is_some())?;
    // The layers whose gradient is below the threshold relative to the output layer.
    let layers: Vec<usize> = last
        .layers
        .iter()
        .filter(|l| {
            l.weight_grad_norm
                .is_some_and(|g| g < cfg.vanishing_ratio * out_norm)
        })
        .map(|l| l.layer)
        .collect();
    Some(Warning {
        kind: WarningKind::Vanishing,
        layers,
        evidence: format!(
            "‖∇W‖ of layer {} is {:.2e} against {:.2e} at the output layer {} (ratio {:.1e}); \
             the median ratio over the last {} records is {:.1e}, below {:.0e}",
            first.layer,
            first.weight_grad_norm.unwrap_or(0.0),
            out_norm,
            last.layers.len() - 1,
            latest,
            window.len(),
            median,
            cfg.vanishing_ratio,
        ),
        remedies: Vec::new(),
    })
}

fn exploding(window: &[StepStats], cfg: &DetectorConfig) -> Option<Warning> {
    if window.len() < 2 {
        return None;
    }
    let (a, b) = (window.first()?, window.last()?);
    let (n0, n1) = (a.total_grad_norm(), b.total_grad_norm());
    if !(n0.is_finite() && n1.is_finite() && n0 > 0.0 && n1 >= cfg.exploding_factor * n0) {
        return None;
    }
    let layers: Vec<usize> = a
        .layers
        .iter()
        .zip(&b.layers)
        .filter(|(x, y)| match (x.weight_grad_norm, y.weight_grad_norm) {
            (Some(g0), Some(g1)) => g0 > 0.0 && g1 >= cfg.exploding_factor * g0,
            _ => false,
        })
        .map(|(x, _)| x.layer)
        .collect();
    Some(Warning {
        kind: WarningKind::Exploding,
        layers,
        evidence: format!(
            "the total gradient norm grew {:.0}× from {:.2e} at step {} to {:.2e} at step {} \
             (threshold {}× over {} records)",
            n1 / n0,
            n0,
            a.step,
            n1,
            b.step,
            cfg.exploding_factor,
            window.len()
        ),
        remedies: Vec::new(),
    })
}

/// Init families, for comparing what the model uses with what its activation needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InitFamily {
    He,
    Glorot,
    Lecun,
    Other,
}

fn family(init: Init) -> InitFamily {
    match init {
        Init::HeNormal | Init::HeUniform => InitFamily::He,
        Init::GlorotNormal | Init::GlorotUniform => InitFamily::Glorot,
        Init::LecunNormal | Init::LecunUniform => InitFamily::Lecun,
        _ => InitFamily::Other,
    }
}

/// Remedies for a given model, each only when the model does not already do it.
struct Advice<'a> {
    spec: &'a MlpSpec,
    /// The init the model actually uses (`auto` resolved).
    init: Init,
    suited: Init,
}

impl<'a> Advice<'a> {
    fn new(spec: &'a MlpSpec) -> Self {
        let suited = Init::default_for(spec.activation);
        let init = match spec.init {
            Init::Auto => suited,
            other => other,
        };
        Advice { spec, init, suited }
    }

    fn init(&self) -> Option<String> {
        (family(self.init) != family(self.suited)).then(|| {
            let why = match family(self.suited) {
                InitFamily::He => "He scales weights by √(2/fan_in) so ReLU layers keep their variance",
                InitFamily::Lecun => "LeCun scales weights by √(1/fan_in), which SELU's self-normalisation assumes",
                _ => "Glorot scales weights by √(2/(fan_in+fan_out)) so signals neither shrink nor grow through the layer",
            };
            format!(
                "initialise the weights for {}: {} instead of {} (--init {}); {why}",
                self.spec.activation, self.suited, self.init, self.suited
            )
        })
    }

    fn saturating(&self) -> bool {
        self.spec.activation.output_bounds().is_some()
    }

    fn non_saturating(&self) -> Option<String> {
        self.saturating().then(|| {
            format!(
                "use a non-saturating activation: relu or elu with he-normal init \
                 (--activation relu --init he-normal), or selu with lecun-normal; {}'s \
                 derivative is at most {} and near zero when saturated, so gradients shrink \
                 at every layer",
                self.spec.activation,
                if self.spec.activation == Activation::Sigmoid {
                    "0.25"
                } else {
                    "1"
                }
            )
        })
    }

    fn batch_norm(&self) -> Option<String> {
        self.spec.batch_norm.is_none().then(|| {
            "add batch normalization before each activation (--batch-norm before): it keeps \
             every layer's inputs at zero mean and unit variance"
                .to_string()
        })
    }

    fn residual(&self) -> Option<String> {
        self.spec.residual_every.is_none().then(|| {
            "add skip connections (--residual 2): they carry gradients past the layers that \
             shrink them"
                .to_string()
        })
    }

    fn leaky(&self) -> Option<String> {
        (self.spec.activation == Activation::Relu).then(|| {
            "use leaky ReLU or ELU (--activation leaky-relu or elu): units on the negative \
             side keep a gradient and can recover"
                .to_string()
        })
    }

    fn clip(&self) -> Option<String> {
        self.spec.clip.is_none().then(|| {
            "clip the gradient norm (--clip-norm 1): one bad batch can no longer throw the \
             weights far"
                .to_string()
        })
    }

    fn lower_lr(&self) -> Option<String> {
        let lr = self.spec.optimizer.lr();
        Some(format!(
            "lower the learning rate from {lr} to about {} (--lr {})",
            lr / 10.0,
            lr / 10.0
        ))
    }

    fn vanishing(&self) -> Vec<String> {
        [
            self.init(),
            self.non_saturating(),
            self.batch_norm(),
            self.residual(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn exploding(&self) -> Vec<String> {
        [self.init(), self.batch_norm(), self.clip(), self.lower_lr()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn dying(&self) -> Vec<String> {
        [
            self.init(),
            self.leaky(),
            self.batch_norm(),
            self.lower_lr(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
