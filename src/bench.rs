//! Throughput measurement shared by `steadygrad bench` and the bench binaries: the
//! standard training workloads, timing a training step and a single matmul on a
//! [`GpuEngine`], and the fp32 peaks of known GPUs that matmul figures are compared with.

use crate::engine::{Engine, PlanId};
use crate::gpu::GpuEngine;
use crate::graph::{Plan, Stage};
use crate::model::lower as mlp;
use crate::ops::{MatMul, Op};
use crate::tensor::{Hyper, Storage};
use crate::{Activation, BatchNorm, Clip, Loss, MlpSpec, Optimizer};
use anyhow::{bail, ensure, Context, Result};
use std::time::Instant;

/// The standard workloads, in the order they are reported.
pub const STANDARD_WORKLOADS: [&str; 3] = ["w1", "w2", "w1-bn"];

/// The batch size of the standard workloads.
pub const STANDARD_BATCH: usize = 256;

/// A standard workload's model:
///
/// * `w1`: 784 → 8×512 (ReLU) → 10, softmax cross-entropy, SGD (lr 0.01).
/// * `w2`: 784 → 4×2048 (ReLU) → 10, otherwise the same.
/// * `w1-bn`: W1 with the usual cures switched on: batch norm before each activation,
///   Adam (lr 1e-3), clipping by global norm 1.0 and dropout 0.1.
///
/// `quick` divides the hidden widths by 8, for smoke runs that must take seconds on a
/// software adapter while still exercising every kind of op of the full workload.
pub fn standard_spec(name: &str, quick: bool) -> Result<MlpSpec> {
    let (width, depth) = match name {
        "w1" | "w1-bn" => (512, 8),
        "w2" => (2048, 4),
        other => bail!(
            "unknown workload '{other}': expected one of {}",
            STANDARD_WORKLOADS.join(", ")
        ),
    };
    let width = if quick { width / 8 } else { width };
    let spec = MlpSpec::new(784, &vec![width; depth], 10)
        .activation(Activation::Relu)
        .loss(Loss::SoftmaxCrossEntropy)
        .optimizer(Optimizer::sgd(0.01))
        .seed(1);
    Ok(if name == "w1-bn" {
        spec.batch_norm(BatchNorm::default())
            .optimizer(Optimizer::adam(1e-3))
            .clip(Clip::Norm(1.0))
            .dropout(0.1)
    } else {
        spec
    })
}

/// Deterministic values in [-1, 1): benches need data, not statistics.
pub fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How many steps [`time_training`] runs and how.
#[derive(Clone, Copy, Debug)]
pub struct StepCounts {
    /// Untimed steps after the first one.
    pub warmup: usize,
    /// Timed steps per window.
    pub steps: usize,
    /// Windows; the fastest is reported, since other load on the machine only ever
    /// slows a window down.
    pub tries: usize,
}

/// What one workload measured.
#[derive(Clone, Debug)]
pub struct TrainFigures {
    pub samples_per_sec: f64,
    pub ms_per_step: f64,
    /// Compute dispatches one training step records (the engine's counters).
    pub dispatches_per_step: usize,
    /// From uploading the weights to the end of the first step: compilation (pipeline
    /// creation, buffer allocation) and the driver's lazy work included.
    pub first_step_ms: f64,
    /// Mean loss of the fastest window, a sign that the steps computed something.
    pub loss: f64,
}

/// Compiles `spec`'s training step for `batch` rows on `engine` (fresh: no plan compiled
/// and no persistent tensors yet), times the first step, then `counts`. Returns the
/// figures and the plan, for [`GpuEngine::profile`].
pub fn time_training(
    engine: &mut GpuEngine,
    spec: &MlpSpec,
    batch: usize,
    counts: StepCounts,
) -> Result<(TrainFigures, PlanId)> {
    ensure!(batch >= 1, "the batch size must be at least 1");
    ensure!(
        counts.steps >= 1,
        "the number of timed steps must be at least 1"
    );
    ensure!(
        counts.tries >= 1,
        "the number of windows must be at least 1"
    );
    let persistent = spec.persistent();
    let t_first = Instant::now();
    engine.init_persistent(&persistent)?;
    engine.set_hyper(Hyper::lr(spec.optimizer.lr()))?;
    let plan = mlp::build(spec, &persistent, batch)?;
    let id = engine.compile(&plan)?;
    let x: Vec<f32> = noise(batch * spec.input, 7)
        .iter()
        .map(|v| v * 0.5 + 0.5)
        .collect();
    let y: Vec<f32> = match spec.loss {
        Loss::SoftmaxCrossEntropy => (0..batch).map(|i| (i % spec.output) as f32).collect(),
        Loss::MeanSquaredError => noise(batch * spec.output, 11),
    };
    let (input, target) = (
        plan.input.context("the plan has no input")?,
        plan.target.context("the plan has no target")?,
    );
    let metrics = plan.metrics.context("the plan has no metrics")?;
    engine.write(id, input, &x)?;
    engine.write(id, target, &y)?;
    let before = engine.counters().dispatches;
    engine.run(id, Stage::Train)?;
    let dispatches_per_step = engine.counters().dispatches - before;
    engine.read(id, metrics)?;
    let first_step_ms = t_first.elapsed().as_secs_f64() * 1e3;

    for _ in 0..counts.warmup {
        engine.run(id, Stage::Train)?;
    }
    engine.read(id, metrics)?;
    let (mut best, mut loss) = (f64::INFINITY, f64::NAN);
    for _ in 0..counts.tries {
        engine.write(id, metrics, &[0.0; 3])?;
        let t0 = Instant::now();
        for _ in 0..counts.steps {
            engine.run(id, Stage::Train)?;
        }
        // The readback waits for every step submitted before it.
        let m = engine.read(id, metrics)?;
        let secs = t0.elapsed().as_secs_f64();
        ensure!(
            m[2] as usize == counts.steps * batch,
            "the steps counted {} rows, expected {}: the training step did not run as planned",
            m[2],
            counts.steps * batch
        );
        if secs < best {
            best = secs;
            loss = (m[0] / m[2]) as f64;
        }
    }
    let figures = TrainFigures {
        samples_per_sec: (counts.steps * batch) as f64 / best,
        ms_per_step: best * 1e3 / counts.steps as f64,
        dispatches_per_step,
        first_step_ms,
        loss,
    };
    Ok((figures, id))
}

/// The three matmul forms training uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulForm {
    /// `C = A·Bᵀ`: forward `Y = X·Wᵀ`.
    Nt,
    /// `C = A·B`: backward `dX = dY·W`.
    Nn,
    /// `C = Aᵀ·B`: backward `dW = dYᵀ·X`.
    Tn,
}

impl MatmulForm {
    pub const ALL: [MatmulForm; 3] = [MatmulForm::Nt, MatmulForm::Nn, MatmulForm::Tn];

    pub fn name(self) -> &'static str {
        match self {
            MatmulForm::Nt => "nt",
            MatmulForm::Nn => "nn",
            MatmulForm::Tn => "tn",
        }
    }

    /// What the form computes in training, for tables.
    pub fn role(self) -> &'static str {
        match self {
            MatmulForm::Nt => "forward X·Wᵀ",
            MatmulForm::Nn => "backward dY·W",
            MatmulForm::Tn => "backward dYᵀ·X",
        }
    }

    /// `(trans_a, trans_b)`.
    pub fn trans(self) -> (bool, bool) {
        match self {
            MatmulForm::Nt => (false, true),
            MatmulForm::Nn => (false, false),
            MatmulForm::Tn => (true, false),
        }
    }
}

/// Matrices larger than this many elements are refused before any allocation: 2^28 f32
/// are 1 GiB, above what most adapters bind and what a bench should take from the host.
pub const MAX_MATMUL_ELEMENTS: usize = 1 << 28;

/// Parses matmul sizes: comma-separated `N` (N×N×N) or `MxKxN`.
pub fn parse_matmul_sizes(text: &str) -> Result<Vec<[usize; 3]>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let dims: Vec<usize> = part
            .split(['x', 'X'])
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&v| v > 0)
                    .with_context(|| {
                        format!(
                            "bad matmul size '{part}': each dimension must be a whole number > 0"
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let mkn = match dims[..] {
            [s] => [s, s, s],
            [m, k, n] => [m, k, n],
            _ => bail!("bad matmul size '{part}': expected N (for N×N×N) or MxKxN"),
        };
        let [m, k, n] = mkn;
        for (what, a, b) in [("A", m, k), ("B", k, n), ("C", m, n)] {
            ensure!(
                a.checked_mul(b).is_some_and(|e| e <= MAX_MATMUL_ELEMENTS),
                "matmul size '{part}' is too large: {what} would have {a}×{b} elements, more \
                 than {MAX_MATMUL_ELEMENTS} (1 GiB of f32)"
            );
        }
        out.push(mkn);
    }
    ensure!(
        !out.is_empty(),
        "no matmul sizes given: expected N or MxKxN, comma-separated"
    );
    Ok(out)
}

/// Times `C = op(A)·op(B)` alone for an `m×k×n` problem: one warm-up run (the driver's
/// lazy allocation), then `tries` windows of enough runs to last about `secs`; returns
/// the fastest window's GFLOP/s. Each run is one submission, as a training step is, so
/// on a fast GPU a small matmul measures submission overhead as well as the kernel.
pub fn time_matmul(
    engine: &mut GpuEngine,
    form: MatmulForm,
    [m, k, n]: [usize; 3],
    secs: f64,
    tries: usize,
) -> Result<f64> {
    let (trans_a, trans_b) = form.trans();
    let mut p = Plan::default();
    let a = p.add_tensor("a", &[m * k], Storage::Local);
    let b = p.add_tensor("b", &[k * n], Storage::Local);
    let c = p.add_tensor("c", &[m * n], Storage::Local);
    // Untouched by the op: reading it back waits for the queue without copying all of C.
    let sync = p.add_tensor("sync", &[1], Storage::Local);
    p.forward.push(Op::MatMul(MatMul {
        a,
        b,
        c,
        m,
        k,
        n,
        trans_a,
        trans_b,
        accumulate: false,
    }));
    let id = engine.compile(&p)?;
    engine.write(id, a, &noise(m * k, 1))?;
    engine.write(id, b, &noise(k * n, 2))?;
    let t0 = Instant::now();
    engine.run(id, Stage::Predict)?;
    engine.read(id, sync)?;
    let once = t0.elapsed().as_secs_f64();
    // The cap keeps a window bounded where the first run was slowed by something else;
    // it is high enough that a sub-millisecond matmul on a fast GPU still fills `secs`.
    let reps = ((secs / once).ceil() as usize).clamp(1, 5000);
    let mut best = f64::INFINITY;
    for _ in 0..tries.max(1) {
        let t0 = Instant::now();
        for _ in 0..reps {
            engine.run(id, Stage::Predict)?;
        }
        engine.read(id, sync)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 * reps as f64 / best / 1e9)
}

/// A GPU's fp32 peak: what its maker states for non-tensor (vector/shader) fp32 FMA
/// throughput, counting an FMA as two operations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnownPeak {
    /// Matched against adapter names, case-insensitively, as a substring.
    pub pattern: &'static str,
    pub gflops: f64,
    /// Where the figure comes from.
    pub source: &'static str,
}

const fn peak(pattern: &'static str, gflops: f64, source: &'static str) -> KnownPeak {
    KnownPeak {
        pattern,
        gflops,
        source,
    }
}

/// Known fp32 peaks, the more specific names first (the first match wins, and
/// "H100 PCIe" also contains "H100"). Vendors' figures at boost clock; a card clocked
/// otherwise, or an Apple chip binned with fewer GPU cores, has a different peak: pass
/// `--peak` for it.
pub const KNOWN_PEAKS: &[KnownPeak] = &[
    // NVIDIA datasheets: "FP32" rows (not the TF32 tensor-core figures).
    peak("GH200", 67_000.0, "NVIDIA GH200 datasheet, FP32 67 TFLOPS"),
    peak(
        "H200 NVL",
        60_000.0,
        "NVIDIA H200 datasheet, H200 NVL FP32 60 TFLOPS",
    ),
    peak(
        "H200",
        67_000.0,
        "NVIDIA H200 datasheet, H200 SXM FP32 67 TFLOPS",
    ),
    peak(
        "H100 PCIe",
        51_000.0,
        "NVIDIA H100 datasheet, H100 PCIe FP32 51 TFLOPS",
    ),
    peak(
        "H100 NVL",
        60_000.0,
        "NVIDIA H100 datasheet, H100 NVL FP32 60 TFLOPS",
    ),
    peak(
        "H100",
        67_000.0,
        "NVIDIA H100 datasheet, H100 SXM FP32 67 TFLOPS",
    ),
    peak("A100", 19_500.0, "NVIDIA A100 datasheet, FP32 19.5 TFLOPS"),
    peak("L40S", 91_600.0, "NVIDIA L40S datasheet, FP32 91.6 TFLOPS"),
    peak("L4", 30_300.0, "NVIDIA L4 datasheet, FP32 30.3 TFLOPS"),
    peak(
        "V100",
        15_700.0,
        "NVIDIA V100 datasheet, V100 SXM2 FP32 15.7 TFLOPS",
    ),
    peak("T4", 8_100.0, "NVIDIA T4 datasheet, FP32 8.1 TFLOPS"),
    peak(
        "RTX 4090",
        82_600.0,
        "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090 82.6 shader TFLOPS",
    ),
    peak(
        "RTX 4080",
        48_700.0,
        "NVIDIA Ada Lovelace architecture whitepaper, RTX 4080 48.7 shader TFLOPS",
    ),
    peak(
        "RTX 3090",
        35_600.0,
        "NVIDIA Ampere GA102 whitepaper, RTX 3090 35.6 shader TFLOPS",
    ),
    // Apple's announcements give the full-core configuration (M1 8-core GPU 2.6 TFLOPS,
    // M1 Pro 5.2, M1 Max 10.4, M1 Ultra 21; M2 10-core 3.6, M2 Pro 6.8, M2 Max 13.6,
    // M2 Ultra 27.2). Apple states no TFLOPS for the M3 family: those rows are
    // cores × 128 fp32 lanes × 2 × 1.398 GHz, the reported GPU clock.
    peak(
        "M1 Ultra",
        21_000.0,
        "Apple M1 Ultra announcement, 64-core GPU 21 TFLOPS",
    ),
    peak(
        "M1 Max",
        10_400.0,
        "Apple M1 Pro/Max announcement, 32-core GPU 10.4 TFLOPS",
    ),
    peak(
        "M1 Pro",
        5_200.0,
        "Apple M1 Pro/Max announcement, 16-core GPU 5.2 TFLOPS",
    ),
    peak(
        "Apple M1",
        2_600.0,
        "Apple M1 announcement, 8-core GPU 2.6 TFLOPS",
    ),
    peak(
        "M2 Ultra",
        27_200.0,
        "Apple M2 Ultra announcement, 76-core GPU 27.2 TFLOPS",
    ),
    peak(
        "M2 Max",
        13_600.0,
        "Apple M2 Pro/Max announcement, 38-core GPU 13.6 TFLOPS",
    ),
    peak(
        "M2 Pro",
        6_800.0,
        "Apple M2 Pro/Max announcement, 19-core GPU 6.8 TFLOPS",
    ),
    peak(
        "Apple M2",
        3_600.0,
        "Apple M2 announcement, 10-core GPU 3.6 TFLOPS",
    ),
    peak(
        "M3 Max",
        14_300.0,
        "computed: 40 cores × 128 lanes × 2 × 1.398 GHz (Apple states none)",
    ),
    peak(
        "M3 Pro",
        6_400.0,
        "computed: 18 cores × 128 lanes × 2 × 1.398 GHz (Apple states none)",
    ),
    peak(
        "Apple M3",
        3_600.0,
        "computed: 10 cores × 128 lanes × 2 × 1.398 GHz (Apple states none)",
    ),
    // AMD Instinct datasheets: "Peak Single Precision (FP32) Vector". The Radeon rows are
    // computed from stream processors × 2 (dual issue) × 2 × boost clock.
    peak(
        "MI300X",
        163_400.0,
        "AMD Instinct MI300X datasheet, FP32 vector 163.4 TFLOPS",
    ),
    peak(
        "MI300A",
        122_600.0,
        "AMD Instinct MI300A datasheet, FP32 vector 122.6 TFLOPS",
    ),
    peak(
        "MI250X",
        47_900.0,
        "AMD Instinct MI250X datasheet, FP32 vector 47.9 TFLOPS",
    ),
    peak(
        "MI250",
        45_300.0,
        "AMD Instinct MI250 datasheet, FP32 vector 45.3 TFLOPS",
    ),
    peak(
        "RX 7900 XTX",
        61_400.0,
        "computed: 6144 stream processors × 2 × 2 × 2.5 GHz boost",
    ),
    peak(
        "RX 7900 XT",
        51_600.0,
        "computed: 5376 stream processors × 2 × 2 × 2.4 GHz boost",
    ),
];

/// The fp32 peak of the adapter named `adapter_name`, if it is in [`KNOWN_PEAKS`]. A
/// pattern matches as whole words, so "L4" does not claim an "L40S" nor "RX 7900 XT" an
/// "RX 7900 XTX". Laptop GPUs share their desktop namesakes' names but run far lower
/// clocks and power limits, so they match nothing.
pub fn known_peak(adapter_name: &str) -> Option<KnownPeak> {
    let name = adapter_name.to_ascii_lowercase();
    if name.contains("laptop") || name.contains("mobile") || name.contains("max-q") {
        return None;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    KNOWN_PEAKS
        .iter()
        .find(|p| {
            let pattern = p.pattern.to_ascii_lowercase();
            name.match_indices(&pattern).any(|(at, _)| {
                !word(name[..at].chars().next_back())
                    && !word(name[at + pattern.len()..].chars().next())
            })
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_match_the_specific_name_first() {
        let name = |n: &str| known_peak(n).map(|p| p.pattern);
        assert_eq!(name("NVIDIA H100 PCIe"), Some("H100 PCIe"));
        assert_eq!(name("NVIDIA H100 80GB HBM3"), Some("H100"));
        assert_eq!(name("NVIDIA H200"), Some("H200"));
        assert_eq!(name("Apple M2 Max"), Some("M2 Max"));
        assert_eq!(name("Apple M2"), Some("Apple M2"));
        assert_eq!(name("AMD Radeon RX 7900 XTX"), Some("RX 7900 XTX"));
        assert_eq!(name("AMD Instinct MI250X"), Some("MI250X"));
        assert_eq!(name("NVIDIA L40S"), Some("L40S"));
        assert_eq!(name("NVIDIA L40"), None);
        assert_eq!(name("NVIDIA GH200 480GB"), Some("GH200"));
        assert_eq!(name("NVIDIA GeForce RTX 4090 Laptop GPU"), None);
        assert_eq!(name("NVIDIA GeForce RTX 4090"), Some("RTX 4090"));
        assert_eq!(name("NVIDIA A100-SXM4-80GB"), Some("A100"));
        assert_eq!(name("llvmpipe (LLVM 19.1.7, 256 bits)"), None);
        // Every pattern is reachable: none is shadowed by an earlier, shorter one.
        for p in KNOWN_PEAKS {
            assert_eq!(known_peak(&format!("X {} Y", p.pattern)), Some(*p), "{p:?}");
        }
    }

    #[test]
    fn matmul_sizes_parse_or_name_the_problem() {
        assert_eq!(
            parse_matmul_sizes("64, 8x16x32").unwrap(),
            vec![[64, 64, 64], [8, 16, 32]]
        );
        for (bad, says) in [
            ("abc", "bad matmul size 'abc'"),
            ("0", "bad matmul size '0'"),
            ("2x3", "expected N"),
            ("100000", "too large"),
            ("", "no matmul sizes"),
        ] {
            let e = format!("{:#}", parse_matmul_sizes(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
