//! PyTorch's `OneCycleLR.get_lr` and `ReduceLROnPlateau.step`
//! (`torch/optim/lr_scheduler.py`), transcribed in f64 for the schedule tests.

use steadygrad::model::plateau::{Plateau, ThresholdMode};
use steadygrad::model::schedule::{Anneal, OneCycle};

/// torch's `OneCycleLR`, transcribed: `_schedule_phases` as built in `__init__`, then
/// `get_lr` for `step_num` (`last_epoch`), with its `_annealing_cos`/`_annealing_linear`.
pub fn torch_one_cycle(c: &OneCycle, step_num: f64) -> (f64, f64) {
    let max_lr = c.max_lr as f64;
    let initial_lr = max_lr / c.div_factor as f64;
    let min_lr = initial_lr / c.final_div_factor as f64;
    let (base_m, max_m) = (c.base_momentum as f64, c.max_momentum as f64);
    let total = c.total_steps as f64;
    let pct = c.pct_start as f64;
    // (end_step, start_lr, end_lr, start_momentum, end_momentum)
    let phases: Vec<(f64, f64, f64, f64, f64)> = if c.three_phase {
        vec![
            (pct * total - 1.0, initial_lr, max_lr, max_m, base_m),
            (2.0 * pct * total - 2.0, max_lr, initial_lr, base_m, max_m),
            (total - 1.0, initial_lr, min_lr, max_m, max_m),
        ]
    } else {
        vec![
            (pct * total - 1.0, initial_lr, max_lr, max_m, base_m),
            (total - 1.0, max_lr, min_lr, base_m, max_m),
        ]
    };
    let anneal = |start: f64, end: f64, pct: f64| match c.anneal {
        Anneal::Cos => {
            let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
            end + (start - end) / 2.0 * cos_out
        }
        Anneal::Linear => (end - start) * pct + start,
    };
    let mut start_step = 0.0;
    for (i, &(end_step, slr, elr, sm, em)) in phases.iter().enumerate() {
        if step_num <= end_step || i == phases.len() - 1 {
            let pct = (step_num - start_step) / (end_step - start_step);
            return (anneal(slr, elr, pct), anneal(sm, em, pct));
        }
        start_step = end_step;
    }
    unreachable!()
}

/// torch's `ReduceLROnPlateau` (mode 'min'), transcribed.
pub struct TorchPlateau {
    pub factor: f64,
    pub patience: usize,
    pub threshold: f64,
    pub rel: bool,
    pub cooldown: usize,
    pub min_lr: f64,
    pub eps: f64,
    pub best: f64,
    pub num_bad_epochs: usize,
    pub cooldown_counter: usize,
    pub lr: f64,
}

impl TorchPlateau {
    pub fn new(p: &Plateau, lr: f64) -> Self {
        TorchPlateau {
            factor: p.factor as f64,
            patience: p.patience,
            threshold: p.threshold as f64,
            rel: p.threshold_mode == ThresholdMode::Rel,
            cooldown: p.cooldown,
            min_lr: p.min_lr as f64,
            eps: p.eps as f64,
            best: f64::INFINITY,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            lr,
        }
    }

    fn is_better(&self, a: f64) -> bool {
        if self.rel {
            a < self.best * (1.0 - self.threshold)
        } else {
            a < self.best - self.threshold
        }
    }

    pub fn step(&mut self, current: f64) {
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.patience {
            let old = self.lr;
            let new = (old * self.factor).max(self.min_lr);
            if old - new > self.eps {
                self.lr = new;
            }
            self.cooldown_counter = self.cooldown;
            self.num_bad_epochs = 0;
        }
    }
}
