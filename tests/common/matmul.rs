//! One matrix product on a GPU engine against the CPU reference, for the matmul kernel
//! tests (`matmul_variants.rs`, `matmul_tiles.rs`).

use steadygrad::bench::noise;
use steadygrad::check::{compare, Tolerance};
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::{Plan, Stage};
use steadygrad::ops::{MatMul, Op};
use steadygrad::tensor::{Storage, TensorId};

pub fn matmul_plan(
    m: usize,
    k: usize,
    n: usize,
    form: (bool, bool),
    accumulate: bool,
) -> (Plan, [TensorId; 3]) {
    let mut plan = Plan::default();
    let a = plan.add_tensor("a", &[m * k], Storage::Local);
    let b = plan.add_tensor("b", &[k * n], Storage::Local);
    let c = plan.add_tensor("c", &[m * n], Storage::Local);
    plan.forward.push(Op::MatMul(MatMul {
        a,
        b,
        c,
        m,
        k,
        n,
        trans_a: form.0,
        trans_b: form.1,
        accumulate,
    }));
    (plan, [a, b, c])
}

/// Runs one product on `engine` and returns the error against the CPU reference, if any.
pub fn check_product(
    engine: &mut GpuEngine,
    (m, k, n): (usize, usize, usize),
    form: (bool, bool),
    accumulate: bool,
    seed: u64,
) -> Option<String> {
    let (plan, [a, b, c]) = matmul_plan(m, k, n, form, accumulate);
    let (av, bv, c0) = (
        noise(m * k, seed + 1),
        noise(k * n, seed + 2),
        noise(m * n, seed + 3),
    );
    let id = engine.compile(&plan).unwrap();
    engine.write(id, a, &av).unwrap();
    engine.write(id, b, &bv).unwrap();
    engine.write(id, c, &c0).unwrap();
    engine.run(id, Stage::Predict).unwrap();
    let got = engine.read(id, c).unwrap();
    let mut want = c0;
    steadygrad::ops::matmul::cpu::matmul(&av, &bv, &mut want, m, k, n, form.0, form.1, accumulate);
    let name = format!("m={m} k={k} n={n} trans={form:?} accumulate={accumulate}");
    let r = compare(&name, &got, &want, Tolerance::default());
    (!r.pass).then(|| format!("{name}: max abs err {:e}", r.max_abs))
}
