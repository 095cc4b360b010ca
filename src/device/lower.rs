//! What an op's lowering works with: the [`Lowerer`] turns a kernel, its binding table
//! entries and a uniform into a prebuilt [`Dispatch`], finds each tensor's buffer, respects
//! the adapter's limits, and binds windows of tensors larger than one storage binding.
//! It knows no op: each family's `wgpu.rs` calls it.

use super::kernels::{KernelKey, Kernels, Slot, Uniform};
use super::{Counters, GpuContext, MatmulTile, MatmulVariant, ShapeClass};
use crate::tensor::{Storage, TensorDesc, TensorId};
use anyhow::{ensure, Context, Result};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// A compute dispatch with everything prebuilt.
#[derive(Clone)]
pub struct Dispatch {
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// What the dispatch computes, for `GpuEngine::profile`.
    pub label: String,
}

/// One recorded piece of a stage.
#[derive(Clone)]
pub enum Step {
    Dispatch(Dispatch),
    Copy(MirrorCopy),
}

/// A buffer-to-texture copy that refreshes a mirror: `rows` rows of `width` texels, read
/// from rows of `row_bytes` in the buffer.
#[derive(Clone)]
pub struct MirrorCopy {
    pub label: String,
    pub src: wgpu::Buffer,
    pub dst: wgpu::Texture,
    pub width: u32,
    pub rows: u32,
    pub row_bytes: u32,
}

impl MirrorCopy {
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
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
pub struct MirrorKey {
    pub tensor: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub transpose: bool,
}

pub struct Mirror {
    pub view: wgpu::TextureView,
    pub pitch: u32,
    /// The copy or pack dispatches that bring the mirror up to date with its buffer.
    pub refresh: Vec<Step>,
    /// The buffer, where `refresh` is one pack dispatch (which another mirror's may
    /// share, see `ops/matmul/pack_pair.rs`).
    pub pack: Option<wgpu::Buffer>,
}

/// Mirror bookkeeping while a plan is lowered. `fresh` holds the mirrors that are up to
/// date at the current point of the op list, so each is refreshed only after its tensor
/// was written (weights once per step, activations once for forward and backward).
#[derive(Default)]
pub struct Mirrors {
    pub mirrors: HashMap<MirrorKey, Option<Mirror>>,
    /// By tensor, so a write drops its mirrors without scanning all of them (a scan per
    /// op made lowering grow with the square of the depth).
    pub fresh: HashMap<TensorId, HashSet<MirrorKey>>,
    /// Mirrors the op just lowered writes itself (a matmul's epilogue), fresh once the
    /// op's writes have marked its tensors' other mirrors stale.
    pub produced: Vec<MirrorKey>,
    /// Write-only stand-ins for mirror bindings a kernel declares but a dispatch does not
    /// use, made on first need.
    pub placeholders: Option<[wgpu::TextureView; 2]>,
}

impl Mirrors {
    /// Marks `key` up to date; whether it was stale.
    pub fn refreshed(&mut self, key: MirrorKey) -> bool {
        self.fresh.entry(key.tensor).or_default().insert(key)
    }

    /// Marks the mirrors of `tensor` stale after an op writes it.
    pub fn written(&mut self, tensor: TensorId) {
        self.fresh.remove(&tensor);
    }

    /// Marks the mirrors in `produced` up to date (after `written` for the op's outputs).
    pub fn settle(&mut self) {
        for key in std::mem::take(&mut self.produced) {
            self.refreshed(key);
        }
    }
}

/// Work of an op later in the list that a kernel lowered earlier did in passing (the
/// texture matmul's epilogue): the non-finite guard of a tensor, or the column sum
/// written to a tensor. The later op leaves it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Absorbed {
    Guard(TensorId),
    Sum(TensorId),
    /// A plain SGD update of the parameter.
    Update(TensorId),
}

/// What a binding is bound to.
#[derive(Clone, Copy)]
pub enum Res<'r> {
    Tensor(TensorId),
    Buffer(&'r wgpu::Buffer),
    View(&'r wgpu::TextureView),
}

/// How many later ops of its list an op's lowering looks at when it takes over their
/// work or writes mirrors they will read. Bounded so that compiling stays linear in depth:
/// each of a very deep net's matmuls scanning the rest of its list made a 2,000-layer plan
/// quadratic (5.9 s against 1.8 s). Work beyond the window is done by its own ops, as
/// without the fusions; 512 ops cover the whole training step of nets of about 40 layers.
pub const LOOKAHEAD: usize = 512;

/// The buffers, limits and caches an op is lowered against (see the module docs).
pub struct Lowerer<'a> {
    pub ctx: &'a GpuContext,
    kernels: &'a mut Kernels,
    counters: &'a mut Counters,
    tensors: &'a [TensorDesc],
    local: &'a [Option<wgpu::Buffer>],
    persistent: &'a [wgpu::Buffer],
    /// The hyper-parameter block (`tensor::Hyper`).
    pub hyper: &'a wgpu::Buffer,
    /// Stand-ins for bindings a kernel declares but a dispatch does not use.
    pub placeholders: &'a [wgpu::Buffer; 6],
    /// Work already done for later ops of the list being lowered.
    pub absorbed: HashSet<Absorbed>,
    /// The matmul kernel in use, resolved for the adapter (never `Auto`).
    pub variant: MatmulVariant,
    /// The tiled matmul's configuration per shape class, chosen before lowering (see
    /// `ops/matmul/tune.rs`); classes missing here use [`MatmulTile::DEFAULT`].
    pub tiles: &'a HashMap<ShapeClass, MatmulTile>,
    pub mirrors: &'a mut Mirrors,
    max_binding: u64,
    max_buffer: u64,
    /// Byte ranges bound in place of whole buffers while an op is lowered in pieces.
    windows: Vec<(wgpu::Buffer, u64, u64)>,
    /// The op being lowered and the tensor too large to bind whole, for
    /// [`Lowerer::refuse`].
    pub what: String,
    pub big: Option<TensorId>,
    /// Chunk the dispatches' uniforms are packed into, and its bytes so far: written to
    /// the device once, when the chunk is full or the lowering ends (see `pack_uniform`).
    uniforms: Option<(wgpu::Buffer, Vec<u8>)>,
    /// Buffers of fixed values made by [`Lowerer::constants`], by content and usage.
    constants: HashMap<(Vec<u8>, bool), wgpu::Buffer>,
}

/// Bytes of one uniform chunk: 256 dispatches at the usual 256-byte offset alignment.
/// One buffer per dispatch made compile time grow with the square of the depth (wgpu's
/// Vulkan suballocator searches its free list on every allocation: 66% of the time of
/// compiling a 400-layer net), so uniforms share chunks and bind at offsets.
const UNIFORM_CHUNK: u64 = 64 * 1024;

/// The parts of an engine a [`Lowerer`] borrows.
pub struct LowerParts<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a mut Kernels,
    pub counters: &'a mut Counters,
    pub tensors: &'a [TensorDesc],
    pub local: &'a [Option<wgpu::Buffer>],
    pub persistent: &'a [wgpu::Buffer],
    pub hyper: &'a wgpu::Buffer,
    pub placeholders: &'a [wgpu::Buffer; 6],
    pub variant: MatmulVariant,
    pub tiles: &'a HashMap<ShapeClass, MatmulTile>,
    pub mirrors: &'a mut Mirrors,
    pub max_binding: u64,
    pub max_buffer: u64,
}

/// The last uniform chunk reaches the device when the lowering ends, before any of its
/// dispatches can be submitted.
impl Drop for Lowerer<'_> {
    fn drop(&mut self) {
        self.flush_uniforms();
    }
}

impl<'a> Lowerer<'a> {
    /// What is left of a grouped op's items (`all`, each naming its work by `work`) once
    /// the work an earlier op took over is left out, clearing those marks; `None` when
    /// nothing was taken over, so the op lowers as it is.
    pub fn left_after_absorbed<T: Copy>(
        &mut self,
        all: &[T],
        work: impl Fn(&T) -> Absorbed,
    ) -> Option<Vec<T>> {
        if !all.iter().any(|t| self.absorbed.contains(&work(t))) {
            return None;
        }
        let left = all
            .iter()
            .copied()
            .filter(|t| !self.absorbed.contains(&work(t)))
            .collect();
        for t in all {
            self.absorbed.remove(&work(t));
        }
        Some(left)
    }

    pub fn new(p: LowerParts<'a>) -> Self {
        Lowerer {
            ctx: p.ctx,
            kernels: p.kernels,
            counters: p.counters,
            tensors: p.tensors,
            local: p.local,
            persistent: p.persistent,
            hyper: p.hyper,
            placeholders: p.placeholders,
            absorbed: HashSet::new(),
            variant: p.variant,
            tiles: p.tiles,
            mirrors: p.mirrors,
            max_binding: p.max_binding,
            max_buffer: p.max_buffer,
            windows: Vec::new(),
            what: String::new(),
            big: None,
            uniforms: None,
            constants: HashMap::new(),
        }
    }

    /// Writes the current uniform chunk's bytes to the device.
    fn flush_uniforms(&mut self) {
        if let Some((buffer, bytes)) = &self.uniforms {
            self.ctx.queue.write_buffer(buffer, 0, bytes);
        }
    }

    /// Copies `bytes` into the current uniform chunk (a new one when it is full) and
    /// returns the chunk and the offset they start at. The chunk reaches the device in one
    /// `queue.write_buffer`, before the first submission that uses it: one write per
    /// dispatch made wgpu allocate a small staging buffer each, and the holes they left
    /// once freed made every later allocation search a free list as long as the net is
    /// deep (53% of the time of compiling a 1000-layer net).
    fn pack_uniform(&mut self, bytes: &[u8]) -> (wgpu::Buffer, u64) {
        let align = u64::from(self.ctx.limits.min_uniform_buffer_offset_alignment).max(16);
        let len = bytes.len() as u64;
        let fits = |used: u64| used.next_multiple_of(align) + len <= UNIFORM_CHUNK;
        if !matches!(&self.uniforms, Some((_, b)) if fits(b.len() as u64)) {
            self.flush_uniforms();
            let b = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("dims"),
                size: UNIFORM_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.uniforms = Some((b, Vec::with_capacity(UNIFORM_CHUNK as usize)));
        }
        let (buffer, chunk) = self.uniforms.as_mut().expect("a chunk was just made");
        chunk.resize((chunk.len() as u64).next_multiple_of(align) as usize, 0);
        let used = chunk.len() as u64;
        chunk.extend_from_slice(bytes);
        (buffer.clone(), used)
    }

    /// The tiled matmul's configuration for an `m×k×n` product of the given form.
    pub fn matmul_tile(&self, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> MatmulTile {
        let class = ShapeClass::of(m, k, n, ta, tb);
        self.tiles
            .get(&class)
            .copied()
            .unwrap_or(MatmulTile::DEFAULT)
    }

    pub fn tensor(&self, t: TensorId) -> &TensorDesc {
        &self.tensors[t]
    }

    /// Bytes of tensor `t`.
    pub fn bytes(&self, t: TensorId) -> u64 {
        self.tensors[t].len() as u64 * 4
    }

    pub fn buffer(&self, t: TensorId) -> wgpu::Buffer {
        match self.tensors[t].storage {
            Storage::Persistent(s) => self.persistent[s].clone(),
            Storage::Local => self.local[t].clone().expect("local tensors have buffers"),
        }
    }

    /// Largest storage binding planned against, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Whether reductions run one invocation per output with a loop (CPU-backed adapters,
    /// i.e. the texture matmul variants, where workgroup barriers cost more than the work)
    /// rather than one workgroup per output with a tree (GPUs).
    pub fn serial_reductions(&self) -> bool {
        matches!(
            self.variant,
            MatmulVariant::Texture | MatmulVariant::TextureNoSubgroup
        )
    }

    /// A new storage buffer (scratch an op needs), within the adapter's buffer limit.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        storage_buffer(self.ctx, self.max_buffer, label, bytes)
    }

    /// A small uniform or storage buffer of fixed values, made once at compile time and
    /// shared by every dispatch that asks for the same values (the layers of a deep net
    /// all ask for the same optimizer constants).
    pub fn constants<T: bytemuck::Pod>(&mut self, values: &[T], uniform: bool) -> wgpu::Buffer {
        let contents: &[u8] = bytemuck::cast_slice(values);
        let device = &self.ctx.device;
        self.constants
            .entry((contents.to_vec(), uniform))
            .or_insert_with(|| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("constants"),
                    contents,
                    usage: if uniform {
                        wgpu::BufferUsages::UNIFORM
                    } else {
                        wgpu::BufferUsages::STORAGE
                    },
                })
            })
            .clone()
    }

    /// Splits a 1-D workgroup count over x and y so neither exceeds the device limit.
    pub fn grid(&self, groups: usize) -> Result<[u32; 3]> {
        let max = self.max_groups();
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        ensure!(
            y <= max,
            "{groups} workgroups exceed the device's dispatch limit"
        );
        Ok([x as u32, y as u32, 1])
    }

    pub fn max_groups(&self) -> usize {
        self.ctx.limits.max_compute_workgroups_per_dimension as usize
    }

    /// `buf` as a binding: the window set for it while an op is lowered in pieces, else
    /// the whole buffer.
    fn bind<'r>(&self, buf: &'r wgpu::Buffer) -> wgpu::BindingResource<'r> {
        match self.windows.iter().find(|w| &w.0 == buf) {
            Some(&(_, offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: buf,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
            None => buf.as_entire_binding(),
        }
    }

    /// A dispatch of `key` with the uniform `dims` at binding 0 (when given) and each
    /// slot bound to its resource.
    pub fn dispatch<D: Uniform>(
        &mut self,
        key: KernelKey,
        dims: Option<D>,
        bindings: &[(Slot, Res)],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.kernels.get(&self.ctx.device, &key)?;
        // Shapes never change after compile, so they go in a uniform written once here.
        let uniform = dims.map(|dims| {
            let bytes = bytemuck::bytes_of(&dims);
            let (buffer, offset) = self.pack_uniform(bytes);
            (buffer, offset, bytes.len() as u64)
        });
        let device = &self.ctx.device;
        let buffers: Vec<wgpu::Buffer> = bindings
            .iter()
            .filter_map(|(_, r)| match r {
                Res::Tensor(t) => Some(self.buffer(*t)),
                _ => None,
            })
            .collect();
        let mut tensor_buffers = buffers.iter();
        let mut entries: Vec<wgpu::BindGroupEntry> = uniform
            .iter()
            .map(|(buffer, offset, size)| wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: *offset,
                    size: std::num::NonZeroU64::new(*size),
                }),
            })
            .collect();
        for (slot, res) in bindings {
            let resource = match res {
                Res::Tensor(_) => self.bind(tensor_buffers.next().expect("one per tensor")),
                Res::Buffer(b) => self.bind(b),
                Res::View(v) => wgpu::BindingResource::TextureView(v),
            };
            entries.push(wgpu::BindGroupEntry {
                binding: slot.binding,
                resource,
            });
        }
        self.counters.bind_groups += 1;
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(key.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            groups,
            label: key.entry.to_string(),
        })
    }

    /// The dispatches of `op` alone, split over windows where a tensor it touches exceeds
    /// one storage binding.
    pub fn lower_op(&mut self, op: &crate::ops::Op) -> Result<Vec<Dispatch>> {
        let (reads, writes) = op.reads_writes();
        let max = self.max_binding();
        self.big = reads
            .into_iter()
            .chain(writes)
            .find(|&t| self.bytes(t) > max);
        self.what = op.label();
        let dispatches = match self.big {
            Some(_) => op.lower_split(self),
            None => op.lower(self).map(|d| vec![d]),
        };
        self.big = None;
        dispatches
    }

    /// An elementwise kernel over `len` values: the `vec4` build where `len` divides by 4
    /// (see `ELEMENT_F32`), one invocation per element, and the uniform `dims(elements)`.
    pub fn dispatch_elementwise<D: Uniform>(
        &mut self,
        key: KernelKey,
        len: usize,
        dims: impl FnOnce(u32) -> D,
        bindings: &[(Slot, Res)],
    ) -> Result<Dispatch> {
        let (vec4, elements) = lanes(len);
        let groups = self.grid(elements.div_ceil(ELEMENTWISE_WG))?;
        let elements = u32_of(elements)?;
        self.dispatch(key.vec4(vec4), Some(dims(elements)), bindings, groups)
    }

    /// The error for an op that cannot be split to fit the binding limit.
    pub fn refuse(&self, why: &str) -> anyhow::Error {
        let (name, bytes) = self
            .big
            .map(|t| (self.tensors[t].name.as_str(), self.bytes(t)))
            .unwrap_or_default();
        anyhow::anyhow!(
            "tensor '{name}' needs {bytes} bytes, more than this adapter binds at once ({} \
             bytes), and {} cannot be split into smaller bindings{why}; use a smaller batch or \
             layer",
            self.max_binding,
            self.what,
        )
    }

    /// The smallest number of rows, a multiple of `multiple`, whose bytes at `row_bytes`
    /// each are a multiple of the device's storage-binding offset alignment: where a
    /// window of rows may start.
    pub fn row_granularity(&self, row_bytes: usize, multiple: usize) -> usize {
        let align = (self.ctx.limits.min_storage_buffer_offset_alignment as usize).max(4);
        lcm(multiple, align / gcd(row_bytes.max(1), align))
    }

    /// Rows per window of a `[rows, cols]` tensor: as many as fit in `max_elems`
    /// elements, a multiple of `multiple` and of the offset alignment. `None` when not
    /// even one such group of rows fits.
    pub fn row_window(&self, cols: usize, multiple: usize, max_elems: usize) -> Option<usize> {
        let gran = self.row_granularity(cols * 4, multiple);
        let rows = max_elems / cols.max(1) / gran * gran;
        (rows > 0).then_some(rows)
    }

    /// Runs `lower` with windows of `(buffer, first byte, bytes)` bound in place of the
    /// whole buffers.
    pub fn windowed<T>(
        &mut self,
        windows: Vec<(wgpu::Buffer, u64, u64)>,
        lower: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        self.windows = windows;
        let out = lower(self);
        self.windows.clear();
        out
    }

    /// Dispatches over windows of `rows` rows of `tensors` (each given with its row
    /// length), `lower(first_row, rows)` making the dispatch for one window; as many rows
    /// per window as the widest tensor allows, starting where every tensor's binding
    /// offset is aligned.
    pub fn row_windows(
        &mut self,
        rows: usize,
        tensors: &[(TensorId, usize)],
        lower: impl Fn(&mut Self, usize, usize) -> Result<Dispatch>,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding / 4) as usize;
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
            return Err(self.refuse(""));
        }
        let bufs: Vec<(wgpu::Buffer, usize)> = tensors
            .iter()
            .map(|&(t, row)| (self.buffer(t), row))
            .collect();
        let mut out = Vec::new();
        for first in (0..rows).step_by(step) {
            let count = step.min(rows - first);
            let windows = bufs
                .iter()
                .map(|(b, row)| {
                    (
                        b.clone(),
                        (first * row * 4) as u64,
                        (count * row * 4) as u64,
                    )
                })
                .collect();
            out.push(self.windowed(windows, |lw| lower(lw, first, count))?);
        }
        Ok(out)
    }

    /// A multi-tensor op over `items` when some exceed one storage binding: those that
    /// `fit` share one dispatch (`small`), each other one is lowered alone (`large`, in
    /// windows).
    pub fn split_groups<T: Copy>(
        &mut self,
        items: &[T],
        fits: impl Fn(&Self, &T) -> bool,
        small: impl FnOnce(&mut Self, Vec<T>) -> Result<Dispatch>,
        large: impl Fn(&mut Self, T) -> Result<Vec<Dispatch>>,
    ) -> Result<Vec<Dispatch>> {
        let (fit, big): (Vec<T>, Vec<T>) = items.iter().copied().partition(|t| fits(self, t));
        let mut out = Vec::new();
        if !fit.is_empty() {
            out.push(small(self, fit)?);
        }
        for t in big {
            out.extend(large(self, t)?);
        }
        Ok(out)
    }

    /// An elementwise op over `len` elements as dispatches over windows of elements, each
    /// a multiple of `unit`, `lower(n)` making the dispatch for a window of `n`. Tensors
    /// in `touched` of length `len` are windowed; the others are bound whole and must fit.
    pub fn element_windows(
        &mut self,
        touched: &[TensorId],
        len: usize,
        unit: usize,
        lower: impl Fn(&mut Self, usize) -> Result<Dispatch>,
    ) -> Result<Vec<Dispatch>> {
        let max_elems = (self.max_binding / 4) as usize;
        let (full, other): (Vec<TensorId>, Vec<TensorId>) =
            touched.iter().partition(|&&t| self.tensors[t].len() == len);
        if other.iter().any(|&t| self.tensors[t].len() > max_elems) {
            return Err(self.refuse(" (a second large tensor has another length)"));
        }
        // Window starts aligned for the binding offset and for vec4 kernels.
        let gran = lcm(self.row_granularity(4, 4), unit.max(1));
        let per = max_elems / gran * gran;
        if per == 0 {
            return Err(self.refuse(""));
        }
        let bufs: Vec<wgpu::Buffer> = full.iter().map(|&t| self.buffer(t)).collect();
        let mut out = Vec::new();
        for start in (0..len).step_by(per) {
            let n = per.min(len - start);
            let windows = bufs
                .iter()
                .map(|b| (b.clone(), (start * 4) as u64, (n * 4) as u64))
                .collect();
            out.push(self.windowed(windows, |lw| lower(lw, n))?);
        }
        Ok(out)
    }
}

/// Invocations per workgroup of the 1-D kernels (`WG` in `shaders/prelude.wgsl`).
pub const ELEMENTWISE_WG: usize = 256;

/// Whether a kernel over `len` values runs over `vec4<f32>` elements (see `ELEMENT_F32`),
/// and its length in elements.
pub fn lanes(len: usize) -> (bool, usize) {
    if len.is_multiple_of(4) {
        (true, len / 4)
    } else {
        (false, len)
    }
}

/// `items` in groups of at most `size` for a multi-tensor kernel: those whose `len`
/// divides by 4 together (the `vec4` build), the others apart, so one odd length does not
/// put a group of large tensors on the scalar kernel.
pub fn lane_groups<T: Clone>(items: &[T], len: impl Fn(&T) -> usize, size: usize) -> Vec<Vec<T>> {
    let (vec4, scalar): (Vec<T>, Vec<T>) = items.iter().cloned().partition(|t| lanes(len(t)).0);
    [vec4, scalar]
        .iter()
        .flat_map(|part| part.chunks(size).map(<[T]>::to_vec))
        .collect()
}

/// A size as the `u32` kernels index with.
pub fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).context("size exceeds u32 indexing")
}

/// A storage buffer of `bytes`, refused by name when over the adapter's largest buffer
/// (`max`); tensors over one storage binding are bound in windows instead.
pub fn storage_buffer(ctx: &GpuContext, max: u64, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
    ensure!(
        bytes <= max,
        "tensor '{label}' needs {bytes} bytes but this adapter's largest buffer is {max} \
         bytes; use a smaller batch or layer"
    );
    // Sizes rounded up to 256 bytes (beyond any alignment a driver asks of a buffer) so
    // consecutive small buffers pack without gaps: each gap is a free-list entry that
    // wgpu's Vulkan suballocator scans on every later allocation, which made compiling
    // deep nets of narrow layers grow with the square of the depth. Kernels index by
    // their dims, never by the buffer's length, so the padding is never read.
    let padded = bytes.max(4).next_multiple_of(256).min(max.max(bytes));
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    }))
}

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
