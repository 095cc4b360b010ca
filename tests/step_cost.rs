//! The plan rule of the GPU backend: everything a step needs (pipelines, bind groups,
//! uniforms) is made when the plan is compiled, a training step is one command-buffer
//! submission, and the host reads nothing back unless asked.

mod common;

use common::{gpu, random};
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::graph::Stage;
use steadygrad::model::lower as mlp;
use steadygrad::tensor::Hyper;
use steadygrad::{Activation, BatchNorm, Clip, MlpSpec, Optimizer};

#[test]
fn steps_create_nothing_and_submit_once() {
    // Most of the op set in one model: batch norm, residual skips, dropout, PReLU, norm
    // clipping and Adam, plus the always-on guard.
    let spec = MlpSpec::new(6, &[16, 16, 16, 12], 3)
        .activation(Activation::PRELU)
        .batch_norm(BatchNorm::default())
        .residual(2)
        .dropout(0.1)
        .clip(Clip::Norm(1.0))
        .optimizer(Optimizer::adam(1e-3))
        .seed(3);
    let rows = 33;
    let persistent = spec.persistent();
    let mut engine = GpuEngine::new(gpu());
    engine.init_persistent(&persistent).unwrap();
    engine.set_hyper(Hyper::lr(1e-3)).unwrap();
    let plan = mlp::build(&spec, &persistent, rows).unwrap();
    let id = engine.compile(&plan).unwrap();
    let x = random(rows * spec.input, 1);
    let y: Vec<f32> = (0..rows).map(|i| (i % spec.output) as f32).collect();
    engine.write(id, plan.input.unwrap(), &x).unwrap();
    engine.write(id, plan.target.unwrap(), &y).unwrap();

    let compiled = engine.counters();
    assert!(
        compiled.pipelines > 10 && compiled.bind_groups > 30,
        "{compiled:?}"
    );
    assert_eq!(compiled.stage_submissions, 0);
    for stage in [Stage::Train, Stage::Eval, Stage::Predict] {
        for _ in 0..5 {
            engine.run(id, stage).unwrap();
        }
    }
    let after = engine.counters();
    assert_eq!(
        after.pipelines, compiled.pipelines,
        "pipelines built while stepping"
    );
    assert_eq!(
        after.bind_groups, compiled.bind_groups,
        "bind groups made while stepping"
    );
    assert_eq!(after.stage_submissions, 15, "one submission per stage run");
    assert_eq!(
        after.readbacks, compiled.readbacks,
        "steps read nothing back"
    );

    // Reading the metrics is the one readback, and the steps really ran.
    let m = engine.read(id, plan.metrics.unwrap()).unwrap();
    assert_eq!(
        m[2] as usize,
        10 * rows,
        "rows counted by the train and eval runs"
    );
    assert!(m[0].is_finite() && m[0] > 0.0, "{m:?}");
    assert_eq!(engine.counters().readbacks, compiled.readbacks + 1);
}
