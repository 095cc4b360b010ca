//! The WGSL `erf` and `erfc` that GELU uses (WGSL has none) against reference values,
//! over a wide range and into the tail.

mod common;

use common::gpu;

// ---------------------------------------------------------------------------------------
// erf: WGSL has none, so shaders/activation.wgsl carries its own (GELU uses it through
// erfc). It is run here through a probe entry point appended to the real shader source.

const PROBE: &str = r#"
@compute @workgroup_size(256)
fn erf_probe(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        out[i] = select(erfc(x[i]), erf(x[i]), dims.units == 0u);
    }
}
"#;

/// Runs the WGSL `erf` (`erfc` when `complement`) on `xs`.
fn gpu_erf(xs: &[f32], complement: bool) -> Vec<f32> {
    use wgpu::util::DeviceExt;
    let ctx = gpu();
    let device = &ctx.device;
    let source = steadygrad::ops::activation::wgpu::SHADER.source(false) + PROBE;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("erf probe"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("erf probe"),
        layout: None,
        module: &module,
        entry_point: Some("erf_probe"),
        compilation_options: Default::default(),
        cache: None,
    });
    let dims = [xs.len() as u32, complement as u32, 0, 0];
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let ubuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&dims),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let xbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(xs),
        usage: storage,
    });
    let bytes = (xs.len() * 4) as u64;
    let obuf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: storage,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: ubuf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: xbuf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: obuf.as_entire_binding(),
            },
        ],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        let groups = xs.len().div_ceil(256) as u32;
        let gx = groups.min(65_535);
        pass.dispatch_workgroups(gx, groups.div_ceil(gx), 1);
    }
    enc.copy_buffer_to_buffer(&obuf, 0, &staging, 0, bytes);
    ctx.queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| {
        r.expect("map erf probe output")
    });
    ctx.wait().unwrap();
    let out = bytemuck::cast_slice::<u8, f32>(&staging.get_mapped_range(..).unwrap()).to_vec();
    out
}

/// The CPU reference (libm's erf/erfc, < 1 ulp in f64) against published values, so the
/// GPU test below compares with something right. Tolerance: 1e-15 relative, f64 rounding.
#[test]
fn erf_reference_values() {
    for (x, erf, erfc) in [
        (0.5, 0.5204998778130465, 0.4795001221869535),
        (1.0, 0.8427007929497149, 0.15729920705028513),
        (2.0, 0.9953222650189527, 0.004677734981047266),
        (5.0, 0.9999999999984626, 1.537_459_794_428_035e-12),
    ] {
        assert!((steadygrad::ops::activation::cpu::erf(x) - erf).abs() <= 1e-15 * erf);
        assert!((steadygrad::ops::activation::cpu::erfc(x) - erfc).abs() <= 1e-15 * erfc);
        assert_eq!(
            steadygrad::ops::activation::cpu::erf(-x),
            -steadygrad::ops::activation::cpu::erf(x)
        );
    }
}

/// WGSL `erf` against libm over [-10, 10] in steps of 1e-5 (two million points) plus edge
/// values. Bound: |erf_gpu − erf| <= 1.2e-7. The fits themselves are accurate to 2e-8;
/// rounding the result to f32 costs up to 3e-8 (half an ulp below 1), and the remaining
/// budget covers rounding inside the polynomial and WGSL's `exp`, which the spec allows a
/// few ulp. A wrong coefficient or branch gives errors of 1e-6 or more.
#[test]
fn wgsl_erf_is_accurate_over_a_wide_range() {
    let n = 2_000_001;
    let mut xs: Vec<f32> = (0..n)
        .map(|i| -10.0 + 20.0 * i as f32 / (n - 1) as f32)
        .collect();
    let split = 0.921875f32;
    for v in [
        0.0,
        1e-30,
        1e-40, // subnormal
        f32::MIN_POSITIVE,
        1e-4,
        split,
        split.next_down(),
        split.next_up(),
        3.92,
        4.0f32.next_down(),
        4.0,
        4.0f32.next_up(),
        10.0,
        1e30,
        f32::MAX,
        f32::INFINITY,
    ] {
        xs.push(v);
        xs.push(-v);
    }
    let got = gpu_erf(&xs, false);
    let (mut worst, mut at) = (0.0f64, 0.0f32);
    for (&x, &g) in xs.iter().zip(&got) {
        let err = (g as f64 - steadygrad::ops::activation::cpu::erf(x as f64)).abs();
        if err > worst || err.is_nan() {
            (worst, at) = (err, x);
        }
    }
    println!("WGSL erf: max abs error {worst:.3e} at x = {at}");
    assert!(
        worst <= 1.2e-7,
        "WGSL erf max abs error {worst:e} at x = {at}"
    );
    // Small arguments keep their relative accuracy (erf(x) ≈ 1.128x): 4 ulp.
    for (&x, &g) in xs.iter().zip(&got) {
        // Subnormal results have fewer bits (and GPUs may flush them), so start above.
        if x.abs() >= 1e-37 && x.abs() < 0.5 {
            let want = steadygrad::ops::activation::cpu::erf(x as f64);
            assert!(
                ((g as f64 - want) / want).abs() <= 4.0 * f32::EPSILON as f64,
                "erf({x}) = {g}, expected {want}"
            );
        }
    }
}

/// WGSL `erfc`, which GELU uses for Φ. Absolute error <= 2.4e-7 over [-10, 10]: for
/// negative arguments erfc is near 2, where an f32 ulp is 2.4e-7. In the upper tail
/// (split, 4), where 1 − erf would cancel to nothing, relative error <= 8e-6: Q(t) falls
/// to −17 there and its f32 rounding (ulp 1.9e-6) passes through exp as relative error,
/// a few 1e-6 with a correctly rounded exp (scripts/fit_erf.py), plus the GPU's own exp
/// error. A wrong tail coefficient gives 1e-4 or more. Beyond 4 it returns 0, within
/// 1.6e-8 of the truth.
#[test]
fn wgsl_erfc_keeps_the_tail() {
    let n = 400_001;
    let xs: Vec<f32> = (0..n)
        .map(|i| -10.0 + 20.0 * i as f32 / (n - 1) as f32)
        .collect();
    let got = gpu_erf(&xs, true);
    let (mut abs, mut rel) = (0.0f64, 0.0f64);
    for (&x, &g) in xs.iter().zip(&got) {
        let want = steadygrad::ops::activation::cpu::erfc(x as f64);
        abs = abs.max((g as f64 - want).abs());
        if x > 0.921875 && x < 4.0 {
            rel = rel.max(((g as f64 - want) / want).abs());
        }
    }
    println!("WGSL erfc: max abs error {abs:.3e}, max rel error on (0.92, 4) {rel:.3e}");
    assert!(abs <= 2.4e-7, "erfc max abs error {abs:e}");
    assert!(rel <= 8e-6, "erfc max relative error in the tail {rel:e}");
}
