// Batch normalization: training-mode statistics and normalization, evaluation mode, and
// the exact backward.
//
// The per-feature reductions run one invocation per feature (column), looping over the
// rows of the batch: no workgroup memory or barriers, which CPU-backed adapters execute
// slowly (a workgroup tree reduction per feature cost lavapipe 7 ms per 256×512 layer
// and direction) and compile slowly; a batch of rows per invocation is short on GPUs too.
// Adjacent invocations read adjacent columns.
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

const WG: u32 = 256u;
const COLS_WG: u32 = 64u;

fn column(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * COLS_WG + lid;
}

@compute @workgroup_size(64)
fn train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    var acc = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        acc += x[r * dims.cols + c];
    }
    let m = acc / n;
    // Two passes (mean, then squared deviations) avoid the cancellation of E[x²] − E[x]².
    acc = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        let d = x[r * dims.cols + c] - m;
        acc += d * d;
    }
    let var_biased = acc / n;
    let is = inverseSqrt(var_biased + dims.eps);
    mean[c] = m;
    invstd[c] = is;
    running_mean[c] = (1.0 - dims.momentum) * running_mean[c] + dims.momentum * m;
    running_var[c] = (1.0 - dims.momentum) * running_var[c]
        + dims.momentum * var_biased * n / (n - 1.0);
    let g = gamma[c];
    let b = beta[c];
    for (var r = 0u; r < dims.rows; r++) {
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

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = column(wg, nwg, lid);
    if c >= dims.cols {
        return;
    }
    let n = f32(dims.rows);
    let m = saved_mean[c];
    let is = saved_invstd[c];
    var sum_dy = V(0.0);
    var sum_dy_xhat = V(0.0);
    for (var r = 0u; r < dims.rows; r++) {
        let i = r * dims.cols + c;
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - m) * is;
    }
    dbeta[c] = sum_dy;
    dgamma[c] = sum_dy_xhat;
    let k = gamma[c] * is / n;
    for (var r = 0u; r < dims.rows; r++) {
        let i = r * dims.cols + c;
        let xhat = (x[i] - m) * is;
        dx[i] = k * (n * dy[i] - sum_dy - xhat * sum_dy_xhat);
    }
}
