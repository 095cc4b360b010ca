#!/usr/bin/env bash
# Measures this machine's GPU with `steadygrad bench`: the standard workloads W1, W2 and
# W1-BN (samples/s, ms and dispatches per step, first-step time) and matmul GFLOP/s of
# the three forms at 1024, 2048 and 4096 against the adapter's fp32 peak. Prints the
# table and writes one JSON object per figure to a file, so runs can be compared.
#
#   scripts/gpu-bench.sh                        # writes gpu-bench-<host>-<time>.jsonl
#   scripts/gpu-bench.sh --peak 67000           # a peak for an adapter the table lacks
#   BENCH_OUT=h200.jsonl scripts/gpu-bench.sh --matmul-sizes 1024,2048,4096,8192
#   STEADYGRAD=/path/to/steadygrad scripts/gpu-bench.sh --quick
#
# Every argument goes to `steadygrad bench` (see `steadygrad bench --help`). The binary
# is $STEADYGRAD, else `steadygrad` on the PATH, else `cargo run --release --` when run
# from a source tree. --backend and --adapter (or STEADYGRAD_BACKEND, STEADYGRAD_ADAPTER)
# pick the adapter.
set -euo pipefail

out="${BENCH_OUT:-gpu-bench-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"

if [ -n "${STEADYGRAD:-}" ]; then
    bin=("$STEADYGRAD")
elif command -v steadygrad >/dev/null 2>&1; then
    bin=(steadygrad)
else
    root="$(cd "$(dirname "$0")/.." && pwd)"
    if [ ! -f "$root/Cargo.toml" ]; then
        echo "no steadygrad binary: install it (cargo install --path .) or set STEADYGRAD" >&2
        exit 1
    fi
    bin=(cargo run --quiet --release --manifest-path "$root/Cargo.toml" --)
fi

"${bin[@]}" bench --json-file "$out" "$@"
echo "JSON lines ($(wc -l <"$out")): $out"
