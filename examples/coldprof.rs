use steadygrad::engine::Engine;
use steadygrad::gpu::{GpuContext, GpuEngine};
use steadygrad::graph::{mlp, Hyper, Stage};
use steadygrad::{Activation, Loss, MlpSpec, Optimizer};
fn main() {
    let ctx = GpuContext::shared().unwrap();
    let spec = MlpSpec::new(784, &[512; 8], 10)
        .activation(Activation::Relu)
        .loss(Loss::SoftmaxCrossEntropy)
        .optimizer(Optimizer::sgd(0.01))
        .seed(1);
    let p = spec.persistent();
    let mut e = GpuEngine::new(ctx);
    e.init_persistent(&p).unwrap();
    e.set_hyper(Hyper { lr: 0.01 }).unwrap();
    let plan = mlp::build(&spec, &p, 256).unwrap();
    let t = std::time::Instant::now();
    let id = e.compile(&plan).unwrap();
    println!(
        "compile {:?} pipelines {}",
        t.elapsed(),
        e.counters().pipelines
    );
    let mut times = e.profile(id, Stage::Train, 1).unwrap();
    let total: f64 = times.iter().map(|x| x.1.as_secs_f64()).sum();
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    println!("total {total:.3}");
    for (l, t) in times.iter().take(25) {
        println!("{:8.1} ms {l}", t.as_secs_f64() * 1e3);
    }
}
