//! Every WGSL module the engine can build (each op family's file, over `f32` and `vec4`
//! elements, the generated texture-matmul kernels) translated by naga — the translator
//! wgpu itself uses — for every backend users run: SPIR-V (Vulkan), MSL (Metal), HLSL
//! (DX12) and GLSL ES 3.1 compute (GL), each entry point with its override constants at
//! their defaults and at each other value the engine sets, one constant at a time (the
//! tiled matmul's block sizes, `TILE_*`, only together, as each named `MatmulTile`). A
//! failure names the module, entry point, constants and backend. Also checks that every
//! module fits WebGPU's default limits on bindings per stage.
//!
//! Subgroup kernels are not translated for GL: the engine builds them only on devices
//! with `wgpu::Features::SUBGROUP` (see `ops/matmul/texture.rs`), which GLSL ES 3.1 lacks.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage, TypeInner};
use steadygrad::device::{MatmulTile, ShaderTable};
use steadygrad::ops::shader_tables;

fn validate(module: &Module, what: &str) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(module)
        .unwrap_or_else(|e| panic!("{what}: does not validate: {e:?}"))
}

/// Each override's value sets to try beyond the defaults: both values of a bool, every
/// small integer (activation kinds, flags), the default of a float; and where the module
/// has the tiled matmul's block sizes, every set of them the engine offers (other values
/// need not make a valid kernel: see `MatmulTile::check`).
fn override_values(module: &Module) -> Vec<Vec<(String, f64)>> {
    let mut sets = vec![Vec::new()];
    let tiled = module
        .overrides
        .iter()
        .any(|(_, o)| o.name.as_deref().is_some_and(|n| n.starts_with("TILE_")));
    if tiled {
        sets.extend(MatmulTile::ALL.iter().map(|t| {
            t.constants()
                .iter()
                .map(|&(n, v)| (n.to_string(), f64::from(v)))
                .collect()
        }));
    }
    for (_, o) in module.overrides.iter() {
        let Some(name) = o.name.clone() else { continue };
        if name.starts_with("TILE_") {
            continue;
        }
        let values: Vec<f64> = match &module.types[o.ty].inner {
            TypeInner::Scalar(s) if s.kind == naga::ScalarKind::Bool => vec![0.0, 1.0],
            TypeInner::Scalar(s) if s.kind == naga::ScalarKind::Uint => {
                (0..16).map(f64::from).collect()
            }
            _ => Vec::new(),
        };
        sets.extend(values.into_iter().map(|v| vec![(name.clone(), v)]));
    }
    sets
}

fn translate(module: &Module, info: &ModuleInfo, entry: &str, uses_subgroups: bool, what: &str) {
    // SPIR-V for Vulkan.
    let spv = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    naga::back::spv::write_vec(module, info, &spv, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e:?}"));

    // MSL for Metal (2.4: subgroup operations need 2.1 or later).
    let msl = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
        ..Default::default()
    };
    naga::back::msl::write_string(module, info, &msl, &pipeline)
        .unwrap_or_else(|e| panic!("{what}: MSL: {e:?}"));

    // HLSL for DX12 (shader model 6.0: wave intrinsics).
    let hlsl = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
    };
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &hlsl, &pipeline)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e:?}"));

    // GLSL ES 3.1 compute for GL.
    if uses_subgroups {
        return;
    }
    let mut glsl = naga::back::glsl::Options::default();
    // wgpu's GL backend assigns flat binding numbers; any distinct ones do here.
    for (i, (_, var)) in module.global_variables.iter().enumerate() {
        if let Some(rb) = &var.binding {
            glsl.binding_map.insert(*rb, i as u8);
        }
    }
    let pipeline = naga::back::glsl::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
        multiview: None,
    };
    let mut out = String::new();
    naga::back::glsl::Writer::new(
        &mut out,
        module,
        info,
        &glsl,
        &pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{what}: GLSL: {e:?}"));
}

fn modules() -> Vec<(ShaderTable, bool, String)> {
    let mut out = Vec::new();
    for t in shader_tables() {
        for vec4 in [false, true] {
            if vec4 && !t.shader.over_elements {
                continue;
            }
            let src = t.shader.source(vec4);
            out.push((t.clone(), vec4, src));
        }
    }
    out
}

#[test]
fn every_module_translates_for_every_backend() {
    let mut translated = 0;
    for (t, vec4, src) in modules() {
        let name = format!("{} (vec4 {vec4})", t.shader.name);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        let info = validate(&module, &name);
        let uses_subgroups = src.contains("subgroup");
        for ep in &module.entry_points {
            assert_eq!(ep.stage, ShaderStage::Compute, "{name}: {}", ep.name);
            for set in override_values(&module) {
                let what = format!("{name}, entry '{}', constants {set:?}", ep.name);
                let mut constants = PipelineConstants::default();
                for (k, v) in &set {
                    constants.insert(k.clone(), *v);
                }
                let (m, i) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((ShaderStage::Compute, &ep.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
                translate(&m, &i, &ep.name, uses_subgroups, &what);
                translated += 1;
            }
        }
    }
    // Every family's kernels, not a silently empty list.
    assert!(translated > 100, "only {translated} translations");
}

/// WebGPU's default limits, which the portable profile (`STEADYGRAD_LIMITS=webgpu`) opens
/// the device with: no entry point may bind more per stage. Pipelines are built with
/// layouts derived from each entry point, so what counts is what that entry point uses,
/// not everything its file declares.
#[test]
fn every_entry_point_fits_webgpu_default_binding_limits() {
    let limits = wgpu::Limits::default();
    let mut checked = 0;
    for (t, vec4, src) in modules() {
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let info = validate(&module, t.shader.name);
        for (i, ep) in module.entry_points.iter().enumerate() {
            let what = format!("{} (vec4 {vec4}), entry '{}'", t.shader.name, ep.name);
            let uses = info.get_entry_point(i);
            let count = |want: fn(&AddressSpace) -> bool| {
                module
                    .global_variables
                    .iter()
                    .filter(|(h, v)| v.binding.is_some() && want(&v.space) && !uses[*h].is_empty())
                    .count() as u32
            };
            let storage = count(|s| matches!(s, AddressSpace::Storage { .. }));
            let uniform = count(|s| matches!(s, AddressSpace::Uniform));
            let textures = count(|s| matches!(s, AddressSpace::Handle));
            assert!(
                storage <= limits.max_storage_buffers_per_shader_stage,
                "{what}: {storage} storage buffers, WebGPU guarantees {}",
                limits.max_storage_buffers_per_shader_stage
            );
            assert!(
                uniform <= limits.max_uniform_buffers_per_shader_stage,
                "{what}: {uniform} uniform buffers"
            );
            assert!(
                textures <= limits.max_storage_textures_per_shader_stage,
                "{what}: {textures} storage textures, WebGPU guarantees {}",
                limits.max_storage_textures_per_shader_stage
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} entry points");
}
