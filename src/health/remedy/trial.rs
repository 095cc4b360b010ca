//! Running the trials: each remedy trained from the same seed on the same batches for a
//! bounded number of steps and time, measured the same way.

use super::judge::{Measure, Trial, TrialOptions, TrialReport, Verdict};
use super::Remedy;
use crate::data::Dataset;
use crate::engine::Engine;
use crate::health::{NonFiniteError, StepProgress, StepStats, TrainObserver};
use crate::model::{FitOptions, LrSchedule, MlpSpec, Model};
use anyhow::Result;
use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::time::Instant;

/// Why the observer stopped `fit`.
#[derive(Debug)]
enum Stop {
    Steps,
    Budget,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Steps => "the trial's steps are done",
            Stop::Budget => "the trial's time budget is spent",
        })
    }
}

impl std::error::Error for Stop {}

/// Stops `fit` after `limit` steps or at `deadline`, whichever comes first.
struct Stopper {
    limit: usize,
    deadline: Instant,
    done: Rc<Cell<usize>>,
}

impl TrainObserver for Stopper {
    fn on_step(&mut self, _: &StepProgress) -> Result<()> {
        self.done.set(self.done.get() + 1);
        if self.done.get() >= self.limit {
            return Err(Stop::Steps.into());
        }
        if Instant::now() >= self.deadline {
            return Err(Stop::Budget.into());
        }
        Ok(())
    }
}

fn median_ratio(stats: &[StepStats]) -> Option<f32> {
    let mut r: Vec<f32> = stats[stats.len().saturating_sub(5)..]
        .iter()
        .filter_map(|s| s.first_last_ratio())
        .filter(|r| r.is_finite())
        .collect();
    r.sort_by(f32::total_cmp);
    r.get(r.len() / 2).copied()
}

/// Trains `spec` for up to `steps` steps (or until `deadline`) and measures it into `t`.
/// Errors other than divergence are returned for the caller to record.
fn measure_into(
    t: &mut Trial,
    spec: MlpSpec,
    engine: Box<dyn Engine>,
    (train, valid): (&Dataset, Option<&Dataset>),
    o: &TrialOptions,
    (steps, deadline): (usize, Instant),
) -> Result<()> {
    // A plateau schedule follows the validation loss after every epoch; other trials
    // validate once, after training.
    let fit_valid = valid.filter(|_| matches!(spec.schedule, LrSchedule::Plateau(_)));
    let mut m = Model::new(spec, engine)?;
    let bs = o.batch_size;
    t.loss_start = Some(m.evaluate(train, bs)?.loss);
    m.gather_stats_every(o.stats_every);
    let done = Rc::new(Cell::new(0));
    m.set_observer(Some(Box::new(Stopper {
        limit: steps,
        deadline,
        done: done.clone(),
    })));
    let per_epoch = train.rows.div_ceil(bs).max(1);
    let fit = FitOptions {
        epochs: steps.div_ceil(per_epoch),
        batch_size: bs,
        shuffle_seed: o.shuffle_seed,
        drop_last: false,
    };
    let result = m.fit(train, fit_valid, &fit, |_| {});
    m.set_observer(None);
    let mut outcome = match result {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<Stop>() {
            Some(Stop::Budget) => {
                t.cut_short = true;
                Ok(())
            }
            Some(Stop::Steps) => Ok(()),
            None => Err(e),
        },
    };
    t.steps = done.get();
    if outcome.is_ok() {
        // A step past the last epoch's guard check may have gone bad.
        outcome = m.wait_for_stats().and_then(|_| m.check_finite());
    }
    if let Err(e) = outcome {
        let Some(nf) = e.downcast_ref::<NonFiniteError>() else {
            return Err(e);
        };
        t.diverged = Some(nf.clone());
        t.nan = true;
        // The device counts steps from 1 for this fresh model; the bad step may have
        // stopped `fit` before the observer counted it.
        t.steps = (nf.step as usize).min(steps);
    }
    t.grad_ratio = median_ratio(m.stats_history());
    if t.nan {
        return Ok(());
    }
    let end = m.evaluate(train, bs)?;
    t.loss_end = Some(end.loss);
    if let Some(v) = valid {
        let vm = m.evaluate(v, bs)?;
        t.val_loss = Some(vm.loss);
        t.val_accuracy = vm.accuracy;
    }
    t.nan = [t.loss_end, t.val_loss, t.val_accuracy]
        .into_iter()
        .flatten()
        .any(|v| !v.is_finite());
    Ok(())
}

/// Trains the unchanged model (the baseline) and then `spec` with each remedy, every one
/// from the same seed on the same batches for the same number of steps, within the
/// budget, and ranks them. `make_engine` gives each trial a fresh engine; `on_done` sees
/// each trial as it finishes (the baseline first). A trial that diverges or fails is a
/// row of the report, not an error.
pub fn run_trials(
    spec: &MlpSpec,
    remedies: &[Remedy],
    train: &Dataset,
    valid: Option<&Dataset>,
    options: &TrialOptions,
    make_engine: &mut dyn FnMut() -> Result<Box<dyn Engine>>,
    mut on_done: impl FnMut(&Trial),
) -> Result<TrialReport> {
    options.validate()?;
    spec.validate()?;
    let valid = valid.filter(|v| v.rows > 0);
    let measure = match valid {
        Some(v) if v.classes.is_some() => Measure::ValidationAccuracy,
        Some(_) => Measure::ValidationLoss,
        None => Measure::TrainingLoss,
    };
    let clock = Instant::now();
    let mut steps = options.steps;
    let mut trials = Vec::with_capacity(remedies.len() + 1);
    let runs = std::iter::once((spec.clone(), Trial::empty("unchanged (baseline)", "", None)))
        .chain(remedies.iter().map(|r| {
            (
                r.apply(spec),
                Trial::empty(&r.label, &r.flags, Some(r.change)),
            )
        }));
    let total = remedies.len() + 1;
    for (i, (s, mut t)) in runs.enumerate() {
        let left = options.budget.saturating_sub(clock.elapsed());
        if left.is_zero() && i > 0 {
            on_done(&t);
            trials.push(t);
            continue;
        }
        let start = Instant::now();
        let deadline = start + left / (total - i) as u32;
        let result = make_engine()
            .and_then(|e| measure_into(&mut t, s, e, (train, valid), options, (steps, deadline)));
        t.seconds = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            if i == 0 {
                return Err(e.context("the unchanged model (baseline) of the remedy trials"));
            }
            t.error = Some(format!("{e:#}"));
            t.verdict = Verdict::Failed;
        }
        if i == 0 && t.cut_short {
            // The remedies train as many steps as the baseline managed, so they are
            // compared at equal length.
            steps = t.steps.max(1);
        }
        on_done(&t);
        trials.push(t);
    }
    TrialReport::judge(
        trials,
        measure,
        options.clone(),
        steps,
        clock.elapsed().as_secs_f64(),
    )
}
