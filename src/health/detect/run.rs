//! Verdicts on the whole run, from the statistics records and the epoch reports together:
//! loss spikes, a final loss above the start, a rising validation loss, accuracy at chance.

use super::advice::Advice;
use super::{detect, DetectorConfig, Warning, WarningKind, SPIKE_HISTORY};
use crate::health::StepStats;
use crate::model::{EpochReport, MlpSpec};
use crate::ops::Loss;

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
            remedies: advice.rising_validation(),
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
