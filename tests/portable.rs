//! The portable device profile: `STEADYGRAD_LIMITS=webgpu` opens the device with WebGPU's
//! default limits and no optional feature, and a model with batch norm, dropout, a skip
//! connection, Adam and clipping trains on it and agrees with the CPU reference. (CI also
//! runs the GPU-vs-CPU suites under the profile; this test proves the profile is what they
//! got.) Its own test binary: the variable is process-wide.

use steadygrad::gpu::{AdapterSelection, GpuContext, GpuEngine, LimitsProfile};
use steadygrad::{check, Activation, BatchNorm, Clip, MlpSpec, Optimizer, Tolerance};

#[test]
fn webgpu_profile_opens_default_limits_and_trains() {
    std::env::set_var(LimitsProfile::ENV, "webgpu");
    let ctx = GpuContext::new(&AdapterSelection::default()).unwrap_or_else(|e| {
        panic!("GPU tests need a wgpu adapter (apt-get install mesa-vulkan-drivers): {e:#}")
    });
    assert_eq!(ctx.limits, wgpu::Limits::default());
    assert_eq!(ctx.device.limits(), wgpu::Limits::default());
    assert_eq!(ctx.device.features(), wgpu::Features::empty());

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
    let engine = GpuEngine::new(std::sync::Arc::new(ctx));
    let report = check::cross_check_engine(&spec, &x, &y, engine, Tolerance::default()).unwrap();
    assert!(report.passed(), "{}", report.table());

    std::env::set_var(LimitsProfile::ENV, "bogus");
    let e = GpuContext::new(&AdapterSelection::default())
        .err()
        .expect("a bad profile is refused");
    assert!(e.to_string().contains("STEADYGRAD_LIMITS=bogus"), "{e}");
}
