//! Lowers an [`MlpSpec`] to a [`Plan`] for one batch size.

use super::{target_len, Op, PersistentDesc, Plan, Storage, TensorId};
use crate::model::spec::METRICS_SLOT_NAME;
use crate::model::MlpSpec;

/// Builds forward, evaluation and training ops for `rows` rows per batch.
/// `persistent` must be `spec.persistent()`; slots are found by name.
pub fn build(spec: &MlpSpec, persistent: &[PersistentDesc], rows: usize) -> anyhow::Result<Plan> {
    spec.validate()?;
    anyhow::ensure!(rows > 0, "batch size must be at least 1");
    let slot = |name: &str| -> anyhow::Result<usize> {
        persistent
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("model has no parameter '{name}'"))
    };
    let sizes = spec.layer_sizes();
    let layers = spec.num_layers();
    let mut p = Plan::default();

    let input = p.add_tensor("input", &[rows, spec.input], Storage::Local);
    let target = p.add_tensor(
        "target",
        &[target_len(spec.loss, rows, spec.output)],
        Storage::Local,
    );

    struct Layer {
        weight: TensorId,
        bias: TensorId,
        /// Input to the layer (previous activation or the batch).
        x: TensorId,
        /// Pre-activation output.
        z: TensorId,
        /// Post-activation output; `None` for the output layer.
        h: Option<TensorId>,
    }
    let mut net = Vec::with_capacity(layers);
    let mut x = input;
    for l in 0..layers {
        let (fan_in, fan_out) = (sizes[l], sizes[l + 1]);
        let wname = format!("layers.{l}.linear.weight");
        let bname = format!("layers.{l}.linear.bias");
        let weight = p.add_tensor(
            &wname,
            &[fan_out, fan_in],
            Storage::Persistent(slot(&wname)?),
        );
        let bias = p.add_tensor(&bname, &[fan_out], Storage::Persistent(slot(&bname)?));
        let z = p.add_tensor(format!("layers.{l}.z"), &[rows, fan_out], Storage::Local);
        p.forward.push(Op::MatMul {
            a: x,
            b: weight,
            c: z,
            m: rows,
            k: fan_in,
            n: fan_out,
            trans_a: false,
            trans_b: true,
            accumulate: false,
        });
        p.forward.push(Op::AddBias {
            y: z,
            bias,
            rows,
            cols: fan_out,
        });
        let h = (l + 1 < layers).then(|| {
            let h = p.add_tensor(format!("layers.{l}.h"), &[rows, fan_out], Storage::Local);
            p.forward.push(Op::Activate {
                act: spec.activation,
                x: z,
                y: h,
                len: rows * fan_out,
            });
            h
        });
        net.push(Layer {
            weight,
            bias,
            x,
            z,
            h,
        });
        x = h.unwrap_or(z);
    }
    let output = x;

    let metrics = p.add_tensor(
        METRICS_SLOT_NAME,
        &[super::METRICS_LEN],
        Storage::Persistent(slot(METRICS_SLOT_NAME)?),
    );
    let row_loss = p.add_tensor("loss.rows", &[rows], Storage::Local);
    let row_correct = p.add_tensor("loss.correct", &[rows], Storage::Local);
    let accumulate = Op::AccumulateMetrics {
        row_loss,
        row_correct,
        metrics,
        rows,
    };
    p.eval.push(Op::LossEval {
        loss: spec.loss,
        pred: output,
        target,
        row_loss,
        row_correct,
        rows,
        cols: spec.output,
    });
    p.eval.push(accumulate.clone());

    let mut dz = p.add_tensor(
        format!("layers.{}.z.grad", layers - 1),
        &[rows, spec.output],
        Storage::Local,
    );
    p.train.push(Op::LossGrad {
        loss: spec.loss,
        pred: output,
        target,
        dpred: dz,
        row_loss,
        row_correct,
        rows,
        cols: spec.output,
    });
    p.train.push(accumulate);

    let mut updates = Vec::new();
    for l in (0..layers).rev() {
        let (fan_in, fan_out) = (sizes[l], sizes[l + 1]);
        let layer = &net[l];
        let dw = p.add_tensor(
            format!("layers.{l}.linear.weight.grad"),
            &[fan_out, fan_in],
            Storage::Local,
        );
        let db = p.add_tensor(
            format!("layers.{l}.linear.bias.grad"),
            &[fan_out],
            Storage::Local,
        );
        // dW[out,in] = dZᵀ[out,rows] · X[rows,in]
        p.train.push(Op::MatMul {
            a: dz,
            b: layer.x,
            c: dw,
            m: fan_out,
            k: rows,
            n: fan_in,
            trans_a: true,
            trans_b: false,
            accumulate: false,
        });
        p.train.push(Op::SumRows {
            x: dz,
            out: db,
            rows,
            cols: fan_out,
            accumulate: false,
        });
        p.grads.push((layer.weight, dw));
        p.grads.push((layer.bias, db));
        updates.push(Op::SgdStep {
            param: layer.weight,
            grad: dw,
            len: fan_out * fan_in,
        });
        updates.push(Op::SgdStep {
            param: layer.bias,
            grad: db,
            len: fan_out,
        });
        if l == 0 {
            break; // nothing below the first layer needs a gradient
        }
        let below = &net[l - 1];
        // dH[rows,in] = dZ[rows,out] · W[out,in]
        let dh = p.add_tensor(
            format!("layers.{}.h.grad", l - 1),
            &[rows, fan_in],
            Storage::Local,
        );
        p.train.push(Op::MatMul {
            a: dz,
            b: layer.weight,
            c: dh,
            m: rows,
            k: fan_out,
            n: fan_in,
            trans_a: false,
            trans_b: false,
            accumulate: false,
        });
        let dz_below = p.add_tensor(
            format!("layers.{}.z.grad", l - 1),
            &[rows, fan_in],
            Storage::Local,
        );
        p.train.push(Op::ActivateBackward {
            act: spec.activation,
            x: below.z,
            y: below.h.expect("hidden layers have an activation output"),
            dy: dh,
            dx: dz_below,
            len: rows * fan_in,
        });
        dz = dz_below;
    }
    // Updates run after the whole backward pass so no gradient reads an updated weight.
    p.train.extend(updates);

    p.input = Some(input);
    p.target = Some(target);
    p.output = Some(output);
    p.metrics = Some(metrics);
    p.validate(persistent)?;
    Ok(p)
}
