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
    // sgd_momentum: the momentum; adam, adamax, nadam: beta1; rmsprop: alpha.
    rate: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // adam, adamax, nadam: ln(beta1) and ln(beta2), computed on the host in f64.
    ln_beta1: f32,
    ln_beta2: f32,
    // rmsprop: the momentum; adagrad: lr_decay; nadam: momentum_decay·ln(0.96).
    aux: f32,
    _pad1: f32,
}

// adam: AMSGrad (state_c is max_exp_avg_sq); otherwise state_c is a 1-element dummy.
override AMSGRAD: bool = false;
// rmsprop: state_b is the momentum buffer / state_c is grad_avg; a dummy when off.
override MOMENTUM: bool = false;
override CENTERED: bool = false;

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read> hyper: array<f32>;
@group(0) @binding(4) var<storage, read_write> step_counter: array<f32>;
@group(0) @binding(5) var<uniform> consts: Consts;
// sgd_momentum: momentum_buffer; adam: exp_avg.
@group(0) @binding(6) var<storage, read_write> state_a: array<V>;
// adam, nadam: exp_avg_sq; adamax: exp_inf; rmsprop: momentum_buffer.
@group(0) @binding(7) var<storage, read_write> state_b: array<V>;
// adam: max_exp_avg_sq; rmsprop: grad_avg.
@group(0) @binding(8) var<storage, read_write> state_c: array<V>;
// nadam: the product of the momentum coefficients so far (torch's mu_product).
@group(0) @binding(9) var<storage, read_write> mu_product: array<f32>;


// One-cycle's momentum (SGD, RMSprop) or beta1 (Adam family) of this step replaces the
// compiled-in one when hyper[3] is set; it is a per-step value, so it cannot be a constant.
fn cycled(fixed: f32) -> f32 {
    return select(fixed, hyper[1], hyper[3] != 0.0);
}

// ln of the cycled beta1, from the host in f64 as consts.ln_beta1 is.
fn cycled_ln_beta1() -> f32 {
    return select(consts.ln_beta1, hyper[2], hyper[3] != 0.0);
}

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
    let mu = cycled(consts.rate);
    let buf = mu * state_a[i] + d;
    state_a[i] = buf;
    param[i] -= hyper[0] * select(buf, d + mu * buf, dims.flag != 0u);
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
    let b1 = cycled(consts.rate);
    let b2 = consts.beta2;
    var p = param[i];
    var g = grad[i];
    if dims.flag != 0u {
        p *= 1.0 - lr * consts.weight_decay;
    } else {
        g += consts.weight_decay * p;
    }
    let m = b1 * state_a[i] + (1.0 - b1) * g;
    var v = b2 * state_b[i] + (1.0 - b2) * g * g;
    state_a[i] = m;
    state_b[i] = v;
    if AMSGRAD {
        v = max(state_c[i], v);
        state_c[i] = v;
    }
    let t = step_t();
    let denom = sqrt(v) / sqrt(bias_correction(b2, consts.ln_beta2, t)) + consts.eps;
    param[i] = p - lr / bias_correction(b1, cycled_ln_beta1(), t) * m / denom;
}

// The counter was advanced at the start of this step, so t is 1 on the first step.
fn step_t() -> f32 {
    return f32(bitcast<u32>(step_counter[0]));
}

@compute @workgroup_size(256)
fn rmsprop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let alpha = consts.rate;
    let g = decayed_grad(i);
    let sq = alpha * state_a[i] + (1.0 - alpha) * g * g;
    state_a[i] = sq;
    var variance = sq;
    if CENTERED {
        let a = state_c[i] + (1.0 - alpha) * (g - state_c[i]);
        state_c[i] = a;
        variance = sq - a * a;
    }
    let denom = sqrt(variance) + consts.eps;
    if MOMENTUM {
        let buf = cycled(consts.aux) * state_b[i] + g / denom;
        state_b[i] = buf;
        param[i] -= hyper[0] * buf;
    } else {
        param[i] -= hyper[0] * g / denom;
    }
}

@compute @workgroup_size(256)
fn adagrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let clr = hyper[0] / (1.0 + (step_t() - 1.0) * consts.aux);
    let g = decayed_grad(i);
    let s = state_a[i] + g * g;
    state_a[i] = s;
    param[i] -= clr * g / (sqrt(s) + consts.eps);
}

@compute @workgroup_size(256)
fn adamax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let b1 = cycled(consts.rate);
    let g = decayed_grad(i);
    let m = b1 * state_a[i] + (1.0 - b1) * g;
    let u = max(consts.beta2 * state_b[i], abs(g) + consts.eps);
    state_a[i] = m;
    state_b[i] = u;
    param[i] -= hyper[0] / bias_correction(b1, cycled_ln_beta1(), step_t()) * m / u;
}

// NAdam's μ_t = β₁·(1 - ½·0.96^(t·ψ)); consts.aux holds ψ·ln 0.96.
fn nadam_mu(t: f32) -> f32 {
    return cycled(consts.rate) * (1.0 - 0.5 * exp(t * consts.aux));
}

// Reads mu_product, already multiplied by μ_t (nadam_mu_product ran first in this step).
@compute @workgroup_size(256)
fn nadam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= dims.len {
        return;
    }
    let lr = hyper[0];
    let b1 = cycled(consts.rate);
    let b2 = consts.beta2;
    let t = step_t();
    let g = decayed_grad(i);
    let m = b1 * state_a[i] + (1.0 - b1) * g;
    let v = b2 * state_b[i] + (1.0 - b2) * g * g;
    state_a[i] = m;
    state_b[i] = v;
    let mu = nadam_mu(t);
    let mu_next = nadam_mu(t + 1.0);
    let prod = mu_product[0];
    let denom = sqrt(v / bias_correction(b2, consts.ln_beta2, t)) + consts.eps;
    param[i] -= lr * (1.0 - mu) / (1.0 - prod) * g / denom
        + lr * mu_next / (1.0 - prod * mu_next) * m / denom;
}

@compute @workgroup_size(1)
fn nadam_mu_product() {
    mu_product[0] *= nadam_mu(step_t());
}

// The training-step counter lives in the bits of an f32 so it stays exact past 2^24.
@compute @workgroup_size(1)
fn advance_step() {
    step_counter[0] = bitcast<f32>(bitcast<u32>(step_counter[0]) + 1u);
}
