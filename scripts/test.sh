#!/usr/bin/env bash
# Runs steadygrad's test suite. On Debian/Ubuntu without a Vulkan driver it first installs
# Mesa's software Vulkan (lavapipe), so the GPU tests run for real: they fail, not skip,
# when no adapter is found. Mesa 25 from bookworm-backports computes several times faster
# than bookworm's 22.3, so it is preferred where the distribution offers it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The linker cache's library list, read whole before grep looks at it: `ldconfig -p |
# grep -q` under pipefail fails now and then (grep exits early, ldconfig gets SIGPIPE),
# and ldconfig is in /sbin, off a normal user's PATH on Debian.
shared_libs() {
    local libs
    libs=$(/sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null || true)
    printf '%s\n' "$libs"
}

has_lib() {
    grep -q "$1" <<<"$(shared_libs)"
}

have_vulkan() {
    has_lib 'libvulkan\.so\.1' &&
        ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json >/dev/null 2>&1
}

# wgpu's GL backend runs on Mesa's llvmpipe through headless EGL (tests/gl_backend.rs).
have_gl() {
    has_lib 'libEGL\.so\.1' &&
        ls /usr/share/glvnd/egl_vendor.d/*mesa*.json >/dev/null 2>&1
}

install_vulkan() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    local codename=""
    [ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    local target=()
    if [ "$codename" = "bookworm" ]; then
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
                $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        fi
        target=(-t bookworm-backports)
    fi
    local packages=(mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri)
    echo "installing Mesa's software Vulkan (lavapipe) and EGL/GL (llvmpipe) drivers..."
    $sudo apt-get update -q
    $sudo apt-get install -y -q "${target[@]}" "${packages[@]}" ||
        $sudo apt-get install -y -q "${packages[@]}"
}

if [ "$(uname -s)" = "Linux" ] && ! { have_vulkan && have_gl; }; then
    if command -v apt-get >/dev/null; then
        install_vulkan
    else
        echo "no Vulkan driver found and no apt-get: install your distribution's Mesa Vulkan drivers" >&2
        exit 1
    fi
fi

# tests/report_cli.rs renders the HTML report in headless Chromium; it fails, not skips,
# without one.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null &&
    ! command -v google-chrome >/dev/null; then
    if command -v apt-get >/dev/null; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Chromium for the HTML report test..."
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
    else
        echo "no Chromium found and no apt-get: install chromium for tests/report_cli.rs" >&2
        exit 1
    fi
fi

# Data-parallel training (`--features mpi`, tests/distributed.rs) runs two processes
# under Open MPI's mpirun; the mpi crate's build runs bindgen over mpi.h, which needs
# libclang. mpirun refuses root without these variables, and CI runs as root.
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null ||
    ! has_lib 'libclang'; then
    if command -v apt-get >/dev/null; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Open MPI and libclang for the data-parallel tests..."
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q libopenmpi-dev openmpi-bin libclang-dev
    else
        echo "no Open MPI found and no apt-get: install Open MPI and libclang for tests/distributed.rs" >&2
        exit 1
    fi
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# One build for everything, with the data-parallel feature on (tests/distributed.rs and
# the distributed module's unit tests need it; the rest does not mind it). Building
# without it too would compile wgpu and its dependencies a second time: the mpi crate's
# bindgen turns on features of shared dependencies such as syn.
features=(--features mpi)
cargo test --release "${features[@]}" "$@"

# The bench command in its quick mode (seconds), so `steadygrad bench` and
# scripts/gpu-bench.sh, which nothing else runs, cannot rot; tests/bench_cli.rs checks
# its figures.
echo "steadygrad bench --quick --json"
cargo run --release --quiet "${features[@]}" -- bench --quick --json >/dev/null

# The GPU-vs-CPU suites again with the device opened at WebGPU's default limits and no
# optional feature (see `LimitsProfile`), so a green run proves the engine stays within
# what any WebGPU implementation guarantees. Skipped when arguments pick tests. Not
# large_tensors: its fake binding limits of a few KiB are smaller than one window at
# WebGPU's 256-byte offset alignment.
if [ "$#" -eq 0 ]; then
    echo "GPU-vs-CPU suites under STEADYGRAD_LIMITS=webgpu"
    STEADYGRAD_LIMITS=webgpu cargo test --release "${features[@]}" \
        --test gpu_vs_cpu --test activations --test activation_erf --test batchnorm_residual --test clip \
        --test dropout --test health_ops --test matmul_variants --test optim \
        --test health --test health_nonfinite --test training --test transfer --test self_normalization \
        --test sync_batch_norm
    # And on wgpu's GL backend (llvmpipe through EGL), which translates every kernel to
    # GLSL: a third driver stack behind the same tests.
    echo "GPU-vs-CPU suites on the GL backend (STEADYGRAD_BACKEND=gl)"
    STEADYGRAD_BACKEND=gl cargo test --release "${features[@]}" \
        --test gpu_vs_cpu --test activations --test activation_erf --test batchnorm_residual --test clip \
        --test dropout --test health_ops --test matmul_variants --test optim --test health --test health_nonfinite \
        --test sync_batch_norm
fi
