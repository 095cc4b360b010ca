//! Training reaches a stated accuracy on the built-in spirals, on both backends.

mod common;

use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{data, Activation, FitOptions, MlpSpec, Model, Optimizer};

/// Three interleaved spirals, which no linear model separates (a linear classifier stays
/// near 50%); a deep ReLU MLP must reach 90% validation accuracy within 25 epochs.
fn train_spirals(engine: Box<dyn Engine>) -> f32 {
    let all = data::synthetic::spirals(400, 3, 0.05, 5);
    let (train, valid) = (all.slice(0, 960), all.slice(960, 1200));
    let spec = MlpSpec::new(2, &[48; 8], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(0.05))
        .seed(42);
    let mut model = Model::new(spec, engine).unwrap();
    let opts = FitOptions {
        epochs: 25,
        batch_size: 32,
        shuffle_seed: 1,
        drop_last: false,
    };
    let reports = model.fit(&train, Some(&valid), &opts, |_| {}).unwrap();
    let first = reports.first().unwrap().train.loss;
    let last = reports.last().unwrap();
    assert!(
        last.train.loss < first * 0.5,
        "loss fell from {first} to {}",
        last.train.loss
    );
    last.valid.unwrap().accuracy.unwrap()
}

#[test]
fn gpu_learns_spirals() {
    let acc = train_spirals(Box::new(GpuEngine::new(common::gpu())));
    assert!(acc >= 0.9, "GPU validation accuracy {acc}");
}

#[test]
fn cpu_learns_spirals() {
    let acc = train_spirals(Box::new(CpuEngine::new()));
    assert!(acc >= 0.9, "CPU validation accuracy {acc}");
}

#[test]
fn linear_model_cannot_solve_spirals() {
    let all = data::synthetic::spirals(400, 3, 0.05, 5);
    let spec = MlpSpec::new(2, &[], 3)
        .optimizer(Optimizer::sgd(0.1))
        .seed(1);
    let mut model = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let opts = FitOptions {
        epochs: 20,
        batch_size: 32,
        shuffle_seed: 1,
        drop_last: false,
    };
    let acc = model
        .fit(&all, None, &opts, |_| {})
        .unwrap()
        .last()
        .unwrap()
        .train
        .accuracy
        .unwrap();
    assert!(
        acc < 0.7,
        "a linear model should not separate spirals, got {acc}"
    );
}

/// The last partial batch of an epoch is trained too (a second plan of that size), and
/// GPU and CPU stay in step over several epochs of it.
#[test]
fn partial_batches_and_multi_epoch_agreement() {
    let all = data::synthetic::spirals(15, 3, 0.05, 2); // 45 rows: batches of 16, 16, 13
    let spec = MlpSpec::new(2, &[16; 3], 3)
        .activation(Activation::Tanh)
        .optimizer(Optimizer::sgd(0.1))
        .seed(9);
    let opts = FitOptions {
        epochs: 3,
        batch_size: 16,
        shuffle_seed: 4,
        drop_last: false,
    };
    let mut g = Model::new(spec.clone(), Box::new(GpuEngine::new(common::gpu()))).unwrap();
    let mut c = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let rg = g.fit(&all, None, &opts, |_| {}).unwrap();
    let rc = c.fit(&all, None, &opts, |_| {}).unwrap();
    assert_eq!(
        g.steps().unwrap(),
        9,
        "3 epochs × 3 batches, counted on the GPU"
    );
    assert_eq!(c.steps().unwrap(), 9);
    for (a, b) in rg.iter().zip(&rc) {
        assert_eq!(a.train.rows, 45);
        assert!(
            (a.train.loss - b.train.loss).abs() < 1e-4,
            "{} vs {}",
            a.train.loss,
            b.train.loss
        );
    }
    for (pg, pc) in g.parameters().unwrap().iter().zip(c.parameters().unwrap()) {
        let t = steadygrad::check::compare(
            &pg.name,
            &pg.values,
            &pc.values,
            steadygrad::Tolerance::default(),
        );
        assert!(t.pass, "{} after 9 steps: max abs {:e}", pg.name, t.max_abs);
    }
}

/// A dataset larger than the adapter's largest storage binding still trains: batches
/// are uploaded one at a time, never the whole set.
#[test]
fn dataset_larger_than_a_storage_binding_trains() {
    let ctx = common::gpu();
    let max = ctx.max_binding_bytes() as usize;
    let input = 1024;
    let rows = max / (4 * input) + 257;
    assert!(rows * input * 4 > max);
    let features: Vec<f32> = (0..rows * input)
        .map(|i| ((i * 7) % 13) as f32 / 13.0)
        .collect();
    let labels: Vec<usize> = (0..rows).map(|r| r % 2).collect();
    let data = steadygrad::Dataset::classification(features, &labels, input, 2).unwrap();
    let spec = MlpSpec::new(input, &[4], 2)
        .optimizer(Optimizer::sgd(0.01))
        .seed(1);
    let mut m = Model::new(spec, Box::new(GpuEngine::new(ctx))).unwrap();
    let opts = FitOptions {
        epochs: 1,
        batch_size: 4096,
        shuffle_seed: 1,
        drop_last: false,
    };
    let r = m.fit(&data, None, &opts, |_| {}).unwrap();
    assert_eq!(r[0].train.rows, rows);
    assert!(r[0].train.loss.is_finite());
}
