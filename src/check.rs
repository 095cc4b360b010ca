//! GPU-versus-CPU cross-check of one training step.
//!
//! Both backends start from the same seeded parameters and take one step on the same
//! batch; every tensor that matters is compared. The CPU reference accumulates in `f64`,
//! so the differences measure the GPU's `f32` rounding (and any bug).
//!
//! **Calibrated against the problem's own conditioning.** A fixed relative tolerance
//! false-alarms where the maths amplifies rounding (deep batch-norm nets, batches of two
//! rows): there a float32 computation of the *same* maths drifts just as far. So the CPU
//! reference also takes the step from inputs and parameters each moved by one `f32`
//! rounding (relative 2⁻²⁴, random sign), on an engine that moves every reduction's
//! output by `√k` roundings ([`CpuEngine::with_rounding_noise`]): how far that run lands
//! from the unperturbed one is the tensor's *noise floor*, the spread a correct `f32`
//! evaluation can produce. A tensor passes within the fixed tolerance or within
//! [`FLOOR_MULTIPLE`] × its floor, and the table shows the floor. A wrong index or a
//! missing term moves results by far more than rounding of the inputs does, so it is
//! still caught (`tests/gpu_vs_cpu.rs` injects one).

use crate::cpu::CpuEngine;
use crate::gpu::{GpuContext, GpuEngine};
use crate::model::{MlpSpec, Model};
use anyhow::Result;
use std::fmt::Write as _;
use std::sync::Arc;

/// A tensor passes when `max |gpu - cpu| <= atol + rtol · max |cpu|`; for a gradient,
/// `max |cpu|` is taken over all gradients of its layer (see [`cross_check`]). A
/// parameter whose gradient is below `rtol` of its layer's largest (exactly zero in exact
/// arithmetic, like a linear bias feeding batch norm) has its updated value reported but
/// not judged: Adam turns noise of either sign into a full ±lr step.
///
/// The error is measured against the tensor's largest reference value (a normwise
/// bound) rather than element by element, because elements near zero have no meaningful
/// relative error. Defaults: `rtol = 1e-4`, `atol = 1e-6`. An `f32` sum of `k` terms in a
/// different order differs by about `√k·2⁻²⁴` relative in practice and `k·2⁻²⁴` at worst;
/// for the layer widths and batch sizes used here (`k` ≤ a few thousand) that stays
/// well under `1e-4`, while a wrong index or a missing term gives errors of order one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            atol: 1e-6,
            rtol: 1e-4,
        }
    }
}

/// How many noise floors a difference may span and still pass: each perturbed run
/// samples the spread of rounding once, and a GPU sums in other orders (and with fused
/// multiply-adds) than the CPU does, so a margin covers the difference between the
/// samples and the spread's tail.
pub const FLOOR_MULTIPLE: f32 = 16.0;

/// Perturbed reference runs whose largest spread is the noise floor. The spread is heavy-
/// tailed where batch norm amplifies rounding: in `check --depth 40 --batch-norm before
/// --batch 2`, 3 of 13 single draws of signs landed 100× below the rest, so a one-run
/// floor false-alarmed on 5 to 28 tensors while the other draws passed all 406. The
/// largest of four draws misses the tail only when all four do (about 0.3% at that rate).
pub const FLOOR_RUNS: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorCheck {
    pub name: String,
    pub len: usize,
    /// `max |gpu - cpu|`.
    pub max_abs: f32,
    /// `max_abs / max |cpu|` (0 when both are all zeros).
    pub max_rel: f32,
    /// `max |cpu' - cpu|` for the CPU reference on inputs and parameters perturbed by one
    /// rounding (0 where not measured).
    pub floor: f32,
    pub pass: bool,
    /// False where the comparison cannot tell a bug from rounding: the tensor's gradient
    /// is zero in exact arithmetic, or float32 rounding alone moves it by at least
    /// 1/[`FLOOR_MULTIPLE`] of its scale. Such a tensor passes; the table says why.
    pub judged: bool,
}

/// Compares two tensors under `tol`. Any NaN, or a length mismatch, fails.
pub fn compare(name: &str, gpu: &[f32], cpu: &[f32], tol: Tolerance) -> TensorCheck {
    compare_scaled(name, gpu, cpu, tol, 0.0)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The larger spread, and NaN when either is: a perturbed run that broke down gives no
/// floor, rather than the others' smaller one.
fn widest(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// As [`compare`], with the error measured against at least `scale_floor`.
pub fn compare_scaled(
    name: &str,
    gpu: &[f32],
    cpu: &[f32],
    tol: Tolerance,
    scale_floor: f32,
) -> TensorCheck {
    let scale = max_abs(cpu).max(scale_floor);
    let max_abs = if gpu.len() != cpu.len() {
        f32::INFINITY
    } else {
        gpu.iter()
            .zip(cpu)
            .map(|(g, c)| (g - c).abs())
            // NaN must not vanish in the max: treat it as infinite error.
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            )
    };
    let max_rel = if max_abs == 0.0 {
        0.0
    } else {
        max_abs / scale.max(f32::MIN_POSITIVE)
    };
    TensorCheck {
        name: name.to_string(),
        len: cpu.len(),
        max_abs,
        max_rel,
        floor: 0.0,
        pass: max_abs <= tol.atol + tol.rtol * scale,
        judged: true,
    }
}

#[derive(Clone, Debug)]
pub struct CheckReport {
    pub gpu_device: String,
    pub tolerance: Tolerance,
    pub tensors: Vec<TensorCheck>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.tensors.iter().all(|t| t.pass)
    }

    pub fn failures(&self) -> Vec<&TensorCheck> {
        self.tensors.iter().filter(|t| !t.pass).collect()
    }

    /// Tensors the comparison could not judge (see [`TensorCheck::judged`]).
    pub fn unjudged(&self) -> Vec<&TensorCheck> {
        self.tensors.iter().filter(|t| !t.judged).collect()
    }

    /// A plain-text table, one row per tensor.
    pub fn table(&self) -> String {
        let width = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut s = String::new();
        let _ = writeln!(s, "GPU: {}", self.gpu_device);
        let _ = writeln!(
            s,
            "tolerance: max|gpu-cpu| <= {:e} + {:e} * max|cpu|, or <= {FLOOR_MULTIPLE} * noise \
             floor (the CPU reference's own spread under one f32 rounding of its inputs)",
            self.tolerance.atol, self.tolerance.rtol
        );
        let _ = writeln!(
            s,
            "{:<width$}  {:>8}  {:>12}  {:>12}  {:>12}  result",
            "tensor", "elements", "max abs err", "max rel err", "noise floor"
        );
        for t in &self.tensors {
            let _ = writeln!(
                s,
                "{:<width$}  {:>8}  {:>12.3e}  {:>12.3e}  {:>12.3e}  {}",
                t.name,
                t.len,
                t.max_abs,
                t.max_rel,
                t.floor,
                match (t.pass, t.judged) {
                    (false, _) => "FAIL",
                    (true, true) => "ok",
                    (true, false) => "not judged",
                }
            );
        }
        let failed = self.failures().len();
        let unjudged = self.unjudged().len();
        let _ = write!(
            s,
            "{} passed, {} failed",
            self.tensors.len() - failed - unjudged,
            failed
        );
        if unjudged > 0 {
            let _ = write!(s, ", {unjudged} not judged");
        }
        let _ = writeln!(s);
        s
    }
}

/// Runs one training step of `spec` on the batch `(x, y)` on the GPU and on the CPU
/// reference, and compares outputs, loss, every parameter gradient (after clipping), every
/// updated parameter and optimizer state, and the gradient norm when clipping by norm.
pub fn cross_check(
    spec: &MlpSpec,
    x: &[f32],
    y: &[f32],
    ctx: Arc<GpuContext>,
    tol: Tolerance,
) -> Result<CheckReport> {
    cross_check_engine(spec, x, y, GpuEngine::new(ctx), tol)
}

/// [`cross_check`] on a GPU engine set up by the caller (a kernel variant, lower memory
/// limits).
pub fn cross_check_engine(
    spec: &MlpSpec,
    x: &[f32],
    y: &[f32],
    engine: GpuEngine,
    tol: Tolerance,
) -> Result<CheckReport> {
    let gpu_device = engine.context().describe();
    let gpu = Model::new(spec.clone(), Box::new(engine))?;
    let cpu = Model::new(spec.clone(), Box::new(CpuEngine::new()))?;
    let mut report = cross_check_models(gpu, cpu, x, y, tol)?;
    report.gpu_device = gpu_device;
    Ok(report)
}

/// Moves every value by `roundings` `f32` roundings (relative 2⁻²⁴ each) of a random
/// sign, drawn from a fixed stream so a check is reproducible.
pub(crate) fn perturb(values: &mut [f32], roundings: f32, stream: &mut u64) {
    for v in values.iter_mut() {
        *stream ^= *stream << 13;
        *stream ^= *stream >> 7;
        *stream ^= *stream << 17;
        let sign = if *stream & 1 == 0 { 1.0 } else { -1.0 };
        *v *= 1.0 + sign * roundings * f32::EPSILON / 2.0;
    }
}

/// [`cross_check`] on two models built by the caller from the same spec and parameters
/// (`gpu` on any engine, `cpu` on the reference): both take one step on `(x, y)` and
/// every tensor that matters is compared against the calibrated tolerance.
pub fn cross_check_models(
    mut gpu: Model,
    mut cpu: Model,
    x: &[f32],
    y: &[f32],
    tol: Tolerance,
) -> Result<CheckReport> {
    let spec = cpu.spec().clone();
    let spec = &spec;
    let gpu_device = gpu.device();
    // The noise-floor runs: the reference from one rounding away, each with its own
    // draw of signs.
    let mut floor_runs = Vec::with_capacity(FLOOR_RUNS);
    let mut x_moved = Vec::with_capacity(FLOOR_RUNS);
    let mut stream = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..FLOOR_RUNS {
        let mut moved = cpu.state_dict()?;
        for t in &mut moved {
            perturb(&mut t.values, 1.0, &mut stream);
        }
        let mut floor_model = Model::new(
            spec.clone(),
            Box::new(CpuEngine::with_rounding_noise(stream)),
        )?;
        floor_model.load_state_dict(&moved)?;
        let mut x = x.to_vec();
        perturb(&mut x, 1.0, &mut stream);
        floor_runs.push(floor_model);
        x_moved.push(x);
    }
    let mut tensors = Vec::new();
    let mut snapshots = Vec::new();
    let runs = [(&mut gpu, x), (&mut cpu, x)]
        .into_iter()
        .chain(floor_runs.iter_mut().zip(x_moved.iter().map(|x| &x[..])));
    for (model, x) in runs {
        model.take_metrics()?;
        model.train_batch(x, y)?;
        let rows = x.len() / spec.input;
        let out_name = format!("layers.{}.z", spec.num_layers() - 1);
        let mut snap = vec![("output".to_string(), model.read_tensor(rows, &out_name)?)];
        snap.push(("loss".to_string(), vec![model.take_metrics()?.loss]));
        for (_, grad) in model.gradient_names(rows)? {
            let v = model.read_tensor(rows, &grad)?;
            snap.push((grad, v));
        }
        for p in model.state_dict()? {
            snap.push((format!("{} (after step)", p.name), p.values));
        }
        for s in model.optimizer_state()? {
            snap.push((format!("{} (after step)", s.name), s.values));
        }
        if let Some(norm) = model.last_grad_norm()? {
            snap.push(("gradient norm before clipping".to_string(), vec![norm]));
        }
        snapshots.push(snap);
    }
    // Gradients are judged against the largest gradient of their layer, not only their
    // own: a linear bias feeding batch norm has a gradient that is exactly zero in exact
    // arithmetic, so both backends return rounding noise of the layer's scale.
    let layer_of = |name: &str| name.split('.').take(2).collect::<Vec<_>>().join(".");
    let mut grad_scale = std::collections::HashMap::<String, f32>::new();
    for (name, c) in &snapshots[1] {
        if name.ends_with(".grad") {
            let s = grad_scale.entry(layer_of(name)).or_default();
            *s = s.max(max_abs(c));
        }
    }
    // And against the largest gradient of any layer above: a gradient that cancels
    // through a layer (batch norm over two rows passes exactly zero back) is rounding
    // noise of the gradient that arrived, whose scale is the layer above's.
    let layer_index = |key: &str| -> usize {
        key.strip_prefix("layers.")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    let mut keys: Vec<String> = grad_scale.keys().cloned().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(layer_index(k)));
    let mut above = 0.0f32;
    for k in keys {
        let s = grad_scale.get_mut(&k).expect("key from the map");
        above = above.max(*s);
        *s = above;
    }
    // A parameter whose gradient is below the comparison's resolution (that bias again)
    // cannot be compared after a step of a scale-invariant optimizer such as Adam, which
    // turns noise of either sign into a full ±lr step. Its gradient row still checks that
    // the noise is small; its updated value and optimizer state are reported, not judged.
    let noise_params: Vec<String> = snapshots[1]
        .iter()
        .filter(|(name, c)| {
            name.ends_with(".grad") && max_abs(c) <= tol.rtol * grad_scale[&layer_of(name)]
        })
        .map(|(name, _)| name.trim_end_matches(".grad").to_string())
        .collect();
    let is_noise = |name: &str| {
        name.ends_with("(after step)")
            && noise_params.iter().any(|p| {
                name.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('.'))
            })
    };
    // Everything the backward pass and the update compute depends on the output, so the
    // output's relative spread is a floor for them too: one perturbed run can land where a
    // derived tensor happens to agree while the GPU's own rounding does not (a 40-layer
    // batch-norm net at batch 8: output spread 0.6%, one bias gradient 0.01% in the
    // perturbed run but 2% on the GPU, both consequences of the same drift).
    let c = &snapshots[1][0].1;
    let output_rel_floor = snapshots[2..]
        .iter()
        .map(|p| compare_scaled("output", &p[0].1, c, tol, 0.0).max_rel)
        .fold(0.0f32, widest);
    for (i, ((name, g), (_, c))) in snapshots[0].iter().zip(&snapshots[1]).enumerate() {
        let scale = if name.ends_with(".grad") {
            grad_scale[&layer_of(name)]
        } else {
            0.0
        };
        let mut t = compare_scaled(name, g, c, tol, scale);
        t.floor = snapshots[2..]
            .iter()
            .map(|p| compare_scaled(name, &p[i].1, c, tol, scale).max_abs)
            .fold(0.0f32, widest);
        if name != "output" && output_rel_floor.is_finite() {
            t.floor = t.floor.max(output_rel_floor * max_abs(c).max(scale));
        }
        if t.floor.is_finite() && t.max_abs <= FLOOR_MULTIPLE * t.floor {
            t.pass = true;
        }
        // Where 16 floors reach the tensor's own size, any error up to that size passes: say
        // so, rather than report the pass as a comparison. An error beyond it (or a NaN)
        // still fails.
        let reference = max_abs(c).max(scale);
        if t.pass && t.floor.is_finite() && reference > 0.0 && FLOOR_MULTIPLE * t.floor >= reference
        {
            t.name = format!(
                "{name} [rounding alone moves it {:.0}%]",
                100.0 * t.floor / reference
            );
            t.judged = false;
        }
        if is_noise(name) && t.max_abs.is_finite() {
            t.name = format!("{name} [zero gradient]");
            t.pass = true;
            t.judged = false;
        }
        tensors.push(t);
    }
    Ok(CheckReport {
        gpu_device,
        tolerance: tol,
        tensors,
    })
}
