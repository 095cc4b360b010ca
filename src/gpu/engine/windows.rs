//! Tensors larger than one storage binding: ops over them run as several dispatches,
//! each binding a window of the large tensors (see `lower_split`).

use super::*;

impl GpuEngine {
    /// `buf` as a binding: the window set for it while an op is lowered in pieces, else
    /// the whole buffer.
    pub(super) fn bind<'a>(&self, buf: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        match self.windows.iter().find(|w| &w.0 == buf) {
            Some(&(_, offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: buf,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
            None => buf.as_entire_binding(),
        }
    }

    /// The smallest number of rows, a multiple of `multiple`, whose bytes at `row_bytes`
    /// each are a multiple of the device's storage-binding offset alignment: where a
    /// window of rows may start.
    pub(super) fn row_granularity(&self, row_bytes: usize, multiple: usize) -> usize {
        let align = (self.ctx.limits.min_storage_buffer_offset_alignment as usize).max(4);
        lcm(multiple, align / gcd(row_bytes.max(1), align))
    }

    /// Lowers `op` with buffer kernels. Where a tensor it binds exceeds the largest
    /// storage binding, the op runs as several dispatches, each binding a window of the
    /// large tensors: ranges of elements for elementwise ops, ranges of rows for row-wise
    /// ones. Ops that cannot be split that way are refused, naming the tensor.
    pub(super) fn lower_split(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        op: &Op,
    ) -> Result<Vec<Dispatch>> {
        let max = self.max_binding();
        let bytes = |t: TensorId| plan.tensors[t].len() as u64 * 4;
        let (reads, writes) = op.reads_writes();
        let mut touched = reads;
        touched.extend(writes);
        touched.sort_unstable();
        touched.dedup();
        let Some(&big) = touched.iter().find(|&&t| bytes(t) > max) else {
            return Ok(vec![self.lower_op(plan, local, op)?]);
        };
        let max_elems = (max / 4) as usize;
        let refuse = |why: &str| {
            anyhow::anyhow!(
                "tensor '{}' needs {} bytes, more than this adapter binds at once ({max} bytes), \
                 and {} cannot be split into smaller bindings{why}; use a smaller batch or layer",
                plan.tensors[big].name,
                bytes(big),
                describe_ops(plan, std::slice::from_ref(op)),
            )
        };
        if let Some(&mut len) = elementwise_len(&mut op.clone()) {
            // Windows of whole rows keep `i mod units` the unit of element i.
            let unit = match *op {
                Op::Prelu { units, .. } | Op::PreluBackward { units, .. } => units,
                _ => 1,
            };
            return self.lower_elementwise_windows(plan, local, op, &touched, len, unit, &refuse);
        }
        match *op {
            Op::AddBias { rows, cols, .. } => self.lower_elementwise_windows(
                plan,
                local,
                op,
                &touched,
                rows * cols,
                cols,
                &refuse,
            ),
            Op::Copy {
                len,
                dst_len,
                offset: 0,
                ..
            } if dst_len == len => {
                self.lower_elementwise_windows(plan, local, op, &touched, len, 1, &refuse)
            }
            Op::SumRows {
                x,
                out,
                rows,
                cols,
                accumulate,
            } => {
                if bytes(out) > max {
                    return Err(refuse(" (its output is too large)"));
                }
                // Later windows add to what the earlier ones summed.
                let part = |r0, rc| Op::SumRows {
                    x,
                    out,
                    rows: rc,
                    cols,
                    accumulate: accumulate || r0 > 0,
                };
                self.lower_row_windows(plan, local, rows, &[(x, cols)], part, &refuse)
            }
            Op::MatMul {
                a,
                b,
                c,
                m,
                k,
                n,
                trans_a,
                trans_b,
                accumulate,
            } if trans_a && !trans_b && bytes(c) <= max && a != b => {
                // `dW = dZᵀ·X` with C fitting: split k, windows of the rows of both A
                // (`[k, m]`) and B (`[k, n]`), each window adding to C. (Other forms would
                // need the kernels to know the full row stride of an operand bound whole.)
                let part = |p0, pc| Op::MatMul {
                    a,
                    b,
                    c,
                    m,
                    k: pc,
                    n,
                    trans_a,
                    trans_b,
                    accumulate: accumulate || p0 > 0,
                };
                self.lower_row_windows(plan, local, k, &[(a, m), (b, n)], part, &refuse)
            }
            Op::MatMul {
                a,
                b,
                c,
                m,
                k,
                n,
                trans_a: false,
                trans_b,
                accumulate,
            } => {
                // Rows of C and of A together; B whole. Windows are matched by buffer, so
                // B must not be A or C.
                if bytes(b) > max {
                    return Err(refuse(" (its B operand is too large)"));
                }
                if b == a || b == c {
                    return Err(refuse(" (B is also A or C)"));
                }
                let part = |_, rc| Op::MatMul {
                    a,
                    b,
                    c,
                    m: rc,
                    k,
                    n,
                    trans_a: false,
                    trans_b,
                    accumulate,
                };
                self.lower_row_windows(plan, local, m, &[(a, k), (c, n)], part, &refuse)
            }
            Op::GuardFinite {
                ref tensors,
                step,
                flags,
                flags_len,
            } => {
                // Small tensors keep their shared dispatch; each large one gets its own,
                // in windows.
                let (large, small): (Vec<_>, Vec<_>) =
                    tensors.iter().partition(|&&(t, _, _)| bytes(t) > max);
                let mut out = Vec::new();
                if !small.is_empty() {
                    let part = Op::GuardFinite {
                        tensors: small,
                        step,
                        flags,
                        flags_len,
                    };
                    out.push(self.lower_op(plan, local, &part)?);
                }
                for (t, len, slot) in large {
                    let part = Op::GuardFinite {
                        tensors: vec![(t, len, slot)],
                        step,
                        flags,
                        flags_len,
                    };
                    let touched = [t, step, flags];
                    out.extend(self.lower_elementwise_windows(
                        plan, local, &part, &touched, len, 1, &refuse,
                    )?);
                }
                Ok(out)
            }
            Op::NormPartials {
                x,
                len,
                partials,
                first,
                groups,
                ..
            } => {
                // Windows of whole rounds (`groups` blocks) keep each block's partial.
                let round = groups * NORM_BLOCK;
                let per = max_elems / round * round;
                if per == 0 || bytes(partials) > max {
                    return Err(refuse(""));
                }
                let [bx, bp] = [x, partials].map(|t| self.buffer(local, plan, t).clone());
                let mut out = Vec::new();
                for start in (0..len).step_by(per) {
                    let n = per.min(len - start);
                    self.windows = vec![(bx.clone(), (start * 4) as u64, (n * 4) as u64)];
                    // Later windows merge into the partials the earlier ones wrote.
                    let d = self.norm_partials(&bx, &bp, n, first, groups, start > 0);
                    self.windows.clear();
                    out.push(d?);
                }
                Ok(out)
            }
            _ => Err(refuse("")),
        }
    }

    /// Dispatches over windows of `rows` rows of `tensors` (each given with its row
    /// length), `part(first_row, rows)` being the op for one window; as many rows per
    /// window as the widest tensor allows, starting where every tensor's binding offset
    /// is aligned.
    pub(super) fn lower_row_windows(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        rows: usize,
        tensors: &[(TensorId, usize)],
        part: impl Fn(usize, usize) -> Op,
        refuse: &dyn Fn(&str) -> anyhow::Error,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding() / 4) as usize;
        let gran = tensors
            .iter()
            .fold(1, |g, &(_, row)| lcm(g, self.row_granularity(row * 4, 1)));
        let widest = tensors
            .iter()
            .map(|&(_, row)| row)
            .max()
            .unwrap_or(1)
            .max(1);
        let step = max_elems / widest / gran * gran;
        if step == 0 {
            return Err(refuse(""));
        }
        let bufs: Vec<(wgpu::Buffer, usize)> = tensors
            .iter()
            .map(|&(t, row)| (self.buffer(local, plan, t).clone(), row))
            .collect();
        let mut out = Vec::new();
        for first in (0..rows).step_by(step) {
            let count = step.min(rows - first);
            self.windows = bufs
                .iter()
                .map(|(b, row)| {
                    (
                        b.clone(),
                        (first * row * 4) as u64,
                        (count * row * 4) as u64,
                    )
                })
                .collect();
            let d = self.lower_op(plan, local, &part(first, count));
            self.windows.clear();
            out.push(d?);
        }
        Ok(out)
    }

    /// `op` (an elementwise op over `len` elements, see `lower_split`) as dispatches over
    /// windows of `len` elements, each a multiple of `unit`. Tensors in `touched` of
    /// length `len` are windowed; the others are bound whole and must fit.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_elementwise_windows(
        &mut self,
        plan: &Plan,
        local: &[Option<wgpu::Buffer>],
        op: &Op,
        touched: &[TensorId],
        len: usize,
        unit: usize,
        refuse: &dyn Fn(&str) -> anyhow::Error,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding() / 4) as usize;
        let (full, other): (Vec<TensorId>, Vec<TensorId>) =
            touched.iter().partition(|&&t| plan.tensors[t].len() == len);
        if other.iter().any(|&t| plan.tensors[t].len() > max_elems) {
            return Err(refuse(" (a second large tensor has another length)"));
        }
        // Window starts aligned for the binding offset and for vec4 kernels.
        let gran = lcm(self.row_granularity(4, 4), unit.max(1));
        let per = max_elems / gran * gran;
        if per == 0 {
            return Err(refuse(""));
        }
        let bufs: Vec<wgpu::Buffer> = full
            .iter()
            .map(|&t| self.buffer(local, plan, t).clone())
            .collect();
        let mut out = Vec::new();
        for start in (0..len).step_by(per) {
            let n = per.min(len - start);
            self.windows = bufs
                .iter()
                .map(|b| (b.clone(), (start * 4) as u64, (n * 4) as u64))
                .collect();
            let d = self.lower_op(plan, local, &with_len(op, n));
            self.windows.clear();
            out.push(d?);
        }
        Ok(out)
    }

    /// Rows per window of a `[rows, cols]` tensor: as many as fit in `max_elems`
    /// elements, a multiple of `multiple` and of the offset alignment. `None` when not
    /// even one such group of rows fits.
    pub(super) fn row_window(
        &self,
        cols: usize,
        multiple: usize,
        max_elems: usize,
    ) -> Option<usize> {
        let gran = self.row_granularity(cols * 4, multiple);
        let rows = max_elems / cols.max(1) / gran * gran;
        (rows > 0).then_some(rows)
    }
}

/// The epilogue a texture matmul at `ops[0]` can absorb, and how many ops it then covers:
/// the bias add and activation that follow a layer's forward matmul, or the activation
/// derivative that follows the matmul producing `dH`. Each absorbed op must work on
/// exactly the matmul's output.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// The element count of an op in which element i of each full-length tensor depends
/// only on element i of the others (and for PReLU on `i mod units`), so that it can run
/// over windows of elements (see `lower_split`).
fn elementwise_len(op: &mut Op) -> Option<&mut usize> {
    match op {
        Op::Activate { len, .. }
        | Op::ActivateBackward { len, .. }
        | Op::Add { len, .. }
        | Op::Accumulate { len, .. }
        | Op::SgdStep { len, .. }
        | Op::Sgd { len, .. }
        | Op::Adam { len, .. }
        | Op::ScaleBy { len, .. }
        | Op::ClampValue { len, .. }
        | Op::Prelu { len, .. }
        | Op::PreluBackward { len, .. } => Some(len),
        _ => None,
    }
}

/// `op` with its element count set to `n` (the ops `lower_split` windows by elements).
fn with_len(op: &Op, n: usize) -> Op {
    let mut op = op.clone();
    if let Some(len) = elementwise_len(&mut op) {
        *len = n;
        return op;
    }
    match &mut op {
        Op::Copy { len, dst_len, .. } => (*len, *dst_len) = (n, n),
        Op::AddBias { rows, cols, .. } => *rows = n / *cols,
        Op::GuardFinite { tensors, .. } => {
            for t in tensors {
                t.1 = n;
            }
        }
        _ => unreachable!("only elementwise ops are split by elements"),
    }
    op
}
