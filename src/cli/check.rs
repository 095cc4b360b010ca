//! `check`: one training step on a GPU and on the CPU reference, every tensor compared.

use super::args::{spec_from, ModelArgs};
use super::schedule::Span;
use anyhow::{Context, Result};
use std::sync::Arc;
use steadygrad::check::{cross_check, Tolerance, FLOOR_MULTIPLE};
use steadygrad::gpu::{AdapterSelection, GpuContext};
use steadygrad::{data, BackendChoice, Loss};

pub fn check(
    model: &ModelArgs,
    batch: usize,
    loss: Loss,
    tol: Tolerance,
    choice: &BackendChoice,
) -> Result<()> {
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    let sel = match choice {
        BackendChoice::Gpu(sel) => sel.clone(),
        BackendChoice::Auto => AdapterSelection::default(),
        BackendChoice::Cpu => {
            anyhow::bail!("check compares a GPU against the CPU; pick a GPU backend")
        }
    };
    let ctx = Arc::new(GpuContext::new(&sel)?);
    let (input, output) = (model.width.max(1), 7);
    let spec = spec_from(model, input, output, Span::single())?.loss(loss);
    let data = data::synthetic::spirals(batch.div_ceil(output).max(1), output, 0.1, model.seed);
    // Widen the 2-D spiral points to `input` features deterministically.
    let x: Vec<f32> = (0..batch)
        .flat_map(|r| {
            let (a, b) = (data.features[2 * r], data.features[2 * r + 1]);
            (0..input)
                .map(move |j| if j % 2 == 0 { a } else { b } * (1.0 + j as f32 / input as f32))
        })
        .collect();
    let y: Vec<f32> = match loss {
        Loss::SoftmaxCrossEntropy => data.targets[..batch].to_vec(),
        Loss::MeanSquaredError => (0..batch * output)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect(),
    };
    let report = cross_check(&spec, &x, &y, ctx, tol).context("cross-check")?;
    print!("{}", report.table());
    let rounding = report
        .unjudged()
        .iter()
        .filter(|t| !t.name.contains("[zero gradient]"))
        .count();
    if rounding > 0 {
        eprintln!(
            "warning: {rounding} tensor(s) could not be judged: float32 rounding alone moves \
             each by at least 1/{} of its size, so no difference there could tell a bug from \
             rounding; a larger --batch or a shallower net conditions the problem better",
            FLOOR_MULTIPLE
        );
    }
    anyhow::ensure!(
        report.passed(),
        "{} tensor(s) differ beyond tolerance",
        report.failures().len()
    );
    Ok(())
}
