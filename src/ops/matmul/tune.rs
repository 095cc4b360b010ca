//! Choosing the tiled matmul's block configuration ([`MatmulTile`]) per shape class when
//! a plan is compiled: pinned by the user, read from the on-disk cache, timed, or the
//! default.
//!
//! Timing runs each configuration that fits the device on the class's first shape in the
//! plan, on scratch buffers, and keeps the fastest. It is bounded (one second per compile
//! across all classes) because it runs before the first step; a class whose candidates were
//! not all timed in time uses the best so far and is not cached, so a later compile
//! finishes it. Times are the fastest of a few runs after a warm-up, measured by GPU
//! timestamps around the pass where the device has them, else as the wall time of a
//! submission and the wait for it.
//!
//! Results are cached per adapter (name, PCI ids, driver, driver info, backend) and shape
//! class in a JSON file, replaced atomically (a temporary file renamed over it); a file
//! that cannot be read or parsed is ignored and rewritten.

use super::texture_kernel::{Epilogue, EPILOGUE_SLOTS};
use super::wgpu::{tiled_key, Dims, A, B, C};
use super::MatMul;
use crate::device::{GpuContext, Kernels, MatmulTile, ShapeClass};
use crate::ops::Op;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// Whether to time configurations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// On adapters that are not CPU-backed (those use the texture kernel, which has no
    /// configurations).
    #[default]
    Auto,
    /// Never: the default configuration unless one is pinned.
    Off,
    /// Also on CPU-backed adapters (tests, and comparing configurations there).
    On,
}

impl std::str::FromStr for TuneMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(TuneMode::Auto),
            "off" | "0" | "no" => Ok(TuneMode::Off),
            "on" | "1" | "yes" | "force" => Ok(TuneMode::On),
            _ => bail!("unknown matmul tuning mode '{s}'; expected auto, on or off"),
        }
    }
}

/// How an engine picks the tiled matmul's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneOptions {
    /// Use this configuration for every shape (refused at compile time where it exceeds
    /// the device's limits).
    pub pin: Option<MatmulTile>,
    pub mode: TuneMode,
    /// The cache file; `None` disables caching.
    pub cache: Option<PathBuf>,
    /// Time allowed for timing per compile, all shape classes together.
    pub budget: Duration,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            pin: None,
            mode: TuneMode::Auto,
            cache: default_cache_path(),
            budget: Duration::from_secs(1),
        }
    }
}

impl TuneOptions {
    pub const TILE_ENV: &'static str = "STEADYGRAD_MATMUL_TILE";
    pub const TUNE_ENV: &'static str = "STEADYGRAD_MATMUL_TUNE";
    /// The cache file's path, or `off`.
    pub const CACHE_ENV: &'static str = "STEADYGRAD_TUNE_CACHE";

    /// The defaults, with `STEADYGRAD_MATMUL_TILE`, `STEADYGRAD_MATMUL_TUNE` and
    /// `STEADYGRAD_TUNE_CACHE` where set.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut o = TuneOptions::default();
        if let Some(v) = var(Self::TILE_ENV) {
            o.pin = Some(
                v.parse()
                    .with_context(|| format!("{}={v}", Self::TILE_ENV))?,
            );
        }
        if let Some(v) = var(Self::TUNE_ENV) {
            o.mode = v
                .parse()
                .with_context(|| format!("{}={v}", Self::TUNE_ENV))?;
        }
        if let Some(v) = var(Self::CACHE_ENV) {
            o.cache = (v != "off").then(|| PathBuf::from(v));
        }
        Ok(o)
    }
}

/// `$XDG_CACHE_HOME/steadygrad/matmul-tune.json`, else under `~/.cache`.
pub fn default_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("steadygrad").join("matmul-tune.json"))
}

/// Where a class's configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSource {
    Pinned,
    /// Timed in this compile (`complete`: every candidate was timed, so it was cached;
    /// `gpu_clock`: by GPU timestamps rather than wall time).
    Tuned {
        complete: bool,
        gpu_clock: bool,
    },
    Cache,
    /// Not tuned (tuning off, or the shape too large for scratch buffers).
    Default,
}

impl std::fmt::Display for TileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TileSource::Pinned => f.write_str("pinned"),
            TileSource::Tuned {
                complete,
                gpu_clock,
            } => write!(
                f,
                "tuned by {}{}",
                if *gpu_clock {
                    "GPU timestamps"
                } else {
                    "wall time"
                },
                if *complete { "" } else { ", budget ran out" }
            ),
            TileSource::Cache => f.write_str("cache"),
            TileSource::Default => f.write_str("default"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TileChoice {
    pub class: ShapeClass,
    pub tile: MatmulTile,
    pub source: TileSource,
    /// Seconds per run of each timed candidate.
    pub timings: Timings,
}

/// An engine's choices so far, kept across compiles so a class is tuned once.
#[derive(Default)]
pub struct Tuner {
    options: Option<TuneOptions>,
    choices: BTreeMap<ShapeClass, TileChoice>,
    tiles: HashMap<ShapeClass, MatmulTile>,
    /// Shape classes timed so far (none when everything came from the cache).
    pub timed: usize,
}

/// An `m×k×n` product and its form.
pub type Shape = (usize, usize, usize, bool, bool);

/// The products in `lists`.
pub fn shapes<'o>(lists: impl IntoIterator<Item = &'o [Op]>) -> Vec<Shape> {
    let mut out = Vec::new();
    for op in lists.into_iter().flatten() {
        if let Op::MatMul(mm) = op {
            out.push((mm.m, mm.k, mm.n, mm.trans_a, mm.trans_b));
        }
    }
    out
}

impl Tuner {
    /// Replaces the options (else read from the environment at the first compile) and
    /// forgets earlier choices.
    pub fn set_options(&mut self, options: TuneOptions) {
        self.options = Some(options);
        self.choices.clear();
        self.tiles.clear();
    }

    pub fn options(&mut self) -> Result<&TuneOptions> {
        if self.options.is_none() {
            self.options = Some(TuneOptions::from_env()?);
        }
        Ok(self.options.as_ref().expect("set above"))
    }

    /// Whether a configuration is pinned (by the options, else the environment).
    pub fn pinned(&self) -> bool {
        match &self.options {
            Some(o) => o.pin.is_some(),
            None => std::env::var(TuneOptions::TILE_ENV).is_ok_and(|v| !v.trim().is_empty()),
        }
    }

    /// The configuration per class, for the lowering.
    pub fn tiles(&self) -> &HashMap<ShapeClass, MatmulTile> {
        &self.tiles
    }

    pub fn choices(&self) -> Vec<TileChoice> {
        self.choices.values().cloned().collect()
    }

    /// Chooses a configuration for the class of every shape in `shapes` that has none.
    pub fn prepare(
        &mut self,
        ctx: &GpuContext,
        kernels: &mut Kernels,
        shapes: &[Shape],
    ) -> Result<()> {
        let options = self.options()?.clone();
        let mut todo: BTreeMap<ShapeClass, Shape> = BTreeMap::new();
        for &s in shapes {
            let class = ShapeClass::of(s.0, s.1, s.2, s.3, s.4);
            if !self.choices.contains_key(&class) {
                todo.entry(class).or_insert(s);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        if let Some(pin) = options.pin {
            pin.check(&ctx.limits)
                .context("the pinned matmul tile does not fit this device")?;
            for class in todo.into_keys() {
                self.choose(class, pin, TileSource::Pinned, Vec::new());
            }
            return Ok(());
        }
        let tune = match options.mode {
            TuneMode::Off => false,
            TuneMode::On => true,
            TuneMode::Auto => ctx.info.device_type != wgpu::DeviceType::Cpu,
        };
        if !tune {
            for class in todo.into_keys() {
                self.choose(class, MatmulTile::DEFAULT, TileSource::Default, Vec::new());
            }
            return Ok(());
        }
        let adapter = adapter_key(&ctx.info);
        let mut cache = options.cache.as_deref().map(read_cache).unwrap_or_default();
        let cached = cache.get(&adapter).cloned().unwrap_or_default();
        todo.retain(|class, _| {
            let hit = cached
                .get(&class.to_string())
                .and_then(|name| MatmulTile::by_name(name).ok())
                .filter(|t| t.check(&ctx.limits).is_ok());
            if let Some(tile) = hit {
                self.choose(*class, tile, TileSource::Cache, Vec::new());
            }
            hit.is_none()
        });
        let start = Instant::now();
        let mut learned = Vec::new();
        let classes = todo.len();
        for (i, (class, shape)) in todo.into_iter().enumerate() {
            let left = options.budget.saturating_sub(start.elapsed());
            let slice = left / (classes - i) as u32;
            let (tile, source, timings) = match time_class(ctx, kernels, shape, slice)? {
                Some((timings, complete, gpu_clock)) => {
                    let best = timings
                        .iter()
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .expect("at least one timing")
                        .0;
                    self.timed += 1;
                    if complete {
                        learned.push((class.to_string(), best.name));
                    }
                    let source = TileSource::Tuned {
                        complete,
                        gpu_clock,
                    };
                    (best, source, timings)
                }
                None => (MatmulTile::DEFAULT, TileSource::Default, Vec::new()),
            };
            self.choose(class, tile, source, timings);
        }
        if let (Some(path), false) = (&options.cache, learned.is_empty()) {
            let entry = cache.entry(adapter).or_default();
            for (class, name) in learned {
                entry.insert(class, name.to_string());
            }
            // A cache that cannot be written costs a re-tune next time, never the compile.
            let _ = write_cache(path, &cache);
        }
        Ok(())
    }

    fn choose(
        &mut self,
        class: ShapeClass,
        tile: MatmulTile,
        source: TileSource,
        timings: Timings,
    ) {
        self.tiles.insert(class, tile);
        let choice = TileChoice {
            class,
            tile,
            source,
            timings,
        };
        self.choices.insert(class, choice);
    }
}

/// What identifies the hardware and the driver that compiled the kernels.
fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} [{:04x}:{:04x}] {} / {} / {} / {:?}",
        info.name,
        info.vendor,
        info.device,
        info.driver,
        info.driver_info,
        info.backend,
        info.device_type
    )
}

type Cache = BTreeMap<String, BTreeMap<String, String>>;

/// The cache file's entries; empty where it is missing, unreadable or malformed.
pub fn read_cache(path: &Path) -> Cache {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Cache::new();
    };
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(&text) else {
        return Cache::new();
    };
    let Some(Value::Object(adapters)) = root.get("adapters") else {
        return Cache::new();
    };
    adapters
        .iter()
        .filter_map(|(adapter, classes)| {
            let classes = classes.as_object()?;
            let entries = classes
                .iter()
                .filter_map(|(c, t)| Some((c.clone(), t.as_str()?.to_string())))
                .collect();
            Some((adapter.clone(), entries))
        })
        .collect()
}

fn write_cache(path: &Path, cache: &Cache) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let adapters: Map<String, Value> = cache
        .iter()
        .map(|(a, classes)| (a.clone(), serde_json::json!(classes)))
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "version": 1,
        "adapters": adapters,
    }))?;
    // A concurrent reader sees the old file or the new one, never half of one, and a
    // killed writer's temporary file is cleared by the next write.
    crate::checkpoint::write_atomic(path, text.as_bytes())
}

/// Seconds per run of each timed configuration.
type Timings = Vec<(MatmulTile, f64)>;

/// Times every configuration that fits the device on `shape`, within `slice`: the seconds
/// per run of those timed, whether that was all of them and whether every run was timed
/// by GPU timestamps, or `None` where the shape's
/// operands do not fit one binding (the lowering splits those; the default is used).
fn time_class(
    ctx: &GpuContext,
    kernels: &mut Kernels,
    (m, k, n, trans_a, trans_b): Shape,
    slice: Duration,
) -> Result<Option<(Timings, bool, bool)>> {
    let start = Instant::now();
    let max = ctx.max_binding_bytes();
    let sizes = [m * k, k * n, m * n].map(|e| (e.max(1) * 4) as u64);
    if sizes.iter().any(|&s| s > max) || [m, k, n].iter().any(|&d| d > u32::MAX as usize) {
        return Ok(None);
    }
    let device = &ctx.device;
    // The epilogue's bindings get buffers of 16 bytes: EPILOGUE 0 never reads them.
    let [a, b, c, e0, e1, e2] = [sizes[0], sizes[1], sizes[2], 16, 16, 16].map(|size| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matmul tuning scratch"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    });
    let dims = Dims {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        _pad: 0,
    };
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("matmul tuning dims"),
        contents: bytemuck::bytes_of(&dims),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    // A block more than twice the side of C would leave most of its invocations idle:
    // not worth a share of the budget.
    let candidates: Vec<MatmulTile> = MatmulTile::fitting(&ctx.limits)
        .filter(|t| t.bm as usize <= 2 * m.max(16) && t.bn as usize <= 2 * n.max(16))
        .collect();
    let clock = Clock::new(ctx);
    // Cleared by any run that had to fall back to wall time.
    let gpu_clock = std::cell::Cell::new(clock.is_some());
    let mut timings = Vec::new();
    let mut cut = false;
    for &tile in &candidates {
        if !timings.is_empty() && start.elapsed() >= slice {
            cut = true;
            break;
        }
        let groups = [n.div_ceil(tile.bn as usize), m.div_ceil(tile.bm as usize)];
        if groups.iter().any(|&g| g > max_groups) {
            continue;
        }
        // A configuration the driver rejects is skipped rather than failing the compile.
        let op = MatMul {
            a: 0,
            b: 1,
            c: 2,
            m,
            k,
            n,
            trans_a,
            trans_b,
            accumulate: false,
        };
        let Ok(pipeline) = kernels.get(device, &tiled_key(&tile, &op, Epilogue::Plain)) else {
            continue;
        };
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matmul tuning"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, &uniform),
                entry(A.binding, &a),
                entry(B.binding, &b),
                entry(C.binding, &c),
                entry(EPILOGUE_SLOTS[0].binding, &e0),
                entry(EPILOGUE_SLOTS[1].binding, &e1),
                entry(EPILOGUE_SLOTS[2].binding, &e2),
            ],
        });
        let run = || -> Result<f64> {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("matmul tuning"),
                    timestamp_writes: clock.as_ref().map(Clock::writes),
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups[0] as u32, groups[1] as u32, 1);
            }
            if let Some(clock) = &clock {
                clock.resolve(&mut encoder);
            }
            let t0 = Instant::now();
            ctx.queue.submit([encoder.finish()]);
            ctx.wait()?;
            let wall = t0.elapsed().as_secs_f64();
            Ok(match clock.as_ref().map(|c| c.seconds(ctx)) {
                Some(Ok(gpu)) if gpu > 0.0 => gpu,
                _ => {
                    gpu_clock.set(false);
                    wall
                }
            })
        };
        // The first run pays for the driver's lazy work; the fastest of the next few is
        // kept, as other load only ever slows a run down.
        if run().is_err() {
            continue;
        }
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            best = best.min(run()?);
            if start.elapsed() >= slice {
                break;
            }
        }
        timings.push((tile, best));
    }
    if timings.is_empty() {
        return Ok(None);
    }
    Ok(Some((timings, !cut, gpu_clock.get())))
}

/// GPU timestamps around the timed pass, where the device has them: they leave out the
/// submission and the wait, which on a fast GPU take as long as a small product.
struct Clock {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    read: wgpu::Buffer,
    period_ns: f64,
}

impl Clock {
    fn new(ctx: &GpuContext) -> Option<Clock> {
        let device = &ctx.device;
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("matmul tuning"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matmul tuning timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Clock {
            queries,
            resolved: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            period_ns: f64::from(ctx.queue.get_timestamp_period()),
        })
    }

    fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Copies the pass's timestamps where [`Clock::seconds`] reads them.
    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.read, 0, 16);
    }

    /// Seconds between the timestamps of the last submitted pass, once it has finished.
    fn seconds(&self, ctx: &GpuContext) -> Result<f64> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.read.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        ctx.wait()?;
        rx.recv()?
            .map_err(|e| anyhow::anyhow!("reading timestamps: {e}"))?;
        let ticks = {
            let view = self
                .read
                .get_mapped_range(..)
                .map_err(|e| anyhow::anyhow!("reading timestamps: {e}"))?;
            let at =
                |i: usize| u64::from_le_bytes(view[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            at(1).saturating_sub(at(0))
        };
        self.read.unmap();
        Ok(ticks as f64 * self.period_ns * 1e-9)
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}
