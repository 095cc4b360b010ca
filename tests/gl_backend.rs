//! wgpu's GL backend (on Linux CI: Mesa's llvmpipe through headless EGL) opens, runs every
//! kernel a training step with batch norm, dropout, a skip connection, Adam and clipping
//! needs, and agrees with the CPU reference. Fails, not skips, without a GL adapter: the
//! test script installs one. The suites run again with `STEADYGRAD_BACKEND=gl` there.

mod common;

use steadygrad::gpu::{AdapterSelection, GpuContext, GpuEngine};

#[test]
fn gl_backend_trains_and_agrees_with_cpu() {
    let sel = AdapterSelection::new(Some("gl"), None).unwrap();
    let ctx = GpuContext::new(&sel).unwrap_or_else(|e| {
        panic!("no GL adapter (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri): {e:#}")
    });
    assert_eq!(ctx.info.backend, wgpu::Backend::Gl, "{}", ctx.describe());
    common::assert_rich_model_agrees(GpuEngine::new(std::sync::Arc::new(ctx)));
}
