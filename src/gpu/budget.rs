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
