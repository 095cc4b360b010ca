//! Every kernel module the engine can build, read with naga: it must validate, and its
//! declarations must match the binding table and uniform layouts its family's `wgpu.rs`
//! lowers against (group, binding, variable name, storage/uniform, read/read_write; each
//! uniform struct's field names, scalar types and offsets). Rust and WGSL then agree by
//! construction instead of by position.

use naga::{AddressSpace, ScalarKind, StorageAccess, TypeInner};
use steadygrad::device::{Access, ShaderTable};
use steadygrad::ops::shader_tables;

fn parse(t: &ShaderTable, vec4: bool) -> naga::Module {
    let src = t.shader.source(vec4);
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
        panic!(
            "{} (vec4 {vec4}) does not parse:\n{}",
            t.shader.name,
            e.emit_to_string(&src)
        )
    });
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{} (vec4 {vec4}) does not validate: {e:?}", t.shader.name));
    module
}

/// `(binding, name, access)` of every resource the module declares.
fn declared(module: &naga::Module, what: &str) -> Vec<(u32, String, Access)> {
    let mut out = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        assert_eq!(rb.group, 0, "{what}: {:?} is not in group 0", var.name);
        let access = match var.space {
            AddressSpace::Uniform => Access::Uniform,
            AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                Access::ReadWrite
            }
            AddressSpace::Storage { .. } => Access::Read,
            AddressSpace::Handle => Access::Texture,
            other => panic!("{what}: {:?} in address space {other:?}", var.name),
        };
        out.push((rb.binding, var.name.clone().unwrap_or_default(), access));
    }
    out.sort();
    out
}

/// The uniform struct behind the variable `name`: `(field, type, offset)` and its size.
fn uniform_layout(module: &naga::Module, name: &str) -> (Vec<(String, String, u32)>, u32) {
    let var = module
        .global_variables
        .iter()
        .map(|(_, v)| v)
        .find(|v| v.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no variable {name}"));
    let TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
        panic!("{name} is not a struct");
    };
    let fields = members
        .iter()
        .map(|m| {
            let ty = match module.types[m.ty].inner {
                TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Uint => "u32",
                TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Float => "f32",
                ref other => panic!("{name}.{:?} has type {other:?}", m.name),
            };
            (m.name.clone().unwrap_or_default(), ty.to_string(), m.offset)
        })
        .collect();
    (fields, *span)
}

#[test]
fn binding_tables_and_uniforms_match_every_kernel_module() {
    let tables = shader_tables();
    assert!(tables.len() >= 14, "only {} kernel modules", tables.len());
    for t in &tables {
        let builds: &[bool] = if t.shader.over_elements {
            &[false, true]
        } else {
            &[false]
        };
        for &vec4 in builds {
            let what = format!("{} (vec4 {vec4})", t.shader.name);
            let module = parse(t, vec4);
            let mut expected: Vec<(u32, String, Access)> = t
                .slots
                .iter()
                .map(|s| (s.binding, s.name.to_string(), s.access))
                .collect();
            if t.dims.is_some() {
                expected.push((0, "dims".to_string(), Access::Uniform));
            }
            expected.sort();
            assert_eq!(declared(&module, &what), expected, "{what}: binding table");
            let uniforms = t
                .dims
                .map(|d| ("dims", d))
                .into_iter()
                .chain(t.uniforms.iter().copied());
            for (name, fields) in uniforms {
                let (layout, span) = uniform_layout(&module, name);
                let want: Vec<(String, String, u32)> = fields
                    .iter()
                    .enumerate()
                    .map(|(i, (f, ty))| (f.to_string(), ty.to_string(), 4 * i as u32))
                    .collect();
                assert_eq!(layout, want, "{what}: uniform {name}");
                assert_eq!(span, 4 * fields.len() as u32, "{what}: size of {name}");
            }
        }
    }
}

#[test]
fn a_mismatched_table_is_caught() {
    // The check must be able to fail: a table with one binding's access flipped differs.
    let t = shader_tables()
        .into_iter()
        .find(|t| t.shader.name == "elementwise")
        .expect("elementwise family");
    let module = parse(&t, false);
    let mut wrong: Vec<(u32, String, Access)> = t
        .slots
        .iter()
        .map(|s| (s.binding, s.name.to_string(), Access::ReadWrite))
        .collect();
    wrong.push((0, "dims".to_string(), Access::Uniform));
    wrong.sort();
    assert_ne!(declared(&module, "elementwise"), wrong);
}
