//! The texture-mirror matmul of CPU-backed adapters, as it is lowered: which operands
//! get mirrors, the copy or pack steps that refresh them (in windows of rows for a matrix
//! larger than one storage binding), and the fused epilogues (see `texture_kernel.rs` for
//! the kernel itself).

use super::texture_kernel::{self as tex, Epilogue, TexKernel};
use super::MatMul;
use super::{absorb, pack_pair};
use crate::device::{
    Absorbed, KernelKey, Lowerer, Mirror, MirrorCopy, MirrorKey, Res, Shader, ShaderTable, Slot,
    Step, Uniform,
};
use crate::ops::{Activate, ActivateBackward, AddBias, Op, SumRows};
use crate::tensor::TensorId;
use anyhow::Result;

pub const PACK: Shader = Shader::scalar(
    "matmul/pack",
    include_str!("../../../shaders/matmul/pack.wgsl"),
);

const PACK_SRC: Slot = Slot::read(1, "src");
const PACK_DST: Slot = Slot::texture(2, "dst");
const PACK_SRC4: Slot = Slot::read(3, "src4");

crate::uniform! {
    /// `pitch`: texels per mirror row with data; `row0`: the first source row of a window.
    pub struct PackDims { rows: u32, cols: u32, pitch: u32, row0: u32 }
}

/// Elements of the largest mirror a matmul's epilogue stores where a copy could refresh
/// it instead (see `produce`): 2048 texels, about what a copy's fixed cost buys.
const STORED_MIRROR_MAX: usize = 8192;

/// Texels per invocation row of `pack.wgsl`.
const PACK_WG: usize = 64;

/// Whether the device runs subgroups of exactly 8 invocations, as the cooperative loads
/// of the texture matmul assume.
fn subgroups_of_8(lw: &Lowerer) -> bool {
    let ctx = lw.ctx;
    ctx.device.features().contains(wgpu::Features::SUBGROUP)
        && ctx.info.subgroup_min_size == 8
        && ctx.info.subgroup_max_size == 8
}

/// `op` with the epilogue it absorbs from `following`, as the texture kernel, or `None`
/// where the engine does not use texture mirrors or a mirror would not fit the device's
/// texture limits (the caller then uses a buffer kernel).
pub fn lower(
    op: &MatMul,
    lw: &mut Lowerer,
    following: &[Op],
) -> Result<Option<(Vec<Step>, usize)>> {
    let subgroup = match lw.variant {
        crate::device::MatmulVariant::Texture => subgroups_of_8(lw),
        crate::device::MatmulVariant::TextureNoSubgroup => false,
        _ => return Ok(None),
    };
    let (epilogue, used) = fusable_epilogue(op, following);
    let MatMul {
        a,
        b,
        c,
        m,
        k,
        n,
        trans_b,
        accumulate,
        ..
    } = *op;
    let [a_key, b_key] = operand_keys(op);
    for key in [a_key, b_key] {
        if !lw.mirrors.mirrors.contains_key(&key) {
            let mirror = mirror(lw, key)?;
            lw.mirrors.mirrors.insert(key, mirror);
        }
    }
    let (Some(ma), Some(mb)) = (&lw.mirrors.mirrors[&a_key], &lw.mirrors.mirrors[&b_key]) else {
        return Ok(None);
    };
    let groups = [
        m.div_ceil(tex::ROWS as usize),
        n.div_ceil(tex::COLS as usize),
    ];
    if groups.iter().any(|&g| g > lw.max_groups()) {
        return Ok(None);
    }
    let [code, act] = epilogue.codes();
    let (view_a, view_b, pitch_a) = (ma.view.clone(), mb.view.clone(), ma.pitch);
    let stale: Vec<MirrorKey> = [a_key, b_key]
        .into_iter()
        .filter(|&key| lw.mirrors.refreshed(key))
        .collect();
    let mut steps = pack_pair::refresh(lw, &stale, following)?;
    let kernel = TexKernel { trans_b, subgroup };
    let (extra, c_shaped) = epilogue_buffers(lw, epilogue, c, &following[1..used]);
    // Where C exceeds one storage binding, dispatch windows of its rows; the kernel
    // reads A's mirror from the window's first row (`a_row0`).
    let max_elems = (lw.max_binding() / 4) as usize;
    let step = if m * n <= max_elems {
        m
    } else {
        // Not even one block of rows fits: the buffer kernels refuse it by name.
        let Some(rows) = lw.row_window(n, tex::ROWS as usize, max_elems) else {
            return Ok(None);
        };
        rows.min(m)
    };
    let windowed: Vec<wgpu::Buffer> = c_shaped.iter().map(|&t| lw.buffer(t)).collect();
    // The epilogue also stores its last output into the mirrors later matmuls read it
    // from, which spares a copy, or a pack dispatch for a transposed one, per mirror.
    // Not for C in windows: the kernel's rows are then the window's.
    let out = following[used - 1].reads_writes().1[0];
    let produced = if step == m && out != a && out != b {
        produce(lw, out, m, n, &following[used..])?
    } else {
        [None, None]
    };
    let mirror_out = produced
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_some())
        .map(|(i, _)| 1u32 << i)
        .sum();
    let out_views = out_views(lw, &produced);
    let extras = if step == m {
        absorb::find(lw, op, epilogue == Epilogue::Plain, &following[used..])
    } else {
        absorb::Extras::default()
    };
    let [p0, _, p2, p3, p4, p5] = lw.placeholders.clone();
    let param = |t: Option<TensorId>, spare: wgpu::Buffer| t.map_or(spare, |t| lw.buffer(t));
    let (param_c, param_sum) = (param(extras.update_c, p4), param(extras.update_sum, p5));
    let update = extras.update_c.is_some() as u32 | (extras.update_sum.is_some() as u32) << 1;
    let hyper = lw.hyper.clone();
    let (code, extra) = match extras.sum {
        Some(out) => (
            Epilogue::RowSums.codes()[0],
            [p0.clone(), lw.buffer(out), p2],
        ),
        None => (code, extra),
    };
    let guard = extras.guard;
    let (flags, step_bits) = match guard {
        Some(g) => (lw.buffer(g.flags), lw.buffer(g.step)),
        None => (p3, p0),
    };
    let guard_bits = guard.map_or(0, |g| {
        g.slot_c.is_some() as u32 | (g.slot_sum.is_some() as u32) << 1
    });
    let guard_u32 = |v: Option<usize>| u32::try_from(v.unwrap_or(0));
    let (slot_c, slot_sum, peaks) = (
        guard_u32(guard.and_then(|g| g.slot_c))?,
        guard_u32(guard.and_then(|g| g.slot_sum))?,
        guard_u32(guard.map(|g| g.peaks))?,
    );
    let shader = kernel.shader();
    let mut dispatches = Vec::new();
    for r0 in (0..m).step_by(step) {
        let rc = step.min(m - r0);
        let dims = tex::Dims {
            m: rc as u32,
            k: k as u32,
            n: n as u32,
            pitch_a,
            accumulate: accumulate as u32,
            epilogue: code,
            act,
            a_row0: r0 as u32,
            mirror_out,
            guard: guard_bits,
            slot_c,
            slot_sum,
            peaks,
            update,
            weight_decay: extras.weight_decay,
            ..Default::default()
        };
        let windows = if step < m {
            windowed
                .iter()
                .map(|b| (b.clone(), (r0 * n * 4) as u64, (rc * n * 4) as u64))
                .collect()
        } else {
            Vec::new()
        };
        let mut bindings = vec![
            (tex::MIRROR_A, Res::View(&view_a)),
            (tex::MIRROR_B, Res::View(&view_b)),
            (tex::C, Res::Tensor(c)),
            (tex::OUT_MIRRORS[0], Res::View(&out_views[0])),
            (tex::OUT_MIRRORS[1], Res::View(&out_views[1])),
            (tex::FLAGS, Res::Buffer(&flags)),
            (tex::STEP_BITS, Res::Buffer(&step_bits)),
            (tex::PARAM_C, Res::Buffer(&param_c)),
            (tex::PARAM_SUM, Res::Buffer(&param_sum)),
            (tex::HYPER, Res::Buffer(&hyper)),
        ];
        bindings.extend(
            tex::EPILOGUE_SLOTS
                .into_iter()
                .zip(extra.iter().map(Res::Buffer)),
        );
        let grid = [rc.div_ceil(tex::ROWS as usize) as u32, groups[1] as u32, 1];
        let key = KernelKey::new(&shader, "main");
        let d = lw.windowed(windows, |lw| lw.dispatch(key, Some(dims), &bindings, grid))?;
        dispatches.push(d);
    }
    steps.extend(dispatches.into_iter().map(Step::Dispatch));
    lw.mirrors.produced.extend(produced.into_iter().flatten());
    if let Some(out) = extras.sum {
        lw.absorbed.insert(Absorbed::Sum(out));
    }
    for p in [extras.update_c, extras.update_sum].into_iter().flatten() {
        lw.absorbed.insert(Absorbed::Update(p));
    }
    if let Some(g) = guard {
        if g.slot_c.is_some() {
            lw.absorbed.insert(Absorbed::Guard(c));
        }
        if let (Some(_), Some(out)) = (g.slot_sum, extras.sum) {
            lw.absorbed.insert(Absorbed::Guard(out));
        }
    }
    Ok(Some((steps, used)))
}

/// The mirror keys a texture matmul `op` reads its operands through. A transposed A is
/// transposed into its mirror: read in place, each of the kernel's strips of A would
/// span all k rows, which with those of B overflows the TLB for large k (1024³ ran at
/// 60% of the untransposed speed). It is the smaller operand in an MLP's `dW = dYᵀ·X`,
/// and the kernel then needs no transposed-A form. A transposed B is read in place.
pub(super) fn operand_keys(op: &MatMul) -> [MirrorKey; 2] {
    let MatMul {
        a,
        b,
        m,
        k,
        n,
        trans_a,
        trans_b,
        ..
    } = *op;
    [
        MirrorKey {
            tensor: a,
            rows: if trans_a { k } else { m },
            cols: if trans_a { m } else { k },
            transpose: trans_a,
        },
        MirrorKey {
            tensor: b,
            rows: if trans_b { n } else { k },
            cols: if trans_b { k } else { n },
            transpose: false,
        },
    ]
}

/// The mirrors of `out` (`[m, n]`), plain and transposed, that a matmul in `rest` reads
/// before any op writes `out` again, created where missing; `None` for one no matmul
/// wants or that exceeds the device's limits.
fn produce(
    lw: &mut Lowerer,
    out: TensorId,
    m: usize,
    n: usize,
    rest: &[Op],
) -> Result<[Option<MirrorKey>; 2]> {
    let rest = &rest[..rest.len().min(crate::device::LOOKAHEAD)];
    let mut wanted = [None, None];
    for op in rest {
        if let Op::MatMul(mm) = op {
            for key in operand_keys(mm) {
                // A large mirror a plain copy refreshes (see `mirror`) is left to it: a
                // copy costs lavapipe a fixed ~30 µs and then runs at memcpy speed, the
                // kernel's texel stores about 20 ns a texel (W1's 256×512 activations
                // took 8% more CPU time stored by the kernel).
                let copied = !key.transpose
                    && key.cols.is_multiple_of(64)
                    && key.rows * key.cols > STORED_MIRROR_MAX;
                if key.tensor == out && key.rows == m && key.cols == n && !copied {
                    wanted[key.transpose as usize].get_or_insert(key);
                }
            }
        }
        if op.reads_writes().1.contains(&out) {
            break;
        }
    }
    for slot in &mut wanted {
        let Some(key) = *slot else { continue };
        if !lw.mirrors.mirrors.contains_key(&key) {
            let made = mirror(lw, key)?;
            lw.mirrors.mirrors.insert(key, made);
        }
        if lw.mirrors.mirrors[&key].is_none() {
            *slot = None;
        }
    }
    Ok(wanted)
}

/// Views for the kernel's two output-mirror bindings: the mirrors of `produced`, else
/// stand-ins (distinct ones, as two writable bindings may not alias).
fn out_views(lw: &mut Lowerer, produced: &[Option<MirrorKey>; 2]) -> [wgpu::TextureView; 2] {
    let device = &lw.ctx.device;
    let spare = lw.mirrors.placeholders.get_or_insert_with(|| {
        [0, 1].map(|i| {
            device
                .create_texture(&wgpu::TextureDescriptor {
                    label: Some(&format!("mirror placeholder {i}")),
                    size: wgpu::Extent3d {
                        width: 1,
                        height: 1,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::STORAGE_BINDING,
                    view_formats: &[],
                })
                .create_view(&wgpu::TextureViewDescriptor::default())
        })
    });
    let spare = spare.clone();
    let mirrors = &lw.mirrors.mirrors;
    [0, 1].map(|i| match produced[i] {
        Some(key) => mirrors[&key]
            .as_ref()
            .expect("checked in produce")
            .view
            .clone(),
        None => spare[i].clone(),
    })
}

/// Creates the texture mirror for `key` and the step that refreshes it: a plain copy
/// where buffer rows are a multiple of 256 bytes, else a pack dispatch (padding rows to
/// whole texels, or transposing). `None` when it exceeds the device's limits.
pub(super) fn mirror(lw: &mut Lowerer, key: MirrorKey) -> Result<Option<Mirror>> {
    let (rows, cols) = if key.transpose {
        (key.cols, key.rows)
    } else {
        (key.rows, key.cols)
    };
    let pitch = cols.div_ceil(4);
    // A row stride of an odd number of 64-byte lines puts the rows the kernel reads
    // together in distinct cache sets (see `texture_kernel.rs`).
    let lines = pitch.div_ceil(4);
    let width = 4 * (lines | 1);
    let height = rows + tex::MIRROR_SLACK_ROWS;
    let max_dim = lw.ctx.limits.max_texture_dimension_2d as usize;
    if width > max_dim || height > max_dim || rows > lw.max_groups() {
        return Ok(None);
    }
    let name = lw.tensor(key.tensor).name.clone();
    let texture = lw.ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some(&format!("{name} (mirror)")),
        size: wgpu::Extent3d {
            width: width as u32,
            height: height as u32,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
    let src = lw.buffer(key.tensor);
    let label = format!("mirror {name}{}", if key.transpose { "ᵀ" } else { "" });
    // Buffer-to-texture copies need source rows that are a multiple of 256 bytes.
    if !key.transpose && cols.is_multiple_of(64) {
        let copy = Step::Copy(MirrorCopy {
            label,
            src,
            dst: texture,
            width: pitch as u32,
            rows: rows as u32,
            row_bytes: (cols * 4) as u32,
        });
        return Ok(Some(Mirror {
            view,
            pitch: pitch as u32,
            refresh: vec![copy],
            pack: None,
        }));
    }
    // A pack dispatch binds the source: one larger than a storage binding is packed in
    // windows of its rows (a multiple of 4, so transposed windows fill whole texels),
    // each told its first row (`row0`).
    let (src_rows, src_cols) = (key.rows, key.cols);
    let max_elems = (lw.max_binding() / 4) as usize;
    let step = if src_rows * src_cols <= max_elems {
        src_rows
    } else {
        // Not even 4 rows fit: no mirror, the buffer kernels refuse it by name.
        let Some(rows) = lw.row_window(src_cols, 4, max_elems) else {
            return Ok(None);
        };
        rows.min(src_rows)
    };
    let mut refresh = Vec::new();
    for r0 in (0..src_rows).step_by(step) {
        let rc = step.min(src_rows - r0);
        let windows = if step < src_rows {
            vec![(
                src.clone(),
                (r0 * src_cols * 4) as u64,
                (rc * src_cols * 4) as u64,
            )]
        } else {
            Vec::new()
        };
        let (kernel, slot, dims, groups) =
            if key.transpose && src_rows.is_multiple_of(4) && src_cols.is_multiple_of(4) {
                (
                    KernelKey::new(&PACK, "transpose4"),
                    PACK_SRC4,
                    [rc, src_cols, pitch, r0],
                    [(src_cols / 4).div_ceil(PACK_WG), rc / 4],
                )
            } else if key.transpose {
                let window_pitch = rc.div_ceil(4);
                (
                    KernelKey::new(&PACK, "pack").with("TRANSPOSE", 1),
                    PACK_SRC,
                    [rc, src_cols, window_pitch, r0],
                    [window_pitch.div_ceil(PACK_WG), src_cols],
                )
            } else {
                let (entry, slot) = if cols.is_multiple_of(4) {
                    ("pack4", PACK_SRC4)
                } else {
                    ("pack", PACK_SRC)
                };
                (
                    KernelKey::new(&PACK, entry),
                    slot,
                    [rc, cols, pitch, r0],
                    [pitch.div_ceil(PACK_WG), rc],
                )
            };
        let [rows, cols, pitch, row0] = dims.map(|v| v as u32);
        let dims = PackDims {
            rows,
            cols,
            pitch,
            row0,
        };
        let bindings = [(slot, Res::Buffer(&src)), (PACK_DST, Res::View(&view))];
        let grid = [groups[0] as u32, groups[1] as u32, 1];
        let mut d = lw.windowed(windows, |lw| {
            lw.dispatch(kernel, Some(dims), &bindings, grid)
        })?;
        d.label = label.clone();
        refresh.push(Step::Dispatch(d));
    }
    let pack = (refresh.len() == 1).then_some(src);
    Ok(Some(Mirror {
        view,
        pitch: pitch as u32,
        refresh,
        pack,
    }))
}

/// The buffers of `epilogue` at bindings 4..=6 (see `Epilogue`), placeholders where it
/// has none, and which tensors are shaped like C; `absorbed` are the ops it covers after
/// the matmul that writes `c`.
pub(super) fn epilogue_buffers(
    lw: &Lowerer,
    epilogue: Epilogue,
    c: TensorId,
    absorbed: &[Op],
) -> ([wgpu::Buffer; 3], Vec<TensorId>) {
    let [p0, p1, p2, ..] = lw.placeholders.clone();
    let buf = |t: TensorId| lw.buffer(t);
    match (epilogue, absorbed) {
        (Epilogue::Plain, _) => ([p0, p1, p2], vec![c]),
        (Epilogue::Bias { act: None }, [Op::AddBias(AddBias { bias, .. })]) => {
            ([buf(*bias), p1, p2], vec![c])
        }
        (
            Epilogue::Bias { act: Some(_) },
            [Op::AddBias(AddBias { bias, .. }), Op::Activate(Activate { y, .. })],
        ) => ([buf(*bias), buf(*y), p2], vec![c, *y]),
        (Epilogue::ActGrad { .. }, [Op::ActivateBackward(ActivateBackward { x, y, dx, .. })]) => {
            ([buf(*x), buf(*y), buf(*dx)], vec![c, *x, *y, *dx])
        }
        (Epilogue::RowSums, [Op::SumRows(SumRows { out, .. })]) => ([p0, buf(*out), p2], vec![c]),
        _ => unreachable!("fusable_epilogue matched these ops"),
    }
}

/// The epilogue a matmul `op` (texture or tiled) can absorb from the ops that follow it
/// (`following[0]` is `op` itself), and how many ops it then covers: the bias add and
/// activation that follow a layer's forward matmul, or the activation derivative that
/// follows the matmul producing `dH`. Each absorbed op must work on exactly the matmul's
/// output.
pub(super) fn fusable_epilogue(op: &MatMul, following: &[Op]) -> (Epilogue, usize) {
    let MatMul {
        c,
        m,
        n,
        accumulate: false,
        ..
    } = *op
    else {
        return (Epilogue::Plain, 1);
    };
    match following.get(1..) {
        Some(
            [Op::AddBias(AddBias {
                y,
                rows,
                cols,
                bias,
            }), rest @ ..],
        ) if *y == c && *rows == m && *cols == n => match rest.first() {
            Some(&Op::Activate(Activate { act, x, y, len }))
                if act.fusable() && x == c && y != c && y != *bias && len == m * n =>
            {
                (Epilogue::Bias { act: Some(act) }, 3)
            }
            _ => (Epilogue::Bias { act: None }, 2),
        },
        Some(
            [Op::ActivateBackward(ActivateBackward {
                act,
                dy,
                dx,
                x,
                y,
                len,
            }), ..],
        ) if *dy == c
            && act.fusable()
            && *len == m * n
            && x != y
            && ![*x, *y, c].contains(dx)
            && ![*x, *y].contains(&c) =>
        {
            (Epilogue::ActGrad { act: *act }, 2)
        }
        _ => (Epilogue::Plain, 1),
    }
}

/// The texture kernels and the pack kernel, for the binding test.
pub fn tables() -> Vec<ShaderTable> {
    let mut tables: Vec<ShaderTable> = TexKernel::ALL
        .iter()
        .map(|k| ShaderTable {
            shader: k.shader(),
            slots: &[
                tex::MIRROR_A,
                tex::MIRROR_B,
                tex::C,
                tex::EPILOGUE_SLOTS[0],
                tex::EPILOGUE_SLOTS[1],
                tex::EPILOGUE_SLOTS[2],
                tex::OUT_MIRRORS[0],
                tex::OUT_MIRRORS[1],
                tex::FLAGS,
                tex::STEP_BITS,
                tex::PARAM_C,
                tex::PARAM_SUM,
                tex::HYPER,
            ],
            dims: Some(tex::Dims::FIELDS),
            uniforms: &[("hyper", crate::ops::optim::group::Hyper::FIELDS)],
        })
        .collect();
    tables.push(ShaderTable {
        shader: PACK,
        slots: &[PACK_SRC, PACK_DST, PACK_SRC4],
        dims: Some(PackDims::FIELDS),
        uniforms: &[],
    });
    tables
}
