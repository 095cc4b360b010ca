//! Adapter selection and the wgpu device, with device errors turned into `anyhow` errors.

use anyhow::{bail, Context, Result};
use std::sync::{Arc, Mutex, OnceLock};

/// Which adapters may be used: a set of wgpu backends and an optional filter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSelection {
    pub backends: wgpu::Backends,
    /// An adapter index (as listed by `steadygrad devices`) or a case-insensitive
    /// substring of the adapter name.
    pub filter: Option<String>,
}

impl Default for AdapterSelection {
    fn default() -> Self {
        AdapterSelection {
            backends: wgpu::Backends::PRIMARY,
            filter: None,
        }
    }
}

impl AdapterSelection {
    /// `backend` is one of `vulkan`, `metal`, `dx12`, `gl`, or `None` for the primary
    /// backends of the platform (Vulkan, Metal, DX12).
    pub fn new(backend: Option<&str>, filter: Option<&str>) -> Result<Self> {
        let backends = match backend.map(|b| b.to_ascii_lowercase()) {
            None => wgpu::Backends::PRIMARY,
            Some(b) => match b.as_str() {
                "vulkan" | "vk" => wgpu::Backends::VULKAN,
                "metal" => wgpu::Backends::METAL,
                "dx12" | "d3d12" => wgpu::Backends::DX12,
                "gl" | "gles" | "opengl" => wgpu::Backends::GL,
                "all" => wgpu::Backends::all(),
                other => bail!(
                    "unknown backend '{other}'; expected auto, cpu, vulkan, metal, dx12 or gl"
                ),
            },
        };
        Ok(AdapterSelection {
            backends,
            filter: filter.filter(|f| !f.is_empty()).map(str::to_string),
        })
    }
}

/// Lists every adapter wgpu sees for `backends`.
pub fn list_adapters(backends: wgpu::Backends) -> Vec<wgpu::AdapterInfo> {
    let instance = make_instance(backends);
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// One-line description of an adapter: name, type, backend and driver.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
        (true, true) => "unknown driver".to_string(),
        (false, true) => info.driver.clone(),
        (true, false) => info.driver_info.clone(),
        (false, false) => format!("{} {}", info.driver, info.driver_info),
    };
    format!(
        "{} ({:?}, {}, driver: {driver})",
        info.name, info.device_type, info.backend
    )
}

/// What to do when `backends` found no adapter: advice for the backend asked for, since
/// advising a Vulkan driver to someone who asked for Metal on Linux sends them astray.
fn no_adapter_hint(backends: wgpu::Backends) -> String {
    let only = |b: wgpu::Backends| backends == b;
    let here = if cfg!(target_os = "macos") {
        "vulkan is unavailable here; use --backend metal or auto"
    } else if cfg!(target_os = "windows") {
        "use --backend dx12, vulkan or auto"
    } else {
        "use --backend vulkan or auto"
    };
    if only(wgpu::Backends::METAL) && !cfg!(any(target_os = "macos", target_os = "ios")) {
        return format!("Metal exists only on macOS and iOS; {here}, or --backend cpu");
    }
    if only(wgpu::Backends::DX12) && !cfg!(target_os = "windows") {
        return format!("DX12 exists only on Windows; {here}, or --backend cpu");
    }
    if only(wgpu::Backends::GL) {
        return if cfg!(target_os = "linux") {
            "install an OpenGL ES/EGL driver, e.g. `apt-get install libegl1 libgles2 \
             libgl1-mesa-dri`, or use --backend vulkan, auto or cpu"
                .to_string()
        } else {
            "install or update your GPU's OpenGL driver, or use --backend auto or cpu".to_string()
        };
    }
    if cfg!(target_os = "linux") {
        "install a Vulkan driver, e.g. Mesa's software one: `apt-get install mesa-vulkan-drivers libvulkan1`, or use --backend cpu".to_string()
    } else if cfg!(target_os = "windows") {
        "install or update your GPU's DX12/Vulkan driver, or use --backend cpu".to_string()
    } else if cfg!(target_os = "macos") {
        "Metal should always be present on macOS 10.13+; check the system, or use --backend cpu"
            .to_string()
    } else {
        "install a Vulkan driver for this platform, or use --backend cpu".to_string()
    }
}

/// Which limits a device is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitsProfile {
    /// The adapter's own limits and the optional features the engine can use.
    Native,
    /// WebGPU's default limits (`wgpu::Limits::default()`) and no optional feature.
    WebGpu,
}

impl LimitsProfile {
    /// Environment variable choosing the profile: `native` (the default) or `webgpu`.
    pub const ENV: &'static str = "STEADYGRAD_LIMITS";

    pub fn from_env() -> Result<LimitsProfile> {
        match std::env::var(Self::ENV).ok().as_deref() {
            None | Some("") | Some("native") => Ok(LimitsProfile::Native),
            Some("webgpu") | Some("portable") => Ok(LimitsProfile::WebGpu),
            Some(other) => bail!(
                "{}={other}: expected native (the adapter's limits) or webgpu (WebGPU's \
                 default limits, no optional features)",
                Self::ENV
            ),
        }
    }
}

/// A wgpu device with the adapter's own limits (or WebGPU's defaults, see
/// [`LimitsProfile`]) and a record of asynchronous errors.
pub struct GpuContext {
    pub info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    /// Bytes of the adapter's own memory where the driver tells (Vulkan on a GPU): the
    /// resource plan's ceiling for everything a model allocates.
    pub device_memory: Option<u64>,
    error: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    pub fn new(sel: &AdapterSelection) -> Result<Self> {
        let instance = make_instance(sel.backends);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(sel.backends));
        if adapters.is_empty() {
            bail!(
                "no GPU adapter found for backends {:?}: {}",
                sel.backends,
                no_adapter_hint(sel.backends)
            );
        }
        let adapter = match &sel.filter {
            Some(f) => {
                let pos = match f.parse::<usize>() {
                    Ok(i) if i < adapters.len() => Some(i),
                    Ok(i) => bail!(
                        "adapter index {i} is out of range: {} adapter(s) found",
                        adapters.len()
                    ),
                    Err(_) => {
                        let needle = f.to_ascii_lowercase();
                        adapters
                            .iter()
                            .position(|a| a.get_info().name.to_ascii_lowercase().contains(&needle))
                    }
                };
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let i = pos.with_context(|| {
                    format!("no adapter matches '{f}'; found: {}", names.join(", "))
                })?;
                adapters.swap_remove(i)
            }
            None => {
                // Prefer real GPUs; a software rasterizer (lavapipe) is the last resort.
                let rank = |t: wgpu::DeviceType| match t {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Other => 3,
                    wgpu::DeviceType::Cpu => 4,
                };
                adapters.sort_by_key(|a| rank(a.get_info().device_type));
                adapters.swap_remove(0)
            }
        };
        let info = adapter.get_info();
        let portable = LimitsProfile::from_env()? == LimitsProfile::WebGpu;
        let (limits, features) = if portable {
            // What every WebGPU implementation guarantees (8 storage buffers per stage,
            // 128 MiB bindings, 16 KiB workgroup memory) and no optional feature: proves
            // the engine runs on an ordinary GPU and driver, not only on this adapter.
            (wgpu::Limits::default(), wgpu::Features::empty())
        } else {
            // The adapter's real limits, not wgpu's conservative defaults: large layers
            // need the full storage-buffer binding size. Subgroups, where the adapter has
            // them, let the CPU-adapter matmul share its loads across lanes (see
            // `ops/matmul/texture.rs`).
            (
                adapter.limits(),
                // Timestamps time the matmul tuner's candidates (`ops/matmul/tune.rs`).
                adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY),
            )
        };
        let device_memory = crate::gpu::budget::device_memory(&adapter)?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("steadygrad"),
            required_features: features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .with_context(|| format!("could not open a device on {}", describe_adapter(&info)))?;

        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("GPU error: {e}"));
        }));
        let sink = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("GPU device lost ({reason:?}): {msg}"));
        });
        Ok(GpuContext {
            info,
            device,
            queue,
            limits,
            device_memory,
            error,
        })
    }

    /// One device for the whole process, chosen by `STEADYGRAD_BACKEND` and
    /// `STEADYGRAD_ADAPTER` when set. Tests share it instead of opening one each.
    pub fn shared() -> Result<Arc<GpuContext>> {
        static SHARED: OnceLock<std::result::Result<Arc<GpuContext>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let backend = std::env::var("STEADYGRAD_BACKEND").ok();
                let backend = backend
                    .as_deref()
                    .filter(|b| !matches!(*b, "" | "auto" | "gpu"));
                let adapter = std::env::var("STEADYGRAD_ADAPTER").ok();
                AdapterSelection::new(backend, adapter.as_deref())
                    .and_then(|sel| GpuContext::new(&sel))
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// Returns (and clears) the first validation, out-of-memory or device-lost error
    /// reported since the last call.
    pub fn take_error(&self) -> Result<()> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(e) => bail!(e),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and returns the first
    /// error it caused, prefixed with `what`. Scopes are per thread, so an error is
    /// charged to the call that made it even when several threads share the device.
    pub fn scoped<T>(&self, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            bail!("{}: GPU error: {e}", what());
        }
        self.take_error()?;
        Ok(out)
    }

    /// Blocks until all submitted work has finished, then reports any device error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU failed: {e}"))?;
        self.take_error()
    }

    /// Largest buffer this device can bind as one storage binding.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }
}
