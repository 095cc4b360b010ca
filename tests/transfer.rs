//! Transfer learning: frozen layers, cached frozen outputs, keeping pretrained layers.

mod common;

use common::gpu;
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::lower as mlp;
use steadygrad::ops::Op;
use steadygrad::ops::*;
use steadygrad::{
    data, Activation, BatchNorm, Engine, FitOptions, MlpSpec, Model, Optimizer, Tolerance,
};

fn spec() -> MlpSpec {
    MlpSpec::new(2, &[16, 16, 12], 3)
        .activation(Activation::Tanh)
        .batch_norm(BatchNorm::default())
        .optimizer(Optimizer::sgd(0.1))
        .seed(4)
}

fn opts() -> FitOptions {
    FitOptions {
        epochs: 2,
        batch_size: 16,
        shuffle_seed: 3,
        drop_last: false,
    }
}

/// Frozen parameters and running statistics do not move; trainable ones do.
#[test]
fn frozen_layers_do_not_change() {
    let d = data::synthetic::spirals(20, 3, 0.05, 1);
    for engine in [
        Box::new(CpuEngine::new()) as Box<dyn Engine>,
        Box::new(GpuEngine::new(gpu())),
    ] {
        let mut m = Model::new(spec().freeze(2), engine).unwrap();
        let before = m.state_dict().unwrap();
        m.fit(&d, None, &opts(), |_| {}).unwrap();
        for (a, b) in before.iter().zip(m.state_dict().unwrap()) {
            let frozen = a.name.starts_with("layers.0.") || a.name.starts_with("layers.1.");
            assert_eq!(a.values == b.values, frozen, "{} frozen={frozen}", a.name);
        }
    }
}

/// No gradient, update or backward kernel exists for frozen layers.
#[test]
fn no_backward_below_lowest_trainable_layer() {
    let s = spec().freeze(2);
    let plan = mlp::build(&s, &s.persistent(), 8).unwrap();
    for op in &plan.train {
        let (_, writes) = op.reads_writes();
        for w in writes {
            let name = &plan.tensors[w].name;
            assert!(
                !(name.ends_with(".grad")
                    && (name.starts_with("layers.0.") || name.starts_with("layers.1."))),
                "frozen layer gradient {name} is computed by {op:?}"
            );
        }
        assert!(
            !matches!(op, Op::BatchNormTrain(BatchNormTrain { x, .. }) if plan.tensors[*x].name.starts_with("layers.0.") || plan.tensors[*x].name.starts_with("layers.1."))
        );
    }
    let grads: Vec<&str> = plan
        .grads
        .iter()
        .map(|&(p, _)| plan.tensors[p].name.as_str())
        .collect();
    assert!(
        grads
            .iter()
            .all(|n| n.starts_with("layers.2.") || n.starts_with("layers.3.")),
        "{grads:?}"
    );
    // Unfrozen, the same model has backward ops for every layer.
    let full = mlp::build(&spec(), &spec().persistent(), 8).unwrap();
    assert!(full.train.len() > plan.train.len());
}

/// Training from cached frozen outputs gives the same model as recomputing them each
/// epoch, on both backends, and GPU and CPU agree.
#[test]
fn cached_frozen_outputs_train_the_same_model() {
    let d = data::synthetic::spirals(20, 3, 0.05, 1);
    let valid = data::synthetic::spirals(5, 3, 0.05, 2);
    let mut finals = Vec::new();
    for engine_is_gpu in [true, false] {
        let mut results = Vec::new();
        for cache in [false, true] {
            let engine: Box<dyn Engine> = if engine_is_gpu {
                Box::new(GpuEngine::new(gpu()))
            } else {
                Box::new(CpuEngine::new())
            };
            let mut m = Model::new(spec().freeze(2), engine).unwrap();
            m.cache_frozen_outputs(cache);
            let reports = m.fit(&d, Some(&valid), &opts(), |_| {}).unwrap();
            results.push((
                m.state_dict().unwrap(),
                reports.last().unwrap().valid.unwrap().loss,
            ));
        }
        for (a, b) in results[0].0.iter().zip(&results[1].0) {
            let t = steadygrad::check::compare(&a.name, &b.values, &a.values, Tolerance::default());
            assert!(t.pass, "cache changed {}: {t:?}", a.name);
        }
        assert!((results[0].1 - results[1].1).abs() < 1e-5);
        finals.push(results.pop().unwrap().0);
    }
    for (g, c) in finals[0].iter().zip(&finals[1]) {
        let t = steadygrad::check::compare(&g.name, &g.values, &c.values, Tolerance::default());
        assert!(t.pass, "GPU vs CPU {}: {t:?}", g.name);
    }
}

#[test]
fn cache_refuses_skip_across_the_boundary() {
    let s = MlpSpec::new(2, &[8, 8, 8, 8], 3).residual(2).freeze(2);
    // Layer 3 reads layer 1's output: above the boundary at 2, fine.
    assert!(mlp::build_from(&s, &s.persistent(), 4, 2).is_ok());
    // Layer 1 reads the input; starting at 2 is fine, but at 1 its skip source is cut.
    let s = MlpSpec::new(2, &[8, 8, 8, 8], 3).residual(2).freeze(3);
    let e = mlp::build_from(&s, &s.persistent(), 4, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("below the cached boundary"), "{e}");
}

/// Keep the lower layers of a pretrained model, replace the output layer with a new
/// size, freeze, train, then unfreeze.
#[test]
fn keep_pretrained_layers_then_unfreeze() {
    let d = data::synthetic::spirals(20, 3, 0.05, 1);
    let mut pre = Model::new(spec(), Box::new(GpuEngine::new(gpu()))).unwrap();
    pre.fit(&d, None, &opts(), |_| {}).unwrap();
    let pretrained = pre.state_dict().unwrap();

    let mut new_spec = spec().freeze(3);
    new_spec.output = 5;
    let d5 = steadygrad::Dataset::classification(
        d.features.clone(),
        &d.targets.iter().map(|&t| t as usize).collect::<Vec<_>>(),
        2,
        5,
    )
    .unwrap();
    let mut m = Model::new(new_spec, Box::new(GpuEngine::new(gpu()))).unwrap();
    m.load_layers(&pretrained, 3).unwrap();
    let loaded = m.state_dict().unwrap();
    for t in &loaded {
        if let Some(p) = pretrained
            .iter()
            .find(|p| p.name == t.name && !t.name.starts_with("layers.3."))
        {
            assert_eq!(p.values, t.values, "{} kept", t.name);
        }
    }
    m.cache_frozen_outputs(true);
    m.fit(&d5, None, &opts(), |_| {}).unwrap();
    let after_frozen = m.state_dict().unwrap();
    assert_eq!(
        after_frozen[0].values, loaded[0].values,
        "layer 0 stayed frozen"
    );
    m.set_frozen_layers(0).unwrap();
    m.fit(&d5, None, &opts(), |_| {}).unwrap();
    assert_ne!(
        m.state_dict().unwrap()[0].values,
        loaded[0].values,
        "layer 0 trains once unfrozen"
    );

    // A different architecture is refused by name.
    let mut wrong = Model::new(
        MlpSpec::new(2, &[10, 16, 12], 5).batch_norm(BatchNorm::default()),
        Box::new(CpuEngine::new()),
    )
    .unwrap();
    let e = format!("{:#}", wrong.load_layers(&pretrained, 2).unwrap_err());
    assert!(
        e.contains("layers.0.linear.weight") && e.contains("shape"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        MlpSpec::new(2, &[4], 2).freeze(2).validate().unwrap_err()
    );
    assert!(e.contains("at least the output layer must train"), "{e}");
}
