//! The texture-mirror matmul of CPU-backed adapters, as the engine lowers it: which
//! operands get mirrors, the copy or pack steps that refresh them (in windows of rows
//! for a matrix larger than one storage binding), and the fused epilogues (see
//! `matmul_tex.rs` for the kernel itself).

use super::*;

/// A buffer-to-texture copy that refreshes a mirror: `rows` rows of `width` texels, read
/// from rows of `row_bytes` in the buffer.
#[derive(Clone)]
pub(super) struct MirrorCopy {
    pub(super) label: String,
    pub(super) src: wgpu::Buffer,
    pub(super) dst: wgpu::Texture,
    pub(super) width: u32,
    pub(super) rows: u32,
    pub(super) row_bytes: u32,
}

impl MirrorCopy {
    pub(super) fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &self.src,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(self.row_bytes),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: &self.dst,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: self.width,
                height: self.rows,
                depth_or_array_layers: 1,
            },
        );
    }
}

/// A texture mirror of a matrix `[rows, cols]` held in a buffer, or of its transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MirrorKey {
    pub(super) tensor: TensorId,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) transpose: bool,
}

pub(super) struct Mirror {
    pub(super) view: wgpu::TextureView,
    pub(super) pitch: u32,
    /// The copy or pack dispatches that bring the mirror up to date with its buffer.
    pub(super) refresh: Vec<Step>,
}

/// Mirror bookkeeping while a plan is lowered. `fresh` holds the mirrors that are up to
/// date at the current point of the op list, so each is refreshed only after its tensor
/// was written (weights once per step, activations once for forward and backward).
#[derive(Default)]
pub(super) struct Lowering {
    pub(super) mirrors: HashMap<MirrorKey, Option<Mirror>>,
    pub(super) fresh: HashSet<MirrorKey>,
}

impl GpuEngine {
    /// Whether the device runs subgroups of exactly 8 invocations, as the cooperative
    /// loads of the texture matmul assume.
    pub(super) fn subgroups_of_8(&self) -> bool {
        self.ctx
            .device
            .features()
            .contains(wgpu::Features::SUBGROUP)
            && self.ctx.info.subgroup_min_size == 8
            && self.ctx.info.subgroup_max_size == 8
    }

    /// The texture-mirror matmul, or `None` when a mirror would not fit the device's
    /// texture limits (the caller then uses a buffer kernel).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_texture_matmul(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        ops: &[Op],
        epilogue: Epilogue,
        subgroup: bool,
        st: &mut Lowering,
        steps: &mut Vec<Step>,
    ) -> Result<Option<Vec<Dispatch>>> {
        let Op::MatMul {
            a,
            b,
            c,
            m,
            k,
            n,
            trans_a,
            trans_b,
            accumulate,
        } = ops[0]
        else {
            unreachable!("only matmuls have texture kernels")
        };
        // A transposed A is transposed into its mirror: read in place, each of the
        // kernel's strips of A would span all k rows, which with those of B overflows the
        // TLB for large k (1024³ ran at 60% of the untransposed speed). It is the smaller
        // operand in an MLP's `dW = dYᵀ·X`, and the kernel then needs no transposed-A form.
        // A transposed B is read in place.
        let a_key = MirrorKey {
            tensor: a,
            rows: if trans_a { k } else { m },
            cols: if trans_a { m } else { k },
            transpose: trans_a,
        };
        let b_key = MirrorKey {
            tensor: b,
            rows: if trans_b { n } else { k },
            cols: if trans_b { k } else { n },
            transpose: false,
        };
        for key in [a_key, b_key] {
            if let std::collections::hash_map::Entry::Vacant(slot) = st.mirrors.entry(key) {
                slot.insert(self.mirror(plan, local, key)?);
            }
        }
        let (Some(ma), Some(mb)) = (&st.mirrors[&a_key], &st.mirrors[&b_key]) else {
            return Ok(None);
        };
        let groups = [
            m.div_ceil(matmul_tex::ROWS as usize),
            n.div_ceil(matmul_tex::COLS as usize),
        ];
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            return Ok(None);
        }
        let [code, act] = epilogue.codes();
        let (view_a, view_b) = (ma.view.clone(), mb.view.clone());
        for key in [a_key, b_key] {
            if st.fresh.insert(key) {
                let refresh = st.mirrors[&key]
                    .as_ref()
                    .expect("checked above")
                    .refresh
                    .clone();
                steps.extend(refresh);
            }
        }
        let kernel = TexKernel { trans_b, subgroup };
        let buf = |t: TensorId| self.buffer(local, plan, t).clone();
        // Buffers of the epilogue at bindings 4..=6 (see `Epilogue`), placeholders where
        // it has none, and which tensors are shaped like C.
        let [p0, p1, p2] = self.placeholders.clone();
        let (extra, c_shaped): ([wgpu::Buffer; 3], Vec<TensorId>) = match (epilogue, &ops[1..]) {
            (Epilogue::Plain, _) => ([p0, p1, p2], vec![c]),
            (Epilogue::Bias { act: None }, [Op::AddBias { bias, .. }]) => {
                ([buf(*bias), p1, p2], vec![c])
            }
            (
                Epilogue::Bias { act: Some(_) },
                [Op::AddBias { bias, .. }, Op::Activate { y, .. }],
            ) => ([buf(*bias), buf(*y), p2], vec![c, *y]),
            (Epilogue::ActGrad { .. }, [Op::ActivateBackward { x, y, dx, .. }]) => {
                ([buf(*x), buf(*y), buf(*dx)], vec![c, *x, *y, *dx])
            }
            _ => unreachable!("fusable_epilogue matched these ops"),
        };
        // Where C exceeds one storage binding, dispatch windows of its rows; the kernel
        // reads A's mirror from the window's first row (`dims[7]`).
        let max_elems = (self.max_binding() / 4) as usize;
        let step = if m * n <= max_elems {
            m
        } else {
            // Not even one block of rows fits: the buffer kernels refuse it by name.
            let Some(rows) = self.row_window(n, matmul_tex::ROWS as usize, max_elems) else {
                return Ok(None);
            };
            rows.min(m)
        };
        let windowed: Vec<wgpu::Buffer> = c_shaped.iter().map(|&t| buf(t)).collect();
        let bc = buf(c);
        let mut dispatches = Vec::new();
        for r0 in (0..m).step_by(step) {
            let rc = step.min(m - r0);
            let dims = [
                rc as u32,
                k as u32,
                n as u32,
                ma.pitch,
                accumulate as u32,
                code,
                act,
                r0 as u32,
            ];
            if step < m {
                self.windows = windowed
                    .iter()
                    .map(|b| (b.clone(), (r0 * n * 4) as u64, (rc * n * 4) as u64))
                    .collect();
            }
            let mut bindings = vec![
                (1, wgpu::BindingResource::TextureView(&view_a)),
                (2, wgpu::BindingResource::TextureView(&view_b)),
                (3, self.bind(&bc)),
            ];
            bindings.extend((4..).zip(extra.iter().map(|b| self.bind(b))));
            let d = self.dispatch_with(
                KernelKey::new(Shader::MatmulTexture(kernel), "main"),
                Some(&dims),
                bindings,
                [
                    rc.div_ceil(matmul_tex::ROWS as usize) as u32,
                    groups[1] as u32,
                    1,
                ],
            );
            self.windows.clear();
            dispatches.push(d?);
        }
        Ok(Some(dispatches))
    }

    /// Creates the texture mirror for `key` and the step that refreshes it: a plain copy
    /// where buffer rows are a multiple of 256 bytes, else a pack dispatch (padding rows to
    /// whole texels, or transposing). `None` when it exceeds the device's limits.
    pub(super) fn mirror(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        key: MirrorKey,
    ) -> Result<Option<Mirror>> {
        let (rows, cols) = if key.transpose {
            (key.cols, key.rows)
        } else {
            (key.rows, key.cols)
        };
        let pitch = cols.div_ceil(4);
        // A row stride of an odd number of 64-byte lines puts the rows the kernel reads
        // together in distinct cache sets (see `matmul_tex.rs`).
        let lines = pitch.div_ceil(4);
        let width = 4 * (lines | 1);
        let height = rows + matmul_tex::MIRROR_SLACK_ROWS;
        let max_dim = self.ctx.limits.max_texture_dimension_2d as usize;
        let max_groups = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        if width > max_dim || height > max_dim || rows > max_groups {
            return Ok(None);
        }
        let name = &plan.tensors[key.tensor].name;
        let texture = self.ctx.device.create_texture(&wgpu::TextureDescriptor {
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
        let src = self.buffer(local, plan, key.tensor).clone();
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
            }));
        }
        // A pack dispatch binds the source: one larger than a storage binding is packed in
        // windows of its rows (a multiple of 4, so transposed windows fill whole texels),
        // each told its first row (`dims[3]`).
        let (src_rows, src_cols) = (key.rows, key.cols);
        let max_elems = (self.max_binding() / 4) as usize;
        let step = if src_rows * src_cols <= max_elems {
            src_rows
        } else {
            // Not even 4 rows fit: no mirror, the buffer kernels refuse it by name.
            let Some(rows) = self.row_window(src_cols, 4, max_elems) else {
                return Ok(None);
            };
            rows.min(src_rows)
        };
        let mut refresh = Vec::new();
        for r0 in (0..src_rows).step_by(step) {
            let rc = step.min(src_rows - r0);
            if step < src_rows {
                self.windows = vec![(
                    src.clone(),
                    (r0 * src_cols * 4) as u64,
                    (rc * src_cols * 4) as u64,
                )];
            }
            let (kernel, binding, dims, groups) =
                if key.transpose && src_rows.is_multiple_of(4) && src_cols.is_multiple_of(4) {
                    (
                        KernelKey::new(Shader::Pack, "transpose4"),
                        3,
                        [rc, src_cols, pitch, r0],
                        [(src_cols / 4).div_ceil(PACK_WG), rc / 4],
                    )
                } else if key.transpose {
                    let window_pitch = rc.div_ceil(4);
                    (
                        KernelKey::new(Shader::Pack, "pack").with("TRANSPOSE", 1),
                        1,
                        [rc, src_cols, window_pitch, r0],
                        [window_pitch.div_ceil(PACK_WG), src_cols],
                    )
                } else {
                    let (entry, binding) = if cols.is_multiple_of(4) {
                        ("pack4", 3)
                    } else {
                        ("pack", 1)
                    };
                    (
                        KernelKey::new(Shader::Pack, entry),
                        binding,
                        [rc, cols, pitch, r0],
                        [pitch.div_ceil(PACK_WG), rc],
                    )
                };
            let d = self.dispatch_with(
                kernel,
                Some(&dims.map(|v| v as u32)),
                vec![
                    (binding, self.bind(&src)),
                    (2, wgpu::BindingResource::TextureView(&view)),
                ],
                [groups[0] as u32, groups[1] as u32, 1],
            );
            self.windows.clear();
            let mut d = d?;
            d.label = label.clone();
            refresh.push(Step::Dispatch(d));
        }
        Ok(Some(Mirror {
            view,
            pitch: pitch as u32,
            refresh,
        }))
    }
}

pub(super) fn fusable_epilogue(ops: &[Op]) -> (Epilogue, usize) {
    let Op::MatMul {
        c,
        m,
        n,
        accumulate: false,
        ..
    } = ops[0]
    else {
        return (Epilogue::Plain, 1);
    };
    match ops.get(1..) {
        Some([Op::AddBias { y, rows, cols, .. }, rest @ ..])
            if *y == c && *rows == m && *cols == n =>
        {
            match rest.first() {
                Some(&Op::Activate { act, x, y, len })
                    if fusable_activation(act)
                        && x == c
                        && y != c
                        && Some(&y) != ops.get(1).and_then(bias_of)
                        && len == m * n =>
                {
                    (Epilogue::Bias { act: Some(act) }, 3)
                }
                _ => (Epilogue::Bias { act: None }, 2),
            }
        }
        Some(
            [Op::ActivateBackward {
                act,
                dy,
                dx,
                x,
                y,
                len,
            }, ..],
        ) if *dy == c
            && fusable_activation(*act)
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

/// Activations the texture kernel's epilogue computes itself: those whose kernel ids
/// `act_fn.wgsl` implements (identity, sigmoid, tanh, relu).
pub(super) fn fusable_activation(act: Activation) -> bool {
    act.kernel_id() <= 3
}

pub(super) fn bias_of(op: &Op) -> Option<&TensorId> {
    match op {
        Op::AddBias { bias, .. } => Some(bias),
        _ => None,
    }
}
