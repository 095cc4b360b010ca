//! Plain-text tables of statistics records.

use super::StepStats;
use std::fmt::Write as _;

fn num(v: Option<f32>, precision: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.precision$}"),
        Some(x) => format!("{x}"),
        None => "-".to_string(),
    }
}

fn sci(v: Option<f32>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.2e}"),
        Some(x) => format!("{x}"),
        None => "-".to_string(),
    }
}

fn pct(v: Option<f32>) -> String {
    match v {
        Some(x) => format!("{:.1}", 100.0 * x),
        None => "-".to_string(),
    }
}

/// One row per layer: activation mean and standard deviation, weight- and bias-gradient
/// norms, update-to-weight ratio, dead and saturated percentages, non-finite counts.
pub fn layer_table(s: &StepStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>9} {:>9} {:>10} {:>10} {:>9} {:>6} {:>6} {:>8}",
        "layer",
        "units",
        "act mean",
        "act std",
        "‖∇W‖",
        "‖∇b‖",
        "‖ΔW‖/‖W‖",
        "dead%",
        "sat%",
        "nonfin"
    );
    for l in &s.layers {
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>9} {:>9} {:>10} {:>10} {:>9} {:>6} {:>6} {:>8}",
            l.layer,
            l.units,
            num(l.act_mean, 3),
            num(l.act_std, 3),
            sci(l.weight_grad_norm),
            sci(l.bias_grad_norm),
            sci(l.update_ratio),
            pct(l.dead),
            pct(l.saturated),
            l.act_nonfinite + l.grad_nonfinite
        );
    }
    out
}
