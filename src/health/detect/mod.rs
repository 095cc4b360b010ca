//! Detectors over the statistics history (`detect`), verdicts on the whole run
//! (`run::detect_run`), and the unmeasured advice attached to them (`advice`).

mod advice;
mod run;

pub use run::detect_run;

use super::StepStats;
use crate::model::MlpSpec;
use advice::Advice;
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
