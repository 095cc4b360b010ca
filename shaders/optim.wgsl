// Optimizer updates, following torch.optim's single-tensor implementations. The learning
// rate comes from a small storage buffer (hyper[0]) so a schedule can change it between
// steps without rebuilding bind groups; constants fixed when the plan is compiled (decay
// rates, eps, weight decay) come from a per-op uniform.
//
// `V`, the element type of parameters, gradients and state, is `f32` or `vec4<f32>`,
// declared by the host in front of this file: vectors when the length divides by 4,
// because on CPU-backed adapters one vector load costs about what one scalar load does
// (the 18 SGD updates of a W1 step went from 17 to 7 ms). `dims.len` counts `V`s.

struct Dims {
    len: u32,
    // sgd_momentum: Nesterov; adam: decoupled (AdamW) weight decay.
    flag: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Consts {
    // sgd_momentum: the momentum; adam: beta1.
    rate: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // adam: ln(beta1) and ln(beta2), computed on the host in f64.
    ln_beta1: f32,
    ln_beta2: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read> hyper: array<f32>;
@group(0) @binding(4) var<storage, read_write> step_counter: array<f32>;
@group(0) @binding(5) var<uniform> consts: Consts;
// sgd_momentum: momentum_buffer; adam: exp_avg.
@group(0) @binding(6) var<storage, read_write> state_a: array<V>;
// adam: exp_avg_sq.
@group(0) @binding(7) var<storage, read_write> state_b: array<V>;


// torch's d_p: the gradient plus coupled (L2) weight decay.
fn decayed_grad(i: u32) -> V {
    return grad[i] + consts.weight_decay * param[i];
}

@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < dims.len {
        param[i] -= hyper[0] * decayed_grad(i);
    }
}

// Dampening 0: the buffer starts at zero, so the first step stores d_p itself, as torch's
// first-step clone does.
@compute @workgroup_size(256)
fn sgd_momentum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let d = decayed_grad(i);
    let buf = consts.rate * state_a[i] + d;
    state_a[i] = buf;
    param[i] -= hyper[0] * select(buf, d + consts.rate * buf, dims.flag != 0u);
}

// 1 - beta^t as -expm1(t·ln beta). 1 - pow(beta, t) would cancel catastrophically for
// small t: WGSL promises log2 only to 2^-21 absolute near 1, which for beta = 0.999 is
// 3e-4 of 1 - beta. The host supplies ln beta accurately; small arguments use the Taylor
// series of expm1 to x^9 (truncation < |x|^9/10! ≈ 5e-10 relative for |x| <= 0.5), larger
// ones exp, whose few-ulp error is then at most 1e-6 of the result.
fn bias_correction(beta: f32, ln_beta: f32, t: f32) -> f32 {
    if beta == 0.0 {
        return 1.0;
    }
    let x = t * ln_beta;
    if x < -0.5 {
        return 1.0 - exp(x);
    }
    let series = 1.0 + x * (1.0 / 2.0 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0
        + x * (1.0 / 720.0 + x * (1.0 / 5040.0 + x * (1.0 / 40320.0 + x / 362880.0)))))));
    return -x * series;
}

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let lr = hyper[0];
    let b1 = consts.rate;
    let b2 = consts.beta2;
    var p = param[i];
    var g = grad[i];
    if dims.flag != 0u {
        p *= 1.0 - lr * consts.weight_decay;
    } else {
        g += consts.weight_decay * p;
    }
    let m = b1 * state_a[i] + (1.0 - b1) * g;
    let v = b2 * state_b[i] + (1.0 - b2) * g * g;
    state_a[i] = m;
    state_b[i] = v;
    // The counter was advanced at the start of this step, so t is 1 on the first step.
    let t = f32(bitcast<u32>(step_counter[0]));
    let denom = sqrt(v) / sqrt(bias_correction(b2, consts.ln_beta2, t)) + consts.eps;
    param[i] = p - lr / bias_correction(b1, consts.ln_beta1, t) * m / denom;
}

// The training-step counter lives in the bits of an f32 so it stays exact past 2^24.
@compute @workgroup_size(1)
fn advance_step() {
    step_counter[0] = bitcast<f32>(bitcast<u32>(step_counter[0]) + 1u);
}
