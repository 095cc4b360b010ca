#!/usr/bin/env python3
"""Fits the polynomial coefficients of `erf` in shaders/activation.wgsl (WGSL has no erf).

Needs numpy and mpmath (`pip install numpy mpmath`); prints the f32 literals and the
error of each fit against mpmath's erf/erfc, and the error of an f32 evaluation with
correctly rounded exp (the GPU's exp adds its own few ulp; tests/activations.rs measures
the real thing).

  |x| <= SPLIT:  erf(x) = x + x*R(x^2), R minimax in relative error of erf.
  SPLIT < t < 4: erfc(t) = exp(Q(t)), Q minimax in absolute error of ln erfc, i.e. in
                 relative error of erfc, so the tail keeps its accuracy where 1 - erf
                 cancels; erf = 1 - erfc there. At t >= 4 erf rounds to 1 in f32.
Minimax by Lawson's iteratively reweighted least squares on Chebyshev-spaced points.
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 40
f32 = np.float32
SPLIT, HI = 0.921875, 4.0
SMALL_DEGREE, TAIL_DEGREE = 5, 8


def lawson(xs, target, weight, degree, iters=300):
    a = np.stack([xs**k for k in range(degree + 1)], axis=1)
    w = np.ones_like(xs) / len(xs)
    for _ in range(iters):
        sw = np.sqrt(w) * weight
        c, *_ = np.linalg.lstsq(a * sw[:, None], sw * target, rcond=None)
        e = np.abs(weight * (a @ c - target))
        w = w * e
        w /= w.sum()
    return c, e.max()


def cheb(lo, hi, n=3000):
    return np.cos(np.linspace(0, np.pi, n)) * (hi - lo) / 2 + (hi + lo) / 2


def horner32(cs, x):
    r = f32(cs[-1])
    for c in reversed(cs[:-1]):
        r = f32(np.float64(r) * np.float64(x) + np.float64(c))  # fma
    return r


xs = cheb(1e-4, SPLIT)
g = np.array([float(mp.erf(x) / x) for x in xs])
small, small_err = lawson(xs * xs, g, 1 / g, SMALL_DEGREE)
small[0] -= 1.0  # x + x*R: the leading 1 is added exactly by the final fma
ts = cheb(SPLIT, HI)
tail, tail_err = lawson(ts, np.array([float(mp.log(mp.erfc(t))) for t in ts]), np.ones_like(ts), TAIL_DEGREE)
small32, tail32 = [f32(c) for c in small], [f32(c) for c in tail]
print(f"R (degree {SMALL_DEGREE} in x^2), relative error {small_err:.2e}:")
print("   ", ", ".join(str(c) for c in reversed(small32)))
print(f"Q (degree {TAIL_DEGREE}), relative error of erfc {tail_err:.2e}:")
print("   ", ", ".join(str(c) for c in reversed(tail32)))

grid = np.linspace(0, 6, 60001).astype(np.float32)
worst_erf, worst_erfc = 0.0, 0.0
for x in grid:
    if x <= SPLIT:
        got = f32(np.float64(horner32(small32, f32(x * x))) * np.float64(x) + np.float64(x))
    else:
        tail_v = f32(np.exp(np.float64(horner32(tail32, x)))) if x < HI else f32(0)
        got = f32(1) - tail_v
        if x < HI:
            worst_erfc = max(worst_erfc, abs(float(tail_v) / float(mp.erfc(float(x))) - 1))
    worst_erf = max(worst_erf, abs(float(got) - float(mp.erf(float(x)))))
print(f"f32 evaluation on [0, 6]: erf max abs error {worst_erf:.2e}, "
      f"erfc max relative error on ({SPLIT}, {HI}) {worst_erfc:.2e}")
