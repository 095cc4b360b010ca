//! `eval`, `predict` and `export`: commands that use a trained checkpoint.

use super::args::DataArgs;
use anyhow::{Context, Result};
use std::path::Path;
use steadygrad::checkpoint;
use steadygrad::{data, BackendChoice, Loss, MlpSpec, Model};

/// The model a checkpoint describes.
pub(crate) fn spec_of(ckpt: &checkpoint::Checkpoint) -> Result<MlpSpec> {
    let base = match &ckpt.state.config {
        Some(c) => c.to_spec()?,
        None => MlpSpec::new(ckpt.model.input, &ckpt.model.hidden, ckpt.model.output),
    };
    ckpt.model.to_spec(base)
}

/// Builds the model a checkpoint describes on `choice` and restores it.
pub(crate) fn model_from_checkpoint(
    path: &std::path::Path,
    choice: &BackendChoice,
) -> Result<(Model, checkpoint::Checkpoint)> {
    let ckpt = checkpoint::load_checkpoint(path)?;
    let spec = spec_of(&ckpt)?;
    let mut m = Model::with_backend(spec, choice)?;
    ckpt.restore(&mut m)
        .with_context(|| format!("loading '{}'", path.display()))?;
    Ok((m, ckpt))
}

/// A data file for eval or predict must have the features the model was trained on.
pub(crate) fn check_width(d: &data::Dataset, m: &Model, args: &DataArgs) -> Result<()> {
    let file = args
        .data
        .as_ref()
        .map_or(String::new(), |p| p.display().to_string());
    anyhow::ensure!(
        d.input_dim == m.spec().input,
        "{file}: rows have {} features, but the model takes {}",
        d.input_dim,
        m.spec().input
    );
    Ok(())
}

/// `eval`: loss and accuracy (or error) of a checkpoint on a data file.
pub fn eval(path: &Path, data_args: &DataArgs, batch: usize, choice: &BackendChoice) -> Result<()> {
    let (mut m, ckpt) = model_from_checkpoint(path, choice)?;
    let classes = (m.spec().loss == Loss::SoftmaxCrossEntropy).then_some(m.spec().output);
    let d = data_args.load_one(classes, ckpt.state.standardizer.as_ref())?;
    check_width(&d, &m, data_args)?;
    let metrics = m.evaluate(&d, batch)?;
    match metrics.accuracy {
        Some(a) => println!(
            "{} rows: loss {:.4}, accuracy {:.2}%",
            metrics.rows,
            metrics.loss,
            100.0 * a
        ),
        None => println!(
            "{} rows: mse {:.6}, rmse {:.6}",
            metrics.rows,
            metrics.loss,
            metrics.loss.sqrt()
        ),
    }
    Ok(())
}

/// `predict`: a CSV of the model's outputs (or Monte Carlo means and spreads).
pub fn predict(
    path: &Path,
    data_args: &DataArgs,
    out: &Path,
    mc_samples: Option<usize>,
    seed: u64,
    choice: &BackendChoice,
) -> Result<()> {
    checkpoint::check_writable(out, "--out")?;
    let mut inputs = data_args.inputs();
    inputs.push(("--checkpoint", path));
    checkpoint::check_not_overwriting(out, "--out", &inputs)?;
    let (mut m, ckpt) = model_from_checkpoint(path, choice)?;
    let classify = m.spec().loss == Loss::SoftmaxCrossEntropy;
    let classes = classify.then_some(m.spec().output);
    let d = data_args.load_one(classes, ckpt.state.standardizer.as_ref())?;
    check_width(&d, &m, data_args)?;
    if let Some(n) = mc_samples {
        let p = m.predict_mc(&d.features, n, seed).context("--mc-samples")?;
        checkpoint::write_atomic(out, super::mc::csv(&p, classify).as_bytes())?;
        println!(
            "wrote {} Monte Carlo predictions ({n} samples, seed {seed}) to '{}'",
            d.rows,
            out.display()
        );
        return Ok(());
    }
    let width = m.spec().output;
    let mut csv = String::new();
    let names: Vec<String> = (0..width).map(|j| format!("output_{j}")).collect();
    csv.push_str(&names.join(","));
    csv.push_str(if classify { ",class\n" } else { "\n" });
    for chunk in d.features.chunks(256 * d.input_dim) {
        let outputs = m.predict(chunk)?;
        for row in outputs.chunks(width) {
            let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            csv.push_str(&cells.join(","));
            if classify {
                let best = (0..width).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                csv.push_str(&format!(",{best}"));
            }
            csv.push('\n');
        }
    }
    checkpoint::write_atomic(out, csv.as_bytes())?;
    println!("wrote {} predictions to '{}'", d.rows, out.display());
    Ok(())
}

/// `export --onnx`: the checkpoint as an ONNX graph for inference.
pub fn export(path: &Path, onnx: &Path, decompose: bool) -> Result<()> {
    checkpoint::check_writable(onnx, "--onnx")?;
    checkpoint::check_not_overwriting(onnx, "--onnx", &[("--checkpoint", path)])?;
    // The tensors are read straight from the file: exporting needs no device.
    let ckpt = checkpoint::load_checkpoint(path)?;
    let spec = spec_of(&ckpt).with_context(|| format!("'{}'", path.display()))?;
    let opts = steadygrad::onnx::ExportOptions { decompose };
    let standardizer = ckpt.state.standardizer.as_ref();
    let exported = steadygrad::onnx::export(&spec, &ckpt.tensors, standardizer, opts)
        .with_context(|| format!("exporting '{}'", path.display()))?;
    steadygrad::onnx::write(onnx, &exported)?;
    println!(
        "wrote '{}': ONNX opset {}, {} nodes, {} bytes; input '{}' [batch, {}] ({}), \
         output '{}' [batch, {}]{}",
        onnx.display(),
        exported.opset,
        exported.nodes,
        exported.bytes.len(),
        steadygrad::onnx::INPUT,
        spec.input,
        if exported.standardized {
            "raw features: the checkpoint's standardizer is in the graph"
        } else {
            "the checkpoint has no standardizer: features as the model was trained on"
        },
        steadygrad::onnx::OUTPUT,
        spec.output,
        if spec.loss == Loss::SoftmaxCrossEntropy {
            format!(" (logits) and '{}' [batch]", steadygrad::onnx::CLASS_OUTPUT)
        } else {
            String::new()
        }
    );
    Ok(())
}
