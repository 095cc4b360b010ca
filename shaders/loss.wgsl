// Losses with their gradients, and the on-device metric accumulator.
// Each loss writes the per-row loss, a per-row "correct" flag and the gradient of the
// mean loss with respect to the predictions.

struct Dims {
    rows: u32,
    cols: u32,
    // accumulate_metrics: guard the per-row losses at flag `slot` (see below).
    guard: u32,
    slot: u32,
    peaks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> truth: array<f32>;
@group(0) @binding(3) var<storage, read_write> dpred: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_correct: array<f32>;

const ROW_WG: u32 = 64u;

fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * ROW_WG + lid;
}

// Softmax cross-entropy, stable through the row maximum: loss = log Σ exp(z - max) + max - z[label].
@compute @workgroup_size(64)
fn cross_entropy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wg, nwg, lid);
    if r >= dims.rows {
        return;
    }
    let base = r * dims.cols;
    let label = u32(truth[r]);
    var zmax = pred[base];
    var argmax = 0u;
    for (var c = 1u; c < dims.cols; c++) {
        let v = pred[base + c];
        if v > zmax {
            zmax = v;
            argmax = c;
        }
    }
    var sum = 0.0;
    for (var c = 0u; c < dims.cols; c++) {
        sum += exp(pred[base + c] - zmax);
    }
    row_loss[r] = log(sum) + zmax - pred[base + label];
    row_correct[r] = select(0.0, 1.0, argmax == label);
    let scale = 1.0 / f32(dims.rows);
    for (var c = 0u; c < dims.cols; c++) {
        let p = exp(pred[base + c] - zmax) / sum;
        dpred[base + c] = (p - select(0.0, 1.0, c == label)) * scale;
    }
}

// Mean squared error over all elements, as torch.nn.MSELoss(reduction='mean').
@compute @workgroup_size(64)
fn mse(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wg, nwg, lid);
    if r >= dims.rows {
        return;
    }
    let base = r * dims.cols;
    let scale = 2.0 / (f32(dims.rows) * f32(dims.cols));
    var sq = 0.0;
    for (var c = 0u; c < dims.cols; c++) {
        let d = pred[base + c] - truth[base + c];
        sq += d * d;
        dpred[base + c] = d * scale;
    }
    row_loss[r] = sq / f32(dims.cols);
    row_correct[r] = 0.0;
}

@group(0) @binding(6) var<storage, read> loss_in: array<f32>;
@group(0) @binding(7) var<storage, read> correct_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(9) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(10) var<storage, read> step_bits: array<u32>;

// metrics += [Σ loss, Σ correct, rows], one invocation. Rows are a batch: a loop over
// them is short, and a workgroup tree reduction's barriers cost lavapipe about 0.4 s of
// LLVM compilation on the first step (barriers become coroutine suspend points). Four
// interleaved partial sums keep rounding closer to a pairwise sum.
@compute @workgroup_size(1)
fn accumulate_metrics() {
    var l = vec4<f32>(0.0);
    var c = vec4<f32>(0.0);
    var r = 0u;
    for (; r + 4u <= dims.rows; r += 4u) {
        l += vec4<f32>(loss_in[r], loss_in[r + 1u], loss_in[r + 2u], loss_in[r + 3u]);
        c += vec4<f32>(correct_in[r], correct_in[r + 1u], correct_in[r + 2u], correct_in[r + 3u]);
    }
    for (; r < dims.rows; r++) {
        l.x += loss_in[r];
        c.x += correct_in[r];
    }
    metrics[0] += (l.x + l.y) + (l.z + l.w);
    metrics[1] += (c.x + c.y) + (c.z + c.w);
    metrics[2] += f32(dims.rows);
    if dims.guard != 0u {
        guard_losses();
    }
}

// The non-finite guard's check of the per-row losses (`ops::health::GuardFinite`, see
// shaders/health/guard.wgsl), taken over from a guard dispatch later in the step: the
// step marks flag `slot` on a NaN or inf, and the largest finite magnitude raises its
// peak. Non-finite from the exponent bits: compilers may assume floats finite.
fn guard_losses() {
    var seen = vec2<u32>(0u);
    for (var r = 0u; r < dims.rows; r++) {
        seen = guard_see(seen, loss_in[r]);
    }
    guard_mark(dims.slot, seen);
}
