// Batch normalization: training-mode statistics and normalization, evaluation mode, and
// the exact backward. Per-feature reductions run one workgroup per feature (column):
// each invocation sums a strided subset of rows, then a tree reduction in shared memory,
// so any batch size works (1000 rows × 1 feature as well as 3 rows × 1000 features).

struct Dims {
    rows: u32,
    cols: u32,
    momentum: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// Training: saved statistics and running estimates (written).
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
// Evaluation: running estimates (read).
@group(0) @binding(9) var<storage, read> eval_mean: array<f32>;
@group(0) @binding(10) var<storage, read> eval_var: array<f32>;
// Backward.
@group(0) @binding(11) var<storage, read> dy: array<f32>;
@group(0) @binding(12) var<storage, read> saved_mean: array<f32>;
@group(0) @binding(13) var<storage, read> saved_invstd: array<f32>;
@group(0) @binding(14) var<storage, read_write> dx: array<f32>;
@group(0) @binding(15) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(16) var<storage, read_write> dbeta: array<f32>;

const WG: u32 = 256u;
var<workgroup> scratch: array<f32, 256>;

// Sum of `v` over the workgroup. Must be called from uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lid < width {
            scratch[lid] += scratch[lid + width];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    // Everyone has read the total before the next call overwrites scratch.
    workgroupBarrier();
    return total;
}

fn column(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}

@compute @workgroup_size(256)
fn train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg);
    // `c` is the same for the whole workgroup, so barriers below stay uniform.
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    var acc = 0.0;
    for (var r = lid; r < dims.rows; r += WG) {
        acc += x[r * dims.cols + c];
    }
    let m = workgroup_sum(lid, acc) / n;
    // Two passes (mean, then squared deviations) avoid the cancellation of E[x²] − E[x]².
    acc = 0.0;
    for (var r = lid; r < dims.rows; r += WG) {
        let d = x[r * dims.cols + c] - m;
        acc += d * d;
    }
    let var_biased = workgroup_sum(lid, acc) / n;
    let is = inverseSqrt(var_biased + dims.eps);
    if lid == 0u {
        mean[c] = m;
        invstd[c] = is;
        running_mean[c] = (1.0 - dims.momentum) * running_mean[c] + dims.momentum * m;
        running_var[c] = (1.0 - dims.momentum) * running_var[c] + dims.momentum * var_biased * n / (n - 1.0);
    }
    let g = gamma[c];
    let b = beta[c];
    for (var r = lid; r < dims.rows; r += WG) {
        let i = r * dims.cols + c;
        y[i] = g * (x[i] - m) * is + b;
    }
}

@compute @workgroup_size(256)
fn eval(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.rows * dims.cols {
        return;
    }
    let c = i % dims.cols;
    y[i] = gamma[c] * (x[i] - eval_mean[c]) * inverseSqrt(eval_var[c] + dims.eps) + beta[c];
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg);
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let m = saved_mean[c];
    let is = saved_invstd[c];
    var s_dy = 0.0;
    var s_dy_xhat = 0.0;
    for (var r = lid; r < dims.rows; r += WG) {
        let i = r * dims.cols + c;
        s_dy += dy[i];
        s_dy_xhat += dy[i] * (x[i] - m) * is;
    }
    let sum_dy = workgroup_sum(lid, s_dy);
    let sum_dy_xhat = workgroup_sum(lid, s_dy_xhat);
    if lid == 0u {
        dbeta[c] = sum_dy;
        dgamma[c] = sum_dy_xhat;
    }
    let k = gamma[c] * is / n;
    for (var r = lid; r < dims.rows; r += WG) {
        let i = r * dims.cols + c;
        let xhat = (x[i] - m) * is;
        dx[i] = k * (n * dy[i] - sum_dy - xhat * sum_dy_xhat);
    }
}
