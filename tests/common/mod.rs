//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod digits;
pub mod events;
pub mod fd;
pub mod files;
pub mod health;
pub mod matmul;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine, MatmulVariant};
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::Op;
use steadygrad::tensor::{Hyper, Storage, TensorId};

/// Sizes that are not multiples of any workgroup or tile size.
pub const ODD_SIZES: [usize; 4] = [1, 7, 33, 257];

/// Sizes that divide by 4, for the kernels that switch to `vec4` elements there, still
/// not multiples of a workgroup (260 = 65 vectors; 70 000 spans many workgroups).
pub const VEC4_SIZES: [usize; 4] = [4, 36, 260, 70_000];

/// The process-wide GPU device. Panics (fails the test) when there is none: a green run
/// must prove the GPU path ran.
pub fn gpu() -> Arc<GpuContext> {
    GpuContext::shared().unwrap_or_else(|e| {
        panic!("GPU tests need a wgpu adapter (on Linux: apt-get install mesa-vulkan-drivers libvulkan1): {e:#}")
    })
}

pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// A single-op plan: `tensors` are `(name, len)` pairs, all local.
pub struct OpCase {
    pub plan: Plan,
}

impl OpCase {
    pub fn new(tensors: &[(&str, usize)]) -> Self {
        let mut plan = Plan::default();
        for (name, len) in tensors {
            plan.add_tensor(*name, &[*len], Storage::Local);
        }
        OpCase { plan }
    }

    pub fn id(&self, name: &str) -> TensorId {
        self.plan
            .find(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn op(mut self, op: Op) -> Self {
        self.plan.forward.push(op);
        self
    }

    /// Runs the plan on `engine` with `inputs` written first; returns every tensor by name.
    pub fn run(
        &self,
        engine: &mut dyn Engine,
        inputs: &[(&str, Vec<f32>)],
        lr: f32,
    ) -> Vec<(String, Vec<f32>)> {
        engine.init_persistent(&[]).unwrap();
        engine.set_hyper(Hyper::lr(lr)).unwrap();
        let id = engine.compile(&self.plan).unwrap();
        for (name, data) in inputs {
            engine.write(id, self.id(name), data).unwrap();
        }
        engine.run(id, Stage::Predict).unwrap();
        (0..self.plan.tensors.len())
            .map(|t| {
                (
                    self.plan.tensors[t].name.clone(),
                    engine.read(id, t).unwrap(),
                )
            })
            .collect()
    }

    /// Runs on the GPU and the CPU reference; returns `(name, gpu, cpu)` per tensor.
    pub fn both(&self, inputs: &[(&str, Vec<f32>)], lr: f32) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        self.both_with(MatmulVariant::Auto, inputs, lr)
    }

    /// `both` with the GPU engine's kernel variant forced: the texture variants also pick
    /// the CPU-adapter forms of the reductions, the buffer variants the GPU forms.
    pub fn both_with(
        &self,
        variant: MatmulVariant,
        inputs: &[(&str, Vec<f32>)],
        lr: f32,
    ) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let mut engine = GpuEngine::new(gpu());
        engine.set_matmul_variant(variant);
        let g = self.run(&mut engine, inputs, lr);
        let c = self.run(&mut CpuEngine::new(), inputs, lr);
        g.into_iter()
            .zip(c)
            .map(|((n, g), (_, c))| (n, g, c))
            .collect()
    }
}

/// Asserts every tensor agrees within the default cross-check tolerance.
pub fn assert_close(results: &[(String, Vec<f32>, Vec<f32>)], context: &str) {
    for (name, g, c) in results {
        let t = steadygrad::check::compare(name, g, c, steadygrad::Tolerance::default());
        assert!(
            t.pass,
            "{context}: tensor '{name}' differs: max abs {:e}, max rel {:e}",
            t.max_abs, t.max_rel
        );
    }
}

/// After a training step on `model`, checks every gradient that step computed against
/// central differences (step `h`) of `loss`, the model's loss at its current parameters,
/// for every `stride`-th element. Parameters are first restored to `before`, the values
/// the gradients were computed at. Bound: `|fd − analytic| <= 2e-3 + 2e-2·|analytic|`.
pub fn assert_model_gradients(
    model: &mut steadygrad::Model,
    rows: usize,
    before: &[steadygrad::NamedTensor],
    h: f32,
    stride: usize,
    context: &str,
    mut loss: impl FnMut(&mut steadygrad::Model) -> f64,
) {
    let grads = model.gradient_names(rows).unwrap();
    let analytic: Vec<Vec<f32>> = grads
        .iter()
        .map(|(_, g)| model.read_tensor(rows, g).unwrap())
        .collect();
    for p in before {
        model.set_parameter(&p.name, &p.values).unwrap();
    }
    for ((param, grad), a) in grads.iter().zip(analytic) {
        let p0 = before
            .iter()
            .find(|p| &p.name == param)
            .unwrap()
            .values
            .clone();
        for i in (0..p0.len()).step_by(stride) {
            let mut p = p0.clone();
            p[i] = p0[i] + h;
            model.set_parameter(param, &p).unwrap();
            let up = loss(model);
            p[i] = p0[i] - h;
            model.set_parameter(param, &p).unwrap();
            let down = loss(model);
            model.set_parameter(param, &p0).unwrap();
            let fd = ((up - down) / (2.0 * h as f64)) as f32;
            assert!(
                (fd - a[i]).abs() <= 2e-3 + 2e-2 * a[i].abs(),
                "{context}: {grad}[{i}]: finite difference {fd} vs analytic {}",
                a[i]
            );
        }
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "steadygrad-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One training step of a model that needs every kind of kernel (batch norm, dropout, a
/// skip connection with a projection, GELU, Adam, norm clipping) on `engine` agrees with
/// the CPU reference within the default tolerance: the check for a device or backend.
pub fn assert_rich_model_agrees(engine: GpuEngine) {
    use steadygrad::{check, Activation, BatchNorm, Clip, MlpSpec, Optimizer, Tolerance};
    let spec = MlpSpec::new(9, &[33, 33, 7], 4)
        .activation(Activation::Gelu)
        .batch_norm(BatchNorm::default())
        .dropout(0.1)
        .residual(2)
        .optimizer(Optimizer::adam(1e-2))
        .clip(Clip::Norm(1.0))
        .seed(5);
    let rows = 33;
    let x: Vec<f32> = (0..rows * 9)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let y: Vec<f32> = (0..rows).map(|i| (i % 4) as f32).collect();
    let report = check::cross_check_engine(&spec, &x, &y, engine, Tolerance::default()).unwrap();
    assert!(report.passed(), "{}", report.table());
}

/// Runs the `steadygrad` binary in `cwd` with extra environment variables; returns
/// (success, stdout, stderr).
pub fn run_cli_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// [`run_cli_env`] with the environment as it is.
pub fn run_cli(args: &[&str], cwd: &Path) -> (bool, String, String) {
    run_cli_env(args, cwd, &[])
}

/// `points` per arm of 3 noisy spirals as a CSV file with columns `a,b,label`.
pub fn write_spirals_csv(path: &Path, points: usize) {
    let data = steadygrad::data::synthetic::spirals(points, 3, 0.05, 3);
    let mut s = String::from("a,b,label\n");
    for r in 0..data.rows {
        let f = &data.features[2 * r..2 * r + 2];
        s += &format!("{},{},{}\n", f[0], f[1], data.targets[r]);
    }
    std::fs::write(path, s).unwrap();
}

/// Every activation kind at its defaults and at other parameters.
pub fn activation_variants() -> Vec<steadygrad::ops::Activation> {
    use steadygrad::ops::Activation;
    let mut v: Vec<Activation> = Activation::ALL.to_vec();
    v.extend([
        Activation::LeakyRelu { slope: 0.2 },
        Activation::LeakyRelu { slope: 0.0 },
        Activation::Rrelu {
            lower: 0.05,
            upper: 0.45,
        },
        Activation::Prelu {
            per_unit: false,
            init: 0.1,
        },
        Activation::Elu { alpha: 0.5 },
        Activation::Elu { alpha: 2.0 },
    ]);
    v
}
