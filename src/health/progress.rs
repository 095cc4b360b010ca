//! A progress bar for [`crate::Model::fit`] (indicatif): epoch, step, latest loss and
//! accuracy, samples per second and the time left. Hidden when stderr is not a terminal.

use super::{StepProgress, TrainObserver};
use crate::model::EpochReport;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Progress of one `fit`. Clone the [`ProgressBar`] from [`TrainProgress::bar`] to print
/// above it (`bar.println`) or to clear it when `fit` returns.
pub struct TrainProgress {
    bar: ProgressBar,
    started: Option<Instant>,
    rows: usize,
}

impl TrainProgress {
    /// A bar on stderr, or a hidden one when `enabled` is false or stderr is not a
    /// terminal (logs and pipes get no control characters).
    pub fn new(enabled: bool) -> TrainProgress {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>12} [{bar:30.cyan/blue}] {pos}/{len} steps {msg} ETA {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        TrainProgress {
            bar,
            started: None,
            rows: 0,
        }
    }

    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }
}

impl TrainObserver for TrainProgress {
    fn on_step(&mut self, p: &StepProgress) -> anyhow::Result<()> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let total = (p.epochs * p.steps_per_epoch) as u64;
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
        self.rows += p.rows;
        self.bar
            .set_position(((p.epoch - 1) * p.steps_per_epoch + p.step) as u64);
        self.bar
            .set_prefix(format!("epoch {}/{}", p.epoch, p.epochs));
        let rate = self.rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let loss = p.loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        let acc = p
            .accuracy
            .map_or(String::new(), |a| format!(" acc {:.1}%", 100.0 * a));
        self.bar.set_message(format!(
            "step {}/{} loss {loss}{acc} {rate:.0} samples/s",
            p.step, p.steps_per_epoch
        ));
        Ok(())
    }

    fn on_epoch(&mut self, _report: &EpochReport) -> anyhow::Result<()> {
        self.bar.tick();
        Ok(())
    }
}
