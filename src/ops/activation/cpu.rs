//! Reference loops of the activations and their derivatives, in `f64` where a function
//! needs more than `f32` to be the reference the kernels are measured against.

use super::kind::{SELU_ALPHA, SELU_SCALE};
use super::Activation;
use crate::ops::rng::rng_uniform;

pub fn activation(act: Activation, x: f32) -> f32 {
    let xd = x as f64;
    match act {
        Activation::Identity => x,
        Activation::Sigmoid => (1.0 / (1.0 + (-xd).exp())) as f32,
        Activation::Tanh => xd.tanh() as f32,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu { slope } => leaky(x, slope),
        // RReLU in evaluation and PReLU at a fixed slope; see `Activation::negative_slope`.
        Activation::Rrelu { .. } | Activation::Prelu { .. } => {
            leaky(x, act.negative_slope().unwrap_or_default())
        }
        Activation::Elu { alpha } => elu(xd, alpha as f64) as f32,
        Activation::Selu => (SELU_SCALE * elu(xd, SELU_ALPHA)) as f32,
        Activation::Gelu => (xd * normal_cdf(xd)) as f32,
        Activation::GeluTanh => (xd * gelu_tanh_gate(xd).0) as f32,
        Activation::Silu => (xd * sigmoid(xd)) as f32,
        Activation::Mish => (xd * softplus(xd).tanh()) as f32,
    }
}

/// `f'(x)` given `x` and `y = f(x)`.
pub fn activation_grad(act: Activation, x: f32, y: f32) -> f32 {
    let xd = x as f64;
    match act {
        Activation::Identity => 1.0,
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        // PyTorch's convention: the derivative at exactly 0 is 0.
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { slope } => leaky_grad(x, slope),
        Activation::Rrelu { .. } | Activation::Prelu { .. } => {
            leaky_grad(x, act.negative_slope().unwrap_or_default())
        }
        // From x rather than y + alpha, which loses digits where eˣ is tiny; at 0 it is
        // alpha, as PyTorch's elu_backward gives.
        Activation::Elu { alpha } => elu_grad(xd, alpha as f64) as f32,
        Activation::Selu => (SELU_SCALE * elu_grad(xd, SELU_ALPHA)) as f32,
        // d/dx x·Φ(x) = Φ(x) + x·φ(x).
        Activation::Gelu => {
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (normal_cdf(xd) + xd * pdf) as f32
        }
        Activation::GeluTanh => {
            let (s, du) = gelu_tanh_gate(xd);
            // x·σ(2u) differentiates to σ + x·σ(1−σ)·2u'.
            (s + xd * s * (1.0 - s) * 2.0 * du) as f32
        }
        // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))).
        Activation::Silu => {
            let s = sigmoid(xd);
            (s * (1.0 + xd * (1.0 - s))) as f32
        }
        // d/dx x·tanh(sp(x)) = tanh(sp) + x·sech²(sp)·σ(x), as sp'(x) = σ(x).
        Activation::Mish => {
            let t = softplus(xd).tanh();
            (t + xd * sigmoid(xd) * (1.0 - t * t)) as f32
        }
    }
}

/// The ReLU family: `x` for `x > 0`, else `slope·x`, as PyTorch's `leaky_relu`.
pub fn leaky(x: f32, slope: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        slope * x
    }
}

/// Its derivative; at 0 it is `slope`, as in PyTorch (0 for ReLU).
pub fn leaky_grad(x: f32, slope: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else {
        slope
    }
}

fn elu(x: f64, alpha: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        alpha * x.exp_m1()
    }
}

fn elu_grad(x: f64, alpha: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else {
        alpha * x.exp()
    }
}

/// Φ(x) = ½·erfc(−x/√2): erfc keeps full relative accuracy in the lower tail, where
/// ½·(1 + erf) cancels.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// The error function, the reference the WGSL `erf` is tested against.
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

/// For GELU's tanh form: `(σ(2u), u')` with `u = √(2/π)·(x + 0.044715·x³)`, using
/// `½(1 + tanh u) = σ(2u)`, which does not cancel for negative `u`.
fn gelu_tanh_gate(x: f64) -> (f64, f64) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let u = k * (x + GELU_TANH_C * x * x * x);
    let s = 1.0 / (1.0 + (-2.0 * u).exp());
    (s, k * (1.0 + 3.0 * GELU_TANH_C * x * x))
}

const GELU_TANH_C: f64 = 0.044715;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln(1 + eˣ)`, and `x` itself above 20 as `torch.nn.functional.softplus` (and Mish in
/// PyTorch) does.
fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

pub fn activate(act: Activation, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = activation(act, xi);
    }
}

pub fn activate_backward(act: Activation, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for i in 0..dx.len() {
        dx[i] = dy[i] * activation_grad(act, x[i], y[i]);
    }
}

/// RReLU's training slope for element `i`, the same draw as `rrelu_slope` in
/// `shaders/activation/kernels.wgsl`.
pub fn rrelu_slope(lower: f32, upper: f32, stream: u32, step: u32, i: usize) -> f32 {
    lower + (upper - lower) * rng_uniform(stream, step, i as u32)
}

pub fn rrelu_train(x: &[f32], y: &mut [f32], step: u32, stream: u32, lower: f32, upper: f32) {
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = leaky(xi, rrelu_slope(lower, upper, stream, step, i));
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rrelu_train_backward(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    step: u32,
    stream: u32,
    lower: f32,
    upper: f32,
) {
    for i in 0..dx.len() {
        dx[i] = dy[i] * leaky_grad(x[i], rrelu_slope(lower, upper, stream, step, i));
    }
}

/// `y[i] = leaky(x[i], weight[i % units])`.
pub fn prelu(x: &[f32], weight: &[f32], y: &mut [f32]) {
    let units = weight.len();
    for (i, (yi, &xi)) in y.iter_mut().zip(x).enumerate() {
        *yi = leaky(xi, weight[i % units]);
    }
}

/// `dx = dy·leaky'(x)` and the slope gradient's terms `dy·min(x, 0)` (PyTorch's
/// `input > 0 ? 0 : input·grad`).
pub fn prelu_backward(x: &[f32], weight: &[f32], dy: &[f32], dx: &mut [f32], terms: &mut [f32]) {
    let units = weight.len();
    for i in 0..dx.len() {
        dx[i] = dy[i] * leaky_grad(x[i], weight[i % units]);
        terms[i] = if x[i] > 0.0 { 0.0 } else { x[i] * dy[i] };
    }
}
