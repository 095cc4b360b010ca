//! The learning-rate schedule as the training loop drives it: checked before a fit,
//! written to the device before each step.

use super::Model;
use crate::model::optim::{warmup_factor, LrSchedule};
use crate::tensor::Hyper;
use anyhow::{ensure, Result};

impl Model {
    /// Writes the coming step's learning rate (and one-cycle's momentum) into the
    /// hyper-parameter block when the schedule changed them: a 16-byte write, with nothing
    /// rebuilt.
    pub(super) fn apply_schedule(&mut self) -> Result<()> {
        let step = self.steps_taken + 1;
        if let LrSchedule::OneCycle(c) = &self.spec.schedule {
            ensure!(
                step <= c.total_steps as u64,
                "training step {step} is past the one-cycle schedule's total_steps {} \
                 (torch's OneCycleLR raises there too)",
                c.total_steps
            );
        }
        let lr = self.lr_override.unwrap_or_else(|| self.scheduled_lr(step));
        let momentum = self.spec.schedule.momentum(step).map(|m| m as f32);
        if lr != self.lr || momentum != self.momentum {
            self.engine.set_hyper(Hyper { lr, momentum })?;
            self.lr = lr;
            self.momentum = momentum;
        }
        Ok(())
    }

    /// The schedule's rate for training step `step` (1 on the first), warm-up included.
    fn scheduled_lr(&self, step: u64) -> f32 {
        match &self.plateau {
            Some(p) => (p.lr * warmup_factor(step, self.spec.warmup_steps)) as f32,
            None => self.spec.lr_at(self.epoch, step),
        }
    }

    /// Refuses, before any step, a fit that its schedule cannot follow: plateau without
    /// validation data, or more steps than one-cycle's `total_steps` (torch raises when
    /// stepped past them, mid-run).
    pub(super) fn check_schedule(
        &self,
        has_valid: bool,
        epochs: usize,
        per_epoch: usize,
    ) -> Result<()> {
        match &self.spec.schedule {
            LrSchedule::Plateau(_) => ensure!(
                has_valid,
                "the plateau schedule (--schedule plateau) follows the validation loss, but \
                 there is no validation data (use --valid-fraction or --valid-data)"
            ),
            LrSchedule::OneCycle(c) => {
                let need = self.steps_taken + (epochs * per_epoch) as u64;
                ensure!(
                    need <= c.total_steps as u64,
                    "the one-cycle schedule has total_steps {} but this run would take {need} \
                     training steps ({} done + {epochs} epochs × {per_epoch} batches); raise \
                     --total-steps or train fewer epochs",
                    c.total_steps,
                    self.steps_taken
                );
            }
            _ => {}
        }
        Ok(())
    }
}
