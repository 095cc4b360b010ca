//! wgpu's GL backend (on Linux CI: Mesa's llvmpipe through headless EGL) opens, runs every
//! kernel a training step with batch norm, dropout, a skip connection, Adam and clipping
//! needs, and agrees with the CPU reference. Fails, not skips, without a GL adapter: the
//! test script installs one. The suites run again with `STEADYGRAD_BACKEND=gl` there.

use steadygrad::gpu::{AdapterSelection, GpuContext, GpuEngine};
use steadygrad::{check, Activation, BatchNorm, Clip, MlpSpec, Optimizer, Tolerance};

#[test]
fn gl_backend_trains_and_agrees_with_cpu() {
    let sel = AdapterSelection::new(Some("gl"), None).unwrap();
    let ctx = GpuContext::new(&sel).unwrap_or_else(|e| {
        panic!("no GL adapter (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri): {e:#}")
    });
    assert_eq!(ctx.info.backend, wgpu::Backend::Gl, "{}", ctx.describe());
    let spec = MlpSpec::new(9, &[33, 33, 7], 4)
        .activation(Activation::ELU)
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
    let engine = GpuEngine::new(std::sync::Arc::new(ctx));
    let report = check::cross_check_engine(&spec, &x, &y, engine, Tolerance::default()).unwrap();
    assert!(report.passed(), "{}", report.table());
}
