//! The portable device profile: `STEADYGRAD_LIMITS=webgpu` opens the device with WebGPU's
//! default limits and no optional feature, and a model with batch norm, dropout, a skip
//! connection, Adam and clipping trains on it and agrees with the CPU reference. (CI also
//! runs the GPU-vs-CPU suites under the profile; this test proves the profile is what they
//! got.) Its own test binary: the variable is process-wide.

mod common;

use steadygrad::gpu::{AdapterSelection, GpuContext, GpuEngine, LimitsProfile};

#[test]
fn webgpu_profile_opens_default_limits_and_trains() {
    std::env::set_var(LimitsProfile::ENV, "webgpu");
    let ctx = GpuContext::new(&AdapterSelection::default()).unwrap_or_else(|e| {
        panic!("GPU tests need a wgpu adapter (apt-get install mesa-vulkan-drivers): {e:#}")
    });
    assert_eq!(ctx.limits, wgpu::Limits::default());
    assert_eq!(ctx.device.limits(), wgpu::Limits::default());
    assert_eq!(ctx.device.features(), wgpu::Features::empty());

    common::assert_rich_model_agrees(GpuEngine::new(std::sync::Arc::new(ctx)));

    std::env::set_var(LimitsProfile::ENV, "bogus");
    let e = GpuContext::new(&AdapterSelection::default())
        .err()
        .expect("a bad profile is refused");
    assert!(e.to_string().contains("STEADYGRAD_LIMITS=bogus"), "{e}");
}
