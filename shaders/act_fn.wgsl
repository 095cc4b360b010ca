// act(v) and act_grad(x, y) for the activation selected by `ACT` (an override in
// activation.wgsl, a constant in generated matmul epilogues): 0 identity, 1 sigmoid,
// 2 tanh, 3 relu, matching `graph::Activation`.

fn sigmoid(v: f32) -> f32 {
    // Two branches so exp never overflows into inf/inf.
    if v >= 0.0 {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

fn act(v: f32) -> f32 {
    switch ACT {
        case 1u: { return sigmoid(v); }
        // tanh(±15) is ±1 in f32; clamping keeps exp-based implementations from inf/inf.
        case 2u: { return tanh(clamp(v, -15.0, 15.0)); }
        case 3u: { return max(v, 0.0); }
        default: { return v; }
    }
}

// f'(x) from x and y = f(x).
fn act_grad(xv: f32, yv: f32) -> f32 {
    switch ACT {
        case 1u: { return yv * (1.0 - yv); }
        case 2u: { return 1.0 - yv * yv; }
        case 3u: { return select(0.0, 1.0, xv > 0.0); }
        default: { return 1.0; }
    }
}
