// The activation functions and their derivatives, PyTorch's definitions, selected by
// `ACT` (`Activation::kernel_id` in src/ops/activation/kind.rs), with the parameters
// `SLOPE` (the ReLU family's slope for x <= 0, `Activation::negative_slope`) and `ALPHA`
// (ELU). kernels.wgsl declares those as override constants; the texture matmul's fused
// epilogue (src/ops/matmul/texture.rs) sets ACT per dispatch and fuses only activations
// without parameters.

const SELU_ALPHA: f32 = 1.6732632423543772848170429916717;
const SELU_SCALE: f32 = 1.0507009873554804934193349852946;
const FRAC_1_SQRT_2: f32 = 0.70710678118654752440;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143267794;
const SQRT_2_OVER_PI: f32 = 0.79788456080286535588;
const GELU_TANH_C: f32 = 0.044715;

// exp(v) - 1 for v <= 0. Near 0, exp(v) - 1 cancels to a few correct bits, so use the
// Taylor series there: at |v| = 0.5 its degree-9 truncation is below 1e-9 relative.
fn expm1_neg(v: f32) -> f32 {
    if v > -0.5 {
        var p = 1.0 / 362880.0;
        p = fma(p, v, 1.0 / 40320.0);
        p = fma(p, v, 1.0 / 5040.0);
        p = fma(p, v, 1.0 / 720.0);
        p = fma(p, v, 1.0 / 120.0);
        p = fma(p, v, 1.0 / 24.0);
        p = fma(p, v, 1.0 / 6.0);
        p = fma(p, v, 0.5);
        return fma(p * v, v, v);
    }
    return exp(v) - 1.0;
}

fn elu(v: f32, alpha: f32) -> f32 {
    return select(alpha * expm1_neg(v), v, v > 0.0);
}

// WGSL has no erf. Two minimax fits (scripts/fit_erf.py prints them and their errors),
// split at |v| = 0.921875:
//   |v| <= split: erf(v) = v + v·R(v²), R of degree 5 (relative error 1.6e-8);
//   |v| >  split: erfc(|v|) = exp(Q(|v|)), Q of degree 8 fitted to ln erfc on [split, 4]
//                 (relative error of erfc 1.2e-8), so the tail keeps its relative
//                 accuracy where 1 − erf would cancel; erf = 1 − erfc there.
// Evaluated in f32, erf stays within about one ulp (6e-8); erfc's tail is good to a few
// 1e-6 relative, set by rounding Q (down to −17) to f32. Beyond 4, erf is 1 in f32 and
// erfc (< 1.6e-8) is returned as 0.
const ERF_SPLIT: f32 = 0.921875;

fn erf_small(v: f32) -> f32 {
    let s = v * v;
    var r = -0.0005990876;
    r = fma(r, s, 0.0049931854);
    r = fma(r, s, -0.02676662);
    r = fma(r, s, 0.11281817);
    r = fma(r, s, -0.37612495);
    r = fma(r, s, 0.12837915);
    return fma(r, v, v);
}

// erfc(t) for t > ERF_SPLIT.
fn erfc_tail(t: f32) -> f32 {
    if t >= 4.0 {
        return 0.0;
    }
    var q = 1.6024851e-06;
    q = fma(q, t, -4.5354478e-05);
    q = fma(q, t, 0.00059071433);
    q = fma(q, t, -0.0047302777);
    q = fma(q, t, 0.026335526);
    q = fma(q, t, -0.10992516);
    q = fma(q, t, -0.6319954);
    q = fma(q, t, -1.1301315);
    q = fma(q, t, 0.00029427125);
    return exp(q);
}

fn erf(v: f32) -> f32 {
    let t = abs(v);
    if t <= ERF_SPLIT {
        return erf_small(v);
    }
    return sign(v) * (1.0 - erfc_tail(t));
}

fn erfc(v: f32) -> f32 {
    let t = abs(v);
    if t <= ERF_SPLIT {
        return 1.0 - erf_small(v);
    }
    let tail = erfc_tail(t);
    return select(2.0 - tail, tail, v > 0.0);
}

// Φ(v) = erfc(-v/√2)/2: through erfc the lower tail keeps its relative accuracy.
fn normal_cdf(v: f32) -> f32 {
    return 0.5 * erfc(-v * FRAC_1_SQRT_2);
}

// GELU's tanh form as x·σ(2u), since ½(1 + tanh u) = σ(2u) does not cancel for u < 0.
// Clamped so x³ cannot overflow; σ(±2·√(2/π)·(50 + 0.044715·50³)) is already 0 or 1.
fn gelu_tanh_u(v: f32) -> f32 {
    let c = clamp(v, -50.0, 50.0);
    return SQRT_2_OVER_PI * fma(GELU_TANH_C * c * c, c, c);
}

// ln(1 + eˣ), as `torch.nn.functional.softplus` (x itself above 20). ln(1 + e) for a small
// e loses e's digits to the rounding of 1 + e; Kahan's ln(u)·e/(u − 1) restores them.
fn softplus(v: f32) -> f32 {
    if v > 20.0 {
        return v;
    }
    let e = exp(v);
    let u = 1.0 + e;
    if u == 1.0 {
        return e;
    }
    return log(u) * (e / (u - 1.0));
}

fn act(v: f32) -> f32 {
    switch ACT {
        case 1u: { return sigmoid(v); }
        // tanh(±15) is ±1 in f32; clamping keeps exp-based implementations from inf/inf.
        case 2u: { return tanh(clamp(v, -15.0, 15.0)); }
        case 3u: { return max(v, 0.0); }
        case 4u, 5u, 6u: { return select(SLOPE * v, v, v > 0.0); }
        case 7u: { return elu(v, ALPHA); }
        case 8u: { return SELU_SCALE * elu(v, SELU_ALPHA); }
        case 9u: { return v * normal_cdf(v); }
        case 10u: { return v * sigmoid(2.0 * gelu_tanh_u(v)); }
        case 11u: { return v * sigmoid(v); }
        case 12u: { return v * tanh(clamp(softplus(v), -15.0, 15.0)); }
        default: { return v; }
    }
}

// f'(x) from x and y = f(x). The ReLU family and ELU take x <= 0 as the negative side, so
// the derivative at 0 is the slope (0 for ReLU, alpha for ELU), as in PyTorch.
fn act_grad(xv: f32, yv: f32) -> f32 {
    switch ACT {
        case 1u: { return yv * (1.0 - yv); }
        case 2u: { return 1.0 - yv * yv; }
        case 3u: { return select(0.0, 1.0, xv > 0.0); }
        case 4u, 5u, 6u: { return select(SLOPE, 1.0, xv > 0.0); }
        // alpha·eˣ from x: y + alpha would lose the digits of a tiny eˣ.
        case 7u: { return select(ALPHA * exp(xv), 1.0, xv > 0.0); }
        case 8u: { return SELU_SCALE * select(SELU_ALPHA * exp(xv), 1.0, xv > 0.0); }
        // Φ(x) + x·φ(x); exp underflows to 0 where φ is negligible.
        case 9u: {
            return normal_cdf(xv) + xv * FRAC_1_SQRT_2PI * exp(-0.5 * xv * xv);
        }
        // x·σ(2u) differentiates to σ + x·σ(1 - σ)·2u'.
        case 10u: {
            let s = sigmoid(2.0 * gelu_tanh_u(xv));
            let c = clamp(xv, -50.0, 50.0);
            let du = SQRT_2_OVER_PI * fma(3.0 * GELU_TANH_C * c, c, 1.0);
            return s + xv * s * (1.0 - s) * 2.0 * du;
        }
        // σ(x) + x·σ(x)(1 − σ(x)).
        case 11u: {
            let s = sigmoid(xv);
            return s * fma(xv, 1.0 - s, 1.0);
        }
        // tanh(sp(x)) + x·sech²(sp(x))·σ(x), as sp'(x) = σ(x).
        case 12u: {
            let t = tanh(clamp(softplus(xv), -15.0, 15.0));
            return fma(xv * sigmoid(xv), 1.0 - t * t, t);
        }
        default: { return 1.0; }
    }
}
