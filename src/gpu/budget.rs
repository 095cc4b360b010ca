//! What a device takes beyond its reported limits, for the resource plan of a fit.

use crate::engine::BindGroupBudget;

/// Lavapipe maps memory for every descriptor set, so a process that makes more bind
/// groups than the kernel's `vm.max_map_count` (65530 by default) allows mappings
/// crashes inside the driver. A 2000-layer net's three plans (batch, last batch,
/// validation) need about 70,000. Hardware drivers keep descriptor sets in pools and
/// are bound by memory only.
pub fn bind_groups(info: &wgpu::AdapterInfo) -> Option<BindGroupBudget> {
    if info.device_type != wgpu::DeviceType::Cpu || info.backend != wgpu::Backend::Vulkan {
        return None;
    }
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let in_use = std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .count();
    // Headroom for what the driver, allocator and staging buffers map besides.
    const MARGIN: usize = 4096;
    Some(BindGroupBudget {
        available: limit.saturating_sub(in_use + MARGIN),
        limit,
        limit_name: "the kernel's vm.max_map_count (lavapipe maps memory for each)",
        in_use,
        remedy: "raise the limit: sysctl -w vm.max_map_count=262144",
    })
}

/// Caps the GPU memory a process plans to use, in bytes or with a K, M, G or T suffix
/// (powers of 1024): to leave room for other processes on a shared GPU, or to state the
/// size where the driver does not tell (Metal, DX12, GL).
pub const DEVICE_MEMORY_ENV: &str = "STEADYGRAD_DEVICE_MEMORY";

/// Bytes of the Vulkan adapter's largest device-local memory heap: the most a GPU can hold
/// in its own memory, which wgpu does not report; or [`DEVICE_MEMORY_ENV`] where set.
/// `None` on other backends, and on CPU adapters, whose heaps are host memory (checked
/// against `MemAvailable` instead).
pub fn device_memory(adapter: &wgpu::Adapter) -> anyhow::Result<Option<u64>> {
    let cap = match std::env::var(DEVICE_MEMORY_ENV) {
        Ok(text) if !text.trim().is_empty() => Some(parse_bytes(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "{DEVICE_MEMORY_ENV}={text:?} is not a size: give bytes (at least 1), or a \
                 number with K, M, G or T (e.g. 8G)"
            )
        })?),
        _ => None,
    };
    let info = adapter.get_info();
    let heap = if info.device_type == wgpu::DeviceType::Cpu || info.backend != wgpu::Backend::Vulkan
    {
        None
    } else {
        vulkan_device_local_heap(adapter)
    };
    // A cap never raises what the driver reports.
    Ok(match (cap, heap) {
        (Some(c), Some(h)) => Some(c.min(h)),
        (c, h) => c.or(h),
    })
}

/// `8G`, `512M`, `1.5G` or plain bytes; powers of 1024.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    let value: f64 = number.trim().parse().ok()?;
    let bytes = value * (1u64 << shift) as f64;
    (value.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The largest `DEVICE_LOCAL` heap of a Vulkan adapter, of any device type. Only where
/// wgpu builds its Vulkan backend by default (not Apple, which needs
/// `vulkan-portability`, nor the web).
#[cfg(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
))]
pub fn vulkan_device_local_heap(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the HAL adapter is only borrowed for one property query, which neither
    // creates nor destroys anything, while `adapter` keeps it alive.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    // SAFETY: the physical device belongs to this live instance.
    let memory = unsafe {
        hal.shared_instance()
            .raw_instance()
            .get_physical_device_memory_properties(hal.raw_physical_device())
    };
    memory
        .memory_heaps
        .iter()
        .take(memory.memory_heap_count as usize)
        .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .max()
}

#[cfg(not(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
)))]
pub fn vulkan_device_local_heap(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}
