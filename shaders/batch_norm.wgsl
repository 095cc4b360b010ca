// Batch normalization: training-mode statistics and normalization, evaluation mode, and
// the exact backward; and the same split where synchronized batch norm exchanges with
// other ranks (`stats` → host → `apply_stats` + `normalize`, `grad_sums` → host →
// `grad_apply`). The fused and split entry points share the helpers below, so both
// compute alike. The forward's second half is two kernels because one would bind nine
// storage buffers, one more than WebGPU's default limit.
//
// On CPU-backed adapters (the texture matmul variants) the per-feature reductions run
// one invocation per feature (column), looping over the rows of the batch (`train`,
// `backward`, `stats`, `grad_sums`): no workgroup memory or barriers, which
// those adapters execute and compile slowly (a workgroup tree reduction per feature cost
// lavapipe 7 ms per 256×512 layer and direction). GPUs run one workgroup per feature with
// a tree reduction (the `_tree` entry points). Adjacent invocations read adjacent columns.
//
// `V` is `f32` or, when the feature count divides by 4, `vec4<f32>` (four features per
// invocation), declared by the host in front of this file; `dims.cols` counts `V`s.

struct Dims {
    rows: u32,
    cols: u32,
    momentum: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> gamma: array<V>;
@group(0) @binding(3) var<storage, read> beta: array<V>;
@group(0) @binding(4) var<storage, read_write> y: array<V>;
// Training: saved statistics and running estimates (written).
@group(0) @binding(5) var<storage, read_write> mean: array<V>;
@group(0) @binding(6) var<storage, read_write> invstd: array<V>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<V>;
@group(0) @binding(8) var<storage, read_write> running_var: array<V>;
// Evaluation: running estimates (read).
@group(0) @binding(9) var<storage, read> eval_mean: array<V>;
@group(0) @binding(10) var<storage, read> eval_var: array<V>;
// Backward.
@group(0) @binding(11) var<storage, read> dy: array<V>;
@group(0) @binding(12) var<storage, read> saved_mean: array<V>;
@group(0) @binding(13) var<storage, read> saved_invstd: array<V>;
@group(0) @binding(14) var<storage, read_write> dx: array<V>;
@group(0) @binding(15) var<storage, read_write> dgamma: array<V>;
@group(0) @binding(16) var<storage, read_write> dbeta: array<V>;
// Synchronized batch norm: the local statistics for the host (written), and what the host
// wrote back from all ranks (read): `[mean; biased var; unbiased var]` forward,
// `[Σdy/N; Σdy·x̂/N]` backward.
@group(0) @binding(17) var<storage, read_write> local_stats: array<V>;
@group(0) @binding(18) var<storage, read> global_stats: array<V>;

const COLS_WG: u32 = 64u;

fn column(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * COLS_WG + lid;
}

fn store_statistics(c: u32, m: V, var_unbiased: V, is: V) {
    mean[c] = m;
    invstd[c] = is;
    running_mean[c] = (1.0 - dims.momentum) * running_mean[c] + dims.momentum * m;
    running_var[c] = (1.0 - dims.momentum) * running_var[c] + dims.momentum * var_unbiased;
}

// Mean and centered sum of squares of feature c over the rows. Two passes (mean, then
// squared deviations) avoid the cancellation of E[x²] − E[x]².
struct Moments {
    mean: V,
    m2: V,
}

fn moments_serial(c: u32) -> Moments {
    let n = f32(dims.rows);
    var acc = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        acc += x[r * dims.cols + c];
    }
    let m = acc / n;
    acc = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        let d = x[r * dims.cols + c] - m;
        acc += d * d;
    }
    return Moments(m, acc);
}

// The local Σdy and Σdy·x̂ of feature c (dβ and dγ).
struct GradSums {
    dy: V,
    dy_xhat: V,
}

fn grad_sums_serial(c: u32) -> GradSums {
    let m = saved_mean[c];
    let is = saved_invstd[c];
    var sum_dy = V(0.0);
    var sum_dy_xhat = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        let i = r * dims.cols + c;
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - m) * is;
    }
    return GradSums(sum_dy, sum_dy_xhat);
}

// y for rows first, first + stride, … of feature c.
fn normalize_rows(c: u32, first: u32, stride: u32, m: V, is: V) {
    let g = gamma[c];
    let b = beta[c];
    for (var r = first; r < dims.rows; r += stride) {
        let i = r * dims.cols + c;
        y[i] = g * (x[i] - m) * is + b;
    }
}

// dx = γ·invstd·(dy − a − x̂·b) at element i of feature c (mean m, invstd is, k = γ·is),
// where a = Σdy/N and b = Σdy·x̂/N over the (local or global) batch.
fn grad_x(i: u32, m: V, is: V, k: V, a: V, b: V) -> V {
    return k * (dy[i] - a - (x[i] - m) * is * b);
}

// grad_x for rows first, first + stride, … of feature c.
fn backward_rows(c: u32, first: u32, stride: u32, a: V, b: V) {
    let m = saved_mean[c];
    let is = saved_invstd[c];
    let k = gamma[c] * is;
    for (var r = first; r < dims.rows; r += stride) {
        let i = r * dims.cols + c;
        dx[i] = grad_x(i, m, is, k, a, b);
    }
}

@compute @workgroup_size(64)
fn train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let mo = moments_serial(c);
    let is = inverseSqrt(mo.m2 / n + dims.eps);
    store_statistics(c, mo.mean, mo.m2 / (n - 1.0), is);
    normalize_rows(c, 0u, 1u, mo.mean, is);
}

@compute @workgroup_size(64)
fn stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let mo = moments_serial(c);
    local_stats[c] = mo.mean;
    local_stats[dims.cols + c] = mo.m2;
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let s = grad_sums_serial(c);
    dbeta[c] = s.dy;
    dgamma[c] = s.dy_xhat;
    backward_rows(c, 0u, 1u, s.dy / n, s.dy_xhat / n);
}

@compute @workgroup_size(64)
fn grad_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let s = grad_sums_serial(c);
    dbeta[c] = s.dy;
    dgamma[c] = s.dy_xhat;
}

// The same with one workgroup per feature and a tree reduction in workgroup memory, for
// GPUs: there a loop over the whole batch per invocation would leave most of the device
// idle. (`train` and `backward` are for CPU-backed adapters, see the header.)
var<workgroup> scratch: array<V, 256>;

// Sum of `v` over the workgroup. Must be called from uniform control flow.
fn workgroup_sum(lid: u32, v: V) -> V {
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

fn moments_tree(c: u32, lid: u32) -> Moments {
    let n = f32(dims.rows);
    var acc = V(0.0);
    for (var r = lid; r < dims.rows; r += WG) {
        acc += x[r * dims.cols + c];
    }
    let m = workgroup_sum(lid, acc) / n;
    acc = V(0.0);
    for (var r = lid; r < dims.rows; r += WG) {
        let d = x[r * dims.cols + c] - m;
        acc += d * d;
    }
    return Moments(m, workgroup_sum(lid, acc));
}

fn sum_grads_tree(c: u32, lid: u32) -> GradSums {
    let m = saved_mean[c];
    let is = saved_invstd[c];
    var s_dy = V(0.0);
    var s_dy_xhat = V(0.0);
    for (var r = lid; r < dims.rows; r += WG) {
        let i = r * dims.cols + c;
        s_dy += dy[i];
        s_dy_xhat += dy[i] * (x[i] - m) * is;
    }
    let sum_dy = workgroup_sum(lid, s_dy);
    return GradSums(sum_dy, workgroup_sum(lid, s_dy_xhat));
}

@compute @workgroup_size(256)
fn train_tree(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    // `c` is the same for the whole workgroup, so barriers below stay uniform.
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let mo = moments_tree(c, lid);
    let is = inverseSqrt(mo.m2 / n + dims.eps);
    if lid == 0u {
        store_statistics(c, mo.mean, mo.m2 / (n - 1.0), is);
    }
    normalize_rows(c, lid, WG, mo.mean, is);
}

@compute @workgroup_size(256)
fn stats_tree(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if c >= dims.cols {
        return;
    }
    let mo = moments_tree(c, lid);
    if lid == 0u {
        local_stats[c] = mo.mean;
        local_stats[dims.cols + c] = mo.m2;
    }
}

@compute @workgroup_size(256)
fn backward_tree(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let s = sum_grads_tree(c, lid);
    if lid == 0u {
        dbeta[c] = s.dy;
        dgamma[c] = s.dy_xhat;
    }
    backward_rows(c, lid, WG, s.dy / n, s.dy_xhat / n);
}

@compute @workgroup_size(256)
fn grad_sums_tree(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if c >= dims.cols {
        return;
    }
    let s = sum_grads_tree(c, lid);
    if lid == 0u {
        dbeta[c] = s.dy;
        dgamma[c] = s.dy_xhat;
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

// Synchronized forward's second half, per feature: saves the global statistics the host
// wrote and updates the running ones.
@compute @workgroup_size(256)
fn apply_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = (wg.y * nwg.x + wg.x) * WG + lid;
    if c >= dims.cols {
        return;
    }
    let m = global_stats[c];
    let is = inverseSqrt(global_stats[dims.cols + c] + dims.eps);
    store_statistics(c, m, global_stats[2u * dims.cols + c], is);
}

// Synchronized forward's last step, elementwise: y from the statistics `apply_stats` saved.
@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.rows * dims.cols {
        return;
    }
    let c = i % dims.cols;
    y[i] = gamma[c] * (x[i] - saved_mean[c]) * saved_invstd[c] + beta[c];
}

// Synchronized backward's second half, elementwise: the sums come from the host.
@compute @workgroup_size(256)
fn grad_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= dims.rows * dims.cols {
        return;
    }
    let c = i % dims.cols;
    let is = saved_invstd[c];
    dx[i] = grad_x(i, saved_mean[c], is, gamma[c] * is, global_stats[c],
                   global_stats[dims.cols + c]);
}
