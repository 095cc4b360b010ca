//! The GPU-memory side of the resource plan: the Vulkan device-local heap is read through
//! wgpu-hal (wgpu reports no memory size), `STEADYGRAD_DEVICE_MEMORY` caps it, and a fit
//! that needs more than is left is refused before anything is compiled, naming both.

mod common;

use common::{run_cli_env, TempDir};
use steadygrad::gpu::budget::{parse_bytes, vulkan_device_local_heap, DEVICE_MEMORY_ENV};

/// Lavapipe's device-local heap is host memory, so it is read (a real query of the
/// driver, not a constant) and lies between 64 MB and twice the machine's RAM.
#[test]
fn the_vulkan_device_local_heap_is_read() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    assert!(
        !adapters.is_empty(),
        "no Vulkan adapter (on Linux: apt-get install mesa-vulkan-drivers libvulkan1)"
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    for adapter in adapters {
        let heap = vulkan_device_local_heap(&adapter)
            .unwrap_or_else(|| panic!("no device-local heap on {:?}", adapter.get_info()));
        assert!(
            heap >= 64 << 20 && heap <= 2 * total_kb * 1024,
            "{heap} bytes on {:?}",
            adapter.get_info().name
        );
    }
}

#[test]
fn sizes_parse_in_powers_of_1024() {
    assert_eq!(parse_bytes("8G"), Some(8 << 30));
    assert_eq!(parse_bytes("512m"), Some(512 << 20));
    assert_eq!(parse_bytes("1.5K"), Some(1536));
    assert_eq!(parse_bytes(" 4096 "), Some(4096));
    for bad in ["", "G", "abc", "-1G", "0", "0.5", "8X", "nanG", "1e30T"] {
        assert_eq!(parse_bytes(bad), None, "{bad:?}");
    }
}

/// A fit whose activations need more than the capped GPU memory left is refused at once,
/// with the figures and where the cap came from; the same command under a cap it fits in
/// trains.
#[test]
fn a_fit_beyond_the_gpu_memory_cap_is_refused() {
    let dir = TempDir::new("device-memory");
    let args = [
        "train",
        "--backend",
        "vulkan",
        "--epochs",
        "1",
        "--quiet",
        "--batch",
        "2400",
        "--width",
        "4096",
        "--depth",
        "4",
        "--points",
        "1000",
    ];
    let (ok, out, err) = run_cli_env(&args, dir.path(), &[(DEVICE_MEMORY_ENV, "1G")]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("needs 1.6 GB for activations and gradients")
            && err.contains("of GPU memory (at most STEADYGRAD_DEVICE_MEMORY=1G, less"),
        "{err}"
    );
    assert!(!out.contains("trained"), "{out}");

    let small = ["train", "--backend", "vulkan", "--epochs", "1", "--quiet"];
    let (ok, out, err) = run_cli_env(&small, dir.path(), &[(DEVICE_MEMORY_ENV, "1G")]);
    assert!(ok && out.contains("trained 1 epochs"), "{out}{err}");
}

#[test]
fn a_cap_that_is_not_a_size_is_an_error_naming_it() {
    let dir = TempDir::new("device-memory-bad");
    let args = ["train", "--backend", "vulkan", "--epochs", "1", "--quiet"];
    let (ok, out, err) = run_cli_env(&args, dir.path(), &[(DEVICE_MEMORY_ENV, "lots")]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("STEADYGRAD_DEVICE_MEMORY=\"lots\" is not a size"),
        "{err}"
    );
}

/// Parameters and optimizer state that the capped GPU memory cannot hold are refused
/// before any is uploaded, naming both figures; the fit's own check comes later and would
/// be too late for a driver that aborts when an upload runs out of memory.
#[test]
fn parameters_beyond_the_gpu_memory_cap_are_refused_before_upload() {
    let dir = TempDir::new("device-memory-params");
    // 3 hidden layers of 2048: about 8.4 M weights, 34 MB, and as much again of Adam's
    // two moments each.
    let args = [
        "train",
        "--backend",
        "vulkan",
        "--epochs",
        "1",
        "--quiet",
        "--width",
        "2048",
        "--depth",
        "3",
        "--optimizer",
        "adam",
        "--points",
        "100",
    ];
    let (ok, out, err) = run_cli_env(&args, dir.path(), &[(DEVICE_MEMORY_ENV, "64M")]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("the model's parameters and optimizer state need 101 MB")
            && err.contains("of GPU memory (at most STEADYGRAD_DEVICE_MEMORY=64M, less"),
        "{err}"
    );
    let (ok, out, err) = run_cli_env(&args, dir.path(), &[(DEVICE_MEMORY_ENV, "2G")]);
    assert!(ok && out.contains("trained 1 epochs"), "{out}{err}");
}
